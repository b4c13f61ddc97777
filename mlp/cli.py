"""What the commands share: one-line errors, exit codes, common flags."""

import argparse
import codecs
import contextlib
import math
import os
import signal
import sys
from pathlib import Path

from mlp.backends import BACKENDS, describe_out_of_memory, is_out_of_memory, parse_device, release

from .errors import RECEIVED_SIGNALS, ClusterLost, DivergedError, Signalled, UserError
from .files import DISK_FULL, release_locks, write_failure
from .outputs import check_outputs
from .settings import MAX_COUNT, SETTINGS, Setting, flag
from .versions import version

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_CLUSTER_LOST = 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
    return 128 + int(signum)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2; every command has --version.
    A command declares its files here, once: `outputs` (the flags that name a file it writes) and
    `inputs` (flag -> a function of the parsed arguments giving the files it reads); `checked`
    parses, then checks every output against the policy of mlp.outputs (collisions, inputs, links,
    permissions) and locks it, before any work. `in_place`: (output, input) pairs that may name
    one file (--save and --resume: a run continued in place)."""

    def __init__(self, *args, outputs=(), inputs=None, in_place=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.outputs, self.inputs, self.in_place = outputs, inputs or {}, in_place
        self.name = self.prog.removeprefix("python -m ")
        self.add_argument("--version", action="version", help="print the version and exit",
                          version=f"{self.name} (mlp-by-hand {version('mlp-by-hand') or 'unknown'})")

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.name}: error: {message} (see --help)\n")

    def exit(self, status=0, message=None):
        """After --help or --version, a stdout that failed (argparse ignores it; run's guard keeps it) is exit 2."""
        if status == 0:
            sys.stdout.flush()
            if failed := getattr(sys.stdout, "failed", None):
                _quiet(sys.stdout)
                status, message = EXIT_USER_ERROR, f"{self.name}: error: cannot write to stdout ({failed.strerror})\n"
        super().exit(status, message)

    def checked(self, argv=None) -> argparse.Namespace:
        args = self.parse_args(argv)
        inputs = {}
        for name, files in self.inputs.items():
            paths = [Path(p) for p in files(args) or () if p]
            inputs.update({name if len(paths) == 1 and name.startswith("-") else
                           f"{name}'s {p.name}" if name.startswith("-") else f"{name} {p}": p for p in paths})
        outputs = {name: getattr(args, name.lstrip("-").replace("-", "_")) for name in self.outputs}
        check_outputs(outputs, inputs, allowed=self.in_place)
        return args


def number(lo: float, hi: float = MAX_COUNT, kind: str = "int", lo_open: bool = False):
    """A flag's type: a whole (kind 'int') or finite ('float') number from lo to hi, checked as a
    setting is (mlp.settings); a bad one is argparse's one-line error."""
    return Setting("", kind, None, "", lo, hi, lo_open=lo_open, hi_open=hi == math.inf).parse


positive_int, non_negative_int, positive_float = number(1), number(0), number(0, math.inf, "float", lo_open=True)
threads_arg = SETTINGS["threads"].parse


def setting_flag(group, name: str, **kwargs) -> None:
    """The flag of the setting `name` (mlp.settings): its type, help and default come from the table."""
    s = SETTINGS[name]
    shown = "he for relu, xavier for tanh" if name == "init" else s.default
    options = {"action": "store_true", "default": None} if s.kind == "bool" else {
        "type": s.parse, "choices": s.choices or None, "metavar": "|".join(s.choices) if s.choices else None}
    kwargs.setdefault("help", f"{s.help} (default: {shown})")
    group.add_argument(flag(name), **{**options, **kwargs})


def add_classes_flag(group) -> None:
    digit = number(0, 9)
    group.add_argument("--classes", nargs="+", metavar="C",
                       help="the digits to tell apart, 2 to 10 of them, in label order (label 1 = the second of two), "
                            "or 'all' for every label in the data (default: 3 7)",
                       type=lambda word: "all" if word.strip().lower() == "all" else digit(word))


def classes_given(words) -> list | str | None:
    """--classes: a list of 2 to 10 different digits, or 'all' (None: not given)."""
    if words is None or words == ["all"]:
        return words and "all"          # None, or 'all'
    if "all" in words:
        raise UserError(f"--classes {' '.join(map(str, words))}: 'all' stands alone (every label in the data)")
    if len(words) < 2 or len(set(words)) != len(words):
        raise UserError(f"--classes {' '.join(map(str, words))}: give 2 to 10 different digits in label order, "
                        "e.g. 3 7 or 0 1 2 3 4 5 6 7 8 9, or 'all'")
    return list(words)


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="where to compute: cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--backend", default=None, choices=BACKENDS, metavar="LIB",
                   help=f"array library: {', '.join(BACKENDS)} (default: auto = numpy on cpu; on cuda the "
                        "first of jax, torch that sees the GPU (both have a compiled engine), else cupy); "
                        "the model's code is the same for all")
    setting_flag(p, "threads", default="auto", metavar="N|auto")
    add_dask_flags(p, store=p.prog.endswith("mlp.train"))


