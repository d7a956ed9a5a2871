/* test_attention.c: the public attention core, mha_attention, against the
 * PyTorch float64 fixtures of tests/gen_attention_fixtures.py, on every
 * device and CPU ISA, fp32 (1e-4) and fp16 (1e-2), with q/k/v as views of a
 * fused projection ([B,T,H,d]) and in [B,H,T,d]; tensor views and MHA_I32
 * tensors; and every bad input, each with its own status and message. A
 * device whose backend is not in test_core_required's list may answer
 * MHA_UNSUPPORTED (its backend has not landed the core yet). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "half.h"
#include "safetensors.h"

static const char *fixture_dir(void)
{
    const char *dir = getenv("MHA_ATTENTION_FIXTURE_DIR");
    return dir && *dir ? dir : MHA_FIXTURE_DIR "/attention";
}

/* ---- fixtures ---------------------------------------------------------------- */

typedef struct fixture {
    int64_t B, L, S, Hq, Hkv, d;
    float *q, *k, *v, *sinks, *bias; /* [B,L,Hq,d], [B,S,Hkv,d]... */
    int bias_nd;
    int64_t bias_shape[4];
    int32_t kv_lens[8];
    int has_lens;
    double *out; /* [B,L,Hq,d] */
    int causal, alibi;
    int64_t window;
    float softcap, scale;
} fixture;

static void load_fixture(mha_context *ctx, const char *name, fixture *fx)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.safetensors", fixture_dir(), name);
    mha_st_file *f = NULL;
    cr_assert_eq(mha_st_open(&ctx->host, path, &f), MHA_OK, "%s: %s", path,
                 mha_context_errmsg(ctx));
    memset(fx, 0, sizeof *fx);
    int nd;
    int64_t qs[4], ks[4];
    fx->q = fixture_floats(f, "q", &nd, qs);
    fx->k = fixture_floats(f, "k", &nd, ks);
    fx->v = fixture_floats(f, "v", NULL, NULL);
    fx->B = qs[0], fx->L = qs[1], fx->Hq = qs[2], fx->d = qs[3];
    fx->S = ks[1], fx->Hkv = ks[2];
    fx->sinks = fixture_floats(f, "sinks", NULL, NULL);
    fx->bias = fixture_floats(f, "bias", &fx->bias_nd, fx->bias_shape);
    const mha_st_entry *o = mha_st_find(f, "out");
    fx->out = malloc(o->count * sizeof *fx->out);
    cr_assert_eq(mha_st_read_raw(f, o, fx->out), MHA_OK);
    const mha_st_entry *l = mha_st_find(f, "kv_lens");
    if (l) {
        int64_t lens[8];
        cr_assert_leq(l->count, 8);
        cr_assert_eq(mha_st_read_raw(f, l, lens), MHA_OK);
        for (uint64_t b = 0; b < l->count; b++)
            fx->kv_lens[b] = (int32_t)lens[b];
        fx->has_lens = 1;
    }
    fx->causal = (int)fixture_meta(f, "causal");
    fx->alibi = (int)fixture_meta(f, "alibi");
    fx->window = (int64_t)fixture_meta(f, "window");
    fx->softcap = (float)fixture_meta(f, "softcap");
    fx->scale = (float)fixture_meta(f, "scale");
    mha_st_close(f);
}

static void free_fixture(fixture *fx)
{
    free(fx->q);
    free(fx->k);
    free(fx->v);
    free(fx->sinks);
    free(fx->bias);
    free(fx->out);
}

/* ---- device tensors ---------------------------------------------------------- */

enum { MODE_FUSED, MODE_BHTD }; /* q/k/v views of one buffer, or [B,H,T,d] */

static mha_tensor *make(mha_device *dev, mha_dtype dt, int nd,
                        const int64_t *shape)
{
    mha_tensor *t = NULL;
    mha_status st = mha_tensor_create(dev, dt, nd, shape, &t);
    return st == MHA_OK ? t : NULL;
}

