"""The run's checkpoints: a training state as a `Checkpoint`, written only when it is a good
state, rescued elsewhere when the disk is full, and the last one written remembered (the
divergence message names it)."""

from . import checkpoint
from .checkpoint import RUN_KEYS
from .errors import DivergedError
from .loop import TrainState, params_finite


class Saver:
    """Writes checkpoints of the run (only ever of a good state) and remembers the last one."""

    def __init__(self, backend, cfg, data_cfg, ckpt, resume_path, engine: str):
        self.backend, self.cfg, self.data_cfg, self.engine = backend, cfg, data_cfg, engine
        self.last = {"epoch": ckpt.epoch if ckpt else None, "path": resume_path}
        self.validation = lambda: None   # the run's best validation loss so far (History.carried), once watched

    def __call__(self, path, state: TrainState, *, check: bool = True) -> None:
        if check and not params_finite(self.backend, state.params):
            raise DivergedError(f"the parameters became non-finite by epoch {state.epoch}, step {state.step}")
        same = self.last["path"] == path and self.last["epoch"] is not None
        previous = f"epoch {self.last['epoch']}" if same else None
        ckpt = state.to_checkpoint(self.backend, {**{k: self.cfg[k] for k in RUN_KEYS}, **self.data_cfg},
                                   {"saved_on": str(self.backend), "target_epochs": self.cfg["epochs"],
                                    "engine": self.engine, "threads": self.cfg.get("threads"),
                                    "validation": self.validation()})
        checkpoint.save_or_rescue(path, ckpt, previous)
        self.last.update(epoch=state.epoch, path=path)
