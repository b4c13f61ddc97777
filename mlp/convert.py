"""`python -m mlp.convert --out DIR`: the training rows of 2 to 10 classes as a store on disk, written
once, that `--backend dask --store DIR` reads lazily by chunk (for training sets larger than memory).
The store format is in `mlp.store`."""

import math
import sys

from .cli import (Parser, add_classes_flag, add_data_flags, classes_given, non_negative_int, positive_int, run,
                  setting_flag)
from .data import default_data_dir
from .outputs import check_output_dir
from .store import convert


def build_parser() -> Parser:
    p = Parser(prog="python -m mlp.convert",
               description="Convert the MNIST IDX files of some classes, once, into a store of uint8 rows on disk "
                           "(X.npy, y.npy, meta.json) that --backend dask reads lazily by chunk.")
    add_data_flags(p)
    add_classes_flag(p)
    p.add_argument("--out", required=True, metavar="DIR", help="the store folder to create (must not exist)")
    p.add_argument("--rows", type=positive_int, metavar="N",
                   help="a larger synthetic-but-real set: N rows drawn with replacement from the real ones")
    p.add_argument("--max-shift", type=non_negative_int, default=2, metavar="K",
                   help="with --rows: move each drawn digit by up to K pixels in x and y, less than the image's "
                        "size (default: 2)")
    setting_flag(p, "seed", default=0, help="with --rows: seed of the draw (default: 0)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    classes = classes_given(args.classes) or (3, 7)
    check_output_dir(args.out, "--out", {"--data-dir": args.data_dir or default_data_dir()})   # docs/outputs.md
    info = convert(args.data_dir, args.out, classes, rows=args.rows,
                   max_shift=args.max_shift if args.rows else 0, seed=args.seed, download=not args.no_download)
    size = info["n"] * math.prod(info["image_shape"])
    print(f"wrote {args.out}: {info['n']:,} rows of classes {' '.join(map(str, info['classes']))} "
          f"({size / 1e6:,.1f} MB of uint8 pixels); train on it with --backend dask --store {args.out}")
    return 0


main.prog = "mlp.convert"


def cli() -> None:   # the mlp-convert console script
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
