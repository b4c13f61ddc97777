"""`from mlp import MLPClassifier`: the model as a scikit-learn-style estimator (docs/python-api.md).

It makes the commands' calls, so from the same rows and settings it fits what `python -m mlp.train`
fits, and its checkpoints are the commands' files. X is pixels (images, or rows of 0..255 or of
floats in [0, 1]); y holds two labels, label 1 being classes_[1]. scikit-learn is optional.
"""

from __future__ import annotations

import contextlib

import numpy as np

from mlp import backends

from . import checkpoint, model, settings
from .data import MNIST_MEAN, MNIST_STD, Split, fingerprint, normalise
from .errors import UserError
from .images import scale_pixels
from .loop import ENGINES, Run
from .scoring import outputs, threads_for
from .settings import DEFAULTS, MAX_LABEL, RUN_KEYS

PARAMS = ("hidden", "activation", "init", "lr", "epochs", "batch_size", "seed", "dtype", "backend", "device", "engine",
          "threads")
CHOICES = {"activation": model.ACTIVATIONS, "init": (None, *model.INITS), "dtype": model.DTYPES, "engine": ENGINES,
           "backend": (None, *(b for b in backends.BACKENDS if b != "dask"))}   # Dask: the commands'


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
        classes, labels = _labels(y, len(rows))
        if cfg["batch_size"] != "full" and cfg["batch_size"] > len(rows):
            raise ValueError(f"batch_size={cfg['batch_size']} is larger than the {len(rows):,} rows of X; "
                             f"use at most {len(rows)} or 'full'")
        backend = backends.resolve(self.device, self.backend)
        cfg["classes"] = _whole_labels(classes) or list(range(len(classes)))
        with _threads_refused(cfg["threads"]), Run(backend, cfg, backend.asarray(rows, cfg["dtype"]),
                                                   backend.asarray(labels, cfg["dtype"]), engine=self.engine,
                                                   threads=cfg["threads"]) as run:
            run.fit(cfg["epochs"])
        ckpt = run.checkpoint({"n_features": rows.shape[1], "image_shape": list(shape), "input": "pixels",
                               "mean": MNIST_MEAN, "std": MNIST_STD, "n_train": len(rows), "val_split": 0.0,
                               "data_fingerprint": fingerprint(Split(rows, labels, None, shape))}, validation=None)
        self.saveable_ = _whole_labels(classes) is not None
        return self._fitted(ckpt, classes)

    def predict_proba(self, X) -> np.ndarray:
        """(n, K): the probability of each class of classes_ for each row or image of X."""
        backend, params, cfg = self._device_params()
        rows = _rows(X, cfg)[0]
        with _threads_refused(self.threads), threads_for(backend, len(rows), cfg, self._settings()["threads"]):
            return outputs(backend, params, rows, cfg["activation"])["probs"]

    def predict(self, X) -> np.ndarray:
        """The class of each row or image: the one of highest probability."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y) -> float:
        """Accuracy on (X, y): the fraction of labels that predict gets right (as mlp.evaluate counts)."""
        return float(np.mean(self.predict(X) == np.asarray(y).reshape(-1)))

    def save(self, path) -> None:
        """Write the fitted model as an mlp checkpoint (.npz), as mlp.train --save does."""
        self._check_fitted()
        if not getattr(self, "saveable_", True):
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
        """The hyper-parameters as a run's settings, each checked as its flag is (mlp.settings)."""
        cfg = dict(DEFAULTS)
        for name in PARAMS:
            value = getattr(self, name)
            try:
                cfg[name] = settings.check(name, value) if name in settings.SETTINGS else value
            except ValueError as exc:
                raise ValueError(f"MLPClassifier({name}={value!r}): must be {exc}") from None
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


def _whole_labels(classes) -> list | None:
    """The labels as a checkpoint keeps them (as --classes: whole numbers >= 0), or None."""
    labels = [int(c) for c in classes if classes.dtype.kind in "biuf" and float(c).is_integer() and 0 <= c <= MAX_LABEL]
    return labels if len(labels) == len(classes) else None


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


def _labels(y, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(the classes, sorted; y as the position of each label among them, float64)."""
    y = np.asarray(y)
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (n,):
        raise ValueError(f"y must hold one label per row of X ({n}), got shape {y.shape}")
    classes, positions = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"y holds {len(classes)} class; a classifier needs rows of at least two classes")
    return classes, positions.astype(np.float64)
