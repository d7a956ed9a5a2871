/* ops.c: the OpenCL backend's ops: which nodes it takes (supports) and how
 * each is enqueued (run) as one kernel of the programs in program.c. Every
 * tensor is passed as (cl_mem, element offset, int4 strides); run never
 * waits, the queue orders the kernels (queue.c). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cl_internal.h"

/* Largest head size the fused attention kernel takes (its workgroups and
 * local tiles grow with it); larger ones use SCORES + SOFTMAX +
 * WEIGHTED_SUM. */
#define MHA_CL_MAX_HEAD 256

/* ---- checks ------------------------------------------------------------- */

static size_t elem_size(mha_dtype t)
{
    return t == MHA_F16 ? 2 : 4;
}

/* Sources read as f32 whatever the layer's dtype: masks, ALiBi slopes,
 * sink logits (KV_LEN is MHA_I32, see tensor_ok). */
static int is_f32_slot(mha_op op, int slot)
{
    if (op == MHA_OP_MUL)
        return slot == MHA_SRC_MUL_F;
    return (op == MHA_OP_SCORES || op == MHA_OP_ATTENTION) &&
           (slot == MHA_SRC_MASK || slot == MHA_SRC_KPM ||
            slot == MHA_SRC_SINKS || slot == MHA_SRC_ALIBI);
}

/* Whether t can be indexed with 32-bit element offsets. */
static int fits_int32(const mha_tdesc *t)
{
    size_t es = elem_size(t->dtype);
    if (t->offset % es != 0)
        return 0;
    int64_t last = (int64_t)(t->offset / es), count = 1;
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] < 0 || t->nb[i] < 0)
            return 0;
        if (t->ne[i] == 0)
            return 1;
        if (t->ne[i] > INT_MAX || t->nb[i] > INT_MAX)
            return 0;
        last += (t->ne[i] - 1) * t->nb[i];
        count *= t->ne[i];
        if (last > INT_MAX || count > INT_MAX)
            return 0;
    }
    return 1;
}

/* What a slot holds: data (f32, or f16 where the device stores halves),
 * f32 only (masks, slopes, sinks) or int32 (key lengths). */
typedef enum slot_kind { SLOT_DATA, SLOT_F32, SLOT_I32 } slot_kind;

static slot_kind kind_of(mha_op op, int slot)
{
    if (op == MHA_OP_ATTENTION && slot == MHA_SRC_KV_LEN)
        return SLOT_I32;
    return is_f32_slot(op, slot) ? SLOT_F32 : SLOT_DATA;
}

static int tensor_ok(const mha_cl_device *dev, const mha_tdesc *t,
                     slot_kind kind)
{
    if (!t->buf)
        return 1;
    int ok = kind == SLOT_I32   ? t->dtype == MHA_I32
             : kind == SLOT_F32 ? t->dtype == MHA_F32
                                : t->dtype == MHA_F32 ||
                                      (t->dtype == MHA_F16 &&
                                       dev->rec->limits.fp16_storage);
    return ok && fits_int32(t);
}

/* The fused kernel's own limits: head sizes up to MHA_CL_MAX_HEAD, one d
 * for Q, K, V and O, and K/V with H / kv_group heads. */
static bool attention_ok(const mha_node *n)
{
    const int64_t d = n->dst.ne[3], H = n->dst.ne[1];
    const int64_t g = n->params.kv_group > 1 ? n->params.kv_group : 1;
    return d <= MHA_CL_MAX_HEAD && n->src[MHA_SRC_Q].ne[3] == d &&
           n->src[MHA_SRC_K].ne[3] == d && n->src[MHA_SRC_V].ne[3] == d &&
           H % g == 0 && n->src[MHA_SRC_K].ne[1] * g == H &&
           n->src[MHA_SRC_V].ne[1] * g == H && n->params.window >= 0 &&
           !(n->params.softcap < 0.0f);
}

/* ROPE: X and Y f32 or f16 each, positions MHA_I32 (absent for a copy,
 * rope_dims 0). */
static bool rope_supported(const mha_cl_device *dev, const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    mha_tdesc pos = n->src[MHA_SRC_ROPE_POS];
    pos.dtype = MHA_F32; /* int32: the same bounds as an f32 view */
    return x->buf && n->dst.buf && tensor_ok(dev, x, SLOT_DATA) &&
           tensor_ok(dev, &n->dst, SLOT_DATA) && mha_rope_is_valid(n) &&
           (n->params.rope_dims == 0 || fits_int32(&pos));
}

/* HEAD_STATS: f32 probabilities with unit inner stride into f32 sums
 * [B,H,1,5+H]. */
static bool head_stats_supported(const mha_node *n)
{
    const mha_tdesc *s = &n->src[0], *t = &n->dst;
    return s->buf && t->buf && s->dtype == MHA_F32 && t->dtype == MHA_F32 &&
           fits_int32(s) && fits_int32(t) && s->nb[3] == 1 &&
           t->ne[0] == s->ne[0] && t->ne[1] == s->ne[1] && t->ne[2] == 1 &&
           t->ne[3] == MHA_HEAD_STATS_COLS + s->ne[1];
}

