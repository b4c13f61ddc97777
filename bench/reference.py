"""What every row is held to: its first step's loss against float64 NumPy's.

Every row's first step starts from the same parameters (he init, seed 0) on the same rows (in
minibatch, the first B of the seeded permutation), so its loss depends on (N, H, B) alone and is
computed once per configuration, in float64 NumPy, in chunks of rows. A row that disagrees, or
that could not be checked, fails the bench; a row skipped for a reason that is not an error does not.
"""

import numpy as np

from mlp import model
from mlp.batches import batch_rows, is_full_batch

TOLERANCE = {"float32": 1e-4, "float64": 1e-9}   # |loss - float64 NumPy's| / float64 NumPy's
CHUNK_ROWS = 16_384
IDENTITY = ("impl", "backend", "engine", "threads_requested")          # which row
CONFIG = ("device", "dtype", "n", "hidden", "batch", "busy")           # the work it does, and where


def device_kind(device: str | None) -> str:
    return "cpu" if device in (None, "cpu") else "cuda"


def row_index(real_n: int, n: int, seed: int = 0) -> np.ndarray:
    """Which real training rows make the bench's n rows: the first n; beyond the real ones,
    rows drawn from them with replacement (seeded), so every size is real digits."""
    return np.arange(n) if n <= real_n else np.random.default_rng(seed).integers(0, real_n, n)


def training_rows(data_dir, n: int, dtype: str, seed: int = 0, download: bool = True):
    """The bench's n rows of MNIST 3 vs 7 (see row_index) in `dtype`."""
    from mlp.data import load_dataset

    ds = load_dataset(data_dir, (3, 7), quiet=True, dtype=np.dtype(dtype).type, download=download)
    X, y = ds.train.X, ds.train.y
    if n <= X.shape[0]:
        return X[:n], y[:n]
    rows = row_index(X.shape[0], n, seed)
    return X[rows], y[rows]


def first_step_loss(X: np.ndarray, y: np.ndarray, n: int, hidden: int, batch, seed: int = 0) -> float:
    """The loss of a row's first step, in float64: X, y are all the real rows (float64)."""
    params = model.init_params(X.shape[1], hidden, np.random.default_rng(seed), init="he", activation="relu")
    rows = row_index(X.shape[0], n, seed)
    if batch is not None and not is_full_batch(n, batch):       # as bench.base.Impl.permutation draws it
        rows = rows[np.random.default_rng(seed).permutation(n)[batch_rows(0, batch, n)]]
    total = 0.0
    for start in range(0, len(rows), CHUNK_ROWS):
        take = rows[start:start + CHUNK_ROWS]
        _, _, z2 = model.forward(params, X[take], "relu")
        total += float(model.mean_loss(z2, y[take])) * len(take)
    return total / len(rows)


def config(r: dict) -> tuple:
    return r["n"], r["hidden"], r.get("batch")


def first_losses(train, records: list) -> dict:
    """{(n, hidden, batch): float64 NumPy's first-step loss} for every configuration measured, on
    the training split `train` (float64, as mlp.data.load_dataset gives it)."""
    configs = sorted({config(r) for r in records if r.get("status") == "ok"}, key=str)
    return {c: first_step_loss(train.X, train.y, *c) for c in configs}


def check(records: list, references: dict) -> None:
    """Each measured row's first-step loss against float64 NumPy's: 'loss_check' is 'ok' or
    'MISMATCH' (NaN included); a row without a reference or a loss gets no 'loss_check'."""
    for r in records:
        ref = references.get(config(r)) if r.get("status") == "ok" else None
        if ref is None or r.get("initial_loss") is None:
            continue
        rel = abs(r["initial_loss"] - ref) / abs(ref)
        r["reference_loss"], r["initial_loss_rel_diff"] = ref, rel
        r["loss_check"] = "ok" if rel <= TOLERANCE[r["dtype"]] else "MISMATCH"


def label(r: dict) -> str:
    """'ours (numpy, eager)', a peer's name or 'probe numpy', with '[N threads]' when a count was asked for."""
    if not r.get("impl"):
        return f"probe {r.get('library')}"
    name = f"ours ({r.get('backend')}, {r.get('engine') or 'eager'})" if r["impl"] == "ours" else r["impl"]
    threads = r.get("threads_requested")
    return name if threads in (None, "auto") else f"{name} [{threads} thread{'s' * (threads > 1)}]"


def where(r: dict) -> str:
    n = r.get("n", 0)
    return f"N={format(n, ',') if isinstance(n, int) else n} H={r.get('hidden')} B={r.get('batch') or 'full'}"


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
            out.append(f"{describe(r)}: first step's loss {r['initial_loss']!r} is {r['initial_loss_rel_diff']:.2g} "
                       f"away from float64 NumPy's {r['reference_loss']!r} (tolerance {TOLERANCE[r['dtype']]:g})")
    return out


def skipped(records: list) -> str | None:
    """One line on the rows not measured for a reason that is not an error (library missing, too slow)."""
    reasons = sorted({str(r.get("reason")) for r in records if r.get("status") == "skipped"})
    count = sum(1 for r in records if r.get("status") == "skipped")
    more = f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else ""
    return f"{count} rows skipped (not errors; see 'Not measured'): {'; '.join(reasons[:3])}{more}" if count else None
