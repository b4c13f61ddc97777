"""K classes: the softmax head held to finite differences, PyTorch autograd and float64 NumPy on every
backend and engine, finite for any logit; the commands end to end on ten classes, their pictures, and
every class list, checkpoint and output they take attacked. GPU cases are marked and skip without one."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from mlp import backends, checkpoint, convert, evaluate, model, predict, train
from mlp.loop import EagerEngine, TrainState, fit, make_engine

from .conftest import (backend_params, call_cli, files_in, make_dataset, needs_jax_gpu, needs_torch_gpu)
from .test_gradients import on, rel_error
from .test_reliability import assert_refused

K = 4


def teacher(n, d, k=K, seed=1):
    """Rows X (n, d) and labels 0..k-1 from a random linear teacher: a problem a softmax can learn."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, np.argmax(X @ rng.standard_normal((d, k)) + 0.3 * rng.standard_normal((n, k)), axis=1).astype(float)


def problem(activation, n=12, d=9, h=7, seed=3):
    """Small parameters of a K-output head with non-zero biases, and every class among the labels."""
    rng = np.random.default_rng(seed)
    params = model.init_params(d, h, rng, init="he", activation=activation, n_out=K)
    params["b1"], params["b2"] = rng.normal(0, 0.5, h), rng.normal(0, 0.5, K)
    return params, rng.standard_normal((n, d)), rng.permutation(np.resize(np.arange(K), n)).astype(float)


# ----------------------------------------------------------------------------- the model


def test_two_classes_keep_the_sigmoid_bit_and_more_have_a_softmax_unit_each():
    assert [model.outputs(k) for k in (2, 3, 10)] == [1, 3, 10]
    numpy = backends.resolve("cpu", "numpy")
    for classes, width in (([3, 7], 1), (list(range(10)), 10)):
        state = TrainState.fresh(numpy, {"classes": classes, "hidden": 5}, 6)
        assert state.params["w2"].shape == (5, width) and state.params["b2"].shape == (width,)
    two = {k: np.asarray(v) for k, v in TrainState.fresh(numpy, {"hidden": 5}, 6).params.items()}
    same = model.init_params(6, 5, np.random.default_rng(0), activation="relu")   # the exercise's draw
    assert all(np.array_equal(two[k], same[k].astype(np.float32)) for k in model.PARAM_NAMES)


@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("backend_device", backend_params())
def test_softmax_gradients_match_central_differences(backend_device, activation):
    backend = backends.resolve(backend_device[1], backend_device[0])
    params, X, y = problem(activation)
    p, Xd, yd = on(backend, params, X, y)
    grads = model.loss_and_grads(p, Xd, yd, activation)[1]

    def loss_at(host):
        return float(backend.to_host(model.loss_and_grads(on(backend, host, X, y)[0], Xd, yd, activation)[0]))

    eps = 1e-6
    for k, value in params.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            step = np.zeros_like(value)
            step[idx] = eps
            numeric[idx] = (loss_at({**params, k: value + step}) - loss_at({**params, k: value - step})) / (2 * eps)
        assert np.abs(numeric).max() > 0, f"{k}: the check would be vacuous"
        assert rel_error(backend.to_host(grads[k]), numeric) < 1e-6, k


@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("backend_device", backend_params())
def test_loss_and_gradients_match_torch_cross_entropy(backend_device, activation):
    """d_z2 = (softmax(z2) - onehot(y)) / B, against autograd of torch.nn.functional.cross_entropy."""
    torch = pytest.importorskip("torch")
    backend = backends.resolve(backend_device[1], backend_device[0])
    X, y = teacher(200, 784, k=10, seed=11)
    params = model.init_params(784, 64, np.random.default_rng(5), init="he", activation=activation, n_out=10)
    params["b1"], params["b2"] = np.random.default_rng(6).normal(0, 0.1, 64), np.linspace(-1, 1, 10)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    z1 = torch.tensor(X) @ t["w1"] + t["b1"]
    z2 = (torch.relu(z1) if activation == "relu" else torch.tanh(z1)) @ t["w2"] + t["b2"]
    reference = torch.nn.functional.cross_entropy(z2, torch.tensor(y, dtype=torch.int64))
    reference.backward()
    loss, grads = model.loss_and_grads(*on(backend, params, X, y), activation)
    assert abs(float(backend.to_host(loss)) - reference.item()) <= 1e-9 * reference.item()
    for k in model.PARAM_NAMES:
        assert rel_error(backend.to_host(grads[k]), t[k].grad.numpy()) < 1e-9, k


