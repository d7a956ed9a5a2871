/* loader.c: loads the OpenCL ICD loader at run time (no link-time
 * dependency on libOpenCL, so one build runs on machines without OpenCL),
 * resolves the entry points into the context's table, serialises what the
 * ICD stack cannot run concurrently, and turns cl_int error codes into
 * named mha_status errors. */
#include <string.h>

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#include <pthread.h>
#endif

#include "cl_internal.h"

/* Names of the ICD loader, tried in order. */
static const char *const loader_names[] = {
#if defined(_WIN32)
    "OpenCL.dll",
#elif defined(__APPLE__)
    "/System/Library/Frameworks/OpenCL.framework/OpenCL",
    "libOpenCL.dylib",
#else
    "libOpenCL.so.1",
    "libOpenCL.so",
#endif
};

static void *lib_open(const char *name)
{
#if defined(_WIN32)
    return (void *)LoadLibraryA(name);
#else
    return dlopen(name, RTLD_NOW | RTLD_LOCAL);
#endif
}

/* dlsym returns void *; an object pointer cannot be assigned to a function
 * pointer in ISO C, so copy the bits (what POSIX guarantees works). */
static void lib_sym(void *lib, const char *name, void *fnptr_out)
{
#if defined(_WIN32)
    FARPROC p = GetProcAddress((HMODULE)lib, name);
#else
    void *p = dlsym(lib, name);
#endif
    memcpy(fnptr_out, &p, sizeof p);
}

