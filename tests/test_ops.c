/* test_ops.c: every op of core/backend.h, on every device and CPU ISA the
 * build has, against the double-precision reference (ggml's
 * test-backend-ops idea). One table of cases; each case is a Criterion test
 * named for its parameters, so `test_ops --filter 'ops/scores_mask3d*'`
 * reruns one, and MHA_TEST_DEVICE=cpu/avx2 picks a device. A device that
 * declines a case (supports() says no, as the CPU backend does for fp16)
 * is logged as skipped, and a case no device takes is a skipped test. The
 * threads suite checks that every CPU ISA gives the same bits for any
 * thread count. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "half.h"
#include "reference.h"

enum {
    F_BIAS = 1 << 0,     /* projection bias present */
    F_SEQMAJOR = 1 << 1, /* (L, N, E) input/output layout */
    F_MASK2D = 1 << 2,
    F_MASK3D = 1 << 3,
    F_KPM = 1 << 4,
    F_CAUSAL = 1 << 5,
    F_SEPARATE = 1 << 6, /* softmax into another buffer */
    F_FULLMASK = 1 << 7, /* a row of only -inf */
    F_NANROW = 1 << 8,   /* a row with a NaN */
    F_ZERO = 1 << 9,     /* fill rows with zeros (no source) */
    F_F16 = 1 << 10,     /* the tensors an fp16 layer stores in fp16 */
    F_NANQ = 1 << 11,    /* a NaN in query row 1 */
    F_NANK = 1 << 12,    /* a NaN in key S-1 of the last batch and head */
    F_NANMASK = 1 << 13, /* a NaN mask entry (row 2, key 3) */
    F_INFMASK = 1 << 14, /* a +inf mask entry (row 3, key S-1) */
    F_LARGE = 1 << 15,   /* first input x100: exp overflows unless shifted */
    /* the attention core's extensions (core/backend.h) */
    F_GQA = 1 << 16,     /* kv_group 2: K and V have H / 2 heads */
    F_MQA = 1 << 17,     /* kv_group H: one K/V head */
    F_BOTTOM_RIGHT = 1 << 18, /* causal aligned to the last key */
    F_WINDOW = 1 << 19,  /* sliding window of 6 keys */
    F_SOFTCAP = 1 << 20, /* logit softcap 0.7 */
    F_ALIBI = 1 << 21,   /* ALiBi slopes 2^(-8(h+1)/H) */
    F_SINKS = 1 << 22,   /* a sink logit per head */
    F_KVLEN = 1 << 23,   /* per-sequence key lengths max(L, S - 5b); the
                            keys past them hold NaN, so reading one fails */
    F_REQUIRED = 1 << 24, /* a device of a backend in test_core_required's
                             list may not decline it */
    /* ROPE (K is rope_dims, N the theta, 0: 10000); in place unless
       F_SEPARATE */
    F_GPTJ = 1 << 25,      /* interleaved pairs, else NeoX rotate_half */
    F_POS_BCAST = 1 << 26, /* one row of positions [1,1,1,T] for the batch */
    F_POS_STRIDED = 1 << 27, /* positions every other element of a buffer */
    F_POS_SCALE = 1 << 28, /* linear position scaling: positions / 4 */
    F_F16DST = 1 << 29,    /* only dst is fp16 (the f16 KV cache's append) */
    F_TRAINING = 1 << 30,  /* a training op's case (issue 18): a device of a
                              backend in test_training_required's list may
                              not decline it */
    /* the training ops reuse bits of flags their ops do not read */
    F_ACCUMULATE = F_SEPARATE, /* MATMUL, SUM_ROWS: add into dst */
    F_TRANS_A = F_GPTJ,        /* MATMUL A, SUM_ROWS src: a transposed view */
    F_TRANS_B = F_POS_BCAST,   /* MATMUL B: a transposed view */
    F_BCAST_B = F_POS_STRIDED, /* MATMUL B: one matrix for every batch item
                                  and head (zero outer strides) */
    F_PAD = F_SEQMAJOR,        /* MATMUL: row strides past the row length */
    F_DECAY = F_POS_SCALE,     /* ADAMW: weight decay 0.1, else 0 */
    F_LSE = F_NANROW,          /* ATTENTION: saves its LSE (strided) */
    /* ATTENTION (with F_LSE), ATTENTION_BACKWARD: F_FULLMASK makes mask row
       1 all -inf (needs F_MASK2D or F_MASK3D) */
};

/* Tolerances (STYLE.md): max abs error relative to the largest expected
 * magnitude, and NMSE; fp16 storage rounds to 11 significant bits. */
static const double tol_abs[2] = {1e-4, 1e-2}, tol_nmse[2] = {1e-7, 5e-4};

/* DST_SLOT stands for dst in f16_slots' bit masks. */
#define DST_SLOT MHA_MAX_SRC

typedef struct op_case {
    const char *name;
    mha_op op;
    int64_t B, H, L, S, X, d, K, N; /* X: appended keys past S */
    int flags;
} op_case;

/* A tensor of a case: its descriptor over a host copy and a device copy. */
typedef struct host_tensor {
    mha_tdesc desc; /* buf: host memory (f32; dtype says how the device
                       stores it) */
    float *host;
    size_t span;    /* elements the strides reach */
    void *dev;
} host_tensor;

#define MAX_T 12

typedef struct op_setup {
    host_tensor t[MAX_T];
    int n;
    mha_node node; /* buf fields point at host memory */
} op_setup;

static size_t span_of(const int64_t ne[4], const int64_t nb[4])
{
    size_t s = 1;
    for (int i = 0; i < 4; i++)
        s += (size_t)((ne[i] - 1) * nb[i]);
    return s;
}

/* A tensor with shape ne and strides nb (over a buffer of `floats`, 0 means
 * just what the strides reach), filled by fill(). */
static mha_tdesc *add(op_setup *s, int64_t n0, int64_t n1, int64_t n2,
                      int64_t n3, int64_t b0, int64_t b1, int64_t b2,
                      int64_t b3, size_t offset, size_t floats)
{
    host_tensor *t = &s->t[s->n++];
    int64_t ne[4] = {n0, n1, n2, n3}, nb[4] = {b0, b1, b2, b3};
    t->span = floats ? floats : span_of(ne, nb) + offset;
    t->host = calloc(t->span, sizeof(float));
    t->desc.dtype = MHA_F32;
    memcpy(t->desc.ne, ne, sizeof ne);
    memcpy(t->desc.nb, nb, sizeof nb);
    t->desc.buf = t->host;
    t->desc.offset = offset * sizeof(float);
    return &t->desc;
}

static mha_tdesc *contiguous(op_setup *s, int64_t n0, int64_t n1, int64_t n2,
                             int64_t n3)
{
    return add(s, n0, n1, n2, n3, n1 * n2 * n3, n2 * n3, n3, 1, 0, 0);
}

/* The [B,H,T,d] head view of a [B,T,H*d] buffer (split heads as a view),
 * with H heads, or fewer (K and V of grouped-query attention). */
static mha_tdesc *heads_of(op_setup *s, const op_case *c, int64_t T,
                           int64_t H)
{
    int64_t E = H * c->d;
    return add(s, c->B, H, T, c->d, T * E, c->d, E, 1, 0, 0);
}

static mha_tdesc *heads(op_setup *s, const op_case *c, int64_t T)
{
    return heads_of(s, c, T, c->H);
}

/* Query heads per K/V head. */
static int32_t kv_group(const op_case *c)
{
    return c->flags & F_MQA ? (int32_t)c->H : c->flags & F_GQA ? 2 : 1;
}

static void fill_normal(host_tensor *t, test_rng *r, float scale)
{
    for (size_t i = 0; i < t->span; i++)
        t->host[i] = test_normal(r) * scale;
}

/* Additive mask values: some -inf, the rest small. */
static void fill_mask(host_tensor *t, test_rng *r, float masked)
{
    for (size_t i = 0; i < t->span; i++)
        t->host[i] = test_uniform(r) < masked ? -INFINITY
                                              : 0.5f * test_normal(r);
}

/* The tensor whose host memory a (copied) descriptor points at. */
static host_tensor *tensor_of(op_setup *s, const mha_tdesc *d)
{
    for (int i = 0; i < s->n; i++)
        if (s->t[i].host == d->buf)
            return &s->t[i];
    return NULL;
}

