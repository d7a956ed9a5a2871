/* threadpool.c: pthreads behind mha_cpu_pool. Tasks are claimed with an
 * atomic counter, so uneven tasks balance themselves; a generation number
 * wakes the workers for each job. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "threadpool.h"

typedef struct worker {
    mha_cpu_pool *pool;
    pthread_t thread;
    int index;
} worker;

struct mha_cpu_pool {
    mha_host *host;
    int threads; /* including the caller */
    worker *workers;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    uint64_t generation;
    int busy;     /* workers still in the current job */
    int stopping;
    /* the current job */
    mha_cpu_task_fn fn;
    void *arg;
    int64_t ntasks;
    atomic_int_fast64_t next;
};

static void work(mha_cpu_pool *pool, int thread)
{
    for (;;) {
        int64_t t = atomic_fetch_add(&pool->next, 1);
        if (t >= pool->ntasks)
            return;
        pool->fn(pool->arg, t, thread);
    }
}

static void *worker_main(void *p)
{
    worker *w = p;
    mha_cpu_pool *pool = w->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stopping && pool->generation == seen)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stopping)
            break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->lock);
        work(pool, w->index);
        pthread_mutex_lock(&pool->lock);
        if (--pool->busy == 0)
            pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

mha_status mha_cpu_pool_create(mha_host *host, int threads,
                               mha_cpu_pool **out)
{
    mha_cpu_pool *pool = mha_host_calloc(host, 1, sizeof *pool);
    if (!pool)
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "cpu: out of memory for the thread pool");
    pool->host = host;
    pool->threads = threads < 1 ? 1 : threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->next, 0);
    if (pool->threads > 1) {
        pool->workers = mha_host_calloc(host, (size_t)pool->threads - 1,
                                        sizeof *pool->workers);
        if (!pool->workers) {
            mha_cpu_pool_destroy(pool);
            return mha_host_error(host, MHA_OUT_OF_MEMORY,
                                  "cpu: out of memory for the thread pool");
        }
    }
    for (int i = 0; i < pool->threads - 1; i++) {
        worker *w = &pool->workers[i];
        w->pool = pool;
        w->index = i + 1;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            mha_cpu_pool_destroy(pool);
            return mha_host_error(host, MHA_DEVICE_ERROR,
                                  "cpu: pthread_create failed for worker %d "
                                  "of %d",
                                  i + 1, threads);
        }
        pool->started++;
    }
    *out = pool;
    return MHA_OK;
}

void mha_cpu_pool_destroy(mha_cpu_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->started; i++)
        pthread_join(pool->workers[i].thread, NULL);
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    mha_host_free(pool->host, pool->workers);
    mha_host_free(pool->host, pool);
}

int mha_cpu_pool_threads(const mha_cpu_pool *pool) { return pool->threads; }

void mha_cpu_pool_run(mha_cpu_pool *pool, int64_t ntasks, mha_cpu_task_fn fn,
                      void *arg)
{
    if (ntasks <= 0)
        return;
    if (pool->started == 0 || ntasks == 1) {
        for (int64_t t = 0; t < ntasks; t++)
            fn(arg, t, 0);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->ntasks = ntasks;
    atomic_store(&pool->next, 0);
    pool->busy = pool->started;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    work(pool, 0);
    pthread_mutex_lock(&pool->lock);
    while (pool->busy > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}
