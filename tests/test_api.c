/* test_api.c: the public API's contract on bad input and its documented
 * choices, on the cpu device. Tables of bad values (layer configs, device
 * specs, forward shapes and dtypes, weight names and shapes, tensors) each
 * check the exact mha_status, that the context's message names the bad
 * value, that outputs stay untouched and that the layer still runs after
 * the error; then NULL handling, device listing, device tensors, and the
 * fully-masked-row and NaN semantics mha.h promises. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mha.h"

/* ---- helpers ------------------------------------------------------------- */

#define CAP 512       /* floats per test array, more than any case needs */
#define SENTINEL 12345.0f

typedef struct fx {
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
    mha_layer_config cfg; /* kdim and vdim resolved */
} fx;

/* Deterministic values in [-0.5, 0.5), multiples of 1/1024. */
static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 12) % 1024) / 1024.0f - 0.5f;
    }
}

static int contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

static mha_context *new_context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    cr_assert_not_null(ctx);
    return ctx;
}

static mha_device *open_cpu(mha_context *ctx)
{
    mha_device *dev = NULL;
    mha_status st = mha_device_open(ctx, "cpu", NULL, &dev);
    cr_assert_eq(st, MHA_OK, "opening cpu: %s", mha_context_errmsg(ctx));
    return dev;
}

/* Sets one weight from deterministic data; name's shape given. */
static void set_weight(mha_layer *layer, const char *name, int ndim,
                       int64_t d0, int64_t d1, int64_t d2, unsigned seed)
{
    static float data[3 * 64 * 64];
    int64_t shape[3] = {d0, d1, d2};
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    cr_assert_leq(n, sizeof data / sizeof *data);
    fill(data, n, seed);
    cr_assert_eq(mha_layer_set_weight(layer, name, data, ndim, shape), MHA_OK,
                 "set_weight %s failed", name);
}

/* Sets every weight the config needs; skip names one to leave unset. */
static void set_weights_except(mha_layer *layer, const mha_layer_config *c,
                               const char *skip)
{
    int64_t E = c->embed_dim;
    int self = c->kdim == E && c->vdim == E;
    struct {
        const char *name;
        int use, ndim;
        int64_t d0, d1, d2;
    } w[] = {
        {"in_proj_weight", self, 2, 3 * E, E, 0},
        {"q_proj_weight", !self, 2, E, E, 0},
        {"k_proj_weight", !self, 2, E, c->kdim, 0},
        {"v_proj_weight", !self, 2, E, c->vdim, 0},
        {"in_proj_bias", c->bias, 1, 3 * E, 0, 0},
        {"out_proj.weight", 1, 2, E, E, 0},
        {"out_proj.bias", c->bias, 1, E, 0, 0},
        {"bias_k", c->add_bias_kv, 3, 1, 1, E},
        {"bias_v", c->add_bias_kv, 3, 1, 1, E},
    };
    for (size_t i = 0; i < sizeof w / sizeof *w; i++)
        if (w[i].use && (!skip || strcmp(skip, w[i].name) != 0))
            set_weight(layer, w[i].name, w[i].ndim, w[i].d0, w[i].d1, w[i].d2,
                       (unsigned)(i + 1) * 7919u);
}

static void fx_init_cfg(fx *f, const mha_layer_config *cfg, int weights)
{
    f->ctx = new_context();
    f->dev = open_cpu(f->ctx);
    f->cfg = *cfg;
    if (!f->cfg.kdim)
        f->cfg.kdim = cfg->embed_dim;
    if (!f->cfg.vdim)
        f->cfg.vdim = cfg->embed_dim;
    mha_status st = mha_layer_create(f->dev, cfg, &f->layer);
    cr_assert_eq(st, MHA_OK, "layer_create: %s", mha_context_errmsg(f->ctx));
    if (weights)
        set_weights_except(f->layer, &f->cfg, NULL);
}

/* A layer with E = 8, H = 2 and the given kdim/vdim (0: E), weights set. */
static void fx_init(fx *f, int64_t kdim, int64_t vdim)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 8, 2);
    cfg.kdim = kdim;
    cfg.vdim = vdim;
    fx_init_cfg(f, &cfg, 1);
}

