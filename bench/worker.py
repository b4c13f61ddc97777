"""One measurement in a fresh process: `python -m bench.worker '<json spec>'`.

A process per measurement keeps runs from disturbing each other (allocator state,
thread pools, compiled-kernel caches, GPU memory) and makes peak memory that run's own.
The result is one line on stdout: RESULT_MARK followed by a JSON object.
"""

import json
import os
import statistics
import sys
import time
import traceback

RESULT_MARK = "@@bench-result@@ "
RECORD_KEYS = ("impl", "backend", "engine", "batch", "device", "dtype", "n", "hidden", "classes", "optimiser",
               "threads_requested", "busy")


class PeakMemory:
    """The run's peak memory on its device: for the CPU, growth of the process's peak
    resident set (VmHWM) from just before the data is created; for a GPU, the library's
    own high-water mark on the row's device (CuPy pool, torch.cuda.max_memory_allocated,
    JAX peak_bytes_in_use)."""

    def __init__(self, impl: str, backend: str | None, device: str):
        from mlp.backends import parse_device

        self.impl, self.device, self.index = impl, device, parse_device(device)[1]   # index: None on cpu
        self.library = backend.partition(":")[0] if impl == "ours" else impl.split("-")[0]   # dask:2 -> dask
        self.method = None

    def start(self):
        if self.device == "cpu":
            from mlp.backends.host import memory, reset_peak_memory

            self.method = "VmHWM growth" if reset_peak_memory() else "peak growth since the process started (no reset)"
            try:
                self.base = memory()["rss"]
            except ImportError:   # psutil, which the [bench] extra brings
                self.method, self.base = "not measured: psutil is not installed (pip install -e '.[bench]')", None
        elif self.library == "dask":
            self.method = "on the workers: see worker_peak_mem_bytes"
        elif self.library == "cupy":
            import cupy

            with cupy.cuda.Device(self.index):           # the pool's figures are the current device's
                cupy.get_default_memory_pool().free_all_blocks()
            self.method = "cupy pool total_bytes"
        elif self.library == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats(self.index)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            self.method = "jax peak_bytes_in_use"

    def peak(self, impl_obj) -> int | None:
        if self.device == "cpu":
            from mlp.backends.host import memory

            hwm = None if self.base is None else memory()["peak"]
            return None if hwm is None else max(0, hwm - self.base)
        if self.library == "dask":
            return None
        if self.library == "cupy":
            import cupy

            with cupy.cuda.Device(self.index):
                return int(cupy.get_default_memory_pool().total_bytes())
        if self.library == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated(self.index))
        import jax

        stats = jax.devices("gpu")[self.index].memory_stats() or {}
        return stats.get("peak_bytes_in_use")


def measure(spec: dict) -> dict:
    from mlp import model

    from . import impls
    from .reference import training_rows

    record = {k: spec.get(k) for k in RECORD_KEYS}
    try:
        impl = impls.make(spec["impl"], spec["backend"], spec["device"], spec["dtype"], spec.get("optimiser") or "sgd",
                          engine=spec.get("engine") or "eager", batch=spec.get("batch"), seed=spec.get("seed", 0),
                          classes=spec.get("classes") or 2)
    except impls.Unavailable as exc:
        return {**record, "status": "skipped", "reason": str(exc)}
    record["device_name"] = impl.device_name()
    X, y = training_rows(spec.get("data_dir"), spec["n"], spec["dtype"], classes=impl.classes)
    record["d"] = X.shape[1]
    record["threads"] = impl.set_threads(spec.get("threads_requested") or "auto", min(spec.get("batch") or spec["n"],
                                         spec["n"]), X.shape[1], spec["hidden"])   # before setup: compiling uses it
    params = model.init_params(X.shape[1], spec["hidden"], impl.rng, init="he", activation="relu",
                               n_out=model.outputs(impl.classes))      # the generator then draws the permutations
    memory = PeakMemory(spec["impl"], spec["backend"], spec["device"])
    memory.start()
    try:
        impl.setup(X, y, params)
    except impls.Unavailable as exc:
        return {**record, "status": "skipped", "reason": str(exc)}
    del X, y

    # warm-up: the first epoch includes any compilation; its first step's loss is at the initial parameters
    t0 = time.perf_counter()
    impl.epoch()
    impl.sync()
    first_epoch_s = (time.perf_counter() - t0) / impl.epochs_per_call
    initial_loss, second_loss = impl.first_loss(), impl.second_loss()
    for _ in range(spec["warmup"] - 1):
        impl.epoch()
    impl.sync()

    times, cpu = [], []
    started = time.perf_counter()
    while len(times) < spec["epochs"]:
        impl.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        impl.epoch()
        impl.sync()
        times.extend([(time.perf_counter() - t0) / impl.epochs_per_call] * impl.epochs_per_call)
        cpu.append((time.process_time() - c0) / impl.epochs_per_call)
        if len(times) >= spec["min_epochs"] and time.perf_counter() - started > spec["budget_s"]:
            break
    final_loss = impl.last_loss()
    extra = getattr(impl, "extra_fields", dict)()  # e.g. the Dask workers' own peak memory
    getattr(impl, "close", lambda: None)()
    ms = sorted(t * 1e3 for t in times)
    q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) >= 2 else (ms[0], ms[0], ms[0])
    return {
        **record, "status": "ok", "median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
        "iqr_ms": q3 - q1, "epochs_timed": len(ms), "epochs_per_call": impl.epochs_per_call, "warmup": spec["warmup"],
        "first_epoch_ms": first_epoch_s * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,              # this process's CPU time per epoch, all its threads
        "load_avg": [round(v, 2) for v in os.getloadavg()],  # the machine's, bench and competitors included
        "initial_loss": initial_loss, "second_loss": second_loss, "final_loss": final_loss,
        "peak_mem_bytes": memory.peak(impl), "peak_mem_method": memory.method, **extra,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    if "parent" in spec:   # started by the bench (cli.run_worker): it ends with the bench
        from . import die_with_parent

        die_with_parent(spec["parent"])
    from mlp import backends

    if spec.get("device", "cpu") == "cpu":
        backends.keep_freed_memory()  # the same allocator setting for ours and every peer
    try:
        if spec["mode"] == "probe":
            from .floor import probe

            result = probe(spec["library"], spec["device"], spec["dtype"])
        else:
            result = measure(spec)
    except Exception as exc:  # reported in the results, never silently dropped
        from mlp.backends import describe_out_of_memory, is_out_of_memory

        reason = (f"out of memory ({describe_out_of_memory(exc)})" if is_out_of_memory(exc)
                  else f"{type(exc).__name__}: {exc}")
        result = {**{k: spec.get(k) for k in (*RECORD_KEYS, "library")},
                  "status": "error", "reason": " ".join(reason.split())[:500],
                  "traceback": traceback.format_exc()[-2000:]}
    finally:
        backends.release()  # a Dask cluster this measurement opened is closed whatever happened
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
