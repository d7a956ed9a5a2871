/* decoder_heads.c: pruning a decoder layer's query heads for good, as
 * mha_layer_prune_heads does for nn.MHA. Grouped-query layers lose whole kv
 * groups (the query heads that share a kv head, and that kv head), so the
 * grouping stays uniform and the attention core runs the pruned layer as
 * an unpruned one of fewer heads. Each weight slot moves to a smaller
 * device buffer; the ALiBi slopes are a slot too, so kept heads keep
 * their original slopes. */
#include <string.h>

#include "decoder.h"
#include "heads_list.h"

static const char prune_fn[] = "mha_decoder_prune_heads";

/* Every listed head's kv group (g query heads, original indices) is
 * listed whole, since a kv head goes only with all its query heads. */
static mha_status check_groups(const mha_decoder *l, const int64_t *heads,
                               int64_t count)
{
    int64_t g = l->cfg.num_heads / l->cfg.num_kv_heads;
    for (int64_t i = 0; i < count; i++) {
        int64_t first = heads[i] / g * g;
        for (int64_t h = first; h < first + g; h++)
            if (!mha_heads_listed(heads, count, h))
                return mha_error(
                    l->device->ctx, MHA_INVALID_ARGUMENT,
                    "%s: head %lld is listed but head %lld of its kv group "
                    "(kv head %lld: query heads %lld to %lld) is not; a "
                    "grouped-query layer prunes whole groups",
                    prune_fn, (long long)heads[i], (long long)h,
                    (long long)(first / g), (long long)first,
                    (long long)(first + g - 1));
    }
    return MHA_OK;
}

static mha_status check_prune(const mha_decoder *l, const int64_t *heads,
                              int64_t count)
{
    mha_context *ctx = l->device->ctx;
    mha_status st = mha_heads_check_prune(ctx, prune_fn, l->kept,
                                          l->cfg.num_heads, l->orig_heads,
                                          heads, count);
    if (st == MHA_OK)
        st = check_groups(l, heads, count);
    if (st != MHA_OK)
        return st;
    /* recorded: the current arena's steps; old: earlier arenas' */
    if (l->recorded || l->old)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: decode steps of this layer were recorded into "
                         "the application's command stream and may still "
                         "use its weights",
                         prune_fn);
    return MHA_OK;
}

/* How a slot's floats hang on the heads. */
typedef struct slot_shape {
    int64_t units; /* heads (query or kv) the slot is cut by; 0: none */
    int64_t rows;  /* rows of a column-cut slot (o_proj), else 1 */
    int kv;        /* cut by kv heads, not query heads */
} slot_shape;

static slot_shape shape_of(const mha_decoder *l, mha_dslot s)
{
    int64_t hq = l->cfg.num_heads, hkv = l->cfg.num_kv_heads;
    switch (s) {
    case MHA_D_WQ: case MHA_D_BQ: case MHA_D_SINKS: case MHA_D_ALIBI:
        return (slot_shape){hq, 1, 0};
    case MHA_D_WK: case MHA_D_WV: case MHA_D_BK: case MHA_D_BV:
        return (slot_shape){hkv, 1, 1};
    case MHA_D_WO:
        return (slot_shape){hq, l->cfg.embed_dim, 0};
    default:
        return (slot_shape){0, 1, 0};
    }
}

/* The floats of the kept units pos[0 .. kept) of each of sh.rows rows
 * (each unit a chunk of per floats), from src into dst. */
static void compact(const float *src, float *dst, slot_shape sh,
                    int64_t per, const int64_t *pos, int64_t kept)
{
    for (int64_t r = 0; r < sh.rows; r++)
        for (int64_t k = 0; k < kept; k++)
            memcpy(dst + (r * kept + k) * per,
                   src + (r * sh.units + pos[k]) * per,
                   (size_t)per * sizeof *dst);
}

/* Slot s cut to the kept units pos[0 .. kept), in a new device buffer
 * stored into *buf (the old one stays until every slot has moved). */
