/* attention_backward.c: the CPU's fused ATTENTION_BACKWARD
 * (FlashAttention-2's backward, core/backend.h): the probabilities are
 * recomputed tile by tile from Q, K, the masks and the saved LSE, never
 * stored as an L x S' matrix, so the working memory is a few tiles per
 * thread whatever L and S'.
 *
 * Two passes, both free of races and of any reduction across tasks:
 *   keys    task (batch, head, key tile): walks the query tiles, holding
 *           the tile's dK and dV in registers' reach (scratch), and writes
 *           them once;
 *   queries task (batch, head, query tile): walks the key tiles for dQ.
 * The second pass recomputes the scores and dP (two of the five products
 * again, 7 instead of 5) rather than accumulating dQ across key tiles,
 * which would need atomics, or per-thread partial dQ rows (O(threads L d)
 * memory and a reduction whose order, and so whose bits, would depend on
 * the thread count). Every product runs on the table's packed GEMM: a
 * task packs the operands it reuses (its K and V tile, or its Q and dO
 * tile) once. */
#include <math.h>
#include <string.h>

#include "ops.h"

/* Keys and queries per tile: multiples of every table's nr and mr. */
enum { BK = 64, BQ = BK };

typedef struct bwd_job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t H, L, S, S2, d, dpad;
    int64_t qtiles, ktiles;
    float *D;            /* [B*H][L] dO_i . O_i, computed first */
} bwd_job;

/* Per-thread scratch of one task. */
typedef struct bwd_tile {
    float *p;   /* [BQ][BK] probabilities */
    float *ds;  /* [BQ][BK] dP, then dS */
    float *t;   /* [BK][BQ] a transposed P or dS */
    float *acc; /* [BK][d] dK (keys pass) or [BQ][d] dQ (queries pass) */
    float *acc2; /* [BK][d] dV (keys pass) */
    float *kp, *vp; /* the tile's packed K^T and V^T, [BK x dpad] each */
    float *xp;  /* a packed right operand of d columns [BK x dpad] */
} bwd_tile;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* d and dpad rounded up to 16 floats (a cache line), so every part of a
 * scratch slot starts on one. */
static int64_t line(int64_t n) { return (n + 15) / 16 * 16; }

static size_t tile_floats(const bwd_job *j)
{
    return (size_t)(3 * BQ * BK + 2 * BK * line(j->d) +
                    3 * BK * line(j->dpad));
}

/* Carves thread's scratch slot (BQ == BK, so the dQ rows fit acc). */
static bwd_tile tile_of(const bwd_job *j, int thread)
{
    mha_cpu_exec *e = j->exec;
    float *p = e->scratch.data + (size_t)thread * e->scratch.floats;
    bwd_tile t;
    int64_t dd = line(j->d), dp = line(j->dpad);
    t.p = p;
    t.ds = t.p + BQ * BK;
    t.t = t.ds + BQ * BK;
    t.acc = t.t + BQ * BK;
    t.acc2 = t.acc + BK * dd;
    t.kp = t.acc2 + BK * dd;
    t.vp = t.kp + BK * dp;
    t.xp = t.vp + BK * dp;
    return t;
}

static const float *row(const bwd_job *j, int slot, int64_t b, int64_t h,
                        int64_t i)
{
    return mha_cpu_at(&j->node->src[slot], b, h, i);
}

/* Whether causal masks keys [j0, j0 + kn) for every row [i0, i0 + qn):
 * all of them past the last row and none appended (keys from S on are
 * never masked). Such a tile is skipped. */
static int tile_masked(const bwd_job *j, int64_t i0, int64_t qn, int64_t j0,
                       int64_t kn)
{
    return j->node->params.causal && j0 > i0 + qn - 1 && j0 + kn <= j->S;
}

/* Probabilities of rows [i0, i0 + qn) against keys [j0, j0 + kn) into
 * t->p, from the packed scaled K^T in t->kp and the saved LSE; scale dS =
 * scale P (dP - D) into t->ds, from the packed V^T in t->vp (the scale of
 * dQ and dK folded in). */
static void tile_ds(const bwd_job *j, bwd_tile *t, int64_t b, int64_t h,
                    int64_t i0, int64_t qn, int64_t j0, int64_t kn)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *dout = &n->src[MHA_SRC_BWD_DO];
    const mha_tdesc *lse = &n->src[MHA_SRC_BWD_LSE];
    const float *D = j->D + (b * j->H + h) * j->L + i0;
    float scale = n->params.scale;
    k->gemm_packed(qn, kn, j->d, row(j, MHA_SRC_Q, b, h, i0), q->nb[2],
                   t->kp, j->d, NULL, 0, t->p, BK);
    k->gemm_packed(qn, kn, j->d, row(j, MHA_SRC_BWD_DO, b, h, i0),
                   dout->nb[2], t->vp, j->d, NULL, 0, t->ds, BK);
    for (int64_t r = 0; r < qn; r++) {
        int64_t i = i0 + r;
        float *p = t->p + r * BK, *ds = t->ds + r * BK;
        float m = mha_cpu_at(lse, b, h, 0)[i * lse->nb[3]];
        mha_cpu_mask_row(k, n, b, h, i, j0, kn, p);
        mha_cpu_mask_outside(n, j0, kn, 0, n->params.causal ? i + 1 : j->S2,
                             p);
        if (m == -INFINITY)
            memset(p, 0, (size_t)kn * sizeof *p);
        else
            k->exp_sum(kn, m, p);
        for (int64_t c = 0; c < kn; c++)
            ds[c] = scale * p[c] * (ds[c] - D[r]);
    }
}

