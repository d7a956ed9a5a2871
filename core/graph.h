/* graph.h: the MHA computation of one call shape as a small graph of ops
 * (projections, scores, softmax, weighted sum, output projection, plus the
 * fill and head-mean ops PyTorch's options need), over tensors that are
 * views of a few buffers (heads are strided views of projected rows). graph.c builds it; plan.c turns
 * it into what a backend runs. */
#ifndef MHA_CORE_GRAPH_H
#define MHA_CORE_GRAPH_H

#include "gates.h"
#include "layer.h"

/* What a forward call looks like; plans are cached by it (compared with
 * memcmp, so always build one from a zeroed struct). */
typedef struct mha_call {
    int64_t batch, tgt_len, src_len; /* N (1 when unbatched), L, S */
    int batched;
    int has_mask, mask_per_head;     /* attn_mask given; (N*H, L, S) */
    int has_kpm;
    int causal, need_weights, average;
    int gates;        /* head_gates: 0 none, 1 [H], 2 [N, H] */
    int gate_mul;     /* a computed head's gate is not 1: multiply */
    int head_outputs; /* copy each head's output out */
    uint64_t skip[MHA_SKIP_WORDS]; /* bit h: head h is gated off for every
                                      batch item and not computed */
    int train;        /* a training forward: Q, K, V, O and the row LSE go
                         to the layer's saved buffers (MHA_BUF_SAVED_*) */
    int same_qkv;     /* query, key and value are one tensor or array
                         (self-attention: S = L, kdim = vdim = E), so one
                         projection can make Q, K and V (mha_graph_packs) */
} mha_call;

/* Buffers of a graph: the caller's, the layer's weights, and intermediates
 * that the planner places in the arena. */
typedef enum mha_buf_role {
    MHA_BUF_QUERY, MHA_BUF_KEY, MHA_BUF_VALUE, MHA_BUF_KPM, MHA_BUF_MASK,
    MHA_BUF_OUTPUT, MHA_BUF_WEIGHTS, MHA_BUF_PARAMS,
    MHA_BUF_GATES, MHA_BUF_HEAD_OUTPUTS,
    /* training (train.h): what a training forward saves, in the layout of
     * the caller's query (Q, O) and key (K, V) rows, and the row LSE */
    MHA_BUF_SAVED_Q, MHA_BUF_SAVED_K, MHA_BUF_SAVED_V, MHA_BUF_SAVED_O,
    MHA_BUF_SAVED_LSE,
    /* the backward's dY, input gradients and weight gradients (laid out as
     * the layer's weight buffer) */
    MHA_BUF_DY, MHA_BUF_DQUERY, MHA_BUF_DKEY, MHA_BUF_DVALUE,
    MHA_BUF_GRADS, MHA_BUF_DGATES,
    MHA_BUF_EXTERNAL_COUNT,
    MHA_BUF_ARENA = MHA_BUF_EXTERNAL_COUNT /* and every intermediate */
} mha_buf_role;

typedef struct mha_gbuf {
    mha_buf_role role;
    size_t bytes;
    int first_use, last_use; /* node indices, for arena placement */
    size_t arena_offset;
} mha_gbuf;

typedef struct mha_gtensor {
    mha_dtype dtype;
    int64_t ne[4], nb[4];
    int buf;       /* index into mha_graph.bufs */
    size_t offset; /* bytes into that buffer */
} mha_gtensor;

#define MHA_NO_TENSOR (-1)

typedef struct mha_gnode {
    mha_op op;
    int src[MHA_MAX_SRC]; /* tensor indices or MHA_NO_TENSOR */
    int dst;
    int extra_dst[MHA_MAX_EXTRA_DST]; /* MHA_NO_TENSOR when absent */
    mha_op_params params;
    int removed; /* fused away by the planner */
} mha_gnode;

#define MHA_GRAPH_MAX_BUFS 32
#define MHA_GRAPH_MAX_TENSORS 160
#define MHA_GRAPH_MAX_NODES 64

/* The unfused attention of one run of computed heads: its node indices. */
typedef struct mha_grun {
    int scores, softmax, weighted_sum;
    int lse; /* training: the run's heads of the saved LSE, else
                MHA_NO_TENSOR */
} mha_grun;

