"""Everyday use: validation, early stopping, the best checkpoint, the epoch log, 'wrote' lines,
significant digits, --version, plot formats, prediction at scale, and the packaging."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from mlp import backends, checkpoint, data, evaluate, history, predict, runlog, train
from mlp.scoring import score
from mlp.progress import fmt_loss
from mlp.summary import continue_command

from .conftest import REPO, call_cli, files_in, make_dataset

JPEG = b"\xff\xd8\xff"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small IDX data set (random pixels, 80 training rows of 3s and 7s): seconds, not minutes."""
    folder = tmp_path_factory.mktemp("small") / "data"
    make_dataset(folder, n_train=400, n_test=100)
    return folder


def test_holdout_is_seeded_disjoint_and_complete():
    train_rows, val_rows = history.holdout(1000, 0.1, seed=0)
    assert len(val_rows) == 100 and len(train_rows) == 900
    assert np.array_equal(np.sort(np.concatenate([train_rows, val_rows])), np.arange(1000))
    again = history.holdout(1000, 0.1, seed=0)
    assert np.array_equal(again[1], val_rows), "the same seed holds out the same rows"
    assert not np.array_equal(history.holdout(1000, 0.1, seed=1)[1], val_rows)
    with pytest.raises(Exception, match="holds out 0 of 5"):
        history.holdout(5, 0.01, seed=0)


def test_val_split_0_is_the_plain_run(small, tmp_path):
    common = ["--data-dir", small, "--epochs", "2", "--batch-size", "16", "--quiet"]
    assert call_cli(train.main, *common, "--save", tmp_path / "a.npz")[0] == 0
    assert call_cli(train.main, *common, "--val-split", "0", "--save", tmp_path / "b.npz")[0] == 0
    a, b = checkpoint.load(tmp_path / "a.npz"), checkpoint.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a.losses, b.losses)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_validation_figures_log_and_best_checkpoint(small, tmp_path):
    code, out, err = call_cli(train.main, "--data-dir", small, "--val-split", "0.25", "--epochs", "5",
                              "--batch-size", "16", "--lr", "0.05", "--log", tmp_path / "log.csv",
                              "--save-best", tmp_path / "best.npz", "--save", tmp_path / "last.npz",
                              "--metrics-json", tmp_path / "m.json", "--plot", tmp_path / "loss.jpg")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0]) == list(runlog.COLUMNS)
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["n_train"], m["n_val"]) == (60, 20)
    for line in (f"wrote {tmp_path / 'last.npz'} (epoch 5)", f"wrote {tmp_path / 'log.csv'} (5 epochs)",
                 f"wrote {tmp_path / 'm.json'}", f"wrote {tmp_path / 'loss.jpg'}"):
        assert line in err, line
    assert "val loss" in err and "val acc" in err and "val loss" in out
    # the last epoch's validation figures, recomputed independently on the held-out rows
    ds = data.load_dataset(small, (3, 7), download=False)
    _, held = history.holdout(len(ds.train.y), 0.25, seed=0)
    last = checkpoint.load(tmp_path / "last.npz")
    numpy = backends.resolve("cpu", "numpy")
    check = score(numpy, last.params, ds.train.X[held], ds.train.y[held], "relu")
    assert float(rows[-1]["val_loss"]) == pytest.approx(check["loss"], rel=1e-5)
    assert float(rows[-1]["val_accuracy"]) == check["accuracy"]
    # the best checkpoint is the epoch of the lowest validation loss, and holds that model
    losses = [float(r["val_loss"]) for r in rows]
    best = checkpoint.load(tmp_path / "best.npz")
    assert best.epoch == 1 + int(np.argmin(losses)) == m["best_epoch"]
    assert score(numpy, best.params, ds.train.X[held], ds.train.y[held], "relu")["loss"] == pytest.approx(
        min(losses), rel=1e-5)
    assert best.config["val_split"] == 0.25
    assert (tmp_path / "loss.jpg").read_bytes()[:3] == JPEG


