/* graph.c: builds the unfused MHA graph of one call shape, following
 * F.multi_head_attention_forward step by step so each node maps to one line
 * of PyTorch's math (its head split and concat are strided views here),
 * except that self-attention may project Q, K and V with one product over
 * the packed in_proj_weight, as PyTorch's own fast path does (fewer
 * dispatches: per-dispatch cost dominates small shapes on GPU APIs). The
 * planner (plan.c) then fuses attention where it can. */
#include <math.h>
#include <string.h>

#include "graph.h"

int64_t mha_call_keys(const mha_layer *layer, const mha_call *call)
{
    return call->src_len + layer->cfg.add_bias_kv + layer->cfg.add_zero_attn;
}

/* Columns [first, first + count) of a [N,1,T,X] tensor as [N,1,T,count]. */
static int cols_of(mha_graph *g, int whole, int64_t first, int64_t count)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], 1, w->ne[2], count};
    size_t offset = w->offset + (size_t)first *
                                    mha_dtype_storage_size(w->dtype);
    return mha_graph_tensor(g, w->buf, w->dtype, offset, ne, w->nb);
}

/* Heads [first, first + count) of a contiguous [N,H,T,X] tensor as the
 * [N,1,count*T,X] rows that FILL_ROWS writes. */
static int head_rows(mha_graph *g, int whole, int64_t first, int64_t count)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], 1, count * w->ne[2], w->ne[3]};
    int64_t nb[4] = {w->nb[0], 0, w->nb[2], 1};
    size_t offset = w->offset + (size_t)(first * w->nb[1]) *
                                    mha_dtype_storage_size(w->dtype);
    return mha_graph_tensor(g, w->buf, w->dtype, offset, ne, nb);
}

/* A [N,1,T,F] intermediate: in the arena, or in a training forward the
 * saved buffer of role, laid out as the caller's rows so the backward can
 * pair them with the inputs' rows without a copy. */
static int intermediate(mha_graph *g, const mha_layer *layer,
                        const mha_call *call, mha_buf_role saved, int64_t T,
                        int64_t F)
{
    if (call->train)
        return mha_graph_input(g, layer, saved, call, T, F);
    return mha_graph_contiguous(g, MHA_BUF_ARENA, layer->cfg.dtype,
                                call->batch, 1, T, F);
}

/* Rows [S, S') of a [N,1,S',I] K or V: the bias_k/v row (extra's
 * parameter) and the zero row, when configured. */
