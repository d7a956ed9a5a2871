/* test_head_stats.c: mha_head_stats, the per-head statistics, against the
 * PyTorch float64 fixtures of tests/gen_head_stats_fixtures.py (gradient
 * importance against torch autograd of the head gates), on every device and
 * CPU ISA; adding the same input twice leaves the means as they are; a
 * pruned layer reports its kept heads by original index; and
 * bad input (gradients of the wrong shape or dtype, tensors of another
 * device, results before any input, a short buffer), each with its status
 * and a message naming it. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "safetensors.h"

#define FIXTURES MHA_FIXTURE_DIR "/head_stats"

typedef struct fixture {
    char path[512];
    mha_layer_config cfg;
    int causal;
    float *query, *key, *grad;
    int nd;
    int64_t qshape[4], kshape[4];
    double *expect[10]; /* in field order, then js and cosine */
} fixture;

/* The expected arrays, in the order compared below. */
static const char *const expect_names[10] = {
    "entropy",  "confidence",   "distance", "first_key", "prev_token",
    "ablation", "gradient_raw", "gradient", "js",        "cosine"};

static float *read_f32(mha_st_file *f, const char *name, int *nd,
                       int64_t *shape)
{
    float *x = fixture_floats(f, name, nd, shape);
    cr_assert(x, "%s missing", name);
    return x;
}

static void load_fixture(mha_context *ctx, const char *name, fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    snprintf(fx->path, sizeof fx->path, "%s/%s.safetensors", FIXTURES, name);
    mha_st_file *f = NULL;
    cr_assert_eq(mha_st_open(&ctx->host, fx->path, &f), MHA_OK, "%s: %s",
                 fx->path, mha_context_errmsg(ctx));
    mha_layer_config_init(&fx->cfg, (int)fixture_meta(f, "embed_dim"),
                          (int)fixture_meta(f, "num_heads"));
    fx->cfg.batch_first = (int)fixture_meta(f, "batch_first");
    fx->cfg.add_zero_attn = (int)fixture_meta(f, "add_zero_attn");
    fx->causal = (int)fixture_meta(f, "causal");
    fx->query = read_f32(f, "query", &fx->nd, fx->qshape);
    fx->key = read_f32(f, "key", NULL, fx->kshape);
    fx->grad = read_f32(f, "grad", NULL, NULL);
    for (int i = 0; i < 10; i++) {
        const mha_st_entry *e = mha_st_find(f, expect_names[i]);
        cr_assert(e, "%s missing", expect_names[i]);
        fx->expect[i] = malloc(e->count * sizeof(double));
        cr_assert_eq(mha_st_read_raw(f, e, fx->expect[i]), MHA_OK);
    }
    mha_st_close(f);
}

static void free_fixture(fixture *fx)
{
    free(fx->query);
    free(fx->key);
    free(fx->grad);
    for (int i = 0; i < 10; i++)
        free(fx->expect[i]);
}

static mha_tensor *upload(mha_device *dev, const float *x, int nd,
                          const int64_t *shape)
{
    mha_tensor *t = NULL;
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, nd, shape, &t), MHA_OK);
    if (x)
        cr_assert_eq(mha_tensor_upload(t, x, n * sizeof *x), MHA_OK);
    return t;
}

/* A call of the fixture on dev: tensors, args and the layer. */
typedef struct call {
    mha_layer *layer;
    mha_tensor *q, *k, *out, *grad;
    mha_forward_args args;
} call;

static void make_call(mha_context *ctx, mha_device *dev, const fixture *fx,
                      call *c)
{
    memset(c, 0, sizeof *c);
    cr_assert_eq(mha_layer_create(dev, &fx->cfg, &c->layer), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_layer_load_safetensors(c->layer, fx->path, "layer."),
                 MHA_OK, "%s", mha_context_errmsg(ctx));
    c->q = upload(dev, fx->query, fx->nd, fx->qshape);
    c->k = upload(dev, fx->key, fx->nd, fx->kshape);
    c->out = upload(dev, NULL, fx->nd, fx->qshape);
    c->grad = upload(dev, fx->grad, fx->nd, fx->qshape);
    mha_forward_args_init(&c->args);
    c->args.query = c->q;
    c->args.key = c->args.value = c->k;
    c->args.output = c->out;
    c->args.is_causal = fx->causal;
}

