"""What the benchmark times: one full-batch training epoch (forward, backward, update).

Every implementation does the same maths on the same data from the same initial
parameters, so the loss of its first epoch must agree with ours (the report checks).

    ours            mlp.model.train_step, through a backend (numpy, cupy, torch, jax)
    torch-manual    the same forward/backward written in torch ops, eager, in-place update
    torch-autograd  nn.Linear + ReLU + nn.Linear, BCEWithLogitsLoss, optim.SGD, eager
    torch-compile   torch.compile of the torch-manual step
    jax-jit         the same step in jax.numpy, hand-written, under jax.jit
    sklearn         MLPClassifier(solver='sgd', batch_size=N, momentum=0, alpha=0), one
                    partial_fit per epoch (CPU only)
"""

from __future__ import annotations

import importlib.util

import numpy as np

PEERS = ("torch-manual", "torch-autograd", "torch-compile", "jax-jit", "sklearn")
LIBRARY = {"torch-manual": "torch", "torch-autograd": "torch", "torch-compile": "torch", "jax-jit": "jax",
           "sklearn": "sklearn"}


class Unavailable(Exception):
    """This implementation cannot run here (library missing, no GPU); the reason is reported."""


def check_available(impl: str, backend: str | None, device: str) -> None:
    library = backend.partition(":")[0] if impl == "ours" else LIBRARY[impl]  # dask:W -> dask
    module = {"sklearn": "sklearn"}.get(library, library)
    if importlib.util.find_spec(module) is None:
        raise Unavailable(f"{module} is not installed")
    if impl == "sklearn" and device != "cpu":
        raise Unavailable("scikit-learn runs on the CPU only")


class Impl:
    """setup() once; epoch() runs one full-batch step; sync() waits for the device;
    last_loss() returns the loss of the latest step as a float (forces a sync)."""

    compiles = False

    def __init__(self, device: str, dtype: str, lr: float):
        self.device, self.dtype, self.lr = device, dtype, lr

    def setup(self, X: np.ndarray, y: np.ndarray, params: dict) -> None:
        raise NotImplementedError

    def epoch(self) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def last_loss(self) -> float:
        raise NotImplementedError

    def device_name(self) -> str:
        from mlp import backends

        return backends.cpu_name()


class Ours(Impl):
    def __init__(self, backend: str, device: str, dtype: str, lr: float):
        super().__init__(device, dtype, lr)
        from mlp import backends

        self.backend = backends.resolve(device, backend)

    def setup(self, X, y, params):
        b = self.backend
        self.X, self.y = b.asarray(X, self.dtype), b.asarray(y, self.dtype)
        self.params = {k: b.asarray(v, self.dtype) for k, v in params.items()}

    def epoch(self):
        from mlp import model

        self.params, self.loss = model.train_step(self.params, self.X, self.y, self.lr, "relu")

    def sync(self):
        self.backend.synchronize()

    def last_loss(self):
        return float(self.backend.to_host(self.loss))

    def device_name(self):
        return self.backend.device_name


class _Torch(Impl):
    def __init__(self, device, dtype, lr):
        super().__init__(device, dtype, lr)
        import torch

        if device != "cpu" and not torch.cuda.is_available():
            raise Unavailable("this PyTorch sees no CUDA GPU")
        self.torch = torch
        self.dev = torch.device(device)

    def setup(self, X, y, params):
        torch = self.torch
        dt = getattr(torch, self.dtype)
        self.X = torch.tensor(X, dtype=dt, device=self.dev)
        self.y = torch.tensor(y, dtype=dt, device=self.dev).reshape(-1, 1)
        self.p = {k: torch.tensor(v, dtype=dt, device=self.dev) for k, v in params.items()}

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize(self.dev)

    def last_loss(self):
        return float(self.loss)

    def device_name(self):
        if self.dev.type == "cuda":
            return self.torch.cuda.get_device_name(self.dev)
        return super().device_name()


def torch_manual_step(w1, b1, w2, b2, X, y, lr: float):
    """The exercise in torch ops, by hand (the same formulation as mlp.model)."""
    import torch
    import torch.nn.functional as F

    z1 = X @ w1 + b1
    a1 = torch.relu(z1)
    z2 = a1 @ w2 + b2
    loss = F.binary_cross_entropy_with_logits(z2, y)
    d_z2 = (torch.sigmoid(z2) - y) / X.shape[0]
    d_w2 = a1.T @ d_z2
    d_b2 = d_z2.sum(0)
    d_a1 = d_z2 * w2.T
    d_z1 = d_a1 * (z1 > 0)
    d_w1 = X.T @ d_z1
    d_b1 = d_z1.sum(0)
    return w1 - lr * d_w1, b1 - lr * d_b1, w2 - lr * d_w2, b2 - lr * d_b2, loss


class TorchManual(_Torch):
    def epoch(self):
        with self.torch.no_grad():
            p = self.p
            *new, self.loss = torch_manual_step(p["w1"], p["b1"], p["w2"], p["b2"], self.X, self.y, self.lr)
            self.p = dict(zip(("w1", "b1", "w2", "b2"), new))


