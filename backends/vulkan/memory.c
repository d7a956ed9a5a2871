/* memory.c: device memory for tensors. Buffers are ranges sub-allocated
 * (first fit) from a few large VkDeviceMemory blocks, each bound to one
 * VkBuffer no larger than maxStorageBufferRange, so any range of a block can
 * be bound for a kernel (ops.c binds each tensor's range from a 256-byte
 * aligned start and passes element offsets in push constants). Device-local
 * memory is preferred; on unified-memory devices (integrated, CPU) a
 * host-visible device-local type is used and mapped, so uploads and
 * downloads are plain copies; otherwise a host-visible staging buffer and
 * vkCmdCopyBuffer carry the data. Every VkDeviceMemory comes from
 * alloc_memory, the one place device allocation can fail. Buffers that wrap
 * the application's VkBuffers live in external blocks of their own
 * (mha_vk_buffer_wrap). */
#include <inttypes.h>
#include <string.h>

#include "vk_internal.h"

#define BLOCK_DEFAULT ((VkDeviceSize)64 << 20)
#define RANGE_ALIGN 256

static VkDeviceSize align_up(VkDeviceSize v, VkDeviceSize a)
{
    return (v + a - 1) / a * a;
}

static int find_type(const VkPhysicalDeviceMemoryProperties *mp,
                     uint32_t bits, VkMemoryPropertyFlags want)
{
    for (uint32_t i = 0; i < mp->memoryTypeCount; ++i)
        if ((bits & (1u << i)) &&
            (mp->memoryTypes[i].propertyFlags & want) == want)
            return (int)i;
    return -1;
}

/* Tensor memory: device-local, mapped where the device shares host memory. */
static int pick_tensor_type(mha_vk_device *d,
                            const VkPhysicalDeviceMemoryProperties *mp,
                            uint32_t bits)
{
    const VkMemoryPropertyFlags local = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                       VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int t = -1;
    if (d->phys->props.deviceType != VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU)
        t = find_type(mp, bits, local | host);
    if (t < 0)
        t = find_type(mp, bits, local);
    if (t < 0)
        t = find_type(mp, bits, 0);
    return t;
}

static int pick_staging_type(const VkPhysicalDeviceMemoryProperties *mp,
                             uint32_t bits)
{
    const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                       VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int t = find_type(mp, bits, host | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
    return t >= 0 ? t : find_type(mp, bits, host);
}

/* Creates a buffer and its memory (tensor or staging kind) and maps it when
 * the chosen type is host-visible. */
static mha_status alloc_memory(mha_vk_device *d, VkDeviceSize size,
                               bool staging, VkBuffer *buf,
                               VkDeviceMemory *mem, void **map)
{
    VkBufferCreateInfo bi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = size,
        .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                 VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                 VK_BUFFER_USAGE_TRANSFER_DST_BIT,
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    *buf = VK_NULL_HANDLE;
    *mem = VK_NULL_HANDLE;
    *map = NULL;
    VkResult r = d->vk.vkCreateBuffer(d->dev, &bi, NULL, buf);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkCreateBuffer");
    VkMemoryRequirements req;
    d->vk.vkGetBufferMemoryRequirements(d->dev, *buf, &req);
    VkPhysicalDeviceMemoryProperties mp;
    d->fn->GetPhysicalDeviceMemoryProperties(d->phys->pd, &mp);
    int type = staging ? pick_staging_type(&mp, req.memoryTypeBits)
                       : pick_tensor_type(d, &mp, req.memoryTypeBits);
    mha_status s = MHA_OK;
    if (type < 0) {
        s = mha_host_error(d->host, MHA_DEVICE_ERROR,
                           "vulkan: no suitable memory type for a %s buffer",
                           staging ? "staging" : "tensor");
        goto fail;
    }
    VkMemoryAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
        .allocationSize = req.size,
        .memoryTypeIndex = (uint32_t)type,
    };
    if (mha_fault_due(&d->fault_countdown))
        r = VK_ERROR_OUT_OF_DEVICE_MEMORY;
    else
        r = d->vk.vkAllocateMemory(d->dev, &ai, NULL, mem);
    if (r != VK_SUCCESS) {
        *mem = VK_NULL_HANDLE;
        s = mha_vk_fail(d->host, d, r, "vkAllocateMemory");
        goto fail;
    }
    r = d->vk.vkBindBufferMemory(d->dev, *buf, *mem, 0);
    if (r != VK_SUCCESS) {
        s = mha_vk_fail(d->host, d, r, "vkBindBufferMemory");
        goto fail;
    }
    VkMemoryPropertyFlags flags = mp.memoryTypes[type].propertyFlags;
    if ((flags & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) &&
        (flags & VK_MEMORY_PROPERTY_HOST_COHERENT_BIT) &&
        (staging || d->phys->lim.map_tensors)) {
        r = d->vk.vkMapMemory(d->dev, *mem, 0, VK_WHOLE_SIZE, 0, map);
        if (r != VK_SUCCESS) {
            *map = NULL;
            s = mha_vk_fail(d->host, d, r, "vkMapMemory");
            goto fail;
        }
    }
    return MHA_OK;
fail:
    if (*mem)
        d->vk.vkFreeMemory(d->dev, *mem, NULL);
    d->vk.vkDestroyBuffer(d->dev, *buf, NULL);
    *buf = VK_NULL_HANDLE;
    *mem = VK_NULL_HANDLE;
    return s;
}

