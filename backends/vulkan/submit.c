/* submit.c: recording and submission. Everything between two syncs (a whole
 * forward) goes into one command buffer: run() records dispatches with the
 * barriers between them, and only sync / buffer_read (and a write that must
 * not overtake recorded work) submit and wait on a fence. Descriptor sets
 * come from pools that are reset after each wait, one set per dispatch; all
 * kernels share one set layout of MHA_VK_BINDINGS storage buffers and one
 * MHA_VK_PUSH_BYTES push-constant range. */
#include <string.h>

#include "vk_internal.h"

#define SETS_PER_POOL 256

static mha_status add_desc_pool(mha_vk_device *d)
{
    if (d->desc_pool_count == d->desc_pool_cap) {
        int cap = d->desc_pool_cap ? d->desc_pool_cap * 2 : 4;
        VkDescriptorPool *p =
            mha_host_malloc(d->host, (size_t)cap * sizeof *p);
        if (!p)
            return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                                  "vulkan: out of host memory");
        if (d->desc_pool_count)
            memcpy(p, d->desc_pools,
                   (size_t)d->desc_pool_count * sizeof *p);
        mha_host_free(d->host, d->desc_pools);
        d->desc_pools = p;
        d->desc_pool_cap = cap;
    }
    VkDescriptorPoolSize ps = {
        .type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
        .descriptorCount = SETS_PER_POOL * MHA_VK_BINDINGS,
    };
    VkDescriptorPoolCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .maxSets = SETS_PER_POOL,
        .poolSizeCount = 1,
        .pPoolSizes = &ps,
    };
    VkResult r = d->vk.vkCreateDescriptorPool(
        d->dev, &ci, NULL, &d->desc_pools[d->desc_pool_count]);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkCreateDescriptorPool");
    d->desc_pool_count++;
    return MHA_OK;
}

static mha_status alloc_set(mha_vk_device *d, VkDescriptorSet *set)
{
    if (!d->desc_pool_used || d->desc_sets_in_pool == SETS_PER_POOL) {
        if (d->desc_pool_used == d->desc_pool_count) {
            mha_status s = add_desc_pool(d);
            if (s != MHA_OK)
                return s;
        }
        d->desc_pool_used++;
        d->desc_sets_in_pool = 0;
    }
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = d->desc_pools[d->desc_pool_used - 1],
        .descriptorSetCount = 1,
        .pSetLayouts = &d->set_layout,
    };
    VkResult r = d->vk.vkAllocateDescriptorSets(d->dev, &ai, set);
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkAllocateDescriptorSets");
    d->desc_sets_in_pool++;
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
    return add_desc_pool(d);
}

void mha_vk_submit_fini(mha_vk_device *d)
{
    for (int i = 0; i < d->desc_pool_count; ++i)
        d->vk.vkDestroyDescriptorPool(d->dev, d->desc_pools[i], NULL);
    mha_host_free(d->host, d->desc_pools);
    d->desc_pools = NULL;
    mha_host_free(d->host, d->since_barrier);
    d->since_barrier = NULL;
    d->since_count = d->since_cap = 0;
    d->desc_pool_count = d->desc_pool_cap = 0;
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

mha_status mha_vk_record(mha_vk_device *d, VkCommandBuffer *cmd)
{
    if (!d->recording) {
        VkCommandBufferBeginInfo bi = {
            .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
            .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
        };
        VkResult r = d->vk.vkBeginCommandBuffer(d->cmd, &bi);
        if (r != VK_SUCCESS)
            return mha_vk_fail(d->host, d, r, "vkBeginCommandBuffer");
        d->recording = true;
        d->dispatches = 0;
        d->barriers = 0;
    }
    *cmd = d->cmd;
    return MHA_OK;
}

/* Orders what follows after every earlier shader or transfer access (also
 * those of earlier submissions: barriers work across submission order). */
static void barrier_before_dispatch(mha_vk_device *d, VkCommandBuffer cmd)
{
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT |
                         VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT,
    };
    d->vk.vkCmdPipelineBarrier(
        cmd,
        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
        VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
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

/* Barrier if needed, then remembers acc as done since the last barrier. */
static mha_status order_accesses(mha_vk_device *d, VkCommandBuffer cmd,
                                 const mha_vk_access *acc, int nacc)
{
    if (!d->dispatches || conflicts(d, acc, nacc)) {
        barrier_before_dispatch(d, cmd);
        d->since_count = 0;
        d->barriers++;
    }
    if (d->since_count + nacc > d->since_cap) {
        int cap = d->since_cap ? d->since_cap * 2 : 64;
        while (cap < d->since_count + nacc)
            cap *= 2;
        mha_vk_access *p = mha_host_malloc(d->host, (size_t)cap * sizeof *p);
        if (!p)
            return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                                  "vulkan: out of host memory");
        if (d->since_count)
            memcpy(p, d->since_barrier, (size_t)d->since_count * sizeof *p);
        mha_host_free(d->host, d->since_barrier);
        d->since_barrier = p;
        d->since_cap = cap;
    }
    for (int i = 0; i < nacc; ++i)
        if (acc[i].buf)
            d->since_barrier[d->since_count++] = acc[i];
    return MHA_OK;
}

mha_status mha_vk_dispatch(mha_vk_device *d, VkPipeline pipe,
                           const mha_vk_access bind[MHA_VK_BINDINGS],
                           const void *push, uint32_t push_size,
                           const uint32_t groups[3])
{
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    VkDescriptorSet set = VK_NULL_HANDLE;
    mha_status s = mha_vk_record(d, &cmd);
    if (s == MHA_OK)
        s = alloc_set(d, &set);
    if (s == MHA_OK)
        s = order_accesses(d, cmd, bind, MHA_VK_BINDINGS);
    if (s != MHA_OK)
        return s;
    VkDescriptorBufferInfo info[MHA_VK_BINDINGS];
    VkWriteDescriptorSet w[MHA_VK_BINDINGS];
    for (int i = 0; i < MHA_VK_BINDINGS; ++i) {
        if (bind[i].buf)
            info[i] = (VkDescriptorBufferInfo){bind[i].buf, bind[i].lo,
                                               bind[i].hi - bind[i].lo};
        else
            info[i] = (VkDescriptorBufferInfo){d->dummy->block->buf,
                                               d->dummy->offset,
                                               d->dummy->size};
        w[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = (uint32_t)i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &info[i],
        };
    }
    d->vk.vkUpdateDescriptorSets(d->dev, MHA_VK_BINDINGS, w, 0, NULL);
    d->vk.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    d->vk.vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE,
                                  d->layout, 0, 1, &set, 0, NULL);
    d->vk.vkCmdPushConstants(cmd, d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                             push_size, push);
    d->vk.vkCmdDispatch(cmd, groups[0], groups[1], groups[2]);
    d->dispatches++;
    return MHA_OK;
}

static void reset_batch(mha_vk_device *d)
{
    for (int i = 0; i < d->desc_pool_used; ++i)
        d->vk.vkResetDescriptorPool(d->dev, d->desc_pools[i], 0);
    d->desc_pool_used = 0;
    d->desc_sets_in_pool = 0;
    d->recording = false;
    d->dispatches = 0;
    d->barriers = 0;
    d->since_count = 0;
    d->vk.vkResetCommandBuffer(d->cmd, 0);
}

mha_status mha_vk_flush(mha_vk_device *d)
{
    if (!d->recording)
        return MHA_OK;
    if (d->lost) {
        reset_batch(d);
        return mha_vk_check(d);
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
    r = d->vk.vkQueueSubmit(d->queue, 1, &si, d->fence);
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
