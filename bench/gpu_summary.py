"""`python -m mlp.bench.gpu_summary`: bench/gpu_check.sh's outputs as the GPU targets, met or missed.

Reads the GPU bench JSON (`python -m bench --json`: each row's first-step loss already held to float64
NumPy's by the bench, bench/reference.py), pytest's JUnit XML for `pytest -m gpu` and the phase
times, and writes a plain-text summary. It measures nothing and
invents nothing: a figure or field that is not in its inputs is "not measured".

The targets (float32, median ms per epoch):
  B=64: ours (jax, compiled) <= 6 ms, ours (torch, compiled: the CUDA graph) <= 20 ms,
        ours (cupy, eager) <= 150 ms;
  full batch: ours (cupy, eager) <= 1.15x torch-expert at each N and H measured;
  N=1,000,000 H=1024 full batch: each of our rows >= 60% of the floor (`fraction_of_floor`);
  no GPU test skipped (nor failed by MLP_REQUIRE_GPU because it would have been);
  every GPU row's first-step loss (`initial_loss`) within the bench's tolerance of float64 NumPy's.

A missed speed target is reported, not an error. Exit 1 when a GPU row errored or is unchecked
against float64 NumPy (no reference, no loss, or a mismatch), when there is no GPU row, or when
the tests are missing or skipped; exit 2 on bad usage.
"""

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from .reference import TOLERANCE, label, where  # TOLERANCE: the bench's own, for a first-step loss, per dtype

B64_TARGETS = (("jax", "compiled", 6.0, "JAX compiled"),
               ("torch", "compiled", 20.0, "torch CUDA graph"),
               ("cupy", "eager", 150.0, "CuPy eager"))
CUPY_OVER_EXPERT = 1.15
FLOOR_N, FLOOR_H, FLOOR_FRACTION = 1_000_000, 1024, 0.60
TARGET_DTYPE = "float32"
WOULD_SKIP = "would be skipped"   # tests/require_gpu.py's message when MLP_REQUIRE_GPU=1 fails a skip


def load_json(path) -> tuple[dict | None, str | None]:
    if not path:
        return None, "not given"
    try:
        return json.loads(Path(path).read_text()), None
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable: {exc}"


def is_gpu(r: dict) -> bool:
    return r.get("device", "cpu") != "cpu"


def tests_summary(junit_path) -> tuple[list[str], bool]:
    """Lines about the GPU tests, and whether they ran with none skipped."""
    if not junit_path or not Path(junit_path).is_file():
        return [f"GPU tests: not measured (no JUnit XML: {junit_path})"], False
    try:
        root = ET.parse(junit_path).getroot()
    except (OSError, ET.ParseError) as exc:
        return [f"GPU tests: not measured (unreadable {junit_path}: {exc})"], False
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    would_skip = sum(1 for case in root.iter("testcase") for bad in (*case.findall("failure"), *case.findall("error"))
                     if WOULD_SKIP in (bad.get("message") or "") + (bad.text or ""))
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    line = (f"GPU tests: {count['tests']} run: {passed} passed, {count['failures']} failed, {count['errors']} errors, "
            f"{count['skipped']} skipped" + (f" ({would_skip} of the failures and errors are skips failed by "
                                             f"MLP_REQUIRE_GPU)" if would_skip else ""))
    skipped = count["skipped"] + would_skip
    met = count["tests"] > 0 and skipped == 0
    return [line, f"- no GPU test skipped: {skipped} skipped of {count['tests']}: " + ("met" if met else "MISSED")], met


def why_missing(records: list, match) -> str:
    """Why a row is absent: its record's status and reason, or that the sweep did not ask for it."""
    for r in records:
        if match(r) and r.get("status") != "ok":
            return f"not measured ({r.get('status')}: {r.get('reason')})"
    return "not measured (not in this sweep)"


def ours(backend=None, engine=None, batch=None, **more):
    """A test for our rows of `backend` and `engine` (None: any) at `batch` (None: full batch) and `more`."""
    def match(r: dict) -> bool:
        return (r.get("impl") == "ours" and r.get("batch") == batch and backend in (None, r.get("backend"))
                and engine in (None, r.get("engine") or "eager") and all(r.get(k) == v for k, v in more.items()))
    return match


