// rope.comp: ROPE (core/backend.h): rotary position embedding of a
// [B,H,T,d] strided tensor, NeoX (rotate_half) or GPT-J (interleaved)
// pairs over the first rope_dims features, the rest copied; rope_dims 0 is
// the KV cache's dtype-converting copy. One invocation per unit of a row:
// units [0, r/2) rotate one pair, the others copy one feature c >= r. dst
// may be src (in place): an invocation reads its pair before writing it.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "dtype.glsl"
#include "push.h"

layout(local_size_x_id = 0) in;

IN_BUFFER(0, src)
OUT_BUFFER(1, dst)
layout(std430, binding = 2) readonly buffer Pos { int pos[]; };

MHA_PUSH_BLOCK(rope_push, MHA_ROPE_PUSH)

#define FLAGS p.flags

uint src_at(uint b, uint h, uint t, uint c)
{
    return p.src_off + b * p.src_nb[0] + h * p.src_nb[1] + t * p.src_nb[2] +
           c * p.src_nb[3];
}

uint dst_at(uint b, uint h, uint t, uint c)
{
    return p.dst_off + b * p.dst_nb[0] + h * p.dst_nb[1] + t * p.dst_nb[2] +
           c * p.dst_nb[3];
}

void main()
{
    uint id = gl_GlobalInvocationID.x +
              gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (id >= p.total)
        return;
    uint half_r = p.rope_dims / 2u;
    uint units = half_r + p.ne[3] - p.rope_dims;
    uint u = id % units;
    uint r = id / units;
    uint t = r % p.ne[2];
    r /= p.ne[2];
    uint h = r % p.ne[1];
    uint b = r / p.ne[1];
    if (u >= half_r) {
        uint c = p.rope_dims + (u - half_r);
        STORE(1, dst, dst_at(b, h, t, c), LOAD(0, src, src_at(b, h, t, c)));
        return;
    }
    bool gptj = (p.flags & MHA_VK_F_GPTJ) != 0u;
    uint c0 = gptj ? 2u * u : u, c1 = gptj ? 2u * u + 1u : u + half_r;
    float position = float(pos[p.pos_off + b * p.pos_sb + t * p.pos_st]) *
                     p.pos_scale;
    float a = position * exp2(-float(2u * u) / float(p.rope_dims) *
                              p.log2_theta);
    float cs = cos(a), sn = sin(a);
    float x = LOAD(0, src, src_at(b, h, t, c0));
    float y = LOAD(0, src, src_at(b, h, t, c1));
    STORE(1, dst, dst_at(b, h, t, c0), x * cs - y * sn);
    STORE(1, dst, dst_at(b, h, t, c1), y * cs + x * sn);
}
