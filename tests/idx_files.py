"""Writing IDX files for the tests (the package only reads them)."""

import gzip

import numpy as np

from mlp.files import atomic_write
from mlp.idx import IDX_TYPES, MAX_IDX_DIMS

IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}


def write_idx(path, array, *, compress: bool | None = None) -> None:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz (atomically)."""
    array = np.asarray(array)
    code = IDX_CODES.get(array.dtype)
    if code is None:
        raise ValueError(f"IDX has no type for {array.dtype}; use one of {sorted(str(t) for t in IDX_CODES)}")
    if not 1 <= array.ndim <= MAX_IDX_DIMS:
        raise ValueError(f"IDX arrays have 1 to {MAX_IDX_DIMS} dimensions here (what read_idx accepts)")
    body = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.astype(np.dtype(IDX_TYPES[code]), copy=False).tobytes())
    if compress is None:
        compress = str(path).endswith(".gz")
    with atomic_write(path) as f:
        f.write(gzip.compress(body, mtime=0) if compress else body)

