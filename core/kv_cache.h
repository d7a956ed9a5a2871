/* kv_cache.h: the private form of mha_kv_cache and what the decoder layer
 * needs of it: views of its keys, values and lengths as node tensors, the
 * capacity check and the length update of an append. */
#ifndef MHA_CORE_KV_CACHE_H
#define MHA_CORE_KV_CACHE_H

#include "context.h"

struct mha_kv_cache {
    mha_device *device;
    mha_kv_cache_config cfg;
    void *kv[2];        /* keys, values: [seq, capacity, Hkv, d] */
    size_t kv_bytes;    /* of each */
    void *len_buf;      /* MHA_I32 [num_sequences]: the KV_LEN source */
    int32_t *len;       /* the same lengths on the host: rows held */
    int32_t *start;     /* a ring's (window > 0) absolute position of row
                           0 per sequence: the logical length is
                           start + len; 0 for a full cache */
};

enum { MHA_KV_KEYS = 0, MHA_KV_VALUES = 1 };

/* The [nseq, Hkv, rows, d] view of keys or values (which) of sequences
 * first .. first+nseq-1 from token row on: token-major, so heads are
 * strided views (nb = {capacity*Hkv*d, d, Hkv*d, 1}); bound whole, so an
 * append's binding is the same at every length. */
mha_tdesc mha_kv_view(const mha_kv_cache *cache, int which, int64_t first,
                      int64_t nseq, int64_t row, int64_t rows);

/* The [1,1,1,nseq] MHA_I32 view of the lengths of sequences 0 .. nseq-1. */
mha_tdesc mha_kv_lengths(const mha_kv_cache *cache, int64_t nseq);

/* MHA_LIMIT_REACHED (fn names the caller) or MHA_UNSUPPORTED (the device
 * refuses a ring's moves), changing nothing, unless
 * sequences first .. first+nseq-1 each have room for tokens more; a ring
 * makes room by moving its last window - 1 rows to the front (keys are
 * rotated already, and the attention's masks are relative, so only start
 * changes meaning), which with capacity 2W happens every W + 1 tokens.
 * A sequence's count of tokens seen (start + len) stays <= INT32_MAX:
 * MHA_LIMIT_REACHED past it. */
mha_status mha_kv_make_room(mha_kv_cache *cache, const char *fn,
                            int64_t first, int64_t nseq, int64_t tokens);

/* mha_kv_make_room's checks alone, the device's support of a ring's moves
 * included (MHA_UNSUPPORTED), changing nothing: a caller that has more to
 * ask of the device asks it all before the rows move, so a refused call
 * leaves the cache as it was. mha_kv_make_room checks them too. */
mha_status mha_kv_check_room(mha_kv_cache *cache, const char *fn,
                             int64_t first, int64_t nseq, int64_t tokens);

/* The tokens sequence seq has seen (start + rows held): the next default
 * position. */
int64_t mha_kv_length(const mha_kv_cache *cache, int64_t seq);

/* Adds delta (may be negative: a rollback) to the lengths of sequences
 * first .. first+nseq-1 and writes them to the device buffer. */
mha_status mha_kv_add_lengths(mha_kv_cache *cache, int64_t first,
                              int64_t nseq, int64_t delta);

/* The ROPE node (rope_dims 0) that copies src [nseq, Hkv, T, d] into
 * sequences first.. at their current lengths, which must be equal. */
void mha_kv_copy_node(const mha_kv_cache *cache, int which, int64_t first,
                      const mha_tdesc *src, mha_node *node);

#endif /* MHA_CORE_KV_CACHE_H */
