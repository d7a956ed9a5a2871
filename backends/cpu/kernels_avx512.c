/* kernels_avx512.c: the AVX-512F kernel table (x86-64), 16 floats a vector.
 * This file alone is compiled with -mavx512f (plus -mavx2 -mfma); the table
 * is handed out only when the CPU has AVX-512F and the OS saves the ZMM and
 * opmask state (cpu_features.c). Built without those flags or for another
 * architecture, it compiles to a getter returning NULL.
 *
 * Same scheme as kernels_avx2.c (see there), with an 8 x 32 micro-tile
 * (16 of the 32 ZMM registers accumulate) and opmask registers for every
 * tail, so ragged edges need no scalar loops. The packed B panel is
 * 16 KiB of stack; no heap memory is used. */
#include <stddef.h>

#include "cpu_features.h"
#include "kernels.h"
#include "mha.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX2__) && \
    defined(__FMA__)

#include <immintrin.h>
#include <math.h>

enum { MR = 8, NR = 32, KC = 128 };

static int64_t min_i64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Opmask with the first r (0..16, clamped) lanes set. */
static __mmask16 lanes(int64_t r)
{
    if (r <= 0)
        return 0;
    if (r >= 16)
        return 0xFFFF;
    return (__mmask16)((1u << r) - 1u);
}

/* ---- gemm ---------------------------------------------------------------- */

/* t[i][j] = sum_{k < kc} a_i[k] * b[k * ldb + j] for i < MR, j < NR; rows
 * past mr repeat the last valid one (see kernels_avx2.c). */
static void tile_8x32(int64_t kc, const float *a, int64_t lda, int64_t mr,
                      const float *b, int64_t ldb, float *t)
{
    const float *a0 = a;
    const float *a1 = a + min_i64(1, mr - 1) * lda;
    const float *a2 = a + min_i64(2, mr - 1) * lda;
    const float *a3 = a + min_i64(3, mr - 1) * lda;
    const float *a4 = a + min_i64(4, mr - 1) * lda;
    const float *a5 = a + min_i64(5, mr - 1) * lda;
    const float *a6 = a + min_i64(6, mr - 1) * lda;
    const float *a7 = a + min_i64(7, mr - 1) * lda;
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
    __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
    __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
    __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
#define MHA_ROW_FMA(i)                                                    \
    do {                                                                  \
        const __m512 av = _mm512_set1_ps(a##i[k]);                        \
        c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);                       \
        c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);                       \
    } while (0)
    for (int64_t k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
        b += ldb;
        MHA_ROW_FMA(0);
        MHA_ROW_FMA(1);
        MHA_ROW_FMA(2);
        MHA_ROW_FMA(3);
        MHA_ROW_FMA(4);
        MHA_ROW_FMA(5);
        MHA_ROW_FMA(6);
        MHA_ROW_FMA(7);
    }
#undef MHA_ROW_FMA
#define MHA_ROW_STORE(i)                                                  \
    do {                                                                  \
        _mm512_storeu_ps(t + (i) * NR, c##i##0);                          \
        _mm512_storeu_ps(t + (i) * NR + 16, c##i##1);                     \
    } while (0)
    MHA_ROW_STORE(0);
    MHA_ROW_STORE(1);
    MHA_ROW_STORE(2);
    MHA_ROW_STORE(3);
    MHA_ROW_STORE(4);
    MHA_ROW_STORE(5);
    MHA_ROW_STORE(6);
    MHA_ROW_STORE(7);
#undef MHA_ROW_STORE
}

/* C[i][j] = (base ? base[j] : C[i][j]) + t[i][j] for i < mr, j < nr, with
 * masked loads and stores for a ragged column edge (base has NR floats). */
static void write_tile(const float *t, int64_t mr, int64_t nr,
                       const float *base, float *C, int64_t ldc)
{
    const __mmask16 k0 = lanes(nr), k1 = lanes(nr - 16);
    for (int64_t i = 0; i < mr; i++) {
        float *c = C + i * ldc;
        const float *ti = t + i * NR;
        __m512 s0, s1;
        if (base) {
            s0 = _mm512_loadu_ps(base);
            s1 = _mm512_loadu_ps(base + 16);
        } else {
            s0 = _mm512_maskz_loadu_ps(k0, c);
            s1 = _mm512_maskz_loadu_ps(k1, c + 16);
        }
        _mm512_mask_storeu_ps(c, k0, _mm512_add_ps(s0, _mm512_loadu_ps(ti)));
        _mm512_mask_storeu_ps(c + 16, k1,
                              _mm512_add_ps(s1, _mm512_loadu_ps(ti + 16)));
    }
}

/* bp[k][j] = B[j][k] for j < nr, 0 beyond: a KC x NR panel of B^T. */
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

/* bp[k][j] = B[k][j] for j < nr, 0 beyond, by masked loads: the ragged
 * last column panel of gemm_nn_acc. */
static void pack_b_tail(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                        float *bp)
{
    const __mmask16 k0 = lanes(nr), k1 = lanes(nr - 16);
    for (int64_t k = 0; k < kc; k++) {
        const float *row = B + k * ldb;
        _mm512_storeu_ps(bp + k * NR, _mm512_maskz_loadu_ps(k0, row));
        _mm512_storeu_ps(bp + k * NR + 16, _mm512_maskz_loadu_ps(k1, row + 16));
    }
}

static void fill_bias(int64_t M, int64_t N, const float *bias, float *C,
                      int64_t ldc)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            C[m * ldc + n] = bias ? bias[n] : 0.0f;
}

