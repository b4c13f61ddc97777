"""`from mlp import MLPClassifier`: the model as a scikit-learn estimator (docs/python-api.md).

scikit-learn's parameter names and behaviour for one hidden layer, with our defaults (those of
`python -m mlp.train`'s default job); it trains through loop.Run as the commands do, and its
checkpoints are the commands' files. scikit-learn is needed here, and only here.
"""

from __future__ import annotations

import dataclasses
from numbers import Integral, Real
from types import SimpleNamespace

import numpy as np
from array_api_compat import array_namespace, device

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.utils._array_api import check_same_namespace
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted
except ImportError as exc:     # pragma: no cover - depends on the machine
    raise ImportError(f"mlp.MLPClassifier is a scikit-learn estimator and needs scikit-learn ({exc}); "
                      "pip install 'mlp-by-hand[sklearn]'") from None

from . import checkpoint, model, settings
from .backends import BACKENDS
from .batches import batching
from .data import MNIST_MEAN, MNIST_STD, Split, fingerprint
from .estimator_inputs import (RUN, SETTING, backend_for, epoch_losses, host, labels, on, rows, run_settings,
                               setting, sorted_classes, validated)
from .files import unlock
from .loop import ENGINES, Interrupted, Run, TrainState
from .outputs import check_outputs
from .scoring import CHUNK_ROWS, threads_for

