/* device.c: probing physical devices (kind, vendor, driver, memory, the
 * compute limits kernels are specialised from, fp16 support), the
 * MHA_VULKAN_LIMITS caps that let lavapipe stand in for mobile-class GPUs,
 * opening/closing a logical device with its own volk device table, and
 * adopting an application's device (mha_vulkan.h), where only what the
 * application enabled is used. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mha_vulkan.h"
#include "vk_internal.h"

/* ---- VkResult translation --------------------------------------------- */

const char *mha_vk_result_name(VkResult r)
{
    switch (r) {
#define R_(x) case x: return #x;
    R_(VK_SUCCESS) R_(VK_NOT_READY) R_(VK_TIMEOUT) R_(VK_INCOMPLETE)
    R_(VK_ERROR_OUT_OF_HOST_MEMORY) R_(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    R_(VK_ERROR_INITIALIZATION_FAILED) R_(VK_ERROR_DEVICE_LOST)
    R_(VK_ERROR_MEMORY_MAP_FAILED) R_(VK_ERROR_LAYER_NOT_PRESENT)
    R_(VK_ERROR_EXTENSION_NOT_PRESENT) R_(VK_ERROR_FEATURE_NOT_PRESENT)
    R_(VK_ERROR_INCOMPATIBLE_DRIVER) R_(VK_ERROR_TOO_MANY_OBJECTS)
    R_(VK_ERROR_FORMAT_NOT_SUPPORTED) R_(VK_ERROR_FRAGMENTED_POOL)
    R_(VK_ERROR_UNKNOWN) R_(VK_ERROR_OUT_OF_POOL_MEMORY)
    R_(VK_ERROR_INVALID_SHADER_NV)
#undef R_
    default: return "VkResult";
    }
}

mha_status mha_vk_fail(mha_host *host, mha_vk_device *d, VkResult r,
                       const char *call)
{
    mha_status s = MHA_DEVICE_ERROR;
    if (r == VK_ERROR_OUT_OF_HOST_MEMORY || r == VK_ERROR_OUT_OF_DEVICE_MEMORY)
        s = MHA_OUT_OF_MEMORY;
    else if (r == VK_ERROR_DEVICE_LOST)
        s = MHA_DEVICE_LOST;
    if (d && r == VK_ERROR_DEVICE_LOST)
        d->lost = true;
    return mha_host_error(host, s, "%s failed: %s (%d)", call,
                          mha_vk_result_name(r), (int)r);
}

void *mha_vk_grow(mha_host *host, void *arr, int count, int *cap, int need,
                  size_t elem)
{
    if (need <= *cap)
        return arr;
    int grown = *cap ? *cap : 16;
    while (grown < need)
        grown *= 2;
    void *p = mha_host_calloc(host, (size_t)grown, elem);
    if (!p) {
        mha_host_error(host, MHA_OUT_OF_MEMORY, "vulkan: out of host memory");
        return NULL;
    }
    if (count)
        memcpy(p, arr, (size_t)count * elem);
    mha_host_free(host, arr);
    *cap = grown;
    return p;
}

/* Copies src into dst (size bytes), truncating. */
static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- limits ------------------------------------------------------------ */

/* MHA_VULKAN_LIMITS="shared=16384,workgroup=128,fp16=0": lowers (never
 * raises) the limits kernels are specialised from, so lavapipe can run the
 * variants mobile GPUs get. Also "subgroup=0" (no subgroup shuffles: the
 * kernels' shared-memory reductions), "fp16math=0" (fp16 tensors, fp32
 * arithmetic: no shaderFloat16 kernels), "range=N" (a smaller
 * maxStorageBufferRange), "mapped=0" (transfers through a staging
 * buffer, as on a discrete GPU) and "storage=N" (N storage buffers per
 * stage: below MHA_VK_BINDINGS the device is unusable). */
static void apply_limit_caps(mha_host *host, mha_vk_limits *lim)
{
    const char *env = mha_host_getenv(host, "MHA_VULKAN_LIMITS");
    if (!env)
        return;
    const char *p = env;
    while (*p) {
        char key[32];
        size_t n = strcspn(p, "=,");
        if (n >= sizeof key || p[n] != '=') {
            mha_host_log(host, MHA_LOG_WARN,
                         "vulkan: MHA_VULKAN_LIMITS: cannot parse \"%s\"", p);
            return;
        }
        memcpy(key, p, n);
        key[n] = '\0';
        char *end;
        unsigned long long v = strtoull(p + n + 1, &end, 0);
        if (strcmp(key, "shared") == 0 && v < lim->shared_bytes)
            lim->shared_bytes = (uint32_t)v;
        else if (strcmp(key, "workgroup") == 0 && v < lim->max_wg)
            lim->max_wg = (uint32_t)v;
        else if (strcmp(key, "fp16") == 0 && v == 0)
            lim->fp16_storage = lim->fp16_math = false;
        else if (strcmp(key, "fp16math") == 0 && v == 0)
            lim->fp16_math = false;
        else if (strcmp(key, "subgroup") == 0 && v == 0)
            lim->subgroup_shuffle = false;
        else if (strcmp(key, "range") == 0 && v < lim->max_range)
            lim->max_range = v;
        else if (strcmp(key, "mapped") == 0 && v == 0)
            lim->map_tensors = false;
        else if (strcmp(key, "storage") == 0 && v < lim->storage_buffers)
            lim->storage_buffers = (uint32_t)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            break;
    }
    if (lim->max_wg_x > lim->max_wg)
        lim->max_wg_x = lim->max_wg;
}

/* Why a device cannot run libmha's kernels, whose one descriptor set
 * layout binds MHA_VK_BINDINGS storage buffers to the compute stage
 * (Vulkan guarantees only 4 per stage), with the device's number and
 * MHA_VK_BINDINGS as the %u's. */
#define TOO_FEW_BINDINGS                                                     \
    "%u storage buffers per stage (the lower of "                           \
    "maxPerStageDescriptorStorageBuffers and "                               \
    "maxDescriptorSetStorageBuffers); libmha's kernels bind %u"

static bool has_ext(const VkExtensionProperties *e, uint32_t n,
                    const char *name)
{
    for (uint32_t i = 0; i < n; ++i)
        if (strcmp(e[i].extensionName, name) == 0)
            return true;
    return false;
}

/* ---- probing ----------------------------------------------------------- */

static const char *vendor_name(uint32_t id)
{
    switch (id) {
    case 0x1002: return "AMD";
    case 0x10DE: return "NVIDIA";
    case 0x8086: return "Intel";
    case 0x5143: return "Qualcomm";
    case 0x13B5: return "ARM";
    case 0x1010: return "Imagination";
    case 0x106B: return "Apple";
    case 0x14E4: return "Broadcom";
    case 0x10005: return "Mesa";
    default: return NULL;
    }
}

static mha_device_kind kind_of(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return MHA_DEVICE_DISCRETE_GPU;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
        return MHA_DEVICE_INTEGRATED_GPU;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return MHA_DEVICE_VIRTUAL_GPU;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return MHA_DEVICE_SOFTWARE;
    default: return MHA_DEVICE_OTHER;
    }
}