/* The element (i0, i1, i2, i3) of the host copy of d, set to x. */
static void plant(op_setup *s, const mha_tdesc *d, int64_t i0, int64_t i1,
                  int64_t i2, int64_t i3, float x)
{
    tensor_of(s, d)->host[d->offset / sizeof(float) + i0 * d->nb[0] +
                          i1 * d->nb[1] + i2 * d->nb[2] + i3 * d->nb[3]] = x;
}

static size_t count_of(const mha_tdesc *d)
{
    return (size_t)(d->ne[0] * d->ne[1] * d->ne[2] * d->ne[3]);
}

/* Sets the host copy of d to vals, given in logical order. */
static void scatter(op_setup *s, const mha_tdesc *d, const double *vals)
{
    size_t k = 0;
    for (int64_t a = 0; a < d->ne[0]; a++)
        for (int64_t b = 0; b < d->ne[1]; b++)
            for (int64_t c = 0; c < d->ne[2]; c++)
                for (int64_t e = 0; e < d->ne[3]; e++)
                    plant(s, d, a, b, c, e, (float)vals[k++]);
}

/* The NaN, Inf and large values of F_NAN*, F_INFMASK and F_LARGE. */
static void plant_specials(op_setup *s, const op_case *c)
{
    const mha_node *n = &s->node;
    if (c->flags & F_LARGE)
        for (size_t i = 0; i < s->t[0].span; i++)
            s->t[0].host[i] *= 100.0f;
    if (c->flags & F_NANQ)
        plant(s, &n->src[MHA_SRC_Q], 0, 0, 1, 0, NAN);
    if (c->flags & F_NANK)
        plant(s, &n->src[MHA_SRC_K], c->B - 1, c->H - 1, c->S - 1, c->d - 1,
              NAN);
    if (c->flags & F_NANMASK)
        plant(s, &n->src[MHA_SRC_MASK], 0, 0, 2, 3, NAN);
    if (c->flags & F_INFMASK)
        plant(s, &n->src[MHA_SRC_MASK], 0, 0, 3, c->S - 1, INFINITY);
}

static void setup_masks(op_setup *s, const op_case *c, test_rng *r)
{
    mha_node *n = &s->node;
    int64_t B = c->B, H = c->H, L = c->L, S = c->S;
    if (c->flags & F_MASK2D)
        n->src[MHA_SRC_MASK] = *add(s, B, H, L, S, 0, 0, S, 1, 0, 0);
    if (c->flags & F_MASK3D)
        n->src[MHA_SRC_MASK] = *add(s, B, H, L, S, H * L * S, L * S, S, 1, 0, 0);
    if (c->flags & F_KPM)
        n->src[MHA_SRC_KPM] = *add(s, B, H, L, S, S, 0, 0, 1, 0, 0);
    if (c->flags & (F_MASK2D | F_MASK3D))
        fill_mask(tensor_of(s, &n->src[MHA_SRC_MASK]), r, 0.25f);
    if (c->flags & F_KPM)
        fill_mask(tensor_of(s, &n->src[MHA_SRC_KPM]), r, 0.25f);
    n->params.scale = (float)(1.0 / sqrt((double)c->d));
    n->params.causal = (c->flags & F_CAUSAL) != 0;
    n->params.mask_cols = S;
}

/* Per-sequence key lengths as MHA_I32 (their bits in the float copy), and
 * NaN in every K and V row past them. */
static void setup_kv_len(op_setup *s, const op_case *c)
{
    mha_node *n = &s->node;
    mha_tdesc *l = add(s, 1, 1, 1, c->B, 0, 0, 0, 1, 0, 0);
    l->dtype = MHA_I32;
    n->src[MHA_SRC_KV_LEN] = *l;
    int32_t *len = (int32_t *)tensor_of(s, l)->host;
    for (int64_t b = 0; b < c->B; b++) {
        len[b] = (int32_t)(c->S - 5 * b > c->L ? c->S - 5 * b : c->L);
        for (int64_t h = 0; h < n->src[MHA_SRC_K].ne[1]; h++)
            for (int64_t j = len[b]; j < c->S; j++)
                for (int64_t e = 0; e < c->d; e++) {
                    plant(s, &n->src[MHA_SRC_K], b, h, j, e, NAN);
                    plant(s, &n->src[MHA_SRC_V], b, h, j, e, NAN);
                }
    }
}

/* The attention core's extensions a case's flags ask for. */
static void setup_core(op_setup *s, const op_case *c)
{
    mha_node *n = &s->node;
    mha_op_params *p = &n->params;
    p->kv_group = kv_group(c);
    if (c->flags & F_BOTTOM_RIGHT)
        p->causal = MHA_CAUSAL_BOTTOM_RIGHT;
    p->window = c->flags & F_WINDOW ? 6 : 0;
    p->softcap = c->flags & F_SOFTCAP ? 0.7f : 0.0f;
    if (c->flags & F_ALIBI) {
        int slot = n->op == MHA_OP_ATTENTION_BACKWARD ? MHA_SRC_BWD_ALIBI
                                                      : MHA_SRC_ALIBI;
        n->src[slot] = *contiguous(s, 1, 1, 1, c->H);
        for (int64_t h = 0; h < c->H; h++)
            plant(s, &n->src[slot], 0, 0, 0, h,
                  exp2f(-8.0f * (float)(h + 1) / (float)c->H));
    }
    if (c->flags & F_SINKS) {
        n->src[MHA_SRC_SINKS] = *contiguous(s, 1, 1, 1, c->H);
        for (int64_t h = 0; h < c->H; h++)
            plant(s, &n->src[MHA_SRC_SINKS], 0, 0, 0, h,
                  0.5f * (float)h - 0.5f);
    }
    if (c->flags & F_KVLEN)
        setup_kv_len(s, c);
}

/* Positions of ROPE (MHA_I32, their bits in the float copy): not
 * contiguous (gaps, not starting at 0, the last one past 300); the layout
 * per F_POS_*. */
static void setup_rope(op_setup *s, const op_case *c, test_rng *r)
{
    mha_node *n = &s->node;
    mha_op_params *p = &n->params;
    int64_t rows = c->flags & F_POS_BCAST ? 1 : c->B;
    int64_t step = c->flags & F_POS_STRIDED ? 2 : 1;
    p->rope_style = c->flags & F_GPTJ ? MHA_ROPE_GPTJ : MHA_ROPE_NEOX;
    p->rope_dims = (int32_t)c->K;
    p->rope_theta = c->N ? (float)c->N : 10000.0f;
    p->rope_pos_scale = c->flags & F_POS_SCALE ? 0.25f : 1.0f;
    if (!c->K)
        return;
    mha_tdesc *pos = add(s, 1, 1, rows, c->L, 0, 0,
                         rows == 1 ? 0 : step * c->L, step, 0, 0);
    pos->dtype = MHA_I32;
    n->src[MHA_SRC_ROPE_POS] = *pos;
    int32_t *v = (int32_t *)tensor_of(s, pos)->host;
    for (int64_t b = 0; b < rows; b++)
        for (int64_t t = 0; t < c->L; t++)
            v[(b * c->L + t) * step] =
                (int32_t)(3 * t + 7 * b + (t == c->L - 1 ? 300 : 0) +
                          (int32_t)(4.0f * test_uniform(r)));
}

/* The slots (bit DST_SLOT: dst) an fp16 layer's graph stores in fp16: its
 * weights and head data; inputs, masks, scores and probabilities stay f32. */
static unsigned f16_slots(mha_op op)
{
    switch (op) {
    case MHA_OP_PROJECTION: return 1u << 1 | 1u << 2 | 1u << DST_SLOT;
    case MHA_OP_FILL_ROWS: return 1u << 0 | 1u << DST_SLOT;
    case MHA_OP_SCORES: return 1u << MHA_SRC_Q | 1u << MHA_SRC_K;
    case MHA_OP_WEIGHTED_SUM: return 1u << 1 | 1u << DST_SLOT;
    case MHA_OP_ATTENTION:
        return 1u << MHA_SRC_Q | 1u << MHA_SRC_K | 1u << MHA_SRC_V |
               1u << DST_SLOT;
    case MHA_OP_ROPE: return 1u << MHA_SRC_ROPE_X | 1u << DST_SLOT;
    case MHA_OP_MUL: return 1u << MHA_SRC_MUL_X | 1u << DST_SLOT;
    case MHA_OP_SOFTMAX:
    case MHA_OP_MEAN_HEADS:
    case MHA_OP_HEAD_STATS:
    case MHA_OP_MATMUL:
    case MHA_OP_SUM_ROWS:
    case MHA_OP_ATTENTION_BACKWARD:
    case MHA_OP_ADAMW:
    case MHA_OP_COUNT:
        break;
    }
    return 0;
}

