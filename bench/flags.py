"""`python -m bench`'s flags: each one bounded, so that what it accepts the bench can run."""

import argparse
import decimal

from mlp.cli import Parser, add_data_flags, number, threads_arg
from mlp.settings import MAX_COUNT, MAX_DIM

from .impls import PEERS
from .targets import REAL

COUNT = number(1, MAX_COUNT)   # epochs, rows: what mlp.train accepts
DAY_S = 86_400                      # the longest epoch --max-epoch-seconds lets through, and --budget
LONGEST_WAIT_S = 7 * DAY_S          # the longest a measurement may take (subprocess waits up to ~24 days)
MAX_THREADS = 1024                  # --threads: a C int, and a thread pool a machine can start


def csv(kind):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]
    return parse


def size(text: str):
    """A row count (1e5 is 100000; at most 2**62) or 'real'."""
    if text.lower() == REAL:
        return REAL
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a whole row count or 'real', got {text[:40]!r}") from None
    if not value.is_finite() or value != value.to_integral_value() or not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"sizes must be whole numbers from 1 to 2**62, got {text[:40]}")
    return int(value)


def seconds(zero: bool):
    """A flag's type: a number of seconds above 0 (or 0 too, with `zero`), at most a day."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}") from None
        if not (0 <= value if zero else 0 < value) or not value <= DAY_S:     # NaN fails both
            raise argparse.ArgumentTypeError(f"must be a finite number > 0{' (or 0)' * zero} and at most {DAY_S:,} "
                                             f"(a day), got {text[:40]}")
        return value
    return parse


def threads(text: str):
    """--threads: 'auto' or a count from 1 to MAX_THREADS."""
    value = threads_arg(text)
    if value != "auto" and value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be 'auto' or at most {MAX_THREADS:,} threads, got {text[:40]}")
    return value


def build_parser() -> Parser:
    p = Parser(prog="python -m bench", description="full-batch and minibatch training epochs, ours and peers, "
               "CPU and GPU, side by side")
    p.add_argument("--quick", action="store_true",
                   help="a tiny sweep in seconds (a smoke test: N=2,000, H=32, float32, 3 epochs, minibatch B=512, "
                        "one row of ten classes and one of Adam; no torch.compile)")
    p.add_argument("--device", type=csv(str), metavar="LIST",
                   help="devices, e.g. cpu or cpu,cuda (default: cpu, plus cuda where CuPy sees a GPU)")
    p.add_argument("--backends", type=csv(str), metavar="LIST",
                   help="libraries to run our model on (default: numpy,torch,jax on cpu; cupy,torch,jax on cuda; "
                        "dask runs 1, 2, ... workers)")
    p.add_argument("--peers", type=csv(str), metavar="LIST",
                   help=f"peers to compare: {','.join(PEERS)}, or none (default: all)")
    p.add_argument("--sizes", type=csv(size), metavar="LIST",
                   help="rows N of the full-batch sweep ('real' = all real training rows; larger sizes resample "
                        "them) (default: real and 4x real on cpu; real,1e5,1e6 on cuda)")
    p.add_argument("--batches", type=csv(COUNT), metavar="LIST",
                   help="the minibatch sweep at N = real, H = 128: rows per step (default: 64,512,4096); with 64 "
                        "and float32, the default job's other rows: ten classes, momentum, Adam, the estimators")
    p.add_argument("--no-minibatch", action="store_true", help="skip the minibatch sweep")
    p.add_argument("--hidden", type=csv(number(1, MAX_DIM)), metavar="LIST",
                   help="hidden widths H (default: 128,1024)")
    p.add_argument("--dtype", type=csv(str), metavar="LIST", help="float32,float64 (default: both)")
    p.add_argument("--epochs", type=COUNT, default=20, help="timed epochs per measurement (default: 20)")
    p.add_argument("--min-epochs", type=COUNT, default=5,
                   help="timed epochs always run, even past --budget (default: 5)")
    p.add_argument("--budget", type=seconds(zero=True), default=3.0, metavar="S",
                   help="seconds of timed epochs per measurement, after --min-epochs (default: 3)")
    p.add_argument("--warmup", type=COUNT, default=2, help="untimed epochs first (default: 2)")
    p.add_argument("--max-epoch-seconds", type=seconds(zero=False), default=None, metavar="S",
                   help="skip configurations whose estimated epoch (2x the floor) is longer "
                        "(default: 1 on cpu, 10 on cuda)")
    add_data_flags(p)   # --data-dir / $MLP_DATA_DIR / ~/.cache/mlp/mnist, exactly as mlp.train
    p.add_argument("--threads", type=csv(threads), default=["auto"], metavar="LIST",
                   help="CPU threads of every row: auto (ours: the thread policy; a peer: its library's default) "
                        "and/or counts, each its own row, e.g. auto,1 (default: auto)")
    p.add_argument("--busy", action="store_true",
                   help="measure every row idle, then beside 1 and N CPU-bound competing processes (N = the usable "
                        "cores), and report each slowdown; by default the default job's configuration and full "
                        "batch (float32, N = real, H = 128, B = 64)")
    p.add_argument("--json", metavar="PATH", help="write all records and metadata as JSON")
    p.add_argument("--plot", metavar="PATH",
                   help="write the plot; the format follows the suffix: .png, .svg, .pdf, ...")
    p.add_argument("--markdown", metavar="PATH", help="write the markdown table")
    p.add_argument("--summary", metavar="JSON",
                   help="measure nothing: print the targets' verdicts and the problems of a run's --json file "
                        "(exit 1 on a problem, as the run itself)")
    return p


