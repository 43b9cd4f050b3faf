# The fused epoch runner of the cython backend: whole epochs of MLP training (forward, loss,
# backward, gradient checks, clipping, the optimizer update, for every batch) in one nogil
# call. Included by _kernels.pyx (its declarations, validation helpers and _gemm).
#
# Every step is the very kernel the layer-by-layer runner (fastgrad.train.train_epoch_layers
# over this backend) calls, in its order: the gemms through _gemm, fg_bias_forward (bias +
# activation), fg_loss_forward / fg_loss_backward, fg_backward_colsum (activation backward +
# bias gradient), and the optimizer update on the flat parameter buffer; so both runners
# train alike to the last bit but for the squared gradient norms (summed here in double,
# there by BLAS's dot) and the clipping norm that follows from them.
#
# Layout (the trainer's, fastgrad.nn.Sequential): params and grads are flat; layer l of
# sizes d_l -> d_{l+1} holds W_l (d_l, d_{l+1}) row-major, then b_l (d_{l+1},), layers one
# after another. The workspace (one per model, made by the caller) holds per layer the
# pre-activations z, outputs h, dL/dh and dL/dz of one batch (B x d_{l+1} each), then a
# batch of gathered inputs (B x d_0) and targets (B x d_L), a scratch for a transposed W,
# and B x (d_L + 2) doubles (softmax cross-entropy's exponentials, sums and logs).

from libc.math cimport isfinite, pow
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uintptr_t

cdef extern from "_train_impl.h" nogil:
    int FG_TRAIN_WT_MAX_COLS
    int FG_TRAIN_WT_MAX
    double fg_train_sumsq_f32(const float *a, Py_ssize_t n)
    double fg_train_sumsq_f64(const double *a, Py_ssize_t n)
    double fg_train_grad_sumsq_f32(const float *a, Py_ssize_t n)
    double fg_train_grad_sumsq_f64(const double *a, Py_ssize_t n)
    int fg_train_all_finite_f32(const float *a, Py_ssize_t n)
    int fg_train_all_finite_f64(const double *a, Py_ssize_t n)
    void fg_train_clip_f32(float *g, Py_ssize_t n, float c)
    void fg_train_clip_f64(double *g, Py_ssize_t n, double c)
    void fg_train_scale_f32(float *g, Py_ssize_t n, float s)
    void fg_train_scale_f64(double *g, Py_ssize_t n, double s)
    void fg_train_add_scaled_f32(float *g, const float *p, Py_ssize_t n, float s)
    void fg_train_add_scaled_f64(double *g, const double *p, Py_ssize_t n, double s)
    void fg_train_sgd_f32(float *p, const float *grad, float *v, Py_ssize_t n, float lr,
                          float momentum, float wd, int nesterov)
    void fg_train_sgd_f64(double *p, const double *grad, double *v, Py_ssize_t n, double lr,
                          double momentum, double wd, int nesterov)
    void fg_train_adam_f32(float *p, const float *grad, float *m, float *v, Py_ssize_t n,
                           float lr, float beta1, float beta2, float eps, float wd,
                           int decoupled, float step_size, float inv_sqrt_bc2)
    void fg_train_adam_f64(double *p, const double *grad, double *m, double *v,
                           Py_ssize_t n, double lr, double beta1, double beta2, double eps,
                           double wd, int decoupled, double step_size, double inv_sqrt_bc2)
    void fg_train_transpose_f32(const float *W, float *Wt, Py_ssize_t rows, Py_ssize_t cols)
    void fg_train_transpose_f64(const double *W, double *Wt, Py_ssize_t rows,
                                Py_ssize_t cols)
    double fg_train_ce_f32(float *z, const float *bias, const float *t, float *g,
                           float *db, double *e, Py_ssize_t r, Py_ssize_t k)
    double fg_train_ce_f64(double *z, const double *bias, const double *t, double *g,
                           double *db, double *e, Py_ssize_t r, Py_ssize_t k)

# Indices into the hyper-parameter vector (float64) train_epochs takes.
TRAIN_HYPER = ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "alpha",
               "clip_norm", "clip_value")
TRAIN_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "sgd_dtype", "adam_dtype",
                    "adamw_dtype")
