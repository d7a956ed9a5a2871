/* kernels_scalar.c: the plain-C kernel table. It is always built, runs on
 * every CPU, and is the reference the SIMD tables are tested against, so it
 * favours obviously-correct loops over speed. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

static void scalar_gemm_nt(int64_t M, int64_t N, int64_t K, const float *A,
                           int64_t lda, const float *B, int64_t ldb,
                           const float *bias, float *C, int64_t ldc)
{
    for (int64_t m = 0; m < M; m++) {
        const float *a = A + m * lda;
        for (int64_t n = 0; n < N; n++) {
            const float *b = B + n * ldb;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++)
                acc += a[k] * b[k];
            C[m * ldc + n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
}

/* Row m of C gains A[m][k] times row k of B: the inner loop walks B and C
 * with unit stride, which also lets the compiler vectorise it. */
static void scalar_gemm_nn_acc(int64_t M, int64_t N, int64_t K,
                               const float *A, int64_t lda, const float *B,
                               int64_t ldb, float *C, int64_t ldc)
{
    for (int64_t m = 0; m < M; m++) {
        float *c = C + m * ldc;
        for (int64_t k = 0; k < K; k++) {
            const float a = A[m * lda + k];
            const float *b = B + k * ldb;
            for (int64_t n = 0; n < N; n++)
                c[n] += a * b[n];
        }
    }
}

static void scalar_scale(int64_t n, float alpha, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] *= alpha;
}

static void scalar_axpy(int64_t n, float alpha, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

static void scalar_scale_add(int64_t n, float alpha, const float *x,
                             float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = alpha * y[i] + x[i];
}

/* A NaN compares false with everything, so it never replaces the running
 * maximum: NaNs are ignored as the table's contract asks. */
static float scalar_max(int64_t n, const float *x)
{
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > m)
            m = x[i];
    return m;
}

static float scalar_exp_sum(int64_t n, float m, float *x)
{
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    return sum;
}

static const mha_cpu_kernels scalar_table = {
    .isa = "scalar",
    .gemm_nt = scalar_gemm_nt,
    .gemm_nn_acc = scalar_gemm_nn_acc,
    .scale = scalar_scale,
    .axpy = scalar_axpy,
    .scale_add = scalar_scale_add,
    .max = scalar_max,
    .exp_sum = scalar_exp_sum,
};

const mha_cpu_kernels *mha_cpu_kernels_scalar(void)
{
    return &scalar_table;
}
