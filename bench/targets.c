/* targets.c: mha-bench --targets. Measures, in one run and with one thread
 * count for everyone (--threads, default one per core), what the CPU
 * backend is held to, and prints "target | measured | goal | met":
 *  - OpenBLAS cblas_sgemm 1024^3 GFLOP/s and a STREAM-style copy bandwidth,
 *    the two references;
 *  - the forward (E512 H8 B1, L = S in {512, 2048, 4096}) against sgemm and
 *    PyTorch; the attention part alone (the fused attention op timed
 *    through the backend's internal entry point, attention_part.c) against
 *    sgemm; small shapes against PyTorch; causal against non-causal time
 *    at L = S = 2048 (forward and attention part);
 *  - L = S = 32768: completes, working memory beyond inputs, outputs and
 *    weights (device peak and resident set);
 *  - decode (L1 S4096 E4096 H32) against the time to read K, V and the
 *    weights once at the copy bandwidth, and against its FLOPs at the
 *    sgemm rate;
 *  - decode (llama3-8b-decode: cache 1k, 4k, 16k tokens, f32 and f16):
 *    its attention node alone, against the time to read the cache's K and
 *    V once at the read bandwidth (the bound), and the f16 cache's
 *    attention time against the f32's. Each call reads the next of the
 *    model's 32 layers' caches (fewer once they hold MODEL_KV_BYTES), as a
 *    decode step does, so K and V come from DRAM as the bound assumes; the
 *    same on one layer's cache, read again and again (partly from the
 *    last-level cache), is printed for reference; the whole decoder layer
 *    step too, which also reads 168 MiB of f32 projection weights, so its
 *    rows are for reference;
 *  - GQA prefill's attention node (llama3-8b-prefill, T 512, causal
 *    bottom-right) against sgemm, counting only the FLOPs causal needs;
 *  - 1 thread against --threads on the prefill cases.
 * The decode and GQA prefill targets are paired (struct paired): this
 * machine's bandwidth and load drift within a run (a STREAM read of 27 GB/s
 * at the start and 55 a minute later), so each is the median of rounds
 * that time the case right after its own reference.
 * Every forward but the 32k and decode ones is checked against the
 * OpenBLAS-composed forward first. Timing is reported, never a pass/fail:
 * the exit status is 1 only when a measurement fails or a check is over
 * tolerance. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "peers.h"
#include "targets.h"

/* The cases, in the order they run. */
enum { P512, P2048, P4096, SMALL, BERT, CAUSAL, LONG, DECODE, NCASES };

typedef struct target_case {
    const char *name;
    int64_t e, h, b, l, s;
    int causal;
    int warmup, repeat;
    double min_time;
    int torch;   /* also run by the PyTorch peer */
    int checked; /* checked against the OpenBLAS forward */
} target_case;

/* Repetitions: enough runs that a median survives a neighbour's burst on
 * a shared machine, within about 2 minutes on 2 cores in all. */
static const target_case cases[NCASES] = {
    [P512] = {"E512 H8 B1 L=S=512", 512, 8, 1, 512, 512, 0, 2, 20, 0.5, 1, 1},
    [P2048] = {"E512 H8 B1 L=S=2048", 512, 8, 1, 2048, 2048, 0, 1, 9, 0, 1,
               1},
    [P4096] = {"E512 H8 B1 L=S=4096", 512, 8, 1, 4096, 4096, 0, 1, 5, 0, 1,
               1},
    [SMALL] = {"E512 H8 B1 L=S=128", 512, 8, 1, 128, 128, 0, 5, 100, 0.5, 1,
               1},
    [BERT] = {"E768 H12 B8 L=S=128", 768, 12, 8, 128, 128, 0, 2, 20, 0.5, 1,
              1},
    [CAUSAL] = {"causal E512 H8 L=S=2048", 512, 8, 1, 2048, 2048, 1, 1, 9, 0,
                0, 1},
    [LONG] = {"E512 H8 B1 L=S=32768", 512, 8, 1, 32768, 32768, 0, 0, 1, 0, 0,
              0},
    [DECODE] = {"decode E4096 H32 L=1 S=4096", 4096, 32, 1, 1, 4096, 0, 1, 3,
                0, 0, 0},
};

