"""The store of `python -m mlp.convert` is checked as checkpoints are: meta.json field by field,
with bounds; the labels (0 and 1 only, both present, as many as rows); convert's flags and --out;
the temporary folders of dead converts; the umask. No cluster is needed for any of it."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from mlp.convert import main as convert_main
from mlp.errors import DataError
from mlp.store import open_store, write_store

from .conftest import call_cli

META = {"classes": [3, 7], "image_shape": [28, 28]}


@pytest.fixture
def store(tmp_path):
    """A store of 10 rows, labels 0 and 1."""
    folder = tmp_path / "store"
    X = np.arange(10 * 784, dtype=np.uint64).reshape(10, 784).astype(np.uint8)
    write_store(folder, [(X, np.arange(10, dtype=np.uint8) % 2)], 10, 784, META)
    return folder


def _edit(folder, change):
    meta = json.loads((folder / "meta.json").read_text())
    text = change(meta)
    (folder / "meta.json").write_text(text if isinstance(text, str) else json.dumps(meta))


@pytest.mark.parametrize("change, field", [
    (lambda m: "[]", "field 'meta' is []"),
    (lambda m: m.pop("classes"), "field 'classes' is None"),
    (lambda m: m.update(classes=[3]), "field 'classes' is [3]"),
    (lambda m: m.update(classes=[3, 3]), "field 'classes' is [3, 3]"),
    (lambda m: m.update(classes=[3, True]), "field 'classes'"),
    (lambda m: m.pop("image_shape"), "field 'image_shape' is None"),
    (lambda m: m.update(image_shape=[27, 28]), "product is n_features (784)"),
    (lambda m: m.update(n="10"), "field 'n' is '10'"),
    (lambda m: m.update(n=True), "field 'n' is True"),
    (lambda m: m.update(format="mlp-rows/9"), "field 'format'"),
    (lambda m: m.update(made_by=5), "field 'made_by' is 5"),
    (lambda m: "[" * 30_000 + "]" * 30_000, "nested too deeply"),
    (lambda m: json.dumps({**m, "pad": [[[[[[[[0]]]]]]]]}), "nested too deeply"),   # 9 deep, not 1000
    (lambda m: json.dumps({**m, "pad": "x" * 70_000}), "more than 65,536 bytes"),
    (lambda m: "{not json", "not a converted data store"),
    (lambda m: m.update(n=11), "meta.json promises uint8 (11, 784)"),
])
def test_an_edited_meta_json_is_refused_naming_the_field(store, change, field):
    _edit(store, change)
    with pytest.raises(DataError) as err:
        open_store(store)
    assert field in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("labels, message", [
    (np.full(10, 5, np.uint8), "holds the label 5 (10 rows)"),
    (np.full(10, np.nan), "y.npy holds float64 (10,)"),
    (np.zeros(10, np.uint8), "no row of class 7 (label 1)"),
    (np.ones(10, np.uint8), "no row of class 3 (label 0)"),
    (np.arange(9, dtype=np.uint8) % 2, "y.npy holds uint8 (9,)"),
])
def test_labels_other_than_both_classes_are_refused(store, labels, message):
    np.save(store / "y.npy", labels)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_store(store)


def test_a_bad_store_is_one_line_from_train_before_any_cluster_starts(data_dir, store, monkeypatch):
    from mlp import backends, train

    np.save(store / "y.npy", np.full(10, 5, np.uint8))
    code, out, err = call_cli(train.main, "--backend", "numpy", "--store", store, "--data-dir", data_dir)
    assert code == 2 and "--store applies to --backend dask only" in err

    def no_cluster(*args):
        raise AssertionError("a cluster was asked for before the store was checked")

    monkeypatch.setattr(backends, "resolve", no_cluster)
    code, out, err = call_cli(train.main, "--backend", "dask", "--workers", 1, "--store", store, "--data-dir", data_dir)
    assert code == 2 and err.count("\n") == 1 and "holds the label 5" in err and out == "", err


def test_convert_flags_and_outputs_are_checked_before_any_work(data_dir, tmp_path):
    (tmp_path / "exists").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    cases = [
        (["--classes", 3, 3], "--classes 3 3: give 2 to 10 different digits"),
        (["--classes", 3, 12], "must be a whole number from 0 to 9, got 12"),
        (["--rows", 100, "--max-shift", 28], "--max-shift 28 would move a digit off its 28x28 image; give at most 27"),
        (["--rows", 10 ** 13], "free; free some space"),
        (["--rows", "1e12"], "must be a whole number from 1 to 2^62"),
        (["--out", tmp_path / "exists"], "already exists"),
        (["--out", tmp_path / "dangling"], "already exists"),
        (["--out", tmp_path / "missing" / "store"], "does not exist"),
        (["--out", "/proc/store"], "cannot write in /proc"),
        (["--out", tmp_path / ("x" * 300)], "(File name too long); choose a shorter name"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", tmp_path / "new"]
        code, stdout, err = call_cli(convert_main, "--data-dir", data_dir, *out, *args)
        assert code == 2 and message in err and err.count("\n") == 1 and stdout == "", (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "exists"]   # nothing written


def test_convert_removes_dead_converts_folders_and_honours_the_umask(data_dir, tmp_path):
    dead = tmp_path / f".old.{2 ** 31 - 1}-0badf00d.convert-tmp"   # no process has that pid
    live = tmp_path / f".other.{os.getpid()}-0badf00d.convert-tmp"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "X.npy").write_bytes(b"partial")
    previous = os.umask(0o027)
    try:
        code, _, err = call_cli(convert_main, "--data-dir", data_dir, "--out", tmp_path / "s")
    finally:
        os.umask(previous)
    assert code == 0, err
    assert not dead.exists() and live.exists()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "s", *(tmp_path / "s").iterdir()]}
    assert modes == {"s": 0o750, "X.npy": 0o640, "y.npy": 0o640, "meta.json": 0o640}, modes
