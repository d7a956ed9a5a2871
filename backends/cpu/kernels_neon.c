/* kernels_neon.c: the NEON kernel table (AArch64), 4 floats a vector. NEON
 * is mandatory on AArch64, so the table is always handed out there and the
 * file needs no special flags; on any other architecture it compiles to a
 * getter returning NULL.
 *
 * Same scheme as kernels_avx2.c (see there): a 6 x 16 micro-tile (24 of
 * the 32 vector registers accumulate), a packed transposed B panel for
 * gemm_nt, a packed (not transposed) B panel for gemm_nn_acc. NEON has no masked loads, so
 * ragged tails go through small zero-padded stack copies. The packed panel
 * is 8 KiB of stack; no heap memory is used. */
#include <stddef.h>

#include "cpu_features.h"
#include "kernels.h"
#include "mha.h"

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>
#include <math.h>

enum { MR = 6, NR = 16, KC = 128 };

static int64_t min_i64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---- gemm ---------------------------------------------------------------- */

/* One k step of one row: four FMAs of the broadcast A[i][k] (by-element
 * FMLA, no separate dup) into the row's four accumulators. */
#define MHA_ROW_FMA(i)                                                    \
    do {                                                                  \
        const float av = a##i[k];                                         \
        c##i##0 = vfmaq_n_f32(c##i##0, b0, av);                           \
        c##i##1 = vfmaq_n_f32(c##i##1, b1, av);                           \
        c##i##2 = vfmaq_n_f32(c##i##2, b2, av);                           \
        c##i##3 = vfmaq_n_f32(c##i##3, b3, av);                           \
    } while (0)

#define MHA_ROW_ZERO(i)                                                   \
    float32x4_t c##i##0 = vdupq_n_f32(0.0f), c##i##1 = vdupq_n_f32(0.0f), \
                c##i##2 = vdupq_n_f32(0.0f), c##i##3 = vdupq_n_f32(0.0f)

