"""The CUDA-graph engine's capture logic on the CPU, with a stand-in for `torch.cuda`; and, on
every engine, parameters handed out are never buffers the engine writes to later.

The stand-in behaves as CUDA does where it matters here. A capture records the ops that run
on the capturing stream, and that stream is the current stream of the device whose tensors
the ops touch only when it was made on that device: otherwise the ops run at once and the
graph stays empty (what `torch.cuda.graph` without `stream=` does on cuda:N, N != 0, when
device 0 is current). Recorded ops are not run: whatever they write is put back when the
capture ends. A replay runs the recorded ops again on the same tensors (the same addresses).
The tensors themselves live on the CPU; the stand-in is told which GPU they stand for."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from mlp import backends, model
from mlp.loop import EagerEngine, TrainState, fit, make_engine

from .conftest import synthetic

torch = pytest.importorskip("torch")
torch_graph = pytest.importorskip("mlp.backends.torch_graph")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

N, D, H, B, LR = 300, 20, 8, 64, 0.05      # 5 steps an epoch: 4 full ones and 44 rows left


class Recorder(TorchDispatchMode):
    """Each op runs (later ops need its output) and is recorded; what it writes in place is
    saved first and put back by restore(): a capture runs nothing. An op that changes only a
    tensor's shape in place (squeeze_) is not replayed: the tensor keeps the shape it gave it."""

    def __init__(self):
        super().__init__()
        self.ops, self.saved = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.Tag.inplace_view in func.tags:
            return func(*args, **kwargs)
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                target = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(target, torch.Tensor):
                    self.saved.append((target, target.clone()))
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out

    def restore(self):
        for target, value in reversed(self.saved):
            target.copy_(value)


class FakeStream:
    def __init__(self, cuda, device: int, default: bool = False):
        self.cuda, self.device, self.default = cuda, device, default

    def wait_stream(self, other):
        self.cuda.log("wait_stream", waiter=self, other=other)


class FakeGraph:
    def __init__(self, cuda):
        self.cuda, self.ops, self.replays, self.was_reset = cuda, None, 0, False

    def replay(self):
        self.cuda.log("replay", graph=self)
        self.replays += 1
        for func, args, kwargs, out in self.ops:
            result = func(*args, **kwargs)
            for o, r in zip(tree_flatten(out)[0], tree_flatten(result)[0]):
                if isinstance(o, torch.Tensor) and o is not r:      # the recorded output's address
                    o.copy_(r if o.shape == r.shape else r.reshape(o.shape))   # holds the new value

    def reset(self):
        self.cuda.log("reset", graph=self)
        self.ops, self.was_reset = None, True


class FakeCuda:
    """The parts of `torch.cuda` the engine uses; `calls` records each with the device current then."""

    def __init__(self, tensor_device: int):
        self.tensor_device, self.current_device = tensor_device, 0
        self.streams, self.calls, self.graphs = {}, [], []
        self.default_capture_stream = None
        self.capturing = False

    def _index(self, device) -> int:
        if device is None:
            return self.current_device
        if isinstance(device, int):
            return device
        device = torch.device(device)
        assert device.type == "cuda", device
        return self.current_device if device.index is None else device.index

    def log(self, name, **details):
        self.calls.append({"call": name, "current_device": self.current_device, **details})

    def current_stream(self, device=None):
        index = self._index(device)
        self.log("current_stream", device=index)
        return self.streams.setdefault(index, FakeStream(self, index, default=True))

    def Stream(self, device=None):
        stream = FakeStream(self, self._index(device))
        self.log("Stream", device=stream.device)
        return stream

    @contextlib.contextmanager
    def device(self, device):
        previous, self.current_device = self.current_device, self._index(device)
        try:
            yield
        finally:
            self.current_device = previous

    @contextlib.contextmanager
    def stream(self, stream):
        """As torch.cuda.stream: the stream's device becomes current, the stream that device's current stream."""
        previous = (self.current_device, self.streams.get(stream.device))
        self.current_device, self.streams[stream.device] = stream.device, stream
        try:
            yield
        finally:
            self.current_device, self.streams[stream.device] = previous

    def synchronize(self, device=None):
        self.log("synchronize", device=self._index(device))

    def empty_cache(self):
        self.log("empty_cache")

    def CUDAGraph(self):
        self.graphs.append(FakeGraph(self))
        return self.graphs[-1]

    @contextlib.contextmanager
    def graph(self, cuda_graph, pool=None, stream=None, **kwargs):
        if stream is None:         # as torch.cuda.graph: one side stream per process, on the device current then
            if self.default_capture_stream is None:
                self.default_capture_stream = FakeStream(self, self.current_device)
            stream = self.default_capture_stream
        self.synchronize()
        with self.stream(stream):
            self.log("capture", graph=cuda_graph, stream=stream)
            # the ops on the tensors' device go to that device's current stream: captured only if it is this one
            recorder = Recorder() if self.streams.get(self.tensor_device) is stream else None
            self.capturing = recorder is not None
            try:
                with recorder or contextlib.nullcontext():
                    yield
            finally:
                self.capturing = False
            if recorder is not None:
                recorder.restore()
            cuda_graph.ops = recorder.ops if recorder is not None else []


