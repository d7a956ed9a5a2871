/* decoder_train.c: training of the decoder layer. A training forward
 * (decoder.c's walk, pointed at the state kept here) leaves the rotated q,
 * the k and v projections, the attention output o, the positions and the
 * row LSE in one device buffer; mha_decoder_backward then runs autograd's
 * chain rule over existing ops: o_proj's gradients (MATMUL, SUM_ROWS),
 * k rotated again (ROPE), k and v repeated per query head (ROPE's copy
 * form through a zero stride: ATTENTION_BACKWARD has no GQA), the fused
 * attention backward over Hq heads, dK and dV summed over each kv group
 * (SUM_ROWS), RoPE undone on dQ and dK (ROPE at negated angles: the
 * inverse rotation is the transpose), the sinks' gradient (sink_nodes),
 * then the q/k/v projections' gradients. Head gates (the forward kept
 * O ungated): o_proj read g O, recomputed (MUL) for dWo; dL/dg sums dG O
 * over each head's features and tokens; dO = g dG (as backward_graph.c
 * does for nn.MHA). Sinks need nothing else: the
 * saved LSE counts them, so p_ij = exp(s_ij - LSE_i) as the op computes.
 * Window, softcap and ALiBi are the attention backward's own options (the
 * slopes are constants: no gradient). Over an f16 cache the forward's
 * attention read k and v rounded to f16: the backward rounds them the same
 * way (the rotation into f16, as the append does) before widening them for
 * the attention backward, so the probabilities it recomputes match the
 * saved LSE and sum_j dS_ij stays 0 (unrounded, either would be off by
 * their rounding, which large keys amplify: 0.3% of dWq's scale at
 * scores near 20).
 * Every tensor is [B*T, features] rows or a head view of them, so memory
 * stays O(T). */
#include <stddef.h>
#include <string.h>

#include "decoder.h"
#include "kv_cache.h"
#include "plan.h"
#include "tensor.h"
#include "train.h"

#define ALIGN 256

/* The saved state: regions Q, K, V, O, POS of mha_decoder_layout for
 * B*T tokens, then the LSE; the backward's scratch beside it. */
typedef struct mha_dsaved {
    void *buf;
    size_t bytes;
    size_t off[6];
    size_t lse_off;
    int64_t B, T;
    const mha_tensor *x;
    const mha_tensor *gates; /* head_gates, or NULL */
    mha_dtype kv_dtype; /* the cache's: the k and v the attention read */
    uint64_t generation;
    int valid;
    void *scratch;
    size_t scratch_bytes;
} mha_dsaved;

enum { S_Q, S_K, S_V, S_O, S_POS };

static size_t align_up(size_t v)
{
    return (v + ALIGN - 1) & ~(size_t)(ALIGN - 1);
}

/* ---- the training forward ------------------------------------------------ */

static mha_status refuse(mha_decoder *l, const char *fn, const char *why)
{
    return mha_error(l->device->ctx, MHA_UNSUPPORTED,
                     "%s: save_for_backward: %s", fn, why);
}

static mha_status check_train(mha_decoder *l, const mha_dtrain_call *c)
{
    static const char fn[] = "mha_decoder_forward";
    const mha_kv_cache *k = c->cache;
    const mha_tensor *x = c->x;
    if (c->record)
        return refuse(l, "mha_vulkan_decoder_record",
                      "a training forward is not recorded; use "
                      "mha_decoder_forward");
    if (k->cfg.window)
        return refuse(l, fn,
                      "training needs a full cache (f32 or f16, not a "
                      "ring)");
    if (x->strides[2] != 1 || x->strides[1] != x->shape[2] ||
        x->strides[0] != x->shape[1] * x->shape[2])
        return refuse(l, fn, "x must be contiguous");
    for (int64_t b = 0; b < c->B; b++)
        if (mha_kv_length(k, b) != 0)
            return mha_error(l->device->ctx, MHA_UNSUPPORTED,
                             "%s: save_for_backward: sequence %lld of the "
                             "cache holds %lld tokens; a training forward "
                             "is a prefill of empty sequences (clear or "
                             "truncate them to 0 first)",
                             fn, (long long)b, (long long)mha_kv_length(k, b));
    return MHA_OK;
}