def exact_cross_entropy(z, label: int) -> float:
    """log(sum(exp(z))) - z[label], in Python floats through the max (exact enough for any z)."""
    top = max(z)
    return top + math.log(sum(math.exp(v - top) for v in z)) - z[label]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend_device", backend_params())
@pytest.mark.parametrize("logits", [(1e4, -1e4, 0.0, 5.0), (-1e4, -1e4, -1e4, 1e4), (500.0, 499.0, -500.0, 89.0)])
def test_finite_loss_and_grads_for_huge_logits(backend_device, dtype, logits):
    """w2 = 0 and b2 = the logits make every row's z2 the logits exactly; each class as the label."""
    backend = backends.resolve(backend_device[1], backend_device[0])
    params = {"w1": np.ones((5, 3)), "b1": np.zeros(3), "w2": np.zeros((3, K)), "b2": np.array(logits)}
    for label in range(K):
        p, X, y = on(backend, params, np.ones((4, 5)), np.full(4, float(label)), dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise"):   # NumPy: no overflow anywhere
            loss, grads = model.loss_and_grads(p, X, y)
            probs = backend.to_host(model.probabilities(model.forward(p, X)[2]))
        assert float(backend.to_host(loss)) == pytest.approx(exact_cross_entropy(logits, label), rel=1e-6, abs=1e-6)
        assert all(np.isfinite(backend.to_host(g)).all() for g in grads.values())
        softmax = np.exp(np.array(logits) - max(logits)) / np.exp(np.array(logits) - max(logits)).sum()
        np.testing.assert_allclose(backend.to_host(grads["b2"]), softmax - np.eye(K)[label], atol=1e-6)
        assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- backends and engines

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


def train_k(backend_name, device, dtype, activation, batch_size, engine="auto", epochs=3, n=300, d=64):
    backend = backends.resolve(device, backend_name)
    X, y = teacher(n, d)
    cfg = {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, "activation": activation, "seed": 7,
           "hidden": 16, "init": "he", "dtype": dtype, "classes": list(range(K))}
    state = TrainState.fresh(backend, cfg, d)
    X, y = backend.asarray(X, dtype), backend.asarray(y, dtype)
    fit(backend, make_engine(backend, engine, cfg, X, y), state, epochs)
    return np.array(state.losses), {k: backend.to_host(v) for k, v in state.params.items()}


_references = {}


def reference(activation, batch_size):
    if (activation, batch_size) not in _references:
        _references[activation, batch_size] = train_k("numpy", "cpu", "float64", activation, batch_size)
    return _references[activation, batch_size]


def assert_same_run(got, expected, tol):
    (losses, params), (ref_losses, ref_params) = got, expected
    half = len(ref_losses) // 2
    assert losses.shape == ref_losses.shape and ref_losses[half:].mean() < ref_losses[:half].mean(), "it must learn"
    assert np.max(np.abs(losses - ref_losses)) / np.max(np.abs(ref_losses)) <= tol
    for k in model.PARAM_NAMES:
        assert params[k].shape == ref_params[k].shape
        assert np.max(np.abs(params[k] - ref_params[k])) / np.max(np.abs(ref_params[k])) <= tol, k


@pytest.mark.parametrize("batch_size", [64, "full"])
@pytest.mark.parametrize("activation", model.ACTIVATIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend_device", backend_params())
def test_training_matches_float64_numpy(backend_device, dtype, activation, batch_size):
    """Every backend with its default engine (JAX: the compiled scan; torch on CUDA: CUDA graphs)."""
    got = train_k(backend_device[0], backend_device[1], dtype, activation, batch_size)
    assert got[1]["w2"].dtype == np.dtype(dtype)
    assert_same_run(got, reference(activation, batch_size), TOLERANCE[dtype])


JAX_DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="no jax")),
               pytest.param("cuda", marks=[pytest.mark.gpu, needs_jax_gpu])]


@pytest.mark.parametrize("device", JAX_DEVICES)
def test_the_jax_scan_matches_the_eager_loop(device):
    compiled = train_k("jax", device, "float64", "relu", 64, engine="compiled")
    assert_same_run(compiled, train_k("jax", device, "float64", "relu", 64, engine="eager"), 1e-12)


def test_torch_compile_on_the_cpu_matches_the_eager_loop():
    """One small case: torch.compile takes a while to compile each program."""
    pytest.importorskip("torch")
    small = {"epochs": 2, "n": 150, "d": 20}
    compiled = train_k("torch", "cpu", "float32", "relu", 64, engine="compiled", **small)
    assert_same_run(compiled, train_k("torch", "cpu", "float32", "relu", 64, engine="eager", **small), 1e-5)


