"""Writing files so that nothing is ever half-written, and checking output paths early."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import UserError


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A failure (or a crash) before the rename leaves `path` as it was and removes the
    temporary file, so readers see either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_path(path, flag: str) -> Path:
    """Fail now, not after an hour of training, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: directory {parent} does not exist; create it or choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".mlp-write-check.")
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({exc.strerror}); choose a writable directory") from None
    os.close(fd)
    os.unlink(probe)
    return path
