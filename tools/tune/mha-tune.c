/* mha-tune: times the kernel variants of each GPU device for the shapes of
 * mha-bench's presets (or one shape) and writes the winners to the tuning
 * database that libmha reads when it plans (core/tune_db.c). Per device
 * and case: the built-in default (MHA_TUNE=off), then each matmul variant,
 * then each attention variant with the best matmul (coordinate descent),
 * each forced through MHA_TUNE_VARIANT, checked against the default's
 * output, and timed right after the best so far, which it replaces only
 * when 10% faster (pairs: a loaded machine drifts between measurements);
 * a shape class the database already holds for the device and driver is
 * skipped. Within --budget seconds in all. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "context.h"
#include "peers.h"
#include "tune_db.h"

static const char usage[] =
    "usage: mha-tune [options]\n"
    "\n"
    "Times libmha's kernel variants on each GPU device for the shapes of\n"
    "mha-bench presets (or one shape) and writes the fastest to the tuning\n"
    "database (tune.json in the cache directory, or MHA_TUNE_DB), keyed by\n"
    "device, driver and shape class; libmha reads it when it plans. Each\n"
    "variant is timed right after the best so far and replaces it only when\n"
    "10% faster. Shapes the database holds for a device and driver are\n"
    "skipped.\n"
    "\n"
    "  --device SPEC      vulkan, opencl, backend:N (default: every GPU\n"
    "                     device); repeat for several\n"
    "  --preset NAME      a mha-bench preset (default bert-base); repeat\n"
    "  --embed-dim E --heads H --batch B --tgt-len L --src-len S --causal\n"
    "                     one shape instead (defaults E512 H8 B1 L128 S=L)\n"
    "  --shape E,H,B,L    a self-attention shape (S = L); repeat for several\n"
    "  --budget SEC       time for all measurements (default 120)\n"
    "  --repeat N         timed forwards per variant (default 3)\n"
    "  --force            measure shapes the database already holds\n"
    "  --json             print every measurement as JSON on stdout\n"
    "  --list             print each device's variants (one line per\n"
    "                     device and kind: SPEC KIND NAME...) and exit\n"
    "  --compare N        measure nothing new: time each case's forward\n"
    "                     with MHA_TUNE=off (the untuned default) and\n"
    "                     MHA_TUNE=db (the database's pick), alternating,\n"
    "                     N rounds of --repeat forwards each, and print\n"
    "                     both medians and the speedup\n"
    "  --help             print this text\n";

typedef struct tune_opts {
    const char *devices[8];
    int ndevices;
    bench_case cases[BENCH_MAX_CASES];
    int ncases;
    double budget;
    int repeat, force, json, list, compare;
} tune_opts;

/* One case's layer and tensors on a device. */
typedef struct tune_run {
    mha_layer *layer;
    mha_tensor *q, *k, *v, *y;
    mha_forward_args a;
    float *ref, *out; /* the default's output, this variant's */
    size_t n;
} tune_run;

