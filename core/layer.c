/* layer.c: layers from an nn.MultiheadAttention-shaped config, and their
 * weights in PyTorch's own names and layouts, held in one device buffer. */
#include <string.h>

#include "half.h"
#include "plan.h"
#include "train.h"

#define CHUNK 4096 /* fp16 conversion goes through the stack in chunks */

mha_status mha_layer_config_init_sized(mha_layer_config *config,
                                       size_t struct_size, int64_t embed_dim,
                                       int64_t num_heads)
{
    if (mha_struct_init(config, struct_size, sizeof *config) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    config->embed_dim = embed_dim;
    config->num_heads = num_heads;
    config->bias = 1;
    config->dtype = MHA_F32;
    return MHA_OK;
}

/* Dimensions are capped so every size the layer derives fits comfortably
 * in 64 bits and in a device's int32 index space per row. */
#define MAX_DIM (1 << 20)

static mha_status check_dim(mha_context *ctx, const char *name, int64_t v,
                            int zero_ok)
{
    if ((v == 0 && zero_ok) || (v > 0 && v <= MAX_DIM))
        return MHA_OK;
    if (v > MAX_DIM)
        return mha_error(ctx, MHA_OVERFLOW,
                         "mha_layer_create: %s %lld is larger than %d", name,
                         (long long)v, MAX_DIM);
    return mha_error(ctx, MHA_INVALID_ARGUMENT,
                     "mha_layer_create: %s %lld; expected > 0%s", name,
                     (long long)v, zero_ok ? " (or 0 for embed_dim)" : "");
}

static mha_status check_config(mha_device *device, const mha_layer_config *c)
{
    mha_context *ctx = device->ctx;
    mha_status st = mha_struct_check(&ctx->host, "mha_layer_create",
                                     "mha_layer_config", c, sizeof *c);
    if (st != MHA_OK ||
        (st = check_dim(ctx, "embed_dim", c->embed_dim, 0)) != MHA_OK ||
        (st = check_dim(ctx, "num_heads", c->num_heads, 0)) != MHA_OK ||
        (st = check_dim(ctx, "kdim", c->kdim, 1)) != MHA_OK ||
        (st = check_dim(ctx, "vdim", c->vdim, 1)) != MHA_OK)
        return st;
    if (c->embed_dim % c->num_heads)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_layer_create: embed_dim %lld is not divisible "
                         "by num_heads %lld",
                         (long long)c->embed_dim, (long long)c->num_heads);
    if (c->dropout != 0.0f)
        return mha_error(ctx, MHA_UNSUPPORTED,
                         "mha_layer_create: dropout %g: dropout is a "
                         "training-time operation and libmha runs inference; "
                         "pass 0 (a module in eval mode ignores it)",
                         (double)c->dropout);
    if (c->dtype != MHA_F32 && c->dtype != MHA_F16)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "mha_layer_create: dtype %d (%s); expected f32 or "
                         "f16",
                         (int)c->dtype, mha_dtype_name(c->dtype));
    if (c->dtype == MHA_F16) {
        mha_device_info info;
        mha_device_info_of(device, &info);
        /* An adopted device's details say which feature was not enabled. */
        if (!(info.features & MHA_FEATURE_FP16_STORAGE) && info.index < 0)
            return mha_error(ctx, MHA_UNSUPPORTED,
                             "mha_layer_create: dtype f16 needs fp16 "
                             "storage, which the adopted %s device (%s) "
                             "does not have: %s",
                             info.backend, info.name, info.details);
        if (!(info.features & MHA_FEATURE_FP16_STORAGE))
            return mha_error(ctx, MHA_UNSUPPORTED,
                             "mha_layer_create: dtype f16 needs fp16 "
                             "storage, which %s:%d (%s) does not have",
                             info.backend, info.backend_index, info.name);
    }
    return MHA_OK;
}

int mha_layer_slot_shape(const mha_layer *layer, mha_wslot slot,
                         int64_t *rows, int64_t *cols)
{
    int64_t E = layer->cfg.embed_dim, inner = mha_layer_inner(layer);
    int64_t in[3] = {E, layer->cfg.kdim, layer->cfg.vdim};
    switch (slot) {
    case MHA_W_Q: case MHA_W_K: case MHA_W_V:
        *rows = inner, *cols = in[slot - MHA_W_Q];
        return 1;
    case MHA_W_O:
        *rows = E, *cols = inner;
        return 2;
    case MHA_B_O:
        *rows = 1, *cols = E;
        return 0;
    default: /* the q/k/v biases, bias_k, bias_v */
        *rows = 1, *cols = inner;
        return 2;
    }
}

