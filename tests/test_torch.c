/* test_torch.c: whole forwards against torch.nn.MultiheadAttention. Each
 * fixture (tests/fixtures, made by gen_fixtures.py) holds a module's
 * state_dict under "mha.", the inputs, PyTorch's output and weights, and the
 * configuration; every case runs on every device and CPU ISA, through the
 * host-memory forward and through device tensors. A self-attention
 * fixture's device forward passes one tensor as query, key and value (the
 * packed Q/K/V projection), its host forward three arrays (three
 * projections), so both paths meet PyTorch. MHA_FIXTURE_DIR points
 * the suite at freshly generated fixtures (the live check in CI). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "fixtures/cases.h"
#include "safetensors.h"

typedef struct fixture {
    mha_context *ctx;
    mha_st_file *file;
    char path[512];
    mha_layer_config cfg;
    int is_causal, need_weights, average;
    double tolerance;
    mha_host_array in[5]; /* query, key, value, key_padding_mask, attn_mask */
    float *expected_out, *expected_w;
    size_t out_count, w_count;
} fixture;

static const char *const input_names[5] = {"query", "key", "value",
                                           "key_padding_mask", "attn_mask"};

static long meta_long(const fixture *f, const char *key)
{
    const char *v = mha_st_metadata(f->file, key);
    cr_assert_not_null(v, "%s: metadata %s missing", f->path, key);
    return strtol(v, NULL, 10);
}

static float *read_floats(fixture *f, const char *name, size_t *count)
{
    const mha_st_entry *e = mha_st_find(f->file, name);
    cr_assert_not_null(e, "%s: no tensor %s", f->path, name);
    float *data = malloc((size_t)e->count * sizeof *data + 1);
    cr_assert_eq(mha_st_read_f32(f->file, e, data), MHA_OK);
    *count = (size_t)e->count;
    return data;
}

static void read_input(fixture *f, int i)
{
    mha_host_array *a = &f->in[i];
    memset(a, 0, sizeof *a);
    const mha_st_entry *e = mha_st_find(f->file, input_names[i]);
    if (!e)
        return;
    cr_assert(e->ndim <= MHA_MAX_DIMS);
    a->ndim = e->ndim;
    memcpy(a->shape, e->shape, (size_t)e->ndim * sizeof *a->shape);
    if (strcmp(e->dtype, "BOOL") == 0) {
        void *bytes = malloc((size_t)e->count + 1);
        cr_assert_eq(mha_st_read_raw(f->file, e, bytes), MHA_OK);
        a->data = bytes;
        a->dtype = MHA_BOOL;
    } else {
        size_t n;
        a->data = read_floats(f, input_names[i], &n);
        a->dtype = MHA_F32;
    }
}

static void load_fixture(fixture *f, const char *name)
{
    memset(f, 0, sizeof *f);
    const char *dir = getenv("MHA_FIXTURE_DIR");
    snprintf(f->path, sizeof f->path, "%s/%s.safetensors",
             dir && *dir ? dir : MHA_FIXTURE_DIR, name);
    cr_assert_eq(mha_context_create(NULL, &f->ctx), MHA_OK);
    test_require_backends(f->ctx);
    cr_assert_eq(mha_st_open(&f->ctx->host, f->path, &f->file), MHA_OK,
                 "%s", mha_context_errmsg(f->ctx));
    mha_layer_config_init(&f->cfg, meta_long(f, "embed_dim"),
                          meta_long(f, "num_heads"));
    f->cfg.bias = (int)meta_long(f, "bias");
    f->cfg.add_bias_kv = (int)meta_long(f, "add_bias_kv");
    f->cfg.add_zero_attn = (int)meta_long(f, "add_zero_attn");
    f->cfg.kdim = meta_long(f, "kdim");
    f->cfg.vdim = meta_long(f, "vdim");
    f->cfg.batch_first = (int)meta_long(f, "batch_first");
    f->is_causal = (int)meta_long(f, "is_causal");
    f->need_weights = (int)meta_long(f, "need_weights");
    f->average = (int)meta_long(f, "average_attn_weights");
    f->tolerance = strtod(mha_st_metadata(f->file, "tolerance"), NULL);
    for (int i = 0; i < 5; i++)
        read_input(f, i);
    f->expected_out = read_floats(f, "output", &f->out_count);
    if (f->need_weights)
        f->expected_w = read_floats(f, "weights", &f->w_count);
}

