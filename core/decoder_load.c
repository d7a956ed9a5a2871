/* decoder_load.c: mha_decoder_load_safetensors, a decoder layer's weights
 * by their Hugging Face names from a model's .safetensors file (one layer
 * picked by a key prefix such as "model.layers.7.self_attn."). Every key is
 * checked (present, float, right shape) before any is written, so a bad
 * file leaves the layer as it was. */
#include <stdio.h>
#include <string.h>

#include "decoder.h"
#include "safetensors.h"

#define MAX_KEY 512

static const char fn[] = "mha_decoder_load_safetensors";

static mha_status check_entry(mha_context *ctx, const char *path,
                              const char *key, const mha_dweight *w,
                              const mha_st_entry *e)
{
    char got[96], want[96];
    if (!e)
        return mha_error(ctx, MHA_MISSING_WEIGHT, "%s: %s has no tensor \"%s\"",
                         fn, path, key);
    if (!mha_st_is_float(e))
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: tensor \"%s\" in %s has dtype %s; expected F32, "
                         "F16, BF16 or F64",
                         fn, key, path, e->dtype);
    int ok = e->ndim == w->ndim;
    for (int i = 0; ok && i < w->ndim; i++)
        ok = e->shape[i] == w->shape[i];
    if (!ok)
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: tensor \"%s\" in %s has shape %s; expected %s",
                         fn, key, path,
                         e->ndim <= MHA_MAX_DIMS
                             ? mha_shape_str(got, sizeof got, e->ndim, e->shape)
                             : "(more than 4 dimensions)",
                         mha_shape_str(want, sizeof want, w->ndim, w->shape));
    return MHA_OK;
}

static mha_status load_all(void *obj, mha_st_file *file, const char *path,
                           const char *prefix)
{
    mha_decoder *l = obj;
    mha_context *ctx = l->device->ctx;
    mha_dweight w[MHA_DSLOT_COUNT];
    const mha_st_entry *e[MHA_DSLOT_COUNT];
    int n = mha_decoder_weights(l, w);
    char key[MAX_KEY];
    for (int i = 0; i < n; i++) {
        if ((size_t)snprintf(key, sizeof key, "%s%s", prefix, w[i].name) >=
            sizeof key)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: prefix \"%s\" is too long", fn, prefix);
        e[i] = mha_st_find(file, key);
        mha_status st = check_entry(ctx, path, key, &w[i], e[i]);
        if (st != MHA_OK)
            return st;
    }
    mha_status st = MHA_OK;
    for (int i = 0; i < n && st == MHA_OK; i++) {
        float *data = mha_host_malloc(&ctx->host,
                                      (size_t)e[i]->count * sizeof(float));
        st = data ? mha_st_read_f32(file, e[i], data)
                  : mha_error(ctx, MHA_OUT_OF_MEMORY,
                              "%s: out of memory reading \"%s\"", fn,
                              e[i]->name);
        if (st == MHA_OK)
            st = mha_decoder_write(l, w[i].slot, data, (size_t)e[i]->count);
        mha_host_free(&ctx->host, data);
    }
    return st;
}

mha_status mha_decoder_load_safetensors(mha_decoder *layer, const char *path,
                                        const char *prefix)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    return mha_st_load(layer->device->ctx, fn, path, prefix, load_all,
                       layer);
}