size_t mha_layer_layout_slots(mha_layer *layer)
{
    size_t at = 0;
    for (int s = 0; s < MHA_WSLOT_COUNT; s++) {
        int64_t rows, cols;
        mha_layer_slot_shape(layer, (mha_wslot)s, &rows, &cols);
        layer->woff[s] = at;
        layer->wlen[s] = (size_t)(rows * cols);
        at += layer->wlen[s];
    }
    return at;
}

mha_status mha_layer_create(mha_device *device, const mha_layer_config *config,
                            mha_layer **out)
{
    if (!device || !config || !out)
        return device ? mha_error(device->ctx, MHA_INVALID_ARGUMENT,
                                  "mha_layer_create: %s is NULL",
                                  !config ? "config" : "out")
                      : MHA_INVALID_ARGUMENT;
    mha_context *ctx = device->ctx;
    mha_status st = check_config(device, config);
    if (st != MHA_OK)
        return st;
    mha_layer *layer = mha_host_calloc(&ctx->host, 1, sizeof *layer);
    if (!layer)
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "mha_layer_create: out of memory");
    layer->device = device;
    layer->cfg = *config;
    layer->cfg.struct_size = sizeof layer->cfg;
    if (!layer->cfg.kdim)
        layer->cfg.kdim = config->embed_dim;
    if (!layer->cfg.vdim)
        layer->cfg.vdim = config->embed_dim;
    layer->cfg.bias = config->bias != 0;
    layer->cfg.add_bias_kv = config->add_bias_kv != 0;
    layer->cfg.add_zero_attn = config->add_zero_attn != 0;
    layer->cfg.batch_first = config->batch_first != 0;
    layer->head_dim = config->embed_dim / config->num_heads;
    layer->heads = config->num_heads;
    layer->kept = mha_host_malloc(&ctx->host, (size_t)layer->heads *
                                                  sizeof *layer->kept);
    if (!layer->kept) {
        mha_host_free(&ctx->host, layer);
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "mha_layer_create: out of memory");
    }
    for (int64_t h = 0; h < layer->heads; h++)
        layer->kept[h] = h;
    layer->wbytes = mha_layer_layout_slots(layer) *
                    mha_dtype_storage_size(config->dtype);
    st = mha_dev_alloc(device, layer->wbytes, &layer->wbuf);
    if (st != MHA_OK) {
        mha_host_free(&ctx->host, layer->kept);
        mha_host_free(&ctx->host, layer);
        return mha_host_finish(&ctx->host, "mha_layer_create", st);
    }
    device->open_objects++;
    mha_clear_error(ctx);
    *out = layer;
    return MHA_OK;
}

mha_status mha_layer_destroy(mha_layer *layer)
{
    if (!layer)
        return MHA_OK;
    mha_device *device = layer->device;
    for (int i = 0; i < MHA_PLAN_CACHE; i++)
        mha_plan_destroy(layer, layer->plans[i]);
    mha_saved_release(layer);
    mha_dev_free(device, layer->wbuf, layer->wbytes);
    device->open_objects--;
    mha_host_free(&device->ctx->host, layer->kept);
    mha_host_free(&device->ctx->host, layer);
    mha_clear_error(device->ctx);
    return MHA_OK;
}

/* ---- weights --------------------------------------------------------------- */

static const char *const all_weight_names[] = {
    "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
    "in_proj_bias",   "out_proj.weight", "out_proj.bias", "bias_k",
    "bias_v",
};

int mha_is_mha_weight_name(const char *name)
{
    for (size_t i = 0; i < sizeof all_weight_names / sizeof *all_weight_names;
         i++)
        if (strcmp(all_weight_names[i], name) == 0)
            return 1;
    return 0;
}

static mha_weight_spec spec(const char *name, mha_wslot first, int slots,
                            int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    mha_weight_spec s = {name, first, slots, ndim, {d0, d1, d2}};
    return s;
}

int mha_layer_weight_specs(const mha_layer *layer, mha_weight_spec *specs)
{
    const mha_layer_config *c = &layer->cfg;
    int64_t E = c->embed_dim, I = mha_layer_inner(layer); /* E unpruned */
    int n = 0;
    if (c->kdim == E && c->vdim == E) {
        specs[n++] = spec("in_proj_weight", MHA_W_Q, 3, 2, 3 * I, E, 0);
    } else {
        specs[n++] = spec("q_proj_weight", MHA_W_Q, 1, 2, I, E, 0);
        specs[n++] = spec("k_proj_weight", MHA_W_K, 1, 2, I, c->kdim, 0);
        specs[n++] = spec("v_proj_weight", MHA_W_V, 1, 2, I, c->vdim, 0);
    }
    if (c->bias)
        specs[n++] = spec("in_proj_bias", MHA_B_Q, 3, 1, 3 * I, 0, 0);
    specs[n++] = spec("out_proj.weight", MHA_W_O, 1, 2, E, I, 0);
    if (c->bias)
        specs[n++] = spec("out_proj.bias", MHA_B_O, 1, 1, E, 0, 0);
    if (c->add_bias_kv) {
        specs[n++] = spec("bias_k", MHA_BIAS_K, 1, 3, 1, 1, I);
        specs[n++] = spec("bias_v", MHA_BIAS_V, 1, 3, 1, 1, I);
    }
    return n;
}

