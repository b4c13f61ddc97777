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

from .base import Impl


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
        from mlp.data import MNIST_MEAN, MNIST_STD
        from mlp.loop import make_engine
        from mlp.store import open_store, write_store

        b = self.backend
        pixels = np.rint((X.astype(np.float64) * MNIST_STD + MNIST_MEAN) * 255).astype(np.uint8)
        store = os.path.join(self.folder, "rows")
        write_store(store, [(pixels, y.astype(np.uint8))], len(pixels), pixels.shape[1],
                    {"classes": [3, 7], "image_shape": [28, 28]})
        del pixels
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


def summary(records: list) -> list[str]:
    """Lines on the Dask rows: overhead per step against NumPy, strong scaling, worker memory per row."""
    ok = [r for r in records if r.get("status") == "ok" and r["impl"] == "ours"]
    lines = []
    for r in sorted((r for r in ok if str(r["backend"]).startswith("dask")),
                    key=lambda r: (r["dtype"], r["hidden"], r["n"], r["backend"])):
        same = [q for q in ok if all(q[k] == r[k] for k in ("device", "dtype", "n", "hidden"))]
        ref = next((q for q in same if q["backend"] == "numpy"), None)
        one = next((q for q in same if q["backend"] == "dask:1"), None)
        text = f"{r['backend']:7s} {r['dtype']} N={r['n']:>9,} H={r['hidden']:>5}: {r['median_ms']:9.1f} ms/step"
        if ref:
            ratio = r["median_ms"] / ref["median_ms"]
            text += f", {r['median_ms'] - ref['median_ms']:+9.1f} ms vs numpy ({ratio:.2f}x)"
        if one and one is not r:
            text += f", 1->{r['workers']} workers speed-up {one['median_ms'] / r['median_ms']:.2f}x"
        text += f", worker peak memory {r['worker_peak_mem_bytes_per_row']:,.0f} B/row"
        lines.append(text)
    return lines
