/* head_stats.c: mha_head_stats, per-head statistics of an nn.MHA layer
 * over a set of inputs. The attention-weight statistics are reduced on the
 * layer's device by the HEAD_STATS op (core/backend.h) from the weights a
 * forward keeps per head, so only B*H*(5+H) sums come back. Ablation,
 * gradient importance and output similarity come from one forward per
 * head with that head's gate at 0: Y - Y' is exactly the head's projected
 * output O_h W_o,h^T, which the host reduces against Y, dL/dY and the
 * other heads' (B*L*E floats per head come back). */
#include <math.h>
#include <string.h>

#include "layer.h"
#include "tensor.h"

#define NCOL MHA_HEAD_STATS_COLS

struct mha_head_stats {
    mha_layer *layer;
    mha_context *ctx;
    int64_t H;
    /* scratch for one call shape */
    int64_t B, L, S2;    /* batch, queries, keys (appended ones too) */
    size_t ycount;       /* elements of the output */
    mha_tensor *weights; /* [B,H,L,S'] (unbatched: [H,L,S']) */
    mha_tensor *sums;    /* [B,H,1,5+H] */
    mha_tensor *gates;   /* [H] */
    mha_tensor *ablated; /* the output with one head gated off */
    float *host;         /* sums, Y, Y', dL/dY, then H projected outputs */
    double *item;        /* [3][B]: per batch item |Y|^2, |Z_h|^2, <G,Z_h> */
    /* accumulated */
    double *acc;         /* [H][5+H]: HEAD_STATS sums */
    double *ablation, *grad, *dots; /* [H], [H], [H][H] */
    int64_t rows, prev_rows, items, grad_items;
};

/* ---- scratch ------------------------------------------------------------- */

static void free_scratch(mha_head_stats *s)
{
    mha_tensor_destroy(s->weights);
    mha_tensor_destroy(s->sums);
    mha_tensor_destroy(s->gates);
    mha_tensor_destroy(s->ablated);
    mha_host_free(&s->ctx->host, s->host);
    mha_host_free(&s->ctx->host, s->item);
    s->weights = s->sums = s->gates = s->ablated = NULL;
    s->host = NULL;
    s->item = NULL;
    s->B = s->L = s->S2 = 0;
    s->ycount = 0;
}

/* Floats of host scratch: the sums, then Y, Y', dL/dY and H projected
 * outputs of ycount each. */
static size_t host_floats(const mha_head_stats *s, size_t ycount)
{
    return (size_t)(s->B * s->H * (NCOL + s->H)) + (3 + (size_t)s->H) * ycount;
}

static float *sums_of(const mha_head_stats *s) { return s->host; }
static float *y_of(const mha_head_stats *s)
{
    return s->host + s->B * s->H * (NCOL + s->H);
}
static float *yh_of(const mha_head_stats *s) { return y_of(s) + s->ycount; }
static float *grad_of(const mha_head_stats *s)
{
    return y_of(s) + 2 * s->ycount;
}
static float *z_of(const mha_head_stats *s, int64_t h)
{
    return y_of(s) + (3 + (size_t)h) * s->ycount;
}

/* (Re)makes the scratch for a call of B items, L queries, S' keys and an
 * output of out's shape. */
static mha_status ensure_scratch(mha_head_stats *s, int64_t B, int64_t L,
                                 int64_t S2, int unbatched,
                                 const mha_tensor *out)
{
    if (s->weights && s->B == B && s->L == L && s->S2 == S2 &&
        s->ycount == out->count && s->ablated->ndim == out->ndim &&
        memcmp(s->ablated->shape, out->shape, sizeof out->shape) == 0)
        return MHA_OK;
    free_scratch(s);
    mha_device *dev = s->layer->device;
    int64_t w[4] = {B, s->H, L, S2};
    int64_t sums[4] = {B, s->H, 1, NCOL + s->H};
    mha_status st = mha_tensor_create(dev, MHA_F32, unbatched ? 3 : 4,
                                      unbatched ? w + 1 : w, &s->weights);
    if (st == MHA_OK)
        st = mha_tensor_create(dev, MHA_F32, 4, sums, &s->sums);
    if (st == MHA_OK)
        st = mha_tensor_create(dev, MHA_F32, 1, &s->H, &s->gates);
    if (st == MHA_OK)
        st = mha_tensor_create(dev, MHA_F32, out->ndim, out->shape,
                               &s->ablated);
    s->B = B;
    s->L = L;
    s->S2 = S2;
    s->ycount = out->count;
    size_t n = host_floats(s, out->count);
    if (st == MHA_OK && n > SIZE_MAX / sizeof(float))
        st = mha_error(s->ctx, MHA_OVERFLOW, "%zu floats overflow", n);
    if (st == MHA_OK &&
        (!(s->host = mha_host_malloc(&s->ctx->host, n * sizeof(float))) ||
         !(s->item = mha_host_malloc(&s->ctx->host,
                                     3 * (size_t)B * sizeof(double)))))
        st = mha_error(s->ctx, MHA_OUT_OF_MEMORY,
                       "out of memory for %zu floats of scratch", n);
    if (st != MHA_OK)
        free_scratch(s);
    return st;
}

