"""What the benchmark times: one training epoch (forward, backward, update) over N rows.

Full batch: one step on all N rows. Minibatch (B rows a step): the N rows in a permutation
drawn on the host from a seeded generator, ceil(N / B) steps, the last one on the N mod B
rows left. Every implementation does the same maths on the same rows from the same initial
parameters, so the loss of its first step must agree with ours (the report checks).

    ours            mlp.model.train_step through a backend (numpy, cupy, torch, jax) and an
                    engine of mlp.loop: eager (a step per Python call) or compiled (jax.jit of
                    lax.scan on JAX; the epoch in CUDA graphs on torch + CUDA)
    torch-manual    our formulation written in torch ops, eager (full batch)
    torch-expert    what a PyTorch expert writes: addmm for the bias, in-place relu_,
                    aten.threshold_backward, addmm_/sub_ updates in place, eager; ten classes:
                    cross-entropy by hand; momentum and Adam: torch.optim (fused)
    torch-autograd  nn.Linear + ReLU + nn.Linear, BCEWithLogitsLoss, optim.SGD, eager (full batch)
    torch-compile   torch.compile of the torch-manual step (full batch)
    jax-jit         the same step in jax.numpy, hand-written, under jax.jit (full batch)
    sklearn         MLPClassifier(solver='sgd', batch_size=N, momentum=0, alpha=0), timed
                    as fit(max_iter=k) / k, which validates its input once per k epochs (CPU,
                    full batch); in minibatch, a fresh fit of the default job, as a Python-API
                    user runs it, timed as fit / its epochs
    mlp.MLPClassifier   ours, the same way: fit(pixels, labels) of the default job / its epochs
"""

import numpy as np

from mlp.backends import resolve, threads
from mlp.batches import batching

from mlp.settings import DEFAULTS

from .base import COMPILED, ESTIMATOR, LIBRARY, MINIBATCH_PEERS, OPTIMISERS, PEERS, SKLEARN_EPOCHS_PER_FIT, Impl, \
    Unavailable, check_available, pixels

__all__ = ["COMPILED", "ESTIMATOR", "LIBRARY", "MINIBATCH_PEERS", "OPTIMISERS", "PEERS", "Impl", "Unavailable", "make"]


