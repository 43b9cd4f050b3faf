"""Fused MLP training on the numba backend: one compiled call runs a whole epoch.

Small MLPs on a CPU are bound by per-call overhead, not FLOPs (DESIGN.md §3, §5), so the
whole epoch - gather each mini-batch, forward, loss, backward, gradient checks, clipping and
the optimizer update, for every batch - runs inside one @njit function. The loop allocates
nothing: every buffer comes from `make_workspace` (cached by the caller), optimizer state
from `make_state`; matmuls are BLAS calls through ``np.dot(a, b, out)`` with transposes
passed as layout flags (``np.dot(h.T, g, dW)``), except g @ W.T for a W of few columns
(`_dot_t`); bias + activation, the loss + its gradient + the bias reduction, and the
activation backward + the bias reduction are each one pass (softmax cross-entropy: three
short ones, so that its exponentials run as one vectorized loop). Elementwise work runs in
the arrays' dtype (float32 at full vector width).
No Numba threads (``prange``) are used: at these sizes they never helped, and they must not
spin beside OpenBLAS's pool (DESIGN.md §5).

Contract
--------
``train_epoch(X, Y, order, weights, biases, state, config, workspace=None) -> EpochStats``

- ``X``: (n, d0) C-contiguous float32 or float64. Every array shares this dtype.
- ``Y``: ``loss="cross_entropy"``: int64 class indices (n,) in [0, d_out), or (n, d_out)
  floats of X's dtype whose rows sum to 1 (one-hot, as the trainer passes them);
  ``"mse"`` and ``"binary_cross_entropy"``: (n, d_out) floats of X's dtype (BCE targets
  in [0, 1], usually d_out = 1; d_out > 1 is independent binary outputs).
- ``order``: int64 permutation of range(n), or None for 0..n-1. Batch k holds the samples
  ``order[k*B:(k+1)*B]`` (the last one may be partial), gathered into a workspace buffer;
  with None each batch is a view of X (no copy).
- ``weights[l]``: (d_l, d_{l+1}), ``biases[l]``: (d_{l+1},), C-contiguous, updated in place.
  Layer l computes ``z = a @ W + b``; hidden layers apply ``config.activation``, the
  output layer the loss's own output (identity, sigmoid, softmax).
- ``state``: from ``make_state(weights, biases, config.optimizer)``, updated in place
  (velocity or Adam moments, and the step counter ``state.step`` = updates applied).
- ``config``: a `FusedConfig`.

Conventions: the trainer's (`fastgrad.losses`, `fastgrad.optim`: PyTorch's), so that `fit`
trains the same whether it runs this kernel or its layer-by-layer runner (the test oracle
in tests/test_fused.py and tests/test_fit_fused.py check both):

- Loss of a batch of r samples and k outputs, PyTorch's ``reduction="mean"``: mse
  ``0.5 * mean over the r*k elements of (z - t)^2``; binary_cross_entropy ``mean over the
  r*k elements of softplus(z) - z t`` (from the logits, stable for any z); cross_entropy
  ``mean over the r rows of sum_j t_j (logsumexp(z) - z_j)`` (``logsumexp(z) - z_y`` for
  an index y). Its gradient w.r.t. the logits is ``(z - t) / (r k)``,
  ``(sigmoid(z) - t) / (r k)``, ``(softmax(z) - t) / r``. The penalty of weight decay is
  not part of the loss, except with ``decay="sklearn"`` (below).
- Gradient processing per batch, in this order: (1) data gradient; (2) if the batch loss or
  any gradient is not finite, stop before the update (see EpochStats); (3) clip each element
  to [-clip_value, clip_value] (0 = off); (4) if the global L2 norm over all layers' W and
  b exceeds clip_norm (0 = off), scale all by ``clip_norm / norm``; (5) optimizer update.
- Weight decay, ``decay="pytorch"`` (the default): on every parameter, weights and biases
  (PyTorch's default, and the trainer's flat parameter buffer). sgd, adam, rmsprop: L2
  (``g += wd * p``); adamw: decoupled (``p -= lr * wd * p`` before the Adam step).
  ``decay="sklearn"`` (scikit-learn's MLP penalty, not with adamw): on the weight matrices
  only, divided by the batch's rows r (the last batch may be shorter), ``gW += wd * W / r``,
  and its penalty ``0.5 * wd * sum_k ||W_k||^2 / r`` (the weights before the update) IS
  added to the batch loss, as scikit-learn's loss_curve_ has it.
- sgd (PyTorch's form): ``v = momentum * v + g``; ``W -= lr * (g + momentum * v)`` with
  nesterov, else ``W -= lr * v``; momentum 0 is plain ``W -= lr * g`` (no velocity kept).
- adam/adamw: ``t += 1; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
  W -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
- rmsprop (PyTorch's, not centered): ``s = alpha s + (1 - alpha) g^2; u = g / (sqrt(s) +
  eps)``; with momentum ``b = momentum * b + u; u = b``; ``W -= lr * u``. State: m = the
  momentum buffer (momentum > 0 only), v = s.

Compilation: one compiled epoch function per (hidden activation, dtype, number of layers);
loss, optimizer and the rest of the config are run-time switches outside the inner loops,
so a trainer and the test suite pay few compiles. cache=True, and the functions are built
so that the cache hits in a new process (see `_build_epoch`).

Threads: no Numba threads. Numba's np.dot calls SciPy's OpenBLAS, a second library beside
NumPy's; a caller limiting BLAS threads with threadpoolctl must import scipy.linalg first
so both are limited. One workspace and one state per concurrent caller (the kernel
releases the GIL and writes into them).

Layout choices (measured, bench/fused_step.py and DESIGN.md §5): batches are gathered
inside the kernel through row views (a vectorized copy whose cache misses overlap: at 64
features 0.3 µs per batch of 32 in cache, ~1 µs from DRAM, faster than np.take); with
order=None a batch is a view of X. Every matmul is BLAS (hand loops lost at every shape
of the small net, 4-10x; a fused g @ W.T + activation backward, 32x10 @ 10x64, ran 4x
slower than BLAS still). Where the 64-64-10 step's ~10 µs go (batch 32, float32, one
thread; each part timed alone in a compiled loop, a quiet machine): the five matmuls
~6.9 µs (the two 32x64x64 ones at the core's peak, ~110 GFLOP/s; the three with 10 columns
~0.65 µs each), the softmax-CE layer ~1.1 µs, the SGD update ~0.3 µs, bias + ReLU forward
~0.2 µs (fit's runner counts no units), its backward ~0.3 µs, the gradient norms ~0.15 µs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from .. import scalar_math
from ..activations import ActivationSpec, get_activation
from ..scalar_math import compile_scalar
from ._specialize import njit_tagged, specialize
from .numba_math import VECTOR_MATH, exp_neg_abs

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

LOSSES = ("mse", "binary_cross_entropy", "cross_entropy")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
DECAYS = ("pytorch", "sklearn")  # weight-decay conventions (see the module docstring)
_SAT_NONE, _SAT_SIGMOID, _SAT_TANH = 0, 1, 2
# Indices into the hyper-parameter vector the kernel takes (in the arrays' dtype).
_HP = ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "clip_norm", "clip_value",
       "a", "b", "alpha")


# --------------------------------------------------------------------------- public types

@dataclass(frozen=True)
class FusedConfig:
    """What one fused epoch does. Validated on construction (clear errors, before any
    compiled code runs)."""

    loss: str
    batch_size: int
    optimizer: str = "sgd"
    lr: float = 0.01
    activation: str = "relu"
    activation_params: Mapping[str, Any] = field(default_factory=dict)
    momentum: float = 0.0
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    clip_value: float = 0.0
    alpha: float = 0.99
    decay: str = "pytorch"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)} for the fused "
                             f"path, got {self.optimizer!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size,
                                                               (int, np.integer)):
            raise TypeError(f"batch_size must be an int, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        spec = self.spec
        if spec.rowwise or spec.scalar_forward is None:
            raise ValueError(f"activation {spec.name!r} is not elementwise: the fused path "
                             f"supports only elementwise hidden activations")
        for name in ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "clip_norm",
                     "clip_value", "alpha"):
            v = getattr(self, name)
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a real number, got {v!r}") from None
            if not math.isfinite(fv) or fv < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        if not (self.beta1 < 1 and self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be < 1, got {self.beta1}, {self.beta2}")
        if self.alpha > 1:
            raise ValueError(f"alpha must be <= 1, got {self.alpha}")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(map(repr, DECAYS))}, got "
                             f"{self.decay!r}")
        if self.decay == "sklearn" and self.optimizer == "adamw":
            raise ValueError("decay='sklearn' is an L2 penalty on the gradient; adamw's "
                             "decay is decoupled: use adam, sgd or rmsprop with it")

    @property
    def spec(self) -> ActivationSpec:
        return get_activation(self.activation)

    def encoded(self) -> tuple[float, float]:
        """The hidden activation's (a, b) kernel parameters."""
        return self.spec.encoded(self.activation_params)


