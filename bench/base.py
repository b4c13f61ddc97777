"""What every implementation the benchmark times shares: the peers' names and libraries, the
`Impl` interface, and `Unavailable` for what cannot run here (see bench/impls.py for each impl)."""

import importlib.util

import numpy as np

from mlp import backends
from mlp.backends import threads
from mlp.batches import is_full_batch

PEERS = ("torch-manual", "torch-expert", "torch-autograd", "torch-compile", "jax-jit", "sklearn")
MINIBATCH_PEERS = ("torch-expert",)   # the others time a full-batch step only (sklearn: also the API rows)
ESTIMATOR = "mlp.MLPClassifier"       # ours as a Python-API user runs it, beside sklearn's MLPClassifier
LIBRARY = {"torch-manual": "torch", "torch-expert": "torch", "torch-autograd": "torch", "torch-compile": "torch",
           "jax-jit": "jax", "sklearn": "sklearn", ESTIMATOR: "sklearn"}   # the estimator: for its peer
# the optimiser of a row, as mlp.settings' values: plain gradient descent (the default job's), momentum, Adam
OPTIMISERS = {"sgd": {"lr": 0.1}, "momentum": {"lr": 0.01, "momentum": 0.9}, "adam": {"solver": "adam", "lr": 0.001}}
# where our backends have a compiled engine (backends' `compiled_engine`), known here without
# importing the libraries into the sweep's own process
COMPILED = {("jax", "cpu"), ("jax", "cuda"), ("torch", "cpu"), ("torch", "cuda")}
SKLEARN_EPOCHS_PER_FIT = 5


def pixels(X: np.ndarray) -> np.ndarray:
    """The bench's rows as the uint8 pixels they were normalised from (exactly: they are bytes)."""
    from mlp.data import MNIST_MEAN, MNIST_STD

    return np.rint((X.astype(np.float64) * MNIST_STD + MNIST_MEAN) * 255).astype(np.uint8)


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
    """setup() once; epoch() runs one epoch (epochs_per_call of them for the estimators); sync()
    waits for the device; first_loss() is the loss of the first step of the latest call, at
    the parameters it started from; second_loss() that of its second step in minibatch (None:
    not known); last_loss() that of its last step (all force a sync), all from step_losses(): by
    default one full-batch step whose loss is `self.loss`."""

    epochs_per_call = 1
    ours = False      # ours gets the thread policy; a peer its library's default
    backend = None    # the Backend it runs on (sklearn: none, NumPy's BLAS on the CPU)

    def __init__(self, device: str, dtype: str, optimiser: str = "sgd", batch=None, seed: int = 0, classes: int = 2):
        self.device, self.dtype, self.optimiser, self.classes = device, dtype, optimiser, classes
        self.settings = OPTIMISERS[optimiser]
        self.lr = self.settings["lr"]
        self.batch = batch                      # None: full batch
        self.rng = np.random.default_rng(seed)  # draws the initial parameters, then each epoch's permutation

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

    def step_losses(self) -> list:
        """The losses of the latest call's steps, in order."""
        return [self.loss]

    def first_loss(self) -> float:
        return float(self.step_losses()[0])

    def second_loss(self) -> float | None:
        losses = self.step_losses()
        return float(losses[1]) if self.batch is not None and len(losses) > 1 else None

    def last_loss(self) -> float:
        return float(self.step_losses()[-1])

    def device_name(self) -> str:
        return backends.cpu_name() if self.backend is None else self.backend.device_name

    def permutation(self, n: int):
        """This epoch's rows, drawn on the host as mlp.loop does (from the generator that drew the
        initial parameters); None in full batch."""
        return None if self.batch is None or is_full_batch(n, self.batch) else self.rng.permutation(n)
