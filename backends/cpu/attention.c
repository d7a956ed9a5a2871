/* attention.c: the CPU backend's fused attention (ATTENTION op): scores,
 * softmax and weighted sum without the L x S' matrix, with every extension
 * of the attention core (core/backend.h). A task is one query tile of one
 * query head of one batch item; it walks the keys in KEY_BLOCK steps with
 * an online softmax (running row max and sum, the accumulator rescaled when
 * the max grows). Key blocks that no row of the tile may attend (past the
 * sequence's length, past causal, before the window) are skipped, a block
 * the causal diagonal cuts through in a packed tile runs per GEMM row
 * tile, each cut at the last key its rows attend (flash_diagonal), and the
 * keys past a sequence's KV_LEN are never read. Its memory is one score
 * tile, one accumulator tile and one f16 conversion area per thread.
 *
 * K and V are first packed, per kv head, into the GEMM kernels' panel
 * layout (kernels.h), K transposed and pre-multiplied by the scale: every
 * query tile of every query head sharing that kv head (GQA) then runs both
 * products on packed operands. The packed copies are made for a group of
 * kv heads at a time, bounded by the exec's pack_budget
 * (MHA_CPU_PACK_BUDGET_FLOATS), so memory stays O(S) whatever the head
 * count. With fewer queries than a register tile (decode) packing does not
 * pay: the products run on K and V in place through the table's decode
 * kernels (kv_scores, kv_values: each K and V row read once, fp16 widened
 * in registers), the queries of all the heads
 * that share a kv head form one tile (so K and V are read once per kv
 * head, not once per query head; when every query head of a batch item
 * fits one tile and there are enough tasks for the threads anyway, one
 * tile holds all of them, so each token's K and V rows of all kv heads,
 * adjacent in a token-major cache, are read together), and the keys of
 * each tile are
 * split into chunks of SPLIT_BLOCKS blocks run as separate tasks whose
 * partial (max, sum, accumulator) are then combined in chunk order
 * (flash-decoding), so one query still uses every core and the result is
 * the same for every thread count. fp16 Q, K, V and output are converted
 * on load and store; arithmetic is fp32. A training forward also saves
 * each row's log-sum-exp, on every path (tile_finish). */
#include <math.h>
#include <string.h>

#include "half.h"
#include "ops.h"

enum {
    KEY_BLOCK = 128,  /* keys per step: a multiple of every table's nr */
    QUERY_ROWS = 32,  /* queries per task, rounded up to the tile rows */
    SPLIT_BLOCKS = 4  /* key blocks per flash-decoding chunk */
};

typedef struct attn_job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t H, Hkv, group, L, S, S2, d;
    int64_t dpad;        /* d rounded up to the table's nr */
    int64_t qrows;       /* queries per task */
    int64_t qtiles;      /* query tiles per head */
    int64_t kblocks;     /* key blocks per head */
    int64_t chunks;      /* flash-decoding chunks per tile (1: no split) */
    int grouped;         /* a tile holds every query of a kv head's group */
    int64_t kv_tile;     /* kv heads per grouped tile: 1, or all Hkv */
    int64_t units;       /* tiles per kv head */
    int64_t unit_rows;   /* rows of a tile (at most qrows) */
    int64_t head0, nheads; /* kv heads (b * Hkv + hk) of this round; with
                              kv_tile > 1, tiles of kv_tile kv heads */
    int packed;          /* K and V packed, or read in place */
    float *kp, *vp;      /* packed K^T and V of the round's kv heads */
    float *part;         /* chunks > 1: (m, l, acc) per head and chunk */
} attn_job;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static size_t kp_head_floats(const attn_job *j)
{
    return (size_t)(j->kblocks * KEY_BLOCK * j->d);
}

static size_t vp_head_floats(const attn_job *j)
{
    return (size_t)(j->kblocks * KEY_BLOCK * j->dpad);
}

