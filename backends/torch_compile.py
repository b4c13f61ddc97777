"""The compiled engine on PyTorch with the CPU: `torch.compile` of the project's own
`model.train_step` (it arrives as an argument; this module never imports the model), with the
minibatch's rows gathered inside the compiled function. Dynamo traces the step through
array_api_compat as one graph; Inductor fuses its elementwise work into a few C++ loops
around the two products, which makes a full-batch step cheaper than eager.

Compiling costs 10-90 s on a 2-core CPU (one program for B rows, one for the remainder batch,
one for full batch; Inductor keeps them in its cache for the next run), so `--engine auto`
keeps torch on the CPU eager: ask for this one with `--engine compiled`. Inductor's fusion
changes the last bits of the results against eager. The kernels use the threads set when they
compile (backends.threads), so the thread count is chosen before the engine is made.
"""

from __future__ import annotations

import functools
import warnings

import torch

from mlp.batches import batch_rows

ROWS_PER_SEGMENT = 16_384   # steps per run between two checks for Ctrl-C, as the JAX engine


def _gathered(step, params, X, y, rows):
    return step(params, torch.index_select(X, 0, rows), torch.index_select(y, 0, rows))


class TorchCompileEngine:
    name = "compiled"

    def __init__(self, step, X, y, batch: int, segment: int | None = None):
        self.X, self.y, self.batch, self.n = X, y, batch, X.shape[0]
        self.segment = segment or max(1, ROWS_PER_SEGMENT // batch)
        self.perm = None
        self._full_batch = torch.compile(step, dynamic=False)
        self._step = torch.compile(functools.partial(_gathered, step), dynamic=False)

    def begin_epoch(self, perm) -> None:
        self.perm = None if perm is None else torch.from_numpy(perm)

    def run(self, params, first: int, last: int):
        losses = []
        with torch.no_grad(), warnings.catch_warnings():   # Dynamo traces array_api_compat's lru_caches: harmless
            warnings.filterwarnings("ignore", "Dynamo detected a call to a `functools.lru_cache`")
            for i in range(first, last):
                if self.perm is None:
                    params, loss = self._full_batch(params, self.X, self.y)
                else:
                    params, loss = self._step(params, self.X, self.y, self.perm[batch_rows(i, self.batch, self.n)])
                losses.append(loss)
        return params, torch.stack(losses)


def factory():
    """`Backend.compiled_engine` for torch on the CPU: (step, X, y, batch) -> engine."""
    return TorchCompileEngine
