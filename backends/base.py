"""What every backend is: an array library on one device (`Backend`), and the device names a user
may give (`parse_device`)."""

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from mlp.errors import BackendError

from .host import cpu_name

BACKENDS = ("auto", "numpy", "cupy", "torch", "jax", "array_api_strict", "dask")

INSTALL_HINT = {
    "cuda": "pip install 'mlp-by-hand[cuda12]' (CUDA 12) or 'mlp-by-hand[cuda13]' (CUDA 13): JAX and CuPy for the GPU",
    "cupy": "pip install 'mlp-by-hand[cuda12]' (CUDA 12) or 'mlp-by-hand[cuda13]' (CUDA 13)",
    "torch": "pip install 'mlp-by-hand[torch]'",
    "jax": "pip install 'mlp-by-hand[jax]' (for a GPU: 'mlp-by-hand[cuda12]' or '[cuda13]')",
    "array_api_strict": "pip install array-api-strict",
}


class NoSuchDevice(BackendError):
    """--device cuda:N names a GPU this machine does not have (the message lists those it has)."""


@dataclass(frozen=True)
class Backend:
    """An array library on one device."""

    name: str      # 'numpy', 'cupy', 'torch', 'jax', 'array_api_strict' (or 'dask')
    device: str    # 'cpu' or 'cuda:N'
    xp: Any        # the array-API namespace of the library's arrays (what `array_namespace` returns)
    version: str
    _asarray: Callable[[np.ndarray, Any], Any] | None = field(default=None, repr=False)
    _to_host: Callable[[Any], np.ndarray] | None = field(default=None, repr=False)
    _synchronize: Callable[..., None] = field(default=lambda *arrays: None, repr=False)   # the CPU: nothing to wait for
    _device_name: Callable[[], str] = field(default=cpu_name, repr=False)
    # the compiled engine where this backend has one: (step, X, y, batch) -> engine (see mlp.loop)
    compiled_engine: Callable | None = field(default=None, repr=False)
    picked: str | None = None      # why --backend auto picked this one (None: asked for by name)
    auto_compiles: bool = True     # False: `--engine auto` stays eager (compiling costs more than it saves)

    def asarray(self, host_array, dtype: str | None = None):
        """Copy a host (NumPy) array to this device, optionally cast to 'float32'/'float64' on the
        host first, so that every backend receives bit-identical values."""
        return self._asarray(np.asarray(host_array, dtype=dtype, order="C"), dtype)   # a 0-d array stays 0-d (Adam's t)

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


def parse_device(device: str) -> tuple[str, int | None]:
    """'cpu' -> ('cpu', None); 'cuda' -> ('cuda', 0); 'cuda:1' -> ('cuda', 1)."""
    text = (device or "").strip().lower()
    if text == "cpu":
        return "cpu", None
    if m := re.fullmatch(r"(cuda|gpu)(?::(\d+))?", text):
        return "cuda", int(m.group(2) or 0)
    raise BackendError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
