/* timer.c: the backend's timer methods (profiles, mha-bench --profile): a
 * marker per timestamp slot, which completes when every command enqueued
 * before it has (clEnqueueMarkerWithWaitList with no list), and its
 * CL_PROFILING_COMMAND_END after the wait. libmha's own queues are made
 * with CL_QUEUE_PROFILING_ENABLE; an application's queue without it keeps
 * no timestamps (MHA_UNSUPPORTED, the core then uses its host clock). */
#include "cl_internal.h"

static bool queue_profiles(mha_cl_device *dev)
{
    if (dev->timer_profiling == 0) {
        cl_command_queue_properties p = 0;
        cl_int err = dev->api->clGetCommandQueueInfo(
            dev->queue, CL_QUEUE_PROPERTIES, sizeof p, &p, NULL);
        dev->timer_profiling =
            err == CL_SUCCESS && (p & CL_QUEUE_PROFILING_ENABLE) ? 1 : 2;
    }
    return dev->timer_profiling == 1;
}

static void release_slot(mha_cl_device *dev, int slot)
{
    if (dev->timer_events[slot])
        dev->api->clReleaseEvent(dev->timer_events[slot]);
    dev->timer_events[slot] = NULL;
}

mha_status mha_cl_timer_mark(void *d, int slot)
{
    mha_cl_device *dev = d;
    if (slot < 0 || slot >= MHA_TIMER_SLOTS || !queue_profiles(dev))
        return MHA_UNSUPPORTED;
    release_slot(dev, slot);
    cl_int err = dev->api->clEnqueueMarkerWithWaitList(
        dev->queue, 0, NULL, &dev->timer_events[slot]);
    if (err != CL_SUCCESS) {
        dev->timer_events[slot] = NULL;
        return mha_cl_queue_fail(dev, "clEnqueueMarkerWithWaitList", err);
    }
    return MHA_OK;
}

mha_status mha_cl_timer_read(void *d, int count, uint64_t *ns)
{
    mha_cl_device *dev = d;
    if (count < 0 || count > MHA_TIMER_SLOTS)
        return MHA_UNSUPPORTED;
    for (int i = 0; i < count; i++) {
        cl_ulong t = 0;
        cl_int err = dev->timer_events[i]
                         ? dev->api->clGetEventProfilingInfo(
                               dev->timer_events[i], CL_PROFILING_COMMAND_END,
                               sizeof t, &t, NULL)
                         : CL_INVALID_EVENT;
        if (err != CL_SUCCESS)
            return MHA_UNSUPPORTED;
        ns[i] = (uint64_t)t;
    }
    return MHA_OK;
}

void mha_cl_timer_fini(mha_cl_device *dev)
{
    for (int i = 0; i < MHA_TIMER_SLOTS; i++)
        release_slot(dev, i);
}
