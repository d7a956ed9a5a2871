/* peers.h: the rows mha-bench adds beside libmha's own devices: attention
 * composed from OpenBLAS sgemm calls (when the build found OpenBLAS), from
 * CLBlast sgemms on each OpenCL device (when the build found CLBlast), and
 * PyTorch's nn.MultiheadAttention through bench/torch_peer.py (when
 * /usr/bin/python3 imports torch). A missing peer is a note, not an error. */
#ifndef MHA_BENCH_PEERS_H
#define MHA_BENCH_PEERS_H

#include "bench.h"

/* The inputs and weights of one case (fixed seed) and the scalar CPU
 * reference output. Layout as PyTorch: q (L, B, E), k (S, B, kdim),
 * v (S, B, vdim); w_q [E, E], w_k [E, kdim], w_v [E, vdim], b_in [3E],
 * w_o [E, E], b_o [E]; ref like q. */
typedef struct bench_case_data {
    float *q, *k, *v, *w_q, *w_k, *w_v, *b_in, *w_o, *b_o, *ref;
    size_t nq, nk, nv;
} bench_case_data;

/* Allocates and fills *d for case c (fixed seed; ref allocated, not
 * filled). 0, or -1 when memory runs out (nothing kept). */
int bench_case_data_make(const bench_case *c, bench_case_data *d);
void bench_case_data_free(bench_case_data *d);
/* Sets d's weights on a layer made for c. */
mha_status bench_set_weights(mha_layer *layer, const bench_case *c,
                             const bench_case_data *d);
/* Creates a layer of storage dtype on dev, sets d's weights, runs the case
 * through mha_layer_forward_host into out (d->nq floats), destroys the
 * layer. */
mha_status bench_forward_host(mha_device *dev, const bench_case *c,
                              mha_dtype dtype, const bench_case_data *d,
                              float *out);

/* Times case c on dev into r (status, note, first_ms, the check, timings,
 * GFLOP/s, GB/s and the device's peak memory; not the device fields): the
 * first call is checked against d->ref (skipped when d->ref is NULL), then
 * o->warmup forwards, then timed ones on device-resident tensors. */
void bench_device_case(mha_context *ctx, mha_device *dev,
                       const bench_options *o, const bench_case *c,
                       const bench_case_data *d, bench_result *r);
/* The process's peak resident set so far, MiB. */
double bench_peak_rss_mib(void);

#define BENCH_PEER_COUNT 2 /* 0: openblas, 1: torch */
#define BENCH_PEER_MAX_CASES BENCH_MAX_CASES

typedef struct bench_peers {
    int enabled;
    int threads;
    int have_openblas;
    int have_clblast;
    int have_torch;
    char torch_note[512];
    /* torch results, one per case, filled by bench_peers_init */
    double torch_median[BENCH_PEER_MAX_CASES], torch_p95[BENCH_PEER_MAX_CASES],
        torch_first[BENCH_PEER_MAX_CASES];
    int torch_runs[BENCH_PEER_MAX_CASES];
    char torch_case_note[BENCH_PEER_MAX_CASES][96]; /* per-case error */
    char torch_version[32];
    /* torch's first output per case on mha-bench's own inputs and weights
     * (NULL when it gave none), checked and freed by bench_peer_run */
    float *torch_out[BENCH_PEER_MAX_CASES];
    size_t torch_nout[BENCH_PEER_MAX_CASES];
} bench_peers;

/* Finds the peers; runs the PyTorch peer for every case of o up front (one
 * python3 process, one JSON line per case) so it never shares the CPU with
 * a libmha timing. */
void bench_peers_init(bench_peers *p, const bench_options *o);
/* Fills r for peer number peer on case number ci; returns 0 when that peer
 * is missing (r untouched). */
int bench_peer_run(bench_peers *p, int peer, const bench_options *o, int ci,
                   const bench_case_data *d, bench_result *r);
/* Prints a line for each missing peer; frees what bench_peer_run left. */
void bench_peers_notes(bench_peers *p, FILE *out);

/* The OpenBLAS-composed forward into out (like q); 0, or -1 when OpenBLAS
 * was not built in or memory ran out. */
int bench_openblas_forward(const bench_case *c, const bench_case_data *d,
                           float *out);

/* OpenBLAS's thread count for the calls that follow (n > 0; no-op without
 * OpenBLAS). */
void bench_openblas_threads(int n);

/* The GFLOP/s of OpenBLAS cblas_sgemm on n x n x n (C = A B^T) with
 * o->threads threads (0: OpenBLAS's default): the median of the runs
 * bench_time_runs makes after o->warmup. -1 when OpenBLAS was not built in
 * or memory ran out. */
double bench_openblas_sgemm_gflops(int n, const bench_options *o);

/* 1 when mha-bench was built with the CLBlast peer. */
int bench_clblast_built(void);
/* The CLBlast-composed forward on the first OpenCL device whose
 * CL_DEVICE_NAME is device_name (libmha's mha_device_info name of an opencl
 * device) into out (like q). 0; 1 when the case does not fit the device
 * (skip); -1 when CLBlast was not built in or OpenCL failed. err gets the
 * reason. */
int bench_clblast_forward(const char *device_name, const bench_case *c,
                          const bench_case_data *d, float *out, char *err,
                          size_t errlen);
/* Times the CLBlast-composed forward on that device like run_openblas:
 * fills r's status, note, first_ms, the check and the timings (not the
 * device fields). 0, or -1 on an error (status "error"). */
int bench_clblast_run(const char *device_name, const bench_options *o,
                      const bench_case *c, const bench_case_data *d,
                      bench_result *r);
/* Releases the OpenCL contexts the CLBlast peer kept across cases. */
void bench_clblast_release(void);

#endif