static double now_s(void) { return bench_now(); }

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse(int argc, char **argv, tune_opts *o)
{
    bench_case c = {.embed_dim = 512, .heads = 8, .batch = 1, .tgt_len = 128};
    int custom = 0;
    o->budget = 120;
    o->repeat = 3;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        int64_t *dim = !strcmp(a, "--embed-dim") ? &c.embed_dim
                       : !strcmp(a, "--heads")   ? &c.heads
                       : !strcmp(a, "--batch")   ? &c.batch
                       : !strcmp(a, "--tgt-len") ? &c.tgt_len
                       : !strcmp(a, "--src-len") ? &c.src_len
                                                 : NULL;
        if (dim || !strcmp(a, "--repeat") || !strcmp(a, "--budget") ||
            !strcmp(a, "--compare")) {
            if (!v || parse_int(v, 1, 1 << 24, &n))
                return fprintf(stderr, "mha-tune: %s needs a positive "
                                       "number\n", a), -1;
            i++;
            if (dim)
                *dim = n, custom = 1;
            else if (!strcmp(a, "--repeat"))
                o->repeat = (int)n;
            else if (!strcmp(a, "--compare"))
                o->compare = (int)n;
            else
                o->budget = (double)n;
        } else if (!strcmp(a, "--shape") && v && o->ncases < BENCH_MAX_CASES) {
            bench_case *s = &o->cases[o->ncases];
            long long e, h, b, l;
            if (sscanf(argv[++i], "%lld,%lld,%lld,%lld", &e, &h, &b, &l) != 4 ||
                e < 1 || h < 1 || b < 1 || l < 1)
                return fprintf(stderr, "mha-tune: --shape wants E,H,B,L\n"),
                       -1;
            *s = (bench_case){.embed_dim = e, .heads = h, .batch = b,
                              .tgt_len = l, .src_len = l, .kdim = e,
                              .vdim = e};
            snprintf(s->name, sizeof s->name, "shape%d", o->ncases++);
        } else if (!strcmp(a, "--device") && v && o->ndevices < 8) {
            o->devices[o->ndevices++] = argv[++i];
        } else if (!strcmp(a, "--preset") && v) {
            if (bench_preset_add(argv[++i], o->cases, &o->ncases,
                                 BENCH_MAX_CASES))
                return fprintf(stderr, "mha-tune: unknown preset %s\n", v),
                       -1;
        } else if (!strcmp(a, "--causal")) {
            c.causal = 1, custom = 1;
        } else if (!strcmp(a, "--force")) {
            o->force = 1;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--list")) {
            o->list = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            exit(0);
        } else {
            return fprintf(stderr, "mha-tune: unknown argument %s (try "
                                   "--help)\n", a), -1;
        }
    }
    if (custom) {
        c.src_len = c.src_len ? c.src_len : c.tgt_len;
        c.kdim = c.vdim = c.embed_dim;
        snprintf(c.name, sizeof c.name, "custom");
        o->cases[o->ncases++] = c;
    }
    if (!o->ncases)
        bench_preset_add("bert-base", o->cases, &o->ncases, BENCH_MAX_CASES);
    return 0;
}

static mha_status make(mha_device *dev, int64_t a, int64_t b, int64_t c,
                       const float *src, mha_tensor **out)
{
    int64_t shape[3] = {a, b, c};
    mha_status st = mha_tensor_create(dev, MHA_F32, 3, shape, out);
    if (st == MHA_OK && src)
        st = mha_tensor_upload(*out, src, (size_t)(a * b * c) * sizeof(float));
    return st;
}

static void run_free(tune_run *r)
{
    mha_tensor_destroy(r->q);
    mha_tensor_destroy(r->k);
    mha_tensor_destroy(r->v);
    mha_tensor_destroy(r->y);
    mha_layer_destroy(r->layer);
    free(r->ref);
    free(r->out);
    memset(r, 0, sizeof *r);
}

static mha_status run_make(mha_device *dev, const bench_case *c,
                           const bench_case_data *d, tune_run *r)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, c->embed_dim, c->heads);
    memset(r, 0, sizeof *r);
    r->n = d->nq;
    r->ref = malloc(r->n * sizeof(float));
    r->out = malloc(r->n * sizeof(float));
    if (!r->ref || !r->out)
        return MHA_OUT_OF_MEMORY;
    mha_status st;
    if ((st = mha_layer_create(dev, &cfg, &r->layer)) ||
        (st = bench_set_weights(r->layer, c, d)) ||
        (st = make(dev, c->tgt_len, c->batch, c->embed_dim, d->q, &r->q)) ||
        (st = make(dev, c->src_len, c->batch, c->embed_dim, d->k, &r->k)) ||
        (st = make(dev, c->src_len, c->batch, c->embed_dim, d->v, &r->v)) ||
        (st = make(dev, c->tgt_len, c->batch, c->embed_dim, NULL, &r->y)))
        return st;
    mha_forward_args_init(&r->a);
    r->a.query = r->q;
    r->a.key = r->k;
    r->a.value = r->v;
    r->a.output = r->y;
    r->a.is_causal = c->causal;
    return MHA_OK;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median ms of repeat forwards after one untimed (kernel builds) under
 * the variants in force; out holds the result. -1 on failure. */
