/* test_decoder_backward.c: training the decoder layer (mha_decoder_forward
 * with save_for_backward, mha_decoder_backward, AdamW on its weights) on
 * every device and CPU ISA: the output, dL/dx and every weight's gradient
 * against float64 torch autograd (tests/gen_decoder_backward_fixtures.py:
 * GQA, MQA, NeoX and GPT-J partial RoPE with the caller's positions, Qwen2
 * biases, head_dim != E/Hq, B 2, T 1), each within 1e-4 of its group's
 * largest magnitude, and twice that after an accumulating second backward;
 * central differences of the device's own forward; one AdamW step against
 * the formula; and the refused and bad calls, each with its status and
 * message. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "decoder.h"
#include "safetensors.h"

#define PREFIX "model.layers.3.self_attn."
#define TOL 1e-4

static const char *const weight_names[] = {
    "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
    "q_proj.bias",   "k_proj.bias",   "v_proj.bias",   "o_proj.bias"};
#define NWEIGHTS (sizeof weight_names / sizeof *weight_names)

/* ---- one layer on one device ---------------------------------------------- */

typedef struct drun {
    mha_context *ctx;
    const char *label;
    mha_device *dev;
    mha_decoder *dec;
    mha_kv_cache *cache;
    mha_gradients *grads;
    mha_tensor *x, *pos, *y, *dy, *dx;
    int64_t B, T, E;
    mha_decoder_forward_args fa;
    mha_decoder_backward_args ba;
} drun;

static mha_tensor *tensor(drun *r, mha_dtype dt, int nd, const int64_t *shape,
                          const void *data, size_t bytes)
{
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(r->dev, dt, nd, shape, &t), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    if (data)
        cr_assert_eq(mha_tensor_upload(t, data, bytes), MHA_OK);
    return t;
}

/* A layer of cfg on td with a cache of B empty sequences of T tokens, x,
 * dy (host data, B*T*E floats) and positions (NULL: the default ones);
 * training forward and backward args ready, with grad_x and gradients. */
