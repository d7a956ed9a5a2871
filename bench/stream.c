/* stream.c: the machine's memory bandwidth for mha-bench --targets, by a
 * STREAM-style copy (McCalpin's "Copy" kernel, a[i] = b[i]) over arrays
 * far larger than the caches, split across threads. Like STREAM it counts
 * the bytes read plus the bytes written and keeps the best of several
 * passes. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "targets.h"

#define STREAM_FLOATS ((size_t)64 << 20) /* 256 MiB an array */
#define STREAM_PASSES 6
#define STREAM_MAX_THREADS 256

typedef struct copy_part {
    float *dst;
    const float *src;
    size_t n;
} copy_part;

static void *copy_main(void *arg)
{
    copy_part *p = arg;
    for (size_t i = 0; i < p->n; i++)
        p->dst[i] = p->src[i];
    return NULL;
}

/* One pass with threads threads; 0, or -1 when a thread cannot start. */
static int copy_pass(float *dst, const float *src, int threads)
{
    pthread_t tid[STREAM_MAX_THREADS];
    copy_part part[STREAM_MAX_THREADS];
    size_t chunk = STREAM_FLOATS / (size_t)threads;
    int started = 0, rc = 0;
    for (int t = 1; t < threads; t++) {
        part[t] = (copy_part){dst + chunk * (size_t)t, src + chunk * (size_t)t,
                              t == threads - 1 ? STREAM_FLOATS - chunk * (size_t)t
                                               : chunk};
        if (pthread_create(&tid[t], NULL, copy_main, &part[t]) != 0) {
            rc = -1;
            break;
        }
        started = t;
    }
    part[0] = (copy_part){dst, src, threads > 1 ? chunk : STREAM_FLOATS};
    copy_main(&part[0]);
    for (int t = 1; t <= started; t++)
        pthread_join(tid[t], NULL);
    return rc;
}

double bench_stream_copy_gbs(int threads)
{
    threads = threads < 1 ? 1 : threads > STREAM_MAX_THREADS
                                    ? STREAM_MAX_THREADS : threads;
    float *a = malloc(STREAM_FLOATS * sizeof *a);
    float *b = malloc(STREAM_FLOATS * sizeof *b);
    double best = 0;
    if (a && b) {
        memset(a, 0, STREAM_FLOATS * sizeof *a); /* fault the pages in */
        for (size_t i = 0; i < STREAM_FLOATS; i++)
            b[i] = (float)(i & 1023);
        for (int pass = 0; pass < STREAM_PASSES; pass++) {
            double t0 = bench_now();
            if (copy_pass(a, b, threads))
                break;
            double s = bench_now() - t0;
            double gbs = 2.0 * (double)(STREAM_FLOATS * sizeof *a) / s / 1e9;
            best = gbs > best ? gbs : best;
        }
    }
    free(a);
    free(b);
    return best > 0 ? best : -1;
}
