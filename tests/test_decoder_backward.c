/* test_decoder_backward.c: training the decoder layer (mha_decoder_forward
 * with save_for_backward, mha_decoder_backward, AdamW on its weights) on
 * every device and CPU ISA: the output, dL/dx and every weight's gradient
 * against float64 torch autograd (tests/gen_decoder_backward_fixtures.py:
 * GQA, MQA, NeoX and GPT-J partial RoPE with the caller's positions, Qwen2
 * biases, gpt-oss sinks, head_dim != E/Hq, B 2, T 1, head gates [Hq]
 * and [B, Hq] with their gradient, also against central differences),
 * each within 1e-4 of its group's largest magnitude, and twice that
 * after an accumulating second backward;
 * central differences of the device's own forward; one AdamW step against
 * the formula; and the refused and bad calls, each with its status and
 * message. decoder_backward_f16: five fixtures over an f16 cache (1e-2)
 * and central differences that need the backward's f16 rounding of k and
 * v. */
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
#define TOL_F16 1e-2 /* over an f16 cache */

static const char *const weight_names[] = {
    "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
    "q_proj.bias",   "k_proj.bias",   "v_proj.bias",   "o_proj.bias",
    "sinks"};
#define NWEIGHTS (sizeof weight_names / sizeof *weight_names)

/* ---- one layer on one device --------------------------------------------- */

