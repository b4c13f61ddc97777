"""`python -m bench --quick` as a smoke test (nothing about speed is asserted), and the
report's arithmetic on made-up records."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from mlp import model

from mlp.bench import cli, report, targets
from mlp.bench.floor import epoch_flops, epoch_gemm_flops, epoch_min_bytes, floor_seconds
from mlp.bench.impls import PEERS

from .conftest import call_cli, run_cli
from .idx_files import write_idx

FIELDS = ("impl", "backend", "device", "device_name", "dtype", "n", "d", "hidden", "median_ms", "min_ms", "max_ms",
          "epochs_timed", "gflops", "fraction_of_floor", "peak_mem_bytes")


QUICK_PEERS = ("torch-expert", "sklearn")   # a process each costs seconds; jax-jit is held to ours in the full sweeps


def test_quick_sweep_end_to_end(data_dir, tmp_path):
    result = run_cli("mlp.bench", "--quick", "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md",
                     "--plot", tmp_path / "b.png", "--backends", "numpy,jax", "--peers", ",".join(QUICK_PEERS),
                     "--data-dir", data_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "b.json").read_text())
    meta = out["meta"]
    for key in ("command", "date", "cpu", "versions", "platform"):
        assert meta[key], key
    assert meta["command"].startswith("python -m mlp.bench --quick --json ")   # as typed (python -m bench: test_busy)
    records = out["records"]
    ours = [r for r in records if r["impl"] == "ours" and r["backend"] == "numpy"]
    # beside the default job's configuration (--quick's: B = 512), one row of ten classes and one of Adam
    assert [(r["batch"], r["engine"], r["classes"], r["optimiser"], r["status"]) for r in ours] == [
        (None, "eager", 2, "sgd", "ok"), (512, "eager", 2, "sgd", "ok"), (512, "eager", 10, "sgd", "ok"),
        (512, "eager", 2, "adam", "ok")]
    assert all(r["second_loss_rel_diff"] <= 1e-4 for r in ours[1:])   # the first step's update, checked too
    # each engine is its own row, in full batch and minibatch alike
    jax_rows = {(r["batch"], r["engine"]) for r in records if r["impl"] == "ours" and r["backend"] == "jax"}
    assert jax_rows == {(None, "eager"), (None, "compiled"), (512, "eager"), (512, "compiled")}
    for r in records:
        assert r["status"] in ("ok", "skipped", "error"), r
        if r["status"] == "ok":
            for key in FIELDS:
                assert r.get(key) is not None, (key, r)
            assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["epochs_timed"] == 3 or r["epochs_per_call"] > 1 and r["epochs_timed"] == r["epochs_per_call"]
            assert r["d"] == 784
            assert r["loss_check"] == "ok", r  # every implementation's first step has ours's loss
            assert 0 < r["fraction_of_floor"]
        else:
            assert r["reason"], r
    # every peer asked for is accounted for: measured, or listed with the reason it was not
    assert {r["impl"] for r in records} == {"ours", *QUICK_PEERS}
    assert {r["batch"] for r in records if r["impl"] == "torch-expert"} == {None, 512}
    assert any(p.get("status", "ok") == "ok" and p["library"] == "numpy" for p in out["probes"])
    table = (tmp_path / "b.md").read_text()
    assert "| ours (numpy, eager) | cpu | float32 | 2,000 | 32 | full |" in table
    assert "| ours (jax, compiled) | cpu | float32 | 2,000 | 32 | 512 | 2 | sgd |" in table
    assert "| ours (numpy, eager) | cpu | float32 | 2,000 | 32 | 512 | 10 | sgd |" in table
    assert "| ours (numpy, eager) | cpu float32 N=2,000 H=32 B=512 adam | " in table   # the update's cost
    assert "Median ms per minibatch epoch" in table
    assert "no GPU was measured in this run" in table
    assert "- ours (numpy, eager) on cpu float32 N=12,396 H=128 B=full: at most 1.25× the floor's time: no such row " \
           "in this run: not measured" in table    # --quick measures N = 2,000 only
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("b.json", "b.md", "b.png"):   # a line for each output written, as the trainer's
        assert f"wrote {tmp_path / name}" in result.stderr
    assert table.strip() in result.stdout


def test_bad_bench_flags_are_one_line():
    result = run_cli("bench", "--peers", "tensorflow")
    assert result.returncode == 2
    assert result.stderr.strip() == "bench: error: unknown peer 'tensorflow': use " + ", ".join(PEERS) + " or none"
    result = run_cli("bench", "--sizes", "0")
    assert result.returncode == 2 and "sizes must be whole numbers from 1 to 2**62, got 0" in result.stderr
    result = run_cli("bench", "--backends", "auto")    # a row names its library; it was skipped as "not installed"
    assert result.returncode == 2 and "--backends: unknown backend 'auto': use numpy, cupy" in result.stderr


@pytest.mark.parametrize("n, d, h, k", [(10, 784, 128, 1), (257, 31, 7, 1), (1000, 784, 1024, 1), (300, 784, 128, 10)])
def test_flop_count_agrees_with_pytorchs_counter(n, d, h, k):
    """The matrix-product FLOPs of an epoch (K outputs), as PyTorch's FlopCounterMode counts them for
    a step that autograd differentiates (it counts matrix products only; the elementwise terms are an
    estimate)."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(n, d, generator=g), torch.randint(0, 2 if k == 1 else k, (n,), generator=g)
    shapes = model.param_shapes(d, h, k).values()
    w1, b1, w2, b2 = (torch.randn(*s, generator=g, requires_grad=True) for s in shapes)
    with FlopCounterMode(display=False) as counter:
        z2 = torch.relu(X @ w1 + b1) @ w2 + b2
        F = torch.nn.functional
        (F.binary_cross_entropy_with_logits(z2[:, 0], y.float()) if k == 1 else F.cross_entropy(z2, y)).backward()
    assert epoch_gemm_flops(n, d, h, k) == counter.get_total_flops()
    # the update runs once per step, over every parameter
    n_params = sum(int(np.prod(s)) for s in shapes)
    assert epoch_flops(n, d, h, steps=5, k=k) - epoch_flops(n, d, h, steps=1, k=k) == 4 * 2 * n_params