static double time_forwards(tune_run *r, int repeat, float *out)
{
    double t[64];
    repeat = repeat > 64 ? 64 : repeat;
    if (mha_layer_forward(r->layer, &r->a) != MHA_OK)
        return -1;
    for (int i = 0; i < repeat; i++) {
        double t0 = now_s();
        if (mha_layer_forward(r->layer, &r->a) != MHA_OK)
            return -1;
        t[i] = 1e3 * (now_s() - t0);
    }
    if (mha_tensor_download(r->y, out, r->n * sizeof(float)) != MHA_OK)
        return -1;
    qsort(t, (size_t)repeat, sizeof *t, cmp_double);
    return t[repeat / 2];
}

/* Whether out agrees with the default's output (fp32 tolerance). */
static int agrees(const tune_run *r)
{
    double scale = 1;
    for (size_t i = 0; i < r->n; i++)
        scale = fmax(scale, fabs(r->ref[i]));
    for (size_t i = 0; i < r->n; i++)
        if (!(fabs(r->out[i] - r->ref[i]) <= 1e-3 * scale))
            return 0;
    return 1;
}

/* Times one forced variant set ("matmul=A,attention=B"); -1 when it fails
 * or disagrees with the default. */
static double time_variant(tune_run *r, int repeat, const char *forced)
{
    setenv("MHA_TUNE_VARIANT", forced, 1);
    double ms = time_forwards(r, repeat, r->out);
    unsetenv("MHA_TUNE_VARIANT");
    return ms >= 0 && agrees(r) ? ms : -1;
}

typedef struct search {
    const tune_opts *o;
    double deadline;
    cJSON *tried; /* {"matmul=..,attention=..": ms} */
} search;

/* A variant replaces the best so far only when it is this much faster
 * than it, timed right after it (a pair), so that the drift of a loaded
 * machine between two measurements does not pick noise. */
#define TUNE_MARGIN 0.9

/* The fastest of kind's variants with the other part fixed (fixed is
 * "matmul=X," or ""), into best (left as is when none beats it). */
static void sweep(search *s, tune_run *r, mha_device *dev, const char *kind,
                  const char *fixed, char *best, double *best_ms)
{
    const char *names[MHA_MAX_VARIANTS];
    int n = 0;
    mha_device_variants(dev, kind, names, MHA_MAX_VARIANTS, &n);
    for (int i = 0; i < n && i < MHA_MAX_VARIANTS; i++) {
        if (now_s() > s->deadline)
            return;
        char forced[96], incumbent[96];
        snprintf(forced, sizeof forced, "%s%s=%s", fixed, kind, names[i]);
        snprintf(incumbent, sizeof incumbent, "%s%s=%s", fixed, kind, best);
        double base = time_variant(r, s->o->repeat, incumbent);
        double ms = time_variant(r, s->o->repeat, forced);
        cJSON_AddNumberToObject(s->tried, forced, ms);
        if (ms > 0 && base > 0 && ms < TUNE_MARGIN * base) {
            *best_ms = ms;
            snprintf(best, 32, "%s", names[i]);
        }
    }
}

/* Tunes case c on dev into entry e (shape, winners, times). -1 when the
 * default itself does not run. */
static int tune_case(search *s, mha_device *dev, const bench_case *c,
                     mha_tune_entry *e)
{
    bench_case_data d;
    tune_run r;
    if (bench_case_data_make(c, &d))
        return -1;
    int rc = -1;
    if (run_make(dev, c, &d, &r) == MHA_OK) {
        setenv("MHA_TUNE", "off", 1);
        e->default_ms = time_forwards(&r, s->o->repeat, r.ref);
        unsetenv("MHA_TUNE");
        snprintf(e->matmul, sizeof e->matmul, "default");
        snprintf(e->attention, sizeof e->attention, "default");
        e->ms = e->default_ms;
        if (e->default_ms > 0) {
            setenv("MHA_TUNE", "off", 1); /* the unforced part: default */
            sweep(s, &r, dev, "matmul", "", e->matmul, &e->ms);
            char fixed[64];
            snprintf(fixed, sizeof fixed, "matmul=%s,", e->matmul);
            sweep(s, &r, dev, "attention", fixed, e->attention, &e->ms);
            unsetenv("MHA_TUNE");
            rc = 0;
        }
    }
    run_free(&r);
    bench_case_data_free(&d);
    return rc;
}

