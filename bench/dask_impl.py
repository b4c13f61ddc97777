"""`--backends dask` in the benchmark: our model on a local Dask cluster of 1, 2, ... workers.

`dask` in --backends expands to `dask:1`, `dask:2`, ... (powers of two up to the core count);
`dask:W` names W workers. The rows the worker measures with are turned back into their
uint8 pixels (exactly: they are normalised bytes), written to a temporary store and read by
the Dask workers from there, persisted, as `python -m mlp.train --backend dask --store` does.
Besides the epoch time, a record holds the workers' peak resident memory growth per row.
"""

import os
import shutil
import tempfile
import weakref

import numpy as np

from .base import Impl, pixels


def expand(names: list[str]) -> list[str]:
    """'dask' -> 'dask:1', 'dask:2', ... up to the cores this process may use (a local cluster takes no
    more: see dask_cluster.check_options); other names as they are."""
    out = []
    for name in names:
        if name == "dask":
            w, cores = 1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            while w <= cores:
                out.append(f"dask:{w}")
                w *= 2
        else:
            out.append(name)
    return out


class DaskOurs(Impl):
    def __init__(self, backend: str, device: str, dtype: str):
        super().__init__(device, dtype)
        from mlp import backends
        from mlp.backends.dask_cluster import Options

        _, _, workers = backend.partition(":")
        self.workers = int(workers) if workers else None
        self.backend = backends.resolve(device, "dask", Options(workers=self.workers))
        self.folder = tempfile.mkdtemp(prefix="mlp-bench-dask-")
        weakref.finalize(self, shutil.rmtree, self.folder, True)   # also when setup or timing fails

    def setup(self, X, y, params):
        from mlp.backends.dask_cluster import worker_memory
        from mlp.loop import make_engine
        from mlp.store import open_store, write_store

        b = self.backend
        rows = pixels(X)
        store = os.path.join(self.folder, "rows")
        write_store(store, [(rows, y.astype(np.uint8))], len(rows), rows.shape[1],
                    {"classes": [3, 7], "image_shape": [28, 28]})
        del rows
        self.base = {a: m["rss"] for a, m in worker_memory(b.client, reset=True).items()}
        Xr, yr, _ = open_store(store)
        X, y = b.from_rows(Xr, yr, self.dtype)
        self.n = X.shape[0]
        self.engine = make_engine(b, "auto", {"batch_size": "full", "lr": self.lr, "activation": "relu"}, X, y)
        self.engine.begin_epoch(None)
        self.params = {k: b.wrap(np.asarray(v, self.dtype)) for k, v in params.items()}

    def epoch(self):
        self.params, (self.loss,) = self.engine.run(self.params, 0, 1)

    def device_name(self):
        return self.backend.device_name

    def extra_fields(self) -> dict:
        from mlp.backends.dask_cluster import worker_memory

        peak = {a: m["peak"] - self.base.get(a, m["peak"]) for a, m in worker_memory(self.backend.client).items()}
        return {"workers": len(peak), "chunk_rows": self.backend.info.get("chunk_rows"),
                "worker_peak_mem_bytes": int(sum(peak.values())),
                "worker_peak_mem_bytes_per_row": sum(peak.values()) / self.n}

    def close(self):
        self.backend.close()
        shutil.rmtree(self.folder, ignore_errors=True)

