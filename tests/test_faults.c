/* test_faults.c: fault injection in the GPU backends through their test
 * countdowns (faults.h): device allocation failure, kernel or pipeline
 * build failure, and a lost device (a Vulkan submit that reports
 * VK_ERROR_DEVICE_LOST, an OpenCL enqueue that reports CL_OUT_OF_RESOURCES).
 * Each failure must come back as its status with a message naming the call,
 * leave no device memory behind (host leaks: the sanitizer build), and leave
 * the context, its other devices and their layers working. A lost device
 * refuses all further work with MHA_DEVICE_LOST. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "faults.h"
#include "mha.h"

#define E 8
#define H 2
#define L 3

typedef int *(*fault_fn)(mha_device *dev, const char *point);

static mha_context *context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    return ctx;
}

/* The backend's best device, pipeline and binary caches off so every build
 * happens (and can fail) here; NULL when the build or machine has none. */
static mha_device *open_dev(mha_context *ctx, const char *backend)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = "";
    mha_device *dev = NULL;
    mha_status st = mha_device_open(ctx, backend, &o, &dev);
    if (st != MHA_OK) {
        const char *req = getenv("MHA_REQUIRE");
        cr_assert(!(req && strstr(req, backend)),
                  "%s required but not opened: %s", backend,
                  mha_context_errmsg(ctx));
        return NULL;
    }
    return dev;
}

static mha_status set_weights(mha_layer *layer)
{
    float w[3 * E * E];
    for (int i = 0; i < 3 * E * E; i++)
        w[i] = (float)((i * 37) % 17 - 8) / 16.0f;
    const int64_t in_w[2] = {3 * E, E}, in_b[1] = {3 * E}, out_w[2] = {E, E},
                  out_b[1] = {E};
    mha_status st = mha_layer_set_weight(layer, "in_proj_weight", w, 2, in_w);
    if (st == MHA_OK)
        st = mha_layer_set_weight(layer, "in_proj_bias", w + 5, 1, in_b);
    if (st == MHA_OK)
        st = mha_layer_set_weight(layer, "out_proj.weight", w + 7, 2, out_w);
    if (st == MHA_OK)
        st = mha_layer_set_weight(layer, "out_proj.bias", w + 11, 1, out_b);
    return st;
}

/* A layer with its weights set, or the first failing status. */
static mha_status make_layer(mha_device *dev, mha_layer **out)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E, H);
    *out = NULL;
    mha_status st = mha_layer_create(dev, &cfg, out);
    if (st == MHA_OK && (st = set_weights(*out)) != MHA_OK) {
        mha_layer_destroy(*out);
        *out = NULL;
    }
    return st;
}

/* One self-attention forward of x (L, E) through host memory. */
static mha_status forward(mha_layer *layer, float out[L * E])
{
    float x[L * E];
    for (int i = 0; i < L * E; i++)
        x[i] = sinf(0.3f * (float)i);
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = (mha_host_array){x, MHA_F32, 2, {L, E}};
    a.key = a.value = a.query;
    a.output = out;
    a.output_count = L * E;
    return mha_layer_forward_host(layer, &a);
}

/* The reference output, from the CPU device of ctx. */
static void reference(mha_context *ctx, float want[L * E])
{
    mha_device *cpu = open_dev(ctx, "cpu");
    mha_layer *layer = NULL;
    cr_assert_eq(make_layer(cpu, &layer), MHA_OK);
    cr_assert_eq(forward(layer, want), MHA_OK);
    mha_layer_destroy(layer);
    mha_device_destroy(cpu);
}

/* A context, the reference output and the backend's device; NULL (and
 * nothing left open) when there is no such device. */
static mha_device *start(const char *backend, mha_context **ctx,
                         float want[L * E])
{
    *ctx = context();
    reference(*ctx, want);
    mha_device *dev = open_dev(*ctx, backend);
    if (!dev)
        mha_context_destroy(*ctx);
    return dev;
}

/* layer computes the reference again. */
static void expect_works(mha_context *ctx, mha_layer *layer,
                         const float want[L * E], const char *what)
{
    float got[L * E];
    mha_status st = forward(layer, got);
    cr_assert_eq(st, MHA_OK, "%s: %s: %s", what, mha_status_str(st),
                 mha_context_errmsg(ctx));
    for (int i = 0; i < L * E; i++)
        cr_assert(fabsf(got[i] - want[i]) < 1e-4f, "%s: [%d] %g vs %g", what,
                  i, (double)got[i], (double)want[i]);
}

static void expect_status(mha_context *ctx, mha_status got, mha_status want,
                          const char *needle, const char *what)
{
    cr_assert_eq(got, want, "%s: %s, expected %s: %s", what,
                 mha_status_str(got), mha_status_str(want),
                 mha_context_errmsg(ctx));
    cr_assert(strstr(mha_context_errmsg(ctx), needle),
              "%s: message \"%s\" lacks \"%s\"", what,
              mha_context_errmsg(ctx), needle);
}