#define MHA_ROW_STORE(i)                                                  \
    do {                                                                  \
        vst1q_f32(t + (i) * NR, c##i##0);                                 \
        vst1q_f32(t + (i) * NR + 4, c##i##1);                             \
        vst1q_f32(t + (i) * NR + 8, c##i##2);                             \
        vst1q_f32(t + (i) * NR + 12, c##i##3);                            \
    } while (0)

/* t[i][j] = sum_{k < kc} a_i[k] * b[k * ldb + j] for i < MR, j < NR; rows
 * past mr repeat the last valid one (see kernels_avx2.c). */
static void tile_6x16(int64_t kc, const float *a, int64_t lda, int64_t mr,
                      const float *b, int64_t ldb, float *t)
{
    const float *a0 = a;
    const float *a1 = a + min_i64(1, mr - 1) * lda;
    const float *a2 = a + min_i64(2, mr - 1) * lda;
    const float *a3 = a + min_i64(3, mr - 1) * lda;
    const float *a4 = a + min_i64(4, mr - 1) * lda;
    const float *a5 = a + min_i64(5, mr - 1) * lda;
    MHA_ROW_ZERO(0);
    MHA_ROW_ZERO(1);
    MHA_ROW_ZERO(2);
    MHA_ROW_ZERO(3);
    MHA_ROW_ZERO(4);
    MHA_ROW_ZERO(5);
    for (int64_t k = 0; k < kc; k++) {
        const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
        const float32x4_t b2 = vld1q_f32(b + 8), b3 = vld1q_f32(b + 12);
        b += ldb;
        MHA_ROW_FMA(0);
        MHA_ROW_FMA(1);
        MHA_ROW_FMA(2);
        MHA_ROW_FMA(3);
        MHA_ROW_FMA(4);
        MHA_ROW_FMA(5);
    }
    MHA_ROW_STORE(0);
    MHA_ROW_STORE(1);
    MHA_ROW_STORE(2);
    MHA_ROW_STORE(3);
    MHA_ROW_STORE(4);
    MHA_ROW_STORE(5);
}

#undef MHA_ROW_FMA
#undef MHA_ROW_ZERO
#undef MHA_ROW_STORE

/* C[i][j] = (base ? base[j] : C[i][j]) + t[i][j] for i < mr, j < nr. */
static void write_tile(const float *t, int64_t mr, int64_t nr,
                       const float *base, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        const float *ti = t + i * NR;
        const float *src = base ? base : c;
        int64_t j = 0;
        for (; j + 4 <= nr; j += 4)
            vst1q_f32(c + j, vaddq_f32(vld1q_f32(src + j), vld1q_f32(ti + j)));
        for (; j < nr; j++)
            c[j] = src[j] + ti[j];
    }
}

/* Writes the transpose of the 4 x 4 block at src (rows ld apart) to dst
 * (rows NR apart): 32-bit then 64-bit transposes of register pairs. */
static void transpose_4x4(const float *src, int64_t ld, float *dst)
{
    const float32x4_t r0 = vld1q_f32(src), r1 = vld1q_f32(src + ld);
    const float32x4_t r2 = vld1q_f32(src + 2 * ld);
    const float32x4_t r3 = vld1q_f32(src + 3 * ld);
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1));
    const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3));
    const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
    vst1q_f32(dst, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    vst1q_f32(dst + NR, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    vst1q_f32(dst + 2 * NR, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    vst1q_f32(dst + 3 * NR, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
}

/* bp[k][j] = B[j][k] for j < nr, 0 beyond: a KC x NR panel of B^T. A full
 * panel goes by 4 x 4 transposes, the K remainder and a ragged panel
 * element by element. */
static void pack_bt(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                    float *bp)
{
    int64_t k0 = 0;
    if (nr == NR) {
        for (; k0 + 4 <= kc; k0 += 4)
            for (int64_t j = 0; j < NR; j += 4)
                transpose_4x4(B + j * ldb + k0, ldb, bp + k0 * NR + j);
    }
    for (int64_t j = 0; j < NR; j++) {
        const float *row = B + j * ldb;
        for (int64_t k = k0; k < kc; k++)
            bp[k * NR + j] = j < nr ? row[k] : 0.0f;
    }
}

/* bp[k][j] = B[k][j] for j < nr, 0 beyond: gemm_nn_acc's B panel made
 * contiguous, as rows ldb apart can collide in the cache (see pack_b in
 * kernels_avx2.c), and zero-padded so no load passes a row end. */
static void pack_b(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                   float *bp)
{
    for (int64_t k = 0; k < kc; k++) {
        const float *row = B + k * ldb;
        float *dst = bp + k * NR;
        if (nr == NR) {
            vst1q_f32(dst, vld1q_f32(row));
            vst1q_f32(dst + 4, vld1q_f32(row + 4));
            vst1q_f32(dst + 8, vld1q_f32(row + 8));
            vst1q_f32(dst + 12, vld1q_f32(row + 12));
        } else {
            for (int64_t j = 0; j < NR; j++)
                dst[j] = j < nr ? row[j] : 0.0f;
        }
    }
}

static void fill_bias(int64_t M, int64_t N, const float *bias, float *C,
                      int64_t ldc)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            C[m * ldc + n] = bias ? bias[n] : 0.0f;
}

/* ---- small-M gemm_nt: dot products --------------------------------------- */

/* Below one micro-tile of rows, gemm_nt works on B in place: 2 rows x 4
 * columns of dot products at a time (see kernels_avx2.c; the threshold
 * follows the x86 measurements, not measured on an ARM core). */
enum { DOT_MAX_M = MR - 1 };

/* [sum(s0), sum(s1), sum(s2), sum(s3)] by pairwise adds. */
static float32x4_t reduce4(float32x4_t s0, float32x4_t s1, float32x4_t s2,
                           float32x4_t s3)
{
    return vpaddq_f32(vpaddq_f32(s0, s1), vpaddq_f32(s2, s3));
}

/* r0[j] = a0 . b_j, r1[j] = a1 . b_j over K, for j < 4: vector body, then
 * the last K % 4 products added in scalar code. */
static void dot_2x4(int64_t K, const float *a0, const float *a1,
                    const float *const *b, float32x4_t *r0, float32x4_t *r1)
{
    float32x4_t s00 = vdupq_n_f32(0.0f), s01 = vdupq_n_f32(0.0f);
    float32x4_t s02 = vdupq_n_f32(0.0f), s03 = vdupq_n_f32(0.0f);
    float32x4_t s10 = vdupq_n_f32(0.0f), s11 = vdupq_n_f32(0.0f);
    float32x4_t s12 = vdupq_n_f32(0.0f), s13 = vdupq_n_f32(0.0f);
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float32x4_t x0 = vld1q_f32(a0 + k), x1 = vld1q_f32(a1 + k);
#define MHA_DOT_COL(j)                                                    \
    do {                                                                  \
        const float32x4_t y = vld1q_f32(b[j] + k);                        \
        s0##j = vfmaq_f32(s0##j, x0, y);                                  \
        s1##j = vfmaq_f32(s1##j, x1, y);                                  \
    } while (0)
        MHA_DOT_COL(0);
        MHA_DOT_COL(1);
        MHA_DOT_COL(2);
        MHA_DOT_COL(3);
#undef MHA_DOT_COL
    }
    float t0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, t1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (; k < K; k++) {
        for (int j = 0; j < 4; j++) {
            t0[j] += a0[k] * b[j][k];
            t1[j] += a1[k] * b[j][k];
        }
    }
    *r0 = vaddq_f32(reduce4(s00, s01, s02, s03), vld1q_f32(t0));
    *r1 = vaddq_f32(reduce4(s10, s11, s12, s13), vld1q_f32(t1));
}

/* C[i][j] = r[j] + bias4[j] for j < nc. */
static void store_dot(float32x4_t r, const float *bias4, int64_t nc,
                      float *c)
{
    r = vaddq_f32(r, vld1q_f32(bias4));
    if (nc == 4) {
        vst1q_f32(c, r);
        return;
    }
    float tmp[4];
    vst1q_f32(tmp, r);
    for (int64_t j = 0; j < nc; j++)
        c[j] = tmp[j];
}

/* gemm_nt for 0 < M <= DOT_MAX_M, K > 0. Rows and columns past the edge
 * repeat the last valid one (results discarded), as in the tile path. */
static void gemm_nt_dot(int64_t M, int64_t N, int64_t K, const float *A,
                        int64_t lda, const float *B, int64_t ldb,
                        const float *bias, float *C, int64_t ldc)
{
    for (int64_t m0 = 0; m0 < M; m0 += 2) {
        const float *a0 = A + m0 * lda;
        const float *a1 = A + min_i64(m0 + 1, M - 1) * lda;
        for (int64_t n0 = 0; n0 < N; n0 += 4) {
            const int64_t nc = min_i64(4, N - n0);
            const float *b[4];
            float bias4[4];
            for (int64_t j = 0; j < 4; j++) {
                b[j] = B + min_i64(n0 + j, N - 1) * ldb;
                bias4[j] = (bias && j < nc) ? bias[n0 + j] : 0.0f;
            }
            float32x4_t r0, r1;
            dot_2x4(K, a0, a1, b, &r0, &r1);
            store_dot(r0, bias4, nc, C + m0 * ldc + n0);
            if (m0 + 1 < M)
                store_dot(r1, bias4, nc, C + (m0 + 1) * ldc + n0);
        }
    }
}

static void neon_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t lda, const float *B, int64_t ldb,
                         const float *bias, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        fill_bias(M, N, bias, C, ldc);
        return;
    }
    if (M <= DOT_MAX_M) {
        gemm_nt_dot(M, N, K, A, lda, B, ldb, bias, C, ldc);
        return;
    }
    _Alignas(16) float bp[KC * NR];
    _Alignas(16) float t[MR * NR];
    float base[NR];
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nr = min_i64(NR, N - n0);
        for (int64_t j = 0; j < NR; j++)
            base[j] = (bias && j < nr) ? bias[n0 + j] : 0.0f;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = min_i64(KC, K - k0);
            pack_bt(B + n0 * ldb + k0, ldb, nr, kc, bp);
            for (int64_t m0 = 0; m0 < M; m0 += MR) {
                const int64_t mr = min_i64(MR, M - m0);
                tile_6x16(kc, A + m0 * lda + k0, lda, mr, bp, NR, t);
                write_tile(t, mr, nr, k0 == 0 ? base : NULL,
                           C + m0 * ldc + n0, ldc);
            }
        }
    }
}

