// attention.comp: fused flash attention, O = softmax(scale Q K^T + masks) V,
// without the L x S' score matrix in memory. A workgroup owns BR query rows
// of one (b, h); it walks the keys in tiles of BC rows, staging K and V
// tiles through shared memory, and keeps a running maximum, sum and output
// per row (online softmax, fp32). Q is scaled as it is loaded, before the
// dot products. Masks and causal apply to columns j < mask_cols only (the
// appended bias_k/add_zero_attn rows are never masked); a row with every
// key masked yields zeros. Each row is served by TPR invocations, each
// owning the head dimensions c, c + TPR, ... (DPT of them).
// D, BR, BC, TPR are specialization constants chosen from the device's
// shared memory and workgroup limits; the workgroup is BR * TPR.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "dtype.glsl"
#include "push.h"

layout(constant_id = 0) const uint WG = 128u; // == BR * TPR
layout(constant_id = 1) const uint D = 64u;   // head size
layout(constant_id = 2) const uint BR = 16u;  // query rows per workgroup
layout(constant_id = 3) const uint BC = 16u;  // keys per tile
layout(constant_id = 4) const uint TPR = 8u;  // invocations per query row

layout(local_size_x_id = 0) in;

IN_BUFFER(0, q)
IN_BUFFER(1, k)
OUT_BUFFER(2, o)
IN_BUFFER(3, v)
layout(std430, binding = 4) readonly buffer BufMask { float mask[]; };
layout(std430, binding = 5) readonly buffer BufKpm { float kpm[]; };

MHA_PUSH_BLOCK(attention_push, MHA_ATTENTION_PUSH)

#define FLAGS p.flags

const uint DPT = (D + TPR - 1u) / TPR;

// K rows are padded by one float: the score loop reads one element of
// several K rows at once, which would otherwise share a bank.
const uint KS = D + 1u;
shared float Qs[BR * D];
shared float Ks[BC * KS];
shared float Vs[BC * D];
shared float Ss[BR * BC];

#define NEG_INF uintBitsToFloat(0xff800000u)

// max that propagates NaN: a NaN score makes its row NaN, as in SOFTMAX
float nmax(float a, float b)
{
    return isnan(a) ? a : isnan(b) ? b : (a > b ? a : b);
}

float score(uint b, uint h, uint r, uint i, uint jj, uint j)
{
    if (j >= p.S || i >= p.L)
        return NEG_INF;
    float s = 0.0;
    for (uint e = 0u; e < D; ++e)
        s = fma(Qs[r * D + e], Ks[jj * KS + e], s);
    if (j < p.mask_cols) {
        if ((p.flags & MHA_VK_F_MASK) != 0u)
            s += mask[p.mask_off + b * p.mask_sb + h * p.mask_sh +
                      i * p.mask_sr + j];
        if ((p.flags & MHA_VK_F_KPM) != 0u)
            s += kpm[p.kpm_off + b * p.kpm_sb + h * p.kpm_sh +
                     i * p.kpm_sr + j];
        if ((p.flags & MHA_VK_F_CAUSAL) != 0u && j > i)
            s = NEG_INF;
    }
    return s;
}

void main()
{
    uint t = gl_LocalInvocationID.x;
    uint h = gl_WorkGroupID.y, b = gl_WorkGroupID.z;
    uint i0 = gl_WorkGroupID.x * BR;
    uint qb = p.q_off + b * p.q_sb + h * p.q_sh;
    uint kb = p.k_off + b * p.k_sb + h * p.k_sh;
    uint vb = p.v_off + b * p.v_sb + h * p.v_sh;

    for (uint e = t; e < BR * D; e += WG) {
        uint r = e / D, c = e % D;
        uint i = i0 + r;
        Qs[e] = i < p.L ? LOAD(0, q, qb + i * p.q_sr + c) * p.scale : 0.0;
    }

    uint row = t / TPR, lane = t % TPR;
    uint i = i0 + row;
    float m = NEG_INF, l = 0.0;
    float acc[DPT];
    for (uint x = 0u; x < DPT; ++x)
        acc[x] = 0.0;

    for (uint j0 = 0u; j0 < p.S; j0 += BC) {
        for (uint e = t; e < BC * D; e += WG) {
            uint r = e / D, c = e % D;
            uint j = j0 + r;
            bool ok = j < p.S;
            Ks[r * KS + c] = ok ? LOAD(1, k, kb + j * p.k_sr + c) : 0.0;
            Vs[e] = ok ? LOAD(3, v, vb + j * p.v_sr + c) : 0.0;
        }
        barrier();
        for (uint e = t; e < BR * BC; e += WG) {
            uint r = e / BC, jj = e % BC;
            Ss[e] = score(b, h, r, i0 + r, jj, j0 + jj);
        }
        barrier();

        float mb = m;
        for (uint jj = 0u; jj < BC; ++jj)
            mb = nmax(mb, Ss[row * BC + jj]);
        if (mb != NEG_INF) {
            float alpha = exp(m - mb); // m == -inf gives 0
            l *= alpha;
            for (uint x = 0u; x < DPT; ++x)
                acc[x] *= alpha;
            for (uint jj = 0u; jj < BC; ++jj) {
                float pj = exp(Ss[row * BC + jj] - mb);
                l += pj;
                for (uint x = 0u; x < DPT; ++x) {
                    uint c = lane + x * TPR;
                    if (c < D)
                        acc[x] = fma(pj, Vs[jj * D + c], acc[x]);
                }
            }
            m = mb;
        }
        barrier();
    }

    if (i >= p.L)
        return;
    float inv = l == 0.0 ? 0.0 : 1.0 / l; // all masked: zeros; NaN stays NaN
    uint ob = p.o_off + b * p.o_sb + h * p.o_sh + i * p.o_sr;
    for (uint x = 0u; x < DPT; ++x) {
        uint c = lane + x * TPR;
        if (c < D) {
            STORE(2, o, ob + c, acc[x] * inv);
        }
    }
}
