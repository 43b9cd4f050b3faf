/* fastgrad's compiled elementwise and row kernels, in C so that gcc vectorizes them.
 *
 * Why C and not Cython loops: gcc calls glibc's vector math library (libmvec) for
 * exp/expm1/tanh/log1p/erfc only when the functions carry SIMD declarations, which glibc
 * makes only under -ffast-math (unsafe: it changes NaN behaviour). We redeclare them here,
 * and mark each loop with target_clones so that one portable build (no -march) dispatches
 * at load time to an AVX-512, AVX2 or baseline variant (../shared/DESIGN.md section 6).
 *
 * The scalar formulas mirror fastgrad/scalar_math.py one for one (same branches, same
 * stable forms, same NaN/inf handling); branches are written as selects over values
 * computed unconditionally on clamped inputs, because a "notinbranch" vector function
 * can only be called unconditionally.
 *
 * Determinism: every element goes through the vector body. Loops run over whole blocks of
 * FG_BLOCK elements and the ragged tail is padded into a FG_BLOCK buffer and run through
 * the same body, so an element's result never depends on where a thread's chunk starts
 * (callers split work at multiples of FG_BLOCK) nor on the array's length.
 *
 * Aliasing: an output may be the very same array as an input (in place), never a partial
 * overlap (the Cython entry points copy the input in that case). Each element is read
 * before it is written at the same index, so there is no loop-carried dependence:
 * `#pragma GCC ivdep` states exactly that (restrict would forbid the in-place case).
 *
 * This file includes _kernels_impl.h twice, for float (suffix _f32) and double (_f64).
 */
#ifndef FASTGRAD_KERNELS_SIMD_H
#define FASTGRAD_KERNELS_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
static int fg_max_threads(void) { return omp_get_max_threads(); }
#else
static int fg_max_threads(void) { return 1; }
#endif

/* gcc on x86-64 glibc: libmvec vector variants and run-time ISA dispatch. Elsewhere
 * (clang, other libcs, other CPUs) the same code builds as plain scalar loops. */
#if defined(__GNUC__) && !defined(__clang__) && !defined(__INTEL_COMPILER) && \
    defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define FG_SIMD_DECL __attribute__((__simd__("notinbranch")))
#define FG_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
/* The activation loops (FG_LOOPS, the row kernels) also let gcc fuse a * b + c into one
 * FMA (fp-contract=fast for those functions only; the build keeps -ffp-contract=off, so
 * losses and optimizer updates stay bit for bit the reference's). The inline float32
 * math (fg_exp_nonpos_s, the polynomials) is mostly multiply-adds: sigmoid 1.3-1.5x,
 * softplus 1.5-1.6x, gelu 1.2-1.3x, the softmax rows' exp pass 1.3x (Zen 4, in cache).
 * Hence x86-64-v3 (AVX2 with FMA) rather than plain "avx2". The "default" variant (no
 * FMA) rounds products and sums apart: its results may differ from the others' in the
 * last bit, within the same ulp bounds. Written as fmaf instead, they would agree
 * bit for bit, but "default" would call libm's fmaf: 21 ns an element for sigmoid,
 * ~70x slower. */
#define FG_MATH_CLONES                                                                     \
    __attribute__((optimize("fp-contract=fast"),                                           \
                   target_clones("default", "arch=x86-64-v3", "avx512f")))
