"""The IDX reader, the checks on bad files, and the checksum-verified download."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from mlp import data
from mlp.errors import DataError

from .idx_files import write_idx
from .conftest import files_in, make_dataset, trust


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    for shape in [(7,), (5, 28, 28), (3, 4, 5, 2)]:
        array = (rng.standard_normal(shape) * 50).astype(dtype)
        path = tmp_path / f"a-{len(shape)}{suffix}"
        write_idx(path, array)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
        back = data.read_idx(path)
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_idx_header_is_mnists(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"
    assert raw[4:16] == bytes.fromhex("00000002 0000001c 0000001c")
    assert len(raw) == 16 + 2 * 784


def test_reads_the_real_files(data_dir):
    images = data.read_idx(data_dir / "train-images-idx3-ubyte.gz")
    labels = data.read_idx(data_dir / "train-labels-idx1-ubyte.gz")
    assert images.shape == (12_396, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (12_396,)
    assert dict(zip(*np.unique(labels, return_counts=True))) == {3: 6131, 7: 6265}
    ds = data.load_dataset(data_dir, (3, 7), download=False)
    assert ds.train.X.shape == (12_396, 784) and ds.test.X.shape == (2_038, 784)
    assert ds.train.y.sum() == 6265 and ds.test.y.sum() == 1028  # label 1 = seven
    # normalised with MNIST's constants: the 3/7 subset's own mean is 0.1279, std 0.3052
    assert ds.train.X.mean() == pytest.approx((0.1279 - 0.1307) / 0.3081, abs=1e-3)
    assert ds.train.X.std() == pytest.approx(0.3052 / 0.3081, abs=1e-3)
    swapped = data.load_dataset(data_dir, (7, 3), download=False)
    np.testing.assert_array_equal(swapped.train.y, 1 - ds.train.y)


def _bad(tmp_path, raw: bytes, name="bad-idx"):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataError) as info:
        data.read_idx(path)
    return str(info.value)


def good_bytes(shape=(3, 28, 28)) -> bytes:
    array = np.arange(np.prod(shape)).astype(np.uint8).reshape(shape)
    return bytes([0, 0, 8, len(shape)]) + np.asarray(shape, ">u4").tobytes() + array.tobytes()


def test_rejects_wrong_magic(tmp_path):
    raw = good_bytes()
    assert "magic" in _bad(tmp_path, b"\x12\x34" + raw[2:])
    assert "magic" in _bad(tmp_path, raw[:2] + b"\x07" + raw[3:])  # type code 7 does not exist
    assert "magic" in _bad(tmp_path, b"%PDF-1.7 not an idx file at all")


def test_rejects_truncated_and_padded(tmp_path):
    raw = good_bytes()
    message = _bad(tmp_path, raw[:-1])
    assert "truncated" in message and "(3, 28, 28)" in message
    assert "truncated" in _bad(tmp_path, raw[:10])
    assert "too short" in _bad(tmp_path, b"\x00\x00")
    assert "too short" in _bad(tmp_path, b"")
    assert "unexpected bytes" in _bad(tmp_path, raw + b"\x00")


def test_rejects_corrupt_gzip(tmp_path):
    packed = gzip.compress(good_bytes())
    assert "gzip" in _bad(tmp_path, packed[: len(packed) // 2], "half.gz")
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF
    assert "gzip" in _bad(tmp_path, bytes(flipped), "flipped.gz")


def test_mismatched_counts_are_rejected(tmp_path):
    make_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    with pytest.raises(DataError, match="40 images but .* 39 labels"):
        data.load_dataset(tmp_path, (0, 1), download=False)


def test_swapped_files_are_rejected(tmp_path):
    make_dataset(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    with pytest.raises(DataError, match="swapped"):
        data.load_dataset(tmp_path, (0, 1), download=False)


def test_nan_in_float_images_is_rejected(tmp_path):
    make_dataset(tmp_path, image_dtype=np.float32)
    images = data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    images[0, 3, 3] = np.nan  # rows 0 and 11 hold a 0 and a 1, the pair loaded below
    images[11, 0, 0] = np.inf
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError, match="2 of 8 images hold NaN or inf"):
        data.load_dataset(tmp_path, (0, 1), download=False)


def test_class_pair_checks(tmp_path):
    make_dataset(tmp_path, labels=[3, 7])
    with pytest.raises(DataError, match="at least two different classes"):
        data.load_dataset(tmp_path, (3, 3), download=False)
    with pytest.raises(DataError, match=r"class 1 is absent .*\(labels present: 3, 7\)"):
        data.load_dataset(tmp_path, (1, 7), download=False)


def test_raw_files_without_gz_are_found(tmp_path):
    make_dataset(tmp_path)
    for p in list(tmp_path.glob("*.gz")):
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    ds = data.load_dataset(tmp_path, (0, 1), download=False)
    assert ds.train.X.shape == (8, 784)


# ----------------------------------------------------------------------------- download


def test_download_verifies_and_caches(mirror, tmp_path, monkeypatch):
    written = make_dataset(mirror)
    trust(mirror, monkeypatch)
    target = tmp_path / "cache" / "deep" / "mnist"
    paths = data.mnist_files(target, quiet=True)
    assert files_in(target) == sorted(name for name, _, _ in data.MNIST_FILES.values())
    for key, (name, _, _) in data.MNIST_FILES.items():
        assert paths[key] == target / name
        assert (target / name).read_bytes() == (mirror / name).read_bytes()
    np.testing.assert_array_equal(data.read_idx(paths["train-images"]), written["train"][0])
    # present files are not fetched again: an empty mirror changes nothing
    for p in mirror.iterdir():
        p.unlink()
    assert data.mnist_files(target, quiet=True) == paths


def test_download_fetches_only_what_is_missing(mirror, tmp_path, monkeypatch):
    make_dataset(mirror)
    trust(mirror, monkeypatch)
    target = tmp_path / "partial"
    make_dataset(target, seed=1)
    (target / "t10k-labels-idx1-ubyte.gz").unlink()
    before = (target / "train-images-idx3-ubyte.gz").read_bytes()
    data.mnist_files(target, quiet=True)
    assert (target / "train-images-idx3-ubyte.gz").read_bytes() == before
    assert (target / "t10k-labels-idx1-ubyte.gz").read_bytes() == (mirror / "t10k-labels-idx1-ubyte.gz").read_bytes()


def test_bad_checksum_caches_nothing(mirror, tmp_path, monkeypatch):
    make_dataset(mirror)
    trust(mirror, monkeypatch)
    name = "train-images-idx3-ubyte.gz"
    raw = bytearray((mirror / name).read_bytes())
    raw[-5] ^= 0x01  # same size, one bit off
    (mirror / name).write_bytes(bytes(raw))
    target = tmp_path / "new" / "mnist"
    with pytest.raises(DataError) as info:
        data.mnist_files(target, quiet=True)
    message = str(info.value)
    assert "failed its check" in message and "nothing was kept" in message and name in message
    assert not (tmp_path / "new").exists(), "the folders made for the download are removed too"


def test_official_checksums_reject_other_files(mirror, tmp_path):
    """With the real table, files that are not the official ones are refused."""
    make_dataset(mirror)
    target = tmp_path / "mnist"
    target.mkdir()
    with pytest.raises(DataError, match="failed its check"):
        data.mnist_files(target, quiet=True)
    assert files_in(target) == []


def test_unreachable_file_is_a_clear_error(mirror, tmp_path, monkeypatch):
    make_dataset(mirror)
    trust(mirror, monkeypatch)
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()  # 404
    target = tmp_path / "mnist"
    with pytest.raises(DataError) as info:
        data.mnist_files(target, quiet=True)
    assert "could not download" in str(info.value) and "t10k-labels-idx1-ubyte.gz" in str(info.value)
    assert "put the four files" in str(info.value)
    # the three good files were verified and stay; no temporary file is left
    assert files_in(target) == sorted(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                       "t10k-images-idx3-ubyte.gz"])


def test_no_download_names_the_missing_files(tmp_path):
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz, .*--no-download"):
        data.mnist_files(tmp_path, download=False)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MLP_DATA_DIR", str(tmp_path / "x"))
    assert data.default_data_dir() == tmp_path / "x"
    monkeypatch.delenv("MLP_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_data_dir() == tmp_path / "cache" / "mlp" / "mnist"
