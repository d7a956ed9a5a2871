/* mha.h: the public header of libmha, multi-head attention on Vulkan,
 * OpenCL and CPU SIMD devices, with torch.nn.MultiheadAttention semantics.
 *
 * C99, standard headers only. Every object is an opaque handle; every call
 * returns an mha_status (accessors that cannot fail return their value).
 * Threads: calls on different contexts (and their devices, layers and
 * tensors) may run at the same time on different threads (the only state
 * libmha shares between contexts is the Vulkan loader, loaded once, and a
 * lock that serialises OpenCL device probing).
 * Calls on one context or on anything created from it (errmsg included)
 * must not overlap: one thread at a time, in any order of threads; the
 * caller serialises them. Hooks (allocator, log) run on the calling thread
 * and must be thread-safe if shared by contexts. mha_status_str,
 * mha_version and the *_init functions are safe anywhere.
 * On failure a call leaves its outputs untouched and mha_context_errmsg()
 * names the function, the argument, the value and what was expected.
 * Engines that own their device include mha_vulkan.h or mha_opencl.h too:
 * devices adopted from their handles, tensors over their buffers, and a
 * forward recorded into their command buffer or enqueued on their queue. */
#ifndef MHA_H
#define MHA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MHA_VERSION_MAJOR 0
#define MHA_VERSION_MINOR 1
#define MHA_VERSION_PATCH 0
#define MHA_VERSION_STRING "0.1.0"

/* ABI. Every struct the caller fills starts with size_t struct_size, set by
 * its *_init macro to the caller's sizeof, so a struct can grow at its end
 * without breaking binaries built against an older mha.h (Vulkan's sType
 * idea). The library refuses 0 or a size below the struct's first version
 * (MHA_INVALID_ARGUMENT, the message names the struct; mha_context_create
 * has no context to hold one yet) and ignores bytes past the fields it
 * knows. Each *_init macro calls the exported *_init_sized function with
 * that size; bindings call it directly. The soname is libmha.so.0.MINOR
 * while the major version is 0 (any 0.x minor may break the ABI),
 * libmha.so.MAJOR from 1.0 on. mha_host_array and mha_allocator (embedded
 * or copied whole) and mha_device_info (which the library fills) have no
 * struct_size and never grow within a soname: new members go at the end of
 * a struct that has one. */

#if defined(_WIN32) && defined(MHA_BUILD_SHARED)
#define MHA_API __declspec(dllexport)
#elif defined(_WIN32) && defined(MHA_USE_SHARED)
#define MHA_API __declspec(dllimport)
#elif defined(__GNUC__)
#define MHA_API __attribute__((visibility("default")))
#else
#define MHA_API
#endif

/* ---- status codes ------------------------------------------------------ */

/* X(name, fixed description). Codes are stable; new ones are appended. */
#define MHA_STATUS_LIST(X)                                                   \
    X(OK, "success")                                                         \
    X(INVALID_ARGUMENT, "invalid argument")                                  \
    X(SHAPE_MISMATCH, "tensor shape does not match")                         \
    X(DTYPE_MISMATCH, "tensor dtype does not match")                         \
    X(OUT_OF_MEMORY, "out of memory")                                        \
    X(OVERFLOW, "size overflows")                                            \
    X(NOT_FOUND, "not found")                                                \
    X(UNSUPPORTED, "not supported")                                          \
    X(MISSING_WEIGHT, "a required weight was not set")                       \
    X(IO, "input/output error")                                              \
    X(CORRUPT_FILE, "file is corrupt or not in the expected format")         \
    X(NO_DEVICE, "no such device")                                           \
    X(DEVICE_ERROR, "device or driver error")                                \
    X(DEVICE_LOST, "device lost")                                            \
    X(BUFFER_TOO_SMALL, "output buffer is too small")                       \
    X(LIMIT_REACHED, "a fixed limit of the library was reached")            \
    X(BAD_STATE, "the object is not in a state that allows this call")

typedef enum mha_status {
#define MHA_STATUS_ENUM_(name, text) MHA_##name,
    MHA_STATUS_LIST(MHA_STATUS_ENUM_)
#undef MHA_STATUS_ENUM_
    MHA_STATUS_COUNT
} mha_status;

/* Fixed English text of a status; never NULL, static storage. */
MHA_API const char *mha_status_str(mha_status status);

/* "MAJOR.MINOR.PATCH" of the library actually linked; static storage. */
MHA_API const char *mha_version(void);

/* ---- element types ----------------------------------------------------- */

typedef enum mha_dtype {
    MHA_F32 = 0, /* IEEE binary32 */
    MHA_F16 = 1, /* IEEE binary16: device storage, fp32 arithmetic */
    MHA_BOOL = 2, /* one byte, 0 or 1: masks, where true means "masked out" */
    MHA_I32 = 3   /* int32: sequence lengths and token positions */
} mha_dtype;

#define MHA_MAX_DIMS 4

/* ---- context ----------------------------------------------------------- */

typedef struct mha_context mha_context;
typedef struct mha_device mha_device;
typedef struct mha_layer mha_layer;
typedef struct mha_tensor mha_tensor;

/* Host memory hooks (Lua's lua_Alloc idea). Every host allocation of the
 * library goes through them, so an engine can budget memory and tests can
 * make the Nth allocation fail. malloc may return NULL; the call that needed
 * the memory then returns MHA_OUT_OF_MEMORY and frees what it took.
 * Exception: the JSON of safetensors headers, read and written, is made
 * by cJSON on the C heap. The cpu device's buffers of 4 MiB and more ask
 * for 2 MiB more (to align to a 2 MiB page) and, on Linux, give the
 * memory a transparent-huge-page hint (madvise MADV_HUGEPAGE; contents
 * untouched). */
typedef struct mha_allocator {
    void *(*malloc)(void *user, size_t size);
    void (*free)(void *user, void *ptr);
    void *user;
} mha_allocator;

typedef enum mha_log_level {
    MHA_LOG_ERROR = 0,
    MHA_LOG_WARN = 1,
    MHA_LOG_INFO = 2,
    MHA_LOG_DEBUG = 3
} mha_log_level;

/* Called for messages at or below the context's log level; msg lives for
 * the duration of the call. */
typedef void (*mha_log_fn)(void *user, mha_log_level level, const char *msg);

typedef struct mha_context_options {
    size_t struct_size;             /* sizeof, set by the init macro */
    const mha_allocator *allocator; /* NULL: the C heap; copied */
    mha_log_fn log;                 /* NULL: silent unless MHA_LOG is set,
                                       then lines go to stderr */
    void *log_user;
    mha_log_level log_level;        /* default MHA_LOG_WARN */
    const char *backends; /* backends to probe, comma-separated ("cpu",
                             "cpu,vulkan"); NULL means MHA_BACKENDS, else
                             all. A backend left out loads no runtime and
                             lists no devices: an engine that adopts its
                             own VkDevice passes "cpu", so libmha makes no
                             VkInstance and loads no OpenCL ICD
                             (mha_opencl_device_adopt needs "opencl").
                             A name not in this build is
                             MHA_INVALID_ARGUMENT. Read during create. */
} mha_context_options;

/* Fills *options with the defaults and sets struct_size (see "ABI"). */
MHA_API mha_status mha_context_options_init_sized(mha_context_options *options,
                                                  size_t struct_size);
#define mha_context_options_init(options)                                    \
    mha_context_options_init_sized((options), sizeof *(options))

/* Creates a context and probes every compiled-in backend for devices (or
 * those options->backends names). A backend whose runtime is missing (no
 * libvulkan.so.1, no OpenCL ICD) contributes no devices; that is not an
 * error. options may be NULL. */
MHA_API mha_status mha_context_create(const mha_context_options *options,
                                      mha_context **out);

/* Destroys the context. Every device, layer and tensor created from it must
 * have been destroyed first (MHA_BAD_STATE otherwise, and the context stays
 * usable). NULL does nothing. */
MHA_API mha_status mha_context_destroy(mha_context *ctx);

/* The message of the last failed call on ctx or on an object created from
 * it ("" after success). Owned by ctx, valid until its next call. */