D = settings.DEFAULTS


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A perceptron with one hidden layer, trained by hand-written backpropagation (mlp.model):
    scikit-learn's parameters, our defaults; our own parameters are `input` ('features': X as
    given; 'pixels': MNIST's normalisation, as the commands), `init`, `dtype`, `backend`,
    `device`, `engine` and `threads` (docs/python-api.md)."""

    _parameter_constraints = {
        "shuffle": ["boolean"], "tol": [Interval(Real, 0, None, closed="left")], "verbose": ["verbose"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")], "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")], "warm_start": ["boolean"],
        "input": [StrOptions({"features", "pixels"})], "engine": [StrOptions(set(ENGINES))], "device": [None, str],
        "backend": [None, StrOptions(set(BACKENDS) - {"dask"})],
    }

    def __init__(self, hidden_layer_sizes=(D["hidden"],), activation=D["activation"], *, solver=D["solver"],
                 alpha=D["alpha"], batch_size=D["batch_size"], learning_rate_init=D["lr"], max_iter=D["epochs"],
                 shuffle=True, random_state=D["seed"], tol=1e-4, verbose=False, warm_start=False,
                 momentum=D["momentum"], nesterovs_momentum=D["nesterov"], early_stopping=False,
                 validation_fraction=0.1, beta_1=D["beta1"], beta_2=D["beta2"], epsilon=D["epsilon"],
                 n_iter_no_change=10, input="features", init=D["init"], dtype=None, backend=None, device=None,
                 engine="auto", threads=D["threads"]):
        vars(self).update({k: v for k, v in locals().items() if k != "self"})    # each parameter, as given

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = True
        tags.input_tags.three_d_array = self.input == "pixels"
        return tags

    def fit(self, X, y, sample_weight=None) -> MLPClassifier:
        """Train on (X, y) for max_iter epochs (fewer where tol and n_iter_no_change stop it), from
        new weights drawn from random_state, or with warm_start from coefs_ and intercepts_."""
        return self._keeping_state(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None) -> MLPClassifier:
        """One epoch on (X, y), from the weights, the optimiser's state and the shuffling of the
        last call; `classes` (those of every call) must be given on the first."""
        if self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        return self._keeping_state(X, y, sample_weight, incremental=True, classes=classes)

    def _keeping_state(self, *args, **kwargs) -> MLPClassifier:
        """_fit, or on any exception (Ctrl-C included) the estimator as it was before."""
        before = dict(vars(self))
        try:
            return self._fit(*args, **kwargs)
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise

    def _fit(self, X, y, sample_weight, *, incremental: bool, classes=None) -> MLPClassifier:
        self._validate_params()
        go_on = hasattr(self, "coefs_") and (incremental or self.warm_start)      # from the current weights
        X, y, shape = validated(self, X, y, reset=not go_on)
        known = host(self.classes_) if go_on and hasattr(self, "classes_") else None
        if incremental and known is None and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if classes is not None and known is not None and not np.array_equal(np.unique(classes), known):
            raise ValueError(f"classes={classes!r} differs from the classes_ {known.tolist()} of earlier calls")
        classes, y = labels(y, np.unique(classes) if known is None and classes is not None else known)
        cfg = {**run_settings(self, X), "classes": list(range(len(classes)))}
        backend, to_numpy = backend_for(self, X)
        if self.engine == "compiled" and backend.compiled_engine is None:
            raise ValueError(f"MLPClassifier(engine='compiled'): the {backend.name} backend on {backend.device} has no "
                             "compiled engine; use engine='eager' or 'auto', or backend='torch' or 'jax'")
        features = rows(self, X, MNIST_MEAN, MNIST_STD)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        arrays = [on(backend, features, cfg["dtype"]), backend.asarray(y, cfg["dtype"]),
                  None if w is None else on(backend, w, cfg["dtype"])]
        val = None
        if self.early_stopping:                 # as scikit-learn's: stratified for two classes
            kept, held = train_test_split(np.arange(len(y)), test_size=self.validation_fraction,
                                          random_state=cfg["seed"], stratify=y if len(classes) == 2 else None)
            if len(held) < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            val, arrays = ([a if a is None else backend.xp.take(a, backend.asarray(i), axis=0) for a in arrays]
                           for i in (held, kept))
        n = arrays[0].shape[0]
        watch = _Watch(self, self._record(go_on), n, cfg, backend, val)
        data = {"n_features": arrays[0].shape[1], "image_shape": list(shape), "input": self.input, "n_train": n,
                "val_split": self.validation_fraction if self.early_stopping else 0.0}
        if self.input == "pixels":
            data.update(mean=MNIST_MEAN, std=MNIST_STD, data_fingerprint=fingerprint(Split(features, y, None, shape)))
        state = self._start(backend, cfg, data["n_features"], incremental, go_on)
        with Run(backend, cfg, *arrays, state=state, engine=self.engine, threads=cfg["threads"]) as run:
            try:
                run.fit(1 if incremental else cfg["epochs"], on_epoch_end=watch, stop=watch, shuffle=self.shuffle)
            except Interrupted:                # tol and n_iter_no_change stopped it
                pass
            ckpt = run.checkpoint(data, validation=None)
        params = watch.best if self.early_stopping and watch.best else state.params
        out = backend.to_host if to_numpy else (lambda a: a)
        return self._fitted({k: out(params[k]) for k in model.PARAM_NAMES}, classes, ckpt, state.epoch, **watch.fitted)

    def _fitted(self, params: dict, classes: np.ndarray, ckpt, n_iter: int, **record) -> MLPClassifier:
        """Set the fitted attributes: the parameters, the classes, the checkpoint save() starts from."""
        w1, b1, w2, b2 = (params[k] for k in model.PARAM_NAMES)
        vars(self).update(coefs_=[w1, w2], intercepts_=[b1, b2], classes_=classes, n_iter_=n_iter, n_layers_=3,
                          n_outputs_=w2.shape[1], out_activation_="logistic" if len(classes) == 2 else "softmax",
                          _checkpoint=ckpt, **record)
        return self

    def _record(self, go_on: bool) -> dict:
        """The fitted attributes that a fit adds to (those of earlier calls with warm_start, partial_fit)."""
        before = vars(self) if go_on else {}
        early = self.early_stopping
        return {"loss_curve_": list(before.get("loss_curve_", [])), "t_": before.get("t_", 0),
                "_no_improvement_count": before.get("_no_improvement_count", 0),
                "best_loss_": None if early else _or(before.get("best_loss_"), np.inf),
                "validation_scores_": list(before.get("validation_scores_") or []) if early else None,
                "best_validation_score_": _or(before.get("best_validation_score_"), -np.inf) if early else None}

    def _start(self, backend, cfg: dict, n_features: int, incremental: bool, go_on: bool) -> TrainState:
        """A new run's state: new weights, or (go_on) coefs_ and intercepts_ with a new optimiser;
        partial_fit keeps the optimiser's slots and the generator of the last call."""
        if not go_on:
            return TrainState.fresh(backend, cfg, n_features)
        given = {k: host(v) for k, v in self._params().items()}
        shapes = model.param_shapes(n_features, cfg["hidden"], model.outputs(len(cfg["classes"])))
        if {k: v.shape for k, v in given.items()} != shapes:
            raise ValueError(f"coefs_ and intercepts_ have the shapes {[v.shape for v in given.values()]}; these "
                             f"features, hidden_layer_sizes and classes need {list(shapes.values())}")
        state = TrainState.fresh(backend, cfg, n_features, params=given)
        if incremental and hasattr(self, "_checkpoint"):
            slots = {k: v for k, v in self._checkpoint.params.items() if k in state.params and k not in given}
            state.params.update({k: backend.asarray(v, cfg["dtype"]) for k, v in slots.items()})
            state.rng.bit_generator.state = self._checkpoint.rng_state
        return state

    def predict_proba(self, X):
        """(n, K): the probability of each class of classes_ for each row (or image) of X, in X's
        namespace and on its device, in the model's dtype."""
        return self._proba(X, "predict_proba")

    def predict_log_proba(self, X):
        """The log of predict_proba, from the logits (finite where a probability rounds to 0)."""
        return self._proba(X, "predict_log_proba", log=True)

    def predict(self, X):
        """The class of each row: the one of highest probability."""
        proba = self._proba(X, "predict")
        xp, classes = array_namespace(proba), host(self.classes_)
        best = xp.argmax(proba, axis=1)
        if isinstance(proba, np.ndarray) or classes.dtype.kind not in "biuf":     # NumPy, or labels of no xp dtype
            return classes[host(best)]
        return xp.take(xp.asarray(classes, device=device(best)), best, axis=0)

    def score(self, X, y, sample_weight=None) -> float:
        """The accuracy of predict on (X, y), weighted by sample_weight, as scikit-learn's (counted
        on the host in float64, whatever the namespace of X)."""
        weights = None if sample_weight is None else host(sample_weight)
        return float(accuracy_score(host(y), host(self.predict(X)), sample_weight=weights))

    def _proba(self, X, method: str, log: bool = False):
        check_is_fitted(self, ["coefs_", "classes_"])
        X = validated(self, X, reset=False)[0]
        check_same_namespace(X, self, attribute="_fitted_on", method=method)
        backend, to_numpy = backend_for(self, X)
        xp, config = backend.xp, getattr(self, "_checkpoint", SimpleNamespace(config={})).config
        activation = config.get("activation", self.activation)
        dtype = "float32" if "float32" in str(self.coefs_[0].dtype) else "float64"     # the model's
        features = on(backend, rows(self, X, config.get("mean", MNIST_MEAN), config.get("std", MNIST_STD)), dtype)
        params = {k: on(backend, host(v) if to_numpy else v, dtype) for k, v in self._params().items()}
        n, H = features.shape[0], params["w1"].shape[1]
        out = []
        with threads_for(backend, n, {"n_features": features.shape[1], "hidden": H}, setting(self, "threads")):
            for i in range(0, n, CHUNK_ROWS):
                z2 = model.forward(params, features[i:min(i + CHUNK_ROWS, n), :], activation)[2]
                if not log:
                    out.append(model.probabilities(z2))
                elif z2.shape[1] > 1:
                    out.append(model.log_softmax(z2))
                else:                                    # log(1 - p) = -softplus(z), log p = log(1 - p) + z
                    log_q = -model.bce_with_logits(z2, 0.0)
                    out.append(xp.concat([log_q, log_q + z2], axis=1))
            proba = xp.concat(out)
        return backend.to_host(proba) if to_numpy else proba

    def _params(self) -> dict:
        """coefs_ and intercepts_ as the model's parameters w1, b1, w2, b2."""
        return dict(zip(model.PARAM_NAMES, (self.coefs_[0], self.intercepts_[0], self.coefs_[1], self.intercepts_[1])))

    @property
    def _fitted_on(self):
        """An array of the fitted model, for scikit-learn's check_same_namespace."""
        return self.coefs_[0]

    def save(self, path) -> None:
        """Write the model as an mlp checkpoint (.npz), as mlp.train --save does, through the
        commands' output policy (mlp.outputs: refused, with a UserError, where they refuse)."""
        check_is_fitted(self, ["coefs_", "classes_"])
        classes = host(self.classes_).tolist()
        try:
            classes = settings.check("classes", classes)
        except ValueError as exc:
            raise ValueError(f"save() keeps the classes as --classes does, {exc}; these are {classes[:10]}: map them "
                             "to such numbers before fit") from None
        params = {k: host(v) for k, v in self._params().items()}
        ckpt = dataclasses.replace(self._checkpoint, params={**self._checkpoint.params, **params},
                                   config={**self._checkpoint.config, "classes": classes})
        locked = check_outputs({"MLPClassifier.save": path})
        try:
            checkpoint.save(path, ckpt)
        finally:
            for p in locked:
                unlock(p)

    @classmethod
    def load(cls, path, *, backend=None, device=None, engine="auto") -> MLPClassifier:
        """The model of a checkpoint (from `save` or `mlp.train --save`), on `backend` and `device`;
        its other parameters are the checkpoint's. classes_ are sorted, the outputs with them."""
        ckpt = checkpoint.load(path)
        c = ckpt.config
        params = {name: c[SETTING.get(name, name)] for name in RUN if SETTING.get(name, name) in settings.RUN_KEYS}
        est = cls(**{**params, "hidden_layer_sizes": (c["hidden"],)}, max_iter=int(ckpt.meta.get("target_epochs",
                  ckpt.epoch)), input=c["input"], backend=backend, device=device, engine=engine)
        classes, ordered = sorted_classes(c["classes"], ckpt.params, c["solver"])
        n = c.get("n_train")          # a checkpoint may predate it: then no loss curve
        curve = epoch_losses(ckpt.losses[:len(ckpt.losses) - ckpt.step_in_epoch], n, c["batch_size"]) if n else []
        ckpt = dataclasses.replace(ckpt, params=ordered, config={**c, "classes": classes.tolist()})
        return est._fitted(ordered, classes, ckpt, ckpt.epoch, loss_curve_=curve, best_loss_=min(curve, default=np.inf),
                           t_=ckpt.epoch * (n or 0), _no_improvement_count=0, validation_scores_=None,
                           best_validation_score_=None, n_features_in_=c["n_features"])


