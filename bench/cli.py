"""`python -m bench`: full-batch training epochs, ours and peers, CPU and GPU, side by side.

Each measurement runs in its own process (bench.worker). The sweep, the peers that are
missing and the configurations too slow for the time allowed are all listed in the
results, never silently dropped.
"""

import argparse
import datetime as dt
import decimal
import importlib.util
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mlp import backends
from mlp.backends.threads import usable_cores
from mlp.checkpoint_meta import MAX_COUNT
from mlp.cli import Parser, add_data_flags, positive_float, positive_int, threads_arg
from mlp.data import data_paths, default_data_dir
from mlp.versions import versions
from mlp.errors import UserError
from mlp.files import atomic_write
from mlp.outputs import check_outputs
from mlp.plots import plot_format
from mlp.summary import wrote

from . import busy, reference, report
from .dask_impl import expand, summary as dask_summary
from .floor import epoch_flops
from .impls import COMPILED, LIBRARY, MINIBATCH_PEERS, PEERS
from .worker import RECORD_KEYS, RESULT_MARK

REAL = "real"                      # N = all the real training rows (12,396 for 3 vs 7), read from the data
DEFAULT_SIZES = {"cpu": [REAL, "4x"], "cuda": [REAL, 100_000, 1_000_000]}
DEFAULT_HIDDEN = [128, 1024]
DEFAULT_BATCHES = [64, 512, 4096]  # the minibatch sweep, at N = real and H = 128 (the default job is B = 64)
DEFAULT_BACKENDS = {"cpu": ["numpy", "torch", "jax"], "cuda": ["cupy", "torch", "jax"]}
GEMM_LIBRARIES = {"cpu": ["numpy", "torch"], "cuda": ["cupy", "torch"]}   # no JAX: no device-wide sync to time by


def csv(kind):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [kind(t) for t in items]
    return parse


def size(text: str):
    """A row count (1e5 is 100000; at most 2**62) or 'real'."""
    if text.lower() == REAL:
        return REAL
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"expected a whole row count or 'real', got {text[:40]!r}") from None
    if not value.is_finite() or value != value.to_integral_value() or not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"sizes must be whole numbers from 1 to 2**62, got {text[:40]}")
    return int(value)


def seconds(text: str) -> float:
    """A finite number of seconds, 0 or more."""
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def build_parser() -> Parser:
    p = Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="a tiny sweep in seconds (a smoke test: N=2,000, H=32, float32, 3 epochs, minibatch B=512; "
                        "no torch.compile)")
    p.add_argument("--device", type=csv(str), metavar="LIST",
                   help="devices, e.g. cpu or cpu,cuda (default: cpu, plus cuda where CuPy sees a GPU)")
    p.add_argument("--backends", type=csv(str), metavar="LIST",
                   help="libraries to run our model on (default: numpy,torch,jax on cpu; cupy,torch,jax on cuda; "
                        "dask runs 1, 2, ... workers)")
    p.add_argument("--peers", type=csv(str), metavar="LIST",
                   help=f"peers to compare: {','.join(PEERS)}, or none (default: all)")
    p.add_argument("--sizes", type=csv(size), metavar="LIST",
                   help="rows N of the full-batch sweep ('real' = all real training rows; larger sizes resample "
                        "them) (default: real and 4x real on cpu; real,1e5,1e6 on cuda)")
    p.add_argument("--batches", type=csv(positive_int), metavar="LIST",
                   help="the minibatch sweep at N = real, H = 128: rows per step (default: 64,512,4096)")
    p.add_argument("--no-minibatch", action="store_true", help="skip the minibatch sweep")
    p.add_argument("--hidden", type=csv(positive_int), metavar="LIST", help="hidden widths H (default: 128,1024)")
    p.add_argument("--dtype", type=csv(str), metavar="LIST", help="float32,float64 (default: both)")
    p.add_argument("--epochs", type=positive_int, default=20, help="timed epochs per measurement (default: 20)")
    p.add_argument("--min-epochs", type=positive_int, default=5,
                   help="timed epochs always run, even past --budget (default: 5)")
    p.add_argument("--budget", type=seconds, default=3.0, metavar="S",
                   help="seconds of timed epochs per measurement, after --min-epochs (default: 3)")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed epochs first (default: 2)")
    p.add_argument("--max-epoch-seconds", type=positive_float, default=None, metavar="S",
                   help="skip configurations whose estimated epoch (2x the floor) is longer "
                        "(default: 1 on cpu, 10 on cuda)")
    add_data_flags(p)   # --data-dir / $MLP_DATA_DIR / ~/.cache/mlp/mnist, exactly as mlp.train
    p.add_argument("--threads", type=csv(threads_arg), default=["auto"], metavar="LIST",
                   help="CPU threads of every row: auto (ours: the thread policy; a peer: its library's default) "
                        "and/or counts, each its own row, e.g. auto,1 (default: auto)")
    p.add_argument("--busy", action="store_true",
                   help="measure every row idle, then beside 1 and N CPU-bound competing processes (N = the usable "
                        "cores), and report each slowdown; by default the default job's configuration and full "
                        "batch (float32, N = real, H = 128, B = 64)")
    p.add_argument("--json", metavar="PATH", help="write all records and metadata as JSON")
    p.add_argument("--plot", metavar="PATH",
                   help="write the plot; the format follows the suffix: .png, .svg, .pdf, ...")
    p.add_argument("--markdown", metavar="PATH", help="write the markdown table")
    return p


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "mlp.bench.worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": "error", "reason": f"took longer than {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[:400]
    return {**spec, "status": "error", "reason": f"worker exited {done.returncode}: {tail}"}


