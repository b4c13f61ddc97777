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
        self.y = torch.tensor(y, dtype=dt, device=self.dev).reshape(-1, 1)
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


def torch_expert_step(w1, b1, w2, b2, X, y, lr: float):
    """One step as a PyTorch expert writes it by hand: fused bias (addmm), in-place relu_,
    aten.threshold_backward for relu's gradient, parameters updated in place (addmm_, sub_).
    Returns the loss (0-d, on the device)."""
    import torch
    import torch.nn.functional as F

    a1 = torch.addmm(b1, X, w1).relu_()                                  # z1 overwritten by a1
    z2 = torch.addmm(b2, a1, w2)
    loss = F.binary_cross_entropy_with_logits(z2, y)
    d_z2 = torch.sigmoid(z2).sub_(y).div_(X.shape[0])
    d_a1 = torch.mm(d_z2, w2.T)                                          # before w2 changes
    d_z1 = torch.ops.aten.threshold_backward(d_a1, a1, 0)               # a1 > 0 exactly where z1 > 0
    w2.addmm_(a1.T, d_z2, alpha=-lr)
    b2.sub_(d_z2.sum(0), alpha=lr)
    w1.addmm_(X.T, d_z1, alpha=-lr)
    b1.sub_(d_z1.sum(0), alpha=lr)
    return loss


class TorchExpert(_Torch):
    def epoch(self):
        p, torch = self.p, self.torch
        perm = self.permutation(self.X.shape[0])
        with torch.no_grad():
            if perm is None:
                self.loss = torch_expert_step(p["w1"], p["b1"], p["w2"], p["b2"], self.X, self.y, self.lr)
                return
            rows = torch.from_numpy(perm).to(self.dev)                   # once per epoch
            n, B = self.X.shape[0], self.batch
            for i in range(0, n, B):
                r = rows[i:i + B]
                loss = torch_expert_step(p["w1"], p["b1"], p["w2"], p["b2"], self.X.index_select(0, r),
                                         self.y.index_select(0, r), self.lr)
                if i == 0:
                    self.loss = loss
            self.final = loss

    def last_loss(self):
        return float(getattr(self, "final", self.loss))
