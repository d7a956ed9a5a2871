/* mha_vulkan.h: running libmha inside an application's (a game or graphics
 * engine's) own Vulkan device: a libmha device on the engine's VkDevice,
 * tensors over the engine's VkBuffers, and a forward (or a decoder step)
 * recorded into a command buffer the engine is recording, with no submission, no wait and
 * no allocation per frame. The only libmha header that includes Vulkan's.
 *
 * Ownership. libmha never destroys, waits idle or submits to anything it
 * was given: the VkInstance, VkDevice, VkQueue, VkBuffers and command
 * buffers stay the engine's, and must outlive the libmha objects made on
 * them. What libmha creates on the engine's device (its memory for weights
 * and scratch, pipelines, descriptor sets, a command pool and a fence for
 * its own submissions) is freed when the object owning it is destroyed,
 * which must be after the GPU work that uses it has completed (wait on the
 * engine's fence first): mha_layer_destroy frees the layer's weights and
 * scratch, mha_tensor_destroy a wrapped tensor's descriptor sets (never the
 * VkBuffer), mha_device_destroy the rest; a command buffer that recorded a
 * forward is invalid once its layer or a tensor it used is destroyed (do
 * not submit it again). Likewise host-side writes (mha_layer_set_weight,
 * mha_tensor_upload) must not overlap recorded work that reads what they
 * write.
 *
 * Synchronisation of mha_vulkan_layer_record (Vulkan's terms):
 *
 *   when         | who     | what
 *   -------------+---------+-----------------------------------------------
 *   before       | engine  | writes of query, key, value and the masks
 *                |         | made available and visible to
 *                |         | COMPUTE_SHADER / SHADER_READ; earlier accesses
 *                |         | of output (and weights) ordered before
 *                |         | COMPUTE_SHADER / SHADER_WRITE (one global
 *                |         | VkMemoryBarrier srcStage = its stages,
 *                |         | dst = COMPUTE_SHADER, SHADER_READ|SHADER_WRITE
 *                |         | does both)
 *   first        | libmha  | a barrier COMPUTE_SHADER|TRANSFER ->
 *                |         | COMPUTE_SHADER, SHADER_WRITE|TRANSFER_WRITE ->
 *                |         | SHADER_READ|SHADER_WRITE: orders the reuse of
 *                |         | the layer's scratch after earlier recorded
 *                |         | forwards (earlier frames, earlier layers)
 *   between      | libmha  | the same barrier between dependent dispatches
 *   after        | libmha  | output (and weights) written by COMPUTE_SHADER
 *                |         | with SHADER_WRITE; nothing else of the engine's
 *                |         | is written
 *   after        | engine  | a barrier srcStage COMPUTE_SHADER, srcAccess
 *                |         | SHADER_WRITE, dst = the stage and access of its
 *                |         | next use of output (a later layer's record
 *                |         | needs none: its leading barrier covers it)
 *
 * Recorded forwards of one layer must execute in the order they were
 * recorded, on one queue (or with semaphores ordering them): they share
 * the layer's scratch. Mixing them with mha_layer_forward on the adopted
 * queue is fine: its first dispatch is behind the same barrier. libmha
 * binds a wrapped buffer from its offset rounded down to
 * minStorageBufferOffsetAlignment, so a VkBufferMemoryBarrier instead of a
 * global one must cover those bytes too.
 *
 * Threads: as in mha.h, a context and its objects are used by one thread
 * at a time; recording does not touch the queue. The calls that submit
 * and wait on an adopted queue (see mha_vulkan_device_info.queue) use it
 * only inside the call, and need the engine's external synchronisation of
 * that queue (no other thread submitting meanwhile). */
#ifndef MHA_VULKAN_H
#define MHA_VULKAN_H

#include <vulkan/vulkan_core.h>

#include "mha.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The engine's device, as mha_vulkan_device_adopt takes it. Start with
 * mha_vulkan_device_info_init, which zeroes every field ("not given") and
 * sets struct_size (see "ABI" in mha.h). */