mha_status mha_decoder_train_prepare(mha_decoder *l, const mha_dtrain_call *c,
                                     void **arena, size_t off[6],
                                     mha_tdesc *lse)
{
    mha_context *ctx = l->device->ctx;
    if (!l->saved &&
        !(l->saved = mha_host_calloc(&ctx->host, 1, sizeof *l->saved)))
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "mha_decoder_forward: out of memory");
    mha_dsaved *s = l->saved;
    s->valid = 0;
    mha_status st = check_train(l, c);
    if (st != MHA_OK)
        return st;
    int64_t H = l->cfg.num_heads;
    mha_decoder_layout(l, c->B * c->T, s->off);
    size_t need = s->off[5] + align_up((size_t)(c->B * H * c->T) * 4);
    if (s->bytes < need) {
        mha_dev_free(l->device, s->buf, s->bytes);
        s->buf = NULL;
        s->bytes = 0;
        if ((st = mha_dev_alloc(l->device, need, &s->buf)) != MHA_OK)
            return st;
        s->bytes = need;
    }
    s->lse_off = s->off[5];
    memcpy(off, s->off, sizeof s->off);
    *arena = s->buf;
    *lse = (mha_tdesc){.dtype = MHA_F32,
                       .ne = {c->B, H, 1, c->T},
                       .nb = {H * c->T, c->T, c->T, 1},
                       .buf = s->buf,
                       .offset = s->lse_off};
    return MHA_OK;
}

void mha_decoder_train_commit(mha_decoder *l, const mha_dtrain_call *c, int ok)
{
    mha_dsaved *s = l->saved;
    s->valid = ok;
    s->generation = l->generation;
    s->x = c->x;
    s->gates = c->gates;
    s->kv_dtype = c->cache->cfg.dtype;
    s->B = c->B;
    s->T = c->T;
}

void mha_decoder_train_free(mha_decoder *l)
{
    mha_dsaved *s = l->saved;
    if (!s)
        return;
    mha_dev_free(l->device, s->buf, s->bytes);
    mha_dev_free(l->device, s->scratch, s->scratch_bytes);
    mha_host_free(&l->device->ctx->host, s);
    l->saved = NULL;
}

/* ---- the backward: tensors ----------------------------------------------- */

/* Scratch regions: dO, Kx, Vx, dQ, dKx, dVx ([N, q] each), Kr, dK, dV
 * ([N, kv] each); with sinks also O1, dO*O ([N, q]), ones ([N, kv]), D
 * and a product ([N, Hq]) and the constants (kv ones, then -1); over an
 * f16 cache Vh ([N, kv], v rounded; Kr holds k rotated and rounded); with
 * head gates the gated O and dG = dL/d(gated O) ([N, q] each; DP and D
 * hold the gates' products too). */
enum {
    R_DO, R_KX, R_VX, R_DQ, R_DKX, R_DVX, R_O1, R_DP, R_GO, R_DG,
    R_KR, R_DK, R_DV, R_ONES, R_VH,
    R_D, R_T2,
    R_CONST, R_END
};

enum { BWD_MAX_NODES = 48 };

/* The backward's shapes and buffers. */
typedef struct bctx {
    mha_decoder *l;
    const mha_dsaved *s;
    int64_t N, B, T, E, Hq, Hkv, g, d, q, kv;
    void *dy, *dx, *gbuf;       /* dY, dL/dx (or NULL), the gradients */
    const mha_tensor *dgates;   /* dL/dg of the head gates, or NULL */
    const mha_gradients *grads; /* or NULL */
    int acc;
    size_t sc[R_END]; /* scratch regions, bytes */
    /* The most nodes a backward builds is 32 (an f16 cache with RoPE, GQA,
     * sinks, biases, head gates and grad_x), so 48 leaves room; add()
     * past it writes the spare last slot and the backward refuses. */
    mha_node nodes[BWD_MAX_NODES + 1];
    int count, overflow;
} bctx;

/* [1,1,N,F] rows at byte offset off of buf. */
static mha_tdesc rows(const bctx *b, void *buf, size_t off, int64_t F)
{
    mha_tdesc t = {.dtype = MHA_F32,
                   .ne = {1, 1, b->N, F},
                   .nb = {b->N * F, b->N * F, F, 1},
                   .buf = buf,
                   .offset = off};
    return t;
}

