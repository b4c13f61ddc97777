"""MLPClassifier as scikit-learn's own: its estimator checks, its array API checks, and the same
weights and losses as its MLPClassifier from the same start (docs/python-api.md).

scikit-learn's array API checks need SCIPY_ARRAY_API=1 before SciPy is imported, which no test may
set for the others: each test of the array API runs in a pytest process of its own that has it
(`_in_own_process`), and so do the array API checks of check_estimator, which skip here, as
scikit-learn skips them without it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.neural_network import MLPClassifier as TheirMLP  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import (check_array_api_input, check_estimator,  # noqa: E402
                                            parametrize_with_checks)

from mlp import MLPClassifier  # noqa: E402

from .conftest import REPO, needs_gpu, needs_jax_gpu, needs_torch_gpu  # noqa: E402

ARRAY_API = os.environ.get("SCIPY_ARRAY_API") == "1"


@parametrize_with_checks([MLPClassifier(), MLPClassifier(activation="tanh")])
def test_scikit_learn_checks(estimator, check):
    """Every check of check_estimator passes (none is expected to fail); those of the array API run
    where SCIPY_ARRAY_API=1 (see the module's docstring)."""
    check(estimator)


def _in_own_process(request) -> None:
    """Run this test again in a pytest of its own with SCIPY_ARRAY_API=1; its outcome is this one's."""
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
                          "-n", "0", request.node.nodeid], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode == 0 and " skipped" in out.stdout and " passed" not in out.stdout:
        pytest.skip(out.stdout.strip().splitlines()[-2].split(": ", 1)[-1])
    assert out.returncode == 0 and " passed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]


def test_array_api_checks_of_check_estimator(request):
    if not ARRAY_API:
        return _in_own_process(request)
    for estimator in (MLPClassifier(), MLPClassifier(activation="tanh")):
        failed = [r for r in check_estimator(estimator, on_fail=None) if r["status"] == "failed"]
        assert not failed, [(r["check_name"], str(r["exception"])[:300]) for r in failed]


CPU = [("array_api_strict", "CPU_DEVICE"), ("array_api_strict", "device1"), ("torch", "cpu")]
PLACES = [pytest.param(CPU, id="cpu"),
          pytest.param([("cupy", None)], id="cupy", marks=[pytest.mark.gpu, needs_gpu]),
          pytest.param([("torch", "cuda")], id="torch-cuda", marks=[pytest.mark.gpu, needs_torch_gpu])]


@pytest.mark.parametrize("places", PLACES)
def test_array_api_values(request, places):
    """scikit-learn's check_array_api_input with check_values: fitted on X of each namespace and
    device, float64 and float32, the attributes and every method's results are NumPy's, there."""
    if not ARRAY_API:
        return _in_own_process(request)
    for namespace, device in places:
        for dtype in ("float64", "float32"):
            for estimator in (MLPClassifier(), MLPClassifier(activation="tanh", solver="adam", batch_size=8)):
                check_array_api_input("MLPClassifier", estimator, namespace, device, dtype, check_values=True,
                                      check_sample_weight=True)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_jax_gpu])])
def test_array_api_jax(request, device):
    """scikit-learn has no JAX check: X a JAX array trains in JAX on its device, and the results
    are JAX arrays there, with NumPy's values."""
    if not ARRAY_API:
        return _in_own_process(request)
    jax = pytest.importorskip("jax")
    X, y = load_digits(n_class=3, return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ours = MLPClassifier(batch_size=32, max_iter=3).fit(X, y)
    with jax.enable_x64(True), sklearn.config_context(array_api_dispatch=True):
        place = jax.devices(device)[0]
        X_jax = jax.device_put(X, place)
        est = MLPClassifier(batch_size=32, max_iter=3).fit(X_jax, jax.device_put(y, place))
        for out in (*est.coefs_, est.predict_proba(X_jax), est.predict(X_jax)):
            assert isinstance(out, jax.Array) and out.devices() == {place}
        np.testing.assert_allclose(np.asarray(est.predict_proba(X_jax)), ours.predict_proba(X), atol=1e-12)
        assert est.score(X_jax, y) == ours.score(X, y) and isinstance(est.score(X_jax, y), float)


def _digits(n_classes: int):
    """load_digits, standardised: 3 vs 7, or all ten digits."""
    X, y = load_digits(return_X_y=True)
    keep = np.isin(y, (3, 7)) if n_classes == 2 else np.ones(len(y), bool)
    return StandardScaler().fit_transform(X[keep]), y[keep]


@pytest.mark.parametrize("n_classes", [2, 10])
@pytest.mark.parametrize("optimiser", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterovs_momentum": True},
                                       {"momentum": 0.5, "alpha": 0.1}])
def test_same_weights_and_losses_as_scikit_learns(n_classes, optimiser):
    """float64, full batch, rows in order, from the same weights: after 5 epochs of SGD (plain,
    momentum, Nesterov, L2), ours and scikit-learn's MLPClassifier hold the same weights and loss
    curve, to 1e-9."""
    X, y = _digits(n_classes)
    settings = {"hidden_layer_sizes": (16,), "solver": "sgd", "learning_rate_init": 0.05, "batch_size": len(y),
                "shuffle": False, "alpha": 0.0, "momentum": 0.0, "nesterovs_momentum": False, **optimiser}
    theirs = TheirMLP(learning_rate="constant", max_iter=1, n_iter_no_change=10**6, random_state=0, **settings)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        theirs.fit(X, y)            # its attributes made; its weights are replaced below
    rng = np.random.default_rng(1)
    K = theirs.coefs_[1].shape[1]
    coefs, intercepts = [rng.normal(0, 0.2, (64, 16)), rng.normal(0, 0.2, (16, K))], [np.zeros(16), np.zeros(K)]
    theirs.coefs_, theirs.intercepts_ = [c.copy() for c in coefs], [b.copy() for b in intercepts]
    theirs.loss_curve_ = []
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        theirs.set_params(warm_start=True, max_iter=5).fit(X, y)
    ours = MLPClassifier(warm_start=True, max_iter=5, dtype="float64", **settings)
    ours.coefs_, ours.intercepts_ = [c.copy() for c in coefs], [b.copy() for b in intercepts]
    ours.fit(X, y)
    for mine, its in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, its, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=0, atol=1e-9)
    assert len(ours.loss_curve_) == 5 and ours.n_iter_ == 5 and ours.t_ == 5 * len(y)


@pytest.mark.parametrize("n_iter_no_change", [1, 3])
def test_stops_as_scikit_learn_stops(n_iter_no_change):
    """tol and n_iter_no_change: training stops once the loss has not improved by tol for more than
    n_iter_no_change epochs, as scikit-learn's does (a tol no epoch can beat: after the first epoch
    and n_iter_no_change + 1 more)."""
    X, y = _digits(2)
    settings = {"hidden_layer_sizes": (8,), "solver": "sgd", "batch_size": 50, "tol": 100.0,
                "n_iter_no_change": n_iter_no_change, "max_iter": 50}
    theirs = TheirMLP(learning_rate="constant", random_state=0, **settings).fit(X, y)
    ours = MLPClassifier(**settings).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_ == n_iter_no_change + 2 == len(ours.loss_curve_)
    assert ours._no_improvement_count == n_iter_no_change + 1 and ours.best_loss_ == min(ours.loss_curve_)
