/* volk_impl.c: compiles volk (the Vulkan meta-loader) into the backend and
 * adds the one thing its API lacks: loading a device table through a
 * vkGetDeviceProcAddr we choose. volkLoadDeviceTable always goes through
 * volk's process-wide vkGetDeviceProcAddr; our devices use their instance's
 * own, and an adopted device the application's (which may come from
 * another loader or a layer chain than ours). */
#include <volk.c>

#include "vk_internal.h"

typedef struct device_loader {
    PFN_vkGetDeviceProcAddr gdpa;
    VkDevice dev;
} device_loader;

static PFN_vkVoidFunction load_device_fn(void *context, const char *name)
{
    const device_loader *l = context;
    return l->gdpa(l->dev, name);
}

void mha_vk_load_device_table(struct VolkDeviceTable *table, VkDevice dev,
                              PFN_vkGetDeviceProcAddr gdpa)
{
    device_loader l = {gdpa, dev};
    volkGenLoadDeviceTable(table, &l, load_device_fn);
}
