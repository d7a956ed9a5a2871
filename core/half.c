/* half.c: binary16 and bfloat16 conversions written out bit by bit, because
 * C99 has no half type and the library must not depend on F16C. */
#include <string.h>

#include "half.h"

static uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t mha_f32_to_f16(float value)
{
    uint32_t x = float_bits(value);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* Inf or NaN (keep NaN quiet) */
        return sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0);
    if (absx >= 0x477ff000u) /* rounds past the largest half: Inf */
        return sign | 0x7c00u;
    if (absx < 0x38800000u) { /* subnormal half or zero */
        float scaled = bits_float(absx) * 16777216.0f; /* 2^24 */
        uint32_t m = (uint32_t)scaled;
        float rest = scaled - (float)m;
        if (rest > 0.5f || (rest == 0.5f && (m & 1u)))
            m++;
        return sign | (uint16_t)m;
    }
    uint32_t mant = absx & 0x7fffffu;
    uint32_t exp = (absx >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t round = mant & 0x1fffu;
    if (round > 0x1000u || (round == 0x1000u && (h & 1u)))
        h++;
    return sign | (uint16_t)h;
}


float mha_bf16_to_f32(uint16_t bits)
{
    return bits_float((uint32_t)bits << 16);
}
