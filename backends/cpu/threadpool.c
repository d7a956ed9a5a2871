/* threadpool.c: pthreads behind mha_cpu_pool. Tasks are claimed with an
 * atomic counter, so uneven tasks balance themselves; a generation number
 * starts each job. A forward is a handful of jobs back to back, so a
 * worker that finishes one first spins for up to SPIN_NS on the generation
 * (a condition-variable wake-up costs tens of microseconds, a real share of
 * a small forward), then sleeps on the condition variable: waiting threads
 * never spin for longer than that. The caller waits for the job's end the
 * same way. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield")
#else
#define cpu_relax() ((void)0)
#endif

#include "threadpool.h"

#define SPIN_NS 100000 /* 0.1 ms */
#define CACHE_LINE 64

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
    atomic_int stopping;
    /* the current job, written under the lock before generation moves */
    mha_cpu_task_fn fn;
    void *arg;
    int64_t ntasks;
    /* Each counter on its own cache line, whatever the allocation's
     * alignment: every claim writes next, every finishing worker writes
     * busy, and spinners read generation. */
    char pad0[CACHE_LINE];
    atomic_uint_fast64_t generation;
    char pad1[CACHE_LINE];
    atomic_int busy; /* workers still in the job */
    char pad2[CACHE_LINE];
    atomic_int_fast64_t next;
    char pad3[CACHE_LINE];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until done(pool, arg) or SPIN_NS pass; returns done's verdict. */
static int spin_until(mha_cpu_pool *pool, int (*done)(mha_cpu_pool *, void *),
                      void *arg)
{
    int64_t start = now_ns();
    for (int i = 1;; i++) {
        if (done(pool, arg))
            return 1;
        cpu_relax();
        if (i % 64 == 0 && now_ns() - start > SPIN_NS)
            return done(pool, arg);
    }
}

static int generation_moved(mha_cpu_pool *pool, void *seen)
{
    return atomic_load_explicit(&pool->generation, memory_order_acquire) !=
               *(uint64_t *)seen ||
           atomic_load_explicit(&pool->stopping, memory_order_relaxed);
}

static int job_done(mha_cpu_pool *pool, void *unused)
{
    (void)unused;
    return atomic_load_explicit(&pool->busy, memory_order_acquire) == 0;
}

static void work(mha_cpu_pool *pool, int thread)
{
    for (;;) {
        int64_t t = atomic_fetch_add(&pool->next, 1);
        if (t >= pool->ntasks)
            return;
        pool->fn(pool->arg, t, thread);
    }
}

/* Waits for a generation other than seen (or stopping), spinning first;
 * returns with the lock held. */
static void wait_for_job(mha_cpu_pool *pool, uint64_t seen)
{
    spin_until(pool, generation_moved, &seen);
    pthread_mutex_lock(&pool->lock);
    while (!atomic_load(&pool->stopping) &&
           atomic_load(&pool->generation) == seen)
        pthread_cond_wait(&pool->wake, &pool->lock);
}

static void *worker_main(void *p)
{
    worker *w = p;
    mha_cpu_pool *pool = w->pool;
    uint64_t seen = 0;
    for (;;) {
        wait_for_job(pool, seen);
        if (atomic_load(&pool->stopping))
            break;
        seen = atomic_load(&pool->generation);
        pthread_mutex_unlock(&pool->lock);
        work(pool, w->index);
        /* The last one out signals under the lock, so a caller that saw
         * busy > 0 under the lock is already waiting and gets the signal. */
        if (atomic_fetch_sub_explicit(&pool->busy, 1, memory_order_acq_rel) ==
            1) {
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
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
    atomic_init(&pool->stopping, 0);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->busy, 0);
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
    atomic_store(&pool->stopping, 1);
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
    atomic_store(&pool->busy, pool->started);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    work(pool, 0);
    if (spin_until(pool, job_done, NULL))
        return;
    pthread_mutex_lock(&pool->lock);
    while (atomic_load(&pool->busy) > 0)
        pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}
