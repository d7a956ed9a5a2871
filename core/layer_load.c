/* layer_load.c: mha_layer_load_safetensors, weights straight from a
 * PyTorch state_dict saved with safetensors. Every needed key is checked
 * (present, float, right shape) before any is written, so a bad file leaves
 * the layer as it was. A file of a pruned layer (layer_save.c) names its
 * kept heads; the layer is pruned alike before its weights are written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layer.h"
#include "safetensors.h"

#define MAX_KEY 512

static mha_status full_key(mha_context *ctx, const char *prefix,
                           const char *name, char key[MAX_KEY])
{
    if ((size_t)snprintf(key, MAX_KEY, "%s%s", prefix, name) >= MAX_KEY)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_layer_load_safetensors: prefix \"%s\" is too "
                         "long",
                         prefix);
    return MHA_OK;
}

/* The part of name before an nn.MultiheadAttention weight name
 * ("encoder.layers.0.self_attn." of "encoder.layers.0.self_attn.bias_k"),
 * its length, or -1 when name ends in none. */
static int attention_prefix_len(const char *name)
{
    for (int k = 0; name[k]; k++)
        if ((k == 0 || name[k - 1] == '.') && mha_is_mha_weight_name(name + k))
            return k;
    return -1;
}

/* Lists in buf the first few distinct attention prefixes the file holds
 * ("a.", "b.", ...), so a wrong prefix's message shows the right ones. */
static void list_prefixes(const mha_st_file *file, char *buf, size_t size)
{
    enum { SHOWN = 4 };
    const char *seen[SHOWN];
    int lens[SHOWN], n = 0, more = 0;
    for (int i = 0; i < mha_st_count(file); i++) {
        const char *name = mha_st_entry_at(file, i)->name;
        int len = attention_prefix_len(name), dup = 0;
        for (int j = 0; len >= 0 && j < n; j++)
            dup |= lens[j] == len && strncmp(seen[j], name, (size_t)len) == 0;
        if (len < 0 || dup)
            continue;
        if (n == SHOWN) {
            more = 1;
            break;
        }
        seen[n] = name;
        lens[n++] = len;
    }
    size_t used = (size_t)snprintf(buf, size, n ? "; attention prefixes in "
                                                  "the file:"
                                                : "; the file holds no "
                                                  "nn.MultiheadAttention "
                                                  "weights");
    for (int j = 0; j < n && used < size; j++)
        used += (size_t)snprintf(buf + used, size - used, "%s \"%.*s\"",
                                 j ? "," : "", lens[j], seen[j]);
    if (more && used < size)
        snprintf(buf + used, size - used, ", ...");
}

static mha_status check_entry(mha_context *ctx, const mha_st_file *file,
                              const char *path, const char *key,
                              const mha_weight_spec *s, const mha_st_entry *e)
{
    static const char fn[] = "mha_layer_load_safetensors";
    char got[96], want[96];
    if (!e) {
        char prefixes[400];
        list_prefixes(file, prefixes, sizeof prefixes);
        return mha_error(ctx, MHA_MISSING_WEIGHT,
                         "%s: %s has no tensor \"%s\"%s", fn, path, key,
                         prefixes);
    }
    if (!mha_st_is_float(e))
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: tensor \"%s\" in %s has dtype %s; expected F32, "
                         "F16, BF16 or F64",
                         fn, key, path, e->dtype);
    if (e->ndim > MHA_MAX_DIMS || !mha_weight_shape_matches(s, e->ndim, e->shape))
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: tensor \"%s\" in %s has shape %s; expected %s",
                         fn, key, path,
                         mha_shape_str(got, sizeof got, e->ndim, e->shape),
                         mha_shape_str(want, sizeof want, s->ndim, s->shape));
    return MHA_OK;
}

/* A key nn.MultiheadAttention would have, but not with this config (a
 * bias=False layer meeting a file with biases): refuse rather than ignore. */
static mha_status check_unexpected(mha_layer *layer, mha_st_file *file,
                                   const char *path, const char *prefix,
                                   const mha_weight_spec *specs, int n)
{
    mha_context *ctx = layer->device->ctx;
    size_t plen = strlen(prefix);
    for (int i = 0; i < mha_st_count(file); i++) {
        const char *name = mha_st_entry_at(file, i)->name;
        if (strncmp(name, prefix, plen) != 0 ||
            !mha_is_mha_weight_name(name + plen))
            continue;
        int needed = 0;
        for (int j = 0; j < n; j++)
            needed |= strcmp(specs[j].name, name + plen) == 0;
        if (!needed) {
            mha_weight_spec unused;
            mha_status st = mha_find_weight_spec(
                layer, "mha_layer_load_safetensors", name + plen, &unused);
            char why[MHA_ERRMSG_SIZE];
            snprintf(why, sizeof why, "%s", mha_context_errmsg(ctx));
            return mha_error(ctx, st,
                             "mha_layer_load_safetensors: %s has \"%s\", "
                             "which this layer's config does not: %s",
                             path, name, why);
        }
    }
    return MHA_OK;
}

/* The heads a saved pruned layer keeps ("libmha.kept_heads", ascending)
 * into keep[] (cfg.num_heads entries); *count -1 when the file does not
 * say. Each must be a head this layer still has. */
