/* layer_heads.c: pruning a layer's heads for good (Michel et al. 2019):
 * the weights of the heads that go are cut out of the q/k/v projections
 * and out_proj and the layer moves to a smaller device buffer, so memory
 * and every later forward's work shrink with the heads removed. */
#include <string.h>

#include "plan.h"

static const char prune_fn[] = "mha_layer_prune_heads";

/* The current position of original head h, or -1 when it is not kept. */
static int64_t position_of(const mha_layer *layer, int64_t h)
{
    for (int64_t p = 0; p < layer->heads; p++)
        if (layer->kept[p] == h)
            return p;
    return -1;
}

static mha_status check_prune(const mha_layer *layer, const int64_t *heads,
                              int64_t count)
{
    mha_context *ctx = layer->device->ctx;
    if (count < 0 || (count > 0 && !heads))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s", prune_fn,
                         count < 0 ? "count is negative" : "heads is NULL");
    for (int64_t i = 0; i < count; i++) {
        int64_t h = heads[i];
        if (h < 0 || h >= layer->cfg.num_heads)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: head %lld does not exist; the layer has "
                             "heads 0 to %lld",
                             prune_fn, (long long)h,
                             (long long)layer->cfg.num_heads - 1);
        if (position_of(layer, h) < 0)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: head %lld was pruned already", prune_fn,
                             (long long)h);
        for (int64_t j = 0; j < i; j++)
            if (heads[j] == h)
                return mha_error(ctx, MHA_INVALID_ARGUMENT,
                                 "%s: head %lld is listed twice", prune_fn,
                                 (long long)h);
    }
    if (count >= layer->heads)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: pruning %lld heads would leave none of the "
                         "layer's %lld; keep at least one",
                         prune_fn, (long long)count,
                         (long long)layer->heads);
    for (int i = 0; i < MHA_PLAN_CACHE; i++)
        if (layer->plans[i] && layer->plans[i]->pinned)
            return mha_error(ctx, MHA_BAD_STATE,
                             "%s: forwards of this layer were recorded or "
                             "enqueued into the application's command "
                             "stream and may still use its weights",
                             prune_fn);
    return MHA_OK;
}

/* Copies slot's weight from the old layout (src, old_heads heads) to the
 * new one (dst), keeping the heads at old positions pos[0 .. kept). */
static void compact_slot(const mha_layer *layer, mha_wslot slot,
                         const size_t old_off[], int64_t old_heads,
                         const char *src, char *dst, const int64_t *pos)
{
    size_t es = mha_dtype_storage_size(layer->cfg.dtype);
    int64_t rows, cols, d = layer->head_dim, kept = layer->heads;
    int axis = mha_layer_slot_shape(layer, slot, &rows, &cols);
    src += old_off[slot] * es;
    dst += layer->woff[slot] * es;
    if (axis == 0) {
        memcpy(dst, src, (size_t)(rows * cols) * es);
    } else if (axis == 1) { /* head k is rows [k d, k d + d) */
        for (int64_t k = 0; k < kept; k++)
            memcpy(dst + (size_t)(k * d * cols) * es,
                   src + (size_t)(pos[k] * d * cols) * es,
                   (size_t)(d * cols) * es);
    } else { /* head k is columns [k d, k d + d) of every row */
        int64_t old_cols = old_heads * d;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < kept; k++)
                memcpy(dst + (size_t)(r * cols + k * d) * es,
                       src + (size_t)(r * old_cols + pos[k] * d) * es,
                       (size_t)d * es);
    }
}

/* The layer's weights for the kept heads at positions pos (count kept), in
 * a new device buffer that replaces the old one. On failure the layer is
 * as before. */