static void driver_version_str(const VkPhysicalDeviceProperties *p, char *buf,
                               size_t size)
{
    uint32_t v = p->driverVersion;
    if (p->vendorID == 0x10DE)
        snprintf(buf, size, "%u.%u.%u.%u", (v >> 22) & 0x3ff,
                 (v >> 14) & 0xff, (v >> 6) & 0xff, v & 0x3f);
    else
        snprintf(buf, size, "%u.%u.%u", VK_API_VERSION_MAJOR(v),
                 VK_API_VERSION_MINOR(v), VK_API_VERSION_PATCH(v));
}

static int find_compute_queue(mha_vk_state *st, VkPhysicalDevice pd,
                              uint32_t *family)
{
    VkQueueFamilyProperties q[16];
    uint32_t n = 16;
    st->fn.GetPhysicalDeviceQueueFamilyProperties(pd, &n, q);
    int best = -1;
    for (uint32_t i = 0; i < n; ++i) {
        if (!(q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) || !q[i].queueCount)
            continue;
        /* prefer a compute-only family (async compute) */
        if (best < 0 || !(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT))
            best = (int)i;
    }
    if (best < 0)
        return 0;
    *family = (uint32_t)best;
    return 1;
}

/* The memory heaps as "2048L+256" (MiB, L: device-local) into buf. */
static void heaps_str(const VkPhysicalDeviceMemoryProperties *mp, char *buf,
                      size_t size)
{
    size_t n = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < mp->memoryHeapCount && n + 1 < size; ++i) {
        int w = snprintf(buf + n, size - n, "%s%" PRIu64 "%s", i ? "+" : "",
                         (uint64_t)(mp->memoryHeaps[i].size >> 20),
                         mp->memoryHeaps[i].flags &
                                 VK_MEMORY_HEAP_DEVICE_LOCAL_BIT
                             ? "L"
                             : "");
        if (w < 0)
            break;
        n += (size_t)w;
    }
}

