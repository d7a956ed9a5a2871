/* peers.c: runs the peer rows of mha-bench (see peers.h): times the
 * OpenBLAS-composed forward in-process, and reads the PyTorch timings from
 * one run of bench/torch_peer.py. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "peers.h"

#ifdef MHA_BENCH_OPENBLAS
void bench_openblas_threads(int n);
#endif

#ifndef MHA_BENCH_SOURCE_DIR
#define MHA_BENCH_SOURCE_DIR "bench"
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void run_torch(bench_peers *p, const bench_options *o)
{
    const char *script = getenv("MHA_BENCH_TORCH_PEER");
    char path[1024];
    if (!script) {
        snprintf(path, sizeof path, "%s/torch_peer.py", MHA_BENCH_SOURCE_DIR);
        script = path;
    }
    size_t cap = 4096 + (size_t)o->ncases * 96;
    char *cmd = malloc(cap);
    if (!cmd)
        return;
    int n = snprintf(cmd, cap,
                     "/usr/bin/python3 '%s' --threads %d --warmup %d "
                     "--repeat %d --min-time %g",
                     script, o->threads, o->warmup, o->repeat, o->min_time);
    for (int i = 0; i < o->ncases && n > 0 && (size_t)n < cap; i++) {
        const bench_case *c = &o->cases[i];
        n += snprintf(cmd + n, cap - (size_t)n,
                      " %lld,%lld,%lld,%lld,%lld,%lld,%lld,%d,%s",
                      (long long)c->embed_dim, (long long)c->heads,
                      (long long)c->batch, (long long)c->tgt_len,
                      (long long)c->src_len, (long long)c->kdim,
                      (long long)c->vdim, c->causal,
                      c->dtype == MHA_F16 ? "f16" : "f32");
    }
    snprintf(cmd + (n > 0 && (size_t)n < cap ? (size_t)n : 0),
             cap - (n > 0 && (size_t)n < cap ? (size_t)n : 0), " 2>/dev/null");
    FILE *f = popen(cmd, "r");
    free(cmd);
    if (!f) {
        snprintf(p->torch_note, sizeof p->torch_note, "cannot run python3");
        return;
    }
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        if (!j)
            continue;
        const cJSON *err = cJSON_GetObjectItem(j, "error");
        const cJSON *idx = cJSON_GetObjectItem(j, "case");
        if (cJSON_IsString(err) && !cJSON_IsNumber(idx)) {
            snprintf(p->torch_note, sizeof p->torch_note, "%s",
                     err->valuestring);
        } else if (cJSON_IsNumber(idx) && idx->valueint >= 0 &&
                   idx->valueint < o->ncases) {
            int i = idx->valueint;
            const cJSON *m = cJSON_GetObjectItem(j, "median_ms");
            if (cJSON_IsString(err))
                snprintf(p->torch_case_note[i], sizeof p->torch_case_note[i],
                         "PyTorch: %s", err->valuestring);
            if (cJSON_IsString(err))
                p->have_torch = 1;
            if (cJSON_IsNumber(m)) {
                p->torch_median[i] = m->valuedouble;
                p->torch_p95[i] =
                    cJSON_GetNumberValue(cJSON_GetObjectItem(j, "p95_ms"));
                p->torch_first[i] =
                    cJSON_GetNumberValue(cJSON_GetObjectItem(j, "first_ms"));
                p->torch_runs[i] =
                    (int)cJSON_GetNumberValue(cJSON_GetObjectItem(j, "runs"));
                p->have_torch = 1;
            }
            const char *v =
                cJSON_GetStringValue(cJSON_GetObjectItem(j, "torch"));
            if (v)
                snprintf(p->torch_version, sizeof p->torch_version, "%s", v);
        }
        cJSON_Delete(j);
    }
    int status = pclose(f);
    if (!p->have_torch && !p->torch_note[0])
        snprintf(p->torch_note, sizeof p->torch_note,
                 "PyTorch peer gave no result (python3 status %d)", status);
}

void bench_peers_init(bench_peers *p, const bench_options *o)
{
    memset(p, 0, sizeof *p);
    p->enabled = o->peers;
    p->threads = o->threads;
    if (!p->enabled)
        return;
#ifdef MHA_BENCH_OPENBLAS
    p->have_openblas = 1;
    bench_openblas_threads(o->threads);
#endif
    run_torch(p, o);
}

static int run_openblas(const bench_options *o, const bench_case *c,
                        const bench_case_data *d, bench_result *r)
{
    snprintf(r->device, sizeof r->device, "openblas");
    snprintf(r->device_name, sizeof r->device_name,
             "OpenBLAS cblas_sgemm composition");
    snprintf(r->backend, sizeof r->backend, "peer");
    if (c->dtype == MHA_F16) {
        snprintf(r->status, sizeof r->status, "skip");
        snprintf(r->note, sizeof r->note, "fp32 only");
        return 1;
    }
    float *out = malloc(d->nq * sizeof(float));
    double t0 = now_s();
    if (!out || bench_openblas_forward(c, d, out)) {
        free(out);
        snprintf(r->status, sizeof r->status, "error");
        snprintf(r->note, sizeof r->note, "out of host memory");
        return 1;
    }
    r->first_ms = 1e3 * (now_s() - t0);
    bench_check chk = bench_compare_output(out, d->ref, d->nq, c->dtype);
    r->checked = 1;
    r->max_abs = chk.max_abs;
    r->max_rel = chk.max_rel;
    r->tol = chk.tol;
    snprintf(r->status, sizeof r->status, "%s", chk.pass ? "ok" : "FAIL");
    for (int i = 0; i < o->warmup; i++)
        bench_openblas_forward(c, d, out);
    int cap = o->repeat > 64 ? o->repeat : 64, n = 0;
    double *t = malloc((size_t)cap * sizeof *t), start = now_s();
    while (t && (n < o->repeat || now_s() - start < o->min_time)) {
        if (n == cap) {
            double *t2 = realloc(t, 2 * (size_t)cap * sizeof *t);
            if (!t2)
                break;
            t = t2;
            cap *= 2;
        }
        double s0 = now_s();
        bench_openblas_forward(c, d, out);
        t[n++] = 1e3 * (now_s() - s0);
    }
    r->runs = n;
    bench_stats(t, n, &r->median_ms, &r->p95_ms);
    free(t);
    free(out);
    return 1;
}

int bench_peer_run(bench_peers *p, int peer, const bench_options *o, int ci,
                   const bench_case_data *d, bench_result *r)
{
    if (!p->enabled)
        return 0;
    const bench_case *c = &o->cases[ci];
    if (peer == 0)
        return p->have_openblas ? run_openblas(o, c, d, r) : 0;
    if (peer == 1 && p->have_torch) {
        snprintf(r->device, sizeof r->device, "torch");
        snprintf(r->device_name, sizeof r->device_name,
                 "PyTorch %s nn.MultiheadAttention (CPU)", p->torch_version);
        snprintf(r->backend, sizeof r->backend, "peer");
        if (p->torch_median[ci] <= 0) {
            snprintf(r->status, sizeof r->status, "skip");
            snprintf(r->note, sizeof r->note, "%s",
                     p->torch_case_note[ci][0] ? p->torch_case_note[ci]
                                               : "PyTorch gave no result");
            return 1;
        }
        r->median_ms = p->torch_median[ci];
        r->p95_ms = p->torch_p95[ci];
        r->first_ms = p->torch_first[ci];
        r->runs = p->torch_runs[ci];
        snprintf(r->status, sizeof r->status, "ok");
        snprintf(r->note, sizeof r->note, "own random data, not checked");
        return 1;
    }
    return 0;
}

void bench_peers_notes(const bench_peers *p, FILE *out)
{
    if (!p->enabled)
        return;
    if (!p->have_openblas)
        fprintf(out, "mha-bench: note: OpenBLAS peer not built (no openblas "
                     "found at configure time)\n");
    if (!p->have_torch)
        fprintf(out, "mha-bench: note: no PyTorch peer: %s\n",
                p->torch_note[0] ? p->torch_note : "torch not importable");
}
