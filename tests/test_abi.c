/* test_abi.c: the struct_size handshake of mha.h's "ABI" section: every
 * *_init sets the caller's size, the library refuses 0 or a truncated
 * struct naming it, and accepts a struct from a newer header (larger, with
 * fields it does not know), using only the fields it knows. */
#include <criterion/criterion.h>
#include <string.h>

#include "mha.h"

static mha_context *context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    return ctx;
}

static mha_device *cpu(mha_context *ctx)
{
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    return dev;
}

/* The call failed with MHA_INVALID_ARGUMENT and a message naming type. */
static void refused(mha_context *ctx, mha_status st, const char *type)
{
    cr_expect_eq(st, MHA_INVALID_ARGUMENT, "%s: status %s", type,
                 mha_status_str(st));
    cr_expect(strstr(mha_context_errmsg(ctx), type) &&
                  strstr(mha_context_errmsg(ctx), "struct_size"),
              "message \"%s\" names %s.struct_size", mha_context_errmsg(ctx),
              type);
}

Test(abi, every_init_sets_the_callers_size)
{
    mha_context_options co;
    mha_device_options dop;
    mha_layer_config lc;
    mha_forward_args fa;
    mha_host_forward_args ha;
    cr_assert_eq(mha_context_options_init(&co), MHA_OK);
    cr_assert_eq(mha_device_options_init(&dop), MHA_OK);
    cr_assert_eq(mha_layer_config_init(&lc, 8, 2), MHA_OK);
    cr_assert_eq(mha_forward_args_init(&fa), MHA_OK);
    cr_assert_eq(mha_host_forward_args_init(&ha), MHA_OK);
    cr_expect_eq(co.struct_size, sizeof co);
    cr_expect_eq(dop.struct_size, sizeof dop);
    cr_expect_eq(lc.struct_size, sizeof lc);
    cr_expect_eq(fa.struct_size, sizeof fa);
    cr_expect_eq(ha.struct_size, sizeof ha);
    cr_expect_eq(lc.bias, 1, "defaults still set");
}

Test(abi, an_init_with_a_truncated_size_is_refused)
{
    mha_layer_config lc;
    memset(&lc, 0x5a, sizeof lc);
    cr_expect_eq(mha_layer_config_init_sized(&lc, sizeof lc - 1, 8, 2),
                 MHA_INVALID_ARGUMENT);
    cr_expect_eq(mha_layer_config_init_sized(&lc, 0, 8, 2),
                 MHA_INVALID_ARGUMENT);
    mha_forward_args fa;
    cr_expect_eq(mha_forward_args_init_sized(&fa, 1), MHA_INVALID_ARGUMENT);
}

Test(abi, a_context_option_without_its_size_is_refused)
{
    mha_context_options co;
    mha_context_options_init(&co);
    co.struct_size = 0;
    mha_context *ctx = NULL;
    cr_expect_eq(mha_context_create(&co, &ctx), MHA_INVALID_ARGUMENT);
    cr_expect_null(ctx);
    co.struct_size = sizeof co - 1;
    cr_expect_eq(mha_context_create(&co, &ctx), MHA_INVALID_ARGUMENT);
}

