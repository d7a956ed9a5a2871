/* test_decoder.c: the decoder attention layer and its KV cache
 * (mha_decoder_*, mha_kv_cache_*) on every device: prefill against a
 * double-precision Llama-attention reference written here (and against
 * float64 PyTorch fixtures of gen_decoder_fixtures.py), incremental decode equal to one
 * prefill, rollback, ragged batches, ring caches of sliding-window layers
 * equal to full ones, the errors (negative positions among them) each with
 * its own status and message, and no host allocation in a decode step.
 * Every backend runs it; only an fp16 cache on a device without fp16
 * storage may be refused. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "kv_cache.h"
#include "safetensors.h"

typedef struct dcase {
    const char *name;
    int64_t E, Hq, Hkv, d;
    mha_rope_style rope;
    int64_t rope_dims;
    float theta, scaling;
    int64_t window;
    int alibi;
    float softcap;
    int sinks, qkv_bias, o_bias;
    mha_dtype cache_dtype;
} dcase;

/* name, E, Hq, Hkv, d, rope, rope_dims, theta, scaling, window, alibi,
 * softcap, sinks, qkv_bias, o_bias, cache dtype */
static const dcase cases[] = {
    {"llama_gqa", 32, 4, 2, 8, MHA_ROPE_NEOX, 0, 10000, 1, 0, 0, 0, 0, 0, 0,
     MHA_F32},
    {"mqa_gptj_partial_bias", 24, 3, 1, 16, MHA_ROPE_GPTJ, 8, 500000, 2, 0, 0,
     0, 0, 1, 1, MHA_F32},
    {"window_softcap_sinks", 32, 4, 4, 8, MHA_ROPE_NEOX, 6, 10000, 1, 3, 0,
     1.5f, 1, 0, 0, MHA_F32},
    {"alibi_norope", 20, 5, 5, 4, MHA_ROPE_NONE, 0, 10000, 1, 0, 1, 0, 0, 0,
     1, MHA_F32},
    {"f16_cache", 32, 4, 2, 8, MHA_ROPE_NEOX, 0, 10000, 1, 0, 0, 0, 1, 1, 0,
     MHA_F16},
};

/* ---- the layer's weights, shared by the library and the reference -------- */

typedef struct weights {
    float *wq, *wk, *wv, *wo, *bq, *bk, *bv, *bo, *sinks;
} weights;

static float *randn(test_rng *r, size_t n, float scale)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = test_normal(r) * scale;
    return p;
}

static weights make_weights(const dcase *c, unsigned seed)
{
    test_rng r = {seed};
    int64_t q = c->Hq * c->d, kv = c->Hkv * c->d;
    float s = 1.0f / sqrtf((float)c->E);
    weights w = {randn(&r, (size_t)(q * c->E), s),
                 randn(&r, (size_t)(kv * c->E), s),
                 randn(&r, (size_t)(kv * c->E), s),
                 randn(&r, (size_t)(c->E * q), 1.0f / sqrtf((float)q)),
                 randn(&r, (size_t)q, 0.5f), randn(&r, (size_t)kv, 0.5f),
                 randn(&r, (size_t)kv, 0.5f), randn(&r, (size_t)c->E, 0.5f),
                 randn(&r, (size_t)c->Hq, 1.0f)};
    return w;
}

static void free_weights(weights *w)
{
    float *p[] = {w->wq, w->wk, w->wv, w->wo, w->bq, w->bk, w->bv, w->bo,
                  w->sinks};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        free(p[i]);
}

/* ---- the double-precision reference (HF LlamaAttention's math) ------------ */

static void ref_project(const float *x, int64_t T, int64_t K, const float *w,
                        const float *b, int64_t N, double *y)
{
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            double s = b ? b[n] : 0.0;
            for (int64_t k = 0; k < K; k++)
                s += (double)x[t * K + k] * w[n * K + k];
            y[t * N + n] = s;
        }
}

/* rotate_half (NeoX) or interleaved (GPT-J) over the first r features of
 * each head of rows [T, H*d] at positions pos. */
static void ref_rope(const dcase *c, double *rows, int64_t T, int64_t H,
                     const int32_t *pos)
{
    int64_t d = c->d, r = c->rope_dims ? c->rope_dims : d;
    if (c->rope == MHA_ROPE_NONE)
        return;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            double *x = rows + (t * H + h) * d;
            for (int64_t i = 0; i < r / 2; i++) {
                double a = pos[t] / (double)c->scaling *
                           pow(c->theta, -2.0 * (double)i / (double)r);
                int64_t c0 = c->rope == MHA_ROPE_GPTJ ? 2 * i : i;
                int64_t c1 = c->rope == MHA_ROPE_GPTJ ? 2 * i + 1 : i + r / 2;
                double u = x[c0], v = x[c1];
                x[c0] = u * cos(a) - v * sin(a);
                x[c1] = v * cos(a) + u * sin(a);
            }
        }
}

static double alibi_slope(int64_t H, int64_t h)
{
    int64_t n = 1;
    while (n * 2 <= H)
        n *= 2;
    return h < n ? pow(2.0, -8.0 * (double)(h + 1) / (double)n)
                 : pow(2.0, -4.0 * (double)(2 * (h - n) + 1) / (double)n);
}

/* One sequence's prefill from an empty cache: x [T, E] at positions
 * 0 .. T-1 -> y [T, E]. */