typedef struct drun {
    mha_context *ctx;
    const char *label;
    mha_device *dev;
    mha_decoder *dec;
    mha_kv_cache *cache;
    mha_gradients *grads;
    mha_tensor *x, *pos, *y, *dy, *dx;
    mha_tensor *gates, *dgates; /* head gates and their gradient, or NULL */
    size_t ngates;
    int64_t B, T, E;
    double tol;
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

/* r's cache for a layer of cfg: r->B sequences of capacity tokens of
 * dtype, a ring of window when not 0; the forward args use it. */
static void open_cache(drun *r, const mha_decoder_config *cfg,
                       int64_t capacity, mha_dtype dtype, int64_t window)
{
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = capacity;
    kc.num_sequences = r->B;
    kc.num_kv_heads = cfg->num_kv_heads;
    kc.head_dim = cfg->head_dim;
    kc.dtype = dtype;
    kc.window = window;
    cr_assert_eq(mha_kv_cache_create(r->dev, &kc, &r->cache), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    r->fa.cache = r->cache;
}

/* A layer of cfg on td with a cache of B empty sequences of T tokens (kv:
 * its dtype), x, dy (host data, B*T*E floats) and positions (NULL: the
 * default ones); training forward and backward args ready, with grad_x
 * and gradients. */
static void run_open(drun *r, mha_context *ctx, const test_device *td,
                     const mha_decoder_config *cfg, int64_t B, int64_t T,
                     const float *x, const float *dy, const int32_t *pos,
                     mha_dtype kv)
{
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->label = td->label;
    r->dev = test_open(ctx, td);
    r->B = B, r->T = T, r->E = cfg->embed_dim;
    r->tol = kv == MHA_F32 ? TOL : TOL_F16;
    cr_assert_eq(mha_decoder_create(r->dev, cfg, &r->dec), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    int64_t xs[3] = {B, T, r->E}, ps[2] = {B, T};
    size_t bytes = (size_t)(B * T * r->E) * 4;
    r->x = tensor(r, MHA_F32, 3, xs, x, bytes);
    r->y = tensor(r, MHA_F32, 3, xs, NULL, 0);
    r->dy = tensor(r, MHA_F32, 3, xs, dy, bytes);
    r->dx = tensor(r, MHA_F32, 3, xs, NULL, 0);
    r->pos = pos ? tensor(r, MHA_I32, 2, ps, pos, (size_t)(B * T) * 4) : NULL;
    cr_assert_eq(mha_decoder_gradients_create(r->dec, &r->grads), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_decoder_forward_args_init(&r->fa);
    open_cache(r, cfg, T + 2, kv, 0);
    r->fa.x = r->x, r->fa.positions = r->pos;
    r->fa.output = r->y, r->fa.save_for_backward = 1;
    mha_decoder_backward_args_init(&r->ba);
    r->ba.grad_output = r->dy, r->ba.grad_x = r->dx, r->ba.grads = r->grads;
}

static void run_close(drun *r)
{
    cr_assert_eq(mha_gradients_destroy(r->grads), MHA_OK);
    mha_tensor *t[] = {r->x, r->y, r->dy, r->dx, r->pos, r->gates, r->dgates};
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
    cr_assert_eq(mha_gradients_get(r->grads, name, &g), MHA_OK, "%s: %s", name,
                 mha_context_errmsg(r->ctx));
    mha_dtype dt;
    int nd;
    int64_t shape[MHA_MAX_DIMS], count = 1;
    cr_assert_eq(mha_tensor_get_shape(g, &dt, &nd, shape), MHA_OK);
    for (int i = 0; i < nd; i++)
        count *= shape[i];
    *n = (size_t)count;
    return download(g, *n);
}

/* ---- against torch autograd ---------------------------------------------- */

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
 * (asserted within r->tol). */
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
    cr_expect_leq(worst, r->tol * scale,
                  "%s on %s: error %g at %zu (got %g, want %g; scale %g)", what,
                  r->label, worst, at, (double)got[at], factor * want[at],
                  scale);
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
    c.sinks = (int)fixture_meta(fx->f, "sinks");
    c.window = (int64_t)fixture_meta(fx->f, "window");
    c.softcap = (float)fixture_meta(fx->f, "softcap");
    c.alibi = (int)fixture_meta(fx->f, "alibi");
    return c;
}

static void set_gates_arg(drun *r, void *arg)
{
    cr_assert_eq(mha_tensor_upload(r->gates, arg, r->ngates * 4), MHA_OK);
}

static double fd_compare(drun *r, const float *dy, float *p, size_t n,
                         const float *grad, void (*set)(drun *, void *),
                         void *arg, const char *what, float h, double tol);

/* A fixture with head_gates ([Hq] or [B, Hq]): the forward gets them and
 * the backward grad_head_gates. */
static void gates_open(drun *r, const fixture *fx)
{
    const mha_st_entry *e = mha_st_find(fx->f, "head_gates");
    if (!e)
        return;
    float *g = floats_of(fx, "head_gates");
    r->gates = tensor(r, MHA_F32, e->ndim, e->shape, g, e->count * 4);
    r->dgates = tensor(r, MHA_F32, e->ndim, e->shape, NULL, 0);
    r->ngates = e->count;
    r->fa.head_gates = r->gates;
    r->ba.grad_head_gates = r->dgates;
    free(g);
}

/* dL/dg against autograd's, and (fd) against central differences of the
 * device's own inference forward, in which the gates are linear: within
 * 1e-3 of the largest. */
static double check_gates(drun *r, const fixture *fx, const float *dy,
                          int fd)
{
    size_t n;
    double *want = doubles(fx, "grad.head_gates", &n);
    float *got = download(r->dgates, n);
    double e = check_close(r, "grad.head_gates", got, want, n, 1.0,
                           max_abs(want, n));
    if (fd) {
        float *g = floats_of(fx, "head_gates");
        e = fmax(e, fd_compare(r, dy, g, n, got, set_gates_arg, g,
                               "head_gates", 1e-2f, 1e-3));
        free(g);
    }
    free(got), free(want);
    return e;
}

/* Forward, backward and an accumulating second backward of the fixture
 * on td; prints the worst errors (fractions of each group's scale). */
static void fixture_on(mha_context *ctx, const test_device *td,
                       const char *name, const fixture *fx, mha_dtype kv)
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
             fixture_meta(fx->f, "default_pos") ? NULL : pos, kv);
    cr_assert_eq(mha_decoder_load_safetensors(r.dec, fx->path, PREFIX), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    gates_open(&r, fx);
    train_step(&r);
    size_t m;
    double *y = doubles(fx, "y", &m), *dx = doubles(fx, "dx", &m);
    float *gy = download(r.y, n), *gdx = download(r.dx, n);
    double ey = check_close(&r, "y", gy, y, n, 1.0, max_abs(y, n));
    double edx = check_close(&r, "dx", gdx, dx, n, 1.0, max_abs(dx, n));
    double ew = check_weights(&r, fx, 1.0);
    double eg = r.gates ? check_gates(&r, fx, dy, 1) : 0.0;
    /* a second backward of the same forward (the differences' inference
       forwards keep what it saved), accumulating: twice the weights'
       gradients, the gates' written again, not added to */
    r.ba.accumulate = 1;
    cr_assert_eq(mha_decoder_backward(r.dec, &r.ba), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    double ew2 = check_weights(&r, fx, 2.0);
    if (r.gates) {
        eg = fmax(eg, check_gates(&r, fx, dy, 0));
        r.ba.grad_head_gates = r.dx; /* [B, T, E]: not the gates' shape */
        cr_expect_eq(mha_decoder_backward(r.dec, &r.ba), MHA_SHAPE_MISMATCH);
        cr_expect(strstr(mha_context_errmsg(ctx), "grad_head_gates has shape"),
                  "%s", mha_context_errmsg(ctx));
    }
    fprintf(stderr,
            "decoder_backward %-18s %-12s %s cache: y %.1e dx %.1e weights "
            "%.1e accumulated %.1e gates %.1e (of the scale)\n",
            name, td->label, kv == MHA_F32 ? "f32" : "f16", ey, edx, ew, ew2,
            eg);
    free(gy), free(gdx), free(y), free(dx);
    free(x), free(dy), free(p64), free(pos);
    run_close(&r);
}

/* Whether td holds an f16 cache: the cpu backend, or fp16 storage. */
static int holds_f16_cache(mha_context *ctx, const test_device *td)
{
    mha_device_info info;
    cr_assert_eq(mha_device_get_info(ctx, td->index, &info), MHA_OK);
    return strcmp(info.backend, "cpu") == 0 ||
           (info.features & MHA_FEATURE_FP16_STORAGE);
}

/* The fixture on every device, over a cache of dtype kv (f16: within
 * TOL_F16, on the devices that hold one). */
static void run_fixture(const char *name, mha_dtype kv)
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
        cr_assert(test_training_required(&devs[i]),
                  "%s: training ops "
                  "missing",
                  devs[i].label);
        if (kv == MHA_F32 || holds_f16_cache(ctx, &devs[i]))
            fixture_on(ctx, &devs[i], name, &fx, kv);
    }
    mha_st_close(fx.f);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
    cr_assert_gt(nd, 0, "%s: no device", name);
}

/* The cases of gen_decoder_backward_fixtures.py. */
#define FIXTURES(X)                                                            \
    X(llama_gqa_neox) X(mqa_gptj_partial) X(qwen2_bias) X(mha_norope)        \
        X(gqa_t1) X(sinks_gqa) X(mistral_window) X(alibi_mha)             \
        X(gemma2_softcap) X(window_softcap_alibi_sinks) X(gates_heads)     \
            X(gates_per_sequence)

#define DEFINE_FIXTURE_TEST(name)                                              \
    Test(decoder_backward, name) { run_fixture(#name, MHA_F32); }
FIXTURES(DEFINE_FIXTURE_TEST)

/* The same over an f16 cache: the forward's attention reads k and v
 * rounded to f16, the backward rounds them alike. The cases whose k and v
 * paths differ (RoPE or not, partial, GQA or not, sinks, every option;
 * each costs a process its kernels). */
#define F16_FIXTURES(X)                                                        \
    X(llama_gqa_neox) X(mqa_gptj_partial) X(mha_norope) X(sinks_gqa)        \
        X(window_softcap_alibi_sinks)
#define DEFINE_F16_TEST(name)                                                  \
    Test(decoder_backward_f16, name) { run_fixture(#name, MHA_F16); }
F16_FIXTURES(DEFINE_F16_TEST)

/* ---- AdamW on a decoder layer -------------------------------------------- */

/* The first cpu device of ctx. */
static test_device cpu_device(mha_context *ctx)
{
    test_device td = {"cpu", 0, NULL};
    mha_device_info info;
    int n = 0;
    cr_assert_eq(mha_device_count(ctx, &n), MHA_OK);
    for (int i = n - 1; i >= 0; i--) {
        cr_assert_eq(mha_device_get_info(ctx, i, &info), MHA_OK);
        if (strcmp(info.backend, "cpu") == 0)
            td.index = i;
    }
    return td;
}

/* sum(dy * y) in double: the loss whose dL/dy is dy. */
static double loss_of(const drun *r, const float *dy)
{
    size_t n = (size_t)(r->B * r->T * r->E);
    float *y = download(r->y, n);
    double l = 0.0;
    for (size_t i = 0; i < n; i++)
        l += (double)dy[i] * y[i];
    free(y);
    return l;
}

/* The llama fixture's layer on the CPU, with its x and dy. */
typedef struct llama_env {
    mha_context *ctx;
    fixture fx;
    float *x, *dy;
    drun r;
} llama_env;

static void llama_open(llama_env *e)
{
    cr_assert_eq(mha_context_create(NULL, &e->ctx), MHA_OK);
    test_device td = cpu_device(e->ctx);
    fixture *fx = &e->fx;
    snprintf(fx->path, sizeof fx->path,
             "%s/decoder_backward/llama_gqa_neox.safetensors", MHA_FIXTURE_DIR);
    cr_assert_eq(mha_st_open(&e->ctx->host, fx->path, &fx->f), MHA_OK);
    mha_decoder_config cfg = fixture_config(fx);
    e->x = floats_of(fx, "x");
    e->dy = floats_of(fx, "dy");
    run_open(&e->r, e->ctx, &td, &cfg, (int64_t)fixture_meta(fx->f, "B"),
             (int64_t)fixture_meta(fx->f, "T"), e->x, e->dy, NULL, MHA_F32);
    cr_assert_eq(mha_decoder_load_safetensors(e->r.dec, fx->path, PREFIX),
                 MHA_OK, "%s", mha_context_errmsg(e->ctx));
}

static void llama_close(llama_env *e)
{
    run_close(&e->r);
    mha_st_close(e->fx.f);
    free(e->x), free(e->dy);
    cr_assert_eq(mha_context_destroy(e->ctx), MHA_OK);
}

/* One step from zeroed state: m^ = g, v^ = g^2, so each weight moves to
 * w (1 - lr wd) - lr g / (|g| + eps); the step needs a new training
 * forward, after which the loss is lower. */
Test(decoder_backward, adamw_step)
{
    llama_env e;
    llama_open(&e);
    mha_context *ctx = e.ctx;
    mha_adamw *opt = NULL;
    cr_assert_eq(mha_decoder_adamw_create(e.r.dec, NULL, &opt), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    train_step(&e.r);
    double before = loss_of(&e.r, e.dy);
    const float lr = 1e-3f, wd = 0.01f, eps = 1e-8f;
    cr_assert_eq(mha_adamw_step(opt, e.r.grads, lr), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_expect_eq(mha_adamw_steps(opt), 1);
    static const mha_dslot slots[4] = {MHA_D_WQ, MHA_D_WK, MHA_D_WV, MHA_D_WO};
    for (int k = 0; k < 4; k++) {
        char key[96];
        snprintf(key, sizeof key, PREFIX "%s", weight_names[k]);
        float *w0 = floats_of(&e.fx, key);
        size_t n;
        float *g = grad_of(&e.r, weight_names[k], &n);
        float *w1 = malloc(n * sizeof *w1);
        cr_assert_eq(mha_dev_read(e.r.dev, e.r.dec->wbuf[slots[k]], 0, w1,
                                  n * sizeof *w1),
                     MHA_OK);
        double worst = 0.0;
        for (size_t i = 0; i < n; i++) {
            double want = (double)w0[i] * (1.0 - (double)lr * wd) -
                          (double)lr * g[i] / (fabs((double)g[i]) + eps);
            worst = fmax(worst, fabs(w1[i] - want));
        }
        cr_expect_leq(worst, 1e-6, "%s after one step: error %g",
                      weight_names[k], worst);
        free(w0), free(g), free(w1);
    }
    cr_expect_eq(mha_decoder_backward(e.r.dec, &e.r.ba), MHA_BAD_STATE);
    cr_expect(strstr(mha_context_errmsg(ctx), "weights changed"), "%s",
              mha_context_errmsg(ctx));
    train_step(&e.r);
    cr_expect_lt(loss_of(&e.r, e.dy), before,
                 "the step did not lower the loss");
    cr_assert_eq(mha_adamw_destroy(opt), MHA_OK);
    llama_close(&e);
}

/* ---- bad calls ----------------------------------------------------------- */

static void expect_status(mha_context *ctx, mha_status got, mha_status want,
                          const char *needle, const char *what)
{
    cr_expect_eq(got, want, "%s: status %s, want %s (%s)", what,
                 mha_status_str(got), mha_status_str(want),
                 mha_context_errmsg(ctx));
    cr_expect(strstr(mha_context_errmsg(ctx), needle),
              "%s: message \"%s\" lacks \"%s\"", what, mha_context_errmsg(ctx),
              needle);
}

Test(decoder_backward, bad_calls)
{
    llama_env e;
    llama_open(&e);
    mha_context *ctx = e.ctx;
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba), MHA_BAD_STATE,
                  "no training forward", "backward before any forward");
    /* an inference forward saves nothing, and fills the cache */
    e.r.fa.save_for_backward = 0;
    cr_assert_eq(mha_decoder_forward(e.r.dec, &e.r.fa), MHA_OK);
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba), MHA_BAD_STATE,
                  "no training forward", "backward after an inference one");
    e.r.fa.save_for_backward = 1;
    expect_status(ctx, mha_decoder_forward(e.r.dec, &e.r.fa), MHA_UNSUPPORTED,
                  "sequence 0 of the cache holds 7 tokens",
                  "training forward over a filled cache");
    train_step(&e.r);
    /* wrong shapes, another layer's gradients */
    int64_t bad[3] = {e.r.B, e.r.T + 1, e.r.E};
    mha_tensor *wrong = tensor(&e.r, MHA_F32, 3, bad, NULL, 0);
    e.r.ba.grad_output = wrong;
    expect_status(
        ctx, mha_decoder_backward(e.r.dec, &e.r.ba), MHA_SHAPE_MISMATCH,
        "grad_output has shape [2,8,32]; expected [2,7,32]", "grad_output");
    e.r.ba.grad_output = e.r.dy;
    e.r.ba.grad_x = wrong;
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba),
                  MHA_SHAPE_MISMATCH, "grad_x", "grad_x");
    e.r.ba.grad_x = e.r.dx;
    e.r.ba.grad_head_gates = wrong;
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba),
                  MHA_INVALID_ARGUMENT, "forward had no head_gates",
                  "grad_head_gates without gates");
    e.r.ba.grad_head_gates = NULL;
    e.r.ba.grad_x = (mha_tensor *)e.r.fa.x; /* read by dW after dx */
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba),
                  MHA_INVALID_ARGUMENT, "grad_x shares memory with x",
                  "grad_x over x");
    e.r.ba.grad_x = e.r.dx;
    mha_decoder *other;
    mha_gradients *og;
    mha_decoder_config cfg = fixture_config(&e.fx);
    cr_assert_eq(mha_decoder_create(e.r.dev, &cfg, &other), MHA_OK);
    cr_assert_eq(mha_decoder_gradients_create(other, &og), MHA_OK);
    e.r.ba.grads = og;
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba),
                  MHA_INVALID_ARGUMENT, "another layer", "other grads");
    e.r.ba.grads = e.r.grads;
    cr_assert_eq(mha_decoder_backward(e.r.dec, &e.r.ba), MHA_OK);
    /* weights changed since the forward */
    size_t n;
    float *wq = grad_of(&e.r, "q_proj.weight", &n);
    int64_t ws[2] = {cfg.num_heads * cfg.head_dim, cfg.embed_dim};
    cr_assert_eq(mha_decoder_set_weight(e.r.dec, "q_proj.weight", wq, 2, ws),
                 MHA_OK);
    expect_status(ctx, mha_decoder_backward(e.r.dec, &e.r.ba), MHA_BAD_STATE,
                  "weights changed", "backward after set_weight");
    /* pruning: gradients and optimizer no longer fit */
    mha_adamw *opt;
    cr_assert_eq(mha_decoder_adamw_create(e.r.dec, NULL, &opt), MHA_OK);
    int64_t group[2] = {0, 1};
    cr_assert_eq(mha_decoder_prune_heads(e.r.dec, group, 2), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    expect_status(ctx, mha_adamw_step(opt, e.r.grads, 1e-3f), MHA_BAD_STATE,
                  "pruned", "step after pruning");
    cr_assert_eq(mha_adamw_destroy(opt), MHA_OK);
    free(wq);
    cr_assert_eq(mha_gradients_destroy(og), MHA_OK);
    cr_assert_eq(mha_decoder_destroy(other), MHA_OK);
    cr_assert_eq(mha_tensor_destroy(wrong), MHA_OK);
    llama_close(&e);
}