static void fx_fini(fx *f)
{
    cr_assert_eq(mha_layer_destroy(f->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(f->dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(f->ctx), MHA_OK);
}

/* Host arrays of one forward: L = 3, S = 4, N = 2, (L, N, E) layout. */
enum { L_ = 3, S_ = 4, N_ = 2 };

typedef struct io {
    float q[CAP], k[CAP], v[CAP], mask[CAP], out[CAP], w[CAP];
    uint8_t kpm[CAP];
    mha_host_forward_args a;
} io;

static void set_array(mha_host_array *a, const void *data, mha_dtype dtype,
                      int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    a->data = data;
    a->dtype = dtype;
    a->ndim = ndim;
    a->shape[0] = d0;
    a->shape[1] = d1;
    a->shape[2] = d2;
    a->shape[3] = 0;
}

/* Valid arguments for f's layer; need_weights with averaged weights. */
static void io_init(io *o, const fx *f)
{
    memset(o, 0, sizeof *o);
    fill(o->q, CAP, 11);
    fill(o->k, CAP, 22);
    fill(o->v, CAP, 33);
    for (int i = 0; i < CAP; i++)
        o->out[i] = o->w[i] = SENTINEL;
    mha_host_forward_args_init(&o->a);
    set_array(&o->a.query, o->q, MHA_F32, 3, L_, N_, f->cfg.embed_dim);
    set_array(&o->a.key, o->k, MHA_F32, 3, S_, N_, f->cfg.kdim);
    set_array(&o->a.value, o->v, MHA_F32, 3, S_, N_, f->cfg.vdim);
    o->a.need_weights = 1;
    o->a.output = o->out;
    o->a.output_count = (size_t)(L_ * N_ * f->cfg.embed_dim);
    o->a.weights = o->w;
    o->a.weights_count = CAP; /* S' may exceed S (bias_kv) */
}

/* The "context still works after an error" check: a valid forward on the
 * same layer succeeds and fills the output. */
static void expect_forward_ok(fx *f, const char *after)
{
    static io o;
    io_init(&o, f);
    mha_status st = mha_layer_forward_host(f->layer, &o.a);
    cr_expect_eq(st, MHA_OK, "forward after %s: %s (%s)", after,
                 mha_status_str(st), mha_context_errmsg(f->ctx));
    cr_expect_str_empty(mha_context_errmsg(f->ctx),
                        "errmsg after a good call following %s", after);
    cr_expect_neq(o.out[0], SENTINEL, "output written after %s", after);
}

/* Checks status and that the message holds every needle (NULL ends). */
static void expect_error(mha_context *ctx, const char *name, mha_status got,
                         mha_status want, const char *const *needles,
                         int count)
{
    const char *msg = mha_context_errmsg(ctx);
    cr_expect_eq(got, want, "case \"%s\": status %s, expected %s; msg: %s",
                 name, mha_status_str(got), mha_status_str(want), msg);
    for (int i = 0; i < count && needles[i]; i++)
        cr_expect(contains(msg, needles[i]),
                  "case \"%s\": message \"%s\" does not name \"%s\"", name,
                  msg, needles[i]);
}

/* ---- version and statuses ------------------------------------------------ */

Test(api, version_matches_header_macro)
{
    cr_assert_str_eq(mha_version(), MHA_VERSION_STRING);
}

Test(api, status_strings_are_nonempty_and_distinct)
{
    for (int i = 0; i < MHA_STATUS_COUNT; i++) {
        const char *s = mha_status_str((mha_status)i);
        cr_assert_not_null(s, "status %d", i);
        cr_expect_gt(strlen(s), 0, "status %d has an empty string", i);
        for (int j = 0; j < i; j++)
            cr_expect_str_neq(s, mha_status_str((mha_status)j),
                              "statuses %d and %d share \"%s\"", i, j, s);
    }
}

Test(api, status_str_of_out_of_range_value_is_not_null)
{
    int bad[] = {MHA_STATUS_COUNT, MHA_STATUS_COUNT + 1, 1000, -1, -1000};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *s = mha_status_str((mha_status)bad[i]);
        cr_assert_not_null(s, "status %d", bad[i]);
        cr_expect_gt(strlen(s), 0, "status %d", bad[i]);
    }
}

/* ---- NULL pointers and destroy(NULL) ------------------------------------- */

Test(api, destroy_null_is_ok_for_every_destroy)
{
    cr_expect_eq(mha_context_destroy(NULL), MHA_OK);
    cr_expect_eq(mha_device_destroy(NULL), MHA_OK);
    cr_expect_eq(mha_layer_destroy(NULL), MHA_OK);
    cr_expect_eq(mha_tensor_destroy(NULL), MHA_OK);
}

Test(api, null_handles_and_out_pointers_are_invalid_argument)
{
    const mha_status I = MHA_INVALID_ARGUMENT;
    mha_context *ctx = NULL;
    int count = 0;
    mha_device_info info;
    float data[4] = {0};
    int64_t shape[2] = {2, 2};
    mha_layer_config cfg;
    mha_forward_args fa;
    mha_host_forward_args ha;
    size_t n1, n2;
    mha_layer_config_init(&cfg, 8, 2);
    mha_forward_args_init(&fa);
    mha_host_forward_args_init(&ha);

    cr_expect_eq(mha_context_options_init((mha_context_options *)NULL), I);
    cr_expect_eq(mha_device_options_init((mha_device_options *)NULL), I);
    cr_expect_eq(mha_layer_config_init((mha_layer_config *)NULL, 8, 2), I);
    cr_expect_eq(mha_forward_args_init((mha_forward_args *)NULL), I);
    cr_expect_eq(mha_host_forward_args_init((mha_host_forward_args *)NULL), I);
    cr_expect_eq(mha_context_create(NULL, NULL), I);
    cr_expect_not_null(mha_context_errmsg(NULL));
    cr_expect_eq(mha_device_count(NULL, &count), I);
    cr_expect_eq(mha_device_get_info(NULL, 0, &info), I);
    cr_expect_eq(mha_device_open(NULL, "cpu", NULL, NULL), I);
    cr_expect_eq(mha_device_open_index(NULL, 0, NULL, NULL), I);
    cr_expect_eq(mha_device_info_of(NULL, &info), I);
    cr_expect_eq(mha_tensor_create(NULL, MHA_F32, 2, shape, NULL), I);
    cr_expect_eq(mha_tensor_upload(NULL, data, sizeof data), I);
    cr_expect_eq(mha_tensor_download(NULL, data, sizeof data), I);
    cr_expect_eq(mha_tensor_get_shape(NULL, NULL, NULL, NULL), I);
    cr_expect_eq(mha_layer_create(NULL, &cfg, NULL), I);
    cr_expect_eq(mha_layer_set_weight(NULL, "out_proj.bias", data, 1, shape),
                 I);
    cr_expect_eq(mha_layer_load_safetensors(NULL, "x.safetensors", NULL), I);
    cr_expect_eq(mha_layer_forward(NULL, &fa), I);
    cr_expect_eq(mha_layer_forward_host(NULL, &ha), I);
    cr_expect_eq(mha_layer_output_size(NULL, &ha, &n1, &n2), I);

    ctx = new_context();
    cr_expect_eq(mha_device_count(ctx, NULL), I);
    cr_expect_eq(mha_device_get_info(ctx, 0, NULL), I);
    cr_expect_eq(mha_device_open(ctx, "cpu", NULL, NULL), I);
    cr_expect_eq(mha_device_open_index(ctx, 0, NULL, NULL), I);
    mha_device *dev = open_cpu(ctx);
    mha_tensor *t = NULL;
    mha_layer *layer = NULL;
    cr_expect_eq(mha_device_info_of(dev, NULL), I);
    cr_expect_eq(mha_tensor_create(dev, MHA_F32, 2, shape, NULL), I);
    cr_expect_eq(mha_tensor_create(dev, MHA_F32, 2, NULL, &t), I);
    cr_expect_null(t, "out written on failure");
    cr_expect_eq(mha_layer_create(dev, NULL, &layer), I);
    cr_expect(contains(mha_context_errmsg(ctx), "config"));
    cr_expect_eq(mha_layer_create(dev, &cfg, NULL), I);
    cr_expect(contains(mha_context_errmsg(ctx), "out"));
    cr_expect_null(layer);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, null_data_names_and_args_on_a_live_layer_are_invalid_argument)
{
    fx f;
    fx_init(&f, 0, 0);
    const mha_status I = MHA_INVALID_ARGUMENT;
    float data[8] = {0};
    int64_t shape[1] = {8};
    size_t n1, n2;
    static io o;
    io_init(&o, &f);
    struct {
        const char *name;
        mha_status got;
        const char *needle;
    } c[] = {
        {"set_weight name NULL",
         mha_layer_set_weight(f.layer, NULL, data, 1, shape), "name"},
        {"set_weight data NULL",
         mha_layer_set_weight(f.layer, "out_proj.bias", NULL, 1, shape),
         "data"},
        {"set_weight shape NULL",
         mha_layer_set_weight(f.layer, "out_proj.bias", data, 1, NULL),
         "shape"},
        {"load path NULL", mha_layer_load_safetensors(f.layer, NULL, NULL),
         "path"},
        {"forward args NULL", mha_layer_forward(f.layer, NULL), "args"},
        {"forward_host args NULL", mha_layer_forward_host(f.layer, NULL),
         "args"},
        {"output_size args NULL",
         mha_layer_output_size(f.layer, NULL, &n1, &n2), "NULL"},
        {"output_size counts NULL",
         mha_layer_output_size(f.layer, &o.a, NULL, NULL), "NULL"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        cr_expect_eq(c[i].got, I, "case \"%s\": %s", c[i].name,
                     mha_status_str(c[i].got));
    }
    /* each message names its argument: rerun one at a time */
    cr_expect_eq(mha_layer_set_weight(f.layer, NULL, data, 1, shape), I);
    cr_expect(contains(mha_context_errmsg(f.ctx), "name"));
    cr_expect_eq(mha_layer_set_weight(f.layer, "out_proj.bias", NULL, 1,
                                      shape), I);
    cr_expect(contains(mha_context_errmsg(f.ctx), "data"));
    cr_expect_eq(mha_layer_load_safetensors(f.layer, NULL, "p."), I);
    cr_expect(contains(mha_context_errmsg(f.ctx), "path"));
    expect_forward_ok(&f, "NULL arguments");
    fx_fini(&f);
}

Test(api, output_size_reports_output_and_weight_counts)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    io_init(&o, &f);
    size_t n_out = 0, n_w = 0;
    cr_assert_eq(mha_layer_output_size(f.layer, &o.a, &n_out, &n_w), MHA_OK);
    cr_expect_eq(n_out, (size_t)(L_ * N_ * 8));
    cr_expect_eq(n_w, (size_t)(N_ * L_ * S_));
    o.a.average_attn_weights = 0;
    cr_assert_eq(mha_layer_output_size(f.layer, &o.a, &n_out, &n_w), MHA_OK);
    cr_expect_eq(n_w, (size_t)(N_ * 2 * L_ * S_));
    o.a.need_weights = 0;
    cr_assert_eq(mha_layer_output_size(f.layer, &o.a, &n_out, &n_w), MHA_OK);
    cr_expect_eq(n_w, 0);
    fx_fini(&f);
}

/* ---- context options ----------------------------------------------------- */

static void *bad_malloc(void *user, size_t size)
{
    (void)user;
    return malloc(size);
}

Test(api, context_options_table)
{
    mha_allocator no_free = {bad_malloc, NULL, NULL};
    struct {
        const char *name;
        const mha_allocator *alloc;
        int level;
        mha_status want;
    } c[] = {
        {"allocator without free", &no_free, MHA_LOG_WARN,
         MHA_INVALID_ARGUMENT},
        {"log level 9", NULL, 9, MHA_INVALID_ARGUMENT},
        {"log level -1", NULL, -1, MHA_INVALID_ARGUMENT},
        {"defaults", NULL, MHA_LOG_WARN, MHA_OK},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_context_options o;
        mha_context_options_init(&o);
        o.allocator = c[i].alloc;
        o.log_level = (mha_log_level)c[i].level;
        mha_context *ctx = NULL;
        mha_status st = mha_context_create(&o, &ctx);
        cr_expect_eq(st, c[i].want, "case \"%s\": %s", c[i].name,
                     mha_status_str(st));
        if (st == MHA_OK)
            cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
        else
            cr_expect_null(ctx, "case \"%s\": out written on failure",
                           c[i].name);
    }
}

/* ---- layer configs ------------------------------------------------------- */

typedef struct config_case {
    const char *name;
    int64_t E, H, kdim, vdim;
    float dropout;
    int dtype;
    mha_status want;
    const char *needle[3];
} config_case;

static const config_case config_cases[] = {
    {"embed_dim 0", 0, 1, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"embed_dim", "0"}},
    {"embed_dim -4", -4, 2, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"embed_dim", "-4"}},
    {"num_heads 0", 8, 0, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"num_heads", "0"}},
    {"num_heads -2", 8, -2, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"num_heads", "-2"}},
    {"kdim -1", 8, 2, -1, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"kdim", "-1"}},
    {"vdim -3", 8, 2, 0, -3, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"vdim", "-3"}},
    {"513 not divisible by 8", 513, 8, 0, 0, 0, MHA_F32,
     MHA_INVALID_ARGUMENT, {"513", "8", "divisible"}},
    {"10 not divisible by 4", 10, 4, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"10", "4"}},
    {"num_heads larger than embed_dim", 4, 8, 0, 0, 0, MHA_F32,
     MHA_INVALID_ARGUMENT, {"4", "8"}},
    {"embed_dim 2^40 overflows", (int64_t)1 << 40, 1, 0, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"embed_dim", "1099511627776"}},
    {"embed_dim INT64_MAX overflows", INT64_MAX, 1, 0, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"embed_dim", "9223372036854775807"}},
    {"num_heads 2^40 overflows", 8, (int64_t)1 << 40, 0, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"num_heads", "1099511627776"}},
    {"kdim 2^62 overflows", 8, 2, (int64_t)1 << 62, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"kdim", "4611686018427387904"}},
    {"vdim 2^33 overflows", 8, 2, 0, (int64_t)1 << 33, 0, MHA_F32,
     MHA_OVERFLOW, {"vdim", "8589934592"}},
    {"dropout 0.1", 8, 2, 0, 0, 0.1f, MHA_F32, MHA_UNSUPPORTED,
     {"dropout", "0.1"}},
    {"dropout -0.5", 8, 2, 0, 0, -0.5f, MHA_F32, MHA_UNSUPPORTED,
     {"dropout", "-0.5"}},
    {"dropout NaN", 8, 2, 0, 0, NAN, MHA_F32, MHA_UNSUPPORTED,
     {"dropout", "nan"}},
    {"f16 on the cpu device", 8, 2, 0, 0, 0, MHA_F16, MHA_UNSUPPORTED,
     {"f16", "cpu"}},
    {"dtype bool", 8, 2, 0, 0, 0, MHA_BOOL, MHA_DTYPE_MISMATCH,
     {"dtype", "bool"}},
    {"dtype 7 is not a mha_dtype", 8, 2, 0, 0, 0, 7, MHA_DTYPE_MISMATCH,
     {"dtype", "7"}},
};

