/* test_cpu_attention.c: the CPU backend's fused attention when K and V are
 * packed in several rounds of heads (backends/cpu/attention.c), a path the
 * op table never reaches: its shapes fit the default pack budget in one
 * round. The budget is lowered on the backend's exec so small shapes need
 * several rounds, and one realistic shape (E = 256, 32 heads, batch 8,
 * 2100 keys) exceeds the default budget; each is checked against the
 * double-precision reference, the small ones also bit for bit against one
 * round. Drives the backend's internal entry point on host arrays, as
 * mha-bench's attention part does, on every ISA table the CPU runs. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "ops.h"
#include "reference.h"

typedef struct attn_case {
    int64_t B, H, L, S, X, d; /* X: appended keys past S, never masked */
    int causal, kpm;
    size_t budget; /* pack budget in floats; 0: the default */
} attn_case;

/* Host arrays of one case and the node over them. */
typedef struct attn_setup {
    float *q, *k, *v, *kpm, *out;
    mha_node node;
} attn_setup;

/* The [B, H, T, d] head view of a [B, T, H*d] array. */
static mha_tdesc head_view(float *data, const attn_case *c, int64_t T)
{
    int64_t E = c->H * c->d;
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = c->B, t.ne[1] = c->H, t.ne[2] = T, t.ne[3] = c->d;
    t.nb[0] = T * E, t.nb[1] = c->d, t.nb[2] = E, t.nb[3] = 1;
    t.buf = data; /* a CPU buffer handle is its memory */
    return t;
}

static float *random_array(size_t n, test_rng *r)
{
    float *p = malloc(n * sizeof *p);
    cr_assert_not_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = test_normal(r);
    return p;
}

static void setup(attn_setup *s, const attn_case *c)
{
    test_rng r = {0xa77e0000u};
    int64_t E = c->H * c->d, S2 = c->S + c->X;
    memset(s, 0, sizeof *s);
    s->q = random_array((size_t)(c->B * c->L * E), &r);
    s->k = random_array((size_t)(c->B * S2 * E), &r);
    s->v = random_array((size_t)(c->B * S2 * E), &r);
    s->out = calloc((size_t)(c->B * c->L * E), sizeof *s->out);
    mha_node *n = &s->node;
    n->op = MHA_OP_ATTENTION;
    n->src[MHA_SRC_Q] = head_view(s->q, c, c->L);
    n->src[MHA_SRC_K] = head_view(s->k, c, S2);
    n->src[MHA_SRC_V] = head_view(s->v, c, S2);
    n->dst = head_view(s->out, c, c->L);
    n->params.scale = 1.0f / sqrtf((float)c->d);
    n->params.causal = c->causal;
    n->params.mask_cols = c->S;
    if (c->kpm) { /* [B, S] additive, a quarter of the keys masked */
        s->kpm = random_array((size_t)(c->B * c->S), &r);
        for (int64_t i = 0; i < c->B * c->S; i++)
            s->kpm[i] = i % 4 == 1 ? -INFINITY : 0.5f * s->kpm[i];
        mha_tdesc *m = &n->src[MHA_SRC_KPM];
        m->dtype = MHA_F32;
        m->ne[0] = c->B, m->ne[1] = c->H, m->ne[2] = c->L, m->ne[3] = c->S;
        m->nb[0] = c->S, m->nb[3] = 1;
        m->buf = s->kpm;
    }
}

static void release(attn_setup *s)
{
    free(s->q), free(s->k), free(s->v), free(s->kpm), free(s->out);
}

/* dst's elements in logical [B, H, L, d] order (memory is [B, L, H, d]). */
static float *gather(const mha_tdesc *t)
{
    const float *p = t->buf;
    float *out = malloc((size_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]) *
                        sizeof *out);
    size_t k = 0;
    for (int64_t b = 0; b < t->ne[0]; b++)
        for (int64_t h = 0; h < t->ne[1]; h++)
            for (int64_t i = 0; i < t->ne[2]; i++)
                for (int64_t c = 0; c < t->ne[3]; c++)
                    out[k++] = p[b * t->nb[0] + h * t->nb[1] + i * t->nb[2] +
                                 c * t->nb[3]];
    return out;
}

