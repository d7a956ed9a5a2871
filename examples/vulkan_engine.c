/* vulkan_engine.c: libmha inside an engine's own Vulkan device, as a game or
 * graphics engine runs it (include/mha_vulkan.h). A headless "engine" makes
 * its instance, device, queue and buffers and uploads a batch of token
 * embeddings; then it records FRAMES frames, one command buffer each: a
 * compute pass of its own writes the input (the embeddings, scaled per
 * frame), LAYERS libmha attention layers run on its buffers, and another
 * pass of its own reads the output into a host-visible buffer, with the
 * barriers mha_vulkan.h asks for. It links libvulkan directly and libmha
 * statically, side by side, and checks every frame against
 * mha_layer_forward_host. Exit status 0 when they agree to 1e-4, 77 when
 * there is no Vulkan device. With MHA_VULKAN_VALIDATION=1 it runs under the
 * Khronos validation layer with synchronization validation and fails on
 * any message.
 *
 * tests/test_vulkan_interop.c compiles this file without main()
 * (MHA_ENGINE_NO_MAIN) and drives the same engine under validation. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vulkan/vulkan.h>

#include "mha.h"
#include "mha_vulkan.h"

#ifndef MHA_ENGINE_SHADER
#define MHA_ENGINE_SHADER "affine.spv" /* the build passes its path */
#endif

enum { TOKENS = 24, BATCH = 2, EMBED = 64, HEADS = 8, LAYERS = 3, FRAMES = 4 };
#define ACT_COUNT ((uint32_t)(TOKENS * BATCH * EMBED))
#define ACT_BYTES ((VkDeviceSize)ACT_COUNT * 4)
#define OUT_SCALE 0.5f
#define API_VERSION VK_API_VERSION_1_1
#define NO_DEVICE 77

/* ---- the engine: what any Vulkan application already has ------------- */

typedef struct engine {
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    int messages; /* validation warnings and errors so far */
    VkPhysicalDevice gpu;
    VkDevice device;
    uint32_t family;
    VkQueue queue;
    VkPhysicalDevice16BitStorageFeatures storage16; /* what it enabled */
    VkCommandPool pool;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout layout;
    VkPipeline affine;
    VkDescriptorPool sets;
    VkFence fence;
} engine;

typedef struct engine_buffer {
    VkBuffer buffer;
    VkDeviceMemory memory;
    float *map;
} engine_buffer;

#define BUFFER_USAGE                                                         \
    (VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | \
     VK_BUFFER_USAGE_TRANSFER_DST_BIT)

static bool vk_ok(VkResult r, const char *what)
{
    if (r != VK_SUCCESS)
        fprintf(stderr, "%s failed: VkResult %d\n", what, (int)r);
    return r == VK_SUCCESS;
}

static VKAPI_ATTR VkBool32 VKAPI_CALL
on_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
           VkDebugUtilsMessageTypeFlagsEXT types,
           const VkDebugUtilsMessengerCallbackDataEXT *data, void *user)
{
    engine *e = user;
    /* general warnings are the loader's notes about other drivers */
    if ((severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) ||
        (types & ~(VkDebugUtilsMessageTypeFlagsEXT)
                     VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT)) {
        e->messages++;
        fprintf(stderr, "validation: %s\n", data->pMessage);
    }
    return VK_FALSE;
}

static bool create_instance(engine *e, bool validation)
{
    static const char *const layer = "VK_LAYER_KHRONOS_validation";
    static const char *const exts[] = {
        VK_EXT_DEBUG_UTILS_EXTENSION_NAME,
        VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME};
    VkValidationFeatureEnableEXT sync =
        VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT;
    VkDebugUtilsMessengerCreateInfoEXT mi = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        .pfnUserCallback = on_message,
        .pUserData = e};
    VkValidationFeaturesEXT features = {
        .sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
        .pNext = &mi,
        .enabledValidationFeatureCount = 1,
        .pEnabledValidationFeatures = &sync};
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "libmha vulkan_engine",
                             .apiVersion = API_VERSION};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                               .pApplicationInfo = &app};
    if (validation) {
        ci.pNext = &features;
        ci.enabledLayerCount = 1;
        ci.ppEnabledLayerNames = &layer;
        ci.enabledExtensionCount = 2;
        ci.ppEnabledExtensionNames = exts;
    }
    if (!vk_ok(vkCreateInstance(&ci, NULL, &e->instance), "vkCreateInstance"))
        return false;
    if (!validation)
        return true;
    PFN_vkCreateDebugUtilsMessengerEXT create =
        (PFN_vkCreateDebugUtilsMessengerEXT)vkGetInstanceProcAddr(
            e->instance, "vkCreateDebugUtilsMessengerEXT");
    return create && vk_ok(create(e->instance, &mi, NULL, &e->messenger),
                           "vkCreateDebugUtilsMessengerEXT");
}