/* The transpose of t's two inner dimensions (a view). */
static mha_tdesc transposed(mha_tdesc t)
{
    int64_t n = t.ne[2], s = t.nb[2];
    t.ne[2] = t.ne[3];
    t.nb[2] = t.nb[3];
    t.ne[3] = n;
    t.nb[3] = s;
    return t;
}

/* The [B,H,T,d] heads of [N, H*d] rows. */
static mha_tdesc heads(const bctx *b, void *buf, size_t off, int64_t H)
{
    mha_tdesc t = {.dtype = MHA_F32,
                   .ne = {b->B, H, b->T, b->d},
                   .nb = {b->T * H * b->d, b->d, H * b->d, 1},
                   .buf = buf,
                   .offset = off};
    return t;
}

/* [N, Hkv, g, d] of [N, kv] rows, each kv head seen g times (zero
 * stride) ... */
static mha_tdesc kv_repeated(const bctx *b, void *buf, size_t off)
{
    mha_tdesc t = {.dtype = MHA_F32,
                   .ne = {b->N, b->Hkv, b->g, b->d},
                   .nb = {b->kv, b->d, 0, 1},
                   .buf = buf,
                   .offset = off};
    return t;
}

/* ... and [N, q] rows seen as [N, Hkv, g, d] (query head h = kv head *
 * g + r), the layout the repeat writes and the group sum reads. */
static mha_tdesc q_grouped(const bctx *b, void *buf, size_t off)
{
    mha_tdesc t = {.dtype = MHA_F32,
                   .ne = {b->N, b->Hkv, b->g, b->d},
                   .nb = {b->q, b->g * b->d, b->d, 1},
                   .buf = buf,
                   .offset = off};
    return t;
}

/* A [1,1,rows,cols] weight of slot. */
static mha_tdesc weight(const bctx *b, mha_dslot s, int64_t r, int64_t c)
{
    mha_tdesc t = {.dtype = MHA_F32,
                   .ne = {1, 1, r, c},
                   .nb = {r * c, r * c, c, 1},
                   .buf = b->l->wbuf[s]};
    return t;
}

/* The gradient of slot as [1,1,r,c] (r 1 for a bias). */
static mha_tdesc grad_of(const bctx *b, mha_dslot s, int64_t r, int64_t c)
{
    const mha_gradients *g = b->grads;
    for (int i = 0; i < g->count; i++)
        if (g->dslot[i] == (int)s) {
            mha_tdesc t = {.dtype = MHA_F32,
                           .ne = {1, 1, r, c},
                           .nb = {r * c, r * c, c, 1},
                           .buf = b->gbuf,
                           .offset = g->off[i] * 4};
            return t;
        }
    return (mha_tdesc){.dtype = MHA_F32}; /* not reached: every slot has one */
}

/* ---- the backward: nodes ------------------------------------------------- */

static mha_node *add(bctx *b, mha_op op)
{
    mha_node *n = &b->nodes[BWD_MAX_NODES];
    if (b->count < BWD_MAX_NODES)
        n = &b->nodes[b->count++];
    else
        b->overflow = 1;
    memset(n, 0, sizeof *n);
    n->op = op;
    return n;
}

static void matmul(bctx *b, mha_tdesc dst, mha_tdesc a, mha_tdesc m, int acc)
{
    mha_node *n = add(b, MHA_OP_MATMUL);
    n->dst = dst;
    n->src[MHA_SRC_MM_A] = a;
    n->src[MHA_SRC_MM_B] = m;
    n->params.accumulate = acc;
}

static void sum_rows(bctx *b, mha_tdesc dst, mha_tdesc src, int acc)
{
    mha_node *n = add(b, MHA_OP_SUM_ROWS);
    n->dst = dst;
    n->src[0] = src;
    n->params.accumulate = acc;
}

/* ROPE of x into dst at the saved positions; sign -1 rotates back. A
 * rope_dims of 0 copies. */
static void rope(bctx *b, mha_tdesc dst, mha_tdesc x, int dims, float sign)
{
    const mha_decoder_config *c = &b->l->cfg;
    mha_node *n = add(b, MHA_OP_ROPE);
    n->dst = dst;
    n->src[MHA_SRC_ROPE_X] = x;
    if (!dims)
        return;
    n->src[MHA_SRC_ROPE_POS] = (mha_tdesc){.dtype = MHA_I32,
                                           .ne = {1, 1, b->B, b->T},
                                           .nb = {b->N, b->N, b->T, 1},
                                           .buf = b->s->buf,
                                           .offset = b->s->off[S_POS]};
    n->params.rope_style = (int32_t)c->rope_style;
    n->params.rope_dims = dims;
    n->params.rope_theta = c->rope_theta;
    n->params.rope_pos_scale = sign / c->rope_scaling;
}

