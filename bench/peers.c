/* peers.c: runs the peer rows of mha-bench (see peers.h): times the
 * OpenBLAS-composed forward in-process, and reads the PyTorch timings from
 * one run of bench/torch_peer.py. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "peers.h"


#ifndef MHA_BENCH_SOURCE_DIR
#define MHA_BENCH_SOURCE_DIR "bench"
#endif
#ifndef MHA_BENCH_BIN_TO_DATA
#define MHA_BENCH_BIN_TO_DATA "../share/libmha"
#endif

/* Finds torch_peer.py: MHA_BENCH_TORCH_PEER, else the installed copy
 * relative to this program (bindir/../share/libmha), else the source
 * folder the build tree's program was built from. 0, or -1 with the places
 * looked in written to p->torch_note. */
static int find_torch_peer(bench_peers *p, char *path, size_t size)
{
    const char *env = getenv("MHA_BENCH_TORCH_PEER");
    if (env) {
        snprintf(path, size, "%s", env);
        return 0;
    }
    char exe[1024], installed[1100] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        snprintf(installed, sizeof installed, "%s/%s/torch_peer.py", exe,
                 MHA_BENCH_BIN_TO_DATA);
        if (access(installed, R_OK) == 0) {
            snprintf(path, size, "%s", installed);
            return 0;
        }
    }
    snprintf(path, size, "%s/torch_peer.py", MHA_BENCH_SOURCE_DIR);
    if (access(path, R_OK) == 0)
        return 0;
    snprintf(p->torch_note, sizeof p->torch_note,
             "torch_peer.py not found in %.200s or %.200s (set "
             "MHA_BENCH_TORCH_PEER)",
             installed[0] ? installed : "the program's share/libmha", path);
    return -1;
}


/* Writes case i's inputs and weights to dir/in<i>.f32 in the order
 * torch_peer.py reads them. 0 or -1. */
static int write_case_data(const char *dir, int i, const bench_case *c)
{
    bench_case_data d;
    if (bench_case_data_make(c, &d))
        return -1;
    size_t e = (size_t)c->embed_dim;
    struct {
        const float *p;
        size_t n;
    } parts[] = {{d.q, d.nq},
                 {d.k, d.nk},
                 {d.v, d.nv},
                 {d.w_q, e * e},
                 {d.w_k, e * (size_t)c->kdim},
                 {d.w_v, e * (size_t)c->vdim},
                 {d.b_in, 3 * e},
                 {d.w_o, e * e},
                 {d.b_o, e}};
    char path[1100];
    snprintf(path, sizeof path, "%s/in%d.f32", dir, i);
    FILE *f = fopen(path, "wb");
    int rc = f ? 0 : -1;
    for (size_t j = 0; f && !rc && j < sizeof parts / sizeof *parts; j++)
        if (fwrite(parts[j].p, sizeof(float), parts[j].n, f) != parts[j].n)
            rc = -1;
    if (f && fclose(f))
        rc = -1;
    bench_case_data_free(&d);
    return rc;
}

/* Reads dir/out<i>.f32 into p->torch_out[i]; removes dir/in<i>.f32 and
 * dir/out<i>.f32. */
static void read_torch_out(bench_peers *p, const char *dir, int i)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/in%d.f32", dir, i);
    unlink(path);
    snprintf(path, sizeof path, "%s/out%d.f32", dir, i);
    FILE *f = fopen(path, "rb");
    if (f && !fseek(f, 0, SEEK_END)) {
        long n = ftell(f);
        float *buf = n > 0 ? malloc((size_t)n) : NULL;
        rewind(f);
        if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
            p->torch_out[i] = buf;
            p->torch_nout[i] = (size_t)n / sizeof(float);
        } else {
            free(buf);
        }
    }
    if (f)
        fclose(f);
    unlink(path);
}

/* The peers run nn.MultiheadAttention: a decoder case goes to PyTorch as
 * this tiny stand-in (its row is dropped), so case indices still match. */
static const bench_case *torch_case(const bench_case *c)
{
    static const bench_case stand_in = {.name = "decoder-stand-in",
                                        .embed_dim = 8, .heads = 1,
                                        .batch = 1, .tgt_len = 1,
                                        .src_len = 1, .kdim = 8, .vdim = 8,
                                        .dtype = MHA_F32};
    return c->decoder ? &stand_in : c;
}

