// attention_backward.comp: ATTENTION_BACKWARD (core/backend.h) after
// attention_backward_pre.comp, FlashAttention-2's backward in two
// dispatches of this kernel (MODE): MODE 0 gives dK and dV, a workgroup
// owning BO keys and streaming the query rows past them in tiles of BS;
// MODE 1 gives dQ, a workgroup owning BO query rows and streaming the
// keys. dQ is a second pass that recomputes the probabilities rather than
// partial sums per key block reduced afterwards: it needs no float atomics
// (core Vulkan has none), no O(L d S / BO) scratch, and its order of
// summation is fixed (deterministic). Nothing of size L x S' is stored:
// each tile's p_ij = exp(s_ij - LSE_i) and dS_ij = p_ij (dO_i . V_j - D_i)
// live in shared memory for the tile.
// The own rows (K and V, or Q and dO) and the streamed tile (Q and dO, or
// K and V) sit in shared memory as vec4 rows padded by one vec4 (rows
// spread over banks). Phase A: the BS x BO pairs of the tile are spread
// over the workgroup; each computes q.k and dO.v over the head (4 vec4
// loads per 8 FMAs; the streamed row is a broadcast within a row of
// pairs) and writes p and dS. Phase B: invocation (o, t) of the TPR of own
// row o holds C4 vec4 columns of its accumulators (dK and dV, or dQ) in
// registers and adds dS * (Q or K) and p * dO over the tile's rows: two
// broadcast scalars and C4 vec4 loads per 4 C4 FMAs of each accumulator.
// Causal skips whole tiles: a key block sees no query row before its
// first key, a query block no key past its last row; the window likewise
// (no query row W or more past a key block's last key, no key W or more
// before a query block's first row), for keys below mask_cols (the
// appended ones past it are visible to all). A fully
// masked row (LSE -inf) gets p = 0, so zero gradients.
// Softcap and window are specialisation constants (as attention.comp's),
// the ALiBi slope a third value per query row of the (LSE, D) pass.
// The batch item is the host's: a dispatch per item, its offsets in the
// push constants (the block holds no batch strides: 128 bytes). So is a
// very long range of streamed rows: the host cuts it into dispatches that
// visit [s_lo, s_hi) and add into the outputs after the first (lavapipe's
// loop limit, backends/vulkan/ops.c).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "push.h"

layout(constant_id = 0) const uint WG = 128u; // == BO * TPR
layout(constant_id = 1) const uint DH = 64u;  // head size
layout(constant_id = 2) const uint BO = 32u;  // own rows per workgroup
layout(constant_id = 3) const uint BS = 32u;  // streamed rows per tile
layout(constant_id = 4) const uint TPR = 4u;  // invocations per own row
layout(constant_id = 5) const uint MODE = 0u; // 0: dK, dV; 1: dQ
layout(constant_id = 6) const uint WINDOW = 0u;  // sliding window, 0: none
layout(constant_id = 7) const uint SOFTCAP = 0u; // its float bits, 0: none

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer BufQ { float q[]; };
layout(std430, binding = 1) readonly buffer BufK { float k[]; };
layout(std430, binding = 2) readonly buffer BufV { float v[]; };
layout(std430, binding = 3) readonly buffer BufDO { float dout[]; };
layout(std430, binding = 4) readonly buffer BufMask { float mask[]; };
layout(std430, binding = 5) readonly buffer BufKpm { float kpm[]; };
layout(std430, binding = 6) readonly buffer BufLD { float ld[]; };
layout(std430, binding = 7) buffer BufOut { float out1[]; };
layout(std430, binding = 8) buffer BufOut2 { float out2[]; };

MHA_PUSH_BLOCK(att_bwd_push, MHA_ATT_BWD_PUSH)

#define NEG_INF uintBitsToFloat(0xff800000u)

const uint D4 = (DH + 3u) / 4u;
const uint C4 = (D4 + TPR - 1u) / TPR; // vec4 columns of an invocation
const uint D4P = C4 * TPR;             // a row in vec4s, zero padded
const uint RS = D4P + 1u;              // shared row stride, vec4s

shared vec4 X1[BO * RS], X2[BO * RS]; // own: K, V (MODE 0); Q, dO (1)
shared vec4 Y1[BS * RS], Y2[BS * RS]; // streamed: Q, dO (0); K, V (1)
shared float Ps[BS * BO], Ds[BS * BO]; // p and dS of the tile, [s][o]
shared float Lq[BS + BO], Dq[BS + BO]; // LSE and D of the query rows

