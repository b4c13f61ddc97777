"""Checkpoints: one .npz file, no pickle, written atomically.

Arrays: w1, b1, w2, b2 (in the run's dtype), the optimiser's state (v_w1... for momentum;
m_w1..., v_w1... and t for Adam), losses (every step so far), epoch_seconds, and `meta`, a
JSON text holding the run's settings (mlp.settings: model shape, activation, init, optimiser,
batch size, seed, dtype, classes), its inputs (pixels and their normalisation, or features as
given), where it stopped (epoch, step, step within the epoch, the NumPy RNG state at the start
of that epoch) and the versions of the libraries that wrote it. Parameters are stored as host
arrays, so a checkpoint saved on a GPU loads on a CPU and the other way round.
"""

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint_meta import FORMAT, MAX_META_BYTES, STRUCTURE, check_same_data, parse_meta, validate_config  # noqa: F401
from .errors import CheckpointError
from .files import atomic_write, describe_kind, write_advice
from .model import PARAM_NAMES, Optimiser, outputs, param_shapes
from .npz import Npz, NpzError
from .versions import versions


@dataclass
class Checkpoint:
    params: dict                     # name -> host array (w1 (D, H), b1 (H,), w2 (H, K), b2 (K,)), and
                                     # the optimiser's slots (mlp.optimisers.Optimiser.slots)
    config: dict                     # settings.RUN_KEYS + n_features, image_shape, input, mean, std
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
    meta = {**ckpt.meta, "format": FORMAT, "config": ckpt.config, "epoch": ckpt.epoch, "step": ckpt.step,
            "step_in_epoch": ckpt.step_in_epoch, "rng_state": ckpt.rng_state,
            "partial_epoch_seconds": ckpt.partial_epoch_seconds, "versions": versions()}
    losses, seconds = (np.asarray(a, dtype=np.float64) for a in (ckpt.losses, ckpt.epoch_seconds))
    with atomic_write(path) as f:
        np.savez(f, **{k: np.asarray(v) for k, v in ckpt.params.items()}, losses=losses, epoch_seconds=seconds,
                 meta=np.array(json.dumps(meta)))


def save_or_rescue(path, ckpt: Checkpoint, previous: str | None = None) -> None:
    """save(), but a full disk (ENOSPC, EFBIG past `ulimit -f`, a quota) is one CheckpointError
    saying that `path` was left as it was, and where the parameters went: a rescue copy in the
    temporary folder when that can be written, else nowhere (and why)."""
    try:
        save(path, ckpt)
    except OSError as exc:
        rescue = Path(tempfile.gettempdir()) / f"mlp-rescue-{os.getpid()}.npz"
        try:
            save(rescue, ckpt)
            where = f"the parameters of epoch {ckpt.epoch}, step {ckpt.step} were saved to {rescue} instead"
        except OSError as again:
            where = f"the parameters could not be saved elsewhere either ({rescue}: {again.strerror})"
        kept = f"{path} was left as it was" + (f" ({previous})" if previous else "")
        raise CheckpointError(f"cannot write the checkpoint {path} ({exc.strerror}); {kept}; {where}; "
                              f"{write_advice(exc, path)}, and resume from it") from None


def load(path) -> Checkpoint:
    """Read and check a checkpoint; anything wrong with it is a CheckpointError.

    Only the known members are read, each after its declared shape and dtype were checked
    against the metadata (so a header claiming TiBs is refused before any allocation), and
    every metadata field is validated before use (see `validate_config` and `check_position`)."""
    path = Path(path)
    if (kind := describe_kind(path)) is not None:
        raise CheckpointError(f"checkpoint {path} is {kind}, not a file; give the path that --save wrote")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path that --save wrote")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror}); check its permissions") from None
    if head[:1] == b"\x80":
        raise CheckpointError(f"checkpoint {path} holds pickled objects, which are never loaded (they can run "
                              "code): it is a pickle file, not an .npz; use a checkpoint written by --save")
    if head != b"PK\x03\x04":
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint (not an .npz archive); "
                              "use a file written by --save")
    try:
        with Npz(path) as z:
            if "meta" not in z.names:
                raise CheckpointError(f"{path} is not an mlp checkpoint (no 'meta' entry); "
                                      "use a file written by --save")
            missing = [k for k in (*PARAM_NAMES, "losses", "epoch_seconds") if k not in z.names]
            if missing:
                raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete or not ours")
            meta_array = z.read("meta", shape=(), max_bytes=MAX_META_BYTES)
            if meta_array.dtype.kind != "U":
                raise NpzError(f"meta: {meta_array.dtype}, expected text")
            meta = parse_meta(str(meta_array), path)
            config = validate_config(meta["config"], path)
            D, H, dtype = config["n_features"], config["hidden"], config["dtype"]
            shapes = param_shapes(D, H, outputs(len(config["classes"])))
            shapes.update(optimiser(config).slot_shapes(shapes))
            params = {}
            for name, shape in shapes.items():
                if name not in z.names:
                    raise CheckpointError(f"checkpoint {path} lacks {name}, which its settings (solver "
                                          f"{config['solver']}) need; it is incomplete or was edited")
                got_shape, got_dtype = z.header(name)
                if got_shape != shape:
                    raise CheckpointError(f"checkpoint {path}: {name} has shape {got_shape} but its settings "
                                          f"(hidden={H}, features={D}, {len(config['classes'])} classes) need "
                                          f"{shape}; the file is corrupt")
                if got_dtype != np.dtype(dtype):
                    raise CheckpointError(f"checkpoint {path}: {name} is {got_dtype}, its settings say {dtype}")
                params[name] = z.read(name, shape=shape, dtype=dtype)
            losses = z.read("losses", shape=(meta["step"],), dtype=np.float64)
            epoch_seconds = z.read("epoch_seconds", shape=(meta["epoch"],), dtype=np.float64)
    except NpzError as exc:
        if exc.pickled:
            raise CheckpointError(f"checkpoint {path} holds pickled objects, which are never loaded "
                                  "(they can run code); use a checkpoint written by --save") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({exc}); use another checkpoint or "
                              "a file written by --save") from None
    ckpt = Checkpoint(params=params, config=config, losses=losses, epoch_seconds=epoch_seconds,   # and where it stopped
                      **{k: meta[k] for k in STRUCTURE if k not in ("format", "config")},
                      meta={k: v for k, v in meta.items() if k not in STRUCTURE})
    _check(ckpt, path)
    return ckpt


def optimiser(config: dict):
    """The mlp.optimisers.Optimiser of a run's settings."""
    return Optimiser(**{k: config[k] for k in ("solver", "lr", "momentum", "nesterov", "beta1", "beta2", "epsilon")})


def _check(ckpt: Checkpoint, path) -> None:
    for name, arr in ckpt.params.items():
        if not np.isfinite(arr).all():
            raise CheckpointError(f"checkpoint {path}: {name} holds NaN or inf; it is not a usable model")
    for name, arr in (("losses", ckpt.losses), ("epoch_seconds", ckpt.epoch_seconds)):
        if not np.isfinite(arr).all() or (name == "epoch_seconds" and (arr < 0).any()):
            raise CheckpointError(f"checkpoint {path}: {name} holds NaN, inf or negative values; the file is corrupt")
    try:  # the run continues from this state: it must be one the generator accepts
        if not isinstance(ckpt.rng_state, dict):
            raise TypeError(f"a {type(ckpt.rng_state).__name__}, not a mapping")
        np.random.default_rng().bit_generator.state = ckpt.rng_state
    except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its random-generator state is corrupt ({exc})") from None
