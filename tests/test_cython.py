"""The compiled `cython` backend beyond the shared table-driven suite: accuracy in ulp,
thread-count invariance, argument checking of the raw entry points, and the built wheel."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import BACKENDS, SPECS, spinning, subprocess_env

import fastgrad as fg
from fastgrad import _kernels, scalar_math
from fastgrad.backends import cython as cython_backend
from fastgrad.backends import reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
ELEMENTWISE = [s for s in SPECS if not s.rowwise]
ROWWISE = [s for s in SPECS if s.rowwise]
# Parameter settings checked for accuracy: the defaults, plus one non-default per parameter.
PARAMS = {"gelu": [{}, {"approximate": "tanh"}], "swish": [{}, {"beta": 1.7}],
          "leaky_relu": [{}, {"alpha": 0.2}], "elu": [{}, {"alpha": 2.5}],
          "binary_step": [{}, {"threshold": 0.5, "straight_through": True}]}
MAX_ULP = 4.0


def test_every_activation_has_a_compiled_kernel():
    assert set(_kernels.KERNELS) >= set(fg.ACTIVATIONS)
    for name, spec in fg.ACTIVATIONS.items():
        assert (name in _kernels.ROWWISE) == spec.rowwise, name
    cython_backend.check_available()


def test_a_missing_kernel_makes_the_backend_unavailable(monkeypatch):
    """No silent fallback: a table entry without a compiled kernel fails loudly."""
    monkeypatch.setitem(cython_backend._KERNEL_IDS, "gelu", None)
    with pytest.raises(ImportError, match="lacks kernel 'gelu'"):
        cython_backend.check_available()


# ---- accuracy ---------------------------------------------------------------------------

def _sweep(dtype) -> np.ndarray:
    """Finite inputs over the whole interesting range: a dense grid (an irrational step,
    so kinks and integers are not favoured), magnitudes up to the largest finite value,
    the smallest normals and subnormals."""
    fi = np.finfo(dtype)
    lim = 100.0 if dtype == np.float32 else 750.0
    grid = np.linspace(-lim, lim, 1201) + 1 / np.pi
    # (float64 up to 1e100: mpmath's erfc overflows near 1e300)
    mags = np.geomspace(float(fi.tiny), float(fi.max) if dtype == np.float32 else 1e100, 120)
    x = np.concatenate([grid, mags, -mags, [0.0, -0.0, float(fi.smallest_subnormal),
                                            -3 * float(fi.smallest_subnormal)]])
    return x.astype(dtype)


def _oracle(fn):
    """A scalar_math formula with its transcendentals bound to mpmath's (the same
    per-target binding compile_scalar gives numba and cuda), for arbitrary precision
    (near gelu's derivative's root, its Taylor polynomial: 6.4e-17 relative, not exact)."""
    mpmath = pytest.importorskip("mpmath")  # in the `test` extra
    funcs = {name: getattr(mpmath, name) for name in scalar_math.MATH_FUNCTIONS}
    return scalar_math.compile_scalar(fn, lambda f: f, funcs), mpmath


def _ulp_error(got, want, scale, dtype) -> np.ndarray:
    """|got - want| in units of the dtype's spacing at |scale|; 0 where got is `want`
    rounded to the dtype (infinities included).

    Below tiny/eps (~1e-31 in float32, ~1e-292 in float64) the spacing of tiny/eps is
    used: there an intermediate (sigmoid's exp(-|x|)) may itself be subnormal and carry
    few bits, so such results are held to an absolute error of a few times tiny."""
    fi = np.finfo(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        floor = np.maximum(np.abs(np.asarray(scale, np.float64)), float(fi.tiny / fi.eps))
        unit = np.spacing(np.minimum(floor, float(fi.max)).astype(dtype)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - np.asarray(want, np.float64)) / unit
        exact = got == np.asarray(want).astype(dtype)  # selu(3e38) rounds to inf
    return np.where(exact, 0.0, err)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=[s.name for s in ELEMENTWISE])
def test_elementwise_ulp_error(spec, dtype):
    """Forward within MAX_ULP of the exact result (mpmath, 100 bits), relative to the
    result; backward within MAX_ULP relative to max(|result|, |grad|) (the derivative
    formulas cancel where f' crosses 0, as in float64 arithmetic)."""
    fwd, mpmath = _oracle(spec.scalar_forward)
    bwd, _ = _oracle(spec.scalar_backward)
    x = _sweep(dtype)
    rng = np.random.default_rng(1234)
    g = (rng.uniform(0.5, 2.0, x.size) * rng.choice([-1.0, 1.0], x.size)).astype(dtype)
    for params in PARAMS.get(spec.name, [{}]):
        if dtype == np.float64 and "beta" in params:
            # beta x is rounded before the exp: in float64 (no wider type to compute in)
            # that rounding is amplified |beta x| times in the left tail (~240 ulp at
            # x = -153): checked in float32, computed in double, only.
            continue
        # Parameters reach the kernels in the array's dtype: the oracle takes them so too.
        a, b = (float(dtype(v)) for v in spec.encoded(params))
        y = fg.forward(spec, x, backend="cython", **params)
        saved = y if spec.needs == "y" else x
        kw = {"y": y} if spec.needs == "y" else ({"x": x} if spec.needs == "x" else {})
        gx = fg.backward(spec, g, backend="cython", **kw, **params)
        with mpmath.workprec(100):
            mpf = mpmath.mpf
            want = np.array([float(fwd(mpf(float(v)), mpf(a), mpf(b))) for v in x])
            want_g = np.array([float(bwd(mpf(float(s)), mpf(float(gg)), mpf(a), mpf(b)))
                               for s, gg in zip(saved, g)])
        allow = MAX_ULP
        if dtype == np.float64 and spec.name == "gelu":
            # The argument's roundings (no wider type to compute it in) are amplified in
            # the left tail: erfc(-x/sqrt(2)) x^2 times (80 ulp at x = -17); the tanh form's
            # sigmoid(2u), 2u = 2 sqrt(2/pi) (x + 0.044715 x^3), |2u| times (~330 there).
            xd = x.astype(np.float64)
            two_u = 2 * scalar_math.SQRT_2_OVER_PI * (xd + scalar_math.GELU_TANH_C * xd**3)
            allow = MAX_ULP + (xd**2 if not params else 2 * np.abs(two_u))
        err = _ulp_error(y, want, want, dtype) - (allow - MAX_ULP)
        worst = int(np.argmax(err))
        assert err.max() <= MAX_ULP, (
            f"{spec.name}{params} forward: {err.max():.1f} ulp beyond the allowance at "
            f"x={x[worst]!r}: "
            f"got {y[worst]!r}, exact {want[worst]!r}")
        err = (_ulp_error(gx, want_g, np.maximum(np.abs(want_g), np.abs(g)), dtype)
               - (allow - MAX_ULP))
        worst = int(np.argmax(err))
        assert err.max() <= MAX_ULP, (
            f"{spec.name}{params} backward: {err.max():.1f} ulp at saved={saved[worst]!r}, "
            f"g={g[worst]!r}: got {gx[worst]!r}, exact {want_g[worst]!r}")


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_float32_silu_dense_sweep_within_ulps(backend):
    """swish with beta = 1 in float32 arithmetic (both backends): every 97th float32 in
    [-110, 12], where the exp's and the quotient's roundings matter most, within MAX_ULP
    of the float64 formula (with libmvec's expf, itself 3.1 ulp off there, float
    arithmetic reached 4.7 ulp at x ~ -5.1: the sparser grid above missed it). Backward
    relative to max(|result|, |g|), as above; numba's backward reached 11.7 ulp at x = 8.7
    while it took s (1 - s) by subtraction."""
    lo, hi = (int(np.float32(v).view(np.uint32)) for v in (-110.0, 12.0))
    x = np.concatenate([np.arange(0, hi, 97, dtype=np.uint32),
                        np.arange(0x80000000, lo, 97, dtype=np.uint32)]).view(np.float32)
    g = np.random.default_rng(5).uniform(0.5, 2.0, x.size).astype(np.float32)
    xd = x.astype(np.float64)
    z = np.exp(-np.abs(xd))
    s = np.where(xd >= 0, 1.0, z) / (1.0 + z)
    y = fg.swish_forward(x, backend=backend)
    err = _ulp_error(y, xd * s, xd * s, np.float32)
    assert err.max() <= MAX_ULP, f"silu forward: {err.max():.2f} ulp at x={x[err.argmax()]!r}"
    want_g = g * (s + xd * z / (1.0 + z) ** 2)
    gx = fg.swish_backward(g, x=x, backend=backend)
    err = _ulp_error(gx, want_g, np.maximum(np.abs(want_g), g), np.float32)
    assert err.max() <= MAX_ULP, f"silu backward: {err.max():.2f} ulp at x={x[err.argmax()]!r}"


def _float32_near_zero(limit: float, stride: int) -> np.ndarray:
    """Every stride-th float32 in [-limit, limit] (bit patterns, both signs), and the 33
    float32 on either side of each power of two up to limit (the binade edges)."""
    top = int(np.float32(limit).view(np.uint32))
    mags = np.arange(0, top + 1, stride, dtype=np.uint32)
    powers = np.arange(-149, int(np.log2(limit)) + 1)
    edges = (np.float32(2.0) ** powers.astype(np.float32)).view(np.uint32)
    near = (edges[:, None].astype(np.int64) + np.arange(-32, 33)).ravel()
    mags = np.union1d(mags, near[(near >= 0) & (near <= top)].astype(np.uint32))
    return np.concatenate([mags, mags | np.uint32(0x80000000)]).view(np.float32)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_float32_gelu_near_zero_within_ulps(backend, approximate):
    """float32 gelu near 0, where x Phi(x) ~ x/2: every 509th float32 in [-2^-6, 2^-6] and
    the binade edges, within MAX_ULP of the float64 formula (forward relative to the
    result, backward to max(|result|, |g|)). x * ncdf(x) reached 4.5 ulp at x ~ 0.009
    (and 4.4 at 0.00093): Phi ~ 1/2 carries an absolute error that, just above 1/2 at the
    bottom of its binade, is up to twice as large relative to it as to the result. The
    sweep of test_elementwise_ulp_error is too sparse there to see it."""
    special = pytest.importorskip("scipy.special")
    x = _float32_near_zero(2.0 ** -6, 509)
    g = np.random.default_rng(7).uniform(0.5, 2.0, x.size).astype(np.float32)
    g *= np.where(np.arange(x.size) % 2, np.float32(-1), np.float32(1))
    xd = x.astype(np.float64)
    if approximate == "none":
        phi = special.ndtr(xd)
        slope = phi + xd * np.exp(-0.5 * xd * xd) / np.sqrt(2 * np.pi)
    else:
        du = scalar_math.SQRT_2_OVER_PI * (1 + 3 * scalar_math.GELU_TANH_C * xd * xd)
        phi = special.expit(2 * scalar_math.SQRT_2_OVER_PI
                            * (xd + scalar_math.GELU_TANH_C * xd ** 3))
        slope = phi + 2 * xd * phi * (1 - phi) * du
    want, want_g = xd * phi, g * slope
    y = fg.gelu_forward(x, approximate=approximate, backend=backend)
    err = _ulp_error(y, want, want, np.float32)
    i = int(err.argmax())
    assert err[i] <= MAX_ULP, (f"{backend} gelu({approximate}) forward: {err[i]:.2f} ulp at "
                               f"x={x[i]!r}: got {y[i]!r}, exact {want[i]!r}")
    gx = fg.gelu_backward(g, x=x, approximate=approximate, backend=backend)
    err = _ulp_error(gx, want_g, np.maximum(np.abs(want_g), np.abs(g)), np.float32)
    i = int(err.argmax())
    assert err[i] <= MAX_ULP, (f"{backend} gelu({approximate}) backward: {err[i]:.2f} ulp at "
                               f"x={x[i]!r}, g={g[i]!r}: got {gx[i]!r}, exact {want_g[i]!r}")


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_float32_gelu_tanh_backward_right_tail_within_ulps(backend):
    """The tanh form's derivative s + 2 x s (1 - s) du where s = sigmoid(2u) ~ 1: 1 - s
    computed by subtraction cancels (numba reached 16.5 ulp near x = 5); every 97th float32
    in [1, 16) against the float64 formula with s (1 - s) = expit(v) expit(-v), relative to
    max(|result|, |g|)."""
    special = pytest.importorskip("scipy.special")
    x = np.arange(np.float32(1.0).view(np.uint32), np.float32(16.0).view(np.uint32), 97,
                  dtype=np.uint32).view(np.float32)
    g = np.random.default_rng(5).uniform(0.5, 2.0, x.size).astype(np.float32)
    xd = x.astype(np.float64)
    v = 2 * scalar_math.SQRT_2_OVER_PI * (xd + scalar_math.GELU_TANH_C * xd ** 3)
    du = scalar_math.SQRT_2_OVER_PI * (1 + 3 * scalar_math.GELU_TANH_C * xd * xd)
    want_g = g * (special.expit(v) + 2 * xd * special.expit(v) * special.expit(-v) * du)
    gx = fg.gelu_backward(g, x=x, approximate="tanh", backend=backend)
    err = _ulp_error(gx, want_g, np.maximum(np.abs(want_g), np.abs(g)), np.float32)
    i = int(err.argmax())
    assert err[i] <= MAX_ULP, (f"{backend} gelu(tanh) backward: {err[i]:.2f} ulp at "
                               f"x={x[i]!r}: got {gx[i]!r}, exact {want_g[i]!r}")


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [97, 1000, 2500])
@pytest.mark.parametrize("spec", ROWWISE, ids=[s.name for s in ROWWISE])
def test_rowwise_ulp_error(spec, dtype, cols, backend):
    """Row kernels against the reference's formulas evaluated in long double (log_softmax
    as x - m - log1p(sum of the other terms), as log(1 + small) loses digits), normwise:
    softmax relative to the row's largest probability (exp(x - m) inherits the rounding
    of x - m, amplified by |x - m|), log_softmax to the terms it
    sums (x - m and the log-sum-exp); backward relative to the row's largest term or,
    where larger, the magnitude its row sum works at (y_j sum|g y| for softmax, exp(y_j)
    sum|g| for log_softmax: a sum's rounding scales with the sum of its terms' sizes,
    not with its result, so a 2,500-term float64 sum of g is 13-22 ulp off the largest
    term where it cancels). Rows short and long: float32 sums run in float32 partials
    over chunks of the row (and the C kernels' last terms through a padded block), whose
    rounding this bounds; rows dominated by their max (scale 30) catch a log-sum-exp
    whose small terms were added to exp(0) = 1 in float32."""
    rng = np.random.default_rng(99)
    x = (rng.standard_normal((64, cols)) * rng.choice([0.1, 3.0, 30.0], (64, 1))).astype(
        dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    wide = np.longdouble
    y = fg.forward(spec, x, backend=backend)
    if spec.name == "softmax":
        want = reference._FORWARD[spec.name](x.astype(wide), 0.0, 0.0)
        scale = np.abs(want).max(axis=-1, keepdims=True) + 0 * want
    else:
        shifted = x.astype(wide) - x.max(axis=-1, keepdims=True)
        others = np.exp(shifted)
        others[np.arange(len(x)), np.argmax(x, axis=-1)] = 0
        lse = np.log1p(others.sum(axis=-1, keepdims=True))
        want = shifted - lse
        scale = np.maximum(np.abs(shifted), lse)
    err = _ulp_error(y, want.astype(np.float64), scale, dtype)
    assert err.max() <= MAX_ULP, f"{backend} {spec.name} forward: {err.max():.1f} ulp"
    gx = fg.backward(spec, g, y=y, backend=backend)
    want_g = reference._BACKWARD[spec.name](y.astype(wide), g.astype(wide), 0.0, 0.0)
    terms = np.abs(g) + np.abs(want_g)
    yw, gw = y.astype(wide), np.abs(g.astype(wide))
    if spec.name == "softmax":
        summed = yw * (gw * yw).sum(axis=-1, keepdims=True)
    else:
        summed = np.exp(yw) * gw.sum(axis=-1, keepdims=True)
    scale = np.maximum(np.maximum(np.abs(want_g), terms.max(axis=-1, keepdims=True)),
                       summed.astype(np.float64))
    err = _ulp_error(gx, want_g.astype(np.float64), scale, dtype)
    assert err.max() <= MAX_ULP, f"{backend} {spec.name} backward: {err.max():.1f} ulp"


@pytest.mark.parametrize("backend", ["numba", "cython"] + (
    ["cuda"] if "cuda" in BACKENDS else []))
@pytest.mark.parametrize("dtype, cols", [(np.float32, 97), (np.float32, 300),
                                         (np.float32, 2049), (np.float64, 4097)])
def test_softmax_dominant_max_within_ulps(dtype, cols, backend):
    """A row whose max dominates, the other terms just under half an ulp of 1 each: a
    partial sum (float32 lanes, or a float64 lane) that holds the max's exp(0) = 1
    rounds every such term away (cython float32 reached 7.3 ulp at the max, float64 110,
    numba float32 6.1, cuda 15), so the max's term joins the sum apart from the rest. The last row
    has two near-ties of the max (terms 1 - eps, 1 - 2 eps); in place, numba's float32
    partial was a serial sum over its chunk, 124 ulp off (float32 only: float64's lanes
    sum hundreds of terms each, the reference's pairwise sum few)."""
    eps = np.finfo(dtype).eps
    x = np.full((4, cols), np.log(0.49 * eps), dtype)
    x[0, 0] = 0.0
    x[1, cols // 2] = 0.0
    x[2, cols - 1] = 0.0
    if dtype == np.float32:  # float64 lanes sum hundreds of terms each: 90 ulp here
        x[3, [0, 1, cols // 3]] = [0.0, -2 * eps, -eps]
    else:
        x = x[:3]
    wide = np.longdouble
    e = np.exp(x.astype(wide) - x.max(axis=-1, keepdims=True).astype(wide))
    want = e / e.sum(axis=-1, keepdims=True)
    scale = np.abs(want).max(axis=-1, keepdims=True) + 0 * want
    for where in ("out of place", "in place"):
        if where == "in place":
            y = x.copy()
            fg.forward("softmax", y, out=y, backend=backend)
        else:
            y = fg.forward("softmax", x, backend=backend)
        err = _ulp_error(y, want.astype(np.float64), scale, dtype)
        assert err.max() <= MAX_ULP, f"{backend} softmax {where}: {err.max():.1f} ulp"


# ---- threads ----------------------------------------------------------------------------

def _inputs(spec, dtype, n, rng):
    shape = (n // 256, 256) if spec.rowwise else (n,)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    return x, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_results_do_not_depend_on_alignment(dtype, rng):
    """The row kernels peel to 64-byte boundaries and buffer short softmax rows on the
    stack: a row gives bit-identical results wherever x and out start (rows up to and
    beyond the buffer's 2048 elements)."""
    for n in (1, 37, 1024, 2049, 3001):
        x0 = (rng.standard_normal((3, n)) * 5).astype(dtype)
        for name in ("softmax", "log_softmax"):
            want = None
            for off_x, off_out in ((0, 0), (1, 1), (4, 4), (3, 9), (15, 2)):
                x = np.zeros(x0.size + 16, dtype)[off_x:off_x + x0.size].reshape(x0.shape)
                out = np.zeros(x0.size + 16, dtype)[off_out:off_out + x0.size].reshape(
                    x0.shape)
                x[...] = x0
                _kernels.activation_forward(_kernels.KERNELS[name], x, out, 0.0, 0.0, 1)
                if want is None:
                    want = out.copy()
                np.testing.assert_array_equal(out, want, err_msg=f"{name} n={n} "
                                              f"offsets {off_x}, {off_out}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_split_never_changes_elementwise_results(dtype, rng):
    """Any forced thread count gives bit-identical results (chunks start at multiples of
    the vector block, and the ragged tail runs through the same vector body)."""
    n = 3 * 4096 + 37
    for spec in SPECS:
        k = _kernels.KERNELS[spec.name]
        x, g = _inputs(spec, dtype, n if not spec.rowwise else 256 * 49, rng)
        outs = []
        for nthreads in (1, 2, 3, 7):
            y = np.empty_like(x)
            gx = np.empty_like(x)
            _kernels.activation_forward(k, x, y, 1.0, 0.0, nthreads)
            _kernels.activation_backward(k, g, y if spec.needs == "y" else x, gx, 1.0, 0.0,
                                         nthreads)
            outs.append((y, gx))
        for y, gx in outs[1:]:
            np.testing.assert_array_equal(y, outs[0][0], err_msg=spec.name)
            np.testing.assert_array_equal(gx, outs[0][1], err_msg=spec.name)
        # The prefix of an array gives the same values as the whole array.
        if not spec.rowwise:
            part = np.empty(n - 20, dtype)
            _kernels.activation_forward(k, x[: n - 20].copy(), part, 1.0, 0.0, 1)
            np.testing.assert_array_equal(part, outs[0][0][: n - 20], err_msg=spec.name)


@pytest.fixture
def stream_min_bytes():
    """Sets the streaming-store threshold for one test, restoring it afterwards."""
    previous = _kernels._set_stream_min_bytes(0)
    try:
        yield _kernels._set_stream_min_bytes
    finally:
        _kernels._set_stream_min_bytes(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_stores_never_change_results(dtype, rng, stream_min_bytes):
    """Outputs written with streaming stores (large outputs of the memory-bound forward
    kernels, see fg_stream_copy) hold the same bits as ordinary stores: for every
    elementwise kernel, forward and backward (whichever of them stream), any length (chunks
    of 1024 and the ragged tail), any thread count, and outputs that start off a 16- or
    32-byte boundary (the copy's unaligned head and tail)."""
    n = 2 * 1024 + 3 * 16 + 5
    for spec in ELEMENTWISE:
        k = _kernels.KERNELS[spec.name]
        x, g = _inputs(spec, dtype, n, rng)
        saved = None
        results = []
        for threshold, nthreads, offset in ((2 ** 62, 1, 0), (0, 1, 0), (0, 1, 1), (0, 3, 3)):
            stream_min_bytes(threshold)
            buf_y, buf_g = np.empty(n + offset, dtype), np.empty(n + offset, dtype)
            y, gx = buf_y[offset:], buf_g[offset:]
            _kernels.activation_forward(k, x, y, 1.0, 0.0, nthreads)
            saved = y if spec.needs == "y" else x
            _kernels.activation_backward(k, g, saved, gx, 1.0, 0.0, nthreads)
            results.append((y.copy(), gx.copy()))
        for y, gx in results[1:]:
            np.testing.assert_array_equal(y, results[0][0], err_msg=spec.name)
            np.testing.assert_array_equal(gx, results[0][1], err_msg=spec.name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_row_kernels_never_change_results(dtype, rng, stream_min_bytes):
    """The row kernels' streamed output (softmax rows up to the stack buffer's length)
    holds the same bits as their ordinary one, at any row length, thread count and
    output alignment."""
    for spec in ROWWISE:
        k = _kernels.KERNELS[spec.name]
        for cols in (1, 7, 1024 + 5, 3000):
            x = (rng.standard_normal((9, cols)) * 5).astype(dtype)
            results = []
            for threshold, nthreads, offset in ((2 ** 62, 1, 0), (0, 1, 0), (0, 1, 1),
                                                (0, 2, 3)):
                stream_min_bytes(threshold)
                buf = np.empty(x.size + offset, dtype)
                y = buf[offset:].reshape(x.shape)
                _kernels.activation_forward(k, x, y, 0.0, 0.0, nthreads)
                results.append(y.copy())
            for y in results[1:]:
                np.testing.assert_array_equal(y, results[0], err_msg=f"{spec.name} {cols}")


def test_stream_threshold_is_checked():
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        _kernels._set_stream_min_bytes(-1)


_THREAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fastgrad as fg
    from fastgrad import _kernels
    n = 4 * max(_kernels.PARALLEL_MIN_TRANSCENDENTAL, _kernels.PARALLEL_MIN_MEMORY) + 37
    rng = np.random.default_rng(7)
    out = {"threads": _kernels.max_threads()}
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal(n) * 4).astype(dtype)
        g = rng.standard_normal(n).astype(dtype)
        for spec in fg.ACTIVATIONS.values():
            m = n // 256 * 256
            xs = x[:m].reshape(-1, 256)[:, :255] if spec.rowwise else x
            gs = g[:m].reshape(-1, 256)[:, :255] if spec.rowwise else g
            y = fg.forward(spec, xs, backend="cython")
            kw = {"y": y} if spec.needs == "y" else {"x": xs}
            gx = fg.backward(spec, gs, backend="cython", **kw)
            out[f"{spec.name}/{np.dtype(dtype).name}"] = [y.tobytes().hex(), gx.tobytes().hex()]
        W = rng.standard_normal((256, 64)).astype(dtype)
        xb = x[: 512 * 256].reshape(512, 256)
        yl, pre = fg.linear_forward(xb, W, activation="tanh", backend="cython", return_pre=True)
        grads = fg.linear_backward(np.ones_like(yl), xb, W, activation="tanh", y=yl,
                                   backend="cython")
        out[f"linear/{np.dtype(dtype).name}"] = [a.astype(np.float64).tolist()
                                                 for a in (yl[:4], *(q[:4] for q in grads))]
    json.dump(out, sys.stdout)
""")


def _run_with_threads(n: int, cwd) -> dict:
    env = subprocess_env(OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n))
    proc = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_omp_num_threads_1_and_2_agree(tmp_path):
    """Sizes above the thread thresholds: elementwise and row kernels bit-identical with 1
    and 2 threads; the dense layer (BLAS sums) within the reduction tolerance."""
    one, two = _run_with_threads(1, tmp_path), _run_with_threads(2, tmp_path)
    assert one.pop("threads") == 1
    assert two.pop("threads") == (2 if _kernels.OPENMP else 1)
    for key in one:
        if key.startswith("linear/"):
            for a, b in zip(one[key], two[key]):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=key)
        else:
            assert one[key] == two[key], f"{key} differs between 1 and 2 threads"


# ---- the raw entry points check their arguments ---------------------------------------

K = _kernels.KERNELS
_READ_ONLY = np.ones(10)
_READ_ONLY.setflags(write=False)


def test_direct_calls_reject_bad_arguments():
    x = np.ones(10)
    f32 = np.ones(10, np.float32)
    rows = np.ones((3, 4))
    cases = [
        (TypeError, "x must be a numpy.ndarray", lambda: _kernels.activation_forward(
            K["relu"], [1.0, 2.0], np.empty(2))),
        (TypeError, "x must be float32 or float64", lambda: _kernels.activation_forward(
            K["relu"], np.ones(3, int), np.empty(3))),
        (TypeError, "out has dtype float32, expected float64", lambda:
            _kernels.activation_forward(K["relu"], x, f32)),
        (ValueError, r"out has shape \(9,\), expected \(10,\)", lambda:
            _kernels.activation_forward(K["relu"], x, np.empty(9))),
        (ValueError, "x must be C-contiguous", lambda: _kernels.activation_forward(
            K["relu"], np.ones(20)[::2], np.empty(10))),
        (ValueError, "out is read-only", lambda: _kernels.activation_forward(
            K["relu"], x, _READ_ONLY)),
        (ValueError, "kernel must be an id", lambda: _kernels.activation_forward(
            99, x, np.empty(10))),
        (ValueError, "kernel must be an id", lambda: _kernels.activation_forward(
            -1, x, np.empty(10))),
        (ValueError, "x must be 2-D", lambda: _kernels.activation_forward(
            K["softmax"], x, np.empty(10))),
        (ValueError, "nthreads must be >= 0", lambda: _kernels.activation_forward(
            K["relu"], x, np.empty(10), 0.0, 0.0, -1)),
        (ValueError, "sigmoid backward needs saved", lambda: _kernels.activation_backward(
            K["sigmoid"], x, None, np.empty(10))),
        (ValueError, r"saved has shape \(9,\)", lambda: _kernels.activation_backward(
            K["relu"], x, np.ones(9), np.empty(10))),
        (TypeError, "saved has dtype float32", lambda: _kernels.activation_backward(
            K["relu"], x, f32, np.empty(10))),
        (ValueError, r"x has shape \(3, 4\) and W has shape \(5, 2\)", lambda:
            _kernels.linear_forward(K["relu"], rows, np.ones((5, 2)), None, np.empty((3, 2)))),
        (ValueError, r"bias has shape \(3,\), expected \(2,\)", lambda:
            _kernels.linear_forward(K["relu"], rows, np.ones((4, 2)), np.ones(3),
                                    np.empty((3, 2)))),
        (ValueError, r"pre has shape", lambda: _kernels.linear_forward(
            K["relu"], rows, np.ones((4, 2)), None, np.empty((3, 2)), np.empty((2, 3)))),
        (ValueError, "W must be 2-D", lambda: _kernels.linear_forward(
            K["relu"], rows, np.ones(4), None, np.empty((3, 2)))),
        (TypeError, "W has dtype float32", lambda: _kernels.linear_forward(
            K["relu"], rows, np.ones((4, 2), np.float32), None, np.empty((3, 2)))),
        (ValueError, r"grad_y has shape \(3, 3\), expected \(3, 2\)", lambda:
            _kernels.linear_backward(K["relu"], np.ones((3, 3)), rows, np.ones((4, 2)),
                                     np.ones((3, 3)))),
        (ValueError, "relu backward needs saved", lambda: _kernels.linear_backward(
            K["relu"], np.ones((3, 2)), rows, np.ones((4, 2)), None)),
        (ValueError, "must be aligned", lambda: _kernels.activation_forward(
            K["relu"], np.frombuffer(b"\0" * 81, np.uint8)[1:].view(np.float64),
            np.empty(10))),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_direct_calls_in_place_and_overlapping():
    x = np.linspace(-3.0, 3.0, 50)
    want = fg.forward("elu", x, backend="numpy")
    xc = x.copy()
    _kernels.activation_forward(K["elu"], xc, xc, 1.0)  # in place
    np.testing.assert_allclose(xc, want, rtol=1e-14)
    # out overlaps x shifted by one element: the input is copied first.
    buf = np.concatenate([[0.0], x])
    _kernels.activation_forward(K["elu"], buf[1:], buf[:-1], 1.0)
    np.testing.assert_allclose(buf[:-1], want, rtol=1e-14)
    # linear: out is x itself (square W): BLAS must not read what it writes.
    xs = np.arange(12.0).reshape(3, 4) / 10
    W = np.eye(4) * 2 + 0.1
    want = xs @ W
    _kernels.linear_forward(K["identity"], xs, W, None, xs)
    np.testing.assert_allclose(xs, want, rtol=1e-14)
    with pytest.raises(ValueError, match="pre and out overlap"):
        big = np.empty((4, 4))
        _kernels.linear_forward(K["relu"], xs, W, None, big[:3], big[1:])


def test_zero_sizes_direct():
    for n_rows, d_in, d_out in [(0, 3, 2), (3, 0, 2), (3, 2, 0)]:
        x, W = np.ones((n_rows, d_in)), np.ones((d_in, d_out))
        out = np.full((n_rows, d_out), np.nan)
        _kernels.linear_forward(K["relu"], x, W, np.full(d_out, 0.5), out)
        np.testing.assert_array_equal(out, np.full((n_rows, d_out), 0.5 if d_in == 0 else
                                                   float(d_in) + 0.5))
        gx, gW, gb = _kernels.linear_backward(K["relu"], np.ones((n_rows, d_out)), x, W, out)
        np.testing.assert_array_equal(gW, x.T @ np.ones((n_rows, d_out)))
        np.testing.assert_array_equal(gx, np.ones((n_rows, d_out)) @ W.T)
        np.testing.assert_array_equal(gb, np.full(d_out, float(n_rows)))
    _kernels.activation_forward(K["softmax"], np.ones((0, 3)), np.empty((0, 3)))
    _kernels.activation_forward(K["softmax"], np.ones((3, 0)), np.empty((3, 0)))
    _kernels.activation_forward(K["sigmoid"], np.ones(0), np.empty(0))


# ---- losses and optimizer updates -------------------------------------------------------

LOSS_SPECS = list(fg.LOSSES.values())
L = _kernels.LOSSES
UPDATES = ("sgd_update", "adam_update", "rmsprop_update")


def test_every_loss_and_update_has_a_compiled_kernel():
    assert set(_kernels.LOSSES) >= set(fg.LOSSES)
    for name, spec in fg.LOSSES.items():
        assert (name in _kernels.ROWWISE_LOSSES) == spec.rowwise, name
    for name in ("loss_forward", "loss_backward", *UPDATES):
        assert fg.backends.get_kernel(name, "cython") is getattr(cython_backend, name)
    for name in UPDATES:  # the compiled entry points themselves: no Python layer between
        assert getattr(cython_backend, name) is getattr(_kernels, name)


def test_a_missing_loss_makes_the_backend_unavailable(monkeypatch):
    monkeypatch.setitem(cython_backend._LOSS_IDS, "cross_entropy", None)
    with pytest.raises(ImportError, match="lacks loss 'cross_entropy'"):
        cython_backend.check_available()


def _loss_case(spec, dtype, seed, rows=257, cols=7):
    """Logits over several magnitudes (row scales 0.1 to 300) and a target of the loss's
    kind (soft labels for BCE, one-hot for cross-entropy)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, cols)) * rng.choice([0.1, 3.0, 30.0, 300.0], (rows, 1))
    if spec.rowwise:
        t = np.eye(cols)[rng.integers(0, cols, rows)]
    elif spec.name == "binary_cross_entropy":
        t = rng.uniform(0, 1, (rows, cols))
    else:
        t = rng.standard_normal((rows, cols)) * 3
    return z.astype(dtype), t.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", LOSS_SPECS, ids=[s.name for s in LOSS_SPECS])
def test_loss_ulp_error(spec, dtype):
    """The reference's formulas in long double as the oracle. The value (a Python float,
    computed in double for both dtypes) within MAX_ULP double ulps of the mean of its
    terms' magnitudes (the terms cancel: max(z, 0) - z t, lse - z); the gradient within
    MAX_ULP ulps of its dtype relative to its terms (|softmax or sigmoid| + |t|), for
    cross_entropy the row's largest (exp(z - m) inherits the rounding of z - m amplified
    |z - m| times, in the reference as here)."""
    wide = np.longdouble
    for seed in range(3):
        z, t = _loss_case(spec, dtype, seed)
        zw, tw = z.astype(wide), t.astype(wide)
        count = len(z) if spec.rowwise else z.size
        want = reference._LOSS_VALUE[spec.name](zw, tw).mean()
        want_g = reference._LOSS_GRAD[spec.name](zw, tw) / count
        if spec.name == "mse":
            terms = reference._LOSS_VALUE["mse"](zw, tw)
        elif spec.name == "binary_cross_entropy":
            terms = np.maximum(zw, 0) + np.abs(zw * tw) + np.log1p(np.exp(-np.abs(zw)))
        else:
            m = zw.max(axis=1, keepdims=True)
            lse = m + np.log(np.exp(zw - m).sum(axis=1, keepdims=True))
            terms = (tw * (np.abs(lse) + np.abs(zw))).sum(axis=1)
        value = _kernels.loss_forward(L[spec.name], z, t)
        err = _ulp_error(np.array(value), float(want), float(terms.mean()), np.float64)
        assert err <= MAX_ULP, f"{spec.name} value: {float(err):.1f} ulp (seed {seed})"
        grad = np.empty_like(z)
        _kernels.loss_backward(L[spec.name], z, t, grad)
        scale = (np.abs(want_g * count + tw) + np.abs(tw)) / count
        if spec.rowwise:
            scale = scale.max(axis=1, keepdims=True) + 0 * scale
        err = _ulp_error(grad, want_g.astype(np.float64), scale.astype(np.float64), dtype)
        assert err.max() <= MAX_ULP, f"{spec.name} grad: {err.max():.1f} ulp (seed {seed})"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", LOSS_SPECS, ids=[s.name for s in LOSS_SPECS])
def test_loss_nan_and_inf_as_the_reference(spec, dtype):
    """NaN in gives NaN out where the reference gives it (for cross_entropy the whole row;
    an infinite logit makes its row NaN through inf - inf); extreme finite logits stay
    finite."""
    z = np.array([[np.nan, 1.0, 2.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0],
                  [1e30, -1e30, 0.0], [3.0, -2.0, 0.5]], dtype)
    t = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]], dtype)
    k = L[spec.name]
    for rows in ([0], [1], [2], [3], [4], [3, 4], [0, 1, 2, 3, 4]):
        zz, tt = z[rows].copy(), t[rows].copy()
        with np.errstate(all="ignore"):
            want = fg.loss(spec.name, zz, tt, backend="numpy")
            want_g = fg.loss_grad(spec.name, zz, tt, backend="numpy")
        got = _kernels.loss_forward(k, zz, tt)
        got_g = np.empty_like(zz)
        _kernels.loss_backward(k, zz, tt, got_g)
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True,
                                   err_msg=f"{spec.name} value, rows {rows}")
        np.testing.assert_allclose(got_g, want_g, rtol=1e-6, atol=1e-30, equal_nan=True,
                                   err_msg=f"{spec.name} grad, rows {rows}")


def _update_case(name, dtype, rng, n=203):
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    k = 1 if name == "sgd_update" else 2
    # Non-negative second moments, as an optimizer's state always is.
    return p, g, [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(k)]


UPDATE_CASES = [
    ("sgd_update", (0.1, 0.0, 0.0, False)),
    ("sgd_update", (0.1, 0.9, 0.01, False)),
    ("sgd_update", (0.05, 0.8, 0.01, True)),
    ("adam_update", (1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)),
    ("adam_update", (1e-2, 0.8, 0.99, 1e-6, 0.05, False, 7)),
    ("adam_update", (1e-2, 0.9, 0.999, 1e-8, 0.1, True, 1000)),
    ("rmsprop_update", (1e-2, 0.99, 1e-8, 0.0, 0.0)),
    ("rmsprop_update", (1e-2, 0.9, 1e-6, 0.01, 0.5)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", UPDATE_CASES, ids=[f"{n}-{i}" for i, (n, _) in
                                                    enumerate(UPDATE_CASES)])
def test_updates_are_the_reference_bit_for_bit(case, dtype, rng):
    """One pass in double with the reference's operations in its order, each state and the
    parameter rounded once: identical bits to the numpy reference, NaN and inf included,
    over several steps (no FMA contraction: setup.py builds with -ffp-contract=off).
    Adam hoists its bias corrections (as PyTorch does): its m and v are the reference's
    bits, its parameter within 6 ulps of max(|p|, |step|): each form's ~6 roundings of the
    step contribute up to ~3 ulps (seen here: 99% equal, at most 4 in 1.8M float64
    elements; float32 rounds both to the same bits)."""
    name, args = case
    p, g, state = _update_case(name, dtype, rng)
    g[:3] = [np.nan, np.inf, -np.inf]
    ours = [p.copy(), *(s.copy() for s in state)]
    ref = [p.copy(), *(s.copy() for s in state)]
    for step in range(4):
        gs = (g * dtype(1 + step)).astype(dtype)
        if name == "adam_update":
            args = (*args[:-1], args[-1] + step)
        before = ref[0].copy()
        getattr(_kernels, name)(ours[0], gs, *ours[1:], *args)
        with np.errstate(invalid="ignore"):  # the NaN the inf gradients make, on purpose
            getattr(reference, name)(ref[0], gs, *ref[1:], *args)
        for a, b in zip(ours[1:], ref[1:]):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}{args} step {step}")
        if name != "adam_update":
            np.testing.assert_array_equal(ours[0], ref[0], err_msg=f"{name}{args} {step}")
            continue
        np.testing.assert_array_equal(np.isnan(ours[0]), np.isnan(ref[0]))
        with np.errstate(invalid="ignore"):
            scale = np.maximum(np.abs(ref[0]), np.abs(before - ref[0]))
        err = _ulp_error(ours[0], ref[0], np.nan_to_num(scale), dtype)
        assert np.nanmax(err) <= 6, f"{name}{args} step {step}: {np.nanmax(err)} ulp"
        ours[0][...] = ref[0]  # each step from the same parameters


def test_direct_loss_and_update_calls_reject_bad_arguments():
    z = np.zeros((3, 2))
    f32 = np.zeros((3, 2), np.float32)
    p = np.zeros(5)
    p32 = np.zeros(5, np.float32)
    ro = np.zeros(5)
    ro.setflags(write=False)
    big = np.zeros(12)
    cases = [
        (ValueError, "loss must be an id", lambda: _kernels.loss_forward(3, z, z)),
        (ValueError, "loss must be an id", lambda: _kernels.loss_forward(True, z, z)),
        (TypeError, "pred must be a numpy.ndarray", lambda: _kernels.loss_forward(
            L["mse"], [[0.0]], z)),
        (TypeError, "pred must be float32 or float64", lambda: _kernels.loss_forward(
            L["mse"], np.zeros((3, 2), int), z)),
        (TypeError, "target has dtype float32, expected float64", lambda:
            _kernels.loss_forward(L["mse"], z, f32)),
        (ValueError, r"target has shape \(2, 3\), expected \(3, 2\)", lambda:
            _kernels.loss_forward(L["cross_entropy"], z, np.zeros((2, 3)))),
        (ValueError, "pred must be 2-D", lambda: _kernels.loss_forward(
            L["mse"], np.zeros(3), np.zeros(3))),
        (ValueError, "pred must be non-empty", lambda: _kernels.loss_forward(
            L["cross_entropy"], np.zeros((3, 0)), np.zeros((3, 0)))),
        (ValueError, "target must be C-contiguous", lambda: _kernels.loss_forward(
            L["mse"], z, np.zeros((2, 3)).T)),
        (TypeError, "out has dtype float32, expected float64", lambda:
            _kernels.loss_backward(L["mse"], z, z, f32)),
        (ValueError, r"out has shape \(2, 3\), expected \(3, 2\)", lambda:
            _kernels.loss_backward(L["binary_cross_entropy"], z, z, np.zeros((2, 3)))),
        (ValueError, "out is read-only", lambda: _kernels.loss_backward(
            L["mse"], z, z, _READ_ONLY[:6].reshape(3, 2))),
        (ValueError, "param must be 1-D", lambda: _kernels.sgd_update(
            z, z, z, 0.1, 0.0, 0.0, False)),
        (TypeError, "grad has dtype float32, expected float64", lambda:
            _kernels.sgd_update(p, p32, np.zeros(5), 0.1, 0.0, 0.0, False)),
        (ValueError, r"velocity has shape \(4,\), expected \(5,\)", lambda:
            _kernels.sgd_update(p, p, np.zeros(4), 0.1, 0.9, 0.0, False)),
        (ValueError, "param is read-only", lambda: _kernels.sgd_update(
            ro, p, np.zeros(5), 0.1, 0.0, 0.0, False)),
        (ValueError, "m is read-only", lambda: _kernels.adam_update(
            np.zeros(5), p, ro, np.zeros(5), 0.1, 0.9, 0.999, 1e-8, 0.0, False, 1)),
        (ValueError, "step must be >= 1", lambda: _kernels.adam_update(
            np.zeros(5), p, np.zeros(5), np.zeros(5), 0.1, 0.9, 0.999, 1e-8, 0.0, False, 0)),
        (ValueError, "v and m overlap", lambda: _kernels.adam_update(
            np.zeros(5), p, big[:5], big[2:7], 0.1, 0.9, 0.999, 1e-8, 0.0, False, 1)),
        (ValueError, "velocity and param overlap", lambda: _kernels.sgd_update(
            big[:5], p, big[4:9], 0.1, 0.9, 0.0, False)),
        (ValueError, "momentum_buf and square_avg overlap", lambda: _kernels.rmsprop_update(
            np.zeros(5), p, big[:5], big[:5], 0.1, 0.99, 1e-8, 0.0, 0.0)),
        (TypeError, "square_avg must be a numpy.ndarray", lambda: _kernels.rmsprop_update(
            np.zeros(5), p, None, np.zeros(5), 0.1, 0.99, 1e-8, 0.0, 0.0)),
        (ValueError, "grad must be C-contiguous", lambda: _kernels.rmsprop_update(
            np.zeros(5), big[::2][:5], np.zeros(5), np.zeros(5), 0.1, 0.99, 1e-8, 0.0, 0.0)),
        (TypeError, "must be real number", lambda: _kernels.sgd_update(
            np.zeros(5), p, np.zeros(5), "0.1", 0.0, 0.0, False)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_direct_loss_and_update_calls_in_place_and_overlapping(rng):
    z = rng.standard_normal((4, 3))
    t = np.eye(3)[[0, 2, 1, 1]]
    want = fg.loss_grad("cross_entropy", z, t, backend="numpy")
    zc = z.copy()
    _kernels.loss_backward(L["cross_entropy"], zc, t, zc)  # out is pred: in place
    np.testing.assert_allclose(zc, want, rtol=1e-14)
    buf = np.concatenate([[0.0], z.ravel()])  # out overlaps pred shifted by one element
    _kernels.loss_backward(L["cross_entropy"], buf[1:].reshape(4, 3), t,
                           buf[:-1].reshape(4, 3))
    np.testing.assert_allclose(buf[:-1].reshape(4, 3), want, rtol=1e-14)
    # grad that partly overlaps the parameter is read as it was before the update.
    buf = rng.standard_normal(8)
    p, g = buf[:6].copy(), buf[2:].copy()
    ref_p = p.copy()
    reference.sgd_update(ref_p, g, np.zeros(6), 0.1, 0.0, 0.0, False)
    _kernels.sgd_update(buf[:6], buf[2:], np.zeros(6), 0.1, 0.0, 0.0, False)
    np.testing.assert_array_equal(buf[:6], ref_p)
    # Zero-size parameter vectors are a no-op.
    _kernels.adam_update(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 0.1, 0.9,
                         0.999, 1e-8, 0.0, True, 1)


# ---- the wheel --------------------------------------------------------------------------

@pytest.mark.slow
def test_built_wheel_installs_and_imports(tmp_path):
    """`pip wheel .` builds the extension from a copy of the source; the wheel installed
    into an empty target imports fastgrad._kernels with the source tree out of the way."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.so", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "_kernels.c", ".venv*", ".benchmarks"))
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-w", str(wheels)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("fastgrad-*.whl")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
         str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    check = textwrap.dedent("""
        import numpy as np, fastgrad, fastgrad._kernels as k
        assert fastgrad.__file__.startswith(TARGET), fastgrad.__file__
        x = np.linspace(-2, 2, 9, dtype=np.float32)
        y = fastgrad.sigmoid_forward(x, backend="cython")
        np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-6)
        assert "cython" in fastgrad.available_backends()
        print(k.OPENMP, k.VECTOR_MATH)
    """).replace("TARGET", repr(str(target)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                         text=True, env=dict(env, PYTHONPATH=str(target)), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


# ---- the fused epoch runner's entry point (fastgrad/_train.pxi) -------------------------

def _train_args(dtype=np.float64, sizes=(3, 4, 2), n=10, B=4, epochs=1, gather=False,
                seed=0, loss="cross_entropy", optimizer="adam", parts=1, nthreads=0):
    """Valid keyword arguments of _kernels.train_epochs: a small MLP, one-hot targets."""
    rng = np.random.default_rng(seed)
    L_ = len(sizes) - 1
    P = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(L_))
    nb = -(-n // B)
    T = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], n)]
    orders = (np.stack([rng.permutation(n) for _ in range(epochs)]) if gather
              else np.zeros((epochs, 0), np.int64))
    return dict(
        params=rng.uniform(-0.5, 0.5, P).astype(dtype), grads=np.zeros(P, dtype),
        state_a=np.zeros(P, dtype), state_b=np.zeros(P, dtype),
        X=rng.standard_normal((n, sizes[0])).astype(dtype), T=T, orders=orders,
        sizes=np.array(sizes, np.int64),
        kernels=np.array([K["tanh"]] * (L_ - 1) + [K["identity"]], np.int32),
        act=np.zeros((L_, 2)), saved=np.array([2] * (L_ - 1) + [0], np.int32),
        loss=L[loss], optimizer=_kernels.TRAIN_OPTIMIZERS.index(optimizer),
        hyper=np.array([0.05, 0.0, 0.9, 0.999, 1e-8, 0.0, 0.99, 0.0, 0.0]),
        nesterov=False, sklearn_decay=False, batch_size=B,
        workspace=np.zeros(_kernels.train_workspace_size(sizes, B, dtype, parts), dtype),
        batch_loss=np.zeros(epochs * nb), grad_sq=np.zeros((epochs * nb, L_)),
        step=np.zeros(1, np.int64), parts=parts, nthreads=nthreads)


def test_train_epochs_direct_calls_reject_bad_arguments():
    """Every argument is checked before the nogil loop: a bad one raises naming it, and
    nothing is written."""
    ro = np.zeros(26)
    ro.setflags(write=False)
    shared = np.zeros(52)
    cases = [
        ({"params": [0.0] * 26}, TypeError, "params must be a numpy.ndarray"),
        ({"params": np.zeros(26, np.int64)}, TypeError, "params must be float32 or float64"),
        ({"params": np.zeros((2, 13))}, ValueError, "params must be 1-D"),
        ({"params": ro}, ValueError, "params is read-only"),
        ({"params": np.zeros(27), "grads": np.zeros(27), "state_a": np.zeros(27),
          "state_b": np.zeros(27)}, ValueError, r"params has 27 elements; sizes \[3, 4, 2\]"),
        ({"grads": np.zeros(26, np.float32)}, TypeError, "grads has dtype float32"),
        ({"grads": np.zeros(52)[::2]}, ValueError, "grads must be C-contiguous"),
        ({"state_a": np.zeros(25)}, ValueError, r"state_a has shape \(25,\)"),
        ({"state_b": ro}, ValueError, "state_b is read-only"),
        ({"grads": shared[:26], "state_a": shared[20:46]}, ValueError,
         "state_a and grads overlap"),
        ({"workspace": np.zeros(10)}, ValueError, "workspace has 10 elements"),
        ({"X": np.zeros((10, 4))}, ValueError, r"X has shape \(10, 4\), expected \(10, 3\)"),
        ({"X": np.zeros(30)}, ValueError, "X must be 2-D"),
        ({"T": np.zeros((9, 2))}, ValueError, r"T has shape \(9, 2\), expected \(10, 2\)"),
        ({"T": np.zeros((10, 2), np.float32)}, TypeError, "T has dtype float32"),
        ({"orders": np.zeros((1, 10), np.int32)}, TypeError, "orders must be an int64"),
        ({"orders": np.zeros((1, 9), np.int64)}, ValueError, r"orders must be C-contiguous"),
        ({"orders": np.full((1, 10), 10, np.int64)}, ValueError,
         r"orders must hold row indices in \[0, 10\)"),
        ({"orders": np.full((1, 10), -1, np.int64)}, ValueError, "orders must hold row"),
        ({"sizes": np.array([3, 4, 2], np.int32)}, TypeError, "sizes has dtype int32"),
        ({"sizes": np.array([3], np.int64)}, ValueError, "at least 2 layer sizes"),
        ({"sizes": np.array([3, 0, 2], np.int64)}, ValueError, r"sizes must be in \[1,"),
        ({"kernels": np.array([K["tanh"]], np.int32)}, ValueError, r"kernels has shape"),
        ({"kernels": np.array([K["tanh"], 99], np.int32)}, ValueError,
         "kernel must be an id"),
        ({"saved": np.array([3, 0], np.int32)}, ValueError, "saved must hold codes"),
        ({"act": np.zeros((2, 3))}, ValueError, r"act has shape \(2, 3\)"),
        ({"act": np.zeros((2, 2), np.float32)}, TypeError, "act must be a float64"),
        ({"loss": 7}, ValueError, "loss must be an id"),
        ({"optimizer": len(_kernels.TRAIN_OPTIMIZERS)}, ValueError, "optimizer must be an index"),
        ({"optimizer": -1}, ValueError, "optimizer must be an index"),
        ({"hyper": np.zeros(8)}, ValueError, r"hyper has shape \(8,\)"),
        ({"batch_size": 0}, ValueError, r"batch_size must be in \[1,"),
        ({"batch_loss": np.zeros(2)}, ValueError, "batch_loss must be 1-D with >= 3"),
        ({"batch_loss": np.zeros(3, np.float32)}, TypeError, "batch_loss has dtype"),
        ({"grad_sq": np.zeros((3, 3))}, ValueError, r"grad_sq must be 2-D \(>= 3, 2\)"),
        ({"grad_sq": np.zeros((2, 2))}, ValueError, "grad_sq must be 2-D"),
        ({"step": np.zeros(2, np.int64)}, ValueError, r"step has shape \(2,\)"),
        ({"parts": 0}, ValueError, "parts must be >= 1, got 0"),
        ({"nthreads": 2}, ValueError, r"nthreads must be in \[0, parts = 1\], got 2"),
        ({"nthreads": -1}, ValueError, r"nthreads must be in \[0, parts = 1\], got -1"),
        ({"parts": 2}, ValueError, r"workspace has \d+ elements; .* in 2 part\(s\) need"),
    ]
    for change, exc, match in cases:
        args = _train_args()
        before = args["params"].copy()
        args.update(change)
        with pytest.raises(exc, match=match):
            _kernels.train_epochs(**args)
        if "params" not in change:
            np.testing.assert_array_equal(args["params"], before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, optimizer, sizes", [
    ("cross_entropy", "adam", (3, 4, 2)), ("mse", "sgd", (5, 3)),
    ("cross_entropy", "sgd_dtype", (3, 4, 2)),
    ("binary_cross_entropy", "rmsprop", (2, 40, 3, 1)), ("cross_entropy", "adamw", (4, 6, 40)),
    ("cross_entropy", "adam_dtype", (3, 4, 2)), ("mse", "adamw_dtype", (4, 6, 40))])
@pytest.mark.parametrize("n, B, gather, parts, nthreads", [
    (10, 4, False, 1, 1), (10, 4, True, 1, 1), (3, 8, True, 1, 1), (16, 16, False, 1, 1),
    (10, 4, True, 3, 3), (10, 4, True, 3, 2), (3, 8, False, 2, 2)])
def test_train_epochs_stays_inside_its_arrays(dtype, loss, optimizer, sizes, n, B, gather,
                                              parts, nthreads):
    """Every array the call writes sits between guard elements, the workspace exactly
    sized (a short last batch, a batch larger than the data, a wide output layer that skips
    the transposed copy, batches in parts, some of them with no rows, on as many threads or
    fewer): the guards keep their values, and gathering rows in an order trains as the
    rows put in that order do."""
    args = _train_args(dtype, sizes, n, B, epochs=2, gather=gather, loss=loss,
                       optimizer=optimizer, parts=parts, nthreads=nthreads)
    if loss != "cross_entropy":
        args["T"] = np.random.default_rng(1).uniform(0, 1, args["T"].shape).astype(dtype)
    args["hyper"][1] = 0.5 if optimizer in ("sgd", "sgd_dtype", "rmsprop") else 0.0
    args["hyper"][7:] = (1.0, 0.3)  # clip_norm, clip_value
    plain = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    guard = 7
    for name in ("params", "grads", "state_a", "state_b", "workspace", "batch_loss",
                 "grad_sq", "step"):
        a = args[name]
        buf = np.full(a.size + 2 * guard, -12345, a.dtype)
        buf[guard:guard + a.size] = a.ravel()
        args[name] = buf[guard:guard + a.size].reshape(a.shape)
        args[name + "_buf"] = buf
    bufs = {k: args.pop(k) for k in list(args) if k.endswith("_buf")}
    nb = -(-n // B)
    assert _kernels.train_epochs(**args) == 2 * nb
    for name, buf in bufs.items():
        assert np.all(buf[:guard] == -12345) and np.all(buf[-guard:] == -12345), name
    assert args["step"][0] == 2 * nb and np.all(np.isfinite(args["params"]))
    # the same epochs with the rows put in each epoch's order, batches as views
    if gather:
        for e in range(2):
            one = {**plain, "X": np.ascontiguousarray(plain["X"][plain["orders"][e]]),
                   "T": np.ascontiguousarray(plain["T"][plain["orders"][e]]),
                   "orders": np.zeros((1, 0), np.int64), "batch_loss": np.zeros(nb),
                   "grad_sq": np.zeros((nb, len(sizes) - 1))}
            assert _kernels.train_epochs(**one) == nb
            np.testing.assert_array_equal(one["batch_loss"],
                                          args["batch_loss"][e * nb:(e + 1) * nb])
        np.testing.assert_array_equal(plain["params"], args["params"])
        np.testing.assert_array_equal(plain["state_b"], args["state_b"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimizer", ["adam_dtype", "adamw_dtype"])
def test_train_epochs_adam_in_the_dtype_is_pytorchs_update(dtype, optimizer):
    """adam_dtype / adamw_dtype update in the arrays' own arithmetic (PyTorch's float32
    Adam, the numba runner's): one batch from zero state, against the formula evaluated in
    the dtype by NumPy from the gradient the call leaves in grads, bit for bit."""
    args = _train_args(dtype, (3, 4, 2), n=4, B=4, optimizer=optimizer)
    lr, b1, b2, eps, wd = 0.05, 0.9, 0.999, 1e-8, 0.01
    args["hyper"][[0, 2, 3, 4, 5]] = (lr, b1, b2, eps, wd)
    p0 = args["params"].copy()
    assert _kernels.train_epochs(**args) == 1
    f = np.dtype(dtype).type
    g, p = args["grads"], p0.copy()
    if optimizer == "adamw_dtype":
        p *= f(1) - f(lr) * f(wd)
    else:
        g = g + f(wd) * p
    m = f(b1) * np.zeros_like(p) + (f(1) - f(b1)) * g
    v = f(b2) * np.zeros_like(p) + (f(1) - f(b2)) * g * g
    step_size = f(lr / (1.0 - b1))
    inv_sqrt_bc2 = f(1.0 / np.sqrt(1.0 - b2))
    p -= step_size * m / (np.sqrt(v) * inv_sqrt_bc2 + f(eps))
    np.testing.assert_array_equal(args["state_a"], m)
    np.testing.assert_array_equal(args["state_b"], v)
    np.testing.assert_array_equal(args["params"], p)
    if dtype == np.float32:  # through double (the "adam" codes) the bits differ
        ref = _train_args(dtype, (3, 4, 2), n=4, B=4, optimizer=optimizer[:-6])
        ref["hyper"][:] = args["hyper"]
        _kernels.train_epochs(**ref)
        np.testing.assert_allclose(ref["params"], p, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(ref["params"], p)


def _train_copy(args: dict, parts: int, nthreads: int) -> dict:
    """A run of a copy of args with each batch in `parts` parts on nthreads threads; the
    batches completed in run["done"]."""
    run = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    run["parts"], run["nthreads"] = parts, nthreads
    run["workspace"] = np.zeros(_kernels.train_workspace_size(
        run["sizes"], run["batch_size"], run["params"].dtype, parts), run["params"].dtype)
    run["done"] = _kernels.train_epochs(**run)
    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss, optimizer, clip, sklearn", [
    ("cross_entropy", "adam_dtype", False, False), ("mse", "sgd", True, False),
    ("binary_cross_entropy", "rmsprop", False, True), ("cross_entropy", "adamw", True, True),
    ("cross_entropy", "sgd_dtype", False, True)])
@pytest.mark.parametrize("parts", [2, 3])
def test_train_epochs_in_parts_trains_as_one_batch(dtype, loss, optimizer, clip, sklearn,
                                                   parts):
    """Batches split in parts (data-parallel: each part's gradient, then their sum) train
    as whole batches do but for the rounding of those sums: the same batches, losses,
    norms and parameters to rounding, the same step count. Any number of threads runs the
    parts to the same bits (the arithmetic is the parts'). A wide net (20 -> 64 -> 40, a
    short last batch, rows gathered in an order) whose parameters split into slices of
    whole cache lines across layer boundaries."""
    sizes = (20, 64, 40) if loss == "cross_entropy" else (20, 64, 1)
    args = _train_args(dtype, sizes, n=70, B=16, epochs=2, gather=True, loss=loss,
                       optimizer=optimizer)
    if loss != "cross_entropy":
        args["T"] = np.random.default_rng(1).uniform(0, 1, args["T"].shape).astype(dtype)
    args["hyper"][0] = 0.01
    args["hyper"][1] = 0.5 if optimizer in ("sgd", "sgd_dtype", "rmsprop") else 0.0
    args["hyper"][5] = 1e-3  # weight decay (scikit-learn's L2 with sklearn_decay)
    args["sklearn_decay"] = sklearn
    if clip:
        args["hyper"][7:] = (0.5, 0.05)  # clip_norm, clip_value: both bite
    whole = _train_copy(args, 1, 1)
    split = _train_copy(args, parts, parts)
    nb = 2 * 5
    assert whole["done"] == split["done"] == nb
    assert whole["step"][0] == split["step"][0] == nb
    rtol = 2e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(split["batch_loss"], whole["batch_loss"], rtol=rtol)
    np.testing.assert_allclose(split["grad_sq"], whole["grad_sq"], rtol=10 * rtol)
    scale = np.abs(whole["params"]).max()
    np.testing.assert_allclose(split["params"], whole["params"], rtol=rtol, atol=rtol * scale)
    # the batches really were split: sums split by rows round otherwise
    assert not np.array_equal(split["params"], whole["params"])
    for threads in range(1, parts + 1):
        again = _train_copy(args, parts, threads)
        for name in ("params", "grads", "state_a", "state_b", "batch_loss", "grad_sq"):
            np.testing.assert_array_equal(again[name], split[name],
                                          err_msg=f"{name}, {threads} thread(s)")


def test_train_epochs_in_parts_leaves_blas_threads_as_they_were():
    """The threads of a data-parallel call run BLAS on one thread each: the call puts
    SciPy's OpenBLAS on one thread and back to what it was."""
    tpc = pytest.importorskip("threadpoolctl", reason="threadpoolctl is an optional dependency")
    before = _kernels.blas_threads()
    if before == 0:
        pytest.skip("SciPy's BLAS exports no OpenBLAS thread setter")
    args = _train_args(np.float32, (20, 64, 40), n=64, B=32, parts=2)
    with tpc.threadpool_limits(limits=2, user_api="blas"):
        assert _kernels.blas_threads() == 2
        assert _kernels.train_epochs(**args) == 2
        assert _kernels.blas_threads() == 2
    assert _kernels.blas_threads() == before


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux's /proc")
def test_train_threads_free_knows_its_pool_and_sees_other_threads():
    """train_threads_free leaves out the caller and the OpenMP pool that runs the parts
    (libgomp's workers spin for milliseconds after each region: counted, they would keep
    the runner on one thread), and sees another thread of the process running."""
    import threading
    import time

    if _kernels.max_threads() < 2 or (os.cpu_count() or 1) < 2 or not _kernels.OPENMP:
        pytest.skip("one core or no OpenMP: no team to learn")
    args = _train_args(np.float32, (20, 64, 40), n=64, B=32, parts=2)
    assert _kernels.train_epochs(**args) == 2
    tids = _kernels.train_worker_tids()  # the last team's: one worker beside the caller
    assert len(tids) == 1 and set(tids) <= {int(t) for t in os.listdir("/proc/self/task")}
    assert threading.get_native_id() not in tids  # the caller is not a worker
    time.sleep(2 * _kernels._FREE_MAX_AGE)
    # right after a region its worker spins: still free (unless another program runs)
    assert _kernels.train_epochs(**args) == 2
    free_after_region = _kernels.train_threads_free(2)
    with spinning(2.0):  # a thread of this process running without the GIL
        deadline = time.monotonic() + 1.5
        seen_busy = False
        while not seen_busy and time.monotonic() < deadline:
            time.sleep(2 * _kernels._FREE_MAX_AGE)
            seen_busy = not _kernels.train_threads_free(2)
    assert seen_busy
    if not free_after_region:
        other = int(open("/proc/loadavg").read().split()[3].split("/")[0]) > 1
        assert other, "only this process's pool ran, yet the cores counted as taken"


@pytest.mark.parametrize("parts", [1, 2])
def test_train_epochs_stops_before_the_update_of_a_non_finite_batch(parts):
    args = _train_args(n=12, B=4, parts=parts)
    args["X"][5, 0] = np.nan  # batch 1
    before = args["params"].copy()
    assert _kernels.train_epochs(**args) == 1
    assert args["step"][0] == 1
    assert np.isnan(args["batch_loss"][1]) and np.all(np.isfinite(args["params"]))
    assert not np.array_equal(args["params"], before)  # batch 0's update only
    assert not np.all(np.isfinite(args["grads"]))  # batch 1's gradient, for the diagnosis


def test_train_epochs_releases_the_gil():
    """The whole call runs without the GIL: Python in another thread keeps running while
    it trains (the main thread timestamps its loop all through the call)."""
    import threading
    import time
    args = _train_args(np.float32, (16, 32, 4), n=256, B=32, epochs=1)
    args["orders"] = np.zeros((2000, 0), np.int64)  # 2000 epochs of 8 batches in one call
    args["batch_loss"] = np.zeros(2000 * 8)
    args["grad_sq"] = np.zeros((2000 * 8, 2))
    span = []

    def train():
        t0 = time.perf_counter()
        _kernels.train_epochs(**args)
        span.extend((t0, time.perf_counter()))

    worker = threading.Thread(target=train)
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    assert args["step"][0] == 2000 * 8
    start, end = span
    assert end - start > 0.02, "the call must last long enough to tell"
    # The loop ran through the call: no gap in its stamps as long as half the call (the
    # GIL held from the call's validation to its end would leave one that long at least).
    inside = [t for t in stamps if start < t < end]
    gaps = np.diff([start, *inside, end])
    assert len(inside) > 100 and gaps.max() < 0.5 * (end - start), (
        len(inside), gaps.max(), end - start)


def test_train_epochs_counts_the_batches_without_overflow():
    """(E, 0) orders take no memory, so E can be 2^59: E * n_batches (here 2^63) must not
    wrap around in the length checks of batch_loss and grad_sq (it did, and the call wrote
    past a one-element batch_loss)."""
    args = _train_args(n=16, B=1)  # 16 batches an epoch
    args["X"][1, 0] = np.nan  # batch 1 stops the call (after writing its records)
    guard = 7
    loss_buf = np.full(1 + 2 * guard, -12345.0)
    sq_buf = np.full(2 + 2 * guard, -12345.0)
    args["batch_loss"] = loss_buf[guard:guard + 1]
    args["grad_sq"] = sq_buf[guard:guard + 2].reshape(1, 2)
    args["orders"] = np.zeros((2**59, 0), np.int64)
    with pytest.raises(ValueError, match=r"batch_loss must be 1-D with >= 9223372036854775808"):
        _kernels.train_epochs(**args)
    assert np.all(loss_buf[guard + 1:] == -12345) and np.all(sq_buf[guard + 2:] == -12345)
    assert args["step"][0] == 0


_ALIASED_INPUTS = r"""
import numpy as np
from fastgrad import _kernels
from test_cython import _train_args


def aliased(which):
    # an input the loop reads per batch placed in memory the loop writes
    args = _train_args(n=8, B=2, gather=True)
    ws, g = args["workspace"], args["grads"]
    if which == "orders":  # in the first layer's z (batch 0's forward writes it)
        ws[:8] = args["orders"].view(np.float64).ravel()
        args["orders"] = ws[:8].view(np.int64).reshape(1, 8)
    elif which == "sizes":  # in the gradient buffer
        g[:3] = args["sizes"].view(np.float64)
        args["sizes"] = g[:3].view(np.int64)
    else:  # kernel ids in the workspace
        ws[:1] = args["kernels"].view(np.float64)
        args["kernels"] = ws[:1].view(np.int32)
    return args


for which in ("orders", "sizes", "kernels"):
    args = aliased(which)
    apart = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    apart["workspace"] = np.zeros_like(args["workspace"])
    apart["grads"] = np.zeros_like(args["grads"])
    done = _kernels.train_epochs(**args)
    assert done == _kernels.train_epochs(**apart) == 4, which
    # trained as with the inputs' values at the call, in arrays of their own
    np.testing.assert_array_equal(args["params"], apart["params"], err_msg=which)
    np.testing.assert_array_equal(args["batch_loss"], apart["batch_loss"], err_msg=which)
    print(which, "ok")
"""


def test_train_epochs_inputs_sharing_memory_with_its_outputs(tmp_path):
    """An input read batch after batch (row orders, layer sizes, kernel ids) that lies in
    memory the loop writes is copied at the call: the loop used to read it back after
    overwriting it and run out of bounds (a segmentation fault; hence a subprocess)."""
    env = subprocess_env()
    env["PYTHONPATH"] += os.pathsep + str(pathlib.Path(__file__).parent)  # test_cython
    # cwd away from the checkout: `python -c` puts the cwd first on sys.path, and the
    # checkout's fastgrad/ (no compiled module when installed as a wheel) would shadow it
    run = subprocess.run([sys.executable, "-c", _ALIASED_INPUTS], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr[-3000:])
    assert run.stdout.split() == ["orders", "ok", "sizes", "ok", "kernels", "ok"]


@pytest.mark.parametrize("name, other", [("batch_loss", "params"), ("grad_sq", "workspace"),
                                         ("step", "grads"), ("grad_sq", "batch_loss")])
def test_train_epochs_records_apart_from_the_other_outputs(name, other):
    """batch_loss, grad_sq and step are written too: one sharing memory with another
    written array raises naming both, before anything is written."""
    args = _train_args()  # float64: the records' dtype
    base = args[other].ravel()
    if name == "grad_sq" and other == "batch_loss":
        args[other] = args[name].ravel()[:3]
    elif name == "grad_sq":
        args[name] = base[:6].reshape(3, 2)
    elif name == "step":
        args[name] = base[:1].view(np.int64)
    else:
        args[name] = base[:3]
    before = args["params"].copy()
    with pytest.raises(ValueError, match=f"{name} and {other} overlap"):
        _kernels.train_epochs(**args)
    np.testing.assert_array_equal(args["params"], before)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "rmsprop", "adam_dtype", "adamw_dtype"])
def test_train_epochs_two_state_optimizers_need_two_state_arrays(optimizer):
    """state_b may be state_a itself for sgd (its velocity twice), not for the optimizers
    with two state arrays: adam's m and v (rmsprop's buffers) in one array made a silently
    wrong update (adam_update rejects it)."""
    args = _train_args(optimizer=optimizer)
    args["hyper"][1] = 0.5  # rmsprop's momentum: it writes both arrays
    args["state_b"] = args["state_a"]
    before = args["params"].copy()
    with pytest.raises(ValueError, match="state_b and state_a overlap"):
        _kernels.train_epochs(**args)
    np.testing.assert_array_equal(args["params"], before)
    for sgd in ("sgd", "sgd_dtype"):
        one = _train_args(optimizer=sgd)
        one["hyper"][1] = 0.9
        one["state_b"] = one["state_a"]
        assert _kernels.train_epochs(**one) == 3


def _c_function_literals(name: str) -> list[float]:
    """The floating-point literals (signed, float32 `f` suffix dropped) of the C function or
    array that `name` opens in _kernels_simd.h, in source order."""
    import re
    text = (ROOT / "fastgrad" / "_kernels_simd.h").read_text()
    start = text.index(name)
    body = text[start: text.index("}", text.index("{", start) + 1) if "double fg_gelu_slope"
                in name else text.index("\n}", start)]
    return [float(v) for v in re.findall(r"-?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?", body)]


def test_c_constants_of_gelus_root_are_numbas():
    """The C kernels carry gelu's root polynomials as literals (C cannot import them):
    every one must be numba_math's / scalar_math's, in the same order, or the backends
    drift apart where only the root test's few points would notice."""
    from fastgrad.backends.numba_math import _CONSTANTS
    f32 = _CONSTANTS[np.float32]
    got32 = [np.float32(v) for v in _c_function_literals(
        "static inline float fg_x_ncdf_slope_s")]
    want32 = [np.float32(v) for v in (f32["SLOPE_X0_HI"], f32["SLOPE_X0_LO"], *f32["SLOPE_C"],
                                      f32["SLOPE_W"])]
    assert got32[-len(want32):] == want32
    assert _c_function_literals("static const double fg_gelu_slope_c_d") == list(
        scalar_math.GELU_SLOPE_C)
    got64 = _c_function_literals("static inline double fg_gelu_exact_bwd_d")
    assert got64[:2] == [scalar_math.GELU_ROOT_HI, scalar_math.GELU_ROOT_LO]
    assert got64[-1] == scalar_math.GELU_SLOPE_W