/* ---- tensors ------------------------------------------------------------------- */

/* Element (b, h, i, 0) of t, f32 or f16. */
static char *row_ptr(const mha_tdesc *t, int64_t b, int64_t h, int64_t i)
{
    size_t es = t->dtype == MHA_F16 ? 2 : 4;
    return (char *)t->buf + t->offset +
           (size_t)(b * t->nb[0] + h * t->nb[1] + i * t->nb[2]) * es;
}

/* n rows from (b, h, i0) of t (d floats each) as f32 rows of stride *ld:
 * in place for f32, converted into tmp (stride d) by the table's f16_to_f32
 * for f16. */
static const float *rows_f32(const attn_job *j, const mha_tdesc *t, int64_t b,
                             int64_t h, int64_t i0, int64_t n, float *tmp,
                             int64_t *ld)
{
    if (t->dtype != MHA_F16) {
        *ld = t->nb[2];
        return (const float *)row_ptr(t, b, h, i0);
    }
    const uint16_t *src = (const uint16_t *)row_ptr(t, b, h, i0);
    for (int64_t r = 0; r < n; r++)
        j->exec->k->f16_to_f32(j->d, src + r * t->nb[2], tmp + r * j->d);
    *ld = j->d;
    return tmp;
}

/* Keys of batch item b that exist: KV_LEN[b] clamped to [0, S] (core
 * validated it; the clamp keeps a bad value from reading out of bounds),
 * else S. */
static int64_t key_len(const attn_job *j, int64_t b)
{
    const mha_tdesc *l = &j->node->src[MHA_SRC_KV_LEN];
    if (!l->buf)
        return j->S;
    int32_t v = *(const int32_t *)((const char *)l->buf + l->offset +
                                   (size_t)(b * l->nb[3]) * 4);
    return v < 0 ? 0 : v > j->S ? j->S : v;
}

/* Keys of batch item b that may be read: with KV_LEN its length, else all
 * S' (the appended rows included). */
static int64_t readable_keys(const attn_job *j, int64_t b)
{
    return j->node->src[MHA_SRC_KV_LEN].buf ? key_len(j, b) : j->S2;
}

/* Keys [j0, j0 + return) of block j0 that exist for batch item b. */
static int64_t block_len(const attn_job *j, int64_t b, int64_t j0)
{
    return max64(0, min64(KEY_BLOCK, readable_keys(j, b) - j0));
}

/* The position offset of batch item b: query i sits at i + offset. */
static int64_t pos_offset(const attn_job *j, int64_t b)
{
    return j->node->params.causal == MHA_CAUSAL_BOTTOM_RIGHT
               ? key_len(j, b) - j->L
               : 0;
}

/* ---- packing ------------------------------------------------------------------ */

/* Per-thread scratch: the online softmax state of one query tile and the
 * f16 conversion area. */
typedef struct flash_tile {
    float *s;   /* [qrows][KEY_BLOCK] scores, then probabilities */
    float *acc; /* [qrows][d] unnormalised output */
    float *m;   /* running max per row */
    float *l;   /* running sum per row */
    float *qc;  /* [qrows][d] f16 queries converted */
    float *kv;  /* [KEY_BLOCK][d] f16 keys or values converted */
    const float *q; /* the tile's queries as f32 rows of stride ldq */
    int64_t ldq;
} flash_tile;

static size_t tile_floats(int64_t qrows, int64_t d)
{
    return (size_t)(qrows * KEY_BLOCK + 2 * qrows * d + 2 * qrows +
                    KEY_BLOCK * d);
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
    t.qc = t.l + j->qrows;
    t.kv = t.qc + j->qrows * j->d;
    t.q = NULL;
    t.ldq = 0;
    return t;
}

/* Key block kb of kv head j->head0 + task / kblocks: K^T scaled into kp,
 * V into vp, each block at a fixed offset so the attention tasks find it.
 * Keys past the sequence's length are not packed (never read). */
