"""What the three commands share: one-line errors, exit codes, common flags."""

from __future__ import annotations

import argparse
import sys

from mlp.backends import BACKENDS, describe_out_of_memory, is_out_of_memory, release

from .errors import USER_ERRORS, DivergedError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 2."""

    def error(self, message):
        name = self.prog.removeprefix("python -m ")
        self.exit(EXIT_USER_ERROR, f"{name}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu",
                   help="where to compute: cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--backend", default=None, choices=BACKENDS, metavar="LIB",
                   help=f"array library: {', '.join(BACKENDS)} "
                        "(default: numpy on cpu, cupy on cuda); the model's code is the same for all")
    from .scaleout import add_dask_flags

    add_dask_flags(p, store=p.prog.endswith("mlp.train"))


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder with the four MNIST IDX files (default: $MLP_DATA_DIR, else ~/.cache/mlp/mnist); "
                        "missing files are downloaded there and checksum-verified")
    p.add_argument("--no-download", action="store_true",
                   help="never download: fail if the data dir lacks the files")


def run(main, argv=None) -> int:
    """Call main(argv); turn the errors a user can act on into one line and an exit code."""
    prog = getattr(main, "prog", "mlp")
    try:
        try:
            return main(argv) or 0
        finally:
            release()  # a Dask cluster is closed on every exit: success, errors, Ctrl-C
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except DivergedError as exc:
        print(f"{prog}: diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"{prog}: out of memory: {describe_out_of_memory(exc)} failed; "
              "reduce --batch-size or --hidden (or, for the data itself, use a device with more memory)",
              file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
