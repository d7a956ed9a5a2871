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

/* Writes the transpose of the 8 x 8 block at src (rows ld apart) to dst
 * (rows NR apart): dst[i][j] = src[j][i]. Unpack, shuffle, then swap
 * 128-bit halves: 24 shuffles instead of 64 scalar moves. (AVX2 code: the
 * 256-bit form needs fewer shuffles than a 16 x 16 one would.) */
static void transpose_8x8(const float *src, int64_t ld, float *dst)
{
    const __m256 r0 = _mm256_loadu_ps(src + 0 * ld);
    const __m256 r1 = _mm256_loadu_ps(src + 1 * ld);
    const __m256 r2 = _mm256_loadu_ps(src + 2 * ld);
    const __m256 r3 = _mm256_loadu_ps(src + 3 * ld);
    const __m256 r4 = _mm256_loadu_ps(src + 4 * ld);
    const __m256 r5 = _mm256_loadu_ps(src + 5 * ld);
    const __m256 r6 = _mm256_loadu_ps(src + 6 * ld);
    const __m256 r7 = _mm256_loadu_ps(src + 7 * ld);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44);
    const __m256 u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44);
    const __m256 u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst + 0 * NR, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 1 * NR, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * NR, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * NR, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * NR, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * NR, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * NR, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * NR, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* bp[k][j] = B[j][k] (rows j of B, stride ldb) for j < nr, 0 beyond: a
 * KC x NR panel of B^T, so the micro-kernel reads B^T rows contiguously.
 * A full panel goes by 8 x 8 transposes, the K remainder and a ragged
 * panel element by element. */
static void pack_bt(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                    float *bp)
{
    int64_t k0 = 0;
    if (nr == NR) {
        for (; k0 + 8 <= kc; k0 += 8)
            for (int64_t j = 0; j < NR; j += 8)
                transpose_8x8(B + j * ldb + k0, ldb, bp + k0 * NR + j);
    }
    for (int64_t j = 0; j < NR; j++) {
        const float *row = B + j * ldb;
        for (int64_t k = k0; k < kc; k++)
            bp[k * NR + j] = j < nr ? row[k] : 0.0f;
    }
}

/* bp[k][j] = B[k][j] for j < nr, 0 beyond, by masked loads: gemm_nn_acc's
 * B panel made contiguous, as rows ldb apart can collide in the cache (see
 * pack_b in kernels_avx2.c). */
static void pack_b(const float *B, int64_t ldb, int64_t nr, int64_t kc,
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

/* ---- small-M gemm_nt: dot products --------------------------------------- */

/* Below one micro-tile of rows, gemm_nt works on B in place: 2 rows x 4
 * columns of dot products at a time, 16 partial sums each (see
 * kernels_avx2.c; measured crossover on Zen 4 near M = 8 here too). */
enum { DOT_MAX_M = MR - 1 };

/* Sum of the two 256-bit halves (AVX-512F only: no DQ extract). */
static __m256 fold(__m512 v)
{
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(
        _mm512_castps_pd(v), 1));
    return _mm256_add_ps(_mm512_castps512_ps256(v), hi);
}

/* [sum(s0), sum(s1), sum(s2), sum(s3)] */
static __m128 reduce4(__m512 s0, __m512 s1, __m512 s2, __m512 s3)
{
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(fold(s0), fold(s1)),
                                    _mm256_hadd_ps(fold(s2), fold(s3)));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* r0[j] = a0 . b_j, r1[j] = a1 . b_j over K, for j < 4; the K tail uses
 * masked loads, so no row is read past its end. */
