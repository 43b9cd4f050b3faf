"""The `numba` backend: @njit kernels built from the scalar formulas in scalar_math.

Each elementwise activation gets its loops from module-level templates specialized per
(activation, dtype) by `_specialize.specialize` (serial, and parallel with prange above
PARALLEL_THRESHOLD elements); softmax and log_softmax have row kernels; the
dense layer calls BLAS through np.dot and fuses bias + activation (forward) and the
activation's backward + the bias reduction into single passes around the matmuls.
Kernels compile lazily, once per dtype, and are cached on disk (cache=True) so that a new
process loads them rather than compiling (tests/test_numba_cache.py).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .. import update_math
from ..activations import ACTIVATIONS, ActivationSpec
from ..losses import LOSSES
from ..scalar_math import compile_scalar
from . import numba_train
from ._specialize import cache_stats, njit_tagged, specialize
from .numba_math import (
    VECTOR_MATH,
    as_dtype_of,
    exp,
    exp_neg_abs,
    from_order_key,
    order_key,
)
from .numba_train import (  # noqa: F401  (the fused epoch is a kernel of this backend)
    EpochStats,
    FusedConfig,
    OptimizerState,
    Workspace,
    fused_supports,
    make_state,
    make_workspace,
)

NAME = "numba"

PARALLEL_THRESHOLD = 1 << 16
"""Elementwise kernels use threads at and above this many elements (DESIGN.md §6: a prange
region costs ~1.5 µs; memory-bound loops pay above 2^14-2^16 elements)."""

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}
# Module-level kernels inline code of other files (numba_math's exp, the loss formulas):
# njit_tagged keys their cache entries on those files too.
_jit = njit_tagged(**_JIT)


# Templates of the elementwise kernels, never compiled themselves: `_make_elementwise`
# compiles copies whose globals bind _fwd and _bwd to one activation's scalar formulas
# (globals, not a closure, so that Numba's disk cache hits in the next process: see
# _specialize).
_fwd = _bwd = None


def _t_forward_serial(x, out, a, b):
    for i in range(x.size):
        out[i] = _fwd(x[i], a, b)


def _t_forward_parallel(x, out, a, b):
    for i in prange(x.size):
        out[i] = _fwd(x[i], a, b)


def _t_backward_serial(s, g, out, a, b):
    for i in range(g.size):
        out[i] = _bwd(s[i], g[i], a, b)


def _t_backward_parallel(s, g, out, a, b):
    for i in prange(g.size):
        out[i] = _bwd(s[i], g[i], a, b)


def _t_linear_forward(x, W, bias, has_bias, pre, out, a, b):
    # pre may alias out: each element is read once before it is written.
    np.dot(x, W, pre)
    n, m = pre.shape
    for i in range(n):
        for j in range(m):
            z = pre[i, j] + bias[j] if has_bias else pre[i, j]
            pre[i, j] = z
            out[i, j] = _fwd(z, a, b)


def _t_linear_backward(grad_y, x, W, saved, g, grad_x, grad_W, grad_b, need_grad_x, a, b):
    n, m = grad_y.shape
    grad_b[:] = 0
    for i in range(n):
        for j in range(m):
            v = _bwd(saved[i, j], grad_y[i, j], a, b)
            g[i, j] = v
            grad_b[j] += v
    np.dot(x.T, g, grad_W)
    if need_grad_x:
        np.dot(g, W.T, grad_x)


def _make_elementwise(spec: ActivationSpec, dtype: np.dtype, vector_math: bool = True):
    """Serial and parallel forward/backward loops over flat arrays of `dtype`, plus the
    fused dense-layer passes, all from the spec's scalar formulas, compiled with the
    vectorizable transcendentals of numba_math and constants in `dtype` (float32 stays
    float32, so the loops run 16 lanes wide on AVX-512 rather than 8).

    vector_math=False builds them as they were before numba_math (libm's scalar math.*,
    float64 literals): bench/numba_math_speed.py compares the two.
    """
    dtype = np.dtype(dtype)
    jit = njit(inline="always", **_JIT)
    if vector_math:
        fwd = compile_scalar(spec.scalar_forward, jit, VECTOR_MATH, dtype.type)
        bwd = compile_scalar(spec.scalar_backward, jit, VECTOR_MATH, dtype.type)
    else:
        fwd = compile_scalar(spec.scalar_forward, jit)
        bwd = compile_scalar(spec.scalar_backward, jit)
    namespace = {**globals(), "_fwd": fwd, "_bwd": bwd}
    tag = f"{spec.name}_{dtype.name}{'' if vector_math else '_libm'}"

    def build(template, **options):
        return specialize(template, namespace, tag, **_JIT, **options)

    # FMA contraction (and only that: NaN, inf and signed zeros keep IEEE semantics) in the
    # loops that inline the formulas: the flags of the loop, not of the inlined formula,
    # decide (numba_math's own functions carry it already). 1.0-1.07x in float32 (swish,
    # gelu, softplus, one thread, in cache). Not in linear_backward, whose bias sum would
    # fuse the formula's last product into the accumulation.
    fma = {"fastmath": {"contract"}}
    return {
        "forward": (build(_t_forward_serial, **fma),
                    build(_t_forward_parallel, parallel=True, **fma)),
        "backward": (build(_t_backward_serial, **fma),
                     build(_t_backward_parallel, parallel=True, **fma)),
        "linear_forward": build(_t_linear_forward, **fma),
        "linear_backward": build(_t_linear_backward),
    }


@_jit
def _row_max(x, i):
    # Starts from the row's first element (rows are non-empty here), so the max, and
    # every exp(x - max) after it, keeps the array's dtype. An integer max over the
    # elements' order keys: it vectorizes (a float max with a branch for NaN did not).
    # A NaN (sign bit clear, as np.nan) wins, so a NaN row gives NaN; one with the sign
    # bit set loses, but its exp(x - m) still makes the row's sum, so the row, NaN.
    k = order_key(x[i, 0])
    for j in range(1, x.shape[1]):
        v = order_key(x[i, j])
        k = v if v > k else k
    return from_order_key(k, x[i, 0])


# Row sums with reassociation allowed (and only that, plus FMA contraction): a running
# sum is otherwise a serial chain of additions, 4 cycles each, that LLVM may not reorder
# into vector lanes. Summing in float64 keeps float32 rows accurate whatever the order.
_sum_jit = njit_tagged(**_JIT, fastmath={"reassoc", "contract"})


@_sum_jit
def _row_sum(a, i):
    total = 0.0
    for j in range(a.shape[1]):
        total += a[i, j]
    return total


@_sum_jit
def _row_dot(a, b, i):
    total = 0.0
    for j in range(a.shape[1]):
        total += np.float64(a[i, j]) * b[i, j]
    return total


_SUM_CHUNK = np.uint64(128)
"""Terms of exp(x - m) summed in float32 before they join the float64 total."""


@_sum_jit
def _sum_chunk(x):
    # float32 rows: _SUM_CHUNK; float64 ones sum in one piece (their partials are float64
    # already, and a serial chain of chunk sums would only add rounding).
    return _SUM_CHUNK if x.itemsize < 8 else np.uint64(x.shape[1]) + np.uint64(1)


@_sum_jit
def _row_exp_sum(x, out, i, m):
    # sum_j exp(x[i, j] - m) in float64, the terms stored in out[i].
    #
    # x - m <= 0 (or NaN), so exp_neg_abs: one power of two and no overflow clamp, where
    # exp takes two and both clamps. In float32, _SUM_CHUNK terms at a time are summed in
    # float32, then added in float64: vectors hold twice the lanes and need no conversion
    # (rows of 1000-5000: within 4 ulp of the row's largest term; with chunks of 256,
    # 7 ulp at 255 columns, the lanes summing more terms each).
    # Unsigned indices: Numba adds no negative-index wraparound, which kept LLVM from
    # vectorizing loops that do not start at 0. Float32 rows of 1024, one thread, in
    # cache: 0.54 -> 0.38 ns an element (exp_neg_abs 0.45, the float32 partials 0.38).
    # Terms equal to 1 (the max's, ties, x - m too small to matter) are left out of the
    # partials and counted: in a partial, 1 would round away every term under half its
    # ulp, all of the rest when the max dominates (float32 softmax 6 ulp off at the max,
    # float64 55 at 4097 columns); counted in the dtype beside the partial, which keeps
    # the loop vectorized (an integer count: 0.54 against 0.46 ns an element).
    n, chunk = np.uint64(x.shape[1]), _sum_chunk(x)
    one = as_dtype_of(1.0, x)
    total = 0.0
    ones = 0.0
    zero = as_dtype_of(0.0, x)
    for start in range(np.uint64(0), n, chunk):
        stop = min(start + chunk, n)
        part = zero
        count = zero
        for j in range(start, stop):
            e = exp_neg_abs(x[i, j] - m)
            out[i, j] = e
            is_one = e == one
            part += zero if is_one else e
            count += one if is_one else zero
        total += part
        ones += count
    return total + np.float64(ones)


@_sum_jit
def _row_exp_rest(x, i, m):
    # log sum_j exp(x[i, j] - m) = log1p(rest): rest sums the terms of the elements below
    # the max, plus one for each further element equal to it. Their exp(0) = 1 would
    # otherwise sit in a float32 partial and round away the small terms' digits, which
    # are all of the log-sum-exp when the max dominates the row. (m - m) makes rest NaN
    # when m is infinite, as the reference's inf - inf does.
    # The elements equal to m are counted in the same loop, in the dtype beside the partial
    # (as _row_exp_sum counts its ones), not in a second pass over the row: 1.03-1.07x in
    # cache (float32, 2^18 elements), the same at 2^24 (memory-bound there).
    n, chunk = np.uint64(x.shape[1]), _sum_chunk(x)
    one = as_dtype_of(1.0, x)
    zero = as_dtype_of(0.0, x)
    total = 0.0
    ties = 0.0
    for start in range(np.uint64(0), n, chunk):
        part = zero
        count = zero
        for j in range(start, min(start + chunk, n)):
            e = exp_neg_abs(x[i, j] - m)
            tie = x[i, j] == m
            part += zero if tie else e
            count += one if tie else zero
        total += part
        ties += count
    return total + (ties - 1.0) + (np.float64(m) - np.float64(m))


def _t_softmax_forward_rows(x, out):
    if x.shape[1] == 0:
        return
    # In place (out is x), each row is read from a copy: LLVM does not vectorize a loop
    # that reads x and writes out when they are the same memory (its runtime alias check
    # fails), and the serial float32 sum left rounded away the small terms beside
    # near-ties of the max (45 ulp); the copy also makes it ~5x faster.
    in_place = x.ctypes.data == out.ctypes.data
    for i in prange(x.shape[0]):
        m = _row_max(x, i)
        src = x[i:i + 1].copy() if in_place else x[i:i + 1]
        inv = as_dtype_of(1.0 / _row_exp_sum(src, out[i:i + 1], 0, m), out)
        for j in range(x.shape[1]):
            out[i, j] *= inv


def _t_log_softmax_forward_rows(x, out):
    if x.shape[1] == 0:
        return
    for i in prange(x.shape[0]):
        m = _row_max(x, i)
        shift = as_dtype_of(math.log1p(_row_exp_rest(x, i, m)), x)
        # (x - m) - shift, not x - (m + shift): the latter loses log's digits when |m| is
        # large (m = 2e12 in float64 keeps only 11 fraction bits of log 2).
        for j in range(x.shape[1]):
            out[i, j] = (x[i, j] - m) - shift


def _t_softmax_backward_rows(y, g, out):
    # grad_x = y * (g - sum(g * y)), the Jacobian diag(y) - y y^T applied to g.
    for i in prange(y.shape[0]):
        dot = _row_dot(g, y, i)
        for j in range(y.shape[1]):
            out[i, j] = y[i, j] * (g[i, j] - dot)


def _t_log_softmax_backward_rows(y, g, out):
    # grad_x = g - exp(y) * sum(g)
    for i in prange(y.shape[0]):
        # The sum in the arrays' dtype: a float64 factor would widen the loop (half the
        # lanes for float32).
        total = as_dtype_of(_row_sum(g, i), g)
        for j in range(y.shape[1]):
            out[i, j] = g[i, j] - exp(y[i, j]) * total


def _row_variants(template):
    """(serial, parallel) compiled copies of a row-kernel template (prange is range in
    the serial one). Small arrays take the serial one: a prange region wakes Numba's
    threads, which then spin beside OpenBLAS's pool after a gemm (a softmax of 128 x 10
    after the medium net's matmuls took its layer-by-layer step from ~1,000 to ~125
    steps/s on 2 threads)."""
    return tuple(specialize(template, globals(), variant, **_JIT, parallel=parallel)
                 for variant, parallel in (("serial", False), ("parallel", True)))


softmax_forward_rows = _row_variants(_t_softmax_forward_rows)
log_softmax_forward_rows = _row_variants(_t_log_softmax_forward_rows)
softmax_backward_rows = _row_variants(_t_softmax_backward_rows)
log_softmax_backward_rows = _row_variants(_t_log_softmax_backward_rows)

_ROWS = {
    "softmax": (softmax_forward_rows, softmax_backward_rows),
    "log_softmax": (log_softmax_forward_rows, log_softmax_backward_rows),
}


def _rows_kernel(spec: ActivationSpec, backward: bool, size: int):
    """The row kernel for an array of `size` elements: threads from PARALLEL_THRESHOLD."""
    return _ROWS[spec.name][backward][size >= PARALLEL_THRESHOLD]

_KERNELS: dict[tuple[str, np.dtype], dict] = {}


def _kernels(spec: ActivationSpec, dtype) -> dict:
    key = (spec.name, np.dtype(dtype))
    k = _KERNELS.get(key)
    if k is None:
        k = _KERNELS[key] = _make_elementwise(ACTIVATIONS[spec.name], key[1])
    return k


def cache_report() -> dict[str, dict[str, int]]:
    """How this process got each numba kernel it has run: ``{"module.qualname": {"hits":
    loaded from the disk cache, "misses": compiled}}`` per kernel (the fused epoch
    included). On a warm cache every miss count is 0."""
    return cache_stats(globals(), vars(numba_train), _KERNELS, numba_train._EPOCHS)


def _scalars(dtype, a: float, b: float):
    """Parameters in the array's dtype, so float32 kernels are typed float32."""
    t = dtype.type
    return t(a), t(b)


