/* interop.c: the entry points of mha_opencl.h, which let an application run
 * libmha on its own cl_context, device and command queue: adopting them as
 * a libmha device, wrapping its cl_mem buffers as tensors, and enqueueing a
 * forward between the application's own commands, ordered by events. The
 * core's side of this is core/interop.h. */
#include <limits.h>

/* cl_internal.h first: it sets the OpenCL headers' target version. */
#include "cl_internal.h"
#include "interop.h"
#include "mha_opencl.h"

/* ---- checks of the caller's handles ------------------------------------- */

/* A query of a caller's handle failed: the handle is not one of a live
 * object, or the driver refuses it. */
static mha_status bad_handle(mha_host *host, const char *fn, const char *what,
                             const char *call, cl_int err)
{
    return mha_host_error(host, MHA_INVALID_ARGUMENT,
                          "%s: %s is not usable: %s failed: %s (%d)", fn, what,
                          call, mha_cl_error_name(err), (int)err);
}

/* The OpenCL device behind device, or an error naming what it is. */
static mha_status device_of(mha_device *device, const char *fn,
                            mha_cl_device **out)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    *out = mha_device_backend(device, &mha_opencl_backend);
    if (*out)
        return MHA_OK;
    mha_device_info info;
    mha_device_info_of(device, &info);
    return mha_host_error(mha_context_host(mha_device_context(device)),
                          MHA_INVALID_ARGUMENT,
                          "%s: the device is %s:%d (%s), not an OpenCL device",
                          fn, info.backend, info.backend_index, info.name);
}

/* The context's OpenCL state, which holds the loaded ICD loader. */
static mha_status runtime_of(mha_context *ctx, const char *fn,
                             mha_cl_state **out)
{
    void *state = NULL;
    mha_status s = mha_backend_state(ctx, &mha_opencl_backend, &state);
    if (s != MHA_OK)
        return s;
    *out = state;
    if (!*out)
        return mha_host_error(mha_context_host(ctx), MHA_NO_DEVICE,
                              "%s: this context left the opencl backend out "
                              "(mha_context_options.backends), so it loaded "
                              "no OpenCL ICD loader to call the runtime "
                              "behind these handles",
                              fn);
    if (!(*out)->lib)
        return mha_host_error(mha_context_host(ctx), MHA_NO_DEVICE,
                              "%s: libmha could not load the OpenCL ICD "
                              "loader (libOpenCL.so.1), so it cannot call "
                              "the OpenCL runtime behind these handles",
                              fn);
    return MHA_OK;
}

/* queue must be one of context and device; tells whether it is
 * out-of-order. */
static mha_status check_queue(mha_cl_state *st, const char *fn,
                              cl_context context, cl_device_id device,
                              cl_command_queue queue, int *out_of_order)
{
    cl_context qctx = NULL;
    cl_device_id qdev = NULL;
    cl_command_queue_properties props = 0;
    cl_int err = st->api.clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT,
                                               sizeof qctx, &qctx, NULL);
    if (err == CL_SUCCESS)
        err = st->api.clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE,
                                            sizeof qdev, &qdev, NULL);
    if (err == CL_SUCCESS)
        err = st->api.clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES,
                                            sizeof props, &props, NULL);
    if (err != CL_SUCCESS)
        return bad_handle(st->host, fn, "queue", "clGetCommandQueueInfo",
                          err);
    const char *wrong =
        qctx != context  ? "belongs to another cl_context than context"
        : qdev != device ? "was created for another device than device"
                         : NULL;
    if (wrong)
        return mha_host_error(st->host, MHA_INVALID_ARGUMENT, "%s: queue %s",
                              fn, wrong);
    *out_of_order = (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE) != 0;
    return MHA_OK;
}

/* ---- adopting a device ------------------------------------------------------ */

/* A backend device on the caller's handles, each retained once; desc is
 * what libmha reports for it. */
static mha_status adopt_handles(mha_cl_state *st, const char *fn,
                                cl_context context, cl_device_id device,
                                cl_command_queue queue,
                                mha_device_desc *desc, mha_cl_device **out)
{
    cl_platform_id plat = NULL;
    cl_int err = st->api.clGetDeviceInfo(device, CL_DEVICE_PLATFORM,
                                         sizeof plat, &plat, NULL);
    if (err != CL_SUCCESS)
        return bad_handle(st->host, fn, "device", "clGetDeviceInfo", err);
    mha_cl_device *dev = mha_host_calloc(st->host, 1, sizeof *dev);
    if (!dev)
        return mha_host_error(st->host, MHA_OUT_OF_MEMORY,
                              "%s: out of memory", fn);
    dev->st = st;
    dev->host = st->host;
    dev->api = &st->api;
    dev->rec = &dev->own_rec;
    mha_cl_icd_lock();
    mha_status s = mha_cl_describe(st, plat, device, &dev->own_rec, desc);
    mha_cl_icd_unlock();
    if (s != MHA_OK) {
        mha_host_free(st->host, dev);
        return mha_host_error(st->host, s, "%s: out of memory", fn);
    }
    st->api.clRetainContext(context);
    st->api.clRetainCommandQueue(queue);
    st->api.clRetainDevice(device);
    dev->context = context;
    dev->queue = queue;
    dev->adopted = 1;
    *out = dev;
    return MHA_OK;
}

