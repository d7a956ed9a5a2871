/* ops.c: every graph op of core/backend.h on the CPU. Each op is cut into
 * independent tasks (a batch item, a head, a block of rows) whose arithmetic
 * does not depend on which thread runs them, so results are bit-for-bit the
 * same for every thread count. The heavy lifting is the ISA table's. */
#include <math.h>
#include <string.h>

#include "ops.h"

#define ROW_BLOCK 64   /* rows of a projection task */
#define COL_BLOCK 256  /* output features of a projection task */
#define Q_BLOCK 32     /* queries of a fused attention task */
#define K_BLOCK 128    /* keys per step of the fused attention */

static float *at(const mha_tdesc *t, int64_t i0, int64_t i1, int64_t i2)
{
    return (float *)((char *)t->buf + t->offset) + i0 * t->nb[0] +
           i1 * t->nb[1] + i2 * t->nb[2];
}

static int present(const mha_tdesc *t) { return t->buf != NULL; }

/* ---- supports ----------------------------------------------------------- */

static bool unit_inner(const mha_tdesc *t)
{
    return !present(t) || (t->dtype == MHA_F32 && t->nb[3] == 1);
}

bool mha_cpu_op_supported(const mha_node *node)
{
    int copies = node->op == MHA_OP_SPLIT_HEADS || node->op == MHA_OP_CONCAT ||
                 node->op == MHA_OP_FILL_ROWS;
    if (node->dst.dtype != MHA_F32)
        return false;
    for (int s = 0; s < MHA_MAX_SRC; s++)
        if (present(&node->src[s]) && node->src[s].dtype != MHA_F32)
            return false;
    if (copies)
        return true;
    for (int s = 0; s < MHA_MAX_SRC; s++)
        if (!unit_inner(&node->src[s]))
            return false;
    return unit_inner(&node->dst);
}

/* ---- projection ------------------------------------------------------------ */

typedef struct job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t tiles1, tiles2; /* task -> (i0, tile1, tile2) */
} job;

static void projection_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_node *n = j->node;
    const mha_tdesc *x = &n->src[0], *w = &n->src[1], *bias = &n->src[2];
    const mha_tdesc *y = &n->dst;
    int64_t b = task / (j->tiles1 * j->tiles2);
    int64_t r0 = (task / j->tiles2 % j->tiles1) * ROW_BLOCK;
    int64_t c0 = task % j->tiles2 * COL_BLOCK;
    int64_t rows = y->ne[2] - r0 < ROW_BLOCK ? y->ne[2] - r0 : ROW_BLOCK;
    int64_t cols = y->ne[3] - c0 < COL_BLOCK ? y->ne[3] - c0 : COL_BLOCK;
    (void)thread;
    j->exec->k->gemm_nt(rows, cols, x->ne[3], at(x, b, 0, r0), x->nb[2],
                        at(w, 0, 0, c0), w->nb[2],
                        present(bias) ? at(bias, 0, 0, 0) + c0 : NULL,
                        at(y, b, 0, r0) + c0, y->nb[2]);
}

static void run_projection(mha_cpu_exec *e, const mha_node *n)
{
    job j = {e, n, (n->dst.ne[2] + ROW_BLOCK - 1) / ROW_BLOCK,
             (n->dst.ne[3] + COL_BLOCK - 1) / COL_BLOCK};
    mha_cpu_pool_run(e->pool, n->dst.ne[0] * j.tiles1 * j.tiles2,
                     projection_task, &j);
}

/* ---- copies ------------------------------------------------------------------ */

static void copy_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *s = &j->node->src[0], *d = &j->node->dst;
    int fill = j->node->op == MHA_OP_FILL_ROWS;
    int64_t i0 = task / (d->ne[1] * d->ne[2]);
    int64_t i1 = task / d->ne[2] % d->ne[1], i2 = task % d->ne[2];
    float *out = at(d, i0, i1, i2);
    const float *in = !present(s) ? NULL : fill ? at(s, 0, 0, 0)
                                                : at(s, i0, i1, i2);
    (void)thread;
    for (int64_t c = 0; c < d->ne[3]; c++)
        out[c * d->nb[3]] = in ? in[c * s->nb[3]] : 0.0f;
}

