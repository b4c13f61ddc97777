"""`--backend dask`: parity with NumPy in float64, a worker killed mid-run, joining a scheduler
started with the `dask scheduler` / `dask worker` commands, rows streamed from disk under a
memory limit smaller than the data, checkpoints across backends, and the one-line errors.

One LocalCluster of 2 worker processes (module scope) serves most tests, joined by address
as a user's `--scheduler` would; tests that need their own workers start and stop them
themselves, in `finally` blocks or context managers, so nothing outlives a failing test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="the [dask] extra is part of [test]: pip install -e '.[test]'")

from distributed import LocalCluster  # noqa: E402

from mlp import backends, model  # noqa: E402
from mlp.backends.dask_cluster import Options, worker_memory  # noqa: E402
from mlp.data import normalise  # noqa: E402
from mlp.errors import UserError  # noqa: E402
from mlp.loop import TrainState, fit, make_engine  # noqa: E402
from mlp.store import convert, open_store, write_store  # noqa: E402

from .conftest import call_cli, needs_gpu, run_cli  # noqa: E402
from .dask_procs import environ_kept, free_port, procs, wait_workers  # noqa: E402

N, H, CHUNK = 3_000, 8, 1_000
QUIET_CLUSTER = dict(threads_per_worker=1, processes=True, dashboard_address=":0",
                     scheduler_kwargs={"dashboard": False}, silence_logs=int(os.environ.get("T9LOG", 40)))


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes on 127.0.0.1, closed at the end of the module whatever happens."""
    # environ_kept: distributed's Nanny writes OMP_NUM_THREADS=1 etc. into this process's environment,
    # which would change the BLAS of every process later tests start
    with environ_kept(), LocalCluster(n_workers=2, host="127.0.0.1", **QUIET_CLUSTER) as c:
        yield c


@pytest.fixture(scope="module")
def small_store(data_dir, tmp_path_factory):
    """The first N real training rows of 3 vs 7, as a store (uint8 on disk)."""
    X, y, _ = open_store(_real_store(data_dir, tmp_path_factory))
    folder = tmp_path_factory.mktemp("small") / "store"
    write_store(folder, [(X[0:N], y[0:N])], N, X.shape[1], {"classes": [3, 7], "image_shape": [28, 28]})
    return folder


def _real_store(data_dir, factory):
    folder = factory.getbasetemp() / "real-store"
    if not folder.exists():
        convert(data_dir, folder, (3, 7))
    return folder


@contextlib.contextmanager
def joined(cluster_or_address, **options):
    """A dask Backend joined to a running scheduler; its client is closed on the way out."""
    address = getattr(cluster_or_address, "scheduler_address", cluster_or_address)
    backend = backends.resolve("cpu", "dask", Options(scheduler=address, **options))
    try:
        yield backend
    finally:
        backend.close()


def train(backend, X, y, *, steps, batch="full", dtype="float64", on_epoch_end=None, hidden=H):
    """`steps` epochs of mlp.loop.fit from seed 0: (losses, host params)."""
    cfg = {"lr": 0.1, "activation": "relu", "batch_size": batch, "epochs": steps, "seed": 0, "hidden": hidden,
           "init": "he", "dtype": dtype}
    state = TrainState.fresh(backend, cfg, X.shape[1])
    fit(backend, make_engine(backend, "auto", cfg, X, y), state, steps, on_epoch_end=on_epoch_end)
    return np.asarray(state.losses), {k: backend.to_host(v) for k, v in state.params.items()}


def numpy_reference(store, **kw):
    Xr, yr, _ = open_store(store)
    b = backends.resolve("cpu", "numpy")
    X = normalise(Xr[0:Xr.shape[0]])
    dtype = kw.get("dtype", "float64")
    return train(b, b.asarray(X, dtype), b.asarray(yr[0:yr.shape[0]], dtype), **kw)


def assert_same(a, b, tol):
    (la, pa), (lb, pb) = a, b
    assert la.shape == lb.shape
    assert np.max(np.abs(la - lb)) <= tol, np.max(np.abs(la - lb))
    for k in model.PARAM_NAMES:
        assert np.max(np.abs(pa[k] - pb[k])) <= tol, (k, np.max(np.abs(pa[k] - pb[k])))


def rows(backend, store, dtype="float64"):
    Xr, yr, _ = open_store(store)
    return backend.from_rows(Xr, yr, dtype)


# ----------------------------------------------------------------------------- parity