/* ---- the training ops (issue 18) ----------------------------------------- */

/* An f32 tensor of 32-bit indices (present). */
static bool f32_ok(const mha_tdesc *t)
{
    return t->buf && t->dtype == MHA_F32 && fits_int32(t);
}

/* Whether operand extent a broadcasts to or equals extent n. */
static bool outer_ok(int64_t a, int64_t n) { return a == n || a == 1; }

/* MATMUL through gemm.cl: A [.,.,M,K] and B [.,.,K,N] at any strides. */
static bool matmul_supported(const mha_node *n)
{
    const mha_tdesc *a = &n->src[MHA_SRC_MM_A], *b = &n->src[MHA_SRC_MM_B];
    const mha_tdesc *c = &n->dst;
    if (!f32_ok(a) || !f32_ok(b) || !f32_ok(c))
        return false;
    for (int i = 0; i < 2; i++)
        if (!outer_ok(a->ne[i], c->ne[i]) || !outer_ok(b->ne[i], c->ne[i]))
            return false;
    return a->ne[2] == c->ne[2] && b->ne[3] == c->ne[3] &&
           a->ne[3] == b->ne[2];
}

static bool sum_rows_supported(const mha_node *n)
{
    const mha_tdesc *s = &n->src[0], *t = &n->dst;
    return f32_ok(s) && f32_ok(t) && t->ne[0] == s->ne[0] &&
           t->ne[1] == s->ne[1] && t->ne[2] == 1 && t->ne[3] == s->ne[3];
}

/* A contiguous f32 [1,1,1,n] vector (ADAMW's tensors). */
static bool vector_ok(const mha_tdesc *t, int64_t n)
{
    return f32_ok(t) && t->ne[0] == 1 && t->ne[1] == 1 && t->ne[2] == 1 &&
           t->ne[3] == n && (n <= 1 || t->nb[3] == 1);
}

static bool adamw_supported(const mha_node *n)
{
    const int64_t len = n->dst.ne[3];
    return vector_ok(&n->dst, len) && vector_ok(&n->src[MHA_SRC_ADAM_G], len) &&
           vector_ok(&n->src[MHA_SRC_ADAM_M], len) &&
           vector_ok(&n->src[MHA_SRC_ADAM_V], len);
}

/* ATTENTION_BACKWARD: the nn.MHA subset with window, softcap and ALiBi,
 * head sizes up to MHA_CL_MAX_HEAD, f32 tensors with unit inner stride
 * (the LSE and the slopes at any strides). */
static bool attention_backward_supported(const mha_node *n)
{
    const mha_op_params *a = &n->params;
    const mha_tdesc *t[] = {&n->src[MHA_SRC_Q], &n->src[MHA_SRC_K],
                            &n->src[MHA_SRC_V], &n->src[MHA_SRC_BWD_O],
                            &n->src[MHA_SRC_BWD_DO], &n->dst,
                            &n->extra_dst[MHA_DST_DK],
                            &n->extra_dst[MHA_DST_DV]};
    const int64_t d = n->dst.ne[3];
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!f32_ok(t[i]) || (t[i]->ne[3] > 1 && t[i]->nb[3] != 1) ||
            t[i]->ne[3] != d)
            return false;
    const mha_tdesc *m = &n->src[MHA_SRC_MASK], *k = &n->src[MHA_SRC_KPM];
    const mha_tdesc *al = &n->src[MHA_SRC_BWD_ALIBI];
    return d <= MHA_CL_MAX_HEAD && a->kv_group <= 1 && a->window >= 0 &&
           a->softcap >= 0.0f && a->causal != MHA_CAUSAL_BOTTOM_RIGHT &&
           f32_ok(&n->src[MHA_SRC_BWD_LSE]) && (!m->buf || f32_ok(m)) &&
           (!al->buf || f32_ok(al)) &&
           (!k->buf || f32_ok(k)) &&
           n->src[MHA_SRC_BWD_LSE].ne[3] == n->dst.ne[2] &&
           n->dst.ne[0] * n->dst.ne[1] * n->dst.ne[2] * 2 <= INT_MAX;
}

/* The training ops' supports(); -1 for the other ops. */
static int training_supported(const mha_node *n)
{
    switch (n->op) {
    case MHA_OP_MATMUL:
        return matmul_supported(n);
    case MHA_OP_SUM_ROWS:
        return sum_rows_supported(n);
    case MHA_OP_ATTENTION_BACKWARD:
        return attention_backward_supported(n);
    case MHA_OP_ADAMW:
        return adamw_supported(n);
    default:
        return n->op == MHA_OP_ATTENTION && n->extra_dst[MHA_DST_LSE].buf
                   ? f32_ok(&n->extra_dst[MHA_DST_LSE])
                   : -1;
    }
}

/* Every tensor may be f32 or f16 on its own (an f16 layer mixes them);
 * masks, slopes and sinks are f32, key lengths int32. */