/* The first device with a compute queue family and Vulkan 1.1. */
static bool pick_gpu(engine *e)
{
    VkPhysicalDevice gpus[8];
    uint32_t n = 8;
    VkResult r = vkEnumeratePhysicalDevices(e->instance, &n, gpus);
    for (uint32_t i = 0; (r == VK_SUCCESS || r == VK_INCOMPLETE) && i < n;
         ++i) {
        VkPhysicalDeviceProperties props;
        vkGetPhysicalDeviceProperties(gpus[i], &props);
        VkQueueFamilyProperties q[16];
        uint32_t nq = 16;
        vkGetPhysicalDeviceQueueFamilyProperties(gpus[i], &nq, q);
        for (uint32_t f = 0; f < nq && props.apiVersion >= API_VERSION; ++f)
            if (q[f].queueFlags & VK_QUEUE_COMPUTE_BIT) {
                e->gpu = gpus[i];
                e->family = f;
                return true;
            }
    }
    return false;
}

/* The device, with 16-bit storage only when fp16 is asked for (libmha
 * uses what is enabled, never more). */
static bool create_device(engine *e, bool fp16)
{
    VkPhysicalDevice16BitStorageFeatures have = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    VkPhysicalDeviceFeatures2 f2 = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &have};
    vkGetPhysicalDeviceFeatures2(e->gpu, &f2);
    e->storage16 = (VkPhysicalDevice16BitStorageFeatures){
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
        .storageBuffer16BitAccess = fp16 && have.storageBuffer16BitAccess};
    float priority = 1.0f;
    VkDeviceQueueCreateInfo qi = {
        .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
        .queueFamilyIndex = e->family,
        .queueCount = 1,
        .pQueuePriorities = &priority};
    VkDeviceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                             .pNext = &e->storage16,
                             .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi};
    if (!vk_ok(vkCreateDevice(e->gpu, &ci, NULL, &e->device),
               "vkCreateDevice"))
        return false;
    vkGetDeviceQueue(e->device, e->family, 0, &e->queue);
    VkCommandPoolCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
        .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
        .queueFamilyIndex = e->family};
    VkFenceCreateInfo fi = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    return vk_ok(vkCreateCommandPool(e->device, &pi, NULL, &e->pool),
                 "vkCreateCommandPool") &&
           vk_ok(vkCreateFence(e->device, &fi, NULL, &e->fence),
                 "vkCreateFence");
}

static bool create_module(engine *e, const char *path, VkShaderModule *out)
{
    FILE *f = fopen(path, "rb");
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    uint32_t *code = size > 0 ? malloc((size_t)size) : NULL;
    bool ok = code && fseek(f, 0, SEEK_SET) == 0 &&
              fread(code, 1, (size_t)size, f) == (size_t)size;
    if (f)
        fclose(f);
    if (!ok)
        fprintf(stderr, "cannot read SPIR-V from %s\n", path);
    VkShaderModuleCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = (size_t)size,
        .pCode = code};
    ok = ok && vk_ok(vkCreateShaderModule(e->device, &ci, NULL, out),
                     "vkCreateShaderModule");
    free(code);
    return ok;
}

/* The engine's one pipeline (examples/shaders/affine.comp) and a pool for
 * its descriptor sets. */