FLAGS = ("workers", "scheduler", "chunk_rows", "worker_memory", "scheduler_timeout", "verbose", "store")


def add_dask_flags(p: argparse.ArgumentParser, *, store: bool = False) -> None:
    g = p.add_argument_group("Dask cluster (--backend dask)")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="worker processes of the local cluster (default: one per core; with --device cuda one per GPU)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="join the cluster of this scheduler, e.g. tcp://10.0.0.1:8786, instead of starting one "
                        "(default: $DASK_SCHEDULER_ADDRESS if set); every worker must read the data folder")
    g.add_argument("--scheduler-timeout", type=positive_float, metavar="S",
                   help="the longest any wait on the cluster lasts: connecting, the first worker, a step without "
                        "a running worker or an answer from the scheduler (default: 10; from 1 to 3600)")
    g.add_argument("--chunk-rows", type=positive_int, metavar="R",
                   help="rows per chunk (default: 8192, fewer when that leaves a worker without a chunk)")
    g.add_argument("--worker-memory", metavar="SIZE",
                   help="memory limit of each local worker, e.g. 2GB (default: the machine's memory shared out); "
                        "rows over half the cluster's memory stream from disk at each step instead of being kept")
    g.add_argument("--verbose", action="store_true", default=None,
                   help="show distributed's own log messages and warnings (off by default)")
    if store:
        g.add_argument("--store", metavar="DIR",
                       help="train on the rows of this store (from python -m mlp.convert), read lazily by "
                            "chunk; the test split still comes from --data-dir")


def dask_options(args):
    """The cluster options of the flags (None unless --backend dask); a Dask flag given
    with another backend is an error rather than silently ignored."""
    given = [f for f in FLAGS if getattr(args, f, None) is not None]
    if args.backend != "dask":
        if given:
            raise UserError(f"{flag(given[0])} applies to --backend dask only; add --backend dask or drop it")
        return None
    from mlp.backends.dask_cluster import CONNECT_TIMEOUT_S, Options   # its values are checked by the backend

    kind, index = parse_device(args.device)
    return Options(workers=args.workers, scheduler=args.scheduler, chunk_rows=args.chunk_rows,
                   worker_memory=args.worker_memory, timeout=args.scheduler_timeout or CONNECT_TIMEOUT_S,
                   verbose=bool(args.verbose), gpu=index if kind == "cuda" and ":" in args.device else None)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the four MNIST IDX files (default: $MLP_DATA_DIR, else ~/.cache/mlp/mnist); "
                        "missing files are downloaded there and checksum-verified")
    p.add_argument("--no-download", action="store_true", help="never download: fail if the data dir lacks the files")


def _raise_signalled(signum, frame):
    RECEIVED_SIGNALS.append(signum)     # kept even if the exception lands where Python drops it
    raise Signalled(signum)