static void free_memory(mha_vk_device *d, VkBuffer buf, VkDeviceMemory mem)
{
    if (buf)
        d->vk.vkDestroyBuffer(d->dev, buf, NULL);
    if (mem)
        d->vk.vkFreeMemory(d->dev, mem, NULL); /* unmaps */
}

/* ---- blocks ------------------------------------------------------------- */

static mha_status block_create(mha_vk_device *d, VkDeviceSize size,
                               mha_vk_block **out)
{
    mha_vk_block *b = mha_host_calloc(d->host, 1, sizeof *b);
    if (!b)
        return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory");
    mha_status s = alloc_memory(d, size, false, &b->buf, &b->mem, &b->map);
    if (s != MHA_OK) {
        mha_host_free(d->host, b);
        return s;
    }
    b->size = size;
    b->usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
               VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
               VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    b->bind_align = RANGE_ALIGN;
    b->next = d->blocks;
    d->blocks = b;
    *out = b;
    return MHA_OK;
}

/* Unlinks b, forgets the descriptor sets that bind its VkBuffer and frees
 * what is ours (an external block's VkBuffer is the application's). */
static void block_destroy(mha_vk_device *d, mha_vk_block *b)
{
    mha_vk_block **p = b->external ? &d->ext_blocks : &d->blocks;
    while (*p && *p != b)
        p = &(*p)->next;
    if (*p)
        *p = b->next;
    mha_vk_set_cache_evict(d, b->buf);
    if (!b->external)
        free_memory(d, b->buf, b->mem);
    mha_host_free(d->host, b);
}

/* First fit in b: links buf into the block's sorted list on success. */
static bool block_place(mha_vk_block *b, mha_vk_buffer *buf)
{
    VkDeviceSize end = 0;
    mha_vk_buffer *prev = NULL, *cur = b->first;
    for (; cur; prev = cur, cur = cur->next) {
        if (cur->offset >= end + buf->size)
            break;
        end = align_up(cur->offset + cur->size, RANGE_ALIGN);
    }
    if (!cur && end + buf->size > b->size)
        return false;
    buf->block = b;
    buf->offset = end;
    buf->prev = prev;
    buf->next = cur;
    if (prev)
        prev->next = buf;
    else
        b->first = buf;
    if (cur)
        cur->prev = buf;
    return true;
}

mha_status mha_vk_buffer_alloc(mha_vk_device *d, size_t size,
                               mha_vk_buffer **out)
{
    VkDeviceSize range = d->phys->lim.max_range;
    if (size > range)
        return mha_host_error(
            d->host, MHA_OUT_OF_MEMORY,
            "vulkan: a buffer of %zu bytes exceeds maxStorageBufferRange "
            "(%" PRIu64 " bytes) of %s",
            size, (uint64_t)range, d->phys->props.deviceName);
    mha_vk_buffer *buf = mha_host_calloc(d->host, 1, sizeof *buf);
    if (!buf)
        return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory");
    buf->size = size ? align_up(size, 4) : 4;
    for (mha_vk_block *b = d->blocks; b; b = b->next)
        if (block_place(b, buf)) {
            *out = buf;
            return MHA_OK;
        }
    /* a new block: the default size, or a dedicated one for a big buffer */
    VkDeviceSize bsize = d->block_size;
    if (buf->size > bsize / 2)
        bsize = align_up(buf->size, RANGE_ALIGN);
    if (bsize > range)
        bsize = buf->size;
    mha_vk_block *b = NULL;
    mha_status s = block_create(d, bsize, &b);
    if (s != MHA_OK) {
        mha_host_free(d->host, buf);
        return s;
    }
    block_place(b, buf);
    *out = buf;
    return MHA_OK;
}

