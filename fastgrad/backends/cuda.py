"""The `cuda` backend: numba.cuda kernels, data resident on the device.

Kernels (every one compiled lazily, once per dtype and launch shape parameter):

- elementwise activations: one grid-stride kernel per activation and direction, whose
  device functions are compiled from the same scalar formulas as the numba CPU backend
  (`scalar_math.compile_scalar(fn, cuda.jit(device=True))`): the math is written once;
- softmax / log_softmax: one block per row, shared-memory tree reductions for the row max
  and the row sum;
- the dense layer: a tiled shared-memory matmul (TILE x TILE threads per output tile,
  edges handled) whose epilogue fuses bias + activation (and writes the pre-activation);
  the backward products grad_x = g W^T and grad_W = x^T g read their transposed operand
  in place (no transposed copies; the loads stay coalesced by swapping the thread roles
  when filling the shared tile); the activation's backward fused with the grad_b column
  reduction;
- losses (elementwise ones from their scalar formulas, cross-entropy one block per row)
  and optimizer updates (SGD, Adam/AdamW, RMSprop), math in float64 as on the CPU.

Kernels take and return device arrays; moving host arrays in and out is the functional
layer's job (`fastgrad.functional`), through the helpers at the end of this module.
Works with numba's built-in CUDA target (numba 0.68, deprecated) and the `numba-cuda` package,
which keeps the `numba.cuda` namespace. Under numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) the backend is available and runs the kernels as Python: slow,
for tests only.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import numpy as np

with warnings.catch_warnings():  # importing must stay silent (backend_info() imports us)
    warnings.simplefilter("ignore")
    import numba
    from numba import cuda
    from numba import float32 as nb_float32
    from numba import float64 as nb_float64

from .. import scalar_math, update_math
from ..activations import ACTIVATIONS, ActivationSpec
from ..scalar_math import compile_scalar

NAME = "cuda"
DEVICE = True
"""Kernels take device arrays: the functional layer moves host arrays in and out."""

SIMULATOR = bool(getattr(numba.config, "ENABLE_CUDASIM", 0)) or os.environ.get(
    "NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
"""True under numba's CUDA simulator (kernels run as Python threads)."""

TILE = 16
"""Matmul tile edge: TILE x TILE threads per block, two TILE x (TILE + 1) shared tiles.
A parameter so tests can use small tiles; any size >= 1 works (edges are masked)."""

ROW_THREADS = 128
"""Most threads per block for the row kernels (softmax); a power of two."""

THREADS = 256
"""Threads per block for the elementwise kernels."""

MAX_BLOCKS = 65535
"""Cap on the grid of elementwise kernels; the grid-stride loop covers the rest."""

_REDUCE_THREADS = 128
"""Threads of the single-block finishing reductions (a power of two; a compile-time
shared-array size)."""

_NB_TYPES = {np.dtype(np.float32): nb_float32, np.dtype(np.float64): nb_float64}


def check_available() -> None:
    """Raise RuntimeError with a one-line reason when no GPU can run the kernels.

    Under the simulator the backend is available. Never prints or warns.
    """
    if SIMULATOR:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cuda.is_available():
            return
        reason = ""
        try:  # numba keeps the driver's initialisation error; its message spans lines
            from numba.cuda.cudadrv.driver import driver
            reason = str(getattr(driver, "initialization_error", "") or "")
        except Exception:  # a layout this numba/numba-cuda version does not have
            pass
    # One line: the driver's message runs over several; its first sentence says it.
    detail = " ".join(reason.split()).split(". ")[0].rstrip(".")
    raise RuntimeError("no usable CUDA GPU (numba.cuda.is_available() is False"
                       + (f"; {detail}" if detail else "") + ")")


# ---------------------------------------------------------------------------------------
# Kernel factories (cached: one build per key, numba compiles per signature lazily)

_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, build):
    k = _CACHE.get(key)
    if k is None:
        k = _CACHE[key] = build()
    return k


def _wide_math():
    """The formulas' functions the device computes in float64 whatever the input's type:
    gelu's derivative Phi(x) + x phi(x), whose two terms (~0.23) cancel near its root
    x ~ -0.7518, far beyond a float32 result's ulp when summed in float32 (the simulator
    computes a float32 input's arithmetic in float32)."""
    def build():
        jit = cuda.jit(device=True)
        slope = compile_scalar(scalar_math.x_ncdf_slope, jit)

        def x_ncdf_slope(x):
            return slope(nb_float64(x))

        return {"x_ncdf_slope": jit(x_ncdf_slope)}
    return _cached(("wide math",), build)


def _device_formulas(name: str):
    """(forward, backward) device functions of an elementwise activation, compiled from
    its scalar formulas."""
    def build():
        spec = ACTIVATIONS[name]
        jit = cuda.jit(device=True)
        return (compile_scalar(spec.scalar_forward, jit),
                compile_scalar(spec.scalar_backward, jit, _wide_math()))
    return _cached(("formulas", name), build)