class _Watch:
    """scikit-learn's bookkeeping at each epoch's end: loss_curve_, t_, the validation score (on
    the held-out rows `val`, with early_stopping), the best so far, and its stop rule:
    `requested` once the loss (or score) has not improved by tol for more than n_iter_no_change
    epochs (loop.fit then stops the run)."""

    def __init__(self, est: MLPClassifier, fitted: dict, n: int, cfg: dict, backend, val=None):
        self.est, self.fitted, self.n, self.cfg, self.backend, self.val = est, fitted, n, cfg, backend, val
        self.steps, self.best, self.requested = batching(n, cfg["batch_size"])[1], None, False

    def __call__(self, state: TrainState) -> None:
        fitted, est = self.fitted, self.est
        loss = epoch_losses(state.losses[-self.steps:], self.n, self.cfg["batch_size"])[0]
        fitted["loss_curve_"].append(loss)
        fitted["t_"] += self.n
        if self.val is None:
            key, value, gain = "best_loss_", loss, fitted["best_loss_"] - loss
        else:
            value = self.accuracy(state.params)
            fitted["validation_scores_"].append(value)
            key, gain = "best_validation_score_", value - fitted["best_validation_score_"]
        fitted["_no_improvement_count"] = fitted["_no_improvement_count"] + 1 if gain < est.tol else 0
        if gain > 0:
            fitted[key], self.best = value, state.params
        if est.verbose:
            print(f"Iteration {state.epoch}, loss = {loss:.8f}")
            if self.val is not None:
                print(f"Validation score: {value:f}")
        self.requested = fitted["_no_improvement_count"] > est.n_iter_no_change

    def accuracy(self, params) -> float:
        """scikit-learn's validation score: the (weighted) fraction of the held-out rows predicted right."""
        (X, y, w), xp = self.val, self.backend.xp
        predicted = model.predicted(model.forward(params, X, self.cfg["activation"])[2])
        right = xp.astype(xp.astype(predicted, y.dtype) == y, y.dtype)
        return float(self.backend.to_host(xp.mean(right) if w is None else xp.sum(w * right) / xp.sum(w)))


def _or(value, default):
    return default if value is None else value
