"""Issue 10: nothing lost, nothing trusted. One test per class of hostile or careless input;
each asserts the exit code, the one-line message, and that nothing was lost or left behind."""

from __future__ import annotations

import errno
import fcntl
import gzip
import io
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlp import checkpoint, data, evaluate, files, predict, summary, train
from mlp.errors import Signalled

from .conftest import REPO, call_cli, files_in, make_dataset, tiny_run, trust
from .test_reliability import assert_refused


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("tiny"))


def popen_train(*args, limit=None):
    """`python -m mlp.train args`; limit=(resource.RLIMIT_x, bytes) is set by the child itself
    (no preexec_fn: forking a multithreaded test process is not safe)."""
    prefix = []
    if limit is not None:
        prefix = ["-c", f"import resource, runpy, sys; resource.setrlimit({limit[0]}, ({limit[1]}, {limit[1]})); "
                        "sys.argv[0] = 'mlp.train'; runpy.run_module('mlp.train', run_name='__main__')"]
    else:
        prefix = ["-m", "mlp.train"]
    return subprocess.Popen([sys.executable, *prefix, *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# ----------------------------------------------------------------------------- 1. nothing lost


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_like_ctrl_c(tiny, tmp_path, signum, code):
    ckpt = tmp_path / "run.npz"
    proc = popen_train("--data-dir", tiny / "data", "--batch-size", "1", "--epochs", "2000", "--hidden", "8",
                       "--save", ckpt)
    assert proc.stderr.readline().startswith("training:")
    assert proc.stderr.readline().startswith("epoch 100/2000")   # inside the loop (a line per 100 epochs)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert proc.returncode == code, stderr
    assert f"interrupted by {name} at epoch" in stderr and f"checkpoint saved to {ckpt}" in stderr
    assert "Traceback" not in stderr
    assert 100 * 40 <= checkpoint.load(ckpt).step < 2000 * 40
    assert files_in(tmp_path) == ["run.npz"], "no temporary or lock file is left behind"
    # --resume x --save x is the normal way to continue: allowed, and it continues
    code, _, err = call_cli(train.main, "--data-dir", tiny / "data", "--resume", ckpt, "--save", ckpt,
                            "--epochs", str(checkpoint.load(ckpt).epoch + 1), "--quiet")
    assert code == 0, err


def test_a_signal_that_lands_where_python_drops_exceptions_still_stops_the_command(capsys):
    """SIGTERM handled inside a __del__ (or a gc callback: distributed has one, and a SIGTERM during
    a Dask cluster's start landed there): Python prints and drops the Signalled. The command still
    ends as a SIGTERM does (one line, 143, no traceback), and a training loop started after it stops
    at its first chance."""
    from mlp import cli
    from mlp.errors import RECEIVED_SIGNALS
    from mlp.loop import StopOnSignals

    class Dropped:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)      # the handler runs here, inside __del__
            sum(range(1000))

    seen = {}

    def main(argv):
        Dropped()
        seen["dropped"] = list(RECEIVED_SIGNALS)      # the command went on: the exception was dropped
        with StopOnSignals() as stop:
            seen["loop"] = (stop.requested, stop.signum)
        return 0

    main.prog = "demo"
    assert cli.run(main, []) == 143
    assert seen == {"dropped": [signal.SIGTERM], "loop": (True, signal.SIGTERM)}
    assert capsys.readouterr().err == "demo: stopped by SIGTERM\n"     # no "Exception ignored" traceback
    assert RECEIVED_SIGNALS == []


def test_temporary_files_are_removed_on_a_signal_and_when_stale(tmp_path):
    target = tmp_path / "c.npz"
    target.write_bytes(b"old")
    with pytest.raises(Signalled):  # SIGTERM arriving in the middle of a write (cli.run raises it)
        with files.atomic_write(target) as f:
            f.write(b"half")
            raise Signalled(signal.SIGTERM)
    assert files_in(tmp_path) == ["c.npz"] and target.read_bytes() == b"old"
    # a write killed with SIGKILL leaves its temporary file: the next write of that target removes it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".c.npz.{int(dead.stdout)}-0123abcd.tmp"
    alive = tmp_path / f".c.npz.{os.getppid()}-0123abcd.tmp"   # a live process's: left alone
    stale.write_bytes(b"x")
    alive.write_bytes(b"x")
    with files.atomic_write(target) as f:
        f.write(b"new")
    assert files_in(tmp_path) == sorted(["c.npz", alive.name]) and target.read_bytes() == b"new"


def test_outputs_naming_the_same_file_or_an_input_are_refused(tiny, tmp_path, data_dir):
    out = tmp_path / "x"
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--save", out, "--metrics-json", out),
                   f"--save and --metrics-json both name {out}")
    os.symlink(out, tmp_path / "link")
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--save", out, "--plot", tmp_path / "link"),
                   "--save and --plot both name")
    assert files_in(tmp_path) == ["link"]
    image = tiny / "data" / "train-images-idx3-ubyte.gz"
    before = image.read_bytes()
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--plot", image),
                   f"--plot {image} is also the input --data-dir's train-images-idx3-ubyte.gz")
    copy = tmp_path / "c.npz"
    copy.write_bytes((tiny / "c.npz").read_bytes())
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--resume", copy, "--metrics-json", copy),
                   f"--metrics-json {copy} is also the input --resume")
    assert_refused(call_cli(evaluate.main, "--data-dir", tiny / "data", "--checkpoint", copy, "--plot", copy),
                   f"--plot {copy} is also the input --checkpoint")
    assert image.read_bytes() == before and copy.read_bytes() == (tiny / "c.npz").read_bytes()