static void ref_prefill(const dcase *c, const weights *w, const float *x,
                        int64_t T, double *y)
{
    int64_t E = c->E, d = c->d, Hq = c->Hq, Hkv = c->Hkv, g = Hq / Hkv;
    double *q = malloc((size_t)(T * Hq * d) * sizeof *q);
    double *k = malloc((size_t)(T * Hkv * d) * sizeof *k);
    double *v = malloc((size_t)(T * Hkv * d) * sizeof *v);
    double *o = calloc((size_t)(T * Hq * d), sizeof *o);
    double *p = malloc((size_t)T * sizeof *p);
    int32_t *pos = malloc((size_t)T * sizeof *pos);
    for (int64_t t = 0; t < T; t++)
        pos[t] = (int32_t)t;
    ref_project(x, T, E, w->wq, c->qkv_bias ? w->bq : NULL, Hq * d, q);
    ref_project(x, T, E, w->wk, c->qkv_bias ? w->bk : NULL, Hkv * d, k);
    ref_project(x, T, E, w->wv, c->qkv_bias ? w->bv : NULL, Hkv * d, v);
    ref_rope(c, q, T, Hq, pos);
    ref_rope(c, k, T, Hkv, pos);
    double scale = 1.0 / sqrt((double)d);
    for (int64_t h = 0; h < Hq; h++)
        for (int64_t i = 0; i < T; i++) {
            double m = c->sinks ? w->sinks[h] : -INFINITY, sum = 0;
            for (int64_t j = 0; j < T; j++) {
                p[j] = -INFINITY;
                if (j > i || (c->window && j <= i - c->window))
                    continue;
                double s = 0;
                for (int64_t e = 0; e < d; e++)
                    s += q[(i * Hq + h) * d + e] * k[(j * Hkv + h / g) * d + e];
                s *= scale;
                if (c->softcap > 0)
                    s = c->softcap * tanh(s / c->softcap);
                if (c->alibi)
                    s += alibi_slope(Hq, h) * (double)(j - i);
                p[j] = s;
                m = s > m ? s : m;
            }
            sum = c->sinks ? exp(w->sinks[h] - m) : 0.0;
            for (int64_t j = 0; j < T; j++)
                sum += p[j] = exp(p[j] - m);
            for (int64_t j = 0; j < T; j++)
                for (int64_t e = 0; e < d; e++)
                    o[(i * Hq + h) * d + e] +=
                        p[j] / sum * v[(j * Hkv + h / g) * d + e];
        }
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < E; n++) {
            double s = c->o_bias ? w->bo[n] : 0.0;
            for (int64_t e = 0; e < Hq * d; e++)
                s += o[t * Hq * d + e] * w->wo[n * Hq * d + e];
            y[t * E + n] = s;
        }
    free(q), free(k), free(v), free(o), free(p), free(pos);
}

/* ---- the library side ----------------------------------------------------- */

typedef struct env {
    mha_context *ctx;
    mha_device *dev;
    mha_decoder *layer;
    mha_kv_cache *cache;
    const dcase *c;
    const char *label;
    char msg[512]; /* the message of forward()'s failed call */
} env;

static mha_decoder_config config_of(const dcase *c)
{
    mha_decoder_config cfg;
    cr_assert_eq(mha_decoder_config_init(&cfg, c->E, c->Hq), MHA_OK);
    cfg.num_kv_heads = c->Hkv;
    cfg.head_dim = c->d;
    cfg.rope_style = c->rope;
    cfg.rope_dims = c->rope_dims;
    cfg.rope_theta = c->theta;
    cfg.rope_scaling = c->scaling;
    cfg.window = c->window;
    cfg.alibi = c->alibi;
    cfg.softcap = c->softcap;
    cfg.sinks = c->sinks;
    cfg.qkv_bias = c->qkv_bias;
    cfg.o_bias = c->o_bias;
    return cfg;
}

static void set_weight(env *e, const char *name, const float *data,
                       int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    cr_assert_eq(mha_decoder_set_weight(e->layer, name, data, cols ? 2 : 1,
                                        shape),
                 MHA_OK, "%s: %s", name, mha_context_errmsg(e->ctx));
}

static void set_weights(env *e, const weights *w)
{
    const dcase *c = e->c;
    int64_t q = c->Hq * c->d, kv = c->Hkv * c->d;
    set_weight(e, "q_proj.weight", w->wq, q, c->E);
    set_weight(e, "k_proj.weight", w->wk, kv, c->E);
    set_weight(e, "v_proj.weight", w->wv, kv, c->E);
    set_weight(e, "o_proj.weight", w->wo, c->E, q);
    if (c->qkv_bias) {
        set_weight(e, "q_proj.bias", w->bq, q, 0);
        set_weight(e, "k_proj.bias", w->bk, kv, 0);
        set_weight(e, "v_proj.bias", w->bv, kv, 0);
    }
    if (c->o_bias)
        set_weight(e, "o_proj.bias", w->bo, c->E, 0);
    if (c->sinks)
        set_weight(e, "sinks", w->sinks, c->Hq, 0);
}

enum { RING_W = 8, RING_TOKENS = 40 }; /* the ring tests' window, tokens */

/* A cache for e's case: full (window 0) or a ring of window tokens. */
static mha_kv_cache *make_cache_windowed(env *e, int64_t capacity,
                                         int64_t nseq, int64_t window)
{
    mha_kv_cache_config kc;
    cr_assert_eq(mha_kv_cache_config_init(&kc), MHA_OK);
    kc.capacity = capacity;
    kc.num_sequences = nseq;
    kc.num_kv_heads = e->c->Hkv;
    kc.head_dim = e->c->d;
    kc.dtype = e->c->cache_dtype;
    kc.window = window;
    mha_kv_cache *cache = NULL;
    cr_assert_eq(mha_kv_cache_create(e->dev, &kc, &cache), MHA_OK, "%s",
                 mha_context_errmsg(e->ctx));
    return cache;
}

static mha_kv_cache *make_cache(env *e, int64_t capacity, int64_t nseq)
{
    return make_cache_windowed(e, capacity, nseq, 0);
}

static mha_kv_cache *make_ring(env *e, int64_t capacity)
{
    return make_cache_windowed(e, capacity, 1, RING_W);
}

