/* device.c: the OpenCL backend's entry points for the core: probing every
 * platform and device (facts, kind, the limits kernels are specialised
 * from), opening a device (context, one in-order queue, the first program;
 * interop.c adopts the application's instead), and the mha_opencl_backend
 * interface table itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_internal.h"

/* ---- device queries ----------------------------------------------------- */

static void dev_str(const mha_cl_api *api, cl_device_id d, cl_device_info what,
                    char *out, size_t cap)
{
    out[0] = '\0';
    if (api->clGetDeviceInfo(d, what, cap, out, NULL) != CL_SUCCESS)
        out[0] = '\0';
    out[cap - 1] = '\0';
}

/* A fixed-size device property into out; 0 when the query fails. */
static void dev_info(const mha_cl_api *api, cl_device_id d,
                     cl_device_info what, void *out, size_t size)
{
    if (api->clGetDeviceInfo(d, what, size, out, NULL) != CL_SUCCESS)
        memset(out, 0, size);
}

static cl_ulong dev_ulong(const mha_cl_api *api, cl_device_id d,
                          cl_device_info what)
{
    cl_ulong v;
    dev_info(api, d, what, &v, sizeof v);
    return v;
}

static cl_uint dev_uint(const mha_cl_api *api, cl_device_id d,
                        cl_device_info what)
{
    cl_uint v;
    dev_info(api, d, what, &v, sizeof v);
    return v;
}

static size_t dev_size(const mha_cl_api *api, cl_device_id d,
                       cl_device_info what)
{
    size_t v;
    dev_info(api, d, what, &v, sizeof v);
    return v;
}

/* Whether the space-separated extension list names ext exactly. */
static int has_ext(const char *list, const char *ext)
{
    size_t n = strlen(ext);
    const char *p = list;
    while ((p = strstr(p, ext)) != NULL) {
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
        p += n;
    }
    return 0;
}

/* The extension string can be long (several KiB); read it into heap
 * memory of the context's allocator. */
static char *dev_extensions(mha_cl_state *st, cl_device_id d)
{
    size_t n = 0;
    if (st->api.clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) !=
            CL_SUCCESS || n == 0)
        n = 1;
    char *s = mha_host_malloc(st->host, n + 1);
    if (!s)
        return NULL;
    if (st->api.clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, s, NULL) !=
        CL_SUCCESS)
        n = 0;
    s[n] = '\0';
    return s;
}

/* Applies MHA_OPENCL_LIMITS ("local=16384,workgroup=128,fp16=0", any
 * subset): caps so PoCL can run the variants a mobile GPU would get. */
static void apply_limit_caps(mha_host *host, mha_cl_limits *lim)
{
    const char *env = mha_host_getenv(host, "MHA_OPENCL_LIMITS");
    while (env && *env) {
        char key[32];
        unsigned long long v = 0;
        int used = 0;
        if (sscanf(env, "%31[a-z0-9_]=%llu%n", key, &v, &used) != 2) {
            mha_host_log(host, MHA_LOG_WARN,
                         "opencl: MHA_OPENCL_LIMITS: cannot parse \"%s\"",
                         env);
            return;
        }
        if (strcmp(key, "local") == 0 && v < lim->local_mem)
            lim->local_mem = (size_t)v;
        else if (strcmp(key, "workgroup") == 0 && v < lim->max_workgroup)
            lim->max_workgroup = (size_t)v;
        else if (strcmp(key, "fp16") == 0 && v == 0)
            lim->fp16 = lim->fp16_storage = 0;
        lim->capped = 1;
        env += used;
        if (*env == ',')
            env++;
    }
}