/* glibc 2.22 has the vector exp; 2.35 added expm1, tanh, log1p, erfc. */
#if __GLIBC_PREREQ(2, 22)
extern float expf(float) FG_SIMD_DECL;
extern double exp(double) FG_SIMD_DECL;
#endif
#if __GLIBC_PREREQ(2, 35)
extern float expm1f(float) FG_SIMD_DECL;
extern double expm1(double) FG_SIMD_DECL;
extern float tanhf(float) FG_SIMD_DECL;
extern double tanh(double) FG_SIMD_DECL;
extern float log1pf(float) FG_SIMD_DECL;
extern double log1p(double) FG_SIMD_DECL;
extern double erfc(double) FG_SIMD_DECL;
#endif
#define FG_VECTOR_MATH 1
/* The row kernels (softmax, log_softmax) get an AVX-512 variant of their own, dispatched
 * by hand: gcc's tuning prefers 256-bit vectors even where AVX-512 is enabled, so the
 * "avx512f" clone of target_clones calls the 8-lane vector exp; prefer-vector-width=512
 * (which target_clones cannot carry) makes it the 16-lane one: the exp pass 1.3-1.6x
 * faster, measured on Zen 4 (a target attribute conflicts with target_clones, hence
 * two functions). The elementwise kernels' "avx512f" clones still call the 8-lane exp. */
#define FG_ROWS_CLONES                                                                     \
    __attribute__((optimize("fp-contract=fast"), target_clones("default", "arch=x86-64-v3")))
#define FG_ROWS_AVX512                                                                     \
    __attribute__((optimize("fp-contract=fast"), target("avx512f,prefer-vector-width=512")))
#define FG_ROWS_AVX512_VARIANT 1
static int fg_cpu_avx512(void) { return __builtin_cpu_supports("avx512f"); }
#else
#define FG_CLONES
#define FG_MATH_CLONES
#define FG_ROWS_CLONES
#define FG_ROWS_AVX512_VARIANT 0
#define FG_VECTOR_MATH 0
#endif
/* Row bodies: inlined into each per-ISA variant of the row loops. */
#if defined(__GNUC__)
#define FG_ROW_INLINE inline __attribute__((always_inline))
#else
#define FG_ROW_INLINE inline
#endif

/* Streaming (non-temporal) stores, OFF by default (FG_STREAM_MIN_BYTES = SIZE_MAX; the
 * Cython module's _set_stream_min_bytes turns them on for outputs of at least that many
 * bytes). An ordinary store to a line that is not in cache first reads it
 * (read-for-ownership), a third stream of traffic beside the input's and the output's; a
 * non-temporal store writes the line without reading it, but also without keeping it in
 * cache. Measured with bench/stream_stores.py (2^24 float32, two threads, this shared
 * VM, 2026-11-28): identity and relu forward 1.06-1.26x and softmax 1.03-1.18x in most
 * runs, but identity 0.54-0.81x in runs where the ordinary stores reached 55-60 GB/s, above
 * DRAM's copy rate: the host's cache held the 64 MiB output, which streaming throws out.
 * Whether it pays depends on a cache size the VM does not report (it says 32 MiB), so it
 * stays off. Memory-bound forward kernels and softmax only (sigmoid 0.87-0.93x and relu
 * backward 0.90-0.95x even in the good runs: the buffer copy adds to their loops); never
 * in place. The fence orders the streamed stores before anything the thread does next. */
#define FG_STREAM_MIN_BYTES ((size_t)-1)
#if defined(__GNUC__)
#define FG_ALIGNED __attribute__((aligned(64)))
#else
#define FG_ALIGNED
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#include <stdint.h>
/* 32-byte streams where the CPU has AVX (16-byte ones measured no better than ordinary
 * stores here), 16-byte SSE2 ones (x86-64's baseline) elsewhere: one portable build. */
__attribute__((target("avx"))) static void fg_stream_body_avx(char *d, const char *s,
                                                                size_t bytes) {
    for (size_t i = 0; i < bytes; i += 32)
        _mm256_stream_ps((float *)(d + i), _mm256_loadu_ps((const float *)(s + i)));
}
static void fg_stream_body_sse2(char *d, const char *s, size_t bytes) {
    for (size_t i = 0; i < bytes; i += 16)
        _mm_stream_si128((__m128i *)(d + i), _mm_loadu_si128((const __m128i *)(s + i)));
}
static void fg_stream_copy(void *dst, const void *src, size_t bytes) {
    static int use_avx = -1;
    if (use_avx < 0) use_avx = __builtin_cpu_supports("avx") != 0;  /* benign race */
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (32 - ((uintptr_t)d & 31)) & 31;  /* up to the first aligned store */
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    d += head; s += head; bytes -= head;
    size_t body = bytes & ~(size_t)31;
    if (use_avx) fg_stream_body_avx(d, s, body);
    else fg_stream_body_sse2(d, s, body);
    memcpy(d + body, s + body, bytes - body);
}
static void fg_stream_fence(void) { _mm_sfence(); }
#else
static void fg_stream_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void fg_stream_fence(void) {}
#endif

