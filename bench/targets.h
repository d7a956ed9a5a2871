/* targets.h: mha-bench --targets, the CPU backend's performance targets
 * (issue 7) measured in one run and printed as "target | measured | goal |
 * met", and the measurements only it needs: the fused attention op alone,
 * OpenBLAS sgemm and a STREAM-style copy. */
#ifndef MHA_BENCH_TARGETS_H
#define MHA_BENCH_TARGETS_H

#include <stdio.h>

#include "bench.h"

/* Times the CPU backend's fused attention op alone (best ISA, o->threads
 * threads) on random Q, K, V for case c (batch 1; a decoder case: its
 * attention node over a cache of src_len tokens), each call on the next of
 * layers copies of K and V (1 to 32; more are 32): r->runs, median_ms and
 * p95_ms as bench_time_runs fills them. 0, or non-zero on a failure. */
int bench_attention_part(mha_context *ctx, const bench_options *o,
                         const bench_case *c, int layers, bench_result *r);
/* The same, opened once and timed again and again (bench_attention_time:
 * o->warmup untimed calls, then bench_time_runs), so that a timing can be
 * paired with a reference measured right before it. */
typedef struct bench_attention bench_attention;
int bench_attention_open(mha_context *ctx, const bench_case *c, int layers,
                         int threads, bench_attention **out);
int bench_attention_time(bench_attention *a, const bench_options *o,
                         bench_result *r);
void bench_attention_close(bench_attention *a);
/* How many layers' K and V of case c hold at least bytes (1 to 32). */
int bench_attention_layers(const bench_case *c, double bytes);

/* bytes of host memory allocated as the CPU backend allocates a device
 * buffer of that size (huge_pages.h: from 4 MiB on, huge-page aligned and
 * asking for huge pages), for the arrays the bench streams: free() frees
 * it; NULL when memory runs out. */
void *bench_buffer_alloc(size_t bytes);

/* Memory bandwidth in GB/s (bytes read + written per second, the best of
 * a few passes) of a STREAM-style copy of two 256 MiB arrays (from
 * bench_buffer_alloc) with threads threads; -1 when memory or threads run out. */
double bench_stream_copy_gbs(int threads);
/* The same for a read of one 256 MiB array (bytes read per second). */
double bench_stream_read_gbs(int threads);
/* Those arrays kept, for passes paired with other timings:
 * bench_stream_open(copy) allocates and fills them (copy 0: the read's
 * array alone; NULL when memory runs out), bench_stream_gbs gives the best
 * of passes passes (-1 when threads cannot start). */
typedef struct bench_stream bench_stream;
bench_stream *bench_stream_open(int copy);
double bench_stream_gbs(bench_stream *s, int threads, int passes);
void bench_stream_close(bench_stream *s);

/* Runs every target and prints the table to out. Returns BENCH_EXIT_OK, or
 * BENCH_EXIT_FAIL when a measurement could not be made (an unmet target is
 * reported, not a failure: timing is never a pass/fail). */
int bench_targets_run(const bench_options *o, FILE *out);

#endif