static mha_device_kind kind_of(const mha_cl_api *api, cl_device_id d)
{
    cl_device_type type = 0;
    cl_bool unified = CL_FALSE;
    api->clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    if (type & CL_DEVICE_TYPE_GPU) {
        if (api->clGetDeviceInfo(d, CL_DEVICE_HOST_UNIFIED_MEMORY,
                                 sizeof unified, &unified,
                                 NULL) == CL_SUCCESS && unified)
            return MHA_DEVICE_INTEGRATED_GPU;
        return MHA_DEVICE_DISCRETE_GPU;
    }
    /* An OpenCL CPU device (PoCL, Intel's CPU runtime) is a software
     * implementation of a GPU API: it ranks below the native CPU backend. */
    if (type & CL_DEVICE_TYPE_CPU)
        return MHA_DEVICE_SOFTWARE;
    return MHA_DEVICE_OTHER;
}

static const char *kind_word(mha_device_kind k)
{
    switch (k) {
    case MHA_DEVICE_DISCRETE_GPU: return "discrete GPU";
    case MHA_DEVICE_INTEGRATED_GPU: return "integrated GPU";
    case MHA_DEVICE_SOFTWARE: return "CPU";
    default: return "accelerator";
    }
}

/* Parses "OpenCL 3.0 ..." or "OpenCL C 1.2 ..." after prefix; 1.0 when
 * the string does not follow the spec's format. */
static void parse_version(const char *s, const char *prefix, int *major,
                          int *minor)
{
    size_t n = strlen(prefix);
    if (strncmp(s, prefix, n) != 0 || sscanf(s + n, "%d.%d", major, minor) != 2)
        *major = 1, *minor = 0;
}