def elementwise_kernels(name: str):
    """(forward, backward) grid-stride kernels over flat arrays for one activation:
    forward(x, out, a, b): out[i] = f(x[i]); backward(s, g, out, a, b): out[i] = f'(s[i]) g[i]."""
    def build():
        fwd, bwd = _device_formulas(name)

        @cuda.jit
        def forward(x, out, a, b):
            for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
                out[i] = fwd(x[i], a, b)

        @cuda.jit
        def backward(s, g, out, a, b):
            for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
                out[i] = bwd(s[i], g[i], a, b)

        return forward, backward
    return _cached(("elementwise", name), build)


def matmul_kernel(name: str, dtype, tile: int, trans_a: bool, trans_b: bool):
    """Tiled C = op(A) @ op(B) with the activation `name` fused into the epilogue.

    kernel(A, B, bias, has_bias, pre, write_pre, out, a, b): op(A) is (M, K), op(B) is
    (K, N), out and pre are (M, N); op(A) = A.T when trans_a (A stored (K, M)), op(B) =
    B.T when trans_b (B stored (N, K)), read in place. z = acc + bias[col] (has_bias),
    pre = z (write_pre), out = f(z). Launch: block (tile, tile), grid (ceil(N/tile),
    ceil(M/tile)). Each block stages one tile of op(A) and op(B) per K step in shared
    memory (padded by one column against bank conflicts); threads map to memory so that
    neighbouring threads read neighbouring addresses whether or not an operand is
    transposed.
    """
    def build():
        fwd = _device_formulas(name)[0]
        T = tile
        TP = tile + 1  # shared shapes must be compile-time constants: no arithmetic inside
        nbt = _NB_TYPES[np.dtype(dtype)]

        @cuda.jit
        def matmul(A, B, bias, has_bias, pre, write_pre, out, a, b):
            sA = cuda.shared.array((T, TP), nbt)
            sB = cuda.shared.array((T, TP), nbt)
            tx = cuda.threadIdx.x
            ty = cuda.threadIdx.y
            row0 = cuda.blockIdx.y * T
            col0 = cuda.blockIdx.x * T
            M = out.shape[0]
            N = out.shape[1]
            K = A.shape[0] if trans_a else A.shape[1]
            zero = nbt(0)
            acc = zero
            for k0 in range(0, K, T):
                if trans_a:  # op(A)[r, k] = A[k, r]: tx walks r, the contiguous axis
                    r = row0 + tx
                    k = k0 + ty
                    sA[tx, ty] = A[k, r] if (k < K and r < M) else zero
                else:
                    r = row0 + ty
                    k = k0 + tx
                    sA[ty, tx] = A[r, k] if (k < K and r < M) else zero
                if trans_b:  # op(B)[k, c] = B[c, k]: tx walks k, the contiguous axis
                    c = col0 + ty
                    k = k0 + tx
                    sB[tx, ty] = B[c, k] if (k < K and c < N) else zero
                else:
                    c = col0 + tx
                    k = k0 + ty
                    sB[ty, tx] = B[k, c] if (k < K and c < N) else zero
                cuda.syncthreads()
                for kk in range(T):
                    acc += sA[ty, kk] * sB[kk, tx]
                cuda.syncthreads()
            row = row0 + ty
            col = col0 + tx
            if row < M and col < N:
                z = acc + bias[col] if has_bias else acc
                if write_pre:
                    pre[row, col] = z
                out[row, col] = fwd(z, a, b)

        return matmul
    return _cached(("matmul", name, np.dtype(dtype).str, tile, trans_a, trans_b), build)


def backward_colsum_kernel(name: str, dtype, tile: int):
    """The dense layer's activation backward fused with the grad_b reduction.

    kernel(grad_y, saved, g, grad_b, a, b): g[i, j] = f'(saved[i, j]) grad_y[i, j] and
    grad_b[j] = sum_i g[i, j]. Launch: block (tile, tile), grid ceil(N_out / tile): threads
    (ty, tx) walk rows ty, ty + tile, ... of column col0 + tx (neighbouring threads read
    neighbouring addresses), then column partial sums meet in shared memory. g may be
    grad_y itself (each element is read before it is written, by the same thread).
    """
    def build():
        bwd = _device_formulas(name)[1]
        T = tile
        nbt = _NB_TYPES[np.dtype(dtype)]

        @cuda.jit
        def colsum(grad_y, saved, g, grad_b, a, b):
            part = cuda.shared.array((T, T), nbt)
            tx = cuda.threadIdx.x
            ty = cuda.threadIdx.y
            n = grad_y.shape[0]
            m = grad_y.shape[1]
            j = cuda.blockIdx.x * T + tx
            acc = nbt(0)
            if j < m:
                for i in range(ty, n, T):
                    v = bwd(saved[i, j], grad_y[i, j], a, b)
                    g[i, j] = v
                    acc += v
            part[ty, tx] = acc
            cuda.syncthreads()
            if ty == 0 and j < m:
                total = part[0, tx]
                for r in range(1, T):
                    total += part[r, tx]
                grad_b[j] = total

        return colsum
    return _cached(("colsum", name, np.dtype(dtype).str, tile), build)