#define FG_IVDEP _Pragma("GCC ivdep")
/* a * b + c, which the activation loops let the compiler fuse (FG_MATH_CLONES) */
#define FG_FMAF(a, b, c) ((a) * (b) + (c))
#define FG_BLOCK 16 /* elements; thread chunks start at multiples of this */

/* Kernel ids: the Cython module maps activation names to these (fg_kernel_names). */
enum {
    FG_IDENTITY, FG_BINARY_STEP, FG_SIGMOID, FG_TANH, FG_RELU, FG_LEAKY_RELU, FG_ELU,
    FG_SWISH, FG_GELU, FG_SOFTPLUS, FG_SELU, FG_SOFTMAX, FG_LOG_SOFTMAX, FG_NUM_KERNELS
};
static const char *const fg_kernel_names[FG_NUM_KERNELS] = {
    "identity", "binary_step", "sigmoid", "tanh", "relu", "leaky_relu", "elu",
    "swish", "gelu", "softplus", "selu", "softmax", "log_softmax"};
/* 1: row-wise (along the last axis); 0: elementwise. */
static const int fg_kernel_rowwise[FG_NUM_KERNELS] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
/* 1: backward reads the saved x or y; 0: it ignores it (identity, binary_step). */
static const int fg_kernel_needs_saved[FG_NUM_KERNELS] = {
    0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
/* 1: the forward pass calls a transcendental (compute-bound, threads pay earlier). */
static const int fg_kernel_transcendental[FG_NUM_KERNELS] = {
    0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1};
/* The same for the backward pass (sigmoid's and tanh's work from y: arithmetic only). */
static const int fg_kernel_transcendental_backward[FG_NUM_KERNELS] = {
    0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1};

/* Loss ids: the Cython module maps fastgrad.LOSSES names to these (fg_loss_names). */
enum { FG_LOSS_MSE, FG_LOSS_BCE, FG_LOSS_CE, FG_NUM_LOSSES };
static const char *const fg_loss_names[FG_NUM_LOSSES] = {
    "mse", "binary_cross_entropy", "cross_entropy"};
/* 1: couples the outputs of a row (softmax cross-entropy, mean over rows); 0: a mean of
 * per-element terms (mean over all elements). */
static const int fg_loss_rowwise[FG_NUM_LOSSES] = {0, 0, 1};

/* Constants of scalar_math.py, in double. */
#define FG_INV_SQRT2 0.7071067811865476
#define FG_INV_SQRT2PI 0.3989422804014327
#define FG_SQRT_2_OVER_PI 0.7978845608028654
#define FG_GELU_TANH_C 0.044715
#define FG_SELU_ALPHA 1.6732632423543772
#define FG_SELU_SCALE 1.0507009873554805

/* swish and gelu's tanh form are computed in double for float32 too (exact gelu: see
 * fg_ncdf_left_s): in float the rounding of the
 * sigmoid/erfc argument is amplified ~|x| (swish) to ~x^2 (gelu) times in the left tail
 * (hundreds of ulp at x = -10), swish's product x s underflows through subnormal s, and
 * its derivative s (1 + beta x (1 - s)) cancels near x = -1.28; in double the float32
 * results stay within a few ulp. */
static inline double fg_sigmoid_d(double x) {
    double z = exp(-fabs(x));
    return (x >= 0 ? 1.0 : z) / (1.0 + z);
}
/* a = beta. The saturated tails give their limits (0, or g) instead of inf * 0. */
static inline double fg_swish_fwd_d(double x, double a) {
    double s = fg_sigmoid_d(a * x);
    return s == 0.0 ? 0.0 : x * s;
}
/* s (1 - s) is evaluated as z / (1 + z)^2, z = exp(-|v|): 1 - s would cancel for large v. */
static inline double fg_sigmoid_slope_d(double v) {
    double z = exp(-fabs(v));
    return z / ((1.0 + z) * (1.0 + z));
}
static inline double fg_swish_bwd_d(double x, double g, double a) {
    double s = fg_sigmoid_d(a * x);
    double slope = fg_sigmoid_slope_d(a * x);
    /* Limits in the saturated tails (0 * g, and g * s where x * slope would be inf * 0);
     * scalar_math takes g once s rounds to 1, which is ~1e-15 off for x in (37, 745). */
    double r = slope == 0.0 ? g * s : g * (s + a * x * slope);
    return s == 0.0 ? 0.0 * g : r;
}
static inline double fg_gelu_exact_fwd_d(double x) {
    double phi = 0.5 * erfc(-x * FG_INV_SQRT2);
    return phi == 0.0 ? 0.0 : x * phi;
}
/* gelu's derivative near its root, in double: scalar_math.py's GELU_SLOPE_C (Taylor, degree
 * 14) in d = x - x0, x0 = GELU_ROOT_HI + GELU_ROOT_LO, for |d| < GELU_SLOPE_W = 0.2, where
 * the terms' roundings (~5e-17) would be unbounded relative to the slope. */
static const double fg_gelu_slope_c_d[15] = {
    5.702764979242107e-07, 4.3284506257392273e-07, -7.74846130700372e-06,
    -1.121438018842664e-05, 8.615947861116571e-05, 0.00018633974623233514,
    -0.0007448268386746817, -0.002239538068073497, 0.004539228379125415,
    0.019421679838189067, -0.014771522148244337, -0.1140082332972217,
    -0.018199676398671087, 0.388284982990552, 0.4314939923140469};
static inline double fg_gelu_exact_bwd_d(double x, double g) {
    double d = (x - -0.7517915246935645) - 1.4956759177009883e-17;
    double p = 0.0;
    for (int k = 0; k < 15; k++) p = p * d + fg_gelu_slope_c_d[k];
    double phi = 0.5 * erfc(-x * FG_INV_SQRT2);
    double pdf = FG_INV_SQRT2PI * exp(-0.5 * x * x);
    double r = pdf == 0.0 ? g * phi : g * (phi + x * pdf);
    r = phi == 0.0 ? 0.0 * g : r;
    return fabs(d) < 0.2 ? g * (d * p) : r; /* selects, no branch: the loop vectorizes */
}
/* float32 exact gelu: in float (16 lanes), through Phi = fg_ncdf_left_s, the arithmetic of
 * fastgrad/backends/numba_math.py's ncdf_impl with its constants (the multiply-adds
 * FG_FMAF, fused where the CPU has FMA, see FG_MATH_CLONES). In double, libmvec's
 * erfc made gelu half as fast; float erfc(-x/sqrt2) was 52-1274 ulp off in the left tail
 * because x/sqrt2 is rounded before the exp: here x^2/2 is split exactly instead. */
static inline float fg_pow2_shifted_s(float t) {
    /* 2^n from t = n + 1.5 2^23 (n an integer in the normal exponent range), which holds
     * n in its low mantissa bits: adding the bias and shifting them up gives 2^n's bits
     * (numba_math.py's _pow2_shifted). */
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 127u) << 23;
    memcpy(&t, &bits, sizeof t);
    return t;
}
/* expm1(r) = r + r^2 q(r) on |r| <= ln2/2, q numba_math.py's degree-4 minimax fit */
static inline float fg_expm1_poly_s(float r) {
    float q = 0.0013870657421648502f;
    q = FG_FMAF(q, r, 0.00836626160889864f);
    q = FG_FMAF(q, r, 0.04166743531823158f);
    q = FG_FMAF(q, r, 0.1666654646396637f);
    q = FG_FMAF(q, r, 0.4999999701976776f);
    return FG_FMAF(r * r, q, r);
}
/* Cody-Waite reduction v = n ln2 + r, |r| <= ln2/2: returns t = v log2(e) + magic rounded,
 * whose low mantissa bits hold n + (magic - 1.5 2^23) (fg_pow2_shifted_s's input), and r.
 * LN2_HI has trailing zero bits, so n LN2_HI is exact (Cephes expf's C1/C2). */
