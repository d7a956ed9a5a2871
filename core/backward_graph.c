/* backward_graph.c: builds the graph of nn.MHA's backward for one call
 * shape, autograd's chain rule through the forward of graph.c: the output
 * projection's gradients, FlashAttention-2's fused attention backward
 * (ATTENTION_BACKWARD, from the saved LSE), the appended bias_k/bias_v
 * rows' gradients, and the q/k/v projections' weight, bias and input
 * gradients. Every intermediate lies in the caller's row order (the
 * training forward saved Q, K, V and O so), so a weight gradient over all
 * rows of all batch items is one MATMUL over the flattened rows; only keys
 * with appended rows in batch-first layout need one product per batch
 * item, summed by SUM_ROWS. An f16 layer's backward is the same graph in
 * f32: its training forward saved f32 Q, K, V and O, its weights are
 * first widened into the arena (ROPE's copy form), and its weight
 * gradients are f32 (the master gradients of mixed-precision training). */
#include <math.h>
#include <string.h>

#include "train.h"

/* How a [N,1,T,F] tensor's rows can be flattened into [1,1,N*T,F]:
 * bit 0 in batch-major order (row b*T + t), bit 1 in time-major order
 * (row t*N + b); both for one batch item, none when rows leave gaps. */
static int row_order(const mha_gtensor *t)
{
    int64_t N = t->ne[0], T = t->ne[2], F = t->ne[3];
    int order = 0;
    if (t->nb[3] != 1)
        return 0;
    if (t->nb[2] == F && (N == 1 || t->nb[0] == T * F))
        order |= 1;
    if ((t->nb[0] == F || N == 1) && (t->nb[2] == N * F || T == 1))
        order |= 2;
    return order;
}

/* The [1,1,N*T,F] rows of t (row_order(t) != 0): the same addresses in
 * either order. */
static int flat(mha_graph *g, int tensor)
{
    const mha_gtensor *t = &g->tensors[tensor];
    int64_t rows = t->ne[0] * t->ne[2], F = t->ne[3];
    int64_t ne[4] = {1, 1, rows, F}, nb[4] = {rows * F, rows * F, F, 1};
    return mha_graph_tensor(g, t->buf, t->dtype, t->offset, ne, nb);
}

/* The transpose of t's two inner dimensions (a view). */
static int transposed(mha_graph *g, int tensor)
{
    const mha_gtensor *t = &g->tensors[tensor];
    int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[3], t->ne[2]};
    int64_t nb[4] = {t->nb[0], t->nb[1], t->nb[3], t->nb[2]};
    return mha_graph_tensor(g, t->buf, t->dtype, t->offset, ne, nb);
}

/* t [N,1,R,X], whose items are each contiguous (or one row), seen as its
 * N items stacked as rows [1,1,N,R*X], for SUM_ROWS over the batch. */
static int items_as_rows(mha_graph *g, int tensor)
{
    const mha_gtensor *t = &g->tensors[tensor];
    int64_t ne[4] = {1, 1, t->ne[0], t->ne[2] * t->ne[3]};
    int64_t nb[4] = {0, 0, t->nb[0], 1};
    return mha_graph_tensor(g, t->buf, t->dtype, t->offset, ne, nb);
}

static int add_matmul(mha_graph *g, int dst, int a, int b, int acc)
{
    int n = mha_graph_node(g, MHA_OP_MATMUL, dst, a, b, MHA_NO_TENSOR,
                           MHA_NO_TENSOR, MHA_NO_TENSOR);
    g->nodes[n].params.accumulate = acc;
    return n;
}

static int add_sum_rows(mha_graph *g, int dst, int src, int acc)
{
    int n = mha_graph_node(g, MHA_OP_SUM_ROWS, dst, src, MHA_NO_TENSOR,
                           MHA_NO_TENSOR, MHA_NO_TENSOR, MHA_NO_TENSOR);
    g->nodes[n].params.accumulate = acc;
    return n;
}

/* A [1,1,rows,cols] gradient viewed as one row [1,1,1,rows*cols]. */
static int one_row(mha_graph *g, int tensor)
{
    const mha_gtensor *t = &g->tensors[tensor];
    int64_t n = t->ne[2] * t->ne[3];
    int64_t ne[4] = {1, 1, 1, n}, nb[4] = {n, n, n, 1};
    return mha_graph_tensor(g, t->buf, t->dtype, t->offset, ne, nb);
}