static bool create_affine(engine *e, const char *shader)
{
    VkDescriptorSetLayoutBinding b[2];
    for (uint32_t i = 0; i < 2; ++i)
        b[i] = (VkDescriptorSetLayoutBinding){
            i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1,
            VK_SHADER_STAGE_COMPUTE_BIT, NULL};
    VkDescriptorSetLayoutCreateInfo li = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = 2,
        .pBindings = b};
    VkPushConstantRange push = {VK_SHADER_STAGE_COMPUTE_BIT, 0, 20};
    VkPipelineLayoutCreateInfo pli = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &e->set_layout,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &push};
    VkDescriptorPoolSize ps = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 16};
    VkDescriptorPoolCreateInfo dpi = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .maxSets = 8,
        .poolSizeCount = 1,
        .pPoolSizes = &ps};
    VkShaderModule module = VK_NULL_HANDLE;
    bool ok = vk_ok(vkCreateDescriptorSetLayout(e->device, &li, NULL,
                                                &e->set_layout),
                    "vkCreateDescriptorSetLayout") &&
              vk_ok(vkCreatePipelineLayout(e->device, &pli, NULL, &e->layout),
                    "vkCreatePipelineLayout") &&
              vk_ok(vkCreateDescriptorPool(e->device, &dpi, NULL, &e->sets),
                    "vkCreateDescriptorPool") &&
              create_module(e, shader, &module);
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                  .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = module,
                  .pName = "main"},
        .layout = e->layout};
    ok = ok && vk_ok(vkCreateComputePipelines(e->device, VK_NULL_HANDLE, 1,
                                              &ci, NULL, &e->affine),
                     "vkCreateComputePipelines");
    if (module)
        vkDestroyShaderModule(e->device, module, NULL);
    return ok;
}

/* false when a step fails; engine_destroy cleans up either way. */
static bool engine_create(engine *e, bool validation, bool fp16)
{
    memset(e, 0, sizeof *e);
    return create_instance(e, validation) && pick_gpu(e) &&
           create_device(e, fp16) && create_affine(e, MHA_ENGINE_SHADER);
}

static void engine_destroy(engine *e)
{
    if (e->device) {
        vkDeviceWaitIdle(e->device);
        vkDestroyPipeline(e->device, e->affine, NULL);
        vkDestroyDescriptorPool(e->device, e->sets, NULL);
        vkDestroyPipelineLayout(e->device, e->layout, NULL);
        vkDestroyDescriptorSetLayout(e->device, e->set_layout, NULL);
        vkDestroyFence(e->device, e->fence, NULL);
        vkDestroyCommandPool(e->device, e->pool, NULL);
        vkDestroyDevice(e->device, NULL);
    }
    if (e->messenger) {
        PFN_vkDestroyDebugUtilsMessengerEXT destroy =
            (PFN_vkDestroyDebugUtilsMessengerEXT)vkGetInstanceProcAddr(
                e->instance, "vkDestroyDebugUtilsMessengerEXT");
        destroy(e->instance, e->messenger, NULL);
    }
    if (e->instance)
        vkDestroyInstance(e->instance, NULL);
}

/* What the engine tells libmha about its device (queue: whether libmha may
 * submit and wait on it in its own calls). */
static mha_vulkan_device_info engine_share(const engine *e, bool queue)
{
    mha_vulkan_device_info info;
    mha_vulkan_device_info_init(&info);
    info.instance = e->instance;
    info.physical_device = e->gpu;
    info.device = e->device;
    info.queue_family_index = e->family;
    info.queue = queue ? e->queue : VK_NULL_HANDLE;
    info.get_instance_proc_addr = vkGetInstanceProcAddr;
    info.get_device_proc_addr = vkGetDeviceProcAddr;
    info.api_version = API_VERSION;
    info.enabled_features = &e->storage16;
    return info;
}

/* A host-visible, mapped storage buffer (a real engine would use
 * device-local memory and staging; libmha takes either). */
