/* ops.h: the CPU backend's graph ops, composed from the primitive kernels
 * of one ISA table and spread over the device's thread pool. */
#ifndef MHA_CPU_OPS_H
#define MHA_CPU_OPS_H

#include "kernels.h"
#include "threadpool.h"

/* Per-thread working memory of the fused attention, grown on demand and
 * kept, so a repeated forward allocates nothing. */
typedef struct mha_cpu_scratch {
    float *data;
    size_t floats; /* per thread */
} mha_cpu_scratch;

typedef struct mha_cpu_exec {
    mha_host *host;
    const mha_cpu_kernels *k;
    mha_cpu_pool *pool;
    mha_cpu_scratch scratch;
} mha_cpu_exec;

bool mha_cpu_op_supported(const mha_node *node);
mha_status mha_cpu_op_run(mha_cpu_exec *exec, const mha_node *node);

#endif
