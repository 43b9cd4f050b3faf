# The fused epoch runner of the cython backend: whole epochs of MLP training (forward, loss,
# backward, gradient checks, clipping, the optimizer update, for every batch) in one nogil
# call. Included by _kernels.pyx (its declarations, validation helpers and _gemm).
#
# Every step is the very kernel the layer-by-layer runner (fastgrad.train.train_epoch_layers
# over this backend) calls, in its order: the gemms through _gemm, fg_bias_forward (bias +
# activation), fg_loss_forward / fg_loss_backward, fg_backward_colsum (activation backward +
# bias gradient), and the optimizer update on the flat parameter buffer; so both runners
# train alike to the last bit but for the squared gradient norms (summed here in double,
# there by BLAS's dot) and the clipping norm that follows from them. That holds for whole
# batches (parts = 1); batches split into parts (data-parallel, on OpenMP threads) differ
# only in the rounding of the parts' sums, the same on any number of threads.
#
# Layout (the trainer's, fastgrad.nn.Sequential): params and grads are flat; layer l of
# sizes d_l -> d_{l+1} holds W_l (d_l, d_{l+1}) row-major, then b_l (d_{l+1},), layers one
# after another. The workspace (one per model, made by the caller) holds per layer the
# pre-activations z, outputs h, dL/dh and dL/dz of one batch (B x d_{l+1} each; a part's
# rows are a block of them), then a batch of gathered inputs (B x d_0) and targets
# (B x d_L), B x (d_L + 4) doubles (softmax cross-entropy's exponentials, sums and logs),
# per part a scratch for a transposed W, and per part but the first a gradient buffer.

from libc.math cimport NAN, isfinite, isnan, pow
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
                           float *db, double *e, Py_ssize_t r, Py_ssize_t k,
                           Py_ssize_t batch_rows)
    double fg_train_ce_f64(double *z, const double *bias, const double *t, double *g,
                           double *db, double *e, Py_ssize_t r, Py_ssize_t k,
                           Py_ssize_t batch_rows)
    void fg_train_add_f32(float *g, const float *h, Py_ssize_t n)
    void fg_train_add_f64(double *g, const double *h, Py_ssize_t n)
    int fg_train_team_size()
    int fg_train_thread_id()
    void fg_train_barrier()
    void fg_train_note_worker(int index)
    void fg_train_forget_workers_from(int size)
    int fg_train_others_running()
    int FG_TRAIN_MAX_WORKERS
    int fg_train_workers[]

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