/* The external block of the application's buffer, made on first use. */
static mha_status external_block(mha_vk_device *d, VkBuffer buf,
                                 VkBufferUsageFlags usage,
                                 mha_vk_block **out)
{
    for (mha_vk_block *b = d->ext_blocks; b; b = b->next)
        if (b->buf == buf) {
            b->usage |= usage;
            *out = b;
            return MHA_OK;
        }
    mha_vk_block *b = mha_host_calloc(d->host, 1, sizeof *b);
    if (!b)
        return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory");
    b->buf = buf;
    b->external = true;
    b->usage = usage;
    b->bind_align = d->phys->lim.offset_align ? d->phys->lim.offset_align : 1;
    b->next = d->ext_blocks;
    d->ext_blocks = b;
    *out = b;
    return MHA_OK;
}

mha_status mha_vk_buffer_wrap(mha_vk_device *d, VkBuffer buf,
                              VkDeviceSize offset, VkDeviceSize size,
                              VkBufferUsageFlags usage, mha_vk_buffer **out)
{
    /* A second handle on our memory would give its ranges two owners (the
     * descriptor sets of one freed with the other). */
    for (const mha_vk_block *own = d->blocks; own; own = own->next)
        if (own->buf == buf)
            return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                                  "mha_vulkan_tensor_wrap: the buffer is "
                                  "libmha's own (from "
                                  "mha_vulkan_tensor_buffer); use the tensor "
                                  "it came from");
    if (offset > UINT64_MAX - size)
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "mha_vulkan_tensor_wrap: offset + range "
                              "overflows");
    mha_vk_buffer *w = mha_host_calloc(d->host, 1, sizeof *w);
    mha_vk_block *b = NULL;
    mha_status s = w ? external_block(d, buf, usage, &b)
                     : mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                                      "vulkan: out of host memory");
    if (s != MHA_OK) {
        mha_host_free(d->host, w);
        return s;
    }
    w->block = b;
    w->offset = offset;
    w->size = size;
    w->next = b->first;
    if (b->first)
        b->first->prev = w;
    b->first = w;
    if (offset + size > b->size)
        b->size = offset + size;
    *out = w;
    return MHA_OK;
}

void mha_vk_buffer_free(mha_vk_device *d, mha_vk_buffer *buf)
{
    if (!buf)
        return;
    mha_vk_block *b = buf->block;
    if (buf->prev)
        buf->prev->next = buf->next;
    else
        b->first = buf->next;
    if (buf->next)
        buf->next->prev = buf->prev;
    /* Unsubmitted work here was left by a failed call (see
     * mha_vk_redirect) and may use the range: drop it, never submit from
     * a destroy. */
    mha_vk_discard(d);
    if (!b->first) {
        mha_host_free(d->host, buf);
        block_destroy(d, b);
        return;
    }
    /* The block lives on: forget the sets of this range only, so the set
     * cache does not grow with every tensor made and destroyed. */
    VkDeviceSize lo = buf->offset - buf->offset % b->bind_align;
    VkDeviceSize hi = buf->offset + buf->size;
    mha_host_free(d->host, buf);
    mha_vk_set_cache_evict_range(d, b, lo, hi);
}

/* ---- staging and transfers ---------------------------------------------- */

static mha_status staging_reserve(mha_vk_device *d, VkDeviceSize size)
{
    if (d->staging.size >= size)
        return MHA_OK;
    free_memory(d, d->staging.buf, d->staging.mem);
    memset(&d->staging, 0, sizeof d->staging);
    VkDeviceSize want = align_up(size < (4u << 20) ? (4u << 20) : size,
                                 RANGE_ALIGN);
    mha_status s = alloc_memory(d, want, true, &d->staging.buf,
                                &d->staging.mem, &d->staging.map);
    if (s == MHA_OK && !d->staging.map)
        s = mha_host_error(d->host, MHA_DEVICE_ERROR,
                           "vulkan: staging memory is not host-visible");
    if (s != MHA_OK)
        return s;
    d->staging.size = want;
    return MHA_OK;
}

/* The range is inside b, and an unmapped b allows the staged copy
 * (usage is the transfer bit the copy needs). */
static mha_status check_range(mha_vk_device *d, const mha_vk_buffer *b,
                              size_t offset, size_t size, const char *what,
                              VkBufferUsageFlags usage)
{
    if (offset > b->size || size > b->size - offset)
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "vulkan: %s of %zu bytes at %zu is past the "
                              "buffer's %" PRIu64 " bytes",
                              what, size, offset, (uint64_t)b->size);
    if (!b->block->map && !(b->block->usage & usage))
        return mha_host_error(
            d->host, MHA_UNSUPPORTED,
            "vulkan: a %s of a wrapped VkBuffer copies through a staging "
            "buffer and needs %s in the usage it was created (and wrapped) "
            "with",
            what,
            usage == VK_BUFFER_USAGE_TRANSFER_DST_BIT
                ? "VK_BUFFER_USAGE_TRANSFER_DST_BIT"
                : "VK_BUFFER_USAGE_TRANSFER_SRC_BIT");
    return MHA_OK;
}

