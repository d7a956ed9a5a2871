// matmul.comp: batched C = scale * A B^T (+ bias) (+ masks), the tiled GEMM
// behind PROJECTION (X W^T + b), SCORES (scale Q K^T + masks, causal) and
// WEIGHTED_SUM (P V, B given with swapped strides). One workgroup computes a
// TM x TN tile of C, staging TK-wide slices of A and B through shared memory
// (k-major, so a row of the slice is TM or TN consecutive floats); each
// invocation keeps an RM x RN block of C in registers, RM / 4 and RN / 4
// vec4 chunks of rows and columns strided by the workgroup's width, so one
// step of k reads RM / 4 + RN / 4 vec4s for RM * RN FMAs (8 x 8: 0.0625
// shared loads per FMA). Reads need no padding (a row of invocations reads
// consecutive vec4s of Bs and one vec4 of As); the slices' rows are padded
// by one vec4 so the transposing stores of A (and of B^T) spread over
// banks. Global loads are vec4s along k (or along j for the weighted sum)
// where MHA_VK_F_VEC4_A / _B say the operand is fp32 with offsets and
// strides in whole vec4s (VW 2: as two vec2s, VW 1: as scalars, for
// devices that load narrower words faster). DIRECT stages nothing: each
// invocation reads its RM rows of A and RN columns of B straight from
// global memory, four k a step, with no shared memory and no barrier, for
// devices where those are pure cost (CPU-like caches; on lavapipe it
// measured no faster than the tiles, see backends/vulkan/tune.c). Tile
// sizes and the workgroup size are specialization constants chosen from
// the shape and the device's limits (backends/vulkan/ops.c); the
// workgroup is (TN/RN) * (TM/RM) invocations. Batch index z = b * H + h.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "dtype.glsl"
#include "push.h"

layout(constant_id = 0) const uint WG = 64u; // == (TM/RM) * (TN/RN)
layout(constant_id = 1) const uint TM = 64u;
layout(constant_id = 2) const uint TN = 64u;
layout(constant_id = 3) const uint TK = 32u; // a multiple of 4
layout(constant_id = 4) const uint RM = 8u;  // multiples of 4
layout(constant_id = 5) const uint RN = 8u;
layout(constant_id = 6) const uint DIRECT = 0u; // 1: global reads only
layout(constant_id = 7) const uint VW = 4u;     // widest load: 4, 2 or 1

layout(local_size_x_id = 0) in;

IN_BUFFER(0, a)
IN_BUFFER(1, bm)
OUT_BUFFER(2, c)
IN_BUFFER(3, bias)
layout(std430, binding = 4) readonly buffer BufMask { float mask[]; };
layout(std430, binding = 5) readonly buffer BufKpm { float kpm[]; };
layout(std430, binding = 0) readonly buffer BufA4 { vec4 a4[]; };
layout(std430, binding = 1) readonly buffer BufB4 { vec4 b4[]; };
layout(std430, binding = 0) readonly buffer BufA2 { vec2 a2[]; };
layout(std430, binding = 1) readonly buffer BufB2 { vec2 b2[]; };

MHA_PUSH_BLOCK(matmul_push, MHA_MATMUL_PUSH)

#define FLAGS p.flags

const uint TY = TM / RM, TX = TN / RN; // invocations along M and N
const uint AS4 = TM / 4u + 1u, BS4 = TN / 4u + 1u; // padded rows, vec4s
shared vec4 As[TK * AS4]; // [kk][i / 4]
shared vec4 Bs[TK * BS4]; // [kk][j / 4]

#define NEG_INF uintBitsToFloat(0xff800000u)

bool flag(uint f) { return (p.flags & f) != 0u; }

// Elements idx .. idx + 3 of A (B), the first n of them; zero past n.
vec4 a_vec(uint idx, uint n)
{
    bool whole = flag(MHA_VK_F_VEC4_A) && n >= 4u;
    if (whole && VW == 4u)
        return a4[idx / 4u];
    if (whole && VW == 2u)
        return vec4(a2[idx / 2u], a2[idx / 2u + 1u]);
    vec4 r = vec4(0.0);
    for (uint i = 0u; i < 4u; ++i)
        if (i < n)
            r[i] = LOAD(0, a, idx + i);
    return r;
}

