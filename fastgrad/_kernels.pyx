# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastgrad's compiled kernels: the `cython` backend.

The loops are C (fastgrad/_kernels_simd.h, _kernels_impl.h), vectorized by gcc with
libmvec and dispatched at load time to AVX-512/AVX2/baseline variants; this module
validates every argument (type, dtype, shape, C-contiguity, alignment, writeability,
overlap) while it holds the GIL, then runs the loops without it: serially, or one
contiguous block per thread in a `prange` when the size pays for threads. Matmuls call
BLAS sgemm/dgemm through scipy.linalg.cython_blas.

Kernels are chosen by id: ``KERNELS[name]`` for every activation this module compiles,
``LOSSES[name]`` for every loss. Entry points: activation_forward, activation_backward,
linear_forward, linear_backward, loss_forward, loss_backward, and the optimizer updates
sgd_update, adam_update, rmsprop_update.
Every one raises TypeError/ValueError (naming the argument) on bad input; none reads or
writes out of bounds, whatever it is given.
"""

cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.math cimport sqrt
from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #define FG_OPENMP 1
    #else
    #define FG_OPENMP 0
    #endif
    """
    int FG_OPENMP

cdef extern from "_kernels_simd.h" nogil:
    int FG_NUM_KERNELS
    int FG_BLOCK
    int FG_VECTOR_MATH
    const char *fg_kernel_names[]
    const int fg_kernel_rowwise[]
    const int fg_kernel_needs_saved[]
    const int fg_kernel_transcendental[]
    const int fg_kernel_transcendental_backward[]
    int fg_max_threads()
    size_t FG_STREAM_MIN_BYTES
    void fg_forward_f32(int k, const float *x, float *y, Py_ssize_t n, float a, float b,
                        int stream)
    void fg_forward_f64(int k, const double *x, double *y, Py_ssize_t n, double a, double b,
                        int stream)
    void fg_backward_f32(int k, const float *s, const float *g, float *out, Py_ssize_t n,
                         float a, float b)
    void fg_backward_f64(int k, const double *s, const double *g, double *out, Py_ssize_t n,
                         double a, double b)
    void fg_rows_forward_f32(int k, const float *x, float *y, Py_ssize_t rows,
                             Py_ssize_t cols, int stream)
    void fg_rows_forward_f64(int k, const double *x, double *y, Py_ssize_t rows,
                             Py_ssize_t cols, int stream)
    void fg_rows_backward_f32(int k, const float *y, const float *g, float *out,
                              Py_ssize_t rows, Py_ssize_t cols)
    void fg_rows_backward_f64(int k, const double *y, const double *g, double *out,
                              Py_ssize_t rows, Py_ssize_t cols)
    void fg_bias_forward_f32(int k, float *pre, const float *bias, float *out,
                             Py_ssize_t rows, Py_ssize_t cols, float a, float b)
    void fg_bias_forward_f64(int k, double *pre, const double *bias, double *out,
                             Py_ssize_t rows, Py_ssize_t cols, double a, double b)
    void fg_backward_colsum_f32(int k, const float *s, const float *grad, float *g,
                                float *colsum, Py_ssize_t rows, Py_ssize_t cols,
                                float a, float b)
    void fg_backward_colsum_f64(int k, const double *s, const double *grad, double *g,
                                double *colsum, Py_ssize_t rows, Py_ssize_t cols,
                                double a, double b)
    int FG_NUM_LOSSES
    const char *fg_loss_names[]
    const int fg_loss_rowwise[]
    double fg_loss_forward_f32(int k, const float *p, const float *t, Py_ssize_t rows,
                               Py_ssize_t cols)
    double fg_loss_forward_f64(int k, const double *p, const double *t, Py_ssize_t rows,
                               Py_ssize_t cols)
    void fg_loss_backward_f32(int k, const float *p, const float *t, float *out,
                              Py_ssize_t rows, Py_ssize_t cols)
    void fg_loss_backward_f64(int k, const double *p, const double *t, double *out,
                              Py_ssize_t rows, Py_ssize_t cols)
    double fg_loss_count_f64(int k, Py_ssize_t rows, Py_ssize_t cols)
    double fg_loss_total_f32(int k, const float *p, const float *t, Py_ssize_t rows,
                             Py_ssize_t cols)
    double fg_loss_total_f64(int k, const double *p, const double *t, Py_ssize_t rows,
                             Py_ssize_t cols)
    void fg_loss_backward_part_f32(int k, const float *p, const float *t, float *out,
                                   Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t batch_rows)
    void fg_loss_backward_part_f64(int k, const double *p, const double *t, double *out,
                                   Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t batch_rows)
    void fg_sgd_update_f32(float *param, const float *grad, float *velocity, Py_ssize_t n,
                           double lr, double momentum, double weight_decay, int nesterov)
    void fg_sgd_update_f64(double *param, const double *grad, double *velocity,
                           Py_ssize_t n, double lr, double momentum, double weight_decay,
                           int nesterov)
    void fg_adam_update_f32(float *param, const float *grad, float *m, float *v,
                            Py_ssize_t n, double lr, double beta1, double beta2,
                            double eps, double weight_decay, int decoupled,
                            double step_size, double inv_sqrt_bc2)
    void fg_adam_update_f64(double *param, const double *grad, double *m, double *v,
                            Py_ssize_t n, double lr, double beta1, double beta2,
                            double eps, double weight_decay, int decoupled,
                            double step_size, double inv_sqrt_bc2)
    void fg_rmsprop_update_f32(float *param, const float *grad, float *square_avg,
                               float *momentum_buf, Py_ssize_t n, double lr, double alpha,
                               double eps, double weight_decay, double momentum)
    void fg_rmsprop_update_f64(double *param, const double *grad, double *square_avg,
                               double *momentum_buf, Py_ssize_t n, double lr, double alpha,
                               double eps, double weight_decay, double momentum)

