/* backend.c: the core's side of the backend contract (backend.h): the check
 * a backend passes before a context uses it, and the thin wrappers through
 * which every call from the core into a backend goes (SQLite's sqlite3Os*
 * family), so version gates, defaults and memory accounting live in one
 * place. */
#include <stdio.h>

#include "context.h"
#include "interop.h"

int mha_backend_check(const mha_backend_iface *iface, char *why, size_t size)
{
    const char *name = iface->name;
    if (!name) {
        snprintf(why, size, "a backend has no name");
        return 0;
    }
    if (iface->version < 1 || iface->version > MHA_BACKEND_IFACE_VERSION) {
        snprintf(why, size,
                 "backend %s built for interface version %d; libmha "
                 "supports versions 1 to %d",
                 name, iface->version, MHA_BACKEND_IFACE_VERSION);
        return 0;
    }
#define MHA_CHECK_METHOD_(method, since)                                     \
    if (iface->version >= (since) && !iface->method) {                       \
        snprintf(why, size,                                                  \
                 "backend %s (interface version %d) lacks method %s",        \
                 name, iface->version, #method);                             \
        return 0;                                                            \
    }
    MHA_BACKEND_METHODS(MHA_CHECK_METHOD_)
#undef MHA_CHECK_METHOD_
    return 1;
}

/* ---- backends -------------------------------------------------------------- */

mha_status mha_backend_init(mha_host *host, mha_backend_slot *b,
                            mha_device_desc *descs, int cap, int *count)
{
    b->state = NULL;
    return b->iface->init(host, &b->state, descs, cap, count);
}

void mha_backend_fini(mha_backend_slot *b)
{
    if (b->state)
        b->iface->fini(b->state);
    b->state = NULL;
}

mha_status mha_backend_open(const mha_backend_slot *b, int index,
                            const mha_device_options *options, void **dev)
{
    return b->iface->open(b->state, index, options, dev);
}

void mha_backend_close(const mha_backend_iface *iface, void *dev)
{
    iface->close(dev);
}

/* ---- devices --------------------------------------------------------------- */

mha_status mha_dev_alloc(mha_device *device, size_t size, void **buf)
{
    mha_status st = mha_dev_usable(device);
    if (st == MHA_OK)
        st = mha_device_note(device, device->iface->buffer_alloc(
                                         device->dev, size ? size : 4, buf));
    if (st == MHA_OK) {
        device->mem_in_use += size;
        if (device->mem_in_use > device->mem_peak)
            device->mem_peak = device->mem_in_use;
    }
    return st;
}

void mha_dev_free(mha_device *device, void *buf, size_t size)
{
    if (!buf)
        return;
    device->iface->buffer_free(device->dev, buf);
    device->mem_in_use -= size;
}

mha_status mha_dev_write(mha_device *device, void *buf, size_t offset,
                         const void *src, size_t size)
{
    mha_status st = mha_dev_usable(device);
    if (st != MHA_OK || !size)
        return st;
    return mha_device_note(device, device->iface->buffer_write(
                                       device->dev, buf, offset, src, size));
}

mha_status mha_dev_read(mha_device *device, void *buf, size_t offset,
                        void *dst, size_t size)
{
    mha_status st = mha_dev_usable(device);
    if (st != MHA_OK || !size)
        return st;
    return mha_device_note(device, device->iface->buffer_read(
                                       device->dev, buf, offset, dst, size));
}

bool mha_dev_supports(mha_device *device, const mha_node *node)
{
    return device->iface->supports(device->dev, node);
}

mha_status mha_dev_run(mha_device *device, const mha_node *node)
{
    mha_status st = mha_dev_usable(device);
    if (st != MHA_OK)
        return st;
    char forced[32];
    mha_node tuned;
    const char *v = mha_tune_variant(device, node, forced, sizeof forced);
    if (v != node->variant) {
        tuned = *node;
        tuned.variant = v;
        node = &tuned;
    }
    mha_profile_before_run(device);
    st = mha_device_note(device, device->iface->run(device->dev, node));
    if (st == MHA_OK)
        mha_profile_after_run(device, node);
    return st;
}

mha_status mha_dev_sync(mha_device *device)
{
    mha_status st = mha_dev_usable(device);
    if (st != MHA_OK)
        return st;
    st = mha_device_note(device, device->iface->sync(device->dev));
    if (st == MHA_OK)
        mha_profile_after_sync(device);
    return st;
}

/* Version 2's timers; a version-1 backend keeps no timestamps. */
mha_status mha_dev_timer_mark(mha_device *device, int slot)
{
    if (device->iface->version < 2)
        return MHA_UNSUPPORTED;
    return device->iface->timer_mark(device->dev, slot);
}

mha_status mha_dev_timer_read(mha_device *device, int count, uint64_t *ns)
{
    if (device->iface->version < 2)
        return MHA_UNSUPPORTED;
    return device->iface->timer_read(device->dev, count, ns);
}

int mha_dev_variants(mha_device *device, mha_op op, const char **names,
                     int cap)
{
    if (device->iface->version < 2)
        return 0;
    return device->iface->variants(device->dev, op, names, cap);
}
