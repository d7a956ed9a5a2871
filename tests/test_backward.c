/* test_backward.c: the training API against PyTorch's float64 autograd
 * (tests/gen_backward_fixtures.py): a training forward and
 * mha_layer_backward on every device and CPU ISA, each gradient within
 * 1e-4 of the largest magnitude of its group's reference (fp32), for every
 * layer option and mask, and the head gates' gradient; accumulation; 10
 * AdamW steps against torch.optim.AdamW (1e-5); and the bad calls, each
 * with its status and message. A device whose backend is not in training_backends may answer
 * MHA_UNSUPPORTED (logged and skipped): its backend has not landed the
 * training ops (issue 18) yet. backward_f16: eight of the cases with f16
 * layers (1e-2) on the devices with fp16 storage, and AdamW on an f16 layer
 * against the formula on a float64 master. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "safetensors.h"

/* Backends whose training ops (backend.h, "Training") have landed. */
static const char *const training_backends[] = {"cpu", "vulkan", "opencl"};

static int training_required(const test_device *td)
{
    size_t len = strcspn(td->label, "/:");
    for (size_t i = 0; i < sizeof training_backends / sizeof *training_backends;
         i++)
        if (strlen(training_backends[i]) == len &&
            strncmp(td->label, training_backends[i], len) == 0)
            return 1;
    return 0;
}

/* Every state_dict name a layer can have. */
static const char *const weight_names[] = {
    "in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
    "in_proj_bias",   "out_proj.weight", "out_proj.bias", "bias_k",
    "bias_v"};
#define WEIGHT_NAMES (sizeof weight_names / sizeof *weight_names)

/* ---- fixtures ------------------------------------------------------------ */

typedef struct fixture {
    char path[512];
    mha_st_file *f;
    mha_layer_config cfg;
    int causal, shared, mask_bool, kpm_bool;
    double tol; /* relative to a group's scale: 1e-4 f32, 1e-2 f16 */
} fixture;

static void open_fixture(mha_context *ctx, const char *name, fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    snprintf(fx->path, sizeof fx->path, "%s/backward/%s.safetensors",
             MHA_FIXTURE_DIR, name);
    cr_assert_eq(mha_st_open(&ctx->host, fx->path, &fx->f), MHA_OK, "%s: %s",
                 fx->path, mha_context_errmsg(ctx));
    mha_layer_config_init(&fx->cfg, (int64_t)fixture_meta(fx->f, "embed_dim"),
                          (int64_t)fixture_meta(fx->f, "num_heads"));
    fx->cfg.kdim = (int64_t)fixture_meta(fx->f, "kdim");
    fx->cfg.vdim = (int64_t)fixture_meta(fx->f, "vdim");
    fx->cfg.bias = (int)fixture_meta(fx->f, "bias");
    fx->cfg.add_bias_kv = (int)fixture_meta(fx->f, "add_bias_kv");
    fx->cfg.add_zero_attn = (int)fixture_meta(fx->f, "add_zero_attn");
    fx->cfg.batch_first = (int)fixture_meta(fx->f, "batch_first");
    fx->causal = (int)fixture_meta(fx->f, "causal");
    fx->shared = (int)fixture_meta(fx->f, "shared");
    fx->mask_bool = (int)fixture_meta(fx->f, "mask_bool");
    fx->kpm_bool = (int)fixture_meta(fx->f, "kpm_bool");
    fx->tol = 1e-4;
}

/* Tensor name of the fixture as doubles (malloc'd), its element count. */
static double *fixture_doubles(const fixture *fx, const char *name,
                               size_t *count)
{
    const mha_st_entry *e = mha_st_find(fx->f, name);
    cr_assert(e, "%s: no %s", fx->path, name);
    double *x = malloc(e->count * sizeof *x);
    cr_assert_eq(mha_st_read_raw(fx->f, e, x), MHA_OK, "%s", name);
    *count = e->count;
    return x;
}

