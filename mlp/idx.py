"""The IDX format of MNIST: a streaming, bounded reader.

An IDX file is 0x0000, a type code, a dimension count, the dimensions (big-endian uint32)
and the array. Reading checks all of it; a gzip file is streamed and never decompressed
beyond the size its header promises plus one byte.
"""

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

#: IDX type code -> big-endian NumPy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: the most bytes an IDX array may claim (a 64-bit product of its dimensions is refused beyond it)
MAX_IDX_BYTES = 1 << 40
#: deflate cannot expand data more than ~1032 times: a header that claims more is a lie
MAX_GZIP_RATIO = 1100
MAX_IDX_DIMS = 16           # dimensions (MNIST's files have 1 or 3; NumPy takes at most 64, the format 255)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian NumPy array. The magic
    number, the dimensions and the file's length are all checked: a corrupt, truncated or padded
    file (or a gzip "bomb") raises DataError instead of returning a wrong array."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            if not compressed:
                return _read_idx_stream(raw, str(path), size_limit=size)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx_stream(f, str(path), size_limit=size * MAX_GZIP_RATIO)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc}); download the file again") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _idx_header(head: bytes, name: str) -> tuple[np.dtype, int]:
    if len(head) < 4:
        raise DataError(f"{name}: {len(head)} bytes is too short for an IDX file (not an IDX file?)")
    zero, code, ndim = head[:2], head[2], head[3]
    if zero != b"\x00\x00" or code not in IDX_TYPES or not 1 <= ndim <= MAX_IDX_DIMS:
        raise DataError(f"{name}: wrong magic number 0x{head[:4].hex()} (an IDX file starts 0x0000, a type code 0x08-"
                        f"0x0E and a dimension count from 1 to {MAX_IDX_DIMS}); is this an MNIST images/labels file?")
    return np.dtype(IDX_TYPES[code]), ndim


def _read_idx_stream(f, name: str, size_limit: int) -> np.ndarray:
    head = f.read(4)            # a buffered file (or gzip) returns what was asked for, unless it ends
    dtype, ndim = _idx_header(head, name)
    header = 4 + 4 * ndim
    dim_bytes = f.read(4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(f"{name}: truncated in its header ({4 + len(dim_bytes)} of {header} bytes); download it again")
    dims = tuple(int(d) for d in np.frombuffer(dim_bytes, ">u4"))
    count = math.prod(dims)   # a Python integer: no overflow; refused beyond what the file can hold, before allocating
    if count * dtype.itemsize > min(MAX_IDX_BYTES, size_limit):
        raise DataError(f"{name}: its header claims shape {dims} ({count * dtype.itemsize:,} bytes), more than the "
                        "file can hold; the file is corrupt or not an IDX file")
    expected = header + count * dtype.itemsize
    out = np.empty(count, dtype)
    view, got = memoryview(out).cast("B"), 0
    while got < len(view):
        n = f.readinto(view[got:got + (1 << 22)])
        if not n:
            break
        got += n
    if got < len(view):
        raise DataError(f"{name}: truncated: its header promises shape {dims} ({expected:,} bytes) "
                        f"but the file holds {header + got:,}; download it again")
    if f.read(1):
        raise DataError(f"{name}: unexpected bytes after the {dims} array its header describes "
                        "(more than its header promises); the file is corrupt or not an IDX file")
    return out.reshape(dims).astype(dtype.newbyteorder("="))