/* gw [1,1,F,K] (+)= sum over every row r of G_r^T X_r, with G [N,1,T,F]
 * and X [N,1,T,K]: one product over the flattened rows when both flatten
 * in the same order, else one per batch item into a [N,1,F,K] partial
 * that SUM_ROWS reduces. */
static void weight_grad(mha_graph *g, int gw, int G, int X, int acc)
{
    const mha_gtensor *gt = &g->tensors[G];
    if (row_order(gt) & row_order(&g->tensors[X])) {
        add_matmul(g, gw, transposed(g, flat(g, G)), flat(g, X), acc);
        return;
    }
    const mha_gtensor *w = &g->tensors[gw];
    int part = mha_graph_contiguous(g, MHA_BUF_ARENA, MHA_F32, gt->ne[0], 1,
                                    w->ne[2], w->ne[3]);
    add_matmul(g, part, transposed(g, G), X, 0);
    add_sum_rows(g, one_row(g, gw), items_as_rows(g, part), acc);
}

/* gb [1,1,1,F] (+)= the sum of G's [N,1,T,F] rows. */
static void bias_grad(mha_graph *g, int gb, int G, int acc)
{
    const mha_gtensor *gt = &g->tensors[G];
    if (row_order(gt)) {
        add_sum_rows(g, gb, flat(g, G), acc);
        return;
    }
    int part = mha_graph_contiguous(g, MHA_BUF_ARENA, MHA_F32, gt->ne[0], 1,
                                    1, gt->ne[3]);
    add_sum_rows(g, part, G, 0);
    add_sum_rows(g, gb, items_as_rows(g, part), acc);
}

/* dX [N,1,T,K] (+)= G [N,1,T,F] W [1,1,F,K]: over the flattened rows
 * when both flatten in the same order, else per batch item with W
 * broadcast by zero strides. */
static void input_grad(mha_graph *g, int dX, int G, int W, int acc)
{
    if (row_order(&g->tensors[G]) & row_order(&g->tensors[dX])) {
        add_matmul(g, flat(g, dX), flat(g, G), W, acc);
        return;
    }
    const mha_gtensor *w = &g->tensors[W];
    int64_t ne[4] = {g->tensors[G].ne[0], 1, w->ne[2], w->ne[3]};
    int64_t nb[4] = {0, 0, w->nb[2], w->nb[3]};
    add_matmul(g, dX, G, mha_graph_tensor(g, w->buf, w->dtype, w->offset, ne,
                                          nb), acc);
}

/* A weight or gradient of slot in buffer buf: f32, laid out by the
 * layer's element offsets. */
static int param(mha_graph *g, const mha_layer *layer, int buf,
                 mha_wslot slot)
{
    return mha_graph_param_as(g, layer, buf, slot, MHA_F32);
}

/* dst = src converted (ROPE with rope_dims 0: a strided copy that
 * converts the dtype). */
static void add_copy(mha_graph *g, int dst, int src)
{
    mha_graph_node(g, MHA_OP_ROPE, dst, src, MHA_NO_TENSOR, MHA_NO_TENSOR,
                   MHA_NO_TENSOR, MHA_NO_TENSOR);
}

/* [1,1,1,n] of dtype at the start of buffer buf. */
static int whole_row(mha_graph *g, int buf, mha_dtype dtype, int64_t n)
{
    int64_t ne[4] = {1, 1, 1, n}, nb[4] = {n, n, n, 1};
    return mha_graph_tensor(g, buf, dtype, 0, ne, nb);
}

/* The layer's weights as an f32 buffer: its own, or an f16 layer's
 * widened into the arena. */
static int f32_params(mha_graph *g, const mha_layer *layer)
{
    int params = mha_graph_buf(g, MHA_BUF_PARAMS, layer->wbytes);
    if (layer->cfg.dtype == MHA_F32)
        return params;
    int64_t n = (int64_t)mha_layer_welems(layer);
    int wide = mha_graph_buf(g, MHA_BUF_ARENA, (size_t)n * 4);
    add_copy(g, whole_row(g, wide, MHA_F32, n),
             whole_row(g, params, layer->cfg.dtype, n));
    return wide;
}

/* The tensors the backward reads: the caller's inputs and dY, the saved
 * state, the weights, and where the weight gradients go. */
typedef struct bwd_sources {
    int x[3];     /* query, key, value rows [N,1,T,F] */
    int saved[4]; /* Q, K, V, O rows [N,1,T,I] */
    int lse;      /* [N,H,1,L] */
    int dy;       /* [N,1,L,E] */
    int params, grads; /* buffers laid out as the layer's weights */
    int mask, kpm;
    int gates;    /* [N,H,L,d] view of head_gates, when they multiply */
} bwd_sources;

