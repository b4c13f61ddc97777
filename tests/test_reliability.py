"""Guards against bad input and divergence, checkpoints, resume, Ctrl-C.

Every guard asserts the exit code, the one-line message, and that nothing was written."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mlp import backends
from mlp import checkpoint, data, evaluate, model, predict, train

from .idx_files import write_idx
from .conftest import REPO, call_cli, files_in, make_dataset, needs_gpu, run_cli


@pytest.fixture
def out(tmp_path):
    """An empty folder for the outputs of a run that must write nothing."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def outputs(out):
    return ["--save", out / "ckpt.npz", "--metrics-json", out / "m.json", "--plot", out / "loss.png"]


def assert_refused(result, message, out=None, code=2):
    code_, stdout, stderr = result
    assert code_ == code, (code_, stdout, stderr)
    assert message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, f"not one line: {stderr!r}"
    assert "Traceback" not in stderr
    if out is not None:
        assert files_in(out) == [], "a refused run must write nothing"


@pytest.fixture(scope="module")
def good_ckpt(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.npz"
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--epochs", "1", "--quiet", "--save", path)
    assert code == 0, err
    return path


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize("args, message", [
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--lr", "-0.1"], "argument --lr: must be a finite number > 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["--lr", "fast"], "argument --lr: must be a finite number > 0, got fast"),
    (["--epochs", "0"], "argument --epochs: must be a whole number from 1 to 2^62, got 0"),
    (["--hidden", "0"], "argument --hidden: must be a whole number from 1 to 2^31, got 0"),
    (["--hidden", "-3"], "argument --hidden: must be a whole number from 1 to 2^31"),
    (["--batch-size", "0"], "argument --batch-size: must be 'full' or a whole number from 1 to 2^62, got 0"),
    (["--batch-size", "half"], "argument --batch-size: must be 'full' or a whole number from 1 to 2^62, got half"),
    (["--backend", "tensorflow"], "argument --backend: invalid choice: 'tensorflow'"),
    (["--activation", "gelu"], "argument --activation: must be one of relu, tanh, got gelu"),
    (["--dtype", "float16"], "argument --dtype: must be one of float32, float64, got float16"),
    (["--device", "tpu"], "unknown device 'tpu': use 'cpu', 'cuda' or 'cuda:N'"),
    (["--device", "cuda", "--backend", "numpy"], "numpy runs on the CPU only"),
    (["--device", "cuda", "--backend", "array_api_strict"], "array_api_strict runs on the CPU only"),
    (["--checkpoint-every", "2"], "--checkpoint-every needs --save PATH"),
])
def test_bad_flags(data_dir, out, args, message):
    argv = ["--data-dir", data_dir, *args]
    if "--checkpoint-every" not in args:
        argv += outputs(out)
    assert_refused(call_cli(train.main, *argv), message, out)


def test_batch_larger_than_the_data(data_dir, out):
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--batch-size", "12397", *outputs(out)),
                   "--batch-size 12397 is larger than the 12,396 training rows; use at most 12396 or 'full'", out)


def test_cuda_where_no_library_sees_a_gpu(data_dir, out):
    try:
        backends.resolve("cuda")
    except backends.BackendError:
        pass
    else:
        pytest.skip("a library here sees a CUDA GPU")
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--device", "cuda", *outputs(out))
    assert_refused((code, "", err), "no installed library can use --device cuda (jax: ", out)
    assert "; torch: " in err and "; cupy: " in err and "pip install 'mlp-by-hand[cuda12]'" in err


def test_cuda_with_a_cpu_only_torch(data_dir, out):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this PyTorch sees a GPU")
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--device", "cuda:0", "--backend", "torch",
                            *outputs(out)), "this PyTorch build sees no GPU", out)


