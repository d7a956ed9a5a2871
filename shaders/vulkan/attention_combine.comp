// attention_combine.comp: the second pass of split-K attention
// (flash-decoding). attention.comp with NS > 1 leaves, per row (b, h, i) and
// key split s, its unnormalised output, maximum and sum: the partials
// [B, H, L, NS, D + 2] at part_off. This pass rescales them into the
// largest maximum, adds them in split order (so the result has the same
// bits on every run), folds in the head's sink logit and normalises. One
// invocation per output element; the first of a row also writes the row's
// log-sum-exp with MHA_VK_F_LSE (core/backend.h: the maximum of the row's
// scores and sink plus ln of the sum in that frame; -inf for a row with
// nothing attendable), which a training forward saves.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "dtype.glsl"
#include "online.glsl"
#include "push.h"

layout(constant_id = 0) const uint WG = 64u;
layout(constant_id = 1) const uint D = 64u; // head size
layout(constant_id = 2) const uint NS = 2u; // key splits

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer BufPart { float part[]; };
OUT_BUFFER(2, o)
layout(std430, binding = 1) writeonly buffer BufLse { float lse[]; };
layout(std430, binding = 6) readonly buffer BufSinks { float sinks[]; };

MHA_PUSH_BLOCK(combine_push, MHA_COMBINE_PUSH)

#define FLAGS p.flags

void main()
{
    uint e = gl_GlobalInvocationID.x +
             gl_WorkGroupID.y * gl_NumWorkGroups.x * WG;
    if (e >= p.total)
        return;
    uint c = e % D, row = e / D; // row = (b * H + h) * L + i
    uint i = row % p.L, h = row / p.L % p.H, b = row / p.L / p.H;
    uint pb = p.part_off + row * NS * (D + 2u);

    float m = NEG_INF;
    for (uint s = 0u; s < NS; ++s)
        m = nmax(m, part[pb + s * (D + 2u) + D]);
    float l = 0.0, acc = 0.0, frame = m;
    if (m != NEG_INF) { // else nothing attendable: the row is 0
        for (uint s = 0u; s < NS; ++s) {
            uint q = pb + s * (D + 2u);
            float w = exp(part[q + D] - m); // a split without keys: 0
            l = fma(w, part[q + D + 1u], l);
            acc = fma(w, part[q + c], acc);
        }
        if ((p.flags & MHA_VK_F_SINKS) != 0u) {
            float sk = sinks[p.sinks_off + h];
            acc *= fold_sink(m, l, sk);
            frame = nmax(m, sk); // fold_sink's frame of l
        }
    }
    if (c == 0u && (p.flags & MHA_VK_F_LSE) != 0u)
        lse[p.lse_off + b * p.lse_sb + h * p.lse_sh + i * p.lse_sr] =
            m == NEG_INF ? NEG_INF : frame + log(l);
    float inv = l == 0.0 ? 0.0 : 1.0 / l; // NaN stays NaN
    STORE(2, o, p.o_off + b * p.o_sb + h * p.o_sh + i * p.o_sr + c,
          acc * inv);
}