static void add_sources(mha_graph *g, const mha_layer *layer,
                        const mha_call *call, int grads, bwd_sources *s)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t L = call->tgt_len, S = call->src_len, I = mha_layer_inner(layer);
    int64_t S2 = mha_call_keys(layer, call);
    int64_t len[4] = {L, S2, S2, L}, feat[3] = {c->embed_dim, c->kdim,
                                                c->vdim};
    for (int i = 0; i < 3; i++)
        s->x[i] = mha_graph_input(g, layer, (mha_buf_role)(MHA_BUF_QUERY + i),
                                  call, i ? S : L, feat[i]);
    for (int i = 0; i < 4; i++)
        s->saved[i] = mha_graph_input(g, layer,
                                      (mha_buf_role)(MHA_BUF_SAVED_Q + i),
                                      call, len[i], I);
    s->lse = mha_graph_contiguous(g, MHA_BUF_SAVED_LSE, MHA_F32, call->batch,
                                  layer->heads, 1, L);
    s->dy = mha_graph_input(g, layer, MHA_BUF_DY, call, L, c->embed_dim);
    s->params = f32_params(g, layer);
    s->grads = grads ? mha_graph_buf(g, MHA_BUF_GRADS,
                                     mha_layer_welems(layer) * 4)
                     : -1;
    s->mask = mha_graph_masks(g, call, layer->heads, &s->kpm);
    s->gates = call->gate_mul ? mha_graph_gates(g, call, layer->heads,
                                                layer->head_dim)
                              : MHA_NO_TENSOR;
}

static int add_mul(mha_graph *g, int dst, int x, int f)
{
    return mha_graph_node(g, MHA_OP_MUL, dst, x, f, MHA_NO_TENSOR,
                          MHA_NO_TENSOR, MHA_NO_TENSOR);
}

/* What out_proj read: O, or O times the head gates (recomputed). */
static int attended(mha_graph *g, const mha_layer *layer,
                    const mha_call *call, const bwd_sources *s)
{
    if (!call->gate_mul)
        return s->saved[3];
    int64_t H = layer->heads;
    int gated = mha_graph_input(g, layer, MHA_BUF_ARENA, call, call->tgt_len,
                                mha_layer_inner(layer));
    add_mul(g, mha_graph_heads(g, gated, H), mha_graph_heads(g, s->saved[3], H),
            s->gates);
    return gated;
}

/* dL/dg of the head gates from dG = dL/d(g O) [N,1,L,I]: the sum over
 * each head's rows and features of dG O, per batch item ([N, H] gates)
 * or over the batch too ([H]), through SUM_ROWS over views. */
static void gates_grad(mha_graph *g, const mha_layer *layer,
                       const mha_call *call, const bwd_sources *s, int dG)
{
    int64_t N = call->batch, H = layer->heads, d = layer->head_dim;
    int prod = mha_graph_contiguous(g, MHA_BUF_ARENA, MHA_F32, N, H,
                                    call->tgt_len, d);
    add_mul(g, prod, mha_graph_heads(g, dG, H),
            mha_graph_heads(g, s->saved[3], H));
    int rows = mha_graph_contiguous(g, MHA_BUF_ARENA, MHA_F32, N, H, 1, d);
    add_sum_rows(g, rows, prod, 0);
    int per = call->gates == 2
                  ? mha_graph_contiguous(g, MHA_BUF_DGATES, MHA_F32, N, H, 1,
                                         1)
                  : mha_graph_contiguous(g, MHA_BUF_ARENA, MHA_F32, N, H, 1,
                                         1);
    add_sum_rows(g, per, transposed(g, rows), 0);
    if (call->gates == 2)
        return;
    int64_t ne[4] = {1, 1, N, H}, nb[4] = {0, 0, H, 1};
    add_sum_rows(g, mha_graph_contiguous(g, MHA_BUF_DGATES, MHA_F32, 1, 1, 1,
                                         H),
                 mha_graph_tensor(g, g->tensors[per].buf, MHA_F32, 0, ne, nb),
                 0);
}

/* The fused attention backward: dQ, dK, dV (rows [N,1,T,I] in the arena)
 * from dO = dY Wo (times the gates, whose gradient comes on the way). */