Test(abi, zero_or_truncated_sizes_are_refused_naming_the_struct)
{
    mha_context *ctx = context();
    mha_device *dev = cpu(ctx);
    mha_device_options dop;
    mha_device_options_init(&dop);
    dop.struct_size = 0;
    mha_device *other = NULL;
    refused(ctx, mha_device_open(ctx, "cpu", &dop, &other),
            "mha_device_options");
    cr_expect_null(other);

    mha_layer_config lc;
    mha_layer_config_init(&lc, 8, 2);
    lc.struct_size = sizeof lc - 1;
    mha_layer *layer = NULL;
    refused(ctx, mha_layer_create(dev, &lc, &layer), "mha_layer_config");
    cr_expect_null(layer);
    lc.struct_size = sizeof lc;
    cr_assert_eq(mha_layer_create(dev, &lc, &layer), MHA_OK);

    mha_forward_args fa;
    mha_forward_args_init(&fa);
    fa.struct_size = 0;
    refused(ctx, mha_layer_forward(layer, &fa), "mha_forward_args");

    mha_host_forward_args ha;
    mha_host_forward_args_init(&ha);
    ha.struct_size = 0;
    refused(ctx, mha_layer_forward_host(layer, &ha), "mha_host_forward_args");
    size_t n = 0, w = 0;
    refused(ctx, mha_layer_output_size(layer, &ha, &n, &w),
            "mha_host_forward_args");
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* A caller built against a newer mha.h whose structs have grown. */
typedef struct newer_config {
    mha_layer_config known;
    int64_t future[4];
} newer_config;

typedef struct newer_host_args {
    mha_host_forward_args known;
    double future[2];
} newer_host_args;

Test(abi, a_larger_struct_from_a_newer_header_is_accepted)
{
    mha_context *ctx = context();
    mha_device *dev = cpu(ctx);
    newer_config nc;
    memset(&nc, 0x77, sizeof nc);
    cr_assert_eq(mha_layer_config_init_sized(&nc.known, sizeof nc, 8, 2),
                 MHA_OK);
    cr_expect_eq(nc.known.struct_size, sizeof nc);
    cr_expect_eq(nc.future[3], 0, "init zeroes the caller's whole struct");
    nc.future[0] = 12345; /* a field this library does not know */
    mha_layer *layer = NULL;
    cr_assert_eq(mha_layer_create(dev, &nc.known, &layer), MHA_OK, "%s",
                 mha_context_errmsg(ctx));

    static const float zeros[24 * 8] = {0};
    const int64_t w_in[2] = {24, 8}, b_in[1] = {24}, w_out[2] = {8, 8},
                  b_out[1] = {8};
    cr_assert_eq(mha_layer_set_weight(layer, "in_proj_weight", zeros, 2, w_in),
                 MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "in_proj_bias", zeros, 1, b_in),
                 MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "out_proj.weight", zeros, 2,
                                      w_out), MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "out_proj.bias", zeros, 1, b_out),
                 MHA_OK);

    newer_host_args na;
    cr_assert_eq(mha_host_forward_args_init_sized(&na.known, sizeof na),
                 MHA_OK);
    na.future[0] = 1.0;
    static const float x[2 * 8] = {0};
    na.known.query = (mha_host_array){x, MHA_F32, 2, {2, 8}};
    na.known.key = na.known.query;
    na.known.value = na.known.query;
    size_t n = 0, w = 0;
    cr_expect_eq(mha_layer_output_size(layer, &na.known, &n, &w), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    cr_expect_eq(n, 16, "output count %zu", n);
    float out[16];
    na.known.output = out;
    na.known.output_count = 16;
    cr_expect_eq(mha_layer_forward_host(layer, &na.known), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

#ifdef MHA_TEST_VULKAN
#include "mha_vulkan.h"

Test(abi, vulkan_interop_structs_carry_their_size)
{
    mha_vulkan_device_info info;
    mha_vulkan_buffer buf;
    cr_assert_eq(mha_vulkan_device_info_init(&info), MHA_OK);
    cr_assert_eq(mha_vulkan_buffer_init(&buf), MHA_OK);
    cr_expect_eq(info.struct_size, sizeof info);
    cr_expect_eq(buf.struct_size, sizeof buf);
    cr_expect(info.device == VK_NULL_HANDLE && info.queue == VK_NULL_HANDLE);
    mha_context *ctx = context();
    mha_device *dev = NULL;
    info.struct_size = 0;
    refused(ctx, mha_vulkan_device_adopt(ctx, &info, NULL, &dev),
            "mha_vulkan_device_info");
    cr_expect_null(dev);
    mha_context_destroy(ctx);
}
#endif
