/* device_run.c: one case on one libmha device for mha-bench: the first
 * call checked against the reference, warm-up, then forwards timed on
 * device-resident tensors, with the device's peak memory. Shared by the
 * table of cases (mha-bench.c) and the targets (targets.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "peers.h"

/* One timed forward on device tensors, for bench_time_runs. */
typedef struct layer_run {
    mha_layer *layer;
    const mha_forward_args *args;
} layer_run;

static int layer_once(void *arg)
{
    layer_run *run = arg;
    return (int)mha_layer_forward(run->layer, run->args);
}

double bench_peak_rss_mib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

static void set_error(bench_result *r, const char *status, mha_context *ctx,
                      const char *what, mha_status st)
{
    snprintf(r->status, sizeof r->status, "%s", status);
    snprintf(r->note, sizeof r->note, "%s: %s%s%s", what, mha_status_str(st),
             mha_context_errmsg(ctx)[0] ? ": " : "", mha_context_errmsg(ctx));
}

static mha_status make_tensor(mha_device *dev, int64_t a, int64_t b,
                              int64_t c, const float *src, mha_tensor **out)
{
    int64_t shape[3] = {a, b, c};
    mha_status st = mha_tensor_create(dev, MHA_F32, 3, shape, out);
    if (st == MHA_OK && src)
        st = mha_tensor_upload(*out, src, (size_t)(a * b * c) * sizeof(float));
    return st;
}

/* The first call (layer build, upload, pipeline/kernel build, forward,
 * download), timed into r->first_ms and checked against d->ref. Returns 0,
 * or -1 with r's status set when the forward failed. */
static int check_first_call(mha_context *ctx, mha_device *dev,
                            const bench_case *c, const bench_case_data *d,
                            bench_result *r)
{
    float *out = malloc(d->nq * sizeof(float));
    if (!out) {
        snprintf(r->status, sizeof r->status, "error");
        snprintf(r->note, sizeof r->note, "out of host memory");
        return -1;
    }
    double t0 = bench_now();
    mha_status st = bench_forward_host(dev, c, c->dtype, d, out);
    r->first_ms = 1e3 * (bench_now() - t0);
    if (st != MHA_OK) {
        set_error(r, st == MHA_UNSUPPORTED ? "skip" : "error", ctx,
                  "forward", st);
        free(out);
        return -1;
    }
    bench_record_check(r, bench_compare_output(out, d->ref, d->nq, c->dtype));
    free(out);
    return 0;
}

/* Times the case on one device into r: first call (layer build, upload,
 * pipeline/kernel build, forward, download) and check unless d->ref is
 * NULL, warm-up, timed loop on device-resident tensors. */
static void run_device_case_timed(mha_context *ctx, mha_device *dev,
                                  const bench_options *o,
                                  const bench_case *c,
                                  const bench_case_data *d, bench_result *r)
{
    mha_device_info info;
    mha_device_info_of(dev, &info);
    if (c->dtype == MHA_F16 && !(info.features & MHA_FEATURE_FP16_STORAGE)) {
        snprintf(r->status, sizeof r->status, "skip");
        snprintf(r->note, sizeof r->note, "no fp16 storage");
        return;
    }
    if (d->ref && check_first_call(ctx, dev, c, d, r))
        return;
    if (!d->ref)
        snprintf(r->status, sizeof r->status, "ok");
    mha_status st;
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, c->embed_dim, c->heads);
    cfg.kdim = c->kdim;
    cfg.vdim = c->vdim;
    cfg.dtype = c->dtype;
    mha_layer *layer = NULL;
    mha_tensor *q = NULL, *k = NULL, *v = NULL, *y = NULL;
    if ((st = mha_layer_create(dev, &cfg, &layer)) ||
        (st = bench_set_weights(layer, c, d)) ||
        (st = make_tensor(dev, c->tgt_len, c->batch, c->embed_dim, d->q, &q)) ||
        (!c->self_attn &&
         (st = make_tensor(dev, c->src_len, c->batch, c->kdim, d->k, &k))) ||
        (!c->self_attn &&
         (st = make_tensor(dev, c->src_len, c->batch, c->vdim, d->v, &v))) ||
        (st = make_tensor(dev, c->tgt_len, c->batch, c->embed_dim, NULL, &y))) {
        set_error(r, "error", ctx, "setup", st);
        goto done;
    }
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = q;
    a.key = c->self_attn ? q : k; /* self-attention: one tensor */
    a.value = c->self_attn ? q : v;
    a.output = y;
    a.is_causal = c->causal;
    for (int i = 0; i < o->warmup; i++)
        if ((st = mha_layer_forward(layer, &a))) {
            set_error(r, "error", ctx, "warm-up", st);
            goto done;
        }
    layer_run run = {layer, &a};
    int rc = bench_time_runs(o, layer_once, &run, r);
    if (rc > 0) {
        set_error(r, "error", ctx, "forward", (mha_status)rc);
        goto done;
    }
    if (rc < 0) {
        snprintf(r->status, sizeof r->status, "error");
        snprintf(r->note, sizeof r->note, "out of host memory");
        goto done;
    }
    if (r->median_ms > 0) {
        r->gflops = bench_flops(c) / (r->median_ms * 1e6);
        r->gbps = bench_bytes(c) / (r->median_ms * 1e6);
    }
    if (o->profile)
        bench_profile_forward(o, dev, layer, &a, r);
done:
    mha_tensor_destroy(q);
    mha_tensor_destroy(k);
    mha_tensor_destroy(v);
    mha_tensor_destroy(y);
    mha_layer_destroy(layer);
}

/* The case with the peak of libmha's device memory during it (layer
 * weights, tensors, arena, staging). */
void bench_device_case(mha_context *ctx, mha_device *dev,
                       const bench_options *o, const bench_case *c,
                       const bench_case_data *d, bench_result *r)
{
    uint64_t peak = 0;
    mha_device_reset_peak_memory(dev);
    run_device_case_timed(ctx, dev, o, c, d, r);
    if (mha_device_memory_usage(dev, NULL, &peak) == MHA_OK)
        r->device_mem_mib = (double)peak / (1024.0 * 1024.0);
}

