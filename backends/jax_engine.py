"""The compiled engine on JAX: a run of an epoch's steps as one XLA program.

The step is the project's own `model.train_step` (it arrives as an argument, so this
module never imports the model). Per epoch, the host permutation goes to the device once;
then

    full minibatches   jax.jit of lax.scan over steps first..last-1: step i gathers rows
                       perm[i*B:(i+1)*B] from the device-resident X, y and calls the step
    remainder batch    a separately compiled step on rows perm[(N//B)*B:] (N mod B rows,
                       a mean over the rows present, exactly as the eager loop)
    full batch         one jitted step on X, y themselves

`segment` (steps per run, between two checks for Ctrl-C) is a fixed number of rows' worth of
steps, at most STEPS_PER_SEGMENT, so that a run stays short: where the scan is split changes
which program runs, never the maths (the same steps, in the same order, on the same rows).
Each distinct segment length compiles once (a resumed epoch may add one more).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mlp.batches import batch_rows, segment_steps

from .threads import xla_options

ROWS_PER_SEGMENT = 16_384   # about 1.3 epochs of MNIST 3 vs 7: a short wait for a stop request
STEPS_PER_SEGMENT = 4_096   # ...and no more steps than this (the scan's body compiles once whatever the
                            # count: only the time between two checks for a stop request grows)


def _scan_steps(step, batch: int, params, arrays, perm, first, count: int):
    """Steps first..first+count-1 of the epoch, one lax.scan; the losses as a (count,) array.
    `params`: the parameters and the optimiser's slots, the scan's carry."""

    def body(p, i):
        rows = lax.dynamic_slice_in_dim(perm, i * batch, batch)          # (B,): batch_rows(i, ...) traced
        return step(p, *(jnp.take(a, rows, axis=0) for a in arrays))

    return lax.scan(body, params, first + jnp.arange(count))


def _remainder_step(step, rows: slice, params, arrays, perm):
    rows = perm[rows]                                                    # (N mod B,)
    return step(params, *(jnp.take(a, rows, axis=0) for a in arrays))


class JaxScanEngine:
    name = "compiled"

    def __init__(self, device, step, X, y, batch: int, segment: int | None = None, w=None):
        self.device, self.batch = device, batch
        self.rows = (X, y) if w is None else (X, y, w)      # each row's features, label (and weight)
        self.n = X.shape[0]
        self.full_steps = self.n // batch
        self.segment = segment or segment_steps(batch, ROWS_PER_SEGMENT, STEPS_PER_SEGMENT)
        self.perm = None
        jit = functools.partial(jax.jit, compiler_options=xla_options(device))   # the run's thread count
        self._full_batch = jit(lambda params, arrays: step(params, *arrays))
        self._scan = jit(functools.partial(_scan_steps, step, batch), static_argnames="count")
        self._rest = jit(functools.partial(_remainder_step, step, batch_rows(self.full_steps, batch, self.n)))

    def begin_epoch(self, perm) -> None:
        self.perm = None if perm is None else jax.device_put(perm, self.device)   # once per epoch

    def run(self, params, first: int, last: int):
        if self.perm is None:                                            # full batch: one step
            params, loss = self._full_batch(params, self.rows)
            return params, jnp.reshape(loss, (1,))
        losses = []
        count = min(last, self.full_steps) - first
        if count > 0:
            params, scanned = self._scan(params, self.rows, self.perm, first, count=count)
            losses.append(scanned)
        if last > self.full_steps:                                       # the remainder batch
            params, loss = self._rest(params, self.rows, self.perm)
            losses.append(jnp.reshape(loss, (1,)))
        return params, losses[0] if len(losses) == 1 else jnp.concatenate(losses)
