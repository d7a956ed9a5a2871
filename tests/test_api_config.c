/* test_api_config.c: tables of bad and good layer configs and device specs,
 * CPU ISA and thread options, and the ranked device listing. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

/* ---- layer configs ------------------------------------------------------- */

typedef struct config_case {
    const char *name;
    int64_t E, H, kdim, vdim;
    float dropout;
    int dtype;
    mha_status want;
    const char *needle[3];
} config_case;

static const config_case config_cases[] = {
    {"embed_dim 0", 0, 1, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"embed_dim", "0"}},
    {"embed_dim -4", -4, 2, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"embed_dim", "-4"}},
    {"num_heads 0", 8, 0, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"num_heads", "0"}},
    {"num_heads -2", 8, -2, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"num_heads", "-2"}},
    {"kdim -1", 8, 2, -1, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"kdim", "-1"}},
    {"vdim -3", 8, 2, 0, -3, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"vdim", "-3"}},
    {"513 not divisible by 8", 513, 8, 0, 0, 0, MHA_F32,
     MHA_INVALID_ARGUMENT, {"513", "8", "divisible"}},
    {"10 not divisible by 4", 10, 4, 0, 0, 0, MHA_F32, MHA_INVALID_ARGUMENT,
     {"10", "4"}},
    {"num_heads larger than embed_dim", 4, 8, 0, 0, 0, MHA_F32,
     MHA_INVALID_ARGUMENT, {"4", "8"}},
    {"embed_dim 2^40 overflows", (int64_t)1 << 40, 1, 0, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"embed_dim", "1099511627776"}},
    {"embed_dim INT64_MAX overflows", INT64_MAX, 1, 0, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"embed_dim", "9223372036854775807"}},
    {"num_heads 2^40 overflows", 8, (int64_t)1 << 40, 0, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"num_heads", "1099511627776"}},
    {"kdim 2^62 overflows", 8, 2, (int64_t)1 << 62, 0, 0, MHA_F32,
     MHA_OVERFLOW, {"kdim", "4611686018427387904"}},
    {"vdim 2^33 overflows", 8, 2, 0, (int64_t)1 << 33, 0, MHA_F32,
     MHA_OVERFLOW, {"vdim", "8589934592"}},
    {"dropout 0.1", 8, 2, 0, 0, 0.1f, MHA_F32, MHA_UNSUPPORTED,
     {"dropout", "0.1"}},
    {"dropout -0.5", 8, 2, 0, 0, -0.5f, MHA_F32, MHA_UNSUPPORTED,
     {"dropout", "-0.5"}},
    {"dropout NaN", 8, 2, 0, 0, NAN, MHA_F32, MHA_UNSUPPORTED,
     {"dropout", "nan"}},
    {"f16 on the cpu device", 8, 2, 0, 0, 0, MHA_F16, MHA_UNSUPPORTED,
     {"f16", "cpu"}},
    {"dtype bool", 8, 2, 0, 0, 0, MHA_BOOL, MHA_DTYPE_MISMATCH,
     {"dtype", "bool"}},
    {"dtype 7 is not a mha_dtype", 8, 2, 0, 0, 0, 7, MHA_DTYPE_MISMATCH,
     {"dtype", "7"}},
};

Test(api, bad_layer_configs_table)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    for (size_t i = 0; i < sizeof config_cases / sizeof *config_cases; i++) {
        const config_case *c = &config_cases[i];
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, c->E, c->H);
        cfg.kdim = c->kdim;
        cfg.vdim = c->vdim;
        cfg.dropout = c->dropout;
        cfg.dtype = (mha_dtype)c->dtype;
        mha_layer *layer = NULL;
        mha_status st = mha_layer_create(dev, &cfg, &layer);
        expect_error(ctx, c->name, st, c->want, c->needle, 3);
        cr_expect_null(layer, "case \"%s\": out written on failure",
                       c->name);
        if (st == MHA_OK)
            mha_layer_destroy(layer);
    }
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, good_layer_configs_are_accepted)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    int64_t ok[][4] = {{1, 1, 0, 0}, {8, 8, 0, 0}, {16, 2, 3, 5},
                       {512, 8, 0, 0}, {12, 3, 12, 7}};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, ok[i][0], ok[i][1]);
        cfg.kdim = ok[i][2];
        cfg.vdim = ok[i][3];
        mha_layer *layer = NULL;
        cr_expect_eq(mha_layer_create(dev, &cfg, &layer), MHA_OK,
                     "E=%lld H=%lld: %s", (long long)ok[i][0],
                     (long long)ok[i][1], mha_context_errmsg(ctx));
        cr_expect_eq(mha_layer_destroy(layer), MHA_OK);
    }
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

