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
 * rows of B are already NR-wide rows and a KC x NR panel of them is copied
 * to a contiguous, zero-padded buffer (see pack_b for why).
 * Row tails repeat the last valid row (results discarded), column tails are
 * masked at write-back, so any M, N, K and leading dimension work. With
 * fewer rows than a tile, packing does not pay: gemm_nt then computes dot
 * products on B in place (gemm_nt_dot) and gemm_nn_acc streams rows of B
 * into rows of C (gemm_nn_rows). No heap memory is used: the largest
 * scratch is the 8 KiB packed panel. */
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

/* Lane mask with the first r (0..8) lanes set, for maskload/maskstore. */
static __m256i tail_mask(int64_t r)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)r), lanes);
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

/* Writes the transpose of the 8 x 8 block at src (rows ld apart) to dst
 * (rows NR apart): dst[i][j] = src[j][i]. Unpack, shuffle, then swap
 * 128-bit halves: 24 shuffles instead of 64 scalar moves. */
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

/* bp[k][j] = B[k][j] for j < nr, 0 beyond: a KC x NR panel of gemm_nn_acc's
 * B made contiguous. Read in place, the panel's rows sit ldb apart, and
 * with a power-of-two ldb (512 floats) they fall into a few cache sets and
 * evict each other (a 4x slowdown measured at 512^3); a ragged panel is
 * zero-padded so full-width loads never pass the end of a row. */
static void pack_b(const float *B, int64_t ldb, int64_t nr, int64_t kc,
                   float *bp)
{
    for (int64_t k = 0; k < kc; k++) {
        const float *row = B + k * ldb;
        float *dst = bp + k * NR;
        if (nr == NR) {
            _mm256_store_ps(dst, _mm256_loadu_ps(row));
            _mm256_store_ps(dst + 8, _mm256_loadu_ps(row + 8));
        } else {
            for (int64_t j = 0; j < NR; j++)
                dst[j] = j < nr ? row[j] : 0.0f;
        }
    }
}

/* K == 0: the product is empty and C is just the bias (or zero). */
static void fill_bias(int64_t M, int64_t N, const float *bias, float *C,
                      int64_t ldc)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            C[m * ldc + n] = bias ? bias[n] : 0.0f;
}

/* ---- small-M gemm_nt: dot products --------------------------------------- */

/* With fewer rows of A than one micro-tile, the tile path computes empty
 * rows and packs B^T for little use, so gemm_nt below MR rows works on B in
 * place instead: 2 rows x 4 columns of dot products at a time, 8 partial
 * sums each, reduced at the end. Measured on Zen 4 (N = 512..1024,
 * K = 64..512): 45-50 GFLOP/s for any M against 20 (M = 2) to 60 (M = 6)
 * for the tiles, which win from M = 8 on. */
enum { DOT_MAX_M = MR - 1 };

