/* report.c: what mha-bench reports: the output check against the CPU
 * reference, median/p95, machine facts, and the table, JSON and CSV
 * writers plus --compare, which reads two JSON reports back. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

bench_check bench_compare_output(const float *out, const float *ref,
                                 size_t n, mha_dtype dtype)
{
    bench_check r = {0, 0, 0, 1};
    double ref_max = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)out[i] - (double)ref[i]);
        if (isnan(d))
            nan = 1;
        else if (d > r.max_abs)
            r.max_abs = d;
        if (fabs((double)ref[i]) > ref_max)
            ref_max = fabs((double)ref[i]);
    }
    if (nan)
        r.max_abs = INFINITY;
    r.max_rel = ref_max > 0 ? r.max_abs / ref_max : r.max_abs;
    r.tol = (dtype == MHA_F16 ? 1e-2 : 1e-4) * (ref_max > 1 ? ref_max : 1);
    r.pass = !nan && r.max_abs <= r.tol;
    return r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int bench_time_runs(const bench_options *o, int (*run)(void *arg), void *arg,
                    bench_result *r)
{
    int cap = o->repeat > 64 ? o->repeat : 64, n = 0, rc = 0;
    double *t = malloc((size_t)cap * sizeof *t), start = bench_now();
    if (!t)
        return -1;
    while (n < o->repeat || bench_now() - start < o->min_time) {
        if (n == cap) {
            double *t2 = realloc(t, 2 * (size_t)cap * sizeof *t);
            if (!t2)
                break;
            t = t2;
            cap *= 2;
        }
        double s0 = bench_now();
        if ((rc = run(arg)) != 0)
            break;
        t[n++] = 1e3 * (bench_now() - s0);
    }
    r->runs = n;
    bench_stats(t, n, &r->median_ms, &r->p95_ms);
    free(t);
    return rc;
}

void bench_record_check(bench_result *r, bench_check chk)
{
    r->checked = 1;
    r->max_abs = chk.max_abs;
    r->max_rel = chk.max_rel;
    r->tol = chk.tol;
    snprintf(r->status, sizeof r->status, "%s", chk.pass ? "ok" : "FAIL");
}

void bench_stats(double *t, int n, double *median, double *p95)
{
    if (n <= 0) {
        *median = *p95 = 0;
        return;
    }
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    *median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    int k = (int)ceil(0.95 * n) - 1; /* nearest rank */
    *p95 = t[k < 0 ? 0 : k];
}

void bench_machine_info(bench_report *r)
{
    snprintf(r->version, sizeof r->version, "%s", mha_version());
    snprintf(r->cpu_model, sizeof r->cpu_model, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            char *colon = strchr(line, ':');
            if (colon && (!strncmp(line, "model name", 10) ||
                          !strncmp(line, "Model", 5))) {
                char *v = colon + 1;
                while (*v == ' ')
                    v++;
                v[strcspn(v, "\n")] = 0;
                snprintf(r->cpu_model, sizeof r->cpu_model, "%s", v);
                break;
            }
        }
        fclose(f);
    }
    r->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct utsname u;
    if (uname(&u) == 0)
    {
        /* built piecewise: one snprintf of four 65-byte fields trips
         * -Wformat-truncation */
        r->uname[0] = 0;
        const char *parts[4] = {u.sysname, u.release, u.version, u.machine};
        for (int i = 0; i < 4; i++) {
            size_t used = strlen(r->uname);
            if (used + 2 >= sizeof r->uname)
                break;
            snprintf(r->uname + used, sizeof r->uname - used, "%s%.64s",
                     i ? " " : "", parts[i]);
        }
    }
}

static const char *dtype_name(mha_dtype d)
{
    return d == MHA_F16 ? "f16" : "f32";
}

static void fmt_num(char *buf, size_t n, double v, const char *fmt)
{
    if (v <= 0)
        snprintf(buf, n, "-");
    else
        snprintf(buf, n, fmt, v);
}

