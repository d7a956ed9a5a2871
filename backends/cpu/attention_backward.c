/* attention_backward.c: the CPU's fused ATTENTION_BACKWARD
 * (FlashAttention-2's backward, core/backend.h): the probabilities are
 * recomputed tile by tile from Q, K, the masks and the saved LSE, never
 * stored as an L x S' matrix.
 *
 * A task is one chunk of consecutive 64-key tiles of one head. For each
 * of its key tiles it walks the query tiles (skipping those causal masks
 * whole), holding the tile's dK and dV in scratch until it writes them
 * once, and adds the tile's dQ terms into the chunk's own dQ rows: chunk 0
 * into dst, the others into partial rows that a second, cheap pass adds
 * to dst in chunk order. So the five products of FlashAttention-2 are
 * computed once each, without atomics, and the bits do not depend on the
 * thread count: the chunks are a constant of the shape (enough tasks over
 * all heads, at most MAX_CHUNKS per head), and the partial sums are added
 * in a fixed order. (Per-thread partial dQ would make the order, and the
 * bits, depend on the scheduling; a second pass over query tiles for dQ
 * would recompute the scores and dP, 7 products instead of 5.) Working
 * memory is O(L): a few tiles per thread, D (one float per query), and
 * the partial dQ, at most MAX_CHUNKS - 1 times dQ's size, for as many
 * heads at a time as the exec's pack budget holds. Every product runs on
 * the table's packed GEMM: a task packs its K and V tile once (K^T scaled
 * and V^T for the scores and dP, K as is for dQ) and each query tile's Q
 * and dO as the right operands of dK and dV. */
#include <math.h>
#include <string.h>

#include "ops.h"

/* Keys and queries per tile: a multiple of every table's nr (the packed
 * panels of a key tile are full). */
enum { BK = 64, BQ = BK };

/* Key chunks: tasks wanted over all heads, and at most per head. */
enum { CHUNK_TASKS = 16, MAX_CHUNKS = 4 };

typedef struct bwd_job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t H, L, S, S2, d, dpad;
    int64_t qtiles, ktiles;
    int64_t chunks, chunk_tiles; /* key chunks per head, key tiles in one */
    int64_t head0, nheads; /* heads (b * H + h) of this round */
    float *D;            /* [B*H][L] dO_i . O_i, computed first */
    float *part;         /* the round's partial dQ of chunks 1, 2, ... */
} bwd_job;

/* Per-thread scratch of one task. */
typedef struct bwd_tile {
    float *p;   /* [BQ][BK] probabilities */
    float *ds;  /* [BQ][BK] dP, then dS */
    float *acc; /* [BK][d] dK */
    float *acc2; /* [BK][d] dV */
    float *kp, *vp; /* the tile's packed K^T and V^T, [BK x dpad] each */
    float *xp;  /* a packed right operand of d columns [BK x dpad] */
    float *knp; /* the tile's K packed as is, [BK x dpad]: dQ's operand */
} bwd_tile;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* d and dpad rounded up to 16 floats (a cache line), so every part of a
 * scratch slot starts on one. */
static int64_t line(int64_t n) { return (n + 15) / 16 * 16; }

static size_t tile_floats(const bwd_job *j)
{
    return (size_t)(2 * BQ * BK + 2 * BK * line(j->d) +
                    4 * BK * line(j->dpad));
}

/* Carves thread's scratch slot. */
static bwd_tile tile_of(const bwd_job *j, int thread)
{
    mha_cpu_exec *e = j->exec;
    float *p = e->scratch.data + (size_t)thread * e->scratch.floats;
    bwd_tile t;
    int64_t dd = line(j->d), dp = line(j->dpad);
    t.p = p;
    t.ds = t.p + BQ * BK;
    t.acc = t.ds + BQ * BK;
    t.acc2 = t.acc + BK * dd;
    t.kp = t.acc2 + BK * dd;
    t.vp = t.kp + BK * dp;
    t.xp = t.vp + BK * dp;
    t.knp = t.xp + BK * dp;
    return t;
}

