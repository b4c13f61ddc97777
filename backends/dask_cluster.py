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

Every wait on the cluster is bounded by --scheduler-timeout: joining and starting are
`dask_connect`'s (a probe of the address, the environment of every machine), waiting
mid-run is `dask_guard`'s (a lost cluster is `mlp.errors.ClusterLost`, exit 5 after saving).
"""

import contextlib
import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlp.errors import BackendError

from .base import Backend
from .dask_engine import DaskEngine, as_numpy, to_device
from .dask_connect import connect, restore_environ
from .dask_guard import identity, scatter, wait_result
from .host import cpu_name
from .threads import usable_cores

DEFAULT_CHUNK_ROWS = 8192      # 6.4 MB of uint8 pixels per chunk; 51 MB once normalised to float64
CONNECT_TIMEOUT_S = 10.0
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1.0, 3600.0   # --scheduler-timeout's bounds (threading waits overflow past ~9.2e9 s)
MIN_WORKER_MEMORY = 150_000_000  # a worker process is ~62 MiB and pauses at 80% of its limit: room for a chunk
PERSIST_FRACTION = 0.5         # persist the rows when they take at most this much of the cluster's memory
HOST = "_mlp_host"             # the attribute of an array made from host data: that data (read without the cluster)


@dataclass(frozen=True)
class Options:
    workers: int | None = None         # embedded cluster: worker processes (default: one per core / per GPU)
    scheduler: str | None = None       # join this scheduler instead
    chunk_rows: int | None = None      # rows per chunk (default: DEFAULT_CHUNK_ROWS, at most N / workers)
    worker_memory: str | int | None = None   # embedded cluster: memory limit per worker, e.g. '2GB'
    timeout: float = CONNECT_TIMEOUT_S  # every wait on the cluster (connecting, no worker, no answer)
    verbose: bool = False              # distributed's own logs and warnings on the terminal
    gpu: int | None = None             # --device cuda:N: that GPU only (a local cluster); None: every GPU


def check_options(o: Options, kind: str) -> Options:
    """The options made safe to use, or a one-line BackendError naming the flag: the scheduler's address
    parsed (tcp:// only), the worker memory in bytes and within the machine's, the workers within its
    cores and memory, the timeout finite and bounded."""
    if not MIN_TIMEOUT_S <= o.timeout <= MAX_TIMEOUT_S:
        raise BackendError(f"--scheduler-timeout {o.timeout:g}: give a number of seconds from {MIN_TIMEOUT_S:g} to "
                           f"{MAX_TIMEOUT_S:g}")
    address = o.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        from .dask_connect import scheduler_address

        for flag, value in (("--workers", o.workers), ("--worker-memory", o.worker_memory)):
            if value is not None:
                raise BackendError(f"{flag} sizes a local cluster; with --scheduler (or $DASK_SCHEDULER_ADDRESS) "
                                   "the cluster has the workers started on it")
        if o.gpu is not None:
            raise BackendError(f"--device cuda:{o.gpu} picks a GPU of a local cluster; the workers of --scheduler "
                               "use the GPUs `dask cuda worker` gave them: give --device cuda")
        return dataclasses.replace(o, scheduler=scheduler_address(address))
    memory = o.worker_memory
    if isinstance(memory, str):
        from dask.utils import parse_bytes

        try:
            if not memory.strip():
                raise ValueError("empty")
            memory = parse_bytes(memory)
        except OverflowError:
            memory = 1 << 80          # refused below: more than the machine's
        except (ValueError, TypeError):
            raise BackendError(f"--worker-memory {o.worker_memory!r} is not a size; use e.g. 500MB or 2GB") from None
    if memory is not None and memory < MIN_WORKER_MEMORY:
        raise BackendError(f"--worker-memory {o.worker_memory} is " + ("not positive" if memory <= 0 else "less than "
                           "a worker needs") + f"; give at least {MIN_WORKER_MEMORY // 1_000_000}MB (the worker process"
                           " itself, then a chunk of rows)")
    if kind != "cpu":
        return dataclasses.replace(o, worker_memory=memory)
    from distributed.system import MEMORY_LIMIT   # the machine's memory, less cgroup and rlimit limits

    cores, per_worker = usable_cores(), memory or MIN_WORKER_MEMORY
    fit = max(1, min(cores, MEMORY_LIMIT // per_worker))
    if o.workers is not None and o.workers > fit:
        raise BackendError(f"--workers {o.workers} is more than this machine runs: {cores} cores and "
                           f"{MEMORY_LIMIT / 1e9:.1f} GB of memory allow {fit} worker(s) of "
                           f"{per_worker / 1e6:,.0f} MB; give --workers {fit} or fewer")
    if memory is not None and (o.workers or fit) * memory > MEMORY_LIMIT:
        raise BackendError(f"--worker-memory {o.worker_memory} for {o.workers or fit} worker(s) is more than this "
                           f"machine's {MEMORY_LIMIT / 1e9:.1f} GB; give at most "
                           f"{MEMORY_LIMIT // (o.workers or fit) // 1_000_000}MB")
    return dataclasses.replace(o, worker_memory=memory, workers=o.workers or fit)


@dataclass(frozen=True)
class DaskBackend(Backend):
    """A Backend whose arrays are dask arrays on a cluster; params travel as NumPy. Every step's results
    are computed before the step returns: synchronize has nothing to wait for (Backend's default)."""

    eager_engine = DaskEngine

    client: Any = field(default=None, repr=False)
    cluster: Any = field(default=None, repr=False)
    options: Options = field(default_factory=Options)
    info: dict = field(default_factory=dict, repr=False)  # what the run's rows are doing (persisted/streamed)

    def __str__(self) -> str:
        return f"dask on {self.device} ({self.device_name})" + (f"; {self.info['rows']}" if "rows" in self.info else "")

    def asarray(self, host_array, dtype: str | None = None):
        """A host array on the cluster: small ones as one chunk, rows in chunks of --chunk-rows; either
        way it keeps its host data, which to_host and the engine read without asking the cluster."""
        host = np.asarray(host_array, dtype=dtype, order="C")    # cast on the host, as Backend.asarray does
        if host.ndim < 2 or host.nbytes <= 1 << 20:
            return self.wrap(host)
        import dask.array as da
        from dask import delayed

        # rows are scattered to the workers, not written into the graph (which the scheduler would hold)
        step = self.options.chunk_rows or DEFAULT_CHUNK_ROWS
        pieces = [host[a:a + step] for a in range(0, host.shape[0], step)]
        futures = scatter(self.client, pieces, self.options.timeout)
        arr = self.on_device(da.concatenate([da.from_delayed(delayed(f), p.shape, dtype=p.dtype)
                                             for f, p in zip(futures, pieces)]))
        setattr(arr, HOST, host)
        return arr

    def to_host(self, x) -> np.ndarray:
        """A NumPy copy: of the host data behind an array made here; else computed (locally when it reads
        nothing that lives on the workers, else on the cluster, bounded, converted to NumPy there)."""
        if getattr(x, HOST, None) is not None:
            return np.array(getattr(x, HOST), copy=True)
        if hasattr(x, "dask"):
            from dask import delayed
            from distributed import futures_of

            if self.device == "cpu" and not futures_of(x) and not any(
                    str(name).startswith(("rows-", "labels-")) for name in x.dask.layers):
                x = x.compute(scheduler="sync")
            else:
                x = wait_result(self.client, self.client.compute(delayed(as_numpy, pure=True)(x)),
                                timeout=self.options.timeout)
        return np.array(as_numpy(x), copy=True)

    @property
    def device_name(self) -> str:
        return self.info.get("description", "")     # asked once, at connect: a lost cluster cannot be asked again

    def on_device(self, arr):
        """`arr`'s chunks as CuPy arrays on GPU workers (as they are on CPU workers). The meta stays NumPy,
        so that this process needs no GPU; whatever comes back is converted to NumPy on the workers."""
        if self.device == "cpu":
            return arr
        return arr.map_blocks(to_device, dtype=arr.dtype, meta=np.empty((0,) * arr.ndim, arr.dtype))

    def wrap(self, host):
        """A small host array as a one-chunk dask array (on GPU workers: moved there by the workers)."""
        import dask.array as da

        host = np.asarray(host)
        arr = self.on_device(da.from_array(host, chunks=host.shape or ()))
        setattr(arr, HOST, host)
        return arr

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
        memory, of_what = self.cluster_memory()
        size = X8.nbytes + y8.nbytes
        fits = memory is None or size <= PERSIST_FRACTION * memory
        if fits:
            X8, y8 = self.client.persist([X8, y8])
            self.info["rows"] = (f"{n:,} uint8 rows ({size / 1e6:,.1f} MB) persisted on the workers "
                                 f"in chunks of {chunk:,}")
        else:
            self.info["rows"] = (f"{n:,} uint8 rows ({size / 1e6:,.1f} MB, more than {PERSIST_FRACTION:.0%} of "
                                 f"{of_what}, {memory / 1e9:.2f} GB) streamed from disk at each step in chunks "
                                 f"of {chunk:,}")
        if self.device != "cpu" and "GPU memory unknown" in of_what:
            self.info["rows"] += f" ({of_what})"
        self.info.update(persisted=fits, chunk_rows=chunk, n=n)
        X = X8.map_blocks(functools.partial(normalise, dtype=dtype), dtype=np.dtype(dtype),
                          meta=np.empty((0, 0), dtype))
        self.info.setdefault("uint8_rows", {})[X.name] = (X8, y8, dtype)  # what the engine's chunk tasks read
        return X, y8

    def default_chunk_rows(self, n: int, features: int) -> int:
        """DEFAULT_CHUNK_ROWS, but at most N / workers (every worker gets a chunk) and at most
        what keeps a chunk's float64 rows within 1/8 of a worker's memory limit."""
        workers = identity(self.client, self.options.timeout)["workers"].values()
        chunk = min(DEFAULT_CHUNK_ROWS, math.ceil(n / max(1, len(workers))))
        limits = [w.get("memory_limit") or 0 for w in workers]
        if limits and min(limits) > 0:
            chunk = min(chunk, max(256, min(limits) // (8 * 8 * features)))
        return chunk

    def cluster_memory(self) -> tuple[int | None, str]:
        """(bytes, of what) that the persisted rows would live in: the workers' memory limits on CPU
        workers (None when a worker has none); on GPU workers their GPUs' memory (NVML, else CuPy on each
        worker; when neither answers, the memory limits, and the text says so)."""
        workers = identity(self.client, self.options.timeout)["workers"]
        limits = [w.get("memory_limit") for w in workers.values()]
        host = None if not limits or not all(limits) else int(sum(limits))
        if self.device == "cpu":
            return host, "the cluster's memory"
        gpus = [(w.get("gpu") or {}).get("memory-total") for w in workers.values()]
        if not gpus or not all(gpus):
            found = self.client.run(lambda: __import__("cupy").cuda.runtime.memGetInfo()[1], on_error="return",
                                    callback_timeout=self.options.timeout)
            gpus = [v for v in found.values() if isinstance(v, int)]
            if len(gpus) != len(workers):
                return host, "GPU memory unknown (no NVML or CuPy answer from every worker): the workers' host memory"
        return int(sum(gpus)), "the workers' GPU memory"

    def close(self) -> None:
        from .dask_connect import discard

        if self.client is not None:
            discard(self.client)       # bounded: a dead scheduler has nothing left to close
        if self.cluster is not None:
            with contextlib.suppress(Exception):   # best effort
                self.cluster.close(timeout=10)
        if getattr(self.cluster, "_mlp_environ", None) is not None:
            restore_environ(self.cluster._mlp_environ)
        if "warnings" in self.info:
            self.info.pop("warnings").__exit__()      # connect's filter on distributed's warnings, off again
        _OPEN[:] = [b for b in _OPEN if b is not self]


def _token(rows) -> str:
    from dask.base import tokenize

    path = getattr(rows, "path", None) or getattr(rows, "images_path", None)
    return tokenize(repr(rows), path, os.path.getmtime(path) if path else None)  # a rewritten file: new keys


_OPEN: list = []   # the backends dask_backend opened and close() has not closed


def release_all() -> None:
    """Close every cluster this process opened (the commands call it on every exit)."""
    for b in list(_OPEN):
        b.close()


def dask_backend(kind: str, index: int | None, options: Options | None = None) -> DaskBackend:
    try:
        import distributed            # imports dask: a missing dask is named as such
        from array_api_compat import array_namespace
    except ImportError as exc:
        raise BackendError(f"--backend dask needs dask and distributed ({exc}); "
                           "pip install 'mlp-by-hand[dask]'") from None
    options = check_options(options or Options(), kind)   # a bad flag is one line before anything starts
    if kind == "cuda" and options.scheduler is None:
        try:
            import cupy  # noqa: F401
            from dask_cuda.utils import get_n_gpus
        except ImportError as exc:
            raise BackendError(f"--backend dask --device cuda needs dask-cuda and CuPy ({exc}); "
                               "pip install 'mlp-by-hand[dask-cuda,cuda12]', or use --device cpu") from None
        count = get_n_gpus()
        if options.gpu is not None and options.gpu >= count:
            raise BackendError(f"--device cuda:{options.gpu} does not exist: this machine has {count} GPU(s), "
                               f"cuda:0 to cuda:{count - 1}")
    kept = warnings.catch_warnings()             # the warnings filters as they are, again at close() (quiet())
    with contextlib.ExitStack() as on_failure:
        on_failure.enter_context(kept)
        client, cluster, workers = connect(kind, options)      # closes what it started if it fails
        on_failure.pop_all()
    import dask.array as da

    backend = DaskBackend(name="dask", device="cpu" if kind == "cpu" else "cuda" if options.gpu is None else
                          f"cuda:{options.gpu}", xp=array_namespace(da.zeros(1)), version=distributed.__version__,
                          client=client, cluster=cluster, options=options,
                          info={"checked_workers": workers, "warnings": kept})
    _OPEN.append(backend)
    workers = identity(client, options.timeout)["workers"].values()
    where = (f"scheduler {options.scheduler}" if cluster is None else "LocalCluster" if kind == "cpu"
             else "LocalCUDACluster")
    host = cpu_name() if cluster is not None and kind == "cpu" else f"{len(workers)} workers"
    backend.info["description"] = (f"{where}: {len(workers)} worker processes, "
                                   f"{sum(w.get('nthreads', 0) for w in workers)} threads; {host}")
    return backend


def _worker_memory(reset: bool) -> dict:
    """On a worker: host.memory() after an optional reset of the peak."""
    from mlp.backends.host import memory, reset_peak_memory

    if reset:
        reset_peak_memory()
    return memory()


def worker_memory(client, reset: bool = False) -> dict:
    """{worker address: {'rss': bytes, 'peak': bytes}} for every worker (see host.memory)."""
    return client.run(_worker_memory, reset)
