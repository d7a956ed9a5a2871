// matmul.comp: batched C = scale * A B^T (+ bias) (+ masks), the tiled GEMM
// behind PROJECTION (X W^T + b), SCORES (scale Q K^T + masks, causal) and
// WEIGHTED_SUM (P V, B given with swapped strides). One workgroup computes a
// TM x TN tile of C, staging TK-wide slices of A and B through shared memory;
// each invocation keeps an RM x RN block of C in registers. Tile sizes and
// the workgroup size are specialization constants chosen from the device's
// limits (shared memory, max workgroup size); the workgroup is
// (TN/RN) * (TM/RM) invocations. Batch index z = b * H + h.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "dtype.glsl"
#include "push.h"

layout(constant_id = 0) const uint WG = 256u; // == (TM/RM) * (TN/RN)
layout(constant_id = 1) const uint TM = 64u;
layout(constant_id = 2) const uint TN = 64u;
layout(constant_id = 3) const uint TK = 16u;
layout(constant_id = 4) const uint RM = 4u;
layout(constant_id = 5) const uint RN = 4u;

layout(local_size_x_id = 0) in;

IN_BUFFER(0, a)
IN_BUFFER(1, bm)
OUT_BUFFER(2, c)
IN_BUFFER(3, bias)
layout(std430, binding = 4) readonly buffer BufMask { float mask[]; };
layout(std430, binding = 5) readonly buffer BufKpm { float kpm[]; };

MHA_PUSH_BLOCK(matmul_push, MHA_MATMUL_PUSH)

#define FLAGS p.flags

// Rows padded by one float so the k-major stores of the tiles do not all
// land in one shared-memory bank.
const uint AS = TM + 1u, BS = TN + 1u;
shared float As[TK * AS]; // [kk][i]
shared float Bs[TK * BS]; // [kk][j]

#define NEG_INF uintBitsToFloat(0xff800000u)

void load_tiles(uint a0, uint b0, uint row0, uint col0, uint k0)
{
    uint t = gl_LocalInvocationID.x;
    for (uint e = t; e < TM * TK; e += WG) {
        uint r = e / TK, kk = e % TK;
        uint i = row0 + r, k = k0 + kk;
        As[kk * AS + r] =
            (i < p.M && k < p.K) ? LOAD(0, a, a0 + i * p.a_sr + k) : 0.0;
    }
    if (p.b_sk == 1u) { // B^T rows: k is contiguous
        for (uint e = t; e < TN * TK; e += WG) {
            uint r = e / TK, kk = e % TK;
            uint j = col0 + r, k = k0 + kk;
            Bs[kk * BS + r] =
                (j < p.N && k < p.K) ? LOAD(1, bm, b0 + j * p.b_sj + k) : 0.0;
        }
    } else { // B rows: j is contiguous (weighted sum)
        for (uint e = t; e < TN * TK; e += WG) {
            uint kk = e / TN, r = e % TN;
            uint j = col0 + r, k = k0 + kk;
            Bs[kk * BS + r] =
                (j < p.N && k < p.K)
                    ? LOAD(1, bm, b0 + j * p.b_sj + k * p.b_sk)
                    : 0.0;
        }
    }
}

float epilogue(float v, uint zb, uint zh, uint i, uint j)
{
    v *= p.scale;
    if ((p.flags & MHA_VK_F_BIAS) != 0u)
        v += LOAD(3, bias, p.bias_off + j);
    if (j < p.mask_cols) {
        if ((p.flags & MHA_VK_F_MASK) != 0u)
            v += mask[p.mask_off + zb * p.mask_sb + zh * p.mask_sh +
                      i * p.mask_sr + j];
        if ((p.flags & MHA_VK_F_KPM) != 0u)
            v += kpm[p.kpm_off + zb * p.kpm_sb + zh * p.kpm_sh +
                     i * p.kpm_sr + j];
        if ((p.flags & MHA_VK_F_CAUSAL) != 0u && j > i)
            v = NEG_INF;
    }
    return v;
}

void main()
{
    const uint TX = TN / RN; // invocations along a row of the tile
    uint t = gl_LocalInvocationID.x;
    uint tx = t % TX, ty = t / TX;
    uint z = gl_WorkGroupID.z;
    uint zb = z / p.H, zh = z % p.H;
    uint row0 = gl_WorkGroupID.y * TM, col0 = gl_WorkGroupID.x * TN;
    uint a0 = p.a_off + zb * p.a_sb + zh * p.a_sh;
    uint b0 = p.b_off + zb * p.b_sb + zh * p.b_sh;

    float acc[RM][RN];
    for (uint r = 0u; r < RM; ++r)
        for (uint q = 0u; q < RN; ++q)
            acc[r][q] = 0.0;

    for (uint k0 = 0u; k0 < p.K; k0 += TK) {
        load_tiles(a0, b0, row0, col0, k0);
        barrier();
        for (uint kk = 0u; kk < TK; ++kk) {
            float av[RM], bv[RN];
            for (uint r = 0u; r < RM; ++r)
                av[r] = As[kk * AS + ty + r * (TM / RM)];
            for (uint q = 0u; q < RN; ++q)
                bv[q] = Bs[kk * BS + tx + q * TX];
            for (uint r = 0u; r < RM; ++r)
                for (uint q = 0u; q < RN; ++q)
                    acc[r][q] = fma(av[r], bv[q], acc[r][q]);
        }
        barrier();
    }

    uint c0 = p.c_off + zb * p.c_sb + zh * p.c_sh;
    for (uint r = 0u; r < RM; ++r) {
        uint i = row0 + ty + r * (TM / RM);
        if (i >= p.M)
            continue;
        for (uint q = 0u; q < RN; ++q) {
            uint j = col0 + tx + q * TX;
            if (j < p.N) {
                STORE(2, c, c0 + i * p.c_sr + j,
                      epilogue(acc[r][q], zb, zh, i, j));
            }
        }
    }
}