ctypedef fused floating:
    float
    double

OPENMP = bool(FG_OPENMP)
"""True when the build had OpenMP (otherwise every kernel runs serially)."""
VECTOR_MATH = bool(FG_VECTOR_MATH)
"""True when the build vectorizes exp/tanh/... through glibc's libmvec."""

KERNELS = {fg_kernel_names[k].decode(): k for k in range(FG_NUM_KERNELS)}
"""Activation name -> kernel id, for every activation compiled here."""
ROWWISE = frozenset(name for name, k in KERNELS.items() if fg_kernel_rowwise[k])
"""Activations that act along the last axis (2-D arrays of shape (rows, n))."""
LOSSES = {fg_loss_names[k].decode(): k for k in range(FG_NUM_LOSSES)}
"""Loss name (fastgrad.LOSSES) -> loss id, for every loss compiled here."""
ROWWISE_LOSSES = frozenset(name for name, k in LOSSES.items() if fg_loss_rowwise[k])
"""Losses that couple a row's outputs (the mean is over rows, not elements)."""

# Thread thresholds (elements; the total work of one call). Below them a call runs on the
# calling thread: entering an OpenMP region costs ~2-3 us here, more than the loop saves.
# Measured 2026-11-28 with `python -m bench.thread_threshold` (float32, serial vs 2
# threads, median of repeats) on the shared 2-core dev machine under load ~10, so
# indicative only: sigmoid (vectorized expf) 0.81x at 2^13, 1.14x at 2^14, 1.45x at 2^15;
# gelu (double erfc, the slowest) 1.27x at 2^11, 1.56x at 2^12; relu 0.60x at 2^15,
# 1.31x at 2^16; identity 0.76x at 2^15, 1.08x at 2^16, 1.59x at 2^17. Under load a
# threaded call sometimes waited 15-50 ms for a descheduled thread: thresholds err high.
cdef Py_ssize_t _MIN_TRANSCENDENTAL = 1 << 14
cdef Py_ssize_t _MIN_MEMORY = 1 << 16
PARALLEL_MIN_TRANSCENDENTAL = _MIN_TRANSCENDENTAL
"""Kernels that call exp/expm1/tanh/erfc/log1p (and the row kernels) use threads from this
many elements (2^14: where sigmoid, the cheapest of them, starts to gain)."""
PARALLEL_MIN_MEMORY = _MIN_MEMORY
"""Arithmetic-only kernels (relu, identity, the backward passes from y...) are
memory-bound and use threads from this many elements (2^16)."""


def max_threads() -> int:
    """Threads a parallel kernel uses (OMP_NUM_THREADS; 1 without OpenMP)."""
    return fg_max_threads()


# ---- validation (with the GIL, before any nogil code) -----------------------------------

cdef str _dtype_name(int typenum):
    return "float32" if typenum == cnp.NPY_FLOAT32 else "float64"


cdef cnp.ndarray _array(object obj, str name, int typenum, bint writable):
    """obj as an ndarray of `typenum` (-1: float32 or float64), C-contiguous and aligned."""
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>obj
    cdef int t = cnp.PyArray_TYPE(arr)
    if typenum < 0:
        if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
            raise TypeError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    elif t != typenum:
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {_dtype_name(typenum)}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{name} must be aligned to its dtype")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} is read-only")
    return arr


cdef int _check_shape(cnp.ndarray arr, str name, tuple shape, str what) except -1:
    if (<object>arr).shape != shape:
        raise ValueError(f"{name} has shape {(<object>arr).shape}, expected {shape} ({what})")
    return 0


cdef int _check_2d(cnp.ndarray arr, str name, str what) except -1:
    if cnp.PyArray_NDIM(arr) != 2:
        raise ValueError(f"{name} must be 2-D {what}, got shape {(<object>arr).shape}")
    return 0


cdef int _kernel(object kernel) except -1:
    if (not isinstance(kernel, (int, np.integer)) or isinstance(kernel, bool)
            or not 0 <= kernel < FG_NUM_KERNELS):
        raise ValueError(f"kernel must be an id from fastgrad._kernels.KERNELS "
                         f"(0..{FG_NUM_KERNELS - 1}), got {kernel!r}")
    return kernel


cdef int _loss(object loss) except -1:
    if (not isinstance(loss, (int, np.integer)) or isinstance(loss, bool)
            or not 0 <= loss < FG_NUM_LOSSES):
        raise ValueError(f"loss must be an id from fastgrad._kernels.LOSSES "
                         f"(0..{FG_NUM_LOSSES - 1}), got {loss!r}")
    return loss


cdef inline bint _meet(char *p, char *q, char *lo, char *hi) noexcept:
    """Whether the byte ranges [p, q) and [lo, hi) share a byte."""
    return p < q and lo < hi and p < hi and lo < q


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b):
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    return _meet(pa, pa + cnp.PyArray_NBYTES(a), pb, pb + cnp.PyArray_NBYTES(b))