def test_names_the_file_system_refuses_are_caught_before_training(tiny, tmp_path):
    long = tmp_path / ("a" * 250 + ".npz")
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--save", long),
                   "the file name is 254 bytes; this file system takes at most 255 bytes per name")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--metrics-json", fifo),
                   f"--metrics-json {fifo}: is a FIFO (named pipe), not a regular file")
    assert files_in(tmp_path) == ["fifo"]


def test_full_disk_during_save_keeps_the_previous_checkpoint(tiny, tmp_path):
    ckpt = tmp_path / "c.npz"
    ckpt.write_bytes((tiny / "c.npz").read_bytes())
    before = ckpt.read_bytes()
    # 20 kB per file (ulimit -f): the checkpoint (and its rescue copy) is larger
    proc = popen_train("--data-dir", tiny / "data", "--resume", ckpt, "--save", ckpt, "--epochs", "2", "--quiet",
                       limit=(resource.RLIMIT_FSIZE, 20_000))
    _, stderr = proc.communicate(timeout=60)
    rescue = Path(tempfile.gettempdir()) / f"mlp-rescue-{proc.pid}.npz"
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines() == [
        f"mlp.train: error: cannot write the checkpoint {ckpt} (File too large); {ckpt} was left as it was "
        f"(epoch 1); the parameters could not be saved elsewhere either ({rescue}: File too large); "
        "free some space (or raise the file-size limit, ulimit -f), and resume from it"]
    assert ckpt.read_bytes() == before
    assert files_in(tmp_path) == ["c.npz"]
    assert not rescue.exists()