/* A training forward of a layer with an option the backward lacks, or
 * over a ring cache (of window ring when not 0): refused naming it, and a
 * backward after it finds nothing saved. */
static void expect_refused(mha_decoder_config cfg, int64_t ring,
                           const char *needle)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_device td = cpu_device(ctx);
    int64_t B = 1, T = 3, n = B * T * cfg.embed_dim;
    float *x = calloc((size_t)n, sizeof *x);
    drun r;
    run_open(&r, ctx, &td, &cfg, B, T, x, x, NULL, MHA_F32);
    if (ring) {
        mha_kv_cache_destroy(r.cache);
        open_cache(&r, &cfg, T, MHA_F32, ring);
    }
    mha_dweight w[MHA_DSLOT_COUNT];
    for (int i = 0, k = mha_decoder_weights(r.dec, w); i < k; i++) {
        size_t len = (size_t)w[i].shape[0] *
                     (w[i].ndim == 2 ? (size_t)w[i].shape[1] : 1);
        float *z = calloc(len, sizeof *z);
        cr_assert_eq(
            mha_decoder_set_weight(r.dec, w[i].name, z, w[i].ndim, w[i].shape),
            MHA_OK);
        free(z);
    }
    expect_status(ctx, mha_decoder_forward(r.dec, &r.fa), MHA_UNSUPPORTED,
                  needle, needle);
    expect_status(ctx, mha_decoder_backward(r.dec, &r.ba), MHA_BAD_STATE,
                  "no training forward", "backward after a refused one");
    run_close(&r);
    free(x);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(decoder_backward, unsupported_options_are_refused)
{
    mha_decoder_config c;
    mha_decoder_config_init(&c, 16, 4);
    c.num_kv_heads = 2;
    c.window = 2;
    expect_refused(c, 2, "not a ring");
}

