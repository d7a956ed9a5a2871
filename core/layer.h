/* layer.h: the private form of mha_layer and its weight slots, shared by
 * layer.c (config, weights), layer_load.c, the planner and forward.c. */
#ifndef MHA_CORE_LAYER_H
#define MHA_CORE_LAYER_H

#include "context.h"

/* Slots of the layer's weight buffer, in buffer order: q, k and v weights
 * and biases are adjacent so PyTorch's packed in_proj_weight and
 * in_proj_bias are each one contiguous write. */
typedef enum mha_wslot {
    MHA_W_Q, MHA_W_K, MHA_W_V,
    MHA_B_Q, MHA_B_K, MHA_B_V,
    MHA_W_O, MHA_B_O,
    MHA_BIAS_K, MHA_BIAS_V,
    MHA_WSLOT_COUNT
} mha_wslot;

/* One state_dict entry: which slots it fills and its PyTorch shape. */
typedef struct mha_weight_spec {
    const char *name;
    mha_wslot first;
    int slots;
    int ndim;
    int64_t shape[3];
} mha_weight_spec;

#define MHA_PLAN_CACHE 4

typedef struct mha_plan mha_plan;
typedef struct mha_saved mha_saved; /* train.h */

struct mha_layer {
    mha_device *device;
    mha_layer_config cfg;  /* kdim and vdim resolved; num_heads is the
                              original head count, pruning keeps it */
    int64_t head_dim;
    int64_t heads;         /* heads the layer still has (pruning lowers it) */
    int64_t *kept;         /* [heads]: their original indices, ascending */
    void *wbuf;
    size_t wbytes;
    size_t woff[MHA_WSLOT_COUNT]; /* elements */
    size_t wlen[MHA_WSLOT_COUNT]; /* elements */
    unsigned set;                 /* bit per slot that has been written */
    mha_plan *plans[MHA_PLAN_CACHE];
    uint64_t clock;               /* for least-recently-used eviction */
    uint64_t generation; /* counts changes of the weights (written,
                            pruned, stepped), so a backward sees whether
                            they changed since its training forward */
    mha_saved *saved;    /* the last training forward's state, or NULL */
};

/* Q/K/V/O width of the kept heads: heads * head_dim (E until pruned). */
static inline int64_t mha_layer_inner(const mha_layer *layer)
{
    return layer->heads * layer->head_dim;
}

/* Elements of the weight buffer (wbytes in the layer's dtype); a
 * training object's f32 buffers laid out as the weights hold this many. */
static inline size_t mha_layer_welems(const mha_layer *layer)
{
    return layer->wbytes / mha_dtype_storage_size(layer->cfg.dtype);
}

/* The 2-D shape of a slot's weight for the kept heads ([rows, cols]; a bias
 * is [1, cols]) and along which axis its heads lie, each head_dim wide:
 * 1 rows (q/k/v weights), 2 columns (out_proj.weight, the q/k/v biases,
 * bias_k/v), 0 none (out_proj.bias). */
int mha_layer_slot_shape(const mha_layer *layer, mha_wslot slot,
                         int64_t *rows, int64_t *cols);

/* Lays the slots out in one buffer for the kept heads (woff, wlen);
 * returns the total element count. */
size_t mha_layer_layout_slots(mha_layer *layer);

/* The state_dict entries this layer needs, in a fixed order; returns the
 * count (at most 8). */
int mha_layer_weight_specs(const mha_layer *layer, mha_weight_spec *specs);

/* Every state_dict name nn.MultiheadAttention can have, for messages about
 * names that exist in PyTorch but not for this configuration. */
int mha_is_mha_weight_name(const char *name);

/* Whether a tensor of this shape fits spec. bias_k and bias_v are
 * (1, 1, E) in PyTorch; (E) is accepted too. */
int mha_weight_shape_matches(const mha_weight_spec *spec, int ndim,
                             const int64_t *shape);

/* MHA_MISSING_WEIGHT naming the first weight the layer needs that was
 * never set (fn names the caller). */
mha_status mha_layer_check_set(const mha_layer *layer, const char *fn);

/* Finds the spec of a state_dict name for this layer, or fails with a
 * message that says why the name does not apply (fn names the caller). */
mha_status mha_find_weight_spec(mha_layer *layer, const char *fn,
                                const char *name, mha_weight_spec *out);

/* Writes count fp32 values into the weight slots starting at first, at
 * element offset within them, converting to the layer's dtype. */
mha_status mha_layer_write_weight(mha_layer *layer, mha_wslot first,
                                  size_t offset, const float *data,
                                  size_t count);

#endif /* MHA_CORE_LAYER_H */
