/* op_bench.c: mha-op-bench, op-level timings of the CPU backend's training
 * ops against OpenBLAS in the same run: MATMUL (NN and TN, the backward's
 * dX = dY W and dW = dY^T X) beside cblas_sgemm on the same shapes and
 * threads, and the fused ATTENTION_BACKWARD (and the ATTENTION forward
 * that saves its LSE) in GFLOP/s beside the sgemm rate. Ops are called
 * through the backend's internal entry point on host arrays, as
 * attention_part.c does, and timed as the best of 3 rounds of at least
 * 0.2 s, by the wall clock and by the CPU time of the process (the ratios
 * use the latter, steadier on a shared machine). Each MATMUL's result is
 * compared with sgemm's (the largest difference, relative, is printed) and
 * the backward's gradients are checked to be finite.
 *
 *   mha-op-bench [threads]   (default 0: the CPU backend's default) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "cpu_features.h"
#include "ops.h"

#ifdef MHA_BENCH_OPENBLAS
#include <cblas.h>
#endif

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef int (*run_fn)(void *arg);

/* Seconds per call: wall (the best of 3 rounds of at least 0.2 s each)
 * and the process's CPU seconds in that round, every thread's summed: on
 * a shared machine the CPU time of a fixed thread count is the steadier
 * measure, and the one the ratios use. */
typedef struct timing {
    double wall, cpu;
} timing;

static timing best_time(run_fn fn, void *arg)
{
    timing best = {1e30, 1e30}, bad = {-1, -1};
    if (fn(arg))
        return bad;
    for (int round = 0; round < 3; round++) {
        int n = 0;
        double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID), t;
        do {
            if (fn(arg))
                return bad;
            n++;
            t = clock_s(CLOCK_MONOTONIC) - t0;
        } while (t < 0.2);
        double c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        if (t / n < best.wall)
            best.wall = t / n;
        if (c / n < best.cpu)
            best.cpu = c / n;
    }
    return best;
}

static float *randoms(size_t n, uint64_t seed)
{
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    for (size_t i = 0; p && i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(seed >> 40) / (double)(1ull << 24)) * 2 - 1;
    }
    return p;
}

static mha_tdesc view(float *data, int64_t n0, int64_t n1, int64_t n2,
                      int64_t n3, int64_t b0, int64_t b1, int64_t b2,
                      int64_t b3)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = n0, t.ne[1] = n1, t.ne[2] = n2, t.ne[3] = n3;
    t.nb[0] = b0, t.nb[1] = b1, t.nb[2] = b2, t.nb[3] = b3;
    t.buf = data;
    return t;
}

typedef struct op_run {
    mha_cpu_exec *exec;
    mha_node node;
} op_run;

static int op_once(void *arg)
{
    op_run *r = arg;
    return (int)mha_cpu_op_run(r->exec, &r->node);
}

/* ---- MATMUL against sgemm --------------------------------------------------- */

typedef struct gemm_run {
    int M, N, K, ta;
    const float *a, *b;
    float *c;
} gemm_run;

#ifdef MHA_BENCH_OPENBLAS
static int sgemm_once(void *arg)
{
    gemm_run *g = arg;
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                CblasNoTrans, g->M, g->N, g->K, 1.0f, g->a, g->ta ? g->M : g->K,
                g->b, g->N, 0.0f, g->c, g->N);
    return 0;
}
#endif

#ifdef MHA_BENCH_OPENBLAS
/* The largest difference of libmha's product from sgemm's, relative to
 * the largest element: the check that both computed the same thing. */
static double max_diff(op_run *r, gemm_run *g, size_t n)
{
    float *mine = malloc(n * sizeof *mine);
    double diff = 0, big = 0;
    op_once(r);
    memcpy(mine, g->c, n * sizeof *mine);
    sgemm_once(g);
    for (size_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs((double)mine[i] - g->c[i]));
        big = fmax(big, fabs((double)g->c[i]));
    }
    free(mine);
    return big > 0 ? diff / big : diff;
}
#endif

/* C [M,N] = A B, A [M,K] (ta: the transposed view of a [K,M] array). */
static void bench_matmul(mha_cpu_exec *e, int M, int N, int K, int ta)
{
    float *a = randoms((size_t)M * K, 1), *b = randoms((size_t)K * N, 2);
    float *c = randoms((size_t)M * N, 3);
    op_run r = {e, {0}};
    r.node.op = MHA_OP_MATMUL;
    r.node.src[MHA_SRC_MM_A] = ta ? view(a, 1, 1, M, K, 0, 0, 1, M)
                                  : view(a, 1, 1, M, K, 0, 0, K, 1);
    r.node.src[MHA_SRC_MM_B] = view(b, 1, 1, K, N, 0, 0, N, 1);
    r.node.dst = view(c, 1, 1, M, N, 0, 0, N, 1);
    double flops = 2.0 * M * N * K;
    timing t = best_time(op_once, &r);
    printf("matmul %s M=%d N=%d K=%d  libmha %6.1f GFLOP/s (%6.1f per cpu-s)",
           ta ? "TN" : "NN", M, N, K, flops / t.wall * 1e-9,
           flops / t.cpu * 1e-9);
#ifdef MHA_BENCH_OPENBLAS
    gemm_run g = {M, N, K, ta, a, b, c};
    timing tb = best_time(sgemm_once, &g);
    printf("  openblas %6.1f (%6.1f)  libmha/openblas %.2f",
           flops / tb.wall * 1e-9, flops / tb.cpu * 1e-9, tb.cpu / t.cpu);
    printf("  max diff %.1e", max_diff(&r, &g, (size_t)M * N));
#endif
    printf("\n");
    free(a), free(b), free(c);
}

