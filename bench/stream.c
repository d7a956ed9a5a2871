/* stream.c: the machine's memory bandwidth for mha-bench --targets, by a
 * STREAM-style copy (McCalpin's "Copy" kernel, a[i] = b[i]) and a read
 * (a sum of b's bits, what a decode step's pass over the KV cache does)
 * over arrays far larger than the caches, split across threads. Like
 * STREAM it counts the bytes read plus the bytes written and keeps the
 * best of several passes. The arrays are allocated as the CPU backend
 * allocates a KV cache (bench_buffer_alloc, here too: huge pages where the
 * system gives them), so the bound and the decode it bounds read the same
 * kind of memory. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "huge_pages.h"
#include "targets.h"

#define STREAM_FLOATS ((size_t)64 << 20) /* 256 MiB an array */
#define STREAM_PASSES 6
#define STREAM_MAX_THREADS 256

typedef struct copy_part {
    float *dst; /* NULL: read only, into sum */
    const float *src;
    size_t n;
    uint32_t sum;
} copy_part;

/* The read sums the floats' bits in four independent integer lanes, so
 * neither a dependency chain nor float rounding limits it, and stores the
 * sum so the compiler must keep the loads. */
static void read_part(copy_part *p)
{
    const uint32_t *x = (const uint32_t *)p->src;
    uint32_t s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= p->n; i += 4)
        for (int j = 0; j < 4; j++)
            s[j] += x[i + j];
    for (; i < p->n; i++)
        s[0] += x[i];
    p->sum = s[0] + s[1] + s[2] + s[3];
}

static void *copy_main(void *arg)
{
    copy_part *p = arg;
    if (!p->dst) {
        read_part(p);
        return NULL;
    }
    for (size_t i = 0; i < p->n; i++)
        p->dst[i] = p->src[i];
    return NULL;
}

/* One pass with threads threads (dst NULL: a read); 0, or -1 when a
 * thread cannot start. */
static int copy_pass(float *dst, const float *src, int threads)
{
    pthread_t tid[STREAM_MAX_THREADS];
    copy_part part[STREAM_MAX_THREADS];
    size_t chunk = STREAM_FLOATS / (size_t)threads;
    int started = 0, rc = 0;
    for (int t = 1; t < threads; t++) {
        part[t] = (copy_part){dst ? dst + chunk * (size_t)t : NULL,
                              src + chunk * (size_t)t,
                              t == threads - 1 ? STREAM_FLOATS - chunk * (size_t)t
                                               : chunk, 0};
        if (pthread_create(&tid[t], NULL, copy_main, &part[t]) != 0) {
            rc = -1;
            break;
        }
        started = t;
    }
    part[0] = (copy_part){dst, src, threads > 1 ? chunk : STREAM_FLOATS, 0};
    copy_main(&part[0]);
    for (int t = 1; t <= started; t++)
        pthread_join(tid[t], NULL);
    return rc;
}

void *bench_buffer_alloc(size_t bytes)
{
    size_t align = mha_cpu_buffer_align(bytes);
    void *p = aligned_alloc(align, (bytes + align - 1) / align * align);
    if (p)
        mha_cpu_advise_huge(p, bytes);
    return p;
}

struct bench_stream {
    float *a; /* NULL: a reader */
    float *b;
};

void bench_stream_close(bench_stream *s)
{
    if (!s)
        return;
    free(s->a);
    free(s->b);
    free(s);
}

bench_stream *bench_stream_open(int copy)
{
    bench_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->b = bench_buffer_alloc(STREAM_FLOATS * sizeof *s->b);
    if (copy)
        s->a = bench_buffer_alloc(STREAM_FLOATS * sizeof *s->a);
    if (!s->b || (copy && !s->a)) {
        bench_stream_close(s);
        return NULL;
    }
    if (s->a)
        memset(s->a, 0, STREAM_FLOATS * sizeof *s->a); /* fault the pages in */
    for (size_t i = 0; i < STREAM_FLOATS; i++)
        s->b[i] = (float)(i & 1023);
    return s;
}

double bench_stream_gbs(bench_stream *s, int threads, int passes)
{
    threads = threads < 1 ? 1 : threads > STREAM_MAX_THREADS
                                    ? STREAM_MAX_THREADS : threads;
    double best = 0;
    for (int pass = 0; pass < passes; pass++) {
        double t0 = bench_now();
        if (copy_pass(s->a, s->b, threads))
            return -1;
        double sec = bench_now() - t0;
        double gbs = (s->a ? 2.0 : 1.0) *
                     (double)(STREAM_FLOATS * sizeof *s->b) / sec / 1e9;
        best = gbs > best ? gbs : best;
    }
    return best > 0 ? best : -1;
}

/* The best of STREAM_PASSES copies (or reads), on arrays of their own. */
static double stream_gbs(int threads, int copy)
{
    bench_stream *s = bench_stream_open(copy);
    double gbs = s ? bench_stream_gbs(s, threads, STREAM_PASSES) : -1;
    bench_stream_close(s);
    return gbs;
}

double bench_stream_copy_gbs(int threads)
{
    return stream_gbs(threads, 1);
}

double bench_stream_read_gbs(int threads)
{
    return stream_gbs(threads, 0);
}
