/* attention_part.c: times the CPU backend's fused attention op alone
 * (scores, softmax and weighted sum of every head; no projections) for
 * mha-bench --targets, through the backend's internal entry point
 * mha_cpu_op_run on host arrays laid out as the planner lays out the
 * projections' outputs ([L, E] rows read as [1, H, L, d] head views). The
 * bench links mha_internal, the static library that keeps libmha's internal
 * symbols reachable. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "ops.h"
#include "targets.h"

typedef struct attn_run {
    mha_cpu_exec exec;
    mha_node node;
} attn_run;

static int attn_once(void *arg)
{
    attn_run *r = arg;
    return (int)mha_cpu_op_run(&r->exec, &r->node);
}

/* A [1, H, T, d] head view of a [T, H*d] array. */
static mha_tdesc head_view(float *data, int64_t H, int64_t T, int64_t d)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = 1, t.ne[1] = H, t.ne[2] = T, t.ne[3] = d;
    t.nb[0] = T * H * d, t.nb[1] = d, t.nb[2] = H * d, t.nb[3] = 1;
    t.buf = data; /* a CPU buffer handle is its memory */
    return t;
}

static float *random_rows(int64_t rows, int64_t cols, uint64_t seed)
{
    size_t n = (size_t)(rows * cols);
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; p && i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(seed >> 40) / (double)(1ull << 24)) * 2 - 1;
    }
    return p;
}

int bench_attention_part(mha_context *ctx, const bench_options *o,
                         const bench_case *c, bench_result *r)
{
    int64_t E = c->embed_dim, H = c->heads, d = E / H;
    int64_t L = c->tgt_len, S = c->src_len;
    float *q = random_rows(L, E, 1), *k = random_rows(S, E, 2);
    float *v = random_rows(S, E, 3), *out = random_rows(L, E, 4);
    attn_run run;
    memset(&run, 0, sizeof run);
    int rc = -1;
    if (!q || !k || !v || !out ||
        mha_cpu_exec_init(&run.exec, &ctx->host, mha_cpu_kernels_named(NULL),
                          o->threads) != MHA_OK)
        goto done;
    run.node.op = MHA_OP_ATTENTION;
    run.node.src[MHA_SRC_Q] = head_view(q, H, L, d);
    run.node.src[MHA_SRC_K] = head_view(k, H, S, d);
    run.node.src[MHA_SRC_V] = head_view(v, H, S, d);
    run.node.dst = head_view(out, H, L, d);
    run.node.params.scale = 1.0f / sqrtf((float)d);
    run.node.params.causal = c->causal;
    run.node.params.mask_cols = S;
    for (int i = 0; i < o->warmup; i++)
        if (attn_once(&run))
            goto done;
    rc = bench_time_runs(o, attn_once, &run, r);
done:
    mha_cpu_exec_fini(&run.exec);
    free(q), free(k), free(v), free(out);
    return rc;
}