static void free_call(call *c)
{
    mha_tensor_destroy(c->q);
    mha_tensor_destroy(c->k);
    mha_tensor_destroy(c->out);
    mha_tensor_destroy(c->grad);
    mha_layer_destroy(c->layer);
}

static void expect_close(const char *what, const char *dev, int64_t h,
                         double got, double want)
{
    cr_expect(fabs(got - want) <= 1e-4 * fmax(1.0, fabs(want)),
              "%s on %s, head %lld: got %.8g, want %.8g", what, dev,
              (long long)h, got, want);
}

/* Statistics of fixture fx on device td, adding the input `adds` times. */
static void check_device(mha_context *ctx, const test_device *td,
                         const fixture *fx, int adds)
{
    mha_device *dev = test_open(ctx, td);
    call c;
    make_call(ctx, dev, fx, &c);
    mha_head_stats *hs = NULL;
    cr_assert_eq(mha_head_stats_create(c.layer, &hs), MHA_OK);
    int64_t H = fx->cfg.num_heads;
    cr_assert_eq(mha_head_stats_heads(hs), H);
    for (int i = 0; i < adds; i++)
        cr_assert_eq(mha_head_stats_add(hs, &c.args, c.grad), MHA_OK,
                     "%s: %s", td->label, mha_context_errmsg(ctx));
    mha_head_stat s[16];
    double m[2][256];
    cr_assert_eq(mha_head_stats_get(hs, s, H), MHA_OK);
    cr_assert_eq(mha_head_stats_redundancy(hs, MHA_REDUNDANCY_JS, m[0], H * H),
                 MHA_OK);
    cr_assert_eq(mha_head_stats_redundancy(hs, MHA_REDUNDANCY_COSINE, m[1],
                                           H * H),
                 MHA_OK);
    for (int64_t h = 0; h < H; h++) {
        const double got[8] = {s[h].entropy,   s[h].confidence,
                               s[h].distance,  s[h].first_key,
                               s[h].prev_token, s[h].ablation,
                               s[h].gradient_raw, s[h].gradient};
        cr_expect_eq(s[h].head, h);
        for (int k = 0; k < 8; k++)
            expect_close(expect_names[k], td->label, h, got[k],
                         fx->expect[k][h]);
        for (int64_t g = 0; g < H; g++)
            for (int k = 0; k < 2; k++)
                expect_close(expect_names[8 + k], td->label, h * H + g,
                             m[k][h * H + g], fx->expect[8 + k][h * H + g]);
    }
    int64_t B = fx->nd == 3 ? fx->qshape[fx->cfg.batch_first ? 0 : 1] : 1;
    cr_expect_eq(s[0].gradient_items, adds * B);
    mha_head_stats_destroy(hs);
    free_call(&c);
    mha_device_destroy(dev);
}

static void run_fixture(const char *name, int adds)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    fixture fx;
    load_fixture(ctx, name, &fx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++)
        check_device(ctx, &devs[i], &fx, adds);
    free_fixture(&fx);
    mha_context_destroy(ctx);
}

Test(head_stats, self_seqmajor) { run_fixture("self_seqmajor", 1); }
Test(head_stats, cross_batch_first_causal)
{
    run_fixture("cross_batch_first_causal", 1);
}
Test(head_stats, zero_attn) { run_fixture("zero_attn", 1); }
/* Means over two adds of the same input are the one input's. */
Test(head_stats, same_input_twice) { run_fixture("self_seqmajor", 2); }

/* A pruned layer's heads are named by their original index, and their
 * attention statistics are the unpruned layer's (a head's attention does
 * not depend on the others); a layer pruned after the accumulator was made
 * is MHA_BAD_STATE. */
