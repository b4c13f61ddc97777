"""Shared fixtures: the real data, the backends to test, and running the CLIs."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

from mlp import backends
from mlp import data

# MLP_REQUIRE_GPU=1 (bench/gpu_check.sh sets it): a GPU test that would skip fails (tests/require_gpu.py)
from .idx_files import write_idx
from .require_gpu import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

# every xdist worker (and every process a test starts) shares one GPU: no JAX preallocation of 75%
# of it (mlp.backends sets the same before JAX's first use; this covers tests that use JAX directly)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def real_data_dir() -> Path | None:
    """The real MNIST 3/7 files: $MLP_TEST_DATA_DIR, else ../shared/datasets/mnist-3-7."""
    given = os.environ.get("MLP_TEST_DATA_DIR")
    path = Path(given) if given else REPO.parent / "shared" / "datasets" / "mnist-3-7"
    return path if (path / "train-images-idx3-ubyte.gz").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = real_data_dir()
    if path is None:
        message = ("real MNIST 3/7 data not found: set MLP_TEST_DATA_DIR to the folder with the four IDX files "
                   "(../shared/datasets/mnist-3-7)")
        if IN_CI:
            pytest.fail(message + " -- CI must not skip the end-to-end tests")
        pytest.skip(message)
    return path


def _cuda_refusal(library: str) -> str | None:
    """None when `library`'s backend resolves on CUDA, else the reason it does not."""
    try:
        backends.resolve("cuda", library)
    except backends.BackendError as exc:
        return str(exc)
    return None


