"""Checks and waits on a Dask cluster, bounded: a lost cluster is a ClusterLost, never a hang.

A wait blocks the calling thread for at most POLL_S at a time, so a signal handler (Ctrl-C, SIGTERM)
runs within that, and `stop` is read as often.
"""

import asyncio
import contextlib
import threading
import time

from mlp.errors import BackendError, ClusterLost, StepStopped

POLL_S = 0.25
# distributed raises asyncio's TimeoutError: the built-in one from Python 3.11 on, a class of its own on 3.10
TIMEOUTS = (TimeoutError, asyncio.TimeoutError)
LOST = "the connection to the scheduler was lost (it stopped, or its machine went away)"


class ClusterError(BackendError):
    """Joining failed: not a scheduler, no worker, a machine without this mlp (exit 2: nothing ran)."""


def cluster_errors() -> tuple:
    """The exceptions that mean 'the cluster failed', not 'the model or the flags did'."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError, FuturesCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import NoValidWorkerError, NoWorkerError   # distributed >= 2024.8 has both
    from distributed.utils import CancelledError

    return (KilledWorker, FutureCancelledError, FuturesCancelledError, CancelledError, CommClosedError, NoWorkerError,
            NoValidWorkerError)


def describe(exc: BaseException) -> str:
    """What a cluster error means, in a few words."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    if isinstance(exc, KilledWorker):
        return (f"the workers running a task died {exc.allowed_failures + 1} times (the last was "
                f"{exc.last_worker.address}): out of memory, or killed? see the workers' logs")
    if isinstance(exc, FutureCancelledError):
        if exc.reason in ("scheduler-connection-lost", "unknown"):
            return LOST
        return f"the cluster cancelled the step ({exc.reason})"
    if isinstance(exc, OSError):         # CommClosedError: the scheduler's or a worker's connection
        return "a connection to the cluster closed (the scheduler or a worker stopped, or its machine went away)"
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:160]}"


def identity(client, timeout: float) -> dict:
    """The scheduler's identity with every worker's info (what scheduler_info() gives, bounded)."""
    try:
        return client.sync(client.scheduler.identity, n_workers=-1, callback_timeout=timeout)
    except TIMEOUTS:
        raise ClusterLost(f"the scheduler did not answer within {timeout:g} s") from None
    except (OSError, *cluster_errors()):
        raise ClusterLost(LOST) from None


def running_workers(client, timeout: float) -> int | None:
    """How many workers are 'running' (paused or closing ones do no work); None when the scheduler
    does not answer within `timeout` s."""
    if client.status not in ("running", "connecting"):
        return None
    try:
        return len(client.sync(client.scheduler.ncores_running, callback_timeout=timeout))
    except (*TIMEOUTS, OSError, *cluster_errors()):
        return None


def scatter(client, pieces: list, timeout: float) -> list:
    """client.scatter(pieces): futures, or a ClusterLost when no worker takes them within `timeout` s."""
    try:
        return client.scatter(pieces, timeout=timeout)
    except (*TIMEOUTS, OSError, *cluster_errors()) as exc:
        raise ClusterLost(f"could not send rows to the workers within {timeout:g} s ({describe(exc)})") from None


def check_newcomers(client, known: set, timeout: float) -> None:
    """Workers that joined since the last check get the environment check (a worker without this mlp
    would die on its first task); `known` is updated in place."""
    new = [a for a in identity(client, timeout).get("workers", {}) if a not in known]
    if new:
        try:
            check_environment(client, timeout, scheduler=False, workers=new)
        except ClusterError as exc:
            raise ClusterLost(f"a worker that joined mid-run cannot run this run's tasks: {exc}") from None
        except (*TIMEOUTS, OSError) as exc:
            raise ClusterLost(f"a worker that joined mid-run did not answer ({exc.__class__.__name__})") from None
        known.update(new)