Test(api, bad_layer_configs_table)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    for (size_t i = 0; i < sizeof config_cases / sizeof *config_cases; i++) {
        const config_case *c = &config_cases[i];
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, c->E, c->H);
        cfg.kdim = c->kdim;
        cfg.vdim = c->vdim;
        cfg.dropout = c->dropout;
        cfg.dtype = (mha_dtype)c->dtype;
        mha_layer *layer = NULL;
        mha_status st = mha_layer_create(dev, &cfg, &layer);
        expect_error(ctx, c->name, st, c->want, c->needle, 3);
        cr_expect_null(layer, "case \"%s\": out written on failure",
                       c->name);
        if (st == MHA_OK)
            mha_layer_destroy(layer);
    }
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, good_layer_configs_are_accepted)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    int64_t ok[][4] = {{1, 1, 0, 0}, {8, 8, 0, 0}, {16, 2, 3, 5},
                       {512, 8, 0, 0}, {12, 3, 12, 7}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, ok[i][0], ok[i][1]);
        cfg.kdim = ok[i][2];
        cfg.vdim = ok[i][3];
        mha_layer *layer = NULL;
        cr_expect_eq(mha_layer_create(dev, &cfg, &layer), MHA_OK,
                     "E=%lld H=%lld: %s", (long long)ok[i][0],
                     (long long)ok[i][1], mha_context_errmsg(ctx));
        cr_expect_eq(mha_layer_destroy(layer), MHA_OK);
    }
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

/* ---- device specs and listing -------------------------------------------- */

typedef struct spec_case {
    const char *spec;
    int via_env;   /* MHA_DEVICE instead of the spec argument */
    mha_status want;
} spec_case;

static const spec_case spec_cases[] = {
    {"gpu", 0, MHA_INVALID_ARGUMENT},
    {"vulkan:x", 0, MHA_INVALID_ARGUMENT},
    {"cpu:7", 0, MHA_NO_DEVICE},
    {":", 0, MHA_INVALID_ARGUMENT},
    {"", 0, MHA_INVALID_ARGUMENT},
    {"cpu:-1", 0, MHA_INVALID_ARGUMENT},
    {"cpu:99999999999", 0, MHA_INVALID_ARGUMENT},
    {"cpu:", 0, MHA_INVALID_ARGUMENT},
    {"cpu:0x", 0, MHA_INVALID_ARGUMENT},
    {"cpu:1", 0, MHA_NO_DEVICE},
    {"a-very-long-backend-name-that-overflows-a-name-buffer:0", 0,
     MHA_INVALID_ARGUMENT},
    {"gpu", 1, MHA_INVALID_ARGUMENT},
    {"vulkan:x", 1, MHA_INVALID_ARGUMENT},
    {"cpu:7", 1, MHA_NO_DEVICE},
    {":", 1, MHA_INVALID_ARGUMENT},
    {"cpu:-1", 1, MHA_INVALID_ARGUMENT},
    {"cpu:99999999999", 1, MHA_INVALID_ARGUMENT},
};

Test(api, bad_device_specs_table)
{
    mha_context *ctx = new_context();
    for (size_t i = 0; i < sizeof spec_cases / sizeof *spec_cases; i++) {
        const spec_case *c = &spec_cases[i];
        char name[96];
        snprintf(name, sizeof name, "%s \"%s\"",
                 c->via_env ? "MHA_DEVICE" : "spec", c->spec);
        if (c->via_env)
            cr_assert_eq(setenv("MHA_DEVICE", c->spec, 1), 0);
        else
            unsetenv("MHA_DEVICE");
        mha_device *dev = NULL;
        mha_status st = mha_device_open(ctx, c->via_env ? NULL : c->spec,
                                        NULL, &dev);
        char quoted[96];
        snprintf(quoted, sizeof quoted, "\"%s\"", c->spec);
        const char *needles[2] = {quoted, c->via_env ? "MHA_DEVICE" : NULL};
        expect_error(ctx, name, st, c->want, needles, 2);
        cr_expect_null(dev, "%s: out written on failure", name);
        if (st == MHA_OK)
            mha_device_destroy(dev);
    }
    unsetenv("MHA_DEVICE");
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, good_device_specs_open_the_cpu)
{
    mha_context *ctx = new_context();
    const char *good[] = {"cpu", "cpu:0", "best"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        mha_device *dev = NULL;
        cr_expect_eq(mha_device_open(ctx, good[i], NULL, &dev), MHA_OK,
                     "spec %s: %s", good[i], mha_context_errmsg(ctx));
        cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    }
    cr_assert_eq(setenv("MHA_DEVICE", "cpu:0", 1), 0);
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, NULL, NULL, &dev), MHA_OK,
                 "MHA_DEVICE=cpu:0: %s", mha_context_errmsg(ctx));
    mha_device_info info;
    cr_assert_eq(mha_device_info_of(dev, &info), MHA_OK);
    cr_expect_str_eq(info.backend, "cpu");
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    /* an empty MHA_DEVICE counts as unset: the default device opens */
    cr_assert_eq(setenv("MHA_DEVICE", "", 1), 0);
    dev = NULL;
    cr_expect_eq(mha_device_open(ctx, NULL, NULL, &dev), MHA_OK,
                 "MHA_DEVICE=\"\": %s", mha_context_errmsg(ctx));
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, explicit_spec_wins_over_mha_device)
{
    mha_context *ctx = new_context();
    cr_assert_eq(setenv("MHA_DEVICE", "gpu", 1), 0);
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

typedef struct isa_case {
    const char *isa;
    int via_env; /* MHA_CPU_ISA instead of options.cpu_isa */
} isa_case;

Test(api, unknown_cpu_isa_is_unsupported_and_named)
{
    static const isa_case c[] = {
        {"sse9", 0}, {"sse9", 1}, {"x", 0}, {"avx1024", 1},
    };
    mha_context *ctx = new_context();
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_device_options o;
        mha_device_options_init(&o);
        if (c[i].via_env)
            cr_assert_eq(setenv("MHA_CPU_ISA", c[i].isa, 1), 0);
        else {
            unsetenv("MHA_CPU_ISA");
            o.cpu_isa = c[i].isa;
        }
        char name[64], quoted[64];
        snprintf(name, sizeof name, "%s \"%s\"",
                 c[i].via_env ? "MHA_CPU_ISA" : "cpu_isa", c[i].isa);
        snprintf(quoted, sizeof quoted, "\"%s\"", c[i].isa);
        const char *needles[2] = {quoted,
                                  c[i].via_env ? "MHA_CPU_ISA" : "cpu_isa"};
        mha_device *dev = NULL;
        mha_status st = mha_device_open(ctx, "cpu", &o, &dev);
        expect_error(ctx, name, st, MHA_UNSUPPORTED, needles, 2);
        cr_expect_null(dev);
        if (st == MHA_OK)
            mha_device_destroy(dev);
    }
    unsetenv("MHA_CPU_ISA");
    /* scalar always exists, and the option overrides the variable */
    cr_assert_eq(setenv("MHA_CPU_ISA", "sse9", 1), 0);
    mha_device_options o;
    mha_device_options_init(&o);
    o.cpu_isa = "scalar";
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "cpu", &o, &dev), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, negative_thread_count_is_invalid_and_named)
{
    mha_context *ctx = new_context();
    mha_device_options o;
    mha_device_options_init(&o);
    o.threads = -3;
    mha_device *dev = NULL;
    mha_status st = mha_device_open(ctx, "cpu", &o, &dev);
    const char *needles[2] = {"threads", "-3"};
    expect_error(ctx, "threads -3", st, MHA_INVALID_ARGUMENT, needles, 2);
    cr_expect_null(dev);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, device_index_out_of_range_is_no_device)
{
    mha_context *ctx = new_context();
    int count = 0;
    cr_assert_eq(mha_device_count(ctx, &count), MHA_OK);
    int bad[] = {-1, count, count + 5, 1 << 30};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char name[48], num[24];
        snprintf(name, sizeof name, "index %d", bad[i]);
        snprintf(num, sizeof num, "%d", bad[i]);
        const char *needles[1] = {num};
        mha_device_info info;
        memset(&info, 0x5a, sizeof info);
        mha_status st = mha_device_get_info(ctx, bad[i], &info);
        expect_error(ctx, name, st, MHA_NO_DEVICE, needles, 1);
        cr_expect_eq(info.index, 0x5a5a5a5a, "%s: info written", name);
        mha_device *dev = NULL;
        st = mha_device_open_index(ctx, bad[i], NULL, &dev);
        expect_error(ctx, name, st, MHA_NO_DEVICE, needles, 1);
        cr_expect_null(dev);
    }
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, device_listing_ranks_devices_and_has_the_cpu)
{
    mha_context *ctx = new_context();
    int count = 0, defaults = 0, cpus = 0;
    cr_assert_eq(mha_device_count(ctx, &count), MHA_OK);
    cr_assert_geq(count, 1);
    int prev_score = 0;
    for (int i = 0; i < count; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(ctx, i, &info), MHA_OK);
        cr_expect_eq(info.index, i);
        cr_expect_gt(strlen(info.backend), 0, "device %d backend", i);
        cr_expect_gt(info.score, 0, "device %d score", i);
        if (i > 0)
            cr_expect_leq(info.score, prev_score, "rank %d score rises", i);
        prev_score = info.score;
        defaults += info.is_default != 0;
        if (strcmp(info.backend, "cpu") == 0) {
            cpus++;
            cr_expect_eq(info.kind, MHA_DEVICE_CPU);
            cr_expect_gt(info.compute_units, 0);
            cr_expect_eq(info.features & MHA_FEATURE_FP16_STORAGE, 0,
                         "the cpu device claims fp16 storage");
        }
    }
    cr_expect_eq(defaults, 1, "%d devices claim to be the default", defaults);
    cr_expect_eq(cpus, 1);
    /* the default is what "best" opens */
    mha_device *dev = NULL;
    mha_device_info info, first;
    cr_assert_eq(mha_device_open(ctx, "best", NULL, &dev), MHA_OK);
    cr_assert_eq(mha_device_info_of(dev, &info), MHA_OK);
    cr_assert_eq(mha_device_get_info(ctx, 0, &first), MHA_OK);
    cr_expect(first.is_default);
    cr_expect_str_eq(info.backend, first.backend);
    cr_expect_eq(info.backend_index, first.backend_index);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