def cuda_graph_run(monkeypatch, device: str):
    """K-class epochs through the CUDA-graph engine: on a GPU, or on the CPU with tests/test_cuda_graph.py's
    stand-in for torch.cuda ('fake'); and the eager loop's, on the same rows."""
    from mlp.backends import torch_graph

    from .test_cuda_graph import FakeCuda, TorchWithFakeCuda

    backend = backends.resolve("cpu" if device == "fake" else device, "torch")
    if device == "fake":
        monkeypatch.setattr(torch_graph, "torch", TorchWithFakeCuda(FakeCuda(tensor_device=1)))
    X, y = teacher(300, 20)
    cfg = {"seed": 3, "hidden": 8, "dtype": "float64", "classes": list(range(K))}
    X, y = backend.asarray(X, "float64"), backend.asarray(y, "float64")

    def step(state, X, y):
        return model.train_step(state, X, y, opt=model.Optimiser(lr=0.05))

    runs = []
    for engine in (torch_graph.TorchGraphEngine("cuda:1" if device == "fake" else device, step, X, y, 64, segment=3),
                   EagerEngine(backend, step, X, y, 64)):
        state = TrainState.fresh(backend, cfg, 20)
        fit(backend, engine, state, 3)
        getattr(engine, "close", lambda: None)()
        runs.append((np.array(state.losses), {k: backend.to_host(v) for k, v in state.params.items()}))
    return runs


def test_the_cuda_graph_engine_matches_the_eager_loop_on_the_cpu_stand_in(monkeypatch):
    pytest.importorskip("torch")
    graphs, eager = cuda_graph_run(monkeypatch, "fake")
    assert graphs[1]["w2"].shape == (8, K)
    assert_same_run(graphs, eager, 1e-12)


@pytest.mark.gpu
@needs_torch_gpu
def test_the_cuda_graph_engine_matches_the_eager_loop_on_a_gpu(monkeypatch):
    graphs, eager = cuda_graph_run(monkeypatch, "cuda:0")
    assert_same_run(graphs, eager, 1e-12)


def test_dask_chunks_match_float64_numpy():
    """Three chunks of uint8 rows of K classes on an in-process cluster, full batch, as --store trains."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    from mlp.backends.dask_cluster import Options
    from mlp.data import normalise

    from .dask_procs import environ_kept

    rng = np.random.default_rng(0)
    X8, y8 = rng.integers(0, 256, (3000, 30)).astype(np.uint8), np.resize(np.arange(K, dtype=np.uint8), 3000)
    cfg = {"batch_size": "full", "lr": 0.1, "seed": 0, "hidden": 8, "dtype": "float64", "classes": list(range(K))}
    numpy = backends.resolve("cpu", "numpy")
    X, y = numpy.asarray(normalise(X8)), numpy.asarray(y8, "float64")
    expected = TrainState.fresh(numpy, cfg, 30)
    fit(numpy, make_engine(numpy, "auto", cfg, X, y), expected, 4)
    with environ_kept(), LocalCluster(n_workers=1, processes=False, threads_per_worker=1, protocol="tcp://",
                                      host="127.0.0.1", dashboard_address=None) as cluster:
        dask = backends.resolve("cpu", "dask", Options(scheduler=cluster.scheduler_address, chunk_rows=1000))
        try:
            X, y = dask.from_rows(X8, y8, "float64")
            assert X.chunks[0] == (1000,) * 3
            state = TrainState.fresh(dask, cfg, 30)
            fit(dask, make_engine(dask, "auto", cfg, X, y), state, 4)
            got = np.array(state.losses), {k: dask.to_host(v) for k, v in state.params.items()}
        finally:
            dask.close()
    assert_same_run(got, (np.array(expected.losses), {k: numpy.to_host(v) for k, v in expected.params.items()}),
                    1e-10)


# ----------------------------------------------------------------------------- the commands


def ten_run(root, *flags, quiet=True):
    """mlp.train on root/data (H = 8, B = 16) with `flags`."""
    return call_cli(train.main, "--data-dir", root / "data", "--hidden", "8", "--batch-size", "16",
                    *(["--quiet"] if quiet else []), *flags)


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    """root/data: 200 training and 50 test images (noise) of the labels 0-9 in turn; root/c.npz: 2 epochs on them;
    root/four: the labels 1 2 5 8 only; root/images.npy: the test images."""
    root = tmp_path_factory.mktemp("ten")
    images = make_dataset(root / "data", n_train=200, n_test=50)["t10k"][0]
    make_dataset(root / "four", labels=[1, 2, 5, 8])
    np.save(root / "images.npy", images)
    code, _, err = ten_run(root, "--classes", "all", "--epochs", "2", "--save", root / "c.npz")
    assert code == 0, err
    return root


def probabilities_of(path, images) -> np.ndarray:
    """The checkpoint's probabilities for raw images, computed here, in its dtype: normalised with its mean and std."""
    from mlp.data import normalise

    ckpt = checkpoint.load(path)
    X = normalise(images, ckpt.config["dtype"], mean=ckpt.config["mean"], std=ckpt.config["std"])
    return model.predict_proba(ckpt.params, X)