/* n floats as the dtype's bytes (f16 rounded). */
static void *as_dtype(const float *x, size_t n, mha_dtype dt)
{
    if (dt == MHA_F32) {
        float *c = malloc(n * sizeof *c);
        memcpy(c, x, n * sizeof *c);
        return c;
    }
    uint16_t *h = malloc(n * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = mha_f32_to_f16(x[i]);
    return h;
}

static size_t esize(mha_dtype dt) { return dt == MHA_F16 ? 2 : 4; }

/* [B,T,H,d] -> [B,H,T,d] (or back with swap of T and H). */
static float *permute_th(const float *x, int64_t B, int64_t T, int64_t H,
                         int64_t d)
{
    float *y = malloc((size_t)(B * T * H * d) * sizeof *y);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                memcpy(y + ((b * H + h) * T + t) * d,
                       x + ((b * T + t) * H + h) * d,
                       (size_t)d * sizeof *y);
    return y;
}

/* Everything one run on a device holds. */
typedef struct run_env {
    mha_tensor *t[10];
    int n;
} run_env;

static mha_tensor *keep(run_env *r, mha_tensor *t)
{
    if (t)
        r->t[r->n++] = t;
    return t;
}

static void release(run_env *r)
{
    for (int i = r->n - 1; i >= 0; i--)
        cr_assert_eq(mha_tensor_destroy(r->t[i]), MHA_OK);
    r->n = 0;
}

/* Uploads host data x (n floats) converted to dt into t. */
static void upload(mha_tensor *t, const float *x, size_t n, mha_dtype dt)
{
    void *raw = as_dtype(x, n, dt);
    cr_assert_eq(mha_tensor_upload(t, raw, n * esize(dt)), MHA_OK);
    free(raw);
}

/* The [B, T, W] rows holding parts p[0..np) of [B, T, H_i, d] side by side,
 * and their views. */
static int fused_views(mha_device *dev, run_env *r, mha_dtype dt, int64_t B,
                       int64_t T, int64_t d, int np, const float *const *p,
                       const int64_t *heads, mha_tensor **views)
{
    int64_t W = 0;
    for (int i = 0; i < np; i++)
        W += heads[i] * d;
    int64_t shape[3] = {B, T, W};
    mha_tensor *base = keep(r, make(dev, dt, 3, shape));
    if (!base)
        return 0;
    float *rows = malloc((size_t)(B * T * W) * sizeof *rows);
    int64_t col = 0;
    for (int i = 0; i < np; i++) {
        int64_t w = heads[i] * d;
        for (int64_t bt = 0; bt < B * T; bt++)
            memcpy(rows + bt * W + col, p[i] + bt * w, (size_t)w * 4);
        int64_t vs[4] = {B, T, heads[i], d}, st[4] = {T * W, W, d, 1};
        cr_assert_eq(mha_tensor_view(base, (size_t)col, 4, vs, st, &views[i]),
                     MHA_OK);
        keep(r, views[i]);
        col += w;
    }
    upload(base, rows, (size_t)(B * T * W), dt);
    free(rows);
    return 1;
}

/* q, k, v and out of fx on dev in the mode; 0 when dt is refused. */
static int qkv_tensors(mha_device *dev, run_env *r, const fixture *fx,
                       int mode, mha_dtype dt, mha_attention_args *a)
{
    int64_t B = fx->B, L = fx->L, S = fx->S, d = fx->d;
    mha_tensor *v3[3];
    if (mode == MODE_FUSED && L == S) {
        const float *p[3] = {fx->q, fx->k, fx->v};
        const int64_t h[3] = {fx->Hq, fx->Hkv, fx->Hkv};
        if (!fused_views(dev, r, dt, B, L, d, 3, p, h, v3))
            return 0;
    } else if (mode == MODE_FUSED) { /* cross: q alone, k and v fused */
        const float *p[2] = {fx->k, fx->v}, *q[1] = {fx->q};
        const int64_t h[2] = {fx->Hkv, fx->Hkv};
        if (!fused_views(dev, r, dt, B, S, d, 2, p, h, v3 + 1) ||
            !fused_views(dev, r, dt, B, L, d, 1, q, &fx->Hq, v3))
            return 0;
    } else {
        const float *src[3] = {fx->q, fx->k, fx->v};
        int64_t T[3] = {L, S, S}, H[3] = {fx->Hq, fx->Hkv, fx->Hkv};
        for (int i = 0; i < 3; i++) {
            int64_t shape[4] = {B, H[i], T[i], d};
            v3[i] = keep(r, make(dev, dt, 4, shape));
            if (!v3[i])
                return 0;
            float *y = permute_th(src[i], B, T[i], H[i], d);
            upload(v3[i], y, (size_t)(B * T[i] * H[i] * d), dt);
            free(y);
        }
    }
    a->q = v3[0];
    a->k = v3[1];
    a->v = v3[2];
    int64_t os[4] = {B, L, fx->Hq, d};
    if (mode == MODE_BHTD) {
        os[1] = fx->Hq;
        os[2] = L;
    }
    a->out = keep(r, make(dev, dt, 4, os));
    a->layout = mode == MODE_BHTD ? MHA_LAYOUT_BHTD : MHA_LAYOUT_BTHD;
    return a->out != NULL;
}

/* sinks, bias and kv_lens of fx, and its options. */
static void extras(mha_device *dev, run_env *r, const fixture *fx,
                   mha_attention_args *a)
{
    int64_t hq = fx->Hq, b = fx->B;
    if (fx->sinks) {
        mha_tensor *t = keep(r, make(dev, MHA_F32, 1, &hq));
        upload(t, fx->sinks, (size_t)hq, MHA_F32);
        a->sinks = t;
    }
    if (fx->bias) {
        size_t n = 1;
        for (int i = 0; i < fx->bias_nd; i++)
            n *= (size_t)fx->bias_shape[i];
        mha_tensor *t = keep(r, make(dev, MHA_F32, fx->bias_nd,
                                     fx->bias_shape));
        upload(t, fx->bias, n, MHA_F32);
        a->bias = t;
    }
    if (fx->has_lens) {
        mha_tensor *t = keep(r, make(dev, MHA_I32, 1, &b));
        cr_assert_eq(mha_tensor_upload(t, fx->kv_lens, (size_t)b * 4), MHA_OK);
        a->kv_lens = t;
    }
    a->causal = fx->causal;
    a->alibi = fx->alibi;
    a->window = fx->window;
    a->softcap = fx->softcap;
    a->scale = fx->scale;
}

/* out read back as [B,L,Hq,d] floats. */
static float *read_out(const mha_attention_args *a, const fixture *fx,
                       mha_dtype dt, int mode)
{
    size_t n = (size_t)(fx->B * fx->L * fx->Hq * fx->d);
    void *raw = malloc(n * esize(dt));
    float *got = malloc(n * sizeof *got);
    cr_assert_eq(mha_tensor_download(a->out, raw, n * esize(dt)), MHA_OK);
    for (size_t i = 0; i < n; i++)
        got[i] = dt == MHA_F16 ? mha_f16_to_f32(((uint16_t *)raw)[i])
                               : ((float *)raw)[i];
    free(raw);
    if (mode != MODE_BHTD)
        return got;
    float *back = permute_th(got, fx->B, fx->Hq, fx->L, fx->d);
    free(got);
    return back;
}

static void check_result(const char *label, const char *name, const float *got,
                         const fixture *fx, mha_dtype dt)
{
    size_t n = (size_t)(fx->B * fx->L * fx->Hq * fx->d);
    double tol = dt == MHA_F16 ? 1e-2 : 1e-4, scale = 1.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(fx->out[i]) > scale)
            scale = fabs(fx->out[i]);
    test_diff df = test_compare(got, fx->out, n);
    cr_expect_eq(df.nonfinite_mismatch, 0, "%s %s %s: %zu NaN/Inf, first at "
                 "%zu", name, label, mha_dtype_name(dt),
                 df.nonfinite_mismatch, df.worst_nf);
    cr_expect_leq(df.max_abs, tol * scale, "%s on %s (%s): max abs error %g "
                  "at %zu (got %g want %g)", name, label,
                  dt == MHA_F16 ? "f16" : "f32", df.max_abs, df.worst,
                  got[df.worst], fx->out[df.worst]);
}

