"""Optimizer update kernels on every backend against a hand-written float64 loop of
PyTorch's documented algorithms (torch.optim SGD / Adam / AdamW / RMSprop pseudocode),
and the learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import BACKENDS, DTYPES, assert_close

import fastgrad as fg
from fastgrad.optim import make_optimizer


def torch_sgd(p, grads, lrs, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's pseudocode (dampening 0), element by element."""
    p = [float(v) for v in p]
    buf = None
    for g_all, lr in zip(grads, lrs):
        new_buf = []
        for i, g in enumerate(g_all):
            g = float(g) + weight_decay * p[i]
            if momentum:
                b = g if buf is None else momentum * buf[i] + g
                new_buf.append(b)
                g = g + momentum * b if nesterov else b
            p[i] -= lr * g
        buf = new_buf
    return np.array(p)


def torch_adam(p, grads, lrs, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
               decoupled=False):
    """torch.optim.Adam / AdamW pseudocode (amsgrad False, maximize False)."""
    p = [float(v) for v in p]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, (g_all, lr) in enumerate(zip(grads, lrs), start=1):
        for i, g in enumerate(g_all):
            g = float(g)
            if decoupled:
                p[i] *= 1 - lr * weight_decay
            else:
                g += weight_decay * p[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - beta2**t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(p)


def torch_rmsprop(p, grads, lrs, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
    """torch.optim.RMSprop pseudocode (centered False)."""
    p = [float(v) for v in p]
    sq = [0.0] * len(p)
    buf = [0.0] * len(p)
    for g_all, lr in zip(grads, lrs):
        for i, g in enumerate(g_all):
            g = float(g) + weight_decay * p[i]
            sq[i] = alpha * sq[i] + (1 - alpha) * g * g
            step = g / (math.sqrt(sq[i]) + eps)
            if momentum:
                buf[i] = momentum * buf[i] + step
                step = buf[i]
            p[i] -= lr * step
    return np.array(p)


CASES = [
    ("sgd", {}, torch_sgd),
    ("sgd", {"momentum": 0.9}, torch_sgd),
    ("sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01}, torch_sgd),
    ("adam", {}, torch_adam),
    ("adam", {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.05}, torch_adam),
    ("adamw", {"weight_decay": 0.1}, lambda *a, **k: torch_adam(*a, decoupled=True, **k)),
    ("rmsprop", {}, torch_rmsprop),
    ("rmsprop", {"alpha": 0.9, "momentum": 0.5, "weight_decay": 0.01}, torch_rmsprop),
]
CASE_IDS = [f"{name}-{'-'.join(map(str, kw.values())) or 'default'}" for name, kw, _ in CASES]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_under_test_runs_its_own_update_kernels(backend):
    """No silent fallback (get_kernel's, for backends lacking an optional kernel) behind
    the tests over BACKENDS: each backend has its own updates, and an optimizer bound to
    it calls them."""
    module = fg.get_backend(backend)
    for name in ("sgd_update", "adam_update", "rmsprop_update"):
        assert callable(getattr(module, name, None)), f"{backend} lacks {name}"
        assert fg.backends.get_kernel(name, backend) is getattr(module, name)
    for name in ("sgd", "adam", "adamw", "rmsprop"):
        opt = make_optimizer(name)
        opt.bind(np.zeros(3), backend)
        assert opt._update is getattr(module, opt.kernel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_update_matches_torch_pseudocode(case, backend, dtype, rng):
    name, params, reference = case
    p0 = rng.standard_normal(11).astype(dtype)
    grads = [rng.standard_normal(11).astype(dtype) for _ in range(5)]
    lrs = [0.1, 0.05, 0.05, 0.02, 0.01]
    opt = make_optimizer(name, lr=0.1, **params)
    p = p0.copy()
    opt.bind(p, backend)
    for g, lr in zip(grads, lrs):
        opt.step(p, g, lr)
    assert p.dtype == dtype and opt.steps == 5
    want = reference(p0, grads, lrs, **params)
    # float32 states are rounded every step: a few ulps per step accumulate.
    assert_close(p, want, dtype, reduction=True, what=f"{name} {params}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_update_in_place(backend, rng):
    kernels = {k: fg.backends.get_kernel(k, backend) for k in
               ("sgd_update", "adam_update", "rmsprop_update")}
    p = rng.standard_normal(6)
    g = rng.standard_normal(6)
    vel = np.zeros(6)
    before = p.copy()
    kernels["sgd_update"](p, g, vel, 0.5, 0.0, 0.0, False)
    np.testing.assert_allclose(p, before - 0.5 * g, rtol=1e-15)
    m, v = np.zeros(6), np.zeros(6)
    p = before.copy()
    kernels["adam_update"](p, g, m, v, 0.01, 0.9, 0.999, 1e-8, 0.0, False, 1)
    # Adam's first step: m_hat = g and v_hat = g^2, so each coordinate moves by
    # lr g / (|g| + eps): ~lr against the sign of its gradient, but not to 1e-6 (a fresh
    # random g with a coordinate of |g| ~ 2e-3 moved eps/|g| = 6e-6 relative less: CI)
    np.testing.assert_allclose(p, before - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12,
                               atol=1e-15)
    np.testing.assert_allclose(m, 0.1 * g, rtol=1e-15)


def test_optimizer_state_persists_and_rebinds(rng):
    opt = fg.Adam(lr=0.01)
    p = rng.standard_normal(4)
    opt.bind(p)
    opt.step(p, np.ones(4))
    m = opt.m.copy()
    opt.bind(p)  # same size and dtype: a second fit continues with the same moments
    assert opt.steps == 1 and np.array_equal(opt.m, m)
    opt.bind(np.zeros(3))
    assert opt.steps == 0 and opt.m.shape == (3,)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        make_optimizer("lbfgs")
    with pytest.raises(ValueError, match="lr must be finite and > 0, got -1"):
        make_optimizer("sgd", lr=-1)
    with pytest.raises(ValueError, match="momentum must be finite and >= 0 and < 1.0"):
        fg.SGD(momentum=1.5)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        fg.SGD(nesterov=True)
    with pytest.raises(TypeError, match=r"SGD got unexpected parameter\(s\) \['beta1'\]"):
        make_optimizer("sgd", beta1=0.9)
    with pytest.raises(TypeError, match="set them on the instance"):
        make_optimizer(fg.Adam(), momentum=0.9)


def test_schedules():
    assert [fg.StepLR(2, 0.5)(e, 1.0) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cos = fg.CosineLR(4, min_lr=0.1)
    assert cos(0, 1.0) == pytest.approx(1.0) and cos(4, 1.0) == pytest.approx(0.1)
    assert cos(2, 1.0) == pytest.approx(0.55) and cos(9, 1.0) == pytest.approx(0.1)
    warm = fg.WarmupLR(4, after=fg.StepLR(1, 0.5))
    assert [warm(e, 1.0) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5]
    assert fg.WarmupLR(2)(7, 0.3) == 0.3
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        fg.StepLR(0)
