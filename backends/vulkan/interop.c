/* interop.c: the entry points of include/mha_vulkan.h: adopting the
 * application's device, wrapping its buffers as tensors, and recording a
 * forward or a decoder step into its command buffer. They check the
 * public arguments, then
 * reach the backend's objects behind the opaque handles through
 * core/interop.h; the work is done by device.c (adoption), memory.c
 * (external blocks), submit.c (redirected recording) and set_cache.c. */
#include <stdint.h>

#include "interop.h"
#include "mha_vulkan.h"
#include "vk_internal.h"

extern const mha_backend_iface mha_vulkan_backend;

static mha_host *host_of(mha_device *device)
{
    return mha_context_host(mha_device_context(device));
}

/* The Vulkan device behind device, or NULL with a message. */
static mha_vk_device *vk_device(mha_device *device, const char *fn,
                                const char *what)
{
    mha_vk_device *d = mha_device_backend(device, &mha_vulkan_backend);
    if (!d)
        mha_host_error(host_of(device), MHA_INVALID_ARGUMENT,
                       "%s: %s is not on a Vulkan device", fn, what);
    return d;
}

mha_status mha_vulkan_device_info_init_sized(mha_vulkan_device_info *info,
                                             size_t struct_size)
{
    return mha_struct_init(info, struct_size, sizeof *info);
}

mha_status mha_vulkan_buffer_init_sized(mha_vulkan_buffer *buffer,
                                        size_t struct_size)
{
    return mha_struct_init(buffer, struct_size, sizeof *buffer);
}

mha_status mha_vulkan_device_adopt(mha_context *ctx,
                                   const mha_vulkan_device_info *info,
                                   const mha_device_options *options,
                                   mha_device **out)
{
    if (!ctx)
        return MHA_INVALID_ARGUMENT;
    mha_host *host = mha_context_host(ctx);
    if (!info || !out)
        return mha_host_error(host, MHA_INVALID_ARGUMENT,
                              "mha_vulkan_device_adopt: %s is NULL",
                              !info ? "info" : "out");
    void *state = NULL;
    mha_status s = mha_struct_check(host, "mha_vulkan_device_adopt",
                                    "mha_vulkan_device_info", info,
                                    sizeof *info);
    if (s == MHA_OK)
        s = mha_struct_check(host, "mha_vulkan_device_adopt",
                             "mha_device_options", options, sizeof *options);
    if (s == MHA_OK)
        s = mha_backend_state(ctx, &mha_vulkan_backend, &state);
    mha_vk_device *d = NULL;
    mha_device_desc desc;
    if (s == MHA_OK)
        s = mha_vk_adopt(state, host, info, options, &d, &desc);
    if (s == MHA_OK)
        s = mha_device_adopt(ctx, &mha_vulkan_backend, d, &desc, out);
    return mha_host_finish(host, "mha_vulkan_device_adopt", s);
}

/* What a range must be so that kernels can bind it (see mha_vulkan.h). */
static mha_status check_wrap(mha_vk_device *d, const mha_vulkan_buffer *b,
                             mha_dtype dtype)
{
    static const char fn[] = "mha_vulkan_tensor_wrap";
    VkDeviceSize es = dtype == MHA_F16 ? 2 : 4;
    const mha_vk_limits *lim = &d->phys->lim;
    VkDeviceSize align = lim->offset_align ? lim->offset_align : 1;
    if (!b || !b->buffer)
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "%s: buffer is %s", fn,
                              b ? "VK_NULL_HANDLE" : "NULL");
    if (!(b->usage & VK_BUFFER_USAGE_STORAGE_BUFFER_BIT))
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "%s: usage 0x%x lacks "
                              "VK_BUFFER_USAGE_STORAGE_BUFFER_BIT",
                              fn, (unsigned)b->usage);
    if (b->offset % es)
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "%s: offset %llu is not a multiple of the "
                              "element size %llu",
                              fn, (unsigned long long)b->offset,
                              (unsigned long long)es);
    if (b->range == 0 || b->range == VK_WHOLE_SIZE || b->range > SIZE_MAX)
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "%s: range %llu; expected the byte count of "
                              "the tensor's range (not VK_WHOLE_SIZE)",
                              fn, (unsigned long long)b->range);
    if (b->range > lim->max_range - b->offset % align)
        return mha_host_error(
            d->host, MHA_UNSUPPORTED,
            "%s: range %llu bytes (bound from offset %llu rounded down to "
            "minStorageBufferOffsetAlignment %llu) exceeds "
            "maxStorageBufferRange %llu",
            fn, (unsigned long long)b->range, (unsigned long long)b->offset,
            (unsigned long long)align, (unsigned long long)lim->max_range);
    return MHA_OK;
}