def targets(records: list) -> list[str]:
    gpu = [r for r in records if is_gpu(r) and r.get("dtype") == TARGET_DTYPE]
    ok = [r for r in gpu if r.get("status") == "ok"]
    lines = []
    for backend, engine, limit, name in B64_TARGETS:
        match, head = ours(backend, engine, 64), f"- B=64, {name} <= {limit:g} ms"
        rows = [r for r in ok if match(r)]
        if not rows:
            lines.append(f"{head}: {why_missing(gpu, match)}")
        for r in rows:
            verdict = "met" if r["median_ms"] <= limit else "MISSED"
            lines.append(f"{head}: {r['median_ms']:.2f} ms on {r['device']}: {verdict}")

    cupy_row, head = ours("cupy", "eager"), f"- full batch, CuPy eager <= {CUPY_OVER_EXPERT}x torch-expert"
    cupy = [r for r in ok if cupy_row(r)]
    if not cupy:
        lines.append(f"{head}: {why_missing(gpu, cupy_row)}")
    for r in sorted(cupy, key=lambda r: (r["device"], r["hidden"], r["n"])):
        def same(p, r=r):
            return (p.get("impl") == "torch-expert" and p.get("batch") is None and p.get("device") == r["device"]
                    and p.get("n") == r["n"] and p.get("hidden") == r["hidden"])
        expert = [p for p in ok if same(p)]
        if not expert:
            lines.append(f"{head}, N={r['n']:,} H={r['hidden']}: CuPy {r['median_ms']:.2f} ms, torch-expert "
                         f"{why_missing(gpu, same)}")
            continue
        ratio = r["median_ms"] / expert[0]["median_ms"]
        lines.append(f"{head}, N={r['n']:,} H={r['hidden']}: {r['median_ms']:.2f} ms / {expert[0]['median_ms']:.2f} ms "
                     f"= {ratio:.2f}x: " + ("met" if ratio <= CUPY_OVER_EXPERT else "MISSED"))

    big = ours(n=FLOOR_N, hidden=FLOOR_H)
    head = f"- N={FLOOR_N:,} H={FLOOR_H} full batch, >= {FLOOR_FRACTION:.0%} of the floor"
    rows = [r for r in ok if big(r)]
    if not rows:
        lines.append(f"{head}: {why_missing(gpu, big)}")
    for r in sorted(rows, key=label):
        fraction, floor = r.get("fraction_of_floor"), r.get("floor_ms")
        if fraction is None or floor is None:
            lines.append(f"{head}, {label(r)}: not measured (no floor: no GEMM probe on {r['device']} in this run)")
            continue
        lines.append(f"{head}, {label(r)}: {fraction:.0%} ({r['median_ms']:.2f} ms against a floor of {floor:.2f} ms): "
                     + ("met" if fraction >= FLOOR_FRACTION else "MISSED"))
    return lines


def loss_checks(records: list) -> tuple[list[str], list[str]]:
    """Each GPU row's first-step loss as the bench held it to float64 NumPy's at the same N, H and B
    (bench/reference.py: 'loss_check', 'initial_loss_rel_diff'): the table's cells, and the problems
    (rows unchecked or mismatched)."""
    cells, problems = [], []
    for r in records:
        if r.get("status") != "ok":
            cells.append("–")
            continue
        if r.get("initial_loss") is None:
            cells.append("not measured (no initial_loss)")
        elif "loss_check" not in r:
            cells.append("not checked (the bench has no float64 NumPy check for this row)")
        else:
            cells.append(f"{r['loss_check']} ({r.get('initial_loss_rel_diff', float('nan')):.1e}, "
                         f"tolerance {TOLERANCE.get(r.get('dtype'), 0.0):g})")
        if not cells[-1].startswith("ok"):
            problems.append(f"{label(r)} {r.get('device')} {r.get('dtype')} {where(r)}: {cells[-1]}")
    return cells, problems


