/* test_backward_fd.c: finite-difference checks of mha_layer_backward (the
 * fused attention backward of each backend and the layer around it),
 * independent of the PyTorch fixtures of test_backward.c. On every device
 * and CPU ISA, a tiny nn.MHA layer (E 8, H 2, L 3, S 9, N 2) with loss
 * sum(w * Y) for a fixed random w (so dY = w): sampled elements of the
 * gradients of the query, of in_proj_weight (q, k and v rows) and of
 * bias_k against central differences of the loss, each computed with the
 * device's own forward. Cases: plain, causal, a key_padding_mask that
 * masks every key of one batch item (fully masked rows: zero gradients),
 * add_bias_kv, and add_bias_kv with causal (appended keys are never
 * masked), also with S 66.
 *
 * Why h = 1e-2 and 2e-3: the loss is summed in double from the fp32 output
 * (|Y| ~ 1, 48 terms), so its rounding is ~1e-6 and the difference
 * quotient's rounding ~1e-6 / 2h = 5e-5; its truncation is h^2/6 f''' ~
 * 2e-5. Both are far below the tolerance, 2e-3 of the gradient's largest
 * magnitude (1..7 here; the errors measured stay under 3% of the tolerance); a
 * wrong gradient is off by a sizeable fraction of that magnitude. That the
 * check can fail is asserted, not assumed: the same differences compared
 * against the gradient at the next sampled element must miss by more than
 * the tolerance (they miss by 200-600 times it). Sampled: 10 elements of
 * the query and of in_proj_weight, all 8 of bias_k.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* S_MAX: the long case's source length; the others have S_SHORT keys,
 * enough for the CPU's 8-wide dS blocks. */
enum { E = 8, NH = 2, L = 3, S_SHORT = 9, S_MAX = 70, N = 2, SAMPLES = 10 };

#define FD_STEP 1e-2f /* h */
#define FD_TOL 2e-3   /* of the gradient's largest magnitude */

typedef struct fd_case {
    const char *name;
    int causal, kpm, bias_kv;
    int64_t S; /* source length */
} fd_case;

/* A tensor the differences perturb: the query or a weight, its host copy
 * (what the device holds) and the backward's gradient of it. */
typedef struct fd_param {
    const char *name; /* "query" or a state_dict name */
    float *host;
    int ndim;
    int64_t shape[3];
    size_t count;
    float *grad; /* downloaded from the backward */
} fd_param;

typedef struct fd_run {
    mha_context *ctx;
    const test_device *td;
    mha_device *dev;
    mha_layer *layer;
    mha_gradients *grads;
    mha_tensor *t[6]; /* query, key, value, output, dY, dquery */
    mha_tensor *kpm;
    mha_forward_args fa;
    float query[L * N * E], key[S_MAX * N * E],
        value[S_MAX * N * E], w[L * N * E];
    float in_w[3 * E * E], in_b[3 * E], out_w[E * E], out_b[E];
    float bias_k[E], bias_v[E];
} fd_run;

static void fill(test_rng *rng, float *x, size_t n, float sd)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sd * test_normal(rng);
}

