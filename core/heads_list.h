/* heads_list.h: the checks and the listing that pruning heads shares
 * between the nn.MHA layer (layer_heads.c) and the decoder layer
 * (decoder_heads.c): both name heads by their original index and keep the
 * kept ones' original indices, ascending, in an array. */
#ifndef MHA_CORE_HEADS_LIST_H
#define MHA_CORE_HEADS_LIST_H

#include "context.h"

/* The heads to prune, for a layer created with total heads that keeps
 * kept[0 .. nkept): count >= 0, heads not NULL, each in range, kept and
 * listed once, and not all the kept ones; else MHA_INVALID_ARGUMENT with
 * fn's message naming the head. */
mha_status mha_heads_check_prune(mha_context *ctx, const char *fn,
                                 const int64_t *kept, int64_t nkept,
                                 int64_t total, const int64_t *heads,
                                 int64_t count);

/* Whether h is among heads[0 .. count). */
int mha_heads_listed(const int64_t *heads, int64_t count, int64_t h);

/* The positions p of kept[0 .. nkept) whose head is not among
 * heads[0 .. count), ascending, into pos; returns how many. */
int64_t mha_heads_positions_left(const int64_t *kept, int64_t nkept,
                                 const int64_t *heads, int64_t count,
                                 int64_t *pos);

/* kept[0 .. nkept) into heads (capacity entries) and nkept into *count:
 * the *_kept_heads calls; fn names the call in messages. */
mha_status mha_heads_list_kept(mha_context *ctx, const char *fn,
                               const int64_t *kept, int64_t nkept,
                               int64_t *heads, int64_t capacity,
                               int64_t *count);

#endif /* MHA_CORE_HEADS_LIST_H */