static bool engine_buffer_create(engine *e, VkDeviceSize size,
                                 engine_buffer *b)
{
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                             .size = size,
                             .usage = BUFFER_USAGE,
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if (!vk_ok(vkCreateBuffer(e->device, &bi, NULL, &b->buffer),
               "vkCreateBuffer"))
        return false;
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(e->device, b->buffer, &req);
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(e->gpu, &mp);
    const VkMemoryPropertyFlags want = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                       VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    uint32_t type = 0;
    while (type < mp.memoryTypeCount &&
           (!(req.memoryTypeBits & (1u << type)) ||
            (mp.memoryTypes[type].propertyFlags & want) != want))
        type++;
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                               .allocationSize = req.size,
                               .memoryTypeIndex = type};
    return type < mp.memoryTypeCount &&
           vk_ok(vkAllocateMemory(e->device, &ai, NULL, &b->memory),
                 "vkAllocateMemory") &&
           vk_ok(vkBindBufferMemory(e->device, b->buffer, b->memory, 0),
                 "vkBindBufferMemory") &&
           vk_ok(vkMapMemory(e->device, b->memory, 0, VK_WHOLE_SIZE, 0,
                             (void **)&b->map),
                 "vkMapMemory");
}

static void engine_buffer_destroy(engine *e, engine_buffer *b)
{
    vkDestroyBuffer(e->device, b->buffer, NULL);
    vkFreeMemory(e->device, b->memory, NULL);
}

/* A descriptor set of the engine's pass reading src and writing dst. */
static VkDescriptorSet engine_bind(engine *e, const engine_buffer *src,
                                   const engine_buffer *dst)
{
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = e->sets,
        .descriptorSetCount = 1,
        .pSetLayouts = &e->set_layout};
    VkDescriptorSet set = VK_NULL_HANDLE;
    if (!vk_ok(vkAllocateDescriptorSets(e->device, &ai, &set),
               "vkAllocateDescriptorSets"))
        return VK_NULL_HANDLE;
    VkDescriptorBufferInfo info[2] = {{src->buffer, 0, VK_WHOLE_SIZE},
                                      {dst->buffer, 0, VK_WHOLE_SIZE}};
    VkWriteDescriptorSet w[2];
    for (uint32_t i = 0; i < 2; ++i)
        w[i] = (VkWriteDescriptorSet){
            .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
            .dstSet = set,
            .dstBinding = i,
            .descriptorCount = 1,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .pBufferInfo = &info[i]};
    vkUpdateDescriptorSets(e->device, 2, w, 0, NULL);
    return set;
}

/* The engine's pass: dst[dst_off + i] = src[src_off + i] * scale + shift,
 * offsets in floats. */
static void engine_affine(engine *e, VkCommandBuffer cmd, VkDescriptorSet set,
                          uint32_t src_off, uint32_t dst_off, float scale,
                          float shift)
{
    struct { uint32_t n, src_off, dst_off; float scale, shift; } p = {
        ACT_COUNT, src_off, dst_off, scale, shift};
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, e->affine);
    vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, e->layout, 0,
                            1, &set, 0, NULL);
    vkCmdPushConstants(cmd, e->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                       sizeof p, &p);
    vkCmdDispatch(cmd, (ACT_COUNT + 63) / 64, 1, 1);
}

static void engine_barrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage,
                           VkAccessFlags src, VkPipelineStageFlags dst_stage,
                           VkAccessFlags dst)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = src,
                          .dstAccessMask = dst};
    vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, &mb, 0, NULL, 0,
                         NULL);
}

/* Submits n command buffers in order and waits for them. */
static bool engine_submit(engine *e, const VkCommandBuffer *cmd, uint32_t n)
{
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                       .commandBufferCount = n,
                       .pCommandBuffers = cmd};
    return vk_ok(vkQueueSubmit(e->queue, 1, &si, e->fence), "vkQueueSubmit") &&
           vk_ok(vkWaitForFences(e->device, 1, &e->fence, VK_TRUE, UINT64_MAX),
                 "vkWaitForFences") &&
           vk_ok(vkResetFences(e->device, 1, &e->fence), "vkResetFences");
}

/* ---- the scene: libmha's layers on the engine's buffers ---------------- */

