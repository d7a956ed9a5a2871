/* attention.c: the CPU backend's fused attention (ATTENTION op): scores,
 * softmax and weighted sum without the L x S' matrix. A task is one query
 * tile of one head of one batch item; it walks the keys in KEY_BLOCK steps
 * with an online softmax (running row max and sum, the accumulator
 * rescaled when the max grows), applying masks and causal per block and
 * skipping blocks that causal masks entirely. Its memory is one score tile
 * and one accumulator tile per thread.
 *
 * K and V are first packed, per head, into the GEMM kernels' panel layout
 * (kernels.h), K transposed and pre-multiplied by the scale: every query
 * tile of the head then runs both products on packed operands, where
 * packing per tile would redo that work L / QUERY_ROWS times. The packed
 * copies are made for a group of heads at a time, bounded by the exec's
 * pack_budget (MHA_CPU_PACK_BUDGET_FLOATS), so memory stays O(S) whatever
 * the head count. With fewer queries than a register tile (decode)
 * packing does not pay, and the products run on K and V in place. */
#include <math.h>
#include <string.h>

#include "ops.h"

#define at mha_cpu_at

enum {
    KEY_BLOCK = 128, /* keys per step: a multiple of every table's nr */
    QUERY_ROWS = 32  /* queries per task, rounded up to the tile rows */
};

typedef struct attn_job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t H, L, S, S2, d;
    int64_t dpad;        /* d rounded up to the table's nr */
    int64_t qrows;       /* queries per task */
    int64_t qtiles;      /* query tiles per head */
    int64_t kblocks;     /* key blocks per head */
    int64_t head0, nheads; /* heads (b * H + h) of this round */
    int packed;          /* K and V packed, or read in place */
    float *kp, *vp;      /* packed K^T and V of the round's heads */
} attn_job;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static size_t kp_head_floats(const attn_job *j)
{
    return (size_t)(j->kblocks * KEY_BLOCK * j->d);
}

static size_t vp_head_floats(const attn_job *j)
{
    return (size_t)(j->kblocks * KEY_BLOCK * j->dpad);
}

/* ---- packing ------------------------------------------------------------------ */

/* Key block kb of head j->head0 + task / kblocks: K^T scaled into kp, V
 * into vp, each block at a fixed offset so the attention tasks find it. */
static void pack_task(void *arg, int64_t task, int thread)
{
    const attn_job *j = arg;
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *kk = &n->src[MHA_SRC_K], *v = &n->src[MHA_SRC_V];
    int64_t local = task / j->kblocks, kb = task % j->kblocks;
    int64_t bh = j->head0 + local, b = bh / j->H, h = bh % j->H;
    int64_t j0 = kb * KEY_BLOCK, cnt = min64(KEY_BLOCK, j->S2 - j0);
    (void)thread;
    k->pack_nt(cnt, j->d, at(kk, b, h, j0), kk->nb[2], n->params.scale,
               j->kp + (size_t)local * kp_head_floats(j) +
                   (size_t)(j0 * j->d));
    k->pack_nn(cnt, j->d, at(v, b, h, j0), v->nb[2],
               j->vp + (size_t)local * vp_head_floats(j) +
                   (size_t)(j0 * j->dpad));
}

/* ---- one query tile ------------------------------------------------------------ */

/* Online softmax state of one query tile, in the thread's scratch slot. */
typedef struct flash_tile {
    float *s;   /* [qrows][KEY_BLOCK] scores, then probabilities */
    float *acc; /* [qrows][d] unnormalised output */
    float *m;   /* running max per row */
    float *l;   /* running sum per row */
} flash_tile;

static size_t tile_floats(int64_t qrows, int64_t d)
{
    return (size_t)(qrows * KEY_BLOCK + qrows * d + 2 * qrows);
}

static flash_tile tile_of(const attn_job *j, int thread)
{
    mha_cpu_exec *e = j->exec;
    float *base = e->scratch.data + (size_t)thread * e->scratch.floats;
    flash_tile t;
    t.s = base;
    t.acc = t.s + j->qrows * KEY_BLOCK;
    t.m = t.acc + j->qrows * j->d;
    t.l = t.m + j->qrows;
    return t;
}

/* Folds one row of new scores into the running max and sum and rescales
 * the row's accumulator (not when the max did not move: alpha is exactly
 * 1); leaves probabilities in the score row. */