def wait_result(client, future, *, timeout: float, stop=lambda: False, hint: str = "", poll: float = POLL_S):
    """future.result(), but ClusterLost when the scheduler is gone or silent, or no worker runs, for
    `timeout` s, or the cluster failed the task (`hint` is added to say what to change); and
    StepStopped (the future cancelled) as soon as stop() is true."""
    errors = cluster_errors()
    no_workers_since = silent_since = None
    fetch = max(poll, 1.0)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    while True:
        # the done callback, and the future's own state: a future cancelled because the scheduler
        # connection was lost fires no callback
        if done.wait(poll) or future.done():
            try:
                # bounded: the result lives on a worker; if it has just left, distributed recomputes it,
                # which without workers never ends (then the future is no longer done: watched below)
                return future.result(timeout=fetch)
            except TIMEOUTS:
                if fetch >= timeout:    # a silent scheduler, or a result too slow to fetch
                    silent = running_workers(client, poll) is None
                    raise ClusterLost(f"the scheduler has not answered for {timeout:g} s" if silent else
                                      f"the step's result could not be fetched within {timeout:g} s") from None
                fetch = min(2 * fetch, timeout)       # a large result on a slow network: wait longer
                done.clear()
            except errors as exc:
                raise ClusterLost(describe(exc) + hint) from None
            except RuntimeError as exc:   # the scheduler cannot unpickle the tasks: its environment lacks something
                if "deserialization of the task graph" not in str(exc):
                    raise
                cause = exc.__cause__
                raise ClusterLost("the scheduler cannot read this run's tasks" + (
                    f" ({cause.__class__.__name__}: {cause}); install this package there" if cause else "")) from None
        if stop():
            with contextlib.suppress(Exception):
                future.cancel()
            raise StepStopped
        now = time.monotonic()
        if client.status != "running":     # reconnecting, or given up: the cluster's state for the run is gone
            raise ClusterLost(LOST)
        count = running_workers(client, poll)
        if count is None:
            silent_since = silent_since or now
            if now - silent_since >= timeout:
                raise ClusterLost(f"the scheduler has not answered for {timeout:g} s")
            continue
        silent_since = None
        if count == 0:
            no_workers_since = no_workers_since or now
            if now - no_workers_since >= timeout:
                raise ClusterLost(f"no running worker for {timeout:g} s (all gone, or paused at their memory "
                                  f"limit){hint}")
        else:
            no_workers_since = None


# ----------------------------------------------------------------------------- the environment

MODULES = ("mlp.model", "mlp.data", "mlp.store", "mlp.backends.dask_engine")
DISTRIBUTIONS = ("mlp-by-hand", "numpy", "array-api-compat", "dask", "distributed", "cloudpickle")


def _probe_function():
    """What the scheduler or a worker can import, and its versions. A nested function, so that
    cloudpickle sends it by value: it runs where `import mlp` fails (stdlib only, never raises)."""
    def environment(modules, dists, needs=()):
        import hashlib
        import importlib
        import importlib.metadata as md
        import sys

        out = {"python": "%d.%d" % sys.version_info[:2], "versions": {}, "error": None, "source": None}
        for dist in dists:
            try:
                out["versions"][dist] = md.version(dist)
            except md.PackageNotFoundError:
                out["versions"][dist] = None
        digest = hashlib.sha256()
        for name in (*modules, *needs):
            try:
                module = importlib.import_module(name)
                if name in modules:           # the source of this mlp, hashed
                    with open(module.__file__, "rb") as f:
                        digest.update(f.read())
            except Exception as exc:  # reported, never raised
                out["error"] = f"cannot import {name} ({exc.__class__.__name__}: {exc})"
                return out
        out["source"] = digest.hexdigest()[:12]
        return out

    return environment


def check_environment(client, timeout: float, *, scheduler: bool = True, workers=(), gpu: bool = False) -> None:
    """The scheduler (when `scheduler`) and `workers` (addresses; None: all) import the same mlp source
    and the same versions of its dependencies (and CuPy on GPU workers) as this process."""
    fn = _probe_function()
    here = fn(MODULES, DISTRIBUTIONS)
    where = {}
    # callback_timeout is taken by Client.sync, never passed to the function: these calls are bounded
    if scheduler:
        where["the scheduler"] = client.run_on_scheduler(fn, MODULES, DISTRIBUTIONS, callback_timeout=timeout)
    if workers is None or workers:
        found = client.run(fn, MODULES, DISTRIBUTIONS, ("cupy",) if gpu else (), on_error="return",
                           workers=None if workers is None else list(workers), callback_timeout=timeout)
        where.update((f"worker {address}", env) for address, env in found.items())
    version = here["versions"]["mlp-by-hand"]
    install = f"pip install 'mlp-by-hand[dask]=={version}' (the same wheel or clone as here)"
    for name, env in where.items():
        if not isinstance(env, dict):         # an exception (on_error="return"), or no answer at all
            raise ClusterError(f"{name} could not run the environment check ({env.__class__.__name__}: {env}); "
                               f"install this package there: {install}")
        if env["error"]:
            fix = ("pip install cupy-cuda12x (or cupy-cuda13x)" if "cupy" in env["error"] else install)
            raise ClusterError(f"{name} {env['error']}: every worker and the scheduler need this package and its "
                               f"dependencies; run there: {fix}")
        if env["python"] != here["python"]:
            raise ClusterError(f"{name} runs Python {env['python']}, this process {here['python']}; use the same "
                               "Python everywhere (its pickles differ)")
        diff = [f"{d} {env['versions'].get(d)} (here {v})" for d, v in here["versions"].items()
                if env["versions"].get(d) != v]
        if diff:
            pins = " ".join(f"'{d}=={v}'" for d, v in here["versions"].items() if v and env["versions"].get(d) != v)
            raise ClusterError(f"{name} has {', '.join(diff)}; run there: pip install {pins} (the same wheels or clone "
                               "as here)")
        if env["source"] != here["source"]:
            raise ClusterError(f"{name} imports a different mlp source than this process (same version {version}: "
                               "another checkout or edits); install this same code there (pip install from this "
                               "clone, or the same wheel)")
