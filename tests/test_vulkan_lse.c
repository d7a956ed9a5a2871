/* test_vulkan_lse.c: the Vulkan fused attention's saved row log-sum-exp
 * (core/backend.h: ATTENTION's extra_dst[MHA_DST_LSE], which a training
 * forward keeps for the backward). Each case runs one ATTENTION node on
 * every Vulkan device and compares its LSE and output with a reference in
 * double precision computed here: LSE_i = ln sum_j exp(s_ij) over the
 * scaled, masked scores and the sink, -inf for a row with nothing
 * attendable. Cases cover causal, an additive mask with a fully masked
 * row, a key padding mask, an appended bias_k key (mask_cols < S'),
 * sinks, head sizes 64 and 80, a strided LSE view and a decode shape that
 * the backend splits over the keys. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "context.h"

typedef struct lse_case {
    const char *name;
    int B, H, L, S, D; /* S is S' (keys, appended ones included) */
    int mask_cols;
    int causal;
    bool mask;  /* [1,1,L,S'] additive; row 1 fully masked */
    bool kpm;   /* [B,1,1,S'] additive; every third key masked */
    bool sinks; /* one logit per head */
    int lse_step; /* elements between LSE entries (1: contiguous) */
} lse_case;

static const lse_case cases[] = {
    {"plain_d64", 2, 2, 33, 47, 64, 47, 0, false, false, false, 1},
    {"causal_d64", 1, 2, 64, 64, 64, 64, 1, false, false, false, 1},
    {"masked_row_kpm_d64", 2, 2, 16, 40, 64, 40, 0, true, true, false, 1},
    {"bias_k_col_d64", 1, 2, 16, 41, 64, 40, 0, true, false, false, 2},
    {"causal_sinks_d80", 1, 3, 40, 40, 80, 40, 1, false, false, true, 1},
    {"masked_row_sinks_d80", 1, 2, 8, 24, 80, 24, 0, true, false, true, 3},
    {"decode_split_d64", 1, 2, 1, 1024, 64, 1024, 0, false, true, false, 1},
};

static mha_tdesc view4(void *buf, int n0, int n1, int n2, int n3)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = n0, t.ne[1] = n1, t.ne[2] = n2, t.ne[3] = n3;
    t.nb[3] = 1, t.nb[2] = n3, t.nb[1] = (int64_t)n2 * n3;
    t.nb[0] = (int64_t)n1 * n2 * n3;
    t.buf = buf;
    return t;
}

/* Host data of a case and its device copies. */
typedef struct lse_data {
    float *q, *k, *v, *mask, *kpm, *sinks;
    size_t nq, nk, nmask, nkpm;
} lse_data;

static float *filled(size_t n, float f)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = 0.8f * sinf(f * (float)i + 0.3f);
    return x;
}

static void make_data(const lse_case *c, lse_data *d)
{
    d->nq = (size_t)c->B * c->H * c->L * c->D;
    d->nk = (size_t)c->B * c->H * c->S * c->D;
    d->nmask = (size_t)c->L * c->S;
    d->nkpm = (size_t)c->B * c->S;
    d->q = filled(d->nq, 0.37f);
    d->k = filled(d->nk, 0.23f);
    d->v = filled(d->nk, 0.11f);
    d->sinks = filled((size_t)c->H, 1.7f);
    d->mask = filled(d->nmask, 0.05f);
    for (int j = 0; c->mask && j < c->S; j++)
        d->mask[(size_t)1 * c->S + j] = -INFINITY; /* row 1 */
    d->kpm = calloc(d->nkpm, sizeof *d->kpm);
    for (size_t j = 0; j < d->nkpm; j++)
        if (j % 3 == 1)
            d->kpm[j] = -INFINITY;
}

static void free_data(lse_data *d)
{
    free(d->q), free(d->k), free(d->v), free(d->mask), free(d->kpm);
    free(d->sinks);
}

/* Score of row (b, h, i) and key j, as core/backend.h defines it. */
static double score(const lse_case *c, const lse_data *d, double scale,
                    int b, int h, int i, int j)
{
    const float *q = d->q + (((size_t)b * c->H + h) * c->L + i) * c->D;
    const float *k = d->k + (((size_t)b * c->H + h) * c->S + j) * c->D;
    double s = 0;
    for (int e = 0; e < c->D; e++)
        s += (double)q[e] * k[e];
    s *= scale;
    if (j < c->mask_cols) {
        if (c->mask)
            s += d->mask[(size_t)i * c->S + j];
        if (c->kpm)
            s += d->kpm[(size_t)b * c->S + j];
        if (c->causal && j > i)
            s = -INFINITY;
    }
    return s;
}

/* The reference LSE of row (b, h, i) and its output in out[D]. */
static double reference(const lse_case *c, const lse_data *d, double scale,
                        int b, int h, int i, double *out)
{
    double m = c->sinks ? d->sinks[h] : -INFINITY;
    for (int j = 0; j < c->S; j++)
        m = fmax(m, score(c, d, scale, b, h, i, j));
    memset(out, 0, sizeof *out * (size_t)c->D);
    bool any = false;
    for (int j = 0; j < c->S; j++)
        any |= score(c, d, scale, b, h, i, j) != -INFINITY;
    if (!any)
        return -INFINITY; /* sinks carry no value: nothing attendable */
    double l = c->sinks ? exp(d->sinks[h] - m) : 0.0;
    for (int j = 0; j < c->S; j++) {
        double p = exp(score(c, d, scale, b, h, i, j) - m);
        const float *v = d->v + (((size_t)b * c->H + h) * c->S + j) * c->D;
        l += p;
        for (int e = 0; e < c->D; e++)
            out[e] += p * v[e];
    }
    for (int e = 0; e < c->D; e++)
        out[e] /= l;
    return m + log(l);
}