@dataclass
class OptimizerState:
    """Per-parameter optimizer state, updated in place by `train_epoch`.

    sgd with momentum: m = velocity; adam/adamw: m, v = first and second moments; rmsprop:
    m = momentum buffer (momentum > 0), v = running mean of g^2. Unused
    slots hold empty arrays of the same type (so every optimizer shares one compiled
    signature). ``step``: int64 array of one element, the number of updates applied.
    """

    optimizer: str
    m_W: tuple
    m_b: tuple
    v_W: tuple
    v_b: tuple
    step: np.ndarray


@dataclass
class Workspace:
    """Preallocated buffers of one (layer sizes, batch size, dtype): create once with
    `make_workspace` and pass to every `train_epoch` call."""

    sizes: tuple[int, ...]
    batch_size: int
    dtype: np.dtype
    xb: np.ndarray      # gathered batch, flat B * d0
    z: np.ndarray       # pre-activations of every layer, flat
    h: np.ndarray       # hidden outputs, flat
    g: np.ndarray       # gradients w.r.t. z, flat
    offsets: np.ndarray  # int64: start of layer l in z/h/g (per-sample widths times B)
    dW: tuple
    db: tuple
    hp: np.ndarray      # hyper-parameters in the arrays' dtype
    ip: np.ndarray      # int64 switches
    loss_acc: np.ndarray
    grad_sq: np.ndarray
    batch_sq: np.ndarray
    active: np.ndarray
    saturated: np.ndarray
    result: np.ndarray
    wt: np.ndarray      # scratch: a transposed weight matrix (see _dot_t)


@dataclass
class EpochStats:
    """What one epoch reports.

    loss: the batches' mean losses (see Conventions) averaged over the samples of the
    batches whose update was applied, each batch weighted by its rows (nan when none was).
    grad_sq: (L,) per layer, mean over applied batches of
    ||dW||^2 + ||db||^2 of the data gradient (before clipping and weight decay).
    active / saturated: per hidden layer, (d_l,) int64 counts of samples where the unit's
    pre-activation was > 0 / its output saturated (sigmoid y < 0.01 or > 0.99, tanh
    |y| > 0.99; 0 for other activations), over applied batches.
    n_batches, n_samples: batches and samples whose update was applied.
    bad_batch: index (in this epoch) of the batch whose loss or gradient was not finite,
    where training stopped before its update; -1 when all were finite. bad_layer: the first
    layer (0-based, input side) with a non-finite gradient in it, -1 when none (the loss
    alone was not finite, or no stop).
    """

    loss: float
    grad_sq: np.ndarray
    active: list[np.ndarray]
    saturated: list[np.ndarray]
    n_batches: int
    n_samples: int
    bad_batch: int = -1
    bad_layer: int = -1

    @property
    def finite(self) -> bool:
        return self.bad_batch < 0


# --------------------------------------------------------------------------- helpers