typedef struct mha_vulkan_device_info {
    size_t struct_size;               /* sizeof, set by the init macro */
    VkInstance instance;              /* required */
    VkPhysicalDevice physical_device; /* required */
    VkDevice device;                  /* required */
    uint32_t queue_family_index;      /* a family with VK_QUEUE_COMPUTE_BIT;
                                         libmha's command pool is made for
                                         it and recorded command buffers
                                         must belong to it */
    /* Optional. With a queue of that family, the calls that submit and
     * wait keep working on this device: weight and tensor uploads and
     * downloads through staging memory, mha_layer_forward and
     * mha_layer_forward_host. They submit on it only while they run, and
     * wait on a fence of their own (never vkQueueWaitIdle). Without one
     * (VK_NULL_HANDLE) they fail with MHA_UNSUPPORTED and a message, except
     * uploads and downloads of libmha's memory that is host-visible (then
     * plain copies, e.g. on integrated GPUs). */
    VkQueue queue;
    PFN_vkGetInstanceProcAddr get_instance_proc_addr; /* required: the one
                                         the engine loaded its instance
                                         with (layers included) */
    PFN_vkGetDeviceProcAddr get_device_proc_addr; /* NULL: looked up
                                         through get_instance_proc_addr */
    uint32_t api_version;  /* VkApplicationInfo.apiVersion of the instance;
                              the device's version is the lower of this and
                              the physical device's; 1.1 at least */
    /* The device extensions the engine enabled (ppEnabledExtensionNames);
     * may be NULL when the count is 0. */
    const char *const *enabled_extensions;
    uint32_t enabled_extension_count;
    /* The pNext chain the VkDevice was created with (VkDeviceCreateInfo
     * .pNext); libmha reads the features it can use and skips other
     * structs: storageBuffer16BitAccess (VkPhysicalDevice16BitStorageFeatures
     * or VkPhysicalDeviceVulkan11Features) enables MHA_F16 layers;
     * shaderFloat16 (VkPhysicalDeviceShaderFloat16Int8Features with
     * VK_KHR_shader_float16_int8 below 1.2, or VkPhysicalDeviceVulkan12-
     * Features) is reported as MHA_FEATURE_FP16_MATH. A feature the engine
     * did not enable is never used, even when the hardware has it. NULL:
     * none. */
    const void *enabled_features;
} mha_vulkan_device_info;

MHA_API mha_status mha_vulkan_device_info_init_sized(
    mha_vulkan_device_info *info, size_t struct_size);
#define mha_vulkan_device_info_init(info)                                    \
    mha_vulkan_device_info_init_sized((info), sizeof *(info))

/* Makes *out, a libmha device on the engine's handles, which libmha keeps
 * by value and never destroys. options (may be NULL) gives the pipeline
 * cache directory as for mha_device_open. Works whether or not this
 * context found Vulkan devices of its own. Fails with MHA_UNSUPPORTED when
 * the device is below Vulkan 1.1, the queue family has no compute, or it
 * binds fewer than 9 storage buffers per shader stage (every libmha kernel
 * binds 9; maxPerStageDescriptorStorageBuffers), and
 * MHA_INVALID_ARGUMENT for missing handles. Destroy the device with
 * mha_device_destroy (after its layers and tensors). mha_device_info_of
 * reports index -1 and says in details that the device is adopted; when
 * storageBuffer16BitAccess is not enabled its name says so, and
 * mha_layer_create of an MHA_F16 layer fails with MHA_UNSUPPORTED. */
MHA_API mha_status mha_vulkan_device_adopt(mha_context *ctx,
                                           const mha_vulkan_device_info *info,
                                           const mha_device_options *options,
                                           mha_device **out);

/* A range of the engine's buffer, for mha_vulkan_tensor_wrap (and what
 * mha_vulkan_tensor_buffer reports). Start with mha_vulkan_buffer_init. */
typedef struct mha_vulkan_buffer {
    size_t struct_size; /* sizeof, set by the init macro */
    VkBuffer buffer;
    VkDeviceSize offset; /* a multiple of the element size (4 for MHA_F32,
                            2 for MHA_F16); any alignment beyond that */
    VkDeviceSize range;  /* bytes from offset that libmha may use, at least
                            the tensor's bytes; not VK_WHOLE_SIZE */
    /* The VkBufferCreateInfo.usage of buffer: it must include
     * VK_BUFFER_USAGE_STORAGE_BUFFER_BIT. mha_tensor_upload and
     * mha_tensor_download of the tensor copy through staging memory on the
     * adopted queue and need TRANSFER_DST and TRANSFER_SRC. */
    VkBufferUsageFlags usage;
} mha_vulkan_buffer;

MHA_API mha_status mha_vulkan_buffer_init_sized(mha_vulkan_buffer *buffer,
                                                size_t struct_size);
#define mha_vulkan_buffer_init(buffer)                                       \
    mha_vulkan_buffer_init_sized((buffer), sizeof *(buffer))

/* Makes *out, a tensor of dtype (MHA_F32 or MHA_F16; masks as additive
 * MHA_F32: 0 keeps, -inf masks) and shape,
 * densely laid out (row-major, as mha_tensor_create's) in the given range
 * of the engine's buffer, without copying. The buffer stays the engine's:
 * mha_tensor_destroy releases libmha's handle and the descriptor sets that
 * bind the buffer, never the buffer or its memory, and the buffer must
 * outlive the tensor. Not counted by mha_device_memory_usage. Tensors may
 * share a buffer, and their ranges may overlap. device must be a Vulkan
 * device (adopted or opened by libmha). */
