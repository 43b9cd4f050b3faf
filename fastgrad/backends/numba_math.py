"""Vectorizable exp, expm1, log1p, tanh (float32 and float64), erfc, ncdf, npdf and
softplus_tail (float32) for numba, and the bit-level helpers the row kernels use
(order_key for a vectorized max, as_dtype_of).

Numba from pip links no vector math library (no SVML): LLVM turns ``math.exp`` in a loop
into ``llvm.exp.v16f32`` and then into 16 scalar ``expf`` calls, so exp-based activations
ran at 3-27% of copy bandwidth (DESIGN.md §6). These functions are plain arithmetic that
LLVM inlines and vectorizes: range reduction (Cody-Waite), a polynomial, and the power of
two built by writing its exponent bits through an integer view (the scheme of SLEEF, XLA
and Cephes). No branches: every special case is a select, so a loop over them stays one
straight-line vector body.

Use them by bare name inside compiled code (``exp(x)``): an `overload` picks the float32
or float64 implementation from the argument's type, so float32 stays float32 (constants
in the argument's dtype, see `fastgrad.scalar_math.retype`). Called from plain Python they
fall back to `math`'s. Accuracy (tests/test_numba_math.py), max error in ulps against a
far more precise reference, over all float32 in each range (FASTGRAD_EXHAUSTIVE=1; the run
by default takes every 61st) and a dense float64 sample against long double:

    float32 (all inputs): exp 1.04, expm1 1.53, log1p 1.44, tanh 1.97, exp_neg_abs 1.03
    float64 (sample):     exp 0.98, expm1 1.73, log1p 1.44, tanh 1.96, exp_neg_abs 0.98

exp_neg_abs (exp(-|x|), for sigmoid, swish, softplus) scales by one power of two, its
result being at most 1. ncdf and npdf (the normal CDF and density, for gelu) and
softplus_tail (log1p(exp(-|x|)), for softplus) are specialised in float32 (max 3.6, 1.5
and 1.9 ulp over all float32, allowed 4, 2 and 2.5; see their comments); in float64 they
compose libm's erfc, exp and log1p. x_ncdf (x Phi(x), gelu's forward) shares ncdf's
arithmetic in float32 (max 3.9 ulp over all float32, allowed 4; see x_ncdf_impl), and so
does x_ncdf_slope (Phi(x) + x phi(x), gelu's derivative), with a polynomial near its root
where the terms cancel (max 4.02 ulp, allowed 4.5; see x_ncdf_slope_impl).

erfc is vectorized in float32 only (max 4.4 ulp, allowed 5): exp(-x^2) with x^2 split
into an exact head and a small tail, times a polynomial fit of erfcx in 1/(1 + |x|/2),
and erf's Taylor series below |x| = 3/4. float64 erfc stays libm's (a scalar call), so
float64 gelu(approximate='none') does not vectorize.

Polynomials: float32 expm1 (every exp-based function) a minimax fit of degree 6
(docs/numba_math.md fits it again and checks it), two multiply-adds fewer than the
degree-8 Taylor polynomial for the same 0.25 ulp truncation bound: it is in every float32
activation's inner loop. Elsewhere Taylor coefficients 1/k! (float64 expm1) and 2/(2k+1)
(log via atanh, the fdlibm reduction), with enough terms that truncation stays below 0.25
ulp on the reduced range (bounds at each table), exact by construction.
"""

from __future__ import annotations

import math
import types as pytypes

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .. import scalar_math
from ..scalar_math import (
    GELU_ROOT_HI,
    GELU_ROOT_LO,
    GELU_SLOPE_C,
    GELU_SLOPE_W,
    INV_SQRT2,
    INV_SQRT2PI,
    cast_floats,
    retype,
)

# Compiled with FMA contraction (fastmath 'contract' only: NaN, inf and signed zeros keep
# IEEE semantics) and numpy's error model (no ZeroDivisionError check, which would stop
# vectorization).
_JIT_OPTIONS = {"fastmath": {"contract"}, "error_model": "numpy"}


# --- Bit-level helpers: LLVM IR on the float's same-width integer ------------------------

# (integer type, mantissa bits, exponent bias, bits of sqrt(1/2)) per float width.
_LAYOUT = {
    32: (ir.IntType(32), 23, 127, 0x3F3504F3),
    64: (ir.IntType(64), 52, 1023, 0x3FE6A09E667F3BCD),
}


def _layout(fty: ir.Type):
    return _LAYOUT[32 if isinstance(fty, ir.FloatType) else 64]


def _pow2_of_shifted(builder, t):
    """2**(t - MAGIC) for t = n + MAGIC, MAGIC = 1.5 * 2**mant, n an integer: t's low
    mantissa bits hold n; adding the bias and shifting them into the exponent field gives
    2**n's bits (MAGIC's own bits shift out). No float-to-int conversion: a NaN gives
    garbage bits rather than LLVM poison, and the callers' arithmetic turns it into NaN."""
    ity, mant, bias, _ = _layout(t.type)
    bits = builder.add(builder.bitcast(t, ity), ir.Constant(ity, bias))
    return builder.bitcast(builder.shl(bits, ir.Constant(ity, mant)), t.type)


