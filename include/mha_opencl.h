/* mha_opencl.h: running libmha inside an application's own OpenCL context
 * and command queue (a game or graphics engine, a media pipeline). The only
 * public header that includes the OpenCL headers; mha.h has everything else.
 * Define CL_TARGET_OPENCL_VERSION before including it as you would for
 * <CL/cl.h> (libmha needs the 1.2 types and entry points only).
 *
 * Ownership. libmha never releases a handle it was given: it takes its own
 * reference (clRetainContext, clRetainCommandQueue, clRetainDevice,
 * clRetainMemObject) on what it keeps and drops only that reference when the
 * libmha object is destroyed. The caller keeps and releases its own. Destroying
 * a libmha device, layer or tensor never waits on the caller's queue, and
 * leaves the caller's context, queue and buffers usable; it may happen while
 * enqueued forwards still run (OpenCL keeps the kernels and memory they use
 * alive until they finish).
 *
 * Calls. libmha calls the caller's objects through the OpenCL runtime it
 * loads at run time (the ICD loader libOpenCL.so.1 or OpenCL.dll, Apple's
 * OpenCL framework), so the handles must come from a driver that runtime
 * dispatches to: any ICD driver, which is what an application linking
 * libOpenCL gets too.
 * Nothing here is thread-safe beyond mha.h's rule: a context and its objects
 * are used by one thread at a time; the caller may use its queue from other
 * threads as OpenCL allows.
 *
 * Ordering (see mha_opencl_layer_enqueue): a forward's commands wait for the
 * caller's wait list, run in order among themselves, and are followed by a
 * marker whose event completes when the outputs are written. */
#ifndef MHA_OPENCL_H
#define MHA_OPENCL_H

#include <CL/cl.h>

#include "mha.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Makes a libmha device that runs on the caller's context, device and
 * queue: every command of libmha for this device, transfers included, goes
 * to queue. queue must belong to context and device (checked; a queue of
 * another context or device is MHA_INVALID_ARGUMENT). The device needs
 * OpenCL C 1.2 (MHA_UNSUPPORTED otherwise). Kernels are built for it here,
 * from the program binary cache where options->cache_dir allows, as
 * mha_device_open does; options may be NULL.
 *
 * queue may be in-order or out-of-order. On an out-of-order queue libmha
 * chains its own commands with events (each waits for the previous one of
 * this device), so its work is ordered exactly as on an in-order queue;
 * the caller's commands are ordered against libmha's only through the
 * events of mha_opencl_layer_enqueue (or, in-order, by the queue).
 *
 * The blocking calls of mha.h work on the device as on any other: weight
 * setters, mha_tensor_upload/download, mha_layer_forward and
 * mha_layer_forward_host enqueue on queue and wait (blocking transfers,
 * clFinish), so on an in-order queue they also wait for whatever the caller
 * enqueued before; do not make them while queue waits on a user event that
 * only this thread would set.
 *
 * libmha retains context, device and queue; mha_device_destroy releases
 * those references. mha_device_info_of reports the device with index -1.
 * MHA_NO_DEVICE when this build has no OpenCL backend, ctx was created with
 * the opencl backend left out (mha_context_options.backends), or the ICD
 * loader could not be loaded; MHA_INVALID_ARGUMENT when a handle is NULL or the
 * driver refuses it. Handles must be live: a released one cannot be told
 * from a valid one (OpenCL's rule for every call). */
MHA_API mha_status mha_opencl_device_adopt(mha_context *ctx,
                                           cl_context context,
                                           cl_device_id device,
                                           cl_command_queue queue,
                                           const mha_device_options *options,
                                           mha_device **out);

/* A tensor over the caller's buffer mem from byte offset on, without a
 * copy; mem may be a sub-buffer. device is an adopted device, and mem must
 * belong to its context (checked). dtype is MHA_F32 (or
 * MHA_F16 where the device has MHA_FEATURE_FP16_STORAGE); a mask is wrapped
 * as additive MHA_F32 (0 keeps, -INFINITY masks), since a wrapped buffer
 * cannot be converted. The tensor's elements are stored contiguously in
 * row-major order at mem + offset; offset must be a multiple of the element
 * size, and mem must hold offset plus the tensor's bytes
 * (MHA_BUFFER_TOO_SMALL otherwise).
 *
 * Flags: libmha's kernels read inputs and write output and weights, so a
 * tensor over CL_MEM_READ_ONLY memory can only be an input and one over
 * CL_MEM_WRITE_ONLY memory only a result; a forward that breaks this fails
 * with MHA_INVALID_ARGUMENT naming the op. CL_MEM_HOST_* flags limit mha_tensor_upload
 * and mha_tensor_download as they limit clEnqueueWrite/ReadBuffer.
 *
 * libmha retains mem while the tensor lives; mha_tensor_destroy releases
 * that reference and never touches the memory. The tensor does not count in
 * mha_device_memory_usage. */
MHA_API mha_status mha_opencl_tensor_wrap(mha_device *device, cl_mem mem,
                                          size_t offset, mha_dtype dtype,
                                          int ndim, const int64_t *shape,
                                          mha_tensor **out);

/* Enqueues one forward of layer (mha_layer_forward's arguments, tensors of
 * the layer's device) on the device's queue and returns without waiting:
 * no clFinish, no clWaitForEvents, no blocking transfer, no clFlush (flush
 * or wait as your frame loop does).
 *
 *   - The forward's first command waits for the num_events_in_wait_list
 *     events of event_wait_list (OpenCL's rules: both 0/NULL or both set;
 *     events of the device's context, user events included). On an
 *     in-order queue it also follows everything enqueued before.
 *   - Its commands run in order; consecutive forwards on one device, of any
 *     layers, run in enqueue order, so a layer's output can feed the next
 *     layer's input with no event between them.
 *   - event_out (may be NULL) receives a new event, owned by the caller
 *     (clReleaseEvent), that completes when output (and weights) are
 *     written: a marker enqueued after the forward. Wait for it, or pass it
 *     in a wait list, before reading the results or writing the inputs
 *     again; on an in-order queue later commands follow it anyway.
 *
 * The layer keeps the scratch memory of every shape enqueued this way until
 * it is destroyed (at most 4 shapes per layer; more is MHA_LIMIT_REACHED,
 * see mha.h). Errors in the arguments (shapes, dtypes, devices, the wait
 * list) are found before anything is enqueued; a buffer-flag violation
 * (see mha_opencl_tensor_wrap) or a driver error is found at the command
 * concerned, and the forward's earlier commands then stay enqueued and
 * still run. On failure *event_out is left untouched. */
MHA_API mha_status mha_opencl_layer_enqueue(mha_layer *layer,
                                            const mha_forward_args *args,
                                            cl_uint num_events_in_wait_list,
                                            const cl_event *event_wait_list,
                                            cl_event *event_out);

#ifdef __cplusplus
}
#endif
#endif /* MHA_OPENCL_H */
