"""The numba backend's own transcendentals (fastgrad/backends/numba_math.py).

- float32: every float32 in each function's range, or every STRIDE-th bit pattern (a
  strided sweep keeps the default run to seconds; FASTGRAD_EXHAUSTIVE=1 sweeps them all),
  in ulps of the float64 result, which is far more accurate than a float32 ulp.
- float64: a dense random sample against np.longdouble (x87 extended: 11 more bits).
- The special cases exactly; float32 formulas staying float32; the float32 sigmoid loop
  compiled to vector instructions with no call to libm's expf.
"""

from __future__ import annotations

import math
import os
import platform
import re

import numpy as np
import pytest
from numba import njit, types
from scipy import special

import fastgrad as fg
from fastgrad.activations import ACTIVATIONS
from fastgrad.backends import numba_cpu, numba_math
from fastgrad.scalar_math import compile_scalar

NAMES = ("exp", "expm1", "log1p", "tanh", "exp_neg_abs")
# erfc, ncdf, x_ncdf and x_ncdf_slope: vectorized in float32 only (float64 calls libm's); npdf
# and softplus_tail have their own forms in float32 only (float64 composes exp and log1p):
# float32 tests only.
F32_NAMES = (*NAMES, "erfc", "ncdf", "npdf", "softplus_tail", "x_ncdf", "x_ncdf_slope")
F32_MAX = float(np.finfo(np.float32).max)

# Sweep ranges (float32): past where each result saturates (exp: overflow and underflow to
# 0; expm1: -1; tanh: +-1), so the saturation is checked too.
F32_RANGE = {"exp": (-104.5, 89.0), "expm1": (-104.5, 89.0), "log1p": (-1.0, F32_MAX),
             "exp_neg_abs": (-105.0, 105.0),
             "tanh": (-20.0, 20.0), "erfc": (-10.5, 10.5),
             "ncdf": (-14.75, 14.75), "npdf": (-14.75, 14.75), "x_ncdf": (-14.75, 14.75),
             "x_ncdf_slope": (-14.75, 14.75), "softplus_tail": (-110.0, 110.0)}
# Allowed max error in ulps: what the implementations reach (see the report printed by
# -s) plus a little margin, far below the tests' tolerance of the activations.
MAX_ULP = {np.float32: {"exp": 1.5, "expm1": 2.5, "log1p": 2.0, "tanh": 2.5, "erfc": 5.0,
                        "ncdf": 4.0, "npdf": 2.0, "softplus_tail": 2.5, "exp_neg_abs": 1.5,
                        "x_ncdf": 4.0, "x_ncdf_slope": 4.5},
           np.float64: {"exp": 1.5, "expm1": 2.5, "log1p": 2.0, "tanh": 2.5,
                        "exp_neg_abs": 1.5}}
# The float64 references of the functions numpy lacks (np.<name> for the others).
F64_REF = {"erfc": special.erfc, "ncdf": special.ndtr, "x_ncdf": lambda v: v * special.ndtr(v),
           # near its root the float64 terms' rounding is < 0.2 ulp of the float32 result
           "x_ncdf_slope": lambda v: special.ndtr(v) + v * np.exp(-0.5 * v * v) / math.sqrt(
               2 * math.pi),
           "npdf": lambda v: np.exp(-0.5 * v * v) / math.sqrt(2 * math.pi),
           "softplus_tail": lambda v: np.log1p(np.exp(-np.abs(v))),
           "exp_neg_abs": lambda v: np.exp(-np.abs(v))}
STRIDE = 1 if os.environ.get("FASTGRAD_EXHAUSTIVE") else 61
CHUNK = 1 << 22

_LOOPS: dict[str, object] = {}


def _loop(name: str):
    """A compiled loop applying numba_math's `name` to every element."""
    if name not in _LOOPS:
        f = getattr(numba_math, name)

        @njit(error_model="numpy", nogil=True)
        def apply(x, out):
            for i in range(x.size):
                out[i] = f(x[i])

        _LOOPS[name] = apply
    return _LOOPS[name]


