"""The optimisers (mlp/optimisers.py), in float64 on 2 and on 10 classes: from the same weights,
k steps of SGD with momentum (Nesterov's or not, with or without L2) equal scikit-learn's
MLPClassifier(solver='sgd') and torch.optim.SGD's, and Adam torch.optim.Adam's; every backend
and engine gives what NumPy gives; the optimiser's state is part of the run (a checkpoint keeps
it, a resume mid-epoch is bit for bit the uninterrupted run, an old checkpoint resumes as plain
gradient descent); and the flags that set it are checked."""

from __future__ import annotations

import functools
import importlib.util
import json
import warnings

import numpy as np
import pytest

from mlp import backends, checkpoint, model, train
from mlp.checkpoint import optimiser
from mlp.loop import Interrupted, TrainState, fit, make_engine
from mlp.model import Optimiser   # the spine's name; defined in mlp.optimisers
from mlp.settings import DEFAULTS, RUN_KEYS

from .conftest import call_cli, make_dataset, needs_gpu, needs_jax_gpu, needs_torch_gpu

N, D, H, BATCH = 60, 12, 8, 25          # 3 steps an epoch: 25, 25 and the 10 rows left
BAR = 1e-9                             # against scikit-learn and PyTorch
ENGINE_BAR = 1e-10                     # every backend and engine against NumPy
SOLVERS = {                            # name: (the optimiser's settings, L2's alpha)
    "momentum": ({"momentum": 0.9}, 0.0),
    "momentum-l2": ({"momentum": 0.9}, 0.05),
    "nesterov": ({"momentum": 0.9, "nesterov": True}, 0.0),
    "nesterov-l2": ({"momentum": 0.9, "nesterov": True}, 0.05),
    "adam": ({"solver": "adam", "lr": 0.01}, 0.0),
    "adam-l2": ({"solver": "adam", "lr": 0.01}, 0.05),
}
installed = {name: pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} is not installed")
             for name in ("torch", "jax", "sklearn", "array_api_strict", "distributed")}


