"""Losses as Tensor functions, one per entry of the loss table (fastgrad.LOSSES).

Each loss is one graph node on the compiled loss kernels the trainer uses: the value from
``fastgrad.loss`` (functional layer, active backend), the gradient from
``fastgrad.loss_grad``, so a Tensor-built model and the trainer compute the same numbers.
The kernels take raw outputs (logits for the cross-entropies) and are stable for any
logit; the conventions (mse is HALF the mean squared error, means over all elements or
rows) are the table's: see `fastgrad.losses`.

``loss(name, pred, target)`` works for any name or alias of the table, and every entry is
also a function here by its canonical name (``mse``, ``binary_cross_entropy``,
``cross_entropy``), generated from the table: a new entry needs no new code. Targets
are constants (no gradient flows to them); cross_entropy takes one-hot rows or (N,)
integer class indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import functional
from .autograd import Tensor, _node, as_tensor
from .losses import LOSSES, LossSpec, get_loss


def loss(name: str | LossSpec, pred: Any, target: Any) -> Tensor:
    """The mean loss `name` of pred (N,) or (N, K) against target, a 0-d Tensor of pred's
    dtype. Gradient: g * fastgrad.loss_grad(name, pred, target) (the 1/N included)."""
    spec = get_loss(name)
    pred = as_tensor(pred)
    target = target.data if isinstance(target, Tensor) else np.asarray(target)
    value = np.asarray(functional.loss(spec, pred.data, target), dtype=pred.dtype)
    cache: list[np.ndarray] = []

    def dloss() -> np.ndarray:  # computed once, on the first backward or jvp
        if not cache:
            cache.append(functional.loss_grad(spec, pred.data, target))
        return cache[0]

    return _node(value, (pred,), lambda g: (g * dloss(),),
                 lambda ts: np.sum(dloss() * ts[0]), spec.name)


def _make_loss(spec: LossSpec) -> Callable[..., Tensor]:
    def op(pred: Any, target: Any) -> Tensor:
        return loss(spec, pred, target)

    op.__name__ = op.__qualname__ = spec.name
    op.__doc__ = f"{spec.name}: {spec.formula}; gradient {spec.gradient}."
    return op


LOSS_OPS: dict[str, Callable[..., Tensor]] = {
    spec.name: _make_loss(spec) for spec in LOSSES.values()}
"""Canonical loss name -> Tensor function (also a module attribute of that name)."""

globals().update({name: op for name, op in LOSS_OPS.items() if name not in globals()})