Test(head_stats, pruned_layer)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    fixture fx;
    load_fixture(ctx, "self_seqmajor", &fx);
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    call c;
    make_call(ctx, dev, &fx, &c);
    mha_head_stats *stale = NULL, *hs = NULL;
    cr_assert_eq(mha_head_stats_create(c.layer, &stale), MHA_OK);
    const int64_t gone = 1;
    cr_assert_eq(mha_layer_prune_heads(c.layer, &gone, 1), MHA_OK);
    cr_expect_eq(mha_head_stats_add(stale, &c.args, NULL), MHA_BAD_STATE);
    cr_assert_eq(mha_head_stats_create(c.layer, &hs), MHA_OK);
    cr_assert_eq(mha_head_stats_heads(hs), 3);
    cr_assert_eq(mha_head_stats_add(hs, &c.args, NULL), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_head_stat s[3];
    cr_assert_eq(mha_head_stats_get(hs, s, 3), MHA_OK);
    const int64_t kept[3] = {0, 2, 3};
    for (int h = 0; h < 3; h++) {
        cr_expect_eq(s[h].head, kept[h]);
        expect_close("entropy", "cpu", kept[h], s[h].entropy,
                     fx.expect[0][kept[h]]);
        expect_close("confidence", "cpu", kept[h], s[h].confidence,
                     fx.expect[1][kept[h]]);
    }
    mha_head_stats_destroy(stale);
    mha_head_stats_destroy(hs);
    free_call(&c);
    free_fixture(&fx);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* ---- bad input ------------------------------------------------------------- */

static void expect_msg(mha_context *ctx, const char *part)
{
    cr_expect(strstr(mha_context_errmsg(ctx), part), "message '%s' lacks '%s'",
              mha_context_errmsg(ctx), part);
}

Test(head_stats, bad_input)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    fixture fx;
    load_fixture(ctx, "self_seqmajor", &fx);
    mha_device *dev = NULL, *other = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &other), MHA_OK);
    call c;
    make_call(ctx, dev, &fx, &c);
    mha_head_stats *hs = NULL;
    cr_assert_eq(mha_head_stats_create(c.layer, &hs), MHA_OK);
    mha_head_stat s[4];
    double m[16];
    cr_expect_eq(mha_head_stats_get(hs, s, 4), MHA_BAD_STATE);
    expect_msg(ctx, "mha_head_stats_get: no statistics yet");
    /* dL/dY of the wrong shape */
    int64_t wrong[3] = {fx.qshape[0], fx.qshape[1], fx.qshape[2] + 1};
    mha_tensor *g = upload(dev, NULL, 3, wrong);
    cr_expect_eq(mha_head_stats_add(hs, &c.args, g), MHA_SHAPE_MISMATCH);
    expect_msg(ctx, "mha_head_stats_add: grad_output has shape [6,2,17]; "
                    "expected [6,2,16]");
    mha_tensor_destroy(g);
    /* dL/dY on another device, and a query there */
    g = upload(other, fx.grad, 3, fx.qshape);
    cr_expect_eq(mha_head_stats_add(hs, &c.args, g), MHA_INVALID_ARGUMENT);
    expect_msg(ctx, "grad_output lives on another device");
    mha_forward_args a = c.args;
    a.query = g;
    cr_expect_eq(mha_head_stats_add(hs, &a, NULL), MHA_INVALID_ARGUMENT);
    expect_msg(ctx, "args->query lives on another device than the layer");
    mha_tensor_destroy(g);
    cr_expect_eq(mha_head_stats_add(hs, NULL, NULL), MHA_INVALID_ARGUMENT);
    expect_msg(ctx, "mha_head_stats_add: args is NULL");
    /* an output the ablated runs would read back as their query */
    a = c.args;
    a.output = (mha_tensor *)a.query;
    cr_expect_eq(mha_head_stats_add(hs, &a, NULL), MHA_INVALID_ARGUMENT);
    expect_msg(ctx, "output shares memory with query");
    /* failures left nothing behind: still no statistics */
    cr_expect_eq(mha_head_stats_get(hs, s, 4), MHA_BAD_STATE);
    cr_assert_eq(mha_head_stats_add(hs, &c.args, NULL), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_expect_eq(mha_head_stats_get(hs, s, 3), MHA_BUFFER_TOO_SMALL);
    expect_msg(ctx, "count is 3; expected at least 4");
    cr_expect_eq(mha_head_stats_redundancy(hs, MHA_REDUNDANCY_JS, m, 15),
                 MHA_BUFFER_TOO_SMALL);
    cr_expect_eq(mha_head_stats_redundancy(hs, (mha_head_redundancy)7, m, 16),
                 MHA_INVALID_ARGUMENT);
    expect_msg(ctx, "kind is 7");
    /* without gradients the gradient columns are 0, the rest are there */
    cr_assert_eq(mha_head_stats_get(hs, s, 4), MHA_OK);
    cr_expect_eq(s[1].gradient_items, 0);
    cr_expect_eq(s[1].gradient, 0.0);
    cr_expect_gt(s[1].entropy, 0.0);
    cr_expect_eq(mha_head_stats_destroy(NULL), MHA_OK);
    mha_head_stats_destroy(hs);
    free_call(&c);
    free_fixture(&fx);
    mha_device_destroy(other);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}
