/* test_safetensors.c: mha_layer_load_safetensors on files this suite writes
 * itself (8-byte little-endian header length, JSON header, data) into a
 * mkdtemp folder: good files in every float dtype and with a prefix, key
 * errors that must name the key, a table of corrupt files that must fail
 * cleanly, and 1,000 seeded random mutations of a good file. Every context
 * uses a guarded allocator that counts live blocks and checks a canary past
 * each one, so leaks and heap overruns fail the test without a sanitizer.
 * After every failed load the layer must still hold its previous weights. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mha.h"

/* ---- a guarded, counting allocator --------------------------------------- */

#define GUARD 16
#define GUARD_BYTE 0xA5

typedef struct guard_stats {
    long live;
    int broken; /* a canary past some block was overwritten */
} guard_stats;

static void *guard_malloc(void *user, size_t size)
{
    guard_stats *g = user;
    unsigned char *p = malloc(GUARD + size + GUARD);
    if (!p)
        return NULL;
    memcpy(p, &size, sizeof size);
    memset(p + GUARD + size, GUARD_BYTE, GUARD);
    g->live++;
    return p + GUARD;
}

static void guard_free(void *user, void *ptr)
{
    guard_stats *g = user;
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)ptr - GUARD;
    size_t size;
    memcpy(&size, p, sizeof size);
    for (size_t i = 0; i < GUARD; i++)
        g->broken |= p[GUARD + size + i] != GUARD_BYTE;
    g->live--;
    free(p);
}

/* ---- files --------------------------------------------------------------- */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mha-st-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static const char *tmp_path(const char *name)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    return path;
}

