/* vk_internal.h: private types of the Vulkan backend, shared by its files
 * (loader.c, device.c, memory.c, pipeline.c, cache.c, ops.c, backend.c).
 * Nothing here is visible outside backends/vulkan/ except the one iface
 * symbol, mha_vulkan_backend. */
#ifndef MHA_VK_INTERNAL_H
#define MHA_VK_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <volk.h>

#include "backend.h"

#define MHA_VK_MAX_DEVICES 16
#define MHA_VK_BINDINGS 6    /* storage buffers per dispatch, all kernels */
#define MHA_VK_PUSH_BYTES 128 /* the guaranteed minimum maxPushConstantsSize */
#define MHA_VK_MAX_SPEC 6
#define MHA_VK_MSG_SIZE 768

/* Instance-level entry points, loaded per VkInstance (see loader.c for why
 * volk's global instance pointers are not used). */
typedef struct mha_vk_ifns {
    PFN_vkDestroyInstance DestroyInstance;
    PFN_vkEnumeratePhysicalDevices EnumeratePhysicalDevices;
    PFN_vkGetPhysicalDeviceProperties GetPhysicalDeviceProperties;
    PFN_vkGetPhysicalDeviceProperties2 GetPhysicalDeviceProperties2;
    PFN_vkGetPhysicalDeviceFeatures2 GetPhysicalDeviceFeatures2;
    PFN_vkGetPhysicalDeviceMemoryProperties GetPhysicalDeviceMemoryProperties;
    PFN_vkGetPhysicalDeviceQueueFamilyProperties
        GetPhysicalDeviceQueueFamilyProperties;
    PFN_vkEnumerateDeviceExtensionProperties EnumerateDeviceExtensionProperties;
    PFN_vkCreateDevice CreateDevice;
    PFN_vkGetDeviceProcAddr GetDeviceProcAddr;
    PFN_vkCreateDebugUtilsMessengerEXT CreateDebugUtilsMessengerEXT;
    PFN_vkDestroyDebugUtilsMessengerEXT DestroyDebugUtilsMessengerEXT;
} mha_vk_ifns;

/* The limits kernels are specialised from (after MHA_VULKAN_LIMITS caps). */
typedef struct mha_vk_limits {
    uint32_t shared_bytes;   /* maxComputeSharedMemorySize */
    uint32_t max_wg;         /* maxComputeWorkGroupInvocations */
    uint32_t max_wg_x;       /* maxComputeWorkGroupSize[0] */
    uint32_t max_groups[3];  /* maxComputeWorkGroupCount */
    uint32_t subgroup_size;  /* 0 when unknown */
    uint64_t max_range;      /* maxStorageBufferRange */
    uint64_t offset_align;   /* minStorageBufferOffsetAlignment */
    uint32_t push_bytes;     /* maxPushConstantsSize */
    bool fp16_storage;       /* storageBuffer16BitAccess */
    bool fp16_math;          /* shaderFloat16 */
    bool map_tensors;        /* map host-visible tensor memory (else every
                                transfer goes through staging) */
} mha_vk_limits;

/* One physical device with a compute queue, as probed at init. */
typedef struct mha_vk_phys {
    VkPhysicalDevice pd;
    VkPhysicalDeviceProperties props;
    uint32_t queue_family;
    mha_vk_limits lim;
    bool has_fp16_ext; /* VK_KHR_shader_float16_int8 to enable */
} mha_vk_phys;

/* Per-context state: the loaded runtime and one VkInstance. */
typedef struct mha_vk_state {
    mha_host *host;
    VkInstance instance;
    mha_vk_ifns fn;
    VkDebugUtilsMessengerEXT messenger;
    bool validation;
    /* First validation warning/error since the last check (see
     * mha_vk_take_validation_error); "" when none. */
    char vmsg[MHA_VK_MSG_SIZE];
    int count;
    mha_vk_phys phys[MHA_VK_MAX_DEVICES];
} mha_vk_state;

/* A VkDeviceMemory block bound to one VkBuffer over its whole size; tensor
 * buffers are 256-byte aligned ranges of it. Kernels bind a tensor's range
 * from a 256-byte aligned start (valid for any
 * minStorageBufferOffsetAlignment) and get element offsets in push
 * constants; block size <= maxStorageBufferRange keeps every range
 * bindable. */
typedef struct mha_vk_buffer mha_vk_buffer;
typedef struct mha_vk_block {
    VkDeviceMemory mem;
    VkBuffer buf;
    VkDeviceSize size;
    void *map; /* persistently mapped when host-visible, else NULL */
    mha_vk_buffer *first; /* live ranges sorted by offset */
    struct mha_vk_block *next;
} mha_vk_block;

struct mha_vk_buffer {
    mha_vk_block *block;
    VkDeviceSize offset, size;
    mha_vk_buffer *prev, *next; /* in block->first's list */
};

/* A host-visible buffer for uploads and downloads of device-local memory. */
typedef struct mha_vk_staging {
    VkDeviceMemory mem;
    VkBuffer buf;
    VkDeviceSize size;
    void *map;
} mha_vk_staging;

enum mha_vk_kernel {
    MHA_VK_K_COPY = 0,
    MHA_VK_K_MEAN_HEADS,
    MHA_VK_K_SOFTMAX,
    MHA_VK_K_MATMUL,
    MHA_VK_K_ATTENTION,
    MHA_VK_K_COUNT
};

/* The byte range of a block bound for one tensor of a dispatch (what the
 * kernel may read or write), also what barriers are decided on. */
typedef struct mha_vk_access {
    VkBuffer buf;
    VkDeviceSize lo, hi; /* [lo, hi) */
    bool write;
} mha_vk_access;

