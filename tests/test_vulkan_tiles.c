/* test_vulkan_tiles.c: the Vulkan fused attention skips the key tiles that
 * lie wholly above the causal diagonal. Counted through the backend's
 * tile_visits hook (vk_internal.h): the (row, key) pairs its loaded key
 * tiles serve, a measure that does not depend on the rows per workgroup
 * (causal workgroups have fewer). Without a mask every row meets every key;
 * causal attention serves about half as many. Includes the backend's
 * private header, like faults_vulkan.c. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "interop.h"
#include "vk_internal.h"

extern const mha_backend_iface mha_vulkan_backend;

enum { H = 8, T = 512, D = 64 };

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

/* (row, key) pairs the attention node's loaded tiles serve on dev. */
static unsigned pairs_served(mha_device *dev, mha_node *node, void *counter)
{
    unsigned n = 0;
    cr_assert_eq(mha_dev_write(dev, counter, 0, &n, sizeof n), MHA_OK);
    cr_assert_eq(mha_dev_run(dev, node), MHA_OK);
    cr_assert_eq(mha_dev_sync(dev), MHA_OK);
    cr_assert_eq(mha_dev_read(dev, counter, 0, &n, sizeof n), MHA_OK);
    return n;
}

static void check_device(mha_context *ctx, const test_device *td)
{
    mha_device *dev = test_open(ctx, td);
    mha_vk_device *vk = mha_device_backend(dev, &mha_vulkan_backend);
    cr_assert(vk, "%s: not a Vulkan device", td->label);
    const size_t bytes = (size_t)T * H * D * sizeof(float);
    float *x = malloc(bytes);
    for (size_t i = 0; i < bytes / sizeof *x; i++)
        x[i] = sinf(0.37f * (float)i);
    void *buf[4], *counter = NULL;
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(mha_dev_alloc(dev, bytes, &buf[i]), MHA_OK);
        cr_assert_eq(mha_dev_write(dev, buf[i], 0, x, bytes), MHA_OK);
    }
    cr_assert_eq(mha_dev_alloc(dev, sizeof(unsigned), &counter), MHA_OK);
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
    vk->tile_visits = counter;
    const unsigned full = pairs_served(dev, &node, counter);
    node.params.causal = MHA_CAUSAL_TOP_LEFT;
    const unsigned causal = pairs_served(dev, &node, counter);
    vk->tile_visits = NULL;
    cr_log_info("%s: %u (row, key) pairs without a mask, %u causal",
                td->label, full, causal);
    cr_assert_eq(full, (unsigned)H * T * T,
                 "%s: without a mask the tiles serve %u pairs, not every "
                 "row's every key (%u)", td->label, full, (unsigned)H * T * T);
    cr_assert(causal >= (unsigned)H * T * (T + 1) / 2,
              "%s: causal serves %u pairs, fewer than the attendable ones",
              td->label, causal);
    cr_assert(causal >= 0.4 * full && causal <= 0.65 * full,
              "%s: causal serves %u of %u pairs, not about half", td->label,
              causal, full);
    for (int i = 0; i < 4; i++)
        mha_dev_free(dev, buf[i], bytes);
    mha_dev_free(dev, counter, sizeof(unsigned));
    free(x);
    mha_device_destroy(dev);
}

Test(vulkan_tiles, causal_serves_about_half_the_key_tiles, .timeout = 300)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++)
        if (strncmp(devs[i].label, "vulkan", 6) == 0) {
            check_device(ctx, &devs[i]);
            ran++;
        }
    mha_context_destroy(ctx);
    if (!ran)
        cr_skip_test("no Vulkan device");
}
