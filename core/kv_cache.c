/* kv_cache.c: mha_kv_cache, the keys and values of a decoder layer's past
 * tokens on the device. Token-major storage ([sequence, token, kv head,
 * d]) so a projection's rows land in it as they are and the attention reads
 * heads as strided views; each sequence's length lives on the host (for
 * checks and views) and in a device MHA_I32 buffer (the attention's KV_LEN
 * source), so the length is data and never a shape. Appends are ROPE nodes
 * with rope_dims 0: a strided copy that converts to the cache's dtype. A
 * ring (window W > 0) bounds memory by capacity: when full it moves its
 * last W - 1 rows to the front, so keys stay contiguous and in order and
 * the attention node is the same as a full cache's. */
#include <string.h>

#include "kv_cache.h"
#include "tensor.h"

#define MAX_HEAD_DIM 256

mha_status mha_kv_cache_config_init_sized(mha_kv_cache_config *config,
                                          size_t struct_size)
{
    if (mha_struct_init(config, struct_size, sizeof *config) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    config->dtype = MHA_F32;
    return MHA_OK;
}

static mha_status check_config(mha_context *ctx, const mha_kv_cache_config *c)
{
    static const char fn[] = "mha_kv_cache_create";
    const int64_t v[4] = {c->capacity, c->num_sequences, c->num_kv_heads,
                          c->head_dim};
    static const char *const names[4] = {"capacity", "num_sequences",
                                         "num_kv_heads", "head_dim"};
    for (int i = 0; i < 4; i++)
        if (v[i] <= 0 || v[i] > INT32_MAX)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: %s is %lld; expected 1 to %d", fn, names[i],
                             (long long)v[i], INT32_MAX);
    if (c->head_dim > MAX_HEAD_DIM)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: head_dim %lld is larger than %d", fn,
                         (long long)c->head_dim, MAX_HEAD_DIM);
    if (c->dtype != MHA_F32 && c->dtype != MHA_F16)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: dtype %d (%s); expected f32 or f16", fn,
                         (int)c->dtype, mha_dtype_name(c->dtype));
    if (c->window < 0 || c->window > c->capacity)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: window %lld; expected 0 (a full cache) to "
                         "capacity %lld",
                         fn, (long long)c->window, (long long)c->capacity);
    return MHA_OK;
}

static void cache_free(mha_kv_cache *c)
{
    mha_device *dev = c->device;
    for (int i = 0; i < 2; i++)
        mha_dev_free(dev, c->kv[i], c->kv[i] ? c->kv_bytes : 0);
    mha_dev_free(dev, c->len_buf,
                 c->len_buf ? (size_t)c->cfg.num_sequences * 4 : 0);
    mha_host_free(&dev->ctx->host, c->len);
    mha_host_free(&dev->ctx->host, c->start);
    mha_host_free(&dev->ctx->host, c);
}

mha_status mha_kv_cache_create(mha_device *device,
                               const mha_kv_cache_config *config,
                               mha_kv_cache **out)
{
    static const char fn[] = "mha_kv_cache_create";
    if (!device)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = device->ctx;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: out is NULL", fn);
    if (!config)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: config is NULL", fn);
    mha_status st = mha_struct_check(&ctx->host, fn, "mha_kv_cache_config",
                                     config, sizeof *config);
    if (st == MHA_OK)
        st = check_config(ctx, config);
    if (st != MHA_OK)
        return st;
    size_t bytes = mha_dtype_storage_size(config->dtype);
    int64_t dims[4] = {config->num_sequences, config->capacity,
                       config->num_kv_heads, config->head_dim};
    for (int i = 0; i < 4; i++)
        if (!mha_mul_size(bytes, (size_t)dims[i], &bytes))
            return mha_error(ctx, MHA_OVERFLOW,
                             "%s: the cache's bytes overflow size_t", fn);
    mha_kv_cache *c = mha_host_calloc(&ctx->host, 1, sizeof *c);
    if (!c)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    c->device = device;
    memcpy(&c->cfg, config, sizeof c->cfg < config->struct_size
                                ? sizeof c->cfg
                                : config->struct_size);
    c->cfg.struct_size = sizeof c->cfg;
    c->kv_bytes = bytes;
    size_t nseq = (size_t)config->num_sequences;
    c->len = mha_host_calloc(&ctx->host, nseq, sizeof *c->len);
    c->start = mha_host_calloc(&ctx->host, nseq, sizeof *c->start);
    st = c->len && c->start ? MHA_OK
                : mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    for (int i = 0; i < 2 && st == MHA_OK; i++)
        st = mha_dev_alloc(device, bytes, &c->kv[i]);
    if (st == MHA_OK)
        st = mha_dev_alloc(device, nseq * 4, &c->len_buf);
    if (st == MHA_OK)
        st = mha_dev_write(device, c->len_buf, 0, c->len, nseq * 4);
    if (st != MHA_OK) {
        cache_free(c);
        return st;
    }
    device->open_objects++;
    mha_clear_error(ctx);
    *out = c;
    return MHA_OK;
}

