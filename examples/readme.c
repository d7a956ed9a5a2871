/* readme.c: the README's API example, as a whole program: a causal
 * self-attention layer (E=8, 2 heads) whose weights come from arrays in
 * PyTorch's state_dict layout, run on the default device (MHA_DEVICE, else
 * the best ranked), with every status checked. */
#include <stdio.h>

#include <mha.h>

enum { E = 8, H = 2, L = 4, N = 1 };

/* Prints why a call failed; returns 1 when st is an error. */
static int failed(const mha_context *ctx, mha_status st, const char *call)
{
    if (st != MHA_OK)
        fprintf(stderr, "%s: %s: %s\n", call, mha_status_str(st),
                ctx ? mha_context_errmsg(ctx) : "");
    return st != MHA_OK;
}

int main(void)
{
    /* nn.MultiheadAttention(8, 2)'s state_dict, and x as (N, L, E); any
     * values will do (a real model's come from mha_layer_load_safetensors) */
    static float in_proj_weight[3 * E][E], in_proj_bias[3 * E];
    static float out_proj_weight[E][E], out_proj_bias[E];
    static float x[N][L][E], out[N][L][E];
    for (int i = 0; i < 3 * E; i++)
        for (int j = 0; j < E; j++)
            in_proj_weight[i][j] = 0.1f * (float)((i + 3 * j) % 7 - 3);
    for (int i = 0; i < E; i++)
        for (int j = 0; j < E; j++)
            out_proj_weight[i][j] = i == j ? 1.0f : 0.0f;
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            x[0][l][e] = (float)(l + 1) / (float)(e + 1);
    const int64_t w_in[2] = {3 * E, E}, b_in[1] = {3 * E};
    const int64_t w_out[2] = {E, E}, b_out[1] = {E};

    mha_context *ctx = NULL;
    mha_device *dev = NULL;
    mha_layer *layer = NULL;
    mha_layer_config cfg;
    if (failed(NULL, mha_context_create(NULL, &ctx), "mha_context_create") ||
        failed(ctx, mha_layer_config_init(&cfg, E, H), "mha_layer_config_init"))
        return 1;
    cfg.batch_first = 1;
    int bad =
        failed(ctx, mha_device_open(ctx, NULL, NULL, &dev), "mha_device_open") ||
        failed(ctx, mha_layer_create(dev, &cfg, &layer), "mha_layer_create") ||
        failed(ctx, mha_layer_set_weight(layer, "in_proj_weight",
                                         in_proj_weight[0], 2, w_in), "set") ||
        failed(ctx, mha_layer_set_weight(layer, "in_proj_bias",
                                         in_proj_bias, 1, b_in), "set") ||
        failed(ctx, mha_layer_set_weight(layer, "out_proj.weight",
                                         out_proj_weight[0], 2, w_out), "set") ||
        failed(ctx, mha_layer_set_weight(layer, "out_proj.bias",
                                         out_proj_bias, 1, b_out), "set");
    if (!bad) {
        mha_host_forward_args a;
        mha_host_forward_args_init(&a);
        a.query = a.key = a.value =
            (mha_host_array){x[0][0], MHA_F32, 3, {N, L, E, 0}};
        a.is_causal = 1;
        a.output = out[0][0];
        a.output_count = (size_t)N * L * E;
        bad = failed(ctx, mha_layer_forward_host(layer, &a), "forward");
    }
    if (!bad)
        printf("out[0][%d][0..3] = %.4f %.4f %.4f %.4f\n", L - 1,
               out[0][L - 1][0], out[0][L - 1][1], out[0][L - 1][2],
               out[0][L - 1][3]);
    mha_layer_destroy(layer); /* NULL does nothing */
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    return bad;
}
