/* Loops of the cython backend's fused epoch runner (fastgrad/_train.pxi): the parts of a
 * training step that the layer kernels of _kernels_impl.h do not already provide, or
 * provide in a form that costs more inside a fused step.
 *
 * Included after _kernels_simd.h (its simd declaration of exp and FG_CLONES apply here);
 * every function is defined for float (suffix _f32) and double (_f64). Arrays are
 * C-contiguous, their sizes validated by the caller. */
#ifndef FASTGRAD_TRAIN_IMPL_H
#define FASTGRAD_TRAIN_IMPL_H

#include <math.h>
#include <stddef.h>
#include <string.h>

#ifndef FG_CLONES
#define FG_CLONES
#endif
/* glibc's vector log (libmvec since 2.22), as _kernels_simd.h declares exp: the cross-entropy
 * takes one log per row, in one vectorized pass over the batch. */
#ifdef FG_SIMD_DECL
#if __GLIBC_PREREQ(2, 22)
extern double log(double) FG_SIMD_DECL;
#endif
#endif

/* Partial sums fixed in the source (not by the vector width): a sum is the same in every
 * ISA variant, and the chain of dependent adds (4 cycles each) is split into vectors of
 * them (_kernels_impl.h's FG_MAX_LANES: gcc turns 32 lanes into independent vector
 * chains; 8 gave it two 4-lane chains, still latency-bound). */
#define FG_TRAIN_LANES 32
/* g @ W^T for a W of few columns (the output layer's): OpenBLAS runs the transposed
 * product on its general path with packing copies, slower than a plain product with a
 * transposed copy of W (the numba runner measured 1.17 us against 0.18 + 0.46 us for
 * 32x10 @ 10x64). Below FG_TRAIN_WT_MAX_COLS columns and up to FG_TRAIN_WT_MAX elements
 * (the workspace's scratch) the runner copies. */
#define FG_TRAIN_WT_MAX_COLS 32
#define FG_TRAIN_WT_MAX 4096

/* The threads of a data-parallel epoch (_train.pxi: each takes a part of every batch's
 * rows): its team and place in it, and the barrier between a batch's parts and its
 * update. Called inside the runner's OpenMP parallel region (an orphaned barrier binds to
 * it), or outside any, where the team is the calling thread alone. */
#ifdef _OPENMP
#include <omp.h>
static inline int fg_train_team_size(void) { return omp_get_num_threads(); }
static inline int fg_train_thread_id(void) { return omp_get_thread_num(); }
static inline void fg_train_barrier(void) {
#pragma omp barrier
}
#else
static inline int fg_train_team_size(void) { return 1; }
static inline int fg_train_thread_id(void) { return 0; }
static inline void fg_train_barrier(void) {}
#endif

/* Whether a data-parallel call would share the cores: the threads running now (state R)
 * that are not the caller nor the team's own workers (fg_train_note_worker: libgomp's
 * pool, which spins for milliseconds after each region): this process's other threads
 * (/proc/self/task/<tid>/stat), and other processes' (/proc/loadavg's running count less
 * this process's running threads). A BLAS pool spins ~100 ms after a multi-threaded call
 * (OpenBLAS's THREAD_TIMEOUT): on 2 cores, a data-parallel epoch beside such a spinner ran
 * 1.5x slower than one thread, its barriers waiting out the scheduler's time slices. One
 * sample (~60 us): a short-lived kernel thread may make one call run on one thread, with
 * the same result. -1 where /proc is not available. */
#define FG_TRAIN_MAX_WORKERS 64
static int fg_train_workers[FG_TRAIN_MAX_WORKERS];
#if defined(__linux__)
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
static inline int fg_train_gettid(void) { return (int)syscall(SYS_gettid); }
/* The bytes of a small /proc file, NUL-terminated; 0 when it cannot be read. */
static ssize_t fg_train_read_proc(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) n = 0;
    buf[n] = 0;
    return n;
}
static int fg_train_others_running(void) {
    char path[64], buf[512];
    /* "0.52 0.58 0.59 3/219 4242": runnable threads on the machine, this one included */
    if (fg_train_read_proc("/proc/loadavg", buf, sizeof buf) == 0) return -1;
    char *slash = strchr(buf, '/'), *field = slash;
    if (slash == NULL) return -1;
    while (field > buf && field[-1] != ' ') field--;
    int machine = atoi(field);
    DIR *dir = opendir("/proc/self/task");
    if (dir == NULL) return -1;
    int self = fg_train_gettid(), own = 0, extra = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        int tid = atoi(entry->d_name);
        snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
        if (fg_train_read_proc(path, buf, sizeof buf) == 0) continue; /* it ended */
        /* "tid (comm) S ...": the state follows the last ')' (comm may hold one) */
        char *end = strrchr(buf, ')');
        if (end == NULL || end[1] != ' ' || end[2] != 'R') continue;
        own++;
        int ours = tid == self;
        for (int i = 0; i < FG_TRAIN_MAX_WORKERS && !ours; i++) ours = fg_train_workers[i] == tid;
        extra += !ours;
    }
    closedir(dir);
    int others = machine - own;
    return extra + (others > 0 ? others : 0);
}
#else
static inline int fg_train_gettid(void) { return 0; }
static int fg_train_others_running(void) { return -1; }
#endif
/* Called by each thread of a data-parallel team: its OS thread id, so the check above
 * does not count the pool that will run the call. */