/* ---- the fused attention backward --------------------------------------------- */

/* B = 1, H heads of d, L = S: forward with LSE, then backward; GFLOP/s by
 * the usual count (forward 2 products, backward 5, of 2 L S d each; half
 * of that with causal), and the ratio to sgemm's rate (per CPU second). */
static void bench_attention(mha_cpu_exec *e, int H, int L, int d, int causal,
                            double sgemm_rate)
{
    size_t rows = (size_t)L * H * d;
    float *q = randoms(rows, 4), *k = randoms(rows, 5), *v = randoms(rows, 6);
    float *o = randoms(rows, 7), *dout = randoms(rows, 8);
    float *dq = randoms(rows, 9), *dk = randoms(rows, 10);
    float *dv = randoms(rows, 11), *lse = randoms((size_t)H * L, 12);
    int64_t E = (int64_t)H * d;
    op_run f = {e, {0}}, b = {e, {0}};
    f.node.op = MHA_OP_ATTENTION;
    f.node.src[MHA_SRC_Q] = view(q, 1, H, L, d, L * E, d, E, 1);
    f.node.src[MHA_SRC_K] = view(k, 1, H, L, d, L * E, d, E, 1);
    f.node.src[MHA_SRC_V] = view(v, 1, H, L, d, L * E, d, E, 1);
    f.node.dst = view(o, 1, H, L, d, L * E, d, E, 1);
    f.node.extra_dst[MHA_DST_LSE] = view(lse, 1, H, 1, L, H * L, L, 0, 1);
    f.node.params.scale = 1.0f / sqrtf((float)d);
    f.node.params.causal = causal;
    f.node.params.mask_cols = L;
    b.node = f.node;
    b.node.op = MHA_OP_ATTENTION_BACKWARD;
    b.node.src[MHA_SRC_BWD_O] = f.node.dst;
    b.node.src[MHA_SRC_BWD_DO] = view(dout, 1, H, L, d, L * E, d, E, 1);
    b.node.src[MHA_SRC_BWD_LSE] = f.node.extra_dst[MHA_DST_LSE];
    b.node.dst = view(dq, 1, H, L, d, L * E, d, E, 1);
    b.node.extra_dst[MHA_DST_DK] = view(dk, 1, H, L, d, L * E, d, E, 1);
    b.node.extra_dst[MHA_DST_DV] = view(dv, 1, H, L, d, L * E, d, E, 1);
    double unit = 2.0 * L * L * d * H * (causal ? 0.5 : 1.0);
    timing tf = best_time(op_once, &f), tb = best_time(op_once, &b);
    int finite = isfinite(dq[0]) && isfinite(dk[rows - 1]) &&
                 isfinite(dv[rows / 2]);
    printf("attention H=%d L=S=%d d=%d %-6s forward+lse %6.1f GFLOP/s "
           "(%6.1f per cpu-s, %.1f ms)  backward %6.1f GFLOP/s (%6.1f per "
           "cpu-s, %.1f ms)", H, L, d, causal ? "causal" : "full",
           2 * unit / tf.wall * 1e-9, 2 * unit / tf.cpu * 1e-9,
           tf.wall * 1e3, 5 * unit / tb.wall * 1e-9,
           5 * unit / tb.cpu * 1e-9, tb.wall * 1e3);
    if (sgemm_rate > 0)
        printf("  backward/sgemm %.2f", 5 * unit / tb.cpu * 1e-9 / sgemm_rate);
    printf("%s\n", finite ? "" : "  NOT FINITE");
    free(q), free(k), free(v), free(o), free(dout), free(dq), free(dk);
    free(dv), free(lse);
}

/* sgemm's rate per CPU second on 2048 x 512 x 512 (0 without
 * OpenBLAS). */
static double sgemm_rate(void)
{
#ifdef MHA_BENCH_OPENBLAS
    float *a = randoms(2048 * 512, 1), *b = randoms(512 * 512, 2);
    float *c = randoms(2048 * 512, 3);
    gemm_run g = {2048, 512, 512, 0, a, b, c};
    timing t = best_time(sgemm_once, &g);
    free(a), free(b), free(c);
    printf("openblas sgemm 2048x512x512: %.1f GFLOP/s (%.1f per cpu-s)\n",
           2.0 * 2048 * 512 * 512 / t.wall * 1e-9,
           2.0 * 2048 * 512 * 512 / t.cpu * 1e-9);
    return 2.0 * 2048 * 512 * 512 / t.cpu * 1e-9;
#else
    return 0;
#endif
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    if (threads < 1)
        threads = mha_cpu_core_count();
    mha_context *ctx;
    mha_cpu_exec e;
    if (mha_context_create(NULL, &ctx) != MHA_OK)
        return 1;
    if (mha_cpu_exec_init(&e, &ctx->host, mha_cpu_kernels_named(NULL),
                          threads) != MHA_OK)
        return 1;
#ifdef MHA_BENCH_OPENBLAS
    openblas_set_num_threads(mha_cpu_pool_threads(e.pool));
#endif
    printf("cpu isa %s, %d threads\n", e.k->isa, mha_cpu_pool_threads(e.pool));
    bench_matmul(&e, 2048, 512, 512, 0);
    bench_matmul(&e, 2048, 512, 512, 1);
    bench_matmul(&e, 512, 512, 2048, 0);
    bench_matmul(&e, 512, 512, 2048, 1);
    double rate = sgemm_rate();
    bench_attention(&e, 8, 2048, 64, 0, rate);
    bench_attention(&e, 8, 2048, 64, 1, rate);
    mha_cpu_exec_fini(&e);
    mha_context_destroy(ctx);
    return 0;
}
