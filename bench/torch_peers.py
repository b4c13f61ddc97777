"""The PyTorch peers of the benchmark (see bench/impls.py for what each one is)."""

from mlp.backends import resolve

from .base import Impl


class _Torch(Impl):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import torch

        self.backend = resolve(self.device, "torch")
        self.torch, self.dev = torch, torch.device(self.backend.device)

    def setup(self, X, y, params):
        torch = self.torch
        dt = getattr(torch, self.dtype)
        self.X = torch.tensor(X, dtype=dt, device=self.dev)
        self.y = torch.tensor(y, dtype=dt if self.classes == 2 else torch.int64, device=self.dev).reshape(-1, 1)
        self.p = {k: torch.tensor(v, dtype=dt, device=self.dev) for k, v in params.items()}

    def sync(self):
        self.backend.synchronize()


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
    step = staticmethod(torch_manual_step)

    def epoch(self):
        with self.torch.no_grad():
            p = self.p
            *new, self.loss = self.step(p["w1"], p["b1"], p["w2"], p["b2"], self.X, self.y, self.lr)
            self.p = dict(zip(("w1", "b1", "w2", "b2"), new))


class TorchCompile(TorchManual):
    def setup(self, X, y, params):
        super().setup(X, y, params)
        self.step = self.torch.compile(torch_manual_step)


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


def torch_expert_backward(w1, b1, w2, b2, X, y):
    """The forward and hand-written backward as a PyTorch expert writes them: fused bias (addmm),
    in-place relu_, the head's gradient in place, aten.threshold_backward for relu's. y: (B, 1),
    0/1 in X's dtype for the sigmoid head (w2 (H, 1)), class indices (int64) for the softmax.
    Returns (the loss, 0-d on the device; a1; d_z2; d_z1): d_w2 = a1.T d_z2, d_w1 = X.T d_z1."""
    import torch
    import torch.nn.functional as F

    a1 = torch.addmm(b1, X, w1).relu_()                                  # z1 overwritten by a1
    z2 = torch.addmm(b2, a1, w2)
    if z2.shape[1] == 1:
        loss = F.binary_cross_entropy_with_logits(z2, y)
        d_z2 = torch.sigmoid(z2).sub_(y)
    else:                                                                # cross-entropy by hand
        logp = z2.sub_(z2.logsumexp(1, keepdim=True))                    # log softmax, in place
        loss = logp.gather(1, y).mean().neg_()
        d_z2 = logp.exp_().scatter_add_(1, y, torch.full(y.shape, -1.0, dtype=z2.dtype, device=z2.device))
    d_z2.div_(X.shape[0])                                                # pred - target, over the batch
    d_z1 = torch.ops.aten.threshold_backward(torch.mm(d_z2, w2.T), a1, 0)  # a1 > 0 exactly where z1 > 0
    return loss, a1, d_z2, d_z1


def torch_expert_step(w1, b1, w2, b2, X, y, lr: float):
    """One step of plain gradient descent, the parameters updated in place (addmm_, sub_)."""
    loss, a1, d_z2, d_z1 = torch_expert_backward(w1, b1, w2, b2, X, y)
    w2.addmm_(a1.T, d_z2, alpha=-lr)
    b2.sub_(d_z2.sum(0), alpha=lr)
    w1.addmm_(X.T, d_z1, alpha=-lr)
    b1.sub_(d_z1.sum(0), alpha=lr)
    return loss


class TorchExpert(_Torch):
    """Plain gradient descent updated in place; momentum and Adam through torch.optim (fused where
    the device has the kernel, else foreach), the gradients by hand into .grad (faster than
    autograd at B = 64 on our CPU, and the same maths)."""

    def setup(self, X, y, params):
        super().setup(X, y, params)
        self.opt = None
        if self.optimiser != "sgd":
            torch, s = self.torch, self.settings
            make = (torch.optim.Adam if s.get("solver") == "adam" else
                    lambda p, **kw: torch.optim.SGD(p, momentum=s["momentum"], nesterov=False, **kw))
            try:
                self.opt = make(list(self.p.values()), lr=self.lr, fused=True)
            except RuntimeError:                                         # no fused kernel here
                self.opt = make(list(self.p.values()), lr=self.lr, foreach=True)

    def step(self, X, y):
        p = self.p
        if self.opt is None:
            return torch_expert_step(p["w1"], p["b1"], p["w2"], p["b2"], X, y, self.lr)
        self.opt.zero_grad(set_to_none=True)
        loss, a1, d_z2, d_z1 = torch_expert_backward(p["w1"], p["b1"], p["w2"], p["b2"], X, y)
        for k, g in zip(("w1", "b1", "w2", "b2"), (X.T @ d_z1, d_z1.sum(0), a1.T @ d_z2, d_z2.sum(0))):
            p[k].grad = g
        self.opt.step()
        return loss

    def epoch(self):
        perm = self.permutation(self.X.shape[0])
        with self.torch.no_grad():
            if perm is None:
                self.losses = [self.step(self.X, self.y)]
                return
            rows = self.torch.from_numpy(perm).to(self.dev)              # once per epoch
            n, B = self.X.shape[0], self.batch
            self.losses = [self.step(self.X.index_select(0, r), self.y.index_select(0, r))
                           for r in (rows[i:i + B] for i in range(0, n, B))]

    def step_losses(self):
        return self.losses
