/* heads_list.c: the head-list checks and the kept-heads listing that the
 * nn.MHA and decoder layers' pruning share (heads_list.h). */
#include <string.h>

#include "heads_list.h"

int mha_heads_listed(const int64_t *heads, int64_t count, int64_t h)
{
    for (int64_t i = 0; i < count; i++)
        if (heads[i] == h)
            return 1;
    return 0;
}

int64_t mha_heads_positions_left(const int64_t *kept, int64_t nkept,
                                 const int64_t *heads, int64_t count,
                                 int64_t *pos)
{
    int64_t left = 0;
    for (int64_t p = 0; p < nkept; p++)
        if (!mha_heads_listed(heads, count, kept[p]))
            pos[left++] = p;
    return left;
}

mha_status mha_heads_check_prune(mha_context *ctx, const char *fn,
                                 const int64_t *kept, int64_t nkept,
                                 int64_t total, const int64_t *heads,
                                 int64_t count)
{
    if (count < 0 || (count > 0 && !heads))
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s", fn,
                         count < 0 ? "count is negative" : "heads is NULL");
    for (int64_t i = 0; i < count; i++) {
        int64_t h = heads[i];
        if (h < 0 || h >= total)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: head %lld does not exist; the layer has "
                             "heads 0 to %lld",
                             fn, (long long)h, (long long)total - 1);
        if (!mha_heads_listed(kept, nkept, h))
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: head %lld was pruned already", fn,
                             (long long)h);
        if (mha_heads_listed(heads, i, h))
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: head %lld is listed twice", fn,
                             (long long)h);
    }
    if (count >= nkept)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: pruning %lld heads would leave none of the "
                         "layer's %lld; keep at least one",
                         fn, (long long)count, (long long)nkept);
    return MHA_OK;
}

mha_status mha_heads_list_kept(mha_context *ctx, const char *fn,
                               const int64_t *kept, int64_t nkept,
                               int64_t *heads, int64_t capacity,
                               int64_t *count)
{
    if (!count || (capacity > 0 && !heads) || capacity < 0)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s", fn,
                         !count ? "count is NULL"
                         : capacity < 0 ? "capacity is negative"
                                        : "heads is NULL");
    *count = nkept;
    if (capacity < nkept)
        return mha_error(ctx, MHA_BUFFER_TOO_SMALL,
                         "%s: capacity %lld; the layer keeps %lld heads", fn,
                         (long long)capacity, (long long)nkept);
    memcpy(heads, kept, (size_t)nkept * sizeof *heads);
    mha_clear_error(ctx);
    return MHA_OK;
}