cdef cnp.ndarray _apart(cnp.ndarray inp, cnp.ndarray out, bint same_ok):
    """`inp`, or a copy of it where it overlaps `out`: the loops allow an output that is
    exactly an input (same_ok, elementwise), never a partial overlap; BLAS allows none."""
    if out is not None and _overlap(inp, out):
        if not (same_ok and cnp.PyArray_DATA(inp) == cnp.PyArray_DATA(out)):
            return inp.copy()
    return inp


cdef int _nthreads(Py_ssize_t work, bint transcendental, int requested) except -1:
    """Threads for a call: `requested` when > 0, else all of them above the threshold of
    the kernel's kind, at most one per half-threshold of work."""
    if requested < 0:
        raise ValueError(f"nthreads must be >= 0 (0: automatic), got {requested}")
    if requested > 0:  # forced (tests, benchmarks); never more threads than blocks
        return <int>min(<Py_ssize_t>requested, max(1, (work + FG_BLOCK - 1) // FG_BLOCK))
    cdef Py_ssize_t threshold = _MIN_TRANSCENDENTAL if transcendental else _MIN_MEMORY
    if work < threshold:
        return 1
    return <int>max(1, min(<Py_ssize_t>fg_max_threads(), work // (threshold // 2)))


cdef int _blas_int(Py_ssize_t v, str what) except -1:
    if v > 2147483647:
        raise ValueError(f"{what} = {v} exceeds the BLAS int limit 2^31-1")
    return <int>v


# ---- elementwise and row kernels, split over threads ------------------------------------

cdef inline Py_ssize_t _thread_chunk(Py_ssize_t n, int nthreads) noexcept nogil:
    """Elements per thread, rounded up to a multiple of FG_BLOCK: each element then takes
    the same vector path whatever the thread count (results identical for 1 and N threads)."""
    cdef Py_ssize_t chunk = (n + nthreads - 1) // nthreads
    return (chunk + FG_BLOCK - 1) // FG_BLOCK * FG_BLOCK


cdef size_t _stream_min_bytes = FG_STREAM_MIN_BYTES


def _set_stream_min_bytes(nbytes):
    """Outputs of at least `nbytes` are written with streaming stores (memory-bound
    forward kernels and softmax; see _kernels_simd.h: off by default, since whether they
    pay depends on the cache); returns the previous threshold. For benchmarks
    (bench/stream_stores.py) and tests (0: always, which must not change a single bit)."""
    global _stream_min_bytes
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    previous = _stream_min_bytes
    _stream_min_bytes = <size_t>min(nbytes, 2 ** 63)
    return previous


cdef inline int _streams(const void *out, size_t nbytes, const void *in1,
                         const void *in2) noexcept nogil:
    """Whether to write `out` with streaming stores (see fg_stream_copy): large enough that
    no cache keeps it, and not in place."""
    return nbytes >= _stream_min_bytes and out != in1 and out != in2


cdef void _elementwise(int k, const floating *s, const floating *g, floating *out,
                       Py_ssize_t n, floating a, floating b, bint backward,
                       int nthreads) noexcept nogil:
    """Elementwise kernels: forward out = f(s) (g unused), backward out = g f'(s); threads
    take blocks of whole FG_BLOCKs (_thread_chunk)."""
    cdef Py_ssize_t t, start, stop, chunk
    # Streamed (when turned on) only for forward passes where memory is the bound: sigmoid
    # ran 0.87-0.93x, its buffer copy adding to a compute-bound loop.
    cdef int stream = (not backward and not fg_kernel_transcendental[k]
                       and _streams(out, n * sizeof(floating), s, s))
    if nthreads <= 1 or n <= FG_BLOCK:
        _elementwise_block(k, s, g, out, 0, n, a, b, backward, stream)
        return
    chunk = _thread_chunk(n, nthreads)
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        start = t * chunk
        stop = min(start + chunk, n)
        if start < stop:
            _elementwise_block(k, s, g, out, start, stop, a, b, backward, stream)


cdef inline void _elementwise_block(int k, const floating *s, const floating *g,
                                    floating *out, Py_ssize_t start, Py_ssize_t stop,
                                    floating a, floating b, bint backward,
                                    int stream) noexcept nogil:
    if backward:
        if floating is float:
            fg_backward_f32(k, s + start, g + start, out + start, stop - start, a, b)
        else:
            fg_backward_f64(k, s + start, g + start, out + start, stop - start, a, b)
    else:
        if floating is float:
            fg_forward_f32(k, s + start, out + start, stop - start, a, b, stream)
        else:
            fg_forward_f64(k, s + start, out + start, stop - start, a, b, stream)


cdef void _rows(int k, const floating *s, const floating *g, floating *out, Py_ssize_t rows,
                Py_ssize_t cols, bint backward, int nthreads) noexcept nogil:
    """Row kernels; threads take whole rows, so each row's sums are the same for any
    thread count."""
    cdef Py_ssize_t t, start, stop, chunk
    cdef int stream = not backward and _streams(out, rows * cols * sizeof(floating), s, s)
    if nthreads > rows:
        nthreads = <int>rows
    if nthreads <= 1:
        start, stop = 0, rows
        _rows_block(k, s, g, out, start, stop, cols, backward, stream)
        return
    chunk = (rows + nthreads - 1) // nthreads
    for t in prange(nthreads, num_threads=nthreads, schedule="static"):
        start = t * chunk
        stop = min(start + chunk, rows)
        if start < stop:
            _rows_block(k, s, g, out, start, stop, cols, backward, stream)


cdef inline void _rows_block(int k, const floating *s, const floating *g, floating *out,
                             Py_ssize_t start, Py_ssize_t stop, Py_ssize_t cols,
                             bint backward, int stream) noexcept nogil:
    cdef Py_ssize_t off = start * cols
    if backward:
        if floating is float:
            fg_rows_backward_f32(k, s + off, g + off, out + off, stop - start, cols)
        else:
            fg_rows_backward_f64(k, s + off, g + off, out + off, stop - start, cols)
    else:
        if floating is float:
            fg_rows_forward_f32(k, s + off, out + off, stop - start, cols, stream)
        else:
            fg_rows_forward_f64(k, s + off, out + off, stop - start, cols, stream)


def activation_forward(kernel, x, out, double a=0.0, double b=0.0, int nthreads=0):
    """out = f(x) for the activation `kernel` (an id from KERNELS).

    x, out: C-contiguous float32/float64 arrays of one shape and dtype; out may be x
    (in place). Elementwise kernels take any shape; row-wise ones (ROWWISE) 2-D arrays
    (rows, n), acting along the last axis. a, b: the activation's encoded parameters.
    nthreads: 0 picks serial or all threads by size (PARALLEL_MIN_*); > 0 forces it.
    """
    cdef int k = _kernel(kernel)
    cdef cnp.ndarray xa = _array(x, "x", -1, False)
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef cnp.ndarray oa = _array(out, "out", typenum, True)
    _check_shape(oa, "out", (<object>xa).shape, "the shape of x")
    cdef bint rowwise = fg_kernel_rowwise[k]
    if rowwise:
        _check_2d(xa, "x", "(rows, n) for a row-wise activation")
    xa = _apart(xa, oa, True)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(xa), rows = 0, cols = 0
    cdef int nt = _nthreads(n, fg_kernel_transcendental[k], nthreads)
    if rowwise:
        rows, cols = xa.shape[0], xa.shape[1]
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            if rowwise:
                _rows(k, <float *>cnp.PyArray_DATA(xa), <float *>NULL,
                      <float *>cnp.PyArray_DATA(oa), rows, cols, False, nt)
            else:
                _elementwise(k, <float *>cnp.PyArray_DATA(xa), <float *>NULL,
                             <float *>cnp.PyArray_DATA(oa), n, <float>a, <float>b, False, nt)
    else:
        with nogil:
            if rowwise:
                _rows(k, <double *>cnp.PyArray_DATA(xa), <double *>NULL,
                      <double *>cnp.PyArray_DATA(oa), rows, cols, False, nt)
            else:
                _elementwise(k, <double *>cnp.PyArray_DATA(xa), <double *>NULL,
                             <double *>cnp.PyArray_DATA(oa), n, a, b, False, nt)


def activation_backward(kernel, grad, saved, out, double a=0.0, double b=0.0,
                        int nthreads=0):
    """out = grad * f'(.) for the activation `kernel` (an id from KERNELS).

    saved: the forward input x or output y, as the activation's backward needs (None for
    identity and binary_step, whose derivative needs neither). grad, saved, out: one shape
    and dtype, C-contiguous; out may be grad or saved. Shapes and nthreads as in
    activation_forward.
    """
    cdef int k = _kernel(kernel)
    cdef cnp.ndarray ga = _array(grad, "grad", -1, False)
    cdef int typenum = cnp.PyArray_TYPE(ga)
    cdef cnp.ndarray oa = _array(out, "out", typenum, True)
    _check_shape(oa, "out", (<object>ga).shape, "the shape of grad")
    cdef cnp.ndarray sa
    if saved is None:
        if fg_kernel_needs_saved[k]:
            raise ValueError(f"{fg_kernel_names[k].decode()} backward needs saved "
                             "(the forward input or output), got None")
        sa = ga  # the formula ignores it
    else:
        sa = _array(saved, "saved", typenum, False)
        _check_shape(sa, "saved", (<object>ga).shape, "the shape of grad")
    cdef bint rowwise = fg_kernel_rowwise[k]
    if rowwise:
        _check_2d(ga, "grad", "(rows, n) for a row-wise activation")
    # out may be grad or saved: row kernels finish a row's sum before writing that row.
    ga = _apart(ga, oa, True)
    sa = _apart(sa, oa, True)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ga), rows = 0, cols = 0
    cdef int nt = _nthreads(n, fg_kernel_transcendental_backward[k], nthreads)
    if rowwise:
        rows, cols = ga.shape[0], ga.shape[1]
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            if rowwise:
                _rows(k, <float *>cnp.PyArray_DATA(sa), <float *>cnp.PyArray_DATA(ga),
                      <float *>cnp.PyArray_DATA(oa), rows, cols, True, nt)
            else:
                _elementwise(k, <float *>cnp.PyArray_DATA(sa), <float *>cnp.PyArray_DATA(ga),
                             <float *>cnp.PyArray_DATA(oa), n, <float>a, <float>b, True, nt)
    else:
        with nogil:
            if rowwise:
                _rows(k, <double *>cnp.PyArray_DATA(sa), <double *>cnp.PyArray_DATA(ga),
                      <double *>cnp.PyArray_DATA(oa), rows, cols, True, nt)
            else:
                _elementwise(k, <double *>cnp.PyArray_DATA(sa), <double *>cnp.PyArray_DATA(ga),
                             <double *>cnp.PyArray_DATA(oa), n, a, b, True, nt)


# ---- the dense layer ---------------------------------------------------------------------
# Row-major (C) arrays are column-major arrays of the transposed shape, so with
# BLAS's column-major gemm (C = op(A) op(B), A m x k, B k x n, C m x n):
#   y = x W       is  y^T = W^T x^T        gemm("N", "N", m=D_out, n=N, k=D_in, W, x)
#   grad_W = x^T g  is  grad_W^T = g^T x   gemm("N", "T", m=D_out, n=D_in, k=N, g, x)
#   grad_x = g W^T  is  grad_x^T = W g^T   gemm("T", "N", m=D_in, n=N, k=D_out, W, g)
# The transposes are flags: no transposed copies.

# OpenBLAS's AVX-512 kernels (SkylakeX: the ones scipy's wheels run on AVX-512 CPUs, Zen 4
# included) multiply without packing copies while M N K <= 100^3 (gemm_small_kernel_permit;
# not for op(A) = A^T with op(B) = B, which it also limits). Just past that size, two
# products of half of C's columns each take that path: one step of scikit-learn's digits
# net (batch 200, 64 -> 100) 30.9 -> 27.9 us for its forward product and 35.9 -> 27.6 for
# its dW, float64 57.9 -> 50.0 and 59.4 -> 50.8 (2026-11-29, one thread, through ctypes).
# Each element of C still comes from one call; without such kernels the split costs one
# more call.
cdef double _BLAS_SMALL_MNK = 1e6


cdef inline void _gemm_call(char ta, char tb, int m, int n, int k, floating *A, int lda,
                            floating *B, int ldb, floating *C, int ldc) noexcept nogil:
    cdef floating one = 1, zero = 0
    if floating is float:
        sgemm(&ta, &tb, &m, &n, &k, &one, A, &lda, B, &ldb, &zero, C, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &one, A, &lda, B, &ldb, &zero, C, &ldc)


cdef void _gemm(char ta, char tb, int m, int n, int k, floating *A, int lda,
                floating *B, int ldb, floating *C, int ldc) noexcept nogil:
    """C (m x n, column-major) = op(A) op(B); C = 0 when k == 0 (BLAS leaves it alone)."""
    cdef int half = (n + 1) // 2
    if m == 0 or n == 0:
        return
    if k == 0:
        memset(C, 0, <size_t>m * <size_t>n * sizeof(floating))
        return
    if (<double>m * n * k > _BLAS_SMALL_MNK and <double>m * half * k <= _BLAS_SMALL_MNK
            and not (ta == c'T' and tb == c'N')):
        # columns [0, half) then [half, n) of C; op(B)'s columns are B's (tb 'N') or its
        # rows (tb 'T')
        _gemm_call(ta, tb, m, half, k, A, lda, B, ldb, C, ldc)
        _gemm_call(ta, tb, m, n - half, k, A, lda,
                   B + (<Py_ssize_t>half * ldb if tb == c'N' else <Py_ssize_t>half), ldb,
                   C + <Py_ssize_t>half * ldc, ldc)
        return
    _gemm_call(ta, tb, m, n, k, A, lda, B, ldb, C, ldc)


cdef void _linear_forward(int k, const floating *x, const floating *W, const floating *bias,
                          floating *z, floating *out, int N, int d_in, int d_out,
                          floating a, floating b) noexcept nogil:
    _gemm(c'N', c'N', d_out, N, d_in, <floating *>W, max(d_out, 1), <floating *>x,
          max(d_in, 1), z, max(d_out, 1))
    # The fused pass runs serially: its cost is O(N D_out) beside the gemm's O(N D_in
    # D_out), and OpenMP threads spinning beside BLAS's pool stall both (DESIGN.md 5).
    if floating is float:
        fg_bias_forward_f32(k, z, bias, out, N, d_out, a, b)
    else:
        fg_bias_forward_f64(k, z, bias, out, N, d_out, a, b)


def linear_forward(kernel, x, W, bias, out, pre=None, double a=0.0, double b=0.0):
    """out = f(x @ W + bias), the bias and activation fused into one pass over the gemm's
    output; pre (if given) receives x @ W + bias.

    x: (N, D_in); W: (D_in, D_out); bias: (D_out,) or None; out, pre: (N, D_out). All of
    one dtype (float32/float64), C-contiguous; inputs that overlap an output are copied.
    """
    cdef int k = _kernel(kernel)
    cdef cnp.ndarray xa = _array(x, "x", -1, False)
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef cnp.ndarray Wa = _array(W, "W", typenum, False)
    _check_2d(xa, "x", "(N, D_in)")
    _check_2d(Wa, "W", "(D_in, D_out)")
    if xa.shape[1] != Wa.shape[0]:
        raise ValueError(f"x has shape {(<object>xa).shape} and W has shape {(<object>Wa).shape}: x's last axis "
                         f"must equal W's first (D_in)")
    cdef Py_ssize_t n_rows = xa.shape[0], d_in = xa.shape[1], d_out = Wa.shape[1]
    cdef tuple out_shape = (n_rows, d_out)
    cdef cnp.ndarray oa = _array(out, "out", typenum, True)
    _check_shape(oa, "out", out_shape, "(N, D_out)")
    cdef cnp.ndarray pa = None, ba
    if pre is not None:
        pa = _array(pre, "pre", typenum, True)
        _check_shape(pa, "pre", out_shape, "(N, D_out)")
        if cnp.PyArray_DATA(pa) == cnp.PyArray_DATA(oa):
            pa = None
        elif _overlap(pa, oa):
            raise ValueError("pre and out overlap: they must be separate arrays (or the same)")
    if bias is None:
        ba = np.zeros(d_out, xa.dtype)
    else:
        ba = _array(bias, "bias", typenum, False)
        _check_shape(ba, "bias", (d_out,), "(D_out,)")
    cdef int N = _blas_int(n_rows, "N"), di = _blas_int(d_in, "D_in")
    cdef int do = _blas_int(d_out, "D_out")
    for target in (oa, pa):
        if target is not None:
            xa = _apart(xa, target, False)
            Wa = _apart(Wa, target, False)
            ba = _apart(ba, target, False)
    cdef cnp.ndarray za = oa if pa is None else pa
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            _linear_forward(k, <float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(Wa),
                            <float *>cnp.PyArray_DATA(ba), <float *>cnp.PyArray_DATA(za),
                            <float *>cnp.PyArray_DATA(oa), N, di, do, <float>a, <float>b)
    else:
        with nogil:
            _linear_forward(k, <double *>cnp.PyArray_DATA(xa), <double *>cnp.PyArray_DATA(Wa),
                            <double *>cnp.PyArray_DATA(ba), <double *>cnp.PyArray_DATA(za),
                            <double *>cnp.PyArray_DATA(oa), N, di, do, a, b)


cdef void _linear_backward(int k, const floating *grad_y, const floating *x,
                           const floating *W, const floating *saved, floating *g,
                           floating *grad_x, floating *grad_W, floating *grad_b, int N,
                           int d_in, int d_out, bint need_grad_x, floating a,
                           floating b) noexcept nogil:
    # One pass: g = f'(saved) grad_y and grad_b = column sums of g (serial, rows in order).
    if floating is float:
        fg_backward_colsum_f32(k, saved, grad_y, g, grad_b, N, d_out, a, b)
    else:
        fg_backward_colsum_f64(k, saved, grad_y, g, grad_b, N, d_out, a, b)
    _gemm(c'N', c'T', d_out, d_in, N, g, max(d_out, 1), <floating *>x, max(d_in, 1), grad_W,
          max(d_out, 1))
    if need_grad_x:
        _gemm(c'T', c'N', d_in, N, d_out, <floating *>W, max(d_out, 1), g, max(d_out, 1), grad_x,
              max(d_in, 1))


def linear_backward(kernel, grad_y, x, W, saved=None, double a=0.0, double b=0.0,
                    bint need_grad_x=True):
    """Backprop through y = f(x @ W + b): returns (grad_x or None, grad_W, grad_b).

    g = grad_y * f'(.) from saved (the pre-activation or y, as the activation needs; None
    for identity/binary_step), in one pass that also sums grad_b; then grad_W = x^T g and
    grad_x = g W^T by gemm. grad_y, saved: (N, D_out); x: (N, D_in); W: (D_in, D_out).
    """
    cdef int k = _kernel(kernel)
    cdef cnp.ndarray ga = _array(grad_y, "grad_y", -1, False)
    cdef int typenum = cnp.PyArray_TYPE(ga)
    cdef cnp.ndarray xa = _array(x, "x", typenum, False)
    cdef cnp.ndarray Wa = _array(W, "W", typenum, False)
    _check_2d(xa, "x", "(N, D_in)")
    _check_2d(Wa, "W", "(D_in, D_out)")
    if xa.shape[1] != Wa.shape[0]:
        raise ValueError(f"x has shape {(<object>xa).shape} and W has shape {(<object>Wa).shape}: x's last axis "
                         f"must equal W's first (D_in)")
    cdef Py_ssize_t n_rows = xa.shape[0], d_in = xa.shape[1], d_out = Wa.shape[1]
    _check_shape(ga, "grad_y", (n_rows, d_out), "(N, D_out)")
    cdef cnp.ndarray sa
    if saved is None:
        if fg_kernel_needs_saved[k]:
            raise ValueError(f"{fg_kernel_names[k].decode()} backward needs saved "
                             "(the pre-activation or y), got None")
        sa = ga
    else:
        sa = _array(saved, "saved", typenum, False)
        _check_shape(sa, "saved", (n_rows, d_out), "(N, D_out)")
    cdef int N = _blas_int(n_rows, "N"), di = _blas_int(d_in, "D_in")
    cdef int do = _blas_int(d_out, "D_out")
    cdef cnp.ndarray g = np.empty((n_rows, d_out), ga.dtype)
    cdef cnp.ndarray grad_W = np.empty((d_in, d_out), ga.dtype)
    cdef cnp.ndarray grad_b = np.empty(d_out, ga.dtype)
    cdef cnp.ndarray grad_x = np.empty((n_rows if need_grad_x else 0, d_in if need_grad_x else 0), ga.dtype)
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            _linear_backward(k, <float *>cnp.PyArray_DATA(ga), <float *>cnp.PyArray_DATA(xa),
                             <float *>cnp.PyArray_DATA(Wa), <float *>cnp.PyArray_DATA(sa),
                             <float *>cnp.PyArray_DATA(g), <float *>cnp.PyArray_DATA(grad_x),
                             <float *>cnp.PyArray_DATA(grad_W),
                             <float *>cnp.PyArray_DATA(grad_b), N, di, do, need_grad_x,
                             <float>a, <float>b)
    else:
        with nogil:
            _linear_backward(k, <double *>cnp.PyArray_DATA(ga), <double *>cnp.PyArray_DATA(xa),
                             <double *>cnp.PyArray_DATA(Wa), <double *>cnp.PyArray_DATA(sa),
                             <double *>cnp.PyArray_DATA(g), <double *>cnp.PyArray_DATA(grad_x),
                             <double *>cnp.PyArray_DATA(grad_W),
                             <double *>cnp.PyArray_DATA(grad_b), N, di, do, need_grad_x,
                             a, b)
    return (grad_x if need_grad_x else None), grad_W, grad_b


# ---- losses ------------------------------------------------------------------------------
# pred and target (N, K); the math in double whatever the dtype, as the numpy reference
# does; serial (a batch's output is far below the thread thresholds).

cdef tuple _loss_inputs(object pred, object target):
    """(pred, target) validated: 2-D, non-empty, one float dtype and shape."""
    cdef cnp.ndarray pa = _array(pred, "pred", -1, False)
    _check_2d(pa, "pred", "(N, K)")
    if cnp.PyArray_SIZE(pa) == 0:
        raise ValueError(f"pred must be non-empty, got shape {(<object>pa).shape}")
    cdef cnp.ndarray ta = _array(target, "target", cnp.PyArray_TYPE(pa), False)
    _check_shape(ta, "target", (<object>pa).shape, "the shape of pred")
    return pa, ta


def loss_forward(loss, pred, target) -> float:
    """The mean loss `loss` (an id from LOSSES) of raw outputs pred against target.

    pred, target: C-contiguous (N, K) arrays of one float dtype, non-empty (logits for
    the cross-entropies; cross_entropy's target rows one-hot or summing to 1). mse:
    0.5 mean((p - t)^2); binary_cross_entropy: mean(max(z, 0) - z t + log1p(exp(-|z|)));
    cross_entropy: mean over rows of sum_k t_k (logsumexp(z) - z_k). Computed and summed
    in double; returns a Python float.
    """
    cdef int k = _loss(loss)
    cdef cnp.ndarray pa, ta
    pa, ta = _loss_inputs(pred, target)
    cdef Py_ssize_t rows = pa.shape[0], cols = pa.shape[1]
    cdef double value
    if cnp.PyArray_TYPE(pa) == cnp.NPY_FLOAT32:
        with nogil:
            value = fg_loss_forward_f32(k, <float *>cnp.PyArray_DATA(pa),
                                        <float *>cnp.PyArray_DATA(ta), rows, cols)
    else:
        with nogil:
            value = fg_loss_forward_f64(k, <double *>cnp.PyArray_DATA(pa),
                                        <double *>cnp.PyArray_DATA(ta), rows, cols)
    return value


def loss_backward(loss, pred, target, out) -> None:
    """out = dL/dpred of loss_forward(loss, pred, target), the 1/count of the mean
    included: (p - t) / (N K) (mse), (sigmoid(z) - t) / (N K) (binary_cross_entropy),
    (softmax(z) - t) / N (cross_entropy). out: (N, K), pred's dtype, C-contiguous; it may
    be pred or target itself (inputs that partly overlap it are copied first).
    """
    cdef int k = _loss(loss)
    cdef cnp.ndarray pa, ta
    pa, ta = _loss_inputs(pred, target)
    cdef cnp.ndarray oa = _array(out, "out", cnp.PyArray_TYPE(pa), True)
    _check_shape(oa, "out", (<object>pa).shape, "the shape of pred")
    pa = _apart(pa, oa, True)
    ta = _apart(ta, oa, True)
    cdef Py_ssize_t rows = pa.shape[0], cols = pa.shape[1]
    if cnp.PyArray_TYPE(pa) == cnp.NPY_FLOAT32:
        with nogil:
            fg_loss_backward_f32(k, <float *>cnp.PyArray_DATA(pa),
                                 <float *>cnp.PyArray_DATA(ta),
                                 <float *>cnp.PyArray_DATA(oa), rows, cols)
    else:
        with nogil:
            fg_loss_backward_f64(k, <double *>cnp.PyArray_DATA(pa),
                                 <double *>cnp.PyArray_DATA(ta),
                                 <double *>cnp.PyArray_DATA(oa), rows, cols)


# ---- optimizer updates -----------------------------------------------------------------
# In place on 1-D arrays of one dtype (the trainer's flat parameter buffer and the
# optimizer's state), PyTorch's formulas (fastgrad.optim), in double, serial.

cdef tuple _update_arrays(object param, object grad, tuple state):
    """(param, grad, *state) validated: 1-D, one dtype and size, C-contiguous; param and
    the state writable and pairwise disjoint; grad copied if it partly overlaps one."""
    cdef cnp.ndarray pa = _array(param, "param", -1, True)
    if cnp.PyArray_NDIM(pa) != 1:
        raise ValueError(f"param must be 1-D (a flat parameter vector), got shape "
                         f"{(<object>pa).shape}")
    cdef int typenum = cnp.PyArray_TYPE(pa)
    cdef tuple shape = (<object>pa).shape
    cdef cnp.ndarray ga = _array(grad, "grad", typenum, False)
    _check_shape(ga, "grad", shape, "the shape of param")
    cdef list written = [("param", pa)]
    cdef cnp.ndarray arr
    for name, obj in state:
        arr = _array(obj, name, typenum, True)
        _check_shape(arr, name, shape, "the shape of param")
        for other_name, other in written:
            if _overlap(arr, other):
                raise ValueError(f"{name} and {other_name} overlap: an optimizer's "
                                 f"parameter and state arrays must be separate")
        written.append((name, arr))
    for _, arr in written:
        ga = _apart(ga, arr, True)
    return (pa, ga) + tuple(arr for _, arr in written[1:])


def sgd_update(param, grad, velocity, double lr, double momentum, double weight_decay,
               bint nesterov) -> None:
    """SGD step in place: g = grad + weight_decay p; with momentum: v = momentum v + g,
    g = g + momentum v (nesterov) or v; p -= lr g. velocity is untouched when momentum
    is 0. param, grad, velocity: 1-D, one dtype and size.
    """
    cdef cnp.ndarray pa, ga, va
    pa, ga, va = _update_arrays(param, grad, (("velocity", velocity),))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(pa)
    if cnp.PyArray_TYPE(pa) == cnp.NPY_FLOAT32:
        with nogil:
            fg_sgd_update_f32(<float *>cnp.PyArray_DATA(pa), <float *>cnp.PyArray_DATA(ga),
                              <float *>cnp.PyArray_DATA(va), n, lr, momentum, weight_decay,
                              nesterov)
    else:
        with nogil:
            fg_sgd_update_f64(<double *>cnp.PyArray_DATA(pa), <double *>cnp.PyArray_DATA(ga),
                              <double *>cnp.PyArray_DATA(va), n, lr, momentum, weight_decay,
                              nesterov)


def adam_update(param, grad, m, v, double lr, double beta1, double beta2, double eps,
                double weight_decay, bint decoupled, long step) -> None:
    """Adam (decoupled=False: g += weight_decay p) or AdamW (decoupled=True: p *=
    1 - lr weight_decay) step `step` (from 1) in place: m = beta1 m + (1 - beta1) g;
    v = beta2 v + (1 - beta2) g^2; p -= lr (m / (1 - beta1^step)) /
    (sqrt(v / (1 - beta2^step)) + eps), evaluated as PyTorch does with the bias
    corrections hoisted (one sqrt and one division per element). param, grad, m, v: 1-D,
    one dtype and size.
    """
    if step < 1:
        raise ValueError(f"step must be >= 1 (the count of updates, bias correction "
                         f"1 - beta^step), got {step}")
    cdef cnp.ndarray pa, ga, ma, va
    pa, ga, ma, va = _update_arrays(param, grad, (("m", m), ("v", v)))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(pa)
    # Python's float ** int, as the reference computes them (the same libm pow); the bias
    # corrections hoisted out of the loop as PyTorch's Adam does.
    cdef double bc1 = 1.0 - float(beta1) ** step, bc2 = 1.0 - float(beta2) ** step
    cdef double step_size = lr / bc1, inv_sqrt_bc2 = 1.0 / sqrt(bc2)
    if cnp.PyArray_TYPE(pa) == cnp.NPY_FLOAT32:
        with nogil:
            fg_adam_update_f32(<float *>cnp.PyArray_DATA(pa), <float *>cnp.PyArray_DATA(ga),
                               <float *>cnp.PyArray_DATA(ma), <float *>cnp.PyArray_DATA(va),
                               n, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
                               inv_sqrt_bc2)
    else:
        with nogil:
            fg_adam_update_f64(<double *>cnp.PyArray_DATA(pa),
                               <double *>cnp.PyArray_DATA(ga),
                               <double *>cnp.PyArray_DATA(ma),
                               <double *>cnp.PyArray_DATA(va),
                               n, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
                               inv_sqrt_bc2)


def rmsprop_update(param, grad, square_avg, momentum_buf, double lr, double alpha,
                   double eps, double weight_decay, double momentum) -> None:
    """RMSprop step in place (not centered): g = grad + weight_decay p; s = alpha s +
    (1 - alpha) g^2; u = g / (sqrt(s) + eps); with momentum: b = momentum b + u, u = b;
    p -= lr u. momentum_buf is untouched when momentum is 0. All 1-D, one dtype and size.
    """
    cdef cnp.ndarray pa, ga, sa, ba
    pa, ga, sa, ba = _update_arrays(param, grad, (("square_avg", square_avg),
                                                  ("momentum_buf", momentum_buf)))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(pa)
    if cnp.PyArray_TYPE(pa) == cnp.NPY_FLOAT32:
        with nogil:
            fg_rmsprop_update_f32(<float *>cnp.PyArray_DATA(pa),
                                  <float *>cnp.PyArray_DATA(ga),
                                  <float *>cnp.PyArray_DATA(sa),
                                  <float *>cnp.PyArray_DATA(ba),
                                  n, lr, alpha, eps, weight_decay, momentum)
    else:
        with nogil:
            fg_rmsprop_update_f64(<double *>cnp.PyArray_DATA(pa),
                                  <double *>cnp.PyArray_DATA(ga),
                                  <double *>cnp.PyArray_DATA(sa),
                                  <double *>cnp.PyArray_DATA(ba),
                                  n, lr, alpha, eps, weight_decay, momentum)


include "_train.pxi"