static void update_row(const mha_cpu_kernels *k, flash_tile *t, int64_t r,
                       int64_t cnt, int64_t d)
{
    float *s = t->s + r * KEY_BLOCK;
    float m_new = k->max(cnt, s);
    if (m_new < t->m[r])
        m_new = t->m[r];
    if (m_new == -INFINITY) { /* nothing attendable yet */
        if (mha_cpu_has_nan(cnt, s))
            t->l[r] = NAN;
        memset(s, 0, (size_t)cnt * sizeof *s);
        return;
    }
    float alpha = t->m[r] == -INFINITY ? 0.0f : expf(t->m[r] - m_new);
    float sum = k->exp_sum(cnt, m_new, s);
    t->l[r] = t->l[r] * alpha + sum;
    t->m[r] = m_new;
    if (alpha != 1.0f)
        k->scale(d, alpha, t->acc + r * d);
}

/* Raw scores of rows [i0, i0 + rows) against keys [j0, j0 + cnt) into t->s:
 * from the packed K^T (already scaled), or from K in place. */
static void block_scores(const attn_job *j, flash_tile *t, int64_t b,
                         int64_t h, int64_t i0, int64_t rows, int64_t j0,
                         int64_t cnt)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *kk = &n->src[MHA_SRC_K];
    if (j->packed) {
        const float *kp = j->kp + (size_t)(b * j->H + h - j->head0) *
                                      kp_head_floats(j) +
                          (size_t)(j0 * j->d);
        k->gemm_packed(rows, cnt, j->d, at(q, b, h, i0), q->nb[2], kp, j->d,
                       NULL, 0, t->s, KEY_BLOCK);
        return;
    }
    k->gemm_nt(rows, cnt, j->d, at(q, b, h, i0), q->nb[2], at(kk, b, h, j0),
               kk->nb[2], NULL, t->s, KEY_BLOCK);
    for (int64_t r = 0; r < rows; r++)
        k->scale(cnt, n->params.scale, t->s + r * KEY_BLOCK);
}

/* acc += P V for the probabilities of keys [j0, j0 + cnt); the packed V
 * block may hold more keys (its panels have that many rows). */
static void block_values(const attn_job *j, flash_tile *t, int64_t b,
                         int64_t h, int64_t rows, int64_t j0, int64_t cnt)
{
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *v = &j->node->src[MHA_SRC_V];
    if (j->packed) {
        const float *vp = j->vp + (size_t)(b * j->H + h - j->head0) *
                                      vp_head_floats(j) +
                          (size_t)(j0 * j->dpad);
        k->gemm_packed(rows, j->d, cnt, t->s, KEY_BLOCK, vp,
                       min64(KEY_BLOCK, j->S2 - j0), NULL, 1, t->acc, j->d);
        return;
    }
    k->gemm_nn_acc(rows, j->d, cnt, t->s, KEY_BLOCK, at(v, b, h, j0),
                   v->nb[2], t->acc, j->d);
}

static void flash_block(const attn_job *j, flash_tile *t, int64_t b,
                        int64_t h, int64_t i0, int64_t rows, int64_t j0,
                        int64_t cnt)
{
    const mha_cpu_kernels *k = j->exec->k;
    block_scores(j, t, b, h, i0, rows, j0, cnt);
    for (int64_t r = 0; r < rows; r++) {
        mha_cpu_mask_row(k, j->node, b, h, i0 + r, j0, cnt,
                         t->s + r * KEY_BLOCK);
        update_row(k, t, r, cnt, j->d);
    }
    block_values(j, t, b, h, rows, j0, cnt);
}

/* How many keys of the block [j0, j0 + cnt) the tile computes. With
 * causal, keys [end, S) are masked for every row of the tile, so a block
 * inside that range is skipped, not computed, and one that reaches into it
 * is cut short there; a block holding appended keys (from S on, never
 * masked) is computed whole. */
static int64_t block_keys(const attn_job *j, int64_t end, int64_t j0,
                          int64_t cnt)
{
    if (j0 + cnt > j->S)
        return cnt;
    return j0 >= end ? 0 : min64(cnt, end - j0);
}

