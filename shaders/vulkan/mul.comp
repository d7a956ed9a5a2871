// mul.comp: MUL (core/backend.h), dst = src * f over 4-D strided tensors:
// the head gates, f broadcast by zero strides. One invocation per element;
// strides and offsets in elements of the bound ranges, as copy.comp.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "dtype.glsl"
#include "push.h"

layout(local_size_x_id = 0) in;

IN_BUFFER(0, src)
OUT_BUFFER(1, dst)
layout(std430, binding = 2) readonly buffer Factor { float f[]; };

MHA_PUSH_BLOCK(mul_push, MHA_MUL_PUSH)

#define FLAGS p.flags

void main()
{
    uint id = gl_GlobalInvocationID.x +
              gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (id >= p.total)
        return;
    uint i3 = id % p.ne[3];
    uint r = id / p.ne[3];
    uint i2 = r % p.ne[2];
    r /= p.ne[2];
    uint i1 = r % p.ne[1];
    uint i0 = r / p.ne[1];
    float v = LOAD(0, src, p.src_off + i0 * p.src_nb[0] + i1 * p.src_nb[1] +
                               i2 * p.src_nb[2] + i3 * p.src_nb[3]);
    v *= f[p.f_off + i0 * p.f_nb[0] + i1 * p.f_nb[1] + i2 * p.f_nb[2] +
           i3 * p.f_nb[3]];
    STORE(1, dst, p.dst_off + i0 * p.dst_nb[0] + i1 * p.dst_nb[1] +
                      i2 * p.dst_nb[2] + i3 * p.dst_nb[3], v);
}