static uint64_t in_use(mha_device *dev)
{
    uint64_t n = 0;
    mha_device_memory_usage(dev, &n, NULL);
    return n;
}

#ifdef MHA_TEST_OPENCL
static int has_backend(mha_context *ctx, const char *backend)
{
    int n = 0;
    mha_device_count(ctx, &n);
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        if (mha_device_get_info(ctx, i, &info) == MHA_OK &&
            strcmp(info.backend, backend) == 0)
            return 1;
    }
    return 0;
}

/* Layer creation, weights and a forward with the n-th device allocation
 * failing, for n = 1, 2, ... until one runs without reaching it: every
 * failure is MHA_OUT_OF_MEMORY naming the call, frees what it took, and
 * the device works afterwards. (Vulkan sub-allocates from blocks made at
 * open, so test_vulkan's device_allocation_failures drives its point.) */
static void allocation_failures(const char *backend, fault_fn point,
                                const char *call)
{
    float want[L * E];
    mha_context *ctx = NULL;
    mha_device *dev = start(backend, &ctx, want);
    if (!dev)
        return;
    int *countdown = point(dev, "alloc");
    cr_assert_not_null(countdown);
    int failures = 0;
    for (int n = 1; n < 64; n++) {
        uint64_t before = in_use(dev);
        *countdown = n;
        mha_layer *layer = NULL;
        float out[L * E];
        mha_status st = make_layer(dev, &layer);
        if (st == MHA_OK)
            st = forward(layer, out);
        int reached = *countdown == 0;
        *countdown = 0;
        if (!reached) {
            cr_assert_eq(st, MHA_OK, "n=%d: %s", n, mha_context_errmsg(ctx));
            mha_layer_destroy(layer);
            break;
        }
        expect_status(ctx, st, MHA_OUT_OF_MEMORY, call, backend);
        failures++;
        if (layer)
            expect_works(ctx, layer, want, "the layer after a failure");
        mha_layer_destroy(layer);
        cr_assert_eq(in_use(dev), before, "n=%d: device memory left", n);
    }
    cr_assert_gt(failures, 0);
    cr_log_info("%s: %d allocation failures handled", backend, failures);
    mha_layer *layer = NULL;
    cr_assert_eq(make_layer(dev, &layer), MHA_OK);
    expect_works(ctx, layer, want, "after every failure");
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

Test(faults, opencl_buffer_allocation_failure)
{
    allocation_failures("opencl", test_fault_opencl, "clCreateBuffer");
}

/* The common program is built at open: a failed build refuses the open
 * (nothing left behind) and a second open works. */
Test(faults, opencl_build_failure_at_open)
{
    mha_context *ctx = context();
    float want[L * E];
    reference(ctx, want);
    int *countdown = test_fault_opencl_build(ctx);
    if (!countdown || !has_backend(ctx, "opencl")) {
        mha_context_destroy(ctx);
        return;
    }
    *countdown = 1;
    mha_device *dev = NULL;
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = "";
    expect_status(ctx, mha_device_open(ctx, "opencl", &o, &dev),
                  MHA_DEVICE_ERROR, "clBuildProgram", "open");
    cr_assert_null(dev);
    dev = open_dev(ctx, "opencl");
    cr_assert_not_null(dev);
    mha_layer *layer = NULL;
    cr_assert_eq(make_layer(dev, &layer), MHA_OK);
    expect_works(ctx, layer, want, "a device opened after the failure");
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}
#endif

/* A kernel built at its first use (the fused attention program of OpenCL,
 * a Vulkan pipeline) fails: the forward fails naming the call, and the
 * next one builds it and works. */
static void build_failure_in_forward(const char *backend, int *(*arm)(
                                         mha_context *, mha_device *),
                                     const char *call)
{
    float want[L * E];
    mha_context *ctx = NULL;
    mha_device *dev = start(backend, &ctx, want);
    if (!dev)
        return;
    mha_layer *layer = NULL;
    cr_assert_eq(make_layer(dev, &layer), MHA_OK);
    *arm(ctx, dev) = 1;
    float out[L * E];
    expect_status(ctx, forward(layer, out), MHA_DEVICE_ERROR, call,
                  "forward with a failing build");
    expect_works(ctx, layer, want, "the next forward");
    mha_layer_destroy(layer);
    cr_assert_eq(in_use(dev), 0);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

#ifdef MHA_TEST_OPENCL
static int *cl_build(mha_context *ctx, mha_device *dev)
{
    (void)dev;
    return test_fault_opencl_build(ctx);
}

Test(faults, opencl_build_failure_in_a_forward)
{
    build_failure_in_forward("opencl", cl_build, "clBuildProgram");
}
#endif

#ifdef MHA_TEST_VULKAN
static int *vk_pipeline(mha_context *ctx, mha_device *dev)
{
    (void)ctx;
    return test_fault_vulkan(dev, "pipeline");
}

Test(faults, vulkan_pipeline_failure_in_a_forward)
{
    build_failure_in_forward("vulkan", vk_pipeline,
                             "vkCreateComputePipelines");
}
#endif

/* Every call that needs the device is refused with MHA_DEVICE_LOST. */
static void expect_refused(mha_context *ctx, mha_device *dev,
                           mha_layer *layer, mha_tensor *t)
{
    float out[L * E], v[L * E] = {0};
    const int64_t shape[2] = {L, E};
    mha_tensor *t2 = NULL;
    mha_layer *l2 = NULL;
    const char *lost = "was lost";
    expect_status(ctx, forward(layer, out), MHA_DEVICE_LOST, lost,
                  "forward again");
    expect_status(ctx, mha_tensor_upload(t, v, sizeof v), MHA_DEVICE_LOST,
                  lost, "upload");
    expect_status(ctx, mha_tensor_download(t, v, sizeof v), MHA_DEVICE_LOST,
                  lost, "download");
    expect_status(ctx, mha_tensor_create(dev, MHA_F32, 2, shape, &t2),
                  MHA_DEVICE_LOST, lost, "tensor_create");
    cr_assert_null(t2);
    expect_status(ctx, make_layer(dev, &l2), MHA_DEVICE_LOST, lost,
                  "layer_create");
    cr_assert_null(l2);
    expect_status(ctx, set_weights(layer), MHA_DEVICE_LOST, lost,
                  "set_weight");
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = a.key = a.value = t;
    a.output = t;
    expect_status(ctx, mha_layer_forward(layer, &a), MHA_DEVICE_LOST, lost,
                  "mha_layer_forward");
}

/* point fails one queue call as a lost device: that call returns
 * MHA_DEVICE_LOST naming the driver's code, the device then refuses all
 * work, and the CPU device, a second device of the same backend and their
 * layers (made before and after) keep working; everything destroys. */
static void device_lost(const char *backend, fault_fn point,
                        const char *where, const char *code)
{
    float want[L * E];
    mha_context *ctx = NULL;
    mha_device *dev = start(backend, &ctx, want);
    if (!dev)
        return;
    mha_device *cpu = open_dev(ctx, "cpu");
    mha_device *twin = open_dev(ctx, backend);
    mha_layer *layer = NULL, *cpu_layer = NULL, *twin_layer = NULL;
    cr_assert_eq(make_layer(dev, &layer), MHA_OK);
    cr_assert_eq(make_layer(cpu, &cpu_layer), MHA_OK);
    cr_assert_eq(make_layer(twin, &twin_layer), MHA_OK);
    const int64_t shape[2] = {L, E};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 2, shape, &t), MHA_OK);
    expect_works(ctx, layer, want, "before the loss");

    *point(dev, where) = 1;
    float out[L * E];
    expect_status(ctx, forward(layer, out), MHA_DEVICE_LOST, code,
                  "the forward that loses the device");
    expect_refused(ctx, dev, layer, t);

    expect_works(ctx, cpu_layer, want, "the cpu layer");
    expect_works(ctx, twin_layer, want, "the twin device's layer");
    mha_layer *fresh = NULL;
    cr_assert_eq(make_layer(twin, &fresh), MHA_OK);
    expect_works(ctx, fresh, want, "a new layer on the twin device");
    mha_layer_destroy(fresh);

    cr_assert_eq(mha_tensor_destroy(t), MHA_OK);
    cr_assert_eq(mha_layer_destroy(layer), MHA_OK);
    cr_assert_eq(in_use(dev), 0, "device memory left on the lost device");
    cr_assert_eq(mha_device_destroy(dev), MHA_OK);
    expect_works(ctx, twin_layer, want, "the twin after the lost one closed");
    mha_layer_destroy(twin_layer);
    mha_layer_destroy(cpu_layer);
    mha_device_destroy(twin);
    mha_device_destroy(cpu);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
}

#ifdef MHA_TEST_VULKAN
Test(faults, vulkan_submit_reports_device_lost)
{
    device_lost("vulkan", test_fault_vulkan, "submit",
                "VK_ERROR_DEVICE_LOST");
}
#endif

#ifdef MHA_TEST_OPENCL
Test(faults, opencl_enqueue_reports_out_of_resources)
{
    device_lost("opencl", test_fault_opencl, "enqueue",
                "CL_OUT_OF_RESOURCES");
}
#endif
