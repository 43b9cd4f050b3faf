"""Scalar formulas of every elementwise activation: the one source of math for the
compiled Python backends.

Each function works on one number and is plain Python that Numba compiles for the CPU
(`numba_cpu`) and, as a device function, for the GPU (`cuda`). Every forward has the
signature ``f(x, a, b)`` and every backward ``f(s, g, a, b)``, where ``s`` is the saved
value the table names (the input x or the output y), ``g`` the incoming gradient and
``a``, ``b`` the activation's encoded parameters (see `activations.py`).

Comparisons are ordered so that NaN propagates: ``0 if x < 0 else x`` keeps NaN, where
``x if x > 0 else 0`` would map it to 0.
"""

import math
import types
from collections.abc import Callable

import numpy as np

INV_SQRT2 = 0.7071067811865476  # 1/sqrt(2)
INV_SQRT2PI = 0.3989422804014327  # 1/sqrt(2*pi)
SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2/pi)
GELU_TANH_C = 0.044715
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805
# gelu's derivative Phi(x) + x phi(x) near its root x0 (float64): its terms (~0.23) cancel
# there, their roundings ~5e-17 absolute, so within |x - x0| < GELU_SLOPE_W it is
# d GELU_SLOPE_C(d), d = x - x0 (x0 = GELU_ROOT_HI + GELU_ROOT_LO; x - GELU_ROOT_HI is
# exact there, Sterbenz): its Taylor polynomial of degree 14 at x0 (mpmath, 60 digits),
# 6.4e-17 relative with float64 coefficients (the rounding of the last one, the slope
# gelu''(x0)). Outside, the terms' own error stays, up to ~8 ulp where |gelu'| ~ 0.1
# (-x/sqrt2 is rounded before erfc). For float64 arithmetic only: rounded to float32, x0
# would be 3e-8 off (float32 kernels have their own polynomial, numba_math's SLOPE_C).
GELU_ROOT_HI = -0.7517915246935645
GELU_ROOT_LO = 1.4956759177009883e-17
GELU_SLOPE_W = 0.2
GELU_SLOPE_C = (5.702764979242107e-07, 4.3284506257392273e-07, -7.74846130700372e-06,
                -1.121438018842664e-05, 8.615947861116571e-05, 0.00018633974623233514,
                -0.0007448268386746817, -0.002239538068073497, 0.004539228379125415,
                0.019421679838189067, -0.014771522148244337, -0.1140082332972217,
                -0.018199676398671087, 0.388284982990552, 0.4314939923140469)


# The transcendentals the formulas call, by bare name so that a target can bind faster
# implementations (compile_scalar's `math_functions`): the numba CPU backend binds
# vectorizable ones, CUDA keeps the device's own.
exp = math.exp
expm1 = math.expm1
log1p = math.log1p
tanh = math.tanh
erfc = math.erfc
MATH_FUNCTIONS = ("exp", "expm1", "log1p", "tanh", "erfc", "ncdf", "npdf")

# Functions here that other formulas call: compiled alongside them by `compile_scalar`
# (unless `math_functions` binds the name: a target may give its own, as the numba CPU
# backend does for exp_neg_abs, ncdf, npdf, softplus_tail, x_ncdf and x_ncdf_slope).
HELPERS = ("exp_neg_abs", "sigmoid_value", "ncdf", "npdf", "softplus_tail", "x_ncdf",
           "slope_near_root", "x_ncdf_slope")


def compile_scalar(fn: Callable, jit: Callable,
                   math_functions: dict[str, Callable] | None = None,
                   dtype: type | None = None) -> Callable:
    """`fn` compiled by `jit` (numba.njit(...) or numba.cuda.jit(device=True)), with its
    calls to HELPERS bound to helpers compiled by the same `jit`, and the names in
    MATH_FUNCTIONS bound to `math_functions` where it gives them (else to `math`'s).

    dtype=np.float32 casts the formulas' float literals and module constants to float32
    (see `retype`): written as ``1.0 - y``, they would otherwise be float64 and promote
    the whole float32 computation to float64, halving the vector width.

    Numba resolves global names when it compiles, so each target needs a copy of the
    formulas whose globals point at that target's compiled helpers.
    """
    namespace = cast_floats({**fn.__globals__, **(math_functions or {})}, dtype)
    for name in HELPERS:
        if name in (math_functions or {}):
            continue
        namespace[name] = jit(retype(globals()[name], namespace, dtype))
    return jit(retype(fn, namespace, dtype))


