/* backward.c: mha-bench --backward, the training benchmark: a training
 * forward plus mha_layer_backward (weight gradients and the query, key
 * and value gradients) per case and device, in GFLOP/s of
 * bench_backward_flops, beside OpenBLAS's sgemm rate and PyTorch
 * autograd's forward + backward (torch_peer.py --backward) measured in
 * the same run; the PyTorch peer runs first, alone, as for forwards. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "peers.h"

/* Everything one timed case holds on one device. */
typedef struct train_run {
    mha_layer *layer;
    mha_gradients *grads;
    mha_tensor *t[8]; /* q, k, v, out, dy, dq, dk, dv */
    mha_forward_args fa;
    mha_backward_args ba;
} train_run;

static int train_once(void *arg)
{
    train_run *r = arg;
    mha_status st = mha_layer_forward(r->layer, &r->fa);
    return st == MHA_OK ? (int)mha_layer_backward(r->layer, &r->ba) : (int)st;
}

static mha_status make_tensors(mha_device *dev, const bench_case *c,
                               const bench_case_data *d, train_run *r)
{
    const int64_t shapes[3][3] = {{c->tgt_len, c->batch, c->embed_dim},
                                  {c->src_len, c->batch, c->kdim},
                                  {c->src_len, c->batch, c->vdim}};
    const float *data[3] = {d->q, d->k, d->v};
    const size_t count[3] = {d->nq, d->nk, d->nv};
    mha_status st = MHA_OK;
    for (int i = 0; st == MHA_OK && i < 8; i++) {
        const int64_t *s = shapes[i < 3 ? i : i < 5 ? 0 : i - 5];
        st = mha_tensor_create(dev, MHA_F32, 3, s, &r->t[i]);
    }
    /* dY: the query's values, fixed data of the right shape */
    for (int i = 0; st == MHA_OK && i < 5; i++)
        if (i != 3)
            st = mha_tensor_upload(r->t[i], data[i < 3 ? i : 0],
                                   count[i < 3 ? i : 0] * sizeof(float));
    return st;
}

static void free_run(train_run *r)
{
    mha_gradients_destroy(r->grads);
    for (int i = 0; i < 8; i++)
        mha_tensor_destroy(r->t[i]);
    mha_layer_destroy(r->layer);
}

/* Builds c's layer and tensors on dev and times it into r. */
static void time_case(mha_context *ctx, mha_device *dev,
                      const bench_options *o, const bench_case *c,
                      const bench_case_data *d, bench_result *r)
{
    train_run run;
    memset(&run, 0, sizeof run);
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, c->embed_dim, c->heads);
    cfg.kdim = c->kdim;
    cfg.vdim = c->vdim;
    cfg.dtype = c->dtype;
    mha_status st = mha_layer_create(dev, &cfg, &run.layer);
    if (st == MHA_OK)
        st = bench_set_weights(run.layer, c, d);
    if (st == MHA_OK)
        st = make_tensors(dev, c, d, &run);
    if (st == MHA_OK)
        st = mha_gradients_create(run.layer, &run.grads);
    mha_forward_args_init(&run.fa);
    run.fa.query = run.t[0], run.fa.key = run.t[1], run.fa.value = run.t[2];
    run.fa.output = run.t[3];
    run.fa.is_causal = c->causal;
    run.fa.save_for_backward = 1;
    mha_backward_args_init(&run.ba);
    run.ba.grad_output = run.t[4];
    run.ba.grad_query = run.t[5], run.ba.grad_key = run.t[6];
    run.ba.grad_value = run.t[7];
    run.ba.grads = run.grads;
    double t0 = bench_now();
    if (st == MHA_OK)
        st = (mha_status)train_once(&run);
    r->first_ms = (bench_now() - t0) * 1e3;
    for (int i = 0; st == MHA_OK && i < o->warmup; i++)
        st = (mha_status)train_once(&run);
    if (st == MHA_OK && bench_time_runs(o, train_once, &run, r) != 0)
        st = MHA_DEVICE_ERROR;
    snprintf(r->status, sizeof r->status, "%s",
             st == MHA_OK ? "ok" : st == MHA_UNSUPPORTED ? "skip" : "error");
    if (st != MHA_OK)
        snprintf(r->note, sizeof r->note, "%.159s", mha_context_errmsg(ctx));
    else
        r->gflops = bench_backward_flops(c) / (r->median_ms * 1e6);
    free_run(&run);
}

