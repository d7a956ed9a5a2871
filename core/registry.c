/* registry.c: the compiled-in backends. Adding a backend is one folder under
 * backends/ and one line here (plus its CMake option). */
#include "backend.h"

extern const mha_backend_iface mha_cpu_backend;
#ifdef MHA_HAVE_VULKAN
extern const mha_backend_iface mha_vulkan_backend;
#endif
#ifdef MHA_HAVE_OPENCL
extern const mha_backend_iface mha_opencl_backend;
#endif

const mha_backend_iface *const mha_backend_registry[] = {
    &mha_cpu_backend,
#ifdef MHA_HAVE_VULKAN
    &mha_vulkan_backend,
#endif
#ifdef MHA_HAVE_OPENCL
    &mha_opencl_backend,
#endif
    NULL,
};
