/* graph.c: builds the unfused MHA graph of one call shape, following
 * F.multi_head_attention_forward step by step so each node maps to one line
 * of PyTorch's math (its head split and concat are strided views here).
 * The planner (plan.c) then fuses attention where it can. */
#include <math.h>
#include <string.h>

#include "graph.h"

int64_t mha_call_keys(const mha_layer *layer, const mha_call *call)
{
    return call->src_len + layer->cfg.add_bias_kv + layer->cfg.add_zero_attn;
}

static int add_buf(mha_graph *g, mha_buf_role role, size_t bytes)
{
    mha_gbuf *b = &g->bufs[g->nbufs];
    memset(b, 0, sizeof *b);
    b->role = role;
    b->bytes = bytes;
    b->first_use = b->last_use = -1;
    return g->nbufs++;
}

static int add_tensor(mha_graph *g, int buf, mha_dtype dtype, size_t offset,
                      const int64_t ne[4], const int64_t nb[4])
{
    mha_gtensor *t = &g->tensors[g->ntensors];
    t->dtype = dtype;
    t->buf = buf;
    t->offset = offset;
    memcpy(t->ne, ne, sizeof t->ne);
    memcpy(t->nb, nb, sizeof t->nb);
    return g->ntensors++;
}

/* A contiguous tensor filling a new buffer of the given role. */
static int add_contiguous(mha_graph *g, mha_buf_role role, mha_dtype dtype,
                          int64_t n0, int64_t n1, int64_t n2, int64_t n3)
{
    int64_t ne[4] = {n0, n1, n2, n3};
    int64_t nb[4] = {n1 * n2 * n3, n2 * n3, n3, 1};
    size_t bytes = (size_t)(n0 * n1 * n2 * n3) * mha_dtype_storage_size(dtype);
    return add_tensor(g, add_buf(g, role, bytes), dtype, 0, ne, nb);
}

static int add_node(mha_graph *g, mha_op op, int dst, int s0, int s1, int s2,
                    int s3, int s4)
{
    mha_gnode *n = &g->nodes[g->nnodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->dst = dst;
    int src[5] = {s0, s1, s2, s3, s4};
    for (int s = 0; s < MHA_MAX_SRC; s++)
        n->src[s] = s < 5 ? src[s] : MHA_NO_TENSOR;
    return g->nnodes++;
}

/* A caller's (T, N, F) or (N, T, F) array seen as [N, 1, T, F]. */
static int add_input(mha_graph *g, const mha_layer *layer, mha_buf_role role,
                     const mha_call *call, int64_t T, int64_t F)
{
    int64_t N = call->batch;
    int64_t ne[4] = {N, 1, T, F};
    int64_t nb[4] = {T * F, 0, F, 1};
    if (call->batched && !layer->cfg.batch_first) {
        nb[0] = F;
        nb[2] = N * F;
    }
    int buf = add_buf(g, role, (size_t)(N * T * F) * 4);
    return add_tensor(g, buf, MHA_F32, 0, ne, nb);
}

/* A [1,1,rows,cols] (or bias [1,1,1,cols]) view of the layer's weights
 * (for the kept heads: mha_layer_slot_shape). */
static int add_param(mha_graph *g, const mha_layer *layer, int params,
                     mha_wslot slot)
{
    if ((slot == MHA_B_Q || slot == MHA_B_K || slot == MHA_B_V ||
         slot == MHA_B_O) && !layer->cfg.bias)
        return MHA_NO_TENSOR;
    int64_t rows, cols;
    mha_layer_slot_shape(layer, slot, &rows, &cols);
    int64_t ne[4] = {1, 1, rows, cols};
    int64_t nb[4] = {rows * cols, rows * cols, cols, 1};
    size_t es = mha_dtype_storage_size(layer->cfg.dtype);
    return add_tensor(g, params, layer->cfg.dtype, layer->woff[slot] * es, ne,
                      nb);
}

/* [N,1,rows,E] rows starting at row `first` of a [N, T, E] buffer. */
static int rows_of(mha_graph *g, int whole, int64_t first, int64_t rows)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], 1, rows, w->ne[3]};
    size_t offset = w->offset + (size_t)(first * w->nb[2]) *
                                    mha_dtype_storage_size(w->dtype);
    return add_tensor(g, w->buf, w->dtype, offset, ne, w->nb);
}

/* Heads [first, first + count) of a [N,H,T,X] tensor (a view). */
static int head_range(mha_graph *g, int whole, int64_t first, int64_t count)
{
    if (whole == MHA_NO_TENSOR)
        return MHA_NO_TENSOR;
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], count, w->ne[2], w->ne[3]};
    size_t offset = w->offset + (size_t)(first * w->nb[1]) *
                                    mha_dtype_storage_size(w->dtype);
    return add_tensor(g, w->buf, w->dtype, offset, ne, w->nb);
}