def test_byte_count_and_floor():
    n, d, h = 10, 784, 128
    X, y = np.zeros((n, d), np.float32), np.zeros(n, np.float32)
    params = [np.zeros(s, np.float32) for s in model.param_shapes(d, h).values()]
    # reading X and y once, and the parameters in and out
    assert epoch_min_bytes(n, d, h, 4) == X.nbytes + y.nbytes + 2 * sum(p.nbytes for p in params)
    # compute-bound at these shapes: the floor is the FLOP time; at H=1 and a huge GEMM rate, the bytes
    assert floor_seconds(12_396, 784, 128, 4, 1e11, 1e10) == pytest.approx(epoch_flops(12_396, 784, 128) / 1e11)
    assert floor_seconds(12_396, 784, 1, 4, 1e15, 1e9) == pytest.approx(epoch_min_bytes(12_396, 784, 1, 4) / 1e9)


def fake(impl, n, h, ms, backend=None, device="cpu", dtype="float32", loss=0.7, engine=None, batch=None):
    return {"impl": impl, "backend": backend, "engine": engine or ("eager" if impl == "ours" else None),
            "batch": batch, "device": device, "dtype": dtype, "n": n, "d": 784, "hidden": h, "median_ms": ms,
            "min_ms": ms, "max_ms": ms, "epochs_timed": 20, "status": "ok", "initial_loss": loss}


def test_report_arithmetic():
    probes = [{"library": "numpy", "device": "cpu", "dtype": "float32", "gemm_flops_per_s": 1e11,
               "copy_bytes_per_s": 1e10, "gemm_size": 2048}]
    records = [fake("ours", 1000, 100, 10.0, "numpy"), fake("ours", 4000, 100, 40.0, "numpy"),
               fake("ours", 16000, 100, 160.0, "numpy"), fake("torch-manual", 1000, 100, 5.0),
               fake("sklearn", 1000, 100, 20.0, loss=0.8),
               fake("ours", 1000, 100, 1.0, "cupy", device="cuda:0"),
               fake("ours", 1000, 100, 50.0, "numpy", batch=64), fake("ours", 1000, 100, 5.0, "jax", "cuda:0",
                                                                     engine="compiled", batch=64)]
    references = {(n, 100, b, 2, "sgd"): (0.7, None) for n in (1000, 4000, 16000) for b in (None, 64)}
    report.enrich(records, probes, references)
    assert records[3]["ratio_to_ours"] == 0.5 and records[4]["ratio_to_ours"] == 2.0
    assert records[3]["loss_check"] == "ok" and records[4]["loss_check"] == "MISMATCH"
    assert records[5]["loss_check"] == "ok"       # a GPU row is held to float64 NumPy, with or without CuPy
    assert records[0]["floor_ms"] == pytest.approx(epoch_flops(1000, 784, 100) / 1e11 * 1e3)
    assert records[0]["fraction_of_floor"] == pytest.approx(records[0]["floor_ms"] / 10.0)
    assert records[5]["floor_ms"] is None  # no probe for the GPU: no floor, and no invented one
    assert records[6]["flops"] == epoch_flops(1000, 784, 100, steps=16)   # the update runs once per step
    full, mini = report.speedups(records)
    assert full["speedup"] == pytest.approx(10.0) and full["n"] == 1000 and full["batch"] is None
    assert mini["speedup"] == pytest.approx(10.0) and mini["batch"] == 64 and mini["gpu_impl"] == "ours (jax, compiled)"
    meta = {"devices": ["cuda:0"]}
    assert report.no_speedup_reason(meta).startswith("CPU not measured in this run")
    assert report.no_speedup_reason({"devices": ["cpu"]}).startswith("no GPU was measured")