void bench_print_table(FILE *out, const bench_report *r)
{
    fprintf(out, "%-26s %-10s %-4s %4s %6s %6s %10s %10s %10s %9s %8s %6s "
                 "%9s %9s %8s %7s %s\n",
            "case", "device", "type", "B", "L", "S", "median_ms", "p95_ms",
            "first_ms", "GFLOP/s", "GB/s", "ratio", "max_abs", "max_rel",
            "rss_MiB", "dev_MiB", "status");
    for (int i = 0; i < r->nresults; i++) {
        const bench_result *x = &r->results[i];
        char med[16], p95[16], first[16], gf[16], gb[16], ratio[16], ea[16],
            er[16], dev[16];
        fmt_num(med, sizeof med, x->median_ms, "%.3f");
        fmt_num(p95, sizeof p95, x->p95_ms, "%.3f");
        fmt_num(first, sizeof first, x->first_ms, "%.3f");
        fmt_num(gf, sizeof gf, x->gflops, "%.2f");
        fmt_num(gb, sizeof gb, x->gbps, "%.2f");
        fmt_num(ratio, sizeof ratio, x->ratio, "%.2f");
        if (x->checked) {
            snprintf(ea, sizeof ea, "%.2e", x->max_abs);
            snprintf(er, sizeof er, "%.2e", x->max_rel);
        } else {
            snprintf(ea, sizeof ea, "-");
            snprintf(er, sizeof er, "-");
        }
        if (x->device_mem_mib >= 0)
            snprintf(dev, sizeof dev, "%.1f", x->device_mem_mib);
        else
            snprintf(dev, sizeof dev, "n/a");
        fprintf(out,
                "%-26s %-10s %-4s %4lld %6lld %6lld %10s %10s %10s %9s %8s "
                "%6s %9s %9s %8.1f %7s %s%s%s\n",
                x->c.name, x->device, dtype_name(x->c.dtype),
                (long long)x->c.batch, (long long)x->c.tgt_len,
                (long long)x->c.src_len, med, p95, first, gf, gb, ratio, ea,
                er, x->peak_rss_mib, dev, x->status, x->note[0] ? ": " : "",
                x->note);
    }
}

/* cJSON cannot hold Inf/NaN as numbers; they become null. */
static void add_num(cJSON *o, const char *k, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static cJSON *case_json(const bench_case *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", c->name);
    cJSON_AddNumberToObject(o, "embed_dim", (double)c->embed_dim);
    cJSON_AddNumberToObject(o, "heads", (double)c->heads);
    cJSON_AddNumberToObject(o, "batch", (double)c->batch);
    cJSON_AddNumberToObject(o, "tgt_len", (double)c->tgt_len);
    cJSON_AddNumberToObject(o, "src_len", (double)c->src_len);
    cJSON_AddNumberToObject(o, "kdim", (double)c->kdim);
    cJSON_AddNumberToObject(o, "vdim", (double)c->vdim);
    cJSON_AddBoolToObject(o, "causal", c->causal);
    cJSON_AddBoolToObject(o, "self_attention", c->self_attn);
    cJSON_AddStringToObject(o, "dtype", dtype_name(c->dtype));
    cJSON_AddNumberToObject(o, "flops", bench_flops(c));
    cJSON_AddNumberToObject(o, "bytes", bench_bytes(c));
    return o;
}

int bench_write_json(const char *path, const bench_report *r)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "tool", "mha-bench");
    cJSON_AddStringToObject(root, "libmha_version", r->version);
    cJSON *m = cJSON_AddObjectToObject(root, "machine");
    cJSON_AddStringToObject(m, "cpu_model", r->cpu_model);
    cJSON_AddNumberToObject(m, "cores", r->cores);
    cJSON_AddStringToObject(m, "uname", r->uname);
    cJSON_AddNumberToObject(root, "threads", r->threads);
    cJSON *devs = cJSON_AddArrayToObject(root, "devices");
    for (int i = 0; i < r->ndevices; i++) {
        const mha_device_info *d = &r->devices[i].info;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "spec", r->devices[i].spec);
        cJSON_AddStringToObject(o, "backend", d->backend);
        cJSON_AddStringToObject(o, "name", d->name);
        cJSON_AddStringToObject(o, "vendor", d->vendor);
        cJSON_AddStringToObject(o, "driver", d->driver);
        cJSON_AddNumberToObject(o, "memory_bytes", (double)d->memory_bytes);
        cJSON_AddNumberToObject(o, "compute_units", d->compute_units);
        cJSON_AddNumberToObject(o, "features", d->features);
        cJSON_AddItemToArray(devs, o);
    }
    cJSON *res = cJSON_AddArrayToObject(root, "results");
    for (int i = 0; i < r->nresults; i++) {
        const bench_result *x = &r->results[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "case", case_json(&x->c));
        cJSON_AddStringToObject(o, "device", x->device);
        cJSON_AddStringToObject(o, "device_name", x->device_name);
        cJSON_AddStringToObject(o, "backend", x->backend);
        cJSON_AddStringToObject(o, "status", x->status);
        cJSON_AddStringToObject(o, "note", x->note);
        cJSON_AddNumberToObject(o, "runs", x->runs);
        add_num(o, "median_ms", x->median_ms);
        add_num(o, "p95_ms", x->p95_ms);
        add_num(o, "first_ms", x->first_ms);
        add_num(o, "gflops", x->gflops);
        add_num(o, "gbps", x->gbps);
        add_num(o, "ratio", x->ratio);
        bench_result_json_extras(o, x);
        if (x->checked) {
            add_num(o, "max_abs_err", x->max_abs);
            add_num(o, "max_rel_err", x->max_rel);
            add_num(o, "tolerance", x->tol);
        }
        add_num(o, "peak_rss_mib", x->peak_rss_mib);
        if (x->device_mem_mib >= 0)
            add_num(o, "device_mem_mib", x->device_mem_mib);
        else
            cJSON_AddNullToObject(o, "device_mem_mib");
        cJSON_AddItemToArray(res, o);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return -1;
    FILE *f = fopen(path, "w");
    int rc = -1;
    if (f) {
        rc = fputs(text, f) < 0 || fputc('\n', f) == EOF ? -1 : 0;
        if (fclose(f))
            rc = -1;
    }
    cJSON_free(text);
    return rc;
}