typedef struct scene {
    mha_context *ctx;
    mha_device *device; /* the engine's device, adopted */
    mha_layer *layers[LAYERS];
    mha_tensor *act[LAYERS + 1]; /* act[0] the input, act[l + 1] the
                                    output of layer l: all in acts */
    engine_buffer emb, acts, readback; /* readback: FRAMES outputs */
    VkDescriptorSet to_input, to_readback;
    VkCommandBuffer cmd[FRAMES];
} scene;

/* Where act[i] starts in acts: 4-byte aligned on purpose, not 16 or 256,
 * so libmha binds from an offset rounded down to
 * minStorageBufferOffsetAlignment. In floats. */
static uint32_t act_offset(int i)
{
    return 1 + (uint32_t)i * (ACT_COUNT + 1);
}

static float frame_scale(int f) { return 1.0f + 0.25f * (float)f; }
static float frame_shift(int f) { return 0.1f * (float)f; }

static void fill(float *x, size_t n, unsigned seed, float scale)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = scale * ((float)(seed >> 8) / 8388608.0f - 1.0f);
    }
}

static bool mha_ok(mha_context *ctx, mha_status st, const char *what)
{
    if (st != MHA_OK)
        fprintf(stderr, "%s failed: %s: %s\n", what, mha_status_str(st),
                mha_context_errmsg(ctx));
    return st == MHA_OK;
}

/* count self-attention layers like cfg with deterministic weights (the
 * same on any device, so results can be compared across devices). */
static bool create_layers(mha_context *ctx, mha_device *device,
                          const mha_layer_config *cfg, int count,
                          mha_layer **layers)
{
    const int64_t E = cfg->embed_dim;
    const int64_t s_in_w[2] = {3 * E, E}, s_in_b[1] = {3 * E};
    const int64_t s_out_w[2] = {E, E}, s_out_b[1] = {E};
    float *in_w = malloc((size_t)(3 * E * E) * sizeof *in_w);
    float *out_w = malloc((size_t)(E * E) * sizeof *out_w);
    float *in_b = malloc((size_t)(3 * E) * sizeof *in_b);
    float *out_b = malloc((size_t)E * sizeof *out_b);
    bool ok = in_w && out_w && in_b && out_b;
    for (int l = 0; ok && l < count; ++l) {
        unsigned seed = 4u * (unsigned)l;
        fill(in_w, (size_t)(3 * E * E), seed + 1, 0.2f);
        fill(in_b, (size_t)(3 * E), seed + 2, 0.1f);
        fill(out_w, (size_t)(E * E), seed + 3, 0.2f);
        fill(out_b, (size_t)E, seed + 4, 0.1f);
        ok = mha_ok(ctx, mha_layer_create(device, cfg, &layers[l]),
                    "mha_layer_create") &&
             mha_ok(ctx, mha_layer_set_weight(layers[l], "in_proj_weight", in_w,
                                              2, s_in_w), "in_proj_weight") &&
             mha_ok(ctx, mha_layer_set_weight(layers[l], "in_proj_bias", in_b,
                                              1, s_in_b), "in_proj_bias") &&
             mha_ok(ctx, mha_layer_set_weight(layers[l], "out_proj.weight",
                                              out_w, 2, s_out_w),
                    "out_proj.weight") &&
             mha_ok(ctx, mha_layer_set_weight(layers[l], "out_proj.bias", out_b,
                                              1, s_out_b), "out_proj.bias");
    }
    free(in_w);
    free(out_w);
    free(in_b);
    free(out_b);
    return ok;
}

/* The scene's LAYERS layers on device. */
static bool scene_layers(mha_context *ctx, mha_device *device, mha_dtype dtype,
                         mha_layer **layers)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, EMBED, HEADS);
    cfg.dtype = dtype;
    return create_layers(ctx, device, &cfg, LAYERS, layers);
}

/* The engine's buffers and command buffers, then libmha on its device:
 * options for the context (may be NULL), queue: whether libmha gets the
 * engine's queue for its own submit-and-wait calls. */
