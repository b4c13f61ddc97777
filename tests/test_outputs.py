"""Issue 16, part 1: one output policy (docs/outputs.md) for train, evaluate, predict, bench and
convert. Links are written through, never replaced; what cannot be written is refused before any
work, in one line with its real cause; the flags accept what the checkpoint reader accepts."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlp import checkpoint, convert, evaluate, files, outputs, predict, train
from mlp.bench import cli as bench_cli

from .conftest import REPO, call_cli, files_in, tiny_run
from .test_reliability import assert_refused


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny_run's data and checkpoint, and a digit."""
    root = tiny_run(tmp_path_factory.mktemp("tiny"))
    np.save(root / "d.npy", np.zeros((28, 28), np.uint8))
    return root


def short_run(tiny, *args):
    return call_cli(train.main, "--data-dir", tiny / "data", "--epochs", "2", "--batch-size", "8", "--hidden", "4",
                    "--quiet", *args)


# ----------------------------------------------------------------------------- links


def test_every_output_behind_a_link_is_written_through(tiny, tmp_path):
    """A link to a file elsewhere (relative, absolute, a chain, dangling into an existing
    folder): the target is replaced, the link kept, on every command."""
    there, here = tmp_path / "there", tmp_path / "here"
    there.mkdir(), here.mkdir()
    names = {"save": "c.npz", "best": "b.npz", "metrics": "m.json", "log": "l.csv", "plot": "p.png",
             "eplot": "e.svg", "csv": "p.csv"}
    for key, name in names.items():
        (there / name).write_bytes(b"old")
    os.symlink(f"../there/{names['save']}", here / "save")                    # relative
    os.symlink(there / names["metrics"], here / "metrics")                     # absolute
    os.symlink(here / "log2", here / "log")                                    # a chain of two
    os.symlink(there / names["log"], here / "log2")
    os.symlink(there / "new.png", here / "plot.png")                           # dangling, its folder exists
    for key, name in (("best", "best"), ("eplot", "eplot.svg"), ("csv", "csv")):
        os.symlink(there / names[key], here / name)
    code, _, err = short_run(tiny, "--save", here / "save", "--save-best", here / "best", "--val-split", "0.25",
                             "--metrics-json", here / "metrics", "--log", here / "log", "--plot", here / "plot.png")
    assert code == 0, err
    assert checkpoint.load(there / "c.npz").epoch == 2 and checkpoint.load(there / "b.npz").epoch >= 1
    assert json.loads((there / "m.json").read_text())["completed_epochs"] == 2
    assert (there / "l.csv").read_text().splitlines()[0].startswith("epoch,step")
    assert (there / "new.png").read_bytes()[:4] == b"\x89PNG"
    assert call_cli(evaluate.main, "--checkpoint", here / "save", "--data-dir", tiny / "data",
                    "--plot", here / "eplot.svg")[0] == 0
    assert b"<svg" in (there / "e.svg").read_bytes()
    assert call_cli(predict.main, "--checkpoint", here / "save", tiny / "d.npy", "--csv", here / "csv")[0] == 0
    assert (there / "p.csv").read_text().startswith("input,p_7,predicted\n")
    assert all(p.is_symlink() for p in here.iterdir()), "a link was replaced"
    assert files_in(there) == sorted([*names.values(), "new.png"]), "no temporary or lock file left"


def test_links_that_cannot_be_written_through_are_refused(tiny, tmp_path):
    os.symlink(tmp_path / "missing" / "x.json", tmp_path / "dangling")
    os.symlink(tmp_path, tmp_path / "folder")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink("/proc/self/fd/1", tmp_path / "stdout")          # what /dev/stdout is
    for path, message in [(tmp_path / "dangling", f"directory {tmp_path / 'missing'} does not exist"),
                          (tmp_path / "folder", "is a directory"),
                          (tmp_path / "loop", "Too many levels of symbolic links"),
                          (tmp_path / "stdout", "names an open file of a process"),
                          ("/proc/self/fd/1", "names an open file of a process")]:
        assert_refused(short_run(tiny, "--metrics-json", path), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "folder", "loop", "stdout"]
    assert all(p.is_symlink() for p in tmp_path.iterdir())