def _gpu_available() -> str | None:
    """None when CuPy sees a CUDA GPU, else the reason it does not."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed"
    return _cuda_refusal("cupy")


def _torch_gpu_available() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    import torch

    return None if torch.cuda.is_available() else f"this PyTorch ({torch.__version__}) sees no CUDA GPU"


def _jax_gpu_available() -> str | None:
    if importlib.util.find_spec("jax") is None:
        return "JAX is not installed"
    if not any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)):  # without importing JAX
        return "this JAX has no CUDA plugin (pip install 'jax[cuda12]' or 'jax[cuda13]')"
    return _cuda_refusal("jax")


GPU_MISSING = _gpu_available()
TORCH_GPU_MISSING = _torch_gpu_available()
JAX_GPU_MISSING = _jax_gpu_available()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=f"needs a CUDA GPU: {GPU_MISSING}")
needs_torch_gpu = pytest.mark.skipif(TORCH_GPU_MISSING is not None, reason=f"needs a CUDA GPU: {TORCH_GPU_MISSING}")
needs_jax_gpu = pytest.mark.skipif(JAX_GPU_MISSING is not None, reason=f"needs a CUDA GPU: {JAX_GPU_MISSING}")


def backend_params():
    """(backend, device) pairs for the parity, gradient and stability tests. A library that is
    missing, or a GPU that is missing, is a visible skip with its reason (pytest -ra)."""
    params = []
    for name in ("numpy", "array_api_strict", "torch", "jax"):
        marks = []
        if importlib.util.find_spec(name) is None:
            marks.append(pytest.mark.skip(reason=f"{name} is not installed"))
        params.append(pytest.param((name, "cpu"), id=f"{name}-cpu", marks=marks))
    params.append(pytest.param(("cupy", "cuda"), id="cupy-cuda", marks=[pytest.mark.gpu, needs_gpu]))
    params.append(pytest.param(("torch", "cuda"), id="torch-cuda", marks=[pytest.mark.gpu, needs_torch_gpu]))
    params.append(pytest.param(("jax", "cuda"), id="jax-cuda", marks=[pytest.mark.gpu, needs_jax_gpu]))
    return params


def run_cli(module: str, *args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `python -m module args...` in a subprocess, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLP_DATA_DIR"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def call_cli(main, *args) -> tuple[int, str, str]:
    """Call a CLI's main in-process through mlp.cli.run: (exit code, stdout, stderr)."""
    from mlp.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(main, [str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def synthetic(n=256, d=30, seed=0):
    """A small, learnable problem: labels from a random teacher network."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    teacher = rng.standard_normal(d)
    y = (X @ teacher + 0.3 * rng.standard_normal(n) > 0).astype(np.float64)
    return X, y


def files_in(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*"))


def tiny_run(root: Path, *flags, epochs: int = 1) -> Path:
    """`root`: 40 training rows of 3s and 7s (noise) in root/data, and root/c.npz, a checkpoint of
    `epochs` epochs on them (H = 8, B = 8; `flags` added to the run)."""
    from mlp import train

    make_dataset(root / "data", labels=[3, 7])
    code, _, err = call_cli(train.main, "--data-dir", root / "data", "--epochs", str(epochs), "--batch-size", "8",
                            "--hidden", "8", "--quiet", "--save", root / "c.npz", *flags)
    assert code == 0, err
    return root


def make_dataset(folder, n_train=40, n_test=20, labels=range(10), image_dtype=np.uint8, seed=0):
    """Four small IDX files with the official names; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(image_dtype)
        lab = np.resize(np.array(list(labels), np.uint8), n)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", lab)
        out[split] = (images, lab)
    return out


# ----------------------------------------------------------------------------- a download mirror


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that hangs up early (the download cap does, on purpose) is not an error worth a
    traceback on stderr, where it would land in whichever test is capturing stderr by then."""

    def handle_error(self, request, client_address):
        pass


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback HTTP server over a folder; MLP_MNIST_MIRROR points at it."""
    served = tmp_path / "served"
    served.mkdir()
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MLP_MNIST_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield served
    server.shutdown()
    server.server_close()


def trust(folder, monkeypatch):
    """Make the checksum table name the files in `folder` (as it names the official ones)."""
    table = {}
    for key, (name, _, _) in data.MNIST_FILES.items():
        raw = (folder / name).read_bytes()
        table[key] = (name, hashlib.sha256(raw).hexdigest(), len(raw))
    monkeypatch.setattr(data, "MNIST_FILES", table)


# ----------------------------------------------------------------------------- no test leaves a trace

# the CPU thread pools too: a run sizes them for itself and puts them back (backends.thread_limits)
# (XLA_PYTHON_CLIENT_PREALLOCATE, which backends/libraries.py sets by default, is set above already.)
CHECK_THREAD_POOLS = True
# what libraries write into their own process on import or first use, as they would in any process:
# JAX, torch.compile (Inductor), scikit-learn; and pytest's own
LIBRARY_ENV = {"TF_CPP_MIN_LOG_LEVEL", "TPU_SKIP_MDS_QUERY", "TORCHINDUCTOR_CACHE_DIR",
               "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK",
               "PYTEST_CURRENT_TEST"}
# imported before the first test: they add warnings filters as they are imported (not a test's doing)
FILTERING_IMPORTS = ("requests", "scipy.sparse", "scipy.special", "sympy")
SIGNALS = [signal.Signals[name] for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2",
                                              "SIGALRM", "SIGPIPE", "SIGCHLD") if hasattr(signal, name)]


def thread_pools() -> dict:
    """Threads per loaded pool (BLAS, OpenMP), and torch's if torch is imported already."""
    pools = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
    if "torch" in sys.modules:
        pools["torch.get_num_threads()"] = sys.modules["torch"].get_num_threads()
    return pools


def global_state() -> dict:
    """What a test must leave as it found it, by name."""
    state = {
        "sys.getrecursionlimit()": sys.getrecursionlimit(),
        "os.environ": {k: v for k, v in os.environ.items() if k not in LIBRARY_ENV},
        "signal handlers": {s.name: signal.getsignal(s) for s in SIGNALS},
        "warnings.filters": list(warnings.filters),
        "os.getcwd()": os.getcwd(),
        "sys.unraisablehook": sys.unraisablehook,
        "sys.stdout": sys.stdout,
        "sys.stderr": sys.stderr,
    }
    if CHECK_THREAD_POOLS:
        state["thread pools"] = thread_pools()
    return state


def changed_state(before: dict, after: dict) -> list[str]:
    """A line per item changed, naming what changed in it (a thread pool loaded meanwhile is no change)."""
    lines = []
    for name, was in before.items():
        now = after[name]
        if now is was or now == was:
            continue
        if isinstance(was, dict):
            keys = (was.keys() & now.keys()) if name == "thread pools" else (was.keys() | now.keys())
            what = [f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(keys) if was.get(k) != now.get(k)]
        elif isinstance(was, list):
            what = [f"+{f!r}" for f in now if f not in was] + [f"-{f!r}" for f in was if f not in now] or ["reordered"]
        else:
            what = [f"{was!r} -> {now!r}"]
        if what:
            lines.append(f"{name}: {', '.join(what)}")
    return lines


def assert_unchanged(before: dict, who: str) -> None:
    changed = changed_state(before, global_state())
    if changed:
        pytest.fail(f"{who} left global state changed (restore it, or use monkeypatch):\n  " + "\n  ".join(changed),
                    pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _fixtures_leave_no_trace():
    """What module- and session-scoped fixtures leave, checked at the end of the worker's session (the
    warnings filters excepted: pytest puts them back after every test)."""
    for name in FILTERING_IMPORTS:
        importlib.import_module(name)
    before = global_state()
    del before["warnings.filters"]
    yield
    assert_unchanged(before, "this session's fixtures")


@pytest.fixture(autouse=True)
def _test_leaves_no_trace(request):
    """Each test, with its function-scoped fixtures, leaves the process's global state as it found it."""
    before = global_state()
    yield
    assert_unchanged(before, request.node.nodeid)