#define FG_MAGIC_F 12582912.0f /* 1.5 2^23 */
static inline float fg_exp_reduce_s(float v, float magic, float *r) {
    float t = FG_FMAF(v, 1.44269504f, magic);
    float n = t - magic;
    *r = FG_FMAF(-n, -2.12194440e-4f, FG_FMAF(-n, 0.693359375f, v));
    return t;
}
/* exp(v) for v <= 0 (or NaN) = (1 + p(r)) 2^(n + 64) 2^-64: numba_math.py's _exp_neg_abs
 * (one power of two and no overflow clamp; the last product rounds once into the
 * subnormals; -inf clamps, NaN passes). Where FG_MATH_CLONES fuses its multiply-adds,
 * ~15 vector operations per 16 elements instead of ~24 as separate products and sums. */
static inline float fg_exp_nonpos_s(float v) {
    v = v < -104.5f ? -104.5f : v;
    float r, t = fg_exp_reduce_s(v, FG_MAGIC_F + 64.0f, &r); /* t holds n + 64 */
    float s = fg_pow2_shifted_s(t);
    return FG_FMAF(fg_expm1_poly_s(r), s, s) * 5.42101086e-20f;
}
/* exp(v) over the whole range: v clamped to [-104.5, 89] (past which the result is 0 or
 * overflows; NaN passes), 2^n as two halves (numba_math.py's _scale: each a normal number,
 * so that the result rounds once into the subnormals or overflows to inf) */