MHA_API const char *mha_context_errmsg(const mha_context *ctx);

/* ---- devices ----------------------------------------------------------- */

typedef enum mha_device_kind {
    MHA_DEVICE_DISCRETE_GPU = 0,
    MHA_DEVICE_INTEGRATED_GPU = 1,
    MHA_DEVICE_VIRTUAL_GPU = 2,
    MHA_DEVICE_CPU = 3,      /* libmha's native CPU backend */
    MHA_DEVICE_SOFTWARE = 4, /* a CPU implementation of a GPU API
                                (Mesa lavapipe/llvmpipe, PoCL on CPU) */
    MHA_DEVICE_OTHER = 5
} mha_device_kind;

/* Feature bits of mha_device_info.features. */
#define MHA_FEATURE_FP16_STORAGE (1u << 0) /* fp16 tensors supported */
#define MHA_FEATURE_FP16_MATH (1u << 1)    /* native fp16 arithmetic */
#define MHA_FEATURE_SUBGROUPS (1u << 2)
#define MHA_FEATURE_FUSED_ATTENTION (1u << 3)
#define MHA_FEATURE_AVX2 (1u << 4) /* CPU: AVX2+FMA+F16C kernels usable */
#define MHA_FEATURE_NEON (1u << 5) /* CPU: NEON kernels usable */
#define MHA_FEATURE_AVX512 (1u << 6)

typedef struct mha_device_info {
    char backend[16];     /* "cpu", "vulkan", "opencl" */
    int backend_index;    /* index within its backend: "vulkan:1" */
    int index;            /* index in the context's ranked list */
    mha_device_kind kind;
    char vendor[64];
    char name[128];
    char driver[128];     /* driver name and version, or "" */
    uint64_t memory_bytes;        /* device-local memory (host RAM: CPU) */
    uint64_t max_buffer_bytes;    /* largest single buffer */
    uint32_t features;            /* MHA_FEATURE_* bits */
    uint32_t compute_units;       /* cores, CUs or SMs */
    uint32_t max_workgroup_size;  /* 0 where not applicable */
    uint32_t shared_memory_bytes; /* per workgroup; 0 where n/a */
    uint32_t subgroup_size;       /* 0 where n/a or unknown */
    int score;     /* ranking score: higher is preferred, 0 unusable */
    int is_default;/* 1 for the device mha_device_open(ctx, NULL, ...)
                      picks when MHA_DEVICE is unset */
    char details[256]; /* backend-specific facts, human-readable */
} mha_device_info;

/* Number of devices found at context creation, over all backends. */
MHA_API mha_status mha_device_count(mha_context *ctx, int *count);

/* Describes device number index (0 = best ranked) into *info. */
MHA_API mha_status mha_device_get_info(mha_context *ctx, int index,
                                       mha_device_info *info);

typedef struct mha_device_options {
    size_t struct_size;  /* sizeof, set by the init macro */
    int threads;         /* CPU backend: worker threads, 0 = one per core */
    const char *cpu_isa; /* CPU backend: "scalar", "avx2", "avx512", "neon",
                            or NULL for the best the CPU runs; MHA_CPU_ISA
                            overrides NULL. Copied. */
    const char *cache_dir; /* GPU backends: where compiled pipelines and
                              program binaries are cached and the tuning
                              database (tune.json) is read; NULL means
                              MHA_CACHE_DIR, else $XDG_CACHE_HOME/libmha,
                              else ~/.cache/libmha; "" disables. Created
                              mode 0700; one another user owns or group
                              or others can write is not used (logged,
                              no caching). Copied. */
} mha_device_options;

MHA_API mha_status mha_device_options_init_sized(mha_device_options *options,
                                                 size_t struct_size);
#define mha_device_options_init(options)                                     \
    mha_device_options_init_sized((options), sizeof *(options))

/* Opens a device named by spec: "best", a backend ("cpu", "vulkan",
 * "opencl": its best device), or a backend and index ("vulkan:1").
 * spec NULL means the MHA_DEVICE environment variable, or "best" when it is
 * unset. options may be NULL. The device belongs to ctx; destroy it with
 * mha_device_destroy before the context. */
MHA_API mha_status mha_device_open(mha_context *ctx, const char *spec,
                                   const mha_device_options *options,
                                   mha_device **out);

/* Opens device number index of the ranked list. */
MHA_API mha_status mha_device_open_index(mha_context *ctx, int index,
                                         const mha_device_options *options,
                                         mha_device **out);

/* Describes an open device (info->index is its place in the list). */
MHA_API mha_status mha_device_info_of(mha_device *device,
                                      mha_device_info *info);

/* Bytes of device memory libmha holds on this device (tensors, layer
 * weights, plan arenas, host-forward staging; not the driver's or the
 * backend's own internal allocations), now and at the peak since the device
 * was opened or the last mha_device_reset_peak_memory. Either output may be
 * NULL. */
MHA_API mha_status mha_device_memory_usage(mha_device *device,
                                           uint64_t *in_use, uint64_t *peak);

/* Starts a new peak measurement at the current use. */
MHA_API mha_status mha_device_reset_peak_memory(mha_device *device);

/* Destroys the device. Layers and tensors on it must be destroyed first
 * (MHA_BAD_STATE otherwise, and the device stays usable). NULL does
 * nothing. */
MHA_API mha_status mha_device_destroy(mha_device *device);

/* ---- profiling ----------------------------------------------------------- */

/* The time of one node (one op of a forward's graph: a projection, the
 * attention, ...) that a device ran while profiling was on. */
typedef struct mha_profile_entry {
    const char *op;   /* the op's name ("projection", "attention", ...); a
                         static string */
    double ms;        /* from the end of the node before it (or from its
                         start, for the first node after a wait) to its
                         end */
    int device_clock; /* 1: the device's own timestamps (Vulkan timestamp
                         queries, OpenCL profiling events); 0: the host's
                         clock around the call, exact for the CPU backend */
    const char *variant; /* the kernel variant the tuning source named for
                            the node (a static string; "default": the
                            built-in choice), NULL: the backend's rules,
                            else its built-in choice (see "tuning") */
} mha_profile_entry;

/* Starts recording the time of every node the device runs, forgetting what
 * was recorded before (at most 4096 nodes are kept). Costs a timestamp per
 * node; mha-bench --profile uses it. */
MHA_API mha_status mha_device_profile_start(mha_device *device);

/* Stops recording and forgets the entries. Nothing when not recording. */
MHA_API mha_status mha_device_profile_stop(mha_device *device);

/* Copies the entries of the nodes that finished since the start (those
 * whose work a forward, a read or another call waited for), oldest first,
 * into entries[0..cap), and sets *count to how many there are (may exceed
 * cap). MHA_BAD_STATE when not recording. */
MHA_API mha_status mha_device_profile_read(mha_device *device,
                                           mha_profile_entry *entries,
                                           int cap, int *count);

/* ---- tuning --------------------------------------------------------------- */

/* GPU backends have kernel variants: named sets of the tile sizes,
 * workgroup shapes and reductions their kernels are specialised with. Each
 * forward's matmul and attention nodes run the variant that the tuning
 * database (written by mha-tune, read when a layer plans a call shape)
 * names for the device, driver and shape class, else the one the
 * backend's rule table names for the device's class, else the built-in
 * choice. MHA_TUNE=off|db|rules forces a source (README, "Performance on
 * GPUs"); MHA_TUNE_VARIANT=matmul=NAME,attention=NAME forces variants.
 *
 * Lists the variants of kind ("matmul" or "attention") that fit device:
 * stores up to cap names (static strings that live as long as the
 * library) and sets *count to how many there are (0 on the CPU backend). */
MHA_API mha_status mha_device_variants(mha_device *device, const char *kind,
                                       const char **names, int cap,
                                       int *count);

/* ---- device-resident tensors --------------------------------------------- */

/* A tensor lives in the device's memory, so data can stay on a GPU between
 * calls and between layers. MHA_BOOL tensors hold masks, MHA_I32 tensors
 * sequence lengths (uploaded and downloaded raw). MHA_F16 tensors are made
 * only where a forward takes them: on devices with MHA_FEATURE_FP16_STORAGE
 * and on the cpu backend (whose mha_attention converts fp16 on load);
 * elsewhere this is MHA_UNSUPPORTED. */