mha_status mha_kv_cache_destroy(mha_kv_cache *cache)
{
    if (!cache)
        return MHA_OK;
    cache->device->open_objects--;
    cache_free(cache);
    return MHA_OK;
}

mha_tdesc mha_kv_view(const mha_kv_cache *cache, int which, int64_t first,
                      int64_t nseq, int64_t row, int64_t rows)
{
    const mha_kv_cache_config *c = &cache->cfg;
    int64_t hd = c->num_kv_heads * c->head_dim;
    mha_tdesc t = {.dtype = c->dtype,
                   .ne = {nseq, c->num_kv_heads, rows, c->head_dim},
                   .nb = {c->capacity * hd, c->head_dim, hd, 1},
                   .buf = cache->kv[which], .bind_whole = 1};
    t.offset = (size_t)((first * c->capacity + row) * hd) *
               mha_dtype_storage_size(c->dtype);
    return t;
}

mha_tdesc mha_kv_lengths(const mha_kv_cache *cache, int64_t nseq)
{
    mha_tdesc t = {.dtype = MHA_I32, .ne = {1, 1, 1, nseq},
                   .nb = {nseq, nseq, nseq, 1}, .buf = cache->len_buf};
    return t;
}

/* Rows sequence s keeps before an append of tokens: all when they fit, a
 * ring's last window - 1 when not. */
static int64_t rows_kept(const mha_kv_cache *cache, int64_t s, int64_t tokens)
{
    int64_t len = cache->len[s], w = cache->cfg.window;
    if (tokens <= cache->cfg.capacity - len || w == 0)
        return len;
    return len < w - 1 ? len : w - 1;
}

/* MHA_UNSUPPORTED unless the cache's device takes the ROPE copy node. */
static mha_status check_copy(mha_kv_cache *cache, const char *fn,
                             const mha_node *node)
{
    if (mha_dev_supports(cache->device, node))
        return MHA_OK;
    return mha_error(cache->device->ctx, MHA_UNSUPPORTED,
                     "%s: the device cannot copy %s into a %s cache", fn,
                     mha_dtype_name(node->src[MHA_SRC_ROPE_X].dtype),
                     mha_dtype_name(cache->cfg.dtype));
}

/* A ROPE copy node run on the cache's device, or MHA_UNSUPPORTED. */
static mha_status run_copy(mha_kv_cache *cache, const char *fn,
                           const mha_node *node)
{
    mha_status st = check_copy(cache, fn, node);
    return st == MHA_OK ? mha_dev_run(cache->device, node) : st;
}

/* Moves the last keep rows of sequence s to the front, in chunks no longer
 * than the distance moved so no node reads rows it writes; with run 0,
 * only asks the device whether it takes every move (MHA_UNSUPPORTED if
 * not), which mha_kv_make_room does before it moves anything, so a refused
 * move leaves the cache as it was. */
static mha_status shift(mha_kv_cache *cache, const char *fn, int64_t s,
                        int64_t keep, int run)
{
    int64_t gap = cache->len[s] - keep;
    mha_status st = MHA_OK;
    for (int64_t o = 0; o < keep && st == MHA_OK; o += gap)
        for (int which = 0; which < 2 && st == MHA_OK; which++) {
            int64_t n = keep - o < gap ? keep - o : gap;
            mha_node node = {.op = MHA_OP_ROPE};
            node.src[MHA_SRC_ROPE_X] =
                mha_kv_view(cache, which, s, 1, gap + o, n);
            node.dst = mha_kv_view(cache, which, s, 1, o, n);
            st = run ? run_copy(cache, fn, &node)
                     : check_copy(cache, fn, &node);
        }
    if (st != MHA_OK || !run)
        return st;
    cache->start[s] += (int32_t)gap;
    return mha_kv_add_lengths(cache, s, 1, -gap);
}

/* MHA_LIMIT_REACHED unless sequence s can count tokens more: its logical
 * length start + len (the next default position) and a ring's start are
 * int32, on the host and in the kernels. */