static void free_fixture(fixture *f)
{
    for (int i = 0; i < 5; i++)
        free((void *)f->in[i].data);
    free(f->expected_out);
    free(f->expected_w);
    mha_st_close(f->file);
    mha_context_destroy(f->ctx);
}

static void expect_close(const fixture *f, const char *what, const char *dev,
                         const char *path_kind, const float *got,
                         const float *want, size_t n)
{
    double *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++)
        w[i] = want[i];
    test_diff d = test_compare(got, w, n);
    cr_expect_eq(d.nonfinite_mismatch, 0,
                 "%s %s on %s (%s): %zu NaN/Inf mismatches, first at %zu: got "
                 "%g want %g",
                 f->path, what, dev, path_kind, d.nonfinite_mismatch,
                 d.worst_nf, got[d.worst_nf], want[d.worst_nf]);
    cr_expect_leq(d.max_abs, f->tolerance,
                  "%s %s on %s (%s): max abs error %g > %g at %zu (got %g "
                  "want %g)",
                  f->path, what, dev, path_kind, d.max_abs, f->tolerance,
                  d.worst, got[d.worst], want[d.worst]);
    free(w);
}

static mha_layer *make_layer(fixture *f, mha_device *dev, const char *label)
{
    mha_layer *layer;
    cr_assert_eq(mha_layer_create(dev, &f->cfg, &layer), MHA_OK, "%s: %s",
                 label, mha_context_errmsg(f->ctx));
    cr_assert_eq(mha_layer_load_safetensors(layer, f->path, "mha."), MHA_OK,
                 "%s: %s", label, mha_context_errmsg(f->ctx));
    return layer;
}

static void run_host(fixture *f, mha_layer *layer, const char *label)
{
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = f->in[0], a.key = f->in[1], a.value = f->in[2];
    a.key_padding_mask = f->in[3], a.attn_mask = f->in[4];
    a.is_causal = f->is_causal;
    a.need_weights = f->need_weights;
    a.average_attn_weights = f->average;
    size_t out_n, w_n;
    cr_assert_eq(mha_layer_output_size(layer, &a, &out_n, &w_n), MHA_OK,
                 "%s: %s", label, mha_context_errmsg(f->ctx));
    cr_assert_eq(out_n, f->out_count, "%s: output size", label);
    cr_assert_eq(w_n, f->w_count, "%s: weights size", label);
    float *out = malloc(out_n * sizeof *out), *w = malloc((w_n + 1) * sizeof *w);
    a.output = out, a.output_count = out_n;
    a.weights = w, a.weights_count = w_n;
    for (int rep = 0; rep < 2; rep++) { /* the second reuses the plan */
        cr_assert_eq(mha_layer_forward_host(layer, &a), MHA_OK, "%s: %s",
                     label, mha_context_errmsg(f->ctx));
        expect_close(f, "output", label, rep ? "host, again" : "host", out,
                     f->expected_out, out_n);
        if (f->need_weights)
            expect_close(f, "weights", label, "host", w, f->expected_w, w_n);
    }
    free(out);
    free(w);
}

static mha_tensor *device_input(mha_device *dev, const mha_host_array *a)
{
    if (!a->data)
        return NULL;
    mha_tensor *t;
    cr_assert_eq(mha_tensor_create(dev, a->dtype, a->ndim, a->shape, &t),
                 MHA_OK);
    size_t n = 1;
    for (int i = 0; i < a->ndim; i++)
        n *= (size_t)a->shape[i];
    cr_assert_eq(mha_tensor_upload(t, a->data,
                                   n * (a->dtype == MHA_BOOL ? 1 : 4)),
                 MHA_OK);
    return t;
}

/* Whether array b holds a's values in a's shape (self-attention's key and
 * value). */
