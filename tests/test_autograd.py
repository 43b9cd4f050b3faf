"""fastgrad.Tensor: the patterns of gradient flow, the engine (micrograd's bugs), and every
op against central differences (reverse mode through gradcheck, forward mode through jvp),
table-driven over the ops below and over every activation of fastgrad.ACTIVATIONS."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from conftest import SPEC_IDS, SPECS, random_input

import fastgrad as fg
from fastgrad import autograd as ag
from fastgrad import functional
from fastgrad import tensor_losses as losses
from fastgrad.derivatives import jvp_multi, vjp_multi
from fastgrad.losses import LOSSES

Tensor = fg.Tensor


# -- the patterns of gradient flow -----------------------------------------------------

def test_add_distributes_the_gradient_unchanged(rng):
    x = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    y = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    g = rng.standard_normal((2, 3))
    (x + y).backward(g)
    np.testing.assert_array_equal(x.grad, g)
    np.testing.assert_array_equal(y.grad, g)


def test_mul_swaps_its_inputs(rng):
    u = Tensor(rng.standard_normal(4), requires_grad=True)
    v = Tensor(rng.standard_normal(4), requires_grad=True)
    g = rng.standard_normal(4)
    (u * v).backward(g)
    np.testing.assert_array_equal(u.grad, g * v.data)  # d(uv)/du = v
    np.testing.assert_array_equal(v.grad, g * u.data)


def test_fan_out_adds_the_gradients_of_its_uses(rng):
    a = Tensor(rng.standard_normal(3), requires_grad=True)
    b = Tensor(rng.standard_normal(3))
    (a * b + a + a.exp()).sum().backward()  # three uses of a
    np.testing.assert_allclose(a.grad, b.data + 1.0 + np.exp(a.data), rtol=1e-15)


def test_a_plus_a_gives_two():
    a = Tensor(3.0, requires_grad=True)
    (a + a).backward()
    assert a.grad == 2.0
    b = Tensor(3.0, requires_grad=True)
    (b * b).backward()  # the same node on both sides of a mul: 2b
    assert b.grad == 6.0


def test_max_routes_the_gradient_to_the_argmax(rng):
    x = Tensor(rng.standard_normal((3, 5)), requires_grad=True)
    g = rng.standard_normal(3)
    x.max(axis=1).backward(g)
    want = np.zeros((3, 5))
    want[np.arange(3), np.argmax(x.data, axis=1)] = g
    np.testing.assert_array_equal(x.grad, want)
    x.zero_grad()
    x.max().backward()
    want = np.zeros(15)
    want[np.argmax(x.data)] = 1.0
    np.testing.assert_array_equal(x.grad, want.reshape(3, 5))


def test_max_ties_send_everything_to_the_first():
    x = Tensor([1.0, 3.0, 3.0, 0.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 0.0, 0.0])
    x = Tensor([[2.0, 2.0]], requires_grad=True)
    x.min(axis=1).backward(np.array([5.0]))
    np.testing.assert_array_equal(x.grad, [[5.0, 0.0]])
    a, b = Tensor([1.0, 2.0], requires_grad=True), Tensor([1.0, 3.0], requires_grad=True)
    ag.maximum(a, b).sum().backward()  # tie at index 0 goes to a
    np.testing.assert_array_equal(a.grad, [1.0, 0.0])
    np.testing.assert_array_equal(b.grad, [0.0, 1.0])


@pytest.mark.parametrize("a0,b0", [(2.0, 1.0), (-3.0, 0.5)])
def test_worked_example(a0, b0):
    a, b = Tensor(a0, requires_grad=True), Tensor(b0, requires_grad=True)
    c = a + b
    d = b + 1
    e = c * d
    e.backward()
    assert e.item() == (a0 + b0) * (b0 + 1)
    assert a.grad == b0 + 1  # de/da = b + 1
    assert b.grad == (a0 + b0) + (b0 + 1)  # de/db = (a + b) + (b + 1)


# -- the engine ------------------------------------------------------------------------

def test_a_100k_node_chain_backprops_without_recursion():
    n = 100_000
    assert sys.getrecursionlimit() < n  # the test means something
    x = Tensor(0.5, requires_grad=True)
    y = x
    for _ in range(n):
        y = y + 1.0
    y.backward()
    assert x.grad == 1.0
    assert y.item() == 0.5 + n
    del y  # freeing the chain must not overflow the C stack either


def test_gradients_accumulate_until_zero_grad(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    y.backward()  # the graph is kept: a second call adds
    np.testing.assert_allclose(x.grad, 4 * x.data, rtol=1e-15)
    x.zero_grad()
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data, rtol=1e-15)


def test_only_leaves_keep_grad_unless_retained(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    h = (x * 2.0).retain_grad()
    k = h.exp()
    k.sum().backward()
    assert k.grad is None and not k.is_leaf and x.is_leaf
    np.testing.assert_allclose(h.grad, np.exp(h.data), rtol=1e-15)
    np.testing.assert_allclose(x.grad, 2 * np.exp(h.data), rtol=1e-15)


def test_no_grad_records_nothing_and_restores_state():
    x = Tensor([1.0, 2.0], requires_grad=True)
    with fg.no_grad():
        assert not fg.is_grad_enabled()
        y = (x * 3).sum()
    assert fg.is_grad_enabled()
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    with pytest.raises(KeyError), fg.no_grad():
        raise KeyError
    assert fg.is_grad_enabled()


def test_detach_shares_data_and_stops_gradients(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    d = x.detach()
    assert d.data is x.data and not d.requires_grad
    (d * x).sum().backward()  # only the x path carries gradient
    np.testing.assert_array_equal(x.grad, x.data)


def test_backward_argument_errors():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="one-element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(2,\), expected \(3,\)"):
        (x * 2).backward(np.ones(2))
    with pytest.raises(TypeError, match="data must be a float32 or float64"):
        Tensor(np.array(["a"]))


def test_dtypes_are_kept(rng):
    x = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    W = Tensor(rng.standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    y = ((x * 2.0 + 1) @ W).tanh() / 3.0 - 0.5
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32 and W.grad.dtype == np.float32
    assert Tensor([1, 2]).dtype == np.float64  # integers become float64
    mixed = Tensor(np.ones(2, np.float32), requires_grad=True)
    (mixed * Tensor(np.ones(2))).sum().backward()  # float32 * float64 -> float64
    assert mixed.grad.dtype == np.float32


@pytest.mark.parametrize("sa,sb", [((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 1, 3), (4, 1)),
                                   ((), (2, 2)), ((5,), ())])
def test_broadcast_gradients_have_each_input_shape(sa, sb, rng):
    a = Tensor(rng.standard_normal(sa), requires_grad=True)
    b = Tensor(rng.standard_normal(sb), requires_grad=True)
    out = a * b + a - b
    g = rng.standard_normal(out.shape)
    out.backward(g)
    assert a.grad.shape == sa and b.grad.shape == sb
    # A reduced gradient is a sum whose terms may cancel: bound the error by the sum of the
    # terms' magnitudes, not by the result (a 5-term sum to -2.6e-4 differed by 1 ulp of
    # the terms, 8.7e-13 of itself: seed 2613193442).
    for grad, terms, shape in ((a.grad, g * (b.data + 1), sa), (b.grad, g * (a.data - 1), sb)):
        bound = 1e-13 * _reduce_to(np.abs(terms), shape)
        assert np.all(np.abs(grad - _reduce_to(terms, shape)) <= bound), (grad, terms)


def _reduce_to(x, shape):
    """Sum a broadcast result back to `shape` (the test's own version of the rule)."""
    x = np.broadcast_to(x, x.shape)
    while x.ndim > len(shape):
        x = x.sum(axis=0)
    for i, n in enumerate(shape):
        if n == 1:
            x = x.sum(axis=i, keepdims=True)
    return x


def test_ndarray_on_the_left_defers_to_tensor(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    c = rng.standard_normal(3)
    y = c * x + c
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, c)


def test_comparisons_give_masks_and_abs_has_zero_slope_at_zero():
    x = Tensor([-1.0, 0.0, 2.0], requires_grad=True)
    np.testing.assert_array_equal(x > 0, [False, False, True])
    np.testing.assert_array_equal(x <= Tensor([0.0, 0.0, 0.0]), [True, True, False])
    abs(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 0.0, 1.0])


