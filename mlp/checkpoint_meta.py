"""Validating a checkpoint's metadata, field by field, before any of it is used.

A checkpoint is a file a user can edit: every field is checked for its type and range,
and the message names the field. Fields this version does not know (added by a later
one, e.g. `engine`) are passed through untouched.
"""

import math

from . import settings
from .data import MNIST_MEAN, MNIST_STD
from .errors import CheckpointError
from .files import read_json
from .model import INITS
from .settings import DEFAULTS, MAX_COUNT, MAX_DIM, RUN_KEYS

FORMAT = "mlp-checkpoint/1"
MAX_META_BYTES = 1 << 20
#: what the model's inputs are: pixels (normalised with the checkpoint's mean and std, as mlp.train
#: trains), or features as given (MLPClassifier's default), which images cannot be fed to
INPUTS = ("pixels", "features")
#: the metadata fields `load` turns into Checkpoint attributes (the rest stays in .meta)
STRUCTURE = ("format", "config", "epoch", "step", "step_in_epoch", "rng_state", "partial_epoch_seconds")


def _bad(path, field: str, value, need: str) -> CheckpointError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CheckpointError(f"checkpoint {path}: field {field!r} is {shown}, but must be {need}; "
                           "the file is corrupt or was edited: use a checkpoint written by --save")


def _int(d: dict, key: str, path, lo: int = 0, hi: int = MAX_COUNT, prefix: str = "") -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(path, prefix + key, value, f"a whole number from {lo} to {hi}")
    return value


def _float(d: dict, key: str, path, *, prefix: str = "", default=None) -> float:
    value = d.setdefault(key, default) if default is not None else d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(path, prefix + key, value, "a finite number")
    return float(value)


def _setting(d: dict, key: str, path, name: str, prefix: str = "") -> None:
    """d[key], checked as the setting `name` is (mlp.settings: as its flag checks it)."""
    try:
        d[key] = settings.check(name, d[key])
    except ValueError as exc:
        raise _bad(path, prefix + key, d[key], str(exc)) from None


def parse_meta(text: str, path, fmt: str = FORMAT) -> dict:
    """The top-level fields: format, epoch, step, step_in_epoch, rng_state, timings, target."""
    try:
        meta = read_json(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata (not JSON: {exc})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "meta", meta, "a JSON object")
    if meta.get("format") != fmt:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, this version reads {fmt!r}")
    if not isinstance(meta.get("config"), dict):
        raise _bad(path, "config", meta.get("config"), "a JSON object of the run's settings")
    for key in ("epoch", "step", "step_in_epoch"):
        _int(meta, key, path)
    if meta["step"] < meta["step_in_epoch"]:
        raise _bad(path, "step", meta["step"], f"at least step_in_epoch ({meta['step_in_epoch']})")
    if _float(meta, "partial_epoch_seconds", path, default=0.0) < 0:
        raise _bad(path, "partial_epoch_seconds", meta["partial_epoch_seconds"], "0 or more")
    if not isinstance(meta.get("rng_state"), dict):
        raise _bad(path, "rng_state", meta.get("rng_state"), "the NumPy generator's state (a JSON object)")
    for key, setting in (("target_epochs", "epochs"), ("threads", "threads")):   # threads None: GPU or Dask
        if meta.get(key) is not None:
            _setting(meta, key, path, setting)
    if "saved_on" in meta and not isinstance(meta["saved_on"], str):
        raise _bad(path, "saved_on", meta["saved_on"], "a text")
    if meta.get("validation") is not None:
        _validation(meta, path)
    return meta


def _validation(meta: dict, path) -> None:
    """The best validation loss so far, its epoch and the epochs since: what --save-best and
    --early-stop continue from on --resume."""
    v = meta["validation"]
    if not isinstance(v, dict):
        raise _bad(path, "validation", v, "a JSON object")
    p = "validation."
    if v.get("best_epoch") is not None:
        _int(v, "best_epoch", path, lo=1, hi=max(1, meta["epoch"]), prefix=p)
        if _float(v, "best_val_loss", path, prefix=p) < 0:
            raise _bad(path, p + "best_val_loss", v["best_val_loss"], "0 or more")
    _int(v, "since_best", path, lo=0, hi=max(0, meta["epoch"]), prefix=p)


