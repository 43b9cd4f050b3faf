"""One element of each optimizer update, written once for the numba CPU and the CUDA
kernels (PyTorch's formulas, as fastgrad.optim documents them). Each takes the parameter
in float64 and the stored values as they are (arithmetic promotes them to float64) and
returns the new values; the kernels loop and store, in the arrays' dtype.

The kernels write a momentum buffer only when momentum != 0 (it may be an empty array
otherwise): these functions return its unchanged value then.
"""

from __future__ import annotations

import math


def sgd_step(p, g, vel, lr, momentum, wd, nesterov):
    """(p, velocity): g += wd p; v = momentum v + g; p -= lr (g + momentum v if nesterov
    else v); momentum 0: p -= lr g."""
    gi = g + wd * p
    v = vel
    if momentum != 0.0:
        v = momentum * vel + gi
        gi = gi + momentum * v if nesterov else v
    return p - lr * gi, v


def adam_step(p, g, m, v, beta1, beta2, eps, shrink, l2, step_size, inv_sqrt_bc2):
    """(p, m, v). shrink = 1 - lr wd (AdamW) or 1; l2 = wd (Adam) or 0: no branch. The
    bias corrections hoisted: lr (m / bc1) / (sqrt(v / bc2) + eps) with step_size = lr /
    bc1 and inv_sqrt_bc2 = 1 / sqrt(bc2): one sqrt, one division."""
    pi = p * shrink
    gi = g + l2 * pi
    mi = beta1 * m + (1.0 - beta1) * gi
    vi = beta2 * v + (1.0 - beta2) * gi * gi
    return pi - step_size * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps), mi, vi


def rmsprop_step(p, g, sq, buf, lr, alpha, eps, wd, momentum):
    """(p, square_avg, momentum buffer), PyTorch's RMSprop (not centered)."""
    gi = g + wd * p
    s = alpha * sq + (1.0 - alpha) * gi * gi
    step = gi / (math.sqrt(s) + eps)
    b = buf
    if momentum != 0.0:
        step = momentum * buf + step
        b = step
    return p - lr * step, s, b