// Elements idx, idx + step, ... of B, the first n of them (step 1 and
// MHA_VK_F_VEC4_B: one vec4 load).
vec4 b_vec(uint idx, uint step, uint n)
{
    bool whole = flag(MHA_VK_F_VEC4_B) && step == 1u && n >= 4u;
    if (whole && VW == 4u)
        return b4[idx / 4u];
    if (whole && VW == 2u)
        return vec4(b2[idx / 2u], b2[idx / 2u + 1u]);
    vec4 r = vec4(0.0);
    for (uint i = 0u; i < 4u; ++i)
        if (i < n)
            r[i] = LOAD(1, bm, idx + i * step);
    return r;
}

// Four k of row r of a tile (dst[kk][r]), k-contiguous in memory.
void put_t(bool is_a, uint kk, uint r, vec4 x)
{
    for (uint i = 0u; i < 4u; ++i) {
        if (is_a)
            As[(kk + i) * AS4 + r / 4u][r % 4u] = x[i];
        else
            Bs[(kk + i) * BS4 + r / 4u][r % 4u] = x[i];
    }
}

uint avail(uint start, uint end) { return start < end ? end - start : 0u; }

void load_tiles(uint a0, uint b0, uint row0, uint col0, uint k0)
{
    uint t = gl_LocalInvocationID.x;
    const uint K4 = TK / 4u;
    for (uint e = t; e < TM * K4; e += WG) {
        uint r = e / K4, kk = e % K4 * 4u;
        uint i = row0 + r, k = k0 + kk;
        vec4 x = i < p.M ? a_vec(a0 + i * p.a_sr + k, avail(k, p.K))
                         : vec4(0.0);
        put_t(true, kk, r, x);
    }
    if (p.b_sk == 1u) { // B^T rows: k is contiguous
        for (uint e = t; e < TN * K4; e += WG) {
            uint r = e / K4, kk = e % K4 * 4u;
            uint j = col0 + r, k = k0 + kk;
            vec4 x = j < p.N ? b_vec(b0 + j * p.b_sj + k, 1u, avail(k, p.K))
                             : vec4(0.0);
            put_t(false, kk, r, x);
        }
    } else { // B rows: j is contiguous (weighted sum)
        const uint N4 = TN / 4u;
        for (uint e = t; e < TK * N4; e += WG) {
            uint kk = e / N4, r4 = e % N4;
            uint j = col0 + r4 * 4u, k = k0 + kk;
            Bs[kk * BS4 + r4] =
                k < p.K ? b_vec(b0 + j * p.b_sj + k * p.b_sk, p.b_sj,
                                avail(j, p.N))
                        : vec4(0.0);
        }
    }
}

// The row (column) within the tile of an invocation's r-th row (q-th
// column): RM / 4 (RN / 4) chunks of four, strided by the workgroup's
// height (width).
uint row_of(uint ty, uint r) { return (ty + r / 4u * TY) * 4u + r % 4u; }
uint col_of(uint tx, uint q) { return (tx + q / 4u * TX) * 4u + q % 4u; }

// DIRECT: k .. k + 3 of row i of A, zeros outside.
vec4 a_direct(uint a0, uint i, uint k)
{
    return i < p.M ? a_vec(a0 + i * p.a_sr + k, avail(k, p.K)) : vec4(0.0);
}

// DIRECT: column j of B at k .. k + 3 where B^T rows are k-contiguous.
vec4 bt_direct(uint b0, uint j, uint k)
{
    return j < p.N ? b_vec(b0 + j * p.b_sj + k, 1u, avail(k, p.K))
                   : vec4(0.0);
}

// DIRECT: columns j .. j + 3 of row k of B (the weighted sum's V).
vec4 b_direct(uint b0, uint j, uint k)
{
    return k < p.K ? b_vec(b0 + j * p.b_sj + k * p.b_sk, p.b_sj,
                           avail(j, p.N))
                   : vec4(0.0);
}