@contextlib.contextmanager
def _signals():
    """SIGTERM and SIGHUP unwind like Ctrl-C (temporary files are removed on the way out);
    a write past `ulimit -f` fails with EFBIG instead of killing the process (SIGXFSZ)."""
    wanted = {signal.SIGTERM: _raise_signalled, signal.SIGHUP: _raise_signalled, signal.SIGXFSZ: signal.SIG_IGN}
    previous, unraisable = {}, sys.unraisablehook
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        for signum, handler in wanted.items():
            previous[signum] = signal.signal(signum, handler)
    # a Signalled raised inside a gc callback or a __del__ is dropped by Python, with a traceback on
    # stderr: no traceback (RECEIVED_SIGNALS keeps the signal, and run or the loop acts on it)
    sys.unraisablehook = lambda u: None if isinstance(u.exc_value, Signalled) else unraisable(u)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _quiet(stream=None, fd: int | None = None) -> None:
    """Point the file descriptor of `stream` (or `fd`) at /dev/null, so that what is still
    buffered for it goes nowhere at exit (instead of a second error and exit code 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):   # a stream without a descriptor
        fd = stream.fileno() if fd is None else fd
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)


class _Guarded:
    """sys.stdout or sys.stderr while a command runs: a write that fails (a full disk, an I/O
    error) is kept in `failed` and the command goes on, so that its files are still written;
    `run` reports a failed stdout at the end. A closed pipe stays BrokenPipeError, which ends
    the command quietly."""

    def __init__(self, stream):
        self._stream = stream
        self.failed: OSError | None = None

    def _guard(self, method, *args):
        try:
            return method(*args)
        except BrokenPipeError:
            raise
        except (OSError, ValueError) as exc:   # ValueError: written after a close
            self.failed = self.failed or (exc if isinstance(exc, OSError) else OSError(str(exc)))
            return len(args[0]) if args else None

    def write(self, text):
        return self._guard(self._stream.write, text)

    def flush(self):
        return self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _file_names(exc):
    """Encoding errors of stdout/stderr: a file name's undecodable bytes go out as those bytes
    (so a printed name is the name on disk, and a printed command works when copied), any
    other character the encoding lacks as a backslash escape."""
    if isinstance(exc, UnicodeEncodeError):
        with contextlib.suppress(UnicodeError):
            return codecs.lookup_error("surrogateescape")(exc)
    return codecs.lookup_error("backslashreplace")(exc)


codecs.register_error("mlp.file-names", _file_names)


@contextlib.contextmanager
def _streams():
    """stdout/stderr closed at start (`>&-`) are /dev/null (and fd 1/2 stay taken, so that no
    file opened later lands on them); both write file names as their bytes, and are guarded."""
    saved, errors = (sys.stdout, sys.stderr), {}
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is None:
            try:
                os.fstat(fd)
            except OSError:
                _quiet(fd=fd)
            setattr(sys, name, open(os.devnull, "w"))
        stream = getattr(sys, name)
        if hasattr(stream, "reconfigure"):
            errors[stream] = stream.errors
            stream.reconfigure(errors="mlp.file-names")
        setattr(sys, name, _Guarded(stream))
    guarded = (sys.stdout, sys.stderr)
    try:
        yield guarded
    finally:
        for name, stream, before in zip(("stdout", "stderr"), guarded, saved):
            if getattr(sys, name) is stream:
                setattr(sys, name, stream._stream if before is None else before)
        for stream, value in errors.items():
            with contextlib.suppress(Exception):
                stream.reconfigure(errors=value)


def _say(line: str) -> None:
    """The command's last word on stderr; if even that cannot be written, nothing more is tried."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        _quiet(sys.stderr)


def run(main, argv=None) -> int:
    """Call main(argv); turn the errors a user can act on into one line and an exit code."""
    prog = getattr(main, "prog", "mlp")
    RECEIVED_SIGNALS.clear()
    try:
        with _streams() as (stdout, stderr), _signals():
            try:
                code = main(argv) or 0
            finally:
                release()  # a Dask cluster is closed on every exit: success, errors, Ctrl-C
            if RECEIVED_SIGNALS and code == 0:  # its Signalled was dropped (raised in a gc callback)
                raise Signalled(RECEIVED_SIGNALS[-1])
            stdout.flush()
            if stderr.failed is not None:
                _quiet(stderr)
            if stdout.failed is not None:
                _quiet(stdout)
                _say(f"{prog}: error: cannot write to stdout ({stdout.failed.strerror or stdout.failed}); "
                     "the files reported as written were written")
                return EXIT_USER_ERROR
            return code
    except BrokenPipeError:
        _quiet(sys.stdout)   # the reader of stdout went away (`| head -1`): stop without a word
        return EXIT_BROKEN_PIPE
    except UserError as exc:
        _say(f"{prog}: error: {exc}")
        return EXIT_USER_ERROR
    except DivergedError as exc:
        _say(f"{prog}: diverged: {exc}")
        return EXIT_DIVERGED
    except ClusterLost as exc:
        _say(f"{prog}: cluster lost: {exc}")
        return EXIT_CLUSTER_LOST
    except Signalled as exc:
        _say(f"{prog}: stopped by {signal.Signals(exc.signum).name}")
        return exit_code(exc.signum)
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        if getattr(exc, "output", None) is None and exc.errno not in DISK_FULL:
            raise
        _say(f"{prog}: error: {write_failure(exc)}")
        return EXIT_USER_ERROR
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        advice = getattr(main, "oom_advice", "reduce --batch-size or --hidden (or, for the data itself, "
                                                "use a device with more memory)")
        _say(f"{prog}: out of memory: {describe_out_of_memory(exc)} failed; {advice}")
        return EXIT_OUT_OF_MEMORY
    finally:
        release_locks()
        RECEIVED_SIGNALS.clear()
