/* kernels_avx2.c: the AVX2+FMA(+F16C) kernel table (x86-64), 8 floats a
 * vector. This file alone is compiled with -mavx2 -mfma -mf16c; the table
 * is handed out only when the running CPU and OS support all three
 * (cpu_features.c; every AVX2 CPU made has F16C, so one without it gets the
 * scalar table rather than a mixed one), so the rest of the library stays
 * runnable on any x86-64. Built without those flags or for another
 * architecture, it compiles to a getter returning NULL.
 *
 * Only the vector vocabulary is here, the part shared with the other x86
 * table in kernels_x86.h; the kernels are kernels_simd.h's. A
 * 6 x 16 register tile (12 accumulators + 2 B vectors + 1 broadcast of the
 * 16 YMM registers, the usual AVX2 sgemm shape), VMASKMOVPS for tails. */
#include <stddef.h>

#include "cpu_features.h"
#include "kernels.h"
#include "mha.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && \
    defined(__F16C__)

#include <immintrin.h>
#include <math.h>

#define MHA_SIMD_ISA "avx2"
typedef __m256 vf;
#define MHA_X86(name) _mm256_##name
/* KP: keys per decode score tile, 4 query rows each: 12 accumulators, 3
 * key vectors and a query vector fill the 16 registers, and 12 chains of
 * FMAs cover their latency (2 keys, 8 chains: fp16 scores 1.1x the time
 * from DRAM, 2 threads, Zen 3). KS: lanes of a row's slot of summed
 * scores, a 128-bit half (vf_store_slot). */
enum { VL = 8, MR = 6, NV = 2, KC = 256, TB = 8, KP = 3, KS = 4 };

/* Lane mask with the first n (0..8) lanes set, for maskload/maskstore,
 * which never touch the memory of a masked-off lane. */
static __m256i tail_mask(int64_t n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes);
}

static vf vf_load_n(const float *p, int64_t n)
{
    return _mm256_maskload_ps(p, tail_mask(n));
}
static void vf_store_n(float *p, vf v, int64_t n)
{
    _mm256_maskstore_ps(p, tail_mask(n), v);
}

static float vf_hsum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static float vf_hmax(vf v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static vf vf_round(vf v)
{
    return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

/* 2^n built in the exponent field. With exp's clamp [-88, 88.376], n runs
 * from -127, whose exponent field is 0, so everything below about -87.7
 * (and -inf) gives exactly 0 (arguments in (-87.7, -87.3) give denormals),
 * to 128, which gives +inf. */
static vf vf_ldexp(vf y, vf n)
{
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n),
                                       _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}
/* F16C's VCVTPH2PS: exact, and quiets signalling NaNs as half.h does. */
static vf vf_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

#include "kernels_x86.h"

/* Lanes [4 slot, 4 slot + cnt) of v to p. */
static inline __attribute__((always_inline)) void
vf_store_slot(float *p, vf v, const int slot, const int cnt)
{
    x86_store4_n(p, slot ? _mm256_extractf128_ps(v, 1)
                         : _mm256_castps256_ps128(v), cnt);
}

static vf halves_lo(vf x, vf y) { return _mm256_permute2f128_ps(x, y, 0x20); }
static vf halves_hi(vf x, vf y) { return _mm256_permute2f128_ps(x, y, 0x31); }

/* One level of pairwise sums across 128-bit halves brings the 8 inputs
 * down to four vectors for x86_sum_lanes4 (21 instructions for 8 sums,
 * against 8 reductions of 6). */
static inline __attribute__((always_inline)) vf
vf_hsum_each(const vf *v)
{
    vf t[8], a[4];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < 8; i++)
        t[i] = v[x86_hsum_order(i)];
    x86_fold(a, t, 4, halves_lo, halves_hi);
    return x86_sum_lanes4(a);
}

#define EXP_LO (-88.0f)
#define EXP_HI 88.3762626647949f

#include "kernels_simd.h"

/* Holds no vector code itself, so it is safe to call on any x86-64. */
const mha_cpu_kernels *mha_cpu_kernels_avx2(void)
{
    return (mha_cpu_features() & MHA_FEATURE_AVX2) ? &simd_table : NULL;
}

#else /* not x86-64 or built without -mavx2 -mfma -mf16c */

const mha_cpu_kernels *mha_cpu_kernels_avx2(void)
{
    return NULL;
}

#endif