MHA_API mha_status mha_vulkan_tensor_wrap(mha_device *device,
                                          const mha_vulkan_buffer *buffer,
                                          mha_dtype dtype, int ndim,
                                          const int64_t *shape,
                                          mha_tensor **out);

/* Where a tensor of a Vulkan device lives, libmha's memory (made by
 * mha_tensor_create) or a wrapped range, so the engine can bind it in its
 * own passes: *out (struct_size set by mha_vulkan_buffer_init) gets
 * buffer, offset, range and usage. The handle stays
 * libmha's and lives as long as the tensor. */
MHA_API mha_status mha_vulkan_tensor_buffer(const mha_tensor *tensor,
                                            mha_vulkan_buffer *out);

/* Records one forward of layer, with args as for mha_layer_forward (every
 * tensor on the layer's device, wrapped or not), into cmd: a primary or
 * secondary command buffer of the device's queue family in the recording
 * state, outside a render pass. Records compute dispatches, their barriers
 * and push constants, and binds libmha's own pipelines and descriptor
 * sets; the pipeline and descriptor bindings of the compute bind point are
 * left changed (rebind yours after). Nothing is submitted or waited for.
 * See the synchronisation table at the top of this file.
 *
 * The first record of a layer for a call shape creates what it needs (the
 * plan and its scratch memory, pipelines, descriptor sets; pipelines can
 * also come from the on-disk cache); later records with the same shapes
 * and tensors allocate no host memory and create no Vulkan objects. A
 * layer keeps the scratch of every shape it has recorded until it is
 * destroyed (cmd may run at any later time), so it can record at most 4
 * different call shapes (MHA_LIMIT_REACHED after that: use a layer per
 * shape, or pad). Every recorded forward of the layer reuses the same
 * scratch: they must run in recording order (see above). cmd may be
 * submitted any number of times while layer, its weights and the tensors
 * live. On failure cmd may hold part of the forward: do not submit it. */
MHA_API mha_status mha_vulkan_layer_record(mha_layer *layer,
                                           const mha_forward_args *args,
                                           VkCommandBuffer cmd);

/* Records one step of a decoder layer (what mha_decoder_forward does with
 * args: projections, RoPE, the append to the cache, attention over it,
 * output projection) into cmd, as mha_vulkan_layer_record does (the same
 * rules for cmd, and the synchronisation table above with x and positions
 * in the place of query, key and value; libmha also writes the cache's
 * keys, values and lengths, which are its own memory). Nothing is
 * submitted or waited for.
 *
 * The cache's length is data: the append's rows and the new lengths are
 * recorded. The lengths, and the default positions when positions is
 * NULL, are vkCmdUpdateBuffer writes of libmha's memory, each behind a
 * barrier COMPUTE_SHADER|TRANSFER -> TRANSFER, SHADER_WRITE|
 * TRANSFER_WRITE -> TRANSFER_WRITE, and read by later dispatches behind
 * the barrier of the table's "between" row; the cache's bindings span
 * its whole buffers. So a decode loop that records a step every frame, at
 * a growing length, creates no pipeline, descriptor set or memory and
 * allocates no host memory after the first step of its bucket of B*T (a
 * power of 2; a ring cache's first move of its rows also makes that
 * copy's descriptor sets, once). Long caches still split the keys over
 * workgroups (flash-decoding), through a scratch buffer that a recorded
 * step keeps alive until the device is destroyed.
 *
 * The cache on the host and on the device. The host side (what
 * mha_kv_cache_length reports and where the next step appends) advances
 * when the step is recorded; the device side (the lengths the attention
 * reads, the keys and values) when cmd runs. Hence:
 *  - each recorded step runs exactly once, in recording order, after the
 *    steps recorded before it (a ring cache's step may move rows: running
 *    it twice corrupts the cache); record the next frame's step anew;
 *  - mha_decoder_forward, mha_kv_cache_append, _truncate and _clear on
 *    the same cache (they write the lengths from the host) only after the
 *    recorded steps have completed (wait on the engine's fence);
 *  - on failure cmd may hold part of the step: do not submit it. A call
 *    refused by its checks (arguments, capacity, default positions)
 *    changed nothing; after any other failure the host lengths are as
 *    before the call, but a ring cache may have moved its rows on the
 *    host side only: clear it.
 * A positions tensor is read by the recorded commands, not read back, so
 * its values are not checked (keep them in 0 to 2^24 - 1); the default
 * positions are checked as by mha_decoder_forward. A layer keeps the
 * scratch of every bucket a recorded step used until it is destroyed;
 * the cache and the tensors must outlive cmd's last execution. */
MHA_API mha_status mha_vulkan_decoder_record(
    mha_decoder *layer, const mha_decoder_forward_args *args,
    VkCommandBuffer cmd);

#ifdef __cplusplus
}
#endif
#endif /* MHA_VULKAN_H */