static void dot_2x4(int64_t K, const float *a0, const float *a1,
                    const float *const *b, __m128 *r0, __m128 *r1)
{
    __m512 s00 = _mm512_setzero_ps(), s01 = _mm512_setzero_ps();
    __m512 s02 = _mm512_setzero_ps(), s03 = _mm512_setzero_ps();
    __m512 s10 = _mm512_setzero_ps(), s11 = _mm512_setzero_ps();
    __m512 s12 = _mm512_setzero_ps(), s13 = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 m = lanes(K - k);
        const __m512 x0 = _mm512_maskz_loadu_ps(m, a0 + k);
        const __m512 x1 = _mm512_maskz_loadu_ps(m, a1 + k);
#define MHA_DOT_COL(j)                                                    \
    do {                                                                  \
        const __m512 y = _mm512_maskz_loadu_ps(m, b[j] + k);              \
        s0##j = _mm512_fmadd_ps(x0, y, s0##j);                            \
        s1##j = _mm512_fmadd_ps(x1, y, s1##j);                            \
    } while (0)
        MHA_DOT_COL(0);
        MHA_DOT_COL(1);
        MHA_DOT_COL(2);
        MHA_DOT_COL(3);
#undef MHA_DOT_COL
    }
    *r0 = reduce4(s00, s01, s02, s03);
    *r1 = reduce4(s10, s11, s12, s13);
}

/* C[i][j] = r[j] + bias4[j] for j < nc. */
static void store_dot(__m128 r, const float *bias4, int64_t nc, float *c)
{
    r = _mm_add_ps(r, _mm_loadu_ps(bias4));
    if (nc == 4) {
        _mm_storeu_ps(c, r);
        return;
    }
    float tmp[4];
    _mm_storeu_ps(tmp, r);
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
            __m128 r0, r1;
            dot_2x4(K, a0, a1, b, &r0, &r1);
            store_dot(r0, bias4, nc, C + m0 * ldc + n0);
            if (m0 + 1 < M)
                store_dot(r1, bias4, nc, C + (m0 + 1) * ldc + n0);
        }
    }
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
    if (M <= DOT_MAX_M) {
        gemm_nt_dot(M, N, K, A, lda, B, ldb, bias, C, ldc);
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

/* ---- small-M gemm_nn_acc: streaming rows ---------------------------------- */

/* With few rows of A, each row of C is updated in place from 4 rows of B
 * at a time instead of through packed tiles (see kernels_avx2.c). */
enum { ROWS_MAX_M = 8 };

/* c[n] += x[0] b0[n] + ... + x[3] b3[n] for n < N, b_i = b0 + i ldb; the
 * last partial vector under a lane mask. */
static void nn_row_step4(int64_t N, const float *x, const float *b0,
                         int64_t ldb, float *c)
{
    const float *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    const __m512 x0 = _mm512_set1_ps(x[0]), x1 = _mm512_set1_ps(x[1]);
    const __m512 x2 = _mm512_set1_ps(x[2]), x3 = _mm512_set1_ps(x[3]);
    for (int64_t n = 0; n < N; n += 16) {
        const __mmask16 k = lanes(N - n);
        __m512 v = _mm512_maskz_loadu_ps(k, c + n);
        v = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(k, b0 + n), v);
        v = _mm512_fmadd_ps(x1, _mm512_maskz_loadu_ps(k, b1 + n), v);
        v = _mm512_fmadd_ps(x2, _mm512_maskz_loadu_ps(k, b2 + n), v);
        v = _mm512_fmadd_ps(x3, _mm512_maskz_loadu_ps(k, b3 + n), v);
        _mm512_mask_storeu_ps(c + n, k, v);
    }
}

/* c[n] += x b[n] for n < N: the last K % 4 rows of B. */
static void nn_row_step1(int64_t N, float x, const float *b, float *c)
{
    const __m512 vx = _mm512_set1_ps(x);
    for (int64_t n = 0; n < N; n += 16) {
        const __mmask16 k = lanes(N - n);
        const __m512 v = _mm512_fmadd_ps(vx, _mm512_maskz_loadu_ps(k, b + n),
                                         _mm512_maskz_loadu_ps(k, c + n));
        _mm512_mask_storeu_ps(c + n, k, v);
    }
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

static void avx512_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                               const float *A, int64_t lda, const float *B,
                               int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    if (M <= ROWS_MAX_M) {
        gemm_nn_rows(M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    _Alignas(64) float bp[KC * NR];
    _Alignas(64) float t[MR * NR];
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nr = min_i64(NR, N - n0);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = min_i64(KC, K - k0);
            pack_b(B + k0 * ldb + n0, ldb, nr, kc, bp);
            for (int64_t m0 = 0; m0 < M; m0 += MR) {
                const int64_t mr = min_i64(MR, M - m0);
                tile_8x32(kc, A + m0 * lda + k0, lda, mr, bp, NR, t);
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
