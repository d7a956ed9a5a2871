/* ops.h: the CPU backend's graph ops, composed from the primitive kernels
 * of one ISA table and spread over the device's thread pool. ops.c has the
 * dispatch, the projection and the unfused ops, attention.c the fused
 * attention. */
#ifndef MHA_CPU_OPS_H
#define MHA_CPU_OPS_H

#include "kernels.h"
#include "threadpool.h"

/* Working memory grown on demand and kept, so a repeated forward allocates
 * nothing: one slot per thread, or one shared block. Every slot starts on
 * a 64-byte boundary, so full-width vector rows never split cache lines. */
typedef struct mha_cpu_scratch {
    float *data;
    size_t floats; /* per slot, a multiple of 16 */
    void *raw;     /* what the allocator returned */
} mha_cpu_scratch;

typedef struct mha_cpu_exec {
    mha_host *host;
    const mha_cpu_kernels *k;
    mha_cpu_pool *pool;
    mha_cpu_scratch scratch; /* per thread: attention tiles */
    mha_cpu_scratch packed;  /* shared: packed GEMM operands of one op */
    size_t pack_budget;      /* floats of packed K and V per attention
                                round (MHA_CPU_PACK_BUDGET_FLOATS); tests
                                lower it to force several rounds */
} mha_cpu_exec;

/* Packed K and V of the attention heads in flight: 32 MiB, two heads of
 * 32k keys at head size 64. */
#define MHA_CPU_PACK_BUDGET_FLOATS ((size_t)8 << 20)

/* The table for isa ("scalar", "avx2", "avx512", "neon"), or NULL when this
 * build or CPU lacks it; NULL or "" gives the best table the CPU runs. */
const mha_cpu_kernels *mha_cpu_kernels_named(const char *isa);

/* Sets up *e with table k and a pool of threads (the caller included; at
 * least 1). backend.c opens a device with it; mha-bench times one op
 * through it. Release with mha_cpu_exec_fini, also after a failure. */
mha_status mha_cpu_exec_init(mha_cpu_exec *e, mha_host *host,
                             const mha_cpu_kernels *k, int threads);
void mha_cpu_exec_fini(mha_cpu_exec *e);

bool mha_cpu_op_supported(const mha_node *node);
mha_status mha_cpu_op_run(mha_cpu_exec *exec, const mha_node *node);

/* ---- shared by ops.c and attention.c -------------------------------------- */

/* Element (i0, i1, i2, 0) of t: a row pointer. */
float *mha_cpu_at(const mha_tdesc *t, int64_t i0, int64_t i1, int64_t i2);

/* Makes slot s of *s hold at least floats floats in each of slots slots,
 * keeping the old block when it is big enough. */
mha_status mha_cpu_scratch_reserve(mha_cpu_exec *e, mha_cpu_scratch *s,
                                   size_t floats, int slots);

/* Adds the masks of row i (batch b, head h) to raw scores row[0..cnt) of
 * keys [j0, j0 + cnt): mask and key padding mask. Keys from
 * params.mask_cols on (the appended bias/zero rows) are never masked. */
void mha_cpu_mask_row(const mha_cpu_kernels *k, const mha_node *n,
                      int64_t b, int64_t h, int64_t i, int64_t j0,
                      int64_t cnt, float *row);

/* Sets to -inf the scores row[0..cnt) of keys [j0, j0 + cnt) outside the
 * attendable keys [lo, hi) (causal, window, lengths); keys from
 * params.mask_cols on are never masked. */
void mha_cpu_mask_outside(const mha_node *n, int64_t j0, int64_t cnt,
                          int64_t lo, int64_t hi, float *row);

/* 1 when x[0..n) holds a NaN. */
int mha_cpu_has_nan(int64_t n, const float *x);

mha_status mha_cpu_run_attention(mha_cpu_exec *e, const mha_node *n);

/* ROPE (rope.c): f32 or f16 tensors, any strides. */
bool mha_cpu_rope_supported(const mha_node *n);
mha_status mha_cpu_run_rope(mha_cpu_exec *e, const mha_node *n);

/* MUL (rope.c): X and dst f32 or f16, F f32, any strides. */
bool mha_cpu_mul_supported(const mha_node *n);
mha_status mha_cpu_run_mul(mha_cpu_exec *e, const mha_node *n);
/* HEAD_STATS (head_stats.c): f32 probabilities and sums, unit inner
 * strides. */
bool mha_cpu_head_stats_supported(const mha_node *n);
mha_status mha_cpu_run_head_stats(mha_cpu_exec *e, const mha_node *n);


/* MATMUL (matmul.c): f32, A and B plain or transposed views. */
bool mha_cpu_matmul_supported(const mha_node *n);
mha_status mha_cpu_run_matmul(mha_cpu_exec *e, const mha_node *n);

/* SUM_ROWS and ADAMW (training.c): f32; SUM_ROWS any source strides. */
bool mha_cpu_training_supported(const mha_node *n);
mha_status mha_cpu_run_training(mha_cpu_exec *e, const mha_node *n);

/* ATTENTION_BACKWARD (attention_backward.c): f32, the nn.MHA subset. */
bool mha_cpu_attention_backward_supported(const mha_node *n);
mha_status mha_cpu_run_attention_backward(mha_cpu_exec *e, const mha_node *n);

#endif
