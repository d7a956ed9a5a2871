/* submit.c: recording and submission. Everything between two syncs (a whole
 * forward) goes into one command buffer: run() records dispatches with the
 * barriers between them, and only sync / buffer_read (and a write that must
 * not overtake recorded work) submit and wait on a fence. Descriptor sets
 * come from pools that are reset after each wait, one set per dispatch; all
 * kernels share one set layout of MHA_VK_BINDINGS storage buffers and one
 * MHA_VK_PUSH_BYTES push-constant range. While mha_vulkan_layer_record
 * runs, dispatches go to the application's command buffer instead, with
 * the cached, never-reset sets of set_cache.c, and nothing is submitted. */
#include <string.h>

#include "vk_internal.h"

#define SETS_PER_POOL 256

mha_status mha_vk_desc_pools_add(mha_vk_device *d, mha_vk_desc_pools *pools,
                                 uint32_t sets,
                                 VkDescriptorPoolCreateFlags flags)
{
    mha_vk_desc_pool *p = mha_vk_grow(d->host, pools->at, pools->count,
                                      &pools->cap, pools->count + 1,
                                      sizeof *p);
    if (!p)
        return MHA_OUT_OF_MEMORY;
    pools->at = p;
    VkDescriptorPoolSize ps = {
        .type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
        .descriptorCount = sets * MHA_VK_BINDINGS,
    };
    VkDescriptorPoolCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .flags = flags,
        .maxSets = sets,
        .poolSizeCount = 1,
        .pPoolSizes = &ps,
    };
    mha_vk_desc_pool *pool = &pools->at[pools->count];
    VkResult r = d->vk.vkCreateDescriptorPool(d->dev, &ci, NULL, &pool->pool);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkCreateDescriptorPool");
    pool->room = sets;
    pools->count++;
    return MHA_OK;
}

void mha_vk_desc_pools_destroy(mha_vk_device *d, mha_vk_desc_pools *pools)
{
    for (int i = 0; i < pools->count; ++i)
        d->vk.vkDestroyDescriptorPool(d->dev, pools->at[i].pool, NULL);
    mha_host_free(d->host, pools->at);
    memset(pools, 0, sizeof *pools);
}

/* One set from the per-batch pools: the last one in use, or the next. */
static mha_status alloc_set(mha_vk_device *d, VkDescriptorSet *set)
{
    mha_vk_desc_pools *pools = &d->batch_pools;
    if (!d->batch_pools_used || !pools->at[d->batch_pools_used - 1].room) {
        if (d->batch_pools_used == pools->count) {
            mha_status s = mha_vk_desc_pools_add(d, pools, SETS_PER_POOL, 0);
            if (s != MHA_OK)
                return s;
        }
        d->batch_pools_used++;
    }
    mha_vk_desc_pool *pool = &pools->at[d->batch_pools_used - 1];
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = pool->pool,
        .descriptorSetCount = 1,
        .pSetLayouts = &d->set_layout,
    };
    VkResult r = d->vk.vkAllocateDescriptorSets(d->dev, &ai, set);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkAllocateDescriptorSets");
    pool->room--;
    return MHA_OK;
}

mha_status mha_vk_submit_init(mha_vk_device *d)
{
    VkCommandPoolCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
        .queueFamilyIndex = d->phys->queue_family,
    };
    VkResult r = d->vk.vkCreateCommandPool(d->dev, &pi, NULL, &d->cmd_pool);
    if (r != VK_SUCCESS) {
        d->cmd_pool = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreateCommandPool");
    }
    VkCommandBufferAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = d->cmd_pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1,
    };
    r = d->vk.vkAllocateCommandBuffers(d->dev, &ai, &d->cmd);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkAllocateCommandBuffers");
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    r = d->vk.vkCreateFence(d->dev, &fi, NULL, &d->fence);
    if (r != VK_SUCCESS) {
        d->fence = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreateFence");
    }
    return mha_vk_desc_pools_add(d, &d->batch_pools, SETS_PER_POOL, 0);
}

