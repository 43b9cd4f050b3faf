"""Matrix products on strided views for compiled Numba code, and a split over threads.

Numba's ``np.dot(a, b, out)`` calls BLAS only for contiguous operands and copies any other
view first (an allocation inside a loop that is meant to allocate nothing). `gemm` calls
the same BLAS entry (numba's helper ``numba_xxgemm``, SciPy's sgemm/dgemm through
cython_blas) with the leading dimensions taken from the strides, so a block of columns of a
C-contiguous matrix, or its transpose, goes to BLAS as it is. The helper is linked by name,
not by address, so kernels calling it stay in Numba's disk cache across processes.

`gemm_split_rows` runs one product as one-thread BLAS calls on Numba's threads at once,
each on a block of the output's rows (no reduction: each thread owns its block of
``out``); `gemm_split` splits two halves of the columns. Hold SciPy's OpenBLAS to one
thread (threadpoolctl) around them, so that its pool never spins beside Numba's (DESIGN.md
§5). Measured (bench/gemm_split.py, bench/RESULTS.md): at the MLP steps' shapes they are
level with OpenBLAS's own two threads (0.98-1.09x), so the fused epoch does not use them;
they stay as the tested prototype of that result. A parallel function from the disk cache
needs Numba's thread pool started first (``numba.get_num_threads()``): a cached caller
of `gemm_split_rows` crashed on its first call without it.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_ll_char = ir.IntType(8)
_ll_voidp = ir.IntType(8).as_pointer()


@intrinsic
def _xxgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major ``C = alpha * op(A) @ op(B) + beta * C`` (BLAS's xGEMM) on raw
    addresses: transa/transb are 0 (N) or 1 (T); a, b, c are data addresses (uintp); the
    kind (s or d) follows alpha's type."""
    if alpha not in (types.float32, types.float64) or beta != alpha:
        return None
    kind = ord("s" if alpha == types.float32 else "d")
    sig = types.int32(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [
            _ll_char, _ll_char, _ll_char,
            cgutils.intp_t, cgutils.intp_t, cgutils.intp_t,
            _ll_voidp, _ll_voidp, cgutils.intp_t,
            _ll_voidp, cgutils.intp_t, _ll_voidp,
            _ll_voidp, cgutils.intp_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        ta, tb, mm, nn, kk, al, pa, la, pb, lb, be, pc, lc = args
        tys = signature.args

        def flag(v, ty):
            v = context.cast(builder, v, ty, types.intp)
            is_t = builder.icmp_signed("!=", v, ir.Constant(cgutils.intp_t, 0))
            return builder.select(is_t, ir.Constant(_ll_char, ord("t")),
                                  ir.Constant(_ll_char, ord("n")))

        def intp(v, ty):
            return context.cast(builder, v, ty, types.intp)

        def ptr(v):
            return builder.inttoptr(v, _ll_voidp)

        al_slot = cgutils.alloca_once_value(builder, al)
        be_slot = cgutils.alloca_once_value(builder, be)
        return builder.call(fn, (
            ir.Constant(_ll_char, kind), flag(ta, tys[0]), flag(tb, tys[1]),
            intp(mm, tys[2]), intp(nn, tys[3]), intp(kk, tys[4]),
            builder.bitcast(al_slot, _ll_voidp), ptr(pa), intp(la, tys[7]),
            ptr(pb), intp(lb, tys[9]), builder.bitcast(be_slot, _ll_voidp),
            ptr(pc), intp(lc, tys[12])))

    return sig, codegen


@njit(cache=True, nogil=True)
def _layout(x):
    # (transposed?, leading dimension) of a 2-D view as a row-major matrix: rows of unit
    # stride are row-major; columns of unit stride are a transposed (column-major) view.
    s0 = x.strides[0] // x.itemsize
    s1 = x.strides[1] // x.itemsize
    if s1 == 1 and s0 >= max(x.shape[1], 1):
        return 0, s0
    if s0 == 1 and s1 >= max(x.shape[0], 1):
        return 1, s1
    return -1, 0


@njit(cache=True, nogil=True)
def gemm(a, b, out, beta):
    """``out = a @ b + beta * out`` on 2-D views whose rows or columns are contiguous
    (e.g. ``W[:, j0:j1]``, ``x.T``), through BLAS with no copy. a: (m, k), b: (k, n),
    out: (m, n) with contiguous rows; all of one float dtype. Shapes are the caller's
    contract (checked by compiled callers' tests, not here, to keep the call cheap)."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    one = out.dtype.type(1.0)
    beta_ = out.dtype.type(beta)
    if k == 0:
        for i in range(m):  # no product: out = beta * out (BLAS skips k = 0 calls too)
            for j in range(n):
                out[i, j] = out[i, j] * beta_ if beta != 0 else 0
        return
    ta, lda = _layout(a)
    tb, ldb = _layout(b)
    tc, ldc = _layout(out)
    if ta < 0 or tb < 0 or tc != 0:
        raise ValueError("gemm: operands need contiguous rows or columns, out contiguous rows")
    # Row-major C = A B is column-major C^T = B^T A^T: BLAS gets (b, a) with m and n swapped.
    _xxgemm(tb, ta, n, m, k, one, b.ctypes.data, ldb, a.ctypes.data, lda, beta_,
            out.ctypes.data, ldc)


@njit(cache=True, nogil=True, parallel=True)
def gemm_split(a, b, out, beta):
    """``out = a @ b + beta * out`` as two one-thread BLAS calls on two Numba threads,
    each on one half of out's (and b's) columns. Limit BLAS to one thread around it."""
    n = b.shape[1]
    half = (n // 2 + 7) // 8 * 8  # a multiple of 8 columns: each block stays aligned
    if half >= n:
        half = n // 2
    for t in prange(2):
        j0 = 0 if t == 0 else half
        j1 = half if t == 0 else n
        gemm(a, b[:, j0:j1], out[:, j0:j1], beta)


@njit(cache=True, nogil=True, parallel=True)
def gemm_split_rows(a, b, out, beta, parts):
    """``out = a @ b + beta * out`` as `parts` one-thread BLAS calls run at once on Numba's
    threads (pass numba.get_num_threads(): read inside, it would make this function and
    every caller uncacheable), each on a block of out's (and a's) rows, no reduction.
    Limit BLAS to one thread around it."""
    m = a.shape[0]
    parts = max(1, min(parts, m // 8))
    step = (m + parts - 1) // parts
    for t in prange(parts):
        i0 = min(m, t * step)
        i1 = min(m, i0 + step)
        gemm(a[i0:i1], b, out[i0:i1], beta)