float epilogue(float v, uint zb, uint zh, uint i, uint j)
{
    v *= p.scale;
    if (flag(MHA_VK_F_BIAS))
        v += LOAD(3, bias, p.bias_off + j);
    if (j < p.mask_cols) {
        if (flag(MHA_VK_F_MASK))
            v += mask[p.mask_off + zb * p.mask_sb + zh * p.mask_sh +
                      i * p.mask_sr + j];
        if (flag(MHA_VK_F_KPM))
            v += kpm[p.kpm_off + zb * p.kpm_sb + zh * p.kpm_sh +
                     i * p.kpm_sr + j];
        if (flag(MHA_VK_F_CAUSAL) && j > i)
            v = NEG_INF;
    }
    return v;
}

void main()
{
    uint t = gl_LocalInvocationID.x;
    uint tx = t % TX, ty = t / TX;
    uint z = gl_WorkGroupID.z;
    uint zb = z / p.H, zh = z % p.H;
    uint row0 = gl_WorkGroupID.y * TM, col0 = gl_WorkGroupID.x * TN;
    uint a0 = p.a_off + zb * p.a_sb + zh * p.a_sh;
    uint b0 = p.b_off + zb * p.b_sb + zh * p.b_sh;
    const uint RM4 = RM / 4u, RN4 = RN / 4u;

    vec4 acc[RM][RN4];
    [[unroll]] for (uint r = 0u; r < RM; ++r)
        [[unroll]] for (uint q = 0u; q < RN4; ++q)
            acc[r][q] = vec4(0.0);

    // DIRECT: RM + RN (or RM + RN / 4 * 4) loads per 4 * RM * RN FMAs
    [[dont_unroll]] for (uint k = 0u; DIRECT != 0u && k < p.K; k += 4u) {
        vec4 av[RM], bv[4][RN4];
        [[unroll]] for (uint r = 0u; r < RM; ++r)
            av[r] = a_direct(a0, row0 + row_of(ty, r), k);
        if (p.b_sk == 1u) {
            [[unroll]] for (uint q = 0u; q < RN; ++q) {
                vec4 x = bt_direct(b0, col0 + col_of(tx, q), k);
                [[unroll]] for (uint kk = 0u; kk < 4u; ++kk)
                    bv[kk][q / 4u][q % 4u] = x[kk];
            }
        } else {
            [[unroll]] for (uint kk = 0u; kk < 4u; ++kk)
                [[unroll]] for (uint q = 0u; q < RN4; ++q)
                    bv[kk][q] = b_direct(b0, col0 + col_of(tx, q * 4u),
                                         k + kk);
        }
        [[unroll]] for (uint kk = 0u; kk < 4u; ++kk)
            [[unroll]] for (uint r = 0u; r < RM; ++r)
                [[unroll]] for (uint q = 0u; q < RN4; ++q)
                    acc[r][q] = fma(vec4(av[r][kk]), bv[kk][q], acc[r][q]);
    }

    for (uint k0 = 0u; DIRECT == 0u && k0 < p.K; k0 += TK) {
        load_tiles(a0, b0, row0, col0, k0);
        barrier();
        // a loop, not unrolled TK times: lavapipe's LLVM compiles
        // the unrolled body for seconds per pipeline
        [[dont_unroll]] for (uint kk = 0u; kk < TK; ++kk) {
            vec4 av[RM4], bv[RN4];
            [[unroll]] for (uint r = 0u; r < RM4; ++r)
                av[r] = As[kk * AS4 + ty + r * TY];
            [[unroll]] for (uint q = 0u; q < RN4; ++q)
                bv[q] = Bs[kk * BS4 + tx + q * TX];
            [[unroll]] for (uint r = 0u; r < RM; ++r)
                [[unroll]] for (uint q = 0u; q < RN4; ++q)
                    acc[r][q] = fma(vec4(av[r / 4u][r % 4u]), bv[q],
                                    acc[r][q]);
        }
        barrier();
    }

    uint c0 = p.c_off + zb * p.c_sb + zh * p.c_sh;
    for (uint r = 0u; r < RM; ++r) {
        uint i = row0 + row_of(ty, r);
        if (i >= p.M)
            continue;
        for (uint q = 0u; q < RN; ++q) {
            uint j = col0 + col_of(tx, q);
            if (j < p.N) {
                STORE(2, c, c0 + i * p.c_sr + j,
                      epilogue(acc[r][q / 4u][q % 4u], zb, zh, i, j));
            }
        }
    }
}