/* ---- create and destroy -------------------------------------------------- */

mha_status mha_head_stats_create(mha_layer *layer, mha_head_stats **out)
{
    static const char fn[] = "mha_head_stats_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!out)
        return mha_host_finish(&ctx->host, fn,
                               mha_error(ctx, MHA_INVALID_ARGUMENT,
                                         "out is NULL"));
    int64_t H = layer->heads;
    mha_head_stats *s = mha_host_calloc(&ctx->host, 1, sizeof *s);
    size_t doubles = (size_t)(H * (NCOL + H) + 2 * H + H * H);
    double *acc = s ? mha_host_calloc(&ctx->host, doubles, sizeof *acc)
                    : NULL;
    if (!acc) {
        mha_host_free(&ctx->host, s);
        return mha_host_finish(&ctx->host, fn,
                               mha_error(ctx, MHA_OUT_OF_MEMORY,
                                         "out of memory for %lld heads",
                                         (long long)H));
    }
    s->layer = layer;
    s->ctx = ctx;
    s->H = H;
    s->acc = acc;
    s->ablation = acc + H * (NCOL + H);
    s->grad = s->ablation + H;
    s->dots = s->grad + H;
    *out = s;
    return mha_host_finish(&ctx->host, fn, MHA_OK);
}

mha_status mha_head_stats_destroy(mha_head_stats *stats)
{
    if (!stats)
        return MHA_OK;
    mha_host *host = &stats->ctx->host;
    free_scratch(stats);
    mha_host_free(host, stats->acc);
    mha_host_free(host, stats);
    return MHA_OK;
}

int64_t mha_head_stats_heads(const mha_head_stats *stats)
{
    return stats ? stats->H : 0;
}

/* ---- checks -------------------------------------------------------------- */

/* Batch, queries and keys (appended ones included) of a call, from the
 * query and key shapes as mha_layer_forward reads them. */
static mha_status call_dims(mha_head_stats *s, const mha_forward_args *a,
                            int64_t *B, int64_t *L, int64_t *S2,
                            int *unbatched)
{
    const mha_layer_config *c = &s->layer->cfg;
    const mha_tensor *q = a->query, *k = a->key;
    if (!q || !k || !a->output)
        return mha_error(s->ctx, MHA_INVALID_ARGUMENT, "%s is NULL",
                         !q ? "args->query" : !k ? "args->key"
                                                : "args->output");
    mha_device *dev = s->layer->device;
    if (q->device != dev || k->device != dev || a->output->device != dev)
        return mha_error(s->ctx, MHA_INVALID_ARGUMENT,
                         "args->%s lives on another device than the layer",
                         q->device != dev ? "query"
                         : k->device != dev ? "key"
                                            : "output");
    if (q->ndim != k->ndim || (q->ndim != 2 && q->ndim != 3))
        return MHA_OK; /* *B stays 0: the caller lets the forward say why */
    *unbatched = q->ndim == 2;
    int bf = c->batch_first && !*unbatched;
    *B = *unbatched ? 1 : q->shape[bf ? 0 : 1];
    *L = q->shape[bf ? 1 : 0];
    *S2 = k->shape[bf ? 1 : 0] + (c->add_bias_kv ? 1 : 0) +
          (c->add_zero_attn ? 1 : 0);
    return MHA_OK;
}

