/* cache.c: the on-disk VkPipelineCache, for fast start. One file per device
 * and driver, named by vendor, device, driver version and pipelineCacheUUID,
 * in mha_device_options.cache_dir, else MHA_CACHE_DIR, else
 * $XDG_CACHE_HOME/libmha, else ~/.cache/libmha ("" disables). The file is our
 * header (magic, size, FNV-1a checksum) followed by the driver's data; a
 * file that is short, corrupt or made for another device (the driver's own
 * VkPipelineCacheHeaderVersionOne is checked too) is ignored, never given to
 * the driver. The directory must be private and the file a regular one
 * (core/file.c); writes go to a new temporary file renamed into place. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vk_internal.h"

#define CACHE_MAGIC "MHAVKPC1"
#define HEADER_BYTES MHA_VK_CACHE_HEADER_BYTES /* magic[8], u64 size,
                                                  u64 checksum */
#define MAX_CACHE_BYTES ((size_t)256 << 20)

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static mha_status make_path(mha_vk_device *d,
                            const mha_device_options *options)
{
    char dir[1024];
    int found = mha_cache_dir_resolve(d->host, options ? options->cache_dir
                                                       : NULL,
                                      dir, sizeof dir);
    if (found < 0)
        return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                              "vulkan: cache directory path is too long");
    if (!found || !mha_cache_dir_ready(d->host, dir))
        return MHA_OK;
    const VkPhysicalDeviceProperties *p = &d->phys->props;
    char uuid[2 * VK_UUID_SIZE + 1];
    for (int i = 0; i < (int)VK_UUID_SIZE; ++i)
        snprintf(uuid + 2 * i, 3, "%02x", p->pipelineCacheUUID[i]);
    size_t n = strlen(dir) + 96;
    d->cache_path = mha_host_malloc(d->host, n);
    if (!d->cache_path)
        return mha_host_error(d->host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory");
    snprintf(d->cache_path, n, "%s/vk-%04x-%04x-%08x-%s.bin", dir,
             p->vendorID, p->deviceID, p->driverVersion, uuid);
    return MHA_OK;
}

/* Whether data is a pipeline cache this device wrote (Vulkan's header). */
static bool header_matches(const VkPhysicalDeviceProperties *p,
                           const unsigned char *data, size_t size)
{
    if (size < 16 + VK_UUID_SIZE)
        return false;
    uint32_t hlen = get_u32(data), version = get_u32(data + 4);
    return hlen >= 16 + VK_UUID_SIZE && hlen <= size &&
           version == VK_PIPELINE_CACHE_HEADER_VERSION_ONE &&
           get_u32(data + 8) == p->vendorID &&
           get_u32(data + 12) == p->deviceID &&
           memcmp(data + 16, p->pipelineCacheUUID, VK_UUID_SIZE) == 0;
}

size_t mha_vk_cache_blob_size(const unsigned char *head)
{
    uint64_t n = get_u64(head + 8);
    return memcmp(head, CACHE_MAGIC, 8) == 0 && n && n <= MAX_CACHE_BYTES
               ? (size_t)n
               : 0;
}

bool mha_vk_cache_blob_valid(const unsigned char *head,
                             const unsigned char *data, size_t size,
                             const VkPhysicalDeviceProperties *p)
{
    return size == mha_vk_cache_blob_size(head) &&
           fnv1a(data, size) == get_u64(head + 16) &&
           header_matches(p, data, size);
}

/* Reads and checks the file; returns its driver data (to free) or NULL. */
static unsigned char *load_file(mha_vk_device *d, size_t *size)
{
    FILE *f = mha_cache_file_open(d->host, d->cache_path);
    if (!f)
        return NULL;
    unsigned char head[HEADER_BYTES];
    unsigned char *data = NULL;
    const char *why = "short header";
    if (fread(head, 1, HEADER_BYTES, f) == HEADER_BYTES) {
        size_t n = mha_vk_cache_blob_size(head);
        why = "bad magic or size";
        if (n && (data = mha_host_malloc(d->host, n))) {
            why = "truncated, corrupt or for another device";
            if (fread(data, 1, n, f) != n ||
                !mha_vk_cache_blob_valid(head, data, n, &d->phys->props)) {
                mha_host_free(d->host, data);
                data = NULL;
            } else {
                *size = n;
            }
        }
    }
    fclose(f);
    if (!data)
        mha_host_log(d->host, MHA_LOG_WARN,
                     "vulkan: ignoring pipeline cache %s (%s)", d->cache_path,
                     why);
    return data;
}

mha_status mha_vk_cache_open(mha_vk_device *d,
                             const mha_device_options *options)
{
    mha_status s = make_path(d, options);
    if (s != MHA_OK)
        return s;
    size_t size = 0;
    unsigned char *data = d->cache_path ? load_file(d, &size) : NULL;
    d->cache_loaded = data ? fnv1a(data, size) : 0;
    VkPipelineCacheCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
        .initialDataSize = data ? size : 0,
        .pInitialData = data,
    };
    VkResult r = d->vk.vkCreatePipelineCache(d->dev, &ci, NULL, &d->cache);
    mha_host_free(d->host, data);
    if (r != VK_SUCCESS) {
        d->cache = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreatePipelineCache");
    }
    if (data)
        mha_host_log(d->host, MHA_LOG_DEBUG,
                     "vulkan: loaded %zu bytes of pipeline cache from %s",
                     size, d->cache_path);
    return MHA_OK;
}

static void save_file(mha_vk_device *d, const unsigned char *data,
                      size_t size)
{
    unsigned char head[HEADER_BYTES];
    memcpy(head, CACHE_MAGIC, 8);
    put_u64(head + 8, size);
    put_u64(head + 16, fnv1a(data, size));
    int err = mha_cache_file_write(d->cache_path, head, HEADER_BYTES, data,
                                   size);
    if (err)
        mha_host_log(d->host, MHA_LOG_WARN,
                     "vulkan: could not write pipeline cache %s: %s",
                     d->cache_path, strerror(err));
}

void mha_vk_cache_close(mha_vk_device *d)
{
    if (!d->cache)
        return;
    size_t size = 0;
    if (d->cache_path && !d->lost && d->pipe_count &&
        d->vk.vkGetPipelineCacheData(d->dev, d->cache, &size, NULL) ==
            VK_SUCCESS &&
        size && size <= MAX_CACHE_BYTES) {
        unsigned char *data = mha_host_malloc(d->host, size);
        /* rewritten only when the driver's data changed */
        if (data &&
            d->vk.vkGetPipelineCacheData(d->dev, d->cache, &size, data) ==
                VK_SUCCESS &&
            fnv1a(data, size) != d->cache_loaded)
            save_file(d, data, size);
        mha_host_free(d->host, data);
    }
    d->vk.vkDestroyPipelineCache(d->dev, d->cache, NULL);
    d->cache = VK_NULL_HANDLE;
}
