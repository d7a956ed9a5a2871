/* test_qkv_pack.c: self-attention's packed Q/K/V projection (issue 17,
 * fewer dispatches per forward). When query, key and value are one tensor
 * (or one host array) an inference forward projects them with one
 * PROJECTION over in_proj_weight [3E, E]; these suites count the nodes each
 * device ran (mha_device_profile_*) to prove that the packed path is taken
 * for self-attention and not for cross-attention, three copies of one
 * input, or a training forward, and check on every device and CPU ISA that
 * its result is the three projections' (the same layer given three copies
 * of the input), with bias_k/v and zero rows, masks, need_weights, head
 * gates, pruned heads and fp16 storage. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct pack_case {
    int64_t E, H, N, L, S; /* S != L: cross-attention */
    int bias_kv, zero_attn, need_weights, causal, batch_first;
    int gates;   /* head_gates [H] with one head gated off */
    int prune;   /* head 0 pruned */
    int train;   /* save_for_backward, then a backward */
    mha_dtype dtype;
} pack_case;

/* A case's layer on one device, with random weights of a fixed seed. */
static mha_layer *make_layer(mha_device *dev, const pack_case *c)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, c->E, c->H);
    cfg.add_bias_kv = c->bias_kv;
    cfg.add_zero_attn = c->zero_attn;
    cfg.batch_first = c->batch_first;
    cfg.dtype = c->dtype;
    mha_layer *layer;
    cr_assert_eq(mha_layer_create(dev, &cfg, &layer), MHA_OK);
    test_rng rng = {0x51ed2701u};
    int64_t E = c->E;
    const struct { const char *name; int nd; int64_t shape[3]; } w[] = {
        {"in_proj_weight", 2, {3 * E, E, 0}}, {"in_proj_bias", 1, {3 * E}},
        {"out_proj.weight", 2, {E, E, 0}},    {"out_proj.bias", 1, {E}},
        {"bias_k", 3, {1, 1, E}},             {"bias_v", 3, {1, 1, E}}};
    for (int i = 0; i < (c->bias_kv ? 6 : 4); i++) {
        size_t n = (size_t)(w[i].shape[0] * (w[i].nd > 1 ? w[i].shape[1] : 1) *
                            (w[i].nd > 2 ? w[i].shape[2] : 1));
        float *x = malloc(n * sizeof *x);
        for (size_t j = 0; j < n; j++)
            x[j] = (test_uniform(&rng) * 2 - 1) * 0.4f;
        cr_assert_eq(mha_layer_set_weight(layer, w[i].name, x, w[i].nd,
                                          w[i].shape),
                     MHA_OK);
        free(x);
    }
    if (c->prune) {
        int64_t h0 = 0;
        cr_assert_eq(mha_layer_prune_heads(layer, &h0, 1), MHA_OK);
    }
    return layer;
}

static mha_tensor *tensor_of(mha_device *dev, int nd, const int64_t *shape,
                             const float *data)
{
    mha_tensor *t;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, nd, shape, &t), MHA_OK);
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    if (data)
        cr_assert_eq(mha_tensor_upload(t, data, n * 4), MHA_OK);
    return t;
}

/* PROJECTION nodes among the nodes the device ran since profile_start. */
static int projections_run(mha_device *dev)
{
    mha_profile_entry e[64];
    int count = 0, n = 0;
    cr_assert_eq(mha_device_profile_read(dev, e, 64, &count), MHA_OK);
    cr_assert(count > 0 && count <= 64, "%d profile entries", count);
    for (int i = 0; i < count; i++)
        n += !strcmp(e[i].op, "projection");
    return n;
}

/* A (L|S, N, E) input of the case's layout, random. */
static float *random_input(test_rng *rng, size_t n)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = test_normal(rng);
    return x;
}

/* One forward of the case through device tensors: with one, query, key and
 * value are one tensor (cross-attention: key and value are), else each its
 * own with the same values. Writes the output ([L*N*E]) and, when asked, the
 * weights; returns how many projections ran. */
