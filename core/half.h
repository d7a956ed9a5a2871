/* half.h: IEEE binary16 and bfloat16 conversions on the host, for fp16
 * weights and for loading F16/BF16 safetensors. */
#ifndef MHA_CORE_HALF_H
#define MHA_CORE_HALF_H

#include <stdint.h>
#include <string.h>

uint16_t mha_f32_to_f16(float value); /* round to nearest even */

/* Inline: the CPU attention converts fp16 K and V rows on load with it. */
static inline float mha_f16_to_f32(uint16_t bits)
{
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exp = (bits >> 10) & 0x1fu;
    uint32_t mant = bits & 0x3ffu, u;
    float f;
    if (exp == 0) {
        float v = (float)mant / 16777216.0f;
        return sign ? -v : v;
    }
    u = exp == 31 ? sign | 0x7f800000u | (mant << 13)
                  : sign | ((exp + 112) << 23) | (mant << 13);
    memcpy(&f, &u, sizeof f);
    return f;
}
float mha_bf16_to_f32(uint16_t bits);

#endif