def vmath(name: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    _loop(name)(x, out)
    return out


def _float32_bits(lo: float, hi: float, stride: int):
    """Chunks of every stride-th float32 in [lo, hi] (bit patterns, both signs)."""
    lo_bits = int(np.float32(lo).view(np.uint32))
    hi_bits = int(np.float32(hi).view(np.uint32))
    spans = []
    if hi >= 0:
        spans.append((0, hi_bits + 1))  # +0 up to hi
    if lo < 0:
        spans.append((0x80000000, lo_bits + 1))  # -0 down to lo
    for start, stop in spans:
        for c in range(start, stop, CHUNK * stride):
            yield np.arange(c, min(c + CHUNK * stride, stop), stride,
                            dtype=np.uint32).view(np.float32)


def ulp_error_f32(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in ulps of float32 at want (a float64 reference); where either side
    rounds to inf, 0 when both are the same inf, else inf. NaN where got is NaN."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: replaced below
        want32 = want.astype(np.float32)
        e = np.frexp(want)[1]
        ulp = np.ldexp(1.0, np.maximum(e - 24, -149))
        err = np.abs(got.astype(np.float64) - want) / ulp
    special = np.isinf(want32) | np.isinf(got)
    err[special] = np.where(got[special] == want32[special], 0.0, np.inf)
    return err


def ulp_error_f64(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in ulps of float64 at want (a long double reference)."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: replaced below
        want64 = want.astype(np.float64)
        e = np.frexp(want)[1].astype(np.int64)
        ulp = np.ldexp(np.longdouble(1), np.maximum(e - 53, -1074))
        err = (np.abs(got.astype(np.longdouble) - want) / ulp).astype(np.float64)
    special = np.isinf(want64) | np.isinf(got)
    err[special] = np.where(got[special] == want64[special], 0.0, np.inf)
    return err


def _report(name, dtype, err, x):
    i = int(np.nanargmax(err))
    print(f"{name} {np.dtype(dtype).name}: max {err[i]:.3f} ulp at x={x[i]!r} "
          f"({err.size} inputs)")


@pytest.mark.parametrize("name", F32_NAMES)
def test_float32_sweep_within_ulps(name):
    worst, worst_x, count = 0.0, None, 0
    f64 = F64_REF.get(name) or getattr(np, name)
    for x in _float32_bits(*F32_RANGE[name], STRIDE):
        got = vmath(name, x)
        assert got.dtype == np.float32
        with np.errstate(divide="ignore", over="ignore"):
            want = f64(x.astype(np.float64))
        err = ulp_error_f32(got, want)
        assert not np.isnan(err).any(), f"{name}: NaN for finite x={x[np.isnan(err)][:5]}"
        i = int(np.argmax(err))
        if err[i] >= worst:
            worst, worst_x = float(err[i]), x[i]
        count += x.size
    print(f"{name} float32: max {worst:.3f} ulp at x={worst_x!r} ({count} inputs, "
          f"stride {STRIDE})")
    assert worst <= MAX_ULP[np.float32][name], f"{name} float32: {worst} ulp at {worst_x!r}"


def _float64_sample(name, rng, n=400_000):
    """Uniform over the interesting range, log-uniform magnitudes (tiny to large, both
    signs where defined), and the neighbourhoods of the reduction's breakpoints."""
    lo, hi = {"exp": (-746.0, 710.0), "expm1": (-746.0, 710.0), "log1p": (-1.0, 1e308),
              "tanh": (-25.0, 25.0), "exp_neg_abs": (-750.0, 750.0)}[name]
    mag = 10.0 ** rng.uniform(-320, math.log10(min(abs(lo) if lo < 0 else hi, hi)), n)
    sign = rng.choice([-1.0, 1.0], n) if lo < 0 else np.ones(n)
    parts = [rng.uniform(max(lo, -50), min(hi, 50), n), sign * mag,
             (np.arange(-60, 61) * math.log(2) / 2)[:, None]
             + rng.uniform(-1e-6, 1e-6, (121, 200))]
    x = np.concatenate([p.ravel() for p in parts])
    return x[(x > lo) & (x < hi)]


@pytest.mark.skipif(np.finfo(np.longdouble).nmant < 63,
                    reason="needs an 80-bit long double reference (x86)")
@pytest.mark.parametrize("name", NAMES)
def test_float64_sample_within_ulps(name, rng):
    x = _float64_sample(name, rng)
    got = vmath(name, x)
    want = (F64_REF.get(name) or getattr(np, name))(x.astype(np.longdouble))
    err = ulp_error_f64(got, want)
    assert not np.isnan(err).any()
    _report(name, np.float64, err, x)
    assert err.max() <= MAX_ULP[np.float64][name], f"{name} float64: {err.max()} ulp"


INF, NAN = math.inf, math.nan
# (x, exact result) for every dtype; signs of zero are checked too.
EDGES = {
    "exp": [(NAN, NAN), (INF, INF), (-INF, 0.0), (0.0, 1.0), (-0.0, 1.0), (1000.0, INF),
            (-1000.0, 0.0), (1e-30, 1.0), (-1e-30, 1.0)],
    "expm1": [(NAN, NAN), (INF, INF), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0),
              (1000.0, INF), (-1000.0, -1.0), (1e-30, 1e-30), (-1e-30, -1e-30)],
    "log1p": [(NAN, NAN), (INF, INF), (-INF, NAN), (0.0, 0.0), (-0.0, -0.0), (-1.0, -INF),
              (-1.5, NAN), (-2.0, NAN), (1e-30, 1e-30), (-1e-30, -1e-30)],
    "exp_neg_abs": [(NAN, NAN), (INF, 0.0), (-INF, 0.0), (0.0, 1.0), (-0.0, 1.0),
                    (1000.0, 0.0), (-1000.0, 0.0), (1e-30, 1.0), (-1e-30, 1.0)],
    "tanh": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (30.0, 1.0),
             (-30.0, -1.0), (1e-30, 1e-30), (-1e-30, -1e-30)],
    "erfc": [(NAN, NAN), (INF, 0.0), (-INF, 2.0), (0.0, 1.0), (-0.0, 1.0), (30.0, 0.0),
             (-30.0, 2.0), (1e-30, 1.0), (-1e-30, 1.0)],
    "ncdf": [(NAN, NAN), (INF, 1.0), (-INF, 0.0), (0.0, 0.5), (-0.0, 0.5), (40.0, 1.0),
             (-40.0, 0.0), (1e-30, 0.5), (-1e-30, 0.5)],
    "npdf": [(NAN, NAN), (INF, 0.0), (-INF, 0.0), (0.0, 1 / math.sqrt(2 * math.pi)),
             (-0.0, 1 / math.sqrt(2 * math.pi)), (40.0, 0.0), (-40.0, 0.0)],
    "x_ncdf": [(NAN, NAN), (INF, INF), (-INF, -0.0), (0.0, 0.0), (-0.0, -0.0), (40.0, 40.0),
               (-40.0, -0.0), (1e-30, 5e-31), (-1e-30, -5e-31)],
    "x_ncdf_slope": [(NAN, NAN), (INF, 1.0), (-INF, 0.0), (0.0, 0.5), (-0.0, 0.5), (40.0, 1.0),
                     (-40.0, 0.0), (1e-30, 0.5), (-1e-30, 0.5)],
    "softplus_tail": [(NAN, NAN), (INF, 0.0), (-INF, 0.0), (1000.0, 0.0), (-1000.0, 0.0),
                      (1e-30, math.log(2.0)), (-1e-30, math.log(2.0))],
}


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("name", F32_NAMES)
def test_special_values_exact(name, dtype):
    x = np.array([e[0] for e in EDGES[name]], dtype)
    want = np.array([e[1] for e in EDGES[name]], dtype)
    got = vmath(name, x)
    for xi, g, w in zip(x, got, want):
        assert (np.isnan(g) and np.isnan(w)) or (g == w and np.signbit(g) == np.signbit(w)), \
            f"{name}({xi!r}) = {g!r}, expected {w!r}"


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_overflow_and_underflow_thresholds(dtype):
    """Right at the edges of the finite range: the last finite exp/expm1 stays finite
    and close, the next float overflows; subnormal results are within an ulp."""
    info = np.finfo(dtype)
    wide = np.longdouble
    # Around ln(max): the float just below overflows to nothing, the one above to inf.
    t = dtype(np.log(wide(info.max)))
    x = np.array([np.nextafter(t, dtype(0)), t, np.nextafter(t, dtype(np.inf))], dtype)
    for name in ("exp", "expm1"):
        got = vmath(name, x)
        with np.errstate(over="ignore"):
            want = np.exp(x.astype(wide)).astype(dtype)
        assert np.array_equal(np.isinf(got), np.isinf(want)), f"{name}({x}) = {got}"
    # Subnormal results: exp over the whole gradual-underflow range.
    lo = np.log(wide(info.smallest_subnormal))
    x = np.linspace(lo - 1, np.log(wide(info.smallest_normal)), 10_001).astype(dtype)
    want = np.exp(x.astype(wide))
    for name, arg in (("exp", x), ("exp_neg_abs", -x), ("exp_neg_abs", x)):
        got = vmath(name, arg)
        assert np.all(np.abs(got - want) <= info.smallest_subnormal), f"subnormal {name}"


ELEMENTWISE = [s for s in ACTIVATIONS.values() if not s.rowwise]


@pytest.mark.parametrize("spec", ELEMENTWISE, ids=[s.name for s in ELEMENTWISE])
def test_float32_formulas_stay_float32(spec):
    """No float64 literal promotes a float32 formula (which would halve the vector
    width): every forward and backward compiled for float32 returns float32."""
    f32 = np.float32
    args = {"fwd": (f32(0.5), f32(0.3), f32(0.0)),
            "bwd": (f32(0.5), f32(1.5), f32(0.3), f32(0.0))}
    for kind, fn in (("fwd", spec.scalar_forward), ("bwd", spec.scalar_backward)):
        compiled = compile_scalar(fn, njit(error_model="numpy"), numba_math.VECTOR_MATH,
                                  np.float32)
        compiled(*args[kind])
        (sig,) = compiled.nopython_signatures
        assert sig.return_type == types.float32, f"{spec.name} {kind}: {sig}"


VECTORIZED = ["sigmoid", "tanh", "elu", "swish", "gelu", "softplus"]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="checks x86 assembly")
@pytest.mark.parametrize("name", VECTORIZED)
def test_float32_forward_loop_is_vectorized(name):
    """The numba backend's float32 forward loop: packed single-precision vector
    arithmetic, and no call into libm (which LLVM would emit once per element)."""
    spec = ACTIVATIONS[name]
    serial, _ = numba_cpu._kernels(spec, np.float32)["forward"]
    # The same loop compiled fresh (a cache-loaded dispatcher may not keep its assembly).
    loop = njit(**{**numba_cpu._JIT, "cache": False})(serial.py_func)
    x = np.linspace(-5, 5, 64, dtype=np.float32)
    out = np.empty_like(x)
    a, b = (np.float32(v) for v in spec.encoded({}))
    loop(x, out, a, b)
    asm = loop.inspect_asm(loop.signatures[0])
    libm = re.findall(r"\b(?:expf?|expm1f?|log1pf?|tanhf?|erfcf?)\b", asm)
    assert not libm, f"the {name} loop calls libm: {sorted(set(libm))}"
    packed = re.findall(r"\bv?(?:fn?madd\w*|mul|add|sub|div)ps\s+[^\n]*%[xyz]mm", asm)
    assert len(packed) >= 8, f"no packed float32 arithmetic in the {name} loop"
    want = fg.forward(name, x.astype(np.float64), backend="numpy")
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_row_max_by_order_keys_matches_numpy_and_propagates_nan():
    """The numba row max (an integer max over numba_math.order_key): the row's max, -0.0
    below +0.0, NaN for a row holding np.nan; and the row kernels
    give a NaN row for a NaN of either sign."""
    from fastgrad.backends import numba_cpu

    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((6, 203)).astype(dtype)
        x[1, 150] = np.nan
        x[2, 7] = np.inf
        x[3, :] = -np.inf
        x[4, :] = -np.abs(x[4, :])
        x[4, 77] = -0.0
        x[4, 78] = 0.0
        x[5, 9] = np.copysign(np.nan, -1.0)  # a NaN with the sign bit set
        got = [numba_cpu._row_max(x, i) for i in range(6)]
        assert got[0] == x[0].max()
        assert np.isnan(got[1])
        assert got[2] == np.inf and got[3] == -np.inf
        assert got[4] == 0.0 and not np.signbit(got[4])
        for name in ("softmax", "log_softmax"):
            y = fg.forward(name, x, backend="numba")
            assert np.isnan(y[[1, 5]]).all(), name
            assert not np.isnan(y[[0, 4]]).any(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernels_serial_and_threaded_agree(dtype, rng):
    """The numba row kernels come in a serial and a threaded copy (by size): both give
    the same bits, forward and backward, for both row activations."""
    x = (rng.standard_normal((37, 129)) * 4).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    for name, (forward, backward) in numba_cpu._ROWS.items():
        ys = [np.empty_like(x) for _ in forward]
        for kernel, y in zip(forward, ys):
            kernel(x, y)
        np.testing.assert_array_equal(ys[0], ys[1], err_msg=name)
        outs = [np.empty_like(x) for _ in backward]
        for kernel, out in zip(backward, outs):
            kernel(ys[0], g, out)
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=name)
