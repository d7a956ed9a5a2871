/* half.h: IEEE binary16 and bfloat16 conversions on the host, for fp16
 * weights and for loading F16/BF16 safetensors. */
#ifndef MHA_CORE_HALF_H
#define MHA_CORE_HALF_H

#include <stdint.h>
#include <string.h>

uint16_t mha_f32_to_f16(float value); /* round to nearest even */

/* Inline and branch-light: the CPU attention converts fp16 K and V rows on
 * load with it. The rebiased bits times 2^112 are exact for normal and
 * subnormal halves; Inf and NaN (exponent 31) are set apart, a signalling
 * NaN made quiet (payload kept) as IEEE 754 and the SIMD conversions of
 * backends/cpu do, so every CPU table gives the same bits. */
static inline float mha_f16_to_f32(uint16_t bits)
{
    uint32_t u = (uint32_t)(bits & 0x7fffu) << 13;
    float f;
    memcpy(&f, &u, sizeof f);
    f *= 0x1p112f;
    memcpy(&u, &f, sizeof u);
    if ((bits & 0x7c00u) == 0x7c00u) /* NaNs quieted, as F16C and NEON do */
        u = 0x7f800000u | (uint32_t)(bits & 0x3ffu) << 13 |
            ((bits & 0x3ffu) ? 0x00400000u : 0u);
    u |= (uint32_t)(bits & 0x8000u) << 16;
    memcpy(&f, &u, sizeof f);
    return f;
}

float mha_bf16_to_f32(uint16_t bits);

#endif
