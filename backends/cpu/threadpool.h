/* threadpool.h: the CPU backend's own small thread pool. A job is a count of
 * independent tasks; the calling thread works too, and idle workers sleep on
 * a condition variable rather than spin. */
#ifndef MHA_CPU_THREADPOOL_H
#define MHA_CPU_THREADPOOL_H

#include <stdint.h>

#include "backend.h"

typedef struct mha_cpu_pool mha_cpu_pool;

/* task is in [0, ntasks); thread in [0, threads) names the scratch slot the
 * task may use, never shared with a task running at the same time. */
typedef void (*mha_cpu_task_fn)(void *arg, int64_t task, int thread);

mha_status mha_cpu_pool_create(mha_host *host, int threads,
                               mha_cpu_pool **out);
void mha_cpu_pool_destroy(mha_cpu_pool *pool);
int mha_cpu_pool_threads(const mha_cpu_pool *pool);

/* Runs fn for every task and returns when all are done. */
void mha_cpu_pool_run(mha_cpu_pool *pool, int64_t ntasks, mha_cpu_task_fn fn,
                      void *arg);

#endif
