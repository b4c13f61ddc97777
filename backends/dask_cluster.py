"""`--backend dask`: the same model source on a Dask cluster, for data that outgrows one machine.

The cluster is either embedded (a `distributed.LocalCluster` of worker processes, one per
core unless `workers` says otherwise; a `dask_cuda.LocalCUDACluster`, one worker per GPU,
with `--device cuda`) or an existing one joined at `scheduler` (`dask scheduler` and
`dask worker` on other machines). Either way it is closed by `close()` (and by
`backends.release()`, which the commands call on every exit, Ctrl-C and errors included).

The training rows stay uint8 on the workers (1 byte per pixel) and are normalised inside
each chunk's task by `mlp.data.normalise`; each worker reads its chunks from the data folder itself
(`mlp.store.IdxRows` / `NpyRows`), so a worker that dies takes nothing with it that Dask
cannot read again. Rows that fit in half the cluster's memory are persisted on the workers
once; larger ones stream from disk at each step. A step (`dask_engine.DaskEngine`) runs
`model.loss_and_grads` on every chunk, sums the results across chunks on the cluster and
updates the small parameters on the host with `model.update`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlp.errors import BackendError

from .base import Backend
from .dask_engine import DaskEngine, as_numpy
from .host import cpu_name

DEFAULT_CHUNK_ROWS = 8192      # 6.4 MB of uint8 pixels per chunk; 51 MB once normalised to float64
CONNECT_TIMEOUT_S = 10.0
PERSIST_FRACTION = 0.5         # persist the rows when they take at most this much of the cluster's memory


@dataclass(frozen=True)
class Options:
    workers: int | None = None         # embedded cluster: worker processes (default: one per core / per GPU)
    scheduler: str | None = None       # join this scheduler instead
    chunk_rows: int | None = None      # rows per chunk (default: DEFAULT_CHUNK_ROWS, at most N / workers)
    worker_memory: str | None = None   # embedded cluster: memory limit per worker, e.g. '2GB'
    timeout: float = CONNECT_TIMEOUT_S


@dataclass(frozen=True)
class DaskBackend(Backend):
    """A Backend whose arrays are dask arrays on a cluster; params travel as NumPy."""

    eager_engine = DaskEngine

    client: Any = field(default=None, repr=False)
    cluster: Any = field(default=None, repr=False)
    options: Options = field(default_factory=Options)
    info: dict = field(default_factory=dict, repr=False)  # what the run's rows are doing (persisted/streamed)

    def __str__(self) -> str:
        return f"dask on {self.device} ({self.device_name})" + (f"; {self.info['rows']}" if "rows" in self.info else "")

    def asarray(self, host_array, dtype: str | None = None):
        """A host array on the cluster: small ones as one chunk, rows in chunks of --chunk-rows."""
        host = np.asarray(host_array)
        if dtype is not None:
            host = host.astype(dtype, copy=False)
        return _rows_array(self, np.ascontiguousarray(host))

    def to_host(self, x) -> np.ndarray:
        if hasattr(x, "dask"):
            x = self.client.compute(x, sync=True)
        return np.array(as_numpy(x), copy=True)

    def synchronize(self, *arrays) -> None:
        pass   # every step's results are computed before the step returns

    @property
    def device_name(self) -> str:
        return _describe(self)

    def on_device(self, arr):
        """`arr`'s chunks as CuPy arrays on GPU workers (as they are on CPU workers)."""
        if self.device == "cpu":
            return arr
        import cupy

        return arr.map_blocks(cupy.asarray, dtype=arr.dtype, meta=cupy.empty((0,) * arr.ndim, arr.dtype))

    # -- arrays ---------------------------------------------------------------------------
    def wrap(self, host):
        """A small host array as a one-chunk dask array (on GPU workers: moved there by the workers)."""
        import dask.array as da

        return self.on_device(da.from_array(np.asarray(host), chunks=np.shape(host) or ()))

    def from_rows(self, X_rows, y_rows, dtype: str):
        """X (N, D) in `dtype` and y (N,) uint8 as dask arrays over lazy uint8 rows (see mlp.store):
        persisted on the workers when they fit, else read from disk at each use."""
        import dask.array as da

        from mlp.data import normalise

        n = X_rows.shape[0]
        chunk = self.options.chunk_rows or self.default_chunk_rows(n, int(np.prod(X_rows.shape[1:])))
        X8 = da.from_array(X_rows, chunks=(chunk, -1), asarray=True, fancy=False, name=f"rows-{_token(X_rows)}")
        y8 = da.from_array(y_rows, chunks=(chunk,), asarray=True, fancy=False, name=f"labels-{_token(y_rows)}")
        X8, y8 = self.on_device(X8), self.on_device(y8)
        memory = self.cluster_memory()
        size = X8.nbytes + y8.nbytes
        fits = memory is None or size <= PERSIST_FRACTION * memory
        where = "" if memory is None else f" of {memory / 1e9:.2f} GB"
        if fits:
            X8, y8 = self.client.persist([X8, y8])
            self.info["rows"] = (f"{n:,} uint8 rows ({size / 1e6:,.1f} MB) persisted on the workers "
                                 f"in chunks of {chunk:,}")
        else:
            self.info["rows"] = (f"{n:,} uint8 rows ({size / 1e6:,.1f} MB, more than {PERSIST_FRACTION:.0%} of the "
                                 f"cluster's memory{where}) streamed from disk at each step in chunks of {chunk:,}")
        self.info.update(persisted=fits, chunk_rows=chunk, n=n)
        meta = None
        if self.device != "cpu":
            import cupy

            meta = cupy.empty((0, 0), dtype)
        X = X8.map_blocks(functools.partial(normalise, dtype=dtype), dtype=np.dtype(dtype), meta=meta)
        self.info.setdefault("uint8_rows", {})[X.name] = (X8, y8, dtype)  # what the engine's chunk tasks read
        return X, y8

    def default_chunk_rows(self, n: int, features: int) -> int:
        """DEFAULT_CHUNK_ROWS, but at most N / workers (every worker gets a chunk) and at most
        what keeps a chunk's float64 rows within 1/8 of a worker's memory limit."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        chunk = min(DEFAULT_CHUNK_ROWS, math.ceil(n / max(1, len(workers))))
        limits = [w.get("memory_limit") or 0 for w in workers]
        if limits and min(limits) > 0:
            chunk = min(chunk, max(256, min(limits) // (8 * 8 * features)))
        return chunk

    # -- the cluster ----------------------------------------------------------------------
    def cluster_memory(self) -> int | None:
        """The sum of the workers' memory limits in bytes (None when a worker has none)."""
        limits = [w.get("memory_limit") for w in self.client.scheduler_info(n_workers=-1)["workers"].values()]
        return None if not limits or not all(limits) else int(sum(limits))

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing is best effort: a dead scheduler has nothing left to close
                    pass
        if getattr(self.cluster, "_mlp_environ", None) is not None:
            restore_environ(self.cluster._mlp_environ)
        _OPEN[:] = [b for b in _OPEN if b is not self]


