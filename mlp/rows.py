"""A run's training rows on its backend: moved to the device once, or, on Dask, read by the workers
themselves (the pair's rows of the IDX files, or a store written by `python -m mlp.convert`)."""

from pathlib import Path

from .data import fingerprint, mnist_files
from .errors import UserError
from .store import FILES as STORE_FILES, idx_rows, open_store, store_fingerprint  # noqa: F401


def open_training_store(path, classes) -> tuple:
    """--store's rows, every part checked (mlp.store.open_store), before any cluster starts:
    (X rows, y rows, meta, the folder); `classes` (or 'all') must be the store's."""
    folder = Path(path).resolve()
    return (*open_store(folder, None if classes == "all" else classes), folder)


def training_arrays(backend, data, rows, dtype: str, *, store=None):
    """(X (N, D), y (N,), the rows' fingerprint) of the run on the backend: the host `rows` (the training
    rows less any validation split) moved to the device once; on Dask, lazy uint8 rows that the workers
    read themselves (of the IDX files, or of `store`, from open_training_store: its fingerprint covers
    its metadata and labels), normalised in the graph."""
    from_rows = getattr(backend, "from_rows", None)
    if from_rows is None:
        X, y = rows
        return backend.asarray(X, dtype), backend.asarray(y, dtype), fingerprint(data.train)
    if len(rows[1]) != len(data.train.y):
        raise UserError("--val-split is not available with --backend dask yet (the workers read every training "
                        "row); drop --val-split, or validate with python -m mlp.evaluate --split train")
    if store:
        X_rows, y_rows, meta, folder = store
        if tuple(meta["image_shape"]) != tuple(data.image_shape):
            raise UserError(f"the store {folder} holds {tuple(meta['image_shape'])} images, the test data "
                            f"{tuple(data.image_shape)}; convert the data set you evaluate on")
        return (*from_rows(X_rows, y_rows, dtype), store_fingerprint(folder))
    paths = mnist_files(Path(data.data_dir).resolve(), download=False, quiet=True)
    X_rows, y_rows = idx_rows(paths["train-images"], paths["train-labels"], data.classes)
    return (*from_rows(X_rows, y_rows, dtype), fingerprint(data.train))
