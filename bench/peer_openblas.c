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

void bench_openblas_threads(int n);
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
#else
int bench_openblas_forward(const bench_case *c, const bench_case_data *d,
                           float *out)
{
    (void)c;
    (void)d;
    (void)out;
    return -1;
}
#endif