bool mha_cl_supports(void *d, const mha_node *node)
{
    const mha_cl_device *dev = d;
    if (node->op < 0 || node->op >= MHA_OP_COUNT)
        return false;
    const int training = training_supported(node);
    if (training >= 0 && (!training || node->op != MHA_OP_ATTENTION))
        return training;
    if (node->op == MHA_OP_ROPE)
        return rope_supported(dev, node);
    if (node->op == MHA_OP_HEAD_STATS)
        return head_stats_supported(node);
    if (!node->dst.buf || !tensor_ok(dev, &node->dst, SLOT_DATA))
        return false;
    for (int s = 0; s < mha_op_source_count(node->op) && s < MHA_MAX_SRC; s++)
        if (!tensor_ok(dev, &node->src[s], kind_of(node->op, s)))
            return false;
    return node->op != MHA_OP_ATTENTION || attention_ok(node);
}

/* ---- kernel arguments --------------------------------------------------- */

typedef struct kargs {
    const mha_cl_api *api;
    cl_kernel k;
    cl_uint i;
    cl_int err;
    cl_uint failed_at;
} kargs;

static void arg(kargs *a, size_t size, const void *value)
{
    if (a->err == CL_SUCCESS) {
        a->err = a->api->clSetKernelArg(a->k, a->i, size, value);
        a->failed_at = a->i;
    }
    a->i++;
}

static void arg_int(kargs *a, int v)
{
    cl_int x = v;
    arg(a, sizeof x, &x);
}

static void arg_int4(kargs *a, int x, int y, int z, int w)
{
    cl_int4 v;
    v.s[0] = x, v.s[1] = y, v.s[2] = z, v.s[3] = w;
    arg(a, sizeof v, &v);
}

/* Stride of dim i, 0 where the tensor has extent 1 (it broadcasts). */
static int stride(const mha_tdesc *t, int i)
{
    return t->ne[i] == 1 ? 0 : (int)t->nb[i];
}

/* A tensor as (buffer, offset, strides in the order dims[0..3]); an absent
 * one as (NULL, -1, 0). */
static void arg_tensor_dims(kargs *a, const mha_tdesc *t, int d0, int d1,
                            int d2, int d3)
{
    const mha_cl_buffer *b = t->buf;
    cl_mem mem = b ? b->mem : NULL;
    arg(a, sizeof mem, &mem);
    if (!b) {
        arg_int(a, -1);
        arg_int4(a, 0, 0, 0, 0);
        return;
    }
    arg_int(a, (int)((b->base + t->offset) / elem_size(t->dtype)));
    arg_int4(a, stride(t, d0), stride(t, d1), stride(t, d2), stride(t, d3));
}

static void arg_tensor(kargs *a, const mha_tdesc *t)
{
    arg_tensor_dims(a, t, 0, 1, 2, 3);
}

static size_t round_up(int64_t n, size_t m)
{
    return ((size_t)n + m - 1) / m * m;
}

static mha_status enqueue(mha_cl_device *dev, kargs *a, const char *name,
                          const size_t global[3], const size_t local[3])
{
    if (a->err != CL_SUCCESS)
        return mha_host_error(dev->host, MHA_DEVICE_ERROR,
                              "clSetKernelArg(%s, %u) failed: %s (%d)", name,
                              (unsigned)a->failed_at,
                              mha_cl_error_name(a->err), (int)a->err);
    if (global[0] == 0 || global[1] == 0 || global[2] == 0)
        return MHA_OK;
    mha_cl_order o;
    mha_status s = mha_cl_order_begin(dev, &o);
    if (s != MHA_OK)
        return s;
    cl_int err = mha_fault_due(&dev->fault_enqueue)
                     ? CL_OUT_OF_RESOURCES
                     : dev->api->clEnqueueNDRangeKernel(
                           dev->queue, a->k, 3, NULL, global, local, o.count,
                           o.list, o.event);
    mha_cl_order_end(dev, &o, err);
    if (err != CL_SUCCESS) {
        char call[64];
        snprintf(call, sizeof call, "clEnqueueNDRangeKernel(%s)", name);
        return mha_cl_queue_fail(dev, call, err);
    }
    return MHA_OK;
}

/* A kernel of the ops program (built at open, so this only looks it up). */
static mha_status kernel_of(mha_cl_device *dev, mha_cl_kernel_id id,
                            kargs *a)
{
    mha_cl_program *p = NULL;
    mha_status s = mha_cl_program_get(dev, MHA_CL_PROG_OPS, 0, &p);
    if (s != MHA_OK)
        return s;
    memset(a, 0, sizeof *a);
    a->api = dev->api;
    a->k = p->kernels[id];
    return MHA_OK;
}

/* The kernels' halfmask: bit i set when tensor i is present and f16. */
static int halfmask(const mha_tdesc *const *t, int n)
{
    int mask = 0;
    for (int i = 0; i < n; i++)
        if (t[i] && t[i]->buf && t[i]->dtype == MHA_F16)
            mask |= 1 << i;
    return mask;
}

/* ---- ops ---------------------------------------------------------------- */

/* The batched product of gemm.cl: C = alpha A B^T (+ X1, X2, X3), B given
 * with its (n, k) dims named by bn, bk. */
