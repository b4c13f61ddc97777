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


def outputs(backend, params, X, activation, y=None) -> dict:
    """For the host rows X (already normalised) and the model `params` on the backend, in chunks
    of rows to bound memory: 'probs' (n, C) and 'predicted' (n,) labels; with labels y, also
    the mean cross-entropy 'loss'."""
    dtype = "float32" if "float32" in str(params["w1"].dtype) else "float64"
    n, total = X.shape[0], 0.0
    probs, predicted = [], []
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        z2 = model.forward(params, backend.asarray(X[rows], dtype), activation)[2]   # (rows, K)
        probs.append(backend.to_host(model.probabilities(z2)))
        predicted.append(backend.to_host(model.predicted(z2)))
        if y is not None:
            total += float(backend.to_host(model.mean_loss(z2, backend.asarray(y[rows], dtype)))) * z2.shape[0]
    out = {"probs": np.concatenate(probs).astype(np.float64), "predicted": np.concatenate(predicted).astype(np.int64)}
    if y is not None:
        out["loss"] = total / n
    return out


def score(backend, params, X, y, activation) -> dict:
    """Mean cross-entropy, accuracy, the probabilities, and the K x K confusion matrix over (X, y): its
    rows are the true classes, its columns the predicted ones (in label order)."""
    out = outputs(backend, params, X, activation, y)
    truth, K = y.astype(np.int64), out["probs"].shape[1]
    correct = int(np.sum(out["predicted"] == truth))
    return {**out, "accuracy": correct / len(y), "correct": correct, "n": len(y),
            "confusion": np.bincount(truth * K + out["predicted"], minlength=K * K).reshape(K, K).astype(np.int64)}