def _token(rows) -> str:
    from dask.base import tokenize

    path = getattr(rows, "path", None) or getattr(rows, "images_path", None)
    return tokenize(repr(rows), path, os.path.getmtime(path) if path else None)  # a rewritten file: new keys


# ----------------------------------------------------------------------------- opening


_OPEN: list = []


def release_all() -> None:
    """Close every cluster this process opened (the commands call it on every exit)."""
    for b in list(_OPEN):
        b.close()


def dask_backend(kind: str, index: int | None, options: Options | None = None) -> DaskBackend:
    options = options or Options()
    try:
        import dask  # noqa: F401
        import distributed
        from array_api_compat import array_namespace
    except ImportError as exc:
        raise BackendError(f"--backend dask needs dask and distributed ({exc}); "
                           "pip install 'mlp-by-hand[dask]'") from None
    if kind == "cuda" and options.scheduler is None:
        try:
            import cupy  # noqa: F401
            import dask_cuda  # noqa: F401
        except ImportError as exc:
            raise BackendError(f"--backend dask --device cuda needs dask-cuda and CuPy ({exc}); "
                               "pip install 'mlp-by-hand[dask-cuda,cuda12]', or use --device cpu") from None
    client, cluster = _connect(kind, options, distributed)
    import dask.array as da

    xp = array_namespace(da.zeros(1))
    device = "cpu" if kind == "cpu" else f"cuda:{index or 0}"
    backend = DaskBackend(name="dask", device=device, xp=xp, version=distributed.__version__, client=client,
                          cluster=cluster, options=options, info={})
    _OPEN.append(backend)
    return backend