/* ---- central differences of the device's own forward --------------------- */

/* A layer of every supported kind at once (GQA 4/2, partial NeoX RoPE at
 * the caller's positions, q/k/v and o biases, sinks, head_dim 4 != E/Hq
 * 2), loss
 * sum(dy * y) summed in double: sampled elements of dL/dx and of every
 * weight's gradient against (L(p + h) - L(p - h)) / 2h, each forward a
 * fresh prefill. h = 1e-2 keeps the quotient's rounding (~1e-6 / 2h) and
 * truncation (~h^2) far below the tolerance, 2e-3 of the tensor's largest
 * gradient. */
#define FD_STEP 1e-2f
#define FD_TOL 2e-3
#define FD_SAMPLES 4

typedef struct fd_layer {
    mha_decoder_config cfg;
    float *w[NWEIGHTS];
    int64_t shape[NWEIGHTS][2];
    int ndim[NWEIGHTS];
    size_t len[NWEIGHTS];
} fd_layer;

static void fd_make(fd_layer *f, test_rng *rng)
{
    mha_decoder_config_init(&f->cfg, 8, 4);
    f->cfg.num_kv_heads = 2;
    f->cfg.head_dim = 4;
    f->cfg.rope_dims = 2;
    f->cfg.qkv_bias = 1;
    f->cfg.o_bias = 1;
    f->cfg.sinks = 1;
    int64_t E = 8, q = 16, kv = 8;
    const int64_t shapes[NWEIGHTS][2] = {{q, E}, {kv, E}, {kv, E}, {E, q},
                                         {q, 0}, {kv, 0}, {kv, 0}, {E, 0},
                                         {4, 0}};
    for (size_t k = 0; k < NWEIGHTS; k++) {
        f->ndim[k] = shapes[k][1] ? 2 : 1;
        f->shape[k][0] = shapes[k][0];
        f->shape[k][1] = shapes[k][1];
        f->len[k] =
            (size_t)shapes[k][0] * (size_t)(shapes[k][1] ? shapes[k][1] : 1);
        f->w[k] = malloc(f->len[k] * sizeof *f->w[k]);
        for (size_t i = 0; i < f->len[k]; i++)
            f->w[k][i] = test_normal(rng) * 0.5f;
    }
}