static void remove_tmpdir(void)
{
    static const char *const names[] = {"f.safetensors", "g.safetensors",
                                        "dir", "locked.safetensors"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *p = tmp_path(names[i]);
        chmod(p, 0700);
        if (remove(p) != 0 && access(p, F_OK) == 0)
            rmdir(p);
    }
    rmdir(tmpdir);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(p, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

/* A byte buffer that grows. */
typedef struct bytes {
    unsigned char *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_str(bytes *b, const char *s) { put(b, s, strlen(s)); }

static void put_u64le(bytes *b, uint64_t v)
{
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    put(b, le, 8);
}

/* A file: header length, the JSON text as given, then data. */
static void write_raw(const char *path, const char *json, const void *data,
                      size_t data_len)
{
    bytes b = {0};
    put_u64le(&b, strlen(json));
    put_str(&b, json);
    if (data_len)
        put(&b, data, data_len);
    write_bytes(path, b.p, b.n);
    free(b.p);
}

/* ---- tensors in safetensors dtypes --------------------------------------- */

typedef struct st_tensor {
    const char *name;
    const char *dtype; /* "F32", "F16", "BF16", "F64", "I64", "BOOL", ... */
    int ndim;
    int64_t shape[4];
    const float *values; /* converted to dtype; NULL: zero bytes */
} st_tensor;

static unsigned dtype_bytes(const char *dtype)
{
    if (!strcmp(dtype, "F64") || !strcmp(dtype, "I64"))
        return 8;
    if (!strcmp(dtype, "F16") || !strcmp(dtype, "BF16") ||
        !strcmp(dtype, "I16") || !strcmp(dtype, "U16"))
        return 2;
    if (!strcmp(dtype, "BOOL") || !strcmp(dtype, "U8") ||
        !strcmp(dtype, "I8"))
        return 1;
    return 4;
}

static size_t elems(const st_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->shape[i];
    return n;
}

/* f32 -> f16 bits for values that f16 holds exactly (normal or zero). */
static uint16_t to_f16(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    int exp = (int)((u >> 23) & 0xff);
    if (exp == 0)
        return sign;
    return (uint16_t)(sign | ((uint32_t)(exp - 127 + 15) << 10) |
                      ((u >> 13) & 0x3ff));
}

static void put_value(bytes *b, const char *dtype, float v)
{
    unsigned char le[8];
    uint64_t u = 0;
    unsigned size = dtype_bytes(dtype);
    if (!strcmp(dtype, "F32")) {
        uint32_t w;
        memcpy(&w, &v, 4);
        u = w;
    } else if (!strcmp(dtype, "F64")) {
        double d = v;
        memcpy(&u, &d, 8);
    } else if (!strcmp(dtype, "F16")) {
        u = to_f16(v);
    } else if (!strcmp(dtype, "BF16")) {
        uint32_t w;
        memcpy(&w, &v, 4);
        u = w >> 16;
    } else {
        u = (uint64_t)(int64_t)v;
    }
    for (unsigned i = 0; i < size; i++)
        le[i] = (unsigned char)(u >> (8 * i));
    put(b, le, size);
}

/* Writes a well-formed file of the tensors, with "__metadata__" first. */
static void write_st(const char *path, const st_tensor *t, int n)
{
    bytes json = {0}, data = {0};
    put_str(&json, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        size_t begin = data.n, count = elems(&t[i]);
        for (size_t k = 0; k < count; k++)
            put_value(&data, t[i].dtype, t[i].values ? t[i].values[k] : 0);
        char entry[512];
        int len = snprintf(entry, sizeof entry,
                           ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name,
                           t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            len += snprintf(entry + len, sizeof entry - (size_t)len, "%s%lld",
                            d ? "," : "", (long long)t[i].shape[d]);
        snprintf(entry + len, sizeof entry - (size_t)len,
                 "],\"data_offsets\":[%zu,%zu]}", begin, data.n);
        put_str(&json, entry);
    }
    put_str(&json, "}");
    while (json.n % 8)
        put_str(&json, " ");
    bytes file = {0};
    put_u64le(&file, json.n);
    put(&file, json.p, json.n);
    if (data.n)
        put(&file, data.p, data.n);
    write_bytes(path, file.p, file.n);
    free(json.p);
    free(data.p);
    free(file.p);
}

/* ---- the layer under test ------------------------------------------------ */

#define E 8
#define H 2
enum { L_ = 3, N_ = 2, OUT_N = L_ * N_ * E };

/* Weights of the E = 8 self-attention layer: multiples of 1/64 in
 * [-0.5, 0.5), so F16, BF16 and F64 hold them exactly. */
static float w_in[3 * E * E], b_in[3 * E], w_out[E * E], b_out[E];

static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((int)((seed >> 16) % 64) - 32) / 64.0f;
    }
}

static void make_weights(void)
{
    fill(w_in, sizeof w_in / sizeof *w_in, 1);
    fill(b_in, sizeof b_in / sizeof *b_in, 2);
    fill(w_out, sizeof w_out / sizeof *w_out, 3);
    fill(b_out, sizeof b_out / sizeof *b_out, 4);
}

/* The four tensors of the layer under prefix, all in dtype. */
static void layer_tensors(st_tensor t[4], char names[4][128],
                          const char *prefix, const char *dtype)
{
    static const char *const base[4] = {"in_proj_weight", "in_proj_bias",
                                        "out_proj.weight", "out_proj.bias"};
    const st_tensor shapes[4] = {
        {NULL, NULL, 2, {3 * E, E}, w_in}, {NULL, NULL, 1, {3 * E}, b_in},
        {NULL, NULL, 2, {E, E}, w_out},    {NULL, NULL, 1, {E}, b_out},
    };
    for (int i = 0; i < 4; i++) {
        snprintf(names[i], 128, "%s%s", prefix, base[i]);
        t[i] = shapes[i];
        t[i].name = names[i];
        t[i].dtype = dtype;
    }
}

typedef struct fx {
    guard_stats guard;
    mha_allocator alloc;
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
} fx;

static void fx_init_cfg(fx *f, int bias, int bias_kv)
{
    memset(f, 0, sizeof *f);
    f->alloc.malloc = guard_malloc;
    f->alloc.free = guard_free;
    f->alloc.user = &f->guard;
    mha_context_options o;
    mha_context_options_init(&o);
    o.allocator = &f->alloc;
    cr_assert_eq(mha_context_create(&o, &f->ctx), MHA_OK);
    cr_assert_eq(mha_device_open(f->ctx, "cpu", NULL, &f->dev), MHA_OK);
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, H);
    cfg.bias = bias;
    cfg.add_bias_kv = bias_kv;
    cr_assert_eq(mha_layer_create(f->dev, &cfg, &f->layer), MHA_OK);
}

static void fx_init(fx *f) { fx_init_cfg(f, 1, 0); }

static void fx_fini(fx *f)
{
    cr_assert_eq(mha_layer_destroy(f->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(f->dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(f->ctx), MHA_OK);
    cr_expect_eq(f->guard.live, 0, "%ld allocation(s) leaked",
                 f->guard.live);
    cr_expect_not(f->guard.broken, "a heap block was overrun");
}

static void set_weights(mha_layer *layer)
{
    int64_t s_w_in[2] = {3 * E, E}, s_b_in[1] = {3 * E}, s_w_out[2] = {E, E},
            s_b_out[1] = {E};
    cr_assert_eq(mha_layer_set_weight(layer, "in_proj_weight", w_in, 2,
                                      s_w_in), MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "in_proj_bias", b_in, 1, s_b_in),
                 MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "out_proj.weight", w_out, 2,
                                      s_w_out), MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "out_proj.bias", b_out, 1,
                                      s_b_out), MHA_OK);
}

/* A fixed self-attention forward (L 3, N 2) into out[OUT_N]. */
static mha_status forward(mha_layer *layer, float *out)
{
    static float q[OUT_N];
    fill(q, OUT_N, 77);
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    mha_host_array x = {q, MHA_F32, 3, {L_, N_, E, 0}};
    a.query = a.key = a.value = x;
    a.output = out;
    a.output_count = OUT_N;
    return mha_layer_forward_host(layer, &a);
}

