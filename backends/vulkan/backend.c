/* backend.c: the Vulkan backend's one exported symbol, mha_vulkan_backend,
 * and the thin methods that adapt the core's interface (core/backend.h) to
 * the files that do the work. A missing loader or driver is zero devices
 * and MHA_OK; only a requested-but-missing validation layer fails init. */
#include "vk_internal.h"

static mha_status vk_init(mha_host *host, void **state, mha_device_desc *descs,
                          int cap, int *count)
{
    *state = NULL;
    *count = 0;
    mha_status s = mha_vk_load_runtime(host);
    if (s != MHA_OK)
        return MHA_OK; /* reason logged */
    mha_vk_state *st = mha_host_calloc(host, 1, sizeof *st);
    if (!st)
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory");
    st->host = host;
    s = mha_vk_create_instance(st);
    if (s == MHA_NOT_FOUND && !st->validation) {
        mha_host_free(host, st);
        return MHA_OK; /* no driver: reason logged */
    }
    if (s == MHA_OK) {
        if (cap > MHA_VK_MAX_DEVICES)
            cap = MHA_VK_MAX_DEVICES;
        s = mha_vk_probe(st, descs, cap, count);
    }
    if (s == MHA_OK)
        s = mha_vk_take_validation_error(st);
    if (s != MHA_OK) {
        mha_vk_destroy_instance(st);
        mha_host_free(host, st);
        *count = 0;
        return s;
    }
    *state = st;
    return MHA_OK;
}

static void vk_fini(void *state)
{
    mha_vk_state *st = state;
    if (!st)
        return;
    mha_vk_destroy_instance(st);
    mha_host_free(st->host, st);
}

static mha_status vk_open(void *state, int index,
                          const mha_device_options *options, void **dev)
{
    mha_vk_state *st = state;
    mha_vk_device *d = NULL;
    mha_status s = mha_vk_open(st, index, options, &d);
    if (s == MHA_OK)
        *dev = d;
    return s;
}

static void vk_close(void *dev) { mha_vk_close(dev); }

static mha_status vk_buffer_alloc(void *dev, size_t size, void **buf)
{
    mha_vk_buffer *b = NULL;
    mha_status s = mha_vk_buffer_alloc(dev, size, &b);
    if (s == MHA_OK)
        *buf = b;
    return s;
}

static void vk_buffer_free(void *dev, void *buf)
{
    mha_vk_buffer_free(dev, buf);
}

static mha_status vk_buffer_write(void *dev, void *buf, size_t offset,
                                  const void *src, size_t size)
{
    return mha_vk_buffer_write(dev, buf, offset, src, size);
}

static mha_status vk_buffer_read(void *dev, void *buf, size_t offset,
                                 void *dst, size_t size)
{
    return mha_vk_buffer_read(dev, buf, offset, dst, size);
}

static bool vk_supports(void *dev, const mha_node *node)
{
    return mha_vk_supports(dev, node);
}

static mha_status vk_run(void *dev, const mha_node *node)
{
    mha_vk_device *d = dev;
    d->tune_node = node; /* for the pickers' variant hooks (tune.c) */
    mha_status s = mha_vk_run(dev, node);
    d->tune_node = NULL;
    return s;
}

static mha_status vk_sync(void *dev)
{
    mha_vk_device *d = dev;
    mha_status s = mha_vk_check(d);
    if (s != MHA_OK)
        return s;
    return mha_vk_flush(d);
}

static mha_status vk_timer_mark(void *dev, int slot)
{
    return mha_vk_timer_mark(dev, slot);
}

static mha_status vk_timer_read(void *dev, int count, uint64_t *ns)
{
    return mha_vk_timer_read(dev, count, ns);
}

const mha_backend_iface mha_vulkan_backend = {
    .version = MHA_BACKEND_IFACE_VERSION,
    .name = "vulkan",
    .init = vk_init,
    .fini = vk_fini,
    .open = vk_open,
    .close = vk_close,
    .buffer_alloc = vk_buffer_alloc,
    .buffer_free = vk_buffer_free,
    .buffer_write = vk_buffer_write,
    .buffer_read = vk_buffer_read,
    .supports = vk_supports,
    .run = vk_run,
    .sync = vk_sync,
    .timer_mark = vk_timer_mark,
    .timer_read = vk_timer_read,
    .variants = mha_vk_variants,
};
