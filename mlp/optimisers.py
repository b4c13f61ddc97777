"""The optimisers: how a step moves each parameter p (w1, b1, w2, b2) given its gradient g
(docs/training.md#optimisers). Their state, a velocity v_p per parameter or Adam's moments m_p,
v_p and step count t, rides beside the parameters in one dict: every engine carries it as it
carries them, and a checkpoint keeps it. Written once against the array API, as mlp.model."""

from dataclasses import dataclass

from array_api_compat import array_namespace

SOLVERS = ("sgd", "adam")


@dataclass(frozen=True)
class Optimiser:
    """A solver and its settings (mlp.settings has their bounds and meaning)."""

    solver: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8

    def slot_shapes(self, shapes: dict) -> dict:
        """The state's arrays (name -> shape) for parameters of these shapes: v_p for momentum;
        m_p, v_p and t (0-d) for Adam; none for plain gradient descent."""
        moments = ("m", "v") if self.solver == "adam" else ("v",) if self.momentum else ()
        return {**{f"{s}_{k}": shape for s in moments for k, shape in shapes.items()},
                **({"t": ()} if self.solver == "adam" else {})}

    def slots(self, params: dict) -> dict:
        """The state at step 0 for the parameters `params`: zeros of their dtype, on their device."""
        xp, p = array_namespace(*params.values()), next(iter(params.values()))
        return {k: xp.zeros_like(params[k[2:]] if k != "t" else p[(0,) * p.ndim])
                for k in self.slot_shapes({k: v.shape for k, v in params.items()})}

    def step(self, state: dict, grads: dict) -> dict:
        """The parameters and slots after one step on `grads`."""
        return (adam(state, grads, self) if self.solver == "adam" else momentum(state, grads, self) if self.momentum
                else update(state, grads, self.lr))


def update(params: dict, grads: dict, lr: float) -> dict:
    """Plain gradient descent: p <- p - lr g."""
    return {k: params[k] - lr * g for k, g in grads.items()}


def momentum(state: dict, grads: dict, opt: Optimiser) -> dict:
    """SGD with momentum, scikit-learn's SGDOptimizer (torch.optim.SGD's at a constant lr: its buffer is -v / lr)."""
    new = {}
    for k, g in grads.items():
        lr_g = opt.lr * g
        v = opt.momentum * state[f"v_{k}"] - lr_g                              # v <- mu v - lr g     (p's shape)
        new[k] = state[k] + (opt.momentum * v - lr_g if opt.nesterov else v)   # p <- p + v  (Nesterov: + mu v - lr g)
        new[f"v_{k}"] = v
    return new


def adam(state: dict, grads: dict, opt: Optimiser) -> dict:
    """Adam (Kingma & Ba, Algorithm 1) in torch.optim.Adam's order: m^ = m / (1 - b1^t) and v^ = v / (1 - b2^t)
    enter as the 0-d factors `step` and `root`, no array. t counts in p's dtype (float32: exact to 2^24 steps)."""
    xp = array_namespace(state["t"])
    t = state["t"] + 1.0                                                    # ()  t <- t + 1
    step = opt.lr / (1.0 - opt.beta1 ** t)                                  # ()  lr m^ = step m
    root = xp.sqrt(1.0 - opt.beta2 ** t)                                    # ()  sqrt(v^) = sqrt(v) / root
    new = {"t": t}
    for k, g in grads.items():
        m = opt.beta1 * state[f"m_{k}"] + (1.0 - opt.beta1) * g             # m <- b1 m + (1 - b1) g     (p's shape)
        v = opt.beta2 * state[f"v_{k}"] + (1.0 - opt.beta2) * (g * g)       # v <- b2 v + (1 - b2) g^2   (p's shape)
        new[k] = state[k] - step * m / (xp.sqrt(v) / root + opt.epsilon)   # p <- p - lr m^ / (sqrt(v^) + eps)
        new[f"m_{k}"], new[f"v_{k}"] = m, v
    return new