/* ---- one run ------------------------------------------------------------- */

#define RUN_TENSORS 14

typedef struct run_env {
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
    mha_gradients *grads;
    mha_tensor *t[RUN_TENSORS];
    int nt;
    mha_forward_args fa;
    mha_backward_args ba;
} run_env;

static mha_tensor *keep(run_env *r, mha_tensor *t)
{
    cr_assert_lt(r->nt, RUN_TENSORS);
    return r->t[r->nt++] = t;
}

/* The fixture's tensor name on the device (bool: its 0/1 floats as
 * MHA_BOOL); NULL when the fixture has none. */
static mha_tensor *upload_named(run_env *r, const fixture *fx,
                                const char *name, int as_bool)
{
    int nd;
    int64_t shape[4];
    float *x = fixture_floats(fx->f, name, &nd, shape);
    if (!x)
        return NULL;
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(r->dev, as_bool ? MHA_BOOL : MHA_F32, nd,
                                   shape, &t),
                 MHA_OK, "%s", mha_context_errmsg(r->ctx));
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    if (as_bool) {
        unsigned char *b = malloc(n);
        for (size_t i = 0; i < n; i++)
            b[i] = x[i] != 0.0f;
        cr_assert_eq(mha_tensor_upload(t, b, n), MHA_OK);
        free(b);
    } else {
        cr_assert_eq(mha_tensor_upload(t, x, n * 4), MHA_OK);
    }
    free(x);
    return keep(r, t);
}

/* A zeroed f32 tensor shaped like like. */
static mha_tensor *zeros_like(run_env *r, const mha_tensor *like)
{
    int nd;
    int64_t shape[MHA_MAX_DIMS];
    cr_assert_eq(mha_tensor_get_shape(like, NULL, &nd, shape), MHA_OK);
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(r->dev, MHA_F32, nd, shape, &t), MHA_OK);
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    float *z = calloc(n, 4);
    cr_assert_eq(mha_tensor_upload(t, z, n * 4), MHA_OK);
    free(z);
    return keep(r, t);
}

/* Layer, inputs, output, dY and gradients of fx on td; forward and
 * backward args ready (input gradients wanted). */
