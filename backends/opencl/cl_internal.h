/* cl_internal.h: private types of the OpenCL backend: the run-time loaded
 * entry-point table, the per-context state, the open device with its built
 * programs, and the functions the backend's files share. Nothing here is
 * seen outside backends/opencl/. */
#ifndef MHA_CL_INTERNAL_H
#define MHA_CL_INTERNAL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <CL/cl_ext.h>

#include "backend.h"

#if defined(__GNUC__)
#define MHA_CL_HIDDEN __attribute__((visibility("hidden")))
#else
#define MHA_CL_HIDDEN
#endif

/* ---- entry points ----------------------------------------------------------
 * X(name). Each is resolved with dlsym into mha_cl_api (per
 * context, no globals); a missing one means the runtime is unusable. The
 * optional 2.x entry point below the list may be NULL. */
#define MHA_CL_API_LIST(X)                  \
    X(clGetPlatformIDs)                  \
    X(clGetPlatformInfo)                 \
    X(clGetDeviceIDs)                    \
    X(clGetDeviceInfo)                   \
    X(clCreateContext)                   \
    X(clReleaseContext)                  \
    X(clCreateCommandQueue)              \
    X(clReleaseCommandQueue)             \
    X(clCreateBuffer)                    \
    X(clReleaseMemObject)                \
    X(clCreateProgramWithSource)         \
    X(clCreateProgramWithBinary)         \
    X(clBuildProgram)                    \
    X(clGetProgramInfo)                  \
    X(clGetProgramBuildInfo)             \
    X(clReleaseProgram)                  \
    X(clCreateKernel)                    \
    X(clReleaseKernel)                   \
    X(clSetKernelArg)                    \
    X(clGetKernelWorkGroupInfo)          \
    X(clEnqueueNDRangeKernel)            \
    X(clEnqueueWriteBuffer)              \
    X(clEnqueueReadBuffer)               \
    X(clFlush)                           \
    X(clFinish)                          \
    X(clRetainContext)                   \
    X(clRetainCommandQueue)              \
    X(clRetainDevice)                    \
    X(clReleaseDevice)                   \
    X(clRetainMemObject)                 \
    X(clGetCommandQueueInfo)             \
    X(clGetMemObjectInfo)                \
    X(clEnqueueMarkerWithWaitList)       \
    X(clGetEventInfo)                    \
    X(clRetainEvent)                     \
    X(clReleaseEvent)                    \
    X(clGetEventProfilingInfo)

/* OpenCL 2.1's subgroup count query, hidden by the headers at 1.2; asked
 * only of 3.0 devices. */
#define MHA_CL_DEVICE_MAX_NUM_SUB_GROUPS 0x105C

/* OpenCL 2.0's queue constructor, declared here because the headers hide it
 * at target version 1.2; used when the device reports 2.0 or later. */
typedef cl_command_queue(CL_API_CALL *mha_cl_create_queue_props_fn)(
    cl_context, cl_device_id, const cl_ulong *, cl_int *);

typedef struct mha_cl_api {
#define MHA_CL_API_FIELD_(name) __typeof__(&name) name;
    MHA_CL_API_LIST(MHA_CL_API_FIELD_)
#undef MHA_CL_API_FIELD_
    mha_cl_create_queue_props_fn clCreateCommandQueueWithProperties;
} mha_cl_api;

/* ---- limits the kernels are specialised from ---------------------------- */

typedef struct mha_cl_limits {
    size_t local_mem;      /* bytes of local memory per workgroup */
    size_t max_workgroup;  /* work items per workgroup */
    int fp16;              /* cl_khr_fp16: native half arithmetic */
    int fp16_storage;      /* half buffers through vload_half/vstore_half,
                              which OpenCL C 1.2 has without cl_khr_fp16;
                              MHA_OPENCL_LIMITS fp16=0 turns both off */
    int capped;            /* MHA_OPENCL_LIMITS applied: specialise as for
                              a GPU with these limits, even on a CPU */
} mha_cl_limits;

/* One device found by init. */
typedef struct mha_cl_devrec {
    cl_platform_id platform;
    cl_device_id device;
    mha_cl_limits limits;
    uint64_t max_alloc;
    int version_major, version_minor; /* CL_DEVICE_VERSION */
    int c_version;                    /* OpenCL C, 12 for 1.2 */
    int is_cpu;                       /* CL_DEVICE_TYPE_CPU */
    int compute_units;                /* CL_DEVICE_MAX_COMPUTE_UNITS */
    int float_width; /* CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT: floats a
                        register holds (PoCL: 16 with AVX-512, 8 AVX2) */
    char name[128];
    char key[512]; /* platform, device, driver: part of the cache key */
} mha_cl_devrec;

