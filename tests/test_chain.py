"""Matrix chains: the DP's plan and cost against the closed forms and brute force,
multi_dot against numpy.linalg.multi_dot, and backprop through a chain vector-first."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.chain import plan_cost


def all_plans(i, j):
    """Every parenthesization of matrices i..j (brute force, Catalan many)."""
    if i == j:
        yield i
        return
    for s in range(i, j):
        for left in all_plans(i, s):
            for right in all_plans(s + 1, j):
                yield (left, right)


def test_three_matrices_closed_forms():
    m, n, p, q = 10, 30, 5, 60
    shapes = [(m, n), (n, p), (p, q)]
    assert plan_cost(((0, 1), 2), shapes) == m * n * p + m * p * q  # (AB)C
    assert plan_cost((0, (1, 2)), shapes) == n * p * q + m * n * q  # A(BC)
    order = fg.chain_order(shapes)
    assert order.plan == ((0, 1), 2) and order.text == "((A B) C)" and str(order) == order.text
    assert order.cost == min(m * n * p + m * p * q, n * p * q + m * n * q) == 4500
    plan, cost = fg.chain_order([(n, m), (m, n), (n, 2)])  # the other way round
    assert plan == (0, (1, 2)) and cost == m * n * 2 + n * m * 2


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7])
def test_dp_matches_brute_force(k, rng):
    for _ in range(5):
        dims = rng.integers(1, 40, k + 1)
        shapes = [(int(dims[i]), int(dims[i + 1])) for i in range(k)]
        best = min(plan_cost(p, shapes) for p in all_plans(0, k - 1))
        order = fg.chain_order(shapes)
        assert order.cost == best
        assert plan_cost(order.plan, shapes) == best


def test_costs_are_exact_ints():
    big = 10**6
    assert fg.chain_order([(big, big), (big, big), (big, 1)]).cost == 2 * big**2


@pytest.mark.parametrize("first,last", [(2, 2), (1, 2), (2, 1), (1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_dot_equals_numpy(first, last, dtype, rng):
    for k in (2, 3, 5):
        dims = rng.integers(1, 12, k + 1)
        arrays = [rng.standard_normal((dims[i], dims[i + 1])).astype(dtype) for i in range(k)]
        if first == 1:
            arrays[0] = arrays[0][0]
        if last == 1:
            arrays[-1] = arrays[-1][:, 0]
        got = fg.multi_dot(arrays)
        want = np.linalg.multi_dot(arrays)
        assert got.shape == want.shape and got.dtype == want.dtype
        rtol = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_multi_dot_reports_its_plan(rng):
    A, B, C = rng.standard_normal((10, 30)), rng.standard_normal((30, 5)), rng.standard_normal(
        (5, 60))
    out, order = fg.multi_dot([A, B, C], return_plan=True)
    assert order.text == "((A B) C)" and order.cost == 4500
    np.testing.assert_allclose(out, A @ B @ C, rtol=1e-12)


def test_shape_errors():
    with pytest.raises(ValueError, match="do not chain: 3 columns against 4 rows"):
        fg.chain_order([(2, 3), (4, 5)])
    with pytest.raises(ValueError, match="at least 2 arrays"):
        fg.multi_dot([np.ones((2, 2))])
    with pytest.raises(ValueError, match=r"arrays\[1\] must be 2-D"):
        fg.multi_dot([np.ones((2, 2)), np.ones((2, 2, 2)), np.ones(2)])


def test_chain_vjp_is_vector_first(rng):
    dims = [50, 40, 30, 60, 20]
    mats = [rng.standard_normal((dims[i], dims[i + 1])) for i in range(len(dims) - 1)]
    v = rng.standard_normal(dims[0])
    got, order = fg.chain_vjp(mats, v, return_plan=True)
    np.testing.assert_allclose(got, np.linalg.multi_dot(mats).T @ v, rtol=1e-10)
    vector_first = sum(dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    assert order.cost == vector_first
    assert order.text == "((((A B) C) D) E)"  # A is v: v^T M1 first, then onwards
    shapes = [(1, dims[0])] + [m.shape for m in mats]
    matrix_first = plan_cost((0, (((1, 2), 3), 4)), shapes)
    assert order.cost < matrix_first


def test_multi_dot_of_tensors_backprops(rng):
    A, B = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    c = rng.standard_normal(5)

    def f(a, b, v):
        return fg.multi_dot([a, b, v]).tanh()

    fg.gradcheck(f, [A, B, c])
    t = fg.multi_dot([fg.Tensor(A, requires_grad=True), B, c])
    assert isinstance(t, fg.Tensor) and t.shape == (4,)
