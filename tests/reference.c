/* reference.c: the double-precision reference ops. Slow and obvious on
 * purpose: loops that read like the formulas in core/backend.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"

static double get(const mha_tdesc *t, int64_t i0, int64_t i1, int64_t i2,
                  int64_t i3)
{
    const float *p = (const float *)((const char *)t->buf + t->offset);
    return p[i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3]];
}

static size_t idx(const mha_tdesc *t, int64_t i0, int64_t i1, int64_t i2,
                  int64_t i3)
{
    return (size_t)(((i0 * t->ne[1] + i1) * t->ne[2] + i2) * t->ne[3] + i3);
}

static void projection(const mha_node *n, double *out)
{
    const mha_tdesc *x = &n->src[0], *w = &n->src[1], *b = &n->src[2];
    const mha_tdesc *y = &n->dst;
    for (int64_t i0 = 0; i0 < y->ne[0]; i0++)
        for (int64_t t = 0; t < y->ne[2]; t++)
            for (int64_t o = 0; o < y->ne[3]; o++) {
                double s = b->buf ? get(b, 0, 0, 0, o) : 0.0;
                for (int64_t k = 0; k < x->ne[3]; k++)
                    s += get(x, i0, 0, t, k) * get(w, 0, 0, o, k);
                out[idx(y, i0, 0, t, o)] = s;
            }
}

static void fill_rows(const mha_node *n, double *out)
{
    const mha_tdesc *s = &n->src[0], *d = &n->dst;
    for (int64_t a = 0; a < d->ne[0]; a++)
        for (int64_t b = 0; b < d->ne[1]; b++)
            for (int64_t c = 0; c < d->ne[2]; c++)
                for (int64_t e = 0; e < d->ne[3]; e++)
                    out[idx(d, a, b, c, e)] =
                        s->buf ? get(s, 0, 0, 0, e) : 0.0;
}

/* Keys of batch item b that exist: KV_LEN[b], else S. */
static int64_t key_len(const mha_node *n, int64_t b)
{
    const mha_tdesc *l = &n->src[MHA_SRC_KV_LEN];
    if (!l->buf)
        return n->params.mask_cols;
    const int32_t *p = (const int32_t *)((const char *)l->buf + l->offset);
    return p[b * l->nb[3]];
}

/* Position of query i of batch item b (core/backend.h, "positions"). */
static int64_t query_pos(const mha_node *n, int64_t b, int64_t i)
{
    int64_t L = n->src[MHA_SRC_Q].ne[2];
    return n->params.causal == MHA_CAUSAL_BOTTOM_RIGHT ? i + key_len(n, b) - L
                                                       : i;
}

/* Whether key j is masked out of query position p's row. */
static int key_masked(const mha_node *n, int64_t b, int64_t p, int64_t j)
{
    const mha_op_params *a = &n->params;
    if (j >= a->mask_cols)
        return 0;
    return (n->src[MHA_SRC_KV_LEN].buf && j >= key_len(n, b)) ||
           (a->causal && j > p) || (a->window > 0 && j <= p - a->window);
}

static int64_t kv_head(const mha_node *n, int64_t h)
{
    return n->params.kv_group > 1 ? h / n->params.kv_group : h;
}

/* Scores of one (b, h, i) row into row[0..S'), in the order core/backend.h
 * gives: scale, softcap, ALiBi, mask and kpm, then the masks. A masked key
 * is never read. */
static void score_row(const mha_node *n, int64_t b, int64_t h, int64_t i,
                      double *row)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    const mha_tdesc *mask = &n->src[MHA_SRC_MASK], *kpm = &n->src[MHA_SRC_KPM];
    const mha_tdesc *alibi = &n->src[MHA_SRC_ALIBI];
    double cap = n->params.softcap;
    int64_t p = query_pos(n, b, i), hk = kv_head(n, h);
    for (int64_t j = 0; j < k->ne[2]; j++) {
        if (key_masked(n, b, p, j)) {
            row[j] = -INFINITY;
            continue;
        }
        double s = 0;
        for (int64_t c = 0; c < q->ne[3]; c++)
            s += get(q, b, h, i, c) * get(k, b, hk, j, c);
        s *= n->params.scale;
        if (cap > 0)
            s = cap * tanh(s / cap);
        if (alibi->buf)
            s += get(alibi, 0, 0, 0, h) * (double)(j - p);
        if (j < n->params.mask_cols) {
            if (mask->buf)
                s += get(mask, b, h, i, j);
            if (kpm->buf)
                s += get(kpm, b, h, i, j);
        }
        row[j] = s;
    }
}

/* Softmax of a row whose denominator also holds exp(sink) (sink = -inf:
 * none). A row with nothing attendable is 0; a NaN makes it all NaN. */