static void setup(run_env *r, mha_context *ctx, const test_device *td,
                  const fixture *fx)
{
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->dev = test_open(ctx, td);
    cr_assert_eq(mha_layer_create(r->dev, &fx->cfg, &r->layer), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_layer_load_safetensors(r->layer, fx->path, NULL), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    mha_forward_args *a = &r->fa;
    mha_forward_args_init(a);
    a->query = upload_named(r, fx, "query", 0);
    a->key = fx->shared ? a->query : upload_named(r, fx, "key", 0);
    a->value = fx->shared ? a->query : upload_named(r, fx, "value", 0);
    a->attn_mask = upload_named(r, fx, "attn_mask", fx->mask_bool);
    a->key_padding_mask = upload_named(r, fx, "key_padding_mask",
                                       fx->kpm_bool);
    a->is_causal = fx->causal;
    a->head_gates = upload_named(r, fx, "head_gates", 0);
    a->output = zeros_like(r, a->query);
    a->save_for_backward = 1;
    mha_backward_args *b = &r->ba;
    mha_backward_args_init(b);
    b->grad_output = upload_named(r, fx, "grad_output", 0);
    b->grad_query = zeros_like(r, a->query);
    b->grad_key = fx->shared ? b->grad_query : zeros_like(r, a->key);
    b->grad_value = fx->shared ? b->grad_query : zeros_like(r, a->value);
    cr_assert_eq(mha_gradients_create(r->layer, &r->grads), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    b->grads = r->grads;
    b->grad_head_gates = a->head_gates ? zeros_like(r, a->head_gates) : NULL;
}

static void teardown(run_env *r)
{
    cr_assert_eq(mha_gradients_destroy(r->grads), MHA_OK);
    for (int i = r->nt - 1; i >= 0; i--)
        cr_assert_eq(mha_tensor_destroy(r->t[i]), MHA_OK);
    cr_assert_eq(mha_layer_destroy(r->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(r->dev), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
}

/* The largest magnitude of the fixture's tensors names[0..n) (those it
 * has), times factor: the scale of a gradient is its group's (every
 * weight's, or every input's), since a gradient that is 0 in exact
 * arithmetic (a saturated softmax's dQ) is rounding noise in fp32. */
static double group_scale(const fixture *fx, const char *const *names, int n,
                          double factor)
{
    double scale = 0.0;
    for (int k = 0; k < n; k++) {
        if (!mha_st_find(fx->f, names[k]))
            continue;
        size_t count;
        double *want = fixture_doubles(fx, names[k], &count);
        for (size_t i = 0; i < count; i++)
            scale = fmax(scale, fabs(factor * want[i]));
        free(want);
    }
    return scale;
}

/* t within fx->tol x scale of the fixture's want_name x factor. */
static void check_tensor(const fixture *fx, const char *label,
                         const mha_tensor *t, const char *want_name,
                         double factor, double scale)
{
    size_t n;
    double *want = fixture_doubles(fx, want_name, &n);
    float *got = malloc(n * sizeof *got);
    cr_assert_eq(mha_tensor_download(t, got, n * sizeof *got), MHA_OK);
    double worst = 0.0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - factor * want[i]);
        if (!(e <= worst)) {
            worst = e;
            at = i;
        }
    }
    cr_expect_leq(worst, fx->tol * fmax(scale, 1e-30),
                  "%s on %s: error %g at %zu (got %g, want %g; scale %g)",
                  want_name, label, worst, at, (double)got[at],
                  factor * want[at], scale);
    free(got);
    free(want);
}

/* Every weight gradient of the run against the fixture, times factor. */
static void check_gradients(const fixture *fx, const char *label,
                            const run_env *r, double factor)
{
    char names[WEIGHT_NAMES][64];
    const char *p[WEIGHT_NAMES];
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        snprintf(names[i], sizeof names[i], "grad.%s", weight_names[i]);
        p[i] = names[i];
    }
    double scale = group_scale(fx, p, (int)WEIGHT_NAMES, factor);
    int checked = 0;
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        const mha_tensor *g;
        if (mha_gradients_get(r->grads, weight_names[i], &g) != MHA_OK)
            continue;
        check_tensor(fx, label, g, names[i], factor, scale);
        checked++;
    }
    cr_expect_geq(checked, 2, "%s: only %d weight gradients", label, checked);
}

static void check_input_gradients(const fixture *fx, const char *label,
                                  const run_env *r)
{
    static const char *const names[3] = {"grad_query", "grad_key",
                                         "grad_value"};
    mha_tensor *d[3] = {r->ba.grad_query, r->ba.grad_key, r->ba.grad_value};
    double scale = group_scale(fx, names, 3, 1.0);
    for (int i = 0; i < (fx->shared ? 1 : 3); i++)
        check_tensor(fx, label, d[i], names[i], 1.0, scale);
}

/* Whether td can hold fx's layer: f16 needs fp16 storage. */
static int holds(mha_context *ctx, const test_device *td, const fixture *fx)
{
    mha_device_info info;
    cr_assert_eq(mha_device_get_info(ctx, td->index, &info), MHA_OK);
    return fx->cfg.dtype == MHA_F32 ||
           (info.features & MHA_FEATURE_FP16_STORAGE);
}

