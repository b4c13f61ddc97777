"""`python -m bench.breakdown`: where a CPU epoch's time goes, ours (NumPy) against
hand-written PyTorch, measured in one process so the two share the machine's state.

The two large products (X @ w1 and X.T @ d_z1) are timed on their own in each library;
the rest of the step (bias, activation, loss, outer product, mask, sums, update) is the
step's time minus theirs.
"""

import argparse
import statistics
import sys

import numpy as np

from mlp import backends
from mlp import model
from mlp.cli import Parser, add_data_flags, number, run
from mlp.settings import MAX_DIM

from .flags import COUNT
from .floor import timings
from .reference import training_rows


def build_parser() -> Parser:
    p = Parser(prog="python -m bench.breakdown", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=COUNT, default=12_396, help="training rows, full batch (default: 12,396, all the real "
                                                           "3s and 7s; more are drawn from them)")
    p.add_argument("--hidden", type=number(1, MAX_DIM), default=128, help="hidden units H (default: 128)")
    p.add_argument("--dtype", default="float32", choices=backends.DTYPES, help="floating-point type (default: float32)")
    p.add_argument("--repeats", type=COUNT, default=40, help="timed steps per measurement, after 3 warm-ups; their "
                                                             "median counts (default: 40)")
    p.add_argument("--rounds", type=COUNT, default=3, help="rounds of all four measurements, interleaved; the table "
                                                           "shows the median round (default: 3)")
    add_data_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from .torch_peers import torch_manual_step

    backends.keep_freed_memory()
    X, y = training_rows(args.data_dir, args.n, args.dtype, download=not args.no_download)
    X = np.ascontiguousarray(X)
    y = y.astype(args.dtype)
    P = {k: v.astype(args.dtype) for k, v in
         model.init_params(X.shape[1], args.hidden, np.random.default_rng(0), init="he").items()}
    Xt, yt = torch.tensor(X), torch.tensor(y).reshape(-1, 1)
    T = {k: torch.tensor(v) for k, v in P.items()}
    z, zt = X @ P["w1"], Xt @ T["w1"]

    def ours():
        model.train_step(P, X, y, opt=model.Optimiser(lr=0.1))

    def manual():
        with torch.no_grad():
            torch_manual_step(T["w1"], T["b1"], T["w2"], T["b2"], Xt, yt, 0.1)

    def ms(fn) -> float:
        return statistics.median(timings(fn, repeats=args.repeats, warmup=3)) * 1e3

    rounds = []
    for _ in range(args.rounds):  # interleaved, so drifts in the machine's speed hit both
        rounds.append((ms(ours), ms(manual), ms(lambda: X @ P["w1"]) + ms(lambda: X.T @ z),
                       ms(lambda: Xt @ T["w1"]) + ms(lambda: Xt.T @ zt)))
    step_np, step_t, gemm_np, gemm_t = np.median(np.array(rounds), axis=0)
    print(f"{backends.cpu_name()}, N={args.n:,} H={args.hidden} {args.dtype}, "
          f"median of {args.rounds} x {args.repeats} steps, NumPy {np.__version__}, PyTorch {torch.__version__}")
    print(f"{'':28}{'ours (numpy)':>14}{'torch-manual':>14}")
    print(f"{'whole step (ms)':28}{step_np:14.1f}{step_t:14.1f}")
    print(f"{'X @ w1 + X.T @ d_z1 (ms)':28}{gemm_np:14.1f}{gemm_t:14.1f}")
    print(f"{'everything else (ms)':28}{step_np - gemm_np:14.1f}{step_t - gemm_t:14.1f}")
    return 0


main.prog = "bench.breakdown"

if __name__ == "__main__":
    sys.exit(run(main))