static void env_open(env *e, mha_context *ctx, const test_device *td,
                     const dcase *c, const weights *w, int64_t capacity,
                     int64_t nseq)
{
    memset(e, 0, sizeof *e);
    e->ctx = ctx;
    e->c = c;
    e->label = td->label;
    e->dev = test_open(ctx, td);
    mha_decoder_config cfg = config_of(c);
    cr_assert_eq(mha_decoder_create(e->dev, &cfg, &e->layer), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    set_weights(e, w);
    e->cache = make_cache(e, capacity, nseq);
}

static void env_close(env *e)
{
    cr_assert_eq(mha_kv_cache_destroy(e->cache), MHA_OK);
    cr_assert_eq(mha_decoder_destroy(e->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(e->dev), MHA_OK);
}

/* One forward of x [B, T, E] (positions: the default) into y; returns the
 * status (MHA_UNSUPPORTED is left to the caller), its message in e->msg. */
static mha_status forward(env *e, const float *x, int64_t B, int64_t T,
                          float *y)
{
    int64_t shape[3] = {B, T, e->c->E};
    size_t bytes = (size_t)(B * T * e->c->E) * sizeof(float);
    mha_tensor *tx, *ty;
    cr_assert_eq(mha_tensor_create(e->dev, MHA_F32, 3, shape, &tx), MHA_OK);
    cr_assert_eq(mha_tensor_create(e->dev, MHA_F32, 3, shape, &ty), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tx, x, bytes), MHA_OK);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = tx;
    a.cache = e->cache;
    a.output = ty;
    mha_status st = mha_decoder_forward(e->layer, &a);
    /* kept before the destroys below, whose success clears it */
    snprintf(e->msg, sizeof e->msg, "%s", mha_context_errmsg(e->ctx));
    if (st == MHA_OK)
        cr_assert_eq(mha_tensor_download(ty, y, bytes), MHA_OK);
    mha_tensor_destroy(tx);
    mha_tensor_destroy(ty);
    return st;
}

/* Whether a device's first forward ran. Every backend runs the attention
 * core, so only an fp16 cache on a device without fp16 storage (the
 * small-device limits) may be refused; that is logged and skipped. */
static int ran(env *e, mha_status st)
{
    mha_device_info info;
    cr_assert_eq(mha_device_info_of(e->dev, &info), MHA_OK);
    if (st == MHA_UNSUPPORTED && e->c->cache_dtype == MHA_F16 &&
        !(info.features & MHA_FEATURE_FP16_STORAGE)) {
        cr_log_info("%s on %s: %s", e->c->name, e->label,
                    mha_context_errmsg(e->ctx));
        return 0;
    }
    cr_assert_eq(st, MHA_OK, "%s on %s: %s", e->c->name, e->label,
                 mha_context_errmsg(e->ctx));
    return 1;
}

static double tolerance(const dcase *c, double f32)
{
    return c->cache_dtype == MHA_F16 ? 1e-2 : f32;
}

static void expect_close(const env *e, const char *what, const float *got,
                         const double *want, size_t n, double tol)
{
    test_diff d = test_compare(got, want, n);
    cr_expect_eq(d.nonfinite_mismatch, 0, "%s %s on %s: NaN/Inf at %zu",
                 e->c->name, what, e->label, d.worst_nf);
    cr_expect_leq(d.max_abs, tol, "%s %s on %s: max abs error %g at %zu "
                  "(got %g want %g)", e->c->name, what, e->label, d.max_abs,
                  d.worst, got[d.worst], want[d.worst]);
}

typedef void (*device_check)(env *e, const weights *w, test_rng *r);

/* Runs check on every device for each of the n cases of list. */
static void each_device_of(const dcase *list, size_t n, device_check check,
                           int64_t capacity, int64_t nseq)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (size_t k = 0; k < n; k++) {
        weights w = make_weights(&list[k], 0xdec0de + (unsigned)k);
        for (int i = 0; i < nd; i++) {
            env e;
            test_rng r = {0x5eed + k};
            env_open(&e, ctx, &devs[i], &list[k], &w, capacity, nseq);
            check(&e, &w, &r);
            env_close(&e);
        }
        free_weights(&w);
    }
    mha_context_destroy(ctx);
}

/* Runs check on every device for every case. */
static void each_device_case(device_check check, int64_t capacity,
                             int64_t nseq)
{
    each_device_of(cases, sizeof cases / sizeof *cases, check, capacity, nseq);
}

/* ---- prefill against the reference ------------------------------------------ */

enum { T_PRE = 9 };

static void check_prefill(env *e, const weights *w, test_rng *r)
{
    int64_t E = e->c->E, B = 2;
    float *x = randn(r, (size_t)(B * T_PRE * E), 1.0f);
    float *y = malloc((size_t)(B * T_PRE * E) * sizeof *y);
    double *want = malloc((size_t)(B * T_PRE * E) * sizeof *want);
    for (int64_t b = 0; b < B; b++)
        ref_prefill(e->c, w, x + b * T_PRE * E, T_PRE, want + b * T_PRE * E);
    if (ran(e, forward(e, x, B, T_PRE, y)))
        expect_close(e, "prefill", y, want, (size_t)(B * T_PRE * E),
                     tolerance(e->c, 1e-4));
    free(x), free(y), free(want);
}

Test(decoder, prefill_matches_reference)
{
    each_device_case(check_prefill, 16, 2);
}

/* ---- incremental decode equals one prefill -------------------------------- */

enum { T_INC = 11 };

/* The first 4 tokens as one prefill, then one token a call, equal a single
 * prefill of all of them (on a fresh cache) token for token. */
static void check_incremental(env *e, const weights *w, test_rng *r)
{
    int64_t E = e->c->E;
    float *x = randn(r, (size_t)(T_INC * E), 1.0f);
    float *y = malloc((size_t)(T_INC * E) * sizeof *y);
    float *once = malloc((size_t)(T_INC * E) * sizeof *once);
    double *want = malloc((size_t)(T_INC * E) * sizeof *want);
    (void)w;
    if (ran(e, forward(e, x, 1, 4, y))) {
        for (int64_t t = 4; t < T_INC; t++)
            cr_assert_eq(forward(e, x + t * E, 1, 1, y + t * E), MHA_OK,
                         "%s", mha_context_errmsg(e->ctx));
        int64_t len = 0;
        cr_assert_eq(mha_kv_cache_length(e->cache, 0, &len), MHA_OK);
        cr_expect_eq(len, T_INC);
        cr_assert_eq(mha_kv_cache_clear(e->cache), MHA_OK);
        cr_assert_eq(forward(e, x, 1, T_INC, once), MHA_OK);
        for (size_t i = 0; i < (size_t)(T_INC * E); i++)
            want[i] = once[i];
        expect_close(e, "decode vs prefill", y, want, (size_t)(T_INC * E),
                     1e-5);
    }
    free(x), free(y), free(once), free(want);
}

Test(decoder, incremental_decode_equals_prefill)
{
    each_device_case(check_incremental, 32, 1);
}

/* ---- rollback ----------------------------------------------------------------- */

/* 6 tokens, truncate to 3, 3 other tokens: equal to a fresh run of the 3
 * kept and the 3 new ones. */
