"""`python -m bench`: full-batch training epochs, ours and peers, CPU and GPU, side by side.

Each measurement runs in its own process (bench.worker). The sweep, the peers that are
missing and the configurations too slow for the time allowed are all listed in the
results, never silently dropped.
"""

import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mlp import backends
from mlp.backends.threads import usable_cores
from mlp.data import data_paths, default_data_dir
from mlp.model import outputs
from mlp.versions import versions
from mlp.errors import UserError
from mlp.files import atomic_write
from mlp.outputs import check_outputs
from mlp.plots import plot_format
from mlp.summary import wrote

from . import busy, reference, report, targets
from .dask_impl import expand
from .flags import LONGEST_WAIT_S, build_parser, size  # noqa: F401  (size: for tests/test_outputs.py)
from .floor import epoch_flops
from .impls import COMPILED, ESTIMATOR, LIBRARY, MINIBATCH_PEERS, PEERS
from .targets import REAL
from .worker import RECORD_KEYS, RESULT_MARK

DEFAULT_SIZES = {"cpu": [REAL, "4x"], "cuda": [REAL, 100_000, 1_000_000]}
DEFAULT_HIDDEN = [128, 1024]
DEFAULT_BATCHES = [64, 512, 4096]  # the minibatch sweep, at N = real and H = 128 (the default job is B = 64)
DEFAULT_BACKENDS = {"cpu": ["numpy", "torch", "jax"], "cuda": ["cupy", "torch", "jax"]}
GEMM_LIBRARIES = {"cpu": ["numpy", "torch"], "cuda": ["cupy", "torch"]}   # no JAX: no device-wide sync to time by
OPTIMISER_ENGINES = (("numpy", "eager"), ("jax", "compiled"), ("torch", "eager"))   # ours's rows with momentum, Adam


def run_worker(spec: dict, timeout: float) -> dict:
    """One measurement in a worker process that ends with this one; at most `timeout` s (and a week)."""
    timeout = min(timeout, LONGEST_WAIT_S)
    cmd = [sys.executable, "-m", "mlp.bench.worker", json.dumps({**spec, "parent": os.getpid()})]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": "error", "reason": f"took longer than {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:400]
    return {**spec, "status": "error", "reason": f"worker exited {done.returncode}: {tail}"}


def cuda_available() -> bool:
    try:
        backends.resolve("cuda", "cupy")
        return True
    except backends.BackendError:
        return False


