"""The dense layer: linear_forward / linear_backward on every backend, dtype and activation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, DTYPES, SPEC_IDS, SPECS, assert_close, random_input

import fastgrad as fg


def make_layer(rng, dtype, lead=(2, 3), d_in=5, d_out=4):
    x = random_input(rng, (*lead, d_in), dtype, scale=1.0)
    W = random_input(rng, (d_in, d_out), dtype, scale=0.7)
    b = random_input(rng, (d_out,), dtype, scale=0.5)
    return x, W, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_linear_forward_matches_reference(spec, backend, dtype, rng):
    x, W, b = make_layer(rng, dtype)
    for bias in (b, None):
        y, pre = fg.linear_forward(x, W, bias, activation=spec.name, backend=backend,
                                   return_pre=True)
        want, want_pre = fg.linear_forward(x, W, bias, activation=spec.name, backend="numpy",
                                           return_pre=True)
        assert y.shape == (2, 3, 4) and y.dtype == dtype
        assert_close(pre, want_pre, dtype, reduction=True, what="pre")
        assert_close(y, want, dtype, reduction=True, what="y")
        y2 = fg.linear_forward(x, W, bias, activation=spec.name, backend=backend)
        assert_close(y2, y, dtype, reduction=True, what="without return_pre")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_linear_backward_matches_reference(spec, backend, dtype, rng):
    x, W, b = make_layer(rng, dtype)
    y, pre = fg.linear_forward(x, W, b, activation=spec.name, backend="numpy", return_pre=True)
    g = rng.standard_normal(y.shape).astype(dtype)
    kw = {"activation": spec.name, "y": y, "pre": pre}
    got = fg.linear_backward(g, x, W, backend=backend, **kw)
    want = fg.linear_backward(g, x, W, backend="numpy", **kw)
    for name, a, w in zip(("grad_x", "grad_W", "grad_b"), got, want):
        assert a.dtype == dtype
        assert_close(a, w, dtype, reduction=True, what=name)
    gx, gW, gb = fg.linear_backward(g, x, W, backend=backend, need_grad_x=False, **kw)
    assert gx is None
    assert_close(gW, want[1], dtype, reduction=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "softmax", "gelu"])
def test_linear_backward_matches_central_differences(activation, backend, rng):
    spec = fg.get_activation(activation)
    x, W, b = make_layer(rng, np.float64, lead=(3,), d_in=4, d_out=3)
    if spec.name == "relu":  # keep pre-activations off the kink at 0
        b = b + np.where(np.abs(x @ W + b).min(axis=0) < 0.05, 0.2, 0.0)

    def f(x, W, b):
        return fg.linear_forward(x, W, b, activation=activation, backend=backend)

    def vjp(g, x, W, b):
        y, pre = fg.linear_forward(x, W, b, activation=activation, backend=backend,
                                   return_pre=True)
        return fg.linear_backward(g, x, W, activation=activation, y=y, pre=pre,
                                  backend=backend)

    assert fg.gradcheck(f, [x, W, b], vjp, seed=int(rng.integers(1 << 31)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_formulas(backend, rng):
    """No activation: grad_x = g W^T, grad_W = x^T g, grad_b = column sums of g."""
    x, W, b = make_layer(rng, np.float64, lead=(6,))
    g = rng.standard_normal((6, 4))
    assert_close(fg.linear_forward(x, W, b, backend=backend), x @ W + b, np.float64, True)
    gx, gW, gb = fg.linear_backward(g, x, W, backend=backend)
    assert_close(gx, g @ W.T, np.float64, True)
    assert_close(gW, x.T @ g, np.float64, True)
    assert_close(gb, g.sum(axis=0), np.float64, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, d_in, d_out", [(200, 64, 100), (201, 63, 101), (3, 700, 700)])
def test_linear_products_just_past_blas_small_size(rows, d_in, d_out, dtype, rng):
    """The cython backend splits a product whose M N K lies just past 100^3 into two halves
    of C's columns (OpenBLAS's small-matrix path, see _kernels.pyx: _gemm): odd and even
    halves, for each of the three products, against float64 NumPy."""
    x = rng.standard_normal((rows, d_in)).astype(dtype)
    W = rng.standard_normal((d_in, d_out)).astype(dtype)
    g = rng.standard_normal((rows, d_out)).astype(dtype)
    x64, W64, g64 = x.astype(np.float64), W.astype(np.float64), g.astype(np.float64)
    assert 1e6 < rows * d_in * d_out <= 2e6
    tol = {"rtol": 1e-4, "atol": 1e-4 * np.sqrt(max(d_in, rows, d_out))} \
        if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(fg.linear_forward(x, W, None, backend="cython"), x64 @ W64,
                               **tol)
    gx, gW, _ = fg.linear_backward(g, x, W, backend="cython")
    np.testing.assert_allclose(gx, g64 @ W64.T, **tol)
    np.testing.assert_allclose(gW, x64.T @ g64, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_shapes_and_layouts(backend, rng):
    x, W, b = make_layer(rng, np.float32, lead=(8,), d_in=6, d_out=5)
    want = fg.linear_forward(x, W, b, activation="tanh", backend="numpy")
    cases = {
        "1-D x": (x[0], W, b, want[0]),
        "strided x": (x[::2], W, b, want[::2]),
        "fortran W": (x, np.asfortranarray(W), b, want),
        "transposed-view W": (x, np.ascontiguousarray(W.T).T, b, want),
    }
    for what, (xx, WW, bb, ww) in cases.items():
        got = fg.linear_forward(xx, WW, bb, activation="tanh", backend=backend)
        assert_close(got, ww, np.float32, True, what)
    for lead, d_in, d_out in [((0,), 6, 5), ((4,), 0, 5), ((4,), 6, 0), ((1,), 1, 1)]:
        x0 = np.ones((*lead, d_in), np.float32)
        W0 = np.ones((d_in, d_out), np.float32)
        b0 = np.full(d_out, 0.5, np.float32)
        y0 = fg.linear_forward(x0, W0, b0, activation="relu", backend=backend)
        assert y0.shape == (*lead, d_out)
        np.testing.assert_array_equal(y0, np.maximum(x0 @ W0 + b0, 0))
        gx, gW, gb = fg.linear_backward(np.ones_like(y0), x0, W0, backend=backend)
        assert gx.shape == x0.shape and gW.shape == W0.shape and gb.shape == (d_out,)
        np.testing.assert_array_equal(gW, x0.T @ np.ones_like(y0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_out_and_errors(backend, rng):
    x, W, b = make_layer(rng, np.float64, lead=(3,))
    out = np.empty((3, 4))
    assert fg.linear_forward(x, W, b, out=out, backend=backend) is out
    with pytest.raises(ValueError, match="out has shape"):
        fg.linear_forward(x, W, b, out=np.empty((4, 3)), backend=backend)
    with pytest.raises(ValueError, match=r"x has shape \(3, 5\) and W has shape \(4, 4\)"):
        fg.linear_forward(x, np.ones((4, 4)), backend=backend)
    with pytest.raises(ValueError, match=r"b has shape \(3,\), expected \(4,\)"):
        fg.linear_forward(x, W, np.ones(3), backend=backend)
    with pytest.raises(ValueError, match="W must be 2-D"):
        fg.linear_forward(x, np.ones(5), backend=backend)
    with pytest.raises(TypeError, match="W has dtype float32, expected float64"):
        fg.linear_forward(x, W.astype(np.float32), backend=backend)
    with pytest.raises(ValueError, match=r"grad_y has shape \(3, 5\), expected \(3, 4\)"):
        fg.linear_backward(np.ones((3, 5)), x, W, backend=backend)
    with pytest.raises(ValueError, match="needs pre"):
        fg.linear_backward(np.ones((3, 4)), x, W, activation="relu", backend=backend)
    with pytest.raises(ValueError, match="needs y"):
        fg.linear_backward(np.ones((3, 4)), x, W, activation="sigmoid", backend=backend)