def cast_floats(namespace: dict, dtype: type | None) -> dict:
    """A copy of `namespace` whose float values (and tuples of floats) are `dtype`
    scalars; unchanged for None and float64 (Python floats already type as float64)."""
    if dtype is None or np.dtype(dtype) == np.float64:
        return dict(namespace)
    cast = np.dtype(dtype).type

    def convert(v):
        if type(v) is float:
            return cast(v)
        if type(v) is tuple and v and all(type(e) is float for e in v):
            return tuple(cast(e) for e in v)
        return v

    return {k: convert(v) for k, v in namespace.items()}


def retype(fn: Callable, namespace: dict, dtype: type | None) -> types.FunctionType:
    """A copy of `fn` with `namespace` as its globals and its float literals (``1.0``,
    ``0.5``) as `dtype` scalars, so Numba types them in the argument's precision: one
    source of math for every dtype. The copy's name says the dtype, which keeps the
    float32 and float64 copies apart in Numba's on-disk cache."""
    code = fn.__code__
    name = fn.__name__
    if dtype is not None and np.dtype(dtype) != np.float64:
        cast = np.dtype(dtype).type
        code = code.replace(co_consts=tuple(cast(c) if type(c) is float else c
                                            for c in code.co_consts))
        name = f"{name}_{np.dtype(dtype).name}"
        code = code.replace(co_name=name)
        if hasattr(code, "co_qualname"):  # Python >= 3.11
            code = code.replace(co_qualname=name)
    return types.FunctionType(code, namespace, name, fn.__defaults__)


def exp_neg_abs(x):
    """exp(-|x|), in [0, 1]: never overflows (the numba CPU backend binds a form that,
    knowing that, scales by one power of two where exp's full range needs two)."""
    return exp(-abs(x))


def sigmoid_value(x):
    """1 / (1 + exp(-x)) through z = exp(-|x|), which never overflows: 1/(1 + z) for
    x >= 0, z/(1 + z) below. One exp for both sides, so a loop of it vectorizes as one
    straight-line body."""
    z = exp_neg_abs(x)
    s = 1.0 / (1.0 + z)
    return s if x >= 0 else z * s


def ncdf(x):
    """The standard normal CDF Phi(x) = erfc(-x/sqrt2)/2, accurate in the left tail (a
    math function: the numba CPU backend binds a float32 form that keeps the argument
    exact, where rounding x/sqrt2 costs ~x^2/2 ulps; mpmath's ncdf is the tests' oracle)."""
    return 0.5 * erfc(-x * INV_SQRT2)


def npdf(x):
    """The standard normal density exp(-x^2/2)/sqrt(2 pi) (a math function: the numba CPU
    backend binds a float32 form with the exponent exact, sharing ncdf's arithmetic)."""
    return INV_SQRT2PI * exp(-0.5 * x * x)


def x_ncdf(x):
    """x Phi(x), the exact gelu; 0 where Phi rounds to 0 (its limit, not -inf * 0). The
    numba CPU backend binds a float32 form accurate near 0, where Phi ~ 1/2 (just above it
    for x > 0, at the bottom of its binade) carries an error relative to itself up to twice
    that of x Phi (4.5 ulp at x ~ 0.009 from a 3.6 ulp ncdf)."""
    phi = ncdf(x)
    if phi == 0.0:
        return 0.0
    return x * phi


def slope_near_root(d):
    """gelu's derivative at x0 + d, |d| < GELU_SLOPE_W: d GELU_SLOPE_C(d) by Horner's
    scheme (float64; a number or, for the numpy reference, an array of them)."""
    p = 0.0
    for c in GELU_SLOPE_C:
        p = p * d + c
    return d * p


def x_ncdf_slope(x):
    """Phi(x) + x phi(x), the derivative of x Phi(x) (gelu's); 0 where Phi rounds to 0,
    Phi where phi does (x * phi would be inf * 0 at x = inf). Its terms cancel near its
    root x0 ~ -0.7518: within GELU_SLOPE_W of it, its Taylor polynomial in x - x0, for
    float64 arithmetic only (the CUDA backend computes this in float64 for float32 too; the
    numba CPU backend binds a float32 form with a polynomial of its own, as the cython
    backend's fg_x_ncdf_slope_s is)."""
    d = (x - GELU_ROOT_HI) - GELU_ROOT_LO
    if abs(d) < GELU_SLOPE_W:
        return slope_near_root(d)
    phi = ncdf(x)
    if phi == 0.0:
        return 0.0
    pdf = npdf(x)
    if pdf == 0.0:
        return phi
    return phi + x * pdf


