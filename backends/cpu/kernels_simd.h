/* kernels_simd.h: the body of every SIMD kernel table (kernels_avx2.c,
 * kernels_avx512.c, kernels_neon.c), written once over a small vector
 * vocabulary that each of those files defines before including this
 * header. Only the vocabulary is ISA code; the blocking, packing, tails and
 * the exp live here, so the three tables cannot drift apart. Include it
 * once, from a file compiled with the ISA's flags.
 *
 * The including file defines:
 *   MHA_SIMD_ISA       the table's name ("avx2", ...)
 *   vf, VL             the vector type and its floats
 *   MR, NV             register tile: MR rows x NV vectors, NR = NV * VL
 *   KC                 k block of the packed GEMM, so that one KC x NR
 *                      panel (16 KiB) stays in L1 while a block of A
 *                      streams past it
 *   TB                 side of the square block transpose_block handles
 *   vf_zero() vf_set1(x) vf_load(p) vf_store(p, v)    unaligned
 *   vf_load_n(p, n)    lanes < n from p, others 0; n in [0, VL); never
 *                      touches memory at or past p + n
 *   vf_store_n(p, v, n) stores lanes < n only
 *   vf_add vf_sub vf_mul, vf_fma(a, b, c) = a*b + c, vf_fnma = c - a*b
 *   vf_min(a, b), vf_max(a, b): a NaN in b must come out (exp's clamp)
 *   vf_max_keep(v, acc): max of the two, a NaN in v ignored
 *   vf_hsum(v), vf_hmax(v)
 *   vf_hsum_each(v)    lane i = vf_hsum(v[i]) for the VL vectors v[0..VL)
 *                      (summed in another order: equal within rounding)
 *   vf_round(v)        to nearest, ties to even
 *   vf_ldexp(y, n)     y * 2^n for integral n (a vf), 0 at n = -127 or
 *                      below, as the ISA can
 *   EXP_LO, EXP_HI     clamp of exp's argument (see simd_exp)
 *   vf_load_f16(p)     VL fp16 values at p widened to floats, exactly
 *                      (the ISA's conversion instruction)
 *   transpose_block(src, lds, alpha, dst, ldd):
 *                      dst[i*ldd + j] = alpha * src[j*lds + i]
 *                      for i, j < TB
 *
 * GEMM scheme: C is cut into MR x NR tiles computed by one register-
 * blocked micro-kernel that, for each k, broadcasts A[i][k] of MR rows and
 * multiplies it into an NR-wide row of the packed B (FMA); accumulators
 * start from zero, the bias row or C itself, so the bias add and the
 * accumulation are the tile's epilogue, not another pass. A is read in
 * place (row tails repeat the last valid row, results discarded); B is
 * packed into panels (kernels.h). Edge tiles load and store C with lane
 * masks (vf_load_n / vf_store_n) and skip the rows past M, so any M, N, K
 * and leading dimension work without a copy (a stack copy of every edge
 * tile cost about 2% of GQA prefill's attention, whose causal diagonal
 * cut per row tile makes many). gemm_nt and gemm_nn_acc pack one
 * KC x NR panel at a time into a stack buffer; callers that reuse B pack
 * it once with pack_nt / pack_nn and call gemm_packed. With fewer rows than
 * a tile packing does not pay: gemm_nt then takes dot products on B in
 * place and gemm_nn_acc streams rows of B into rows of C. */
#ifndef MHA_CPU_KERNELS_SIMD_H
#define MHA_CPU_KERNELS_SIMD_H

#include <math.h>
#include <stddef.h>

#include "half.h"
#include "kernels.h"

#define NR (NV * VL)
_Static_assert(NV % 2 == 0, "micro_tile_half takes NV / 2 vectors");

/* Full unrolling of the constant tile loops lets the compiler keep the
 * MR x NV accumulators in registers. */
#define MHA_UNROLL _Pragma("GCC unroll 16")

/* Bodies whose tile sizes are arguments but constants at every caller:
 * inlined, each caller gets its own straight-line loop. */
#define SIMD_INLINE static inline __attribute__((always_inline))

static int64_t min_i64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---- elementwise ------------------------------------------------------------- */

/* Each loop's last, partial vector goes through vf_load_n / vf_store_n, so
 * the tail uses the same arithmetic as the body. */
static void simd_scale(int64_t n, float alpha, const float *x, float *y)
{
    const vf va = vf_set1(alpha);
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        vf_store(y + i, vf_mul(va, vf_load(x + i)));
    if (i < n)
        vf_store_n(y + i, vf_mul(va, vf_load_n(x + i, n - i)), n - i);
}

/* y[i] = alpha * a[i] + b[i]: axpy and scale_add, with y aliasing a or b. */
static void fma_arrays(int64_t n, float alpha, const float *a, const float *b,
                       float *y)
{
    const vf va = vf_set1(alpha);
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        vf_store(y + i, vf_fma(va, vf_load(a + i), vf_load(b + i)));
    if (i < n)
        vf_store_n(y + i,
                   vf_fma(va, vf_load_n(a + i, n - i), vf_load_n(b + i, n - i)),
                   n - i);
}

static void simd_axpy(int64_t n, float alpha, const float *x, float *y)
{
    fma_arrays(n, alpha, x, y, y);
}

static void simd_scale_add(int64_t n, float alpha, const float *x, float *y)
{
    fma_arrays(n, alpha, y, x, y);
}

/* The vector maximum never takes a NaN (vf_max_keep), and the scalar tail
 * compares with >, false for any NaN: NaNs are ignored throughout. */
static float simd_max(int64_t n, const float *x)
{
    vf acc = vf_set1(-INFINITY);
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        acc = vf_max_keep(vf_load(x + i), acc);
    float m = vf_hmax(acc);
    for (; i < n; i++)
        if (x[i] > m)
            m = x[i];
    return m;
}

