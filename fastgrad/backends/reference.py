"""The `numpy` backend: the reference every other backend is tested against.

Written for clarity and float64 faithfulness rather than speed: inputs are promoted to
float64, the formula is applied with NumPy, and the result is rounded once into `out`.
Overflow and invalid-value warnings from intermediate values are silenced where the
formula handles them (the stable forms from DESIGN.md section 4).

The backend interface (same names in every backend module) is documented in
`fastgrad.backends`; arrays arrive validated, C-contiguous and of one float dtype.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ..activations import ActivationSpec
from ..scalar_math import (
    GELU_ROOT_HI,
    GELU_ROOT_LO,
    GELU_SLOPE_W,
    GELU_TANH_C,
    SELU_ALPHA,
    SELU_SCALE,
    SQRT_2_OVER_PI,
    slope_near_root,
)

NAME = "numpy"


def _sigmoid(x):
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def _softmax_rows(x):
    m = np.max(x, axis=-1, keepdims=True) if x.shape[-1] else x[..., :0]
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def _log_softmax_rows(x):
    # log sum exp(x - m) = log1p(the sum of the terms other than the first maximal one's):
    # that term's exp(0) = 1 would round away the digits of a small rest, which is all of
    # the log-sum-exp when the max dominates the row (log(1 + 4e-11) keeps 5 digits). The
    # term itself joins as exp(x - m) - 1: 0, or NaN when m is infinite (inf - inf).
    if not x.shape[-1]:
        return x.copy()
    m = np.max(x, axis=-1, keepdims=True)
    shifted = x - m
    terms = np.exp(shifted)
    first = np.argmax(x, axis=-1)[..., None]  # the first NaN, if any: the row is NaN
    own = np.take_along_axis(terms, first, axis=-1)
    np.put_along_axis(terms, first, 0.0, axis=-1)
    rest = np.sum(terms, axis=-1, keepdims=True) + (own - 1.0)
    return shifted - np.log1p(rest)


def _gelu_phi(x, approximate):
    if approximate == 0.0:
        return 0.5 * special.erfc(-x / np.sqrt(2.0))
    return _sigmoid(2.0 * SQRT_2_OVER_PI * (x + GELU_TANH_C * x**3))


def _where_nan(x, values):
    """`values`, with NaN where x is NaN (NaN in gives NaN out)."""
    return np.where(np.isnan(x), np.nan, values)


def _swish_forward(x, beta, _):
    s = _sigmoid(beta * x)
    return np.where(s == 0.0, 0.0, x * s)


def _swish_backward(x, g, beta, _):
    s = _sigmoid(beta * x)
    inner = np.where(s == 1.0, 1.0, s + beta * x * s * (1.0 - s))
    return np.where(s == 0.0, 0.0 * g, g * inner)


def _gelu_forward(x, approximate, _):
    phi = _gelu_phi(x, approximate)
    return np.where(phi == 0.0, 0.0, x * phi)


def _gelu_backward(x, g, approximate, _):
    phi = _gelu_phi(x, approximate)
    if approximate == 0.0:
        pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
        d = phi + np.where(pdf == 0.0, 0.0, x * pdf)
        # near the root, where the terms cancel: scalar_math's Taylor polynomial, on those
        # elements only (its 15 passes over every element would double this function's
        # time; at inf or 1e300 they would overflow, under the errstate that hides it)
        t = (x - GELU_ROOT_HI) - GELU_ROOT_LO
        near = np.abs(t) < GELU_SLOPE_W
        if near.any():
            d = np.array(d, dtype=np.float64, copy=True)
            d[near] = slope_near_root(t[near])
    else:
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
        d = np.where(phi == 1.0, 1.0, phi + 2.0 * x * phi * (1.0 - phi) * du)
    return np.where(phi == 0.0, 0.0 * g, g * d)


_FORWARD = {
    "identity": lambda x, a, b: x,
    "binary_step": lambda x, t, _: _where_nan(x, (x >= t).astype(np.float64)),
    "sigmoid": lambda x, a, b: _sigmoid(x),
    "tanh": lambda x, a, b: np.tanh(x),
    "relu": lambda x, a, b: np.where(x < 0, 0.0, x),
    "leaky_relu": lambda x, alpha, _: np.where(x < 0, alpha * x, x),
    "elu": lambda x, alpha, _: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
    "swish": _swish_forward,
    "gelu": _gelu_forward,
    "softplus": lambda x, a, b: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0),
    "selu": lambda x, a, b: SELU_SCALE
    * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "softmax": lambda x, a, b: _softmax_rows(x),
    "log_softmax": lambda x, a, b: _log_softmax_rows(x),
}

# Backward: (saved, g, a, b) -> grad_x, saved being x or y as the table says.
_BACKWARD = {
    "identity": lambda s, g, a, b: g,
    "binary_step": lambda s, g, a, straight: g if straight else np.zeros_like(g),
    "sigmoid": lambda y, g, a, b: g * y * (1.0 - y),
    "tanh": lambda y, g, a, b: g * (1.0 - y * y),
    "relu": lambda x, g, a, b: _where_nan(x, np.where(x > 0, g, 0.0)),
    "leaky_relu": lambda x, g, alpha, _: _where_nan(x, np.where(x >= 0, g, alpha * g)),
    "elu": lambda x, g, alpha, _: np.where(x >= 0, g, g * alpha * np.exp(np.minimum(x, 0.0))),
    "swish": _swish_backward,
    "gelu": _gelu_backward,
    "softplus": lambda x, g, a, b: g * _sigmoid(x),
    "selu": lambda x, g, a, b: np.where(
        x >= 0, SELU_SCALE * g, g * SELU_SCALE * SELU_ALPHA * np.exp(np.minimum(x, 0.0))
    ),
    "softmax": lambda y, g, a, b: y * (g - np.sum(g * y, axis=-1, keepdims=True)),
    "log_softmax": lambda y, g, a, b: g - np.exp(y) * np.sum(g, axis=-1, keepdims=True),
}


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def activation_forward(spec: ActivationSpec, x, out, a: float, b: float) -> None:
    with np.errstate(all="ignore"):
        out[...] = _FORWARD[spec.name](_f64(x), a, b)


def activation_backward(spec: ActivationSpec, grad, saved, out, a: float, b: float) -> None:
    with np.errstate(all="ignore"):
        out[...] = _BACKWARD[spec.name](_f64(saved), _f64(grad), a, b)


def linear_forward(x, W, bias, out, pre, spec: ActivationSpec, a: float, b: float) -> None:
    z = _f64(x) @ _f64(W)
    if bias is not None:
        z += _f64(bias)
    if pre is not None:
        pre[...] = z
    with np.errstate(all="ignore"):
        out[...] = _FORWARD[spec.name](z, a, b)


def linear_backward(grad_y, x, W, saved, spec: ActivationSpec, a: float, b: float,
                    need_grad_x: bool):
    with np.errstate(all="ignore"):
        g = _BACKWARD[spec.name](_f64(saved), _f64(grad_y), a, b)
    dtype = grad_y.dtype
    grad_W = (_f64(x).T @ g).astype(dtype)
    grad_b = g.sum(axis=0).astype(dtype)
    grad_x = (g @ _f64(W).T).astype(dtype) if need_grad_x else None
    return grad_x, grad_W, grad_b


# --- losses (fastgrad.losses): pred and target (N, K), the mean over the batch ---------

def _ce_terms(z, t):
    m = np.max(z, axis=1, keepdims=True)
    lse = m + np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    # Only the classes a row's target puts weight on: t = 0 never meets lse - z = inf.
    return np.where(t != 0, t * (lse - z), 0.0).sum(axis=1)


_LOSS_VALUE = {
    "mse": lambda p, t: 0.5 * (p - t) ** 2,
    "binary_cross_entropy": lambda z, t: np.maximum(z, 0.0) - z * t
    + np.log1p(np.exp(-np.abs(z))),
    "cross_entropy": _ce_terms,
}

# d(sum of terms)/dpred; the kernel divides by the count the mean was taken over.
_LOSS_GRAD = {
    "mse": lambda p, t: p - t,
    "binary_cross_entropy": lambda z, t: _sigmoid(z) - t,
    "cross_entropy": lambda z, t: _softmax_rows(z) - t,
}


def loss_forward(spec, pred, target) -> float:
    with np.errstate(all="ignore"):
        return float(np.mean(_LOSS_VALUE[spec.name](_f64(pred), _f64(target))))


def loss_backward(spec, pred, target, out) -> None:
    count = pred.shape[0] if spec.rowwise else pred.size
    with np.errstate(all="ignore"):
        out[...] = _LOSS_GRAD[spec.name](_f64(pred), _f64(target)) / count


# --- optimizer updates (fastgrad.optim): in place, 1-D arrays of one dtype -------------
# PyTorch's formulas (torch.optim.SGD / Adam / AdamW / RMSprop, dampening 0, centered
# False, amsgrad False), computed in float64 and rounded once into the state arrays.

def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    p = _f64(param)
    g = _f64(grad) + weight_decay * p
    if momentum != 0.0:
        v = momentum * _f64(velocity) + g
        velocity[...] = v
        g = g + momentum * v if nesterov else v
    param[...] = p - lr * g


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                step) -> None:
    p, g = _f64(param), _f64(grad)
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m_new = beta1 * _f64(m) + (1.0 - beta1) * g
    v_new = beta2 * _f64(v) + (1.0 - beta2) * g * g
    m[...] = m_new
    v[...] = v_new
    m_hat = m_new / (1.0 - beta1**step)
    v_hat = v_new / (1.0 - beta2**step)
    param[...] = p - lr * m_hat / (np.sqrt(v_hat) + eps)


def rmsprop_update(param, grad, square_avg, momentum_buf, lr, alpha, eps, weight_decay,
                   momentum) -> None:
    p = _f64(param)
    g = _f64(grad) + weight_decay * p
    sq = alpha * _f64(square_avg) + (1.0 - alpha) * g * g
    square_avg[...] = sq
    step = g / (np.sqrt(sq) + eps)
    if momentum != 0.0:
        step = momentum * _f64(momentum_buf) + step
        momentum_buf[...] = step
    param[...] = p - lr * step