/* MUL of a [N, q] rows region by the head gates (their [B,Hq,T,d] view)
 * into dst: O's gated form, or dO = dG times the gates. */
static void gate_mul(bctx *b, int dst, mha_tdesc x)
{
    mha_node *n = add(b, MHA_OP_MUL);
    n->dst = heads(b, b->s->scratch, b->sc[dst], b->Hq);
    n->src[MHA_SRC_MUL_X] = heads(b, x.buf, x.offset, b->Hq);
    n->src[MHA_SRC_MUL_F] =
        mha_decoder_gates_view(b->s->gates, b->B, b->Hq, b->T, b->d);
}

/* x * O (x [N, q] rows) into DP, each head's d products summed into D:
 * returns D, [1,1,N,Hq] (x = dO: the D_i of the softmax's backward). */
static mha_tdesc head_dots(bctx *b, mha_tdesc x)
{
    const mha_dsaved *s = b->s;
    void *sc = s->scratch;
    int64_t N = b->N, H = b->Hq;
    mha_node *n = add(b, MHA_OP_MUL);
    n->dst = rows(b, sc, b->sc[R_DP], b->q);
    n->src[MHA_SRC_MUL_X] = x;
    n->src[MHA_SRC_MUL_F] = rows(b, s->buf, s->off[S_O], b->q);
    /* [1, N*H, d, 1] -> [1, N*H, 1, 1] */
    mha_tdesc dp = {.dtype = MHA_F32, .ne = {1, N * H, b->d, 1},
                    .nb = {N * b->q, b->d, 1, 1}, .buf = sc,
                    .offset = b->sc[R_DP]};
    mha_tdesc d = {.dtype = MHA_F32, .ne = {1, 1, N, H},
                   .nb = {N * H, N * H, H, 1}, .buf = sc,
                   .offset = b->sc[R_D]};
    mha_tdesc dsum = d;
    dsum.ne[1] = N * H, dsum.ne[2] = dsum.ne[3] = 1;
    dsum.nb[1] = 1;
    sum_rows(b, dsum, dp, 0);
    return d;
}

/* dL/dg = the sum over each head's rows and features of dG * O, per
 * sequence ([B, Hq] gates) or over all tokens ([Hq]); written, as
 * nn.MHA's (backward_graph.c). */
static void gates_grad(bctx *b)
{
    mha_tdesc d = head_dots(b, rows(b, b->s->scratch, b->sc[R_DG], b->q));
    int per_seq = b->s->gates->ndim == 2;
    int64_t H = b->Hq;
    mha_tdesc src = d, dst = {.dtype = MHA_F32,
                              .ne = {per_seq ? b->B : 1, H, 1, 1},
                              .nb = {H, 1, 1, 1},
                              .buf = b->dgates->buf,
                              .offset = b->dgates->offset * 4};
    src.ne[0] = dst.ne[0];
    src.ne[1] = H;
    src.ne[2] = per_seq ? b->T : b->N;
    src.ne[3] = 1;
    src.nb[0] = b->T * H;
    src.nb[1] = 1;
    sum_rows(b, dst, src, 0);
}

/* o_proj: dWo = dY^T O (gated: G = g O, recomputed), dbo = the sum of
 * dY's rows, dG = dY Wo; with gates their gradient, then dO = g dG. */
static void output_nodes(bctx *b)
{
    void *sc = b->s->scratch;
    mha_tdesc dy = rows(b, b->dy, 0, b->E);
    mha_tdesc o = rows(b, b->s->buf, b->s->off[S_O], b->q);
    int gated = b->s->gates != NULL;
    if (b->grads) {
        if (gated) {
            gate_mul(b, R_GO, o);
            o = rows(b, sc, b->sc[R_GO], b->q);
        }
        matmul(b, grad_of(b, MHA_D_WO, b->E, b->q), transposed(dy), o,
               b->acc);
        if (b->l->cfg.o_bias)
            sum_rows(b, grad_of(b, MHA_D_BO, 1, b->E), dy, b->acc);
    }
    mha_tdesc dg = rows(b, sc, b->sc[gated ? R_DG : R_DO], b->q);
    matmul(b, dg, dy, weight(b, MHA_D_WO, b->E, b->q), 0);
    if (b->dgates)
        gates_grad(b);
    if (gated)
        gate_mul(b, R_DO, dg);
}