def test_cli_errors_are_one_line_from_a_real_process(data_dir, out):
    result = run_cli("mlp.train", "--data-dir", data_dir, "--lr", "-1", *outputs(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mlp.train: error: argument --lr: must be a finite number > 0, got -1 (see --help)"]
    result = run_cli("mlp.train", "--data-dir", data_dir, "--classes", "3", "3", *outputs(out))
    assert result.returncode == 2
    assert result.stderr.strip() == ("mlp.train: error: --classes 3 3: give 2 to 10 different digits in label "
                                     "order, e.g. 3 7 or 0 1 2 3 4 5 6 7 8 9, or 'all'")
    assert files_in(out) == []


# ----------------------------------------------------------------------------- output paths


def test_output_in_a_missing_directory(data_dir, out):
    for flag in ("--save", "--metrics-json", "--plot"):
        target = out / "no" / "such" / "dir" / "file"
        assert_refused(call_cli(train.main, "--data-dir", data_dir, flag, target),
                       f"{flag} {target}: directory {target.parent} does not exist", out)


def test_output_in_a_read_only_directory(data_dir, tmp_path):
    if os.geteuid() == 0:  # root writes through file modes; /proc takes no new files even for root
        folder = "/proc"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--metrics-json", f"{folder}/m.json")
    assert_refused((code, "", err), f"--metrics-json {folder}/m.json: cannot write in {folder}")


def test_output_that_is_a_directory(data_dir, out):
    (out / "sub").mkdir()
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--save", out / "sub"),
                   "is a directory; give a file name")


# ----------------------------------------------------------------------------- data


def test_same_class_twice_and_absent_class(data_dir, out):
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--classes", "7", "7", *outputs(out)),
                   "--classes 7 7: give 2 to 10 different digits", out)
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--classes", "3", "8", *outputs(out)),
                   "class 8 is absent from", out)


def test_data_dir_without_the_files(tmp_path, out, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(call_cli(train.main, "--data-dir", empty, "--no-download", *outputs(out)),
                   f"data dir {empty} lacks train-images-idx3-ubyte.gz", out)
    assert files_in(empty) == []
    # with downloads on, an unreachable mirror is the same clear error, and leaves nothing behind
    monkeypatch.setenv("MLP_MNIST_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fresh = tmp_path / "fresh" / "mnist"
    assert_refused(call_cli(train.main, "--data-dir", fresh, "--quiet", *outputs(out)),
                   "could not download http://127.0.0.1:9/train-images-idx3-ubyte.gz", out)
    assert not (tmp_path / "fresh").exists()


def corrupt_copy(data_dir, tmp_path, name, mutate):
    folder = tmp_path / "data"
    folder.mkdir()
    for f in data_dir.glob("*-ubyte.gz"):
        (folder / f.name).write_bytes(f.read_bytes())
    target = folder / name
    target.write_bytes(mutate(target.read_bytes()))
    return folder


@pytest.mark.parametrize("name, mutate, message", [
    ("train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2], "corrupt or truncated gzip data"),
    ("train-images-idx3-ubyte.gz", lambda b: gzip.compress(gzip.decompress(b)[:-100], compresslevel=1),
     "truncated: its header promises"),
    ("t10k-labels-idx1-ubyte.gz", lambda b: b[:-8] + b"\x00" * 8, "corrupt or truncated gzip data"),
    ("train-labels-idx1-ubyte.gz", lambda b: gzip.compress(b"\x08\x03" + gzip.decompress(b)[2:]), "wrong magic number"),
    ("train-labels-idx1-ubyte.gz", lambda b: gzip.compress(b"garbage" * 100), "wrong magic number"),
])
def test_bad_idx_files(data_dir, tmp_path, out, name, mutate, message):
    folder = corrupt_copy(data_dir, tmp_path, name, mutate)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    assert_refused(call_cli(train.main, "--data-dir", folder, *outputs(out)), message, out)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before, "the data files are left as they were"


def test_images_and_labels_of_different_counts(data_dir, tmp_path, out):
    train_labels = (data_dir / "train-labels-idx1-ubyte.gz").read_bytes()
    folder = corrupt_copy(data_dir, tmp_path, "t10k-labels-idx1-ubyte.gz", lambda b: train_labels)
    assert_refused(call_cli(train.main, "--data-dir", folder, *outputs(out)),
                   "holds 2,038 images but", out)
    assert "holds 12,396 labels; the two files do not belong together" in call_cli(
        train.main, "--data-dir", folder)[2]


def test_nan_in_the_data(tmp_path, out):
    make_dataset(tmp_path / "d", labels=[3, 7], image_dtype=np.float64)
    images = data.read_idx(tmp_path / "d" / "train-images-idx3-ubyte.gz")
    images[4, 10, 10] = np.nan
    write_idx(tmp_path / "d" / "train-images-idx3-ubyte.gz", images)
    assert_refused(call_cli(train.main, "--data-dir", tmp_path / "d", *outputs(out)),
                   "1 of 40 images hold NaN or inf values", out)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_contents(good_ckpt):
    with np.load(good_ckpt, allow_pickle=False) as z:
        assert set(z.files) == {"w1", "b1", "w2", "b2", "losses", "epoch_seconds", "meta"}
        meta = json.loads(str(z["meta"]))
        assert z["w1"].shape == (784, 128) and z["w1"].dtype == np.float32
        assert len(z["losses"]) == meta["step"] == 194
    assert meta["epoch"] == 1 and meta["step_in_epoch"] == 0
    assert meta["config"]["classes"] == [3, 7] and meta["config"]["lr"] == 0.1
    assert meta["config"]["mean"] == 0.1307 and meta["config"]["std"] == 0.3081
    assert meta["rng_state"]["bit_generator"] == "PCG64"
    assert "numpy" in meta["versions"] and "python" in meta["versions"]


def test_resume_equals_uninterrupted_bitwise(data_dir, tmp_path):
    common = ["--data-dir", data_dir, "--quiet", "--batch-size", "100", "--activation", "tanh"]
    assert call_cli(train.main, *common, "--epochs", "4", "--save", tmp_path / "whole.npz")[0] == 0
    assert call_cli(train.main, *common, "--epochs", "2", "--save", tmp_path / "half.npz")[0] == 0
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--quiet", "--resume", tmp_path / "half.npz",
                            "--epochs", "4", "--save", tmp_path / "resumed.npz")
    assert code == 0, err
    whole, resumed = checkpoint.load(tmp_path / "whole.npz"), checkpoint.load(tmp_path / "resumed.npz")
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    assert resumed.rng_state == whole.rng_state and resumed.epoch == 4


def test_checkpoint_every_k_epochs(data_dir, tmp_path):
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--quiet", "--batch-size", "full", "--epochs", "5",
                            "--checkpoint-every", "2", "--save", tmp_path / "c.npz")
    assert code == 0, err
    assert checkpoint.load(tmp_path / "c.npz").epoch == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"], "no temporary files are left"


@pytest.mark.parametrize("flag, value, saved", [
    ("--hidden", "64", "--hidden 128"),
    ("--lr", "0.2", "--lr 0.1"),
    ("--activation", "tanh", "--activation relu"),
    ("--classes", ["3", "8"], "--classes 3 7"),
    ("--dtype", "float64", "--dtype float32"),
    ("--batch-size", "full", "--batch-size 64"),
])
def test_resume_with_contradicting_flags(data_dir, good_ckpt, out, flag, value, saved):
    value = value if isinstance(value, list) else [value]
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--resume", good_ckpt, flag, *value, "--epochs", "3",
                            *outputs(out)), f"contradicts the checkpoint {good_ckpt}, which was trained with {saved}",
                   out)