/* The forward of a layer given the same weights through set_weight. */
static void reference_output(float *out)
{
    fx r;
    fx_init(&r);
    set_weights(r.layer);
    cr_assert_eq(forward(r.layer, out), MHA_OK);
    fx_fini(&r);
}

static void expect_output(fx *f, const float *want, const char *what)
{
    float got[OUT_N];
    mha_status st = forward(f->layer, got);
    cr_expect_eq(st, MHA_OK, "%s: forward %s: %s", what, mha_status_str(st),
                 mha_context_errmsg(f->ctx));
    cr_expect_arr_eq(got, want, sizeof got, "%s: output differs", what);
}

static int contains(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* Loads path and checks the status and that the message names needles. */
static void expect_load(fx *f, const char *path, const char *prefix,
                        mha_status want, const char *const *needles,
                        int count, const char *what)
{
    mha_status st = mha_layer_load_safetensors(f->layer, path, prefix);
    const char *msg = mha_context_errmsg(f->ctx);
    cr_expect_eq(st, want, "%s: status %s, expected %s; msg: %s", what,
                 mha_status_str(st), mha_status_str(want), msg);
    for (int i = 0; i < count; i++)
        cr_expect(contains(msg, needles[i]),
                  "%s: message \"%s\" does not name \"%s\"", what, msg,
                  needles[i]);
}

/* Every test gets the reference weights and a fresh scratch directory. */
static void suite_init(void)
{
    make_weights();
    make_tmpdir();
}

TestSuite(safetensors, .init = suite_init, .fini = remove_tmpdir);

/* ---- good files ---------------------------------------------------------- */

Test(safetensors, f32_file_loads_and_matches_set_weight_exactly)
{
    float want[OUT_N];
    reference_output(want);
    st_tensor t[4];
    char names[4][128];
    layer_tensors(t, names, "", "F32");
    write_st(tmp_path("f.safetensors"), t, 4);
    const char *prefixes[2] = {NULL, ""};
    for (int i = 0; i < 2; i++) {
        fx f;
        fx_init(&f);
        expect_load(&f, tmp_path("f.safetensors"), prefixes[i], MHA_OK, NULL,
                    0, "good F32 file");
        cr_expect_str_empty(mha_context_errmsg(f.ctx));
        expect_output(&f, want, "good F32 file");
        fx_fini(&f);
    }
}

Test(safetensors, f16_bf16_f64_and_mixed_dtypes_convert_exactly)
{
    float want[OUT_N];
    reference_output(want);
    const char *dtypes[] = {"F16", "BF16", "F64"};
    for (int i = 0; i < 4; i++) {
        st_tensor t[4];
        char names[4][128];
        layer_tensors(t, names, "m.", i < 3 ? dtypes[i] : "F32");
        if (i == 3) { /* one of each */
            t[0].dtype = "F16";
            t[1].dtype = "BF16";
            t[2].dtype = "F64";
        }
        write_st(tmp_path("f.safetensors"), t, 4);
        fx f;
        fx_init(&f);
        const char *what = i < 3 ? dtypes[i] : "mixed";
        expect_load(&f, tmp_path("f.safetensors"), "m.", MHA_OK, NULL, 0,
                    what);
        expect_output(&f, want, what);
        fx_fini(&f);
    }
}

Test(safetensors, prefix_picks_one_layer_and_ignores_other_keys)
{
    float want[OUT_N];
    reference_output(want);
    static const float junk[64] = {9, 9, 9, 9};
    st_tensor t[9];
    char names[4][128];
    layer_tensors(t + 2, names, "encoder.layers.3.self_attn.", "F32");
    /* another layer's weights, misshapen and wrongly typed: ignored */
    t[0] = (st_tensor){"encoder.layers.2.self_attn.in_proj_weight", "F32", 2,
                       {4, 4}, junk};
    t[1] = (st_tensor){"encoder.layers.2.self_attn.out_proj.bias", "I64", 1,
                       {3}, junk};
    t[6] = (st_tensor){"encoder.layers.3.linear1.weight", "BOOL", 2, {2, 2},
                       NULL};
    t[7] = (st_tensor){"encoder.layers.3.self_attn.not_a_weight", "I64", 1,
                       {2}, junk};
    t[8] = (st_tensor){"in_proj_weight", "F32", 1, {5}, junk};
    write_st(tmp_path("f.safetensors"), t, 9);
    fx f;
    fx_init(&f);
    expect_load(&f, tmp_path("f.safetensors"), "encoder.layers.3.self_attn.",
                MHA_OK, NULL, 0, "prefixed layer 3");
    expect_output(&f, want, "prefixed layer 3");
    /* the other layer's prefix finds its misshapen tensor */
    const char *needles[2] = {"encoder.layers.2.self_attn.in_proj_weight",
                              "[4,4]"};
    expect_load(&f, tmp_path("f.safetensors"), "encoder.layers.2.self_attn.",
                MHA_SHAPE_MISMATCH, needles, 2, "prefixed layer 2");
    expect_output(&f, want, "after the failed layer 2 load");
    fx_fini(&f);
}

Test(safetensors, pytorch_fixture_loads_with_its_prefix)
{
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 16, 2);
    cr_assert_eq(mha_layer_create(dev, &cfg, &layer), MHA_OK);
    const char *path = MHA_FIXTURE_DIR "/self_basic_e16_h2.safetensors";
    mha_status st = mha_layer_load_safetensors(layer, path, NULL);
    cr_expect_eq(st, MHA_MISSING_WEIGHT, "no prefix: %s", mha_status_str(st));
    cr_expect(contains(mha_context_errmsg(ctx), "\"in_proj_weight\""), "%s",
              mha_context_errmsg(ctx));
    st = mha_layer_load_safetensors(layer, path, "mha.");
    cr_expect_eq(st, MHA_OK, "%s", mha_context_errmsg(ctx));
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

Test(safetensors, bias_k_loads_as_1_1_e_or_as_e)
{
    static float bk[E], bv[E];
    fill(bk, E, 8);
    fill(bv, E, 9);
    st_tensor t[6];
    char names[4][128];
    layer_tensors(t, names, "", "F32");
    t[4] = (st_tensor){"bias_k", "F32", 3, {1, 1, E}, bk};
    t[5] = (st_tensor){"bias_v", "F32", 1, {E}, bv};
    write_st(tmp_path("f.safetensors"), t, 6);
    fx f;
    fx_init_cfg(&f, 1, 1);
    expect_load(&f, tmp_path("f.safetensors"), NULL, MHA_OK, NULL, 0,
                "bias_k (1,1,E), bias_v (E)");
    float got[OUT_N];
    cr_expect_eq(forward(f.layer, got), MHA_OK, "%s",
                 mha_context_errmsg(f.ctx));
    fx_fini(&f);
}

/* ---- key errors ---------------------------------------------------------- */

/* A first good load, so every failing load below must keep its weights. */
static void load_good(fx *f, float *want)
{
    st_tensor t[4];
    char names[4][128];
    layer_tensors(t, names, "p.", "F32");
    write_st(tmp_path("g.safetensors"), t, 4);
    expect_load(f, tmp_path("g.safetensors"), "p.", MHA_OK, NULL, 0,
                "first good load");
    reference_output(want);
    expect_output(f, want, "first good load");
}

static void start_loaded(fx *f, float *want)
{
    fx_init(f);
    load_good(f, want);
}

Test(safetensors, missing_key_is_missing_weight_naming_the_full_key)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    for (int drop = 0; drop < 4; drop++) {
        st_tensor t[4], kept[3];
        char names[4][128];
        layer_tensors(t, names, "encoder.layers.3.self_attn.", "F32");
        for (int i = 0, k = 0; i < 4; i++)
            if (i != drop)
                kept[k++] = t[i];
        write_st(tmp_path("f.safetensors"), kept, 3);
        char quoted[520];
        snprintf(quoted, sizeof quoted, "\"%s\"", names[drop]);
        const char *needles[1] = {quoted};
        expect_load(&f, tmp_path("f.safetensors"),
                    "encoder.layers.3.self_attn.", MHA_MISSING_WEIGHT,
                    needles, 1, names[drop]);
        expect_output(&f, want, names[drop]);
    }
    fx_fini(&f);
}