/* Runs fixture fx on td in the mode and dtype; returns 0 when the device
 * may and does decline it. */
static int run_on(mha_context *ctx, const test_device *td, const char *name,
                  const fixture *fx, int mode, mha_dtype dt)
{
    mha_device *dev = test_open(ctx, td);
    run_env r = {{NULL}, 0};
    mha_attention_args a;
    mha_attention_args_init(&a);
    mha_status st = MHA_UNSUPPORTED;
    if (qkv_tensors(dev, &r, fx, mode, dt, &a)) {
        extras(dev, &r, fx, &a);
        st = mha_attention(dev, &a);
    }
    int ran = st == MHA_OK;
    if (st == MHA_UNSUPPORTED && !test_core_required(td))
        cr_log_info("%s: skipped on %s (%s): %s", name, td->label,
                    mha_dtype_name(dt), mha_context_errmsg(ctx));
    else
        cr_assert_eq(st, MHA_OK, "%s on %s (%s): %s", name, td->label,
                     mha_dtype_name(dt), mha_context_errmsg(ctx));
    if (ran) {
        float *got = read_out(&a, fx, dt, mode);
        check_result(td->label, name, got, fx, dt);
        free(got);
    }
    release(&r);
    cr_assert_eq(mha_device_destroy(dev), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    return ran;
}

static void run_fixture(const char *name)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    fixture fx;
    load_fixture(ctx, name, &fx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++)
        for (int mode = MODE_FUSED; mode <= MODE_BHTD; mode++) {
            ran += run_on(ctx, &devs[i], name, &fx, mode, MHA_F32);
            ran += run_on(ctx, &devs[i], name, &fx, mode, MHA_F16);
        }
    free_fixture(&fx);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
    if (!ran)
        cr_skip_test("%s: every device declines it", name);
}