def test_plot_gives_every_line_its_own_colour_and_says_when_a_panel_has_nothing(tmp_path, monkeypatch):
    """Eleven implementations (more than tab10's ten colours) and a float64 H=1024 panel whose every
    point was skipped: no two lines share a colour, and that panel is a note, not empty axes."""
    pytest.importorskip("matplotlib")
    from mlp import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi: figures.append(fig))
    impls = ["torch-manual", "torch-expert", "torch-autograd", "torch-compile", "jax-jit", "sklearn"]
    ours = [("numpy", "eager"), ("torch", "eager"), ("torch", "compiled"), ("jax", "eager"), ("jax", "compiled")]
    records = [fake("ours", n, h, 10.0, b, dtype=dt, engine=e) for b, e in ours for n in (1000, 4000)
               for h in (128, 1024) for dt in ("float32", "float64") if not (dt == "float64" and h == 1024)]
    records += [fake(p, n, h, 10.0, dtype=dt) for p in impls for n in (1000, 4000)
                for h in (128, 1024) for dt in ("float32", "float64") if not (dt == "float64" and h == 1024)]
    records += [{**fake("ours", 1000, 1024, 0.0, "numpy", dtype="float64"), "status": "skipped", "reason": "slow"}]
    result = {"records": records, "meta": {"cpu": "test", "devices": ["cpu"]}}
    assert report.plot(result, tmp_path / "p.png")
    (fig,) = figures
    colours = {}
    for ax in fig.axes:
        for line in ax.lines:
            if not line.get_label().startswith("floor"):
                colours.setdefault(line.get_label(), line.get_color())
    assert len(colours) == 11 and len({str(c) for c in colours.values()}) == 11, colours
    (empty,) = [ax for ax in fig.axes if not ax.axison and ax.texts and "H=1024" in ax.texts[0].get_text()]
    assert "float64, full batch, H=1024" in empty.texts[0].get_text() and "none measured" in empty.texts[0].get_text()


# ----------------------------------------------------------------------------- the bench fails loudly


@pytest.mark.parametrize("impl, backend, n, hidden, batch, classes, optimiser", [
    ("ours", "numpy", 2_000, 8, None, 2, "sgd"), ("ours", "numpy", 2_000, 8, 512, 2, "sgd"),
    ("ours", "numpy", 12_896, 4, None, 2, "sgd"),                      # beyond the real rows: resampled
    ("ours", "numpy", 2_000, 8, 512, 10, "adam"), ("ours", "torch", 2_000, 8, 512, 2, "momentum"),
    ("torch-expert", "torch", 2_000, 8, 512, 10, "sgd"), ("torch-expert", "torch", 2_000, 8, 512, 2, "adam"),
    ("torch-expert", "torch", 2_000, 8, 512, 10, "momentum"),
    ("mlp.MLPClassifier", "numpy", 1_000, 8, 256, 10, "sgd"), ("sklearn", "sklearn", 1_000, 8, 256, 10, "sgd")])