Test(safetensors, non_float_dtype_is_dtype_mismatch_naming_key_and_dtype)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    const char *bad[] = {"I64", "BOOL", "I32", "U8", "I8", "U16"};
    for (size_t d = 0; d < sizeof bad / sizeof *bad; d++) {
        st_tensor t[4];
        char names[4][128];
        layer_tensors(t, names, "x.", "F32");
        t[d % 4].dtype = bad[d];
        write_st(tmp_path("f.safetensors"), t, 4);
        const char *needles[2] = {names[d % 4], bad[d]};
        expect_load(&f, tmp_path("f.safetensors"), "x.", MHA_DTYPE_MISMATCH,
                    needles, 2, bad[d]);
        expect_output(&f, want, bad[d]);
    }
    fx_fini(&f);
}

Test(safetensors, wrong_shape_is_shape_mismatch_naming_key_and_shape)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    static const float big[3 * E * E + 64];
    struct {
        int which, ndim;
        int64_t shape[4];
        const char *expected;
    } c[] = {
        {0, 2, {E, 3 * E}, "[24,8]"}, {0, 1, {3 * E * E}, "[24,8]"},
        {0, 3, {3, E, E}, "[24,8]"},  {1, 2, {1, 3 * E}, "[24]"},
        {1, 1, {3 * E + 1}, "[24]"},  {2, 2, {E, E + 1}, "[8,8]"},
        {3, 0, {0}, "[8]"},           {3, 4, {1, 1, 1, E}, "[8]"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        st_tensor t[4];
        char names[4][128];
        layer_tensors(t, names, "", "F32");
        t[c[i].which].ndim = c[i].ndim;
        memcpy(t[c[i].which].shape, c[i].shape, sizeof c[i].shape);
        t[c[i].which].values = big;
        write_st(tmp_path("f.safetensors"), t, 4);
        const char *needles[2] = {names[c[i].which], c[i].expected};
        char what[64];
        snprintf(what, sizeof what, "shape case %zu", i);
        expect_load(&f, tmp_path("f.safetensors"), "", MHA_SHAPE_MISMATCH,
                    needles, 2, what);
        expect_output(&f, want, what);
    }
    fx_fini(&f);
}

