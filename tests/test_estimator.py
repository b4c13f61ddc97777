"""The Python API (`mlp.MLPClassifier`): the commands' model with scikit-learn's names and
behaviour, its inputs and checkpoints, its refusals, and a process left as it was found."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mlp import MLPClassifier, checkpoint, evaluate, files, loop, model, predict, train  # noqa: E402
from mlp.data import load_dataset, mnist_files, normalise, read_idx  # noqa: E402
from mlp.errors import DataError, UserError  # noqa: E402

from .conftest import REPO, call_cli, make_dataset  # noqa: E402

SMALL = {"hidden_layer_sizes": (4,), "max_iter": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A small IDX data set of 3s and 7s (random pixels): its folder and raw arrays."""
    folder = tmp_path_factory.mktemp("pair")
    make_dataset(folder, n_train=160, n_test=40, labels=[3, 7])
    return folder, {k: read_idx(p) for k, p in mnist_files(folder, download=False).items()}


@pytest.fixture(scope="module")
def rows():
    """40 rows of 3 features of any sign (not pixels), of three classes."""
    rng = np.random.default_rng(0)
    X = rng.normal(0, 3, (40, 3))
    return X, np.where(X[:, 0] > 1, 2, np.where(X[:, 1] > 0, 1, 0))


def test_import_mlp_and_the_commands_stay_free_of_scikit_learn():
    code = ("import sys, mlp; print('numpy' in sys.modules); import mlp.train, mlp.evaluate, mlp.predict, mlp.model; "
            "print('sklearn' in sys.modules, mlp.MLPClassifier.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.split() == ["False", "False", "MLPClassifier"], out.stderr
    blocked = "import sys; sys.modules['sklearn'] = None\nfrom mlp import MLPClassifier"
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120, cwd=REPO)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("ImportError: mlp.MLPClassifier is a scikit-learn estimator")
    assert last.endswith("pip install 'mlp-by-hand[sklearn]'")


@pytest.mark.slow
def test_the_default_job_bit_for_bit(data_dir, tmp_path):
    """MLPClassifier() on the default job's rows (float32) or raw images (input='pixels') is
    `python -m mlp.train`: the same losses, bit for bit, 10 epochs (tol does not stop them), 2026/2038;
    its checkpoint is scored by mlp.evaluate, and mlp.train's is loaded as input 'pixels'."""
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--quiet", "--metrics-json", tmp_path / "m.json",
                            "--save", tmp_path / "cli.npz")
    assert code == 0, err
    losses = json.loads((tmp_path / "m.json").read_text())["losses"]
    data = load_dataset(data_dir, (3, 7), dtype=np.float32)
    est = MLPClassifier().fit(data.train.X, data.train.digits)
    assert est._checkpoint.losses.tolist() == losses and est.n_iter_ == 10 and est.coefs_[0].dtype == np.float32
    assert (est.predict(data.test.X) == data.test.digits).sum() == 2026 and len(data.test.digits) == 2038
    raw = {k: read_idx(p) for k, p in mnist_files(data_dir, download=False).items()}
    keep, keep_test = np.isin(raw["train-labels"], (3, 7)), np.isin(raw["test-labels"], (3, 7))
    images = MLPClassifier(input="pixels").fit(raw["train-images"][keep], raw["train-labels"][keep])
    assert images._checkpoint.losses.tolist() == losses
    images.save(tmp_path / "est.npz")
    code, out, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "est.npz", "--data-dir", data_dir)
    assert code == 0 and "(2026/2038)" in out, err
    loaded = MLPClassifier.load(tmp_path / "cli.npz")
    assert loaded.input == "pixels" and loaded.classes_.tolist() == [3, 7]
    test_images = raw["test-images"][keep_test]
    np.testing.assert_array_equal(loaded.predict_proba(test_images), images.predict_proba(test_images))


