"""From measurements to a table, a plot, the GPU/CPU speed-up, and the targets' verdicts (targets.py)."""

from collections import defaultdict

import numpy as np

from mlp.model import outputs

from . import busy, targets
from .floor import epoch_flops, epoch_min_bytes, floor_seconds
from .reference import check, config, describe, device_kind, label, place

REFERENCE_BACKEND = {"cpu": "numpy", "cuda": "cupy"}
IMPL_ORDER = {"ours": 0, "torch-manual": 1, "torch-expert": 2, "torch-autograd": 3, "torch-compile": 4,
              "jax-jit": 5, "mlp.MLPClassifier": 6, "sklearn": 7}


def is_reference(r: dict) -> bool:
    """Ours on NumPy (CuPy on a GPU), eager, its thread policy: what the tables' ratios are to."""
    return targets.matches(r, {**targets.OURS, "engine": "eager",
                               "backend": REFERENCE_BACKEND[device_kind(r["device"])]})


def rates(probes: list) -> dict:
    """{(device kind, dtype): (the best GEMM FLOP/s, the best copy bytes/s)} of the probes; (0, 0) unprobed."""
    best = defaultdict(lambda: (0.0, 0.0))
    for p in probes:
        if p.get("status", "ok") == "ok":
            key = (device_kind(p["device"]), p["dtype"])
            gemm, bw = best[key]
            best[key] = (max(gemm, p["gemm_flops_per_s"]), max(bw, p["copy_bytes_per_s"]))
    return best


def enrich(records: list, probes: list, references: dict) -> list:
    """Add flops, achieved GFLOP/s, the floor and each run's fraction of it, the ratio to
    ours on the same device and configuration, and the check of the first step's loss against
    float64 NumPy (`references`: reference.first_losses)."""
    check(records, references)
    best = rates(probes)
    refs = {(r["device"], r["dtype"], *config(r)): r for r in records if r.get("status") == "ok" and is_reference(r)}
    for r in records:
        if r.get("status") != "ok":
            continue
        n, d, h, itemsize, k = r["n"], r["d"], r["hidden"], np.dtype(r["dtype"]).itemsize, outputs(config(r)[3])
        r["flops"] = epoch_flops(n, d, h, steps(r), k)
        r["min_bytes"] = epoch_min_bytes(n, d, h, itemsize, k)
        r["gflops"] = r["flops"] / (r["median_ms"] * 1e6)
        gemm, bw = best[(device_kind(r["device"]), r["dtype"])]
        if gemm:
            r["floor_ms"] = floor_seconds(n, d, h, itemsize, gemm, bw, steps(r), k) * 1e3
            r["fraction_of_floor"] = r["floor_ms"] / r["median_ms"]
        else:
            r["floor_ms"] = r["fraction_of_floor"] = None
        ref = refs.get((r["device"], r["dtype"], *config(r)))
        r["ratio_to_ours"] = r["median_ms"] / ref["median_ms"] if ref else None
    return records