static void pack_task(void *arg, int64_t task, int thread)
{
    const attn_job *j = arg;
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *kk = &n->src[MHA_SRC_K], *v = &n->src[MHA_SRC_V];
    int64_t local = task / j->kblocks, kb = task % j->kblocks;
    int64_t bh = j->head0 + local, b = bh / j->Hkv, h = bh % j->Hkv;
    int64_t j0 = kb * KEY_BLOCK, cnt = block_len(j, b, j0), ld;
    float *tmp = tile_of(j, thread).kv;
    if (cnt == 0)
        return;
    const float *src = rows_f32(j, kk, b, h, j0, cnt, tmp, &ld);
    k->pack_nt(cnt, j->d, src, ld, n->params.scale,
               j->kp + (size_t)local * kp_head_floats(j) +
                   (size_t)(j0 * j->d));
    src = rows_f32(j, v, b, h, j0, cnt, tmp, &ld);
    k->pack_nn(cnt, j->d, src, ld,
               j->vp + (size_t)local * vp_head_floats(j) +
                   (size_t)(j0 * j->dpad));
}

/* ---- one query tile ------------------------------------------------------------ */

/* Where a task works: batch item b, kv head hk, and rows of queries
 * [i0, i0 + qn) of query heads h0, h0 + 1, ...: row r is query
 * i0 + r % qn of head h0 + r / qn. */
typedef struct tile_at {
    int64_t b, hk, h0, i0, qn, rows;
    int64_t nkv; /* kv heads hk, hk + 1, ... of the rows, in order */
} tile_at;

static int64_t row_head(const tile_at *w, int64_t r) { return w->h0 + r / w->qn; }

static int64_t row_query(const tile_at *w, int64_t r) { return w->i0 + r % w->qn; }

/* Folds one row of new scores into the running max and sum and rescales
 * the row's accumulator; leaves probabilities in the score row. Not
 * rescaled: when the max did not move (alpha is exactly 1), nor at the
 * row's first attendable block, whose accumulator holds only 0 times
 * values (0, or NaN from a non-finite value: scaling it by alpha 0 would
 * leave either as it is). */
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
    int first = t->m[r] == -INFINITY;
    float alpha = first ? 0.0f : expf(t->m[r] - m_new);
    float sum = k->exp_sum(cnt, m_new, s);
    t->l[r] = t->l[r] * alpha + sum;
    t->m[r] = m_new;
    if (!first && alpha != 1.0f)
        k->scale(d, alpha, t->acc + r * d, t->acc + r * d);
}

/* Merges a partial row (max mc, sum lc, accumulator accc or none) into row
 * r of t, in the frame of the larger max: a flash-decoding chunk, or the
 * sink (lc 1, no value). A NaN sum stays NaN. */
static void merge_row(const mha_cpu_kernels *k, flash_tile *t, int64_t r,
                      float mc, float lc, const float *accc, int64_t d)
{
    float m = t->m[r], mn = mc > m ? mc : m;
    if (mn == -INFINITY) {
        t->l[r] += lc; /* 0, or NaN from a chunk that saw one */
        return;
    }
    float a = m == -INFINITY ? 0.0f : expf(m - mn);
    float c = mc == -INFINITY ? 0.0f : expf(mc - mn);
    t->l[r] = t->l[r] * a + lc * c;
    t->m[r] = mn;
    if (a != 1.0f)
        k->scale(d, a, t->acc + r * d, t->acc + r * d);
    if (accc)
        k->axpy(d, c, accc, t->acc + r * d);
}

/* Raw scores of tile rows [r0, r1) against the packed K^T (already
 * scaled) of keys [j0, j0 + cnt) into their rows of t->s. */
