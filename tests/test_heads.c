/* test_heads.c: head control of the nn.MHA layer (mha.h, head_gates,
 * head_outputs, mha_layer_prune_heads, mha_layer_save_safetensors) against
 * the PyTorch float64 fixtures of tests/gen_heads_fixtures.py, on every
 * device and CPU ISA, fp32 (1e-4) and fp16 (1e-2), fused and unfused
 * (need_weights); a pruned layer against the same layer with those heads
 * gated off; the memory and the work pruning and gating save, read from
 * mha_device_memory_usage and from the plan's nodes; save and load; and
 * every bad input with its status and message. */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "half.h"
#include "plan.h"
#include "safetensors.h"

static const char *fixture_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/heads/%s.safetensors", MHA_FIXTURE_DIR, name);
    return buf;
}

/* ---- fixtures ---------------------------------------------------------------- */

typedef struct fixture {
    char path[512];
    mha_layer_config cfg;
    int batched, causal;
    int64_t B, L, S, H, d, S2;
    float *query, *key, *value, *kpm, *gates;
    int64_t qshape[3], kshape[3], vshape[3], kpm_shape[2], gshape[2];
    int qnd, gnd, kpm_nd;
    double *out, *heads, *weights; /* like query; [B,H,L,d]; [B,H,L,S'] */
    int64_t prune[16];
    int nprune;
} fixture;

static double *read_doubles(mha_st_file *f, const char *name)
{
    const mha_st_entry *e = mha_st_find(f, name);
    cr_assert(e, "fixture has no %s", name);
    double *x = malloc(e->count * sizeof *x);
    cr_assert_eq(mha_st_read_raw(f, e, x), MHA_OK);
    return x;
}

static void load_fixture(mha_context *ctx, const char *name, fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    fixture_path(fx->path, sizeof fx->path, name);
    mha_st_file *f = NULL;
    cr_assert_eq(mha_st_open(&ctx->host, fx->path, &f), MHA_OK, "%s: %s",
                 fx->path, mha_context_errmsg(ctx));
    mha_layer_config_init(&fx->cfg, (int64_t)fixture_meta(f, "embed_dim"),
                          (int64_t)fixture_meta(f, "num_heads"));
    fx->cfg.kdim = (int64_t)fixture_meta(f, "kdim");
    fx->cfg.vdim = (int64_t)fixture_meta(f, "vdim");
    fx->cfg.bias = (int)fixture_meta(f, "bias");
    fx->cfg.add_bias_kv = (int)fixture_meta(f, "add_bias_kv");
    fx->cfg.add_zero_attn = (int)fixture_meta(f, "add_zero_attn");
    fx->cfg.batch_first = (int)fixture_meta(f, "batch_first");
    fx->batched = (int)fixture_meta(f, "batched");
    fx->causal = (int)fixture_meta(f, "causal");
    int nd;
    fx->query = fixture_floats(f, "query", &fx->qnd, fx->qshape);
    fx->key = fixture_floats(f, "key", &nd, fx->kshape);
    fx->value = fixture_floats(f, "value", &nd, fx->vshape);
    fx->kpm = fixture_floats(f, "key_padding_mask", &fx->kpm_nd, fx->kpm_shape);
    fx->gates = fixture_floats(f, "gates", &fx->gnd, fx->gshape);
    fx->out = read_doubles(f, "out");
    fx->heads = read_doubles(f, "head_outputs");
    fx->weights = read_doubles(f, "weights");
    int seq = fx->batched && fx->cfg.batch_first;
    fx->B = fx->batched ? fx->qshape[seq ? 0 : 1] : 1;
    fx->L = fx->qshape[seq ? 1 : 0];
    fx->S = fx->kshape[seq ? 1 : 0];
    fx->H = fx->cfg.num_heads;
    fx->d = fx->cfg.embed_dim / fx->H;
    fx->S2 = fx->S + fx->cfg.add_bias_kv + fx->cfg.add_zero_attn;
    for (const char *p = mha_st_metadata(f, "prune"); p && *p;) {
        char *end;
        fx->prune[fx->nprune++] = strtoll(p, &end, 10);
        p = *end ? end + 1 : end;
    }
    mha_st_close(f);
}

static void free_fixture(fixture *fx)
{
    free(fx->query);
    free(fx->key);
    free(fx->value);
    free(fx->kpm);
    free(fx->gates);
    free(fx->out);
    free(fx->heads);
    free(fx->weights);
}

/* ---- running a layer ------------------------------------------------------- */

static mha_tensor *upload_new(mha_device *dev, int nd, const int64_t *shape,
                              const float *x)
{
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, nd, shape, &t), MHA_OK);
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    if (x)
        cr_assert_eq(mha_tensor_upload(t, x, n * 4), MHA_OK);
    return t;
}

