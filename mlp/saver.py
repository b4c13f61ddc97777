"""The run's checkpoints: a training state as a `Checkpoint`, written only when it is a good
state, rescued elsewhere when the disk is full, and the last one written remembered (the
divergence message names it)."""

from __future__ import annotations

import numpy as np

from . import checkpoint
from .checkpoint import RUN_KEYS, Checkpoint
from .errors import DivergedError
from .loop import TrainState, params_finite


def to_checkpoint(backend, cfg: dict, data_cfg: dict, state: TrainState, engine: str | None = None,
                  validation: dict | None = None) -> Checkpoint:
    return Checkpoint(
        params={k: backend.to_host(v) for k, v in state.params.items()},
        config={**{k: cfg[k] for k in RUN_KEYS}, **data_cfg},
        epoch=state.epoch,
        step=state.step,
        step_in_epoch=state.step_in_epoch,
        rng_state=state.epoch_rng_state if state.step_in_epoch else state.rng.bit_generator.state,
        losses=np.asarray(state.losses, dtype=np.float64),
        epoch_seconds=np.asarray(state.epoch_seconds, dtype=np.float64),
        partial_epoch_seconds=state.partial_epoch_seconds,
        meta={"saved_on": str(backend), "target_epochs": cfg["epochs"], "engine": engine, "validation": validation},
    )


class Saver:
    """Writes checkpoints of the run (only ever of a good state) and remembers the last one."""

    def __init__(self, backend, cfg, data_cfg, ckpt, resume_path, engine: str):
        self.backend, self.cfg, self.data_cfg, self.engine = backend, cfg, data_cfg, engine
        self.last = {"epoch": ckpt.epoch if ckpt else None, "path": resume_path}
        self.validation = lambda: None   # the run's best validation loss so far (History.carried), once watched

    def __call__(self, path, state: TrainState, *, check: bool = True) -> None:
        if check and not params_finite(self.backend, state.params):
            raise DivergedError(f"the parameters became non-finite by epoch {state.epoch}, step {state.step}")
        previous = f"epoch {self.last['epoch']}" if self.last["path"] == path and self.last["epoch"] is not None else None
        ckpt = to_checkpoint(self.backend, self.cfg, self.data_cfg, state, self.engine, self.validation())
        checkpoint.save_or_rescue(path, ckpt, previous)
        self.last.update(epoch=state.epoch, path=path)
