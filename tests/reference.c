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

static double sink_of(const mha_node *n, int64_t h)
{
    const mha_tdesc *sinks = &n->src[MHA_SRC_SINKS];
    return sinks->buf ? get(sinks, 0, 0, 0, h) : -INFINITY;
}

static void scores(const mha_node *n, double *out, int normalise)
{
    const mha_tdesc *d = &n->dst;
    for (int64_t b = 0; b < d->ne[0]; b++)
        for (int64_t h = 0; h < d->ne[1]; h++)
            for (int64_t i = 0; i < d->ne[2]; i++) {
                double *row = out + idx(d, b, h, i, 0);
                score_row(n, b, h, i, row);
                if (normalise)
                    softmax_row_sink(row, d->ne[3], sink_of(n, h));
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

/* The row's log-sum-exp (core/backend.h, "ATTENTION + LSE"): sinks count
 * in the sum; -inf with nothing attendable, NaN with a NaN. */
static double row_lse(const double *row, int64_t n, double sink)
{
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < n; j++) {
        if (isnan(row[j]))
            return NAN;
        m = fmax(m, row[j]);
    }
    if (m == -INFINITY)
        return -INFINITY;
    m = fmax(m, sink);
    for (int64_t j = 0; j < n; j++)
        sum += exp(row[j] - m);
    return m + log(sum + exp(sink - m));
}

/* The fused attention, and its LSE into lse when not NULL. */
static void attention(const mha_node *n, double *out, double *lse)
{
    const mha_tdesc *o = &n->dst, *k = &n->src[MHA_SRC_K];
    size_t count = (size_t)(o->ne[0] * o->ne[1] * o->ne[2] * k->ne[2]);
    double *probs = malloc(count * sizeof *probs);
    mha_node s = *n;
    s.dst.ne[3] = k->ne[2];
    scores(&s, probs, 0);
    for (int64_t r = 0; lse && r < o->ne[0] * o->ne[1] * o->ne[2]; r++)
        lse[r] = row_lse(probs + r * k->ne[2], k->ne[2],
                         sink_of(n, r / o->ne[2] % o->ne[1]));
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

/* ---- training (issue 18) ------------------------------------------------ */

/* The old value of dst when the op adds into it. */
static double acc_init(const mha_node *n, int64_t a, int64_t b, int64_t m,
                       int64_t c)
{
    return n->params.accumulate ? get(&n->dst, a, b, m, c) : 0.0;
}

static void matmul(const mha_node *n, double *out)
{
    const mha_tdesc *A = &n->src[MHA_SRC_MM_A], *B = &n->src[MHA_SRC_MM_B];
    const mha_tdesc *d = &n->dst;
    for (int64_t a = 0; a < d->ne[0]; a++)
        for (int64_t b = 0; b < d->ne[1]; b++)
            for (int64_t m = 0; m < d->ne[2]; m++)
                for (int64_t c = 0; c < d->ne[3]; c++) {
                    double s = acc_init(n, a, b, m, c);
                    for (int64_t k = 0; k < A->ne[3]; k++)
                        s += get(A, a, b, m, k) * get(B, a, b, k, c);
                    out[idx(d, a, b, m, c)] = s;
                }
}

static void sum_rows(const mha_node *n, double *out)
{
    const mha_tdesc *x = &n->src[0], *d = &n->dst;
    for (int64_t a = 0; a < d->ne[0]; a++)
        for (int64_t b = 0; b < d->ne[1]; b++)
            for (int64_t c = 0; c < d->ne[3]; c++) {
                double s = acc_init(n, a, b, 0, c);
                for (int64_t m = 0; m < x->ne[2]; m++)
                    s += get(x, a, b, m, c);
                out[idx(d, a, b, 0, c)] = s;
            }
}

/* d softcap(x) / dx = 1 - tanh^2(x / c) at x = scale q_i . k_j (1 without
 * a softcap). */
static double softcap_slope(const mha_node *n, int64_t b, int64_t h,
                            int64_t i, int64_t j)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    double cap = n->params.softcap, x = 0;
    if (cap <= 0)
        return 1.0;
    for (int64_t c = 0; c < q->ne[3]; c++)
        x += get(q, b, h, i, c) * get(k, b, h, j, c);
    double t = tanh(n->params.scale * x / cap);
    return 1.0 - t * t;
}

/* FlashAttention-2's backward as core/backend.h states it, with the
 * probabilities recomputed from the scores and the given LSE. */
static void attention_backward_head(const mha_node *n, int64_t b, int64_t h,
                                    double *dq, double *dk, double *dv)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    const mha_tdesc *v = &n->src[MHA_SRC_V], *o = &n->src[MHA_SRC_BWD_O];
    const mha_tdesc *dout = &n->src[MHA_SRC_BWD_DO];
    const mha_tdesc *lse = &n->src[MHA_SRC_BWD_LSE];
    int64_t L = q->ne[2], S2 = k->ne[2], d = q->ne[3];
    double scale = n->params.scale;
    double *row = malloc((size_t)S2 * sizeof *row);
    mha_node f = *n; /* the forward's scores: O, dO, LSE are not its
                        sinks, slopes and lengths */
    for (int k = MHA_SRC_SINKS; k < MHA_MAX_SRC; k++)
        f.src[k].buf = NULL;
    f.src[MHA_SRC_ALIBI] = n->src[MHA_SRC_BWD_ALIBI];
    for (int64_t i = 0; i < L; i++) {
        double l = get(lse, b, h, 0, i), D = 0;
        score_row(&f, b, h, i, row);
        for (int64_t c = 0; c < d; c++)
            D += get(dout, b, h, i, c) * get(o, b, h, i, c);
        for (int64_t j = 0; j < S2; j++) {
            double p = l == -INFINITY ? 0.0 : exp(row[j] - l), dp = 0;
            for (int64_t c = 0; c < d; c++)
                dp += get(dout, b, h, i, c) * get(v, b, h, j, c);
            double ds = p * (dp - D) * softcap_slope(n, b, h, i, j);
            for (int64_t c = 0; c < d; c++) {
                dq[idx(q, b, h, i, c)] += scale * ds * get(k, b, h, j, c);
                dk[idx(k, b, h, j, c)] += scale * ds * get(q, b, h, i, c);
                dv[idx(v, b, h, j, c)] += p * get(dout, b, h, i, c);
            }
        }
    }
    free(row);
}