/* ---- host forward: bad shapes, dtypes, capacities ------------------------ */

enum field { F_QUERY, F_KEY, F_VALUE, F_KPM, F_MASK, F_OUTPUT, F_WEIGHTS };

typedef struct fwd_case {
    const char *name;
    int unbatched;      /* make q/k/v (L, E), (S, kdim), (S, vdim) first */
    int field;
    int ndim;           /* new shape of field's array; 0 keeps it */
    int64_t shape[4];
    int retype;         /* set dtype */
    int dtype;
    int null_data;      /* field's pointer becomes NULL */
    long count;         /* output/weights capacity; 0 keeps it */
    int per_head;       /* average_attn_weights = 0 */
    mha_status want;
    const char *needle[3];
} fwd_case;

/* The cross layer: E = 8, H = 2, kdim = 6, vdim = 10; L 3, S 4, N 2. */
static const fwd_case fwd_cases[] = {
    {"key batch 3 != query batch 2", 0, F_KEY, 3, {4, 3, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,3,6]", "[4,2,6]"}},
    {"value batch 1 != 2", 0, F_VALUE, 3, {4, 1, 10}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"value", "[4,1,10]", "[4,2,10]"}},
    {"value length 5 != key length 4", 0, F_VALUE, 3, {5, 2, 10}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"value", "[5,2,10]", "[4,2,10]"}},
    {"query features 7 != embed_dim 8", 0, F_QUERY, 3, {3, 2, 7}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"query", "[3,2,7]", "embed_dim"}},
    {"key features 8 != kdim 6", 0, F_KEY, 3, {4, 2, 8}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,2,8]", "kdim"}},
    {"value features 6 != vdim 10", 0, F_VALUE, 3, {4, 2, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"value", "[4,2,6]", "vdim"}},
    {"1-D query", 0, F_QUERY, 1, {8}, 0, 0, 0, 0, 0, MHA_SHAPE_MISMATCH,
     {"query", "[8]"}},
    {"4-D query", 0, F_QUERY, 4, {3, 2, 1, 8}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"query", "[3,2,1,8]"}},
    {"2-D key with 3-D query", 0, F_KEY, 2, {4, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,6]"}},
    {"3-D key with 2-D query", 1, F_KEY, 3, {4, 2, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,2,6]"}},
    {"query with 0 dimensions", 0, F_QUERY, -1, {0}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"query", "0 dimensions"}},
    {"query with 5 dimensions", 0, F_QUERY, 5, {1, 1, 1, 1}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"query", "5 dimensions"}},
    {"query length 0", 0, F_QUERY, 3, {0, 2, 8}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"query", "is 0"}},
    {"key length -4", 0, F_KEY, 3, {-4, 2, 6}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"key", "-4"}},
    {"query element count overflows", 0, F_QUERY, 3,
     {(int64_t)1 << 62, 4, 8}, 0, 0, 0, 0, 0, MHA_OVERFLOW, {"query"}},
    {"bool query", 0, F_QUERY, 0, {0}, 1, MHA_BOOL, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"query", "bool"}},
    {"f16 host query", 0, F_QUERY, 0, {0}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"query", "f16"}},
    {"bool key", 0, F_KEY, 0, {0}, 1, MHA_BOOL, 0, 0, 0, MHA_DTYPE_MISMATCH,
     {"key", "bool"}},
    {"f16 value", 0, F_VALUE, 0, {0}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"value", "f16"}},
    {"query dtype 42", 0, F_QUERY, 0, {0}, 1, 42, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"query", "42"}},
    {"query data NULL", 0, F_QUERY, 0, {0}, 0, 0, 1, 0, 0,
     MHA_INVALID_ARGUMENT, {"query"}},
    {"key data NULL", 0, F_KEY, 0, {0}, 0, 0, 1, 0, 0, MHA_INVALID_ARGUMENT,
     {"key"}},
    {"value data NULL", 0, F_VALUE, 0, {0}, 0, 0, 1, 0, 0,
     MHA_INVALID_ARGUMENT, {"value"}},
    {"key_padding_mask (2,5) for S 4", 0, F_KPM, 2, {2, 5}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key_padding_mask", "[2,5]", "[2,4]"}},
    {"key_padding_mask (3,4) for N 2", 0, F_KPM, 2, {3, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key_padding_mask", "[3,4]", "[2,4]"}},
    {"key_padding_mask (S) with batched input", 0, F_KPM, 1, {4}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"key_padding_mask", "[4]", "[2,4]"}},
    {"key_padding_mask (1,S) with unbatched input", 1, F_KPM, 2, {1, 4}, 0, 0,
     0, 0, 0, MHA_SHAPE_MISMATCH, {"key_padding_mask", "[1,4]", "[4]"}},
    {"key_padding_mask (S+1) unbatched", 1, F_KPM, 1, {5}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key_padding_mask", "[5]", "[4]"}},
    {"key_padding_mask f16", 0, F_KPM, 2, {2, 4}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"key_padding_mask", "f16"}},
    {"attn_mask (L, S+1)", 0, F_MASK, 2, {3, 5}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[3,5]", "[3,4]"}},
    {"attn_mask (L+1, S)", 0, F_MASK, 2, {4, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[4,4]", "[3,4]"}},
    {"attn_mask (N*H+1, L, S)", 0, F_MASK, 3, {5, 3, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[5,3,4]", "[4,3,4]"}},
    {"attn_mask (H, L, S) with batch 2", 0, F_MASK, 3, {2, 3, 4}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"attn_mask", "[2,3,4]", "[4,3,4]"}},
    {"1-D attn_mask", 0, F_MASK, 1, {4}, 0, 0, 0, 0, 0, MHA_SHAPE_MISMATCH,
     {"attn_mask", "[4]"}},
    {"4-D attn_mask", 0, F_MASK, 4, {2, 2, 3, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[2,2,3,4]"}},
    {"attn_mask f16", 0, F_MASK, 2, {3, 4}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"attn_mask", "f16"}},
    {"output NULL", 0, F_OUTPUT, 0, {0}, 0, 0, 1, 0, 0, MHA_INVALID_ARGUMENT,
     {"output"}},
    {"output capacity 47 < 48", 0, F_OUTPUT, 0, {0}, 0, 0, 0, 47, 0,
     MHA_BUFFER_TOO_SMALL, {"output", "47", "48"}},
    {"output capacity 1", 0, F_OUTPUT, 0, {0}, 0, 0, 0, 1, 0,
     MHA_BUFFER_TOO_SMALL, {"output", "1", "48"}},
    {"weights NULL with need_weights", 0, F_WEIGHTS, 0, {0}, 0, 0, 1, 0, 0,
     MHA_INVALID_ARGUMENT, {"weights"}},
    {"weights capacity 23 < 24", 0, F_WEIGHTS, 0, {0}, 0, 0, 0, 23, 0,
     MHA_BUFFER_TOO_SMALL, {"weights", "23", "24"}},
    {"per-head weights capacity 24 < 48", 0, F_WEIGHTS, 0, {0}, 0, 0, 0, 24,
     1, MHA_BUFFER_TOO_SMALL, {"weights", "24", "48"}},
};

static mha_host_array *field_array(io *o, int field)
{
    switch (field) {
    case F_QUERY: return &o->a.query;
    case F_KEY: return &o->a.key;
    case F_VALUE: return &o->a.value;
    case F_KPM: return &o->a.key_padding_mask;
    case F_MASK: return &o->a.attn_mask;
    }
    return NULL;
}

static void make_unbatched(io *o)
{
    mha_host_array *qkv[3] = {&o->a.query, &o->a.key, &o->a.value};
    for (int i = 0; i < 3; i++) {
        qkv[i]->ndim = 2;
        qkv[i]->shape[1] = qkv[i]->shape[2];
        qkv[i]->shape[2] = 0;
    }
    o->a.output_count = L_ * 8;
}

static void apply_case(io *o, const fwd_case *c)
{
    if (c->unbatched)
        make_unbatched(o);
    if (c->per_head)
        o->a.average_attn_weights = 0;
    mha_host_array *arr = field_array(o, c->field);
    if (arr) {
        if (c->field == F_KPM || c->field == F_MASK) {
            arr->data = c->field == F_KPM ? (void *)o->kpm : (void *)o->mask;
            arr->dtype = MHA_BOOL;
        }
        if (c->ndim) {
            arr->ndim = c->ndim < 0 ? 0 : c->ndim;
            memcpy(arr->shape, c->shape, sizeof c->shape);
        }
        if (c->retype)
            arr->dtype = (mha_dtype)c->dtype;
        if (c->null_data)
            arr->data = NULL;
        return;
    }
    float **ptr = c->field == F_OUTPUT ? &o->a.output : &o->a.weights;
    size_t *cnt = c->field == F_OUTPUT ? &o->a.output_count
                                       : &o->a.weights_count;
    if (c->null_data)
        *ptr = NULL;
    if (c->count)
        *cnt = (size_t)c->count;
}

static int untouched(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != SENTINEL)
            return 0;
    return 1;
}

Test(api, bad_host_forward_arguments_table)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    for (size_t i = 0; i < sizeof fwd_cases / sizeof *fwd_cases; i++) {
        const fwd_case *c = &fwd_cases[i];
        io_init(&o, &f);
        apply_case(&o, c);
        mha_status st = mha_layer_forward_host(f.layer, &o.a);
        expect_error(f.ctx, c->name, st, c->want, c->needle, 3);
        cr_expect(!contains(mha_context_errmsg(f.ctx), "[-1"),
                  "case \"%s\": message shows an unknown length as -1: %s",
                  c->name, mha_context_errmsg(f.ctx));
        cr_expect(untouched(o.out, CAP) && untouched(o.w, CAP),
                  "case \"%s\": outputs written on failure", c->name);
        if (c->field != F_OUTPUT && c->field != F_WEIGHTS) {
            size_t n1 = 77, n2 = 77;
            st = mha_layer_output_size(f.layer, &o.a, &n1, &n2);
            expect_error(f.ctx, c->name, st, c->want, c->needle, 3);
            cr_expect(n1 == 77 && n2 == 77,
                      "case \"%s\": output_size wrote counts on failure",
                      c->name);
        }
        expect_forward_ok(&f, c->name);
    }
    fx_fini(&f);
}

/* The valid variants the bad table is built from really are valid. */
Test(api, valid_host_forward_variants_succeed)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    static const fwd_case ok[] = {
        {"bool key_padding_mask (N, S)", 0, F_KPM, 2, {2, 4}, 0, 0, 0, 0, 0,
         MHA_OK, {0}},
        {"f32 key_padding_mask (N, S)", 0, F_KPM, 2, {2, 4}, 1, MHA_F32, 0, 0,
         0, MHA_OK, {0}},
        {"unbatched key_padding_mask (S)", 1, F_KPM, 1, {4}, 0, 0, 0, 0, 0,
         MHA_OK, {0}},
        {"bool attn_mask (L, S)", 0, F_MASK, 2, {3, 4}, 0, 0, 0, 0, 0, MHA_OK,
         {0}},
        {"f32 attn_mask (N*H, L, S)", 0, F_MASK, 3, {4, 3, 4}, 1, MHA_F32, 0,
         0, 0, MHA_OK, {0}},
        {"exact output capacity", 0, F_OUTPUT, 0, {0}, 0, 0, 0, 48, 0, MHA_OK,
         {0}},
        {"per-head weights capacity 48", 0, F_WEIGHTS, 0, {0}, 0, 0, 0, 48, 1,
         MHA_OK, {0}},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        io_init(&o, &f);
        apply_case(&o, &ok[i]);
        mha_status st = mha_layer_forward_host(f.layer, &o.a);
        cr_expect_eq(st, MHA_OK, "case \"%s\": %s: %s", ok[i].name,
                     mha_status_str(st), mha_context_errmsg(f.ctx));
    }
    /* need_weights 0: weights may be NULL */
    io_init(&o, &f);
    o.a.need_weights = 0;
    o.a.weights = NULL;
    o.a.weights_count = 0;
    cr_expect_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK, "%s",
                 mha_context_errmsg(f.ctx));
    cr_expect(untouched(o.w, CAP));
    fx_fini(&f);
}

/* ---- weights ------------------------------------------------------------- */

typedef struct weight_case {
    const char *name;
    int cross;       /* the kdim 6 / vdim 10 layer, else kdim = vdim = E */
    int no_bias;
    const char *weight;
    int ndim;
    int64_t shape[5];
    mha_status want;
    const char *needle[3];
} weight_case;

static const weight_case weight_cases[] = {
    {"unknown name in_proj_weights", 0, 0, "in_proj_weights", 2, {24, 8},
     MHA_NOT_FOUND, {"in_proj_weights"}},
    {"unknown name out_proj.weight.", 0, 0, "out_proj.weight.", 2, {8, 8},
     MHA_NOT_FOUND, {"out_proj.weight."}},
    {"empty name", 0, 0, "", 1, {8}, MHA_NOT_FOUND, {"\"\""}},
    {"prefixed name", 0, 0, "self_attn.out_proj.bias", 1, {8}, MHA_NOT_FOUND,
     {"self_attn.out_proj.bias"}},
    {"q_proj_weight on a self layer", 0, 0, "q_proj_weight", 2, {8, 8},
     MHA_INVALID_ARGUMENT, {"q_proj_weight"}},
    {"in_proj_weight when kdim != E", 1, 0, "in_proj_weight", 2, {24, 8},
     MHA_INVALID_ARGUMENT, {"in_proj_weight", "kdim"}},
    {"bias_k without add_bias_kv", 0, 0, "bias_k", 3, {1, 1, 8},
     MHA_INVALID_ARGUMENT, {"bias_k"}},
    {"in_proj_bias with bias 0", 0, 1, "in_proj_bias", 1, {24},
     MHA_INVALID_ARGUMENT, {"in_proj_bias"}},
    {"out_proj.bias with bias 0", 0, 1, "out_proj.bias", 1, {8},
     MHA_INVALID_ARGUMENT, {"out_proj.bias"}},
    {"in_proj_weight (8, 8)", 0, 0, "in_proj_weight", 2, {8, 8},
     MHA_SHAPE_MISMATCH, {"in_proj_weight", "[8,8]", "[24,8]"}},
    {"in_proj_weight (8, 24) transposed", 0, 0, "in_proj_weight", 2, {8, 24},
     MHA_SHAPE_MISMATCH, {"[8,24]", "[24,8]"}},
    {"in_proj_weight (24, 8, 1)", 0, 0, "in_proj_weight", 3, {24, 8, 1},
     MHA_SHAPE_MISMATCH, {"[24,8,1]", "[24,8]"}},
    {"in_proj_weight ndim 0", 0, 0, "in_proj_weight", 0, {0},
     MHA_SHAPE_MISMATCH, {"in_proj_weight", "[24,8]"}},
    {"in_proj_weight ndim 5", 0, 0, "in_proj_weight", 5, {24, 8, 1, 1, 1},
     MHA_SHAPE_MISMATCH, {"in_proj_weight", "[24,8]"}},
    {"out_proj.bias (9)", 0, 0, "out_proj.bias", 1, {9}, MHA_SHAPE_MISMATCH,
     {"out_proj.bias", "[9]", "[8]"}},
    {"in_proj_bias (3, 8)", 0, 0, "in_proj_bias", 2, {3, 8},
     MHA_SHAPE_MISMATCH, {"[3,8]", "[24]"}},
    {"k_proj_weight (8, 8) for kdim 6", 1, 0, "k_proj_weight", 2, {8, 8},
     MHA_SHAPE_MISMATCH, {"k_proj_weight", "[8,8]", "[8,6]"}},
    {"v_proj_weight (8, 6) for vdim 10", 1, 0, "v_proj_weight", 2, {8, 6},
     MHA_SHAPE_MISMATCH, {"v_proj_weight", "[8,6]", "[8,10]"}},
    {"q_proj_weight negative dim", 1, 0, "q_proj_weight", 2, {-8, 8},
     MHA_SHAPE_MISMATCH, {"q_proj_weight", "[-8,8]", "[8,8]"}},
};

/* Runs the standard forward into out (count floats). */
static void forward_into(fx *f, float *out, size_t count)
{
    static io o;
    io_init(&o, f);
    cr_assert_eq(mha_layer_forward_host(f->layer, &o.a), MHA_OK, "%s",
                 mha_context_errmsg(f->ctx));
    memcpy(out, o.out, count * sizeof *out);
}

Test(api, bad_weight_names_and_shapes_table)
{
    static float data[3 * 64 * 64];
    fill(data, sizeof data / sizeof *data, 5);
    for (size_t i = 0; i < sizeof weight_cases / sizeof *weight_cases; i++) {
        const weight_case *c = &weight_cases[i];
        fx f;
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, 8, 2);
        cfg.kdim = c->cross ? 6 : 0;
        cfg.vdim = c->cross ? 10 : 0;
        cfg.bias = !c->no_bias;
        fx_init_cfg(&f, &cfg, 1);
        float before[CAP], after[CAP];
        forward_into(&f, before, L_ * N_ * 8);
        mha_status st = mha_layer_set_weight(f.layer, c->weight, data,
                                             c->ndim, c->shape);
        expect_error(f.ctx, c->name, st, c->want, c->needle, 3);
        forward_into(&f, after, L_ * N_ * 8);
        cr_expect_arr_eq(before, after, L_ * N_ * 8 * sizeof(float),
                         "case \"%s\": a refused weight changed the layer",
                         c->name);
        fx_fini(&f);
    }
}

Test(api, bias_k_accepts_pytorch_shape_and_flat_shape)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 8, 2);
    cfg.add_bias_kv = 1;
    fx f;
    fx_init_cfg(&f, &cfg, 1);
    float data[8];
    fill(data, 8, 3);
    int64_t flat[1] = {8}, full[3] = {1, 1, 8}, bad[3] = {1, 2, 8};
    cr_expect_eq(mha_layer_set_weight(f.layer, "bias_k", data, 1, flat),
                 MHA_OK);
    cr_expect_eq(mha_layer_set_weight(f.layer, "bias_v", data, 3, full),
                 MHA_OK);
    mha_status st = mha_layer_set_weight(f.layer, "bias_v", data, 3, bad);
    const char *needles[3] = {"bias_v", "[1,2,8]", "[1,1,8]"};
    expect_error(f.ctx, "bias_v (1,2,8)", st, MHA_SHAPE_MISMATCH, needles, 3);
    expect_forward_ok(&f, "bias_v (1,2,8)");
    fx_fini(&f);
}

