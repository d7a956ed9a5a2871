/* profile.c: mha-bench --profile: forwards run with the device's profile on
 * (mha_device_profile_*: GPU timestamps on Vulkan and OpenCL, the host
 * clock on the CPU backend), so that kernel time and the host's wall time
 * (which adds submission, waiting and the driver's overhead) are reported
 * apart, and each graph node (projections, attention, output projection)
 * gets its time; plus the FLOPs a causal case actually needs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench.h"

double bench_flops_needed(const bench_case *c)
{
    if (c->decoder || !c->causal)
        return bench_flops(c);
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len;
    /* sum_{i<L} min(i + 1, S): a triangle of L rows when L <= S, else a
     * triangle of S rows plus L - S full rows */
    double pairs = l <= s ? l * (l + 1) / 2 : s * (s + 1) / 2 + (l - s) * s;
    return bench_flops(c) - (double)c->batch * 4 * e * (l * s - pairs);
}

/* The op's name, with projections named for their side of the attention
 * (the graph runs the input projections, then the attention, then the
 * output projection); a lone input projection is self-attention's one
 * product over the packed in_proj_weight, making Q, K and V. */
static void node_label(char *out, size_t n, const char *op, int seen_attn,
                       int in_projections)
{
    if (!strcmp(op, "projection"))
        snprintf(out, n, "%s",
                 seen_attn             ? "out_projection"
                 : in_projections == 1 ? "qkv_projection"
                                       : "in_projection");
    else
        snprintf(out, n, "%s", op);
}

static int is_attention_op(const char *op)
{
    return !strcmp(op, "attention") || !strcmp(op, "scores");
}

/* Projections among the first count entries before the attention. */
static int in_projection_count(const mha_profile_entry *e, int count)
{
    int n = 0;
    for (int i = 0; i < count && !is_attention_op(e[i].op); i++)
        n += !strcmp(e[i].op, "projection");
    return n;
}

/* One profiled forward into slot (the op labels and times); its wall time
 * and kernel sum. Returns 0, or -1 when it failed or recorded nothing. */
static int profile_once(mha_device *dev, mha_layer *layer,
                        const mha_forward_args *a, bench_result *slot)
{
    mha_profile_entry e[BENCH_PROFILE_NODES];
    int count = 0;
    if (mha_device_profile_start(dev) != MHA_OK)
        return -1;
    double t0 = bench_now();
    mha_status st = mha_layer_forward(layer, a);
    slot->prof_wall_ms = 1e3 * (bench_now() - t0);
    if (st == MHA_OK)
        st = mha_device_profile_read(dev, e, BENCH_PROFILE_NODES, &count);
    mha_device_profile_stop(dev);
    if (st != MHA_OK || count <= 0 || count > BENCH_PROFILE_NODES)
        return -1;
    int seen_attn = 0, in_proj = in_projection_count(e, count);
    slot->prof_kernel_ms = 0;
    for (int i = 0; i < count; i++) {
        seen_attn |= is_attention_op(e[i].op);
        node_label(slot->prof[i].op, sizeof slot->prof[i].op, e[i].op,
                   seen_attn && !is_attention_op(e[i].op), in_proj);
        slot->prof[i].ms = e[i].ms;
        snprintf(slot->prof[i].variant, sizeof slot->prof[i].variant, "%s",
                 e[i].variant ? e[i].variant : "-");
        slot->prof_kernel_ms += e[i].ms;
    }
    slot->nprof = count;
    slot->prof_device_clock = e[0].device_clock;
    return 0;
}

static int cmp_kernel(const void *a, const void *b)
{
    double x = ((const bench_result *)a)->prof_kernel_ms;
    double y = ((const bench_result *)b)->prof_kernel_ms;
    return (x > y) - (x < y);
}

