"""Scoring a trained model on held-out rows: loss, accuracy, confusion matrix, probabilities (a
library module: `mlp.train`, `mlp.evaluate`, `mlp.predict` and the estimator use it)."""

import numpy as np

from . import model

CHUNK_ROWS = 65_536   # rows per device call when scoring or predicting: bounds the device memory


def threads_for(backend, n_rows: int, config: dict, requested="auto"):
    """The CPU thread pools sized for scoring or predicting `n_rows` rows with a model of `config`
    (backends.thread_limits, from the rows of one device call): a context manager."""
    from mlp import backends

    return backends.thread_limits(backend, min(n_rows, CHUNK_ROWS), config["n_features"], config["hidden"], requested)


def outputs(backend, params, X, activation, y=None, *, chunk: int = CHUNK_ROWS) -> dict:
    """For the host rows X (already normalised) and the model `params` on the backend, in chunks
    of rows to bound memory: 'probs' (n, C) and 'predicted' (n,) labels; with labels y, also
    the mean cross-entropy 'loss'."""
    dtype = "float32" if "float32" in str(params["w1"].dtype) else "float64"
    n, total = X.shape[0], 0.0
    probs, predicted = [], []
    for start in range(0, n, chunk):
        z2 = model.forward(params, backend.asarray(X[start:start + chunk], dtype), activation)[2]   # (rows, K)
        probs.append(backend.to_host(model.probabilities(z2)))
        predicted.append(backend.to_host(model.predicted(z2)))
        if y is not None:
            yc = backend.asarray(y[start:start + chunk], dtype)
            total += float(backend.to_host(model.mean_loss(z2, yc))) * z2.shape[0]
    out = {"probs": np.concatenate(probs).astype(np.float64), "predicted": np.concatenate(predicted).astype(np.int64)}
    if y is not None:
        out["loss"] = total / n
    return out


def score(backend, params, X, y, activation, *, chunk: int = CHUNK_ROWS) -> dict:
    """Mean cross-entropy, accuracy, the confusion matrix and the probabilities over (X, y)."""
    out = outputs(backend, params, X, activation, y, chunk=chunk)
    truth = y.astype(np.int64)
    correct = int(np.sum(out["predicted"] == truth))
    n_classes = out["probs"].shape[1]
    return {**out, "accuracy": correct / len(y), "correct": correct, "n": len(y),
            "confusion": confusion_matrix(truth, out["predicted"], n_classes)}


def confusion_matrix(y, predicted, n_classes: int = 2) -> np.ndarray:
    """K x K counts: rows are the true class, columns the predicted class (in label order)."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (y.astype(int), predicted.astype(int)), 1)
    return m