static void check_truncate(env *e, const weights *w, test_rng *r)
{
    int64_t E = e->c->E;
    float *x = randn(r, (size_t)(6 * E), 1.0f);
    float *other = randn(r, (size_t)(3 * E), 1.0f);
    float *y = malloc((size_t)(6 * E) * sizeof *y);
    float *fresh = malloc((size_t)(6 * E) * sizeof *fresh);
    double *want = malloc((size_t)(3 * E) * sizeof *want);
    (void)w;
    if (ran(e, forward(e, x, 1, 6, y))) {
        cr_assert_eq(mha_kv_cache_truncate(e->cache, 0, 3), MHA_OK);
        cr_assert_eq(forward(e, other, 1, 3, y + 3 * E), MHA_OK);
        memcpy(x + 3 * E, other, (size_t)(3 * E) * sizeof *x);
        cr_assert_eq(mha_kv_cache_clear(e->cache), MHA_OK);
        cr_assert_eq(forward(e, x, 1, 6, fresh), MHA_OK);
        for (size_t i = 0; i < (size_t)(3 * E); i++)
            want[i] = fresh[3 * E + i];
        expect_close(e, "truncate then append", y + 3 * E, want,
                     (size_t)(3 * E), 1e-5);
        cr_expect_eq(mha_kv_cache_truncate(e->cache, 0, 7),
                     MHA_INVALID_ARGUMENT);
    }
    free(x), free(other), free(y), free(fresh), free(want);
}

Test(decoder, truncate_then_append_equals_fresh_run)
{
    each_device_case(check_truncate, 8, 1);
}

/* ---- ragged batch --------------------------------------------------------------- */

/* Sequence 0 gets 3 tokens alone, then both sequences 2 tokens per call
 * twice (lengths 3 and 0, then 5 and 2: ragged): each result equals that
 * sequence run alone in one prefill. */
static void check_ragged(env *e, const weights *w, test_rng *r)
{
    int64_t E = e->c->E;
    size_t row = (size_t)E * sizeof(float);
    float *x[2] = {randn(r, (size_t)(7 * E), 1.0f),
                   randn(r, (size_t)(4 * E), 1.0f)};
    float *out = malloc(8 * row), *pair = malloc(4 * row);
    float *alone = malloc(7 * row);
    double *want = malloc(2 * (size_t)E * sizeof *want);
    (void)w;
    if (ran(e, forward(e, x[0], 1, 3, alone))) {
        for (int call = 0; call < 2; call++) {
            memcpy(pair, x[0] + (3 + 2 * call) * E, 2 * row);
            memcpy(pair + 2 * E, x[1] + 2 * call * E, 2 * row);
            cr_assert_eq(forward(e, pair, 2, 2, out + call * 4 * E), MHA_OK,
                         "%s", mha_context_errmsg(e->ctx));
        }
        int64_t lens[2] = {7, 4};
        for (int s = 0; s < 2; s++) {
            cr_assert_eq(mha_kv_cache_clear(e->cache), MHA_OK);
            cr_assert_eq(forward(e, x[s], 1, lens[s], alone), MHA_OK);
            for (int call = 0; call < 2; call++) {
                int64_t first = lens[s] - 4 + 2 * call;
                for (int64_t i = 0; i < 2 * E; i++)
                    want[i] = alone[first * E + i];
                expect_close(e, s ? "ragged sequence 1" : "ragged sequence 0",
                             out + (call * 4 + s * 2) * E, want,
                             (size_t)(2 * E), 1e-5);
            }
        }
    }
    free(x[0]), free(x[1]), free(out), free(pair), free(alone), free(want);
}

Test(decoder, ragged_batch_equals_separate_runs)
{
    each_device_case(check_ragged, 16, 2);
}

/* ---- errors ------------------------------------------------------------------------- */

/* A new context and its CPU device. */
static mha_device *open_cpu(mha_context **ctx)
{
    mha_device *dev;
    cr_assert_eq(mha_context_create(NULL, ctx), MHA_OK);
    cr_assert_eq(mha_device_open(*ctx, "cpu", NULL, &dev), MHA_OK);
    return dev;
}

/* The CPU device of ctx as a test_device. */
static test_device cpu_device(mha_context *ctx)
{
    mha_device *probe;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &probe), MHA_OK);
    mha_device_info info;
    mha_device_info_of(probe, &info);
    mha_device_destroy(probe);
    test_device td = {"cpu", info.index, NULL};
    return td;
}

/* A CPU environment of case c (errors do not depend on the device). */
static void cpu_env_of(env *e, mha_context *ctx, const dcase *c, weights *w,
                       int64_t capacity)
{
    test_device td = cpu_device(ctx);
    *w = make_weights(c, 1);
    env_open(e, ctx, &td, c, w, capacity, 1);
}

static void cpu_env(env *e, mha_context **ctx, weights *w, int64_t capacity)
{
    cr_assert_eq(mha_context_create(NULL, ctx), MHA_OK);
    cpu_env_of(e, *ctx, &cases[0], w, capacity);
}

