"""Hostile probes of the ground layer: output paths resolved as the kernel resolves them (`..`
after a link), write protection and mount points judged rightly (also as root, also on
overlayfs), a store flushed to disk before it is renamed into place, IDX headers, the download's
bounds and causes, a refused Dask scheduler, --help/--version into a full stdout, stacked .npy
inputs, and the one helper each for steps per epoch and usable cores."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from mlp import batches, convert, data, evaluate, files, idx, outputs, predict, store, train
from mlp.bench import cli as bench_cli
from mlp.cli import run
from mlp.errors import DataError, UserError

from .conftest import REPO, call_cli, make_dataset, run_cli, tiny_run, trust
from .dask_procs import free_port
from .test_reliability import assert_refused


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("tiny"))


def short_run(tiny, *args):
    """A run on tiny's data (fresh runs: one epoch of H = 4; with --resume: the checkpoint's settings)."""
    fresh = () if "--resume" in args else ("--epochs", "1", "--batch-size", "8", "--hidden", "4")
    return call_cli(train.main, "--data-dir", tiny / "data", "--quiet", *fresh, *args)


# ----------------------------------------------------------------------------- `..` after a link


@pytest.fixture
def linked(tmp_path):
    """tmp/a/b, and tmp/link -> a/b (relative): `link/..` is tmp/a for the kernel, not tmp."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.symlink("a/b", tmp_path / "link")
    return tmp_path


def test_written_path_resolves_as_the_kernel_does(linked):
    """For each path, the file written_path names is the one the kernel creates when it is opened:
    links followed before a `..` after them, relative links from their folder, chains of links,
    a dangling last link written through; /proc links not followed; loops are ELOOP."""
    root = linked
    os.symlink("link", root / "link2")                            # a link to a link
    os.symlink(root / "link", root / "abs")                       # absolute
    (root / "c").mkdir()
    os.symlink("../../c/x/../new", root / "a" / "b" / "dangling")  # dangling, with its own `..`
    (root / "c" / "x").mkdir()
    os.symlink("../link/..", root / "c" / "up")                   # `..` inside a link's text
    for given in ["link/../m1", "link2/../m2", "abs/../m3", "link/dangling", "c/up/m4", "link/../b/../../m5"]:
        expected = files.written_path(root / given)
        with open(root / given, "w"):                              # what the kernel creates
            pass
        assert os.path.samefile(expected, root / given), given
    assert files.written_path(root / "link" / ".." / "m1") == root / "a" / "m1"
    assert files.written_path("/dev/stdout").parts[1] == "proc"
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    for looped in ("loop1", "loop1/m"):
        with pytest.raises(OSError) as info:
            files.written_path(root / looped)
        assert info.value.errno == errno.ELOOP


def test_save_and_log_after_a_link_then_dotdot_write_where_the_kernel_does(tiny, linked):
    """`--save link/../m.npz` writes a/m.npz, as `open` would; ./m.npz (another file) is left alone."""
    root = linked
    for name in ("m.npz", "log.csv"):
        (root / name).write_bytes(b"not this one")
    code, _, err = short_run(tiny, "--save", root / "link/../m.npz", "--log", root / "link/../log.csv")
    assert code == 0, err
    assert (root / "m.npz").read_bytes() == (root / "log.csv").read_bytes() == b"not this one"
    assert (root / "a" / "m.npz").read_bytes()[:2] == b"PK"
    assert (root / "a" / "log.csv").read_text().startswith("epoch,")


def test_inputs_and_outputs_after_dotdot_collide_exactly_when_the_kernel_says_so(tiny, linked):
    root = linked
    shutil.copy(tiny / "c.npz", root / "a" / "c.npz")
    shutil.copy(tiny / "c.npz", root / "c.npz")
    # link/../c.npz is a/c.npz: root/c.npz is another file, so writing it destroys no input
    code, _, err = short_run(tiny, "--epochs", "2", "--resume", root / "link/../c.npz",
                             "--metrics-json", root / "c.npz")
    assert code == 0, err
    assert (root / "c.npz").read_text().startswith("{")
    # ...but a/c.npz is that input
    assert_refused(short_run(tiny, "--epochs", "2", "--resume", root / "link/../c.npz",
                             "--metrics-json", root / "a" / "c.npz"), "is also the input --resume")
    # two outputs, neither there yet, that the kernel puts in one file
    assert_refused(short_run(tiny, "--save", root / "link/../new.npz", "--metrics-json", root / "a" / "new.npz"),
                   "--save and --metrics-json both name")
    assert not (root / "a" / "new.npz").exists()