/* Per-context state: the loaded runtime and the device list. */
typedef struct mha_cl_state {
    mha_host *host;
    void *lib; /* dlopen handle of the ICD loader */
    mha_cl_api api;
    int count;
    mha_cl_devrec *devs;
    /* Fault injection for tests (mha_fault_due): program builds from
     * source on any device of the context fail as CL_BUILD_PROGRAM_FAILURE
     * (at open for the common program, at first use for the others). */
    int fault_build;
} mha_cl_state;

/* ---- programs ---------------------------------------------------------------
 * A program is one kind of source built with one set of -D constants. The
 * device keeps every program it built, so each is built (or loaded from the
 * binary cache) once per open device. */
typedef enum mha_cl_prog_kind {
    MHA_CL_PROG_OPS = 0,      /* gemm, softmax, copy, mean_heads, rope */
    MHA_CL_PROG_ATTENTION = 1, /* fused attention, per head-size bucket */
    MHA_CL_PROG_ATTENTION_BWD = 2 /* its backward (issue 18), likewise */
} mha_cl_prog_kind;

typedef enum mha_cl_kernel_id {
    MHA_CL_K_GEMM = 0,
    MHA_CL_K_SOFTMAX,
    MHA_CL_K_COPY,
    MHA_CL_K_MEAN_HEADS,
    MHA_CL_K_ATTENTION,
    MHA_CL_K_ATTENTION_COMBINE,
    MHA_CL_K_ROPE,
    MHA_CL_K_MUL,
    MHA_CL_K_HEAD_STATS,
    MHA_CL_K_SUM_ROWS, /* the training ops (issue 18) */
    MHA_CL_K_ADAMW,
    MHA_CL_K_ATT_BWD_PRE,
    MHA_CL_K_ATT_BWD,
    MHA_CL_K_COUNT
} mha_cl_kernel_id;

typedef struct mha_cl_program {
    mha_cl_prog_kind kind;
    int d_max; /* ATTENTION(_BWD): head-size bucket; 0 otherwise */
    int bc;    /* ATTENTION: keys per local-memory tile (_BWD: streamed
                  rows per tile) */
    int br;    /* ATTENTION: query rows per workgroup (_BWD: own rows) */
    int cw;    /* ATTENTION(_BWD): columns per work item (4, 8 or 16) */
    /* the device knobs it was asked for (tune.c's variants): OPS tile, wpt,
     * bk, direct, vw; ATTENTION attn_cw, attn_wg, attn_br; and the gemm
     * tile it was built with (a register limit can shrink it) */
    int knobs[5], built_tile;
    cl_program program;
    cl_kernel kernels[MHA_CL_K_COUNT]; /* those this kind defines */
} mha_cl_program;

/* attention.cl: work items of one query row (each owns cw of the D_MAX
 * columns). */
static inline int mha_cl_attention_lanes(const mha_cl_program *p)
{
    return p->d_max / p->cw;
}

#define MHA_CL_MAX_PROGRAMS 32

/* An open device: one libmha opened (its own context and in-order queue)
 * or one adopted from the application (interop.c): then context, queue and
 * the device are the caller's, retained once by libmha and released once. */