def test_the_first_steps_losses_are_float64_numpys(data_dir, impl, backend, n, hidden, batch, classes, optimiser):
    """Each kind of row in float64 against the reference: the first step's loss (in minibatch on the
    first B rows of the seeded permutation; ten classes on drawn labels), and in minibatch the
    second's, after the first step of the row's optimiser (NumPy's float64 Adam, momentum)."""
    pytest.importorskip(backend)
    from mlp.bench import impls, reference

    train = reference.training_split(data_dir, classes)
    made = impls.make(impl, backend, "cpu", "float64", optimiser, batch=batch, classes=classes)
    X, y = reference.training_rows(data_dir, n, "float64", classes=classes)
    with warnings.catch_warnings():        # what scikit-learn's row turns off in its worker process
        made.setup(X, y, model.init_params(X.shape[1], hidden, made.rng, init="he", activation="relu",
                                           n_out=model.outputs(classes)))
        made.epoch()
    first, second = reference.step_losses(train.X, train.y, n, hidden, batch, classes, optimiser)
    assert made.first_loss() == pytest.approx(first, rel=1e-9, abs=0)
    if impl != "sklearn":   # its step losses are each epoch's mean: the first is its model's at our start
        assert made.second_loss() == (None if batch is None else pytest.approx(second, rel=1e-9, abs=0))
    if classes == 10:       # MNIST 3 and 7 only: ten classes' labels are drawn, all of them
        assert sorted(set(y.tolist())) == list(range(10))


def test_ten_classes_take_a_ten_class_sets_own_labels_and_else_draw_them(tmp_path):
    from mlp.bench import reference

    rng = np.random.default_rng(1)
    for name, digits in (("ten", np.arange(200) % 10), ("two", np.where(np.arange(200) % 2, 7, 3))):
        (tmp_path / name).mkdir()
        for split in ("train", "t10k"):
            write_idx(tmp_path / name / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (200, 28, 28), np.uint8))
            write_idx(tmp_path / name / f"{split}-labels-idx1-ubyte.gz", digits.astype(np.uint8))
    assert reference.training_split(tmp_path / "ten", 10, download=False).y.tolist() == (np.arange(200) % 10).tolist()
    drawn = reference.training_split(tmp_path / "two", 10, download=False).y
    assert drawn.tolist() == np.random.default_rng(0).integers(0, 10, 200).tolist()
    assert reference.training_split(tmp_path / "two", 2, download=False).y.tolist() == (np.arange(200) % 2).tolist()


def test_the_second_step_depends_on_the_optimiser(data_dir):
    from mlp.bench import reference

    train = reference.training_split(data_dir)
    steps = {opt: reference.step_losses(train.X, train.y, 2_000, 8, 512, 2, opt) for opt in ("sgd", "momentum", "adam")}
    assert len({first for first, _ in steps.values()}) == 1 and len({s for _, s in steps.values()}) == 3
    assert reference.step_losses(train.X, train.y, 2_000, 8, 512, 2) != reference.step_losses(
        train.X, train.y, 2_000, 8, None, 2)


def test_problems_are_errors_mismatches_and_unchecked_rows_not_skips():
    from mlp.bench import reference

    ok = fake("ours", 1000, 100, 1.0, "jax", device="cuda:0", engine="compiled", loss=0.7)
    off = fake("torch-expert", 1000, 100, 1.0, device="cuda:0", loss=0.71)
    unchecked = fake("ours", 2000, 100, 1.0, "torch", device="cuda:0", loss=0.7)
    nan = fake("ours", 1000, 100, 1.0, "cupy", device="cuda:0", loss=float("nan"))
    error = {**fake("ours", 1000, 100, 1.0, "cupy", device="cuda:0"), "status": "error", "reason": "Boom: x"}
    skipped = {**fake("jax-jit", 1000, 100, 1.0, device="cuda:0"), "status": "skipped",
               "reason": "jax is not installed"}
    probe = {"library": "cupy", "device": "cuda:0", "dtype": "float32", "status": "error", "reason": "no driver"}
    records = [ok, off, unchecked, nan, error, skipped]
    reference.check(records, {(1000, 100, None, 2, "sgd"): (0.7, None)})
    assert [r.get("loss_check") for r in records] == ["ok", "MISMATCH", None, "MISMATCH", None, None]
    found = reference.problems(records, [probe])
    assert found[0] == "probe cupy on cuda:0 float32: error: no driver"
    assert found[1] == "ours (cupy, eager) on cuda:0 float32 N=1,000 H=100 B=full: error: Boom: x"
    assert found[2].startswith("torch-expert on cuda:0 float32 N=1,000 H=100 B=full: first step's loss 0.71 is 0.014 "
                               "away from float64 NumPy's 0.7 (tolerance 0.0001)")
    assert found[3] == ("ours (torch, eager) on cuda:0 float32 N=2,000 H=100 B=full: its first step's loss was not "
                        "checked against float64 NumPy")
    assert "ours (cupy, eager)" in found[4] and "nan" in found[4] and len(found) == 5
    assert reference.problems([ok]) == []
    busy_error = {**fake("ours", 1000, 100, 1.0, "numpy", batch=64), "busy": 2, "status": "error", "reason": "died"}
    assert reference.problems([ok], (), [busy_error]) == [
        "ours (numpy, eager) on cpu float32 N=1,000 H=100 B=64 beside 2 competing processes: error: died"]
    assert reference.skipped(records) == "1 rows skipped (not errors; see 'Not measured'): jax is not installed"
    # a minibatch row whose second step (after the first update) is off: Adam's update, say
    adam = {**fake("torch-expert", 1000, 100, 1.0, batch=64), "optimiser": "adam", "second_loss": 0.6}
    reference.check([adam], {(1000, 100, 64, 2, "adam"): (0.7, 0.65)})
    assert adam["loss_check"] == "MISMATCH" and reference.problems([adam]) == [
        "torch-expert on cpu float32 N=1,000 H=100 B=64 adam: second step's loss 0.6 is 0.077 away from float64 "
        "NumPy's 0.65 (tolerance 0.0001)"]
    # a device asked for with nothing measured on it: a sweep that skipped everything there fails
    assert reference.problems([ok, {**skipped, "device": "cpu"}]) == [
        "nothing was measured on cpu: every row there was skipped or failed"]


