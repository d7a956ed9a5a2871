/* ops.c: every graph op of core/backend.h on the CPU but the fused
 * attention (attention.c), ROPE and MUL (rope.c), HEAD_STATS
 * (head_stats.c) and the training ops (matmul.c, training.c,
 * attention_backward.c). Each op is cut into
 * independent tasks (a batch item, a head, a block of rows or columns)
 * whose arithmetic does not depend on which thread runs them or how many
 * there are: block sizes are constants of the shape, never of the thread
 * count, so results are bit-for-bit the same for every thread count. The heavy lifting is the ISA
 * table's. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"

/* Projection blocking: W^T is packed once per call and shared by every
 * task, in slabs of K of at most PROJ_PACK_FLOATS (16 MiB: all of K up to
 * E = 2048; at E = 4096, 1024-deep slabs, so the output is re-read 4 times
 * rather than 16 as with 4 MiB, 15% faster there, and no 64 MiB copy of
 * the weight). A task is PROJ_ROWS rows (rounded to the table's tile rows)
 * by PROJ_COLS output features; its 256 columns of a slab stay in L2 while
 * the rows stream past. */
#define PROJ_PACK_FLOATS ((size_t)4 << 20)
enum { PROJ_ROWS = 128, PROJ_COLS = 256, PROJ_PACK_COLS = 64 };
#define SCRATCH_ALIGN 64 /* a cache line */
/* Rows of an unfused scores / weighted-sum task. */
enum { UNFUSED_ROWS = 64 };

float *mha_cpu_at(const mha_tdesc *t, int64_t i0, int64_t i1, int64_t i2)
{
    return (float *)((char *)t->buf + t->offset) + i0 * t->nb[0] +
           i1 * t->nb[1] + i2 * t->nb[2];
}

#define at mha_cpu_at

static int present(const mha_tdesc *t) { return t->buf != NULL; }

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

mha_status mha_cpu_scratch_reserve(mha_cpu_exec *e, mha_cpu_scratch *s,
                                   size_t floats, int slots)
{
    floats = (floats + 15) / 16 * 16;
    if (floats <= s->floats)
        return MHA_OK;
    if (floats > (SIZE_MAX - SCRATCH_ALIGN) / sizeof(float) / (size_t)slots)
        return mha_host_error(e->host, MHA_OVERFLOW,
                              "cpu: %zu floats of scratch overflow", floats);
    void *raw = mha_host_malloc(e->host, floats * sizeof(float) *
                                             (size_t)slots + SCRATCH_ALIGN);
    if (!raw)
        return mha_host_error(e->host, MHA_OUT_OF_MEMORY,
                              "cpu: out of memory for %zu floats of scratch",
                              floats * (size_t)slots);
    mha_host_free(e->host, s->raw);
    s->raw = raw;
    s->data = (float *)(((uintptr_t)raw + SCRATCH_ALIGN - 1) &
                        ~(uintptr_t)(SCRATCH_ALIGN - 1));
    s->floats = floats;
    return MHA_OK;
}

mha_status mha_cpu_exec_init(mha_cpu_exec *e, mha_host *host,
                             const mha_cpu_kernels *k, int threads)
{
    memset(e, 0, sizeof *e);
    e->host = host;
    e->k = k;
    e->pack_budget = MHA_CPU_PACK_BUDGET_FLOATS;
    return mha_cpu_pool_create(host, threads, &e->pool);
}

void mha_cpu_exec_fini(mha_cpu_exec *e)
{
    mha_cpu_pool_destroy(e->pool);
    mha_host_free(e->host, e->scratch.raw);
    mha_host_free(e->host, e->packed.raw);
    memset(e, 0, sizeof *e);
}

/* ---- supports ----------------------------------------------------------- */

static bool unit_inner(const mha_tdesc *t)
{
    return !present(t) || (t->dtype == MHA_F32 && t->nb[3] == 1);
}

/* f32 or f16 (converted on load and store) with unit inner stride. */
static bool f32_or_f16_rows(const mha_tdesc *t)
{
    return (t->dtype == MHA_F32 || t->dtype == MHA_F16) && t->nb[3] == 1;
}

