/* push.h: the push-constant blocks of the Vulkan kernels and their flag
 * bits, declared once for both sides: each kernel includes it (glslc's
 * GL_GOOGLE_include_directive) and declares its own block with
 * MHA_PUSH_BLOCK, and backends/vulkan/ops.c includes it from C and gets the
 * same fields as structs. Every member is a 32-bit scalar or an array of
 * them, so std430's layout and C's are the same, member for member.
 *
 * Offsets (_off) are in elements of the operand's binding; strides are in
 * elements, _sb, _sh and _sr the batch, head and row strides of an operand
 * whose innermost stride is 1. mask_* is attn_mask, kpm_* the key padding
 * mask; q_, k_, v_, o_ are query, key, value and output. */
#ifndef MHA_VK_PUSH_H
#define MHA_VK_PUSH_H

#ifdef __STDC__ /* C; glslc defines no __STDC__ */
#include <stdint.h>
#define MHA_PUSH_U_(name) uint32_t name;
#define MHA_PUSH_F_(name) float name;
#define MHA_PUSH_BLOCK(type, fields)                                         \
    typedef struct type {                                                    \
        fields(MHA_PUSH_U_, MHA_PUSH_F_)                                     \
    } type;
#else
#define MHA_PUSH_U_(name) uint name;
#define MHA_PUSH_F_(name) float name;
#define MHA_PUSH_BLOCK(type, fields)                                         \
    layout(push_constant) uniform type {                                     \
        fields(MHA_PUSH_U_, MHA_PUSH_F_)                                     \
    } p;
#endif

/* flags of matmul and attention */
#define MHA_VK_F_BIAS 1u
#define MHA_VK_F_MASK 2u
#define MHA_VK_F_KPM 4u
#define MHA_VK_F_CAUSAL 8u
/* more flags of attention: the attention core's extensions */
#define MHA_VK_F_BOTTOM_RIGHT 16u /* causal aligned to the last key */
#define MHA_VK_F_SINKS 32u
#define MHA_VK_F_ALIBI 64u
#define MHA_VK_F_KV_LEN 128u
#define MHA_VK_F_VEC4 256u /* K and V readable as vec4s (attention.comp) */
/* attention.comp's test hook: count visits at binding 8 */
#define MHA_VK_F_VISITS 2048u
/* attention.comp: write the partials even with one key split (NS == 1),
 * for attention_combine.comp to write the row LSE (MHA_VK_F_LSE) */
#define MHA_VK_F_PARTIALS 4096u
#define MHA_VK_F_LSE 8192u
/* more flags of matmul: A (B) readable as vec4s (matmul.comp) */
#define MHA_VK_F_VEC4_A 512u
#define MHA_VK_F_VEC4_B 1024u
/* flags of copy: a source is given (else the kernel writes zeros) */
#define MHA_VK_F_SRC 1u
/* flags of rope: GPT-J (interleaved) pairs, else NeoX */
#define MHA_VK_F_GPTJ 1u
/* flags of every kernel with fp16 builds: the operand at binding b is
 * stored as fp16 (dtype.glsl) */
#define DT_F16(binding) (1u << (16u + (binding)))

/* copy.comp: dst = src over ne (dst's extents); FILL_ROWS. */
#define MHA_COPY_PUSH(U, F)                                                  \
    U(src_off) U(dst_off) U(ne[4]) U(src_nb[4]) U(dst_nb[4])                 \
    U(flags) /* MHA_VK_F_SRC, DT_F16 bits */                                 \
    U(total) /* elements of dst */

/* mul.comp: dst = src * f over ne (dst's extents); MUL (head gates). */
#define MHA_MUL_PUSH(U, F)                                                   \
    U(src_off) U(dst_off) U(f_off) U(ne[4]) U(src_nb[4]) U(dst_nb[4])        \
    U(f_nb[4])                                                               \
    U(flags) /* DT_F16 bits */                                               \
    U(total) /* elements of dst */