typedef struct mha_cl_device {
    mha_cl_state *st;
    mha_host *host;
    const mha_cl_api *api;
    const mha_cl_devrec *rec; /* into st->devs, or &own_rec when adopted */
    mha_cl_devrec own_rec;
    cl_context context;
    cl_command_queue queue;
    int adopted;      /* the queue is the caller's: close never waits on it */
    /* Ordering of libmha's commands on the queue (queue.c). An in-order
     * queue orders them by itself; on an out-of-order one each command
     * waits for the previous one's event, tail. wait_list is the caller's
     * mha_opencl_layer_enqueue wait list while that call runs, to be added
     * to the wait list of its first command. */
    int out_of_order;
    cl_event tail;
    cl_uint wait_count;
    const cl_event *wait_list;
    char *cache_dir; /* NULL: cache disabled */
    int tile;        /* gemm workgroup edge (tile x tile items) */
    int wpt;         /* gemm outputs per item along each dimension */
    int bk;          /* gemm slice depth (k per local-memory stage) */
    int direct;      /* gemm reads global memory directly (gemm.cl DIRECT) */
    int vw;          /* gemm's widest global load in floats (4, 2, 1) */
    int row_wg;      /* softmax / copy workgroup size */
    int attn_cw;     /* attention columns per work item (a vector width) */
    int attn_wg;     /* attention work items a group aims at */
    int attn_br;     /* attention query rows a group; 0: attn_wg's */
    int nprograms;
    mha_cl_program programs[MHA_CL_MAX_PROGRAMS];
    /* The fused attention's partial results when it splits the keys
     * (ops.c), grown on demand and reused by every later launch: the queue
     * orders the launches, and OpenCL keeps a released cl_mem alive for the
     * commands that still use it. NULL until the first split. */
    struct mha_cl_buffer *scratch;
    /* Fault injection for tests (mha_fault_due): buffer creations fail as
     * CL_MEM_OBJECT_ALLOCATION_FAILURE, kernel enqueues as
     * CL_OUT_OF_RESOURCES (a lost device, see mha_cl_queue_fail). */
    int fault_alloc;
    int fault_enqueue;
    /* Test hook: when set, the fused attention adds the number of key
     * tiles it loads to this buffer's first int (test_opencl_tiles.c). */
    const struct mha_cl_buffer *tile_visits;
    /* Profiles (timer.c): the marker of each timestamp slot; whether the
     * queue profiles */
    cl_event timer_events[MHA_TIMER_SLOTS];
    int timer_profiling; /* 0: not asked yet, 1: yes, 2: no */
    /* tile, wpt, bk, direct, vw, attn_cw, attn_wg, attn_br as
     * mha_cl_device_ready chose them; a node's variant changes the knobs
     * for its run (tune.c) */
    int base_knobs[8];
} mha_cl_device;

/* A buffer: libmha's own cl_mem (base 0), or a range of the caller's from
 * base on (mha_opencl_tensor_wrap). size counts bytes from base. */
typedef struct mha_cl_buffer {
    cl_mem mem;
    size_t size;
    size_t base;
    cl_mem_flags flags; /* kernels may not write CL_MEM_READ_ONLY memory
                           nor read CL_MEM_WRITE_ONLY memory */
} mha_cl_buffer;

/* ---- command ordering (queue.c) ---------------------------------------------
 * Every command libmha enqueues takes its wait list and event from
 * mha_cl_order_begin and reports to mha_cl_order_end whether the enqueue
 * succeeded (then the caller's wait list counts as consumed and, on an
 * out-of-order queue, the new event becomes the tail). */
typedef struct mha_cl_order {
    cl_uint count;
    const cl_event *list;
    cl_event *event; /* NULL on an in-order queue */
    cl_event made;   /* what event points to */
    cl_event joined; /* marker joining the caller's list with the tail */
    cl_event pair[2];
} mha_cl_order;

/* ---- shared functions --------------------------------------------------- */

extern const mha_backend_iface mha_opencl_backend;

/* The checks of a program-binary cache entry (program.c), pure so
 * tests/fuzz can drive them. head is the entry's first
 * MHA_CL_CACHE_HEADER_BYTES: NULL when its magic, key and size are right
 * (*size: the payload's bytes), else why not. */
#define MHA_CL_CACHE_HEADER_BYTES 32
MHA_CL_HIDDEN const char *mha_cl_cache_header_check(const unsigned char *head,
                                                    uint64_t key,
                                                    size_t *size);
/* Whether the payload (size bytes after head) has head's size and hash. */
MHA_CL_HIDDEN bool mha_cl_cache_payload_ok(const unsigned char *head,
                                           const unsigned char *bin,
                                           size_t size);

/* The status of a failed command-queue call (an enqueue, clFinish), with
 * the message of mha_cl_fail. OpenCL has no "device lost" code: drivers
 * report a device that faulted or was reset as CL_OUT_OF_RESOURCES on the
 * queue, so that is MHA_DEVICE_LOST here (and the core then refuses all
 * further work on the device). */
MHA_CL_HIDDEN mha_status mha_cl_queue_fail(mha_cl_device *dev,
                                           const char *call, cl_int code);

/* "CL_OUT_OF_RESOURCES" for -5; "CL_UNKNOWN_ERROR" for an unknown code. */
MHA_CL_HIDDEN const char *mha_cl_error_name(cl_int code);