static void entry_key(mha_device *dev, const bench_case *c, mha_tune_entry *e)
{
    mha_device_info info;
    mha_device_info_of(dev, &info);
    memset(e, 0, sizeof *e);
    snprintf(e->backend, sizeof e->backend, "%s", info.backend);
    snprintf(e->device, sizeof e->device, "%s", info.name);
    snprintf(e->driver, sizeof e->driver, "%s", info.driver);
    mha_tune_shape s = {c->embed_dim, c->heads, c->batch, c->tgt_len,
                        c->src_len, c->causal};
    mha_tune_shape_class(&s, e->shape, sizeof e->shape);
}

static cJSON *entry_report(const mha_tune_entry *e, const char *status,
                           cJSON *tried)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "backend", e->backend);
    cJSON_AddStringToObject(o, "device", e->device);
    cJSON_AddStringToObject(o, "shape", e->shape);
    cJSON_AddStringToObject(o, "status", status);
    cJSON_AddStringToObject(o, "matmul", e->matmul);
    cJSON_AddStringToObject(o, "attention", e->attention);
    cJSON_AddNumberToObject(o, "ms", e->ms);
    cJSON_AddNumberToObject(o, "default_ms", e->default_ms);
    cJSON_AddItemToObject(o, "tried", tried ? tried : cJSON_CreateObject());
    return o;
}

/* --compare: the case's forward under MHA_TUNE=off and =db, alternating
 * rounds; prints the medians of each round's median and the speedup. */
static void compare_case(mha_device *dev, const tune_opts *o,
                         const bench_case *c)
{
    bench_case_data d;
    tune_run r;
    double t[2][64];
    int n = o->compare > 64 ? 64 : o->compare, ok = 1;
    if (bench_case_data_make(c, &d))
        return;
    if (run_make(dev, c, &d, &r) == MHA_OK)
        for (int i = 0; i < n && ok; i++)
            for (int m = 0; m < 2 && ok; m++) {
                setenv("MHA_TUNE", m ? "db" : "off", 1);
                t[m][i] = time_forwards(&r, o->repeat, r.out);
                ok = t[m][i] > 0;
            }
    unsetenv("MHA_TUNE");
    mha_tune_entry e;
    entry_key(dev, c, &e);
    if (ok) {
        qsort(t[0], (size_t)n, sizeof **t, cmp_double);
        qsort(t[1], (size_t)n, sizeof **t, cmp_double);
        printf("%-8s %-26s default %10.3f ms  tuned %10.3f ms  %5.2fx\n",
               e.backend, e.shape, t[0][n / 2], t[1][n / 2],
               t[0][n / 2] / t[1][n / 2]);
    }
    run_free(&r);
    bench_case_data_free(&d);
}

/* Tunes every case on dev, writing the database after each. */
static int tune_device(mha_context *ctx, mha_device *dev, search *s,
                       mha_tune_db *db, const char *path, cJSON *report)
{
    int rc = 0;
    for (int ci = 0; ci < s->o->ncases; ci++) {
        const bench_case *c = &s->o->cases[ci];
        if (c->decoder || c->kdim != c->embed_dim || c->vdim != c->embed_dim)
            continue;
        mha_tune_entry e;
        entry_key(dev, c, &e);
        const mha_tune_entry *had = mha_tune_db_find(db, e.backend, e.device,
                                                     e.driver, e.shape);
        if (had && !s->o->force) {
            fprintf(stderr, "mha-tune: %s %s: in the database, skipped\n",
                    e.backend, e.shape);
            cJSON_AddItemToArray(report, entry_report(had, "skipped", NULL));
            continue;
        }
        s->tried = cJSON_CreateObject();
        if (now_s() > s->deadline || tune_case(s, dev, c, &e)) {
            fprintf(stderr, "mha-tune: %s %s: %s\n", e.backend, e.shape,
                    now_s() > s->deadline ? "over budget, not measured"
                                          : mha_context_errmsg(ctx));
            cJSON_Delete(s->tried);
            continue;
        }
        fprintf(stderr, "mha-tune: %s %s: matmul %s, attention %s: %.3f ms "
                        "(default %.3f ms)\n",
                e.backend, e.shape, e.matmul, e.attention, e.ms, e.default_ms);
        cJSON_AddItemToArray(report, entry_report(&e, "measured", s->tried));
        int err = mha_tune_db_put(&ctx->host, db, &e) != MHA_OK
                      ? 12
                      : mha_tune_db_write(path, db);
        if (err) {
            fprintf(stderr, "mha-tune: cannot write %s: %s\n", path,
                    strerror(err));
            rc = 1;
        }
    }
    return rc;
}