def steps(r: dict) -> int:
    """Steps per epoch: 1 in full batch, ceil(N / B) in minibatch."""
    return 1 if r.get("batch") is None else -(-r["n"] // r["batch"])


def update_costs(records: list) -> list:
    """Markdown lines: each row with momentum or Adam beside the plain-GD row of the same impl and
    configuration, and the difference per step: what the optimiser's update costs there."""
    ok = [r for r in records if r.get("status") == "ok"]
    plain = {(label(r), r["device"], r["dtype"], *config(r)[:4]): r for r in ok if config(r)[4] == "sgd"}
    lines = []
    for r in ok:
        base = plain.get((label(r), r["device"], r["dtype"], *config(r)[:4])) if config(r)[4] != "sgd" else None
        if base:
            extra = (r["median_ms"] - base["median_ms"]) / steps(r) * 1e3
            lines.append(f"| {label(r)} | {place(r)} | {base['median_ms']:.1f} | {r['median_ms']:.1f} | "
                         f"{extra:+.1f} |")
    return ["| row | where | plain GD ms | ms | update's extra µs per step |", "|---|---|---:|---:|---:|",
            *lines] if lines else []


def speedups(records: list) -> list:
    """GPU over CPU: each of our GPU rows (any backend, any engine) against ours on the CPU
    (NumPy, eager: the default there) at each configuration measured on both, full batch and
    minibatch alike."""
    ok = [r for r in records if r.get("status") == "ok" and r["impl"] == "ours"]
    cpu = {(r["dtype"], *config(r)): r for r in ok if r["device"] == "cpu" and is_reference(r)}
    out = []
    for r in ok:
        key = (r["dtype"], *config(r))
        if r["device"] != "cpu" and key in cpu:
            out.append({"dtype": key[0], "n": key[1], "hidden": key[2], "batch": key[3], "classes": key[4],
                        "gpu_impl": label(r) + (f", C={key[4]}" if key[4] != 2 else ""),
                        "cpu_ms": cpu[key]["median_ms"], "gpu_ms": r["median_ms"],
                        "speedup": cpu[key]["median_ms"] / r["median_ms"],
                        "gpu": r.get("device_name"), "cpu": cpu[key].get("device_name")})
    return out


def _fmt(v, spec, none="–"):
    return none if v is None else format(v, spec)


def summary(records: list, minibatch: bool = False) -> list:
    """Median ms per epoch: one row per implementation, one column per configuration;
    the full-batch records, or the minibatch ones."""
    ok = [r for r in records if r.get("status") == "ok" and (r.get("batch") is not None) == minibatch]
    if not ok:
        return []
    key = lambda r: (r["device"], r["dtype"], r["hidden"], r["n"], r.get("batch") or 0, *config(r)[3:])  # noqa: E731
    configs = sorted({key(r) for r in ok}, key=lambda c: (*c[:6], c[6] != "sgd", c[6]))   # plain GD first
    names = sorted({label(r) for r in ok}, key=lambda n: (IMPL_ORDER.get(n.split(" ")[0], 9), n))
    cell = {(label(r), *key(r)): r for r in ok}
    any_row = {key(r): r for r in ok}
    lines = ["| ms per epoch | " + " | ".join(place(any_row[c]) for c in configs) + " |",
             "|---|" + "---:|" * len(configs)]
    for name in names:
        row = []
        for c in configs:
            r = cell.get((name, *c))
            row.append("–" if r is None else f"{r['median_ms']:.1f}" + (
                f" ({r['ratio_to_ours']:.2f}×)" if r.get("ratio_to_ours") and not is_reference(r) else ""))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("| floor (measured GEMM rate) | " + " | ".join(_fmt(any_row[c].get("floor_ms"), ".1f")
                                                                for c in configs) + " |")
    return lines


def no_speedup_reason(meta: dict) -> str:
    devices = meta.get("devices") or []
    if devices and "cpu" not in devices:
        return "CPU not measured in this run, so there is no GPU-over-CPU speed-up to report."
    if not any(d != "cpu" for d in devices):
        return "no GPU was measured in this run, so there is no speed-up to report."
    return "no configuration was measured on both the CPU and the GPU in this run."


def markdown(result: dict) -> str:
    records, meta = result["records"], result["meta"]
    lines = [f"Machine: {meta['cpu']}" + (f"; GPU: {', '.join(meta['gpus'])}" if meta.get("gpus") else "; no GPU"),
             f"Command: `{meta['command']}` ({meta['date']})", ""]
    lines += ["Median ms per full-batch epoch (in brackets: time relative to ours, NumPy or CuPy eager, on the "
              "same device):", ""]
    lines += summary(records) or ["no full-batch measurement in this run"]
    mini = summary(records, minibatch=True)
    if mini:
        lines += ["", "Median ms per minibatch epoch (ceil(N/B) steps on a seeded permutation; in brackets as above):",
                  ""] + mini
    costs = update_costs(records)
    if costs:
        lines += ["", "The optimisers' update: each row with momentum or Adam beside the same row with plain gradient "
                  "descent (ms per epoch), and the difference per step:", ""] + costs
    lines += ["", "All measurements (B: rows per step; peak MiB: the run's peak memory on its device):", ""]
    lines += ["| impl | device | dtype | N | H | B | C | optimiser | median ms | min–max ms | GFLOP/s | floor ms "
              "| % of floor | × ours | peak MiB | epochs | loss vs float64 NumPy |",
              "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    ok = sorted((r for r in records if r.get("status") == "ok"),
                key=lambda r: (r["device"], r["dtype"], r.get("batch") or 0, r["hidden"], r["n"], *config(r)[3:],
                               IMPL_ORDER.get(r["impl"], 9), label(r)))
    for r in ok:
        lines.append(
            f"| {label(r)} | {r['device']} | {r['dtype']} | {r['n']:,} | {r['hidden']} | {r.get('batch') or 'full'} | "
            f"{config(r)[3]} | {config(r)[4]} | "
            f"{r['median_ms']:.2f} | {r['min_ms']:.2f}–{r['max_ms']:.2f} | {r['gflops']:.0f} | "
            f"{_fmt(r.get('floor_ms'), '.2f')} | "
            f"{_fmt(None if r.get('fraction_of_floor') is None else 100 * r['fraction_of_floor'], '.0f')} | "
            f"{_fmt(r.get('ratio_to_ours'), '.2f')} | "
            f"{_fmt(None if r.get('peak_mem_bytes') is None else r['peak_mem_bytes'] / 2**20, '.0f')} | "
            f"{r['epochs_timed']} | {r.get('loss_check', 'NOT CHECKED')} |")
    unmeasured = sorted({m for r in ok if (m := str(r.get("peak_mem_method"))).startswith("not measured")})
    lines += ["", "Peak memory " + "; ".join(unmeasured)] if unmeasured else []
    skipped = [r for r in records if r.get("status") != "ok"]
    if skipped:
        lines += ["", "Not measured:", ""]
        seen = set()
        for r in skipped:   # a skip is listed once per row, device and reason
            key = (label(r), r.get("device"), r.get("reason"))
            if r.get("status") != "skipped" or key not in seen:
                seen.add(key)
                lines.append(f"- {describe(r)}: {r.get('status')}: {r.get('reason')}")
    sp = result.get("speedups") or []
    lines += ["", "GPU over CPU (ours on the GPU, each backend and engine, vs ours on the CPU: NumPy, eager):", ""]
    if sp:
        lines += ["| GPU row | dtype | N | H | B | CPU ms | GPU ms | speed-up |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {s['gpu_impl']} | {s['dtype']} | {s['n']:,} | {s['hidden']} | {s['batch'] or 'full'} | "
                  f"{s['cpu_ms']:.2f} | {s['gpu_ms']:.3f} | {s['speedup']:.1f}× |" for s in sp]
    else:
        lines.append(no_speedup_reason(meta))
    lines += ["", "Probes (best of 5): " + "; ".join(
        f"{p['library']} {p['device']} {p['dtype']}: GEMM {p['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"({p['gemm_size']}²), copy {p['copy_bytes_per_s'] / 1e9:.1f} GB/s"
        for p in result["probes"] if p.get("status", "ok") == "ok")]
    slow = busy.table(result["records"], result.get("busy") or [], label)
    if slow:
        lines += ["", "Busy machine: median ms per epoch idle and beside K CPU-bound competing processes (in "
                  "brackets: the slowdown against idle; load: the 1-minute load average at the end of the idle "
                  "run, the bench's own processes included):", ""] + slow
    return "\n".join([*lines, "", *targets.lines(result)]) + "\n"


def plot(result: dict, path) -> bool:
    """Log-log ms per epoch: a full-batch panel (x = N) per dtype and H, a minibatch panel
    (x = B) per dtype, and the GPU-over-CPU speed-ups as labelled bars. One legend, beside the
    panels, with a colour and a marker of its own for each line (ours solid, peers dashed);
    every panel says how many of its points were not measured. Two classes, plain GD only (the
    tables have the others). False when nothing was measured (no plot written). The format follows
    the suffix (mlp.plots.plot_format)."""
    from mlp.plots import pyplot, save_figure

    plt = pyplot()
    everything = [r for r in result["records"] if config(r)[3:] == (2, "sgd")]
    records = [r for r in everything if r.get("status") == "ok"]
    if not records:
        return False
    dtypes = sorted({r["dtype"] for r in records}, key=lambda d: d != "float32")
    hiddens = sorted({r["hidden"] for r in records if r.get("batch") is None})
    minibatch = any(r.get("batch") is not None for r in records)
    columns = len(hiddens) + minibatch
    sp = result.get("speedups") or []
    bottom = 1.0 if sp else 0.25
    fig = plt.figure(figsize=(5.2 * columns, 3.8 * (len(dtypes) + bottom)))
    grid = fig.add_gridspec(len(dtypes) + 1, columns, height_ratios=[1] * len(dtypes) + [bottom])
    names = sorted({(label(r), r["device"]) for r in records}, key=lambda nd: (not nd[0].startswith("ours"), nd))
    colours = [plt.cm.tab10(i) for i in range(10)] + ["#000080", "#8b0000", "#b8860b", "#ff00ff", "#006400"]
    style = {name: {"color": colours[i % len(colours)], "marker": "osD^vP*Xph"[i % 10],
                    "ls": "-" if name[0].startswith("ours") else "--"} for i, name in enumerate(names)}
    panels = [(h, None) for h in hiddens] + ([(None, "minibatch")] if minibatch else [])
    legend = {}
    for i, dtype in enumerate(dtypes):
        for j, (h, mb) in enumerate(panels):
            ax = fig.add_subplot(grid[i, j])
            here = lambda r: r.get("dtype") == dtype and ((r.get("batch") is not None) if mb  # noqa: E731
                                                          else r.get("batch") is None and r.get("hidden") == h)
            x = (lambda r: r.get("batch")) if mb else (lambda r: r["n"])  # noqa: E731
            for name in names:
                pts = sorted((x(r), r["median_ms"]) for r in records if (label(r), r["device"]) == name and here(r))
                if pts:
                    ax.plot(*zip(*pts), ms=4, lw=1.2, **style[name], label=f"{name[0]} [{name[1]}]")
            for device in sorted({r["device"] for r in records}):
                fl = sorted({(x(r), r["floor_ms"]) for r in records if r["device"] == device and here(r)
                             and r.get("floor_ms")})
                if fl:
                    ax.plot(*zip(*fl), "k--" if device == "cpu" else "k:", marker="_", ms=12, lw=1,
                            label=f"floor [{device}]")
            missing = sum(1 for r in everything if r.get("status") != "ok" and r.get("n") and here(r))
            if not ax.lines:     # every point of this panel was skipped: say so, without empty axes
                ax.text(0.5, 0.5, f"{dtype}, {'minibatch' if mb else f'full batch, H={h}'}:\n"
                        f"{missing} point(s), none measured: see the table",
                        ha="center", va="center", transform=ax.transAxes, fontsize=8, color="tab:red")
                ax.set_axis_off()
                continue
            if missing:
                ax.text(0.02, 0.02, f"{missing} point(s) not measured: see the table", transform=ax.transAxes,
                        fontsize=7, color="tab:red")
            n_mb = sorted({r["n"] for r in records if here(r)})
            ax.set(xscale="log", yscale="log", xlabel="B (rows per step)" if mb else "N (rows)",
                   ylabel="ms per epoch", title=f"{dtype}, " + (f"minibatch, N={n_mb[0]:,}" if mb and n_mb
                                                                 else f"full batch, H={h}"))
            ax.grid(True, which="both", alpha=0.3)
            for handle, text in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(text, handle)
    ax = fig.add_subplot(grid[len(dtypes), :])
    if sp:
        tags = [f"{s['gpu_impl']}\n{s['dtype']} N={s['n']:,}\nH={s['hidden']} B={s['batch'] or 'full'}" for s in sp]
        bars = ax.bar(range(len(sp)), [s["speedup"] for s in sp], color="tab:green", label="GPU / CPU (ours)")
        ax.bar_label(bars, labels=[f"{s['speedup']:.1f}×" for s in sp], fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8, label="as fast as the CPU")
        ax.set_xticks(range(len(sp)), tags, fontsize=6)
        ax.set_ylabel("speed-up over ours on the CPU")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "GPU / CPU speed-up: " + no_speedup_reason(result["meta"]), ha="center", va="center")
        ax.set_axis_off()
    meta = result["meta"]
    fig.suptitle(f"Training epoch, MNIST 3 vs 7 rows — {meta['cpu']}"
                 + (f" + {', '.join(meta['gpus'])}" if meta.get("gpus") else ""), fontsize=10)
    fig.tight_layout()
    fig.legend(legend.values(), legend.keys(), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    save_figure(fig, path, dpi=110)
    return True