#define MAX_ROWS 64
#define DECODER_CASES 6 /* the llama3-8b-decode preset */
#define MODEL_KV_BYTES (1024.0 * 1024 * 1024) /* rotated K+V, at most */
#define PREFILL_CASES 1 /* the llama3-8b-prefill preset */
#define PAIRED_ROUNDS 5
#define TARGET_MIN_CACHE 4096 /* the decode targets: S >= 4096 */

/* A ratio measured in PAIRED_ROUNDS rounds, each timing its subject right
 * after its reference, so that a shared machine whose bandwidth or load
 * drifts during the run moves both sides of each round's ratio: the median
 * of the rounds' ratios and their range; ref is the reference's median. */
typedef struct paired {
    double ratio, lo, hi, ref;
} paired;

typedef struct target_row {
    char target[64], measured[96], goal[24];
    const char *met; /* "yes", "no", "-" */
} target_row;

typedef struct targets {
    const bench_options *o;
    int threads;
    int progress;
    mha_context *ctx;
    mha_device *dev, *dev1; /* o->threads threads, 1 thread */
    bench_case bc[NCASES];
    bench_result fwd[NCASES], fwd1[NCASES], attn[NCASES];
    double torch_ms[NCASES];
    double sgemm, stream, stream_read; /* GFLOP/s, copy and read GB/s */
    double long_dev_mib, long_rss_mib; /* 32k working memory */
    bench_case dec[DECODER_CASES];    /* S 1k, 4k, 16k; f32, f16 cache */
    bench_result dec_r[DECODER_CASES]; /* the layer step */
    double dec_ms[DECODER_CASES];      /* attention, median of the rounds */
    paired dec_kv[DECODER_CASES];      /* attention / K+V bound; ref GB/s */
    paired dec_half[DECODER_CASES / 2]; /* f16 / f32 attention */
    bench_result dec_1[DECODER_CASES]; /* attn on one layer's cache */
    int ndec;
    bench_case pre[PREFILL_CASES];
    double pre_ms[PREFILL_CASES]; /* attention part, median of the rounds */
    paired pre_x[PREFILL_CASES];  /* attention GFLOP/s / sgemm; ref GFLOP/s */
    int npre;
    int failed;
    target_row rows[MAX_ROWS];
    int nrows;
} targets;

