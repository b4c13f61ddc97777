"""The command-line side of `--backend dask`: its flags, the cluster options they make, and
the training rows a Dask run reads (the IDX files of the data folder, or a store written by
`python -m mlp.data convert`). The cluster itself lives in `backends/dask_cluster.py`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .cli import positive_float, positive_int
from .errors import UserError

FLAGS = ("workers", "scheduler", "chunk_rows", "worker_memory", "scheduler_timeout", "store")


def add_dask_flags(p: argparse.ArgumentParser, *, store: bool = False) -> None:
    g = p.add_argument_group("Dask cluster (--backend dask)")
    g.add_argument("--workers", type=positive_int, metavar="N",
                   help="worker processes of the local cluster (default: one per core; with --device cuda one per GPU)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="join the cluster of this scheduler, e.g. tcp://10.0.0.1:8786, instead of starting one "
                        "(default: $DASK_SCHEDULER_ADDRESS if set); every worker must read the data folder")
    g.add_argument("--scheduler-timeout", type=positive_float, metavar="S",
                   help="give up on an unreachable scheduler after S seconds (default: 10)")
    g.add_argument("--chunk-rows", type=positive_int, metavar="R",
                   help="rows per chunk (default: 8192, fewer when that leaves a worker without a chunk)")
    g.add_argument("--worker-memory", metavar="SIZE",
                   help="memory limit of each local worker, e.g. 2GB (default: the machine's memory shared out); "
                        "rows over half the cluster's memory stream from disk at each step instead of being kept")
    if store:
        g.add_argument("--store", metavar="DIR",
                       help="train on the rows of this store (from python -m mlp.data convert), read lazily by "
                            "chunk; the test split still comes from --data-dir")


def dask_options(args):
    """The cluster options of the flags (None unless --backend dask); a Dask flag given
    with another backend is an error rather than silently ignored."""
    given = [f for f in FLAGS if getattr(args, f, None) is not None]
    if args.backend != "dask":
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies to --backend dask only; add --backend dask or drop it")
        return None
    from mlp.backends.dask_cluster import CONNECT_TIMEOUT_S, Options

    if args.worker_memory is not None:
        from dask.utils import parse_bytes

        try:
            parse_bytes(args.worker_memory)
        except (ValueError, TypeError):
            raise UserError(f"--worker-memory {args.worker_memory!r} is not a size; use e.g. 500MB or 2GB") from None
    if args.workers is not None and (args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")):
        raise UserError("--workers sizes a local cluster; with --scheduler the cluster has the workers started on it")
    return Options(workers=args.workers, scheduler=args.scheduler, chunk_rows=args.chunk_rows,
                   worker_memory=args.worker_memory, timeout=args.scheduler_timeout or CONNECT_TIMEOUT_S)


def training_arrays(backend, args, data, rows, dtype: str):
    """(X (N, D), y (N,), the rows' fingerprint) of the run on the backend. Elsewhere than Dask:
    the host `rows` (the training rows less any validation split), moved to the device once.
    Dask: lazy uint8 rows that the workers read themselves (the pair's rows of the IDX files, or
    --store's), normalised in the graph. A store's fingerprint covers its metadata and labels."""
    from .data import fingerprint, mnist_files
    from .store import idx_rows, open_store, store_fingerprint

    from_rows = getattr(backend, "from_rows", None)
    if from_rows is None:
        X, y = rows
        return backend.asarray(X, dtype), backend.asarray(y, dtype), fingerprint(data.train)
    if len(rows[1]) != len(data.train.y):
        raise UserError("--val-split is not available with --backend dask yet (the workers read every training "
                        "row); drop --val-split, or validate with python -m mlp.evaluate --split train")
    if getattr(args, "store", None):
        folder = Path(args.store).resolve()
        X_rows, y_rows, meta = open_store(folder, data.classes)
        if tuple(meta["image_shape"]) != tuple(data.image_shape):
            raise UserError(f"the store {args.store} holds {tuple(meta['image_shape'])} images, the test data "
                            f"{tuple(data.image_shape)}; convert the data set you evaluate on")
        return (*from_rows(X_rows, y_rows, dtype), store_fingerprint(folder))
    paths = mnist_files(Path(data.data_dir).resolve(), download=False, quiet=True)
    X_rows, y_rows = idx_rows(paths["train-images"], paths["train-labels"], data.classes)
    return (*from_rows(X_rows, y_rows, dtype), fingerprint(data.train))
