"""grad, vjp, jvp and jacobian: against finite differences and against each other; the
cost model (a sweep per output in reverse, per input in forward) and mode="auto"."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import derivatives as jac_module


def numeric_jacobian(f, x, eps=1e-6):
    """Central differences, layout f(x).shape + x.shape."""
    x = np.array(x, dtype=np.float64)

    def value(z):
        with fg.no_grad():
            return f(fg.Tensor(z)).data

    y = value(x)
    J = np.zeros(y.shape + x.shape)
    for j in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[j] += eps
        down[j] -= eps
        J[(...,) + j] = (value(up) - value(down)) / (2 * eps)
    return J


def vec_to_vec(x):  # (3,) -> (4,)
    W = np.arange(12.0).reshape(3, 4) / 10 - 0.5
    return (x @ W).tanh() * x.sum() + fg.autograd.concatenate([x, x[:1]]).exp()


def mat_to_mat(x):  # (2, 3) -> (3, 2)
    return x.T.softmax() * 2.0 - x.T ** 2


def vec_to_scalar(x):
    return (x.sigmoid() * x).sum() + x.max()


CASES = [(vec_to_vec, (3,)), (mat_to_mat, (2, 3)), (vec_to_scalar, (5,))]
IDS = ["vec_to_vec", "mat_to_mat", "vec_to_scalar"]


@pytest.mark.parametrize("f,shape", CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["rev", "fwd", "auto"])
def test_jacobian_matches_finite_differences(f, shape, mode, rng):
    x = rng.standard_normal(shape)
    J = fg.jacobian(f, x, mode=mode)
    want = numeric_jacobian(f, x)
    assert J.shape == want.shape
    np.testing.assert_allclose(J, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("f,shape", CASES, ids=IDS)
def test_reverse_and_forward_agree(f, shape, rng):
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(fg.jacobian(f, x, mode="rev"), fg.jacobian(f, x, mode="fwd"),
                               rtol=1e-12, atol=1e-14)


def test_layout_is_output_shape_then_input_shape(rng):
    x = rng.standard_normal((2, 3))
    J = fg.jacobian(mat_to_mat, x)
    assert J.shape == (3, 2, 2, 3)
    # dy[i, j] / dx[j, i] for y = -x.T^2 (plus softmax terms): check one entry by hand
    eps = 1e-6
    up, down = x.copy(), x.copy()
    up[1, 2] += eps
    down[1, 2] -= eps
    with fg.no_grad():
        d = (mat_to_mat(fg.Tensor(up)).data - mat_to_mat(fg.Tensor(down)).data) / (2 * eps)
    np.testing.assert_allclose(J[..., 1, 2], d, rtol=1e-6, atol=1e-8)
    g = fg.jacobian(vec_to_scalar, rng.standard_normal(5))
    assert g.shape == (5,)  # vector -> scalar: the gradient


def test_auto_picks_the_cheaper_mode_and_says_so(rng, caplog):
    wide = rng.standard_normal(6)
    with caplog.at_level(logging.INFO, logger="fastgrad"):
        _, mode = fg.jacobian(lambda x: x.sum(), wide, return_mode=True)
    assert mode == "rev" and "rev mode" in caplog.text
    _, mode = fg.jacobian(lambda x: fg.autograd.concatenate([x, x, x]), rng.standard_normal(2),
                          return_mode=True)
    assert mode == "fwd"
    _, mode = fg.jacobian(lambda x: x * 2, rng.standard_normal(3), mode="fwd",
                          return_mode=True)
    assert mode == "fwd"
    with pytest.raises(ValueError, match="mode must be"):
        fg.jacobian(lambda x: x, wide, mode="reverse")


@pytest.mark.parametrize("mode,m,n", [("rev", 4, 3), ("fwd", 4, 3), ("rev", 2, 5),
                                      ("fwd", 2, 5)])
def test_sweeps_cost_a_pass_per_output_or_input(mode, m, n, rng, monkeypatch):
    counts = {"pull": 0, "push": 0}
    pull, push = jac_module._pull, jac_module._push

    def counted_pull(*a):
        counts["pull"] += 1
        return pull(*a)

    def counted_push(*a):
        counts["push"] += 1
        return push(*a)

    monkeypatch.setattr(jac_module, "_pull", counted_pull)
    monkeypatch.setattr(jac_module, "_push", counted_push)
    W = rng.standard_normal((n, m))
    fg.jacobian(lambda x: (x @ W).tanh(), rng.standard_normal(n), mode=mode)
    assert counts == ({"pull": m, "push": 0} if mode == "rev" else {"pull": 0, "push": n})


def test_grad_vjp_jvp_against_the_jacobian(rng):
    x = rng.standard_normal(3)
    J = numeric_jacobian(vec_to_vec, x)
    v, t = rng.standard_normal(4), rng.standard_normal(3)
    np.testing.assert_allclose(fg.vjp(vec_to_vec, x, v), v @ J, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fg.jvp(vec_to_vec, x, t), J @ t, rtol=1e-6, atol=1e-8)
    x5 = rng.standard_normal(5)
    np.testing.assert_allclose(fg.grad(vec_to_scalar)(x5), numeric_jacobian(vec_to_scalar, x5),
                               rtol=1e-6, atol=1e-8)


def test_grad_argnum_and_errors(rng):
    W, x = rng.standard_normal((3, 2)), rng.standard_normal(3)

    def loss(W, x):
        return ((x @ W) ** 2).sum()

    np.testing.assert_allclose(fg.grad(loss)(W, x), 2 * np.outer(x, x @ W), rtol=1e-13)
    np.testing.assert_allclose(fg.grad(loss, argnum=1)(W, x), 2 * W @ (x @ W), rtol=1e-13)
    with pytest.raises(ValueError, match="one-element Tensor"):
        fg.grad(lambda x: x * 2)(x)
    with pytest.raises(TypeError, match="must return a fastgrad.Tensor"):
        fg.vjp(lambda x: x.data, x, x)
    with pytest.raises(ValueError, match="tangent 0 has shape"):
        fg.jvp(lambda x: x * 2, x, np.ones(2))


def test_constant_functions_give_zero_derivatives(rng):
    x = rng.standard_normal(3)
    np.testing.assert_array_equal(fg.jacobian(lambda z: fg.Tensor(np.ones(2)), x, mode="fwd"),
                                  np.zeros((2, 3)))
    np.testing.assert_array_equal(fg.vjp(lambda z: z.detach() * 2, x, np.ones(3)), np.zeros(3))


def test_gradcheck_both_forms(rng):
    x = rng.standard_normal((2, 3))
    fg.gradcheck(lambda a: a.tanh().sum(axis=1), [x])  # vjp by autograd
    fg.gradcheck(np.tanh, [x], lambda g, a: [g * (1 - np.tanh(a) ** 2)])  # explicit vjp
