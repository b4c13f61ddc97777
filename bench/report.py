"""From measurements to a table, a plot, slopes, the GPU/CPU speed-up and the targets."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from .floor import epoch_flops, epoch_min_bytes, floor_seconds

D = 784
REFERENCE_BACKEND = {"cpu": "numpy", "cuda": "cupy"}
LOSS_TOLERANCE = {"float32": 1e-4, "float64": 1e-9}
IMPL_ORDER = {"ours": 0, "torch-manual": 1, "torch-autograd": 2, "torch-compile": 3, "jax-jit": 4, "sklearn": 5}


def device_kind(device: str) -> str:
    return "cpu" if device == "cpu" else "cuda"


def label(r: dict) -> str:
    return f"ours ({r['backend']})" if r["impl"] == "ours" else r["impl"]


def is_reference(r: dict) -> bool:
    return r["impl"] == "ours" and r["backend"] == REFERENCE_BACKEND[device_kind(r["device"])]


def enrich(records: list, probes: list) -> list:
    """Add flops, achieved GFLOP/s, the floor and each run's fraction of it, the ratio to
    ours on the same device and configuration, and the first-epoch loss check."""
    rates = defaultdict(lambda: (0.0, 0.0))
    for p in probes:
        if p.get("status", "ok") == "ok":
            key = (device_kind(p["device"]), p["dtype"])
            gemm, bw = rates[key]
            rates[key] = (max(gemm, p["gemm_flops_per_s"]), max(bw, p["copy_bytes_per_s"]))
    refs = {(r["device"], r["dtype"], r["n"], r["hidden"]): r for r in records
            if r.get("status") == "ok" and is_reference(r)}
    for r in records:
        if r.get("status") != "ok":
            continue
        n, h, itemsize = r["n"], r["hidden"], np.dtype(r["dtype"]).itemsize
        r["flops"] = epoch_flops(n, D, h)
        r["min_bytes"] = epoch_min_bytes(n, D, h, itemsize)
        r["gflops"] = r["flops"] / (r["median_ms"] * 1e6)
        gemm, bw = rates[(device_kind(r["device"]), r["dtype"])]
        if gemm:
            r["floor_ms"] = floor_seconds(n, D, h, itemsize, gemm, bw) * 1e3
            r["fraction_of_floor"] = r["floor_ms"] / r["median_ms"]
        else:
            r["floor_ms"] = r["fraction_of_floor"] = None
        ref = refs.get((r["device"], r["dtype"], n, h))
        r["ratio_to_ours"] = r["median_ms"] / ref["median_ms"] if ref else None
        if ref:
            rel = abs(r["initial_loss"] - ref["initial_loss"]) / abs(ref["initial_loss"])
            r["initial_loss_rel_diff"] = rel
            r["loss_check"] = "ok" if rel <= LOSS_TOLERANCE[r["dtype"]] else "MISMATCH"
    return records


def speedups(records: list) -> list:
    """GPU over CPU for ours (CuPy vs NumPy) at each configuration measured on both."""
    ok = [r for r in records if r.get("status") == "ok" and is_reference(r)]
    cpu = {(r["dtype"], r["n"], r["hidden"]): r for r in ok if r["device"] == "cpu"}
    out = []
    for r in ok:
        key = (r["dtype"], r["n"], r["hidden"])
        if r["device"] != "cpu" and key in cpu:
            out.append({"dtype": key[0], "n": key[1], "hidden": key[2], "cpu_ms": cpu[key]["median_ms"],
                        "gpu_ms": r["median_ms"], "speedup": cpu[key]["median_ms"] / r["median_ms"],
                        "gpu": r.get("device_name"), "cpu": cpu[key].get("device_name")})
    return out


def slopes(records: list) -> list:
    """Least-squares slope of log(ms) against log(N*H) for each implementation and dtype."""
    groups = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            groups[(label(r), r["device"], r["dtype"])].append((r["n"] * r["hidden"], r["median_ms"]))
    out = []
    for (name, device, dtype), pts in sorted(groups.items()):
        xs = np.log([p[0] for p in pts])
        if len(set(xs.tolist())) < 3:
            continue
        ys = np.log([p[1] for p in pts])
        slope, intercept = np.polyfit(xs, ys, 1)
        resid = ys - (slope * xs + intercept)
        r2 = 1 - float(resid @ resid) / float(((ys - ys.mean()) ** 2).sum()) if len(pts) > 2 else float("nan")
        out.append({"impl": name, "device": device, "dtype": dtype, "points": len(pts), "slope": float(slope),
                    "r2": r2})
    return out


def targets(records: list) -> list:
    """The issue's CPU targets at float32, N=12,396, H=128, as measured in this run."""
    at = {label(r): r for r in records if r.get("status") == "ok" and r["device"] == "cpu"
          and r["dtype"] == "float32" and r["n"] == 12_396 and r["hidden"] == 128}
    ours = at.get("ours (numpy)")
    if ours is None:
        return []
    out = []
    if ours.get("floor_ms"):
        ratio = ours["median_ms"] / ours["floor_ms"]
        out.append(("ours within 1.25x of the floor", f"{ours['median_ms']:.1f} ms vs floor {ours['floor_ms']:.1f} ms "
                    f"= {ratio:.2f}x", ratio <= 1.25))
    for peer, goal, text in (("torch-manual", 1.0, "no slower than hand-written PyTorch-CPU"),
                             ("sklearn", 1 / 1.25, "at least 1.25x faster than scikit-learn")):
        if peer in at:
            ratio = ours["median_ms"] / at[peer]["median_ms"]
            out.append((text, f"{ours['median_ms']:.1f} ms vs {at[peer]['median_ms']:.1f} ms: ours/{peer} = "
                        f"{ratio:.2f}" + (f" ({1 / ratio:.2f}x faster)" if peer == "sklearn" else ""), ratio <= goal))
        else:
            out.append((text, f"{peer} not measured in this run", None))
    return out