def table(records: list, checks: list[str]) -> list[str]:
    head = ("row", "device", "dtype", "N", "H", "B", "median ms", "% of floor", "first loss", "vs float64 NumPy")
    body = []
    for r, check in zip(records, checks):
        row = (label(r), r.get("device"), r.get("dtype"), f"{r.get('n', 0):,}", str(r.get("hidden")),
               str(r.get("batch") or "full"))
        if r.get("status") == "ok":
            fraction = r.get("fraction_of_floor")
            body.append((*row, f"{r['median_ms']:.3f}", "not measured" if fraction is None else f"{fraction:.0%}",
                         "not measured" if r.get("initial_loss") is None else f"{r['initial_loss']:.6g}", check))
        else:
            body.append((*row, f"{r.get('status')}: {r.get('reason')}", "", "", ""))
    widths = [max(len(str(row[i])) for row in (head, *body)) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (head, *body)]


def phases(path) -> str:
    """'setup 3 s, bench 95 s (exit 1)' from gpu_check.sh's 'name seconds exit' lines ('' without any)."""
    try:
        lines = Path(path).read_text().split("\n") if path else []
    except OSError:
        return ""
    parts = [ln.split() for ln in lines if len(ln.split()) == 3]
    return ", ".join(f"{name} {secs} s" + ("" if code == "0" else f" (exit {code})") for name, secs, code in parts)


def summarize(args) -> tuple[list[str], list[str]]:
    """The summary's lines and the problems that fail the check."""
    bench, bench_err = load_json(args.bench)
    problems = []
    out = ["GPU check summary (bench/gpu_check.sh); figures from the files named here, nothing else"]
    if bench is None:
        out.append(f"bench: not measured ({bench_err})")
        problems.append(f"no bench results: {bench_err}")
        records, meta = [], {}
    else:
        records, meta = bench.get("records", []), bench.get("meta", {})
        out += [f"bench: {args.bench}: {meta.get('command')}",
                f"  GPU: {', '.join(meta.get('gpus') or []) or 'none named'}; commit {meta.get('git_commit')}; "
                f"{meta.get('date')}; {meta.get('wall_seconds')} s"]

    test_lines, tests_ok = tests_summary(args.junit)
    out += ["", test_lines[0]]
    if not tests_ok:
        problems.append(test_lines[0])

    gpu = [r for r in records if is_gpu(r)]
    if bench is not None and not any(r.get("status") == "ok" for r in gpu):
        problems.append("no GPU row was measured")
    checks, unchecked = loss_checks(gpu)
    problems += [f"unchecked GPU row: {p}" for p in unchecked]
    errored = [r for r in gpu if r.get("status") == "error"]
    problems += [f"GPU row failed: {label(r)} {r.get('device')} {r.get('dtype')} {where(r)}: {r.get('reason')}"
                 for r in errored]

    out += ["", f"Targets ({TARGET_DTYPE}, median ms per epoch; met or MISSED as measured, 'not measured' where "
                "the inputs have no figure):"]
    out += targets(records)
    out += test_lines[1:]
    measured = [r for r in gpu if r.get("status") == "ok"]
    met = bool(measured) and not unchecked
    out.append(f"- every GPU row's first loss checked against float64 NumPy: {len(measured) - len(unchecked)} of "
               f"{len(measured)} rows within tolerance: " + ("met" if met else "MISSED"))
    if gpu:
        out += ["", "GPU rows:", ""]
        out += table(gpu, checks)
    if ph := phases(args.phases):
        out += ["", "Phases: " + ph]
    out += ["", "Result: " + ("FAILED: " + "; ".join(problems) if problems else
                              "every GPU row measured and checked against float64 NumPy; no GPU test skipped")]
    return out, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlp.bench.gpu_summary", description=__doc__.splitlines()[0])
    p.add_argument("--bench", required=True, metavar="JSON", help="the GPU bench's JSON (python -m bench --json)")
    p.add_argument("--junit", metavar="XML", help="pytest -m gpu --junitxml")
    p.add_argument("--phases", metavar="TXT", help="'name seconds exit' lines (gpu_check.sh's phases.txt)")
    p.add_argument("--out", metavar="TXT", help="also write the summary here")
    args = p.parse_args(argv)
    lines, problems = summarize(args)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            print(f"gpu_summary: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
