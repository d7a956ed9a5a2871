/* plan.c: the planner and the executor. Planning happens once per layer and
 * call shape; executing binds buffers and hands each node to the backend in
 * order, then waits once. */
#include <string.h>

#include "plan.h"

#define ARENA_ALIGN 256 /* keeps every intermediate SIMD- and cache-aligned */

static void remove_node(mha_graph *g, int node) { g->nodes[node].removed = 1; }

static mha_tdesc describe(const mha_graph *g, int tensor, void *buf,
                          size_t base)
{
    mha_tdesc d;
    memset(&d, 0, sizeof d);
    if (tensor == MHA_NO_TENSOR)
        return d;
    const mha_gtensor *t = &g->tensors[tensor];
    d.dtype = t->dtype;
    memcpy(d.ne, t->ne, sizeof d.ne);
    memcpy(d.nb, t->nb, sizeof d.nb);
    d.buf = buf;
    d.offset = base + t->offset;
    return d;
}

/* The node as a backend sees it; buffers come from bind(). */
static void lower_node(const mha_graph *g, const mha_gnode *n,
                       void *const bufs[], const size_t base[],
                       mha_node *out)
{
    memset(out, 0, sizeof *out);
    out->op = n->op;
    out->params = n->params;
    for (int s = 0; s < MHA_MAX_SRC; s++) {
        int t = n->src[s];
        if (t != MHA_NO_TENSOR)
            out->src[s] = describe(g, t, bufs[g->tensors[t].buf],
                                   base[g->tensors[t].buf]);
    }
    out->dst = describe(g, n->dst, bufs[g->tensors[n->dst].buf],
                        base[g->tensors[n->dst].buf]);
    for (int e = 0; e < MHA_MAX_EXTRA_DST; e++) {
        int t = n->extra_dst[e];
        if (t != MHA_NO_TENSOR)
            out->extra_dst[e] = describe(g, t, bufs[g->tensors[t].buf],
                                         base[g->tensors[t].buf]);
    }
}

/* Placeholders: supports() looks only at whether buf is NULL. */
static void placeholder_bufs(const mha_graph *g, void *bufs[], size_t base[])
{
    for (int b = 0; b < MHA_GRAPH_MAX_BUFS; b++) {
        bufs[b] = (void *)g;
        base[b] = 0;
    }
}

/* Replaces each run's scores, softmax and weighted sum by one ATTENTION
 * node when the weights are not wanted and the backend can run it for
 * this shape; a training forward's node also saves the row LSE, and
 * must be fused (the backward needs that LSE): a backend that declines
 * it is MHA_UNSUPPORTED. */
static mha_status fuse_attention(mha_layer *layer, const char *fn,
                                 mha_plan *plan)
{
    mha_graph *g = &plan->graph;
    if (plan->call.need_weights)
        return MHA_OK;
    void *bufs[MHA_GRAPH_MAX_BUFS];
    size_t base[MHA_GRAPH_MAX_BUFS];
    placeholder_bufs(g, bufs, base);
    for (int r = 0; r < g->nruns; r++) {
        const mha_grun *run = &g->runs[r];
        mha_gnode fused = g->nodes[run->scores];
        fused.op = MHA_OP_ATTENTION;
        fused.src[MHA_SRC_V] = g->nodes[run->weighted_sum].src[1];
        fused.dst = g->nodes[run->weighted_sum].dst;
        fused.extra_dst[MHA_DST_LSE] = run->lse;
        mha_node node;
        lower_node(g, &fused, bufs, base, &node);
        if (!mha_dev_supports(layer->device, &node) && run->lse >= 0)
            return mha_graph_unsupported(layer->device, fn, &node,
                                         "a training forward");
        if (!mha_dev_supports(layer->device, &node))
            continue;
        g->nodes[run->scores] = fused;
        remove_node(g, run->softmax);
        remove_node(g, run->weighted_sum);
        plan->fused = 1;
    }
    return MHA_OK;
}

static void note_use(mha_graph *g, int tensor, int node)
{
    if (tensor == MHA_NO_TENSOR)
        return;
    mha_gbuf *b = &g->bufs[g->tensors[tensor].buf];
    if (b->first_use < 0)
        b->first_use = node;
    b->last_use = node;
}

static int lifetimes_overlap(const mha_gbuf *a, const mha_gbuf *b)
{
    return a->first_use <= b->last_use && b->first_use <= a->last_use;
}