def test_ten_classes_train_validate_stop_log_plot_and_save(ten, tmp_path):
    out = {name: tmp_path / name for name in ("c.npz", "best.npz", "log.csv", "loss.png", "m.json")}
    code, stdout, err = ten_run(ten, "--classes", *map(str, range(10)), "--epochs", "6", "--val-split", "0.2",
                                "--early-stop", "2", "--save", out["c.npz"], "--save-best", out["best.npz"],
                                "--log", out["log.csv"], "--plot", out["loss.png"], "--metrics-json", out["m.json"],
                                quiet=False)
    assert code == 0, err
    assert ("160 rows (+ 40 held out for validation) of 784 features, 10 classes 0-9; H=8 relu he init, lr 0.1, "
            "batch 16, 6 epochs") in err
    m = json.loads(out["m.json"].read_text())
    assert m["stopped_early"] and f"stopped early at epoch {m['completed_epochs']}" in err
    assert m["classes"] == list(range(10)) and np.array(m["confusion"]).shape == (10, 10)
    assert np.sum(m["confusion"]) == 50 and f"({round(50 * m['test_accuracy'])}/50)" in stdout
    for path in (out["c.npz"], out["best.npz"]):
        saved = checkpoint.load(path)
        assert saved.config["classes"] == list(range(10)) and saved.params["w2"].shape == (8, 10)
    assert checkpoint.load(out["best.npz"]).epoch == m["best_epoch"]
    rows = list(csv.DictReader(out["log.csv"].open()))
    assert len(rows) == m["completed_epochs"] and all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    assert out["loss.png"].read_bytes()[:4] == b"\x89PNG"


def test_all_is_every_label_of_the_data_in_order_and_the_labels_are_positions(ten, tmp_path):
    code, _, err = ten_run(ten, "--classes", *map(str, range(10)), "--epochs", "2", "--save", tmp_path / "l.npz")
    assert code == 0, err
    listed, every = checkpoint.load(tmp_path / "l.npz"), checkpoint.load(ten / "c.npz")
    assert every.config["classes"] == list(range(10))
    np.testing.assert_array_equal(listed.losses, every.losses)             # the same run
    code, _, err = call_cli(train.main, "--data-dir", ten / "four", "--classes", "all", "--epochs", "1", "--hidden",
                            "4", "--batch-size", "8", "--quiet", "--save", tmp_path / "four.npz")
    assert code == 0 and checkpoint.load(tmp_path / "four.npz").config["classes"] == [1, 2, 5, 8], err
    # --classes 8 2 5: label 0 is 8, 1 is 2, 2 is 5; evaluate's rows follow that order
    code, _, err = call_cli(train.main, "--data-dir", ten / "four", "--classes", "8", "2", "5", "--epochs", "1",
                            "--hidden", "4", "--batch-size", "8", "--quiet", "--save", tmp_path / "825.npz")
    assert code == 0, err
    code, out, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "825.npz", "--data-dir", ten / "four")
    assert code == 0 and "| 3 classes 8 2 5" in out, err
    assert [line.split()[1] for line in out.splitlines() if line.lstrip().startswith("true")] == ["8", "2", "5"]


