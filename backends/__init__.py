"""The one place that knows which array libraries and devices exist.

`resolve(device, backend)` turns the user's `--device` / `--backend` into a `Backend`:
the array-API namespace `xp` plus the few things the maths never needs to know about,
namely moving arrays to and from the device, waiting for the device before reading a
clock, and naming the hardware.  Libraries are imported lazily, so a CPU-only machine
never needs CuPy, PyTorch or JAX installed.

    cpu            -> numpy (default, and what auto picks), torch, jax, array_api_strict
    cuda, cuda:N   -> auto (default): the first of jax, torch that can use the GPU (each has a
                      compiled engine there, JAX's the faster), else cupy (eager); or any by name
    dask           -> NumPy (or, on cuda, CuPy) chunks on a Dask cluster: see dask_cluster.py
"""

import dataclasses
import importlib.util
import sys

from mlp.errors import BackendError
from mlp.model import DTYPES

from .base import BACKENDS, INSTALL_HINT, Backend, NoSuchDevice, parse_device
from .host import cpu_name, keep_freed_memory
from .oom import describe_out_of_memory, is_out_of_memory
from .threads import choose as choose_threads
from .threads import limits as thread_limits

__all__ = ["Backend", "BackendError", "BACKENDS", "DTYPES", "INSTALL_HINT", "resolve", "of", "release", "parse_device",
           "cpu_name", "is_out_of_memory", "describe_out_of_memory", "keep_freed_memory", "choose_threads",
           "thread_limits"]


#: what --backend auto tries on CUDA, in order: the backends with a compiled engine there, fastest
#: first (docs/gpu.md), then CuPy, the eager reference
AUTO_CUDA = ("jax", "torch", "cupy")


def resolve(device: str = "cpu", backend: str | None = None, options=None) -> Backend:
    """The Backend for `--device` and `--backend` (None: 'auto', which is NumPy on cpu and on cuda
    the first of AUTO_CUDA that can use the GPU; the Backend's `picked` says why);
    `options` (a dask_cluster.Options) says which cluster `--backend dask` uses.

    Raises BackendError, with a one-line message that says what to do, when the library
    is missing, the device does not exist, or the pair makes no sense."""
    kind, index = parse_device(device)
    backend = "auto" if backend is None else backend.strip().lower().replace("-", "_")
    if backend == "auto" and kind == "cpu":
        backend = "numpy"
    if backend == "dask":  # the cluster it opens is closed by release()
        from .dask_cluster import dask_backend

        return dask_backend(kind, index, options)
    from .libraries import FACTORIES

    if backend == "auto":
        return auto_cuda(FACTORIES, device, index)
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


def of(array) -> Backend:
    """The Backend of `array`'s own library, on `array`'s device (what the estimator computes on
    under scikit-learn's array API dispatch)."""
    import array_api_compat as compat

    xp, dev = compat.array_namespace(array), compat.device(array)
    name = next((n for n in (*AUTO_CUDA, "numpy", "array_api_strict") if getattr(compat, f"is_{n}_namespace")(xp)),
                None)
    text = str(dev).lower()       # cpu, TFRT_CPU_0, cuda:0, <CUDA Device 0> (CuPy), ...
    kind = "cpu" if name in ("numpy", "array_api_strict") or "cpu" in text else \
        "cuda" if text.lstrip("<").startswith(("cuda", "gpu")) else None
    if name is None or kind is None:
        raise BackendError(f"arrays of {type(array).__module__} on {dev} have no backend here: give NumPy, CuPy, "
                           "PyTorch, JAX or array_api_strict arrays on the CPU or a CUDA GPU")
    index = getattr(dev, "index", None) if name == "torch" else getattr(dev, "id", None)
    chosen = resolve("cpu" if kind == "cpu" else f"cuda:{index or 0}", name)
    if name == "array_api_strict":      # its devices are named, not numbered: arrays go to this one
        xp = chosen.xp
        chosen = dataclasses.replace(chosen, _asarray=lambda host, dtype: xp.asarray(host, device=dev, copy=True))
    return chosen


def auto_cuda(factories: dict, device: str, index: int) -> Backend:
    """--backend auto on a CUDA device: the first backend of AUTO_CUDA that can use it, with
    `picked` saying why that one (and why not those before it)."""
    why_not, no_such_device = [], None
    for name in AUTO_CUDA:
        try:
            chosen = factories[name](index)
        except BackendError as exc:
            missing = importlib.util.find_spec(name) is None
            why_not.append(f"{name}: {'not installed' if missing else str(exc).split('; ')[0]}")  # the problem
            no_such_device = no_such_device or (exc if isinstance(exc, NoSuchDevice) else None)
            continue
        if name == AUTO_CUDA[0]:
            reason = "the fastest installed backend with a compiled engine on CUDA"
        elif chosen.compiled_engine is not None:
            reason = f"an installed backend with a compiled engine on CUDA ({'; '.join(why_not)})"
        else:
            reason = f"no backend with a compiled engine can use {device} ({'; '.join(why_not)}), so eager CuPy"
        return dataclasses.replace(chosen, picked=reason)
    if no_such_device:                     # a GPU is there, the index is wrong: say which devices exist
        raise no_such_device
    raise BackendError(f"no installed library can use --device {device} ({'; '.join(why_not)}); on a machine "
                       f"with an NVIDIA GPU, {INSTALL_HINT['cuda']}, or use --device cpu")


def release() -> None:
    """Close what resolve() opened that outlives a run (a Dask cluster); the commands call it on every exit."""
    if "mlp.backends.dask_cluster" in sys.modules:
        sys.modules["mlp.backends.dask_cluster"].release_all()
