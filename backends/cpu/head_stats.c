/* head_stats.c: the HEAD_STATS op on the CPU (core/backend.h): per (batch,
 * head) sums over the query rows of statistics of the attention
 * probabilities, the numbers mha_head_stats accumulates. One task per
 * (batch, head), each row summed in double, so the result does not depend
 * on the thread count. */
#include <math.h>

#include "ops.h"

/* p ln(2p / (p + q)) / 2, with 0 ln 0 = 0: one side of a JS term. */
static double js_half(double p, double q)
{
    return p > 0.0 ? 0.5 * p * log(2.0 * p / (p + q)) : 0.0;
}

/* Jensen-Shannon divergence of two rows of n probabilities, in nats. */
static double js_row(const float *p, const float *q, int64_t n)
{
    double s = 0.0;
    for (int64_t j = 0; j < n; j++)
        s += js_half(p[j], q[j]) + js_half(q[j], p[j]);
    return s;
}

/* Adds row i's entropy, maximum, distance, first-key and previous-token
 * weights to acc[0..MHA_HEAD_STATS_COLS). */
static void row_stats(const float *p, int64_t n, int64_t i, double *acc)
{
    double ent = 0.0, mx = 0.0, dist = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double w = p[j];
        if (w > 0.0)
            ent -= w * log(w);
        mx = w > mx ? w : mx;
        dist += w * (double)(i > j ? i - j : j - i);
    }
    acc[0] += ent;
    acc[1] += mx;
    acc[2] += dist;
    acc[3] += p[0];
    acc[4] += i >= 1 && i - 1 < n ? p[i - 1] : 0.0;
}

static void head_stats_task(void *arg, int64_t task, int thread)
{
    const mha_node *n = arg;
    const mha_tdesc *p = &n->src[0], *d = &n->dst;
    int64_t H = p->ne[1], S = p->ne[3];
    int64_t b = task / H, h = task % H;
    double acc[MHA_HEAD_STATS_COLS] = {0};
    float *out = mha_cpu_at(d, b, h, 0);
    (void)thread;
    for (int64_t i = 0; i < p->ne[2]; i++)
        row_stats(mha_cpu_at(p, b, h, i), S, i, acc);
    for (int c = 0; c < MHA_HEAD_STATS_COLS; c++)
        out[c] = (float)acc[c];
    for (int64_t g = 0; g < H; g++) {
        double js = 0.0;
        for (int64_t i = 0; i < p->ne[2]; i++)
            js += js_row(mha_cpu_at(p, b, h, i), mha_cpu_at(p, b, g, i), S);
        out[MHA_HEAD_STATS_COLS + g] = (float)js;
    }
}

bool mha_cpu_head_stats_supported(const mha_node *n)
{
    const mha_tdesc *p = &n->src[0], *d = &n->dst;
    return p->buf && d->buf && p->dtype == MHA_F32 && d->dtype == MHA_F32 &&
           p->nb[3] == 1 && d->nb[3] == 1 && p->ne[3] >= 1 &&
           d->ne[0] == p->ne[0] && d->ne[1] == p->ne[1] && d->ne[2] == 1 &&
           d->ne[3] == MHA_HEAD_STATS_COLS + p->ne[1];
}

mha_status mha_cpu_run_head_stats(mha_cpu_exec *e, const mha_node *n)
{
    mha_cpu_pool_run(e->pool, n->src[0].ne[0] * n->src[0].ne[1],
                     head_stats_task, (void *)n);
    return MHA_OK;
}
