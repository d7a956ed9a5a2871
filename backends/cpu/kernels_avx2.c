/* kernels_avx2.c: the AVX2+FMA kernel table (x86-64), 8 floats a vector.
 * This file alone is compiled with -mavx2 -mfma; the table is handed out
 * only when the running CPU and OS support both (cpu_features.c), so the
 * rest of the library stays runnable on any x86-64. Built without those
 * flags or for another architecture, it compiles to a getter returning
 * NULL.
 *
 * GEMM scheme (both shapes): C is cut into MR x NR tiles computed by a
 * register-blocked micro-kernel that, for each k, broadcasts A[i][k] of MR
 * rows and multiplies it into an NR-wide row of B (FMA). For gemm_nt, B's
 * rows are C's columns, so a KC x NR panel of B is packed transposed into a
 * stack buffer first and reused for every row tile; for gemm_nn_acc the
 * rows of B are already NR-wide rows and are read in place (only a ragged
 * last column panel is copied, zero-padded, so no load passes a row end).
 * Row tails repeat the last valid row (results discarded), column tails are
 * masked at write-back, so any M, N, K and leading dimension work. No heap
 * memory is used: the largest scratch is the 8 KiB packed panel. */
#include <stddef.h>

#include "cpu_features.h"
#include "kernels.h"
#include "mha.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>
#include <math.h>

/* 6 x 16 tile: 12 accumulators + 2 B vectors + 1 broadcast of the 16 YMM
 * registers, the usual AVX2 sgemm shape. KC bounds the packed panel. */
enum { MR = 6, NR = 16, KC = 128 };

static int64_t min_i64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---- gemm ---------------------------------------------------------------- */

/* t[i][j] = sum_{k < kc} a_i[k] * b[k * ldb + j] for i < MR, j < NR, where
 * a_i is row i of a (stride lda) for i < mr and the last valid row beyond,
 * so a partial row tile reads only memory that belongs to A. */
static void tile_6x16(int64_t kc, const float *a, int64_t lda, int64_t mr,
                      const float *b, int64_t ldb, float *t)
{
    const float *a0 = a;
    const float *a1 = a + min_i64(1, mr - 1) * lda;
    const float *a2 = a + min_i64(2, mr - 1) * lda;
    const float *a3 = a + min_i64(3, mr - 1) * lda;
    const float *a4 = a + min_i64(4, mr - 1) * lda;
    const float *a5 = a + min_i64(5, mr - 1) * lda;
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#define MHA_ROW_FMA(i)                                                    \
    do {                                                                  \
        const __m256 av = _mm256_broadcast_ss(a##i + k);                  \
        c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);                       \
        c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);                       \
    } while (0)
    for (int64_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
        b += ldb;
        MHA_ROW_FMA(0);
        MHA_ROW_FMA(1);
        MHA_ROW_FMA(2);
        MHA_ROW_FMA(3);
        MHA_ROW_FMA(4);
        MHA_ROW_FMA(5);
    }
#undef MHA_ROW_FMA
    _mm256_storeu_ps(t + 0 * NR, c00), _mm256_storeu_ps(t + 0 * NR + 8, c01);
    _mm256_storeu_ps(t + 1 * NR, c10), _mm256_storeu_ps(t + 1 * NR + 8, c11);
    _mm256_storeu_ps(t + 2 * NR, c20), _mm256_storeu_ps(t + 2 * NR + 8, c21);
    _mm256_storeu_ps(t + 3 * NR, c30), _mm256_storeu_ps(t + 3 * NR + 8, c31);
    _mm256_storeu_ps(t + 4 * NR, c40), _mm256_storeu_ps(t + 4 * NR + 8, c41);
    _mm256_storeu_ps(t + 5 * NR, c50), _mm256_storeu_ps(t + 5 * NR + 8, c51);
}

/* C[i][j] = (base ? base[j] : C[i][j]) + t[i][j] for i < mr, j < nr:
 * base is the bias row on the first K block of gemm_nt (overwrite), NULL
 * when a product is accumulated. Going through t costs one L1 round trip
 * per KC multiply-adds and keeps the tails out of the micro-kernel. */
static void write_tile(const float *t, int64_t mr, int64_t nr,
                       const float *base, float *C, int64_t ldc)
{
    for (int64_t i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        const float *ti = t + i * NR;
        const float *src = base ? base : c;
        if (nr == NR) {
            __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(src), _mm256_loadu_ps(ti));
            __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(src + 8),
                                      _mm256_loadu_ps(ti + 8));
            _mm256_storeu_ps(c, v0);
            _mm256_storeu_ps(c + 8, v1);
        } else {
            for (int64_t j = 0; j < nr; j++)
                c[j] = src[j] + ti[j];
        }
    }
}

/* bp[k][j] = B[j][k] (rows j of B, stride ldb) for j < nr, 0 beyond: a
 * KC x NR panel of B^T, so the micro-kernel reads B^T rows contiguously. */
static void pack_bt(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                    float *bp)
{
    for (int64_t j = 0; j < NR; j++) {
        const float *row = B + j * ldb;
        if (j < nr)
            for (int64_t k = 0; k < kc; k++)
                bp[k * NR + j] = row[k];
        else
            for (int64_t k = 0; k < kc; k++)
                bp[k * NR + j] = 0.0f;
    }
}

