/* kernels_scalar.c: the plain-C kernel table. It is always built, runs on
 * every CPU, and is the reference the SIMD tables are tested against, so it
 * favours obviously-correct loops over speed. */
#include <math.h>
#include <stddef.h>

#include "half.h"
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

/* Panel width and tile rows of the scalar "tiles": any value is correct;
 * small ones keep the zero padding of packed panels small. */
enum { SCALAR_MR = 4, SCALAR_NR = 4 };

static void scalar_pack_nt(int64_t N, int64_t K, const float *B, int64_t ldb,
                           float alpha, float *out)
{
    for (int64_t n0 = 0; n0 < N; n0 += SCALAR_NR)
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < SCALAR_NR; j++)
                *out++ = n0 + j < N ? alpha * B[(n0 + j) * ldb + k] : 0.0f;
}

static void scalar_pack_nn(int64_t K, int64_t N, const float *B, int64_t ldb,
                           float *out)
{
    for (int64_t n0 = 0; n0 < N; n0 += SCALAR_NR)
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < SCALAR_NR; j++)
                *out++ = n0 + j < N ? B[k * ldb + n0 + j] : 0.0f;
}

/* A's element (m, k) is A[m*rs + k*cs]: gemm_packed and gemm_packed_tn. */
static void gemm_strided(int64_t M, int64_t N, int64_t K, const float *A,
                         int64_t rs, int64_t cs, const float *Bp, int64_t ldp,
                         const float *bias, int accumulate, float *C,
                         int64_t ldc)
{
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            const float *b = Bp + n / SCALAR_NR * ldp * SCALAR_NR +
                             n % SCALAR_NR;
            float acc = accumulate ? C[m * ldc + n] : bias ? bias[n] : 0.0f;
            for (int64_t k = 0; k < K; k++)
                acc += A[m * rs + k * cs] * b[k * SCALAR_NR];
            C[m * ldc + n] = acc;
        }
    }
}

static void scalar_gemm_packed(int64_t M, int64_t N, int64_t K,
                               const float *A, int64_t lda, const float *Bp,
                               int64_t ldp, const float *bias, int accumulate,
                               float *C, int64_t ldc)
{
    gemm_strided(M, N, K, A, lda, 1, Bp, ldp, bias, accumulate, C, ldc);
}

static void scalar_gemm_packed_tn(int64_t M, int64_t N, int64_t K,
                                  const float *At, int64_t lda,
                                  const float *Bp, int64_t ldp,
                                  const float *bias, int accumulate, float *C,
                                  int64_t ldc)
{
    gemm_strided(M, N, K, At, 1, lda, Bp, ldp, bias, accumulate, C, ldc);
}

static void scalar_scale(int64_t n, float alpha, const float *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = alpha * x[i];
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

static void scalar_f16_to_f32(int64_t n, const uint16_t *x, float *y)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = mha_f16_to_f32(x[i]);
}

/* Element c of row j of an f32 or fp16 matrix (row stride ld). */
static float kv_at(const void *m, int f16, int64_t ld, int64_t j, int64_t c)
{
    return f16 ? mha_f16_to_f32(((const uint16_t *)m)[j * ld + c])
               : ((const float *)m)[j * ld + c];
}

/* Query rows of a group scored together, so that each K element is
 * widened once for up to this many rows (GQA groups are 1 to 8 rows). */
enum { SCALAR_KV_ROWS = 8 };

/* Each (row, key) sum runs over c in order, as a dot product at a time
 * would: grouping the rows changes which loads are shared, not a bit. */
static void scalar_kv_scores(int64_t nh, int64_t G, int64_t n, int64_t d,
                             const float *q, int64_t ldq, const void *K,
                             int64_t ldk, int64_t hs, int kv_f16, float scale,
                             float *s, int64_t lds)
{
    for (int64_t h = 0; h < nh; h++)
        for (int64_t g0 = 0; g0 < G; g0 += SCALAR_KV_ROWS) {
            const int64_t r0 = h * G + g0;
            const int64_t rows =
                G - g0 < SCALAR_KV_ROWS ? G - g0 : SCALAR_KV_ROWS;
            for (int64_t j = 0; j < n; j++) {
                float acc[SCALAR_KV_ROWS] = {0};
                for (int64_t c = 0; c < d; c++) {
                    const float k = kv_at(K, kv_f16, ldk, j, h * hs + c);
                    for (int64_t g = 0; g < rows; g++)
                        acc[g] += q[(r0 + g) * ldq + c] * k;
                }
                for (int64_t g = 0; g < rows; g++)
                    s[(r0 + g) * lds + j] = scale * acc[g];
            }
        }
}

/* Each V element is widened once and added into every row of its group;
 * every accumulator still takes its keys in order. */
static void scalar_kv_values(int64_t nh, int64_t G, int64_t n, int64_t d,
                             const float *p, int64_t ldp, const void *V,
                             int64_t ldv, int64_t hs, int kv_f16, float *acc,
                             int64_t ldacc)
{
    for (int64_t h = 0; h < nh; h++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t c = 0; c < d; c++) {
                const float v = kv_at(V, kv_f16, ldv, j, h * hs + c);
                for (int64_t r = h * G; r < (h + 1) * G; r++)
                    acc[r * ldacc + c] += p[r * ldp + j] * v;
            }
}

static const mha_cpu_kernels scalar_table = {
    .isa = "scalar",
    .mr = SCALAR_MR,
    .nr = SCALAR_NR,
    .gemm_nt = scalar_gemm_nt,
    .gemm_nn_acc = scalar_gemm_nn_acc,
    .pack_nt = scalar_pack_nt,
    .pack_nn = scalar_pack_nn,
    .gemm_packed = scalar_gemm_packed,
    .gemm_packed_tn = scalar_gemm_packed_tn,
    .scale = scalar_scale,
    .axpy = scalar_axpy,
    .scale_add = scalar_scale_add,
    .max = scalar_max,
    .exp_sum = scalar_exp_sum,
    .f16_to_f32 = scalar_f16_to_f32,
    .kv_scores = scalar_kv_scores,
    .kv_values = scalar_kv_values,
};

const mha_cpu_kernels *mha_cpu_kernels_scalar(void)
{
    return &scalar_table;
}