def test_the_test_set_is_scored_once_at_the_end(small, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train, "score", lambda *a, **k: calls.append(a[2].shape) or score(*a, **k))
    code, _, err = call_cli(train.main, "--data-dir", small, "--val-split", "0.25", "--epochs", "4",
                            "--early-stop", "1", "--batch-size", "16", "--quiet")
    assert code == 0, err
    assert calls == [(20, 784)], "validation must never use the test set"


def test_early_stop_rules():
    saved = []
    h = history.History(None, "relu", val=("X", "y"), patience=2, save_best=lambda s: saved.append(s.epoch))
    state = SimpleNamespace(epoch=0)
    stopped_at = None
    for epoch, loss in enumerate([0.5, 0.4, 0.45, 0.39, 0.41, 0.42, 0.3], start=1):
        state.epoch = epoch
        h._track(state, {"val_loss": loss, "val_accuracy": 0.9})
        try:
            h.stop_if_stalled(state, target_epochs=10)
        except history.EarlyStopped as exc:
            stopped_at = epoch
            assert "not improved for 2 epochs (best 0.39 at epoch 4)" in str(exc)
            break
    assert stopped_at == 6 and saved == [1, 2, 4]


def test_early_stop_end_to_end(small, tmp_path):
    code, out, err = call_cli(train.main, "--data-dir", small, "--val-split", "0.25", "--epochs", "30",
                              "--early-stop", "2", "--lr", "1", "--batch-size", "16", "--log", tmp_path / "l.jsonl",
                              "--metrics-json", tmp_path / "m.json")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["stopped_early"] and m["completed_epochs"] == len(rows) < 30
    best = min(r["val_loss"] for r in rows)
    assert all(r["val_loss"] >= best for r in rows[-2:]) and rows[-3]["val_loss"] == best
    assert f"epoch {len(rows)}/30" in err and "stopped early" in err


@pytest.mark.parametrize("flag", ["--early-stop", "--save-best"])
def test_validation_flags_need_a_split(small, tmp_path, flag):
    value = "3" if flag == "--early-stop" else str(tmp_path / "b.npz")
    code, _, err = call_cli(train.main, "--data-dir", small, flag, value, "--save", tmp_path / "s.npz")
    assert code == 2 and f"{flag} watches the validation loss, so it needs --val-split F" in err
    assert files_in(tmp_path) == []