static void softmax_row_sink(double *row, int64_t n, double sink)
{
    double m = -INFINITY;
    int nan = 0;
    for (int64_t j = 0; j < n; j++) {
        nan |= isnan(row[j]);
        if (row[j] > m)
            m = row[j];
    }
    if (nan || m == -INFINITY) {
        for (int64_t j = 0; j < n; j++)
            row[j] = nan ? NAN : 0.0;
        return;
    }
    if (sink > m)
        m = sink;
    double sum = exp(sink - m);
    for (int64_t j = 0; j < n; j++)
        sum += row[j] = exp(row[j] - m);
    for (int64_t j = 0; j < n; j++)
        row[j] /= sum;
}

static void softmax_row(double *row, int64_t n)
{
    softmax_row_sink(row, n, -INFINITY);
}

static void scores(const mha_node *n, double *out, int normalise)
{
    const mha_tdesc *d = &n->dst, *sinks = &n->src[MHA_SRC_SINKS];
    for (int64_t b = 0; b < d->ne[0]; b++)
        for (int64_t h = 0; h < d->ne[1]; h++)
            for (int64_t i = 0; i < d->ne[2]; i++) {
                double *row = out + idx(d, b, h, i, 0);
                score_row(n, b, h, i, row);
                if (normalise)
                    softmax_row_sink(row, d->ne[3],
                                     sinks->buf ? get(sinks, 0, 0, 0, h)
                                                : -INFINITY);
            }
}

static void softmax(const mha_node *n, double *out)
{
    const mha_tdesc *s = &n->src[0], *d = &n->dst;
    for (int64_t b = 0; b < d->ne[0]; b++)
        for (int64_t h = 0; h < d->ne[1]; h++)
            for (int64_t i = 0; i < d->ne[2]; i++) {
                double *row = out + idx(d, b, h, i, 0);
                for (int64_t j = 0; j < d->ne[3]; j++)
                    row[j] = get(s, b, h, i, j);
                softmax_row(row, d->ne[3]);
            }
}

/* O = P V with P either a tensor or (fused) the softmax of the scores;
 * keys of probability 0 are never read (they may be past KV_LEN). */
static void weighted(const mha_node *n, const double *probs,
                     const mha_tdesc *p, const mha_tdesc *v, double *out)
{
    const mha_tdesc *o = &n->dst;
    int64_t keys = v->ne[2];
    for (int64_t b = 0; b < o->ne[0]; b++)
        for (int64_t h = 0; h < o->ne[1]; h++)
            for (int64_t i = 0; i < o->ne[2]; i++)
                for (int64_t c = 0; c < o->ne[3]; c++) {
                    double s = 0;
                    for (int64_t j = 0; j < keys; j++) {
                        double w = probs ? probs[((b * o->ne[1] + h) * o->ne[2] + i) * keys + j]
                                         : get(p, b, h, i, j);
                        if (w != 0.0 || !probs)
                            s += w * get(v, b, kv_head(n, h), j, c);
                    }
                    out[idx(o, b, h, i, c)] = s;
                }
}

static void attention(const mha_node *n, double *out)
{
    const mha_tdesc *o = &n->dst, *k = &n->src[MHA_SRC_K];
    size_t count = (size_t)(o->ne[0] * o->ne[1] * o->ne[2] * k->ne[2]);
    double *probs = malloc(count * sizeof *probs);
    mha_node s = *n;
    s.dst.ne[3] = k->ne[2];
    scores(&s, probs, 1);
    weighted(n, probs, NULL, &n->src[MHA_SRC_V], out);
    free(probs);
}

static void mean_heads(const mha_node *n, double *out)
{
    const mha_tdesc *s = &n->src[0], *d = &n->dst;
    for (int64_t b = 0; b < d->ne[0]; b++)
        for (int64_t i = 0; i < d->ne[2]; i++)
            for (int64_t j = 0; j < d->ne[3]; j++) {
                double sum = 0;
                for (int64_t h = 0; h < s->ne[1]; h++)
                    sum += get(s, b, h, i, j);
                out[idx(d, b, 0, i, j)] = sum / (double)s->ne[1];
            }
}

/* ROPE as core/backend.h states it: pairs (c0, c1) of the first
 * rope_dims features rotated by POS * rope_pos_scale * theta^(-2i/r). */