/* mean_heads.comp: ne is the source's B, H, L, S'; dst_nb[1] unused. */
#define MHA_MEAN_PUSH(U, F)                                                  \
    U(src_off) U(dst_off) U(ne[4]) U(src_nb[4]) U(dst_nb[4])                 \
    U(total) /* B * L * S' */

/* softmax.comp: rows of [B,H,L,S'] (ne); innermost strides are 1. */
#define MHA_SOFTMAX_PUSH(U, F)                                               \
    U(src_off) U(dst_off) U(ne[4]) U(src_nb[3]) U(dst_nb[3])                 \
    U(rows) /* B * H * L */

/* matmul.comp: C[z][i][j] = scale * sum_k A[z][i][k] B[z][j][k] (+ bias[j])
 * (+ masks), z = b * H + h; B is read at j * b_sj + k * b_sk. */
#define MHA_MATMUL_PUSH(U, F)                                                \
    U(a_off) U(b_off) U(c_off) U(bias_off) U(mask_off) U(kpm_off)            \
    U(M) U(N) U(K) U(H)                                                      \
    U(a_sb) U(a_sh) U(a_sr)                                                  \
    U(b_sb) U(b_sh) U(b_sj) U(b_sk)                                          \
    U(c_sb) U(c_sh) U(c_sr)                                                  \
    U(mask_sb) U(mask_sh) U(mask_sr)                                         \
    U(kpm_sb) U(kpm_sh) U(kpm_sr)                                            \
    F(scale)                                                                 \
    U(flags) /* MHA_VK_F_* and DT_F16 bits */                                \
    U(mask_cols) /* masks and causal apply to columns j < mask_cols */

/* attention.comp: O = softmax(scale Q K^T + masks) V per (b, h); S is S'
 * (every key row). sinks_off, alibi_off and len_off are the SINKS, ALIBI
 * and KV_LEN sources, read only under their flags and contiguous. The
 * block is exactly the 128 bytes every device has: the layer's kv_group,
 * window and softcap are specialisation constants instead (attention.comp),
 * and a sequence's length is data in the KV_LEN buffer. */
#define MHA_ATTENTION_PUSH(U, F)                                             \
    U(q_off) U(k_off) U(o_off) U(v_off) U(mask_off) U(kpm_off)               \
    U(sinks_off) U(alibi_off) U(len_off)                                     \
    U(L) U(S)                                                                \
    U(q_sb) U(q_sh) U(q_sr)                                                  \
    U(k_sb) U(k_sh) U(k_sr)                                                  \
    U(v_sb) U(v_sh) U(v_sr)                                                  \
    U(o_sb) U(o_sh) U(o_sr)                                                  \
    U(mask_sb) U(mask_sh) U(mask_sr)                                         \
    U(kpm_sb) U(kpm_sh) U(kpm_sr)                                            \
    F(scale)                                                                 \
    U(flags) /* MHA_VK_F_* and DT_F16 bits */                                \
    U(mask_cols)

/* attention_combine.comp: the partials [B,H,L,NS,D+2] (contiguous) of a
 * split-K attention into O [B,H,L,D]; total is B * H * L * D. With
 * MHA_VK_F_LSE also the row LSE [B,H,1,L] at lse_off (fp32; strides of
 * b, h and the query). */
#define MHA_COMBINE_PUSH(U, F)                                               \
    U(part_off) U(o_off) U(sinks_off)                                        \
    U(o_sb) U(o_sh) U(o_sr)                                                  \
    U(H) U(L) U(total)                                                       \
    U(flags) /* MHA_VK_F_SINKS, MHA_VK_F_LSE and DT_F16 bits */              \
    U(lse_off) U(lse_sb) U(lse_sh) U(lse_sr)

/* rope.comp: ROPE over ne (src's B, H, T, d); positions at
 * pos_off + b * pos_sb + t * pos_st (pos_sb 0 broadcasts one row). */
#define MHA_ROPE_PUSH(U, F)                                                  \
    U(src_off) U(dst_off) U(pos_off) U(ne[4]) U(src_nb[4]) U(dst_nb[4])      \
    U(pos_sb) U(pos_st)                                                      \
    U(flags) /* MHA_VK_F_GPTJ and DT_F16 bits */                             \
    U(rope_dims)                                                             \
    F(log2_theta) F(pos_scale)                                               \
    U(total) /* B * H * T * (rope_dims / 2 + d - rope_dims) */