static void avx512_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A,
                           int64_t lda, const float *B, int64_t ldb,
                           const float *bias, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        fill_bias(M, N, bias, C, ldc);
        return;
    }
    _Alignas(64) float bp[KC * NR];
    _Alignas(64) float t[MR * NR];
    _Alignas(64) float base[NR];
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nr = min_i64(NR, N - n0);
        for (int64_t j = 0; j < NR; j++)
            base[j] = (bias && j < nr) ? bias[n0 + j] : 0.0f;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = min_i64(KC, K - k0);
            pack_bt(B + n0 * ldb + k0, ldb, nr, kc, bp);
            for (int64_t m0 = 0; m0 < M; m0 += MR) {
                const int64_t mr = min_i64(MR, M - m0);
                tile_8x32(kc, A + m0 * lda + k0, lda, mr, bp, NR, t);
                write_tile(t, mr, nr, k0 == 0 ? base : NULL,
                           C + m0 * ldc + n0, ldc);
            }
        }
    }
}

static void avx512_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                               const float *A, int64_t lda, const float *B,
                               int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    _Alignas(64) float bp[KC * NR];
    _Alignas(64) float t[MR * NR];
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
                tile_8x32(kc, A + m0 * lda + k0, lda, mr, panel, ldp, t);
                write_tile(t, mr, nr, NULL, C + m0 * ldc + n0, ldc);
            }
        }
    }
}

/* ---- elementwise ----------------------------------------------------------- */

/* Each loop's last, partial vector is handled by the same code under a
 * lane mask, so there is no scalar tail. */
static void avx512_scale(int64_t n, float alpha, float *y)
{
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes(n - i);
        _mm512_mask_storeu_ps(y + i, k,
                              _mm512_mul_ps(va, _mm512_maskz_loadu_ps(k, y + i)));
    }
}

static void avx512_axpy(int64_t n, float alpha, const float *x, float *y)
{
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes(n - i);
        const __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i),
                                         _mm512_maskz_loadu_ps(k, y + i));
        _mm512_mask_storeu_ps(y + i, k, r);
    }
}

static void avx512_scale_add(int64_t n, float alpha, const float *x, float *y)
{
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes(n - i);
        const __m512 r = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, y + i),
                                         _mm512_maskz_loadu_ps(k, x + i));
        _mm512_mask_storeu_ps(y + i, k, r);
    }
}

/* Lanes outside the tail load as -inf, and VMAXPS returns its second
 * operand when either is NaN, so NaN elements never replace the running
 * maximum (as in the scalar comparison). */
static float avx512_max(int64_t n, const float *x)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 acc = ninf;
    for (int64_t i = 0; i < n; i += 16) {
        const __m512 v = _mm512_mask_loadu_ps(ninf, lanes(n - i), x + i);
        acc = _mm512_max_ps(v, acc);
    }
    return _mm512_reduce_max_ps(acc);
}

/* exp(x): range reduction and polynomial as in kernels_avx2.c, but the 2^n
 * scaling is VSCALEFPS, which rounds correctly into the denormal range and
 * overflows to +inf itself. So the clamp can be wide: at -104 the result
 * already rounds to exactly 0 (so does -inf), and +89 is past ln(FLT_MAX),
 * giving +inf. NaN passes the clamp as the second operand and propagates. */
static __m512 exp_ps(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
    x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
    const __m512 n = _mm512_roundscale_ps(
        _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

/* The tail's unused lanes are zeroed (maskz) after the exp so they add
 * nothing to the sum, whatever m is. */
static float avx512_exp_sum(int64_t n, float m, float *x)
{
    const __m512 vm = _mm512_set1_ps(m);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = lanes(n - i);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
        e = _mm512_maskz_mov_ps(k, e);
        _mm512_mask_storeu_ps(x + i, k, e);
        acc = _mm512_add_ps(acc, e);
    }
    return _mm512_reduce_add_ps(acc);
}

static const mha_cpu_kernels avx512_table = {
    .isa = "avx512",
    .gemm_nt = avx512_gemm_nt,
    .gemm_nn_acc = avx512_gemm_nn_acc,
    .scale = avx512_scale,
    .axpy = avx512_axpy,
    .scale_add = avx512_scale_add,
    .max = avx512_max,
    .exp_sum = avx512_exp_sum,
};

/* Holds no vector code itself, so it is safe to call on any x86-64. */
const mha_cpu_kernels *mha_cpu_kernels_avx512(void)
{
    return (mha_cpu_features() & MHA_FEATURE_AVX512) ? &avx512_table : NULL;
}

#else /* not x86-64 or built without -mavx512f -mavx2 -mfma */

const mha_cpu_kernels *mha_cpu_kernels_avx512(void)
{
    return NULL;
}

#endif