static const float *row(const bwd_job *j, int slot, int64_t b, int64_t h,
                        int64_t i)
{
    return mha_cpu_at(&j->node->src[slot], b, h, i);
}

/* Whether causal or the window masks keys [j0, j0 + kn) for every row
 * [i0, i0 + qn): all of them past the last row, or all before the first
 * row's window, and none appended (keys from S on are never masked). Such
 * a tile is skipped. */
static int tile_masked(const bwd_job *j, int64_t i0, int64_t qn, int64_t j0,
                       int64_t kn)
{
    const mha_op_params *p = &j->node->params;
    return j0 + kn <= j->S &&
           ((p->causal && j0 > i0 + qn - 1) ||
            (p->window > 0 && j0 + kn - 1 <= i0 - p->window));
}

/* ds[c] = scale p[c] (ds[c] - D) for c < n: blocks of 8 with a fixed trip
 * count, which the compiler vectorises at -O2, then the rest. */
static void ds_row(int64_t n, float scale, float D,
                   const float *restrict p, float *restrict ds)
{
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        for (int u = 0; u < 8; u++)
            ds[c + u] = scale * p[c + u] * (ds[c + u] - D);
    for (; c < n; c++)
        ds[c] = scale * p[c] * (ds[c] - D);
}

/* The transforms of query i's scaled scores p over keys [j0, j0 + kn) in
 * ATTENTION's order (core/backend.h): softcap (tanh(s / c) kept in th for
 * dS), ALiBi, mask and kpm, then -inf outside causal and the window. */
static void transform_row(const bwd_job *j, int64_t b, int64_t h, int64_t i,
                          int64_t j0, int64_t kn, float *p, float *th)
{
    const mha_node *n = j->node;
    const mha_tdesc *alibi = &n->src[MHA_SRC_BWD_ALIBI];
    float cap = n->params.softcap;
    if (cap > 0.0f)
        for (int64_t c = 0; c < kn; c++) {
            th[c] = tanhf(p[c] / cap);
            p[c] = cap * th[c];
        }
    if (alibi->buf) {
        float slope = mha_cpu_at(alibi, 0, 0, 0)[h * alibi->nb[3]];
        for (int64_t c = 0; c < kn; c++)
            p[c] += slope * (float)(j0 + c - i);
    }
    mha_cpu_mask_row(j->exec->k, n, b, h, i, j0, kn, p);
    int64_t lo = n->params.window > 0 ? i - n->params.window + 1 : 0;
    mha_cpu_mask_outside(n, j0, kn, lo, n->params.causal ? i + 1 : j->S2, p);
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
        float th[BK]; /* the row's tanh(s / softcap), for its dS */
        float m = mha_cpu_at(lse, b, h, 0)[i * lse->nb[3]];
        transform_row(j, b, h, i, j0, kn, p, th);
        if (m == -INFINITY)
            memset(p, 0, (size_t)kn * sizeof *p);
        else
            k->exp_sum(kn, m, p);
        ds_row(kn, scale, D[r], p, ds);
        if (n->params.softcap > 0.0f)
            for (int64_t c = 0; c < kn; c++)
                ds[c] *= 1.0f - th[c] * th[c];
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

/* acc[kn][d] += x^T rows, x [qn][BK] (P or dS) read transposed in place,
 * rows the qn rows of slot from (b, h, i0), packed. */
static void add_transposed(const bwd_job *j, bwd_tile *t, const float *x,
                           int slot, int64_t b, int64_t h, int64_t i0,
                           int64_t qn, int64_t kn, float *acc)
{
    const mha_cpu_kernels *k = j->exec->k;
    k->pack_nn(qn, j->d, row(j, slot, b, h, i0), j->node->src[slot].nb[2],
               t->xp);
    k->gemm_packed_tn(kn, j->d, qn, x, BK, t->xp, qn, NULL, 1, acc, j->d);
}

/* Writes rows [i0, i0 + cnt) of t (b, h) from acc. */
static void store(const bwd_job *j, const mha_tdesc *t, int64_t b, int64_t h,
                  int64_t i0, int64_t cnt, const float *acc)
{
    for (int64_t r = 0; r < cnt; r++)
        memcpy(mha_cpu_at(t, b, h, i0 + r), acc + r * j->d,
               (size_t)j->d * sizeof *acc);
}

/* Where chunk c of local head lh keeps its dQ: chunk 0 in dst itself, the
 * others in their partial rows ([L][d]); *ld is the row stride. */
static float *dq_rows(const bwd_job *j, int64_t lh, int64_t c, int64_t b,
                      int64_t h, int64_t *ld)
{
    if (c == 0) {
        *ld = j->node->dst.nb[2];
        return mha_cpu_at(&j->node->dst, b, h, 0);
    }
    *ld = j->d;
    return j->part + (size_t)((lh * (j->chunks - 1) + c - 1) * j->L * j->d);
}

/* Key tile j0 of head (b, h): dK and dV whole, and its dQ terms added
 * into dq (row stride lddq). */
static void key_tile(const bwd_job *j, bwd_tile *t, int64_t b, int64_t h,
                     int64_t j0, float *dq, int64_t lddq)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    int64_t kn = min64(BK, j->S2 - j0);
    memset(t->acc, 0, (size_t)(kn * j->d) * sizeof *t->acc);
    memset(t->acc2, 0, (size_t)(kn * j->d) * sizeof *t->acc2);
    pack_keys(j, t, b, h, j0, kn);
    k->pack_nn(kn, j->d, row(j, MHA_SRC_K, b, h, j0),
               n->src[MHA_SRC_K].nb[2], t->knp);
    for (int64_t i0 = 0; i0 < j->L; i0 += BQ) {
        int64_t qn = min64(BQ, j->L - i0);
        if (tile_masked(j, i0, qn, j0, kn))
            continue;
        tile_ds(j, t, b, h, i0, qn, j0, kn);
        add_transposed(j, t, t->p, MHA_SRC_BWD_DO, b, h, i0, qn, kn, t->acc2);
        add_transposed(j, t, t->ds, MHA_SRC_Q, b, h, i0, qn, kn, t->acc);
        k->gemm_packed(qn, j->d, kn, t->ds, BK, t->knp, kn, NULL, 1,
                       dq + i0 * lddq, lddq);
    }
    store(j, &n->extra_dst[MHA_DST_DK], b, h, j0, kn, t->acc);
    store(j, &n->extra_dst[MHA_DST_DV], b, h, j0, kn, t->acc2);
}