float slope; // the head's ALiBi slope (0 without), from the (LSE, D) pass

// Element idx of Q, K, V or dO (0..3).
float elem(uint which, uint idx)
{
    switch (which) {
    case 0u: return q[idx];
    case 1u: return k[idx];
    case 2u: return v[idx];
    default: return dout[idx];
    }
}

// The first element of row r of Q, K, V or dO in head h.
uint row_base(uint which, uint h, uint r)
{
    switch (which) {
    case 0u: return p.q_off + h * p.q_sh + r * p.q_sr;
    case 1u: return p.k_off + h * p.k_sh + r * p.k_sr;
    case 2u: return p.v_off + h * p.v_sh + r * p.v_sr;
    default: return p.do_off + h * p.do_sh + r * p.do_sr;
    }
}

// Rows r0 .. r0 + n - 1 of tensors wa and wb into own (X) or streamed (Y)
// rows of shared memory, zeros past the head size and past n rows; with
// query rows (qrow), their LSE and D into Lq / Dq from slot q0.
void stage(bool own, uint wa, uint wb, uint h, uint r0, uint n, uint rows,
           bool qrow, uint q0)
{
    uint t = gl_LocalInvocationID.x;
    [[dont_unroll]] for (uint e = t; e < rows * D4P; e += WG) {
        uint r = e / D4P, c4 = e % D4P;
        vec4 xa = vec4(0.0), xb = vec4(0.0);
        if (r < n) {
            uint ba = row_base(wa, h, r0 + r), bb = row_base(wb, h, r0 + r);
            [[unroll]] for (uint i = 0u; i < 4u; ++i)
                if (c4 * 4u + i < DH) {
                    xa[i] = elem(wa, ba + c4 * 4u + i);
                    xb[i] = elem(wb, bb + c4 * 4u + i);
                }
        }
        if (own) {
            X1[r * RS + c4] = xa;
            X2[r * RS + c4] = xb;
        } else {
            Y1[r * RS + c4] = xa;
            Y2[r * RS + c4] = xb;
        }
    }
    if (qrow)
        for (uint r = t; r < rows; r += WG) {
            float lse = NEG_INF, dd = 0.0;
            if (r < n) {
                uint l = p.ld_off + 3u * (h * p.L + r0 + r);
                lse = ld[l];
                dd = ld[l + 1u];
            }
            Lq[q0 + r] = lse;
            Dq[q0 + r] = dd;
        }
}

// The score of query i and key j from their dot product, as the forward
// (attention.comp) makes it: scale, softcap, ALiBi, masks, causal, window;
// dcap is the softcap's slope 1 - tanh^2 (1 without), a factor of dS. The
// tanh's argument is clamped as the forward's.
float score(uint h, uint i, uint j, float dot, out float dcap)
{
    float s = p.scale * dot;
    dcap = 1.0;
    if (SOFTCAP != 0u) {
        float c = uintBitsToFloat(SOFTCAP), th = tanh(clamp(s / c, -16.0, 16.0));
        s = isnan(s) ? s : c * th;
        dcap = 1.0 - th * th;
    }
    s += slope * (float(j) - float(i));
    if (j < p.mask_cols) {
        if ((p.flags & MHA_VK_F_MASK) != 0u)
            s += mask[p.mask_off + h * p.mask_sh + i * p.mask_sr + j];
        if ((p.flags & MHA_VK_F_KPM) != 0u)
            s += kpm[p.kpm_off + h * p.kpm_sh + i * p.kpm_sr + j];
        if (((p.flags & MHA_VK_F_CAUSAL) != 0u && j > i) ||
            (WINDOW > 0u && j + WINDOW <= i))
            s = NEG_INF;
    }
    return s;
}

// Phase A: p and dS of the tile's pairs (streamed rows s0 .. s0 + n - 1).
void probabilities(uint h, uint o0, uint no, uint s0, uint n)
{
    [[dont_unroll]] for (uint e = gl_LocalInvocationID.x; e < BS * BO;
                         e += WG) {
        uint s = e / BO, o = e % BO;
        float pij = 0.0, dsij = 0.0;
        if (s < n && o < no) {
            vec4 d1 = vec4(0.0), d2 = vec4(0.0);
            [[dont_unroll]] for (uint c = 0u; c < D4P; ++c) {
                d1 = fma(X1[o * RS + c], Y1[s * RS + c], d1);
                d2 = fma(X2[o * RS + c], Y2[s * RS + c], d2);
            }
            uint qi = MODE == 0u ? s : BS + o; // slot of the query row
            uint i = MODE == 0u ? s0 + s : o0 + o;
            uint j = MODE == 0u ? o0 + o : s0 + s;
            float dcap;
            float sc = score(h, i, j, (d1.x + d1.y) + (d1.z + d1.w), dcap);
            float lse = Lq[qi];
            if (lse != NEG_INF && sc != NEG_INF) {
                pij = exp(sc - lse);
                dsij = pij * ((d2.x + d2.y) + (d2.z + d2.w) - Dq[qi]) * dcap;
            }
        }
        Ps[e] = pij;
        Ds[e] = dsij;
    }
}