int bench_write_csv(const char *path, const bench_report *r)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "case,device,device_name,backend,dtype,embed_dim,heads,batch,"
               "tgt_len,src_len,kdim,vdim,causal,runs,median_ms,p95_ms,"
               "first_ms,gflops,gbps,ratio,max_abs_err,max_rel_err,"
               "tolerance,peak_rss_mib,device_mem_mib,status,"
               "libmha_version,cpu_model,cores,threads\n");
    for (int i = 0; i < r->nresults; i++) {
        const bench_result *x = &r->results[i];
        char dev[32] = "";
        if (x->device_mem_mib >= 0)
            snprintf(dev, sizeof dev, "%.3f", x->device_mem_mib);
        /* Names may hold commas: quote them, doubling no quotes (device
         * names have none). */
        fprintf(f,
                "%s,%s,\"%s\",%s,%s,%lld,%lld,%lld,%lld,%lld,%lld,%lld,%d,"
                "%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.4g,%.6g,%.6g,%.6g,%.3f,%s,%s,"
                "%s,\"%s\",%d,%d\n",
                x->c.name, x->device, x->device_name, x->backend,
                dtype_name(x->c.dtype), (long long)x->c.embed_dim,
                (long long)x->c.heads, (long long)x->c.batch,
                (long long)x->c.tgt_len, (long long)x->c.src_len,
                (long long)x->c.kdim, (long long)x->c.vdim, x->c.causal,
                x->runs, x->median_ms, x->p95_ms, x->first_ms, x->gflops,
                x->gbps, x->ratio, x->checked ? x->max_abs : 0,
                x->checked ? x->max_rel : 0, x->checked ? x->tol : 0,
                x->peak_rss_mib, dev, x->status, r->version, r->cpu_model,
                r->cores, r->threads);
    }
    return fclose(f) ? -1 : 0;
}

static cJSON *load_json(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "mha-bench: --compare: cannot open '%s'", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    cJSON *root = NULL;
    if (buf) {
        buf[got] = 0;
        root = cJSON_Parse(buf);
        free(buf);
    }
    if (!root || !cJSON_IsArray(cJSON_GetObjectItem(root, "results"))) {
        snprintf(err, errlen,
                 "mha-bench: --compare: '%s' is not an mha-bench JSON report "
                 "(no \"results\" array)",
                 path);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, k));
    return s ? s : "";
}

static double jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

int bench_compare_files(const char *old_path, const char *new_path,
                        FILE *out, char *err, size_t errlen)
{
    cJSON *a = load_json(old_path, err, errlen);
    if (!a)
        return BENCH_EXIT_USAGE;
    cJSON *b = load_json(new_path, err, errlen);
    if (!b) {
        cJSON_Delete(a);
        return BENCH_EXIT_USAGE;
    }
    fprintf(out, "%-28s %-10s %12s %12s %9s\n", "case", "device", "old_ms",
            "new_ms", "speedup");
    const cJSON *rn, *ro;
    int matched = 0;
    cJSON_ArrayForEach(rn, cJSON_GetObjectItem(b, "results"))
    {
        const char *cname = jstr(cJSON_GetObjectItem(rn, "case"), "name");
        const char *dev = jstr(rn, "device");
        cJSON_ArrayForEach(ro, cJSON_GetObjectItem(a, "results"))
        {
            if (strcmp(cname, jstr(cJSON_GetObjectItem(ro, "case"), "name")) ||
                strcmp(dev, jstr(ro, "device")))
                continue;
            double to = jnum(ro, "median_ms"), tn = jnum(rn, "median_ms");
            if (to > 0 && tn > 0)
                fprintf(out, "%-28s %-10s %12.3f %12.3f %8.2fx\n", cname, dev,
                        to, tn, to / tn);
            else
                fprintf(out, "%-28s %-10s %12s %12s %9s\n", cname, dev, "-",
                        "-", "-");
            matched++;
            break;
        }
    }
    if (!matched)
        fprintf(out, "(no case and device appears in both files)\n");
    cJSON_Delete(a);
    cJSON_Delete(b);
    return 0;
}