/* Chunk task / nheads of local head task % nheads (chunk-major, so the
 * chunks of the first keys, the heaviest under causal, start first): its
 * key tiles in order, dQ into the chunk's rows, zeroed first. */
static void chunk_task(void *arg, int64_t task, int thread)
{
    const bwd_job *j = arg;
    bwd_tile t = tile_of(j, thread);
    int64_t c = task / j->nheads, lh = task % j->nheads;
    int64_t bh = j->head0 + lh, b = bh / j->H, h = bh % j->H, ld;
    float *dq = dq_rows(j, lh, c, b, h, &ld);
    for (int64_t i = 0; i < j->L; i++)
        memset(dq + i * ld, 0, (size_t)j->d * sizeof *dq);
    int64_t kt1 = min64((c + 1) * j->chunk_tiles, j->ktiles);
    for (int64_t kt = c * j->chunk_tiles; kt < kt1; kt++)
        key_tile(j, &t, b, h, kt * BK, dq, ld);
}

/* Adds the partial dQ of chunks 1, 2, ... in order to dst (chunk 0's) for
 * query tile task % qtiles of local head task / qtiles. */
static void reduce_task(void *arg, int64_t task, int thread)
{
    const bwd_job *j = arg;
    int64_t lh = task / j->qtiles, bh = j->head0 + lh;
    int64_t b = bh / j->H, h = bh % j->H, ld;
    int64_t i0 = task % j->qtiles * BQ, qn = min64(BQ, j->L - i0);
    float *dq = dq_rows(j, lh, 0, b, h, &ld);
    (void)thread;
    for (int64_t c = 1; c < j->chunks; c++) {
        int64_t ldp;
        const float *part = dq_rows(j, lh, c, b, h, &ldp);
        for (int64_t i = i0; i < i0 + qn; i++)
            j->exec->k->axpy(j->d, 1.0f, part + i * ldp, dq + i * ld);
    }
}