def test_indexing_accumulates_repeated_indices():
    x = Tensor(np.arange(4.0), requires_grad=True)
    x[np.array([0, 0, 3, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 0.0, 1.0])


# -- kernels of the active backend -------------------------------------------------------

@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_every_activation_is_a_tensor_op_on_the_kernels(spec, rng, monkeypatch):
    x = random_input(rng, (3, 4), np.float64, spec)
    calls = []
    real = functional.backward

    def spy(name, g, **kw):
        calls.append(sorted(k for k in kw if k in ("x", "y")))
        return real(name, g, **kw)

    monkeypatch.setattr(functional, "backward", spy)
    t = Tensor(x, requires_grad=True)
    y = getattr(t, spec.name)()
    assert getattr(ag, spec.name)(t).data.tobytes() == y.data.tobytes()
    np.testing.assert_array_equal(y.data, fg.forward(spec.name, x))
    g = rng.standard_normal(x.shape)
    y.backward(g)
    assert calls == [[spec.needs] if spec.needs else []]
    saved = {"x": {"x": x}, "y": {"y": y.data}}.get(spec.needs, {})
    np.testing.assert_array_equal(t.grad, fg.backward(spec.name, g, **saved))


@pytest.mark.parametrize("backend", [b for b in fg.available_backends() if b != "cuda"])
def test_ops_follow_the_active_backend(backend, rng):
    x = rng.standard_normal((4, 3))
    W = rng.standard_normal((3, 2))
    with fg.use_backend(backend):
        t, w = Tensor(x, requires_grad=True), Tensor(W, requires_grad=True)
        (t @ w).gelu().softmax().sum(axis=0).max().backward()
    with fg.use_backend("numpy"):
        tr, wr = Tensor(x, requires_grad=True), Tensor(W, requires_grad=True)
        (tr @ wr).gelu().softmax().sum(axis=0).max().backward()
    np.testing.assert_allclose(t.grad, tr.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(w.grad, wr.grad, rtol=1e-10, atol=1e-12)


def test_dense_matmul_uses_the_linear_kernels(rng, monkeypatch):
    calls = []
    real = functional.linear_backward
    monkeypatch.setattr(functional, "linear_backward",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    (x @ rng.standard_normal((3, 4))).sum().backward()
    assert calls == [1]


def test_straight_through_passes_the_gradient(rng):
    x = Tensor(rng.standard_normal(5), requires_grad=True)
    g = rng.standard_normal(5)
    x.binary_step(straight_through=True).backward(g)
    np.testing.assert_array_equal(x.grad, g)
    np.testing.assert_array_equal(fg.jvp(lambda t: t.binary_step(straight_through=True),
                                         x.data, g), g)


def test_activation_parameters_and_errors(rng):
    x = Tensor(rng.standard_normal(5) - 3, requires_grad=True)
    np.testing.assert_array_equal(x.leaky_relu(alpha=0.2).data,
                                  fg.forward("leaky_relu", x.data, alpha=0.2))
    np.testing.assert_array_equal(x.activation("silu").data, x.swish().data)
    with pytest.raises(TypeError, match="unexpected parameter"):
        x.relu(alpha=1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        x.activation("nope")


# -- every op against central differences (reverse and forward mode) -------------------

def _pos(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


def _apart(rng, x):
    """x shifted by at least 0.1 either way (no ties for maximum/minimum)."""
    return x + rng.choice([-1.0, 1.0], x.shape) * rng.uniform(0.1, 1.0, x.shape)


_TARGETS = np.array([2, 0, 1])


@dataclass
class Op:
    name: str
    f: Callable[..., Any]
    make: Callable[[np.random.Generator], list[np.ndarray]]
    kw: dict = field(default_factory=dict)


def _n(*shape):
    return lambda rng: [rng.standard_normal(s) for s in shape]


OPS = [
    Op("add_bcast", lambda a, b: a + b, _n((3, 4), (4,))),
    Op("add_outer", lambda a, b: a + b, _n((3, 1), (1, 4))),
    Op("radd", lambda a: 2.0 + a, _n((3,))),
    Op("sub", lambda a, b: a - b, _n((2, 3), (3,))),
    Op("rsub", lambda a: 1 - a, _n((2, 2))),
    Op("mul", lambda a, b: a * b, _n((2, 3), (2, 1))),
    Op("rmul", lambda a: 3 * a, _n((4,))),
    Op("div", lambda a, b: a / b, lambda r: [r.standard_normal((2, 3)), _pos(r, (3,))]),
    Op("rtruediv", lambda a: 1.0 / a, lambda r: [_pos(r, (3,))]),
    Op("neg", lambda a: -a, _n((2, 3))),
    Op("pow_scalar", lambda a: a ** 3, _n((4,))),
    Op("pow_sqrt", lambda a: a ** 0.5, lambda r: [_pos(r, (4,))]),
    Op("pow_tensor", lambda a, b: a ** b, lambda r: [_pos(r, (2, 3)), r.standard_normal(3)]),
    Op("rpow", lambda a: 2.0 ** a, _n((3,))),
    Op("matmul_dense", lambda a, b: a @ b, _n((3, 4), (4, 2))),
    Op("matmul_batched_dense", lambda a, b: a @ b, _n((2, 3, 4), (4, 2))),
    Op("matmul_vec_mat", lambda a, b: a @ b, _n((4,), (4, 2))),
    Op("matmul_mat_vec", lambda a, b: a @ b, _n((3, 4), (4,))),
    Op("matmul_dot", lambda a, b: a @ b, _n((4,), (4,))),
    Op("matmul_batch_bcast", lambda a, b: a @ b, _n((2, 3, 4), (1, 4, 2))),
    Op("rmatmul_const", lambda a: np.ones((2, 3)) @ a, _n((3, 2))),
    Op("sum_all", lambda a: a.sum(), _n((2, 3))),
    Op("sum_axis", lambda a: a.sum(axis=0), _n((2, 3))),
    Op("sum_axes_keep", lambda a: a.sum(axis=(0, 2), keepdims=True), _n((2, 3, 2))),
    Op("mean_all", lambda a: a.mean(), _n((2, 3))),
    Op("mean_axis", lambda a: a.mean(axis=-1, keepdims=True), _n((2, 3))),
    Op("exp", lambda a: a.exp(), _n((3,))),
    Op("abs", lambda a: abs(a), lambda r: [_apart(r, np.zeros(5))]),
    Op("log", lambda a: a.log(), lambda r: [_pos(r, (3,))]),
    Op("maximum", lambda a, b: ag.maximum(a, b),
       lambda r: (lambda x: [x, _apart(r, x)])(r.standard_normal((2, 3)))),
    Op("minimum", lambda a, b: ag.minimum(a, b),
       lambda r: (lambda x: [x, _apart(r, x)])(r.standard_normal((2, 3)))),
    Op("maximum_const", lambda a: ag.maximum(a, 0.25), lambda r: [_apart(r, np.full(4, .25))]),
    Op("max_all", lambda a: a.max(), _n((3, 4))),
    Op("max_axis", lambda a: a.max(axis=1), _n((3, 4))),
    Op("max_axis_keep", lambda a: a.max(axis=0, keepdims=True), _n((3, 4))),
    Op("min_axis", lambda a: a.min(axis=-1), _n((3, 4))),
    Op("reshape", lambda a: a.reshape(3, 2) * np.arange(6.0).reshape(3, 2), _n((2, 3))),
    Op("transpose_axes", lambda a: a.transpose(2, 0, 1) * np.arange(24.0).reshape(4, 2, 3),
       _n((2, 3, 4))),
    Op("T", lambda a, b: a.T * b, _n((2, 3), (3, 2))),
    Op("slice", lambda a: a[1:, ::2], _n((3, 4))),
    Op("fancy_repeat", lambda a: a[[0, 0, 2]], _n((3, 2))),
    Op("mask", lambda a: a[a > 0], _n((6,))),
    Op("mixed_index", lambda a: a[np.array([1, 0, 1]), 1:], _n((2, 3))),
    Op("concatenate", lambda a, b: ag.concatenate([a, b, a], axis=1), _n((2, 3), (2, 1))),
    Op("stack", lambda a, b: ag.stack([a, b], axis=-1), _n((2, 3), (2, 3))),
    Op("linear_bias", lambda x, W, b: ag.linear(x, W, b), _n((3, 4), (4, 2), (2,))),
    Op("linear_tanh", lambda x, W, b: ag.linear(x, W, b, activation="tanh"),
       _n((3, 4), (4, 2), (2,))),
    Op("linear_softmax", lambda x, W: ag.linear(x, W, activation="log_softmax"),
       _n((3, 4), (4, 3))),
    Op("linear_swish", lambda x, W, b: ag.linear(x, W, b, activation="swish", beta=1.5),
       _n((3, 4), (4, 2), (2,))),
    Op("composite_mlp", lambda x, W1, W2: ((x @ W1).tanh() @ W2).softmax().log().mean(),
       _n((3, 4), (4, 5), (5, 2))),
]

# Every loss of the loss table, with a target of its task (constant: no gradient).
_LOSS_TARGETS = {
    "regression": lambda r: r.standard_normal((3, 2)),
    "binary": lambda r: r.uniform(0.0, 1.0, (3, 2)),
    "multiclass": lambda r: r.integers(0, 2, 3),  # class indices for (3, 2) logits
}


def _loss_op(spec) -> Op:
    target = _LOSS_TARGETS[spec.task](np.random.default_rng(7))
    return Op(f"loss_{spec.name}", lambda z: losses.loss(spec, z * 3.0, target), _n((3, 2)))


OPS += [_loss_op(spec) for spec in LOSSES.values()]
OPS.append(Op("loss_one_hot_cross_entropy",
              lambda z: losses.cross_entropy(z, np.eye(3)[[2, 0, 1]]), _n((3, 3))))
OPS.append(Op("loss_of_a_network", lambda x, W: losses.binary_cross_entropy(
    (x @ W).tanh(), np.array([[1.0], [0.0], [1.0]])), _n((3, 4), (4, 1))))

# Every activation of the table, with default and with non-default parameters: a new
# table entry is tested here with no new code.
_ACT_PARAMS = {"leaky_relu": {"alpha": 0.2}, "elu": {"alpha": 0.5}, "swish": {"beta": 2.0},
               "gelu": {"approximate": "tanh"}, "binary_step": {"threshold": 0.5}}
# binary_step(straight_through=True) is a surrogate gradient, not the derivative:
# test_straight_through_passes_the_gradient pins it instead.
for _spec in SPECS:
    for _kw in [{}] + ([_ACT_PARAMS[_spec.name]] if _spec.name in _ACT_PARAMS else []):
        OPS.append(Op(
            f"act_{_spec.name}" + "".join(f"_{k}={v}" for k, v in _kw.items()),
            lambda a, _s=_spec, _k=_kw: ag.activation(_s, a, **_k),
            lambda r, _s=_spec: [random_input(r, (3, 4), np.float64, _s)]))


def test_every_activation_has_an_op_case():
    covered = {op.name.split("_", 1)[1].split("_")[0] for op in OPS if op.name.startswith("act_")}
    assert all(any(op.name == f"act_{s.name}" for op in OPS) for s in SPECS), covered


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_reverse_mode_against_central_differences(op, rng):
    fg.gradcheck(op.f, op.make(rng), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_forward_mode_against_central_differences(op, rng):
    xs = op.make(rng)
    ts = [rng.standard_normal(np.shape(x)) for x in xs]
    got = jvp_multi(op.f, xs, ts)

    def at(s):
        with fg.no_grad():
            return op.f(*(Tensor(x + s * t) for x, t in zip(xs, ts))).data

    eps = 1e-6
    want = (at(eps) - at(-eps)) / (2 * eps)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_float32_gradients_match_float64(op, rng):
    """The same graph in float32 (the kernels' float32 paths): float32 gradients, close
    to the float64 ones."""
    xs = op.make(rng)
    g = rng.standard_normal(np.shape(op.f(*(Tensor(x) for x in xs)).data))
    want = vjp_multi(op.f, xs, g)
    got = vjp_multi(op.f, [x.astype(np.float32) for x in xs], g.astype(np.float32))
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == np.float32, f"input {k}"
        scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale, err_msg=f"input {k}")


def test_gradcheck_catches_a_wrong_gradient():
    def bad_square(a):  # forward a^2 with the gradient of a^3
        return ag._node(a.data ** 2, (a,), lambda g: (3 * g * a.data ** 2,),
                        lambda ts: 3 * ts[0] * a.data ** 2, "bad")

    with pytest.raises(fg.GradcheckError, match="input 0"):
        fg.gradcheck(bad_square, [np.array([1.5, -2.0])])


# -- losses ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", list(LOSSES.values()), ids=list(LOSSES))
def test_each_loss_is_the_trainers_kernel(spec, rng):
    z = rng.standard_normal((4, 3)).astype(np.float32)
    t = (rng.integers(0, 3, 4) if spec.task == "multiclass"
         else rng.uniform(0, 1, (4, 3)).astype(np.float32))
    x = Tensor(z, requires_grad=True)
    out = getattr(losses, spec.name)(x, t)
    assert out.shape == () and out.dtype == np.float32
    assert out.item() == np.float32(fg.loss(spec.name, z, t))
    out.backward()
    np.testing.assert_array_equal(x.grad, fg.loss_grad(spec.name, z, t))


def test_loss_values_follow_the_table(rng):
    z = rng.standard_normal((4, 3))
    t = np.array([0, 2, 1, 1])
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert np.isclose(losses.cross_entropy(z, t).item(),
                      -np.mean(np.log(p[np.arange(4), t])), rtol=1e-13)
    y = rng.uniform(0, 1, (4, 3))
    s = 1 / (1 + np.exp(-z))
    want = -np.mean(y * np.log(s) + (1 - y) * np.log(1 - s))
    assert np.isclose(losses.binary_cross_entropy(z, y).item(), want, rtol=1e-13)
    assert np.isclose(losses.mse(z, y).item(), 0.5 * np.mean((z - y) ** 2), rtol=1e-14)
    assert losses.loss("bce", z, y).item() == losses.binary_cross_entropy(z, y).item()


def test_losses_are_stable_at_huge_logits():
    z = Tensor(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]), requires_grad=True)
    loss = losses.cross_entropy(z, np.array([1, 2]))
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(z.grad))
    np.testing.assert_allclose(loss.item(), (2e4 + np.log(2)) / 2, rtol=1e-12)
    b = Tensor(np.array([1000.0, -1000.0]), requires_grad=True)
    bce = losses.binary_cross_entropy(b, np.array([0.0, 1.0]))
    bce.backward()
    np.testing.assert_allclose(bce.item(), 1000.0, rtol=1e-12)
    np.testing.assert_allclose(b.grad, [0.5, -0.5], rtol=1e-12)


def test_loss_argument_errors():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="target"):
        losses.cross_entropy(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="target"):
        losses.cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.loss("hinge", z, z)
    with pytest.raises(ValueError, match="target"):
        losses.mse(z, np.zeros(3))
