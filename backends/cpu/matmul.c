/* matmul.c: the MATMUL op on the CPU (dst = A B, optionally added into
 * dst), the backward's dX = dY W and dW = dY^T X, on the packed GEMM
 * micro-kernels of the ISA table, as the projection: B is packed in slabs
 * of K once per product (shared by all outer indices when B is broadcast
 * over them), A is read in place, a transposed view through the table's
 * gemm_packed_tn (no transposing copy). Tasks are
 * (outer index, row block, column block) with sizes fixed by the shape, so
 * the bits do not depend on the thread count. */
#include <string.h>

#include "ops.h"

/* Blocking as the projection's (ops.c): a task is MM_ROWS rows (rounded
 * to the table's tile rows) by MM_COLS columns; B is packed in groups of
 * MM_PACK_COLS columns (a multiple of every nr); a packed slab holds at
 * most MM_PACK_FLOATS. */
#define MM_PACK_FLOATS ((size_t)4 << 20)
enum { MM_ROWS = 128, MM_COLS = 256, MM_PACK_COLS = 64 };

typedef struct mm_job {
    mha_cpu_exec *exec;
    const mha_node *node;
    int64_t o0, outer;      /* outer indices [o0, o0 + outer) of this group */
    int64_t rows, row_tiles, col_tiles;
    int64_t k0, kc;         /* the slab of K */
    float *bp;              /* B's slab, packed */
} mm_job;

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Element (o / ne[1], o % ne[1], i2, i3) of t: outer index o. */
static float *elem(const mha_tdesc *t, int64_t o, int64_t i2, int64_t i3)
{
    return (float *)((char *)t->buf + t->offset) +
           o / t->ne[1] * t->nb[0] + o % t->ne[1] * t->nb[1] +
           i2 * t->nb[2] + i3 * t->nb[3];
}

/* A's rows are contiguous (else it is a transposed view). */
static int a_rows(const mha_tdesc *a) { return a->nb[3] == 1; }

/* Packs columns [c0, c0 + MM_PACK_COLS) of B's slab (outer index o0): B
 * [K,N] with unit column stride packs as is, a transposed view as B^T. */
static void pack_task(void *arg, int64_t task, int thread)
{
    const mm_job *j = arg;
    const mha_tdesc *b = &j->node->src[MHA_SRC_MM_B];
    const mha_cpu_kernels *k = j->exec->k;
    int64_t c0 = task * MM_PACK_COLS, cn = min64(MM_PACK_COLS, b->ne[3] - c0);
    float *out = j->bp + c0 * j->kc;
    (void)thread;
    if (b->nb[3] == 1)
        k->pack_nn(j->kc, cn, elem(b, j->o0, j->k0, c0), b->nb[2], out);
    else
        k->pack_nt(cn, j->kc, elem(b, j->o0, j->k0, c0), b->nb[3], 1.0f,
                   out);
}

/* One block of dst += A[:, slab] Bp (the first slab starts from 0 or,
 * accumulating, from dst): task -> (outer index, row block, column
 * block). */
static void product_task(void *arg, int64_t task, int thread)
{
    const mm_job *j = arg;
    const mha_node *n = j->node;
    const mha_tdesc *a = &n->src[MHA_SRC_MM_A], *d = &n->dst;
    int64_t o = task / (j->row_tiles * j->col_tiles);
    int64_t r0 = task / j->col_tiles % j->row_tiles * j->rows;
    int64_t c0 = task % j->col_tiles * MM_COLS;
    int64_t M = d->ne[2], m = min64(j->rows, M - r0);
    int64_t N = min64(MM_COLS, d->ne[3] - c0);
    const float *A = elem(a, j->o0 + o, r0, j->k0);
    const float *bp = j->bp + c0 * j->kc;
    float *C = elem(d, j->o0 + o, r0, c0);
    int acc = j->k0 > 0 || n->params.accumulate;
    const mha_cpu_kernels *k = j->exec->k;
    (void)thread;
    if (a_rows(a))
        k->gemm_packed(m, N, j->kc, A, a->nb[2], bp, j->kc, NULL, acc, C,
                       d->nb[2]);
    else
        k->gemm_packed_tn(m, N, j->kc, A, a->nb[3], bp, j->kc, NULL, acc, C,
                          d->nb[2]);
}