/* The layer's window, softcap and ALiBi slopes (into source slot: the
 * forward's and the backward's differ) on an attention node n. */
static void core_options(const bctx *b, mha_node *n, int slot)
{
    const mha_decoder_config *c = &b->l->cfg;
    n->params.window = (int32_t)c->window;
    n->params.softcap = c->softcap;
    if (b->l->wlen[MHA_D_ALIBI])
        n->src[slot] = weight(b, MHA_D_ALIBI, 1, b->Hq);
}

/* The sinks' gradient, -sum over rows i of p_i,sink D_i per head (D_i =
 * dO_i . O_i), with the ops at hand: 1 - p_i,sink is the attention output
 * of V = 1 (the sink carries no value), so the sum is
 * sum_i (1 - p_i,sink) D_i - sum_i D_i. k: the keys the forward's
 * attention read ([B,Hkv,T,d], rotated, in the cache's dtype). */
static void sink_nodes(bctx *b, mha_tdesc k)
{
    const mha_dsaved *s = b->s;
    void *sc = s->scratch;
    int64_t H = b->Hq;
    mha_node *n = add(b, MHA_OP_FILL_ROWS);
    n->dst = rows(b, sc, b->sc[R_ONES], b->kv);
    n->src[0] = mha_train_row(sc, b->sc[R_CONST] / 4, (size_t)b->kv);
    n = add(b, MHA_OP_ATTENTION);
    n->src[MHA_SRC_Q] = heads(b, s->buf, s->off[S_Q], H);
    n->src[MHA_SRC_K] = k;
    n->src[MHA_SRC_V] = heads(b, sc, b->sc[R_ONES], b->Hkv);
    n->src[MHA_SRC_SINKS] = weight(b, MHA_D_SINKS, 1, H);
    n->dst = heads(b, sc, b->sc[R_O1], H);
    n->params.scale = b->l->cfg.scale;
    n->params.causal = MHA_CAUSAL_TOP_LEFT;
    n->params.mask_cols = b->T;
    n->params.kv_group = (int32_t)b->g;
    core_options(b, n, MHA_SRC_ALIBI);
    mha_tdesc d = head_dots(b, rows(b, sc, b->sc[R_DO], b->q));
    mha_tdesc t2 = d, o1 = d, minus = d;
    t2.offset = b->sc[R_T2];
    o1.nb[2] = b->q, o1.nb[3] = b->d; /* feature 0 of each head */
    o1.offset = b->sc[R_O1];
    minus.nb[0] = minus.nb[1] = minus.nb[2] = minus.nb[3] = 0;
    minus.offset = b->sc[R_CONST] + (size_t)b->kv * 4;
    mha_tdesc gs = grad_of(b, MHA_D_SINKS, 1, H);
    const mha_tdesc *f[2] = {&o1, &minus};
    for (int k = 0; k < 2; k++) {
        n = add(b, MHA_OP_MUL);
        n->dst = t2;
        n->src[MHA_SRC_MUL_X] = d;
        n->src[MHA_SRC_MUL_F] = *f[k];
        sum_rows(b, gs, t2, k ? 1 : b->acc);
    }
}

/* The [B,Hkv,T,d] kv heads of region r of the scratch in dtype. */
static mha_tdesc kv_scratch(const bctx *b, int r, mha_dtype dtype)
{
    mha_tdesc t = heads(b, b->s->scratch, b->sc[r], b->Hkv);
    t.dtype = dtype;
    return t;
}

/* dst (f32 [N, q] rows of a scratch region) = the kv heads t repeated per
 * query head, converted to f32. */
static mha_tdesc expand(bctx *b, int r, mha_tdesc t)
{
    mha_tdesc rep = kv_repeated(b, t.buf, t.offset);
    rep.dtype = t.dtype;
    rope(b, q_grouped(b, b->s->scratch, b->sc[r]), rep, 0, 0.0f);
    return heads(b, b->s->scratch, b->sc[r], b->Hq);
}

/* dQ, dK, dV of the attention (dK, dV summed over each kv group), RoPE
 * undone on dQ and dK. */
