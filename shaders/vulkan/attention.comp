// attention.comp: fused flash attention, O = softmax(s) V with the scores s
// of core/backend.h's ATTENTION (scale, softcap, ALiBi, masks, causal
// top-left or bottom-right, window, per-sequence key lengths, sinks),
// without the L x S' score matrix in memory.
//
// A workgroup owns BR rows of one (b, kv head): row R is query i = R / G of
// query head hk * G + R % G, so the G query heads of a GQA/MQA group share
// each K and V tile it stages through shared memory. It walks the keys in
// tiles of up to BC and keeps a running maximum, sum and output per row
// (online softmax, fp32). Q is scaled as it is loaded. Only keys that some
// row can see are visited: the real keys [lo, hi), where hi stops at the
// sequence's length (KV_LEN, read from a buffer so decoding never needs a
// new pipeline), at mask_cols and at the causal diagonal of the last row,
// and lo starts at the window of the first row; then the appended bias_k /
// add_zero_attn keys [mask_cols, S'), which no mask applies to. Keys past
// the bounds are neither loaded nor read. A row with nothing attendable
// yields zeros. Each row is served by TPR invocations, each owning the head
// dimensions c, c + TPR, ... (DPT of them).
// Split-K (flash-decoding, NS > 1): when (b, kv head, row block) leave too
// few workgroups, as in decode, NS workgroups share each row block, split
// s taking keys [s * chunk, (s + 1) * chunk) of the same bounds, and each
// leaves its unnormalised output, maximum and sum in the partials (bound
// as the output, fp32) for attention_combine.comp, which also adds the
// sink. NS depends on shapes only (S is the keys' capacity, not a length).
// D, BR, BC, TPR are specialization constants chosen from the device's
// shared memory and workgroup limits (BR from the rows there are, so decode
// gets a narrow variant whose invocations split a wide key tile instead of
// idling); G, WINDOW and SOFTCAP are the layer's configuration.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "dtype.glsl"
#include "online.glsl"
#include "push.h"

layout(constant_id = 0) const uint WG = 128u;  // == BR * TPR
layout(constant_id = 1) const uint D = 64u;    // head size
layout(constant_id = 2) const uint BR = 16u;   // rows per workgroup
layout(constant_id = 3) const uint BC = 16u;   // keys per tile
layout(constant_id = 4) const uint TPR = 8u;   // invocations per row
layout(constant_id = 5) const uint G = 1u;     // query heads per K/V head
layout(constant_id = 6) const uint WINDOW = 0u;  // sliding window, 0: none
layout(constant_id = 7) const uint SOFTCAP = 0u; // its float bits, 0: none
layout(constant_id = 8) const uint NS = 1u;    // key splits (split-K)

layout(local_size_x_id = 0) in;

IN_BUFFER(0, q)
IN_BUFFER(1, k)
OUT_BUFFER(2, o)
IN_BUFFER(3, v)
layout(std430, binding = 4) readonly buffer BufMask { float mask[]; };
layout(std430, binding = 5) readonly buffer BufKpm { float kpm[]; };
layout(std430, binding = 6) readonly buffer BufSinks { float sinks[]; };
layout(std430, binding = 7) readonly buffer BufAlibi { float alibi[]; };
layout(std430, binding = 8) readonly buffer BufLen { int kv_len[]; };

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

// The workgroup's (b, kv head), first row and query offset (positions).
uint b, hk, R0;
int off;
// This invocation's row state.
float m, l;
float acc[DPT];

bool flag(uint f) { return (p.flags & f) != 0u; }

uint rows() { return p.L * G; }
uint query_of(uint R) { return R / G; }
uint head_of(uint R) { return hk * G + R % G; }
int pos_of(uint R) { return int(query_of(R)) + off; }

// c * tanh(s / c); tanh's argument is clamped where it is +-1 in fp32, as
// some drivers' tanh overflows to NaN for large ones. NaN stays NaN.
float softcap(float s)
{
    float c = uintBitsToFloat(SOFTCAP);
    float x = s / c;
    return isnan(x) ? x : c * tanh(clamp(x, -16.0, 16.0));
}

// Causal and window masks of key j (j < mask_cols) for position pos.
bool key_masked(int pos, uint j)
{
    return (flag(MHA_VK_F_CAUSAL) && int(j) > pos) ||
           (WINDOW > 0u && int(j) <= pos - int(WINDOW));
}

float score(uint r, uint jj, uint j)
{
    uint R = R0 + r;
    if (R >= rows())
        return NEG_INF;
    uint i = query_of(R), h = head_of(R);
    int pos = pos_of(R);
    float s = 0.0;
    for (uint e = 0u; e < D; ++e)
        s = fma(Qs[r * D + e], Ks[jj * KS + e], s);
    if (SOFTCAP != 0u)
        s = softcap(s);
    if (flag(MHA_VK_F_ALIBI))
        s += alibi[p.alibi_off + h] * float(int(j) - pos);
    if (j < p.mask_cols) {
        if (flag(MHA_VK_F_MASK))
            s += mask[p.mask_off + b * p.mask_sb + h * p.mask_sh +
                      i * p.mask_sr + j];
        if (flag(MHA_VK_F_KPM))
            s += kpm[p.kpm_off + b * p.kpm_sb + h * p.kpm_sh +
                     i * p.kpm_sr + j];
        if (key_masked(pos, j))
            s = NEG_INF;
    }
    return s;
}

