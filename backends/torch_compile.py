"""The compiled engine on PyTorch with the CPU: `torch.compile` of the project's own
`model.train_step` (it arrives as an argument; this module never imports the model), with the
minibatch's rows gathered inside the compiled function, UNROLL steps per call. Dynamo traces
the step through array_api_compat as one graph; Inductor fuses its elementwise work into a few
C++ loops around the products. At B=64 a step is ~0.4 ms of work, so the per-call cost (guards,
the Python wrapper) matters: 8 steps per call cut the CPU time of an epoch by ~25% (measured on
a 2-core EPYC, one thread: 108 -> 82 ms, against 89 ms for the torch-expert peer).

Compiling costs 5-90 s on a 2-core CPU, see docs/cpu-or-gpu.md (programs for UNROLL x B rows, B rows and the remainder
batch, or one for full batch; Inductor keeps them in its cache for the next run), so `--engine auto`
keeps torch on the CPU eager: ask for this one with `--engine compiled`. Inductor's fusion
changes the last bits of the results against eager. The kernels use the threads set when they
compile (backends.threads), so the thread count is chosen before the engine is made. Inductor
raises the recursion limit to 2000 as it compiles, and leaves it: run() puts back the one it found.
"""

import contextlib
import functools
import sys
import warnings

import torch

from mlp.batches import batch_rows, segment_steps

ROWS_PER_SEGMENT = 16_384   # rows' worth of steps per run() between two checks for Ctrl-C, as the JAX engine
UNROLL = 8                  # minibatch steps per compiled call: an eighth of the calls' guards and Python


def _gathered(step, params, arrays, rows):
    """One step on the rows `rows` of X, y (and w) (gathered inside the compiled program)."""
    return step(params, *(torch.index_select(a, 0, rows) for a in arrays))


def _unrolled(step, params, arrays, rows):
    """rows.shape[0] consecutive steps, the i-th on the rows rows[i]; their losses stacked."""
    losses = []
    for i in range(rows.shape[0]):
        params, loss = _gathered(step, params, arrays, rows[i])
        losses.append(loss)
    return params, torch.stack(losses)


class TorchCompileEngine:
    name = "compiled"

    def __init__(self, step, X, y, batch: int, segment: int | None = None, unroll: int = UNROLL, w=None):
        self.rows, self.batch, self.n, self.unroll = (X, y) if w is None else (X, y, w), batch, X.shape[0], unroll
        self.full_steps = self.n // batch
        self.segment = segment or segment_steps(batch, ROWS_PER_SEGMENT)
        self.perm = None
        # cpp_wrapper: the program's calls in C++ rather than Python, ~10% less CPU a step at B=64
        compile = functools.partial(torch.compile, dynamic=False, options={"cpp_wrapper": True})
        self._full_batch = compile(lambda params, arrays: step(params, *arrays))
        self._step = compile(functools.partial(_gathered, step))           # B rows, or the remainder's
        self._steps = compile(functools.partial(_unrolled, step))          # `unroll` steps of B rows

    def begin_epoch(self, perm) -> None:
        self.perm = None if perm is None else torch.from_numpy(perm)

    def run(self, params, first: int, last: int):
        losses, i, B = [], first, self.batch
        with torch.no_grad(), warnings.catch_warnings(), contextlib.ExitStack() as on_exit:
            on_exit.callback(sys.setrecursionlimit, sys.getrecursionlimit())   # Inductor raises it, for good
            # Dynamo traces array_api_compat's lru_caches: harmless
            warnings.filterwarnings("ignore", "Dynamo detected a call to a `functools.lru_cache`")
            while i < last:
                if self.perm is None:
                    params, loss = self._full_batch(params, self.rows)
                elif self.unroll > 1 and i + self.unroll <= min(last, self.full_steps):
                    rows = self.perm[i * B:(i + self.unroll) * B].view(self.unroll, B)
                    params, loss = self._steps(params, self.rows, rows)
                    i += self.unroll - 1
                else:
                    params, loss = self._step(params, self.rows, self.perm[batch_rows(i, B, self.n)])
                losses.append(loss.reshape(-1))
                i += 1
        return params, torch.cat(losses)
