/* test_decoder_heads.c: pruning a decoder layer's heads
 * (mha_decoder_prune_heads, mha_decoder_kept_heads) on every device: a
 * pruned layer equals the unpruned one with those heads gated to 0, for a
 * prefill and decode steps, multi-head, grouped-query (whole groups) and
 * ALiBi (kept heads keep their original slopes); pruning frees device
 * memory; every bad input with its status and message. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "decoder.h"
#include "interop.h"

enum { B = 2, PREFILL = 3, STEPS = 3, CAP = 16, MAXH = 8 };

typedef struct pcase {
    const char *name;
    int64_t E, Hq, Hkv, d;
    int alibi, sinks, bias;
    int64_t prune[MAXH], count;
} pcase;

static const pcase cases[] = {
    {"mha_sinks_bias", 32, 4, 4, 8, 0, 1, 1, {2, 0}, 2},
    {"gqa_bias", 32, 6, 3, 8, 0, 0, 1, {3, 2}, 2},
    {"alibi", 20, 5, 5, 4, 1, 0, 0, {1, 3}, 2},
};

static mha_context *new_context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    return ctx;
}

static mha_tensor *tensor(mha_device *dev, int nd, const int64_t *shape,
                          const float *x, size_t n)
{
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, nd, shape, &t), MHA_OK);
    if (x)
        cr_assert_eq(mha_tensor_upload(t, x, n * 4), MHA_OK);
    return t;
}

static mha_decoder *make_layer(mha_device *dev, const pcase *c)
{
    mha_decoder_config cfg;
    mha_decoder_config_init(&cfg, c->E, c->Hq);
    cfg.num_kv_heads = c->Hkv;
    cfg.head_dim = c->d;
    cfg.alibi = c->alibi;
    cfg.rope_style = c->alibi ? MHA_ROPE_NONE : MHA_ROPE_NEOX;
    cfg.sinks = c->sinks;
    cfg.qkv_bias = cfg.o_bias = c->bias;
    mha_decoder *l = NULL;
    cr_assert_eq(mha_decoder_create(dev, &cfg, &l), MHA_OK);
    return l;
}

/* The same random weights (seeded) into the unpruned layer l. */
static void set_weights(mha_decoder *l, const pcase *c)
{
    int64_t q = c->Hq * c->d, kv = c->Hkv * c->d;
    const struct { const char *name; int64_t rows, cols; int on; } w[] = {
        {"q_proj.weight", q, c->E, 1}, {"k_proj.weight", kv, c->E, 1},
        {"v_proj.weight", kv, c->E, 1}, {"o_proj.weight", c->E, q, 1},
        {"q_proj.bias", q, 0, c->bias}, {"k_proj.bias", kv, 0, c->bias},
        {"v_proj.bias", kv, 0, c->bias}, {"o_proj.bias", c->E, 0, c->bias},
        {"sinks", c->Hq, 0, c->sinks}};
    test_rng r = {7};
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) {
        if (!w[i].on)
            continue;
        int64_t shape[2] = {w[i].rows, w[i].cols};
        size_t n = (size_t)(w[i].rows * (w[i].cols ? w[i].cols : 1));
        float *v = malloc(n * sizeof *v);
        for (size_t k = 0; k < n; k++)
            v[k] = 0.4f * test_normal(&r);
        cr_assert_eq(mha_decoder_set_weight(l, w[i].name, v,
                                            w[i].cols ? 2 : 1, shape),
                     MHA_OK);
        free(v);
    }
}

static mha_kv_cache *make_cache(mha_device *dev, int64_t hkv, int64_t d)
{
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = CAP, kc.num_sequences = B, kc.num_kv_heads = hkv;
    kc.head_dim = d;
    mha_kv_cache *k = NULL;
    cr_assert_eq(mha_kv_cache_create(dev, &kc, &k), MHA_OK);
    return k;
}