static void packed_scores(const attn_job *j, flash_tile *t, const tile_at *w,
                          int64_t r0, int64_t r1, int64_t j0, int64_t cnt)
{
    const float *kp = j->kp + (size_t)(w->b * j->Hkv + w->hk - j->head0) *
                                  kp_head_floats(j) +
                      (size_t)(j0 * j->d);
    j->exec->k->gemm_packed(r1 - r0, cnt, j->d, t->q + r0 * t->ldq, t->ldq,
                            kp, j->d, NULL, 0, t->s + r0 * KEY_BLOCK,
                            KEY_BLOCK);
}

/* acc += P V for tile rows [r0, r1) and the probabilities of keys [j0, j0
 * + cnt); the packed V block may hold more keys (its panels have that many
 * rows). */
static void packed_values(const attn_job *j, flash_tile *t, const tile_at *w,
                          int64_t r0, int64_t r1, int64_t j0, int64_t cnt)
{
    const float *vp = j->vp + (size_t)(w->b * j->Hkv + w->hk - j->head0) *
                                  vp_head_floats(j) +
                      (size_t)(j0 * j->dpad);
    j->exec->k->gemm_packed(r1 - r0, j->d, cnt, t->s + r0 * KEY_BLOCK,
                            KEY_BLOCK, vp, block_len(j, w->b, j0), NULL, 1,
                            t->acc + r0 * j->d, j->d);
}

/* Raw scores of the tile's rows against keys [j0, j0 + cnt) into t->s:
 * from the packed K^T, or from K in place (f32 or f16, the table's decode
 * kernel). */
static void block_scores(const attn_job *j, flash_tile *t, const tile_at *w,
                         int64_t j0, int64_t cnt)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    if (j->packed) {
        packed_scores(j, t, w, 0, w->rows, j0, cnt);
        return;
    }
    const mha_tdesc *kt = &n->src[MHA_SRC_K];
    k->kv_scores(w->nkv, w->rows / w->nkv, cnt, j->d, t->q, t->ldq,
                 row_ptr(kt, w->b, w->hk, j0), kt->nb[2], kt->nb[1],
                 kt->dtype == MHA_F16, n->params.scale, t->s, KEY_BLOCK);
}

/* acc += P V for the probabilities of keys [j0, j0 + cnt), packed, or in
 * place, V read as it is stored, f32 or f16. */
static void block_values(const attn_job *j, flash_tile *t, const tile_at *w,
                         int64_t j0, int64_t cnt)
{
    const mha_cpu_kernels *k = j->exec->k;
    if (j->packed) {
        packed_values(j, t, w, 0, w->rows, j0, cnt);
        return;
    }
    const mha_tdesc *vt = &j->node->src[MHA_SRC_V];
    k->kv_values(w->nkv, w->rows / w->nkv, cnt, j->d, t->s, KEY_BLOCK,
                 row_ptr(vt, w->b, w->hk, j0), vt->nb[2], vt->nb[1],
                 vt->dtype == MHA_F16, t->acc, j->d);
}

/* The score transforms of tile row r (position p) over keys [j0, j0 +
 * cnt), in core/backend.h's order: softcap, ALiBi, mask and kpm, then -inf
 * outside the keys the row may attend. */
static void transform_row(const attn_job *j, const tile_at *w, int64_t r,
                          int64_t p, int64_t j0, int64_t cnt, float *row)
{
    int64_t h = row_head(w, r);
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *alibi = &n->src[MHA_SRC_ALIBI];
    float cap = n->params.softcap;
    if (cap > 0.0f)
        for (int64_t c = 0; c < cnt; c++)
            row[c] = cap * tanhf(row[c] / cap);
    if (alibi->buf) {
        float slope = *((const float *)row_ptr(alibi, 0, 0, 0) +
                        h * alibi->nb[3]);
        for (int64_t c = 0; c < cnt; c++)
            row[c] += slope * (float)(j0 + c - p);
    }
    mha_cpu_mask_row(k, n, w->b, h, row_query(w, r), j0, cnt, row);
    int64_t lo = 0, hi = key_len(j, w->b);
    if (n->params.causal)
        hi = min64(hi, p + 1);
    if (n->params.window > 0)
        lo = p - n->params.window + 1;
    mha_cpu_mask_outside(n, j0, cnt, lo, hi, row);
}