/* Runs fx on td; 0 when the device may and does decline training. */
static int run_on(mha_context *ctx, const test_device *td, const char *name,
                  const fixture *fx)
{
    run_env r;
    setup(&r, ctx, td, fx);
    mha_status st = mha_layer_forward(r.layer, &r.fa);
    if (st == MHA_OK)
        st = mha_layer_backward(r.layer, &r.ba);
    int ran = st == MHA_OK;
    if (st == MHA_UNSUPPORTED && !training_required(td))
        cr_log_info("%s: skipped on %s: %s", name, td->label,
                    mha_context_errmsg(ctx));
    else
        cr_expect_eq(st, MHA_OK, "%s on %s: %s", name, td->label,
                     mha_context_errmsg(ctx));
    if (ran) {
        const char *out = "out";
        check_tensor(fx, td->label, r.fa.output, out, 1.0,
                     group_scale(fx, &out, 1, 1.0));
        check_gradients(fx, td->label, &r, 1.0);
        check_input_gradients(fx, td->label, &r);
        if (r.ba.grad_head_gates) {
            const char *dg = "grad_head_gates";
            check_tensor(fx, td->label, r.ba.grad_head_gates, dg, 1.0,
                         group_scale(fx, &dg, 1, 1.0));
        }
    }
    teardown(&r);
    return ran;
}

/* fx on every device that can hold its layer in dtype (f16: fp16
 * storage, 1e-2; the fixture's f64 weights are rounded to f16 by the
 * layer), at least one of them when any can. */
static void run_fixture(const char *name, mha_dtype dtype)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    fixture fx;
    open_fixture(ctx, name, &fx);
    fx.cfg.dtype = dtype;
    fx.tol = dtype == MHA_F16 ? 1e-2 : 1e-4;
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0, can = 0;
    for (int i = 0; i < nd; i++) {
        if (!holds(ctx, &devs[i], &fx))
            continue;
        can++;
        ran += run_on(ctx, &devs[i], name, &fx);
    }
    mha_st_close(fx.f);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
    cr_assert(ran > 0 || (dtype == MHA_F16 && can == 0),
              "%s: no device ran it", name);
}

/* The cases tests/gen_backward_fixtures.py writes (its CASES). */
#define FIXTURES(X)                                                          \
    X(plain) X(causal) X(mask_f32_2d) X(mask_bool_3d) X(kpm) X(bias_kv)      \
    X(zero_attn_bias_kv) X(kdim_vdim) X(batch_first_bias_kv) X(unbatched)   \
    X(self_shared) X(masked_row) X(no_bias) X(large) X(everything)          \
    X(head_gates_2d) X(head_gates_1d)

