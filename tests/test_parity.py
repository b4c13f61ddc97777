"""The same seed trains the same model on every backend, through the same training loop.

The reference is NumPy in float64. Training runs through mlp.loop.fit with the engine the CLI
picks by default (`--engine auto`: compiled on JAX and on torch-CUDA, eager elsewhere): minibatches
gathered on the device with `take`, losses copied back per epoch. tests/test_engines.py holds
the compiled engines to the eager loop on the same backend."""

from __future__ import annotations

import numpy as np
import pytest

from mlp import backends
from mlp import model
from mlp.loop import TrainState, fit, make_engine

from .conftest import backend_params, needs_gpu, synthetic

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def train(backend_name, device, dtype, activation, batch_size, epochs=4, seed=7):
    backend = backends.resolve(device, backend_name)
    X, y = synthetic(300, 784, seed=1)
    cfg = {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, "activation": activation, "seed": seed,
           "hidden": 32, "init": "he", "dtype": dtype}
    state = TrainState.fresh(backend, cfg, 784)
    X, y = backend.asarray(X, dtype), backend.asarray(y, dtype)
    fit(backend, make_engine(backend, "auto", cfg, X, y), state, epochs)
    return np.array(state.losses), {k: backend.to_host(v) for k, v in state.params.items()}


def max_rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


_reference_cache = {}


def reference(activation, batch_size):
    key = (activation, batch_size)
    if key not in _reference_cache:
        _reference_cache[key] = train("numpy", "cpu", "float64", activation, batch_size)
    return _reference_cache[key]


@pytest.mark.parametrize("batch_size", [64, "full"])
@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend_device", backend_params())
def test_training_matches_float64_numpy(backend_device, dtype, activation, batch_size):
    name, device = backend_device
    ref_losses, ref_params = reference(activation, batch_size)
    losses, params = train(name, device, dtype, activation, batch_size)
    assert len(losses) == len(ref_losses) == 4 * (5 if batch_size == 64 else 1)
    assert ref_losses[-1] < ref_losses[0], "the reference run must actually learn"
    tol = TOLERANCE[dtype]
    assert max_rel(losses, ref_losses) <= tol
    for k in model.PARAM_NAMES:
        assert params[k].dtype == np.dtype(dtype)
        assert max_rel(params[k], ref_params[k]) <= tol, k


def test_same_seed_same_run_and_other_seed_other_run():
    a = train("numpy", "cpu", "float32", "relu", 64)
    b = train("numpy", "cpu", "float32", "relu", 64)
    c = train("numpy", "cpu", "float32", "relu", 64, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


@needs_gpu
@pytest.mark.gpu
def test_cupy_checkpoint_loads_on_cpu_and_back(tmp_path):
    """Device-side half of checkpoint portability (the CPU half is in test_reliability)."""
    from mlp import checkpoint
    from mlp.checkpoint import Checkpoint

    gpu = backends.resolve("cuda", "cupy")
    cpu = backends.resolve("cpu", "numpy")
    losses, params = train("cupy", "cuda", "float64", "relu", 64)
    config = {"hidden": 32, "activation": "relu", "init": "he", "lr": 0.05, "batch_size": 64, "seed": 7,
              "dtype": "float64", "classes": [3, 7], "n_features": 784}
    checkpoint.save(tmp_path / "gpu.npz", Checkpoint(params=params, config=config, step=len(losses), losses=losses,
                                                     rng_state=np.random.default_rng(7).bit_generator.state))
    loaded = checkpoint.load(tmp_path / "gpu.npz")
    X, y = synthetic(50, 784, seed=2)
    on_cpu = model.loss_and_grads({k: cpu.asarray(v) for k, v in loaded.params.items()}, cpu.asarray(X), cpu.asarray(y))
    on_gpu = model.loss_and_grads({k: gpu.asarray(v) for k, v in loaded.params.items()}, gpu.asarray(X), gpu.asarray(y))
    assert float(cpu.to_host(on_cpu[0])) == pytest.approx(float(gpu.to_host(on_gpu[0])), rel=1e-12)