/* ---- device specs and listing -------------------------------------------- */

typedef struct spec_case {
    const char *spec;
    int via_env;   /* MHA_DEVICE instead of the spec argument */
    mha_status want;
} spec_case;

static const spec_case spec_cases[] = {
    {"gpu", 0, MHA_INVALID_ARGUMENT},
    {"vulkan:x", 0, MHA_INVALID_ARGUMENT},
    {"cpu:7", 0, MHA_NO_DEVICE},
    {":", 0, MHA_INVALID_ARGUMENT},
    {"", 0, MHA_INVALID_ARGUMENT},
    {"cpu:-1", 0, MHA_INVALID_ARGUMENT},
    {"cpu:99999999999", 0, MHA_INVALID_ARGUMENT},
    {"cpu:", 0, MHA_INVALID_ARGUMENT},
    {"cpu:0x", 0, MHA_INVALID_ARGUMENT},
    {"cpu:1", 0, MHA_NO_DEVICE},
    {"a-very-long-backend-name-that-overflows-a-name-buffer:0", 0,
     MHA_INVALID_ARGUMENT},
    {"gpu", 1, MHA_INVALID_ARGUMENT},
    {"vulkan:x", 1, MHA_INVALID_ARGUMENT},
    {"cpu:7", 1, MHA_NO_DEVICE},
    {":", 1, MHA_INVALID_ARGUMENT},
    {"cpu:-1", 1, MHA_INVALID_ARGUMENT},
    {"cpu:99999999999", 1, MHA_INVALID_ARGUMENT},
};

Test(api, bad_device_specs_table)
{
    mha_context *ctx = new_context();
    for (size_t i = 0; i < sizeof spec_cases / sizeof *spec_cases; i++) {
        const spec_case *c = &spec_cases[i];
        char name[96];
        snprintf(name, sizeof name, "%s \"%s\"",
                 c->via_env ? "MHA_DEVICE" : "spec", c->spec);
        if (c->via_env)
            cr_assert_eq(setenv("MHA_DEVICE", c->spec, 1), 0);
        else
            unsetenv("MHA_DEVICE");
        mha_device *dev = NULL;
        mha_status st = mha_device_open(ctx, c->via_env ? NULL : c->spec,
                                        NULL, &dev);
        char quoted[96];
        snprintf(quoted, sizeof quoted, "\"%s\"", c->spec);
        const char *needles[2] = {quoted, c->via_env ? "MHA_DEVICE" : NULL};
        expect_error(ctx, name, st, c->want, needles, 2);
        cr_expect_null(dev, "%s: out written on failure", name);
        if (st == MHA_OK)
            mha_device_destroy(dev);
    }
    unsetenv("MHA_DEVICE");
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, good_device_specs_open_the_cpu)
{
    mha_context *ctx = new_context();
    const char *good[] = {"cpu", "cpu:0", "best"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        mha_device *dev = NULL;
        cr_expect_eq(mha_device_open(ctx, good[i], NULL, &dev), MHA_OK,
                     "spec %s: %s", good[i], mha_context_errmsg(ctx));
        cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    }
    cr_assert_eq(setenv("MHA_DEVICE", "cpu:0", 1), 0);
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, NULL, NULL, &dev), MHA_OK,
                 "MHA_DEVICE=cpu:0: %s", mha_context_errmsg(ctx));
    mha_device_info info;
    cr_assert_eq(mha_device_info_of(dev, &info), MHA_OK);
    cr_expect_str_eq(info.backend, "cpu");
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    /* an empty MHA_DEVICE counts as unset: the default device opens */
    cr_assert_eq(setenv("MHA_DEVICE", "", 1), 0);
    dev = NULL;
    cr_expect_eq(mha_device_open(ctx, NULL, NULL, &dev), MHA_OK,
                 "MHA_DEVICE=\"\": %s", mha_context_errmsg(ctx));
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, explicit_spec_wins_over_mha_device)
{
    mha_context *ctx = new_context();
    cr_assert_eq(setenv("MHA_DEVICE", "gpu", 1), 0);
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

typedef struct isa_case {
    const char *isa;
    int via_env; /* MHA_CPU_ISA instead of options.cpu_isa */
} isa_case;

Test(api, unknown_cpu_isa_is_unsupported_and_named)
{
    static const isa_case c[] = {
        {"sse9", 0}, {"sse9", 1}, {"x", 0}, {"avx1024", 1},
    };
    mha_context *ctx = new_context();
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_device_options o;
        mha_device_options_init(&o);
        if (c[i].via_env)
            cr_assert_eq(setenv("MHA_CPU_ISA", c[i].isa, 1), 0);
        else {
            unsetenv("MHA_CPU_ISA");
            o.cpu_isa = c[i].isa;
        }
        char name[64], quoted[64];
        snprintf(name, sizeof name, "%s \"%s\"",
                 c[i].via_env ? "MHA_CPU_ISA" : "cpu_isa", c[i].isa);
        snprintf(quoted, sizeof quoted, "\"%s\"", c[i].isa);
        const char *needles[2] = {quoted,
                                  c[i].via_env ? "MHA_CPU_ISA" : "cpu_isa"};
        mha_device *dev = NULL;
        mha_status st = mha_device_open(ctx, "cpu", &o, &dev);
        expect_error(ctx, name, st, MHA_UNSUPPORTED, needles, 2);
        cr_expect_null(dev);
        if (st == MHA_OK)
            mha_device_destroy(dev);
    }
    unsetenv("MHA_CPU_ISA");
    /* scalar always exists, and the option overrides the variable */
    cr_assert_eq(setenv("MHA_CPU_ISA", "sse9", 1), 0);
    mha_device_options o;
    mha_device_options_init(&o);
    o.cpu_isa = "scalar";
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "cpu", &o, &dev), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, negative_thread_count_is_invalid_and_named)
{
    mha_context *ctx = new_context();
    mha_device_options o;
    mha_device_options_init(&o);
    o.threads = -3;
    mha_device *dev = NULL;
    mha_status st = mha_device_open(ctx, "cpu", &o, &dev);
    const char *needles[2] = {"threads", "-3"};
    expect_error(ctx, "threads -3", st, MHA_INVALID_ARGUMENT, needles, 2);
    cr_expect_null(dev);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, device_index_out_of_range_is_no_device)
{
    mha_context *ctx = new_context();
    int count = 0;
    cr_assert_eq(mha_device_count(ctx, &count), MHA_OK);
    int bad[] = {-1, count, count + 5, 1 << 30};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char name[48], num[24];
        snprintf(name, sizeof name, "index %d", bad[i]);
        snprintf(num, sizeof num, "%d", bad[i]);
        const char *needles[1] = {num};
        mha_device_info info;
        memset(&info, 0x5a, sizeof info);
        mha_status st = mha_device_get_info(ctx, bad[i], &info);
        expect_error(ctx, name, st, MHA_NO_DEVICE, needles, 1);
        cr_expect_eq(info.index, 0x5a5a5a5a, "%s: info written", name);
        mha_device *dev = NULL;
        st = mha_device_open_index(ctx, bad[i], NULL, &dev);
        expect_error(ctx, name, st, MHA_NO_DEVICE, needles, 1);
        cr_expect_null(dev);
    }
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