static void fd_put(drun *r, const fd_layer *f, size_t k)
{
    cr_assert_eq(mha_decoder_set_weight(r->dec, weight_names[k], f->w[k],
                                        f->ndim[k], f->shape[k]),
                 MHA_OK, "%s", mha_context_errmsg(r->ctx));
}

/* The loss of a fresh prefill (an inference forward). */
static double fd_loss(drun *r, const float *dy)
{
    cr_assert_eq(mha_kv_cache_clear(r->cache), MHA_OK);
    r->fa.save_for_backward = 0;
    cr_assert_eq(mha_decoder_forward(r->dec, &r->fa), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    return loss_of(r, dy);
}

/* The worst difference of sampled elements of p (n of them, the device
 * holding them after set()) against grad, as a fraction of grad's
 * largest magnitude. */
static double fd_compare(drun *r, const float *dy, float *p, size_t n,
                         const float *grad, void (*set)(drun *, void *),
                         void *arg, const char *what, float h, double tol)
{
    double scale = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(grad[i]));
    cr_assert_gt(scale, 0.0, "%s: gradient is 0", what);
    for (size_t s = 0; s < FD_SAMPLES; s++) {
        size_t i = (s * 7 + 3) % n;
        float keep = p[i];
        p[i] = keep + h;
        set(r, arg);
        double up = fd_loss(r, dy);
        p[i] = keep - h;
        set(r, arg);
        double down = fd_loss(r, dy);
        p[i] = keep;
        set(r, arg);
        double fd = (up - down) / (2.0 * (double)h);
        worst = fmax(worst, fabs(fd - grad[i]) / scale);
        cr_expect_leq(fabs(fd - grad[i]), tol * scale,
                      "%s[%zu] on %s: difference %g, backward %g (scale %g)",
                      what, i, r->label, fd, (double)grad[i], scale);
    }
    return worst;
}