/* Transforms and folds the new scores of keys [j0, j0 + cnt) of tile rows
 * [r0, r1) into their softmax state. */
static void softmax_rows(const attn_job *j, flash_tile *t, const tile_at *w,
                         int64_t r0, int64_t r1, int64_t j0, int64_t cnt)
{
    int64_t off = pos_offset(j, w->b);
    for (int64_t r = r0; r < r1; r++) {
        float *row = t->s + r * KEY_BLOCK;
        transform_row(j, w, r, row_query(w, r) + off, j0, cnt, row);
        update_row(j->exec->k, t, r, cnt, j->d);
    }
}

/* Keys of block j0 (cnt for the whole tile: block_keys) that tile rows
 * [r0, r1) of a packed causal tile compute: up to the last one their last
 * row attends (or none). An appended block (from S on) is computed whole. */
static int64_t rows_keys(const attn_job *j, const tile_at *w, int64_t r1,
                         int64_t j0, int64_t cnt)
{
    if (!j->node->params.causal || j0 + cnt > j->S)
        return cnt;
    int64_t hi = row_query(w, r1 - 1) + pos_offset(j, w->b) + 1;
    return max64(0, min64(cnt, hi - j0));
}

/* A block that the causal diagonal cuts through a packed tile: each row
 * tile of the GEMM (mr rows) computes only keys up to rows_keys, so both
 * products skip most of the masked triangle (the narrow score edges take
 * the half-wide micro-tile). At llama3-8b-prefill (T 512, d 128, 32-row
 * tiles, 8 x 32 AVX-512 tiles) the FMAs computed over those needed fall
 * from 1.06 to 1.02; measured there (Zen 4, 2 threads, 12 runs
 * alternating with the whole-block path): 154.4 -> 155.7 GFLOP/s median,
 * the MHA causal variant (Hkv 32) +2%. The keys skipped would have had
 * probability 0. */
static void flash_diagonal(const attn_job *j, flash_tile *t,
                           const tile_at *w, int64_t j0, int64_t cnt)
{
    int64_t mr = j->exec->k->mr;
    for (int64_t r0 = 0; r0 < w->rows; r0 += mr) {
        int64_t r1 = min64(r0 + mr, w->rows);
        int64_t n = rows_keys(j, w, r1, j0, cnt);
        if (n == 0)
            continue;
        packed_scores(j, t, w, r0, r1, j0, n);
        softmax_rows(j, t, w, r0, r1, j0, n);
        packed_values(j, t, w, r0, r1, j0, n);
    }
}

static void flash_block(const attn_job *j, flash_tile *t, const tile_at *w,
                        int64_t j0, int64_t cnt)
{
    if (j->packed &&
        rows_keys(j, w, min64(j->exec->k->mr, w->rows), j0, cnt) < cnt) {
        flash_diagonal(j, t, w, j0, cnt);
        return;
    }
    block_scores(j, t, w, j0, cnt);
    softmax_rows(j, t, w, 0, w->rows, j0, cnt);
    block_values(j, t, w, j0, cnt);
}

/* How many keys of block j0 the tile computes: 0 when no row of it may
 * attend any of them (past its length, past causal for its last row,
 * before the window of its first row), else the block cut at the last key
 * any row may attend. A block holding appended keys (from S on, never
 * masked) is computed whole. */
