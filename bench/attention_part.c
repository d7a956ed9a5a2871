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

struct bench_attention {
    mha_cpu_exec exec;
    mha_node node;
    void *q, *out;
    void *k[MAX_LAYERS], *v[MAX_LAYERS]; /* each layer's cache */
    int layers, next;
};

/* One call, on the next layer's K and V. */
static int attn_once(void *arg)
{
    bench_attention *r = arg;
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
static int make_layers(bench_attention *run, const attn_shape *sh, int layers)
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

void bench_attention_close(bench_attention *a)
{
    if (!a)
        return;
    mha_cpu_exec_fini(&a->exec);
    for (int i = 0; i < a->layers; i++)
        free(a->k[i]), free(a->v[i]);
    free(a->q), free(a->out);
    free(a);
}

int bench_attention_open(mha_context *ctx, const bench_case *c, int layers,
                         int threads, bench_attention **out)
{
    attn_shape sh = shape_of(c);
    bench_attention *a = calloc(1, sizeof *a);
    *out = NULL;
    if (!a)
        return -1;
    a->q = random_rows(sh.L, sh.H * sh.d, MHA_F32, 1);
    a->out = random_rows(sh.L, sh.H * sh.d, MHA_F32, 4);
    if (!a->q || !a->out || make_layers(a, &sh, layers) ||
        mha_cpu_exec_init(&a->exec, &ctx->host, mha_cpu_kernels_named(NULL),
                          threads) != MHA_OK) {
        bench_attention_close(a);
        return -1;
    }
    a->node.op = MHA_OP_ATTENTION;
    a->node.src[MHA_SRC_Q] = head_view(a->q, MHA_F32, sh.H, sh.L, sh.d);
    a->node.src[MHA_SRC_K] = head_view(NULL, sh.kv, sh.Hkv, sh.S, sh.d);
    a->node.src[MHA_SRC_V] = head_view(NULL, sh.kv, sh.Hkv, sh.S, sh.d);
    a->node.dst = head_view(a->out, MHA_F32, sh.H, sh.L, sh.d);
    a->node.params.scale = 1.0f / sqrtf((float)sh.d);
    a->node.params.causal = sh.causal;
    a->node.params.mask_cols = sh.S;
    a->node.params.kv_group = (int32_t)(sh.H / sh.Hkv);
    if (c->decoder) {
        a->node.params.window = c->window;
        a->node.params.softcap = c->softcap;
    }
    *out = a;
    return 0;
}

int bench_attention_time(bench_attention *a, const bench_options *o,
                         bench_result *r)
{
    for (int i = 0; i < o->warmup; i++)
        if (attn_once(a))
            return -1;
    return bench_time_runs(o, attn_once, a, r);
}

int bench_attention_part(mha_context *ctx, const bench_options *o,
                         const bench_case *c, int layers, bench_result *r)
{
    bench_attention *a;
    if (bench_attention_open(ctx, c, layers, o->threads, &a))
        return -1;
    int rc = bench_attention_time(a, o, r);
    bench_attention_close(a);
    return rc;
}