def test_a_ten_class_run_resumes_bit_for_bit_and_refuses_other_classes_or_data(ten, tmp_path):
    assert ten_run(ten, "--classes", "all", "--epochs", "1", "--save", tmp_path / "one.npz")[0] == 0
    code, _, err = ten_run(ten, "--classes", "all", "--resume", tmp_path / "one.npz", "--epochs", "2",
                           "--save", tmp_path / "two.npz")
    assert code == 0, err
    resumed, whole = checkpoint.load(tmp_path / "two.npz"), checkpoint.load(ten / "c.npz")
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    make_dataset(tmp_path / "other", n_train=200, n_test=50, seed=1)          # the same labels, other pixels
    for data, flags, message in [
            (ten / "data", ["--classes", "0", "1", "2"], "--classes 0 1 2 contradicts the checkpoint"),
            (ten / "four", ["--classes", "all"], "--classes all is 1 2 5 8 in this data, but the checkpoint "
                                                 f"{ten / 'c.npz'} was trained on 0 1 2 3 4 5 6 7 8 9; resume on"),
            (ten / "four", [], "class 0 is absent from"),
            (tmp_path / "other", [], "(their fingerprints differ)")]:
        assert_refused(call_cli(train.main, "--data-dir", data, "--resume", ten / "c.npz", "--epochs", "3",
                                "--quiet", "--save", tmp_path / "x.npz", *flags), message)
    assert "x.npz" not in files_in(tmp_path)


def test_stores_of_k_classes_train_on_dask_and_other_classes_are_refused(ten, tmp_path):
    """convert --classes all; --classes all with a store is the store's classes; a store whose classes are
    not the run's is refused before any cluster starts."""
    pytest.importorskip("distributed")
    every, three = tmp_path / "every", tmp_path / "three"
    for classes, folder, n in ((["all"], every, "200 rows of classes 0 1 2 3 4 5 6 7 8 9"),
                               (["0", "1", "2"], three, "60 rows of classes 0 1 2")):
        code, out, err = call_cli(convert.main, "--data-dir", ten / "data", "--classes", *classes, "--out", folder)
        assert code == 0 and f"wrote {folder}: {n} " in out, err
    assert json.loads((every / "meta.json").read_text())["classes"] == list(range(10))
    dask = ["--backend", "dask", "--workers", "1", "--batch-size", "full", "--epochs", "1"]
    for store, expected in ((every, list(range(10))), (three, [0, 1, 2])):
        code, _, err = ten_run(ten, *dask, "--store", store, "--classes", "all", "--save", tmp_path / "d.npz")
        assert code == 0, err
        saved = checkpoint.load(tmp_path / "d.npz")
        assert saved.config["classes"] == expected and saved.params["w2"].shape == (8, len(expected))
    for flags, message in [(["--classes", "3", "7"], "holds the classes 0 1 2, the run asks for 3 7"),
                           (["--resume", ten / "c.npz", "--epochs", "3"],
                            "holds the classes 0 1 2, the run asks for 0 1 2 3 4 5 6 7 8 9")]:
        assert_refused(ten_run(ten, "--backend", "dask", "--store", three, *flags), message)


def test_evaluate_prints_a_row_per_true_class_and_its_accuracy(ten):
    m = np.arange(100).reshape(10, 10)
    lines = evaluate.format_confusion(m, list(range(10))).splitlines()
    assert lines[0] == " " * 10 + "".join(f"  pred {c}" for c in range(10)) + "    accuracy"
    assert lines[1] == "    true 0" + "".join(f"{v:>8}" for v in range(10)) + "       0.00%"
    assert lines[10] == "    true 9" + "".join(f"{v:>8}" for v in range(90, 100)) + "      10.48%"
    assert evaluate.format_confusion(np.array([[1005, 5], [7, 1021]]), [3, 7]).splitlines() == [
        "            pred 3  pred 7    accuracy",
        "    true 3    1005       5      99.50%",
        "    true 7       7    1021      99.32%"]
    assert evaluate.format_confusion(np.zeros((2, 2), int), [3, 7]).splitlines()[1].endswith("n/a")
    code, out, err = call_cli(evaluate.main, "--checkpoint", ten / "c.npz", "--data-dir", ten / "data")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].endswith("| 10 classes 0-9") and len(lines) == 2 + 11


def test_predict_gives_each_class_and_its_probability_and_every_probability_in_the_csv(ten, tmp_path):
    images = np.load(ten / "images.npy")[:6]
    np.save(tmp_path / "six.npy", images)
    expected = probabilities_of(ten / "c.npz", images)
    code, out, err = call_cli(predict.main, "--checkpoint", ten / "c.npz", tmp_path / "six.npy")
    assert code == 0, err
    for i, line in enumerate(out.splitlines()):
        k = int(np.argmax(expected[i]))
        assert line == f"{tmp_path / 'six.npy'}[{i}]: P({k}) = {predict.probability(expected[i, k])} -> {k}"
    code, out, err = call_cli(predict.main, "--checkpoint", ten / "c.npz", tmp_path / "six.npy",
                              "--csv", tmp_path / "p.csv")
    assert code == 0, err
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["input", *(f"p_{c}" for c in range(10)), "predicted"]
    probs = np.array([[float(v) for v in row[1:-1]] for row in rows[1:]])
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    assert [int(row[-1]) for row in rows[1:]] == np.argmax(expected, axis=1).tolist()
    counts = np.bincount(np.argmax(expected, axis=1), minlength=10)
    assert out.strip() == "6 images: " + ", ".join(f"{n} predicted {c}" for c, n in enumerate(counts) if n)