typedef struct gemm_call {
    const mha_tdesc *a, *b, *c, *x1, *x2, *x3;
    int bn, bk;
    int64_t m, n, k;
    float alpha;
    int causal, add_cols;
} gemm_call;

static mha_status run_gemm(mha_cl_device *dev, const gemm_call *g)
{
    static const mha_tdesc none;
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_GEMM, &a);
    if (s != MHA_OK)
        return s;
    arg_tensor(&a, g->a);
    arg_tensor_dims(&a, g->b, 0, 1, g->bn, g->bk);
    arg_tensor(&a, g->c);
    arg_tensor(&a, g->x1 ? g->x1 : &none);
    arg_tensor(&a, g->x2 ? g->x2 : &none);
    arg_tensor(&a, g->x3 ? g->x3 : &none);
    arg_int4(&a, (int)g->c->ne[1], (int)g->m, (int)g->n, (int)g->k);
    arg(&a, sizeof(cl_float), &g->alpha);
    arg_int(&a, g->causal);
    arg_int(&a, g->add_cols);
    const mha_tdesc *t[4] = {g->a, g->b, g->c, g->x1};
    arg_int(&a, halfmask(t, 4));
    /* Each TS x TS workgroup covers TM x TM outputs. */
    const size_t ts = (size_t)dev->tile, tm = ts * (size_t)dev->wpt;
    const size_t global[3] = {round_up(g->n, tm) / tm * ts,
                              round_up(g->m, tm) / tm * ts,
                              (size_t)(g->c->ne[0] * g->c->ne[1])};
    const size_t local[3] = {ts, ts, 1};
    return enqueue(dev, &a, "gemm", global, local);
}

static mha_status run_projection(mha_cl_device *dev, const mha_node *n)
{
    const gemm_call g = {.a = &n->src[0], .b = &n->src[1], .c = &n->dst,
                         .x1 = &n->src[2], .bn = 2, .bk = 3,
                         .m = n->dst.ne[2], .n = n->dst.ne[3],
                         .k = n->src[0].ne[3], .alpha = 1.0f};
    return run_gemm(dev, &g);
}

static int clamp_cols(int64_t cols)
{
    return cols > INT_MAX ? INT_MAX : cols < 0 ? 0 : (int)cols;
}

static mha_status run_scores(mha_cl_device *dev, const mha_node *n)
{
    const gemm_call g = {.a = &n->src[MHA_SRC_Q], .b = &n->src[MHA_SRC_K],
                         .c = &n->dst, .x2 = &n->src[MHA_SRC_MASK],
                         .x3 = &n->src[MHA_SRC_KPM], .bn = 2, .bk = 3,
                         .m = n->dst.ne[2], .n = n->dst.ne[3],
                         .k = n->src[MHA_SRC_Q].ne[3],
                         .alpha = n->params.scale,
                         .causal = n->params.causal != 0,
                         .add_cols = clamp_cols(n->params.mask_cols)};
    return run_gemm(dev, &g);
}

static mha_status run_weighted_sum(mha_cl_device *dev, const mha_node *n)
{
    const gemm_call g = {.a = &n->src[0], .b = &n->src[1], .c = &n->dst,
                         .bn = 3, .bk = 2, .m = n->dst.ne[2],
                         .n = n->dst.ne[3], .k = n->src[0].ne[3],
                         .alpha = 1.0f};
    return run_gemm(dev, &g);
}

static mha_status run_softmax(mha_cl_device *dev, const mha_node *n)
{
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_SOFTMAX, &a);
    if (s != MHA_OK)
        return s;
    arg_tensor(&a, &n->src[0]);
    arg_tensor(&a, &n->dst);
    arg_int4(&a, (int)n->dst.ne[1], (int)n->dst.ne[2], (int)n->dst.ne[3], 0);
    const mha_tdesc *t[2] = {&n->src[0], &n->dst};
    arg_int(&a, halfmask(t, 2));
    const size_t global[3] = {(size_t)dev->row_wg, (size_t)n->dst.ne[2],
                              (size_t)(n->dst.ne[0] * n->dst.ne[1])};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, "softmax", global, local);
}

/* copy4d over dst's extents (FILL_ROWS) or mean_heads
 * over src's extents. */
static mha_status run_elementwise(mha_cl_device *dev, const mha_node *n,
                                  mha_cl_kernel_id id, const int64_t ne[4])
{
    kargs a;
    mha_status s = kernel_of(dev, id, &a);
    if (s != MHA_OK)
        return s;
    int64_t total = ne[0] * ne[1] * ne[2] * ne[3];
    if (id == MHA_CL_K_MEAN_HEADS)
        total /= ne[1] ? ne[1] : 1;
    arg_tensor(&a, &n->src[0]);
    arg_tensor(&a, &n->dst);
    arg_int4(&a, (int)ne[0], (int)ne[1], (int)ne[2], (int)ne[3]);
    arg_int(&a, (int)total);
    const mha_tdesc *t[2] = {&n->src[0], &n->dst};
    arg_int(&a, halfmask(t, 2));
    const size_t global[3] = {round_up(total, (size_t)dev->row_wg), 1, 1};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, id == MHA_CL_K_COPY ? "copy4d" : "mean_heads",
                   global, local);
}

