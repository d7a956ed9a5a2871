/* pipeline.c: shader modules from the SPIR-V embedded at build time (the
 * .comp files of shaders/vulkan/ -> glslc -> mha_vk_spirv), the one set
 * and pipeline layout every kernel shares, and compute pipelines specialised
 * by constants (workgroup size, tiles, head size), created on first use
 * through the device's VkPipelineCache and kept until close. */
#include <string.h>

#include "mha_vk_spirv.h"
#include "vk_internal.h"

/* The fp32 and fp16 builds of each kernel (NULL: fp32 only). */
static const char *const kernel_files[MHA_VK_K_COUNT][2] = {
    [MHA_VK_K_COPY] = {"copy.spv", "copy_f16.spv"},
    [MHA_VK_K_MEAN_HEADS] = {"mean_heads.spv", NULL},
    [MHA_VK_K_SOFTMAX] = {"softmax.spv", NULL},
    [MHA_VK_K_MATMUL] = {"matmul.spv", "matmul_f16.spv"},
    [MHA_VK_K_ATTENTION] = {"attention.spv", "attention_f16.spv"},
    [MHA_VK_K_ATTENTION_COMBINE] = {"attention_combine.spv",
                                    "attention_combine_f16.spv"},
    [MHA_VK_K_ROPE] = {"rope.spv", "rope_f16.spv"},
    [MHA_VK_K_MUL] = {"mul.spv", "mul_f16.spv"},
    [MHA_VK_K_HEAD_STATS] = {"head_stats.spv", NULL},
    [MHA_VK_K_ATTENTION_SG] = {"attention_sg.spv", "attention_sg_f16.spv"},
    [MHA_VK_K_GEMM_STRIDED] = {"gemm_strided.spv", NULL},
    [MHA_VK_K_SUM_ROWS] = {"sum_rows.spv", NULL},
    [MHA_VK_K_ADAMW] = {"adamw.spv", NULL},
    [MHA_VK_K_ATT_BWD_PRE] = {"attention_backward_pre.spv", NULL},
    [MHA_VK_K_ATT_BWD] = {"attention_backward.spv", NULL},
    [MHA_VK_K_ATTENTION_H] = {NULL, "attention_f16m.spv"},
    [MHA_VK_K_ATTENTION_SG_H] = {NULL, "attention_sg_f16m.spv"},
};

/* Whether the device can load kernel k (the _SG attentions declare the
 * subgroup shuffle capability, the _H ones Float16). */
static bool kernel_usable(const mha_vk_device *d, int k)
{
    const mha_vk_limits *l = &d->phys->lim;
    bool sg = k == MHA_VK_K_ATTENTION_SG || k == MHA_VK_K_ATTENTION_SG_H;
    bool h = k == MHA_VK_K_ATTENTION_H || k == MHA_VK_K_ATTENTION_SG_H;
    return (!sg || l->subgroup_shuffle) && (!h || l->fp16_math);
}

static const mha_embedded_file *find_spirv(const char *name)
{
    for (size_t i = 0; i < mha_vk_spirv_count; ++i)
        if (strcmp(mha_vk_spirv[i].name, name) == 0)
            return &mha_vk_spirv[i];
    return NULL;
}

static mha_status create_layouts(mha_vk_device *d)
{
    VkDescriptorSetLayoutBinding b[MHA_VK_BINDINGS];
    for (int i = 0; i < MHA_VK_BINDINGS; ++i)
        b[i] = (VkDescriptorSetLayoutBinding){
            .binding = (uint32_t)i,
            .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
            .descriptorCount = 1,
            .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
        };
    VkDescriptorSetLayoutCreateInfo li = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = MHA_VK_BINDINGS,
        .pBindings = b,
    };
    VkResult r =
        d->vk.vkCreateDescriptorSetLayout(d->dev, &li, NULL, &d->set_layout);
    if (r != VK_SUCCESS) {
        d->set_layout = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreateDescriptorSetLayout");
    }
    VkPushConstantRange pc = {VK_SHADER_STAGE_COMPUTE_BIT, 0,
                              MHA_VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo pi = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &d->set_layout,
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &pc,
    };
    r = d->vk.vkCreatePipelineLayout(d->dev, &pi, NULL, &d->layout);
    if (r != VK_SUCCESS) {
        d->layout = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreatePipelineLayout");
    }
    return MHA_OK;
}

static mha_status create_module(mha_vk_device *d, const char *name,
                                VkShaderModule *out)
{
    const mha_embedded_file *f = find_spirv(name);
    if (!f)
        return mha_host_error(d->host, MHA_DEVICE_ERROR,
                              "vulkan: kernel %s is not embedded", name);
    VkShaderModuleCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = f->size,
        .pCode = (const uint32_t *)(const void *)f->data,
    };
    VkResult r = d->vk.vkCreateShaderModule(d->dev, &ci, NULL, out);
    if (r != VK_SUCCESS) {
        *out = VK_NULL_HANDLE;
        return mha_vk_fail(d->host, d, r, "vkCreateShaderModule");
    }
    return MHA_OK;
}

