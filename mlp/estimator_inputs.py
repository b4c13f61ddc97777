"""What `MLPClassifier` (mlp/estimator.py) is given, made ready with scikit-learn's helpers: its
parameters as a run's settings (mlp.settings), X validated and as the model's rows, y as each row's
class, the Backend that computes (X's own under array API dispatch), and a checkpoint's classes
put in sorted order."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._array_api import _is_numpy_namespace, get_namespace, get_namespace_and_device, move_to
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, validate_data

from mlp import backends

from . import model, settings
from .batches import batching
from .data import normalise
from .errors import UserError
from .images import scale_pixels

#: scikit-learn's names of our settings (mlp.settings), where the two differ
SETTING = {"hidden_layer_sizes": "hidden", "learning_rate_init": "lr", "max_iter": "epochs", "random_state": "seed",
           "nesterovs_momentum": "nesterov", "beta_1": "beta1", "beta_2": "beta2"}
#: the estimator's parameters that are settings of a run
RUN = (*SETTING, "activation", "solver", "batch_size", "momentum", "alpha", "epsilon", "init", "dtype", "threads")


def run_settings(est, X) -> dict:
    """The estimator's parameters as a run's settings for the rows X, each checked by the settings
    table. dtype None is X's for features (float32 or float64), float32 for pixels (the commands');
    batch_size 'auto' is scikit-learn's min(200, n); one above n is clipped, with its warning."""
    n_rows = X.shape[0]
    cfg = dict(settings.DEFAULTS)
    for name in RUN:
        value = getattr(est, name)
        if name == "hidden_layer_sizes":
            sizes = [value] if isinstance(value, numbers.Integral) else list(value)
            if len(sizes) != 1:
                raise ValueError(f"MLPClassifier(hidden_layer_sizes={value!r}): this model has one hidden layer; "
                                 "give (H,)")
            value = sizes[0]
        elif name == "random_state" and not isinstance(value, numbers.Integral):   # None, a RandomState
            value = int(check_random_state(value).randint(np.iinfo(np.int32).max))
        elif name == "batch_size" and value == "auto":
            value = min(200, n_rows)
        elif name == "dtype" and value is None:
            value = "float64" if est.input == "features" and X.dtype == get_namespace(X)[0].float64 else "float32"
        cfg[SETTING.get(name, name)] = setting(est, name, value)
    if cfg["batch_size"] != "full" and cfg["batch_size"] > n_rows:
        warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        cfg["batch_size"] = n_rows
    cfg["init"] = cfg["init"] or model.default_init(cfg["activation"])
    return cfg


def setting(est, name: str, value=None):
    """The parameter `name` (or `value` made of it) checked by the settings table (mlp.settings)."""
    try:
        return settings.check(SETTING.get(name, name), getattr(est, name) if value is None else value)
    except ValueError as exc:
        raise ValueError(f"MLPClassifier({name}={getattr(est, name)!r}): must be {exc}") from None


def validated(est, X, y="no_validation", *, reset: bool):
    """(X, y) checked by validate_data (finite, 2-D, n_features_in_), and the shape of one input.
    For input 'pixels', images (n, h, w) become rows and keep their dtype (uint8: 0..255)."""
    pixels, xp = est.input == "pixels", get_namespace(X)[0]
    if pixels:
        X = check_array(X, allow_nd=True, dtype=None, input_name="X", estimator=est)
        shape = tuple(X.shape[1:])
        X = xp.reshape(X, (X.shape[0], -1))
    checked = validate_data(est, X, y, reset=reset, dtype=None if pixels else [xp.float64, xp.float32])
    X, y = checked if isinstance(checked, tuple) else (checked, None)
    return X, y, shape if pixels else (X.shape[1],)


def host(a) -> np.ndarray:
    """Any array (of any library, on any device) as a NumPy array."""
    return move_to(a, xp=np, device="cpu") if hasattr(a, "__dlpack__") else np.asarray(a)


def rows(est, X, mean: float, std: float):
    """X as the model's rows: features as given; pixels (uint8 or integers 0..255 divided by 255,
    or floats in [0, 1]; mlp.predict's rule) normalised with `mean` and `std` on the host, as
    mlp.train normalises them (NumPy, float64)."""
    if est.input == "features":
        return X
    try:
        return normalise(scale_pixels(host(X), "X"), mean=mean, std=std)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def on(backend, a, dtype: str):
    """The array `a` (NumPy, or of the backend's library and device) as the backend's, in `dtype`."""
    return backend.asarray(a, dtype) if isinstance(a, np.ndarray) else backend.xp.astype(a, getattr(backend.xp, dtype))


def labels(y, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(the classes: y's, sorted, or `classes`; each row's class as its position among them, float64)."""
    y = host(y)
    try:
        check_classification_targets(y)
        found = np.unique(y)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in y.tolist()})
        raise ValueError(f"y mixes labels of the types {', '.join(kinds)}; give labels of one type") from None
    classes = found if classes is None else classes
    if len(classes) < 2:
        raise ValueError(f"y holds {len(classes)} class; a classifier needs rows of at least two classes")
    if not np.isin(found, classes).all():
        raise ValueError(f"y holds the labels {found[~np.isin(found, classes)].tolist()}, which are not among the "
                         f"classes {classes.tolist()} of the model")
    return classes, np.searchsorted(classes, y).astype(np.float64)


def backend_for(est, X):
    """(the Backend that computes, whether results go back as NumPy): under array API dispatch,
    X's own library and device; else the backend and device parameters, from and to NumPy."""
    xp, dispatched, _ = get_namespace_and_device(X)
    if dispatched and not _is_numpy_namespace(xp):
        if est.backend is not None or est.device is not None:
            raise ValueError(f"MLPClassifier(backend={est.backend!r}, device={est.device!r}): under array API "
                             "dispatch the model computes with X's library on X's device; leave both None")
        backend, to_numpy = backends.of(X), False
    else:
        backend, to_numpy = backends.resolve(est.device or "cpu", est.backend), True
    if est.threads != "auto" and backend.device != "cpu":
        raise ValueError(f"MLPClassifier(threads={est.threads!r}) sizes this process's CPU thread pools, but the "
                         f"model runs on {backend.device}; leave threads='auto'")
    return backend, to_numpy


def epoch_losses(step_losses, n: int, batch_size) -> list:
    """scikit-learn's loss_curve_ from the losses of every step: each epoch's, weighted by the
    rows of each step, over the n rows."""
    batch, steps = batching(n, batch_size)
    return (np.reshape(step_losses, (-1, steps)) @ np.minimum(batch, n - batch * np.arange(steps)) / n).tolist()


def sorted_classes(classes: list, params: dict, solver: str) -> tuple[np.ndarray, dict]:
    """(the classes sorted, the parameters and the optimiser's slots with the outputs in that
    order): for two classes the sigmoid's sign flips (p of the second is 1 - p of the first), and
    with it each first moment; for more, the output columns are permuted."""
    order = np.argsort(classes, kind="stable")

    def ordered(k, v):
        if not k.endswith(("w2", "b2")):
            return v
        return v[..., order] if len(classes) > 2 else v if solver == "adam" and k.startswith("v_") else -v

    if (order == np.arange(len(order))).all():
        return np.asarray(classes), params
    return np.asarray(classes)[order], {k: ordered(k, v) for k, v in params.items()}