static void attention_nodes(bctx *b)
{
    const mha_dsaved *s = b->s;
    void *sc = s->scratch;
    int dims =
        b->l->cfg.rope_style != MHA_ROPE_NONE ? (int)b->l->cfg.rope_dims : 0;
    int half = s->kv_dtype != MHA_F32;
    /* k and v as the forward's attention read them from the cache: k
       rotated into Kr, both rounded to f16 over an f16 cache */
    mha_tdesc k = heads(b, s->buf, s->off[S_K], b->Hkv);
    mha_tdesc v = heads(b, s->buf, s->off[S_V], b->Hkv);
    if (dims || half) {
        mha_tdesc kr = kv_scratch(b, R_KR, s->kv_dtype);
        rope(b, kr, k, dims, 1.0f);
        k = kr;
    }
    if (half) {
        mha_tdesc vh = kv_scratch(b, R_VH, s->kv_dtype);
        rope(b, vh, v, 0, 0.0f);
        v = vh;
    }
    /* the attention backward's f32 K and V of Hq heads: each kv head
       repeated over its group, widened from f16 */
    int grouped = b->g > 1;
    mha_tdesc kx = grouped || half ? expand(b, R_KX, k) : k;
    mha_tdesc vx = grouped || half ? expand(b, R_VX, v) : v;
    size_t dkx = grouped ? b->sc[R_DKX] : b->sc[R_DK];
    size_t dvx = grouped ? b->sc[R_DVX] : b->sc[R_DV];
    mha_node *n = add(b, MHA_OP_ATTENTION_BACKWARD);
    n->dst = heads(b, sc, b->sc[R_DQ], b->Hq);
    n->src[MHA_SRC_Q] = heads(b, s->buf, s->off[S_Q], b->Hq);
    n->src[MHA_SRC_K] = kx;
    n->src[MHA_SRC_V] = vx;
    n->src[MHA_SRC_BWD_O] = heads(b, s->buf, s->off[S_O], b->Hq);
    n->src[MHA_SRC_BWD_DO] = heads(b, sc, b->sc[R_DO], b->Hq);
    n->src[MHA_SRC_BWD_LSE] = (mha_tdesc){.dtype = MHA_F32,
                                          .ne = {b->B, b->Hq, 1, b->T},
                                          .nb = {b->Hq * b->T, b->T, b->T, 1},
                                          .buf = s->buf,
                                          .offset = s->lse_off};
    n->extra_dst[MHA_DST_DK] = heads(b, sc, dkx, b->Hq);
    n->extra_dst[MHA_DST_DV] = heads(b, sc, dvx, b->Hq);
    n->params.scale = b->l->cfg.scale;
    n->params.causal = MHA_CAUSAL_TOP_LEFT; /* empty caches: p = i */
    n->params.mask_cols = b->T;
    core_options(b, n, MHA_SRC_BWD_ALIBI);
    if (b->grads && b->l->cfg.sinks)
        sink_nodes(b, k);
    if (grouped) {
        mha_tdesc dk = kv_repeated(b, sc, b->sc[R_DK]);
        mha_tdesc dv = kv_repeated(b, sc, b->sc[R_DV]);
        dk.ne[2] = dv.ne[2] = 1;
        sum_rows(b, dk, q_grouped(b, sc, dkx), 0);
        sum_rows(b, dv, q_grouped(b, sc, dvx), 0);
    }
    if (dims) {
        mha_tdesc dq = heads(b, sc, b->sc[R_DQ], b->Hq);
        mha_tdesc dk = heads(b, sc, b->sc[R_DK], b->Hkv);
        rope(b, dq, dq, dims, -1.0f);
        rope(b, dk, dk, dims, -1.0f);
    }
}

/* q/k/v_proj: dW = G^T x, db = the sum of G's rows, dx = sum G W. */
static void projection_nodes(bctx *b)
{
    static const mha_dslot w[3] = {MHA_D_WQ, MHA_D_WK, MHA_D_WV};
    static const mha_dslot bias[3] = {MHA_D_BQ, MHA_D_BK, MHA_D_BV};
    static const int region[3] = {R_DQ, R_DK, R_DV};
    const mha_tensor *x = b->s->x;
    mha_tdesc xr = rows(b, x->buf, x->offset * 4, b->E);
    for (int i = 0; i < 3; i++) {
        int64_t F = i ? b->kv : b->q;
        mha_tdesc G = rows(b, b->s->scratch, b->sc[region[i]], F);
        if (b->grads) {
            matmul(b, grad_of(b, w[i], F, b->E), transposed(G), xr, b->acc);
            if (b->l->cfg.qkv_bias)
                sum_rows(b, grad_of(b, bias[i], 1, F), G, b->acc);
        }
        if (b->dx)
            matmul(b, rows(b, b->dx, 0, b->E), G, weight(b, w[i], F, b->E),
                   i > 0);
    }
}