/* Fills ph->lim, the driver and heap strings; returns the device-local
 * bytes. */
static uint64_t query_device(const mha_vk_ifns *fn, mha_host *host,
                             mha_vk_phys *ph, char *driver,
                             size_t driver_size, char *heaps,
                             size_t heaps_size)
{
    uint32_t api = ph->props.apiVersion;
    VkExtensionProperties ext[512];
    uint32_t next = 512;
    if (fn->EnumerateDeviceExtensionProperties(ph->pd, NULL, &next, ext) < 0)
        next = 0;
    bool driver_props = api >= VK_API_VERSION_1_2 ||
                        has_ext(ext, next, "VK_KHR_driver_properties");
    ph->has_fp16_ext = api < VK_API_VERSION_1_2 &&
                       has_ext(ext, next, "VK_KHR_shader_float16_int8");
    bool f16_feature = api >= VK_API_VERSION_1_2 || ph->has_fp16_ext;

    VkPhysicalDeviceDriverProperties drv = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
    VkPhysicalDeviceSubgroupProperties sub = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES,
        .pNext = driver_props ? &drv : NULL};
    VkPhysicalDeviceProperties2 p2 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
        .pNext = &sub};
    fn->GetPhysicalDeviceProperties2(ph->pd, &p2);

    VkPhysicalDeviceShaderFloat16Int8Features f16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES};
    VkPhysicalDevice16BitStorageFeatures s16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
        .pNext = f16_feature ? &f16 : NULL};
    VkPhysicalDeviceFeatures2 f2 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &s16};
    fn->GetPhysicalDeviceFeatures2(ph->pd, &f2);

    const VkPhysicalDeviceLimits *l = &ph->props.limits;
    mha_vk_limits *lim = &ph->lim;
    lim->shared_bytes = l->maxComputeSharedMemorySize;
    lim->max_wg = l->maxComputeWorkGroupInvocations;
    lim->max_wg_x = l->maxComputeWorkGroupSize[0];
    for (int i = 0; i < 3; ++i)
        lim->max_groups[i] = l->maxComputeWorkGroupCount[i];
    lim->subgroup_size = sub.subgroupSize;
    lim->subgroup_shuffle =
        (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
        (sub.supportedOperations & VK_SUBGROUP_FEATURE_SHUFFLE_BIT);
    lim->max_range = l->maxStorageBufferRange;
    lim->offset_align = l->minStorageBufferOffsetAlignment;
    lim->push_bytes = l->maxPushConstantsSize;
    lim->storage_buffers =
        l->maxPerStageDescriptorStorageBuffers <
                l->maxDescriptorSetStorageBuffers
            ? l->maxPerStageDescriptorStorageBuffers
            : l->maxDescriptorSetStorageBuffers;
    lim->fp16_storage = s16.storageBuffer16BitAccess;
    lim->fp16_math = f16_feature && f16.shaderFloat16;
    lim->map_tensors = true;
    apply_limit_caps(host, lim);

    char ver[32], text[VK_MAX_DRIVER_NAME_SIZE + VK_MAX_DRIVER_INFO_SIZE + 40];
    driver_version_str(&ph->props, ver, sizeof ver);
    if (driver_props)
        snprintf(text, sizeof text, "%s %s (%s)", drv.driverName, ver,
                 drv.driverInfo);
    else
        snprintf(text, sizeof text, "%s", ver);
    copy_str(driver, driver_size, text);

    VkPhysicalDeviceMemoryProperties mp;
    fn->GetPhysicalDeviceMemoryProperties(ph->pd, &mp);
    heaps_str(&mp, heaps, heaps_size);
    uint64_t local = 0;
    for (uint32_t i = 0; i < mp.memoryHeapCount; ++i)
        if (mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
            local += mp.memoryHeaps[i].size;
    return local;
}

static void describe(const mha_vk_phys *ph, uint64_t local,
                     const char *driver, const char *heaps,
                     mha_device_desc *d)
{
    const mha_vk_limits *lim = &ph->lim;
    const VkPhysicalDeviceProperties *p = &ph->props;
    memset(d, 0, sizeof *d);
    d->kind = kind_of(p->deviceType);
    const char *vn = vendor_name(p->vendorID);
    if (vn)
        snprintf(d->vendor, sizeof d->vendor, "%s", vn);
    else
        snprintf(d->vendor, sizeof d->vendor, "0x%04x", p->vendorID);
    copy_str(d->name, sizeof d->name, p->deviceName);
    copy_str(d->driver, sizeof d->driver, driver);
    d->memory_bytes = local;
    d->max_buffer_bytes = lim->max_range;
    d->features = MHA_FEATURE_FUSED_ATTENTION;
    if (lim->subgroup_size)
        d->features |= MHA_FEATURE_SUBGROUPS;
    if (lim->fp16_storage)
        d->features |= MHA_FEATURE_FP16_STORAGE;
    if (lim->fp16_math)
        d->features |= MHA_FEATURE_FP16_MATH;
    d->max_workgroup_size = lim->max_wg;
    d->shared_memory_bytes = lim->shared_bytes;
    d->subgroup_size = lim->subgroup_size;
    snprintf(d->details, sizeof d->details,
             "Vulkan %u.%u.%u, id %04x:%04x, heaps %s MiB, subgroup %u, shared %u B, workgroup %u, storage range "
             "%" PRIu64 " MiB, offset align %" PRIu64
             ", fp16 storage %s, fp16 math %s",
             VK_API_VERSION_MAJOR(p->apiVersion),
             VK_API_VERSION_MINOR(p->apiVersion),
             VK_API_VERSION_PATCH(p->apiVersion), p->vendorID, p->deviceID,
             heaps, lim->subgroup_size, lim->shared_bytes, lim->max_wg,
             lim->max_range >> 20, lim->offset_align,
             lim->fp16_storage ? "yes" : "no", lim->fp16_math ? "yes" : "no");
}

mha_status mha_vk_probe(mha_vk_state *st, mha_device_desc *descs, int cap,
                        int *count)
{
    VkPhysicalDevice pds[MHA_VK_MAX_DEVICES];
    uint32_t n = MHA_VK_MAX_DEVICES;
    VkResult r = st->fn.EnumeratePhysicalDevices(st->instance, &n, pds);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        mha_host_log(st->host, MHA_LOG_INFO,
                     "vulkan: vkEnumeratePhysicalDevices failed: %s (%d); "
                     "no devices",
                     mha_vk_result_name(r), (int)r);
        n = 0;
    }
    st->count = 0;
    for (uint32_t i = 0; i < n && st->count < cap; ++i) {
        mha_vk_phys *ph = &st->phys[st->count];
        memset(ph, 0, sizeof *ph);
        ph->pd = pds[i];
        st->fn.GetPhysicalDeviceProperties(ph->pd, &ph->props);
        if (ph->props.apiVersion < VK_API_VERSION_1_1) {
            mha_host_log(st->host, MHA_LOG_INFO,
                         "vulkan: skipping %s: Vulkan 1.0 only",
                         ph->props.deviceName);
            continue;
        }
        if (!find_compute_queue(st, ph->pd, &ph->queue_family)) {
            mha_host_log(st->host, MHA_LOG_INFO,
                         "vulkan: skipping %s: no compute queue",
                         ph->props.deviceName);
            continue;
        }
        char driver[128], heaps[48];
        uint64_t local = query_device(&st->fn, st->host, ph, driver,
                                      sizeof driver, heaps, sizeof heaps);
        if (ph->lim.storage_buffers < MHA_VK_BINDINGS) {
            mha_host_log(st->host, MHA_LOG_INFO,
                         "vulkan: skipping %s: " TOO_FEW_BINDINGS,
                         ph->props.deviceName, ph->lim.storage_buffers,
                         (unsigned)MHA_VK_BINDINGS);
            continue;
        }
        describe(ph, local, driver, heaps, &descs[st->count]);
        st->count++;
    }
    if (!st->count)
        mha_host_log(st->host, MHA_LOG_INFO,
                     "vulkan: no Vulkan 1.1 device with a compute queue");
    *count = st->count;
    return MHA_OK;
}

