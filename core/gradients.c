/* gradients.c: mha_gradients, the weight gradients of one nn.MHA layer or
 * decoder layer: a single f32 device buffer (for nn.MHA laid out as the
 * layer's weight buffer, so a backward addresses a gradient as the
 * forward addresses its weight), exposed as one tensor view per
 * state_dict name; AdamW pairs each gradient with its weight through
 * mha_gradients_param. */
#include <string.h>

#include "decoder.h"
#include "tensor.h"
#include "train.h"

static void free_gradients(mha_context *ctx, mha_gradients *g)
{
    for (int i = 0; i < g->count; i++)
        mha_tensor_destroy(g->views[i]);
    mha_tensor_destroy(g->flat);
    mha_host_free(&ctx->host, g);
}

/* One weight of the object being made. */
typedef struct grad_entry {
    const char *name;
    size_t off, len;
    int dslot;
    int ndim;
    const int64_t *shape;
} grad_entry;

/* The zeroed object of n gradients of total elements on device. */
static mha_status make_gradients(mha_device *device, const char *fn,
                                 size_t total, const grad_entry *e, int n,
                                 mha_gradients *g, mha_gradients **out)
{
    mha_context *ctx = device->ctx;
    int64_t count = (int64_t)total;
    g->device = device;
    mha_status st = mha_tensor_create(device, MHA_F32, 1, &count, &g->flat);
    for (int i = 0; st == MHA_OK && i < n; i++) {
        st = mha_tensor_view(g->flat, e[i].off, e[i].ndim,
                             e[i].shape, NULL, &g->views[i]);
        g->names[i] = e[i].name;
        g->off[i] = e[i].off;
        g->len[i] = e[i].len;
        g->dslot[i] = e[i].dslot;
        g->count += st == MHA_OK;
    }
    if (st == MHA_OK)
        st = mha_dev_zero(device, g->flat->buf, total * 4);
    if (st != MHA_OK) {
        free_gradients(ctx, g);
        return mha_host_finish(&ctx->host, fn, st);
    }
    *out = g;
    mha_clear_error(ctx);
    return MHA_OK;
}

mha_status mha_gradients_create(mha_layer *layer, mha_gradients **out)
{
    static const char fn[] = "mha_gradients_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: out is NULL", fn);
    mha_gradients *g = mha_host_calloc(&ctx->host, 1, sizeof *g);
    if (!g)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    g->layer = layer;
    g->heads = layer->heads;
    mha_weight_spec specs[8];
    grad_entry e[8];
    int n = mha_layer_weight_specs(layer, specs);
    for (int i = 0; i < n; i++) {
        size_t len = 0;
        for (int k = 0; k < specs[i].slots; k++)
            len += layer->wlen[specs[i].first + k];
        e[i] = (grad_entry){specs[i].name, layer->woff[specs[i].first], len,
                            -1, specs[i].ndim, specs[i].shape};
    }
    /* f32 whatever the layer's dtype: an f16 layer's master gradients */
    return make_gradients(layer->device, fn, mha_layer_welems(layer), e, n,
                          g, out);
}

mha_status mha_decoder_gradients_create(mha_decoder *layer,
                                        mha_gradients **out)
{
    static const char fn[] = "mha_decoder_gradients_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: out is NULL", fn);
    mha_gradients *g = mha_host_calloc(&ctx->host, 1, sizeof *g);
    if (!g)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    g->decoder = layer;
    g->heads = layer->cfg.num_heads;
    mha_dweight w[MHA_DSLOT_COUNT];
    grad_entry e[MHA_DSLOT_COUNT];
    int n = mha_decoder_weights(layer, w);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        e[i] = (grad_entry){w[i].name, total, layer->wlen[w[i].slot],
                            (int)w[i].slot, w[i].ndim, w[i].shape};
        total += layer->wlen[w[i].slot];
    }
    return make_gradients(layer->device, fn, total, e, n, g, out);
}

mha_tdesc mha_train_row(void *buf, size_t first, size_t n)
{
    mha_tdesc d = {.dtype = MHA_F32,
                   .ne = {1, 1, 1, (int64_t)n},
                   .nb = {(int64_t)n, (int64_t)n, (int64_t)n, 1},
                   .buf = buf,
                   .offset = first * 4};
    return d;
}

mha_tdesc mha_gradients_param(const mha_gradients *grads, int i)
{
    if (grads->layer)
        return mha_train_row(grads->layer->wbuf, grads->off[i],
                             grads->len[i]);
    return mha_train_row(grads->decoder->wbuf[grads->dslot[i]], 0,
                         grads->len[i]);
}

mha_status mha_gradients_check(const mha_gradients *grads,
                               const mha_layer *layer, const char *fn)
{
    mha_context *ctx = layer->device->ctx;
    if (grads->layer != layer)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: grads belong to another layer", fn);
    if (grads->heads != layer->heads)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: grads were made for %lld heads and the layer "
                         "now has %lld (pruned): make new gradients",
                         fn, (long long)grads->heads,
                         (long long)layer->heads);
    return MHA_OK;
}

mha_status mha_decoder_gradients_check(const mha_gradients *grads,
                                       const mha_decoder *decoder,
                                       const char *fn)
{
    mha_context *ctx = decoder->device->ctx;
    if (grads->decoder != decoder)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: grads belong to another layer", fn);
    if (grads->heads != decoder->cfg.num_heads)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: grads were made for %lld heads and the layer "
                         "now has %lld (pruned): make new gradients",
                         fn, (long long)grads->heads,
                         (long long)decoder->cfg.num_heads);
    return MHA_OK;
}

mha_status mha_gradients_zero(mha_gradients *grads)
{
    if (!grads)
        return MHA_INVALID_ARGUMENT;
    mha_status st = mha_dev_zero(grads->device, grads->flat->buf,
                                 grads->flat->count * 4);
    return mha_host_finish(&grads->device->ctx->host, "mha_gradients_zero",
                           st);
}

mha_status mha_gradients_get(const mha_gradients *grads, const char *name,
                             const mha_tensor **out)
{
    static const char fn[] = "mha_gradients_get";
    if (!grads)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = grads->device->ctx;
    if (!name || !out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                         !name ? "name" : "out");
    for (int i = 0; i < grads->count; i++) {
        if (strcmp(grads->names[i], name) == 0) {
            *out = grads->views[i];
            mha_clear_error(ctx);
            return MHA_OK;
        }
    }
    if (!grads->layer)
        return mha_error(ctx, MHA_NOT_FOUND,
                         "%s: \"%s\" is not a weight of this decoder layer",
                         fn, name);
    /* not a weight of this layer: the message says why, as
     * mha_layer_set_weight's does (the layer's names are the ones above) */
    mha_weight_spec spec;
    mha_status st = mha_find_weight_spec(grads->layer, fn, name, &spec);
    return st != MHA_OK ? st : MHA_NOT_FOUND;
}

mha_status mha_gradients_destroy(mha_gradients *grads)
{
    if (!grads)
        return MHA_OK;
    mha_context *ctx = grads->device->ctx;
    free_gradients(ctx, grads);
    mha_clear_error(ctx);
    return MHA_OK;
}
