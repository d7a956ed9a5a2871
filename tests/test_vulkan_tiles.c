/* test_vulkan_tiles.c: the Vulkan fused attention skips the key tiles that
 * lie wholly above the causal diagonal. Counted through the backend's
 * tile_visits hook (vk_internal.h): the (row, key) pairs its loaded key
 * tiles serve, a measure that does not depend on the rows per workgroup
 * (causal workgroups have fewer). Without a mask every row meets every key;
 * causal attention serves about half as many. Includes the backend's
 * private header, like faults_vulkan.c. */
#include <criterion/criterion.h>

#include "interop.h"
#include "tiles_common.h"
#include "vk_internal.h"

extern const mha_backend_iface mha_vulkan_backend;

enum { H = 8, T = 512, D = 64 };

static void check_device(mha_context *ctx, const test_device *td)
{
    mha_device *dev = test_open(ctx, td);
    mha_vk_device *vk = mha_device_backend(dev, &mha_vulkan_backend);
    cr_assert(vk, "%s: not a Vulkan device", td->label);
    tiles_case c;
    tiles_open(&c, dev, H, T, D);
    vk->tile_visits = c.counter;
    const unsigned full = (unsigned)tiles_run(&c, 0);
    const unsigned causal = (unsigned)tiles_run(&c, MHA_CAUSAL_TOP_LEFT);
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
    tiles_close(&c);
    mha_device_destroy(dev);
}

Test(vulkan_tiles, causal_serves_about_half_the_key_tiles, .timeout = 300)
{
    tiles_each_device("vulkan", check_device);
}