mha_status mha_opencl_device_adopt(mha_context *ctx, cl_context context,
                                   cl_device_id device, cl_command_queue queue,
                                   const mha_device_options *options,
                                   mha_device **out)
{
    static const char fn[] = "mha_opencl_device_adopt";
    if (!ctx)
        return MHA_INVALID_ARGUMENT;
    mha_host *host = mha_context_host(ctx);
    const char *null = !context ? "context"
                       : !device ? "device"
                       : !queue  ? "queue"
                       : !out    ? "out"
                                 : NULL;
    if (null)
        return mha_host_error(host, MHA_INVALID_ARGUMENT, "%s: %s is NULL",
                              fn, null);
    mha_cl_state *st = NULL;
    mha_cl_device *dev = NULL;
    mha_device_desc desc;
    int out_of_order = 0;
    mha_status s = mha_struct_check(host, fn, "mha_device_options", options,
                                    sizeof *options);
    if (s == MHA_OK)
        s = runtime_of(ctx, fn, &st);
    if (s == MHA_OK)
        s = check_queue(st, fn, context, device, queue, &out_of_order);
    if (s == MHA_OK)
        s = adopt_handles(st, fn, context, device, queue, &desc, &dev);
    if (s != MHA_OK)
        return mha_host_finish(host, fn, s);
    dev->out_of_order = out_of_order;
    if (dev->rec->c_version < 12)
        s = mha_host_error(host, MHA_UNSUPPORTED,
                           "%s: %s has OpenCL C %d.%d; libmha's kernels need "
                           "1.2",
                           fn, dev->rec->name, dev->rec->c_version / 10,
                           dev->rec->c_version % 10);
    if (s == MHA_OK)
        s = mha_cl_device_ready(dev, options);
    if (s != MHA_OK) {
        mha_opencl_backend.close(dev);
        return mha_host_finish(host, fn, s);
    }
    s = mha_device_adopt(ctx, &mha_opencl_backend, dev, &desc, out);
    return mha_host_finish(host, fn, s);
}

/* ---- wrapping buffers ------------------------------------------------------- */

static mha_status mem_query(mha_cl_device *dev, const char *fn, cl_mem mem,
                            cl_mem_info what, size_t size, void *value)
{
    cl_int err = dev->api->clGetMemObjectInfo(mem, what, size, value, NULL);
    return err == CL_SUCCESS ? MHA_OK
                             : bad_handle(dev->host, fn, "mem",
                                          "clGetMemObjectInfo", err);
}

/* Checks mem against the device and offset, and makes the backend buffer
 * for its bytes from offset on, holding a reference to mem. */
static mha_status wrap_mem(mha_cl_device *dev, const char *fn, cl_mem mem,
                           size_t offset, size_t elem, mha_cl_buffer **out)
{
    cl_mem_object_type type = 0;
    cl_context mctx = NULL;
    size_t size = 0;
    cl_mem_flags flags = 0;
    mha_status s = mem_query(dev, fn, mem, CL_MEM_TYPE, sizeof type, &type);
    if (s == MHA_OK)
        s = mem_query(dev, fn, mem, CL_MEM_CONTEXT, sizeof mctx, &mctx);
    if (s == MHA_OK)
        s = mem_query(dev, fn, mem, CL_MEM_SIZE, sizeof size, &size);
    if (s == MHA_OK)
        s = mem_query(dev, fn, mem, CL_MEM_FLAGS, sizeof flags, &flags);
    if (s != MHA_OK)
        return s;
    if (type != CL_MEM_OBJECT_BUFFER)
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "%s: mem is an image (type 0x%x); expected a "
                              "buffer",
                              fn, (unsigned)type);
    if (mctx != dev->context)
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "%s: mem belongs to another cl_context than "
                              "the device's",
                              fn);
    if (offset % elem != 0)
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "%s: offset %zu is not a multiple of the "
                              "element size (%zu bytes)",
                              fn, offset, elem);
    if (offset > size)
        return mha_host_error(dev->host, MHA_BUFFER_TOO_SMALL,
                              "%s: offset %zu is past the end of mem (%zu "
                              "bytes)",
                              fn, offset, size);
    mha_cl_buffer *b = mha_host_calloc(dev->host, 1, sizeof *b);
    if (!b)
        return mha_host_error(dev->host, MHA_OUT_OF_MEMORY,
                              "%s: out of memory", fn);
    dev->api->clRetainMemObject(mem);
    b->mem = mem;
    b->base = offset;
    b->size = size - offset;
    b->flags = flags;
    *out = b;
    return MHA_OK;
}