/* MUL: dst = X * F, one work item per element of dst. */
static mha_status run_mul(mha_cl_device *dev, const mha_node *n)
{
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_MUL, &a);
    if (s != MHA_OK)
        return s;
    const int64_t *ne = n->dst.ne;
    int64_t total = ne[0] * ne[1] * ne[2] * ne[3];
    arg_tensor(&a, &n->src[MHA_SRC_MUL_X]);
    arg_tensor(&a, &n->dst);
    arg_tensor(&a, &n->src[MHA_SRC_MUL_F]);
    arg_int4(&a, (int)ne[0], (int)ne[1], (int)ne[2], (int)ne[3]);
    arg_int(&a, (int)total);
    const mha_tdesc *t[2] = {&n->src[MHA_SRC_MUL_X], &n->dst};
    arg_int(&a, halfmask(t, 2));
    const size_t global[3] = {round_up(total, (size_t)dev->row_wg), 1, 1};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, "mul4d", global, local);
}

/* One row_wg-wide workgroup per (column, batch item x head). */
static mha_status run_head_stats(mha_cl_device *dev, const mha_node *n)
{
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_HEAD_STATS, &a);
    if (s != MHA_OK)
        return s;
    const mha_tdesc *p = &n->src[0];
    arg_tensor(&a, p);
    arg_tensor(&a, &n->dst);
    arg_int4(&a, (int)p->ne[1], (int)p->ne[2], (int)p->ne[3], 0);
    const size_t global[3] = {(size_t)dev->row_wg, (size_t)n->dst.ne[3],
                              (size_t)(p->ne[0] * p->ne[1])};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, "head_stats", global, local);
}

/* Workgroups a launch should have to fill the device: a few per compute
 * unit, and never fewer than a small GPU needs. */
static int64_t groups_wanted(const mha_cl_device *dev)
{
    const int64_t per_cu = 8 * (int64_t)dev->rec->compute_units;
    return per_cu > 64 ? per_cu : 64;
}

/* The query rows that share one kv head's K and V: L for each of its
 * kv_group query heads (GQA/MQA), one workgroup row each. */
static int64_t rows_per_kv_head(const mha_node *n)
{
    return (n->params.kv_group > 1 ? n->params.kv_group : 1) * n->dst.ne[2];
}

/* Key chunks of the fused attention (flash-decoding): when its (row tile,
 * kv head) groups are too few to fill the device, as when decoding one
 * token against a long cache, the keys are cut into chunks of whole tiles.
 * Chosen from shapes only (S', never the lengths in KV_LEN), so a decode
 * loop keeps one launch shape and results are deterministic. *chunk: keys
 * per chunk. */
static int key_chunks(const mha_cl_device *dev, const mha_cl_program *p,
                      const mha_node *n, int *chunk)
{
    const int64_t S = n->src[MHA_SRC_K].ne[2];
    const int64_t tiles = (S + p->bc - 1) / p->bc;
    const int64_t groups = (rows_per_kv_head(n) + p->br - 1) / p->br *
                           n->dst.ne[0] * n->src[MHA_SRC_K].ne[1];
    int64_t want = groups > 0 ? (groups_wanted(dev) + groups - 1) / groups : 1;
    if (want > tiles)
        want = tiles;
    if (want <= 1) {
        *chunk = clamp_cols(S);
        return 1;
    }
    const int64_t per = (tiles + want - 1) / want;
    *chunk = (int)(per * p->bc);
    return (int)((tiles + per - 1) / per);
}

/* The scratch buffer holding at least size bytes (dev->scratch). */
static mha_status scratch_of(mha_cl_device *dev, size_t size,
                             const mha_cl_buffer **out)
{
    if (!dev->scratch || dev->scratch->size < size) {
        void *b = NULL;
        mha_status s = mha_cl_buffer_alloc(dev, size, &b);
        if (s != MHA_OK)
            return s;
        mha_cl_buffer_free(dev, dev->scratch);
        dev->scratch = b;
    }
    *out = dev->scratch;
    return MHA_OK;
}

/* attention_combine: merges the chunks' partials into dst. */
static mha_status run_combine(mha_cl_device *dev, const mha_cl_program *p,
                              const mha_node *n, cl_mem part, int chunks)
{
    kargs a = {.api = dev->api, .k = p->kernels[MHA_CL_K_ATTENTION_COMBINE]};
    arg(&a, sizeof part, &part);
    arg_tensor(&a, &n->dst);
    arg_tensor(&a, &n->src[MHA_SRC_SINKS]);
    arg_tensor(&a, &n->extra_dst[MHA_DST_LSE]);
    arg_int4(&a, (int)n->dst.ne[1], (int)n->dst.ne[2], chunks,
             (int)n->dst.ne[3]);
    const mha_tdesc *t[4] = {NULL, NULL, NULL, &n->dst};
    arg_int(&a, halfmask(t, 4));
    const size_t wg = (size_t)dev->row_wg;
    const size_t global[3] = {round_up(n->dst.ne[3], wg),
                              (size_t)(n->dst.ne[0] * n->dst.ne[1] *
                                       n->dst.ne[2]),
                              1};
    const size_t local[3] = {wg, 1, 1};
    return enqueue(dev, &a, "attention_combine", global, local);
}

