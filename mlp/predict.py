"""`python -m mlp.predict --checkpoint PATH IMAGE...`: P(class B) for each image.

Images are PNG/JPEG (8-bit grayscale) or .npy arrays of the checkpoint's image size
(28x28 for MNIST), white digit on black like MNIST. Other sizes and colour modes are
refused unless --resize is given, which converts them to grayscale and resizes them,
with a note for each image it changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mlp import backends

from . import checkpoint, model
from .cli import Parser, add_device_flags, run
from .data import MNIST_MEAN, MNIST_STD
from .errors import UserError
from .scaleout import dask_options


def load_image(path, shape: tuple, *, resize: bool, invert: bool) -> tuple[np.ndarray, str | None]:
    """(pixels in [0, 1] of `shape`, a note on what was changed or None)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    note = []
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc}); save it with numpy.save") from None
        if arr.dtype == np.uint8:
            pixels = arr.astype(np.float64) / 255
        elif np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
            pixels = arr.astype(np.float64)
        else:
            raise UserError(f"{path}: array of {arr.dtype}; give uint8 pixels or floats in [0, 1]")
        if not np.isfinite(pixels).all():
            raise UserError(f"{path}: holds NaN or inf; give finite pixel values")
        if pixels.size == int(np.prod(shape)) and pixels.ndim in (1, len(shape)) and (
                pixels.ndim == 1 or pixels.shape == tuple(shape)):
            pixels = pixels.reshape(shape)
        elif resize and pixels.ndim == 2:
            from PIL import Image

            img = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), mode="L")
            note.append(f"resized {pixels.shape[1]}x{pixels.shape[0]} to {shape[1]}x{shape[0]}")
            pixels = np.asarray(img.resize((shape[1], shape[0]), Image.LANCZOS), dtype=np.float64) / 255
        else:
            raise UserError(f"{path}: array of shape {arr.shape}, the model needs {tuple(shape)} "
                            f"(or {int(np.prod(shape))} values); pass --resize to resize a 2-D array")
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{path}: not a readable image ({exc}); give a PNG, JPEG or .npy file") from None
        if img.mode != "L":
            if not resize:
                raise UserError(f"{path}: image mode {img.mode}, the model needs 8-bit grayscale (mode L); "
                                "convert it, or pass --resize to convert it here")
            note.append(f"converted {img.mode} to grayscale")
            img = img.convert("L")
        if img.size != (shape[1], shape[0]):
            if not resize:
                raise UserError(f"{path}: {img.size[0]}x{img.size[1]} pixels, the model needs "
                                f"{shape[1]}x{shape[0]}; pass --resize to resize it")
            note.append(f"resized {img.size[0]}x{img.size[1]} to {shape[1]}x{shape[0]}")
            img = img.resize((shape[1], shape[0]), Image.LANCZOS)
        pixels = np.asarray(img, dtype=np.float64) / 255
    if invert:
        pixels = 1.0 - pixels
    return pixels, ("; ".join(note) or None)


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
    for path, (_, note) in zip(args.images, loaded):
        if note:
            print(f"note: {path}: {note}", file=sys.stderr)
    X = np.stack([pixels.reshape(-1) for pixels, _ in loaded])
    X = (X - cfg.get("mean", MNIST_MEAN)) / cfg.get("std", MNIST_STD)
    backend = backends.resolve(args.device, args.backend, dask_options(args))
    params = {k: backend.asarray(v, cfg["dtype"]) for k, v in ckpt.params.items()}
    probs = backend.to_host(model.predict_proba(params, backend.asarray(X, cfg["dtype"]), cfg["activation"]))
    a, b = cfg["classes"]
    for path, p in zip(args.images, probs):
        print(f"{path}: P({b}) = {float(p):.4f} -> {b if p >= 0.5 else a}")
    return 0


main.prog = "mlp.predict"


def cli() -> None:
    """Console-script entry point (mlp-predict)."""
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
