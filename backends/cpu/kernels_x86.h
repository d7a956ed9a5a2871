/* kernels_x86.h: the part of kernels_simd.h's vocabulary that the two x86
 * tables (kernels_avx2.c and kernels_avx512.c) share: the operations whose
 * intrinsics differ only by their _mm256_ / _mm512_ prefix, the last
 * levels of vf_hsum_each, a store of up to 4 lanes, and the 8 x 8
 * transpose. Each file defines vf, VL and MHA_X86(name) (its prefix pasted
 * to name) and includes this before kernels_simd.h, compiled with at least
 * -mavx2 -mfma. */
#ifndef MHA_CPU_KERNELS_X86_H
#define MHA_CPU_KERNELS_X86_H

#include <immintrin.h>
#include <stdint.h>

static vf vf_zero(void) { return MHA_X86(setzero_ps)(); }
static vf vf_set1(float x) { return MHA_X86(set1_ps)(x); }
static vf vf_load(const float *p) { return MHA_X86(loadu_ps)(p); }
static void vf_store(float *p, vf v) { MHA_X86(storeu_ps)(p, v); }
static vf vf_add(vf a, vf b) { return MHA_X86(add_ps)(a, b); }
static vf vf_sub(vf a, vf b) { return MHA_X86(sub_ps)(a, b); }
static vf vf_mul(vf a, vf b) { return MHA_X86(mul_ps)(a, b); }
static vf vf_fma(vf a, vf b, vf c) { return MHA_X86(fmadd_ps)(a, b, c); }
static vf vf_fnma(vf a, vf b, vf c) { return MHA_X86(fnmadd_ps)(a, b, c); }
/* MINPS/MAXPS return the second operand when either is NaN: NaN in b comes
 * out of the clamps, and a NaN v never replaces the running maximum. */
static vf vf_min(vf a, vf b) { return MHA_X86(min_ps)(a, b); }
static vf vf_max(vf a, vf b) { return MHA_X86(max_ps)(a, b); }
static vf vf_max_keep(vf v, vf acc) { return MHA_X86(max_ps)(v, acc); }
/* x, held in a register: the empty asm claims to change it, so the
 * compiler cannot fold the load that made x into every FMA that uses it
 * (which it does, loading a decode query vector once per key: AVX2's
 * scores 1.14x slower, fp16 rows from L1, Zen 3). */
static inline __attribute__((always_inline)) vf vf_in_register(vf x)
{
    __asm__("" : "+v"(x));
    return x;
}

/* The first cnt (1..4) lanes of x to p, from the register (a decode
 * score row's slot, vf_store_slot). */
static inline __attribute__((always_inline)) void
x86_store4_n(float *p, __m128 x, const int cnt)
{
    if (cnt == 4) {
        _mm_storeu_ps(p, x);
        return;
    }
    if (cnt == 1) {
        _mm_store_ss(p, x);
        return;
    }
    _mm_storel_pi((__m64 *)p, x);
    if (cnt == 3)
        _mm_store_ss(p + 2, _mm_movehl_ps(x, x));
}

/* ---- vf_hsum_each: a tree of pairwise sums ---------------------------------- */

/* Lanes of two vectors gathered into one: a level's shuffle. */
typedef vf (*x86_pick)(vf, vf);

/* One level of vf_hsum_each's tree: out[i] = lo(x, y) + hi(x, y) for the
 * pairs (x, y) = (in[2i], in[2i + 1]), i < n, where lo and hi gather the
 * two halves of x's and y's partial sums that the level adds. Always
 * inlined, so the picks are direct and inlined too. */
static inline __attribute__((always_inline)) void
x86_fold(vf *out, const vf *in, int n, x86_pick lo, x86_pick hi)
{
    _Pragma("GCC unroll 8")
    for (int i = 0; i < n; i++)
        out[i] = vf_add(lo(in[2 * i], in[2 * i + 1]),
                        hi(in[2 * i], in[2 * i + 1]));
}

static vf x86_lo_pd(vf x, vf y)
{
    return MHA_X86(castpd_ps)(MHA_X86(unpacklo_pd)(MHA_X86(castps_pd)(x),
                                                   MHA_X86(castps_pd)(y)));
}

static vf x86_hi_pd(vf x, vf y)
{
    return MHA_X86(castpd_ps)(MHA_X86(unpackhi_pd)(MHA_X86(castps_pd)(x),
                                                   MHA_X86(castps_pd)(y)));
}

static vf x86_even_ps(vf x, vf y) { return MHA_X86(shuffle_ps)(x, y, 0x88); }

static vf x86_odd_ps(vf x, vf y) { return MHA_X86(shuffle_ps)(x, y, 0xDD); }

/* The tree's last two levels, the same inside each 128-bit lane for both
 * tables: each table's first levels fold its VL inputs into four vectors
 * b[m] whose 128-bit lane k holds 4 partial sums of input m * VL / 4 + k;
 * these leave that input's total in lane 4k + m, a transposition that
 * x86_hsum_order undoes by taking the inputs in its order. */
static inline __attribute__((always_inline)) vf x86_sum_lanes4(const vf *b)
{
    vf c[2], r;
    x86_fold(c, b, 2, x86_lo_pd, x86_hi_pd);
    x86_fold(&r, c, 1, x86_even_ps, x86_odd_ps);
    return r;
}

/* Input i of the tree, for lane i of the result to be v[i]'s sum. */
static int x86_hsum_order(int i)
{
    return i % (VL / 4) * 4 + i / (VL / 4);
}

/* Writes the transpose of the 8 x 8 block at src (rows lds apart) times
 * alpha to dst (rows ldd apart): dst[i][j] = alpha * src[j][i]. Unpack,
 * shuffle, then swap 128-bit halves: 24 shuffles instead of 64 scalar
 * moves. 256-bit code for both tables: a 16 x 16 transpose in ZMM
 * registers needs more shuffles per float. */
static void transpose_block(const float *src, int64_t lds, float alpha,
                            float *dst, int64_t ldd)
{
    const __m256 a = _mm256_set1_ps(alpha);
    __m256 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm256_mul_ps(_mm256_loadu_ps(src + i * lds), a);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(dst + i * ldd,
                         _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * ldd,
                         _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}

#endif /* MHA_CPU_KERNELS_X86_H */