/* task -> (head, query tile): the tiles of one head follow each other,
 * so its packed K and V are still in cache for the next. With causal the
 * tiles of a head run from the last (the most keys) down, so each thread's
 * last tasks are light ones and the pool ends balanced. */
static void attention_task(void *arg, int64_t task, int thread)
{
    const attn_job *j = arg;
    const mha_node *n = j->node;
    int64_t qt = task % j->qtiles, bh = j->head0 + task / j->qtiles;
    if (n->params.causal)
        qt = j->qtiles - 1 - qt;
    int64_t b = bh / j->H, h = bh % j->H, i0 = qt * j->qrows;
    int64_t rows = min64(j->qrows, j->L - i0), d = j->d;
    flash_tile t = tile_of(j, thread);
    for (int64_t r = 0; r < rows; r++) {
        t.m[r] = -INFINITY;
        t.l[r] = 0.0f;
    }
    memset(t.acc, 0, (size_t)(rows * d) * sizeof *t.acc);
    int64_t end = n->params.causal ? min64(i0 + rows, j->S) : j->S;
    for (int64_t j0 = 0; j0 < j->S2; j0 += KEY_BLOCK) {
        int64_t cnt = block_keys(j, end, j0, min64(KEY_BLOCK, j->S2 - j0));
        if (cnt > 0)
            flash_block(j, &t, b, h, i0, rows, j0, cnt);
    }
    const mha_tdesc *o = &n->dst;
    for (int64_t r = 0; r < rows; r++) {
        float inv = t.l[r] == 0.0f ? 0.0f : 1.0f / t.l[r];
        float *out = at(o, b, h, i0 + r);
        memcpy(out, t.acc + r * d, (size_t)d * sizeof *out);
        j->exec->k->scale(d, inv, out);
    }
}

/* ---- the op ------------------------------------------------------------------- */

static void job_init(attn_job *j, mha_cpu_exec *e, const mha_node *n)
{
    const mha_cpu_kernels *k = e->k;
    memset(j, 0, sizeof *j);
    j->exec = e;
    j->node = n;
    j->H = n->dst.ne[1];
    j->L = n->dst.ne[2];
    j->d = n->dst.ne[3];
    j->S = n->params.mask_cols;
    j->S2 = n->src[MHA_SRC_K].ne[2];
    j->dpad = ceil_div(j->d, k->nr) * k->nr;
    j->qrows = ceil_div(QUERY_ROWS, k->mr) * k->mr;
    j->qtiles = ceil_div(j->L, j->qrows);
    j->kblocks = ceil_div(j->S2, KEY_BLOCK);
    j->packed = j->L >= k->mr && j->S2 > 0;
}

/* Heads per round: as many as the pack budget holds, at least one. */
static int64_t heads_per_round(const attn_job *j, int64_t heads)
{
    if (!j->packed)
        return heads;
    int64_t fit = (int64_t)(j->exec->pack_budget /
                            (kp_head_floats(j) + vp_head_floats(j)));
    return fit < 1 ? 1 : fit < heads ? fit : heads;
}

mha_status mha_cpu_run_attention(mha_cpu_exec *e, const mha_node *n)
{
    attn_job j;
    job_init(&j, e, n);
    int threads = mha_cpu_pool_threads(e->pool);
    mha_status st = mha_cpu_scratch_reserve(e, &e->scratch,
                                            tile_floats(j.qrows, j.d),
                                            threads);
    int64_t heads = n->dst.ne[0] * j.H, round = heads_per_round(&j, heads);
    size_t per_head = j.packed ? kp_head_floats(&j) + vp_head_floats(&j) : 0;
    if (st == MHA_OK && j.packed)
        st = mha_cpu_scratch_reserve(e, &e->packed,
                                     per_head * (size_t)round, 1);
    if (st != MHA_OK)
        return st;
    if (j.packed) {
        j.kp = e->packed.data;
        j.vp = j.kp + kp_head_floats(&j) * (size_t)round;
    }
    for (j.head0 = 0; j.head0 < heads; j.head0 += round) {
        j.nheads = min64(round, heads - j.head0);
        if (j.packed)
            mha_cpu_pool_run(e->pool, j.nheads * j.kblocks, pack_task, &j);
        mha_cpu_pool_run(e->pool, j.nheads * j.qtiles, attention_task, &j);
    }
    return MHA_OK;
}
