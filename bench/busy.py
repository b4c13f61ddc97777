"""The busy-machine scenario, `python -m bench --busy`: every measurement idle, then again beside
K CPU-bound competing processes (K = 1, and K = the cores this process may use), and each one's
slowdown against its idle time.

A competitor is a Python busy loop that ends by itself at a deadline, in a session (and process
group) of its own; the bench stops every one with SIGKILL when the measurement ends, whatever
happened (an error, Ctrl-C, SIGTERM), so none outlives it, and none outlives its deadline even
if the bench itself is killed.
"""

import contextlib
import os
import signal
import subprocess
import sys

SPIN = "import time\nend = time.monotonic() + {seconds:.0f}\nwhile time.monotonic() < end:\n    pass\n"
DEFAULT_JOB = {"impl": "ours", "backend": "numpy", "engine": "eager", "dtype": "float32", "hidden": 128, "batch": 64}
TARGETS = {1: 1.3, "cores": 2.5}   # the default job's slowdown allowed beside 1 competitor, and one per core


def levels(cores: int) -> list[int]:
    """How many competitors each measurement runs beside: none, one, and one per usable core."""
    return sorted({0, 1, cores})


class Competitors:
    """`k` CPU-bound processes for at most `seconds`: started on entering, killed on leaving."""

    def __init__(self, k: int, seconds: float):
        self.k, self.seconds, self.procs = k, seconds, []

    def __enter__(self):
        try:
            for _ in range(self.k):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", SPIN.format(seconds=self.seconds)], start_new_session=True,
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)          # its own group: the loop and anything it started
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


def measure(run_worker, spec: dict, timeout: float) -> dict:
    """run_worker(spec, timeout) beside spec['busy'] competitors (none: as it is)."""
    with Competitors(spec.get("busy") or 0, timeout + 60):
        return run_worker(spec, timeout)


def _key(r: dict) -> tuple:
    return (r["impl"], r.get("backend"), r.get("engine"), r.get("threads_requested"), r["device"], r["dtype"],
            r["n"], r["hidden"], r.get("batch"))


def table(idle: list, busy: list, label) -> list:
    """Markdown lines: each measured row idle and beside K competitors, the slowdown in brackets;
    the default job first, with the targets it is held to."""
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    by = {(_key(r), r.get("busy") or 0): r for r in [*idle, *busy] if ok(r)}
    ks = sorted({r["busy"] for r in busy if r.get("busy")})
    keys = sorted({k for k, _ in by}, key=lambda k: (not _is_default(k), k[4:8], k[8] or 0, str(k[:4])))
    if not ks or not keys:
        return []
    lines = ["| row | N | H | B | threads | idle ms (load) | " + " | ".join(
                 f"{k} competitor{'s' * (k > 1)}: ms (× idle)" for k in ks) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(ks)]
    verdicts = []
    for key in keys:
        base = by.get((key, 0))
        cells = []
        for k in ks:
            r = by.get((key, k))
            ratio = r["median_ms"] / base["median_ms"] if r and base else None
            cells.append("–" if r is None else f"{r['median_ms']:.1f}" + (f" ({ratio:.2f}×)" if ratio else ""))
            if _is_default(key) and ratio is not None:
                goal = TARGETS[1] if k == 1 else TARGETS["cores"] if k == ks[-1] else None
                if goal:
                    verdicts.append(f"- default job beside {k} competitor{'s' * (k > 1)}: {ratio:.2f}× its idle "
                                    f"time (target ≤ {goal}×): {'met' if ratio <= goal else 'MISSED'}")
        any_r = base or next(by[(key, k)] for k in ks if (key, k) in by)
        name = ("**default job** " if _is_default(key) else "") + label(any_r)
        idle_cell = "–" if base is None else f"{base['median_ms']:.1f} ({_load(base)})"
        lines.append(f"| {name} | {key[6]:,} | {key[7]} | {key[8] or 'full'} | {any_r.get('threads') or '–'} | "
                     f"{idle_cell} | " + " | ".join(cells) + " |")
    return lines + ([""] + verdicts if verdicts else [])


def _is_default(key: tuple) -> bool:
    impl, backend, engine, threads, device, dtype, n, hidden, batch = key
    return (impl, backend, engine or "eager", dtype, hidden, batch) == tuple(DEFAULT_JOB.values()) and \
        threads in (None, "auto") and device == "cpu"


def _load(r: dict) -> str:
    load = r.get("load_avg")
    return "load –" if not load else f"load {load[0]:.1f}"
