/* test_api_basics.c: the public API's basics on the cpu device: version and
 * status strings, NULL handles and destroy(NULL), context options, and
 * messages and logging (errmsg cleared after success, errors reach a log
 * callback, nothing printed without one), and memory usage. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

/* ---- version and statuses ------------------------------------------------ */

Test(api, version_matches_header_macro)
{
    cr_assert_str_eq(mha_version(), MHA_VERSION_STRING);
}

Test(api, status_strings_are_nonempty_and_distinct)
{
    for (int i = 0; i < MHA_STATUS_COUNT; i++) {
        const char *s = mha_status_str((mha_status)i);
        cr_assert_not_null(s, "status %d", i);
        cr_expect_gt(strlen(s), 0, "status %d has an empty string", i);
        for (int j = 0; j < i; j++)
            cr_expect_str_neq(s, mha_status_str((mha_status)j),
                              "statuses %d and %d share \"%s\"", i, j, s);
    }
}

Test(api, status_str_of_out_of_range_value_is_not_null)
{
    int bad[] = {MHA_STATUS_COUNT, MHA_STATUS_COUNT + 1, 1000, -1, -1000};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *s = mha_status_str((mha_status)bad[i]);
        cr_assert_not_null(s, "status %d", bad[i]);
        cr_expect_gt(strlen(s), 0, "status %d", bad[i]);
    }
}

/* ---- NULL pointers and destroy(NULL) ------------------------------------- */

Test(api, destroy_null_is_ok_for_every_destroy)
{
    cr_expect_eq(mha_context_destroy(NULL), MHA_OK);
    cr_expect_eq(mha_device_destroy(NULL), MHA_OK);
    cr_expect_eq(mha_layer_destroy(NULL), MHA_OK);
    cr_expect_eq(mha_tensor_destroy(NULL), MHA_OK);
}