static inline float fg_exp_s(float v) {
    v = v > 89.0f ? 89.0f : v;
    v = v < -104.5f ? -104.5f : v;
    float r, n = fg_exp_reduce_s(v, FG_MAGIC_F, &r) - FG_MAGIC_F;
    float h = (0.5f * n + FG_MAGIC_F) - FG_MAGIC_F; /* n/2 to an integer */
    float s1 = fg_pow2_shifted_s(h + FG_MAGIC_F), s2 = fg_pow2_shifted_s((n - h) + FG_MAGIC_F);
    return FG_FMAF(fg_expm1_poly_s(r), s1, s1) * s2;
}
/* exp(-|x|) */
static inline float fg_exp_neg_abs_s(float x) { return fg_exp_nonpos_s(-fabsf(x)); }
/* 1 / (1 + exp(-x)) in float, through z = exp(-|x|) (scalar_math.sigmoid_value) */
static inline float fg_sigmoid_s(float x) {
    float z = fg_exp_neg_abs_s(x);
    return (x >= 0 ? 1.0f : z) / (1.0f + z);
}
/* log1p(exp(-|x|)) = softplus(x) - max(x, 0): numba_math.py's softplus_tail_impl, log(1 +
 * z) = 2 atanh(s), s = z/(2 + z) <= 1/3, as z - (z^2/2 - s (z^2/2 + R)), R = w (2/3 +
 * 2/5 w + ... + 2/15 w^6), w = s^2 (no 1 + z, no split at sqrt2, one division). */