/* Memory, workgroup and fp16 facts, with the MHA_OPENCL_LIMITS caps. */
static void describe_limits(mha_cl_state *st, cl_device_id d, const char *ext,
                            mha_cl_devrec *rec, mha_device_desc *desc)
{
    const mha_cl_api *api = &st->api;
    desc->memory_bytes = dev_ulong(api, d, CL_DEVICE_GLOBAL_MEM_SIZE);
    rec->max_alloc = dev_ulong(api, d, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
    desc->max_buffer_bytes = rec->max_alloc;
    desc->compute_units = dev_uint(api, d, CL_DEVICE_MAX_COMPUTE_UNITS);
    rec->compute_units = (int)desc->compute_units;
    rec->limits.local_mem = (size_t)dev_ulong(api, d, CL_DEVICE_LOCAL_MEM_SIZE);
    rec->limits.max_workgroup = dev_size(api, d, CL_DEVICE_MAX_WORK_GROUP_SIZE);
    rec->limits.fp16 = has_ext(ext, "cl_khr_fp16");
    rec->limits.fp16_storage = 1; /* vload_half/vstore_half are core 1.2 */
    apply_limit_caps(st->host, &rec->limits);
    desc->max_workgroup_size = (uint32_t)rec->limits.max_workgroup;
    desc->shared_memory_bytes = (uint32_t)rec->limits.local_mem;
}

/* Feature bits; returns whether the device has subgroups (an extension,
 * or OpenCL 3.0's optional core feature, detected at run time). */
static int describe_features(const mha_cl_api *api, cl_device_id d,
                             const char *ext, const mha_cl_devrec *rec,
                             mha_device_desc *desc)
{
    int intel = has_ext(ext, "cl_intel_subgroups");
    int subgroups = intel || has_ext(ext, "cl_khr_subgroups");
    if (rec->version_major >= 3)
        subgroups |= dev_uint(api, d, MHA_CL_DEVICE_MAX_NUM_SUB_GROUPS) > 0;
    desc->features = MHA_FEATURE_FUSED_ATTENTION;
    if (rec->limits.fp16_storage)
        desc->features |= MHA_FEATURE_FP16_STORAGE;
    if (rec->limits.fp16)
        desc->features |= MHA_FEATURE_FP16_MATH;
    if (subgroups)
        desc->features |= MHA_FEATURE_SUBGROUPS;
    /* Vendor queries for the SIMD width, where the driver has one. */
    size_t sizes[8] = {0};
    if (intel && api->clGetDeviceInfo(d, CL_DEVICE_SUB_GROUP_SIZES_INTEL,
                                      sizeof sizes, sizes, NULL) == CL_SUCCESS)
        desc->subgroup_size = (uint32_t)sizes[0];
    else if (has_ext(ext, "cl_nv_device_attribute_query"))
        desc->subgroup_size = dev_uint(api, d, CL_DEVICE_WARP_SIZE_NV);
    else if (has_ext(ext, "cl_amd_device_attribute_query"))
        desc->subgroup_size =
            dev_uint(api, d, CL_DEVICE_WAVEFRONT_WIDTH_AMD);
    return subgroups;
}

/* Fills one device's record and description. MHA_OUT_OF_MEMORY only. */
mha_status mha_cl_describe(mha_cl_state *st, cl_platform_id plat,
                           cl_device_id d, mha_cl_devrec *rec,
                           mha_device_desc *desc)
{
    const mha_cl_api *api = &st->api;
    char version[128], cversion[128], pname[128], pversion[128];
    char *ext = dev_extensions(st, d);
    if (!ext)
        return MHA_OUT_OF_MEMORY;
    memset(rec, 0, sizeof *rec);
    memset(desc, 0, sizeof *desc);
    rec->platform = plat;
    rec->device = d;
    desc->kind = kind_of(api, d);
    rec->is_cpu = desc->kind == MHA_DEVICE_SOFTWARE;
    dev_str(api, d, CL_DEVICE_VENDOR, desc->vendor, sizeof desc->vendor);
    dev_str(api, d, CL_DEVICE_NAME, desc->name, sizeof desc->name);
    dev_str(api, d, CL_DRIVER_VERSION, desc->driver, sizeof desc->driver);
    dev_str(api, d, CL_DEVICE_VERSION, version, sizeof version);
    dev_str(api, d, CL_DEVICE_OPENCL_C_VERSION, cversion, sizeof cversion);
    pname[0] = pversion[0] = '\0';
    api->clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof pname, pname, NULL);
    api->clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof pversion,
                           pversion, NULL);
    pname[sizeof pname - 1] = pversion[sizeof pversion - 1] = '\0';
    parse_version(version, "OpenCL ", &rec->version_major,
                  &rec->version_minor);
    int cmaj, cmin;
    parse_version(cversion, "OpenCL C ", &cmaj, &cmin);
    rec->c_version = cmaj * 10 + cmin;
    rec->float_width =
        (int)dev_uint(api, d, CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT);
    describe_limits(st, d, ext, rec, desc);
    int subgroups = describe_features(api, d, ext, rec, desc);
    mha_host_free(st->host, ext);

    /* Cut the long strings so the facts after them still fit. */
    snprintf(desc->details, sizeof desc->details,
             "%s; OpenCL %d.%d; OpenCL C %d.%d; platform %.48s; local %zu B; "
             "fp16 %s; subgroups %s",
             kind_word(desc->kind), rec->version_major, rec->version_minor,
             cmaj, cmin, pname, rec->limits.local_mem,
             rec->limits.fp16 ? "math+storage"
             : rec->limits.fp16_storage ? "storage" : "no",
             subgroups ? "yes" : "no");
    mha_cl_strlcpy(rec->name, desc->name, sizeof rec->name);
    snprintf(rec->key, sizeof rec->key,
             "%.100s|%.100s|%.60s|%.100s|%.60s|%.60s", pname, pversion,
             desc->vendor, desc->name, version, desc->driver);
    return MHA_OK;
}

/* ---- init / fini -------------------------------------------------------- */

static void cl_fini(void *state)
{
    mha_cl_state *st = state;
    if (!st)
        return;
    mha_host_free(st->host, st->devs);
    mha_cl_unload(st);
    mha_host_free(st->host, st);
}

