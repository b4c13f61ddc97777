"""How training runs: the epoch loop (`fit`), its state (`TrainState`), and the engines that
run its steps: eager (one `model.train_step` call per step, from Python: every backend) or
compiled (the steps as one device program, where the backend has one). The contract between
them is in docs/architecture.md. No flags, no printing: `mlp.train` is the command around it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mlp import backends

from . import model, settings
from .batches import batch_rows, batching, is_full_batch
from .checkpoint import Checkpoint, optimiser
from .errors import RECEIVED_SIGNALS, ClusterLost, DivergedError, Signalled, StepStopped, UserError

ENGINES = ("auto", "eager", "compiled")


@dataclass
class TrainState:
    """Where a run stands: the parameters (on the device), the host generator and the position."""

    params: dict                       # on the device: the parameters and the optimiser's slots
    rng: np.random.Generator           # host generator: init, then one permutation per epoch
    epoch: int = 0                     # completed epochs
    step: int = 0                      # completed steps
    step_in_epoch: int = 0             # completed steps of the epoch under way
    epoch_rng_state: dict | None = None  # rng state at the start of the epoch under way
    losses: list = field(default_factory=list)         # host floats, one per step
    epoch_seconds: list = field(default_factory=list)
    partial_epoch_seconds: float = 0.0

    @classmethod
    def fresh(cls, backend, cfg: dict, n_features: int, params: dict | None = None) -> TrainState:
        """A new run: parameters drawn on the host from the seeded generator (the same on every
        backend), or the host `params` given (a warm start), moved to the device in the run's
        dtype; the optimiser's slots start at zero. `cfg`: settings.DEFAULTS for what it leaves out."""
        cfg = {**settings.DEFAULTS, **cfg}
        rng = np.random.default_rng(cfg["seed"])
        host = params or model.init_params(n_features, cfg["hidden"], rng, init=cfg["init"],
                                           activation=cfg["activation"], n_out=model.outputs(len(cfg["classes"])))
        params = {k: backend.asarray(host[k], cfg["dtype"]) for k in model.PARAM_NAMES}
        return cls(params={**params, **optimiser(cfg).slots(params)}, rng=rng)

    @classmethod
    def from_checkpoint(cls, backend, ckpt: Checkpoint) -> TrainState:
        """The state a checkpoint holds, its parameters (and slots) on the device in its dtype."""
        rng = np.random.default_rng()
        rng.bit_generator.state = ckpt.rng_state
        return cls(params={k: backend.asarray(v, ckpt.config["dtype"]) for k, v in ckpt.params.items()}, rng=rng,
                   epoch=ckpt.epoch, step=ckpt.step, step_in_epoch=ckpt.step_in_epoch,
                   epoch_rng_state=ckpt.rng_state, losses=ckpt.losses.tolist(),
                   epoch_seconds=ckpt.epoch_seconds.tolist(), partial_epoch_seconds=ckpt.partial_epoch_seconds)

    def to_checkpoint(self, backend, config: dict, meta: dict) -> Checkpoint:
        """This state as a Checkpoint (parameters copied to the host); `config` is the run's
        settings and data, `meta` what else the file records (device, engine, validation)."""
        return Checkpoint(params={k: backend.to_host(v) for k, v in self.params.items()}, config=config,
                          epoch=self.epoch, step=self.step, step_in_epoch=self.step_in_epoch,
                          rng_state=self.epoch_rng_state if self.step_in_epoch else self.rng.bit_generator.state,
                          losses=np.asarray(self.losses, dtype=np.float64),
                          epoch_seconds=np.asarray(self.epoch_seconds, dtype=np.float64),
                          partial_epoch_seconds=self.partial_epoch_seconds, meta=meta)


class Interrupted(Exception):
    """A stop was requested (Ctrl-C, SIGTERM, SIGHUP); the state is consistent (between two steps)."""


class StopOnSignals:
    """The first Ctrl-C, SIGTERM or SIGHUP asks the loop to stop after the current step (or
    segment of steps) and records which signal it was (`signum`); a second one stops at once
    (KeyboardInterrupt for Ctrl-C, errors.Signalled for the others)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.requested = False
        self.signum = None
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt if signum == signal.SIGINT else Signalled(signum)
        self.requested, self.signum = True, signum

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handler)
        if RECEIVED_SIGNALS:   # one came before, and its Signalled was dropped (mlp.errors): stop now
            self.requested, self.signum = True, RECEIVED_SIGNALS[-1]
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


# ----------------------------------------------------------------------------- engines


class Engine(Protocol):
    """How a run of consecutive steps of the epoch under way executes (see mlp.batches for which
    rows each step takes). `fit` calls begin_epoch once per epoch, then run over segments."""

    name: str        # 'eager', 'compiled' or 'dask': recorded in checkpoints, metrics and the bench
    n: int           # training rows
    batch: int       # rows per step (n in full batch)
    segment: int     # steps per run() between two checks for a stop request

    def begin_epoch(self, perm: np.ndarray | None) -> None:
        """The epoch's host permutation of the rows; None in full batch."""

    def run(self, params: dict, first: int, last: int) -> tuple[dict, Any]:
        """Steps first..last-1 from `params`: (the new parameters, their losses as one 1-D array of
        last - first values, on the device, or NumPy where the engine computes them on the host).
        The parameters passed in are never changed, nor are those returned changed later."""

    # An engine that holds device resources beyond its arrays (CUDA graphs and their memory pools)
    # also has close(), which releases them; whoever made the engine calls it when done with it.