static mha_status run_attention(mha_cl_device *dev, const mha_node *n)
{
    mha_cl_program *p = NULL;
    mha_status s = mha_cl_program_get(dev, MHA_CL_PROG_ATTENTION,
                                      (int)n->dst.ne[3], &p);
    if (s != MHA_OK)
        return s;
    int chunk = 0;
    const int chunks = key_chunks(dev, p, n, &chunk);
    const mha_cl_buffer *scratch = NULL;
    if (chunks > 1)
        s = scratch_of(dev,
                       (size_t)(n->dst.ne[0] * n->dst.ne[1] * n->dst.ne[2]) *
                           (size_t)chunks * (size_t)(n->dst.ne[3] + 2) *
                           sizeof(float),
                       &scratch);
    if (s != MHA_OK)
        return s;
    cl_mem part = scratch ? scratch->mem : NULL;
    const mha_op_params *pr = &n->params;
    kargs a = {.api = dev->api, .k = p->kernels[MHA_CL_K_ATTENTION]};
    arg_tensor(&a, &n->src[MHA_SRC_Q]);
    arg_tensor(&a, &n->src[MHA_SRC_K]);
    arg_tensor(&a, &n->src[MHA_SRC_V]);
    arg_tensor(&a, &n->dst);
    arg_tensor(&a, &n->src[MHA_SRC_MASK]);
    arg_tensor(&a, &n->src[MHA_SRC_KPM]);
    arg_tensor(&a, &n->src[MHA_SRC_SINKS]);
    arg_tensor(&a, &n->src[MHA_SRC_ALIBI]);
    arg_tensor(&a, &n->src[MHA_SRC_KV_LEN]);
    arg_tensor(&a, &n->extra_dst[MHA_DST_LSE]); /* absent in inference */
    arg(&a, sizeof part, &part);
    cl_mem visits = dev->tile_visits ? dev->tile_visits->mem : NULL;
    arg(&a, sizeof visits, &visits);
    arg_int4(&a, (int)n->dst.ne[1], (int)n->dst.ne[2],
             (int)n->src[MHA_SRC_K].ne[2], (int)n->dst.ne[3]);
    arg_int4(&a, pr->causal, clamp_cols(pr->mask_cols), pr->window,
             pr->kv_group > 1 ? pr->kv_group : 1);
    arg(&a, sizeof(cl_float), &pr->scale);
    arg(&a, sizeof(cl_float), &pr->softcap);
    arg_int(&a, chunk);
    const mha_tdesc *t[4] = {&n->src[MHA_SRC_Q], &n->src[MHA_SRC_K],
                             &n->src[MHA_SRC_V], &n->dst};
    arg_int(&a, halfmask(t, 4));
    const size_t br = (size_t)p->br;
    const size_t wg = br * (size_t)mha_cl_attention_lanes(p);
    const size_t global[3] = {round_up(rows_per_kv_head(n), br) / br * wg,
                              (size_t)(n->dst.ne[0] * n->src[MHA_SRC_K].ne[1]),
                              (size_t)chunks};
    const size_t local[3] = {wg, 1, 1};
    s = enqueue(dev, &a, "attention", global, local);
    if (s != MHA_OK || chunks == 1)
        return s;
    return run_combine(dev, p, n, part, chunks);
}

/* MATMUL: gemm.cl with B's (n, k) dims swapped, dst added as X1 when
 * accumulating (each item reads the element it then writes). */
static mha_status run_matmul(mha_cl_device *dev, const mha_node *n)
{
    const gemm_call g = {.a = &n->src[MHA_SRC_MM_A],
                         .b = &n->src[MHA_SRC_MM_B], .c = &n->dst,
                         .x1 = n->params.accumulate ? &n->dst : NULL,
                         .bn = 3, .bk = 2, .m = n->dst.ne[2],
                         .n = n->dst.ne[3], .k = n->src[MHA_SRC_MM_A].ne[3],
                         .alpha = 1.0f};
    return run_gemm(dev, &g);
}

/* SUM_ROWS: one work item per output column. */
static mha_status run_sum_rows(mha_cl_device *dev, const mha_node *n)
{
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_SUM_ROWS, &a);
    if (s != MHA_OK)
        return s;
    const int64_t *ne = n->src[0].ne;
    arg_tensor(&a, &n->src[0]);
    arg_tensor(&a, &n->dst);
    arg_int4(&a, (int)ne[0], (int)ne[1], (int)ne[2], (int)ne[3]);
    arg_int(&a, n->params.accumulate != 0);
    const size_t global[3] = {round_up(ne[0] * ne[1] * ne[3],
                                       (size_t)dev->row_wg), 1, 1};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, "sum_rows", global, local);
}

