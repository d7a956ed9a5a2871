/* device.c: probing every backend, ranking the devices (discrete GPU >
 * integrated GPU > native CPU > software GPU implementations), opening one by
 * index or by name ("vulkan:1", MHA_DEVICE), and its memory accounting. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "interop.h"

int mha_device_kind_score(mha_device_kind kind)
{
    switch (kind) {
    case MHA_DEVICE_DISCRETE_GPU: return 400;
    case MHA_DEVICE_INTEGRATED_GPU: return 300;
    case MHA_DEVICE_VIRTUAL_GPU: return 250;
    case MHA_DEVICE_CPU: return 200;
    case MHA_DEVICE_SOFTWARE: return 100;
    case MHA_DEVICE_OTHER: return 50;
    }
    return 0;
}

static int registry_size(void)
{
    int n = 0;
    while (mha_backend_registry[n])
        n++;
    return n;
}

/* "cpu, vulkan, opencl": the backends of this build, for messages. */
static const char *backend_names(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int s = 0; mha_backend_registry[s] && used < size; s++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s",
                                 s ? ", " : "", mha_backend_registry[s]->name);
    return buf;
}

/* The length of list's first comma-separated name, 0 when list names
 * nothing or not a backend of this build. */
static size_t known_name(const char *list)
{
    size_t len = strcspn(list, ",");
    for (int s = 0; mha_backend_registry[s]; s++)
        if (strlen(mha_backend_registry[s]->name) == len &&
            strncmp(list, mha_backend_registry[s]->name, len) == 0)
            return len;
    return 0;
}

/* Checks that list names one or more backends of this build. */
static mha_status check_backend_list(mha_context *ctx, const char *list)
{
    for (const char *p = list;; p++) {
        size_t len = known_name(p);
        if (!len) {
            char names[96];
            mha_error(ctx, MHA_INVALID_ARGUMENT,
                      "mha_context_create: backends \"%s\" names \"%.*s\", "
                      "not a backend of this build (%s)",
                      list, (int)strcspn(p, ","), p,
                      backend_names(names, sizeof names));
            mha_host_log(&ctx->host, MHA_LOG_ERROR, "%s", ctx->host.errmsg);
            return MHA_INVALID_ARGUMENT;
        }
        p += len;
        if (!*p)
            return MHA_OK;
    }
}

/* Whether the checked list names backend name. */
static bool list_names(const char *list, const char *name)
{
    for (const char *p = list;; p++) {
        size_t len = known_name(p);
        if (len == strlen(name) && strncmp(p, name, len) == 0)
            return true;
        p += len;
        if (!*p)
            return false;
    }
}

/* Adds one backend's devices; a backend that fails to start is skipped with
 * its reason logged, except when memory runs out. */
static mha_status probe_backend(mha_context *ctx, int slot)
{
    const mha_backend_iface *iface = mha_backend_registry[slot];
    mha_backend_slot *b = &ctx->backends[slot];
    b->iface = iface;
    char why[160];
    if (!mha_backend_check(iface, why, sizeof why)) {
        mha_host_log(&ctx->host, MHA_LOG_WARN, "%s: skipped", why);
        return MHA_OK; /* state stays NULL: never initialised or finished */
    }
    int room = MHA_MAX_DEVICES - ctx->device_count, count = 0;
    mha_device_desc *descs = mha_host_calloc(&ctx->host, (size_t)room + 1,
                                             sizeof *descs);
    if (!descs)
        return mha_error(ctx, MHA_OUT_OF_MEMORY,
                         "mha_context_create: out of memory probing %s",
                         iface->name);
    mha_status st = mha_backend_init(&ctx->host, b, descs, room, &count);
    if (st == MHA_OUT_OF_MEMORY) {
        mha_host_free(&ctx->host, descs);
        return st;
    }
    if (st != MHA_OK) {
        mha_host_log(&ctx->host, MHA_LOG_WARN, "backend %s skipped: %s",
                     iface->name, ctx->host.errmsg);
        count = 0;
    }
    for (int i = 0; i < count && i < room; i++) {
        mha_device_entry *e = &ctx->devices[ctx->device_count++];
        e->backend = slot;
        e->backend_index = i;
        e->desc = descs[i];
        e->score = mha_device_kind_score(descs[i].kind);
    }
    mha_host_free(&ctx->host, descs);
    return MHA_OK;
}