#define DEFINE_FIXTURE_TEST(name)                                            \
    Test(backward, name) { run_fixture(#name, MHA_F32); }
FIXTURES(DEFINE_FIXTURE_TEST)

/* The same with an f16 layer (fp16 storage, fp32 math, f32 gradients):
 * the cases whose weight slots, layouts or gated output differ (every
 * case passes; each costs a process its kernels, seconds where Mesa's
 * shader cache is off). */
#define F16_FIXTURES(X)                                                      \
    X(everything) X(large) X(self_shared) X(no_bias) X(unbatched)          \
    X(masked_row) X(head_gates_2d) X(head_gates_1d)
#define DEFINE_F16_TEST(name)                                                \
    Test(backward_f16, name) { run_fixture(#name, MHA_F16); }
F16_FIXTURES(DEFINE_F16_TEST)

/* ---- on the CPU: accumulation, AdamW, bad calls --------------------------- */

typedef struct cpu_env {
    mha_context *ctx;
    fixture fx;
    run_env r;
} cpu_env;

static void cpu_setup(cpu_env *e, const char *name)
{
    cr_assert_eq(mha_context_create(NULL, &e->ctx), MHA_OK);
    open_fixture(e->ctx, name, &e->fx);
    test_device td = {"cpu", 0, NULL};
    mha_device_info info;
    int n = 0;
    cr_assert_eq(mha_device_count(e->ctx, &n), MHA_OK);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(mha_device_get_info(e->ctx, i, &info), MHA_OK);
        if (strcmp(info.backend, "cpu") == 0)
            td.index = i;
    }
    setup(&e->r, e->ctx, &td, &e->fx);
}

static void cpu_teardown(cpu_env *e)
{
    teardown(&e->r);
    mha_st_close(e->fx.f);
    cr_assert_eq(mha_context_destroy(e->ctx), MHA_OK);
}

Test(backward, accumulate_twice_is_double)
{
    cpu_env e;
    cpu_setup(&e, "bias_kv");
    cr_assert_eq(mha_layer_forward(e.r.layer, &e.r.fa), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    e.r.ba.accumulate = 0;
    cr_assert_eq(mha_layer_backward(e.r.layer, &e.r.ba), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    e.r.ba.accumulate = 1;
    cr_assert_eq(mha_layer_backward(e.r.layer, &e.r.ba), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    check_gradients(&e.fx, "cpu, accumulated twice", &e.r, 2.0);
    /* input gradients are written, not accumulated */
    check_input_gradients(&e.fx, "cpu, second backward", &e.r);
    cr_assert_eq(mha_gradients_zero(e.r.grads), MHA_OK);
    cr_assert_eq(mha_layer_backward(e.r.layer, &e.r.ba), MHA_OK);
    check_gradients(&e.fx, "cpu, zeroed then accumulated", &e.r, 1.0);
    cpu_teardown(&e);
}

Test(backward, adamw_matches_torch)
{
    cpu_env e;
    cpu_setup(&e, "adamw");
    mha_adamw_config c;
    mha_adamw_config_init(&c);
    c.beta1 = (float)fixture_meta(e.fx.f, "beta1");
    c.beta2 = (float)fixture_meta(e.fx.f, "beta2");
    c.eps = (float)fixture_meta(e.fx.f, "eps");
    c.weight_decay = (float)fixture_meta(e.fx.f, "weight_decay");
    mha_adamw *opt = NULL;
    cr_assert_eq(mha_adamw_create(e.r.layer, &c, &opt), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    size_t steps;
    double *lrs = fixture_doubles(&e.fx, "lrs", &steps);
    for (size_t t = 0; t < steps; t++) {
        cr_assert_eq(mha_layer_forward(e.r.layer, &e.r.fa), MHA_OK, "%s",
                     mha_context_errmsg(e.ctx));
        cr_assert_eq(mha_layer_backward(e.r.layer, &e.r.ba), MHA_OK, "%s",
                     mha_context_errmsg(e.ctx));
        cr_assert_eq(mha_adamw_step(opt, e.r.grads, (float)lrs[t]), MHA_OK,
                     "%s", mha_context_errmsg(e.ctx));
    }
    cr_expect_eq(mha_adamw_steps(opt), (int64_t)steps);
    /* the final weights, through a save and the fixture's own names */
    char dir[256], path[512];
    test_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/final.safetensors", dir);
    cr_assert_eq(mha_layer_save_safetensors(e.r.layer, path, NULL), MHA_OK,
                 "%s", mha_context_errmsg(e.ctx));
    mha_st_file *saved;
    cr_assert_eq(mha_st_open(&e.ctx->host, path, &saved), MHA_OK);
    int compared = 0;
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        float *got = fixture_floats(saved, weight_names[i], NULL, NULL);
        if (!got)
            continue;
        char name[64];
        snprintf(name, sizeof name, "final.%s", weight_names[i]);
        size_t n;
        double *want = fixture_doubles(&e.fx, name, &n);
        double worst = 0.0;
        for (size_t k = 0; k < n; k++)
            worst = fmax(worst, fabs(got[k] - want[k]));
        cr_expect_leq(worst, 1e-5, "%s after %zu AdamW steps: error %g",
                      weight_names[i], steps, worst);
        compared++;
        free(got);
        free(want);
    }
    cr_expect_eq(compared, 6);
    mha_st_close(saved);
    test_remove_tree(dir);
    free(lrs);
    cr_assert_eq(mha_adamw_destroy(opt), MHA_OK);
    cpu_teardown(&e);
}

static void expect_error(cpu_env *e, mha_status got, mha_status want,
                         const char *needle)
{
    const char *msg = mha_context_errmsg(e->ctx);
    cr_expect_eq(got, want, "status %s, want %s: %s", mha_status_str(got),
                 mha_status_str(want), msg);
    cr_expect(strstr(msg, needle) != NULL, "message \"%s\" lacks \"%s\"",
              msg, needle);
}

Test(backward, without_training_forward)
{
    cpu_env e;
    cpu_setup(&e, "plain");
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba), MHA_BAD_STATE,
                 "no training forward");
    e.r.fa.save_for_backward = 0; /* an ordinary forward saves nothing */
    cr_assert_eq(mha_layer_forward(e.r.layer, &e.r.fa), MHA_OK);
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba), MHA_BAD_STATE,
                 "save_for_backward");
    cpu_teardown(&e);
}

Test(backward, weights_changed_since_forward)
{
    cpu_env e;
    cpu_setup(&e, "plain");
    cr_assert_eq(mha_layer_forward(e.r.layer, &e.r.fa), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    cr_assert_eq(mha_layer_load_safetensors(e.r.layer, e.fx.path, NULL),
                 MHA_OK);
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba), MHA_BAD_STATE,
                 "weights changed");
    cr_assert_eq(mha_layer_forward(e.r.layer, &e.r.fa), MHA_OK);
    cr_expect_eq(mha_layer_backward(e.r.layer, &e.r.ba), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    cpu_teardown(&e);
}

/* Gradient tensors of the wrong shape, without gates, or written over an
 * input that the backward still reads (the weight gradients were off by
 * up to half their size, with MHA_OK). */
Test(backward, bad_gradient_tensors_are_refused)
{
    cpu_env e;
    cpu_setup(&e, "plain");
    cr_assert_eq(mha_layer_forward(e.r.layer, &e.r.fa), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    e.r.ba.grad_output = e.r.fa.key; /* (S, N, E): S != L */
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba),
                 MHA_SHAPE_MISMATCH, "grad_output has shape");
    e.r.ba.grad_output = e.r.fa.output;
    e.r.ba.grad_key = e.r.ba.grad_query;
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba),
                 MHA_SHAPE_MISMATCH, "grad_key");
    e.r.ba.grad_key = NULL;
    e.r.ba.grad_head_gates = e.r.ba.grad_query; /* no gates in that forward */
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba),
                 MHA_INVALID_ARGUMENT, "no head_gates");
    e.r.ba.grad_head_gates = NULL;
    mha_tensor *dq = e.r.ba.grad_query;
    e.r.ba.grad_query = (mha_tensor *)e.r.fa.query;
    expect_error(&e, mha_layer_backward(e.r.layer, &e.r.ba),
                 MHA_INVALID_ARGUMENT, "grad_query shares memory with query");
    e.r.ba.grad_query = dq;
    cr_assert_eq(mha_layer_backward(e.r.layer, &e.r.ba), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    cpu_teardown(&e);
}

