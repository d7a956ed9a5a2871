/* faults_vulkan.c: test_fault_vulkan (faults.h), the one file of the fault
 * suite that includes the Vulkan backend's private header. */
#include <string.h>

#include "faults.h"
#include "interop.h"
#include "vk_internal.h"

extern const mha_backend_iface mha_vulkan_backend;

int *test_fault_vulkan(mha_device *dev, const char *point)
{
    mha_vk_device *d = mha_device_backend(dev, &mha_vulkan_backend);
    if (!d)
        return NULL;
    if (strcmp(point, "alloc") == 0)
        return &d->fault_countdown;
    if (strcmp(point, "pipeline") == 0)
        return &d->fault_pipeline;
    if (strcmp(point, "submit") == 0)
        return &d->fault_submit;
    return NULL;
}
