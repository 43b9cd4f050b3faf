"""Derivatives of Tensor functions: grad, vjp, jvp and full Jacobians.

f takes Tensors and returns a Tensor (any composition of fastgrad.autograd operations).
Each function traces f once (one forward pass, recording the graph), then sweeps it:

- reverse mode (`vjp`, `grad`, `jacobian(mode="rev")`): one backward sweep per cotangent,
  so a full Jacobian costs one sweep per OUTPUT element.
- forward mode (`jvp`, `jacobian(mode="fwd")`): one forward sweep per tangent over the
  recorded graph, each node applying its Jacobian-vector product rule (elementwise
  activations reuse their backward kernel, J being diagonal), so a full Jacobian costs one
  sweep per INPUT element. This is genuine forward-mode propagation of tangents (no
  reverse passes, no double-vjp trick); each sweep costs about one forward pass.

Jacobian layout: ``J.shape == y.shape + x.shape`` with ``J[i..., j...] = dy[i...]/dx[j...]``;
a scalar (0-d) output gives the gradient, of x's shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ._validation import as_float_array
from .autograd import Tensor, _backprop, _forward_tangents, _seed_grad

logger = logging.getLogger("fastgrad")

TensorFunction = Callable[..., Tensor]


def _trace(f: TensorFunction, xs: list[np.ndarray]) -> tuple[list[Tensor], Tensor]:
    """Leaves requiring grad around each input, and f's output (a Tensor)."""
    leaves = [Tensor(x, requires_grad=True) for x in xs]
    y = f(*leaves)
    if not isinstance(y, Tensor):
        raise TypeError(f"f must return a fastgrad.Tensor, got {type(y).__name__} "
                        "(build it from Tensor operations)")
    return leaves, y


def _input(x: Any, name: str = "x") -> np.ndarray:
    return as_float_array(x.data if isinstance(x, Tensor) else x, name)


def _pull(leaves: list[Tensor], y: Tensor, v: np.ndarray) -> list[np.ndarray]:
    """One reverse sweep: v^T dy/dx_k for every leaf (zeros where y does not depend on it)."""
    if not y.requires_grad:
        return [np.zeros(x.shape, x.dtype) for x in leaves]
    got = _backprop(y, v)
    return [got.get(x, np.zeros(x.shape, x.dtype)) for x in leaves]


def _push(leaves: list[Tensor], y: Tensor, ts: list[np.ndarray]) -> np.ndarray:
    """One forward sweep: dy/dx . t, summed over the leaves."""
    if not y.requires_grad:
        return np.zeros(y.shape, y.dtype)
    return _forward_tangents(y, {id(x): t for x, t in zip(leaves, ts)})


def vjp_multi(f: TensorFunction, xs: list[Any], v: Any) -> list[np.ndarray]:
    """v^T df/dx_k for each positional input x_k (reverse mode, one backward sweep)."""
    leaves, y = _trace(f, [_input(x, f"inputs[{k}]") for k, x in enumerate(xs)])
    return _pull(leaves, y, _seed_grad(y, v))


def jvp_multi(f: TensorFunction, xs: list[Any], ts: list[Any]) -> np.ndarray:
    """sum_k df/dx_k t_k (forward mode, one tangent sweep)."""
    leaves, y = _trace(f, [_input(x, f"inputs[{k}]") for k, x in enumerate(xs)])
    tangents = []
    for k, (x, t) in enumerate(zip(leaves, ts)):
        t = as_float_array(t, f"tangents[{k}]").astype(x.dtype, copy=False)
        if t.shape != x.shape:
            raise ValueError(f"tangent {k} has shape {t.shape}, expected {x.shape} "
                             "(the input's)")
        tangents.append(t)
    return _push(leaves, y, tangents)


def vjp(f: TensorFunction, x: Any, v: Any) -> np.ndarray:
    """v^T J: the vector-Jacobian product of f at x (reverse mode: one forward, one backward
    pass). v has f(x)'s shape; the result has x's shape."""
    return vjp_multi(f, [x], v)[0]


def jvp(f: TensorFunction, x: Any, t: Any) -> np.ndarray:
    """J t: the Jacobian-vector product of f at x in forward mode (one forward pass to
    record, one tangent pass). t has x's shape; the result has f(x)'s shape."""
    return jvp_multi(f, [x], [t])


def grad(f: TensorFunction, argnum: int = 0) -> Callable[..., np.ndarray]:
    """The function x -> df/dx for a scalar-valued f (one-element output).

    ``grad(f)(*args)`` differentiates with respect to ``args[argnum]``; the other arguments
    are passed through as constants. The gradient has the input's shape and dtype.
    """
    def df(*args: Any) -> np.ndarray:
        if not -len(args) <= argnum < len(args):
            raise IndexError(f"argnum {argnum} out of range for {len(args)} argument(s)")
        leaf = Tensor(_input(args[argnum], f"args[{argnum}]"), requires_grad=True)
        call = list(args)
        call[argnum] = leaf
        y = f(*call)
        if not isinstance(y, Tensor) or y.size != 1:
            what = f"shape {y.shape}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"grad(f) needs f to return a one-element Tensor, got {what}; "
                             "use jacobian() or vjp() for other outputs")
        return _pull([leaf], y, _seed_grad(y, None))[0]

    df.__name__ = f"grad_{getattr(f, '__name__', 'f')}"
    df.__doc__ = f"Gradient of {getattr(f, '__name__', 'f')} with respect to argument {argnum}."
    return df


def jacobian(f: TensorFunction, x: Any, mode: str = "auto", *, return_mode: bool = False):
    """The full Jacobian of f at x, of shape ``f(x).shape + x.shape``.

    mode: "rev" (one backward sweep per output element), "fwd" (one forward tangent sweep
    per input element) or "auto": "rev" when f(x) has no more elements than x, else
    "fwd" - the fewer sweeps. The choice is logged (logger "fastgrad", INFO) and returned
    as ``(J, mode)`` with ``return_mode=True``.
    """
    if mode not in ("auto", "rev", "fwd"):
        raise ValueError(f"mode must be 'auto', 'rev' or 'fwd', got {mode!r}")
    leaves, y = _trace(f, [_input(x)])
    (leaf,) = leaves
    m, n = y.size, leaf.size
    chosen = mode if mode != "auto" else ("rev" if m <= n else "fwd")
    if mode == "auto":
        logger.info("jacobian: %d outputs, %d inputs -> %s mode (%d sweeps)",
                    m, n, chosen, min(m, n))
    dtype = np.result_type(y.dtype, leaf.dtype)
    J = np.zeros((m, n), dtype)
    if chosen == "rev":
        for i in range(m):
            seed = np.zeros(m, y.dtype)
            seed[i] = 1
            J[i] = _pull(leaves, y, seed.reshape(y.shape))[0].reshape(-1)
    else:
        for j in range(n):
            t = np.zeros(n, leaf.dtype)
            t[j] = 1
            J[:, j] = _push(leaves, y, [t.reshape(leaf.shape)]).reshape(-1)
    J = J.reshape(y.shape + leaf.shape)
    return (J, chosen) if return_mode else J
