"""Joining a Dask cluster without ever hanging: every wait bounded, every refusal one line.

distributed applies `Client(timeout=)` to the TCP connection only: the handshake after it has
no deadline, so an HTTP server or a silent socket at the address hangs a Client for ever.
`check_scheduler` does the handshake itself, under one deadline, before any Client exists.
"""

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import threading
import warnings

from mlp.errors import BackendError

from .dask_guard import TIMEOUTS, ClusterError, check_environment, identity


# ----------------------------------------------------------------------------- the address


def scheduler_address(text: str) -> str:
    """'tcp://HOST:PORT' from what the user gave (tcp:// added when missing); no other protocol."""
    given = text.strip()
    scheme, sep, location = given.partition("://")
    if not sep:
        scheme, location = "tcp", given
    if scheme.lower() != "tcp":
        raise BackendError(f"--scheduler {given}: the {scheme}:// protocol is not supported; use tcp://HOST:PORT "
                           "(the address `dask scheduler` prints)")
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})", location)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise BackendError(f"--scheduler {given!r} is not an address; use tcp://HOST:PORT, e.g. tcp://10.0.0.1:8786")
    return f"tcp://{m.group(1)}:{int(m.group(2))}"


async def check_scheduler(address: str, timeout: float) -> dict:
    """The identity of the scheduler at `address` within `timeout` s, or a one-line ClusterError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")

    def left() -> float:
        return max(0.05, deadline - loop.time())

    try:        # 1. something accepts TCP connections: a refusal (nothing listens there) is known at once
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), left())
        writer.close()
    except socket.gaierror as exc:
        raise ClusterError(f"cannot resolve the host of {address} ({exc.strerror}); check --scheduler") from None
    except (asyncio.TimeoutError, OSError) as exc:   # OSError: refused, no route to host, ...
        why = (f"connection refused: nothing listens on port {port} there" if isinstance(exc, ConnectionRefusedError)
               else os.strerror(exc.errno) if getattr(exc, "errno", None)
               else str(exc) or f"no answer within {timeout:g} s: a firewall, or the host is down")
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({why}); start it with `dask scheduler`, "
                           f"and workers with `dask worker {address}`, check the address, or leave out --scheduler "
                           "(and $DASK_SCHEDULER_ADDRESS) for a local cluster") from None
    from distributed.comm import connect   # 2. the Dask handshake and 'identity', within what is left

    comm = None
    try:
        comm = await asyncio.wait_for(connect(address, timeout=left()), left())
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), left())
        reply = await asyncio.wait_for(comm.read(), left())
    except asyncio.TimeoutError:
        raise ClusterError(f"{address} accepts connections but did not answer as a Dask scheduler within "
                           f"{timeout:g} s (another service there? a scheduler listens on 8786 by default, its "
                           "dashboard on 8787); give the address `dask scheduler` prints") from None
    except Exception as exc:  # CommClosedError, MemoryError (b'HTTP/1.1' read as a frame length), msgpack errors
        raise ClusterError(f"{address} answered, but not as a Dask scheduler ({exc.__class__.__name__}); another "
                           "service there? give the address `dask scheduler` prints (port 8786 by default)") from None
    finally:
        if comm is not None:
            comm.abort()
    kind = reply.get("type") if isinstance(reply, dict) else None
    if kind != "Scheduler":
        raise ClusterError(f"{address} is a Dask {kind or 'peer'}, not a scheduler; give the scheduler's address "
                           "(`dask scheduler` prints it: 'Scheduler at: tcp://...')")
    return reply


# ----------------------------------------------------------------------------- clients and clusters


def discard(client) -> None:
    """Close a client without waiting long on a scheduler that may never answer; its __del__ is a no-op after."""
    with contextlib.suppress(BaseException):
        client.close(timeout=2)
    client.status = "closed"            # Client.__del__ -> close() returns at once when 'closed'
    with contextlib.suppress(Exception):
        client._loop_runner.stop()      # private: the client's IO thread


def open_client(address, timeout: float):
    """distributed.Client(address) (a scheduler address or a LocalCluster); a start that fails or is
    interrupted closes the half-built client here, instead of its __del__ timing out at exit."""
    import distributed

    half = []

    class _Client(distributed.Client):
        def start(self, **kwargs):
            half.append(self)           # reachable even when __init__ raises
            return super().start(**kwargs)

    try:
        return _Client(address, timeout=timeout, set_as_default=False)
    except BaseException:
        for c in half:
            discard(c)
        raise


@contextlib.contextmanager
def closing_if_interrupted():
    """Around a LocalCluster(...) call: a cluster whose start fails or is interrupted (SIGTERM during
    start-up) is closed here and taken off distributed's atexit list (which would assert on it)."""
    from distributed.deploy.spec import SpecCluster

    before = set(SpecCluster._instances)
    try:
        yield
    except BaseException:
        for cluster in set(SpecCluster._instances) - before:
            with contextlib.suppress(BaseException):
                cluster.close(timeout=3)
            SpecCluster._instances.discard(cluster)
        raise