static void say(const targets *t, const char *fmt, ...)
{
    if (!t->progress)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

/* The run's options with the targets' thread count and these repetitions
 * (each measurement sets its own). */
static bench_options with_reps(const targets *t, int warmup, int repeat,
                               double min_time)
{
    bench_options o = *t->o;
    o.threads = t->threads;
    o.warmup = warmup;
    o.repeat = repeat;
    o.min_time = min_time;
    return o;
}

static void make_cases(targets *t)
{
    for (int i = 0; i < NCASES; i++) {
        const target_case *tc = &cases[i];
        bench_case *c = &t->bc[i];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", tc->name);
        c->embed_dim = c->kdim = c->vdim = tc->e;
        c->heads = tc->h;
        c->batch = tc->b;
        c->tgt_len = tc->l;
        c->src_len = tc->s;
        c->causal = tc->causal;
        c->dtype = MHA_F32;
    }
}

/* ---- measurements ------------------------------------------------------------- */

/* PyTorch on its cases first, in one python3 run, so it never shares the
 * CPU with a libmha timing. */
static void run_torch(targets *t)
{
    bench_options o = with_reps(t, 2, 5, 0.5);
    int map[NCASES] = {0};
    o.ncases = 0;
    for (int i = 0; i < NCASES; i++)
        if (cases[i].torch) {
            map[o.ncases] = i;
            o.cases[o.ncases++] = t->bc[i];
        }
    say(t, "PyTorch peer (%d cases)...\n", o.ncases);
    bench_peers peers;
    bench_peers_init(&peers, &o);
    for (int k = 0; k < o.ncases; k++)
        t->torch_ms[map[k]] = peers.torch_median[k];
    if (!peers.have_torch)
        fprintf(stderr, "mha-bench: note: no PyTorch peer: %s\n",
                peers.torch_note[0] ? peers.torch_note : "torch not importable");
    peers.enabled = 0; /* notes printed above; only free the outputs */
    bench_peers_notes(&peers, stderr);
}

static void run_references(targets *t)
{
    bench_options o = with_reps(t, 3, 20, 0.5);
    say(t, "OpenBLAS sgemm 1024^3 and STREAM copy and read...\n");
    t->sgemm = bench_openblas_sgemm_gflops(1024, &o);
    t->stream = bench_stream_copy_gbs(t->threads);
    t->stream_read = bench_stream_read_gbs(t->threads);
}

/* The OpenBLAS-composed forward as the check's reference, or none. It
 * runs on one thread: OpenBLAS's workers spin for a while after a call and
 * would steal the CPU from the timing that follows. */
static int make_data(targets *t, int i, bench_case_data *d)
{
    if (bench_case_data_make(&t->bc[i], d))
        return -1;
    bench_openblas_threads(1);
    if (!cases[i].checked || bench_openblas_forward(&t->bc[i], d, d->ref)) {
        free(d->ref);
        d->ref = NULL;
    }
    return 0;
}

static void note_failure(targets *t, const bench_result *r, const char *what)
{
    if (!strcmp(r->status, "ok"))
        return;
    fprintf(stderr, "mha-bench: %s: %s %s\n", what, r->status, r->note);
    t->failed = 1;
}

/* The forward of case i on dev (into r); with a resident-set probe for the
 * 32k case: RSS before the layer exists, peak RSS after. */
static void time_forward(targets *t, int i, mha_device *dev,
                         const bench_case_data *d, bench_result *r,
                         double *rss_before)
{
    bench_options o =
        with_reps(t, cases[i].warmup, cases[i].repeat, cases[i].min_time);
    memset(r, 0, sizeof *r);
    r->c = t->bc[i];
    if (rss_before) {
        long pages = 0, resident = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (f && fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        if (f)
            fclose(f);
        *rss_before = (double)resident * (double)sysconf(_SC_PAGESIZE) /
                      (1024.0 * 1024.0);
    }
    bench_device_case(t->ctx, dev, &o, &t->bc[i], d, r);
    note_failure(t, r, cases[i].name);
}

static void time_attention(targets *t, int i)
{
    bench_options o =
        with_reps(t, cases[i].warmup, cases[i].repeat, cases[i].min_time);
    memset(&t->attn[i], 0, sizeof t->attn[i]);
    if (bench_attention_part(t->ctx, &o, &t->bc[i], 1, &t->attn[i])) {
        fprintf(stderr, "mha-bench: attention part of %s failed\n",
                cases[i].name);
        t->failed = 1;
    }
}

/* Input, output and weight bytes of the 32k case, MiB. */
static double io_weight_mib(const bench_case *c)
{
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len;
    return 4.0 * (2 * l * e + 2 * s * e + 4 * e * e + 4 * e) /
           (1024.0 * 1024.0);
}

static void run_case(targets *t, int i)
{
    bench_case_data d;
    say(t, "%s: data%s...\n", cases[i].name,
        cases[i].checked ? " and OpenBLAS reference" : "");
    if (make_data(t, i, &d)) {
        fprintf(stderr, "mha-bench: %s: out of host memory\n", cases[i].name);
        t->failed = 1;
        return;
    }
    double rss_before = 0;
    say(t, "%s: forward, %d threads...\n", cases[i].name, t->threads);
    time_forward(t, i, t->dev, &d, &t->fwd[i], i == LONG ? &rss_before : NULL);
    if (i == LONG) {
        double io = io_weight_mib(&t->bc[i]);
        t->long_dev_mib = t->fwd[i].device_mem_mib - io;
        t->long_rss_mib = bench_peak_rss_mib() - rss_before - io;
    }
    if (i <= P4096 && t->threads > 1) {
        say(t, "%s: forward, 1 thread...\n", cases[i].name);
        time_forward(t, i, t->dev1, &d, &t->fwd1[i], NULL);
    }
    if (i <= P4096 || i == CAUSAL) {
        say(t, "%s: attention part...\n", cases[i].name);
        time_attention(t, i);
    }
    bench_case_data_free(&d);
}

/* The attention node of decoder case c alone, on one layer's cache, into
 * r. */
static void time_one_layer(targets *t, const bench_case *c, bench_result *r)
{
    bench_options o = with_reps(t, 2, 10, 0.3);
    say(t, "%s: attention part on one layer's cache...\n", c->name);
    memset(r, 0, sizeof *r);
    if (bench_attention_part(t->ctx, &o, c, 1, r)) {
        fprintf(stderr, "mha-bench: attention part of %s failed\n", c->name);
        t->failed = 1;
    }
}

/* FLOPs a causal bottom-right attention needs: 4 d Hq per (query, key)
 * pair it attends; query i of L sees S - L + i + 1 keys. */
static double prefill_attention_flops(const bench_case *c)
{
    double l = (double)c->tgt_len, s = (double)c->src_len;
    double pairs = l * (s - l) + l * (l + 1) / 2;
    return 4.0 * (double)(c->head_dim * c->heads) * pairs;
}

/* The median of the rounds' values x (sorted in place). */
static double median_of(double *x)
{
    double m, p95;
    bench_stats(x, PAIRED_ROUNDS, &m, &p95);
    return m;
}

/* The median and range of the rounds' ratios x (sorted in place). */
static paired paired_of(double *x, double ref)
{
    double m = median_of(x); /* sorts x before its ends are read */
    return (paired){m, x[0], x[PAIRED_ROUNDS - 1], ref};
}

/* One round's timing of an attention node: its median over at least 10
 * calls and 0.1 s. */
static int time_round(const targets *t, bench_attention *a, double *ms)
{
    bench_options o = with_reps(t, 1, 10, 0.1);
    bench_result r;
    memset(&r, 0, sizeof r);
    if (bench_attention_time(a, &o, &r) || r.median_ms <= 0)
        return -1;
    *ms = r.median_ms;
    return 0;
}

/* Decoder cases i (f32 cache) and i + 1 (f16, the same length): their
 * attention node, each call on the next of the model's layers' caches, in
 * rounds of a STREAM read (the best of 2 passes over rd) followed by both
 * cases; each round gives both cases' ratio to the K+V read time at that
 * round's bandwidth, and f16 / f32. */
static int pair_decode(targets *t, bench_stream *rd, int i)
{
    bench_attention *a[2] = {NULL, NULL};
    double ms[2][PAIRED_ROUNDS], x[2][PAIRED_ROUNDS], half[PAIRED_ROUNDS];
    double bw[PAIRED_ROUNDS];
    int rc = -1;
    say(t, "%s and %s: attention part, paired with STREAM reads...\n",
        t->dec[i].name, t->dec[i + 1].name);
    for (int k = 0; k < 2; k++)
        if (bench_attention_open(
                t->ctx, &t->dec[i + k],
                bench_attention_layers(&t->dec[i + k], MODEL_KV_BYTES),
                t->threads, &a[k]))
            goto done;
    for (int r = 0; r < PAIRED_ROUNDS; r++) {
        bw[r] = bench_stream_gbs(rd, t->threads, 2);
        if (bw[r] <= 0)
            goto done;
        for (int k = 0; k < 2; k++) {
            if (time_round(t, a[k], &ms[k][r]))
                goto done;
            x[k][r] = ms[k][r] /
                      (bench_decoder_kv_bytes(&t->dec[i + k]) / (bw[r] * 1e6));
        }
        half[r] = ms[1][r] / ms[0][r];
    }
    double gbs = median_of(bw);
    for (int k = 0; k < 2; k++) {
        t->dec_ms[i + k] = median_of(ms[k]);
        t->dec_kv[i + k] = paired_of(x[k], gbs);
    }
    t->dec_half[i / 2] = paired_of(half, 0);
    rc = 0;
done:
    bench_attention_close(a[0]);
    bench_attention_close(a[1]);
    return rc;
}

/* OpenBLAS's workers spin for a while after a call (about 2^28 cycles);
 * a timing that starts before they sleep shares the CPU with them. */
static void let_openblas_sleep(void)
{
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

/* Prefill case i's attention node in rounds of that node, then sgemm
 * 1024^3 (then a pause for OpenBLAS's workers): each round's ratio of the
 * node's GFLOP/s (over the FLOPs causal needs) to sgemm's. */
static int pair_prefill(targets *t, int i)
{
    bench_attention *a = NULL;
    double ms[PAIRED_ROUNDS], x[PAIRED_ROUNDS], sg[PAIRED_ROUNDS];
    bench_options o = with_reps(t, 1, 5, 0);
    say(t, "%s: attention part, paired with sgemm...\n", t->pre[i].name);
    int rc = bench_attention_open(t->ctx, &t->pre[i], 1, t->threads, &a);
    for (int r = 0; rc == 0 && r < PAIRED_ROUNDS; r++) {
        rc = time_round(t, a, &ms[r]);
        if (rc)
            break;
        sg[r] = bench_openblas_sgemm_gflops(1024, &o);
        let_openblas_sleep();
        if (sg[r] <= 0)
            rc = -1;
        else
            x[r] = prefill_attention_flops(&t->pre[i]) / (ms[r] * 1e6) / sg[r];
    }
    if (rc == 0) {
        t->pre_ms[i] = median_of(ms);
        t->pre_x[i] = paired_of(x, median_of(sg));
    }
    bench_attention_close(a);
    return rc;
}

/* The decoder layer's decode step (llama3-8b-decode) on the CPU, its
 * attention on one layer's cache, then its attention over the model's
 * layers' caches paired with STREAM reads; the prefill preset's attention
 * paired with sgemm. */
static void run_decoder(targets *t)
{
    bench_options o = with_reps(t, 1, 5, 0);
    bench_preset_add("llama3-8b-decode", t->dec, &t->ndec, DECODER_CASES);
    for (int i = 0; i < t->ndec; i++) {
        say(t, "%s: decoder step...\n", t->dec[i].name);
        memset(&t->dec_r[i], 0, sizeof t->dec_r[i]);
        bench_decoder_case(t->ctx, t->dev, &o, &t->dec[i], &t->dec_r[i]);
        note_failure(t, &t->dec_r[i], t->dec[i].name);
        time_one_layer(t, &t->dec[i], &t->dec_1[i]);
    }
    bench_stream *rd = bench_stream_open(0);
    for (int i = 0; i + 1 < t->ndec; i += 2)
        if (!rd || pair_decode(t, rd, i)) {
            fprintf(stderr, "mha-bench: paired decode attention of %s failed\n",
                    t->dec[i].name);
            t->failed = 1;
        }
    bench_stream_close(rd);
    bench_preset_add("llama3-8b-prefill", t->pre, &t->npre, PREFILL_CASES);
    for (int i = 0; i < t->npre; i++)
        if (pair_prefill(t, i)) {
            fprintf(stderr, "mha-bench: paired prefill attention of %s failed\n",
                    t->pre[i].name);
            t->failed = 1;
        }
}

/* ---- the table -------------------------------------------------------------- */

static void add_row(targets *t, const char *met, const char *goal,
                    const char *target, const char *fmt, ...)
{
    if (t->nrows >= MAX_ROWS)
        return;
    target_row *r = &t->rows[t->nrows++];
    snprintf(r->target, sizeof r->target, "%s", target);
    snprintf(r->goal, sizeof r->goal, "%s", goal);
    r->met = met;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->measured, sizeof r->measured, fmt, ap);
    va_end(ap);
}

static const char *met(int measured, int ok)
{
    return !measured ? "n/a" : ok ? "yes" : "no";
}

static double gflops_of(const bench_case *c, double ms)
{
    return ms > 0 ? bench_flops(c) / (ms * 1e6) : 0;
}

/* FLOPs of the attention part (scores and weighted sum): 4 L S E. */
static double attention_gflops(const bench_case *c, double ms)
{
    return ms > 0 ? 4.0 * (double)c->tgt_len * (double)c->src_len *
                        (double)c->embed_dim / (ms * 1e6)
                  : 0;
}

static void prefill_rows(targets *t)
{
    char name[64];
    for (int i = P512; i <= P4096; i++) {
        const bench_case *c = &t->bc[i];
        double g = gflops_of(c, t->fwd[i].median_ms), r = g / t->sgemm;
        snprintf(name, sizeof name, "forward L=S=%lld / sgemm",
                 (long long)c->tgt_len);
        add_row(t, met(g > 0 && t->sgemm > 0, r >= 0.75), ">= 0.75x", name,
                "%.1f GFLOP/s = %.2fx", g, r);
        double tg = gflops_of(c, t->torch_ms[i]);
        snprintf(name, sizeof name, "forward L=S=%lld / PyTorch",
                 (long long)c->tgt_len);
        add_row(t, met(g > 0 && tg > 0, g >= 2.5 * tg), ">= 2.5x", name,
                "%.2fx (PyTorch %.1f GFLOP/s)", tg > 0 ? g / tg : 0, tg);
    }
    for (int i = P512; i <= P4096; i++) {
        const bench_case *c = &t->bc[i];
        double g = attention_gflops(c, t->attn[i].median_ms);
        snprintf(name, sizeof name, "attention part L=S=%lld / sgemm",
                 (long long)c->tgt_len);
        add_row(t, met(g > 0 && t->sgemm > 0, g >= 0.7 * t->sgemm),
                ">= 0.7x", name, "%.1f GFLOP/s = %.2fx", g, g / t->sgemm);
    }
}

static void small_rows(targets *t)
{
    for (int i = SMALL; i <= BERT; i++) {
        const bench_case *c = &t->bc[i];
        double g = gflops_of(c, t->fwd[i].median_ms);
        double tg = gflops_of(c, t->torch_ms[i]);
        char name[64];
        snprintf(name, sizeof name, "%s / PyTorch", cases[i].name);
        add_row(t, met(g > 0 && tg > 0, g >= 4 * tg), ">= 4x", name,
                "%.2fx (%.1f vs %.1f GFLOP/s)", tg > 0 ? g / tg : 0, g, tg);
    }
}

static void causal_rows(targets *t)
{
    double f = t->fwd[CAUSAL].median_ms, fn = t->fwd[P2048].median_ms;
    double a = t->attn[CAUSAL].median_ms, an = t->attn[P2048].median_ms;
    add_row(t, met(f > 0 && fn > 0, f <= 0.6 * fn), "<= 0.6",
            "causal/full time, forward L=S=2048", "%.2f (%.1f / %.1f ms)",
            fn > 0 ? f / fn : 0, f, fn);
    add_row(t, met(a > 0 && an > 0, a <= 0.6 * an), "<= 0.6",
            "causal/full time, attention L=S=2048", "%.2f (%.1f / %.1f ms)",
            an > 0 ? a / an : 0, a, an);
}

static void long_rows(targets *t)
{
    const bench_result *r = &t->fwd[LONG];
    int ok = r->median_ms > 0;
    double worst = t->long_dev_mib > t->long_rss_mib ? t->long_dev_mib
                                                      : t->long_rss_mib;
    add_row(t, met(ok, worst < 512), "< 512 MiB",
            "L=S=32768 working memory",
            "%.0f MiB device, %.0f MiB RSS; %.1f s", t->long_dev_mib,
            t->long_rss_mib, r->median_ms / 1e3);
}

static void decode_rows(targets *t)
{
    const bench_case *c = &t->bc[DECODE];
    double ms = t->fwd[DECODE].median_ms;
    double e = (double)c->embed_dim, s = (double)c->src_len;
    double bytes = 4.0 * (2 * s * e + 4 * e * e + 4 * e);
    double mem_ms = t->stream > 0 ? bytes / (t->stream * 1e6) : 0;
    double flop_ms = t->sgemm > 0 ? bench_flops(c) / (t->sgemm * 1e6) : 0;
    add_row(t, met(ms > 0 && mem_ms > 0, ms <= 1.5 * mem_ms), "<= 1.5x",
            "decode / (K,V,W bytes / copy BW)", "%.2fx (%.1f ms vs %.1f ms)",
            mem_ms > 0 ? ms / mem_ms : 0, ms, mem_ms);
    add_row(t, "-", "roofline", "decode / (FLOPs / sgemm rate)",
            "%.2fx (%.1f ms vs %.1f ms)", flop_ms > 0 ? ms / flop_ms : 0, ms,
            flop_ms);
}

static const char *cache_of(const bench_case *c)
{
    return c->cache_dtype == MHA_F16 ? "f16" : "f32";
}

/* Per decode step of the llama3-8b layer, the attention node's time
 * against the time to read the cache's K and V once at the read bandwidth
 * (the bound): over the model's layers' caches, paired with STREAM
 * reads (the target from TARGET_MIN_CACHE tokens on; a 1k step is mostly
 * its fixed cost), and on one layer's cache against the reference STREAM
 * read (for reference). */
static void kv_bound_rows(targets *t)
{
    char name[64];
    for (int i = 0; i < t->ndec; i++) {
        const bench_case *c = &t->dec[i];
        const paired *p = &t->dec_kv[i];
        double kv = p->ref > 0 ? bench_decoder_kv_bytes(c) / (p->ref * 1e6) : 0;
        snprintf(name, sizeof name, "decode attention S=%lldk %s / K+V",
                 (long long)(c->src_len / 1024), cache_of(c));
        int target = c->src_len >= TARGET_MIN_CACHE;
        add_row(t, target ? met(p->ratio > 0, p->ratio <= 1.25) : "-",
                target ? "<= 1.25x" : "reference", name,
                "%.2fx (%.2f / %.2f ms; rounds %.2f-%.2f; %d layers)",
                p->ratio, t->dec_ms[i], kv, p->lo, p->hi,
                bench_attention_layers(c, MODEL_KV_BYTES));
    }
    double bw = t->stream_read * 1e6;
    for (int i = 0; i < t->ndec; i++) {
        const bench_case *c = &t->dec[i];
        double ms = t->dec_1[i].median_ms;
        double kv = bw > 0 ? bench_decoder_kv_bytes(c) / bw : 0;
        snprintf(name, sizeof name, "one layer's cache S=%lldk %s / K+V",
                 (long long)(c->src_len / 1024), cache_of(c));
        add_row(t, "-", "reference", name, "%.2f / %.2f ms = %.2fx", ms, kv,
                kv > 0 ? ms / kv : 0);
    }
}

/* The layer step's rows against the same and against K+V+weights (what a
 * whole step must read); the f16 cache's time against the f32 cache's:
 * the attention's paired in the same rounds (the target), one layer's
 * cache and the step for reference. */
static void decoder_rows(targets *t)
{
    char name[64];
    double bw = t->stream_read * 1e6;
    kv_bound_rows(t);
    for (int i = 0; i < t->ndec; i++) {
        const bench_case *c = &t->dec[i];
        double ms = t->dec_r[i].median_ms;
        double kv = bw > 0 ? bench_decoder_kv_bytes(c) / bw : 0;
        double all = bw > 0 ? bench_bytes(c) / bw : 0;
        snprintf(name, sizeof name, "layer step S=%lldk %s / K+V (+W)",
                 (long long)(c->src_len / 1024), cache_of(c));
        add_row(t, "-", "reference", name, "%.1f / %.2f ms = %.1fx (+W: %.1fx)",
                ms, kv, kv > 0 ? ms / kv : 0, all > 0 ? ms / all : 0);
    }
    for (int i = 0; i + 1 < t->ndec; i += 2) {
        const paired *p = &t->dec_half[i / 2];
        double f32 = t->dec_1[i].median_ms, f16 = t->dec_1[i + 1].median_ms;
        double s32 = t->dec_r[i].median_ms, s16 = t->dec_r[i + 1].median_ms;
        long long k = (long long)(t->dec[i].src_len / 1024);
        snprintf(name, sizeof name, "decode attention f16/f32 S=%lldk", k);
        int target = t->dec[i].src_len >= TARGET_MIN_CACHE;
        add_row(t, target ? met(p->ratio > 0, p->ratio <= 0.6) : "-",
                target ? "<= 0.6" : "reference", name,
                "%.2f (%.2f / %.2f ms; rounds %.2f-%.2f)", p->ratio,
                t->dec_ms[i + 1], t->dec_ms[i], p->lo, p->hi);
        snprintf(name, sizeof name, "one layer's cache f16/f32 S=%lldk", k);
        add_row(t, "-", "reference", name, "%.2f (%.2f / %.2f ms)",
                f32 > 0 ? f16 / f32 : 0, f16, f32);
        snprintf(name, sizeof name, "layer step f16/f32 S=%lldk", k);
        add_row(t, "-", "reference", name, "%.2f (%.1f / %.1f ms)",
                s32 > 0 ? s16 / s32 : 0, s16, s32);
    }
}

static void prefill_attention_rows(targets *t)
{
    for (int i = 0; i < t->npre; i++) {
        const bench_case *c = &t->pre[i];
        const paired *p = &t->pre_x[i];
        double ms = t->pre_ms[i];
        char name[64];
        snprintf(name, sizeof name, "GQA prefill attention T=%lld / sgemm",
                 (long long)c->tgt_len);
        add_row(t, met(p->ratio > 0, p->ratio >= 0.85), ">= 0.85x", name,
                "%.2fx (%.2f ms, %.1f vs %.1f GFLOP/s; rounds %.2f-%.2f)",
                p->ratio, ms,
                ms > 0 ? prefill_attention_flops(c) / (ms * 1e6) : 0, p->ref,
                p->lo, p->hi);
    }
}

static void thread_rows(targets *t)
{
    char name[64], goal[24];
    snprintf(goal, sizeof goal, ">= %.1fx", 0.9 * t->threads);
    for (int i = P512; i <= P4096; i++) {
        double one = t->fwd1[i].median_ms, many = t->fwd[i].median_ms;
        snprintf(name, sizeof name, "1 vs %d threads, L=S=%lld", t->threads,
                 (long long)t->bc[i].tgt_len);
        add_row(t, met(one > 0 && many > 0, one >= 0.9 * t->threads * many),
                goal, name, "%.2fx (%.1f / %.1f ms)",
                many > 0 ? one / many : 0, one, many);
    }
}

static void print_table(targets *t, FILE *out)
{
    fprintf(out, "libmha CPU targets, %d threads for libmha, "
                 "OpenBLAS and PyTorch\n",
            t->threads);
    add_row(t, "-", "reference", "OpenBLAS sgemm 1024^3", "%.1f GFLOP/s",
            t->sgemm);
    add_row(t, "-", "reference", "STREAM-style copy", "%.1f GB/s",
            t->stream);
    add_row(t, "-", "reference", "STREAM-style read", "%.1f GB/s",
            t->stream_read);
    prefill_rows(t);
    small_rows(t);
    causal_rows(t);
    long_rows(t);
    decode_rows(t);
    decoder_rows(t);
    prefill_attention_rows(t);
    thread_rows(t);
    fprintf(out, "%-38s | %-58s | %-9s | %s\n", "target", "measured", "goal",
            "met");
    for (int i = 0; i < t->nrows; i++)
        fprintf(out, "%-38s | %-58s | %-9s | %s\n", t->rows[i].target,
                t->rows[i].measured, t->rows[i].goal, t->rows[i].met);
    fprintf(out, "FLOPs as in design.md (docs/ in the source, "
                 "share/doc/libmha/ installed); the attention part is the "
                 "fused\nattention op alone (4LSE FLOPs), timed through the CPU "
                 "backend's internal entry point; medians of each case's "
                 "runs.\nDecode (llama3-8b, Hq 32, Hkv 8, d 128): \"decode "
                 "attention\" is the attention node alone, each call on the next "
                 "of the model's\nlayers' caches (at most 32, together up to "
                 "1 GiB) as a decode step reads them, from DRAM;\n\"one "
                 "layer's cache\" reads one cache again and again (partly "
                 "from the last-level cache);\n\"layer step\" is the "
                 "whole step, which also reads 168 MiB of f32 weights (+W);\n"
                 "K+V is the cache's K and V bytes at the read bandwidth. GQA "
                 "prefill (T = S = 512, causal bottom-right): 4 d Hq FLOPs per "
                 "attended (query, key)\npair, L(S-L) + L(L+1)/2 pairs. "
                 "The decode attention and GQA prefill targets are the median "
                 "of %d rounds, each\ntiming the case right after its own "
                 "reference (a STREAM read, the best of 2 passes; sgemm "
                 "1024^3),\nwith the rounds' range; their K+V and GFLOP/s are "
                 "at the rounds' median reference.\n",
            PAIRED_ROUNDS);
}

/* ---- driver -------------------------------------------------------------------- */

static int open_devices(targets *t)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.threads = t->threads;
    if (mha_context_create(NULL, &t->ctx) ||
        mha_device_open(t->ctx, "cpu", &o, &t->dev))
        return -1;
    o.threads = 1;
    return mha_device_open(t->ctx, "cpu", &o, &t->dev1) ? -1 : 0;
}

int bench_targets_run(const bench_options *o, FILE *out)
{
    targets *t = calloc(1, sizeof *t);
    if (!t) {
        fprintf(stderr, "mha-bench: out of host memory\n");
        return BENCH_EXIT_FAIL;
    }
    t->o = o;
    t->progress = isatty(2);
    t->threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    make_cases(t);
    int rc = BENCH_EXIT_OK;
    if (open_devices(t)) {
        fprintf(stderr, "mha-bench: cannot open the CPU device: %s\n",
                t->ctx ? mha_context_errmsg(t->ctx) : "no context");
        rc = BENCH_EXIT_FAIL;
    } else {
        run_torch(t);
        run_references(t);
        for (int i = 0; i < NCASES; i++)
            run_case(t, i);
        run_decoder(t);
        print_table(t, out);
        rc = t->failed ? BENCH_EXIT_FAIL : BENCH_EXIT_OK;
    }
    mha_device_destroy(t->dev);
    mha_device_destroy(t->dev1);
    mha_context_destroy(t->ctx);
    free(t);
    return rc;
}