/* A contiguous vector as (buffer, element offset). */
static void arg_vector(kargs *a, const mha_tdesc *t)
{
    const mha_cl_buffer *b = t->buf;
    arg(a, sizeof b->mem, &b->mem);
    arg_int(a, (int)((b->base + t->offset) / 4));
}

static mha_status run_adamw(mha_cl_device *dev, const mha_node *n)
{
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_ADAMW, &a);
    if (s != MHA_OK)
        return s;
    const mha_op_params *p = &n->params;
    arg_vector(&a, &n->dst);
    arg_vector(&a, &n->src[MHA_SRC_ADAM_G]);
    arg_vector(&a, &n->src[MHA_SRC_ADAM_M]);
    arg_vector(&a, &n->src[MHA_SRC_ADAM_V]);
    arg_int(&a, (int)n->dst.ne[3]);
    cl_float4 hyper = {{p->adam_lr, p->adam_beta1, p->adam_beta2, p->adam_eps}};
    cl_float4 decay = {{p->adam_weight_decay, p->adam_bc1, p->adam_bc2, 0}};
    arg(&a, sizeof hyper, &hyper);
    arg(&a, sizeof decay, &decay);
    const size_t global[3] = {round_up(n->dst.ne[3], (size_t)dev->row_wg), 1,
                              1};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, "adamw", global, local);
}

/* attention_backward_pre: (LSE, D) of every query row into part. */
static mha_status run_bwd_pre(mha_cl_device *dev, const mha_cl_program *p,
                              const mha_node *n, cl_mem part)
{
    const int64_t *ne = n->dst.ne;
    const int rows = (int)(ne[0] * ne[1] * ne[2]);
    kargs a = {.api = dev->api, .k = p->kernels[MHA_CL_K_ATT_BWD_PRE]};
    arg_tensor(&a, &n->src[MHA_SRC_BWD_O]);
    arg_tensor(&a, &n->src[MHA_SRC_BWD_DO]);
    arg_tensor(&a, &n->src[MHA_SRC_BWD_LSE]);
    arg(&a, sizeof part, &part);
    arg_int4(&a, (int)ne[1], (int)ne[2], rows, (int)ne[3]);
    const size_t wg = (size_t)dev->row_wg;
    const size_t global[3] = {round_up(rows, wg), 1, 1};
    const size_t local[3] = {wg, 1, 1};
    return enqueue(dev, &a, "attention_backward_pre", global, local);
}

/* ATTENTION_BACKWARD: (LSE, D), then dK and dV over key blocks (mode 0)
 * and dQ over query blocks (mode 1). */
static mha_status run_attention_backward(mha_cl_device *dev,
                                         const mha_node *n)
{
    static const mha_tdesc none;
    mha_cl_program *p = NULL;
    mha_status s = mha_cl_program_get(dev, MHA_CL_PROG_ATTENTION_BWD,
                                      (int)n->dst.ne[3], &p);
    const int64_t *ne = n->dst.ne;
    const mha_cl_buffer *scratch = NULL;
    if (s == MHA_OK)
        s = scratch_of(dev, (size_t)(ne[0] * ne[1] * ne[2]) * 2 * sizeof(float),
                       &scratch);
    if (s == MHA_OK)
        s = run_bwd_pre(dev, p, n, scratch->mem);
    const int S = (int)n->src[MHA_SRC_K].ne[2];
    for (int mode = 0; mode < 2 && s == MHA_OK; mode++) {
        kargs a = {.api = dev->api, .k = p->kernels[MHA_CL_K_ATT_BWD]};
        const int srcs[] = {MHA_SRC_Q, MHA_SRC_K, MHA_SRC_V, MHA_SRC_BWD_DO,
                            MHA_SRC_MASK, MHA_SRC_KPM};
        for (int i = 0; i < 6; i++)
            arg_tensor(&a, &n->src[srcs[i]]);
        arg(&a, sizeof scratch->mem, &scratch->mem);
        arg_tensor(&a, mode ? &n->dst : &n->extra_dst[MHA_DST_DK]);
        arg_tensor(&a, mode ? &none : &n->extra_dst[MHA_DST_DV]);
        arg_tensor(&a, &n->src[MHA_SRC_BWD_ALIBI]);
        arg_int4(&a, (int)ne[1], (int)ne[2], S, (int)ne[3]);
        arg_int4(&a, mode, n->params.causal != 0,
                 clamp_cols(n->params.mask_cols), n->params.window);
        arg(&a, sizeof(cl_float), &n->params.scale);
        arg(&a, sizeof(cl_float), &n->params.softcap);
        const size_t br = (size_t)p->br;
        const size_t wg = br * (size_t)mha_cl_attention_lanes(p);
        const size_t global[3] = {round_up(mode ? ne[2] : S, br) / br * wg,
                                  (size_t)ne[1], (size_t)ne[0]};
        const size_t local[3] = {wg, 1, 1};
        s = enqueue(dev, &a, "attention_backward", global, local);
    }
    return s;
}

