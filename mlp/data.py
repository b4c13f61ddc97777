"""MNIST-style data as host NumPy arrays (to a device is `backends`' job; the IDX format is
`mlp.idx`): the data directory, the download, class-pair selection, normalisation, the data set.

Missing files are downloaded from the mirror torchvision uses (`$MLP_MNIST_MIRROR` overrides
it), within a deadline, checked against their SHA-256 and size (pooch), and renamed into place only
then: a failed download leaves nothing behind. Files already present are used as they are, after the IDX checks.
"""

import contextlib
import hashlib
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .files import describe_kind
from .idx import read_idx

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
CHOOSE = "choose --classes among them"   # what to do about a class the data lacks

DEFAULT_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
#: a file's download is abandoned after DOWNLOAD_GRACE_S + its size / DOWNLOAD_MIN_RATE s (63 s to 17.5 min)
DOWNLOAD_GRACE_S, DOWNLOAD_MIN_RATE = 60, 10_000      # seconds, bytes per second
READ_TIMEOUT_S = 30                                   # the longest wait for the connection or any one read

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

# ----------------------------------------------------------------------------- files


def default_data_dir() -> Path:
    """$MLP_DATA_DIR, else $XDG_CACHE_HOME/mlp/mnist, else ~/.cache/mlp/mnist."""
    if os.environ.get("MLP_DATA_DIR"):
        return _expand(os.environ["MLP_DATA_DIR"], "$MLP_DATA_DIR")
    if os.environ.get("XDG_CACHE_HOME"):
        return _expand(os.environ["XDG_CACHE_HOME"], "$XDG_CACHE_HOME") / "mlp" / "mnist"
    return _expand("~", "the default data dir (~/.cache/mlp/mnist)") / ".cache" / "mlp" / "mnist"


def _expand(path, what: str) -> Path:
    """`~` expanded, or a DataError when there is no home directory to expand it to."""
    try:
        expanded = Path(path).expanduser()
    except RuntimeError:
        expanded = None
    if expanded is None or str(expanded).startswith("~"):
        raise DataError(f"{what}: cannot find the home directory (is HOME unset?); give --data-dir DIR "
                        "or set MLP_DATA_DIR")
    return expanded


def _present(data_dir: Path, filename: str) -> Path | None:
    for candidate in data_paths(data_dir, filename):
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DataError(f"cannot look into data dir {data_dir} ({exc.strerror}); give it search (x) and "
                            "read permission, or choose another --data-dir") from None
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{candidate} is {describe_kind(candidate)}, not a regular file; put the MNIST "
                            "file there or choose another --data-dir")
        return candidate
    return None


def data_paths(data_dir, filename: str | None = None) -> list[Path]:
    """Every path the data may be read from in `data_dir` (each file gzipped or not)."""
    names = [filename] if filename else [f for f, _, _ in MNIST_FILES.values()]
    return [Path(data_dir) / n for f in names for n in (f, f.removesuffix(".gz"))]


def _files_help(data_dir: Path) -> str:
    names = ", ".join(f for f, _, _ in MNIST_FILES.values())
    return (f"put the four files ({names}) in {data_dir} or point --data-dir (in Python: data_dir=) at a folder "
            "that has them")


def mnist_files(data_dir=None, *, download: bool = True, quiet: bool = False) -> dict[str, Path]:
    """The paths of the four files, downloading the missing ones when `download` is true."""
    data_dir = _expand(data_dir, f"data dir {data_dir}") if data_dir else default_data_dir()
    if describe_kind(data_dir) != "a directory" and os.path.lexists(data_dir):
        raise DataError(f"data dir {data_dir} is not a directory; give the folder that holds the MNIST files")
    found = {key: _present(data_dir, name) for key, (name, _, _) in MNIST_FILES.items()}
    missing = [key for key, p in found.items() if p is None]
    if missing and not download:
        names = ", ".join(MNIST_FILES[k][0] for k in missing)
        raise DataError(f"data dir {data_dir} lacks {names}; {_files_help(data_dir)} (or drop --no-download; in "
                        "Python: download=True)")
    if missing:
        mirror = os.environ.get("MLP_MNIST_MIRROR") or DEFAULT_MIRROR
        created = [p for p in reversed([data_dir, *data_dir.parents]) if not p.exists()]
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create data dir {data_dir} ({exc.strerror}); choose another --data-dir") from None
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