def test_no_space_left_saves_a_rescue_copy(tiny, tmp_path, monkeypatch):
    ckpt = tmp_path / "c.npz"
    ckpt.write_bytes((tiny / "c.npz").read_bytes())
    before = ckpt.read_bytes()
    real_savez, calls = np.savez, []

    def full_once(f, **arrays):   # the checkpoint's disk is full; the temporary folder is not
        calls.append(f.name)
        if len(calls) == 1:
            real_savez(f, **arrays)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", full_once)
    rescue = Path(tempfile.gettempdir()) / f"mlp-rescue-{os.getpid()}.npz"
    try:
        code, _, err = call_cli(train.main, "--data-dir", tiny / "data", "--resume", ckpt, "--save", ckpt,
                                "--epochs", "2", "--quiet")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert (f"cannot write the checkpoint {ckpt} (No space left on device); {ckpt} was left as it was (epoch 1); "
                f"the parameters of epoch 2, step 10 were saved to {rescue} instead") in err
        assert checkpoint.load(rescue).epoch == 2
    finally:
        rescue.unlink(missing_ok=True)
    assert ckpt.read_bytes() == before and files_in(tmp_path) == ["c.npz"]
    # any other output: one line, exit 2, the file it would replace untouched
    monkeypatch.setattr(checkpoint.np, "savez", real_savez)
    (tmp_path / "m.json").write_text("{}")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(summary.json, "dump", no_space)    # what --metrics-json writes with
    code, _, err = call_cli(train.main, "--data-dir", tiny / "data", "--epochs", "1", "--batch-size", "8",
                            "--hidden", "4", "--quiet", "--metrics-json", tmp_path / "m.json",
                            "--save", tmp_path / "new.npz")
    assert code == 2 and err.strip().splitlines() == [
        f"mlp.train: error: --metrics-json: cannot write {tmp_path / 'm.json'} (No space left on device); "
        f"{tmp_path / 'm.json'} was left as it was; free some space (or raise the file-size limit, "
        f"ulimit -f); written: {tmp_path / 'new.npz'} (epoch 1)"]
    assert (tmp_path / "m.json").read_text() == "{}" and files_in(tmp_path) == ["c.npz", "m.json", "new.npz"]
    assert checkpoint.load(tmp_path / "new.npz").epoch == 1   # a secondary output never costs the model