typedef struct fd_arg {
    const fd_layer *f;
    size_t k;
    const float *x;
} fd_arg;

static void set_weight_arg(drun *r, void *arg)
{
    const fd_arg *a = arg;
    fd_put(r, a->f, a->k);
}

static void set_x_arg(drun *r, void *arg)
{
    const fd_arg *a = arg;
    cr_assert_eq(
        mha_tensor_upload(r->x, a->x, (size_t)(r->B * r->T * r->E) * 4),
        MHA_OK);
}

/* fd_make's layer from seed (k_proj.weight times kscale) on td over a
 * cache of dtype kv, with random x and dy (B 2, T 3; malloc'd into *x and
 * *dy) and positions pos (NULL: the default ones), trained once. */
static void fd_open(drun *r, mha_context *ctx, const test_device *td,
                    fd_layer *f, uint64_t seed, float kscale,
                    const int32_t *pos, mha_dtype kv, float **x, float **dy)
{
    test_rng rng = {seed};
    fd_make(f, &rng);
    for (size_t i = 0; i < f->len[1]; i++)
        f->w[1][i] *= kscale;
    int64_t B = 2, T = 3, n = B * T * f->cfg.embed_dim;
    *x = malloc((size_t)n * sizeof **x), *dy = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        (*x)[i] = test_normal(&rng), (*dy)[i] = test_normal(&rng);
    run_open(r, ctx, td, &f->cfg, B, T, *x, *dy, pos, kv);
    for (size_t k = 0; k < NWEIGHTS; k++)
        fd_put(r, f, k);
    train_step(r);
}