/* Records a copy between the staging buffer and b, then submits and waits. */
static mha_status staged_copy(mha_vk_device *d, mha_vk_buffer *b,
                              size_t offset, size_t size, bool upload)
{
    VkCommandBuffer cmd;
    mha_status s = mha_vk_record(d, &cmd);
    if (s != MHA_OK)
        return s;
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_SHADER_READ_BIT,
        .dstAccessMask = VK_ACCESS_TRANSFER_READ_BIT |
                         VK_ACCESS_TRANSFER_WRITE_BIT,
    };
    d->vk.vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                               VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0,
                               NULL, 0, NULL);
    VkBufferCopy region = {
        .srcOffset = upload ? 0 : b->offset + offset,
        .dstOffset = upload ? b->offset + offset : 0,
        .size = size,
    };
    if (upload)
        d->vk.vkCmdCopyBuffer(cmd, d->staging.buf, b->block->buf, 1, &region);
    else
        d->vk.vkCmdCopyBuffer(cmd, b->block->buf, d->staging.buf, 1, &region);
    return mha_vk_flush(d);
}

mha_status mha_vk_buffer_write(mha_vk_device *d, mha_vk_buffer *b,
                               size_t offset, const void *src, size_t size)
{
    mha_status s = mha_vk_check(d);
    if (s == MHA_OK)
        s = check_range(d, b, offset, size, "write",
                        VK_BUFFER_USAGE_TRANSFER_DST_BIT);
    if (s != MHA_OK || !size)
        return s;
    /* While recording into an application's command buffer the write is
     * recorded too: the commands around it run later. */
    if (d->ext_cmd)
        return mha_vk_record_write(d, b, offset, src, size);
    /* Work recorded before this write must see the old contents. */
    if (d->recording && (s = mha_vk_flush(d)) != MHA_OK)
        return s;
    if (b->block->map) {
        memcpy((char *)b->block->map + b->offset + offset, src, size);
        return MHA_OK;
    }
    if ((s = staging_reserve(d, size)) != MHA_OK)
        return s;
    memcpy(d->staging.map, src, size);
    return staged_copy(d, b, offset, size, true);
}

mha_status mha_vk_buffer_read(mha_vk_device *d, mha_vk_buffer *b,
                              size_t offset, void *dst, size_t size)
{
    mha_status s = mha_vk_check(d);
    if (s == MHA_OK)
        s = check_range(d, b, offset, size, "read",
                        VK_BUFFER_USAGE_TRANSFER_SRC_BIT);
    if (s != MHA_OK || !size)
        return s;
    if (b->block->map) {
        if (d->recording && (s = mha_vk_flush(d)) != MHA_OK)
            return s;
        memcpy(dst, (const char *)b->block->map + b->offset + offset, size);
        return MHA_OK;
    }
    if ((s = staging_reserve(d, size)) != MHA_OK ||
        (s = staged_copy(d, b, offset, size, false)) != MHA_OK)
        return s;
    memcpy(dst, d->staging.map, size);
    return MHA_OK;
}

/* ---- init/fini -------------------------------------------------------- */

mha_status mha_vk_memory_init(mha_vk_device *d)
{
    d->block_size = BLOCK_DEFAULT;
    if (d->block_size > d->phys->lim.max_range)
        d->block_size = d->phys->lim.max_range / RANGE_ALIGN * RANGE_ALIGN;
    return mha_vk_buffer_alloc(d, RANGE_ALIGN, &d->dummy);
}

static void free_blocks(mha_vk_device *d, mha_vk_block *const *list)
{
    while (*list) {
        mha_vk_block *b = *list;
        while (b->first) {
            mha_vk_buffer *buf = b->first;
            b->first = buf->next;
            mha_host_free(d->host, buf);
        }
        block_destroy(d, b);
    }
}

void mha_vk_memory_fini(mha_vk_device *d)
{
    free_blocks(d, &d->blocks);
    free_blocks(d, &d->ext_blocks);
    d->dummy = NULL;
    d->scratch = NULL;
    free_memory(d, d->staging.buf, d->staging.mem);
    memset(&d->staging, 0, sizeof d->staging);
}
