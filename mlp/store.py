"""Training rows on disk, read lazily by chunk: the data side of `--backend dask`.

A *store* is a folder written once by `python -m mlp.convert`:

    X.npy      uint8 (N, D)  the pixels as the IDX file holds them (1 byte per pixel)
    y.npy      uint8 (N,)    the position of each row's class in `classes` (for two: 1 = classes[1])
    meta.json  format, classes, image shape, row count, how it was made

A `.npy` file is a small header followed by the rows in C order, so a chunk of rows is one
contiguous byte range: `NpyRows` reads exactly that range with a plain file read (no
memory map stays open, so a worker's resident memory does not grow with the file), and any
chunk size can be chosen at training time. `IdxRows` offers the same interface straight
on the IDX files of a data folder. Both are small picklable objects with `shape`, `dtype`
and `rows[a:b]`, so a Dask worker that loses its chunks reads them again from the file.

Everything here is NumPy only; building dask arrays on top is `backends.dask_cluster`'s job.
"""

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from . import settings
from .data import mnist_files, read_idx, select_classes
from .settings import MAX_COUNT, MAX_DIM
from .errors import DataError, UserError
from .files import check_input_file, fsync, process_alive, read_json
from .npz import read_npy_header

FORMAT = "mlp-rows/1"
FILES = ("X.npy", "y.npy", "meta.json")
BLOCK_ROWS = 65_536          # rows written at a time: bounded memory however large the store
LABEL_BLOCK = 1 << 24        # labels checked at a time (16 MB)
MAX_META_BYTES = 1 << 16
TMP_SUFFIX = ".convert-tmp"
AGAIN = "convert the data again with python -m mlp.convert"


# ----------------------------------------------------------------------------- lazy rows


class NpyRows:
    """Rows of a .npy file, read from disk on indexing: `shape`, `dtype`, `ndim`, `[rows, cols]`."""

    def __init__(self, path):
        self.path = str(check_input_file(path, "the store's file"))    # not a FIFO, which would block a read
        try:
            with open(self.path, "rb") as f:
                shape, fortran, dtype = read_npy_header(f)
                self.offset = f.tell()
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {self.path} as a .npy array ({exc}); {AGAIN}") from None
        if fortran:
            raise DataError(f"{self.path} is stored in Fortran order; {AGAIN}")
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        expected = self.offset + int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        if os.path.getsize(self.path) != expected:
            raise DataError(f"{self.path} is truncated or padded ({os.path.getsize(self.path):,} bytes, its header "
                            f"promises {expected:,}); {AGAIN}")

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        start, stop, step = rows.indices(self.shape[0]) if isinstance(rows, slice) else (None, None, None)
        if step != 1:
            raise TypeError("NpyRows reads contiguous row ranges only")
        row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        count = max(0, stop - start) * row_items
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * row_items * self.dtype.itemsize)
            block = np.fromfile(f, dtype=self.dtype, count=count)
        if block.size != count:
            raise DataError(f"{self.path}: short read at rows {start}:{stop}; the file changed or is truncated")
        return block.reshape((stop - start,) + self.shape[1:])[(slice(None), *rest)]

    def __repr__(self):
        return f"NpyRows({self.path!r}, shape={self.shape}, dtype={self.dtype})"


@functools.lru_cache(maxsize=2)
def _pair_rows(images_path: str, labels_path: str, classes: tuple, mtime: float):
    """The classes' uint8 images (N, D) and labels (N,) (class positions), read once per process."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    images, y, _ = select_classes(images, labels, classes, labels_path)
    return np.ascontiguousarray(images.reshape(images.shape[0], -1)), y.astype(np.uint8)


class IdxRows:
    """The classes' rows of an IDX images file (`part='X'`, uint8 (N, D)) or their labels
    (`part='y'`, uint8 (N,)). The files are read once per process on first use."""

    def __init__(self, images_path, labels_path, classes, part: str, shape):
        self.images_path, self.labels_path = str(images_path), str(labels_path)
        self.classes, self.part = tuple(int(c) for c in classes), part
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(np.uint8), len(shape)

    def __getitem__(self, key):
        X, y = _pair_rows(self.images_path, self.labels_path, self.classes, os.path.getmtime(self.images_path))
        return np.array((X if self.part == "X" else y)[key], copy=True)

    def __repr__(self):
        return f"IdxRows({self.images_path!r}, classes={self.classes}, part={self.part!r}, shape={self.shape})"


def idx_rows(images_path, labels_path, classes) -> tuple[IdxRows, IdxRows]:
    """(X, y) lazy rows of the classes in IDX files (reads them here once, for the shape)."""
    X, y = _pair_rows(str(images_path), str(labels_path), tuple(int(c) for c in classes), os.path.getmtime(images_path))
    return (IdxRows(images_path, labels_path, classes, "X", X.shape),
            IdxRows(images_path, labels_path, classes, "y", y.shape))


# ----------------------------------------------------------------------------- stores


def open_store(folder, classes=None) -> tuple[NpyRows, NpyRows, dict]:
    """(X, y, meta) of a store folder, every part checked before use: meta.json field by field, X and
    y against it, and the labels (one per class, each class present). `classes`, when given, must be
    the store's."""
    folder = Path(folder)
    meta = read_meta(folder)
    X, y = NpyRows(folder / "X.npy"), NpyRows(folder / "y.npy")
    if X.dtype != np.uint8 or X.shape != (meta["n"], meta["n_features"]):
        raise DataError(f"{folder}/X.npy holds {X.dtype} {X.shape}, meta.json promises uint8 "
                        f"({meta['n']}, {meta['n_features']}); convert the data again")
    if y.dtype != np.uint8 or y.shape != (meta["n"],):
        raise DataError(f"{folder}/y.npy holds {y.dtype} {y.shape}, meta.json promises uint8 ({meta['n']},) labels; "
                        "convert the data again")
    check_labels(y, folder, meta["classes"])
    if classes is not None and tuple(meta["classes"]) != tuple(classes):
        held, asked = " ".join(map(str, meta["classes"])), " ".join(map(str, classes))
        raise UserError(f"the store {folder} holds the classes {held}, the run asks for {asked}; "
                        f"use --classes {held}, or convert the classes you want")
    return X, y, meta


