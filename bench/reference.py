"""What every row is held to: its first steps' losses against float64 NumPy's.

Every row starts from the same parameters (he init, from a generator seeded 0, which then draws
each epoch's permutation, as mlp.loop does) on the same rows (in minibatch, the first B of that
permutation), so its first step's loss depends on its configuration (N, H, B, C classes) alone and
is computed once per configuration, in float64 NumPy, in chunks of rows. In minibatch, the loss
of the second step, on the next B rows, checks the first step's update too: NumPy's float64 step of
the row's optimiser (mlp.model's; for Adam, mlp.model.adam). A row that disagrees, or that could
not be checked, fails the bench; a row skipped for a reason that is not an error does not.
"""

import numpy as np

from mlp import model
from mlp.batches import batch_rows, is_full_batch

from .base import OPTIMISERS

TOLERANCE = {"float32": 1e-4, "float64": 1e-9}   # |loss - float64 NumPy's| / float64 NumPy's
CHUNK_ROWS = 16_384
LABEL_SEED = 0                                   # the drawn labels of more classes than the data has
IDENTITY = ("impl", "backend", "engine", "threads_requested")          # which row
CONFIG = ("device", "dtype", "n", "hidden", "batch", "classes", "optimiser", "busy")   # the work, and where
DEFAULT = {"threads_requested": "auto", "busy": 0, "classes": 2, "optimiser": "sgd"}  # what older records leave out


def device_kind(device: str | None) -> str:
    return "cpu" if device in (None, "cpu") else "cuda"


def row_index(real_n: int, n: int, seed: int = 0) -> np.ndarray:
    """Which real training rows make the bench's n rows: the first n; beyond the real ones,
    rows drawn from them with replacement (seeded), so every size is real digits."""
    return np.arange(n) if n <= real_n else np.random.default_rng(seed).integers(0, real_n, n)


def training_split(data_dir, classes: int = 2, dtype="float64", download: bool = True, quiet: bool = True):
    """The real training rows for C classes: MNIST 3 vs 7 for two; for more, every row of the
    data's files, with their own labels where they hold C classes (full MNIST: ten), else (3s and
    7s) with labels drawn uniformly from 0..C-1 by a generator seeded LABEL_SEED: the work of C
    classes on real digits, not a task to learn. y: the labels as positions 0..C-1."""
    from mlp.data import load_dataset

    ds = load_dataset(data_dir, (3, 7) if classes == 2 else "all", quiet=quiet, dtype=np.dtype(dtype).type,
                      download=download)
    if len(ds.classes) != classes:
        ds.train.y = np.random.default_rng(LABEL_SEED).integers(0, classes, len(ds.train.y)).astype(np.float64)
    return ds.train


def training_rows(data_dir, n: int, dtype: str, seed: int = 0, download: bool = True, classes: int = 2):
    """The bench's n rows (see row_index) of training_split, in `dtype`."""
    train = training_split(data_dir, classes, dtype, download)
    rows = row_index(train.X.shape[0], n, seed)
    return train.X[rows], train.y[rows]


def step_losses(X: np.ndarray, y: np.ndarray, n: int, hidden: int, batch, classes: int = 2, optimiser: str = "sgd",
                seed: int = 0) -> tuple:
    """(the loss of a row's first step, of its second in minibatch or None), in float64: X, y are
    all the real rows (float64)."""
    rng = np.random.default_rng(seed)
    params = model.init_params(X.shape[1], hidden, rng, init="he", activation="relu", n_out=model.outputs(classes))
    rows = row_index(X.shape[0], n, seed)
    if batch is None or is_full_batch(n, batch):
        total = 0.0
        for start in range(0, len(rows), CHUNK_ROWS):
            take = rows[start:start + CHUNK_ROWS]
            total += float(model.mean_loss(model.forward(params, X[take])[2], y[take])) * len(take)
        return total / len(rows), None
    perm = rows[rng.permutation(n)]                              # as bench.base.Impl.permutation draws it
    first, second = (perm[batch_rows(i, batch, n)] for i in (0, 1))
    opt = model.Optimiser(**OPTIMISERS[optimiser])
    state, loss = model.train_step({**params, **opt.slots(params)}, X[first], y[first], opt=opt)
    return float(loss), float(model.mean_loss(model.forward(state, X[second])[2], y[second]))


def config(r: dict) -> tuple:
    return tuple(r.get(k) or DEFAULT.get(k) for k in ("n", "hidden", "batch", "classes", "optimiser"))