void mha_vk_submit_fini(mha_vk_device *d)
{
    mha_vk_set_cache_fini(d);
    mha_vk_desc_pools_destroy(d, &d->batch_pools);
    d->batch_pools_used = 0;
    mha_host_free(d->host, d->since_barrier);
    d->since_barrier = NULL;
    d->since_count = d->since_cap = 0;
    if (d->fence)
        d->vk.vkDestroyFence(d->dev, d->fence, NULL);
    if (d->cmd_pool)
        d->vk.vkDestroyCommandPool(d->dev, d->cmd_pool, NULL);
    d->fence = VK_NULL_HANDLE;
    d->cmd_pool = VK_NULL_HANDLE;
}

mha_status mha_vk_check(mha_vk_device *d)
{
    if (d->lost)
        return mha_host_error(d->host, MHA_DEVICE_LOST,
                              "vulkan: device %s was lost; close it",
                              d->phys->props.deviceName);
    return mha_vk_take_validation_error(d->st);
}

/* Forgets what was recorded since the last barrier: the next dispatch
 * starts with the leading barrier (see order_accesses). */
static void restart_ordering(mha_vk_device *d)
{
    d->dispatches = 0;
    d->barriers = 0;
    d->since_count = 0;
}

mha_status mha_vk_record(mha_vk_device *d, VkCommandBuffer *cmd)
{
    if (d->ext_cmd) {
        *cmd = d->ext_cmd;
        return MHA_OK;
    }
    if (!d->recording) {
        VkCommandBufferBeginInfo bi = {
            .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
            .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
        };
        VkResult r = d->vk.vkBeginCommandBuffer(d->cmd, &bi);
        if (r != VK_SUCCESS)
            return mha_vk_fail(d->host, d, r, "vkBeginCommandBuffer");
        d->recording = true;
        restart_ordering(d);
    }
    *cmd = d->cmd;
    return MHA_OK;
}

/* Orders the stage and accesses dst that follow after every earlier
 * shader or transfer access (also those of earlier submissions: barriers
 * work across submission order). */
