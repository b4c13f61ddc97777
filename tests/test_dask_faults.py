"""`--backend dask` when the cluster misbehaves: every fault ends in one line within a bounded time,
with the progress saved. Addresses that are no scheduler, a worker and a scheduler without mlp,
a worker then the scheduler lost mid-run (saved, and resuming gives the uninterrupted run), the
bounded wait itself, SIGTERM during start-up, and what the GPU path does without a GPU.

Processes a test starts are stopped in `finally` blocks (tests/dask_procs.py), also when it fails."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import warnings

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the [dask] extra is part of [test]: pip install -e '.[test]'")

from distributed import LocalCluster  # noqa: E402

from mlp import checkpoint  # noqa: E402
from mlp import train as train_cmd  # noqa: E402
from mlp.backends.dask_engine import chunk_loss_and_grads  # noqa: E402
from mlp.backends.dask_guard import wait_result  # noqa: E402
from mlp.errors import ClusterLost, StepStopped  # noqa: E402

from .conftest import REPO, call_cli  # noqa: E402
from .dask_procs import environ_kept, no_mlp_env, procs, wait_workers  # noqa: E402
from . import test_dask as shared  # noqa: E402
from .test_dask import assert_same, joined, numpy_reference, rows, train  # noqa: E402

cluster, small_store = shared.cluster, shared.small_store   # test_dask's fixtures (module scope), used here too


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- connecting


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):   # the server's log would land in the captured stderr
        pass


def test_addresses_that_are_no_scheduler_are_one_line_within_the_timeout(cluster, data_dir):
    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    silent = socket.socket()                      # the kernel accepts connections; nothing ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    worker = sorted(cluster.scheduler_info["workers"])[0]
    cases = [(f"tcp://127.0.0.1:{http_server.server_address[1]}", "as a Dask scheduler"),
             (f"127.0.0.1:{silent.getsockname()[1]}", "did not answer as a Dask scheduler within 1 s"),
             (worker, "is a Dask Worker, not a scheduler"),
             ("ws://127.0.0.1:8786", "the ws:// protocol is not supported"),
             ("ucx://127.0.0.1:8786", "the ucx:// protocol is not supported"),
             ("tcp://127.0.0.1:99999", "is not an address")]
    try:
        for address, message in cases:
            started = time.monotonic()
            code, out, err = call_cli(train_cmd.main, "--backend", "dask", "--scheduler", address,
                                      "--scheduler-timeout", 1, "--data-dir", data_dir, "--epochs", 1)
            assert code == 2 and message in err and one_line(err) and out == "", (address, err)
            assert time.monotonic() - started < 1 + 5, address
    finally:
        http_server.shutdown()
        http_server.server_close()
        silent.close()


def test_a_worker_or_a_scheduler_without_mlp_is_one_line_naming_it(cluster, data_dir, small_store, tmp_path):
    env = no_mlp_env(tmp_path / "no-mlp")
    run = ["--backend", "dask", "--data-dir", data_dir, "--store", small_store, "--batch-size", "full", "--epochs", 1,
           "--scheduler-timeout", 20]
    with procs(tmp_path) as started:
        lonely, _ = started.scheduler(env=env)       # no worker needed: the scheduler is checked first
        bad = started.worker(cluster.scheduler_address, env=env)
        try:
            wait_workers(cluster.scheduler_address, 3)
            code, _, err = call_cli(train_cmd.main, *run, "--scheduler", cluster.scheduler_address)
            assert code == 2 and one_line(err), err
            assert "worker tcp://127.0.0.1:" in err and "cannot import mlp.model (ModuleNotFoundError" in err
            assert "pip install 'mlp-by-hand[dask]==" in err
            code, _, err = call_cli(train_cmd.main, *run, "--scheduler", lonely)
            assert code == 2 and one_line(err) and "the scheduler cannot import mlp.model" in err, err
        finally:
            started.stop(bad)
            wait_workers(cluster.scheduler_address, 2)   # the shared cluster as it was


# ----------------------------------------------------------------------------- mid-run


@contextlib.contextmanager
def once_saved(path, action):
    """Calls action() in a thread once the run under way has (re)written `path`: mid-run."""
    before = path.stat().st_mtime_ns if path.exists() else None
    done = threading.Event()

    def watch():
        while not done.wait(0.02):
            if path.exists() and path.stat().st_mtime_ns != before:
                time.sleep(0.2)
                if not done.is_set():
                    action()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=10)


def test_an_external_cluster_that_loses_its_worker_then_its_scheduler_loses_nothing(cluster, data_dir, small_store,
                                                                                   tmp_path):
    ckpt, metrics = tmp_path / "run.npz", tmp_path / "m.json"
    run = ["--backend", "dask", "--data-dir", data_dir, "--store", small_store, "--batch-size", "full", "--hidden", 4,
           "--dtype", "float64", "--quiet", "--save", ckpt, "--checkpoint-every", 1]
    signalled = {}
    with procs(tmp_path) as started:
        address, scheduler = started.scheduler()
        worker = started.worker(address)
        wait_workers(address, 1)

        def lose_the_worker_then_sigterm():   # a step now waits for a worker (for up to 30 s): SIGTERM ends it
            os.kill(worker.pid, signal.SIGKILL)
            time.sleep(1)
            signalled["at"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)

        with once_saved(ckpt, lose_the_worker_then_sigterm):
            code, _, err = call_cli(train_cmd.main, *run, "--scheduler", address, "--scheduler-timeout", 30,
                                    "--epochs", 1000)
        assert code == 143 and time.monotonic() - signalled["at"] < 15, err   # a poll, a save, a bounded close
        assert "interrupted by SIGTERM" in err and f"checkpoint saved to {ckpt}" in err and "Traceback" not in err
        started.worker(address)
        wait_workers(address, 1)
        with once_saved(ckpt, lambda: started.stop(scheduler, signal.SIGKILL)):
            code, _, err = call_cli(train_cmd.main, *run, "--scheduler", address, "--scheduler-timeout", 5,
                                    "--epochs", 1000, "--resume", ckpt)
    assert code == 5 and one_line(err), err
    assert "mlp.train: cluster lost at epoch" in err    # the client sees the loss first, or the fetch of a result,
    assert any(why in err for why in ("the connection to the scheduler was lost",     # or a bounded probe that
                                      "a connection to the cluster closed",           # the dead scheduler never
                                      "the scheduler did not answer within 5 s"))     # answers (CI saw all three)
    assert f"saved to {ckpt}" in err and "continue with: python -m mlp.train" in err and "--resume" in err
    epochs = checkpoint.load(ckpt).epoch + 1
    code, _, err = call_cli(train_cmd.main, *run, "--scheduler", cluster.scheduler_address, "--epochs", epochs,
                            "--resume", ckpt, "--metrics-json", metrics)
    assert code == 0, err
    losses = np.asarray(json.loads(metrics.read_text())["losses"])
    reference, _ = numpy_reference(small_store, steps=epochs, hidden=4)
    assert losses.shape == reference.shape and np.max(np.abs(losses - reference)) <= 1e-10


class _Done:
    """A finished future whose result raises `exc` (what distributed's futures do on a cluster fault)."""

    def __init__(self, exc):
        self.exc = exc

    def add_done_callback(self, fn):
        fn(self)

    def done(self):
        return True

    def result(self, timeout=None):
        raise self.exc


def test_the_step_wait_is_bounded_and_maps_cluster_faults():
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    worker = type("W", (), {"address": "tcp://10.0.0.2:4000"})()
    for exc, message in [(KilledWorker("t", worker, 3), "died 4 times (the last was tcp://10.0.0.2:4000)"),
                         (FutureCancelledError("k", "scheduler-connection-lost"), "connection to the scheduler"),
                         (RuntimeError("Error during deserialization of the task graph"), "cannot read this run's")]:
        with pytest.raises(ClusterLost, match=message.replace("(", r"\(").replace(")", r"\)")):
            wait_result(None, _Done(exc), timeout=1)
    with pytest.raises(ValueError):          # the model's own errors are not the cluster's
        wait_result(None, _Done(ValueError("bad")), timeout=1)
    slow = _Done(TimeoutError())             # a result that takes 3 s to fetch: waited for, up to the timeout
    slow.result = lambda timeout: "fetched" if timeout >= 3 else (_ for _ in ()).throw(TimeoutError())
    healthy = types.SimpleNamespace(status="running", scheduler=types.SimpleNamespace(ncores_running=None),
                                    sync=lambda *args, **kwargs: {"tcp://10.0.0.2:4000": 1})   # one worker runs
    assert wait_result(healthy, slow, timeout=10) == "fetched"
    with pytest.raises(ClusterLost, match="could not be fetched within 2 s"):
        wait_result(healthy, slow, timeout=2)
    with environ_kept(), LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as c, \
            c.get_client() as client:
        started = time.monotonic()
        with pytest.raises(ClusterLost, match="no running worker for 1 s"):
            wait_result(client, client.submit(sum, [1, 2]), timeout=1)
        assert time.monotonic() - started < 1 + 10          # the timeout, with room for a loaded machine
        started = time.monotonic()
        with pytest.raises(StepStopped):
            wait_result(client, client.submit(sum, [1, 3]), timeout=60, stop=lambda: True)
        assert time.monotonic() - started < 10              # at the first poll, not at the 60 s timeout


def test_sigterm_while_a_local_cluster_starts_is_one_line_and_leaves_nothing(data_dir):
    cmd = [sys.executable, "-m", "mlp.train", "--backend", "dask", "--workers", "1", "--data-dir", str(data_dir),
           "--epochs", "1", "--batch-size", "full"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=REPO)
    try:
        handles_sigterm(proc.pid, timeout=60)    # past the imports: mlp's handler is in place
        time.sleep(0.5)                          # starting the workers
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 143 and one_line(err) and "Error" not in err, err


def handles_sigterm(pid: int, timeout: float) -> None:
    """Wait until process `pid` has a handler of its own for SIGTERM (its SigCgt mask in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if caught >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} installed no SIGTERM handler within {timeout} s")


# ----------------------------------------------------------------------------- the engine


def test_parameters_over_a_mebibyte_train_on_dask_as_on_numpy(cluster, small_store):
    with joined(cluster, chunk_rows=1_000) as b:   # w1 (784, 400) in float64 is 2.5 MB: scattered, read on the host
        X, y = rows(b, small_store)
        got = train(b, X, y, steps=2, hidden=400)
    assert_same(got, numpy_reference(small_store, steps=2, hidden=400), 1e-10)


def test_a_diverging_chunk_warns_nothing_on_the_worker():
    X, y = np.full((4, 3), 1e200), np.array([0.0, 1.0, 0.0, 1.0])
    params = {"w1": np.full((3, 2), 1e200), "b1": np.zeros(2), "w2": np.full((2, 1), 1e200), "b2": np.zeros(1)}
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        loss, _ = chunk_loss_and_grads(X, y, params, "relu", 1.0)
    assert not np.isfinite(loss)


def test_gpu_workers_are_measured_by_gpu_memory_and_the_client_needs_no_cupy(cluster):
    with joined(cluster) as b:
        gpu = dataclasses.replace(b, device="cuda")     # CPU workers: neither NVML nor CuPy answers
        memory, of_what = gpu.cluster_memory()
        assert memory == b.cluster_memory()[0] and of_what.startswith("GPU memory unknown")
        arr = gpu.on_device(gpu.wrap(np.ones((3, 2))))
    assert type(arr._meta) is np.ndarray and "cupy" not in sys.modules