/* Lists the devices of one platform into st->devs (up to cap in all). */
static mha_status probe_platform(mha_cl_state *st, cl_platform_id plat,
                                 mha_device_desc *descs, int cap)
{
    cl_uint n = 0;
    cl_int err = st->api.clGetDeviceIDs(plat, CL_DEVICE_TYPE_ALL, 0, NULL, &n);
    if (err != CL_SUCCESS || n == 0) {
        mha_host_log(st->host, MHA_LOG_INFO,
                     "opencl: a platform has no devices (%s)",
                     mha_cl_error_name(err));
        return MHA_OK;
    }
    cl_device_id *ids = mha_host_calloc(st->host, n, sizeof *ids);
    if (!ids)
        return MHA_OUT_OF_MEMORY;
    err = st->api.clGetDeviceIDs(plat, CL_DEVICE_TYPE_ALL, n, ids, NULL);
    mha_status s = MHA_OK;
    for (cl_uint i = 0; err == CL_SUCCESS && i < n && st->count < cap; i++) {
        s = mha_cl_describe(st, plat, ids[i], &st->devs[st->count],
                            &descs[st->count]);
        if (s != MHA_OK)
            break;
        if (st->devs[st->count].c_version < 12) {
            /* The kernels are OpenCL C 1.2 (static functions, -cl-std). */
            mha_host_log(st->host, MHA_LOG_INFO,
                         "opencl: %s skipped: OpenCL C %d.%d, needs 1.2",
                         descs[st->count].name,
                         st->devs[st->count].c_version / 10,
                         st->devs[st->count].c_version % 10);
            continue;
        }
        mha_host_log(st->host, MHA_LOG_INFO, "opencl:%d %s (%s)", st->count,
                     descs[st->count].name, descs[st->count].details);
        st->count++;
    }
    mha_host_free(st->host, ids);
    return s;
}

/* Loads the runtime and lists the devices; cl_init holds the ICD lock. */
static mha_status probe_locked(mha_cl_state *st, mha_device_desc *descs,
                               int cap, int *count)
{
    mha_host *host = st->host;
    if (mha_cl_load(st) != MHA_OK)
        return MHA_OK; /* no runtime: no devices, reason logged */

    cl_uint np = 0;
    cl_int err = st->api.clGetPlatformIDs(0, NULL, &np);
    if (err != CL_SUCCESS || np == 0) {
        mha_host_log(host, MHA_LOG_INFO,
                     "opencl: no OpenCL platform (clGetPlatformIDs: %s); "
                     "no OpenCL devices", mha_cl_error_name(err));
        return MHA_OK;
    }
    cl_platform_id *plats = mha_host_calloc(host, np, sizeof *plats);
    st->devs = mha_host_calloc(host, cap > 0 ? (size_t)cap : 1,
                               sizeof *st->devs);
    if (!plats || !st->devs) {
        mha_host_free(host, plats);
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "opencl: out of memory in init");
    }
    err = st->api.clGetPlatformIDs(np, plats, NULL);
    mha_status s = MHA_OK;
    for (cl_uint p = 0; err == CL_SUCCESS && p < np && s == MHA_OK; p++)
        s = probe_platform(st, plats[p], descs, cap);
    mha_host_free(host, plats);
    if (s != MHA_OK)
        return mha_host_error(host, s, "opencl: out of memory in init");
    *count = st->count;
    return MHA_OK;
}

static mha_status cl_init(mha_host *host, void **state, mha_device_desc *descs,
                          int cap, int *count)
{
    *count = 0;
    mha_cl_state *st = mha_host_calloc(host, 1, sizeof *st);
    if (!st)
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "opencl: out of memory in init");
    st->host = host;
    *state = st;
    mha_cl_icd_lock();
    mha_status s = probe_locked(st, descs, cap, count);
    mha_cl_icd_unlock();
    return s;
}

/* ---- open / close ------------------------------------------------------- */

/* Largest power of two <= n (n >= 1), or 1. */
static int pow2_floor(size_t n)
{
    int p = 1;
    while ((size_t)p * 2 <= n && p < (1 << 20))
        p *= 2;
    return p;
}

/* Local memory of gemm.cl: two bk x (tile * wpt + 4) float slices. */
static size_t gemm_local_bytes(int tile, int wpt, int bk)
{
    return (size_t)(2 * bk * (tile * wpt + 4) * 4);
}