static mha_tensor *upload(fd_run *r, mha_dtype dt, int nd,
                          const int64_t *shape, const void *data,
                          size_t bytes)
{
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(r->dev, dt, nd, shape, &t), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    cr_assert_eq(mha_tensor_upload(t, data, bytes), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
    return t;
}

/* Writes p's host copy to the device (the query tensor or the weight). */
static void push(fd_run *r, const fd_param *p)
{
    mha_status st =
        strcmp(p->name, "query") == 0
            ? mha_tensor_upload(r->t[0], p->host, p->count * sizeof(float))
            : mha_layer_set_weight(r->layer, p->name, p->host, p->ndim,
                                   p->shape);
    cr_assert_eq(st, MHA_OK, "%s on %s: %s", p->name, r->td->label,
                 mha_context_errmsg(r->ctx));
}

/* The layer's weights, in the layer's order of names. */
static void push_weights(fd_run *r, const fd_case *c)
{
    const fd_param w[] = {
        {"in_proj_weight", r->in_w, 2, {3 * E, E, 0}, 3 * E * E, NULL},
        {"in_proj_bias", r->in_b, 1, {3 * E, 0, 0}, 3 * E, NULL},
        {"out_proj.weight", r->out_w, 2, {E, E, 0}, E * E, NULL},
        {"out_proj.bias", r->out_b, 1, {E, 0, 0}, E, NULL},
        {"bias_k", r->bias_k, 3, {1, 1, E}, E, NULL},
        {"bias_v", r->bias_v, 3, {1, 1, E}, E, NULL}};
    for (size_t i = 0; i < (c->bias_kv ? 6u : 4u); i++)
        push(r, &w[i]);
}

/* Layer, random weights and inputs, dY = w, forward args of case c. */
static void setup(fd_run *r, mha_context *ctx, const test_device *td,
                  const fd_case *c)
{
    memset(r, 0, sizeof *r);
    r->ctx = ctx;
    r->td = td;
    r->dev = test_open(ctx, td);
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, NH);
    cfg.add_bias_kv = c->bias_kv;
    cr_assert_eq(mha_layer_create(r->dev, &cfg, &r->layer), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    test_rng rng = {18};
    fill(&rng, r->in_w, 3 * E * E, 0.4f);
    fill(&rng, r->in_b, 3 * E, 0.2f);
    fill(&rng, r->out_w, E * E, 0.4f);
    fill(&rng, r->out_b, E, 0.2f);
    fill(&rng, r->bias_k, E, 1.0f);
    fill(&rng, r->bias_v, E, 1.0f);
    fill(&rng, r->query, L * N * E, 1.0f);
    const int64_t S = c->S;
    fill(&rng, r->key, (size_t)(S * N * E), 1.0f);
    fill(&rng, r->value, (size_t)(S * N * E), 1.0f);
    fill(&rng, r->w, L * N * E, 1.0f);
    push_weights(r, c);

    const int64_t qs[3] = {L, N, E}, ks[3] = {S, N, E}, ms[2] = {N, S};
    r->t[0] = upload(r, MHA_F32, 3, qs, r->query, sizeof r->query);
    r->t[1] = upload(r, MHA_F32, 3, ks, r->key, (size_t)(S * N * E) * 4);
    r->t[2] = upload(r, MHA_F32, 3, ks, r->value, (size_t)(S * N * E) * 4);
    r->t[3] = upload(r, MHA_F32, 3, qs, r->w, sizeof r->w); /* overwritten */
    r->t[4] = upload(r, MHA_F32, 3, qs, r->w, sizeof r->w);
    r->t[5] = upload(r, MHA_F32, 3, qs, r->w, sizeof r->w); /* overwritten */
    if (c->kpm) {
        /* item 0: keys 2 and 5 masked; item 1: every key (fully masked
         * rows) */
        unsigned char m[N * S_MAX];
        for (int64_t j = 0; j < S; j++)
            m[j] = j == 2 || j == 5;
        memset(m + S, 1, (size_t)S);
        r->kpm = upload(r, MHA_BOOL, 2, ms, m, (size_t)(N * S));
    }
    mha_forward_args_init(&r->fa);
    r->fa.query = r->t[0];
    r->fa.key = r->t[1];
    r->fa.value = r->t[2];
    r->fa.output = r->t[3];
    r->fa.key_padding_mask = r->kpm;
    r->fa.is_causal = c->causal;
    cr_assert_eq(mha_gradients_create(r->layer, &r->grads), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
}

static void teardown(fd_run *r)
{
    cr_assert_eq(mha_gradients_destroy(r->grads), MHA_OK);
    cr_assert_eq(mha_tensor_destroy(r->kpm), MHA_OK);
    for (int i = 5; i >= 0; i--)
        cr_assert_eq(mha_tensor_destroy(r->t[i]), MHA_OK);
    cr_assert_eq(mha_layer_destroy(r->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(r->dev), MHA_OK, "%s",
                 mha_context_errmsg(r->ctx));
}

/* sum(w * Y) of an ordinary forward with what the device holds now. */
static double loss(fd_run *r)
{
    cr_assert_eq(mha_layer_forward(r->layer, &r->fa), MHA_OK, "%s: %s",
                 r->td->label, mha_context_errmsg(r->ctx));
    float y[L * N * E];
    cr_assert_eq(mha_tensor_download(r->t[3], y, sizeof y), MHA_OK);
    double sum = 0.0;
    for (size_t i = 0; i < L * N * E; i++)
        sum += (double)r->w[i] * y[i];
    return sum;
}

/* The central difference of the loss in element i of p, over the step the
 * fp32 element really took. */
static double central_difference(fd_run *r, fd_param *p, size_t i)
{
    float x = p->host[i], up = x + FD_STEP, down = x - FD_STEP;
    p->host[i] = up;
    push(r, p);
    double lu = loss(r);
    p->host[i] = down;
    push(r, p);
    double ld = loss(r);
    p->host[i] = x;
    push(r, p);
    return (lu - ld) / ((double)up - (double)down);
}

/* Sample k of SAMPLES: element k of a small tensor; else spread over the
 * q, k and v thirds of in_proj_weight, or random over the query. */
static size_t sample(const fd_param *p, test_rng *rng, int k)
{
    size_t pick = (size_t)(test_uniform(rng) * (float)p->count) % p->count;
    if (p->count <= SAMPLES)
        return (size_t)k;
    if (strcmp(p->name, "in_proj_weight") == 0)
        return (size_t)(k % 3) * E * E + pick % (E * E);
    return pick;
}

/* The backward's gradient of p against central differences at sampled
 * elements, within FD_TOL of its largest magnitude; and the same
 * differences against the gradient at the next sample's element, which
 * must miss (the check can fail). */
static void check_param(fd_run *r, fd_param *p, const char *cname)
{
    double scale = 0.0;
    for (size_t i = 0; i < p->count; i++)
        scale = fmax(scale, fabs(p->grad[i]));
    cr_expect_gt(scale, 0.1, "%s, %s on %s: gradient ~0 (%g)", cname,
                 p->name, r->td->label, scale);
    test_rng rng = {7};
    int n = p->count < SAMPLES ? (int)p->count : SAMPLES;
    size_t at[SAMPLES];
    double fd[SAMPLES], worst = 0.0, shifted = 0.0;
    int worst_k = 0;
    for (int k = 0; k < n; k++) {
        at[k] = sample(p, &rng, k);
        fd[k] = central_difference(r, p, at[k]);
        double e = fabs(fd[k] - p->grad[at[k]]);
        if (!(e <= worst)) {
            worst = e;
            worst_k = k;
        }
    }
    for (int k = 0; k < n; k++)
        shifted = fmax(shifted, fabs(fd[k] - p->grad[at[(k + 1) % n]]));
    double tol = FD_TOL * scale;
    cr_expect_leq(worst, tol,
                  "%s, d loss / d %s[%zu] on %s: backward %g, central "
                  "difference %g (error %g > %g = %g x max |grad|)",
                  cname, p->name, at[worst_k], r->td->label,
                  (double)p->grad[at[worst_k]], fd[worst_k], worst, tol,
                  FD_TOL);
    cr_expect_gt(shifted, tol,
                 "%s, %s on %s: differences match a shifted gradient too "
                 "(%g <= %g): the check cannot fail",
                 cname, p->name, r->td->label, shifted, tol);
}

static float *download_new(const mha_tensor *t, size_t count)
{
    float *x = malloc(count * sizeof *x);
    cr_assert_eq(mha_tensor_download(t, x, count * sizeof *x), MHA_OK);
    return x;
}

/* Case c on td; 0 when the device may and does decline training. */
static int run_on(mha_context *ctx, const test_device *td, const fd_case *c)
{
    fd_run r;
    setup(&r, ctx, td, c);
    r.fa.save_for_backward = 1;
    mha_status st = mha_layer_forward(r.layer, &r.fa);
    r.fa.save_for_backward = 0;
    mha_backward_args b;
    mha_backward_args_init(&b);
    b.grad_output = r.t[4];
    b.grad_query = r.t[5];
    b.grads = r.grads;
    if (st == MHA_OK)
        st = mha_layer_backward(r.layer, &b);
    if (st == MHA_UNSUPPORTED && !test_training_required(td)) {
        cr_log_info("%s: skipped on %s: %s", c->name, td->label,
                    mha_context_errmsg(ctx));
        teardown(&r);
        return 0;
    }
    cr_assert_eq(st, MHA_OK, "%s on %s: %s", c->name, td->label,
                 mha_context_errmsg(ctx));
    fd_param ps[3] = {
        {"query", r.query, 3, {L, N, E}, L * N * E, NULL},
        {"in_proj_weight", r.in_w, 2, {3 * E, E, 0}, 3 * E * E, NULL},
        {"bias_k", r.bias_k, 3, {1, 1, E}, E, NULL}};
    ps[0].grad = download_new(r.t[5], ps[0].count);
    for (int i = 1; i < 3; i++) {
        const mha_tensor *g;
        if (mha_gradients_get(r.grads, ps[i].name, &g) == MHA_OK)
            ps[i].grad = download_new(g, ps[i].count);
    }
    cr_assert_eq(ps[2].grad != NULL, c->bias_kv != 0);
    for (int i = 0; i < 3; i++)
        if (ps[i].grad)
            check_param(&r, &ps[i], c->name);
    for (int i = 0; i < 3; i++)
        free(ps[i].grad);
    teardown(&r);
    return 1;
}

static void run_case(const fd_case *c)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++)
        ran += run_on(ctx, &devs[i], c);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
    cr_assert_gt(ran, 0, "%s: no device ran it", c->name);
}

/* name, causal, key_padding_mask, add_bias_kv, S. The long case puts the
 * appended bias_k in a 64-key tile past every query's diagonal, which a
 * causal tile skip must not drop. */
#define FD_CASES(X)                                                          \
    X(plain, 0, 0, 0, S_SHORT) X(causal, 1, 0, 0, S_SHORT)                   \
    X(kpm_masked_rows, 0, 1, 0, S_SHORT) X(bias_kv, 0, 0, 1, S_SHORT)        \
    X(bias_kv_causal, 1, 0, 1, S_SHORT) X(bias_kv_causal_long, 1, 0, 1, 66)

#define DEFINE_FD_TEST(name, causal, kpm, bias_kv, S)                        \
    Test(backward_fd, name)                                                  \
    {                                                                        \
        const fd_case c = {#name, causal, kpm, bias_kv, S};                  \
        run_case(&c);                                                        \
    }
FD_CASES(DEFINE_FD_TEST)