static int64_t block_keys(const attn_job *j, const tile_at *w, int64_t j0)
{
    const mha_op_params *p = &j->node->params;
    int64_t cnt = block_len(j, w->b, j0), off = pos_offset(j, w->b);
    if (cnt == 0 || j0 + cnt > j->S)
        return cnt;
    int64_t hi = key_len(j, w->b), lo = 0;
    if (p->causal)
        hi = min64(hi, w->i0 + w->qn + off);
    if (p->window > 0)
        lo = w->i0 + off - p->window + 1;
    return j0 >= hi || j0 + cnt <= lo ? 0 : min64(cnt, hi - j0);
}

/* Starts the tile's state and points t->q at its queries: in place, or
 * gathered from the heads of a group (and f16 converted) into t->qc. */
static void tile_start(const attn_job *j, flash_tile *t, const tile_at *w)
{
    const mha_tdesc *q = &j->node->src[MHA_SRC_Q];
    for (int64_t r = 0; r < w->rows; r++) {
        t->m[r] = -INFINITY;
        t->l[r] = 0.0f;
    }
    memset(t->acc, 0, (size_t)(w->rows * j->d) * sizeof *t->acc);
    if (w->rows == w->qn) {
        t->q = rows_f32(j, q, w->b, w->h0, w->i0, w->rows, t->qc, &t->ldq);
        return;
    }
    for (int64_t r = 0; r < w->rows; r++) {
        int64_t ld;
        const float *src = rows_f32(j, q, w->b, row_head(w, r),
                                    row_query(w, r), 1, t->qc + r * j->d,
                                    &ld);
        if (src != t->qc + r * j->d)
            memcpy(t->qc + r * j->d, src, (size_t)j->d * sizeof *src);
    }
    t->q = t->qc;
    t->ldq = j->d;
}

/* Runs key blocks [kb0, kb1) of the tile. */
static void tile_walk(const attn_job *j, flash_tile *t, const tile_at *w,
                      int64_t kb0, int64_t kb1)
{
    for (int64_t kb = kb0; kb < kb1; kb++) {
        int64_t cnt = block_keys(j, w, kb * KEY_BLOCK);
        if (cnt > 0)
            flash_block(j, t, w, kb * KEY_BLOCK, cnt);
    }
}

/* A training forward's saved LSE of tile row r (core/backend.h): m + ln l
 * with the sink in l; -inf for a row with nothing attendable (empty: its
 * max was still -inf before the sink's merge). */
static void store_lse(const attn_job *j, const flash_tile *t,
                      const tile_at *w, int64_t r, int empty)
{
    const mha_tdesc *lse = &j->node->extra_dst[MHA_DST_LSE];
    float *out = (float *)row_ptr(lse, w->b, row_head(w, r), 0) +
                 row_query(w, r) * lse->nb[3];
    if (empty) /* l is 0, or NaN when a NaN was seen */
        *out = t->l[r] == t->l[r] ? -INFINITY : NAN;
    else
        *out = t->m[r] + logf(t->l[r]);
}

/* Adds the sink to each row's denominator, saves the LSE when asked,
 * normalises and stores. */
static void tile_finish(const attn_job *j, flash_tile *t, const tile_at *w)
{
    const mha_node *n = j->node;
    const mha_cpu_kernels *k = j->exec->k;
    const mha_tdesc *sinks = &n->src[MHA_SRC_SINKS], *o = &n->dst;
    int64_t d = j->d;
    for (int64_t r = 0; r < w->rows; r++) {
        int64_t h = row_head(w, r);
        int empty = t->m[r] == -INFINITY;
        if (sinks->buf)
            merge_row(k, t, r,
                      *((const float *)row_ptr(sinks, 0, 0, 0) +
                        h * sinks->nb[3]),
                      1.0f, NULL, d);
        if (n->extra_dst[MHA_DST_LSE].buf)
            store_lse(j, t, w, r, empty);
        float inv = t->l[r] == 0.0f ? 0.0f : 1.0f / t->l[r];
        float *acc = t->acc + r * d;
        char *out = row_ptr(o, w->b, h, row_query(w, r));
        if (o->dtype == MHA_F16) {
            k->scale(d, inv, acc, acc);
            for (int64_t c = 0; c < d; c++)
                ((uint16_t *)out)[c] = mha_f32_to_f16(acc[c]);
        } else {
            k->scale(d, inv, acc, (float *)out); /* normalised as stored */
        }
    }
}

