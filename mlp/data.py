"""MNIST-style data: the IDX reader, the download cache, class-pair selection, normalisation.

Everything here works on host NumPy arrays; moving them to a device is `backends`' job.

The four standard files live in a data directory: `--data-dir`, else `$MLP_DATA_DIR`, else
`$XDG_CACHE_HOME/mlp/mnist` (default `~/.cache/mlp/mnist`). Missing files are downloaded
from the mirror torchvision uses (`$MLP_MNIST_MIRROR` overrides it), checked against their
SHA-256 and size, and written atomically: a failed download leaves nothing behind.
Files that are already present are used as they are, after the IDX checks below.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import atomic_write

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: file name, sha256 and size of the official gzipped files
MNIST_FILES = {
    "train-images": ("train-images-idx3-ubyte.gz",
                     "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
    "train-labels": ("train-labels-idx1-ubyte.gz",
                     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
    "test-images": ("t10k-images-idx3-ubyte.gz",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
    "test-labels": ("t10k-labels-idx1-ubyte.gz",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
}

#: IDX type code -> big-endian NumPy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}


# ----------------------------------------------------------------------------- IDX format


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian NumPy array.

    The magic number, the dimensions and the file's length are all checked: a corrupt,
    truncated or padded file raises DataError instead of returning a wrong array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc}); download the file again") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{name}: {len(raw)} bytes is too short for an IDX file (not an IDX file?)")
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in IDX_TYPES or ndim == 0:
        raise DataError(
            f"{name}: wrong magic number 0x{raw[:4].hex()} (an IDX file starts 0x0000, a type code "
            "0x08-0x0E and a dimension count); is this an MNIST images/labels file?"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated in its header ({len(raw)} of {header} bytes); download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[code])
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(raw) < expected:
        raise DataError(
            f"{name}: truncated: its header promises shape {dims} ({expected:,} bytes) "
            f"but the file holds {len(raw):,}; download it again"
        )
    if len(raw) > expected:
        raise DataError(
            f"{name}: {len(raw) - expected:,} unexpected bytes after the {dims} array its header "
            "describes; the file is corrupt or not an IDX file"
        )
    data = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path, array, *, compress: bool | None = None) -> None:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz (atomically)."""
    array = np.asarray(array)
    code = IDX_CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX has no type for {array.dtype}; use one of {sorted(str(t) for t in IDX_CODES)}")
    if not 1 <= array.ndim <= 255:
        raise ValueError("IDX arrays have 1 to 255 dimensions")
    body = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.astype(np.dtype(IDX_TYPES[code]), copy=False).tobytes())
    if compress is None:
        compress = str(path).endswith(".gz")
    with atomic_write(path) as f:
        f.write(gzip.compress(body, mtime=0) if compress else body)


# ----------------------------------------------------------------------------- files