def test_bench_exit_code_is_1_on_any_problem_and_the_lines_say_why(capsys):
    import argparse

    from mlp.bench import cli

    args = argparse.Namespace(json=None, markdown=None, plot=None)
    meta = {"cpu": "a CPU", "command": "python -m bench", "date": "today", "devices": ["cpu"]}
    good = fake("ours", 1000, 100, 1.0, "numpy", loss=0.7)
    refs = {(1000, 100, None, 2, "sgd"): (0.7, None)}
    result = {"meta": meta, "probes": [], "records": report.enrich([good], [], refs)}
    assert cli.write_outputs(args, result) == 0
    assert "bench:" not in capsys.readouterr().err
    bad = {**fake("ours", 1000, 100, 1.0, "cupy", device="cuda:0"), "status": "error", "reason": "Boom"}
    result = {"meta": meta, "probes": [], "records": report.enrich([good, bad], [], refs)}
    assert cli.write_outputs(args, result) == 1
    assert "bench: ours (cupy, eager) on cuda:0 float32 N=1,000 H=100 B=full: error: Boom" in capsys.readouterr().err
    busy_bad = {**fake("ours", 1000, 100, 1.0, "numpy", loss=0.7), "busy": 1, "status": "error", "reason": "Boom"}
    result = {"meta": meta, "probes": [], "busy": [busy_bad],
              "records": report.enrich([{**good, "busy": 0}], [], refs)}
    assert cli.write_outputs(args, result) == 1   # an error beside competitors (--busy) fails the bench too
    assert "beside 1 competing process: error: Boom" in capsys.readouterr().err


def test_peak_memory_is_read_on_the_rows_device(monkeypatch):
    """Stand-ins for torch.cuda, CuPy and JAX record which device each reading names: cuda:1's."""
    import sys
    import types

    from mlp.bench.worker import PeakMemory

    torch = pytest.importorskip("torch")
    seen = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: seen.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: seen.append(("max", device)) or 7)
    current = [0]

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            self.previous, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.previous

    pool = types.SimpleNamespace(free_all_blocks=lambda: seen.append(("free", current[0])),
                                 total_bytes=lambda: seen.append(("total", current[0])) or 9)
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=Device), get_default_memory_pool=lambda: pool)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    jax = pytest.importorskip("jax")
    gpus = [types.SimpleNamespace(memory_stats=lambda i=i: {"peak_bytes_in_use": 10 + i}) for i in range(2)]
    monkeypatch.setattr(jax, "devices", lambda kind=None: gpus)
    peaks = []
    for impl, backend in (("ours", "torch"), ("ours", "cupy"), ("jax-jit", None)):
        memory = PeakMemory(impl, backend, "cuda:1")
        memory.start()
        peaks.append(memory.peak(None))
    assert peaks == [7, 9, 11]
    assert seen == [("reset", 1), ("max", 1), ("free", 1), ("total", 1)]