def test_resume_past_the_end(data_dir, good_ckpt, out):
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--resume", good_ckpt, *outputs(out)),
                   "already holds 1 epochs; ask for more with --epochs N (N > 1)", out)


def test_checkpoint_of_another_model_shape(good_ckpt, tmp_path, out):
    make_dataset(tmp_path / "small", labels=[3, 7])
    small = tmp_path / "small"
    # a data set of 14x14 images: the checkpoint's 784-pixel model cannot run on it
    for split in ("train", "t10k"):
        images = data.read_idx(small / f"{split}-images-idx3-ubyte.gz")[:, :14, :14].copy()
        write_idx(small / f"{split}-images-idx3-ubyte.gz", images)
    assert_refused(call_cli(train.main, "--data-dir", small, "--resume", good_ckpt, "--epochs", "2", *outputs(out)),
                   "was trained on 784 pixels per image, this data has 196", out)
    assert_refused(call_cli(evaluate.main, "--data-dir", small, "--checkpoint", good_ckpt),
                   "the checkpoint expects images of 28x28 pixels, the data has 14x14")
    # a checkpoint whose arrays disagree with its own settings
    ckpt = checkpoint.load(good_ckpt)
    ckpt.params["w1"] = ckpt.params["w1"][:, :64]
    checkpoint.save(tmp_path / "bad-shape.npz", ckpt)
    assert_refused(call_cli(evaluate.main, "--checkpoint", tmp_path / "bad-shape.npz"),
                   "w1 has shape (784, 64) but its settings (hidden=128, features=784, 2 classes) need (784, 128)")


