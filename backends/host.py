"""The host CPU this process runs on: its name, its allocator setting, and its memory as the
kernel counts it (resident now, and at its peak)."""

import contextlib
import functools
import os
import platform


def cpu_name() -> str:
    """The CPU model string, e.g. 'Intel(R) Xeon(R) Processor', and the core count."""
    name = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), "")
    name = name or platform.processor() or platform.machine() or "CPU"
    return f"{name} ({os.cpu_count()} cores)"


@functools.cache
def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks (up to `limit_bytes`) for reuse, process-wide (every CPU backend,
    every CPU peer of the benchmark); MLP_MALLOC_DEFAULTS=1 leaves malloc alone. True if applied.

    A full-batch step allocates its (N, H) temporaries afresh every epoch, and glibc hands blocks over a few MB
    back to the kernel when they are freed, so the next epoch page-faults them in again (thousands of faults per
    epoch at N=12,396, H=128): higher mmap and trim thresholds reuse them instead, as CuPy's memory pool does."""
    if os.environ.get("MLP_MALLOC_DEFAULTS") == "1" or platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit_bytes)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit_bytes))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def reset_peak_memory() -> bool:
    """Restart this process's peak resident set (VmHWM) from its current size (Linux >= 4.0);
    False where the kernel cannot (then the peak counts from the process's start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory() -> dict:
    """{'rss': bytes resident now (psutil), 'peak': the most resident since the start or the last
    reset_peak_memory (Linux's VmHWM, which psutil does not report; elsewhere getrusage's peak)}."""
    import psutil

    try:
        with open("/proc/self/status") as f:
            peak = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)
    return {"rss": psutil.Process().memory_info().rss, "peak": peak}
