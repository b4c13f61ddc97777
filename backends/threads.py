"""How many threads a run's CPU thread pools use, chosen from the run and the machine, never from
the load, so that the same flags on the same machine give the same numbers: 1 thread while a
step's work B*D*H is under WORK_PER_THREAD, then one more per WORK_PER_THREAD, up to the cores
this process may use (its CPU affinity, capped by a cgroup CPU quota).

Why 1 thread for small steps: a 64-row step is ~25 MFLOP, under a millisecond per product, too
little to share; and a second BLAS or OpenMP thread spins waiting for a core that another
process holds: on a 2-core machine beside one or two busy processes the default job took
0.5-6.0 s per epoch with 2 threads against 0.10 s idle (at 4e258bc; today's: docs/cpu-or-gpu.md). NumPy's
(OpenBLAS's) last bits depend on the thread count; torch's and JAX's did not in our checks.
Dask is left alone: its workers run one thread each.
"""

import contextlib
import math
import os
import threading
from pathlib import Path

from mlp.errors import UserError

WORK_PER_THREAD = 1 << 30   # B*D*H of a step per thread: full batch (12,396 x 784 x 128) gets 2


def policy(batch: int, d: int, h: int, cores: int, requested="auto") -> int:
    """The thread count for steps of `batch` rows, `d` features and `h` hidden units on `cores`
    usable cores; `requested` is 'auto' or a number (`--threads N`, taken as given)."""
    if requested != "auto":
        return int(requested)
    return max(1, min(cores, batch * d * h // WORK_PER_THREAD + 1))


def usable_cores(affinity=None, root: str | os.PathLike = "/") -> int:
    """The cores this process may use: its affinity (all CPUs where the system has none), capped
    by the tightest cgroup CPU quota on its way to the root, rounded down (at least 1).
    `affinity` and `root` (where /proc and /sys are) are for tests."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = range(os.cpu_count() or 1)
    n = max(1, len(affinity))
    quota = cgroup_cpu_limit(root)
    return n if quota is None else max(1, min(n, math.floor(quota)))


def cgroup_cpu_limit(root: str | os.PathLike = "/") -> float | None:
    """The CPUs' worth of time this process's cgroups allow (quota / period), the smallest over
    its cgroup and the ones above it, v1 and v2; None without a quota."""
    root = Path(root)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":                                   # v2: one unified hierarchy
            mounts, files = [root / "sys/fs/cgroup"], ("cpu.max",)
        elif "cpu" in controllers.split(","):                   # v1: cpu or cpu,cpuacct
            mounts = [root / "sys/fs/cgroup" / m for m in ("cpu,cpuacct", "cpu", "cpuacct,cpu")]
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for mount in mounts:
            for i in range(len(parts), -1, -1):                 # a container sees its own cgroup as the root
                limit = _quota(mount.joinpath(*parts[:i]), files)
                if limit is not None:
                    limits.append(limit)
    return min(limits) if limits else None


def _quota(folder: Path, files: tuple) -> float | None:
    """quota / period as the files of a cgroup folder say them (v2: 'max 100000' without a quota; v1: -1)."""
    try:
        quota, period = map(int, " ".join((folder / f).read_text() for f in files).split()[:2])
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


_sizing = threading.RLock()   # the pools are the process's: while one run sizes them, another waits
_jax = {}   # the thread count chosen last for JAX, which its compiled engine reads when it compiles


def xla_options(device) -> dict | None:
    """jax.jit compiler options for `device` (a jax Device, or 'cpu') under the thread count chosen
    last: Eigen's products on one thread or on XLA's pool (whose size is fixed when JAX starts)."""
    if "threads" not in _jax or getattr(device, "platform", device) != "cpu":
        return None
    return {"xla_cpu_multi_thread_eigen": _jax["threads"] > 1}


def _set(backend, n: int | None) -> None:
    """torch's pool, or the count JAX compiles with (None: JAX's own), to n; NumPy's is BLAS's."""
    if backend.name == "torch":
        import torch

        torch.set_num_threads(n)
    elif backend.name == "jax":
        _jax.pop("threads", None) if n is None else _jax.update(threads=n)


def apply(backend, n: int) -> None:
    """Limit the CPU thread pools of `backend`'s library to n threads, for the rest of the process
    (the bench's workers; a run puts them back after: `limits`)."""
    from threadpoolctl import threadpool_limits

    _set(backend, n)
    threadpool_limits(limits=n, user_api="blas")   # NumPy's BLAS (every backend's host arrays)


def current(backend) -> int | None:
    """The threads `backend`'s library computes with now (None where that is not known)."""
    if backend.name == "torch":
        import torch

        return torch.get_num_threads()
    if backend.name == "jax":
        return _jax.get("threads")
    from threadpoolctl import threadpool_info

    counts = [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return max(counts) if counts else 1


def count(backend, batch: int, d: int, h: int, requested="auto") -> int | None:
    """The thread count for this run (`requested`: 'auto' or `--threads N`); None on a GPU or on
    Dask, whose pools are not this process's to size."""
    if backend.device != "cpu" or backend.name == "dask":
        if requested != "auto":
            where = "Dask workers run one thread each" if backend.name == "dask" else f"this run is on {backend.device}"
            raise UserError(f"--threads sizes this process's CPU thread pools, but {where}; drop --threads")
        return None
    return policy(batch, d, h, usable_cores(), requested)


def choose(backend, batch: int, d: int, h: int, requested="auto") -> int | None:
    """Apply the thread count for this run to the whole process (`apply`) and return it."""
    n = count(backend, batch, d, h, requested)
    if n is not None:
        apply(backend, n)
    return n


@contextlib.contextmanager
def limits(backend, batch: int, d: int, h: int, requested="auto"):
    """Size the CPU thread pools for this run (`count`) and yield the count; on leaving, every
    pool is as it was (BLAS through threadpoolctl, torch's, the count JAX compiles with). The
    pools are process-wide: a run in another thread waits here until this one has left."""
    n = count(backend, batch, d, h, requested)
    if n is None:
        yield None
        return
    from threadpoolctl import threadpool_limits

    with _sizing, threadpool_limits(limits=n, user_api="blas"):   # BLAS's put back on leaving
        before = current(backend) if backend.name in ("torch", "jax") else None   # read once the pools are ours
        try:
            _set(backend, n)
            yield n
        finally:
            _set(backend, before)