def test_full_batch_parity_with_numpy_float64(cluster, small_store):
    with joined(cluster, chunk_rows=CHUNK) as b:
        X, y = rows(b, small_store)
        assert X.chunks[0] == (CHUNK,) * 3 and b.info["persisted"] and str(X.dtype) == "float64"
        got = train(b, X, y, steps=4)
    assert_same(got, numpy_reference(small_store, steps=4), 1e-10)


def test_minibatch_of_whole_chunks_matches_numpy_and_smaller_is_refused(cluster, small_store):
    with joined(cluster, chunk_rows=CHUNK) as b:
        X, y = rows(b, small_store)
        got = train(b, X, y, steps=2, batch=1_500)  # 2 steps per epoch, shuffled as on NumPy
        with pytest.raises(backends.BackendError) as err:
            train(b, X, y, steps=1, batch=64)
    assert_same(got, numpy_reference(small_store, steps=2, batch=1_500), 1e-10)
    text = str(err.value)
    assert "smaller than one Dask chunk (1,000 rows)" in text and "scheduler round trip" in text
    assert "--batch-size full" in text and "\n" not in text


def test_float32_rows_are_normalised_as_numpy_does(cluster, small_store):
    with joined(cluster, chunk_rows=CHUNK) as b:
        X, _ = rows(b, small_store, "float32")
        got = b.to_host(X[:CHUNK + 10])
    Xr, _, _ = open_store(small_store)
    expected = backends.resolve("cpu", "numpy").asarray(normalise(Xr[0:CHUNK + 10]), "float32")
    assert got.dtype == np.float32 and np.array_equal(got, expected)


# ----------------------------------------------------------------------------- faults


def test_a_worker_killed_mid_run_changes_nothing(cluster, small_store):
    undisturbed = numpy_reference(small_store, steps=5)
    killed = {}
    with joined(cluster, chunk_rows=CHUNK) as b:
        X, y = rows(b, small_store)
        pids = b.client.run(os.getpid)
        assert b.info["persisted"]                # the chunks live on the workers: a kill loses some

        def kill_one(state):
            if state.epoch == 2:  # between steps 2 and 3: the next step needs the chunks it held
                address, pid = sorted(pids.items())[0]
                killed.update(address=address, pid=pid)
                os.kill(pid, signal.SIGKILL)

        got = train(b, X, y, steps=5, on_epoch_end=kill_one)
        after = b.client.run(os.getpid)
    assert killed and killed["pid"] not in after.values()          # that process is gone for good
    assert_same(got, undisturbed, 1e-12)


# ----------------------------------------------------------------------------- --scheduler


@contextlib.contextmanager
def dask_commands(tmp_path):
    """`dask scheduler` and one `dask worker` (with its nanny) as separate processes on 127.0.0.1."""
    with procs(tmp_path) as started:
        address, _ = started.scheduler()
        started.worker(address, nanny=True)
        wait_workers(address, 1)
        yield address


def test_train_and_evaluate_join_a_cluster_of_dask_commands(tmp_path, data_dir, small_store, monkeypatch):
    from mlp import evaluate, train as train_cmd

    ckpt, metrics = tmp_path / "d.npz", tmp_path / "m.json"
    with dask_commands(tmp_path) as address:
        code, _, err = call_cli(train_cmd.main, "--backend", "dask", "--scheduler", address, "--data-dir", data_dir,
                                "--store", small_store, "--batch-size", "full", "--epochs", 3, "--hidden", H,
                                "--dtype", "float64", "--quiet", "--save", ckpt, "--metrics-json", metrics)
        assert code == 0, err
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)  # the other way to name the scheduler
        code, out, err = call_cli(evaluate.main, "--checkpoint", ckpt, "--backend", "dask", "--data-dir", data_dir)
        assert code == 0, err
    losses = json.loads(metrics.read_text())["losses"]
    reference_losses, _ = numpy_reference(small_store, steps=3)
    assert np.max(np.abs(np.asarray(losses) - reference_losses)) <= 1e-10
    assert f"scheduler {address}: 1 worker processes" in out


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_resume_across_numpy_and_dask(cluster, tmp_path, data_dir):
    from mlp import train as train_cmd

    common = ["--data-dir", data_dir, "--batch-size", "full", "--hidden", 4, "--dtype", "float64", "--quiet"]
    dask = ["--backend", "dask", "--scheduler", cluster.scheduler_address]

    def run(*args):
        code, _, err = call_cli(train_cmd.main, *common, *args)
        assert code == 0, err

    run("--epochs", 4, "--metrics-json", tmp_path / "straight.json")
    run(*dask, "--epochs", 2, "--save", tmp_path / "a.npz")
    run("--resume", tmp_path / "a.npz", "--epochs", 4, "--metrics-json", tmp_path / "dask-then-numpy.json")
    run("--epochs", 2, "--save", tmp_path / "b.npz")
    run(*dask, "--resume", tmp_path / "b.npz", "--epochs", 4, "--metrics-json", tmp_path / "numpy-then-dask.json")
    straight = np.asarray(json.loads((tmp_path / "straight.json").read_text())["losses"])
    for name in ("dask-then-numpy", "numpy-then-dask"):
        losses = np.asarray(json.loads((tmp_path / f"{name}.json").read_text())["losses"])
        assert losses.shape == (4,) and np.max(np.abs(losses - straight)) <= 1e-10, name
    # and the cluster it joined is still there: a run closes its own client, not someone's workers
    assert len(cluster.scheduler_info["workers"]) == 2