static mha_status check_grad(mha_head_stats *s, const mha_forward_args *a,
                             const mha_tensor *g)
{
    char got[96], want[96];
    if (!g)
        return MHA_OK;
    if (g->device != s->layer->device)
        return mha_error(s->ctx, MHA_INVALID_ARGUMENT,
                         "grad_output lives on another device than the "
                         "layer");
    if (g->dtype != MHA_F32)
        return mha_error(s->ctx, MHA_DTYPE_MISMATCH,
                         "grad_output has dtype %s; expected f32",
                         mha_dtype_name(g->dtype));
    const mha_tensor *o = a->output;
    if (g->ndim != o->ndim ||
        memcmp(g->shape, o->shape, (size_t)o->ndim * sizeof *o->shape) != 0)
        return mha_error(s->ctx, MHA_SHAPE_MISMATCH,
                         "grad_output has shape %s; expected %s (the "
                         "output's)",
                         mha_shape_str(got, sizeof got, g->ndim, g->shape),
                         mha_shape_str(want, sizeof want, o->ndim, o->shape));
    return MHA_OK;
}

/* ---- the work ------------------------------------------------------------ */

/* A [B,H,L,S'] (or [B,H,1,5+H]) descriptor of a row-major scratch tensor. */
static mha_tdesc desc_of(const mha_tensor *t, int64_t B, int64_t H,
                         int64_t L, int64_t S)
{
    mha_tdesc d;
    memset(&d, 0, sizeof d);
    d.dtype = MHA_F32;
    d.ne[0] = B, d.ne[1] = H, d.ne[2] = L, d.ne[3] = S;
    d.nb[0] = H * L * S, d.nb[1] = L * S, d.nb[2] = S, d.nb[3] = 1;
    d.buf = t->buf;
    d.offset = t->offset * sizeof(float);
    return d;
}

/* The forward with the weights kept per head, and HEAD_STATS over them;
 * the sums and Y come back to the host. */
static mha_status run_weights(mha_head_stats *s, const mha_forward_args *a)
{
    mha_forward_args f = *a;
    f.struct_size = sizeof f;
    f.need_weights = 1;
    f.average_attn_weights = 0;
    f.weights = s->weights;
    f.head_gates = NULL;
    f.head_outputs = NULL;
    f.save_for_backward = 0;
    mha_status st = mha_layer_forward(s->layer, &f);
    if (st != MHA_OK)
        return st;
    mha_device *dev = s->layer->device;
    mha_node n;
    memset(&n, 0, sizeof n);
    n.op = MHA_OP_HEAD_STATS;
    n.src[0] = desc_of(s->weights, s->B, s->H, s->L, s->S2);
    n.dst = desc_of(s->sums, s->B, s->H, 1, NCOL + s->H);
    if (!mha_dev_supports(dev, &n))
        return mha_error(s->ctx, MHA_UNSUPPORTED,
                         "the %s device %s does not run head_stats for %lld "
                         "heads",
                         dev->iface->name, dev->entry.desc.name,
                         (long long)s->H);
    st = mha_dev_run(dev, &n);
    if (st == MHA_OK)
        st = mha_dev_sync(dev);
    if (st == MHA_OK)
        st = mha_tensor_download(s->sums, sums_of(s),
                                 (size_t)(s->B * s->H * (NCOL + s->H)) *
                                     sizeof(float));
    if (st == MHA_OK)
        st = mha_tensor_download(a->output, y_of(s),
                                 s->ycount * sizeof(float));
    return st;
}

/* Z_h = Y - Y', from a forward with head h's gate at 0. */
static mha_status run_ablated(mha_head_stats *s, const mha_forward_args *a,
                              int64_t h)
{
    float *gates = yh_of(s); /* H floats, before Y' lands there */
    for (int64_t g = 0; g < s->H; g++)
        gates[g] = g == h ? 0.0f : 1.0f;
    mha_status st = mha_tensor_upload(s->gates, gates,
                                      (size_t)s->H * sizeof(float));
    mha_forward_args f = *a;
    f.struct_size = sizeof f;
    f.need_weights = 0;
    f.weights = NULL;
    f.output = s->ablated;
    f.head_gates = s->gates;
    f.head_outputs = NULL;
    f.save_for_backward = 0;
    if (st == MHA_OK)
        st = mha_layer_forward(s->layer, &f);
    if (st == MHA_OK)
        st = mha_tensor_download(s->ablated, yh_of(s),
                                 s->ycount * sizeof(float));
    const float *y = y_of(s), *yh = yh_of(s);
    float *z = z_of(s, h);
    for (size_t k = 0; st == MHA_OK && k < s->ycount; k++)
        z[k] = y[k] - yh[k];
    return st;
}

/* Batch item of element k of the output ((L,N,E), (N,L,E) or (L,E)). */
static int64_t item_of(const mha_head_stats *s, size_t k)
{
    int64_t E = s->layer->cfg.embed_dim, row = (int64_t)k / E;
    if (s->B == 1)
        return 0;
    return s->layer->cfg.batch_first ? row / s->L : row % s->B;
}

