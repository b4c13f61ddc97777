"""One output policy for every command, checked before any work (docs/outputs.md: what is refused
and why): `check_outputs` for files, `check_output_dir` for a folder a command creates. Each check
raises a UserError in one line naming the flag; a symbolic link is written through (its target
replaced, the link kept); each output is then locked for the rest of the run (`files.lock`).
"""

import errno
import os
import re
import secrets
import stat
from pathlib import Path

from .errors import UserError
from .files import describe_kind, lock, written_path

#: the longest temporary-name suffix we make: "." + pid (7) + "-" + 8 hex + ".tmp"
_TMP_EXTRA = len(".") + len("." + "9" * 7 + "-" + "0" * 8 + ".tmp")


def check_output_path(path, flag: str) -> Path:
    """The file a write of `path` replaces (its link target), after checking that it can be
    written and replaced; a UserError naming `flag` and the cause if not."""
    text = os.fspath(path)
    if not text:
        raise UserError(f"{flag}: the path is empty; give a file name")
    if text.endswith(os.sep):
        raise UserError(f"{flag} {text}: ends with '{os.sep}', so it names a folder; give a file name")
    try:
        target = written_path(path)
    except OSError as exc:
        fix = {errno.ELOOP: "give a path without a loop of links",
               errno.ENAMETOOLONG: "choose a shorter name"}.get(exc.errno, "check its folders' permissions")
        raise UserError(f"{flag} {str(path)[:200]}: cannot be looked up ({exc.strerror}); {fix}") from None
    via = "" if Path(os.path.abspath(path)) == target else f" (a link to {target})"
    if target.parts[1:2] == ("proc",) and target.is_symlink():
        raise UserError(f"{flag} {path}: names an open file of a process (a standard stream or /dev/fd/N), "
                        "not a file; outputs are written as files: give a file name")
    parent = target.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}{via}: directory {parent} does not exist; create it or choose another path")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UserError(f"{flag} {path}{via}: cannot be checked ({exc.strerror}); "
                        "check its folder's permissions") from None
    if st is not None:
        _check_replaceable(path, flag, target, st, via)
    _check_name(path, flag, target)
    _check_space(path, flag, parent)
    probe = parent / f".mlp-write-check.{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise UserError(f"{flag} {path}{via}: cannot write in {parent} ({exc.strerror}); "
                        "choose a writable directory") from None
    os.unlink(probe)
    return target


def _check_replaceable(path, flag: str, target: Path, st: os.stat_result, via: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{flag} {path}{via}: is a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{flag} {path}{via}: is {describe_kind(target)}, not a regular file; give a file name "
                        "(outputs are written to a new file renamed into place, which a special file cannot be)")
    if not (st.st_mode & 0o222 and os.access(target, os.W_OK)):     # no write bit: refused to root too
        raise UserError(f"{flag} {path}{via}: is read-only; make it writable (chmod u+w) or choose another path")
    parent_st = os.stat(target.parent)
    if str(target) in _mount_points():
        raise UserError(f"{flag} {path}{via}: is a mount point (a bind-mounted file), which cannot be "
                        "replaced; choose another path")
    me = os.geteuid()
    if parent_st.st_mode & stat.S_ISVTX and me != 0 and me not in (st.st_uid, parent_st.st_uid):
        raise UserError(f"{flag} {path}{via}: belongs to another user in the sticky folder {target.parent}, "
                        "where only its owner may replace it; choose another path")


def _mount_points() -> set[str]:
    """The mount points of this process's mount namespace (Linux: /proc/self/mountinfo). Not
    st_dev: a file bind-mounted onto itself has its folder's, and overlayfs gives a file of a
    lower layer (a container image's) another device than its folder."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            fields = [line.split(" ")[4] for line in f if line.count(" ") >= 4]
    except OSError:
        return set()
    return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in fields}   # \040 is a space


def _check_space(path, flag: str, folder: Path) -> None:
    """A file system with no free block at all (a full disk) is refused now, not after the work."""
    try:
        free = os.statvfs(folder)
    except OSError:
        return
    if (free.f_bfree if os.geteuid() == 0 else free.f_bavail) == 0 and free.f_blocks > 0:
        raise UserError(f"{flag} {path}: the file system of {folder} is full (no free space); free some space or "
                        "choose another path")


def _check_name(path, flag: str, target: Path) -> None:
    try:
        name_max = os.pathconf(target.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    size = len(os.fsencode(target.name))
    if size + _TMP_EXTRA > name_max:
        raise UserError(f"{flag} {str(path)[:200]}: the file name is {size} bytes; this file system takes at most "
                        f"{name_max} bytes per name, {_TMP_EXTRA} of which the temporary file needs; choose a name "
                        f"of at most {name_max - _TMP_EXTRA} bytes")
    if len(os.fsencode(str(target))) + _TMP_EXTRA >= 4096:
        raise UserError(f"{flag} {str(path)[:200]}...: the path is too long for the file system; choose a shorter one")


def _same_file(target: Path, path, other) -> bool:
    """Whether `path` (which writes `target`) and `other` name one file: after links, or as hard links."""
    try:
        return written_path(other) == target or os.path.samefile(path, other)
    except (OSError, ValueError):
        return False


def check_outputs(outputs: dict, inputs: dict | None = None, allowed=()) -> list:
    """Check every output (`{"--save": path, ...}`, None values skipped) with `check_output_path`;
    no two outputs, and no output and input (`{"--resume": path, ...}`), may name the same file
    (after links and hard links); `allowed` lists pairs of flags that may (`("--save",
    "--resume")`: continuing a run in place). Then lock each output for the rest of the run, and
    return those this call locked (files.unlock releases one sooner)."""
    outs = [(flag, path) for flag, path in outputs.items() if path is not None]
    targets = {flag: check_output_path(path, flag) for flag, path in outs}
    ins = [(flag, path) for flag, path in (inputs or {}).items() if path]
    for i, (flag, path) in enumerate(outs):
        for other, other_path in outs[i + 1:]:
            if _same_file(targets[flag], path, other_path):
                raise UserError(f"{flag} and {other} both name {path}; the second would overwrite the first: "
                                "give each output its own file")
        for other, other_path in ins:
            if (flag, other) not in allowed and _same_file(targets[flag], path, other_path):
                raise UserError(f"{flag} {path} is also the input {other}; writing it would destroy what is "
                                "being read: choose another output file")
    return [path for flag, path in outs if lock(path, flag)]


def check_output_dir(path, flag: str, inputs: dict | None = None) -> Path:
    """A folder a command creates (and renames into place): it must not exist yet (nor be a
    link), its parent must exist and be writable, and it must not be an input's folder."""
    text = os.fspath(path)
    if not text.rstrip(os.sep):
        raise UserError(f"{flag}: the path is empty or the root folder; give a new folder's name")
    folder = Path.cwd() / text       # `..` not collapsed: it applies after the links before it
    if os.path.lexists(folder):
        kind = "a link" if folder.is_symlink() else describe_kind(folder) or "a file"
        raise UserError(f"{flag} {path}: already exists ({kind}); remove it or choose another path")
    target = check_output_path(folder, flag)   # its parent: exists, writable, the name fits
    for other, other_path in (inputs or {}).items():
        if other_path and _same_file(target, folder, other_path):
            raise UserError(f"{flag} {path} is also the input {other}; choose another folder")
    lock(folder, flag)
    return folder
