"""Matrix chains: the cheapest parenthesization by dynamic programming.

Multiplying A (m x n) by B (n x p) costs m n p multiply-adds, so the order matters: for
A m x n, B n x p, C p x q, (A B) C costs m n p + m p q and A (B C) costs n p q + m n q.
`chain_order` finds the cheapest order of any chain in O(k^3) for k matrices (the classic
DP over sub-chains: cost[i][j] = min over split s of cost[i][s] + cost[s+1][j] +
rows_i cols_s cols_j); `multi_dot` multiplies in that order. Backprop through a chain
of linear maps is the same problem with the cotangent vector at the front: `chain_vjp`
plans [v, M_1, ..., M_k], and the planner picks vector-first, sum m_(i-1) m_i, instead
of forming the product matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

Plan = Any  # an int (one matrix) or a pair (left plan, right plan)


def _names(k: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(k)] if k <= 26 else [f"M{i}" for i in range(k)]


def _text(plan: Plan, names: Sequence[str]) -> str:
    if isinstance(plan, int):
        return names[plan]
    return f"({_text(plan[0], names)} {_text(plan[1], names)})"


class ChainPlan(NamedTuple):
    """plan: nested pairs of matrix indices, e.g. ((0, 1), 2) for (A B) C;
    cost: multiply-adds of that order. ``str(p)`` / ``p.text`` gives "((A B) C)"."""

    plan: Plan
    cost: int

    @property
    def text(self) -> str:
        return _text(self.plan, _names(_count(self.plan)))

    def __str__(self) -> str:
        return self.text


def _count(plan: Plan) -> int:
    return 1 if isinstance(plan, int) else _count(plan[0]) + _count(plan[1])


def _check_shapes(shapes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    dims = []
    for i, s in enumerate(shapes):
        s = tuple(int(d) for d in s)
        if len(s) != 2 or min(s) < 0:
            raise ValueError(f"shapes[{i}] must be (rows, cols) of non-negative ints, got {s}")
        if dims and dims[-1][1] != s[0]:
            raise ValueError(f"shapes[{i - 1}] = {dims[-1]} and shapes[{i}] = {s} do not "
                             f"chain: {dims[-1][1]} columns against {s[0]} rows")
        dims.append(s)
    if not dims:
        raise ValueError("chain_order needs at least one shape, got none")
    return dims


def chain_order(shapes: Sequence[Sequence[int]]) -> ChainPlan:
    """The cheapest parenthesization of a chain of 2-D matrices of these shapes, and its
    cost in multiply-adds (an exact Python int). Ties go to the leftmost split."""
    dims = _check_shapes(shapes)
    p = [dims[0][0]] + [c for _, c in dims]  # matrix i is p[i] x p[i + 1]
    k = len(dims)
    cost = [[0] * k for _ in range(k)]
    split = [[0] * k for _ in range(k)]
    for length in range(2, k + 1):
        for i in range(k - length + 1):
            j = i + length - 1
            best = None
            for s in range(i, j):
                c = cost[i][s] + cost[s + 1][j] + p[i] * p[s + 1] * p[j + 1]
                if best is None or c < best:
                    best, split[i][j] = c, s
            cost[i][j] = best

    def build(i: int, j: int) -> Plan:
        if i == j:
            return i
        s = split[i][j]
        return (build(i, s), build(s + 1, j))

    return ChainPlan(build(0, k - 1), cost[0][k - 1])


def plan_cost(plan: Plan, shapes: Sequence[Sequence[int]]) -> int:
    """Multiply-adds of multiplying the chain in the order `plan` (for comparisons)."""
    dims = _check_shapes(shapes)

    def walk(node: Plan) -> tuple[int, int, int]:  # rows, cols, cost
        if isinstance(node, int):
            return dims[node][0], dims[node][1], 0
        (r, m, c1), (_, c, c2) = walk(node[0]), walk(node[1])
        return r, c, c1 + c2 + r * m * c

    return walk(plan)[2]


def _is_tensor(a: Any) -> bool:
    from .autograd import Tensor  # chain is usable without autograd's import cost
    return isinstance(a, Tensor)


def _run(plan: Plan, mats: Sequence[Any]) -> Any:
    if isinstance(plan, int):
        return mats[plan]
    left, right = _run(plan[0], mats), _run(plan[1], mats)
    return left @ right if _is_tensor(left) or _is_tensor(right) else np.dot(left, right)


def multi_dot(arrays: Sequence[Any], *, return_plan: bool = False):
    """The product of two or more matrices, multiplied in the cheapest order.

    As numpy.linalg.multi_dot: the first array may be 1-D (a row vector) and the last 1-D
    (a column vector); the result then drops that dimension. Tensors (fastgrad.Tensor) are
    accepted: the product is then a Tensor built from ``@`` in the planned order, so
    backprop runs through the same order. With ``return_plan=True`` returns
    ``(product, ChainPlan)``.
    """
    items = list(arrays)
    if len(items) < 2:
        raise ValueError(f"multi_dot needs at least 2 arrays, got {len(items)}")
    as_tensors = any(_is_tensor(a) for a in items)
    if not as_tensors:
        items = [np.asarray(a) for a in items]
    first_1d, last_1d = items[0].ndim == 1, items[-1].ndim == 1
    if first_1d:
        items[0] = items[0].reshape(1, -1)
    if last_1d:
        items[-1] = items[-1].reshape(-1, 1)
    for i, a in enumerate(items):
        if a.ndim != 2:
            raise ValueError(f"arrays[{i}] must be 2-D (1-D allowed first and last), "
                             f"got shape {a.shape}")
    order = chain_order([a.shape for a in items])
    out = _run(order.plan, items)
    if first_1d or last_1d:
        shape = out.shape[first_1d:out.ndim - last_1d]
        out = out.reshape(shape)
    return (out, order) if return_plan else out


def chain_vjp(matrices: Sequence[Any], v: Any, *, return_plan: bool = False):
    """Backprop through y = M_1 M_2 ... M_k x: the gradient with respect to x of v . y,
    i.e. (M_1 ... M_k)^T v = v^T M_1 ... M_k, multiplied from the output side.

    matrices: M_1 (m_0 x m_1) ... M_k (m_(k-1) x m_k); v: (m_0,) or (r, m_0), r cotangents
    as rows; result (m_k,) or (r, m_k). The order comes from `chain_order` over
    [v, M_1, ..., M_k]: vector-first (cost r sum m_(i-1) m_i), never the m_0 x m_k product
    matrix first. ``return_plan=True`` also returns the ChainPlan (index 0 is v).
    """
    v = np.asarray(v)
    if v.ndim not in (1, 2):
        raise ValueError(f"v must be 1-D (m_0,) or 2-D (r, m_0), got shape {v.shape}")
    if not matrices:
        raise ValueError("chain_vjp needs at least one matrix, got none")
    return multi_dot([v, *matrices], return_plan=return_plan)