static bool scene_create(engine *e, scene *s,
                         const mha_context_options *options, mha_dtype dtype,
                         bool queue)
{
    memset(s, 0, sizeof *s);
    VkCommandBufferAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = e->pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = FRAMES};
    if (!engine_buffer_create(e, ACT_BYTES, &s->emb) ||
        !engine_buffer_create(e, act_offset(LAYERS + 1) * 4, &s->acts) ||
        !engine_buffer_create(e, ACT_BYTES * FRAMES, &s->readback) ||
        !vk_ok(vkAllocateCommandBuffers(e->device, &ai, s->cmd),
               "vkAllocateCommandBuffers") ||
        !(s->to_input = engine_bind(e, &s->emb, &s->acts)) ||
        !(s->to_readback = engine_bind(e, &s->acts, &s->readback)))
        return false;
    fill(s->emb.map, ACT_COUNT, 99, 1.0f); /* the token embeddings */

    mha_vulkan_device_info info = engine_share(e, queue);
    if (!mha_ok(NULL, mha_context_create(options, &s->ctx), "context") ||
        !mha_ok(s->ctx, mha_vulkan_device_adopt(s->ctx, &info, NULL,
                                                &s->device),
                "mha_vulkan_device_adopt") ||
        !scene_layers(s->ctx, s->device, dtype, s->layers))
        return false;
    const int64_t shape[3] = {TOKENS, BATCH, EMBED};
    for (int i = 0; i <= LAYERS; ++i) {
        mha_vulkan_buffer range;
        mha_vulkan_buffer_init(&range);
        range.buffer = s->acts.buffer;
        range.offset = act_offset(i) * 4ull;
        range.range = ACT_BYTES;
        range.usage = BUFFER_USAGE;
        if (!mha_ok(s->ctx, mha_vulkan_tensor_wrap(s->device, &range, MHA_F32,
                                                   3, shape, &s->act[i]),
                    "mha_vulkan_tensor_wrap"))
            return false;
    }
    return true;
}

/* The arguments of layer l: self-attention on act[l] into act[l + 1]. */
static mha_forward_args layer_args(const scene *s, int l)
{
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = a.key = a.value = s->act[l];
    a.output = s->act[l + 1];
    return a;
}

/* Frame f into s->cmd[f]: the engine writes the input, libmha's layers
 * run, the engine reads the output, with mha_vulkan.h's barriers. */