void main()
{
    uint t = gl_LocalInvocationID.x, o = t / TPR, tc = t % TPR;
    uint h = gl_WorkGroupID.y;
    uint o0 = gl_WorkGroupID.x * BO;
    uint nown = MODE == 0u ? p.S : p.L, nstr = MODE == 0u ? p.L : p.S;
    uint no = min(BO, nown - o0);
    slope = ld[p.ld_off + 3u * h * p.L + 2u];
    // own K, V (MODE 0) or Q, dO with their LSE and D (MODE 1)
    stage(true, MODE == 0u ? 1u : 0u, MODE == 0u ? 2u : 3u, h, o0, no, BO,
          MODE == 1u, BS);

    vec4 acc1[C4], acc2[C4];
    [[unroll]] for (uint c = 0u; c < C4; ++c)
        acc1[c] = acc2[c] = vec4(0.0);

    // The streamed rows that can see an own row, as segments [sa, se):
    // keys below mask_cols (cut by causal and the window: query i sees keys
    // j > i - W), then the appended ones.
    bool causal = (p.flags & MHA_VK_F_CAUSAL) != 0u;
    uint mc = min(p.mask_cols, p.S), o1 = o0 + no;
    uint seg_a[2], seg_e[2];
    if (MODE == 0u) {
        seg_a[0] = causal && o1 <= mc ? min(o0, nstr) : 0u;
        uint wend = o1 - 1u + min(WINDOW, nstr); // past the window's rows
        seg_e[0] = WINDOW > 0u && o1 <= mc ? min(wend, nstr) : nstr;
        seg_a[1] = seg_e[1] = 0u;
    } else {
        seg_a[0] = o0 + 1u > WINDOW && WINDOW > 0u ? o0 + 1u - WINDOW : 0u;
        seg_e[0] = causal ? min(mc, o1) : mc;
        seg_a[1] = mc;
        seg_e[1] = nstr;
    }
    for (uint g = 0u; g < 2u; ++g) {
        uint sa = max(seg_a[g], p.s_lo), se = min(seg_e[g], p.s_hi);
        [[dont_unroll]] for (uint s0 = sa; s0 < se; s0 += BS) {
            uint n = min(BS, se - s0);
            barrier(); // the previous tile's readers are done
            stage(false, MODE == 0u ? 0u : 1u, MODE == 0u ? 3u : 2u, h, s0, n,
                  BS, MODE == 0u, 0u);
            barrier();
            probabilities(h, o0, no, s0, n);
            barrier();
            [[dont_unroll]] for (uint s = 0u; s < n; ++s) {
                float ds = Ds[s * BO + o], pp = Ps[s * BO + o];
                [[unroll]] for (uint c = 0u; c < C4; ++c) {
                    acc1[c] = fma(vec4(ds), Y1[s * RS + tc + c * TPR], acc1[c]);
                    if (MODE == 0u)
                        acc2[c] = fma(vec4(pp), Y2[s * RS + tc + c * TPR],
                                      acc2[c]);
                }
            }
        }
    }
    if (o >= no)
        return;
    uint b1 = p.out_off + h * p.out_sh + (o0 + o) * p.out_sr;
    uint b2 = p.out2_off + h * p.out2_sh + (o0 + o) * p.out2_sr;
    bool add = (p.flags & MHA_VK_F_ACCUMULATE) != 0u;
    for (uint c = 0u; c < C4; ++c)
        for (uint i = 0u; i < 4u; ++i) {
            uint col = (tc + c * TPR) * 4u + i;
            if (col < DH) {
                float g1 = p.scale * acc1[c][i];
                out1[b1 + col] = add ? out1[b1 + col] + g1 : g1;
                if (MODE == 0u)
                    out2[b2 + col] = add ? out2[b2 + col] + acc2[c][i]
                                         : acc2[c][i];
            }
        }
}