Test(api, null_handles_and_out_pointers_are_invalid_argument)
{
    const mha_status I = MHA_INVALID_ARGUMENT;
    mha_context *ctx = NULL;
    int count = 0;
    mha_device_info info;
    float data[4] = {0};
    int64_t shape[2] = {2, 2};
    mha_layer_config cfg;
    mha_forward_args fa;
    mha_host_forward_args ha;
    size_t n1, n2;
    mha_layer_config_init(&cfg, 8, 2);
    mha_forward_args_init(&fa);
    mha_host_forward_args_init(&ha);

    cr_expect_eq(mha_context_options_init((mha_context_options *)NULL), I);
    cr_expect_eq(mha_device_options_init((mha_device_options *)NULL), I);
    cr_expect_eq(mha_layer_config_init((mha_layer_config *)NULL, 8, 2), I);
    cr_expect_eq(mha_forward_args_init((mha_forward_args *)NULL), I);
    cr_expect_eq(mha_host_forward_args_init((mha_host_forward_args *)NULL), I);
    cr_expect_eq(mha_context_create(NULL, NULL), I);
    cr_expect_not_null(mha_context_errmsg(NULL));
    cr_expect_eq(mha_device_count(NULL, &count), I);
    cr_expect_eq(mha_device_get_info(NULL, 0, &info), I);
    cr_expect_eq(mha_device_open(NULL, "cpu", NULL, NULL), I);
    cr_expect_eq(mha_device_open_index(NULL, 0, NULL, NULL), I);
    cr_expect_eq(mha_device_info_of(NULL, &info), I);
    cr_expect_eq(mha_tensor_create(NULL, MHA_F32, 2, shape, NULL), I);
    cr_expect_eq(mha_tensor_upload(NULL, data, sizeof data), I);
    cr_expect_eq(mha_tensor_download(NULL, data, sizeof data), I);
    cr_expect_eq(mha_tensor_get_shape(NULL, NULL, NULL, NULL), I);
    cr_expect_eq(mha_layer_create(NULL, &cfg, NULL), I);
    cr_expect_eq(mha_layer_set_weight(NULL, "out_proj.bias", data, 1, shape),
                 I);
    cr_expect_eq(mha_layer_load_safetensors(NULL, "x.safetensors", NULL), I);
    cr_expect_eq(mha_layer_forward(NULL, &fa), I);
    cr_expect_eq(mha_layer_forward_host(NULL, &ha), I);
    cr_expect_eq(mha_layer_output_size(NULL, &ha, &n1, &n2), I);

    ctx = new_context();
    cr_expect_eq(mha_device_count(ctx, NULL), I);
    cr_expect_eq(mha_device_get_info(ctx, 0, NULL), I);
    cr_expect_eq(mha_device_open(ctx, "cpu", NULL, NULL), I);
    cr_expect_eq(mha_device_open_index(ctx, 0, NULL, NULL), I);
    mha_device *dev = open_cpu(ctx);
    mha_tensor *t = NULL;
    mha_layer *layer = NULL;
    cr_expect_eq(mha_device_info_of(dev, NULL), I);
    cr_expect_eq(mha_tensor_create(dev, MHA_F32, 2, shape, NULL), I);
    cr_expect_eq(mha_tensor_create(dev, MHA_F32, 2, NULL, &t), I);
    cr_expect_null(t, "out written on failure");
    cr_expect_eq(mha_layer_create(dev, NULL, &layer), I);
    cr_expect(contains(mha_context_errmsg(ctx), "config"));
    cr_expect_eq(mha_layer_create(dev, &cfg, NULL), I);
    cr_expect(contains(mha_context_errmsg(ctx), "out"));
    cr_expect_null(layer);
    cr_expect_eq(mha_device_destroy(dev), MHA_OK);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

/* Checks that call is refused and that ctx's message names what it should
 * (mha.h: a failure's message names the function and the argument). */
#define EXPECT_NAMED(ctx, call, needle)                                       \
    do {                                                                      \
        mha_status got_ = (call);                                             \
        cr_expect_eq(got_, MHA_INVALID_ARGUMENT, "%s: %s", needle,           \
                     mha_status_str(got_));                                   \
        cr_expect(contains(mha_context_errmsg(ctx), needle),                  \
                  "message \"%s\" lacks \"%s\"", mha_context_errmsg(ctx),    \
                  needle);                                                    \
    } while (0)

/* On a live handle, a NULL output or count is refused with a message, not
 * only a status. */
Test(api, null_outputs_on_live_handles_are_named_in_the_message)
{
    fx f;
    fx_init(&f, 0, 0);
    mha_context *x = f.ctx;
    int64_t shape[1] = {4};
    mha_tensor *t;
    cr_assert_eq(mha_tensor_create(f.dev, MHA_F32, 1, shape, &t), MHA_OK);
    mha_head_stats *hs;
    cr_assert_eq(mha_head_stats_create(f.layer, &hs), MHA_OK);
    mha_decoder_config dc;
    mha_decoder_config_init(&dc, 16, 2);
    mha_kv_cache_config kc;
    mha_kv_cache_config_init(&kc);
    const char *names[2];
    mha_profile_entry entries[2];
    int n;
    EXPECT_NAMED(x, mha_device_count(x, NULL), "mha_device_count: count is");
    EXPECT_NAMED(x, mha_device_get_info(x, 0, NULL),
                 "mha_device_get_info: info is NULL");
    EXPECT_NAMED(x, mha_device_open(x, "cpu", NULL, NULL),
                 "mha_device_open: out is NULL");
    EXPECT_NAMED(x, mha_device_open_index(x, 0, NULL, NULL),
                 "mha_device_open_index: out is NULL");
    EXPECT_NAMED(x, mha_device_info_of(f.dev, NULL),
                 "mha_device_info_of: info is NULL");
    EXPECT_NAMED(x, mha_device_profile_read(f.dev, entries, 2, NULL),
                 "mha_device_profile_read: count is NULL");
    EXPECT_NAMED(x, mha_device_profile_read(f.dev, entries, -1, &n),
                 "mha_device_profile_read: cap is negative");
    EXPECT_NAMED(x, mha_device_profile_read(f.dev, NULL, 2, &n),
                 "mha_device_profile_read: entries is NULL");
    EXPECT_NAMED(x, mha_device_variants(f.dev, NULL, names, 2, &n),
                 "mha_device_variants: kind is NULL");
    EXPECT_NAMED(x, mha_device_variants(f.dev, "matmul", names, 2, NULL),
                 "mha_device_variants: count is NULL");
    EXPECT_NAMED(x, mha_device_variants(f.dev, "matmul", NULL, 2, &n),
                 "mha_device_variants: names is NULL");
    EXPECT_NAMED(x, mha_tensor_create(f.dev, MHA_F32, 1, shape, NULL),
                 "mha_tensor_create: out is NULL");
    EXPECT_NAMED(x, mha_tensor_view(t, 0, 1, shape, NULL, NULL),
                 "mha_tensor_view: out is NULL");
    EXPECT_NAMED(x, mha_kv_cache_create(f.dev, &kc, NULL),
                 "mha_kv_cache_create: out is NULL");
    EXPECT_NAMED(x, mha_decoder_create(f.dev, &dc, NULL),
                 "mha_decoder_create: out is NULL");
    EXPECT_NAMED(x, mha_head_stats_get(hs, NULL, 2),
                 "mha_head_stats_get: per_head is NULL");
    EXPECT_NAMED(x, mha_head_stats_redundancy(hs, MHA_REDUNDANCY_JS, NULL, 4),
                 "mha_head_stats_redundancy: hxh is NULL");
    mha_head_stats_destroy(hs);
    mha_tensor_destroy(t);
    fx_fini(&f);
}

Test(api, null_data_names_and_args_on_a_live_layer_are_invalid_argument)
{
    fx f;
    fx_init(&f, 0, 0);
    const mha_status I = MHA_INVALID_ARGUMENT;
    float data[8] = {0};
    int64_t shape[1] = {8};
    size_t n1, n2;
    static io o;
    io_init(&o, &f);
    struct {
        const char *name;
        mha_status got;
        const char *needle;
    } c[] = {
        {"set_weight name NULL",
         mha_layer_set_weight(f.layer, NULL, data, 1, shape), "name"},
        {"set_weight data NULL",
         mha_layer_set_weight(f.layer, "out_proj.bias", NULL, 1, shape),
         "data"},
        {"set_weight shape NULL",
         mha_layer_set_weight(f.layer, "out_proj.bias", data, 1, NULL),
         "shape"},
        {"load path NULL", mha_layer_load_safetensors(f.layer, NULL, NULL),
         "path"},
        {"forward args NULL", mha_layer_forward(f.layer, NULL), "args"},
        {"forward_host args NULL", mha_layer_forward_host(f.layer, NULL),
         "args"},
        {"output_size args NULL",
         mha_layer_output_size(f.layer, NULL, &n1, &n2), "NULL"},
        {"output_size counts NULL",
         mha_layer_output_size(f.layer, &o.a, NULL, NULL), "NULL"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        cr_expect_eq(c[i].got, I, "case \"%s\": %s", c[i].name,
                     mha_status_str(c[i].got));
    }
    /* each message names its argument: rerun one at a time */
    cr_expect_eq(mha_layer_set_weight(f.layer, NULL, data, 1, shape), I);
    cr_expect(contains(mha_context_errmsg(f.ctx), "name"));
    cr_expect_eq(mha_layer_set_weight(f.layer, "out_proj.bias", NULL, 1,
                                      shape), I);
    cr_expect(contains(mha_context_errmsg(f.ctx), "data"));
    cr_expect_eq(mha_layer_load_safetensors(f.layer, NULL, "p."), I);
    cr_expect(contains(mha_context_errmsg(f.ctx), "path"));
    expect_forward_ok(&f, "NULL arguments");
    fx_fini(&f);
}

Test(api, output_size_reports_output_and_weight_counts)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    io_init(&o, &f);
    size_t n_out = 0, n_w = 0;
    cr_assert_eq(mha_layer_output_size(f.layer, &o.a, &n_out, &n_w), MHA_OK);
    cr_expect_eq(n_out, (size_t)(L_ * N_ * 8));
    cr_expect_eq(n_w, (size_t)(N_ * L_ * S_));
    o.a.average_attn_weights = 0;
    cr_assert_eq(mha_layer_output_size(f.layer, &o.a, &n_out, &n_w), MHA_OK);
    cr_expect_eq(n_w, (size_t)(N_ * 2 * L_ * S_));
    o.a.need_weights = 0;
    cr_assert_eq(mha_layer_output_size(f.layer, &o.a, &n_out, &n_w), MHA_OK);
    cr_expect_eq(n_w, 0);
    fx_fini(&f);
}

/* ---- context options ----------------------------------------------------- */

static void *bad_malloc(void *user, size_t size)
{
    (void)user;
    return malloc(size);
}

Test(api, context_options_table)
{
    mha_allocator no_free = {bad_malloc, NULL, NULL};
    struct {
        const char *name;
        const mha_allocator *alloc;
        int level;
        mha_status want;
    } c[] = {
        {"allocator without free", &no_free, MHA_LOG_WARN,
         MHA_INVALID_ARGUMENT},
        {"log level 9", NULL, 9, MHA_INVALID_ARGUMENT},
        {"log level -1", NULL, -1, MHA_INVALID_ARGUMENT},
        {"defaults", NULL, MHA_LOG_WARN, MHA_OK},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_context_options o;
        mha_context_options_init(&o);
        o.allocator = c[i].alloc;
        o.log_level = (mha_log_level)c[i].level;
        mha_context *ctx = NULL;
        mha_status st = mha_context_create(&o, &ctx);
        cr_expect_eq(st, c[i].want, "case \"%s\": %s", c[i].name,
                     mha_status_str(st));
        if (st == MHA_OK)
            cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
        else
            cr_expect_null(ctx, "case \"%s\": out written on failure",
                           c[i].name);
    }
}

/* ---- messages and logging ------------------------------------------------ */

/* mha.h: errmsg is "" after success. Each successful call (of those that
 * can fail with a message) follows a failure and must clear its message. */
Test(api, successful_calls_clear_the_previous_message)
{
    fx f;
    fx_init(&f, 0, 0);
    static io o;
    io_init(&o, &f);
    int64_t shape[1] = {4};
    float data[4] = {1, 2, 3, 4};
    mha_tensor *t = NULL;
    mha_device_info info;
    size_t n1, n2;
    struct {
        const char *name;
        int kind;
    } c[] = {
        {"mha_tensor_create", 0},     {"mha_tensor_upload", 1},
        {"mha_tensor_download", 2},   {"mha_layer_output_size", 3},
        {"mha_device_get_info", 4},   {"mha_layer_forward_host", 6},
    };
    cr_assert_eq(mha_tensor_create(f.dev, MHA_F32, 1, shape, &t), MHA_OK);
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        mha_layer_config bad;
        mha_layer_config_init(&bad, 513, 8);
        mha_layer *none = NULL;
        cr_assert_eq(mha_layer_create(f.dev, &bad, &none),
                     MHA_INVALID_ARGUMENT);
        cr_assert_str_not_empty(mha_context_errmsg(f.ctx));
        mha_status st = MHA_OK;
        mha_tensor *t2 = NULL;
        switch (c[i].kind) {
        case 0: st = mha_tensor_create(f.dev, MHA_F32, 1, shape, &t2); break;
        case 1: st = mha_tensor_upload(t, data, sizeof data); break;
        case 2: st = mha_tensor_download(t, data, sizeof data); break;
        case 3: st = mha_layer_output_size(f.layer, &o.a, &n1, &n2); break;
        case 4: st = mha_device_get_info(f.ctx, 0, &info); break;
        case 6: st = mha_layer_forward_host(f.layer, &o.a); break;
        }
        cr_expect_eq(st, MHA_OK, "%s", c[i].name);
        cr_expect_str_empty(mha_context_errmsg(f.ctx),
                            "%s succeeded but the message still says \"%s\"",
                            c[i].name, mha_context_errmsg(f.ctx));
        mha_tensor_destroy(t2);
    }
    cr_expect_eq(mha_tensor_destroy(t), MHA_OK);
    fx_fini(&f);
}