def store_classes(value) -> list:
    """The classes a store may keep (as a checkpoint does, and at most 256: its labels are bytes), or ValueError."""
    if len(settings.check("classes", value)) > 256:
        raise ValueError("at most 256 classes (a store's labels are bytes)")
    return value


def _whole(value, lo: int, hi: int = MAX_COUNT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def read_meta(folder: Path) -> dict:
    """meta.json, read with bounds (size, nesting) and checked field by field; a DataError names the field."""
    path = folder / "meta.json"
    try:
        with open(check_input_file(path, "the store's file"), "rb") as f:
            text = f.read(MAX_META_BYTES + 1)
        if len(text) > MAX_META_BYTES:
            raise ValueError(f"more than {MAX_META_BYTES:,} bytes")
        meta = read_json(text.decode())
    except RecursionError:
        meta = "nested too deeply"
    except (OSError, ValueError, UserError) as exc:
        raise DataError(f"{folder} is not a converted data store ({exc.__class__.__name__}: {exc}); "
                        "make one with python -m mlp.convert --out DIR") from None

    def bad(field: str, need: str) -> DataError:
        shown = repr(meta.get(field) if isinstance(meta, dict) else meta)
        return DataError(f"{path}: field {field!r} is {shown[:60]}, but must be {need}; the file is corrupt or was "
                         f"edited: {AGAIN}")

    if not isinstance(meta, dict):
        raise bad("meta", "a JSON object")
    if meta.get("format") != FORMAT:
        raise bad("format", f"{FORMAT!r} (the format this version reads)")
    for field in ("n", "n_features"):
        if not _whole(meta.get(field), 1):
            raise bad(field, "a whole number of at least 1")
    try:
        store_classes(meta.get("classes"))
    except ValueError as exc:
        raise bad("classes", str(exc)) from None
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and all(_whole(s, 1, MAX_DIM) for s in shape)
            and int(np.prod(shape)) == meta["n_features"]):
        raise bad("image_shape", f"one or two sizes whose product is n_features ({meta['n_features']})")
    for field in ("source", "made_by"):
        if field in meta and not isinstance(meta[field], str):
            raise bad(field, "a text")
    return meta


def check_labels(y: NpyRows, folder, classes) -> None:
    """Every label the position of a class, and each class present (read in blocks: bounded
    memory however large the store)."""
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, y.shape[0], LABEL_BLOCK):
        counts += np.bincount(y[start:start + LABEL_BLOCK], minlength=256)
    K = len(classes)
    other = np.flatnonzero(counts[K:])
    if other.size:
        raise DataError(f"{folder}/y.npy holds the label {other[0] + K} ({counts[other[0] + K]:,} rows); a store of "
                        f"{K} classes holds the labels 0 to {K - 1} only: convert the data again")
    for label in range(K):
        if counts[label] == 0:
            raise DataError(f"{folder}/y.npy holds no row of class {classes[label]} (label {label}); a store needs "
                            "every class: convert the data again")


