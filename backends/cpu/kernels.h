/* kernels.h: the CPU backend's primitive kernels, one table per ISA. ops.c
 * and attention.c compose every graph op from these, so an ISA is added by
 * filling one table in a file compiled with that ISA's flags; the scalar
 * table is always built and is the reference the others are tested against.
 * The SIMD tables share their code through kernels_simd.h. */
#ifndef MHA_CPU_KERNELS_H
#define MHA_CPU_KERNELS_H

#include <stdint.h>

/* All matrices are row-major with unit stride in the innermost dimension;
 * ld* are row strides in floats. Sizes may be any value >= 0 (no multiple-of
 * requirement); pointers need only float alignment.
 *
 * Packed operands. A GEMM's B operand can be packed once and reused by many
 * calls (every row block of a projection, every query tile of attention).
 * A packed B of K rows and N columns is ceil(N/nr) panels; panel p holds
 * columns [p*nr, p*nr + nr) as ldp rows of nr floats (row k at
 * panel + k*nr), zero past column N. ldp >= K is the packer's K, so rows
 * [k0, k0 + kc) of a packed block are the packed B at Bp + k0*nr with the
 * same ldp. The arithmetic of gemm_packed depends only on M, N, K and the
 * data, never on where the caller cut its tasks, so results are the same
 * for every thread count. */
typedef struct mha_cpu_kernels {
    const char *isa; /* "scalar", "avx2", "avx512", "neon" */

    /* Rows of A per register tile and floats per packed panel: callers size
     * their row and column blocks in multiples of these. */
    int mr, nr;

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

    /* Packs B^T, scaled: the packed operand (K rows, N columns, ldp = K)
     * whose element [k][n] is alpha * B[n][k] (B is N x K, stride ldb).
     * Writes ceil(N/nr) * nr * K floats to out. */
    void (*pack_nt)(int64_t N, int64_t K, const float *B, int64_t ldb,
                    float alpha, float *out);

    /* Packs B as is: element [k][n] of the packed operand (K rows, N
     * columns, ldp = K) is B[k][n] (B is K x N, stride ldb). Writes
     * ceil(N/nr) * nr * K floats to out. */
    void (*pack_nn)(int64_t K, int64_t N, const float *B, int64_t ldb,
                    float *out);

    /* C[m][n] = init + sum_{k < K} A[m][k] * Bp[k][n] for m < M, n < N, with
     * Bp packed (see above, panel row stride ldp), where init is C[m][n]
     * when accumulate is set, else bias[n] (0 without a bias). */
    void (*gemm_packed)(int64_t M, int64_t N, int64_t K, const float *A,
                        int64_t lda, const float *Bp, int64_t ldp,
                        const float *bias, int accumulate, float *C,
                        int64_t ldc);

    /* y[i] = alpha * x[i]; x may be y (in place), or another array (a
       result scaled as it is stored) */
    void (*scale)(int64_t n, float alpha, const float *x, float *y);

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

    /* y[i] = x[i], fp16 bits widened to f32: exact, and bit for bit what
     * core/half.h's mha_f16_to_f32 gives (NaNs quieted, payload kept), so
     * every table converts fp16 K, V and Q rows identically. */
    void (*f16_to_f32)(int64_t n, const uint16_t *x, float *y);

    /* The decode kernels: nh kv heads, each with G query rows (its group,
     * a few queries each; row r = h*G + g), against n keys and values read
     * in place: row j of kv head h at element j*ldk + h*hs (j*ldv + h*hs)
     * of K (V), f32 or, with kv_f16, fp16 bits widened as f16_to_f32 does
     * (no conversion pass, no packing). Key by key, every head's row of
     * that token is read once for all of its G rows, so a token-major
     * cache is read in memory order. Any nh, G, n, d >= 0. Only rows
     * j < n are read; a table may prefetch a few rows past n (the next
     * block's, when the caller walks blocks in order), a hint that never
     * faults.
     * kv_scores: s[r*lds + j] = scale * sum_{c < d} q[r*ldq + c] * K_jh[c];
     * kv_values: acc[r*ldacc + c] += sum_{j < n} p[r*ldp + j] * V_jh[c]. */
    void (*kv_scores)(int64_t nh, int64_t G, int64_t n, int64_t d,
                      const float *q, int64_t ldq, const void *K,
                      int64_t ldk, int64_t hs, int kv_f16, float scale,
                      float *s, int64_t lds);
    void (*kv_values)(int64_t nh, int64_t G, int64_t n, int64_t d,
                      const float *p, int64_t ldp, const void *V,
                      int64_t ldv, int64_t hs, int kv_f16, float *acc,
                      int64_t ldacc);

    /* gemm_packed with A given transposed: A[m][k] is At[k*lda + m] (At is
     * K x M, stride lda), so a product by a transposed matrix (the
     * backward's P^T dO, dS^T Q, dY^T X) needs no transposing copy. The
     * same arithmetic as gemm_packed on the transposed A, bit for bit. */
    void (*gemm_packed_tn)(int64_t M, int64_t N, int64_t K, const float *At,
                           int64_t lda, const float *Bp, int64_t ldp,
                           const float *bias, int accumulate, float *C,
                           int64_t ldc);
} mha_cpu_kernels;

/* The tables. scalar is always present; the others return NULL when the
 * library was built without them or the running CPU lacks the ISA. */
const mha_cpu_kernels *mha_cpu_kernels_scalar(void);
const mha_cpu_kernels *mha_cpu_kernels_avx2(void);
const mha_cpu_kernels *mha_cpu_kernels_avx512(void);
const mha_cpu_kernels *mha_cpu_kernels_neon(void);

#endif /* MHA_CPU_KERNELS_H */
