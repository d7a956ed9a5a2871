/* loader.c: loads the Vulkan loader at run time through volk, creates one
 * VkInstance per context (with the Khronos validation layer and a debug
 * messenger when MHA_VULKAN_VALIDATION=1), and keeps the instance-level entry
 * points in a per-instance table.
 *
 * volk's process-wide state, and how it is handled: volk keeps the loader's
 * module handle and every entry point in global variables. We use only the
 * ones volkInitialize() sets: the loader module, vkGetInstanceProcAddr and
 * the global-level commands (vkCreateInstance, vkEnumerateInstance*). It
 * runs exactly once per process (pthread_once / InitOnceExecuteOnce) and its
 * result is remembered, so concurrent contexts never race on it. We never
 * call volkLoadInstance/volkLoadDevice (which would overwrite the globals
 * with one instance's or device's pointers): each instance gets its own
 * mha_vk_ifns from vkGetInstanceProcAddr, and each VkDevice its own
 * VolkDeviceTable through that instance's vkGetDeviceProcAddr
 * (volk_impl.c), so several contexts, instances and devices work side by
 * side, and an adopted device uses the application's entry points only. */
#include <stdio.h>
#include <string.h>

#if defined(_WIN32)
#include <windows.h>
#else
#include <pthread.h>
#endif

#include "vk_internal.h"

/* ---- once-only loading of the loader ---------------------------------- */

/* Written only inside the once-callback, read after it: the process-wide,
 * caller-independent result of loading libvulkan. */
static VkResult g_volk_result = VK_ERROR_INITIALIZATION_FAILED;

static void load_volk_once(void)
{
    g_volk_result = volkInitialize();
}

#if defined(_WIN32)
static INIT_ONCE g_volk_once = INIT_ONCE_STATIC_INIT;
static BOOL CALLBACK load_volk_once_win(PINIT_ONCE once, PVOID param,
                                        PVOID *ctx)
{
    (void)once;
    (void)param;
    (void)ctx;
    load_volk_once();
    return TRUE;
}
#else
static pthread_once_t g_volk_once = PTHREAD_ONCE_INIT;
#endif

mha_status mha_vk_load_runtime(mha_host *host)
{
#if defined(_WIN32)
    InitOnceExecuteOnce(&g_volk_once, load_volk_once_win, NULL, NULL);
#else
    pthread_once(&g_volk_once, load_volk_once);
#endif
    if (g_volk_result != VK_SUCCESS) {
        mha_host_log(host, MHA_LOG_INFO,
                     "vulkan: no Vulkan loader (libvulkan.so.1) found; the "
                     "backend lists no devices");
        return MHA_NOT_FOUND;
    }
    uint32_t version = volkGetInstanceVersion();
    if (version < VK_API_VERSION_1_1) {
        mha_host_log(host, MHA_LOG_INFO,
                     "vulkan: loader supports Vulkan %u.%u only; 1.1 is "
                     "needed, the backend lists no devices",
                     VK_API_VERSION_MAJOR(version),
                     VK_API_VERSION_MINOR(version));
        return MHA_NOT_FOUND;
    }
    return MHA_OK;
}

/* ---- validation messages --------------------------------------------- */

static VKAPI_ATTR VkBool32 VKAPI_CALL
on_debug_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                 VkDebugUtilsMessageTypeFlagsEXT type,
                 const VkDebugUtilsMessengerCallbackDataEXT *data, void *user)
{
    mha_vk_state *st = user;
    const char *msg = data && data->pMessage ? data->pMessage : "(no text)";
    bool error = severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    bool warning = severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT;
    bool validation = type & (VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                              VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT);
    /* Loader chatter (general warnings about other ICDs) is logged, not
     * recorded; validation warnings and any error fail the next call. */
    if (error || (warning && validation)) {
        if (st->vmsg[0] == '\0')
            snprintf(st->vmsg, sizeof st->vmsg, "%s", msg);
        mha_host_log(st->host, MHA_LOG_ERROR, "vulkan validation: %s", msg);
    } else {
        mha_host_log(st->host, MHA_LOG_DEBUG, "vulkan: %s", msg);
    }
    return VK_FALSE;
}

mha_status mha_vk_take_validation_error(mha_vk_state *st)
{
    if (!st || st->vmsg[0] == '\0')
        return MHA_OK;
    mha_status s = mha_host_error(st->host, MHA_DEVICE_ERROR,
                                  "vulkan validation layer reported: %s",
                                  st->vmsg);
    st->vmsg[0] = '\0';
    return s;
}

/* ---- instance ---------------------------------------------------------- */

static bool has_layer(const char *name)
{
    uint32_t n = 0;
    if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || !n)
        return false;
    VkLayerProperties props[64];
    if (n > 64)
        n = 64;
    VkResult r = vkEnumerateInstanceLayerProperties(&n, props);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return false;
    for (uint32_t i = 0; i < n; ++i)
        if (strcmp(props[i].layerName, name) == 0)
            return true;
    return false;
}

static bool wants_validation(mha_host *host)
{
    const char *v = mha_host_getenv(host, "MHA_VULKAN_VALIDATION");
    return v && v[0] && strcmp(v, "0") != 0;
}