typedef struct mha_graph {
    mha_gbuf bufs[MHA_GRAPH_MAX_BUFS];
    int nbufs;
    mha_gtensor tensors[MHA_GRAPH_MAX_TENSORS];
    int ntensors;
    mha_gnode nodes[MHA_GRAPH_MAX_NODES];
    int nnodes;
    /* indices the planner needs: the attention of each computed run */
    mha_grun runs[MHA_MAX_HEAD_RUNS];
    int nruns;
} mha_graph;

/* Whether a graph of layer for call may project Q, K and V with one
 * PROJECTION over the packed in_proj_weight [3I, E] (self-attention of an
 * inference forward: a training forward keeps the three projections, whose
 * outputs the backward reads from the layer's saved buffers). */
int mha_graph_packs(const mha_layer *layer, const mha_call *call);

/* Builds the unfused graph of layer for call; pack (mha_graph_packs):
 * Q, K and V are column views of one [N,1,S',3I] projection. */
void mha_graph_build(const mha_layer *layer, const mha_call *call, int pack,
                     mha_graph *graph);

/* Keys including the appended bias_k and zero rows: S'. */
int64_t mha_call_keys(const mha_layer *layer, const mha_call *call);

/* ---- building blocks (graph_views.c), shared with backward_graph.c ----
 * Each returns the index of what it adds. */

/* A buffer of role and size (placed in the arena when MHA_BUF_ARENA). */
int mha_graph_buf(mha_graph *g, mha_buf_role role, size_t bytes);
/* A view of buffer buf: offset in bytes, ne and nb (elements) as
 * mha_tdesc's. */
int mha_graph_tensor(mha_graph *g, int buf, mha_dtype dtype, size_t offset,
                     const int64_t ne[4], const int64_t nb[4]);
/* A contiguous tensor filling a new buffer of the given role. */
int mha_graph_contiguous(mha_graph *g, mha_buf_role role, mha_dtype dtype,
                         int64_t n0, int64_t n1, int64_t n2, int64_t n3);
/* A node of op writing dst from sources s0..s4 (MHA_NO_TENSOR: absent);
 * further sources and extra_dst start absent. */
int mha_graph_node(mha_graph *g, mha_op op, int dst, int s0, int s1, int s2,
                   int s3, int s4);
/* A new f32 buffer of role laid out as the caller's (T, N, F), (N, T, F)
 * or (T, F) array for call and layer, seen as [N, 1, T, F]. */
int mha_graph_input(mha_graph *g, const mha_layer *layer, mha_buf_role role,
                    const mha_call *call, int64_t T, int64_t F);
/* The [1,1,rows,cols] view of slot in buffer params, laid out as the
 * layer's weight buffer (woff); MHA_NO_TENSOR for a bias of a layer
 * without bias. */
int mha_graph_param(mha_graph *g, const mha_layer *layer, int params,
                    mha_wslot slot);
/* The same in a buffer of dtype laid out by the same element offsets (the
 * backward's f32 weights and gradients of an f16 layer). */
int mha_graph_param_as(mha_graph *g, const mha_layer *layer, int params,
                       mha_wslot slot, mha_dtype dtype);
/* [N,1,rows,X] rows starting at row first of a [N,1,T,X] tensor. */
int mha_graph_rows(mha_graph *g, int whole, int64_t first, int64_t rows);
/* Heads [first, first + count) of a [N,H,T,X] tensor (MHA_NO_TENSOR
 * passes through). */
int mha_graph_head_range(mha_graph *g, int whole, int64_t first,
                         int64_t count);
/* The [N,H,T,d] head view of a [N,1,T,H*d] tensor. */
int mha_graph_heads(mha_graph *g, int whole, int64_t H);
/* attn_mask and key_padding_mask of call as additive [N,H,L,S] views
 * (MHA_BUF_MASK, MHA_BUF_KPM); returns the mask, sets *kpm. */
int mha_graph_masks(mha_graph *g, const mha_call *call, int64_t H, int *kpm);
/* The caller's head_gates ([H] or [N, H], MHA_BUF_GATES) seen as
 * [N,H,L,d] by strides. */
int mha_graph_gates(mha_graph *g, const mha_call *call, int64_t H, int64_t d);

#endif /* MHA_CORE_GRAPH_H */
