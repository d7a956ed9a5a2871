/* interop.c: the core side of engine interop (see interop.h): adopting a
 * device a backend opened on the application's handles, and the accessors
 * a backend's interop entry points use to reach their own objects behind
 * the opaque public handles. */
#include "interop.h"

#include "context.h"
#include "layer.h"
#include "tensor.h"

mha_host *mha_context_host(mha_context *ctx) { return &ctx->host; }

static int slot_of(const mha_context *ctx, const mha_backend_iface *iface)
{
    for (int s = 0; s < ctx->backend_count; s++)
        if (ctx->backends[s].iface == iface)
            return s;
    return -1;
}

static mha_status not_built(mha_context *ctx, const mha_backend_iface *iface)
{
    return mha_error(ctx, MHA_NO_DEVICE,
                     "the %s backend is not part of this build", iface->name);
}

mha_status mha_backend_state(mha_context *ctx, const mha_backend_iface *iface,
                             void **state)
{
    int slot = slot_of(ctx, iface);
    if (slot < 0)
        return not_built(ctx, iface);
    *state = ctx->backends[slot].state;
    return MHA_OK;
}

mha_status mha_device_adopt(mha_context *ctx, const mha_backend_iface *iface,
                            void *dev, const mha_device_desc *desc,
                            mha_device **out)
{
    int slot = slot_of(ctx, iface);
    mha_device *device =
        slot < 0 ? NULL : mha_host_calloc(&ctx->host, 1, sizeof *device);
    if (!device) {
        mha_backend_close(iface, dev);
        if (slot < 0)
            return not_built(ctx, iface);
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "%s: out of memory adopting a device", iface->name);
    }
    device->ctx = ctx;
    device->iface = iface;
    device->dev = dev;
    device->index = -1;
    device->entry.backend = slot;
    device->entry.backend_index = -1;
    device->entry.desc = *desc;
    device->entry.score = mha_device_kind_score(desc->kind);
    ctx->open_objects++;
    mha_clear_error(ctx);
    *out = device;
    return MHA_OK;
}

void *mha_device_backend(const mha_device *device,
                         const mha_backend_iface *iface)
{
    return device && device->iface == iface ? device->dev : NULL;
}

mha_context *mha_device_context(const mha_device *device)
{
    return device->ctx;
}

mha_device *mha_layer_device(const mha_layer *layer) { return layer->device; }

void *mha_tensor_buffer(const mha_tensor *tensor) { return tensor->buf; }

mha_device *mha_tensor_device(const mha_tensor *tensor)
{
    return tensor->device;
}
