"""Engines: the compiled epoch gives what the eager loop gives, resumes as it does, and a
step issues no host-to-device copy. JAX-CPU runs the compiled engine in CI, JAX-CUDA on a GPU;
the CUDA-graph engine runs on cuda:0 and on the last GPU (when there are several) on a GPU, and
its capture logic on the CPU with a stand-in for torch.cuda (tests/test_cuda_graph.py)."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys

import numpy as np
import pytest

from mlp import backends, checkpoint, model, train
from mlp.loop import EagerEngine, Interrupted, TrainState, fit, make_engine

from .conftest import TORCH_GPU_MISSING, call_cli, make_dataset, needs_jax_gpu, needs_torch_gpu, synthetic

needs = {name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} is not installed")
         for name in ("jax", "torch")}
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
N, D, H = 300, 40, 16            # B = 64: 4 full steps and a remainder of 44 rows per epoch


def start(backend, dtype, seed=3):
    X, y = synthetic(N, D, seed=1)
    cfg = {"seed": seed, "hidden": H, "init": "he", "activation": "relu", "dtype": dtype}
    return backend.asarray(X, dtype), backend.asarray(y, dtype), TrainState.fresh(backend, cfg, D)


def train_with(backend_name, engine, dtype, batch_size, epochs=2, segment=None, device="cpu"):
    backend = backends.resolve(device, backend_name)
    X, y, state = start(backend, dtype)
    cfg = {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, "activation": "relu"}
    engine = make_engine(backend, engine, cfg, X, y)
    if segment:
        engine.segment = segment
    fit(backend, engine, state, epochs)
    return engine, np.array(state.losses), {k: backend.to_host(v) for k, v in state.params.items()}


_cache = {}


def cached(*args, **kw):
    """train_with, once per set of arguments in this session (JAX compiles each shape once)."""
    key = (args, tuple(sorted(kw.items())))
    if key not in _cache:
        _cache[key] = train_with(*args, **kw)
    return _cache[key]


def assert_close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert float(np.max(np.abs(a - b)) / np.max(np.abs(b))) <= tol


JAX_DEVICES = [pytest.param("cpu", marks=needs["jax"]),
               pytest.param("cuda", marks=[pytest.mark.gpu, needs_jax_gpu])]


@pytest.mark.parametrize("device", JAX_DEVICES)
@pytest.mark.parametrize("dtype, batch_size, segment", [
    ("float32", 64, None), ("float64", 64, 3), ("float64", "full", None)])  # None: one scan an epoch; 3: split
def test_compiled_jax_matches_eager(dtype, batch_size, segment, device):
    engine, losses, params = cached("jax", "compiled", dtype, batch_size, segment=segment, device=device)
    assert type(engine).__name__ == "JaxScanEngine" and engine.name == "compiled"
    _, eager_losses, eager_params = cached("jax", "eager", dtype, batch_size, device=device)
    assert len(losses) == 2 * (5 if batch_size == 64 else 1)
    half = len(losses) // 2
    assert eager_losses[half:].mean() < eager_losses[:half].mean(), "the run must learn"
    assert_close(losses, eager_losses, TOLERANCE[dtype])
    for k in model.PARAM_NAMES:
        assert params[k].dtype == np.dtype(dtype)
        assert_close(params[k], eager_params[k], TOLERANCE[dtype])


@needs["jax"]
def test_jax_segments_are_capped_in_steps_as_well_as_rows():
    from mlp.backends import jax_engine

    X, y = np.zeros((20_000, 3)), np.zeros(20_000)
    sizes = {batch: jax_engine.JaxScanEngine("cpu", lambda *a: a, X, y, batch).segment
             for batch in (1, 4, 64, 20_000)}
    assert sizes == {1: jax_engine.STEPS_PER_SEGMENT, 4: 4096, 64: 256, 20_000: 1}


@needs["jax"]
def test_compiled_jax_resumed_mid_epoch_equals_uninterrupted(dtype="float64"):
    """Stopped after the first segment (step 3 of 5), saved to host arrays, resumed with a new engine."""
    backend = backends.resolve("cpu", "jax")
    _, whole_losses, whole_params = cached("jax", "compiled", dtype, 64, segment=3)

    class StopNow:
        requested = True

    X, y, state = start(backend, dtype)
    cfg = {"epochs": 2, "batch_size": 64, "lr": 0.05, "activation": "relu"}
    engine = make_engine(backend, "compiled", cfg, X, y)
    engine.segment = 3
    with pytest.raises(Interrupted):
        fit(backend, engine, state, cfg["epochs"], stop=StopNow())
    assert (state.epoch, state.step_in_epoch, len(state.losses)) == (0, 3, 3)
    rng = np.random.default_rng()
    rng.bit_generator.state = state.epoch_rng_state              # what a checkpoint keeps
    resumed = TrainState(params={k: backend.asarray(backend.to_host(v)) for k, v in state.params.items()}, rng=rng,
                         step=state.step, step_in_epoch=state.step_in_epoch, epoch_rng_state=state.epoch_rng_state,
                         losses=list(state.losses))
    fit(backend, make_engine(backend, "compiled", cfg, X, y), resumed, cfg["epochs"])
    np.testing.assert_array_equal(np.array(resumed.losses), whole_losses)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(backend.to_host(resumed.params[k]), whole_params[k])


def _torch_gpus() -> list:
    """cuda:0, and the last GPU when there are several (on cuda:N, N != 0, the capture must be made
    on device N: tests/test_cuda_graph.py checks that on the CPU)."""
    if TORCH_GPU_MISSING is not None:
        return ["cuda:0"]                                     # skipped, with the reason
    import torch

    return sorted({"cuda:0", f"cuda:{torch.cuda.device_count() - 1}"})


@needs["torch"]
def test_compiled_torch_on_cpu_matches_eager(dtype="float32"):
    """torch.compile of the step: 2 steps per call, then single steps, then the 44-row remainder (three
    programs, split across segments of 3 steps; compiling them takes a while)."""
    backend = backends.resolve("cpu", "torch")
    X, y, state = start(backend, dtype)
    cfg = {"epochs": 2, "batch_size": 64, "lr": 0.05, "activation": "relu"}
    engine = make_engine(backend, "compiled", cfg, X, y)
    assert type(engine).__name__ == "TorchCompileEngine" and engine.name == "compiled"
    engine.segment, engine.unroll = 3, 2
    fit(backend, engine, state, cfg["epochs"])
    _, eager_losses, eager_params = cached("torch", "eager", dtype, 64)
    assert len(state.losses) == 10
    assert_close(state.losses, eager_losses, TOLERANCE[dtype])
    for k in model.PARAM_NAMES:
        assert state.params[k].dtype == getattr(__import__("torch"), dtype)
        assert_close(backend.to_host(state.params[k]), eager_params[k], TOLERANCE[dtype])


@needs["torch"]
def test_the_compiled_torch_engine_leaves_the_recursion_limit_as_it_found_it(monkeypatch):
    """Inductor raises the limit to 2000 as it compiles, for good (not on a cache hit: here a stand-in for
    torch.compile raises it on every call); a JSON reader's bound must not move with it."""
    import torch

    def compile(fn, **options):
        def compiled(*args):
            sys.setrecursionlimit(sys.getrecursionlimit() + 1000)
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", compile)
    limit, backend = sys.getrecursionlimit(), backends.resolve("cpu", "torch")
    X, y, state = start(backend, "float32")
    fit(backend, make_engine(backend, "compiled", {"batch_size": 64, "lr": 0.05, "activation": "relu"}, X, y), state, 1)
    assert len(state.losses) == 5 and sys.getrecursionlimit() == limit


