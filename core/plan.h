/* plan.h: a graph made ready for one device and call shape: views instead
 * of split/concat copies, the fused attention node where the backend has it
 * and weights are not asked for, and every intermediate placed in one arena
 * so that a forward of a planned shape allocates nothing. */
#ifndef MHA_CORE_PLAN_H
#define MHA_CORE_PLAN_H

#include "graph.h"

struct mha_plan {
    mha_call call;
    uint64_t last_used;
    mha_graph graph;
    int fused;
    void *arena;
    size_t arena_bytes;
    /* device buffers for the host-memory forward, made on its first use */
    void *staging[MHA_BUF_EXTERNAL_COUNT];
    size_t staging_bytes[MHA_BUF_EXTERNAL_COUNT];
    int has_staging;
    int pinned; /* enqueued without a wait: never evicted (see interop.h) */
    int transient; /* not in the layer's cache: freed after its call */
};

/* Plans call for layer; fn names the public caller in messages. */
mha_status mha_plan_create(mha_layer *layer, const char *fn,
                           const mha_call *call, mha_plan **out);

/* Hands the plan's nodes to the backend with the caller's buffers bound by
 * role (MHA_BUF_PARAMS is the layer's own); the caller syncs. */
mha_status mha_plan_enqueue(mha_layer *layer, const mha_plan *plan,
                            void *const external[MHA_BUF_EXTERNAL_COUNT]);

#endif /* MHA_CORE_PLAN_H */