static void print_row(FILE *out, const bench_result *r, double sgemm,
                      double torch_ms)
{
    fprintf(out, "%-18s %-10s %-6s", r->c.name, r->device, r->status);
    if (strcmp(r->status, "ok")) {
        fprintf(out, " %s\n", r->note);
        return;
    }
    fprintf(out, " %10.2f %9.1f", r->median_ms, r->gflops);
    if (sgemm > 0)
        fprintf(out, " %8.2fx", r->gflops / sgemm);
    else
        fprintf(out, " %9s", "-");
    if (torch_ms > 0)
        fprintf(out, " %9.2f %8.2fx\n", torch_ms, torch_ms / r->median_ms);
    else
        fprintf(out, " %9s %9s\n", "-", "-");
}

/* The devices o names (all when none), opened; their count. */
static int open_devices(mha_context *ctx, const bench_options *o,
                        mha_device **devs, char specs[][32])
{
    int n = 0, count = 0;
    mha_device_count(ctx, &count);
    for (int i = 0; i < (o->ndevices ? o->ndevices : count); i++) {
        mha_status st = o->ndevices
                            ? mha_device_open(ctx, o->devices[i], NULL,
                                              &devs[n])
                            : mha_device_open_index(ctx, i, NULL, &devs[n]);
        mha_device_info info;
        if (st != MHA_OK || mha_device_info_of(devs[n], &info) != MHA_OK) {
            fprintf(stderr, "mha-bench: %s\n", mha_context_errmsg(ctx));
            continue;
        }
        snprintf(specs[n++], 32, "%s:%d", info.backend, info.backend_index);
        if (n == BENCH_MAX_DEVICES)
            break;
    }
    return n;
}

int bench_backward_run(const bench_options *o, FILE *out)
{
    bench_peers peers;
    bench_peers_init(&peers, o); /* PyTorch first, alone */
    double sgemm = o->peers ? bench_openblas_sgemm_gflops(1024, o) : -1;
    mha_context *ctx = NULL;
    mha_context_options co;
    mha_context_options_init(&co);
    if (mha_context_create(&co, &ctx) != MHA_OK) {
        fprintf(stderr, "mha-bench: cannot create a libmha context\n");
        return BENCH_EXIT_FAIL;
    }
    mha_device *devs[BENCH_MAX_DEVICES];
    char specs[BENCH_MAX_DEVICES][32];
    int ndev = open_devices(ctx, o, devs, specs), rc = BENCH_EXIT_OK;
    fprintf(out, "training forward + backward; OpenBLAS sgemm 1024^3: ");
    fprintf(out, sgemm > 0 ? "%.1f GFLOP/s\n" : "n/a\n", sgemm);
    fprintf(out, "%-18s %-10s %-6s %10s %9s %9s %9s %9s\n", "case", "device",
            "status", "median ms", "GFLOP/s", "x sgemm", "torch ms",
            "vs torch");
    for (int ci = 0; ci < o->ncases; ci++) {
        const bench_case *c = &o->cases[ci];
        bench_case_data d;
        if (bench_case_data_make(c, &d)) {
            fprintf(stderr, "mha-bench: out of host memory\n");
            rc = BENCH_EXIT_FAIL;
            break;
        }
        fprintf(out, "# %s: E%lld H%lld B%lld L%lld S%lld%s, %.3g GFLOP "
                     "per forward + backward\n",
                c->name, (long long)c->embed_dim, (long long)c->heads,
                (long long)c->batch, (long long)c->tgt_len,
                (long long)c->src_len, c->causal ? " causal" : "",
                bench_backward_flops(c) / 1e9);
        for (int di = 0; di < ndev; di++) {
            bench_result r;
            memset(&r, 0, sizeof r);
            r.c = *c;
            snprintf(r.device, sizeof r.device, "%s", specs[di]);
            time_case(ctx, devs[di], o, c, &d, &r);
            print_row(out, &r, sgemm, peers.torch_median[ci]);
            if (!strcmp(r.status, "error"))
                rc = BENCH_EXIT_FAIL;
        }
        bench_case_data_free(&d);
    }
    if (o->peers && !peers.have_torch)
        fprintf(out, "no PyTorch row: %s\n", peers.torch_note);
    peers.enabled = 0;
    bench_peers_notes(&peers, stderr);
    for (int di = 0; di < ndev; di++)
        mha_device_destroy(devs[di]);
    mha_context_destroy(ctx);
    return rc;
}
