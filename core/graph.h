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
} mha_call;



/* Buffers of a graph: the caller's, the layer's weights, and intermediates
 * that the planner places in the arena. */
typedef enum mha_buf_role {
    MHA_BUF_QUERY, MHA_BUF_KEY, MHA_BUF_VALUE, MHA_BUF_KPM, MHA_BUF_MASK,
    MHA_BUF_OUTPUT, MHA_BUF_WEIGHTS, MHA_BUF_PARAMS,
    MHA_BUF_GATES, MHA_BUF_HEAD_OUTPUTS,
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
    mha_op_params params;
    int removed; /* fused away by the planner */
} mha_gnode;

#define MHA_GRAPH_MAX_BUFS 24
#define MHA_GRAPH_MAX_TENSORS 160
#define MHA_GRAPH_MAX_NODES 64

/* The unfused attention of one run of computed heads: its node indices. */
typedef struct mha_grun {
    int scores, softmax, weighted_sum;
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

/* Builds the unfused graph of layer for call. */
void mha_graph_build(const mha_layer *layer, const mha_call *call,
                     mha_graph *graph);

/* Keys including the appended bias_k and zero rows: S'. */
int64_t mha_call_keys(const mha_layer *layer, const mha_call *call);

#endif /* MHA_CORE_GRAPH_H */