@cuda.jit(device=True)
def _block_max(sh, v):
    """Max of v over the block (a power of two threads); NaN wins. All threads get it."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            o = sh[t + s]
            if o > sh[t] or o != o:
                sh[t] = o
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()  # sh is reused by the next reduction
    return r


@cuda.jit(device=True)
def _block_sum(sh, v):
    """Sum of v over the block (a power of two threads), by a shared-memory tree."""
    t = cuda.threadIdx.x
    sh[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    r = sh[0]
    cuda.syncthreads()
    return r


def row_kernels(dtype, threads: int):
    """Softmax and log_softmax forward/backward, one block of `threads` (a power of two)
    per row of a (rows, n) array; each thread strides over the row's columns and the
    block reduces the max and the sum in shared memory. Dict name -> (forward, backward);
    forward(x, out), backward(y, g, out); out may alias x (each element is read and then
    written by one thread, after the reductions)."""
    def build():
        nbt = _NB_TYPES[np.dtype(dtype)]
        NT = threads

        @cuda.jit(device=True)
        def row_max(x, i, sh):
            m = nbt(-math.inf)
            for j in range(cuda.threadIdx.x, x.shape[1], NT):
                v = x[i, j]
                if v > m or v != v:  # NaN wins, so a NaN row gives NaN
                    m = v
            return _block_max(sh, m)

        @cuda.jit
        def softmax_forward(x, out):
            sh = cuda.shared.array(NT, nbt)
            i = cuda.blockIdx.x
            m = row_max(x, i, sh)
            # The elements equal to the max are counted apart from the partial sums:
            # their exp(0) = 1 in a thread's partial would round away every term under
            # half its ulp, all of the rest when the max dominates the row (float32 15
            # ulp off at the max, 2049 columns, the simulator's blocks). ties (1 + (m -
            # m)) is NaN when m is infinite, as the terms' inf - inf. Each thread's
            # partial is compensated (Kahan): it sums x.shape[1] / NT terms in the
            # array's type, and a near-tie of the max (a term ~1) among them would round
            # away the small ones as well (92 ulp, 2049 float32 columns, 4 threads).
            rest = nbt(0)
            comp = nbt(0)
            ties = nbt(0)
            for j in range(cuda.threadIdx.x, x.shape[1], NT):
                v = x[i, j]  # read before out[i, j] is written: out may be x
                e = math.exp(v - m)
                out[i, j] = e
                if v == m:
                    ties += nbt(1)
                else:
                    d = e - comp
                    t = rest + d
                    comp = (t - rest) - d
                    rest = t
            rest = _block_sum(sh, rest)
            ties = _block_sum(sh, ties)
            inv = nbt(1) / (rest + ties * (nbt(1) + (m - m)))
            for j in range(cuda.threadIdx.x, x.shape[1], NT):
                out[i, j] *= inv

        @cuda.jit
        def log_softmax_forward(x, out):
            sh = cuda.shared.array(NT, nbt)
            i = cuda.blockIdx.x
            m = row_max(x, i, sh)
            # log sum exp(x - m) = log1p(rest): the terms below the max, plus one for each
            # further element equal to it (their exp(0) = 1 in the sum would round away a
            # small rest, all of the log-sum-exp when the max dominates); (m - m) is NaN
            # when m is infinite, as the reference's inf - inf.
            rest = nbt(0)
            ties = nbt(0)
            for j in range(cuda.threadIdx.x, x.shape[1], NT):
                if x[i, j] == m:
                    ties += nbt(1)
                else:
                    rest += math.exp(x[i, j] - m)
            rest = _block_sum(sh, rest)
            ties = _block_sum(sh, ties)
            lse = math.log1p(rest + (ties - nbt(1)) + (m - m))
            for j in range(cuda.threadIdx.x, x.shape[1], NT):
                # (x - m) - lse, not x - (m + lse): m + lse rounds away lse when |m| >> 1.
                out[i, j] = (x[i, j] - m) - lse

        @cuda.jit
        def softmax_backward(y, g, out):
            # grad_x = y * (g - sum(g * y)), the Jacobian diag(y) - y y^T applied to g.
            sh = cuda.shared.array(NT, nbt)
            i = cuda.blockIdx.x
            dot = nbt(0)
            for j in range(cuda.threadIdx.x, y.shape[1], NT):
                dot += g[i, j] * y[i, j]
            dot = _block_sum(sh, dot)
            for j in range(cuda.threadIdx.x, y.shape[1], NT):
                out[i, j] = y[i, j] * (g[i, j] - dot)

        @cuda.jit
        def log_softmax_backward(y, g, out):
            # grad_x = g - exp(y) * sum(g)
            sh = cuda.shared.array(NT, nbt)
            i = cuda.blockIdx.x
            total = nbt(0)
            for j in range(cuda.threadIdx.x, y.shape[1], NT):
                total += g[i, j]
            total = _block_sum(sh, total)
            for j in range(cuda.threadIdx.x, y.shape[1], NT):
                out[i, j] = g[i, j] - math.exp(y[i, j]) * total

        return {"softmax": (softmax_forward, softmax_backward),
                "log_softmax": (log_softmax_forward, log_softmax_backward)}
    return _cached(("rows", np.dtype(dtype).str, threads), build)


# ---------------------------------------------------------------------------------------
# Launch helpers


def _scalars(dtype, a: float, b: float):
    """Parameters in the array's dtype, so float32 kernels are typed float32."""
    t = np.dtype(dtype).type
    return t(a), t(b)