/* ---- the backward: the call ---------------------------------------------- */

/* The first version of mha_decoder_backward_args ends before
 * grad_head_gates. */
#define BACKWARD_ARGS_V1 offsetof(mha_decoder_backward_args, grad_head_gates)

mha_status mha_decoder_backward_args_init_sized(mha_decoder_backward_args *args,
                                                size_t struct_size)
{
    return mha_struct_init(args, struct_size, BACKWARD_ARGS_V1);
}

/* t is a whole f32 [B, T, E] tensor of l's device. */
static mha_status check_grad_tensor(mha_decoder *l, const char *fn,
                                    const char *name, const mha_tensor *t)
{
    mha_context *ctx = l->device->ctx;
    const mha_dsaved *s = l->saved;
    int64_t want[3] = {s->B, s->T, l->cfg.embed_dim};
    char got[96], exp[96];
    if (t->device != l->device || t->base)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is %s", fn, name,
                         t->base ? "a view; pass a whole tensor"
                                 : "on another device than the layer");
    if (t->dtype != MHA_F32)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: %s has dtype %s; expected f32", fn, name,
                         mha_dtype_name(t->dtype));
    if (t->ndim != 3 || t->shape[0] != want[0] || t->shape[1] != want[1] ||
        t->shape[2] != want[2])
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: %s has shape %s; expected %s, the training "
                         "forward's x",
                         fn, name,
                         mha_shape_str(got, sizeof got, t->ndim, t->shape),
                         mha_shape_str(exp, sizeof exp, 3, want));
    return MHA_OK;
}

/* a's grad_head_gates, NULL in a first-version struct. */
static mha_tensor *grad_head_gates(const mha_decoder_backward_args *a)
{
    return a->struct_size >
                   offsetof(mha_decoder_backward_args, grad_head_gates)
               ? a->grad_head_gates
               : NULL;
}

static mha_status check_backward(mha_decoder *l, const char *fn,
                                 const mha_decoder_backward_args *a)
{
    mha_context *ctx = l->device->ctx;
    const mha_dsaved *s = l->saved;
    if (!s || !s->valid)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: no training forward to backpropagate through "
                         "(call mha_decoder_forward with save_for_backward "
                         "= 1 first)",
                         fn);
    if (s->generation != l->generation)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: the layer's weights changed (set, loaded, "
                         "pruned or stepped) since its training forward; "
                         "run the training forward again",
                         fn);
    if (!a->grad_output)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: grad_output is NULL",
                         fn);
    mha_status st = check_grad_tensor(l, fn, "grad_output", a->grad_output);
    if (st == MHA_OK && a->grad_x)
        st = check_grad_tensor(l, fn, "grad_x", a->grad_x);
    if (st == MHA_OK && a->grads)
        st = mha_decoder_gradients_check(a->grads, l, fn);
    const mha_tensor *dg = grad_head_gates(a);
    if (st == MHA_OK && dg && !s->gates)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: grad_head_gates given, but the training "
                         "forward had no head_gates",
                         fn);
    if (st == MHA_OK && dg)
        st = mha_train_check_like(l->device, fn, "grad_head_gates", dg,
                                  s->gates);
    static const char *const read_names[2] = {"x", "head_gates"};
    const mha_tensor *const read[2] = {s->x, s->gates};
    if (st == MHA_OK) /* read by the weight gradients after grad_x */
        st = mha_check_apart(ctx, fn, "grad_x", a->grad_x, read, read_names,
                             2);
    if (st == MHA_OK)
        st = mha_check_apart(ctx, fn, "grad_head_gates", dg, read,
                             read_names, 2);
    return st;
}