def activation_forward(spec: ActivationSpec, x, out, a: float, b: float) -> None:
    if spec.rowwise:
        _rows_kernel(spec, False, x.size)(x, out)
        return
    serial, parallel = _kernels(spec, x.dtype)["forward"]
    kernel = parallel if x.size >= PARALLEL_THRESHOLD else serial
    kernel(x, out, *_scalars(x.dtype, a, b))


def activation_backward(spec: ActivationSpec, grad, saved, out, a: float, b: float) -> None:
    if spec.rowwise:
        _rows_kernel(spec, True, grad.size)(saved, grad, out)
        return
    if saved is None:  # identity / binary_step: the formula ignores it
        saved = grad
    serial, parallel = _kernels(spec, grad.dtype)["backward"]
    kernel = parallel if grad.size >= PARALLEL_THRESHOLD else serial
    kernel(saved, grad, out, *_scalars(grad.dtype, a, b))


def linear_forward(x, W, bias, out, pre, spec: ActivationSpec, a: float, b: float) -> None:
    if spec.rowwise:
        identity = _kernels(ACTIVATIONS["identity"], x.dtype)["linear_forward"]
        z = out if pre is None else pre
        identity(x, W, *_bias_args(bias, out), z, z, *_scalars(x.dtype, a, b))
        _rows_kernel(spec, False, z.size)(z, out)
        return
    kernel = _kernels(spec, x.dtype)["linear_forward"]
    kernel(x, W, *_bias_args(bias, out), out if pre is None else pre, out,
           *_scalars(x.dtype, a, b))