/* Sets the context's message "<call> failed: <NAME> (<code>)" and returns
 * the mha_status the code maps to. */
MHA_CL_HIDDEN mha_status mha_cl_fail(mha_host *host, const char *call,
                                     cl_int code);

/* Loads the ICD loader and resolves the entry points; MHA_NOT_FOUND (with
 * the reason logged, no error set) when there is none. */
MHA_CL_HIDDEN mha_status mha_cl_load(mha_cl_state *st);
MHA_CL_HIDDEN void mha_cl_unload(mha_cl_state *st);

/* The process-wide lock every probe of platforms and devices holds
 * (loader.c says why). */
MHA_CL_HIDDEN void mha_cl_icd_lock(void);
MHA_CL_HIDDEN void mha_cl_icd_unlock(void);

/* The program of a kind built for this device (built on first use, from
 * the binary cache where a valid entry exists). d is the head size for
 * ATTENTION, ignored otherwise. Kernels take f32 and f16 tensors alike
 * (a halfmask argument), so there is no per-dtype variant. */
MHA_CL_HIDDEN mha_status mha_cl_program_get(mha_cl_device *dev,
                                            mha_cl_prog_kind kind, int d,
                                            mha_cl_program **out);
MHA_CL_HIDDEN void mha_cl_programs_release(mha_cl_device *dev);

/* The cache directory the options and environment select, as a string from
 * mha_host_malloc, or NULL when caching is disabled. */
MHA_CL_HIDDEN char *mha_cl_cache_dir(mha_host *host,
                                     const mha_device_options *options);

/* Ops (ops.c). */
MHA_CL_HIDDEN bool mha_cl_supports(void *dev, const mha_node *node);
MHA_CL_HIDDEN mha_status mha_cl_run(void *dev, const mha_node *node);

/* Buffers (buffer.c). */
MHA_CL_HIDDEN mha_status mha_cl_buffer_alloc(void *dev, size_t size,
                                             void **buf);
MHA_CL_HIDDEN void mha_cl_buffer_free(void *dev, void *buf);
MHA_CL_HIDDEN mha_status mha_cl_buffer_write(void *dev, void *buf,
                                             size_t offset, const void *src,
                                             size_t size);
MHA_CL_HIDDEN mha_status mha_cl_buffer_read(void *dev, void *buf,
                                            size_t offset, void *dst,
                                            size_t size);
MHA_CL_HIDDEN mha_status mha_cl_sync(void *dev);

/* The timer methods of the backend interface (timer.c). */
MHA_CL_HIDDEN mha_status mha_cl_timer_mark(void *dev, int slot);
MHA_CL_HIDDEN mha_status mha_cl_timer_read(void *dev, int count,
                                           uint64_t *ns);
MHA_CL_HIDDEN void mha_cl_timer_fini(mha_cl_device *dev);

/* Kernel variants (tune.c): the backend's run and variants methods, and
 * the knobs' defaults, saved once the device is ready. */
MHA_CL_HIDDEN mha_status mha_cl_tune_run(void *dev, const mha_node *node);
MHA_CL_HIDDEN int mha_cl_variants(void *dev, mha_op op, const char **names,
                                  int cap);
MHA_CL_HIDDEN void mha_cl_tune_save(mha_cl_device *dev);

/* Queue ordering (queue.c, see mha_cl_order above). */
MHA_CL_HIDDEN mha_status mha_cl_order_begin(mha_cl_device *dev,
                                            mha_cl_order *o);
MHA_CL_HIDDEN void mha_cl_order_end(mha_cl_device *dev, mha_cl_order *o,
                                    cl_int err);

/* Device setup shared by open and adopt (device.c). */
MHA_CL_HIDDEN mha_status mha_cl_describe(mha_cl_state *st,
                                         cl_platform_id plat, cl_device_id d,
                                         mha_cl_devrec *rec,
                                         mha_device_desc *desc);
/* Chooses the kernel shapes from dev->rec, the cache directory, and builds
 * the ops program, once context and queue are set. */
MHA_CL_HIDDEN mha_status mha_cl_device_ready(mha_cl_device *dev,
                                             const mha_device_options *options);

/* Bounded string copy that always terminates dst. */
MHA_CL_HIDDEN void mha_cl_strlcpy(char *dst, const char *src, size_t cap);

#endif /* MHA_CL_INTERNAL_H */
