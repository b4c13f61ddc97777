"""The run's checkpoints: a training state as a `Checkpoint`, written only when it is a good
state, rescued elsewhere when the disk is full, and the last one written remembered (the
divergence message names it)."""

from . import checkpoint
from .errors import DivergedError
from .loop import Run, TrainState, params_finite


class Saver:
    """Writes checkpoints of the run (only ever of a good state) and remembers the last one."""

    def __init__(self, run: Run, data_cfg: dict, ckpt, resume_path):
        self.run, self.data_cfg = run, data_cfg
        self.last = {"epoch": ckpt.epoch if ckpt else None, "path": resume_path}
        self.validation = lambda: None   # the run's best validation loss so far (History.carried), once watched

    def __call__(self, path, state: TrainState, *, check: bool = True) -> None:
        if check and not params_finite(self.run.backend, state.params):
            raise DivergedError(f"the parameters became non-finite by epoch {state.epoch}, step {state.step}")
        same = self.last["path"] == path and self.last["epoch"] is not None
        previous = f"epoch {self.last['epoch']}" if same else None
        checkpoint.save_or_rescue(path, self.run.checkpoint(self.data_cfg, validation=self.validation()), previous)
        self.last.update(epoch=state.epoch, path=path)
