"""`from mlp import MLPClassifier`: the model as a scikit-learn-style estimator (docs/python-api.md).

It makes the commands' calls, so from the same rows and settings it fits what `python -m mlp.train`
fits, and its checkpoints are the commands' files. X is pixels (images, or rows of 0..255 or of
floats in [0, 1]); y holds two labels, label 1 being classes_[1]. scikit-learn is optional.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np

from mlp import backends

from . import checkpoint, model
from .checkpoint import RUN_KEYS
from .checkpoint_meta import MAX_LABEL
from .batches import batching
from .cli import positive_float, positive_int, seed_int, threads_arg
from .data import MNIST_MEAN, MNIST_STD, Split, fingerprint, normalise
from .errors import UserError
from .images import scale_pixels
from .loop import ENGINES, TrainState, fit, make_engine
from .scoring import probabilities, size_threads
from .train import DEFAULTS, batch_size_arg

PARAMS = ("hidden", "activation", "init", "lr", "epochs", "batch_size", "seed", "dtype", "backend", "device", "engine",
          "threads")
CHOICES = {"activation": model.ACTIVATIONS, "init": (None, *model.INITS), "dtype": model.DTYPES, "engine": ENGINES,
           "backend": (None, *(b for b in backends.BACKENDS if b != "dask"))}   # Dask: the commands'
CHECKS = {"hidden": positive_int, "epochs": positive_int, "lr": positive_float, "seed": seed_int,
          "batch_size": batch_size_arg, "threads": threads_arg}                # the flags' own checks


class MLPClassifier:
    """A binary classifier; the arguments are mlp.train's flags (init None: he for relu, xavier
    for tanh; backend None: numpy on cpu, on cuda the first of jax, torch, cupy that can use it;
    threads: --threads, the CPU thread policy of docs/cpu-or-gpu.md)."""

    def __init__(self, hidden=DEFAULTS["hidden"], activation=DEFAULTS["activation"], init=DEFAULTS["init"],
                 lr=DEFAULTS["lr"], epochs=DEFAULTS["epochs"], batch_size=DEFAULTS["batch_size"],
                 seed=DEFAULTS["seed"], dtype=DEFAULTS["dtype"], backend=None, device="cpu", engine="auto",
                 threads="auto"):
        values = (hidden, activation, init, lr, epochs, batch_size, seed, dtype, backend, device, engine, threads)
        for name, value in zip(PARAMS, values):
            setattr(self, name, value)

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params) -> MLPClassifier:
        for name, value in params.items():
            if name not in PARAMS:
                raise ValueError(f"MLPClassifier has no parameter {name!r}; its parameters: {', '.join(PARAMS)}")
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags   # only scikit-learn asks

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(multi_class=False), input_tags=InputTags(three_d_array=True))

    def __repr__(self) -> str:
        default = MLPClassifier().get_params()
        return f"MLPClassifier({', '.join(f'{k}={v!r}' for k, v in self.get_params().items() if v != default[k])})"

    def fit(self, X, y) -> MLPClassifier:
        """Train a new model on (X, y), from the seeded initial parameters, for `epochs` epochs."""
        cfg = self._settings()
        rows, shape = _rows(X)
        classes, y01 = _binary_labels(y, len(rows))
        if cfg["batch_size"] != "full" and cfg["batch_size"] > len(rows):
            raise ValueError(f"batch_size={cfg['batch_size']} is larger than the {len(rows):,} rows of X; "
                             f"use at most {len(rows)} or 'full'")
        backend = backends.resolve(self.device, self.backend)
        with _threads_refused(cfg["threads"]):   # sized as the commands size them: the same count, the same bits
            backends.choose_threads(backend, batching(len(rows), cfg["batch_size"])[0], rows.shape[1], cfg["hidden"],
                                    cfg["threads"])
        state = TrainState.fresh(backend, cfg, rows.shape[1])
        engine = make_engine(backend, self.engine, cfg, backend.asarray(rows, cfg["dtype"]),
                             backend.asarray(y01, cfg["dtype"]))
        fit(backend, engine, state, cfg["epochs"])
        cfg["classes"] = _class_pair(classes)
        config = {**{k: cfg[k] for k in RUN_KEYS}, "n_features": rows.shape[1],
                  "image_shape": list(shape), "mean": MNIST_MEAN, "std": MNIST_STD, "n_train": len(rows),
                  "val_split": 0.0, "data_fingerprint": fingerprint(Split(rows, y01, None, shape))}
        meta = {"saved_on": str(backend), "target_epochs": cfg["epochs"], "engine": engine.name, "validation": None}
        return self._fitted(state.to_checkpoint(backend, config, meta), classes)

    def predict_proba(self, X) -> np.ndarray:
        """(n, 2): P(classes_[0]) and P(classes_[1]) for each row or image of X."""
        backend, params, cfg = self._device_params()
        rows, threads = _rows(X, cfg)[0], self._settings()["threads"]
        with _threads_refused(threads):
            size_threads(backend, len(rows), cfg, threads)
        p = probabilities(backend, params, rows, cfg["activation"])
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        """The label of each row or image: classes_[1] where its probability is at least 0.5."""
        label_1 = self.predict_proba(X)[:, 1] >= 0.5
        return self.classes_[label_1.astype(int)]

    def score(self, X, y) -> float:
        """Accuracy on (X, y): the fraction of labels that predict gets right (as mlp.evaluate counts)."""
        return float(np.mean(self.predict(X) == np.asarray(y).reshape(-1)))

    def save(self, path) -> None:
        """Write the fitted model as an mlp checkpoint (.npz), as mlp.train --save does."""
        self._check_fitted()
        if self.checkpoint_.config["classes"] is None:
            raise ValueError(f"save() keeps the labels as whole numbers >= 0 (as mlp.train --classes); these are "
                             f"{self.classes_.tolist()}: map them to such numbers before fit")
        checkpoint.save(path, self.checkpoint_)

    @classmethod
    def load(cls, path, *, backend=None, device="cpu", engine="auto") -> MLPClassifier:
        """The model of a checkpoint (from `save` or `mlp.train --save`), to predict with on
        `backend` and `device`; its other settings are the checkpoint's."""
        ckpt = checkpoint.load(path)
        settings = {k: ckpt.config[k] for k in PARAMS if k in RUN_KEYS}
        est = cls(**settings, epochs=int(ckpt.meta.get("target_epochs", ckpt.epoch)), backend=backend,
                  device=device, engine=engine)
        return est._fitted(ckpt, np.asarray(ckpt.config["classes"]))

    def _settings(self) -> dict:
        """The hyper-parameters as a run's settings, each checked as its flag is."""
        cfg = {}
        for name in PARAMS:
            value = getattr(self, name)
            try:
                cfg[name] = CHECKS[name](str(value)) if name in CHECKS else value
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"MLPClassifier({name}={value!r}): {exc}") from None
            if name in CHOICES and value not in CHOICES[name]:
                raise ValueError(f"MLPClassifier({name}={value!r}): use one of {', '.join(map(repr, CHOICES[name]))}")
        cfg["init"] = cfg["init"] or model.default_init(cfg["activation"])
        return cfg

    def _fitted(self, ckpt, classes) -> MLPClassifier:
        self.checkpoint_, self.classes_, self.n_features_in_ = ckpt, classes, ckpt.config["n_features"]
        self.losses_, self.n_iter_ = ckpt.losses, ckpt.epoch       # every step's loss; epochs trained
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "checkpoint_"):
            raise ValueError("this MLPClassifier is not fitted yet: call fit(X, y) first")

    def _device_params(self):
        """(the backend, the fitted parameters on it, the model's settings)."""
        self._check_fitted()
        backend, cfg = backends.resolve(self.device, self.backend), self.checkpoint_.config
        return backend, {k: backend.asarray(v, cfg["dtype"]) for k, v in self.checkpoint_.params.items()}, cfg


