/* interop.h: what a backend's engine-interop entry points (the functions of
 * mha_vulkan.h and mha_opencl.h, which live in the backend's folder because
 * they take API handles) need from the core: a device around handles the
 * application made, tensors around its buffers, and a forward that only
 * enqueues. The core itself never calls these. */
#ifndef MHA_CORE_INTEROP_H
#define MHA_CORE_INTEROP_H

#include "backend.h"

/* The context's services, for messages and host memory. */
mha_host *mha_context_host(mha_context *ctx);

/* The per-context state of backend iface (NULL when its init found no
 * runtime). MHA_NO_DEVICE with a message when this build lacks it. */
mha_status mha_backend_state(mha_context *ctx, const mha_backend_iface *iface,
                             void **state);

/* Makes an mha_device around dev, a device iface opened on the caller's
 * handles; desc is what mha_device_info_of reports (index -1). On failure
 * dev is closed. */
mha_status mha_device_adopt(mha_context *ctx, const mha_backend_iface *iface,
                            void *dev, const mha_device_desc *desc,
                            mha_device **out);

/* The backend device behind device when iface runs it, else NULL. */
void *mha_device_backend(const mha_device *device,
                         const mha_backend_iface *iface);
mha_context *mha_device_context(const mha_device *device);
/* st from a backend call made outside the core's wrappers: MHA_DEVICE_LOST
 * makes the device's loss sticky, as for the wrappers' own calls. */
mha_status mha_device_note(mha_device *device, mha_status st);
mha_device *mha_layer_device(const mha_layer *layer);

/* A tensor around buf, a backend buffer handle over the caller's memory of
 * capacity bytes. The tensor owns the handle (buffer_free releases it, not
 * the memory under it) and does not count it as the device's memory.
 * dtype is MHA_F32 or MHA_F16; a mask wrapped this way is additive f32.
 * fn names the public caller in messages. On failure buf is freed. */
mha_status mha_tensor_adopt(mha_device *device, const char *fn,
                            mha_dtype dtype, int ndim, const int64_t *shape,
                            void *buf, size_t capacity, mha_tensor **out);
void *mha_tensor_buffer(const mha_tensor *tensor);
mha_device *mha_tensor_device(const mha_tensor *tensor);

/* mha_decoder_forward for a backend that records into an application's
 * command buffer: the same nodes, the cache's host lengths advanced at
 * once (the device's by the recorded writes), given positions not read
 * back, no wait. The arena of a recorded step is never freed before the
 * layer. */
mha_status mha_decoder_forward_enqueue(mha_decoder *layer,
                                       const mha_decoder_forward_args *args);
mha_device *mha_decoder_device(const mha_decoder *layer);

/* mha_layer_forward without the wait: the plan's nodes go to the backend's
 * run() in order and nothing is synced. The plan is pinned from then on
 * (never evicted, its scratch never freed until the layer is destroyed),
 * because the caller's queue may still be running what was enqueued. */
mha_status mha_layer_forward_enqueue(mha_layer *layer, const char *fn,
                                     const mha_forward_args *args);

#endif /* MHA_CORE_INTEROP_H */
