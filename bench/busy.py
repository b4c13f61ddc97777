"""The busy-machine scenario, `python -m bench --busy`: every measurement idle, then again beside
K CPU-bound competing processes (K = 1, and K = the cores this process may use), and each one's
slowdown against its idle time.

A competitor is a Python busy loop that ends by itself at a deadline, in a session (and process
group) of its own; the bench stops every one with SIGKILL when the measurement ends, whatever
happened (an error, Ctrl-C, SIGTERM). A competitor, like a bench worker, dies with the bench
(mlp.bench.die_with_parent), even when the bench is killed with SIGKILL.
"""

import contextlib
import os
import signal
import subprocess
import sys

from .reference import IDENTITY
from .targets import DEFAULT_JOB, matches

SPIN = ("from mlp.bench import die_with_parent\ndie_with_parent({parent})\n"
        "import time\nend = time.monotonic() + {seconds:.0f}\nwhile time.monotonic() < end:\n    pass\n")


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
                spin = SPIN.format(parent=os.getpid(), seconds=self.seconds)
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", spin], start_new_session=True,
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
    return tuple(r.get(k) for k in IDENTITY) + (r["device"], r["dtype"], r["n"], r["hidden"], r.get("batch"))


def table(idle: list, busy: list, label) -> list:
    """Markdown lines: each measured row idle and beside K competitors, the slowdown in brackets;
    the default job first (its targets: targets.py)."""
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    by = {(_key(r), r.get("busy") or 0): r for r in [*idle, *busy] if ok(r)}
    first = {}
    for (key, _), r in by.items():
        first.setdefault(key, r)                          # a record of each row, idle if it has one
    ks = sorted({r["busy"] for r in busy if r.get("busy")})
    keys = sorted(first, key=lambda k: (not matches(first[k], DEFAULT_JOB), k[4:8], k[8] or 0, str(k[:4])))
    if not ks or not keys:
        return []
    lines = ["| row | N | H | B | threads | idle ms (load) | " + " | ".join(
                 f"{k} competitor{'s' * (k > 1)}: ms (× idle)" for k in ks) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(ks)]
    for key in keys:
        base = by.get((key, 0))
        cells = []
        for k in ks:
            r = by.get((key, k))
            ratio = r["median_ms"] / base["median_ms"] if r and base else None
            cells.append("–" if r is None else f"{r['median_ms']:.1f}" + (f" ({ratio:.2f}×)" if ratio else ""))
        any_r = first[key]
        name = ("**default job** " if matches(any_r, DEFAULT_JOB) else "") + label(any_r)
        idle_cell = "–" if base is None else f"{base['median_ms']:.1f} ({_load(base)})"
        lines.append(f"| {name} | {key[6]:,} | {key[7]} | {key[8] or 'full'} | {any_r.get('threads') or '–'} | "
                     f"{idle_cell} | " + " | ".join(cells) + " |")
    return lines


def _load(r: dict) -> str:
    load = r.get("load_avg")
    return "load –" if not load else f"load {load[0]:.1f}"
