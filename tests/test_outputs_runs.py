"""Issue 16, part 2: outputs while a command runs. --log and --save-best are locked and never lost,
a resumed log is read with bounds, a failing secondary output (or stdout) never costs the model,
out of memory is exit 4, plotting fails up front, predict takes empty stacks and any file name."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import signal
import time
import subprocess
import sys

import numpy as np
import pytest

from mlp import checkpoint, cli, evaluate, plots, predict, runlog, train
from mlp.errors import Signalled
from mlp.files import MAX_JSON_DEPTH

from .conftest import REPO, call_cli, files_in, tiny_run
from .test_hardening import popen_train
from .test_reliability import assert_refused

HEADER = "epoch,step,train_loss,val_loss,val_accuracy,seconds"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return tiny_run(root, "--log", root / "log.csv", epochs=2)


def run_train(tiny, *args, epochs=3):
    return call_cli(train.main, "--data-dir", tiny / "data", "--epochs", str(epochs), "--batch-size", "8",
                    "--hidden", "8", "--quiet", *args)


def assert_whole_log(path, epochs):
    raw = path.read_bytes()
    assert b"\0" not in raw and b"\r" not in raw and raw.endswith(b"\n")
    lines = raw.decode().splitlines()
    assert lines[0] == HEADER and [int(line.split(",")[0]) for line in lines[1:]] == list(epochs)


# ----------------------------------------------------------------------------- --log


def test_a_failed_or_stopped_run_keeps_the_previous_log(tiny, tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    log.write_bytes((tiny / "log.csv").read_bytes())
    before = log.read_bytes()
    assert_refused(call_cli(train.main, "--data-dir", tmp_path / "nodata", "--no-download", "--log", log), "lacks")
    assert_refused(run_train(tiny, "--batch-size", "1000", "--log", log), "is larger than the 40 training rows")

    def stopped(*args, **kwargs):   # SIGTERM before the first epoch ends
        raise Signalled(signal.SIGTERM)

    monkeypatch.setattr(train.Run, "fit", stopped)
    assert run_train(tiny, "--log", log)[0] == 143
    assert log.read_bytes() == before and files_in(tmp_path) == ["log.csv"]


@pytest.mark.parametrize("line, why", [
    ("two,10,0.1,,,1", "epoch is 'two', not a whole number"),
    ("1e400,10,0.1,,,1", "epoch is '1e400', not a whole number"),
    ("3,15," + "9" * 200_000 + ",,,1", "200,009 bytes long"),
    ("3,15,0.1,,\0,1", "it holds a NUL byte"),
    (b"3,15,0.1,,,\xff", "not UTF-8"),
    ("3,15,0.1,,,1,extra", "7 fields, not 6"),
    ("2,10,0.1,,,1", "epoch 2 after epoch 2"),
    ("3,15,0.1,,2.5,1", "val_accuracy 2.5 is out of range"),
])
def test_a_resumed_log_with_a_bad_row_is_refused_whole(tiny, tmp_path, line, why):
    log = tmp_path / "log.csv"
    log.write_bytes((tiny / "log.csv").read_bytes() + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    before = log.read_bytes()
    assert_refused(run_train(tiny, "--resume", tiny / "c.npz", "--epochs", "3", "--log", log),
                   f"--log {log}: line 4 is not a row of this log ({why}")
    assert log.read_bytes() == before


@pytest.mark.parametrize("text, why", [
    ('{"epoch": ' + "[" * 100_000 + "]" * 100_000 + "}", "200,011 bytes long"),
    ('{"epoch": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}", "JSON nested too deeply"),
    ('{"epoch": 1e400, "step": 5, "train_loss": 1, "val_loss": null, "val_accuracy": null, "seconds": 1}',
     "epoch is 'inf', not a whole number"),
    ('{"epoch": 1}', "not an object of the fields"),
    ("[1, 2]", "not an object of the fields"),
    ("{not json", "not JSON"),
])
def test_a_resumed_json_log_is_read_with_bounds(tiny, tmp_path, text, why):
    log = tmp_path / "log.jsonl"
    log.write_text(text + "\n")
    assert_refused(run_train(tiny, "--resume", tiny / "c.npz", "--log", log), f"line 1 is not a row of this log ({why}")


def test_a_resumed_log_keeps_every_earlier_row(tiny, tmp_path):
    log = tmp_path / "log.csv"
    log.write_text((tiny / "log.csv").read_text() + "3,15,9.5,,,0.1\n")   # logged after the checkpoint
    assert run_train(tiny, "--resume", tiny / "c.npz", "--epochs", "4", "--log", log)[0] == 0
    assert_whole_log(log, [1, 2, 3, 4])
    assert "9.5" not in log.read_text()


def test_a_full_log_disk_costs_the_log_not_the_checkpoint(tiny, tmp_path, monkeypatch):
    real_open = open

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runlog, "open", lambda *a, **k: Full() if a[1] == "a" else real_open(*a, **k), raising=False)
    code, out, err = run_train(tiny, "--log", tmp_path / "log.csv", "--save", tmp_path / "c.npz",
                               "--metrics-json", tmp_path / "m.json")
    assert code == 2 and "test accuracy" in out, err
    assert err.strip().splitlines() == [
        f"mlp.train: error: --log: cannot write {tmp_path / 'log.csv'} (No space left on device); free some space "
        f"(or raise the file-size limit, ulimit -f) (it stops at epoch 1); written: {tmp_path / 'c.npz'} (epoch 3), "
        f"{tmp_path / 'm.json'}"]
    assert checkpoint.load(tmp_path / "c.npz").epoch == 3 and (tmp_path / "m.json").exists()
    assert_whole_log(tmp_path / "log.csv", [1])


# ----------------------------------------------------------------------------- two runs at once


def test_two_runs_on_the_same_log_and_best_checkpoint(tiny, tmp_path):
    log, best = tmp_path / "log.csv", tmp_path / "best.npz"
    first = popen_train("--data-dir", tiny / "data", "--batch-size", "1", "--epochs", "100000", "--hidden", "8",
                        "--val-split", "0.25", "--log", log, "--save-best", best)
    try:
        assert first.stderr.readline().startswith("training:")   # its outputs are checked and locked by now
        for flags in (["--log", log], ["--save-best", best, "--val-split", "0.25"], ["--save", best]):
            flag, path = flags[0], flags[1]
            assert_refused(run_train(tiny, *flags), f"{flag} {path}: another run is writing this file")
        deadline = time.monotonic() + 120       # the log is written from the first epoch's end on
        while not log.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    epochs = len(log.read_text().splitlines()) - 1
    assert epochs >= 1
    assert_whole_log(log, range(1, epochs + 1))
    assert 1 <= checkpoint.load(best).epoch <= epochs
    assert files_in(tmp_path) == ["best.npz", "log.csv"], "no temporary or lock file left"


def test_two_runs_started_together_never_mix_their_logs(tiny, tmp_path):
    log = tmp_path / "log.jsonl"
    runs = [popen_train("--data-dir", tiny / "data", "--batch-size", "4", "--epochs", "20", "--hidden", "8",
                        "--quiet", "--log", log) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    for p in runs:
        p.stdout.close(), p.stderr.close()
    assert all(code == 0 or code == 2 and "another run is writing this file" in err for code, err in results), results
    lines = log.read_text().splitlines()
    assert [runlog.EpochLog(log)._parse(1, line)["epoch"] for line in lines] == list(range(1, 21))


# ----------------------------------------------------------------------------- stdout


def test_closed_stdout_still_writes_every_output(tiny, tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((28, 28), np.uint8))
    for command in (["mlp.train", "--data-dir", tiny / "data", "--epochs", "1", "--batch-size", "8",
                     "--save", tmp_path / "c.npz"],
                    ["mlp.evaluate", "--checkpoint", tiny / "c.npz", "--data-dir", tiny / "data"],
                    ["mlp.predict", "--checkpoint", tiny / "c.npz", tmp_path / "d.npy", "--csv", tmp_path / "p.csv"]):
        proc = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", *map(str, command)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert checkpoint.load(tmp_path / "c.npz").epoch == 1 and (tmp_path / "p.csv").exists()


def test_a_full_stdout_is_one_line_after_the_files_are_written(tiny, tmp_path):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    err = io.StringIO()
    with contextlib.redirect_stdout(Full()), contextlib.redirect_stderr(err):
        code = cli.run(train.main, ["--data-dir", str(tiny / "data"), "--epochs", "1", "--batch-size", "8", "--quiet",
                                    "--save", str(tmp_path / "c.npz"), "--metrics-json", str(tmp_path / "m.json")])
    assert code == 2
    assert err.getvalue().strip().splitlines()[-1] == ("mlp.train: error: cannot write to stdout (No space left on "
                                                       "device); the files reported as written were written")
    assert files_in(tmp_path) == ["c.npz", "m.json"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(Full()):   # stderr full: no crash
        code = cli.run(train.main, ["--data-dir", str(tiny / "data"), "--epochs", "1", "--batch-size", "8",
                                    "--save", str(tmp_path / "d.npz")])
    assert code == 0 and checkpoint.load(tmp_path / "d.npz").epoch == 1


# ----------------------------------------------------------------------------- memory, plotting


def test_torch_out_of_memory_on_the_cpu_is_exit_4(tiny):
    pytest.importorskip("torch")
    proc = popen_train("--data-dir", tiny / "data", "--backend", "torch", "--hidden", "2000000", "--batch-size", "8",
                       "--quiet",
                       limit=(resource.RLIMIT_AS, 3 << 30))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr
    assert stderr.startswith("mlp.train: out of memory: an allocation of ") and len(stderr.splitlines()) == 1


def test_jax_under_a_small_address_space_is_refused_before_it_aborts(tiny):
    proc = popen_train("--data-dir", tiny / "data", "--backend", "jax", "--quiet", limit=(resource.RLIMIT_AS, 3 << 29))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert "--backend jax under an address-space limit of 1.50 GiB (ulimit -v): JAX aborts the whole process" in stderr
    assert len(stderr.splitlines()) == 1


def test_plotting_leaves_mplbackend_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "broken")            # a backend matplotlib lacks: its import would fail
    assert plots.plot_format(tmp_path / "x.svg") == "svg" and plots.pyplot().get_backend().lower() == "agg"
    assert os.environ["MPLBACKEND"] == "broken"        # for the processes this one starts


def test_plotting_is_checked_before_any_work(tiny, tmp_path, monkeypatch):
    env = {**os.environ, "MPLBACKEND": "broken"}
    proc = subprocess.run([sys.executable, "-m", "mlp.train", "--data-dir", str(tiny / "data"), "--epochs", "1",
                           "--batch-size", "8", "--quiet", "--plot", str(tmp_path / "x.png")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setattr(plots.shutil, "which", lambda name: None)   # no TeX, whatever this machine has
    for main, args in ((train.main, ("--data-dir", tiny / "data")),
                       (evaluate.main, ("--checkpoint", tiny / "c.npz", "--data-dir", tiny / "data"))):
        code, out, err = call_cli(main, *args, "--plot", tmp_path / "x.pgf")
        assert (code, out) == (2, ""), err
        assert err.strip() == (f"mlp.{main.prog[4:]}: error: --plot {tmp_path / 'x.pgf'}: a .pgf figure needs xelatex, "
                               "which is not installed; use .pdf or .svg (or install a TeX system)")
    assert files_in(tmp_path) == ["x.png"]


# ----------------------------------------------------------------------------- predict


def test_predict_takes_empty_stacks_and_any_file_name(tiny, tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 28, 28), np.uint8))
    name = os.fsdecode(b"\xff\xfedigit.npy")
    np.save(tmp_path / name, np.zeros((28, 28), np.uint8))
    assert_refused(call_cli(predict.main, "--checkpoint", tiny / "c.npz", tmp_path / "empty.npy"),
                   "no images to predict: ")
    code, out, err = call_cli(predict.main, "--checkpoint", tiny / "c.npz", tmp_path / "empty.npy", tmp_path / name)
    assert code == 0 and out.startswith(f"{tmp_path / name}: P(7) = "), err
    csv_path = tmp_path / os.fsdecode(b"\xfe.csv")
    assert call_cli(predict.main, "--checkpoint", tiny / "c.npz", tmp_path, "--csv", csv_path)[0] == 0
    rows = csv_path.read_bytes().split(b"\n")
    assert rows[0] == b"input,p_7,predicted" and rows[1].startswith(os.fsencode(tmp_path / name) + b",")
    assert_refused(call_cli(predict.main, "--checkpoint", tiny / "c.npz", tmp_path, "--csv", tmp_path / name),
                   f"--csv {tmp_path / name} is also the input IMAGE {tmp_path / name}")
