"""What every implementation the benchmark times shares: the peers' names and libraries, the
`Impl` interface, and `Unavailable` for what cannot run here (see bench/impls.py for each impl)."""

import importlib.util

import numpy as np

from mlp import backends
from mlp.backends import threads
from mlp.batches import is_full_batch

PEERS = ("torch-manual", "torch-expert", "torch-autograd", "torch-compile", "jax-jit", "sklearn")
MINIBATCH_PEERS = ("torch-expert",)   # the others time a full-batch step only
LIBRARY = {"torch-manual": "torch", "torch-expert": "torch", "torch-autograd": "torch", "torch-compile": "torch",
           "jax-jit": "jax", "sklearn": "sklearn"}
# where our backends have a compiled engine (backends' `compiled_engine`), known here without
# importing the libraries into the sweep's own process
COMPILED = {("jax", "cpu"), ("jax", "cuda"), ("torch", "cpu"), ("torch", "cuda")}
SKLEARN_EPOCHS_PER_FIT = 5


class Unavailable(Exception):
    """This implementation is not run here (library not installed, a CPU-only peer on a GPU, full
    batch only): a skip, with its reason. An installed library that cannot use the device (a
    BackendError from backends.resolve) is the row's error, so that a GPU sweep cannot pass with
    its GPU rows skipped."""


def check_available(impl: str, backend: str | None, device: str) -> None:
    library = backend.partition(":")[0] if impl == "ours" else LIBRARY[impl]  # dask:W -> dask
    if importlib.util.find_spec(library) is None:
        raise Unavailable(f"{library} is not installed")
    if impl == "sklearn" and device != "cpu":
        raise Unavailable("scikit-learn runs on the CPU only")


class Impl:
    """setup() once; epoch() runs one epoch (epochs_per_call of them for sklearn); sync()
    waits for the device; first_loss() is the loss of the first step of the latest call, at
    the parameters it started from; last_loss() that of its last step (both force a sync).
    By default the latest call is one full-batch step whose loss is `self.loss`."""

    epochs_per_call = 1
    ours = False      # ours gets the thread policy; a peer its library's default
    backend = None    # the Backend it runs on (sklearn: none, NumPy's BLAS on the CPU)

    def __init__(self, device: str, dtype: str, lr: float, batch=None, seed: int = 0):
        self.device, self.dtype, self.lr = device, dtype, lr
        self.batch, self.rng = batch, np.random.default_rng(seed)   # batch None: full batch

    def setup(self, X: np.ndarray, y: np.ndarray, params: dict) -> None:
        raise NotImplementedError

    def set_threads(self, requested, batch: int, d: int, h: int) -> int | None:
        """The CPU threads of this run: ours the thread policy's (or the count asked for), a peer
        its library's default unless a count is asked for; None on a GPU, on Dask, or unknown."""
        backend = self.backend or backends.resolve(self.device, "numpy")
        if backend.device != "cpu" or backend.name == "dask":
            return None
        if requested == "auto" and not self.ours:
            return threads.current(backend)
        return backends.choose_threads(backend, batch, d, h, requested)

    def epoch(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def first_loss(self) -> float:
        return float(self.loss)

    def last_loss(self) -> float:
        return self.first_loss()

    def device_name(self) -> str:
        return backends.cpu_name() if self.backend is None else self.backend.device_name

    def permutation(self, n: int):
        """This epoch's rows, drawn on the host as mlp.loop does; None in full batch."""
        return None if self.batch is None or is_full_batch(n, self.batch) else self.rng.permutation(n)