typedef struct log_capture {
    int calls;
    char last[1024];
} log_capture;

static void capture_log(void *user, mha_log_level level, const char *msg)
{
    log_capture *c = user;
    (void)level;
    c->calls++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

Test(api, errors_reach_a_debug_log_callback)
{
    log_capture cap = {0, ""};
    mha_context_options o;
    mha_context_options_init(&o);
    o.log = capture_log;
    o.log_user = &cap;
    o.log_level = MHA_LOG_DEBUG;
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "gpu", NULL, &dev),
                 MHA_INVALID_ARGUMENT);
    cr_expect_gt(cap.calls, 0);
    cr_expect(contains(cap.last, "\"gpu\""), "last log line: %s", cap.last);
    cr_expect_eq(mha_context_destroy(ctx), MHA_OK);
}

static void redirect_stderr(void) { cr_redirect_stderr(); }

/* The library never prints unless asked: errors with no callback and no
 * MHA_LOG leave stderr empty. */
Test(api, errors_print_nothing_without_a_log, .init = redirect_stderr)
{
    unsetenv("MHA_LOG");
    fx f;
    fx_init(&f, 0, 0);
    mha_device *dev = NULL;
    mha_layer *layer = NULL;
    mha_layer_config bad;
    mha_layer_config_init(&bad, 513, 8);
    cr_expect_neq(mha_device_open(f.ctx, "gpu", NULL, &dev), MHA_OK);
    cr_expect_neq(mha_layer_create(f.dev, &bad, &layer), MHA_OK);
    cr_expect_neq(mha_layer_load_safetensors(f.layer, "/nonexistent", NULL),
                  MHA_OK);
    expect_forward_ok(&f, "silent errors");
    fx_fini(&f);
    fflush(stderr);
    cr_expect_stderr_eq_str("");
}