static mha_status move_weights(mha_layer *layer, const int64_t *pos,
                               int64_t kept)
{
    mha_device *dev = layer->device;
    mha_host *host = &dev->ctx->host;
    size_t old_off[MHA_WSLOT_COUNT], old_len[MHA_WSLOT_COUNT];
    size_t old_bytes = layer->wbytes, es = mha_dtype_storage_size(layer->cfg.dtype);
    int64_t old_heads = layer->heads;
    memcpy(old_off, layer->woff, sizeof old_off);
    memcpy(old_len, layer->wlen, sizeof old_len);
    layer->heads = kept;
    size_t new_bytes = mha_layer_layout_slots(layer) * es;
    char *src = mha_host_malloc(host, old_bytes);
    char *dst = mha_host_malloc(host, new_bytes);
    void *buf = NULL;
    mha_status st = src && dst ? MHA_OK
                               : mha_error(dev->ctx, MHA_OUT_OF_MEMORY,
                                           "%s: out of memory", prune_fn);
    if (st == MHA_OK)
        st = mha_dev_read(dev, layer->wbuf, 0, src, old_bytes);
    if (st == MHA_OK) {
        for (int s = 0; s < MHA_WSLOT_COUNT; s++)
            compact_slot(layer, (mha_wslot)s, old_off, old_heads, src, dst,
                         pos);
        st = mha_dev_alloc(dev, new_bytes, &buf);
    }
    if (st == MHA_OK)
        st = mha_dev_write(dev, buf, 0, dst, new_bytes);
    mha_host_free(host, src);
    mha_host_free(host, dst);
    if (st != MHA_OK) {
        if (buf)
            mha_dev_free(dev, buf, new_bytes);
        layer->heads = old_heads;
        memcpy(layer->woff, old_off, sizeof old_off);
        memcpy(layer->wlen, old_len, sizeof old_len);
        return st;
    }
    mha_dev_free(dev, layer->wbuf, old_bytes);
    layer->wbuf = buf;
    layer->wbytes = new_bytes;
    return MHA_OK;
}

mha_status mha_layer_prune_heads(mha_layer *layer, const int64_t *heads,
                                 int64_t count)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    mha_status st = check_prune(layer, heads, count);
    if (st != MHA_OK || count == 0)
        return mha_host_finish(&ctx->host, prune_fn, st);
    /* positions of the heads that stay, in order (kept is ascending) */
    int64_t *pos = mha_host_malloc(&ctx->host, (size_t)layer->heads *
                                                   sizeof *pos);
    if (!pos)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory",
                         prune_fn);
    int64_t kept = 0;
    for (int64_t p = 0; p < layer->heads; p++) {
        int gone = 0;
        for (int64_t i = 0; i < count; i++)
            gone |= heads[i] == layer->kept[p];
        if (!gone)
            pos[kept++] = p;
    }
    st = move_weights(layer, pos, kept);
    if (st == MHA_OK) {
        for (int64_t k = 0; k < kept; k++)
            layer->kept[k] = layer->kept[pos[k]];
        /* cached scratch was sized for the old heads */
        for (int i = 0; i < MHA_PLAN_CACHE; i++) {
            mha_plan_destroy(layer, layer->plans[i]);
            layer->plans[i] = NULL;
        }
    }
    mha_host_free(&ctx->host, pos);
    return mha_host_finish(&ctx->host, prune_fn, st);
}

mha_status mha_layer_kept_heads(const mha_layer *layer, int64_t *heads,
                                int64_t capacity, int64_t *count)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!count || (capacity > 0 && !heads) || capacity < 0)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_layer_kept_heads: %s",
                         !count ? "count is NULL"
                         : capacity < 0 ? "capacity is negative"
                                        : "heads is NULL");
    *count = layer->heads;
    if (capacity < layer->heads)
        return mha_error(ctx, MHA_BUFFER_TOO_SMALL,
                         "mha_layer_kept_heads: capacity %lld; the layer "
                         "keeps %lld heads",
                         (long long)capacity, (long long)layer->heads);
    memcpy(heads, layer->kept, (size_t)layer->heads * sizeof *heads);
    mha_clear_error(ctx);
    return MHA_OK;
}