Test(backward, unsupported_options)
{
    cpu_env e;
    cpu_setup(&e, "plain");
    mha_tensor *w = NULL;
    int64_t ws[3] = {2, 3, 4};
    cr_assert_eq(mha_tensor_create(e.r.dev, MHA_F32, 3, ws, &w), MHA_OK);
    keep(&e.r, w);
    e.r.fa.need_weights = 1;
    e.r.fa.weights = w;
    expect_error(&e, mha_layer_forward(e.r.layer, &e.r.fa), MHA_UNSUPPORTED,
                 "need_weights");
    cpu_teardown(&e);
}

Test(backward, adamw_bad_config)
{
    cpu_env e;
    cpu_setup(&e, "plain");
    mha_adamw_config c;
    mha_adamw_config_init(&c);
    c.beta2 = 1.0f;
    mha_adamw *opt = NULL;
    expect_error(&e, mha_adamw_create(e.r.layer, &c, &opt),
                 MHA_INVALID_ARGUMENT, "beta2");
    cr_expect_null(opt);
    cr_assert_eq(mha_adamw_create(e.r.layer, NULL, &opt), MHA_OK);
    expect_error(&e, mha_adamw_step(opt, e.r.grads, -1.0f),
                 MHA_INVALID_ARGUMENT, "lr");
    cr_assert_eq(mha_adamw_destroy(opt), MHA_OK);
    const mha_tensor *g;
    expect_error(&e, mha_gradients_get(e.r.grads, "q_proj_weight", &g),
                 MHA_INVALID_ARGUMENT, "not a weight of this layer");
    cpu_teardown(&e);
}