Test(decoder, capacity_overflow_is_limit_reached)
{
    mha_context *ctx;
    env e;
    weights w;
    cpu_env(&e, &ctx, &w, 6);
    test_rng r = {3};
    float *x = randn(&r, (size_t)(8 * e.c->E), 1.0f);
    float *y = malloc((size_t)(8 * e.c->E) * sizeof *y);
    cr_assert_eq(forward(&e, x, 1, 4, y), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(forward(&e, x, 1, 3, y), MHA_LIMIT_REACHED);
    cr_expect(strstr(e.msg, "holds 4 of 6 tokens") &&
                  strstr(e.msg, "appending 3"),
              "%s", e.msg);
    int64_t len = 0;
    cr_assert_eq(mha_kv_cache_length(e.cache, 0, &len), MHA_OK);
    cr_expect_eq(len, 4, "a refused append changed the length to %lld",
                 (long long)len);
    cr_expect_eq(forward(&e, x, 1, 2, y), MHA_OK);
    cr_expect_eq(forward(&e, x, 1, 1, y), MHA_LIMIT_REACHED);
    env_close(&e);
    free_weights(&w);
    free(x), free(y);
    mha_context_destroy(ctx);
}

/* mha_decoder_create refuses cfg with status and makes nothing. */
static void expect_refused(mha_device *dev, mha_decoder_config cfg,
                           mha_status status)
{
    mha_decoder *l = NULL;
    cr_assert_eq(mha_decoder_create(dev, &cfg, &l), status);
    cr_expect_null(l);
}

Test(decoder, bad_configs_have_their_own_status_and_message)
{
    mha_context *ctx;
    mha_device *dev = open_cpu(&ctx);
    mha_decoder_config cfg = config_of(&cases[0]);
    struct {
        const char *what;
        int64_t Hq, Hkv, d, rope_dims;
        const char *msg;
    } bad[] = {
        {"Hq % Hkv", 6, 4, 8, 0, "num_heads 6 is not a multiple of "
                                 "num_kv_heads 4"},
        {"head_dim 0", 4, 2, 0, 0, "head_dim is 0"},
        {"head_dim 300", 4, 2, 300, 0, "head_dim is 300"},
        {"odd rope_dims", 4, 2, 8, 5, "rope_dims is 5"},
        {"rope_dims > d", 4, 2, 8, 10, "rope_dims is 10"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        mha_decoder_config c = cfg;
        c.num_heads = bad[i].Hq;
        c.num_kv_heads = bad[i].Hkv;
        c.head_dim = bad[i].d;
        c.rope_dims = bad[i].rope_dims;
        expect_refused(dev, c, MHA_INVALID_ARGUMENT);
        cr_expect(strstr(mha_context_errmsg(ctx), bad[i].msg), "%s: %s",
                  bad[i].what, mha_context_errmsg(ctx));
    }
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = 4, kc.num_sequences = 1, kc.num_kv_heads = 2;
    kc.head_dim = 300;
    mha_kv_cache *cache = NULL;
    cr_expect_eq(mha_kv_cache_create(dev, &kc, &cache), MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(ctx), "head_dim 300"), "%s",
              mha_context_errmsg(ctx));
    kc.head_dim = 8;
    kc.window = 5;
    cr_expect_eq(mha_kv_cache_create(dev, &kc, &cache), MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(ctx), "window 5") &&
                  strstr(mha_context_errmsg(ctx), "capacity 4"),
              "%s", mha_context_errmsg(ctx));
    cr_expect_null(cache);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

Test(decoder, missing_sinks_and_wrong_shapes)
{
    mha_context *ctx;
    mha_device *dev = open_cpu(&ctx);
    const dcase *c = &cases[2]; /* with sinks */
    weights w = make_weights(c, 2);
    env e;
    memset(&e, 0, sizeof e);
    e.ctx = ctx, e.c = c, e.label = "cpu", e.dev = dev;
    mha_decoder_config cfg = config_of(c);
    cr_assert_eq(mha_decoder_create(dev, &cfg, &e.layer), MHA_OK);
    int64_t q = c->Hq * c->d, kv = c->Hkv * c->d;
    set_weight(&e, "q_proj.weight", w.wq, q, c->E);
    set_weight(&e, "k_proj.weight", w.wk, kv, c->E);
    set_weight(&e, "v_proj.weight", w.wv, kv, c->E);
    set_weight(&e, "o_proj.weight", w.wo, c->E, q);
    e.cache = make_cache(&e, 8, 1);
    float x[32 * 2] = {0}, y[32 * 2];
    cr_expect_eq(forward(&e, x, 1, 2, y), MHA_MISSING_WEIGHT);
    cr_expect(strstr(e.msg, "\"sinks\""), "%s", e.msg);
    int64_t wrong[1] = {c->Hq + 1};
    cr_expect_eq(mha_decoder_set_weight(e.layer, "sinks", w.sinks, 1, wrong),
                 MHA_SHAPE_MISMATCH);
    cr_expect_eq(mha_decoder_set_weight(e.layer, "q_proj.bias", w.bq, 1, wrong),
                 MHA_NOT_FOUND, "a bias the config does not have");
    cr_expect_eq(mha_decoder_set_weight(e.layer, NULL, w.sinks, 1, wrong),
                 MHA_INVALID_ARGUMENT, "a NULL name is refused, not compared");
    cr_expect(strstr(mha_context_errmsg(ctx), "name is NULL"), "%s",
              mha_context_errmsg(ctx));
    mha_kv_cache_destroy(e.cache);
    mha_decoder_destroy(e.layer);
    free_weights(&w);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* ---- the KV cache on its own ------------------------------------------------------ */

Test(decoder, kv_cache_append_length_truncate_clear)
{
    mha_context *ctx;
    mha_device *dev = open_cpu(&ctx);
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = 5, kc.num_sequences = 2, kc.num_kv_heads = 2;
    kc.head_dim = 4;
    mha_kv_cache *cache;
    cr_assert_eq(mha_kv_cache_create(dev, &kc, &cache), MHA_OK);
    int64_t shape[3] = {3, 2, 4}, bad[3] = {3, 2, 5};
    float data[24] = {0};
    mha_tensor *k, *wrong;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 3, shape, &k), MHA_OK);
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 3, bad, &wrong), MHA_OK);
    cr_assert_eq(mha_tensor_upload(k, data, sizeof data), MHA_OK);
    int64_t len = -1;
    cr_assert_eq(mha_kv_cache_append(cache, 1, k, k), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_kv_cache_length(cache, 1, &len), MHA_OK);
    cr_expect_eq(len, 3);
    cr_assert_eq(mha_kv_cache_length(cache, 0, &len), MHA_OK);
    cr_expect_eq(len, 0);
    cr_expect_eq(mha_kv_cache_append(cache, 1, k, k), MHA_LIMIT_REACHED);
    cr_expect(strstr(mha_context_errmsg(ctx), "holds 3 of 5 tokens"), "%s",
              mha_context_errmsg(ctx));
    cr_expect_eq(mha_kv_cache_append(cache, 0, k, wrong), MHA_SHAPE_MISMATCH);
    cr_expect_eq(mha_kv_cache_append(cache, 2, k, k), MHA_INVALID_ARGUMENT);
    cr_assert_eq(mha_kv_cache_truncate(cache, 1, 1), MHA_OK);
    cr_assert_eq(mha_kv_cache_length(cache, 1, &len), MHA_OK);
    cr_expect_eq(len, 1);
    cr_expect_eq(mha_kv_cache_append(cache, 1, k, k), MHA_OK);
    cr_assert_eq(mha_kv_cache_clear(cache), MHA_OK);
    cr_assert_eq(mha_kv_cache_length(cache, 1, &len), MHA_OK);
    cr_expect_eq(len, 0);
    mha_tensor_destroy(k);
    mha_tensor_destroy(wrong);
    cr_expect_eq(mha_kv_cache_destroy(cache), MHA_OK);
    cr_expect_eq(mha_kv_cache_destroy(NULL), MHA_OK);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* ---- no host allocation in a decode step ------------------------------------------ */

typedef struct counter {
    long calls;
} counter;

static void *count_malloc(void *user, size_t size)
{
    ((counter *)user)->calls++;
    return malloc(size);
}

static void count_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