/* x . y in 8 independent sums, which the compiler vectorises. */
static float dot(const float *x, const float *y, int64_t n)
{
    float part[8] = {0}, sum = 0.0f;
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        for (int u = 0; u < 8; u++)
            part[u] += x[c + u] * y[c + u];
    for (; c < n; c++)
        sum += x[c] * y[c];
    for (int u = 0; u < 8; u++)
        sum += part[u];
    return sum;
}

/* D_i = dO_i . O_i of every query row of head task. */
static void d_task(void *arg, int64_t task, int thread)
{
    const bwd_job *j = arg;
    int64_t b = task / j->H, h = task % j->H;
    (void)thread;
    for (int64_t i = 0; i < j->L; i++)
        j->D[task * j->L + i] = dot(row(j, MHA_SRC_BWD_O, b, h, i),
                                    row(j, MHA_SRC_BWD_DO, b, h, i), j->d);
}

/* Packs keys [j0, j0 + kn) of K (scaled, transposed) and V (transposed)
 * into t->kp and t->vp: the right operands of the scores and of dP. */
static void pack_keys(const bwd_job *j, bwd_tile *t, int64_t b, int64_t h,
                      int64_t j0, int64_t kn)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    k->pack_nt(kn, j->d, row(j, MHA_SRC_K, b, h, j0),
               n->src[MHA_SRC_K].nb[2], n->params.scale, t->kp);
    k->pack_nt(kn, j->d, row(j, MHA_SRC_V, b, h, j0),
               n->src[MHA_SRC_V].nb[2], 1.0f, t->vp);
}

/* t->t = x^T for x [qn][BK stride] of kn columns. */
static void transpose(const float *x, int64_t qn, int64_t kn, float *out)
{
    for (int64_t r = 0; r < qn; r++)
        for (int64_t c = 0; c < kn; c++)
            out[c * BQ + r] = x[r * BK + c];
}

/* acc[kn][d] += x^T rows, x [qn][BK] (P or dS), rows the qn rows of slot
 * from (b, h, i0): packed, then multiplied. */
static void add_transposed(const bwd_job *j, bwd_tile *t, const float *x,
                           int slot, int64_t b, int64_t h, int64_t i0,
                           int64_t qn, int64_t kn, float *acc)
{
    const mha_cpu_kernels *k = j->exec->k;
    transpose(x, qn, kn, t->t);
    k->pack_nn(qn, j->d, row(j, slot, b, h, i0), j->node->src[slot].nb[2],
               t->xp);
    k->gemm_packed(kn, j->d, qn, t->t, BQ, t->xp, qn, NULL, 1, acc, j->d);
}

/* Writes rows [i0, i0 + cnt) of t (b, h) from acc. */
static void store(const bwd_job *j, const mha_tdesc *t, int64_t b, int64_t h,
                  int64_t i0, int64_t cnt, const float *acc)
{
    for (int64_t r = 0; r < cnt; r++)
        memcpy(mha_cpu_at(t, b, h, i0 + r), acc + r * j->d,
               (size_t)j->d * sizeof *acc);
}

/* dK and dV of key tile task % ktiles of head task / ktiles. */
static void keys_task(void *arg, int64_t task, int thread)
{
    const bwd_job *j = arg;
    const mha_node *n = j->node;
    bwd_tile t = tile_of(j, thread);
    int64_t bh = task / j->ktiles, b = bh / j->H, h = bh % j->H;
    int64_t j0 = task % j->ktiles * BK, kn = min64(BK, j->S2 - j0);
    memset(t.acc, 0, (size_t)(kn * j->d) * sizeof *t.acc);
    memset(t.acc2, 0, (size_t)(kn * j->d) * sizeof *t.acc2);
    pack_keys(j, &t, b, h, j0, kn);
    for (int64_t i0 = 0; i0 < j->L; i0 += BQ) {
        int64_t qn = min64(BQ, j->L - i0);
        if (tile_masked(j, i0, qn, j0, kn))
            continue;
        tile_ds(j, &t, b, h, i0, qn, j0, kn);
        add_transposed(j, &t, t.p, MHA_SRC_BWD_DO, b, h, i0, qn, kn, t.acc2);
        add_transposed(j, &t, t.ds, MHA_SRC_Q, b, h, i0, qn, kn, t.acc);
    }
    store(j, &n->extra_dst[MHA_DST_DK], b, h, j0, kn, t.acc);
    store(j, &n->extra_dst[MHA_DST_DV], b, h, j0, kn, t.acc2);
}

