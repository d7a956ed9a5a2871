/* vk_internal.h: private types of the Vulkan backend, shared by its files
 * (loader.c, volk_impl.c, device.c, memory.c, pipeline.c, cache.c,
 * submit.c, set_cache.c, ops.c, backend.c, interop.c). Nothing here is
 * visible outside backends/vulkan/ except the iface symbol,
 * mha_vulkan_backend, and the mha_vulkan_* API of include/mha_vulkan.h. */
#ifndef MHA_VK_INTERNAL_H
#define MHA_VK_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <volk.h>

#include "backend.h"

#define MHA_VK_MAX_DEVICES 16
#define MHA_VK_BINDINGS 9    /* storage buffers per dispatch, all kernels */
#define MHA_VK_PUSH_BYTES 128 /* the guaranteed minimum maxPushConstantsSize */
#define MHA_VK_MAX_SPEC 9
#define MHA_VK_MSG_SIZE 768

/* Instance-level entry points, loaded per VkInstance (see loader.c for why
 * volk's global instance pointers are not used): libmha's own instance's,
 * or an adopted device's, loaded through the application's
 * vkGetInstanceProcAddr. */
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
    bool subgroup_shuffle;   /* subgroupShuffleXor in compute shaders */
    uint64_t max_range;      /* maxStorageBufferRange */
    uint64_t offset_align;   /* minStorageBufferOffsetAlignment */
    uint32_t push_bytes;     /* maxPushConstantsSize */
    uint32_t storage_buffers; /* the lower of maxPerStageDescriptorStorage-
                                 Buffers and maxDescriptorSetStorageBuffers:
                                 every kernel binds MHA_VK_BINDINGS */
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
 * from a bind_align-aligned start and get element offsets in push
 * constants; block size <= maxStorageBufferRange keeps every range
 * bindable. An external block stands for an application's VkBuffer that
 * wrapped tensors (mha_vulkan_tensor_wrap) point into: no memory of ours,
 * ranges at the application's offsets (unsorted, may overlap), gone with
 * its last range. */
