/* kernels.h: the CPU backend's primitive kernels, one table per ISA. ops.c
 * composes every graph op from these, so an ISA is added by filling one
 * table in a file compiled with that ISA's flags; the scalar table is always
 * built and is the reference the others are tested against. */
#ifndef MHA_CPU_KERNELS_H
#define MHA_CPU_KERNELS_H

#include <stdint.h>

/* All matrices are row-major with unit stride in the innermost dimension;
 * ld* are row strides in floats. Sizes may be any value >= 0 (no multiple-of
 * requirement); pointers need only float alignment. */
typedef struct mha_cpu_kernels {
    const char *isa; /* "scalar", "avx2", "avx512", "neon" */

    /* C[m][n] = sum_k A[m][k] * B[n][k] + (bias ? bias[n] : 0)
     * for m < M, n < N: "A times B transposed", the projection and scores
     * shape. Overwrites C. */
    void (*gemm_nt)(int64_t M, int64_t N, int64_t K, const float *A,
                    int64_t lda, const float *B, int64_t ldb,
                    const float *bias, float *C, int64_t ldc);

    /* C[m][n] += sum_k A[m][k] * B[k][n]: the weighted-sum shape.
     * Accumulates into C. */
    void (*gemm_nn_acc)(int64_t M, int64_t N, int64_t K, const float *A,
                        int64_t lda, const float *B, int64_t ldb, float *C,
                        int64_t ldc);

    /* y[i] = alpha * y[i] */
    void (*scale)(int64_t n, float alpha, float *y);

    /* y[i] += alpha * x[i] */
    void (*axpy)(int64_t n, float alpha, const float *x, float *y);

    /* y[i] = alpha * y[i] + x[i]: scale scores then add a mask row */
    void (*scale_add)(int64_t n, float alpha, const float *x, float *y);

    /* max over x ignoring NaN; -INFINITY when n == 0 or all are -inf/NaN */
    float (*max)(int64_t n, const float *x);

    /* x[i] = exp(x[i] - m), returns the sum (accumulated in fp32).
     * m may be finite or +inf; exp(-inf) is 0 and NaN propagates. The exp
     * is within 1e-6 relative error of expf for arguments in [-87, 0];
     * below that it flushes to 0 (tested in tests/test_cpu_kernels.c). */
    float (*exp_sum)(int64_t n, float m, float *x);
} mha_cpu_kernels;

/* The tables. scalar is always present; the others return NULL when the
 * library was built without them or the running CPU lacks the ISA. */
const mha_cpu_kernels *mha_cpu_kernels_scalar(void);
const mha_cpu_kernels *mha_cpu_kernels_avx2(void);
const mha_cpu_kernels *mha_cpu_kernels_avx512(void);
const mha_cpu_kernels *mha_cpu_kernels_neon(void);

#endif /* MHA_CPU_KERNELS_H */
