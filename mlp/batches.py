"""Which rows each step of an epoch trains on: one rule for every engine, the loop and the bench.

An epoch over N rows at B rows a step is ceil(N / B) steps. In full batch (B >= N) the one step
takes the rows in order, with no permutation. Otherwise step i takes the rows
perm[i*B : min((i+1)*B, N)] of the epoch's permutation: the last step takes the N mod B rows
left and averages over the rows it has, exactly as every other step does.
"""

def batching(n: int, batch_size) -> tuple[int, int]:
    """(rows per step, steps per epoch) for n rows and a --batch-size (a count or 'full')."""
    batch = n if batch_size == "full" else min(int(batch_size), n)
    return batch, -(-n // batch)     # ceil(n / batch) in integers: exact for any n


def is_full_batch(n: int, batch: int) -> bool:
    """True when a step takes every row (no permutation is drawn)."""
    return batch >= n


def segment_steps(batch: int, rows: int, max_steps: int | None = None) -> int:
    """How many steps of `batch` rows a compiled engine runs per call: `rows` rows' worth (at
    least one step), and at most `max_steps`. Between two calls a stop request is honoured."""
    steps = max(1, rows // batch)
    return steps if max_steps is None else min(max_steps, steps)


def batch_rows(step: int, batch: int, n: int) -> slice:
    """The positions in the epoch's permutation of the rows of step `step` (0-based)."""
    return slice(step * batch, min((step + 1) * batch, n))
