"""Reading named arrays from an untrusted .npz, checking each one before reading it.

`np.load` trusts the file: an array whose header claims TiBs is allocated (or fails with
MemoryError), an object array is unpickled if allowed. Here each member's .npy header
(magic, shape, dtype) is read first, from the zip itself, and checked against what the
caller expects and against the member's size in the archive; only then is it read, with
`allow_pickle=False`. Members nobody asked for are never read.
"""

import struct
import zipfile
import zlib

import numpy as np

#: deflate expands at most ~1032 times; a member claiming more than this is a lie
MAX_RATIO = 1100
#: members an archive may have (a checkpoint has 7), and the bytes of its central directory that
#: lists them: more is refused before the directory is read
MAX_MEMBERS = 64
MAX_DIRECTORY_BYTES = 64 << 10
_EOCD = b"PK\x05\x06"          # the end-of-central-directory record: 22 bytes + a comment (< 64 kB)


def read_npy_header(f) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) from the header of the .npy stream `f`, which is left at the
    first byte of data; nothing of the data is read. ValueError for a version NumPy 1.0/2.0 lacks."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def directory_size(f) -> tuple[int, int]:
    """(members, bytes of the central directory) of the zip archive open as `f`, from its
    end-of-central-directory record (in the last 64 kB): known before zipfile reads the
    directory (0xFFFF and 0xFFFFFFFF mean a zip64 archive: at least as many)."""
    size = f.seek(0, 2)
    tail_start = max(0, size - (22 + 0xFFFF))
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise zipfile.BadZipFile("no end-of-central-directory record")
    return struct.unpack("<HI", tail[at + 10:at + 16])


class NpzError(ValueError):
    """The archive or one member is corrupt, unexpected, or pickled (`pickled` is True)."""

    def __init__(self, message: str, pickled: bool = False):
        super().__init__(message)
        self.pickled = pickled


class Npz:
    """`with Npz(path) as z: z.read("w1", shape=(784, 128), dtype="float32")`."""

    def __init__(self, path):
        try:
            with open(path, "rb") as f:
                count, directory = directory_size(f)
            if count <= MAX_MEMBERS and directory <= MAX_DIRECTORY_BYTES:
                self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise NpzError(f"not a readable .npz archive ({exc})") from None
        if count > MAX_MEMBERS or directory > MAX_DIRECTORY_BYTES:
            raise NpzError(f"{'65,535 or more' if count == 0xFFFF else f'{count:,}'} members in a directory of "
                           f"{directory:,} bytes, more than an archive of ours has (at most {MAX_MEMBERS} members, "
                           f"{MAX_DIRECTORY_BYTES:,} bytes)")
        self.names = {n.removesuffix(".npy") for n in self.zip.namelist() if n.endswith(".npy")}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def header(self, name: str) -> tuple[tuple, np.dtype]:
        """(shape, dtype) as the member's .npy header declares them; nothing else is read."""
        info = self._info(name)
        try:
            with self.zip.open(info) as f:
                shape, _, dtype = read_npy_header(f)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise NpzError(f"{name}: unreadable .npy header ({exc})") from None
        if dtype.hasobject:
            raise NpzError(f"{name}: holds Python objects (a pickle)", pickled=True)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > info.file_size or nbytes > MAX_RATIO * info.compress_size + 4096:
            raise NpzError(f"{name}: its header claims shape {shape} of {dtype} ({nbytes:,} bytes) but the "
                           f"archive holds {info.file_size:,} bytes for it")
        return tuple(shape), dtype

    def read(self, name: str, *, shape=None, dtype=None, max_bytes: int | None = None) -> np.ndarray:
        """The member `name`, after checking its declared shape and dtype (None: any) and size."""
        got_shape, got_dtype = self.header(name)
        if shape is not None and got_shape != tuple(shape):
            raise NpzError(f"{name}: shape {got_shape}, expected {tuple(shape)}")
        if dtype is not None and got_dtype != np.dtype(dtype):
            raise NpzError(f"{name}: dtype {got_dtype}, expected {np.dtype(dtype)}")
        if max_bytes is not None and int(np.prod(got_shape, dtype=object)) * got_dtype.itemsize > max_bytes:
            raise NpzError(f"{name}: {got_shape} of {got_dtype} is larger than the {max_bytes:,} bytes allowed")
        try:
            with self.zip.open(self._info(name)) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise NpzError(f"{name}: unreadable ({exc})") from None

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            return self.zip.getinfo(name + ".npy")
        except KeyError:
            raise NpzError(f"no member {name!r}") from None