@pytest.mark.gpu
@needs_torch_gpu
@pytest.mark.parametrize("device", _torch_gpus())
@pytest.mark.parametrize("batch_size", [64, "full"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_graph_engine_matches_eager(dtype, batch_size, device):
    backend = backends.resolve(device, "torch")
    X, y, _ = start(backend, dtype)
    cfg = {"epochs": 2, "batch_size": batch_size, "lr": 0.05, "activation": "relu"}
    assert type(make_engine(backend, "auto", cfg, X, y)).__name__ == "TorchGraphEngine"
    engine, losses, params = train_with("torch", "compiled", dtype, batch_size, device=device, segment=3,
                                        epochs=3)
    assert len(engine.graphs) == (2 if batch_size == 64 else 1)      # steps 0-2 and 3-4, captured once each
    import torch

    held = torch.cuda.memory_reserved(device)
    engine.close()                                                   # the graphs and their pools released
    assert engine.graphs == {} and torch.cuda.memory_reserved(device) < held
    _, eager_losses, eager_params = train_with("torch", "eager", dtype, batch_size, device=device, epochs=3)
    assert len(losses) == 3 * (5 if batch_size == 64 else 1)         # replays after the first epoch train too
    assert_close(losses, eager_losses, TOLERANCE[dtype])
    for k in model.PARAM_NAMES:
        assert_close(params[k], eager_params[k], TOLERANCE[dtype])


@pytest.mark.parametrize("name, expected", [("numpy", "EagerEngine"), ("array_api_strict", "EagerEngine"),
                                            ("torch", "EagerEngine"), ("jax", "JaxScanEngine")])
def test_auto_picks_compiled_only_where_there_is_one(name, expected):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
    backend = backends.resolve("cpu", name)
    X, y, _ = start(backend, "float64")
    cfg = {"batch_size": 64, "lr": 0.1, "activation": "relu"}
    assert type(make_engine(backend, "auto", cfg, X, y)).__name__ == expected
    assert isinstance(make_engine(backend, "eager", cfg, X, y), EagerEngine)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small-mnist")
    make_dataset(folder, n_train=400, n_test=60, labels=[3, 7])
    return folder


def test_compiled_where_there_is_none_is_one_line_exit_2(small_data, tmp_path):
    code, out, err = call_cli(train.main, "--data-dir", small_data, "--quiet", "--engine", "compiled",
                              "--save", tmp_path / "c.npz")
    assert code == 2 and out == ""
    assert err.strip() == ("mlp.train: error: --engine compiled: the numpy backend on cpu has no compiled engine; "
                           "use --engine eager (or auto), or a backend that has one")
    assert list(tmp_path.iterdir()) == []


@needs["jax"]
def test_compiled_run_resumes_and_records_its_engine(small_data, tmp_path):
    common = ["--data-dir", small_data, "--quiet", "--backend", "jax", "--batch-size", "64", "--hidden", "8"]
    assert call_cli(train.main, *common, "--epochs", "3", "--save", tmp_path / "whole.npz",
                    "--metrics-json", tmp_path / "m.json")[0] == 0
    assert call_cli(train.main, *common, "--epochs", "1", "--save", tmp_path / "half.npz")[0] == 0
    code, _, err = call_cli(train.main, "--data-dir", small_data, "--quiet", "--backend", "jax",
                            "--resume", tmp_path / "half.npz", "--epochs", "3", "--save", tmp_path / "resumed.npz")
    assert code == 0, err
    whole, resumed = checkpoint.load(tmp_path / "whole.npz"), checkpoint.load(tmp_path / "resumed.npz")
    assert whole.meta["engine"] == resumed.meta["engine"] == "compiled"
    assert json.loads((tmp_path / "m.json").read_text())["engine"] == "compiled"
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])