def _bias_args(bias, out):
    if bias is None:
        return np.zeros(out.shape[1], out.dtype), False
    return bias, True


def linear_backward(grad_y, x, W, saved, spec: ActivationSpec, a: float, b: float,
                    need_grad_x: bool):
    dtype = grad_y.dtype
    n, m = grad_y.shape
    grad_W = np.empty(W.shape, dtype)
    grad_b = np.empty(m, dtype)
    grad_x = np.empty(x.shape, dtype) if need_grad_x else np.empty((0, 0), dtype)
    if spec.rowwise:
        g = np.empty_like(grad_y)
        _rows_kernel(spec, True, g.size)(saved, grad_y, g)
        spec, saved = ACTIVATIONS["identity"], g
        grad_y = g
    kernel = _kernels(spec, dtype)["linear_backward"]
    g = np.empty_like(grad_y)
    kernel(grad_y, x, W, grad_y if saved is None else saved, g, grad_x, grad_W, grad_b,
           need_grad_x, *_scalars(dtype, a, b))
    return (grad_x if need_grad_x else None), grad_W, grad_b


# --- losses: pred and target (N, K); math in float64 whatever the arrays' dtype --------

# The elementwise losses' scalar formulas, compiled once at module level and read by the
# kernels below as globals (a closure over them would miss the disk cache, see
# _specialize).
_ELEMENTWISE_LOSSES = ("mse", "binary_cross_entropy")
_inline = njit(inline="always", **_JIT)
_mse_value = compile_scalar(LOSSES["mse"].scalar_value, _inline)
_mse_grad = compile_scalar(LOSSES["mse"].scalar_grad, _inline)
_bce_value = compile_scalar(LOSSES["binary_cross_entropy"].scalar_value, _inline)
_bce_grad = compile_scalar(LOSSES["binary_cross_entropy"].scalar_grad, _inline)


