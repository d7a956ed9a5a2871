/* buffer.c: device buffers of the OpenCL backend and their transfers. All
 * work goes to the device's one queue, ordered by queue.c, so a write or
 * read is ordered after every kernel libmha enqueued before it; reads block
 * until the data is on the host, writes block until src may be reused. */
#include "cl_internal.h"

mha_status mha_cl_buffer_alloc(void *d, size_t size, void **out)
{
    mha_cl_device *dev = d;
    *out = NULL;
    if ((uint64_t)size > dev->rec->max_alloc)
        return mha_host_error(
            dev->host, MHA_OUT_OF_MEMORY,
            "opencl: a buffer of %zu bytes exceeds "
            "CL_DEVICE_MAX_MEM_ALLOC_SIZE (%llu bytes) of %s",
            size, (unsigned long long)dev->rec->max_alloc, dev->rec->name);
    mha_cl_buffer *b = mha_host_calloc(dev->host, 1, sizeof *b);
    if (!b)
        return mha_host_error(dev->host, MHA_OUT_OF_MEMORY,
                              "opencl: out of host memory for a buffer");
    cl_int err = CL_SUCCESS;
    /* A zero-sized cl_mem is invalid; keep one element so views work. */
    b->size = size;
    b->flags = CL_MEM_READ_WRITE;
    if (mha_fault_due(&dev->fault_alloc))
        err = CL_MEM_OBJECT_ALLOCATION_FAILURE;
    else
        b->mem = dev->api->clCreateBuffer(dev->context, b->flags,
                                          size ? size : 4, NULL, &err);
    if (!b->mem) {
        mha_host_free(dev->host, b);
        return mha_cl_fail(dev->host, "clCreateBuffer", err);
    }
    *out = b;
    return MHA_OK;
}

void mha_cl_buffer_free(void *d, void *buf)
{
    mha_cl_device *dev = d;
    mha_cl_buffer *b = buf;
    if (!b)
        return;
    /* The queue may still use it; OpenCL keeps the memory alive until the
     * commands that reference it finish. A wrapped cl_mem loses only the
     * reference libmha took. */
    dev->api->clReleaseMemObject(b->mem);
    mha_host_free(dev->host, b);
}

static mha_status check_range(mha_cl_device *dev, const mha_cl_buffer *b,
                              size_t offset, size_t size, const char *what)
{
    if (offset > b->size || size > b->size - offset)
        return mha_host_error(dev->host, MHA_INVALID_ARGUMENT,
                              "opencl: %s of %zu bytes at offset %zu is past "
                              "the buffer's %zu bytes",
                              what, size, offset, b->size);
    return MHA_OK;
}

/* One blocking transfer, after libmha's earlier commands on the queue:
 * from src into the buffer, or (src NULL) from the buffer into dst. */
static mha_status transfer(mha_cl_device *dev, mha_cl_buffer *b,
                           size_t offset, const void *src, void *dst,
                           size_t size)
{
    mha_status s = check_range(dev, b, offset, size,
                               src ? "buffer_write" : "buffer_read");
    if (s != MHA_OK || size == 0)
        return s;
    mha_cl_order o;
    if ((s = mha_cl_order_begin(dev, &o)) != MHA_OK)
        return s;
    cl_int err =
        src ? dev->api->clEnqueueWriteBuffer(dev->queue, b->mem, CL_TRUE,
                                             b->base + offset, size, src,
                                             o.count, o.list, o.event)
            : dev->api->clEnqueueReadBuffer(dev->queue, b->mem, CL_TRUE,
                                            b->base + offset, size, dst,
                                            o.count, o.list, o.event);
    mha_cl_order_end(dev, &o, err);
    if (err != CL_SUCCESS)
        return mha_cl_queue_fail(
            dev, src ? "clEnqueueWriteBuffer" : "clEnqueueReadBuffer", err);
    return MHA_OK;
}

mha_status mha_cl_buffer_write(void *d, void *buf, size_t offset,
                               const void *src, size_t size)
{
    return transfer(d, buf, offset, src, NULL, size);
}

mha_status mha_cl_buffer_read(void *d, void *buf, size_t offset, void *dst,
                              size_t size)
{
    return transfer(d, buf, offset, NULL, dst, size);
}

mha_status mha_cl_sync(void *d)
{
    mha_cl_device *dev = d;
    cl_int err = dev->api->clFinish(dev->queue);
    return err == CL_SUCCESS ? MHA_OK : mha_cl_queue_fail(dev, "clFinish", err);
}
