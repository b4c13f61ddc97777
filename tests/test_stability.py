"""The loss and its gradient stay finite for huge logits, and equal the textbook formula."""

from __future__ import annotations

import decimal

import numpy as np
import pytest

from mlp import backends
from mlp import model

from .conftest import backend_params


def params_with_logit(z, d=5, h=3):
    """w2 = 0 and b2 = z make every logit z2 equal z exactly."""
    return {"w1": np.ones((d, h)), "b1": np.zeros(h), "w2": np.zeros((h, 1)), "b2": np.array([z])}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("z", [1e4, -1e4, 500.0, -500.0, 89.0, -89.0])
def test_finite_loss_and_grads_for_huge_logits(backend_device, dtype, z):
    name, device = backend_device
    backend = backends.resolve(device, name)
    X = np.ones((4, 5))
    for label in (0.0, 1.0):
        y = np.full(4, label)
        p = {k: backend.asarray(v, dtype) for k, v in params_with_logit(z).items()}
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # NumPy: no overflow anywhere
            loss, grads = model.loss_and_grads(p, backend.asarray(X, dtype), backend.asarray(y, dtype))
        loss = float(backend.to_host(loss))
        wrong_side = (z > 0) != (label == 1.0)
        # BCE of a confident mistake is |z|; of a confident hit, log1p(exp(-|z|)) ~ exp(-|z|)
        expected = abs(z) + np.log1p(np.exp(-abs(z))) if wrong_side else np.log1p(np.exp(-abs(z)))
        assert np.isfinite(loss)
        assert loss == pytest.approx(expected, rel=1e-6, abs=1e-30 if dtype == "float64" else 1e-7)
        for k, g in grads.items():
            g = backend.to_host(g)
            assert np.isfinite(g).all(), k
        d_b2 = float(backend.to_host(grads["b2"])[0])
        assert d_b2 == pytest.approx((1.0 if z > 0 else 0.0) - label, abs=1e-6)


def textbook_bce(z, y):
    """-y log(p) - (1 - y) log(1 - p), per element; inf or nan where p rounds to 0 or 1."""
    with np.errstate(all="ignore"):
        p = 1 / (1 + np.exp(-z))
        return -y * np.log(p) - (1 - y) * np.log(1 - p)


def textbook_bce_exact(z: float, y: float) -> float:
    """The textbook formula evaluated with 120 significant digits."""
    with decimal.localcontext() as ctx:
        ctx.prec = 120
        p = 1 / (1 + (-decimal.Decimal(z)).exp())
        return float(-decimal.Decimal(y) * p.ln() - (1 - decimal.Decimal(y)) * (1 - p).ln())


def test_bce_equals_the_textbook_formula_where_that_is_finite():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, s, 500) for s in (0.1, 1.0, 5.0, 30.0)]).reshape(-1, 1)
    y = (rng.random(z.shape) < 0.5).astype(np.float64)
    textbook = textbook_bce(z, y)
    finite = np.isfinite(textbook)[:, 0]
    assert 0.8 < finite.mean() < 1.0, "the sample must hold both finite and non-finite textbook values"
    ours = model.bce_with_logits(z, y)[:, 0]
    assert np.isfinite(ours).all()
    # in float64 the textbook form loses digits to 1 - p as |z| grows, so where |z| is moderate
    # compare with it directly, and everywhere it is finite with the same formula in 120 digits
    moderate = finite & (np.abs(z[:, 0]) < 5)
    np.testing.assert_allclose(ours[moderate], textbook[moderate, 0], rtol=1e-12)
    exact = np.array([textbook_bce_exact(zi, yi) for zi, yi in zip(z[finite, 0], y[finite, 0])])
    np.testing.assert_allclose(ours[finite], exact, rtol=1e-13)
    assert float(model.mean_loss(z[moderate], y[moderate])) == pytest.approx(textbook[moderate].mean(), rel=1e-12)
    np.testing.assert_allclose(model.sigmoid(z), 1 / (1 + np.exp(-z)), rtol=1e-15, atol=0)


def test_sigmoid_limits():
    z = np.array([-np.inf, -1e4, -50.0, 0.0, 50.0, 1e4, np.inf])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is correct
        s = model.sigmoid(z)
    assert s[0] == 0.0 and s[-1] == 1.0 and s[3] == 0.5
    assert 0 < s[2] < 1e-21 and s[5] == 1.0