static inline void fg_train_note_worker(int index) {
    if (index > 0 && index < FG_TRAIN_MAX_WORKERS) fg_train_workers[index] = fg_train_gettid();
}
/* Called by the team's first thread: threads past a team of `size` are no longer the
 * pool's (libgomp ends a larger team's extra threads). */
static inline void fg_train_forget_workers_from(int size) {
    for (int i = size > 1 ? size : 1; i < FG_TRAIN_MAX_WORKERS; i++) fg_train_workers[i] = 0;
}

#define FG_TRAIN_DEFINE(T, SUF, SQRT)                                                        \
    /* sum of squares, in double */                                                          \
    static FG_CLONES double fg_train_sumsq##SUF(const T *a, ptrdiff_t n) {                   \
        double acc[FG_TRAIN_LANES] = {0}, s = 0;                                             \
        ptrdiff_t nb = n - n % FG_TRAIN_LANES, i;                                            \
        for (i = 0; i < nb; i += FG_TRAIN_LANES)                                             \
            for (int j = 0; j < FG_TRAIN_LANES; j++) {                                       \
                double v = (double)a[i + j];                                                 \
                acc[j] += v * v;                                                             \
            }                                                                                \
        for (; i < n; i++) {                                                                 \
            double v = (double)a[i];                                                         \
            s += v * v;                                                                      \
        }                                                                                    \
        for (int j = 0; j < FG_TRAIN_LANES; j++) s += acc[j];                                \
        return s;                                                                            \
    }                                                                                        \
    static int fg_train_all_finite##SUF(const T *a, ptrdiff_t n) {                           \
        for (ptrdiff_t i = 0; i < n; i++)                                                    \
            if (!isfinite(a[i])) return 0;                                                   \
        return 1;                                                                            \
    }                                                                                        \
    /* each element to [-c, c] (np.clip's order: the bounds in the dtype) */                  \
    static FG_CLONES void fg_train_clip##SUF(T *g, ptrdiff_t n, T c) {                       \
        for (ptrdiff_t i = 0; i < n; i++) {                                                  \
            T v = g[i];                                                                      \
            v = v < -c ? -c : v;                                                             \
            g[i] = v > c ? c : v;                                                            \
        }                                                                                    \
    }                                                                                        \
    static FG_CLONES void fg_train_scale##SUF(T *g, ptrdiff_t n, T s) {                      \
        for (ptrdiff_t i = 0; i < n; i++) g[i] *= s;                                         \
    }                                                                                        \
    /* g += s p (scikit-learn's L2 on the weights), s p rounded first as NumPy does */       \
    static FG_CLONES void fg_train_add_scaled##SUF(T *g, const T *p, ptrdiff_t n, T s) {     \
        for (ptrdiff_t i = 0; i < n; i++) {                                                  \
            T v = s * p[i];                                                                  \
            g[i] += v;                                                                       \
        }                                                                                    \
    }                                                                                        \
    /* SGD (PyTorch's form, momentum 0: no velocity) in the dtype's arithmetic, as PyTorch \
     * updates float32 parameters and the numba runner's _update does: g = grad + wd p;    \
     * v = momentum v + g; p -= lr (g + momentum v) (nesterov) or lr v. The float32 update \
     * through double (_kernels_impl.h's fg_sgd_update, the layer-by-layer runner's) costs \
     * ~0.4 us of a 10 us step of the 64-64-10 net; this one ~4x less. */                  \
    static FG_CLONES void fg_train_sgd##SUF(T *p, const T *grad, T *v, ptrdiff_t n, T lr,   \
                                            T momentum, T wd, int nesterov) {               \
        if (momentum == 0) {                                                                 \
            for (ptrdiff_t i = 0; i < n; i++) {                                              \
                T g = grad[i] + wd * p[i];                                                   \
                p[i] -= lr * g;                                                              \
            }                                                                                \
        } else if (nesterov) {                                                               \
            for (ptrdiff_t i = 0; i < n; i++) {                                              \
                T g = grad[i] + wd * p[i];                                                   \
                T vi = momentum * v[i] + g;                                                  \
                v[i] = vi;                                                                   \
                p[i] -= lr * (g + momentum * vi);                                            \
            }                                                                                \
        } else {                                                                             \
            for (ptrdiff_t i = 0; i < n; i++) {                                              \
                T g = grad[i] + wd * p[i];                                                   \
                T vi = momentum * v[i] + g;                                                  \
                v[i] = vi;                                                                   \
                p[i] -= lr * vi;                                                             \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* Adam / AdamW (decoupled: p *= 1 - lr wd first, else g += wd p) in the dtype's      \
     * arithmetic, as PyTorch updates float32 parameters and the numba runner's _update    \
     * does, with the bias corrections hoisted (step_size = lr / (1 - beta1^t) and        \
     * inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t), computed in double by the caller). The        \
     * float32 update through double (fg_adam_update, the layer-by-layer runner's) took   \
     * 5.3% of scikit-learn's digits fit (64-100-10, batch 200: 7,510 parameters, ~5.6 us  \
     * a step), this one 1.7-2.1%: its divisions and square roots run 16 lanes wide. */   \
    static FG_CLONES void fg_train_adam##SUF(T *p, const T *grad, T *m, T *v, ptrdiff_t n,  \
                                             T lr, T beta1, T beta2, T eps, T wd,            \
                                             int decoupled, T step_size, T inv_sqrt_bc2) {   \
        T c1 = (T)1 - beta1, c2 = (T)1 - beta2, shrink = (T)1 - lr * wd;                     \
        if (decoupled) {                                                                     \
            for (ptrdiff_t i = 0; i < n; i++) p[i] *= shrink;                                \
            wd = 0;                                                                          \
        }                                                                                    \
        for (ptrdiff_t i = 0; i < n; i++) {                                                  \
            T g = grad[i] + wd * p[i];                                                       \
            T mi = beta1 * m[i] + c1 * g;                                                    \
            T vi = beta2 * v[i] + c2 * g * g;                                                \
            m[i] = mi;                                                                       \
            v[i] = vi;                                                                       \
            p[i] -= step_size * mi / (SQRT(vi) * inv_sqrt_bc2 + eps);                        \
        }                                                                                    \
    }                                                                                        \
    /* g += h: another part's gradient into the first's */                              \
    static FG_CLONES void fg_train_add##SUF(T *g, const T *h, ptrdiff_t n) {                 \
        for (ptrdiff_t i = 0; i < n; i++) g[i] += h[i];                                      \
    }                                                                                        \
    /* Wt (cols, rows) = W (rows, cols) transposed */                                        \
    static void fg_train_transpose##SUF(const T *W, T *Wt, ptrdiff_t rows, ptrdiff_t cols) { \
        for (ptrdiff_t j = 0; j < cols; j++)                                                 \
            for (ptrdiff_t c = 0; c < rows; c++) Wt[j * rows + c] = W[c * cols + j];         \
    }                                                                                        \
    /* The output layer of softmax cross-entropy, fused: z (r, k) += bias (z: the logits),  \
     * then against target rows t (one-hot or summing to 1) returns the sum over rows of   \
     * sum_j t_j (lse - z_j), writes g = (softmax(z) - t) / r and db = the column sums of  \
     * g (r rows of a batch of batch_rows: the mean's divisor). The formulas of            \
     * _kernels_impl.h's fg_ce_sum / fg_ce_grad in double, each g                          \
     * rounded once, with each exponential computed once in one flat vectorized pass, and  \
     * 1/s and 1/r multiplied (two divisions per element were half of this function's     \
     * time). Rows of a few logits vectorize poorly one by one, and each row's sums are     \
     * chains of dependent adds: after the bias and max (row by row), the passes run       \
     * column by column over all rows at once, e held transposed (k, r), every row's chain \
     * side by side; each row still adds its terms in column order, and db its rows in     \
     * order: the sums of the row-by-row form (32 x 10 float: 1.07 -> 0.82 us, the same    \
     * bits; where r k is not a multiple of the vector width, the few exps that glibc's    \
     * scalar exp takes are other elements, an ulp apart at most). e: r * (k + 4) doubles  \
     * of scratch. A NaN logit, or an infinite row max, makes the row's loss and gradient  \
     * NaN, as there. */                                                                   \
    static FG_CLONES double fg_train_ce##SUF(T *z, const T *bias, const T *t, T *g, T *db,   \
                                             double *e, ptrdiff_t r, ptrdiff_t k,            \
                                             ptrdiff_t batch_rows) {                         \
        double inv_r = 1.0 / (double)batch_rows, total = 0;                                  \
        /* per row: s (the sum of exponentials) then 1/s, log s then lse, the max then    \
         * the row's loss; the max in T before that */                                     \
        double *rs = e + r * k, *ls = rs + r, *ms = ls + r;                                  \
        T *mt = (T *)(ms + r);                                                               \
        for (ptrdiff_t i = 0; i < r; i++) {                                                  \
            T *zi = z + i * k;                                                               \
            T m = -INFINITY;                                                                 \
            for (ptrdiff_t j = 0; j < k; j++) {                                              \
                T v = zi[j] + bias[j];                                                       \
                zi[j] = v;                                                                   \
                m = v > m ? v : m;                                                           \
            }                                                                                \
            mt[i] = m;                                                                       \
        }                                                                                    \
        for (ptrdiff_t i = 0; i < r; i++) ms[i] = (double)mt[i];                             \
        for (ptrdiff_t j = 0; j < k; j++)                                                    \
            for (ptrdiff_t i = 0; i < r; i++) e[j * r + i] = (double)z[i * k + j] - ms[i];   \
        for (ptrdiff_t i = 0; i < r * k; i++) e[i] = exp(e[i]);                              \
        for (ptrdiff_t i = 0; i < r; i++) rs[i] = 0;                                         \
        for (ptrdiff_t j = 0; j < k; j++)                                                    \
            for (ptrdiff_t i = 0; i < r; i++) rs[i] += e[j * r + i];                         \
        for (ptrdiff_t i = 0; i < r; i++) ls[i] = log(rs[i]);                                \
        for (ptrdiff_t i = 0; i < r; i++) {                                                  \
            ls[i] = ms[i] + ls[i];                                                           \
            rs[i] = 1.0 / rs[i];                                                             \
            ms[i] = 0;                                                                       \
        }                                                                                    \
        for (ptrdiff_t j = 0; j < k; j++) {                                                  \
            T dbj = 0;                                                                       \
            for (ptrdiff_t i = 0; i < r; i++) {                                              \
                double tj = (double)t[i * k + j];                                            \
                /* classes without target weight never meet lse - z = inf (0 * inf) */      \
                double d = tj * (ls[i] - (double)z[i * k + j]);                              \
                ms[i] += tj != 0 ? d : 0.0;                                                  \
                T v = (T)((e[j * r + i] * rs[i] - tj) * inv_r);                              \
                g[i * k + j] = v;                                                            \
                dbj += v;                                                                    \
            }                                                                                \
            db[j] = dbj;                                                                     \
        }                                                                                    \
        for (ptrdiff_t i = 0; i < r; i++) total += ms[i];                                    \
        return total;                                                                        \
    }