static void run_copy(mha_cpu_exec *e, const mha_node *n)
{
    job j = {e, n, 0, 0};
    mha_cpu_pool_run(e->pool, n->dst.ne[0] * n->dst.ne[1] * n->dst.ne[2],
                     copy_task, &j);
}

/* ---- scores ---------------------------------------------------------------- */

/* Turns raw dot products of query row i, keys [j0, j0+n), into scores:
 * scaled, plus masks, causal; keys from mask_cols on are never masked. */
static void finish_scores(const mha_cpu_kernels *k, const mha_node *n,
                          int64_t b, int64_t h, int64_t i, int64_t j0,
                          int64_t cnt, float *row)
{
    const mha_tdesc *mask = &n->src[MHA_SRC_MASK], *kpm = &n->src[MHA_SRC_KPM];
    float scale = n->params.scale;
    int64_t masked = n->params.mask_cols - j0;
    masked = masked < 0 ? 0 : masked > cnt ? cnt : masked;
    if (present(mask))
        k->scale_add(masked, scale, at(mask, b, h, i) + j0, row);
    else
        k->scale(masked, scale, row);
    if (present(kpm))
        k->axpy(masked, 1.0f, at(kpm, b, h, i) + j0, row);
    k->scale(cnt - masked, scale, row + masked);
    if (n->params.causal)
        for (int64_t c = i + 1 - j0 < 0 ? 0 : i + 1 - j0; c < masked; c++)
            row[c] = -INFINITY;
}

static void scores_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *kk = &n->src[MHA_SRC_K];
    const mha_tdesc *a = &n->dst;
    int64_t b = task / a->ne[1], h = task % a->ne[1];
    (void)thread;
    k->gemm_nt(a->ne[2], a->ne[3], q->ne[3], at(q, b, h, 0), q->nb[2],
               at(kk, b, h, 0), kk->nb[2], NULL, at(a, b, h, 0), a->nb[2]);
    for (int64_t i = 0; i < a->ne[2]; i++)
        finish_scores(k, n, b, h, i, 0, a->ne[3], at(a, b, h, i));
}

/* ---- softmax ---------------------------------------------------------------- */

static int has_nan(int64_t n, const float *x)
{
    for (int64_t i = 0; i < n; i++)
        if (x[i] != x[i])
            return 1;
    return 0;
}

/* A row of only -inf (every key masked) becomes zeros, libmha's documented
 * answer where PyTorch gives NaN; a NaN anywhere makes the row NaN. */
static void softmax_row(const mha_cpu_kernels *k, int64_t n, float *row)
{
    float m = k->max(n, row);
    if (m == -INFINITY) {
        float fill = has_nan(n, row) ? NAN : 0.0f;
        for (int64_t i = 0; i < n; i++)
            row[i] = fill;
        return;
    }
    float sum = k->exp_sum(n, m, row);
    k->scale(n, 1.0f / sum, row);
}

static void softmax_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *s = &j->node->src[0], *d = &j->node->dst;
    int64_t i0 = task / (d->ne[1] * d->ne[2]);
    int64_t i1 = task / d->ne[2] % d->ne[1], i2 = task % d->ne[2];
    float *out = at(d, i0, i1, i2);
    const float *in = at(s, i0, i1, i2);
    (void)thread;
    if (in != out)
        memcpy(out, in, (size_t)d->ne[3] * sizeof *out);
    softmax_row(j->exec->k, d->ne[3], out);
}

/* ---- weighted sum and head mean ------------------------------------------ */

static void weighted_sum_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *p = &j->node->src[0], *v = &j->node->src[1];
    const mha_tdesc *o = &j->node->dst;
    int64_t b = task / o->ne[1], h = task % o->ne[1];
    (void)thread;
    for (int64_t i = 0; i < o->ne[2]; i++)
        memset(at(o, b, h, i), 0, (size_t)o->ne[3] * sizeof(float));
    j->exec->k->gemm_nn_acc(o->ne[2], o->ne[3], p->ne[3], at(p, b, h, 0),
                            p->nb[2], at(v, b, h, 0), v->nb[2],
                            at(o, b, h, 0), o->nb[2]);
}