Test(decoder, decode_step_allocates_nothing)
{
    counter n = {0};
    mha_allocator alloc = {count_malloc, count_free, &n};
    mha_context_options o;
    mha_context_options_init(&o);
    o.allocator = &alloc;
    mha_context *ctx;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    const dcase *c = &cases[2]; /* window, softcap, sinks */
    weights w;
    env e;
    cpu_env_of(&e, ctx, c, &w, 64);
    int64_t shape[3] = {1, 1, c->E};
    mha_tensor *tx, *ty;
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, shape, &tx), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, shape, &ty), MHA_OK);
    test_rng r = {9};
    float *x = randn(&r, (size_t)c->E, 1.0f);
    cr_assert_eq(mha_tensor_upload(tx, x, (size_t)c->E * sizeof *x), MHA_OK);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = tx, a.cache = e.cache, a.output = ty;
    for (int warm = 0; warm < 2; warm++)
        cr_assert_eq(mha_decoder_forward(e.layer, &a), MHA_OK, "%s",
                     mha_context_errmsg(ctx));
    long before = n.calls;
    for (int step = 0; step < 20; step++)
        cr_assert_eq(mha_decoder_forward(e.layer, &a), MHA_OK);
    cr_expect_eq(n.calls, before, "20 decode steps made %ld host allocations",
                 n.calls - before);
    mha_tensor_destroy(tx);
    mha_tensor_destroy(ty);
    env_close(&e);
    free_weights(&w);
    free(x);
    mha_context_destroy(ctx);
}

/* ---- PyTorch fixtures (gen_decoder_fixtures.py) -------------------------------- */

typedef struct fixture {
    mha_st_file *file;
    char path[512];
} fixture;

static double meta(const fixture *f, const char *key)
{
    const char *v = mha_st_metadata(f->file, key);
    cr_assert_not_null(v, "%s: metadata %s missing", f->path, key);
    return strtod(v, NULL);
}

static void *read_entry(const fixture *f, const char *name, size_t *count)
{
    const mha_st_entry *e = mha_st_find(f->file, name);
    cr_assert_not_null(e, "%s: no tensor %s", f->path, name);
    void *data = malloc((size_t)(e->end - e->begin));
    cr_assert_eq(mha_st_read_raw(f->file, e, data), MHA_OK);
    *count = (size_t)e->count;
    return data;
}

/* The fixture's config as a dcase (name and fields by metadata). */
static dcase fixture_case(const fixture *f, const char *name)
{
    dcase c = {name, (int64_t)meta(f, "E"), (int64_t)meta(f, "Hq"),
               (int64_t)meta(f, "Hkv"), (int64_t)meta(f, "d"),
               (mha_rope_style)meta(f, "rope"), (int64_t)meta(f, "rope_dims"),
               (float)meta(f, "theta"), (float)meta(f, "scaling"),
               (int64_t)meta(f, "window"), (int)meta(f, "alibi"),
               (float)meta(f, "softcap"), (int)meta(f, "sinks"),
               (int)meta(f, "qkv_bias"), (int)meta(f, "o_bias"), MHA_F32};
    return c;
}

/* Loads the layer from the file by its HF prefix, runs x at the file's
 * positions (an MHA_I32 tensor) and compares with y. */
static void check_fixture(mha_context *ctx, const test_device *td,
                          const fixture *f, const dcase *c)
{
    int64_t B = (int64_t)meta(f, "B"), T = (int64_t)meta(f, "T"), E = c->E;
    size_t nx, np, ny;
    float *x = read_entry(f, "x", &nx);
    int64_t *pos64 = read_entry(f, "positions", &np);
    double *y = read_entry(f, "y", &ny);
    int32_t *pos = malloc(np * sizeof *pos);
    for (size_t i = 0; i < np; i++)
        pos[i] = (int32_t)pos64[i];
    env e;
    memset(&e, 0, sizeof e);
    e.ctx = ctx, e.c = c, e.label = td->label;
    e.dev = test_open(ctx, td);
    mha_decoder_config cfg = config_of(c);
    cr_assert_eq(mha_decoder_create(e.dev, &cfg, &e.layer), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_decoder_load_safetensors(e.layer, f->path,
                                              mha_st_metadata(f->file,
                                                              "prefix")),
                 MHA_OK, "%s", mha_context_errmsg(ctx));
    e.cache = make_cache(&e, T + 3, B);
    int64_t xs[3] = {B, T, E}, ps[2] = {B, T};
    mha_tensor *tx, *tp, *ty;
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, xs, &tx), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, xs, &ty), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_I32, 2, ps, &tp), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_tensor_upload(tx, x, nx * sizeof *x), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tp, pos, np * sizeof *pos), MHA_OK);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = tx, a.positions = tp, a.cache = e.cache, a.output = ty;
    if (ran(&e, mha_decoder_forward(e.layer, &a))) {
        float *got = malloc(ny * sizeof *got);
        cr_assert_eq(mha_tensor_download(ty, got, ny * sizeof *got), MHA_OK);
        expect_close(&e, "vs PyTorch", got, y, ny, 1e-4);
        free(got);
    }
    mha_tensor_destroy(tx), mha_tensor_destroy(tp), mha_tensor_destroy(ty);
    env_close(&e);
    free(x), free(pos64), free(y), free(pos);
}

Test(decoder, pytorch_fixtures)
{
    static const char *const names[] = {
        "decoder_llama_gqa", "decoder_qwen2_bias_partial", "decoder_gptj_mqa",
        "decoder_gemma_window_softcap", "decoder_sinks_alibi"};
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    const char *dir = getenv("MHA_FIXTURE_DIR");
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        fixture f;
        snprintf(f.path, sizeof f.path, "%s/%s.safetensors",
                 dir && *dir ? dir : MHA_FIXTURE_DIR "/decoder", names[k]);
        cr_assert_eq(mha_st_open(&ctx->host, f.path, &f.file), MHA_OK, "%s",
                     mha_context_errmsg(ctx));
        dcase c = fixture_case(&f, names[k]);
        for (int i = 0; i < nd; i++)
            check_fixture(ctx, &devs[i], &f, &c);
        mha_st_close(f.file);
    }
    mha_context_destroy(ctx);
}

/* ---- views ---------------------------------------------------------------------- */

/* x, output and positions as strided views of larger tensors give the same
 * result as plain tensors. */
