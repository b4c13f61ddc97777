"""Shared fixtures: the real data, the backends to test, and running the CLIs."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib.util
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

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