/* The fused attention takes every extension of the attention core. */
static bool attention_supported(const mha_node *n)
{
    const mha_tdesc *len = &n->src[MHA_SRC_KV_LEN];
    int64_t hkv = n->src[MHA_SRC_K].ne[1];
    if (!f32_or_f16_rows(&n->src[MHA_SRC_Q]) ||
        !f32_or_f16_rows(&n->src[MHA_SRC_K]) ||
        !f32_or_f16_rows(&n->src[MHA_SRC_V]) || !f32_or_f16_rows(&n->dst))
        return false;
    if (hkv < 1 || n->dst.ne[1] % hkv != 0 || n->src[MHA_SRC_V].ne[1] != hkv)
        return false;
    if (present(len) && len->dtype != MHA_I32)
        return false;
    if (!unit_inner(&n->src[MHA_SRC_MASK]) || !unit_inner(&n->src[MHA_SRC_KPM]))
        return false;
    /* the saved LSE, one float per row: any strides */
    if (n->extra_dst[MHA_DST_LSE].buf &&
        n->extra_dst[MHA_DST_LSE].dtype != MHA_F32)
        return false;
    /* per-head values, read one at a time: any stride */
    for (int s = MHA_SRC_SINKS; s <= MHA_SRC_ALIBI; s++)
        if (present(&n->src[s]) && n->src[s].dtype != MHA_F32)
            return false;
    return true;
}

bool mha_cpu_op_supported(const mha_node *node)
{
    if (node->op == MHA_OP_MATMUL)
        return mha_cpu_matmul_supported(node);
    if (node->op == MHA_OP_SUM_ROWS || node->op == MHA_OP_ADAMW)
        return mha_cpu_training_supported(node);
    if (node->op == MHA_OP_ATTENTION_BACKWARD)
        return mha_cpu_attention_backward_supported(node);
    if (node->op == MHA_OP_ROPE)
        return mha_cpu_rope_supported(node);
    if (node->op == MHA_OP_MUL)
        return mha_cpu_mul_supported(node);
    if (node->op == MHA_OP_ATTENTION)
        return attention_supported(node);
    if (node->op == MHA_OP_HEAD_STATS)
        return mha_cpu_head_stats_supported(node);
    if (node->dst.dtype != MHA_F32)
        return false;
    for (int s = 0; s < MHA_MAX_SRC; s++)
        if (present(&node->src[s]) && node->src[s].dtype != MHA_F32)
            return false;
    if (node->op == MHA_OP_FILL_ROWS) /* any strides */
        return true;
    for (int s = 0; s < MHA_MAX_SRC; s++)
        if (!unit_inner(&node->src[s]))
            return false;
    return unit_inner(&node->dst);
}

/* ---- projection ------------------------------------------------------------ */

/* One pool job of an op: the task index decodes into (i0, tile1, tile2). */
typedef struct job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t tiles1, tiles2;
    int64_t rows, cols; /* rows and columns of a tile */
    int64_t k0, kc;     /* projection: the slab of K being multiplied */
    float *packed;      /* projection: W^T of the slab, packed */
} job;

/* Few rows (a decode step): packing W would cost more than the product,
 * so each task takes PROJ_COLS output features with gemm_nt on W in
 * place (dot products below the table's tile rows). */
static void projection_direct_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_node *n = j->node;
    const mha_tdesc *x = &n->src[0], *w = &n->src[1], *bias = &n->src[2];
    const mha_tdesc *y = &n->dst;
    int64_t b = task / j->tiles2, c0 = task % j->tiles2 * j->cols;
    int64_t cols = min64(y->ne[3] - c0, j->cols);
    (void)thread;
    j->exec->k->gemm_nt(y->ne[2], cols, x->ne[3], at(x, b, 0, 0), x->nb[2],
                        at(w, 0, 0, c0), w->nb[2],
                        present(bias) ? at(bias, 0, 0, 0) + c0 : NULL,
                        at(y, b, 0, 0) + c0, y->nb[2]);
}

/* Packs PROJ_PACK_COLS output features of the slab: a multiple of every
 * table's nr, so the group's panels start at column c0 * kc. */
static void projection_pack_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *w = &j->node->src[1];
    int64_t c0 = task * PROJ_PACK_COLS;
    (void)thread;
    j->exec->k->pack_nt(min64(PROJ_PACK_COLS, w->ne[2] - c0), j->kc,
                        at(w, 0, 0, c0) + j->k0, w->nb[2], 1.0f,
                        j->packed + c0 * j->kc);
}

/* rows x cols of Y += X[:, k0:k0+kc] W^T (the first slab starts from the
 * bias): task -> (batch, row block, column block). */
static void projection_packed_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_node *n = j->node;
    const mha_tdesc *x = &n->src[0], *bias = &n->src[2], *y = &n->dst;
    int64_t b = task / (j->tiles1 * j->tiles2);
    int64_t r0 = task / j->tiles2 % j->tiles1 * j->rows;
    int64_t c0 = task % j->tiles2 * j->cols;
    int first = j->k0 == 0;
    (void)thread;
    j->exec->k->gemm_packed(
        min64(j->rows, y->ne[2] - r0), min64(j->cols, y->ne[3] - c0), j->kc,
        at(x, b, 0, r0) + j->k0, x->nb[2], j->packed + c0 * j->kc, j->kc,
        first && present(bias) ? at(bias, 0, 0, 0) + c0 : NULL, !first,
        at(y, b, 0, r0) + c0, y->nb[2]);
}