/* ---- open/close --------------------------------------------------------- */

static mha_status create_device(mha_vk_state *st, mha_vk_device *d)
{
    const mha_vk_phys *ph = d->phys;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qi = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = ph->queue_family,
        .queueCount = 1,
        .pQueuePriorities = &prio,
    };
    /* shaderFloat16 for the fp16-arithmetic kernels (kernel_usable) */
    VkPhysicalDeviceShaderFloat16Int8Features f16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES,
        .shaderFloat16 = ph->lim.fp16_math,
    };
    VkPhysicalDevice16BitStorageFeatures s16 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
        .pNext = ph->lim.fp16_math ? &f16 : NULL,
        .storageBuffer16BitAccess = ph->lim.fp16_storage,
    };
    const char *f16_ext = "VK_KHR_shader_float16_int8";
    bool ext = ph->lim.fp16_math && ph->has_fp16_ext;
    VkDeviceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
        .pNext = &s16,
        .queueCreateInfoCount = 1,
        .pQueueCreateInfos = &qi,
        .enabledExtensionCount = ext ? 1u : 0u,
        .ppEnabledExtensionNames = ext ? &f16_ext : NULL,
    };
    VkResult r = st->fn.CreateDevice(ph->pd, &ci, NULL, &d->dev);
    if (r != VK_SUCCESS) {
        d->dev = VK_NULL_HANDLE;
        return mha_vk_fail(st->host, d, r, "vkCreateDevice");
    }
    mha_vk_load_device_table(&d->vk, d->dev, st->fn.GetDeviceProcAddr);
    d->vk.vkGetDeviceQueue(d->dev, ph->queue_family, 0, &d->queue);
    return MHA_OK;
}