def _grid_1d(n: int) -> tuple[int, int]:
    threads = min(THREADS, n)
    return min(-(-n // threads), MAX_BLOCKS), threads


def _row_threads(n: int) -> int:
    """Threads per row block: the smallest power of two covering n, at most ROW_THREADS."""
    t = 1
    while t < n and t < ROW_THREADS:
        t *= 2
    return t


def _rows(name: str, direction: int, x2d, *args) -> None:
    rows, n = x2d.shape
    if rows == 0 or n == 0:
        return
    threads = _row_threads(n)
    kernel = row_kernels(x2d.dtype, threads)[name][direction]
    kernel[rows, threads](x2d, *args)


def _matmul(name, A, B, bias, out, pre, a, b, trans_a=False, trans_b=False) -> None:
    M, N = out.shape
    if M == 0 or N == 0:
        return
    T = TILE
    kernel = matmul_kernel(name, out.dtype, T, trans_a, trans_b)
    has_bias = bias is not None
    bias_arg = bias if has_bias else out.reshape(-1)  # never read: has_bias is False
    pre_arg = pre if pre is not None else out          # never written: write_pre is False
    grid = (-(-N // T), -(-M // T))
    kernel[grid, (T, T)](A, B, bias_arg, has_bias, pre_arg, pre is not None, out,
                         *_scalars(out.dtype, a, b))


# ---------------------------------------------------------------------------------------
# The backend interface (see fastgrad.backends): device arrays in, device arrays out


def _simulator_quiet(func):
    """Under the simulator, kernels run as Python on NumPy scalars, which warn where a
    float32 intermediate overflows to inf; on a GPU the same inf arises silently (and the
    formulas handle it). Silence those warnings, only there."""
    if not SIMULATOR:
        return func

    @functools.wraps(func)
    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return func(*args, **kwargs)
    return quiet


@_simulator_quiet
def activation_forward(spec: ActivationSpec, x, out, a: float, b: float) -> None:
    if spec.rowwise:
        _rows(spec.name, 0, x, out)
        return
    n = x.size
    if n == 0:
        return
    blocks, threads = _grid_1d(n)
    elementwise_kernels(spec.name)[0][blocks, threads](x, out, *_scalars(x.dtype, a, b))


@_simulator_quiet
def activation_backward(spec: ActivationSpec, grad, saved, out, a: float, b: float) -> None:
    if spec.rowwise:
        _rows(spec.name, 1, saved, grad, out)
        return
    n = grad.size
    if n == 0:
        return
    if saved is None:  # identity / binary_step: the formula ignores it
        saved = grad
    blocks, threads = _grid_1d(n)
    elementwise_kernels(spec.name)[1][blocks, threads](saved, grad, out,
                                                      *_scalars(grad.dtype, a, b))


@_simulator_quiet
def linear_forward(x, W, bias, out, pre, spec: ActivationSpec, a: float, b: float) -> None:
    if spec.rowwise:  # matmul + bias into pre (or out), then the row kernel
        z = out if pre is None else pre
        _matmul("identity", x, W, bias, z, None, a, b)
        _rows(spec.name, 0, z, out)
        return
    _matmul(spec.name, x, W, bias, out, pre, a, b)


@_simulator_quiet
def linear_backward(grad_y, x, W, saved, spec: ActivationSpec, a: float, b: float,
                    need_grad_x: bool):
    dtype = grad_y.dtype
    n, m = grad_y.shape
    # Through empty(): bench/gpu_check.py swaps in a poisoning allocator.
    g = empty((n, m), dtype)
    grad_b = empty((m,), dtype)
    grad_W = empty(W.shape, dtype)
    grad_x = empty(x.shape, dtype) if need_grad_x else None
    linear_backward_into(grad_y, x, W, saved, spec, a, b, g, grad_x, grad_W, grad_b)
    return grad_x, grad_W, grad_b


@_simulator_quiet
def linear_backward_into(grad_y, x, W, saved, spec: ActivationSpec, a: float, b: float,
                         g, grad_x, grad_W, grad_b) -> None:
    """`linear_backward` into caller-owned device buffers (the trainer allocates them once
    per fit): g (N, D_out) scratch for the gradient through the activation (may be grad_y
    itself), grad_x (N, D_in) or None (not computed), grad_W (D_in, D_out), grad_b
    (D_out,). grad_W and grad_b may be views into a flat gradient buffer."""
    dtype = grad_y.dtype
    m = grad_y.shape[1]
    if spec.rowwise:  # the row kernel's backward, then the identity's (a copy) + grad_b
        _rows(spec.name, 1, saved, grad_y, g)
        spec, saved, grad_y = ACTIVATIONS["identity"], g, g
    if m:
        T = TILE
        colsum = backward_colsum_kernel(spec.name, dtype, T)
        colsum[-(-m // T), (T, T)](grad_y, grad_y if saved is None else saved, g, grad_b,
                                   *_scalars(dtype, a, b))
    _matmul("identity", x, g, None, grad_W, None, 0.0, 0.0, trans_a=True)  # x^T g
    if grad_x is not None:
        _matmul("identity", g, W, None, grad_x, None, 0.0, 0.0, trans_b=True)  # g W^T


# ---------------------------------------------------------------------------------------
# Losses and optimizer updates (fastgrad.losses, fastgrad.optim). Math in float64 whatever
# the arrays' dtype, as on the CPU backends. Device arrays are used in place; host arrays
# are staged through the device (and arrays the kernel writes copied back).


def _staged(*arrays):
    """(device views, copy_back): host arrays copied to the device; copy_back(i) writes
    device array i back into its host original (a no-op for device input)."""
    dev = [a if a is None or is_device_array(a) else to_device(a) for a in arrays]
    dev = [a if a is None or getattr(a, "__cuda_ndarray__", False) else as_device(a)
           for a in dev]

    def copy_back(*indices):
        for i in indices:
            if arrays[i] is not None and not is_device_array(arrays[i]):
                arrays[i][...] = to_host(dev[i]).reshape(arrays[i].shape)
    return dev, copy_back


def loss_kernels(name: str, threads: int):
    """Kernels of one loss. Elementwise (mse, BCE): forward(p, t, partial) writes one
    float64 partial sum per block (a shared-memory tree of `threads`, a power of two),
    backward(p, t, out, scale) over flat arrays. cross_entropy: one block per row,
    forward(z, t, rowloss) writes each row's sum_k t_k (lse - z_k), backward(z, t, out,
    scale) writes (softmax(z) - t) * scale."""
    def build():
        from ..losses import LOSSES

        spec = LOSSES[name]
        NT = threads
        f64 = nb_float64
        if not spec.rowwise:
            jit = cuda.jit(device=True)
            value = compile_scalar(spec.scalar_value, jit)
            grad = compile_scalar(spec.scalar_grad, jit)

            @cuda.jit
            def forward(p, t, partial):
                sh = cuda.shared.array(NT, f64)
                total = f64(0)
                for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
                    total += value(f64(p[i]), f64(t[i]))
                total = _block_sum(sh, total)
                if cuda.threadIdx.x == 0:
                    partial[cuda.blockIdx.x] = total

            @cuda.jit
            def backward(p, t, out, scale):
                for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
                    out[i] = grad(f64(p[i]), f64(t[i])) * scale

            return forward, backward

        @cuda.jit(device=True)
        def row_lse(z, i, sh):
            """(row max, sum exp(z - max)) of row i, in float64."""
            m = f64(-math.inf)
            for j in range(cuda.threadIdx.x, z.shape[1], NT):
                v = f64(z[i, j])
                if v > m or v != v:
                    m = v
            m = _block_max(sh, m)
            total = f64(0)
            for j in range(cuda.threadIdx.x, z.shape[1], NT):
                total += math.exp(f64(z[i, j]) - m)
            return m, _block_sum(sh, total)

        @cuda.jit
        def ce_forward(z, t, rowloss):
            sh = cuda.shared.array(NT, f64)
            i = cuda.blockIdx.x
            m, s = row_lse(z, i, sh)
            lse = m + math.log(s)
            total = f64(0)
            for j in range(cuda.threadIdx.x, z.shape[1], NT):
                if t[i, j] != 0:  # classes without target weight never meet lse - z = inf
                    total += f64(t[i, j]) * (lse - f64(z[i, j]))
            total = _block_sum(sh, total)
            if cuda.threadIdx.x == 0:
                rowloss[i] = total

        @cuda.jit
        def ce_backward(z, t, out, scale):
            sh = cuda.shared.array(NT, f64)
            i = cuda.blockIdx.x
            m, s = row_lse(z, i, sh)
            inv = 1.0 / s
            for j in range(cuda.threadIdx.x, z.shape[1], NT):
                out[i, j] = (math.exp(f64(z[i, j]) - m) * inv - f64(t[i, j])) * scale

        return ce_forward, ce_backward
    return _cached(("loss", name, threads), build)


def _pow2_threads(limit: int) -> int:
    """The largest power of two <= limit (block reductions need one)."""
    t = 1
    while t * 2 <= limit:
        t *= 2
    return t


@_simulator_quiet
def loss_forward(spec, pred, target) -> float:
    (p, t), _ = _staged(pred, target)
    rows, k = p.shape
    if spec.rowwise:
        threads = _row_threads(k)
        rowloss = empty((rows,), np.float64)
        loss_kernels(spec.name, threads)[0][rows, threads](p, t, rowloss)
        return float(to_host(rowloss).sum() / rows)
    n = rows * k
    threads = _pow2_threads(THREADS)
    blocks = min(-(-n // threads), MAX_BLOCKS)
    partial = empty((blocks,), np.float64)
    loss_kernels(spec.name, threads)[0][blocks, threads](p.reshape(n), t.reshape(n),
                                                         partial)
    return float(to_host(partial).sum() / n)


@cuda.jit
def _sum_into_kernel(src, count, out, index, divisor):
    """out[index] = sum(src[:count]) / divisor, in float64, by one block (a power of two
    threads, each striding over src, then a shared-memory tree)."""
    sh = cuda.shared.array(_REDUCE_THREADS, nb_float64)
    total = nb_float64(0)
    for j in range(cuda.threadIdx.x, count, cuda.blockDim.x):
        total += src[j]
    total = _block_sum(sh, total)
    if cuda.threadIdx.x == 0:
        out[index] = total / divisor


def loss_scratch_size(spec, rows: int, k: int) -> int:
    """float64 elements of scratch `loss_forward_into` needs for a (rows, k) batch."""
    if spec.rowwise:
        return rows
    return min(-(-(rows * k) // _pow2_threads(THREADS)), MAX_BLOCKS)


@_simulator_quiet
def loss_forward_into(spec, pred, target, out, index: int, scratch) -> None:
    """The mean loss of device pred/target (N, K), written to the float64 device array
    out[index] without leaving the device (the trainer copies a whole epoch's batch losses
    out at once). scratch: float64 device array of `loss_scratch_size` elements or more."""
    rows, k = pred.shape
    if spec.rowwise:
        threads = _row_threads(k)
        loss_kernels(spec.name, threads)[0][rows, threads](pred, target, scratch)
        count, divisor = rows, float(rows)
    else:
        n = rows * k
        threads = _pow2_threads(THREADS)
        count = min(-(-n // threads), MAX_BLOCKS)
        loss_kernels(spec.name, threads)[0][count, threads](pred.reshape(n),
                                                            target.reshape(n), scratch)
        divisor = float(n)
    _sum_into_kernel[1, _pow2_threads(min(_REDUCE_THREADS, count))](scratch, count, out,
                                                                      index, divisor)


@_simulator_quiet
def loss_backward(spec, pred, target, out) -> None:
    (p, t, o), copy_back = _staged(pred, target, out)
    rows, k = p.shape
    if spec.rowwise:
        threads = _row_threads(k)
        loss_kernels(spec.name, threads)[1][rows, threads](p, t, o, 1.0 / rows)
    else:
        n = rows * k
        blocks, threads = _grid_1d(n)
        loss_kernels(spec.name, _pow2_threads(THREADS))[1][blocks, threads](
            p.reshape(n), t.reshape(n), o.reshape(n), 1.0 / n)
    copy_back(2)


_sgd_step = cuda.jit(device=True)(update_math.sgd_step)
_adam_step = cuda.jit(device=True)(update_math.adam_step)
_rmsprop_step = cuda.jit(device=True)(update_math.rmsprop_step)


# The per-element steps of fastgrad.update_math, over a grid-stride loop.
@cuda.jit
def _sgd_kernel(p, g, vel, lr, momentum, wd, nesterov):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], v = _sgd_step(nb_float64(p[i]), g[i], vel[i] if momentum != 0.0 else 0.0, lr,
                            momentum, wd, nesterov)
        if momentum != 0.0:
            vel[i] = v


@cuda.jit
def _adam_kernel(p, g, m, v, beta1, beta2, eps, shrink, l2, step_size, inv_sqrt_bc2):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], m[i], v[i] = _adam_step(nb_float64(p[i]), g[i], m[i], v[i], beta1, beta2, eps,
                                      shrink, l2, step_size, inv_sqrt_bc2)


@cuda.jit
def _rmsprop_kernel(p, g, sq, buf, lr, alpha, eps, wd, momentum):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], sq[i], b = _rmsprop_step(nb_float64(p[i]), g[i], sq[i],
                                       buf[i] if momentum != 0.0 else 0.0, lr, alpha, eps,
                                       wd, momentum)
        if momentum != 0.0:
            buf[i] = b


def _launch_update(kernel, arrays, written, *scalars) -> None:
    dev, copy_back = _staged(*arrays)
    n = dev[0].size
    if n:
        blocks, threads = _grid_1d(n)
        kernel[blocks, threads](*dev, *scalars)
    copy_back(*written)


@_simulator_quiet
def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov) -> None:
    _launch_update(_sgd_kernel, (param, grad, velocity), (0, 2), float(lr), float(momentum),
                   float(weight_decay), bool(nesterov))


@_simulator_quiet
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
                step) -> None:
    wd = float(weight_decay)
    shrink, l2 = (1.0 - lr * wd, 0.0) if decoupled else (1.0, wd)
    _launch_update(_adam_kernel, (param, grad, m, v), (0, 2, 3), float(beta1), float(beta2),
                   float(eps), float(shrink), l2, lr / (1.0 - beta1**step),
                   1.0 / math.sqrt(1.0 - beta2**step))


@_simulator_quiet
def rmsprop_update(param, grad, square_avg, momentum_buf, lr, alpha, eps, weight_decay,
                   momentum) -> None:
    _launch_update(_rmsprop_kernel, (param, grad, square_avg, momentum_buf), (0, 2, 3),
                   float(lr), float(alpha), float(eps), float(weight_decay),
                   float(momentum))


# ---------------------------------------------------------------------------------------
# Trainer support (fastgrad.train_device): per-layer gradient norms, clipping, fills, all
# on the device, so a training epoch needs no transfer between its batches.


@cuda.jit
def _segment_sumsq_kernel(x, bounds, psq, pbad):
    """Block (bx, k) of a (BX, L) grid: float64 sum of squares and count of non-finite
    values over its grid-stride share of x[bounds[k]:bounds[k + 1]], into psq[k, bx] and
    pbad[k, bx]."""
    sh = cuda.shared.array(_REDUCE_THREADS, nb_float64)
    k = cuda.blockIdx.y
    stride = cuda.gridDim.x * cuda.blockDim.x
    sq = nb_float64(0)
    bad = nb_float64(0)
    for i in range(bounds[k] + cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x,
                   bounds[k + 1], stride):
        v = nb_float64(x[i])
        sq += v * v
        if v - v != 0.0:  # NaN or +-inf (v - v is 0 for every finite v)
            bad += 1.0
    sq = _block_sum(sh, sq)
    bad = _block_sum(sh, bad)
    if cuda.threadIdx.x == 0:
        psq[k, cuda.blockIdx.x] = sq
        pbad[k, cuda.blockIdx.x] = bad


@cuda.jit
def _segment_finish_kernel(psq, pbad, out_sq, out_bad, row):
    """Block k: out_sq[row, k] = sum(psq[k]), out_bad[row, k] = sum(pbad[k])."""
    sh = cuda.shared.array(_REDUCE_THREADS, nb_float64)
    k = cuda.blockIdx.x
    sq = nb_float64(0)
    bad = nb_float64(0)
    for j in range(cuda.threadIdx.x, psq.shape[1], cuda.blockDim.x):
        sq += psq[k, j]
        bad += pbad[k, j]
    sq = _block_sum(sh, sq)
    bad = _block_sum(sh, bad)
    if cuda.threadIdx.x == 0:
        out_sq[row, k] = sq
        out_bad[row, k] = bad


def segment_partials(bounds: list[int]) -> int:
    """Blocks per segment `segment_sumsq_into` launches (the width of its partials)."""
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return max(1, min(-(-longest // _pow2_threads(THREADS)), MAX_BLOCKS, _REDUCE_THREADS))


@_simulator_quiet
def segment_sumsq_into(x, bounds, psq, pbad, out_sq, out_bad, row: int) -> None:
    """Per segment k of the flat device array x (elements bounds[k]:bounds[k+1]; bounds a
    device int64 array of L + 1 offsets): the float64 sum of squares into out_sq[row, k]
    and the number of NaN/inf elements into out_bad[row, k] (float64 (rows, L) device
    arrays). psq, pbad: float64 (L, segment_partials(bounds)) scratch. Deterministic (two
    tree reductions, no atomics), so equal inputs give bit-equal norms."""
    n_seg, width = psq.shape
    threads = _pow2_threads(min(THREADS, _REDUCE_THREADS))
    if width == 1:  # one block per segment: it writes the row itself, no second launch
        _segment_sumsq_kernel[(1, n_seg), threads](x, bounds, out_sq[row].reshape(n_seg, 1),
                                                   out_bad[row].reshape(n_seg, 1))
        return
    _segment_sumsq_kernel[(width, n_seg), threads](x, bounds, psq, pbad)
    _segment_finish_kernel[n_seg, _pow2_threads(min(width, _REDUCE_THREADS))](
        psq, pbad, out_sq, out_bad, row)


def _clip_kernels(dtype):
    """(clip_value(x, c), clip_norm(x, sq, row, max_norm)) for flat arrays of `dtype`."""
    def build():
        nbt = _NB_TYPES[np.dtype(dtype)]

        @cuda.jit
        def clip_value(x, c):
            for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
                v = x[i]
                if v > c:
                    x[i] = c
                elif v < -c:
                    x[i] = -c

        @cuda.jit
        def clip_norm(x, sq, row, max_norm):
            # Every thread sums the row's few per-layer squares itself: no second launch.
            total = nb_float64(0)
            for k in range(sq.shape[1]):
                total += sq[row, k]
            norm = math.sqrt(total)
            if norm > max_norm:
                scale = nbt(max_norm / norm)  # rounded to the dtype first, as on the CPU
                for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
                    x[i] = x[i] * scale

        return clip_value, clip_norm
    return _cached(("clip", np.dtype(dtype).str), build)


@_simulator_quiet
def clip_value_(x, c: float) -> None:
    """In place on the flat device array x: clamp to [-c, c] (NaN stays NaN)."""
    if x.size:
        blocks, threads = _grid_1d(x.size)
        _clip_kernels(x.dtype)[0][blocks, threads](x, np.dtype(x.dtype).type(c))


@_simulator_quiet
def clip_norm_(x, sq, row: int, max_norm: float) -> None:
    """In place on the flat device array x: scale by max_norm / ||x|| when the norm, the
    square root of sum_k sq[row, k] (a float64 device array, e.g. segment_sumsq_into's
    output), exceeds max_norm. Reads the norm on the device: no transfer."""
    if x.size:
        blocks, threads = _grid_1d(x.size)
        _clip_kernels(x.dtype)[1][blocks, threads](x, sq, row, float(max_norm))


@cuda.jit
def _fill_kernel(x, value):
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        x[i] = value


def zeros(shape, dtype):
    """A zeroed device array, filled on the device (no host buffer is copied)."""
    arr = cuda.device_array(shape, np.dtype(dtype))
    if arr.size:
        blocks, threads = _grid_1d(arr.size)
        _fill_kernel[blocks, threads](arr.reshape(arr.size), np.dtype(dtype).type(0))
    return arr


def upload(dst, host: np.ndarray) -> None:
    """Copy the host array into the existing device array dst (same size)."""
    dst.copy_to_device(np.ascontiguousarray(host).reshape(dst.shape))


def download(src, host: np.ndarray) -> None:
    """Copy the device array src into the existing C-contiguous host array (same size)."""
    src.copy_to_host(host.reshape(src.shape))  # a view of host: written in place


def copy_device(dst, src) -> None:
    """Device-to-device copy between two device arrays of one size and dtype."""
    dst.copy_to_device(src)


# ---------------------------------------------------------------------------------------
# Device arrays: what the functional layer uses to move data (no copies of device input)


def is_device_array(obj) -> bool:
    """A numba device array, or any object exposing __cuda_array_interface__ (CuPy
    arrays, PyTorch CUDA tensors)."""
    return bool(getattr(obj, "__cuda_ndarray__", False)) or hasattr(
        obj, "__cuda_array_interface__")


def as_device(obj):
    """`obj` as a numba device array without copying (numba arrays are returned as they
    are; other __cuda_array_interface__ objects are wrapped by cuda.as_cuda_array)."""
    if getattr(obj, "__cuda_ndarray__", False):
        return obj
    if SIMULATOR:
        return _simulated_view(obj)
    return cuda.as_cuda_array(obj)


def _simulated_view(obj):
    """Under the simulator device memory is host memory and numba has no as_cuda_array:
    view the interface's pointer as a NumPy array (no copy) inside a simulated array."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    iface = dict(obj.__cuda_array_interface__)
    holder = type("_Iface", (), {"__array_interface__": {
        "shape": tuple(iface["shape"]), "typestr": iface["typestr"],
        "data": iface["data"], "strides": iface.get("strides"), "version": 3}})()
    return FakeCUDAArray(np.asarray(holder))


def is_c_contiguous(darr) -> bool:
    return bool(darr.is_c_contiguous())


def to_device(arr: np.ndarray):
    """A device copy of a host array."""
    return cuda.to_device(np.ascontiguousarray(arr).reshape(arr.shape))  # 0-d stays 0-d


def empty(shape: tuple[int, ...], dtype):
    """An uninitialised device array."""
    return cuda.device_array(tuple(shape), np.dtype(dtype))


def to_host(darr) -> np.ndarray:
    """A host copy of a device array."""
    return darr.copy_to_host()


# ---------------------------------------------------------------------------------------
# For ahead-of-time compilation checks (bench/cuda_ptx.py): every kernel and the argument
# types its launches use


def compile_targets(dtype) -> list[tuple[str, object, tuple]]:
    """(label, kernel, argument types) for every kernel this backend launches on arrays of
    `dtype` (with the current TILE and ROW_THREADS): what numba.cuda.compile_ptx needs to
    compile each one for a real GPU (kernel.py_func with the argument types)."""
    from numba import types

    nbt = _NB_TYPES[np.dtype(dtype)]
    vec, mat = nbt[::1], nbt[:, ::1]
    targets = []
    for name, spec in ACTIVATIONS.items():
        if spec.rowwise:
            continue
        fwd, bwd = elementwise_kernels(name)
        targets += [
            (f"{name}_forward", fwd, (vec, vec, nbt, nbt)),
            (f"{name}_backward", bwd, (vec, vec, vec, nbt, nbt)),
            (f"matmul+bias+{name}", matmul_kernel(name, dtype, TILE, False, False),
             (mat, mat, vec, types.boolean, mat, types.boolean, mat, nbt, nbt)),
            (f"{name}_backward+grad_b", backward_colsum_kernel(name, dtype, TILE),
             (mat, mat, mat, vec, nbt, nbt)),
        ]
    for label, trans_a, trans_b in (("matmul x^T g", True, False),
                                    ("matmul g W^T", False, True)):
        targets.append((label, matmul_kernel("identity", dtype, TILE, trans_a, trans_b),
                        (mat, mat, vec, types.boolean, mat, types.boolean, mat, nbt, nbt)))
    for name, (fwd, bwd) in row_kernels(dtype, ROW_THREADS).items():
        targets += [(f"{name}_forward", fwd, (mat, mat)),
                    (f"{name}_backward", bwd, (mat, mat, mat))]
    from ..losses import LOSSES

    f64 = nb_float64
    for name, spec in LOSSES.items():
        threads = ROW_THREADS if spec.rowwise else _pow2_threads(THREADS)
        fwd, bwd = loss_kernels(name, threads)
        arr, out = (mat, f64[::1]) if spec.rowwise else (vec, f64[::1])
        targets += [(f"loss {name} forward", fwd, (arr, arr, out)),
                    (f"loss {name} backward", bwd, (arr, arr, arr, f64))]
    v64, m64, i64 = f64[::1], f64[:, ::1], types.int64
    clip_value, clip_norm = _clip_kernels(dtype)
    targets += [
        ("loss sum into slot", _sum_into_kernel, (v64, i64, v64, i64, f64)),
        ("grad norms: segment sumsq", _segment_sumsq_kernel, (vec, i64[::1], m64, m64)),
        ("grad norms: finish", _segment_finish_kernel, (m64, m64, m64, m64, i64)),
        ("clip_value", clip_value, (vec, nbt)),
        ("clip_norm", clip_norm, (vec, m64, i64, f64)),
        ("fill", _fill_kernel, (vec, nbt)),
        ("sgd_update", _sgd_kernel, (vec, vec, vec, f64, f64, f64, types.boolean)),
        ("adam_update", _adam_kernel, (vec,) * 4 + (f64,) * 7),
        ("rmsprop_update", _rmsprop_kernel, (vec,) * 4 + (f64,) * 5),
    ]
    return targets