MHA_API mha_status mha_tensor_create(mha_device *device, mha_dtype dtype,
                                     int ndim, const int64_t *shape,
                                     mha_tensor **out);

/* Copies size bytes from host memory; size must equal the tensor's bytes
 * (elements x element size). The caller keeps src. */
MHA_API mha_status mha_tensor_upload(mha_tensor *tensor, const void *src,
                                     size_t size);

/* Copies the tensor to host memory; waits for pending work on the device.
 * size must be at least the tensor's bytes. */
MHA_API mha_status mha_tensor_download(const mha_tensor *tensor, void *dst,
                                       size_t size);

/* Shape and dtype of a tensor; shape must hold MHA_MAX_DIMS entries. Any
 * output pointer may be NULL. */
MHA_API mha_status mha_tensor_get_shape(const mha_tensor *tensor,
                                        mha_dtype *dtype, int *ndim,
                                        int64_t *shape);

/* NULL does nothing. A tensor that still has views is MHA_BAD_STATE and
 * stays usable: destroy its views first. */
MHA_API mha_status mha_tensor_destroy(mha_tensor *tensor);

/* A strided view of base without a copy: element (i0, ..., in) of the view
 * is element offset_elems + sum(ik * strides_elems[k]) of base's storage
 * (its elements in row-major order, or the storage of the tensor base is
 * itself a view of). strides_elems NULL means row-major for shape;
 * strides are >= 0 (0 broadcasts). The view must lie inside the storage
 * (MHA_INVALID_ARGUMENT otherwise, naming the element it reaches). Views
 * share base's memory and dtype (f32, f16 or i32; not bool masks). With
 * W = (Hq + 2 Hkv) d, the Q, K and V of a fused projection [B, T, W] are
 * the views [B, T, Hq, d] at offset 0 and [B, T, Hkv, d] at Hq d and at
 * (Hq + Hkv) d, all with strides {T W, W, d, 1}. base must outlive its
 * views: destroying it first is
 * MHA_BAD_STATE. A row-major view uploads and downloads like a tensor; a
 * strided one is MHA_UNSUPPORTED there (use its base). mha_layer_forward
 * takes no views; mha_attention does. Destroy with mha_tensor_destroy. */
MHA_API mha_status mha_tensor_view(mha_tensor *base, size_t offset_elems,
                                   int ndim, const int64_t *shape,
                                   const int64_t *strides_elems,
                                   mha_tensor **out);

/* ---- layers -------------------------------------------------------------- */

/* Mirrors torch.nn.MultiheadAttention(embed_dim, num_heads, dropout=0.0,
 * bias=True, add_bias_kv=False, add_zero_attn=False, kdim=None, vdim=None,
 * batch_first=False). libmha applies no dropout, in inference or in
 * training (see "Training"), so dropout must be 0 (a module in eval mode
 * ignores it; pass 0 whatever the module was built with). */
typedef struct mha_layer_config {
    size_t struct_size; /* sizeof, set by the init macro */
    int64_t embed_dim;  /* E, > 0 */
    int64_t num_heads;  /* H, > 0, divides E */
    float dropout;      /* must be 0 */
    int bias;           /* in_proj_bias and out_proj.bias exist; default 1 */
    int add_bias_kv;    /* bias_k and bias_v exist */
    int add_zero_attn;  /* a zero key/value row is appended */
    int64_t kdim;       /* key features; 0 means E */
    int64_t vdim;       /* value features; 0 means E */
    int batch_first;    /* (N, L, E) instead of (L, N, E) */
    mha_dtype dtype;    /* MHA_F32, or MHA_F16 storage where the device has
                           MHA_FEATURE_FP16_STORAGE */
} mha_layer_config;

/* Fills *config with PyTorch's defaults for embed_dim and num_heads. */
MHA_API mha_status mha_layer_config_init_sized(mha_layer_config *config,
                                               size_t struct_size,
                                               int64_t embed_dim,
                                               int64_t num_heads);
#define mha_layer_config_init(config, embed_dim, num_heads)                  \
    mha_layer_config_init_sized((config), sizeof *(config), (embed_dim),     \
                                (num_heads))

/* Creates a layer on device. Its weights start unset; a forward before every
 * weight the config needs is set fails with MHA_MISSING_WEIGHT. */
MHA_API mha_status mha_layer_create(mha_device *device,
                                    const mha_layer_config *config,
                                    mha_layer **out);

/* Sets one weight from host fp32 data, by its name in the module's
 * state_dict, in PyTorch's layout:
 *   in_proj_weight [3E, E]      (only when kdim == vdim == E)
 *   q_proj_weight [E, E], k_proj_weight [E, kdim], v_proj_weight [E, vdim]
 *                               (only when kdim or vdim differs from E)
 *   in_proj_bias [3E], out_proj.weight [E, E], out_proj.bias [E]  (bias)
 *   bias_k [1, 1, E], bias_v [1, 1, E]                      (add_bias_kv)
 * The caller keeps data. */
MHA_API mha_status mha_layer_set_weight(mha_layer *layer, const char *name,
                                        const float *data, int ndim,
                                        const int64_t *shape);

/* Loads every weight the layer needs from a .safetensors file holding a
 * module's state_dict (F32, F16, BF16 or F64 tensors, converted to fp32).
 * prefix (NULL or "") is prepended to each name, so a whole model's file can
 * be used: "encoder.layers.3.self_attn.". A missing, misshapen or wrongly
 * typed tensor is an error naming the key; other keys are ignored. A path
 * that is not a regular file (a FIFO, a directory) is MHA_IO at once. A
 * file written by mha_layer_save_safetensors from a pruned layer names its
 * kept heads in its metadata ("libmha.kept_heads"): this layer first
 * prunes the others (mha_layer_prune_heads), then loads the pruned
 * weights; a layer of another head count, or that pruned a head the file
 * keeps, is MHA_INVALID_ARGUMENT. */
MHA_API mha_status mha_layer_load_safetensors(mha_layer *layer,
                                              const char *path,
                                              const char *prefix);

/* NULL does nothing. */
MHA_API mha_status mha_layer_destroy(mha_layer *layer);

/* ---- heads: pruning and saving ------------------------------------------- */

/* Removes count heads from the layer for good: their rows of the q, k and
 * v projections (weights and biases, bias_k and bias_v) and their columns
 * of out_proj.weight are dropped, the device weight buffer is replaced by
 * a smaller one and the layer's cached scratch is freed (the next forward
 * makes scratch for the kept heads only), so mha_device_memory_usage
 * falls. The forward then computes only the kept heads, H' of them; E
 * stays the input and output width. Heads are named by their index in the
 * original layer (0 .. num_heads - 1, as mha_layer_kept_heads lists the
 * kept ones), so pruning again later names heads the same way. After
 * pruning, everything indexed by head counts the kept heads in ascending
 * original order: head_gates [H'], head_outputs, weights (N, H', L, S'),
 * a 3-D attn_mask (N*H', L, S), and mha_layer_set_weight expects the
 * pruned shapes (in_proj_weight [3 H' d, E], out_proj.weight [E, H' d]).
 * An index out of range, one already pruned, one listed twice, or pruning
 * every head left is MHA_INVALID_ARGUMENT naming it, and changes nothing.
 * A layer with forwards recorded or enqueued into an application's command
 * stream (mha_vulkan.h, mha_opencl.h), which may still use its weights, is
 * MHA_BAD_STATE. count 0 does nothing. */
MHA_API mha_status mha_layer_prune_heads(mha_layer *layer,
                                         const int64_t *heads, int64_t count);

/* The original indices of the heads the layer keeps, ascending, into
 * heads (capacity entries; may be NULL when capacity is 0), and their
 * number into *count. A capacity below the count is MHA_BUFFER_TOO_SMALL
 * with *count set. */
MHA_API mha_status mha_layer_kept_heads(const mha_layer *layer,
                                        int64_t *heads, int64_t capacity,
                                        int64_t *count);