/* ---- f16 layers: AdamW on the f32 master ---------------------------------- */

/* The weights of r's layer by state_dict name, through a save (f16 values
 * of an f16 layer), as doubles into w (NULL where the layer has none). */
static void read_weights(run_env *r, double *w[WEIGHT_NAMES],
                         size_t n[WEIGHT_NAMES])
{
    char dir[256], path[512];
    test_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    cr_assert_eq(mha_layer_save_safetensors(r->layer, path, NULL), MHA_OK,
                 "%s", mha_context_errmsg(r->ctx));
    mha_st_file *f;
    cr_assert_eq(mha_st_open(&r->ctx->host, path, &f), MHA_OK);
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        const mha_st_entry *e = mha_st_find(f, weight_names[i]);
        float *x = fixture_floats(f, weight_names[i], NULL, NULL);
        w[i] = NULL;
        n[i] = e ? e->count : 0;
        if (!x)
            continue;
        w[i] = malloc(n[i] * sizeof *w[i]);
        for (size_t k = 0; k < n[i]; k++)
            w[i][k] = x[k];
        free(x);
    }
    mha_st_close(f);
    test_remove_tree(dir);
}

/* torch.optim.AdamW's step t on the host, in double, over the master p
 * and its m, v, with the gradients r's backward left on the device (f32,
 * whatever the layer's dtype). */
typedef struct host_adamw {
    double *p[WEIGHT_NAMES], *m[WEIGHT_NAMES], *v[WEIGHT_NAMES];
    size_t n[WEIGHT_NAMES];
} host_adamw;

static void host_step(host_adamw *h, const run_env *r,
                      const mha_adamw_config *c, int t, double lr)
{
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        const mha_tensor *gt;
        if (!h->p[i] ||
            mha_gradients_get(r->grads, weight_names[i], &gt) != MHA_OK)
            continue;
        mha_dtype dt;
        cr_assert_eq(mha_tensor_get_shape(gt, &dt, NULL, NULL), MHA_OK);
        cr_assert_eq(dt, MHA_F32, "%s: gradients are f32", weight_names[i]);
        float *g = malloc(h->n[i] * sizeof *g);
        cr_assert_eq(mha_tensor_download(gt, g, h->n[i] * 4), MHA_OK);
        for (size_t k = 0; k < h->n[i]; k++) {
            double *p = &h->p[i][k], *m = &h->m[i][k], *v = &h->v[i][k];
            *p *= 1.0 - lr * c->weight_decay;
            *m = c->beta1 * *m + (1.0 - c->beta1) * g[k];
            *v = c->beta2 * *v + (1.0 - c->beta2) * (double)g[k] * g[k];
            *p -= lr / bc1 * *m / (sqrt(*v) / sqrt(bc2) + c->eps);
        }
        free(g);
    }
}

/* The layer's f16 weights are the host master rounded: within one f16
 * step (2^-10 relative; 2^-24 near 0). */
