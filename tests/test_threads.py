"""The thread policy (backends/threads.py): the cores a process may use from affinity and cgroup
files given as fixtures, the counts chosen for work sizes, `--threads`, that the count is applied
to each library and recorded in the metrics and the checkpoint, and that the same flags give the
same losses. Nothing here times anything."""

from __future__ import annotations

import importlib.util
import json
import threading

import pytest

from mlp import backends, checkpoint, train
from mlp.backends import threads
from mlp.errors import CheckpointError, UserError

from .conftest import call_cli, make_dataset, run_cli

D, H = 784, 128


# ----------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("batch, cores, expected", [
    (64, 2, 1),             # the default job: a step is ~25 MFLOP, too small to share
    (4096, 2, 1),
    (12_396, 2, 2),         # full batch of MNIST 3 vs 7: just over one WORK_PER_THREAD
    (12_396, 1, 1),         # never more than the cores
    (200_000, 2, 2),
    (200_000, 64, 19),      # one thread per WORK_PER_THREAD (2**30) of a step: 2.0e10 / 2**30 = 18.7 -> 19
])
def test_policy_from_work_and_cores(batch, cores, expected):
    assert threads.policy(batch, D, H, cores) == expected


def test_a_requested_count_is_taken_as_given():
    assert threads.policy(64, D, H, 2, requested=3) == 3
    assert threads.policy(10**6, D, H, 8, requested=1) == 1


