/* test_opencl_tiles.c: the OpenCL fused attention skips the key tiles that
 * lie wholly above the causal diagonal: counted through the backend's
 * tile_visits hook (cl_internal.h), causal attention loads about half the
 * tiles of the same attention without the mask. Includes the backend's
 * private header, like faults_opencl.c. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "cl_internal.h"
#include "common.h"
#include "context.h"
#include "interop.h"

enum { H = 2, T = 1024, D = 64 };

/* A [1, H, T, D] head view of a [T, H * D] buffer. */
static mha_tdesc head_view(void *buf)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = 1, t.ne[1] = H, t.ne[2] = T, t.ne[3] = D;
    t.nb[0] = T * H * D, t.nb[1] = D, t.nb[2] = H * D, t.nb[3] = 1;
    t.buf = buf;
    return t;
}

/* Key tiles the attention node loads on dev, counted in counter. */
static int tiles_loaded(mha_device *dev, mha_node *node, void *counter)
{
    int n = 0;
    cr_assert_eq(mha_dev_write(dev, counter, 0, &n, sizeof n), MHA_OK);
    cr_assert_eq(mha_dev_run(dev, node), MHA_OK);
    cr_assert_eq(mha_dev_sync(dev), MHA_OK);
    cr_assert_eq(mha_dev_read(dev, counter, 0, &n, sizeof n), MHA_OK);
    return n;
}

static void check_device(mha_context *ctx, const test_device *td)
{
    mha_device *dev = test_open(ctx, td);
    mha_cl_device *cl = mha_device_backend(dev, &mha_opencl_backend);
    cr_assert(cl, "%s: not an OpenCL device", td->label);
    const size_t bytes = (size_t)T * H * D * sizeof(float);
    float *x = malloc(bytes);
    for (size_t i = 0; i < bytes / sizeof *x; i++)
        x[i] = sinf(0.37f * (float)i);
    void *buf[4], *counter = NULL;
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(mha_dev_alloc(dev, bytes, &buf[i]), MHA_OK);
        cr_assert_eq(mha_dev_write(dev, buf[i], 0, x, bytes), MHA_OK);
    }
    cr_assert_eq(mha_dev_alloc(dev, sizeof(int), &counter), MHA_OK);
    mha_node node;
    memset(&node, 0, sizeof node);
    node.op = MHA_OP_ATTENTION;
    node.src[MHA_SRC_Q] = head_view(buf[0]);
    node.src[MHA_SRC_K] = head_view(buf[1]);
    node.src[MHA_SRC_V] = head_view(buf[2]);
    node.dst = head_view(buf[3]);
    node.params.scale = 0.125f;
    node.params.mask_cols = T;
    cr_assert(mha_dev_supports(dev, &node), "%s declines the attention",
              td->label);
    cl->tile_visits = counter;
    const int full = tiles_loaded(dev, &node, counter);
    node.params.causal = 1;
    const int causal = tiles_loaded(dev, &node, counter);
    cl->tile_visits = NULL;
    cr_log_info("%s: %d key tiles without a mask, %d causal", td->label,
                full, causal);
    cr_assert_gt(full, 0, "%s: no tile counted", td->label);
    cr_assert(causal >= 0.45 * full && causal <= 0.6 * full,
              "%s: causal loads %d of %d key tiles, not about half",
              td->label, causal, full);
    for (int i = 0; i < 4; i++)
        mha_dev_free(dev, buf[i], bytes);
    mha_dev_free(dev, counter, sizeof(int));
    free(x);
    mha_device_destroy(dev);
}

Test(opencl_tiles, causal_loads_about_half_the_key_tiles, .timeout = 300)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++)
        if (strncmp(devs[i].label, "opencl", 6) == 0) {
            check_device(ctx, &devs[i]);
            ran++;
        }
    mha_context_destroy(ctx);
    if (!ran)
        cr_skip_test("no OpenCL device");
}
