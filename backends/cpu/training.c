/* training.c: the CPU's element-wise training ops (core/backend.h,
 * "Training"): SUM_ROWS (bias gradients) and ADAMW (the optimizer step).
 * Both are memory bound: plain loops the compiler vectorises, cut into
 * tasks by the shape (never by the thread count) so the bits are the same
 * for every thread count. MATMUL is matmul.c's, the attention backward
 * attention_backward.c's. */
#include <math.h>
#include <string.h>

#include "ops.h"

/* Columns of a SUM_ROWS task; elements of an ADAMW task. */
enum { SUM_COLS = 256, ADAM_BLOCK = 4096 };

typedef struct elt_job {
    const mha_node *node;
    const mha_cpu_kernels *k;
    int64_t col_tiles;
} elt_job;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- SUM_ROWS --------------------------------------------------------------- */

/* SUM_COLS columns of one outer index: task -> (outer, column block); the
 * rows are added in order into the dst row (from 0 or its old value). */
static void sum_rows_task(void *arg, int64_t task, int thread)
{
    const elt_job *j = arg;
    const mha_tdesc *s = &j->node->src[0], *d = &j->node->dst;
    int64_t o = task / j->col_tiles, c0 = task % j->col_tiles * SUM_COLS;
    int64_t a = o / d->ne[1], b = o % d->ne[1];
    int64_t cn = min64(SUM_COLS, d->ne[3] - c0);
    float *out = mha_cpu_at(d, a, b, 0) + c0;
    (void)thread;
    if (!j->node->params.accumulate)
        memset(out, 0, (size_t)cn * sizeof *out);
    for (int64_t m = 0; m < s->ne[2]; m++) {
        const float *row = mha_cpu_at(s, a, b, m) + c0 * s->nb[3];
        if (s->nb[3] == 1) {
            j->k->axpy(cn, 1.0f, row, out);
            continue;
        }
        for (int64_t c = 0; c < cn; c++)
            out[c] += row[c * s->nb[3]];
    }
}

static bool sum_rows_supported(const mha_node *n)
{
    const mha_tdesc *s = &n->src[0], *d = &n->dst;
    return s->buf && s->dtype == MHA_F32 && d->dtype == MHA_F32 &&
           d->nb[3] == 1 && d->ne[2] == 1 && s->ne[0] == d->ne[0] &&
           s->ne[1] == d->ne[1] && s->ne[3] == d->ne[3];
}

/* ---- ADAMW ------------------------------------------------------------------ */

/* torch.optim.AdamW's step over ADAM_BLOCK parameters, in its order of
 * operations (fp32). */
static void adamw_task(void *arg, int64_t task, int thread)
{
    const elt_job *j = arg;
    const mha_node *n = j->node;
    const mha_op_params *a = &n->params;
    int64_t i0 = task * ADAM_BLOCK;
    int64_t cnt = min64(ADAM_BLOCK, n->dst.ne[3] - i0);
    float *p = mha_cpu_at(&n->dst, 0, 0, 0) + i0;
    const float *g = mha_cpu_at(&n->src[MHA_SRC_ADAM_G], 0, 0, 0) + i0;
    float *m = mha_cpu_at(&n->src[MHA_SRC_ADAM_M], 0, 0, 0) + i0;
    float *v = mha_cpu_at(&n->src[MHA_SRC_ADAM_V], 0, 0, 0) + i0;
    float decay = 1.0f - a->adam_lr * a->adam_weight_decay;
    float b1 = a->adam_beta1, b2 = a->adam_beta2;
    float step = a->adam_lr / a->adam_bc1;
    float bc2_sqrt = sqrtf(a->adam_bc2), eps = a->adam_eps;
    (void)thread;
    for (int64_t i = 0; i < cnt; i++) { /* lerp_, mul_ + addcmul_, addcdiv_ */
        m[i] += (1.0f - b1) * (g[i] - m[i]);
        v[i] = v[i] * b2 + (1.0f - b2) * (g[i] * g[i]);
        p[i] = p[i] * decay - step * (m[i] / (sqrtf(v[i]) / bc2_sqrt + eps));
    }
}

static bool adamw_supported(const mha_node *n)
{
    if (n->dst.dtype != MHA_F32 || n->dst.nb[3] != 1)
        return false;
    for (int s = MHA_SRC_ADAM_G; s <= MHA_SRC_ADAM_V; s++) {
        const mha_tdesc *t = &n->src[s];
        if (!t->buf || t->dtype != MHA_F32 || t->nb[3] != 1 ||
            t->ne[3] != n->dst.ne[3])
            return false;
    }
    return true;
}

/* ---- dispatch --------------------------------------------------------------- */

bool mha_cpu_training_supported(const mha_node *n)
{
    return n->op == MHA_OP_SUM_ROWS ? sum_rows_supported(n)
                                    : adamw_supported(n);
}

mha_status mha_cpu_run_training(mha_cpu_exec *e, const mha_node *n)
{
    const mha_tdesc *d = &n->dst;
    elt_job j = {n, e->k, ceil_div(d->ne[3], SUM_COLS)};
    if (n->op == MHA_OP_SUM_ROWS)
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1] * j.col_tiles,
                         sum_rows_task, &j);
    else
        mha_cpu_pool_run(e->pool, ceil_div(d->ne[3], ADAM_BLOCK), adamw_task,
                         &j);
    return MHA_OK;
}