/* Writes the layer's weights (pruned or not) to a .safetensors file under
 * nn.MultiheadAttention's state_dict names, each prefixed by prefix (NULL
 * or ""), as F32 (F16 for an f16 layer), with the kept heads' original
 * indices in the header's __metadata__ as "libmha.kept_heads": "0,2,5"
 * (and "libmha.num_heads", the original count). A pruned layer's tensors
 * have the pruned shapes. mha_layer_load_safetensors on a layer created
 * with the original config reads the metadata, prunes the same heads and
 * loads the weights, giving an equal layer. The file is written to a new
 * temporary file beside path (mode 0600) and renamed over it, so a reader
 * never sees half a file. Unset weights are MHA_MISSING_WEIGHT; a file
 * that cannot be written is MHA_IO naming the path and the reason. */
MHA_API mha_status mha_layer_save_safetensors(const mha_layer *layer,
                                              const char *path,
                                              const char *prefix);

/* ---- forward --------------------------------------------------------------- */

/* Shapes (PyTorch's): with N the batch, L the target and S the source
 * length, query (L, N, E), key (S, N, kdim), value (S, N, vdim); (N, L, E)
 * etc. when batch_first; or unbatched (L, E), (S, kdim), (S, vdim).
 * key_padding_mask: (N, S), or (S) unbatched. attn_mask: (L, S) or
 * (N*H, L, S). A mask is MHA_BOOL (true = may not attend) or MHA_F32
 * (added to the scores). is_causal applies the mask "key j > query i may not
 * be attended", combined with any attn_mask given (PyTorch >= 2.0 instead
 * requires attn_mask with is_causal and treats it as a hint).
 * Output: like query, with E features. Weights (need_weights): (N, L, S') if
 * average_attn_weights, else (N, H, L, S'); (L, S') or (H, L, S') unbatched;
 * S' = S + add_bias_kv + add_zero_attn.
 * Differences from PyTorch: a query row whose keys are all masked attends
 * to nothing: its per-head attention result is 0, so its output row is
 * out_proj.bias (0 without bias), and its weights row is 0 (PyTorch gives
 * NaN on its general path and 0 on its fast path); dropout is not applied.
 * NaN and Inf in inputs propagate as in PyTorch.
 * Self-attention: pass one tensor as query, key and value (not three
 * copies); an inference forward then projects Q, K and V with one product
 * over in_proj_weight instead of three. */
typedef struct mha_forward_args {
    size_t struct_size; /* sizeof, set by the init macro */
    const mha_tensor *query;
    const mha_tensor *key;
    const mha_tensor *value;
    const mha_tensor *key_padding_mask; /* optional */
    const mha_tensor *attn_mask;        /* optional */
    int is_causal;
    int need_weights;         /* PyTorch's default is 1; here 0 means the
                                 fused kernel may be used */
    int average_attn_weights; /* default 1 */
    mha_tensor *output;       /* required, created by the caller */
    mha_tensor *weights;      /* required iff need_weights */
    /* Head control (Michel et al. 2019, "Are Sixteen Heads Really Better
     * than One?"); "heads" are the layer's current heads, H of them (after
     * mha_layer_prune_heads, the kept ones in mha_layer_kept_heads order):
     * head_gates: optional f32 [H], or [N, H] (one gate per batch item and
     * head; N is 1 for unbatched input). Head h's attention output O_h is
     * multiplied by its gate before out_proj: Y = sum_h g_h O_h Wo_h^T + bo.
     * A head whose gate is 0 for every batch item is skipped: its scores,
     * softmax and weighted sum are not computed (the gates are read back
     * from the device when the call is made to choose them; more than 8
     * separate runs of computed heads, or a skipped head past index 255,
     * compute those heads and multiply them by 0 instead). Its returned
     * weights are 0, and averaged weights still divide by H. A gate of 1
     * for every computed head costs no multiply. */
    const mha_tensor *head_gates;
    /* head_outputs: optional f32 [N, H, L, d] (d = E / num_heads), or
     * [H, L, d] for unbatched input, whatever batch_first says: receives
     * each head's attention output O_h = softmax(A_h) V_h before its gate
     * and out_proj (0 for a skipped head), so gradient importance needs no
     * second forward. */
    mha_tensor *head_outputs;
    /* save_for_backward: a training forward (see "Training" below): the
     * layer keeps what mha_layer_backward needs. Only mha_layer_forward
     * takes it (the enqueue and record calls of mha_vulkan.h and
     * mha_opencl.h refuse it). */
    int save_for_backward;
} mha_forward_args;

/* Fills *args with PyTorch's defaults (need_weights = 0, see above). */
MHA_API mha_status mha_forward_args_init_sized(mha_forward_args *args,
                                               size_t struct_size);
#define mha_forward_args_init(args)                                          \
    mha_forward_args_init_sized((args), sizeof *(args))

/* Runs the layer on device tensors of the layer's device. Returns when the
 * results are in output and weights. Repeated calls with the same shapes
 * allocate nothing: a layer keeps the scratch of its 4 most recently used
 * call shapes. Shapes recorded or enqueued into an application's own
 * command stream (mha_vulkan.h, mha_opencl.h) keep theirs until the layer
 * is destroyed, since that work may still be pending; once a layer holds
 * 4 such shapes, recording or enqueueing another shape is
 * MHA_LIMIT_REACHED, and this call with another shape makes (and frees)
 * its scratch every time. */
MHA_API mha_status mha_layer_forward(mha_layer *layer,
                                     const mha_forward_args *args);

/* A host array: data, dtype and shape, for the host-memory forward. */
typedef struct mha_host_array {
    const void *data;
    mha_dtype dtype;
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
} mha_host_array;

typedef struct mha_host_forward_args {
    size_t struct_size;               /* sizeof, set by the init macro */
    mha_host_array query, key, value; /* MHA_F32; one data pointer for
                                         all three (self-attention): one
                                         upload, one Q/K/V projection */
    mha_host_array key_padding_mask;  /* data NULL: none */
    mha_host_array attn_mask;         /* data NULL: none */
    int is_causal;
    int need_weights;
    int average_attn_weights;
    float *output;          /* receives the output, fp32 */
    size_t output_count;    /* capacity of output in floats */
    float *weights;         /* receives the weights when need_weights */
    size_t weights_count;   /* capacity of weights in floats */
} mha_host_forward_args;

MHA_API mha_status mha_host_forward_args_init_sized(mha_host_forward_args *args,
                                                    size_t struct_size);
#define mha_host_forward_args_init(args)                                     \
    mha_host_forward_args_init_sized((args), sizeof *(args))

/* The convenience forward on host memory: copies the inputs to the device,
 * runs mha_layer_forward and copies the results back. The caller keeps
 * every array. A capacity below the result's size is MHA_BUFFER_TOO_SMALL;
 * mha_layer_output_size tells the sizes. */
MHA_API mha_status mha_layer_forward_host(mha_layer *layer,
                                          const mha_host_forward_args *args);

/* Element counts of the output and of the weights (0 when need_weights is
 * 0) for the given query and key shapes. */
MHA_API mha_status mha_layer_output_size(mha_layer *layer,
                                         const mha_host_forward_args *args,
                                         size_t *output_count,
                                         size_t *weights_count);

/* ---- the attention core ------------------------------------------------ */

/* Memory layout of mha_attention's q, k, v and out. */
typedef enum mha_layout {
    MHA_LAYOUT_BTHD = 0, /* [B, T, H, d]: what a fused projection writes
                            (Hugging Face, flash-attn); the default */
    MHA_LAYOUT_BHTD = 1  /* [B, H, T, d] */
} mha_layout;

/* Causal alignment: which keys query i of L may see among S. */
typedef enum mha_causal {
    MHA_CAUSAL_NONE = 0,
    MHA_CAUSAL_TOP_LEFT = 1,    /* key j <= i (nn.MHA's is_causal) */
    MHA_CAUSAL_BOTTOM_RIGHT = 2 /* key j <= i + len - L: the last query sees
                                   the last key (decode, chunked prefill) */
} mha_causal;

