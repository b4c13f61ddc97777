"""A two-layer MLP, forward and backward written by hand; mlp.optimisers moves its parameters.

    z1   = X @ w1 + b1          X (B, D)   w1 (D, H)   b1 (H,)    z1 (B, H)
    a1   = relu(z1) | tanh(z1)                                    a1 (B, H)
    z2   = a1 @ w2 + b2                    w2 (H, K)   b2 (K,)    z2 (B, K)
    two classes (K = 1 output, the exercise's):
      pred = sigmoid(z2);  loss = mean(-y log(pred) - (1 - y) log(1 - pred))     y (B,) in {0, 1}
    K > 2 classes (K outputs):
      pred = softmax(z2);  loss = mean(-log pred[y])                             y (B,) in {0..K-1}

Everything is written once against the array-API namespace `xp` of the inputs, so the
same lines run on NumPy, CuPy, PyTorch, JAX or array_api_strict arrays. Nothing here
knows which library or device it runs on; that lives in `backends/`.
"""

import math

from array_api_compat import array_namespace, device

from .optimisers import Optimiser, update  # noqa: F401  (model.update: the exercise's step, p <- p - lr g)

PARAM_NAMES = ("w1", "b1", "w2", "b2")
WEIGHTS = ("w1", "w2")                  # what L2 decays (biases are not decayed)
ACTIVATIONS = ("relu", "tanh")
INITS = ("classic", "normal", "he", "xavier")
DTYPES = ("float32", "float64")


def outputs(n_classes: int) -> int:
    """Output units: 1 (a sigmoid) for two classes, K (a softmax) for K > 2."""
    return 1 if n_classes == 2 else n_classes


def param_shapes(D: int, H: int, K: int = 1) -> dict:
    """The shape of each parameter for D input features, H hidden units and K output units."""
    return {"w1": (D, H), "b1": (H,), "w2": (H, K), "b2": (K,)}


# ----------------------------------------------------------------------------- init


def default_init(activation: str) -> str:
    """The init that suits the activation: he for relu, xavier for tanh."""
    return "he" if activation == "relu" else "xavier"


def init_params(n_in: int, hidden: int, rng, *, init: str | None = None, activation: str = "relu",
                n_out: int = 1) -> dict:
    """Initial parameters as float64 host arrays, drawn from the NumPy Generator `rng`.

    classic: w = 0.01 * uniform[0, 1)                 b = 0   (the exercise's)
    normal:  w = 0.01 * standard normal               b = 0
    he:      w = N(0, 2 / fan_in)                     b = 0   (suits relu)
    xavier:  w = N(0, 2 / (fan_in + fan_out))         b = 0   (suits tanh)
    None:    default_init(activation)

    Drawing on the host and moving the result to the device afterwards gives every backend
    identical starting parameters for the same seed."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    init = default_init(activation) if init is None else init
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}: use one of {', '.join(INITS)}")

    def weight(fan_in, fan_out):
        if init == "classic":
            return 0.01 * rng.uniform(0.0, 1.0, size=(fan_in, fan_out))
        if init == "normal":
            return 0.01 * rng.standard_normal(size=(fan_in, fan_out))
        variance = 2.0 / fan_in if init == "he" else 2.0 / (fan_in + fan_out)
        return math.sqrt(variance) * rng.standard_normal(size=(fan_in, fan_out))

    w1 = weight(n_in, hidden)                                   # (D, H)
    w2 = weight(hidden, n_out)                                  # (H, K)
    host = array_namespace(w1)
    b1 = host.zeros((hidden,), dtype=host.float64)              # (H,)
    b2 = host.zeros((n_out,), dtype=host.float64)               # (K,)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


# ----------------------------------------------------------------------------- pieces
# Each helper is plain elementwise maths on one namespace. The backward helpers take the
# forward values they need, exactly as the chain rule asks for them.


# No Python float is passed to a library function here (operators take them fine): array-api-
# compat turns `maximum(z, 0.0)`'s float into a host tensor that PyTorch copies to the GPU in
# every step, which stalls the host and breaks CUDA-graph capture. The zero is made on z's
# device instead. (`where(z > 0, z, 0.0)` would do too, but NumPy's where is much slower.)


def relu(z):
    """max(z, 0), elementwise, for a 2-D z."""
    xp = array_namespace(z)
    zero = xp.zeros_like(z[:1, :1])                             # (1, 1), on z's device
    return xp.maximum(z, zero)


def relu_backward(d_a, z):
    """d loss / d z, given d loss / d a and a = relu(z): the gradient flows where z > 0."""
    xp = array_namespace(d_a, z)
    return d_a * xp.astype(z > 0, d_a.dtype)


def tanh_backward(d_a, a):
    """d loss / d z, given d loss / d a and a = tanh(z): tanh'(z) = 1 - tanh(z)^2."""
    return d_a * (1.0 - a * a)