def _download(url: str, dest: Path, sha256: str, size: int, quiet: bool) -> Path:
    """`url` into a temporary file beside `dest` (requests; a progress bar unless `quiet`) whose SHA-256
    pooch checks before it renames it to `dest`; on any failure the temporary file is removed. A
    mirror that sends more than `size` bytes is stopped there, one slower than DOWNLOAD_MIN_RATE on
    average is abandoned, and no read waits longer than READ_TIMEOUT_S."""
    import pooch
    import requests
    import urllib3
    from tqdm import tqdm

    pooch.get_logger().setLevel("WARNING" if quiet else "INFO")   # its "Downloading ... to ..." line
    kept = f"nothing was kept; {_files_help(dest.parent)}, or set MLP_MNIST_MIRROR to a mirror that works"

    def fetch(url, output, pooch_):   # pooch's HTTPDownloader, bounded: read1 returns what one read brought
        deadline = time.monotonic() + DOWNLOAD_GRACE_S + size / DOWNLOAD_MIN_RATE
        with requests.get(url, stream=True, timeout=READ_TIMEOUT_S) as response, open(output, "wb") as f, \
                tqdm(total=size, unit="B", unit_scale=True, ncols=79, disable=quiet) as bar:
            response.raise_for_status()
            while chunk := response.raw.read1(1 << 16, decode_content=True):
                if f.tell() + len(chunk) > size:
                    raise DataError(f"download of {url} failed its check (got more than {size:,} bytes); {kept}")
                if time.monotonic() > deadline:
                    raise DataError(f"download of {url} abandoned: {f.tell():,} of {size:,} bytes came, slower than "
                                    f"{DOWNLOAD_MIN_RATE:,} bytes/s after a {DOWNLOAD_GRACE_S:g} s grace; {kept}")
                bar.update(f.write(chunk))

    try:
        pooch.retrieve(url, f"sha256:{sha256}", fname=dest.name, path=dest.parent, downloader=fetch)
    except ValueError:   # pooch's checksum mismatch
        raise DataError(f"download of {url} failed its check (its sha256 is not {sha256[:16]}...); {kept}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise DataError(f"could not download {url} ({_cause(exc)}); {kept}") from None
    return dest


def _cause(exc: BaseException) -> str:
    """Why a request failed, in a few words, from the chain of errors requests and urllib3 wrap it in."""
    if getattr(exc, "response", None) is not None:   # an HTTP error status
        return f"HTTP {exc.response.status_code} {exc.response.reason}"
    causes = {ConnectionRefusedError: "connection refused", socket.gaierror: "name not resolved",
              TimeoutError: "timed out"}
    err = exc
    while err is not None:
        if words := next((w for kind, w in causes.items() if isinstance(err, kind)), None):
            return words
        err = err.__cause__ or err.__context__
    return getattr(exc, "strerror", None) or exc.__class__.__name__


# ----------------------------------------------------------------------------- the data set


@dataclass
class Split:
    X: np.ndarray       # (N, D) float, normalised
    y: np.ndarray       # (N,)  float64: the position of each row's class in the list of classes
    digits: np.ndarray  # (N,)  the original labels
    image_shape: tuple  # e.g. (28, 28)


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: tuple      # the labels, in label order: y == i means classes[i]
    image_shape: tuple[int, ...]
    data_dir: Path


def normalise(pixels, dtype="float64", *, mean: float = MNIST_MEAN, std: float = MNIST_STD):
    """(N, ...) pixels -> (N, D) floats (x - mean) / std, x the pixels in [0, 1]: integer pixels
    are divided by 255 first. Computed in float64 with the pixels' own library (NumPy, or CuPy
    in a Dask chunk), then cast to `dtype`: every backend and dtype starts from the same values.
    The one normalisation of the project: training, evaluation, prediction and Dask chunks."""
    x = pixels.reshape(pixels.shape[0], -1).astype("float64")
    if np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == np.bool_:
        x /= 255
    x -= mean
    x /= std
    return x.astype(dtype, copy=False)


def select_classes(images: np.ndarray, labels: np.ndarray, classes, name: str, fix: str = CHOOSE):
    """Rows whose label is one of `classes`, in file order: (their images, y = the position of each
    one's label in `classes` (float64; for two classes, 1 = the second), their labels). `fix`: what
    to do about a class absent from the labels."""
    present = np.unique(labels).tolist()
    if absent := [c for c in classes if c not in present]:
        shown = ", ".join(str(v) for v in present[:20])
        raise DataError(f"class {absent[0]} is absent from {name} (labels present: {shown}); {fix}")
    keep = np.isin(labels, classes)
    order = np.argsort(classes)
    position = order[np.searchsorted(np.asarray(classes)[order], labels[keep])]
    return images[keep], position.astype(np.float64), labels[keep]


def load_split(images_path, labels_path, classes, dtype=np.float64, *, mean=MNIST_MEAN, std=MNIST_STD,
               fix=CHOOSE) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2:
        raise DataError(f"{images_path}: expected images (N, rows, cols), got shape {images.shape}; "
                        "are the images and labels files swapped?")
    if images.ndim > 3 or 0 in images.shape[1:]:
        raise DataError(f"{images_path}: expected images (N, rows, cols) of at least one pixel, got shape "
                        f"{images.shape}; is this an MNIST-style images file?")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{images_path}: images of {images.dtype}; give unsigned bytes (0-255, as MNIST) "
                        "or floats in [0, 1]")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected integer labels of shape (N,), got {labels.dtype} {labels.shape}; "
                        "are the images and labels files swapped?")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]:,} images but {labels_path} holds "
                        f"{labels.shape[0]:,} labels; the two files do not belong together")
    images, y, digits = select_classes(images, labels, classes, str(labels_path), fix)
    X = normalise(images, dtype, mean=mean, std=std)
    if not np.isfinite(X).all():
        bad = int(np.count_nonzero(~np.isfinite(X).all(axis=1)))
        raise DataError(f"{images_path}: {bad:,} of {len(X):,} images hold NaN or inf values; fix or replace the file")
    if np.issubdtype(images.dtype, np.floating) and len(images) and not (0 <= images.min() and images.max() <= 1):
        raise DataError(f"{images_path}: float pixels from {images.min():g} to {images.max():g}; float images "
                        "must lie in [0, 1] (store 0-255 pixels as unsigned bytes)")
    return Split(X=X, y=y, digits=digits, image_shape=tuple(images.shape[1:]))


