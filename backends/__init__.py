"""The one place that knows which array libraries and devices exist.

`resolve(device, backend)` turns the user's `--device` / `--backend` into a `Backend`:
the array-API namespace `xp` plus the few things the maths never needs to know about,
namely moving arrays to and from the device, waiting for the device before reading a
clock, and naming the hardware.  Libraries are imported lazily, so a CPU-only machine
never needs CuPy, PyTorch or JAX installed.

    cpu            -> numpy (default), torch, jax, array_api_strict
    cuda, cuda:N   -> cupy (default), torch, jax
    dask           -> NumPy (or, on cuda, CuPy) chunks on a Dask cluster: see dask_cluster.py
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = [
    "Backend",
    "BackendError",
    "BACKENDS",
    "resolve",
    "parse_device",
    "cpu_name",
    "is_out_of_memory",
    "describe_out_of_memory",
    "keep_freed_memory",
    "release",
]

BACKENDS = ("numpy", "cupy", "torch", "jax", "array_api_strict", "dask")
DTYPES = ("float32", "float64")

INSTALL_HINT = {
    "cupy": "pip install 'mlp-by-hand[cuda12]' (CUDA 12) or 'mlp-by-hand[cuda13]' (CUDA 13)",
    "torch": "pip install 'mlp-by-hand[torch]'",
    "jax": "pip install jax (or 'jax[cuda12]' for a GPU)",
    "array_api_strict": "pip install array-api-strict",
}


class BackendError(Exception):
    """A device or backend the user asked for that cannot be had (a user error: exit code 2)."""


@dataclass(frozen=True)
class Backend:
    """An array library on one device.

    name:   'numpy' | 'cupy' | 'torch' | 'jax' | 'array_api_strict'
    device: 'cpu' or 'cuda:N'
    xp:     the array-API namespace of the library's arrays (what `array_namespace` returns)
    """

    name: str
    device: str
    xp: Any
    version: str
    _asarray: Callable[[np.ndarray, Any], Any] = field(repr=False)
    _to_host: Callable[[Any], np.ndarray] = field(repr=False)
    _synchronize: Callable[..., None] = field(repr=False)
    _device_name: Callable[[], str] = field(repr=False)
    # the compiled engine where this backend has one: (step, X, y, batch) -> engine (see mlp.loop)
    compiled_engine: Callable | None = field(default=None, repr=False)

    def asarray(self, host_array, dtype: str | None = None):
        """Copy a host (NumPy) array to this device, optionally casting to 'float32'/'float64'.

        The cast happens on the host, so every backend receives bit-identical values."""
        host = np.asarray(host_array)
        if dtype is not None:
            host = host.astype(dtype, copy=False)
        return self._asarray(np.ascontiguousarray(host), dtype)

    def to_host(self, x) -> np.ndarray:
        """Copy a device array (or 0-d loss) back to a NumPy array."""
        return self._to_host(x)

    def synchronize(self, *arrays) -> None:
        """Block until the device's queued work has finished (CPU NumPy: nothing to wait for).

        JAX has no device-wide barrier: there, pass the arrays to wait for (the outputs of
        the work being timed); without any, JAX's synchronize is an error, not a silent no-op."""
        self._synchronize(*arrays)

    @property
    def device_name(self) -> str:
        """Human-readable hardware name, e.g. 'NVIDIA H100 80GB HBM3' or the CPU model."""
        return self._device_name()

    def __str__(self) -> str:
        return f"{self.name} on {self.device} ({self.device_name})"


# --------------------------------------------------------------------------- helpers


def cpu_name() -> str:
    """The CPU model string, e.g. 'Intel(R) Xeon(R) Processor', and the core count."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "CPU"
    return f"{name} ({os.cpu_count()} cores)"


def parse_device(device: str) -> tuple[str, int | None]:
    """'cpu' -> ('cpu', None); 'cuda' -> ('cuda', 0); 'cuda:1' -> ('cuda', 1)."""
    text = (device or "").strip().lower()
    if text == "cpu":
        return "cpu", None
    m = re.fullmatch(r"(cuda|gpu)(?::(\d+))?", text)
    if m:
        return "cuda", int(m.group(2) or 0)
    raise BackendError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")


_ALLOCATOR_TUNED = None


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks (up to `limit_bytes`) for reuse.

    A full-batch step allocates its (N, H) temporaries afresh every epoch. By default
    glibc hands blocks over a few MB straight back to the kernel when they are freed, so
    the next epoch page-faults them in again (about 2,500 faults, 4-5 ms, per epoch at
    N=12,396, H=128 on this project's 2-core CI machine). Raising the mmap and trim
    thresholds makes malloc reuse them instead, the CPU analogue of CuPy's memory pool.
    Process-wide; applied to every CPU backend (and to every CPU peer in the benchmark).
    Set MLP_MALLOC_DEFAULTS=1 to leave malloc alone. Returns True if applied."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        _ALLOCATOR_TUNED = False
        if os.environ.get("MLP_MALLOC_DEFAULTS") != "1" and platform.system() == "Linux":
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
                _ALLOCATOR_TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, limit_bytes)) and bool(
                    libc.mallopt(M_TRIM_THRESHOLD, limit_bytes))
            except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
                _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED


def resolve(device: str = "cpu", backend: str | None = None, options=None) -> Backend:
    """The Backend for `--device` and `--backend` (None: NumPy on cpu, CuPy on cuda);
    `options` (a dask_cluster.Options) says which cluster `--backend dask` uses.

    Raises BackendError, with a one-line message that says what to do, when the library
    is missing, the device does not exist, or the pair makes no sense."""
    kind, index = parse_device(device)
    if backend is None:
        backend = "numpy" if kind == "cpu" else "cupy"
    backend = backend.strip().lower().replace("-", "_")
    if backend == "dask":  # the cluster it opens is closed by release()
        from .dask_cluster import dask_backend

        return dask_backend(kind, index, options)
    from .libraries import FACTORIES

    if backend not in FACTORIES:
        raise BackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if kind == "cuda" and backend in ("numpy", "array_api_strict"):
        raise BackendError(
            f"{backend} runs on the CPU only: use --backend cupy, torch or jax with --device {device}, "
            "or --device cpu"
        )
    chosen = FACTORIES[backend](index)
    if kind == "cpu":
        keep_freed_memory()
    return chosen


def release() -> None:
    """Close what resolve() opened that outlives a run (a Dask cluster); the commands call it on every exit."""
    import sys

    if "mlp.backends.dask_cluster" in sys.modules:
        sys.modules["mlp.backends.dask_cluster"].release_all()


# --------------------------------------------------------------------------- out of memory


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of NumPy, CuPy, PyTorch and JAX."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    if name in ("OutOfMemoryError",):  # cupy.cuda.memory / torch.cuda
        return True
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def describe_out_of_memory(exc: BaseException) -> str:
    """A one-line description of the failed allocation, with the size where the library says it."""
    text = " ".join(str(exc).split())
    m = re.search(r"allocat\w*\s+([\d.,]+\s*[KMGTP]?i?B|[\d,]+ bytes)", text)
    size = re.sub(r"\.(?=\s)", "", m.group(1)) if m else None  # NumPy writes "570. TiB"
    shape = re.search(r"shape \(([^)]*)\)", text)
    what = f"an allocation of {size}" if size else "an allocation"
    if shape:
        what += f" (array of shape ({shape.group(1)}))"
    return what