class TorchCompile(_Torch):
    compiles = True

    def setup(self, X, y, params):
        super().setup(X, y, params)
        self.step = self.torch.compile(torch_manual_step)

    def epoch(self):
        with self.torch.no_grad():
            p = self.p
            *new, self.loss = self.step(p["w1"], p["b1"], p["w2"], p["b2"], self.X, self.y, self.lr)
            self.p = dict(zip(("w1", "b1", "w2", "b2"), new))


class TorchAutograd(_Torch):
    def setup(self, X, y, params):
        super().setup(X, y, params)
        torch = self.torch
        H = params["w1"].shape[1]
        dt = getattr(torch, self.dtype)
        self.net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], H), torch.nn.ReLU(), torch.nn.Linear(H, 1))
        self.net.to(device=self.dev, dtype=dt)
        with torch.no_grad():  # nn.Linear keeps weights as (out, in)
            self.net[0].weight.copy_(self.p["w1"].T)
            self.net[0].bias.copy_(self.p["b1"])
            self.net[2].weight.copy_(self.p["w2"].T)
            self.net[2].bias.copy_(self.p["b2"])
        self.criterion = torch.nn.BCEWithLogitsLoss()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=self.lr)

    def epoch(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.criterion(self.net(self.X), self.y)
        loss.backward()
        self.opt.step()
        self.loss = loss.detach()


class JaxJit(Impl):
    compiles = True

    def setup(self, X, y, params):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        if self.device == "cpu":
            dev = jax.devices("cpu")[0]
        else:
            try:
                dev = jax.devices("gpu")[0]
            except RuntimeError:
                raise Unavailable("JAX sees no GPU") from None
        self.jax, self.dev = jax, dev
        dt = getattr(jnp, self.dtype)
        put = lambda a: jax.device_put(jnp.asarray(a, dtype=dt), dev)  # noqa: E731
        self.X, self.y = put(X), put(y.reshape(-1, 1))
        self.p = tuple(put(params[k]) for k in ("w1", "b1", "w2", "b2"))
        lr = self.lr

        def step(p, X, y):
            w1, b1, w2, b2 = p
            z1 = X @ w1 + b1
            a1 = jnp.maximum(z1, 0)
            z2 = a1 @ w2 + b2
            loss = jnp.mean(jnp.maximum(z2, 0) - y * z2 + jnp.log1p(jnp.exp(-jnp.abs(z2))))
            d_z2 = (jax.nn.sigmoid(z2) - y) / X.shape[0]
            d_w2 = a1.T @ d_z2
            d_b2 = d_z2.sum(0)
            d_a1 = d_z2 * w2.T
            d_z1 = jnp.where(z1 > 0, d_a1, 0)
            d_w1 = X.T @ d_z1
            d_b1 = d_z1.sum(0)
            return (w1 - lr * d_w1, b1 - lr * d_b1, w2 - lr * d_w2, b2 - lr * d_b2), loss

        self.step = jax.jit(step, donate_argnums=0)

    def epoch(self):
        self.p, self.loss = self.step(self.p, self.X, self.y)

    def sync(self):
        self.jax.block_until_ready((self.p, self.loss))

    def last_loss(self):
        return float(self.loss)

    def device_name(self):
        return self.dev.device_kind if self.device != "cpu" else super().device_name()


class Sklearn(Impl):
    def setup(self, X, y, params):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.y = y.astype(np.int64)
        self.clf = MLPClassifier(hidden_layer_sizes=(params["w1"].shape[1],), activation="relu", solver="sgd",
                                 batch_size=X.shape[0], learning_rate="constant", learning_rate_init=self.lr,
                                 momentum=0.0, nesterovs_momentum=False, alpha=0.0, shuffle=False, max_iter=1,
                                 random_state=0)
        self.clf.partial_fit(self.X[:2], self.y[:2], classes=[0, 1])  # builds the model and its optimiser
        for target, source in zip(self.clf.coefs_ + self.clf.intercepts_,
                                  (params["w1"], params["w2"], params["b1"], params["b2"])):
            target[...] = source  # in place: the optimiser holds these very arrays

    def epoch(self):
        self.clf.partial_fit(self.X, self.y)

    def last_loss(self):
        return float(self.clf.loss_)


def make(impl: str, backend: str | None, device: str, dtype: str, lr: float) -> Impl:
    check_available(impl, backend, device)
    if impl == "ours" and backend.partition(":")[0] == "dask":
        from .dask_impl import DaskOurs

        return DaskOurs(backend, device, dtype, lr)
    if impl == "ours":
        return Ours(backend, device, dtype, lr)
    return {"torch-manual": TorchManual, "torch-autograd": TorchAutograd, "torch-compile": TorchCompile,
            "jax-jit": JaxJit, "sklearn": Sklearn}[impl](device, dtype, lr)
