// softmax.comp: softmax of each row of [B,H,L,S'], in place or not. One
// workgroup per row; the maximum is subtracted and sums are fp32. A row whose
// entries are all -inf becomes all 0 (libmha's documented choice); a NaN
// anywhere makes the whole row NaN (the maximum propagates it).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "push.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) buffer Dst { float dst[]; };

MHA_PUSH_BLOCK(softmax_push, MHA_SOFTMAX_PUSH)

shared float red[gl_WorkGroupSize.x];

#define NEG_INF uintBitsToFloat(0xff800000u)

// max that propagates NaN
float nmax(float a, float b)
{
    return isnan(a) ? a : isnan(b) ? b : (a > b ? a : b);
}

float reduce_max(float v)
{
    uint t = gl_LocalInvocationID.x;
    red[t] = v;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1u) {
        if (t < s)
            red[t] = nmax(red[t], red[t + s]);
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

float reduce_sum(float v)
{
    uint t = gl_LocalInvocationID.x;
    red[t] = v;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s >>= 1u) {
        if (t < s)
            red[t] += red[t + s];
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main()
{
    uint row = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    if (row >= p.rows)
        return; // uniform over the workgroup
    uint i = row % p.ne[2];
    uint bh = row / p.ne[2];
    uint h = bh % p.ne[1];
    uint b = bh / p.ne[1];
    uint s0 = p.src_off + b * p.src_nb[0] + h * p.src_nb[1] + i * p.src_nb[2];
    uint d0 = p.dst_off + b * p.dst_nb[0] + h * p.dst_nb[1] + i * p.dst_nb[2];
    uint n = p.ne[3];
    uint t = gl_LocalInvocationID.x;

    float m = NEG_INF;
    for (uint j = t; j < n; j += gl_WorkGroupSize.x)
        m = nmax(m, src[s0 + j]);
    m = reduce_max(m);
    if (m == NEG_INF || isnan(m)) {
        float fill = isnan(m) ? m : 0.0;
        for (uint j = t; j < n; j += gl_WorkGroupSize.x)
            dst[d0 + j] = fill;
        return;
    }
    float sum = 0.0;
    for (uint j = t; j < n; j += gl_WorkGroupSize.x)
        sum += exp(src[s0 + j] - m);
    sum = reduce_sum(sum);
    float inv = 1.0 / sum;
    for (uint j = t; j < n; j += gl_WorkGroupSize.x)
        dst[d0 + j] = exp(src[s0 + j] - m) * inv;
}