"""Optimizer codes of train_epochs: the update kernels of this module (PyTorch's formulas, in
double whatever the dtype, as the layer-by-layer runner updates), and "sgd_dtype",
"adam_dtype", "adamw_dtype": the same in the arrays' own arithmetic (PyTorch's float32
update, the numba runner's; ~4x faster than through double)."""
TRAIN_SAVED = ("none", "x", "y")
"""What each layer's backward reads (the activation's `needs`): codes of train_epochs."""


cdef int _IDENTITY = KERNELS["identity"]


def train_workspace_size(sizes, Py_ssize_t batch_size, dtype):
    """Elements (of `dtype`, float32 or float64) of the workspace train_epochs needs for
    layer sizes (d_0, ..., d_L) and batches of batch_size rows: batch_size * (4 * (d_1 +
    ... + d_L) + d_0 + d_L) + FG_TRAIN_WT_MAX, and batch_size * (d_L + 4) doubles (+ 1
    element to align them)."""
    sizes = [int(s) for s in sizes]
    per_double = 8 // np.dtype(dtype).itemsize
    B = int(batch_size)
    K = sizes[len(sizes) - 1]
    return (B * (4 * sum(sizes[1:]) + sizes[0] + K) + FG_TRAIN_WT_MAX
            + per_double * B * (K + 4) + 1)