static void barrier_after_all(mha_vk_device *d, VkCommandBuffer cmd,
                              VkPipelineStageFlags stage, VkAccessFlags dst)
{
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT |
                         VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = dst,
    };
    d->vk.vkCmdPipelineBarrier(
        cmd,
        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
        stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

static void barrier_before_dispatch(mha_vk_device *d, VkCommandBuffer cmd)
{
    barrier_after_all(d, cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                      VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
}

static bool conflicts(const mha_vk_device *d, const mha_vk_access *acc,
                      int nacc)
{
    for (int i = 0; i < nacc; ++i)
        for (int j = 0; j < d->since_count; ++j) {
            const mha_vk_access *e = &d->since_barrier[j];
            if ((acc[i].write || e->write) && acc[i].buf == e->buf &&
                acc[i].lo < e->hi && e->lo < acc[i].hi)
                return true;
        }
    return false;
}

/* Remembers acc as done since the last barrier. */
static mha_status remember(mha_vk_device *d, const mha_vk_access *acc,
                           int nacc)
{
    mha_vk_access *p =
        mha_vk_grow(d->host, d->since_barrier, d->since_count,
                    &d->since_cap, d->since_count + nacc, sizeof *p);
    if (!p)
        return MHA_OUT_OF_MEMORY;
    d->since_barrier = p;
    for (int i = 0; i < nacc; ++i)
        if (acc[i].buf)
            d->since_barrier[d->since_count++] = acc[i];
    return MHA_OK;
}

/* Barrier if needed, then remembers acc as done since the last barrier. */
static mha_status order_accesses(mha_vk_device *d, VkCommandBuffer cmd,
                                 const mha_vk_access *acc, int nacc)
{
    if (!d->dispatches || conflicts(d, acc, nacc)) {
        barrier_before_dispatch(d, cmd);
        d->since_count = 0;
        d->barriers++;
    }
    return remember(d, acc, nacc);
}

/* vkCmdUpdateBuffer's limit per command (and its 4-byte granularity). */
#define UPDATE_MAX 65536u

/* Orders a transfer write after every earlier access of the queue: it
 * overwrites what earlier dispatches (earlier frames too) read or wrote. */
static void barrier_before_update(mha_vk_device *d, VkCommandBuffer cmd)
{
    barrier_after_all(d, cmd, VK_PIPELINE_STAGE_TRANSFER_BIT,
                      VK_ACCESS_TRANSFER_WRITE_BIT);
    d->barriers++;
}

mha_status mha_vk_record_write(mha_vk_device *d, mha_vk_buffer *b,
                               size_t offset, const void *src, size_t size)
{
    VkDeviceSize at = b->offset + offset;
    if (size % 4 || at % 4 ||
        !(b->block->usage & VK_BUFFER_USAGE_TRANSFER_DST_BIT))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: a write of %zu bytes at byte %llu "
                              "cannot be recorded (vkCmdUpdateBuffer needs "
                              "4-byte multiples and TRANSFER_DST usage)",
                              size, (unsigned long long)at);
    barrier_before_update(d, d->ext_cmd);
    for (size_t done = 0; done < size; done += UPDATE_MAX) {
        size_t n = size - done < UPDATE_MAX ? size - done : UPDATE_MAX;
        d->vk.vkCmdUpdateBuffer(d->ext_cmd, b->block->buf, at + done, n,
                                (const char *)src + done);
    }
    /* the next dispatch that reads these bytes gets a barrier first (the
     * one above ordered the transfer only, so earlier dispatches stay) */
    mha_vk_access acc = {b->block->buf, at, at + size, true};
    return remember(d, &acc, 1);
}

void mha_vk_write_set(mha_vk_device *d, VkDescriptorSet set,
                      const VkDescriptorBufferInfo *info)
{
    VkWriteDescriptorSet w[MHA_VK_BINDINGS];
    for (int i = 0; i < MHA_VK_BINDINGS; ++i)
        w[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = (uint32_t)i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &info[i],
        };
    d->vk.vkUpdateDescriptorSets(d->dev, MHA_VK_BINDINGS, w, 0, NULL);
}

/* A set with these bindings: a fresh one from the per-batch pools, or the
 * cached one while recording into the application's command buffer (which
 * may still be pending when our pools are next reset). */
static mha_status set_for(mha_vk_device *d,
                          const VkDescriptorBufferInfo *info,
                          VkDescriptorSet *set)
{
    if (d->ext_cmd)
        return mha_vk_set_cache_get(d, info, set);
    mha_status s = alloc_set(d, set);
    if (s == MHA_OK)
        mha_vk_write_set(d, *set, info);
    return s;
}

mha_status mha_vk_dispatch(mha_vk_device *d, VkPipeline pipe,
                           const mha_vk_access bind[MHA_VK_BINDINGS],
                           const void *push, uint32_t push_size,
                           const uint32_t groups[3])
{
    VkDescriptorBufferInfo info[MHA_VK_BINDINGS];
    for (int i = 0; i < MHA_VK_BINDINGS; ++i) {
        if (bind[i].buf)
            info[i] = (VkDescriptorBufferInfo){bind[i].buf, bind[i].lo,
                                               bind[i].hi - bind[i].lo};
        else
            info[i] = (VkDescriptorBufferInfo){d->dummy->block->buf,
                                               d->dummy->offset,
                                               d->dummy->size};
    }
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    VkDescriptorSet set = VK_NULL_HANDLE;
    mha_status s = mha_vk_record(d, &cmd);
    if (s == MHA_OK)
        s = set_for(d, info, &set);
    if (s == MHA_OK)
        s = order_accesses(d, cmd, bind, MHA_VK_BINDINGS);
    if (s != MHA_OK)
        return s;
    d->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    d->vk.vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE,
                                  d->layout, 0, 1, &set, 0, NULL);
    d->vk.vkCmdPushConstants(cmd, d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                             push_size, push);
    d->vk.vkCmdDispatch(cmd, groups[0], groups[1], groups[2]);
    d->dispatches++;
    return MHA_OK;
}

