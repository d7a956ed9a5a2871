/* test_context.c: the context's contract with callers and engines. Which
 * backends it probes (mha_context_options.backends, MHA_BACKENDS): a
 * backend left out loads no runtime at all, an unknown name is refused.
 * And its message: every public call that succeeds leaves it empty, and
 * every failure names the function the caller called, also when the
 * failure comes from deep inside (the planner, a backend, the safetensors
 * reader). Criterion runs each test in its own process, so what a test
 * loads and sets in the environment stays in it. */
#define _XOPEN_SOURCE 700 /* setenv */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum { E = 16, H = 2, L = 3, S = 4 };

/* ---- helpers ------------------------------------------------------------ */

/* Host allocations that fail while g_fail is set. */
static int g_fail;

static void *failing_malloc(void *user, size_t size)
{
    (void)user;
    return g_fail ? NULL : malloc(size);
}

static void plain_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

static const mha_allocator g_failing = {failing_malloc, plain_free, NULL};

static mha_status create_with(const char *backends, test_log *log,
                              mha_context **ctx)
{
    mha_context_options o;
    mha_context_options_init(&o);
    o.backends = backends;
    o.allocator = &g_failing;
    if (log)
        test_log_to(&o, log);
    *ctx = NULL;
    return mha_context_create(&o, ctx);
}

/* How many of ctx's devices belong to backend (all of them: NULL). */
static int count_devices(mha_context *ctx, const char *backend)
{
    int n = 0, found = 0;
    cr_assert_eq(mha_device_count(ctx, &n), MHA_OK);
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(ctx, i, &info), MHA_OK);
        found += !backend || strcmp(info.backend, backend) == 0;
    }
    return found;
}

/* Whether a library whose path contains name is mapped in this process. */
static int mapped(const char *name)
{
    FILE *f = fopen("/proc/self/maps", "r");
    cr_assert_not_null(f);
    char line[1024];
    int found = 0;
    while (fgets(line, sizeof line, f))
        found |= strstr(line, name) != NULL;
    fclose(f);
    return found;
}

/* ---- which backends are probed ------------------------------------------- */

Test(context, backends_cpu_probes_only_the_cpu_and_loads_no_gpu_runtime)
{
    mha_context *ctx;
    cr_assert_eq(create_with("cpu", NULL, &ctx), MHA_OK);
    cr_expect_eq(count_devices(ctx, NULL), 1);
    cr_expect_eq(count_devices(ctx, "cpu"), 1);
    cr_expect_not(mapped("libvulkan"), "libvulkan was loaded");
    cr_expect_not(mapped("libOpenCL"), "an OpenCL ICD loader was loaded");
    mha_device *dev = NULL;
    cr_expect_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    cr_expect_eq(mha_device_open(ctx, "vulkan", NULL, &dev), MHA_NO_DEVICE);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);

    /* against a context that probes everything */
    mha_context *all;
    cr_assert_eq(create_with(NULL, NULL, &all), MHA_OK);
    cr_expect_eq(count_devices(all, "cpu"), 1);
    mha_context_destroy(all);
}

Test(context, backends_names_a_subset_in_any_order)
{
    mha_context *all, *some;
    cr_assert_eq(create_with(NULL, NULL, &all), MHA_OK);
    cr_assert_eq(create_with("opencl,cpu", NULL, &some), MHA_OK);
    cr_expect_eq(count_devices(some, NULL),
                 count_devices(all, "cpu") + count_devices(all, "opencl"));
    cr_expect_eq(count_devices(some, "vulkan"), 0);
    mha_context_destroy(some);
    mha_context_destroy(all);
}

Test(context, unknown_backend_name_is_invalid_argument)
{
    static const char *const bad[] = {"metal", "cpu,metal", "", "cpu,",
                                      ",cpu", "cpu,,vulkan", "CPU",
                                      "cpu vulkan"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        test_log log;
        mha_context *ctx = NULL;
        cr_expect_eq(create_with(bad[i], &log, &ctx), MHA_INVALID_ARGUMENT,
                     "backends \"%s\"", bad[i]);
        cr_expect_null(ctx);
        cr_expect(strstr(log.text, "not a backend of this build"),
                  "backends \"%s\": log \"%s\"", bad[i], log.text);
    }
}

