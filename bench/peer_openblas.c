/* peer_openblas.c: multi-head attention composed from OpenBLAS's
 * cblas_sgemm (projections, scores, weighted sum, output) and a plain
 * softmax: the "what a BLAS gives you" baseline row of mha-bench. Built
 * with MHA_BENCH_OPENBLAS only; otherwise the forward reports it is
 * missing. */
#include <math.h>
#include <stdlib.h>

#include "peers.h"

#ifdef MHA_BENCH_OPENBLAS
#include <cblas.h>

void bench_openblas_threads(int n)
{
    if (n > 0)
        openblas_set_num_threads(n);
}

/* y (rows x n, ldy) = x (rows x k, ldx) w^T (w: n x k) + bias */
static void linear(int rows, int n, int k, const float *x, int ldx,
                   const float *w, const float *bias, float *y, int ldy)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < n; j++)
            y[(size_t)i * ldy + j] = bias[j];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, k, 1.0f, x,
                ldx, w, k, 1.0f, y, ldy);
}

int bench_openblas_forward(const bench_case *c, const bench_case_data *d,
                           float *out)
{
    int e = (int)c->embed_dim, h = (int)c->heads, b = (int)c->batch,
        l = (int)c->tgt_len, s = (int)c->src_len, kd = (int)c->kdim,
        vd = (int)c->vdim, dh = e / h;
    float *q = malloc((size_t)l * e * sizeof(float));
    float *k = malloc((size_t)s * e * sizeof(float));
    float *v = malloc((size_t)s * e * sizeof(float));
    float *o = malloc((size_t)l * e * sizeof(float));
    float *p = malloc((size_t)l * s * sizeof(float));
    int rc = -1;
    if (!q || !k || !v || !o || !p)
        goto done;
    float scale = 1.0f / sqrtf((float)dh);
    for (int bi = 0; bi < b; bi++) {
        linear(l, e, e, d->q + (size_t)bi * e, b * e, d->w_q, d->b_in, q, e);
        linear(s, e, kd, d->k + (size_t)bi * kd, b * kd, d->w_k, d->b_in + e,
               k, e);
        linear(s, e, vd, d->v + (size_t)bi * vd, b * vd, d->w_v,
               d->b_in + 2 * e, v, e);
        for (int hi = 0; hi < h; hi++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, l, s, dh,
                        scale, q + hi * dh, e, k + hi * dh, e, 0.0f, p, s);
            for (int i = 0; i < l; i++) {
                float *row = p + (size_t)i * s;
                int n = c->causal ? (i + 1 < s ? i + 1 : s) : s;
                float m = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++)
                    m = row[j] > m ? row[j] : m;
                for (int j = 0; j < n; j++)
                    sum += row[j] = expf(row[j] - m);
                for (int j = 0; j < n; j++)
                    row[j] /= sum;
                for (int j = n; j < s; j++)
                    row[j] = 0;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l, dh, s,
                        1.0f, p, s, v + hi * dh, e, 0.0f, o + hi * dh, e);
        }
        linear(l, e, e, o, e, d->w_o, d->b_o, out + (size_t)bi * e, b * e);
    }
    rc = 0;
done:
    free(q);
    free(k);
    free(v);
    free(o);
    free(p);
    return rc;
}
typedef struct sgemm_run {
    int n;
    const float *a, *b;
    float *c;
} sgemm_run;

static int sgemm_once(void *arg)
{
    sgemm_run *r = arg;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r->n, r->n, r->n,
                1.0f, r->a, r->n, r->b, r->n, 0.0f, r->c, r->n);
    return 0;
}

double bench_openblas_sgemm_gflops(int n, const bench_options *o)
{
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b);
    float *c = malloc(count * sizeof *c);
    double gflops = -1;
    if (a && b && c) {
        for (size_t i = 0; i < count; i++) {
            a[i] = (float)(i % 97) / 97.0f - 0.5f;
            b[i] = (float)(i % 89) / 89.0f - 0.5f;
        }
        bench_openblas_threads(o->threads);
        sgemm_run run = {n, a, b, c};
        for (int i = 0; i < o->warmup; i++)
            sgemm_once(&run);
        bench_result r;
        if (bench_time_runs(o, sgemm_once, &run, &r) == 0 && r.median_ms > 0)
            gflops = 2.0 * n * (double)n * n / (r.median_ms * 1e6);
    }
    free(a);
    free(b);
    free(c);
    return gflops;
}
#else
void bench_openblas_threads(int n)
{
    (void)n;
}

double bench_openblas_sgemm_gflops(int n, const bench_options *o)
{
    (void)n;
    (void)o;
    return -1;
}

int bench_openblas_forward(const bench_case *c, const bench_case_data *d,
                           float *out)
{
    (void)c;
    (void)d;
    (void)out;
    return -1;
}
#endif