static int same_values(const mha_host_array *a, const mha_host_array *b)
{
    size_t n = 1;
    if (!a->data || !b->data || a->dtype != b->dtype || a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++) {
        if (a->shape[i] != b->shape[i])
            return 0;
        n *= (size_t)a->shape[i];
    }
    return memcmp(a->data, b->data, n * 4) == 0;
}

/* The same forward through device tensors, results shaped as PyTorch's;
 * self-attention's key and value are the query tensor itself. */
static void run_device(fixture *f, mha_device *dev, mha_layer *layer,
                       const char *label)
{
    mha_tensor *t[5];
    int self = same_values(&f->in[0], &f->in[1]) &&
               same_values(&f->in[0], &f->in[2]);
    for (int i = 0; i < 5; i++)
        t[i] = self && (i == 1 || i == 2) ? NULL
                                          : device_input(dev, &f->in[i]);
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = t[0], a.key = self ? t[0] : t[1], a.value = self ? t[0] : t[2];
    a.key_padding_mask = t[3], a.attn_mask = t[4];
    a.is_causal = f->is_causal;
    a.need_weights = f->need_weights;
    a.average_attn_weights = f->average;
    const mha_st_entry *eo = mha_st_find(f->file, "output");
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, eo->ndim, eo->shape,
                                   &a.output), MHA_OK);
    if (f->need_weights) {
        const mha_st_entry *ew = mha_st_find(f->file, "weights");
        cr_assert_eq(mha_tensor_create(dev, MHA_F32, ew->ndim, ew->shape,
                                       &a.weights), MHA_OK);
    }
    cr_assert_eq(mha_layer_forward(layer, &a), MHA_OK, "%s: %s", label,
                 mha_context_errmsg(f->ctx));
    float *got = malloc((f->out_count + f->w_count) * sizeof *got);
    cr_assert_eq(mha_tensor_download(a.output, got, f->out_count * 4), MHA_OK);
    expect_close(f, "output", label, "device tensors", got, f->expected_out,
                 f->out_count);
    if (f->need_weights) {
        cr_assert_eq(mha_tensor_download(a.weights, got, f->w_count * 4),
                     MHA_OK);
        expect_close(f, "weights", label, "device tensors", got,
                     f->expected_w, f->w_count);
    }
    free(got);
    mha_tensor_destroy(a.output);
    mha_tensor_destroy(a.weights);
    for (int i = 0; i < 5; i++)
        mha_tensor_destroy(t[i]);
}

/* One device, one storage dtype. fp16 storage is held to docs/design.md's 1e-2
 * on unit-scale data, the fp32 tolerance scaled by 100 in general. */
static void run_on_device(fixture *f, const test_device *td, mha_dtype dtype)
{
    char label[64];
    snprintf(label, sizeof label, "%.48s/%s", td->label,
             dtype == MHA_F16 ? "f16" : "f32");
    double tolerance = f->tolerance;
    f->cfg.dtype = dtype;
    if (dtype == MHA_F16)
        f->tolerance *= 100.0;
    mha_device *dev = test_open(f->ctx, td);
    mha_layer *layer = make_layer(f, dev, label);
    run_host(f, layer, label);
    run_device(f, dev, layer, label);
    cr_assert_eq(mha_layer_destroy(layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(dev), MHA_OK, "%s",
                 mha_context_errmsg(f->ctx));
    f->tolerance = tolerance;
    f->cfg.dtype = MHA_F32;
}

static void run_fixture(const char *name)
{
    fixture f;
    load_fixture(&f, name);
    test_device devs[TEST_MAX_DEVICES];
    int n = test_devices(f.ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(f.ctx, devs[i].index, &info), MHA_OK);
        run_on_device(&f, &devs[i], MHA_F32);
        if (info.features & MHA_FEATURE_FP16_STORAGE)
            run_on_device(&f, &devs[i], MHA_F16);
    }
    free_fixture(&f);
}

#define FIXTURE_TEST(name) Test(torch, name) { run_fixture(#name); }
MHA_FIXTURE_CASES(FIXTURE_TEST)