def test_resume_in_place_through_a_link(tiny, tmp_path):
    (tmp_path / "real.npz").write_bytes((tiny / "c.npz").read_bytes())
    os.symlink("real.npz", tmp_path / "link.npz")
    code, _, err = call_cli(train.main, "--data-dir", tiny / "data", "--resume", tmp_path / "link.npz",
                            "--save", tmp_path / "link.npz", "--epochs", "2", "--quiet")
    assert code == 0, err
    assert (tmp_path / "link.npz").is_symlink() and checkpoint.load(tmp_path / "real.npz").epoch == 2


def test_atomic_write_never_replaces_a_special_file(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="a FIFO"):
        with files.atomic_write(tmp_path / "fifo") as f:
            f.write(b"x")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and files_in(tmp_path) == ["fifo"]


# ----------------------------------------------------------------------------- causes


def test_what_cannot_be_replaced_is_refused_with_its_cause(tiny, tmp_path, monkeypatch):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "theirs.json").write_text("{}")
    monkeypatch.setattr(outputs.os, "geteuid", lambda: 12345)   # we are neither the file's nor the folder's owner
    assert_refused(short_run(tiny, "--metrics-json", sticky / "theirs.json"),
                   "belongs to another user in the sticky folder")
    monkeypatch.undo()
    for path, message in [("", "the path is empty"), (f"{tmp_path}/new/", "ends with '/'")]:
        assert_refused(short_run(tiny, "--save", path), message)
    # a write that fails with EPERM is not a full disk
    monkeypatch.setattr(checkpoint.np, "savez", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EPERM, "Operation not permitted")))
    code, _, err = short_run(tiny, "--save", tmp_path / "c.npz")
    assert code == 2 and "(Operation not permitted)" in err and "check the permissions" in err, err
    assert "free some space" not in err and "Traceback" not in err


def test_a_read_only_output_is_refused_before_training(tiny):
    top = tempfile.TemporaryDirectory()   # pytest's own folders are private to their owner
    tmp_path = Path(top.name)
    os.chmod(tmp_path, 0o777)
    (tmp_path / "log.csv").write_text("kept\n")
    (tmp_path / "log.csv").chmod(0o444)
    drop = "os.setuid(65534) if os.geteuid() == 0 else None"   # root may write anything: run as nobody
    # the parser (which reads the package's metadata) is built before dropping to nobody, who cannot
    # read this machine's Python under /root
    code = (f"import os, sys, importlib.metadata, filelock; from mlp import cli, train; train.build_parser(); {drop}; "
            "sys.exit(cli.run(train.main, ['--data-dir', "
            f"{str(tiny / 'data')!r}, '--quiet', '--log', {str(tmp_path / 'log.csv')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mlp.train: error: --log {tmp_path / 'log.csv'}: is read-only; make it writable (chmod u+w) or choose "
        "another path"]
    assert (tmp_path / "log.csv").read_text() == "kept\n"
    top.cleanup()


# ----------------------------------------------------------------------------- bench, convert, archives