static void run_open(drun *r, mha_context *ctx, const test_device *td,
                     const mha_decoder_config *cfg, int64_t B, int64_t T,
                     const float *x, const float *dy, const int32_t *pos)
{
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->label = td->label;
    r->dev = test_open(ctx, td);
    r->B = B, r->T = T, r->E = cfg->embed_dim;
    cr_assert_eq(mha_decoder_create(r->dev, cfg, &r->dec), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = T + 2;
    kc.num_sequences = B;
    kc.num_kv_heads = cfg->num_kv_heads;
    kc.head_dim = cfg->head_dim;
    cr_assert_eq(mha_kv_cache_create(r->dev, &kc, &r->cache), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    int64_t xs[3] = {B, T, r->E}, ps[2] = {B, T};
    size_t bytes = (size_t)(B * T * r->E) * 4;
    r->x = tensor(r, MHA_F32, 3, xs, x, bytes);
    r->y = tensor(r, MHA_F32, 3, xs, NULL, 0);
    r->dy = tensor(r, MHA_F32, 3, xs, dy, bytes);
    r->dx = tensor(r, MHA_F32, 3, xs, NULL, 0);
    r->pos = pos ? tensor(r, MHA_I32, 2, ps, pos, (size_t)(B * T) * 4) : NULL;
    cr_assert_eq(mha_decoder_gradients_create(r->dec, &r->grads), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    mha_decoder_forward_args_init(&r->fa);
    r->fa.x = r->x, r->fa.positions = r->pos, r->fa.cache = r->cache;
    r->fa.output = r->y, r->fa.save_for_backward = 1;
    mha_decoder_backward_args_init(&r->ba);
    r->ba.grad_output = r->dy, r->ba.grad_x = r->dx, r->ba.grads = r->grads;
}

static void run_close(drun *r)
{
    cr_assert_eq(mha_gradients_destroy(r->grads), MHA_OK);
    mha_tensor *t[] = {r->x, r->y, r->dy, r->dx, r->pos};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        cr_assert_eq(mha_tensor_destroy(t[i]), MHA_OK);
    cr_assert_eq(mha_kv_cache_destroy(r->cache), MHA_OK);
    cr_assert_eq(mha_decoder_destroy(r->dec), MHA_OK);
    cr_assert_eq(mha_device_destroy(r->dev), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
}

/* Empties the cache, runs the training forward and the backward. */
static void train_step(drun *r)
{
    cr_assert_eq(mha_kv_cache_clear(r->cache), MHA_OK);
    cr_assert_eq(mha_decoder_forward(r->dec, &r->fa), MHA_OK, "%s: %s",
                 r->label, mha_context_errmsg(r->ctx));
    cr_assert_eq(mha_decoder_backward(r->dec, &r->ba), MHA_OK, "%s: %s",
                 r->label, mha_context_errmsg(r->ctx));
}

static float *download(const mha_tensor *t, size_t n)
{
    float *p = malloc(n * sizeof *p);
    cr_assert_eq(mha_tensor_download(t, p, n * sizeof *p), MHA_OK);
    return p;
}

static float *grad_of(const drun *r, const char *name, size_t *n)
{
    const mha_tensor *g = NULL;
    cr_assert_eq(mha_gradients_get(r->grads, name, &g), MHA_OK, "%s: %s",
                 name, mha_context_errmsg(r->ctx));
    mha_dtype dt;
    int nd;
    int64_t shape[MHA_MAX_DIMS], count = 1;
    cr_assert_eq(mha_tensor_get_shape(g, &dt, &nd, shape), MHA_OK);
    for (int i = 0; i < nd; i++)
        count *= shape[i];
    *n = (size_t)count;
    return download(g, *n);
}

/* ---- against torch autograd ------------------------------------------------- */

typedef struct fixture {
    char path[512];
    mha_st_file *f;
} fixture;

static double *doubles(const fixture *fx, const char *name, size_t *n)
{
    const mha_st_entry *e = mha_st_find(fx->f, name);
    if (!e)
        return NULL;
    double *p = malloc(e->count * sizeof *p);
    cr_assert_eq(mha_st_read_raw(fx->f, e, p), MHA_OK, "%s", name);
    *n = e->count;
    return p;
}

static double max_abs(const double *w, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(w[i]));
    return m;
}

/* The worst |got - factor want| over the entries, as a fraction of scale
 * (asserted within TOL). */
static double check_close(const drun *r, const char *what, const float *got,
                          const double *want, size_t n, double factor,
                          double scale)
{
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - factor * want[i]);
        if (!(e <= worst))
            worst = e, at = i;
    }
    cr_expect_leq(worst, TOL * scale,
                  "%s on %s: error %g at %zu (got %g, want %g; scale %g)",
                  what, r->label, worst, at, (double)got[at],
                  factor * want[at], scale);
    return worst / scale;
}

/* The largest magnitude of every weight gradient of the fixture. */
static double weights_scale(const fixture *fx)
{
    double s = 0.0;
    char key[64];
    for (size_t k = 0; k < NWEIGHTS; k++) {
        size_t n;
        snprintf(key, sizeof key, "grad.%s", weight_names[k]);
        double *w = doubles(fx, key, &n);
        if (w)
            s = fmax(s, max_abs(w, n));
        free(w);
    }
    return s;
}

/* The worst relative error of every weight gradient (times factor). */
static double check_weights(const drun *r, const fixture *fx, double factor)
{
    double scale = factor * weights_scale(fx), worst = 0.0;
    char key[64];
    for (size_t k = 0; k < NWEIGHTS; k++) {
        size_t n, m;
        snprintf(key, sizeof key, "grad.%s", weight_names[k]);
        double *want = doubles(fx, key, &n);
        if (!want)
            continue;
        float *got = grad_of(r, weight_names[k], &m);
        cr_assert_eq(m, n, "%s", key);
        worst = fmax(worst, check_close(r, key, got, want, n, factor, scale));
        free(got);
        free(want);
    }
    return worst;
}

static float *floats_of(const fixture *fx, const char *name)
{
    float *p = fixture_floats(fx->f, name, NULL, NULL);
    cr_assert_not_null(p, "%s: no %s", fx->path, name);
    return p;
}

static mha_decoder_config fixture_config(const fixture *fx)
{
    mha_decoder_config c;
    mha_decoder_config_init(&c, (int64_t)fixture_meta(fx->f, "E"),
                            (int64_t)fixture_meta(fx->f, "Hq"));
    c.num_kv_heads = (int64_t)fixture_meta(fx->f, "Hkv");
    c.head_dim = (int64_t)fixture_meta(fx->f, "d");
    c.rope_style = (mha_rope_style)fixture_meta(fx->f, "rope");
    c.rope_dims = (int64_t)fixture_meta(fx->f, "rope_dims");
    c.rope_theta = (float)fixture_meta(fx->f, "theta");
    c.rope_scaling = (float)fixture_meta(fx->f, "scaling");
    c.qkv_bias = (int)fixture_meta(fx->f, "qkv_bias");
    c.o_bias = (int)fixture_meta(fx->f, "o_bias");
    return c;
}

/* Forward, backward and an accumulating second backward of the fixture
 * on td; prints the worst errors (fractions of each group's scale). */
static void fixture_on(mha_context *ctx, const test_device *td,
                       const char *name, const fixture *fx)
{
    mha_decoder_config cfg = fixture_config(fx);
    int64_t B = (int64_t)fixture_meta(fx->f, "B");
    int64_t T = (int64_t)fixture_meta(fx->f, "T");
    size_t n = (size_t)(B * T * cfg.embed_dim);
    float *x = floats_of(fx, "x"), *dy = floats_of(fx, "dy");
    const mha_st_entry *pe = mha_st_find(fx->f, "positions");
    cr_assert(pe && pe->count == (size_t)(B * T), "%s: positions", fx->path);
    int64_t *p64 = malloc(pe->count * sizeof *p64);
    cr_assert_eq(mha_st_read_raw(fx->f, pe, p64), MHA_OK);
    int32_t *pos = malloc((size_t)(B * T) * sizeof *pos);
    for (int64_t i = 0; i < B * T; i++)
        pos[i] = (int32_t)p64[i];
    drun r;
    run_open(&r, ctx, td, &cfg, B, T, x, dy,
             fixture_meta(fx->f, "default_pos") ? NULL : pos);
    cr_assert_eq(mha_decoder_load_safetensors(r.dec, fx->path, PREFIX),
                 MHA_OK, "%s", mha_context_errmsg(ctx));
    train_step(&r);
    size_t m;
    double *y = doubles(fx, "y", &m), *dx = doubles(fx, "dx", &m);
    float *gy = download(r.y, n), *gdx = download(r.dx, n);
    double ey = check_close(&r, "y", gy, y, n, 1.0, max_abs(y, n));
    double edx = check_close(&r, "dx", gdx, dx, n, 1.0, max_abs(dx, n));
    double ew = check_weights(&r, fx, 1.0);
    /* a second backward of the same forward, accumulating: twice */
    r.ba.accumulate = 1;
    cr_assert_eq(mha_decoder_backward(r.dec, &r.ba), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    double ew2 = check_weights(&r, fx, 2.0);
    fprintf(stderr,
            "decoder_backward %-18s %-12s y %.1e dx %.1e weights %.1e "
            "accumulated %.1e (of the scale)\n",
            name, td->label, ey, edx, ew, ew2);
    free(gy), free(gdx), free(y), free(dx);
    free(x), free(dy), free(p64), free(pos);
    run_close(&r);
}

static void run_fixture(const char *name)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    fixture fx;
    snprintf(fx.path, sizeof fx.path, "%s/decoder_backward/%s.safetensors",
             MHA_FIXTURE_DIR, name);
    cr_assert_eq(mha_st_open(&ctx->host, fx.path, &fx.f), MHA_OK, "%s: %s",
                 fx.path, mha_context_errmsg(ctx));
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        cr_assert(test_training_required(&devs[i]), "%s: training ops "
                  "missing", devs[i].label);
        fixture_on(ctx, &devs[i], name, &fx);
    }
    mha_st_close(fx.f);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
    cr_assert_gt(nd, 0, "%s: no device", name);
}

/* The cases of gen_decoder_backward_fixtures.py. */
#define FIXTURES(X)                                                          \
    X(llama_gqa_neox) X(mqa_gptj_partial) X(qwen2_bias) X(mha_norope)        \
    X(gqa_t1)

#define DEFINE_FIXTURE_TEST(name)                                            \
    Test(decoder_backward, name) { run_fixture(#name); }
FIXTURES(DEFINE_FIXTURE_TEST)