/* The GPU devices to tune: those named, else every one with variants. */
static int open_devices(mha_context *ctx, const tune_opts *o,
                        mha_device **devs, int cap)
{
    int n = 0, count = 0;
    mha_device_count(ctx, &count);
    for (int i = 0; i < (o->ndevices ? o->ndevices : count) && n < cap; i++) {
        mha_device *d = NULL;
        mha_status st = o->ndevices
                            ? mha_device_open(ctx, o->devices[i], NULL, &d)
                            : mha_device_open_index(ctx, i, NULL, &d);
        int variants = 0;
        if (st == MHA_OK)
            mha_device_variants(d, "matmul", NULL, 0, &variants);
        if (st == MHA_OK && variants > 0)
            devs[n++] = d;
        else
            mha_device_destroy(d);
    }
    return n;
}

/* --list: SPEC KIND NAME... per device and kind. */
static void list_variants(mha_device *const *devs, int n)
{
    static const char *const kinds[] = {"matmul", "attention"};
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        mha_device_info_of(devs[i], &info);
        for (int k = 0; k < 2; k++) {
            const char *names[MHA_MAX_VARIANTS];
            int count = 0;
            mha_device_variants(devs[i], kinds[k], names, MHA_MAX_VARIANTS,
                                &count);
            printf("%s:%d %s", info.backend, info.backend_index, kinds[k]);
            for (int j = 0; j < count && j < MHA_MAX_VARIANTS; j++)
                printf(" %s", names[j]);
            printf("\n");
        }
    }
}

int main(int argc, char **argv)
{
    tune_opts o = {0};
    if (parse(argc, argv, &o))
        return 2;
    mha_context *ctx = NULL;
    if (mha_context_create(NULL, &ctx) != MHA_OK)
        return 1;
    char path[4096], dir[4096];
    if (!mha_tune_db_path(&ctx->host, NULL, path, sizeof path)) {
        fprintf(stderr, "mha-tune: no cache directory (MHA_CACHE_DIR is "
                        "\"\" and MHA_TUNE_DB unset)\n");
        mha_context_destroy(ctx);
        return 1;
    }
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    mha_tune_db db;
    mha_tune_db_read(&ctx->host, path, &db);
    int rc = slash && !mha_cache_dir_ready(&ctx->host, dir);
    mha_device *devs[16];
    int ndev = rc ? 0 : open_devices(ctx, &o, devs, 16);
    search s = {&o, now_s() + o.budget, NULL};
    cJSON *report = cJSON_CreateArray();
    if (o.list)
        list_variants(devs, ndev);
    for (int i = 0; i < ndev && o.compare; i++)
        for (int ci = 0; ci < o.ncases; ci++)
            compare_case(devs[i], &o, &o.cases[ci]);
    for (int i = 0; i < ndev && !o.list && !o.compare; i++)
        rc |= tune_device(ctx, devs[i], &s, &db, path, report);
    if (o.json && !o.list && !o.compare) {
        char *text = cJSON_Print(report);
        if (text)
            printf("%s\n", text);
        cJSON_free(text);
    }
    if (!o.list && !o.compare)
        fprintf(stderr, "mha-tune: database %s (%d entries)\n", path,
                db.count);
    cJSON_Delete(report);
    mha_tune_db_free(&ctx->host, &db);
    for (int i = 0; i < ndev; i++)
        mha_device_destroy(devs[i]);
    mha_context_destroy(ctx);
    return rc;
}
