/* bench.h: the pieces of mha-bench that tests reach: cases and presets, the
 * FLOP and byte formulas, the argument parser, the result check against the
 * CPU reference, and the table, JSON, CSV and --compare writers. They are
 * compiled into the static library mha_bench_core, used by mha-bench and by
 * tests/test_bench.c. */
#ifndef MHA_BENCH_H
#define MHA_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include "mha.h"

#define BENCH_MAX_CASES 64
#define BENCH_MAX_DEVICES 16
#define BENCH_ERRLEN 256
#define BENCH_PROFILE_NODES 24

/* Exit statuses of mha-bench. */
#define BENCH_EXIT_OK 0
#define BENCH_EXIT_FAIL 1  /* a result over tolerance or a device error */
#define BENCH_EXIT_USAGE 2 /* a bad flag or an unreadable --compare file */

/* One attention shape: torch.nn.MultiheadAttention(E, H, kdim, vdim) run on
 * query (L, B, E), key (S, B, kdim), value (S, B, vdim). */
typedef struct bench_case {
    char name[48];
    int64_t embed_dim, heads, batch, tgt_len, src_len, kdim, vdim;
    int causal;
    mha_dtype dtype; /* layer storage: MHA_F32 or MHA_F16 */
    /* decoder cases (mha_decoder, decoder.c): a step of tgt_len new tokens
       per sequence whose KV cache then holds src_len tokens (bottom-right
       causal); kdim and vdim unused */
    int decoder;
    int64_t kv_heads, head_dim, window;
    float softcap;
    mha_dtype cache_dtype;
    /* --self-attention: query, key and value are one tensor (S = L,
       kdim = vdim = E), so the key and value data are the query's */
    int self_attn;
} bench_case;

/* Appends the cases of preset name ("all": every preset but quick) to
 * cases[*count..max). Returns 0, or -1 for an unknown name or no room. */
int bench_preset_add(const char *name, bench_case *cases, int *count, int max);
/* The names of the presets, NULL-terminated. */
extern const char *const bench_preset_names[];

/* FLOPs of one forward, all batch items:
 * B * (2LE^2 + 2S*kdim*E + 2S*vdim*E + 4LSE + 2LE^2). */
double bench_flops(const bench_case *c);
/* FLOPs a forward needs (profile.c): bench_flops with the attention part
 * 4LSE replaced by 4E * (query, key) pairs a query may attend: for a
 * causal case sum_{i<L} min(i + 1, S), which is L(L+1)/2 when L <= S,
 * about half of LS (FlashAttention's convention). Equal to bench_flops for
 * a case that is not causal. */
double bench_flops_needed(const bench_case *c);
/* Bytes moved if every input, output and weight is read or written once:
 * 4 * B * (L*E + S*kdim + S*vdim)   query, key, value (fp32)
 * + 4 * B * L*E                      output (fp32)
 * + w * (2E^2 + E*kdim + E*vdim + 4E) weights and biases, w = 4 (f32) or
 *                                    2 (f16 storage). */
double bench_bytes(const bench_case *c);
/* FLOPs of one training forward plus its backward, all batch items: the
 * forward's, plus twice its projections' (each projection's backward is
 * dW = dY^T X and dX = dY W), plus 2.5 times its attention matmuls'
 * (FlashAttention-2's count: the backward recomputes Q K^T and computes
 * dV, dP, dQ and dK): B * (3 * (4LE^2 + 2S*kdim*E + 2S*vdim*E) +
 * 3.5 * 4LSE). */
double bench_backward_flops(const bench_case *c);
/* Decoder cases: keys each query attends (src_len, or the window), and
 * the K and V bytes a step reads from the cache, all sequences. */
double bench_decoder_keys(const bench_case *c);
double bench_decoder_kv_bytes(const bench_case *c);

typedef struct bench_options {
    char devices[BENCH_MAX_DEVICES][32]; /* specs; none means "all" */
    int ndevices;
    bench_case cases[BENCH_MAX_CASES];
    int ncases;
    int threads;     /* CPU backend and peers; 0 = one per core */
    int warmup;      /* default 2 */
    int repeat;      /* at least this many timed runs; default 10 */
    double min_time; /* and at least this many seconds; default 0.5 */
    const char *json_path, *csv_path;
    const char *compare_old, *compare_new;
    int peers; /* run the OpenBLAS, CLBlast and PyTorch peers; default 1 */
    int targets; /* --targets: the CPU targets table (targets.c) instead */
    int help;
    int backward; /* --backward: time forward + backward (backward.c) */
    int profile; /* --profile: per-node device times (profile.c) */
} bench_options;

/* Parses argv into *opts (defaults first). Returns 0 (check opts->help), or
 * BENCH_EXIT_USAGE with a one-line message in err. Never exits. Without
 * --preset or a custom shape flag the quick preset is used. */