static size_t count_of(const mha_tensor *t);

/* A result tensor filled with NaN, so an element the forward leaves
 * unwritten fails the comparison. */
static mha_tensor *nan_new(mha_device *dev, int nd, const int64_t *shape)
{
    mha_tensor *t = upload_new(dev, nd, shape, NULL);
    size_t n = count_of(t);
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
    cr_assert_eq(mha_tensor_upload(t, x, n * 4), MHA_OK);
    free(x);
    return t;
}

static size_t count_of(const mha_tensor *t)
{
    int nd;
    int64_t shape[MHA_MAX_DIMS];
    mha_tensor_get_shape(t, NULL, &nd, shape);
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    return n;
}

static float *download(const mha_tensor *t)
{
    size_t n = count_of(t);
    float *x = malloc(n * sizeof *x);
    cr_assert_eq(mha_tensor_download(t, x, n * 4), MHA_OK);
    return x;
}

/* fx's query, key and value on dev, and a NaN-filled output like query:
 * t[0 .. 3]. */
static void upload_inputs(mha_device *dev, const fixture *fx, mha_tensor **t)
{
    t[0] = upload_new(dev, fx->qnd, fx->qshape, fx->query);
    t[1] = upload_new(dev, fx->qnd, fx->kshape, fx->key);
    t[2] = upload_new(dev, fx->qnd, fx->vshape, fx->value);
    t[3] = nan_new(dev, fx->qnd, fx->qshape);
}

/* What one forward of a fixture returns. */
typedef struct result {
    float *out, *heads, *weights;
} result;

static void free_result(result *r)
{
    free(r->out);
    free(r->heads);
    free(r->weights);
}

/* Runs layer (H current heads) on fx's inputs with gates (NULL: none; nd
 * 1 or 2), asking for head outputs and, with need_weights, per-head
 * weights. */
static mha_status run_layer(mha_layer *layer, mha_device *dev,
                            const fixture *fx, int64_t H, const float *gates,
                            int gnd, int need_weights, result *res)
{
    mha_tensor *t[8] = {NULL}, *in[4];
    upload_inputs(dev, fx, in);
    t[0] = in[0], t[1] = in[1], t[2] = in[2], t[4] = in[3];
    if (fx->kpm)
        t[3] = upload_new(dev, fx->kpm_nd, fx->kpm_shape, fx->kpm);
    int64_t hs[4] = {fx->B, H, fx->L, fx->d}, ws[4] = {fx->B, H, fx->L,
                                                       fx->S2};
    int skip = fx->batched ? 0 : 1;
    t[5] = nan_new(dev, 4 - skip, hs + skip);
    if (need_weights)
        t[6] = nan_new(dev, 4 - skip, ws + skip);
    int64_t gs[2] = {fx->B, H};
    if (gates)
        t[7] = upload_new(dev, gnd, gs + 2 - gnd, gates);
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = t[0], a.key = t[1], a.value = t[2], a.key_padding_mask = t[3];
    a.output = t[4], a.head_outputs = t[5], a.weights = t[6];
    a.head_gates = t[7];
    a.need_weights = need_weights;
    a.average_attn_weights = 0;
    a.is_causal = fx->causal;
    mha_status st = mha_layer_forward(layer, &a);
    memset(res, 0, sizeof *res);
    if (st == MHA_OK) {
        res->out = download(t[4]);
        res->heads = download(t[5]);
        res->weights = need_weights ? download(t[6]) : NULL;
    }
    for (int i = 0; i < 8; i++)
        mha_tensor_destroy(t[i]);
    return st;
}

/* The fixture's per-head array (B x H x rows) restricted to heads kept[]. */
static double *select_heads(const double *x, int64_t B, int64_t H,
                            size_t rows, const int64_t *kept, int64_t nkept)
{
    double *y = malloc((size_t)(B * nkept) * rows * sizeof *y);
    for (int64_t b = 0; b < B; b++)
        for (int64_t k = 0; k < nkept; k++)
            memcpy(y + (size_t)(b * nkept + k) * rows,
                   x + (size_t)(b * H + kept[k]) * rows, rows * sizeof *y);
    return y;
}

static void expect_close(const char *what, const char *where,
                         const float *got, const double *want, size_t n,
                         double tol)
{
    double scale = 1.0;
    for (size_t i = 0; i < n; i++)
        if (fabs(want[i]) > scale)
            scale = fabs(want[i]);
    test_diff df = test_compare(got, want, n);
    cr_expect_eq(df.nonfinite_mismatch, 0, "%s %s: %zu NaN/Inf", what, where,
                 df.nonfinite_mismatch);
    cr_expect_leq(df.max_abs, tol * scale, "%s %s: max abs error %g at %zu "
                  "(got %g want %g)", what, where, df.max_abs, df.worst,
                  got[df.worst], want[df.worst]);
}

