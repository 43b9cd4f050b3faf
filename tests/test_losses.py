"""Every loss in fastgrad.LOSSES x every backend x float32/float64, driven by the table."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import BACKENDS, DTYPES, assert_close

import fastgrad as fg

LOSSES = list(fg.LOSSES.values())
LOSS_IDS = [s.name for s in LOSSES]


def make_case(spec, rng, dtype, n=6, k=3, scale=2.0):
    """(pred, target) for `spec`: logits/predictions and a target of the matching kind."""
    pred = (rng.standard_normal((n, k)) * scale).astype(dtype)
    if spec.name == "cross_entropy":
        return pred, rng.integers(0, k, n)
    if spec.name == "binary_cross_entropy":
        return pred, rng.uniform(0, 1, (n, k)).astype(dtype)  # soft labels too
    return pred, rng.standard_normal((n, k)).astype(dtype)


def written_out(spec, pred, target):
    """The documented formula, in float64 NumPy, for an independent check."""
    z = np.asarray(pred, np.float64)
    if spec.name == "mse":
        return 0.5 * np.mean((z - target) ** 2), (z - target) / z.size
    if spec.name == "binary_cross_entropy":
        p = 1 / (1 + np.exp(-z))
        value = np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p)))
        return value, (p - target) / z.size
    onehot = np.eye(z.shape[1])[target]
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return np.mean(-np.log(p[np.arange(len(z)), target])), (p - onehot) / len(z)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_under_test_runs_its_own_loss_kernels(backend):
    """get_kernel serves a backend lacking an optional kernel from another one: the tests
    over BACKENDS would then silently test that other backend. Every backend they run on
    has its own."""
    module = fg.get_backend(backend)
    for name in ("loss_forward", "loss_backward"):
        assert callable(getattr(module, name, None)), f"{backend} lacks {name}"
        assert fg.backends.get_kernel(name, backend) is getattr(module, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", LOSSES, ids=LOSS_IDS)
def test_loss_matches_reference_and_formula(spec, backend, dtype, rng):
    pred, target = make_case(spec, rng, dtype)
    value = fg.loss(spec.name, pred, target, backend=backend)
    grad = fg.loss_grad(spec.name, pred, target, backend=backend)
    assert isinstance(value, float)
    assert grad.dtype == dtype and grad.shape == pred.shape
    assert_close(value, fg.loss(spec.name, pred, target, backend="numpy"), dtype, True)
    assert_close(grad, fg.loss_grad(spec.name, pred, target, backend="numpy"), dtype, True)
    want_value, want_grad = written_out(spec, pred, target)
    assert_close(value, want_value, dtype, True, "value vs the documented formula")
    assert_close(grad, want_grad, dtype, True, "gradient vs the documented formula")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", LOSSES, ids=LOSS_IDS)
def test_loss_grad_matches_central_differences(spec, backend, rng):
    pred, target = make_case(spec, rng, np.float64, n=4, k=3)

    def f(z):
        return np.array(fg.loss(spec.name, z, target, backend=backend))

    def vjp(g, z):
        return (g * fg.loss_grad(spec.name, z, target, backend=backend),)

    assert fg.gradcheck(f, [pred], vjp, seed=int(rng.integers(1 << 31)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", LOSSES, ids=LOSS_IDS)
def test_extreme_logits_are_finite_without_warnings(spec, backend, dtype):
    pred = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], dtype)
    target = (np.array([0, 0]) if spec.name == "cross_entropy"
              else np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = fg.loss(spec.name, pred, target, backend=backend)
        grad = fg.loss_grad(spec.name, pred, target, backend=backend)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    if spec.name == "cross_entropy":  # row 0 right by a margin of 1e4, row 1 wrong by 2e4
        assert value == pytest.approx(2e4 / 2, rel=1e-6)
        assert_close(grad, [[0, 0, 0], [-0.5, 0.5, 0]], dtype, True)
    if spec.name == "binary_cross_entropy":  # confident and right costs ~0; wrong ~|z|
        assert value == pytest.approx((1e4 + np.log(2) + np.log1p(np.exp(-3))) / 6, rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_takes_indices_or_one_hot(backend, rng):
    z = rng.standard_normal((5, 4))
    idx = rng.integers(0, 4, 5)
    onehot = fg.one_hot(idx, 4)
    assert fg.loss("cross_entropy", z, idx, backend=backend) == pytest.approx(
        fg.loss("cross_entropy", z, onehot, backend=backend), rel=1e-12)
    np.testing.assert_allclose(fg.loss_grad("ce", z, idx, backend=backend),
                               fg.loss_grad("ce", z, onehot, backend=backend), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_predictions(backend, rng):
    z = rng.standard_normal(7)
    t = (rng.uniform(size=7) > 0.5).astype(float)
    g = fg.loss_grad("bce", z, t, backend=backend)
    assert g.shape == (7,)
    assert fg.loss("bce", z, t, backend=backend) == pytest.approx(
        fg.loss("bce", z[:, None], t[:, None], backend=backend))


def test_loss_errors():
    z = np.zeros((3, 2))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        fg.loss("hinge", z, z)
    with pytest.raises(ValueError, match=r"target has shape \(3, 3\), expected \(3, 2\)"):
        fg.loss("mse", z, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"target\[1\] = 2 is not a class index in \[0, 2\)"):
        fg.loss("cross_entropy", z, np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="takes logits of shape"):
        fg.loss("cross_entropy", np.zeros(3), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="non-empty"):
        fg.loss("mse", np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(TypeError, match="pred must be a float32 or float64"):
        fg.loss("mse", np.array(["a"]), np.zeros(1))


def test_table_declares_outputs_and_tasks():
    assert {s.output for s in LOSSES} == {"identity", "sigmoid", "softmax"}
    assert fg.get_loss("log_loss") is fg.LOSSES["binary_cross_entropy"]
    for spec in LOSSES:
        assert spec.rowwise == (spec.scalar_value is None)