static void *upload(mha_device *dev, const float *x, size_t n)
{
    void *buf = NULL;
    cr_assert_eq(mha_dev_alloc(dev, n * sizeof *x, &buf), MHA_OK);
    cr_assert_eq(mha_dev_write(dev, buf, 0, x, n * sizeof *x), MHA_OK);
    return buf;
}

/* Compares the device's LSE (and output) of case c with the reference. */
static void check_case(mha_device *dev, const char *label, const lse_case *c)
{
    lse_data d;
    make_data(c, &d);
    const double scale = 1.0 / sqrt((double)c->D);
    const size_t rows = (size_t)c->B * c->H * c->L;
    const size_t nlse = rows * (size_t)c->lse_step;
    float *lse_init = malloc(nlse * sizeof *lse_init);
    for (size_t i = 0; i < nlse; i++)
        lse_init[i] = 12345.0f; /* a value no row has */
    void *bq = upload(dev, d.q, d.nq), *bk = upload(dev, d.k, d.nk);
    void *bv = upload(dev, d.v, d.nk), *bo = upload(dev, d.q, d.nq);
    void *bm = upload(dev, d.mask, d.nmask), *bp = upload(dev, d.kpm, d.nkpm);
    void *bs = upload(dev, d.sinks, (size_t)c->H);
    void *bl = upload(dev, lse_init, nlse);
    mha_node n;
    memset(&n, 0, sizeof n);
    n.op = MHA_OP_ATTENTION;
    n.src[MHA_SRC_Q] = view4(bq, c->B, c->H, c->L, c->D);
    n.src[MHA_SRC_K] = view4(bk, c->B, c->H, c->S, c->D);
    n.src[MHA_SRC_V] = view4(bv, c->B, c->H, c->S, c->D);
    n.dst = view4(bo, c->B, c->H, c->L, c->D);
    if (c->mask)
        n.src[MHA_SRC_MASK] = view4(bm, 1, 1, c->L, c->S);
    if (c->kpm)
        n.src[MHA_SRC_KPM] = view4(bp, c->B, 1, 1, c->S);
    if (c->sinks)
        n.src[MHA_SRC_SINKS] = view4(bs, 1, 1, 1, c->H);
    mha_tdesc *lse = &n.extra_dst[MHA_DST_LSE];
    *lse = view4(bl, c->B, c->H, 1, c->L);
    for (int i = 0; i < 4; i++)
        lse->nb[i] *= c->lse_step;
    n.params.scale = (float)scale;
    n.params.causal = c->causal;
    n.params.mask_cols = c->mask_cols;
    cr_assert(mha_dev_supports(dev, &n), "%s %s: ATTENTION with its LSE "
              "declined", label, c->name);
    cr_assert_eq(mha_dev_run(dev, &n), MHA_OK, "%s %s", label, c->name);
    cr_assert_eq(mha_dev_sync(dev), MHA_OK);
    float *got = malloc(nlse * sizeof *got), *o = malloc(d.nq * sizeof *o);
    cr_assert_eq(mha_dev_read(dev, bl, 0, got, nlse * sizeof *got), MHA_OK);
    cr_assert_eq(mha_dev_read(dev, bo, 0, o, d.nq * sizeof *o), MHA_OK);
    double *ref_o = malloc((size_t)c->D * sizeof *ref_o);
    int inf_rows = 0;
    for (size_t r = 0; r < rows; r++) {
        int i = (int)(r % (size_t)c->L), h = (int)(r / (size_t)c->L % c->H);
        int b = (int)(r / (size_t)c->L / c->H);
        double want = reference(c, &d, scale, b, h, i, ref_o);
        float lv = got[r * (size_t)c->lse_step];
        if (isinf(want)) {
            inf_rows++;
            cr_assert(isinf(lv) && lv < 0, "%s %s row %zu: LSE %g, want -inf",
                      label, c->name, r, lv);
        } else {
            cr_assert(fabs(lv - want) <= 1e-4 * (1 + fabs(want)),
                      "%s %s row %zu: LSE %.7g, want %.7g", label, c->name,
                      r, lv, want);
        }
        for (int e = 0; e < c->D; e++)
            cr_assert(fabs(o[r * (size_t)c->D + e] - ref_o[e]) <= 2e-5,
                      "%s %s row %zu col %d: output %g, want %g", label,
                      c->name, r, e, o[r * (size_t)c->D + e], ref_o[e]);
        for (int s = 1; s < c->lse_step; s++) /* the gaps are left alone */
            cr_assert_eq(got[r * (size_t)c->lse_step + s], 12345.0f);
    }
    /* the fully masked row has no appended key to see */
    cr_assert_eq(inf_rows, c->mask && c->mask_cols == c->S
                               ? c->B * c->H : 0,
                 "%s %s: %d rows with -inf", label, c->name, inf_rows);
    void *bufs[] = {bq, bk, bv, bo, bm, bp, bs, bl};
    size_t sizes[] = {d.nq, d.nk, d.nk, d.nq, d.nmask, d.nkpm,
                      (size_t)c->H, nlse};
    for (int i = 0; i < 8; i++)
        mha_dev_free(dev, bufs[i], sizes[i] * sizeof(float));
    free(got), free(o), free(ref_o), free(lse_init);
    free_data(&d);
}

Test(vulkan_lse, matches_a_double_reference, .timeout = 600)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++) {
        if (strncmp(devs[i].label, "vulkan", 6) != 0)
            continue;
        mha_device *dev = test_open(ctx, &devs[i]);
        for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
            check_case(dev, devs[i].label, &cases[k]);
        mha_device_destroy(dev);
        ran++;
    }
    mha_context_destroy(ctx);
    if (!ran)
        cr_skip_test("no Vulkan device");
}