mha_status mha_vk_pipelines_init(mha_vk_device *d)
{
    mha_status s = create_layouts(d);
    if (s != MHA_OK)
        return s;
    /* fp16 builds declare 16-bit storage: only where it is enabled */
    int builds = d->phys->lim.fp16_storage ? 2 : 1;
    for (int k = 0; k < MHA_VK_K_COUNT; ++k)
        for (int b = 0; b < builds; ++b)
            if (kernel_files[k][b] && kernel_usable(d, k) &&
                (s = create_module(d, kernel_files[k][b], &d->modules[k][b])) !=
                    MHA_OK)
                return s;
    return MHA_OK;
}

void mha_vk_pipelines_fini(mha_vk_device *d)
{
    for (int i = 0; i < d->pipe_count; ++i)
        d->vk.vkDestroyPipeline(d->dev, d->pipes[i].pipe, NULL);
    mha_host_free(d->host, d->pipes);
    d->pipes = NULL;
    d->pipe_count = d->pipe_cap = 0;
    for (int k = 0; k < MHA_VK_K_COUNT; ++k)
        for (int b = 0; b < 2; ++b)
            if (d->modules[k][b])
                d->vk.vkDestroyShaderModule(d->dev, d->modules[k][b], NULL);
    if (d->layout)
        d->vk.vkDestroyPipelineLayout(d->dev, d->layout, NULL);
    if (d->set_layout)
        d->vk.vkDestroyDescriptorSetLayout(d->dev, d->set_layout, NULL);
    d->layout = VK_NULL_HANDLE;
    d->set_layout = VK_NULL_HANDLE;
}

static mha_status create_pipeline(mha_vk_device *d, int kernel, bool f16,
                                  const uint32_t *spec, int count,
                                  VkPipeline *out)
{
    if (!d->modules[kernel][f16])
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: %s has no %s build on this device",
                              kernel_files[kernel][!f16], f16 ? "fp16" : "fp32");
    VkSpecializationMapEntry map[MHA_VK_MAX_SPEC];
    for (int i = 0; i < count; ++i)
        map[i] = (VkSpecializationMapEntry){(uint32_t)i,
                                            (uint32_t)(i * sizeof *spec),
                                            sizeof *spec};
    VkSpecializationInfo si = {
        .mapEntryCount = (uint32_t)count,
        .pMapEntries = map,
        .dataSize = (size_t)count * sizeof *spec,
        .pData = spec,
    };
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {
            .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
            .stage = VK_SHADER_STAGE_COMPUTE_BIT,
            .module = d->modules[kernel][f16],
            .pName = "main",
            .pSpecializationInfo = &si,
        },
        .layout = d->layout,
    };
    VkResult r = mha_fault_due(&d->fault_pipeline)
                     ? VK_ERROR_INITIALIZATION_FAILED
                     : d->vk.vkCreateComputePipelines(d->dev, d->cache, 1,
                                                      &ci, NULL, out);
    if (r != VK_SUCCESS) {
        *out = VK_NULL_HANDLE;
        if (r == VK_ERROR_DEVICE_LOST)
            d->lost = true;
        return mha_host_error(
            d->host,
            r == VK_ERROR_OUT_OF_HOST_MEMORY ||
                    r == VK_ERROR_OUT_OF_DEVICE_MEMORY
                ? MHA_OUT_OF_MEMORY
                : r == VK_ERROR_DEVICE_LOST ? MHA_DEVICE_LOST
                                            : MHA_DEVICE_ERROR,
            "vkCreateComputePipelines failed for %s (workgroup %u): %s (%d)",
            kernel_files[kernel][f16], spec[0], mha_vk_result_name(r), (int)r);
    }
    return MHA_OK;
}

mha_status mha_vk_pipeline_get(mha_vk_device *d, int kernel, bool f16,
                               const uint32_t *spec, int count,
                               VkPipeline *out)
{
    uint32_t key[MHA_VK_MAX_SPEC] = {0};
    memcpy(key, spec, (size_t)count * sizeof *spec);
    for (int i = 0; i < d->pipe_count; ++i)
        if (d->pipes[i].kernel == kernel && d->pipes[i].f16 == f16 &&
            memcmp(d->pipes[i].spec, key, sizeof key) == 0) {
            *out = d->pipes[i].pipe;
            return MHA_OK;
        }
    mha_vk_pipeline *p = mha_vk_grow(d->host, d->pipes, d->pipe_count,
                                     &d->pipe_cap, d->pipe_count + 1,
                                     sizeof *p);
    if (!p)
        return MHA_OUT_OF_MEMORY;
    d->pipes = p;
    VkPipeline pipe;
    mha_status s = create_pipeline(d, kernel, f16, spec, count, &pipe);
    if (s != MHA_OK)
        return s;
    mha_vk_pipeline *e = &d->pipes[d->pipe_count++];
    e->kernel = kernel;
    e->f16 = f16;
    memcpy(e->spec, key, sizeof key);
    e->pipe = pipe;
    *out = pipe;
    return MHA_OK;
}
