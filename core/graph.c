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

/* A [1,1,rows,cols] (or bias [1,1,1,cols]) view of the layer's weights. */
static int add_param(mha_graph *g, const mha_layer *layer, int params,
                     mha_wslot slot, int64_t rows, int64_t cols)
{
    if ((slot == MHA_B_Q || slot == MHA_B_K || slot == MHA_B_V ||
         slot == MHA_B_O) && !layer->cfg.bias)
        return MHA_NO_TENSOR;
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

/* The [N,H,T,d] head view of a [N,1,T,E] tensor (no copy). */
static int heads_of(mha_graph *g, int whole, int64_t H)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t d = w->ne[3] / H;
    int64_t ne[4] = {w->ne[0], H, w->ne[2], d};
    int64_t nb[4] = {w->nb[0], d, w->nb[2], 1};
    return add_tensor(g, w->buf, w->dtype, w->offset, ne, nb);
}

/* Projects input x with slot's weight into rows [0, T) of a new [N,T',E]
 * intermediate, then appends bias_k/v and zero rows when configured. */
static int project_kv(mha_graph *g, const mha_layer *layer,
                      const mha_call *call, int params, int x, mha_wslot w,
                      mha_wslot b, mha_wslot extra, int64_t features)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t N = call->batch, S = call->src_len, E = c->embed_dim;
    int64_t S2 = mha_call_keys(layer, call);
    int whole = add_contiguous(g, MHA_BUF_ARENA, c->dtype, N, 1, S2, E);
    add_node(g, MHA_OP_PROJECTION, rows_of(g, whole, 0, S),
             x, add_param(g, layer, params, w, E, features),
             add_param(g, layer, params, b, 1, E), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    int64_t row = S;
    if (c->add_bias_kv)
        add_node(g, MHA_OP_FILL_ROWS, rows_of(g, whole, row++, 1),
                 add_param(g, layer, params, extra, 1, E), MHA_NO_TENSOR,
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

void mha_graph_build(const mha_layer *layer, const mha_call *call,
                     mha_graph *g)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t N = call->batch, L = call->tgt_len, S = call->src_len;
    int64_t E = c->embed_dim, H = c->num_heads, d = layer->head_dim;
    int64_t S2 = mha_call_keys(layer, call);
    memset(g, 0, sizeof *g);

    int xq = add_input(g, layer, MHA_BUF_QUERY, call, L, E);
    int xk = add_input(g, layer, MHA_BUF_KEY, call, S, c->kdim);
    int xv = add_input(g, layer, MHA_BUF_VALUE, call, S, c->vdim);
    size_t wbytes = (layer->woff[MHA_WSLOT_COUNT - 1] +
                     layer->wlen[MHA_WSLOT_COUNT - 1]) *
                    mha_dtype_storage_size(c->dtype);
    int params = add_buf(g, MHA_BUF_PARAMS, wbytes);

    /* projection */
    int q = add_contiguous(g, MHA_BUF_ARENA, c->dtype, N, 1, L, E);
    add_node(g, MHA_OP_PROJECTION, q, xq,
             add_param(g, layer, params, MHA_W_Q, E, E),
             add_param(g, layer, params, MHA_B_Q, 1, E), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
    int k = project_kv(g, layer, call, params, xk, MHA_W_K, MHA_B_K,
                       MHA_BIAS_K, c->kdim);
    int v = project_kv(g, layer, call, params, xv, MHA_W_V, MHA_B_V,
                       MHA_BIAS_V, c->vdim);

    /* heads: [N,H,T,d] views of the projections' rows, no copies */
    int qkv[3] = {q, k, v}, heads[3];
    for (int i = 0; i < 3; i++)
        heads[i] = heads_of(g, qkv[i], H);

    /* scaled scores, softmax, weighted sum */
    int kpm, mask = add_masks(g, call, H, &kpm);
    int scores = add_contiguous(g, MHA_BUF_ARENA, MHA_F32, N, H, L, S2);
    g->scores = add_node(g, MHA_OP_SCORES, scores, heads[0], heads[1], mask,
                         kpm, MHA_NO_TENSOR);
    mha_op_params p = {.scale = (float)(1.0 / sqrt((double)d)),
                       .causal = call->causal ? MHA_CAUSAL_TOP_LEFT
                                              : MHA_CAUSAL_NONE,
                       .mask_cols = S};
    g->nodes[g->scores].params = p;
    int probs = scores;
    if (call->need_weights && !call->average)
        probs = add_contiguous(g, MHA_BUF_WEIGHTS, MHA_F32, N, H, L, S2);
    g->softmax = add_node(g, MHA_OP_SOFTMAX, probs, scores, MHA_NO_TENSOR,
                          MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    /* the weighted sum writes each head's columns of the [N,L,E] rows that
     * the output projection reads (concatenating heads is this view) */
    int o = add_contiguous(g, MHA_BUF_ARENA, c->dtype, N, 1, L, E);
    g->weighted_sum = add_node(g, MHA_OP_WEIGHTED_SUM, heads_of(g, o, H),
                               probs, heads[2],
                               MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    g->nodes[g->weighted_sum].params = p;

    /* head-averaged weights and output projection */
    if (call->need_weights && call->average)
        add_node(g, MHA_OP_MEAN_HEADS,
                 add_contiguous(g, MHA_BUF_WEIGHTS, MHA_F32, N, 1, L, S2),
                 probs, MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR,
                 MHA_NO_TENSOR);
    int y = add_input(g, layer, MHA_BUF_OUTPUT, call, L, E);
    add_node(g, MHA_OP_PROJECTION, y, o,
             add_param(g, layer, params, MHA_W_O, E, E),
             add_param(g, layer, params, MHA_B_O, 1, E), MHA_NO_TENSOR,
             MHA_NO_TENSOR);
}