Test(safetensors, key_the_config_does_not_have_is_refused_and_named)
{
    struct {
        const char *name;
        int bias, bias_kv;
        const char *extra;
        int64_t len;
    } c[] = {
        {"in_proj_bias for bias=False", 0, 0, "in_proj_bias", 3 * E},
        {"out_proj.bias for bias=False", 0, 0, "out_proj.bias", E},
        {"bias_k without add_bias_kv", 1, 0, "bias_k", E},
        {"q_proj_weight in a self-attention file", 1, 0, "q_proj_weight",
         E * E},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        st_tensor t[5];
        char names[4][128];
        layer_tensors(t, names, "enc.", "F32");
        int n = 0;
        st_tensor keep[5];
        for (int k = 0; k < 4; k++)
            if (c[i].bias || (k != 1 && k != 3))
                keep[n++] = t[k];
        char key[64];
        snprintf(key, sizeof key, "enc.%s", c[i].extra);
        keep[n++] = (st_tensor){key, "F32", 1, {c[i].len}, w_in};
        write_st(tmp_path("f.safetensors"), keep, n);
        fx f;
        fx_init_cfg(&f, c[i].bias, c[i].bias_kv);
        mha_status st = mha_layer_load_safetensors(
            f.layer, tmp_path("f.safetensors"), "enc.");
        const char *msg = mha_context_errmsg(f.ctx);
        cr_expect_neq(st, MHA_OK, "%s loaded", c[i].name);
        cr_expect_eq(st, MHA_INVALID_ARGUMENT, "%s: %s: %s", c[i].name,
                     mha_status_str(st), msg);
        cr_expect(contains(msg, key), "%s: message \"%s\" does not name %s",
                  c[i].name, msg, key);
        cr_expect(contains(msg, "is not a weight of this layer"),
                  "%s: message \"%s\" lost the reason", c[i].name, msg);
        cr_expect(contains(msg, tmp_path("f.safetensors")),
                  "%s: message \"%s\" does not name the file", c[i].name,
                  msg);
        fx_fini(&f);
    }
}

Test(safetensors, overlong_prefix_is_invalid_argument)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    char prefix[700];
    memset(prefix, 'a', sizeof prefix - 1);
    prefix[sizeof prefix - 1] = '\0';
    const char *needles[1] = {"prefix"};
    expect_load(&f, tmp_path("g.safetensors"), prefix, MHA_INVALID_ARGUMENT,
                needles, 1, "700-byte prefix");
    expect_output(&f, want, "700-byte prefix");
    fx_fini(&f);
}

/* ---- corrupt files ------------------------------------------------------- */

/* 4 F32 values under key "out_proj.bias"-less names: one small entry. */
#define ENTRY(dt, shape, offs)                                                \
    "{\"t\":{\"dtype\":" dt ",\"shape\":" shape ",\"data_offsets\":" offs "}}"

typedef struct corrupt_case {
    const char *name;
    int raw_len;        /* use len below instead of strlen(json) */
    uint64_t len;
    const char *json;   /* NULL: the file is just the first `data_len`
                           bytes of `data` */
    size_t data_len;
    mha_status want;
} corrupt_case;