def test_convert_out_after_a_link_then_dotdot(linked, tmp_path):
    """`--out link/../store` is a/store: a ./store elsewhere does not make it 'exist'."""
    make_dataset(tmp_path / "data", labels=[3, 7])
    (linked / "store").mkdir()
    code, _, err = call_cli(convert.main, "--data-dir", tmp_path / "data", "--out", linked / "link/../store")
    assert code == 0, err
    assert sorted(p.name for p in (linked / "a" / "store").iterdir()) == ["X.npy", "meta.json", "y.npy"]
    assert list((linked / "store").iterdir()) == []


# ----------------------------------------------------------------------------- write protection, mount points


def test_a_write_protected_file_is_refused_even_to_root(tiny, tmp_path):
    """os.access says yes to root for any file: no write bit for anyone still means read-only."""
    kept = tmp_path / "kept.npz"
    kept.write_bytes(b"kept")
    kept.chmod(0o444)
    assert_refused(short_run(tiny, "--save", kept), f"--save {kept}: is read-only; make it writable")
    assert kept.read_bytes() == b"kept"


def test_a_file_on_another_device_than_its_folder_is_no_mount_point(tmp_path, monkeypatch):
    """overlayfs gives a file of a container image's lower layer another st_dev than its folder:
    only /proc/self/mountinfo says what a mount point is."""
    target = tmp_path / "from-the-image.npz"
    target.write_bytes(b"old")
    real_stat = os.stat

    def overlay_stat(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(target):
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1, *st[3:10]))
        return st

    monkeypatch.setattr(os, "stat", overlay_stat)
    assert outputs.check_output_path(target, "--save") == target


# ----------------------------------------------------------------------------- the store


def test_write_store_flushes_files_folder_and_parent_before_and_after_the_rename(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    X = np.zeros((4, 784), np.uint8)
    store.write_store(tmp_path / "s", [(X, np.array([0, 1, 0, 1], np.uint8))], 4, 784,
                      {"classes": [3, 7], "image_shape": [28, 28]})
    temporary = [p for p in synced if p.endswith(store.TMP_SUFFIX)]
    assert len(temporary) == 1, synced
    assert {f"{temporary[0]}/{name}" for name in ("X.npy", "y.npy", "meta.json")} <= set(synced)
    assert synced[-1] == os.path.realpath(tmp_path), "the parent, after the rename"


def test_write_store_refuses_blocks_that_hold_fewer_rows_than_promised(tmp_path):
    """A real error, not an assert (python -O drops those): no store of zero rows at its end."""
    X = np.zeros((3, 784), np.uint8)
    with pytest.raises(ValueError, match="hold 3 rows, not the 5 promised"):
        store.write_store(tmp_path / "s", [(X, np.array([0, 1, 0], np.uint8))], 5, 784,
                          {"classes": [3, 7], "image_shape": [28, 28]})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- IDX headers


@pytest.mark.parametrize("ndim", [17, 64, 65, 255])
def test_an_idx_header_with_too_many_dimensions_is_a_data_error(tmp_path, ndim):
    path = tmp_path / "many.idx"
    path.write_bytes(bytes([0, 0, 0x08, ndim]) + np.ones(ndim, ">u4").tobytes() + b"\x07")
    with pytest.raises(DataError, match=rf"wrong magic number 0x000008{ndim:02x} \(an IDX file starts 0x0000, a type "
                                        r"code 0x08-0x0E and a dimension count from 1 to 16\)"):
        idx.read_idx(path)


def test_a_labels_file_with_200_dimensions_is_exit_2(tmp_path):
    make_dataset(tmp_path / "data", labels=[3, 7])
    labels = tmp_path / "data" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(bytes([0, 0, 0x08, 200]) + np.ones(200, ">u4").tobytes() + b"\x07"))
    assert_refused(call_cli(train.main, "--data-dir", tmp_path / "data", "--quiet"),
                   "wrong magic number 0x000008c8")