def store_fingerprint(folder) -> str:
    """SHA-256 of a store's meta.json and labels: what a resumed --store run checks (hashing
    every row of a store larger than memory would mean reading all of it once more)."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "meta.json").read_bytes())
    with open(folder / "y.npy", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_store(folder, blocks, n: int, n_features: int, meta: dict) -> None:
    """Write (X, y) blocks (uint8) into a new store folder, all or nothing: the files go to a
    temporary folder beside it (`.NAME.<pid>-<random>.convert-tmp`, removed by the next convert
    in that folder if this process dies) that is renamed into place once its files and itself are
    on disk (fsync; the parent's entry after the rename). Folder and files honour the umask."""
    folder = Path(folder)
    if os.path.lexists(folder):
        raise UserError(f"{folder} already exists; remove it or choose another --out")
    parent = folder.parent
    if not parent.is_dir():
        raise UserError(f"the folder {parent} does not exist; create it first or choose another --out")
    remove_dead_temporaries(parent)
    need = n * (n_features + 1) + (1 << 20)
    free = shutil.disk_usage(parent).free
    if need > free:
        raise UserError(f"the store of {n:,} rows needs {need / 1e9:,.2f} GB, {parent} has {free / 1e9:,.2f} GB free; "
                        "free some space, choose another --out or convert fewer --rows")
    tmp = parent / f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        os.mkdir(tmp, 0o777)         # the umask applies (mkdtemp's folders are 0700 whatever it is)
    except OSError as exc:
        raise UserError(f"cannot create the temporary folder {tmp.name[:60]}... beside {folder} ({exc.strerror}); "
                        "choose a shorter name or another folder for --out") from None
    try:
        X = np.lib.format.open_memmap(tmp / "X.npy", mode="w+", dtype=np.uint8, shape=(n, n_features))
        y = np.lib.format.open_memmap(tmp / "y.npy", mode="w+", dtype=np.uint8, shape=(n,))
        start = 0
        for Xb, yb in blocks:
            X[start:start + len(Xb)], y[start:start + len(yb)] = Xb, yb
            start += len(Xb)
        if start != n:
            raise ValueError(f"write_store: the blocks hold {start:,} rows, not the {n:,} promised")
        X.flush(), y.flush()
        del X, y
        header = {"format": FORMAT, "n": n, "n_features": n_features, **meta}
        (tmp / "meta.json").write_text(json.dumps(header, indent=1))
        for part in ("X.npy", "y.npy", "meta.json", "."):
            fsync(tmp / part)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync(parent)


def remove_dead_temporaries(parent: Path) -> None:
    """Remove the temporary folders in `parent` of converts whose process no longer runs (a convert
    killed with SIGKILL, or a power cut); those of live processes are left alone."""
    with contextlib.suppress(OSError):
        for tmp in parent.glob(f".*{TMP_SUFFIX}"):
            pid = tmp.name[:-len(TMP_SUFFIX)].rpartition(".")[2].partition("-")[0]
            if pid.isdigit() and not process_alive(int(pid)) and tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)


def shifted(images: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Each image (B, H, W) moved by (dy, dx) pixels, the uncovered border filled with 0."""
    out = np.zeros_like(images)
    H, W = images.shape[1:]
    for sy, sx in set(zip(dy.tolist(), dx.tolist())):
        k = (dy == sy) & (dx == sx)
        out[k, max(sy, 0):H + min(sy, 0), max(sx, 0):W + min(sx, 0)] = \
            images[k, max(-sy, 0):H + min(-sy, 0), max(-sx, 0):W + min(-sx, 0)]
    return out


def resampled_blocks(images: np.ndarray, labels: np.ndarray, n: int, max_shift: int, seed: int):
    """n rows drawn with replacement from (images (M, H, W), labels), each moved by up to
    max_shift pixels in x and y: new images of real digits, in blocks of BLOCK_ROWS."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, BLOCK_ROWS):
        b = min(BLOCK_ROWS, n - start)
        pick = rng.integers(0, images.shape[0], b)
        dy, dx = rng.integers(-max_shift, max_shift + 1, (2, b))
        yield shifted(images[pick], dy, dx).reshape(b, -1), labels[pick]


def convert(data_dir, out, classes=(3, 7), *, rows: int | None = None, max_shift: int = 0, seed: int = 0,
            download: bool = True) -> dict:
    """The classes' training rows (a list of labels, or 'all') of the IDX files in `data_dir` as a store
    at `out`; with `rows`, that many rows resampled from them with shifts of up to `max_shift` pixels."""
    paths = mnist_files(data_dir, download=download, quiet=True)
    images, labels = read_idx(paths["train-images"]), read_idx(paths["train-labels"])
    if classes == "all":
        try:
            classes = store_classes(np.unique(labels).tolist())
        except ValueError as exc:
            shown = " ".join(map(str, np.unique(labels)[:20]))
            raise UserError(f"--classes all: the labels of {paths['train-labels']} ({shown}) must be {exc}; choose "
                            "some with --classes") from None
    images, y, _ = select_classes(images, labels, tuple(classes), str(paths["train-labels"]))
    y = y.astype(np.uint8)
    n_features = int(np.prod(images.shape[1:]))
    if rows is not None and max_shift >= min(images.shape[1:]):
        raise UserError(f"--max-shift {max_shift} would move a digit off its {'x'.join(map(str, images.shape[1:]))} "
                        f"image; give at most {min(images.shape[1:]) - 1} (the default is 2)")
    meta = {"classes": [int(c) for c in classes], "image_shape": list(images.shape[1:]),
            "source": str(Path(paths["train-images"]).parent)}
    if rows is None:
        blocks, n, made_by = [(images.reshape(len(images), -1), y)], len(images), "convert"
    else:
        blocks, n = resampled_blocks(images, y, rows, max_shift, seed), rows
        made_by = f"resampled from {len(images)} real rows, shifts up to {max_shift} px, seed {seed}"
    write_store(out, blocks, n, n_features, {**meta, "made_by": made_by})
    return {**meta, "n": n}
