/* queue.c: the order of libmha's commands on a device's queue. An in-order
 * queue (libmha's own, or an application's) runs them in order by itself;
 * on an application's out-of-order queue each command waits for the event
 * of the one before (the tail), so a forward's nodes, and forwards of one
 * layer sharing its scratch, never overlap. The first command enqueued while
 * mha_opencl_layer_enqueue runs also waits for the caller's wait list. */
#include "cl_internal.h"

/* The caller's wait list and the tail as one wait list: a marker over the
 * caller's events, then the pair {marker, tail}; no allocation. */
static mha_status join_tail(mha_cl_device *dev, mha_cl_order *o)
{
    cl_int err = dev->api->clEnqueueMarkerWithWaitList(
        dev->queue, dev->wait_count, dev->wait_list, &o->joined);
    if (err != CL_SUCCESS)
        return mha_cl_queue_fail(dev, "clEnqueueMarkerWithWaitList", err);
    o->pair[0] = o->joined;
    o->pair[1] = dev->tail;
    o->list = o->pair;
    o->count = 2;
    return MHA_OK;
}

mha_status mha_cl_order_begin(mha_cl_device *dev, mha_cl_order *o)
{
    o->count = dev->wait_count;
    o->list = dev->wait_list;
    o->event = NULL;
    o->made = NULL;
    o->joined = NULL;
    if (!dev->out_of_order)
        return MHA_OK;
    o->event = &o->made;
    if (!dev->tail)
        return MHA_OK;
    if (dev->wait_count)
        return join_tail(dev, o);
    o->list = &dev->tail;
    o->count = 1;
    return MHA_OK;
}

void mha_cl_order_end(mha_cl_device *dev, mha_cl_order *o, cl_int err)
{
    if (o->joined)
        dev->api->clReleaseEvent(o->joined);
    if (err != CL_SUCCESS)
        return;
    dev->wait_count = 0;
    dev->wait_list = NULL;
    if (!o->event)
        return;
    if (dev->tail)
        dev->api->clReleaseEvent(dev->tail);
    dev->tail = o->made;
}

mha_status mha_cl_queue_fail(mha_cl_device *dev, const char *call,
                             cl_int code)
{
    if (code != CL_OUT_OF_RESOURCES)
        return mha_cl_fail(dev->host, call, code);
    return mha_host_error(dev->host, MHA_DEVICE_LOST,
                          "%s failed: %s (%d): %s is treated as lost (a "
                          "fault or reset on the device); destroy it",
                          call, mha_cl_error_name(code), (int)code,
                          dev->rec->name);
}
