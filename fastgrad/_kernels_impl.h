/* Kernels for one float type; included by _kernels_simd.h with FG_T = float, then double
 * (no include guard on purpose). FG(name) appends the type's suffix (_f32, _f64). */

#define FG(name) FG_CAT(name, FG_SUFFIX)
#define T FG_T
#define C(v) ((T)(v))

/* ---- scalar formulas, one per line of scalar_math.py ------------------------------- */

/* 1 / (1 + exp(-x)) for x >= 0, z / (1 + z) with z = exp(x) otherwise: one exp(-|x|)
 * (float: fg_sigmoid_s's inline exp; double: fg_sigmoid_d's libmvec one). */
static inline T FG(fg_sigmoid_value)(T x) { return (T)FG_SIGMOID(x); }

static inline T FG(identity_f)(T x, T a, T b) { (void)a; (void)b; return x; }
static inline T FG(identity_b)(T s, T g, T a, T b) { (void)s; (void)a; (void)b; return g; }

/* a = threshold; NaN stays NaN. b != 0: straight-through estimator. */
static inline T FG(binary_step_f)(T x, T a, T b) {
    (void)b;
    return x >= a ? C(1) : (x < a ? C(0) : x);
}
static inline T FG(binary_step_b)(T s, T g, T a, T b) { (void)s; (void)a; return b != 0 ? g : C(0); }

static inline T FG(sigmoid_f)(T x, T a, T b) { (void)a; (void)b; return FG(fg_sigmoid_value)(x); }
static inline T FG(sigmoid_b)(T y, T g, T a, T b) { (void)a; (void)b; return g * y * (C(1) - y); }

static inline T FG(tanh_f)(T x, T a, T b) { (void)a; (void)b; return FG_TANH(x); }
static inline T FG(tanh_b)(T y, T g, T a, T b) { (void)a; (void)b; return g * (C(1) - y * y); }

/* relu'(0) = 0; a NaN input gives NaN (0 if x < 0 else x keeps NaN). */
static inline T FG(relu_f)(T x, T a, T b) { (void)a; (void)b; return x < 0 ? C(0) : x; }
static inline T FG(relu_b)(T x, T g, T a, T b) {
    (void)a; (void)b;
    return x > 0 ? g : (x <= 0 ? C(0) : x);
}

static inline T FG(leaky_relu_f)(T x, T a, T b) { (void)b; return x < 0 ? a * x : x; }
static inline T FG(leaky_relu_b)(T x, T g, T a, T b) {
    (void)b;
    return x >= 0 ? g : (x < 0 ? a * g : x);
}

/* expm1/exp of min(x, 0), the min keeping NaN: no overflow for large positive x. */
static inline T FG(elu_f)(T x, T a, T b) {
    (void)b;
    T e = FG_EXPM1(x > 0 ? C(0) : x);
    return x > 0 ? x : a * e;
}
static inline T FG(elu_b)(T x, T g, T a, T b) {
    (void)b;
    T e = FG_EXP_NONPOS(x >= 0 ? C(0) : x); /* float: the inline exp */
    return x >= 0 ? g : g * a * e;
}

/* a = beta; in double (see fg_swish_fwd_d), but beta = 1 (silu) for float from a float
 * exp (fg_swish1_fwd_s): the choice is made once per call. */
static inline T FG(swish_beta_f)(T x, T a, T b) { (void)b; return (T)fg_swish_fwd_d(x, a); }
static inline T FG(swish_beta_b)(T x, T g, T a, T b) {
    (void)b;
    return (T)fg_swish_bwd_d(x, g, a);
}
static inline T FG(swish_one_f)(T x, T a, T b) { (void)a; (void)b; return FG_SWISH1_FWD(x); }
static inline T FG(swish_one_b)(T x, T g, T a, T b) {
    (void)a; (void)b;
    return FG_SWISH1_BWD(x, g);
}

/* exact gelu: in float for float (fg_gelu_exact_fwd_s, fg_x_ncdf_slope_s), in double for
 * double */
static inline T FG(gelu_exact_f)(T x, T a, T b) { (void)a; (void)b; return (T)FG_GELU_EXACT_FWD(x); }
static inline T FG(gelu_exact_b)(T x, T g, T a, T b) {
    (void)a; (void)b;
    return (T)FG_GELU_EXACT_BWD(x, g);
}
static inline T FG(gelu_tanh_f)(T x, T a, T b) { (void)a; (void)b; return (T)fg_gelu_tanh_fwd_d(x); }
static inline T FG(gelu_tanh_b)(T x, T g, T a, T b) {
    (void)a; (void)b;
    return (T)fg_gelu_tanh_bwd_d(x, g);
}

/* log(1 + exp(x)) = log1p(exp(-|x|)) + max(x, 0) (float: fg_softplus_tail_s) */
static inline T FG(softplus_f)(T x, T a, T b) {
    (void)a; (void)b;
    return (T)FG_SOFTPLUS_TAIL(x) + (x < 0 ? C(0) : x);
}
static inline T FG(softplus_b)(T x, T g, T a, T b) {
    (void)a; (void)b;
    return g * FG(fg_sigmoid_value)(x);
}

static inline T FG(selu_f)(T x, T a, T b) {
    (void)a; (void)b;
    T e = FG_EXPM1(x > 0 ? C(0) : x);
    return x > 0 ? C(FG_SELU_SCALE) * x : C(FG_SELU_SCALE * FG_SELU_ALPHA) * e;
}
static inline T FG(selu_b)(T x, T g, T a, T b) {
    (void)a; (void)b;
    T e = FG_EXP_NONPOS(x >= 0 ? C(0) : x);
    return x >= 0 ? C(FG_SELU_SCALE) * g : g * C(FG_SELU_SCALE) * C(FG_SELU_ALPHA) * e;
}