def exp_neg_abs(z):
    """exp(-|z|), in (0, 1]: the one exponential that the sigmoid and the loss both need."""
    xp = array_namespace(z)
    return xp.exp(-xp.abs(z))


def sigmoid(z, e=None):
    """1 / (1 + exp(-z)) without overflow: exp is only ever taken of -|z| <= 0.
    e: exp_neg_abs(z) if already computed."""
    xp = array_namespace(z)
    e = exp_neg_abs(z) if e is None else e                      # in (0, 1]
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_with_logits(z, y, e=None):
    """-y log(sigmoid(z)) - (1 - y) log(1 - sigmoid(z)) per row, computed from the logits z.

    The textbook form equals log(1 + exp(z)) - y z = max(z, 0) - y z + log(1 + exp(-|z|)),
    which never takes log(0) and never overflows, for any finite z. max(z, 0) is relu(z).
    e: exp_neg_abs(z) if already computed."""
    xp = array_namespace(z, y)
    e = exp_neg_abs(z) if e is None else e
    return relu(z) - y * z + xp.log1p(e)


def log_softmax(z):
    """z - log(sum(exp(z))) per row, through the row's max: exp is only taken of values <= 0."""
    xp = array_namespace(z)
    shifted = z - xp.max(z, axis=1, keepdims=True)              # (B, K), each row's max is 0
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def one_hot(y, K: int, dtype):
    """(B, K): row i is 1 in column y[i], 0 elsewhere."""
    xp = array_namespace(y)
    return xp.astype(xp.reshape(y, (-1, 1)) == xp.arange(K, dtype=y.dtype, device=device(y)), dtype)


def head(z2, y):
    """(each row's loss (B, 1), its gradient with respect to z2 (B, K)) from the logits z2:
    a sigmoid and binary cross-entropy for K = 1, a softmax and cross-entropy for K > 2. For
    both, d loss / d z2 = pred - target. y: (B, 1) in z2's dtype (0/1, or the class index)."""
    xp = array_namespace(z2, y)
    K = z2.shape[1]
    if K == 1:
        e = exp_neg_abs(z2)                                     # (B, 1)  exp(-|z2|), once
        return bce_with_logits(z2, y, e), sigmoid(z2, e) - y    # (B, 1) (B, 1)
    logp = log_softmax(z2)                                      # (B, K)  log pred
    target = one_hot(y, K, z2.dtype)                            # (B, K)
    return -xp.sum(target * logp, axis=1, keepdims=True), xp.exp(logp) - target   # (B, 1) (B, K)


def mean_loss(z2, y):
    """The mean cross-entropy of the logits z2 (B, K) for the labels y (B,) or (B, 1)."""
    xp = array_namespace(z2, y)
    return xp.mean(head(z2, xp.reshape(xp.astype(y, z2.dtype, copy=False), (-1, 1)))[0])


def predicted(z2):
    """The predicted label of each row (B,): z2 >= 0 for the sigmoid head, argmax for the softmax."""
    xp = array_namespace(z2)
    return xp.astype(z2[:, 0] >= 0, xp.int64) if z2.shape[1] == 1 else xp.argmax(z2, axis=1)


# ----------------------------------------------------------------------------- the model