/* What both opened and adopted devices set up once dev and the table
 * exist; on failure the caller closes d. */
static mha_status init_device(mha_vk_device *d,
                              const mha_device_options *options)
{
    mha_status s = mha_vk_memory_init(d);
    if (s == MHA_OK)
        s = mha_vk_cache_open(d, options);
    if (s == MHA_OK)
        s = mha_vk_pipelines_init(d);
    if (s == MHA_OK)
        s = mha_vk_submit_init(d);
    if (s == MHA_OK)
        s = mha_vk_take_validation_error(d->st);
    return s;
}

mha_status mha_vk_open(mha_vk_state *st, int index,
                       const mha_device_options *options,
                       mha_vk_device **out)
{
    if (index < 0 || index >= st->count)
        return mha_host_error(st->host, MHA_NO_DEVICE,
                              "vulkan: no device %d (%d found)", index,
                              st->count);
    mha_vk_device *d = mha_host_calloc(st->host, 1, sizeof *d);
    if (!d)
        return mha_host_error(st->host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory opening device %d",
                              index);
    d->st = st;
    d->host = st->host;
    d->fn = &st->fn;
    d->phys = &st->phys[index];
    mha_status s = create_device(st, d);
    if (s == MHA_OK)
        s = init_device(d, options);
    if (s != MHA_OK) {
        mha_vk_close(d);
        return s;
    }
    *out = d;
    return MHA_OK;
}