static const corrupt_case corrupt_cases[] = {
    {"empty file", 0, 0, NULL, 0, MHA_CORRUPT_FILE},
    {"7 bytes", 0, 0, NULL, 7, MHA_CORRUPT_FILE},
    {"header length only", 0, 0, NULL, 8, MHA_CORRUPT_FILE},
    {"header length larger than the file", 1, 4096, "{}", 0,
     MHA_CORRUPT_FILE},
    {"header length 2^63", 1, (uint64_t)1 << 63, "{}", 0, MHA_CORRUPT_FILE},
    {"header length 2^64-1", 1, UINT64_MAX, "{}", 0, MHA_CORRUPT_FILE},
    {"header length 0", 1, 0, "{}", 0, MHA_CORRUPT_FILE},
    {"truncated data: offsets past the end", 0, 0,
     ENTRY("\"F32\"", "[4]", "[0,16]"), 8, MHA_CORRUPT_FILE},
    {"truncated data: one byte short", 0, 0, ENTRY("\"F32\"", "[4]", "[0,16]"),
     15, MHA_CORRUPT_FILE},
    {"invalid JSON", 0, 0, "{\"t\":{\"dtype\":", 0, MHA_CORRUPT_FILE},
    {"JSON that is an array", 0, 0, "[1,2,3]", 0, MHA_CORRUPT_FILE},
    {"JSON that is a string", 0, 0, "\"abc\"", 0, MHA_CORRUPT_FILE},
    {"JSON null", 0, 0, "null", 0, MHA_CORRUPT_FILE},
    {"blank header", 0, 0, "        ", 0, MHA_CORRUPT_FILE},
    {"entry that is a number", 0, 0, "{\"t\":5}", 0, MHA_CORRUPT_FILE},
    {"entry without dtype", 0, 0,
     "{\"t\":{\"shape\":[4],\"data_offsets\":[0,16]}}", 16, MHA_CORRUPT_FILE},
    {"dtype that is a number", 0, 0, ENTRY("7", "[4]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"unknown dtype F17", 0, 0, ENTRY("\"F17\"", "[4]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"entry without shape", 0, 0,
     "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 16,
     MHA_CORRUPT_FILE},
    {"shape that is a string", 0, 0, ENTRY("\"F32\"", "\"4\"", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"negative dimension", 0, 0, ENTRY("\"F32\"", "[-4]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"fractional dimension", 0, 0, ENTRY("\"F32\"", "[2.5,2]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"dimension 1e300", 0, 0, ENTRY("\"F32\"", "[1e300]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"dimensions whose product overflows", 0, 0,
     ENTRY("\"F32\"", "[4294967296,4294967296,4294967296]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"bytes of dims overflow", 0, 0,
     ENTRY("\"F64\"", "[4294967296,4294967296]", "[0,16]"), 16,
     MHA_CORRUPT_FILE},
    {"nine dimensions", 0, 0,
     ENTRY("\"F32\"", "[1,1,1,1,1,1,1,1,4]", "[0,16]"), 16, MHA_CORRUPT_FILE},
    {"data_offsets reversed", 0, 0, ENTRY("\"F32\"", "[4]", "[16,0]"), 16,
     MHA_CORRUPT_FILE},
    {"data_offsets not matching dtype and shape", 0, 0,
     ENTRY("\"F32\"", "[4]", "[0,12]"), 16, MHA_CORRUPT_FILE},
    {"data_offsets too long for F16 shape", 0, 0,
     ENTRY("\"F16\"", "[4]", "[0,16]"), 16, MHA_CORRUPT_FILE},
    {"data_offsets with three numbers", 0, 0,
     ENTRY("\"F32\"", "[4]", "[0,16,32]"), 32, MHA_CORRUPT_FILE},
    {"data_offsets negative", 0, 0, ENTRY("\"F32\"", "[4]", "[-16,0]"), 16,
     MHA_CORRUPT_FILE},
    {"data_offsets missing", 0, 0, "{\"t\":{\"dtype\":\"F32\",\"shape\":[4]}}",
     16, MHA_CORRUPT_FILE},
    {"data_offsets 2^64", 0, 0,
     ENTRY("\"F32\"", "[4]", "[18446744073709551600,18446744073709551616]"),
     16, MHA_CORRUPT_FILE},
    {"__metadata__ with a non-string value", 0, 0,
     "{\"__metadata__\":{\"format\":\"pt\",\"n\":1}}", 0, MHA_CORRUPT_FILE},
    {"__metadata__ with an object value", 0, 0,
     "{\"__metadata__\":{\"a\":{}}}", 0, MHA_CORRUPT_FILE},
    {"__metadata__ that is an array", 0, 0, "{\"__metadata__\":[\"a\"]}", 0,
     MHA_CORRUPT_FILE},
};

/* Writes corrupt case c to path. */
static void write_corrupt(const char *path, const corrupt_case *c)
{
    static unsigned char data[64];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 37 + 1);
    if (!c->json) {
        static const unsigned char head[8] = {16, 0, 0, 0, 0, 0, 0, 0};
        unsigned char buf[16];
        memcpy(buf, head, 8);
        memcpy(buf + 8, "{}      ", 8);
        write_bytes(path, buf, c->data_len);
        return;
    }
    if (!c->raw_len) {
        write_raw(path, c->json, data, c->data_len);
        return;
    }
    bytes b = {0};
    put_u64le(&b, c->len);
    put_str(&b, c->json);
    write_bytes(path, b.p, b.n);
    free(b.p);
}

Test(safetensors, corrupt_files_table)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    for (size_t i = 0; i < sizeof corrupt_cases / sizeof *corrupt_cases;
         i++) {
        const corrupt_case *c = &corrupt_cases[i];
        write_corrupt(tmp_path("f.safetensors"), c);
        mha_status st = mha_layer_load_safetensors(
            f.layer, tmp_path("f.safetensors"), "p.");
        const char *msg = mha_context_errmsg(f.ctx);
        cr_expect_eq(st, c->want, "case \"%s\": %s; msg: %s", c->name,
                     mha_status_str(st), msg);
        cr_expect(contains(msg, tmp_path("f.safetensors")),
                  "case \"%s\": message \"%s\" does not name the file",
                  c->name, msg);
        expect_output(&f, want, c->name);
    }
    fx_fini(&f);
}

/* The same key twice in a header; also "__metadata__" twice, the second
 * smaller than the first: any status, but no crash, leak or overrun. */
Test(safetensors, duplicate_keys_do_not_crash_or_leak)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    const char *headers[] = {
        "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":\"4\"},"
        "\"__metadata__\":{\"e\":\"5\"}}",
        "{\"__metadata__\":{\"a\":\"1\"},\"__metadata__\":{\"b\":\"2\"},"
        "\"__metadata__\":{}}",
        ENTRY("\"F32\"", "[4]", "[0,16]"),
    };
    static const unsigned char data[16];
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        write_raw(tmp_path("f.safetensors"), headers[i], data, 16);
        mha_status st = mha_layer_load_safetensors(
            f.layer, tmp_path("f.safetensors"), "p.");
        cr_expect_neq(st, MHA_OK, "header %zu loaded", i);
        cr_expect_not(f.guard.broken, "header %zu overran a heap block", i);
        expect_output(&f, want, headers[i]);
    }
    fx_fini(&f);
}