# ----------------------------------------------------------------------------- out of core


def test_rows_larger_than_the_cluster_memory_stream_from_disk(tmp_path, data_dir, tmp_path_factory):
    limit = 150_000_000                            # one worker, 150 MB: less than the 155 MB of rows
    copies = 16
    Xr, yr, _ = open_store(_real_store(data_dir, tmp_path_factory))
    n = copies * Xr.shape[0]
    big = tmp_path / "big"                         # the real rows 16 times over: same mean loss and gradients
    write_store(big, ((Xr[0:Xr.shape[0]], yr[0:yr.shape[0]]) for _ in range(copies)), n, Xr.shape[1],
                {"classes": [3, 7], "image_shape": [28, 28]})
    assert n * Xr.shape[1] > limit
    with environ_kept(), LocalCluster(n_workers=1, memory_limit=limit, host="127.0.0.1", **QUIET_CLUSTER) as c, \
            joined(c, chunk_rows=2_048) as b:
        pid = b.client.run(os.getpid)
        worker_memory(b.client, reset=True)
        X, y = rows(b, big)
        assert not b.info["persisted"] and "streamed from disk" in str(b)
        got = train(b, X, y, steps=1, hidden=4)
        peak = max(m["peak"] for m in worker_memory(b.client).values())
        assert b.client.run(os.getpid) == pid      # the worker was never restarted for memory
    assert peak < limit, peak
    assert_same(got, numpy_reference(_real_store(data_dir, tmp_path_factory), steps=1, hidden=4), 1e-10)


# ----------------------------------------------------------------------------- errors


def test_an_unreachable_scheduler_is_one_line_and_exit_2_within_the_timeout(data_dir):
    from mlp import train as train_cmd

    address = f"tcp://127.0.0.1:{free_port()}"    # nothing listens there
    started = time.monotonic()
    code, out, err = call_cli(train_cmd.main, "--backend", "dask", "--scheduler", address, "--scheduler-timeout", 1,
                              "--data-dir", data_dir, "--epochs", 1)
    assert time.monotonic() - started < 10
    assert code == 2 and out == ""
    assert err.startswith(f"mlp.train: error: cannot reach the Dask scheduler at {address} (connection refused")
    assert "dask scheduler" in err and err.count("\n") == 1


def test_an_embedded_cluster_closes_and_leaves_the_environment_alone():
    before, filters = dict(os.environ), list(warnings.filters)
    b = backends.resolve("cpu", "dask", Options(workers=1))
    try:
        assert dict(os.environ) == before and b.client.run(lambda: os.environ.get("OMP_NUM_THREADS")) == \
            {a: "1" for a in b.client.scheduler_info()["workers"]}   # the workers do get one BLAS thread each
        cluster = b.cluster
    finally:
        backends.release()
    assert cluster.status.name == "closed" and dict(os.environ) == before and warnings.filters == filters


def test_ctrl_c_saves_closes_the_embedded_cluster_and_leaves_no_process(data_dir, small_store, tmp_path):
    ckpt = tmp_path / "i.npz"
    cmd = [sys.executable, "-m", "mlp.train", "--backend", "dask", "--workers", "1", "--data-dir", str(data_dir),
           "--store", str(small_store), "--batch-size", "full", "--epochs", "100000", "--hidden", "4",
           "--save", str(ckpt)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stderr.readline().startswith("training: dask on cpu (LocalCluster: 1 worker processes")
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)      # Ctrl-C at a terminal reaches the whole process group
        _, stderr = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 130, stderr
    assert "interrupted at epoch" in stderr and "checkpoint saved" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 10             # the worker processes went with the cluster (and
    while time.monotonic() < deadline:           # multiprocessing's resource tracker follows its parent)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"processes of the run are still alive 10 s after it exited: {_group(proc.pid)}")


def _group(pgid: int) -> str:
    out = subprocess.run(["ps", "-o", "pid,stat,cmd", "-g", str(pgid)], capture_output=True, text=True).stdout
    return " | ".join(out.splitlines()[1:])