def load_dataset(data_dir=None, classes=(3, 7), *, download: bool = True, quiet: bool = False,
                 dtype=np.float64, mean: float = MNIST_MEAN, std: float = MNIST_STD, fix: str = CHOOSE) -> Dataset:
    """Train and test splits of the classes (a list of labels, or 'all': every label of the
    training file), normalised with `mean` and `std`, as host arrays."""
    if classes != "all":
        classes = tuple(int(c) for c in classes)
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise DataError(f"--classes {' '.join(map(str, classes))}: give at least two different classes")
    paths = mnist_files(data_dir, download=download, quiet=quiet)
    if classes == "all":
        classes = tuple(np.unique(read_idx(paths["train-labels"])).tolist())
        if len(classes) < 2:
            raise DataError(f"--classes all: {paths['train-labels']} holds only the label {classes[0]}; a classifier "
                            "needs at least two classes")
    train = load_split(paths["train-images"], paths["train-labels"], classes, dtype, mean=mean, std=std, fix=fix)
    test = load_split(paths["test-images"], paths["test-labels"], classes, dtype, mean=mean, std=std, fix=fix)
    if train.image_shape != test.image_shape:
        raise DataError(f"train images are {train.image_shape} but test images {test.image_shape}; "
                        "the files come from different data sets")
    return Dataset(train=train, test=test, classes=classes, image_shape=train.image_shape,
                   data_dir=Path(paths["train-images"]).parent)


def fingerprint(split: Split) -> str:
    """SHA-256 of a split's rows and labels (as loaded): resume checks it is the same data."""
    digest = hashlib.sha256(np.ascontiguousarray(split.X, dtype=np.float64).data)
    digest.update(np.ascontiguousarray(split.y, dtype=np.float64).data)
    return digest.hexdigest()
