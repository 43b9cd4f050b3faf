"""Losses as Tensor functions, composed from autograd primitives and table activations.

Each is numerically stable because its pieces are: binary cross-entropy from logits is
softplus(z) - z t (softplus via log1p(exp(-|z|)) + max(z, 0); its gradient sigmoid(z) - t
comes from the softplus kernel's backward), and softmax cross-entropy picks the targets'
entries of log_softmax (row max subtracted; backward g - softmax * sum(g)). No exp of a
large logit is ever formed.

reduction: "mean" (default), "sum" or "none" (the per-element / per-sample losses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .autograd import Tensor, activation, as_tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")


def _same_shape(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"target has shape {target.shape}, expected {pred.shape} "
                         f"(the shape of {what})")


def mse_loss(pred: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error: mean((pred - target)^2); gradient 2 (pred - target) / N."""
    pred, target = as_tensor(pred), as_tensor(target)
    _same_shape(pred, target, "pred")
    diff = pred - target
    return _reduce(diff * diff, reduction)


def binary_cross_entropy_with_logits(logits: Any, target: Any,
                                     reduction: str = "mean") -> Tensor:
    """-(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))) = softplus(z) - z t, for logits z
    and targets t in [0, 1] of the same shape. Gradient: (sigmoid(z) - t) / N."""
    logits, target = as_tensor(logits), as_tensor(target)
    _same_shape(logits, target, "logits")
    return _reduce(activation("softplus", logits) - logits * target, reduction)


def softmax_cross_entropy(logits: Any, target: Any, reduction: str = "mean") -> Tensor:
    """-log softmax(z)[target] per sample, for logits (..., C) and integer class indices
    target (...) in [0, C). Gradient: (softmax(z) - onehot(target)) / N."""
    logits = as_tensor(logits)
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and t.size and np.all(t == np.round(t)):
            t = t.astype(np.intp)  # integral floats (e.g. labels stored as float) accepted
        elif t.size:
            raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        else:
            t = t.astype(np.intp)
    if logits.ndim == 0 or t.shape != logits.shape[:-1]:
        raise ValueError(f"target has shape {t.shape}, expected {logits.shape[:-1]} "
                         f"(logits' shape {logits.shape} without the class axis)")
    n_classes = logits.shape[-1]
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"target holds class indices in [{t.min()}, {t.max()}], expected "
                         f"[0, {n_classes}) ({n_classes} classes in logits)")
    logp = activation("log_softmax", logits).reshape(-1, n_classes)
    flat = t.reshape(-1)
    picked = -logp[np.arange(flat.size), flat]
    return _reduce(picked.reshape(t.shape), reduction)