def test_fit_is_the_train_command(pair, tmp_path):
    """input='pixels', same rows and settings: the same parameters and losses as mlp.train, bit for
    bit, and each reads the other's checkpoint."""
    folder, raw = pair
    flags = ["--epochs", "2", "--batch-size", "16", "--hidden", "8", "--activation", "tanh", "--lr", "0.05",
             "--momentum", "0.9"]
    assert call_cli(train.main, "--data-dir", folder, "--quiet", *flags, "--save", tmp_path / "cli.npz")[0] == 0
    est = MLPClassifier((8,), "tanh", input="pixels", max_iter=2, batch_size=16, learning_rate_init=0.05, momentum=0.9)
    est.fit(raw["train-images"], raw["train-labels"])
    est.save(tmp_path / "est.npz")
    cli, ours = checkpoint.load(tmp_path / "cli.npz"), checkpoint.load(tmp_path / "est.npz")
    assert set(ours.params) == set(cli.params) == {*model.PARAM_NAMES, *(f"v_{k}" for k in model.PARAM_NAMES)}
    for k in ours.params:
        np.testing.assert_array_equal(ours.params[k], cli.params[k])
    np.testing.assert_array_equal(ours.losses, cli.losses)
    assert ours.config == cli.config and ours.config["input"] == "pixels"
    code, out, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "est.npz", "--data-dir", folder)
    assert code == 0 and f"accuracy {est.score(raw['test-images'], raw['test-labels']):.2%}" in out, err
    loaded = MLPClassifier.load(tmp_path / "cli.npz")
    np.testing.assert_array_equal(loaded.predict_proba(raw["test-images"]), est.predict_proba(raw["test-images"]))
    assert loaded.get_params() == est.get_params() | {"init": "xavier", "dtype": "float32"}


def test_features_as_given_and_in_a_pipeline(rows):
    """Any finite real X is used as is: after StandardScaler in a pipeline, or raw; pixels are refused."""
    X, y = rows
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=5, batch_size=8)).fit(X, y)
    proba = pipe.predict_proba(X)
    assert proba.shape == (40, 3) and np.allclose(proba.sum(axis=1), 1) and pipe.score(X, y) > 0.5
    est = MLPClassifier(**SMALL).fit(X, y)
    assert est.n_outputs_ == 3 and est.out_activation_ == "softmax" and est.coefs_[0].dtype == np.float64
    np.testing.assert_allclose(np.exp(est.predict_log_proba(X)), est.predict_proba(X), rtol=1e-12)
    with pytest.raises(ValueError, match=r"X: float64 values from -\S+ to \S+; float pixels must lie in \[0, 1\]"):
        MLPClassifier(input="pixels", **SMALL).fit(X, y)


def test_checkpoints_carry_the_input_and_the_commands_honour_it(pair, rows, tmp_path):
    folder, raw = pair
    X, y = rows
    MLPClassifier(**SMALL).fit(X, y + 3).save(tmp_path / "features.npz")
    config = checkpoint.load(tmp_path / "features.npz").config
    assert config["input"] == "features" and "mean" not in config and config["classes"] == [3, 4, 5]
    np.save(tmp_path / "digits.npy", raw["test-images"][:3])
    for main, args in ((predict.main, [tmp_path / "digits.npy"]), (evaluate.main, ["--data-dir", folder])):
        code, out, err = call_cli(main, "--checkpoint", tmp_path / "features.npz", *args)
        assert code == 2 and err.count("\n") == 1 and "fitted by MLPClassifier on features as given" in err
    est = MLPClassifier(input="pixels", **SMALL).fit(raw["train-images"], raw["train-labels"])
    est.save(tmp_path / "pixels.npz")
    config = checkpoint.load(tmp_path / "pixels.npz").config
    assert (config["input"], config["mean"], config["std"], config["image_shape"]) == ("pixels", 0.1307, 0.3081,
                                                                                       [28, 28])
    code, out, err = call_cli(predict.main, "--checkpoint", tmp_path / "pixels.npz", tmp_path / "digits.npy")
    assert code == 0, err
    assert [line.split()[-1] for line in out.splitlines()] == [str(c) for c in est.predict(raw["test-images"][:3])]