def git_commit() -> str | None:
    """'58245f6', or '58245f6+dirty' when tracked files differ from it; None outside a checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty", "--exclude=*"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parents[1], timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def plan(args) -> dict:
    """The sweep asked for: devices, peers, dtypes, sizes, widths, batches; errors are one line."""
    devices = args.device or (["cpu", "cuda"] if cuda_available() else ["cpu"])
    for d in devices:
        backends.parse_device(d)  # a clear error for a bad name
    peers = [] if args.peers == ["none"] else (args.peers or list(PEERS))
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise UserError(f"unknown peer {unknown[0]!r}: use {', '.join(PEERS)} or none")
    named = [b for b in backends.BACKENDS if b != "auto"]   # each row names its library: "auto" picks one
    unknown = [b for b in args.backends or [] if b not in named
               and not (b.startswith("dask:") and b[5:].isdigit() and int(b[5:]) >= 1)]
    if unknown:
        raise UserError(f"--backends: unknown backend {unknown[0]!r}: use {', '.join(named)} (or dask:N)")
    dtypes = args.dtype or (["float32"] if args.quick else ["float32", "float64"])
    for d in dtypes:
        if d not in backends.DTYPES:
            raise UserError(f"unknown dtype {d!r}: use float32 and/or float64")
    if args.quick:
        args.epochs, args.min_epochs, args.warmup, args.budget = 3, 3, 1, 0.0
    if args.busy:   # the default job's configuration, unless asked for others
        dtypes, args.sizes, args.hidden = args.dtype or ["float32"], args.sizes or [REAL], args.hidden or [128]
    batches = [] if args.no_minibatch else (args.batches or ([512] if args.quick else [64] if args.busy
                                                             else DEFAULT_BATCHES))
    return {"devices": devices, "peers": peers, "dtypes": dtypes, "hidden": [32] if args.quick else
            (args.hidden or DEFAULT_HIDDEN), "batches": batches,
            "busy": busy.levels(usable_cores()) if args.busy else [0]}


def run_probes(devices, dtypes) -> list:
    probes = []
    for device in devices:
        for library in GEMM_LIBRARIES[reference.device_kind(device)]:
            for dtype in dtypes:
                if importlib.util.find_spec(library) is None:
                    probes.append({"library": library, "device": device, "dtype": dtype, "status": "skipped",
                                   "reason": f"{library} is not installed"})
                    continue
                r = run_worker({"mode": "probe", "library": library, "device": device, "dtype": dtype}, 600)
                probes.append(r)
                if r.get("status", "ok") == "ok":
                    print(f"probe {library:6s} {device:6s} {dtype}: GEMM {r['gemm_flops_per_s'] / 1e9:8.1f} GFLOP/s, "
                          f"copy {r['copy_bytes_per_s'] / 1e9:6.1f} GB/s", file=sys.stderr)
    return probes


def rows(kind: str, backend_names, peers, batch) -> list:
    """(impl, backend, engine) of each row: ours once per engine it has there (dask once per worker
    count, in full batch only), then the peers."""
    ours = [("ours", b, e) for b in expand(backend_names) for e in ("eager", "compiled")
            if (e == "eager" or (b, kind) in COMPILED) and (batch is None or not b.startswith("dask"))]
    return ours + [(p, LIBRARY[p], None) for p in peers if batch is None or p in MINIBATCH_PEERS]


def configs(args, sweep, kind: str, real_n: int) -> list:
    """(dtype, H, N, B, C classes, optimiser, rows) of each configuration on a device of `kind`: the
    full-batch and minibatch sweeps (two classes, plain GD), then beside the default job's (its
    configuration, or --quick's minibatch one) ten classes and, on the CPU, momentum and Adam:
    ours and torch-expert (one row each with --quick), and the estimators, ours and scikit-learn's."""
    sizes = [2_000] if args.quick else [real_n if s == REAL else 4 * real_n if s == "4x" else s
                                        for s in (args.sizes or DEFAULT_SIZES[kind])]
    names, peers = args.backends or DEFAULT_BACKENDS[kind], sweep["peers"]
    plain = [(dtype, h, n, None) for dtype in sweep["dtypes"] for h in sweep["hidden"] for n in sizes]
    h, n = (sweep["hidden"][0], sizes[0]) if args.quick else (128, real_n)   # the minibatch sweep's
    plain += [(dtype, h, n, b) for dtype in sweep["dtypes"] for b in sweep["batches"]]
    out = [(*c, 2, "sgd", rows(kind, names, peers, c[3])) for c in plain]
    job = ("float32", h, n, 512 if args.quick else 64)
    if args.busy or job not in plain:
        return out
    ten = rows(kind, names, [p for p in peers if p == "torch-expert"], job[3])
    out.append((*job, 10, "sgd", ten[:1] if args.quick else ten))
    mine = [r for r in ten if r[0] != "ours" or r[1:] in OPTIMISER_ENGINES]
    out += [(*job, 2, opt, mine[:1] if args.quick else mine)
            for opt in (("adam",) if args.quick else ("momentum", "adam")) if kind == "cpu"]
    if "sklearn" in peers and kind == "cpu" and not args.quick:
        out += [(*job, c, "sgd", [(ESTIMATOR, "numpy", None), ("sklearn", "sklearn", None)]) for c in (2, 10)]
    return out


def measure_all(args, sweep, real_n: int, d: int, rates: dict) -> list:
    records = []
    for device in sweep["devices"]:
        kind = reference.device_kind(device)
        cap = args.max_epoch_seconds or (1.0 if kind == "cpu" else 10.0)
        for dtype, h, n, batch, classes, optimiser, planned in configs(args, sweep, kind, real_n):
            gemm = rates[(kind, dtype)][0]
            estimate = 2 * epoch_flops(n, d, h, k=outputs(classes)) / gemm if gemm else 0.0
            for (impl, backend, engine), threads, k in itertools.product(planned, args.threads, sweep["busy"]):
                spec = {"mode": "measure", "impl": impl, "backend": backend, "engine": engine, "batch": batch,
                        "device": device, "dtype": dtype, "n": n, "hidden": h, "classes": classes,
                        "optimiser": optimiser, "epochs": args.epochs, "min_epochs": args.min_epochs,
                        "budget_s": args.budget, "warmup": args.warmup, "seed": 0, "data_dir": args.data_dir,
                        "threads_requested": threads, "busy": k}
                why_not = None
                if args.quick and (impl == "torch-compile" or (backend, engine, kind) == ("torch", "compiled", "cpu")):
                    why_not = "not run by --quick (compiling the step takes longer than the quick sweep)"
                elif estimate > cap and not args.quick:
                    why_not = f"estimated {estimate:.1f} s per epoch is over --max-epoch-seconds {cap:g}"
                if why_not:
                    r = {**{k: spec[k] for k in RECORD_KEYS}, "status": "skipped", "reason": why_not}
                else:   # beside spec["busy"] competing processes, stopped when it ends
                    r = busy.measure(run_worker, spec, timeout=max(600.0, 40 * estimate * (args.warmup + args.epochs)))
                records.append(r)
                head = (f"{report.label(r):26s} {device:6s} {dtype} N={n:>9,} H={h:>5} B={batch or 'full':>5}"
                        + (f" C={classes}" if classes != 2 else "") + (f" {optimiser}" if optimiser != "sgd" else "")
                        + (f" busy {k}" if sweep["busy"] != [0] else ""))
                print(f"{head}: {r['median_ms']:10.3f} ms (min {r['min_ms']:.3f}, {r['epochs_timed']} epochs, "
                      f"threads {r.get('threads') or '-'})" if r.get("status") == "ok"
                      else f"{head}: {r['status']}: {r['reason']}", file=sys.stderr)
    return records


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.summary:
        given = [k for k, v in vars(args).items() if k != "summary" and v != parser.get_default(k)]
        if given:
            raise UserError(f"--summary reads a run's JSON and measures nothing: drop --{given[0].replace('_', '-')}")
        return summary(args.summary)
    sweep = plan(args)
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot},
                  {f"--data-dir's {p.name}": p for p in data_paths(args.data_dir or default_data_dir())})
    if args.plot:
        plot_format(args.plot)
    started = time.time()
    # loaded (downloaded if need be) once here, float64; workers only read it
    train = reference.training_split(args.data_dir, download=not args.no_download, quiet=False)
    real = train.X
    probes = run_probes(sweep["devices"], sweep["dtypes"])
    records = measure_all(args, sweep, real.shape[0], real.shape[1], report.rates(probes))
    splits = {c: train if c == 2 else reference.training_split(args.data_dir, c, download=not args.no_download)
              for c in {reference.config(r)[3] for r in records if r.get("status") == "ok"}}
    result = {"meta": metadata(argv, records, real.shape), "probes": probes,
              "records": report.enrich([r for r in records if not r.get("busy")], probes,
                                       reference.first_losses(splits, records)),
              "busy": [r for r in records if r.get("busy")]}   # beside competitors: the busy table only
    result["speedups"] = report.speedups(result["records"])
    result["targets"] = targets.verdicts(result)
    result["meta"]["wall_seconds"] = round(time.time() - started, 1)
    return write_outputs(args, result)