/* exp(x), Cephes expf style: n = round(x / ln2), r = x - n ln2 (ln2 split
 * in two so n * hi is exact), exp(r) by a degree-6 polynomial on
 * |r| <= ln2/2, then scaled by 2^n. Relative error is a few ulp (the
 * contract is 1e-6, swept over [-87, 0] by tests/test_cpu_kernels.c).
 * x is first clamped to [EXP_LO, EXP_HI] with x as the clamps' second
 * operand, so a NaN passes through and the polynomial propagates it; the
 * ISA file says where its clamp flushes to 0 and overflows to +inf. */
static vf simd_exp(vf x)
{
    x = vf_max(vf_set1(EXP_LO), x);
    x = vf_min(vf_set1(EXP_HI), x);
    const vf n = vf_round(vf_mul(x, vf_set1(1.44269504088896341f)));
    vf r = vf_fnma(n, vf_set1(0.693359375f), x);
    r = vf_fnma(n, vf_set1(-2.12194440e-4f), r);
    vf p = vf_set1(1.9875691500e-4f);
    p = vf_fma(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fma(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fma(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fma(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fma(p, r, vf_set1(5.0000001201e-1f));
    vf y = vf_fma(p, vf_mul(r, r), r);
    y = vf_add(y, vf_set1(1.0f));
    return vf_ldexp(y, n);
}

/* The tail's exp is computed on a zero-padded vector; only its real lanes
 * are stored and summed. */
static float simd_exp_sum(int64_t n, float m, float *x)
{
    const vf vm = vf_set1(m);
    vf acc = vf_zero();
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        const vf e = simd_exp(vf_sub(vf_load(x + i), vm));
        vf_store(x + i, e);
        acc = vf_add(acc, e);
    }
    float sum = vf_hsum(acc);
    if (i < n) {
        _Alignas(64) float t[VL];
        vf_store(t, simd_exp(vf_sub(vf_load_n(x + i, n - i), vm)));
        for (int64_t j = 0; j < n - i; j++) {
            x[i + j] = t[j];
            sum += t[j];
        }
    }
    return sum;
}

/* ---- micro-kernel ---------------------------------------------------------- */

enum tile_init { INIT_ZERO, INIT_ROW, INIT_C };

/* Vector v of a tile row nr columns wide: its first n lanes, n = VL
 * inside, fewer at the edge, none past it; lanes past nr are never read
 * or written. */
SIMD_INLINE vf load_cols(const float *p, int64_t nr, int v)
{
    const int64_t n = nr - v * VL;
    return n >= VL ? vf_load(p + v * VL)
           : n > 0 ? vf_load_n(p + v * VL, n)
                   : vf_zero();
}

SIMD_INLINE void store_cols(float *p, int64_t nr, int v, vf x)
{
    const int64_t n = nr - v * VL;
    if (n >= VL)
        vf_store(p + v * VL, x);
    else if (n > 0)
        vf_store_n(p + v * VL, x, n);
}

/* c[i][j] = init + sum_{k < kc} a_i[k] * bp[k*NR + j] for i < mr, j < nr
 * (nr <= nv * VL, nv <= NV vectors of the panel's NR columns), where
 * element k of a_i is a[i*rs + k*cs]; rows past mr repeat the last valid
 * one (so only A's own memory is read) and are not stored. A row-major
 * has (rs, cs) = (lda, 1), gemm_packed_tn's [kc][MR] copy of a block (1,
 * MR), the same arithmetic either way. init is 0, row[j] or c[i][j]. Only
 * the mr x nr window of c (and of row) is read or written, so an edge tile
 * needs no copy. nv is a constant at each caller (always inlined), so the
 * accumulators stay in registers; so are mr and nr for a full tile, whose
 * loads and stores are then whole vectors. */
SIMD_INLINE void
micro_tile_nv(int nv, int64_t kc, const float *a, int64_t rs, int64_t cs,
              int64_t mr, int64_t nr, const float *bp, float *c,
              int64_t ldc, enum tile_init init, const float *row)
{
    const float *ar[MR];
    vf acc[MR][NV];
    MHA_UNROLL
    for (int i = 0; i < MR; i++)
        ar[i] = a + (i < mr ? i : mr - 1) * rs;
    MHA_UNROLL
    for (int i = 0; i < MR; i++) {
        MHA_UNROLL
        for (int v = 0; v < nv; v++)
            acc[i][v] = init == INIT_C && i < mr
                            ? load_cols(c + i * ldc, nr, v)
                        : init == INIT_ROW ? load_cols(row, nr, v)
                                           : vf_zero();
    }
    for (int64_t k = 0, off = 0; k < kc; k++, off += cs) {
        vf b[NV];
        MHA_UNROLL
        for (int v = 0; v < nv; v++)
            b[v] = vf_load(bp + k * NR + v * VL);
        MHA_UNROLL
        for (int i = 0; i < MR; i++) {
            const vf x = vf_set1(ar[i][off]);
            MHA_UNROLL
            for (int v = 0; v < nv; v++)
                acc[i][v] = vf_fma(x, b[v], acc[i][v]);
        }
    }
    MHA_UNROLL
    for (int i = 0; i < MR; i++) {
        if (i >= mr)
            break;
        MHA_UNROLL
        for (int v = 0; v < nv; v++)
            store_cols(c + i * ldc, nr, v, acc[i][v]);
    }
}

/* The full tile; an edge tile of up to NR columns, and one of at most NR /
 * 2 (the half-wide tile: every table's NV is even), which computes only
 * half the FMAs (the attention's causal diagonal, cut per row tile, has
 * many such edges). */
static void micro_tile(int64_t kc, const float *a, int64_t rs, int64_t cs,
                       const float *bp, float *c, int64_t ldc,
                       enum tile_init init, const float *row)
{
    micro_tile_nv(NV, kc, a, rs, cs, MR, NR, bp, c, ldc, init, row);
}

static void micro_tile_edge(int64_t kc, const float *a, int64_t rs,
                            int64_t cs, int64_t mr, int64_t nr,
                            const float *bp, float *c, int64_t ldc,
                            enum tile_init init, const float *row)
{
    micro_tile_nv(NV, kc, a, rs, cs, mr, nr, bp, c, ldc, init, row);
}

static void micro_tile_half(int64_t kc, const float *a, int64_t rs,
                            int64_t cs, int64_t mr, int64_t nr,
                            const float *bp, float *c, int64_t ldc,
                            enum tile_init init, const float *row)
{
    micro_tile_nv(NV / 2, kc, a, rs, cs, mr, nr, bp, c, ldc, init, row);
}

/* One mr x nr tile of C (ldc), straight from the registers. A's element
 * (i, k) is a[i*rs + k*cs] (micro_tile_nv). */
static void tile(int64_t kc, const float *a, int64_t rs, int64_t cs,
                 int64_t mr, const float *bp, int64_t nr, int init_c,
                 const float *row, float *c, int64_t ldc)
{
    const enum tile_init init = init_c ? INIT_C : row ? INIT_ROW : INIT_ZERO;
    if (mr == MR && nr == NR)
        micro_tile(kc, a, rs, cs, bp, c, ldc, init, row);
    else if (nr <= NR / 2)
        micro_tile_half(kc, a, rs, cs, mr, nr, bp, c, ldc, init, row);
    else
        micro_tile_edge(kc, a, rs, cs, mr, nr, bp, c, ldc, init, row);
}

/* n <= MR floats from src to dst, whole vectors where they fit. */
static void copy_row(int64_t n, const float *src, float *dst)
{
    for (int64_t i = 0; i < n; i += VL) {
        if (n - i >= VL)
            vf_store(dst + i, vf_load(src + i));
        else
            vf_store_n(dst + i, vf_load_n(src + i, n - i), n - i);
    }
}

/* An A^T of at most this many floats (K x lda: 32 KiB, an L1) is read in
 * place by gemm_packed_tn; a larger one a block at a time from a copy. */
enum { TN_IN_PLACE = 8192 };

/* gemm_packed (tn 0) and gemm_packed_tn (tn 1: A is A^T, rows lda apart).
 * Loops: k blocks of KC outermost (C gathers the partial sums in a fixed
 * order). A row-major: then panels of B, each reused from L1 by every row
 * tile. A^T: then row tiles, each MR x kc block of A read by every panel
 * of B: in place when A^T fits TN_IN_PLACE (the attention backward's P
 * and dS tiles), else copied once into a [kc][MR] buffer, as in place the
 * kc rows of a block (a weight gradient's dY^T: a power of two apart)
 * fall into a few cache sets and evict each other on every panel (the
 * copy costs about 8% at 64 x 64 x 64, where in place needs none). The
 * tiles, and so the arithmetic, are the same either way. */
static void gemm_blocks(int tn, int64_t M, int64_t N, int64_t K,
                        const float *A, int64_t lda, const float *Bp,
                        int64_t ldp, const float *bias, int accumulate,
                        float *C, int64_t ldc)
{
    _Alignas(64) float ap[KC * MR];
    if (M <= 0 || N <= 0)
        return;
    int64_t k0 = 0;
    do {
        const int64_t kc = min_i64(KC, K - k0);
        const int init_c = accumulate || k0 > 0;
        const float *bk = Bp + k0 * NR;
        if (tn) {
            for (int64_t m0 = 0; m0 < M; m0 += MR) {
                const int64_t mr = min_i64(MR, M - m0);
                const float *a = A + k0 * lda + m0;
                int64_t cs = lda;
                if (K * lda > TN_IN_PLACE) {
                    for (int64_t k = 0; k < kc; k++)
                        copy_row(mr, a + k * lda, ap + k * MR);
                    a = ap;
                    cs = MR;
                }
                for (int64_t n0 = 0; n0 < N; n0 += NR)
                    tile(kc, a, 1, cs, mr, bk + n0 * ldp,
                         min_i64(NR, N - n0), init_c,
                         !init_c && bias ? bias + n0 : NULL,
                         C + m0 * ldc + n0, ldc);
            }
        } else {
            for (int64_t n0 = 0; n0 < N; n0 += NR) {
                const float *row = !init_c && bias ? bias + n0 : NULL;
                for (int64_t m0 = 0; m0 < M; m0 += MR)
                    tile(kc, A + m0 * lda + k0, lda, 1, min_i64(MR, M - m0),
                         bk + n0 * ldp, min_i64(NR, N - n0), init_c, row,
                         C + m0 * ldc + n0, ldc);
            }
        }
        k0 += kc;
    } while (k0 < K);
}

static void simd_gemm_packed(int64_t M, int64_t N, int64_t K, const float *A,
                             int64_t lda, const float *Bp, int64_t ldp,
                             const float *bias, int accumulate, float *C,
                             int64_t ldc)
{
    gemm_blocks(0, M, N, K, A, lda, Bp, ldp, bias, accumulate, C, ldc);
}

static void simd_gemm_packed_tn(int64_t M, int64_t N, int64_t K,
                                const float *At, int64_t lda, const float *Bp,
                                int64_t ldp, const float *bias, int accumulate,
                                float *C, int64_t ldc)
{
    gemm_blocks(1, M, N, K, At, lda, Bp, ldp, bias, accumulate, C, ldc);
}

/* ---- packing --------------------------------------------------------------- */

/* One panel of pack_nt: out[k][j] = alpha * B[j][k] for j < nr, 0
 * beyond, TB x TB blocks by transposes, the ragged rest element by
 * element. Scaling as it transposes spares a second pass over the panel
 * (the attention's K, pre-multiplied by its scale). */
static void pack_nt_panel(int64_t nr, int64_t K, const float *B, int64_t ldb,
                          float alpha, float *out)
{
    const int64_t jfull = nr / TB * TB, kfull = K / TB * TB;
    for (int64_t k0 = 0; k0 < kfull; k0 += TB)
        for (int64_t j = 0; j < jfull; j += TB)
            transpose_block(B + j * ldb + k0, ldb, alpha, out + k0 * NR + j,
                            NR);
    for (int64_t j = 0; j < NR; j++)
        for (int64_t k = j < jfull ? kfull : 0; k < K; k++)
            out[k * NR + j] = j < nr ? alpha * B[j * ldb + k] : 0.0f;
}


static void simd_pack_nt(int64_t N, int64_t K, const float *B, int64_t ldb,
                         float alpha, float *out)
{
    for (int64_t n0 = 0; n0 < N; n0 += NR)
        pack_nt_panel(min_i64(NR, N - n0), K, B + n0 * ldb, ldb, alpha,
                      out + n0 * K);
}

/* One panel of pack_nn: out[k][j] = B[k][j] for j < nr, 0 beyond. Rows of
 * B sit ldb apart, and with a power-of-two ldb they fall into a few cache
 * sets and evict each other (a 4x slowdown measured at 512^3), hence the
 * copy even where no transpose is needed. */
static void pack_nn_panel(int64_t K, int64_t nr, const float *B, int64_t ldb,
                          float *out)
{
    for (int64_t k = 0; k < K; k++) {
        const float *src = B + k * ldb;
        float *dst = out + k * NR;
        MHA_UNROLL
        for (int v = 0; v < NV; v++) {
            const int64_t cnt = nr - v * VL;
            vf_store(dst + v * VL,
                     cnt >= VL ? vf_load(src + v * VL)
                     : cnt > 0 ? vf_load_n(src + v * VL, cnt)
                               : vf_zero());
        }
    }
}

static void simd_pack_nn(int64_t K, int64_t N, const float *B, int64_t ldb,
                         float *out)
{
    for (int64_t n0 = 0; n0 < N; n0 += NR)
        pack_nn_panel(K, min_i64(NR, N - n0), B + n0, ldb, out + n0 * K);
}

/* C = bias + A B^T (nt: B is N x K) or C += A B (B is K x N) with B read in
 * place, one KC x NR panel packed at a time into a stack buffer and used by
 * every row tile. */
static void gemm_by_panels(int nt, int64_t M, int64_t N, int64_t K,
                           const float *A, int64_t lda, const float *B,
                           int64_t ldb, const float *bias, float *C,
                           int64_t ldc)
{
    _Alignas(64) float bp[KC * NR];
    for (int64_t n0 = 0; n0 < N; n0 += NR) {
        const int64_t nr = min_i64(NR, N - n0);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int64_t kc = min_i64(KC, K - k0);
            if (nt)
                pack_nt_panel(nr, kc, B + n0 * ldb + k0, ldb, 1.0f, bp);
            else
                pack_nn_panel(kc, nr, B + k0 * ldb + n0, ldb, bp);
            simd_gemm_packed(M, nr, kc, A + k0, lda, bp, kc,
                             bias ? bias + n0 : NULL, !nt || k0 > 0, C + n0,
                             ldc);
        }
    }
}

/* ---- gemm_nt ----------------------------------------------------------------- */

/* With fewer rows of A than one micro-tile, the tile path computes empty
 * rows and packs B^T for little use, so gemm_nt below MR rows works on B in
 * place: 2 rows x 4 columns of dot products at a time, VL partial sums
 * each, reduced at the end. Measured on Zen 4 (N = 512..1024, K = 64..512):
 * 45-50 GFLOP/s for any M against 20 (M = 2) to 60 (M = 6) for the tiles,
 * which win from M = 8 on. */
enum { DOT_MAX_M = MR - 1 };

/* r0[j] = a0 . b[j], r1[j] = a1 . b[j] over K, for j < 4. */
static void dot_2x4(int64_t K, const float *a0, const float *a1,
                    const float *const *b, float *r0, float *r1)
{
    vf s0[4], s1[4];
    MHA_UNROLL
    for (int j = 0; j < 4; j++)
        s0[j] = s1[j] = vf_zero();
    for (int64_t k = 0; k < K; k += VL) {
        const int64_t cnt = min_i64(VL, K - k);
        const vf x0 = cnt == VL ? vf_load(a0 + k) : vf_load_n(a0 + k, cnt);
        const vf x1 = cnt == VL ? vf_load(a1 + k) : vf_load_n(a1 + k, cnt);
        MHA_UNROLL
        for (int j = 0; j < 4; j++) {
            const vf y = cnt == VL ? vf_load(b[j] + k)
                                   : vf_load_n(b[j] + k, cnt);
            s0[j] = vf_fma(x0, y, s0[j]);
            s1[j] = vf_fma(x1, y, s1[j]);
        }
    }
    for (int j = 0; j < 4; j++) {
        r0[j] = vf_hsum(s0[j]);
        r1[j] = vf_hsum(s1[j]);
    }
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
            const float *b[4];
            float r0[4], r1[4];
            for (int64_t j = 0; j < 4; j++)
                b[j] = B + min_i64(n0 + j, N - 1) * ldb;
            dot_2x4(K, a0, a1, b, r0, r1);
            for (int64_t j = 0; j < min_i64(4, N - n0); j++) {
                const float add = bias ? bias[n0 + j] : 0.0f;
                C[m0 * ldc + n0 + j] = r0[j] + add;
                if (m0 + 1 < M)
                    C[(m0 + 1) * ldc + n0 + j] = r1[j] + add;
            }
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

static void simd_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A,
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
    gemm_by_panels(1, M, N, K, A, lda, B, ldb, bias, C, ldc);
}

/* ---- gemm_nn_acc --------------------------------------------------------------- */

/* With few rows of A, the tile path spends its time packing B and filling
 * tile rows that do not exist. Up to ROWS_MAX_M rows, each row of C is
 * instead updated in place from 4 rows of B at a time (the C row stays in
 * L1, B streams with unit stride): about 45 GFLOP/s on Zen 4 whatever M,
 * 4-5x the tile path at M = 1; the tile path overtakes it between M = 5
 * and 16 depending on N and K, hence 8. */
enum { ROWS_MAX_M = 8 };

/* c[n] += x[0] b0[n] + x[1] b1[n] + x[2] b2[n] + x[3] b3[n] for n < N,
 * b_i = b0 + i ldb: one pass over c per 4 rows of B. */
static void nn_row_step4(int64_t N, const float *x, const float *b0,
                         int64_t ldb, float *c)
{
    const float *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
    const vf x0 = vf_set1(x[0]), x1 = vf_set1(x[1]);
    const vf x2 = vf_set1(x[2]), x3 = vf_set1(x[3]);
    int64_t n = 0;
    for (; n + VL <= N; n += VL) {
        vf v = vf_load(c + n);
        v = vf_fma(x0, vf_load(b0 + n), v);
        v = vf_fma(x1, vf_load(b1 + n), v);
        v = vf_fma(x2, vf_load(b2 + n), v);
        v = vf_fma(x3, vf_load(b3 + n), v);
        vf_store(c + n, v);
    }
    if (n < N) {
        const int64_t r = N - n;
        vf v = vf_load_n(c + n, r);
        v = vf_fma(x0, vf_load_n(b0 + n, r), v);
        v = vf_fma(x1, vf_load_n(b1 + n, r), v);
        v = vf_fma(x2, vf_load_n(b2 + n, r), v);
        v = vf_fma(x3, vf_load_n(b3 + n, r), v);
        vf_store_n(c + n, v, r);
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
        for (; k < K; k++) /* the last K % 4 rows of B */
            simd_axpy(N, a[k], B + k * ldb, c);
    }
}

static void simd_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                             const float *A, int64_t lda, const float *B,
                             int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0 || K <= 0)
        return;
    if (M <= ROWS_MAX_M) {
        gemm_nn_rows(M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    gemm_by_panels(0, M, N, K, A, lda, B, ldb, NULL, C, ldc);
}

/* Whole vectors through the ISA's conversion instruction (vf_load_f16),
 * the tail through the scalar routine: both exact, so the split point
 * cannot change a bit. */
static void simd_f16_to_f32(int64_t n, const uint16_t *x, float *y)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        vf_store(y + i, vf_load_f16(x + i));
    for (; i < n; i++)
        y[i] = mha_f16_to_f32(x[i]);
}

/* ---- decode: K and V rows in place ------------------------------------------- */

/* The decode kernels (kernels.h) walk the rows of K and V once, token by
 * token and within a token head by head (memory order for a token-major
 * cache), and apply each to every query row of its head's group while it
 * is in registers or L1: scores take QB query rows x KP keys of dot
 * products at a time (QB*KP accumulators, each key vector loaded once for
 * QB rows and each query vector once for KP keys; KP is the table's: 4
 * with AVX-512, 3 with AVX2, 2 with NEON). Values take KV_STEP keys at a
 * time, and for each head a tile of QB accumulator rows x VC vectors stays
 * in registers while those keys go by (each V vector loaded once for QB
 * rows, each probability broadcast once for VC vectors). Before, each V
 * vector was applied to every row's accumulator loaded from and stored to
 * memory, with one broadcast per FMA: 1.3x (fp16) and 1.35x (f32) the time
 * of this, rows from L1 and L2, and 1.2x from DRAM with 2 threads, AVX2 on
 * Zen 3. fp16 rows are widened vector by vector as they are loaded
 * (vf_load_f16), so no converted copy is ever written. Tile sizes, the f16
 * flag and whole vectors against the d tail are compile-time constants of
 * always-inlined bodies, so each combination is its own straight-line
 * loop. */
enum { QB = 4, KV_STEP = 8, VC = 2, PF_ROWS = 8 };

/* The d elements of the row at `row` into L2, a 64-byte line at a time. */
SIMD_INLINE void prefetch_row(const char *row, const int f16, int64_t d)
{
    const uintptr_t at = (uintptr_t)row;
    const size_t bytes = (size_t)d * (f16 ? 2 : 4);
    for (size_t off = 0; off < bytes; off += 64)
        __builtin_prefetch((const void *)(at + off), 0, 2);
}

/* Asks for the rows PF_ROWS further down (pf bytes past rows[t]) while
 * rows[t] are used, into L2. A kv head's rows lie a whole token apart in
 * the cache (4 KiB for Llama 3's 8 x 128 f32), each on its own page, where
 * the hardware prefetchers stop, so without this every row starts with a
 * miss to memory. Into L2, not L1: rows 4 KiB apart fall into the same L1
 * sets and would evict each other before use. Measured on Zen 4 under load
 * (S 4096, one thread): about 2x over no prefetch; 8 rows ahead beat 4, 16
 * and 32 in most runs, and L1 prefetches lost about a third of the gain.
 * The requests are spread over the steps of a row: step c (the vector at
 * c of each row) asks for whole row c / VL, and the last step for the rows
 * left (keys > d / VL), so a few requests go out between the loads and
 * FMAs of every step. A burst of every row's lines before the tile, as
 * before, was 3-12% slower at S 4k and 16k (f32 and fp16, one thread, the
 * kernels alone, old and new alternating in one process), and one line of
 * every row per step (rows interleaved line by line) was 2-5% slower at
 * f32. Rows past n are asked for too: the decode driver walks a chunk's
 * key blocks in order, so they are the next call's first rows, which would
 * otherwise each start with a miss (a cold start every 128 keys; about
 * 5-10% of a step, more of an fp16 one, whose rows take half the time to
 * use). A prefetch is a hint that never faults, and the address is formed
 * as an integer, so rows past the end of the cache cost nothing. pf 0:
 * none (a group's later row tiles, whose rows the first one asked for). */
SIMD_INLINE void prefetch_step(const void *const *rows, const int keys,
                               const int f16, int64_t pf, int64_t c,
                               int64_t d)
{
    const int64_t first = c / VL, last = c + VL >= d ? keys : first + 1;
    if (pf == 0)
        return;
    for (int64_t t = first; t < last && t < keys; t++)
        prefetch_row((const char *)rows[t] + pf, f16, d);
}

/* cnt (1..VL) elements from element c of an f32 or fp16 row, 0 beyond.
 * An fp16 tail goes through a zero-padded copy: the same instruction as
 * the body, so the split cannot change a bit. */
SIMD_INLINE vf kv_load(const void *row, const int f16, int64_t c,
                       const int64_t cnt)
{
    if (f16) {
        const uint16_t *h = (const uint16_t *)row + c;
        if (cnt == VL)
            return vf_load_f16(h);
        uint16_t t[VL] = {0};
        for (int64_t i = 0; i < cnt; i++)
            t[i] = h[i];
        return vf_load_f16(t);
    }
    const float *f = (const float *)row + c;
    return cnt == VL ? vf_load(f) : vf_load_n(f, cnt);
}

SIMD_INLINE vf q_load(const float *q, const int64_t cnt)
{
    return cnt == VL ? vf_load(q) : vf_load_n(q, cnt);
}

/* acc[g][t] += q_g[c..c+cnt) . K_t[c..c+cnt) for g < rows, t < keys. */
SIMD_INLINE void scores_step(const int rows, const int keys, const int f16,
                             const float *q, int64_t ldq,
                             const void *const *kr, int64_t pf, int64_t d,
                             int64_t c, const int64_t cnt, vf acc[QB][KP])
{
    vf k[KP];
    MHA_UNROLL
    for (int t = 0; t < keys; t++)
        k[t] = kv_load(kr[t], f16, c, cnt);
    prefetch_step(kr, keys, f16, pf, c, d);
    MHA_UNROLL
    for (int g = 0; g < rows; g++) {
        const vf x = vf_in_register(q_load(q + g * ldq + c, cnt));
        MHA_UNROLL
        for (int t = 0; t < keys; t++)
            acc[g][t] = vf_fma(x, k[t], acc[g][t]);
    }
}

/* s[g*lds + t] = scale * hsum(acc[g][t]) for g < rows, t < keys. The
 * accumulators are summed VL at a time by vf_hsum_each, one transposing
 * reduction tree for VL of them (about 3 instructions a sum instead of the
 * 8-10 of a vf_hsum each, which cost as much as the dot products
 * themselves). Row g's sums take a slot of KS lanes of the reduced vectors
 * (the table's: KP rounded up to a power of two), zero vectors padding
 * the rest, so each row is stored straight from its slot (vf_store_slot).
 * Through a copy on the stack, as before (the reduced vectors stored, each
 * row's sums loaded back narrower), fp16 scores took 1.02-1.05x the time
 * (AVX2 on Zen 3, rows from L1 and L2, old and new alternating in one
 * process). The reduction tree itself is still about a tenth of it. */
_Static_assert(KS >= KP && VL % KS == 0,
               "a row's sums must fit one slot, and slots a vector");
SIMD_INLINE void scores_store(const int rows, const int keys,
                              vf acc[QB][KP], float scale, float *s,
                              int64_t lds)
{
    enum { RV = VL / KS, NGROUP = (QB + RV - 1) / RV };
    vf all[NGROUP * VL];
    MHA_UNROLL
    for (int i = 0; i < NGROUP * VL; i++) {
        const int g = i / VL * RV + i % VL / KS, t = i % KS;
        all[i] = g < rows && t < keys ? acc[g][t] : vf_zero();
    }
    MHA_UNROLL
    for (int i = 0; i < NGROUP; i++) {
        if (i * RV >= rows)
            break;
        const vf sums = vf_mul(vf_set1(scale), vf_hsum_each(all + i * VL));
        MHA_UNROLL
        for (int r = 0; r < RV; r++)
            if (i * RV + r < rows)
                vf_store_slot(s + (i * RV + r) * lds, sums, r, keys);
    }
}

/* s[g][t] = scale * q_g . K_t for g < rows, t < keys (kr: the key rows). */
SIMD_INLINE void scores_tile(const int rows, const int keys, const int f16,
                             int64_t d, const float *q, int64_t ldq,
                             const void *const *kr, int64_t pf, float scale,
                             float *s, int64_t lds)
{
    vf acc[QB][KP];
    MHA_UNROLL
    for (int g = 0; g < rows; g++) {
        MHA_UNROLL
        for (int t = 0; t < keys; t++)
            acc[g][t] = vf_zero();
    }
    /* Only the first `keys` steps ask for rows (prefetch_step), so the
     * steps after them are a loop without the test. */
    int64_t c = 0;
    for (; c + VL <= d && c / VL < keys; c += VL)
        scores_step(rows, keys, f16, q, ldq, kr, pf, d, c, VL, acc);
    for (; c + VL <= d; c += VL)
        scores_step(rows, keys, f16, q, ldq, kr, 0, d, c, VL, acc);
    if (c < d)
        scores_step(rows, keys, f16, q, ldq, kr, c / VL < keys ? pf : 0, d,
                    c, d - c, acc);
    scores_store(rows, keys, acc, scale, s, lds);
}

/* Tiles of QB rows, then the 1..QB-1 left, for `keys` keys at kr. */
SIMD_INLINE void scores_keys(const int keys, const int f16, int64_t G,
                             int64_t d, const float *q, int64_t ldq,
                             const void *const *kr, int64_t pf, float scale,
                             float *s, int64_t lds)
{
    int64_t g = 0;
    for (; g + QB <= G; g += QB, pf = 0)
        scores_tile(QB, keys, f16, d, q + g * ldq, ldq, kr, pf, scale,
                    s + g * lds, lds);
    switch (G - g) {
    case 3:
        scores_tile(3, keys, f16, d, q + g * ldq, ldq, kr, pf, scale,
                    s + g * lds, lds);
        break;
    case 2:
        scores_tile(2, keys, f16, d, q + g * ldq, ldq, kr, pf, scale,
                    s + g * lds, lds);
        break;
    case 1:
        scores_tile(1, keys, f16, d, q + g * ldq, ldq, kr, pf, scale,
                    s + g * lds, lds);
        break;
    default:
        break;
    }
}

/* Rows j, j + 1, ... (keys of them) of kv head h into out. */
SIMD_INLINE void head_rows(const void *M, size_t es, int64_t ld, int64_t hs,
                           int64_t h, int64_t j, const int keys,
                           const void **out)
{
    const char *head = (const char *)M + (size_t)(h * hs) * es;
    MHA_UNROLL
    for (int t = 0; t < keys; t++)
        out[t] = head + (size_t)((j + t) * ld) * es;
}

/* KP keys at a time (their rows stay in L1 across the row tiles), each
 * head's in turn, then the last n % KP keys one by one (tiles of each
 * size between made the function too big for GCC's variable tracking in
 * a -g build, for under 1% of a 128-key block). */
SIMD_INLINE void kv_scores_of(const int f16, int64_t nh, int64_t G,
                              int64_t n, int64_t d, const float *q,
                              int64_t ldq, const void *K, int64_t ldk,
                              int64_t hs, float scale, float *s, int64_t lds)
{
    const size_t es = f16 ? 2 : 4;
    const int64_t pf = PF_ROWS * ldk * (int64_t)es;
    for (int64_t j = 0; j < n;) {
        const int keys = j + KP <= n ? KP : 1;
        for (int64_t h = 0; h < nh; h++) {
            const void *kr[KP];
            const float *qh = q + h * G * ldq;
            float *sh = s + h * G * lds + j;
            if (keys == KP) {
                head_rows(K, es, ldk, hs, h, j, KP, kr);
                scores_keys(KP, f16, G, d, qh, ldq, kr, pf, scale, sh, lds);
            } else {
                head_rows(K, es, ldk, hs, h, j, 1, kr);
                scores_keys(1, f16, G, d, qh, ldq, kr, pf, scale, sh, lds);
            }
        }
        j += keys;
    }
}

static void simd_kv_scores(int64_t nh, int64_t G, int64_t n, int64_t d,
                           const float *q, int64_t ldq, const void *K,
                           int64_t ldk, int64_t hs, int kv_f16, float scale,
                           float *s, int64_t lds)
{
    if (kv_f16)
        kv_scores_of(1, nh, G, n, d, q, ldq, K, ldk, hs, scale, s, lds);
    else
        kv_scores_of(0, nh, G, n, d, q, ldq, K, ldk, hs, scale, s, lds);
}

/* acc_g[c, c + nv VL) += sum_{t < keys} p_g[t] V_t[c, ...) for g < rows,
 * the last of the nv vectors cnt lanes wide. The tile's rows x nv
 * accumulators stay in registers while the keys go by: each V vector is
 * loaded (and widened) once for the rows, each probability broadcast once
 * for the nv vectors, and nothing is stored until the last key. Each
 * accumulator is one chain of `keys` FMAs; rows x VC of them in flight
 * cover the FMA latency. Row t of V is at v + t * ldv_b bytes. */
SIMD_INLINE void values_tile(const int rows, const int nv, const int f16,
                             int64_t keys, const float *p, int64_t ldp,
                             const char *v, int64_t ldv_b, int64_t c,
                             const int64_t cnt, float *acc, int64_t ldacc)
{
    vf a[QB][VC];
    MHA_UNROLL
    for (int g = 0; g < rows; g++) {
        MHA_UNROLL
        for (int i = 0; i < nv; i++)
            a[g][i] = q_load(acc + g * ldacc + c + i * VL,
                             i == nv - 1 ? cnt : VL);
    }
    for (int64_t t = 0; t < keys; t++) {
        const char *row = v + t * ldv_b;
        vf x[VC];
        MHA_UNROLL
        for (int i = 0; i < nv; i++)
            x[i] = kv_load(row, f16, c + i * VL, i == nv - 1 ? cnt : VL);
        MHA_UNROLL
        for (int g = 0; g < rows; g++) {
            const vf b = vf_set1(p[g * ldp + t]);
            MHA_UNROLL
            for (int i = 0; i < nv; i++)
                a[g][i] = vf_fma(b, x[i], a[g][i]);
        }
    }
    MHA_UNROLL
    for (int g = 0; g < rows; g++) {
        MHA_UNROLL
        for (int i = 0; i < nv; i++) {
            float *out = acc + g * ldacc + c + i * VL;
            if (i < nv - 1 || cnt == VL)
                vf_store(out, a[g][i]);
            else
                vf_store_n(out, a[g][i], cnt);
        }
    }
}

/* Rows [first, last) of those ldv_b bytes apart at v, each pf bytes
 * further on (pf 0: none), into L2. */
SIMD_INLINE void prefetch_rows(const char *v, int64_t ldv_b, int64_t pf,
                               int64_t first, int64_t last, const int f16,
                               int64_t d)
{
    if (pf == 0)
        return;
    for (int64_t t = first; t < last; t++)
        prefetch_row(v + t * ldv_b + pf, f16, d);
}

/* One row tile's columns: VC vectors at a time, then whole vectors one by
 * one, then the d % VL tail. Column tile i asks for row i PF_ROWS further
 * down (pf), and the rows left after the last tile go out together: the
 * requests are spread over the head's work, as prefetch_step spreads the
 * scores'; all of them before the first tile (a burst of 32 to 64 lines
 * while 16 keys of one tile go by) was 1.19x slower (fp16 S 4k, 2 threads,
 * the kernels alone from DRAM, Zen 3). */
SIMD_INLINE void values_rows(const int rows, const int f16, int64_t keys,
                             const float *p, int64_t ldp, const char *v,
                             int64_t ldv_b, int64_t pf, int64_t d,
                             float *acc, int64_t ldacc)
{
    int64_t c = 0, tile = 0;
    for (; c + VC * VL <= d; c += VC * VL, tile++) {
        prefetch_rows(v, ldv_b, pf, tile, min_i64(tile + 1, keys), f16, d);
        values_tile(rows, VC, f16, keys, p, ldp, v, ldv_b, c, VL, acc, ldacc);
    }
    for (; c + VL <= d; c += VL, tile++) {
        prefetch_rows(v, ldv_b, pf, tile, min_i64(tile + 1, keys), f16, d);
        values_tile(rows, 1, f16, keys, p, ldp, v, ldv_b, c, VL, acc, ldacc);
    }
    if (c < d) {
        prefetch_rows(v, ldv_b, pf, tile, min_i64(tile + 1, keys), f16, d);
        values_tile(rows, 1, f16, keys, p, ldp, v, ldv_b, c, d - c, acc,
                    ldacc);
        tile++;
    }
    prefetch_rows(v, ldv_b, pf, tile, keys, f16, d);
}

/* A head's G rows against `keys` rows of V: tiles of QB rows, then the
 * 1..QB-1 left (only the first tile asks for the rows ahead). */
SIMD_INLINE void values_head(const int f16, int64_t G, int64_t keys,
                             const float *p, int64_t ldp, const char *v,
                             int64_t ldv_b, int64_t pf, int64_t d,
                             float *acc, int64_t ldacc)
{
    int64_t g = 0;
    for (; g + QB <= G; g += QB, pf = 0)
        values_rows(QB, f16, keys, p + g * ldp, ldp, v, ldv_b, pf, d,
                    acc + g * ldacc, ldacc);
    p += g * ldp;
    acc += g * ldacc;
    switch (G - g) {
    case 3:
        values_rows(3, f16, keys, p, ldp, v, ldv_b, pf, d, acc, ldacc);
        break;
    case 2:
        values_rows(2, f16, keys, p, ldp, v, ldv_b, pf, d, acc, ldacc);
        break;
    case 1:
        values_rows(1, f16, keys, p, ldp, v, ldv_b, pf, d, acc, ldacc);
        break;
    default:
        break;
    }
}

/* KV_STEP keys at a time, each head's in turn, so a token-major cache is
 * read about in memory order and a step's rows stay in L1 across the
 * heads' column tiles. */
SIMD_INLINE void kv_values_of(const int f16, int64_t nh, int64_t G,
                              int64_t n, int64_t d, const float *p,
                              int64_t ldp, const void *V, int64_t ldv,
                              int64_t hs, float *acc, int64_t ldacc)
{
    const int64_t es = f16 ? 2 : 4, ldv_b = ldv * es;
    for (int64_t j = 0; j < n; j += KV_STEP) {
        const int64_t keys = min_i64(KV_STEP, n - j);
        for (int64_t h = 0; h < nh; h++)
            values_head(f16, G, keys, p + h * G * ldp + j, ldp,
                        (const char *)V + (j * ldv + h * hs) * es, ldv_b,
                        PF_ROWS * ldv_b, d, acc + h * G * ldacc, ldacc);
    }
}

static void simd_kv_values(int64_t nh, int64_t G, int64_t n, int64_t d,
                           const float *p, int64_t ldp, const void *V,
                           int64_t ldv, int64_t hs, int kv_f16, float *acc,
                           int64_t ldacc)
{
    if (kv_f16)
        kv_values_of(1, nh, G, n, d, p, ldp, V, ldv, hs, acc, ldacc);
    else
        kv_values_of(0, nh, G, n, d, p, ldp, V, ldv, hs, acc, ldacc);
}

static const mha_cpu_kernels simd_table = {
    .isa = MHA_SIMD_ISA,
    .mr = MR,
    .nr = NR,
    .gemm_nt = simd_gemm_nt,
    .gemm_nn_acc = simd_gemm_nn_acc,
    .pack_nt = simd_pack_nt,
    .pack_nn = simd_pack_nn,
    .gemm_packed = simd_gemm_packed,
    .gemm_packed_tn = simd_gemm_packed_tn,
    .scale = simd_scale,
    .axpy = simd_axpy,
    .scale_add = simd_scale_add,
    .max = simd_max,
    .exp_sum = simd_exp_sum,
    .f16_to_f32 = simd_f16_to_f32,
    .kv_scores = simd_kv_scores,
    .kv_values = simd_kv_values,
};

#endif /* MHA_CPU_KERNELS_SIMD_H */