/* Attention over already-projected heads (PyTorch's
 * scaled_dot_product_attention with the options of decoder models). With
 * B the batch, L queries, S keys, Hq query heads, Hkv key/value heads
 * (Hq % Hkv == 0: MHA, GQA, MQA; query head h reads kv head h / (Hq/Hkv))
 * and head size d (1 to 256), for each batch item b, query head h, query i
 * at position p = i (p = i + len_b - L with MHA_CAUSAL_BOTTOM_RIGHT) and
 * key j, in this order:
 *   s = scale * q.k
 *   s = softcap * tanh(s / softcap)              (softcap > 0)
 *   s += slope_h * (j - p)                       (ALiBi)
 *   s += bias[b, h, i, j]                        (bias)
 *   s = -inf where j >= len_b (kv_lens; those keys are never read), where
 *       causal and j > p, where window > 0 and j <= p - window
 *   out = softmax(s) V, whose denominator also holds exp(sinks[h]) (a logit
 *       that carries no value); a row with no key left is 0.
 * len_b is kv_lens[b], else S. Tensors may be views (mha_tensor_view) with
 * any strides but a unit innermost one; every tensor is on the device. out
 * may be q itself (in place) but must share no element with another input
 * (MHA_INVALID_ARGUMENT: the attention reads all of k and v while it
 * writes out); views of one buffer are checked, tensors wrapped separately
 * over one engine buffer are not. */
typedef struct mha_attention_args {
    size_t struct_size;    /* sizeof, set by the init macro */
    const mha_tensor *q;   /* [B, L, Hq, d] (or [B, Hq, L, d]), f32 or f16 */
    const mha_tensor *k;   /* [B, S, Hkv, d] (or [B, Hkv, S, d]), q's dtype */
    const mha_tensor *v;   /* k's shape and q's dtype */
    mha_tensor *out;       /* q's shape and dtype; receives the result */
    int layout;            /* mha_layout; default MHA_LAYOUT_BTHD */
    float scale;           /* 0: 1/sqrt(d) */
    int causal;            /* mha_causal; default MHA_CAUSAL_NONE */
    int64_t window;        /* sliding window W (Mistral), 0 = none */
    float softcap;         /* logit softcap (Gemma 2), 0 = none */
    int alibi;             /* 1: ALiBi with the standard slopes for Hq heads
                              (2^(-8(h+1)/Hq), interpolated as Press et al.
                              for Hq not a power of two), computed and kept
                              on the device by the library */
    const mha_tensor *alibi_slopes; /* or your slopes: f32 [Hq] */
    const mha_tensor *sinks;   /* optional f32 [Hq] (gpt-oss) */
    const mha_tensor *bias;    /* optional additive f32 (or bool: true masks)
                                  bias, broadcastable to [B, Hq, L, S]
                                  (right-aligned, dimensions 1 broadcast) */
    const mha_tensor *kv_lens; /* optional MHA_I32 [B]: keys per sequence,
                                  0 to S */
} mha_attention_args;

MHA_API mha_status mha_attention_args_init_sized(mha_attention_args *args,
                                                 size_t struct_size);
#define mha_attention_args_init(args)                                        \
    mha_attention_args_init_sized((args), sizeof *(args))

/* Runs the attention on device and returns when out holds the result.
 * Every argument is checked first (the message names mha_attention, the
 * argument, its value and what was expected); kv_lens is read back to
 * check it. A device whose backend does not run a combination is
 * MHA_UNSUPPORTED. Repeated calls allocate nothing on the host; the ALiBi
 * slopes are uploaded into a buffer the device keeps (released with it)
 * when Hq changes. */
MHA_API mha_status mha_attention(mha_device *device,
                                 const mha_attention_args *args);

/* ---- decoder attention: KV cache and decoder layer ------------------------ */

/* The attention of decoder language models (Llama, Mistral, Qwen2, Gemma 2,
 * gpt-oss): grouped-query heads, rotary positions and a key/value cache
 * that grows by the tokens of each call. Prefill (T > 1) and decode (T = 1)
 * are the same call. */

typedef struct mha_kv_cache mha_kv_cache;
typedef struct mha_decoder mha_decoder;

/* Rotary position embedding styles. */
typedef enum mha_rope_style {
    MHA_ROPE_NONE = 0, /* no rotation (ALiBi models, or none) */
    MHA_ROPE_NEOX = 1, /* HF Llama's rotate_half: pairs (i, i + r/2) */
    MHA_ROPE_GPTJ = 2  /* GPT-J, interleaved: pairs (2i, 2i + 1) */
} mha_rope_style;

typedef struct mha_kv_cache_config {
    size_t struct_size;    /* sizeof, set by the init macro */
    int64_t capacity;      /* tokens per sequence, > 0 */
    int64_t num_sequences; /* sequences (batch items), > 0 */
    int64_t num_kv_heads;  /* Hkv, > 0 */
    int64_t head_dim;      /* d, 1 to 256 */
    mha_dtype dtype;       /* MHA_F32 (default) or MHA_F16, which halves
                              the bytes a decode step reads */
    int64_t window;        /* W > 0: a ring for a sliding-window layer
                              (window 1 to W): memory is capacity tokens
                              (at least W; 2W moves W - 1 tokens every
                              W + 1) however many are appended; 0 = a
                              full cache */
} mha_kv_cache_config;

MHA_API mha_status mha_kv_cache_config_init_sized(mha_kv_cache_config *config,
                                                  size_t struct_size);
#define mha_kv_cache_config_init(config)                                     \
    mha_kv_cache_config_init_sized((config), sizeof *(config))

/* Creates an empty cache on device: keys and values of num_sequences
 * sequences of up to capacity tokens each, stored token-major
 * ([sequence, token, kv head, d]), plus each sequence's length on the host
 * and in a device MHA_I32 buffer that the attention reads. */
MHA_API mha_status mha_kv_cache_create(mha_device *device,
                                       const mha_kv_cache_config *config,
                                       mha_kv_cache **out);

/* Appends T tokens to sequence seq: key and value are device tensors
 * [T, num_kv_heads, head_dim] (f32 or f16, converted to the cache's dtype)
 * on the cache's device. Past capacity is MHA_LIMIT_REACHED, naming the
 * numbers; nothing is written then (a full cache never overwrites). A
 * ring that is full first moves its last window - 1 tokens to the front
 * (dropping older ones) and is past capacity only when window - 1 + T
 * exceeds it. A sequence counts at most 2^31 - 1 tokens (a ring too):
 * MHA_LIMIT_REACHED past that. */
MHA_API mha_status mha_kv_cache_append(mha_kv_cache *cache, int64_t seq,
                                       const mha_tensor *key,
                                       const mha_tensor *value);

/* Tokens appended to sequence seq (a ring counts the dropped ones too:
 * the next default position). */
MHA_API mha_status mha_kv_cache_length(const mha_kv_cache *cache,
                                       int64_t seq, int64_t *length);

/* Keeps the first length tokens of sequence seq (rollback, e.g. of
 * rejected speculative tokens); length may not exceed the current one. A
 * ring that dropped tokens goes back only while it holds the window - 1
 * tokens before length; else MHA_INVALID_ARGUMENT naming the range. */
MHA_API mha_status mha_kv_cache_truncate(mha_kv_cache *cache, int64_t seq,
                                         int64_t length);

/* Empties every sequence. */
MHA_API mha_status mha_kv_cache_clear(mha_kv_cache *cache);

/* NULL does nothing. */
MHA_API mha_status mha_kv_cache_destroy(mha_kv_cache *cache);

/* A decoder self-attention layer (HF LlamaAttention and its relatives):
 * q = x Wq^T (+ bq), k, v likewise with num_kv_heads heads; RoPE on q and
 * k at each token's position; k and v appended to the cache; attention of
 * each query over its sequence's cached prefix (causal, aligned to the
 * last key), with num_heads / num_kv_heads query heads per kv head; then
 * y = o Wo^T (+ bo). Score order (mha's attention core):
 * s = softcap(scale q.k) + alibi_h * (j - p), masks (causal, window), then
 * softmax whose denominator also holds exp(sinks[h]) when sinks is set. */