/* K = 0: dst is 0, or unchanged when accumulating. */
static void zero_task(void *arg, int64_t task, int thread)
{
    const mm_job *j = arg;
    const mha_tdesc *d = &j->node->dst;
    (void)thread;
    for (int64_t r = 0; r < d->ne[2]; r++)
        memset(elem(d, task, r, 0), 0, (size_t)d->ne[3] * sizeof(float));
}

/* Slab depth: all of K when a slab of B (N columns padded) fits
 * MM_PACK_FLOATS, else the most that does, at least 64. */
static int64_t slab_depth(const mm_job *j, int64_t K)
{
    const mha_node *n = j->node;
    int64_t per_k = ceil_div(n->dst.ne[3], MM_PACK_COLS) * MM_PACK_COLS;
    int64_t fit = (int64_t)MM_PACK_FLOATS / per_k / 64 * 64;
    return K <= fit ? K : fit < 64 ? 64 : fit;
}

/* dst = A B for outer indices [j->o0, j->o0 + j->outer), which share one
 * B. */
static mha_status run_group(mha_cpu_exec *e, mm_job *j)
{
    const mha_node *n = j->node;
    const mha_tdesc *a = &n->src[MHA_SRC_MM_A];
    int64_t N = n->dst.ne[3], K = a->ne[3];
    int64_t kc = slab_depth(j, K);
    int64_t npad = ceil_div(N, MM_PACK_COLS) * MM_PACK_COLS;
    mha_status st = mha_cpu_scratch_reserve(e, &e->packed,
                                            (size_t)(npad * kc), 1);
    if (st != MHA_OK)
        return st;
    j->bp = e->packed.data;
    for (j->k0 = 0; j->k0 < K; j->k0 += j->kc) {
        j->kc = min64(kc, K - j->k0);
        mha_cpu_pool_run(e->pool, ceil_div(N, MM_PACK_COLS), pack_task, j);
        mha_cpu_pool_run(e->pool, j->outer * j->row_tiles * j->col_tiles,
                         product_task, j);
    }
    return MHA_OK;
}

mha_status mha_cpu_run_matmul(mha_cpu_exec *e, const mha_node *n)
{
    const mha_tdesc *b = &n->src[MHA_SRC_MM_B], *d = &n->dst;
    int64_t outer = d->ne[0] * d->ne[1], M = d->ne[2], N = d->ne[3];
    mm_job j = {e, n, 0, outer, 0, 0, 0, 0, 0, NULL};
    if (outer == 0 || M == 0 || N == 0)
        return MHA_OK;
    if (n->src[MHA_SRC_MM_A].ne[3] == 0) {
        if (!n->params.accumulate)
            mha_cpu_pool_run(e->pool, outer, zero_task, &j);
        return MHA_OK;
    }
    j.rows = ceil_div(MM_ROWS, e->k->mr) * e->k->mr;
    j.row_tiles = ceil_div(M, j.rows);
    j.col_tiles = ceil_div(N, MM_COLS);
    /* a B broadcast over every outer index is packed once for all */
    int shared = b->nb[0] == 0 && b->nb[1] == 0;
    if (!shared)
        j.outer = 1;
    for (j.o0 = 0; j.o0 < outer; j.o0 += j.outer) {
        mha_status st = run_group(e, &j);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

bool mha_cpu_matmul_supported(const mha_node *n)
{
    const mha_tdesc *a = &n->src[MHA_SRC_MM_A], *b = &n->src[MHA_SRC_MM_B];
    const mha_tdesc *d = &n->dst;
    if (!a->buf || !b->buf || a->dtype != MHA_F32 || b->dtype != MHA_F32 ||
        d->dtype != MHA_F32 || d->nb[3] != 1)
        return false;
    /* rows or columns contiguous: a plain matrix or a transposed view */
    if ((a->nb[3] != 1 && a->nb[2] != 1) || (b->nb[3] != 1 && b->nb[2] != 1))
        return false;
    for (int i = 0; i < 2; i++)
        if (a->ne[i] != d->ne[i] || b->ne[i] != d->ne[i])
            return false;
    return a->ne[2] == d->ne[2] && b->ne[3] == d->ne[3] &&
           a->ne[3] == b->ne[2];
}
