/* test_half.c: the bit-level binary16 conversions of core/half.c (used for
 * f16 weights on devices with fp16 storage), checked exhaustively: every
 * half round-trips, and every midpoint between neighbouring halves (and
 * the floats just either side of it) rounds as IEEE round-to-nearest-even
 * says. fp16 forwards are only compared to 1e-2, so a rounding bug would
 * pass them. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>

#include "half.h"

/* Every finite half and infinity, both signs. */
Test(half, every_half_round_trips_exactly)
{
    for (uint32_t b = 0; b < 0x10000u; b++) {
        if ((b & 0x7c00u) == 0x7c00u && (b & 0x3ffu))
            continue; /* NaN: below */
        float f = mha_f16_to_f32((uint16_t)b);
        cr_assert_eq(mha_f32_to_f16(f), b, "half %#x -> %a -> %#x", b,
                     (double)f, mha_f32_to_f16(f));
    }
}

/* Finite halves b and b + 1 of the same sign: their midpoint goes to the
 * even one; a float either side of it goes to the nearer. */
Test(half, midpoints_round_to_even)
{
    for (uint32_t s = 0; s <= 0x8000u; s += 0x8000u)
        for (uint32_t b = s; b < s + 0x7bffu; b++) {
            double lo = mha_f16_to_f32((uint16_t)b);
            double hi = mha_f16_to_f32((uint16_t)(b + 1));
            float mid = (float)((lo + hi) / 2); /* exact: 12 bits */
            uint32_t even = b & 1u ? b + 1 : b;
            cr_assert_eq(mha_f32_to_f16(mid), even, "midpoint %a of %#x",
                         (double)mid, b);
            float below = nextafterf(mid, (float)lo);
            float above = nextafterf(mid, (float)hi);
            cr_assert_eq(mha_f32_to_f16(below), b, "%a above %#x",
                         (double)below, b);
            cr_assert_eq(mha_f32_to_f16(above), b + 1, "%a below %#x",
                         (double)above, b + 1);
        }
}

/* Past the largest half (65504) the even neighbour is infinity: 65520,
 * halfway to the next exponent, and beyond overflow. */
Test(half, nan_stays_nan_and_huge_is_infinity)
{
    cr_assert_eq(mha_f32_to_f16(65520.0f), 0x7c00u);
    cr_assert_eq(mha_f32_to_f16(nextafterf(65520.0f, 0.0f)), 0x7bffu);
    uint16_t n = mha_f32_to_f16(NAN);
    cr_assert((n & 0x7c00u) == 0x7c00u && (n & 0x3ffu), "NaN -> %#x", n);
    cr_assert_eq(mha_f32_to_f16(1e30f), 0x7c00u);
    cr_assert_eq(mha_f32_to_f16(-1e30f), 0xfc00u);
    cr_assert_eq(mha_f32_to_f16(-0.0f), 0x8000u);
}
