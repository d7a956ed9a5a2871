/* plan.h: a graph made ready for one device and call shape: the fused
 * attention node where the backend has it and weights are not asked for,
 * and every intermediate placed in one arena so that a forward of a planned
 * shape allocates nothing; the layer's cache of plans and the host-memory
 * forward's staging. */
#ifndef MHA_CORE_PLAN_H
#define MHA_CORE_PLAN_H

#include "graph.h"

/* The variants the tuning database picks for a plan's matmul and
 * attention nodes (tune.c); NULL: none. */
typedef struct mha_tune_pick {
    const char *matmul, *attention;
} mha_tune_pick;

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
    mha_tune_pick tune;
};

/* ---- tuning (tune.c) ---- */

/* Looks up the tuning database for layer's shape class of call on its
 * device (read on the first plan), as MHA_TUNE allows, into *pick.
 * MHA_OUT_OF_MEMORY when host memory for reading it runs out. */
mha_status mha_tune_plan(const mha_layer *layer, const mha_call *call,
                         mha_tune_pick *pick);
/* The variant pick gives a node of op (NULL: none). */
const char *mha_tune_plan_variant(const mha_tune_pick *pick, mha_op op);

/* Plans call for layer; fn names the public caller in messages. */
mha_status mha_plan_create(mha_layer *layer, const char *fn,
                           const mha_call *call, mha_plan **out);

/* Hands the plan's nodes to the backend with the caller's buffers bound by
 * role (MHA_BUF_PARAMS is the layer's own); the caller syncs. */
mha_status mha_plan_enqueue(mha_layer *layer, const mha_plan *plan,
                            void *const external[MHA_BUF_EXTERNAL_COUNT]);

/* ---- graphs of any kind (the forward's, the backward's) ---- */

/* Checks that the device runs every node of g (MHA_UNSUPPORTED naming the
 * device, the op and what: "a forward", "a backward"), places the
 * intermediates in one arena and allocates it. */
mha_status mha_graph_prepare(mha_device *device, const char *fn,
                             mha_graph *g, const char *what, void **arena,
                             size_t *arena_bytes);

/* Hands g's nodes to the device with the buffers of external roles bound
 * from external (MHA_BUF_PARAMS included) and each node's kernel variant
 * from tune (NULL: the backend's own choice); the caller syncs. */
mha_status mha_graph_enqueue(mha_device *device, const mha_graph *g,
                             void *arena,
                             void *const external[MHA_BUF_EXTERNAL_COUNT],
                             const mha_tune_pick *tune);

/* MHA_UNSUPPORTED for a node the device declines, naming the device, the
 * op and what needed it. */
mha_status mha_graph_unsupported(mha_device *device, const char *fn,
                                 const mha_node *node, const char *what);

/* ---- the layer's plan cache (plan_cache.c) ---- */

/* The cached plan for call, made when missing in a free slot or in place
 * of the least recently used plan that is not pinned. When every slot is
 * pinned, a call that waits for its result (waits) gets a transient plan of
 * its own, which mha_plan_release frees; one that only enqueues is refused
 * (fn names the caller in the message). */
mha_status mha_plan_get(mha_layer *layer, const char *fn,
                        const mha_call *call, int waits, mha_plan **out);
/* Frees plan after its call when it is transient; NULL does nothing. */
void mha_plan_release(mha_layer *layer, mha_plan *plan);
/* Frees plan, its arena and its staging buffers; NULL does nothing. */
void mha_plan_destroy(mha_layer *layer, mha_plan *plan);

/* ---- host staging (staging.c) ---- */

/* Runs plan on the host arrays of a (validated against the plan's call):
 * uploads them into the plan's staging buffers (made on first use), runs,
 * waits, and reads out_count output and w_count weight floats back. */
mha_status mha_plan_run_host(mha_layer *layer, mha_plan *plan,
                             const mha_host_forward_args *a,
                             size_t out_count, size_t w_count);

#endif /* MHA_CORE_PLAN_H */