def test_a_library_that_cannot_use_the_device_is_an_error_and_a_missing_one_a_skip(capsys):
    """On a GPU sweep, rows must not pass as skipped because an installed library sees no GPU."""
    import importlib.util

    from mlp.bench import worker

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available() or importlib.util.find_spec("cupy") is not None:
        pytest.skip("needs a PyTorch that sees no GPU and no CuPy")
    spec = {"mode": "measure", "impl": "ours", "engine": "eager", "batch": None, "device": "cuda",
            "dtype": "float32", "n": 10, "hidden": 4, "lr": 0.1}
    results = []
    for backend in ("torch", "cupy"):
        worker.main([json.dumps({**spec, "backend": backend})])
        results.append(json.loads(capsys.readouterr().out.split(worker.RESULT_MARK)[1]))
    assert results[0]["status"] == "error" and "this PyTorch build sees no GPU" in results[0]["reason"]
    assert (results[1]["status"], results[1]["reason"]) == ("skipped", "cupy is not installed")


# ----------------------------------------------------------------------------- the targets


def timed(impl, ms, lo, hi, **kw):
    """A made-up CPU row at the targets' configuration (float32, N = 12,396, H = 128) whose epochs
    took from `lo` to `hi` ms, `ms` the median."""
    return {**fake(impl, 12_396, 128, ms, backend="numpy" if impl == "ours" else None, **kw), "min_ms": lo,
            "max_ms": hi, "threads_requested": "auto"}


def test_targets_say_what_was_measured_and_name_their_noise():
    records = [timed("ours", 120.0, 118.0, 122.0), timed("sklearn", 58.0, 58.0, 58.0),
               timed("torch-manual", 200.0, 190.0, 210.0), timed("torch-expert", 118.0, 100.0, 140.0),
               timed("ours", 50.0, 45.0, 60.0, batch=64),
               {**timed("torch-expert", 40.0, 40.0, 40.0, batch=64), "status": "skipped", "reason": "made up"}]
    records[0]["floor_ms"] = 100.0
    result = {"meta": {"real_rows": 12_396, "usable_cores": 2}, "records": records}
    lines = targets.lines(result)
    assert lines[0].startswith("Project targets: goals the project sets for its own code")
    cpu = "on cpu float32 N=12,396 H=128 B=full"
    for line in (
            f"- ours (numpy, eager) {cpu}: at most 1.25× the floor's time: ours (numpy, eager) took 1.20× the "
            "floor's time (120.00 ms against 100.00 ms); spread 1.18–1.22×: met",
            f"- ours (numpy, eager) {cpu}: at most 1.00× torch-manual's time: ours (numpy, eager) took 0.60× "
            "torch-manual's time (it is 1.67× faster); spread 0.56–0.64×: met",
            f"- ours (numpy, eager) {cpu}: at most 0.80× sklearn's time: ours (numpy, eager) took 2.07× sklearn's "
            "time (sklearn is 2.07× faster); spread 2.03–2.10×: MISSED",
            # 1.02x, but ours's epochs took 118-122 ms and torch-expert's 100-140: the limit lies inside the spread
            f"- the fastest of ours {cpu}: at most 1.00× torch-expert's time: ours (numpy, eager) took 1.02× "
            "torch-expert's time (torch-expert is 1.02× faster); spread 0.84–1.22×: within noise",
            "- the fastest of ours on cpu float32 N=12,396 H=128 B=64: at most 1.00× torch-expert's time: "
            "ours (numpy, eager): torch-expert not measured (skipped: made up): not measured",
            "- ours (jax, compiled) on cuda float32 N=12,396 H=128 B=64: at most 6 ms per epoch: no such row in this "
            "run: not measured"):
        assert line in lines, (line, lines)
    assert len(lines) == 2 + len(targets.TARGETS)      # every target, once: a configuration each here
    assert {v["verdict"] for v in targets.verdicts(result)} == {"met", "MISSED", "within noise", "not measured"}