static void mean_heads_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *s = &j->node->src[0], *d = &j->node->dst;
    const mha_cpu_kernels *k = j->exec->k;
    int64_t b = task / d->ne[2], i = task % d->ne[2], heads = s->ne[1];
    float *out = at(d, b, 0, i);
    (void)thread;
    memset(out, 0, (size_t)d->ne[3] * sizeof *out);
    for (int64_t h = 0; h < heads; h++)
        k->axpy(d->ne[3], 1.0f, at(s, b, h, i), out);
    k->scale(d->ne[3], 1.0f / (float)heads, out);
}

/* ---- fused attention ------------------------------------------------------- */

/* Online softmax state of one block of query rows. */
typedef struct flash_tile {
    float *s;   /* [Q_BLOCK][K_BLOCK] scores, then probabilities */
    float *acc; /* [Q_BLOCK][d] unnormalised output */
    float *m;   /* running max per row */
    float *l;   /* running sum per row */
} flash_tile;

static size_t flash_floats(int64_t d)
{
    return (size_t)(Q_BLOCK * K_BLOCK + Q_BLOCK * d + 2 * Q_BLOCK);
}

static flash_tile flash_tile_of(mha_cpu_exec *e, int thread, int64_t d)
{
    float *base = e->scratch.data + (size_t)thread * e->scratch.floats;
    flash_tile t = {base, base + Q_BLOCK * K_BLOCK,
                    base + Q_BLOCK * K_BLOCK + Q_BLOCK * d,
                    base + Q_BLOCK * K_BLOCK + Q_BLOCK * d + Q_BLOCK};
    return t;
}

/* Folds one row of new scores into the running max/sum and rescales the
 * row's accumulator; leaves probabilities in the score row. */
static void flash_update_row(const mha_cpu_kernels *k, flash_tile *t,
                             int64_t r, int64_t cnt, int64_t d)
{
    float *s = t->s + r * K_BLOCK;
    float m_new = k->max(cnt, s);
    if (m_new < t->m[r])
        m_new = t->m[r];
    if (m_new == -INFINITY) { /* nothing attendable yet */
        if (has_nan(cnt, s))
            t->l[r] = NAN;
        memset(s, 0, (size_t)cnt * sizeof *s);
        return;
    }
    float alpha = t->m[r] == -INFINITY ? 0.0f : expf(t->m[r] - m_new);
    float sum = k->exp_sum(cnt, m_new, s);
    t->l[r] = t->l[r] * alpha + sum;
    t->m[r] = m_new;
    k->scale(d, alpha, t->acc + r * d);
}

static void flash_block(const job *j, flash_tile *t, int64_t b, int64_t h,
                        int64_t i0, int64_t rows, int64_t j0, int64_t cnt)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *kk = &n->src[MHA_SRC_K];
    const mha_tdesc *v = &n->src[MHA_SRC_V];
    int64_t d = q->ne[3];
    k->gemm_nt(rows, cnt, d, at(q, b, h, i0), q->nb[2], at(kk, b, h, j0),
               kk->nb[2], NULL, t->s, K_BLOCK);
    for (int64_t r = 0; r < rows; r++) {
        finish_scores(k, n, b, h, i0 + r, j0, cnt, t->s + r * K_BLOCK);
        flash_update_row(k, t, r, cnt, d);
    }
    k->gemm_nn_acc(rows, d, cnt, t->s, K_BLOCK, at(v, b, h, j0), v->nb[2],
                   t->acc, d);
}

/* Keys [from, to) in K_BLOCK steps. */
static void flash_keys(const job *j, flash_tile *t, int64_t b, int64_t h,
                       int64_t i0, int64_t rows, int64_t from, int64_t to)
{
    for (int64_t j0 = from; j0 < to; j0 += K_BLOCK)
        flash_block(j, t, b, h, i0, rows, j0,
                    to - j0 < K_BLOCK ? to - j0 : K_BLOCK);
}