/* fx's layer on dev in dt with the fixture's weights; NULL when the
 * device refuses dt. */
static mha_layer *make_layer(mha_context *ctx, mha_device *dev,
                             const fixture *fx, mha_dtype dt)
{
    mha_layer_config cfg = fx->cfg;
    cfg.dtype = dt;
    mha_layer *layer = NULL;
    if (mha_layer_create(dev, &cfg, &layer) != MHA_OK)
        return NULL;
    cr_assert_eq(mha_layer_load_safetensors(layer, fx->path, ""), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    return layer;
}

/* Prunes fx's heads (if any); the kept heads' original indices into kept,
 * and fx's gates of those heads into gates ([G, kept]). */
static int64_t prune_as_fixture(mha_context *ctx, mha_layer *layer,
                                const fixture *fx, int64_t *kept,
                                float *gates)
{
    int64_t n = 0;
    if (fx->nprune)
        cr_assert_eq(mha_layer_prune_heads(layer, fx->prune, fx->nprune),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
    cr_assert_eq(mha_layer_kept_heads(layer, kept, 64, &n), MHA_OK);
    cr_assert_eq(n, fx->H - fx->nprune);
    int64_t G = fx->gnd == 2 ? fx->gshape[0] : 1;
    for (int64_t g = 0; g < G; g++)
        for (int64_t k = 0; k < n; k++)
            gates[g * n + k] = fx->gates[g * fx->H + kept[k]];
    return n;
}

static size_t out_count(const fixture *fx)
{
    return (size_t)(fx->B * fx->L * fx->cfg.embed_dim);
}

/* fx on one device and dtype, fused and with per-head weights: output,
 * head outputs and weights of the kept heads against the fixture. */
static void check_on(mha_context *ctx, mha_device *dev, const char *where,
                     const fixture *fx, mha_dtype dt)
{
    mha_layer *layer = make_layer(ctx, dev, fx, dt);
    mha_device_info info;
    cr_assert_eq(mha_device_info_of(dev, &info), MHA_OK);
    if (!layer) { /* only a device without fp16 storage may refuse */
        cr_expect(dt == MHA_F16 && !(info.features & MHA_FEATURE_FP16_STORAGE),
                  "%s refused a %s layer", where, mha_dtype_name(dt));
        return;
    }
    int64_t kept[64];
    float gates[8 * 64];
    int64_t n = prune_as_fixture(ctx, layer, fx, kept, gates);
    size_t hrows = (size_t)(fx->L * fx->d), wrows = (size_t)(fx->L * fx->S2);
    double *want_h = select_heads(fx->heads, fx->B, fx->H, hrows, kept, n);
    double *want_w = select_heads(fx->weights, fx->B, fx->H, wrows, kept, n);
    double tol = dt == MHA_F16 ? 1e-2 : 1e-4;
    for (int need_weights = 0; need_weights < 2; need_weights++) {
        char at[1300];
        snprintf(at, sizeof at, "%s %s%s", where, mha_dtype_name(dt),
                 need_weights ? " need_weights" : "");
        result r;
        mha_status st = run_layer(layer, dev, fx, n, gates, fx->gnd,
                                  need_weights, &r);
        cr_assert_eq(st, MHA_OK, "%s: %s", at, mha_context_errmsg(ctx));
        expect_close("output", at, r.out, fx->out, out_count(fx), tol);
        expect_close("head_outputs", at, r.heads, want_h,
                     (size_t)(fx->B * n) * hrows, tol);
        if (need_weights)
            expect_close("weights", at, r.weights, want_w,
                         (size_t)(fx->B * n) * wrows, tol);
        free_result(&r);
    }
    free(want_h);
    free(want_w);
    cr_assert_eq(mha_layer_destroy(layer), MHA_OK);
}

static mha_context *new_context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    return ctx;
}

/* One fixture's layer on the cpu device, for the tests that need one. */
typedef struct cpu_case {
    mha_context *ctx;
    fixture fx;
    mha_device *dev;
    mha_layer *layer;
} cpu_case;

static void cpu_case_open(cpu_case *c, const char *name)
{
    c->ctx = new_context();
    load_fixture(c->ctx, name, &c->fx);
    cr_assert_eq(mha_device_open(c->ctx, "cpu", NULL, &c->dev), MHA_OK);
    c->layer = make_layer(c->ctx, c->dev, &c->fx, MHA_F32);
}

static void cpu_case_close(cpu_case *c)
{
    mha_layer_destroy(c->layer);
    mha_device_destroy(c->dev);
    free_fixture(&c->fx);
    cr_assert_eq(mha_context_destroy(c->ctx), MHA_OK);
}

static void run_fixture(const char *name)
{
    mha_context *ctx = new_context();
    fixture fx;
    load_fixture(ctx, name, &fx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    cr_assert_gt(nd, 0);
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        char where[1200];
        snprintf(where, sizeof where, "%.40s on %s", name, devs[i].label);
        check_on(ctx, dev, where, &fx, MHA_F32);
        check_on(ctx, dev, where, &fx, MHA_F16);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    free_fixture(&fx);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

#define FIXTURES(X)                                                          \
    X(gates_self)                                                            \
    X(gates_batch_cross)                                                     \
    X(gates_unbatched_no_bias)                                               \
    X(prune_self)                                                            \
    X(prune_cross_bias_kv)
#define FIXTURE_TEST(name)                                                   \
    Test(heads, name) { run_fixture(#name); }
FIXTURES(FIXTURE_TEST)

/* ---- pruned = gated off -------------------------------------------------------- */

static void pruned_equals_gated(const char *name)
{
    mha_context *ctx = new_context();
    fixture fx;
    load_fixture(ctx, name, &fx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        mha_layer *full = make_layer(ctx, dev, &fx, MHA_F32);
        mha_layer *pruned = make_layer(ctx, dev, &fx, MHA_F32);
        int64_t kept[64];
        float gates[8 * 64];
        int64_t n = prune_as_fixture(ctx, pruned, &fx, kept, gates);
        result a, b;
        cr_assert_eq(run_layer(full, dev, &fx, fx.H, fx.gates, fx.gnd, 0, &a),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
        cr_assert_eq(run_layer(pruned, dev, &fx, n, gates, fx.gnd, 0, &b),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
        for (size_t k = 0; k < out_count(&fx); k++)
            cr_expect_leq(fabsf(a.out[k] - b.out[k]), 1e-5f,
                          "%s on %s: element %zu: gated %g, pruned %g", name,
                          devs[i].label, k, a.out[k], b.out[k]);
        free_result(&a);
        free_result(&b);
        mha_layer_destroy(full);
        mha_layer_destroy(pruned);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    free_fixture(&fx);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(heads, pruned_equals_gated_off) { pruned_equals_gated("prune_self"); }
Test(heads, pruned_equals_gated_off_cross)
{
    pruned_equals_gated("prune_cross_bias_kv");
}

/* ---- memory and work ------------------------------------------------------------ */

/* The work of the layer's most recent plan, from its nodes: attention
 * rows (batch x head x query rows of SCORES and ATTENTION nodes) and
 * projection multiply-adds. */
static void plan_work(const mha_layer *layer, int64_t *rows, int64_t *macs)
{
    const mha_plan *plan = NULL;
    for (int i = 0; i < MHA_PLAN_CACHE; i++)
        if (layer->plans[i] &&
            (!plan || layer->plans[i]->last_used > plan->last_used))
            plan = layer->plans[i];
    cr_assert(plan);
    const mha_graph *g = &plan->graph;
    *rows = *macs = 0;
    for (int i = 0; i < g->nnodes; i++) {
        const mha_gnode *n = &g->nodes[i];
        const mha_gtensor *d = &g->tensors[n->dst];
        if (n->removed)
            continue;
        if (n->op == MHA_OP_SCORES || n->op == MHA_OP_ATTENTION)
            *rows += d->ne[0] * d->ne[1] * d->ne[2];
        if (n->op == MHA_OP_PROJECTION)
            *macs += d->ne[0] * d->ne[2] * d->ne[3] *
                     g->tensors[n->src[0]].ne[3];
    }
}

Test(heads, pruning_frees_memory_and_work)
{
    mha_context *ctx = new_context();
    fixture fx;
    load_fixture(ctx, "prune_self", &fx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        mha_layer *layer = make_layer(ctx, dev, &fx, MHA_F32);
        result r;
        uint64_t before, pruned_idle, after;
        int64_t rows0, macs0, rows1, macs1;
        cr_assert_eq(run_layer(layer, dev, &fx, fx.H, NULL, 0, 0, &r), MHA_OK);
        free_result(&r);
        plan_work(layer, &rows0, &macs0);
        cr_assert_eq(mha_device_memory_usage(dev, &before, NULL), MHA_OK);
        cr_assert_eq(mha_layer_prune_heads(layer, fx.prune, fx.nprune), MHA_OK);
        cr_assert_eq(mha_device_memory_usage(dev, &pruned_idle, NULL), MHA_OK);
        cr_assert_eq(run_layer(layer, dev, &fx, fx.H - fx.nprune, NULL, 0, 0,
                               &r), MHA_OK);
        free_result(&r);
        cr_assert_eq(mha_device_memory_usage(dev, &after, NULL), MHA_OK);
        plan_work(layer, &rows1, &macs1);
        cr_expect_lt(pruned_idle, before, "%s", devs[i].label);
        cr_expect_lt(after, before, "%s: device memory %llu after pruning, "
                     "%llu before", devs[i].label, (unsigned long long)after,
                     (unsigned long long)before);
        /* attention: exactly the kept heads; projections: E x kept d */
        int64_t H = fx.H, kept = fx.H - fx.nprune;
        cr_expect_eq(rows1 * H, rows0 * kept, "%s: rows %lld -> %lld",
                     devs[i].label, (long long)rows0, (long long)rows1);
        cr_expect_eq(macs1 * H, macs0 * kept, "%s: projection MACs %lld -> "
                     "%lld", devs[i].label, (long long)macs0,
                     (long long)macs1);
        mha_layer_destroy(layer);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    free_fixture(&fx);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

/* Gates of 0 skip the attention of those heads (fused and unfused); a head
 * gated off for one batch item only is computed. */
Test(heads, zero_gates_skip_work)
{
    cpu_case c;
    cpu_case_open(&c, "prune_self");
    mha_context *ctx = c.ctx;
    mha_device *dev = c.dev;
    mha_layer *layer = c.layer;
    float g[2 * 8];
    int64_t rows_all, rows, macs_all, macs;
    for (int need_weights = 0; need_weights < 2; need_weights++) {
        result r;
        cr_assert_eq(run_layer(layer, dev, &c.fx, 8, NULL, 0, need_weights,
                               &r), MHA_OK);
        free_result(&r);
        plan_work(layer, &rows_all, &macs_all);
        for (int h = 0; h < 8; h++) /* heads 1, 3, 4, 6 off */
            g[h] = g[8 + h] = (h == 1 || h == 3 || h == 4 || h == 6) ? 0.0f
                                                                      : 1.0f;
        cr_assert_eq(run_layer(layer, dev, &c.fx, 8, g, 1, need_weights, &r),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
        free_result(&r);
        plan_work(layer, &rows, &macs);
        cr_expect_eq(rows * 2, rows_all, "need_weights %d: rows %lld of %lld",
                     need_weights, (long long)rows, (long long)rows_all);
        g[8 + 1] = 0.5f; /* head 1 is on for batch item 1 */
        cr_assert_eq(run_layer(layer, dev, &c.fx, 8, g, 2, need_weights, &r),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
        free_result(&r);
        plan_work(layer, &rows, &macs);
        cr_expect_eq(rows * 8, rows_all * 5, "need_weights %d: rows %lld",
                     need_weights, (long long)rows);
    }
    cpu_case_close(&c);
}

/* ---- save and load ---------------------------------------------------------------- */

Test(heads, save_load_round_trip)
{
    cpu_case c;
    cpu_case_open(&c, "prune_cross_bias_kv");
    mha_context *ctx = c.ctx;
    mha_device *dev = c.dev;
    mha_layer *pruned = c.layer;
    int64_t gone[1] = {2}, more[1] = {0}, kept[8], n = 0;
    cr_assert_eq(mha_layer_prune_heads(pruned, gone, 1), MHA_OK);
    /* pruning more later names heads by their original index */
    cr_assert_eq(mha_layer_prune_heads(pruned, more, 1), MHA_OK);
    cr_assert_eq(mha_layer_kept_heads(pruned, kept, 8, &n), MHA_OK);
    cr_assert_eq(n, 2);
    cr_assert(kept[0] == 1 && kept[1] == 3);
    char dir[512], path[600];
    test_temp_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/pruned.safetensors", dir);
    cr_assert_eq(mha_layer_save_safetensors(pruned, path, "enc.0."), MHA_OK,
                 "%s", mha_context_errmsg(ctx));

    /* the file: pruned shapes under nn.MHA names, the kept heads */
    mha_st_file *f = NULL;
    cr_assert_eq(mha_st_open(&ctx->host, path, &f), MHA_OK);
    cr_expect_str_eq(mha_st_metadata(f, "libmha.kept_heads"), "1,3");
    cr_expect_str_eq(mha_st_metadata(f, "libmha.num_heads"), "4");
    const mha_st_entry *q = mha_st_find(f, "enc.0.q_proj_weight");
    const mha_st_entry *o = mha_st_find(f, "enc.0.out_proj.weight");
    cr_assert(q && o && mha_st_find(f, "enc.0.bias_k"));
    cr_expect(q->shape[0] == 12 && q->shape[1] == 24);
    cr_expect(o->shape[0] == 24 && o->shape[1] == 12);
    mha_st_close(f);

    /* a fresh layer of the original config loads it as the same layer */
    mha_layer *loaded = NULL;
    cr_assert_eq(mha_layer_create(dev, &c.fx.cfg, &loaded), MHA_OK);
    cr_assert_eq(mha_layer_load_safetensors(loaded, path, "enc.0."), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    cr_assert_eq(mha_layer_kept_heads(loaded, kept, 8, &n), MHA_OK);
    cr_assert(n == 2 && kept[0] == 1 && kept[1] == 3);
    result a, b;
    cr_assert_eq(run_layer(pruned, dev, &c.fx, 2, NULL, 0, 1, &a), MHA_OK);
    cr_assert_eq(run_layer(loaded, dev, &c.fx, 2, NULL, 0, 1, &b), MHA_OK);
    cr_expect_arr_eq(a.out, b.out, out_count(&c.fx) * sizeof(float));
    cr_expect_arr_eq(a.weights, b.weights,
                     (size_t)(c.fx.B * 2 * c.fx.L * c.fx.S2) * sizeof(float));
    free_result(&a);
    free_result(&b);

    /* a layer that pruned a head the file keeps cannot take it */
    mha_layer *other = NULL;
    int64_t three[1] = {3};
    cr_assert_eq(mha_layer_create(dev, &c.fx.cfg, &other), MHA_OK);
    cr_assert_eq(mha_layer_prune_heads(other, three, 1), MHA_OK);
    cr_expect_eq(mha_layer_load_safetensors(other, path, "enc.0."),
                 MHA_INVALID_ARGUMENT);
    cr_expect(strstr(mha_context_errmsg(ctx), "keeps head 3"), "%s",
              mha_context_errmsg(ctx));
    mha_layer_destroy(other);
    mha_layer_destroy(loaded);
    test_remove_tree(dir);
    cpu_case_close(&c);
}

/* ---- bad input ------------------------------------------------------------------ */

/* The message of the last failed forward_with (its tensors' destruction
 * clears the context's). */
static char forward_msg[1024];

static void expect_error(mha_context *ctx, mha_status got, mha_status want,
                         const char *needle)
{
    const char *msg = forward_msg[0] ? forward_msg : mha_context_errmsg(ctx);
    cr_expect_eq(got, want, "status %s, expected %s (%s)",
                 mha_status_str(got), mha_status_str(want), msg);
    cr_expect(strstr(msg, needle), "message \"%s\" does not name \"%s\"",
              msg, needle);
    forward_msg[0] = 0;
}

/* A forward of gates_self (B 2, H 4) with gates of the given shape and
 * dtype (and head outputs of hshape when hnd > 0). */
static mha_status forward_with(mha_context *ctx, mha_device *dev,
                               mha_layer *layer,
                               const fixture *fx, mha_dtype gdt, int gnd,
                               const int64_t *gshape, int hnd,
                               const int64_t *hshape)
{
    mha_tensor *t[6] = {NULL};
    upload_inputs(dev, fx, t);
    mha_tensor *g = NULL, *h = NULL;
    cr_assert_eq(mha_tensor_create(dev, gdt, gnd, gshape, &g), MHA_OK);
    float ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    cr_assert_eq(mha_tensor_upload(g, ones, count_of(g) * 4), MHA_OK);
    if (hnd)
        h = upload_new(dev, hnd, hshape, NULL);
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = t[0], a.key = t[1], a.value = t[2], a.output = t[3];
    a.head_gates = t[4] = g, a.head_outputs = t[5] = h;
    mha_status st = mha_layer_forward(layer, &a);
    snprintf(forward_msg, sizeof forward_msg, "%s",
             mha_context_errmsg(ctx));
    for (int i = 0; i < 6; i++)
        mha_tensor_destroy(t[i]);
    return st;
}

Test(heads, bad_input)
{
    cpu_case c;
    cpu_case_open(&c, "gates_self");
    mha_context *ctx = c.ctx;
    mha_device *dev = c.dev;
    mha_layer *layer = c.layer;
    int64_t five[1] = {5}, b3h4[2] = {3, 4}, four[1] = {4};
    int64_t hs_bad[4] = {2, 4, 5, 3};
    expect_error(ctx, forward_with(ctx, dev, layer, &c.fx, MHA_F32, 1, five, 0, NULL),
                 MHA_SHAPE_MISMATCH, "head_gates has shape [5]");
    expect_error(ctx, forward_with(ctx, dev, layer, &c.fx, MHA_F32, 2, b3h4, 0, NULL),
                 MHA_SHAPE_MISMATCH, "head_gates has shape [3,4]; expected [2,4]");
    expect_error(ctx, forward_with(ctx, dev, layer, &c.fx, MHA_I32, 1, four, 0, NULL),
                 MHA_DTYPE_MISMATCH, "head_gates");
    expect_error(ctx, forward_with(ctx, dev, layer, &c.fx, MHA_F32, 1, four, 4,
                                   hs_bad),
                 MHA_SHAPE_MISMATCH, "head_outputs");
    cr_expect_eq(forward_with(ctx, dev, layer, &c.fx, MHA_F32, 1, four, 0, NULL),
                 MHA_OK, "%s", forward_msg);
    forward_msg[0] = 0;

    /* pruning: a head that does not exist, twice, all, again */
    int64_t h4[1] = {4}, neg[1] = {-1}, twice[2] = {1, 1};
    int64_t all[4] = {0, 1, 2, 3}, one[1] = {1}, rest[3] = {0, 2, 3}, n = 0;
    expect_error(ctx, mha_layer_prune_heads(layer, h4, 1),
                 MHA_INVALID_ARGUMENT, "head 4 does not exist");
    expect_error(ctx, mha_layer_prune_heads(layer, neg, 1),
                 MHA_INVALID_ARGUMENT, "head -1 does not exist");
    expect_error(ctx, mha_layer_prune_heads(layer, twice, 2),
                 MHA_INVALID_ARGUMENT, "head 1 is listed twice");
    expect_error(ctx, mha_layer_prune_heads(layer, all, 4),
                 MHA_INVALID_ARGUMENT, "would leave none");
    expect_error(ctx, mha_layer_prune_heads(layer, NULL, 1),
                 MHA_INVALID_ARGUMENT, "heads is NULL");
    cr_assert_eq(mha_layer_prune_heads(layer, one, 1), MHA_OK);
    expect_error(ctx, mha_layer_prune_heads(layer, one, 1),
                 MHA_INVALID_ARGUMENT, "head 1 was pruned already");
    expect_error(ctx, mha_layer_prune_heads(layer, rest, 3),
                 MHA_INVALID_ARGUMENT, "would leave none");
    int64_t kept[4];
    expect_error(ctx, mha_layer_kept_heads(layer, kept, 2, &n),
                 MHA_BUFFER_TOO_SMALL, "keeps 3 heads");
    cr_expect_eq(n, 3);
    /* the gates now count the 3 kept heads */
    expect_error(ctx, forward_with(ctx, dev, layer, &c.fx, MHA_F32, 1, four, 0, NULL),
                 MHA_SHAPE_MISMATCH, "expected [3]");
    expect_error(ctx, mha_layer_save_safetensors(layer, "/nonexistent/dir/x",
                                                 NULL),
                 MHA_IO, "/nonexistent/dir/x");
    cpu_case_close(&c);
}

/* A caller built against the first mha_forward_args (without the head
 * fields) is served: what lies past its struct_size is not read. */
Test(heads, forward_args_first_version)
{
    cpu_case c;
    cpu_case_open(&c, "gates_self");
    mha_context *ctx = c.ctx;
    mha_device *dev = c.dev;
    mha_layer *layer = c.layer;
    mha_tensor *t[4];
    upload_inputs(dev, &c.fx, t);
    mha_forward_args a;
    size_t v1 = offsetof(mha_forward_args, head_gates);
    cr_assert_eq(mha_forward_args_init_sized(&a, v1), MHA_OK);
    a.query = t[0], a.key = t[1], a.value = t[2], a.output = t[3];
    a.head_gates = (const mha_tensor *)&a; /* garbage past struct_size */
    cr_expect_eq(mha_layer_forward(layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    for (int i = 0; i < 4; i++)
        mha_tensor_destroy(t[i]);
    cpu_case_close(&c);
}

/* ---- the decoder layer's gates ------------------------------------------------ */

enum { DE = 32, DH = 4, DKV = 2, DD = 8, DB = 2, DT = 3 };

typedef struct dec_env {
    mha_decoder *layer;
    mha_kv_cache *cache;
    mha_tensor *x, *y, *g1, *g2;
} dec_env;

/* A GQA decoder (4 query heads, 2 kv heads) with random weights; q_proj
 * rows of query heads 0 and 1 (kv group 0) are NaN when poison is set, so
 * any output they reach is NaN. */
static void dec_setup(mha_device *dev, dec_env *e, int poison)
{
    mha_decoder_config c;
    mha_decoder_config_init(&c, DE, DH);
    c.num_kv_heads = DKV;
    c.o_bias = 1;
    cr_assert_eq(mha_decoder_create(dev, &c, &e->layer), MHA_OK);
    test_rng r = {99};
    static const struct { const char *name; int64_t rows, cols; } w[] = {
        {"q_proj.weight", DH * DD, DE}, {"k_proj.weight", DKV * DD, DE},
        {"v_proj.weight", DKV * DD, DE}, {"o_proj.weight", DE, DH * DD},
        {"o_proj.bias", DE, 0}};
    for (int i = 0; i < 5; i++) {
        int64_t shape[2] = {w[i].rows, w[i].cols};
        size_t n = (size_t)(w[i].rows * (w[i].cols ? w[i].cols : 1));
        float *v = malloc(n * sizeof *v);
        for (size_t k = 0; k < n; k++)
            v[k] = 0.3f * test_normal(&r);
        if (poison && i == 0)
            for (size_t k = 0; k < (size_t)(2 * DD * DE); k++)
                v[k] = NAN;
        cr_assert_eq(mha_decoder_set_weight(e->layer, w[i].name, v,
                                            w[i].cols ? 2 : 1, shape),
                     MHA_OK);
        free(v);
    }
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    kc.capacity = 16, kc.num_sequences = DB, kc.num_kv_heads = DKV;
    kc.head_dim = DD;
    cr_assert_eq(mha_kv_cache_create(dev, &kc, &e->cache), MHA_OK);
    int64_t xs[3] = {DB, DT, DE}, g1s[1] = {DH}, g2s[2] = {DB, DH};
    float x[DB * DT * DE];
    for (int k = 0; k < DB * DT * DE; k++)
        x[k] = test_normal(&r);
    e->x = upload_new(dev, 3, xs, x);
    e->y = upload_new(dev, 3, xs, NULL);
    e->g1 = upload_new(dev, 1, g1s, NULL);
    e->g2 = upload_new(dev, 2, g2s, NULL);
}

static void dec_teardown(dec_env *e)
{
    mha_tensor *t[4] = {e->x, e->y, e->g1, e->g2};
    for (int i = 0; i < 4; i++)
        mha_tensor_destroy(t[i]);
    mha_kv_cache_destroy(e->cache);
    mha_decoder_destroy(e->layer);
}

/* The prefill of x into an empty cache with gates (nd 0: none). */
static float *dec_run(mha_context *ctx, dec_env *e, int nd, const float *g)
{
    mha_decoder_forward_args a;
    mha_decoder_forward_args_init(&a);
    a.x = e->x, a.cache = e->cache, a.output = e->y;
    if (nd) {
        a.head_gates = nd == 1 ? e->g1 : e->g2;
        cr_assert_eq(mha_tensor_upload((mha_tensor *)a.head_gates, g,
                                       (size_t)(nd == 1 ? DH : DB * DH) * 4),
                     MHA_OK);
    }
    cr_assert_eq(mha_kv_cache_clear(e->cache), MHA_OK);
    cr_assert_eq(mha_decoder_forward(e->layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    return download(e->y);
}

/* The output is o_proj.bias + sum_h g_h c_h: gates equal the same sum of
 * each head's contribution (from one-hot gates); all ones equal no gates;
 * a kv group gated off is not computed (its NaN query never shows). */
Test(heads, decoder_gates)
{
    mha_context *ctx = new_context();
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    enum { N = DB * DT * DE };
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        dec_env e;
        dec_setup(dev, &e, 0);
        float ones[DH] = {1, 1, 1, 1}, zeros[DH] = {0}, onehot[DH][DH] = {{0}};
        float *plain = dec_run(ctx, &e, 0, NULL);
        float *all = dec_run(ctx, &e, 1, ones), *none = dec_run(ctx, &e, 1,
                                                              zeros);
        float *part[DH];
        for (int h = 0; h < DH; h++) {
            onehot[h][h] = 1;
            part[h] = dec_run(ctx, &e, 1, onehot[h]);
        }
        float g[DH] = {0, 0, 0.5f, -1.5f};
        float g2[DB * DH] = {0, 0, 0.5f, -1.5f, 2.0f, 0, 1, 0.25f};
        float *one_row = dec_run(ctx, &e, 1, g), *per_b = dec_run(ctx, &e, 2,
                                                                 g2);
        for (int k = 0; k < N; k++) {
            int b = k / (DT * DE);
            double want = none[k], want_b = none[k];
            for (int h = 0; h < DH; h++) {
                want += g[h] * (double)(part[h][k] - none[k]);
                want_b += g2[b * DH + h] * (double)(part[h][k] - none[k]);
            }
            cr_expect_leq(fabsf(all[k] - plain[k]), 1e-6f, "%s", devs[i].label);
            cr_expect_leq(fabs(one_row[k] - want), 1e-4, "%s: %d: %g vs %g",
                          devs[i].label, k, one_row[k], want);
            cr_expect_leq(fabs(per_b[k] - want_b), 1e-4, "%s: %d: %g vs %g",
                          devs[i].label, k, per_b[k], want_b);
        }
        float *bufs[5] = {plain, all, none, one_row, per_b};
        for (int h = 0; h < 5; h++)
            free(bufs[h]);
        for (int h = 0; h < DH; h++)
            free(part[h]);
        dec_teardown(&e);

        dec_setup(dev, &e, 1); /* group 0's queries are NaN */
        float *skipped = dec_run(ctx, &e, 1, g);
        for (int k = 0; k < N; k++)
            cr_expect(isfinite(skipped[k]), "%s: output %d is %g: group 0 "
                      "was computed", devs[i].label, k, skipped[k]);
        free(skipped);
        dec_teardown(&e);
        cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    }
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}
