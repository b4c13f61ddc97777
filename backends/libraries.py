"""Each array library as a `Backend`: its namespace, how arrays reach and leave its device, how
to wait for it, how to name it, and its compiled engine where it has one. Imported by
`resolve()` only, and each library only when asked for."""

import functools
import importlib
import os

import numpy as np

from mlp.errors import BackendError

from .base import INSTALL_HINT, Backend, NoSuchDevice
from .host import cpu_name


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


def _no_such_device(index: int, names) -> NoSuchDevice:
    """`names`: the devices that exist, e.g. ['cuda:0 (NVIDIA H100)']."""
    return NoSuchDevice(f"device cuda:{index} does not exist; devices: {', '.join(names)}")


def _numpy(index: int | None) -> Backend:
    import array_api_compat.numpy as xp

    return Backend(name="numpy", device="cpu", xp=xp, version=np.__version__,
                   _asarray=lambda host, dtype: np.array(host, copy=True), _to_host=np.asarray)


def _array_api_strict(index: int | None) -> Backend:
    xp = _import("array_api_strict", "array_api_strict")

    def to_host(x):
        return np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)

    return Backend(name="array_api_strict", device="cpu", xp=xp, version=getattr(xp, "__version__", "?"),
                   _asarray=lambda host, dtype: xp.asarray(host, copy=True),
                   _to_host=lambda x: np.array(to_host(x), copy=True))


def _torch(index: int | None) -> Backend:
    torch = _import("torch", "torch")
    import array_api_compat.torch as xp

    if index is None:
        from .torch_compile import TorchCompileEngine as compiled

        dev, name, device_name = torch.device("cpu"), "cpu", cpu_name
        sync = lambda *arrays: None  # noqa: E731  (eager CPU torch runs each op to completion)
    else:
        if not torch.cuda.is_available():
            raise BackendError(
                "CUDA was asked for with --backend torch, but this PyTorch build sees no GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                "install a CUDA build of PyTorch on a machine with an NVIDIA GPU, or use --device cpu"
            )
        count = torch.cuda.device_count()
        if index >= count:
            raise _no_such_device(index, (f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(count)))
        from .torch_graph import TorchGraphEngine

        dev, name = torch.device("cuda", index), f"cuda:{index}"
        compiled = functools.partial(TorchGraphEngine, dev)
        sync = lambda *arrays: torch.cuda.synchronize(dev)  # noqa: E731
        device_name = lambda: torch.cuda.get_device_name(index)  # noqa: E731

    return Backend(name="torch", device=name, xp=xp, version=torch.__version__,
                   _asarray=lambda host, dtype: torch.tensor(host, device=dev),
                   _to_host=lambda x: x.detach().cpu().numpy().copy(), _synchronize=sync, _device_name=device_name,
                   compiled_engine=compiled,
                   auto_compiles=index is not None)   # CPU: --engine compiled only (compiling takes 5-90 s)


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
        raise _no_such_device(index, (f"cuda:{i} ({gpu_name(i)})" for i in range(count)))
    cupy.cuda.Device(index).use()
    xp = _compat_namespace(cupy)

    def asarray(host, dtype):
        with cupy.cuda.Device(index):
            return cupy.asarray(host)

    return Backend(name="cupy", device=f"cuda:{index}", xp=xp, version=cupy.__version__, _asarray=asarray,
                   _to_host=cupy.asnumpy, _synchronize=lambda *arrays: cupy.cuda.Device(index).synchronize(),
                   _device_name=lambda: gpu_name(index))


def _jax_address_space() -> None:
    """JAX (XLA, LLVM, glibc's per-thread arenas) does not fail with an error when an address-space
    limit (ulimit -v) runs out: the process aborts or segfaults. Measured on 2 cores: an abort from
    1.5 to 1.65 GB, fine from 1.7 GB. A limit below an estimate scaled by the cores is refused now."""
    import os
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    need = (3 << 29) + (os.cpu_count() or 1) * (1 << 28)   # 1.5 GiB + 256 MiB per core
    if limit != resource.RLIM_INFINITY and limit < need:
        raise BackendError(f"--backend jax under an address-space limit of {limit / 2**30:.2f} GiB (ulimit -v): JAX "
                           "aborts the whole process, without an error to report, when it runs out of address "
                           f"space, and needs about {need / 2**30:.2f} GiB on these {os.cpu_count()} cores; raise "
                           "the limit (ulimit -v unlimited) or use --backend numpy or torch (to reduce --hidden "
                           "or --batch-size does not lower what JAX itself reserves)")


def _jax(index: int | None) -> Backend:
    # JAX takes 75% of each GPU's memory when it first uses one, unless told not to; here it takes
    # what it uses, so that test workers, bench workers, a second run and other libraries share
    # the GPU (an explicit setting is kept). JAX reads it when its clients start (jax.devices()):
    # set for that moment only, so that the process's environment is left as it was
    added = "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        _jax_address_space()
        jax = _import("jax", "jax")
        jax.devices()
    finally:
        if added:
            del os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]
    jax.config.update("jax_enable_x64", True)  # float64 stays float64 when asked for
    # float32 products in full float32, as NumPy, CuPy and torch (TF32 off) do here, not TF32
    jax.config.update("jax_default_matmul_precision", "highest")
    import jax.numpy as jnp

    from .jax_engine import JaxScanEngine

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
            raise _no_such_device(index, (f"cuda:{i} ({d.device_kind})" for i, d in enumerate(gpus)))
        dev = gpus[index]
        name, device_name = f"cuda:{index}", (lambda: dev.device_kind)

    def sync(*arrays):
        # JAX dispatches asynchronously and has no device-wide barrier (a fresh scalar's
        # block_until_ready returns with earlier work still queued): wait on the outputs.
        if not arrays:
            raise ValueError("JAX has no device-wide barrier: pass the arrays to wait for, "
                             "backend.synchronize(*outputs)")
        jax.block_until_ready(arrays)

    return Backend(name="jax", device=name, xp=jnp, version=jax.__version__,
                   _asarray=lambda host, dtype: jax.device_put(host, dev), _to_host=lambda x: np.array(x, copy=True),
                   _synchronize=sync, _device_name=device_name, compiled_engine=functools.partial(JaxScanEngine, dev))


FACTORIES = {"numpy": _numpy, "cupy": _cupy, "torch": _torch, "jax": _jax, "array_api_strict": _array_api_strict}