static void attention_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_node *n = j->node;
    const mha_tdesc *o = &n->dst, *kk = &n->src[MHA_SRC_K];
    int64_t d = o->ne[3], H = o->ne[1];
    int64_t b = task / (H * j->tiles1), h = task / j->tiles1 % H;
    int64_t i0 = task % j->tiles1 * Q_BLOCK;
    int64_t rows = o->ne[2] - i0 < Q_BLOCK ? o->ne[2] - i0 : Q_BLOCK;
    flash_tile t = flash_tile_of(j->exec, thread, d);
    for (int64_t r = 0; r < rows; r++) {
        t.m[r] = -INFINITY;
        t.l[r] = 0.0f;
    }
    memset(t.acc, 0, (size_t)(rows * d) * sizeof *t.acc);
    /* causal: keys past the block's last query are masked, so skipped */
    int64_t S = n->params.mask_cols, keys = kk->ne[2];
    int64_t real_end = n->params.causal && i0 + rows < S ? i0 + rows : S;
    flash_keys(j, &t, b, h, i0, rows, 0, real_end);
    flash_keys(j, &t, b, h, i0, rows, S, keys);
    for (int64_t r = 0; r < rows; r++) {
        float inv = t.l[r] == 0.0f ? 0.0f : 1.0f / t.l[r];
        float *out = at(o, b, h, i0 + r);
        memcpy(out, t.acc + r * d, (size_t)d * sizeof *out);
        j->exec->k->scale(d, inv, out);
    }
}

static mha_status grow_scratch(mha_cpu_exec *e, size_t floats)
{
    if (floats <= e->scratch.floats)
        return MHA_OK;
    int threads = mha_cpu_pool_threads(e->pool);
    float *data = mha_host_malloc(e->host, floats * sizeof(float) *
                                               (size_t)threads);
    if (!data)
        return mha_host_error(e->host, MHA_OUT_OF_MEMORY,
                              "cpu: out of memory for attention scratch");
    mha_host_free(e->host, e->scratch.data);
    e->scratch.data = data;
    e->scratch.floats = floats;
    return MHA_OK;
}

static mha_status run_attention(mha_cpu_exec *e, const mha_node *n)
{
    mha_status st = grow_scratch(e, flash_floats(n->dst.ne[3]));
    if (st != MHA_OK)
        return st;
    job j = {e, n, (n->dst.ne[2] + Q_BLOCK - 1) / Q_BLOCK, 0};
    mha_cpu_pool_run(e->pool, n->dst.ne[0] * n->dst.ne[1] * j.tiles1,
                     attention_task, &j);
    return MHA_OK;
}

/* ---- dispatch --------------------------------------------------------------- */

mha_status mha_cpu_op_run(mha_cpu_exec *e, const mha_node *n)
{
    job j = {e, n, 0, 0};
    const mha_tdesc *d = &n->dst;
    switch (n->op) {
    case MHA_OP_PROJECTION:
        run_projection(e, n);
        return MHA_OK;
    case MHA_OP_FILL_ROWS:
    case MHA_OP_SPLIT_HEADS:
    case MHA_OP_CONCAT:
        run_copy(e, n);
        return MHA_OK;
    case MHA_OP_SCORES:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1], scores_task, &j);
        return MHA_OK;
    case MHA_OP_SOFTMAX:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1] * d->ne[2],
                         softmax_task, &j);
        return MHA_OK;
    case MHA_OP_WEIGHTED_SUM:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1], weighted_sum_task, &j);
        return MHA_OK;
    case MHA_OP_ATTENTION:
        return run_attention(e, n);
    case MHA_OP_MEAN_HEADS:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[2], mean_heads_task, &j);
        return MHA_OK;
    case MHA_OP_COUNT:
        break;
    }
    return mha_host_error(e->host, MHA_UNSUPPORTED, "cpu: unknown op %d",
                          (int)n->op);
}
