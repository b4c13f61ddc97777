"""The Dask engine: one full-batch (or whole-chunk minibatch) step of gradient descent on a cluster.

A step is one task per row chunk and a tree of sums:

    chunk i (B_i rows of the batch):   loss_i, g_i = model.loss_and_grads(params, X_i, y_i)
    the batch (B = sum of B_i rows):   loss = sum_i (B_i / B) loss_i,   g = sum_i (B_i / B) g_i
    on the host:                       params = opt.step(params, g + L2's)  (the optimiser's slots
                                       stay on the host with the parameters)

which is exactly the mean loss and gradient over the batch, since both are means over rows.
Each chunk's task normalises its own uint8 rows (mlp.data.normalise), so a worker holds
1 byte per pixel between steps and one chunk's float temporaries during a step, and the
graph has one task per chunk rather than one per operation. The parameters go out from the
host with each step's graph (on GPU workers each chunk's task moves them to its GPU: the one
broadcast per step), and the loss and gradients come back summed, converted to NumPy on the
worker, so the host needs no GPU. Every wait on the cluster is bounded (dask_guard.wait_result):
a lost cluster is a ClusterLost, a stop request (Ctrl-C, SIGTERM) a StepStopped.
"""

import time

import numpy as np

from mlp.batches import batch_rows
from mlp.errors import BackendError

SPLIT_EVERY = 8      # partial sums added per task of the reduction tree
NEWCOMERS_EVERY_S = 1.0   # how often a step on an external cluster checks workers that joined since


def as_numpy(x) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy result."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def to_device(block):
    """On a GPU worker: a NumPy block as a CuPy array (the client itself needs no CuPy)."""
    import cupy

    return cupy.asarray(block)


def host_pair(pair):
    """On a worker: (loss, grads) as NumPy, so that what comes back needs no GPU to read."""
    loss, grads = pair
    return as_numpy(loss), {k: as_numpy(g) for k, g in grads.items()}


def chunk_loss_and_grads(X, y, params, activation, weight, dtype=None, rows=None):
    """On a worker: `weight` times the mean loss and gradients over this chunk's rows
    (`rows`, when given, picks the batch's rows out of the chunk; `dtype` normalises uint8 rows)."""
    from array_api_compat import array_namespace

    from mlp import model
    from mlp.data import normalise

    xp = array_namespace(X)
    if rows is not None:
        rows = xp.asarray(rows)                                     # NumPy -> CuPy on a GPU worker
        X, y = xp.take(X, rows, axis=0), xp.take(y, rows, axis=0)
    if dtype is not None:
        X = normalise(X, dtype)
    params = {k: xp.asarray(v) for k, v in params.items()}        # NumPy -> CuPy on a GPU worker
    # the labels were checked once, when the rows were opened; a diverging run's overflows are the
    # host's to report (in one line), not warnings on the workers' terminals
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, grads = model.loss_and_grads(params, X, y, activation, check_labels=False)
        return weight * loss, {k: weight * g for k, g in grads.items()}


def add(*parts):
    """The sum of (loss, grads) pairs."""
    with np.errstate(over="ignore", invalid="ignore"):
        loss = sum(p[0] for p in parts)
        return loss, {k: sum(p[1][k] for p in parts) for k in parts[0][1]}