def _tiny_classes(root, labels, classes, epochs):
    make_dataset(root / "data", n_train=48, labels=labels)
    code, _, err = call_cli(train.main, "--data-dir", root / "data", "--epochs", str(epochs), "--batch-size", "8",
                            "--hidden", "8", "--quiet", "--momentum", "0.9", "--classes", *map(str, classes),
                            "--save", root / f"c{epochs}.npz")
    assert code == 0, err
    images, digits = (read_idx(p) for p in list(mnist_files(root / "data", download=False).values())[:2])
    return images[np.isin(digits, classes)], digits[np.isin(digits, classes)]


@pytest.mark.parametrize("labels, classes", [([3, 7], [7, 3]), ([3, 5, 8], [5, 8, 3])])
def test_load_sorts_the_classes(tmp_path, labels, classes):
    """A checkpoint of `--classes 7 3` (or 5 8 3) loads with classes_ sorted and its outputs (and
    optimiser) put in that order: the same probabilities per class, and partial_fit goes on as
    `mlp.train --resume` does."""
    X, digits = _tiny_classes(tmp_path, labels, classes, 1)
    _tiny_classes(tmp_path, labels, classes, 2)                     # the run of two epochs, for comparison
    ckpt = checkpoint.load(tmp_path / "c1.npz")
    loaded = MLPClassifier.load(tmp_path / "c1.npz")
    assert loaded.classes_.tolist() == sorted(classes)
    raw = model.predict_proba(ckpt.params, normalise(X, "float32"))  # columns in --classes order
    np.testing.assert_allclose(loaded.predict_proba(X), raw[:, np.argsort(classes)], atol=1e-6)
    assert loaded.predict(X).tolist() == [classes[i] for i in raw.argmax(axis=1)]
    loaded.partial_fit(X, digits)                                   # epoch 2, from the checkpoint's optimiser
    two = MLPClassifier.load(tmp_path / "c2.npz")
    np.testing.assert_allclose(loaded.predict_proba(X), two.predict_proba(X), atol=1e-5)
    loaded.save(tmp_path / "again.npz")
    assert checkpoint.load(tmp_path / "again.npz").config["classes"] == sorted(classes)


