"""Scoring a trained model on held-out rows: loss, accuracy, confusion matrix (a library module:
`mlp.train` and `mlp.evaluate` both use it)."""

import numpy as np

from mlp import backends

from . import model


CHUNK_ROWS = 65_536   # rows per device call when scoring or predicting: bounds the device memory


def size_threads(backend, n_rows: int, config: dict, requested="auto"):
    """Size the CPU thread pools for scoring or predicting `n_rows` rows with a model of `config`
    (the thread policy, from the rows of one device call); the count, or None off the CPU."""
    return backends.choose_threads(backend, min(n_rows, CHUNK_ROWS), config["n_features"], config["hidden"],
                                   requested)


def score(backend, params, X, y, activation, *, chunk: int = CHUNK_ROWS) -> dict:
    """Mean BCE, accuracy and P(label 1) over (X, y), in chunks of rows to bound memory.

    X and y are host arrays; params live on the backend's device."""
    xp = backend.xp
    n = X.shape[0]
    total_loss = 0.0
    probs = np.empty(n, dtype=np.float64)
    dtype = _dtype_name(params["w1"])
    for start in range(0, n, chunk):
        Xc = backend.asarray(X[start:start + chunk], dtype)
        yc = backend.asarray(y[start:start + chunk].reshape(-1, 1), dtype)
        _, _, z2 = model.forward(params, Xc, activation)
        total_loss += float(backend.to_host(model.bce_with_logits(z2, yc))) * Xc.shape[0]
        probs[start:start + chunk] = backend.to_host(xp.reshape(model.sigmoid(z2), (-1,)))
    predicted = (probs >= 0.5).astype(np.float64)
    return {
        "loss": total_loss / n,
        "accuracy": float(np.mean(predicted == y)),
        "correct": int(np.sum(predicted == y)),
        "n": int(n),
        "probs": probs,
        "confusion": confusion_matrix(y, predicted),
    }


def probabilities(backend, params, X, activation, *, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """P(label 1) of each host row of X (already normalised), in chunks of rows to bound memory."""
    dtype = _dtype_name(params["w1"])
    return np.concatenate([backend.to_host(model.predict_proba(params, backend.asarray(X[i:i + chunk], dtype),
                                                               activation)) for i in range(0, len(X), chunk)])


def _dtype_name(array) -> str:
    return "float32" if "float32" in str(array.dtype) else "float64"


def confusion_matrix(y, predicted) -> np.ndarray:
    """2x2 counts: rows are the true class (A, B), columns the predicted class (A, B)."""
    m = np.zeros((2, 2), dtype=np.int64)
    np.add.at(m, (y.astype(int), predicted.astype(int)), 1)
    return m