@_jit
def elementwise_loss_forward(p, t, kind):
    # kind indexes _ELEMENTWISE_LOSSES; the branch is loop-invariant (LLVM unswitches it).
    total = 0.0
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            a, b = np.float64(p[i, j]), np.float64(t[i, j])
            total += _mse_value(a, b) if kind == 0 else _bce_value(a, b)
    return total / (p.shape[0] * p.shape[1])


@_jit
def elementwise_loss_backward(p, t, out, scale, kind):
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            a, b = np.float64(p[i, j]), np.float64(t[i, j])
            out[i, j] = (_mse_grad(a, b) if kind == 0 else _bce_grad(a, b)) * scale


@_jit
def _row_logsumexp(z, i):
    """(row max, log sum exp(z - max)) of row i."""
    m = -np.inf
    for j in range(z.shape[1]):
        v = np.float64(z[i, j])
        if v > m or v != v:
            m = v
    total = 0.0
    for j in range(z.shape[1]):
        total += math.exp(z[i, j] - m)
    return m, total


@_jit
def cross_entropy_forward(z, t):
    total = 0.0
    for i in range(z.shape[0]):
        m, s = _row_logsumexp(z, i)
        lse = m + math.log(s)
        for j in range(z.shape[1]):
            if t[i, j] != 0:  # classes without target weight never meet lse - z = inf
                total += t[i, j] * (lse - z[i, j])
    return total / z.shape[0]


