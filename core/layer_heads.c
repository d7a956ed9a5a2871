/* layer_heads.c: pruning a layer's heads for good (Michel et al. 2019):
 * the weights of the heads that go are cut out of the q/k/v projections
 * and out_proj and the layer moves to a smaller device buffer, so memory
 * and every later forward's work shrink with the heads removed. */
#include <string.h>

#include "heads_list.h"
#include "plan.h"

static const char prune_fn[] = "mha_layer_prune_heads";

static mha_status check_prune(const mha_layer *layer, const int64_t *heads,
                              int64_t count)
{
    mha_context *ctx = layer->device->ctx;
    mha_status st = mha_heads_check_prune(ctx, prune_fn, layer->kept,
                                          layer->heads, layer->cfg.num_heads,
                                          heads, count);
    if (st != MHA_OK)
        return st;
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
    layer->generation++;
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
    int64_t kept = mha_heads_positions_left(layer->kept, layer->heads, heads,
                                            count, pos);
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
    return mha_heads_list_kept(layer->device->ctx, "mha_layer_kept_heads",
                               layer->kept, layer->heads, heads, capacity,
                               count);
}