def _cgroups(root, proc_line: str, files: dict):
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(proc_line + "\n")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("proc_line, files, affinity, expected", [
    ("0::/", {}, range(4), 4),                                                        # no quota anywhere
    ("0::/", {"sys/fs/cgroup/cpu.max": "max 100000\n"}, range(4), 4),
    ("0::/app", {"sys/fs/cgroup/app/cpu.max": "150000 100000\n"}, range(4), 1),      # 1.5 CPUs: rounded down
    ("0::/a/b", {"sys/fs/cgroup/a/b/cpu.max": "max 100000\n",                        # the parent's is tighter
                 "sys/fs/cgroup/a/cpu.max": "200000 100000\n"}, range(8), 2),
    ("0::/a", {"sys/fs/cgroup/a/cpu.max": "800000 100000\n"}, range(3), 3),          # affinity is tighter
    ("4:cpu,cpuacct:/docker/abc",                                                     # v1; a container sees its
     {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000\n",                       # own cgroup as the root
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, range(8), 3),
    ("3:cpu:/x", {"sys/fs/cgroup/cpu/x/cpu.cfs_quota_us": "-1\n",                     # v1 without a quota
                  "sys/fs/cgroup/cpu/x/cpu.cfs_period_us": "100000\n"}, range(2), 2),
    ("5:memory:/x", {"sys/fs/cgroup/cpu/x/cpu.cfs_quota_us": "100000\n",            # not the cpu controller: its
                     "sys/fs/cgroup/cpu/x/cpu.cfs_period_us": "100000\n"}, range(2), 2),  # path names no quota
    ("0::/", {"sys/fs/cgroup/cpu.max": "garbage\n"}, range(2), 2),                   # unreadable: ignored
    ("0::/", {"sys/fs/cgroup/cpu.max": "50000 100000\n"}, range(2), 1),               # half a CPU: still 1
])
def test_usable_cores_from_affinity_and_cgroups(tmp_path, proc_line, files, affinity, expected):
    root = _cgroups(tmp_path, proc_line, files)
    assert threads.usable_cores(affinity=set(affinity), root=root) == expected


def test_usable_cores_without_cgroup_files(tmp_path):
    assert threads.cgroup_cpu_limit(tmp_path) is None
    assert threads.usable_cores(affinity={0, 5}, root=tmp_path) == 2


def test_usable_cores_on_this_machine():
    import os

    assert 1 <= threads.usable_cores() <= (os.cpu_count() or 1)


# ----------------------------------------------------------------------------- applied to each library


@pytest.fixture
def restore_pools():
    """Put the process's thread pools back as they were (tests share worker processes)."""
    from threadpoolctl import threadpool_limits

    torch = __import__("torch") if importlib.util.find_spec("torch") else None   # its OpenMP pool loaded first
    before = torch.get_num_threads() if torch else None
    limiter = threadpool_limits(limits=None)   # records the current limits, changes nothing
    yield
    limiter.restore_original_limits()
    if torch:
        torch.set_num_threads(before)
    threads._jax.clear()


def _blas_threads():
    from threadpoolctl import threadpool_info

    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.mark.usefixtures("restore_pools")
def test_numpy_blas_is_limited():
    b = backends.resolve("cpu", "numpy")
    assert backends.choose_threads(b, 64, D, H) == 1
    assert _blas_threads() == {1} and threads.current(b) == 1
    if threads.usable_cores() >= 2:
        assert backends.choose_threads(b, 64, D, H, requested=2) == 2
        assert _blas_threads() == {2}


@pytest.mark.usefixtures("restore_pools")
def test_torch_threads_are_set():
    torch = pytest.importorskip("torch")
    b = backends.resolve("cpu", "torch")
    assert backends.choose_threads(b, 64, D, H) == 1 and torch.get_num_threads() == 1
    assert backends.choose_threads(b, 64, D, H, requested=2) == 2 and torch.get_num_threads() == 2


@pytest.mark.usefixtures("restore_pools")
def test_a_run_that_waited_for_the_pools_puts_back_what_was_there_before_both(monkeypatch):
    """A run in another thread waits while one holds the pools; on leaving it puts back what was there
    before the first (here: no count for JAX), not what it saw while waiting (the first run's count)."""
    pytest.importorskip("jax")
    b = backends.resolve("cpu", "jax")

    class Watched:          # the pools' lock, saying when the other thread asks for it
        lock, asked = threading.RLock(), threading.Event()

        def __enter__(self):
            if threading.current_thread() is not threading.main_thread():
                self.asked.set()
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    def run_with_two():
        with threads.limits(b, 64, D, H, requested=2):
            pass

    monkeypatch.setattr(threads, "_sizing", Watched())
    with threads.limits(b, 64, D, H, requested=1):
        waiting = threading.Thread(target=run_with_two)
        waiting.start()
        assert threads._sizing.asked.wait(timeout=60) and threads._jax == {"threads": 1}
    waiting.join(timeout=60)
    assert not waiting.is_alive() and threads._jax == {}


@pytest.mark.usefixtures("restore_pools")
def test_jax_compiled_engine_compiles_with_the_thread_count():
    pytest.importorskip("jax")
    import numpy as np

    from mlp import loop

    b = backends.resolve("cpu", "jax")
    assert backends.choose_threads(b, 64, D, H) == 1
    assert threads.xla_options("cpu") == {"xla_cpu_multi_thread_eigen": False}
    assert threads.xla_options("gpu") is None
    rng = np.random.default_rng(0)
    X, y = b.asarray(rng.standard_normal((100, 8)), "float32"), b.asarray(rng.random((100, 1)) > 0.5, "float32")
    cfg = {"batch_size": 32, "lr": 0.1, "activation": "relu", "seed": 0, "hidden": 4, "init": "he", "dtype": "float32"}
    engine = loop.make_engine(b, "auto", cfg, X, y)
    state = loop.fit(b, engine, loop.TrainState.fresh(b, cfg, 8), 1)
    assert engine.name == "compiled" and len(state.losses) == 4


def test_gpu_and_dask_pools_are_not_ours():
    gpu = backends.Backend(name="cupy", device="cuda:0", xp=None, version="0")
    dask = backends.Backend(name="dask", device="cpu", xp=None, version="0")
    for b in (gpu, dask):
        assert backends.choose_threads(b, 64, D, H) is None
        with pytest.raises(UserError, match="--threads"):
            backends.choose_threads(b, 64, D, H, requested=2)


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-mnist")
    make_dataset(folder, n_train=200, n_test=40, labels=[3, 7])
    return folder


def test_threads_flag_errors_are_one_line():
    for bad, says in (("0", "must be 'auto' or a whole number from 1 to 65,536, got 0"),
                      ("two", "must be 'auto' or a whole number from 1 to 65,536, got two")):
        result = run_cli("mlp.train", "--threads", bad)
        assert result.returncode == 2
        assert result.stderr.strip() == f"mlp.train: error: argument --threads: {says} (see --help)"


@pytest.mark.usefixtures("restore_pools")
def test_threads_in_start_line_metrics_and_checkpoint(tiny, tmp_path):
    before = _blas_threads()
    code, _, err = call_cli(train.main, "--data-dir", tiny, "--no-download", "--epochs", "1", "--hidden", "8",
                            "--threads", "1", "--metrics-json", tmp_path / "m.json", "--save", tmp_path / "c.npz")
    assert code == 0, err
    assert ", 1 thread" in err.splitlines()[0]
    assert json.loads((tmp_path / "m.json").read_text())["threads"] == 1
    assert checkpoint.load(tmp_path / "c.npz").meta["threads"] == 1
    assert _blas_threads() == before                                # put back as they were after the run
    code, _, err = call_cli(train.main, "--data-dir", tiny, "--no-download", "--epochs", "1", "--hidden", "8",
                            "--quiet", "--metrics-json", tmp_path / "auto.json")
    assert code == 0, err
    assert json.loads((tmp_path / "auto.json").read_text())["threads"] == 1   # auto: a small step, 1 thread


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_checkpoint_threads_field_is_validated(bad):
    meta = {"format": checkpoint.FORMAT, "config": {}, "epoch": 0, "step": 0, "step_in_epoch": 0,
            "rng_state": {}, "threads": bad}
    with pytest.raises(CheckpointError, match="'threads'"):
        checkpoint.parse_meta(json.dumps(meta), "c.npz")
    meta["threads"] = None                                           # a GPU or Dask run
    checkpoint.parse_meta(json.dumps(meta), "c.npz")


@pytest.mark.parametrize("flag", ["auto", "2"])
def test_same_flags_same_losses_on_numpy(tiny, tmp_path, flag):
    """Two fresh processes with the same flags give bit-identical losses (the count never follows the load)."""
    runs = []
    for i in range(2):
        result = run_cli("mlp.train", "--data-dir", tiny, "--no-download", "--epochs", "2", "--hidden", "64",
                         "--batch-size", "16", "--threads", flag, "--quiet", "--metrics-json", tmp_path / f"{i}.json")
        assert result.returncode == 0, result.stderr
        runs.append(json.loads((tmp_path / f"{i}.json").read_text()))
    assert runs[0]["losses"] == runs[1]["losses"]
    assert runs[0]["threads"] == runs[1]["threads"] == (1 if flag == "auto" else 2)
