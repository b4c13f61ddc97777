"""`python -m mlp.evaluate --checkpoint PATH`: loss, accuracy and confusion matrix on the test set."""

import sys

import numpy as np

from mlp import backends

from . import checkpoint, model
from .cli import Parser, add_data_flags, add_device_flags, dask_options, positive_int, run
from .data import data_paths, default_data_dir, load_dataset
from .errors import UserError
from .plots import classes_shown, plot_confusion, plot_format, plot_misclassified, plot_weights
from .progress import fmt_loss
from .scoring import score, threads_for
from .summary import wrote


def format_confusion(m: np.ndarray, classes) -> str:
    """The K x K confusion matrix (a row per true class) and each class's accuracy (its recall)."""
    width = max(8, len(str(m.max())) + 2, *(len(str(c)) + 7 for c in classes))
    lines = [f"{'':>10}" + "".join(f"{'pred ' + str(c):>{width}}" for c in classes) + "    accuracy"]
    for i, c in enumerate(classes):
        total = m[i].sum()
        shown = f"{m[i, i] / total:.2%}" if total else "n/a"
        lines.append(f"{'true ' + str(c):>10}" + "".join(f"{v:>{width}}" for v in m[i]) + f"{shown:>12}")
    return "\n".join(lines)


PLOTS = ("--plot", "--plot-confusion", "--plot-weights")


def build_parser() -> Parser:
    p = Parser(prog="python -m mlp.evaluate", description="Evaluate a checkpoint on the test split of its classes.",
               outputs=PLOTS, inputs={"--checkpoint": lambda a: [a.checkpoint],
                                      "--data-dir": lambda a: data_paths(a.data_dir or default_data_dir())})
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .npz written by mlp.train --save")
    add_device_flags(p)
    add_data_flags(p)
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default: test)")
    g = p.add_argument_group("pictures (the format follows the suffix: .png, .jpg, .svg, .pdf, ...)")
    g.add_argument("--plot", metavar="PATH", help="the misclassified digits, each labelled 'true 7, predicted 3, "
                                                  "P(3)=0.97'")
    g.add_argument("--max-shown", type=positive_int, default=64, metavar="K",
                   help="at most K digits in --plot (default: 64)")
    g.add_argument("--plot-confusion", metavar="PATH",
                   help="the confusion matrix: a row per true class, each cell its count and share of the row")
    g.add_argument("--plot-weights", metavar="PATH",
                   help="what each hidden unit looks for: its input weights (a column of w1) as an image")
    return p


def main(argv=None) -> int:
    args = build_parser().checked(argv)
    for flag in PLOTS:
        if path := getattr(args, flag[2:].replace("-", "_")):
            plot_format(path, flag)
    ckpt = checkpoint.load(args.checkpoint)
    cfg, classes = ckpt.config, ckpt.config["classes"]
    if cfg["input"] != "pixels":
        raise UserError(f"the checkpoint {args.checkpoint} was fitted by MLPClassifier on features as given, not on "
                        "images; score it with MLPClassifier.score on the features it was fitted on")
    backend = backends.resolve(args.device, args.backend, dask_options(args))
    data = load_dataset(args.data_dir, classes, download=not args.no_download, mean=cfg["mean"], std=cfg["std"],
                        fix=f"evaluate {args.checkpoint} on the data set it was trained on")   # normalised as trained
    split = getattr(data, args.split)
    if list(data.image_shape) != cfg["image_shape"]:
        raise UserError(f"the checkpoint expects images of {'x'.join(map(str, cfg['image_shape']))} pixels, the data "
                        f"has {'x'.join(map(str, data.image_shape))}; evaluate on the data set it was trained on")
    params = {k: backend.asarray(ckpt.params[k], cfg["dtype"]) for k in model.PARAM_NAMES}
    with threads_for(backend, len(split.y), cfg, args.threads):
        result = score(backend, params, split.X, split.y, cfg["activation"])
    print(f"checkpoint {args.checkpoint}: epoch {ckpt.epoch}, {cfg['hidden']} hidden {cfg['activation']}, "
          f"{cfg['dtype']}; {backend}")
    labels = (f"classes {classes[0]} (label 0) vs {classes[1]} (label 1)" if len(classes) == 2
              else classes_shown(classes))
    print(f"{args.split} loss {fmt_loss(result['loss'])} | accuracy {result['accuracy']:.2%} "
          f"({result['correct']}/{result['n']}) | {labels}")
    print(format_confusion(result["confusion"], classes))
    if args.plot:
        wrong = np.flatnonzero(result["predicted"] != split.y.astype(np.int64))
        plot_misclassified(args.plot, split.X, split.digits, result["probs"], result["predicted"], wrong,
                           data.image_shape, classes, max_shown=args.max_shown)
        wrote(args.plot, f"{min(len(wrong), args.max_shown)} of {len(wrong)} misclassified digits")
    if args.plot_confusion:
        plot_confusion(args.plot_confusion, result["confusion"], classes,
                       f"{args.checkpoint}, {args.split} split: accuracy {result['accuracy']:.2%}")
        wrote(args.plot_confusion, f"{len(classes)} x {len(classes)}, {args.split} split")
    if args.plot_weights:
        H = cfg["hidden"]
        drawn = plot_weights(args.plot_weights, ckpt.params["w1"], data.image_shape, f"{args.checkpoint}: the input "
                             f"weights of {H} hidden units (red raises a unit's input, blue lowers it)")
        wrote(args.plot_weights, f"{drawn} of {H} hidden units")
    return 0


main.prog = "mlp.evaluate"
main.oom_advice = ("evaluate with --device cpu (host memory is usually larger than a GPU's) or on a device "
                   "with more memory")


def cli() -> None:   # the mlp-evaluate console script
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