static int forward_device(mha_device *dev, const pack_case *c, int one,
                          float *out, float *weights, size_t w_count)
{
    mha_layer *layer = make_layer(dev, c);
    test_rng rng = {0xfeedu};
    int64_t E = c->E, N = c->N, L = c->L, S = c->S;
    int64_t qs[3] = {L, N, E}, ks[3] = {S, N, E};
    if (c->batch_first)
        qs[0] = ks[0] = N, qs[1] = L, ks[1] = S;
    float *xq = random_input(&rng, (size_t)(L * N * E));
    float *xk = S == L ? xq : random_input(&rng, (size_t)(S * N * E));
    mha_tensor *q = tensor_of(dev, 3, qs, xq);
    mha_tensor *k = one && S == L ? q : tensor_of(dev, 3, ks, xk);
    mha_tensor *v = one ? k : tensor_of(dev, 3, ks, xk);
    mha_tensor *y = tensor_of(dev, 3, qs, NULL), *w = NULL, *g = NULL;
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = q, a.key = k, a.value = v, a.output = y;
    a.is_causal = c->causal;
    a.save_for_backward = c->train;
    int64_t H = c->H - c->prune, S2 = S + c->bias_kv + c->zero_attn;
    if (c->need_weights) {
        int64_t ws[3] = {N, L, S2};
        a.need_weights = 1;
        a.weights = w = tensor_of(dev, 3, ws, NULL);
        cr_assert_eq((size_t)(N * L * S2), w_count);
    }
    if (c->gates) {
        float gv[16];
        for (int64_t h = 0; h < H; h++)
            gv[h] = h == 1 ? 0.0f : 0.5f + 0.25f * (float)h;
        a.head_gates = g = tensor_of(dev, 1, &H, gv);
    }
    cr_assert_eq(mha_device_profile_start(dev), MHA_OK);
    cr_assert_eq(mha_layer_forward(layer, &a), MHA_OK);
    int n = projections_run(dev);
    cr_assert_eq(mha_device_profile_stop(dev), MHA_OK);
    cr_assert_eq(mha_tensor_download(y, out, (size_t)(L * N * E) * 4), MHA_OK);
    if (w)
        cr_assert_eq(mha_tensor_download(w, weights, w_count * 4), MHA_OK);
    if (c->train) { /* the backward of the unpacked training forward */
        mha_tensor *gx = tensor_of(dev, 3, qs, NULL);
        mha_backward_args b;
        mha_backward_args_init(&b);
        b.grad_output = y; /* any dY of the output's shape */
        b.grad_query = b.grad_key = b.grad_value = gx;
        cr_assert_eq(mha_layer_backward(layer, &b), MHA_OK);
        mha_tensor_destroy(gx);
    }
    mha_tensor_destroy(g);
    mha_tensor_destroy(w);
    mha_tensor_destroy(y);
    if (v != k)
        mha_tensor_destroy(v);
    if (k != q)
        mha_tensor_destroy(k);
    mha_tensor_destroy(q);
    if (xk != xq)
        free(xk);
    free(xq);
    cr_assert_eq(mha_layer_destroy(layer), MHA_OK);
    return n;
}

static void expect_close(const char *dev, const char *what, const float *got,
                         const float *want, size_t n, double tol)
{
    double *w = malloc(n * sizeof *w);
    for (size_t i = 0; i < n; i++)
        w[i] = want[i];
    test_diff d = test_compare(got, w, n);
    cr_expect_eq(d.nonfinite_mismatch, 0, "%s: %s has NaN/Inf mismatches",
                 dev, what);
    cr_expect_leq(d.max_abs, tol, "%s: %s differs by %g at %zu", dev, what,
                  d.max_abs, d.worst);
    free(w);
}

/* On every device (and fp16 where the device stores it): the forward with
 * one tensor runs `packed` projections (2: the packed one and out_proj; 4:
 * q, k, v and out_proj), the one with three copies 4, and both agree. */
static void run_case(const pack_case *base, int packed)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(ctx, devs[i].index, &info), MHA_OK);
        if (base->dtype == MHA_F16 &&
            !(info.features & MHA_FEATURE_FP16_STORAGE))
            continue;
        mha_device *dev = test_open(ctx, &devs[i]);
        const pack_case *c = base;
        size_t n = (size_t)(c->L * c->N * c->E);
        size_t wn = c->need_weights
                        ? (size_t)(c->N * c->L *
                                   (c->S + c->bias_kv + c->zero_attn))
                        : 0;
        float *one = malloc((n + wn) * sizeof *one);
        float *three = malloc((n + wn) * sizeof *three);
        cr_expect_eq(forward_device(dev, c, 1, one, one + n, wn), packed,
                     "%s: projections with one input tensor", devs[i].label);
        cr_expect_eq(forward_device(dev, c, 0, three, three + n, wn), 4,
                     "%s: projections with three input tensors",
                     devs[i].label);
        double tol = c->dtype == MHA_F16 ? 1e-2 : 1e-4;
        expect_close(devs[i].label, "output", one, three, n, tol);
        if (wn)
            expect_close(devs[i].label, "weights", one + n, three + n, wn,
                         tol);
        free(one);
        free(three);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