/* Device memory accounting: a tensor adds its bytes, destroying it gives
 * them back, the peak remembers, and a reset starts from the current use. */
Test(api, device_memory_usage_counts_tensors_and_peak)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_cpu(ctx);
    uint64_t base = 1, peak = 0, now = 0;
    cr_assert_eq(mha_device_memory_usage(dev, &base, NULL), MHA_OK);
    mha_tensor *t;
    const int64_t shape[2] = {100, 30};
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 2, shape, &t), MHA_OK);
    cr_assert_eq(mha_device_memory_usage(dev, &now, &peak), MHA_OK);
    cr_expect_eq(now, base + 100 * 30 * 4);
    cr_expect_eq(peak, now);
    cr_assert_eq(mha_tensor_destroy(t), MHA_OK);
    cr_assert_eq(mha_device_memory_usage(dev, &now, &peak), MHA_OK);
    cr_expect_eq(now, base);
    cr_expect_eq(peak, base + 100 * 30 * 4);
    cr_assert_eq(mha_device_reset_peak_memory(dev), MHA_OK);
    cr_assert_eq(mha_device_memory_usage(dev, NULL, &peak), MHA_OK);
    cr_expect_eq(peak, base);
    cr_expect_eq(mha_device_memory_usage(NULL, &now, &peak),
                 MHA_INVALID_ARGUMENT);
    cr_expect_eq(mha_device_reset_peak_memory(NULL), MHA_INVALID_ARGUMENT);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}