@_jit
def cross_entropy_backward(z, t, out, scale):
    for i in range(z.shape[0]):
        m, s = _row_logsumexp(z, i)
        inv = 1.0 / s
        for j in range(z.shape[1]):
            out[i, j] = (math.exp(z[i, j] - m) * inv - t[i, j]) * scale


def loss_forward(spec, pred, target) -> float:
    if spec.rowwise:
        return float(cross_entropy_forward(pred, target))
    return float(elementwise_loss_forward(pred, target, _ELEMENTWISE_LOSSES.index(spec.name)))


def loss_backward(spec, pred, target, out) -> None:
    if spec.rowwise:
        cross_entropy_backward(pred, target, out, 1.0 / pred.shape[0])
        return
    elementwise_loss_backward(pred, target, out, 1.0 / pred.size,
                              _ELEMENTWISE_LOSSES.index(spec.name))


# --- optimizer updates: one fused pass over each parameter, PyTorch's formulas ---------

# The per-element steps of fastgrad.update_math, inlined (the cache key follows that file:
# _specialize.INLINED_SOURCES).
_sgd_step = _inline(update_math.sgd_step)
_adam_step = _inline(update_math.adam_step)
_rmsprop_step = _inline(update_math.rmsprop_step)


@_jit
def _sgd_kernel(p, g, vel, lr, momentum, wd, nesterov):
    for i in range(p.size):
        p[i], v = _sgd_step(np.float64(p[i]), g[i], vel[i] if momentum != 0.0 else 0.0, lr,
                            momentum, wd, nesterov)
        if momentum != 0.0:
            vel[i] = v


@_jit
def _adam_kernel(p, g, m, v, beta1, beta2, eps, shrink, l2, step_size, inv_sqrt_bc2):
    for i in range(p.size):
        p[i], m[i], v[i] = _adam_step(np.float64(p[i]), g[i], m[i], v[i], beta1, beta2, eps,
                                      shrink, l2, step_size, inv_sqrt_bc2)