def test_evaluate_draws_the_confusion_matrix_the_hidden_units_and_the_mistakes(ten, tmp_path):
    code, out, err = call_cli(evaluate.main, "--checkpoint", ten / "c.npz", "--data-dir", ten / "data", "--plot",
                              tmp_path / "wrong.png", "--plot-confusion", tmp_path / "confusion.png",
                              "--plot-weights", tmp_path / "units.svg")
    assert code == 0, err
    assert f"wrote {tmp_path / 'confusion.png'} (10 x 10, test split)" in err
    assert f"wrote {tmp_path / 'units.svg'} (8 of 8 hidden units)" in err
    assert (tmp_path / "wrong.png").read_bytes()[:4] == (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "units.svg").read_bytes()
    # images of one dimension (rows of 784 pixels) are drawn as strips
    from .idx_files import write_idx

    flat = tmp_path / "flat"
    make_dataset(flat, n_train=40, n_test=20)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(flat / f"{split}-images-idx3-ubyte.gz", np.random.default_rng(n).integers(0, 256, (n, 784), np.uint8))
    assert call_cli(train.main, "--data-dir", flat, "--classes", "all", "--epochs", "1", "--hidden", "4", "--quiet",
                    "--batch-size", "8", "--save", tmp_path / "flat.npz")[0] == 0
    code, _, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "flat.npz", "--data-dir", flat, "--plot",
                            tmp_path / "fw.png", "--plot-weights", tmp_path / "fu.png")
    assert code == 0 and (tmp_path / "fw.png").is_file() and (tmp_path / "fu.png").is_file(), err


# ----------------------------------------------------------------------------- attacks


@pytest.mark.parametrize("flag", ["--plot-confusion", "--plot-weights"])
def test_the_new_pictures_follow_the_output_policy(ten, tmp_path, flag):
    """Refused in one line, before any work, with nothing written: a path given twice, a directory, a read-only
    file, an input, a suffix that names no format. Written through a link, and where a `..` after a link leads."""
    (tmp_path / "kept.png").write_bytes(b"old")
    (tmp_path / "kept.png").chmod(0o444)
    before = files_in(tmp_path)
    for path, more, message in [
            (tmp_path / "x.png", ["--plot", tmp_path / "x.png"], f"--plot and {flag} both name {tmp_path / 'x.png'}"),
            (tmp_path, [], f"{flag} {tmp_path}: is a directory"),
            (tmp_path / "kept.png", [], f"{flag} {tmp_path / 'kept.png'}: is read-only"),
            (ten / "c.npz", [], f"{flag} {ten / 'c.npz'} is also the input --checkpoint"),
            (tmp_path / "x.txt", [], f"{flag} {tmp_path / 'x.txt'}: the suffix .txt names no image format"),
            (tmp_path / "x", [], "no suffix to name the image format")]:
        assert_refused(call_cli(evaluate.main, "--checkpoint", ten / "c.npz", "--data-dir", ten / "data", flag, path,
                                *more), message)
    assert files_in(tmp_path) == before and (tmp_path / "kept.png").read_bytes() == b"old"
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "real.png", tmp_path / "link.png")          # dangling: its folder exists
    os.symlink("a/b", tmp_path / "dir")
    for given, written in ((tmp_path / "link.png", tmp_path / "a" / "real.png"),
                           (tmp_path / "dir" / ".." / "up.png", tmp_path / "a" / "up.png")):
        code, _, err = call_cli(evaluate.main, "--checkpoint", ten / "c.npz", "--data-dir", ten / "data", flag, given)
        assert code == 0 and written.read_bytes()[:4] == b"\x89PNG", err
    assert (tmp_path / "link.png").is_symlink() and not (tmp_path / "up.png").exists()