/* ---- adopting the application's device ------------------------------- */

static bool lists_ext(const mha_vulkan_device_info *info, const char *name)
{
    for (uint32_t i = 0; i < info->enabled_extension_count; ++i)
        if (info->enabled_extensions[i] &&
            strcmp(info->enabled_extensions[i], name) == 0)
            return true;
    return false;
}

/* The features libmha can use that the application's VkDeviceCreateInfo
 * pNext chain enables (the structs it does not know are skipped). */
static void enabled_features(const mha_vulkan_device_info *info, bool *s16,
                             bool *f16)
{
    *s16 = *f16 = false;
    for (const VkBaseInStructure *p = info->enabled_features; p;
         p = p->pNext) {
        const void *f = p;
        const VkPhysicalDevice16BitStorageFeatures *storage16 = f;
        const VkPhysicalDeviceVulkan11Features *v11 = f;
        const VkPhysicalDeviceShaderFloat16Int8Features *float16 = f;
        const VkPhysicalDeviceVulkan12Features *v12 = f;
        switch (p->sType) {
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES:
            *s16 |= storage16->storageBuffer16BitAccess != VK_FALSE;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES:
            *s16 |= v11->storageBuffer16BitAccess != VK_FALSE;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES:
            *f16 |= float16->shaderFloat16 != VK_FALSE;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES:
            *f16 |= v12->shaderFloat16 != VK_FALSE;
            break;
        default:
            break;
        }
    }
}

static mha_status adopt_error(mha_host *host, const char *what)
{
    return mha_host_error(host, MHA_INVALID_ARGUMENT,
                          "mha_vulkan_device_adopt: %s", what);
}

/* Fills d->own_phys from the application's physical device, limited to
 * what it enabled, and checks what libmha cannot do without. */
static mha_status adopt_phys(mha_vk_device *d,
                             const mha_vulkan_device_info *info, char *driver,
                             size_t driver_size, char *heaps,
                             size_t heaps_size, uint64_t *local)
{
    mha_vk_phys *ph = &d->own_phys;
    ph->pd = info->physical_device;
    d->fn->GetPhysicalDeviceProperties(ph->pd, &ph->props);
    uint32_t api = info->api_version < ph->props.apiVersion
                       ? info->api_version
                       : ph->props.apiVersion;
    if (api < VK_API_VERSION_1_1)
        return mha_host_error(
            d->host, MHA_UNSUPPORTED,
            "mha_vulkan_device_adopt: api_version %u.%u (of the instance, "
            "capped by %s's %u.%u); libmha's kernels need Vulkan 1.1",
            VK_API_VERSION_MAJOR(api), VK_API_VERSION_MINOR(api),
            ph->props.deviceName, VK_API_VERSION_MAJOR(ph->props.apiVersion),
            VK_API_VERSION_MINOR(ph->props.apiVersion));
    VkQueueFamilyProperties q[32];
    uint32_t n = 32;
    d->fn->GetPhysicalDeviceQueueFamilyProperties(ph->pd, &n, q);
    if (info->queue_family_index >= n ||
        !(q[info->queue_family_index].queueFlags & VK_QUEUE_COMPUTE_BIT))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "mha_vulkan_device_adopt: queue family %u of "
                              "%s has no VK_QUEUE_COMPUTE_BIT (%u families)",
                              info->queue_family_index, ph->props.deviceName,
                              n);
    ph->queue_family = info->queue_family_index;
    *local = query_device(d->fn, d->host, ph, driver, driver_size, heaps,
                          heaps_size);
    if (ph->lim.storage_buffers < MHA_VK_BINDINGS)
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "mha_vulkan_device_adopt: %s has "
                              TOO_FEW_BINDINGS,
                              ph->props.deviceName, ph->lim.storage_buffers,
                              (unsigned)MHA_VK_BINDINGS);
    bool s16, f16;
    enabled_features(info, &s16, &f16);
    /* shaderFloat16 needs VK_KHR_shader_float16_int8 below Vulkan 1.2 */
    f16 = f16 && (api >= VK_API_VERSION_1_2 ||
                  lists_ext(info, "VK_KHR_shader_float16_int8"));
    ph->lim.fp16_storage = ph->lim.fp16_storage && s16;
    ph->lim.fp16_math = ph->lim.fp16_math && f16;
    return MHA_OK;
}