typedef struct mha_decoder_config {
    size_t struct_size;   /* sizeof, set by the init macro */
    int64_t embed_dim;    /* E, > 0 */
    int64_t num_heads;    /* Hq, > 0 */
    int64_t num_kv_heads; /* Hkv, > 0, divides Hq; default Hq */
    int64_t head_dim;     /* d, 1 to 256; default E / Hq */
    mha_rope_style rope_style; /* default MHA_ROPE_NEOX */
    int64_t rope_dims;    /* rotated features (partial rotary), even, <= d;
                             0 means d */
    float rope_theta;     /* default 10000 */
    float rope_scaling;   /* linear position scaling factor: positions are
                             divided by it; default 1 */
    int64_t window;       /* sliding window W: query p sees keys
                             p - W < j <= p; 0 = none */
    int alibi;            /* ALiBi slopes 2^(-8(h+1)/Hq), interpolated as
                             in Press et al. when Hq is no power of 2 */
    float softcap;        /* logit softcap c (Gemma 2), 0 = none */
    int sinks;            /* a learned sink logit per head (gpt-oss):
                             weight "sinks" [Hq] */
    int qkv_bias;         /* q/k/v_proj.bias exist (Qwen2) */
    int o_bias;           /* o_proj.bias exists */
    float scale;          /* 0 means 1 / sqrt(head_dim) */
} mha_decoder_config;

/* Fills *config with the defaults above for embed_dim and num_heads. */
MHA_API mha_status mha_decoder_config_init_sized(mha_decoder_config *config,
                                                 size_t struct_size,
                                                 int64_t embed_dim,
                                                 int64_t num_heads);
#define mha_decoder_config_init(config, embed_dim, num_heads)                \
    mha_decoder_config_init_sized((config), sizeof *(config), (embed_dim),   \
                                  (num_heads))

/* Creates a decoder layer on device, weights unset (a forward before all
 * are set is MHA_MISSING_WEIGHT). Hq % Hkv != 0, a bad head size or rope
 * setting is MHA_INVALID_ARGUMENT with a message naming the numbers. */
MHA_API mha_status mha_decoder_create(mha_device *device,
                                      const mha_decoder_config *config,
                                      mha_decoder **out);

/* Sets one weight from host fp32 data, by its Hugging Face name:
 *   q_proj.weight [Hq*d, E], k_proj.weight [Hkv*d, E],
 *   v_proj.weight [Hkv*d, E], o_proj.weight [E, Hq*d],
 *   q_proj.bias [Hq*d], k_proj.bias, v_proj.bias [Hkv*d]  (qkv_bias)
 *   o_proj.bias [E]                                        (o_bias)
 *   sinks [Hq]                                             (sinks)
 * The caller keeps data. */
MHA_API mha_status mha_decoder_set_weight(mha_decoder *layer,
                                          const char *name, const float *data,
                                          int ndim, const int64_t *shape);

/* Loads every weight the layer needs from a .safetensors file, each name
 * prefixed by prefix (NULL or ""), e.g. "model.layers.7.self_attn.";
 * F32, F16, BF16 or F64 tensors, converted to fp32. Every key is checked
 * before any is written. */
MHA_API mha_status mha_decoder_load_safetensors(mha_decoder *layer,
                                                const char *path,
                                                const char *prefix);

typedef struct mha_decoder_forward_args {
    size_t struct_size;          /* sizeof, set by the init macro */
    const mha_tensor *x;         /* [B, T, E] f32: the new tokens of
                                    sequences 0 .. B-1 of the cache */
    const mha_tensor *positions; /* MHA_I32 [B, T] rotary positions, or
                                    NULL: each sequence's length + t.
                                    Read back (one transfer when
                                    contiguous) and checked before any
                                    work: one outside 0 to 2^24 - 1
                                    (where fp32 holds every position)
                                    is MHA_INVALID_ARGUMENT naming the
                                    sequence, token and value; default
                                    ones past it (a rotating layer) are
                                    MHA_LIMIT_REACHED */
    mha_kv_cache *cache;         /* num_kv_heads and head_dim of the layer,
                                    at least B sequences; a ring (window
                                    W) needs a layer window 1 to W */
    mha_tensor *output;          /* [B, T, E] f32, created by the caller */
    const mha_tensor *head_gates; /* optional f32 [Hq] or [B, Hq]: each
                                    query head's attention output times its
                                    gate before o_proj, as head_gates of
                                    mha_forward_args (read back when the
                                    call is made). A kv group whose query
                                    heads are all 0 for every sequence is
                                    not computed (but in a training
                                    forward); other zeros multiply. */
    int save_for_backward;       /* 1: a training forward, for
                                    mha_decoder_backward (see "Training a
                                    decoder layer" below) */
} mha_decoder_forward_args;

MHA_API mha_status mha_decoder_forward_args_init_sized(
    mha_decoder_forward_args *args, size_t struct_size);
#define mha_decoder_forward_args_init(args)                                  \
    mha_decoder_forward_args_init_sized((args), sizeof *(args))

/* Projects the new tokens, rotates q and k, appends k and v to sequences
 * 0 .. B-1 of the cache and attends over each one's cached prefix; returns
 * when output holds the result. Appending past the cache's capacity is
 * MHA_LIMIT_REACHED and changes nothing. Scratch is kept per bucket of
 * B*T (a power of 2), never per length, so after the first call of a
 * bucket a call (a decode step) allocates nothing. On failure the cache's
 * lengths are as before the call. */
MHA_API mha_status mha_decoder_forward(mha_decoder *layer,
                                       const mha_decoder_forward_args *args);

/* NULL does nothing. */
MHA_API mha_status mha_decoder_destroy(mha_decoder *layer);

/* Removes count query heads from the layer for good, as
 * mha_layer_prune_heads does for nn.MHA: heads are named by their original
 * index (0 .. num_heads - 1 as created, as mha_decoder_kept_heads lists
 * the kept ones). Grouped-query layers prune whole kv groups, so the
 * grouping stays uniform: the heads listed must make up whole groups (the
 * num_heads / num_kv_heads query heads sharing a kv head; with
 * num_heads == num_kv_heads any set of heads), and a partial group is
 * MHA_INVALID_ARGUMENT naming the group. The q_proj rows, o_proj columns,
 * q_proj.bias entries and sinks of those heads, and the k_proj/v_proj rows
 * and biases of their kv heads go; each weight moves to a smaller device
 * buffer and the forward's scratch is made anew for the kept heads, so
 * mha_device_memory_usage falls. ALiBi slopes stay each kept head's
 * original slope. The forward then runs Hq' kept query heads over Hkv'
 * kept kv heads: the KV cache must hold Hkv' kv heads (one made for the
 * unpruned layer is MHA_SHAPE_MISMATCH), head_gates count the kept heads
 * in ascending original order, and mha_decoder_set_weight and
 * mha_decoder_load_safetensors expect the pruned shapes. An index out of
 * range, one already pruned, one listed twice, or pruning every head left
 * is MHA_INVALID_ARGUMENT naming it, and changes nothing. A layer with
 * decode steps recorded into an application's command buffer
 * (mha_vulkan_decoder_record), which may still use its weights, is
 * MHA_BAD_STATE. count 0 does nothing. */
MHA_API mha_status mha_decoder_prune_heads(mha_decoder *layer,
                                           const int64_t *heads,
                                           int64_t count);

/* The original indices of the query heads the layer keeps, ascending, into
 * heads (capacity entries; may be NULL when capacity is 0), and their
 * number into *count. A capacity below the count is MHA_BUFFER_TOO_SMALL
 * with *count set. */
MHA_API mha_status mha_decoder_kept_heads(const mha_decoder *layer,
                                          int64_t *heads, int64_t capacity,
                                          int64_t *count);

/* ---- heads: statistics and importance ------------------------------------- */

