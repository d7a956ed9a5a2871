/* timer.c: the backend's timer methods (profiles, mha-bench --profile): a
 * query pool of MHA_TIMER_SLOTS timestamps written with vkCmdWriteTimestamp
 * at the bottom of the pipe (after everything recorded before it has
 * finished) into the batch's command buffer, and read after the wait. Ticks
 * become nanoseconds by the device's timestampPeriod, masked to the queue
 * family's timestampValidBits; a queue family with 0 valid bits keeps no
 * timestamps (MHA_UNSUPPORTED, the core then uses its host clock). */
#include "vk_internal.h"

/* The pool, made on the first mark; MHA_UNSUPPORTED where the queue keeps
 * no timestamps. */
static mha_status timer_ready(mha_vk_device *d)
{
    if (d->timer_pool)
        return MHA_OK;
    VkQueueFamilyProperties q[32];
    uint32_t n = 32;
    d->fn->GetPhysicalDeviceQueueFamilyProperties(d->phys->pd, &n, q);
    uint32_t bits = d->phys->queue_family < n
                        ? q[d->phys->queue_family].timestampValidBits
                        : 0;
    float period = d->phys->props.limits.timestampPeriod;
    if (bits == 0 || period <= 0.0f)
        return MHA_UNSUPPORTED;
    VkQueryPoolCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
        .queryType = VK_QUERY_TYPE_TIMESTAMP,
        .queryCount = MHA_TIMER_SLOTS,
    };
    VkResult r = d->vk.vkCreateQueryPool(d->dev, &ci, NULL, &d->timer_pool);
    if (r != VK_SUCCESS) {
        d->timer_pool = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreateQueryPool");
    }
    d->timer_period = period;
    d->timer_mask = bits >= 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1;
    return MHA_OK;
}

mha_status mha_vk_timer_mark(mha_vk_device *d, int slot)
{
    /* An application's command buffer is submitted when it chooses, so
     * there is no wait after which to read the pool. */
    if (d->ext_cmd || !d->queue || slot < 0 || slot >= MHA_TIMER_SLOTS)
        return MHA_UNSUPPORTED;
    mha_status s = timer_ready(d);
    VkCommandBuffer cmd;
    if (s == MHA_OK)
        s = mha_vk_record(d, &cmd);
    if (s != MHA_OK)
        return s;
    /* Slot 0 starts a batch: its queries become available again. */
    if (slot == 0)
        d->vk.vkCmdResetQueryPool(cmd, d->timer_pool, 0, MHA_TIMER_SLOTS);
    d->vk.vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT,
                              d->timer_pool, (uint32_t)slot);
    return MHA_OK;
}

mha_status mha_vk_timer_read(mha_vk_device *d, int count, uint64_t *ns)
{
    if (!d->timer_pool || count < 0 || count > MHA_TIMER_SLOTS)
        return MHA_UNSUPPORTED;
    if (count == 0)
        return MHA_OK;
    VkResult r = d->vk.vkGetQueryPoolResults(
        d->dev, d->timer_pool, 0, (uint32_t)count,
        (size_t)count * sizeof *ns, ns, sizeof *ns,
        VK_QUERY_RESULT_64_BIT);
    /* Not ready: a batch that failed halfway was discarded, and its
     * queries were never written (waiting for them would never end). */
    if (r == VK_NOT_READY)
        return MHA_UNSUPPORTED;
    if (r != VK_SUCCESS)
        return mha_vk_fail(d->host, d, r, "vkGetQueryPoolResults");
    for (int i = 0; i < count; ++i)
        ns[i] = (uint64_t)((double)(ns[i] & d->timer_mask) * d->timer_period);
    return MHA_OK;
}

void mha_vk_timer_fini(mha_vk_device *d)
{
    if (d->timer_pool)
        d->vk.vkDestroyQueryPool(d->dev, d->timer_pool, NULL);
    d->timer_pool = VK_NULL_HANDLE;
}