class Ours(Impl):
    ours = True

    def __init__(self, backend: str, engine: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend, self.engine_name = resolve(self.device, backend), engine

    def setup(self, X, y, params):
        from mlp import loop, model
        from mlp.errors import UserError

        b = self.backend
        self.n = X.shape[0]
        self.X, self.y = b.asarray(X, self.dtype), b.asarray(y, self.dtype)
        self.params = {k: b.asarray(v, self.dtype) for k, v in params.items()}
        self.params |= model.Optimiser(**self.settings).slots(self.params)      # the optimiser's state: zeros
        cfg = {"batch_size": self.batch or "full", "activation": "relu", "classes": list(range(self.classes)),
               **self.settings}
        self.steps = batching(self.n, cfg["batch_size"])[1]
        try:
            self.engine = loop.make_engine(b, self.engine_name, cfg, self.X, self.y)
        except UserError as exc:
            raise Unavailable(str(exc)) from None

    def epoch(self):
        """One epoch as mlp.loop.fit runs it: the engine's segments, the losses left on the device."""
        self.engine.begin_epoch(self.permutation(self.n))
        self.losses = []
        for first in range(0, self.steps, self.engine.segment):
            self.params, losses = self.engine.run(self.params, first, min(self.steps, first + self.engine.segment))
            self.losses.append(losses)

    def sync(self):
        self.backend.synchronize(self.params, self.losses)

    def step_losses(self):
        from mlp.loop import host_losses

        return host_losses(self.backend, self.losses)

    def close(self):
        getattr(getattr(self, "engine", None), "close", lambda: None)()   # CUDA graphs and their pools


class JaxJit(Impl):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = resolve(self.device, "jax")   # x64 on, matmuls at "highest" (no TF32)

    def setup(self, X, y, params):
        import jax
        import jax.numpy as jnp

        b = self.backend
        put = lambda a: b.asarray(a, self.dtype)  # noqa: E731
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

        self.step = jax.jit(step, donate_argnums=0, compiler_options=threads.xla_options(b.device))

    def epoch(self):
        self.p, self.loss = self.step(self.p, self.X, self.y)

    def sync(self):
        self.backend.synchronize(self.p, self.loss)


class Sklearn(Impl):
    def setup(self, X, y, params):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.metrics import log_loss
        from sklearn.neural_network import MLPClassifier

        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Got `batch_size`")   # the 2 rows that build the model
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.y = y.astype(np.int64)
        full = self.batch is None
        self.epochs_per_call = SKLEARN_EPOCHS_PER_FIT if full else DEFAULTS["epochs"]
        self.clf = MLPClassifier(hidden_layer_sizes=(params["w1"].shape[1],), solver="sgd", learning_rate_init=self.lr,
                                 batch_size=self.batch or X.shape[0], max_iter=self.epochs_per_call, momentum=0.0,
                                 alpha=0.0, random_state=0, **(dict(shuffle=False, tol=0.0, n_iter_no_change=10**9)
                                                               if full else {}))
        classes = list(range(self.classes))
        self.clf.partial_fit(self.X[:2], self.y[:2], classes=classes)  # builds the model
        for target, source in zip(self.clf.coefs_ + self.clf.intercepts_,
                                  (params["w1"], params["w2"], params["b1"], params["b2"])):
            target[...] = source  # in place: warm_start keeps these very arrays
        if full:
            self.clf.set_params(warm_start=True)                      # fit() continues from these arrays
        else:   # each fit starts afresh, as a user's; the model at our start gives the first step's loss
            perm = self.permutation(len(X))
            first = slice(None) if perm is None else perm[:self.batch]               # B >= N: full batch
            self.loss = log_loss(self.y[first], self.clf.predict_proba(self.X[first]), labels=classes)

    def epoch(self):
        self.clf.fit(self.X, self.y)                                   # epochs_per_call epochs
        self.curve = self.clf.loss_curve_[-self.epochs_per_call:]

    def step_losses(self):
        return self.curve          # full batch: a step per epoch; minibatch: each epoch's mean

    def first_loss(self):
        return float(self.curve[0] if self.batch is None else self.loss)

    def second_loss(self):
        return None


def fit_our_classifier(pixels, y, *, hidden: int, lr: float, epochs: int, batch: int, dtype: str, threads):
    """mlp.MLPClassifier(...).fit(pixels, y), as a Python-API user writes it; every step's loss."""
    from mlp import MLPClassifier

    est = MLPClassifier(hidden_layer_sizes=(hidden,), learning_rate_init=lr, max_iter=epochs, batch_size=batch,
                        dtype=dtype, threads=threads, input="pixels")
    return est.fit(pixels, y)._checkpoint.losses


class Estimator(Impl):
    """Ours through mlp.MLPClassifier on the rows' pixels (exactly: they are normalised bytes), from
    the same seeded start as the other rows: its first steps' losses are checked as theirs."""

    ours, epochs_per_call, threads = True, DEFAULTS["epochs"], "auto"

    def set_threads(self, requested, batch, d, h):
        self.threads = requested
        return super().set_threads(requested, batch, d, h)

    def setup(self, X, y, params):
        self.pixels = pixels(X)
        self.y, self.hidden = y, params["w1"].shape[1]

    def epoch(self):
        self.losses = fit_our_classifier(self.pixels, self.y, hidden=self.hidden, lr=self.lr, batch=self.batch,
                                         epochs=self.epochs_per_call, dtype=self.dtype, threads=self.threads)

    def step_losses(self):
        return self.losses


def make(impl: str, backend: str | None, device: str, dtype: str, optimiser: str = "sgd", *, engine: str = "eager",
         batch=None, seed: int = 0, classes: int = 2) -> Impl:
    check_available(impl, backend, device)
    if batch is not None and impl not in ("ours", "sklearn", ESTIMATOR, *MINIBATCH_PEERS):
        raise Unavailable(f"{impl} is timed in full batch only")
    if optimiser not in OPTIMISERS or (optimiser != "sgd" and impl not in ("ours", "torch-expert")):
        raise Unavailable(f"{impl} is timed with plain gradient descent only")
    from .torch_peers import TorchAutograd, TorchCompile, TorchExpert, TorchManual

    kwargs = {"batch": batch, "seed": seed, "classes": classes}
    if impl == "ours" and backend.partition(":")[0] == "dask":
        if batch is not None:
            raise Unavailable("ours on dask is timed in full batch only (a minibatch is at least one chunk)")
        from .dask_impl import DaskOurs

        return DaskOurs(backend, device, dtype)
    if impl == "ours":
        return Ours(backend, engine, device, dtype, optimiser, **kwargs)
    return {"torch-manual": TorchManual, "torch-expert": TorchExpert, "torch-autograd": TorchAutograd,
            "torch-compile": TorchCompile, "jax-jit": JaxJit, "sklearn": Sklearn,
            ESTIMATOR: Estimator}[impl](device, dtype, optimiser, **kwargs)