/* The details the core prints: that the device is adopted, and when fp16
 * tensors are off, why, so mha_layer_create's "needs fp16 storage" message
 * names the feature to enable. */
static void adopted_details(const mha_vk_device *d, mha_device_desc *desc)
{
    char details[sizeof desc->details + 80]; /* copy_str truncates */
    snprintf(details, sizeof details, "adopted VkDevice, %s queue%s; %s",
             d->queue ? "with a" : "no",
             d->phys->lim.fp16_storage
                 ? ""
                 : ", storageBuffer16BitAccess not enabled",
             desc->details);
    copy_str(desc->details, sizeof desc->details, details);
}

mha_status mha_vk_adopt(mha_vk_state *st, mha_host *host,
                        const mha_vulkan_device_info *info,
                        const mha_device_options *options,
                        mha_vk_device **out, mha_device_desc *desc)
{
    if (!info->instance || !info->physical_device || !info->device)
        return adopt_error(host, "instance, physical_device and device must "
                                 "be the application's handles");
    if (!info->get_instance_proc_addr)
        return adopt_error(host, "get_instance_proc_addr is NULL");
    if (info->enabled_extension_count && !info->enabled_extensions)
        return adopt_error(host, "enabled_extensions is NULL but "
                                 "enabled_extension_count is not 0");
    mha_vk_device *d = mha_host_calloc(host, 1, sizeof *d);
    if (!d)
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "vulkan: out of host memory adopting a device");
    d->st = st;
    d->host = host;
    d->adopted = true;
    d->fn = &d->own_fn;
    d->phys = &d->own_phys;
    char driver[128], heaps[48];
    uint64_t local = 0;
    mha_status s = mha_vk_load_ifns(host, &d->own_fn, info->instance,
                                    info->get_instance_proc_addr, false);
    if (s == MHA_OK)
        s = adopt_phys(d, info, driver, sizeof driver, heaps, sizeof heaps,
                       &local);
    if (s == MHA_OK) {
        PFN_vkGetDeviceProcAddr gdpa = info->get_device_proc_addr
                                           ? info->get_device_proc_addr
                                           : d->own_fn.GetDeviceProcAddr;
        d->dev = info->device;
        d->queue = info->queue;
        mha_vk_load_device_table(&d->vk, d->dev, gdpa);
        s = init_device(d, options);
    }
    if (s != MHA_OK) {
        mha_vk_close(d);
        return s;
    }
    describe(d->phys, local, driver, heaps, desc);
    adopted_details(d, desc);
    *out = d;
    return MHA_OK;
}

void mha_vk_close(mha_vk_device *d)
{
    if (!d)
        return;
    if (d->dev) {
        /* Our own work is always waited for (mha_vk_flush); an adopted
         * device's other queues are the application's, not ours to idle. */
        if (!d->lost && !d->adopted)
            d->vk.vkDeviceWaitIdle(d->dev);
        mha_vk_submit_fini(d);
        mha_vk_timer_fini(d);
        mha_vk_cache_close(d); /* saves what the pipelines put in it */
        mha_vk_pipelines_fini(d);
        mha_vk_memory_fini(d);
        if (!d->adopted)
            d->vk.vkDestroyDevice(d->dev, NULL);
    }
    mha_host_free(d->host, d->cache_path);
    mha_host_free(d->host, d);
}