void bench_profile_forward(const bench_options *o, mha_device *dev,
                           mha_layer *layer, const mha_forward_args *a,
                           bench_result *r)
{
    int n = o->repeat < 3 ? 3 : o->repeat > 50 ? 50 : o->repeat, got = 0;
    bench_result *runs = calloc((size_t)n, sizeof *runs);
    if (!runs)
        return;
    for (int i = 0; i < n; i++)
        got += profile_once(dev, layer, a, &runs[got]) == 0;
    if (got > 0) {
        qsort(runs, (size_t)got, sizeof *runs, cmp_kernel);
        const bench_result *m = &runs[got / 2];
        r->nprof = m->nprof;
        r->prof_device_clock = m->prof_device_clock;
        r->prof_wall_ms = m->prof_wall_ms;
        r->prof_kernel_ms = m->prof_kernel_ms;
        memcpy(r->prof, m->prof, sizeof r->prof);
    }
    free(runs);
}

static void print_causal(FILE *out, const bench_report *r)
{
    int header = 0;
    for (int i = 0; i < r->nresults; i++) {
        const bench_result *x = &r->results[i];
        if (!x->c.causal || x->c.decoder || x->median_ms <= 0)
            continue;
        if (!header++)
            fprintf(out, "\ncausal rows: GFLOP/s over all FLOPs and over "
                         "the FLOPs needed (attention pairs L(L+1)/2 of "
                         "LS, see --help)\n");
        fprintf(out, "  %-26s %-10s %9.2f all  %9.2f needed\n", x->c.name,
                x->device, x->gflops,
                bench_flops_needed(&x->c) / (x->median_ms * 1e6));
    }
}

static void print_profile(FILE *out, const bench_result *x)
{
    fprintf(out, "\nprofile %s on %s (%s clock): wall %.3f ms, kernels "
                 "%.3f ms, overhead %.3f ms\n",
            x->c.name, x->device, x->prof_device_clock ? "device" : "host",
            x->prof_wall_ms, x->prof_kernel_ms,
            x->prof_wall_ms - x->prof_kernel_ms);
    fprintf(out, "  %3s %-16s %10s %6s  %s\n", "#", "node", "ms", "%",
            "variant");
    for (int i = 0; i < x->nprof; i++)
        fprintf(out, "  %3d %-16s %10.3f %6.1f  %s\n", i, x->prof[i].op,
                x->prof[i].ms,
                x->prof_kernel_ms > 0
                    ? 100.0 * x->prof[i].ms / x->prof_kernel_ms
                    : 0.0,
                x->prof[i].variant);
}

void bench_print_extras(FILE *out, const bench_report *r)
{
    print_causal(out, r);
    for (int i = 0; i < r->nresults; i++)
        if (r->results[i].nprof > 0)
            print_profile(out, &r->results[i]);
}

void bench_result_json_extras(cJSON *o, const bench_result *x)
{
    if (x->c.causal && !x->c.decoder && x->median_ms > 0)
        cJSON_AddNumberToObject(o, "gflops_needed",
                                bench_flops_needed(&x->c) /
                                    (x->median_ms * 1e6));
    if (x->nprof <= 0)
        return;
    cJSON *p = cJSON_AddObjectToObject(o, "profile");
    cJSON_AddStringToObject(p, "clock",
                            x->prof_device_clock ? "device" : "host");
    cJSON_AddNumberToObject(p, "wall_ms", x->prof_wall_ms);
    cJSON_AddNumberToObject(p, "kernel_ms", x->prof_kernel_ms);
    cJSON *nodes = cJSON_AddArrayToObject(p, "nodes");
    for (int i = 0; i < x->nprof; i++) {
        cJSON *n = cJSON_CreateObject();
        cJSON_AddStringToObject(n, "node", x->prof[i].op);
        cJSON_AddStringToObject(n, "variant", x->prof[i].variant);
        cJSON_AddNumberToObject(n, "ms", isfinite(x->prof[i].ms)
                                             ? x->prof[i].ms
                                             : 0.0);
        cJSON_AddItemToArray(nodes, n);
    }
}