/* Marks the tensors of the slots fp16 and rounds their host values to fp16,
 * so the reference sees exactly what the device stores. */
static void to_f16(op_setup *s, unsigned slots)
{
    mha_node *n = &s->node;
    for (int k = 0; k <= DST_SLOT; k++) {
        mha_tdesc *d = k == DST_SLOT ? &n->dst : &n->src[k];
        host_tensor *t = (slots >> k & 1u) ? tensor_of(s, d) : NULL;
        if (!t)
            continue;
        d->dtype = t->desc.dtype = MHA_F16;
        for (size_t i = 0; i < t->span; i++)
            t->host[i] = mha_f16_to_f32(mha_f32_to_f16(t->host[i]));
    }
}

static size_t esize(const host_tensor *t)
{
    return t->desc.dtype == MHA_F16 ? 2 : 4;
}

/* Rows of HEAD_STATS' probabilities: uniform weights, about a quarter of
 * them 0, normalised; one row of zeros (all keys masked) with F_FULLMASK
 * and a one-hot row that puts everything on the previous key. */
static void fill_probabilities(op_setup *s, const op_case *c, test_rng *r)
{
    const mha_tdesc *p = &s->node.src[0];
    int64_t S2 = c->S + c->X;
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->H; h++)
            for (int64_t i = 0; i < c->L; i++) {
                float w[2048], sum = 0.0f;
                for (int64_t j = 0; j < S2; j++) {
                    float u = test_uniform(r);
                    w[j] = u < 0.25f ? 0.0f : u * u;
                    sum += w[j];
                }
                for (int64_t j = 0; j < S2; j++)
                    plant(s, p, b, h, i, j, sum > 0 ? w[j] / sum : 0.0f);
            }
    for (int64_t j = 0; j < S2; j++) {
        if (c->flags & F_FULLMASK)
            plant(s, p, 0, 0, 1, j, 0.0f);
        plant(s, p, c->B - 1, c->H - 1, 2, j, j == 1 ? 1.0f : 0.0f);
    }
}

/* A [B,H,rows,cols] matrix of case c: row-major, its rows F_PAD floats
 * apart; trans: a transposed view of a stored [cols,rows] one; bcast: one
 * matrix for every batch item and head (zero strides). */
static mha_tdesc *matrix(op_setup *s, const op_case *c, int64_t rows,
                         int64_t cols, int trans, int bcast)
{
    int64_t ld = (trans ? rows : cols) + (c->flags & F_PAD ? 3 : 0);
    int64_t one = trans ? cols * ld : rows * ld;
    return add(s, c->B, c->H, rows, cols, bcast ? 0 : c->H * one,
               bcast ? 0 : one, trans ? 1 : ld, trans ? ld : 1, 0, 0);
}

/* The saving forward's LSE (F_LSE, strided: batch and head swapped), and
 * the backward's O and LSE made by the reference forward of its Q, K, V
 * and masks, so the gradients are those of a real forward. F_FULLMASK
 * masks every key of query row 1. */
static void setup_training_attention(op_setup *s, const op_case *c)
{
    mha_node *n = &s->node;
    if (c->flags & F_FULLMASK)
        for (int64_t j = 0; j < c->S; j++)
            plant(s, &n->src[MHA_SRC_MASK], 0, 0, 1, j, -INFINITY);
    if (n->op == MHA_OP_ATTENTION) {
        if (c->flags & F_LSE)
            n->extra_dst[MHA_DST_LSE] =
                *add(s, c->B, c->H, 1, c->L, c->L, c->B * c->L, 0, 1, 0, 0);
        return;
    }
    mha_node f = *n;
    f.op = MHA_OP_ATTENTION;
    f.dst = n->src[MHA_SRC_BWD_O];
    f.extra_dst[MHA_DST_LSE] = n->src[MHA_SRC_BWD_LSE];
    for (int k = MHA_SRC_SINKS; k < MHA_MAX_SRC; k++)
        f.src[k].buf = NULL;
    f.src[MHA_SRC_ALIBI] = n->src[MHA_SRC_BWD_ALIBI];
    size_t no = count_of(&f.dst), nl = count_of(&f.extra_dst[0]);
    double *o = malloc(no * sizeof *o), *lse = malloc(nl * sizeof *lse);
    double *out[REF_MAX_OUT] = {o, lse};
    ref_run_all(&f, out);
    scatter(s, &f.dst, o);
    scatter(s, &f.extra_dst[0], lse);
    free(o);
    free(lse);
}

/* Step 3 of AdamW with torch's betas, a large learning rate and epsilon
 * (so a wrong bias correction or epsilon shows) and non-negative V. */
static void setup_adamw(op_setup *s, const op_case *c)
{
    mha_op_params *p = &s->node.params;
    host_tensor *v = tensor_of(s, &s->node.src[MHA_SRC_ADAM_V]);
    p->adam_lr = 0.05f;
    p->adam_beta1 = 0.9f;
    p->adam_beta2 = 0.999f;
    p->adam_eps = 0.01f;
    p->adam_weight_decay = c->flags & F_DECAY ? 0.1f : 0.0f;
    p->adam_bc1 = 1.0f - powf(p->adam_beta1, 3.0f);
    p->adam_bc2 = 1.0f - powf(p->adam_beta2, 3.0f);
    for (size_t i = 0; i < v->span; i++)
        v->host[i] = 0.01f * v->host[i] * v->host[i];
}

