// gemm_strided.comp: MATMUL (core/backend.h), the training graph's
// C[a][b] = A[a][b] B[a][b] (+ C when accumulating) with both operands at
// any strides: a transposed operand (dY^T, W^T) is a view with swapped
// strides, so one kernel serves dX = dY W, dW = dY^T X and the attention's
// own products. matmul.comp (the forward's GEMM) reads A along k only and
// has the forward's epilogues; this one reads each operand along whichever
// of its two strides is 1 (consecutive invocations, consecutive
// addresses) and adds into C instead. The register tiling is matmul.comp's:
// a workgroup computes a TM x TN tile of C from TK-deep slices of A and B
// staged k-major in shared memory (rows padded by one vec4), each
// invocation an RM x RN block held in registers, RM / 4 + RN / 4 vec4
// shared loads per RM * RN FMAs (8 x 8: 0.0625 loads per FMA). Tiles are
// specialisation constants (backends/vulkan/ops.c's mm_pick). fp32 only.
// Batch index z = b * H + h; zero outer strides broadcast an operand.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#include "push.h"

layout(constant_id = 0) const uint WG = 64u; // == (TM/RM) * (TN/RN)
layout(constant_id = 1) const uint TM = 64u;
layout(constant_id = 2) const uint TN = 64u;
layout(constant_id = 3) const uint TK = 32u; // a multiple of 4
layout(constant_id = 4) const uint RM = 8u;  // multiples of 4
layout(constant_id = 5) const uint RN = 8u;

layout(local_size_x_id = 0) in;

layout(std430, binding = 0) readonly buffer BufA { float a[]; };
layout(std430, binding = 1) readonly buffer BufB { float bm[]; };
layout(std430, binding = 2) buffer BufC { float c[]; };

MHA_PUSH_BLOCK(gemm_push, MHA_GEMM_PUSH)

const uint TY = TM / RM, TX = TN / RN; // invocations along M and N
const uint AS4 = TM / 4u + 1u, BS4 = TN / 4u + 1u; // padded rows, vec4s
shared vec4 As[TK * AS4]; // [kk][i / 4]
shared vec4 Bs[TK * BS4]; // [kk][j / 4]

// Element e of a rows x TK slice as (row, kk): consecutive e walk k where
// the operand is contiguous along k, else along the rows.
uvec2 slice_pos(uint e, uint rows, bool k_inner)
{
    return k_inner ? uvec2(e / TK, e % TK) : uvec2(e % rows, e / rows);
}

void load_tiles(uint a0, uint b0, uint row0, uint col0, uint k0)
{
    uint t = gl_LocalInvocationID.x;
    [[dont_unroll]] for (uint e = t; e < TM * TK; e += WG) {
        uvec2 rk = slice_pos(e, TM, p.a_sk == 1u);
        uint i = row0 + rk.x, k = k0 + rk.y;
        As[rk.y * AS4 + rk.x / 4u][rk.x % 4u] =
            i < p.M && k < p.K ? a[a0 + i * p.a_sm + k * p.a_sk] : 0.0;
    }
    [[dont_unroll]] for (uint e = t; e < TN * TK; e += WG) {
        uvec2 rk = slice_pos(e, TN, p.b_sn != 1u);
        uint j = col0 + rk.x, k = k0 + rk.y;
        Bs[rk.y * BS4 + rk.x / 4u][rk.x % 4u] =
            j < p.N && k < p.K ? bm[b0 + k * p.b_sk + j * p.b_sn] : 0.0;
    }
}

void main()
{
    uint t = gl_LocalInvocationID.x;
    uint tx = t % TX, ty = t / TX;
    uint z = gl_WorkGroupID.z;
    uint zb = z / p.H, zh = z % p.H;
    uint row0 = gl_WorkGroupID.y * TM, col0 = gl_WorkGroupID.x * TN;
    uint a0 = p.a_off + zb * p.a_sb + zh * p.a_sh;
    uint b0 = p.b_off + zb * p.b_sb + zh * p.b_sh;
    const uint RM4 = RM / 4u, RN4 = RN / 4u;

    vec4 acc[RM][RN4];
    [[unroll]] for (uint r = 0u; r < RM; ++r)
        [[unroll]] for (uint q = 0u; q < RN4; ++q)
            acc[r][q] = vec4(0.0);

    for (uint k0 = 0u; k0 < p.K; k0 += TK) {
        load_tiles(a0, b0, row0, col0, k0);
        barrier();
        // a loop, not unrolled TK times (lavapipe's compile time)
        [[dont_unroll]] for (uint kk = 0u; kk < TK; ++kk) {
            vec4 av[RM4], bv[RN4];
            [[unroll]] for (uint r = 0u; r < RM4; ++r)
                av[r] = As[kk * AS4 + ty + r * TY];
            [[unroll]] for (uint q = 0u; q < RN4; ++q)
                bv[q] = Bs[kk * BS4 + tx + q * TX];
            [[unroll]] for (uint r = 0u; r < RM; ++r)
                [[unroll]] for (uint q = 0u; q < RN4; ++q)
                    acc[r][q] = fma(vec4(av[r / 4u][r % 4u]), bv[q],
                                    acc[r][q]);
        }
        barrier();
    }

    uint c0 = p.c_off + zb * p.c_sb + zh * p.c_sh;
    bool add = (p.flags & MHA_VK_F_ACCUMULATE) != 0u;
    for (uint r = 0u; r < RM; ++r) {
        uint i = row0 + (ty + r / 4u * TY) * 4u + r % 4u;
        if (i >= p.M)
            continue;
        for (uint q = 0u; q < RN; ++q) {
            uint j = col0 + (tx + q / 4u * TX) * 4u + q % 4u;
            if (j < p.N) {
                uint idx = c0 + i * p.c_sm + j;
                float v = acc[r][q / 4u][q % 4u];
                c[idx] = add ? c[idx] + v : v;
            }
        }
    }
}