Test(context, mha_backends_applies_when_the_option_is_null)
{
    setenv("MHA_BACKENDS", "cpu", 1);
    mha_context *ctx;
    cr_assert_eq(create_with(NULL, NULL, &ctx), MHA_OK);
    cr_expect_eq(count_devices(ctx, NULL), 1);
    mha_context_destroy(ctx);
    /* the option wins over the environment */
    setenv("MHA_BACKENDS", "metal", 1);
    cr_expect_eq(create_with(NULL, NULL, &ctx), MHA_INVALID_ARGUMENT);
    cr_assert_eq(create_with("cpu", NULL, &ctx), MHA_OK);
    mha_context_destroy(ctx);
}

/* ---- the message ---------------------------------------------------------- */

typedef struct fx {
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
} fx;

static float g_w[3 * E * E], g_q[L * E], g_kv[S * E], g_out[L * E];

static fx setup(void)
{
    fx f;
    cr_assert_eq(create_with("cpu", NULL, &f.ctx), MHA_OK);
    cr_assert_eq(mha_device_open(f.ctx, "cpu", NULL, &f.dev), MHA_OK);
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    c.bias = 0;
    cr_assert_eq(mha_layer_create(f.dev, &c, &f.layer), MHA_OK);
    int64_t in[2] = {3 * E, E}, out[2] = {E, E};
    cr_assert_eq(mha_layer_set_weight(f.layer, "in_proj_weight", g_w, 2, in),
                 MHA_OK);
    cr_assert_eq(mha_layer_set_weight(f.layer, "out_proj.weight", g_w, 2,
                                      out),
                 MHA_OK);
    return f;
}

static void teardown(fx *f)
{
    mha_layer_destroy(f->layer);
    mha_device_destroy(f->dev);
    mha_context_destroy(f->ctx);
}

static mha_host_forward_args host_args(int64_t len)
{
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = (mha_host_array){g_q, MHA_F32, 2, {len, E}};
    a.key = (mha_host_array){g_kv, MHA_F32, 2, {S, E}};
    a.value = (mha_host_array){g_kv, MHA_F32, 2, {S, E}};
    a.output = g_out;
    a.output_count = L * E;
    return a;
}

/* Leaves a message in ctx (a failed call), so that the next call must
 * clear it. */
static void dirty(mha_context *ctx)
{
    mha_device_info info;
    cr_assert_eq(mha_device_get_info(ctx, 12345, &info), MHA_NO_DEVICE);
    cr_assert_str_not_empty(mha_context_errmsg(ctx));
}