static size_t align_up(size_t v) { return (v + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

/* First fit, largest first: an intermediate goes at the lowest offset that
 * no buffer alive at the same time occupies. */
static size_t place_in_arena(mha_graph *g)
{
    int order[MHA_GRAPH_MAX_BUFS], n = 0;
    for (int b = 0; b < g->nbufs; b++)
        if (g->bufs[b].role == MHA_BUF_ARENA && g->bufs[b].first_use >= 0)
            order[n++] = b;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && g->bufs[order[j]].bytes >
                                     g->bufs[order[j - 1]].bytes; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        mha_gbuf *b = &g->bufs[order[i]];
        size_t at = 0;
        for (int moved = 1; moved;) {
            moved = 0;
            for (int j = 0; j < i; j++) {
                const mha_gbuf *o = &g->bufs[order[j]];
                if (lifetimes_overlap(b, o) && at < o->arena_offset + o->bytes &&
                    o->arena_offset < at + b->bytes) {
                    at = align_up(o->arena_offset + o->bytes);
                    moved = 1;
                }
            }
        }
        b->arena_offset = at;
        if (at + b->bytes > total)
            total = at + b->bytes;
    }
    return total;
}

mha_status mha_graph_unsupported(mha_device *device, const char *fn,
                                 const mha_node *node, const char *what)
{
    mha_device_info info;
    mha_device_info_of(device, &info);
    return mha_error(device->ctx, MHA_UNSUPPORTED,
                     "%s: %s:%d (%s) cannot run op %s%s%s for %s of this "
                     "shape and dtype %s",
                     fn, info.backend, info.backend_index, info.name,
                     mha_op_name(node->op),
                     node->op == MHA_OP_ATTENTION &&
                             node->extra_dst[MHA_DST_LSE].buf
                         ? " saving the row LSE" : "",
                     mha_node_is_training(node)
                         ? " (a training op, issue 18)" : "",
                     what, mha_dtype_name(node->dst.dtype));
}

static mha_status check_supported(mha_device *device, const char *fn,
                                  const mha_graph *g, const char *what)
{
    void *bufs[MHA_GRAPH_MAX_BUFS];
    size_t base[MHA_GRAPH_MAX_BUFS];
    placeholder_bufs(g, bufs, base);
    for (int i = 0; i < g->nnodes; i++) {
        if (g->nodes[i].removed)
            continue;
        mha_node node;
        lower_node(g, &g->nodes[i], bufs, base, &node);
        if (!mha_dev_supports(device, &node))
            return mha_graph_unsupported(device, fn, &node, what);
    }
    return MHA_OK;
}

mha_status mha_graph_prepare(mha_device *device, const char *fn,
                             mha_graph *g, const char *what, void **arena,
                             size_t *arena_bytes)
{
    mha_status st = check_supported(device, fn, g, what);
    if (st != MHA_OK)
        return st;
    for (int i = 0; i < g->nnodes; i++) {
        if (g->nodes[i].removed)
            continue;
        for (int s = 0; s < MHA_MAX_SRC; s++)
            note_use(g, g->nodes[i].src[s], i);
        note_use(g, g->nodes[i].dst, i);
        for (int e = 0; e < MHA_MAX_EXTRA_DST; e++)
            note_use(g, g->nodes[i].extra_dst[e], i);
    }
    *arena_bytes = place_in_arena(g);
    return mha_dev_alloc(device, *arena_bytes, arena);
}

/* Builds, fuses and prepares plan's graph, with Q, K and V packed into
 * one projection or not. */
static mha_status plan_graph(mha_layer *layer, const char *fn,
                             mha_plan *plan, int pack)
{
    mha_graph_build(layer, &plan->call, pack, &plan->graph);
    plan->fused = 0;
    mha_status st = fuse_attention(layer, fn, plan);
    if (st == MHA_OK)
        st = mha_graph_prepare(layer->device, fn, &plan->graph, "a forward",
                               &plan->arena, &plan->arena_bytes);
    return st;
}

mha_status mha_plan_create(mha_layer *layer, const char *fn,
                           const mha_call *call, mha_plan **out)
{
    mha_context *ctx = layer->device->ctx;
    mha_plan *plan = mha_host_calloc(&ctx->host, 1, sizeof *plan);
    if (!plan)
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "%s: out of memory planning", fn);
    plan->call = *call;
    /* a backend that declines the packed projection's strided Q, K and V
     * views gets the three projections */
    int pack = mha_graph_packs(layer, call);
    mha_status st = plan_graph(layer, fn, plan, pack);
    if (st == MHA_UNSUPPORTED && pack)
        st = plan_graph(layer, fn, plan, 0);
    if (st == MHA_OK && mha_tune_plan(layer, call, &plan->tune) != MHA_OK)
        st = mha_error(ctx, MHA_OUT_OF_MEMORY,
                       "%s: out of memory reading the tuning database", fn);
    if (st != MHA_OK) {
        mha_plan_destroy(layer, plan); /* with the arena planned before */
        return st;
    }
    *out = plan;
    return MHA_OK;
}

mha_status mha_graph_enqueue(mha_device *device, const mha_graph *g,
                             void *arena,
                             void *const external[MHA_BUF_EXTERNAL_COUNT],
                             const mha_tune_pick *tune)
{
    void *bufs[MHA_GRAPH_MAX_BUFS];
    size_t base[MHA_GRAPH_MAX_BUFS];
    for (int b = 0; b < g->nbufs; b++) {
        mha_buf_role role = g->bufs[b].role;
        bufs[b] = role == MHA_BUF_ARENA ? arena : external[role];
        base[b] = role == MHA_BUF_ARENA ? g->bufs[b].arena_offset : 0;
    }
    for (int i = 0; i < g->nnodes; i++) {
        if (g->nodes[i].removed)
            continue;
        mha_node node;
        lower_node(g, &g->nodes[i], bufs, base, &node);
        node.variant = tune ? mha_tune_plan_variant(tune, node.op) : NULL;
        mha_status st = mha_dev_run(device, &node);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

mha_status mha_plan_enqueue(mha_layer *layer, const mha_plan *plan,
                            void *const external[MHA_BUF_EXTERNAL_COUNT])
{
    void *ext[MHA_BUF_EXTERNAL_COUNT];
    memcpy(ext, external, sizeof ext);
    ext[MHA_BUF_PARAMS] = layer->wbuf;
    return mha_graph_enqueue(layer->device, &plan->graph, plan->arena, ext,
                             &plan->tune);
}