/* Workgroup edge (at most max) and slice depth (32, else 16 or 8) of the
 * gemm kernel: a tile x tile workgroup, each item wpt x wpt outputs. */
static void choose_tile(mha_cl_device *dev, int max)
{
    const mha_cl_limits *lim = &dev->rec->limits;
    int t = max, bk = 32;
    while (t > 1 && (size_t)(t * t) > lim->max_workgroup)
        t /= 2;
    while (bk > 8 && gemm_local_bytes(t, dev->wpt, bk) > lim->local_mem)
        bk /= 2;
    while (t > 1 && gemm_local_bytes(t, dev->wpt, bk) > lim->local_mem)
        t /= 2;
    dev->tile = t;
    dev->bk = bk;
}

/* Releases libmha's references only. An adopted queue is never waited on
 * (the caller may hold it behind a user event); OpenCL keeps the kernels
 * and memory that enqueued commands use alive until those finish. */
static void cl_close(void *d)
{
    mha_cl_device *dev = d;
    if (!dev)
        return;
    if (dev->queue && !dev->adopted)
        dev->api->clFinish(dev->queue);
    mha_cl_programs_release(dev);
    mha_cl_timer_fini(dev);
    mha_cl_buffer_free(dev, dev->scratch);
    if (dev->tail)
        dev->api->clReleaseEvent(dev->tail);
    if (dev->queue)
        dev->api->clReleaseCommandQueue(dev->queue);
    if (dev->context)
        dev->api->clReleaseContext(dev->context);
    if (dev->adopted)
        dev->api->clReleaseDevice(dev->rec->device);
    mha_host_free(dev->host, dev->cache_dir);
    mha_host_free(dev->host, dev);
}

static mha_status create_queue(mha_cl_device *dev)
{
    cl_int err = CL_SUCCESS;
    /* 2.0 deprecates clCreateCommandQueue; use its successor where the
     * device and the loader have it (detected at run time). Profiling on:
     * it timestamps each command, which costs little next to a kernel, and
     * profiles read the times (timer.c). */
    const cl_ulong props[] = {CL_QUEUE_PROPERTIES, CL_QUEUE_PROFILING_ENABLE,
                              0};
    if (dev->rec->version_major >= 2 &&
        dev->api->clCreateCommandQueueWithProperties)
        dev->queue = dev->api->clCreateCommandQueueWithProperties(
            dev->context, dev->rec->device, props, &err);
    else
        dev->queue = dev->api->clCreateCommandQueue(
            dev->context, dev->rec->device, CL_QUEUE_PROFILING_ENABLE, &err);
    if (!dev->queue)
        return mha_cl_fail(dev->host, "clCreateCommandQueue", err);
    return MHA_OK;
}

/* The vector width of a CPU runtime's kernels (gemm's WPT, attention's
 * CW): its native float width as one of the kernels' 4, 8, 16 (16 when
 * unreported): 16 with AVX-512, 8 with AVX2, where a float16 is two
 * registers and PoCL's compiler warns on every build that passing one
 * without AVX-512 changes the ABI. */
static int cpu_columns(int float_width)
{
    if (float_width <= 0 || float_width >= 16)
        return 16;
    return float_width >= 8 ? 8 : 4;
}

