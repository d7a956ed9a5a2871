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
};

/* The weights this layer's config has (at most 9); returns the count. */
int mha_decoder_weights(const mha_decoder *layer, mha_dweight *out);

/* Writes count floats of slot from host memory and marks it set. */
mha_status mha_decoder_write(mha_decoder *layer, mha_dslot slot,
                             const float *data, size_t count);

#endif /* MHA_CORE_DECODER_H */