@_jit
def _rmsprop_kernel(p, g, sq, buf, lr, alpha, eps, wd, momentum):
    for i in range(p.size):
        p[i], sq[i], b = _rmsprop_step(np.float64(p[i]), g[i], sq[i],
                                       buf[i] if momentum != 0.0 else 0.0, lr, alpha, eps,
                                       wd, momentum)
        if momentum != 0.0:
            buf[i] = b


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    _sgd_kernel(param, grad, velocity, float(lr), float(momentum), float(weight_decay),
                bool(nesterov))


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                step) -> None:
    wd = float(weight_decay)
    shrink, l2 = (1.0 - lr * wd, 0.0) if decoupled else (1.0, wd)
    _adam_kernel(param, grad, m, v, float(beta1), float(beta2), float(eps), float(shrink),
                 l2, lr / (1.0 - beta1**step), 1.0 / math.sqrt(1.0 - beta2**step))


def rmsprop_update(param, grad, square_avg, momentum_buf, lr, alpha, eps, weight_decay,
                   momentum) -> None:
    _rmsprop_kernel(param, grad, square_avg, momentum_buf, float(lr), float(alpha),
                    float(eps), float(weight_decay), float(momentum))


# =========================================================================================
# The trainer's fused epoch runner: an adapter from `fastgrad.train.EpochPlan` to the
# compiled epoch of numba_train. Kept apart from the kernels above on purpose.
# =========================================================================================

from . import _fit_adapter  # noqa: E402  (the section's own imports)
from . import numba_train as _nt  # noqa: E402
from ._fit_adapter import optimizer_state as _optimizer_state  # noqa: E402


def train_epoch_reason(plan) -> str | None:
    """Why the fused runner cannot run `plan` (a fastgrad.train.EpochPlan), or None when it
    can: what every fused runner needs (`_fit_adapter.plan_reason`: logits out of the last
    layer, a loss and an optimizer (exact type) the kernel implements, X and T C-contiguous
    in the parameters' dtype), one elementwise hidden activation (same parameters in every
    hidden layer), and hyper-parameters representable in the dtype."""
    why = _fit_adapter.plan_reason(plan, _nt.LOSSES)
    if why is not None:
        return why
    dtype = plan.params.dtype
    hidden = {(spec.name, a, b) for _W, _b, spec, a, b in plan.layers[:-1]}
    if len(hidden) > 1:
        return (f"mixed hidden activations (or parameters) "
                f"{sorted(str(h) for h in hidden)}")
    for name, _a, _b in hidden:
        spec = ACTIVATIONS[name]
        if spec.rowwise or spec.scalar_forward is None:
            return f"hidden activation {name!r} is not elementwise"
    _name, _state, hyper = _optimizer_state(plan.optimizer)
    # The kernel computes in the arrays' dtype: a hyper-parameter that overflows or
    # flushes to zero in it would train differently from the float64 optimizer kernels.
    for name, v in (("lr", plan.lr), ("weight_decay", plan.optimizer.weight_decay),
                    ("clip_norm", plan.clip_norm), ("clip_value", plan.clip_value),
                    *((k, v) for k, v in hyper.items() if k != "nesterov")):
        if v is not None and not _fit_adapter.representable(v, dtype):
            return f"{name}={v!r} is not representable in {dtype}"
    return None


def supports_train_epoch(plan) -> bool:
    """Whether `train_epoch(plan)` runs this plan (see `train_epoch_reason`)."""
    return train_epoch_reason(plan) is None


