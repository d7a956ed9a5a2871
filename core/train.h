/* train.h: what a training forward saves for the backward (the layer's
 * mha_saved), the backward's cached graph, and the pieces gradients.c,
 * adamw.c and backward.c share. */
#ifndef MHA_CORE_TRAIN_H
#define MHA_CORE_TRAIN_H

#include "graph.h"

/* The saved buffers, in the order of their roles MHA_BUF_SAVED_Q .. _LSE. */
enum { MHA_SAVED_Q, MHA_SAVED_K, MHA_SAVED_V, MHA_SAVED_O, MHA_SAVED_LSE,
       MHA_SAVED_COUNT };

/* The caller's tensors a training forward references, in the order of
 * their roles MHA_BUF_QUERY .. MHA_BUF_MASK. */
enum { MHA_SAVED_INPUTS = 5 };

/* What a backward graph depends on besides the forward's call. Compared
 * with memcmp: build from a zeroed struct. */
typedef struct mha_bwd_key {
    mha_call call;
    int grads;         /* weight gradients wanted */
    int accumulate;    /* added into them */
    int want[3];       /* grad_query, grad_key, grad_value given */
    int adds[3];       /* that input gradient adds into one written before
                          it (the same tensor given twice) */
    int dgates;        /* grad_head_gates given */
} mha_bwd_key;

struct mha_saved {
    mha_call call;        /* the training forward's (train = 1) */
    uint64_t generation;  /* the layer's, when that forward ran */
    int valid;            /* that forward completed */
    const mha_tensor *inputs[MHA_SAVED_INPUTS];
    const mha_tensor *gates; /* head_gates, or NULL */
    void *buf[MHA_SAVED_COUNT];
    size_t bytes[MHA_SAVED_COUNT];
    /* the last backward's graph, kept so a repeated shape allocates
       nothing */
    int has_graph;
    mha_bwd_key key;
    mha_graph graph;
    void *arena;
    size_t arena_bytes;
};

/* Makes (or reuses, when large enough) the saved buffers for call and
 * records the caller's input tensors and head gates; the state is invalid until
 * mha_saved_commit. Binds the saved buffers into ext by role. */
mha_status mha_saved_prepare(mha_layer *layer, const char *fn,
                             const mha_call *call,
                             const mha_tensor *const inputs[MHA_SAVED_INPUTS],
                             const mha_tensor *gates,
                             void *ext[MHA_BUF_EXTERNAL_COUNT]);

/* Marks the saved state valid (ok) or not, after the forward. */
void mha_saved_commit(mha_layer *layer, int ok);

/* Frees the backward's graph and its arena (layer->saved is not NULL). */
void mha_saved_drop_graph(mha_layer *layer);

/* Frees the saved buffers and the backward's graph. NULL state: nothing. */
void mha_saved_release(mha_layer *layer);

/* Builds the backward graph of key for layer (backward_graph.c). */
void mha_backward_graph_build(const mha_layer *layer, const mha_bwd_key *key,
                              mha_graph *g);

/* Writes bytes zero bytes into buf on device. */
mha_status mha_dev_zero(mha_device *device, void *buf, size_t bytes);

/* The gradients' object, shared with adamw.c and decoder_train.c: of an
 * nn.MHA layer or of a decoder layer (exactly one of the two), one f32
 * buffer holding a gradient per weight at element offset off[i]. */
#define MHA_GRAD_MAX 9
struct mha_gradients {
    mha_layer *layer;
    mha_decoder *decoder;
    mha_device *device;
    int64_t heads;       /* the layer's when made: pruning invalidates */
    mha_tensor *flat;    /* f32; a layer's is laid out as its weight
                            buffer */
    int count;
    const char *names[MHA_GRAD_MAX];
    size_t off[MHA_GRAD_MAX], len[MHA_GRAD_MAX]; /* elements of flat */
    int dslot[MHA_GRAD_MAX]; /* a decoder's weight slot of each */
    mha_tensor *views[MHA_GRAD_MAX]; /* one per weight, shaped like it */
};

/* The [1,1,1,len[i]] f32 weight that gradient i of grads belongs to (of
 * an f32 layer or a decoder; an f16 layer's optimizer steps its master
 * copy instead). */
mha_tdesc mha_gradients_param(const mha_gradients *grads, int i);

/* [1,1,1,n] f32 at element first of buf. */
mha_tdesc mha_train_row(void *buf, size_t first, size_t n);

/* MHA_OK when t is a whole f32 tensor of device shaped as like (a
 * training forward's tensor), else the status and message naming it
 * (name: grad_output, grad_query, grad_key, grad_value or
 * grad_head_gates); shared by backward.c and decoder_train.c. */
mha_status mha_train_check_like(mha_device *device, const char *fn,
                                const char *name, const mha_tensor *t,
                                const mha_tensor *like);

/* MHA_BAD_STATE or MHA_INVALID_ARGUMENT when grads cannot be used with
 * decoder (another layer's, or made before pruning); fn names the
 * caller. */
mha_status mha_decoder_gradients_check(const mha_gradients *grads,
                                       const mha_decoder *decoder,
                                       const char *fn);

/* MHA_BAD_STATE or MHA_INVALID_ARGUMENT when grads cannot be used with
 * layer (another layer's, or made before pruning); fn names the caller. */
mha_status mha_gradients_check(const mha_gradients *grads,
                               const mha_layer *layer, const char *fn);

#endif /* MHA_CORE_TRAIN_H */