/* bp[k][j] = B[k][j] for j < nr, 0 beyond: the ragged last column panel of
 * gemm_nn_acc, copied so full-width loads never pass the end of a row. */
static void pack_b_tail(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                        float *bp)
{
    for (int64_t k = 0; k < kc; k++)
        for (int64_t j = 0; j < NR; j++)
            bp[k * NR + j] = j < nr ? B[k * ldb + j] : 0.0f;
}

/* K == 0: the product is empty and C is just the bias (or zero). */
static void fill_bias(int64_t M, int64_t N, const float *bias, float *C,
                      int64_t ldc)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            C[m * ldc + n] = bias ? bias[n] : 0.0f;
}

static void avx2_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t lda, const float *B, int64_t ldb,
                         const float *bias, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        fill_bias(M, N, bias, C, ldc);
        return;
    }
    _Alignas(32) float bp[KC * NR];
    _Alignas(32) float t[MR * NR];
    float base[NR]; /* bias of this column panel, zero-padded */
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

static void avx2_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                             const float *A, int64_t lda, const float *B,
                             int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    _Alignas(32) float bp[KC * NR];
    _Alignas(32) float t[MR * NR];
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nr = min_i64(NR, N - n0);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = min_i64(KC, K - k0);
            const float *panel = B + k0 * ldb + n0;
            int64_t ldp = ldb;
            if (nr < NR) {
                pack_b_tail(panel, ldb, nr, kc, bp);
                panel = bp;
                ldp = NR;
            }
            for (int64_t m0 = 0; m0 < M; m0 += MR) {
                const int64_t mr = min_i64(MR, M - m0);
                tile_6x16(kc, A + m0 * lda + k0, lda, mr, panel, ldp, t);
                write_tile(t, mr, nr, NULL, C + m0 * ldc + n0, ldc);
            }
        }
    }
}

/* ---- vector helpers -------------------------------------------------------- */

/* Lane mask with the first r (0..8) lanes set, for maskload/maskstore. */
static __m256i tail_mask(int64_t r)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), lanes);
}

static float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static float hmax(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* ---- elementwise ----------------------------------------------------------- */

static void avx2_scale(int64_t n, float alpha, float *y)
{
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(va, _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] *= alpha;
}

static void avx2_axpy(int64_t n, float alpha, const float *x, float *y)
{
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

static void avx2_scale_add(int64_t n, float alpha, const float *x, float *y)
{
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(y + i),
                                                _mm256_loadu_ps(x + i)));
    for (; i < n; i++)
        y[i] = alpha * y[i] + x[i];
}

/* MAXPS returns its second operand when either is NaN, so with the running
 * maximum second a NaN element is skipped, like the scalar comparison. The
 * tail's missing lanes are -inf, which never wins. */
static float avx2_max(int64_t n, const float *x)
{
    __m256 acc = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_max_ps(_mm256_loadu_ps(x + i), acc);
    if (i < n) {
        const __m256i mask = tail_mask(n - i);
        const __m256 v = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY),
                                          _mm256_maskload_ps(x + i, mask),
                                          _mm256_castsi256_ps(mask));
        acc = _mm256_max_ps(v, acc);
    }
    return hmax(acc);
}

/* exp(x), Cephes expf style: n = round(x / ln2), r = x - n ln2 (ln2 split
 * in two so n * hi is exact), exp(r) by a degree-6 polynomial on
 * |r| <= ln2/2, then scaled by 2^n built in the exponent field. Relative
 * error is a few ulp. x is first clamped to [-88, 88.376]: at -88 n is -127,
 * whose exponent field is 0, so everything below about -87.7 (and -inf)
 * gives exactly 0 (arguments in (-87.7, -87.3) give denormals); at the top
 * n = 128 gives +inf. The clamp takes x as MAXPS/MINPS's second operand so
 * a NaN passes through and the polynomial propagates it. */
static __m256 exp_ps(__m256 x)
{
    x = _mm256_max_ps(_mm256_set1_ps(-88.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
    const __m256 n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

/* The tail goes through masked loads and stores so it uses the same exp as
 * the body; its unused lanes are zeroed before they reach the sum. */
static float avx2_exp_sum(int64_t n, float m, float *x)
{
    const __m256 vm = _mm256_set1_ps(m);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    if (i < n) {
        const __m256i mask = tail_mask(n - i);
        __m256 e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vm));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(mask));
        _mm256_maskstore_ps(x + i, mask, e);
        acc = _mm256_add_ps(acc, e);
    }
    return hsum(acc);
}

static const mha_cpu_kernels avx2_table = {
    .isa = "avx2",
    .gemm_nt = avx2_gemm_nt,
    .gemm_nn_acc = avx2_gemm_nn_acc,
    .scale = avx2_scale,
    .axpy = avx2_axpy,
    .scale_add = avx2_scale_add,
    .max = avx2_max,
    .exp_sum = avx2_exp_sum,
};

/* Holds no vector code itself, so it is safe to call on any x86-64. */
const mha_cpu_kernels *mha_cpu_kernels_avx2(void)
{
    return (mha_cpu_features() & MHA_FEATURE_AVX2) ? &avx2_table : NULL;
}

#else /* not x86-64 or built without -mavx2 -mfma */

const mha_cpu_kernels *mha_cpu_kernels_avx2(void)
{
    return NULL;
}

#endif