def _fmt(v, spec, none="–"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def summary(records: list) -> list:
    """Median ms per epoch: one row per implementation, one column per configuration."""
    ok = [r for r in records if r.get("status") == "ok"]
    configs = sorted({(r["device"], r["dtype"], r["hidden"], r["n"]) for r in ok})
    names = sorted({label(r) for r in ok}, key=lambda n: (IMPL_ORDER.get(n.split(" ")[0], 9), n))
    cell = {(label(r), r["device"], r["dtype"], r["hidden"], r["n"]): r for r in ok}
    floors = {(r["device"], r["dtype"], r["hidden"], r["n"]): r.get("floor_ms") for r in ok}
    head = "| ms per epoch | " + " | ".join(f"{d} {t} N={n:,} H={h}" for d, t, h, n in configs) + " |"
    lines = [head, "|---|" + "---:|" * len(configs)]
    for name in names:
        row = []
        for c in configs:
            r = cell.get((name, *c))
            row.append("–" if r is None else f"{r['median_ms']:.1f}" + (
                f" ({r['ratio_to_ours']:.2f}×)" if r.get("ratio_to_ours") and not is_reference(r) else ""))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("| floor (measured GEMM rate) | " + " | ".join(_fmt(floors[c], ".1f") for c in configs) + " |")
    return lines


def markdown(result: dict) -> str:
    records, meta = result["records"], result["meta"]
    lines = [f"Machine: {meta['cpu']}" + (f"; GPU: {', '.join(meta['gpus'])}" if meta.get("gpus") else "; no GPU"),
             f"Command: `{meta['command']}` ({meta['date']})", ""]
    lines += ["Median ms per full-batch epoch (in brackets: time relative to ours on the same device):", ""]
    lines += summary(records) + ["", "All measurements:", ""]
    lines += ["| impl | device | dtype | N | H | median ms | min–max ms | GFLOP/s | floor ms | % of floor "
              "| × ours | peak MiB | epochs | loss check |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ok = sorted((r for r in records if r.get("status") == "ok"),
                key=lambda r: (r["device"], r["dtype"], r["hidden"], r["n"], IMPL_ORDER.get(r["impl"], 9),
                               r["backend"] or ""))
    for r in ok:
        lines.append(
            f"| {label(r)} | {r['device']} | {r['dtype']} | {r['n']:,} | {r['hidden']} | {r['median_ms']:.2f} | "
            f"{r['min_ms']:.2f}–{r['max_ms']:.2f} | {r['gflops']:.0f} | {_fmt(r.get('floor_ms'), '.2f')} | "
            f"{_fmt(None if r.get('fraction_of_floor') is None else 100 * r['fraction_of_floor'], '.0f')} | "
            f"{_fmt(r.get('ratio_to_ours'), '.2f')} | {_fmt(None if r.get('peak_mem_bytes') is None else r['peak_mem_bytes'] / 2**20, '.0f')} | "
            f"{r['epochs_timed']} | {r.get('loss_check', '–')} |")
    skipped = [r for r in records if r.get("status") != "ok"]
    if skipped:
        lines += ["", "Not measured:", ""]
        seen = set()
        for r in skipped:
            what = label(r) if r.get("impl") else f"probe {r.get('library')}"
            line = f"- {what} on {r.get('device')} {r.get('dtype')}" + (
                f" N={r['n']:,} H={r['hidden']}" if r.get("n") else "") + f": {r.get('status')}: {r.get('reason')}"
            key = (what, r.get("device"), r.get("reason"))
            if r.get("status") == "skipped" and key in seen:
                continue
            seen.add(key)
            lines.append(line)
    sp = result.get("speedups") or []
    lines += ["", "GPU over CPU (ours: CuPy vs NumPy):", ""]
    if sp:
        lines += ["| dtype | N | H | CPU ms | GPU ms | speed-up |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {s['dtype']} | {s['n']:,} | {s['hidden']} | {s['cpu_ms']:.2f} | {s['gpu_ms']:.3f} | "
                  f"{s['speedup']:.1f}× |" for s in sp]
    else:
        lines.append("no GPU was measured in this run, so there is no speed-up to report.")
    sl = result.get("slopes") or []
    if sl:
        lines += ["", "Scaling: slope of log(ms) against log(N·H) (1.0 = linear):", "",
                  "| impl | device | dtype | points | slope | R² |", "|---|---|---|---:|---:|---:|"]
        lines += [f"| {s['impl']} | {s['device']} | {s['dtype']} | {s['points']} | {s['slope']:.2f} | "
                  f"{_fmt(s['r2'], '.3f')} |" for s in sl]
    lines += ["", "Probes (best of 5): " + "; ".join(
        f"{p['library']} {p['device']} {p['dtype']}: GEMM {p['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"({p['gemm_size']}²), copy {p['copy_bytes_per_s'] / 1e9:.1f} GB/s"
        for p in result["probes"] if p.get("status", "ok") == "ok")]
    tg = result.get("targets") or []
    if tg:
        lines += ["", "Targets (CPU, float32, N=12,396, H=128):", ""]
        lines += [f"- {name}: {text}: " + {True: "met", False: "MISSED", None: "not checked"}[met]
                  for name, text, met in tg]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlp.files import atomic_write

    records = [r for r in result["records"] if r.get("status") == "ok"]
    dtypes = sorted({r["dtype"] for r in records}, key=lambda d: d != "float32")
    hiddens = sorted({r["hidden"] for r in records})
    if not records:
        return
    sp = result.get("speedups") or []
    bottom = 1.0 if sp else 0.25
    fig = plt.figure(figsize=(5.2 * len(hiddens), 3.8 * (len(dtypes) + bottom)))
    grid = fig.add_gridspec(len(dtypes) + 1, len(hiddens), height_ratios=[1] * len(dtypes) + [bottom])
    names = sorted({(label(r), r["device"]) for r in records}, key=lambda nd: (not nd[0].startswith("ours"), nd))
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    for i, dtype in enumerate(dtypes):
        for j, h in enumerate(hiddens):
            ax = fig.add_subplot(grid[i, j])
            for name in names:
                pts = sorted((r["n"], r["median_ms"]) for r in records
                             if (label(r), r["device"]) == name and r["dtype"] == dtype and r["hidden"] == h)
                if pts:
                    ax.plot(*zip(*pts), "o-", ms=3, color=colors[name], label=f"{name[0]} [{name[1]}]")
            for device in sorted({r["device"] for r in records}):
                fl = sorted({(r["n"], r["floor_ms"]) for r in records if r["device"] == device
                             and r["dtype"] == dtype and r["hidden"] == h and r.get("floor_ms")})
                if fl:
                    ax.plot(*zip(*fl), "k--" if device == "cpu" else "k:", marker="_", ms=12, lw=1,
                            label=f"floor [{device}]")
            ax.set(xscale="log", yscale="log", xlabel="N (rows)", ylabel="ms per full-batch epoch",
                   title=f"{dtype}, H={h}")
            ax.grid(True, which="both", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[len(dtypes), :])
    if sp:
        tags = [f"{s['dtype']}\nN={s['n']:,}\nH={s['hidden']}" for s in sp]
        ax.bar(range(len(sp)), [s["speedup"] for s in sp], color="tab:green")
        ax.set_xticks(range(len(sp)), tags, fontsize=7)
        ax.set_ylabel("GPU / CPU speed-up (ours)")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "GPU / CPU speed-up: no GPU was measured in this run", ha="center", va="center")
        ax.set_axis_off()
    meta = result["meta"]
    fig.suptitle(f"Full-batch epoch, MNIST 3 vs 7 rows — {meta['cpu']}"
                 + (f" + {', '.join(meta['gpus'])}" if meta.get("gpus") else ""), fontsize=10)
    fig.tight_layout()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
