/* kernels_neon.c: the NEON kernel table (AArch64), 4 floats a vector. NEON
 * is mandatory on AArch64, so the table is always handed out there and the
 * file needs no special flags; on any other architecture it compiles to a
 * getter returning NULL.
 *
 * Only the vector vocabulary is here; the kernels are kernels_simd.h's. A
 * 6 x 16 register tile (24 of the 32 vector registers accumulate). NEON
 * has no masked loads, so tails go through small zero-padded stack
 * copies. */
#include <stddef.h>

#include "cpu_features.h"
#include "kernels.h"
#include "mha.h"

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>
#include <math.h>

#define MHA_SIMD_ISA "neon"
typedef float32x4_t vf;
/* KP: keys per decode score tile (4 query rows each): 8 accumulators,
 * two vf_hsum_each of 4 sums, a row in each 64-bit half (KS lanes,
 * vf_store_slot). */
enum { VL = 4, MR = 6, NV = 4, KC = 256, TB = 4, KP = 2, KS = 2 };

static vf vf_zero(void) { return vdupq_n_f32(0.0f); }
static vf vf_set1(float x) { return vdupq_n_f32(x); }
static vf vf_load(const float *p) { return vld1q_f32(p); }
static void vf_store(float *p, vf v) { vst1q_f32(p, v); }

static vf vf_load_n(const float *p, int64_t n)
{
    float buf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t i = 0; i < n; i++)
        buf[i] = p[i];
    return vld1q_f32(buf);
}

static void vf_store_n(float *p, vf v, int64_t n)
{
    float buf[4];
    vst1q_f32(buf, v);
    for (int64_t i = 0; i < n; i++)
        p[i] = buf[i];
}

/* Lanes [2 slot, 2 slot + cnt) of v to p. */
static inline __attribute__((always_inline)) void
vf_store_slot(float *p, vf v, const int slot, const int cnt)
{
    const float32x2_t h = slot ? vget_high_f32(v) : vget_low_f32(v);
    if (cnt == 2)
        vst1_f32(p, h);
    else
        vst1_lane_f32(p, h, 0);
}

static vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
static vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
static vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
static vf vf_fnma(vf a, vf b, vf c) { return vfmsq_f32(c, a, b); }
/* FMIN/FMAX propagate a NaN from either operand. */
static vf vf_min(vf a, vf b) { return vminq_f32(a, b); }
static vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); }
/* FMAX would propagate NaN and FMAXNM treats signalling NaNs specially, so
 * the running maximum is replaced only where v > acc, a comparison that is
 * false for any NaN: exactly the scalar rule. */
static vf vf_max_keep(vf v, vf acc)
{
    return vbslq_f32(vcgtq_f32(v, acc), v, acc);
}
static float vf_hsum(vf v) { return vaddvq_f32(v); }
/* The x86 tables keep a loaded vector from being folded into each FMA's
 * memory operand; AArch64's FMLA has no memory operand to fold into. */
static vf vf_in_register(vf x) { return x; }
static float vf_hmax(vf v) { return vmaxvq_f32(v); }
/* Two levels of FADDP: 3 instructions for 4 sums. */
static inline __attribute__((always_inline)) vf
vf_hsum_each(const vf *v)
{
    return vpaddq_f32(vpaddq_f32(v[0], v[1]), vpaddq_f32(v[2], v[3]));
}

static vf vf_round(vf v) { return vrndnq_f32(v); }

/* 2^n built in the exponent field: with exp's clamp [-88, 88.376], n = -127
 * builds 0, so arguments below about -87.7 and -inf give exactly 0. */
static vf vf_ldexp(vf y, vf n)
{
    const int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vmulq_f32(y, vreinterpretq_f32_s32(vshlq_n_s32(e, 23)));
}
/* FCVTL (vcvt_f32_f16, baseline on AArch64): exact, and quiets
 * signalling NaNs as half.h does (FPCR.DN is 0 under Linux). */
static vf vf_load_f16(const uint16_t *p)
{
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

#define EXP_LO (-88.0f)
#define EXP_HI 88.3762626647949f

/* Writes the transpose of the 4 x 4 block at src (rows lds apart) times
 * alpha to dst (rows ldd apart): 32-bit then 64-bit transposes of
 * register pairs. */
static void transpose_block(const float *src, int64_t lds, float alpha,
                            float *dst, int64_t ldd)
{
    const float32x4_t r0 = vmulq_n_f32(vld1q_f32(src), alpha);
    const float32x4_t r1 = vmulq_n_f32(vld1q_f32(src + lds), alpha);
    const float32x4_t r2 = vmulq_n_f32(vld1q_f32(src + 2 * lds), alpha);
    const float32x4_t r3 = vmulq_n_f32(vld1q_f32(src + 3 * lds), alpha);
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1));
    const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3));
    const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
    vst1q_f32(dst, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    vst1q_f32(dst + ldd, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    vst1q_f32(dst + 2 * ldd, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    vst1q_f32(dst + 3 * ldd, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
}

#include "kernels_simd.h"

/* mha_cpu_features() reports NEON on every AArch64 CPU; asking it keeps
 * one source of truth should that ever change. */
const mha_cpu_kernels *mha_cpu_kernels_neon(void)
{
    return (mha_cpu_features() & MHA_FEATURE_NEON) ? &simd_table : NULL;
}

#else /* not AArch64 */

const mha_cpu_kernels *mha_cpu_kernels_neon(void)
{
    return NULL;
}

#endif