typedef struct missing_case {
    int64_t kdim, vdim;
    int bias, bias_kv;
    const char *skip;
} missing_case;

Test(api, missing_weight_is_named_by_forward)
{
    static const missing_case c[] = {
        {0, 0, 1, 0, "in_proj_weight"}, {0, 0, 1, 0, "in_proj_bias"},
        {0, 0, 1, 0, "out_proj.weight"}, {0, 0, 1, 0, "out_proj.bias"},
        {6, 10, 1, 0, "q_proj_weight"}, {6, 10, 1, 0, "k_proj_weight"},
        {6, 10, 1, 0, "v_proj_weight"}, {0, 0, 0, 0, "out_proj.weight"},
        {0, 0, 1, 1, "bias_k"},         {0, 0, 1, 1, "bias_v"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, 8, 2);
        cfg.kdim = c[i].kdim;
        cfg.vdim = c[i].vdim;
        cfg.bias = c[i].bias;
        cfg.add_bias_kv = c[i].bias_kv;
        fx f;
        fx_init_cfg(&f, &cfg, 0);
        set_weights_except(f.layer, &f.cfg, c[i].skip);
        static io o;
        io_init(&o, &f);
        mha_status st = mha_layer_forward_host(f.layer, &o.a);
        char quoted[48];
        snprintf(quoted, sizeof quoted, "\"%s\"", c[i].skip);
        const char *needles[1] = {quoted};
        expect_error(f.ctx, c[i].skip, st, MHA_MISSING_WEIGHT, needles, 1);
        cr_expect(untouched(o.out, CAP), "%s: output written", c[i].skip);
        set_weights_except(f.layer, &f.cfg, NULL);
        expect_forward_ok(&f, c[i].skip);
        fx_fini(&f);
    }
}