static void fd_close(drun *r, fd_layer *f, float *x, float *dy)
{
    free(x), free(dy);
    for (size_t k = 0; k < NWEIGHTS; k++)
        free(f->w[k]);
    run_close(r);
}

static void fd_on(mha_context *ctx, const test_device *td)
{
    const int32_t pos[6] = {3, 5, 9, 0, 1, 7};
    fd_layer f;
    drun r;
    float *x, *dy;
    fd_open(&r, ctx, td, &f, 42, 1.0f, pos, MHA_F32, &x, &dy);
    int64_t n = r.B * r.T * r.E;
    float *gx = download(r.dx, (size_t)n);
    fd_arg xa = {&f, 0, x};
    double worst = fd_compare(&r, dy, x, (size_t)n, gx, set_x_arg, &xa, "dx",
                              FD_STEP, FD_TOL);
    for (size_t k = 0; k < NWEIGHTS; k++) {
        size_t m;
        float *g = grad_of(&r, weight_names[k], &m);
        fd_arg wa = {&f, k, NULL};
        worst = fmax(worst, fd_compare(&r, dy, f.w[k], m, g, set_weight_arg,
                                       &wa, weight_names[k], FD_STEP,
                                       FD_TOL));
        free(g);
    }
    fprintf(stderr, "decoder_backward %-18s %-12s worst %.1e of the scale\n",
            "finite_differences", td->label, worst);
    free(gx);
    fd_close(&r, &f, x, dy);
}