def default_data_dir() -> Path:
    """$MLP_DATA_DIR, else $XDG_CACHE_HOME/mlp/mnist, else ~/.cache/mlp/mnist."""
    if os.environ.get("MLP_DATA_DIR"):
        return Path(os.environ["MLP_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlp" / "mnist"


def _present(data_dir: Path, filename: str) -> Path | None:
    for candidate in (data_dir / filename, data_dir / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _files_help(data_dir: Path) -> str:
    names = ", ".join(f for f, _, _ in MNIST_FILES.values())
    return f"put the four files ({names}) in {data_dir} or point --data-dir at a folder that has them"


def mnist_files(data_dir=None, *, download: bool = True, quiet: bool = False) -> dict[str, Path]:
    """The paths of the four files, downloading the missing ones when `download` is true."""
    data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} is not a directory; give the folder that holds the MNIST files")
    found = {key: _present(data_dir, name) for key, (name, _, _) in MNIST_FILES.items()}
    missing = [key for key, p in found.items() if p is None]
    if missing and not download:
        names = ", ".join(MNIST_FILES[k][0] for k in missing)
        raise DataError(f"data dir {data_dir} lacks {names}; {_files_help(data_dir)} (or drop --no-download)")
    if missing:
        mirror = os.environ.get("MLP_MNIST_MIRROR") or DEFAULT_MIRROR
        created = _make_dirs(data_dir)
        try:
            for key in missing:
                name, sha256, size = MNIST_FILES[key]
                found[key] = _download(mirror.rstrip("/") + "/" + name, data_dir / name, sha256, size, quiet)
        except BaseException:
            for d in reversed(created):  # leave no empty folders behind either
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
    return found


def _make_dirs(path: Path) -> list[Path]:
    created = []
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            try:
                parent.mkdir()
            except OSError as exc:
                raise DataError(f"cannot create data dir {path} ({exc.strerror}); choose another --data-dir") from None
            created.append(parent)
    return created


def _download(url: str, dest: Path, sha256: str, size: int, quiet: bool) -> Path:
    if not quiet:
        print(f"downloading {url} -> {dest} ({size / 1e6:.1f} MB)", file=sys.stderr)
    try:
        with atomic_write(dest) as f:
            digest, n = hashlib.sha256(), 0
            with urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
            if n != size or digest.hexdigest() != sha256:
                raise DataError(
                    f"download of {url} failed its check (got {n:,} bytes, sha256 {digest.hexdigest()[:16]}..., "
                    f"expected {size:,} bytes, sha256 {sha256[:16]}...); nothing was kept; {_files_help(dest.parent)}"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"could not download {url} ({reason}); nothing was kept; {_files_help(dest.parent)}") from None
    return dest


# ----------------------------------------------------------------------------- the data set


@dataclass
class Split:
    X: np.ndarray       # (N, D) float, normalised
    y: np.ndarray       # (N,)  float64 in {0, 1}: 1 means classes[1]
    digits: np.ndarray  # (N,)  the original labels
    image_shape: tuple  # e.g. (28, 28)


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: tuple[int, int]
    image_shape: tuple[int, ...]
    data_dir: Path


def normalise(images: np.ndarray, dtype=np.float64) -> np.ndarray:
    """(N, ...) pixels -> (N, D) floats: integer pixels are divided by 255 first, then
    (x - 0.1307) / 0.3081, MNIST's mean and standard deviation."""
    x = images.reshape(images.shape[0], -1).astype(dtype)
    if np.issubdtype(images.dtype, np.integer):
        x /= 255
    x -= MNIST_MEAN
    x /= MNIST_STD
    return x


def select_pair(images: np.ndarray, labels: np.ndarray, classes, name: str):
    """Rows whose label is classes[0] or classes[1], in file order, and y = (label == classes[1])."""
    a, b = classes
    present = set(np.unique(labels).tolist())
    for c in (a, b):
        if c not in present:
            shown = ", ".join(str(v) for v in sorted(present)[:20])
            raise DataError(f"class {c} is absent from {name} (labels present: {shown}); choose --classes among them")
    keep = (labels == a) | (labels == b)
    return images[keep], (labels[keep] == b).astype(np.float64), labels[keep]


def load_split(images_path, labels_path, classes, dtype=np.float64) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2:
        raise DataError(f"{images_path}: expected images (N, rows, cols), got shape {images.shape}; "
                        "are the images and labels files swapped?")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected integer labels of shape (N,), got {labels.dtype} {labels.shape}; "
                        "are the images and labels files swapped?")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]:,} images but {labels_path} holds "
                        f"{labels.shape[0]:,} labels; the two files do not belong together")
    images, y, digits = select_pair(images, labels, classes, str(labels_path))
    X = normalise(images, dtype)
    if not np.isfinite(X).all():
        bad = int(np.count_nonzero(~np.isfinite(X).all(axis=1)))
        raise DataError(f"{images_path}: {bad:,} of {len(X):,} images hold NaN or inf values; fix or replace the file")
    return Split(X=X, y=y, digits=digits, image_shape=tuple(images.shape[1:]))


def load_dataset(data_dir=None, classes=(3, 7), *, download: bool = True, quiet: bool = False,
                 dtype=np.float64) -> Dataset:
    """Train and test splits of the class pair, normalised, as host arrays."""
    a, b = (int(c) for c in classes)
    if a == b:
        raise DataError(f"--classes {a} {b}: the two classes must differ")
    paths = mnist_files(data_dir, download=download, quiet=quiet)
    train = load_split(paths["train-images"], paths["train-labels"], (a, b), dtype)
    test = load_split(paths["test-images"], paths["test-labels"], (a, b), dtype)
    if train.image_shape != test.image_shape:
        raise DataError(f"train images are {train.image_shape} but test images {test.image_shape}; "
                        "the files come from different data sets")
    return Dataset(train=train, test=test, classes=(a, b), image_shape=train.image_shape,
                   data_dir=Path(paths["train-images"]).parent)


if __name__ == "__main__":  # `python -m mlp.data convert ...`: the on-disk store for --backend dask
    from .store import cli

    cli()
