"""`python -m bench --quick` as a smoke test (nothing about speed is asserted), and the
report's arithmetic on made-up records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlp import model

from mlp.bench import report
from mlp.bench.floor import epoch_flops, epoch_gemm_flops, epoch_min_bytes, floor_seconds
from mlp.bench.impls import PEERS

from .conftest import run_cli

FIELDS = ("impl", "backend", "device", "device_name", "dtype", "n", "d", "hidden", "median_ms", "min_ms", "max_ms",
          "epochs_timed", "gflops", "fraction_of_floor", "peak_mem_bytes")


QUICK_PEERS = ("torch-expert", "sklearn")   # a process each costs seconds; jax-jit is held to ours in the full sweeps


def test_quick_sweep_end_to_end(data_dir, tmp_path):
    result = run_cli("bench", "--quick", "--json", tmp_path / "b.json", "--markdown", tmp_path / "b.md",
                     "--plot", tmp_path / "b.png", "--backends", "numpy,jax", "--peers", ",".join(QUICK_PEERS),
                     "--data-dir", data_dir, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "b.json").read_text())
    meta = out["meta"]
    for key in ("command", "date", "cpu", "versions", "platform"):
        assert meta[key], key
    assert meta["command"].startswith("python -m bench --quick")
    records = out["records"]
    ours = [r for r in records if r["impl"] == "ours" and r["backend"] == "numpy"]
    assert [(r["batch"], r["engine"], r["status"]) for r in ours] == [(None, "eager", "ok"), (512, "eager", "ok")]
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
    assert "| ours (jax, compiled) | cpu | float32 | 2,000 | 32 | 512 |" in table
    assert "Median ms per minibatch epoch" in table
    assert "no GPU was measured in this run" in table
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


def _hand_written_torch_step(X, y, w1, b1, w2, b2, lr=0.1):
    """One training step written out in PyTorch, the maths of the README, independent of our code."""
    import torch

    z1 = X @ w1 + b1
    a1 = torch.relu(z1)
    z2 = a1 @ w2 + b2
    d_z2 = (torch.sigmoid(z2) - y) / X.shape[0]
    d_w2, d_b2 = a1.T @ d_z2, d_z2.sum(0)
    d_z1 = (d_z2 * w2.T) * (z1 > 0)           # the outer product d_z2 @ w2.T, elementwise as in ours
    d_w1, d_b1 = X.T @ d_z1, d_z1.sum(0)
    return w1 - lr * d_w1, b1 - lr * d_b1, w2 - lr * d_w2, b2 - lr * d_b2


@pytest.mark.parametrize("n, d, h", [(10, 784, 128), (257, 31, 7), (1000, 784, 1024)])
def test_flop_count_agrees_with_pytorchs_counter(n, d, h):
    """The matrix-product FLOPs of an epoch, as PyTorch's FlopCounterMode counts them on a
    hand-written step (it counts matrix products only; the elementwise terms are an estimate)."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*shape, generator=g) for shape in ((n, d), (n, 1), (d, h), (h,), (h, 1), (1,))]
    with FlopCounterMode(display=False) as counter:
        _hand_written_torch_step(*args)
    assert epoch_gemm_flops(n, d, h) == counter.get_total_flops()
    assert epoch_flops(n, d, h) > counter.get_total_flops()  # plus the elementwise work and the update


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
    report.enrich(records, probes)
    assert records[3]["ratio_to_ours"] == 0.5 and records[4]["ratio_to_ours"] == 2.0
    assert records[3]["loss_check"] == "ok" and records[4]["loss_check"] == "MISMATCH"
    assert records[0]["floor_ms"] == pytest.approx(epoch_flops(1000, 784, 100) / 1e11 * 1e3)
    assert records[0]["fraction_of_floor"] == pytest.approx(records[0]["floor_ms"] / 10.0)
    assert records[5]["floor_ms"] is None  # no probe for the GPU: no floor, and no invented one
    assert records[6]["flops"] == epoch_flops(1000, 784, 100, steps=16)   # the update runs once per step
    (slope,) = [s for s in report.slopes(records) if s["impl"] == "ours (numpy, eager)"]
    assert slope["slope"] == pytest.approx(1.0) and slope["points"] == 3
    full, mini = report.speedups(records)
    assert full["speedup"] == pytest.approx(10.0) and full["n"] == 1000 and full["batch"] is None
    assert mini["speedup"] == pytest.approx(10.0) and mini["batch"] == 64 and mini["gpu_impl"] == "ours (jax, compiled)"
    meta = {"devices": ["cuda:0"]}
    assert report.no_speedup_reason(meta).startswith("CPU not measured in this run")
    assert report.no_speedup_reason({"devices": ["cpu"]}).startswith("no GPU was measured")
