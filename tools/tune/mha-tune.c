/* mha-tune: times the kernel variants of each GPU device for the shapes of
 * mha-bench's presets (or one shape) and writes the winners to the tuning
 * database that libmha reads when it plans (core/tune_db.c). Per device
 * and case: each matmul variant, then each attention variant with the
 * matmul pick (coordinate descent), each forced through MHA_TUNE_VARIANT,
 * checked against the built-in default's output (MHA_TUNE=off), and timed
 * against the default in paired rounds that alternate which goes first;
 * decide.c picks a variant only when it beats the default by more than
 * the noise those rounds measured (a loaded machine drifts and jumps
 * between measurements), else the default stays, with the ratio seen. A
 * shape class the database already holds for the device and driver is
 * skipped. Within --budget seconds in all. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "context.h"
#include "decide.h"
#include "peers.h"
#include "tune_db.h"

static const char usage[] =
    "usage: mha-tune [options]\n"
    "\n"
    "Times libmha's kernel variants on each GPU device for the shapes of\n"
    "mha-bench presets (or one shape) and writes the picks to the tuning\n"
    "database (tune.json in the cache directory, or MHA_TUNE_DB), keyed by\n"
    "device, driver and shape class; libmha reads it when it plans. Each\n"
    "variant is timed against the built-in default in --rounds paired\n"
    "rounds (alternating which runs first) and is picked only when the\n"
    "median of its per-round ratios (default ms / variant ms) beats\n"
    "1 + max(5%, the default's spread in those rounds: interquartile range\n"
    "over median) and it won more than 2/3 of at least 3 rounds; the best\n"
    "of each kind must then win again in a second set of rounds. Else the\n"
    "database records the default, with the best ratio measured (\"kept\n"
    "default: best candidate ... 1.03x, within noise 6%\"). Shapes the\n"
    "database holds for a device and driver are skipped.\n"
    "\n"
    "  --device SPEC      vulkan, opencl, backend:N (default: every GPU\n"
    "                     device); repeat for several\n"
    "  --preset NAME      a mha-bench preset (default bert-base); repeat\n"
    "  --embed-dim E --heads H --batch B --tgt-len L --src-len S --causal\n"
    "                     one shape instead (defaults E512 H8 B1 L128 S=L)\n"
    "  --shape E,H,B,L    a self-attention shape (S = L); repeat for several\n"
    "  --budget SEC       time for all measurements (default 120); a\n"
    "                     variant cut short gets the rounds it had\n"
    "  --rounds N         paired rounds per variant, 3 to 64 (default 5)\n"
    "  --repeat N         timed forwards per variant and round, their\n"
    "                     median taken (default 1)\n"
    "  --force            measure shapes the database already holds\n"
    "  --json             print every measurement as JSON on stdout (per\n"
    "                     variant: ratio, spread, needed, wins, rounds,\n"
    "                     picked)\n"
    "  --list             print each device's variants (one line per\n"
    "                     device and kind: SPEC KIND NAME...) and exit\n"
    "  --compare N        measure nothing new: time each case's forward\n"
    "                     with MHA_TUNE=off (the untuned default) and\n"
    "                     MHA_TUNE=db (the database's pick) in N paired\n"
    "                     rounds of --repeat forwards each, and print both\n"
    "                     medians, the median ratio and the noise\n"
    "  --help             print this text\n";

typedef struct tune_opts {
    const char *devices[8];
    int ndevices;
    bench_case cases[BENCH_MAX_CASES];
    int ncases;
    double budget;
    int repeat, rounds, force, json, list, compare;
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
    o->repeat = 1;
    o->rounds = 5;
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
            !strcmp(a, "--compare") || !strcmp(a, "--rounds")) {
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
            else if (!strcmp(a, "--rounds") &&
                     (n < TUNE_MIN_ROUNDS || n > TUNE_MAX_ROUNDS))
                return fprintf(stderr, "mha-tune: --rounds %ld: from %d to "
                                       "%d (fewer prove nothing)\n",
                               n, TUNE_MIN_ROUNDS, TUNE_MAX_ROUNDS), -1;
            else if (!strcmp(a, "--rounds"))
                o->rounds = (int)n;
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

/* Sets (on) or clears the environment variable of setting, "NAME=VALUE":
 * the source or the variants a forward runs under. */
static void apply(const char *setting, int on)
{
    char name[32];
    size_t n = strcspn(setting, "=");
    snprintf(name, sizeof name, "%.*s", (int)n, setting);
    if (on)
        setenv(name, setting + n + (setting[n] == '='), 1);
    else
        unsetenv(name);
}

/* One untimed forward under setting (it builds the kernels), its result
 * into out. 0, or -1 when it fails. */