/* task / chunks -> tile of the round: a kv head's group whole (grouped),
 * or (query head, query tile), where the query heads of one kv head and
 * the tiles of one query head follow each other, so the packed K and V are
 * still in cache for the next. With causal the tiles of a head run from
 * the last (the most keys) down, so each thread's last tasks are light
 * ones and the pool ends balanced. */
static tile_at tile_of_task(const attn_job *j, int64_t task)
{
    int64_t unit = task / j->chunks, qt = unit % j->qtiles;
    int64_t hq = unit / j->qtiles;
    int64_t bhk = (j->head0 + unit / j->units) * j->kv_tile;
    tile_at w;
    w.b = bhk / j->Hkv;
    w.hk = bhk % j->Hkv;
    w.nkv = j->kv_tile;
    if (j->grouped) {
        w.h0 = w.hk * j->group;
        w.i0 = 0;
        w.qn = j->L;
        w.rows = j->unit_rows;
        return w;
    }
    if (j->node->params.causal)
        qt = j->qtiles - 1 - qt;
    w.h0 = w.hk * j->group + hq % j->group;
    w.i0 = qt * j->qrows;
    w.qn = w.rows = min64(j->qrows, j->L - w.i0);
    return w;
}

static void attention_task(void *arg, int64_t task, int thread)
{
    const attn_job *j = arg;
    flash_tile t = tile_of(j, thread);
    tile_at w = tile_of_task(j, task);
    tile_start(j, &t, &w);
    tile_walk(j, &t, &w, 0, j->kblocks);
    tile_finish(j, &t, &w);
}

/* ---- flash-decoding ------------------------------------------------------------ */

static size_t part_floats(const attn_job *j)
{
    return (size_t)(j->unit_rows * (j->d + 2));
}

static float *part_of(const attn_job *j, int64_t task)
{
    return j->part + (size_t)task * part_floats(j);
}

/* One chunk of keys of one head: its partial (m, l, acc) rows. */
static void split_task(void *arg, int64_t task, int thread)
{
    const attn_job *j = arg;
    flash_tile t = tile_of(j, thread);
    tile_at w = tile_of_task(j, task);
    int64_t kb0 = task % j->chunks * SPLIT_BLOCKS;
    float *part = part_of(j, task);
    tile_start(j, &t, &w);
    tile_walk(j, &t, &w, kb0, min64(kb0 + SPLIT_BLOCKS, j->kblocks));
    memcpy(part, t.m, (size_t)w.rows * sizeof *part);
    memcpy(part + w.rows, t.l, (size_t)w.rows * sizeof *part);
    memcpy(part + 2 * w.rows, t.acc, (size_t)(w.rows * j->d) * sizeof *part);
}

/* Combines the chunks of one head in chunk order and stores the rows. */
static void combine_task(void *arg, int64_t task, int thread)
{
    const attn_job *j = arg;
    flash_tile t = tile_of(j, thread);
    tile_at w = tile_of_task(j, task * j->chunks);
    tile_start(j, &t, &w);
    for (int64_t c = 0; c < j->chunks; c++) {
        const float *part = part_of(j, task * j->chunks + c);
        for (int64_t r = 0; r < w.rows; r++)
            merge_row(j->exec->k, &t, r, part[r], part[w.rows + r],
                      part + 2 * w.rows + r * j->d, j->d);
    }
    tile_finish(j, &t, &w);
}

/* ---- the op ------------------------------------------------------------------- */