static inline float fg_softplus_tail_s(float x) {
    float z = fg_exp_neg_abs_s(x);
    float s = z / (2.0f + z);
    float w = s * s;
    float big_r = 2.0f / 15.0f;
    big_r = FG_FMAF(big_r, w, 2.0f / 13.0f);
    big_r = FG_FMAF(big_r, w, 2.0f / 11.0f);
    big_r = FG_FMAF(big_r, w, 2.0f / 9.0f);
    big_r = FG_FMAF(big_r, w, 2.0f / 7.0f);
    big_r = FG_FMAF(big_r, w, 2.0f / 5.0f);
    big_r = FG_FMAF(big_r, w, 2.0f / 3.0f) * w;
    float hz = 0.5f * z * z;
    return z - FG_FMAF(-s, hz + big_r, hz);
}
/* swish with beta = 1 (silu) for float32: beta x = x is exact, so it may run in float
 * throughout, numba's float32 arithmetic (scalar_math's swish with fg_exp_neg_abs_s and
 * fused multiply-adds): within 3.65 ulp forward (every float32 in [-8, -2]; 3.3 on the
 * sweep of [-110, 12]) and 3.0 backward, 2.4x and 2.5x the path that took the exp in
 * float and the rest in double (1.7 and 0.8 ulp; one thread, Zen 4, in cache). s (1 - s)
 * = z q^2, q = 1/(1 + z): no cancellation where s ~ 1. */
static inline float fg_swish1_fwd_s(float x) {
    float z = fg_exp_neg_abs_s(x);
    float q = 1.0f / (1.0f + z);
    float s = x >= 0 ? q : z * q;
    return s == 0.0f ? 0.0f : x * s;
}
static inline float fg_swish1_bwd_s(float x, float g) {
    float z = fg_exp_neg_abs_s(x);
    float q = 1.0f / (1.0f + z);
    float s = x >= 0 ? q : z * q;
    float r = z == 0.0f ? g * s : g * FG_FMAF(x, (z * q) * q, s);
    return s == 0.0f ? 0.0f * g : r;
}
/* exp(-x^2/2) = (1 + *e) *s 2^-64, |x| as *a (clamped at 14.5, past which ncdf and npdf
 * round to 0; NaN passes): numba_math.py's _exp_half_square. */
static inline void fg_exp_half_square_s(float x, float *a_out, float *e_out, float *s_out) {
    float a = fabsf(x);
    a = a > 14.5f ? 14.5f : a;
    float hi = (a + 49152.0f) - 49152.0f; /* a to a multiple of 2^-8: hi^2 exact */
    float h = 0.5f * (hi * hi);
    float lo = 0.5f * ((a - hi) * (a + hi)); /* a^2/2 = h + lo */
    /* exp(-h - lo) = 2^n (1 + e): Cody-Waite reduction, expm1's polynomial */
    float r, t = fg_exp_reduce_s(-h, FG_MAGIC_F + 64.0f, &r); /* t holds n + 64 */
    r -= lo;
    *a_out = a;
    *e_out = fg_expm1_poly_s(r);
    *s_out = fg_pow2_shifted_s(t);
}
/* Phi(-|x|) 2^64 = exp(-x^2/2) R(|x|) 2^64, R(a) = c / (a + P(a)/Q(a)), and |x| clamped
 * as *a_out: numba_math.py's _ncdf_left */
static inline float fg_ncdf_left_s(float x, float *a_out) {
    float a, e, s;
    fg_exp_half_square_s(x, &a, &e, &s);
    *a_out = a;
    float P = 0.0024207865353673697f, Q = 0.0024204000364989042f;
    P = FG_FMAF(P, a, 0.029174959287047386f);
    P = FG_FMAF(P, a, 0.16353917121887207f);
    P = FG_FMAF(P, a, 0.49761509895324707f);
    P = FG_FMAF(P, a, 0.7978845834732056f);
    Q = FG_FMAF(Q, a, 0.02919076383113861f);
    Q = FG_FMAF(Q, a, 0.16806510090827942f);
    Q = FG_FMAF(Q, a, 0.5597984790802002f);
    Q = FG_FMAF(Q, a, 1.0790976285934448f);
    Q = FG_FMAF(Q, a, 1.0f);
    float u = 0.3989422917366028f / (a + P / Q);
    return FG_FMAF(u, e, u) * s;
}
/* x Phi(x): numba_math.py's x_ncdf_impl, -|x| q for x <= 0 and x - |x| q above (not
 * x (1 - q): near 0, 1 - q ~ 1/2 at the bottom of its binade doubled q's error relative to
 * the result, 4.5 ulp at x ~ 0.009), |x| multiplied in before the scale 2^-64 (x * q from
 * a subnormal q was 7.9 ulp off below x = -13); a clamped: +-inf give inf and -0.0. */
