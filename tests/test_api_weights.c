/* test_api_weights.c: weights by PyTorch name: bad names and shapes, the
 * bias_k shapes accepted, and missing weights named by the forward. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

/* ---- weights ------------------------------------------------------------- */

typedef struct weight_case {
    const char *name;
    int cross;       /* the kdim 6 / vdim 10 layer, else kdim = vdim = E */
    int no_bias;
    const char *weight;
    int ndim;
    int64_t shape[5];
    mha_status want;
    const char *needle[3];
} weight_case;

static const weight_case weight_cases[] = {
    {"unknown name in_proj_weights", 0, 0, "in_proj_weights", 2, {24, 8},
     MHA_NOT_FOUND, {"in_proj_weights"}},
    {"unknown name out_proj.weight.", 0, 0, "out_proj.weight.", 2, {8, 8},
     MHA_NOT_FOUND, {"out_proj.weight."}},
    {"empty name", 0, 0, "", 1, {8}, MHA_NOT_FOUND, {"\"\""}},
    {"prefixed name", 0, 0, "self_attn.out_proj.bias", 1, {8}, MHA_NOT_FOUND,
     {"self_attn.out_proj.bias"}},
    {"q_proj_weight on a self layer", 0, 0, "q_proj_weight", 2, {8, 8},
     MHA_INVALID_ARGUMENT, {"q_proj_weight"}},
    {"in_proj_weight when kdim != E", 1, 0, "in_proj_weight", 2, {24, 8},
     MHA_INVALID_ARGUMENT, {"in_proj_weight", "kdim"}},
    {"bias_k without add_bias_kv", 0, 0, "bias_k", 3, {1, 1, 8},
     MHA_INVALID_ARGUMENT, {"bias_k"}},
    {"in_proj_bias with bias 0", 0, 1, "in_proj_bias", 1, {24},
     MHA_INVALID_ARGUMENT, {"in_proj_bias"}},
    {"out_proj.bias with bias 0", 0, 1, "out_proj.bias", 1, {8},
     MHA_INVALID_ARGUMENT, {"out_proj.bias"}},
    {"in_proj_weight (8, 8)", 0, 0, "in_proj_weight", 2, {8, 8},
     MHA_SHAPE_MISMATCH, {"in_proj_weight", "[8,8]", "[24,8]"}},
    {"in_proj_weight (8, 24) transposed", 0, 0, "in_proj_weight", 2, {8, 24},
     MHA_SHAPE_MISMATCH, {"[8,24]", "[24,8]"}},
    {"in_proj_weight (24, 8, 1)", 0, 0, "in_proj_weight", 3, {24, 8, 1},
     MHA_SHAPE_MISMATCH, {"[24,8,1]", "[24,8]"}},
    {"in_proj_weight ndim 0", 0, 0, "in_proj_weight", 0, {0},
     MHA_SHAPE_MISMATCH, {"in_proj_weight", "[24,8]"}},
    {"in_proj_weight ndim 5", 0, 0, "in_proj_weight", 5, {24, 8, 1, 1, 1},
     MHA_SHAPE_MISMATCH, {"in_proj_weight", "[24,8]"}},
    {"out_proj.bias (9)", 0, 0, "out_proj.bias", 1, {9}, MHA_SHAPE_MISMATCH,
     {"out_proj.bias", "[9]", "[8]"}},
    {"in_proj_bias (3, 8)", 0, 0, "in_proj_bias", 2, {3, 8},
     MHA_SHAPE_MISMATCH, {"[3,8]", "[24]"}},
    {"k_proj_weight (8, 8) for kdim 6", 1, 0, "k_proj_weight", 2, {8, 8},
     MHA_SHAPE_MISMATCH, {"k_proj_weight", "[8,8]", "[8,6]"}},
    {"v_proj_weight (8, 6) for vdim 10", 1, 0, "v_proj_weight", 2, {8, 6},
     MHA_SHAPE_MISMATCH, {"v_proj_weight", "[8,6]", "[8,10]"}},
    {"q_proj_weight negative dim", 1, 0, "q_proj_weight", 2, {-8, 8},
     MHA_SHAPE_MISMATCH, {"q_proj_weight", "[-8,8]", "[8,8]"}},
};

/* Runs the standard forward into out (count floats). */
static void forward_into(fx *f, float *out, size_t count)
{
    static io o;
    io_init(&o, f);
    cr_assert_eq(mha_layer_forward_host(f->layer, &o.a), MHA_OK, "%s",
                 mha_context_errmsg(f->ctx));
    memcpy(out, o.out, count * sizeof *out);
}

