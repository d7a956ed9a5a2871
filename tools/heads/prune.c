/* prune.c: mha-heads prune: for each device, ranks the heads by a
 * criterion (gradient or ablation importance, confidence, or a seeded
 * random order as the control), prunes the k least important from a fresh
 * copy of the layer for each k asked, and measures what Michel et al. and
 * the practice of head pruning ask for: the forward's median latency and
 * its ratio to the unpruned layer's (timed alternately in the same run, so
 * a loaded machine slows both alike), the layer's device memory (weights
 * and scratch, mha_device_memory_usage), its weight bytes, and the
 * relative change of the output. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "heads.h"

typedef struct prune_row {
    double latency_ms, output_change;
    double ratio; /* latency over the unpruned layer's, timed alternately
                     in the same run */
    uint64_t device_bytes, weight_bytes;
} prune_row;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Importance of each head by criterion (lower is pruned first); -1 for an
 * unknown criterion or gradients missing. */
static int importance(const char *crit, const mha_head_stat *s, int64_t H,
                      uint64_t seed, double *out)
{
    for (int64_t h = 0; h < H; h++) {
        if (!strcmp(crit, "gradient"))
            out[h] = s[h].gradient;
        else if (!strcmp(crit, "ablation"))
            out[h] = s[h].ablation;
        else if (!strcmp(crit, "confidence"))
            out[h] = s[h].confidence;
        else if (!strcmp(crit, "random")) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            out[h] = (double)(seed >> 11);
        } else
            return -1;
    }
    return !strcmp(crit, "gradient") && H && !s[0].gradient_items ? -1 : 0;
}

