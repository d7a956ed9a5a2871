/* faults.h: the fault-injection countdowns of the GPU backends (see
 * mha_fault_due in core/backend.h), reached from test_faults.c, which sees
 * only mha.h. Each returns NULL when the device (or context) has no such
 * point: another backend, or a backend this build lacks. */
#ifndef MHA_TEST_FAULTS_H
#define MHA_TEST_FAULTS_H

#include "mha.h"

/* Vulkan: "alloc" (vkAllocateMemory), "pipeline" (vkCreateComputePipelines),
 * "submit" (vkQueueSubmit, as VK_ERROR_DEVICE_LOST). */
int *test_fault_vulkan(mha_device *dev, const char *point);

/* OpenCL: "alloc" (clCreateBuffer), "enqueue" (clEnqueueNDRangeKernel, as
 * CL_OUT_OF_RESOURCES). */
int *test_fault_opencl(mha_device *dev, const char *point);

/* OpenCL: clBuildProgram from source, for every device of ctx. */
int *test_fault_opencl_build(mha_context *ctx);

#endif