/* An accumulator of per-head statistics of an nn.MHA layer over a set of
 * inputs (Voita et al. 2019, Clark et al. 2019, Michel et al. 2019). Each
 * mha_head_stats_add runs the layer on the device with the attention
 * weights kept per head, reduces them on the device where the attention
 * runs (B*H*(5+H) sums come back, not the L x S' matrices), and runs the
 * layer once more per head with that head's gate at 0 (head_gates), so a
 * call costs H + 1 forwards. Query row i and key j are taken to sit at
 * positions i and j (self-attention; appended bias_k/zero keys come last).
 * A row whose keys are all masked has all-zero weights: it adds 0 to every
 * statistic but counts as a row. */
typedef struct mha_head_stats mha_head_stats;

/* One head's statistics, filled by mha_head_stats_get (never grows within
 * a soname, like mha_device_info). Means are over every query row of every
 * batch item of every call. */
typedef struct mha_head_stat {
    int64_t head;      /* the head's original index (a pruned layer's
                          kept heads, as mha_layer_kept_heads lists them) */
    double entropy;    /* mean of -sum_j p_ij ln p_ij, in nats */
    double confidence; /* mean of max_j p_ij */
    double distance;   /* mean of sum_j p_ij |i - j| */
    double first_key;  /* mean of p_i0 (attention sink) */
    double prev_token; /* mean of p_i,i-1 over rows 1 <= i <= S' */
    double ablation;   /* mean over batch items of ||Y - Y'|| / ||Y||, Y'
                          the output with this head alone gated off
                          (0 for an item whose Y is 0) */
    double gradient;   /* gradient_raw / the l2 norm of every head's
                          gradient_raw (Michel et al.'s per-layer
                          normalisation); 0 without gradients */
    double gradient_raw; /* mean over batch items of |dL/dg_h| = |sum over
                            rows of <dL/dY, O_h W_o,h^T>|, O_h W_o,h^T the
                            head's projected output (Y - Y') */
    int64_t rows;      /* query rows the means are over */
    int64_t gradient_items; /* batch items that came with dL/dY */
} mha_head_stat;

/* The head-by-head matrices of mha_head_stats_redundancy. */
typedef enum mha_head_redundancy {
    MHA_REDUNDANCY_JS = 0,    /* mean over query rows of the Jensen-Shannon
                                 divergence of two heads' weights, in nats
                                 (0 to ln 2; 0 on the diagonal) */
    MHA_REDUNDANCY_COSINE = 1 /* cosine similarity of two heads' projected
                                 outputs O_h W_o,h^T over every element seen
                                 (1 on the diagonal; 0 for a head whose
                                 output is 0) */
} mha_head_redundancy;

/* Creates an empty accumulator for layer (kept, not owned: destroy the
 * accumulator first). Scratch (the weights [B,H,L,S'] and one output) lives
 * on the layer's device and is remade when a call's shapes change. */
MHA_API mha_status mha_head_stats_create(mha_layer *layer,
                                         mha_head_stats **out);

/* Runs the layer on args (as mha_layer_forward; output receives the
 * ungated result; need_weights, weights, average_attn_weights,
 * head_gates, head_outputs and save_for_backward are ignored: the
 * accumulator sets its own)
 * and accumulates. The per-head outputs O_h W_o,h^T (Y minus the output
 * with head h gated off) and dL/dY come back to the host, where ablation,
 * gradient importance and the cosine matrix are reduced (B*L*E floats
 * per head per call). grad_output,
 * optional, is dL/dY for this output: f32, output's shape, on the
 * layer's device (otherwise MHA_SHAPE_MISMATCH, MHA_DTYPE_MISMATCH or
 * MHA_INVALID_ARGUMENT naming it). output may not be an input or
 * grad_output: the ablated runs read those after the first run wrote it
 * (MHA_INVALID_ARGUMENT). The statistics change only when the call
 * succeeds. */
MHA_API mha_status mha_head_stats_add(mha_head_stats *stats,
                                      const mha_forward_args *args,
                                      const mha_tensor *grad_output);

/* Writes the statistics of the layer's H heads into per_head[0..H);
 * count below H is MHA_BUFFER_TOO_SMALL. Before any add: MHA_BAD_STATE. */
MHA_API mha_status mha_head_stats_get(const mha_head_stats *stats,
                                      mha_head_stat *per_head,
                                      int64_t count);

/* Writes the H x H matrix of kind, row-major, into hxh[0..H*H); count
 * below H*H is MHA_BUFFER_TOO_SMALL. Before any add: MHA_BAD_STATE. */
MHA_API mha_status mha_head_stats_redundancy(const mha_head_stats *stats,
                                             mha_head_redundancy kind,
                                             double *hxh, int64_t count);

/* Heads of the layer when the accumulator was made (H; pruning the layer
 * later makes mha_head_stats_add MHA_BAD_STATE). */
MHA_API int64_t mha_head_stats_heads(const mha_head_stats *stats);

/* NULL does nothing. */
MHA_API mha_status mha_head_stats_destroy(mha_head_stats *stats);

/* ---- training: backward pass and AdamW ------------------------------------ */

/* Training an nn.MHA layer (f32 or f16; dropout stays 0):
 *
 *   args.save_for_backward = 1;  mha_layer_forward(layer, &args);
 *   ... the loss's gradient dL/dY into dy ...
 *   bw.grad_output = dy; bw.grads = grads; mha_layer_backward(layer, &bw);
 *   mha_adamw_step(opt, grads, lr);        (lr: the caller's schedule)
 *
 * A training forward keeps, on the layer's device, the projections Q, K
 * and V (with their bias_k/zero rows), the attention output O and each
 * query row's log-sum-exp of the scores (FlashAttention-2's saved state:
 * never the L x S' matrix, which the backward recomputes tile by tile);
 * it references, and does not copy, the caller's query, key, value and
 * masks, which must stay alive and unchanged until the last backward of
 * that forward. The next training forward replaces what was saved; an
 * ordinary forward keeps it. It needs the device's fused attention with
 * the saved LSE, and refuses (MHA_UNSUPPORTED, naming the option) what
 * the backward does not do yet: need_weights. An f16 layer trains as
 * "fp16 storage, fp32 math": its weights stay f16 (its inputs, output
 * and their gradients are f32, as in its forward); the training forward
 * saves Q, K, V and O in f32 (in fp16, scores near 100 would be off by
 * 0.05); the backward runs in f32 on an f32 copy of the weights and
 * writes f32 gradients (mixed precision's master gradients); AdamW steps
 * an f32 master copy and writes the weights back rounded to f16. With
 * head_gates every head is computed (none skipped) and multiplied by its
 * gate, so the gates have a gradient (grad_head_gates). A
 * fully masked query row has zero gradients, as its output row (the
 * forward's documented choice). Decoder layers: "Training a decoder
 * layer" below. */

/* One f32 device tensor per weight of a layer (of an f16 layer too: the
 * f32 master gradients), shaped like the weight and named as in the
 * module's state_dict: in_proj_weight (or q_proj_weight,
 * k_proj_weight, v_proj_weight), in_proj_bias, out_proj.weight,
 * out_proj.bias, bias_k, bias_v, as the layer has them. */
typedef struct mha_gradients mha_gradients;

/* Creates gradients for layer (kept, not owned: destroy them first),
 * zeroed. After mha_layer_prune_heads they no longer fit the layer: a
 * backward or step with them is MHA_BAD_STATE. */
MHA_API mha_status mha_gradients_create(mha_layer *layer,
                                        mha_gradients **out);

/* Sets every gradient to 0 (optimizer.zero_grad(set_to_none=False)). */
MHA_API mha_status mha_gradients_zero(mha_gradients *grads);

/* The gradient of the weight called name, a tensor owned by grads (do not
 * destroy it): download it, or use it on the device. A name this layer
 * does not have is MHA_NOT_FOUND or MHA_INVALID_ARGUMENT, as in
 * mha_layer_set_weight. */
MHA_API mha_status mha_gradients_get(const mha_gradients *grads,
                                     const char *name,
                                     const mha_tensor **out);

/* NULL does nothing. */
MHA_API mha_status mha_gradients_destroy(mha_gradients *grads);

