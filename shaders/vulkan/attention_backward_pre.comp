// attention_backward_pre.comp: the first pass of ATTENTION_BACKWARD
// (core/backend.h): per query row (b, h, i), D_i = dO_i . O_i, written with
// the row's saved LSE_i and its head's ALiBi slope (0 without) as the
// triple (LSE_i, D_i, slope_h) of a contiguous [B,H,L,3] scratch buffer
// (the slope rides along: the backward's push block and bindings are
// full). attention_backward.comp then reads one small
// binding for both instead of three (O, dO's second use and LSE: the
// backward's own kernel binds all nine bindings a dispatch has), and D is
// computed once per row, not once per key block. One invocation per row.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "push.h"

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer BufO { float o[]; };
layout(std430, binding = 1) readonly buffer BufDO { float dout[]; };
layout(std430, binding = 2) readonly buffer BufLse { float lse[]; };
layout(std430, binding = 3) writeonly buffer BufLD { float ld[]; };
layout(std430, binding = 4) readonly buffer BufAlibi { float alibi[]; };

MHA_PUSH_BLOCK(att_bwd_pre_push, MHA_ATT_BWD_PRE_PUSH)

void main()
{
    uint row = gl_GlobalInvocationID.x +
               gl_GlobalInvocationID.y * gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    if (row >= p.rows)
        return;
    uint i = row % p.L, z = row / p.L;
    uint h = z % p.H, b = z / p.H;
    uint ob = p.o_off + b * p.o_sb + h * p.o_sh + i * p.o_sr;
    uint db = p.do_off + b * p.do_sb + h * p.do_sh + i * p.do_sr;
    float dd = 0.0;
    [[dont_unroll]] for (uint c = 0u; c < p.D; ++c)
        dd = fma(dout[db + c], o[ob + c], dd);
    ld[p.ld_off + 3u * row] =
        lse[p.lse_off + b * p.lse_sb + h * p.lse_sh + i * p.lse_si];
    ld[p.ld_off + 3u * row + 1u] = dd;
    ld[p.ld_off + 3u * row + 2u] =
        p.alibi != 0u ? alibi[p.al_off + h * p.al_si] : 0.0;
}
