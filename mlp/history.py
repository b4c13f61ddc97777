"""What a run records epoch by epoch: the validation split, each epoch's figures, the
--log file (mlp.runlog), early stopping and the best checkpoint.

Validation uses held-out *training* rows only (`--val-split F`); the test set is never
looked at before the run ends. Its loss and accuracy are computed once per epoch, on the
device, and come back to the host as two numbers in one round trip.
"""

import math

import numpy as np

from . import model
from .errors import CheckpointError, UserError
from .progress import fmt_loss

def resolve_val_split(given: float | None, ckpt, resume_path) -> float:
    """The flag, else the checkpoint's split, else 0; a flag that contradicts the checkpoint is an
    error (the run would train on other rows than the ones saved)."""
    if ckpt is None:
        return 0.0 if given is None else given
    saved = float(ckpt.config.get("val_split", 0.0))
    if given is not None and given != saved:
        raise CheckpointError(f"--val-split {given} contradicts the checkpoint {resume_path}, which was trained "
                              f"with --val-split {saved}; drop the flag to continue that run")
    return saved


def holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows), each in ascending order: round(fraction * n) rows drawn
    without replacement by a generator seeded with (seed, 1), apart from the one that draws the
    initial weights and the batches, so the split is the same on every backend and on resume."""
    k = round(fraction * n)
    if not 1 <= k < n:
        raise UserError(f"--val-split {fraction} holds out {k} of {n:,} training rows; "
                        f"choose a fraction that leaves at least one row on each side")
    val = np.sort(np.random.default_rng([seed, 1]).permutation(n)[:k])
    return np.setdiff1d(np.arange(n), val, assume_unique=True), val


def validation_figures(backend, params, Xv, yv, activation: str) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on validation rows already on the device: one host round trip."""
    xp = backend.xp
    z2 = model.forward(params, Xv, activation)[2]                       # (n, K)
    truth = xp.astype(xp.reshape(yv, (-1,)), xp.int64)
    correct = xp.sum(xp.astype(model.predicted(z2) == truth, z2.dtype))
    loss, correct = backend.to_host(xp.stack([model.mean_loss(z2, yv), correct])).astype(np.float64).tolist()
    return loss, correct / Xv.shape[0]


class EarlyStopped(Exception):
    """The validation loss stopped improving; the state is at a complete epoch."""


class History:
    """Each epoch's figures (`rows`), validation, the log, early stopping and the best checkpoint.

    `epoch_end(state, train_loss)` is called by the command at the end of every epoch, after the
    losses are on the host, and `stop_if_stalled` once the epoch is reported. `save_best(state)`
    writes a checkpoint; it is called when the validation loss reaches a new minimum."""

    def __init__(self, backend, activation: str, val=None, *, patience=None, save_best=None, log=None,
                 carried: dict | None = None):
        self.backend, self.activation, self.val = backend, activation, val   # val: (Xv, yv) on the device
        self.patience, self.save_best, self.log = patience, save_best, log
        self.rows: list[dict] = []
        self.best = {"val_loss": math.inf, "epoch": None, "written": False}
        self.since_best = 0
        if carried:  # a resumed run: its best so far, so --save-best never replaces it with a worse one
            if carried.get("best_epoch") is not None:
                self.best.update(val_loss=float(carried["best_val_loss"]), epoch=int(carried["best_epoch"]))
            self.since_best = int(carried["since_best"])

    def carried(self) -> dict | None:
        """What a checkpoint keeps of the validation record (None without a split)."""
        if self.val is None:
            return None
        return {"best_val_loss": None if self.best["epoch"] is None else self.best["val_loss"],
                "best_epoch": self.best["epoch"], "since_best": self.since_best}

    def epoch_end(self, state, train_loss: float) -> dict:
        row = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss,
               "val_loss": None, "val_accuracy": None, "seconds": state.epoch_seconds[-1]}
        if self.val is not None:
            row["val_loss"], row["val_accuracy"] = validation_figures(self.backend, state.params, *self.val,
                                                                      self.activation)
        self.rows.append(row)
        if self.log is not None:
            self.log.write(row)
        if self.val is not None:
            self._track(state, row)
        return row

    def _track(self, state, row) -> None:
        if row["val_loss"] < self.best["val_loss"]:
            self.best.update(val_loss=row["val_loss"], val_accuracy=row["val_accuracy"], epoch=state.epoch)
            self.since_best = 0
            if self.save_best is not None:
                self.save_best(state)
                self.best["written"] = True
            return
        self.since_best += 1

    def stop_if_stalled(self, state, target_epochs: int) -> None:
        """EarlyStopped once the validation loss has not improved for `patience` epochs."""
        if self.patience is not None and self.since_best >= self.patience and state.epoch < target_epochs:
            raise EarlyStopped(
                f"stopped early at epoch {state.epoch}: the validation loss has not improved for {self.since_best} "
                f"epochs (best {fmt_loss(self.best['val_loss'])} at epoch {self.best['epoch']})")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
