"""The project's own targets for its code, in one table, and each one's verdict on a bench run.

A target holds the rows that match its fields (the fastest of them per configuration, or each
one) to a limit on their median epoch: in ms, or in multiples of the floor, of the same row's
idle time (--busy), or of the fastest row of another kind at the same configuration. The
verdict is met or MISSED when the figure's whole spread (from the rows' fastest and slowest
epochs) is on one side of the limit, within noise when the limit lies inside it, or not
measured, with the reason. A row the bench gains (another peer, another field such as an
optimiser) is a line here; a field that changes the work done belongs in reference.CONFIG too.
"""

from dataclasses import dataclass

from .base import ESTIMATOR
from .reference import CONFIG, DEFAULT, IDENTITY, describe, device_kind, label, place

REAL = "real"     # n: all the real training rows (the run's meta real_rows)
CORES = "K (one per usable core)"   # busy: the run's meta usable_cores
OURS = {"impl": "ours", "threads_requested": "auto"}
NUMPY = {**OURS, "backend": "numpy", "engine": "eager"}
BINARY = {"classes": 2, "optimiser": "sgd"}    # two classes, plain gradient descent
DEFAULT_JOB = {**NUMPY, **BINARY, "device": "cpu", "dtype": "float32", "hidden": 128, "batch": 64}   # mlp.train's
CPU = {"device": "cpu", "dtype": "float32", "n": REAL, "hidden": 128, "busy": 0, **BINARY}
GPU = {"device": "cuda", "dtype": "float32", "busy": 0, **BINARY}
GPU_B64 = {**GPU, "n": REAL, "hidden": 128, "batch": 64}   # the default job's configuration on a GPU


@dataclass(frozen=True)
class Target:
    subject: str              # who is held to it
    rows: dict                # the fields of the rows held to it ("device": cpu or cuda, any index)
    limit: float              # the most their median epoch may take: ms, or × `against`
    against: dict | str | None = None   # None (ms), "floor", "idle", or the fields of the rows compared with
    each: bool = False        # a verdict for each row; else for the fastest row of each configuration


TARGETS = (
    Target("ours (numpy, eager)", {**CPU, **NUMPY, "batch": None}, 1.25, "floor"),
    Target("ours (numpy, eager)", {**CPU, **NUMPY, "batch": None}, 1.0, {"impl": "torch-manual"}),
    Target("ours (numpy, eager)", {**CPU, **NUMPY, "batch": None}, 1 / 1.25, {"impl": "sklearn"}),
    Target("the fastest of ours", {**CPU, "impl": "ours", "batch": 64}, 1.0, {"impl": "torch-expert"}),
    Target("the fastest of ours", {**CPU, "impl": "ours", "batch": None}, 1.0, {"impl": "torch-expert"}),
    Target("the fastest of ours", {**CPU, "impl": "ours", "batch": 64, "optimiser": "momentum"}, 1.1,
           {"impl": "torch-expert"}),   # torch.optim's
    Target("the fastest of ours", {**CPU, "impl": "ours", "batch": 64, "optimiser": "adam"}, 1.1,
           {"impl": "torch-expert"}),
    Target(ESTIMATOR, {**CPU, "impl": ESTIMATOR, "batch": 64}, 1 / 5, {"impl": "sklearn"}),   # 5x faster
    Target(ESTIMATOR, {**CPU, "impl": ESTIMATOR, "batch": 64, "classes": 10}, 1 / 5, {"impl": "sklearn"}),
    Target("the default job", {**DEFAULT_JOB, "n": REAL, "busy": 1}, 1.3, "idle"),
    Target("the default job", {**DEFAULT_JOB, "n": REAL, "busy": CORES}, 2.5, "idle"),
    Target("ours (jax, compiled)", {**GPU_B64, **OURS, "backend": "jax", "engine": "compiled"}, 6.0),
    Target("ours (torch, compiled)", {**GPU_B64, **OURS, "backend": "torch", "engine": "compiled"}, 20.0),
    Target("ours (cupy, eager)", {**GPU_B64, **OURS, "backend": "cupy", "engine": "eager"}, 150.0),
    Target("ours (cupy, eager)", {**GPU, **OURS, "backend": "cupy", "engine": "eager", "batch": None}, 1.15,
           {"impl": "torch-expert"}),
    Target("each of ours", {**GPU, "impl": "ours", "n": 1_000_000, "hidden": 1024, "batch": None}, 1 / 0.6, "floor",
           each=True),   # at least 60% of the floor
)


def value(r: dict, key: str):
    """A record's field, with the defaults that older and made-up records leave out."""
    if key == "engine" and r.get("impl") == "ours":
        return r.get("engine") or "eager"
    return r.get(key) or DEFAULT.get(key, r.get(key))


def resolve(fields: dict, meta: dict) -> dict:
    """`fields` with REAL and CORES read from the run's meta (left as they are where it lacks them)."""
    known = {REAL: meta.get("real_rows") or REAL, CORES: meta.get("usable_cores") or CORES}
    return {k: known[v] if isinstance(v, str) and v in known else v for k, v in fields.items()}