def test_save_goes_through_the_output_policy(rows, tmp_path):
    """save() refuses a read-only file and one another run is writing (it holds the lock), and
    releases its own lock when it returns."""
    est = MLPClassifier(**SMALL).fit(*rows)
    target = tmp_path / "m.npz"
    target.write_bytes(b"kept")
    target.chmod(0o444)
    with pytest.raises(UserError, match=r"^MLPClassifier.save \S+m.npz: is read-only"):
        est.save(target)
    assert target.read_bytes() == b"kept"
    target.chmod(0o644)
    held = os.open(tmp_path / ".m.npz.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)           # as a running mlp.train --save holds it
        with pytest.raises(UserError, match="another run is writing this file"):
            est.save(target)
        assert target.read_bytes() == b"kept"
    finally:
        os.close(held)
    est.save(target)
    assert checkpoint.load(target).config["classes"] == [0, 1, 2]
    assert not (tmp_path / ".m.npz.lock").exists() and not files._held


def test_refusals(pair, rows):
    _, raw = pair
    X, y = rows
    images, digits = raw["train-images"], raw["train-labels"]
    fitted = MLPClassifier(**SMALL).fit(X, y)
    pixels = MLPClassifier(input="pixels", **SMALL).fit(images, digits)
    refusals = [
        (lambda: fitted.fit(X, np.where(y == 2, np.nan, y)), "Input y contains NaN"),
        (lambda: fitted.score(X[:20], y[:1]), "inconsistent numbers of samples"),
        (lambda: fitted.fit(X, np.array(["a", 1, None] * 13 + ["a"], dtype=object)), "y mixes labels of the types"),
        (lambda: fitted.fit(X, np.array([None, 1] * 20, dtype=object)), "Unknown label type"),
        (lambda: fitted.fit(X, np.zeros(40)), "y holds 1 class; a classifier needs rows of at least two"),
        (lambda: fitted.fit(X, y[:-1]), "inconsistent numbers of samples"),
        (lambda: MLPClassifier((8, 8)).fit(X, y), r"hidden_layer_sizes=\(8, 8\)\): this model has one hidden layer"),
        (lambda: MLPClassifier(engine="compiled").fit(X, y),
         r"^MLPClassifier\(engine='compiled'\): the numpy backend on cpu has no compiled engine; use engine='eager'"),
        (lambda: MLPClassifier(solver="lbfgs").fit(X, y), r"solver='lbfgs'\): must be one of sgd, adam"),
        (lambda: MLPClassifier(learning_rate_init=float("nan")).fit(X, y), "learning_rate_init=nan"),
        (lambda: MLPClassifier(tol=-1).fit(X, y), "The 'tol' parameter of MLPClassifier must be a float"),
        (lambda: MLPClassifier(backend="dask").fit(X, y), "The 'backend' parameter"),
        (lambda: MLPClassifier(threads=0).fit(X, y), r"threads=0\): must be 'auto' or a whole number"),
        (lambda: MLPClassifier().partial_fit(X, y), "classes must be passed on the first call to partial_fit"),
        (lambda: MLPClassifier(**SMALL).partial_fit(X, y, classes=[0, 1]), r"y holds the labels \[2\], which are not"),
        (lambda: fitted.predict(X[:, :2]), "X has 2 features, but MLPClassifier is expecting 3 features"),
        (lambda: pixels.predict(images[:5, :14]), "X has 392 features, but MLPClassifier is expecting 784"),
        (lambda: pixels.predict(images[:5] * 2.0), r"float pixels must lie in \[0, 1\]"),
        (lambda: pixels.predict(np.full((2, 784), np.nan)), "Input X contains NaN"),
    ]
    for call, message in refusals:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    warm = MLPClassifier(warm_start=True, **SMALL)
    warm.coefs_, warm.intercepts_ = [np.zeros((3, 5)), np.zeros((5, 3))], [np.zeros(5), np.zeros(3)]
    with pytest.raises(ValueError, match=r"coefs_ and intercepts_ have the shapes \[\(3, 5\), \(5,\), \(5, 3\)"):
        warm.fit(X, y)
    with pytest.warns(UserWarning, match="It is going to be clipped"):
        assert MLPClassifier(hidden_layer_sizes=4, batch_size=100, max_iter=1).fit(X, y)._checkpoint.config[
            "batch_size"] == 40


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_partial_fit_is_fit_one_epoch_at_a_time(rows, solver):
    """Two partial_fit calls are fit(max_iter=2): the optimiser's state and the shuffling go on."""
    X, y = rows
    settings = {"hidden_layer_sizes": (5,), "batch_size": 16, "solver": solver, "momentum": 0.9 * (solver == "sgd")}
    whole = MLPClassifier(max_iter=2, **settings).fit(X, y)
    steps = MLPClassifier(**settings).partial_fit(X, y, classes=[0, 1, 2]).partial_fit(X, y)
    for a, b in zip(whole.coefs_ + whole.intercepts_, steps.coefs_ + steps.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert steps.loss_curve_ == whole.loss_curve_ and steps.t_ == whole.t_ == 80 and steps.n_iter_ == 1


def test_warm_start_goes_on_from_coefs_with_a_new_optimiser(rows):
    X, y = rows
    full = {"hidden_layer_sizes": (5,), "batch_size": "full", "max_iter": 1}
    two = MLPClassifier(**{**full, "max_iter": 2}).fit(X, y)
    warm = MLPClassifier(**full).fit(X, y).set_params(warm_start=True).fit(X, y)
    for a, b in zip(two.coefs_ + two.intercepts_, warm.coefs_ + warm.intercepts_):
        np.testing.assert_array_equal(a, b)
    assert warm.loss_curve_ == two.loss_curve_ and warm.t_ == 80 and warm.n_iter_ == 1
    rng = np.random.default_rng(1)      # weights set by hand are the start; momentum starts at zero
    start = {"w1": rng.normal(size=(3, 5)), "b1": rng.normal(size=5), "w2": rng.normal(size=(5, 3)), "b2": np.zeros(3)}
    est = MLPClassifier(warm_start=True, momentum=0.9, **full)
    est.coefs_, est.intercepts_ = [start["w1"], start["w2"]], [start["b1"], start["b2"]]
    est.fit(X, y)
    opt = model.Optimiser(momentum=0.9)
    state, loss = model.train_step({**start, **opt.slots(start)}, X, y.astype(float), opt=opt)
    for k, v in zip(("w1", "w2", "b1", "b2"), est.coefs_ + est.intercepts_):
        np.testing.assert_array_equal(v, state[k])
    assert est.loss_curve_ == [float(loss)]


def test_shuffle_false_takes_the_rows_in_order(rows):
    """Minibatches of the rows in order, every epoch; loss_curve_ weighs each step by its rows."""
    X, y = rows
    rng = np.random.default_rng(2)
    start = {"w1": rng.normal(size=(3, 5)), "b1": np.zeros(5), "w2": rng.normal(size=(5, 3)), "b2": np.zeros(3)}
    est = MLPClassifier((5,), shuffle=False, batch_size=16, max_iter=2, warm_start=True)
    est.coefs_, est.intercepts_ = [start["w1"], start["w2"]], [start["b1"], start["b2"]]
    est.fit(X, y)
    state, curve = dict(start), []
    for _ in range(2):
        losses = []
        for rows_ in (slice(0, 16), slice(16, 32), slice(32, 40)):
            state, loss = model.train_step(state, X[rows_], y[rows_].astype(float), opt=model.Optimiser())
            losses.append(float(loss))
        curve.append((16 * losses[0] + 16 * losses[1] + 8 * losses[2]) / 40)
    for k, v in zip(("w1", "w2", "b1", "b2"), est.coefs_ + est.intercepts_):
        np.testing.assert_array_equal(v, state[k])
    np.testing.assert_allclose(est.loss_curve_, curve, rtol=1e-15)


def test_early_stopping_keeps_the_best_epoch(rows):
    X, y = rows
    est = MLPClassifier((6,), batch_size=8, max_iter=40, early_stopping=True, validation_fraction=0.25,
                        n_iter_no_change=3, learning_rate_init=0.3).fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_ and est.best_validation_score_ == max(est.validation_scores_)
    assert est.best_loss_ is None and len(est.loss_curve_) == est.n_iter_
    held = train_test_split(np.arange(40), test_size=0.25, random_state=0)[1]
    assert est.score(X[held], y[held]) == est.best_validation_score_
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        est.partial_fit(X, y)


def test_sample_weight_is_repetition(rows):
    """In full batch, a row of weight 2 counts as the row twice (fit and score)."""
    X, y = rows
    w = np.arange(40) % 3
    est = {"hidden_layer_sizes": (5,), "batch_size": "full", "max_iter": 3}
    weighted = MLPClassifier(**est).fit(X, y, sample_weight=w)
    repeated = MLPClassifier(**est).fit(X.repeat(w, axis=0), y.repeat(w))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=1e-12)
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-12)
    assert weighted.score(X, y, sample_weight=w) == np.average(weighted.predict(X) == y, weights=w)


