"""The one place that knows which array libraries and devices exist.

`resolve(device, backend)` turns the user's `--device` / `--backend` into a `Backend`:
the array-API namespace `xp` plus the few things the maths never needs to know about,
namely moving arrays to and from the device, waiting for the device before reading a
clock, and naming the hardware.  Libraries are imported lazily, so a CPU-only machine
never needs CuPy, PyTorch or JAX installed.

    cpu            -> numpy (default), torch, jax, array_api_strict
    cuda, cuda:N   -> cupy (default), torch, jax
    dask           -> NumPy (or, on cuda, CuPy) chunks on a Dask cluster: see dask_cluster.py

The modules: base (Backend, device names), libraries (one factory per library), host (the
CPU, its allocator and memory), threads (the CPU thread pools' size), oom (out-of-memory errors),
torch_graph, torch_compile and jax_engine (the compiled engines), dask_cluster and dask_engine
(--backend dask).
"""

from __future__ import annotations

import sys

from mlp.errors import BackendError
from mlp.model import DTYPES

from .base import BACKENDS, INSTALL_HINT, Backend, parse_device
from .host import cpu_name, keep_freed_memory
from .oom import describe_out_of_memory, is_out_of_memory
from .threads import choose as choose_threads

__all__ = [
    "Backend",
    "BackendError",
    "BACKENDS",
    "DTYPES",
    "INSTALL_HINT",
    "resolve",
    "release",
    "parse_device",
    "cpu_name",
    "is_out_of_memory",
    "describe_out_of_memory",
    "keep_freed_memory",
    "choose_threads",
]


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
    if "mlp.backends.dask_cluster" in sys.modules:
        sys.modules["mlp.backends.dask_cluster"].release_all()
