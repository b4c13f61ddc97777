"""How training runs: the epoch loop, its state, batching, and the engines that run the steps.

`fit` owns what every engine shares: one permutation per epoch drawn on the host by the
seeded generator (so every engine and backend sees the same batches), the losses gathered
to the host once per epoch, the divergence check, and stopping between steps on request.
An *engine* owns only how a run of consecutive steps of `model.train_step` is executed:

    eager     one `model.train_step` call per step, from Python (every backend)
    compiled  the steps as one device program, where the backend offers one (see
              `Backend.compiled_engine` in `backends/`)

This module knows no flags and prints nothing; `mlp.train` is the command around it.
"""

from __future__ import annotations

import functools
import math
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from . import model
from .errors import DivergedError, Signalled, UserError

ENGINES = ("auto", "eager", "compiled")


@dataclass
class TrainState:
    params: dict                       # on the device
    rng: np.random.Generator           # host generator: init, then one permutation per epoch
    epoch: int = 0                     # completed epochs
    step: int = 0                      # completed steps
    step_in_epoch: int = 0             # completed steps of the epoch under way
    epoch_rng_state: dict | None = None  # rng state at the start of the epoch under way
    losses: list = field(default_factory=list)         # host floats, one per step
    epoch_seconds: list = field(default_factory=list)
    partial_epoch_seconds: float = 0.0


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
        try:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handler)
        except ValueError:  # not the main thread: leave the signals alone
            pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False


def batching(n: int, batch_size) -> tuple[int, int]:
    """(rows per step, steps per epoch) for n rows and a --batch-size (a count or 'full')."""
    batch = n if batch_size == "full" else batch_size
    return batch, math.ceil(n / batch)


# ----------------------------------------------------------------------------- engines
# An engine runs steps first..last-1 of the epoch under way:
#     engine.begin_epoch(perm)            perm: the epoch's host permutation, None in full batch
#     params, losses = engine.run(params, first, last)
#         losses: one per step, as a 1-D device array or a list of 0-d device arrays
#     engine.segment                      steps per run() between two checks for a stop request
# Step i trains on rows perm[i*B : min((i+1)*B, N)]: the last step of an epoch takes the
# remainder (N mod B rows) and averages over the rows it has, exactly as every other step.


class EagerEngine:
    """One `model.train_step` per step, dispatched from Python: every backend has it."""

    name = "eager"
    segment = 1

    def __init__(self, backend, step, X, y, batch: int):
        self.backend, self.step, self.X, self.y, self.batch = backend, step, X, y, batch
        self.n = X.shape[0]
        self.perm = None

    def begin_epoch(self, perm) -> None:
        self.perm = None if perm is None else self.backend.asarray(perm)   # to the device, once per epoch

    def run(self, params, first: int, last: int):
        xp = self.backend.xp
        losses = []                                   # 0-d, on the device: no sync per step
        for i in range(first, last):
            if self.perm is None:
                Xb, yb = self.X, self.y
            else:
                rows = self.perm[i * self.batch:min((i + 1) * self.batch, self.n)]
                Xb, yb = xp.take(self.X, rows, axis=0), xp.take(self.y, rows, axis=0)
            params, loss = self.step(params, Xb, yb)
            losses.append(loss)
        return params, losses


def make_engine(backend, name: str, cfg: dict, X, y):
    """The engine `name` ('auto', 'eager' or 'compiled') for this backend and run.

    'auto' is the compiled engine where the backend has one, else eager. Asking for
    'compiled' where there is none is a UserError."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}")
    batch, _ = batching(X.shape[0], cfg["batch_size"])
    step = functools.partial(model.train_step, lr=cfg["lr"], activation=cfg["activation"])
    compiled = getattr(backend, "compiled_engine", None)
    if name == "compiled" and compiled is None:
        raise UserError(f"--engine compiled: the {backend.name} backend on {backend.device} has no compiled "
                        f"engine; use --engine eager (or auto), or a backend that has one")
    if name != "eager" and compiled is not None:
        return compiled(step, X, y, batch)
    eager = getattr(backend, "eager_engine", EagerEngine)  # Dask: one graph per step, params back as NumPy
    return eager(backend, step, X, y, batch)


# ----------------------------------------------------------------------------- the loop


def fit(backend, cfg: dict, X, y, state: TrainState, *, engine=None, progress=None, on_epoch_end=None,
        stop=None) -> TrainState:
    """Train until `cfg['epochs']` epochs are complete.

    X (N, D) and y (N,) are already on the device. A minibatch epoch visits the rows in a
    fresh permutation drawn from `state.rng` on the host; a full-batch epoch is one step on X
    itself. `engine` (default: eager) runs the steps. Losses come back to the host once per
    epoch (and at a stop). Raises DivergedError on a non-finite loss, Interrupted when `stop`
    is requested; `progress.step(k)` is told of every k steps done."""
    if engine is None:
        engine = make_engine(backend, "eager", cfg, X, y)
    n = X.shape[0]
    batch, steps_per_epoch = batching(n, cfg["batch_size"])
    while state.epoch < cfg["epochs"]:
        if state.step_in_epoch == 0:
            state.epoch_rng_state = state.rng.bit_generator.state
        else:  # resuming inside an epoch: redraw the same permutation
            state.rng.bit_generator.state = state.epoch_rng_state
        engine.begin_epoch(state.rng.permutation(n) if batch < n else None)
        started, epoch_losses = time.perf_counter(), []
        first = state.step_in_epoch
        while state.step_in_epoch < steps_per_epoch:
            last = min(steps_per_epoch, state.step_in_epoch + engine.segment)
            state.params, losses = engine.run(state.params, state.step_in_epoch, last)
            epoch_losses.extend(losses if isinstance(losses, list) else [losses])
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
        if stop is not None and stop.requested and state.epoch < cfg["epochs"]:
            raise Interrupted
    return state


def flat_losses(xp, losses: list):
    """One 1-D device array of the losses engines return: 0-d ones (eager, one per step) and
    1-D runs (compiled segments)."""
    if all(v.ndim == 0 for v in losses):
        return xp.stack(losses)
    return xp.concat([xp.reshape(v, (-1,)) for v in losses])


def gather(backend, state: TrainState, epoch_losses: list, first_step: int) -> None:
    """Copy this epoch's losses to the host; stop with DivergedError at the first non-finite one."""
    if not epoch_losses:
        return
    values = backend.to_host(flat_losses(backend.xp, epoch_losses)).astype(np.float64).tolist()
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