# ----------------------------------------------------------------------------- the download


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Serves the server's `body` for any path, one byte every 0.1 s, until it is stopped."""

    def do_GET(self):
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(len(body)):
            if self.server.stopped.wait(0.1):
                return
            self.wfile.write(body[i:i + 1])

    def log_message(self, *args):
        pass


class _TrickleServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):   # the client hanging up is the point
        pass


def one_file_missing(tmp_path, monkeypatch):
    """(the data folder, the name of its one missing file, that file's bytes), the table trusting them."""
    source = tmp_path / "source"
    make_dataset(source)
    trust(source, monkeypatch)
    target = tmp_path / "mnist"
    shutil.copytree(source, target)
    name = "t10k-labels-idx1-ubyte.gz"
    (target / name).unlink()
    return target, name, (source / name).read_bytes()


def test_a_mirror_that_trickles_is_abandoned_at_the_deadline(tmp_path, monkeypatch):
    """The deadline is DOWNLOAD_GRACE_S + size / DOWNLOAD_MIN_RATE: here 0.2 s for a file that
    takes the mirror at least 0.1 s a byte (per-read timeouts never fire: each read gets a byte)."""
    target, name, body = one_file_missing(tmp_path, monkeypatch)
    server = _TrickleServer(("127.0.0.1", 0), _Trickle)
    server.body, server.stopped = body, threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MLP_MNIST_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(data, "DOWNLOAD_GRACE_S", 0.2)
    monkeypatch.setattr(data, "DOWNLOAD_MIN_RATE", 10 ** 12)
    try:
        with pytest.raises(DataError) as info:
            data.mnist_files(target, quiet=True)
    finally:
        server.stopped.set()
        server.shutdown()
        server.server_close()
        thread.join()
    message = str(info.value)
    assert f"download of {os.environ['MLP_MNIST_MIRROR']}{name} abandoned: " in message
    assert (f"of {len(body):,} bytes came, slower than 1,000,000,000,000 bytes/s after a 0.2 s grace; "
            "nothing was kept") in message
    assert not (target / name).exists() and len(list(target.iterdir())) == 3


def test_download_failures_say_their_cause_in_a_few_words(tmp_path, monkeypatch):
    """Connection refused, a name that does not resolve, a mirror that never answers: the cause,
    the URL and the fix, not urllib3's internals."""
    target, name, _ = one_file_missing(tmp_path, monkeypatch)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,mirror.invalid")
    monkeypatch.setattr(data, "READ_TIMEOUT_S", 0.5)
    silent = socket.create_server(("127.0.0.1", 0))    # accepts (the backlog), never answers
    real_getaddrinfo = socket.getaddrinfo

    def unresolved(host, *args, **kwargs):
        if host == "mirror.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", unresolved)
    cases = [(f"http://127.0.0.1:{free_port()}/", "connection refused"),
             ("http://mirror.invalid/", "name not resolved"),
             (f"http://127.0.0.1:{silent.getsockname()[1]}/", "timed out")]
    with silent:
        for mirror, cause in cases:
            monkeypatch.setenv("MLP_MNIST_MIRROR", mirror)
            with pytest.raises(DataError) as info:
                data.mnist_files(target, quiet=True)
            message = str(info.value)
            assert message.startswith(f"could not download {mirror}{name} ({cause}); nothing was kept; put the four "
                                      "files"), message
            assert "--data-dir" in message and message.endswith("or set MLP_MNIST_MIRROR to a mirror that works")
            assert "Pool" not in message and "Errno" not in message and "retries" not in message, message


# ----------------------------------------------------------------------------- a refused Dask scheduler