int bench_parse_args(int argc, char **argv, bench_options *opts, char *err,
                     size_t errlen);
extern const char bench_usage[];

/* Error of an output against the reference. */
typedef struct bench_check {
    double max_abs; /* max |out - ref| */
    double max_rel; /* max_abs / max|ref| (0 when ref is all zero) */
    double tol;     /* 1e-4 * max(1, max|ref|) for f32, 1e-2 * the same
                       for f16 */
    int pass;       /* max_abs <= tol and no NaN */
} bench_check;

bench_check bench_compare_output(const float *out, const float *ref,
                                 size_t n, mha_dtype dtype);

/* One row: a case on a device (or on a peer). */
typedef struct bench_result {
    bench_case c;
    char device[32];       /* "cpu:0", "vulkan:0", "openblas", "clblast:0",
                              "torch" */
    char device_name[128];
    char backend[16];
    char status[8];        /* "ok", "FAIL", "skip", "error" */
    char note[160];
    int runs;
    double median_ms, p95_ms, first_ms;
    double gflops, gbps;
    double ratio;          /* median / median of the best libmha CPU row
                              of the same case; 0 if none */
    double max_abs, max_rel, tol;
    int checked;
    double peak_rss_mib;   /* process peak RSS after the case */
    double device_mem_mib; /* < 0: n/a */
    /* --profile (profile.c): of the profiled forwards, the one with the
     * median kernel time; nprof 0 when not profiled */
    int nprof;
    int prof_device_clock;    /* 1: device timestamps, 0: host clock */
    double prof_wall_ms;      /* that forward's host wall time */
    double prof_kernel_ms;    /* the sum of its nodes' times */
    struct {
        char op[24];
        char variant[32]; /* the tuning source's pick; "-": the backend's */
        double ms;
    } prof[BENCH_PROFILE_NODES];
} bench_result;

typedef struct bench_device_desc {
    char spec[32];
    mha_device_info info;
} bench_device_desc;

typedef struct bench_report {
    char version[32];
    char cpu_model[128];
    int cores;
    char uname[256];
    int threads;
    bench_device_desc *devices;
    int ndevices;
    bench_result *results;
    int nresults;
} bench_report;

/* Fills version, cpu_model, cores and uname from the running system. */
void bench_machine_info(bench_report *r);
/* Median and 95th percentile (nearest rank) of times[0..n); sorts times. */
void bench_stats(double *times, int n, double *median, double *p95);

/* Seconds on a monotonic clock. */
double bench_now(void);

/* Calls run(arg) until opts->repeat calls and opts->min_time seconds are
 * both reached, and fills r->runs, r->median_ms and r->p95_ms. Returns
 * run's first non-zero result (the statistics then cover the calls before
 * it), or -1 when memory for the times runs out before any call. */
int bench_time_runs(const bench_options *opts, int (*run)(void *arg),
                    void *arg, bench_result *r);

/* Records an output check in r: errors, tolerance and "ok" or "FAIL". */
void bench_record_check(bench_result *r, bench_check chk);

/* Times decoder case c on dev into r: the cache filled with src_len -
 * tgt_len random tokens, then steps (forward + truncate back, so every
 * step sees the same length) until o's repeat and min_time. Not checked
 * against a reference here (tests/test_decoder.c does that). */
void bench_decoder_case(mha_context *ctx, mha_device *dev,
                        const bench_options *o, const bench_case *c,
                        bench_result *r);

/* mha-bench --backward (backward.c): for every case, on every device of
 * o, times a training forward plus mha_layer_backward (weight and input
 * gradients) and prints them beside OpenBLAS's sgemm rate and PyTorch's
 * autograd (forward + backward) measured in the same run. Returns an exit
 * status. */
int bench_backward_run(const bench_options *o, FILE *out);

void bench_print_table(FILE *out, const bench_report *r);
/* profile.c: --profile's forwards on a layer (the rows' prof fields), and
 * what the table and JSON add for it and for causal rows (FLOP/s over the
 * FLOPs needed). */
struct cJSON;
void bench_profile_forward(const bench_options *o, mha_device *dev,
                           mha_layer *layer, const mha_forward_args *a,
                           bench_result *r);
void bench_print_extras(FILE *out, const bench_report *r);
void bench_result_json_extras(struct cJSON *o, const bench_result *x);
/* Return 0, or -1 with errno-style failure to write. */
int bench_write_json(const char *path, const bench_report *r);
int bench_write_csv(const char *path, const bench_report *r);
/* Prints speedup OLD median / NEW median per case and device found in both
 * files. Returns 0, or BENCH_EXIT_USAGE with a message in err. */
int bench_compare_files(const char *old_path, const char *new_path,
                        FILE *out, char *err, size_t errlen);

#endif /* MHA_BENCH_H */
