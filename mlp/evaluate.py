"""`python -m mlp.evaluate --checkpoint PATH`: loss, accuracy and confusion matrix on the test set."""

import sys

import numpy as np

from mlp import backends

from . import checkpoint
from .cli import Parser, add_data_flags, add_device_flags, dask_options, positive_int, run
from .data import data_paths, default_data_dir, load_dataset
from .errors import UserError
from .outputs import check_outputs
from .plots import plot_format
from .progress import fmt_loss
from .scoring import score, size_threads
from .summary import wrote


def format_confusion(m: np.ndarray, classes) -> str:
    a, b = classes
    width = max(8, len(str(m.max())) + 2)
    lines = [f"{'':>10}{'pred ' + str(a):>{width}}{'pred ' + str(b):>{width}}"]
    for i, c in enumerate((a, b)):
        lines.append(f"{'true ' + str(c):>10}{m[i, 0]:>{width}}{m[i, 1]:>{width}}")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(prog="python -m mlp.evaluate",
               description="Evaluate a checkpoint on the test split of its class pair.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .npz written by mlp.train --save")
    add_device_flags(p)
    add_data_flags(p)
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test)")
    p.add_argument("--plot", metavar="PATH", help="save the misclassified digits, each labelled 'true 7, predicted 3, "
                                                  "P(7)=0.03'; the format follows the suffix: .png, .jpg, .svg, ...")
    p.add_argument("--max-shown", type=positive_int, default=64, metavar="K",
                   help="at most K digits in --plot (default: 64)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot:
        check_outputs({"--plot": args.plot}, {"--checkpoint": args.checkpoint, **{
            f"--data-dir's {p.name}": p for p in data_paths(args.data_dir or default_data_dir())}})
        plot_format(args.plot)
    ckpt = checkpoint.load(args.checkpoint)
    cfg = ckpt.config
    backend = backends.resolve(args.device, args.backend, dask_options(args))
    data = load_dataset(args.data_dir, cfg["classes"], download=not args.no_download)
    split = getattr(data, args.split)
    if split.X.shape[1] != cfg["n_features"]:
        raise UserError(f"the checkpoint expects {cfg['n_features']} pixels per image, the data has "
                        f"{split.X.shape[1]}; evaluate on the data set it was trained on")
    size_threads(backend, len(split.y), cfg, args.threads)
    params = {k: backend.asarray(v, cfg["dtype"]) for k, v in ckpt.params.items()}
    result = score(backend, params, split.X, split.y, cfg["activation"])
    a, b = cfg["classes"]
    print(f"checkpoint {args.checkpoint}: epoch {ckpt.epoch}, {cfg['hidden']} hidden {cfg['activation']}, "
          f"{cfg['dtype']}; {backend}")
    print(f"{args.split} loss {fmt_loss(result['loss'])} | accuracy {result['accuracy']:.2%} "
          f"({result['correct']}/{result['n']}) | classes {a} (label 0) vs {b} (label 1)")
    print(format_confusion(result["confusion"], (a, b)))
    if args.plot:
        from .plots import plot_misclassified

        wrong = np.flatnonzero((result["probs"] >= 0.5) != (split.y == 1))
        plot_misclassified(args.plot, split.X, split.digits, result["probs"], wrong, data.image_shape,
                           (a, b), max_shown=args.max_shown)
        wrote(args.plot, f"{min(len(wrong), args.max_shown)} of {len(wrong)} misclassified digits")
    return 0


main.prog = "mlp.evaluate"
main.oom_advice = ("evaluate with --device cpu (host memory is usually larger than a GPU's) or on a device "
                   "with more memory")


def cli() -> None:   # the mlp-evaluate console script
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