#define LOAD_IFN(name)                                                       \
    (fn->name = (PFN_vk##name)gipa(instance, "vk" #name))

mha_status mha_vk_load_ifns(mha_host *host, mha_vk_ifns *fn,
                            VkInstance instance,
                            PFN_vkGetInstanceProcAddr gipa, bool debug)
{
    memset(fn, 0, sizeof *fn);
    LOAD_IFN(DestroyInstance);
    LOAD_IFN(EnumeratePhysicalDevices);
    LOAD_IFN(GetPhysicalDeviceProperties);
    LOAD_IFN(GetPhysicalDeviceProperties2);
    LOAD_IFN(GetPhysicalDeviceFeatures2);
    LOAD_IFN(GetPhysicalDeviceMemoryProperties);
    LOAD_IFN(GetPhysicalDeviceQueueFamilyProperties);
    LOAD_IFN(EnumerateDeviceExtensionProperties);
    LOAD_IFN(CreateDevice);
    LOAD_IFN(GetDeviceProcAddr);
    if (debug) {
        LOAD_IFN(CreateDebugUtilsMessengerEXT);
        LOAD_IFN(DestroyDebugUtilsMessengerEXT);
    }
    if (!fn->GetPhysicalDeviceProperties || !fn->GetPhysicalDeviceProperties2 ||
        !fn->GetPhysicalDeviceFeatures2 ||
        !fn->GetPhysicalDeviceMemoryProperties ||
        !fn->GetPhysicalDeviceQueueFamilyProperties ||
        !fn->EnumerateDeviceExtensionProperties || !fn->GetDeviceProcAddr)
        return mha_host_error(host, MHA_DEVICE_ERROR,
                              "vulkan: vkGetInstanceProcAddr gives no Vulkan "
                              "1.1 physical-device commands (is the instance "
                              "made with apiVersion 1.1 or later?)");
    return MHA_OK;
}

static mha_status load_instance_fns(mha_vk_state *st)
{
    mha_status s = mha_vk_load_ifns(st->host, &st->fn, st->instance,
                                    vkGetInstanceProcAddr, st->validation);
    if (s == MHA_OK && (!st->fn.DestroyInstance ||
                        !st->fn.EnumeratePhysicalDevices ||
                        !st->fn.CreateDevice))
        s = mha_host_error(st->host, MHA_DEVICE_ERROR,
                           "vulkan: the loader lacks Vulkan 1.1 instance "
                           "commands");
    return s;
}

static void fill_messenger_info(mha_vk_state *st,
                                VkDebugUtilsMessengerCreateInfoEXT *mi)
{
    memset(mi, 0, sizeof *mi);
    mi->sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT;
    mi->messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                          VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    mi->messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
    mi->pfnUserCallback = on_debug_message;
    mi->pUserData = st;
}

mha_status mha_vk_create_instance(mha_vk_state *st)
{
    static const char *const layer = "VK_LAYER_KHRONOS_validation";
    static const char *const exts[] = {
        VK_EXT_DEBUG_UTILS_EXTENSION_NAME,
        VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME,
    };
    st->validation = wants_validation(st->host);
    if (st->validation && !has_layer(layer))
        return mha_host_error(st->host, MHA_NOT_FOUND,
                              "vulkan: MHA_VULKAN_VALIDATION is set but the "
                              "%s layer is not installed",
                              layer);

    uint32_t version = volkGetInstanceVersion();
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "libmha",
        .pEngineName = "libmha",
        .apiVersion = version >= VK_API_VERSION_1_3 ? VK_API_VERSION_1_3
                                                    : version,
    };
    VkValidationFeatureEnableEXT enables[] = {
        VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
    VkDebugUtilsMessengerCreateInfoEXT mi;
    fill_messenger_info(st, &mi);
    VkValidationFeaturesEXT features = {
        .sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
        .pNext = &mi,
        .enabledValidationFeatureCount = 1,
        .pEnabledValidationFeatures = enables,
    };
    VkInstanceCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
        .pApplicationInfo = &app,
    };
    if (st->validation) {
        ci.pNext = &features;
        ci.enabledLayerCount = 1;
        ci.ppEnabledLayerNames = &layer;
        ci.enabledExtensionCount = 2;
        ci.ppEnabledExtensionNames = exts;
    }
    VkResult r = vkCreateInstance(&ci, NULL, &st->instance);
    if (r != VK_SUCCESS) {
        st->instance = VK_NULL_HANDLE;
        if (!st->validation) {
            mha_host_log(st->host, MHA_LOG_INFO,
                         "vulkan: vkCreateInstance failed: %s (%d); no "
                         "driver, the backend lists no devices",
                         mha_vk_result_name(r), (int)r);
            return MHA_NOT_FOUND;
        }
        return mha_vk_fail(st->host, NULL, r, "vkCreateInstance");
    }
    mha_status s = load_instance_fns(st);
    if (s == MHA_OK && st->validation) {
        if (!st->fn.CreateDebugUtilsMessengerEXT)
            s = mha_host_error(st->host, MHA_NOT_FOUND,
                               "vulkan: VK_EXT_debug_utils is missing");
        else if ((r = st->fn.CreateDebugUtilsMessengerEXT(
                      st->instance, &mi, NULL, &st->messenger)) != VK_SUCCESS)
            s = mha_vk_fail(st->host, NULL, r,
                            "vkCreateDebugUtilsMessengerEXT");
    }
    if (s != MHA_OK)
        mha_vk_destroy_instance(st);
    return s;
}

void mha_vk_destroy_instance(mha_vk_state *st)
{
    if (!st->instance)
        return;
    if (st->messenger && st->fn.DestroyDebugUtilsMessengerEXT)
        st->fn.DestroyDebugUtilsMessengerEXT(st->instance, st->messenger,
                                             NULL);
    st->messenger = VK_NULL_HANDLE;
    if (st->fn.DestroyInstance)
        st->fn.DestroyInstance(st->instance, NULL);
    st->instance = VK_NULL_HANDLE;
}
