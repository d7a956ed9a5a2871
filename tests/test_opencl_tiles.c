/* test_opencl_tiles.c: the OpenCL fused attention skips the key tiles that
 * lie wholly above the causal diagonal: counted through the backend's
 * tile_visits hook (cl_internal.h), causal attention loads about half the
 * tiles of the same attention without the mask. Includes the backend's
 * private header, like faults_opencl.c. */
#include <criterion/criterion.h>
#include <string.h>

#include "cl_internal.h"
#include "interop.h"
#include "tiles_common.h"

enum { H = 2, T = 1024, D = 64 };

static void check_device(mha_context *ctx, const test_device *td)
{
    mha_device *dev = test_open(ctx, td);
    mha_cl_device *cl = mha_device_backend(dev, &mha_opencl_backend);
    cr_assert(cl, "%s: not an OpenCL device", td->label);
    tiles_case c;
    tiles_open(&c, dev, H, T, D);
    cl->tile_visits = c.counter;
    const int full = tiles_run(&c, 0);
    const int causal = tiles_run(&c, 1);
    cl->tile_visits = NULL;
    cr_log_info("%s: %d key tiles without a mask, %d causal", td->label,
                full, causal);
    cr_assert_gt(full, 0, "%s: no tile counted", td->label);
    cr_assert(causal >= 0.45 * full && causal <= 0.6 * full,
              "%s: causal loads %d of %d key tiles, not about half",
              td->label, causal, full);
    tiles_close(&c);
    mha_device_destroy(dev);
}

Test(opencl_tiles, causal_loads_about_half_the_key_tiles, .timeout = 300)
{
    tiles_each_device("opencl", check_device);
}