def matches(r: dict, fields: dict) -> bool:
    return all((device_kind(value(r, k)) if k == "device" else value(r, k)) == v for k, v in fields.items())


def goal(t: Target, fields: dict) -> str:
    """'ours (numpy, eager) on cpu float32 N=12,396 H=128 B=full: at most 1.25× the floor's time'."""
    n, h, b = (fields.get(k, "any") for k in ("n", "hidden", "batch"))
    scope = place({**fields, "n": n, "hidden": h, "batch": b})
    unit = (f"× {t.against['impl']}'s time" if isinstance(t.against, dict) else
            {None: " ms per epoch", "floor": "× the floor's time", "idle": "× its idle time"}[t.against])
    return f"{t.subject} on {scope}: at most {t.limit:{'g' if t.against is None else '.2f'}}{unit}"


def evaluate(t: Target, rows: list, meta: dict) -> list[dict]:
    """The verdicts of `t` on `rows` (a run's records, --busy ones included): one per configuration
    (and row, with `each`), or one 'not measured' when no row matching it was measured."""
    fields = resolve(t.rows, meta)
    head = goal(t, fields)
    held = [r for r in rows if matches(r, fields)]
    groups = {}
    for r in held:
        if r.get("status") == "ok":
            key = tuple(value(r, k) for k in CONFIG) + ((label(r),) if t.each else ())
            groups.setdefault(key, []).append(r)
    if not groups:
        bad = next((r for r in held if r.get("status") != "ok"), None)
        return [verdict(t, head, f"{describe(bad)}: {bad['status']}: {bad.get('reason')}" if bad else
                        "no such row in this run")]
    return [judge(t, head, min(group, key=lambda r: r["median_ms"]), rows) for group in groups.values()]


def judge(t: Target, head: str, a: dict, rows: list) -> dict:
    """The verdict on row `a`, the fastest of its group, among a run's `rows`."""
    who = label(a) if f" on {place(a)}:" in head else describe(a)
    lo, hi = a.get("min_ms", a["median_ms"]), a.get("max_ms", a["median_ms"])
    if t.against is None:
        return verdict(t, head, f"{who} took {a['median_ms']:.2f} ms", a["median_ms"], (lo, hi))
    if t.against == "floor":
        floor = a.get("floor_ms")
        if not floor:
            return verdict(t, head, f"{who}: no floor (no GEMM probe on {a['device']} in this run)")
        return verdict(t, head, f"{who} took {a['median_ms'] / floor:.2f}× the floor's time ({a['median_ms']:.2f} "
                       f"ms against {floor:.2f} ms)", a["median_ms"] / floor, (lo / floor, hi / floor))
    same, fields = (CONFIG + IDENTITY, {"busy": 0}) if t.against == "idle" else (CONFIG, t.against)
    near = [r for r in rows if matches(r, fields) and all(value(r, k) == value(a, k) for k in same if k not in fields)]
    peers = [r for r in near if r.get("status") == "ok"]
    if not peers:
        why = next((f"{r['status']}: {r.get('reason')}" for r in near), "not in this run")
        return verdict(t, head, f"{who}: {'its idle run' if t.against == 'idle' else fields['impl']} not measured "
                                f"({why})")
    b = min(peers, key=lambda r: r["median_ms"])
    ratio = a["median_ms"] / b["median_ms"]
    spread = (lo / b.get("max_ms", b["median_ms"]), hi / b.get("min_ms", b["median_ms"]))
    if t.against == "idle":
        return verdict(t, head, f"{who} took {ratio:.2f}× its idle time ({b['median_ms']:.1f} ms idle)", ratio, spread)
    faster = (f"{label(b)} is {ratio:.2f}× faster" if ratio > 1 else f"it is {1 / ratio:.2f}× faster" if ratio < 1
              else "as fast")
    return verdict(t, head, f"{who} took {ratio:.2f}× {label(b)}'s time ({faster})", ratio, spread)


def verdict(t: Target, head: str, text: str, figure: float | None = None, spread=(0.0, 0.0)) -> dict:
    """met when all of `spread` (the figure from the rows' fastest and slowest epochs) is within the
    limit, MISSED when none of it is, within noise between; not measured without a figure."""
    if figure is None:
        word = "not measured"
    else:
        word = "met" if spread[1] <= t.limit else "MISSED" if spread[0] > t.limit else "within noise"
        text += f"; spread {spread[0]:.2f}–{spread[1]:.2f}" + (" ms" if t.against is None else "×")
    return {"target": head, "measured": text, "verdict": word}


def verdicts(result: dict) -> list[dict]:
    """Every target's verdicts on a run (`result`: the bench's JSON)."""
    rows = [*result.get("records", []), *(result.get("busy") or [])]
    return [v for t in TARGETS for v in evaluate(t, rows, result.get("meta") or {})]


def lines(result: dict) -> list[str]:
    return ["Project targets: goals the project sets for its own code, judged on this run's rows (met or MISSED: the "
            "figure's whole spread, from the rows' fastest and slowest epochs, is on one side of the limit; within "
            "noise: the limit lies inside it):", ""] + [f"- {v['target']}: {v['measured']}: {v['verdict']}"
                                                       for v in verdicts(result)]