class EagerEngine:
    """One `model.train_step` per step, dispatched from Python: every backend has it."""

    name = "eager"
    segment = 1

    def __init__(self, backend, step, X, y, batch: int, w=None):
        self.backend, self.step, self.batch = backend, step, batch
        self.rows = (X, y) if w is None else (X, y, w)   # what a step takes of each row: features, label, weight
        self.n = X.shape[0]
        self.perm = None

    def begin_epoch(self, perm) -> None:
        self.perm = None if perm is None else self.backend.asarray(perm)   # to the device, once per epoch

    def run(self, params, first: int, last: int):
        xp = self.backend.xp
        losses = []                                   # 0-d, on the device: no sync per step
        for i in range(first, last):
            if self.perm is None:
                batch = self.rows
            else:
                rows = self.perm[batch_rows(i, self.batch, self.n)]
                batch = [xp.take(a, rows, axis=0) for a in self.rows]
            params, loss = self.step(params, *batch)
            losses.append(loss)
        return params, xp.stack(losses)


def make_engine(backend, name: str, cfg: dict, X, y, w=None) -> Engine:
    """The engine `name` ('auto', 'eager' or 'compiled') for this backend and run: steps of the
    optimiser of `cfg` (settings.DEFAULTS for what it leaves out) on the rows X, labels y and row
    weights w (None: every row counts once).

    'auto' is the compiled engine where the backend has one that pays for its compiling, else
    eager (torch on the CPU: compiling takes longer than a usual run saves). Asking for
    'compiled' where there is none is a UserError. The labels are checked here, once (the steps
    leave that to their caller: see model.loss_and_grads); on Dask the workers make them."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    cfg = {**settings.DEFAULTS, **cfg}
    batch, _ = batching(X.shape[0], cfg["batch_size"])
    compiled = backend.compiled_engine
    if name == "compiled" and compiled is None:
        raise UserError(f"--engine compiled: the {backend.name} backend on {backend.device} has no compiled "
                        f"engine; use --engine eager (or auto), or a backend that has one")
    opt = optimiser(cfg)
    dask = getattr(backend, "eager_engine", None)   # Dask: a step is chunk tasks on the cluster
    if dask is not None:
        return dask(backend, X, y, batch, opt=opt, activation=cfg["activation"], alpha=cfg["alpha"])
    model.check_labels_fit(y, model.outputs(len(cfg["classes"])))
    step = functools.partial(model.train_step, opt=opt, activation=cfg["activation"], alpha=cfg["alpha"])
    if compiled is not None and (name == "compiled" or name == "auto" and backend.auto_compiles):
        return compiled(step, X, y, batch, w=w)
    return EagerEngine(backend, step, X, y, batch, w)


class Run:
    """One training run, the one way `mlp.train` and `MLPClassifier` set one up: its settings
    `cfg` (mlp.settings), rows X (N, D), labels y (N,) and row weights w on the backend, and its
    state (TrainState.fresh when None). Inside `with`, the CPU thread pools are sized for it
    (backends.thread_limits; put back as they were after) and `engine` is its Engine; `fit`
    trains it; `checkpoint` is the run as a Checkpoint."""

    def __init__(self, backend, cfg: dict, X, y, w=None, *, state: TrainState | None = None, engine: str = "auto",
                 threads="auto"):
        self.backend, self.cfg, self.arrays, self.engine_name = backend, cfg, (X, y, w), engine
        self.state = state or TrainState.fresh(backend, cfg, X.shape[1])
        self.threads, self.engine = threads, None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Run:
        X, y, w = self.arrays
        batch = batching(X.shape[0], self.cfg["batch_size"])[0]
        self.threads = self._stack.enter_context(backends.thread_limits(self.backend, batch, X.shape[1],
                                                                        self.cfg["hidden"], self.threads))
        self.engine = make_engine(self.backend, self.engine_name, self.cfg, X, y, w)
        self._stack.callback(self.close_engine)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def fit(self, epochs: int, **kwargs) -> TrainState:
        """Train until `epochs` epochs are complete (`fit`'s progress, on_epoch_end, stop, shuffle)."""
        return fit(self.backend, self.engine, self.state, epochs, **kwargs)

    def close_engine(self) -> None:
        """Release what the engine holds beyond its arrays (CUDA graphs and their memory)."""
        getattr(self.engine, "close", lambda: None)()

    def checkpoint(self, data: dict, **meta) -> Checkpoint:
        """The run as a Checkpoint: its settings and `data` (n_features, image_shape, input, mean,
        std, n_train, val_split, data_fingerprint) as its config, `meta` beside the device, the
        engine, the threads and the target epochs."""
        config = {**{k: self.cfg[k] for k in settings.RUN_KEYS}, **data}
        return self.state.to_checkpoint(self.backend, config, {
            "saved_on": str(self.backend), "target_epochs": self.cfg["epochs"], "engine": self.engine.name,
            "threads": self.threads, **meta})


# ----------------------------------------------------------------------------- the loop


def fit(backend, engine: Engine, state: TrainState, epochs: int, *, progress=None, on_epoch_end=None,
        stop=None, shuffle: bool = True) -> TrainState:
    """Train `engine`'s rows until `epochs` epochs are complete.

    A minibatch epoch visits the rows in a fresh permutation drawn from `state.rng` on the host
    (so every engine and backend sees the same batches), or in order when not `shuffle`; a
    full-batch epoch is one step on the rows in order. Losses come back to the host once per
    epoch (and at a stop). Raises DivergedError on a non-finite loss, Interrupted when `stop` is
    requested, ClusterLost when the engine's cluster failed (the state is then that of the last
    completed step)."""
    n, batch = engine.n, engine.batch
    steps_per_epoch = batching(n, batch)[1]
    if stop is not None and hasattr(engine, "stop"):
        engine.stop = stop      # an engine that waits on others (Dask) gives up its step on a stop request
    while state.epoch < epochs:
        if state.step_in_epoch == 0:
            state.epoch_rng_state = state.rng.bit_generator.state
        else:  # resuming inside an epoch: redraw the same permutation
            state.rng.bit_generator.state = state.epoch_rng_state
        engine.begin_epoch(None if is_full_batch(n, batch) else state.rng.permutation(n) if shuffle else np.arange(n))
        started, epoch_losses = time.perf_counter(), []
        first = state.step_in_epoch
        while state.step_in_epoch < steps_per_epoch:
            last = min(steps_per_epoch, state.step_in_epoch + engine.segment)
            try:
                state.params, losses = engine.run(state.params, state.step_in_epoch, last)
            except (StepStopped, ClusterLost):    # the state is still the last completed step's
                gather(backend, state, epoch_losses, first)
                if state.step_in_epoch:
                    state.partial_epoch_seconds += time.perf_counter() - started
                if stop is not None and stop.requested:
                    raise Interrupted from None
                raise
            epoch_losses.append(losses)
            if progress is not None:
                progress.step(last - state.step_in_epoch)
            state.step_in_epoch = last
            if stop is not None and stop.requested and state.step_in_epoch < steps_per_epoch:
                gather(backend, state, epoch_losses, first)
                state.partial_epoch_seconds += time.perf_counter() - started
                raise Interrupted
        gather(backend, state, epoch_losses, first)          # one host round trip per epoch
        state.epoch_seconds.append(state.partial_epoch_seconds + time.perf_counter() - started)
        state.partial_epoch_seconds = 0.0
        state.epoch += 1
        state.step_in_epoch = 0
        if progress is not None:
            progress.epoch_end(state)
        if on_epoch_end is not None:
            on_epoch_end(state)
        if stop is not None and stop.requested and state.epoch < epochs:
            raise Interrupted
    return state


def host_losses(backend, losses: list) -> np.ndarray:
    """The losses of several engine runs (1-D arrays) as one float64 host array, in one copy."""
    if all(isinstance(v, np.ndarray) for v in losses):          # computed on the host (Dask)
        return np.concatenate(losses).astype(np.float64)
    return backend.to_host(backend.xp.concat(losses)).astype(np.float64)


def gather(backend, state: TrainState, epoch_losses: list, first_step: int) -> None:
    """Copy this epoch's losses to the host; stop with DivergedError at the first non-finite one."""
    if not epoch_losses:
        return
    values = host_losses(backend, epoch_losses).tolist()
    for k, value in enumerate(values):
        if not math.isfinite(value):
            raise DivergedError(
                f"the loss became {value} at epoch {state.epoch + 1}, step {state.step + k + 1} "
                f"(step {first_step + k + 1} of the epoch)"
            )
    state.losses.extend(values)
    state.step += len(values)


def params_finite(backend, params) -> bool:
    xp = backend.xp
    return all(bool(backend.to_host(xp.all(xp.isfinite(p)))) for p in params.values())