#define CASE(n, s, ...) \
    ((pack_case){.E = 32, .H = 4, .N = (n), .L = 7, .S = (s), __VA_ARGS__})
#define SELF(...) CASE(2, 7, __VA_ARGS__)

Test(qkv_pack, self_attention_one_projection)
{
    run_case(&SELF(.dtype = MHA_F32), 2);
}

Test(qkv_pack, self_attention_batch_first_causal)
{
    run_case(&CASE(3, 7, .batch_first = 1, .causal = 1), 2);
}

Test(qkv_pack, bias_kv_and_zero_attn)
{
    run_case(&SELF(.bias_kv = 1, .zero_attn = 1), 2);
}

Test(qkv_pack, need_weights)
{
    run_case(&SELF(.need_weights = 1, .bias_kv = 1), 2);
}

Test(qkv_pack, head_gates)
{
    run_case(&SELF(.gates = 1), 2);
}

Test(qkv_pack, pruned_heads)
{
    run_case(&SELF(.prune = 1, .gates = 1), 2);
}

Test(qkv_pack, f16_storage)
{
    run_case(&SELF(.dtype = MHA_F16, .bias_kv = 1), 2);
}

Test(qkv_pack, cross_attention_three_projections)
{
    run_case(&CASE(2, 5, .dtype = MHA_F32), 4);
}

/* The backward reads Q, K and V from the saved buffers of three
 * projections, so a training forward never packs. */
Test(qkv_pack, training_forward_three_projections)
{
    run_case(&SELF(.train = 1), 4);
}

/* The host-memory forward with key and value the query's own array (one
 * array when S = L: packed, its staging holds the query only; a prefix of
 * it when S < L: a cross-attention, three projections) against a copy of
 * those S rows: the projections run, and the outputs agree. */
static void run_host_case(const pack_case *c, int64_t S)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    size_t n = (size_t)(c->L * c->N * c->E), ns = (size_t)(S * c->N * c->E);
    int64_t qs[3] = {c->N, c->L, c->E}, ks[3] = {c->N, S, c->E};
    test_rng rng = {0xabcdu};
    float *x = random_input(&rng, n), *x2 = malloc(ns * sizeof *x2);
    memcpy(x2, x, ns * sizeof *x2); /* batch-first: the key's rows */
    float *out[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        mha_layer *layer = make_layer(dev, c);
        for (int same = 0; same < 2; same++) {
            mha_host_forward_args a;
            mha_host_forward_args_init(&a);
            a.query = (mha_host_array){x, MHA_F32, 3, {qs[0], qs[1], qs[2]}};
            a.key = (mha_host_array){same ? x : x2, MHA_F32, 3,
                                     {ks[0], ks[1], ks[2]}};
            a.value = a.key;
            a.output = out[same];
            a.output_count = n;
            cr_assert_eq(mha_device_profile_start(dev), MHA_OK);
            cr_assert_eq(mha_layer_forward_host(layer, &a), MHA_OK, "%s",
                         mha_context_errmsg(ctx));
            cr_expect_eq(projections_run(dev), same && S == c->L ? 2 : 4,
                         "%s, %s", devs[i].label,
                         same ? "the query's array" : "a copy");
            cr_assert_eq(mha_device_profile_stop(dev), MHA_OK);
        }
        expect_close(devs[i].label, "host output", out[1], out[0], n, 1e-4);
        cr_assert_eq(mha_layer_destroy(layer), MHA_OK);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    free(out[0]);
    free(out[1]);
    free(x);
    free(x2);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(qkv_pack, host_forward)
{
    pack_case c = SELF(.batch_first = 1, .bias_kv = 1);
    run_host_case(&c, c.L);
}

Test(qkv_pack, host_prefix_key_three_projections)
{
    pack_case c = SELF(.batch_first = 1);
    run_host_case(&c, c.L - 2);
}