def summary(path: str) -> int:
    """`--summary JSON`: the targets' verdicts and the problems of a run, as the run itself found them."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--summary: cannot read {path} ({getattr(exc, 'strerror', None) or exc}): name the file "
                        "that `--json` wrote") from None
    try:
        meta = result["meta"]
        problems = reference.problems(result["records"], result.get("probes") or [], result.get("busy") or [])
        lines = [f"Bench: `{meta.get('command')}` ({meta.get('date')}, commit {meta.get('git_commit')}; "
                 f"{meta.get('cpu')}; GPU: {', '.join(meta.get('gpus') or []) or 'none'})", "", *targets.lines(result)]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:   # hand-made or from another program
        raise UserError(f"--summary: {path} is not a bench JSON ({type(exc).__name__}: {exc}): name the file that "
                        "`--json` wrote") from None
    print("\n".join([*lines, "", "Problems (each fails the bench):" if problems else "Problems: none",
                     *(f"- {line}" for line in problems)]))
    return 1 if problems else 0


def typed() -> str:
    """How this command was started: 'python -m mlp.bench', 'python -m bench' or 'mlp-bench'."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.endswith("bench.__main__"):
        return f"python -m {spec.name.removesuffix('.__main__')}"
    return Path(sys.argv[0]).name if Path(sys.argv[0]).name == "mlp-bench" else "python -m mlp.bench"


def metadata(argv, records, real_shape) -> dict:
    command = " ".join([typed(), shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv])]).strip()
    return {
        "command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": backends.cpu_name(),
        "gpus": sorted({r["device_name"] for r in records if r.get("device", "cpu") != "cpu" and r.get("device_name")}),
        "devices": sorted({r["device"] for r in records if r.get("device")}),
        "platform": platform.platform(), "versions": versions(), "git_commit": git_commit(),
        "malloc_keeps_freed_memory": os.environ.get("MLP_MALLOC_DEFAULTS") != "1",
        "real_rows": real_shape[0], "features": real_shape[1],
        "usable_cores": usable_cores(),      # affinity and cgroup quota: what the thread policy sizes pools by
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],   # 1, 5, 15 min, as the sweep ended
        "wall_seconds": None,
        "unit": "one training epoch over N rows (forward + hand-written backward + update), data on the device; "
                "full batch = one step, minibatch = ceil(N/B) steps on a seeded permutation",
    }


def write_outputs(args, result) -> int:
    table = report.markdown(result)
    print(table)
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(result, f, indent=1, default=_jsonable)
        wrote(args.json, f"{len(result['records'])} records")
    if args.markdown:
        with atomic_write(args.markdown, "w") as f:
            f.write(table)
        wrote(args.markdown)
    if args.plot:
        if report.plot(result, args.plot):
            wrote(args.plot)
        else:
            print(f"no plot written to {args.plot}: nothing was measured", file=sys.stderr)
    note, problems = reference.skipped(result["records"]), reference.problems(result["records"], result["probes"],
                                                                              result.get("busy", ()))
    for line in ([note] if note else []) + problems:
        print(f"bench: {line}", file=sys.stderr)
    return 1 if problems else 0


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


main.prog = "bench"


def cli() -> None:
    """`python -m bench`, `python -m mlp.bench` and the mlp-bench console script."""
    from mlp.cli import run

    sys.exit(run(main))
