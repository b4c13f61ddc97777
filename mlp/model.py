"""A two-layer MLP for binary classification, forward and backward written by hand.

    z1   = X @ w1 + b1          X (B, D)   w1 (D, H)   b1 (H,)    z1 (B, H)
    a1   = relu(z1) | tanh(z1)                                    a1 (B, H)
    z2   = a1 @ w2 + b2                    w2 (H, 1)   b2 (1,)    z2 (B, 1)
    pred = sigmoid(z2)                                            pred (B, 1)
    loss = mean(-y log(pred) - (1 - y) log(1 - pred))             y (B, 1) in {0, 1}

Everything is written once against the array-API namespace `xp` of the inputs, so the
same lines run on NumPy, CuPy, PyTorch, JAX or array_api_strict arrays. Nothing here
knows which library or device it runs on; that lives in `backends/`.
"""

import math

from array_api_compat import array_namespace

PARAM_NAMES = ("w1", "b1", "w2", "b2")
ACTIVATIONS = ("relu", "tanh")
INITS = ("classic", "normal", "he", "xavier")
DTYPES = ("float32", "float64")


def param_shapes(D: int, H: int) -> dict:
    """The shape of each parameter for D input features and H hidden units."""
    return {"w1": (D, H), "b1": (H,), "w2": (H, 1), "b2": (1,)}


# ----------------------------------------------------------------------------- init


def default_init(activation: str) -> str:
    """The init that suits the activation: he for relu, xavier for tanh."""
    return "he" if activation == "relu" else "xavier"


def init_params(n_in: int, hidden: int, rng, *, init: str | None = None, activation: str = "relu") -> dict:
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
    w2 = weight(hidden, 1)                                      # (H, 1)
    host = array_namespace(w1)
    b1 = host.zeros((hidden,), dtype=host.float64)              # (H,)
    b2 = host.zeros((1,), dtype=host.float64)                   # (1,)
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


def tanh(z):
    xp = array_namespace(z)
    return xp.tanh(z)


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
    """mean(-y log(sigmoid(z)) - (1 - y) log(1 - sigmoid(z))), computed from the logits z.

    The textbook form equals log(1 + exp(z)) - y z = max(z, 0) - y z + log(1 + exp(-|z|)),
    which never takes log(0) and never overflows, for any finite z. max(z, 0) is relu(z).
    e: exp_neg_abs(z) if already computed."""
    xp = array_namespace(z, y)
    e = exp_neg_abs(z) if e is None else e
    return xp.mean(relu(z) - y * z + xp.log1p(e))


# ----------------------------------------------------------------------------- the model


def forward(params: dict, X, activation: str = "relu"):
    """z1, a1, z2: the forward values the backward pass needs."""
    w1, b1, w2, b2 = (params[k] for k in PARAM_NAMES)
    z1 = X @ w1 + b1                                            # (B, H)
    a1 = relu(z1) if activation == "relu" else tanh(z1)         # (B, H)
    z2 = a1 @ w2 + b2                                           # (B, 1)
    return z1, a1, z2


def loss_and_grads(params: dict, X, y, activation: str = "relu", *, check_labels: bool = True):
    """The mean binary cross-entropy and its gradient with respect to w1, b1, w2, b2.

    params: {'w1': (D, H), 'b1': (H,), 'w2': (H, 1), 'b2': (1,)}, one float dtype
    X: (B, D) of that dtype;  y: (B,) or (B, 1), values in {0, 1} (any dtype)
    Returns (loss, grads): loss a 0-d array on X's device (no host sync), grads a dict
    with the same keys and shapes as params.

    Shapes and dtypes are always checked (that reads no values). The values of y are checked
    too unless `check_labels` is False: that reads y back to the host, so the training steps
    (`train_step`) skip it and the entry points check their labels once instead
    (`mlp.loop.make_engine`, the data loader, `MLPClassifier.fit`)."""
    xp = _check_inputs(params, X, y, activation)
    if check_labels:
        check_binary(y)
    y = xp.reshape(xp.astype(y, X.dtype, copy=False), (-1, 1))  # (B, 1)
    B = X.shape[0]
    w2 = params["w2"]

    # forward
    z1, a1, z2 = forward(params, X, activation)                # (B, H) (B, H) (B, 1)
    e = exp_neg_abs(z2)                                         # (B, 1)  exp(-|z2|), once
    pred = sigmoid(z2, e)                                       # (B, 1)
    loss = bce_with_logits(z2, y, e)                            # ()

    # backward: d_x is d loss / d x; the gradient with respect to X is never formed.
    # A bias's gradient is a column sum, written as a product with a row of ones: one GEMV,
    # where CuPy's sum over axis 0 of a tall array is far slower.
    ones = xp.ones_like(X[:, 0])                                # (B,)
    d_z2 = (pred - y) / B                                       # (B, 1)  sigmoid + BCE together
    d_w2 = a1.T @ d_z2                                          # (H, 1)
    d_b2 = ones @ d_z2                                          # (1,)    sum over the batch
    d_a1 = d_z2 * w2.T                                          # (B, H)  outer product d_z2 @ w2.T
    if activation == "relu":
        d_z1 = relu_backward(d_a1, z1)                          # (B, H)
    else:
        d_z1 = tanh_backward(d_a1, a1)                          # (B, H)
    d_w1 = X.T @ d_z1                                           # (D, H)
    d_b1 = ones @ d_z1                                          # (H,)    sum over the batch

    return loss, {"w1": d_w1, "b1": d_b1, "w2": d_w2, "b2": d_b2}


