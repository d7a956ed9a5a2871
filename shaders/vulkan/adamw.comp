// adamw.comp: ADAMW (core/backend.h), one torch.optim.AdamW step over n
// contiguous parameters in place, one invocation per parameter, in
// torch's order of operations: decoupled weight decay first, then the
// moments, then the bias-corrected step with eps added to
// sqrt(v) / sqrt(bc2).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "push.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Grad { float g[]; };
layout(std430, binding = 1) buffer Param { float w[]; };
layout(std430, binding = 2) buffer Mom1 { float m1[]; };
layout(std430, binding = 3) buffer Mom2 { float m2[]; };

MHA_PUSH_BLOCK(adamw_push, MHA_ADAMW_PUSH)

void main()
{
    uint i = gl_GlobalInvocationID.x +
             gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (i >= p.n)
        return;
    float gi = g[p.g_off + i];
    float m = p.beta1 * m1[p.m_off + i] + (1.0 - p.beta1) * gi;
    float v = p.beta2 * m2[p.v_off + i] + (1.0 - p.beta2) * gi * gi;
    m1[p.m_off + i] = m;
    m2[p.v_off + i] = v;
    float x = w[p.p_off + i] * (1.0 - p.lr * p.weight_decay);
    w[p.p_off + i] = x - (p.lr / p.bc1) * (m / (sqrt(v) / sqrt(p.bc2) + p.eps));
}
