/* test_cpu_backward_memory.c: the CPU's fused attention backward works in
 * O(L) memory (issue 18): at L = S = 8192, one head of 64, the training
 * forward (saving its LSE) and the backward together allocate, through the
 * context's allocator, far less than the 256 MiB of the L x S matrix they
 * never store: at most 2 (L + S) d floats plus 1 MiB per thread. The
 * allocator counts live bytes and their peak (test_alloc.c's idea), and
 * the ops run through the backend's internal entry point on host arrays,
 * as test_cpu_attention.c does. The gradients are checked to be finite. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "ops.h"

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

static mha_tdesc rows(float *data, int64_t T)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = 1, t.ne[1] = 1, t.ne[2] = T, t.ne[3] = D;
    t.nb[0] = T * D, t.nb[1] = T * D, t.nb[2] = D, t.nb[3] = 1;
    t.buf = data;
    return t;
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