Test(decoder, views_as_inputs_and_output)
{
    mha_context *ctx;
    env e;
    weights w;
    cpu_env(&e, &ctx, &w, 16);
    int64_t E = e.c->E, T = 5;
    test_rng r = {21};
    float *x = randn(&r, (size_t)(T * E), 1.0f);
    float *plain = malloc((size_t)(T * E) * sizeof *plain);
    cr_assert_eq(forward(&e, x, 1, T, plain), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_kv_cache_clear(e.cache), MHA_OK);
    /* x in the second half of [1, T, 2E] rows; y likewise; positions at
       every other element of [1, 2T] */
    int64_t wide[3] = {1, T, 2 * E}, ps[2] = {1, 2 * T};
    int64_t xs[3] = {1, T, E}, xst[3] = {T * 2 * E, 2 * E, 1};
    int64_t pv[2] = {1, T}, pst[2] = {2 * T, 2};
    float *bx = calloc((size_t)(T * 2 * E), sizeof *bx);
    int32_t pos[10];
    for (int64_t t = 0; t < T; t++) {
        memcpy(bx + t * 2 * E + E, x + t * E, (size_t)E * sizeof *bx);
        pos[2 * t] = (int32_t)t;
        pos[2 * t + 1] = -7;
    }
    mha_tensor *tx, *ty, *tp, *vx, *vy, *vp;
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, wide, &tx), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, wide, &ty), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_I32, 2, ps, &tp), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tx, bx, (size_t)(T * 2 * E) * 4), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tp, pos, sizeof pos), MHA_OK);
    cr_assert_eq(mha_tensor_view(tx, (size_t)E, 3, xs, xst, &vx), MHA_OK);
    cr_assert_eq(mha_tensor_view(ty, (size_t)E, 3, xs, xst, &vy), MHA_OK);
    cr_assert_eq(mha_tensor_view(tp, 0, 2, pv, pst, &vp), MHA_OK);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = vx, a.positions = vp, a.cache = e.cache, a.output = vy;
    cr_assert_eq(mha_decoder_forward(e.layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_tensor_download(ty, bx, (size_t)(T * 2 * E) * 4), MHA_OK);
    double *want = malloc((size_t)(T * E) * sizeof *want);
    float *got = malloc((size_t)(T * E) * sizeof *got);
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < E; c++) {
            want[t * E + c] = plain[t * E + c];
            got[t * E + c] = bx[t * 2 * E + E + c];
        }
    expect_close(&e, "views", got, want, (size_t)(T * E), 1e-6);
    mha_tensor_destroy(vx), mha_tensor_destroy(vy), mha_tensor_destroy(vp);
    mha_tensor_destroy(tx), mha_tensor_destroy(ty), mha_tensor_destroy(tp);
    env_close(&e);
    free_weights(&w);
    free(x), free(plain), free(bx), free(want), free(got);
    mha_context_destroy(ctx);
}

/* ---- positions ------------------------------------------------------------------ */

/* A position outside 0 .. 2^24 - 1 (bad, at token 2) is refused before
 * any work, naming the call, the sequence, the token and the value (the
 * message holds needle); the cache is unchanged; fine in its place is
 * taken. */
static void check_refused_position(int32_t bad, int32_t fine,
                                   const char *needle)
{
    mha_context *ctx;
    env e;
    weights w;
    cpu_env(&e, &ctx, &w, 16);
    int64_t E = e.c->E, T = 4, xs[3] = {1, T, E}, ps[2] = {1, T};
    test_rng r = {5};
    float *x = randn(&r, (size_t)(T * E), 1.0f);
    int32_t pos[4] = {0, 1, bad, 3};
    mha_tensor *tx, *ty, *tp;
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, xs, &tx), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, xs, &ty), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_I32, 2, ps, &tp), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tx, x, (size_t)(T * E) * 4), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tp, pos, sizeof pos), MHA_OK);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = tx, a.positions = tp, a.cache = e.cache, a.output = ty;
    cr_assert_eq(mha_decoder_forward(e.layer, &a), MHA_INVALID_ARGUMENT);
    const char *msg = mha_context_errmsg(ctx);
    cr_expect(strstr(msg, "mha_decoder_forward") &&
                  strstr(msg, "sequence 0, token 2") && strstr(msg, needle),
              "%s", msg);
    int64_t len = -1;
    cr_assert_eq(mha_kv_cache_length(e.cache, 0, &len), MHA_OK);
    cr_expect_eq(len, 0, "a refused forward appended %lld tokens",
                 (long long)len);
    pos[2] = fine;
    cr_assert_eq(mha_tensor_upload(tp, pos, sizeof pos), MHA_OK);
    cr_expect_eq(mha_decoder_forward(e.layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_tensor_destroy(tx), mha_tensor_destroy(ty), mha_tensor_destroy(tp);
    env_close(&e);
    free_weights(&w);
    free(x);
    mha_context_destroy(ctx);
}

Test(decoder, negative_position_is_invalid_argument)
{
    check_refused_position(-5, 2, "is -5;");
}

/* Past 2^24 - 1 fp32 no longer holds every position: RoPE would rotate by
 * a rounded angle. */
Test(decoder, position_past_maximum_is_invalid_argument)
{
    check_refused_position(16777216, 16777215,
                           "is 16777216; expected 0 to 16777215");
}

/* ---- ring caches ---------------------------------------------------------------- */

/* The layer's window equal to the ring's, and narrower with an f16 cache. */
static const dcase ring_cases[] = {
    {"ring_window8", 32, 4, 2, 8, MHA_ROPE_NEOX, 0, 10000, 1, RING_W, 0, 0,
     1, 0, 0, MHA_F32},
    {"ring_f16_layer_window6", 32, 4, 2, 8, MHA_ROPE_GPTJ, 0, 10000, 1, 6, 0,
     0, 0, 1, 0, MHA_F16},
};

/* T tokens of x through the full cache (into want) and the ring (into
 * got); the outputs must agree. */
static void both(env *e, mha_kv_cache *full, mha_kv_cache *ring,
                 const float *x, int64_t T, float *got, double *want)
{
    size_t n = (size_t)(T * e->c->E);
    e->cache = full;
    cr_assert_eq(forward(e, x, 1, T, got), MHA_OK, "%s", e->msg);
    for (size_t i = 0; i < n; i++)
        want[i] = got[i];
    e->cache = ring;
    cr_assert_eq(forward(e, x, 1, T, got), MHA_OK, "%s", e->msg);
    expect_close(e, "ring vs full", got, want, n, tolerance(e->c, 1e-5));
}

/* A prefill, single tokens and a chunk (40 in all, 2.5 rings or more)
 * give the full cache's outputs; the device memory stays what it was after
 * the first call; the logical length counts every token; truncation works
 * back to the tokens the ring holds and is refused before. capacity W + 2
 * moves its W - 1 rows in chunks (source and destination overlap). */
static void check_ring(env *e, int64_t capacity)
{
    int64_t E = e->c->E, at = 0;
    mha_kv_cache *full = e->cache, *ring = make_ring(e, capacity);
    test_rng r = {77};
    float *x = randn(&r, (size_t)(RING_TOKENS * E), 1.0f);
    float *got = malloc((size_t)(RING_TOKENS * E) * sizeof *got);
    double *want = malloc((size_t)(RING_TOKENS * E) * sizeof *want);
    uint64_t used = 0, now = 0;
    cr_assert_eq(mha_kv_cache_clear(full), MHA_OK);
    for (int i = 0; at < RING_TOKENS; i++) {
        int64_t T = at == 0 ? 5 : at == 24 ? 3 : 1; /* prefill, chunk */
        both(e, full, ring, x + at * E, T, got, want);
        at += T;
        cr_assert_eq(mha_device_memory_usage(e->dev, &now, NULL), MHA_OK);
        cr_expect(i == 0 || now == used, "%s on %s: device memory %llu after "
                  "%lld tokens, %llu after the first call", e->c->name,
                  e->label, (unsigned long long)now, (long long)at,
                  (unsigned long long)used);
        used = i == 0 ? now : used;
    }
    cr_assert_eq(at, RING_TOKENS);
    int64_t len = 0;
    cr_assert_eq(mha_kv_cache_length(ring, 0, &len), MHA_OK);
    cr_expect_eq(len, RING_TOKENS);
    cr_expect_eq(mha_kv_cache_truncate(ring, 0, 20), MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(e->ctx), "dropped"), "%s",
              mha_context_errmsg(e->ctx));
    cr_assert_eq(mha_kv_cache_truncate(ring, 0, RING_TOKENS - 1), MHA_OK,
                 "%s", mha_context_errmsg(e->ctx));
    cr_assert_eq(mha_kv_cache_truncate(full, 0, RING_TOKENS - 1), MHA_OK);
    both(e, full, ring, x, 2, got, want);
    e->cache = full;
    cr_assert_eq(mha_kv_cache_destroy(ring), MHA_OK);
    free(x), free(got), free(want);
}