/* One forward of T tokens x through l into cache; the output. */
static void run(mha_context *ctx, mha_decoder *l, mha_kv_cache *cache,
                const pcase *c, int64_t T, const float *x,
                const mha_tensor *gates, float *out)
{
    mha_device *dev = mha_decoder_device(l);
    int64_t shape[3] = {B, T, c->E};
    size_t n = (size_t)(B * T * c->E);
    mha_tensor *tx = tensor(dev, 3, shape, x, n);
    mha_tensor *ty = tensor(dev, 3, shape, NULL, n);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = tx, a.output = ty, a.cache = cache, a.head_gates = gates;
    cr_assert_eq(mha_decoder_forward(l, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_tensor_download(ty, out, n * 4), MHA_OK);
    mha_tensor_destroy(tx);
    mha_tensor_destroy(ty);
}

static int pruned(const pcase *c, int64_t h)
{
    for (int64_t i = 0; i < c->count; i++)
        if (c->prune[i] == h)
            return 1;
    return 0;
}

/* Prefill then decode steps: the pruned layer against the gated one. */
static void check_case(mha_context *ctx, mha_device *dev, const char *label,
                       const pcase *c)
{
    mha_decoder *full = make_layer(dev, c), *cut = make_layer(dev, c);
    set_weights(full, c);
    set_weights(cut, c);
    uint64_t before = 0, after = 0;
    cr_assert_eq(mha_device_memory_usage(dev, &before, NULL), MHA_OK);
    cr_assert_eq(mha_decoder_prune_heads(cut, c->prune, c->count), MHA_OK,
                 "%s %s: %s", label, c->name, mha_context_errmsg(ctx));
    cr_assert_eq(mha_device_memory_usage(dev, &after, NULL), MHA_OK);
    cr_expect_lt(after, before, "%s %s: memory %llu -> %llu", label,
                 c->name, (unsigned long long)before,
                 (unsigned long long)after);
    int64_t kept[MAXH], n = 0, k = 0;
    cr_assert_eq(mha_decoder_kept_heads(cut, kept, MAXH, &n), MHA_OK);
    cr_assert_eq(n, c->Hq - c->count);
    for (int64_t h = 0; h < c->Hq; h++)
        if (!pruned(c, h))
            cr_expect_eq(kept[k++], h, "%s: kept[%lld]", c->name,
                         (long long)k);
    float g[MAXH];
    for (int64_t h = 0; h < c->Hq; h++)
        g[h] = pruned(c, h) ? 0.0f : 1.0f;
    int64_t gs[1] = {c->Hq};
    mha_tensor *gates = tensor(dev, 1, gs, g, (size_t)c->Hq);
    int64_t g_kv = c->Hq / c->Hkv;
    mha_kv_cache *kf = make_cache(dev, c->Hkv, c->d);
    mha_kv_cache *kc = make_cache(dev, n / g_kv, c->d);
    test_rng r = {11};
    size_t most = (size_t)(B * PREFILL * c->E);
    float *x = malloc(most * 4), *want = malloc(most * 4),
          *got = malloc(most * 4);
    for (int s = 0; s <= STEPS; s++) {
        int64_t T = s ? 1 : PREFILL;
        size_t cnt = (size_t)(B * T * c->E);
        for (size_t i = 0; i < cnt; i++)
            x[i] = test_normal(&r);
        run(ctx, full, kf, c, T, x, gates, want);
        run(ctx, cut, kc, c, T, x, NULL, got);
        for (size_t i = 0; i < cnt; i++)
            cr_expect_leq(fabsf(got[i] - want[i]), 1e-5f,
                          "%s %s step %d [%zu]: %g vs %g", label, c->name, s,
                          i, got[i], want[i]);
    }
    free(x), free(want), free(got);
    mha_tensor_destroy(gates);
    mha_kv_cache_destroy(kf);
    mha_kv_cache_destroy(kc);
    mha_decoder_destroy(full);
    mha_decoder_destroy(cut);
}

Test(decoder_heads, pruned_equals_gated_off)
{
    mha_context *ctx = new_context();
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
            check_case(ctx, dev, devs[i].label, &cases[c]);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

/* The call's status and that its message holds want. */
static void expect_error(mha_context *ctx, mha_status got, mha_status st,
                         const char *want)
{
    cr_expect_eq(got, st, "status %d, expected %d: %s", got, st,
                 mha_context_errmsg(ctx));
    cr_expect(strstr(mha_context_errmsg(ctx), want), "message \"%s\" lacks "
              "\"%s\"", mha_context_errmsg(ctx), want);
}

static mha_device *open_cpu(mha_context *ctx)
{
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    return dev;
}

Test(decoder_heads, bad_input_status_and_message)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    const pcase *c = &cases[1]; /* 6 query heads in 3 groups of 2 */
    mha_decoder *l = make_layer(dev, c);
    set_weights(l, c);
    int64_t bad[][3] = {{6}, {-1}, {0, 1, 0}, {2}, {0, 1, 2}};
    expect_error(ctx, mha_decoder_prune_heads(l, bad[0], 1),
                 MHA_INVALID_ARGUMENT, "head 6 does not exist");
    expect_error(ctx, mha_decoder_prune_heads(l, bad[1], 1),
                 MHA_INVALID_ARGUMENT, "head -1 does not exist");
    expect_error(ctx, mha_decoder_prune_heads(l, bad[2], 3),
                 MHA_INVALID_ARGUMENT, "head 0 is listed twice");
    expect_error(ctx, mha_decoder_prune_heads(l, bad[3], 1),
                 MHA_INVALID_ARGUMENT, "(kv head 1: query heads 2 to 3)");
    expect_error(ctx, mha_decoder_prune_heads(l, bad[4], 3),
                 MHA_INVALID_ARGUMENT, "head 3 of its kv group");
    int64_t all[6] = {0, 1, 2, 3, 4, 5};
    expect_error(ctx, mha_decoder_prune_heads(l, all, 6),
                 MHA_INVALID_ARGUMENT, "would leave none");
    expect_error(ctx, mha_decoder_prune_heads(l, NULL, 1),
                 MHA_INVALID_ARGUMENT, "heads is NULL");
    expect_error(ctx, mha_decoder_prune_heads(l, all, -1),
                 MHA_INVALID_ARGUMENT, "count is negative");
    int64_t kept[MAXH], n = 0;
    cr_assert_eq(mha_decoder_kept_heads(l, kept, MAXH, &n), MHA_OK);
    cr_expect_eq(n, 6, "refused calls change nothing");
    /* group 0 goes; then again by original index, and group 0 is gone */
    cr_assert_eq(mha_decoder_prune_heads(l, all, 2), MHA_OK);
    expect_error(ctx, mha_decoder_prune_heads(l, all, 2),
                 MHA_INVALID_ARGUMENT, "head 0 was pruned already");
    expect_error(ctx, mha_decoder_prune_heads(l, all + 2, 4),
                 MHA_INVALID_ARGUMENT, "would leave none");
    expect_error(ctx, mha_decoder_kept_heads(l, kept, 3, &n),
                 MHA_BUFFER_TOO_SMALL, "capacity 3; the layer keeps 4");
    cr_expect_eq(n, 4);
    cr_assert_eq(mha_decoder_prune_heads(l, all + 4, 2), MHA_OK);
    cr_assert_eq(mha_decoder_kept_heads(l, kept, MAXH, &n), MHA_OK);
    cr_expect(n == 2 && kept[0] == 2 && kept[1] == 3, "kept %lld: %lld",
              (long long)n, (long long)kept[0]);
    /* a cache made for the unpruned layer, and gates of the old count */
    mha_kv_cache *old = make_cache(dev, c->Hkv, c->d);
    int64_t xs[3] = {B, 1, c->E}, gs[1] = {c->Hq};
    float x[B * 32] = {0}, g[6] = {1, 1, 1, 1, 1, 1};
    mha_tensor *tx = tensor(dev, 3, xs, x, (size_t)(B * c->E));
    mha_tensor *ty = tensor(dev, 3, xs, NULL, 0);
    mha_tensor *tg = tensor(dev, 1, gs, g, 6);
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = tx, a.output = ty, a.cache = old;
    expect_error(ctx, mha_decoder_forward(l, &a), MHA_SHAPE_MISMATCH,
                 "the cache holds 3 kv heads of size 8; the layer has 1");
    mha_kv_cache *fit = make_cache(dev, 1, c->d);
    a.cache = fit, a.head_gates = tg;
    expect_error(ctx, mha_decoder_forward(l, &a), MHA_SHAPE_MISMATCH,
                 "head_gates has shape [6]; expected [2]");
    mha_tensor_destroy(tx), mha_tensor_destroy(ty), mha_tensor_destroy(tg);
    mha_kv_cache_destroy(old);
    mha_kv_cache_destroy(fit);
    mha_decoder_destroy(l);
    cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

/* Decode steps recorded into a command buffer may still read the weights
 * (the Vulkan suite records real ones; here the layer is marked so, on
 * every backend). */
Test(decoder_heads, recorded_layer_is_bad_state)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    mha_decoder *l = make_layer(dev, &cases[0]);
    int64_t h = 1;
    l->recorded = 1;
    expect_error(ctx, mha_decoder_prune_heads(l, &h, 1), MHA_BAD_STATE,
                 "were recorded");
    l->recorded = 0;
    cr_assert_eq(mha_decoder_prune_heads(l, &h, 1), MHA_OK);
    mha_decoder_destroy(l);
    cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}