def problem(K: int, seed: int = 0):
    """X (N, D), y (N,) holding every one of the K classes, and initial float64 parameters."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = rng.permutation(np.arange(N) % K).astype(np.float64)
    return X, y, model.init_params(D, H, rng, n_out=model.outputs(K))


def batches(epochs: int = 2):
    """The rows of each step, in order (scikit-learn's batches without shuffling)."""
    return [slice(a, min(a + BATCH, N)) for _ in range(epochs) for a in range(0, N, BATCH)]


def ours(params, X, y, opt: Optimiser, alpha: float, activation: str = "relu") -> dict:
    state = {**params, **opt.slots(params)}
    for rows in batches():
        state, _ = model.train_step(state, X[rows], y[rows], opt=opt, activation=activation, alpha=alpha)
    return state


def assert_close(got: dict, expected: dict, bar: float, keys=model.PARAM_NAMES) -> None:
    for k in keys:
        assert np.asarray(got[k]).shape == np.asarray(expected[k]).shape, k
        assert np.max(np.abs(np.asarray(got[k], np.float64) - expected[k])) <= bar, k


# ----------------------------------------------------------------------------- against scikit-learn and PyTorch


def sklearn_sgd(params, X, y, K: int, opt: Optimiser, alpha: float, activation: str) -> dict:
    """MLPClassifier(solver='sgd') from `params`: warm_start keeps the arrays written into it, and
    each fit() starts a fresh SGDOptimizer (velocities at zero)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(H,), activation=activation, solver="sgd", batch_size=BATCH,
                        learning_rate="constant", learning_rate_init=opt.lr, momentum=opt.momentum,
                        nesterovs_momentum=opt.nesterov, alpha=alpha, shuffle=False, max_iter=2, tol=0.0,
                        n_iter_no_change=10**9, random_state=0)
    labels = y.astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.partial_fit(X, labels, classes=np.arange(K))                 # builds the model
        for target, k in zip(clf.coefs_ + clf.intercepts_, ("w1", "w2", "b1", "b2")):
            target[...] = params[k]
        clf.set_params(warm_start=True).fit(X, labels)                   # 2 epochs of 3 steps
    return dict(zip(("w1", "w2", "b1", "b2"), clf.coefs_ + clf.intercepts_))


@installed["sklearn"]
@pytest.mark.parametrize("K", [2, 10])
@pytest.mark.parametrize("name", ["momentum", "momentum-l2", "nesterov", "nesterov-l2"])
def test_sgd_with_momentum_equals_scikit_learns(name, K):
    settings, alpha = SOLVERS[name]
    opt, activation = Optimiser(**settings), "tanh" if K == 10 else "relu"
    X, y, params = problem(K)
    assert_close(ours(params, X, y, opt, alpha, activation), sklearn_sgd(params, X, y, K, opt, alpha, activation), BAR)


def torch_reference(params, X, y, K: int, opt: Optimiser, alpha: float) -> dict:
    """torch.optim.SGD or Adam on autograd's gradients; L2 as weight_decay = alpha / B on the
    weights' param group (the biases' has none)."""
    import torch
    import torch.nn.functional as F

    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    groups = [{"params": [p["w1"], p["w2"]]}, {"params": [p["b1"], p["b2"]], "weight_decay": 0.0}]
    if opt.solver == "adam":
        torch_opt = torch.optim.Adam(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.epsilon)
    else:
        torch_opt = torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for rows in batches():
        torch_opt.param_groups[0]["weight_decay"] = alpha / (rows.stop - rows.start)
        z2 = torch.relu(Xt[rows] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        loss = (F.binary_cross_entropy_with_logits(z2[:, 0], yt[rows]) if K == 2
                else F.cross_entropy(z2, yt[rows].long()))
        torch_opt.zero_grad()
        loss.backward()
        torch_opt.step()
    return {k: v.detach().numpy() for k, v in p.items()}


@installed["torch"]
@pytest.mark.parametrize("K", [2, 10])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_each_optimiser_equals_torch_optims(name, K):
    settings, alpha = SOLVERS[name]
    X, y, params = problem(K, seed=1)
    opt = Optimiser(**settings)
    got = ours(params, X, y, opt, alpha)
    assert_close(got, torch_reference(params, X, y, K, opt, alpha), BAR)
    assert float(got["t"] if "t" in got else 0) == (len(batches()) if opt.solver == "adam" else 0)


def test_plain_gradient_descent_is_the_exercises_update_and_keeps_no_state():
    X, y, params = problem(2)
    opt = Optimiser(lr=0.25)
    assert opt.slots(params) == {}
    loss, grads = model.loss_and_grads(params, X, y)
    new, step_loss = model.train_step(params, X, y, opt=opt)
    assert float(step_loss) == float(loss) and set(new) == set(model.PARAM_NAMES)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(new[k], params[k] - 0.25 * grads[k])


# ----------------------------------------------------------------------------- L2's gradient


def l2_problem(K: int, weighted: bool):
    """7 rows (a batch over which L2 weighs a lot), their weights (or None) and parameters."""
    X, y, params = problem(K, seed=2)
    w = np.random.default_rng(3).uniform(0.5, 2.0, 7) if weighted else None
    return X[:7], y[:7], params, w


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("K", [2, 10])
def test_the_l2_gradient_matches_central_differences(K, weighted):
    X, y, params, w = l2_problem(K, weighted)
    alpha = 0.3
    loss_of = lambda p: float(model.loss_and_grads(p, X, y, alpha=alpha, sample_weight=w)[0])  # noqa: E731
    _, grads = model.loss_and_grads(params, X, y, alpha=alpha, sample_weight=w)
    _, plain = model.loss_and_grads(params, X, y, sample_weight=w)
    B = len(y) if w is None else w.sum()
    for k in model.PARAM_NAMES:                     # the penalty's part: alpha W / B (or sum(w)); none for biases
        penalty = alpha * params[k] / B if k in model.WEIGHTS else 0.0
        np.testing.assert_allclose(grads[k] - plain[k], penalty, rtol=1e-10, atol=1e-15)
    for k in model.PARAM_NAMES:
        numeric = np.zeros_like(params[k])
        for i in np.ndindex(params[k].shape):
            up, down = ({**params, k: params[k].copy()} for _ in range(2))
            up[k][i] += 1e-6
            down[k][i] -= 1e-6
            numeric[i] = (loss_of(up) - loss_of(down)) / 2e-6
        np.testing.assert_allclose(grads[k], numeric, rtol=1e-6, atol=1e-8)


@installed["torch"]
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("K", [2, 10])
def test_the_l2_loss_and_gradient_match_torch_autograd(K, weighted):
    import torch
    import torch.nn.functional as F

    X, y, params, w = l2_problem(K, weighted)
    alpha = 0.3
    loss, grads = model.loss_and_grads(params, X, y, alpha=alpha, sample_weight=w)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    z2 = torch.relu(torch.tensor(X) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    yt = torch.tensor(y)
    rows = (F.binary_cross_entropy_with_logits(z2[:, 0], yt, reduction="none") if K == 2
            else F.cross_entropy(z2, yt.long(), reduction="none"))
    wt = torch.ones(len(y), dtype=torch.float64) if w is None else torch.tensor(w)
    B = wt.sum()
    reference = (wt * rows).sum() / B + 0.5 * alpha * (p["w1"].square().sum() + p["w2"].square().sum()) / B
    reference.backward()
    assert abs(float(loss) - float(reference)) <= 1e-12
    assert_close(grads, {k: v.grad.numpy() for k, v in p.items()}, 1e-12)


# ----------------------------------------------------------------------------- every backend and engine


def run_config(name: str, K: int, epochs: int = 2) -> dict:
    settings, alpha = SOLVERS[name]
    return {**DEFAULTS, "seed": 3, "hidden": H, "init": "he", "dtype": "float64", "classes": list(range(K)),
            "batch_size": BATCH, "epochs": epochs, **settings, "alpha": alpha}


def graph_engine(monkeypatch, capture: bool):
    """The CUDA-graph engine on the CPU: without capture, or captured and replayed by the stand-in
    for torch.cuda of tests/test_cuda_graph.py."""
    from mlp.backends import torch_graph

    from .test_cuda_graph import FakeCuda, TorchWithFakeCuda

    def make(backend, cfg, X, y):
        step = functools.partial(model.train_step, opt=optimiser(cfg), activation=cfg["activation"],
                                 alpha=cfg["alpha"])
        if not capture:
            return torch_graph.TorchGraphEngine("cpu", step, X, y, BATCH, segment=2, capture=False)
        monkeypatch.setattr(torch_graph, "torch", TorchWithFakeCuda(FakeCuda(tensor_device=1)))
        return torch_graph.TorchGraphEngine("cuda:1", step, X, y, BATCH, segment=2)

    return make


def engine_of(name: str, monkeypatch, segment: int = 2):
    """(backend, device, a function making the engine) for an entry of ENGINES."""
    backend, device, engine = name.split("-", 2)
    if engine.startswith("graph"):
        return backend, device, graph_engine(monkeypatch, capture=engine == "graph-stand-in")

    def make(b, cfg, X, y):
        made = make_engine(b, engine, cfg, X, y)
        made.segment = min(made.segment, segment)
        if hasattr(made, "unroll"):
            made.unroll = 2
        return made

    return backend, device, make


ENGINES = [pytest.param(name, marks=marks) for name, marks in (
    ("numpy-cpu-eager", []), ("array_api_strict-cpu-eager", [installed["array_api_strict"]]),
    ("torch-cpu-eager", [installed["torch"]]), ("jax-cpu-eager", [installed["jax"]]),
    ("jax-cpu-compiled", [installed["jax"]]), ("torch-cpu-graph-no-capture", [installed["torch"]]),
    ("torch-cpu-graph-stand-in", [installed["torch"]]),
    ("cupy-cuda-eager", [pytest.mark.gpu, needs_gpu]), ("torch-cuda-eager", [pytest.mark.gpu, needs_torch_gpu]),
    ("torch-cuda-compiled", [pytest.mark.gpu, needs_torch_gpu]),
    ("jax-cuda-compiled", [pytest.mark.gpu, needs_jax_gpu]))]


def trained(name: str, cfg: dict, monkeypatch, *, stop: bool = False, state: TrainState | None = None):
    """A run of `cfg` on the engine `name` from seed 3 (or `state`); stop: after its first segment."""
    backend_name, device, make = engine_of(name, monkeypatch)
    b = backends.resolve(device, backend_name)
    X, y, _ = problem(len(cfg["classes"]))
    X, y = b.asarray(X, "float64"), b.asarray(y, "float64")
    state = state or TrainState.fresh(b, cfg, D)

    class Stop:
        requested = stop

    try:
        fit(b, make(b, cfg, X, y), state, cfg["epochs"], stop=Stop())
    except Interrupted:
        assert stop and 0 < state.step_in_epoch < 3           # stopped inside the first epoch
    return b, state


def host(b, state: TrainState) -> dict:
    return {k: b.to_host(v) for k, v in state.params.items()}


@functools.lru_cache(maxsize=None)
def numpy_run(name: str, K: int):
    b, state = trained("numpy-cpu-eager", run_config(name, K), None)
    return np.array(state.losses), host(b, state)


@pytest.mark.parametrize("name, K", [("nesterov-l2", 2), ("momentum", 10), ("adam-l2", 10), ("adam", 2)])
@pytest.mark.parametrize("engine", ENGINES)
def test_every_backend_and_engine_steps_as_numpy(engine, name, K, monkeypatch):
    """Parameters and slots after 6 steps (a remainder batch in each epoch), float64, <= 1e-10."""
    b, state = trained(engine, run_config(name, K), monkeypatch)
    losses, expected = numpy_run(name, K)
    got = host(b, state)
    slots = optimiser(run_config(name, K)).slots({k: got[k] for k in model.PARAM_NAMES})
    assert set(got) == set(expected) == set(model.PARAM_NAMES) | set(slots) and slots
    assert np.max(np.abs(np.array(state.losses) - losses)) <= ENGINE_BAR
    assert_close(got, expected, ENGINE_BAR, keys=expected)


@installed["distributed"]
def test_dask_keeps_the_state_on_the_client_and_sums_only_gradients():
    """Full batch (Dask's main mode) on an embedded cluster of one worker: as NumPy, <= 1e-10."""
    from mlp.backends.dask_cluster import Options

    from .dask_procs import environ_kept

    for name, K in (("nesterov-l2", 2), ("adam-l2", 10)):
        cfg = {**run_config(name, K, epochs=3), "batch_size": "full"}
        X, y, _ = problem(K)
        n = backends.resolve("cpu", "numpy")
        expected = TrainState.fresh(n, cfg, D)
        fit(n, make_engine(n, "eager", cfg, X, y), expected, 3)
        with environ_kept():
            b = backends.resolve("cpu", "dask", Options(workers=1))
            try:
                state = TrainState.fresh(b, cfg, D)
                fit(b, make_engine(b, "auto", cfg, b.asarray(X, "float64"), b.asarray(y, "float64")), state, 3)
            finally:
                backends.release()
        assert np.max(np.abs(np.array(state.losses) - expected.losses)) <= ENGINE_BAR
        assert_close(host(b, state), expected.params, ENGINE_BAR, keys=expected.params)


def through_checkpoint(b, state: TrainState, cfg: dict, path) -> TrainState:
    """The state written to a checkpoint and read back, as --save and --resume do."""
    config = {**{k: cfg[k] for k in RUN_KEYS}, "n_features": D, "image_shape": [D], "input": "features"}
    checkpoint.save(path, state.to_checkpoint(b, config, {}))
    return TrainState.from_checkpoint(b, checkpoint.load(path))


def assert_same_run(b, resumed: TrainState, whole: TrainState) -> None:
    assert resumed.losses == whole.losses and (resumed.epoch, resumed.step) == (whole.epoch, whole.step)
    expected = host(b, whole)
    assert set(host(b, resumed)) == set(expected)
    for k, v in host(b, resumed).items():
        np.testing.assert_array_equal(v, expected[k], err_msg=k, strict=True)   # shapes too: t is 0-d


@pytest.mark.parametrize("name, K", [("momentum", 10), ("nesterov-l2", 2), ("adam-l2", 10)])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_run_resumed_mid_epoch_from_its_checkpoint_is_the_uninterrupted_run(engine, name, K, monkeypatch,
                                                                              tmp_path):
    cfg = run_config(name, K)
    b, whole = trained(engine, cfg, monkeypatch)
    _, part = trained(engine, cfg, monkeypatch, stop=True)
    _, resumed = trained(engine, cfg, monkeypatch, state=through_checkpoint(b, part, cfg, tmp_path / "mid.npz"))
    assert_same_run(b, resumed, whole)


@installed["torch"]
def test_torch_compile_steps_as_numpy_and_resumes_mid_epoch(tmp_path):
    """torch.compile of the step with Adam's state, L2 and 10 classes: 2 steps a call, then single
    steps and the remainder (compiling takes a minute on 2 cores)."""
    cfg = run_config("adam-l2", 10)
    b, whole = trained("torch-cpu-compiled", cfg, None)
    losses, expected = numpy_run("adam-l2", 10)
    assert np.max(np.abs(np.array(whole.losses) - losses)) <= ENGINE_BAR
    assert_close(host(b, whole), expected, ENGINE_BAR, keys=expected)
    _, part = trained("torch-cpu-compiled", cfg, None, stop=True)
    _, resumed = trained("torch-cpu-compiled", cfg, None, state=through_checkpoint(b, part, cfg, tmp_path / "c.npz"))
    assert_same_run(b, resumed, whole)


# ----------------------------------------------------------------------------- the command


RUNS = {   # the optimiser's flags of a run
    "plain": [],
    "nesterov-l2": ["--momentum", "0.9", "--nesterov", "--alpha", "0.01"],
    "adam-l2": ["--solver", "adam", "--lr", "0.01", "--alpha", "0.01", "--beta2", "0.99"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For each of RUNS, on 40 rows (5 steps an epoch): 'whole' of 2 epochs, 'half' of 1 epoch."""
    root = tmp_path_factory.mktemp("optimiser-runs")
    make_dataset(root / "data", labels=[3, 7])
    out = {"data": root / "data"}
    for name, flags in RUNS.items():
        for part, epochs in (("whole", 2), ("half", 1)):
            out[name, part] = root / f"{name}-{part}.npz"
            code, _, err = cli(root / "data", "--epochs", epochs, "--save", out[name, part], *flags)
            assert code == 0, err
    return out


def cli(data, *args):
    return call_cli(train.main, "--data-dir", data, "--batch-size", "8", "--hidden", "8", "--quiet", *args)


def assert_refused(result, message: str, tmp_path) -> None:
    code, out, err = result
    assert (code, out) == (2, "") and err == f"mlp.train: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", list(RUNS))
def test_resume_continues_the_optimiser_bit_for_bit(runs, name, tmp_path):
    """The settings and the state come from the checkpoint: no optimiser flag is given again."""
    code, _, err = cli(runs["data"], "--resume", runs[name, "half"], "--epochs", "2", "--save", tmp_path / "r.npz")
    assert code == 0, err
    resumed, whole = checkpoint.load(tmp_path / "r.npz"), checkpoint.load(runs[name, "whole"])
    assert resumed.config == whole.config and len(resumed.params) == {"plain": 4, "nesterov-l2": 8}.get(name, 13)
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for k, v in whole.params.items():
        np.testing.assert_array_equal(resumed.params[k], v, err_msg=k, strict=True)


@pytest.mark.parametrize("name, flags, saved", [
    ("adam-l2", ["--solver", "sgd"], "--solver adam"),
    ("adam-l2", ["--beta1", "0.8"], "--beta1 0.9"),
    ("adam-l2", ["--beta2", "0.999"], "--beta2 0.99"),
    ("adam-l2", ["--epsilon", "1e-07"], "--epsilon 1e-08"),
    ("adam-l2", ["--alpha", "0.0"], "--alpha 0.01"),
    ("nesterov-l2", ["--momentum", "0.5"], "--momentum 0.9"),
    ("nesterov-l2", ["--solver", "adam"], "--solver sgd"),
    ("plain", ["--nesterov"], "no --nesterov"),
    ("plain", ["--alpha", "0.001"], "--alpha 0.0"),
])
def test_resuming_with_other_optimiser_settings_is_refused(runs, name, flags, saved, tmp_path):
    assert_refused(cli(runs["data"], "--resume", runs[name, "half"], "--epochs", "2", *flags,
                       "--save", tmp_path / "r.npz"),
                   f"{' '.join(flags)} contradicts the checkpoint {runs[name, 'half']}, which was trained with "
                   f"{saved}; drop the flag to continue that run, or start a new one without --resume", tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--beta1", "0.8"], "--beta1 applies to --solver adam only, and this run's solver is sgd: drop --beta1, or "
                         "train with --solver adam"),
    (["--epsilon", "1e-6"], "--epsilon applies to --solver adam only, and this run's solver is sgd: drop --epsilon, "
                            "or train with --solver adam"),
    (["--solver", "adam", "--momentum", "0.9"], "--momentum applies to --solver sgd only, and this run's solver is "
                                                "adam: drop --momentum, or train with --solver sgd"),
    (["--solver", "adam", "--nesterov"], "--nesterov applies to --solver sgd only, and this run's solver is adam: "
                                         "drop --nesterov, or train with --solver sgd"),
    (["--nesterov"], "--nesterov is a kind of momentum, and this run's --momentum is 0: add --momentum M (e.g. 0.9)"),
    (["--momentum", "0", "--nesterov"], "--nesterov is a kind of momentum, and this run's --momentum is 0: add "
                                        "--momentum M (e.g. 0.9)"),
    (["--momentum", "1"], "argument --momentum: must be a finite number >= 0 and < 1, got 1 (see --help)"),
    (["--solver", "adam", "--beta1", "1"], "argument --beta1: must be a finite number >= 0 and < 1, got 1 "
                                           "(see --help)"),
    (["--solver", "adam", "--beta2", "-0.5"], "argument --beta2: must be a finite number >= 0 and < 1, got -0.5 "
                                              "(see --help)"),
    (["--solver", "adam", "--epsilon", "0"], "argument --epsilon: must be a finite number > 0, got 0 (see --help)"),
    (["--alpha", "inf"], "argument --alpha: must be a finite number >= 0, got inf (see --help)"),
    (["--solver", "rmsprop"], "argument --solver: must be one of sgd, adam, got rmsprop (see --help)"),
])
def test_an_optimiser_flag_that_does_nothing_or_is_out_of_bounds_is_one_line_exit_2(runs, flags, message, tmp_path):
    assert_refused(cli(runs["data"], *flags, "--save", tmp_path / "x.npz", "--metrics-json", tmp_path / "m.json"),
                   message, tmp_path)


def test_plain_gradient_descent_given_explicitly_is_the_default_run(runs, tmp_path):
    code, _, err = cli(runs["data"], "--epochs", "2", "--solver", "sgd", "--momentum", "0", "--alpha", "0",
                       "--save", tmp_path / "p.npz")
    assert code == 0, err
    given, default = checkpoint.load(tmp_path / "p.npz"), checkpoint.load(runs["plain", "whole"])
    np.testing.assert_array_equal(given.losses, default.losses)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(given.params[k], default.params[k])


def as_old_checkpoint(path, old) -> None:
    """`path` as the code before the optimisers wrote it (58245f6's checkpoint.save and train.py):
    the same arrays and metadata, without the optimiser's settings or the model's inputs."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    for key in ("solver", "momentum", "nesterov", "alpha", "beta1", "beta2", "epsilon", "input"):
        del meta["config"][key]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(old, **arrays)


def test_a_checkpoint_from_before_the_optimisers_resumes_as_plain_gradient_descent(runs, tmp_path):
    old = tmp_path / "old.npz"
    as_old_checkpoint(runs["plain", "half"], old)
    ckpt = checkpoint.load(old)
    assert optimiser(ckpt.config) == model.Optimiser(lr=0.1) and ckpt.config["alpha"] == 0.0
    code, out, err = cli(runs["data"], "--resume", old, "--epochs", "2", "--momentum", "0.9")
    assert (code, out) == (2, "") and err == (f"mlp.train: error: --momentum 0.9 contradicts the checkpoint {old}, "
                                              "which was trained with --momentum 0.0; drop the flag to continue that "
                                              "run, or start a new one without --resume\n")
    code, _, err = cli(runs["data"], "--resume", old, "--epochs", "2", "--save", tmp_path / "r.npz")
    assert code == 0, err
    resumed, whole = checkpoint.load(tmp_path / "r.npz"), checkpoint.load(runs["plain", "whole"])
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])


@pytest.mark.parametrize("name, shown, kept", [
    ("adam-l2", "adam (beta1 0.9, beta2 0.99, epsilon 1e-08), lr 0.01, alpha 0.01",
     {"solver": "adam", "lr": 0.01, "alpha": 0.01, "beta1": 0.9, "beta2": 0.99, "epsilon": 1e-8}),
    ("nesterov-l2", "nesterov momentum 0.9, lr 0.1, alpha 0.01",
     {"solver": "sgd", "lr": 0.1, "alpha": 0.01, "momentum": 0.9, "nesterov": True}),
    ("plain", "lr 0.1, batch 8", {"solver": "sgd", "lr": 0.1, "alpha": 0.0, "momentum": 0.0, "nesterov": False}),
])
def test_the_start_line_and_the_metrics_name_the_optimisers_settings(runs, name, shown, kept, tmp_path):
    code, _, err = call_cli(train.main, "--data-dir", runs["data"], "--batch-size", "8", "--hidden", "8",
                            "--epochs", "1", "--metrics-json", tmp_path / "m.json", *RUNS[name])
    assert code == 0, err
    assert f"H=8 relu he init, {shown}" in err.splitlines()[0]
    m = json.loads((tmp_path / "m.json").read_text())
    assert {k: m[k] for k in kept} == kept