Test(api, fresh_layer_forward_is_missing_weight)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 8, 2);
    fx f;
    fx_init_cfg(&f, &cfg, 0);
    static io o;
    io_init(&o, &f);
    mha_status st = mha_layer_forward_host(f.layer, &o.a);
    const char *needles[1] = {"in_proj_weight"};
    expect_error(f.ctx, "fresh layer", st, MHA_MISSING_WEIGHT, needles, 1);
    fx_fini(&f);
}

/* ---- device tensors ------------------------------------------------------ */

Test(api, tensor_f32_round_trip)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    int64_t shape[3] = {2, 3, 5};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 3, shape, &t), MHA_OK);
    float src[30], dst[31];
    fill(src, 30, 9);
    src[4] = NAN;
    src[7] = -INFINITY;
    dst[30] = SENTINEL;
    cr_assert_eq(mha_tensor_upload(t, src, sizeof src), MHA_OK);
    cr_assert_eq(mha_tensor_download(t, dst, sizeof dst), MHA_OK);
    cr_expect_arr_eq(src, dst, sizeof src);
    cr_expect_eq(dst[30], SENTINEL, "download wrote past the tensor");
    mha_dtype dt = MHA_BOOL;
    int nd = 0;
    int64_t got[MHA_MAX_DIMS] = {0};
    cr_assert_eq(mha_tensor_get_shape(t, &dt, &nd, got), MHA_OK);
    cr_expect_eq(dt, MHA_F32);
    cr_expect_eq(nd, 3);
    cr_expect_arr_eq(got, shape, sizeof shape);
    cr_expect_eq(mha_tensor_get_shape(t, NULL, NULL, NULL), MHA_OK);
    cr_expect_eq(mha_tensor_destroy(t), MHA_OK);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, tensor_bool_round_trip_gives_the_same_bytes)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    int64_t shape[2] = {3, 4};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_BOOL, 2, shape, &t), MHA_OK);
    uint8_t src[12] = {0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1}, dst[12];
    memset(dst, 0x77, sizeof dst);
    cr_assert_eq(mha_tensor_upload(t, src, sizeof src), MHA_OK,
                 "a bool tensor takes one byte per element: %s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_tensor_download(t, dst, sizeof dst), MHA_OK);
    cr_expect_arr_eq(src, dst, sizeof src);
    /* 4 bytes per element is the wrong size for a bool tensor */
    float f32[12] = {0};
    cr_expect_eq(mha_tensor_upload(t, f32, sizeof f32), MHA_SHAPE_MISMATCH);
    cr_expect_eq(mha_tensor_destroy(t), MHA_OK);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, tensor_wrong_sizes_are_refused_and_named)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    int64_t shape[2] = {4, 6};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 2, shape, &t), MHA_OK);
    float buf[25];
    fill(buf, 24, 1);
    cr_assert_eq(mha_tensor_upload(t, buf, 96), MHA_OK);
    struct {
        const char *name;
        int upload;
        size_t size;
        mha_status want;
        const char *needle[2];
    } c[] = {
        {"upload 92 bytes", 1, 92, MHA_SHAPE_MISMATCH, {"92", "96"}},
        {"upload 100 bytes", 1, 100, MHA_SHAPE_MISMATCH, {"100", "96"}},
        {"upload 0 bytes", 1, 0, MHA_SHAPE_MISMATCH, {"0", "96"}},
        {"download into 95 bytes", 0, 95, MHA_BUFFER_TOO_SMALL, {"95", "96"}},
        {"download into 0 bytes", 0, 0, MHA_BUFFER_TOO_SMALL, {"0", "96"}},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        float out[25];
        for (int k = 0; k < 25; k++)
            out[k] = SENTINEL;
        mha_status st = c[i].upload ? mha_tensor_upload(t, out, c[i].size)
                                    : mha_tensor_download(t, out, c[i].size);
        expect_error(ctx, c[i].name, st, c[i].want, c[i].needle, 2);
        if (!c[i].upload)
            cr_expect(untouched(out, 25), "%s: wrote", c[i].name);
    }
    /* a refused upload left the contents alone */
    float back[24];
    cr_assert_eq(mha_tensor_download(t, back, sizeof back), MHA_OK);
    cr_expect_arr_eq(back, buf, sizeof back);
    cr_expect_eq(mha_tensor_upload(t, NULL, 96), MHA_INVALID_ARGUMENT);
    cr_expect_eq(mha_tensor_download(t, NULL, 96), MHA_INVALID_ARGUMENT);
    cr_expect_eq(mha_tensor_destroy(t), MHA_OK);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, bad_tensor_shapes_and_dtypes_table)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    struct {
        const char *name;
        int dtype, ndim;
        int64_t shape[5];
        mha_status want;
        const char *needle;
    } c[] = {
        {"ndim 0", MHA_F32, 0, {1}, MHA_INVALID_ARGUMENT, "0 dimensions"},
        {"ndim 5", MHA_F32, 5, {1, 1, 1, 1, 1}, MHA_INVALID_ARGUMENT,
         "5 dimensions"},
        {"ndim -1", MHA_F32, -1, {1}, MHA_INVALID_ARGUMENT, "-1"},
        {"dimension 0", MHA_F32, 2, {3, 0}, MHA_INVALID_ARGUMENT, "is 0"},
        {"dimension -7", MHA_F32, 2, {-7, 3}, MHA_INVALID_ARGUMENT, "-7"},
        {"INT64_MAX x 4 overflows", MHA_F32, 2, {INT64_MAX, 4}, MHA_OVERFLOW,
         "tensor"},
        {"2^32 x 2^32 overflows", MHA_F32, 2,
         {(int64_t)1 << 32, (int64_t)1 << 32}, MHA_OVERFLOW, "tensor"},
        {"dtype 9", 9, 1, {4}, MHA_DTYPE_MISMATCH, "9"},
        {"dtype -1", -1, 1, {4}, MHA_DTYPE_MISMATCH, "-1"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_tensor *t = NULL;
        mha_status st = mha_tensor_create(dev, (mha_dtype)c[i].dtype,
                                          c[i].ndim, c[i].shape, &t);
        const char *needles[1] = {c[i].needle};
        expect_error(ctx, c[i].name, st, c[i].want, needles, 1);
        cr_expect_null(t, "%s: out written", c[i].name);
        if (st == MHA_OK)
            mha_tensor_destroy(t);
    }
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, destroying_a_device_with_a_live_tensor_is_refused)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    int64_t shape[1] = {4};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 1, shape, &t), MHA_OK);
    const char *needles[1] = {"1 layer(s) or tensor(s)"};
    expect_error(ctx, "device with a tensor", mha_device_destroy(dev),
                 MHA_BAD_STATE, needles, 1);
    /* the device and tensor still work */
    float v[4] = {1, 2, 3, 4}, w[4];
    cr_expect_eq(mha_tensor_upload(t, v, sizeof v), MHA_OK);
    cr_expect_eq(mha_tensor_download(t, w, sizeof w), MHA_OK);
    cr_expect_arr_eq(v, w, sizeof v);
    cr_expect_eq(mha_tensor_destroy(t), MHA_OK);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, destroying_a_device_with_a_live_layer_is_refused)
{
    fx f;
    fx_init(&f, 0, 0);
    cr_expect_eq(mha_device_destroy(f.dev), MHA_BAD_STATE);
    cr_expect_eq(mha_context_destroy(f.ctx), MHA_BAD_STATE);
    expect_forward_ok(&f, "refused destroys");
    fx_fini(&f);
}

