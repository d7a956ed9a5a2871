/* layer_save.c: mha_layer_save_safetensors, a layer's weights (pruned or
 * not) as a PyTorch state_dict in safetensors, with the kept heads in the
 * header's metadata so that mha_layer_load_safetensors (layer_load.c) can
 * prune a fresh layer the same way before loading them. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "layer.h"
#include "safetensors.h"

static const char save_fn[] = "mha_layer_save_safetensors";

#define MAX_KEY 512

/* Rewrites n elements of es bytes in place as little-endian (the
 * format's byte order) on a big-endian host. */
static void to_little_endian(unsigned char *p, size_t n, size_t es)
{
    const uint16_t one = 1;
    if (*(const unsigned char *)&one)
        return;
    for (size_t i = 0; i < n; i++, p += es)
        for (size_t a = 0, b = es - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* "0,2,5": the kept heads' original indices, in a new host string. */
static char *kept_list(const mha_layer *layer)
{
    size_t cap = (size_t)layer->heads * 21 + 1, used = 0;
    char *s = mha_host_malloc(&layer->device->ctx->host, cap);
    for (int64_t k = 0; s && k < layer->heads; k++)
        used += (size_t)snprintf(s + used, cap - used, "%s%" PRId64,
                                 k ? "," : "", layer->kept[k]);
    return s;
}

/* The spec entries as tensors over raw (the whole weight buffer). */
static mha_status describe(const mha_layer *layer, const char *prefix,
                           const unsigned char *raw, mha_st_out *out,
                           char keys[][MAX_KEY], int *count)
{
    mha_weight_spec specs[8];
    size_t es = mha_dtype_storage_size(layer->cfg.dtype);
    int n = mha_layer_weight_specs(layer, specs);
    for (int i = 0; i < n; i++) {
        if ((size_t)snprintf(keys[i], MAX_KEY, "%s%s", prefix,
                             specs[i].name) >= MAX_KEY)
            return mha_error(layer->device->ctx, MHA_INVALID_ARGUMENT,
                             "%s: prefix \"%s\" is too long", save_fn,
                             prefix);
        size_t len = 0;
        for (int k = 0; k < specs[i].slots; k++)
            len += layer->wlen[specs[i].first + k];
        out[i] = (mha_st_out){keys[i], es == 2 ? "F16" : "F32",
                              specs[i].ndim, {0}, raw +
                              layer->woff[specs[i].first] * es, len * es};
        memcpy(out[i].shape, specs[i].shape,
               (size_t)specs[i].ndim * sizeof *out[i].shape);
    }
    *count = n;
    return MHA_OK;
}

mha_status mha_layer_save_safetensors(const mha_layer *layer,
                                      const char *path, const char *prefix)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!path)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: path is NULL",
                         save_fn);
    mha_status st = mha_layer_check_set(layer, save_fn);
    if (st != MHA_OK)
        return st;
    size_t es = mha_dtype_storage_size(layer->cfg.dtype);
    unsigned char *raw = mha_host_malloc(&ctx->host, layer->wbytes);
    char *kept = kept_list(layer), heads[24];
    mha_st_out out[8];
    char keys[8][MAX_KEY];
    int n = 0;
    if (!raw || !kept)
        st = mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", save_fn);
    if (st == MHA_OK)
        st = mha_dev_read(layer->device, layer->wbuf, 0, raw, layer->wbytes);
    if (st == MHA_OK) {
        to_little_endian(raw, layer->wbytes / es, es);
        st = describe(layer, prefix ? prefix : "", raw, out, keys, &n);
    }
    if (st == MHA_OK) {
        snprintf(heads, sizeof heads, "%" PRId64, layer->cfg.num_heads);
        const char *meta[6] = {"format", "pt", "libmha.num_heads", heads,
                               "libmha.kept_heads", kept};
        st = mha_st_write(&ctx->host, path, out, n, meta, 3);
    }
    mha_host_free(&ctx->host, kept);
    mha_host_free(&ctx->host, raw);
    return mha_host_finish(&ctx->host, save_fn, st);
}