def test_the_bench_checks_its_outputs_and_flags_before_measuring(tiny, tmp_path):
    data_file = tmp_path / "copy.gz"
    data_file.write_bytes((tiny / "data" / "train-images-idx3-ubyte.gz").read_bytes())
    os.link(data_file, tmp_path / "hard.json")
    x = tmp_path / "x"
    for args, message in [
        (["--json", x, "--markdown", x], f"--json and --markdown both name {x}"),
        (["--json", x, "--plot", x], f"--json and --plot both name {x}"),
        (["--json", tiny / "data" / "t10k-labels-idx1-ubyte.gz"], "is also the input --data-dir's t10k-labels"),
        (["--markdown", tmp_path / "hard.json", "--json", data_file], "both name"),
        (["--plot", tmp_path / "p.txt"], "the suffix .txt names no image format"),
        (["--json", tmp_path / "missing" / "b.json"], "does not exist"),
        (["--backends", "numpy,tensorflow"], "--backends: unknown backend 'tensorflow'"),
        (["--sizes", "1e400"], "sizes must be whole numbers from 1 to 2**62, got 1e400"),
        (["--sizes", "nan"], "got nan"), (["--sizes", "1.5"], "got 1.5"),
        (["--max-epoch-seconds", "-1"], "must be a finite number > 0"),
        (["--budget", "nan"], "must be a finite number > 0"),
    ]:
        started = time.perf_counter()
        assert_refused(call_cli(bench_cli.main, "--data-dir", tiny / "data", *args), message)
        assert time.perf_counter() - started < 30, "refused before any measurement"
    assert files_in(tmp_path) == ["copy.gz", "hard.json"]
    assert bench_cli.size("1e5") == 100_000 and bench_cli.size("real") == "real"


def test_convert_out_follows_the_policy(tiny, tmp_path):
    (tmp_path / "exists").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    for out, message in [(tmp_path / "exists", "already exists (a directory)"),
                         (tmp_path / "dangling", "already exists (a link)"),
                         (tmp_path / "no" / "store", f"directory {tmp_path / 'no'} does not exist"),
                         (tiny / "data", "already exists")]:
        assert_refused(call_cli(convert.main, "--data-dir", tiny / "data", "--out", out), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "exists"]


def test_a_checkpoint_with_many_members_is_refused_before_its_directory_is_read(tiny, tmp_path):
    with zipfile.ZipFile(tiny / "c.npz") as good, zipfile.ZipFile(tmp_path / "many.npz", "w") as bad:
        for name in good.namelist():
            bad.writestr(name, good.read(name))
        for i in range(100):
            bad.writestr(f"junk{i}", b"")
    for main, args in ((evaluate.main, ("--data-dir", tiny / "data")), (predict.main, (tiny / "d.npy",))):
        assert_refused(call_cli(main, "--checkpoint", tmp_path / "many.npz", *args),
                       "107 members in a directory of")
    raw = io.BytesIO((tiny / "c.npz").read_bytes())
    from mlp.npz import directory_size

    assert directory_size(raw)[0] == 7


def test_a_bind_mounted_file_and_a_full_file_system_are_refused_up_front(tiny, tmp_path):
    """In a private mount namespace (root only): a file bind-mounted onto itself (same device as its
    folder: rename over it fails with EBUSY), and a 64 kB tmpfs that is full."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (needs root and unshare)")
    (tmp_path / "m.npz").write_bytes(b"kept")
    (tmp_path / "small").mkdir()
    script = ('mount --bind "$1/m.npz" "$1/m.npz" && mount -t tmpfs -o size=64k none "$1/small" && '
              'dd if=/dev/zero of="$1/small/fill" bs=4k count=64 2>/dev/null; '
              'for out in "--save $1/m.npz" "--log $1/small/log.csv"; do '
              '"$2" -m mlp.train --data-dir "$3" --quiet $out; echo "rc=$?"; done')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", tmp_path, sys.executable, tiny / "data"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["rc=2", "rc=2"], proc.stderr
    assert proc.stderr.splitlines() == [
        f"mlp.train: error: --save {tmp_path / 'm.npz'}: is a mount point (a bind-mounted file), which cannot be "
        "replaced; choose another path",
        f"mlp.train: error: --log {tmp_path / 'small' / 'log.csv'}: the file system of {tmp_path / 'small'} is full "
        "(no free space); free some space or choose another path"]
    assert (tmp_path / "m.npz").read_bytes() == b"kept"