FG_TRAIN_DEFINE(float, _f32, sqrtf)
FG_TRAIN_DEFINE(double, _f64, sqrt)
#undef FG_TRAIN_DEFINE

/* A gradient's sum of squares for its norm (history's grad_norm, clip_norm): float32
 * squares summed in 32 float lanes over blocks of 256 elements (8 terms a lane), each
 * block's lanes then joined into 32 double lanes. Half the instructions of the double
 * form (no conversion of every element): 4,810 gradients of the 64-64-10 net 516 -> 225
 * ns, ~3% of its step. Each lane's 8 terms are positive, so the block's float rounding
 * stays within ~8 ulp (5e-7 relative) of the double sum. A non-finite result (a float
 * square or block overflows at 3.4e38, or a non-finite element) is redone in double, so
 * only a non-finite gradient gives inf or NaN, as fg_train_sumsq does. The penalty of
 * scikit-learn's L2 keeps fg_train_sumsq: it is part of the loss. */
#define FG_TRAIN_GRAD_BLOCK 256
static FG_CLONES double fg_train_grad_sumsq_f32(const float *a, ptrdiff_t n) {
    double acc[FG_TRAIN_LANES] = {0}, s = 0;
    ptrdiff_t i = 0;
    for (; i + FG_TRAIN_GRAD_BLOCK <= n; i += FG_TRAIN_GRAD_BLOCK) {
        float part[FG_TRAIN_LANES] = {0};
        for (int b = 0; b < FG_TRAIN_GRAD_BLOCK; b += FG_TRAIN_LANES)
            for (int j = 0; j < FG_TRAIN_LANES; j++) {
                float v = a[i + b + j];
                part[j] += v * v;
            }
        for (int j = 0; j < FG_TRAIN_LANES; j++) acc[j] += (double)part[j];
    }
    for (; i + FG_TRAIN_LANES <= n; i += FG_TRAIN_LANES)
        for (int j = 0; j < FG_TRAIN_LANES; j++) {
            double v = (double)a[i + j];
            acc[j] += v * v;
        }
    for (; i < n; i++) {
        double v = (double)a[i];
        s += v * v;
    }
    for (int j = 0; j < FG_TRAIN_LANES; j++) s += acc[j];
    return isfinite(s) ? s : fg_train_sumsq_f32(a, n);
}
/* float64 gradients: the exact form (no wider type to gain from) */
static inline double fg_train_grad_sumsq_f64(const double *a, ptrdiff_t n) {
    return fg_train_sumsq_f64(a, n);
}

#endif /* FASTGRAD_TRAIN_IMPL_H */