/* Slab depth: all of K when the packed W^T fits PROJ_PACK_FLOATS, else the
 * most that does (at least 64, so a slab always feeds the micro-kernel). */
static int64_t projection_slab(int64_t N, int64_t K)
{
    int64_t fit = (int64_t)PROJ_PACK_FLOATS / (N > 0 ? N : 1) / 64 * 64;
    return K <= fit ? K : fit < 64 ? 64 : fit;
}

static mha_status run_projection(mha_cpu_exec *e, const mha_node *n)
{
    const mha_cpu_kernels *k = e->k;
    int64_t B = n->dst.ne[0], T = n->dst.ne[2], N = n->dst.ne[3];
    int64_t K = n->src[0].ne[3];
    job j = {e, n, 1, ceil_div(N, PROJ_COLS), 0, PROJ_COLS, 0, 0, NULL};
    if (T < k->mr || K == 0) {
        mha_cpu_pool_run(e->pool, B * j.tiles2, projection_direct_task, &j);
        return MHA_OK;
    }
    j.kc = projection_slab(N, K);
    int64_t npad = ceil_div(N, PROJ_PACK_COLS) * PROJ_PACK_COLS;
    mha_status st = mha_cpu_scratch_reserve(e, &e->packed,
                                            (size_t)(npad * j.kc), 1);
    if (st != MHA_OK)
        return st;
    j.packed = e->packed.data;
    j.rows = ceil_div(PROJ_ROWS, k->mr) * k->mr;
    j.tiles1 = ceil_div(T, j.rows);
    for (j.k0 = 0; j.k0 < K; j.k0 += j.kc) {
        j.kc = min64(j.kc, K - j.k0);
        mha_cpu_pool_run(e->pool, ceil_div(N, PROJ_PACK_COLS),
                         projection_pack_task, &j);
        mha_cpu_pool_run(e->pool, B * j.tiles1 * j.tiles2,
                         projection_packed_task, &j);
    }
    return MHA_OK;
}

/* ---- fill rows --------------------------------------------------------------- */

static void fill_rows_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *s = &j->node->src[0], *d = &j->node->dst;
    int64_t i0 = task / (d->ne[1] * d->ne[2]);
    int64_t i1 = task / d->ne[2] % d->ne[1], i2 = task % d->ne[2];
    float *out = at(d, i0, i1, i2);
    const float *in = present(s) ? at(s, 0, 0, 0) : NULL;
    (void)thread;
    for (int64_t c = 0; c < d->ne[3]; c++)
        out[c * d->nb[3]] = in ? in[c * s->nb[3]] : 0.0f;
}

/* ---- masks ------------------------------------------------------------------- */

void mha_cpu_mask_row(const mha_cpu_kernels *k, const mha_node *n,
                      int64_t b, int64_t h, int64_t i, int64_t j0,
                      int64_t cnt, float *row)
{
    const mha_tdesc *mask = &n->src[MHA_SRC_MASK], *kpm = &n->src[MHA_SRC_KPM];
    int64_t masked = n->params.mask_cols - j0;
    masked = masked < 0 ? 0 : masked > cnt ? cnt : masked;
    if (present(mask))
        k->axpy(masked, 1.0f, at(mask, b, h, i) + j0, row);
    if (present(kpm))
        k->axpy(masked, 1.0f, at(kpm, b, h, i) + j0, row);
}

void mha_cpu_mask_outside(const mha_node *n, int64_t j0, int64_t cnt,
                          int64_t lo, int64_t hi, float *row)
{
    int64_t end = min64(j0 + cnt, n->params.mask_cols);
    for (int64_t j = j0; j < end && j < lo; j++)
        row[j - j0] = -INFINITY;
    for (int64_t j = hi > j0 ? hi : j0; j < end; j++)
        row[j - j0] = -INFINITY;
}

int mha_cpu_has_nan(int64_t n, const float *x)
{
    for (int64_t i = 0; i < n; i++)
        if (x[i] != x[i])
            return 1;
    return 0;
}

/* ---- scores ---------------------------------------------------------------- */

/* Rows [i0, i0 + UNFUSED_ROWS) of one head: task -> (batch, head, rows). */
static void scores_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *kk = &n->src[MHA_SRC_K];
    const mha_tdesc *a = &n->dst;
    int64_t b = task / (a->ne[1] * j->tiles1);
    int64_t h = task / j->tiles1 % a->ne[1];
    int64_t i0 = task % j->tiles1 * UNFUSED_ROWS;
    int64_t rows = min64(UNFUSED_ROWS, a->ne[2] - i0);
    (void)thread;
    k->gemm_nt(rows, a->ne[3], q->ne[3], at(q, b, h, i0), q->nb[2],
               at(kk, b, h, 0), kk->nb[2], NULL, at(a, b, h, i0), a->nb[2]);
    for (int64_t i = i0; i < i0 + rows; i++) {
        float *row = at(a, b, h, i);
        k->scale(a->ne[3], n->params.scale, row, row);
        mha_cpu_mask_row(k, n, b, h, i, 0, a->ne[3], row);
        mha_cpu_mask_outside(n, 0, a->ne[3], 0,
                             n->params.causal ? i + 1 : a->ne[3], row);
    }
}