/* The fixtures tests/gen_attention_fixtures.py writes (its CASES). */
#define FIXTURES(X)                                                          \
    X(mha_plain) X(gqa_alibi_bottom_right) X(window_softcap)                 \
    X(mqa_sinks_kv_lens) X(bias_2d) X(bias_per_key) X(decode_long)           \
    X(head80_cross) X(head256) X(everything)

#define DEFINE_FIXTURE_TEST(name)                                            \
    Test(attention, name) { run_fixture(#name); }
FIXTURES(DEFINE_FIXTURE_TEST)

/* ---- one CPU device for the API's own checks ----------------------------------- */

typedef struct api_env {
    mha_context *ctx;
    mha_device *dev;
    run_env r;
} api_env;

static void api_open(api_env *e, const mha_context_options *o)
{
    memset(e, 0, sizeof *e);
    cr_assert_eq(mha_context_create(o, &e->ctx), MHA_OK);
    cr_assert_eq(mha_device_open(e->ctx, "cpu", NULL, &e->dev), MHA_OK);
}

static void api_close(api_env *e)
{
    release(&e->r);
    cr_assert_eq(mha_device_destroy(e->dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(e->ctx), MHA_OK);
}

static mha_tensor *api_tensor(api_env *e, mha_dtype dt, int nd,
                              int64_t a0, int64_t a1, int64_t a2, int64_t a3)
{
    const int64_t shape[4] = {a0, a1, a2, a3};
    mha_tensor *t = keep(&e->r, make(e->dev, dt, nd, shape));
    cr_assert(t, "create: %s", mha_context_errmsg(e->ctx));
    size_t bytes = dt == MHA_BOOL ? 1 : esize(dt);
    for (int i = 0; i < nd; i++)
        bytes *= (size_t)shape[i];
    void *zeros = calloc(1, bytes); /* defined contents: 0 */
    cr_assert_eq(mha_tensor_upload(t, zeros, bytes), MHA_OK);
    free(zeros);
    return t;
}

/* Valid args: B 2, L 3, S 5, Hq 4, Hkv 2, d 8 in [B, T, H, d]. */
static void valid_args(api_env *e, mha_attention_args *a)
{
    mha_attention_args_init(a);
    a->q = api_tensor(e, MHA_F32, 4, 2, 3, 4, 8);
    a->k = api_tensor(e, MHA_F32, 4, 2, 5, 2, 8);
    a->v = api_tensor(e, MHA_F32, 4, 2, 5, 2, 8);
    a->out = api_tensor(e, MHA_F32, 4, 2, 3, 4, 8);
}

static void lens_of(api_env *e, mha_attention_args *a, int32_t l0, int32_t l1)
{
    const int32_t lens[2] = {l0, l1};
    mha_tensor *t = api_tensor(e, MHA_I32, 1, 2, 0, 0, 0);
    cr_assert_eq(mha_tensor_upload(t, lens, sizeof lens), MHA_OK);
    a->kv_lens = t;
}

/* Each bad input: its status and a message naming the argument. */
enum {
    BAD_HEADS, BAD_HEAD_SIZE, BAD_LENS_OVER, BAD_LENS_NEGATIVE,
    BAD_LENS_DTYPE, BAD_SINKS_SHAPE, BAD_SINKS_DTYPE, BAD_Q_DTYPE,
    BAD_MIXED_DTYPE, BAD_WINDOW, BAD_Q_NULL, BAD_ALIBI_BOTH, BAD_BIAS_SHAPE,
    BAD_CAUSAL, BAD_OUT_SHAPE, BAD_LAYOUT, BAD_SOFTCAP, BAD_STRUCT_SIZE,
    BAD_COUNT
};

static const struct bad_case {
    const char *what;
    mha_status status;
    const char *message;
} bad_cases[BAD_COUNT] = {
    [BAD_HEADS] = {"Hq % Hkv != 0", MHA_SHAPE_MISMATCH,
                   "mha_attention: q has 4 heads and k 3; expected"},
    [BAD_HEAD_SIZE] = {"d 257", MHA_INVALID_ARGUMENT,
                       "mha_attention: head size d is 257; expected 1 to 256"},
    [BAD_LENS_OVER] = {"kv_lens > S", MHA_INVALID_ARGUMENT,
                       "mha_attention: kv_lens[1] is 6; expected 0 to 5"},
    [BAD_LENS_NEGATIVE] = {"kv_lens < 0", MHA_INVALID_ARGUMENT,
                           "mha_attention: kv_lens[0] is -1; expected 0 to 5"},
    [BAD_LENS_DTYPE] = {"kv_lens f32", MHA_DTYPE_MISMATCH,
                        "mha_attention: kv_lens has dtype f32; expected i32"},
    [BAD_SINKS_SHAPE] = {"sinks [5]", MHA_SHAPE_MISMATCH,
                         "mha_attention: sinks has shape [5]; expected [4]"},
    [BAD_SINKS_DTYPE] = {"sinks i32", MHA_DTYPE_MISMATCH,
                         "mha_attention: sinks has dtype i32; expected f32"},
    [BAD_Q_DTYPE] = {"q i32", MHA_DTYPE_MISMATCH,
                     "mha_attention: q has dtype i32; expected f32 or f16"},
    [BAD_MIXED_DTYPE] = {"k f16, q f32", MHA_DTYPE_MISMATCH,
                         "mha_attention: k has dtype f16; expected q's, f32"},
    [BAD_WINDOW] = {"window -1", MHA_INVALID_ARGUMENT,
                    "mha_attention: window is -1; expected 0"},
    [BAD_Q_NULL] = {"q NULL", MHA_INVALID_ARGUMENT,
                    "mha_attention: q is NULL"},
    [BAD_ALIBI_BOTH] = {"alibi and slopes", MHA_INVALID_ARGUMENT,
                        "mha_attention: alibi is 1 and alibi_slopes is set"},
    [BAD_BIAS_SHAPE] = {"bias [3,4]", MHA_SHAPE_MISMATCH,
                        "mha_attention: bias has shape [3,4]; expected one "
                        "that broadcasts to [2,4,3,5]"},
    [BAD_CAUSAL] = {"causal 3", MHA_INVALID_ARGUMENT,
                    "mha_attention: causal is 3"},
    [BAD_OUT_SHAPE] = {"out [2,3,4,9]", MHA_SHAPE_MISMATCH,
                       "mha_attention: out has shape [2,3,4,9]; expected "
                       "[2,3,4,8]"},
    [BAD_LAYOUT] = {"layout 2", MHA_INVALID_ARGUMENT,
                    "mha_attention: layout is 2"},
    [BAD_SOFTCAP] = {"softcap -1", MHA_INVALID_ARGUMENT,
                     "mha_attention: softcap is -1"},
    [BAD_STRUCT_SIZE] = {"struct_size 0", MHA_INVALID_ARGUMENT,
                         "mha_attention: mha_attention_args.struct_size is 0"},
};

static void break_args(api_env *e, int which, mha_attention_args *a)
{
    switch (which) {
    case BAD_HEADS:
        a->k = api_tensor(e, MHA_F32, 4, 2, 5, 3, 8);
        a->v = api_tensor(e, MHA_F32, 4, 2, 5, 3, 8);
        break;
    case BAD_HEAD_SIZE:
        a->q = a->out = api_tensor(e, MHA_F32, 4, 2, 3, 4, 257);
        a->k = a->v = api_tensor(e, MHA_F32, 4, 2, 5, 2, 257);
        break;
    case BAD_LENS_OVER: lens_of(e, a, 5, 6); break;
    case BAD_LENS_NEGATIVE: lens_of(e, a, -1, 5); break;
    case BAD_LENS_DTYPE: a->kv_lens = api_tensor(e, MHA_F32, 1, 2, 0, 0, 0); break;
    case BAD_SINKS_SHAPE: a->sinks = api_tensor(e, MHA_F32, 1, 5, 0, 0, 0); break;
    case BAD_SINKS_DTYPE: a->sinks = api_tensor(e, MHA_I32, 1, 4, 0, 0, 0); break;
    case BAD_Q_DTYPE: a->q = api_tensor(e, MHA_I32, 4, 2, 3, 4, 8); break;
    case BAD_MIXED_DTYPE: a->k = api_tensor(e, MHA_F16, 4, 2, 5, 2, 8); break;
    case BAD_WINDOW: a->window = -1; break;
    case BAD_Q_NULL: a->q = NULL; break;
    case BAD_ALIBI_BOTH:
        a->alibi = 1;
        a->alibi_slopes = api_tensor(e, MHA_F32, 1, 4, 0, 0, 0);
        break;
    case BAD_BIAS_SHAPE: a->bias = api_tensor(e, MHA_F32, 2, 3, 4, 0, 0); break;
    case BAD_CAUSAL: a->causal = 3; break;
    case BAD_OUT_SHAPE: a->out = api_tensor(e, MHA_F32, 4, 2, 3, 4, 9); break;
    case BAD_LAYOUT: a->layout = 2; break;
    case BAD_SOFTCAP: a->softcap = -1.0f; break;
    case BAD_STRUCT_SIZE: a->struct_size = 0; break;
    }
}

Test(attention, bad_inputs)
{
    for (int which = 0; which < BAD_COUNT; which++) {
        api_env e;
        api_open(&e, NULL);
        mha_attention_args a;
        valid_args(&e, &a);
        cr_assert_eq(mha_attention(e.dev, &a), MHA_OK, "valid args: %s",
                     mha_context_errmsg(e.ctx));
        break_args(&e, which, &a);
        const struct bad_case *c = &bad_cases[which];
        cr_expect_eq(mha_attention(e.dev, &a), c->status, "%s: got \"%s\"",
                     c->what, mha_context_errmsg(e.ctx));
        cr_expect(strstr(mha_context_errmsg(e.ctx), c->message) != NULL,
                  "%s: message \"%s\" lacks \"%s\"", c->what,
                  mha_context_errmsg(e.ctx), c->message);
        api_close(&e);
    }
}

/* ---- out sharing memory with an input ------------------------------------------ */

enum { AL_T = 64, AL_H = 2, AL_D = 8, AL_HD = AL_H * AL_D, AL_W = 4 * AL_HD };

/* A q-shaped view ([1, T, H, d], or [1, H, T, d] for BHTD) at offset off
 * of a buffer of AL_W-wide token rows, the tokens row_step rows apart. */
static mha_tensor *al_view(run_env *r, mha_tensor *base, int layout,
                           int64_t off, int64_t row_step)
{
    const int64_t bthd[4] = {1, AL_T, AL_H, AL_D},
                  bhtd[4] = {1, AL_H, AL_T, AL_D};
    const int64_t st_bthd[4] = {2 * AL_T * AL_W, row_step * AL_W, AL_D, 1},
                  st_bhtd[4] = {2 * AL_T * AL_W, AL_D, row_step * AL_W, 1};
    mha_tensor *v = NULL;
    cr_assert_eq(mha_tensor_view(base, (size_t)off, 4,
                                 layout ? bhtd : bthd,
                                 layout ? st_bhtd : st_bthd, &v),
                 MHA_OK);
    return keep(r, v);
}

static void al_expect_refused(mha_context *ctx, mha_device *dev,
                              const test_device *td, mha_attention_args *a,
                              mha_tensor *out, const char *needle)
{
    a->out = out;
    cr_expect_eq(mha_attention(dev, a), MHA_INVALID_ARGUMENT, "%s: %s",
                 td->label, needle);
    cr_expect(strstr(mha_context_errmsg(ctx), needle), "%s: %s", td->label,
              mha_context_errmsg(ctx));
}

/* On td, in layout: q, k, v and a fourth slot as column views of one
 * fused buffer of 2T token rows (q, k, v over the first T). out in the
 * fourth slot (apart from every input) and out = q itself give the result
 * of a separate out; out = k, out = v, out straddling q and k, and out
 * over k's columns of the odd rows (apart only if the row pitch were taken
 * from out's strides alone) are refused, naming the input, as the GPU
 * backends would otherwise return rows read after another tile overwrote
 * them. */
static void aliasing_in(mha_context *ctx, mha_device *dev,
                        const test_device *td, int layout)
{
    run_env r;
    memset(&r, 0, sizeof r);
    const int64_t n = 2 * AL_T * AL_W, fshape[3] = {1, 2 * AL_T, AL_W};
    const int64_t oshape[4] = {1, layout ? AL_H : AL_T, layout ? AL_T : AL_H,
                               AL_D};
    mha_tensor *base = keep(&r, make(dev, MHA_F32, 3, fshape));
    mha_tensor *sep = keep(&r, make(dev, MHA_F32, 4, oshape));
    cr_assert(base && sep, "%s: %s", td->label, mha_context_errmsg(ctx));
    float *x = malloc((size_t)n * sizeof *x), *got = malloc(sizeof *x * n);
    float want[AL_T * AL_HD];
    test_rng rng = {7};
    for (int64_t i = 0; i < n; i++)
        x[i] = test_normal(&rng);
    mha_attention_args a;
    mha_attention_args_init(&a);
    a.layout = layout;
    a.q = al_view(&r, base, layout, 0, 1);
    a.k = al_view(&r, base, layout, AL_HD, 1);
    a.v = al_view(&r, base, layout, 2 * AL_HD, 1);
    a.causal = MHA_CAUSAL_TOP_LEFT;
    mha_tensor *slots[2] = {al_view(&r, base, layout, 3 * AL_HD, 1),
                            (mha_tensor *)a.q};
    cr_assert_eq(mha_tensor_upload(base, x, sizeof *x * n), MHA_OK);
    a.out = sep;
    cr_assert_eq(mha_attention(dev, &a), MHA_OK, "%s: %s", td->label,
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_tensor_download(sep, want, sizeof want), MHA_OK);
    for (int s = 0; s < 2; s++) {
        cr_assert_eq(mha_tensor_upload(base, x, sizeof *x * n), MHA_OK);
        a.out = slots[s];
        cr_assert_eq(mha_attention(dev, &a), MHA_OK, "%s, slot %d: %s",
                     td->label, s, mha_context_errmsg(ctx));
        cr_assert_eq(mha_tensor_download(base, got, sizeof *x * n), MHA_OK);
        const int64_t col = s == 0 ? 3 * AL_HD : 0;
        for (int t = 0; t < AL_T; t++)
            for (int h = 0; h < AL_H; h++)
                for (int c = 0; c < AL_D; c++) {
                    int64_t sep_at = layout ? (h * AL_T + t) * AL_D + c
                                            : (t * AL_H + h) * AL_D + c;
                    cr_assert_float_eq(got[t * AL_W + col + h * AL_D + c],
                                       want[sep_at], 1e-6f,
                                       "%s, layout %d, out %s: token %d",
                                       td->label, layout,
                                       s ? "= q" : "apart", t);
                }
    }
    al_expect_refused(ctx, dev, td, &a, (mha_tensor *)a.k,
                      "out shares memory with k");
    al_expect_refused(ctx, dev, td, &a, (mha_tensor *)a.v,
                      "out shares memory with v");
    al_expect_refused(ctx, dev, td, &a, al_view(&r, base, layout, AL_D, 1),
                      "out shares memory with q but is not q itself");
    al_expect_refused(ctx, dev, td, &a,
                      al_view(&r, base, layout, AL_W + AL_HD, 2),
                      "out shares memory with k");
    free(x);
    free(got);
    release(&r);
}

static void aliasing_on(mha_context *ctx, const test_device *td)
{
    mha_device *dev = test_open(ctx, td);
    aliasing_in(ctx, dev, td, MHA_LAYOUT_BTHD);
    aliasing_in(ctx, dev, td, MHA_LAYOUT_BHTD);
    cr_assert_eq(mha_device_destroy(dev), MHA_OK);
}

Test(attention, out_sharing_an_input_is_refused_out_equal_q_runs)
{
    test_each_device(aliasing_on);
}

/* ---- views and tensors ----------------------------------------------------------- */

Test(attention, view_bounds_and_lifetime)
{
    api_env e;
    api_open(&e, NULL);
    mha_tensor *base = api_tensor(&e, MHA_F32, 2, 4, 6, 0, 0), *v = NULL;
    const int64_t shape[2] = {2, 3}, strides[2] = {6, 2};
    /* the last element is 17 + 3*6 + ... : offset 13 reaches 13+6+4 = 23 */
    cr_assert_eq(mha_tensor_view(base, 13, 2, shape, strides, &v), MHA_OK,
                 "%s", mha_context_errmsg(e.ctx));
    mha_tensor *bad = NULL;
    cr_expect_eq(mha_tensor_view(base, 14, 2, shape, strides, &bad),
                 MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(e.ctx), "mha_tensor_view: the view "
                     "reaches element 24") != NULL, "%s",
              mha_context_errmsg(e.ctx));
    const int64_t zero[2] = {2, 0};
    cr_expect_eq(mha_tensor_view(base, 0, 2, zero, NULL, &bad),
                 MHA_INVALID_ARGUMENT, "a 0 dimension (d = 0)");
    const int64_t neg[2] = {6, -1};
    cr_expect_eq(mha_tensor_view(base, 0, 2, shape, neg, &bad),
                 MHA_INVALID_ARGUMENT);
    cr_expect_null(bad);
    /* the base outlives its views */
    cr_expect_eq(mha_tensor_destroy(base), MHA_BAD_STATE);
    cr_expect(strstr(mha_context_errmsg(e.ctx), "1 view(s)") != NULL);
    /* a strided view is read through its base */
    float buf[6];
    cr_expect_eq(mha_tensor_download(v, buf, sizeof buf), MHA_UNSUPPORTED);
    cr_assert_eq(mha_tensor_destroy(v), MHA_OK);
    api_close(&e);
}

Test(attention, contiguous_view_and_i32_transfer)
{
    api_env e;
    api_open(&e, NULL);
    mha_tensor *base = api_tensor(&e, MHA_I32, 1, 8, 0, 0, 0), *v = NULL;
    const int32_t all[8] = {0, 1, 2, 3, 4, 5, 6, 7}, part[3] = {-5, 40, 9};
    cr_assert_eq(mha_tensor_upload(base, all, sizeof all), MHA_OK);
    const int64_t n = 3;
    cr_assert_eq(mha_tensor_view(base, 4, 1, &n, NULL, &v), MHA_OK);
    keep(&e.r, v);
    cr_assert_eq(mha_tensor_upload(v, part, sizeof part), MHA_OK);
    int32_t got[8];
    cr_assert_eq(mha_tensor_download(base, got, sizeof got), MHA_OK);
    const int32_t want[8] = {0, 1, 2, 3, -5, 40, 9, 7};
    cr_expect_arr_eq(got, want, sizeof want);
    api_close(&e);
}

/* f16 tensors are made only where a forward takes them. */
Test(attention, f16_refused_where_unused)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        mha_device_info info;
        cr_assert_eq(mha_device_info_of(dev, &info), MHA_OK);
        int usable = (info.features & MHA_FEATURE_FP16_STORAGE) ||
                     strcmp(info.backend, "cpu") == 0;
        const int64_t shape[1] = {4};
        mha_tensor *t = NULL;
        cr_expect_eq(mha_tensor_create(dev, MHA_F16, 1, shape, &t),
                     usable ? MHA_OK : MHA_UNSUPPORTED, "%s: %s",
                     devs[i].label, mha_context_errmsg(ctx));
        mha_tensor_destroy(t);
        mha_device_destroy(dev);
    }
    mha_context_destroy(ctx);
}

/* ---- no host allocation on a repeated call ---------------------------------- */

static void *counting_malloc(void *user, size_t size)
{
    ++*(int *)user;
    return malloc(size);
}

static void counting_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

Test(attention, repeat_allocates_nothing)
{
    int calls = 0;
    mha_allocator alloc = {counting_malloc, counting_free, &calls};
    mha_context_options o;
    mha_context_options_init(&o);
    o.allocator = &alloc;
    api_env e;
    api_open(&e, &o);
    mha_attention_args a;
    valid_args(&e, &a);
    a.alibi = 1;
    a.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    lens_of(&e, &a, 5, 3);
    cr_assert_eq(mha_attention(e.dev, &a), MHA_OK, "%s",
                 mha_context_errmsg(e.ctx));
    int after_first = calls;
    for (int i = 0; i < 3; i++)
        cr_assert_eq(mha_attention(e.dev, &a), MHA_OK);
    cr_expect_eq(calls, after_first, "%d host allocations in 3 repeated "
                 "calls", calls - after_first);
    api_close(&e);
}