def test_a_second_run_on_the_same_checkpoint_is_refused(tiny, tmp_path):
    ckpt = tmp_path / "c.npz"
    fd = os.open(tmp_path / ".c.npz.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the first run holds it
    try:
        assert_refused(call_cli(train.main, "--data-dir", tiny / "data", "--save", ckpt),
                       f"--save {ckpt}: another run is writing this file")
    finally:
        os.close(fd)
    assert not ckpt.exists()


# ----------------------------------------------------------------------------- 2. nothing read is trusted


def idx(dtype_code: int, dims, body=b"") -> bytes:
    return bytes([0, 0, dtype_code, len(dims)]) + np.asarray(dims, ">u4").tobytes() + body


def test_idx_bombs_and_impossible_headers(tiny, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for f in (tiny / "data").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    target = folder / "train-images-idx3-ubyte.gz"
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9)   # ~1 kB each: 1 GiB from 1 MB of gzip
    bomb = gzip.compress(idx(8, (40, 28, 28), bytes(40 * 784))) + zeros * 1024
    target.write_bytes(bomb)
    # 1 GiB of address space: the bomb alone would need all of it
    proc = popen_train("--data-dir", folder, "--quiet", limit=(resource.RLIMIT_AS, 1 << 30))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "unexpected bytes after the (40, 28, 28) array its header describes" in stderr
    assert len(stderr.strip().splitlines()) == 1
    for raw, message in [
        (idx(8, (2**32 - 1,) * 3), "its header claims shape (4294967295, 4294967295, 4294967295)"),
        (idx(8, (10**9, 28, 28), bytes(100)), "more than the file can hold"),
        (idx(8, (40, 0, 28)), "expected images (N, rows, cols) of at least one pixel, got shape (40, 0, 28)"),
        (idx(8, (40, 28, 28, 1), bytes(40 * 784)), "got shape (40, 28, 28, 1)"),
        (idx(0x0B, (40, 28, 28), bytes(40 * 784 * 2)), "images of int16; give unsigned bytes"),
        (idx(0x0D, (40, 28, 28), np.full(40 * 784, 255, ">f4").tobytes()), "float pixels from 255 to 255"),
    ]:
        target.write_bytes(gzip.compress(raw))
        assert_refused(call_cli(train.main, "--data-dir", folder, "--quiet"), message)


def test_download_writes_at_most_the_expected_bytes(mirror, tmp_path, monkeypatch):  # noqa: F811 (the fixture)
    make_dataset(mirror)
    trust(mirror, monkeypatch)
    name = "train-labels-idx1-ubyte.gz"
    expected = (mirror / name).stat().st_size
    (mirror / name).write_bytes((mirror / name).read_bytes() + bytes(10 << 20))   # 10 MB more than promised
    written = []   # bytes written to each file the download opens, in order

    def counting(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" in mode:
            written.append(0)
            real_write = f.write

            def write(b):
                written[-1] += len(b)
                return real_write(b)

            f.write = write
        return f

    monkeypatch.setattr(data, "open", counting, raising=False)   # the files data.py opens
    with pytest.raises(data.DataError, match=f"got more than {expected:,} bytes"):
        data.mnist_files(tmp_path / "new", quiet=True)
    assert written[0] == (mirror / "train-images-idx3-ubyte.gz").stat().st_size
    assert len(written) == 2 and written[1] <= expected
    assert files_in(tmp_path / "new") == ["train-images-idx3-ubyte.gz"], "the verified file is kept, nothing else"


def npz_with(members: dict) -> bytes:
    """An .npz whose members are given as raw .npy bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, raw in members.items():
            z.writestr(name + ".npy", raw)
    return buf.getvalue()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_checkpoint_claiming_tebibytes_is_corrupt(tiny, tmp_path):
    with np.load(tiny / "c.npz") as z:
        members = {k: npy(z[k]) for k in z.files}
    meta = json.loads(str(np.load(tiny / "c.npz")["meta"]))
    meta["config"].update(n_features=2**20, hidden=2**20, image_shape=[1024, 1024])
    members["meta"] = npy(np.array(json.dumps(meta)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**20, 2**20)})
    members["w1"] = header.getvalue() + bytes(1000)
    members["junk"] = b"never read"
    (tmp_path / "tib.npz").write_bytes(npz_with(members))
    for main, args in ((evaluate.main, ()), (predict.main, ("x.npy",))):
        assert_refused(call_cli(main, "--checkpoint", tmp_path / "tib.npz", *args),
                       "is corrupt (w1: its header claims shape (1048576, 1048576) of float32 "
                       "(4,398,046,511,104 bytes) but the archive holds")


FIELDS = ["epoch", "step", "step_in_epoch", "partial_epoch_seconds", "rng_state", "target_epochs", "format",
          "config.hidden", "config.lr", "config.batch_size", "config.seed", "config.dtype", "config.classes",
          "config.mean", "config.std", "config.n_features", "config.image_shape", "config.n_train",
          "config.activation", "config.init", "config.data_fingerprint", "config.val_split", "validation",
          "config"]
VALUES = [None, -1, 0, 1, 2, 7, 10**30, -1e300, 1.5, float("nan"), float("inf"), True, "x", "full", "float16",
          [], [3, 3], [7, 3], [28, 28], {}, {"bit_generator": "PCG64"}]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=st.sampled_from(VALUES) | st.integers(-(2**70), 2**70))
def test_edited_checkpoint_metadata_loads_correctly_or_exits_2(tiny, tmp_path, field, value):
    with np.load(tiny / "c.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    holder, key = (meta["config"], field[7:]) if field.startswith("config.") else (meta, field)
    holder[key] = value
    arrays["meta"] = np.array(json.dumps(meta))
    path = tmp_path / f"edited-{abs(hash((field, repr(value))))}.npz"
    np.savez(path, **arrays)
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    code, stdout, stderr = call_cli(predict.main, "--checkpoint", path, tmp_path / "digit.npy")
    assert code in (0, 2) and "Traceback" not in stderr, (field, value, stderr)
    if code == 2:
        assert stderr.startswith("mlp.predict: error: ") and len(stderr.strip().splitlines()) == 1
        return
    assert "nan" not in stdout.lower()
    code, _, stderr = call_cli(train.main, "--data-dir", tiny / "data", "--resume", path, "--epochs", "3",
                               "--quiet")
    # 3: an edited --lr that is valid but far too large makes the resumed run diverge, and says so
    assert code in (0, 2, 3) and "Traceback" not in stderr, (field, value, stderr)
    if code != 0:
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_resume_refuses_other_data(tiny, tmp_path):
    other = tmp_path / "other"
    make_dataset(other, labels=[3, 7], seed=1)          # as many rows, other pixels
    assert_refused(call_cli(train.main, "--data-dir", other, "--resume", tiny / "c.npz", "--epochs", "2"),
                   "was trained on other rows than this data's 40 (their fingerprints differ)")
    make_dataset(tmp_path / "small", labels=[3, 7], n_train=30)
    assert_refused(call_cli(train.main, "--data-dir", tmp_path / "small", "--resume", tiny / "c.npz",
                            "--epochs", "2"), "was trained on 40 rows, this data has 30")
    # a checkpoint from before fingerprints: accepted with a note when its row count matches
    old = checkpoint.load(tiny / "c.npz")
    del old.config["data_fingerprint"]
    checkpoint.save(tmp_path / "old.npz", old)
    code, _, err = call_cli(train.main, "--data-dir", tiny / "data", "--resume", tmp_path / "old.npz",
                            "--epochs", "2", "--quiet")
    assert code == 0 and "predates data fingerprints: only its row count could be checked" in err
    assert files_in(tmp_path / "other") == files_in(tiny / "data")


# ----------------------------------------------------------------------------- 3. predict


def test_predict_refuses_what_it_cannot_read_and_warns(tiny, tmp_path):
    from PIL import Image

    ckpt = tiny / "c.npz"
    Image.new("L", (5000, 5000)).save(tmp_path / "huge.png")
    digit = data.read_idx(tiny / "data" / "t10k-images-idx3-ubyte.gz")[0]
    digit[digit > 200] = 0                                          # mostly dark, like a digit
    Image.fromarray(digit, "L").save(tmp_path / "d8.png")
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "d16.png")
    np.save(tmp_path / "d_int16.npy", digit.astype(np.int16))
    np.save(tmp_path / "d_f16.npy", (digit / 255).astype(np.float16))
    np.save(tmp_path / "u16.npy", digit.astype(np.uint16) * 257)
    np.save(tmp_path / "f255.npy", digit.astype(np.float32))
    Image.new("L", (28, 28), 255).save(tmp_path / "blank.png")
    Image.fromarray(255 - digit, "L").save(tmp_path / "inverted.png")
    for name, message in [("huge.png", "5000x5000 pixels, more than the 16,777,216 allowed"),
                          ("u16.npy", "uint16 values from 0 to 51400; integer pixels must lie in 0..255"),
                          ("f255.npy", "float32 values from 0 to 200; float pixels must lie in [0, 1]")]:
        assert_refused(call_cli(predict.main, "--checkpoint", ckpt, tmp_path / name), message)
    code, out, err = call_cli(predict.main, "--checkpoint", ckpt, *(tmp_path / n for n in (
        "d8.png", "d16.png", "d_int16.npy", "d_f16.npy")))
    assert code == 0 and err == "", err
    probs = {line.split("=")[1].split()[0] for line in out.splitlines()}
    assert len(probs) == 1, out   # the same digit in 8 and 16 bits, int16 and float16: the same P
    code, out, err = call_cli(predict.main, "--checkpoint", ckpt, tmp_path / "blank.png", tmp_path / "inverted.png")
    assert code == 0
    assert f"warning: {tmp_path / 'blank.png'}: looks blank" in err
    assert f"warning: {tmp_path / 'inverted.png'}: looks inverted (a dark digit on a light background)" in err


def test_a_closed_pipe_ends_quietly(tiny, tmp_path):
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    np.save(tmp_path / "d.npy", digit)
    commands = [["mlp.predict", "--checkpoint", tiny / "c.npz", *[tmp_path / "d.npy"] * 3],
                ["mlp.evaluate", "--checkpoint", tiny / "c.npz", "--data-dir", tiny / "data"],
                ["mlp.train", "--data-dir", tiny / "data", "--epochs", "1", "--batch-size", "8", "--quiet"]]
    for command in commands:
        proc = subprocess.Popen([sys.executable, "-m", *map(str, command)], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()   # the reader went away before the first line, as `| head -0`
        stderr = proc.stderr.read()
        assert proc.wait(timeout=60) == 141, stderr
        assert stderr == "", stderr


# ----------------------------------------------------------------------------- 4. no traceback


def test_user_mistakes_are_one_line(tiny, tmp_path, monkeypatch):
    assert_refused(call_cli(train.main, "--seed", "-1"),
                   "argument --seed: must be a whole number from 0 to 2^128 - 1, got -1")
    assert_refused(call_cli(evaluate.main, "--checkpoint", tiny / "c.npz", "--max-shown", "-5"),
                   "argument --max-shown: must be a whole number from 1 to 2^62, got -5")
    fifo, folder = tmp_path / "fifo.npz", tmp_path / "dir.npz"
    os.mkfifo(fifo)
    folder.mkdir()
    for path, kind in ((fifo, "a FIFO (named pipe)"), (folder, "a directory")):
        assert_refused(call_cli(evaluate.main, "--checkpoint", path), f"checkpoint {path} is {kind}, not a file")
    assert_refused(call_cli(predict.main, "--checkpoint", tiny / "c.npz", fifo),
                   f"image {fifo}: is a FIFO (named pipe), not a regular file")
    # predict reads the images in a directory; one without any is its own message
    assert_refused(call_cli(predict.main, "--checkpoint", tiny / "c.npz", folder),
                   f"{folder}: a directory without image files")
    # HOME unset and no passwd entry: no home to find the default data dir in
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("MLP_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr("pwd.getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    assert_refused(call_cli(train.main, "--quiet"), "cannot find the home directory (is HOME unset?)")
    # evaluate's out-of-memory advice names flags evaluate has
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 8.00 EiB for an array with shape (1152921504606846976,)")

    monkeypatch.setattr(evaluate, "score", no_memory)
    code, _, err = call_cli(evaluate.main, "--checkpoint", tiny / "c.npz", "--data-dir", tiny / "data")
    assert code == 4 and "--device cpu" in err and "--batch-size" not in err and "--hidden" not in err, err


def test_data_folder_without_search_permission(tiny):
    with tempfile.TemporaryDirectory() as top:   # pytest's own folders are private to their owner
        os.chmod(top, 0o711)
        locked = Path(top) / "locked"
        locked.mkdir()
        for f in (tiny / "data").iterdir():
            (locked / f.name).write_bytes(f.read_bytes())
        locked.chmod(0o600)   # its listing is readable, but it has no search (x) permission
        # root ignores permissions: the command drops to nobody once Python and mlp are loaded (its
        # parser too, which reads the package's metadata), so the check also runs where CI runs as
        # root, whose Python nobody may not read further
        drop = "os.setuid(65534) if os.geteuid() == 0 else None"
        code = (f"import os, sys; from mlp import backends, cli, train; "
                f"backends.resolve('cpu', None); train.build_parser(); {drop}; "
                f"sys.exit(cli.run(train.main, ['--data-dir', {str(locked)!r}, '--quiet']))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
        locked.chmod(0o700)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mlp.train: error: cannot look into data dir {locked} (Permission denied); give it search (x) and "
        "read permission, or choose another --data-dir"]


# ----------------------------------------------------------------------------- 5. files


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_honour_the_umask(tiny, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        code, _, err = call_cli(train.main, "--data-dir", tiny / "data", "--epochs", "1", "--hidden", "4",
                                "--batch-size", "8", "--quiet", "--save", tmp_path / "c.npz",
                                "--metrics-json", tmp_path / "m.json")
    finally:
        os.umask(previous)
    assert code == 0, err
    for name in ("c.npz", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert files_in(tmp_path) == ["c.npz", "m.json"]