mha_status mha_vulkan_tensor_wrap(mha_device *device,
                                  const mha_vulkan_buffer *buffer,
                                  mha_dtype dtype, int ndim,
                                  const int64_t *shape, mha_tensor **out)
{
    static const char fn[] = "mha_vulkan_tensor_wrap";
    if (!device)
        return MHA_INVALID_ARGUMENT;
    if (!out)
        return mha_host_error(host_of(device), MHA_INVALID_ARGUMENT,
                              "%s: out is NULL", fn);
    mha_vk_device *d = vk_device(device, fn, "device");
    if (!d)
        return MHA_INVALID_ARGUMENT;
    mha_vk_buffer *b = NULL;
    mha_status s = mha_struct_check(d->host, fn, "mha_vulkan_buffer", buffer,
                                    sizeof *buffer);
    if (s == MHA_OK)
        s = check_wrap(d, buffer, dtype);
    if (s == MHA_OK)
        s = mha_vk_buffer_wrap(d, buffer->buffer, buffer->offset,
                               buffer->range, buffer->usage, &b);
    if (s == MHA_OK)
        s = mha_tensor_adopt(device, fn, dtype, ndim, shape, b,
                             (size_t)buffer->range, out);
    return mha_host_finish(d->host, fn, s);
}

mha_status mha_vulkan_tensor_buffer(const mha_tensor *tensor,
                                    mha_vulkan_buffer *out)
{
    if (!tensor)
        return MHA_INVALID_ARGUMENT;
    if (!vk_device(mha_tensor_device(tensor), "mha_vulkan_tensor_buffer",
                   "tensor"))
        return MHA_INVALID_ARGUMENT;
    if (!out)
        return mha_host_error(host_of(mha_tensor_device(tensor)),
                              MHA_INVALID_ARGUMENT,
                              "mha_vulkan_tensor_buffer: out is NULL");
    mha_status s = mha_struct_check(host_of(mha_tensor_device(tensor)),
                                    "mha_vulkan_tensor_buffer",
                                    "mha_vulkan_buffer", out, sizeof *out);
    if (s != MHA_OK)
        return s;
    const mha_vk_buffer *b = mha_tensor_buffer(tensor);
    out->buffer = b->block->buf;
    out->offset = b->offset;
    out->range = b->size;
    out->usage = b->block->usage;
    return mha_host_finish(host_of(mha_tensor_device(tensor)),
                           "mha_vulkan_tensor_buffer", MHA_OK);
}

/* The Vulkan device of device (that of a layer: what) with its dispatches
 * and writes redirected to cmd; NULL with *s and a message when not. */
static mha_vk_device *begin_record(mha_device *device, const char *fn,
                                   const char *what, VkCommandBuffer cmd,
                                   mha_status *s)
{
    mha_vk_device *d = vk_device(device, fn, what);
    *s = MHA_INVALID_ARGUMENT;
    if (!d)
        return NULL;
    if (!cmd) {
        mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                       "%s: cmd is VK_NULL_HANDLE", fn);
        return NULL;
    }
    *s = mha_vk_redirect(d, cmd);
    if (*s == MHA_OK)
        return d;
    mha_host_finish(d->host, fn, *s);
    return NULL;
}

mha_status mha_vulkan_layer_record(mha_layer *layer,
                                   const mha_forward_args *args,
                                   VkCommandBuffer cmd)
{
    static const char fn[] = "mha_vulkan_layer_record";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_status s;
    mha_vk_device *d = begin_record(mha_layer_device(layer), fn, "the layer",
                                    cmd, &s);
    if (!d)
        return s;
    s = mha_layer_forward_enqueue(layer, fn, args);
    mha_vk_redirect_end(d);
    return s;
}

mha_status mha_vulkan_decoder_record(mha_decoder *layer,
                                     const mha_decoder_forward_args *args,
                                     VkCommandBuffer cmd)
{
    static const char fn[] = "mha_vulkan_decoder_record";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_status s;
    mha_vk_device *d = begin_record(mha_decoder_device(layer), fn,
                                    "the layer", cmd, &s);
    if (!d)
        return s;
    s = mha_decoder_forward_enqueue(layer, args);
    mha_vk_redirect_end(d);
    return mha_host_finish(d->host, fn, s);
}
