"""Every activation x every backend x float32/float64, driven by the table."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import (
    BACKENDS,
    DTYPES,
    SPEC_IDS,
    SPECS,
    assert_close,
    random_input,
    reference_forward,
    saved_for,
)

import fastgrad as fg

SHAPES = [(7,), (3, 5), (2, 3, 4)]
# -0.75: near the root of gelu's derivative, where its backward takes a polynomial (in one
# array with inf, NaN and 3.4e38, which select the other formula)
SPECIAL = np.array([0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1000.0, -1000.0,
                    88.0, -88.0, 710.0, -710.0, 1e-30, -1e-30, 3.4e38, -3.4e38, -0.75])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_forward_matches_reference(spec, backend, dtype, rng):
    for shape in SHAPES:
        x = random_input(rng, shape, dtype)
        y = fg.forward(spec.name, x, backend=backend)
        assert y.dtype == dtype and y.shape == x.shape
        want = reference_forward(spec, x)
        assert_close(y, want, dtype, reduction=spec.rowwise, what=f"{spec.name}{shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_backward_matches_reference(spec, backend, dtype, rng):
    for shape in SHAPES:
        x = random_input(rng, shape, dtype, spec)
        g = rng.standard_normal(shape).astype(dtype)
        saved = saved_for(spec, x, dtype)
        got = fg.backward(spec.name, g, backend=backend, **saved)
        assert got.dtype == dtype and got.shape == shape
        want = fg.backward(spec.name, g, backend="numpy", **saved)
        assert_close(got, want, dtype, reduction=spec.rowwise, what=f"{spec.name}{shape}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_backward_matches_central_differences(spec, backend, rng):
    x = random_input(rng, (2, 5), np.float64, spec)

    def f(x):
        return fg.forward(spec.name, x, backend=backend)

    def vjp(g, x):
        return (fg.backward(spec.name, g, backend=backend, x=x, y=f(x)),)

    assert fg.gradcheck(f, [x], vjp, seed=int(rng.integers(1 << 31)))


@pytest.mark.parametrize("params", [{"alpha": 0.2}, {"alpha": 2.5}])
@pytest.mark.parametrize("name", ["leaky_relu", "elu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_reach_the_kernels(name, params, backend, rng):
    x = random_input(rng, (4, 6), np.float64, fg.ACTIVATIONS[name])
    g = rng.standard_normal(x.shape)
    assert_close(fg.forward(name, x, backend=backend, **params),
                 reference_forward(name, x, **params), np.float64)
    assert_close(fg.backward(name, g, x=x, backend=backend, **params),
                 fg.backward(name, g, x=x, backend="numpy", **params), np.float64)
    assert fg.gradcheck(lambda x: fg.forward(name, x, backend=backend, **params), [x],
                        lambda g, x: (fg.backward(name, g, x=x, backend=backend, **params),))


@pytest.mark.parametrize("params", [{"beta": 1.7}, {"approximate": "tanh"},
                                    {"threshold": 0.5}])
@pytest.mark.parametrize("backend", BACKENDS)
def test_other_parameters(params, backend, rng):
    name = {"beta": "swish", "approximate": "gelu", "threshold": "binary_step"}[next(iter(params))]
    x = random_input(rng, (3, 7), np.float64, fg.ACTIVATIONS[name])
    assert_close(fg.forward(name, x, backend=backend, **params),
                 reference_forward(name, x, **params), np.float64)
    if name != "binary_step":
        assert fg.gradcheck(lambda x: fg.forward(name, x, backend=backend, **params), [x],
                            lambda g, x: (fg.backward(name, g, x=x, backend=backend,
                                                      **params),))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_special_values_follow_the_reference_without_warnings(spec, backend, dtype):
    x = SPECIAL.astype(dtype) if dtype == np.float64 else np.clip(SPECIAL, -3e38, 3e38).astype(
        dtype)
    g = np.linspace(-2.0, 2.0, x.size).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fg.forward(spec.name, x, backend=backend)
        want = reference_forward(spec, x)
        saved = saved_for(spec, x, dtype)
        gx = fg.backward(spec.name, g, backend=backend, **saved)
        gx_want = fg.backward(spec.name, g, backend="numpy", **saved)
    assert_close(y, want, dtype, reduction=spec.rowwise, what="forward")
    assert_close(gx, gx_want, dtype, reduction=spec.rowwise, what="backward")
    # NaN in gives NaN out (elementwise: exactly at the NaN's position).
    if not spec.rowwise and spec.name != "identity":
        nan_at = np.isnan(x)
        assert np.isnan(y[nan_at]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_row_kernels_on_ties_infinities_and_dominant_maxima(name, backend, dtype):
    """Rows whose max repeats (within and across the kernels' chunks of 128-256 terms),
    rows holding +inf, -inf or only -inf, and rows where the max dominates (the
    log-sum-exp is then a small sum that must not be added to exp(0) = 1 in float32),
    short and longer than a chunk, against the reference."""
    rows = []
    for n in (5, 300, 600):
        base = np.linspace(-6.0, 2.0, n)
        ties = base.copy()
        ties[[0, n // 2, n - 1]] = 3.0
        plus_inf, minus_inf = base.copy(), base.copy()
        plus_inf[n // 3] = np.inf
        minus_inf[n // 3] = -np.inf
        dominant = np.full(n, -25.0)
        dominant[n // 4] = 0.0
        rows += [ties, plus_inf, minus_inf, np.full(n, -np.inf), dominant]
    for k, row in enumerate(rows):
        x = row.astype(dtype)[None, :]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = fg.forward(name, x, backend=backend)
        want = reference_forward(fg.ACTIVATIONS[name], x)
        what = f"{name}, row {k} of {row.size} columns"
        assert_close(y, want, dtype, reduction=True, what=what)
        if k % 5 == 4:  # dominant: relative, even log_softmax's -4e-9 at the max
            np.testing.assert_allclose(y, want, rtol=32 * np.finfo(dtype).eps, atol=0,
                                       err_msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_documented_values(backend, dtype):
    f = lambda name, x, **k: fg.forward(name, np.array(x, dtype), backend=backend, **k)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f("sigmoid", [-1000.0, 1000.0]).tolist() == [0.0, 1.0]
        assert f("sigmoid", [-np.inf, np.inf]).tolist() == [0.0, 1.0]
        assert f("tanh", [-np.inf, np.inf]).tolist() == [-1.0, 1.0]
        assert np.isnan(f("relu", [np.nan])).all()
        assert f("relu", [-2.0, 0.0, 3.0]).tolist() == [0.0, 0.0, 3.0]
        assert f("binary_step", [-1.0, 0.0, 2.0]).tolist() == [0.0, 1.0, 1.0]
        assert f("swish", [-np.inf]).tolist() == [0.0]
        assert f("gelu", [-np.inf, np.inf]).tolist() == [0.0, np.inf]
        assert f("softplus", [-np.inf, np.inf, 1000.0]).tolist() == [0.0, np.inf, 1000.0]
        big = f("softmax", [[1e4, 1e4 + 1.0, -1e4], [3e38 if dtype == np.float32 else 1e308,
                                                       0.0, 0.0]])
        assert np.isfinite(big).all()
        np.testing.assert_allclose(big.sum(axis=-1), 1.0, rtol=1e-6)
        ls = f("log_softmax", [[1e4, 1e4, -1e4]])
        assert np.isfinite(ls).all()
        # relu'(0) = 0; leaky/elu follow the x >= 0 branch at 0; binary_step' = 0.
        ones = np.ones(1, dtype)
        zero = np.zeros(1, dtype)
        assert fg.relu_backward(ones, x=zero, backend=backend).tolist() == [0.0]
        assert fg.leaky_relu_backward(ones, x=zero, backend=backend).tolist() == [1.0]
        assert fg.elu_backward(ones, x=zero, backend=backend).tolist() == [1.0]
        g = np.array([0.5, -2.0], dtype)
        xs = np.array([-1.0, 1.0], dtype)
        assert fg.binary_step_backward(g, backend=backend).tolist() == [0.0, 0.0]
        assert fg.binary_step_backward(g, backend=backend, straight_through=True).tolist() == \
            g.tolist()
        assert fg.binary_step_forward(xs, backend=backend, threshold=0.5).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_derivative_identities(backend, rng):
    x = rng.standard_normal((4, 6))
    g = np.ones_like(x)
    y = fg.sigmoid_forward(x, backend=backend)
    assert_close(fg.sigmoid_backward(g, y=y, backend=backend), y * (1 - y), np.float64)
    t = fg.tanh_forward(x, backend=backend)
    assert_close(fg.tanh_backward(g, y=t, backend=backend), 1 - t**2, np.float64)
    # softmax: backward applied to each basis vector gives the rows of J = diag(y) - y y^T.
    row = rng.standard_normal(5)
    s = fg.softmax_forward(row, backend=backend)
    J = np.stack([fg.softmax_backward(e, y=s, backend=backend) for e in np.eye(5)])
    assert_close(J, np.diag(s) - np.outer(s, s), np.float64, reduction=True)
    # log_softmax: J_ij = delta_ij - y_j; backward of e_k is row k of J.
    ls = fg.log_softmax_forward(row, backend=backend)
    J = np.stack([fg.log_softmax_backward(e, y=ls, backend=backend) for e in np.eye(5)])
    assert_close(J, np.eye(5) - s[None, :], np.float64, reduction=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_layouts_and_sizes(spec, backend, rng):
    base = random_input(rng, (6, 8), np.float32, spec)
    cases = {
        "empty": base[:0],
        "empty-last-axis": base[:, :0],
        "one": base[:1, :1],
        "0-d": np.float32(base[0, 0]).reshape(()),
        "strided": base[::2, ::3],
        "transposed": base.T,
        "fortran": np.asfortranarray(base),
        "negative-stride": base[::-1],
    }
    for what, x in cases.items():
        y = fg.forward(spec.name, x, backend=backend)
        assert_close(y, reference_forward(spec, x), np.float32, reduction=spec.rowwise,
                     what=what)
        g = np.ones_like(x)
        saved = saved_for(spec, x, np.float32)
        assert_close(fg.backward(spec.name, g, backend=backend, **saved),
                     fg.backward(spec.name, g, backend="numpy", **saved), np.float32,
                     reduction=spec.rowwise, what=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_out_argument(spec, backend, rng):
    x = random_input(rng, (5, 4), np.float64, spec)
    want = reference_forward(spec, x)
    out = np.full_like(x, np.nan)
    assert fg.forward(spec.name, x, out=out, backend=backend) is out
    assert_close(out, want, np.float64, reduction=spec.rowwise)
    # A non-contiguous out is filled in place.
    big = np.full((5, 8), np.nan)
    view = big[:, ::2]
    fg.forward(spec.name, x, out=view, backend=backend)
    assert_close(big[:, ::2], want, np.float64, reduction=spec.rowwise)
    assert np.isnan(big[:, 1::2]).all()
    # In place (out is x) works for elementwise and row-wise kernels alike.
    xc = x.copy()
    fg.forward(spec.name, xc, out=xc, backend=backend)
    assert_close(xc, want, np.float64, reduction=spec.rowwise)
    for bad in (np.empty((4, 5)), np.empty((5, 4), np.float32), np.empty(20)):
        with pytest.raises(ValueError, match="out has shape"):
            fg.forward(spec.name, x, out=bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_dtypes(backend):
    ints = np.array([-2, 0, 3])
    y = fg.relu_forward(ints, backend=backend)
    assert y.dtype == np.float64 and y.tolist() == [0.0, 0.0, 3.0]
    big = np.array([2**53 + 1, -(2**40)], dtype=np.int64)
    assert fg.identity_forward(big, backend=backend).tolist() == [float(2**53), -(2.0**40)]
    assert fg.sigmoid_forward(True, backend=backend) == pytest.approx(1 / (1 + np.exp(-1)))
    for bad in (np.array([1 + 2j]), np.array(["a"]), np.array([None], dtype=object)):
        with pytest.raises(TypeError, match="x must be a float32 or float64"):
            fg.relu_forward(bad, backend=backend)
    with pytest.raises(TypeError, match="y has dtype float64, expected float32"):
        fg.sigmoid_backward(np.ones(3, np.float32), y=np.ones(3), backend=backend)


def test_backward_argument_errors():
    g = np.ones((2, 3))
    with pytest.raises(ValueError, match="relu_backward needs x"):
        fg.relu_backward(g, y=g)
    with pytest.raises(ValueError, match="sigmoid_backward needs y"):
        fg.sigmoid_backward(g)
    with pytest.raises(ValueError, match=r"x has shape \(3, 2\), expected \(2, 3\)"):
        fg.relu_backward(g, x=np.ones((3, 2)))
    # sigmoid needs y but accepts x, recomputing y.
    x = np.linspace(-2, 2, 6).reshape(2, 3)
    np.testing.assert_allclose(fg.sigmoid_backward(g, x=x),
                               fg.sigmoid_backward(g, y=fg.sigmoid_forward(x)))
    with pytest.raises(TypeError, match="relu_forward.. got unexpected parameter.s. alpha"):
        fg.relu_forward(g, alpha=0.1)
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        fg.forward("relux", g)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        fg.gelu_forward(g, approximate="fast")
    with pytest.raises(ValueError, match="alpha must be finite"):
        fg.elu_forward(g, alpha=np.nan)


def test_aliases_and_names():
    x = np.linspace(-3, 3, 9)
    np.testing.assert_array_equal(fg.silu_forward(x), fg.swish_forward(x))
    np.testing.assert_array_equal(fg.forward("logistic", x), fg.sigmoid_forward(x))
    np.testing.assert_array_equal(fg.forward("linear", x), x)
    for spec in SPECS:
        assert callable(getattr(fg, f"{spec.name}_forward"))
        assert callable(getattr(fg, f"{spec.name}_backward"))
        assert spec.formula in getattr(fg, f"{spec.name}_forward").__doc__


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_threaded_path_matches_serial(backend, rng, monkeypatch):
    """Large arrays take the threaded kernels: same results as the reference."""
    module = fg.get_backend(backend)
    if hasattr(module, "PARALLEL_THRESHOLD"):
        monkeypatch.setattr(module, "PARALLEL_THRESHOLD", 64)
    for spec in SPECS:
        x = random_input(rng, (40, 50), np.float32, spec)
        assert_close(fg.forward(spec.name, x, backend=backend), reference_forward(spec, x),
                     np.float32, reduction=spec.rowwise, what=spec.name)
        g = rng.standard_normal(x.shape).astype(np.float32)
        saved = saved_for(spec, x, np.float32)
        assert_close(fg.backward(spec.name, g, backend=backend, **saved),
                     fg.backward(spec.name, g, backend="numpy", **saved), np.float32,
                     reduction=spec.rowwise, what=spec.name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gelu_backward_accurate_across_its_root(backend, dtype):
    """gelu'(x) = Phi(x) + x phi(x) crosses 0 at x0 ~ -0.7518, where its two terms (~0.23
    each) cancel: summed from float32 terms, the float32 backward next to the root was 5e6
    ulp off (and 1.6e-6 absolute at g = 108, which a property test drew); from float64
    terms, float64 inputs near it lose as much. Within 3 ulp of the exact g gelu'(x)
    (mpmath), relative to itself, over the 2001 numbers of the dtype around the root, and
    over a sweep of (-1.5, 0): float32 within 3, float64 within 10 (away from the root,
    float64's terms are ~8 ulp off where |gelu'| ~ 0.1: -x/sqrt2 is rounded before
    erfc)."""
    mpmath = pytest.importorskip("mpmath")  # in the `test` extra
    ints = np.int32 if dtype == np.float32 else np.int64
    root = int(np.array(-0.75179152469356446, dtype).view(ints))
    near = (root + np.arange(-1000, 1001, dtype=ints)).view(dtype)
    x = np.concatenate([near, np.linspace(-1.5, 0.0, 1501, dtype=dtype)])
    g = np.where(np.arange(x.size) % 2, dtype(1.0), dtype(-108.0))
    got = fg.backward("gelu", g, x=x, backend=backend)
    with mpmath.workprec(140):
        want = np.array([float(mpmath.mpf(gi) * (mpmath.ncdf(xi) + xi * mpmath.npdf(xi)))
                         for xi, gi in zip(x.tolist(), g.tolist())])
    ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want) / ulp
    allowed = np.where(np.arange(x.size) < near.size, 3.0, 3.0 if dtype == np.float32 else 10.0)
    worst = int(np.argmax(err - allowed))
    assert err[worst] <= allowed[worst], (
        f"{err[worst]:.1f} ulp at x={x[worst]!r}, g={g[worst]!r}: got {got[worst]!r}, "
        f"exact {want[worst]!r}")


def test_gelu_float32_backward_same_bits_on_cython_and_numba():
    """numba_math's x_ncdf_slope and the C kernels' fg_x_ncdf_slope_s are one formula
    written twice (constants copied by hand): the same bits around the root, at the
    polynomial's window edges and over a sweep, where both use fused multiply-adds (the
    C kernels' variant without FMA may differ in the last bit)."""
    if not {"numba", "cython"} <= set(BACKENDS):
        pytest.skip("needs the numba and cython backends")  # never in CI: both required
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " fma" not in flags:
        pytest.skip("the CPU has no FMA: the C kernels' default variant rounds apart")
    root = np.array(-0.75179152469356446, np.float32).view(np.int32)
    near = (root + np.arange(-1000, 1001, dtype=np.int32)).view(np.float32)
    edges = np.array([-0.75179152469356446 + s * 0.55 for s in (-1, 1)], np.float32)
    edges = (edges.view(np.int32)[:, None] + np.arange(-50, 51, dtype=np.int32)).view(
        np.float32).ravel()
    sweep = np.linspace(-16.0, 16.0, 100_001, dtype=np.float32)
    x = np.concatenate([near, edges, sweep, np.float32([np.inf, -np.inf, -0.0, 0.0])])
    g = np.ones_like(x)
    a = fg.backward("gelu", g, x=x, backend="cython")
    b = fg.backward("gelu", g, x=x, backend="numba")
    np.testing.assert_array_equal(a, b)