def forward(params: dict, X, activation: str = "relu"):
    """z1, a1, z2: the forward values the backward pass needs."""
    w1, b1, w2, b2 = (params[k] for k in PARAM_NAMES)
    xp = array_namespace(X)
    z1 = X @ w1 + b1                                            # (B, H)
    a1 = relu(z1) if activation == "relu" else xp.tanh(z1)      # (B, H)
    z2 = a1 @ w2 + b2                                           # (B, K)
    return z1, a1, z2


def loss_and_grads(params: dict, X, y, activation: str = "relu", *, alpha: float = 0.0, sample_weight=None,
                   check_labels: bool = True):
    """The mean cross-entropy (plus L2) and its gradient with respect to w1, b1, w2, b2.

    params: {'w1': (D, H), 'b1': (H,), 'w2': (H, K), 'b2': (K,)}, one float dtype; K = 1 is the
    sigmoid head (y in {0, 1}), K > 2 the softmax head (y in {0..K-1}, any dtype)
    X: (B, D) of that dtype;  y: (B,) or (B, 1);  sample_weight: None or (B,) weights >= 0, the
    loss then being their weighted mean, sum(w l) / sum(w), as scikit-learn's
    alpha: L2 as scikit-learn's, 0.5 alpha sum(W^2) / B added to the loss, biases not decayed
    Returns (loss, grads): loss a 0-d array on X's device (no host sync), grads a dict
    with the same keys and shapes as params.

    Shapes and dtypes are always checked (that reads no values). The values of y are checked
    too unless `check_labels` is False: that reads y back to the host, so the training steps
    (`train_step`) skip it and the entry points check their labels once instead."""
    xp = _check_inputs(params, X, y, activation)
    if check_labels:
        check_labels_fit(y, params["w2"].shape[1])
    y = xp.reshape(xp.astype(y, X.dtype, copy=False), (-1, 1))  # (B, 1)
    B = X.shape[0]
    w2 = params["w2"]

    # forward
    z1, a1, z2 = forward(params, X, activation)                 # (B, H) (B, H) (B, K)
    row_loss, d_row = head(z2, y)                               # (B, 1) (B, K)
    ones = xp.ones_like(X[:, 0])                                # (B,)
    if sample_weight is None:
        loss = xp.mean(row_loss)                                # ()
        d_z2 = d_row / B                                        # (B, K)  the mean over the batch
    else:
        w = xp.reshape(xp.astype(sample_weight, X.dtype, copy=False), (-1, 1))   # (B, 1)
        B = xp.sum(w)                                           # ()      the weights' sum stands for B
        loss = xp.sum(w * row_loss) / B                         # ()      the weighted mean
        d_z2 = d_row * w / B                                    # (B, K)
    if alpha:
        loss = loss + l2_loss(params, alpha, B)

    # backward: d_x is d loss / d x; the gradient with respect to X is never formed.
    # A bias's gradient is a column sum, written as a product with a row of ones: one GEMV,
    # where CuPy's sum over axis 0 of a tall array is far slower.
    d_w2 = a1.T @ d_z2                                          # (H, K)
    d_b2 = ones @ d_z2                                          # (K,)    sum over the batch
    d_a1 = d_z2 @ w2.T                                          # (B, H)
    if activation == "relu":
        d_z1 = relu_backward(d_a1, z1)                          # (B, H)
    else:
        d_z1 = tanh_backward(d_a1, a1)                          # (B, H)
    d_w1 = X.T @ d_z1                                           # (D, H)
    d_b1 = ones @ d_z1                                          # (H,)    sum over the batch
    grads = {"w1": d_w1, "b1": d_b1, "w2": d_w2, "b2": d_b2}
    return loss, l2_grads(params, grads, alpha, B) if alpha else grads


def l2_loss(params: dict, alpha: float, B):
    """scikit-learn's L2 penalty: 0.5 alpha (sum(w1^2) + sum(w2^2)) / B; biases are not decayed."""
    xp = array_namespace(params["w1"])
    return 0.5 * alpha * sum(xp.sum(params[k] * params[k]) for k in WEIGHTS) / B