static void setup(op_setup *s, const op_case *c, test_rng *r)
{
    mha_node *n = &s->node;
    int64_t B = c->B, H = c->H, L = c->L, S2 = c->S + c->X;
    int64_t K = c->K, N = c->N;
    int seq = (c->flags & F_SEQMAJOR) != 0;
    memset(s, 0, sizeof *s);
    n->op = c->op;
    switch (c->op) {
    case MHA_OP_PROJECTION:
        n->src[0] = *add(s, B, 1, L, K, seq ? K : L * K, 0, seq ? B * K : K, 1, 0, 0);
        n->src[1] = *contiguous(s, 1, 1, N, K);
        if (c->flags & F_BIAS)
            n->src[2] = *contiguous(s, 1, 1, 1, N);
        n->dst = *add(s, B, 1, L, N, seq ? N : L * N, 0, seq ? B * N : N, 1, 0, 0);
        break;
    case MHA_OP_FILL_ROWS:
        if (!(c->flags & F_ZERO))
            n->src[0] = *contiguous(s, 1, 1, 1, N);
        n->dst = *add(s, B, 1, 2, N, (L + 2) * N, 0, N, 1, (size_t)(L * N),
                      (size_t)(B * (L + 2) * N));
        break;
    case MHA_OP_SCORES:
    case MHA_OP_ATTENTION:
        n->src[MHA_SRC_Q] = *heads(s, c, L);
        n->src[MHA_SRC_K] = *heads_of(s, c, S2, c->H / kv_group(c));
        if (c->op == MHA_OP_ATTENTION) {
            n->src[MHA_SRC_V] = *heads_of(s, c, S2, c->H / kv_group(c));
            n->dst = *heads(s, c, L);
        } else {
            n->dst = *contiguous(s, B, H, L, S2);
        }
        break;
    case MHA_OP_SOFTMAX:
        n->src[0] = *contiguous(s, B, H, L, S2);
        n->dst = c->flags & F_SEPARATE ? *contiguous(s, B, H, L, S2) : n->src[0];
        break;
    case MHA_OP_WEIGHTED_SUM:
        n->src[0] = *contiguous(s, B, H, L, S2);
        n->src[1] = *heads(s, c, S2);
        n->dst = *heads(s, c, L);
        break;
    case MHA_OP_MEAN_HEADS:
        n->src[0] = *contiguous(s, B, H, L, S2);
        n->dst = *contiguous(s, B, 1, L, S2);
        break;
    case MHA_OP_ROPE:
        n->src[MHA_SRC_ROPE_X] = *heads(s, c, L);
        n->dst = c->flags & F_SEPARATE ? *contiguous(s, B, H, L, c->d)
                                       : n->src[MHA_SRC_ROPE_X];
        break;
    case MHA_OP_MUL: /* head gates: F_POS_BCAST shares one row of gates */
        n->src[MHA_SRC_MUL_X] = *heads(s, c, L);
        n->src[MHA_SRC_MUL_F] = *add(s, B, H, L, c->d,
                                     c->flags & F_POS_BCAST ? 0 : H, 1, 0, 0,
                                     0, 0);
        n->dst = c->flags & F_SEPARATE ? *contiguous(s, B, H, L, c->d)
                                       : n->src[MHA_SRC_MUL_X];
        break;
    case MHA_OP_HEAD_STATS:
        n->src[0] = c->flags & F_SEPARATE
                        ? *add(s, B, H, L, S2, L * (H + 1) * S2, S2,
                               (H + 1) * S2, 1, 0, 0)
                        : *contiguous(s, B, H, L, S2);
        n->dst = *contiguous(s, B, H, 1, MHA_HEAD_STATS_COLS + H);
        break;
    case MHA_OP_MATMUL: /* B, H outer dims; M = L, K, N */
        n->src[MHA_SRC_MM_A] = *matrix(s, c, L, K, c->flags & F_TRANS_A, 0);
        n->src[MHA_SRC_MM_B] = *matrix(s, c, K, N, c->flags & F_TRANS_B,
                                       c->flags & F_BCAST_B);
        n->dst = *contiguous(s, B, H, L, N);
        n->params.accumulate = (c->flags & F_ACCUMULATE) != 0;
        break;
    case MHA_OP_SUM_ROWS:
        n->src[0] = *matrix(s, c, L, N, c->flags & F_TRANS_A, 0);
        n->dst = *contiguous(s, B, H, 1, N);
        n->params.accumulate = (c->flags & F_ACCUMULATE) != 0;
        break;
    case MHA_OP_ATTENTION_BACKWARD:
        n->src[MHA_SRC_Q] = *heads(s, c, L);
        n->src[MHA_SRC_K] = *heads(s, c, S2);
        n->src[MHA_SRC_V] = *heads(s, c, S2);
        n->src[MHA_SRC_BWD_O] = *heads(s, c, L);
        n->src[MHA_SRC_BWD_DO] = *heads(s, c, L);
        n->src[MHA_SRC_BWD_LSE] = *contiguous(s, B, H, 1, L);
        n->dst = *heads(s, c, L);
        n->extra_dst[MHA_DST_DK] = *heads(s, c, S2);
        n->extra_dst[MHA_DST_DV] = *heads(s, c, S2);
        break;
    case MHA_OP_ADAMW:
        n->dst = *contiguous(s, 1, 1, 1, N);
        for (int k = MHA_SRC_ADAM_G; k <= MHA_SRC_ADAM_V; k++)
            n->src[k] = *contiguous(s, 1, 1, 1, N);
        break;
    case MHA_OP_COUNT:
        break;
    }
    for (int i = 0; i < s->n; i++)
        fill_normal(&s->t[i], r, c->op == MHA_OP_PROJECTION && i == 1
                                     ? 1.0f / sqrtf((float)K) : 1.0f);
    if (c->op == MHA_OP_WEIGHTED_SUM || c->op == MHA_OP_MEAN_HEADS)
        for (size_t i = 0; i < s->t[0].span; i++)
            s->t[0].host[i] = test_uniform(r);
    if (c->op == MHA_OP_HEAD_STATS)
        fill_probabilities(s, c, r);
    if (c->op == MHA_OP_SOFTMAX) {
        host_tensor *a = &s->t[0];
        fill_mask(a, r, 0.2f);
        for (size_t i = 0; i < a->span; i++)
            a->host[i] = isinf(a->host[i]) ? a->host[i] : 3.0f * test_normal(r);
        if (c->flags & F_FULLMASK)
            for (int64_t j = 0; j < S2; j++)
                a->host[j] = -INFINITY;
        if (c->flags & F_NANROW)
            a->host[S2 + 1] = NAN;
    }
    if (c->op == MHA_OP_SCORES || c->op == MHA_OP_ATTENTION ||
        c->op == MHA_OP_ATTENTION_BACKWARD)
        setup_masks(s, c, r);
    if (c->op == MHA_OP_ATTENTION || c->op == MHA_OP_ATTENTION_BACKWARD)
        setup_core(s, c);
    if (c->op == MHA_OP_ATTENTION || c->op == MHA_OP_ATTENTION_BACKWARD)
        setup_training_attention(s, c);
    if (c->op == MHA_OP_ADAMW)
        setup_adamw(s, c);
    if (c->op == MHA_OP_ROPE)
        setup_rope(s, c, r);
    if (c->flags & F_F16)
        to_f16(s, f16_slots(c->op));
    if (c->flags & F_F16DST)
        to_f16(s, 1u << DST_SLOT);
    plant_specials(s, c);
}

/* Device buffers mirroring the host tensors (fp16 ones converted); the
 * node then points at them, offsets in the device's element size. */
static void upload(op_setup *s, mha_device *dev, mha_node *dn)
{
    *dn = s->node;
    for (int i = 0; i < s->n; i++) {
        host_tensor *t = &s->t[i];
        uint16_t *half = esize(t) == 2 ? malloc(t->span * 2) : NULL;
        for (size_t k = 0; half && k < t->span; k++)
            half[k] = mha_f32_to_f16(t->host[k]);
        cr_assert_eq(mha_dev_alloc(dev, t->span * esize(t), &t->dev), MHA_OK);
        cr_assert_eq(mha_dev_write(dev, t->dev, 0,
                                   half ? (void *)half : (void *)t->host,
                                   t->span * esize(t)),
                     MHA_OK);
        free(half);
    }
    for (int k = -1 - MHA_MAX_EXTRA_DST; k < MHA_MAX_SRC; k++) {
        mha_tdesc *d = k == -1 ? &dn->dst
                       : k < 0 ? &dn->extra_dst[-2 - k] : &dn->src[k];
        host_tensor *t = d->buf ? tensor_of(s, d) : NULL;
        if (t) {
            d->buf = t->dev;
            d->offset = d->offset / sizeof(float) * esize(t);
        }
    }
}

static void release(op_setup *s, mha_device *dev)
{
    for (int i = 0; i < s->n; i++) {
        if (dev)
            mha_dev_free(dev, s->t[i].dev, s->t[i].span * esize(&s->t[i]));
        s->t[i].dev = NULL;
    }
}

/* The span of t read back from the device as floats. */
static float *read_back(mha_device *dev, const host_tensor *t)
{
    float *raw = malloc(t->span * sizeof *raw);
    uint16_t *half = esize(t) == 2 ? malloc(t->span * 2) : NULL;
    cr_assert_eq(mha_dev_read(dev, t->dev, 0,
                              half ? (void *)half : (void *)raw,
                              t->span * esize(t)),
                 MHA_OK);
    for (size_t k = 0; half && k < t->span; k++)
        raw[k] = mha_f16_to_f32(half[k]);
    free(half);
    return raw;
}

/* The dst elements of a downloaded buffer, in logical order. */
static void gather(const mha_tdesc *d, const float *buf, float *out)
{
    size_t k = 0;
    const float *base = buf + d->offset / sizeof(float);
    for (int64_t a = 0; a < d->ne[0]; a++)
        for (int64_t b = 0; b < d->ne[1]; b++)
            for (int64_t c = 0; c < d->ne[2]; c++)
                for (int64_t e = 0; e < d->ne[3]; e++)
                    out[k++] = base[a * d->nb[0] + b * d->nb[1] +
                                    c * d->nb[2] + e * d->nb[3]];
}

/* Runs the case's node on dev and returns in raw[k] the raw floats of the
 * buffer of its k-th output (ref_outputs; the caller frees them) and how
 * many; the device copies are released. */