typedef struct mha_vk_buffer mha_vk_buffer;
typedef struct mha_vk_block {
    VkDeviceMemory mem; /* VK_NULL_HANDLE when external */
    VkBuffer buf;
    VkDeviceSize size;
    void *map; /* persistently mapped when host-visible, else NULL */
    mha_vk_buffer *first; /* live ranges, sorted by offset unless external */
    struct mha_vk_block *next;
    bool external;
    VkBufferUsageFlags usage;
    /* Bindings start at a multiple of this: 256 for our blocks (their
     * ranges are 256-aligned, valid for any minStorageBufferOffsetAlignment),
     * the device's minStorageBufferOffsetAlignment for external ones, so a
     * binding reaches as little as possible before the application's
     * offset. */
    VkDeviceSize bind_align;
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
    MHA_VK_K_ATTENTION_COMBINE,
    MHA_VK_K_ROPE,
    MHA_VK_K_MUL,
    MHA_VK_K_HEAD_STATS,
    MHA_VK_K_ATTENTION_SG, /* attention.comp with subgroup shuffles */
    MHA_VK_K_GEMM_STRIDED, /* the training ops (issue 18) */
    MHA_VK_K_SUM_ROWS,
    MHA_VK_K_ADAMW,
    MHA_VK_K_ATT_BWD_PRE,
    MHA_VK_K_ATT_BWD,
    MHA_VK_K_ATTENTION_H,    /* attention.comp in fp16 arithmetic */
    MHA_VK_K_ATTENTION_SG_H, /* the same with subgroup shuffles */
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

/* Descriptor sets of recorded forwards, by their exact bindings (see
 * set_cache.c). */
typedef struct mha_vk_set_key {
    VkBuffer buf[MHA_VK_BINDINGS];
    VkDeviceSize offset[MHA_VK_BINDINGS];
    VkDeviceSize range[MHA_VK_BINDINGS];
} mha_vk_set_key;

typedef struct mha_vk_set_entry {
    mha_vk_set_key key;
    VkDescriptorSet set; /* VK_NULL_HANDLE: empty slot */
    int pool;            /* index into set_pools.at */
} mha_vk_set_entry;

/* Descriptor pools for sets of the kernels' one layout. */
typedef struct mha_vk_desc_pool {
    VkDescriptorPool pool;
    uint32_t room; /* sets it can still allocate */
} mha_vk_desc_pool;

typedef struct mha_vk_desc_pools {
    mha_vk_desc_pool *at;
    int count, cap;
} mha_vk_desc_pools;

typedef struct mha_vk_device {
    mha_vk_state *st; /* NULL for an adopted device when the context's own
                         Vulkan instance could not be made */
    mha_host *host;
    const mha_vk_ifns *fn;    /* st->fn, or own_fn when adopted */
    const mha_vk_phys *phys;  /* in st->phys, or own_phys when adopted */
    VkDevice dev;
    struct VolkDeviceTable vk;
    VkQueue queue; /* VK_NULL_HANDLE: adopted without one, nothing submits */
    bool lost;
    /* Adopted from the application (mha_vulkan_device_adopt): dev and
     * queue are its and never destroyed, waited idle or used outside
     * libmha's submit-and-wait calls. */
    bool adopted;
    mha_vk_ifns own_fn;
    mha_vk_phys own_phys;

    /* memory */
    VkDeviceSize block_size;
    mha_vk_block *blocks;
    mha_vk_block *ext_blocks; /* the application's VkBuffers */
    mha_vk_buffer *dummy;   /* bound where a kernel's source is absent */
    /* The partial results of split-K attention (ops.c), grown on demand
     * and kept until close; NULL until first needed. Once recorded into an
     * application's command buffer (scratch_recorded) a smaller one is
     * never freed, only left to close. */
    mha_vk_buffer *scratch;
    bool scratch_recorded;
    mha_vk_staging staging;
    /* Fault injection for tests (mha_fault_due): device allocations fail
     * as VK_ERROR_OUT_OF_DEVICE_MEMORY, pipeline creations as
     * VK_ERROR_INITIALIZATION_FAILED, queue submits as VK_ERROR_DEVICE_LOST. */
    int fault_countdown;
    int fault_pipeline;
    int fault_submit;
    /* Test hook: when set, fused attentions without KV_LEN add the (row,
     * key) pairs their loaded key tiles serve to this buffer's first uint
     * (attention.comp's MHA_VK_F_VISITS; test_vulkan_tiles.c). */
    mha_vk_buffer *tile_visits;

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
    mha_vk_desc_pools batch_pools; /* reset after each wait */
    int batch_pools_used;

    /* recording into the application's command buffer
     * (mha_vulkan_layer_record, mha_vulkan_decoder_record): set only
     * during that call */
    VkCommandBuffer ext_cmd;
    mha_vk_set_entry *sets; /* open addressing, capacity a power of 2 */
    int set_count, set_cap;
    mha_vk_desc_pools set_pools; /* FREE_DESCRIPTOR_SET_BIT ones */

    /* timestamps for profiles (timer.c): made on the first mark */
    VkQueryPool timer_pool;
    double timer_period; /* ns per tick; 0: the queue keeps none */
    uint64_t timer_mask; /* the queue family's timestampValidBits */
    /* the node run() is dispatching, for the variant hooks (tune.c) */
    const mha_node *tune_node;
} mha_vk_device;

/* ---- loader.c ---- */
mha_status mha_vk_load_runtime(mha_host *host);
mha_status mha_vk_create_instance(mha_vk_state *st);
void mha_vk_destroy_instance(mha_vk_state *st);
/* Loads fn for instance through gipa (debug: the debug-utils commands too);
 * MHA_DEVICE_ERROR when the Vulkan 1.1 physical-device commands are
 * absent. */
mha_status mha_vk_load_ifns(mha_host *host, mha_vk_ifns *fn,
                            VkInstance instance,
                            PFN_vkGetInstanceProcAddr gipa, bool debug);
/* Returns MHA_DEVICE_ERROR with the recorded validation message (and
 * clears it), or MHA_OK when the layers reported nothing (or st is NULL). */
mha_status mha_vk_take_validation_error(mha_vk_state *st);

/* ---- volk_impl.c ---- */
/* Loads every device-level entry point of dev through gdpa (volk's
 * volkLoadDeviceTable would go through the loader's global one). */
void mha_vk_load_device_table(struct VolkDeviceTable *table, VkDevice dev,
                              PFN_vkGetDeviceProcAddr gdpa);

/* ---- device.c ---- */
mha_status mha_vk_probe(mha_vk_state *st, mha_device_desc *descs, int cap,
                        int *count);
mha_status mha_vk_open(mha_vk_state *st, int index,
                       const mha_device_options *options,
                       mha_vk_device **out);
/* A device on the application's handles (see mha_vulkan.h); *desc is what
 * mha_device_info_of reports. st may be NULL (no instance of our own). */
struct mha_vulkan_device_info;
mha_status mha_vk_adopt(mha_vk_state *st, mha_host *host,
                        const struct mha_vulkan_device_info *info,
                        const mha_device_options *options,
                        mha_vk_device **out, mha_device_desc *desc);
void mha_vk_close(mha_vk_device *d);
/* Translates a VkResult into a status with a message naming the call;
 * marks the device lost on VK_ERROR_DEVICE_LOST. d may be NULL. */
mha_status mha_vk_fail(mha_host *host, mha_vk_device *d, VkResult r,
                       const char *call);
const char *mha_vk_result_name(VkResult r);
/* Room for need elements of size elem in arr, which holds count of them
 * in *cap (capacity doubles, from 16; the context's allocator has no
 * realloc): returns arr itself or its zero-filled copy (arr freed, *cap
 * updated), or NULL with an out-of-memory message and arr kept. */
void *mha_vk_grow(mha_host *host, void *arr, int count, int *cap, int need,
                  size_t elem);

/* ---- memory.c ---- */
mha_status mha_vk_memory_init(mha_vk_device *d);
void mha_vk_memory_fini(mha_vk_device *d);
mha_status mha_vk_buffer_alloc(mha_vk_device *d, size_t size,
                               mha_vk_buffer **out);
/* A buffer over [offset, offset + size) of the application's buffer (its
 * usage flags tell which transfers it allows); freed like any other, which
 * leaves buf itself alone. */
mha_status mha_vk_buffer_wrap(mha_vk_device *d, VkBuffer buf,
                              VkDeviceSize offset, VkDeviceSize size,
                              VkBufferUsageFlags usage, mha_vk_buffer **out);
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
/* The checks of a cache file, pure so tests/fuzz can drive them. head is
 * the file's first MHA_VK_CACHE_HEADER_BYTES: the size of the driver data
 * that follows when the magic is libmha's and the size plausible, else 0. */
#define MHA_VK_CACHE_HEADER_BYTES 24
size_t mha_vk_cache_blob_size(const unsigned char *head);
/* Whether data (size bytes, after head) has head's size and checksum and
 * is a VkPipelineCache of the device p describes (Vulkan's own header). */
bool mha_vk_cache_blob_valid(const unsigned char *head,
                             const unsigned char *data, size_t size,
                             const VkPhysicalDeviceProperties *p);

/* ---- submit.c ---- */
mha_status mha_vk_submit_init(mha_vk_device *d);
void mha_vk_submit_fini(mha_vk_device *d);

/* ---- timer.c: the timer methods of the backend interface ---- */
mha_status mha_vk_timer_mark(mha_vk_device *d, int slot);
mha_status mha_vk_timer_read(mha_vk_device *d, int count, uint64_t *ns);
void mha_vk_timer_fini(mha_vk_device *d);

/* ---- tune.c: kernel variants and the rule table by device class ---- */
/* The matmul.comp constants {WG, TM, TN, TK, RM, RN, DIRECT, VW (0: 4)}
 * or attention.comp's {TPR, BR, BC, shared-memory sums} of the variant the
 * node being run names (or the device's rule names); false: the picker's
 * own choice. */
bool mha_vk_tune_matmul(const mha_vk_device *d, uint32_t k[8]);
bool mha_vk_tune_attention(const mha_vk_device *d, uint32_t k[4]);
/* The backend interface's variants method. */
int mha_vk_variants(void *dev, mha_op op, const char **names, int cap);
/* Begins recording if needed and returns the command buffer (the
 * application's between mha_vk_redirect and mha_vk_redirect_end). */
mha_status mha_vk_record(mha_vk_device *d, VkCommandBuffer *cmd);
/* Dispatches from now on go to the application's cmd, with cached
 * descriptor sets, the first one behind a barrier; nothing is submitted. */
mha_status mha_vk_redirect(mha_vk_device *d, VkCommandBuffer cmd);
/* Drops recorded, unsubmitted work (what a failed call left behind). */
void mha_vk_discard(mha_vk_device *d);
void mha_vk_redirect_end(mha_vk_device *d);
/* Binds pipe and the ranges (buf VK_NULL_HANDLE: the dummy buffer),
 * pushes the constants and dispatches; a barrier first orders it behind
 * earlier work whose ranges conflict with its own. */
mha_status mha_vk_dispatch(mha_vk_device *d, VkPipeline pipe,
                           const mha_vk_access bind[MHA_VK_BINDINGS],
                           const void *push, uint32_t push_size,
                           const uint32_t groups[3]);
/* Records the write of size bytes from src at offset of b into the
 * application's command buffer (vkCmdUpdateBuffer, its data copied now),
 * ordered after every earlier access and before later dispatches that
 * touch them: what a host-side write becomes while recording. */
mha_status mha_vk_record_write(mha_vk_device *d, mha_vk_buffer *b,
                               size_t offset, const void *src, size_t size);
/* Appends a pool of sets sets to pools (flags: its create flags). */
mha_status mha_vk_desc_pools_add(mha_vk_device *d, mha_vk_desc_pools *pools,
                                 uint32_t sets,
                                 VkDescriptorPoolCreateFlags flags);
void mha_vk_desc_pools_destroy(mha_vk_device *d, mha_vk_desc_pools *pools);
/* Submits what was recorded and waits; resets per-batch resources. */
mha_status mha_vk_flush(mha_vk_device *d);
/* Checks the device is usable (not lost, no pending validation message). */
mha_status mha_vk_check(mha_vk_device *d);

/* ---- set_cache.c ---- */
void mha_vk_set_cache_fini(mha_vk_device *d);
/* The set whose bindings are info, made and written on first use, then
 * reused unchanged (so it may sit in any number of pending command
 * buffers). */
mha_status mha_vk_set_cache_get(mha_vk_device *d,
                                const VkDescriptorBufferInfo *info,
                                VkDescriptorSet *set);
/* Frees the sets that bind buf, before buf goes away or stops being ours
 * to bind (no pending work may use them: see mha_vulkan.h). */
void mha_vk_set_cache_evict(mha_vk_device *d, VkBuffer buf);
/* Frees the sets with a binding in block's bytes [lo, hi) that no live
 * range of the block still covers (range of a freed tensor). */
void mha_vk_set_cache_evict_range(mha_vk_device *d, const mha_vk_block *b,
                                  VkDeviceSize lo, VkDeviceSize hi);
/* Writes the storage-buffer descriptors of info into set. */
void mha_vk_write_set(mha_vk_device *d, VkDescriptorSet set,
                      const VkDescriptorBufferInfo *info);

/* ---- ops.c ---- */
bool mha_vk_supports(mha_vk_device *d, const mha_node *node);
mha_status mha_vk_run(mha_vk_device *d, const mha_node *node);

#endif /* MHA_VK_INTERNAL_H */
