"""Writing files so that nothing is ever half-written, lost or replaced by mistake: `written_path`
(an output behind a symbolic link is written through it, the link kept), `atomic_write`
(temporary file, fsync, rename) and `lock` (one run per output file). Which outputs a command
accepts is decided in `mlp.outputs`.
"""

import atexit
import contextlib
import errno
import glob
import itertools
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

from .errors import UserError

#: errors that mean "the disk (or the file-size limit) is full", not a bug
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
#: how many links a path may go through (as the kernel's MAXSYMLINKS)
MAX_LINKS = 40
#: how deep the JSON we read may nest (arrays in objects ...): ours nests 3 deep at most
MAX_JSON_DEPTH = 8
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
#: the files that are not regular files, as the messages name them
KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def written_path(path) -> Path:
    """The absolute path a write of `path` lands in, found as the kernel finds it: each symbolic link
    followed (relative ones from their own folder) before a `..` after it (`link/..` is the target's
    parent); a loop of links is ELOOP. A link into /proc (/dev/stdout, /dev/fd/N) is not followed:
    what it names is an open file, not a place for a new one."""
    p = Path(path)
    for _ in range(MAX_LINKS):
        try:
            parent = Path(os.path.realpath(p.parent, strict=True))
        except (FileNotFoundError, NotADirectoryError):   # kept as given (not `..` collapsed), refused later
            parent = Path.cwd() / p.parent
        p = parent / p.name
        if parent.parts[1:2] == ("proc",) or not p.is_symlink():
            return p
        p = parent / os.readlink(p)
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))


def remove_stale_temporaries(path) -> None:
    """Remove `.NAME.<pid>-*.tmp` files beside `path` whose process no longer runs (a write
    killed with SIGKILL, or a power cut); those of live processes are left alone."""
    path = Path(path)
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            pid_text = tmp.name[len(path.name) + 2:-4].split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and process_alive(int(pid_text)):
                continue
            if not pid_text.isdigit() and time.time() - tmp.stat().st_mtime < 3600:
                continue  # not one of ours (mkstemp's older names): only when it is an hour old
            with contextlib.suppress(OSError):
                tmp.unlink()


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_args):
    """Open a temporary file `.NAME.<pid>-<random>.tmp` beside (the target of) `path`; on success
    fsync it and rename it over that target. A failure (or a signal Python sees) before the rename
    leaves the target as it was and removes the temporary file, so readers see either the old file
    or the complete new one. The new file keeps an existing target's mode (else the umask's); only
    a regular file is ever replaced; the stale temporary files of dead processes are removed first.
    An OSError it raises carries `.output`, the path left as it was. `open_args` go to the text
    layer (encoding, errors, newline)."""
    try:
        target = written_path(path)
        st = os.stat(target) if os.path.lexists(target) else None
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"it is {describe_kind(target) or 'not a regular file'}, which is never "
                                        "replaced", str(target))
        remove_stale_temporaries(target)
        perms = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
        tmp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        exc.output = Path(path)
        raise
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), perms)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            exc.output = Path(path)
        raise
    fsync(target.parent)


def fsync(path) -> None:
    """Flush a file, or a folder's entries (a rename in it), to disk; a folder that refuses is left so."""
    with contextlib.suppress(OSError) if os.path.isdir(path) else contextlib.nullcontext():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_failure(exc: OSError, path=None) -> str:
    """'cannot write PATH (Permission denied); <what to do about that cause>': the advice
    follows the error (a full disk, a permission, a read-only file system, a mount point)."""
    path = path or getattr(exc, "output", None) or exc.filename or "an output"
    kept = f"; {path} was left as it was" if getattr(exc, "output", None) is not None else ""
    return f"cannot write {path} ({exc.strerror or exc}){kept}; {write_advice(exc, path)}"


def write_advice(exc: OSError, path) -> str:
    """What to do about a failed write of `path`, by its cause."""
    if exc.errno in DISK_FULL:
        return "free some space (or raise the file-size limit, ulimit -f)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"check the permissions of {path} and of its folder (in a sticky folder such as /tmp "
                "only a file's owner may replace it), or choose another path")
    if exc.errno == errno.EROFS:
        return "the file system is mounted read-only: choose another path"
    if exc.errno == errno.EBUSY:
        return "it is a mount point, which cannot be replaced: choose another path"
    return "check the path and the disk, or choose another path"


def describe_kind(path) -> str | None:
    """'a directory', 'a FIFO (named pipe)', ... for an existing non-regular file, else None."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((name for test, name in KINDS if test(mode)), None)


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


def read_json(text: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads(text), or RecursionError when its arrays and objects nest deeper than `max_depth`:
    that bound, not the interpreter's recursion limit (which libraries raise), decides."""
    brackets = re.findall(r"[\[{\]}]", _JSON_STRING.sub("", text))
    if max(itertools.accumulate(1 if b in "[{" else -1 for b in brackets), default=0) > max_depth:
        raise RecursionError(f"JSON nested more than {max_depth} deep")
    return json.loads(text)


# ----------------------------------------------------------------------------- locks

_held: dict = {}   # lock file -> filelock.FileLock


def _lock_path(path) -> Path:
    target = written_path(path)
    return target.parent / f".{target.name}.lock"


def lock(path, flag: str) -> bool:
    """Take an exclusive lock on `.NAME.lock` beside the target of `path` for the rest of the
    process, or until `unlock(path)`, and return True (again for the same file: nothing to do,
    False); a UserError if another process holds it (another run writes the same file)."""
    import filelock

    lock_path = _lock_path(path)
    if lock_path in _held:
        return False
    held = filelock.FileLock(lock_path, timeout=0, fallback_to_soft=False)
    try:
        held.acquire()
    except filelock.Timeout:
        raise UserError(f"{flag} {path}: another run is writing this file (it holds {lock_path}); "
                        "wait for it to finish or choose another path") from None
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot lock it with {lock_path} ({exc.strerror}); "
                        "check the folder's permissions or choose another path") from None
    _held[lock_path] = held
    return True


def unlock(path) -> None:
    """Remove, then unlock, the lock file `lock(path)` took (as release_locks does for all)."""
    lock_path = _lock_path(path)
    _release(lock_path, _held.pop(lock_path, None))


def release_locks() -> None:
    """Remove, then unlock, every lock file this process holds (called at exit). Removed first:
    a run that opened the file in between finds it unlinked once it gets the lock, and
    filelock treats that as not acquired, so no two runs ever hold the same name."""
    while _held:
        _release(*_held.popitem())


def _release(lock_path: Path, held) -> None:
    if held is not None:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        with contextlib.suppress(Exception):
            held.release(force=True)


atexit.register(release_locks)
