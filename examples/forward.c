/* forward.c: the smallest complete use of libmha. Builds a self-attention
 * layer (E=64, 4 heads) with PyTorch-layout weights, runs a causal forward
 * on the default device (MHA_DEVICE, else the best one), runs the same on
 * the CPU backend's scalar kernels (the reference path) and prints how far
 * apart they are. Exit status 0 when they agree to 1e-4. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mha.h"

enum { E = 64, H = 4, L = 32, N = 2 };

/* Deterministic pseudo-random values in [-scale, scale). */
static void fill(float *x, size_t n, unsigned seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = scale * ((float)(seed >> 8) / 8388608.0f - 1.0f);
    }
}

static int check(mha_context *ctx, mha_status st, const char *what)
{
    if (st == MHA_OK)
        return 0;
    fprintf(stderr, "%s failed: %s: %s\n", what, mha_status_str(st),
            mha_context_errmsg(ctx));
    return 1;
}

/* Runs the forward on the device named by spec (NULL: the default). */
static int run(mha_context *ctx, const char *spec, const char *isa,
               const float *x, float *out, char *name, size_t name_size)
{
    static float in_proj[3 * E * E], in_bias[3 * E], out_proj[E * E],
        out_bias[E];
    fill(in_proj, 3 * E * E, 1, 0.2f);
    fill(in_bias, 3 * E, 2, 0.1f);
    fill(out_proj, E * E, 3, 0.2f);
    fill(out_bias, E, 4, 0.1f);
    const int64_t w_in[2] = {3 * E, E}, b_in[1] = {3 * E};
    const int64_t w_out[2] = {E, E}, b_out[1] = {E};

    mha_device_options opts;
    mha_device_options_init(&opts);
    opts.cpu_isa = isa;
    mha_device *dev = NULL;
    mha_layer *layer = NULL;
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, H);
    int failed = check(ctx, mha_device_open(ctx, spec, &opts, &dev), "open") ||
                 check(ctx, mha_layer_create(dev, &cfg, &layer), "layer") ||
                 check(ctx, mha_layer_set_weight(layer, "in_proj_weight",
                                                 in_proj, 2, w_in), "weight") ||
                 check(ctx, mha_layer_set_weight(layer, "in_proj_bias",
                                                 in_bias, 1, b_in), "weight") ||
                 check(ctx, mha_layer_set_weight(layer, "out_proj.weight",
                                                 out_proj, 2, w_out), "weight") ||
                 check(ctx, mha_layer_set_weight(layer, "out_proj.bias",
                                                 out_bias, 1, b_out), "weight");
    if (!failed) {
        mha_device_info info;
        mha_device_info_of(dev, &info);
        snprintf(name, name_size, "%s:%d (%s)", info.backend,
                 info.backend_index, info.name);
        /* self-attention: query, key and value are the same (L, N, E) */
        mha_host_array xa = {x, MHA_F32, 3, {L, N, E, 0}};
        mha_host_forward_args args;
        mha_host_forward_args_init(&args);
        args.query = args.key = args.value = xa;
        args.is_causal = 1;
        args.output = out;
        args.output_count = (size_t)L * N * E;
        failed = check(ctx, mha_layer_forward_host(layer, &args), "forward");
    }
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    return failed;
}

int main(void)
{
    static float x[L * N * E], got[L * N * E], ref[L * N * E];
    char dev_name[256] = "", ref_name[256] = "";
    mha_context *ctx;
    if (mha_context_create(NULL, &ctx) != MHA_OK) {
        fprintf(stderr, "cannot create a libmha context\n");
        return 1;
    }
    fill(x, sizeof x / sizeof *x, 5, 1.0f);
    int failed = run(ctx, NULL, NULL, x, got, dev_name, sizeof dev_name) ||
                 run(ctx, "cpu", "scalar", x, ref, ref_name, sizeof ref_name);
    mha_context_destroy(ctx);
    if (failed)
        return 1;
    double max_err = 0;
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) {
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= max_err)) /* also catches NaN */
            max_err = e;
    }
    printf("libmha %s example: causal self-attention E=%d H=%d L=%d N=%d\n",
           mha_version(), E, H, L, N);
    printf("device:    %s\nreference: %s scalar kernels\n", dev_name,
           ref_name);
    printf("output[0][0][0..3] = %.6f %.6f %.6f %.6f\n", got[0], got[1],
           got[2], got[3]);
    printf("max |device - reference| = %.3g: %s\n", max_err,
           max_err <= 1e-4 ? "agree" : "DISAGREE");
    return max_err <= 1e-4 ? 0 : 1;
}