class DaskEngine:
    """Runs steps as chunk tasks on the cluster; the engine layer's eager engine for --backend dask."""

    name = "dask"
    segment = 1

    def __init__(self, backend, X, y, batch: int, *, opt, activation: str, alpha: float = 0.0):
        self.opt, self.activation, self.alpha = opt, activation, alpha
        self.backend, self.batch, self.n = backend, batch, X.shape[0]
        # the uint8 rows behind X when it came from backend.from_rows (normalised in the chunk task),
        # else X's own (already float) chunks
        X8, y8, self.dtype = backend.info.get("uint8_rows", {}).get(X.name, (X, y, None))
        if X8.ndim == 2 and X8.chunks[1] != (X8.shape[1],):
            X8 = X8.rechunk({1: -1})                    # whole rows per chunk
        y8 = y8.rechunk((X8.chunks[0],))                # the labels in the rows' chunks
        self.X_blocks, self.y_blocks = X8.to_delayed().ravel().tolist(), y8.to_delayed().ravel().tolist()
        self.bounds = np.cumsum((0,) + X8.chunks[0])
        chunk = max(X8.chunks[0])
        if batch < self.n and batch < chunk:
            raise BackendError(
                f"--batch-size {batch} is smaller than one Dask chunk ({chunk:,} rows): every step would cost a "
                f"scheduler round trip (milliseconds) for {batch} rows of work; use --batch-size full (the main "
                f"mode) or at least {chunk} (or a smaller --chunk-rows), or --backend numpy for small minibatches")
        self.perm = None
        self.stop = None           # set by mlp.loop.fit: a stop request gives up the step under way
        self.newcomers_checked = time.monotonic()   # the workers were checked at connect

    def begin_epoch(self, perm) -> None:
        self.perm = perm   # stays on the host: each chunk's task is told which of its rows are in the batch

    def run(self, params, first: int, last: int):
        from mlp import model

        b = self.backend
        host = {k: b.to_host(v) for k, v in params.items()}   # arrays of host data (backend.wrap): no cluster trip
        losses = []
        for i in range(first, last):
            loss, grads = self._loss_and_grads({k: host[k] for k in model.PARAM_NAMES}, i)
            if self.alpha:       # the penalty once per step, on the host: the chunks' means carry none
                rows = batch_rows(i, self.batch, self.n)
                B = rows.stop - rows.start
                loss, grads = loss + model.l2_loss(host, self.alpha, B), model.l2_grads(host, grads, self.alpha, B)
            host = self.opt.step(host, grads)
            losses.append(float(loss))
        return {k: b.wrap(v) for k, v in host.items()}, np.asarray(losses, dtype=np.float64)   # losses stay on the host

    def _loss_and_grads(self, host_params, i: int):
        from dask import delayed

        if self.perm is None:
            picks = [(k, None, hi - lo) for k, (lo, hi) in enumerate(zip(self.bounds[:-1], self.bounds[1:]))]
        else:
            rows = np.sort(self.perm[batch_rows(i, self.batch, self.n)])
            cut = np.searchsorted(rows, self.bounds)
            picks = [(k, rows[cut[k]:cut[k + 1]] - self.bounds[k], cut[k + 1] - cut[k])
                     for k in range(len(self.X_blocks)) if cut[k + 1] > cut[k]]
        total = sum(count for _, _, count in picks)
        p = delayed(host_params, traverse=True)
        parts = [delayed(chunk_loss_and_grads, pure=True)(self.X_blocks[k], self.y_blocks[k], p, self.activation,
                                                          float(count / total), self.dtype, rows)
                 for k, rows, count in picks]
        while len(parts) > 1:
            parts = [delayed(add, pure=True)(*parts[j:j + SPLIT_EVERY]) for j in range(0, len(parts), SPLIT_EVERY)]
        from .dask_guard import check_newcomers, wait_result

        b = self.backend
        client, timeout = b.client, b.options.timeout
        if b.cluster is None and time.monotonic() - self.newcomers_checked >= NEWCOMERS_EVERY_S:
            check_newcomers(client, b.info.setdefault("checked_workers", set()), timeout)   # others' cluster
            self.newcomers_checked = time.monotonic()
        hint = "; raise --worker-memory or lower --chunk-rows" if b.options.worker_memory else ""
        root = parts[0] if b.device == "cpu" else delayed(host_pair, pure=True)(parts[0])   # CPU: NumPy already
        return wait_result(client, client.compute(root), timeout=timeout,
                           stop=lambda: self.stop is not None and self.stop.requested, hint=hint)
