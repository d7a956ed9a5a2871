/* test_cpu_backward_memory.c: the CPU's fused attention backward works in
 * O(L) memory (issue 18): at L = S = 8192, one head of 64, the training
 * forward (saving its LSE) and the backward together allocate, through the
 * context's allocator, far less than the 256 MiB of the L x S matrix they
 * never store: at most 2 (L + S) d floats plus 1 MiB per thread. The
 * allocator counts live bytes and their peak (test_alloc.c's idea), and
 * the ops run through the backend's internal entry point on host arrays,
 * as test_cpu_attention.c does. The gradients are checked to be finite.
 * And the backward's partial dQ in rounds of heads (a pack budget too
 * small for all of them, a path the op table never reaches) gives the
 * reference's gradients and the bits of one round. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "ops.h"
#include "reference.h"

enum { L = 8192, D = 64, THREADS = 2 };

typedef struct meter {
    size_t live, peak;
} meter;

/* Blocks carry their size in front, so free can count it down. */
static void *meter_malloc(void *user, size_t size)
{
    meter *m = user;
    size_t *p = malloc(size + 16);
    if (!p)
        return NULL;
    *p = size;
    m->live += size;
    if (m->live > m->peak)
        m->peak = m->live;
    return (char *)p + 16;
}

static void meter_free(void *user, void *ptr)
{
    meter *m = user;
    if (!ptr)
        return;
    size_t *p = (size_t *)((char *)ptr - 16);
    m->live -= *p;
    free(p);
}

/* The [B, H, T, d] head view of a [B, T, H*d] array. */
static mha_tdesc heads(float *data, int64_t B, int64_t H, int64_t T,
                       int64_t d)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = B, t.ne[1] = H, t.ne[2] = T, t.ne[3] = d;
    t.nb[0] = T * H * d, t.nb[1] = d, t.nb[2] = H * d, t.nb[3] = 1;
    t.buf = data;
    return t;
}

static mha_tdesc rows(float *data, int64_t T)
{
    return heads(data, 1, 1, T, D);
}

static float *normal_array(size_t n, test_rng *r)
{
    float *p = malloc(n * sizeof *p);
    cr_assert_not_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = test_normal(r);
    return p;
}