static void attention_backward(const mha_node *n, double *dq, double *dk,
                               double *dv)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    size_t nq = (size_t)(q->ne[0] * q->ne[1] * q->ne[2] * q->ne[3]);
    size_t nk = (size_t)(k->ne[0] * k->ne[1] * k->ne[2] * k->ne[3]);
    memset(dq, 0, nq * sizeof *dq);
    memset(dk, 0, nk * sizeof *dk);
    memset(dv, 0, nk * sizeof *dv);
    for (int64_t b = 0; b < q->ne[0]; b++)
        for (int64_t h = 0; h < q->ne[1]; h++)
            attention_backward_head(n, b, h, dq, dk, dv);
}

/* torch.optim.AdamW's step (core/backend.h, ADAMW). */
static void adamw(const mha_node *n, double *p, double *m, double *v)
{
    const mha_op_params *a = &n->params;
    const mha_tdesc *g = &n->src[MHA_SRC_ADAM_G];
    for (int64_t i = 0; i < n->dst.ne[3]; i++) {
        double gi = get(g, 0, 0, 0, i);
        double pi = get(&n->dst, 0, 0, 0, i) *
                    (1.0 - (double)a->adam_lr * a->adam_weight_decay);
        double mi = a->adam_beta1 * get(&n->src[MHA_SRC_ADAM_M], 0, 0, 0, i) +
                    (1.0 - a->adam_beta1) * gi;
        double vi = a->adam_beta2 * get(&n->src[MHA_SRC_ADAM_V], 0, 0, 0, i) +
                    (1.0 - a->adam_beta2) * gi * gi;
        p[i] = pi - (double)a->adam_lr / a->adam_bc1 * mi /
                        (sqrt(vi) / sqrt((double)a->adam_bc2) + a->adam_eps);
        if (m)
            m[i] = mi;
        if (v)
            v[i] = vi;
    }
}

int ref_outputs(const mha_node *n, const mha_tdesc *out[REF_MAX_OUT])
{
    int count = 0;
    out[count++] = &n->dst;
    if (n->op == MHA_OP_ADAMW) {
        out[count++] = &n->src[MHA_SRC_ADAM_M];
        out[count++] = &n->src[MHA_SRC_ADAM_V];
        return count;
    }
    for (int k = 0; k < MHA_MAX_EXTRA_DST; k++)
        if (n->extra_dst[k].buf)
            out[count++] = &n->extra_dst[k];
    return count;
}

/* Room for an output the caller does not want. */
static double *scratch_for(const mha_tdesc *t)
{
    return malloc((size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]) *
                  sizeof(double));
}

void ref_run(const mha_node *n, double *out)
{
    double *all[REF_MAX_OUT] = {out};
    ref_run_all(n, all);
}

void ref_run_all(const mha_node *n, double *const out[REF_MAX_OUT])
{
    switch (n->op) {
    case MHA_OP_PROJECTION: projection(n, out[0]); break;
    case MHA_OP_FILL_ROWS: fill_rows(n, out[0]); break;
    case MHA_OP_SCORES: scores(n, out[0], 0); break;
    case MHA_OP_SOFTMAX: softmax(n, out[0]); break;
    case MHA_OP_WEIGHTED_SUM: weighted(n, NULL, &n->src[0], &n->src[1], out[0]); break;
    case MHA_OP_ATTENTION:
        attention(n, out[0], n->extra_dst[MHA_DST_LSE].buf ? out[1] : NULL);
        break;
    case MHA_OP_MEAN_HEADS: mean_heads(n, out[0]); break;
    case MHA_OP_ROPE: rope(n, out[0]); break;
    case MHA_OP_MUL: mul(n, out[0]); break;
    case MHA_OP_HEAD_STATS: head_stats(n, out[0]); break;
    case MHA_OP_MATMUL: matmul(n, out[0]); break;
    case MHA_OP_SUM_ROWS: sum_rows(n, out[0]); break;
    case MHA_OP_ATTENTION_BACKWARD: {
        double *dk = out[1] ? out[1] : scratch_for(&n->extra_dst[MHA_DST_DK]);
        double *dv = out[2] ? out[2] : scratch_for(&n->extra_dst[MHA_DST_DV]);
        attention_backward(n, out[0], dk, dv);
        if (dk != out[1])
            free(dk);
        if (dv != out[2])
            free(dv);
        break;
    }
    case MHA_OP_ADAMW: adamw(n, out[0], out[1], out[2]); break;
    case MHA_OP_COUNT: break;
    }
}