# ----------------------------------------------------------------------------- connecting


def quiet(verbose: bool) -> None:
    """distributed's log records and warnings off the terminal, unless `verbose`."""
    if verbose:
        return
    # distributed's config sets levels on some children ('distributed.client': warning, ...), which override
    # the parent's: set every existing one (later ones inherit); 'asyncio': a Nanny interrupted as it starts
    roots = ("distributed", "tornado", "asyncio")
    for name in [*roots, *logging.root.manager.loggerDict]:
        if name in roots or name.startswith(tuple(r + "." for r in roots)):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"distributed(\..*)?$")


def connect(kind: str, options):
    """(client, the cluster when embedded, the addresses of the workers checked)."""
    quiet(options.verbose)
    t, address = options.timeout, options.scheduler
    if address:
        asyncio.run(check_scheduler(address, t))        # bounded, handshake included
        try:
            client = open_client(address, t)
        except (OSError, *TIMEOUTS, ValueError) as exc:
            raise ClusterError(f"cannot connect to the Dask scheduler at {address} within {t:g} s "
                               f"({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]})") from None
        try:
            check_environment(client, t, workers=())    # the scheduler first: it reads every task
            try:
                client.wait_for_workers(1, timeout=t)
            except (*TIMEOUTS, OSError):
                raise ClusterError(f"the Dask scheduler at {address} has no workers after {t:g} s; start some "
                                   f"with `dask worker {address}`") from None
            workers = set(identity(client, t)["workers"])
            check_environment(client, t, scheduler=False, workers=workers, gpu=kind == "cuda")
        except (*TIMEOUTS, OSError) as exc:
            discard(client)
            raise ClusterError(f"the Dask cluster at {address} did not answer within {t:g} s "
                               f"({exc.__class__.__name__})") from None
        except BaseException:
            discard(client)
            raise
        return client, None, workers
    environ = dict(os.environ)
    # worker processes start with Ctrl-C ignored (that survives exec): the first Ctrl-C is the trainer's to
    # handle (stop after the step, save, close the cluster), not a signal that kills the workers. So a Ctrl-C
    # during the start-up is lost (holding it by blocking fails: the kernel hands it to another thread, such
    # as BLAS's, which ignores it); SIGTERM stops the start-up
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    common = dict(dashboard_address=":0", silence_logs=20 if options.verbose else 60,   # 60: above CRITICAL
                  scheduler_kwargs={"dashboard": False},
                  **({"memory_limit": options.worker_memory} if options.worker_memory else {}))
    try:
        with closing_if_interrupted():
            try:
                if kind == "cuda":
                    from dask_cuda import LocalCUDACluster

                    cluster = LocalCUDACluster(
                        n_workers=1 if options.gpu is not None else options.workers,
                        **({"CUDA_VISIBLE_DEVICES": str(options.gpu)} if options.gpu is not None else {}), **common)
                else:
                    import distributed

                    cluster = distributed.LocalCluster(n_workers=options.workers, threads_per_worker=1,
                                                       processes=True, **common)
                client = open_client(cluster, options.timeout)
            except Exception as exc:            # distributed's start-up errors: Nanny failed to start, timeouts
                raise ClusterError(f"the local Dask cluster did not start ({exc.__class__.__name__}: "
                                   f"{' '.join(str(exc).split())[:200]}); see --verbose, or raise --scheduler-timeout "
                                   f"({options.timeout:g} s)") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        restore_environ(environ)
    cluster._mlp_environ = environ   # restored again at close(): a restarted worker writes it again
    return client, cluster, set()


def restore_environ(saved: dict) -> None:
    """Put os.environ back as it was: distributed's Nanny writes its workers' settings
    (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_, ...) into the environment of the process
    that hosts it, where they would change every process this one starts later."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)