def cuda_available() -> bool:
    try:
        backends.resolve("cuda", "cupy")
        return True
    except backends.BackendError:
        return False


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1], timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parents[1], timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def plan(args) -> dict:
    """The sweep asked for: devices, peers, dtypes, sizes, widths, batches; errors are one line."""
    devices = args.device or (["cpu", "cuda"] if cuda_available() else ["cpu"])
    for d in devices:
        backends.parse_device(d)  # a clear error for a bad name
    peers = [] if args.peers == ["none"] else (args.peers or list(PEERS))
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise UserError(f"unknown peer {unknown[0]!r}: use {', '.join(PEERS)} or none")
    named = [b for b in backends.BACKENDS if b != "auto"]   # each row names its library: "auto" picks one
    unknown = [b for b in args.backends or [] if b not in named
               and not (b.startswith("dask:") and b[5:].isdigit() and int(b[5:]) >= 1)]
    if unknown:
        raise UserError(f"--backends: unknown backend {unknown[0]!r}: use {', '.join(named)} (or dask:N)")
    dtypes = args.dtype or (["float32"] if args.quick else ["float32", "float64"])
    for d in dtypes:
        if d not in backends.DTYPES:
            raise UserError(f"unknown dtype {d!r}: use float32 and/or float64")
    if args.quick:
        args.epochs, args.min_epochs, args.warmup, args.budget = 3, 3, 1, 0.0
    if args.busy:   # the default job's configuration, unless asked for others
        dtypes, args.sizes, args.hidden = args.dtype or ["float32"], args.sizes or [REAL], args.hidden or [128]
    batches = [] if args.no_minibatch else (args.batches or ([512] if args.quick else [64] if args.busy
                                                             else DEFAULT_BATCHES))
    return {"devices": devices, "peers": peers, "dtypes": dtypes, "hidden": [32] if args.quick else
            (args.hidden or DEFAULT_HIDDEN), "batches": batches,
            "busy": busy.levels(usable_cores()) if args.busy else [0]}


def run_probes(devices, dtypes) -> list:
    probes = []
    for device in devices:
        for library in GEMM_LIBRARIES[report.device_kind(device)]:
            for dtype in dtypes:
                if importlib.util.find_spec(library) is None:
                    probes.append({"library": library, "device": device, "dtype": dtype, "status": "skipped",
                                   "reason": f"{library} is not installed"})
                    continue
                r = run_worker({"mode": "probe", "library": library, "device": device, "dtype": dtype}, 600)
                probes.append(r)
                if r.get("status", "ok") == "ok":
                    print(f"probe {library:6s} {device:6s} {dtype}: GEMM {r['gemm_flops_per_s'] / 1e9:8.1f} GFLOP/s, "
                          f"copy {r['copy_bytes_per_s'] / 1e9:6.1f} GB/s", file=sys.stderr)
    return probes


def rows(kind: str, backend_names, peers, batch) -> list:
    """(impl, backend, engine) of each row: ours once per engine it has there (dask once per worker
    count, in full batch only), then the peers."""
    ours = [("ours", b, e) for b in expand(backend_names) for e in ("eager", "compiled")
            if (e == "eager" or (b, kind) in COMPILED) and (batch is None or not b.startswith("dask"))]
    return ours + [(p, LIBRARY[p], None) for p in peers if batch is None or p in MINIBATCH_PEERS]