/* Both ring sizes; an f16 cache only where the device stores fp16. */
static void check_rings(env *e, const weights *w, test_rng *r)
{
    mha_device_info info;
    (void)w, (void)r;
    cr_assert_eq(mha_device_info_of(e->dev, &info), MHA_OK);
    if (e->c->cache_dtype == MHA_F16 &&
        !(info.features & MHA_FEATURE_FP16_STORAGE))
        return;
    check_ring(e, 2 * RING_W);
    check_ring(e, RING_W + 2);
}

Test(decoder, ring_cache_equals_full_cache)
{
    each_device_of(ring_cases, sizeof ring_cases / sizeof *ring_cases,
                   check_rings, RING_TOKENS + 8, 1);
}

/* A ring under a layer without a window (or a wider one) would drop keys
 * the attention needs: refused, naming both windows. */
Test(decoder, ring_narrower_than_layer_window_is_refused)
{
    mha_context *ctx;
    env e;
    weights w;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    cpu_env_of(&e, ctx, &cases[0], &w, 16); /* no window */
    mha_kv_cache *full = e.cache;
    e.cache = make_ring(&e, 2 * RING_W);
    float x[32] = {0}, y[32];
    cr_expect_eq(forward(&e, x, 1, 1, y), MHA_INVALID_ARGUMENT);
    cr_expect(strstr(e.msg, "ring of window 8") &&
                  strstr(e.msg, "window is 0"),
              "%s", e.msg);
    cr_assert_eq(mha_kv_cache_destroy(e.cache), MHA_OK);
    e.cache = full;
    env_close(&e);
    free_weights(&w);
    mha_context_destroy(ctx);
}

/* ---- position limits ------------------------------------------------------------ */

/* A ring that has seen nearly 2^31 tokens (its start set as if it had):
 * default positions past 2^24 - 1 are MHA_LIMIT_REACHED naming the first
 * one, and an append that would count past INT32_MAX (the int32 start and
 * length of the host and the kernels) is MHA_LIMIT_REACHED with the
 * numbers, the cache unchanged, through the decoder and the cache alike. */
Test(decoder, ring_positions_are_bounded)
{
    mha_context *ctx;
    env e;
    weights w;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    cpu_env_of(&e, ctx, &ring_cases[0], &w, 16);
    mha_kv_cache *full = e.cache;
    e.cache = make_ring(&e, 2 * RING_W);
    float x[3 * 32] = {0}, y[3 * 32];
    e.cache->start[0] = 16777214;
    cr_expect_eq(forward(&e, x, 1, 3, y), MHA_LIMIT_REACHED);
    cr_expect(strstr(e.msg, "default positions[0][2]") &&
                  strstr(e.msg, "16777216"),
              "%s", e.msg);
    cr_expect_eq(forward(&e, x, 1, 2, y), MHA_OK, "%s", e.msg);

    e.cache->start[0] = INT32_MAX - 4; /* + 2 rows held */
    int64_t kvs[3] = {3, e.c->Hkv, e.c->d}, len = 0;
    mha_tensor *k, *v;
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, kvs, &k), MHA_OK);
    cr_assert_eq(mha_tensor_create(e.dev, MHA_F32, 3, kvs, &v), MHA_OK);
    cr_expect_eq(mha_kv_cache_append(e.cache, 0, k, v), MHA_LIMIT_REACHED);
    const char *msg = mha_context_errmsg(ctx);
    cr_expect(strstr(msg, "has seen 2147483645 tokens") &&
                  strstr(msg, "appending 3") && strstr(msg, "2147483647"),
              "%s", msg);
    cr_assert_eq(mha_kv_cache_length(e.cache, 0, &len), MHA_OK);
    cr_expect_eq(len, INT32_MAX - 2, "a refused append changed the length");
    mha_tensor_destroy(k), mha_tensor_destroy(v);
    cr_assert_eq(mha_kv_cache_destroy(e.cache), MHA_OK);
    e.cache = full;
    env_close(&e);
    free_weights(&w);
    mha_context_destroy(ctx);
}