static mha_status run_rope(mha_cl_device *dev, const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    const mha_tdesc *pos = &n->src[MHA_SRC_ROPE_POS];
    const mha_op_params *p = &n->params;
    kargs a;
    mha_status s = kernel_of(dev, MHA_CL_K_ROPE, &a);
    if (s != MHA_OK)
        return s;
    arg_tensor(&a, x);
    arg_tensor(&a, &n->dst);
    const mha_cl_buffer *pb = p->rope_dims ? pos->buf : NULL;
    cl_mem pmem = pb ? pb->mem : NULL;
    arg(&a, sizeof pmem, &pmem);
    arg_int(&a, pb ? (int)((pb->base + pos->offset) / 4) : 0);
    cl_int2 pst = {{pb ? stride(pos, 2) : 0, pb ? stride(pos, 3) : 0}};
    arg(&a, sizeof pst, &pst);
    arg_int4(&a, (int)x->ne[0], (int)x->ne[1], (int)x->ne[2], (int)x->ne[3]);
    arg_int(&a, p->rope_dims);
    arg_int(&a, p->rope_style == MHA_ROPE_GPTJ);
    cl_float log2_theta = log2f(p->rope_theta);
    arg(&a, sizeof log2_theta, &log2_theta);
    arg(&a, sizeof(cl_float), &p->rope_pos_scale);
    int64_t total = x->ne[0] * x->ne[1] * x->ne[2] *
                    (p->rope_dims / 2 + x->ne[3] - p->rope_dims);
    arg_int(&a, (int)total);
    const mha_tdesc *t[2] = {x, &n->dst};
    arg_int(&a, halfmask(t, 2));
    const size_t global[3] = {round_up(total, (size_t)dev->row_wg), 1, 1};
    const size_t local[3] = {(size_t)dev->row_wg, 1, 1};
    return enqueue(dev, &a, "rope", global, local);
}

/* A wrapped cl_mem's flags say what kernels may do with it (reading
 * CL_MEM_WRITE_ONLY memory or writing CL_MEM_READ_ONLY memory is undefined
 * in OpenCL); libmha's own buffers are CL_MEM_READ_WRITE. */
static bool read_only(const mha_tdesc *t)
{
    const mha_cl_buffer *b = t->buf;
    return b && (b->flags & CL_MEM_READ_ONLY);
}

static mha_status check_access(mha_cl_device *dev, const mha_node *node)
{
    const char *op = mha_op_name(node->op);
    /* the outputs: dst, the extra ones, ADAMW's moments (in place) */
    bool ro = read_only(&node->dst);
    for (int i = 0; i < MHA_MAX_EXTRA_DST; i++)
        ro = ro || read_only(&node->extra_dst[i]);
    if (node->op == MHA_OP_ADAMW)
        ro = ro || read_only(&node->src[MHA_SRC_ADAM_M]) ||
             read_only(&node->src[MHA_SRC_ADAM_V]);
    if (ro)
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "opencl: %s writes a cl_mem created with "
                              "CL_MEM_READ_ONLY (a wrapped output or weights "
                              "tensor); wrap a writable buffer",
                              op);
    for (int s = 0; s < mha_op_source_count(node->op) && s < MHA_MAX_SRC; s++) {
        const mha_cl_buffer *b = node->src[s].buf;
        if (b && (b->flags & CL_MEM_WRITE_ONLY))
            return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                                  "opencl: %s reads a cl_mem created with "
                                  "CL_MEM_WRITE_ONLY (a wrapped input "
                                  "tensor); wrap a readable buffer",
                                  op);
    }
    return MHA_OK;
}

mha_status mha_cl_run(void *d, const mha_node *node)
{
    mha_cl_device *dev = d;
    mha_status s = check_access(dev, node);
    if (s != MHA_OK)
        return s;
    switch (node->op) {
    case MHA_OP_PROJECTION:
        return run_projection(dev, node);
    case MHA_OP_SCORES:
        return run_scores(dev, node);
    case MHA_OP_WEIGHTED_SUM:
        return run_weighted_sum(dev, node);
    case MHA_OP_SOFTMAX:
        return run_softmax(dev, node);
    case MHA_OP_FILL_ROWS:
        return run_elementwise(dev, node, MHA_CL_K_COPY, node->dst.ne);
    case MHA_OP_MEAN_HEADS:
        return run_elementwise(dev, node, MHA_CL_K_MEAN_HEADS,
                               node->src[0].ne);
    case MHA_OP_ATTENTION:
        return run_attention(dev, node);
    case MHA_OP_ROPE:
        return run_rope(dev, node);
    case MHA_OP_MUL:
        return run_mul(dev, node);
    case MHA_OP_HEAD_STATS:
        return run_head_stats(dev, node);
    case MHA_OP_MATMUL:
        return run_matmul(dev, node);
    case MHA_OP_SUM_ROWS:
        return run_sum_rows(dev, node);
    case MHA_OP_ATTENTION_BACKWARD:
        return run_attention_backward(dev, node);
    case MHA_OP_ADAMW:
        return run_adamw(dev, node);
    case MHA_OP_COUNT:
        break;
    }
    return mha_host_error(dev->host, MHA_UNSUPPORTED,
                          "opencl: op %d is not supported", (int)node->op);
}
