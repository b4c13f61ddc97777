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

import importlib
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


def _import(module: str, backend: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendError(
            f"backend {backend!r} needs the Python package {module.split('.')[0]!r}, "
            f"which is not installed ({exc.__class__.__name__}: {exc}); {INSTALL_HINT[backend]}"
        ) from None


def _compat_namespace(library_module):
    from array_api_compat import array_namespace

    probe = library_module.asarray([0.0]) if hasattr(library_module, "asarray") else None
    return array_namespace(probe)


def _same_on_host(x) -> np.ndarray:
    return np.asarray(x)


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


# --------------------------------------------------------------------------- backends


def _numpy(index: int | None) -> Backend:
    import array_api_compat.numpy as xp

    return Backend(
        name="numpy",
        device="cpu",
        xp=xp,
        version=np.__version__,
        _asarray=lambda host, dtype: np.array(host, copy=True),
        _to_host=_same_on_host,
        _synchronize=lambda *arrays: None,
        _device_name=cpu_name,
    )


def _array_api_strict(index: int | None) -> Backend:
    xp = _import("array_api_strict", "array_api_strict")

    def to_host(x):
        return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)

    return Backend(
        name="array_api_strict",
        device="cpu",
        xp=xp,
        version=getattr(xp, "__version__", "?"),
        _asarray=lambda host, dtype: xp.asarray(host, copy=True),
        _to_host=lambda x: np.array(to_host(x), copy=True),
        _synchronize=lambda *arrays: None,
        _device_name=cpu_name,
    )


def _torch(index: int | None) -> Backend:
    torch = _import("torch", "torch")
    import array_api_compat.torch as xp

    if index is None:
        dev = torch.device("cpu")
        name = "cpu"
        sync = lambda *arrays: None  # noqa: E731  (eager CPU torch runs each op to completion)
        device_name = cpu_name
    else:
        if not torch.cuda.is_available():
            raise BackendError(
                "CUDA was asked for with --backend torch, but this PyTorch build sees no GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "install a CUDA build of PyTorch on a machine with an NVIDIA GPU, or use --device cpu"
            )
        count = torch.cuda.device_count()
        if index >= count:
            names = ", ".join(f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
            raise BackendError(f"device cuda:{index} does not exist; devices: {names}")
        dev = torch.device("cuda", index)
        name = f"cuda:{index}"
        sync = lambda *arrays: torch.cuda.synchronize(dev)  # noqa: E731
        device_name = lambda: torch.cuda.get_device_name(index)  # noqa: E731

    return Backend(
        name="torch",
        device=name,
        xp=xp,
        version=torch.__version__,
        _asarray=lambda host, dtype: torch.tensor(host, device=dev),
        _to_host=lambda x: x.detach().cpu().numpy().copy(),
        _synchronize=sync,
        _device_name=device_name,
        compiled_engine=None if index is None else _torch_graph_factory(dev),
    )


def _torch_graph_factory(dev):
    from .torch_graph import factory

    return factory(dev)


def _cupy(index: int | None) -> Backend:
    if index is None:
        raise BackendError("CuPy runs on CUDA GPUs only: use --device cuda (or --backend numpy for the CPU)")
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendError(
            f"--device cuda needs CuPy, which is not installed or does not load ({exc}); "
            f"{INSTALL_HINT['cupy']}, or use --device cpu"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device
        raise BackendError(
            f"CuPy is installed but finds no usable CUDA GPU ({exc.__class__.__name__}: {exc}); "
            "check the NVIDIA driver with nvidia-smi, or use --device cpu"
        ) from None
    if count == 0:
        raise BackendError("CuPy is installed but this machine has no CUDA GPU; use --device cpu")

    def gpu_name(i):
        raw = cupy.cuda.runtime.getDeviceProperties(i)["name"]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    if index >= count:
        names = ", ".join(f"cuda:{i} ({gpu_name(i)})" for i in range(count))
        raise BackendError(f"device cuda:{index} does not exist; devices: {names}")
    cupy.cuda.Device(index).use()
    xp = _compat_namespace(cupy)

    def asarray(host, dtype):
        with cupy.cuda.Device(index):
            return cupy.asarray(host)

    return Backend(
        name="cupy",
        device=f"cuda:{index}",
        xp=xp,
        version=cupy.__version__,
        _asarray=asarray,
        _to_host=lambda x: cupy.asnumpy(x),
        _synchronize=lambda *arrays: cupy.cuda.Device(index).synchronize(),
        _device_name=lambda: gpu_name(index),
    )


def _jax(index: int | None) -> Backend:
    jax = _import("jax", "jax")
    jax.config.update("jax_enable_x64", True)  # float64 stays float64 when asked for
    # float32 products in full float32, as NumPy, CuPy and torch (TF32 off) do here, not TF32
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp

    if index is None:
        dev = jax.devices("cpu")[0]
        name, device_name = "cpu", cpu_name
    else:
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            raise BackendError(
                "CUDA was asked for with --backend jax, but JAX sees no GPU; "
                "pip install 'jax[cuda12]' on a machine with an NVIDIA GPU, or use --device cpu"
            )
        if index >= len(gpus):
            names = ", ".join(f"cuda:{i} ({d.device_kind})" for i, d in enumerate(gpus))
            raise BackendError(f"device cuda:{index} does not exist; devices: {names}")
        dev = gpus[index]
        name, device_name = f"cuda:{index}", (lambda: dev.device_kind)

    def sync(*arrays):
        # JAX dispatches asynchronously and has no device-wide barrier (a fresh scalar's
        # block_until_ready returns with earlier work still queued): wait on the outputs.
        if not arrays:
            raise ValueError("JAX has no device-wide barrier: pass the arrays to wait for, "
                             "backend.synchronize(*outputs)")
        jax.block_until_ready(arrays)

    return Backend(
        name="jax",
        device=name,
        xp=jnp,
        version=jax.__version__,
        _asarray=lambda host, dtype: jax.device_put(host, dev),
        _to_host=lambda x: np.array(x, copy=True),
        _synchronize=sync,
        _device_name=device_name,
        compiled_engine=_jax_scan_factory(dev),
    )


def _jax_scan_factory(dev):
    from .jax_engine import factory

    return factory(dev)


_FACTORIES = {
    "numpy": _numpy,
    "cupy": _cupy,
    "torch": _torch,
    "jax": _jax,
    "array_api_strict": _array_api_strict,
}


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
    if backend not in _FACTORIES:
        raise BackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if kind == "cuda" and backend in ("numpy", "array_api_strict"):
        raise BackendError(
            f"{backend} runs on the CPU only: use --backend cupy, torch or jax with --device {device}, "
            "or --device cpu"
        )
    chosen = _FACTORIES[backend](index)
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