@needs["jax"]
def test_jax_synchronize_waits_for_the_arrays_it_is_given():
    backend = backends.resolve("cpu", "jax")
    with pytest.raises(ValueError, match="no device-wide barrier"):
        backend.synchronize()
    a = backend.asarray(np.random.default_rng(0).standard_normal((1024, 1024)))
    out = a
    for _ in range(8):
        out = out @ a / 32.0
    backend.synchronize(out)
    assert out.is_ready()


# ----------------------------------------------------------------------------- host copies

FORBIDDEN = ("aten.lift_fresh", "aten.lift_fresh_copy", "aten._local_scalar_dense")  # a Python number made a
# tensor on the host; a value read back to the host


STEPS = {   # (classes, optimiser, L2): the exercise's step, and each optimiser and head a step may carry
    "plain": (2, model.Optimiser(lr=0.1), 0.0),
    "nesterov-l2": (2, model.Optimiser(lr=0.1, momentum=0.9, nesterov=True), 1e-3),
    "adam-4-classes": (4, model.Optimiser(solver="adam", lr=1e-3), 0.0),
}


@needs["torch"]
@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_torch_step_makes_no_host_tensor(device, activation, step):
    """Every op of a step, as PyTorch dispatches it: none lifts a Python number into a host
    tensor, reads a value back, or copies between devices (a dtype cast on the device is
    fine), and on the 'meta' device (where a host tensor would stand out) every tensor stays
    on the step's device. Fails with the old `xp.maximum(z, 0.0)`, which array-api-compat
    turns into a host tensor (aten.lift_fresh) that is then copied to the device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops, self.devices, self.cross_device = [], set(), []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(func.overloadpacket)
            self.ops.append(name)
            flat, _ = tree_flatten((args, kwargs, out))
            self.devices |= {t.device.type for t in flat if isinstance(t, torch.Tensor)}
            if name in ("aten._to_copy", "aten.copy_"):
                source = args[1] if name == "aten.copy_" else args[0]
                if source.device != out.device:
                    self.cross_device.append((name, str(source.device), str(out.device)))
            return out

    rng = np.random.default_rng(0)
    K, opt, alpha = STEPS[step]
    host = model.init_params(20, 8, rng, n_out=model.outputs(K))
    params = {k: torch.tensor(v, device=device) for k, v in host.items()}
    state = {**params, **opt.slots(params)}
    X = torch.tensor(rng.standard_normal((16, 20)), device=device)
    y = torch.tensor(rng.integers(0, K, 16).astype(np.float64), device=device)
    run = functools.partial(model.train_step, opt=opt, activation=activation, alpha=alpha)
    state, _ = run(state, X, y)          # any first-call set-up happens outside
    with Record() as seen:
        run(state, X, y)
    assert "aten.mm" in seen.ops, "the recorder must see the step's ops"
    assert not [op for op in seen.ops if op in FORBIDDEN]
    assert not seen.cross_device
    assert seen.devices == {device}