// One tile: keys [j0, min(j0 + BC, jend)), folded into every row's state.
void tile(uint j0, uint jend, uint row, uint lane)
{
    uint kb = p.k_off + b * p.k_sb + hk * p.k_sh;
    uint vb = p.v_off + b * p.v_sb + hk * p.v_sh;
    for (uint e = gl_LocalInvocationID.x; e < BC * D; e += WG) {
        uint r = e / D, c = e % D;
        uint j = j0 + r;
        bool ok = j < jend;
        Ks[r * KS + c] = ok ? LOAD(1, k, kb + j * p.k_sr + c) : 0.0;
        Vs[e] = ok ? LOAD(3, v, vb + j * p.v_sr + c) : 0.0;
    }
    barrier();
    for (uint e = gl_LocalInvocationID.x; e < BR * BC; e += WG) {
        uint r = e / BC, jj = e % BC;
        Ss[e] = j0 + jj < jend ? score(r, jj, j0 + jj) : NEG_INF;
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

// The sink logit of head h joins the denominator in the row's frame.
void add_sink(uint h)
{
    if (!flag(MHA_VK_F_SINKS) || m == NEG_INF)
        return; // nothing attendable: the row stays 0
    float alpha = fold_sink(m, l, sinks[p.sinks_off + h]);
    for (uint x = 0u; x < DPT; ++x)
        acc[x] *= alpha;
}

// Split-K: this split's unnormalised output, maximum and sum for the
// combine pass (attention_combine.comp), at split s of the row's partials.
void store_partial(uint R, uint s, uint lane)
{
    uint pb = p.o_off + b * p.o_sb + head_of(R) * p.o_sh +
              query_of(R) * p.o_sr + s * (D + 2u);
    for (uint x = 0u; x < DPT; ++x) {
        uint c = lane + x * TPR;
        if (c < D)
            o[pb + c] = acc[x];
    }
    if (lane == 0u) {
        o[pb + D] = m;
        o[pb + D + 1u] = l;
    }
}

void main()
{
    uint t = gl_LocalInvocationID.x;
    hk = gl_WorkGroupID.y;
    b = gl_WorkGroupID.z;
    uint blocks = (rows() + BR - 1u) / BR;
    uint split = gl_WorkGroupID.x / blocks;
    R0 = gl_WorkGroupID.x % blocks * BR;
    // this split's keys of [0, S'): [k0, k1), whole tiles but the last
    uint chunk = ((p.S + NS - 1u) / NS + BC - 1u) / BC * BC;
    uint k0 = min(split * chunk, p.S), k1 = min(k0 + chunk, p.S);
    // keys of this sequence among the real ones, clamped to [0, mask_cols]
    int len = int(p.mask_cols);
    if (flag(MHA_VK_F_KV_LEN))
        len = clamp(kv_len[p.len_off + b], 0, int(p.mask_cols));
    off = flag(MHA_VK_F_BOTTOM_RIGHT) ? len - int(p.L) : 0;

    for (uint e = t; e < BR * D; e += WG) {
        uint r = e / D, c = e % D;
        uint R = R0 + r;
        Qs[e] = R < rows() ? LOAD(0, q, p.q_off + b * p.q_sb +
                                        head_of(R) * p.q_sh +
                                        query_of(R) * p.q_sr + c) * p.scale
                           : 0.0;
    }

    uint row = t / TPR, lane = t % TPR;
    m = NEG_INF;
    l = 0.0;
    for (uint x = 0u; x < DPT; ++x)
        acc[x] = 0.0;

    // The real keys some row of this workgroup can see: [lo, hi).
    uint last = min(R0 + BR, rows()) - 1u;
    int hi = len;
    if (flag(MHA_VK_F_CAUSAL))
        hi = min(hi, pos_of(last) + 1);
    int lo = WINDOW > 0u ? max(pos_of(R0) - int(WINDOW) + 1, 0) : 0;
    lo = max(lo, int(k0));
    hi = min(hi, int(k1));
    for (int j0 = lo; j0 < hi; j0 += int(BC))
        tile(uint(j0), uint(hi), row, lane);
    for (uint j0 = max(p.mask_cols, k0); j0 < k1; j0 += BC)
        tile(j0, k1, row, lane);

    uint R = R0 + row;
    if (R >= rows())
        return;
    if (NS > 1u) {
        store_partial(R, split, lane);
        return;
    }
    add_sink(head_of(R));
    float inv = l == 0.0 ? 0.0 : 1.0 / l; // all masked: zeros; NaN stays NaN
    uint ob = p.o_off + b * p.o_sb + head_of(R) * p.o_sh +
              query_of(R) * p.o_sr;
    for (uint x = 0u; x < DPT; ++x) {
        uint c = lane + x * TPR;
        if (c < D) {
            STORE(2, o, ob + c, acc[x] * inv);
        }
    }
}
