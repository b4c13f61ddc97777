"""Every gradient against central finite differences and against PyTorch autograd."""

from __future__ import annotations

import numpy as np
import pytest

from mlp import backends
from mlp import model
from mlp.model import PARAM_NAMES

from .conftest import backend_params, synthetic


def problem(activation, n=12, d=9, h=7, seed=3):
    X, y = synthetic(n, d, seed)
    params = model.init_params(d, h, np.random.default_rng(seed), init="he", activation=activation)
    # non-zero biases, so that their gradients are exercised away from the all-zero start
    params["b1"] = np.random.default_rng(seed + 1).normal(0, 0.5, h)
    params["b2"] = np.array([0.3])
    return params, X, y


def on(backend, params, X, y, dtype="float64"):
    return ({k: backend.asarray(v, dtype) for k, v in params.items()}, backend.asarray(X, dtype),
            backend.asarray(y, dtype))


def rel_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("backend_device", backend_params())
def test_gradients_match_central_differences(backend_device, activation):
    name, device = backend_device
    backend = backends.resolve(device, name)
    params, X, y = problem(activation)
    p, Xd, yd = on(backend, params, X, y)
    _, grads = model.loss_and_grads(p, Xd, yd, activation)

    def loss_at(host_params):
        q = {k: backend.asarray(v, "float64") for k, v in host_params.items()}
        return float(backend.to_host(model.loss_and_grads(q, Xd, yd, activation)[0]))

    eps = 1e-6
    for name_ in PARAM_NAMES:
        numeric = np.zeros_like(params[name_])
        for idx in np.ndindex(params[name_].shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name_][idx] += eps
            minus[name_][idx] -= eps
            numeric[idx] = (loss_at(plus) - loss_at(minus)) / (2 * eps)
        analytic = backend.to_host(grads[name_])
        assert analytic.shape == params[name_].shape
        err = rel_error(analytic, numeric)
        assert err < 1e-6, f"{name_}: relative error {err:.2e} against finite differences"
        assert np.abs(numeric).max() > 0, f"{name_}: the check would be vacuous"


def torch_reference(params, X, y, activation):
    """Loss and gradients from PyTorch autograd, float64."""
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    Xt = torch.tensor(X, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64).reshape(-1, 1)
    z1 = Xt @ t["w1"] + t["b1"]
    a1 = torch.relu(z1) if activation == "relu" else torch.tanh(z1)
    z2 = a1 @ t["w2"] + t["b2"]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z2, yt)
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("backend_device", backend_params())
def test_loss_and_gradients_match_torch_autograd(backend_device, activation):
    name, device = backend_device
    backend = backends.resolve(device, name)
    X, y = synthetic(200, 784, seed=11)
    params = model.init_params(784, 64, np.random.default_rng(5), init="he", activation=activation)
    params["b1"] = np.random.default_rng(6).normal(0, 0.1, 64)
    params["b2"] = np.array([-0.2])
    ref_loss, ref_grads = torch_reference(params, X, y, activation)
    loss, grads = model.loss_and_grads(*on(backend, params, X, y), activation)
    assert abs(float(backend.to_host(loss)) - ref_loss) <= 1e-10 * abs(ref_loss)
    for k in PARAM_NAMES:
        got = backend.to_host(grads[k])
        assert got.shape == ref_grads[k].shape
        assert rel_error(got, ref_grads[k]) < 1e-10, k


def test_y_may_be_a_column_or_a_vector_of_any_dtype():
    params, X, y = problem("relu")
    base = model.loss_and_grads(params, X, y)
    for variant in (y.reshape(-1, 1), y.astype(np.int64), y.astype(bool)):
        loss, grads = model.loss_and_grads(params, X, variant)
        assert float(loss) == float(base[0])
        for k in PARAM_NAMES:
            np.testing.assert_array_equal(grads[k], base[1][k])


def test_update_is_plain_gradient_descent():
    params, X, y = problem("tanh")
    _, grads = model.loss_and_grads(params, X, y, "tanh")
    new = model.update(params, grads, 0.25)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(new[k], params[k] - 0.25 * grads[k])


def test_init_schemes():
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    classic = model.init_params(784, 128, rng(), init="classic")
    assert classic["w1"].shape == (784, 128) and classic["w2"].shape == (128, 1)
    assert classic["b1"].shape == (128,) and classic["b2"].shape == (1,)
    assert 0 <= classic["w1"].min() and classic["w1"].max() < 0.01
    assert not classic["b1"].any() and not classic["b2"].any()
    normal = model.init_params(784, 128, rng(), init="normal")
    assert abs(normal["w1"].std() - 0.01) < 0.001
    he = model.init_params(784, 128, rng(), init="he", activation="relu")
    assert abs(he["w1"].std() - np.sqrt(2 / 784)) < 0.002
    xavier = model.init_params(784, 128, rng(), init="xavier", activation="relu")
    assert abs(xavier["w1"].std() - np.sqrt(2 / (784 + 128))) < 0.002
    he_for_tanh = model.init_params(784, 128, rng(), init="he", activation="tanh")   # the name is the scheme
    np.testing.assert_array_equal(he["w1"], he_for_tanh["w1"])
    # no init given: he for relu, xavier for tanh
    np.testing.assert_array_equal(model.init_params(784, 128, rng())["w1"], he["w1"])
    np.testing.assert_array_equal(model.init_params(784, 128, rng(), activation="tanh")["w1"], xavier["w1"])