/* Key chunks per head: enough (chunk, head) tasks for a machine's threads
 * (CHUNK_TASKS over all heads), at most MAX_CHUNKS (each past the first
 * holds L x d floats of partial dQ) and one per key tile. A constant of
 * the shape, never of the thread count, so the bits are the same for
 * every thread count. */
static void chunks_of(bwd_job *j, int64_t heads)
{
    int64_t want = ceil_div(CHUNK_TASKS, heads > 0 ? heads : 1);
    int64_t most = min64(MAX_CHUNKS, j->ktiles);
    j->chunks = want < most ? want : most;
    if (j->chunks < 1)
        j->chunks = 1;
    j->chunk_tiles = ceil_div(j->ktiles, j->chunks);
    if (j->chunk_tiles < 1)
        j->chunk_tiles = 1;
    j->chunks = ceil_div(j->ktiles, j->chunk_tiles);
    if (j->chunks < 1)
        j->chunks = 1;
}

/* Heads per round: as many as the pack budget holds partial dQ for. */
static int64_t heads_per_round(const bwd_job *j, int64_t heads)
{
    size_t per_head = (size_t)((j->chunks - 1) * j->L * j->d);
    if (per_head == 0)
        return heads;
    int64_t fit = (int64_t)(j->exec->pack_budget / per_head);
    return fit < 1 ? 1 : fit < heads ? fit : heads;
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
    chunks_of(&j, heads);
    int64_t round = heads_per_round(&j, heads);
    size_t dfloats = (size_t)line(heads * j.L);
    mha_status st = mha_cpu_scratch_reserve(e, &e->scratch, tile_floats(&j),
                                            mha_cpu_pool_threads(e->pool));
    if (st == MHA_OK)
        st = mha_cpu_scratch_reserve(
            e, &e->packed,
            dfloats + (size_t)(round * (j.chunks - 1) * j.L * j.d), 1);
    if (st != MHA_OK)
        return st;
    j.D = e->packed.data;
    j.part = j.D + dfloats;
    mha_cpu_pool_run(e->pool, heads, d_task, &j);
    for (j.head0 = 0; j.head0 < heads; j.head0 += round) {
        j.nheads = min64(round, heads - j.head0);
        mha_cpu_pool_run(e->pool, j.chunks * j.nheads, chunk_task, &j);
        if (j.chunks > 1)
            mha_cpu_pool_run(e->pool, j.nheads * j.qtiles, reduce_task, &j);
    }
    return MHA_OK;
}

/* f32 rows with unit inner stride, of the shape given. */
static bool rows_of(const mha_tdesc *t, int64_t b, int64_t h, int64_t r,
                    int64_t d)
{
    return t->buf && t->dtype == MHA_F32 && t->nb[3] == 1 && t->ne[0] == b &&
           t->ne[1] == h && t->ne[2] == r && t->ne[3] == d;
}

/* The nn.MHA subset with window, softcap and ALiBi (core/backend.h): f32,
 * unit inner strides. */
bool mha_cpu_attention_backward_supported(const mha_node *n)
{
    const mha_op_params *p = &n->params;
    const mha_tdesc *mask = &n->src[MHA_SRC_MASK], *kpm = &n->src[MHA_SRC_KPM];
    const mha_tdesc *lse = &n->src[MHA_SRC_BWD_LSE];
    int64_t B = n->dst.ne[0], H = n->dst.ne[1], L = n->dst.ne[2];
    int64_t d = n->dst.ne[3], S2 = n->src[MHA_SRC_K].ne[2];
    const mha_tdesc *alibi = &n->src[MHA_SRC_BWD_ALIBI];
    if (p->causal == MHA_CAUSAL_BOTTOM_RIGHT || p->kv_group > 1 ||
        p->window < 0 || p->softcap < 0.0f ||
        (alibi->buf && alibi->dtype != MHA_F32))
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