/* Stable insertion sort by score: ties keep registry and backend order. */
static void rank_devices(mha_context *ctx)
{
    for (int i = 1; i < ctx->device_count; i++) {
        mha_device_entry e = ctx->devices[i];
        int j = i;
        while (j > 0 && ctx->devices[j - 1].score < e.score) {
            ctx->devices[j] = ctx->devices[j - 1];
            j--;
        }
        ctx->devices[j] = e;
    }
}

mha_status mha_probe_devices(mha_context *ctx, const char *backends)
{
    if (backends && check_backend_list(ctx, backends) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    ctx->backend_count = registry_size();
    ctx->backends = mha_host_calloc(&ctx->host, (size_t)ctx->backend_count,
                                    sizeof *ctx->backends);
    if (!ctx->backends)
        return MHA_OUT_OF_MEMORY;
    for (int slot = 0; slot < ctx->backend_count; slot++) {
        const mha_backend_iface *iface = mha_backend_registry[slot];
        /* left out: known (adoption finds it) but never started */
        ctx->backends[slot].iface = iface;
        if (backends && !list_names(backends, iface->name)) {
            mha_host_log(&ctx->host, MHA_LOG_INFO,
                         "backend %s not probed (backends \"%s\")",
                         iface->name, backends);
            continue;
        }
        mha_status st = probe_backend(ctx, slot);
        if (st != MHA_OK)
            return st;
    }
    rank_devices(ctx);
    mha_clear_error(ctx);
    return MHA_OK;
}

void mha_release_backends(mha_context *ctx)
{
    if (!ctx->backends)
        return;
    for (int slot = 0; slot < ctx->backend_count; slot++)
        mha_backend_fini(&ctx->backends[slot]);
    mha_host_free(&ctx->host, ctx->backends);
    ctx->backends = NULL;
}

/* ---- listing ---------------------------------------------------------------- */

mha_status mha_device_count(mha_context *ctx, int *count)
{
    if (!ctx)
        return MHA_INVALID_ARGUMENT;
    if (!count)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_count: count is NULL");
    *count = ctx->device_count;
    mha_clear_error(ctx);
    return MHA_OK;
}

/* index is the entry's place in the ranked list, -1 for an adopted device. */
static void fill_info(const mha_context *ctx, const mha_device_entry *e,
                      int index, mha_device_info *info)
{
    const mha_device_desc *d = &e->desc;
    memset(info, 0, sizeof *info);
    snprintf(info->backend, sizeof info->backend, "%s",
             ctx->backends[e->backend].iface->name);
    info->backend_index = e->backend_index;
    info->index = index;
    info->kind = d->kind;
    memcpy(info->vendor, d->vendor, sizeof info->vendor);
    memcpy(info->name, d->name, sizeof info->name);
    memcpy(info->driver, d->driver, sizeof info->driver);
    info->vendor[sizeof info->vendor - 1] = '\0';
    info->name[sizeof info->name - 1] = '\0';
    info->driver[sizeof info->driver - 1] = '\0';
    info->memory_bytes = d->memory_bytes;
    info->max_buffer_bytes = d->max_buffer_bytes;
    info->features = d->features;
    info->compute_units = d->compute_units;
    info->max_workgroup_size = d->max_workgroup_size;
    info->shared_memory_bytes = d->shared_memory_bytes;
    info->subgroup_size = d->subgroup_size;
    info->score = e->score;
    info->is_default = index == 0;
    memcpy(info->details, d->details, sizeof info->details);
    info->details[sizeof info->details - 1] = '\0';
}

mha_status mha_device_get_info(mha_context *ctx, int index,
                               mha_device_info *info)
{
    if (!ctx)
        return MHA_INVALID_ARGUMENT;
    if (!info)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_get_info: info is NULL");
    if (index < 0 || index >= ctx->device_count)
        return mha_error(ctx, MHA_NO_DEVICE,
                         "mha_device_get_info: index %d out of range; "
                         "%d device(s) found",
                         index, ctx->device_count);
    fill_info(ctx, &ctx->devices[index], index, info);
    mha_clear_error(ctx);
    return MHA_OK;
}

/* ---- opening ----------------------------------------------------------------- */

mha_status mha_device_options_init_sized(mha_device_options *options,
                                        size_t struct_size)
{
    if (mha_struct_init(options, struct_size, sizeof *options) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    return MHA_OK;
}

/* Opens ranked device index for the public call fn. */
static mha_status open_index(mha_context *ctx, const char *fn, int index,
                             const mha_device_options *options,
                             mha_device **out)
{
    if (index < 0 || index >= ctx->device_count)
        return mha_error(ctx, MHA_NO_DEVICE,
                         "%s: index %d out of range; %d device(s) found", fn,
                         index, ctx->device_count);
    mha_device_options defaults;
    mha_device_options_init(&defaults);
    if (!options)
        options = &defaults;
    if (mha_struct_check(&ctx->host, fn, "mha_device_options", options,
                         sizeof *options) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    if (options->threads < 0)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: threads %d is negative", fn, options->threads);
    const mha_device_entry *e = &ctx->devices[index];
    const mha_backend_slot *b = &ctx->backends[e->backend];
    mha_device *device = mha_host_calloc(&ctx->host, 1, sizeof *device);
    if (!device)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    /* The tuning database follows cache_dir too (core/tune.c). */
    size_t dir_len = options->cache_dir ? strlen(options->cache_dir) + 1 : 0;
    device->cache_dir = dir_len ? mha_host_malloc(&ctx->host, dir_len) : NULL;
    if (dir_len && !device->cache_dir) {
        mha_host_free(&ctx->host, device);
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    if (dir_len)
        memcpy(device->cache_dir, options->cache_dir, dir_len);
    mha_status st = mha_backend_open(b, e->backend_index, options,
                                     &device->dev);
    if (st != MHA_OK) {
        mha_host_free(&ctx->host, device->cache_dir);
        mha_host_free(&ctx->host, device);
        return mha_host_finish(&ctx->host, fn, st);
    }
    device->ctx = ctx;
    device->iface = b->iface;
    device->index = index;
    device->entry = *e;
    ctx->open_objects++;
    mha_clear_error(ctx);
    *out = device;
    return MHA_OK;
}

mha_status mha_device_open_index(mha_context *ctx, int index,
                                 const mha_device_options *options,
                                 mha_device **out)
{
    if (!ctx)
        return MHA_INVALID_ARGUMENT;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_open_index: out is NULL");
    return open_index(ctx, "mha_device_open_index", index, options, out);
}

/* The ranked index of the best device of backend name, or of device
 * backend_index of it; -1 when there is none. */
static int find_device(const mha_context *ctx, const char *name,
                       int backend_index)
{
    for (int i = 0; i < ctx->device_count; i++) {
        const mha_device_entry *e = &ctx->devices[i];
        if (strcmp(ctx->backends[e->backend].iface->name, name) != 0)
            continue;
        if (backend_index < 0 || e->backend_index == backend_index)
            return i;
    }
    return -1;
}

/* Parses "best", "cpu", "vulkan:1" into a ranked index. */
static mha_status resolve_spec(mha_context *ctx, const char *spec,
                               const char *origin, int *index)
{
    if (strcmp(spec, "best") == 0) {
        if (ctx->device_count == 0)
            return mha_error(ctx, MHA_NO_DEVICE,
                             "mha_device_open: no device found");
        *index = 0;
        return MHA_OK;
    }
    char name[32];
    size_t len = strcspn(spec, ":");
    int backend_index = -1;
    if (len == 0 || len >= sizeof name)
        goto bad;
    memcpy(name, spec, len);
    name[len] = '\0';
    if (spec[len] == ':') {
        char *end;
        const char *num = spec + len + 1;
        long v = strtol(num, &end, 10);
        if (*num < '0' || *num > '9' || *end || v > 1000000)
            goto bad;
        backend_index = (int)v;
    }
    int known = 0;
    for (int s = 0; s < ctx->backend_count; s++)
        known |= strcmp(ctx->backends[s].iface->name, name) == 0;
    if (!known)
        goto bad;
    *index = find_device(ctx, name, backend_index);
    if (*index < 0)
        return mha_error(ctx, MHA_NO_DEVICE,
                         "mha_device_open: %s \"%s\" names no device found "
                         "on this machine (run mha-info to list them)",
                         origin, spec);
    return MHA_OK;
bad:;
    char names[96];
    return mha_error(ctx, MHA_INVALID_ARGUMENT,
                     "mha_device_open: %s \"%s\" is not a device name; "
                     "expected best, or a backend of this build (%s), "
                     "optionally with :index (for example %s:0)",
                     origin, spec, backend_names(names, sizeof names),
                     ctx->backends[0].iface->name);
}

mha_status mha_device_open(mha_context *ctx, const char *spec,
                           const mha_device_options *options,
                           mha_device **out)
{
    if (!ctx)
        return MHA_INVALID_ARGUMENT;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_open: out is NULL");
    const char *origin = "spec";
    if (!spec) {
        spec = getenv("MHA_DEVICE");
        origin = "MHA_DEVICE";
        if (!spec || !*spec) {
            spec = "best";
            origin = "spec";
        }
    }
    int index = -1;
    mha_status st = resolve_spec(ctx, spec, origin, &index);
    if (st != MHA_OK)
        return st;
    return open_index(ctx, "mha_device_open", index, options, out);
}

mha_status mha_device_info_of(mha_device *device, mha_device_info *info)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    if (!info)
        return mha_error(device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_device_info_of: info is NULL");
    fill_info(device->ctx, &device->entry, device->index, info);
    mha_clear_error(device->ctx);
    return MHA_OK;
}

mha_status mha_device_destroy(mha_device *device)
{
    if (!device)
        return MHA_OK;
    mha_context *ctx = device->ctx;
    if (device->open_objects)
        return mha_error(ctx, MHA_BAD_STATE,
                         "mha_device_destroy: %d layer(s) or tensor(s) "
                         "still exist on this device; destroy them first",
                         device->open_objects);
    mha_attention_release(device);
    mha_profile_free(device);
    mha_tune_free(device);
    mha_backend_close(device->iface, device->dev);
    ctx->open_objects--;
    mha_host_free(&ctx->host, device->cache_dir);
    mha_host_free(&ctx->host, device);
    mha_clear_error(ctx);
    return MHA_OK;
}

/* ---- wrappers ------------------------------------------------------------------ */

mha_status mha_dev_usable(mha_device *device)
{
    if (!device->lost)
        return MHA_OK;
    return mha_error(device->ctx, MHA_DEVICE_LOST,
                     "the %s device %s was lost and refuses all work; "
                     "destroy its layers and tensors and the device, and "
                     "open another",
                     device->iface->name, device->entry.desc.name);
}

mha_status mha_device_note(mha_device *device, mha_status st)
{
    if (st == MHA_DEVICE_LOST)
        device->lost = 1;
    return st;
}

mha_status mha_device_memory_usage(mha_device *device, uint64_t *in_use,
                                   uint64_t *peak)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    if (in_use)
        *in_use = device->mem_in_use;
    if (peak)
        *peak = device->mem_peak;
    mha_clear_error(device->ctx);
    return MHA_OK;
}

mha_status mha_device_reset_peak_memory(mha_device *device)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    device->mem_peak = device->mem_in_use;
    mha_clear_error(device->ctx);
    return MHA_OK;
}