/* [sum(s0), sum(s1), sum(s2), sum(s3)] */
static __m128 reduce4(__m256 s0, __m256 s1, __m256 s2, __m256 s3)
{
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1),
                                    _mm256_hadd_ps(s2, s3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* r0[j] = a0 . b_j, r1[j] = a1 . b_j over K, for j < 4; the K tail is read
 * with masked loads so no row is read past its end. */
static void dot_2x4(int64_t K, const float *a0, const float *a1,
                    const float *const *b, __m128 *r0, __m128 *r1)
{
    __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps();
    __m256 s02 = _mm256_setzero_ps(), s03 = _mm256_setzero_ps();
    __m256 s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps();
    __m256 s12 = _mm256_setzero_ps(), s13 = _mm256_setzero_ps();
#define MHA_DOT_COL(j, load)                                              \
    do {                                                                  \
        const __m256 y = load(b[j] + k);                                  \
        s0##j = _mm256_fmadd_ps(x0, y, s0##j);                            \
        s1##j = _mm256_fmadd_ps(x1, y, s1##j);                            \
    } while (0)
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const __m256 x0 = _mm256_loadu_ps(a0 + k);
        const __m256 x1 = _mm256_loadu_ps(a1 + k);
        MHA_DOT_COL(0, _mm256_loadu_ps);
        MHA_DOT_COL(1, _mm256_loadu_ps);
        MHA_DOT_COL(2, _mm256_loadu_ps);
        MHA_DOT_COL(3, _mm256_loadu_ps);
    }
    if (k < K) {
        const __m256i mask = tail_mask(K - k);
#define MHA_MASKED_LOAD(p) _mm256_maskload_ps((p), mask)
        const __m256 x0 = MHA_MASKED_LOAD(a0 + k);
        const __m256 x1 = MHA_MASKED_LOAD(a1 + k);
        MHA_DOT_COL(0, MHA_MASKED_LOAD);
        MHA_DOT_COL(1, MHA_MASKED_LOAD);
        MHA_DOT_COL(2, MHA_MASKED_LOAD);
        MHA_DOT_COL(3, MHA_MASKED_LOAD);
#undef MHA_MASKED_LOAD
    }
#undef MHA_DOT_COL
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
    if (M <= DOT_MAX_M) {
        gemm_nt_dot(M, N, K, A, lda, B, ldb, bias, C, ldc);
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

/* ---- small-M gemm_nn_acc: streaming rows ---------------------------------- */

/* With few rows of A, the tile path spends its time packing B and filling
 * tile rows that do not exist. Up to ROWS_MAX_M rows, each row of C is
 * instead updated in place from 4 rows of B at a time (the C row stays in
 * L1, B streams with unit stride): about 45 GFLOP/s on Zen 4 whatever M,
 * 4-5x the tile path at M = 1; the tile path overtakes it between M = 5
 * and 16 depending on N and K, hence 8. */
enum { ROWS_MAX_M = 8 };

/* c[n] += x0 b0[n] + x1 b1[n] + x2 b2[n] + x3 b3[n] for n < N, the last
 * partial vector by masked loads and stores. */
static void nn_row_step4(int64_t N, const float *x, const float *b0,
                         int64_t ldb, float *c)
{
    const float *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    const __m256 x0 = _mm256_set1_ps(x[0]), x1 = _mm256_set1_ps(x[1]);
    const __m256 x2 = _mm256_set1_ps(x[2]), x3 = _mm256_set1_ps(x[3]);
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
        __m256 v = _mm256_loadu_ps(c + n);
        v = _mm256_fmadd_ps(x0, _mm256_loadu_ps(b0 + n), v);
        v = _mm256_fmadd_ps(x1, _mm256_loadu_ps(b1 + n), v);
        v = _mm256_fmadd_ps(x2, _mm256_loadu_ps(b2 + n), v);
        v = _mm256_fmadd_ps(x3, _mm256_loadu_ps(b3 + n), v);
        _mm256_storeu_ps(c + n, v);
    }
    if (n < N) {
        const __m256i mask = tail_mask(N - n);
        __m256 v = _mm256_maskload_ps(c + n, mask);
        v = _mm256_fmadd_ps(x0, _mm256_maskload_ps(b0 + n, mask), v);
        v = _mm256_fmadd_ps(x1, _mm256_maskload_ps(b1 + n, mask), v);
        v = _mm256_fmadd_ps(x2, _mm256_maskload_ps(b2 + n, mask), v);
        v = _mm256_fmadd_ps(x3, _mm256_maskload_ps(b3 + n, mask), v);
        _mm256_maskstore_ps(c + n, mask, v);
    }
}

/* c[n] += x b[n] for n < N: the last K % 4 rows of B. */
static void nn_row_step1(int64_t N, float x, const float *b, float *c)
{
    const __m256 vx = _mm256_set1_ps(x);
    int64_t n = 0;
    for (; n + 8 <= N; n += 8)
        _mm256_storeu_ps(c + n, _mm256_fmadd_ps(vx, _mm256_loadu_ps(b + n),
                                                _mm256_loadu_ps(c + n)));
    if (n < N) {
        const __m256i mask = tail_mask(N - n);
        const __m256 v = _mm256_fmadd_ps(vx, _mm256_maskload_ps(b + n, mask),
                                         _mm256_maskload_ps(c + n, mask));
        _mm256_maskstore_ps(c + n, mask, v);
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

static void avx2_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                             const float *A, int64_t lda, const float *B,
                             int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    if (M <= ROWS_MAX_M) {
        gemm_nn_rows(M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    _Alignas(32) float bp[KC * NR];
    _Alignas(32) float t[MR * NR];
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

/* ---- vector helpers -------------------------------------------------------- */

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