static void run_torch(bench_peers *p, const bench_options *o)
{
    char script[1100];
    if (find_torch_peer(p, script, sizeof script))
        return;
    /* The inputs and weights of every case go to a temporary directory so
     * that PyTorch runs on the same data as the libmha rows. */
    char dir[] = "/tmp/mha-bench-torch-XXXXXX";
    int have_dir = mkdtemp(dir) != NULL;
    for (int i = 0; have_dir == 1 && i < o->ncases; i++)
        if (write_case_data(dir, i, torch_case(&o->cases[i])))
            have_dir = -1; /* no --data-dir; the files are still removed */

    size_t cap = 4096 + (size_t)o->ncases * 96;
    char *cmd = malloc(cap);
    if (!cmd)
        return;
    int n = snprintf(cmd, cap,
                     "/usr/bin/python3 '%s' --threads %d --warmup %d "
                     "--repeat %d --min-time %g%s",
                     script, o->threads, o->warmup, o->repeat, o->min_time,
                     o->backward ? " --backward" : "");
    if (have_dir == 1)
        n += snprintf(cmd + n, cap - (size_t)n, " --data-dir '%s'", dir);
    for (int i = 0; i < o->ncases && n > 0 && (size_t)n < cap; i++) {
        const bench_case *c = torch_case(&o->cases[i]);
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
    }
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
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
    int status = f ? pclose(f) : -1;
    if (have_dir) {
        for (int i = 0; i < o->ncases; i++)
            read_torch_out(p, dir, i);
        rmdir(dir);
    }
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
#endif
    bench_openblas_threads(o->threads);
    p->have_clblast = bench_clblast_built();
    run_torch(p, o);
}

typedef struct openblas_run {
    const bench_case *c;
    const bench_case_data *d;
    float *out;
} openblas_run;

static int openblas_once(void *arg)
{
    openblas_run *run = arg;
    return bench_openblas_forward(run->c, run->d, run->out);
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
    double t0 = bench_now();
    if (!out || bench_openblas_forward(c, d, out)) {
        free(out);
        snprintf(r->status, sizeof r->status, "error");
        snprintf(r->note, sizeof r->note, "out of host memory");
        return 1;
    }
    r->first_ms = 1e3 * (bench_now() - t0);
    bench_record_check(r, bench_compare_output(out, d->ref, d->nq, c->dtype));
    for (int i = 0; i < o->warmup; i++)
        bench_openblas_forward(c, d, out);
    openblas_run run = {c, d, out};
    bench_time_runs(o, openblas_once, &run, r);
    free(out);
    return 1;
}

int bench_peer_run(bench_peers *p, int peer, const bench_options *o, int ci,
                   const bench_case_data *d, bench_result *r)
{
    if (!p->enabled || o->cases[ci].decoder)
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
        if (p->torch_out[ci] && p->torch_nout[ci] == d->nq) {
            bench_check chk =
                bench_compare_output(p->torch_out[ci], d->ref, d->nq, c->dtype);
            r->checked = 1;
            r->max_abs = chk.max_abs;
            r->max_rel = chk.max_rel;
            r->tol = chk.tol;
            if (!chk.pass)
                snprintf(r->status, sizeof r->status, "FAIL");
        } else {
            snprintf(r->note, sizeof r->note, "own random data, not checked");
        }
        free(p->torch_out[ci]);
        p->torch_out[ci] = NULL;
        return 1;
    }
    return 0;
}

void bench_peers_notes(bench_peers *p, FILE *out)
{
    for (int i = 0; i < BENCH_PEER_MAX_CASES; i++) {
        free(p->torch_out[i]);
        p->torch_out[i] = NULL;
    }
    if (!p->enabled)
        return;
    if (!p->have_openblas)
        fprintf(out, "mha-bench: note: OpenBLAS peer not built (no openblas "
                     "found at configure time)\n");
    if (!p->have_clblast)
        fprintf(out, "mha-bench: note: CLBlast peer not built (no clblast "
                     "found at configure time)\n");
    if (!p->have_torch)
        fprintf(out, "mha-bench: note: no PyTorch peer: %s\n",
                p->torch_note[0] ? p->torch_note : "torch not importable");
}
