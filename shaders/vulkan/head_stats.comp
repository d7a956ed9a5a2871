// head_stats.comp: HEAD_STATS (core/backend.h): for batch b, head h and
// column c of dst, the sum over query rows i of one statistic of the
// attention probabilities P [B,H,L,S']: entropy, maximum, distance,
// first-key weight, previous-token weight (c < 5) or the Jensen-Shannon
// divergence against head c - 5. One workgroup per (c, h, b); its
// invocations take rows in turn and a tree in shared memory sums them (the
// workgroup size is a power of two), so every run gives the same bits.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "push.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) writeonly buffer Dst { float dst[]; };

MHA_PUSH_BLOCK(head_stats_push, MHA_HEAD_STATS_PUSH)

shared float red[gl_WorkGroupSize.x];

float at(uint b, uint h, uint i, uint j)
{
    return src[p.src_off + b * p.src_nb[0] + h * p.src_nb[1] +
               i * p.src_nb[2] + j];
}

// x ln(x / m), with 0 ln 0 = 0
float xlog(float x, float m) { return x > 0.0 ? x * log(x / m) : 0.0; }

// Statistic c of row i of head h (c >= 5: JS against head c - 5).
float row_stat(uint b, uint h, uint i, uint c)
{
    uint S = p.ne[3];
    if (c == 3u)
        return at(b, h, i, 0u);
    if (c == 4u)
        return i >= 1u && i - 1u < S ? at(b, h, i, i - 1u) : 0.0;
    float s = 0.0;
    for (uint j = 0u; j < S; ++j) {
        float w = at(b, h, i, j);
        if (c == 0u)
            s -= xlog(w, 1.0);
        else if (c == 1u)
            s = max(s, w);
        else if (c == 2u)
            s += w * float(i > j ? i - j : j - i);
        else {
            float q = at(b, c - 5u, i, j), m = 0.5 * (w + q);
            s += 0.5 * (xlog(w, m) + xlog(q, m));
        }
    }
    return s;
}

void main()
{
    uint c = gl_WorkGroupID.x, h = gl_WorkGroupID.y, b = gl_WorkGroupID.z;
    uint t = gl_LocalInvocationID.x;
    float acc = 0.0;
    for (uint i = t; i < p.ne[2]; i += gl_WorkGroupSize.x)
        acc += row_stat(b, h, i, c);
    red[t] = acc;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1u) {
        if (t < s)
            red[t] += red[t + s];
        barrier();
    }
    if (t == 0u)
        dst[p.dst_off + b * p.dst_nb[0] + h * p.dst_nb[1] + c] = red[0];
}