def test_a_refused_scheduler_fails_at_the_first_refusal(monkeypatch, tmp_path):
    """Nothing listens on the port: that is known at once, so it is not retried until the
    --scheduler-timeout (an address that does not answer at all is waited for up to it)."""
    pytest.importorskip("distributed")
    from mlp.backends import dask_connect

    attempts, real_open = [], asyncio.open_connection

    async def counted(*args, **kwargs):
        attempts.append(args)
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", counted)
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(dask_connect.ClusterError) as info:
        asyncio.run(dask_connect.check_scheduler(address, 3))
    assert len(attempts) == 1
    assert str(info.value).startswith(f"cannot reach the Dask scheduler at {address} (connection refused: nothing "
                                      f"listens on port {address.rpartition(':')[2]} there); start it with")
    make_dataset(tmp_path / "data", labels=[3, 7])    # and the command: one line, exit 2 (in a process of its own:
    proc = run_cli("mlp.train", "--backend", "dask", "--scheduler", address,    # connecting sets distributed's
                   "--data-dir", tmp_path / "data", "--quiet")                   # log levels and warning filters)
    assert_refused((proc.returncode, proc.stdout, proc.stderr), "(connection refused: nothing listens on port")


# ----------------------------------------------------------------------------- --help and --version


@pytest.mark.parametrize("main", [train.main, evaluate.main, predict.main, convert.main, bench_cli.main],
                         ids=["train", "evaluate", "predict", "convert", "bench"])
@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_help_and_version_into_a_full_stdout_are_exit_2(main, flag):
    err = io.StringIO()
    with open("/dev/full", "w") as full, contextlib.redirect_stdout(full), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as info:
            run(main, [flag])
    assert info.value.code == 2
    assert err.getvalue() == f"{main.prog}: error: cannot write to stdout (No space left on device)\n"


def test_version_into_dev_full_from_the_shell():
    proc = subprocess.run(f"'{sys.executable}' -m mlp.train --version > /dev/full", shell=True, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, "mlp.train: error: cannot write to stdout (No space left on device)\n")


# ----------------------------------------------------------------------------- stacked .npy inputs


def test_a_stack_over_the_bound_is_refused_before_it_is_read(tiny, tmp_path):
    """One 28x28 image more than the 67,108,864 pixels documented; the file is sparse, and refused
    from its header."""
    n = (1 << 26) // 784 + 1
    np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=(n, 28, 28)).flush()
    assert_refused(call_cli(predict.main, "--checkpoint", tiny / "c.npz", tmp_path / "big.npy"),
                   f"big.npy: a stack of {n:,} images ({n * 784:,} pixels), more than the 67,108,864 allowed; "
                   f"predict at most {n - 1:,} per run")


# ----------------------------------------------------------------------------- one helper each


def test_steps_per_epoch_are_exact_for_any_row_count():
    n = 2 ** 53 + 1                    # float(n) == 2**53: math.ceil(n / 1) was one step short
    assert batches.batching(n, 1) == (1, n)
    assert batches.batching(n, 2) == (2, 2 ** 52 + 1)
    assert batches.batching(10, "full") == (10, 1) and batches.batching(10, 3) == (3, 4)


def test_the_cuda_graph_engine_counts_its_steps_with_batching(monkeypatch):
    torch = pytest.importorskip("torch")
    from mlp.backends import torch_graph

    monkeypatch.setattr(torch_graph, "batching", lambda n, batch: (batch, 7))
    engine = torch_graph.TorchGraphEngine("cpu", None, torch.zeros(10, 3), torch.zeros(10), 4, capture=False)
    assert engine.steps == 7 and engine.losses.shape == (7,)


def test_the_dask_cluster_sizes_itself_by_the_cgroup_quota(monkeypatch):
    pytest.importorskip("distributed")
    from mlp.backends import dask_cluster, threads

    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root="/": 1.0)    # a container given one CPU
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(UserError, match="--workers 2 is more than this machine runs: 1 cores"):
        dask_cluster.check_options(dask_cluster.Options(workers=2), "cpu")
    assert dask_cluster.check_options(dask_cluster.Options(), "cpu").workers == 1