/* ---- small-M gemm_nn_acc: streaming rows ---------------------------------- */

/* With few rows of A, each row of C is updated in place from 4 rows of B
 * at a time instead of through packed tiles (see kernels_avx2.c; the
 * threshold is the x86 one, not measured on an ARM core). */
enum { ROWS_MAX_M = 8 };

/* c[n] += x[0] b0[n] + ... + x[3] b3[n] for n < N, b_i = b0 + i ldb. */
static void nn_row_step4(int64_t N, const float *x, const float *b0,
                         int64_t ldb, float *c)
{
    const float *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
        float32x4_t v = vld1q_f32(c + n);
        v = vfmaq_n_f32(v, vld1q_f32(b0 + n), x[0]);
        v = vfmaq_n_f32(v, vld1q_f32(b1 + n), x[1]);
        v = vfmaq_n_f32(v, vld1q_f32(b2 + n), x[2]);
        v = vfmaq_n_f32(v, vld1q_f32(b3 + n), x[3]);
        vst1q_f32(c + n, v);
    }
    for (; n < N; n++)
        c[n] += x[0] * b0[n] + x[1] * b1[n] + x[2] * b2[n] + x[3] * b3[n];
}

/* c[n] += x b[n] for n < N: the last K % 4 rows of B. */
static void nn_row_step1(int64_t N, float x, const float *b, float *c)
{
    int64_t n = 0;
    for (; n + 4 <= N; n += 4)
        vst1q_f32(c + n, vfmaq_n_f32(vld1q_f32(c + n), vld1q_f32(b + n), x));
    for (; n < N; n++)
        c[n] += x * b[n];
}