Test(api, device_listing_ranks_devices_and_has_the_cpu)
{
    mha_context *ctx = new_context();
    int count = 0, defaults = 0, cpus = 0;
    cr_assert_eq(mha_device_count(ctx, &count), MHA_OK);
    cr_assert_geq(count, 1);
    int prev_score = 0;
    for (int i = 0; i < count; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(ctx, i, &info), MHA_OK);
        cr_expect_eq(info.index, i);
        cr_expect_gt(strlen(info.backend), 0, "device %d backend", i);
        cr_expect_gt(info.score, 0, "device %d score", i);
        if (i > 0)
            cr_expect_leq(info.score, prev_score, "rank %d score rises", i);
        prev_score = info.score;
        defaults += info.is_default != 0;
        if (strcmp(info.backend, "cpu") == 0) {
            cpus++;
            cr_expect_eq(info.kind, MHA_DEVICE_CPU);
            cr_expect_gt(info.compute_units, 0);
            cr_expect_eq(info.features & MHA_FEATURE_FP16_STORAGE, 0,
                         "the cpu device claims fp16 storage");
        }
    }
    cr_expect_eq(defaults, 1, "%d devices claim to be the default", defaults);
    cr_expect_eq(cpus, 1);
    /* the default is what "best" opens */
    mha_device *dev = NULL;
    mha_device_info info, first;
    cr_assert_eq(mha_device_open(ctx, "best", NULL, &dev), MHA_OK);
    cr_assert_eq(mha_device_info_of(dev, &info), MHA_OK);
    cr_assert_eq(mha_device_get_info(ctx, 0, &first), MHA_OK);
    cr_expect(first.is_default);
    cr_expect_str_eq(info.backend, first.backend);
    cr_expect_eq(info.backend_index, first.backend_index);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}