Test(api, destroying_a_context_with_an_open_device_is_refused)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    const char *needles[1] = {"1 device(s)"};
    expect_error(ctx, "context with a device", mha_context_destroy(ctx),
                 MHA_BAD_STATE, needles, 1);
    mha_device_info info;
    cr_expect_eq(mha_device_info_of(dev, &info), MHA_OK);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

/* ---- device-tensor forward ----------------------------------------------- */

typedef struct dev_io {
    mha_tensor *q, *k, *v, *out, *w;
} dev_io;

static mha_tensor *make_tensor(mha_device *dev, mha_dtype dt, int ndim,
                               int64_t d0, int64_t d1, int64_t d2,
                               unsigned seed)
{
    int64_t shape[3] = {d0, d1, d2};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, dt, ndim, shape, &t), MHA_OK);
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    if (dt == MHA_F32) {
        static float buf[CAP];
        cr_assert_leq(n, CAP);
        fill(buf, n, seed);
        cr_assert_eq(mha_tensor_upload(t, buf, n * 4), MHA_OK);
    }
    return t;
}

static void dev_io_init(dev_io *d, fx *f, mha_device *dev)
{
    d->q = make_tensor(dev, MHA_F32, 3, L_, N_, 8, 11);
    d->k = make_tensor(dev, MHA_F32, 3, S_, N_, f->cfg.kdim, 22);
    d->v = make_tensor(dev, MHA_F32, 3, S_, N_, f->cfg.vdim, 33);
    d->out = make_tensor(dev, MHA_F32, 3, L_, N_, 8, 0);
    d->w = make_tensor(dev, MHA_F32, 3, N_, L_, S_, 0);
}

static void dev_io_fini(dev_io *d)
{
    mha_tensor *t[5] = {d->q, d->k, d->v, d->out, d->w};
    for (int i = 0; i < 5; i++)
        cr_expect_eq(mha_tensor_destroy(t[i]), MHA_OK);
}

static void dev_args(mha_forward_args *a, const dev_io *d)
{
    mha_forward_args_init(a);
    a->query = d->q;
    a->key = d->k;
    a->value = d->v;
    a->output = d->out;
    a->weights = d->w;
    a->need_weights = 1;
}

/* The device forward gives the host forward's result, exactly. */
Test(api, device_forward_matches_host_forward)
{
    fx f;
    fx_init(&f, 6, 10);
    dev_io d;
    dev_io_init(&d, &f, f.dev);
    mha_forward_args a;
    dev_args(&a, &d);
    cr_assert_eq(mha_layer_forward(f.layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(f.ctx));
    float got[L_ * N_ * 8], gotw[N_ * L_ * S_];
    cr_assert_eq(mha_tensor_download(d.out, got, sizeof got), MHA_OK);
    cr_assert_eq(mha_tensor_download(d.w, gotw, sizeof gotw), MHA_OK);
    static io o;
    io_init(&o, &f);
    cr_assert_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK);
    cr_expect_arr_eq(got, o.out, sizeof got);
    cr_expect_arr_eq(gotw, o.w, sizeof gotw);
    dev_io_fini(&d);
    fx_fini(&f);
}

typedef struct dev_case {
    const char *name;
    int which;   /* 0 q, 1 k, 2 v, 3 out, 4 weights, 5 kpm, 6 mask */
    int null_it;
    int dtype, ndim;
    int64_t shape[3];
    mha_status want;
    const char *needle[2];
} dev_case;

static const dev_case dev_cases[] = {
    {"query NULL", 0, 1, 0, 0, {0}, MHA_INVALID_ARGUMENT, {"query"}},
    {"key NULL", 1, 1, 0, 0, {0}, MHA_INVALID_ARGUMENT, {"key"}},
    {"value NULL", 2, 1, 0, 0, {0}, MHA_INVALID_ARGUMENT, {"value"}},
    {"output NULL", 3, 1, 0, 0, {0}, MHA_INVALID_ARGUMENT, {"output"}},
    {"weights NULL with need_weights", 4, 1, 0, 0, {0}, MHA_INVALID_ARGUMENT,
     {"weights"}},
    {"bool query", 0, 0, MHA_BOOL, 3, {3, 2, 8}, MHA_DTYPE_MISMATCH,
     {"query", "bool"}},
    {"key batch 3", 1, 0, MHA_F32, 3, {4, 3, 6}, MHA_SHAPE_MISMATCH,
     {"key", "[4,3,6]"}},
    {"value length 5", 2, 0, MHA_F32, 3, {5, 2, 10}, MHA_SHAPE_MISMATCH,
     {"value", "[5,2,10]"}},
    {"output (3,2,7)", 3, 0, MHA_F32, 3, {3, 2, 7}, MHA_SHAPE_MISMATCH,
     {"output", "[3,2,7]"}},
    {"output (2,3,8) batch_first layout", 3, 0, MHA_F32, 3, {2, 3, 8},
     MHA_SHAPE_MISMATCH, {"output", "[3,2,8]"}},
    {"bool output", 3, 0, MHA_BOOL, 3, {3, 2, 8}, MHA_DTYPE_MISMATCH,
     {"output", "bool"}},
    {"weights (2,3,5)", 4, 0, MHA_F32, 3, {2, 3, 5}, MHA_SHAPE_MISMATCH,
     {"weights", "[2,3,4]"}},
    {"2-D weights (3,4)", 4, 0, MHA_F32, 2, {3, 4},
     MHA_SHAPE_MISMATCH, {"weights", "[3,4]"}},
    {"key_padding_mask (2,5)", 5, 0, MHA_BOOL, 2, {2, 5}, MHA_SHAPE_MISMATCH,
     {"key_padding_mask", "[2,5]"}},
    {"attn_mask (3,5)", 6, 0, MHA_BOOL, 2, {3, 5}, MHA_SHAPE_MISMATCH,
     {"attn_mask", "[3,5]"}},
    {"f16 attn_mask", 6, 0, MHA_F16, 2, {3, 4}, MHA_DTYPE_MISMATCH,
     {"attn_mask", "f16"}},
};

Test(api, bad_device_forward_arguments_table)
{
    fx f;
    fx_init(&f, 6, 10);
    dev_io d;
    dev_io_init(&d, &f, f.dev);
    float sentinel[CAP];
    for (int i = 0; i < CAP; i++)
        sentinel[i] = SENTINEL;
    for (size_t i = 0; i < sizeof dev_cases / sizeof *dev_cases; i++) {
        const dev_case *c = &dev_cases[i];
        cr_assert_eq(mha_tensor_upload(d.out, sentinel, L_ * N_ * 8 * 4),
                     MHA_OK);
        mha_forward_args a;
        dev_args(&a, &d);
        mha_tensor *extra = NULL;
        if (!c->null_it)
            extra = make_tensor(f.dev, (mha_dtype)c->dtype, c->ndim,
                                c->shape[0], c->shape[1], c->shape[2], 7);
        const mha_tensor **slot[7] = {&a.query, &a.key, &a.value,
                                      (const mha_tensor **)&a.output,
                                      (const mha_tensor **)&a.weights,
                                      &a.key_padding_mask, &a.attn_mask};
        *slot[c->which] = extra;
        mha_status st = mha_layer_forward(f.layer, &a);
        expect_error(f.ctx, c->name, st, c->want, c->needle, 2);
        float out[L_ * N_ * 8];
        cr_assert_eq(mha_tensor_download(d.out, out, sizeof out), MHA_OK);
        cr_expect(untouched(out, L_ * N_ * 8), "%s: output written",
                  c->name);
        cr_expect_eq(mha_tensor_destroy(extra), MHA_OK);
        dev_args(&a, &d);
        cr_expect_eq(mha_layer_forward(f.layer, &a), MHA_OK,
                     "forward after %s: %s", c->name,
                     mha_context_errmsg(f.ctx));
    }
    dev_io_fini(&d);
    fx_fini(&f);
}

Test(api, tensor_of_another_device_is_refused)
{
    fx f;
    fx_init(&f, 6, 10);
    mha_device *other = open_cpu(f.ctx);
    dev_io d, e;
    dev_io_init(&d, &f, f.dev);
    dev_io_init(&e, &f, other);
    static const char *const names[5] = {"query", "key", "value", "output",
                                         "weights"};
    for (int i = 0; i < 5; i++) {
        mha_forward_args a;
        dev_args(&a, &d);
        mha_tensor *foreign[5] = {e.q, e.k, e.v, e.out, e.w};
        const mha_tensor **slot[5] = {&a.query, &a.key, &a.value,
                                      (const mha_tensor **)&a.output,
                                      (const mha_tensor **)&a.weights};
        *slot[i] = foreign[i];
        const char *needles[2] = {names[i], "another device"};
        expect_error(f.ctx, names[i], mha_layer_forward(f.layer, &a),
                     MHA_INVALID_ARGUMENT, needles, 2);
    }
    mha_forward_args a;
    dev_args(&a, &d);
    cr_expect_eq(mha_layer_forward(f.layer, &a), MHA_OK);
    dev_io_fini(&e);
    dev_io_fini(&d);
    cr_expect_eq(mha_device_destroy(other), MHA_OK);
    fx_fini(&f);
}

/* ---- documented semantics ------------------------------------------------ */

/* Batch item 1 masks every key: its output rows are out_proj.bias and its
 * weight rows are 0, while batch item 0 is an ordinary softmax. */