static void attention_backward(mha_graph *g, const mha_layer *layer,
                               const mha_call *call, const bwd_sources *s,
                               int dgates, int dqkv[3])
{
    int64_t L = call->tgt_len, I = mha_layer_inner(layer), H = layer->heads;
    int64_t S2 = mha_call_keys(layer, call);
    int dO = mha_graph_input(g, layer, MHA_BUF_ARENA, call, L, I);
    int dG = call->gate_mul
                 ? mha_graph_input(g, layer, MHA_BUF_ARENA, call, L, I)
                 : dO;
    input_grad(g, dG, s->dy, param(g, layer, s->params, MHA_W_O),
               0);
    if (dgates)
        gates_grad(g, layer, call, s, dG);
    if (call->gate_mul)
        add_mul(g, mha_graph_heads(g, dO, H), mha_graph_heads(g, dG, H),
                s->gates);
    for (int i = 0; i < 3; i++)
        dqkv[i] = mha_graph_input(g, layer, MHA_BUF_ARENA, call,
                                  i ? S2 : L, I);
    int n = mha_graph_node(g, MHA_OP_ATTENTION_BACKWARD,
                           mha_graph_heads(g, dqkv[0], H),
                           mha_graph_heads(g, s->saved[0], H),
                           mha_graph_heads(g, s->saved[1], H), s->mask,
                           s->kpm, mha_graph_heads(g, s->saved[2], H));
    mha_gnode *node = &g->nodes[n];
    node->src[MHA_SRC_BWD_O] = mha_graph_heads(g, s->saved[3], H);
    node->src[MHA_SRC_BWD_DO] = mha_graph_heads(g, dO, H);
    node->src[MHA_SRC_BWD_LSE] = s->lse;
    node->extra_dst[MHA_DST_DK] = mha_graph_heads(g, dqkv[1], H);
    node->extra_dst[MHA_DST_DV] = mha_graph_heads(g, dqkv[2], H);
    node->params.scale = (float)(1.0 / sqrt((double)layer->head_dim));
    node->params.causal = call->causal ? MHA_CAUSAL_TOP_LEFT
                                       : MHA_CAUSAL_NONE;
    node->params.mask_cols = call->src_len;
}

void mha_backward_graph_build(const mha_layer *layer, const mha_bwd_key *key,
                              mha_graph *g)
{
    static const mha_wslot w_slot[3] = {MHA_W_Q, MHA_W_K, MHA_W_V};
    static const mha_wslot b_slot[3] = {MHA_B_Q, MHA_B_K, MHA_B_V};
    static const mha_wslot extra_slot[2] = {MHA_BIAS_K, MHA_BIAS_V};
    const mha_call *call = &key->call;
    const mha_layer_config *c = &layer->cfg;
    int64_t L = call->tgt_len, S = call->src_len;
    int64_t feat[3] = {c->embed_dim, c->kdim, c->vdim};
    int acc = key->accumulate;
    bwd_sources s;
    memset(g, 0, sizeof *g);
    add_sources(g, layer, call, key->grads, &s);

    /* out_proj: dWo = dY^T O (gated), dbo = sum of dY's rows */
    if (key->grads) {
        weight_grad(g, param(g, layer, s.grads, MHA_W_O), s.dy,
                    attended(g, layer, call, &s), acc);
        if (c->bias)
            bias_grad(g, param(g, layer, s.grads, MHA_B_O), s.dy,
                      acc);
    }
    int d[3];
    attention_backward(g, layer, call, &s, key->dgates, d);

    /* bias_k, bias_v: their row S of dK, dV summed over the batch; the
     * add_zero_attn row after it has no parameter */
    for (int i = 0; key->grads && c->add_bias_kv && i < 2; i++)
        add_sum_rows(g, param(g, layer, s.grads, extra_slot[i]),
                     items_as_rows(g, mha_graph_rows(g, d[1 + i], S, 1)),
                     acc);

    /* q/k/v projections over the real rows: weights, biases, inputs */
    for (int i = 0; i < 3; i++) {
        int G = i ? mha_graph_rows(g, d[i], 0, S) : d[0];
        if (key->grads) {
            weight_grad(g, param(g, layer, s.grads, w_slot[i]), G,
                        s.x[i], acc);
            if (c->bias)
                bias_grad(g, param(g, layer, s.grads, b_slot[i]),
                          G, acc);
        }
        if (key->want[i])
            input_grad(g,
                       mha_graph_input(g, layer,
                                       (mha_buf_role)(MHA_BUF_DQUERY + i),
                                       call, i ? S : L, feat[i]),
                       G, param(g, layer, s.params, w_slot[i]),
                       key->adds[i]);
    }
}