def test_optimisers_and_estimators_are_held_to_their_peers_and_the_update_has_a_cost_per_step():
    """Made-up rows of the default job: Adam and momentum, the fastest of ours against torch-expert (with
    torch.optim); our MLPClassifier against scikit-learn's for two and ten classes; the update's cost."""
    job = {"batch": 64}
    records = [timed("ours", 100.0, 100.0, 100.0, **job), timed("torch-expert", 80.0, 80.0, 80.0, **job)]
    for opt, ours_ms, expert_ms in (("adam", 150.0, 140.0), ("momentum", 130.0, 100.0)):
        records += [{**timed("ours", ours_ms, ours_ms, ours_ms, **job), "optimiser": opt},
                    {**timed("torch-expert", expert_ms, expert_ms, expert_ms, **job), "optimiser": opt}]
    for classes, ours_ms in ((2, 100.0), (10, 300.0)):
        records += [{**timed(impl, ms, ms, ms, **job), "classes": classes}
                    for impl, ms in (("mlp.MLPClassifier", ours_ms), ("sklearn", 1000.0))]
    found = targets.lines({"meta": {"real_rows": 12_396, "usable_cores": 2}, "records": records})
    job = "on cpu float32 N=12,396 H=128 B=64"
    for line in (f"- the fastest of ours {job} adam: at most 1.10× torch-expert's time: ours (numpy, eager) took "
                 "1.07× torch-expert's time (torch-expert is 1.07× faster); spread 1.07–1.07×: met",
                 f"- the fastest of ours {job} momentum: at most 1.10× torch-expert's time: ours (numpy, eager) "
                 "took 1.30× torch-expert's time (torch-expert is 1.30× faster); spread 1.30–1.30×: MISSED",
                 f"- mlp.MLPClassifier {job}: at most 0.20× sklearn's time: mlp.MLPClassifier took 0.10× sklearn's "
                 "time (it is 10.00× faster); spread 0.10–0.10×: met",
                 f"- mlp.MLPClassifier {job} C=10: at most 0.20× sklearn's time: mlp.MLPClassifier took 0.30× "
                 "sklearn's time (it is 3.33× faster); spread 0.30–0.30×: MISSED"):
        assert line in found, (line, found)
    # ceil(12,396 / 64) = 194 steps: Adam's 50 ms more per epoch is 257.7 µs per step
    assert report.update_costs(records)[2:] == [
        "| ours (numpy, eager) | cpu float32 N=12,396 H=128 B=64 adam | 100.0 | 150.0 | +257.7 |",
        "| torch-expert | cpu float32 N=12,396 H=128 B=64 adam | 80.0 | 140.0 | +309.3 |",
        "| ours (numpy, eager) | cpu float32 N=12,396 H=128 B=64 momentum | 100.0 | 130.0 | +154.6 |",
        "| torch-expert | cpu float32 N=12,396 H=128 B=64 momentum | 80.0 | 100.0 | +103.1 |"]


def test_the_default_jobs_other_rows_are_planned_beside_it():
    """Ten classes on every engine and torch-expert, on the CPU and the GPU; momentum and Adam on the CPU
    for three of ours and torch-expert; the estimators for two and ten classes; --quick: one row each."""
    args = cli.build_parser().parse_args([])
    sweep = cli.plan(args)
    job = [c for c in cli.configs(args, sweep, "cpu", 12_396) if c[:4] == ("float32", 128, 12_396, 64)]
    planned = {(c[4], c[5]): c[6] for c in job if c[6][0][0] == "ours"}
    engines = [("ours", "numpy", "eager")] + [("ours", b, e) for b in ("torch", "jax") for e in ("eager", "compiled")]
    assert planned[(10, "sgd")] == [*engines, ("torch-expert", "torch", None)]
    for opt in ("momentum", "adam"):
        assert planned[(2, opt)] == [("ours", "numpy", "eager"), ("ours", "torch", "eager"),
                                     ("ours", "jax", "compiled"), ("torch-expert", "torch", None)]
    estimators = [(c[4], c[6]) for c in job if c[6][0][0] == "mlp.MLPClassifier"]
    assert estimators == [(c, [("mlp.MLPClassifier", "numpy", None), ("sklearn", "sklearn", None)]) for c in (2, 10)]
    cuda = [c[4:] for c in cli.configs(args, sweep, "cuda", 12_396) if c[4:6] != (2, "sgd")]
    assert [c[:2] for c in cuda] == [(10, "sgd")] and ("torch-expert", "torch", None) in cuda[0][2]
    quick = cli.build_parser().parse_args(["--quick"])
    extra = [c for c in cli.configs(quick, cli.plan(quick), "cpu", 12_396) if c[4:6] != (2, "sgd")]
    assert [(c[:6], c[6]) for c in extra] == [(("float32", 32, 2_000, 512, 10, "sgd"), [("ours", "numpy", "eager")]),
                                              (("float32", 32, 2_000, 512, 2, "adam"), [("ours", "numpy", "eager")])]
    busy = cli.build_parser().parse_args(["--busy"])
    assert {c[4:6] for c in cli.configs(busy, cli.plan(busy), "cpu", 12_396)} == {(2, "sgd")}