static inline float fg_gelu_exact_fwd_s(float x) {
    float a;
    float t = fg_ncdf_left_s(x, &a);
    float aq = (a * t) * 5.42101086e-20f; /* 2^-64 */
    return x >= 0.0f ? x - aq : -aq; /* +-0.0 keep their signs; NaN: NaN */
}
/* Phi(x) + x phi(x), gelu's derivative: numba_math.py's x_ncdf_slope_impl (see there).
 * Near the root X0 ~ -0.7518 its terms cancel (5e6 ulp off next to it, over 4 ulp in
 * (-1.3, -0.25)): there d C(d), d = x - X0 with X0 split in two floats, C its SLOPE_C fit.
 * Elsewhere, for x < 0, Phi(-a) - a phi(a) scaled by 2^64 and back once (subnormal in the
 * left tail), 0 past the clamp; above, 1 - q + x phi, or 1 - q where phi rounds to 0. */
static inline float fg_x_ncdf_slope_s(float x) {
    float a, e, s;
    float t = fg_ncdf_left_s(x, &a);     /* Phi(-a) 2^64 */
    fg_exp_half_square_s(x, &a, &e, &s); /* its exp again: gcc merges the two */
    const float c = 0.3989422917366028f;
    float p = (c + c * e) * s; /* phi(a) 2^64 */
    float left = (t - a * p) * 5.42101086e-20f; /* 2^-64 */
    left = a >= 14.5f ? 0.0f : left;            /* NCDF_HI */
    float phi = 1.0f - t * 5.42101086e-20f;
    float pdf = p * 5.42101086e-20f;
    float right = pdf == 0.0f ? phi : phi + x * pdf;
    float slope = x < 0.0f ? left : right; /* NaN: right, NaN */
    float d = (x - -0.7517915368080139f) - 1.2114450302102823e-08f;
    float C = 0.00023329096438828856f;
    C = FG_FMAF(C, d, -0.0006042508757673204f);
    C = FG_FMAF(C, d, -0.0022691653575748205f);
    C = FG_FMAF(C, d, 0.00447601405903697f);
    C = FG_FMAF(C, d, 0.019426891580224037f);
    C = FG_FMAF(C, d, -0.014760997146368027f);
    C = FG_FMAF(C, d, -0.11400847136974335f);
    C = FG_FMAF(C, d, -0.018200265243649483f);
    C = FG_FMAF(C, d, 0.38828498125076294f);
    C = FG_FMAF(C, d, 0.43149399757385254f);
    return fabsf(d) < 0.55f ? d * C : slope;
}
static inline float fg_gelu_exact_bwd_s(float x, float g) { return g * fg_x_ncdf_slope_s(x); }
static inline double fg_gelu_tanh_fwd_d(double x) {
    double phi = fg_sigmoid_d(2.0 * FG_SQRT_2_OVER_PI * (x + FG_GELU_TANH_C * x * x * x));
    return phi == 0.0 ? 0.0 : x * phi;
}
static inline double fg_gelu_tanh_bwd_d(double x, double g) {
    double u = FG_SQRT_2_OVER_PI * (x + FG_GELU_TANH_C * x * x * x);
    double s = fg_sigmoid_d(2.0 * u);
    double du = FG_SQRT_2_OVER_PI * (1.0 + 3.0 * FG_GELU_TANH_C * x * x);
    double slope = fg_sigmoid_slope_d(2.0 * u);
    double r = slope == 0.0 ? g * s : g * (s + 2.0 * x * slope * du);
    return s == 0.0 ? 0.0 * g : r;
}