static mha_status kept_in_file(mha_layer *layer, mha_st_file *file,
                               const char *path, int64_t *keep,
                               int64_t *count)
{
    static const char fn[] = "mha_layer_load_safetensors";
    mha_context *ctx = layer->device->ctx;
    const char *list = mha_st_metadata(file, "libmha.kept_heads");
    const char *heads = mha_st_metadata(file, "libmha.num_heads");
    int64_t H = layer->cfg.num_heads;
    *count = -1;
    if (!list)
        return MHA_OK;
    if (heads && strtoll(heads, NULL, 10) != H)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s was saved from a layer of %s heads; this "
                         "one has %lld", fn, path, heads, (long long)H);
    int64_t n = 0;
    for (const char *p = list; *p;) {
        char *end;
        long long h = strtoll(p, &end, 10);
        if (end == p || (*end && *end != ',') || h < 0 || h >= H ||
            (n && h <= keep[n - 1]) || n == H)
            return mha_error(ctx, MHA_CORRUPT_FILE,
                             "%s: %s: metadata libmha.kept_heads \"%s\" is "
                             "not an ascending list of heads 0 to %lld",
                             fn, path, list, (long long)H - 1);
        keep[n++] = h;
        p = *end ? end + 1 : end;
    }
    for (int64_t k = 0; k < n; k++) {
        int64_t p = 0;
        while (p < layer->heads && layer->kept[p] != keep[k])
            p++;
        if (p == layer->heads)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: %s keeps head %lld, which this layer "
                             "pruned", fn, path, (long long)keep[k]);
    }
    if (n == 0)
        return mha_error(ctx, MHA_CORRUPT_FILE,
                         "%s: %s: metadata libmha.kept_heads is empty", fn,
                         path);
    *count = n;
    return MHA_OK;
}

/* Prunes the heads of layer that keep[0 .. n) does not hold. */
static mha_status prune_to(mha_layer *layer, const int64_t *keep, int64_t n)
{
    mha_context *ctx = layer->device->ctx;
    int64_t *gone = mha_host_malloc(&ctx->host, (size_t)layer->heads *
                                                    sizeof *gone);
    if (!gone)
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "mha_layer_load_safetensors: out of memory");
    int64_t count = 0;
    for (int64_t p = 0; p < layer->heads; p++) {
        int kept = 0;
        for (int64_t k = 0; k < n; k++)
            kept |= keep[k] == layer->kept[p];
        if (!kept)
            gone[count++] = layer->kept[p];
    }
    mha_status st = mha_layer_prune_heads(layer, gone, count);
    mha_host_free(&ctx->host, gone);
    return st;
}

static mha_status load_all(void *obj, mha_st_file *file, const char *path,
                           const char *prefix)
{
    mha_layer *layer = obj;
    mha_context *ctx = layer->device->ctx;
    mha_weight_spec specs[8];
    const mha_st_entry *entries[8];
    char key[MAX_KEY];
    int64_t *keep = mha_host_malloc(&ctx->host, (size_t)layer->cfg.num_heads *
                                                    sizeof *keep);
    int64_t nkeep = -1;
    mha_status kst = keep ? kept_in_file(layer, file, path, keep, &nkeep)
                          : mha_error(ctx, MHA_OUT_OF_MEMORY,
                                      "mha_layer_load_safetensors: out of "
                                      "memory");
    if (kst != MHA_OK) {
        mha_host_free(&ctx->host, keep);
        return kst;
    }
    /* the specs of the layer as the file's heads make it */
    mha_layer shaped = *layer;
    if (nkeep > 0)
        shaped.heads = nkeep;
    int n = mha_layer_weight_specs(&shaped, specs);
    mha_status st = MHA_OK;
    for (int i = 0; i < n && st == MHA_OK; i++) {
        st = full_key(ctx, prefix, specs[i].name, key);
        entries[i] = st == MHA_OK ? mha_st_find(file, key) : NULL;
        if (st == MHA_OK)
            st = check_entry(ctx, file, path, key, &specs[i], entries[i]);
    }
    if (st == MHA_OK)
        st = check_unexpected(layer, file, path, prefix, specs, n);
    float *data[8] = {NULL};
    for (int i = 0; i < n && st == MHA_OK; i++) {
        data[i] = mha_host_malloc(&ctx->host,
                                  (size_t)entries[i]->count * sizeof(float));
        st = data[i] ? mha_st_read_f32(file, entries[i], data[i])
                     : mha_error(ctx, MHA_OUT_OF_MEMORY,
                                 "mha_layer_load_safetensors: out of memory "
                                 "reading \"%s\"", entries[i]->name);
    }
    if (st == MHA_OK && nkeep > 0 && nkeep < layer->heads)
        st = prune_to(layer, keep, nkeep);
    for (int i = 0; i < n && st == MHA_OK; i++)
        st = mha_layer_write_weight(layer, specs[i].first, 0, data[i],
                                    (size_t)entries[i]->count);
    for (int i = 0; i < n; i++)
        mha_host_free(&ctx->host, data[i]);
    mha_host_free(&ctx->host, keep);
    if (st != MHA_OK)
        return st;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < specs[i].slots; k++)
            layer->set |= 1u << (specs[i].first + k);
    return MHA_OK;
}

mha_status mha_layer_load_safetensors(mha_layer *layer, const char *path,
                                      const char *prefix)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    return mha_st_load(layer->device->ctx, "mha_layer_load_safetensors", path,
                       prefix, load_all, layer);
}