static int run_node(const op_case *c, const char *label, mha_context *ctx,
                    mha_device *dev, op_setup *s, float *raw[REF_MAX_OUT])
{
    mha_node dn;
    const mha_tdesc *outs[REF_MAX_OUT];
    upload(s, dev, &dn);
    cr_assert(mha_dev_supports(dev, &dn), "%s on %s: op %s is not "
              "supported", c->name, label, mha_op_name(c->op));
    cr_assert_eq(mha_dev_run(dev, &dn), MHA_OK, "%s on %s: %s", c->name,
                 label, mha_context_errmsg(ctx));
    cr_assert_eq(mha_dev_sync(dev), MHA_OK, "%s on %s: %s", c->name, label,
                 mha_context_errmsg(ctx));
    int count = ref_outputs(&s->node, outs);
    for (int k = 0; k < count; k++)
        raw[k] = read_back(dev, tensor_of(s, outs[k]));
    release(s, dev);
    return count;
}

/* Output k of a case against the reference want. */
static void check_output(const op_case *c, const test_device *td,
                         const mha_tdesc *t, int k, const float *raw,
                         const double *want)
{
    int f16 = (c->flags & (F_F16 | F_F16DST)) != 0 && k == 0;
    size_t n = count_of(t);
    float *got = malloc(n * sizeof *got);
    gather(t, raw, got);
    test_diff d = test_compare(got, want, n);
    double scale = 1.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabs(want[i]) > scale)
            scale = fabs(want[i]);
    cr_expect_eq(d.nonfinite_mismatch, 0, "%s on %s, output %d: %zu NaN/Inf "
                 "mismatches, first at %zu: got %g want %g", c->name,
                 td->label, k, d.nonfinite_mismatch, d.worst_nf,
                 got[d.worst_nf], want[d.worst_nf]);
    cr_expect_leq(d.max_abs, tol_abs[f16] * scale, "%s on %s, output %d: max "
                  "abs error %g at %zu (got %g want %g)", c->name, td->label,
                  k, d.max_abs, d.worst, got[d.worst], want[d.worst]);
    cr_expect_leq(d.nmse, tol_nmse[f16], "%s on %s, output %d: NMSE %g",
                  c->name, td->label, k, d.nmse);
    free(got);
}

/* Checks case c on device td; returns 0, logged as skipped, when the
 * device declines it (supports() looks only at whether buf is NULL, so
 * the host descriptors do). */
static int check_on_device(const op_case *c, const test_device *td,
                           mha_context *ctx, op_setup *s,
                           double *const want[REF_MAX_OUT])
{
    mha_device *dev = test_open(ctx, td);
    if (!mha_dev_supports(dev, &s->node)) {
        mha_device_info info;
        mha_device_info_of(dev, &info);
        int no_f16 = (c->flags & F_F16) &&
                     !(info.features & MHA_FEATURE_FP16_STORAGE);
        cr_expect(!(c->flags & F_REQUIRED) || !test_core_required(td) ||
                      no_f16,
                  "%s: %s declines it, but its backend implements the "
                  "attention core", c->name, td->label);
        cr_expect(!(c->flags & F_TRAINING) || !test_training_required(td),
                  "%s: %s declines it, but its backend implements the "
                  "training ops", c->name, td->label);
        cr_log_info("%s: skipped on %s, which declines it", c->name,
                    td->label);
        mha_device_destroy(dev);
        return 0;
    }
    float *raw[REF_MAX_OUT];
    const mha_tdesc *outs[REF_MAX_OUT];
    int count = run_node(c, td->label, ctx, dev, s, raw);
    ref_outputs(&s->node, outs);
    for (int k = 0; k < count; k++) {
        check_output(c, td, outs[k], k, raw[k], want[k]);
        free(raw[k]);
    }
    mha_device_destroy(dev);
    return 1;
}

static void teardown(op_setup *s, mha_context *ctx)
{
    for (int i = 0; i < s->n; i++)
        free(s->t[i].host);
    mha_context_destroy(ctx);
}

static void run_case(const op_case *c)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_rng r = {0x5eed0000u + (uint64_t)c->op};
    op_setup s;
    setup(&s, c, &r);
    const mha_tdesc *outs[REF_MAX_OUT];
    double *want[REF_MAX_OUT] = {NULL};
    int count = ref_outputs(&s.node, outs);
    for (int k = 0; k < count; k++)
        want[k] = malloc(count_of(outs[k]) * sizeof *want[k]);
    ref_run_all(&s.node, want);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++)
        ran += check_on_device(c, &devs[i], ctx, &s, want);
    for (int k = 0; k < count; k++)
        free(want[k]);
    teardown(&s, ctx);
    if (!ran)
        cr_skip_test("%s: every device declines it", c->name);
}

/* name, op, B, H, L, S, X, d, K, N, flags */
#define OP_CASES(X)                                                          \
    X(projection_bias, PROJECTION, 2, 1, 7, 0, 0, 0, 24, 36, F_BIAS)          \
    X(projection_nobias_seqmajor, PROJECTION, 3, 1, 5, 0, 0, 0, 17, 9,       \
      F_SEQMAJOR)                                                            \
    X(projection_large, PROJECTION, 1, 1, 130, 0, 0, 0, 96, 300, F_BIAS)     \
    X(projection_one_row, PROJECTION, 1, 1, 1, 0, 0, 0, 5, 3, F_BIAS)        \
    X(fill_rows_bias, FILL_ROWS, 3, 1, 4, 0, 0, 0, 0, 20, 0)                 \
    X(fill_rows_zero, FILL_ROWS, 2, 1, 3, 0, 0, 0, 0, 12, F_ZERO)            \
    X(scores_plain, SCORES, 2, 2, 5, 7, 0, 8, 0, 0, 0)                       \
    X(scores_mask2d, SCORES, 2, 3, 4, 6, 0, 8, 0, 0, F_MASK2D)               \
    X(scores_mask3d_kpm, SCORES, 2, 2, 5, 6, 0, 4, 0, 0, F_MASK3D | F_KPM)   \
    X(scores_causal_extra, SCORES, 1, 2, 6, 6, 2, 8, 0, 0,                   \
      F_CAUSAL | F_KPM)                                                      \
    X(softmax_inplace, SOFTMAX, 2, 2, 4, 9, 0, 0, 0, 0, F_FULLMASK)          \
    X(softmax_separate_nan, SOFTMAX, 1, 2, 3, 17, 0, 0, 0, 0,                \
      F_SEPARATE | F_FULLMASK | F_NANROW)                                    \
    X(softmax_wide, SOFTMAX, 1, 1, 3, 1000, 0, 0, 0, 0, 0)                   \
    X(weighted_sum, WEIGHTED_SUM, 2, 3, 5, 7, 1, 8, 0, 0, 0)                 \
    X(mean_heads, MEAN_HEADS, 2, 4, 3, 6, 0, 0, 0, 0, 0)                     \
    X(attention_plain, ATTENTION, 2, 2, 5, 7, 0, 8, 0, 0, 0)                 \
    X(attention_masks, ATTENTION, 2, 3, 6, 9, 0, 8, 0, 0,                    \
      F_MASK3D | F_KPM)                                                      \
    X(attention_causal_extra, ATTENTION, 1, 2, 40, 40, 2, 16, 0, 0,          \
      F_CAUSAL | F_MASK2D)                                                   \
    X(attention_long, ATTENTION, 1, 2, 70, 300, 1, 32, 0, 0, F_KPM)          \
    X(attention_head64, ATTENTION, 1, 1, 33, 65, 0, 64, 0, 0, F_CAUSAL)      \
    X(attention_one_query, ATTENTION, 2, 2, 1, 5, 0, 8, 0, 0, F_MASK2D)      \
    X(attention_one_key, ATTENTION, 1, 2, 4, 1, 0, 4, 0, 0, 0)               \
    X(projection_f16, PROJECTION, 2, 1, 7, 0, 0, 0, 24, 36, F_BIAS | F_F16)  \
    X(fill_rows_f16, FILL_ROWS, 3, 1, 4, 0, 0, 0, 0, 20, F_F16)              \
    X(scores_f16_masks, SCORES, 2, 3, 4, 6, 0, 8, 0, 0,                      \
      F_MASK2D | F_KPM | F_F16)                                              \
    X(weighted_sum_f16, WEIGHTED_SUM, 2, 3, 5, 7, 1, 8, 0, 0, F_F16)         \
    X(attention_f16_causal, ATTENTION, 1, 2, 40, 40, 2, 16, 0, 0,            \
      F_CAUSAL | F_MASK3D | F_KPM | F_F16)                                   \
    X(projection_packed_seqmajor, PROJECTION, 2, 1, 45, 0, 0, 0, 130, 333,   \
      F_BIAS | F_SEQMAJOR)                                                   \
    X(scores_row_blocks_causal, SCORES, 1, 2, 130, 140, 1, 8, 0, 0,          \
      F_CAUSAL | F_MASK2D)                                                   \
    X(weighted_sum_row_blocks, WEIGHTED_SUM, 1, 2, 131, 70, 0, 12, 0, 0, 0)  \
    X(attention_tiles_masks, ATTENTION, 2, 3, 100, 260, 0, 40, 0, 0,         \
      F_MASK3D | F_KPM)                                                      \
    X(projection_tile128, PROJECTION, 1, 1, 520, 0, 0, 0, 40, 520, F_BIAS)  \
    X(projection_two_slabs, PROJECTION, 1, 1, 9, 0, 0, 0, 2100, 2050,       \
      F_BIAS)                                                                \
    X(attention_causal_blocks, ATTENTION, 1, 2, 300, 300, 2, 24, 0, 0,       \
      F_CAUSAL | F_KPM)                                                      \
    X(attention_cross_causal, ATTENTION, 1, 1, 70, 200, 0, 64, 0, 0,         \
      F_CAUSAL)                                                              \
    X(rope_neox, ROPE, 2, 3, 5, 0, 0, 16, 16, 0, 0)                          \
    X(rope_gptj_separate, ROPE, 2, 2, 4, 0, 0, 8, 8, 0,                      \
      F_GPTJ | F_SEPARATE)                                                   \
    X(rope_partial_neox, ROPE, 1, 2, 6, 0, 0, 20, 8, 500000,                 \
      F_POS_BCAST | F_SEPARATE)                                              \
    X(rope_partial_gptj_scaled, ROPE, 3, 2, 3, 0, 0, 12, 6, 0,               \
      F_GPTJ | F_POS_STRIDED | F_POS_SCALE)                                  \
    X(rope_head128, ROPE, 1, 4, 9, 0, 0, 128, 128, 1000000, F_POS_STRIDED)   \
    X(rope_f16, ROPE, 2, 2, 5, 0, 0, 32, 32, 0, F_F16)                       \
    X(rope_f16_gptj_separate, ROPE, 1, 3, 4, 0, 0, 16, 10, 0,                \
      F_F16 | F_GPTJ | F_SEPARATE)                                           \
    X(rope_copy_to_f16, ROPE, 2, 3, 4, 0, 0, 16, 0, 0, F_SEPARATE | F_F16DST) \
    X(mul_head_gates, MUL, 2, 3, 5, 0, 0, 16, 0, 0, F_SEPARATE)              \
    X(mul_shared_gates_in_place, MUL, 3, 2, 4, 0, 0, 8, 0, 0, F_POS_BCAST)   \
    X(mul_f16_gates, MUL, 2, 4, 3, 0, 0, 32, 0, 0, F_F16 | F_SEPARATE)      \
    X(head_stats, HEAD_STATS, 2, 3, 6, 7, 1, 0, 0, 0, F_FULLMASK)            \
    X(head_stats_strided, HEAD_STATS, 1, 4, 70, 90, 0, 0, 0, 0, F_SEPARATE)  \
    X(head_stats_one_key, HEAD_STATS, 2, 2, 3, 1, 0, 0, 0, 0, 0)