mha_status mha_vk_redirect(mha_vk_device *d, VkCommandBuffer cmd)
{
    /* Work of ours still unsubmitted was left by a call that failed
     * halfway (every call that succeeds submits what it recorded): drop
     * it, since recording must neither mix it into the application's
     * command buffer nor touch the queue. */
    mha_vk_discard(d);
    mha_status s = mha_vk_check(d);
    if (s != MHA_OK)
        return s;
    d->ext_cmd = cmd;
    /* The first dispatch gets the leading barrier, which orders it (and
     * the reuse of the layer's scratch) after every earlier compute and
     * transfer command of the queue, ours and the application's. */
    restart_ordering(d);
    return MHA_OK;
}

void mha_vk_redirect_end(mha_vk_device *d)
{
    d->ext_cmd = VK_NULL_HANDLE;
    restart_ordering(d);
}

static void reset_batch(mha_vk_device *d)
{
    for (int i = 0; i < d->batch_pools_used; ++i) {
        d->vk.vkResetDescriptorPool(d->dev, d->batch_pools.at[i].pool, 0);
        d->batch_pools.at[i].room = SETS_PER_POOL;
    }
    d->batch_pools_used = 0;
    d->recording = false;
    restart_ordering(d);
    d->vk.vkResetCommandBuffer(d->cmd, 0);
}

void mha_vk_discard(mha_vk_device *d)
{
    if (d->recording)
        reset_batch(d);
}

mha_status mha_vk_flush(mha_vk_device *d)
{
    if (!d->recording)
        return MHA_OK;
    if (d->lost) {
        reset_batch(d);
        return mha_vk_check(d);
    }
    if (!d->queue) {
        reset_batch(d);
        return mha_host_error(
            d->host, MHA_UNSUPPORTED,
            "vulkan: this device was adopted without a VkQueue, so libmha "
            "cannot submit; mha_layer_forward, mha_layer_forward_host and "
            "transfers through staging memory need one (give "
            "mha_vulkan_device_adopt a queue, or record the forward with "
            "mha_vulkan_layer_record)");
    }
    /* Make every device write visible to host reads after the wait. */
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT |
                         VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT,
    };
    d->vk.vkCmdPipelineBarrier(
        d->cmd,
        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
        VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    VkResult r = d->vk.vkEndCommandBuffer(d->cmd);
    if (r != VK_SUCCESS) {
        reset_batch(d);
        return mha_vk_fail(d->host, d, r, "vkEndCommandBuffer");
    }
    mha_host_log(d->host, MHA_LOG_DEBUG,
                 "vulkan: submitting %u dispatches with %u barriers",
                 d->dispatches, d->barriers);
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
        .commandBufferCount = 1,
        .pCommandBuffers = &d->cmd,
    };
    const char *call = "vkQueueSubmit";
    r = mha_fault_due(&d->fault_submit)
            ? VK_ERROR_DEVICE_LOST
            : d->vk.vkQueueSubmit(d->queue, 1, &si, d->fence);
    if (r == VK_SUCCESS) {
        call = "vkWaitForFences";
        r = d->vk.vkWaitForFences(d->dev, 1, &d->fence, VK_TRUE, UINT64_MAX);
        if (r == VK_SUCCESS)
            d->vk.vkResetFences(d->dev, 1, &d->fence);
    }
    reset_batch(d);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, call);
    return mha_vk_take_validation_error(d->st);
}