def test_flag_errors_are_one_line(data_dir, small_store, tmp_path):
    from mlp import train as train_cmd

    cases = [
        (["--workers", 2], "--workers applies to --backend dask only"),
        (["--backend", "dask", "--worker-memory", "lots"], "--worker-memory 'lots' is not a size"),
        (["--backend", "dask", "--workers", 2, "--scheduler", "tcp://127.0.0.1:1"], "--workers sizes a local cluster"),
        (["--verbose"], "--verbose applies to --backend dask only"),
        (["--backend", "dask", "--worker-memory", "1MB"], "--worker-memory 1MB is less than a worker needs; give at "
                                                          "least 150MB"),
        (["--backend", "dask", "--worker-memory=-1GB"], "--worker-memory -1GB is not positive"),
        (["--backend", "dask", "--worker-memory", "100TB"], "is more than this machine's"),
        (["--backend", "dask", "--workers", 1000], "--workers 1000 is more than this machine runs"),
        (["--backend", "dask", "--scheduler-timeout", "1e300"], "from 1 to 3600"),
        (["--backend", "dask", "--scheduler", "inproc://x"], "the inproc:// protocol is not supported"),
        (["--backend", "dask", "--device", "cuda:1", "--scheduler", "tcp://127.0.0.1:1"], "picks a GPU of a local"),
    ]
    for args, message in cases:
        code, _, err = call_cli(train_cmd.main, "--data-dir", data_dir, *args)
        assert code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(UserError, match="holds the classes 3 7, the run asks for 1 2"):
        open_store(small_store, (1, 2))
    with pytest.raises(UserError, match="not a converted data store"):
        open_store(tmp_path)
    code, _, err = call_cli(train_cmd.main, "--data-dir", data_dir, "--backend", "dask", "--store", tmp_path,
                            "--scheduler", "tcp://127.0.0.1:1", "--scheduler-timeout", 1)
    assert code == 2 and "error:" in err


def test_convert_command_writes_a_store_all_or_nothing(data_dir, tmp_path):
    from mlp.convert import main as convert_main

    out = tmp_path / "synth"
    code, stdout, err = call_cli(convert_main, "--data-dir", data_dir, "--out", out, "--rows", 20_000,
                                 "--max-shift", 2)
    assert code == 0, err
    X, y, meta = open_store(out)
    assert X.shape == (20_000, 784) and X.dtype == np.uint8 and set(np.unique(y[0:20_000])) == {0, 1}
    assert meta["classes"] == [3, 7] and "shifts up to 2 px" in meta["made_by"] and "wrote" in stdout
    code, _, err = call_cli(convert_main, "--data-dir", data_dir, "--out", out)
    assert code == 2 and "already exists" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]   # no temporary folder left behind


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_gpu
def test_local_cuda_cluster_parity_float64(small_store):
    pytest.importorskip("dask_cuda", reason="needs the [dask-cuda] extra")
    b = backends.resolve("cuda", "dask", Options(chunk_rows=CHUNK))
    try:
        X, y = rows(b, small_store)
        got = train(b, X, y, steps=3)
    finally:
        b.close()
    assert_same(got, numpy_reference(small_store, steps=3), 1e-10)


# ----------------------------------------------------------------------------- the bench's Dask rows


def test_the_bench_measures_ours_on_dask_with_numpys_first_loss(data_dir):
    """A bench worker (its own process, as `python -m bench --backends dask` runs it) measures a
    full-batch epoch on one Dask worker, and its first step's loss is NumPy's."""
    from mlp.bench.worker import RESULT_MARK

    spec = {"mode": "measure", "impl": "ours", "engine": "eager", "batch": None, "device": "cpu",
            "dtype": "float64", "n": 2000, "hidden": 16, "epochs": 2, "min_epochs": 2, "budget_s": 0,
            "warmup": 1, "lr": 0.1, "seed": 0, "data_dir": str(data_dir)}
    records = {}
    for backend in ("numpy", "dask:1"):
        done = run_cli("mlp.bench.worker", json.dumps({**spec, "backend": backend}), timeout=120)
        line = next(x for x in done.stdout.splitlines() if x.startswith(RESULT_MARK))
        records[backend] = json.loads(line[len(RESULT_MARK):])
        assert records[backend]["status"] == "ok", records[backend]
    assert records["dask:1"]["workers"] == 1 and records["dask:1"]["worker_peak_mem_bytes_per_row"] > 0
    assert abs(records["dask:1"]["initial_loss"] - records["numpy"]["initial_loss"]) <= 1e-12