cdef inline double _sumsq(const floating *a, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fg_train_sumsq_f32(a, n)
    else:
        return fg_train_sumsq_f64(a, n)


cdef inline double _grad_sumsq(const floating *a, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fg_train_grad_sumsq_f32(a, n)
    else:
        return fg_train_grad_sumsq_f64(a, n)


cdef inline bint _all_finite(const floating *a, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fg_train_all_finite_f32(a, n)
    else:
        return fg_train_all_finite_f64(a, n)


cdef Py_ssize_t _train_epochs(floating *P, floating *G, floating *SA, floating *SB,
                              Py_ssize_t n_params, const floating *X, const floating *T,
                              Py_ssize_t n, const int64_t *orders, Py_ssize_t n_epochs,
                              bint gather, const int64_t *sizes, int L, const int *kern,
                              const double *act, const int *saved, int loss, int opt,
                              const double *hp, bint nesterov, bint sk_decay, int B,
                              floating *ws, double *batch_loss, double *grad_sq,
                              int64_t *step) noexcept nogil:
    """n_epochs epochs (see train_epochs); returns the batches completed, all of them or
    the index (counted over the call) of the first non-finite one."""
    cdef int d0 = <int>sizes[0], K = <int>sizes[L]
    cdef Py_ssize_t S = 0, l, i, e, k, start, row, off, nw, kt = 0
    for l in range(L):
        S += sizes[l + 1]
    cdef floating *Z = ws
    cdef floating *H = ws + B * S
    cdef floating *GY = ws + 2 * B * S
    cdef floating *GZ = ws + 3 * B * S
    cdef floating *XB = ws + 4 * B * S
    cdef floating *TB = XB + <Py_ssize_t>B * d0
    cdef floating *WT = TB + <Py_ssize_t>B * K
    # the doubles: past the scratch, at the next multiple of 8 bytes
    cdef double *E = <double *>((<uintptr_t>(WT + FG_TRAIN_WT_MAX) + 7) & ~(<uintptr_t>7))
    cdef Py_ssize_t nb = (n + B - 1) // B
    cdef double lr = hp[0], mom = hp[1], b1 = hp[2], b2 = hp[3], eps = hp[4], wd = hp[5]
    cdef double alpha = hp[6], clip_norm = hp[7], clip_value = hp[8]
    cdef double wd_step = 0.0 if sk_decay else wd
    cdef int r, m, din
    cdef const floating *xin
    cdef const floating *tin
    cdef const floating *a
    cdef floating *z
    cdef floating *h
    cdef floating *gy
    cdef floating *gz
    cdef floating *s
    cdef Py_ssize_t cum, cum_prev
    cdef double value, sq, norm, pen, t, step_size, inv_sqrt_bc2
    cdef bint finite
    # logits (identity) into softmax cross-entropy: the output layer's bias, loss, gradient
    # and bias gradient in one function (fg_train_ce)
    cdef bint fused_out = fg_loss_rowwise[loss] and kern[L - 1] == _IDENTITY
    cdef floating cv, scale, fa, fb
    for e in range(n_epochs):
        for k in range(nb):
            start = k * B
            r = <int>min(<Py_ssize_t>B, n - start)
            # ---- the batch: rows in the given order gathered, or a view of X and T
            if gather:
                for i in range(r):
                    row = orders[e * n + start + i]
                    memcpy(XB + i * d0, X + row * d0, d0 * sizeof(floating))
                    memcpy(TB + i * K, T + row * K, K * sizeof(floating))
                xin = XB
                tin = TB
            else:
                xin = X + start * d0
                tin = T + start * K
            # ---- forward: z = a W (gemm), then h = f(z + b) in one pass
            a = xin
            din = d0
            off = 0
            cum = 0
            for l in range(L):
                m = <int>sizes[l + 1]
                nw = <Py_ssize_t>din * m
                z = Z + B * cum
                h = H + B * cum
                _gemm(c'N', c'N', m, r, din, P + off, m, <floating *>a, max(din, 1), z, m)
                fa = <floating>act[2 * l]
                fb = <floating>act[2 * l + 1]
                if l == L - 1 and fused_out:
                    pass  # fg_train_ce adds the bias
                elif floating is float:
                    fg_bias_forward_f32(kern[l], z, P + off + nw, h, r, m, fa, fb)
                else:
                    fg_bias_forward_f64(kern[l], z, P + off + nw, h, r, m, fa, fb)
                a = h
                din = m
                off += nw + m
                cum += m
            # ---- the loss (mean over the batch) and its gradient w.r.t. the last output
            cum_prev = cum - K
            if fused_out:  # gz and db of the output layer too: its backward skips them
                if floating is float:
                    value = fg_train_ce_f32(Z + B * cum_prev, P + off - K, tin,
                                            GZ + B * cum_prev, G + off - K, E, r, K) / r
                else:
                    value = fg_train_ce_f64(Z + B * cum_prev, P + off - K, tin,
                                            GZ + B * cum_prev, G + off - K, E, r, K) / r
            elif floating is float:
                value = fg_loss_forward_f32(loss, H + B * cum_prev, tin, r, K)
                fg_loss_backward_f32(loss, H + B * cum_prev, tin, GY + B * cum_prev, r, K)
            else:
                value = fg_loss_forward_f64(loss, H + B * cum_prev, tin, r, K)
                fg_loss_backward_f64(loss, H + B * cum_prev, tin, GY + B * cum_prev, r, K)
            # ---- backward, last layer first: gz = f'(saved) gy and db in one pass, then
            # dW = a^T gz and (below the first layer) the previous layer's gy = gz W^T
            finite = isfinite(value)
            for l in range(L - 1, -1, -1):
                m = <int>sizes[l + 1]
                din = <int>sizes[l]
                nw = <Py_ssize_t>din * m
                off -= nw + m
                cum -= m
                z = Z + B * cum
                h = H + B * cum
                gy = GY + B * cum
                gz = GZ + B * cum
                s = z if saved[l] == 1 else (h if saved[l] == 2 else gy)
                fa = <floating>act[2 * l]
                fb = <floating>act[2 * l + 1]
                if l == L - 1 and fused_out:
                    pass  # fg_train_ce wrote gz and db
                elif floating is float:
                    fg_backward_colsum_f32(kern[l], s, gy, gz, G + off + nw, r, m, fa, fb)
                else:
                    fg_backward_colsum_f64(kern[l], s, gy, gz, G + off + nw, r, m, fa, fb)
                a = xin if l == 0 else H + B * (cum - din)
                _gemm(c'N', c'T', m, din, r, gz, m, <floating *>a, max(din, 1), G + off, m)
                if l > 0 and m < FG_TRAIN_WT_MAX_COLS and nw <= FG_TRAIN_WT_MAX:
                    # gy_prev = gz W^T as gz @ (a transposed copy of W): see _train_impl.h
                    if floating is float:
                        fg_train_transpose_f32(P + off, WT, din, m)
                    else:
                        fg_train_transpose_f64(P + off, WT, din, m)
                    _gemm(c'N', c'N', din, r, m, WT, din, gz, m, GY + B * (cum - din), din)
                elif l > 0:
                    _gemm(c'T', c'N', din, r, m, P + off, m, gz, m, GY + B * (cum - din),
                          max(din, 1))
                # ---- this layer's squared gradient norm; a non-finite one (or an overflow
                # of finite squares) decided by the elements
                sq = _grad_sumsq(G + off, nw + m)
                if not isfinite(sq) and not _all_finite(G + off, nw + m):
                    finite = False
                grad_sq[kt * L + l] = sq
            batch_loss[kt] = value
            if not finite:  # stop before the update; the gradients stay for the diagnosis
                return kt
            # ---- clipping: each element to [-clip_value, clip_value], then the global norm
            if clip_value > 0:
                cv = <floating>clip_value
                if floating is float:
                    fg_train_clip_f32(G, n_params, cv)
                else:
                    fg_train_clip_f64(G, n_params, cv)
            if clip_norm > 0:
                norm = sqrt(_grad_sumsq(G, n_params))
                if norm > clip_norm:
                    scale = <floating>(clip_norm / norm)
                    if floating is float:
                        fg_train_scale_f32(G, n_params, scale)
                    else:
                        fg_train_scale_f64(G, n_params, scale)
            # ---- scikit-learn's L2 (decay="sklearn"): weights only, / rows, its penalty
            # (from the weights before the update) in the batch loss
            if sk_decay and wd != 0:
                scale = <floating>(wd / r)
                pen = 0.0
                off = 0
                for l in range(L):
                    nw = sizes[l] * sizes[l + 1]
                    pen += _sumsq(P + off, nw)
                    if floating is float:
                        fg_train_add_scaled_f32(G + off, P + off, nw, scale)
                    else:
                        fg_train_add_scaled_f64(G + off, P + off, nw, scale)
                    off += nw + sizes[l + 1]
                pen = 0.5 * wd * pen / r
                if pen != 0:
                    batch_loss[kt] = value + pen
                    if not isfinite(batch_loss[kt]):
                        return kt
            # ---- the update, on the whole flat buffer at once
            step[0] += 1
            if opt == 4:
                if floating is float:
                    fg_train_sgd_f32(P, G, SA, n_params, <float>lr, <float>mom,
                                     <float>wd_step, nesterov)
                else:
                    fg_train_sgd_f64(P, G, SA, n_params, lr, mom, wd_step, nesterov)
            elif opt == 0:
                if floating is float:
                    fg_sgd_update_f32(P, G, SA, n_params, lr, mom, wd_step, nesterov)
                else:
                    fg_sgd_update_f64(P, G, SA, n_params, lr, mom, wd_step, nesterov)
            elif opt == 3:
                if floating is float:
                    fg_rmsprop_update_f32(P, G, SB, SA, n_params, lr, alpha, eps, wd_step,
                                          mom)
                else:
                    fg_rmsprop_update_f64(P, G, SB, SA, n_params, lr, alpha, eps, wd_step,
                                          mom)
            else:
                t = <double>step[0]
                # pow as Python's float ** int (adam_update's bias corrections)
                step_size = lr / (1.0 - pow(b1, t))
                inv_sqrt_bc2 = 1.0 / sqrt(1.0 - pow(b2, t))
                if opt >= 5:  # adam_dtype, adamw_dtype: in the arrays' arithmetic
                    if floating is float:
                        fg_train_adam_f32(P, G, SA, SB, n_params, <float>lr, <float>b1,
                                          <float>b2, <float>eps, <float>wd_step, opt == 6,
                                          <float>step_size, <float>inv_sqrt_bc2)
                    else:
                        fg_train_adam_f64(P, G, SA, SB, n_params, lr, b1, b2, eps, wd_step,
                                          opt == 6, step_size, inv_sqrt_bc2)
                elif floating is float:
                    fg_adam_update_f32(P, G, SA, SB, n_params, lr, b1, b2, eps, wd_step,
                                       opt == 2, step_size, inv_sqrt_bc2)
                else:
                    fg_adam_update_f64(P, G, SA, SB, n_params, lr, b1, b2, eps, wd_step,
                                       opt == 2, step_size, inv_sqrt_bc2)
            kt += 1
    return kt


cdef cnp.ndarray _vector(object obj, str name, str dtype, Py_ssize_t size):
    """obj as a C-contiguous 1-D array of `dtype` with `size` elements (-1: any)."""
    if not cnp.PyArray_Check(obj):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(obj).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>obj
    if arr.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {arr.dtype}, expected {dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{name} must be C-contiguous and aligned")
    if cnp.PyArray_NDIM(arr) != 1 or (size >= 0 and arr.shape[0] != size):
        raise ValueError(f"{name} has shape {(<object>arr).shape}, expected "
                         f"{'(n,)' if size < 0 else (size,)}")
    return arr


cdef tuple _WRITTEN = ("params", "grads", "state_a", "state_b", "workspace", "batch_loss",
                      "grad_sq", "step")


cdef cnp.ndarray _apart_from(cnp.ndarray a, char **lo, char **hi, int count):
    """`a`, or a copy of it where it shares a byte with one of the ranges [lo[i], hi[i])
    (as _apart, against several written arrays)."""
    cdef char *p = <char *>cnp.PyArray_DATA(a)
    cdef char *q = p + cnp.PyArray_NBYTES(a)
    cdef int i
    for i in range(count):
        if _meet(p, q, lo[i], hi[i]):
            return a.copy()
    return a


def train_epochs(params, grads, state_a, state_b, X, T, orders, sizes, kernels, act,
                 saved, loss, optimizer, hyper, bint nesterov, bint sklearn_decay,
                 Py_ssize_t batch_size, workspace, batch_loss, grad_sq, step):
    """E = orders.shape[0] epochs of mini-batch training of an MLP in one call without the
    GIL; returns the batches completed: E * ceil(n / batch_size), or the index (counted over
    the call) of the first batch whose loss or gradient is not finite, which made no update.

    params, grads: (P,) the flat parameters and gradient buffer (layer l: W_l (d_l,
    d_{l+1}) row-major, then b_l), float32 or float64; state_a, state_b: (P,) the
    optimizer's state (sgd: the velocity twice; adam/adamw: m, v; rmsprop: momentum_buf,
    square_avg; two arrays but for sgd). X (n, d_0) and T (n, d_L) of that dtype (T: the
    loss's targets, one-hot rows for cross_entropy). orders: (E, n) int64 row orders (each batch's rows gathered
    into the workspace), or (E, 0) for the rows in order (batches are views of X, T).
    sizes: int64 (d_0, ..., d_L); kernels, saved: int32 (L,), per layer an activation id
    (KERNELS; the last layer's output goes to the loss) and what its backward reads
    (TRAIN_SAVED); act: float64 (L, 2), the activations' encoded parameters. loss: a
    LOSSES id; optimizer: a TRAIN_OPTIMIZERS index; hyper: float64 (9,) as TRAIN_HYPER
    (clip_norm / clip_value 0: off). sklearn_decay: scikit-learn's L2 (weights only, / the
    batch's rows, penalty in the loss) instead of the update's own weight decay.
    workspace: (>= train_workspace_size(sizes, batch_size),) of the dtype. batch_loss:
    float64 (>= E * n_batches,), grad_sq: float64 (>= E * n_batches, L): every batch's mean
    loss and per-layer squared gradient norm (the stopping batch's included). step: int64
    (1,), the optimizer's update count, advanced per update (Adam's bias correction).

    Per batch, as fastgrad.train.train_epoch_layers: forward, loss, backward, the finite
    check, clipping by value then by global norm, the sklearn penalty, the update.
    """
    cdef cnp.ndarray pa = _array(params, "params", -1, True)
    cdef int typenum = cnp.PyArray_TYPE(pa)
    if cnp.PyArray_NDIM(pa) != 1:
        raise ValueError(f"params must be 1-D (the flat parameter buffer), got shape "
                         f"{(<object>pa).shape}")
    cdef Py_ssize_t n_params = pa.shape[0]
    cdef tuple flat = (n_params,)
    cdef cnp.ndarray ga = _array(grads, "grads", typenum, True)
    _check_shape(ga, "grads", flat, "the shape of params")
    cdef cnp.ndarray sa = _array(state_a, "state_a", typenum, True)
    _check_shape(sa, "state_a", flat, "the shape of params")
    cdef cnp.ndarray sb = _array(state_b, "state_b", typenum, True)
    _check_shape(sb, "state_b", flat, "the shape of params")
    cdef cnp.ndarray wsa = _array(workspace, "workspace", typenum, True)
    if cnp.PyArray_NDIM(wsa) != 1:
        raise ValueError(f"workspace must be 1-D, got shape {(<object>wsa).shape}")
    cdef cnp.ndarray sz = _vector(sizes, "sizes", "int64", -1)
    cdef Py_ssize_t L = sz.shape[0] - 1
    if L < 1:
        raise ValueError(f"sizes must hold at least 2 layer sizes (d_0, d_1), got {sizes!r}")
    dims = [int(d) for d in sizes]
    for d in dims:
        if not 1 <= d <= 2147483647:
            raise ValueError(f"sizes must be in [1, 2^31-1], got {dims}")
    want = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(L))
    if want != n_params:
        raise ValueError(f"params has {n_params} elements; sizes {dims} need {want} "
                         f"(W then b per layer)")
    if not 1 <= batch_size <= 2147483647:
        raise ValueError(f"batch_size must be in [1, 2^31-1], got {batch_size}")
    cdef cnp.ndarray xa = _array(X, "X", typenum, False)
    _check_2d(xa, "X", "(n, d_0)")
    cdef Py_ssize_t n = xa.shape[0]
    _check_shape(xa, "X", (n, dims[0]), "(n, d_0)")
    cdef cnp.ndarray ta = _array(T, "T", typenum, False)
    _check_shape(ta, "T", (n, dims[L]), "(n, d_L)")
    if not cnp.PyArray_Check(orders) or cnp.PyArray_TYPE(<cnp.ndarray>orders) != cnp.NPY_INT64:
        raise TypeError(f"orders must be an int64 numpy.ndarray, got "
                        f"{getattr(orders, 'dtype', type(orders).__name__)}")
    cdef cnp.ndarray oa = <cnp.ndarray>orders
    if (cnp.PyArray_NDIM(oa) != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(oa)
            or not cnp.PyArray_ISALIGNED(oa) or oa.shape[1] not in (0, n)):
        raise ValueError(f"orders must be C-contiguous (E, {n}) or (E, 0), got shape "
                         f"{(<object>oa).shape}")
    cdef Py_ssize_t n_epochs = oa.shape[0]
    cdef bint gather = oa.shape[1] > 0
    if gather and n_epochs and ((<object>oa).min() < 0 or (<object>oa).max() >= n):
        raise ValueError(f"orders must hold row indices in [0, {n})")
    cdef cnp.ndarray ka = _vector(kernels, "kernels", "int32", L)
    cdef cnp.ndarray va = _vector(saved, "saved", "int32", L)
    for l in range(L):
        _kernel((<object>ka)[l])
        if not 0 <= (<object>va)[l] <= 2:
            raise ValueError(f"saved must hold codes of TRAIN_SAVED (0..2), got {saved!r}")
    if not cnp.PyArray_Check(act) or cnp.PyArray_TYPE(<cnp.ndarray>act) != cnp.NPY_FLOAT64:
        raise TypeError("act must be a float64 numpy.ndarray of shape (L, 2)")
    cdef cnp.ndarray aa = <cnp.ndarray>act
    if not cnp.PyArray_IS_C_CONTIGUOUS(aa) or not cnp.PyArray_ISALIGNED(aa):
        raise ValueError("act must be C-contiguous and aligned")
    _check_shape(aa, "act", (L, 2), "(L, 2)")
    cdef int loss_id = _loss(loss)
    if (not isinstance(optimizer, (int, np.integer)) or isinstance(optimizer, bool)
            or not 0 <= optimizer < len(TRAIN_OPTIMIZERS)):
        raise ValueError(f"optimizer must be an index into TRAIN_OPTIMIZERS "
                         f"{TRAIN_OPTIMIZERS}, got {optimizer!r}")
    cdef int opt = optimizer
    cdef cnp.ndarray ha = _vector(hyper, "hyper", "float64", len(TRAIN_HYPER))
    need = train_workspace_size(dims, batch_size, wsa.dtype)
    if wsa.shape[0] < need:
        raise ValueError(f"workspace has {wsa.shape[0]} elements; sizes {dims} at "
                         f"batch_size {batch_size} need {need}")
    cdef Py_ssize_t nb = (n + batch_size - 1) // batch_size
    # the batches of the call in Python integers: (E, 0) orders take no memory, so E can
    # be near 2^60 and E * nb overflow Py_ssize_t (a wrapped count passed any length)
    total = int(n_epochs) * int(nb)
    cdef cnp.ndarray bla = _array(batch_loss, "batch_loss", cnp.NPY_FLOAT64, True)
    if cnp.PyArray_NDIM(bla) != 1 or bla.shape[0] < total:
        raise ValueError(f"batch_loss must be 1-D with >= {total} elements, got "
                         f"shape {(<object>bla).shape}")
    cdef cnp.ndarray gsa = _array(grad_sq, "grad_sq", cnp.NPY_FLOAT64, True)
    if cnp.PyArray_NDIM(gsa) != 2 or gsa.shape[0] < total or gsa.shape[1] != L:
        raise ValueError(f"grad_sq must be 2-D (>= {total}, {L}), got shape "
                         f"{(<object>gsa).shape}")
    cdef cnp.ndarray sta = _vector(step, "step", "int64", 1)
    if not cnp.PyArray_ISWRITEABLE(sta):
        raise ValueError("step is read-only")
    # Every array the loop writes is apart from the others; an input that shares memory
    # with one is copied (as _apart does for the other kernels): the loop reads the row
    # indices, layer sizes and kernel ids batch after batch, and one overwritten under it
    # sends it out of bounds.
    # (byte ranges compared in C: this runs once per epoch of fit, ~150 us for a small net)
    cdef tuple written = (pa, ga, sa, sb, wsa, bla, gsa, sta)
    cdef char *w_lo[8]
    cdef char *w_hi[8]
    cdef int i_w, j_w
    for i_w in range(8):
        w_lo[i_w] = <char *>cnp.PyArray_DATA(<cnp.ndarray>written[i_w])
        w_hi[i_w] = w_lo[i_w] + cnp.PyArray_NBYTES(<cnp.ndarray>written[i_w])
        for j_w in range(i_w):
            # state_b may be state_a itself for sgd (its one velocity, passed twice);
            # adam's m and v, rmsprop's two buffers, are two arrays
            if _meet(w_lo[i_w], w_hi[i_w], w_lo[j_w], w_hi[j_w]) and not (
                    i_w == 3 and j_w == 2 and (opt == 0 or opt == 4)
                    and w_lo[3] == w_lo[2] and w_hi[3] == w_hi[2]):
                raise ValueError(f"{_WRITTEN[i_w]} and {_WRITTEN[j_w]} overlap: they must "
                                 f"be separate arrays (state_b may be state_a itself for "
                                 f"sgd only)")
    xa, ta, oa, sz = (_apart_from(xa, w_lo, w_hi, 8), _apart_from(ta, w_lo, w_hi, 8),
                      _apart_from(oa, w_lo, w_hi, 8), _apart_from(sz, w_lo, w_hi, 8))
    ka, va, aa, ha = (_apart_from(ka, w_lo, w_hi, 8), _apart_from(va, w_lo, w_hi, 8),
                      _apart_from(aa, w_lo, w_hi, 8), _apart_from(ha, w_lo, w_hi, 8))
    cdef Py_ssize_t done
    cdef int ib = <int>batch_size, iL = <int>L
    cdef bint nest = nesterov, skd = sklearn_decay
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            done = _train_epochs(
                <float *>cnp.PyArray_DATA(pa), <float *>cnp.PyArray_DATA(ga),
                <float *>cnp.PyArray_DATA(sa), <float *>cnp.PyArray_DATA(sb), n_params,
                <float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(ta), n,
                <int64_t *>cnp.PyArray_DATA(oa), n_epochs, gather,
                <int64_t *>cnp.PyArray_DATA(sz), iL, <int *>cnp.PyArray_DATA(ka),
                <double *>cnp.PyArray_DATA(aa), <int *>cnp.PyArray_DATA(va), loss_id, opt,
                <double *>cnp.PyArray_DATA(ha), nest, skd, ib,
                <float *>cnp.PyArray_DATA(wsa), <double *>cnp.PyArray_DATA(bla),
                <double *>cnp.PyArray_DATA(gsa), <int64_t *>cnp.PyArray_DATA(sta))
    else:
        with nogil:
            done = _train_epochs(
                <double *>cnp.PyArray_DATA(pa), <double *>cnp.PyArray_DATA(ga),
                <double *>cnp.PyArray_DATA(sa), <double *>cnp.PyArray_DATA(sb), n_params,
                <double *>cnp.PyArray_DATA(xa), <double *>cnp.PyArray_DATA(ta), n,
                <int64_t *>cnp.PyArray_DATA(oa), n_epochs, gather,
                <int64_t *>cnp.PyArray_DATA(sz), iL, <int *>cnp.PyArray_DATA(ka),
                <double *>cnp.PyArray_DATA(aa), <int *>cnp.PyArray_DATA(va), loss_id, opt,
                <double *>cnp.PyArray_DATA(ha), nest, skd, ib,
                <double *>cnp.PyArray_DATA(wsa), <double *>cnp.PyArray_DATA(bla),
                <double *>cnp.PyArray_DATA(gsa), <int64_t *>cnp.PyArray_DATA(sta))
    return done