def softplus_tail(x):
    """log1p(exp(-|x|)) = softplus(x) - max(x, 0): exp never overflows and log1p's
    argument is in [0, 1] (the numba CPU backend binds a float32 form shortened for that)."""
    return log1p(exp_neg_abs(x))


def identity_forward(x, a, b):
    return x


def identity_backward(s, g, a, b):
    return g


def binary_step_forward(x, a, b):
    # a = threshold; NaN stays NaN.
    if x >= a:
        return 1.0
    if x < a:
        return 0.0
    return x


def binary_step_backward(s, g, a, b):
    # b = 1 for the straight-through estimator, else the true derivative 0.
    if b != 0.0:
        return g
    return 0.0


def sigmoid_forward(x, a, b):
    return sigmoid_value(x)


def sigmoid_backward(y, g, a, b):
    return g * y * (1.0 - y)


def tanh_forward(x, a, b):
    return tanh(x)


def tanh_backward(y, g, a, b):
    return g * (1.0 - y * y)


def relu_forward(x, a, b):
    return 0.0 if x < 0 else x


def relu_backward(x, g, a, b):
    # relu'(0) = 0; a NaN input gives a NaN gradient.
    if x > 0:
        return g
    if x <= 0:
        return 0.0
    return x


def leaky_relu_forward(x, a, b):
    return a * x if x < 0 else x


def leaky_relu_backward(x, g, a, b):
    if x >= 0:
        return g
    if x < 0:
        return a * g
    return x


def elu_forward(x, a, b):
    # expm1 of min(x, 0): no overflow for large positive x.
    if x > 0:
        return x
    return a * expm1(x)


def elu_backward(x, g, a, b):
    if x >= 0:
        return g
    return g * a * exp(x)


def swish_forward(x, a, b):
    # a = beta. x * sigmoid(beta x); the limit 0 at x = -inf rather than -inf * 0.
    s = sigmoid_value(a * x)
    if s == 0.0:
        return 0.0
    return x * s


def swish_backward(x, g, a, b):
    # s = sigmoid(v), v = beta x, as sigmoid_value computes it, and s (1 - s) = z / (1 +
    # z)^2: 1 - s cancels where s ~ 1 (float32 reached 11.7 ulp at x = 8.7).
    v = a * x
    z = exp_neg_abs(v)
    q = 1.0 / (1.0 + z)
    s = q if v >= 0 else z * q
    # In both saturated tails the product term is (+-inf or huge) * 0: its limit is 0.
    if s == 0.0:
        return 0.0 * g
    if z == 0.0:
        return g
    return g * (s + v * (z * q * q))


def gelu_forward(x, a, b):
    # a = 0: exact x * Phi(x), Phi the normal CDF (accurate in the left tail);
    # a = 1: tanh approximation, x * sigmoid(2u) == 0.5 x (1 + tanh(u)) without cancellation.
    if a == 0.0:
        return x_ncdf(x)
    phi = sigmoid_value(2.0 * SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x))
    if phi == 0.0:
        return 0.0
    return x * phi


def gelu_backward(x, g, a, b):
    if a == 0.0:
        return g * x_ncdf_slope(x)
    v = 2.0 * SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
    # s = sigmoid(v) as sigmoid_value computes it, and s (1 - s) = z / (1 + z)^2 on both
    # sides: 1 - s cancels where s ~ 1
    z = exp_neg_abs(v)
    q = 1.0 / (1.0 + z)
    s = q if v >= 0 else z * q
    if s == 0.0:
        return 0.0 * g
    if z == 0.0:  # v so large that s (1 - s) = 0 (x * 0 would be NaN at x = inf); not
        return g  # at s == 1: there x s (1 - s) du is still ~1e-6 (13 ulp at x = 5)
    du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x)
    # d/dx [x s(v)] = s + x s (1 - s) dv/dx, dv/dx = 2 du
    return g * (s + 2.0 * x * (z * q * q) * du)


def softplus_forward(x, a, b):
    # log(1 + exp(x)) = log1p(exp(-|x|)) + max(x, 0)
    return softplus_tail(x) + (0.0 if x < 0 else x)


def softplus_backward(x, g, a, b):
    return g * sigmoid_value(x)


def selu_forward(x, a, b):
    if x > 0:
        return SELU_SCALE * x
    return SELU_SCALE * SELU_ALPHA * expm1(x)


def selu_backward(x, g, a, b):
    if x >= 0:
        return SELU_SCALE * g
    return g * SELU_SCALE * SELU_ALPHA * exp(x)
