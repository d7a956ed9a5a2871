/* graph_views.c: the primitives graphs are built from (buffers, tensors
 * that are views of them, nodes), shared by the forward's builder
 * (graph.c) and the backward's (backward_graph.c). */
#include <string.h>

#include "graph.h"

int mha_graph_buf(mha_graph *g, mha_buf_role role, size_t bytes)
{
    mha_gbuf *b = &g->bufs[g->nbufs];
    memset(b, 0, sizeof *b);
    b->role = role;
    b->bytes = bytes;
    b->first_use = b->last_use = -1;
    return g->nbufs++;
}

int mha_graph_tensor(mha_graph *g, int buf, mha_dtype dtype, size_t offset,
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
int mha_graph_contiguous(mha_graph *g, mha_buf_role role, mha_dtype dtype,
                          int64_t n0, int64_t n1, int64_t n2, int64_t n3)
{
    int64_t ne[4] = {n0, n1, n2, n3};
    int64_t nb[4] = {n1 * n2 * n3, n2 * n3, n3, 1};
    size_t bytes = (size_t)(n0 * n1 * n2 * n3) * mha_dtype_storage_size(dtype);
    return mha_graph_tensor(g, mha_graph_buf(g, role, bytes), dtype, 0, ne, nb);
}

int mha_graph_node(mha_graph *g, mha_op op, int dst, int s0, int s1, int s2,
                    int s3, int s4)
{
    mha_gnode *n = &g->nodes[g->nnodes];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->dst = dst;
    int src[5] = {s0, s1, s2, s3, s4};
    for (int s = 0; s < MHA_MAX_SRC; s++)
        n->src[s] = s < 5 ? src[s] : MHA_NO_TENSOR;
    for (int e = 0; e < MHA_MAX_EXTRA_DST; e++)
        n->extra_dst[e] = MHA_NO_TENSOR;
    return g->nnodes++;
}

/* A caller's (T, N, F) or (N, T, F) array seen as [N, 1, T, F]. */
int mha_graph_input(mha_graph *g, const mha_layer *layer, mha_buf_role role,
                     const mha_call *call, int64_t T, int64_t F)
{
    int64_t N = call->batch;
    int64_t ne[4] = {N, 1, T, F};
    int64_t nb[4] = {T * F, 0, F, 1};
    if (call->batched && !layer->cfg.batch_first) {
        nb[0] = F;
        nb[2] = N * F;
    }
    int buf = mha_graph_buf(g, role, (size_t)(N * T * F) * 4);
    return mha_graph_tensor(g, buf, MHA_F32, 0, ne, nb);
}

/* A [1,1,rows,cols] (or bias [1,1,1,cols]) view of the layer's weights
 * (for the kept heads: mha_layer_slot_shape). */
int mha_graph_param(mha_graph *g, const mha_layer *layer, int params,
                     mha_wslot slot)
{
    return mha_graph_param_as(g, layer, params, slot, layer->cfg.dtype);
}

int mha_graph_param_as(mha_graph *g, const mha_layer *layer, int params,
                       mha_wslot slot, mha_dtype dtype)
{
    if ((slot == MHA_B_Q || slot == MHA_B_K || slot == MHA_B_V ||
         slot == MHA_B_O) && !layer->cfg.bias)
        return MHA_NO_TENSOR;
    int64_t rows, cols;
    mha_layer_slot_shape(layer, slot, &rows, &cols);
    int64_t ne[4] = {1, 1, rows, cols};
    int64_t nb[4] = {rows * cols, rows * cols, cols, 1};
    size_t es = mha_dtype_storage_size(dtype);
    return mha_graph_tensor(g, params, dtype, layer->woff[slot] * es, ne, nb);
}

/* [N,1,rows,E] rows starting at row `first` of a [N, T, E] buffer. */
int mha_graph_rows(mha_graph *g, int whole, int64_t first, int64_t rows)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], 1, rows, w->ne[3]};
    size_t offset = w->offset + (size_t)(first * w->nb[2]) *
                                    mha_dtype_storage_size(w->dtype);
    return mha_graph_tensor(g, w->buf, w->dtype, offset, ne, w->nb);
}

/* Heads [first, first + count) of a [N,H,T,X] tensor (a view). */
int mha_graph_head_range(mha_graph *g, int whole, int64_t first, int64_t count)
{
    if (whole == MHA_NO_TENSOR)
        return MHA_NO_TENSOR;
    const mha_gtensor *w = &g->tensors[whole];
    int64_t ne[4] = {w->ne[0], count, w->ne[2], w->ne[3]};
    size_t offset = w->offset + (size_t)(first * w->nb[1]) *
                                    mha_dtype_storage_size(w->dtype);
    return mha_graph_tensor(g, w->buf, w->dtype, offset, ne, w->nb);
}

/* The [N,H,T,d] head view of a [N,1,T,E] tensor (no copy). */
int mha_graph_heads(mha_graph *g, int whole, int64_t H)
{
    const mha_gtensor *w = &g->tensors[whole];
    int64_t d = w->ne[3] / H;
    int64_t ne[4] = {w->ne[0], H, w->ne[2], d};
    int64_t nb[4] = {w->nb[0], d, w->nb[2], 1};
    return mha_graph_tensor(g, w->buf, w->dtype, w->offset, ne, nb);
}

/* attn_mask (L,S) or (N*H,L,S), and key_padding_mask (N,S) or (S), seen as
 * additive [N,H,L,S] through zero strides. */
int mha_graph_masks(mha_graph *g, const mha_call *call, int64_t H,
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
        int buf = mha_graph_buf(g, MHA_BUF_MASK, (size_t)(heads * L * S) * 4);
        mask = mha_graph_tensor(g, buf, MHA_F32, 0, ne, nb);
    }
    if (call->has_kpm) {
        int64_t nb[4] = {S, 0, 0, 1};
        int buf = mha_graph_buf(g, MHA_BUF_KPM, (size_t)(N * S) * 4);
        *kpm = mha_graph_tensor(g, buf, MHA_F32, 0, ne, nb);
    }
    return mask;
}

/* The caller's head_gates ([H] or [N, H]) seen as [N,H,L,d] by strides. */
int mha_graph_gates(mha_graph *g, const mha_call *call, int64_t H, int64_t d)
{
    int64_t N = call->batch;
    int64_t ne[4] = {N, H, call->tgt_len, d};
    int64_t nb[4] = {call->gates == 2 ? H : 0, 1, 0, 0};
    int buf = mha_graph_buf(g, MHA_BUF_GATES,
                      (size_t)((call->gates == 2 ? N : 1) * H) * 4);
    return mha_graph_tensor(g, buf, MHA_F32, 0, ne, nb);
}
