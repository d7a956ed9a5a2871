/* gradients.c: mha_gradients, the weight gradients of one layer: a single
 * f32 device buffer laid out as the layer's weight buffer (so a backward
 * addresses a gradient as the forward addresses its weight, and AdamW
 * pairs them slot by slot), exposed as one tensor view per state_dict
 * name. */
#include <string.h>

#include "tensor.h"
#include "train.h"

static void free_gradients(mha_context *ctx, mha_gradients *g)
{
    for (int i = 0; i < g->count; i++)
        mha_tensor_destroy(g->views[i]);
    mha_tensor_destroy(g->flat);
    mha_host_free(&ctx->host, g);
}

mha_status mha_gradients_create(mha_layer *layer, mha_gradients **out)
{
    static const char fn[] = "mha_gradients_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    mha_status st = mha_train_check_create(layer, fn, out);
    if (st != MHA_OK)
        return st;
    mha_gradients *g = mha_host_calloc(&ctx->host, 1, sizeof *g);
    if (!g)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    g->layer = layer;
    g->heads = layer->heads;
    int64_t total = (int64_t)(layer->wbytes / 4);
    st = mha_tensor_create(layer->device, MHA_F32, 1, &total, &g->flat);
    int n = mha_layer_weight_specs(layer, g->specs);
    for (int i = 0; st == MHA_OK && i < n; i++) {
        const mha_weight_spec *s = &g->specs[i];
        st = mha_tensor_view(g->flat, layer->woff[s->first], s->ndim,
                             s->shape, NULL, &g->views[i]);
        g->count += st == MHA_OK;
    }
    if (st == MHA_OK)
        st = mha_dev_zero(layer->device, g->flat->buf, layer->wbytes);
    if (st != MHA_OK) {
        free_gradients(ctx, g);
        return mha_host_finish(&ctx->host, fn, st);
    }
    *out = g;
    mha_clear_error(ctx);
    return MHA_OK;
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

mha_status mha_gradients_zero(mha_gradients *grads)
{
    if (!grads)
        return MHA_INVALID_ARGUMENT;
    mha_device *device = grads->layer->device;
    mha_status st = mha_dev_zero(device, grads->flat->buf,
                                 grads->flat->count * 4);
    return mha_host_finish(&device->ctx->host, "mha_gradients_zero", st);
}

mha_status mha_gradients_get(const mha_gradients *grads, const char *name,
                             const mha_tensor **out)
{
    static const char fn[] = "mha_gradients_get";
    if (!grads)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = grads->layer->device->ctx;
    if (!name || !out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                         !name ? "name" : "out");
    for (int i = 0; i < grads->count; i++) {
        if (strcmp(grads->specs[i].name, name) == 0) {
            *out = grads->views[i];
            mha_clear_error(ctx);
            return MHA_OK;
        }
    }
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
    mha_context *ctx = grads->layer->device->ctx;
    free_gradients(ctx, grads);
    mha_clear_error(ctx);
    return MHA_OK;
}
