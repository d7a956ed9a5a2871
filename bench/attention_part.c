/* attention_part.c: times the CPU backend's fused attention op alone
 * (scores, softmax and weighted sum of every head; no projections) for
 * mha-bench --targets, through the backend's internal entry point
 * mha_cpu_op_run on host arrays laid out as the planner and the KV cache
 * lay them out ([T, H*d] rows read as [1, H, T, d] head views: the
 * projections' outputs, and the cache's token-major [token, Hkv, d]). An
 * nn.MHA case is H heads over E / H; a decoder case (bench_case.decoder)
 * is its attention node over a cache of src_len tokens: Hq query heads,
 * Hkv kv heads, head_dim, K and V in the cache's dtype, causal bottom-
 * right, window and softcap as configured. A decode case may rotate over
 * several layers' K and V, as a model's decode step walks its layers:
 * llama3-8b holds 32 caches of 32 MiB at 4k f32 tokens, which no last-level
 * cache keeps, while one cache read again and again partly stays in L3 and
 * beats the DRAM read bound it is held to. The bench links mha_internal,
 * the static library that keeps libmha's internal symbols reachable. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "half.h"
#include "ops.h"
#include "targets.h"

enum { MAX_LAYERS = 32 };

typedef struct attn_run {
    mha_cpu_exec exec;
    mha_node node;
    void *k[MAX_LAYERS], *v[MAX_LAYERS]; /* each layer's cache */
    int layers, next;
} attn_run;

/* One call, on the next layer's K and V. */
static int attn_once(void *arg)
{
    attn_run *r = arg;
    r->node.src[MHA_SRC_K].buf = r->k[r->next];
    r->node.src[MHA_SRC_V].buf = r->v[r->next];
    r->next = (r->next + 1) % r->layers;
    return (int)mha_cpu_op_run(&r->exec, &r->node);
}

/* A [1, H, T, d] head view of a [T, H*d] array of dtype dt. */
static mha_tdesc head_view(void *data, mha_dtype dt, int64_t H, int64_t T,
                           int64_t d)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.ne[0] = 1, t.ne[1] = H, t.ne[2] = T, t.ne[3] = d;
    t.nb[0] = T * H * d, t.nb[1] = d, t.nb[2] = H * d, t.nb[3] = 1;
    t.buf = data; /* a CPU buffer handle is its memory */
    return t;
}

/* rows x cols uniform values in [-1, 1), f32 or f16 bits, in memory
 * allocated as a CPU device buffer of that size. */
static void *random_rows(int64_t rows, int64_t cols, mha_dtype dt,
                         uint64_t seed)
{
    size_t n = (size_t)(rows * cols), es = dt == MHA_F16 ? 2 : 4;
    void *p = bench_buffer_alloc(n * es);
    for (size_t i = 0; p && i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        float x = (float)((double)(seed >> 40) / (double)(1ull << 24)) * 2 - 1;
        if (dt == MHA_F16)
            ((uint16_t *)p)[i] = mha_f32_to_f16(x);
        else
            ((float *)p)[i] = x;
    }
    return p;
}

/* The attention shape of case c. */
typedef struct attn_shape {
    int64_t H, Hkv, d, L, S;
    mha_dtype kv;
    int causal;
} attn_shape;

static attn_shape shape_of(const bench_case *c)
{
    attn_shape s = {c->heads, c->heads, c->embed_dim / c->heads, c->tgt_len,
                    c->src_len, MHA_F32, c->causal};
    if (c->decoder) {
        s.Hkv = c->kv_heads;
        s.d = c->head_dim;
        s.kv = c->cache_dtype;
        s.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    }
    return s;
}

/* Layers enough that their K and V together hold at least bytes (at most
 * MAX_LAYERS). */
int bench_attention_layers(const bench_case *c, double bytes)
{
    attn_shape sh = shape_of(c);
    double one = 2.0 * (double)(sh.S * sh.Hkv * sh.d) *
                 (sh.kv == MHA_F16 ? 2 : 4);
    int n = (int)ceil(bytes / one);
    return n < 1 ? 1 : n > MAX_LAYERS ? MAX_LAYERS : n;
}

/* Each layer's random K and V; 0, or -1 when memory runs out. */
static int make_layers(attn_run *run, const attn_shape *sh, int layers)
{
    run->layers = layers < 1 ? 1 : layers > MAX_LAYERS ? MAX_LAYERS : layers;
    for (int i = 0; i < run->layers; i++) {
        run->k[i] = random_rows(sh->S, sh->Hkv * sh->d, sh->kv, 2 + 2u * i);
        run->v[i] = random_rows(sh->S, sh->Hkv * sh->d, sh->kv, 3 + 2u * i);
        if (!run->k[i] || !run->v[i])
            return -1;
    }
    return 0;
}

int bench_attention_part(mha_context *ctx, const bench_options *o,
                         const bench_case *c, int layers, bench_result *r)
{
    attn_shape sh = shape_of(c);
    void *q = random_rows(sh.L, sh.H * sh.d, MHA_F32, 1);
    void *out = random_rows(sh.L, sh.H * sh.d, MHA_F32, 4);
    attn_run run;
    memset(&run, 0, sizeof run);
    int rc = -1;
    if (!q || !out || make_layers(&run, &sh, layers) ||
        mha_cpu_exec_init(&run.exec, &ctx->host, mha_cpu_kernels_named(NULL),
                          o->threads) != MHA_OK)
        goto done;
    run.node.op = MHA_OP_ATTENTION;
    run.node.src[MHA_SRC_Q] = head_view(q, MHA_F32, sh.H, sh.L, sh.d);
    run.node.src[MHA_SRC_K] = head_view(NULL, sh.kv, sh.Hkv, sh.S, sh.d);
    run.node.src[MHA_SRC_V] = head_view(NULL, sh.kv, sh.Hkv, sh.S, sh.d);
    run.node.dst = head_view(out, MHA_F32, sh.H, sh.L, sh.d);
    run.node.params.scale = 1.0f / sqrtf((float)sh.d);
    run.node.params.causal = sh.causal;
    run.node.params.mask_cols = sh.S;
    run.node.params.kv_group = (int32_t)(sh.H / sh.Hkv);
    if (c->decoder) {
        run.node.params.window = c->window;
        run.node.params.softcap = c->softcap;
    }
    for (int i = 0; i < o->warmup; i++)
        if (attn_once(&run))
            goto done;
    rc = bench_time_runs(o, attn_once, &run, r);
done:
    mha_cpu_exec_fini(&run.exec);
    for (int i = 0; i < run.layers; i++)
        free(run.k[i]), free(run.v[i]);
    free(q), free(out);
    return rc;
}