@contextlib.contextmanager
def _threads_refused(requested):
    """The thread policy's refusal (threads=N off the CPU) as this class's ValueError."""
    try:
        yield
    except UserError as exc:
        raise ValueError(f"MLPClassifier(threads={requested!r}): {exc}") from None


def _class_pair(classes) -> list | None:
    """The labels as a checkpoint keeps them (as --classes: whole numbers >= 0), or None."""
    pair = [int(c) for c in classes if classes.dtype.kind in "biuf" and float(c).is_integer() and 0 <= c <= MAX_LABEL]
    return pair if len(pair) == 2 else None


def _rows(X, cfg: dict | None = None) -> tuple[np.ndarray, tuple]:
    """(X's pixels as normalised float64 rows (n, D), the shape of one input); with a fitted
    model's `cfg`, X must have its number of features and is normalised with its mean and std."""
    X = np.asarray(X)
    if X.ndim not in (2, 3) or X.shape[0] == 0 or 0 in X.shape[1:]:
        raise ValueError(f"X must be rows (n, D) or images (n, height, width), n >= 1, got shape {X.shape}")
    if cfg is not None and int(np.prod(X.shape[1:])) != cfg["n_features"]:
        raise ValueError(f"X has {int(np.prod(X.shape[1:]))} features per row (shape {X.shape}); the model was "
                         f"fitted on {cfg['n_features']}")
    try:
        pixels = scale_pixels(X, "X")                          # the rule mlp.predict applies to .npy inputs
    except UserError as exc:
        raise ValueError(str(exc)) from None
    cfg = cfg or {}
    return normalise(pixels, mean=cfg.get("mean", MNIST_MEAN), std=cfg.get("std", MNIST_STD)), X.shape[1:]


def _binary_labels(y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the two classes, sorted; y as 0/1 floats, 1 = the second class)."""
    y = np.asarray(y)
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (n,):
        raise ValueError(f"y must hold one label per row of X ({n}), got shape {y.shape}")
    classes = np.unique(y)
    if len(classes) != 2:
        shown = ", ".join(map(str, classes[:10].tolist())) + (", ..." if len(classes) > 10 else "")
        raise ValueError(f"MLPClassifier is a binary classifier: y holds {len(classes)} classes ({shown}); "
                         + ("fit it on rows of two classes" if len(classes) < 2 else
                            "keep the rows of two of them (one model per pair of classes)"))
    return classes, (y == classes[1]).astype(np.float64)
