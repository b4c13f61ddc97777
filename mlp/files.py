"""Writing files so that nothing is ever half-written, lost or overwritten by mistake.

- `atomic_write`: a temporary file `.NAME.<pid>-<random>.tmp` beside the target, fsync,
  rename. It honours the umask (mkstemp's files are 0600), keeps an existing target's
  mode, removes its temporary file on any failure or signal that Python sees, and removes
  the stale temporary files of dead processes for the same target before it starts.
- `check_output_path` / `check_outputs`: before any work, each output must be a regular
  file name the file system accepts, in a writable folder; no two outputs, and no output
  and input, may name the same file.
- `lock`: an exclusive `flock` on `.NAME.lock` beside a target, so that two runs never
  write the same checkpoint at once; released (and removed) at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from pathlib import Path

from .errors import UserError

#: errors that mean "the disk (or the file-size limit) is full", not a bug
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
#: the longest temporary-name suffix we make: "." + pid (7) + "-" + 8 hex + ".tmp"
_TMP_EXTRA = len(".") + len("." + "9" * 7 + "-" + "0" * 8 + ".tmp")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def remove_stale_temporaries(path) -> list[Path]:
    """Remove `.NAME.<pid>-*.tmp` files beside `path` whose process no longer runs (a write
    killed with SIGKILL, or a power cut); those of live processes are left alone."""
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{_glob_escape(path.name)}.*.tmp"):
            pid_text = tmp.name[len(path.name) + 2:-4].split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and _alive(int(pid_text)):
                continue
            if not pid_text.isdigit() and time.time() - tmp.stat().st_mtime < 3600:
                continue  # not one of ours (mkstemp's older names): only when it is an hour old
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A failure (or a crash) before the rename leaves `path` as it was and removes the
    temporary file, so readers see either the old file or the complete new one."""
    path = Path(path)
    remove_stale_temporaries(path)
    try:
        perms = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        perms = 0o666 & ~_umask()
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), perms)
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


def describe_kind(path) -> str | None:
    """'a directory', 'a FIFO (named pipe)', ... for an existing non-regular file, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return None


def check_input_file(path, what: str) -> Path:
    """`path` must be an existing regular file we may read: else a UserError saying which
    of these it is not (missing, a directory, a FIFO, unreadable)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot be read ({exc.strerror}); check the path and its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path}: is {describe_kind(path)}, not a regular file; give a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path}: permission denied; make it readable or give another file")
    return path


def check_output_path(path, flag: str) -> Path:
    """Fail now, not after an hour of training, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    kind = describe_kind(path)
    if kind is not None:
        raise UserError(f"{flag} {path}: is {kind}, not a regular file; give a file name "
                        "(outputs are replaced atomically, which a special file cannot be)")
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: directory {parent} does not exist; create it or choose another path")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(path.name)) + _TMP_EXTRA > name_max:
        raise UserError(f"{flag} {path}: the file name is {len(os.fsencode(path.name))} bytes; this file system "
                        f"takes at most {name_max} bytes per name, {_TMP_EXTRA} of which the temporary file "
                        f"needs; choose a name of at most {name_max - _TMP_EXTRA} bytes")
    if len(os.fsencode(os.path.abspath(path))) + _TMP_EXTRA >= 4096:
        raise UserError(f"{flag} {path}: the path is too long for the file system; choose a shorter one")
    probe = parent / f".mlp-write-check.{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({exc.strerror}); "
                        "choose a writable directory") from None
    os.unlink(probe)
    return path


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)   # hard links
    return False


def check_outputs(outputs: dict, inputs: dict | None = None, allowed=()) -> None:
    """No two outputs, and no output and input, may name the same file (after symlinks and
    hard links): `{"--save": path, ...}`; None values are skipped. `allowed` lists pairs of
    flags that may share a file (`("--save", "--resume")`: continuing a run in place)."""
    outs = [(flag, Path(p)) for flag, p in outputs.items() if p]
    ins = [(flag, Path(p)) for flag, p in (inputs or {}).items() if p]
    for i, (flag, path) in enumerate(outs):
        for other, other_path in outs[i + 1:]:
            if _same_file(path, other_path):
                raise UserError(f"{flag} and {other} both name {path}; the second would overwrite the first: "
                                "give each output its own file")
        for other, other_path in ins:
            if (flag, other) not in allowed and _same_file(path, other_path):
                raise UserError(f"{flag} {path} is also the input {other}; writing it would destroy what is "
                                "being read: choose another output file")


# ----------------------------------------------------------------------------- locks

_held: list = []


def lock(path, flag: str) -> None:
    """Take an exclusive lock on `.NAME.lock` beside `path` for the rest of the process, or
    raise a UserError if another process holds it (another run writes the same file)."""
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666 & ~_umask())
        except OSError as exc:
            raise UserError(f"{flag} {path}: cannot create the lock file {lock_path} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"{flag} {path}: another run is writing this file (it holds {lock_path}); "
                            "wait for it to finish or choose another path") from None
        with contextlib.suppress(OSError):  # the file we locked is still the one at that name
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                _held.append((fd, lock_path))
                return
        os.close(fd)  # it was removed by its previous holder in between: take the new one


def release_locks() -> None:
    """Remove and unlock every lock this process holds (called at exit)."""
    while _held:
        fd, lock_path = _held.pop()
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        with contextlib.suppress(OSError):
            os.close(fd)


atexit.register(release_locks)