# ----------------------------------------------------------------------------- flags and installs


def test_flags_refuse_what_the_bench_cannot_run_in_one_line(tmp_path):
    """Numbers the flags took and the bench then failed on (a wait too long for subprocess: an
    OverflowError and a traceback), infinities, NaN, 0 and negatives: exit 2, one line, before any work."""
    for args, words in [
        (["--sizes", "1e12", "--max-epoch-seconds", "1e7"], "--max-epoch-seconds: must be a finite number > 0 and "
                                                             "at most 86,400 (a day), got 1e7"),
        (["--max-epoch-seconds", "inf"], "got inf"), (["--max-epoch-seconds", "0"], "got 0"),
        (["--budget", "nan"], "--budget: must be a finite number > 0 (or 0) and at most 86,400 (a day), got nan"),
        (["--budget", "-1"], "got -1"), (["--budget", "1e9"], "got 1e9"),
        (["--epochs", "0"], "must be a whole number from 1 to 2^62, got 0"), (["--warmup", "-2"], "from 1 to 2^62"),
        (["--min-epochs", "9" * 400], "from 1 to 2^62"), (["--epochs", "1e3"], "must be a whole number"),
        (["--hidden", str(2**31 + 1)], "from 1 to 2^31, got"), (["--batches", "0"], "from 1 to 2^62, got 0"),
        (["--batches", str(2**63)], "from 1 to 2^62"), (["--sizes", "inf"], "got inf"),
        (["--threads", "auto," + "9" * 20], "must be 'auto' or a whole number from 1 to 65,536, got 999"),
    ]:
        code, out, err = call_cli(cli.main, "--data-dir", tmp_path / "none", "--no-download", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (args, err)
        assert "Traceback" not in err and out == ""
    from mlp.bench import breakdown         # python -m bench.breakdown: the same bounds, the same one line

    for flag, text in (("--repeats", "0"), ("--rounds", "0"), ("--n", "-5"), ("--hidden", "0")):
        code, out, err = call_cli(breakdown.main, "--data-dir", tmp_path / "none", "--no-download", flag, text)
        bound = "2^31" if flag == "--hidden" else "2^62"
        assert code == 2 and err == f"bench.breakdown: error: argument {flag}: must be a whole number from 1 to " \
                                    f"{bound}, got {text} (see --help)\n", err
    # the bench's budget (0 included) and every count it accepts reach the worker
    args = cli.build_parser().parse_args(["--budget", "0.00", "--max-epoch-seconds", "86400", "--epochs", "1000000"])
    assert (args.budget, args.max_epoch_seconds, args.epochs) == (0.0, 86_400.0, 1_000_000)


def test_a_measurement_of_any_length_is_waited_for():
    """The longest wait the flags allow (40 x the epoch estimate x the epochs) is over what subprocess can
    wait for (about 24 days): the wait is capped at a week, instead of an OverflowError."""
    spec = {"mode": "measure", "impl": "sklearn", "backend": "sklearn", "engine": None, "batch": None,
            "device": "cuda", "dtype": "float32", "n": 10, "hidden": 4, "lr": 0.1}
    r = cli.run_worker(spec, timeout=40 * 86_400 * (2**62 + 2))
    assert r["status"] == "skipped" and r["reason"].startswith("scikit-learn runs on the CPU only"), r


def test_the_bench_runs_without_psutil(data_dir, tmp_path):
    """The README's install (no extras) has no psutil: the bench runs, and says CPU memory was not measured."""
    blocked = tmp_path / "no-psutil"
    blocked.mkdir()
    (blocked / "psutil.py").write_text("raise ImportError('No module named psutil (blocked by the test)')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))}
    result = run_cli("mlp.bench", "--quick", "--backends", "numpy", "--peers", "none", "--no-minibatch",
                     "--json", tmp_path / "b.json", "--data-dir", data_dir, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (r,) = json.loads((tmp_path / "b.json").read_text())["records"]
    assert r["status"] == "ok" and r["peak_mem_bytes"] is None
    assert r["peak_mem_method"] == "not measured: psutil is not installed (pip install -e '.[bench]')"
    assert "Peak memory not measured: psutil is not installed (pip install -e '.[bench]')" in result.stdout