static void expect_rounded_master(run_env *r, const host_adamw *h,
                                  const char *label, int steps)
{
    double *w[WEIGHT_NAMES];
    size_t n[WEIGHT_NAMES];
    read_weights(r, w, n);
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        if (!w[i])
            continue;
        double worst = 0.0;
        for (size_t k = 0; k < n[i]; k++) {
            double p = h->p[i][k];
            worst = fmax(worst, fabs(w[i][k] - p) /
                                    (fabs(p) * 0x1p-10 + 0x1p-24));
        }
        cr_expect_leq(worst, 1.0,
                      "%s on %s after %d steps: %g f16 steps from the master",
                      weight_names[i], label, steps, worst);
        free(w[i]);
    }
}

static void train_step(run_env *r, mha_adamw *opt, float lr)
{
    cr_assert_eq(mha_layer_forward(r->layer, &r->fa), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    cr_assert_eq(mha_layer_backward(r->layer, &r->ba), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    cr_assert_eq(mha_adamw_step(opt, r->grads, lr), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
}

/* Steps of lr 1e-4 move a weight near 0.3 by less than half its f16 step
 * (2.4e-4): an optimizer without the f32 master would lose them. Then
 * weights loaded between steps are what the next step starts from. First
 * the bad calls an f16 layer refuses as an f32 one does. */
static void adamw_f16_on(mha_context *ctx, const test_device *td,
                         fixture *fx)
{
    enum { STEPS = 8 };
    const float lr = 1e-4f;
    run_env r;
    setup(&r, ctx, td, fx);
    /* what an f16 layer still refuses, as an f32 one */
    cr_expect_eq(mha_layer_backward(r.layer, &r.ba), MHA_BAD_STATE, "%s",
                 mha_context_errmsg(ctx));
    r.fa.need_weights = 1, r.fa.weights = r.fa.output;
    cr_expect_eq(mha_layer_forward(r.layer, &r.fa), MHA_UNSUPPORTED, "%s",
                 mha_context_errmsg(ctx));
    cr_expect(strstr(mha_context_errmsg(ctx), "need_weights"), "%s",
              mha_context_errmsg(ctx));
    r.fa.need_weights = 0, r.fa.weights = NULL;
    mha_adamw_config c;
    mha_adamw_config_init(&c);
    mha_adamw *opt = NULL;
    cr_assert_eq(mha_adamw_create(r.layer, &c, &opt), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    host_adamw h;
    read_weights(&r, h.p, h.n);
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        h.m[i] = calloc(h.n[i] + 1, sizeof(double));
        h.v[i] = calloc(h.n[i] + 1, sizeof(double));
    }
    for (int t = 1; t <= STEPS; t++) {
        train_step(&r, opt, lr);
        host_step(&h, &r, &c, t, lr);
    }
    expect_rounded_master(&r, &h, td->label, STEPS);
    cr_assert_eq(mha_layer_load_safetensors(r.layer, fx->path, NULL),
                 MHA_OK);
    for (size_t i = 0; i < WEIGHT_NAMES; i++)
        free(h.p[i]);
    read_weights(&r, h.p, h.n);
    train_step(&r, opt, lr);
    host_step(&h, &r, &c, STEPS + 1, lr);
    expect_rounded_master(&r, &h, td->label, STEPS + 1);
    for (size_t i = 0; i < WEIGHT_NAMES; i++) {
        free(h.p[i]);
        free(h.m[i]);
        free(h.v[i]);
    }
    cr_assert_eq(mha_adamw_destroy(opt), MHA_OK);
    teardown(&r);
}

Test(backward_f16, adamw_steps_the_f32_master)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    fixture fx;
    open_fixture(ctx, "adamw", &fx);
    fx.cfg.dtype = MHA_F16;
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++)
        if (holds(ctx, &devs[i], &fx))
            adamw_f16_on(ctx, &devs[i], &fx);
    mha_st_close(fx.f);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}
