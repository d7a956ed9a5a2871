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
// yields zeros.
// Registers, not shared memory, hold the work: each row is served by TPR
// adjacent invocations, invocation `lane` owning the vec4 columns c4 = lane,
// lane + TPR, ... (DPT of them) of the row's query (scaled) and output. For
// each key of a tile an invocation forms its partial dot product from vec4
// reads of the staged K row, the TPR partials are summed (subgroup shuffles
// in the MHA_SG build, else through the shared array Red: the kernel is
// built both ways because the shuffle build declares a capability some
// devices lack), and every invocation of the row then holds the tile's
// scores in registers (s[]), takes the tile's maximum, and exponentiates
// each score once; P V is again vec4 reads of the staged V row. So a
// shared-memory load feeds 4 FMAs (the old kernel: 2 loads per FMA).
// Only the loops over an invocation's DPT vec4s are unrolled; the loops
// over a tile's keys stay loops ([[dont_unroll]]): unrolled, lavapipe's
// LLVM took seconds to a minute per pipeline (BC x DPT bodies), and it
// compiles every pipeline anew in each process. The scores s[] are then
// indexed by a loop counter, which keeps them in (registers or) private
// memory per the driver.
// Shared arrays need no padding: K and V rows are read whole by every row
// of the workgroup (a broadcast; the lanes of a row read consecutive
// vec4s), staging writes consecutive vec4s, and Red is written at the
// invocation index and read at row * TPR + i (same word within a row,
// stride TPR across rows: distinct banks).
// Split-K (flash-decoding, NS > 1): when (b, kv head, row block) leave too
// few workgroups, as in decode, NS workgroups share each row block, split
// s taking keys [s * chunk, (s + 1) * chunk) of the same bounds, and each
// leaves its unnormalised output, maximum and sum in the partials (bound
// as the output, fp32) for attention_combine.comp, which also adds the
// sink. NS depends on shapes only (S is the keys' capacity, not a length).
// A training forward that saves the row LSE takes the same two passes
// (MHA_VK_F_PARTIALS, even with NS == 1): the combine pass writes it.
// fp16 arithmetic (MHA_F16MATH, a build of the fp16 variant for devices
// with shaderFloat16, used when K and V are fp16): the K and V tiles are
// f16vec4s (half the shared memory and its traffic), and p.v accumulates
// a tile's keys in f16vec4 FMAs of p / BC (p = exp(s - max) <= 1, so the
// BC terms, each at most |V| <= 65504 / BC, cannot overflow fp16) before
// joining the fp32 output times BC (a power of 2: exact). q.k stays fp32
// FMAs of the fp16 K: products of fp16 values overflow fp16 (queries and
// keys of magnitude 1e3 give NaN rows). The softmax maximum, sum and
// scores stay fp32.
// D, BR, BC, TPR are specialization constants chosen from the device's
// shared memory, workgroup and subgroup limits (BR from the rows there
// are; with few rows, as in decode, TPR grows so a row is served by more
// invocations, each holding fewer columns); G, WINDOW and SOFTCAP are the
// layer's configuration.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#ifndef MHA_SG
#define MHA_SG 0
#endif
#if MHA_SG
#extension GL_KHR_shader_subgroup_shuffle : require
#endif
#ifndef MHA_F16MATH
#define MHA_F16MATH 0
#endif
#if MHA_F16MATH
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#define TVEC f16vec4 // the K and V tiles
#else
#define TVEC vec4
#endif
#include "dtype.glsl"
#include "online.glsl"
#include "push.h"

layout(constant_id = 0) const uint WG = 128u;  // == BR * TPR
layout(constant_id = 1) const uint D = 64u;    // head size
layout(constant_id = 2) const uint BR = 16u;   // rows per workgroup
layout(constant_id = 3) const uint BC = 16u;   // keys per tile
layout(constant_id = 4) const uint TPR = 2u;   // invocations per row: a
                                               // power of 2 (see D4P)
                                               // (MHA_SG: within a subgroup)
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
// Test hook (MHA_VK_F_VISITS, never with KV_LEN): binding 8 is instead a
// counter of the (row, key) pairs the loaded key tiles serve
// (test_vulkan_tiles.c), which shows the tiles skipped.
layout(std430, binding = 8) buffer BufVisits { uint visits[]; };
// K and V as vec4s, read when MHA_VK_F_VEC4 says they are fp32 with
// offsets and strides in whole vec4s and D % 4 == 0
layout(std430, binding = 1) readonly buffer BufK4 { vec4 k4[]; };
layout(std430, binding = 3) readonly buffer BufV4 { vec4 v4[]; };

MHA_PUSH_BLOCK(attention_push, MHA_ATTENTION_PUSH)

#define FLAGS p.flags

const uint D4 = (D + 3u) / 4u; // vec4s of a head row (zero past D)
// the row padded with zero vec4s to a multiple of TPR (head sizes like
// 100, whose 25 vec4s no power of 2 divides)
const uint D4P = (D4 + TPR - 1u) / TPR * TPR;
const uint DPT = D4P / TPR; // vec4 columns per invocation