/* Heads in ascending importance (ties by index). */
static void rank_heads(const double *imp, int64_t H, int64_t *order)
{
    for (int64_t i = 0; i < H; i++)
        order[i] = i;
    for (int64_t i = 1; i < H; i++)
        for (int64_t j = i; j > 0 && imp[order[j]] < imp[order[j - 1]]; j--) {
            int64_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
}

static size_t output_floats(const heads_options *o, const heads_input *in,
                            int count)
{
    size_t n = 0;
    for (int i = 0; i < count; i++)
        n += in[i].query.count /
             (size_t)in[i].query.shape[in[i].query.ndim - 1] *
             (size_t)o->cfg.embed_dim;
    return n;
}

static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

/* Times the first input's forward on base and on layer alternately (2
 * untimed rounds, then reps), layer last so c's output is its result. */
static mha_status time_alternately(mha_layer *base, mha_layer *layer,
                                   heads_call *c, int reps, prune_row *row)
{
    double tb[1000], tl[1000];
    mha_status st = MHA_OK;
    for (int r = 0; r < reps + 2 && st == MHA_OK; r++) {
        double t0 = now_ms();
        st = mha_layer_forward(base, &c->args);
        double t1 = now_ms();
        if (st == MHA_OK)
            st = mha_layer_forward(layer, &c->args);
        if (r >= 2) {
            tb[r - 2] = t1 - t0;
            tl[r - 2] = now_ms() - t1;
        }
    }
    if (st != MHA_OK) /* the times are incomplete: none is reported */
        return st;
    row->latency_ms = median(tl, reps);
    row->ratio = row->latency_ms / median(tb, reps);
    return st;
}

/* Runs layer on every input; ys receives the outputs in order (store), or
 * is compared against: output_change = ||Y - ys|| / ||ys||. The first
 * input's forward is timed against base's (see time_alternately). */
static mha_status measure(mha_device *dev, mha_layer *base, mha_layer *layer,
                          const heads_options *o, const heads_input *in,
                          int count, float *ys, int store, prune_row *row)
{
    double diff = 0.0, norm = 0.0;
    size_t off = 0;
    mha_status st = MHA_OK;
    int reps = o->repeat < 1 ? 1 : o->repeat > 1000 ? 1000 : o->repeat;
    for (int i = 0; i < count && st == MHA_OK; i++) {
        heads_call c;
        st = heads_call_make(dev, layer, o, &in[i], &c);
        if (st == MHA_OK) /* the layer's scratch now exists */
            st = mha_layer_forward(layer, &c.args);
        if (i == 0 && st == MHA_OK)
            st = mha_device_memory_usage(dev, &row->device_bytes, NULL);
        if (i == 0 && st == MHA_OK)
            st = time_alternately(base, layer, &c, reps, row);
        size_t n = output_floats(o, &in[i], 1);
        float *y = malloc(n * sizeof *y);
        if (st == MHA_OK && !y)
            st = MHA_OUT_OF_MEMORY;
        if (st == MHA_OK)
            st = mha_tensor_download(c.out, y, n * sizeof *y);
        heads_fail(o, st);
        for (size_t k = 0; st == MHA_OK && k < n; k++) {
            if (store)
                ys[off + k] = y[k];
            diff += ((double)y[k] - ys[off + k]) * ((double)y[k] - ys[off + k]);
            norm += (double)ys[off + k] * ys[off + k];
        }
        off += n;
        free(y);
        heads_call_free(&c);
    }
    row->output_change = norm > 0.0 ? sqrt(diff / norm) : 0.0;
    return st;
}

/* One row: a fresh layer with heads[0..k) pruned, measured against base
 * (the unpruned layer). */
static mha_status prune_row_run(mha_device *dev, mha_layer *base,
                                const heads_options *o,
                                const heads_input *in, int count,
                                const int64_t *heads, int64_t k, float *ys,
                                prune_row *row)
{
    uint64_t before = 0, after = 0;
    mha_layer *layer = NULL;
    mha_status st = mha_device_memory_usage(dev, &before, NULL);
    if (st == MHA_OK)
        st = heads_layer_make(dev, o, &layer);
    if (st == MHA_OK && k > 0)
        st = heads_fail(o, mha_layer_prune_heads(layer, heads, k));
    if (st == MHA_OK)
        st = mha_device_memory_usage(dev, &after, NULL);
    row->weight_bytes = after - before;
    if (st == MHA_OK)
        st = measure(dev, base, layer, o, in, count, ys, k == 0, row);
    row->device_bytes -= before;
    mha_layer_destroy(layer);
    return st;
}

static cJSON *row_json(const char *dev, const char *crit, const int64_t *heads,
                       int64_t k, const prune_row *r)
{
    cJSON *o = cJSON_CreateObject(), *pr = cJSON_CreateArray();
    for (int64_t i = 0; i < k; i++)
        cJSON_AddItemToArray(pr, cJSON_CreateNumber((double)heads[i]));
    cJSON_AddStringToObject(o, "device", dev);
    cJSON_AddStringToObject(o, "criterion", crit);
    cJSON_AddNumberToObject(o, "k", (double)k);
    cJSON_AddItemToObject(o, "pruned", pr);
    cJSON_AddNumberToObject(o, "latency_ms", r->latency_ms);
    cJSON_AddNumberToObject(o, "latency_ratio", r->ratio);
    cJSON_AddNumberToObject(o, "device_bytes", (double)r->device_bytes);
    cJSON_AddNumberToObject(o, "weight_bytes", (double)r->weight_bytes);
    cJSON_AddNumberToObject(o, "output_change", r->output_change);
    return o;
}

static void print_row(const char *dev, const char *crit, const int64_t *heads,
                      int64_t k, const prune_row *r)
{
    char list[128] = "-";
    size_t used = 0;
    for (int64_t i = 0; i < k && used < sizeof list - 8; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%lld",
                                 i ? "," : "", (long long)heads[i]);
    printf("%-14s %-10s %3lld %-16s %10.3f %7.2f %12.1f %12.1f %10.4g\n",
           dev, crit, (long long)k, list, r->latency_ms,
           r->ratio, (double)r->device_bytes / 1024.0,
           (double)r->weight_bytes / 1024.0, r->output_change);
}

/* The criteria of o->criterion (comma-separated) on one device. */
static int prune_device(mha_device *dev, const char *name,
                        const heads_options *o, const heads_input *in,
                        int count, cJSON *rows)
{
    int64_t H = o->cfg.num_heads, order[1024];
    mha_head_stat stats[1024];
    double imp[1024], *js = malloc((size_t)(2 * H * H) * sizeof *js);
    float *ys = malloc(output_floats(o, in, count) * sizeof *ys);
    mha_layer *layer = NULL;
    prune_row base;
    int rc = 1;
    mha_status st = js && ys && H <= 1024 ? heads_layer_make(dev, o, &layer)
                                         : MHA_OUT_OF_MEMORY;
    if (st == MHA_OK)
        st = heads_stats_run(dev, layer, o, in, count, stats, js, js + H * H);
    if (st == MHA_OK)
        st = prune_row_run(dev, layer, o, in, count, NULL, 0, ys, &base);
    if (st == MHA_OK) {
        print_row(name, "none", NULL, 0, &base);
        cJSON_AddItemToArray(rows, row_json(name, "none", NULL, 0, &base));
        rc = 0;
    }
    char crits[256];
    snprintf(crits, sizeof crits, "%s", o->criterion);
    for (char *c = strtok(crits, ","); c && !rc; c = strtok(NULL, ",")) {
        if (importance(c, stats, H, o->seed, imp)) {
            fprintf(stderr, "mha-heads prune: criterion '%s': expected "
                            "gradient (with --grad), ablation, confidence "
                            "or random\n", c);
            rc = 2;
            break;
        }
        rank_heads(imp, H, order);
        for (int i = 0; i < o->nks && !rc; i++) {
            prune_row r;
            int64_t k = o->ks[i];
            if (k < 1 || k >= H)
                continue;
            st = prune_row_run(dev, layer, o, in, count, order, k, ys, &r);
            if (st != MHA_OK)
                rc = 1;
            else {
                print_row(name, c, order, k, &r);
                cJSON_AddItemToArray(rows, row_json(name, c, order, k, &r));
            }
        }
    }
    mha_layer_destroy(layer);
    free(js);
    free(ys);
    return rc;
}

int heads_prune_run(mha_context *ctx, const heads_options *o,
                    const heads_input *in, int count, cJSON *root)
{
    cJSON *rows = cJSON_CreateArray();
    cJSON_AddItemToObject(root, "prune", rows);
    printf("%-14s %-10s %3s %-16s %10s %7s %12s %12s %10s\n", "device",
           "criterion", "k", "pruned", "latency_ms", "x_base", "device_KiB",
           "weight_KiB", "out_change");
    int rc = 0;
    for (int d = 0; d < (o->ndevices ? o->ndevices : 1) && !rc; d++) {
        const char *spec = o->ndevices ? o->devices[d] : NULL;
        mha_device *dev = NULL;
        if (mha_device_open(ctx, spec, NULL, &dev) != MHA_OK) {
            fprintf(stderr, "mha-heads prune: %s\n", mha_context_errmsg(ctx));
            return 1;
        }
        rc = prune_device(dev, spec ? spec : "default", o, in, count, rows);
        mha_device_destroy(dev);
    }
    return rc;
}