typedef struct mha_vk_pipeline {
    int kernel;
    bool f16;
    uint32_t spec[MHA_VK_MAX_SPEC];
    VkPipeline pipe;
} mha_vk_pipeline;

typedef struct mha_vk_device {
    mha_vk_state *st;
    mha_host *host;
    const mha_vk_phys *phys;
    VkDevice dev;
    struct VolkDeviceTable vk;
    VkQueue queue;
    bool lost;

    /* memory */
    VkDeviceSize block_size;
    mha_vk_block *blocks;
    mha_vk_buffer *dummy;   /* bound where a kernel's source is absent */
    mha_vk_staging staging;
    /* Fault injection for tests: when > 0, counts device allocations down
     * and the one that reaches 0 fails as VK_ERROR_OUT_OF_DEVICE_MEMORY. */
    int fault_countdown;

    /* pipelines */
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout layout;
    VkPipelineCache cache;
    char *cache_path;       /* NULL: no disk cache */
    uint64_t cache_loaded;  /* checksum of the data loaded, 0 if none */
    VkShaderModule modules[MHA_VK_K_COUNT][2]; /* fp32, fp16 builds */
    mha_vk_pipeline *pipes;
    int pipe_count, pipe_cap;

    /* submission: one command buffer records everything between syncs */
    VkCommandPool cmd_pool;
    VkCommandBuffer cmd;
    VkFence fence;
    bool recording;
    uint32_t dispatches;    /* recorded since the last sync */
    uint32_t barriers;      /* of them, how many needed a barrier */
    /* accesses of the dispatches since the last barrier: a dispatch that
     * conflicts with one of them (read after write, write after read or
     * write) gets a barrier first; independent ones run back to back */
    mha_vk_access *since_barrier;
    int since_count, since_cap;
    VkDescriptorPool *desc_pools;
    int desc_pool_count, desc_pool_cap, desc_pool_used;
    uint32_t desc_sets_in_pool; /* allocated from desc_pools[used-1] */
} mha_vk_device;

/* ---- loader.c ---- */
mha_status mha_vk_load_runtime(mha_host *host);
mha_status mha_vk_create_instance(mha_vk_state *st);
void mha_vk_destroy_instance(mha_vk_state *st);
/* Returns MHA_DEVICE_ERROR with the recorded validation message (and
 * clears it), or MHA_OK when the layers reported nothing. */
mha_status mha_vk_take_validation_error(mha_vk_state *st);

/* ---- device.c ---- */
mha_status mha_vk_probe(mha_vk_state *st, mha_device_desc *descs, int cap,
                        int *count);
mha_status mha_vk_open(mha_vk_state *st, int index,
                       const mha_device_options *options,
                       mha_vk_device **out);
void mha_vk_close(mha_vk_device *d);
/* Translates a VkResult into a status with a message naming the call;
 * marks the device lost on VK_ERROR_DEVICE_LOST. d may be NULL. */
mha_status mha_vk_fail(mha_host *host, mha_vk_device *d, VkResult r,
                       const char *call);
const char *mha_vk_result_name(VkResult r);

/* ---- memory.c ---- */
mha_status mha_vk_memory_init(mha_vk_device *d);
void mha_vk_memory_fini(mha_vk_device *d);
mha_status mha_vk_buffer_alloc(mha_vk_device *d, size_t size,
                               mha_vk_buffer **out);
void mha_vk_buffer_free(mha_vk_device *d, mha_vk_buffer *b);
mha_status mha_vk_buffer_write(mha_vk_device *d, mha_vk_buffer *b,
                               size_t offset, const void *src, size_t size);
mha_status mha_vk_buffer_read(mha_vk_device *d, mha_vk_buffer *b,
                              size_t offset, void *dst, size_t size);

/* ---- pipeline.c ---- */
mha_status mha_vk_pipelines_init(mha_vk_device *d);
void mha_vk_pipelines_fini(mha_vk_device *d);
/* The pipeline of kernel (its fp16 build when f16) specialised with spec
 * (count values), created on first use and kept until close. */
mha_status mha_vk_pipeline_get(mha_vk_device *d, int kernel, bool f16,
                               const uint32_t *spec, int count,
                               VkPipeline *out);

/* ---- cache.c ---- */
/* Resolves the cache file path from options / MHA_CACHE_DIR / XDG / HOME
 * into d->cache_path (NULL when disabled) and creates d->cache from it. */
mha_status mha_vk_cache_open(mha_vk_device *d,
                             const mha_device_options *options);
/* Writes the cache back to disk (best effort, logged) and destroys it. */
void mha_vk_cache_close(mha_vk_device *d);

/* ---- submit.c ---- */
mha_status mha_vk_submit_init(mha_vk_device *d);
void mha_vk_submit_fini(mha_vk_device *d);
/* Begins recording if needed and returns the command buffer. */
mha_status mha_vk_record(mha_vk_device *d, VkCommandBuffer *cmd);
/* Binds pipe and the ranges (buf VK_NULL_HANDLE: the dummy buffer),
 * pushes the constants and dispatches; a barrier first orders it behind
 * earlier work whose ranges conflict with its own. */
mha_status mha_vk_dispatch(mha_vk_device *d, VkPipeline pipe,
                           const mha_vk_access bind[MHA_VK_BINDINGS],
                           const void *push, uint32_t push_size,
                           const uint32_t groups[3]);
/* Submits what was recorded and waits; resets per-batch resources. */
mha_status mha_vk_flush(mha_vk_device *d);
/* Checks the device is usable (not lost, no pending validation message). */
mha_status mha_vk_check(mha_vk_device *d);

/* ---- ops.c ---- */
bool mha_vk_supports(mha_vk_device *d, const mha_node *node);
mha_status mha_vk_run(mha_vk_device *d, const mha_node *node);

#endif /* MHA_VK_INTERNAL_H */