def first_losses(splits: dict, records: list) -> dict:
    """{(n, hidden, batch, classes, optimiser): float64 NumPy's (first, second) step losses} for every
    configuration measured; `splits`: {classes: its training_split, float64}."""
    configs = sorted({config(r) for r in records if r.get("status") == "ok"}, key=str)
    return {c: step_losses(splits[c[3]].X, splits[c[3]].y, *c) for c in configs}


def check(records: list, references: dict) -> None:
    """Each measured row's first step's loss (and its second's, where both are known) against float64
    NumPy's: 'loss_check' is 'ok' or 'MISMATCH' (NaN included); a row without a reference or a loss
    gets no 'loss_check'."""
    for r in records:
        ref = references.get(config(r)) if r.get("status") == "ok" else None
        if ref is None or r.get("initial_loss") is None:
            continue
        rel = [abs(r[k] - v) / abs(v) for k, v in zip(("initial_loss", "second_loss"), ref)
               if v is not None and r.get(k) is not None]
        r["reference_loss"], r["initial_loss_rel_diff"] = ref[0], rel[0]
        if len(rel) > 1:
            r["second_reference_loss"], r["second_loss_rel_diff"] = ref[1], rel[1]
        r["loss_check"] = "ok" if all(d <= TOLERANCE[r["dtype"]] for d in rel) else "MISMATCH"   # NaN fails

def label(r: dict) -> str:
    """'ours (numpy, eager)', a peer's name or 'probe numpy', with '[N threads]' when a count was asked for."""
    if not r.get("impl"):
        return f"probe {r.get('library')}"
    name = f"ours ({r.get('backend')}, {r.get('engine') or 'eager'})" if r["impl"] == "ours" else r["impl"]
    threads = r.get("threads_requested")
    return name if threads in (None, "auto") else f"{name} [{threads} thread{'s' * (threads > 1)}]"


def where(r: dict) -> str:
    """'N=12,396 H=128 B=64', with ' C=10' for ten classes and ' adam' for another optimiser than plain GD."""
    n, c, opt = r.get("n", 0), r.get("classes") or 2, r.get("optimiser") or "sgd"
    return (f"N={format(n, ',') if isinstance(n, int) else n} H={r.get('hidden')} B={r.get('batch') or 'full'}"
            + (f" C={c}" if c != 2 else "") + (f" {opt}" if opt != "sgd" else ""))


def place(r: dict) -> str:
    """'cpu float32 N=12,396 H=128 B=64' (a probe: no N, H, B)."""
    return (f"{r.get('device')} {r.get('dtype')}" + (f" {where(r)}" if r.get("n") else "")
            + (f" beside {r['busy']} competing process{'es' * (r['busy'] != 1)}" if r.get("busy") else ""))


def describe(r: dict) -> str:
    """'ours (numpy, eager) on cpu float32 N=12,396 H=128 B=64'."""
    return f"{label(r)} on {place(r)}"


def problems(records: list, probes: list = (), busy: list = ()) -> list:
    """Why the bench must fail, one line each (empty: it passes): an error, a device with no row
    measured, a first loss unchecked or off. `busy`: the rows measured beside competitors
    (--busy), held to no loss of their own (their idle twin in `records` is), but an error there
    fails the bench too."""
    out = [f"{describe(r)}: error: {r.get('reason')}" for r in (*probes, *records, *busy)
           if r.get("status") == "error"]
    out += [f"nothing was measured on {device}: every row there was skipped or failed" for device in
            sorted({r.get("device") for r in records} - {r.get("device") for r in records if r.get("status") == "ok"})]
    for r in records:
        if r.get("status") != "ok":
            continue
        if "loss_check" not in r:
            out.append(f"{describe(r)}: its first step's loss was not checked against float64 NumPy")
        elif r["loss_check"] != "ok":
            for step, key, ref in (("first", "initial_loss", "reference_loss"),
                                   ("second", "second_loss", "second_reference_loss")):
                rel = r.get(f"{key}_rel_diff")
                if rel is not None and not rel <= TOLERANCE[r["dtype"]]:
                    out.append(f"{describe(r)}: {step} step's loss {r[key]!r} is {rel:.2g} away from float64 "
                               f"NumPy's {r[ref]!r} (tolerance {TOLERANCE[r['dtype']]:g})")
    return out


def skipped(records: list) -> str | None:
    """One line on the rows not measured for a reason that is not an error (library missing, too slow)."""
    reasons = sorted({str(r.get("reason")) for r in records if r.get("status") == "skipped"})
    count = sum(1 for r in records if r.get("status") == "skipped")
    more = f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    return f"{count} rows skipped (not errors; see 'Not measured'): {'; '.join(reasons[:3])}{more}" if count else None