def validate_config(c: dict, path) -> dict:
    """The run's settings, each checked by the settings table (a checkpoint written before a
    setting existed gets its default: plain gradient descent, no L2), and the data's fields; the
    returned dict is safe to use."""
    p = "config."
    for key in ("hidden", "activation", "init", "lr", "batch_size", "seed", "dtype", "classes", "n_features"):
        if key not in c:
            raise CheckpointError(f"checkpoint {path} lacks the setting {key!r}")
    for key in RUN_KEYS:
        c.setdefault(key, DEFAULTS[key])
        _setting(c, key, path, key, p)
    if c["init"] is None:
        raise _bad(path, p + "init", None, "one of " + ", ".join(INITS))
    _int(c, "n_features", path, lo=1, hi=MAX_DIM, prefix=p)
    shape = c.get("image_shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM for v in shape)
            or math.prod(shape) != c["n_features"]):
        raise _bad(path, p + "image_shape", shape, f"one or two sizes whose product is n_features ({c['n_features']})")
    if c.setdefault("input", "pixels") not in INPUTS:
        raise _bad(path, p + "input", c["input"], "one of " + ", ".join(INPUTS))
    # the pixel normalisation: pixels lie in [0, 1], so must their mean, and their spread
    for key, lo, hi, default in (("mean", 0.0, 1.0, MNIST_MEAN), ("std", 1e-3, 1.0, MNIST_STD)):
        if c["input"] == "pixels" and not lo <= _float(c, key, path, prefix=p, default=default) <= hi:
            raise _bad(path, p + key, c[key], f"from {lo:g} to {hi:g} (pixels lie in [0, 1])")
    if "n_train" in c:
        _int(c, "n_train", path, lo=1, prefix=p)
    if "val_split" in c:
        _setting(c, "val_split", path, "val_split", p)
    fp = c.get("data_fingerprint")
    if fp is not None and not (isinstance(fp, str) and len(fp) == 64 and all(ch in "0123456789abcdef" for ch in fp)):
        raise _bad(path, p + "data_fingerprint", fp, "a SHA-256 in hex")
    return c


def check_position(ckpt, path, steps_per_epoch: int) -> None:
    """epoch, step and step_in_epoch must describe one point of a run of this many steps
    per epoch (else the run would start at a step that does not exist)."""
    if ckpt.step_in_epoch >= steps_per_epoch:
        raise _bad(path, "step_in_epoch", ckpt.step_in_epoch, f"less than the {steps_per_epoch} steps per epoch")
    expected = ckpt.epoch * steps_per_epoch + ckpt.step_in_epoch
    if ckpt.step != expected:
        raise _bad(path, "step", ckpt.step, f"epoch x steps per epoch + step_in_epoch = {expected}")


def check_same_data(ckpt, path, n_train: int, fingerprint: str, steps_per_epoch: int) -> str | None:
    """Resume only on the data set the checkpoint was trained on. A checkpoint written before
    fingerprints were stored is accepted when its row count matches (returns a note)."""
    saved_n = ckpt.config.get("n_train")
    if saved_n is not None and saved_n != n_train:
        raise CheckpointError(f"the checkpoint {path} was trained on {saved_n:,} rows, this data has {n_train:,}; "
                              "resume on the data set it was trained on (or start a new run without --resume)")
    saved_fp = ckpt.config.get("data_fingerprint")
    if saved_fp is not None and saved_fp != fingerprint:
        raise CheckpointError(f"the checkpoint {path} was trained on other rows than this data's {n_train:,} "
                              "(their fingerprints differ); resume on the data set it was trained on")
    check_position(ckpt, path, steps_per_epoch)
    if saved_fp is None:
        return (f"the checkpoint {path} predates data fingerprints: only its "
                f"{'row count' if saved_n else 'position'} could be checked against this data")
    return None