/* Peak bytes the op allocated beyond what was live before it. */
static size_t run_metered(mha_cpu_exec *e, meter *m, const mha_node *n,
                          mha_context *ctx)
{
    size_t before = m->live;
    m->peak = before;
    cr_assert_eq(mha_cpu_op_run(e, n), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    return m->peak - before;
}

Test(cpu_backward_memory, attention_backward_is_o_of_l)
{
    meter m = {0, 0};
    mha_allocator a = {meter_malloc, meter_free, &m};
    mha_context_options o;
    mha_context_options_init(&o);
    o.allocator = &a;
    mha_context *ctx;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    mha_cpu_exec e;
    size_t base = m.live;
    cr_assert_eq(mha_cpu_exec_init(&e, &ctx->host, mha_cpu_kernels_named(NULL),
                                   THREADS),
                 MHA_OK);
    test_rng r = {0x3e3000u};
    size_t n = (size_t)L * D;
    float *q = normal_array(n, &r), *k = normal_array(n, &r);
    float *v = normal_array(n, &r), *dout = normal_array(n, &r);
    float *o_ = calloc(n, 4), *dq = calloc(n, 4), *dk = calloc(n, 4);
    float *dv = calloc(n, 4), *lse = calloc(L, 4);
    mha_node f;
    memset(&f, 0, sizeof f);
    f.op = MHA_OP_ATTENTION;
    f.src[MHA_SRC_Q] = rows(q, L);
    f.src[MHA_SRC_K] = rows(k, L);
    f.src[MHA_SRC_V] = rows(v, L);
    f.dst = rows(o_, L);
    f.extra_dst[MHA_DST_LSE] = rows(lse, 1);
    f.extra_dst[MHA_DST_LSE].ne[3] = L;
    f.params.scale = 1.0f / sqrtf((float)D);
    f.params.causal = MHA_CAUSAL_TOP_LEFT;
    f.params.mask_cols = L;
    mha_node b = f;
    b.op = MHA_OP_ATTENTION_BACKWARD;
    b.src[MHA_SRC_BWD_O] = f.dst;
    b.src[MHA_SRC_BWD_DO] = rows(dout, L);
    b.src[MHA_SRC_BWD_LSE] = f.extra_dst[MHA_DST_LSE];
    b.dst = rows(dq, L);
    b.extra_dst[MHA_DST_DK] = rows(dk, L);
    b.extra_dst[MHA_DST_DV] = rows(dv, L);
    cr_assert(mha_cpu_op_supported(&f) && mha_cpu_op_supported(&b));
    size_t bound = 2 * (size_t)(L + L) * D * sizeof(float) +
                   (size_t)THREADS * (1u << 20);
    size_t fwd = run_metered(&e, &m, &f, ctx);
    size_t bwd = run_metered(&e, &m, &b, ctx);
    cr_log_info("working memory: forward %zu bytes, backward %zu bytes "
                "(bound %zu; the L x S matrix is %zu)", fwd, bwd, bound,
                (size_t)L * L * sizeof(float));
    cr_expect_leq(fwd, bound, "the forward allocated %zu bytes", fwd);
    cr_expect_leq(bwd, bound, "the backward allocated %zu bytes", bwd);
    cr_expect(isfinite(dq[n - 1]) && isfinite(dk[0]) && isfinite(dv[n / 2]) &&
              dv[0] != 0.0f, "the gradients are not finite");
    mha_cpu_exec_fini(&e);
    cr_expect_eq(m.live, base, "%zu bytes of the exec still live",
                 m.live - base);
    free(q), free(k), free(v), free(dout), free(o_), free(dq), free(dk);
    free(dv), free(lse);
    mha_context_destroy(ctx);
}

/* B = 2, H = 3, L = 100, S = 150, d = 16, causal: 3 key chunks per head,
 * whose partial dQ (2 x 100 x 16 floats per head) a budget of 5000 floats
 * holds for one head at a time: 6 rounds. */
enum { RB = 2, RH = 3, RL = 100, RS = 150, RD = 16 };

typedef struct round_setup {
    float *in[5]; /* q, k, v, o, dO */
    float *lse, *out[3]; /* dQ, dK, dV */
    mha_node fwd, bwd;
} round_setup;

static void round_init(round_setup *s)
{
    test_rng r = {0x20d5u};
    size_t nq = (size_t)RB * RL * RH * RD, nk = (size_t)RB * RS * RH * RD;
    for (int i = 0; i < 5; i++)
        s->in[i] = normal_array(i == 1 || i == 2 ? nk : nq, &r);
    s->lse = calloc((size_t)RB * RH * RL, 4);
    for (int i = 0; i < 3; i++)
        s->out[i] = calloc(i ? nk : nq, 4);
    mha_node *f = &s->fwd, *b = &s->bwd;
    memset(f, 0, sizeof *f);
    f->op = MHA_OP_ATTENTION;
    f->src[MHA_SRC_Q] = heads(s->in[0], RB, RH, RL, RD);
    f->src[MHA_SRC_K] = heads(s->in[1], RB, RH, RS, RD);
    f->src[MHA_SRC_V] = heads(s->in[2], RB, RH, RS, RD);
    f->dst = heads(s->in[3], RB, RH, RL, RD);
    f->extra_dst[MHA_DST_LSE] = heads(s->lse, RB, RH, 1, RL);
    f->extra_dst[MHA_DST_LSE].nb[1] = RL;
    f->params.scale = 0.25f;
    f->params.causal = MHA_CAUSAL_TOP_LEFT;
    f->params.mask_cols = RS;
    *b = *f;
    b->op = MHA_OP_ATTENTION_BACKWARD;
    b->src[MHA_SRC_BWD_O] = f->dst;
    b->src[MHA_SRC_BWD_DO] = heads(s->in[4], RB, RH, RL, RD);
    b->src[MHA_SRC_BWD_LSE] = f->extra_dst[MHA_DST_LSE];
    b->dst = heads(s->out[0], RB, RH, RL, RD);
    b->extra_dst[MHA_DST_DK] = heads(s->out[1], RB, RH, RS, RD);
    b->extra_dst[MHA_DST_DV] = heads(s->out[2], RB, RH, RS, RD);
}

static void round_free(round_setup *s)
{
    for (int i = 0; i < 5; i++)
        free(s->in[i]);
    for (int i = 0; i < 3; i++)
        free(s->out[i]);
    free(s->lse);
}

/* Runs the saving forward and the backward with pack budget budget (0:
 * the default); returns dQ, dK and dV end to end (freed by the caller). */
static float *run_rounds(mha_context *ctx, round_setup *s, size_t budget)
{
    mha_cpu_exec e;
    size_t nq = (size_t)RB * RL * RH * RD, nk = (size_t)RB * RS * RH * RD;
    cr_assert_eq(mha_cpu_exec_init(&e, &ctx->host, mha_cpu_kernels_named(NULL),
                                   THREADS),
                 MHA_OK);
    if (budget)
        e.pack_budget = budget;
    cr_assert_eq(mha_cpu_op_run(&e, &s->fwd), MHA_OK);
    cr_assert_eq(mha_cpu_op_run(&e, &s->bwd), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_cpu_exec_fini(&e);
    float *all = malloc((nq + 2 * nk) * sizeof *all);
    memcpy(all, s->out[0], nq * sizeof *all);
    memcpy(all + nq, s->out[1], nk * sizeof *all);
    memcpy(all + nq + nk, s->out[2], nk * sizeof *all);
    return all;
}

Test(cpu_backward_memory, partial_dq_in_rounds)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    round_setup s;
    round_init(&s);
    size_t nq = (size_t)RB * RL * RH * RD, nk = (size_t)RB * RS * RH * RD;
    float *rounds = run_rounds(ctx, &s, 5000);
    float *one = run_rounds(ctx, &s, 0);
    cr_expect(memcmp(rounds, one, (nq + 2 * nk) * sizeof *one) == 0,
              "6 rounds differ from one round");
    double *want[REF_MAX_OUT];
    for (int i = 0; i < 3; i++)
        want[i] = malloc((i ? nk : nq) * sizeof(double));
    ref_run_all(&s.bwd, want);
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        size_t n = i ? nk : nq;
        float *got = malloc(n * sizeof *got);
        /* the reference is in logical [B, H, T, d] order */
        const mha_tdesc *t = i ? &s.bwd.extra_dst[i - 1] : &s.bwd.dst;
        size_t k = 0;
        for (int64_t b = 0; b < t->ne[0]; b++)
            for (int64_t h = 0; h < t->ne[1]; h++)
                for (int64_t r = 0; r < t->ne[2]; r++)
                    for (int64_t c = 0; c < t->ne[3]; c++)
                        got[k++] = rounds[off + (size_t)(b * t->nb[0] +
                                          h * t->nb[1] + r * t->nb[2] + c)];
        test_diff d = test_compare(got, want[i], n);
        cr_expect_leq(d.max_abs, 1e-4, "output %d: max abs error %g", i,
                      d.max_abs);
        off += n;
        free(got);
        free(want[i]);
    }
    free(rounds);
    free(one);
    round_free(&s);
    mha_context_destroy(ctx);
}
