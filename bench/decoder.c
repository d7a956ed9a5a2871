/* decoder.c: mha-bench's decoder cases (mha_decoder with its KV cache): a
 * cache filled with random keys and values to the case's length, then
 * decode (or prefill) steps timed on device tensors, each followed by a
 * truncate back so every step sees the same length. Results are not
 * checked here: tests/test_decoder.c holds the layer to PyTorch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct decoder_run {
    mha_decoder *layer;
    mha_kv_cache *cache;
    const mha_decoder_forward_args *args;
    int64_t batch, keep;
} decoder_run;

/* One step: forward, then the cache back to its length before it. */
static int step_once(void *arg)
{
    decoder_run *run = arg;
    mha_status st = mha_decoder_forward(run->layer, run->args);
    for (int64_t b = 0; st == MHA_OK && b < run->batch; b++)
        st = mha_kv_cache_truncate(run->cache, b, run->keep);
    return (int)st;
}

static float *random_floats(size_t n, uint32_t seed, float scale)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; p && i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = ((float)(seed >> 8) / 16777216.0f - 0.5f) * 2.0f * scale;
    }
    return p;
}

static mha_status make_tensor(mha_device *dev, int nd, const int64_t *shape,
                              uint32_t seed, float scale, mha_tensor **out)
{
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    mha_status st = mha_tensor_create(dev, MHA_F32, nd, shape, out);
    if (st != MHA_OK || !seed)
        return st;
    float *data = random_floats(n, seed, scale);
    st = data ? mha_tensor_upload(*out, data, n * sizeof *data)
              : MHA_OUT_OF_MEMORY;
    free(data);
    return st;
}

static mha_status set_weights(mha_decoder *l, const bench_case *c)
{
    int64_t e = c->embed_dim, q = c->heads * c->head_dim;
    int64_t kv = c->kv_heads * c->head_dim;
    const struct {
        const char *name;
        int64_t rows, cols;
    } w[] = {{"q_proj.weight", q, e}, {"k_proj.weight", kv, e},
             {"v_proj.weight", kv, e}, {"o_proj.weight", e, q}};
    mha_status st = MHA_OK;
    for (size_t i = 0; i < 4 && st == MHA_OK; i++) {
        int64_t shape[2] = {w[i].rows, w[i].cols};
        float *data = random_floats((size_t)(w[i].rows * w[i].cols),
                                    (uint32_t)(11 + i),
                                    1.0f / sqrtf((float)w[i].cols));
        st = data ? mha_decoder_set_weight(l, w[i].name, data, 2, shape)
                  : MHA_OUT_OF_MEMORY;
        free(data);
    }
    return st;
}

/* The cache of case c with src_len - tgt_len random tokens a sequence. */
static mha_status fill_cache(mha_device *dev, const bench_case *c,
                             mha_kv_cache **out)
{
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = c->src_len;
    kc.num_sequences = c->batch;
    kc.num_kv_heads = c->kv_heads;
    kc.head_dim = c->head_dim;
    kc.dtype = c->cache_dtype;
    mha_status st = mha_kv_cache_create(dev, &kc, out);
    int64_t held = c->src_len - c->tgt_len;
    if (st != MHA_OK || held == 0)
        return st;
    int64_t shape[3] = {held, c->kv_heads, c->head_dim};
    mha_tensor *k = NULL, *v = NULL;
    if ((st = make_tensor(dev, 3, shape, 3, 1.0f, &k)) == MHA_OK &&
        (st = make_tensor(dev, 3, shape, 5, 1.0f, &v)) == MHA_OK)
        for (int64_t b = 0; b < c->batch && st == MHA_OK; b++)
            st = mha_kv_cache_append(*out, b, k, v);
    mha_tensor_destroy(k);
    mha_tensor_destroy(v);
    return st;
}

static void fail(bench_result *r, mha_context *ctx, const char *what,
                 mha_status st)
{
    snprintf(r->status, sizeof r->status, "%s",
             st == MHA_UNSUPPORTED ? "skip" : "error");
    snprintf(r->note, sizeof r->note, "%s: %s: %s", what, mha_status_str(st),
             mha_context_errmsg(ctx));
}

void bench_decoder_case(mha_context *ctx, mha_device *dev,
                        const bench_options *o, const bench_case *c,
                        bench_result *r)
{
    mha_decoder_config cfg;
    mha_decoder_config_init(&cfg, c->embed_dim, c->heads);
    cfg.num_kv_heads = c->kv_heads;
    cfg.head_dim = c->head_dim;
    cfg.rope_theta = 500000.0f;
    cfg.window = c->window;
    cfg.softcap = c->softcap;
    mha_decoder *layer = NULL;
    mha_kv_cache *cache = NULL;
    mha_tensor *x = NULL, *y = NULL;
    int64_t shape[3] = {c->batch, c->tgt_len, c->embed_dim};
    mha_status st;
    if ((st = mha_decoder_create(dev, &cfg, &layer)) ||
        (st = set_weights(layer, c)) || (st = fill_cache(dev, c, &cache)) ||
        (st = make_tensor(dev, 3, shape, 7, 1.0f, &x)) ||
        (st = make_tensor(dev, 3, shape, 0, 0.0f, &y))) {
        fail(r, ctx, "setup", st);
        goto done;
    }
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = x, a.cache = cache, a.output = y;
    decoder_run run = {layer, cache, &a, c->batch, c->src_len - c->tgt_len};
    double t0 = bench_now();
    st = (mha_status)step_once(&run);
    r->first_ms = 1e3 * (bench_now() - t0);
    for (int i = 0; st == MHA_OK && i < o->warmup; i++)
        st = (mha_status)step_once(&run);
    if (st != MHA_OK) {
        fail(r, ctx, "forward", st);
        goto done;
    }
    int rc = bench_time_runs(o, step_once, &run, r);
    if (rc) {
        fail(r, ctx, "forward", rc > 0 ? (mha_status)rc : MHA_OUT_OF_MEMORY);
        goto done;
    }
    snprintf(r->status, sizeof r->status, "ok");
    snprintf(r->note, sizeof r->note,
             "decoder step, %s cache; checked by tests/test_decoder.c",
             c->cache_dtype == MHA_F16 ? "f16" : "f32");
    if (r->median_ms > 0) {
        r->gflops = bench_flops(c) / (r->median_ms * 1e6);
        r->gbps = bench_bytes(c) / (r->median_ms * 1e6);
    }
done:
    mha_tensor_destroy(x);
    mha_tensor_destroy(y);
    mha_kv_cache_destroy(cache);
    mha_decoder_destroy(layer);
}