mha_status mha_layer_write_weight(mha_layer *layer, mha_wslot first,
                                  size_t offset, const float *data,
                                  size_t count)
{
    mha_device *device = layer->device;
    size_t at = layer->woff[first] + offset;
    layer->generation++;
    if (layer->cfg.dtype == MHA_F32)
        return mha_dev_write(device, layer->wbuf, at * 4, data, count * 4);
    uint16_t chunk[CHUNK];
    for (size_t done = 0; done < count;) {
        size_t n = count - done < CHUNK ? count - done : CHUNK;
        for (size_t i = 0; i < n; i++)
            chunk[i] = mha_f32_to_f16(data[done + i]);
        mha_status st = mha_dev_write(device, layer->wbuf, (at + done) * 2,
                                      chunk, n * 2);
        if (st != MHA_OK)
            return st;
        done += n;
    }
    return MHA_OK;
}

int mha_weight_shape_matches(const mha_weight_spec *s, int ndim,
                             const int64_t *shape)
{
    if (s->ndim == 3 && ndim == 1)
        return shape[0] == s->shape[2];
    if (ndim != s->ndim)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (shape[i] != s->shape[i])
            return 0;
    return 1;
}

mha_status mha_layer_check_set(const mha_layer *layer, const char *fn)
{
    mha_weight_spec specs[8];
    int n = mha_layer_weight_specs(layer, specs);
    for (int i = 0; i < n; i++) {
        unsigned bits = ((1u << specs[i].slots) - 1u) << specs[i].first;
        if ((layer->set & bits) != bits)
            return mha_error(layer->device->ctx, MHA_MISSING_WEIGHT,
                             "%s: weight \"%s\" was not set", fn,
                             specs[i].name);
    }
    return MHA_OK;
}

mha_status mha_find_weight_spec(mha_layer *layer, const char *fn,
                                const char *name, mha_weight_spec *out)
{
    mha_context *ctx = layer->device->ctx;
    mha_weight_spec specs[8];
    int n = mha_layer_weight_specs(layer, specs);
    for (int i = 0; i < n; i++) {
        if (strcmp(specs[i].name, name) == 0) {
            *out = specs[i];
            return MHA_OK;
        }
    }
    if (mha_is_mha_weight_name(name))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: \"%s\" is not a weight of this layer "
                         "(embed_dim=%lld kdim=%lld vdim=%lld bias=%d "
                         "add_bias_kv=%d)",
                         fn, name, (long long)layer->cfg.embed_dim,
                         (long long)layer->cfg.kdim,
                         (long long)layer->cfg.vdim, layer->cfg.bias,
                         layer->cfg.add_bias_kv);
    return mha_error(ctx, MHA_NOT_FOUND,
                     "%s: \"%s\" is not an nn.MultiheadAttention weight name",
                     fn, name);
}

mha_status mha_layer_set_weight(mha_layer *layer, const char *name,
                                const float *data, int ndim,
                                const int64_t *shape)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!name || !data || !shape)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_layer_set_weight: %s is NULL",
                         !name ? "name" : !data ? "data" : "shape");
    mha_weight_spec s;
    mha_status st = mha_find_weight_spec(layer, "mha_layer_set_weight", name,
                                         &s);
    if (st != MHA_OK)
        return st;
    if (ndim < 1 || ndim > MHA_MAX_DIMS || !mha_weight_shape_matches(&s, ndim, shape)) {
        char got[96], want[96];
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "mha_layer_set_weight: %s has shape %s; expected %s",
                         name,
                         ndim >= 1 && ndim <= MHA_MAX_DIMS
                             ? mha_shape_str(got, sizeof got, ndim, shape)
                             : "with a bad dimension count",
                         mha_shape_str(want, sizeof want, s.ndim, s.shape));
    }
    size_t count = 0;
    for (int i = 0; i < s.slots; i++)
        count += layer->wlen[s.first + i];
    st = mha_layer_write_weight(layer, s.first, 0, data, count);
    if (st != MHA_OK)
        return mha_host_finish(&ctx->host, "mha_layer_set_weight", st);
    for (int i = 0; i < s.slots; i++)
        layer->set |= 1u << (s.first + i);
    mha_clear_error(ctx);
    return MHA_OK;
}
