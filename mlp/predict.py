"""`python -m mlp.predict --checkpoint PATH IMAGE...`: P(class B) for each image.

Images are PNG/JPEG (8-bit grayscale) or .npy arrays of the checkpoint's image size
(28x28 for MNIST), white digit on black like MNIST. Other sizes and colour modes are
refused unless --resize is given, which converts them to grayscale and resizes them,
with a note for each image it changed.
"""

from __future__ import annotations

import sys

import numpy as np

from mlp import backends

from . import checkpoint, model
from .cli import Parser, add_device_flags, run
from .data import MNIST_MEAN, MNIST_STD
from .errors import UserError
from .images import load_image, looks_wrong


def build_parser() -> Parser:
    p = Parser(prog="python -m mlp.predict",
               description="Print P(class B) for each image, with the model in a checkpoint.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .npz written by mlp.train --save")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG (8-bit grayscale) or .npy files")
    p.add_argument("--resize", action="store_true",
                   help="convert other colour modes to grayscale and resize other sizes (with a note); "
                        "default: refuse them")
    p.add_argument("--invert", action="store_true", help="invert the pixels (for a dark digit on a light background)")
    add_device_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    ckpt = checkpoint.load(args.checkpoint)
    cfg = ckpt.config
    shape = tuple(cfg.get("image_shape") or (int(cfg["n_features"]),))
    if int(np.prod(shape)) != cfg["n_features"]:
        raise UserError(f"checkpoint {args.checkpoint}: image shape {shape} does not match its "
                        f"{cfg['n_features']} features; the file is corrupt")
    loaded = [load_image(p, shape, resize=args.resize, invert=args.invert) for p in args.images]
    for path, (pixels, note) in zip(args.images, loaded):
        if note:
            print(f"note: {path}: {note}", file=sys.stderr)
        if (warning := looks_wrong(pixels)) is not None:
            print(f"warning: {path}: {warning}", file=sys.stderr)
    X = np.stack([pixels.reshape(-1) for pixels, _ in loaded])
    X = (X - cfg.get("mean", MNIST_MEAN)) / cfg.get("std", MNIST_STD)
    backend = backends.resolve(args.device, args.backend)
    params = {k: backend.asarray(v, cfg["dtype"]) for k, v in ckpt.params.items()}
    probs = backend.to_host(model.predict_proba(params, backend.asarray(X, cfg["dtype"]), cfg["activation"]))
    a, b = cfg["classes"]
    for path, p in zip(args.images, probs):
        print(f"{path}: P({b}) = {float(p):.4f} -> {b if p >= 0.5 else a}")
    return 0


main.prog = "mlp.predict"
main.oom_advice = "predict fewer images at once, or use --device cpu"


def cli() -> None:
    """Console-script entry point (mlp-predict)."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