/* dQ of query tile task % qtiles of head task / qtiles. */
static void queries_task(void *arg, int64_t task, int thread)
{
    const bwd_job *j = arg;
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    bwd_tile t = tile_of(j, thread);
    int64_t bh = task / j->qtiles, b = bh / j->H, h = bh % j->H;
    int64_t i0 = task % j->qtiles * BQ, qn = min64(BQ, j->L - i0);
    memset(t.acc, 0, (size_t)(qn * j->d) * sizeof *t.acc);
    for (int64_t j0 = 0; j0 < j->S2; j0 += BK) {
        int64_t kn = min64(BK, j->S2 - j0);
        if (tile_masked(j, i0, qn, j0, kn))
            continue;
        pack_keys(j, &t, b, h, j0, kn);
        tile_ds(j, &t, b, h, i0, qn, j0, kn);
        k->pack_nn(kn, j->d, row(j, MHA_SRC_K, b, h, j0),
                   n->src[MHA_SRC_K].nb[2], t.xp);
        k->gemm_packed(qn, j->d, kn, t.ds, BK, t.xp, kn, NULL, 1, t.acc,
                       j->d);
    }
    store(j, &n->dst, b, h, i0, qn, t.acc);
}

mha_status mha_cpu_run_attention_backward(mha_cpu_exec *e, const mha_node *n)
{
    bwd_job j;
    memset(&j, 0, sizeof j);
    j.exec = e;
    j.node = n;
    j.H = n->dst.ne[1];
    j.L = n->dst.ne[2];
    j.d = n->dst.ne[3];
    j.S = n->params.mask_cols;
    j.S2 = n->src[MHA_SRC_K].ne[2];
    j.dpad = ceil_div(j.d, e->k->nr) * e->k->nr;
    j.qtiles = ceil_div(j.L, BQ);
    j.ktiles = ceil_div(j.S2, BK);
    int64_t heads = n->dst.ne[0] * j.H;
    mha_status st = mha_cpu_scratch_reserve(e, &e->scratch, tile_floats(&j),
                                            mha_cpu_pool_threads(e->pool));
    if (st == MHA_OK)
        st = mha_cpu_scratch_reserve(e, &e->packed, (size_t)(heads * j.L), 1);
    if (st != MHA_OK)
        return st;
    j.D = e->packed.data;
    mha_cpu_pool_run(e->pool, heads, d_task, &j);
    mha_cpu_pool_run(e->pool, heads * j.ktiles, keys_task, &j);
    mha_cpu_pool_run(e->pool, heads * j.qtiles, queries_task, &j);
    return MHA_OK;
}

/* f32 rows with unit inner stride, of the shape given. */
static bool rows_of(const mha_tdesc *t, int64_t b, int64_t h, int64_t r,
                    int64_t d)
{
    return t->buf && t->dtype == MHA_F32 && t->nb[3] == 1 && t->ne[0] == b &&
           t->ne[1] == h && t->ne[2] == r && t->ne[3] == d;
}

/* The nn.MHA subset (core/backend.h): f32, unit inner strides. */
bool mha_cpu_attention_backward_supported(const mha_node *n)
{
    const mha_op_params *p = &n->params;
    const mha_tdesc *mask = &n->src[MHA_SRC_MASK], *kpm = &n->src[MHA_SRC_KPM];
    const mha_tdesc *lse = &n->src[MHA_SRC_BWD_LSE];
    int64_t B = n->dst.ne[0], H = n->dst.ne[1], L = n->dst.ne[2];
    int64_t d = n->dst.ne[3], S2 = n->src[MHA_SRC_K].ne[2];
    if (p->causal == MHA_CAUSAL_BOTTOM_RIGHT || p->kv_group > 1 ||
        p->window != 0 || p->softcap != 0.0f)
        return false;
    if (!rows_of(&n->dst, B, H, L, d) ||
        !rows_of(&n->src[MHA_SRC_Q], B, H, L, d) ||
        !rows_of(&n->src[MHA_SRC_BWD_O], B, H, L, d) ||
        !rows_of(&n->src[MHA_SRC_BWD_DO], B, H, L, d))
        return false;
    if (!rows_of(&n->src[MHA_SRC_K], B, H, S2, d) ||
        !rows_of(&n->src[MHA_SRC_V], B, H, S2, d) ||
        !rows_of(&n->extra_dst[MHA_DST_DK], B, H, S2, d) ||
        !rows_of(&n->extra_dst[MHA_DST_DV], B, H, S2, d))
        return false;
    if ((mask->buf && (mask->dtype != MHA_F32 || mask->nb[3] != 1)) ||
        (kpm->buf && (kpm->dtype != MHA_F32 || kpm->nb[3] != 1)))
        return false;
    return lse->buf && lse->dtype == MHA_F32 && lse->ne[0] == B &&
           lse->ne[1] == H && lse->ne[3] == L && p->mask_cols <= S2;
}