/* Columns [first, first + count) of a [N,1,T,X] tensor as [N,1,T,count]. */
static int cols_of(mha_graph *g, int whole, int64_t first, int64_t count)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], 1, w->ne[2], count};
    size_t offset = w->offset + (size_t)first *
                                    mha_dtype_storage_size(w->dtype);
    return add_tensor(g, w->buf, w->dtype, offset, ne, w->nb);
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
    return add_tensor(g, w->buf, w->dtype, offset, ne, nb);
}

/* The [N,H,T,d] head view of a [N,1,T,E] tensor (no copy). */
static int heads_of(mha_graph *g, int whole, int64_t H)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t d = w->ne[3] / H;
    int64_t ne[4] = {w->ne[0], H, w->ne[2], d};
    int64_t nb[4] = {w->nb[0], d, w->nb[2], 1};
    return add_tensor(g, w->buf, w->dtype, w->offset, ne, nb);
}

/* Projects input x with slot's weight into rows [0, T) of a new [N,T',I]
 * intermediate, then appends bias_k/v and zero rows when configured. */
static int project_kv(mha_graph *g, const mha_layer *layer,
                      const mha_call *call, int params, int x, mha_wslot w,
                      mha_wslot b, mha_wslot extra)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t N = call->batch, S = call->src_len, I = mha_layer_inner(layer);
    int64_t S2 = mha_call_keys(layer, call);
    int whole = add_contiguous(g, MHA_BUF_ARENA, c->dtype, N, 1, S2, I);
    add_node(g, MHA_OP_PROJECTION, rows_of(g, whole, 0, S),
             x, add_param(g, layer, params, w),
             add_param(g, layer, params, b), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    int64_t row = S;
    if (c->add_bias_kv)
        add_node(g, MHA_OP_FILL_ROWS, rows_of(g, whole, row++, 1),
                 add_param(g, layer, params, extra), MHA_NO_TENSOR,
                 MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    if (c->add_zero_attn)
        add_node(g, MHA_OP_FILL_ROWS, rows_of(g, whole, row, 1),
                 MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
    return whole;
}

/* attn_mask (L,S) or (N*H,L,S), and key_padding_mask (N,S) or (S), seen as
 * additive [N,H,L,S] through zero strides. */
static int add_masks(mha_graph *g, const mha_call *call, int64_t H,
                     int *kpm)
{
    int64_t N = call->batch, L = call->tgt_len, S = call->src_len;
    int64_t ne[4] = {N, H, L, S};
    int mask = MHA_NO_TENSOR;
    *kpm = MHA_NO_TENSOR;
    if (call->has_mask) {
        int64_t heads = call->mask_per_head ? N * H : 1;
        int64_t nb[4] = {call->mask_per_head ? H * L * S : 0,
                         call->mask_per_head ? L * S : 0, S, 1};
        int buf = add_buf(g, MHA_BUF_MASK, (size_t)(heads * L * S) * 4);
        mask = add_tensor(g, buf, MHA_F32, 0, ne, nb);
    }
    if (call->has_kpm) {
        int64_t nb[4] = {S, 0, 0, 1};
        int buf = add_buf(g, MHA_BUF_KPM, (size_t)(N * S) * 4);
        *kpm = add_tensor(g, buf, MHA_F32, 0, ne, nb);
    }
    return mask;
}

/* Scores, softmax and weighted sum of heads [h0, h0 + n) (the planner may
 * fuse them into one ATTENTION node). */
static void add_run(mha_graph *g, const int heads[3], int mask, int kpm,
                    int scores, int probs, int oh, int64_t h0, int64_t n,
                    const mha_op_params *p)
{
    mha_grun *r = &g->runs[g->nruns++];
    int sc = head_range(g, scores, h0, n);
    int pr = probs == scores ? sc : head_range(g, probs, h0, n);
    r->scores = add_node(g, MHA_OP_SCORES, sc, head_range(g, heads[0], h0, n),
                         head_range(g, heads[1], h0, n),
                         head_range(g, mask, h0, n), head_range(g, kpm, h0, n),
                         MHA_NO_TENSOR);
    g->nodes[r->scores].params = *p;
    r->softmax = add_node(g, MHA_OP_SOFTMAX, pr, sc, MHA_NO_TENSOR,
                          MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    r->weighted_sum = add_node(g, MHA_OP_WEIGHTED_SUM,
                               head_range(g, oh, h0, n), pr,
                               head_range(g, heads[2], h0, n), MHA_NO_TENSOR,
                               MHA_NO_TENSOR, MHA_NO_TENSOR);
    g->nodes[r->weighted_sum].params = *p;
}

/* Skipped heads [h0, h0 + n): their output columns (which out_proj reads)
 * and, when returned, their weights rows are zeros. */
static void add_skipped(mha_graph *g, const mha_call *call, int o, int probs,
                        int64_t h0, int64_t n, int64_t d)
{
    add_node(g, MHA_OP_FILL_ROWS, cols_of(g, o, h0 * d, n * d), MHA_NO_TENSOR,
             MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    if (call->need_weights)
        add_node(g, MHA_OP_FILL_ROWS, head_rows(g, probs, h0, n),
                 MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
}

/* The caller's head_gates ([H] or [N, H]) seen as [N,H,L,d] by strides. */
static int add_gates(mha_graph *g, const mha_call *call, int64_t H,
                     int64_t d)
{
    int64_t N = call->batch;
    int64_t ne[4] = {N, H, call->tgt_len, d};
    int64_t nb[4] = {call->gates == 2 ? H : 0, 1, 0, 0};
    int buf = add_buf(g, MHA_BUF_GATES,
                      (size_t)((call->gates == 2 ? N : 1) * H) * 4);
    return add_tensor(g, buf, MHA_F32, 0, ne, nb);
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
        int dst = add_contiguous(g, MHA_BUF_HEAD_OUTPUTS, MHA_F32, N, H, L, d);
        add_node(g, MHA_OP_ROPE, dst, oh, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR, MHA_NO_TENSOR);
    }
    if (!call->gate_mul)
        return o;
    int gated = add_contiguous(g, MHA_BUF_ARENA, layer->cfg.dtype, N, 1, L,
                               H * d);
    add_node(g, MHA_OP_MUL, heads_of(g, gated, H), oh,
             add_gates(g, call, H, d), MHA_NO_TENSOR, MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    return gated;
}

void mha_graph_build(const mha_layer *layer, const mha_call *call,
                     mha_graph *g)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t N = call->batch, L = call->tgt_len, S = call->src_len;
    int64_t E = c->embed_dim, H = layer->heads, d = layer->head_dim;
    int64_t I = H * d, S2 = mha_call_keys(layer, call);
    memset(g, 0, sizeof *g);

    int xq = add_input(g, layer, MHA_BUF_QUERY, call, L, E);
    int xk = add_input(g, layer, MHA_BUF_KEY, call, S, c->kdim);
    int xv = add_input(g, layer, MHA_BUF_VALUE, call, S, c->vdim);
    int params = add_buf(g, MHA_BUF_PARAMS, layer->wbytes);

    /* projection */
    int q = add_contiguous(g, MHA_BUF_ARENA, c->dtype, N, 1, L, I);
    add_node(g, MHA_OP_PROJECTION, q, xq, add_param(g, layer, params, MHA_W_Q),
             add_param(g, layer, params, MHA_B_Q), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    int k = project_kv(g, layer, call, params, xk, MHA_W_K, MHA_B_K,
                       MHA_BIAS_K);
    int v = project_kv(g, layer, call, params, xv, MHA_W_V, MHA_B_V,
                       MHA_BIAS_V);

    /* heads: [N,H,T,d] views of the projections' rows, no copies */
    int qkv[3] = {q, k, v}, heads[3];
    for (int i = 0; i < 3; i++)
        heads[i] = heads_of(g, qkv[i], H);

    /* scaled scores, softmax, weighted sum: per run of computed heads */
    int kpm, mask = add_masks(g, call, H, &kpm);
    int scores = add_contiguous(g, MHA_BUF_ARENA, MHA_F32, N, H, L, S2);
    mha_op_params p = {.scale = (float)(1.0 / sqrt((double)d)),
                       .causal = call->causal ? MHA_CAUSAL_TOP_LEFT
                                              : MHA_CAUSAL_NONE,
                       .mask_cols = S};
    int probs = scores;
    if (call->need_weights && !call->average)
        probs = add_contiguous(g, MHA_BUF_WEIGHTS, MHA_F32, N, H, L, S2);
    /* the weighted sum writes each head's columns of the [N,L,I] rows that
     * the output projection reads (concatenating heads is this view) */
    int o = add_contiguous(g, MHA_BUF_ARENA, c->dtype, N, 1, L, I);
    int oh = heads_of(g, o, H);
    mha_head_run runs[2 * MHA_MAX_HEAD_RUNS + 1];
    mha_head_runs(call->skip, H, runs, 2 * MHA_MAX_HEAD_RUNS + 1);
    for (int64_t h = 0, r = 0; h < H; h += runs[r++].count) {
        if (runs[r].computed)
            add_run(g, heads, mask, kpm, scores, probs, oh, h, runs[r].count,
                    &p);
        else
            add_skipped(g, call, o, probs, h, runs[r].count, d);
    }

    /* head-averaged weights, head outputs, gates, output projection */
    if (call->need_weights && call->average)
        add_node(g, MHA_OP_MEAN_HEADS,
                 add_contiguous(g, MHA_BUF_WEIGHTS, MHA_F32, N, 1, L, S2),
                 probs, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
    int attended = add_head_control(g, layer, call, o, oh);
    int y = add_input(g, layer, MHA_BUF_OUTPUT, call, L, E);
    add_node(g, MHA_OP_PROJECTION, y, attended,
             add_param(g, layer, params, MHA_W_O),
             add_param(g, layer, params, MHA_B_O), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
}