/* gemm_nn_acc for 0 < M <= ROWS_MAX_M. */
static void gemm_nn_rows(int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float *C,
                         int64_t ldc)
{
    for (int64_t m = 0; m < M; m++) {
        const float *a = A + m * lda;
        float *c = C + m * ldc;
        int64_t k = 0;
        for (; k + 4 <= K; k += 4)
            nn_row_step4(N, a + k, B + k * ldb, ldb, c);
        for (; k < K; k++)
            nn_row_step1(N, a[k], B + k * ldb, c);
    }
}

static void neon_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                             const float *A, int64_t lda, const float *B,
                             int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    if (M <= ROWS_MAX_M) {
        gemm_nn_rows(M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    _Alignas(16) float bp[KC * NR];
    _Alignas(16) float t[MR * NR];
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nr = min_i64(NR, N - n0);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = min_i64(KC, K - k0);
            pack_b(B + k0 * ldb + n0, ldb, nr, kc, bp);
            for (int64_t m0 = 0; m0 < M; m0 += MR) {
                const int64_t mr = min_i64(MR, M - m0);
                tile_6x16(kc, A + m0 * lda + k0, lda, mr, bp, NR, t);
                write_tile(t, mr, nr, NULL, C + m0 * ldc + n0, ldc);
            }
        }
    }
}

/* ---- elementwise ----------------------------------------------------------- */

static void neon_scale(int64_t n, float alpha, float *y)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vmulq_n_f32(vld1q_f32(y + i), alpha));
    for (; i < n; i++)
        y[i] *= alpha;
}

static void neon_axpy(int64_t n, float alpha, const float *x, float *y)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), alpha));
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

static void neon_scale_add(int64_t n, float alpha, const float *x, float *y)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(x + i), vld1q_f32(y + i), alpha));
    for (; i < n; i++)
        y[i] = alpha * y[i] + x[i];
}

/* FMAX would propagate NaN and FMAXNM treats signalling NaNs specially, so
 * the running maximum is replaced only where v > acc, a comparison that is
 * false for any NaN: exactly the scalar rule. */
static float neon_max(int64_t n, const float *x)
{
    float32x4_t acc = vdupq_n_f32(-INFINITY);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        acc = vbslq_f32(vcgtq_f32(v, acc), v, acc);
    }
    float m = vmaxvq_f32(acc); /* acc holds no NaN */
    for (; i < n; i++)
        if (x[i] > m)
            m = x[i];
    return m;
}

/* exp(x) as in kernels_avx2.c: clamp to [-88, 88.376] (FMAX/FMIN propagate
 * NaN), n = round(x / ln2), Cephes polynomial for exp(r), times 2^n built in
 * the exponent field; n = -127 builds 0, so x below about -87.7 and -inf
 * give exactly 0. */
static float32x4_t exp_f32(float32x4_t x)
{
    x = vmaxq_f32(x, vdupq_n_f32(-88.0f));
    x = vminq_f32(x, vdupq_n_f32(88.3762626647949f));
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    float32x4_t y = vfmaq_f32(r, p, vmulq_f32(r, r));
    y = vaddq_f32(y, vdupq_n_f32(1.0f));
    int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32(e, 23)));
}

/* The last 1..3 elements go through a zero-padded copy so they use the
 * same exp as the body; only the real lanes are stored and summed. */
static float neon_exp_sum(int64_t n, float m, float *x)
{
    const float32x4_t vm = vdupq_n_f32(m);
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t e = exp_f32(vsubq_f32(vld1q_f32(x + i), vm));
        vst1q_f32(x + i, e);
        acc = vaddq_f32(acc, e);
    }
    float sum = vaddvq_f32(acc);
    if (i < n) {
        float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t j = 0; j < n - i; j++)
            buf[j] = x[i + j];
        vst1q_f32(buf, exp_f32(vsubq_f32(vld1q_f32(buf), vm)));
        for (int64_t j = 0; j < n - i; j++) {
            x[i + j] = buf[j];
            sum += buf[j];
        }
    }
    return sum;
}

static const mha_cpu_kernels neon_table = {
    .isa = "neon",
    .gemm_nt = neon_gemm_nt,
    .gemm_nn_acc = neon_gemm_nn_acc,
    .scale = neon_scale,
    .axpy = neon_axpy,
    .scale_add = neon_scale_add,
    .max = neon_max,
    .exp_sum = neon_exp_sum,
};

/* mha_cpu_features() reports NEON on every AArch64 CPU; asking it keeps
 * one source of truth should that ever change. */
const mha_cpu_kernels *mha_cpu_kernels_neon(void)
{
    return (mha_cpu_features() & MHA_FEATURE_NEON) ? &neon_table : NULL;
}

#else /* not AArch64 */

const mha_cpu_kernels *mha_cpu_kernels_neon(void)
{
    return NULL;
}

#endif