Test(safetensors, deeply_nested_json_is_corrupt_not_a_stack_overflow)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    size_t depth = 200000;
    char *json = malloc(depth * 2 + 16);
    cr_assert_not_null(json);
    strcpy(json, "{\"t\":");
    size_t n = strlen(json);
    memset(json + n, '[', depth);
    memset(json + n + depth, ']', depth);
    strcpy(json + n + 2 * depth, "}");
    write_raw(tmp_path("f.safetensors"), json, NULL, 0);
    free(json);
    mha_status st = mha_layer_load_safetensors(
        f.layer, tmp_path("f.safetensors"), "p.");
    cr_expect_eq(st, MHA_CORRUPT_FILE, "%s", mha_context_errmsg(f.ctx));
    expect_output(&f, want, "nested JSON");
    fx_fini(&f);
}

Test(safetensors, missing_or_unreadable_path_is_io_error)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    const char *missing = tmp_path("none.safetensors");
    char path[128];
    snprintf(path, sizeof path, "%s", missing);
    const char *needles[1] = {path};
    expect_load(&f, path, NULL, MHA_IO, needles, 1, "missing file");
    expect_output(&f, want, "missing file");
    /* a directory is not a file */
    snprintf(path, sizeof path, "%s", tmp_path("dir"));
    cr_assert_eq(mkdir(path, 0700), 0);
    mha_status st = mha_layer_load_safetensors(f.layer, path, NULL);
    cr_expect_eq(st, MHA_IO, "directory: %s: %s", mha_status_str(st),
                 mha_context_errmsg(f.ctx));
    expect_output(&f, want, "directory");
    /* a file without read permission (root reads anyway) */
    if (geteuid() != 0) {
        snprintf(path, sizeof path, "%s", tmp_path("locked.safetensors"));
        write_bytes(path, "x", 1);
        cr_assert_eq(chmod(path, 0), 0);
        expect_load(&f, path, NULL, MHA_IO, needles, 0, "unreadable file");
        expect_output(&f, want, "unreadable file");
    }
    fx_fini(&f);
}