def test_resume_keeps_the_split_and_refuses_another(small, tmp_path):
    common = ["--data-dir", small, "--batch-size", "16", "--quiet", "--val-split", "0.25"]
    assert call_cli(train.main, *common, "--epochs", "1", "--save", tmp_path / "a.npz")[0] == 0
    code, _, err = call_cli(train.main, "--data-dir", small, "--resume", tmp_path / "a.npz", "--val-split", "0.5",
                            "--epochs", "2")
    assert code == 2 and "--val-split 0.5 contradicts the checkpoint" in err
    code, _, err = call_cli(train.main, "--data-dir", small, "--resume", tmp_path / "a.npz", "--epochs", "2",
                            "--quiet", "--metrics-json", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["n_val"] == 20


def test_a_resumed_run_keeps_its_best_checkpoint_and_its_patience(small, tmp_path):
    common = ["--data-dir", small, "--batch-size", "16", "--quiet", "--val-split", "0.25"]
    code, _, err = call_cli(train.main, *common, "--epochs", "2", "--save", tmp_path / "a.npz",
                            "--save-best", tmp_path / "best.npz")
    assert code == 0, err
    record = checkpoint.load(tmp_path / "a.npz").meta["validation"]
    assert record["best_epoch"] in (1, 2) and record["best_val_loss"] > 0 and record["since_best"] in (0, 1)
    assert checkpoint.load(tmp_path / "best.npz").epoch == record["best_epoch"]
    # a record no resumed epoch can beat: --save-best must keep the file it has
    with np.load(tmp_path / "a.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["validation"] = {"best_val_loss": 0.0, "best_epoch": 1, "since_best": 1}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "edited.npz", **arrays)
    before = (tmp_path / "best.npz").read_bytes()
    code, _, err = call_cli(train.main, "--data-dir", small, "--resume", tmp_path / "edited.npz", "--epochs", "4",
                            "--quiet", "--save-best", tmp_path / "best.npz", "--early-stop", "2")
    assert code == 0, err
    assert (tmp_path / "best.npz").read_bytes() == before, "a worse epoch replaced the best checkpoint"
    # patience continues from the checkpoint's count (1): one more epoch without a gain stops the run
    assert "stopped early at epoch 3" in err and "best 0 at epoch 1" in err, err


def test_epoch_log_is_flushed_as_it_goes(tmp_path):
    log = runlog.EpochLog(tmp_path / "l.csv")
    log.write({"epoch": 1, "step": 5, "train_loss": 0.5, "seconds": 0.1})
    assert (tmp_path / "l.csv").read_text().splitlines()[1] == "1,5,0.5,,,0.1"  # readable before close
    log.close()


def test_init_names_its_scheme_and_he_checkpoints_still_resume(small, tmp_path):
    """The default init is he for relu and xavier for tanh, and the checkpoint records which; a
    checkpoint that says he with tanh (what --init he wrote before xavier had its name) resumes."""
    common = ["--data-dir", small, "--batch-size", "64", "--quiet", "--activation", "tanh"]
    assert call_cli(train.main, *common, "--epochs", "1", "--save", tmp_path / "x.npz")[0] == 0
    assert checkpoint.load(tmp_path / "x.npz").config["init"] == "xavier"
    assert call_cli(train.main, *common, "--init", "he", "--epochs", "1", "--save", tmp_path / "he.npz")[0] == 0
    code, _, err = call_cli(train.main, "--data-dir", small, "--quiet", "--resume", tmp_path / "he.npz",
                            "--epochs", "2", "--save", tmp_path / "he.npz")
    assert code == 0, err
    resumed = checkpoint.load(tmp_path / "he.npz")
    assert (resumed.epoch, resumed.config["init"], resumed.config["activation"]) == (2, "he", "tanh")
    code, _, err = call_cli(train.main, "--data-dir", small, "--resume", tmp_path / "he.npz", "--init", "xavier",
                            "--epochs", "3")
    assert code == 2 and "--init xavier contradicts the checkpoint" in err


def test_a_resumed_run_continues_its_log(small, tmp_path):
    common = ["--data-dir", small, "--batch-size", "16", "--quiet", "--log", tmp_path / "l.csv",
              "--save", tmp_path / "a.npz"]
    assert call_cli(train.main, *common, "--epochs", "2")[0] == 0
    with open(tmp_path / "l.csv", "a") as f:  # an epoch logged after the last checkpoint, then a crash
        f.write("3,15,999,,,0.1\n")
    code, _, err = call_cli(train.main, *common, "--resume", tmp_path / "a.npz", "--epochs", "4")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "l.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[2]["train_loss"]) != 999 and int(rows[3]["step"]) == 4 * 5  # 80 rows, batch 16: 5 steps


def test_losses_keep_significant_digits():
    assert fmt_loss(4.1e-05) == "4.1e-05"
    assert fmt_loss(0.061712) == "0.06171"
    assert fmt_loss(0.0033124) == "0.003312"


def test_continue_command_is_copyable(tmp_path):
    parser = train.build_parser()
    argv = ["--data-dir", "my data", "--classes", "1", "2", "--resume", "old.npz", "--save", "a b.npz", "--quiet",
            "--plot", "l.png", "--resume=older.npz", "--batch-size", "full", "--epochs", "7"]
    line = continue_command("python -m mlp.train", argv, "a b.npz")
    again = parser.parse_args(shlex.split(line)[3:])
    assert shlex.split(line)[:3] == ["python", "-m", "mlp.train"] and "old" not in line
    assert (again.data_dir, again.classes, again.save, again.resume, again.quiet, again.plot, again.batch_size,
            again.epochs) == ("my data", [1, 2], "a b.npz", "a b.npz", True, "l.png", "full", 7)


@pytest.mark.parametrize("module", [train, evaluate, predict])
def test_version_on_every_command(module):
    code, out, _ = call_cli(module.main, "--version")
    assert code == 0 and out.startswith(module.main.prog) and "mlp-by-hand" in out


def test_unknown_plot_suffix_is_refused_before_any_work(small, tmp_path):
    code, _, err = call_cli(train.main, "--data-dir", small, "--plot", tmp_path / "loss.xyz",
                            "--save", tmp_path / "m.npz")
    assert code == 2 and "the suffix .xyz names no image format" in err and files_in(tmp_path) == []


def test_evaluate_writes_the_format_its_plot_names(small, tmp_path):
    assert call_cli(train.main, "--data-dir", small, "--epochs", "1", "--batch-size", "16", "--quiet",
                    "--save", tmp_path / "m.npz")[0] == 0
    code, out, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "m.npz", "--data-dir", small,
                              "--plot", tmp_path / "wrong.jpg")
    assert code == 0, err
    assert (tmp_path / "wrong.jpg").read_bytes()[:3] == JPEG and f"wrote {tmp_path / 'wrong.jpg'}" in err
    code, _, err = call_cli(evaluate.main, "--checkpoint", tmp_path / "m.npz", "--data-dir", small,
                            "--plot", tmp_path / "wrong.bmpx")
    assert code == 2 and "the suffix .bmpx names no image format" in err
    assert not (tmp_path / "wrong.bmpx").exists()


def test_predict_a_directory_and_a_stack_with_csv(small, tmp_path):
    from PIL import Image

    assert call_cli(train.main, "--data-dir", small, "--epochs", "1", "--quiet", "--save", tmp_path / "m.npz")[0] == 0
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    (tmp_path / "dir").mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / "dir" / f"{i}.png")
    (tmp_path / "dir" / "notes.txt").write_text("not an image")
    np.save(tmp_path / "stack.npy", images[3:])
    one_by_one = call_cli(predict.main, "--checkpoint", tmp_path / "m.npz",
                          *[tmp_path / "dir" / f"{i}.png" for i in range(3)])
    code, out, err = call_cli(predict.main, "--checkpoint", tmp_path / "m.npz", tmp_path / "dir",
                              tmp_path / "stack.npy", "--csv", tmp_path / "p.csv")
    assert code == 0, err
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["input", "p_7", "predicted"] and len(rows) == 7
    assert [r[0] for r in rows[4:]] == [f"{tmp_path / 'stack.npy'}[{i}]" for i in range(3)]
    assert f"wrote {tmp_path / 'p.csv'} (6 rows)" in err and out.startswith("6 images: ")
    for line, row in zip(one_by_one[1].splitlines(), rows[1:4]):  # the same as the files one by one
        assert line.startswith(row[0] + ": ") and abs(float(line.split("= ")[1].split()[0]) - float(row[1])) < 1e-4
    # a stack predicts as its images saved one by one
    for i in range(3):
        np.save(tmp_path / f"single{i}.npy", images[3 + i])
    singles = call_cli(predict.main, "--checkpoint", tmp_path / "m.npz",
                       *[tmp_path / f"single{i}.npy" for i in range(3)])[1].splitlines()
    for line, row in zip(singles, rows[4:]):
        p, predicted = line.split("= ")[1].split(" -> ")
        assert abs(float(p) - float(row[1])) < 1e-4 and predicted == row[2]


def test_wheel_installs_nothing_at_top_level_but_mlp(tmp_path):
    """pip must not put generic `backends` or `bench` packages into site-packages."""
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: the build leaves build/ behind, and must not reuse a stale one
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv*", "build", "dist", "*.egg-info", ".git",
                                                                "__pycache__", ".pytest_cache", ".hypothesis"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mlp"}, top
    for module in ("mlp/train.py", "mlp/backends/__init__.py", "mlp/bench/cli.py", "mlp/bench/__main__.py"):
        assert module in names, module