@intrinsic
def _pow2(typingctx, n):
    """2**n for a float n that holds an integer within the normal exponent range (n + MAGIC
    is exact for |n| < 2**(mant - 1); see _pow2_of_shifted)."""
    if not isinstance(n, types.Float):
        return None

    def codegen(context, builder, signature, args):
        (v,) = args
        _, mant, _, _ = _layout(v.type)
        return _pow2_of_shifted(builder, builder.fadd(v, ir.Constant(v.type, 1.5 * 2.0 ** mant)))

    return n(n), codegen


@intrinsic
def _pow2_shifted(typingctx, t):
    """2**n from t = n + MAGIC as `_reduce_t` leaves it: _pow2 without its addition."""
    if not isinstance(t, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return _pow2_of_shifted(builder, args[0])

    return t(t), codegen


@intrinsic
def _split_sqrt2(typingctx, u):
    """(k, m) as floats with u = 2**k * m and m in [sqrt(1/2), sqrt(2)), for a positive
    normal u (musl's log1pf reduction: shift the bits so that the exponent field rounds
    at sqrt(2), not at 2)."""
    if not isinstance(u, types.Float):
        return None

    def codegen(context, builder, signature, args):
        (v,) = args
        ity, mant, bias, sqrt_half = _layout(v.type)
        one_bits = bias << mant
        ix = builder.add(builder.bitcast(v, ity), ir.Constant(ity, one_bits - sqrt_half))
        k = builder.sub(builder.ashr(ix, ir.Constant(ity, mant)), ir.Constant(ity, bias))
        m_bits = builder.add(builder.and_(ix, ir.Constant(ity, (1 << mant) - 1)),
                             ir.Constant(ity, sqrt_half))
        parts = [builder.sitofp(k, v.type), builder.bitcast(m_bits, v.type)]
        return context.make_tuple(builder, signature.return_type, parts)

    return types.UniTuple(u, 2)(u), codegen


def _order_flip(builder, bits):
    """bits ^ (0x7f..f if the sign bit is set else 0): an involution on the float's
    same-width integer that turns the float order into the signed-integer order."""
    ity = bits.type
    sign = builder.ashr(bits, ir.Constant(ity, ity.width - 1))
    return builder.xor(bits, builder.and_(sign, ir.Constant(ity, (1 << (ity.width - 1)) - 1)))


@intrinsic
def order_key(typingctx, v):
    """A float's bits as a same-width signed integer ordered as the floats are (-0.0 just
    below +0.0; NaNs with the sign bit clear above +inf, with it set below -inf).

    A max over these keys is an integer max reduction, which LLVM vectorizes as it is;
    the float max it replaces does not vectorize without fast-math flags when written
    with a branch (``if v > m or v != v``), and llvm.maximum's NaN handling cost 3.5x the
    integer loop (float32 rows of 1024, Zen 4). `from_order_key` inverts it."""
    if not isinstance(v, types.Float):
        return None
    ity = types.int32 if v.bitwidth == 32 else types.int64

    def codegen(context, builder, signature, args):
        it, _, _, _ = _layout(args[0].type)
        return _order_flip(builder, builder.bitcast(args[0], it))

    return ity(v), codegen


@intrinsic
def from_order_key(typingctx, key, like):
    """The float (of `like`'s type) whose `order_key` is `key`."""
    if not (isinstance(like, types.Float) and isinstance(key, types.Integer)
            and key.bitwidth == like.bitwidth):
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(_order_flip(builder, args[0]), args[1].type)

    return like(key, like), codegen


def as_dtype_of(value, array):
    """value converted to array's element type (compiled code only): a float64 scalar
    that multiplies a float32 array otherwise widens the whole loop to float64."""
    raise NotImplementedError("as_dtype_of is for compiled code")


@overload(as_dtype_of, jit_options=_JIT_OPTIONS)
def _as_dtype_of_typed(value, array):
    dtype = getattr(array, "dtype", None)
    if not isinstance(dtype, types.Float):
        return None
    return lambda value, array: dtype(value)


# --- Per-dtype constants -----------------------------------------------------------------

def _expm1_coefficients(degree: int) -> tuple[float, ...]:
    """1/degree!, ..., 1/3!, 1/2!: Horner's order for q(r), expm1(r) = r + r^2 q(r)."""
    return tuple(1.0 / math.factorial(k) for k in range(degree, 1, -1))


# float32 q(r) of degree 4 (expm1 of degree 6), minimax for expm1's relative error on
# |r| <= ln2/2 (docs/numba_math.md fits it again): 1.4e-8 relative (0.23 ulp), as the
# degree-8 Taylor polynomial's 5.8e-10 stays under rounding, in two multiply-adds fewer.
_EXPM1_MINIMAX_F32 = (0.0013870657421648502, 0.00836626160889864, 0.04166743531823158,
                      0.1666654646396637, 0.4999999701976776)


def _erf_coefficients(terms: int) -> tuple[float, ...]:
    """erf(x)/x = 2/sqrt(pi) sum_k (-1)^k x^2k / (k! (2k + 1)), k = terms..0 (Horner's
    order in x^2). On |x| < 3/4 the truncation is below 1e-10 relative for terms = 9."""
    return tuple(2.0 / math.sqrt(math.pi) * (-1) ** k / (math.factorial(k) * (2 * k + 1))
                 for k in range(terms, -1, -1))


def _atanh_coefficients(terms: int) -> tuple[float, ...]:
    """2/(2 terms + 1), ..., 2/5, 2/3: Horner's order for R(z)/z, z = s^2, where
    log((1 + s)/(1 - s)) = 2 s + s R(s^2)."""
    return tuple(2.0 / (2 * k + 1) for k in range(terms, 0, -1))


_CONSTANTS = {
    # Reduced range |r| <= ln2/2 = 0.347. expm1: float32 the minimax polynomial above
    # (1.4e-8 relative); float64 Taylor's, truncation r^d/(d+1)! relative to r: 1.2e-17
    # (d = 13), under 0.25 ulp.
    # log: s^2 <= 0.0295; truncation s^(2K+2)/(2K+3): 2e-9 (float32, K = 4) and 6e-19
    # (float64, K = 10). softplus_tail's log1p(z), z in [0, 1], without the sqrt2 split:
    # s^2 <= 1/9, K = 7: 1.2e-9 relative to its result.
    # LN2_HI has trailing zero bits so that n * LN2_HI is exact (Cody-Waite): Cephes
    # expf's C1/C2 for float32, fdlibm's ln2_hi/ln2_lo for float64.
    # EXP_HI/LO clamp just outside where exp overflows / rounds to 0, keeping n (and the
    # two halves of the 2**n split) in range; EXPM1_LO is where expm1 rounds to -1.
    np.float32: {
        "LN2_HI": 0.693359375, "LN2_LO": -2.12194440e-4,
        "EXP_HI": 89.0, "EXP_LO": -104.5, "EXPM1_LO": -30.0, "MAX_EXP": 127.0,
        "EXPM1_C": _EXPM1_MINIMAX_F32, "ATANH_C": _atanh_coefficients(4),
        "LOG1P01_C": _atanh_coefficients(7),
        # erfcx(a) ~ t * ERFC_C(t - ERFC_TC), t = 1/(1 + a/2), a in [0, ERFC_HI]: fitted
        # here (docs/numba_math.md derives and checks them), max relative error 8.9e-9.
        # Past ERFC_HI, erfc rounds to 0 in float32.
        "ERF_CUT": 0.75, "ERF_C": _erf_coefficients(9),
        "ERFC_HI": 10.125, "ERFC_TC": 0.5824742268041238, "ERFC_ROUND": 1.5 * 2.0 ** 15,
        "ERFC_C": (0.03844106859884669, 0.017940550475184388, -0.07503744494876134,
                   0.002434713886243055, 0.11424204333830365, -0.049902416528983924,
                   -0.2039864295821392, 0.08313014556839793, 0.5874786182699611,
                   0.7819244189713578, 0.5713397843871513),
        # ncdf: Phi(-a) = exp(-a^2/2) NCDF_C / (a + NCDF_P(a)/NCDF_Q(a)) on [0, NCDF_HI]:
        # NCDF_C = float32(1/sqrt(2 pi)) and the rational fit of NCDF_C / R(a) - a, R(a) =
        # erfcx(a/sqrt2)/2 (docs/numba_math.md), float32 coefficients, all positive (no
        # cancellation in Horner's scheme), max error 4.3e-9 relative to a + P/Q. Past
        # NCDF_HI, Phi(-a) rounds to 0 in float32.
        "NCDF_HI": 14.5, "NCDF_C": 0.3989422917366028,
        "NCDF_P": (0.0024207865353673697, 0.029174959287047386, 0.16353917121887207,
                   0.49761509895324707, 0.7978845834732056),
        "NCDF_Q": (0.0024204000364989042, 0.02919076383113861, 0.16806510090827942,
                   0.5597984790802002, 1.0790976285934448, 1.0),
        # x_ncdf_slope near its root X0 = X0_HI + X0_LO (-0.75179152469356446, to 4e-16):
        # Phi(x) + x phi(x) = d SLOPE_C(d), d = x - X0, |d| < SLOPE_W, a polynomial fit
        # of degree 9 for error relative to the slope (docs/numba_math.md fits it again),
        # 1.2e-8 with its float32 coefficients (Horner's order).
        "SLOPE_X0_HI": -0.7517915368080139, "SLOPE_X0_LO": 1.2114450302102823e-08,
        "SLOPE_W": 0.55,
        "SLOPE_C": (0.00023329096438828856, -0.0006042508757673204, -0.0022691653575748205,
                    0.00447601405903697, 0.019426891580224037, -0.014760997146368027,
                    -0.11400847136974335, -0.018200265243649483, 0.38828498125076294,
                    0.43149399757385254),
    },
    np.float64: {
        "LN2_HI": 6.93147180369123816490e-01, "LN2_LO": 1.90821492927058770002e-10,
        "EXP_HI": 710.0, "EXP_LO": -746.0, "EXPM1_LO": -40.0, "MAX_EXP": 1023.0,
        "EXPM1_C": _expm1_coefficients(13), "ATANH_C": _atanh_coefficients(10),
        # x_ncdf_slope near its root: scalar_math's float64 Taylor polynomial
        "SLOPE_X0_HI": GELU_ROOT_HI, "SLOPE_X0_LO": GELU_ROOT_LO, "SLOPE_W": GELU_SLOPE_W,
        "SLOPE_C": GELU_SLOPE_C,
    },
}
for _dtype, _c in _CONSTANTS.items():
    _c.update(LOG2E=1.4426950408889634, MAGIC=1.5 * 2.0 ** (np.finfo(_dtype).nmant),
              INF=math.inf, NAN=math.nan, TANH_SPLIT=-math.log(3.0))
    # Results known to be <= 1 (exp of x <= 0) are built as (1 + p) 2^(n + 64) 2^-64: one
    # power of two, normal for n >= EXP_LO log2(e) - 1 (-152 float32, -1077 float64), and
    # the last product rounds once into the subnormals. _reduce_t with MAGIC_K leaves
    # n + 64 in t's low bits, so the power comes from t (_pow2_shifted) with no addition.
    _c.update(MAGIC_K=_c["MAGIC"] + 64.0, SCALE=2.0 ** -64)


# --- The implementations, written once; `retype` makes the float32 and float64 copies ----

def _horner(r, coefficients):
    """sum c[k] r^(n-1-k): Horner's scheme (compiled through the overload below)."""
    acc = coefficients[0]
    for c in coefficients[1:]:
        acc = acc * r + c
    return acc


_HORNER_CODE: dict[int, pytypes.FunctionType] = {}


def _unrolled_horner(n: int) -> pytypes.FunctionType:
    """Horner's scheme for n coefficients written out with constant indices. A loop over
    the tuple would index it at run time, which Numba bounds-checks (an IndexError
    path); when LLVM does not unroll it, that path keeps the caller from inlining and
    vectorizing (it did for erfc's 11 coefficients)."""
    if n not in _HORNER_CODE:
        lines = ["def horner(r, coefficients):", "    acc = coefficients[0]"]
        lines += [f"    acc = acc * r + coefficients[{k}]" for k in range(1, n)]
        lines.append("    return acc")
        scope: dict = {}
        exec("\n".join(lines), scope)  # noqa: S102  (trusted, generated above)
        _HORNER_CODE[n] = scope["horner"]
    return _HORNER_CODE[n]


@overload(_horner, jit_options=_JIT_OPTIONS)
def _horner_typed(r, coefficients):
    if isinstance(r, types.Float) and isinstance(coefficients, types.UniTuple):
        return _unrolled_horner(coefficients.count)
    return None


def _reduce(x):
    """(n, r) with x = n ln2 + r, n an integer (as a float), |r| <= ln2/2: n by adding
    and subtracting MAGIC (rounds to nearest without a float-to-int conversion)."""
    n = (x * LOG2E + MAGIC) - MAGIC  # noqa: F821  (names bound per dtype by `retype`)
    r = (x - n * LN2_HI) - n * LN2_LO  # noqa: F821
    return n, r


def _reduce_t(x, magic):
    """_reduce, also returning t = x log2(e) + magic rounded, whose low bits hold n +
    (magic - MAGIC): _pow2_shifted(t) is 2**(n + magic - MAGIC) without another addition."""
    t = x * LOG2E + magic  # noqa: F821
    n = t - magic
    r = (x - n * LN2_HI) - n * LN2_LO  # noqa: F821
    return n, r, t


def _exp_neg_abs(x):
    """exp(-|x|) = (1 + p(r)) 2^(n + 64) 2^-64 (see MAGIC_K): one power of two, where
    exp's full range needs _scale's two. -inf clamps to where the result rounds to 0;
    NaN passes."""
    v = -abs(x)
    v = EXP_LO if v < EXP_LO else v  # noqa: F821
    n, r, t = _reduce_t(v, MAGIC_K)  # noqa: F821
    return (1.0 + _expm1_poly(r)) * _pow2_shifted(t) * SCALE  # noqa: F821


def _expm1_poly(r):
    return r + r * r * _horner(r, EXPM1_C)  # noqa: F821


def _scale(p, n):
    """p * 2**n, 2**n in two halves, each a normal number, so that the result can round
    gradually into the subnormals (one rounding, in the last product) or overflow."""
    h = np.floor(0.5 * n)
    return p * _pow2(h) * _pow2(n - h)


def exp_impl(x):
    # NaN passes the clamps (comparisons are false) and stays NaN through the arithmetic;
    # +inf and -inf clamp to a point where the result overflows / rounds to 0.
    xc = EXP_HI if x > EXP_HI else x  # noqa: F821
    xc = EXP_LO if xc < EXP_LO else xc  # noqa: F821
    n, r = _reduce(xc)
    return _scale(1.0 + _expm1_poly(r), n)


def expm1_impl(x):
    xc = EXP_HI if x > EXP_HI else x  # noqa: F821
    xc = EXPM1_LO if xc < EXPM1_LO else xc  # noqa: F821
    n, r = _reduce(xc)
    p = _expm1_poly(r)
    # expm1(x) = 2^n p + (2^n - 1), both parts exact for small n: no cancellation near 0.
    # Where n = MAX_EXP + 1, 2^n is out of range: use 2^(n-1) and double the result.
    m = MAX_EXP if n > MAX_EXP else n  # noqa: F821
    s = _pow2(m)
    y = (s * p + (s - 1.0)) * (1.0 + (n - m))
    return x if x == 0.0 else y  # expm1(-0.0) = -0.0


def log1p_impl(x):
    u = 1.0 + x
    # The rounding error of 1 + x, exactly (fdlibm's correction term): log1p(x) =
    # log(u) + c/u to first order.
    c = (1.0 - (u - x)) if x >= 1.0 else (x - (u - 1.0))
    k, m = _split_sqrt2(u)
    # log(m) = log((1 + s)/(1 - s)) = 2s + s R, s = f/(2 + f), f = m - 1, written as
    # f - (f^2/2 - s (f^2/2 + R)) (fdlibm's __log1p) so the leading term is exact.
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    big_r = z * _horner(z, ATANH_C)  # noqa: F821
    hfsq = 0.5 * f * f
    log_m = f - (hfsq - s * (hfsq + big_r))
    y = k * LN2_HI + (log_m + (c / u + k * LN2_LO))  # noqa: F821
    y = INF if x == INF else y  # noqa: F821
    y = -INF if x == -1.0 else y  # noqa: F821
    y = NAN if x < -1.0 else y  # noqa: F821
    return x if x == 0.0 else y  # log1p(-0.0) = -0.0; NaN is NaN through u


def tanh_impl(x):
    # From e = exp(-2|x|) and t = expm1(-2|x|) = e - 1, sharing one reduction (both
    # arguments <= 0: no overflow, +-inf give exactly +-1):
    #   |x| < ln(3)/2: tanh|x| = -t / (t + 2)  (no cancellation near 0);
    #   above:         tanh|x| = 1 - 2e / (1 + e)  (2e/(1 + e) <= 1/2, so the subtraction
    #                  loses nothing, where -t/(t + 2) would carry t + 2's rounding).
    # One division for both: the numerator and denominator are selected first.
    v = -2.0 * abs(x)
    vc = EXPM1_LO if v < EXPM1_LO else v  # noqa: F821
    n, r, t = _reduce_t(vc, MAGIC)  # noqa: F821
    p = _expm1_poly(r)
    s = _pow2_shifted(t)  # 2^n, normal: n >= EXPM1_LO log2(e) - 1
    sp = s * p
    small = v > TANH_SPLIT  # noqa: F821
    num = -(sp + (s - 1.0)) if small else 2.0 * (sp + s)
    den = (sp + (s + 1.0)) if small else (1.0 + (sp + s))
    q = num / den
    y = q if small else 1.0 - q
    return math.copysign(x if x == 0.0 else y, x)  # tanh(-0.0) = -0.0


def _erfcx(a):
    """exp(a^2) erfc(a) for 0 <= a <= ERFC_HI (the fitted polynomial)."""
    h = 0.5 * a
    d = 1.0 + h
    # d's rounding error exactly (Fast2Sum, larger operand first), then one Newton step
    # on t = 1/d against the exact 1 + h: t's error would otherwise be amplified about
    # twofold by the polynomial.
    d_lo = ((1.0 - d) + h) if h <= 1.0 else ((h - d) + 1.0)
    t = 1.0 / d
    t = t + t * ((1.0 - d * t) - d_lo * t)
    return t * _horner(t - ERFC_TC, ERFC_C)  # noqa: F821


def _exp_neg_square(a):
    """exp(-a^2) for 0 <= a < 2^14. a^2 rounded would carry an error that exp amplifies
    a^2-fold (100 ulp at a = 10): a^2 = hi^2 + (a - hi)(a + hi), hi = a rounded to 2^-8,
    has hi^2 exact and the small rest goes into exp's reduced argument."""
    hi = (a + ERFC_ROUND) - ERFC_ROUND  # noqa: F821
    n, r = _reduce(-(hi * hi))
    return _scale(1.0 + _expm1_poly(r - (a - hi) * (a + hi)), n)


def _erf_series(x):
    return x * _horner(x * x, ERF_C)  # noqa: F821


def erfc_impl(x):
    # erfc|x| = exp(-x^2) erfcx|x| (float32 only: float64 keeps libm's erfc); erfc(-a) =
    # 2 - erfc(a); below |x| = ERF_CUT, 1 - erf(x) by erf's series is more accurate.
    # Inlined into the caller at Numba's level (see _register): the helpers, each
    # compiled with this module's flags, stay small enough for LLVM to inline into a
    # loop and vectorize, which the whole was not.
    a = abs(x)
    a = ERFC_HI if a > ERFC_HI else a  # noqa: F821  (NaN passes)
    y = _exp_neg_square(a) * _erfcx(a)
    y = 2.0 - y if x < 0 else y
    small = 1.0 - _erf_series(x)
    return small if a < ERF_CUT else y  # noqa: F821


def erfc_libm(x):
    return math.erfc(x)


def _exp_half_square(x):
    """(|x|, e, s) with exp(-x^2/2) = (1 + e) s SCALE, for the float32 ncdf and npdf: x^2/2
    split exactly (as in _exp_neg_square, but on x itself: erfc(-x/sqrt2) would round
    x/sqrt2 first, an error exp amplifies x^2/2-fold); s = 2^(n + 64), the scale applied
    last so that a subnormal result is rounded once. |x| clamps at NCDF_HI, past which both
    functions round to 0 (NaN passes). ncdf and npdf inlined into one loop share it (LLVM
    merges the identical arithmetic)."""
    a = abs(x)
    a = NCDF_HI if a > NCDF_HI else a  # noqa: F821
    hi = (a + ERFC_ROUND) - ERFC_ROUND  # noqa: F821
    h = 0.5 * (hi * hi)  # exact
    lo = 0.5 * ((a - hi) * (a + hi))  # a^2/2 = h + lo
    n, r, t = _reduce_t(-h, MAGIC_K)  # noqa: F821
    return a, _expm1_poly(r - lo), _pow2_shifted(t)


def _ncdf_left(x):
    """(a, t): a = |x| clamped at NCDF_HI, t = Phi(-a) 2^64 (see ncdf_impl), normal: the
    caller's product by SCALE rounds once into the subnormals."""
    a, e, s = _exp_half_square(x)
    u = NCDF_C / (a + _horner(a, NCDF_P) / _horner(a, NCDF_Q))  # noqa: F821
    return a, (u + u * e) * s


def ncdf_impl(x):
    # Phi(x) = q for x < 0 and 1 - q above (q <= 1/2: no cancellation), q = Phi(-|x|) =
    # exp(-x^2/2) R(|x|), R(a) = NCDF_C / (a + P(a)/Q(a)): the rational part is a
    # correction to a, so its rounding errors are damped by P/Q / (a + P/Q) (a rational
    # fit of R itself, Horner on a up to 14.5, was 5.6 ulp off). exp's 1 + e enters as
    # u + u e (one rounding fewer). One division, NCDF_C Q / (a Q + P), measured 4%
    # faster but 4.0 ulp off near x = 0 (0.5 more: the quotient Q/(a Q + P) ~ 1.25 and the
    # product by NCDF_C are both rounded where NCDF_C / P(0) is one rounding near 1/2).
    a, t = _ncdf_left(x)  # noqa: F821
    q = t * SCALE  # noqa: F821
    return q if x < 0 else 1.0 - q


def npdf_impl(x):
    # exp(-x^2/2) / sqrt(2 pi), the exponent exact (see _exp_half_square).
    a, e, s = _exp_half_square(x)
    return (NCDF_C + NCDF_C * e) * s * SCALE  # noqa: F821


def x_ncdf_impl(x):
    # x Phi(x) = -|x| q for x <= 0 and x - |x| q above, q = Phi(-|x|) <= 1/2, not x (1 - q):
    # near 0, 1 - q ~ 1/2 sits at the bottom of its binade, where q's error (absolute, ~3
    # ulp of 1/2) and the rounding of 1 - q are up to twice as large relative to it as to
    # x Phi at the top of its binade: x * ncdf(x) reached 4.5 ulp (x ~ 0.009); x - |x| q
    # stays within the negative side's 3.9. |x| multiplies q before the scale 2^-64 (a
    # single rounding into the subnormals): x * q from a subnormal q, below x = -13,
    # reached 7.9 ulp where the result is normal. With a = |x| clamped at NCDF_HI, +-inf
    # give inf - 0 and -0.0 (the limits), not inf * 0. As many operations as x (1 - q).
    # 1.0x its speed in cache (float32, one thread).
    a, t = _ncdf_left(x)  # noqa: F821
    aq = (a * t) * SCALE  # noqa: F821
    return x - aq if x >= 0 else -aq  # +-0.0 keep their signs; NaN gives NaN


def x_ncdf_slope_impl(x):
    # d/dx x Phi(x) = Phi(x) + x phi(x), gelu's derivative. Its two terms cancel near its
    # root X0 ~ -0.7518, where each one's rounding (~1 ulp of 0.23) is amplified by
    # 0.23 / |slope|: 5e6 ulp off at the float32 next to X0, over 4 ulp for x in
    # (-1.3, -0.25). There it is d SLOPE_C(d), d = x - X0: x - X0_HI is exact (Sterbenz,
    # x within a factor 2 of X0_HI) or off by under 1 ulp of d, so d is accurate relative
    # to itself and so is the slope. Elsewhere, from ncdf's and npdf's arithmetic: for
    # x < 0, Phi(-a) - a phi(a) from the terms scaled by 2^64, then scaled back once (in the
    # left tail the result is subnormal, and a phi(a) from a subnormal phi was 100 ulp off
    # at x = -14.2), and 0 past NCDF_HI (+-inf included); above, 1 - q + x phi, or 1 - q
    # where phi rounds to 0 (x phi would be inf * 0 at x = inf).
    a, t = _ncdf_left(x)  # noqa: F821  (t = Phi(-a) 2^64)
    a, e, s = _exp_half_square(x)  # noqa: F821  (its exp again: LLVM merges the two)
    p = (NCDF_C + NCDF_C * e) * s  # noqa: F821  (phi(a) 2^64)
    left = (t - a * p) * SCALE  # noqa: F821
    left = 0.0 if a >= NCDF_HI else left  # noqa: F821
    phi = 1.0 - t * SCALE  # noqa: F821
    pdf = p * SCALE  # noqa: F821
    right = phi if pdf == 0.0 else phi + x * pdf
    slope = left if x < 0 else right  # NaN: right, NaN
    d = (x - SLOPE_X0_HI) - SLOPE_X0_LO  # noqa: F821
    near = d * _horner(d, SLOPE_C)  # noqa: F821
    return near if abs(d) < SLOPE_W else slope  # noqa: F821


def x_ncdf_slope_f64(x):
    # Near the root (|x - X0| < SLOPE_W) scalar_math's Taylor polynomial in float64, as in
    # float32 (the terms' roundings, ~5e-17, would be unbounded relative to the slope
    # there); elsewhere the terms through libm's erfc. A branch, not selects: libm's
    # scalar erfc keeps this loop from vectorizing anyway, and the branch skips either side.
    d = (x - SLOPE_X0_HI) - SLOPE_X0_LO  # noqa: F821
    if abs(d) < SLOPE_W:  # noqa: F821
        return d * _horner(d, SLOPE_C)  # noqa: F821
    phi = 0.5 * math.erfc(-x * INV_SQRT2)  # noqa: F821
    pdf = INV_SQRT2PI * exp(-0.5 * x * x)  # noqa: F821
    slope = phi if pdf == 0.0 else phi + x * pdf
    return 0.0 if phi == 0.0 else slope


def x_ncdf_f64(x):
    # x Phi(x), branch-free: Phi rounds to 0 only for x < -38, where x Phi = -0.0, the
    # limit from below, as in float32; max(x, -1e308) keeps x = -inf from giving inf * 0
    # = NaN (NaN still gives NaN, through erfc). Phi written out (ncdf_libm's line), and no
    # branch: calling the inlined ncdf, or branching on phi, tripped Numba's IR scope
    # check once inlined (a NumbaIRAssumptionWarning in every fused gelu compile).
    phi = 0.5 * math.erfc(-x * INV_SQRT2)  # noqa: F821
    return max(x, -1e308) * phi


def softplus_tail_impl(x):
    # log1p(z), z = exp(-|x|) in [0, 1], straight from z: log(1 + z) = 2 atanh(s), s =
    # z/(2 + z) <= 1/3, as z - (z^2/2 - s (z^2/2 + R)), R = 2 s^2/3 + 2 s^4/5 + ...
    # (fdlibm's log1p form without its reduction: the leading term z is exact and the
    # rounding of s is damped by s (z^2/2 + R) / log1p(z) <= 0.38). No 1 + z, no split
    # at sqrt2 (k = 0 or 1), one division: R takes 7 terms (s^2 <= 1/9) instead of 4.
    z = _exp_neg_abs(x)
    s = z / (2.0 + z)
    w = s * s
    big_r = w * _horner(w, LOG1P01_C)  # noqa: F821
    hz = 0.5 * z * z
    return z - (hz - s * (hz + big_r))


def exp_neg_abs_impl(x):
    return _exp_neg_abs(x)


def softplus_tail_f64(x):
    return log1p(exp(-abs(x)))


def ncdf_libm(x):
    return 0.5 * math.erfc(-x * INV_SQRT2)


def npdf_f64(x):
    return INV_SQRT2PI * exp(-0.5 * x * x)


# --- Bare-name entry points: math's in Python, the dtype's implementation when compiled --

def exp(x):
    """e**x (float32 or float64 in compiled code; math.exp when called from Python)."""
    return math.exp(x)


def expm1(x):
    """e**x - 1, accurate near 0."""
    return math.expm1(x)


def log1p(x):
    """log(1 + x), accurate near 0; -inf at -1, NaN below."""
    return math.log1p(x)


def tanh(x):
    """Hyperbolic tangent."""
    return math.tanh(x)


def erfc(x):
    """1 - erf(x) (vectorizable in float32; libm's in float64)."""
    return math.erfc(x)


def exp_neg_abs(x):
    """exp(-|x|), which never overflows (scaled by one power of two, not exp's two)."""
    return math.exp(-abs(x))


def npdf(x):
    """The standard normal density exp(-x^2/2)/sqrt(2 pi) (in float32 with the exponent
    exact, sharing ncdf's arithmetic)."""
    return INV_SQRT2PI * math.exp(-0.5 * x * x)


def x_ncdf_slope(x):
    """Phi(x) + x phi(x), the derivative of x Phi(x) (gelu's; vectorizable in float32, and
    in both dtypes accurate relative to itself near its root x ~ -0.7518, where the terms
    cancel; called from Python, scalar_math's float64 formula)."""
    return scalar_math.x_ncdf_slope(x)


def softplus_tail(x):
    """log1p(exp(-|x|)), softplus(x) - max(x, 0) (vectorizable, shorter in float32)."""
    return math.log1p(math.exp(-abs(x)))


def ncdf(x):
    """The standard normal CDF Phi(x) = erfc(-x/sqrt2)/2 (vectorizable in float32,
    accurate in the left tail; libm's erfc in float64)."""
    return 0.5 * math.erfc(-x * INV_SQRT2)


def x_ncdf(x):
    """x Phi(x), the exact gelu (vectorizable in float32, accurate near 0 and in the left
    tail; -0.0 where Phi rounds to 0)."""
    phi = 0.5 * math.erfc(-x * INV_SQRT2)
    return -0.0 if phi == 0.0 else x * phi


_HELPERS = {"_reduce": _reduce, "_reduce_t": _reduce_t, "_exp_neg_abs": _exp_neg_abs,
            "_expm1_poly": _expm1_poly, "_scale": _scale,
            "_erfcx": _erfcx, "_exp_neg_square": _exp_neg_square,
            "_erf_series": _erf_series, "_exp_half_square": _exp_half_square,
            "_ncdf_left": _ncdf_left}
_IMPLS = {exp: exp_impl, expm1: expm1_impl, log1p: log1p_impl, tanh: tanh_impl,
          exp_neg_abs: exp_neg_abs_impl,
          erfc: {np.float32: erfc_impl, np.float64: erfc_libm},
          ncdf: {np.float32: ncdf_impl, np.float64: ncdf_libm},
          npdf: {np.float32: npdf_impl, np.float64: npdf_f64},
          softplus_tail: {np.float32: softplus_tail_impl, np.float64: softplus_tail_f64},
          x_ncdf: {np.float32: x_ncdf_impl, np.float64: x_ncdf_f64},
          x_ncdf_slope: {np.float32: x_ncdf_slope_impl, np.float64: x_ncdf_slope_f64}}


def _build(dtype) -> dict:
    """Every implementation as a plain function for `dtype`: its float literals and the
    dtype's constants cast to it, its helpers compiled for this dtype."""
    namespace = cast_floats({**globals(), **_CONSTANTS[dtype]}, dtype)
    for name, fn in _HELPERS.items():  # one shared namespace: helpers see each other
        namespace[name] = njit(**_JIT_OPTIONS)(retype(fn, namespace, dtype))
    return {stub: retype(fn[dtype] if isinstance(fn, dict) else fn, namespace, dtype)
            for stub, fn in _IMPLS.items()}


_BY_TYPE = {types.float32: _build(np.float32), types.float64: _build(np.float64)}


_INLINE = (erfc, ncdf, npdf, softplus_tail, exp_neg_abs, x_ncdf, x_ncdf_slope)


def _register(stub: pytypes.FunctionType) -> None:
    @overload(stub, jit_options=_JIT_OPTIONS, inline="always" if stub in _INLINE else "never")
    def _typed(x):
        impls = _BY_TYPE.get(x)
        return None if impls is None else impls[stub]


for _stub in _IMPLS:
    _register(_stub)

VECTOR_MATH = {"exp": exp, "expm1": expm1, "log1p": log1p, "tanh": tanh, "erfc": erfc,
               "exp_neg_abs": exp_neg_abs, "ncdf": ncdf, "npdf": npdf,
               "softplus_tail": softplus_tail, "x_ncdf": x_ncdf, "x_ncdf_slope": x_ncdf_slope}
"""The bindings for `compile_scalar(..., math_functions=VECTOR_MATH)`."""
