"""The compiled engine on PyTorch with CUDA: an epoch's steps captured once in CUDA graphs.

A CUDA graph replays fixed kernels on fixed addresses, so everything a step touches is a
static buffer: X and y (already on the device), a permutation buffer that each epoch's
host permutation is copied into (once per epoch), the parameters (each step's result is
copied into them in place), and a loss buffer with one slot per step. The step is the
project's own `model.train_step` (it arrives as an argument; this module never imports
the model); it captures because it makes no host tensor inside a step. Each distinct range
of steps (a segment: Ctrl-C is honoured between two) is captured once, as its own graph.

Capture and replay happen under the engine's own device (`torch.cuda.device`), on a capture
stream made on that device: `torch.cuda.graph` otherwise captures on a stream of whichever
device was current first, so on cuda:N (N != 0) it would record nothing and every replay
would leave the parameters as they were. tests/test_cuda_graph.py checks this on the CPU with a
stand-in for `torch.cuda`, and on a GPU for real.
"""

import contextlib

import torch

from mlp.batches import batch_rows, batching, is_full_batch, segment_steps

ROWS_PER_SEGMENT = 65_536    # rows' worth of steps in one graph: a short wait for a stop request...
STEPS_PER_SEGMENT = 1_024    # ...but no more steps than this (at B=1, 65,536 steps would be one huge graph)
WARMUP_STEPS = 2             # eager steps before a capture (cuBLAS handles, workspaces)


class TorchGraphEngine:
    name = "compiled"

    def __init__(self, device, step, X, y, batch: int, segment: int | None = None, capture: bool = True, w=None):
        self.device, self.step, self.batch = torch.device(device), step, batch
        self.rows = (X, y) if w is None else (X, y, w)                        # static: features, label (weight)
        self.n = X.shape[0]
        self.steps = batching(self.n, batch)[1]
        self.segment = segment or segment_steps(batch, ROWS_PER_SEGMENT, STEPS_PER_SEGMENT)
        self.capture = capture
        self.perm = torch.arange(self.n, device=X.device)                     # static (N,)
        self.losses = torch.zeros(self.steps, dtype=X.dtype, device=X.device)  # static, one per step
        self.params = None                                                    # static, set by the first run
        self.graphs = {}                                                      # (first, last) -> CUDAGraph
        self.stream = None                                                    # capture stream, on self.device

    def _on_device(self):
        """The engine's GPU as the current device (capture and replay use the current device's streams)."""
        return torch.cuda.device(self.device) if self.capture else contextlib.nullcontext()

    def begin_epoch(self, perm) -> None:
        if perm is not None:                                                  # full batch: rows in order
            self.perm.copy_(torch.from_numpy(perm), non_blocking=False)       # host -> device, once per epoch

    def steps_in_place(self, first: int, last: int) -> None:
        """Steps first..last-1 on the static buffers (what a graph captures)."""
        for i in range(first, last):
            if is_full_batch(self.n, self.batch):                               # X itself
                batch = self.rows
            else:
                rows = self.perm[batch_rows(i, self.batch, self.n)]             # a view: static address
                batch = [torch.index_select(a, 0, rows) for a in self.rows]
            new, loss = self.step(self.params, *batch)
            for k, p in self.params.items():
                p.copy_(new[k])
            self.losses[i].copy_(loss)

    def run(self, params, first: int, last: int):
        with self._on_device():
            if self.params is None:
                self.params = {k: torch.empty_like(v) for k, v in params.items()}
            for k, p in self.params.items():                 # the caller's parameters into the buffers
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
        """Warm up on the capture stream, undo the warm-up, then capture steps first..last-1 on it."""
        if self.stream is None:
            self.stream = torch.cuda.Stream(self.device)
        saved = {k: p.clone() for k, p in self.params.items()}
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):             # warm-up off the default stream, as PyTorch asks
            self.steps_in_place(first, min(last, first + WARMUP_STEPS))
        current.wait_stream(self.stream)
        for k, p in self.params.items():                 # undo the warm-up's steps
            p.copy_(saved[k])
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, stream=self.stream):
            self.steps_in_place(first, last)             # recorded, not run
        return graph

    def close(self) -> None:
        """Release the graphs and their private memory pools (and the static parameter buffers);
        a later run captures afresh."""
        graphs, self.graphs, self.params = self.graphs, {}, None
        if not graphs:
            return
        with self._on_device():
            torch.cuda.synchronize(self.device)          # no replay still running
            for graph in graphs.values():
                graph.reset()
            torch.cuda.empty_cache()                     # the released pools back to the driver