#define EXPECT_CLEARS(ctx, call)                                             \
    do {                                                                     \
        dirty(ctx);                                                          \
        mha_status st_ = (call);                                             \
        cr_expect_eq(st_, MHA_OK, "%s: %s", #call, mha_context_errmsg(ctx)); \
        cr_expect_str_empty(mha_context_errmsg(ctx), "%s left \"%s\"",      \
                            #call, mha_context_errmsg(ctx));                 \
    } while (0)

Test(context, every_successful_call_clears_the_message)
{
    fx f = setup();
    mha_context *ctx = f.ctx;
    int n;
    mha_device_info info;
    mha_device *dev2 = NULL;
    uint64_t used, peak;
    mha_tensor *t = NULL;
    int64_t shape[2] = {L, E};
    size_t oc, wc;
    mha_layer *layer2 = NULL;
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    int64_t bias_shape[1] = {3 * E};
    mha_host_forward_args ha = host_args(L);
    EXPECT_CLEARS(ctx, mha_device_count(ctx, &n));
    EXPECT_CLEARS(ctx, mha_device_get_info(ctx, 0, &info));
    EXPECT_CLEARS(ctx, mha_device_open(ctx, "cpu", NULL, &dev2));
    EXPECT_CLEARS(ctx, mha_device_destroy(dev2));
    EXPECT_CLEARS(ctx, mha_device_open_index(ctx, 0, NULL, &dev2));
    EXPECT_CLEARS(ctx, mha_device_destroy(dev2));
    EXPECT_CLEARS(ctx, mha_device_info_of(f.dev, &info));
    EXPECT_CLEARS(ctx, mha_device_memory_usage(f.dev, &used, &peak));
    EXPECT_CLEARS(ctx, mha_device_reset_peak_memory(f.dev));
    EXPECT_CLEARS(ctx, mha_tensor_create(f.dev, MHA_F32, 2, shape, &t));
    EXPECT_CLEARS(ctx, mha_tensor_upload(t, g_q, sizeof g_q));
    EXPECT_CLEARS(ctx, mha_tensor_download(t, g_out, sizeof g_out));
    EXPECT_CLEARS(ctx, mha_tensor_get_shape(t, NULL, &n, shape));
    EXPECT_CLEARS(ctx, mha_tensor_destroy(t));
    EXPECT_CLEARS(ctx, mha_layer_create(f.dev, &c, &layer2));
    EXPECT_CLEARS(ctx, mha_layer_set_weight(layer2, "in_proj_bias", g_w, 1,
                                            bias_shape));
    EXPECT_CLEARS(ctx, mha_layer_load_safetensors(
                           layer2,
                           MHA_FIXTURE_DIR "/self_basic_e16_h2.safetensors",
                           "mha."));
    EXPECT_CLEARS(ctx, mha_layer_destroy(layer2));
    EXPECT_CLEARS(ctx, mha_layer_output_size(f.layer, &ha, &oc, &wc));
    EXPECT_CLEARS(ctx, mha_layer_forward_host(f.layer, &ha));
    teardown(&f);
}

/* Query, key (also the value) and output tensors on f's device, and the
 * forward arguments over them. */
static mha_forward_args make_tensors(fx *f, mha_tensor *t[3])
{
    int64_t qs[2] = {L, E}, ks[2] = {S, E};
    cr_assert_eq(mha_tensor_create(f->dev, MHA_F32, 2, qs, &t[0]), MHA_OK);
    cr_assert_eq(mha_tensor_create(f->dev, MHA_F32, 2, ks, &t[1]), MHA_OK);
    cr_assert_eq(mha_tensor_create(f->dev, MHA_F32, 2, qs, &t[2]), MHA_OK);
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = t[0], a.key = t[1], a.value = t[1], a.output = t[2];
    return a;
}

static void destroy_tensors(mha_tensor *t[3])
{
    for (int i = 0; i < 3; i++)
        mha_tensor_destroy(t[i]);
}

Test(context, device_tensor_forward_clears_the_message)
{
    fx f = setup();
    mha_tensor *t[3];
    mha_forward_args a = make_tensors(&f, t);
    EXPECT_CLEARS(f.ctx, mha_layer_forward(f.layer, &a));
    destroy_tensors(t);
    teardown(&f);
}

/* The context's message starts with "fn: ". */
static void expect_named(mha_context *ctx, mha_status st, const char *fn)
{
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%s: ", fn);
    cr_expect_neq(st, MHA_OK, "%s succeeded", fn);
    cr_expect_eq(strncmp(mha_context_errmsg(ctx), prefix, strlen(prefix)), 0,
                 "the message of a failed %s does not start with its name: "
                 "\"%s\"",
                 fn, mha_context_errmsg(ctx));
}

Test(context, failures_deep_inside_name_the_called_function)
{
    fx f = setup();
    mha_context *ctx = f.ctx;
    /* the planner runs out of memory on a new call shape */
    mha_host_forward_args ha = host_args(L - 1);
    g_fail = 1;
    mha_status st = mha_layer_forward_host(f.layer, &ha);
    g_fail = 0;
    expect_named(ctx, st, "mha_layer_forward_host");
    cr_expect(strstr(mha_context_errmsg(ctx), "out of memory"), "%s",
              mha_context_errmsg(ctx));

    mha_tensor *t[3];
    mha_forward_args a = make_tensors(&f, t);
    g_fail = 1;
    st = mha_layer_forward(f.layer, &a);
    g_fail = 0;
    expect_named(ctx, st, "mha_layer_forward");

    /* the backend refuses a buffer */
    mha_tensor *big = NULL;
    int64_t shape[1] = {E};
    g_fail = 1;
    st = mha_tensor_create(f.dev, MHA_F32, 1, shape, &big);
    g_fail = 0;
    expect_named(ctx, st, "mha_tensor_create");

    /* the backend refuses to open */
    mha_device_options opt;
    mha_device_options_init(&opt);
    opt.cpu_isa = "no-such-isa";
    mha_device *dev2 = NULL;
    expect_named(ctx, mha_device_open(ctx, "cpu", &opt, &dev2),
                 "mha_device_open");
    expect_named(ctx, mha_device_open_index(ctx, 0, &opt, &dev2),
                 "mha_device_open_index");

    /* the safetensors reader cannot open the file */
    expect_named(ctx,
                 mha_layer_load_safetensors(f.layer, "/nonexistent/x.st",
                                            NULL),
                 "mha_layer_load_safetensors");

    destroy_tensors(t);
    teardown(&f);
}