def test_thread_pools_sized_as_the_commands_and_put_back(pair, monkeypatch):
    """The commands' thread policy while fitting (1 thread at B = 16), threads=N as --threads N,
    and afterwards the pools are as they were (here 2 BLAS threads)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from mlp import backends
    from mlp.backends import threads

    _, raw = pair
    backend = backends.resolve("cpu", "numpy")
    during, fit = [], loop.fit
    monkeypatch.setattr(loop, "fit", lambda *a, **k: during.append(threads.current(backend)) or fit(*a, **k))
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = threads.current(backend)
        assert before == 2 or threads.usable_cores() == 1
        est = MLPClassifier(input="pixels", **SMALL).fit(raw["train-images"], raw["train-labels"])
        assert during == [1] and threads.current(backend) == before
        est.predict(raw["test-images"])
        assert threads.current(backend) == before
        est.set_params(threads=2).fit(raw["train-images"], raw["train-labels"])
        assert during == [1, 2] and threads.current(backend) == before


def _process_state():
    """What a fit could change for the whole process."""
    from threadpoolctl import threadpool_info

    import torch

    return ([(p["internal_api"], p["num_threads"]) for p in threadpool_info()], torch.get_num_threads(),
            dict(os.environ), [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],
            sys.getrecursionlimit(), list(warnings.filters), os.getcwd())


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax", "array_api_strict"])
def test_nothing_global_changes(rows, backend):
    pytest.importorskip(backend)
    pytest.importorskip("torch")
    X, y = rows
    MLPClassifier(backend=backend, **SMALL).fit(X, y)     # the library's first use (its pools, its imports)
    before = _process_state()
    est = MLPClassifier(backend=backend, **SMALL).fit(X, y).partial_fit(X, y)
    outputs = [*est.coefs_, est.predict(X), est.predict_proba(X), est.predict_log_proba(X)]
    assert all(isinstance(a, np.ndarray) for a in outputs) and isinstance(est.score(X, y), float)   # NumPy in, out
    assert _process_state() == before


def test_jax_leaves_the_environment_as_it_was():
    """Its GPU memory setting (XLA_PYTHON_CLIENT_PREALLOCATE) is set while JAX starts, then removed."""
    pytest.importorskip("jax")
    code = ("import os; from mlp import MLPClassifier; import numpy as np; before = dict(os.environ); "
            "X = np.random.default_rng(0).normal(size=(20, 3)); "
            "MLPClassifier(backend='jax', max_iter=1).fit(X, X[:, 0] > 0); print(dict(os.environ) == before)")
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.stdout.split() == ["True"], out.stderr[-2000:]


def test_ctrl_c_leaves_the_estimator_as_it_was(rows, monkeypatch):
    X, y = rows
    est = MLPClassifier(**SMALL).fit(X, y)
    before, proba = dict(vars(est)), est.predict_proba(X)
    real, steps = loop.EagerEngine.run, []

    def run(self, params, first, last):
        steps.append(first)
        if len(steps) == 3:
            signal.raise_signal(signal.SIGINT)
        return real(self, params, first, last)

    monkeypatch.setattr(loop.EagerEngine, "run", run)
    with pytest.raises(KeyboardInterrupt):
        est.set_params(max_iter=3).fit(X[:, :2], y)
    assert vars(est).keys() == before.keys() and est.n_features_in_ == 3
    np.testing.assert_array_equal(est.predict_proba(X), proba)
    fresh = MLPClassifier(**SMALL)
    with pytest.raises(KeyboardInterrupt):
        steps.clear()
        fresh.set_params(max_iter=3).fit(X, y)
    with pytest.raises(NotFittedError):
        fresh.predict(X)


def test_two_threads_fit_as_each_alone(rows, monkeypatch):
    """The thread pools are the process's: a fit in another thread waits while one is sized for a
    run, so each gets the result it gets alone, and the pools end as they began."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    X, y = rows
    settings = [{"threads": 1, "batch_size": 8}, {"threads": 2, "batch_size": 16}]
    alone = [MLPClassifier((5,), max_iter=2, **s).fit(X, y).coefs_ for s in settings]
    inside, most, fit = [], [], loop.fit

    def fit_once_the_other_is_in(*args, **kwargs):
        inside.append(1)
        most.append(len(inside))
        if len(most) == 1:          # the first waits (a bounded while) for the second to come in
            for _ in range(100):
                if len(most) > 1:
                    break
                threading.Event().wait(0.01)
        try:
            return fit(*args, **kwargs)
        finally:
            inside.pop()

    monkeypatch.setattr(loop, "fit", fit_once_the_other_is_in)
    results = [None, None]
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = threadpoolctl.threadpool_info()
        workers = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, MLPClassifier((5,), max_iter=2, **settings[i]).fit(X, y).coefs_)) for i in (0, 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert threadpoolctl.threadpool_info() == before
    assert max(most) == 1
    for mine, theirs in zip(results, alone):
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a, b)


def test_the_data_hint_names_the_python_arguments(tmp_path):
    with pytest.raises(DataError, match=r"point --data-dir \(in Python: data_dir=\) at a folder .* in Python: "
                                        r"download=True\)$"):
        mnist_files(tmp_path, download=False)


def test_the_python_api_page_runs(data_dir, monkeypatch, tmp_path):
    """Every ```python block of docs/python-api.md, in order, in one namespace (offline: the data
    folder is the real one, as `data_dir=`)."""
    import re

    text = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.setenv("MLP_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)
    assert namespace["model"].classes_.tolist() == [3, 7]