/* Runs the node with table isa (skipping the test where the CPU lacks it)
 * and pack budget `budget` (0: the default); returns the output in logical
 * order, which the caller frees. */
static float *run(mha_context *ctx, const char *isa, attn_setup *s,
                  const attn_case *c, size_t budget)
{
    const mha_cpu_kernels *k = mha_cpu_kernels_named(isa);
    if (!k)
        cr_skip_test("%s kernels are not available on this CPU or build",
                     isa);
    mha_cpu_exec e;
    cr_assert_eq(mha_cpu_exec_init(&e, &ctx->host, k, 2), MHA_OK);
    if (budget)
        e.pack_budget = budget;
    size_t n = (size_t)(c->B * c->L * c->H * c->d);
    memset(s->out, 0, n * sizeof *s->out);
    cr_assert_eq(mha_cpu_op_run(&e, &s->node), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_cpu_exec_fini(&e);
    return gather(&s->node.dst);
}

/* The output of c in rounds (budget c->budget) agrees with the reference
 * to 1e-4 and, for a lowered budget, has the bits of one round. */
static void check(const char *isa, const attn_case *c)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    attn_setup s;
    setup(&s, c);
    float *got = run(ctx, isa, &s, c, c->budget);
    size_t n = (size_t)(c->B * c->L * c->H * c->d);
    double *want = malloc(n * sizeof *want);
    ref_run(&s.node, want);
    test_diff d = test_compare(got, want, n);
    cr_expect_eq(d.nonfinite_mismatch, 0, "%s: NaN/Inf at %zu", isa,
                 d.worst_nf);
    cr_expect_leq(d.max_abs, 1e-4, "%s: max abs error %g at %zu (got %g "
                  "want %g)", isa, d.max_abs, d.worst, got[d.worst],
                  want[d.worst]);
    if (c->budget) {
        float *one = run(ctx, isa, &s, c, 0);
        cr_expect(memcmp(got, one, n * sizeof *got) == 0,
                  "%s: several rounds differ from one round", isa);
        free(one);
    }
    free(want);
    free(got);
    release(&s);
    mha_context_destroy(ctx);
}

/* Per head the rounds pack kblocks * 128 keys x (d + d padded to the
 * table's nr) floats: 384 x 48..56 for the small shapes, so a budget of 1
 * float gives one head per round and 45000 two (the last round holds one
 * head). The large shape's 256 heads need 17 * 128 * 16 floats each at
 * least, more than the default budget (8 Mi floats) holds in one round. */
#define ATTN_CASES(X)                                                        \
    X(one_head_per_round_causal_kpm, 2, 3, 40, 300, 1, 24, 1, 1, 1)          \
    X(two_heads_per_round_uneven, 1, 5, 33, 301, 0, 24, 0, 0, 45000)         \
    X(default_budget_E256_H32_N8_S2100, 8, 32, 16, 2100, 0, 8, 0, 0, 0)

#define DEFINE_ATTN_TEST(isa, name, B_, H_, L_, S_, X_, d_, causal_, kpm_,   \
                         budget_)                                            \
    Test(cpu_attention, isa##_##name)                                        \
    {                                                                        \
        attn_case c = {B_, H_, L_, S_, X_, d_, causal_, kpm_, budget_};      \
        check(#isa, &c);                                                     \
    }
#define SCALAR_TEST(...) DEFINE_ATTN_TEST(scalar, __VA_ARGS__)
#define AVX2_TEST(...) DEFINE_ATTN_TEST(avx2, __VA_ARGS__)
#define AVX512_TEST(...) DEFINE_ATTN_TEST(avx512, __VA_ARGS__)
#define NEON_TEST(...) DEFINE_ATTN_TEST(neon, __VA_ARGS__)
ATTN_CASES(SCALAR_TEST)
ATTN_CASES(AVX2_TEST)
ATTN_CASES(AVX512_TEST)
ATTN_CASES(NEON_TEST)