def l2_grads(params: dict, grads: dict, alpha: float, B) -> dict:
    """The gradients with L2's added: d_w += alpha w / B for w1 and w2 (alpha / B: one 0-d factor)."""
    return {k: grads[k] + (alpha / B) * params[k] if k in WEIGHTS else grads[k] for k in PARAM_NAMES}


def train_step(state: dict, X, y, w=None, *, opt: Optimiser, activation: str = "relu", alpha: float = 0.0):
    """One step of `opt` on the batch (X, y) (row weights w, or None). `state`: the parameters
    and the optimiser's slots (opt.slots). Returns (the new state, the loss). The values of y
    are not checked here (see loss_and_grads): no host sync in a step."""
    params = {k: state[k] for k in PARAM_NAMES}
    loss, grads = loss_and_grads(params, X, y, activation, alpha=alpha, sample_weight=w, check_labels=False)
    return opt.step(state, grads), loss


def probabilities(z2):
    """(B, C) probabilities of the C classes from the logits z2 (B, K): the softmax for K > 2, and
    (1 - p, p), p = sigmoid(z2), for the sigmoid head (C = 2)."""
    xp = array_namespace(z2)
    if z2.shape[1] > 1:
        return xp.exp(log_softmax(z2))
    p = sigmoid(z2)
    return xp.concat([1.0 - p, p], axis=1)


def predict_proba(params: dict, X, activation: str = "relu"):
    """(B, C) probabilities of the classes (see `probabilities`), X and params checked as
    loss_and_grads checks them."""
    _check_inputs(params, X, None, activation)
    return probabilities(forward(params, X, activation)[2])


# ----------------------------------------------------------------------------- checks


def check_labels_fit(y, K: int) -> None:
    """ValueError unless every label is a class of the head (0/1 for K = 1, 0..K-1 for K > 2);
    one reduction, read back to the host."""
    xp = array_namespace(y)
    top = 1 if K == 1 else K - 1
    ok = (y >= 0) & (y <= top)
    if xp.isdtype(y.dtype, "real floating"):
        ok = ok & (y == xp.round(y))
    if not bool(xp.all(ok)):
        raise ValueError(f"y must hold only the labels 0 to {top} (the position of each row's class in the "
                         "list of classes); map your classes to them first")


def _check_inputs(params, X, y, activation):
    """Shape and dtype checks (no values are read, so nothing waits on the device); y None: X alone."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    if not isinstance(params, dict) or not set(PARAM_NAMES) <= set(params):
        raise ValueError(f"params must be a dict with the keys {', '.join(PARAM_NAMES)}")
    try:
        xp = array_namespace(X, *([] if y is None else [y]), *(params[k] for k in PARAM_NAMES))
    except TypeError as exc:
        raise ValueError(f"X, y and the parameters must be arrays of one array library: {exc}") from None
    w1, w2 = params["w1"], params["w2"]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (batch, features), got shape {tuple(X.shape)}; flatten images first")
    B, D = X.shape
    if B < 1:
        raise ValueError("X must hold at least one row")
    if w1.ndim != 2 or w1.shape[0] != D or w2.ndim != 2 or w2.shape[1] == 2:
        raise ValueError(f"w1 must have shape ({D}, H) for X of shape {tuple(X.shape)} and w2 (H, K), K = 1 "
                         f"or K > 2; got {tuple(w1.shape)} and {tuple(w2.shape)}")
    for name, shape in param_shapes(D, w1.shape[1], w2.shape[1]).items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for w1 of shape {tuple(w1.shape)} and w2 of "
                             f"shape {tuple(w2.shape)}, got {tuple(params[name].shape)}")
    if y is not None and tuple(y.shape) not in ((B,), (B, 1)):
        raise ValueError(f"y must have shape ({B},) or ({B}, 1) for X of shape {tuple(X.shape)}, "
                         f"got {tuple(y.shape)}")
    if X.dtype not in (xp.float32, xp.float64):
        raise ValueError(f"X must be float32 or float64, got {X.dtype}")
    for name in PARAM_NAMES:
        if params[name].dtype != X.dtype:
            raise ValueError(f"{name} is {params[name].dtype} but X is {X.dtype}: use one dtype for all")
    return xp