static int warm(tune_run *r, const char *setting, float *out)
{
    apply(setting, 1);
    int ok = mha_layer_forward(r->layer, &r->a) == MHA_OK &&
             mha_tensor_download(r->y, out, r->n * sizeof(float)) == MHA_OK;
    apply(setting, 0);
    return ok ? 0 : -1;
}

/* Median ms of repeat forwards under setting; -1 when one fails. */
static double time_block(tune_run *r, int repeat, const char *setting)
{
    double t[64];
    int ok = 1;
    repeat = repeat > 64 ? 64 : repeat;
    apply(setting, 1);
    for (int i = 0; i < repeat && ok; i++) {
        double t0 = now_s();
        ok = mha_layer_forward(r->layer, &r->a) == MHA_OK;
        t[i] = 1e3 * (now_s() - t0);
    }
    apply(setting, 0);
    if (!ok)
        return -1;
    qsort(t, (size_t)repeat, sizeof *t, cmp_double);
    return t[repeat / 2];
}

/* Up to rounds paired blocks of base and cand, while before deadline (s)
 * and no forward fails; which runs first alternates by round, so that
 * drift within a round favours neither. The verdict is decide.c's. */
static void paired(tune_run *r, int repeat, int rounds, double deadline,
                   const char *base, const char *cand, tune_verdict *v)
{
    double t[2][TUNE_MAX_ROUNDS]; /* [0] base, [1] cand */
    int n = 0, ok = 1;
    rounds = rounds > TUNE_MAX_ROUNDS ? TUNE_MAX_ROUNDS : rounds;
    for (; n < rounds && ok && now_s() <= deadline; n++)
        for (int k = 0; k < 2; k++) {
            int which = (n + k) % 2;
            t[which][n] = time_block(r, repeat, which ? cand : base);
            ok = ok && t[which][n] > 0;
        }
    tune_decide(t[0], t[1], n, v);
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

typedef struct search {
    const tune_opts *o;
    mha_context *ctx;
    double deadline;
    cJSON *tried; /* {"matmul=..,attention=..": verdict} */
} search;

/* A kind's outcome on one case: the best candidate measured (a pick,
 * else the highest ratio) and its verdict in the sweep, the evidence kept;
 * name "" when none was. A sweep pick is taken only when the confirming
 * set of rounds (confirm, when confirming) picks it too. */
typedef struct kind_result {
    char name[32];
    tune_verdict v;
    tune_verdict confirm;
    int confirming, picked;
} kind_result;

static cJSON *verdict_json(const tune_verdict *v)
{
    char text[96];
    tune_verdict_text(v, text, sizeof text);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ratio", v->ratio);
    cJSON_AddNumberToObject(o, "spread", v->spread);
    cJSON_AddNumberToObject(o, "needed", v->needed);
    cJSON_AddNumberToObject(o, "wins", v->wins);
    cJSON_AddNumberToObject(o, "rounds", v->rounds);
    cJSON_AddNumberToObject(o, "ms", v->cand_ms);
    cJSON_AddNumberToObject(o, "default_ms", v->base_ms);
    cJSON_AddBoolToObject(o, "picked", v->picked);
    cJSON_AddStringToObject(o, "verdict", text);
    return o;
}

/* Whether verdict a beats b as a kind's best: a pick beats no pick, then
 * the higher ratio. */
static int better(const tune_verdict *a, const tune_verdict *b)
{
    return a->picked != b->picked ? a->picked : a->ratio > b->ratio;
}

#define FORCE "MHA_TUNE_VARIANT="

/* Times forced (after FORCE: "matmul=X," and/or "attention=Y") against
 * base in paired rounds, after one forward whose output must agree with
 * the default's; says the verdict on stderr (label after the setting)
 * and adds it to into under key. */
static void measure(search *s, tune_run *r, const char *base,
                    const char *forced, const char *label, cJSON *into,
                    const char *key, tune_verdict *v)
{
    char text[96];
    memset(v, 0, sizeof *v);
    if (warm(r, forced, r->out) == 0 && agrees(r)) {
        paired(r, s->o->repeat, s->o->rounds, s->deadline, base, forced, v);
        tune_verdict_text(v, text, sizeof text);
    } else {
        snprintf(text, sizeof text, "fails, or disagrees with the default");
    }
    fprintf(stderr, "mha-tune:   %s%s: %s\n", forced + strlen(FORCE), label,
            text);
    cJSON_AddItemToObject(into, key, verdict_json(v));
}

/* Times each of kind's variants against the default of that kind (the
 * other part fixed: "matmul=X," or "") in paired rounds, reporting each;
 * the best into res. The best of many is partly the luckiest, so a pick
 * must win again in a second, independent set of rounds (res->confirm);
 * then its name goes into best. The sweep's verdict stays the evidence. */
static void sweep(search *s, tune_run *r, mha_device *dev, const char *kind,
                  const char *fixed, char *best, kind_result *res)
{
    const char *names[MHA_MAX_VARIANTS];
    char base[128], cand[128];
    int n = 0;
    snprintf(base, sizeof base, FORCE "%s%s=default", fixed, kind);
    memset(res, 0, sizeof *res);
    mha_device_variants(dev, kind, names, MHA_MAX_VARIANTS, &n);
    for (int i = 0; i < n && i < MHA_MAX_VARIANTS && now_s() <= s->deadline;
         i++) {
        tune_verdict v;
        snprintf(cand, sizeof cand, FORCE "%s%s=%s", fixed, kind, names[i]);
        measure(s, r, base, cand, "", s->tried, cand + strlen(FORCE), &v);
        if (v.ratio > 0 && (!res->name[0] || better(&v, &res->v))) {
            res->v = v;
            snprintf(res->name, sizeof res->name, "%s", names[i]);
        }
    }
    if (!res->v.picked)
        return;
    snprintf(cand, sizeof cand, FORCE "%s%s=%s", fixed, kind, res->name);
    measure(s, r, base, cand, " (confirming)",
            cJSON_GetObjectItemCaseSensitive(s->tried, cand + strlen(FORCE)),
            "confirmed", &res->confirm);
    res->confirming = 1;
    res->picked = res->confirm.picked;
    if (res->picked)
        snprintf(best, 32, "%s", res->name);
}

/* Tunes case c on dev into entry e (shape, picks, times, evidence) and
 * res (per kind). NULL, or why there is nothing to record: the default
 * does not run, no matmul variant ran and agreed, or the budget ran out
 * before every round of the case (a confirmation cut short included) had
 * run, so a later run measures it again instead of skipping it. */
static const char *tune_case(search *s, mha_device *dev, const bench_case *c,
                             mha_tune_entry *e, kind_result res[2])
{
    const char *why = NULL;
    bench_case_data d;
    tune_run r;
    memset(res, 0, 2 * sizeof *res);
    if (bench_case_data_make(c, &d))
        return "out of host memory for its data";
    snprintf(e->matmul, sizeof e->matmul, "default");
    snprintf(e->attention, sizeof e->attention, "default");
    setenv("MHA_TUNE", "off", 1); /* the unforced part: the default */
    if (run_make(dev, c, &d, &r) == MHA_OK &&
        warm(&r, "MHA_TUNE_VARIANT=matmul=default", r.ref) == 0) {
        sweep(s, &r, dev, "matmul", "", e->matmul, &res[0]);
        char fixed[64];
        snprintf(fixed, sizeof fixed, "matmul=%s,", e->matmul);
        sweep(s, &r, dev, "attention", fixed, e->attention, &res[1]);
        why = now_s() > s->deadline ? "the budget ran out during its rounds"
              : !res[0].name[0]     ? "no matmul variant ran and agreed "
                                      "with the default"
                                    : NULL;
    } else {
        why = mha_context_errmsg(s->ctx);
    }
    unsetenv("MHA_TUNE");
    run_free(&r);
    bench_case_data_free(&d);
    e->default_ms = res[0].v.base_ms;
    e->ms = res[1].picked   ? res[1].v.cand_ms
            : res[0].picked ? res[0].v.cand_ms
                            : e->default_ms;
    e->matmul_ratio = res[0].v.ratio;
    e->matmul_spread = res[0].v.spread;
    e->attention_ratio = res[1].v.ratio;
    e->attention_spread = res[1].v.spread;
    return why;
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

/* A kind_text() line's room: the longest words, a name cut at 31
 * characters and two 95-character verdicts fit with margin, so gcc -O2's
 * truncation check (the README's Release quick start) stays quiet. */
#define KIND_TEXT 320

/* A kind's outcome in words: "picked NAME: 1.31x, beyond noise 5% (won
 * 5/5); confirmed 1.25x, beyond noise 6% (won 5/5)", "kept default: best
 * candidate NAME 1.03x, within noise 6% (won 3/5)", or, for a sweep pick
 * the confirming rounds did not repeat, "kept default: best candidate
 * NAME 1.09x, beyond noise 5% (won 5/5); not confirmed: 0.98x, ...". */
static void kind_text(const kind_result *k, char *out, size_t size)
{
    char v[96], cv[96];
    tune_verdict_text(&k->v, v, sizeof v);
    tune_verdict_text(&k->confirm, cv, sizeof cv);
    if (!k->name[0])
        snprintf(out, size, "kept default: no candidate measured");
    else if (k->picked)
        snprintf(out, size, "picked %.31s: %s; confirmed %s", k->name, v, cv);
    else if (k->confirming)
        snprintf(out, size,
                 "kept default: best candidate %.31s %s; not confirmed: %s",
                 k->name, v, cv);
    else
        snprintf(out, size, "kept default: best candidate %.31s %s", k->name, v);
}

/* The report of one case: its entry, and for a measured one (res) each
 * kind's outcome and every candidate's verdict (tried, taken over). */
static cJSON *entry_report(const mha_tune_entry *e, const char *status,
                           cJSON *tried, const kind_result *res)
{
    static const char *const kinds[2] = {"matmul", "attention"};
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "backend", e->backend);
    cJSON_AddStringToObject(o, "device", e->device);
    cJSON_AddStringToObject(o, "shape", e->shape);
    cJSON_AddStringToObject(o, "status", status);
    cJSON_AddStringToObject(o, "matmul", e->matmul);
    cJSON_AddStringToObject(o, "attention", e->attention);
    cJSON_AddNumberToObject(o, "ms", e->ms);
    cJSON_AddNumberToObject(o, "default_ms", e->default_ms);
    cJSON_AddNumberToObject(o, "matmul_ratio", e->matmul_ratio);
    cJSON_AddNumberToObject(o, "matmul_spread", e->matmul_spread);
    cJSON_AddNumberToObject(o, "attention_ratio", e->attention_ratio);
    cJSON_AddNumberToObject(o, "attention_spread", e->attention_spread);
    for (int k = 0; res && k < 2; k++) {
        char text[KIND_TEXT], key[32];
        kind_text(&res[k], text, sizeof text);
        snprintf(key, sizeof key, "%s_verdict", kinds[k]);
        cJSON_AddStringToObject(o, key, text);
    }
    cJSON_AddItemToObject(o, "tried", tried ? tried : cJSON_CreateObject());
    return o;
}

/* --compare: the case's forward under MHA_TUNE=off and =db in paired
 * rounds; prints the median of each and decide.c's verdict on the pick. */
static void compare_case(mha_device *dev, const tune_opts *o,
                         const bench_case *c)
{
    bench_case_data d;
    tune_run r;
    tune_verdict v = {0};
    if (bench_case_data_make(c, &d))
        return;
    /* db first: the layer plans its call once, and only a plan made
     * outside MHA_TUNE=off holds the database's pick (off then ignores it) */
    if (run_make(dev, c, &d, &r) == MHA_OK &&
        warm(&r, "MHA_TUNE=db", r.out) == 0 &&
        warm(&r, "MHA_TUNE=off", r.ref) == 0)
        paired(&r, o->repeat, o->compare, HUGE_VAL, "MHA_TUNE=off",
               "MHA_TUNE=db", &v);
    mha_tune_entry e;
    entry_key(dev, c, &e);
    if (v.ratio > 0) {
        char text[96];
        tune_verdict_text(&v, text, sizeof text);
        printf("%-8s %-26s default %10.3f ms  tuned %10.3f ms  %s\n",
               e.backend, e.shape, v.base_ms, v.cand_ms, text);
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
        kind_result res[2];
        entry_key(dev, c, &e);
        const mha_tune_entry *had = mha_tune_db_find(db, e.backend, e.device,
                                                     e.driver, e.shape);
        if (had && !s->o->force) {
            fprintf(stderr, "mha-tune: %s %s: in the database, skipped\n",
                    e.backend, e.shape);
            cJSON_AddItemToArray(report,
                                 entry_report(had, "skipped", NULL, NULL));
            continue;
        }
        fprintf(stderr, "mha-tune: %s %s: each variant against the default, "
                        "%d paired rounds\n",
                e.backend, e.shape, s->o->rounds);
        s->tried = cJSON_CreateObject();
        const char *why = now_s() > s->deadline ? "over budget"
                                                : tune_case(s, dev, c, &e, res);
        if (why) {
            fprintf(stderr, "mha-tune: %s %s: %s, not recorded\n", e.backend,
                    e.shape, why);
            cJSON_Delete(s->tried);
            continue;
        }
        for (int k = 0; k < 2; k++) {
            char text[KIND_TEXT];
            kind_text(&res[k], text, sizeof text);
            fprintf(stderr, "mha-tune: %s %s: %s: %s\n", e.backend, e.shape,
                    k ? "attention" : "matmul", text);
        }
        fprintf(stderr, "mha-tune: %s %s: matmul %s, attention %s: %.3f ms "
                        "(default %.3f ms)\n",
                e.backend, e.shape, e.matmul, e.attention, e.ms, e.default_ms);
        cJSON_AddItemToArray(report,
                             entry_report(&e, "measured", s->tried, res));
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
    search s = {&o, ctx, now_s() + o.budget, NULL};
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