@pytest.mark.parametrize("words, message", [
    (["3", "3"], "--classes 3 3: give 2 to 10 different digits in label order"),
    (["11"], "argument --classes: must be a whole number from 0 to 9, got 11"),
    (["-1"], "argument --classes: must be a whole number from 0 to 9, got -1"),
    (["3"], "--classes 3: give 2 to 10 different digits in label order"),
    (["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0"], "give 2 to 10 different digits"),
    (["all", "3"], "--classes all 3: 'all' stands alone (every label in the data)"),
    (["3", "all"], "--classes 3 all: 'all' stands alone"),
    (["1", "3"], "class 3 is absent from"),
])
@pytest.mark.parametrize("command", ["train", "convert"])
def test_bad_class_lists_are_one_line(ten, tmp_path, command, words, message):
    out = tmp_path / "out"
    out.mkdir()
    main, flags = ((train.main, ["--save", out / "c.npz", "--quiet"]) if command == "train"
                   else (convert.main, ["--out", out / "store"]))
    assert_refused(call_cli(main, "--data-dir", ten / "four", "--classes", *words, *flags), message, out)


def test_all_refuses_labels_a_checkpoint_or_a_store_cannot_keep(tmp_path):
    """A label file of int8 with -1 among its labels: before, train wrote a checkpoint that its own reader refused."""
    from .idx_files import write_idx

    make_dataset(tmp_path / "data", labels=[3, 7])
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / "data" / f"{split}-labels-idx1-ubyte.gz", np.resize(np.array([-1, 3], np.int8), n))
    out = tmp_path / "out"
    out.mkdir()
    for main, flags in ((train.main, ["--save", out / "c.npz", "--quiet"]), (convert.main, ["--out", out / "s"])):
        assert_refused(call_cli(main, "--data-dir", tmp_path / "data", "--classes", "all", *flags),
                       "(-1 3) must be a list of 2 to 65,536 different labels (whole numbers from 0 to 2,147,483,647); "
                       "choose some with --classes", out)


def edited(source, path, classes):
    """`source` with its config's classes replaced, written as a file would be by hand (the meta's JSON)."""
    arrays = dict(np.load(source))
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["classes"] = classes
    np.savez(path, **{**arrays, "meta": np.array(json.dumps(meta))})
    return path


@pytest.mark.parametrize("classes, message", [
    ([0, 0, 1, 2, 3, 4, 5, 6, 7, 8], "field 'config.classes' is [0, 0, 1,"),
    ([3], "field 'config.classes' is [3], but must be a list of 2 to"),
    ("all", "field 'config.classes' is 'all'"),
    ([0, 1, -2, 3, 4, 5, 6, 7, 8, 9], "field 'config.classes' is"),
    ([1.5, 2, 3, 4, 5, 6, 7, 8, 9, 0], "field 'config.classes' is"),
    (list(range(11)), "w2 has shape (8, 10) but its settings (hidden=8, features=784, 11 classes) need (8, 11)"),
    ([3, 7], "w2 has shape (8, 10) but its settings (hidden=8, features=784, 2 classes) need (8, 1)"),
])
def test_hand_edited_classes_are_refused_by_every_reader(ten, tmp_path, classes, message):
    path = edited(ten / "c.npz", tmp_path / "e.npz", classes)
    for main, argv in ((evaluate.main, ["--checkpoint", path, "--data-dir", ten / "data"]),
                       (predict.main, ["--checkpoint", path, ten / "images.npy"]),
                       (train.main, ["--data-dir", ten / "data", "--resume", path, "--epochs", "3", "--quiet"])):
        assert_refused(call_cli(main, *argv), message)
    assert files_in(tmp_path) == ["e.npz"]


def test_classes_the_data_lacks_name_the_checkpoint_not_a_flag(ten, tmp_path):
    path = edited(ten / "c.npz", tmp_path / "e.npz", [0, 1, 2, 3, 4, 5, 6, 7, 8, 99])   # a list the reader takes
    assert_refused(call_cli(evaluate.main, "--checkpoint", path, "--data-dir", ten / "data"),
                   f"class 99 is absent from {ten / 'data' / 'train-labels-idx1-ubyte.gz'} (labels present: 0, 1, 2, "
                   f"3, 4, 5, 6, 7, 8, 9); evaluate {path} on the data set it was trained on")
    code, out, err = call_cli(predict.main, "--checkpoint", path, ten / "images.npy")   # predict needs no data
    assert code == 0 and len(out.splitlines()) == 50, err


# ----------------------------------------------------------------------------- checkpoints of before, normalisation

