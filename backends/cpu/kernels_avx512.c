/* kernels_avx512.c: the AVX-512F kernel table (x86-64), 16 floats a vector.
 * This file alone is compiled with -mavx512f (plus -mavx2 -mfma); the table
 * is handed out only when the CPU has AVX-512F and the OS saves the ZMM and
 * opmask state (cpu_features.c). Built without those flags or for another
 * architecture, it compiles to a getter returning NULL.
 *
 * Only the vector vocabulary is here, the part shared with the other x86
 * table in kernels_x86.h; the kernels are kernels_simd.h's. An
 * 8 x 32 register tile (16 of the 32 ZMM registers accumulate), opmask
 * registers for every tail, and VSCALEFPS for exp's 2^n. */
#include <stddef.h>

#include "cpu_features.h"
#include "kernels.h"
#include "mha.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX2__) && \
    defined(__FMA__)

#include <immintrin.h>
#include <math.h>

#define MHA_SIMD_ISA "avx512"
typedef __m512 vf;
#define MHA_X86(name) _mm512_##name
/* KP: keys per decode score tile (4 query rows each): 16 accumulators,
 * one vf_hsum_each of 16 sums, a row in each 128-bit quarter (KS lanes,
 * vf_store_slot). */
enum { VL = 16, MR = 8, NV = 2, KC = 128, TB = 8, KP = 4, KS = 4 };

/* Opmask with the first n (0..16) lanes set. */
static __mmask16 lanes(int64_t n)
{
    return (__mmask16)((1u << n) - 1u);
}

static vf vf_load_n(const float *p, int64_t n)
{
    return _mm512_maskz_loadu_ps(lanes(n), p);
}
static void vf_store_n(float *p, vf v, int64_t n)
{
    _mm512_mask_storeu_ps(p, lanes(n), v);
}
static float vf_hsum(vf v) { return _mm512_reduce_add_ps(v); }
static float vf_hmax(vf v) { return _mm512_reduce_max_ps(v); }
static vf vf_round(vf v)
{
    return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT |
                                       _MM_FROUND_NO_EXC);
}
/* VSCALEFPS rounds correctly into the denormal range and overflows to +inf
 * itself, so exp's clamp can be wide: at -104 the result already rounds to
 * exactly 0 (so does -inf), and +89 is past ln(FLT_MAX), giving +inf. */
static vf vf_ldexp(vf y, vf n) { return _mm512_scalef_ps(y, n); }
/* AVX-512F's VCVTPH2PS: exact, and quiets signalling NaNs as half.h
 * does. */
static vf vf_load_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

#include "kernels_x86.h"

/* Lanes [4 slot, 4 slot + cnt) of v to p. The quarter's index must be an
 * immediate, hence the switch (a constant slot folds it away). */
static inline __attribute__((always_inline)) void
vf_store_slot(float *p, vf v, const int slot, const int cnt)
{
    switch (slot) {
    case 0:
        x86_store4_n(p, _mm512_extractf32x4_ps(v, 0), cnt);
        break;
    case 1:
        x86_store4_n(p, _mm512_extractf32x4_ps(v, 1), cnt);
        break;
    case 2:
        x86_store4_n(p, _mm512_extractf32x4_ps(v, 2), cnt);
        break;
    default:
        x86_store4_n(p, _mm512_extractf32x4_ps(v, 3), cnt);
        break;
    }
}

static vf halves_lo(vf x, vf y) { return _mm512_shuffle_f32x4(x, y, 0x44); }
static vf halves_hi(vf x, vf y) { return _mm512_shuffle_f32x4(x, y, 0xEE); }
static vf quarters_even(vf x, vf y) { return _mm512_shuffle_f32x4(x, y, 0x88); }
static vf quarters_odd(vf x, vf y) { return _mm512_shuffle_f32x4(x, y, 0xDD); }

/* Two levels of pairwise sums across 256-bit then 128-bit halves bring
 * the 16 inputs down to four vectors for x86_sum_lanes4 (45 instructions
 * for 16 sums, against 16 reductions of 9). */
static inline __attribute__((always_inline)) vf
vf_hsum_each(const vf *v)
{
    vf t[16], a[8], b[4];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 16; i++)
        t[i] = v[x86_hsum_order(i)];
    x86_fold(a, t, 8, halves_lo, halves_hi);
    x86_fold(b, a, 4, quarters_even, quarters_odd);
    return x86_sum_lanes4(b);
}

#define EXP_LO (-104.0f)
#define EXP_HI 89.0f

#include "kernels_simd.h"

/* Holds no vector code itself, so it is safe to call on any x86-64. */
const mha_cpu_kernels *mha_cpu_kernels_avx512(void)
{
    return (mha_cpu_features() & MHA_FEATURE_AVX512) ? &simd_table : NULL;
}

#else /* not x86-64 or built without -mavx512f -mavx2 -mfma */

const mha_cpu_kernels *mha_cpu_kernels_avx512(void)
{
    return NULL;
}

#endif