static mha_status check_positions_left(mha_kv_cache *cache, const char *fn,
                                       int64_t s, int64_t tokens)
{
    int64_t seen = mha_kv_length(cache, s);
    if (tokens <= INT32_MAX - seen)
        return MHA_OK;
    return mha_error(cache->device->ctx, MHA_LIMIT_REACHED,
                     "%s: sequence %lld of the KV cache has seen %lld "
                     "tokens; appending %lld would count %lld, past the "
                     "limit of %d positions",
                     fn, (long long)s, (long long)seen, (long long)tokens,
                     (long long)(seen + tokens), INT32_MAX);
}

mha_status mha_kv_check_room(mha_kv_cache *cache, const char *fn,
                             int64_t first, int64_t nseq, int64_t tokens)
{
    mha_status st = MHA_OK;
    for (int64_t s = first; s < first + nseq && st == MHA_OK; s++) {
        st = check_positions_left(cache, fn, s, tokens);
        if (st != MHA_OK)
            return st;
        int64_t keep = rows_kept(cache, s, tokens);
        if (tokens > cache->cfg.capacity - keep)
            return mha_error(cache->device->ctx, MHA_LIMIT_REACHED,
                             "%s: sequence %lld of the KV cache holds %lld "
                             "of %lld tokens%s; appending %lld would need "
                             "%lld",
                             fn, (long long)s, (long long)keep,
                             (long long)cache->cfg.capacity,
                             cache->cfg.window ? " (a ring keeps window - 1)"
                                               : "",
                             (long long)tokens, (long long)(keep + tokens));
        if (keep < cache->len[s])
            st = shift(cache, fn, s, keep, 0);
    }
    return st;
}

mha_status mha_kv_make_room(mha_kv_cache *cache, const char *fn,
                            int64_t first, int64_t nseq, int64_t tokens)
{
    mha_status st = mha_kv_check_room(cache, fn, first, nseq, tokens);
    for (int64_t s = first; s < first + nseq && st == MHA_OK; s++) {
        int64_t keep = rows_kept(cache, s, tokens);
        if (keep < cache->len[s])
            st = shift(cache, fn, s, keep, 1);
    }
    return st;
}

int64_t mha_kv_length(const mha_kv_cache *cache, int64_t seq)
{
    return (int64_t)cache->start[seq] + cache->len[seq];
}

mha_status mha_kv_add_lengths(mha_kv_cache *cache, int64_t first,
                              int64_t nseq, int64_t delta)
{
    for (int64_t s = first; s < first + nseq; s++)
        cache->len[s] += (int32_t)delta;
    return mha_dev_write(cache->device, cache->len_buf, (size_t)first * 4,
                         cache->len + first, (size_t)nseq * 4);
}

void mha_kv_copy_node(const mha_kv_cache *cache, int which, int64_t first,
                      const mha_tdesc *src, mha_node *node)
{
    memset(node, 0, sizeof *node);
    node->op = MHA_OP_ROPE;
    node->src[MHA_SRC_ROPE_X] = *src;
    node->dst = mha_kv_view(cache, which, first, src->ne[0], cache->len[first],
                            src->ne[2]);
}

/* ---- public operations ------------------------------------------------------ */

static mha_status check_seq(const mha_kv_cache *cache, const char *fn,
                            int64_t seq)
{
    if (seq >= 0 && seq < cache->cfg.num_sequences)
        return MHA_OK;
    return mha_error(cache->device->ctx, MHA_INVALID_ARGUMENT,
                     "%s: sequence %lld; the cache holds 0 to %lld", fn,
                     (long long)seq, (long long)cache->cfg.num_sequences - 1);
}

/* key or value: [T, Hkv, d], f32 or f16, on the cache's device. */
static mha_status check_kv_tensor(mha_kv_cache *cache, const char *what,
                                  const mha_tensor *t, int64_t *T)
{
    static const char fn[] = "mha_kv_cache_append";
    mha_context *ctx = cache->device->ctx;
    const mha_kv_cache_config *c = &cache->cfg;
    char got[96];
    if (!t)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                         what);
    if (t->device != cache->device)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s lives on another device than the cache", fn,
                         what);
    if (t->dtype != MHA_F32 && t->dtype != MHA_F16)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: %s has dtype %s; expected f32 or f16", fn, what,
                         mha_dtype_name(t->dtype));
    if (t->ndim != 3 || t->shape[1] != c->num_kv_heads ||
        t->shape[2] != c->head_dim || (*T && t->shape[0] != *T))
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: %s has shape %s; expected [T, %lld, %lld] "
                         "(T the same for key and value)",
                         fn, what, mha_shape_str(got, sizeof got, t->ndim,
                                                 t->shape),
                         (long long)c->num_kv_heads, (long long)c->head_dim);
    *T = t->shape[0];
    return MHA_OK;
}