static void job_init(attn_job *j, mha_cpu_exec *e, const mha_node *n)
{
    const mha_cpu_kernels *k = e->k;
    memset(j, 0, sizeof *j);
    j->exec = e;
    j->node = n;
    j->H = n->dst.ne[1];
    j->Hkv = n->src[MHA_SRC_K].ne[1];
    j->group = j->H / j->Hkv;
    j->L = n->dst.ne[2];
    j->d = n->dst.ne[3];
    j->S = n->params.mask_cols;
    j->S2 = n->src[MHA_SRC_K].ne[2];
    j->dpad = ceil_div(j->d, k->nr) * k->nr;
    j->qrows = ceil_div(QUERY_ROWS, k->mr) * k->mr;
    j->qtiles = ceil_div(j->L, j->qrows);
    j->kblocks = ceil_div(j->S2, KEY_BLOCK);
    j->packed = j->L >= k->mr && j->S2 > 0;
    j->chunks = j->packed ? 1 : max64(1, ceil_div(j->kblocks, SPLIT_BLOCKS));
    j->kv_tile = !j->packed && j->H * j->L <= j->qrows &&
                         n->dst.ne[0] * j->chunks >= mha_cpu_pool_threads(e->pool)
                     ? j->Hkv
                     : 1;
    j->grouped = !j->packed && (j->kv_tile > 1 || (j->group > 1 &&
                                                   j->group * j->L <= j->qrows));
    j->units = j->grouped ? 1 : j->group * j->qtiles;
    j->unit_rows = j->grouped ? j->kv_tile * j->group * j->L
                              : min64(j->qrows, j->L);
}

/* kv heads per round: as many as the pack budget holds, at least one. */
static int64_t heads_per_round(const attn_job *j, int64_t heads)
{
    if (!j->packed)
        return heads;
    int64_t fit = (int64_t)(j->exec->pack_budget /
                            (kp_head_floats(j) + vp_head_floats(j)));
    return fit < 1 ? 1 : fit < heads ? fit : heads;
}

/* The decode path: chunks of every head, then their combination. */
static mha_status run_split(mha_cpu_exec *e, attn_job *j)
{
    int64_t units = j->nheads * j->units;
    mha_status st = mha_cpu_scratch_reserve(
        e, &e->packed, part_floats(j) * (size_t)(units * j->chunks), 1);
    if (st != MHA_OK)
        return st;
    j->part = e->packed.data;
    mha_cpu_pool_run(e->pool, units * j->chunks, split_task, j);
    mha_cpu_pool_run(e->pool, units, combine_task, j);
    return MHA_OK;
}

mha_status mha_cpu_run_attention(mha_cpu_exec *e, const mha_node *n)
{
    attn_job j;
    job_init(&j, e, n);
    int threads = mha_cpu_pool_threads(e->pool);
    mha_status st = mha_cpu_scratch_reserve(e, &e->scratch,
                                            tile_floats(j.qrows, j.d),
                                            threads);
    int64_t heads = n->dst.ne[0] * j.Hkv / j.kv_tile;
    int64_t round = heads_per_round(&j, heads);
    size_t per_head = j.packed ? kp_head_floats(&j) + vp_head_floats(&j) : 0;
    if (st == MHA_OK && j.packed)
        st = mha_cpu_scratch_reserve(e, &e->packed,
                                     per_head * (size_t)round, 1);
    if (st != MHA_OK)
        return st;
    if (j.chunks > 1) {
        j.nheads = heads;
        return run_split(e, &j);
    }
    if (j.packed) {
        j.kp = e->packed.data;
        j.vp = j.kp + kp_head_floats(&j) * (size_t)round;
    }
    for (j.head0 = 0; j.head0 < heads; j.head0 += round) {
        j.nheads = min64(round, heads - j.head0);
        if (j.packed)
            mha_cpu_pool_run(e->pool, j.nheads * j.kblocks, pack_task, &j);
        mha_cpu_pool_run(e->pool, j.nheads * j.units, attention_task, &j);
    }
    return MHA_OK;
}
