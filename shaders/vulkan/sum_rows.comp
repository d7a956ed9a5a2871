// sum_rows.comp: SUM_ROWS (core/backend.h), dst[a][b][0][n] = sum over m of
// src[a][b][m][n] (+ dst when accumulating): the bias gradients. One
// invocation per output column walks its column's rows in order (a fixed
// order: deterministic), so consecutive invocations read consecutive
// addresses of each row where src's columns are contiguous.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "push.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer Src { float src[]; };
layout(std430, binding = 1) buffer Dst { float dst[]; };

MHA_PUSH_BLOCK(sum_rows_push, MHA_SUM_ROWS_PUSH)

void main()
{
    uint id = gl_GlobalInvocationID.x +
              gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (id >= p.total)
        return;
    uint n = id % p.ne[3];
    uint r = id / p.ne[3];
    uint i1 = r % p.ne[1], i0 = r / p.ne[1];
    uint s = p.src_off + i0 * p.src_nb[0] + i1 * p.src_nb[1] + n * p.src_nb[3];
    float acc = 0.0;
    [[dont_unroll]] for (uint m = 0u; m < p.ne[2]; ++m)
        acc += src[s + m * p.src_nb[2]];
    uint o = p.dst_off + i0 * p.dst_nb[0] + i1 * p.dst_nb[1] + n * p.dst_nb[3];
    dst[o] = (p.flags & MHA_VK_F_ACCUMULATE) != 0u ? dst[o] + acc : acc;
}
