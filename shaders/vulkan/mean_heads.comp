// mean_heads.comp: dst[b,0,i,j] = mean over h of src[b,h,i,j], the averaged
// attention weights (average_attn_weights). One invocation per output element,
// summing in fp32 in head order like the CPU reference.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "push.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) writeonly buffer Dst { float dst[]; };

MHA_PUSH_BLOCK(mean_push, MHA_MEAN_PUSH)

void main()
{
    uint id = gl_GlobalInvocationID.x +
              gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (id >= p.total)
        return;
    uint j = id % p.ne[3];
    uint r = id / p.ne[3];
    uint i = r % p.ne[2];
    uint b = r / p.ne[2];
    uint base = p.src_off + b * p.src_nb[0] + i * p.src_nb[2] + j * p.src_nb[3];
    float sum = 0.0;
    for (uint h = 0u; h < p.ne[1]; ++h)
        sum += src[base + h * p.src_nb[1]];
    dst[p.dst_off + b * p.dst_nb[0] + i * p.dst_nb[2] + j * p.dst_nb[3]] =
        sum / float(p.ne[1]);
}
