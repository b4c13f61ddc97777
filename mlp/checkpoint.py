"""Checkpoints: one .npz file, no pickle, written atomically.

Arrays: w1, b1, w2, b2 (in the run's dtype), losses (every step so far), epoch_seconds,
and `meta`, a JSON text holding the run's configuration (model shape, activation, init,
lr, batch size, seed, dtype, class pair, normalisation), where it stopped (epoch, step,
step within the epoch, the NumPy RNG state at the start of that epoch) and the versions
of the libraries that wrote it. Parameters are stored as host arrays, so a checkpoint
saved on a GPU loads on a CPU and the other way round.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .files import atomic_write
from .model import ACTIVATIONS, PARAM_NAMES, param_shapes
from .versions import versions

FORMAT = "mlp-checkpoint/1"

#: settings that define the run; resuming with a different value is an error
RUN_KEYS = ("hidden", "activation", "init", "lr", "batch_size", "seed", "dtype", "classes")


@dataclass
class Checkpoint:
    params: dict                     # name -> host array (w1 (D, H), b1 (H,), w2 (H, 1), b2 (1,))
    config: dict                     # RUN_KEYS + n_features, image_shape, mean, std
    epoch: int = 0                   # completed epochs
    step: int = 0                    # completed steps in all
    step_in_epoch: int = 0           # completed steps of the epoch under way (0 at an epoch boundary)
    rng_state: dict | None = None    # NumPy bit-generator state at the start of the epoch under way
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epoch_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    partial_epoch_seconds: float = 0.0
    meta: dict = field(default_factory=dict)  # versions, device it was saved on


def save(path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically (temp file, fsync, rename)."""
    meta = {
        **ckpt.meta,
        "format": FORMAT,
        "config": ckpt.config,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "step_in_epoch": ckpt.step_in_epoch,
        "rng_state": ckpt.rng_state,
        "partial_epoch_seconds": ckpt.partial_epoch_seconds,
        "versions": versions(),
    }
    arrays = {k: np.asarray(ckpt.params[k]) for k in PARAM_NAMES}
    arrays["losses"] = np.asarray(ckpt.losses, dtype=np.float64)
    arrays["epoch_seconds"] = np.asarray(ckpt.epoch_seconds, dtype=np.float64)
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load(path) -> Checkpoint:
    """Read and check a checkpoint; anything wrong with it is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path that --save wrote")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        raise CheckpointError(f"checkpoint {path} holds pickled objects, which are never loaded (they can run "
                              "code): it is a pickle file, not an .npz; use a checkpoint written by --save")
    if head != b"PK\x03\x04":
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint (not an .npz archive); "
                              "use a file written by --save")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled objects, which are never loaded "
                                  "(they can run code); use a checkpoint written by --save") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); use another checkpoint") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); use another checkpoint or "
                              "a file written by --save") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not an mlp checkpoint (no 'meta' entry); use a file written by --save")
    missing = [k for k in (*PARAM_NAMES, "losses", "epoch_seconds") if k not in arrays]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete or not ours")
    try:
        meta = json.loads(str(arrays["meta"]))
        config = meta["config"]
        ckpt = Checkpoint(
            params={k: arrays[k] for k in PARAM_NAMES},
            config=config,
            epoch=int(meta["epoch"]),
            step=int(meta["step"]),
            step_in_epoch=int(meta["step_in_epoch"]),
            rng_state=meta["rng_state"],
            losses=arrays["losses"],
            epoch_seconds=arrays["epoch_seconds"],
            partial_epoch_seconds=float(meta.get("partial_epoch_seconds", 0.0)),
            meta={k: v for k, v in meta.items() if k in ("saved_on", "versions", "target_epochs", "engine")},
        )
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, "
                                  f"this version reads {FORMAT!r}")
        _check(ckpt, path)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata ({exc.__class__.__name__}: {exc})") from None
    return ckpt


def _check(ckpt: Checkpoint, path) -> None:
    c = ckpt.config
    for key in (*RUN_KEYS, "n_features"):
        if key not in c:
            raise CheckpointError(f"checkpoint {path} lacks the setting {key!r}")
    if c["activation"] not in ACTIVATIONS:
        raise CheckpointError(f"checkpoint {path} names an unknown activation {c['activation']!r}")
    D, H = int(c["n_features"]), int(c["hidden"])
    for name, shape in param_shapes(D, H).items():
        arr = ckpt.params[name]
        if arr.shape != shape:
            raise CheckpointError(f"checkpoint {path}: {name} has shape {arr.shape} but its settings "
                                  f"(hidden={H}, features={D}) need {shape}; the file is corrupt")
        if arr.dtype != np.dtype(c["dtype"]):
            raise CheckpointError(f"checkpoint {path}: {name} is {arr.dtype}, its settings say {c['dtype']}")
        if not np.isfinite(arr).all():
            raise CheckpointError(f"checkpoint {path}: {name} holds NaN or inf; it is not a usable model")
    try:  # the run continues from this state: it must be one the generator accepts
        np.random.default_rng().bit_generator.state = ckpt.rng_state
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: its random-generator state is corrupt ({exc})") from None
    if ckpt.losses.ndim != 1 or ckpt.losses.shape[0] != ckpt.step:
        raise CheckpointError(f"checkpoint {path}: {ckpt.losses.shape} losses for {ckpt.step} steps; the file is corrupt")