def test_corrupt_checkpoints(good_ckpt, tmp_path, data_dir, out):
    raw = good_ckpt.read_bytes()
    cases = {
        "truncated.npz": raw[: len(raw) // 2],
        "random.npz": np.random.default_rng(0).bytes(5000),
        "empty.npz": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_refused(call_cli(train.main, "--data-dir", data_dir, "--resume", tmp_path / name, *outputs(out)),
                       f"checkpoint {tmp_path / name} is corrupt", out)
        assert_refused(call_cli(evaluate.main, "--checkpoint", tmp_path / name), "is corrupt")
    ckpt = checkpoint.load(good_ckpt)
    ckpt.rng_state = {"bit_generator": "PCG64", "state": "garbage"}
    checkpoint.save(tmp_path / "bad-rng.npz", ckpt)
    assert_refused(call_cli(train.main, "--data-dir", data_dir, "--resume", tmp_path / "bad-rng.npz", "--epochs", "2",
                            *outputs(out)), "its random-generator state is corrupt", out)
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    assert_refused(call_cli(evaluate.main, "--checkpoint", tmp_path / "foreign.npz"), "is not an mlp checkpoint")
    assert_refused(call_cli(evaluate.main, "--checkpoint", tmp_path / "missing.npz"), "does not exist")


def test_checkpoint_with_a_pickle_inside_is_never_unpickled(good_ckpt, tmp_path, out, data_dir):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with np.load(good_ckpt) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array([Payload()], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Payload()))
    for name in ("evil.npz", "evil.pkl"):
        assert_refused(call_cli(train.main, "--data-dir", data_dir, "--resume", tmp_path / name, *outputs(out)),
                       "holds pickled objects, which are never loaded", out)
        assert_refused(call_cli(predict.main, "--checkpoint", tmp_path / name, "x.png"), "pickled objects")
    assert not marker.exists()


def test_checkpoint_write_is_atomic(good_ckpt, tmp_path, monkeypatch):
    """A failure in the middle of writing leaves the previous checkpoint as it was."""
    path = tmp_path / "c.npz"
    path.write_bytes(good_ckpt.read_bytes())
    before = path.read_bytes()
    ckpt = checkpoint.load(path)
    real_savez = np.savez

    def crash_midway(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(1000)  # as if the disk filled up or the process died mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.np, "savez", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, ckpt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"], "the temporary file is removed"
    assert checkpoint.load(path).epoch == 1


def test_checkpoint_moves_between_libraries(data_dir, tmp_path):
    """A checkpoint holds plain host arrays: saved by one library, continued by another.
    (PyTorch-CPU stands in here for a second device; the CuPy half is in test_parity.)"""
    pytest.importorskip("torch")
    common = ["--data-dir", data_dir, "--quiet", "--batch-size", "500", "--dtype", "float64"]
    assert call_cli(train.main, *common, "--epochs", "1", "--backend", "torch", "--save", tmp_path / "t.npz")[0] == 0
    assert call_cli(train.main, *common, "--epochs", "1", "--backend", "numpy", "--save", tmp_path / "n.npz")[0] == 0
    for src, dst in (("t", "numpy"), ("n", "torch")):
        code, _, err = call_cli(train.main, "--data-dir", data_dir, "--quiet", "--resume", tmp_path / f"{src}.npz",
                                "--epochs", "2", "--backend", dst, "--save", tmp_path / f"{src}-{dst}.npz")
        assert code == 0, err
    a, b = checkpoint.load(tmp_path / "t-numpy.npz"), checkpoint.load(tmp_path / "n-torch.npz")
    for k in model.PARAM_NAMES:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-14)
    # each file names the library that wrote it, not the one that started the run
    assert a.meta["saved_on"].startswith("numpy on cpu") and b.meta["saved_on"].startswith("torch on cpu")


@needs_gpu
@pytest.mark.gpu
def test_checkpoint_from_gpu_resumes_on_cpu(data_dir, tmp_path):
    common = ["--data-dir", data_dir, "--quiet", "--batch-size", "500", "--dtype", "float64"]
    assert call_cli(train.main, *common, "--epochs", "1", "--device", "cuda", "--save", tmp_path / "g.npz")[0] == 0
    assert call_cli(train.main, *common, "--epochs", "1", "--save", tmp_path / "c.npz")[0] == 0
    for src, dev in (("g", "cpu"), ("c", "cuda")):
        assert call_cli(train.main, "--data-dir", data_dir, "--quiet", "--resume", tmp_path / f"{src}.npz",
                        "--epochs", "2", "--device", dev, "--save", tmp_path / f"{src}2.npz")[0] == 0
    a, b = checkpoint.load(tmp_path / "g2.npz"), checkpoint.load(tmp_path / "c2.npz")
    for k in model.PARAM_NAMES:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-9)