static mha_status move_slot(mha_decoder *l, mha_dslot s, const int64_t *pos,
                            int64_t kept, void **buf)
{
    mha_device *dev = l->device;
    mha_host *host = &dev->ctx->host;
    slot_shape sh = shape_of(l, s);
    size_t old_len = l->wlen[s];
    int64_t per = (int64_t)old_len / (sh.rows * sh.units);
    size_t new_len = (size_t)(sh.rows * kept * per);
    float *src = mha_host_malloc(host, old_len * sizeof *src);
    float *dst = mha_host_malloc(host, new_len * sizeof *dst);
    mha_status st = src && dst ? MHA_OK
                               : mha_error(dev->ctx, MHA_OUT_OF_MEMORY,
                                           "%s: out of memory", prune_fn);
    if (st == MHA_OK)
        st = mha_dev_read(dev, l->wbuf[s], 0, src, old_len * sizeof *src);
    if (st == MHA_OK) {
        compact(src, dst, sh, per, pos, kept);
        st = mha_dev_alloc(dev, new_len * sizeof *dst, buf);
    }
    if (st == MHA_OK)
        st = mha_dev_write(dev, *buf, 0, dst, new_len * sizeof *dst);
    mha_host_free(host, src);
    mha_host_free(host, dst);
    return st;
}

/* Every cut slot moved to the kept query heads qpos (kq of them) and kv
 * heads kvpos (kkv); on failure the layer is as before. */
static mha_status move_weights(mha_decoder *l, const int64_t *qpos,
                               int64_t kq, const int64_t *kvpos, int64_t kkv)
{
    void *nbuf[MHA_DSLOT_COUNT] = {0};
    size_t nlen[MHA_DSLOT_COUNT];
    mha_status st = MHA_OK;
    for (int s = 0; s < MHA_DSLOT_COUNT; s++) {
        slot_shape sh = shape_of(l, (mha_dslot)s);
        int64_t kept = sh.kv ? kkv : kq;
        nlen[s] = sh.units ? l->wlen[s] / (size_t)sh.units * (size_t)kept
                           : l->wlen[s];
        if (st == MHA_OK && sh.units && l->wlen[s])
            st = move_slot(l, (mha_dslot)s, sh.kv ? kvpos : qpos, kept,
                           &nbuf[s]);
    }
    for (int s = 0; s < MHA_DSLOT_COUNT; s++) {
        if (!nbuf[s])
            continue;
        if (st != MHA_OK) {
            mha_dev_free(l->device, nbuf[s], nlen[s] * 4);
            continue;
        }
        mha_dev_free(l->device, l->wbuf[s], l->wlen[s] * 4);
        l->wbuf[s] = nbuf[s];
        l->wlen[s] = nlen[s];
    }
    return st;
}

/* The scratch was sized for the old heads: the next forward makes it
 * anew for the kept ones (nothing recorded uses it, check_prune saw to
 * that); the weights changed, so a backward needs a new training
 * forward. */
static void drop_arena(mha_decoder *l)
{
    l->generation++;
    mha_dev_free(l->device, l->arena, l->arena_bytes);
    l->arena = NULL;
    l->arena_bytes = 0;
    l->tokens = 0;
}

/* Positions of the kept query heads (ascending) and of their kv heads. */
static int64_t kept_positions(const mha_decoder *l, const int64_t *heads,
                              int64_t count, int64_t *qpos, int64_t *kvpos)
{
    int64_t g = l->cfg.num_heads / l->cfg.num_kv_heads;
    int64_t kept = mha_heads_positions_left(l->kept, l->cfg.num_heads, heads,
                                            count, qpos);
    for (int64_t k = 0; k < kept / g; k++)
        kvpos[k] = qpos[k * g] / g;
    return kept;
}

mha_status mha_decoder_prune_heads(mha_decoder *layer, const int64_t *heads,
                                   int64_t count)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    mha_status st = check_prune(layer, heads, count);
    if (st != MHA_OK || count == 0)
        return mha_host_finish(&ctx->host, prune_fn, st);
    int64_t H = layer->cfg.num_heads;
    int64_t g = H / layer->cfg.num_kv_heads;
    int64_t *pos = mha_host_malloc(&ctx->host, (size_t)(2 * H) * sizeof *pos);
    if (!pos)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory",
                         prune_fn);
    int64_t kept = kept_positions(layer, heads, count, pos, pos + H);
    st = move_weights(layer, pos, kept, pos + H, kept / g);
    if (st == MHA_OK) {
        for (int64_t k = 0; k < kept; k++)
            layer->kept[k] = layer->kept[pos[k]];
        layer->cfg.num_heads = kept;
        layer->cfg.num_kv_heads = kept / g;
        drop_arena(layer);
    }
    mha_host_free(&ctx->host, pos);
    return mha_host_finish(&ctx->host, prune_fn, st);
}

mha_status mha_decoder_kept_heads(const mha_decoder *layer, int64_t *heads,
                                  int64_t capacity, int64_t *count)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    return mha_heads_list_kept(layer->device->ctx, "mha_decoder_kept_heads",
                               layer->kept, layer->cfg.num_heads, heads,
                               capacity, count);
}
