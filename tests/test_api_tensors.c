/* test_api_tensors.c: device tensors (round trips, bad sizes, shapes and
 * dtypes, destroy order) and the device-tensor forward (matches the host
 * forward, bad arguments, tensors of another device). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

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