# ----------------------------------------------------------------------------- predict


def test_predict_refuses_wrong_size_and_mode(good_ckpt, tmp_path):
    from PIL import Image

    Image.new("L", (32, 32)).save(tmp_path / "big.png")
    Image.new("RGB", (28, 28)).save(tmp_path / "rgb.png")
    np.save(tmp_path / "flat.npy", np.zeros(100))
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    (tmp_path / "text.png").write_text("not an image")
    for name, message in [("big.png", "32x32 pixels, the model needs 28x28; pass --resize"),
                          ("rgb.png", "image mode RGB, the model needs 8-bit grayscale"),
                          ("flat.npy", "array of shape (100,), the model needs (28, 28)"),
                          ("nan.npy", "holds NaN or inf"),
                          ("text.png", "not a readable image"),
                          ("absent.png", "no such file")]:
        code, stdout, err = call_cli(predict.main, "--checkpoint", good_ckpt, tmp_path / name)
        assert_refused((code, stdout, err), message)
        assert stdout == ""


# ----------------------------------------------------------------------------- divergence, memory, Ctrl-C


def test_divergence_stops_with_exit_3_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    ckpt = tmp_path / "c.npz"
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--batch-size", "full", "--lr", "1e6",
                            "--epochs", "20", "--checkpoint-every", "1", "--save", ckpt, "--quiet",
                            "--metrics-json", tmp_path / "m.json")
    assert code == 3, err
    assert "diverged:" in err and "at epoch" in err and "try a smaller --lr" in err
    assert f"the last good checkpoint is {ckpt}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    kept = checkpoint.load(ckpt)  # loads: finite, complete
    assert 1 <= kept.epoch < 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"], "no metrics for a diverged run"


def test_divergence_without_checkpoint(data_dir, out):
    code, _, err = call_cli(train.main, "--data-dir", data_dir, "--lr", "1e30", "--metrics-json", out / "m.json")
    assert code == 3
    assert "the loss became nan at epoch 1, step 2" in err and "no checkpoint was written" in err
    assert files_in(out) == []