/* The elementwise losses' per-element terms and derivatives (fastgrad/losses.py), in
 * double whatever the arrays' type, operation by operation as the numpy reference
 * evaluates them (so float32 results are the reference's, rounded once). */
static inline double fg_mse_value_d(double p, double t) {
    double d = p - t;
    return 0.5 * (d * d);
}
static inline double fg_mse_grad_d(double p, double t) { return p - t; }
/* max(z, 0) - z t + log1p(exp(-|z|)): exp never overflows, log never sees 0; the max
 * written as a select that keeps NaN. */
static inline double fg_bce_value_d(double z, double t) {
    return (z < 0 ? 0.0 : z) - z * t + log1p(exp(-fabs(z)));
}
static inline double fg_bce_grad_d(double z, double t) { return fg_sigmoid_d(z) - t; }

#define FG_CAT_(a, b) a##b
#define FG_CAT(a, b) FG_CAT_(a, b)

#define FG_T float
#define FG_SUFFIX _f32
#define FG_EXP expf
#define FG_EXPM1 expm1f
#define FG_TANH tanhf
#define FG_LOG1P log1pf
#define FG_LOG logf
#define FG_FABS fabsf
#define FG_GELU_EXACT_FWD(x) fg_gelu_exact_fwd_s(x)
#define FG_GELU_EXACT_BWD(x, g) fg_gelu_exact_bwd_s(x, g)
#define FG_SWISH1_FWD(x) fg_swish1_fwd_s(x)
#define FG_SWISH1_BWD(x, g) fg_swish1_bwd_s(x, g)
#define FG_EXP_NONPOS(v) fg_exp_nonpos_s(v)
#define FG_EXP_INLINE(v) fg_exp_s(v)
#define FG_EXP_NONPOS_INLINE 1
#define FG_SIGMOID(x) fg_sigmoid_s(x)
#define FG_SOFTPLUS_TAIL(x) fg_softplus_tail_s(x)
#include "_kernels_impl.h"
#undef FG_T
#undef FG_SUFFIX
#undef FG_EXP
#undef FG_EXPM1
#undef FG_TANH
#undef FG_LOG1P
#undef FG_LOG
#undef FG_FABS
#undef FG_GELU_EXACT_FWD
#undef FG_GELU_EXACT_BWD
#undef FG_SWISH1_FWD
#undef FG_SWISH1_BWD
#undef FG_EXP_NONPOS
#undef FG_EXP_INLINE
#undef FG_EXP_NONPOS_INLINE
#undef FG_SIGMOID
#undef FG_SOFTPLUS_TAIL

#define FG_T double
#define FG_SUFFIX _f64
#define FG_EXP exp
#define FG_EXPM1 expm1
#define FG_TANH tanh
#define FG_LOG1P log1p
#define FG_LOG log
#define FG_FABS fabs
#define FG_GELU_EXACT_FWD(x) fg_gelu_exact_fwd_d(x)
#define FG_GELU_EXACT_BWD(x, g) fg_gelu_exact_bwd_d(x, g)
#define FG_SWISH1_FWD(x) fg_swish_fwd_d(x, 1.0)
#define FG_SWISH1_BWD(x, g) fg_swish_bwd_d(x, g, 1.0)
#define FG_EXP_NONPOS(v) exp(v)
#define FG_EXP_INLINE(v) exp(v)
#define FG_EXP_NONPOS_INLINE 0
#define FG_SIGMOID(x) fg_sigmoid_d(x)
#define FG_SOFTPLUS_TAIL(x) log1p(exp(-fabs(x)))
#include "_kernels_impl.h"

#endif /* FASTGRAD_KERNELS_SIMD_H */