static void append_rows(mha_graph *g, const mha_layer *layer,
                        const mha_call *call, int params, int whole,
                        mha_wslot extra)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t row = call->src_len;
    if (c->add_bias_kv)
        mha_graph_node(g, MHA_OP_FILL_ROWS, mha_graph_rows(g, whole, row++, 1),
                 mha_graph_param(g, layer, params, extra), MHA_NO_TENSOR,
                 MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    if (c->add_zero_attn)
        mha_graph_node(g, MHA_OP_FILL_ROWS, mha_graph_rows(g, whole, row, 1),
                 MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
}

/* Projects input x with slot's weight into rows [0, T) of a new [N,T',I]
 * intermediate, then appends bias_k/v and zero rows when configured. */
static int project_kv(mha_graph *g, const mha_layer *layer,
                      const mha_call *call, int params, int x, mha_wslot w,
                      mha_wslot b, mha_wslot extra, mha_buf_role saved)
{
    int64_t S = call->src_len, I = mha_layer_inner(layer);
    int64_t S2 = mha_call_keys(layer, call);
    int whole = intermediate(g, layer, call, saved, S2, I);
    mha_graph_node(g, MHA_OP_PROJECTION, mha_graph_rows(g, whole, 0, S),
             x, mha_graph_param(g, layer, params, w),
             mha_graph_param(g, layer, params, b), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    append_rows(g, layer, call, params, whole, extra);
    return whole;
}

/* The q, k and v slots from first (MHA_W_Q or MHA_B_Q) as one parameter:
 * the layout keeps them adjacent (layer.h), so the packed in_proj_weight
 * [3I, E] stacks their rows and in_proj_bias [3I] their columns. */
static int packed_param(mha_graph *g, const mha_layer *layer, int params,
                        mha_wslot first)
{
    int t = mha_graph_param(g, layer, params, first);
    if (t != MHA_NO_TENSOR)
        g->tensors[t].ne[first == MHA_W_Q ? 2 : 3] *= 3;
    return t;
}

/* Self-attention: one projection of x over the packed weight into rows
 * [0, L) of a [N,1,S',3I] intermediate whose column blocks are Q, K and V
 * (each [N,1,.,I] with row stride 3I, so the heads are strided views as
 * usual); K and V get their appended rows after it. */
static void project_packed(mha_graph *g, const mha_layer *layer,
                           const mha_call *call, int params, int x, int qkv[3])
{
    int64_t L = call->tgt_len, I = mha_layer_inner(layer);
    int whole = mha_graph_contiguous(g, MHA_BUF_ARENA, layer->cfg.dtype,
                                     call->batch, 1,
                                     mha_call_keys(layer, call), 3 * I);
    mha_graph_node(g, MHA_OP_PROJECTION, mha_graph_rows(g, whole, 0, L), x,
                   packed_param(g, layer, params, MHA_W_Q),
                   packed_param(g, layer, params, MHA_B_Q), MHA_NO_TENSOR,
                   MHA_NO_TENSOR);
    for (int i = 0; i < 3; i++)
        qkv[i] = cols_of(g, whole, i * I, I);
    qkv[0] = mha_graph_rows(g, qkv[0], 0, L);
    append_rows(g, layer, call, params, qkv[1], MHA_BIAS_K);
    append_rows(g, layer, call, params, qkv[2], MHA_BIAS_V);
}

/* Scores, softmax and weighted sum of heads [h0, h0 + n) (the planner may
 * fuse them into one ATTENTION node). */
static void add_run(mha_graph *g, const int heads[3], int mask, int kpm,
                    int scores, int probs, int oh, int lse, int64_t h0,
                    int64_t n, const mha_op_params *p)
{
    mha_grun *r = &g->runs[g->nruns++];
    r->lse = mha_graph_head_range(g, lse, h0, n);
    int sc = mha_graph_head_range(g, scores, h0, n);
    int pr = probs == scores ? sc : mha_graph_head_range(g, probs, h0, n);
    r->scores = mha_graph_node(g, MHA_OP_SCORES, sc, mha_graph_head_range(g, heads[0], h0, n),
                         mha_graph_head_range(g, heads[1], h0, n),
                         mha_graph_head_range(g, mask, h0, n), mha_graph_head_range(g, kpm, h0, n),
                         MHA_NO_TENSOR);
    g->nodes[r->scores].params = *p;
    r->softmax = mha_graph_node(g, MHA_OP_SOFTMAX, pr, sc, MHA_NO_TENSOR,
                          MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    r->weighted_sum = mha_graph_node(g, MHA_OP_WEIGHTED_SUM,
                               mha_graph_head_range(g, oh, h0, n), pr,
                               mha_graph_head_range(g, heads[2], h0, n), MHA_NO_TENSOR,
                               MHA_NO_TENSOR, MHA_NO_TENSOR);
    g->nodes[r->weighted_sum].params = *p;
}

/* Skipped heads [h0, h0 + n): their output columns (which out_proj reads)
 * and, when returned, their weights rows are zeros. */
static void add_skipped(mha_graph *g, const mha_call *call, int o, int probs,
                        int64_t h0, int64_t n, int64_t d)
{
    mha_graph_node(g, MHA_OP_FILL_ROWS, cols_of(g, o, h0 * d, n * d), MHA_NO_TENSOR,
             MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    if (call->need_weights)
        mha_graph_node(g, MHA_OP_FILL_ROWS, head_rows(g, probs, h0, n),
                 MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
}

/* After the attention: the copy of each head's output to head_outputs
 * ([N,H,L,d] f32, a ROPE that rotates nothing) and the gate multiply;
 * returns the [N,1,L,I] tensor out_proj reads. */
static int add_head_control(mha_graph *g, const mha_layer *layer,
                            const mha_call *call, int o, int oh)
{
    int64_t N = call->batch, L = call->tgt_len, H = layer->heads;
    int64_t d = layer->head_dim;
    if (call->head_outputs) {
        int dst = mha_graph_contiguous(g, MHA_BUF_HEAD_OUTPUTS, MHA_F32, N, H, L, d);
        mha_graph_node(g, MHA_OP_ROPE, dst, oh, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR, MHA_NO_TENSOR);
    }
    if (!call->gate_mul)
        return o;
    int gated = mha_graph_contiguous(g, MHA_BUF_ARENA, layer->cfg.dtype, N, 1, L,
                               H * d);
    mha_graph_node(g, MHA_OP_MUL, mha_graph_heads(g, gated, H), oh,
             mha_graph_gates(g, call, H, d), MHA_NO_TENSOR, MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    return gated;
}

int mha_graph_packs(const mha_layer *layer, const mha_call *call)
{
    const mha_layer_config *c = &layer->cfg;
    return call->same_qkv && !call->train && c->kdim == c->embed_dim &&
           c->vdim == c->embed_dim && call->src_len == call->tgt_len;
}

void mha_graph_build(const mha_layer *layer, const mha_call *call, int pack,
                     mha_graph *g)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t N = call->batch, L = call->tgt_len, S = call->src_len;
    int64_t E = c->embed_dim, H = layer->heads, d = layer->head_dim;
    int64_t I = H * d, S2 = mha_call_keys(layer, call);
    memset(g, 0, sizeof *g);

    int xq = mha_graph_input(g, layer, MHA_BUF_QUERY, call, L, E);
    int xk = pack ? xq : mha_graph_input(g, layer, MHA_BUF_KEY, call, S,
                                         c->kdim);
    int xv = pack ? xq : mha_graph_input(g, layer, MHA_BUF_VALUE, call, S,
                                         c->vdim);
    int params = mha_graph_buf(g, MHA_BUF_PARAMS, layer->wbytes);

    /* projection: one over the packed weight for self-attention, else
     * one per input */
    int qkv[3], heads[3];
    if (pack) {
        project_packed(g, layer, call, params, xq, qkv);
    } else {
        qkv[0] = intermediate(g, layer, call, MHA_BUF_SAVED_Q, L, I);
        mha_graph_node(g, MHA_OP_PROJECTION, qkv[0], xq,
                       mha_graph_param(g, layer, params, MHA_W_Q),
                       mha_graph_param(g, layer, params, MHA_B_Q),
                       MHA_NO_TENSOR, MHA_NO_TENSOR);
        qkv[1] = project_kv(g, layer, call, params, xk, MHA_W_K, MHA_B_K,
                            MHA_BIAS_K, MHA_BUF_SAVED_K);
        qkv[2] = project_kv(g, layer, call, params, xv, MHA_W_V, MHA_B_V,
                            MHA_BIAS_V, MHA_BUF_SAVED_V);
    }

    /* heads: [N,H,T,d] views of the projections' rows, no copies */
    for (int i = 0; i < 3; i++)
        heads[i] = mha_graph_heads(g, qkv[i], H);

    /* scaled scores, softmax, weighted sum: per run of computed heads */
    int kpm, mask = mha_graph_masks(g, call, H, &kpm);
    int scores = mha_graph_contiguous(g, MHA_BUF_ARENA, MHA_F32, N, H, L, S2);
    mha_op_params p = {.scale = (float)(1.0 / sqrt((double)d)),
                       .causal = call->causal ? MHA_CAUSAL_TOP_LEFT
                                              : MHA_CAUSAL_NONE,
                       .mask_cols = S};
    int probs = scores;
    if (call->need_weights && !call->average)
        probs = mha_graph_contiguous(g, MHA_BUF_WEIGHTS, MHA_F32, N, H, L, S2);
    /* the weighted sum writes each head's columns of the [N,L,I] rows that
     * the output projection reads (concatenating heads is this view) */
    int lse = call->train ? mha_graph_contiguous(g, MHA_BUF_SAVED_LSE,
                                                 MHA_F32, N, H, 1, L)
                          : MHA_NO_TENSOR;
    int o = intermediate(g, layer, call, MHA_BUF_SAVED_O, L, I);
    int oh = mha_graph_heads(g, o, H);
    mha_head_run runs[2 * MHA_MAX_HEAD_RUNS + 1];
    mha_head_runs(call->skip, H, runs, 2 * MHA_MAX_HEAD_RUNS + 1);
    for (int64_t h = 0, r = 0; h < H; h += runs[r++].count) {
        if (runs[r].computed)
            add_run(g, heads, mask, kpm, scores, probs, oh, lse, h,
                    runs[r].count, &p);
        else
            add_skipped(g, call, o, probs, h, runs[r].count, d);
    }

    /* head-averaged weights, head outputs, gates, output projection */
    if (call->need_weights && call->average)
        mha_graph_node(g, MHA_OP_MEAN_HEADS,
                 mha_graph_contiguous(g, MHA_BUF_WEIGHTS, MHA_F32, N, 1, L, S2),
                 probs, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
    int attended = add_head_control(g, layer, call, o, oh);
    int y = mha_graph_input(g, layer, MHA_BUF_OUTPUT, call, L, E);
    mha_graph_node(g, MHA_OP_PROJECTION, y, attended,
             mha_graph_param(g, layer, params, MHA_W_O),
             mha_graph_param(g, layer, params, MHA_B_O), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
}