class TorchWithFakeCuda:
    """`torch` as the engine module sees it: the real library, with the stand-in as `torch.cuda`
    and the tensors it makes on the CPU."""

    def __init__(self, cuda):
        self.cuda = cuda

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def arange(*args, device=None, **kwargs):
        return torch.arange(*args, **kwargs)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, **kwargs)


def problem(backend, dtype="float64"):
    X, y = synthetic(N, D, seed=1)
    cfg = {"seed": 3, "hidden": H, "init": "he", "activation": "relu", "dtype": dtype}
    return backend.asarray(X, dtype), backend.asarray(y, dtype), TrainState.fresh(backend, cfg, D)


def step(params, X, y):
    return model.train_step(params, X, y, opt=model.Optimiser(lr=LR), activation="relu")


def host(backend, params):
    return {k: backend.to_host(v) for k, v in params.items()}


@pytest.mark.parametrize("index", [1, 0])
def test_capture_and_replay_on_the_engines_device(monkeypatch, index):
    """cuda:1 is the case that failed: at 90209a8 (no device guard, no stream=) the capture stream
    was made on device 0, nothing was captured, and from the second epoch on the parameters froze."""
    cpu = backends.resolve("cpu", "torch")
    cuda = FakeCuda(tensor_device=index)
    monkeypatch.setattr(torch_graph, "torch", TorchWithFakeCuda(cuda))
    X, y, state = problem(cpu)
    calls = {"captured": 0, "eager": 0}

    def counted(params, X, y):
        calls["captured" if cuda.capturing else "eager"] += 1
        return step(params, X, y)

    engine = torch_graph.TorchGraphEngine(f"cuda:{index}", counted, X, y, B, segment=3)
    fit(cpu, engine, state, 3)
    _, _, eager = problem(cpu)
    fit(cpu, EagerEngine(cpu, step, X, y, B), eager, 3)

    # what a user sees: the same run as the eager loop, every epoch (the warm-up undone)
    np.testing.assert_allclose(state.losses, eager.losses, rtol=1e-12, atol=0)
    for k, v in host(cpu, state.params).items():
        np.testing.assert_allclose(v, host(cpu, eager.params)[k], rtol=1e-12, atol=0)
    # one graph per range, captured once (3 + 2 steps, each after a warm-up of 2), replayed every epoch
    assert sorted(engine.graphs) == [(0, 3), (3, 5)] and len(cuda.graphs) == 2
    assert [g.replays for g in cuda.graphs] == [3, 3]
    assert calls == {"captured": 5, "eager": 4}
    # on the engine's device, on a capture stream made there (not its default stream)
    captures = [c for c in cuda.calls if c["call"] == "capture"]
    assert len(captures) == 2 and all(c["current_device"] == index for c in captures)
    assert all(c["stream"].device == index and not c["stream"].default for c in captures)
    assert all(c["current_device"] == index for c in cuda.calls if c["call"] in ("replay", "Stream"))
    assert {c["device"] for c in cuda.calls if "device" in c} == {index}

    engine.close()
    assert all(g.was_reset for g in cuda.graphs) and engine.graphs == {}
    assert [c["current_device"] for c in cuda.calls if c["call"] == "empty_cache"][-1] == index


def test_segments_are_capped_in_steps_as_well_as_rows():
    X, y = torch.zeros((1000, 3)), torch.zeros(1000)
    sizes = {batch: torch_graph.TorchGraphEngine("cpu", step, X, y, batch, capture=False).segment
             for batch in (1, 64, 512, 1000)}
    assert sizes == {1: torch_graph.STEPS_PER_SEGMENT, 64: 1024, 512: 128, 1000: 65}


def engines(monkeypatch, name, backend, X, y):
    """(name, engine) for each way of running steps that this machine can run."""
    cfg = {"batch_size": B, "lr": LR, "activation": "relu"}
    if name == "torch-graph-without-capture":
        return torch_graph.TorchGraphEngine("cpu", step, X, y, B, segment=3, capture=False)
    if name == "torch-graph-fake-capture":
        monkeypatch.setattr(torch_graph, "torch", TorchWithFakeCuda(FakeCuda(tensor_device=1)))
        return torch_graph.TorchGraphEngine("cuda:1", step, X, y, B, segment=3)
    return make_engine(backend, name.split("-")[1], cfg, X, y)


@pytest.mark.parametrize("backend_name, engine_name", [
    ("numpy", "numpy-eager"), ("torch", "torch-eager"), ("jax", "jax-compiled"),
    ("torch", "torch-graph-without-capture"), ("torch", "torch-graph-fake-capture")])
def test_parameters_kept_from_one_epoch_do_not_change_in_the_next(monkeypatch, backend_name, engine_name):
    """`state.params` is never a buffer the engine writes to again: a reference kept at the end of
    epoch 1 (by a callback, a checkpoint writer, a caller) still holds epoch 1's values after epoch 3."""
    pytest.importorskip(backend_name)
    backend = backends.resolve("cpu", backend_name)
    X, y, state = problem(backend)
    engine = engines(monkeypatch, engine_name, backend, X, y)
    kept = []
    fit(backend, engine, state, 3, on_epoch_end=lambda s: kept.append((s.params, host(backend, s.params))))
    assert len(kept) == 3
    assert not np.array_equal(kept[0][1]["w1"], kept[2][1]["w1"]), "the run must move the parameters"
    for params, values in kept:
        for k, v in host(backend, params).items():
            np.testing.assert_array_equal(v, values[k])
    getattr(engine, "close", lambda: None)()