def _check_params(weights, biases) -> tuple[tuple, tuple, np.dtype, tuple[int, ...]]:
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence):
        raise TypeError("weights must be a list or tuple of 2-D arrays")
    if isinstance(biases, np.ndarray) or not isinstance(biases, Sequence):
        raise TypeError("biases must be a list or tuple of 1-D arrays")
    if len(weights) == 0:
        raise ValueError("weights is empty: the network needs at least one layer")
    if len(biases) != len(weights):
        raise ValueError(f"{len(weights)} weight arrays but {len(biases)} bias arrays")
    dtype = None
    sizes: list[int] = []
    for i, (W, b) in enumerate(zip(weights, biases)):
        for name, arr, ndim in ((f"weights[{i}]", W, 2), (f"biases[{i}]", b, 1)):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
            if arr.ndim != ndim:
                raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
            if arr.dtype not in (np.float32, np.float64):
                raise TypeError(f"{name} has dtype {arr.dtype}, expected float32 or float64")
            if dtype is None:
                dtype = arr.dtype
            elif arr.dtype != dtype:
                raise TypeError(f"{name} has dtype {arr.dtype}, expected {dtype} "
                                f"(the dtype of weights[0])")
            if not arr.flags.c_contiguous or not arr.flags.writeable:
                raise ValueError(f"{name} must be C-contiguous and writeable (updated in place)")
        if i == 0:
            sizes.append(W.shape[0])
        elif W.shape[0] != sizes[-1]:
            raise ValueError(f"weights[{i}] has shape {W.shape}: its {W.shape[0]} inputs do not "
                             f"match the {sizes[-1]} outputs of weights[{i - 1}]")
        if b.shape != (W.shape[1],):
            raise ValueError(f"biases[{i}] has shape {b.shape}, expected ({W.shape[1]},) "
                             f"(the outputs of weights[{i}])")
        sizes.append(W.shape[1])
    return tuple(weights), tuple(biases), np.dtype(dtype), tuple(sizes)