Test(decoder_backward, finite_differences) { test_each_device(fd_on); }

/* Over an f16 cache, keys 6x larger (scores near 20, where a key's f16
 * rounding moves a score by ~0.01): dL/dWq against differences of Wq,
 * which leave the rounded keys as they are, so the device's forward is
 * smooth in it: within 1e-3 of the largest (about 1e-4 here). A backward
 * that read the unrounded keys or values misses by 3e-3 or more (keys
 * 8x, 12x or 16x larger saturate the softmax so that the keys' rounding
 * hides, 16x still shows the values'); h 1e-3 keeps the truncation small
 * at these scores. */
static void fd_f16_cache_on(mha_context *ctx, const test_device *td)
{
    if (!holds_f16_cache(ctx, td))
        return;
    fd_layer f;
    drun r;
    float *x, *dy;
    fd_open(&r, ctx, td, &f, 7, 6.0f, NULL, MHA_F16, &x, &dy);
    size_t m;
    float *g = grad_of(&r, weight_names[0], &m);
    fd_arg wa = {&f, 0, NULL};
    double worst = fd_compare(&r, dy, f.w[0], m, g, set_weight_arg, &wa,
                              weight_names[0], 1e-3f, 1e-3);
    fprintf(stderr, "decoder_backward %-18s %-12s worst %.1e of the scale\n",
            "f16 cache, Wq", td->label, worst);
    free(g);
    fd_close(&r, &f, x, dy);
}

Test(decoder_backward_f16, finite_differences_of_q_proj)
{
    /* fp32 arithmetic on fp16 tensors: a Vulkan device with fp16 math
     * rounds the forward's p.v products, a step far larger than the
     * differences' (the backward differentiates fp32 math) */
    char caps[256];
    const char *had = getenv("MHA_VULKAN_LIMITS");
    snprintf(caps, sizeof caps, "%s%sfp16math=0", had ? had : "",
             had ? "," : "");
    cr_assert_eq(setenv("MHA_VULKAN_LIMITS", caps, 1), 0);
    test_each_device(fd_f16_cache_on);
}
