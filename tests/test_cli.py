"""End to end on the real MNIST 3/7 files: train, evaluate, predict, as a user runs them."""

from __future__ import annotations

import importlib
import json
import math
import re

import numpy as np
import pytest

from mlp import data, train
from mlp.train import DEFAULTS

from .conftest import call_cli, run_cli

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def default_run(data_dir, tmp_path_factory):
    """Plain `python -m mlp.train` (the defaults) with every output asked for."""
    out = tmp_path_factory.mktemp("default-run")
    result = run_cli("mlp.train", "--data-dir", data_dir, "--metrics-json", out / "metrics.json",
                     "--plot", out / "loss.png", "--save", out / "model.npz")
    assert result.returncode == 0, result.stderr
    return out, result, json.loads((out / "metrics.json").read_text())


def test_default_training_reaches_98_5_percent(default_run):
    _, result, metrics = default_run
    assert metrics["test_accuracy"] >= 0.985, metrics["test_accuracy"]
    assert "test accuracy" in result.stdout and "s/epoch" in result.stdout
    assert "Traceback" not in result.stderr


def test_metrics_json_holds_the_run(default_run):
    out, _, m = default_run
    for key in ("test_accuracy", "test_loss", "train_loss", "losses", "epoch_seconds", "device", "backend",
                "dtype", "hidden", "epochs", "batch_size", "lr", "seed"):
        assert key in m, key
    n_train = 12_396
    steps = DEFAULTS["epochs"] * math.ceil(n_train / DEFAULTS["batch_size"])
    assert len(m["losses"]) == m["steps"] == steps
    assert len(m["epoch_seconds"]) == DEFAULTS["epochs"] and all(s > 0 for s in m["epoch_seconds"])
    assert (m["device"], m["backend"], m["dtype"]) == ("cpu", "numpy", "float32")
    assert (m["hidden"], m["batch_size"], m["lr"], m["seed"]) == (128, 64, 0.1, 0)
    last_epoch = m["losses"][-math.ceil(n_train / 64):]
    assert m["train_loss"] == pytest.approx(np.mean(last_epoch))
    assert m["train_loss"] < np.mean(m["losses"][:100])
    assert sum(map(sum, m["confusion"])) == m["n_test"] == 2_038
    assert (out / "loss.png").read_bytes()[:8] == PNG


def test_the_exercise_itself(data_dir, tmp_path):
    """The original exercise: classic init, full batch. It asked for loss ~0.15 and 90%+ accuracy."""
    result = run_cli("mlp.train", "--data-dir", data_dir, "--init", "classic", "--batch-size", "full",
                     "--lr", "0.5", "--epochs", "20", "--quiet", "--metrics-json", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["test_accuracy"] >= 0.9 and m["train_loss"] <= 0.15
    assert len(m["losses"]) == 20 and m["batch_size"] == "full"


def test_torch_backend_trains_the_same_model(data_dir, tmp_path):
    pytest.importorskip("torch")
    runs = {}
    for backend in ("numpy", "torch"):  # minibatches of 512, with a remainder: 25 steps per epoch
        code, _, err = call_cli(train.main, "--data-dir", data_dir, "--backend", backend, "--epochs", "2",
                                "--batch-size", "512", "--dtype", "float64", "--quiet",
                                "--metrics-json", tmp_path / f"{backend}.json")
        assert code == 0, err
        runs[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
    assert len(runs["numpy"]["losses"]) == 50
    np.testing.assert_allclose(runs["torch"]["losses"], runs["numpy"]["losses"], rtol=1e-10)
    assert runs["torch"]["test_accuracy"] == runs["numpy"]["test_accuracy"]


def test_evaluate_agrees_with_training(default_run, data_dir, tmp_path):
    out, _, metrics = default_run
    result = run_cli("mlp.evaluate", "--checkpoint", out / "model.npz", "--data-dir", data_dir,
                     "--plot", tmp_path / "wrong.png")
    assert result.returncode == 0, result.stderr
    correct = round(metrics["test_accuracy"] * 2038)
    assert f"({correct}/2038)" in result.stdout
    assert "pred 3" in result.stdout and "true 7" in result.stdout
    assert (tmp_path / "wrong.png").read_bytes()[:8] == PNG


def test_predict_png_and_npy(default_run, data_dir, tmp_path):
    from PIL import Image

    out, _, _ = default_run
    images = data.read_idx(data_dir / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(data_dir / "t10k-labels-idx1-ubyte.gz")
    three, seven = int(np.flatnonzero(labels == 3)[0]), int(np.flatnonzero(labels == 7)[0])
    Image.fromarray(images[three]).save(tmp_path / "three.png")
    np.save(tmp_path / "seven.npy", images[seven])
    Image.fromarray(images[seven]).convert("RGB").resize((56, 56)).save(tmp_path / "big-rgb.png")
    result = run_cli("mlp.predict", "--checkpoint", out / "model.npz", tmp_path / "three.png",
                     tmp_path / "seven.npy")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'three.png'}: P(7) = ") and lines[0].endswith("-> 3")
    assert lines[1].endswith("-> 7")
    assert float(lines[0].split("= ")[1].split()[0]) < 0.5 < float(lines[1].split("= ")[1].split()[0])
    resized = run_cli("mlp.predict", "--checkpoint", out / "model.npz", "--resize", tmp_path / "big-rgb.png")
    assert resized.returncode == 0, resized.stderr
    assert "converted RGB to grayscale; resized 56x56 to 28x28" in resized.stderr
    assert resized.stdout.strip().endswith("-> 7")


def help_entries(text: str) -> dict[str, str]:
    """--help's options as {each flag: the help text after it}."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-[^ ].*?)(?: {2,}(.*))?$", line)
        if m:
            current = [m.group(2) or ""]
            for flag in re.findall(r"(--?[\w-]+)", m.group(1).split(" {")[0]):
                entries.setdefault(flag, current)
        elif current is not None and line.startswith(" " * 8):
            current.append(line.strip())
        else:
            current = None
    return {flag: " ".join(words).strip() for flag, words in entries.items()}


@pytest.mark.parametrize("module", ["mlp.train", "mlp.evaluate", "mlp.predict", "mlp.convert", "mlp.bench.cli",
                                    "mlp.bench.breakdown"])
def test_help_explains_every_flag(module):
    """Every flag of every command has a help text of its own: more than its name."""
    text = importlib.import_module(module).build_parser().format_help()
    entries = help_entries(text)
    assert len(entries) >= 6, text
    for flag, help_text in entries.items():
        name = flag.lstrip("-").replace("-", " ")
        assert len(help_text.split()) >= 3 and help_text.lower().strip(" .") != name, (module, flag, help_text)
    if module == "mlp.train":
        assert set(entries) >= {"--device", "--backend", "--data-dir", "--classes", "--hidden", "--activation",
                                "--init", "--lr", "--epochs", "--batch-size", "--seed", "--dtype", "--plot",
                                "--metrics-json", "--quiet", "--save", "--checkpoint-every", "--resume", "--val-split",
                                "--early-stop", "--save-best", "--log", "--engine", "--version"}