mha_status mha_cl_load(mha_cl_state *st)
{
    const char *tried = "";
    size_t i;
    for (i = 0; i < sizeof loader_names / sizeof loader_names[0]; i++) {
        st->lib = lib_open(loader_names[i]);
        tried = loader_names[i];
        if (st->lib)
            break;
    }
    if (!st->lib) {
        mha_host_log(st->host, MHA_LOG_INFO,
                     "opencl: no OpenCL ICD loader (%s not found); "
                     "no OpenCL devices", tried);
        return MHA_NOT_FOUND;
    }
#define MHA_CL_RESOLVE_(name)                                              \
    lib_sym(st->lib, #name, &st->api.name);                                \
    if (!st->api.name) {                                                   \
        mha_host_log(st->host, MHA_LOG_WARN,                               \
                     "opencl: %s lacks %s; no OpenCL devices", tried,      \
                     #name);                                               \
        mha_cl_unload(st);                                                 \
        return MHA_NOT_FOUND;                                              \
    }
    MHA_CL_API_LIST(MHA_CL_RESOLVE_)
#undef MHA_CL_RESOLVE_
    lib_sym(st->lib, "clCreateCommandQueueWithProperties",
            &st->api.clCreateCommandQueueWithProperties);
    return MHA_OK;
}

/* The ICD loader stays loaded: ocl-icd and the drivers it loads keep
 * process-wide state (vendor lists, LLVM) they never free, and unloading
 * them under a live driver is not safe on every platform. A second context
 * reuses the same mapping, so nothing grows; leak checkers then see that
 * memory as still reachable rather than lost in an unloaded module. */
void mha_cl_unload(mha_cl_state *st)
{
    st->lib = NULL;
    memset(&st->api, 0, sizeof st->api);
}

/* ---- the process-wide ICD lock --------------------------------------------
 * Probing is not safe from two threads at once: four contexts created on
 * four threads crashed inside PoCL's clGetDeviceInfo (as did four threads
 * doing nothing but dlopen, clGetPlatformIDs and clGetDeviceInfo), since
 * the ICD loader and the driver set up process-wide state on first use.
 * So every probe of platforms and devices holds this one lock: the global
 * state DESIGN.md allows for a driver that is not thread-safe. It is
 * statically initialised (no once-call needed) and never destroyed. What
 * follows a probe (contexts, queues, programs, buffers) belongs to one
 * mha_device and runs unlocked, as the OpenCL spec allows. */
#if defined(_WIN32)
static SRWLOCK g_icd_lock = SRWLOCK_INIT;
void mha_cl_icd_lock(void) { AcquireSRWLockExclusive(&g_icd_lock); }
void mha_cl_icd_unlock(void) { ReleaseSRWLockExclusive(&g_icd_lock); }
#else
static pthread_mutex_t g_icd_lock = PTHREAD_MUTEX_INITIALIZER;
void mha_cl_icd_lock(void) { pthread_mutex_lock(&g_icd_lock); }
void mha_cl_icd_unlock(void) { pthread_mutex_unlock(&g_icd_lock); }
#endif

/* ---- error names -------------------------------------------------------- */

#define MHA_CL_ERROR_LIST(X)                                                 \
    X(CL_SUCCESS) X(CL_DEVICE_NOT_FOUND) X(CL_DEVICE_NOT_AVAILABLE)          \
    X(CL_COMPILER_NOT_AVAILABLE) X(CL_MEM_OBJECT_ALLOCATION_FAILURE)         \
    X(CL_OUT_OF_RESOURCES) X(CL_OUT_OF_HOST_MEMORY)                          \
    X(CL_PROFILING_INFO_NOT_AVAILABLE) X(CL_MEM_COPY_OVERLAP)                \
    X(CL_IMAGE_FORMAT_MISMATCH) X(CL_IMAGE_FORMAT_NOT_SUPPORTED)             \
    X(CL_BUILD_PROGRAM_FAILURE) X(CL_MAP_FAILURE)                            \
    X(CL_MISALIGNED_SUB_BUFFER_OFFSET)                                       \
    X(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)                          \
    X(CL_COMPILE_PROGRAM_FAILURE) X(CL_LINKER_NOT_AVAILABLE)                 \
    X(CL_LINK_PROGRAM_FAILURE) X(CL_DEVICE_PARTITION_FAILED)                 \
    X(CL_KERNEL_ARG_INFO_NOT_AVAILABLE) X(CL_INVALID_VALUE)                  \
    X(CL_INVALID_DEVICE_TYPE) X(CL_INVALID_PLATFORM) X(CL_INVALID_DEVICE)    \
    X(CL_INVALID_CONTEXT) X(CL_INVALID_QUEUE_PROPERTIES)                     \
    X(CL_INVALID_COMMAND_QUEUE) X(CL_INVALID_HOST_PTR)                       \
    X(CL_INVALID_MEM_OBJECT) X(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)           \
    X(CL_INVALID_IMAGE_SIZE) X(CL_INVALID_SAMPLER) X(CL_INVALID_BINARY)      \
    X(CL_INVALID_BUILD_OPTIONS) X(CL_INVALID_PROGRAM)                        \
    X(CL_INVALID_PROGRAM_EXECUTABLE) X(CL_INVALID_KERNEL_NAME)               \
    X(CL_INVALID_KERNEL_DEFINITION) X(CL_INVALID_KERNEL)                     \
    X(CL_INVALID_ARG_INDEX) X(CL_INVALID_ARG_VALUE) X(CL_INVALID_ARG_SIZE)   \
    X(CL_INVALID_KERNEL_ARGS) X(CL_INVALID_WORK_DIMENSION)                   \
    X(CL_INVALID_WORK_GROUP_SIZE) X(CL_INVALID_WORK_ITEM_SIZE)               \
    X(CL_INVALID_GLOBAL_OFFSET) X(CL_INVALID_EVENT_WAIT_LIST)                \
    X(CL_INVALID_EVENT) X(CL_INVALID_OPERATION) X(CL_INVALID_GL_OBJECT)      \
    X(CL_INVALID_BUFFER_SIZE) X(CL_INVALID_MIP_LEVEL)                        \
    X(CL_INVALID_GLOBAL_WORK_SIZE) X(CL_INVALID_PROPERTY)                    \
    X(CL_INVALID_IMAGE_DESCRIPTOR) X(CL_INVALID_COMPILER_OPTIONS)            \
    X(CL_INVALID_LINKER_OPTIONS) X(CL_INVALID_DEVICE_PARTITION_COUNT)        \
    X(CL_PLATFORM_NOT_FOUND_KHR)

const char *mha_cl_error_name(cl_int code)
{
    switch (code) {
#define MHA_CL_ERROR_CASE_(name) \
    case name:                   \
        return #name;
        MHA_CL_ERROR_LIST(MHA_CL_ERROR_CASE_)
#undef MHA_CL_ERROR_CASE_
    case -69: /* 2.0 */
        return "CL_INVALID_PIPE_SIZE";
    case -70:
        return "CL_INVALID_DEVICE_QUEUE";
    default:
        return "CL_UNKNOWN_ERROR";
    }
}

static mha_status status_of(cl_int code)
{
    switch (code) {
    case CL_OUT_OF_HOST_MEMORY:
    case CL_MEM_OBJECT_ALLOCATION_FAILURE:
        return MHA_OUT_OF_MEMORY;
    case CL_DEVICE_NOT_FOUND:
    case CL_DEVICE_NOT_AVAILABLE:
        return MHA_NO_DEVICE;
    case CL_COMPILER_NOT_AVAILABLE:
        return MHA_UNSUPPORTED;
    default:
        return MHA_DEVICE_ERROR;
    }
}

mha_status mha_cl_fail(mha_host *host, const char *call, cl_int code)
{
    return mha_host_error(host, status_of(code), "%s failed: %s (%d)", call,
                          mha_cl_error_name(code), (int)code);
}

void mha_cl_strlcpy(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (cap == 0)
        return;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}