#: what the writer of two classes only (58245f6) kept: no solver, momentum, ... or input fields
OLD_CONFIG = ("hidden", "activation", "init", "lr", "batch_size", "seed", "dtype", "classes", "n_features",
              "image_shape", "mean", "std", "n_train", "val_split", "data_fingerprint")
OLD_META = ("saved_on", "target_epochs", "engine", "threads", "validation", "epoch", "step", "step_in_epoch",
            "partial_epoch_seconds", "rng_state", "versions")


def old_format(source, path):
    """`source` (a run of two classes) rewritten member by member as the old writer wrote it."""
    arrays = dict(np.load(source))
    meta = json.loads(str(arrays.pop("meta")))
    old = {"format": "mlp-checkpoint/1", **{k: meta[k] for k in OLD_META},
           "config": {k: meta["config"][k] for k in OLD_CONFIG}}
    np.savez(path, **{k: arrays[k] for k in (*model.PARAM_NAMES, "losses", "epoch_seconds")},
             meta=np.array(json.dumps(old)))
    return path


def test_a_checkpoint_from_before_loads_evaluates_predicts_and_resumes_as_plain_gd(ten, tmp_path):
    data = tmp_path / "pair"
    make_dataset(data, labels=[3, 7])
    run = ["--data-dir", data, "--hidden", "8", "--batch-size", "8", "--quiet"]
    assert call_cli(train.main, *run, "--epochs", "1", "--save", tmp_path / "new.npz")[0] == 0
    assert call_cli(train.main, *run, "--epochs", "2", "--save", tmp_path / "whole.npz")[0] == 0
    old = old_format(tmp_path / "new.npz", tmp_path / "old.npz")
    config = checkpoint.load(old).config
    assert (config["solver"], config["momentum"], config["alpha"], config["input"]) == ("sgd", 0.0, 0.0, "pixels")
    answers = []
    for path in (tmp_path / "new.npz", old):
        code, out, err = call_cli(evaluate.main, "--checkpoint", path, "--data-dir", data)
        assert code == 0 and "classes 3 (label 0) vs 7 (label 1)" in out, err
        answers.append(out.split("\n", 1)[1])
    assert answers[0] == answers[1]
    images = np.load(ten / "images.npy")[:3]
    np.save(tmp_path / "three.npy", images)
    code, out, err = call_cli(predict.main, "--checkpoint", old, tmp_path / "three.npy")
    assert code == 0, err
    p7 = probabilities_of(old, images)[:, 1]                        # sigmoid(z2): the one output is P(7)
    assert out.splitlines() == [f"{tmp_path / 'three.npy'}[{i}]: P(7) = {predict.probability(p)} -> "
                                f"{7 if p >= 0.5 else 3}" for i, p in enumerate(p7)]
    code, _, err = call_cli(train.main, *run, "--resume", old, "--epochs", "2", "--save", tmp_path / "resumed.npz")
    assert code == 0, err
    resumed, whole = checkpoint.load(tmp_path / "resumed.npz"), checkpoint.load(tmp_path / "whole.npz")
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    assert all(np.array_equal(resumed.params[k], whole.params[k]) for k in model.PARAM_NAMES)


def test_evaluate_predict_and_the_estimator_normalise_with_the_checkpoints_mean(ten, tmp_path):
    """A checkpoint whose mean is 0.5: the same predictions by all three, and not those of MNIST's mean."""
    from mlp import MLPClassifier, data

    ckpt = checkpoint.load(ten / "c.npz")
    ckpt.config["mean"] = 0.5
    checkpoint.save(tmp_path / "half.npz", ckpt)
    images = np.load(ten / "images.npy")
    labels = data.read_idx(ten / "data" / "t10k-labels-idx1-ubyte.gz")
    expected = np.argmax(probabilities_of(tmp_path / "half.npz", images), axis=1)
    assert not np.array_equal(expected, np.argmax(probabilities_of(ten / "c.npz", images), axis=1)), "vacuous"
    code, out, err = call_cli(predict.main, "--checkpoint", tmp_path / "half.npz", ten / "images.npy",
                              "--csv", tmp_path / "p.csv")
    assert code == 0, err
    assert [int(row["predicted"]) for row in csv.DictReader((tmp_path / "p.csv").open())] == expected.tolist()
    assert MLPClassifier.load(tmp_path / "half.npz").predict(images).tolist() == expected.tolist()
    code, out, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "half.npz", "--data-dir", ten / "data")
    assert code == 0, err
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, expected), 1)
    assert out.splitlines()[3:] == evaluate.format_confusion(confusion, list(range(10))).splitlines()[1:]