Test(api, bad_weight_names_and_shapes_table)
{
    static float data[3 * 64 * 64];
    fill(data, sizeof data / sizeof *data, 5);
    for (size_t i = 0; i < sizeof weight_cases / sizeof *weight_cases; i++) {
        const weight_case *c = &weight_cases[i];
        fx f;
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, 8, 2);
        cfg.kdim = c->cross ? 6 : 0;
        cfg.vdim = c->cross ? 10 : 0;
        cfg.bias = !c->no_bias;
        fx_init_cfg(&f, &cfg, 1);
        float before[CAP], after[CAP];
        forward_into(&f, before, L_ * N_ * 8);
        mha_status st = mha_layer_set_weight(f.layer, c->weight, data,
                                             c->ndim, c->shape);
        expect_error(f.ctx, c->name, st, c->want, c->needle, 3);
        forward_into(&f, after, L_ * N_ * 8);
        cr_expect_arr_eq(before, after, L_ * N_ * 8 * sizeof(float),
                         "case \"%s\": a refused weight changed the layer",
                         c->name);
        fx_fini(&f);
    }
}

Test(api, bias_k_accepts_pytorch_shape_and_flat_shape)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 8, 2);
    cfg.add_bias_kv = 1;
    fx f;
    fx_init_cfg(&f, &cfg, 1);
    float data[8];
    fill(data, 8, 3);
    int64_t flat[1] = {8}, full[3] = {1, 1, 8}, bad[3] = {1, 2, 8};
    cr_expect_eq(mha_layer_set_weight(f.layer, "bias_k", data, 1, flat),
                 MHA_OK);
    cr_expect_eq(mha_layer_set_weight(f.layer, "bias_v", data, 3, full),
                 MHA_OK);
    mha_status st = mha_layer_set_weight(f.layer, "bias_v", data, 3, bad);
    const char *needles[3] = {"bias_v", "[1,2,8]", "[1,1,8]"};
    expect_error(f.ctx, "bias_v (1,2,8)", st, MHA_SHAPE_MISMATCH, needles, 3);
    expect_forward_ok(&f, "bias_v (1,2,8)");
    fx_fini(&f);
}

typedef struct missing_case {
    int64_t kdim, vdim;
    int bias, bias_kv;
    const char *skip;
} missing_case;

Test(api, missing_weight_is_named_by_forward)
{
    static const missing_case c[] = {
        {0, 0, 1, 0, "in_proj_weight"}, {0, 0, 1, 0, "in_proj_bias"},
        {0, 0, 1, 0, "out_proj.weight"}, {0, 0, 1, 0, "out_proj.bias"},
        {6, 10, 1, 0, "q_proj_weight"}, {6, 10, 1, 0, "k_proj_weight"},
        {6, 10, 1, 0, "v_proj_weight"}, {0, 0, 0, 0, "out_proj.weight"},
        {0, 0, 1, 1, "bias_k"},         {0, 0, 1, 1, "bias_v"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, 8, 2);
        cfg.kdim = c[i].kdim;
        cfg.vdim = c[i].vdim;
        cfg.bias = c[i].bias;
        cfg.add_bias_kv = c[i].bias_kv;
        fx f;
        fx_init_cfg(&f, &cfg, 0);
        set_weights_except(f.layer, &f.cfg, c[i].skip);
        static io o;
        io_init(&o, &f);
        mha_status st = mha_layer_forward_host(f.layer, &o.a);
        char quoted[48];
        snprintf(quoted, sizeof quoted, "\"%s\"", c[i].skip);
        const char *needles[1] = {quoted};
        expect_error(f.ctx, c[i].skip, st, MHA_MISSING_WEIGHT, needles, 1);
        cr_expect(untouched(o.out, CAP), "%s: output written", c[i].skip);
        set_weights_except(f.layer, &f.cfg, NULL);
        expect_forward_ok(&f, c[i].skip);
        fx_fini(&f);
    }
}

Test(api, fresh_layer_forward_is_missing_weight)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 8, 2);
    fx f;
    fx_init_cfg(&f, &cfg, 0);
    static io o;
    io_init(&o, &f);
    mha_status st = mha_layer_forward_host(f.layer, &o.a);
    const char *needles[1] = {"in_proj_weight"};
    expect_error(f.ctx, "fresh layer", st, MHA_MISSING_WEIGHT, needles, 1);
    fx_fini(&f);
}