def update(params: dict, grads: dict, lr: float) -> dict:
    """Plain gradient descent: p <- p - lr * dp, for w1, b1, w2, b2."""
    return {k: params[k] - lr * grads[k] for k in PARAM_NAMES}


def train_step(params: dict, X, y, lr: float, activation: str = "relu"):
    """One step of gradient descent on the batch (X, y). Returns (new params, loss).
    The values of y are not checked here (see loss_and_grads): no host sync in a step."""
    loss, grads = loss_and_grads(params, X, y, activation, check_labels=False)
    return update(params, grads, lr), loss


def predict_proba(params: dict, X, activation: str = "relu"):
    """P(label 1 | X), shape (B,); X and params are checked as loss_and_grads checks them."""
    xp = _check_inputs(params, X, None, activation)
    _, _, z2 = forward(params, X, activation)
    return xp.reshape(sigmoid(z2), (-1,))


# ----------------------------------------------------------------------------- checks


def check_binary(y) -> None:
    """ValueError unless every label is 0 or 1 (one reduction, read back to the host)."""
    xp = array_namespace(y)
    if not bool(xp.all((y == 0) | (y == 1))):
        raise ValueError("y must hold only the labels 0 and 1 (1 = the second class); map your two classes "
                         "to 0 and 1 first")


def _check_inputs(params, X, y, activation):
    """Shape and dtype checks (no values are read, so nothing waits on the device); y None: X alone."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: use one of {', '.join(ACTIVATIONS)}")
    if not isinstance(params, dict) or set(params) != set(PARAM_NAMES):
        raise ValueError(f"params must be a dict with exactly the keys {', '.join(PARAM_NAMES)}")
    try:
        xp = array_namespace(X, *([] if y is None else [y]), *(params[k] for k in PARAM_NAMES))
    except TypeError as exc:
        raise ValueError(f"X, y and the parameters must be arrays of one array library: {exc}") from None
    w1 = params["w1"]
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (batch, features), got shape {tuple(X.shape)}; flatten and normalise "
                         "images first (mlp.data.normalise), or use mlp.MLPClassifier, which takes them raw")
    B, D = X.shape
    if B < 1:
        raise ValueError("X must hold at least one row")
    if w1.ndim != 2 or w1.shape[0] != D:
        raise ValueError(f"w1 must have shape ({D}, H) for X of shape {tuple(X.shape)}, got {tuple(w1.shape)}")
    H = w1.shape[1]
    for name, shape in param_shapes(D, H).items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for w1 of shape {tuple(w1.shape)}, "
                             f"got {tuple(params[name].shape)}")
    if y is not None and tuple(y.shape) not in ((B,), (B, 1)):
        raise ValueError(f"y must have shape ({B},) or ({B}, 1) for X of shape {tuple(X.shape)}, "
                         f"got {tuple(y.shape)}")
    if X.dtype not in (xp.float32, xp.float64):
        raise ValueError(f"X must be float32 or float64, got {X.dtype}")
    for name in PARAM_NAMES:
        if params[name].dtype != X.dtype:
            raise ValueError(f"{name} is {params[name].dtype} but X is {X.dtype}: use one dtype for all")
    return xp
