"""The compiled engine on PyTorch with CUDA: an epoch's steps captured once in CUDA graphs.

A CUDA graph replays fixed kernels on fixed addresses, so everything a step touches is a
static buffer: X and y (already on the device), a permutation buffer that each epoch's
host permutation is copied into (once per epoch), the parameters (each step's result is
copied into them in place), and a loss buffer with one slot per step. The step is the
project's own `model.train_step` (it arrives as an argument; this module never imports
the model); it captures because it makes no host tensor inside a step.

    run(params, first, last)    replays the graph of steps first..last-1, capturing it the
                                first time that range is asked for (after a short warm-up
                                whose effect on the parameters is undone)

`steps_in_place(first, last)` is that same step logic without capture: it is what is
captured, and it runs anywhere, so CPU tests check it against the eager loop. Segments
are a fixed number of rows' worth of steps (Ctrl-C is honoured between two), and every
distinct range is its own graph.
"""

from __future__ import annotations

import functools

import torch

from mlp.batches import batch_rows, is_full_batch

ROWS_PER_SEGMENT = 65_536    # ~1,000 steps at B=64: a short wait for a stop request on a GPU
WARMUP_STEPS = 2             # eager steps before a capture (cuBLAS handles, workspaces)


class TorchGraphEngine:
    name = "compiled"

    def __init__(self, device, step, X, y, batch: int, segment: int | None = None, capture: bool = True):
        self.device, self.step, self.X, self.y, self.batch = torch.device(device), step, X, y, batch
        self.n = X.shape[0]
        self.steps = -(-self.n // batch)
        self.segment = segment or max(1, ROWS_PER_SEGMENT // batch)
        self.capture = capture
        self.perm = torch.arange(self.n, device=self.device)                  # static (N,)
        self.losses = torch.zeros(self.steps, dtype=X.dtype, device=self.device)  # static, one per step
        self.params = None                                                    # static, set by the first run
        self.graphs = {}                                                      # (first, last) -> CUDAGraph

    def begin_epoch(self, perm) -> None:
        if perm is not None:                                                  # full batch: rows in order
            self.perm.copy_(torch.from_numpy(perm), non_blocking=False)       # host -> device, once per epoch

    def steps_in_place(self, first: int, last: int) -> None:
        """Steps first..last-1 on the static buffers (what a graph captures)."""
        for i in range(first, last):
            if is_full_batch(self.n, self.batch):                               # X itself
                Xb, yb = self.X, self.y
            else:
                rows = self.perm[batch_rows(i, self.batch, self.n)]             # a view: static address
                Xb, yb = torch.index_select(self.X, 0, rows), torch.index_select(self.y, 0, rows)
            new, loss = self.step(self.params, Xb, yb)
            for k, p in self.params.items():
                p.copy_(new[k])
            self.losses[i].copy_(loss)

    def run(self, params, first: int, last: int):
        if params is not self.params:        # parameters from outside (start, resume): into the buffers
            if self.params is None:
                self.params = {k: torch.empty_like(v) for k, v in params.items()}
            for k, p in self.params.items():
                p.copy_(params[k])
        if self.capture:
            graph = self.graphs.get((first, last))
            if graph is None:
                graph = self.graphs[(first, last)] = self._capture(first, last)
            graph.replay()
        else:
            self.steps_in_place(first, last)
        # copies: the static buffers change at the next replay, a caller's parameters never do
        return {k: p.clone() for k, p in self.params.items()}, self.losses[first:last].clone()

    def _capture(self, first: int, last: int):
        saved = {k: p.clone() for k, p in self.params.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):                    # warm-up off the capture, as PyTorch asks
            self.steps_in_place(first, min(last, first + WARMUP_STEPS))
        torch.cuda.current_stream(self.device).wait_stream(side)
        for k, p in self.params.items():                 # undo the warm-up's steps
            p.copy_(saved[k])
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self.steps_in_place(first, last)             # recorded, not run
        return graph


def factory(device):
    """`Backend.compiled_engine` for torch on a CUDA device: (step, X, y, batch) -> engine."""
    return functools.partial(TorchGraphEngine, device)