def train_workspace_size(sizes, Py_ssize_t batch_size, dtype, int parts=1):
    """Elements (of `dtype`, float32 or float64) of the workspace train_epochs needs for
    layer sizes (d_0, ..., d_L), batches of batch_size rows split in `parts` parts:
    batch_size * (4 * (d_1 + ... + d_L) + d_0 + d_L), batch_size * (d_L + 4) doubles (+ 1
    element to align them), then per part FG_TRAIN_WT_MAX of scratch, and per part but the
    first a gradient buffer (the parameters' count)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    sizes = [int(s) for s in sizes]
    per_double = 8 // np.dtype(dtype).itemsize
    B = int(batch_size)
    K = sizes[len(sizes) - 1]
    n_params = sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))
    return (B * (4 * sum(sizes[1:]) + sizes[0] + K) + per_double * B * (K + 4) + 1
            + parts * FG_TRAIN_WT_MAX + (parts - 1) * n_params)


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


cdef double _batch_part(floating *P, floating *G, const floating *xin, const floating *tin,
                        Py_ssize_t lo, int rt, int r, const int64_t *sizes, int L,
                        const int *kern, const double *act, const int *saved, int loss,
                        int B, Py_ssize_t S, floating *ws, floating *WT,
                        double *E) noexcept nogil:
    """Forward, loss and backward of rows [lo, lo + rt) of a batch of r rows (xin, tin:
    those rows' inputs and targets), the gradient (those rows' share of the batch mean's)
    into G; returns their loss summed (the numerator of their share of the mean). The
    rows' activations live at row lo of each layer's (B, d) block of the workspace ws
    (z, h, dL/dh, dL/dz); WT: this thread's scratch, E its doubles."""
    cdef int d0 = <int>sizes[0], K = <int>sizes[L]
    cdef floating *Z = ws
    cdef floating *H = ws + B * S
    cdef floating *GY = ws + 2 * B * S
    cdef floating *GZ = ws + 3 * B * S
    cdef Py_ssize_t l, off = 0, cum = 0, nw, cum_prev
    cdef int m, din = d0
    cdef const floating *a = xin
    cdef floating *z
    cdef floating *h
    cdef floating *gy
    cdef floating *gz
    cdef floating *s
    cdef floating fa, fb
    cdef double total
    # logits (identity) into softmax cross-entropy: the output layer's bias, loss, gradient
    # and bias gradient in one function (fg_train_ce)
    cdef bint fused_out = fg_loss_rowwise[loss] and kern[L - 1] == _IDENTITY
    # ---- forward: z = a W (gemm), then h = f(z + b) in one pass
    for l in range(L):
        m = <int>sizes[l + 1]
        nw = <Py_ssize_t>din * m
        z = Z + B * cum + lo * m
        h = H + B * cum + lo * m
        _gemm(c'N', c'N', m, rt, din, P + off, m, <floating *>a, max(din, 1), z, m)
        fa = <floating>act[2 * l]
        fb = <floating>act[2 * l + 1]
        if l == L - 1 and fused_out:
            pass  # fg_train_ce adds the bias
        elif floating is float:
            fg_bias_forward_f32(kern[l], z, P + off + nw, h, rt, m, fa, fb)
        else:
            fg_bias_forward_f64(kern[l], z, P + off + nw, h, rt, m, fa, fb)
        a = h
        din = m
        off += nw + m
        cum += m
    # ---- the loss and its gradient w.r.t. the last output (as the batch mean's)
    cum_prev = cum - K
    if fused_out:  # gz and db of the output layer too: its backward skips them
        if floating is float:
            total = fg_train_ce_f32(Z + B * cum_prev + lo * K, P + off - K, tin,
                                    GZ + B * cum_prev + lo * K, G + off - K,
                                    E + lo * (K + 4), rt, K, r)
        else:
            total = fg_train_ce_f64(Z + B * cum_prev + lo * K, P + off - K, tin,
                                    GZ + B * cum_prev + lo * K, G + off - K,
                                    E + lo * (K + 4), rt, K, r)
    elif floating is float:
        total = fg_loss_total_f32(loss, H + B * cum_prev + lo * K, tin, rt, K)
        fg_loss_backward_part_f32(loss, H + B * cum_prev + lo * K, tin,
                                  GY + B * cum_prev + lo * K, rt, K, r)
    else:
        total = fg_loss_total_f64(loss, H + B * cum_prev + lo * K, tin, rt, K)
        fg_loss_backward_part_f64(loss, H + B * cum_prev + lo * K, tin,
                                  GY + B * cum_prev + lo * K, rt, K, r)
    # ---- backward, last layer first: gz = f'(saved) gy and db in one pass, then
    # dW = a^T gz and (below the first layer) the previous layer's gy = gz W^T
    for l in range(L - 1, -1, -1):
        m = <int>sizes[l + 1]
        din = <int>sizes[l]
        nw = <Py_ssize_t>din * m
        off -= nw + m
        cum -= m
        z = Z + B * cum + lo * m
        h = H + B * cum + lo * m
        gy = GY + B * cum + lo * m
        gz = GZ + B * cum + lo * m
        s = z if saved[l] == 1 else (h if saved[l] == 2 else gy)
        fa = <floating>act[2 * l]
        fb = <floating>act[2 * l + 1]
        if l == L - 1 and fused_out:
            pass  # fg_train_ce wrote gz and db
        elif floating is float:
            fg_backward_colsum_f32(kern[l], s, gy, gz, G + off + nw, rt, m, fa, fb)
        else:
            fg_backward_colsum_f64(kern[l], s, gy, gz, G + off + nw, rt, m, fa, fb)
        a = xin if l == 0 else H + B * (cum - din) + lo * din
        _gemm(c'N', c'T', m, din, rt, gz, m, <floating *>a, max(din, 1), G + off, m)
        if l > 0 and m < FG_TRAIN_WT_MAX_COLS and nw <= FG_TRAIN_WT_MAX:
            # gy_prev = gz W^T as gz @ (a transposed copy of W): see _train_impl.h
            if floating is float:
                fg_train_transpose_f32(P + off, WT, din, m)
            else:
                fg_train_transpose_f64(P + off, WT, din, m)
            _gemm(c'N', c'N', din, rt, m, WT, din, gz, m, GY + B * (cum - din) + lo * din,
                  din)
        elif l > 0:
            _gemm(c'T', c'N', din, rt, m, P + off, m, gz, m,
                  GY + B * (cum - din) + lo * din, max(din, 1))
    return total


# Per part of a batch (and slice of the parameters), the doubles the team shares (train_epochs
# allocates a row per part): the part's loss sum, whether the slice of the gradient is
# finite, the slice's part of scikit-learn's penalty (the weights' sum of squares), then per
# layer the slice's part of the squared gradient norm.
cdef enum:
    _SH_LOSS = 0
    _SH_FINITE = 1
    _SH_PENALTY = 2
    _SH_NORMS = 3


cdef inline Py_ssize_t _row_edge(int r, int t, int nt) noexcept nogil:
    """Start of part t's rows of a batch of r split in nt parts (t = nt: r), rounded up:
    the first part has rows whenever the batch has (its gradient buffer is G, which the
    others are added into)."""
    return (<Py_ssize_t>r * t + nt - 1) // nt


cdef inline Py_ssize_t _slice_edge(Py_ssize_t n, int t, int nt) noexcept nogil:
    """Start of slice t of n parameters in nt slices (t = nt: n), at multiples of 16
    elements (whole cache lines, whole vectors)."""
    if t >= nt:
        return n
    return min(n, (n * t // nt) // 16 * 16)


cdef void _reduce_slice(floating *P, floating *G, const floating *GX, Py_ssize_t n_params,
                        const int64_t *sizes, int L, int r, int parts, bint penalty,
                        Py_ssize_t plo, Py_ssize_t phi, double *sh) noexcept nogil:
    """Parameters [plo, phi) of a batch's gradient: the other parts' gradients (GX: part
    t's at (t - 1) n_params, for parts that had rows) added into G in part order,
    then into sh this slice's per-layer squared norms, its finiteness (a non-finite sum, or
    an overflow of finite squares, decided by the elements) and, with scikit-learn's L2,
    its weights' sum of squares."""
    cdef int t
    cdef Py_ssize_t l, off = 0, nw, lo, hi
    cdef double sq, pen = 0.0
    cdef bint finite = True
    for t in range(1, parts):
        if _row_edge(r, t + 1, parts) > _row_edge(r, t, parts) and phi > plo:
            if floating is float:
                fg_train_add_f32(G + plo, GX + (t - 1) * n_params + plo, phi - plo)
            else:
                fg_train_add_f64(G + plo, GX + (t - 1) * n_params + plo, phi - plo)
    for l in range(L):
        nw = sizes[l] * sizes[l + 1]
        lo = max(off, plo)
        hi = min(off + nw + sizes[l + 1], phi)
        sq = 0.0
        if lo < hi:
            sq = _grad_sumsq(G + lo, hi - lo)
            if not isfinite(sq) and not _all_finite(G + lo, hi - lo):
                finite = False
        sh[_SH_NORMS + l] = sq
        hi = min(off + nw, phi)
        if penalty and lo < hi:
            pen += _sumsq(P + lo, hi - lo)
        off += nw + sizes[l + 1]
    sh[_SH_FINITE] = finite
    sh[_SH_PENALTY] = pen


cdef double _batch_decide(floating *G, Py_ssize_t n_params, int L, int parts, int tid,
                          const double *hp, bint sk_decay, int r, double value,
                          const double *shared, double *batch_loss, double *grad_sq,
                          Py_ssize_t kt) noexcept nogil:
    """After _reduce_slice on every slice (value: the batch's mean loss), by every thread
    of the team alike: the same decisions from the slices' sums, added in slice order (the
    first thread records the batch's loss and per-layer squared norms in batch_loss[kt],
    grad_sq[kt]); when finite, clipping (by value, then by global norm: the first thread,
    on the whole gradient, then a barrier). Returns scikit-learn's penalty (0 without it),
    or NaN when the batch is not finite (no update to make; the gradients stay for the
    diagnosis)."""
    cdef Py_ssize_t l, width = _SH_NORMS + L
    cdef int s
    cdef double sq, norm, pen = 0.0, wd = hp[5], clip_norm = hp[7], clip_value = hp[8]
    cdef floating cv, scale
    cdef bint finite = isfinite(value)
    for s in range(parts):
        finite = finite and shared[s * width + _SH_FINITE] != 0
    if tid == 0:
        for l in range(L):
            sq = shared[_SH_NORMS + l]
            for s in range(1, parts):
                sq += shared[s * width + _SH_NORMS + l]
            grad_sq[kt * L + l] = sq
        batch_loss[kt] = value
    if not finite:
        return NAN
    # ---- clipping: each element to [-clip_value, clip_value], then the global norm
    if clip_value > 0 or clip_norm > 0:
        if tid == 0:
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
        fg_train_barrier()
    # ---- scikit-learn's L2 (decay="sklearn"): its penalty, from the weights before the
    # update, in the batch loss
    if sk_decay and wd != 0:
        for s in range(parts):
            pen += shared[s * width + _SH_PENALTY]
        pen = 0.5 * wd * pen / r
        if pen != 0:
            if tid == 0:
                batch_loss[kt] = value + pen
            if not isfinite(value + pen):
                return NAN
    return pen


cdef void _update_slice(floating *P, floating *G, floating *SA, floating *SB,
                        const int64_t *sizes, int L, int opt, const double *hp,
                        bint nesterov, bint sk_decay, int r, Py_ssize_t plo, Py_ssize_t phi,
                        const int64_t *step) noexcept nogil:
    """Parameters [plo, phi) of a finite batch (after _batch_decide): scikit-learn's L2 on
    the slice's weights (weights only, / rows), then the update (step[0] + 1: this
    update's count, for Adam's bias corrections)."""
    cdef Py_ssize_t l, off = 0, nw, lo, hi
    cdef double tt, step_size, inv_sqrt_bc2
    cdef double lr = hp[0], mom = hp[1], b1 = hp[2], b2 = hp[3], eps = hp[4], wd = hp[5]
    cdef double alpha = hp[6]
    cdef double wd_step = 0.0 if sk_decay else wd
    cdef floating scale
    if sk_decay and wd != 0:
        scale = <floating>(wd / r)
        for l in range(L):
            nw = sizes[l] * sizes[l + 1]
            lo = max(off, plo)
            hi = min(off + nw, phi)
            if lo < hi:
                if floating is float:
                    fg_train_add_scaled_f32(G + lo, P + lo, hi - lo, scale)
                else:
                    fg_train_add_scaled_f64(G + lo, P + lo, hi - lo, scale)
            off += nw + sizes[l + 1]
    # ---- the update, on the slice of the flat buffer
    P += plo
    G += plo
    SA += plo
    SB += plo
    nw = phi - plo
    if nw <= 0:
        return
    if opt == 4:
        if floating is float:
            fg_train_sgd_f32(P, G, SA, nw, <float>lr, <float>mom, <float>wd_step, nesterov)
        else:
            fg_train_sgd_f64(P, G, SA, nw, lr, mom, wd_step, nesterov)
    elif opt == 0:
        if floating is float:
            fg_sgd_update_f32(P, G, SA, nw, lr, mom, wd_step, nesterov)
        else:
            fg_sgd_update_f64(P, G, SA, nw, lr, mom, wd_step, nesterov)
    elif opt == 3:
        if floating is float:
            fg_rmsprop_update_f32(P, G, SB, SA, nw, lr, alpha, eps, wd_step, mom)
        else:
            fg_rmsprop_update_f64(P, G, SB, SA, nw, lr, alpha, eps, wd_step, mom)
    else:
        tt = <double>(step[0] + 1)
        # pow as Python's float ** int (adam_update's bias corrections)
        step_size = lr / (1.0 - pow(b1, tt))
        inv_sqrt_bc2 = 1.0 / sqrt(1.0 - pow(b2, tt))
        if opt >= 5:  # adam_dtype, adamw_dtype: in the arrays' arithmetic
            if floating is float:
                fg_train_adam_f32(P, G, SA, SB, nw, <float>lr, <float>b1, <float>b2,
                                  <float>eps, <float>wd_step, opt == 6, <float>step_size,
                                  <float>inv_sqrt_bc2)
            else:
                fg_train_adam_f64(P, G, SA, SB, nw, lr, b1, b2, eps, wd_step, opt == 6,
                                  step_size, inv_sqrt_bc2)
        elif floating is float:
            fg_adam_update_f32(P, G, SA, SB, nw, lr, b1, b2, eps, wd_step, opt == 2,
                               step_size, inv_sqrt_bc2)
        else:
            fg_adam_update_f64(P, G, SA, SB, nw, lr, b1, b2, eps, wd_step, opt == 2,
                               step_size, inv_sqrt_bc2)


cdef void _train_worker(floating *P, floating *G, floating *SA, floating *SB,
                        Py_ssize_t n_params, const floating *X, const floating *T,
                        Py_ssize_t n, const int64_t *orders, Py_ssize_t n_epochs,
                        bint gather, const int64_t *sizes, int L, const int *kern,
                        const double *act, const int *saved, int loss, int opt,
                        const double *hp, bint nesterov, bint sk_decay, int B,
                        floating *ws, int parts, double *batch_loss, double *grad_sq,
                        int64_t *step, double *shared, Py_ssize_t *done) noexcept nogil:
    """n_epochs epochs (see train_epochs) by one thread of a team (or alone). Every batch
    is split into `parts` parts of its rows and the parameters into as many slices; thread
    t takes parts and slices t, t + nt, ... (nt: the team's size, any from 1 to parts: the
    same arithmetic, the same bits). Per batch: each part's forward, loss and backward
    (_batch_part; parts past the first into their own gradient buffers); barrier; per
    slice, the parts' gradients added in part order and the slice's norms (_reduce_slice);
    barrier; the decisions (_batch_decide), then per slice the update (_update_slice);
    barrier. done[0] (-1 at the call) becomes the batches completed: all of them, or the
    index (counted over the call) of the first non-finite one. shared: parts rows of
    _SH_NORMS + L doubles."""
    cdef int tid = fg_train_thread_id(), nt = fg_train_team_size()
    cdef int d0 = <int>sizes[0], K = <int>sizes[L], r, rt, p
    cdef Py_ssize_t S = 0, l, i, e, k, start, row, lo, hi, kt = 0
    fg_train_note_worker(tid)
    if tid == 0:
        fg_train_forget_workers_from(nt)
    for l in range(L):
        S += sizes[l + 1]
    cdef floating *XB = ws + 4 * B * S
    cdef floating *TB = XB + <Py_ssize_t>B * d0
    # the doubles: past the batch, at the next multiple of 8 bytes; then per part the
    # scratch, then per part but the first a gradient buffer
    cdef double *E = <double *>((<uintptr_t>(TB + <Py_ssize_t>B * K) + 7) & ~(<uintptr_t>7))
    cdef floating *WT = <floating *>(E + <Py_ssize_t>B * (K + 4)) + tid * FG_TRAIN_WT_MAX
    cdef floating *GX = <floating *>(E + <Py_ssize_t>B * (K + 4)) + parts * FG_TRAIN_WT_MAX
    cdef Py_ssize_t width = _SH_NORMS + L
    cdef Py_ssize_t nb = (n + B - 1) // B
    cdef const floating *xin
    cdef const floating *tin
    cdef double total, pen
    cdef bint penalty = sk_decay and hp[5] != 0
    for e in range(n_epochs):
        for k in range(nb):
            start = k * B
            r = <int>min(<Py_ssize_t>B, n - start)
            for p in range(tid, parts):  # this thread's parts: tid, tid + nt, ...
                if (p - tid) % nt:
                    continue
                lo = _row_edge(r, p, parts)
                hi = _row_edge(r, p + 1, parts)
                rt = <int>(hi - lo)
                shared[p * width + _SH_LOSS] = 0.0
                if rt == 0:
                    continue
                # ---- the part's rows: gathered in the given order, or views of X, T
                if gather:
                    for i in range(lo, hi):
                        row = orders[e * n + start + i]
                        memcpy(XB + i * d0, X + row * d0, d0 * sizeof(floating))
                        memcpy(TB + i * K, T + row * K, K * sizeof(floating))
                    xin = XB + lo * d0
                    tin = TB + lo * K
                else:
                    xin = X + (start + lo) * d0
                    tin = T + (start + lo) * K
                shared[p * width + _SH_LOSS] = _batch_part(
                    P, G if p == 0 else GX + (p - 1) * n_params, xin, tin, lo, rt, r, sizes,
                    L, kern, act, saved, loss, B, S, ws, WT, E)
            fg_train_barrier()  # every part's gradient is in
            for p in range(tid, parts):
                if (p - tid) % nt:
                    continue
                _reduce_slice(P, G, GX, n_params, sizes, L, r, parts, penalty,
                              _slice_edge(n_params, p, parts),
                              _slice_edge(n_params, p + 1, parts), shared + p * width)
            fg_train_barrier()  # every slice is summed
            # the mean over the batch's rows (row-wise losses) or elements
            total = shared[_SH_LOSS]
            for p in range(1, parts):
                total += shared[p * width + _SH_LOSS]
            pen = _batch_decide(G, n_params, L, parts, tid, hp, sk_decay, r,
                                total / fg_loss_count_f64(loss, r, K), shared, batch_loss,
                                grad_sq, kt)
            if isnan(pen):
                if tid == 0:
                    done[0] = kt
                return  # every thread decided the same
            for p in range(tid, parts):
                if (p - tid) % nt:
                    continue
                _update_slice(P, G, SA, SB, sizes, L, opt, hp, nesterov, sk_decay, r,
                              _slice_edge(n_params, p, parts),
                              _slice_edge(n_params, p + 1, parts), step)
            fg_train_barrier()  # every slice is updated before the next batch reads it
            if tid == 0:
                step[0] += 1
            kt += 1
    if tid == 0:
        done[0] = kt


cdef void _run_workers(floating *P, floating *G, floating *SA, floating *SB,
                       Py_ssize_t n_params, const floating *X, const floating *T,
                       Py_ssize_t n, const int64_t *orders, Py_ssize_t n_epochs,
                       bint gather, const int64_t *sizes, int L, const int *kern,
                       const double *act, const int *saved, int loss, int opt,
                       const double *hp, bint nesterov, bint sk_decay, int B,
                       floating *ws, int parts, double *batch_loss, double *grad_sq,
                       int64_t *step, double *shared, Py_ssize_t *done,
                       int nthreads) noexcept nogil:
    """_train_worker on a team of nthreads OpenMP threads, or on the calling thread alone
    (no parallel region) when nthreads is 1."""
    if nthreads <= 1:
        _train_worker(P, G, SA, SB, n_params, X, T, n, orders, n_epochs, gather, sizes, L,
                      kern, act, saved, loss, opt, hp, nesterov, sk_decay, B, ws, parts,
                      batch_loss, grad_sq, step, shared, done)
        return
    with parallel(num_threads=nthreads):
        _train_worker(P, G, SA, SB, n_params, X, T, n, orders, n_epochs, gather, sizes, L,
                      kern, act, saved, loss, opt, hp, nesterov, sk_decay, B, ws, parts,
                      batch_loss, grad_sq, step, shared, done)


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
                 Py_ssize_t batch_size, workspace, batch_loss, grad_sq, step, int parts=1,
                 int nthreads=0):
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

    parts: every batch split in this many parts of its rows, data-parallel: each part's
    forward, loss and backward into a gradient of its own, then the parts' gradients and
    losses added in part order, and the update (by slices of the parameters). 1: the
    layer-by-layer runner's very bits; more: the same training but for the rounding of
    those sums. The workspace must hold train_workspace_size(sizes, batch_size, dtype,
    parts). nthreads: the threads (OpenMP's) that run the parts, 1 to parts (0: parts):
    the same bits for any count. BLAS runs on one thread in each meanwhile.

    Per batch, as fastgrad.train.train_epoch_layers: forward, loss, backward, the finite
    check, clipping by value then by global norm, the sklearn penalty, the update.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if not 0 <= nthreads <= parts:
        raise ValueError(f"nthreads must be in [0, parts = {parts}], got {nthreads}")
    if nthreads == 0:
        nthreads = parts
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
    need = train_workspace_size(dims, batch_size, wsa.dtype, parts)
    if wsa.shape[0] < need:
        raise ValueError(f"workspace has {wsa.shape[0]} elements; sizes {dims} at "
                         f"batch_size {batch_size} in {parts} part(s) need {need}")
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
    cdef Py_ssize_t done = -1
    cdef int ib = <int>batch_size, iL = <int>L, slots = parts
    cdef bint nest = nesterov, skd = sklearn_decay
    cdef cnp.ndarray shared_a = np.zeros(slots * (_SH_NORMS + L))
    cdef double *part = <double *>cnp.PyArray_DATA(shared_a)
    cdef int blas_threads = _blas_single_thread() if nthreads > 1 else 0
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            _run_workers(
                <float *>cnp.PyArray_DATA(pa), <float *>cnp.PyArray_DATA(ga),
                <float *>cnp.PyArray_DATA(sa), <float *>cnp.PyArray_DATA(sb), n_params,
                <float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(ta), n,
                <int64_t *>cnp.PyArray_DATA(oa), n_epochs, gather,
                <int64_t *>cnp.PyArray_DATA(sz), iL, <int *>cnp.PyArray_DATA(ka),
                <double *>cnp.PyArray_DATA(aa), <int *>cnp.PyArray_DATA(va), loss_id, opt,
                <double *>cnp.PyArray_DATA(ha), nest, skd, ib,
                <float *>cnp.PyArray_DATA(wsa), slots, <double *>cnp.PyArray_DATA(bla),
                <double *>cnp.PyArray_DATA(gsa), <int64_t *>cnp.PyArray_DATA(sta), part,
                &done, nthreads)
    else:
        with nogil:
            _run_workers(
                <double *>cnp.PyArray_DATA(pa), <double *>cnp.PyArray_DATA(ga),
                <double *>cnp.PyArray_DATA(sa), <double *>cnp.PyArray_DATA(sb), n_params,
                <double *>cnp.PyArray_DATA(xa), <double *>cnp.PyArray_DATA(ta), n,
                <int64_t *>cnp.PyArray_DATA(oa), n_epochs, gather,
                <int64_t *>cnp.PyArray_DATA(sz), iL, <int *>cnp.PyArray_DATA(ka),
                <double *>cnp.PyArray_DATA(aa), <int *>cnp.PyArray_DATA(va), loss_id, opt,
                <double *>cnp.PyArray_DATA(ha), nest, skd, ib,
                <double *>cnp.PyArray_DATA(wsa), slots, <double *>cnp.PyArray_DATA(bla),
                <double *>cnp.PyArray_DATA(gsa), <int64_t *>cnp.PyArray_DATA(sta), part,
                &done, nthreads)
    if blas_threads > 1:
        _set_blas_threads(blas_threads)
    return done


cdef int _workers_noted = 1  # the team size whose OpenMP workers fg_train_note_worker knows
# (a data-parallel call notes its own team too; a smaller team forgets the rest)
_free_seen = [-1.0, 0, False]  # when (time.monotonic) train_threads_free looked, for whom, what
_FREE_MAX_AGE = 0.01


def train_threads_free(int nthreads) -> bool:
    """Whether a data-parallel call on nthreads threads would have the cores to itself: no
    thread running now but the caller and the OpenMP pool that runs the call, in this
    process or another (a BLAS pool spinning after a multi-threaded call, another program:
    the call's barriers would wait out time slices; see fg_train_others_running), on a
    machine of at least nthreads cores. True where /proc is not available. A look costs
    ~60 us (a /proc read per thread): its answer is reused for 10 ms (a spinning pool
    lasts ~100 ms), and the first look for a team size runs an empty region to learn the
    pool's threads."""
    global _workers_noted
    import os
    import time
    now = time.monotonic()
    if _free_seen[1] == nthreads and now - _free_seen[0] < _FREE_MAX_AGE:
        return _free_seen[2]
    free = (os.cpu_count() or 1) >= nthreads
    if free and nthreads != _workers_noted:
        with nogil, parallel(num_threads=nthreads):
            fg_train_note_worker(fg_train_thread_id())
        fg_train_forget_workers_from(nthreads)
        _workers_noted = nthreads
    free = free and fg_train_others_running() <= 0
    _free_seen[:] = [now, nthreads, free]
    return free


def train_worker_tids() -> list:
    """The OS thread ids of the OpenMP workers train_threads_free leaves out (diagnostics)."""
    return [fg_train_workers[i] for i in range(FG_TRAIN_MAX_WORKERS) if fg_train_workers[i]]


# ---- BLAS on one thread while the data-parallel threads run --------------------------------
# Each thread of a data-parallel epoch calls BLAS with its own part of the batch; a
# multi-threaded OpenBLAS would put each call on its pool too (2 cores: 4 threads, and the
# pool's calls queue on one server). SciPy's OpenBLAS (the one cython_blas calls) exports
# its thread setter; it is found once, through the cython_blas module that links it.
ctypedef int (*_get_threads_fn)() noexcept nogil
ctypedef void (*_set_threads_fn)(int) noexcept nogil
cdef _get_threads_fn _blas_get_threads = NULL
cdef _set_threads_fn _blas_set_threads = NULL
cdef bint _blas_setter_looked_up = False


cdef _find_blas_setter():
    global _blas_get_threads, _blas_set_threads, _blas_setter_looked_up
    _blas_setter_looked_up = True
    try:
        import ctypes
        from scipy.linalg import cython_blas
        lib = ctypes.CDLL(cython_blas.__file__)
    except (ImportError, OSError):
        return
    for prefix in ("scipy_", ""):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                _blas_get_threads = <_get_threads_fn><uintptr_t>ctypes.cast(
                    get, ctypes.c_void_p).value
                _blas_set_threads = <_set_threads_fn><uintptr_t>ctypes.cast(
                    put, ctypes.c_void_p).value
                return


cdef int _blas_single_thread():
    """Put SciPy's OpenBLAS on one thread; returns its previous count (0: unknown, a BLAS
    without the setter, left as it is)."""
    if not _blas_setter_looked_up:
        _find_blas_setter()
    if _blas_get_threads == NULL:
        return 0
    cdef int previous = _blas_get_threads()
    if previous > 1:
        _blas_set_threads(1)
    return previous


cdef void _set_blas_threads(int count):
    if _blas_set_threads != NULL:
        _blas_set_threads(count)


def blas_threads() -> int:
    """SciPy's OpenBLAS's thread count as train_epochs sees it (0: not found; tests)."""
    if not _blas_setter_looked_up:
        _find_blas_setter()
    return _blas_get_threads() if _blas_get_threads != NULL else 0