def _rows_array(backend: DaskBackend, host: np.ndarray):
    """A host array on the cluster: small ones as one chunk, rows in chunks of --chunk-rows."""
    if host.ndim < 2 or host.nbytes <= 1 << 20:
        return backend.wrap(host)
    import dask.array as da
    from dask import delayed

    # rows are scattered to the workers, not written into the graph (which the scheduler would hold)
    step = backend.options.chunk_rows or DEFAULT_CHUNK_ROWS
    pieces = [host[a:a + step] for a in range(0, host.shape[0], step)]
    futures = backend.client.scatter(pieces)
    arr = da.concatenate([da.from_delayed(delayed(f), p.shape, dtype=p.dtype) for f, p in zip(futures, pieces)])
    return backend.on_device(arr)


def _describe(backend: DaskBackend) -> str:
    workers = backend.client.scheduler_info(n_workers=-1)["workers"].values()
    threads = sum(w.get("nthreads", 0) for w in workers)
    where = "LocalCUDACluster" if backend.cluster is not None and backend.device != "cpu" else (
        "LocalCluster" if backend.cluster is not None else f"scheduler {backend.client.scheduler.address}")
    host = cpu_name() if backend.cluster is not None and backend.device == "cpu" else f"{len(workers)} workers"
    return f"{where}: {len(workers)} worker processes, {threads} threads; {host}"


def _connect(kind: str, options: Options, distributed):
    address = options.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = distributed.Client(address, timeout=options.timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise BackendError(
                f"cannot reach the Dask scheduler at {address} within {options.timeout:g} s "
                f"({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}); start it with `dask scheduler` and "
                f"workers with `dask worker {address}`, check the address, or leave out --scheduler (and "
                "$DASK_SCHEDULER_ADDRESS) for a local cluster") from None
        try:
            client.wait_for_workers(1, timeout=options.timeout)
        except (TimeoutError, OSError):
            client.close()
            raise BackendError(f"the Dask scheduler at {address} has no workers after {options.timeout:g} s; "
                               f"start some with `dask worker {address}`") from None
        return client, None
    previous = None
    environ = dict(os.environ)
    try:
        # worker processes start with Ctrl-C ignored: the first Ctrl-C is the trainer's to handle
        # (stop after the step, save, close the cluster), not a signal that kills the workers
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    try:
        if kind == "cuda":
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(
                n_workers=options.workers, dashboard_address=":0", silence_logs=40,
                scheduler_kwargs={"dashboard": False},
                **({"memory_limit": options.worker_memory} if options.worker_memory else {}))
        else:
            cluster = distributed.LocalCluster(
                n_workers=options.workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                dashboard_address=":0", silence_logs=40, scheduler_kwargs={"dashboard": False},
                **({"memory_limit": options.worker_memory} if options.worker_memory else {}))
        client = distributed.Client(cluster, set_as_default=False)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        restore_environ(environ)
    cluster._mlp_environ = environ   # restored again at close(): a restarted worker writes it again
    return client, cluster


def restore_environ(saved: dict) -> None:
    """Put os.environ back as it was: distributed's Nanny writes its workers' settings
    (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_, ...) into the environment of the process
    that hosts it, where they would change every process this one starts later."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)


@contextlib.contextmanager
def environ_kept():
    """os.environ as it was on entry, again on exit (around a LocalCluster of one's own)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        restore_environ(saved)


# ----------------------------------------------------------------------------- memory


def _worker_memory(reset: bool) -> dict:
    """On a worker: host.memory() after an optional reset of the peak."""
    from mlp.backends.host import memory, reset_peak_memory

    if reset:
        reset_peak_memory()
    return memory()


def worker_memory(client, reset: bool = False) -> dict:
    """{worker address: {'rss': bytes, 'peak': bytes}} for every worker (see host.memory)."""
    return client.run(_worker_memory, reset)