static bool scene_record(engine *e, scene *s, int f)
{
    const VkPipelineStageFlags cs = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT;
    const VkAccessFlags rw = VK_ACCESS_SHADER_READ_BIT |
                             VK_ACCESS_SHADER_WRITE_BIT;
    VkCommandBuffer cmd = s->cmd[f];
    VkCommandBufferBeginInfo bi = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    if (!vk_ok(vkBeginCommandBuffer(cmd, &bi), "vkBeginCommandBuffer"))
        return false;
    /* the engine's own hazard: earlier frames' accesses of acts come
     * before this frame's writes */
    engine_barrier(cmd, cs, VK_ACCESS_SHADER_WRITE_BIT, cs, rw);
    engine_affine(e, cmd, s->to_input, 0, act_offset(0), frame_scale(f),
                  frame_shift(f));
    /* before libmha: its input written and visible to compute reads */
    engine_barrier(cmd, cs, VK_ACCESS_SHADER_WRITE_BIT, cs, rw);
    bool ok = true;
    for (int l = 0; ok && l < LAYERS; ++l) {
        mha_forward_args a = layer_args(s, l);
        ok = mha_ok(s->ctx, mha_vulkan_layer_record(s->layers[l], &a, cmd),
                    "mha_vulkan_layer_record");
    }
    /* after libmha: its output (compute shader writes) visible to the
     * engine's pass */
    engine_barrier(cmd, cs, VK_ACCESS_SHADER_WRITE_BIT, cs,
                   VK_ACCESS_SHADER_READ_BIT);
    engine_affine(e, cmd, s->to_readback, act_offset(LAYERS),
                  (uint32_t)f * ACT_COUNT, OUT_SCALE, 0.0f);
    /* the readback visible to the host once the fence signals */
    engine_barrier(cmd, cs, VK_ACCESS_SHADER_WRITE_BIT,
                   VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
    return vk_ok(vkEndCommandBuffer(cmd), "vkEndCommandBuffer") && ok;
}

/* y = layer(x) for one frame's activations, by the host-memory forward. */
static mha_status host_forward(mha_layer *layer, const float *x, float *y)
{
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = a.key = a.value =
        (mha_host_array){x, MHA_F32, 3, {TOKENS, BATCH, EMBED}};
    a.output = y;
    a.output_count = ACT_COUNT;
    return mha_layer_forward_host(layer, &a);
}

/* Every frame again on the host-memory forward of ref (LAYERS layers with
 * scene_layers' weights); *worst gets the largest difference. */
static bool scene_check(const scene *s, mha_layer *const *ref,
                        double *worst)
{
    static float x[ACT_COUNT], y[ACT_COUNT];
    *worst = 0.0;
    bool ok = true;
    for (int f = 0; ok && f < FRAMES; ++f) {
        for (uint32_t i = 0; i < ACT_COUNT; ++i)
            x[i] = s->emb.map[i] * frame_scale(f) + frame_shift(f);
        for (int l = 0; ok && l < LAYERS; ++l) {
            ok = mha_ok(s->ctx, host_forward(ref[l], x, y),
                        "mha_layer_forward_host");
            memcpy(x, y, sizeof x);
        }
        const float *got = s->readback.map + (size_t)f * ACT_COUNT;
        for (uint32_t i = 0; ok && i < ACT_COUNT; ++i) {
            double d = fabs((double)got[i] - (double)(x[i] * OUT_SCALE));
            if (!(d <= *worst)) /* NaN counts as the worst */
                *worst = d;
        }
    }
    return ok;
}

/* Destroys libmha's objects, leaving the engine's untouched. */
static void scene_release_mha(scene *s)
{
    for (int i = 0; i <= LAYERS; ++i)
        mha_tensor_destroy(s->act[i]);
    for (int l = 0; l < LAYERS; ++l)
        mha_layer_destroy(s->layers[l]);
    mha_device_destroy(s->device);
    mha_context_destroy(s->ctx);
    memset(s->act, 0, sizeof s->act);
    memset(s->layers, 0, sizeof s->layers);
    s->device = NULL;
    s->ctx = NULL;
}

static void scene_destroy(engine *e, scene *s)
{
    scene_release_mha(s);
    vkDeviceWaitIdle(e->device);
    if (s->cmd[0])
        vkFreeCommandBuffers(e->device, e->pool, FRAMES, s->cmd);
    engine_buffer_destroy(e, &s->emb);
    engine_buffer_destroy(e, &s->acts);
    engine_buffer_destroy(e, &s->readback);
}

#ifndef MHA_ENGINE_NO_MAIN
int main(void)
{
    const char *v = getenv("MHA_VULKAN_VALIDATION");
    bool validation = v && v[0] && strcmp(v, "0") != 0;
    engine e;
    if (!engine_create(&e, validation, false)) {
        bool none = e.instance && !e.gpu;
        if (none)
            fprintf(stderr, "no Vulkan 1.1 device with a compute queue\n");
        engine_destroy(&e);
        return none ? NO_DEVICE : 1;
    }
    scene s;
    bool ok = scene_create(&e, &s, NULL, MHA_F32, true);
    for (int f = 0; ok && f < FRAMES; ++f)
        ok = scene_record(&e, &s, f);
    ok = ok && engine_submit(&e, s.cmd, FRAMES);
    double worst = INFINITY;
    ok = ok && scene_check(&s, s.layers, &worst);
    mha_device_info info;
    if (ok && mha_device_info_of(s.device, &info) == MHA_OK)
        printf("vulkan_engine: on %s, %d frames, each one command buffer: "
               "engine pass -> %d libmha layers (%d tokens x %d batch x %d "
               "features, %d heads) -> engine pass\n",
               info.name, FRAMES, LAYERS, TOKENS, BATCH, EMBED, HEADS);
    scene_destroy(&e, &s);
    engine_destroy(&e);
    printf("vulkan_engine: max |recorded - host forward| = %.3g (tolerance "
           "1e-4); %d validation message(s)%s\n",
           worst, e.messages, validation ? "" : " (validation off)");
    return ok && worst <= 1e-4 && e.messages == 0 ? 0 : 1;
}
#endif