static void rope(const mha_node *n, double *out)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    const mha_tdesc *pos = &n->src[MHA_SRC_ROPE_POS];
    const mha_op_params *a = &n->params;
    int64_t r = a->rope_dims, half = r / 2;
    for (int64_t b = 0; b < x->ne[0]; b++)
        for (int64_t h = 0; h < x->ne[1]; h++)
            for (int64_t t = 0; t < x->ne[2]; t++) {
                double *row = out + idx(x, b, h, t, 0);
                for (int64_t c = 0; c < x->ne[3]; c++)
                    row[c] = get(x, b, h, t, c);
                if (!half)
                    continue;
                const int32_t *pp = (const int32_t *)((const char *)pos->buf +
                                                      pos->offset);
                double p = (double)pp[(pos->ne[2] == 1 ? 0 : b * pos->nb[2]) + t * pos->nb[3]] *
                           a->rope_pos_scale;
                for (int64_t i = 0; i < half; i++) {
                    int64_t c0 = a->rope_style == MHA_ROPE_GPTJ ? 2 * i : i;
                    int64_t c1 = a->rope_style == MHA_ROPE_GPTJ ? 2 * i + 1
                                                                : i + half;
                    double ang = p * pow(a->rope_theta, -2.0 * (double)i /
                                                            (double)r);
                    double u = get(x, b, h, t, c0), v = get(x, b, h, t, c1);
                    row[c0] = u * cos(ang) - v * sin(ang);
                    row[c1] = v * cos(ang) + u * sin(ang);
                }
            }
}

static void mul(const mha_node *n, double *out)
{
    const mha_tdesc *x = &n->src[MHA_SRC_MUL_X], *f = &n->src[MHA_SRC_MUL_F];
    for (int64_t b = 0; b < x->ne[0]; b++)
        for (int64_t h = 0; h < x->ne[1]; h++)
            for (int64_t t = 0; t < x->ne[2]; t++)
                for (int64_t c = 0; c < x->ne[3]; c++)
                    out[idx(x, b, h, t, c)] =
                        get(x, b, h, t, c) * get(f, b, h, t, c);
}

/* HEAD_STATS as core/backend.h states it: sums over the query rows of
 * entropy, maximum, distance, first-key and previous-token weight, and the
 * Jensen-Shannon divergence against every head. */
static double plogq(double p, double q) { return p > 0 ? p * log(q) : 0.0; }

static void head_stats_row(const mha_tdesc *p, int64_t b, int64_t h,
                           int64_t i, double *o)
{
    int64_t S = p->ne[3];
    double mx = 0;
    for (int64_t j = 0; j < S; j++) {
        double w = get(p, b, h, i, j);
        o[0] -= plogq(w, w);
        mx = fmax(mx, w);
        o[2] += w * fabs((double)(i - j));
    }
    o[1] += mx;
    o[3] += get(p, b, h, i, 0);
    if (i >= 1 && i <= S)
        o[4] += get(p, b, h, i, i - 1);
    for (int64_t g = 0; g < p->ne[1]; g++)
        for (int64_t j = 0; j < S; j++) {
            double u = get(p, b, h, i, j), v = get(p, b, g, i, j);
            double m = 0.5 * (u + v);
            o[MHA_HEAD_STATS_COLS + g] +=
                0.5 * (plogq(u, u / m) + plogq(v, v / m));
        }
}

static void head_stats(const mha_node *n, double *out)
{
    const mha_tdesc *p = &n->src[0], *d = &n->dst;
    for (int64_t b = 0; b < p->ne[0]; b++)
        for (int64_t h = 0; h < p->ne[1]; h++) {
            double *o = out + idx(d, b, h, 0, 0);
            for (int64_t c = 0; c < d->ne[3]; c++)
                o[c] = 0;
            for (int64_t i = 0; i < p->ne[2]; i++)
                head_stats_row(p, b, h, i, o);
        }
}

void ref_run(const mha_node *n, double *out)
{
    switch (n->op) {
    case MHA_OP_PROJECTION: projection(n, out); break;
    case MHA_OP_FILL_ROWS: fill_rows(n, out); break;
    case MHA_OP_SCORES: scores(n, out, 0); break;
    case MHA_OP_SOFTMAX: softmax(n, out); break;
    case MHA_OP_WEIGHTED_SUM: weighted(n, NULL, &n->src[0], &n->src[1], out); break;
    case MHA_OP_ATTENTION: attention(n, out); break;
    case MHA_OP_MEAN_HEADS: mean_heads(n, out); break;
    case MHA_OP_ROPE: rope(n, out); break;
    case MHA_OP_MUL: mul(n, out); break;
    case MHA_OP_HEAD_STATS: head_stats(n, out); break;
    case MHA_OP_MATMUL: /* the training ops: issue 18 */
    case MHA_OP_SUM_ROWS:
    case MHA_OP_ATTENTION_BACKWARD:
    case MHA_OP_ADAMW:
    case MHA_OP_COUNT: break;
    }
}