#define DEFINE_OP_TEST(name, op_, B_, H_, L_, S_, X_, d_, K_, N_, flags_)    \
    Test(ops, name)                                                          \
    {                                                                        \
        op_case c = {#name, MHA_OP_##op_, B_, H_, L_, S_, X_, d_, K_, N_,    \
                     flags_};                                                \
        run_case(&c);                                                        \
    }
OP_CASES(DEFINE_OP_TEST)

/* NaN and Inf through the fused attention: a NaN query, key or mask entry
 * and a +inf mask entry make NaN rows as in PyTorch, on the packed (L of a
 * register tile or more) and in-place paths, behind causal and after it;
 * and softmax of scores in the hundreds, whose exp overflows unless the row
 * max is subtracted.
 * name, op, B, H, L, S, X, d, K, N, flags */
#define SPECIAL_CASES(X)                                                     \
    X(attention_nan_query, ATTENTION, 2, 2, 40, 150, 0, 16, 0, 0, F_NANQ)   \
    X(attention_nan_query_causal, ATTENTION, 1, 2, 3, 5, 1, 8, 0, 0,        \
      F_NANQ | F_CAUSAL | F_MASK2D)                                          \
    X(attention_nan_key, ATTENTION, 2, 3, 40, 150, 1, 16, 0, 0,             \
      F_NANK | F_KPM)                                                        \
    X(attention_nan_key_causal, ATTENTION, 1, 2, 40, 40, 1, 8, 0, 0,        \
      F_NANK | F_CAUSAL)                                                     \
    X(attention_nan_inf_mask2d, ATTENTION, 2, 2, 10, 20, 0, 8, 0, 0,        \
      F_MASK2D | F_NANMASK | F_INFMASK)                                      \
    X(attention_nan_inf_mask3d_long, ATTENTION, 1, 2, 40, 200, 2, 16, 0, 0, \
      F_MASK3D | F_NANMASK | F_INFMASK)                                      \
    X(softmax_large_scores, SOFTMAX, 1, 2, 3, 40, 0, 0, 0, 0, F_LARGE)
SPECIAL_CASES(DEFINE_OP_TEST)

/* The attention core's extensions, alone and together; every backend must
 * run them: a device of a backend in test_core_required's list that
 * declines one fails (the others are skipped until their backend lands). */
#define CORE_CASES(X)                                                        \
    X(core_gqa, ATTENTION, 2, 4, 9, 13, 0, 16, 0, 0, F_GQA)                 \
    X(core_mqa_causal, ATTENTION, 1, 4, 20, 20, 0, 8, 0, 0,                 \
      F_MQA | F_CAUSAL)                                                      \
    X(core_bottom_right, ATTENTION, 2, 2, 5, 17, 0, 16, 0, 0,               \
      F_CAUSAL | F_BOTTOM_RIGHT)                                             \
    X(core_window, ATTENTION, 1, 2, 40, 40, 0, 16, 0, 0,                    \
      F_CAUSAL | F_WINDOW)                                                   \
    X(core_window_bottom_right, ATTENTION, 2, 2, 4, 30, 0, 8, 0, 0,         \
      F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW)                                  \
    X(core_softcap, ATTENTION, 2, 2, 7, 11, 0, 16, 0, 0, F_SOFTCAP)         \
    X(core_alibi_causal, ATTENTION, 1, 3, 12, 12, 0, 8, 0, 0,               \
      F_ALIBI | F_CAUSAL)                                                    \
    X(core_sinks_causal, ATTENTION, 2, 3, 6, 6, 0, 8, 0, 0,                 \
      F_SINKS | F_CAUSAL)                                                    \
    X(core_kv_len, ATTENTION, 3, 2, 1, 19, 0, 16, 0, 0,                     \
      F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT)                                   \
    X(core_kv_len_prefill, ATTENTION, 3, 2, 6, 23, 0, 16, 0, 0,             \
      F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_KPM)                           \
    X(core_decode_long_gqa, ATTENTION, 2, 8, 1, 700, 0, 64, 0, 0,           \
      F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT)                           \
    X(core_head128_gqa, ATTENTION, 1, 4, 3, 33, 0, 128, 0, 0,               \
      F_GQA | F_CAUSAL | F_BOTTOM_RIGHT)                                     \
    X(core_head40_f16_alibi, ATTENTION, 1, 2, 21, 45, 0, 40, 0, 0,          \
      F_F16 | F_ALIBI | F_CAUSAL)                                            \
    X(core_head80_gqa_window, ATTENTION, 1, 4, 37, 90, 0, 80, 0, 0,         \
      F_GQA | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW)                          \
    X(core_head256_softcap, ATTENTION, 2, 2, 5, 70, 0, 256, 0, 0,           \
      F_SOFTCAP | F_KPM)                                                     \
    X(core_head80_causal_kpm, ATTENTION, 2, 2, 37, 45, 0, 80, 0, 0,         \
      F_CAUSAL | F_KPM)                                                      \
    X(core_head256_gqa_window, ATTENTION, 1, 4, 9, 70, 0, 256, 0, 0,         \
      F_GQA | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW)                          \
    X(core_head256_decode_sinks, ATTENTION, 1, 2, 1, 300, 0, 256, 0, 0,      \
      F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS)                         \
    X(core_everything, ATTENTION, 3, 4, 5, 40, 0, 16, 0, 0,                 \
      F_GQA | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW | F_SOFTCAP | F_ALIBI |   \
      F_SINKS | F_KVLEN | F_MASK2D)                                          \
    X(core_f16_gqa_kv_len, ATTENTION, 2, 4, 3, 30, 0, 32, 0, 0,             \
      F_F16 | F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS)         \
    X(core_decode_chunks_sinks, ATTENTION, 2, 8, 1, 1100, 0, 64, 0, 0,      \
      F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS)                 \
    X(core_decode_long_everything, ATTENTION, 2, 4, 2, 500, 0, 32, 0, 0,    \
      F_GQA | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW | F_SOFTCAP | F_ALIBI |   \
      F_SINKS | F_KVLEN | F_MASK2D)                                          \
    X(core_f16_decode_long_mqa_sinks, ATTENTION, 1, 8, 1, 400, 0, 64, 0, 0, \
      F_F16 | F_MQA | F_SINKS | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT)         \
    X(core_decode_long_sinks, ATTENTION, 2, 4, 2, 300, 0, 32, 0, 0,         \
      F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS | F_SOFTCAP |    \
      F_ALIBI)                                                               \
    X(core_decode_long_window, ATTENTION, 1, 2, 1, 400, 0, 16, 0, 0,        \
      F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW | F_SINKS)              \
    X(core_kv_len_not_causal, ATTENTION, 3, 2, 4, 21, 0, 16, 0, 0, F_KVLEN) \
    X(core_decode_group4_d100_sinks, ATTENTION, 1, 4, 1, 517, 0, 100, 0, 0, \
      F_MQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS)                 \
    X(core_decode_f16_group8_t3_d13, ATTENTION, 2, 8, 3, 300, 0, 13, 0, 0,  \
      F_F16 | F_MQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW |      \
      F_SOFTCAP | F_ALIBI)                                                   \
    X(core_decode_group1_t2_d7, ATTENTION, 2, 3, 2, 1030, 0, 7, 0, 0,       \
      F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS | F_ALIBI)               \
    X(core_decode_f16_d256_softcap, ATTENTION, 1, 2, 1, 200, 0, 256, 0, 0,  \
      F_F16 | F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SOFTCAP)       \
    X(core_decode_group4_t4_d1, ATTENTION, 1, 4, 4, 129, 0, 1, 0, 0,        \
      F_MQA | F_CAUSAL | F_BOTTOM_RIGHT)