/* ---- loops ---------------------------------------------------------------------------
 * Per activation: the vectorized bodies (target_clones) over whole FG_BLOCKs, and plain
 * wrappers that run the ragged tail through the same body on a padded copy. */

typedef void (*FG(fg_forward_fn))(const T *, T *, ptrdiff_t, T, T);
typedef void (*FG(fg_backward_fn))(const T *, const T *, T *, ptrdiff_t, T, T);
typedef void (*FG(fg_bias_forward_fn))(T *, const T *, T *, ptrdiff_t, T, T);
typedef void (*FG(fg_backward_colsum_fn))(const T *, const T *, T *, T *, ptrdiff_t, T, T);

#define FG_LOOPS(NAME)                                                                     \
    static FG_MATH_CLONES void FG(NAME##_fwd_body)(const T *x, T *y, ptrdiff_t n, T a,     \
                                                   T b) {                                  \
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) y[i] = FG(NAME##_f)(x[i], a, b);         \
    }                                                                                      \
    static FG_MATH_CLONES void FG(NAME##_bwd_body)(const T *s, const T *g, T *out,         \
                                                   ptrdiff_t n, T a, T b) {                \
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) out[i] = FG(NAME##_b)(s[i], g[i], a, b); \
    }                                                                                      \
    /* z = pre + bias; pre = z (unless pre is out); out = f(z) */                          \
    static FG_MATH_CLONES void FG(NAME##_bias_body)(T *pre, const T *bias, T *out,         \
                                                    ptrdiff_t n, T a, T b) {               \
        if (pre == out) {                                                                  \
            FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) out[i] =                            \
                FG(NAME##_f)(out[i] + bias[i], a, b);                                      \
        } else {                                                                           \
            FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                   \
                T z = pre[i] + bias[i];                                                    \
                pre[i] = z;                                                                \
                out[i] = FG(NAME##_f)(z, a, b);                                            \
            }                                                                              \
        }                                                                                  \
    }                                                                                      \
    /* out = f'(s) g; colsum += out */                                                     \
    static FG_MATH_CLONES void FG(NAME##_colsum_body)(const T *s, const T *g, T *out,      \
                                                      T *colsum, ptrdiff_t n, T a, T b) {  \
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) {                                       \
            T v = FG(NAME##_b)(s[i], g[i], a, b);                                          \
            out[i] = v;                                                                    \
            colsum[i] += v;                                                                \
        }                                                                                  \
    }                                                                                      \
    static void FG(NAME##_forward)(const T *x, T *y, ptrdiff_t n, T a, T b) {              \
        ptrdiff_t nb = n - n % FG_BLOCK, r = n - nb;                                       \
        if (nb) FG(NAME##_fwd_body)(x, y, nb, a, b);                                       \
        if (r) {                                                                           \
            T xt[FG_BLOCK] = {0}, yt[FG_BLOCK];                                            \
            memcpy(xt, x + nb, (size_t)r * sizeof(T));                                     \
            FG(NAME##_fwd_body)(xt, yt, FG_BLOCK, a, b);                                   \
            memcpy(y + nb, yt, (size_t)r * sizeof(T));                                     \
        }                                                                                  \
    }                                                                                      \
    static void FG(NAME##_backward)(const T *s, const T *g, T *out, ptrdiff_t n, T a,      \
                                    T b) {                                                 \
        ptrdiff_t nb = n - n % FG_BLOCK, r = n - nb;                                       \
        if (nb) FG(NAME##_bwd_body)(s, g, out, nb, a, b);                                  \
        if (r) {                                                                           \
            T st[FG_BLOCK] = {0}, gt[FG_BLOCK] = {0}, ot[FG_BLOCK];                        \
            memcpy(st, s + nb, (size_t)r * sizeof(T));                                     \
            memcpy(gt, g + nb, (size_t)r * sizeof(T));                                     \
            FG(NAME##_bwd_body)(st, gt, ot, FG_BLOCK, a, b);                               \
            memcpy(out + nb, ot, (size_t)r * sizeof(T));                                   \
        }                                                                                  \
    }                                                                                      \
    static void FG(NAME##_bias_forward)(T *pre, const T *bias, T *out, ptrdiff_t n, T a,   \
                                        T b) {                                             \
        ptrdiff_t nb = n - n % FG_BLOCK, r = n - nb;                                       \
        if (nb) FG(NAME##_bias_body)(pre, bias, out, nb, a, b);                            \
        if (r) {                                                                           \
            T pt[FG_BLOCK] = {0}, bt[FG_BLOCK] = {0}, ot[FG_BLOCK];                        \
            memcpy(pt, pre + nb, (size_t)r * sizeof(T));                                   \
            memcpy(bt, bias + nb, (size_t)r * sizeof(T));                                  \
            FG(NAME##_bias_body)(pt, bt, ot, FG_BLOCK, a, b);                              \
            if (pre != out) memcpy(pre + nb, pt, (size_t)r * sizeof(T));                   \
            memcpy(out + nb, ot, (size_t)r * sizeof(T));                                   \
        }                                                                                  \
    }                                                                                      \
    static void FG(NAME##_backward_colsum)(const T *s, const T *g, T *out, T *colsum,      \
                                           ptrdiff_t n, T a, T b) {                        \
        ptrdiff_t nb = n - n % FG_BLOCK, r = n - nb;                                       \
        if (nb) FG(NAME##_colsum_body)(s, g, out, colsum, nb, a, b);                       \
        if (r) {                                                                           \
            T st[FG_BLOCK] = {0}, gt[FG_BLOCK] = {0}, ot[FG_BLOCK], ct[FG_BLOCK] = {0};    \
            memcpy(st, s + nb, (size_t)r * sizeof(T));                                     \
            memcpy(gt, g + nb, (size_t)r * sizeof(T));                                     \
            memcpy(ct, colsum + nb, (size_t)r * sizeof(T));                                \
            FG(NAME##_colsum_body)(st, gt, ot, ct, FG_BLOCK, a, b);                        \
            memcpy(out + nb, ot, (size_t)r * sizeof(T));                                   \
            memcpy(colsum + nb, ct, (size_t)r * sizeof(T));                                \
        }                                                                                  \
    }

FG_LOOPS(identity)
FG_LOOPS(binary_step)
FG_LOOPS(sigmoid)
FG_LOOPS(tanh)
FG_LOOPS(relu)
FG_LOOPS(leaky_relu)
FG_LOOPS(elu)
FG_LOOPS(swish_beta)
FG_LOOPS(swish_one)
FG_LOOPS(gelu_exact)
FG_LOOPS(gelu_tanh)
FG_LOOPS(softplus)
FG_LOOPS(selu)

/* An activation with two families of loops, one chosen once per call by its parameters
 * (TEST, on a and b): NAME's four entry points call FIRST's where TEST holds, else
 * SECOND's. */
#define FG_CHOOSE(NAME, TEST, FIRST, SECOND)                                                 \
    static void FG(NAME##_forward)(const T *x, T *y, ptrdiff_t n, T a, T b) {               \
        if (TEST) FG(FIRST##_forward)(x, y, n, a, b);                                        \
        else FG(SECOND##_forward)(x, y, n, a, b);                                            \
    }                                                                                        \
    static void FG(NAME##_backward)(const T *s, const T *g, T *out, ptrdiff_t n, T a,       \
                                    T b) {                                                   \
        if (TEST) FG(FIRST##_backward)(s, g, out, n, a, b);                                  \
        else FG(SECOND##_backward)(s, g, out, n, a, b);                                      \
    }                                                                                        \
    static void FG(NAME##_bias_forward)(T *pre, const T *bias, T *out, ptrdiff_t n, T a,    \
                                        T b) {                                               \
        if (TEST) FG(FIRST##_bias_forward)(pre, bias, out, n, a, b);                         \
        else FG(SECOND##_bias_forward)(pre, bias, out, n, a, b);                             \
    }                                                                                        \
    static void FG(NAME##_backward_colsum)(const T *s, const T *g, T *out, T *colsum,       \
                                           ptrdiff_t n, T a, T b) {                          \
        if (TEST) FG(FIRST##_backward_colsum)(s, g, out, colsum, n, a, b);                   \
        else FG(SECOND##_backward_colsum)(s, g, out, colsum, n, a, b);                       \
    }

/* swish: a = beta; beta = 1 has its own loops (fg_swish1_fwd_s). */
FG_CHOOSE(swish, a == 1, swish_one, swish_beta)
/* gelu: a = 0 exact (erfc), a = 1 the tanh form. */
FG_CHOOSE(gelu, a == 0, gelu_exact, gelu_tanh)

#define FG_ENTRY(NAME, SUFFIX) FG(NAME##SUFFIX)
#define FG_TABLE(SUFFIX)                                                                   \
    {FG_ENTRY(identity, SUFFIX), FG_ENTRY(binary_step, SUFFIX), FG_ENTRY(sigmoid, SUFFIX),  \
     FG_ENTRY(tanh, SUFFIX), FG_ENTRY(relu, SUFFIX), FG_ENTRY(leaky_relu, SUFFIX),          \
     FG_ENTRY(elu, SUFFIX), FG_ENTRY(swish, SUFFIX), FG_ENTRY(gelu, SUFFIX),                \
     FG_ENTRY(softplus, SUFFIX), FG_ENTRY(selu, SUFFIX), NULL, NULL}

static const FG(fg_forward_fn) FG(fg_forward_table)[FG_NUM_KERNELS] = FG_TABLE(_forward);
static const FG(fg_backward_fn) FG(fg_backward_table)[FG_NUM_KERNELS] = FG_TABLE(_backward);
static const FG(fg_bias_forward_fn) FG(fg_bias_forward_table)[FG_NUM_KERNELS] =
    FG_TABLE(_bias_forward);
static const FG(fg_backward_colsum_fn) FG(fg_backward_colsum_table)[FG_NUM_KERNELS] =
    FG_TABLE(_backward_colsum);

/* ---- row kernels (softmax, log_softmax), along the last axis ---------------------------
 * The row max ignores NaN: a NaN anywhere in the row still makes the sum, hence every
 * output of the row, NaN (as the reference does). Sums accumulate in double.
 *
 * Each pass is its own loop over the row (in L1 at the sizes that matter): the exp pass
 * calls libmvec's vector exp, and a call clobbers every vector register, so a running sum
 * in the same loop would be spilled and reloaded around each call (measured 1.5x slower
 * than exp-and-store followed by a separate sum). The max and the sums keep FG_MAX_LANES /
 * FG_SUM_LANES independent accumulators, written out as arrays that gcc maps to vector
 * registers: a single running max or sum is a serial chain (gcc may not reorder floating
 * point without -ffast-math), ~4 cycles per element. Lanes fixed in the source, not by
 * the vector width, make a row's sums the same in every ISA variant. */

#define FG_STR_(x) #x
#define FG_STR(x) FG_STR_(x)
#ifdef _OPENMP
#define FG_SIMD_SUM(var) _Pragma(FG_STR(omp simd reduction(+:var)))
#else
#define FG_SIMD_SUM(var)
#endif
#define FG_MAX_LANES 32 /* 16 lanes measured 5x slower with gcc 12 */
#define FG_SUM_LANES 16
#define FG_ROW_CHUNK 256 /* exp(x - m) buffered on the stack (libmvec path, no y) */
#define FG_ROW_BUFFER 2048 /* softmax rows up to this long go through a stack buffer */

/* Elements before y + j is 64-byte aligned (at most n). Passes that only store
 * arithmetic of their inputs run these separately so that the vector loop's stores do not
 * split across cache lines (numpy's large arrays start 16 bytes past a page); the results
 * are the same either way (no FMA contraction, no library call). */
static inline ptrdiff_t FG(fg_align_peel)(const T *y, ptrdiff_t n) {
    ptrdiff_t p = (ptrdiff_t)((64 - ((size_t)y & 63)) & 63) / (ptrdiff_t)sizeof(T);
    return ((size_t)y % sizeof(T) != 0 || p > n) ? n : p;
}

static inline T FG(fg_row_max)(const T *x, ptrdiff_t n) {
    T acc[FG_MAX_LANES], m = C(-INFINITY);
    ptrdiff_t j = 0;
    for (int l = 0; l < FG_MAX_LANES; l++) acc[l] = C(-INFINITY);
    /* The lanes from a 64-byte boundary on (the max is exact in any order; only the sign
     * of a zero max can depend on it). */
    for (ptrdiff_t p = FG(fg_align_peel)(x, n); j < p; j++) m = x[j] > m ? x[j] : m;
    for (; j + FG_MAX_LANES <= n; j += FG_MAX_LANES)
        for (int l = 0; l < FG_MAX_LANES; l++) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    for (int l = 0; l < FG_MAX_LANES; l++) m = acc[l] > m ? acc[l] : m;
    return m;
}

/* sum of y[0..n) in double, FG_SUM_LANES partial sums added in a fixed order. */
static inline double FG(fg_row_sum)(const T *y, ptrdiff_t n) {
    double acc[FG_SUM_LANES], total = 0;
    ptrdiff_t j = 0;
    for (int l = 0; l < FG_SUM_LANES; l++) acc[l] = 0;
    for (; j + FG_SUM_LANES <= n; j += FG_SUM_LANES)
        for (int l = 0; l < FG_SUM_LANES; l++) acc[l] += (double)y[j + l];
    for (int l = 0; l < FG_SUM_LANES; l++) total += acc[l];
    for (; j < n; j++) total += (double)y[j];
    return total;
}

/* The first j with x[j] == m, or -1: whole blocks tested at once (an early-exit loop
 * does not vectorize), then the element within the block. */
static inline ptrdiff_t FG(fg_row_find)(const T *x, ptrdiff_t n, T m) {
    ptrdiff_t j = 0;
    for (; j + FG_MAX_LANES <= n; j += FG_MAX_LANES) {
        int hit = 0;
        for (int l = 0; l < FG_MAX_LANES; l++) hit |= x[j + l] == m;
        if (hit) break;
    }
    for (; j < n; j++) {
        if (x[j] == m) return j;
    }
    return -1;
}

/* sum over j < n of exp(x[j] - m), in double, leaving out j == skip (skip < 0: none);
 * the terms are also stored in y[j] (y[skip] = 0) unless y is NULL. x - m <= 0 (or NaN):
 * m is the row's max.
 *
 * float: the exp is fg_exp_nonpos_s, inline arithmetic, so the terms are summed in the
 * same loop without spills: in FG_EXP_LANES float lanes over FG_EXP_CHUNK elements, which
 * then join FG_EXP_LANES double lanes. No conversion per element, and each float lane sums
 * only FG_EXP_CHUNK / FG_EXP_LANES positive terms (a few units of float rounding at most,
 * whatever the row's length). The lanes are fixed in the source, so every ISA variant gives
 * the same sums. Rows of 1024 in cache, one thread (Zen 4): softmax 0.49 -> 0.38 ns an
 * element, log_softmax 0.57 -> 0.45 (the libmvec exp pass, then a double sum pass).
 * double: libmvec's vector exp in a loop of its own (a call clobbers the vector
 * registers, so a running sum beside it would be spilled), then fg_row_sum; through a
 * stack buffer when y is NULL. */
#define FG_EXP_LANES 32
#define FG_EXP_CHUNK 256
static FG_ROW_INLINE double FG(fg_row_exp_into)(const T *x, T *y, ptrdiff_t n, T m,
                                                ptrdiff_t skip) {
    FG_IVDEP for (ptrdiff_t j = 0; j < n; j++) y[j] = FG_EXP(x[j] - m);
    if (skip >= 0 && skip < n) y[skip] = C(0);
    return FG(fg_row_sum)(y, n);
}

static FG_ROW_INLINE double FG(fg_row_exp_sum_libm)(const T *x, T *y, ptrdiff_t n, T m,
                                                    ptrdiff_t skip) {
    if (y) return FG(fg_row_exp_into)(x, y, n, m, skip);
    _Alignas(64) T buf[FG_ROW_CHUNK];
    double total = 0;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FG_ROW_CHUNK) {
        ptrdiff_t len = n - j0 < FG_ROW_CHUNK ? n - j0 : FG_ROW_CHUNK;
        total += FG(fg_row_exp_into)(x + j0, buf, len, m, skip - j0);
    }
    return total;
}
#if FG_EXP_NONPOS_INLINE
/* blocks x FG_EXP_LANES terms of fg_row_exp_sum, their float lane sums added to dacc's
 * double lanes */
static FG_ROW_INLINE void FG(fg_exp_blocks)(const T *x, T *y, T m, ptrdiff_t skip,
                                            ptrdiff_t blocks, double *dacc) {
    T acc[FG_EXP_LANES];
    for (int l = 0; l < FG_EXP_LANES; l++) acc[l] = C(0);
    for (ptrdiff_t k = 0; k < blocks * FG_EXP_LANES; k += FG_EXP_LANES) {
        FG_IVDEP for (int l = 0; l < FG_EXP_LANES; l++) {
            T e = FG_EXP_NONPOS(x[k + l] - m);
            e = k + l == skip ? C(0) : e;
            if (y) y[k + l] = e;
            acc[l] += e;
        }
    }
    /* vector adds into double lanes, not a serial chain of 32 scalar ones per chunk */
    for (int l = 0; l < FG_EXP_LANES; l++) dacc[l] += (double)acc[l];
}

/* fg_exp_blocks, with the select for skip only where skip falls (a copy without it) */
static FG_ROW_INLINE void FG(fg_exp_blocks_skip)(const T *x, T *y, T m, ptrdiff_t skip,
                                                 ptrdiff_t blocks, double *dacc) {
    if (skip >= 0 && skip < blocks * FG_EXP_LANES)
        FG(fg_exp_blocks)(x, y, m, skip, blocks, dacc);
    else
        FG(fg_exp_blocks)(x, y, m, -1, blocks, dacc);
}

static FG_ROW_INLINE double FG(fg_row_exp_sum)(const T *x, T *y, ptrdiff_t n, T m,
                                               ptrdiff_t skip) {
    enum { CHUNK_BLOCKS = FG_EXP_CHUNK / FG_EXP_LANES };
    /* short rows: the fixed cost per row (the lanes, the padded block) outweighs it */
    if (n < FG_EXP_CHUNK) return FG(fg_row_exp_sum_libm)(x, y, n, m, skip);
    double dacc[FG_EXP_LANES];
    ptrdiff_t j = 0;
    for (int l = 0; l < FG_EXP_LANES; l++) dacc[l] = 0;
    for (; j + FG_EXP_CHUNK <= n; j += FG_EXP_CHUNK)
        FG(fg_exp_blocks_skip)(x + j, y ? y + j : NULL, m, skip - j, CHUNK_BLOCKS, dacc);
    ptrdiff_t blocks = (n - j) / FG_EXP_LANES;
    if (blocks > 0) {
        FG(fg_exp_blocks_skip)(x + j, y ? y + j : NULL, m, skip - j, blocks, dacc);
        j += blocks * FG_EXP_LANES;
    }
    if (j < n) {
        /* The last n - j < FG_EXP_LANES terms through one padded block, so that short
         * rows vectorize too. -inf pads give exp(-inf - m) = 0, except when m = -inf,
         * where every term of the row is NaN anyway. */
        _Alignas(64) T xb[FG_EXP_LANES], yb[FG_EXP_LANES];
        for (int l = 0; l < FG_EXP_LANES; l++) xb[l] = j + l < n ? x[j + l] : C(-INFINITY);
        FG(fg_exp_blocks_skip)(xb, yb, m, skip - j, 1, dacc);
        if (y)
            for (ptrdiff_t l = 0; l < n - j; l++) y[j + l] = yb[l];
    }
    /* the lanes pairwise, halves at a time: vector adds, not a serial chain of 32 */
    for (int w = FG_EXP_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) dacc[l] += dacc[l + w];
    return dacc[0];
}
#else
static FG_ROW_INLINE double FG(fg_row_exp_sum)(const T *x, T *y, ptrdiff_t n, T m,
                                               ptrdiff_t skip) {
    return FG(fg_row_exp_sum_libm)(x, y, n, m, skip);
}
#endif

/* fg_row_exp_sum with the (first) max element's term, exp(m - m) = 1 (NaN when m is
 * infinite), added apart in double: in a partial sum (a float32 lane, or a float64 one)
 * that 1 would round away every term under half its ulp, all of the rest when the max
 * dominates the row (float32 softmax 7.3 ulp off at the max, float64 110 at 4097
 * columns). y[jm] is set last: y may be x (in place), whose x[jm] the sum overwrites. */
static FG_ROW_INLINE double FG(fg_row_exp_sum_max_apart)(const T *x, T *y, ptrdiff_t n,
                                                         T m) {
    ptrdiff_t jm = FG(fg_row_find)(x, n, m);
    double total = FG(fg_row_exp_sum)(x, y, n, m, jm);
    if (jm >= 0) {
        T e = FG_EXP(m - m);
        y[jm] = e;
        total += (double)e;
    }
    return total;
}

static FG_ROW_INLINE void FG(softmax_row_forward)(const T *x, T *y, ptrdiff_t n,
                                                   int stream) {
    T m = FG(fg_row_max)(x, n);
    if (n <= FG_ROW_BUFFER) {
        /* The terms go to an aligned stack buffer and y is written once (not stored,
         * then rescaled in place): numpy's large arrays start 16 bytes past a page, so
         * 64-byte stores to y split across two cache lines (such arrays measured 1.3x
         * slower than aligned ones, rows of 1024 from DRAM, before this buffer). */
        _Alignas(64) T buf[FG_ROW_BUFFER];
        T inv = (T)(1.0 / FG(fg_row_exp_sum_max_apart)(x, buf, n, m));
        if (stream) { /* see fg_stream_copy; the caller fences */
            FG_IVDEP for (ptrdiff_t j = 0; j < n; j++) buf[j] *= inv;
            fg_stream_copy(y, buf, (size_t)n * sizeof(T));
            return;
        }
        ptrdiff_t p = FG(fg_align_peel)(y, n);
        for (ptrdiff_t j = 0; j < p; j++) y[j] = buf[j] * inv;
        FG_IVDEP for (ptrdiff_t j = p; j < n; j++) y[j] = buf[j] * inv;
        return;
    }
    /* in place (y == x) too: x[j] is read before y[j] */
    T inv = (T)(1.0 / FG(fg_row_exp_sum_max_apart)(x, y, n, m));
    FG_IVDEP for (ptrdiff_t j = 0; j < n; j++) y[j] *= inv;
}

static FG_ROW_INLINE void FG(log_softmax_row_forward)(const T *x, T *y, ptrdiff_t n) {
    T m = FG(fg_row_max)(x, n);
    ptrdiff_t jm = FG(fg_row_find)(x, n, m); /* the (first) max element */
    /* log-sum-exp = log1p(sum of the other terms): log(1 + small) would lose the small
     * part's digits, and y at the max element is exactly -lse. The max's own term is
     * added as exp(x - m) - 1: 0 when m is finite, NaN when it is infinite (inf - inf),
     * as the reference gives. The terms are not stored in y: y may be x (in place), and
     * x is read again by the last pass. */
    double rest = FG(fg_row_exp_sum)(x, NULL, n, m, jm);
    if (jm >= 0) rest += (double)FG_EXP(x[jm] - m) - 1.0;
    T lse = (T)log1p(rest);
    ptrdiff_t p = FG(fg_align_peel)(y, n);
    for (ptrdiff_t j = 0; j < p; j++) y[j] = (x[j] - m) - lse;
    FG_IVDEP for (ptrdiff_t j = p; j < n; j++) y[j] = (x[j] - m) - lse;
}

/* grad_x = y * (g - sum(g * y)) */
static FG_ROW_INLINE void FG(softmax_row_backward)(const T *y, const T *g, T *out, ptrdiff_t n) {
    double dot = 0;
    FG_SIMD_SUM(dot) for (ptrdiff_t j = 0; j < n; j++) dot += (double)g[j] * y[j];
    T d = (T)dot;
    FG_IVDEP for (ptrdiff_t j = 0; j < n; j++) out[j] = y[j] * (g[j] - d);
}

/* grad_x = g - exp(y) * sum(g) */
static FG_ROW_INLINE void FG(log_softmax_row_backward)(const T *y, const T *g, T *out,
                                                   ptrdiff_t n) {
    double total = 0;
    FG_SIMD_SUM(total) for (ptrdiff_t j = 0; j < n; j++) total += g[j];
    T t = (T)total;
    /* float: the inline exp (y is any float the caller saved, not only log-probabilities) */
    FG_IVDEP for (ptrdiff_t j = 0; j < n; j++) out[j] = g[j] - FG_EXP_INLINE(y[j]) * t;
}

/* Rows [0, rows) of a C-contiguous (rows, cols) block: the row bodies above inlined into
 * one function per instruction set (FG_ROWS_VARIANT), picked at run time. */
#define FG_ROWS_VARIANT(ATTR, SUFFIX)                                                        \
    static ATTR void FG(fg_rows_forward##SUFFIX)(int k, const T *x, T *y, ptrdiff_t rows,   \
                                                 ptrdiff_t cols, int stream) {             \
        for (ptrdiff_t i = 0; i < rows; i++) {                                             \
            if (k == FG_SOFTMAX)                                                           \
                FG(softmax_row_forward)(x + i * cols, y + i * cols, cols, stream);         \
            else FG(log_softmax_row_forward)(x + i * cols, y + i * cols, cols);            \
        }                                                                                  \
    }                                                                                      \
    static ATTR void FG(fg_rows_backward##SUFFIX)(int k, const T *y, const T *g, T *out,   \
                                                  ptrdiff_t rows, ptrdiff_t cols) {        \
        for (ptrdiff_t i = 0; i < rows; i++) {                                             \
            const T *yi = y + i * cols, *gi = g + i * cols;                                \
            if (k == FG_SOFTMAX) FG(softmax_row_backward)(yi, gi, out + i * cols, cols);   \
            else FG(log_softmax_row_backward)(yi, gi, out + i * cols, cols);               \
        }                                                                                  \
    }

FG_ROWS_VARIANT(FG_ROWS_CLONES, _generic)
#if FG_ROWS_AVX512_VARIANT
FG_ROWS_VARIANT(FG_ROWS_AVX512, _avx512)
#endif

/* stream != 0: softmax's rows (up to FG_ROW_BUFFER long) are written with streaming
 * stores (the caller's choice, see fg_stream_copy); log_softmax ignores it. */
static void FG(fg_rows_forward)(int k, const T *x, T *y, ptrdiff_t rows, ptrdiff_t cols,
                                int stream) {
#if FG_ROWS_AVX512_VARIANT
    if (fg_cpu_avx512())
        FG(fg_rows_forward_avx512)(k, x, y, rows, cols, stream);
    else
#endif
        FG(fg_rows_forward_generic)(k, x, y, rows, cols, stream);
    if (stream) fg_stream_fence();
}

static void FG(fg_rows_backward)(int k, const T *y, const T *g, T *out, ptrdiff_t rows,
                                 ptrdiff_t cols) {
#if FG_ROWS_AVX512_VARIANT
    if (fg_cpu_avx512()) {
        FG(fg_rows_backward_avx512)(k, y, g, out, rows, cols);
        return;
    }
#endif
    FG(fg_rows_backward_generic)(k, y, g, out, rows, cols);
}

/* ---- entry points used by _kernels.pyx (k is validated there) ------------------------ */

/* stream != 0 (the caller's choice, see FG_STREAM_MIN_BYTES): the output is computed
 * FG_STREAM_CHUNK elements at a time into an L1 buffer and streamed out. Chunks are whole
 * FG_BLOCKs, so every element takes the same vector path as without streaming. */
#define FG_STREAM_CHUNK 1024

static void FG(fg_forward)(int k, const T *x, T *y, ptrdiff_t n, T a, T b, int stream) {
    if (!stream) {
        FG(fg_forward_table)[k](x, y, n, a, b);
        return;
    }
    T buf[FG_STREAM_CHUNK] FG_ALIGNED;
    for (ptrdiff_t i = 0; i < n; i += FG_STREAM_CHUNK) {
        ptrdiff_t m = n - i < FG_STREAM_CHUNK ? n - i : FG_STREAM_CHUNK;
        FG(fg_forward_table)[k](x + i, buf, m, a, b);
        fg_stream_copy(y + i, buf, (size_t)m * sizeof(T));
    }
    fg_stream_fence();
}

/* Backward passes are not streamed: measured, relu's ran 0.90-0.95x with streaming stores
 * (three streams, of which the read-for-ownership saved is the smaller part; the buffer
 * copy costs as much). */
static void FG(fg_backward)(int k, const T *s, const T *g, T *out, ptrdiff_t n, T a, T b) {
    FG(fg_backward_table)[k](s, g, out, n, a, b);
}

/* Dense layer, forward pass after the gemm: per row z = pre + bias, pre = z (unless pre
 * is out), out = f(z); row-wise activations: the bias pass, then the row kernel. */
static void FG(fg_bias_forward)(int k, T *pre, const T *bias, T *out, ptrdiff_t rows,
                                ptrdiff_t cols, T a, T b) {
    if (fg_kernel_rowwise[k]) {
        for (ptrdiff_t i = 0; i < rows; i++)
            FG(identity_bias_forward)(pre + i * cols, bias, pre + i * cols, cols, a, b);
        FG(fg_rows_forward)(k, pre, out, rows, cols, 0);
        return;
    }
    FG(fg_bias_forward_fn) f = FG(fg_bias_forward_table)[k];
    for (ptrdiff_t i = 0; i < rows; i++) f(pre + i * cols, bias, out + i * cols, cols, a, b);
}

/* Dense layer, backward pass before the gemms: g = f'(saved) grad (row-wise: the row
 * kernel), colsum = column sums of g (zeroed here). */
static void FG(fg_backward_colsum)(int k, const T *s, const T *grad, T *g, T *colsum,
                                   ptrdiff_t rows, ptrdiff_t cols, T a, T b) {
    memset(colsum, 0, (size_t)cols * sizeof(T));
    if (fg_kernel_rowwise[k]) {
        FG(fg_rows_backward)(k, s, grad, g, rows, cols);
        for (ptrdiff_t i = 0; i < rows; i++)
            FG(identity_backward_colsum)(g + i * cols, g + i * cols, g + i * cols, colsum, cols,
                                         a, b);
        return;
    }
    FG(fg_backward_colsum_fn) f = FG(fg_backward_colsum_table)[k];
    for (ptrdiff_t i = 0; i < rows; i++)
        f(s + i * cols, grad + i * cols, g + i * cols, colsum, cols, a, b);
}

/* ---- losses: pred and target (rows, cols) C-contiguous, the mean over the batch --------
 * Every operation in double, in the numpy reference's order (fastgrad/backends/
 * reference.py), each result rounded once to T; the loss is summed in double. Serial: a
 * training batch's output (batch x outputs) is far below the thread thresholds. */

/* The sum of the elementwise loss `k`'s terms over n elements. */
static FG_CLONES double FG(fg_loss_sum)(int k, const T *p, const T *t, ptrdiff_t n) {
    double total = 0;
    if (k == FG_LOSS_MSE) {
        FG_SIMD_SUM(total) for (ptrdiff_t i = 0; i < n; i++)
            total += fg_mse_value_d(p[i], t[i]);
    } else {
        FG_SIMD_SUM(total) for (ptrdiff_t i = 0; i < n; i++)
            total += fg_bce_value_d(p[i], t[i]);
    }
    return total;
}

/* out = d(term)/dp / count: the reference divides (it does not multiply by 1/count). */
static FG_CLONES void FG(fg_loss_grad)(int k, const T *p, const T *t, T *out, ptrdiff_t n,
                                       double count) {
    if (k == FG_LOSS_MSE) {
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (T)(fg_mse_grad_d(p[i], t[i]) / count);
    } else {
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++)
            out[i] = (T)(fg_bce_grad_d(p[i], t[i]) / count);
    }
}

/* Row max m and s = sum exp(z - m) of one row of logits. The max ignores NaN, but a NaN
 * (or an infinite max: inf - inf) still makes s NaN, hence the whole row's loss and
 * gradient NaN, as the reference gives. */
static FG_CLONES void FG(fg_row_lse)(const T *z, ptrdiff_t n, double *m_out, double *s_out) {
    double m = (double)FG(fg_row_max)(z, n), s = 0;
    FG_SIMD_SUM(s) for (ptrdiff_t j = 0; j < n; j++) s += exp((double)z[j] - m);
    *m_out = m;
    *s_out = s;
}

/* sum over rows of sum_k t_k (lse - z_k): classes without target weight are skipped, so
 * they never meet lse - z = inf (log(0) is never formed). */
static double FG(fg_ce_sum)(const T *z, const T *t, ptrdiff_t rows, ptrdiff_t cols) {
    double total = 0;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const T *zi = z + i * cols, *ti = t + i * cols;
        double m, s, row = 0;
        FG(fg_row_lse)(zi, cols, &m, &s);
        double lse = m + log(s);
        for (ptrdiff_t j = 0; j < cols; j++)
            row += ti[j] != 0 ? (double)ti[j] * (lse - (double)zi[j]) : 0.0;
        total += row;
    }
    return total;
}

/* out = (softmax(z) - t) / rows, softmax as exp(z - m) / s. out may be z or t itself:
 * a row's max and sum are taken before the row is written, element j read before j. */
static FG_CLONES void FG(fg_ce_row_grad)(const T *z, const T *t, T *out, ptrdiff_t n,
                                         double m, double s, double count) {
    FG_IVDEP for (ptrdiff_t j = 0; j < n; j++)
        out[j] = (T)((exp((double)z[j] - m) / s - (double)t[j]) / count);
}

/* out = (softmax(z) - t) / count per row: count the batch's rows (rows, or more when
 * these rows are one thread's part of a batch) */
static void FG(fg_ce_grad)(const T *z, const T *t, T *out, ptrdiff_t rows, ptrdiff_t cols,
                           double count) {
    for (ptrdiff_t i = 0; i < rows; i++) {
        double m, s;
        FG(fg_row_lse)(z + i * cols, cols, &m, &s);
        FG(fg_ce_row_grad)(z + i * cols, t + i * cols, out + i * cols, cols, m, s, count);
    }
}

/* The mean's divisor for a batch of `rows` rows: its rows (row-wise losses) or elements. */
static inline double FG(fg_loss_count)(int k, ptrdiff_t rows, ptrdiff_t cols) {
    return fg_loss_rowwise[k] ? (double)rows : (double)(rows * cols);
}

/* Entry points (k validated by the caller): the mean loss, and dL/dpred into out. The
 * fused epoch runner's threads each take a part of a batch's rows: fg_loss_total is the
 * numerator of the part's share of the mean, fg_loss_backward_part its rows of dL/dpred
 * for a batch of batch_rows rows (the same bits as fg_loss_backward gives them). */
static double FG(fg_loss_total)(int k, const T *p, const T *t, ptrdiff_t rows,
                                ptrdiff_t cols) {
    if (fg_loss_rowwise[k]) return FG(fg_ce_sum)(p, t, rows, cols);
    return FG(fg_loss_sum)(k, p, t, rows * cols);
}

static double FG(fg_loss_forward)(int k, const T *p, const T *t, ptrdiff_t rows,
                                  ptrdiff_t cols) {
    return FG(fg_loss_total)(k, p, t, rows, cols) / FG(fg_loss_count)(k, rows, cols);
}

static void FG(fg_loss_backward_part)(int k, const T *p, const T *t, T *out, ptrdiff_t rows,
                                      ptrdiff_t cols, ptrdiff_t batch_rows) {
    if (fg_loss_rowwise[k]) FG(fg_ce_grad)(p, t, out, rows, cols, (double)batch_rows);
    else FG(fg_loss_grad)(k, p, t, out, rows * cols, FG(fg_loss_count)(k, batch_rows, cols));
}

static void FG(fg_loss_backward)(int k, const T *p, const T *t, T *out, ptrdiff_t rows,
                                 ptrdiff_t cols) {
    FG(fg_loss_backward_part)(k, p, t, out, rows, cols, rows);
}

/* ---- optimizer updates: one pass over a flat parameter vector, in place ----------------
 * PyTorch's formulas as fastgrad/backends/reference.py evaluates them: each element
 * promoted to double, the operations in the same order (but for Adam's hoisted bias
 * corrections), the new state and parameter rounded once to T (the parameter from the
 * unrounded double state). Every
 * element reads all its inputs before it writes: an array may be passed twice (grad may
 * be an output), never partially overlap another. Serial (the update sits between the
 * gemms of a training step, where OpenMP threads would spin beside BLAS's pool). */

static FG_CLONES void FG(fg_sgd_update)(T *param, const T *grad, T *velocity, ptrdiff_t n,
                                        double lr, double momentum, double weight_decay,
                                        int nesterov) {
    if (momentum == 0) {
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) {
            double p = param[i];
            double g = (double)grad[i] + weight_decay * p;
            param[i] = (T)(p - lr * g);
        }
    } else {
        FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) {
            double p = param[i];
            double g = (double)grad[i] + weight_decay * p;
            double v = momentum * (double)velocity[i] + g;
            velocity[i] = (T)v;
            g = nesterov ? g + momentum * v : v;
            param[i] = (T)(p - lr * g);
        }
    }
}

/* decoupled (AdamW): p *= 1 - lr wd, else g += wd p. The bias corrections are hoisted
 * as PyTorch's own Adam does (step_size = lr / (1 - beta1^t), and 1 / sqrt(1 - beta2^t)
 * here as a factor): lr (m / bc1) / (sqrt(v / bc2) + eps) becomes
 * step_size m / (sqrt(v) inv_sqrt_bc2 + eps), one sqrt and one division per element
 * instead of three divisions (which made the loop compute-bound, ~1.6x slower); the
 * parameter is then within an ulp or two of the reference's, m and v are its bits. */
static FG_CLONES void FG(fg_adam_update)(T *param, const T *grad, T *m, T *v, ptrdiff_t n,
                                         double lr, double beta1, double beta2, double eps,
                                         double weight_decay, int decoupled,
                                         double step_size, double inv_sqrt_bc2) {
    double shrink = 1.0 - lr * weight_decay;
    FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) {
        double p = param[i], g = grad[i];
        if (decoupled) p = p * shrink;
        else g = g + weight_decay * p;
        double mi = beta1 * (double)m[i] + (1.0 - beta1) * g;
        double vi = beta2 * (double)v[i] + (1.0 - beta2) * g * g;
        m[i] = (T)mi;
        v[i] = (T)vi;
        param[i] = (T)(p - step_size * mi / (sqrt(vi) * inv_sqrt_bc2 + eps));
    }
}

static FG_CLONES void FG(fg_rmsprop_update)(T *param, const T *grad, T *square_avg,
                                            T *momentum_buf, ptrdiff_t n, double lr,
                                            double alpha, double eps, double weight_decay,
                                            double momentum) {
    FG_IVDEP for (ptrdiff_t i = 0; i < n; i++) {
        double p = param[i];
        double g = (double)grad[i] + weight_decay * p;
        double sq = alpha * (double)square_avg[i] + (1.0 - alpha) * g * g;
        square_avg[i] = (T)sq;
        double step = g / (sqrt(sq) + eps);
        if (momentum != 0) {
            step = momentum * (double)momentum_buf[i] + step;
            momentum_buf[i] = (T)step;
        }
        param[i] = (T)(p - lr * step);
    }
}

#undef T
#undef C
#undef FG