/* Per batch item: sum of x*y over its elements into out[B]. */
static void item_dots(const mha_head_stats *s, const float *x,
                      const float *y, double *out)
{
    for (int64_t b = 0; b < s->B; b++)
        out[b] = 0.0;
    for (size_t k = 0; k < s->ycount; k++)
        out[item_of(s, k)] += (double)x[k] * (double)y[k];
}

/* The norms, gradient products and similarities of the H projected
 * outputs of one call. */
static void accumulate_outputs(mha_head_stats *s, int have_grad)
{
    int64_t H = s->H, B = s->B;
    double *yy = s->item, *zz = yy + B, *gz = zz + B;
    item_dots(s, y_of(s), y_of(s), yy);
    for (int64_t h = 0; h < H; h++) {
        const float *z = z_of(s, h);
        item_dots(s, z, z, zz);
        if (have_grad)
            item_dots(s, grad_of(s), z, gz);
        for (int64_t b = 0; b < B; b++) {
            s->ablation[h] += yy[b] > 0.0 ? sqrt(zz[b] / yy[b]) : 0.0;
            s->grad[h] += have_grad ? fabs(gz[b]) : 0.0;
        }
        for (int64_t g = 0; g <= h; g++) {
            const float *w = z_of(s, g);
            double dot = 0.0;
            for (size_t k = 0; k < s->ycount; k++)
                dot += (double)z[k] * (double)w[k];
            s->dots[h * H + g] += dot;
            s->dots[g * H + h] = s->dots[h * H + g];
        }
    }
}

/* Folds one successful call into the totals. */
static void accumulate(mha_head_stats *s, int have_grad)
{
    int64_t H = s->H, B = s->B, cols = NCOL + H;
    const float *sums = sums_of(s);
    for (int64_t b = 0; b < B; b++)
        for (int64_t k = 0; k < H * cols; k++)
            s->acc[k] += sums[b * H * cols + k];
    int64_t prev = s->L - 1 < s->S2 ? s->L - 1 : s->S2;
    s->rows += B * s->L;
    s->prev_rows += B * (prev > 0 ? prev : 0);
    accumulate_outputs(s, have_grad);
    s->items += B;
    s->grad_items += have_grad ? B : 0;
}

/* The output apart from what the ablated runs read after the first run
 * wrote it: the inputs, and dL/dY (downloaded after that run). */
static mha_status check_output_apart(mha_head_stats *s,
                                     const mha_forward_args *a,
                                     const mha_tensor *grad)
{
    static const char *const names[6] = {"query", "key", "value",
                                         "key_padding_mask", "attn_mask",
                                         "grad_output"};
    const mha_tensor *const read[6] = {a->query, a->key, a->value,
                                       a->key_padding_mask, a->attn_mask,
                                       grad};
    return mha_check_apart(s->ctx, "mha_head_stats_add", "output", a->output,
                           read, names, 6);
}

static mha_status add_call(mha_head_stats *s, const mha_forward_args *a,
                           const mha_tensor *grad)
{
    int64_t B = 0, L = 0, S2 = 0;
    int unbatched = 0;
    if (s->layer->heads != s->H)
        return mha_error(s->ctx, MHA_BAD_STATE,
                         "the layer has %lld heads now and the accumulator "
                         "was made for %lld",
                         (long long)s->layer->heads,
                         (long long)s->H);
    mha_status st = call_dims(s, a, &B, &L, &S2, &unbatched);
    if (st == MHA_OK)
        st = check_grad(s, a, grad);
    if (st == MHA_OK)
        st = check_output_apart(s, a, grad);
    if (st == MHA_OK && B < 1) { /* not 2-D or 3-D: the forward says why */
        st = mha_layer_forward(s->layer, a);
        return st != MHA_OK ? st
                            : mha_error(s->ctx, MHA_SHAPE_MISMATCH,
                                        "query and key: expected 2-D or "
                                        "3-D tensors");
    }
    if (st == MHA_OK)
        st = ensure_scratch(s, B, L, S2, unbatched, a->output);
    if (st == MHA_OK)
        st = run_weights(s, a);
    if (st == MHA_OK && grad)
        st = mha_tensor_download(grad, grad_of(s), s->ycount * sizeof(float));
    for (int64_t h = 0; h < s->H && st == MHA_OK; h++)
        st = run_ablated(s, a, h);
    if (st == MHA_OK)
        accumulate(s, grad != NULL);
    return st;
}