def make_state(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
               optimizer: str = "sgd", momentum: float = 0.0) -> OptimizerState:
    """Zeroed optimizer state for these parameters (shapes and dtype taken from them).

    sgd keeps a velocity only when ``momentum > 0``; adam/adamw keep two moments; rmsprop
    keeps its square average and, when ``momentum > 0``, a momentum buffer.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    weights, biases, dtype, _ = _check_params(weights, biases)
    empty_W = tuple(np.zeros((0, 0), dtype) for _ in weights)
    empty_b = tuple(np.zeros(0, dtype) for _ in biases)
    like_W = tuple(np.zeros_like(W) for W in weights)
    like_b = tuple(np.zeros_like(b) for b in biases)
    if optimizer == "rmsprop":
        return OptimizerState(optimizer, like_W if momentum > 0 else empty_W,
                              like_b if momentum > 0 else empty_b,
                              tuple(np.zeros_like(W) for W in weights),
                              tuple(np.zeros_like(b) for b in biases), np.zeros(1, np.int64))
    if optimizer == "sgd":
        if momentum > 0:
            return OptimizerState(optimizer, like_W, like_b, empty_W, empty_b,
                                  np.zeros(1, np.int64))
        return OptimizerState(optimizer, empty_W, empty_b, empty_W, empty_b,
                              np.zeros(1, np.int64))
    return OptimizerState(optimizer, like_W, like_b, tuple(np.zeros_like(W) for W in weights),
                          tuple(np.zeros_like(b) for b in biases), np.zeros(1, np.int64))


def make_workspace(layer_sizes: Sequence[int], batch_size: int, dtype: Any) -> Workspace:
    """Every buffer one epoch needs for these layer sizes (d0, d1, ..., d_out), batch size
    and dtype. Create once and reuse: `train_epoch` allocates nothing per batch."""
    sizes = tuple(int(s) for s in layer_sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer_sizes must be >= 2 positive ints, got {layer_sizes!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    B = int(batch_size)
    widths = np.array(sizes[1:], np.int64)
    offsets = np.concatenate([[0], np.cumsum(widths * B)]).astype(np.int64)
    total = int(offsets[-1])
    n_hidden_units = int(widths[:-1].sum())
    L = len(sizes) - 1
    return Workspace(
        sizes=sizes, batch_size=B, dtype=dtype,
        xb=np.zeros(B * sizes[0], dtype), z=np.zeros(total, dtype), h=np.zeros(total, dtype),
        g=np.zeros(total, dtype), offsets=offsets,
        dW=tuple(np.zeros((sizes[i], sizes[i + 1]), dtype) for i in range(L)),
        db=tuple(np.zeros(sizes[i + 1], dtype) for i in range(L)),
        hp=np.zeros(len(_HP), dtype), ip=np.zeros(7, np.int64),
        loss_acc=np.zeros(1, np.float64), grad_sq=np.zeros(L, np.float64),
        batch_sq=np.zeros(L, np.float64),
        active=np.zeros(n_hidden_units, np.int32),
        saturated=np.zeros(n_hidden_units, np.int32),
        result=np.zeros(4, np.int64),
        # W.T of the layers l >= 1 whose _dot_t transposes (the first layer's is never used)
        wt=np.zeros(max([sizes[i] * sizes[i + 1] for i in range(1, L)
                         if sizes[i + 1] < _DOT_T_MAX_K
                         and sizes[i] * sizes[i + 1] <= _DOT_T_MAX_SIZE] or [0]), dtype),
    )


def fused_supports(activation: str | Sequence[str], loss: str, optimizer: str,
                   dtype: Any) -> bool:
    """Whether `train_epoch` can run this combination: one elementwise hidden activation
    (a name, or the per-layer names, all equal), a loss of LOSSES, an optimizer of
    OPTIMIZERS, float32 or float64. False (never an error) otherwise, so a trainer can fall
    back to its per-op path."""
    names = [activation] if isinstance(activation, str) else list(activation)
    try:
        specs = {get_activation(n).name: get_activation(n) for n in names}
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        return False
    if len(specs) > 1 or any(s.rowwise or s.scalar_forward is None for s in specs.values()):
        return False
    return loss in LOSSES and optimizer in OPTIMIZERS and dt in (np.float32, np.float64)


# --------------------------------------------------------------------------- compiled parts

@intrinsic
def _flat(typingctx, a):
    """A 1-D view of the C-contiguous array `a` (its data, all its elements). As
    ``a.reshape(a.size)`` without the call into Numba's C helper that every reshape makes
    (~11 ns; a dozen per step of the small net in the update and the checks)."""
    if not (isinstance(a, types.Array) and a.layout == "C"):
        return None
    flat = types.Array(a.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        src = make_array(signature.args[0])(context, builder, args[0])
        dst = make_array(signature.return_type)(context, builder)
        populate_array(dst, data=src.data, shape=[src.nitems], strides=[src.itemsize],
                       itemsize=src.itemsize, meminfo=src.meminfo, parent=src.parent)
        return impl_ret_borrowed(context, builder, signature.return_type, dst._getvalue())

    return flat(a), codegen


@njit(fastmath={"reassoc"}, **_JIT)
def _sumsq(a):
    # reassoc only (never nnan/ninf): the sum may be vectorized, and NaN/inf still show.
    f = _flat(a)
    s = 0.0
    for i in range(f.size):
        v = np.float64(f[i])
        s += v * v
    return s


@njit(fastmath={"reassoc", "contract"}, **_JIT)
def _sumsq_fast(a):
    # _sumsq in a's own dtype: float32 runs 4x faster than through float64 (16 lanes, no
    # conversions) and its vectorized partial sums keep ~1e-7 relative accuracy. A float32
    # sum overflows at 3.4e38, far below float64's: callers redo a non-finite result with
    # _sumsq (NaN and inf still show: no nnan/ninf).
    f = _flat(a)
    s = a.dtype.type(0.0)
    for i in range(f.size):
        v = f[i]
        s += v * v
    return np.float64(s)


@njit(**_JIT)
def _all_finite(a):
    f = _flat(a)
    for i in range(f.size):
        if not np.isfinite(f[i]):
            return False
    return True


@njit(fastmath={"reassoc"}, **_JIT)
def _clip_values(a, c):
    s = 0.0
    for i in range(a.size):
        v = a[i]
        v = -c if v < -c else (c if v > c else v)
        a[i] = v
        w = np.float64(v)
        s += w * w
    return s


@njit(**_JIT)
def _update(p, g, m, v, opt, lr, mom, nesterov, wd, scale, b1, b2, eps, lr_t, inv_sqrt_bc2,
            alpha):
    """One optimizer step on flat arrays p (parameters), g (gradient); m, v state."""
    one = p.dtype.type(1.0)
    if opt == 3:  # rmsprop
        c = one - alpha
        for i in range(p.size):
            gi = g[i] * scale + wd * p[i]
            s = alpha * v[i] + c * gi * gi
            v[i] = s
            u = gi / (np.sqrt(s) + eps)
            if mom != 0:
                u = mom * m[i] + u
                m[i] = u
            p[i] -= lr * u
    elif opt == 0:
        if mom == 0 and wd == 0 and scale == one:
            # plain SGD, the common case: half the work of the general step below (the
            # same result for finite weights: g * 1 + 0 * p = g)
            for i in range(p.size):
                p[i] -= lr * g[i]
        elif mom == 0:
            for i in range(p.size):
                gi = g[i] * scale + wd * p[i]
                p[i] -= lr * gi
        elif nesterov:
            for i in range(p.size):
                gi = g[i] * scale + wd * p[i]
                vi = mom * m[i] + gi
                m[i] = vi
                p[i] -= lr * (gi + mom * vi)
        else:
            for i in range(p.size):
                gi = g[i] * scale + wd * p[i]
                vi = mom * m[i] + gi
                m[i] = vi
                p[i] -= lr * vi
    else:
        c1 = one - b1
        c2 = one - b2
        if opt == 2:  # adamw: decoupled decay, then plain adam
            decay = one - lr * wd
            for i in range(p.size):
                p[i] *= decay
            wd = wd * 0
        for i in range(p.size):
            gi = g[i] * scale + wd * p[i]
            mi = b1 * m[i] + c1 * gi
            vi = b2 * v[i] + c2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] -= lr_t * mi / (np.sqrt(vi) * inv_sqrt_bc2 + eps)


# g @ W.T with both row-major is a "TN" sgemm. For a W of few columns (the K here), SciPy's
# OpenBLAS (the one Numba calls; SKYLAKEX kernels on this machine) runs it on its general
# path (perf: sgemm_tn and its packing copies) rather than the small-matrix kernel it takes
# for the step's other products, and the packing costs more than the product: a plain
# product with a transposed copy of W runs the small kernel (32x10 @ 10x64: 1.17 us through
# the layout flag, 0.18 us copy + 0.46 us product). Below _DOT_T_MAX_K columns and up to
# _DOT_T_MAX_SIZE elements (a larger copy costs more than it saves; the workspace's scratch
# is sized for these only) _dot_t copies; otherwise np.dot's layout flag.
_DOT_T_MAX_K = 32
_DOT_T_MAX_SIZE = 4096


# OpenBLAS's AVX-512 kernels skip their packing copies while M N K <= 100^3 (see
# _kernels.pyx: _gemm, which splits the same way): a product of rows just past that runs as
# two products of half the rows, each element of out still from one call.
_BLAS_SMALL_MNK = 1_000_000


@njit(**_JIT)
def _dot_rows(a, b, out):
    """out = a @ b (a (r, k), b (k, m) in any layout np.dot takes, out (r, m) C-contiguous),
    in two halves of the rows when r k m lies just past _BLAS_SMALL_MNK."""
    r, k = a.shape
    m = b.shape[1]
    half = (r + 1) // 2
    if r * k * m > _BLAS_SMALL_MNK and half * k * m <= _BLAS_SMALL_MNK:
        np.dot(a[:half], b, out[:half])
        np.dot(a[half:], b, out[half:])
    else:
        np.dot(a, b, out)


@njit(**_JIT)
def _dot_t(g, W, out, wt):
    """out = g @ W.T (g (r, k), W (m, k), out (r, m)); wt: flat scratch for W.T."""
    m, k = W.shape
    if k < _DOT_T_MAX_K and m * k <= wt.size:
        Wt = wt[: k * m].reshape((k, m))
        for j in range(k):
            for c in range(m):
                Wt[j, c] = W[c, j]
        _dot_rows(g, Wt, out)
    else:
        _dot_rows(g, W.T, out)


_scalar = njit(inline="always", **_JIT)
_softplus = compile_scalar(scalar_math.softplus_forward, _scalar)
_sigmoid = compile_scalar(scalar_math.sigmoid_forward, _scalar)


@njit_tagged(**_JIT)  # inlines scalar_math's formulas and numba_math's exp
def _output_layer(z, bias, g, db, loss_code, labels, targets, order, use_order, start):
    """Adds the bias to the logits z (r, k) and computes the batch's mean loss,
    g = dloss/dz (the trainer's reduction: divided by r for cross-entropy, by r*k for the
    elementwise losses) and db = column sums of g. Cross-entropy takes class indices
    `labels` or, when labels is empty, the (n, k) rows of `targets`."""
    r, k = z.shape
    zero = z.dtype.type(0.0)
    count = r if loss_code == 2 else r * k
    inv_r = z.dtype.type(1.0 / count)
    dense = labels.size == 0
    for j in range(k):
        db[j] = zero
    total = 0.0
    if loss_code == 2:  # softmax + cross-entropy, fused
        # Three passes so that the exponentials run as one flat vectorized loop (numba_math's
        # exp) over the whole batch rather than libm's scalar expf row by row (k is small):
        # (1) bias, row max m, g = z - m, and the loss's m - z part (log s joins in 3);
        # (2) g = exp(g); (3) per row s = sum(g), the loss's log s part, g = (g/s - t)/r.
        # Loss of a row: sum_j t_j (logsumexp(z) - z_j) = sum_j t_j (m - z_j) + log(s) sum_j t_j.
        for i in range(r):
            row = order[start + i] if use_order else start + i
            m = z.dtype.type(-np.inf)  # typed: a float64 m would make every exp float64
            for j in range(k):
                zj = z[i, j] + bias[j]
                z[i, j] = zj
                # branchless max (a branch mispredicts on random logits); a NaN logit is
                # skipped here but makes s, hence the loss and the whole row of g, NaN
                m = zj if zj > m else m
            if dense:
                # the row's sum_j t_j (m - z_j) in the dtype (a one-hot row: m - z_y
                # rounded once, as with class indices), one chain per row: rows overlap
                acc = zero
                for j in range(k):
                    d = z[i, j] - m
                    g[i, j] = d
                    t = targets[row, j]
                    # classes without target weight never meet m - z = inf (0 * inf)
                    acc -= t * d if t != 0 else zero
                total += np.float64(acc)
            else:
                for j in range(k):
                    g[i, j] = z[i, j] - m
                total += np.float64(m - z[i, labels[row]])  # m - z_y: no cancellation
        gf = g.reshape(r * k)
        for i in range(r * k):
            gf[i] = exp_neg_abs(gf[i])  # z - m <= 0 (or NaN): one power of two, no clamp above
        # s, 1/s and each g in float64, rounded once (as the cython runner): summed in
        # float32, the max's exp(0) = 1 rounds away the terms under half its ulp, and a
        # confident row's label gradient (1/s - 1)/r, -(those terms)/(s r), came out 0.
        inv_r64 = 1.0 / count
        # With class indices each row adds log s: their sum is the log of the rows' product,
        # one libm log per block of rows instead of one per row (this layer 947 -> 806 ns
        # at 32 x 10, ~1.4% of the small step); the product stays far from overflow (s <= k).
        s_prod = 1.0
        for i in range(r):
            row = order[start + i] if use_order else start + i
            s = 0.0
            for j in range(k):
                s += np.float64(g[i, j])
            inv_s = 1.0 / s
            if dense:
                log_s = math.log(s)
                t_sum = 0.0
                for j in range(k):
                    t = np.float64(targets[row, j])
                    t_sum += t
                    v = z.dtype.type((g[i, j] * inv_s - t) * inv_r64)
                    g[i, j] = v
                    db[j] += v
                if t_sum != 0:
                    total += t_sum * log_s
            else:
                s_prod *= s
                if s_prod > 1e280:
                    total += math.log(s_prod)
                    s_prod = 1.0
                y = labels[row]
                # Only the label's element cancels: the others are g f in the dtype, two
                # roundings, in a loop that stays vectorized (all in float64: ~2% slower
                # small steps).
                gy = z.dtype.type((g[i, y] * inv_s - 1.0) * inv_r64)
                f = z.dtype.type(inv_r64 * inv_s)
                for j in range(k):
                    v = gy if j == y else g[i, j] * f
                    g[i, j] = v
                    db[j] += v
        return (total + math.log(s_prod)) / count
    for i in range(r):
        row = order[start + i] if use_order else start + i
        if loss_code == 1:  # sigmoid + binary cross-entropy from the logits
            for j in range(k):
                zj = z[i, j] + bias[j]
                z[i, j] = zj
                t = targets[row, j]
                total += np.float64(_softplus(zj, zero, zero) - zj * t)
                g[i, j] = (_sigmoid(zj, zero, zero) - t) * inv_r
        else:  # identity + 0.5 squared error
            for j in range(k):
                zj = z[i, j] + bias[j]
                z[i, j] = zj
                d = zj - targets[row, j]
                total += 0.5 * np.float64(d) * np.float64(d)
                g[i, j] = d * inv_r
        for j in range(k):
            db[j] += g[i, j]
    return total / count


def _saturation_kind(spec: ActivationSpec) -> int:
    return {"sigmoid": _SAT_SIGMOID, "tanh": _SAT_TANH}.get(spec.name, _SAT_NONE)


# The activation-specific parts are templates: `_build_epoch` compiles a copy of each whose
# globals bind _fwd/_bwd (the activation's scalar formulas), _SAT, _SAVED_Y and the other
# copies. Globals, not closures: Numba's cache key hashes a closure's cells, and a cell
# holding a compiled function pickles differently in every process (a cache miss and a
# full recompile each time); globals are frozen at compile time instead. Each copy gets
# its own __qualname__ (so its own cache entry): see _specialize. These placeholders are
# never compiled.
_fwd = _bwd = _hidden_forward = _uncount = _hidden_backward = _epoch = None
_SAT = _SAT_NONE
_SAVED_Y = False


def _t_hidden_forward(z, h, bias, active, saturated, a, b, count):
    # z (r, m) += bias; h = f(z); with count, counts of active (z > 0) and saturated units.
    r, m = z.shape
    if not count:  # fit reads no counts: the counting was ~40% of this pass
        for i in range(r):
            for j in range(m):
                zj = z[i, j] + bias[j]
                z[i, j] = zj
                h[i, j] = _fwd(zj, a, b)
        return
    lo = z.dtype.type(0.01)
    hi = z.dtype.type(0.99)
    for i in range(r):
        for j in range(m):
            zj = z[i, j] + bias[j]
            z[i, j] = zj
            y = _fwd(zj, a, b)
            h[i, j] = y
            # int32 counters and a branchless add: the loop stays vectorized.
            active[j] += np.int32(zj > 0)
            if _SAT == _SAT_SIGMOID:
                saturated[j] += np.int32(y < lo or y > hi)
            elif _SAT == _SAT_TANH:
                saturated[j] += np.int32(abs(y) > hi)


def _t_uncount(z, h, active, saturated):
    # Undo hidden_forward's counts for a batch whose update is not applied.
    r, m = z.shape
    lo = z.dtype.type(0.01)
    hi = z.dtype.type(0.99)
    for i in range(r):
        for j in range(m):
            y = h[i, j]
            active[j] -= np.int32(z[i, j] > 0)
            if _SAT == _SAT_SIGMOID:
                saturated[j] -= np.int32(y < lo or y > hi)
            elif _SAT == _SAT_TANH:
                saturated[j] -= np.int32(abs(y) > hi)


def _t_hidden_backward(g, z, h, db, a, b):
    # g (r, m) holds dloss/dh; becomes dloss/dz in place; db = its column sums.
    r, m = g.shape
    for j in range(m):
        db[j] = 0
    for i in range(r):
        for j in range(m):
            s = h[i, j] if _SAVED_Y else z[i, j]
            v = _bwd(s, g[i, j], a, b)
            g[i, j] = v
            db[j] += v


def _t_epoch(X, order, labels, targets, Ws, bs, mW, mb, vW, vb, step, xbuf, zbuf, hbuf,
          gbuf, offsets, dWs, dbs, hp, ip, loss_acc, grad_sq, batch_sq, active, saturated,
          result, batch_losses, batch_sqs, wt):
    # One epoch (see the module docstring). ip: batch size, loss, optimizer, nesterov,
    # use_order, decay (index into DECAYS); hp: _HP in the arrays' dtype. Outputs: loss_acc
    # (summed loss times batch rows), grad_sq (summed per layer), active/saturated (counts),
    # result: batches and samples applied, bad batch, bad layer. batch_sq is scratch.
    # batch_losses (n_batches,) and batch_sqs (n_batches, L), when not empty, receive every
    # batch's mean loss and per-layer squared gradient norm, the stopping batch's included (the
    # trainer's EpochPlan.batch_loss / grad_sq). wt: scratch for _dot_t.
    n, d0 = X.shape
    L = len(Ws)
    B = ip[0]
    loss_code = ip[1]
    opt = ip[2]
    nesterov = ip[3] != 0
    use_order = ip[4] != 0
    sk_decay = ip[5] == 1
    count_units = ip[6] != 0
    lr = hp[0]
    mom = hp[1]
    b1 = hp[2]
    b2 = hp[3]
    eps = hp[4]
    wd = hp[5]
    clip_norm = hp[6]
    clip_value = hp[7]
    a = hp[8]
    b = hp[9]
    alpha = hp[10]
    per_batch = batch_losses.size > 0
    one = hp.dtype.type(1.0)
    Xf = X.reshape(X.size)
    n_batches = (n + B - 1) // B
    result[0] = 0
    result[1] = 0
    result[2] = -1
    result[3] = -1
    loss_acc[0] = 0.0
    for layer in range(L):
        grad_sq[layer] = 0.0
    active[:] = 0
    saturated[:] = 0
    for k in range(n_batches):
        start = k * B
        r = min(B, n - start)
        # ---- the batch's input: gathered rows, or a view of X
        if use_order:
            xb = xbuf[: r * d0].reshape((r, d0))
            for i in range(r):
                # Row views and a plain loop: vectorized copies, so the next rows'
                # cache misses overlap (4x faster than flat indexing, beats np.take).
                src = X[order[start + i]]
                dst = xb[i]
                for j in range(d0):
                    dst[j] = src[j]
        else:
            xb = Xf[start * d0: (start + r) * d0].reshape((r, d0))
        # ---- forward
        unit = 0
        batch_loss = 0.0
        for layer in range(L):
            W = Ws[layer]
            m = W.shape[1]
            o = offsets[layer]
            z = zbuf[o: o + r * m].reshape((r, m))
            if layer == 0:
                _dot_rows(xb, W, z)
            else:
                p = offsets[layer - 1]
                mp = W.shape[0]
                _dot_rows(hbuf[p: p + r * mp].reshape((r, mp)), W, z)
            if layer < L - 1:
                _hidden_forward(z, hbuf[o: o + r * m].reshape((r, m)), bs[layer],
                               active[unit: unit + m], saturated[unit: unit + m], a, b,
                               count_units)
                unit += m
            else:
                batch_loss = _output_layer(z, bs[layer], gbuf[o: o + r * m].reshape((r, m)),
                                           dbs[layer], loss_code, labels, targets, order,
                                           use_order, start)
        # ---- backward
        for layer in range(L - 1, -1, -1):
            W = Ws[layer]
            m = W.shape[1]
            o = offsets[layer]
            g = gbuf[o: o + r * m].reshape((r, m))
            if layer == 0:
                np.dot(xb.T, g, dWs[0])
            else:
                p = offsets[layer - 1]
                mp = W.shape[0]
                hp_ = hbuf[p: p + r * mp].reshape((r, mp))
                np.dot(hp_.T, g, dWs[layer])
                gp = gbuf[p: p + r * mp].reshape((r, mp))
                _dot_t(g, W, gp, wt)
                _hidden_backward(gp, zbuf[p: p + r * mp].reshape((r, mp)), hp_,
                                dbs[layer - 1], a, b)
        # ---- scikit-learn's penalty: part of the batch loss, from the weights before the
        # update (its gradient joins in _update, after clipping, as with decay="pytorch")
        if sk_decay and wd != 0:
            pen = 0.0
            for layer in range(L):
                pen += _sumsq(Ws[layer])
            batch_loss += 0.5 * np.float64(wd) * pen / r
        # ---- checks: stop before the update on a non-finite loss or gradient
        total_sq = 0.0
        finite = np.isfinite(batch_loss)
        for layer in range(L):
            sq = _sumsq_fast(dWs[layer]) + _sumsq_fast(dbs[layer])
            if not np.isfinite(sq):  # an overflow of the dtype's sum, or a non-finite g
                sq = _sumsq(dWs[layer]) + _sumsq(dbs[layer])
            batch_sq[layer] = sq
            if not np.isfinite(sq):
                # inf may be an overflow of finite squares: look at the elements.
                if not (_all_finite(dWs[layer]) and _all_finite(dbs[layer])):
                    if result[3] < 0:
                        result[3] = layer
                    finite = False
            total_sq += sq
        if per_batch:
            batch_losses[k] = batch_loss
            for layer in range(L):
                batch_sqs[k, layer] = batch_sq[layer]
        if not finite:
            result[2] = k
            unit = 0
            for layer in range(L - 1 if count_units else 0):
                m = Ws[layer].shape[1]
                o = offsets[layer]
                _uncount(zbuf[o: o + r * m].reshape((r, m)),
                        hbuf[o: o + r * m].reshape((r, m)),
                        active[unit: unit + m], saturated[unit: unit + m])
                unit += m
            break
        for layer in range(L):
            grad_sq[layer] += batch_sq[layer]
        # ---- clipping
        if clip_value > 0:
            total_sq = 0.0
            for layer in range(L):
                total_sq += _clip_values(dWs[layer].reshape(dWs[layer].size), clip_value)
                total_sq += _clip_values(dbs[layer], clip_value)
        scale = one
        if clip_norm > 0:
            norm = math.sqrt(total_sq)
            if norm > clip_norm:
                scale = hp.dtype.type(clip_norm / norm)
        # ---- update
        lr_t = lr
        inv_sqrt_bc2 = one
        if opt == 1 or opt == 2:  # adam, adamw
            t = step[0] + 1
            lr_t = hp.dtype.type(lr / (1.0 - np.float64(b1) ** t))
            inv_sqrt_bc2 = hp.dtype.type(1.0 / math.sqrt(1.0 - np.float64(b2) ** t))
        step[0] += 1
        wd_W = wd
        wd_b = wd
        if sk_decay:
            wd_W = hp.dtype.type(wd / r)
            wd_b = wd * 0
        for layer in range(L):
            W = Ws[layer]
            _update(_flat(W), _flat(dWs[layer]), _flat(mW[layer]), _flat(vW[layer]), opt,
                    lr, mom, nesterov, wd_W, scale, b1, b2, eps, lr_t, inv_sqrt_bc2, alpha)
            _update(bs[layer], dbs[layer], mb[layer], vb[layer], opt, lr, mom, nesterov,
                    wd_b, scale, b1, b2, eps, lr_t, inv_sqrt_bc2, alpha)
        loss_acc[0] += batch_loss * r
        result[0] += 1
        result[1] += r



def _t_epochs(X, orders, labels, targets, Ws, bs, mW, mb, vW, vb, step, xbuf, zbuf, hbuf,
              gbuf, offsets, dWs, dbs, hp, ip, loss_acc, grad_sq, batch_sq, active, saturated,
              result, batch_losses, batch_sqs, wt):
    # orders.shape[0] epochs one after another (fit's blocks of epochs: one call instead of
    # one per epoch, whose Python costs ~1.5 us a step of the small net), epoch e over the
    # rows in the order orders[e] when ip[4] != 0 (else orders is (E, 0) and the rows run
    # in order). batch_losses (E * n_batches,) and batch_sqs (E * n_batches, L) receive
    # every epoch's batches, epoch after epoch. Returns the epochs completed: e < E when
    # epoch e stopped at a non-finite batch (result[2] says which; the epoch's earlier
    # batches were applied).
    n_batches = (X.shape[0] + ip[0] - 1) // ip[0]
    for e in range(orders.shape[0]):
        lo = e * n_batches
        _epoch(X, orders[e], labels, targets, Ws, bs, mW, mb, vW, vb, step, xbuf, zbuf,
               hbuf, gbuf, offsets, dWs, dbs, hp, ip, loss_acc, grad_sq, batch_sq, active,
               saturated, result, batch_losses[lo: lo + n_batches],
               batch_sqs[lo: lo + n_batches], wt)
        if result[2] >= 0:
            return e
    return orders.shape[0]


def _build_epoch(spec: ActivationSpec, dtype: np.dtype):
    """The compiled epoch function for one hidden activation and dtype (any depth).

    The activation's formulas are compiled for `dtype` (compile_scalar's dtype: float32
    literals stay float32, so float32 passes run at full vector width instead of through
    float64) with numba_math's vectorizable transcendentals, as numba_cpu's elementwise
    kernels are."""
    namespace = dict(globals())
    namespace.update(
        _fwd=compile_scalar(spec.scalar_forward, _scalar, VECTOR_MATH, dtype.type),
        _bwd=compile_scalar(spec.scalar_backward, _scalar, VECTOR_MATH, dtype.type),
        _SAT=_saturation_kind(spec),
        _SAVED_Y=spec.needs == "y",  # else the pre-activation (ignored when needs is None)
    )
    tag = f"{spec.name}_{dtype.name}"
    for name in ("_hidden_forward", "_uncount", "_hidden_backward"):
        namespace[name] = specialize(globals()[f"_t{name}"], namespace, tag, **_JIT)
    namespace["_epoch"] = specialize(_t_epoch, namespace, tag, **_JIT)
    # compiled on its first call only (fit's blocks), calling the epoch above
    namespace["_epochs"] = specialize(_t_epochs, namespace, tag, **_JIT)
    return namespace["_epoch"]


_EPOCHS: dict[tuple[str, str], Any] = {}


def _epoch_kernel(spec: ActivationSpec, dtype: Any):
    """The compiled epoch for `spec` and `dtype` (built once per process)."""
    key = (spec.name, np.dtype(dtype).name)
    k = _EPOCHS.get(key)
    if k is None:
        k = _EPOCHS[key] = _build_epoch(spec, np.dtype(dtype))
    return k


def _epochs_kernel(spec: ActivationSpec, dtype: Any):
    """The compiled run of several epochs (`_t_epochs`) for `spec` and `dtype`."""
    return _epoch_kernel(spec, dtype).py_func.__globals__["_epochs"]


# --------------------------------------------------------------------------- entry point

def _check_data(X, Y, order, sizes, dtype, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(X, np.ndarray):
        raise TypeError(f"X must be a numpy.ndarray, got {type(X).__name__}")
    if X.ndim != 2 or X.shape[1] != sizes[0]:
        raise ValueError(f"X has shape {X.shape}, expected (n, {sizes[0]}) (the inputs of "
                         f"weights[0])")
    if X.dtype != dtype:
        raise TypeError(f"X has dtype {X.dtype}, expected {dtype} (the weights' dtype)")
    if not X.flags.c_contiguous:
        raise ValueError("X must be C-contiguous (np.ascontiguousarray)")
    n = X.shape[0]
    if n == 0:
        raise ValueError("X is empty (0 samples)")
    if n >= 2**31:  # the per-unit counters are int32 (vectorized counting)
        raise ValueError(f"X has {n} rows; train_epoch takes fewer than 2**31 per call")
    if not isinstance(Y, np.ndarray):
        raise TypeError(f"Y must be a numpy.ndarray, got {type(Y).__name__}")
    d_out = sizes[-1]
    if loss == "cross_entropy" and Y.ndim != 2:
        if Y.dtype != np.int64:
            raise TypeError(f"Y has dtype {Y.dtype}; cross_entropy takes int64 class indices "
                            f"(n,) or (n, {d_out}) target rows of the weights' dtype")
        if Y.shape != (n,):
            raise ValueError(f"Y has shape {Y.shape}, expected ({n},) (class indices)")
        if Y.min() < 0 or Y.max() >= d_out:
            raise ValueError(f"Y holds class indices in [{Y.min()}, {Y.max()}], expected them "
                             f"in [0, {d_out}) ({d_out} outputs)")
        labels, targets = np.ascontiguousarray(Y), np.zeros((0, 0), dtype)
    else:
        if Y.shape != (n, d_out):
            raise ValueError(f"Y has shape {Y.shape}, expected ({n}, {d_out}) for {loss}")
        if Y.dtype != dtype:
            raise TypeError(f"Y has dtype {Y.dtype}, expected {dtype} (the weights' dtype)")
        labels, targets = np.zeros(0, np.int64), np.ascontiguousarray(Y)
    if order is None:
        order_arr = np.zeros(0, np.int64)
    else:
        if not isinstance(order, np.ndarray) or order.dtype != np.int64 or order.ndim != 1:
            raise TypeError("order must be a 1-D int64 numpy array (a permutation of "
                            "range(n)) or None")
        if order.shape != (n,):
            raise ValueError(f"order has length {order.shape[0]}, expected {n} (the rows of X)")
        if order.min() < 0 or order.max() >= n or np.bincount(order, minlength=n).max() != 1:
            raise ValueError(f"order is not a permutation of range({n})")
        order_arr = np.ascontiguousarray(order)
    return labels, targets, order_arr


_NO_BATCH_LOSSES = np.zeros(0)
_NO_BATCH_SQS = np.zeros((0, 0))


def _configure(ws: Workspace, loss: str, optimizer: str, batch_size: int, use_order: bool,
               hp: tuple, nesterov: bool, decay: str = "pytorch",
               count_units: bool = True) -> None:
    """Write the run-time switches and hyper-parameters (in _HP's order) into `ws`.
    count_units=False leaves EpochStats' active/saturated counts at 0 (fit does not read
    them: its diagnosis has its own pass)."""
    ws.hp[:] = hp
    ws.ip[:] = (batch_size, LOSSES.index(loss), OPTIMIZERS.index(optimizer), int(nesterov),
                int(use_order), DECAYS.index(decay), int(count_units))


def _launch(kernel, X, order_arr, labels, targets, Ws, bs, state, ws,
            batch_losses=_NO_BATCH_LOSSES, batch_sqs=_NO_BATCH_SQS):
    """Run the compiled epoch (or `_t_epochs`, with orders for order_arr) on arguments
    already checked (no checks here: callers that built every array themselves, like the
    trainer's adapter, skip train_epoch's); returns what the kernel returns."""
    return kernel(X, order_arr, labels, targets, Ws, bs, state.m_W, state.m_b, state.v_W, state.v_b,
           state.step, ws.xb, ws.z, ws.h, ws.g, ws.offsets, ws.dW, ws.db, ws.hp, ws.ip,
           ws.loss_acc, ws.grad_sq, ws.batch_sq, ws.active, ws.saturated, ws.result,
           batch_losses, batch_sqs, ws.wt)


def train_epoch(X: np.ndarray, Y: np.ndarray, order: np.ndarray | None,
                weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                state: OptimizerState, config: FusedConfig,
                workspace: Workspace | None = None) -> EpochStats:
    """One epoch of mini-batch training in one compiled call (see the module docstring for
    the full contract). Weights, biases and state are updated in place. All arguments are
    checked here, before any compiled code runs."""
    if not isinstance(config, FusedConfig):
        raise TypeError(f"config must be a FusedConfig, got {type(config).__name__}")
    Ws, bs, dtype, sizes = _check_params(weights, biases)
    labels, targets, order_arr = _check_data(X, Y, order, sizes, dtype, config.loss)
    if not isinstance(state, OptimizerState):
        raise TypeError(f"state must be an OptimizerState (make_state), got "
                        f"{type(state).__name__}")
    if state.optimizer != config.optimizer:
        raise ValueError(f"state was made for {state.optimizer!r}, config uses "
                         f"{config.optimizer!r}")
    needs_m = config.optimizer in ("adam", "adamw") or config.momentum > 0
    for name, arrs, params in (("m_W", state.m_W, Ws), ("m_b", state.m_b, bs),
                               ("v_W", state.v_W, Ws), ("v_b", state.v_b, bs)):
        needed = needs_m if name.startswith("m") else config.optimizer != "sgd"
        if len(arrs) != len(params) or any(
                s.dtype != dtype or (needed and s.shape != p.shape) for s, p in zip(arrs, params)):
            raise ValueError(f"state.{name} does not match the parameters (shapes, dtype, or "
                             f"momentum > 0 with a state made for momentum 0): use make_state")
    if workspace is None:
        workspace = make_workspace(sizes, config.batch_size, dtype)
    elif (workspace.sizes != sizes or workspace.batch_size != config.batch_size
          or workspace.dtype != dtype):
        raise ValueError(f"workspace is for sizes {workspace.sizes}, batch {workspace.batch_size}, "
                         f"{workspace.dtype}; this call needs {sizes}, batch "
                         f"{config.batch_size}, {dtype}")
    ws = workspace
    a, b = config.encoded()
    _configure(ws, config.loss, config.optimizer, config.batch_size, order is not None,
               (config.lr, config.momentum, config.beta1, config.beta2, config.eps,
                config.weight_decay, config.clip_norm, config.clip_value, a, b, config.alpha),
               config.nesterov, config.decay)
    _launch(_epoch_kernel(config.spec, dtype), X, order_arr, labels, targets, Ws, bs, state, ws)
    n_batches, n_samples, bad_batch, bad_layer = (int(v) for v in ws.result)
    bounds = np.cumsum((0, *sizes[1:-1]))
    active = [ws.active[bounds[i]:bounds[i + 1]].astype(np.int64)
              for i in range(len(sizes) - 2)]
    saturated = [ws.saturated[bounds[i]:bounds[i + 1]].astype(np.int64)
                 for i in range(len(sizes) - 2)]
    return EpochStats(
        loss=float(ws.loss_acc[0] / n_samples) if n_samples else math.nan,
        grad_sq=ws.grad_sq / n_batches if n_batches else np.full(len(Ws), math.nan),
        active=active, saturated=saturated, n_batches=n_batches, n_samples=n_samples,
        bad_batch=bad_batch, bad_layer=bad_layer,
    )