class _FitAdapter(_fit_adapter.FitAdapter):
    """The numba kernel's side of the shared adapter: per-layer views (weights, biases,
    gradients into the model's flat buffers; optimizer state into the optimizer's flat
    arrays) and numba_train's workspace."""

    cache_name = "numba.train_epoch"

    def __init__(self, plan, opt_name: str, state_arrays: tuple) -> None:
        super().__init__(plan, opt_name, state_arrays)
        dtype = plan.params.dtype
        Ws = tuple(W for W, *_ in plan.layers)
        bs = tuple(b for _W, b, *_ in plan.layers)
        self.Ws, self.bs = Ws, bs
        sizes = (Ws[0].shape[0], *(W.shape[1] for W in Ws))
        ws = _nt.make_workspace(sizes, plan.batch_size, dtype)
        # the gradients land in the trainer's flat buffer (W then b per layer), so fit's
        # diagnosis of a non-finite gradient reads them where the layer runner leaves them
        ws.dW = tuple(plan.grads[s][:W.size].reshape(W.shape)
                      for s, W in zip(plan.layer_slices, Ws))
        ws.db = tuple(plan.grads[s][W.size:] for s, W in zip(plan.layer_slices, Ws))
        self.ws = ws

        def views(flat):
            return (tuple(flat[s][:W.size].reshape(W.shape) for s, W in zip(plan.layer_slices, Ws)),
                    tuple(flat[s][W.size:] for s, W in zip(plan.layer_slices, Ws)))

        m_W, m_b = views(state_arrays[0])
        v_W, v_b = views(state_arrays[1])
        self.state = _nt.OptimizerState(opt_name, m_W, m_b, v_W, v_b, np.zeros(1, np.int64))
        self.labels = np.zeros(0, np.int64)  # cross-entropy takes T's one-hot rows
        self.no_order = np.zeros(0, np.int64)  # X and T come shuffled: batches are views
        spec = plan.layers[0][2] if len(plan.layers) > 1 else ACTIVATIONS["identity"]
        self.spec = spec
        self.kernel = _nt._epoch_kernel(spec, dtype)
        self.epochs_kernel = None  # run_epochs's, compiled on first use
        self.act = plan.layers[0][3:5] if len(plan.layers) > 1 else (0.0, 0.0)

    def configure(self, plan, hyper: dict, use_order: bool) -> None:
        # written into the workspace only when they changed: once per fit unless a
        # schedule changes lr
        values = _fit_adapter.hyper_values(plan, hyper)
        values["a"], values["b"] = self.act
        config = (plan.loss.name, self.opt_name, plan.batch_size, use_order,
                  tuple(values[name] for name in _nt._HP), hyper.get("nesterov", False),
                  plan.optimizer.decay)
        if config != self.configured:
            loss_name, opt_name, batch_size, _, hp, nesterov, decay = config
            _nt._configure(self.ws, loss_name, opt_name, batch_size, use_order, hp, nesterov,
                           decay, count_units=False)
            self.configured = config

    def run(self, plan, lo: int, hi: int, step: int) -> int:
        self.state.step[0] = step
        k0 = lo // plan.batch_size
        _nt._launch(self.kernel, plan.X[lo:hi], self.no_order, self.labels, plan.T[lo:hi],
                    self.Ws, self.bs, self.state, self.ws, plan.batch_loss[k0:],
                    plan.grad_sq[k0:])
        plan.optimizer.steps = int(self.state.step[0])
        return k0 + int(self.ws.result[0])

    def run_epochs(self, plan, orders: np.ndarray, step: int) -> tuple[int, int]:
        if self.epochs_kernel is None:
            self.epochs_kernel = _nt._epochs_kernel(self.spec, plan.params.dtype)
        self.state.step[0] = step
        done = _nt._launch(self.epochs_kernel, plan.X, orders, self.labels, plan.T, self.Ws,
                           self.bs, self.state, self.ws, plan.batch_loss, plan.grad_sq)
        return int(done), int(self.state.step[0])


def train_epoch(plan, *args, **kwargs):
    """The fused epoch runner for `fastgrad.train.fit`: the whole epoch of `plan` (a
    fastgrad.train.EpochPlan) in one compiled call of numba_train's kernel, with the
    trainer's conventions (PyTorch's losses and updates, the optimizer's own state arrays
    and step count) and the runner contract of `_fit_adapter.train_epoch` (batch records,
    the non-finite replay).

    Called with the fused kernel's own arguments ``(X, Y, order, weights, biases, state,
    config, workspace=None)``, it is numba_train.train_epoch, the standalone API of
    docs/fused.md, and returns its EpochStats."""
    if args or kwargs:
        return _nt.train_epoch(plan, *args, **kwargs)
    _fit_adapter.check_launch(plan, plan.n_batches)  # the kernel indexes them unchecked
    return _fit_adapter.train_epoch(_FitAdapter, plan)


def train_epochs(plan, orders: np.ndarray) -> int:
    """Several epochs of `plan` in one compiled call: fit's blocks of epochs, for fits that
    need no Python between epochs (the per-epoch call and its bookkeeping cost ~1.5 us a
    step of a 64-64-10 net at batch 32, ~14%). Rows gathered inside the kernel as
    train_epoch's caller gathers them, so both give the same batches; the contract is
    `_fit_adapter.train_epochs`'s."""
    _fit_adapter.check_block(plan, orders)  # the kernel indexes by them unchecked
    return _fit_adapter.train_epochs(_FitAdapter, plan, orders)


train_epoch.train_epochs = train_epochs  # the runner's form for blocks of epochs (fit)