/* ---- softmax ---------------------------------------------------------------- */

/* A row of only -inf (every key masked) becomes zeros, libmha's documented
 * answer where PyTorch gives NaN; a NaN anywhere makes the row NaN. */
static void softmax_row(const mha_cpu_kernels *k, int64_t n, float *row)
{
    float m = k->max(n, row);
    if (m == -INFINITY) {
        float fill = mha_cpu_has_nan(n, row) ? NAN : 0.0f;
        for (int64_t i = 0; i < n; i++)
            row[i] = fill;
        return;
    }
    float sum = k->exp_sum(n, m, row);
    k->scale(n, 1.0f / sum, row, row);
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

/* Rows [i0, i0 + UNFUSED_ROWS) of one head, as scores_task. */
static void weighted_sum_task(void *arg, int64_t task, int thread)
{
    const job *j = arg;
    const mha_tdesc *p = &j->node->src[0], *v = &j->node->src[1];
    const mha_tdesc *o = &j->node->dst;
    int64_t b = task / (o->ne[1] * j->tiles1);
    int64_t h = task / j->tiles1 % o->ne[1];
    int64_t i0 = task % j->tiles1 * UNFUSED_ROWS;
    int64_t rows = min64(UNFUSED_ROWS, o->ne[2] - i0);
    (void)thread;
    for (int64_t i = i0; i < i0 + rows; i++)
        memset(at(o, b, h, i), 0, (size_t)o->ne[3] * sizeof(float));
    j->exec->k->gemm_nn_acc(rows, o->ne[3], p->ne[3], at(p, b, h, i0),
                            p->nb[2], at(v, b, h, 0), v->nb[2],
                            at(o, b, h, i0), o->nb[2]);
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
    k->scale(d->ne[3], 1.0f / (float)heads, out, out);
}

/* ---- dispatch --------------------------------------------------------------- */

/* (batch, head, row block) tasks of the unfused scores and weighted sum. */
static void run_row_blocks(mha_cpu_exec *e, const mha_node *n,
                           mha_cpu_task_fn fn)
{
    const mha_tdesc *d = &n->dst;
    job j = {e, n, ceil_div(d->ne[2], UNFUSED_ROWS), 0, 0, 0, 0, 0, NULL};
    mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1] * j.tiles1, fn, &j);
}

mha_status mha_cpu_op_run(mha_cpu_exec *e, const mha_node *n)
{
    job j = {e, n, 0, 0, 0, 0, 0, 0, NULL};
    const mha_tdesc *d = &n->dst;
    switch (n->op) {
    case MHA_OP_PROJECTION:
        return run_projection(e, n);
    case MHA_OP_FILL_ROWS:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1] * d->ne[2],
                         fill_rows_task, &j);
        return MHA_OK;
    case MHA_OP_SCORES:
        run_row_blocks(e, n, scores_task);
        return MHA_OK;
    case MHA_OP_SOFTMAX:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[1] * d->ne[2],
                         softmax_task, &j);
        return MHA_OK;
    case MHA_OP_WEIGHTED_SUM:
        run_row_blocks(e, n, weighted_sum_task);
        return MHA_OK;
    case MHA_OP_ATTENTION:
        return mha_cpu_run_attention(e, n);
    case MHA_OP_MEAN_HEADS:
        mha_cpu_pool_run(e->pool, d->ne[0] * d->ne[2], mean_heads_task, &j);
        return MHA_OK;
    case MHA_OP_ROPE:
        return mha_cpu_run_rope(e, n);
    case MHA_OP_MUL:
        return mha_cpu_run_mul(e, n);
    case MHA_OP_HEAD_STATS:
        return mha_cpu_run_head_stats(e, n);
    case MHA_OP_MATMUL:
        return mha_cpu_run_matmul(e, n);
    case MHA_OP_SUM_ROWS:
    case MHA_OP_ADAMW:
        return mha_cpu_run_training(e, n);
    case MHA_OP_ATTENTION_BACKWARD:
        return mha_cpu_run_attention_backward(e, n);
    case MHA_OP_COUNT:
        break;
    }
    return mha_host_error(e->host, MHA_UNSUPPORTED, "cpu: unknown op %d",
                          (int)n->op);
}