mha_status mha_head_stats_add(mha_head_stats *stats,
                              const mha_forward_args *args,
                              const mha_tensor *grad_output)
{
    static const char fn[] = "mha_head_stats_add";
    if (!stats)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = stats->ctx;
    mha_status st = args ? mha_struct_check(&ctx->host, fn,
                                            "mha_forward_args", args,
                                            sizeof *args)
                         : mha_error(ctx, MHA_INVALID_ARGUMENT,
                                     "args is NULL");
    if (st == MHA_OK)
        st = add_call(stats, args, grad_output);
    return mha_host_finish(&ctx->host, fn, st);
}

/* ---- results ------------------------------------------------------------- */

static mha_status check_result(const mha_head_stats *s, const char *fn,
                               int64_t count, int64_t need)
{
    mha_status st = MHA_OK;
    if (!s->rows)
        st = mha_error(s->ctx, MHA_BAD_STATE,
                       "no statistics yet: call mha_head_stats_add first");
    else if (count < need)
        st = mha_error(s->ctx, MHA_BUFFER_TOO_SMALL,
                       "count is %lld; expected at least %lld",
                       (long long)count, (long long)need);
    return mha_host_finish(&s->ctx->host, fn, st);
}

static double ratio(double a, double b) { return b > 0.0 ? a / b : 0.0; }

mha_status mha_head_stats_get(const mha_head_stats *stats,
                              mha_head_stat *per_head, int64_t count)
{
    if (!stats)
        return MHA_INVALID_ARGUMENT;
    if (!per_head)
        return mha_error(stats->ctx, MHA_INVALID_ARGUMENT,
                         "mha_head_stats_get: per_head is NULL");
    mha_status st = check_result(stats, "mha_head_stats_get", count,
                                 stats->H);
    if (st != MHA_OK)
        return st;
    int64_t H = stats->H;
    double norm = 0.0;
    for (int64_t h = 0; h < H; h++)
        norm += stats->grad[h] * stats->grad[h];
    norm = sqrt(norm);
    for (int64_t h = 0; h < H; h++) {
        const double *a = stats->acc + h * (NCOL + H);
        double rows = (double)stats->rows;
        mha_head_stat *o = &per_head[h];
        o->head = stats->layer->kept ? stats->layer->kept[h] : h;
        o->entropy = a[0] / rows;
        o->confidence = a[1] / rows;
        o->distance = a[2] / rows;
        o->first_key = a[3] / rows;
        o->prev_token = ratio(a[4], (double)stats->prev_rows);
        o->ablation = ratio(stats->ablation[h], (double)stats->items);
        o->gradient_raw = ratio(stats->grad[h], (double)stats->grad_items);
        o->gradient = ratio(stats->grad[h], norm);
        o->rows = stats->rows;
        o->gradient_items = stats->grad_items;
    }
    return MHA_OK;
}

mha_status mha_head_stats_redundancy(const mha_head_stats *stats,
                                     mha_head_redundancy kind, double *hxh,
                                     int64_t count)
{
    static const char fn[] = "mha_head_stats_redundancy";
    if (!stats)
        return MHA_INVALID_ARGUMENT;
    if (!hxh)
        return mha_error(stats->ctx, MHA_INVALID_ARGUMENT, "%s: hxh is NULL",
                         fn);
    if (kind != MHA_REDUNDANCY_JS && kind != MHA_REDUNDANCY_COSINE)
        return mha_host_finish(&stats->ctx->host, fn,
                               mha_error(stats->ctx, MHA_INVALID_ARGUMENT,
                                         "kind is %d; expected "
                                         "MHA_REDUNDANCY_JS (0) or "
                                         "MHA_REDUNDANCY_COSINE (1)",
                                         (int)kind));
    int64_t H = stats->H;
    mha_status st = check_result(stats, fn, count, H * H);
    if (st != MHA_OK)
        return st;
    const double *a = stats->acc, *d = stats->dots;
    for (int64_t h = 0; h < H; h++)
        for (int64_t g = 0; g < H; g++)
            hxh[h * H + g] =
                kind == MHA_REDUNDANCY_COSINE
                    ? ratio(d[h * H + g], sqrt(d[h * H + h] * d[g * H + g]))
                : h == g ? 0.0
                         : 0.5 * (a[h * (NCOL + H) + NCOL + g] +
                                  a[g * (NCOL + H) + NCOL + h]) /
                               (double)stats->rows;
    return MHA_OK;
}
