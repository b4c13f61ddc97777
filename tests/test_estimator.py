"""The Python API (`mlp.MLPClassifier`): the commands' model, scikit-learn's conventions, clear refusals."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from mlp import MLPClassifier, backends, checkpoint, evaluate, model, train
from mlp.data import mnist_files, read_idx

from .conftest import REPO, call_cli, make_dataset


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A small IDX data set of 3s and 7s (random pixels), and its raw arrays."""
    folder = tmp_path_factory.mktemp("pair")
    make_dataset(folder, n_train=160, n_test=40, labels=[3, 7])
    files = mnist_files(folder, download=False)
    return folder, {k: read_idx(p) for k, p in files.items()}


def test_import_mlp_stays_light():
    code = "import sys, mlp; print('numpy' in sys.modules, 'mlp.estimator' in sys.modules, mlp.MLPClassifier.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == ["False", "False", "MLPClassifier"], out.stderr


def test_fit_is_the_train_command(pair, tmp_path):
    """Same rows and settings: the same parameters and losses, bit for bit, as mlp.train; and each
    reads the other's checkpoint."""
    folder, raw = pair
    flags = ["--epochs", "2", "--batch-size", "16", "--hidden", "8", "--activation", "tanh", "--lr", "0.05"]
    assert call_cli(train.main, "--data-dir", folder, "--quiet", *flags, "--save", tmp_path / "cli.npz")[0] == 0
    est = MLPClassifier(epochs=2, batch_size=16, hidden=8, activation="tanh", lr=0.05)
    est.fit(raw["train-images"], raw["train-labels"])
    cli = checkpoint.load(tmp_path / "cli.npz")
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(est.checkpoint_.params[k], cli.params[k])
    np.testing.assert_array_equal(est.losses_, cli.losses)
    assert est.checkpoint_.config == {**cli.config, "classes": [3, 7]} and cli.config["init"] == "xavier"
    est.save(tmp_path / "est.npz")
    code, out, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "est.npz", "--data-dir", folder)
    assert code == 0, err
    accuracy = est.score(raw["test-images"], raw["test-labels"])
    assert f"accuracy {accuracy:.2%}" in out
    loaded = MLPClassifier.load(tmp_path / "cli.npz")
    np.testing.assert_array_equal(loaded.predict_proba(raw["test-images"]), est.predict_proba(raw["test-images"]))
    assert loaded.get_params() == est.get_params() | {"init": "xavier"}