mha_status mha_cl_device_ready(mha_cl_device *dev,
                               const mha_device_options *options)
{
    /* A CPU runtime (PoCL) runs a workgroup as loops between barriers:
     * small groups with more work per item cost less there (measured on
     * PoCL, AVX-512: softmax 4x, scores 3x; gemm 4 x 4 groups of 16 x 16
     * outputs 1.3x faster than 8 x 8 of 8 x 8; items of a register's width
     * square, cpu_columns). GPUs get 16 x 16 groups of 8 x 8
     * outputs, and 256-wide rows; so does a CPU under MHA_OPENCL_LIMITS,
     * which emulates a (mobile) GPU's limits. */
    const int cpu = dev->rec->is_cpu && !dev->rec->limits.capped;
    const int width = cpu_columns(dev->rec->float_width);
    dev->wpt = cpu ? width : 8;
    dev->vw = 4;
    choose_tile(dev, cpu ? 4 : 16);
    dev->row_wg = pow2_floor(dev->rec->limits.max_workgroup);
    if (dev->row_wg > (cpu ? 64 : 256))
        dev->row_wg = cpu ? 64 : 256;
    /* Attention: a CPU gets a register of columns an item and small
     * groups; a GPU float4s (128-bit loads), 256 items a group. */
    dev->attn_cw = cpu ? width : 4;
    dev->attn_wg = cpu ? 64 : 256;
    dev->cache_dir = mha_cl_cache_dir(dev->host, options);
    if (dev->cache_dir && !mha_cache_dir_ready(dev->host, dev->cache_dir)) {
        mha_host_free(dev->host, dev->cache_dir);
        dev->cache_dir = NULL;
    }
    /* Build the common program now, so a device whose compiler fails is
     * refused at open with the build log, not midway through a forward. */
    mha_cl_program *prog = NULL;
    mha_status s = mha_cl_program_get(dev, MHA_CL_PROG_OPS, 0, &prog);
    if (s != MHA_OK)
        return s;
    mha_cl_tune_save(dev);
    mha_host_log(dev->host, MHA_LOG_INFO,
                 "opencl: %s %s (gemm tile %d, wpt %d, bk %d, row workgroup %d, "
                 "cache %s)",
                 dev->adopted ? "adopted" : "opened", dev->rec->name,
                 dev->tile, dev->wpt, dev->bk, dev->row_wg,
                 dev->cache_dir ? dev->cache_dir : "off");
    return MHA_OK;
}

static mha_status cl_open(void *state, int index,
                          const mha_device_options *options, void **out)
{
    mha_cl_state *st = state;
    *out = NULL;
    if (!st)
        return MHA_NO_DEVICE;
    if (index < 0 || index >= st->count)
        return mha_host_error(st->host, MHA_NO_DEVICE,
                              "opencl: no device %d", index);
    mha_cl_device *dev = mha_host_calloc(st->host, 1, sizeof *dev);
    if (!dev)
        return mha_host_error(st->host, MHA_OUT_OF_MEMORY,
                              "opencl: out of memory opening a device");
    dev->st = st;
    dev->host = st->host;
    dev->api = &st->api;
    dev->rec = &st->devs[index];
    cl_context_properties props[] = {
        CL_CONTEXT_PLATFORM, (cl_context_properties)dev->rec->platform, 0};
    cl_int err = CL_SUCCESS;
    dev->context = st->api.clCreateContext(props, 1, &dev->rec->device, NULL,
                                           NULL, &err);
    mha_status s = dev->context ? MHA_OK
                                : mha_cl_fail(st->host, "clCreateContext", err);
    if (s == MHA_OK)
        s = create_queue(dev);
    if (s == MHA_OK)
        s = mha_cl_device_ready(dev, options);
    if (s != MHA_OK) {
        cl_close(dev);
        return s;
    }
    *out = dev;
    return MHA_OK;
}

/* ---- the interface ------------------------------------------------------ */

const mha_backend_iface mha_opencl_backend = {
    .version = MHA_BACKEND_IFACE_VERSION,
    .name = "opencl",
    .init = cl_init,
    .fini = cl_fini,
    .open = cl_open,
    .close = cl_close,
    .buffer_alloc = mha_cl_buffer_alloc,
    .buffer_free = mha_cl_buffer_free,
    .buffer_write = mha_cl_buffer_write,
    .buffer_read = mha_cl_buffer_read,
    .supports = mha_cl_supports,
    .run = mha_cl_tune_run,
    .sync = mha_cl_sync,
    .timer_mark = mha_cl_timer_mark,
    .timer_read = mha_cl_timer_read,
    .variants = mha_cl_variants,
};