def test_out_of_memory_is_a_clear_message(data_dir, out):
    """784 x 2**31 float64 weights (the widest --hidden a checkpoint records): 12.2 TiB. In a process
    of its own whose address space is capped at 16 GiB, so that it is refused at once whatever the
    machine's overcommit policy (with vm.overcommit_memory=1 the kernel would grant it, and the
    first touch of the pages would bring the OOM killer instead)."""
    import resource

    cap = 16 << 30
    done = subprocess.run([sys.executable, "-m", "mlp.train", "--data-dir", str(data_dir), "--hidden", str(2**31),
                           *map(str, outputs(out))], cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    code, err = done.returncode, done.stderr
    assert code == 4, err
    assert "out of memory: an allocation of 12.2 TiB (array of shape (784, 2147483648))" in err
    assert "reduce --batch-size or --hidden" in err and "Traceback" not in err
    assert files_in(out) == []


# `python -c`: mlp.train whose second epoch waits (60 s at most) before its step 10 until a stop is
# requested, so that a Ctrl-C sent once it says "held" lands mid-epoch however fast or loaded the machine
HELD_IN_EPOCH_2 = """
import runpy, sys, time
from mlp import loop
run, seen = loop.EagerEngine.run, set()
def held(self, params, first, last):
    if first == 10 and first in seen:          # the second time: in epoch 2
        print("held", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 60
        while not self.stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
    seen.add(first)
    return run(self, params, first, last)
loop.EagerEngine.run, loop.EagerEngine.stop = held, None   # fit hands an engine with .stop its stop request
sys.argv[0] = "mlp.train"
runpy.run_module("mlp.train", run_name="__main__")
"""


def test_ctrl_c_saves_a_checkpoint_and_the_printed_command_resumes_it(tmp_path):
    make_dataset(tmp_path / "data", n_train=400, labels=[3, 7])      # 50 steps an epoch
    common = ["--data-dir", tmp_path / "data", "--batch-size", "8", "--epochs", "2"]
    proc = subprocess.Popen([sys.executable, "-c", HELD_IN_EPOCH_2, *map(str, common), "--save", tmp_path / "i.npz"],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline().startswith("training:")
        assert proc.stderr.readline().startswith("epoch 1/2")
        assert proc.stderr.readline() == "held\n"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()     # if an assertion above failed; no-op once it has exited
        proc.wait(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted at epoch 2" in stderr and f"checkpoint saved to {tmp_path / 'i.npz'}" in stderr
    assert "Traceback" not in stderr and stdout == ""
    stopped = checkpoint.load(tmp_path / "i.npz")
    assert (stopped.epoch, stopped.step_in_epoch) == (1, 11), "stopped after the step under way when it came"
    # the hint is a command that works when copied: it names the data, the checkpoint and the outputs
    words = shlex.split(stderr.split("continue with: ")[1].strip())
    assert words[:3] == ["python", "-m", "mlp.train"]
    resumed = subprocess.run([sys.executable, *words[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'i.npz'} at epoch 1, step {stopped.step_in_epoch}" in resumed.stderr
    code, _, err = call_cli(train.main, *common, "--quiet", "--save", tmp_path / "whole.npz")
    assert code == 0, err
    whole, resumed = checkpoint.load(tmp_path / "whole.npz"), checkpoint.load(tmp_path / "i.npz")
    assert resumed.epoch == 2
    np.testing.assert_array_equal(resumed.losses, whole.losses)
    for k in model.PARAM_NAMES:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])


# ----------------------------------------------------------------------------- property test


def _namespaces():
    names = ["numpy", "array_api_strict"]
    return [n for n in names if n == "numpy" or __import__("importlib").util.find_spec(n)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend_name=st.sampled_from(_namespaces()),
    B=st.integers(1, 9), D=st.integers(1, 12), H=st.integers(1, 6),
    dtype=st.sampled_from(["float32", "float64", "float16", "int32"]),
    y_shape=st.sampled_from(["vector", "column", "wrong"]),
    break_param=st.sampled_from([None, "w1", "b1", "w2", "b2"]),
    mixed_dtype=st.booleans(),
    activation=st.sampled_from(model.ACTIVATIONS),
    seed=st.integers(0, 2**16),
)
def test_loss_and_grads_is_correct_or_refuses_clearly(backend_name, B, D, H, dtype, y_shape, break_param,
                                                      mixed_dtype, activation, seed):
    assume(not (backend_name == "array_api_strict" and dtype == "float16"))  # it has no float16
    backend = backends.resolve("cpu", backend_name)
    xp = backend.xp
    rng = np.random.default_rng(seed)
    host = model.init_params(D, H, rng, init="he", activation=activation)
    X = rng.standard_normal((B, D))
    y = (rng.random(B) < 0.5).astype(np.float64)
    shapes = {"w1": (D + 1, H), "b1": (H + 1,), "w2": (H, 2), "b2": (2,)}
    if break_param:
        host[break_param] = np.zeros(shapes[break_param])
    y_host = {"vector": y, "column": y.reshape(-1, 1), "wrong": np.zeros(B + 1)}[y_shape]
    param_dtype = "float64" if mixed_dtype and dtype == "float32" else dtype

    def put(a, dt):
        return xp.asarray(backend.asarray(np.asarray(a).astype(dt)))

    params = {k: put(v, param_dtype) for k, v in host.items()}
    valid = (dtype in ("float32", "float64") and y_shape != "wrong" and break_param is None
             and param_dtype == dtype)
    if not valid:
        with pytest.raises(ValueError) as info:
            model.loss_and_grads(params, put(X, dtype), put(y_host, "float64"), activation)
        message = str(info.value)
        assert "\n" not in message and len(message) < 300
        assert any(word in message for word in ("shape", "float32 or float64", "one dtype"))
        return
    loss, grads = model.loss_and_grads(params, put(X, dtype), put(y_host, "float64"), activation)
    ref_loss, ref_grads = model.loss_and_grads(host, X, y, activation)  # float64 NumPy
    tol = 1e-12 if dtype == "float64" else 2e-4
    assert float(backend.to_host(loss)) == pytest.approx(float(ref_loss), rel=tol, abs=tol)
    for k in model.PARAM_NAMES:
        got = backend.to_host(grads[k])
        assert got.shape == ref_grads[k].shape and got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, ref_grads[k], rtol=tol, atol=tol * max(1.0, np.abs(ref_grads[k]).max()))


def test_mixing_array_libraries_is_refused():
    torch = pytest.importorskip("torch")
    params = model.init_params(4, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="one array library"):
        model.loss_and_grads(params, torch.zeros((2, 4), dtype=torch.float64), np.zeros(2))
