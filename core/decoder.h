/* decoder.h: the private form of mha_decoder and its weight slots, shared
 * by decoder.c (config, weights, forward) and decoder_load.c. */
#ifndef MHA_CORE_DECODER_H
#define MHA_CORE_DECODER_H

#include "context.h"

/* The layer's f32 weights, a device buffer each (one buffer for all would
 * pass the storage-buffer range of many GPUs: 168 MiB for Llama 3 8B);
 * ALIBI holds the slopes the layer computes itself. */
typedef enum mha_dslot {
    MHA_D_WQ, MHA_D_WK, MHA_D_WV, MHA_D_WO,
    MHA_D_BQ, MHA_D_BK, MHA_D_BV, MHA_D_BO,
    MHA_D_SINKS, MHA_D_ALIBI,
    MHA_DSLOT_COUNT
} mha_dslot;

/* An arena that a recorded step may still use (see mha_vulkan.h): kept,
 * not freed, when a bigger bucket replaces it, until the layer goes. */
typedef struct mha_old_arena {
    void *buf;
    size_t bytes;
    struct mha_old_arena *next;
} mha_old_arena;

/* One weight by its Hugging Face name and shape. */
typedef struct mha_dweight {
    const char *name;
    mha_dslot slot;
    int ndim;
    int64_t shape[2];
} mha_dweight;

struct mha_decoder {
    mha_device *device;
    mha_decoder_config cfg; /* defaults resolved; num_heads and
                               num_kv_heads count the kept heads */
    int64_t orig_heads; /* num_heads as created */
    int64_t *kept;      /* original indices of the kept query heads,
                           ascending (decoder_heads.c prunes) */
    void *wbuf[MHA_DSLOT_COUNT];
    size_t wlen[MHA_DSLOT_COUNT]; /* floats; 0: not configured */
    unsigned set;                 /* bit per slot written */
    /* scratch of the largest bucket seen: q, k, v, o rows and positions
       of `tokens` tokens (a power of 2) */
    void *arena;
    size_t arena_bytes;
    int64_t tokens;
    int32_t *host_pos; /* default positions, staged */
    int recorded;      /* arena used by a recorded step */
    mha_old_arena *old;
    uint64_t generation; /* counts changes of the weights (written,
                            pruned, stepped) */
    struct mha_dsaved *saved; /* the last training forward's state
                                 (decoder_train.c), or NULL */
};

/* The weights this layer's config has (at most 9); returns the count. */
int mha_decoder_weights(const mha_decoder *layer, mha_dweight *out);

/* Writes count floats of slot from host memory and marks it set. */
mha_status mha_decoder_write(mha_decoder *layer, mha_dslot slot,
                             const float *data, size_t count);

/* Byte offsets of q, k, v, o and the positions in an arena of n tokens
 * (off[5]: its size). */
void mha_decoder_layout(const mha_decoder *l, int64_t n, size_t off[6]);

/* head_gates ([Hq] or [B, Hq], f32) seen as [B,Hq,T,d] by strides: the
 * factor of the forward's multiply and of the backward's. */
mha_tdesc mha_decoder_gates_view(const mha_tensor *gates, int64_t B,
                                 int64_t H, int64_t T, int64_t d);

/* ---- training (decoder_train.c) ---- */

/* What a training forward of B sequences of T tokens needs from the
 * forward's call. */
typedef struct mha_dtrain_call {
    int64_t B, T;
    const mha_tensor *x;
    const mha_kv_cache *cache;
    const mha_tensor *gates; /* head_gates, or NULL */
    int record; /* mha_decoder_forward_enqueue (a recorded step) */
} mha_dtrain_call;

/* Checks that the backward can follow this training forward (else
 * MHA_UNSUPPORTED naming why), makes the saved state large enough and
 * invalid until mha_decoder_train_commit; sets the forward's arena to it:
 * *arena, off (mha_decoder_layout of B*T tokens) and the attention's LSE
 * [B,Hq,1,T]. */
mha_status mha_decoder_train_prepare(mha_decoder *l, const mha_dtrain_call *c,
                                     void **arena, size_t off[6],
                                     mha_tdesc *lse);

/* Marks the saved state valid (ok) or not after the forward of c. */
void mha_decoder_train_commit(mha_decoder *l, const mha_dtrain_call *c,
                              int ok);

/* Frees the saved state (NULL: nothing). */
void mha_decoder_train_free(mha_decoder *l);

#endif /* MHA_CORE_DECODER_H */