/* ---- random mutations ---------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int known_error(mha_status st)
{
    return st == MHA_CORRUPT_FILE || st == MHA_IO || st == MHA_MISSING_WEIGHT ||
           st == MHA_DTYPE_MISMATCH || st == MHA_SHAPE_MISMATCH ||
           st == MHA_INVALID_ARGUMENT || st == MHA_OVERFLOW;
}

Test(safetensors, random_mutations_never_crash_and_keep_weights_on_error,
     .timeout = 120)
{
    st_tensor t[4];
    char names[4][128];
    layer_tensors(t, names, "", "F32");
    write_st(tmp_path("g.safetensors"), t, 4);
    FILE *fp = fopen(tmp_path("g.safetensors"), "rb");
    cr_assert_not_null(fp);
    static unsigned char good[16384], buf[16384];
    size_t size = fread(good, 1, sizeof good, fp);
    fclose(fp);
    cr_assert_lt(size, sizeof good);
    size_t header = 8 + (size_t)good[0] + ((size_t)good[1] << 8);
    fx f;
    fx_init(&f);
    cr_assert_eq(mha_layer_load_safetensors(f.layer, tmp_path("g.safetensors"),
                                            NULL), MHA_OK);
    float want[OUT_N];
    cr_assert_eq(forward(f.layer, want), MHA_OK);
    uint64_t seed = 0x9E3779B97F4A7C15u;
    int loaded = 0, refused = 0;
    for (int iter = 0; iter < 1000; iter++) {
        memcpy(buf, good, size);
        size_t n = size;
        int edits = 1 + (int)(rng_next(&seed) % 4);
        for (int e = 0; e < edits; e++) {
            uint64_t r = rng_next(&seed);
            size_t at = r % 4 ? (size_t)(r >> 8) % header
                              : (size_t)(r >> 8) % size;
            buf[at] = (unsigned char)(r >> 40);
        }
        if (rng_next(&seed) % 16 == 0)
            n = (size_t)(rng_next(&seed) % size);
        write_bytes(tmp_path("f.safetensors"), buf, n);
        mha_status st = mha_layer_load_safetensors(
            f.layer, tmp_path("f.safetensors"), NULL);
        cr_assert(st == MHA_OK || known_error(st),
                  "mutation %d: status %d (%s): %s", iter, (int)st,
                  mha_status_str(st), mha_context_errmsg(f.ctx));
        cr_assert_not(f.guard.broken, "mutation %d overran a heap block",
                      iter);
        if (st == MHA_OK) {
            loaded++;
            cr_assert_eq(forward(f.layer, want), MHA_OK);
            continue;
        }
        refused++;
        cr_expect_str_not_empty(mha_context_errmsg(f.ctx),
                                "mutation %d: no message", iter);
        float got[OUT_N];
        cr_assert_eq(forward(f.layer, got), MHA_OK);
        cr_assert_arr_eq(got, want, sizeof got,
                         "mutation %d: a refused file changed the layer",
                         iter);
    }
    cr_log_info("random mutations: %d loaded, %d refused", loaded, refused);
    cr_expect_gt(refused, 500);
    fx_fini(&f);
}

/* ---- messages a new user meets ------------------------------------------- */

/* torch.save writes a zip archive (PyTorch >= 1.6) or a bare pickle (before,
 * or with _use_new_zipfile_serialization=False); either given to the loader
 * must say what it is and how to convert it. */
Test(safetensors, torch_save_file_is_named_with_how_to_convert)
{
    static const unsigned char zip[] = "PK\x03\x04\x14\x00\x00\x00\x08\x00"
                                       "archive/data.pkl";
    /* protocol 2, then torch's magic number as a pickled long */
    static const unsigned char pickle[] = "\x80\x02\x8a\x0a"
                                          "l\xfc\x9c" "F\xf9 j\xa8P\x19.";
    const struct {
        const unsigned char *bytes;
        size_t n;
        const char *what;
    } files[] = {{zip, sizeof zip - 1, "zip"}, {pickle, sizeof pickle - 1,
                                                "pickle"}};
    const char *needles[2] = {"PyTorch", "export_safetensors.py"};
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        write_bytes(tmp_path("f.safetensors"), files[i].bytes, files[i].n);
        expect_load(&f, tmp_path("f.safetensors"), NULL, MHA_CORRUPT_FILE,
                    needles, 2, files[i].what);
        expect_output(&f, want, files[i].what);
    }
    fx_fini(&f);
}

Test(safetensors, missing_file_message_gives_the_os_reason)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    char path[128];
    snprintf(path, sizeof path, "%s", tmp_path("none.safetensors"));
    const char *needles[2] = {path, strerror(ENOENT)};
    expect_load(&f, path, NULL, MHA_IO, needles, 2, "missing file");
    fx_fini(&f);
}

/* A whole model's file loaded with a prefix it does not hold: the message
 * lists the attention prefixes it does hold, a few of them. */
Test(safetensors, wrong_prefix_lists_the_prefixes_the_file_holds)
{
    fx f;
    float want[OUT_N];
    start_loaded(&f, want);
    st_tensor t[24];
    char names[24][128];
    char prefixes[6][64];
    for (int layer = 0; layer < 6; layer++) {
        snprintf(prefixes[layer], sizeof prefixes[layer],
                 "encoder.layers.%d.self_attn.", layer);
        layer_tensors(t + 4 * layer, names + 4 * layer, prefixes[layer],
                      "F32");
    }
    write_st(tmp_path("f.safetensors"), t, 24);
    const char *needles[3] = {"\"encoder.layers.0.self_attn.\"",
                              "\"encoder.layers.3.self_attn.\"", "..."};
    expect_load(&f, tmp_path("f.safetensors"), "layers.1.self_attn.",
                MHA_MISSING_WEIGHT, needles, 3, "wrong prefix");
    cr_expect_not(contains(mha_context_errmsg(f.ctx), "layers.5."),
                  "more than a few prefixes listed: %s",
                  mha_context_errmsg(f.ctx));
    /* a file with no attention weights at all says so */
    st_tensor other = {"linear.weight", "F32", 2, {2, 2}, w_in};
    write_st(tmp_path("f.safetensors"), &other, 1);
    const char *none[1] = {"no nn.MultiheadAttention weights"};
    expect_load(&f, tmp_path("f.safetensors"), "", MHA_MISSING_WEIGHT, none,
                1, "no attention weights");
    expect_output(&f, want, "wrong prefix");
    fx_fini(&f);
}