Test(api, fully_masked_row_gives_out_proj_bias_and_zero_weights)
{
    fx f;
    fx_init(&f, 0, 0);
    float bias[8];
    fill(bias, 8, 99);
    int64_t bshape[1] = {8};
    cr_assert_eq(mha_layer_set_weight(f.layer, "out_proj.bias", bias, 1,
                                      bshape), MHA_OK);
    static io o;
    for (int per_head = 0; per_head < 2; per_head++) {
        io_init(&o, &f);
        o.a.average_attn_weights = !per_head;
        o.a.weights_count = CAP;
        for (int s = 0; s < S_; s++)
            o.kpm[1 * S_ + s] = 1;
        set_array(&o.a.key_padding_mask, o.kpm, MHA_BOOL, 2, N_, S_, 0);
        cr_assert_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK, "%s",
                     mha_context_errmsg(f.ctx));
        for (int l = 0; l < L_; l++) {
            const float *row = &o.out[(l * N_ + 1) * 8];
            cr_expect_arr_eq(row, bias, sizeof bias,
                             "query %d of the masked item", l);
        }
        int H = per_head ? 2 : 1;
        float sum0 = 0;
        for (int h = 0; h < H; h++)
            for (int l = 0; l < L_; l++)
                for (int s = 0; s < S_; s++) {
                    cr_expect_eq(o.w[((1 * H + h) * L_ + l) * S_ + s], 0.0f,
                                 "weight h%d l%d s%d", h, l, s);
                    sum0 += o.w[((0 * H + h) * L_ + l) * S_ + s];
                }
        cr_expect_float_eq(sum0, (float)(H * L_), 1e-5,
                           "rows of the unmasked item sum to 1");
    }
    fx_fini(&f);
}

Test(api, nan_in_query_stays_in_its_own_output_row)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    io_init(&o, &f);
    o.q[(1 * N_ + 0) * 8 + 3] = NAN; /* query l = 1, batch 0 */
    cr_assert_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK);
    for (int l = 0; l < L_; l++)
        for (int n = 0; n < N_; n++)
            for (int e = 0; e < 8; e++) {
                float v = o.out[(l * N_ + n) * 8 + e];
                if (l == 1 && n == 0)
                    cr_expect(isnan(v), "out[%d,%d,%d] = %g", l, n, e, v);
                else
                    cr_expect(isfinite(v), "out[%d,%d,%d] = %g", l, n, e, v);
            }
    for (int n = 0; n < N_; n++)
        for (int l = 0; l < L_; l++)
            for (int s = 0; s < S_; s++) {
                float v = o.w[(n * L_ + l) * S_ + s];
                cr_expect(l == 1 && n == 0 ? isnan(v) : isfinite(v),
                          "weights[%d,%d,%d] = %g", n, l, s, v);
            }
    /* and the next call with clean input is clean */
    expect_forward_ok(&f, "NaN query");
    fx_fini(&f);
}

/* L = S = 2^32: the weights have 2^64 elements, more than size_t counts.
 * Sizes must not wrap (to 0, which would also skip the capacity check of
 * the host forward); only sizes are asked, so no data is read. */
Test(api, output_size_of_huge_lengths_overflows_instead_of_wrapping)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    int64_t big = (int64_t)1 << 32;
    for (int per_head = 0; per_head < 2; per_head++) {
        io_init(&o, &f);
        set_array(&o.a.query, o.q, MHA_F32, 3, big, 1, 8);
        set_array(&o.a.key, o.k, MHA_F32, 3, big, 1, 6);
        set_array(&o.a.value, o.v, MHA_F32, 3, big, 1, 10);
        o.a.average_attn_weights = !per_head;
        size_t n_out = 77, n_w = 77;
        mha_status st = mha_layer_output_size(f.layer, &o.a, &n_out, &n_w);
        cr_expect_eq(st, MHA_OVERFLOW,
                     "per_head %d: %s, output %zu, weights %zu floats",
                     per_head, mha_status_str(st), n_out, n_w);
        cr_expect(st != MHA_OK || n_w != 0,
                  "per_head %d: need_weights but 0 weights", per_head);
    }
    expect_forward_ok(&f, "huge lengths");
    fx_fini(&f);
}

/* ---- messages and logging ------------------------------------------------ */

/* mha.h: errmsg is "" after success. Each successful call (of those that
 * can fail with a message) follows a failure and must clear its message. */
Test(api, successful_calls_clear_the_previous_message)
{
    fx f;
    fx_init(&f, 0, 0);
    static io o;
    io_init(&o, &f);
    int64_t shape[1] = {4};
    float data[4] = {1, 2, 3, 4};
    mha_tensor *t = NULL;
    mha_device_info info;
    size_t n1, n2;
    struct {
        const char *name;
        int kind;
    } c[] = {
        {"mha_tensor_create", 0},     {"mha_tensor_upload", 1},
        {"mha_tensor_download", 2},   {"mha_layer_output_size", 3},
        {"mha_device_get_info", 4},   {"mha_layer_forward_host", 6},
    };
    cr_assert_eq(mha_tensor_create(f.dev, MHA_F32, 1, shape, &t), MHA_OK);
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_layer_config bad;
        mha_layer_config_init(&bad, 513, 8);
        mha_layer *none = NULL;
        cr_assert_eq(mha_layer_create(f.dev, &bad, &none),
                     MHA_INVALID_ARGUMENT);
        cr_assert_str_not_empty(mha_context_errmsg(f.ctx));
        mha_status st = MHA_OK;
        mha_tensor *t2 = NULL;
        switch (c[i].kind) {
        case 0: st = mha_tensor_create(f.dev, MHA_F32, 1, shape, &t2); break;
        case 1: st = mha_tensor_upload(t, data, sizeof data); break;
        case 2: st = mha_tensor_download(t, data, sizeof data); break;
        case 3: st = mha_layer_output_size(f.layer, &o.a, &n1, &n2); break;
        case 4: st = mha_device_get_info(f.ctx, 0, &info); break;
        case 6: st = mha_layer_forward_host(f.layer, &o.a); break;
        }
        cr_expect_eq(st, MHA_OK, "%s", c[i].name);
        cr_expect_str_empty(mha_context_errmsg(f.ctx),
                            "%s succeeded but the message still says \"%s\"",
                            c[i].name, mha_context_errmsg(f.ctx));
        mha_tensor_destroy(t2);
    }
    cr_expect_eq(mha_tensor_destroy(t), MHA_OK);
    fx_fini(&f);
}

typedef struct log_capture {
    int calls;
    char last[1024];
} log_capture;

static void capture_log(void *user, mha_log_level level, const char *msg)
{
    log_capture *c = user;
    (void)level;
    c->calls++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

Test(api, errors_reach_a_debug_log_callback)
{
    log_capture cap = {0, ""};
    mha_context_options o;
    mha_context_options_init(&o);
    o.log = capture_log;
    o.log_user = &cap;
    o.log_level = MHA_LOG_DEBUG;
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "gpu", NULL, &dev),
                 MHA_INVALID_ARGUMENT);
    cr_expect_gt(cap.calls, 0);
    cr_expect(contains(cap.last, "\"gpu\""), "last log line: %s", cap.last);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

static void redirect_stderr(void) { cr_redirect_stderr(); }

/* The library never prints unless asked: errors with no callback and no
 * MHA_LOG leave stderr empty. */
Test(api, errors_print_nothing_without_a_log, .init = redirect_stderr)
{
    unsetenv("MHA_LOG");
    fx f;
    fx_init(&f, 0, 0);
    mha_device *dev = NULL;
    mha_layer *layer = NULL;
    mha_layer_config bad;
    mha_layer_config_init(&bad, 513, 8);
    cr_expect_neq(mha_device_open(f.ctx, "gpu", NULL, &dev), MHA_OK);
    cr_expect_neq(mha_layer_create(f.dev, &bad, &layer), MHA_OK);
    cr_expect_neq(mha_layer_load_safetensors(f.layer, "/nonexistent", NULL),
                  MHA_OK);
    expect_forward_ok(&f, "silent errors");
    fx_fini(&f);
    fflush(stderr);
    cr_expect_stderr_eq_str("");
}

/* Device memory accounting: a tensor adds its bytes, destroying it gives
 * them back, the peak remembers, and a reset starts from the current use. */
Test(api, device_memory_usage_counts_tensors_and_peak)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    uint64_t base = 1, peak = 0, now = 0;
    cr_assert_eq(mha_device_memory_usage(dev, &base, NULL), MHA_OK);
    mha_tensor *t;
    const int64_t shape[2] = {100, 30};
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 2, shape, &t), MHA_OK);
    cr_assert_eq(mha_device_memory_usage(dev, &now, &peak), MHA_OK);
    cr_expect_eq(now, base + 100 * 30 * 4);
    cr_expect_eq(peak, now);
    cr_assert_eq(mha_tensor_destroy(t), MHA_OK);
    cr_assert_eq(mha_device_memory_usage(dev, &now, &peak), MHA_OK);
    cr_expect_eq(now, base);
    cr_expect_eq(peak, base + 100 * 30 * 4);
    cr_assert_eq(mha_device_reset_peak_memory(dev), MHA_OK);
    cr_assert_eq(mha_device_memory_usage(dev, NULL, &peak), MHA_OK);
    cr_expect_eq(peak, base);
    cr_expect_eq(mha_device_memory_usage(NULL, &now, &peak),
                 MHA_INVALID_ARGUMENT);
    cr_expect_eq(mha_device_reset_peak_memory(NULL), MHA_INVALID_ARGUMENT);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}
