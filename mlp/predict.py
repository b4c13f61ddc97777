"""`python -m mlp.predict --checkpoint PATH IMAGE...`: each image's class and its probability (two
classes: P(B)), from image files, .npy arrays, directories of them, or stacked .npy arrays
(mlp.images: what is refused).
"""

import csv
import sys
from pathlib import Path

import numpy as np

from mlp import backends

from . import checkpoint, model
from .cli import Parser, add_device_flags, dask_options, run
from .data import normalise
from .errors import UserError
from .files import atomic_write
from .images import load_image, looks_wrong, scale_pixels
from .scoring import outputs, threads_for
from .summary import wrote

#: the files a directory given as IMAGE contributes (others in it are left alone)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")
#: the most pixels a stacked .npy may hold (85,598 images of 28x28; 512 MiB as float64), checked before it is read
MAX_STACK_PIXELS = 1 << 26


def expand_inputs(paths) -> list[Path]:
    """The IMAGE arguments with each directory replaced by its image and .npy files, sorted by name."""
    out = []
    for path in map(Path, paths):
        if not path.is_dir():
            out.append(path)
            continue
        try:
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise UserError(f"{path}: cannot list this directory ({exc.strerror}); check its permissions") from None
        if not found:
            raise UserError(f"{path}: a directory without image files ({', '.join(IMAGE_SUFFIXES)}); "
                            "give a directory of images, or the files themselves")
        out.extend(found)
    return out


def load_stack(path: Path, shape: tuple) -> np.ndarray | None:
    """The images of a stacked .npy of shape (n, *shape) as pixels in [0, 1], or None when the
    file is not such a stack (then it is read as one image)."""
    if path.suffix.lower() != ".npy" or not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None  # load_image says what is wrong with it
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape):
        return None
    if arr.shape[0] == 0:
        return np.zeros(arr.shape)                         # an empty stack: no images, and no note
    if arr.size > MAX_STACK_PIXELS:
        raise UserError(f"{path}: a stack of {arr.shape[0]:,} images ({arr.size:,} pixels), more than the "
                        f"{MAX_STACK_PIXELS:,} allowed; predict at most {MAX_STACK_PIXELS // arr[0].size:,} per run")
    return scale_pixels(np.asarray(arr), path)             # the same rule as a single .npy image


def collect(paths, shape: tuple, *, resize: bool, invert: bool) -> tuple[list[str], np.ndarray]:
    """(a name per image, their pixels as rows (n, D)) from files, directories and stacked .npy
    arrays (whose images are named file.npy[i]); notes on changed images go to stderr."""
    names, rows = [], []
    for path in expand_inputs(paths):
        stack = load_stack(path, shape)
        if stack is not None:
            names += [f"{path}[{i}]" for i in range(stack.shape[0])]
            rows.append((1.0 - stack if invert else stack).reshape(stack.shape[0], int(np.prod(shape))))
            continue
        pixels, note = load_image(path, shape, resize=resize, invert=invert)
        if note:
            print(f"note: {path}: {note}", file=sys.stderr)
        if (warning := looks_wrong(pixels)) is not None:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        names.append(str(path))
        rows.append(pixels.reshape(1, -1))
    return names, (np.concatenate(rows) if rows else np.zeros((0, int(np.prod(shape)))))


def probability(p) -> str:
    """0.9987, 0.0028; 3.1e-05 below 0.001, where four decimals would say 0.0000."""
    return f"{float(p):.4f}" if p >= 1e-3 else f"{float(p):.2g}"


def write_csv(path, names, probs, predicted, classes) -> None:
    """UTF-8, a row per image: its name, the probability of each class, the class predicted. A file
    name that is not valid UTF-8 is written as its own bytes (surrogateescape), so that the name in
    the CSV is the name on disk (`os.fsencode` of it). Two classes keep the one column P(B)."""
    shown = classes[1:] if len(classes) == 2 else classes
    with atomic_write(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["input", *(f"p_{c}" for c in shown), "predicted"])
        for name, p, k in zip(names, probs, predicted):
            writer.writerow([name, *(f"{float(v):.6g}" for v in p[-len(shown):]), classes[k]])
    wrote(path, f"{len(names)} rows")


def build_parser() -> Parser:
    p = Parser(prog="python -m mlp.predict",
               description="Print the class of each image and its probability, with the model in a checkpoint.",
               outputs=("--csv",), inputs={"--checkpoint": lambda a: [a.checkpoint],
                                          "IMAGE": lambda a: expand_inputs(a.images)})
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .npz written by mlp.train --save")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="PNG/JPEG (8-bit grayscale) or .npy files, directories of them, or a stacked .npy "
                        "of shape (n, 28, 28)")
    p.add_argument("--resize", action="store_true",
                   help="convert other colour modes to grayscale and resize other sizes (with a note); "
                        "default: refuse them")
    p.add_argument("--invert", action="store_true", help="invert the pixels (for a dark digit on a light background)")
    p.add_argument("--csv", metavar="PATH",
                   help="write one row per image (input, the probability of each class (of the second of two), "
                        "predicted class) to PATH, and print only a count")
    add_device_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().checked(argv)
    ckpt = checkpoint.load(args.checkpoint)
    cfg = ckpt.config
    if cfg["input"] != "pixels":
        raise UserError(f"the checkpoint {args.checkpoint} was fitted by MLPClassifier on features as given, not on "
                        "images; predict with MLPClassifier.predict on such features")
    shape = tuple(cfg["image_shape"])
    names, X = collect(args.images, shape, resize=args.resize, invert=args.invert)
    if not names:
        raise UserError(f"no images to predict: {', '.join(map(str, args.images))[:200]} "
                        "holds none (an empty stack of shape (0, ...)?); give at least one image")
    X = normalise(X, mean=cfg["mean"], std=cfg["std"])   # pixels in [0, 1], as the model was trained
    backend = backends.resolve(args.device, args.backend, dask_options(args))
    params = {k: backend.asarray(ckpt.params[k], cfg["dtype"]) for k in model.PARAM_NAMES}
    with threads_for(backend, len(X), cfg, args.threads):
        out = outputs(backend, params, X, cfg["activation"])
    probs, predicted, classes = out["probs"], out["predicted"], cfg["classes"]
    if args.csv:
        write_csv(args.csv, names, probs, predicted, classes)
        counts = np.bincount(predicted, minlength=len(classes))
        print(f"{len(names)} images: " + ", ".join(f"{n} predicted {c}" for c, n in zip(classes, counts) if n))
        return 0
    for name, p, k in zip(names, probs, predicted):
        j = 1 if len(classes) == 2 else k          # P(B) for two classes, else the class predicted's
        print(f"{name}: P({classes[j]}) = {probability(p[j])} -> {classes[k]}")
    return 0


main.prog = "mlp.predict"
main.oom_advice = "predict fewer images at once, or use --device cpu"


def cli() -> None:   # the mlp-predict console script
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