#define DEFINE_CORE_TEST(name, op_, B_, H_, L_, S_, X_, d_, K_, N_, flags_)  \
    DEFINE_OP_TEST(name, op_, B_, H_, L_, S_, X_, d_, K_, N_,                \
                   (flags_) | F_REQUIRED)
CORE_CASES(DEFINE_CORE_TEST)

/* The training ops (issue 18) and ATTENTION's saved LSE: every output
 * (dK, dV, the AdamW state, the LSE) is compared. A device of a backend in
 * test_training_required's list may not decline them; the others are
 * skipped until their kernels land. MATMUL: B, H outer dims, M = L, K, N;
 * SUM_ROWS: L rows of N; ADAMW: N parameters.
 * name, op, B, H, L, S, X, d, K, N, flags */
#define TRAINING_CASES(X)                                                    \
    X(matmul_nn, MATMUL, 1, 1, 33, 0, 0, 0, 7, 129, 0)                       \
    X(matmul_nt_batched_acc, MATMUL, 2, 3, 7, 0, 0, 0, 33, 1,               \
      F_TRANS_B | F_ACCUMULATE)                                              \
    X(matmul_tn, MATMUL, 1, 1, 129, 0, 0, 0, 33, 7, F_TRANS_A)               \
    X(matmul_nn_bcast_acc, MATMUL, 2, 2, 33, 0, 0, 0, 129, 7,               \
      F_BCAST_B | F_ACCUMULATE)                                              \
    X(matmul_nt_bcast_k1, MATMUL, 3, 1, 7, 0, 0, 0, 1, 33,                  \
      F_TRANS_B | F_BCAST_B)                                                 \
    X(matmul_tt_pad_one_row, MATMUL, 1, 2, 1, 0, 0, 0, 7, 33,               \
      F_TRANS_A | F_TRANS_B | F_PAD)                                         \
    X(matmul_tn_large_acc, MATMUL, 1, 1, 200, 0, 0, 0, 300, 150,            \
      F_TRANS_A | F_ACCUMULATE | F_PAD)                                      \
    X(matmul_nn_bcast_large, MATMUL, 2, 1, 130, 0, 0, 0, 96, 300,           \
      F_BCAST_B | F_PAD)                                                     \
    X(matmul_tn_two_slabs, MATMUL, 1, 1, 2, 0, 0, 0, 70000, 64, F_TRANS_A)  \
    X(sum_rows, SUM_ROWS, 2, 3, 7, 0, 0, 0, 0, 33, 0)                        \
    X(sum_rows_acc_strided, SUM_ROWS, 1, 2, 129, 0, 0, 0, 0, 7,             \
      F_ACCUMULATE | F_TRANS_A)                                              \
    X(sum_rows_one_row_acc, SUM_ROWS, 1, 1, 1, 0, 0, 0, 0, 300,             \
      F_ACCUMULATE)                                                          \
    X(attention_backward_plain, ATTENTION_BACKWARD, 2, 2, 5, 7, 0, 8, 0, 0, 0) \
    X(attention_backward_head40_causal, ATTENTION_BACKWARD, 1, 2, 33, 33, 0, \
      40, 0, 0, F_CAUSAL)                                                    \
    X(attention_backward_head64_masks, ATTENTION_BACKWARD, 2, 2, 40, 70, 0, \
      64, 0, 0, F_MASK3D | F_KPM)                                            \
    X(attention_backward_head80_appended, ATTENTION_BACKWARD, 1, 2, 20, 30, \
      2, 80, 0, 0, F_CAUSAL | F_MASK2D)                                      \
    X(attention_backward_head128_fullmask, ATTENTION_BACKWARD, 1, 2, 9, 17, \
      0, 128, 0, 0, F_MASK2D | F_FULLMASK)                                   \
    X(attention_backward_tiles, ATTENTION_BACKWARD, 1, 1, 150, 300, 1, 32,  \
      0, 0, F_CAUSAL | F_KPM)                                                \
    X(attention_backward_one_query, ATTENTION_BACKWARD, 2, 1, 1, 5, 0, 8, 0, \
      0, F_KPM)                                                              \
    X(attention_backward_cross_causal, ATTENTION_BACKWARD, 1, 1, 70, 200, 0, \
      16, 0, 0, F_CAUSAL)                                                    \
    X(attention_backward_more_queries, ATTENTION_BACKWARD, 1, 2, 100, 20, 1, \
      16, 0, 0, F_CAUSAL | F_MASK2D | F_FULLMASK)                            \
    X(attention_backward_long_queries, ATTENTION_BACKWARD, 1, 1, 12000, 40, \
      0, 16, 0, 0, F_CAUSAL)                                                 \
    X(attention_backward_window, ATTENTION_BACKWARD, 1, 2, 40, 40, 0, 16, \
      0, 0, F_CAUSAL | F_WINDOW)                                             \
    X(attention_backward_softcap, ATTENTION_BACKWARD, 2, 2, 7, 11, 0, 16, 0, \
      0, F_SOFTCAP | F_KPM)                                                  \
    X(attention_backward_alibi, ATTENTION_BACKWARD, 1, 3, 12, 12, 0, 8, 0,  \
      0, F_ALIBI | F_CAUSAL)                                                 \
    X(attention_backward_window_softcap_alibi, ATTENTION_BACKWARD, 1, 2, 70, \
      70, 1, 40, 0, 0, F_CAUSAL | F_WINDOW | F_SOFTCAP | F_ALIBI | F_MASK2D) \
    X(attention_backward_long_window, ATTENTION_BACKWARD, 1, 1, 150, 300, 0, \
      32, 0, 0, F_WINDOW | F_SOFTCAP)                                        \
    X(attention_lse, ATTENTION, 2, 2, 5, 7, 0, 8, 0, 0, F_LSE)               \
    X(attention_lse_causal_fullmask, ATTENTION, 1, 2, 40, 40, 0, 16, 0, 0,  \
      F_LSE | F_CAUSAL | F_MASK2D | F_FULLMASK)                              \
    X(attention_lse_long_appended, ATTENTION, 1, 2, 70, 300, 1, 32, 0, 0,   \
      F_LSE | F_KPM)                                                         \
    X(attention_lse_decode, ATTENTION, 2, 4, 1, 700, 0, 32, 0, 0, F_LSE)    \
    X(attention_lse_sinks_gqa, ATTENTION, 2, 4, 6, 9, 0, 8, 0, 0,           \
      F_LSE | F_SINKS | F_GQA | F_CAUSAL)                                    \
    X(adamw, ADAMW, 1, 1, 1, 0, 0, 0, 0, 1000, 0)                            \
    X(adamw_decay_large, ADAMW, 1, 1, 1, 0, 0, 0, 0, 70000, F_DECAY)