/* The sinks' constants (kv ones, then -1) into the scratch. */
static mha_status constants(bctx *b)
{
    static const float minus = -1.0f;
    float ones[256];
    for (int i = 0; i < 256; i++)
        ones[i] = 1.0f;
    mha_device *dev = b->l->device;
    void *sc = b->l->saved->scratch;
    mha_status st = MHA_OK;
    for (int64_t at = 0; at < b->kv && st == MHA_OK; at += 256) {
        int64_t n = b->kv - at < 256 ? b->kv - at : 256;
        st = mha_dev_write(dev, sc, b->sc[R_CONST] + (size_t)at * 4, ones,
                           (size_t)n * 4);
    }
    if (st == MHA_OK)
        st = mha_dev_write(dev, sc, b->sc[R_CONST] + (size_t)b->kv * 4,
                           &minus, 4);
    return st;
}

/* The scratch regions of b, the buffer grown when smaller. */
static mha_status scratch(bctx *b)
{
    mha_dsaved *s = b->l->saved;
    size_t at = 0;
    for (int r = 0; r < R_END; r++) {
        int64_t F = r < R_KR ? b->q : r < R_D ? b->kv : b->Hq;
        if (r == R_VH && s->kv_dtype == MHA_F32)
            F = 0; /* v is read as saved */
        if ((r == R_GO || r == R_DG) && !s->gates)
            F = 0;
        b->sc[r] = at;
        at = align_up(at + (size_t)(r == R_CONST ? b->kv + 1 : b->N * F) * 4);
    }
    if (s->scratch_bytes >= at)
        return b->l->cfg.sinks ? constants(b) : MHA_OK;
    mha_dev_free(b->l->device, s->scratch, s->scratch_bytes);
    s->scratch = NULL;
    s->scratch_bytes = 0;
    mha_status st = mha_dev_alloc(b->l->device, at, &s->scratch);
    if (st == MHA_OK)
        s->scratch_bytes = at;
    return st == MHA_OK && b->l->cfg.sinks ? constants(b) : st;
}

static void setup(bctx *b, mha_decoder *l, const mha_decoder_backward_args *a)
{
    const mha_decoder_config *c = &l->cfg;
    memset(b, 0, sizeof *b);
    b->l = l;
    b->s = l->saved;
    b->B = l->saved->B;
    b->T = l->saved->T;
    b->N = b->B * b->T;
    b->E = c->embed_dim;
    b->Hq = c->num_heads;
    b->Hkv = c->num_kv_heads;
    b->g = b->Hq / b->Hkv;
    b->d = c->head_dim;
    b->q = b->Hq * b->d;
    b->kv = b->Hkv * b->d;
    b->dy = a->grad_output->buf;
    b->dx = a->grad_x ? a->grad_x->buf : NULL;
    b->grads = a->grads;
    b->dgates = grad_head_gates(a);
    b->gbuf = a->grads ? a->grads->flat->buf : NULL;
    b->acc = a->accumulate != 0;
}

mha_status mha_decoder_backward(mha_decoder *layer,
                                const mha_decoder_backward_args *a)
{
    static const char fn[] = "mha_decoder_backward";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!a)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: args is NULL", fn);
    mha_status st = mha_struct_check(
        &ctx->host, fn, "mha_decoder_backward_args", a, BACKWARD_ARGS_V1);
    if (st == MHA_OK)
        st = check_backward(layer, fn, a);
    if (st != MHA_OK)
        return st;
    bctx b;
    setup(&b, layer, a);
    if ((st = scratch(&b)) != MHA_OK)
        return mha_host_finish(&ctx->host, fn, st);
    output_nodes(&b);
    attention_nodes(&b);
    projection_nodes(&b);
    if (b.overflow)
        return mha_host_finish(&ctx->host, fn,
                               mha_error(ctx, MHA_LIMIT_REACHED,
                                         "%s: the backward needs more than "
                                         "%d nodes",
                                         fn, BWD_MAX_NODES));
    /* every node asked before any runs, so a refused backward writes
       nothing */
    for (int i = 0; i < b.count; i++)
        if (!mha_dev_supports(layer->device, &b.nodes[i]))
            return mha_graph_unsupported(layer->device, fn, &b.nodes[i],
                                         "a decoder backward");
    for (int i = 0; i < b.count && st == MHA_OK; i++)
        st = mha_dev_run(layer->device, &b.nodes[i]);
    if (st == MHA_OK)
        st = mha_dev_sync(layer->device);
    return mha_host_finish(&ctx->host, fn, st);
}