mha_status mha_kv_cache_append(mha_kv_cache *cache, int64_t seq,
                               const mha_tensor *key, const mha_tensor *value)
{
    static const char fn[] = "mha_kv_cache_append";
    if (!cache)
        return MHA_INVALID_ARGUMENT;
    int64_t T = 0;
    const mha_tensor *t[2] = {key, value};
    mha_status st = check_seq(cache, fn, seq);
    for (int i = 0; i < 2 && st == MHA_OK; i++)
        st = check_kv_tensor(cache, i ? "value" : "key", t[i], &T);
    if (st == MHA_OK)
        st = mha_kv_check_room(cache, fn, seq, 1, T);
    /* every copy asked before a ring moves a row: a refused append
       changes nothing (its rows are where they will be after the move) */
    int64_t Hkv = cache->cfg.num_kv_heads, d = cache->cfg.head_dim;
    mha_node node[2];
    for (int i = 0; i < 2 && st == MHA_OK; i++) {
        const int64_t *sb = t[i]->strides; /* [T, Hkv, d], maybe a view */
        mha_tdesc src = {.dtype = t[i]->dtype, .ne = {1, Hkv, T, d},
                         .nb = {T * sb[0], sb[1], sb[0], sb[2]},
                         .buf = t[i]->buf,
                         .offset = t[i]->offset *
                                   mha_dtype_storage_size(t[i]->dtype)};
        mha_kv_copy_node(cache, i, seq, &src, &node[i]);
        node[i].dst = mha_kv_view(cache, i, seq, 1,
                                  rows_kept(cache, seq, T), T);
        st = check_copy(cache, fn, &node[i]);
    }
    if (st == MHA_OK)
        st = mha_kv_make_room(cache, fn, seq, 1, T);
    for (int i = 0; i < 2 && st == MHA_OK; i++)
        st = mha_dev_run(cache->device, &node[i]);
    if (st == MHA_OK)
        st = mha_kv_add_lengths(cache, seq, 1, T);
    if (st == MHA_OK)
        st = mha_dev_sync(cache->device);
    if (st == MHA_OK)
        mha_clear_error(cache->device->ctx);
    return st;
}

mha_status mha_kv_cache_length(const mha_kv_cache *cache, int64_t seq,
                               int64_t *length)
{
    if (!cache)
        return MHA_INVALID_ARGUMENT;
    mha_status st = check_seq(cache, "mha_kv_cache_length", seq);
    if (st == MHA_OK && !length)
        st = mha_error(cache->device->ctx, MHA_INVALID_ARGUMENT,
                       "mha_kv_cache_length: length is NULL");
    if (st != MHA_OK)
        return st;
    *length = mha_kv_length(cache, seq);
    return MHA_OK;
}

mha_status mha_kv_cache_truncate(mha_kv_cache *cache, int64_t seq,
                                 int64_t length)
{
    static const char fn[] = "mha_kv_cache_truncate";
    if (!cache)
        return MHA_INVALID_ARGUMENT;
    mha_status st = check_seq(cache, fn, seq);
    if (st != MHA_OK)
        return st;
    int64_t now = mha_kv_length(cache, seq), start = cache->start[seq];
    /* a ring keeps what the next query needs: window - 1 tokens back */
    int64_t need = length - (cache->cfg.window - 1);
    if (length < 0 || length > now)
        st = mha_error(cache->device->ctx, MHA_INVALID_ARGUMENT,
                       "%s: length %lld; sequence %lld holds %lld tokens, so "
                       "expected 0 to %lld",
                       fn, (long long)length, (long long)seq, (long long)now,
                       (long long)now);
    else if (start > 0 && need < start)
        st = mha_error(cache->device->ctx, MHA_INVALID_ARGUMENT,
                       "%s: length %lld; sequence %lld's ring holds tokens "
                       "%lld to %lld, so a length below %lld would need "
                       "tokens it dropped",
                       fn, (long long)length, (long long)seq,
                       (long long)start, (long long)now - 1,
                       (long long)(start + cache->cfg.window - 1));
    if (st == MHA_OK)
        st = mha_kv_add_lengths(cache, seq, 1, length - now);
    if (st == MHA_OK)
        mha_clear_error(cache->device->ctx);
    return st;
}

mha_status mha_kv_cache_clear(mha_kv_cache *cache)
{
    if (!cache)
        return MHA_INVALID_ARGUMENT;
    size_t nseq = (size_t)cache->cfg.num_sequences;
    memset(cache->len, 0, nseq * sizeof *cache->len);
    memset(cache->start, 0, nseq * sizeof *cache->start);
    mha_status st = mha_kv_add_lengths(cache, 0, cache->cfg.num_sequences, 0);
    if (st == MHA_OK)
        mha_clear_error(cache->device->ctx);
    return st;
}