def test_fit_and_predict_size_the_thread_pools_as_the_commands(pair, monkeypatch):
    """The commands' thread policy while fitting (1 thread at B = 16 here), whatever the process had
    before (a notebook's BLAS default: here 2 threads), threads=N as --threads N; and afterwards
    the pools are as they were."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from mlp import loop
    from mlp.backends import threads

    _, raw = pair
    backend = backends.resolve("cpu", "numpy")
    during, fit = [], loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: during.append(threads.current(backend)) or fit(*a, **k))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = threads.current(backend)
        assert before == 2 or threads.usable_cores() == 1
        est = MLPClassifier(epochs=1, batch_size=16, hidden=4).fit(raw["train-images"], raw["train-labels"])
        assert during == [1] and threads.current(backend) == before
        est.predict(raw["test-images"])
        assert threads.current(backend) == before
        est.set_params(threads=2).fit(raw["train-images"], raw["train-labels"])
        assert during == [1, 2] and threads.current(backend) == before
    with pytest.raises(ValueError, match=r"MLPClassifier\(threads=0\)"):
        MLPClassifier(threads=0).fit(raw["train-images"], raw["train-labels"])


def test_labels_inputs_and_refusals(pair, tmp_path):
    _, raw = pair
    X, digits = raw["train-images"], raw["train-labels"]
    names = np.where(digits == 3, "three", "seven")
    est = MLPClassifier(epochs=1, batch_size=32, hidden=4).fit(X, names)
    assert est.classes_.tolist() == ["seven", "three"] and est.n_features_in_ == 784 and est.n_iter_ == 1
    proba = est.predict_proba(X[:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(axis=1), 1)
    assert est.predict(X[:5]).tolist() == np.where(proba[:, 1] >= 0.5, "three", "seven").tolist()
    assert est.score(X, names) == np.mean(est.predict(X) == names) and est.score(X, digits) == 0   # unknown labels
    # the same pixels as floats in [0, 1], or as rows: the same model
    np.testing.assert_array_equal(est.predict_proba(X[:5].reshape(5, -1) / 255), proba)
    with pytest.raises(ValueError, match="save.. keeps the labels as whole numbers"):
        est.save(tmp_path / "names.npz")
    refusals = [
        (lambda: est.predict(X[:5].astype(float)), r"float pixels must lie in \[0, 1\]"),
        (lambda: est.predict(np.full((2, 784), np.nan)), "NaN"),
        (lambda: est.predict(X[:5, :14]), "392 features per row"),
        (lambda: est.predict(X[:5, None]), "rows .n, D. or images"),
        (lambda: MLPClassifier().predict(X), "not fitted yet"),
        (lambda: MLPClassifier().fit(X, np.zeros(len(X))), "y holds 1 class; a classifier needs rows of at least two"),
        (lambda: MLPClassifier().fit(X, digits[:-1]), "one label per row"),
        (lambda: MLPClassifier(hidden=0).fit(X, digits), r"hidden=0\): must be a whole number from 1"),
        (lambda: MLPClassifier(lr=float("nan")).fit(X, digits), "lr=nan"),
        (lambda: MLPClassifier(init="he-normal").fit(X, digits), "init='he-normal'.: must be one of classic"),
        (lambda: MLPClassifier(backend="dask").fit(X, digits), "backend='dask'"),
        (lambda: MLPClassifier(batch_size=1000).fit(X, digits), "larger than the 160 rows"),
        (lambda: MLPClassifier().set_params(widht=3), "no parameter 'widht'"),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError, match=message):
            call()


def test_model_checks_what_it_is_given():
    """predict_proba checks its inputs as loss_and_grads does; loss_and_grads refuses labels
    other than 0 and 1 (train_step leaves that to its caller, so that no step waits on the device)."""
    params = model.init_params(784, 4, np.random.default_rng(0))
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="X must be 2-D .* flatten images first"):
        model.predict_proba(params, images)
    with pytest.raises(ValueError, match="X must be float32 or float64, got uint8"):
        model.predict_proba(params, images.reshape(3, -1))
    with pytest.raises(ValueError, match="w1 is float64 but X is float32"):
        model.predict_proba(params, np.zeros((3, 784), np.float32))
    X = np.zeros((3, 784))
    with pytest.raises(ValueError, match="y must hold only the labels 0 to 1"):
        model.loss_and_grads(params, X, np.array([0.0, 1.0, 2.0]))
    model.loss_and_grads(params, X, np.array([0.0, 1.0, 1.0]))
    model.train_step(params, X, np.array([0.0, 1.0, 2.0]), opt=model.Optimiser())   # unchecked: the engines check once
    from mlp.backends import resolve
    from mlp.loop import make_engine

    with pytest.raises(ValueError, match="y must hold only the labels 0 to 1"):
        make_engine(resolve("cpu"), "auto", {"batch_size": 2, "lr": 0.1, "activation": "relu"}, X, X[:, 0] + 2)


def test_scikit_learn_takes_it_as_its_own(pair):
    base = pytest.importorskip("sklearn.base")
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler
    from sklearn.utils import get_tags

    _, raw = pair
    X, y = raw["train-images"].reshape(160, -1), raw["train-labels"]
    est = MLPClassifier(hidden=4, epochs=1, batch_size=32)
    copy = base.clone(est.set_params(seed=3))
    assert copy is not est and copy.get_params() == est.get_params() and copy.seed == 3
    assert base.is_classifier(est) and get_tags(est).classifier_tags.multi_class is False
    scores = cross_val_score(est, X, y, cv=2)
    assert scores.shape == (2,) and ((0 <= scores) & (scores <= 1)).all()
    pipe = make_pipeline(MinMaxScaler(clip=True), MLPClassifier(hidden=4, epochs=1, batch_size=32)).fit(X, y)
    assert set(pipe.predict(X[:10])) <= {3, 7} and 0 <= pipe.score(X, y) <= 1
    assert repr(est) == "MLPClassifier(hidden=4, epochs=1, batch_size=32, seed=3)"


def test_defaults_are_the_commands():
    params = MLPClassifier().get_params()
    assert {k: params[k] for k in train.DEFAULTS if k in params} == {k: v for k, v in train.DEFAULTS.items()
                                                                   if k in params}
    assert params["device"] == "cpu" and params["backend"] is None and params["engine"] == "auto"


def test_the_python_api_page_runs(data_dir, monkeypatch, capsys):
    """Every ```python block of docs/python-api.md, in order, in one namespace."""
    text = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.setenv("MLP_DATA_DIR", str(data_dir))
    monkeypatch.chdir(REPO)
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    assert namespace["model"].classes_.tolist() == [3, 7]