shared TVEC Ks[BC * D4P];
shared TVEC Vs[BC * D4P];
#if !MHA_SG
shared float Red[BC * WG]; // [key][invocation]: partial dot products
#endif

// The workgroup's (b, kv head), first row and query offset (positions).
uint b, hk, R0;
int off;
// This invocation's row: query slice, state and the tile's scores.
vec4 qv[DPT];
vec4 acc[DPT];
float s[BC];
float m, l;

bool flag(uint f) { return (p.flags & f) != 0u; }

uint rows() { return p.L * G; }
uint query_of(uint R) { return R / G; }
uint head_of(uint R) { return hk * G + R % G; }
int pos_of(uint R) { return int(query_of(R)) + off; }

// c * tanh(s / c); tanh's argument is clamped where it is +-1 in fp32, as
// some drivers' tanh overflows to NaN for large ones. NaN stays NaN.
float softcap(float x)
{
    float c = uintBitsToFloat(SOFTCAP);
    float y = x / c;
    return isnan(y) ? y : c * tanh(clamp(y, -16.0, 16.0));
}

// Causal and window masks of key j (j < mask_cols) for position pos.
bool key_masked(int pos, uint j)
{
    return (flag(MHA_VK_F_CAUSAL) && int(j) > pos) ||
           (WINDOW > 0u && int(j) <= pos - int(WINDOW));
}

// The score of row R (< rows()) and key j from its dot product.
float finish(float x, uint R, uint j)
{
    uint i = query_of(R), h = head_of(R);
    int pos = pos_of(R);
    if (SOFTCAP != 0u)
        x = softcap(x);
    if (flag(MHA_VK_F_ALIBI))
        x += alibi[p.alibi_off + h] * float(int(j) - pos);
    if (j < p.mask_cols) {
        if (flag(MHA_VK_F_MASK))
            x += mask[p.mask_off + b * p.mask_sb + h * p.mask_sh +
                      i * p.mask_sr + j];
        if (flag(MHA_VK_F_KPM))
            x += kpm[p.kpm_off + b * p.kpm_sb + h * p.kpm_sh +
                     i * p.kpm_sr + j];
        if (key_masked(pos, j))
            x = NEG_INF;
    }
    return x;
}

// vec4 c4 of the row at element base of K (V): one vec4 load when
// MHA_VK_F_VEC4, else four element loads (fp16 or unaligned), zero past D.
#define ROW_VEC4(bnd, name)                                                \
    vec4 name##_vec(uint base, uint c4)                                    \
    {                                                                      \
        if (flag(MHA_VK_F_VEC4))                                           \
            return name##4[base / 4u + c4];                                \
        vec4 r = vec4(0.0);                                                \
        for (uint i = 0u; i < 4u; ++i)                                     \
            if (c4 * 4u + i < D)                                           \
                r[i] = LOAD(bnd, name, base + c4 * 4u + i);                \
        return r;                                                          \
    }
ROW_VEC4(1, k)
ROW_VEC4(3, v)

// Sums each score's TPR partial dot products over the invocations of the
// row; every one of them gets the same bits (fp32 addition commutes).
void reduce_scores(uint row)
{
    if (TPR == 1u)
        return;
#if MHA_SG
    [[unroll]] for (uint w = 1u; w < TPR; w <<= 1u)
        [[dont_unroll]] for (uint jj = 0u; jj < BC; ++jj)
            s[jj] += subgroupShuffleXor(s[jj], w);
#else
    uint t = gl_LocalInvocationID.x;
    [[dont_unroll]] for (uint jj = 0u; jj < BC; ++jj)
        Red[jj * WG + t] = s[jj];
    barrier();
    [[dont_unroll]] for (uint jj = 0u; jj < BC; ++jj) {
        float x = 0.0;
        for (uint i = 0u; i < TPR; ++i)
            x += Red[jj * WG + row * TPR + i];
        s[jj] = x;
    }
    // Red is rewritten only after the barriers that end this tile and
    // stage the next
#endif
}