typedef struct mha_backward_args {
    size_t struct_size;            /* sizeof, set by the init macro */
    const mha_tensor *grad_output; /* dL/dY: f32, the output's shape */
    /* Optional input gradients, f32, shaped like query, key and value.
     * They are written, not added to. The same tensor given twice or
     * three times (self-attention on one input x: query = key = value)
     * receives the sum, dL/dx, as autograd gives it. */
    mha_tensor *grad_query;
    mha_tensor *grad_key;
    mha_tensor *grad_value;
    mha_gradients *grads;  /* optional: the weights' gradients */
    int accumulate;        /* 1: add into grads (micro-batches, as autograd
                              adds into .grad); 0: overwrite them */
    /* Optional, only after a training forward with head_gates: dL/dg, f32,
     * the gates' shape ([H] or [N, H]); written, not added to. (Michel et
     * al.'s head importance is its magnitude.) */
    mha_tensor *grad_head_gates;
    /* No gradient may share memory with the training forward's query,
     * key, value, masks or head_gates, which the backward still reads
     * after writing a gradient (MHA_INVALID_ARGUMENT naming both). */
} mha_backward_args;

MHA_API mha_status mha_backward_args_init_sized(mha_backward_args *args,
                                                size_t struct_size);
#define mha_backward_args_init(args)                                         \
    mha_backward_args_init_sized((args), sizeof *(args))

/* Backpropagates grad_output through the layer's last training forward
 * and returns when the gradients are written. Without a training forward
 * since the layer was made, or after its weights changed (set, loaded,
 * pruned or stepped: the layer counts generations), it is MHA_BAD_STATE;
 * a grad_output or input gradient of the wrong shape is
 * MHA_SHAPE_MISMATCH, naming it and the expected shape. A backend that
 * does not run the backward's ops is MHA_UNSUPPORTED naming the op. The
 * saved state stays: a second backward of the same forward is allowed
 * (accumulate: twice the gradients). Repeated calls of one shape
 * allocate nothing. */
MHA_API mha_status mha_layer_backward(mha_layer *layer,
                                      const mha_backward_args *args);

/* torch.optim.AdamW over every weight of a layer: decoupled weight decay,
 * bias correction; state (m, v) on the layer's device, f32. For an f16
 * layer the state also holds an f32 master copy of the weights: a step
 * updates the master (read from the layer at the first step and again
 * whenever the weights were set or loaded since the last step) and
 * writes it back rounded to f16, so updates smaller than an f16 weight's
 * rounding step accumulate instead of being lost. */
typedef struct mha_adamw mha_adamw;

typedef struct mha_adamw_config {
    size_t struct_size; /* sizeof, set by the init macro */
    float beta1;        /* default 0.9 */
    float beta2;        /* default 0.999 */
    float eps;          /* default 1e-8 */
    float weight_decay; /* default 0.01 (torch.optim.AdamW's) */
} mha_adamw_config;

MHA_API mha_status mha_adamw_config_init_sized(mha_adamw_config *config,
                                               size_t struct_size);
#define mha_adamw_config_init(config)                                        \
    mha_adamw_config_init_sized((config), sizeof *(config))

/* Creates an optimizer of layer's weights (kept, not owned: destroy it
 * first) with zeroed state and step 0. config NULL: the defaults. Betas
 * outside [0, 1), eps <= 0 or a negative weight_decay is
 * MHA_INVALID_ARGUMENT. */
MHA_API mha_status mha_adamw_create(mha_layer *layer,
                                    const mha_adamw_config *config,
                                    mha_adamw **out);

/* One step t (counted from 1) at learning rate lr (>= 0; a warm-up or
 * decay schedule is the caller's loop): for each weight p with gradient g,
 *   p = p (1 - lr wd); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 *   p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * on the device, in place. grads must be of the optimizer's layer. */
MHA_API mha_status mha_adamw_step(mha_adamw *opt, const mha_gradients *grads,
                                  float lr);

/* Steps taken so far. */
MHA_API int64_t mha_adamw_steps(const mha_adamw *opt);

/* NULL does nothing. */
MHA_API mha_status mha_adamw_destroy(mha_adamw *opt);

/* ---- training a decoder layer ---------------------------------------------
 *
 *   mha_decoder_gradients_create(dec, &grads);
 *   mha_decoder_adamw_create(dec, NULL, &opt);
 *   mha_kv_cache_clear(cache);
 *   fa.save_for_backward = 1;  mha_decoder_forward(dec, &fa);
 *   bw.grad_output = dy; bw.grads = grads; mha_decoder_backward(dec, &bw);
 *   mha_adamw_step(opt, grads, lr);
 *
 * A training forward is a prefill of sequences 0 .. B-1 that start empty
 * in the cache (so every key a query attends is one of x's tokens and has
 * a gradient); it appends to the cache as any forward does, and keeps on
 * the device the rotated q, the k and v projections, the attention output,
 * each query row's log-sum-exp and the positions; it references, and does
 * not copy, x, which must stay alive and unchanged until the last backward.
 * The backward covers grouped-query heads (Hkv < Hq), RoPE (both styles,
 * partial rotary, theta, scaling, the caller's positions), q/k/v and o
 * biases, sinks (their gradient too), window, softcap, alibi (the slopes
 * are constants: no gradient) and any head_dim, over an f32 or f16 cache
 * (over f16, the backward rounds k and v to f16 as the cache held them, so
 * it is the gradient of the forward that ran), and head_gates: a training
 * forward computes every head (none skipped, zeros multiply) and keeps
 * the ungated O, so the backward gives the gates' gradient
 * (grad_head_gates) and backpropagates through their multiply; the gates
 * tensor is referenced as x is. It refuses
 * (MHA_UNSUPPORTED, naming the reason) a training forward
 * over a cache whose sequences are not empty, over a
 * ring cache, with an x that is not contiguous, or recorded
 * (mha_vulkan_decoder_record). The gradients are named as the weights
 * ("q_proj.weight", ..., "o_proj.bias", "sinks").
 * mha_gradients_zero, mha_gradients_get, mha_adamw_step and the destroys
 * take a decoder's objects as a layer's. */

/* Gradients for a decoder layer's weights (kept, not owned: destroy them
 * first), zeroed; pruning the layer makes them MHA_BAD_STATE. */
MHA_API mha_status mha_decoder_gradients_create(mha_decoder *layer,
                                                mha_gradients **out);

/* AdamW over a decoder layer's weights, as mha_adamw_create. */
MHA_API mha_status mha_decoder_adamw_create(mha_decoder *layer,
                                            const mha_adamw_config *config,
                                            mha_adamw **out);

typedef struct mha_decoder_backward_args {
    size_t struct_size;            /* sizeof, set by the init macro */
    const mha_tensor *grad_output; /* dL/dY: f32 [B, T, E], whole */
    mha_tensor *grad_x;            /* optional dL/dx, f32 [B, T, E], whole;
                                      written, not added to */
    mha_gradients *grads;          /* optional: the weights' gradients */
    int accumulate;                /* 1: add into grads; 0: overwrite */
    /* Optional, only after a training forward with head_gates: dL/dg, f32,
     * the gates' shape ([Hq] or [B, Hq]); written, not added to, as
     * grad_head_gates of mha_backward_args. Neither gradient may be the
     * training forward's x or head_gates (MHA_INVALID_ARGUMENT). */
    mha_tensor *grad_head_gates;
} mha_decoder_backward_args;

MHA_API mha_status mha_decoder_backward_args_init_sized(
    mha_decoder_backward_args *args, size_t struct_size);
#define mha_decoder_backward_args_init(args)                                 \
    mha_decoder_backward_args_init_sized((args), sizeof *(args))

/* Backpropagates grad_output through the layer's last training forward
 * (the cache is not read: what the backward needs was saved). Without a
 * training forward, or after the weights changed (set, loaded, pruned or
 * stepped), MHA_BAD_STATE; a gradient tensor of the wrong shape
 * MHA_SHAPE_MISMATCH naming it and the expected shape. The saved state
 * stays: a second backward of the same forward is allowed. Repeated calls
 * of one shape allocate nothing. */
MHA_API mha_status mha_decoder_backward(mha_decoder *layer,
                                        const mha_decoder_backward_args *args);

#ifdef __cplusplus
}
#endif
#endif /* MHA_H */