def measure_all(args, sweep, real_n: int, d: int, rates: dict) -> list:
    records = []
    for device in sweep["devices"]:
        kind = report.device_kind(device)
        cap = args.max_epoch_seconds or (1.0 if kind == "cpu" else 10.0)
        sizes = [2_000] if args.quick else [real_n if s == REAL else 4 * real_n if s == "4x" else s
                                             for s in (args.sizes or DEFAULT_SIZES[kind])]
        configs = [(dtype, h, n, None) for dtype in sweep["dtypes"] for h in sweep["hidden"] for n in sizes]
        configs += [(dtype, sweep["hidden"][0] if args.quick else 128, sizes[0] if args.quick else real_n, b)
                    for dtype in sweep["dtypes"] for b in sweep["batches"]]
        for dtype, h, n, batch in configs:
            gemm = rates[(kind, dtype)][0]
            estimate = 2 * epoch_flops(n, d, h) / gemm if gemm else 0.0
            for (impl, backend, engine), threads, k in itertools.product(
                    rows(kind, args.backends or DEFAULT_BACKENDS[kind], sweep["peers"], batch), args.threads,
                    sweep["busy"]):
                spec = {"mode": "measure", "impl": impl, "backend": backend, "engine": engine, "batch": batch,
                        "device": device, "dtype": dtype, "n": n, "hidden": h, "epochs": args.epochs,
                        "min_epochs": args.min_epochs, "budget_s": args.budget, "warmup": args.warmup, "lr": 0.1,
                        "seed": 0, "data_dir": args.data_dir, "threads_requested": threads, "busy": k}
                why_not = None
                if args.quick and (impl == "torch-compile" or (backend, engine, kind) == ("torch", "compiled", "cpu")):
                    why_not = "not run by --quick (compiling the step takes longer than the quick sweep)"
                elif estimate > cap and not args.quick:
                    why_not = f"estimated {estimate:.1f} s per epoch is over --max-epoch-seconds {cap:g}"
                if why_not:
                    r = {**{k: spec[k] for k in RECORD_KEYS}, "status": "skipped", "reason": why_not}
                else:   # beside spec["busy"] competing processes, stopped when it ends
                    r = busy.measure(run_worker, spec, timeout=max(600.0, 40 * estimate * (args.warmup + args.epochs)))
                records.append(r)
                head = (f"{report.label(r):26s} {device:6s} {dtype} N={n:>9,} H={h:>5} B={batch or 'full':>5}"
                        + (f" busy {k}" if sweep["busy"] != [0] else ""))
                print(f"{head}: {r['median_ms']:10.3f} ms (min {r['min_ms']:.3f}, {r['epochs_timed']} epochs, "
                      f"threads {r.get('threads') or '-'})" if r.get("status") == "ok"
                      else f"{head}: {r['status']}: {r['reason']}", file=sys.stderr)
    return records


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    sweep = plan(args)
    check_outputs({"--json": args.json, "--markdown": args.markdown, "--plot": args.plot},
                  {f"--data-dir's {p.name}": p for p in data_paths(args.data_dir or default_data_dir())})
    if args.plot:
        plot_format(args.plot)
    started = time.time()
    from mlp.data import load_dataset   # loaded (downloaded if need be) once here; workers only read it

    train = load_dataset(args.data_dir, (3, 7), download=not args.no_download, quiet=False).train   # float64
    real = train.X
    probes = run_probes(sweep["devices"], sweep["dtypes"])
    records = measure_all(args, sweep, real.shape[0], real.shape[1], report.rates(probes))
    result = {"meta": metadata(argv, records, real.shape), "probes": probes,
              "records": report.enrich([r for r in records if not r.get("busy")], probes,
                                       reference.first_losses(train, records)),
              "busy": [r for r in records if r.get("busy")]}   # beside competitors: the busy table only
    result["speedups"] = report.speedups(result["records"])
    result["slopes"] = report.slopes(result["records"])
    result["targets"] = report.targets(result["records"], real.shape[0])
    result["meta"]["wall_seconds"] = round(time.time() - started, 1)
    return write_outputs(args, result)


def metadata(argv, records, real_shape) -> dict:
    command = "python -m bench" + ("" if argv is None and len(sys.argv) <= 1 else " " + shlex.join(
        sys.argv[1:] if argv is None else [str(a) for a in argv]))
    return {
        "command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": backends.cpu_name(),
        "gpus": sorted({r["device_name"] for r in records if r.get("device", "cpu") != "cpu" and r.get("device_name")}),
        "devices": sorted({r["device"] for r in records if r.get("device")}),
        "platform": platform.platform(), "versions": versions(), "git_commit": git_commit(),
        "malloc_keeps_freed_memory": os.environ.get("MLP_MALLOC_DEFAULTS") != "1",
        "real_rows": real_shape[0], "features": real_shape[1],
        "usable_cores": usable_cores(),      # affinity and cgroup quota: what the thread policy sizes pools by
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],   # 1, 5, 15 min, as the sweep ended
        "wall_seconds": None,
        "unit": "one training epoch over N rows (forward + hand-written backward + update), data on the device; "
                "full batch = one step, minibatch = ceil(N/B) steps on a seeded permutation",
    }


def write_outputs(args, result) -> int:
    table = report.markdown(result)
    print(table)
    for line in dask_summary(result["records"]):
        print("dask:", line, file=sys.stderr)
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(result, f, indent=1, default=_jsonable)
        wrote(args.json, f"{len(result['records'])} records")
    if args.markdown:
        with atomic_write(args.markdown, "w") as f:
            f.write(table)
        wrote(args.markdown)
    if args.plot:
        if report.plot(result, args.plot):
            wrote(args.plot)
        else:
            print(f"no plot written to {args.plot}: nothing was measured", file=sys.stderr)
    note, problems = reference.skipped(result["records"]), reference.problems(result["records"], result["probes"],
                                                                              result.get("busy", ()))
    for line in ([note] if note else []) + problems:
        print(f"bench: {line}", file=sys.stderr)
    return 1 if problems else 0


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


main.prog = "bench"


def cli() -> None:
    """`python -m bench`, `python -m mlp.bench` and the mlp-bench console script."""
    from mlp.cli import run

    sys.exit(run(main))