// One tile: keys [j0, min(j0 + BC, jend)), folded into every row's state.
// Every invocation runs it (shuffles and barriers need them all); those
// of rows past rows() (live false) keep -inf scores.
void tile(uint j0, uint jend, uint R, uint row, uint lane, bool live)
{
    uint kb = p.k_off + b * p.k_sb + hk * p.k_sh;
    uint vb = p.v_off + b * p.v_sb + hk * p.v_sh;
    for (uint e = gl_LocalInvocationID.x; e < BC * D4P; e += WG) {
        uint j = j0 + e / D4P, c4 = e % D4P;
        bool ok = j < jend && c4 < D4;
        Ks[e] = TVEC(ok ? k_vec(kb + j * p.k_sr, c4) : vec4(0.0));
        Vs[e] = TVEC(ok ? v_vec(vb + j * p.v_sr, c4) : vec4(0.0));
    }
    if (flag(MHA_VK_F_VISITS) && gl_LocalInvocationID.x == 0u)
        atomicAdd(visits[0], (min(R0 + BR, rows()) - R0) *
                                 (min(j0 + BC, jend) - j0));
    barrier();

    [[dont_unroll]] for (uint jj = 0u; jj < BC; ++jj) {
        float x = 0.0;
        [[unroll]] for (uint c = 0u; c < DPT; ++c)
            x += dot(qv[c], vec4(Ks[jj * D4P + lane + c * TPR]));
        s[jj] = x;
    }
    reduce_scores(row);

    float mb = m;
    [[dont_unroll]] for (uint jj = 0u; jj < BC; ++jj) {
        s[jj] = live && j0 + jj < jend ? finish(s[jj], R, j0 + jj) : NEG_INF;
        mb = nmax(mb, s[jj]);
    }
    if (mb != NEG_INF) {
        float alpha = exp(m - mb); // m == -inf gives 0
        l *= alpha;
#if MHA_F16MATH
        f16vec4 pv[DPT]; // this tile's p.v / BC, in fp16
        [[unroll]] for (uint c = 0u; c < DPT; ++c)
            pv[c] = f16vec4(0.0);
        const float pscale = 1.0 / float(BC);
#else
#define pv acc // fp32: straight into the output
        const float pscale = 1.0;
#endif
        [[unroll]] for (uint c = 0u; c < DPT; ++c)
            acc[c] *= alpha;
        [[dont_unroll]] for (uint jj = 0u; jj < BC; ++jj) {
            float pj = exp(s[jj] - mb); // one exp per score
            l += pj;
            [[unroll]] for (uint c = 0u; c < DPT; ++c)
                pv[c] = fma(TVEC(pj * pscale), Vs[jj * D4P + lane + c * TPR],
                            pv[c]);
        }
#if MHA_F16MATH
        [[unroll]] for (uint c = 0u; c < DPT; ++c)
            acc[c] = fma(vec4(pv[c]), vec4(float(BC)), acc[c]);
#else
#undef pv
#endif
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
    for (uint c = 0u; c < DPT; ++c)
        acc[c] *= alpha;
}

// Split-K: this split's unnormalised output, maximum and sum for the
// combine pass (attention_combine.comp), at split s of the row's partials.
void store_partial(uint R, uint split, uint lane)
{
    uint pb = p.o_off + b * p.o_sb + head_of(R) * p.o_sh +
              query_of(R) * p.o_sr + split * (D + 2u);
    for (uint c = 0u; c < DPT; ++c)
        for (uint i = 0u; i < 4u; ++i) {
            uint e = (lane + c * TPR) * 4u + i;
            if (e < D)
                o[pb + e] = acc[c][i];
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

    uint row = t / TPR, lane = t % TPR;
    uint R = R0 + row;
    bool live = R < rows();
    uint qb = live ? p.q_off + b * p.q_sb + head_of(R) * p.q_sh +
                         query_of(R) * p.q_sr
                   : 0u;
    for (uint c = 0u; c < DPT; ++c) {
        vec4 x = vec4(0.0);
        for (uint i = 0u; i < 4u; ++i) {
            uint e = (lane + c * TPR) * 4u + i;
            if (live && e < D)
                x[i] = LOAD(0, q, qb + e) * p.scale;
        }
        qv[c] = x;
        acc[c] = vec4(0.0);
    }
    m = NEG_INF;
    l = 0.0;

    // The real keys some row of this workgroup can see: [lo, hi).
    uint last = min(R0 + BR, rows()) - 1u;
    int hi = len;
    if (flag(MHA_VK_F_CAUSAL))
        hi = min(hi, pos_of(last) + 1);
    int lo = WINDOW > 0u ? max(pos_of(R0) - int(WINDOW) + 1, 0) : 0;
    lo = max(lo, int(k0));
    hi = min(hi, int(k1));
    for (int j0 = lo; j0 < hi; j0 += int(BC))
        tile(uint(j0), uint(hi), R, row, lane, live);
    for (uint j0 = max(p.mask_cols, k0); j0 < k1; j0 += BC)
        tile(j0, k1, R, row, lane, live);

    if (!live)
        return;
    if (NS > 1u || flag(MHA_VK_F_PARTIALS)) {
        store_partial(R, split, lane);
        return;
    }
    add_sink(head_of(R));
    float inv = l == 0.0 ? 0.0 : 1.0 / l; // all masked: zeros; NaN stays NaN
    uint ob = p.o_off + b * p.o_sb + head_of(R) * p.o_sh +
              query_of(R) * p.o_sr;
    for (uint c = 0u; c < DPT; ++c)
        for (uint i = 0u; i < 4u; ++i) {
            uint e = (lane + c * TPR) * 4u + i;
            if (e < D) {
                STORE(2, o, ob + e, acc[c][i] * inv);
            }
        }
}