/* The kernels index with 32-bit element offsets from the start of mem. */
static int fits_kernel_index(size_t offset, size_t elem, int ndim,
                             const int64_t *shape)
{
    int64_t last = (int64_t)(offset / elem);
    for (int64_t i = 0, count = 1; i < ndim; i++) {
        count *= shape[i];
        if (last + count > INT_MAX)
            return 0;
    }
    return 1;
}

mha_status mha_opencl_tensor_wrap(mha_device *device, cl_mem mem,
                                  size_t offset, mha_dtype dtype, int ndim,
                                  const int64_t *shape, mha_tensor **out)
{
    static const char fn[] = "mha_opencl_tensor_wrap";
    mha_cl_device *dev = NULL;
    mha_status s = device_of(device, fn, &dev);
    if (s != MHA_OK)
        return s;
    if (!mem || !out)
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "%s: %s is NULL", fn, !mem ? "mem" : "out");
    const size_t elem = dtype == MHA_F16 ? 2 : 4;
    mha_cl_buffer *b = NULL;
    s = wrap_mem(dev, fn, mem, offset, elem, &b);
    if (s == MHA_OK)
        s = mha_tensor_adopt(device, fn, dtype, ndim, shape, b, b->size, out);
    if (s != MHA_OK || fits_kernel_index(offset, elem, ndim, shape))
        return mha_host_finish(dev->host, fn, s);
    mha_tensor_destroy(*out);
    *out = NULL;
    return mha_host_error(dev->host, MHA_UNSUPPORTED,
                          "%s: the tensor ends past element %d of mem; "
                          "libmha's OpenCL kernels index with 32 bits",
                          fn, INT_MAX);
}

/* ---- enqueueing a forward --------------------------------------------------- */

/* OpenCL's rules for a wait list, checked here so that the message names
 * the argument, and its events must be of the device's context. */
static mha_status check_wait_list(mha_cl_device *dev, const char *fn,
                                  cl_uint count, const cl_event *list)
{
    if ((count == 0) != (list == NULL))
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "%s: num_events_in_wait_list is %u but "
                              "event_wait_list is %s",
                              fn, (unsigned)count, list ? "not NULL" : "NULL");
    for (cl_uint i = 0; i < count; i++) {
        cl_context ectx = NULL;
        cl_int err = list[i] ? dev->api->clGetEventInfo(
                                   list[i], CL_EVENT_CONTEXT, sizeof ectx,
                                   &ectx, NULL)
                             : CL_INVALID_EVENT;
        if (err != CL_SUCCESS)
            return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                                  "%s: event_wait_list[%u] is %s", fn,
                                  (unsigned)i,
                                  list[i] ? "not a valid event" : "NULL");
        if (ectx != dev->context)
            return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                                  "%s: event_wait_list[%u] belongs to "
                                  "another cl_context than the device's",
                                  fn, (unsigned)i);
    }
    return MHA_OK;
}

/* The marker after a forward: its event completes when every command
 * before it (in-order) or the tail (out-of-order) has. */
static mha_status enqueue_done(mha_cl_device *dev, cl_event *event_out)
{
    mha_cl_order o;
    mha_status s = mha_cl_order_begin(dev, &o);
    if (s != MHA_OK)
        return s;
    cl_int err = dev->api->clEnqueueMarkerWithWaitList(
        dev->queue, o.count, o.list, o.event ? o.event : event_out);
    mha_cl_order_end(dev, &o, err);
    if (err != CL_SUCCESS)
        return mha_cl_queue_fail(dev, "clEnqueueMarkerWithWaitList", err);
    if (o.event && event_out) {
        dev->api->clRetainEvent(dev->tail);
        *event_out = dev->tail;
    }
    return MHA_OK;
}

mha_status mha_opencl_layer_enqueue(mha_layer *layer,
                                    const mha_forward_args *args,
                                    cl_uint num_events_in_wait_list,
                                    const cl_event *event_wait_list,
                                    cl_event *event_out)
{
    static const char fn[] = "mha_opencl_layer_enqueue";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_cl_device *dev = NULL;
    mha_status s = device_of(mha_layer_device(layer), fn, &dev);
    if (s == MHA_OK)
        s = check_wait_list(dev, fn, num_events_in_wait_list,
                            event_wait_list);
    if (s != MHA_OK)
        return s;
    /* The forward's first command takes the wait list (queue.c); nothing
     * is enqueued when the core refuses the arguments. */
    dev->wait_count = num_events_in_wait_list;
    dev->wait_list = event_wait_list;
    s = mha_layer_forward_enqueue(layer, fn, args);
    if (s == MHA_OK)
        s = mha_device_note(mha_layer_device(layer),
                            enqueue_done(dev, event_out));
    dev->wait_count = 0;
    dev->wait_list = NULL;
    return mha_host_finish(dev->host, fn, s);
}