#define DEFINE_TRAINING_TEST(name, op_, B_, H_, L_, S_, X_, d_, K_, N_,      \
                             flags_)                                         \
    DEFINE_OP_TEST(name, op_, B_, H_, L_, S_, X_, d_, K_, N_,                \
                   (flags_) | F_TRAINING)
TRAINING_CASES(DEFINE_TRAINING_TEST)

/* The table covers every op: a new op cannot be added without a case. */
#define COUNT_OP(name, op_, ...) | (1u << MHA_OP_##op_)
Test(ops, every_op_has_a_case)
{
    unsigned covered = 0 OP_CASES(COUNT_OP) TRAINING_CASES(COUNT_OP);
    cr_assert_eq(covered, (1u << MHA_OP_COUNT) - 1,
                 "ops without a case: mask %#x",
                 ((1u << MHA_OP_COUNT) - 1) & ~covered);
}

/* ---- the same bits for every thread count ------------------------------------ */

/* The outputs of case c (raw floats of their buffers, freed by the
 * caller; returns how many) on CPU device td opened with threads threads. */
static int run_with_threads(const op_case *c, const test_device *td,
                            mha_context *ctx, op_setup *s, int threads,
                            float *raw[REF_MAX_OUT])
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.cpu_isa = td->isa;
    o.threads = threads;
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open_index(ctx, td->index, &o, &dev), MHA_OK,
                 "%s: %s", td->label, mha_context_errmsg(ctx));
    int count = run_node(c, td->label, ctx, dev, s, raw);
    mha_device_destroy(dev);
    return count;
}

/* Whether every output of two runs has the same bits; frees got. */
static int same_outputs(op_setup *s, float *const first[REF_MAX_OUT],
                        float *got[REF_MAX_OUT], int count)
{
    const mha_tdesc *outs[REF_MAX_OUT];
    int same = 1;
    ref_outputs(&s->node, outs);
    for (int k = 0; k < count; k++) {
        size_t span = tensor_of(s, outs[k])->span;
        same &= memcmp(first[k], got[k], span * sizeof *got[k]) == 0;
        free(got[k]);
    }
    return same;
}

/* Tasks are cut by the shape, never by the thread count, so every CPU ISA
 * gives the same bits with 1, 2, 3 or 8 threads. */
static void run_threads_case(const op_case *c)
{
    static const int counts[] = {1, 2, 3, 8};
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_rng r = {0x7e57000u + (uint64_t)c->op};
    op_setup s;
    setup(&s, c, &r);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        if (!devs[i].isa)
            continue;
        float *first[REF_MAX_OUT], *got[REF_MAX_OUT];
        int count = run_with_threads(c, &devs[i], ctx, &s, counts[0], first);
        for (size_t k = 1; k < sizeof counts / sizeof *counts; k++) {
            run_with_threads(c, &devs[i], ctx, &s, counts[k], got);
            cr_expect(same_outputs(&s, first, got, count),
                      "%s on %s: %d threads differ from 1 thread", c->name,
                      devs[i].label, counts[k]);
        }
        for (int k = 0; k < count; k++)
            free(first[k]);
    }
    teardown(&s, ctx);
}

/* name, op, B, H, L, S, X, d, K, N, flags: shapes with many tasks; the
 * decode ones have few enough chunks that the CPU backend tiles all heads
 * of a batch item together for 1 and 2 threads and one kv head at a time
 * for 3 and 8 (the same bits either way) */
#define THREAD_CASES(X)                                                      \
    X(projection, PROJECTION, 2, 1, 150, 0, 0, 0, 200, 300, F_BIAS)          \
    X(scores, SCORES, 2, 2, 130, 90, 1, 16, 0, 0, F_CAUSAL | F_KPM)          \
    X(softmax, SOFTMAX, 2, 2, 40, 300, 0, 0, 0, 0, 0)                        \
    X(weighted_sum, WEIGHTED_SUM, 2, 2, 130, 90, 0, 16, 0, 0, 0)             \
    X(attention, ATTENTION, 2, 3, 150, 300, 1, 32, 0, 0, F_MASK3D | F_KPM)   \
    X(attention_causal, ATTENTION, 1, 4, 200, 200, 0, 64, 0, 0, F_CAUSAL)   \
    X(attention_decode_chunks, ATTENTION, 2, 8, 1, 1100, 0, 64, 0, 0,        \
      F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS)                 \
    X(attention_core_prefill, ATTENTION, 1, 4, 100, 300, 0, 32, 0, 0,       \
      F_GQA | F_CAUSAL | F_BOTTOM_RIGHT | F_WINDOW | F_ALIBI | F_SOFTCAP)    \
    X(head_stats, HEAD_STATS, 2, 3, 40, 50, 0, 0, 0, 0, 0)                  \
    X(attention_decode_f16_all_heads, ATTENTION, 1, 8, 2, 700, 0, 40, 0, 0,  \
      F_F16 | F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT | F_SINKS |        \
      F_SOFTCAP)                                                             \
    X(matmul_tn, MATMUL, 1, 1, 150, 0, 0, 0, 200, 300,                       \
      F_TRANS_A | F_ACCUMULATE)                                              \
    X(matmul_nn_bcast, MATMUL, 3, 1, 70, 0, 0, 0, 64, 300, F_BCAST_B)        \
    X(attention_backward, ATTENTION_BACKWARD, 1, 2, 150, 200, 1, 32, 0, 0,   \
      F_CAUSAL | F_KPM)                                                      \
    X(attention_lse, ATTENTION, 2, 3, 150, 300, 1, 32, 0, 0, F_LSE | F_KPM)  \
    X(sum_rows, SUM_ROWS, 2, 1, 300, 0, 0, 0, 0, 500, 0)                     \
    X(adamw, ADAMW, 1, 1, 1, 0, 0, 0, 0, 70000, F_DECAY)

#define DEFINE_THREAD_TEST(name, op_, B_, H_, L_, S_, X_, d_, K_, N_, flags_) \
    Test(threads, name)                                                      \
    {                                                                        \
        op_case c = {"threads_" #name, MHA_OP_##op_, B_, H_, L_, S_, X_, d_, \
                     K_, N_, flags_};                                        \
        run_threads_case(&c);                                                \
    }
THREAD_CASES(DEFINE_THREAD_TEST)

/* ---- the same bits on every run ------------------------------------------ */

/* A device may split a long key range over workgroups (flash-decoding);
 * combining the parts in a fixed order gives the same bits every run. */
Test(ops, core_decode_deterministic)
{
    op_case c = {"core_decode_deterministic", MHA_OP_ATTENTION, 2, 8, 1, 900,
                 0, 64, 0, 0, F_GQA | F_KVLEN | F_CAUSAL | F_BOTTOM_RIGHT |
                 F_SINKS};
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_rng r = {0xde7e0000u};
    op_setup s;
    setup(&s, &c, &r);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++) {
        mha_device *dev = test_open(ctx, &devs[i]);
        if (mha_dev_supports(dev, &s.node)) {
            float *first[REF_MAX_OUT], *again[REF_MAX_OUT];
            int count = run_node(&c, devs[i].label, ctx, dev, &s, first);
            run_node(&c, devs[i].label, ctx, dev, &s, again);
            cr_expect(same_outputs(&s, first, again, count),
                      "%s: two runs differ", devs[i].label);
            for (int k = 0; k < count; k++)
                free(first[k]);
        }
        mha_device_destroy(dev);
    }
    teardown(&s, ctx);
}
