/* faults_opencl.c: test_fault_opencl and test_fault_opencl_build
 * (faults.h), the one file of the fault suite that includes the OpenCL
 * backend's private header. */
#include <string.h>

#include "cl_internal.h"
#include "faults.h"
#include "interop.h"

int *test_fault_opencl(mha_device *dev, const char *point)
{
    mha_cl_device *d = mha_device_backend(dev, &mha_opencl_backend);
    if (!d)
        return NULL;
    if (strcmp(point, "alloc") == 0)
        return &d->fault_alloc;
    if (strcmp(point, "enqueue") == 0)
        return &d->fault_enqueue;
    return NULL;
}

int *test_fault_opencl_build(mha_context *ctx)
{
    void *state = NULL;
    if (mha_backend_state(ctx, &mha_opencl_backend, &state) != MHA_OK ||
        !state)
        return NULL;
    return &((mha_cl_state *)state)->fault_build;
}