/* head_stats.comp: HEAD_STATS of P [B,H,L,S'] (ne; unit innermost
 * strides) into dst [B,H,1,5+H]. */
#define MHA_HEAD_STATS_PUSH(U, F)                                            \
    U(src_off) U(dst_off) U(ne[4]) U(src_nb[3]) U(dst_nb[3])

/* ---- the training ops (issue 18) ---- */
/* flags of gemm_strided and sum_rows: add into dst (params.accumulate) */
#define MHA_VK_F_ACCUMULATE 1u

/* gemm_strided.comp: C[z][i][j] = sum_k A[z][i][k] B[z][k][j] (+ C), A at
 * i * a_sm + k * a_sk, B at k * b_sk + j * b_sn, C's rows c_sm apart
 * (unit inner stride); z = b * H + h. */
#define MHA_GEMM_PUSH(U, F)                                                  \
    U(a_off) U(b_off) U(c_off) U(M) U(N) U(K) U(H)                           \
    U(a_sb) U(a_sh) U(a_sm) U(a_sk)                                          \
    U(b_sb) U(b_sh) U(b_sk) U(b_sn)                                          \
    U(c_sb) U(c_sh) U(c_sm)                                                  \
    U(flags) /* MHA_VK_F_ACCUMULATE */

/* sum_rows.comp: SUM_ROWS of src (extents ne) into dst [ne0,ne1,1,ne3]. */
#define MHA_SUM_ROWS_PUSH(U, F)                                              \
    U(src_off) U(dst_off) U(ne[4]) U(src_nb[4]) U(dst_nb[4])                 \
    U(flags) /* MHA_VK_F_ACCUMULATE */                                       \
    U(total) /* ne0 * ne1 * ne3 */

/* adamw.comp: ADAMW over n contiguous parameters. */
#define MHA_ADAMW_PUSH(U, F)                                                 \
    U(p_off) U(g_off) U(m_off) U(v_off) U(n)                                 \
    F(lr) F(beta1) F(beta2) F(eps) F(weight_decay) F(bc1) F(bc2)

/* attention_backward_pre.comp: rows = B * H * L; LSE's i stride lse_si. */
#define MHA_ATT_BWD_PRE_PUSH(U, F)                                           \
    U(ld_off) U(o_off) U(do_off) U(lse_off)                                  \
    U(o_sb) U(o_sh) U(o_sr) U(do_sb) U(do_sh) U(do_sr)                       \
    U(lse_sb) U(lse_sh) U(lse_si)                                            \
    U(H) U(L) U(D) U(rows) U(al_off) U(al_si) U(alibi)

/* attention_backward.comp: one batch item (its offsets here), heads and
 * rows strided; ld_off: the item's (LSE, D) pairs [H,L,2]; out is dK (MODE
 * 0) or dQ (MODE 1), out2 dV (MODE 0); only the streamed rows in
 * [s_lo, s_hi) are visited. flags: MHA_VK_F_MASK, _KPM, _CAUSAL, and
 * MHA_VK_F_ACCUMULATE: add into the outputs (a later chunk of rows). */
#define MHA_ATT_BWD_PUSH(U, F)                                               \
    U(q_off) U(k_off) U(v_off) U(do_off) U(ld_off) U(mask_off) U(kpm_off)    \
    U(out_off) U(out2_off)                                                   \
    U(q_sh) U(q_sr) U(k_sh) U(k_sr) U(v_sh) U(v_sr) U(do_sh) U(do_sr)        \
    U(out_sh) U(out_sr) U(out2_sh) U(out2_sr)                                \
    U(mask_sh) U(mask_sr) U(kpm_sh) U(kpm_sr)                                \
    U(L) U(S) F(scale) U(flags) U(mask_cols) U(s_lo) U(s_hi)

#endif /* MHA_VK_PUSH_H */
