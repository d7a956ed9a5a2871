/* tune.c: the Vulkan backend's kernel variants: named sets of the
 * specialisation constants of matmul.comp (workgroup, tile, slice depth,
 * register block, shared tiles or direct global reads, load width) and
 * attention.comp (invocations per row, rows per
 * workgroup, keys per tile, subgroup or shared-memory reduction), which
 * the pickers in ops.c take before their built-in rule when a node names
 * one (mha_node.variant, chosen by the core's tuning database or
 * MHA_TUNE_VARIANT), and the rule table by device class that names one
 * where the node leaves it to the backend. ops.c still checks that a
 * variant fits the device and falls back to its own choice otherwise. */
#include <string.h>

#include "vk_internal.h"

/* A variant's knobs: matmul.comp's WG, TM, TN, TK, RM, RN, DIRECT, VW
 * (0: 4); attention.comp's TPR, BR, BC and 1 for shared-memory sums even
 * where subgroup shuffles exist. */
typedef struct variant {
    const char *name;
    uint32_t k[8];
} variant;

/* WG = (TM / RM) * (TN / RN), TK and RM, RN multiples of 4 (matmul.comp).
 * "mmd": DIRECT, global reads with no shared tiles (TK 4 keeps the unused
 * shared arrays small); "v2", "v1": vec2 or scalar loads. */
static const variant mm_variants[] = {
    {"mm128x128k16", {256, 128, 128, 16, 8, 8}},
    {"mm64x64k32", {64, 64, 64, 32, 8, 8}},
    {"mm64x64k16", {64, 64, 64, 16, 8, 8}},
    {"mm64x64k16r4", {256, 64, 64, 16, 4, 4}},
    {"mm32x64k16", {64, 32, 64, 16, 4, 8}},
    {"mm32x32k16", {64, 32, 32, 16, 4, 4}},
    {"mm16x128k32", {64, 16, 128, 32, 4, 8}},
    {"mm16x16k8", {16, 16, 16, 8, 4, 4}},
    {"mm64x64k32v2", {64, 64, 64, 32, 8, 8, 0, 2}},
    {"mm64x64k32v1", {64, 64, 64, 32, 8, 8, 0, 1}},
    {"mmd64x64r8", {64, 64, 64, 4, 8, 8, 1}},
    {"mmd32x64r4x8", {64, 32, 64, 4, 4, 8, 1}},
    {"mmd32x32r4", {64, 32, 32, 4, 4, 4, 1}},
    {"mmd16x64r4x8", {32, 16, 64, 4, 4, 8, 1}},
    {"mmd64x64r8v1", {64, 64, 64, 4, 8, 8, 1, 1}},
};

static const variant att_variants[] = {
    {"att-t2-r32-c32", {2, 32, 32, 0}},
    {"att-t4-r16-c32", {4, 16, 32, 0}},
    {"att-t4-r16-c32-smem", {4, 16, 32, 1}},
    {"att-t4-r32-c16", {4, 32, 16, 0}},
    {"att-t4-r16-c16", {4, 16, 16, 0}},
    {"att-t8-r8-c16", {8, 8, 16, 0}},
    {"att-t2-r64-c16", {2, 64, 16, 0}},
};

#define COUNT(a) (sizeof(a) / sizeof *(a))

/* The default by device class, from each vendor's optimisation guide (not
 * yet measured on those GPUs: mha-tune's database overrides them). */
typedef struct rule {
    uint32_t vendor;        /* PCI vendor id; 0: any */
    int kind;               /* VkPhysicalDeviceType; -1: any */
    const char *matmul, *attention;
} rule;

static const rule rules[] = {
    /* NVIDIA: CUDA C++ Best Practices Guide ("Execution Configuration
     * Optimizations", "Shared Memory"): warps of 32 with many registers a
     * thread, so large tiles with 8 x 8 outputs a thread, and warp
     * shuffles for the row sums of the attention. */
    {0x10DE, -1, "mm128x128k16", "att-t4-r16-c32"},
    /* AMD RDNA: RDNA Performance Guide (GPUOpen): wave32/wave64, 64 KiB of
     * LDS a workgroup processor, workgroups that are a multiple of 64:
     * 64 x 64 tiles with 32-deep slices, subgroup reductions. */
    {0x1002, -1, "mm64x64k32", "att-t4-r16-c32"},
    /* Intel Xe: oneAPI GPU Optimization Guide ("Sub-groups", "Shared
     * Local Memory"): the compiler picks SIMD8/16/32, so subgroup
     * shuffles cost more than SLM; ggml-vulkan turns them off on Intel.
     * Shared-memory row sums, 16-deep slices. */
    {0x8086, -1, "mm64x64k16", "att-t4-r16-c32-smem"},
    /* Qualcomm Adreno: Snapdragon Mobile Platform OpenCL General
     * Programming and Optimization guide: few registers before waves
     * drop, local memory small: small tiles, 8 lanes a row, short key
     * tiles. */
    {0x5143, -1, "mm32x32k16", "att-t8-r8-c16"},
    /* Arm Mali: Mali GPU Best Practices Developer Guide ("Compute
     * shaders"): shared memory is system memory with no speed advantage,
     * workgroups of 64 to 128, avoid register spills: small tiles and
     * short key tiles. */
    {0x13B5, -1, "mm32x32k16", "att-t4-r16-c16"},
    /* No rule for CPU devices (lavapipe): the direct variants ("mmd")
     * were measured no faster there than the shared-memory tiles (README,
     * "Performance on GPUs"; as we read Mesa 22.3's llvmpipe, a storage
     * buffer load whose address varies by invocation goes lane by lane
     * with a bounds check per component, so tiles that read each element
     * once a workgroup still win); mha-tune may pick them where they
     * win. */
};

static const rule *rule_of(const mha_vk_device *d)
{
    const VkPhysicalDeviceProperties *p = &d->phys->props;
    for (size_t i = 0; i < COUNT(rules); i++)
        if ((!rules[i].vendor || rules[i].vendor == p->vendorID) &&
            (rules[i].kind < 0 || rules[i].kind == (int)p->deviceType))
            return &rules[i];
    return NULL;
}

static bool matmul_op(mha_op op)
{
    return op == MHA_OP_PROJECTION || op == MHA_OP_SCORES ||
           op == MHA_OP_WEIGHTED_SUM || op == MHA_OP_MATMUL;
}

/* The variant name that applies to a node of op: the node's, else the
 * rule's; NULL for "default" or none. */
static const char *name_for(const mha_vk_device *d, bool matmul)
{
    if (!d->tune_node || (matmul ? !matmul_op(d->tune_node->op)
                                 : d->tune_node->op != MHA_OP_ATTENTION))
        return NULL;
    const char *v = d->tune_node->variant;
    if (!v) {
        const rule *r = rule_of(d);
        v = r ? (matmul ? r->matmul : r->attention) : NULL;
    }
    return v && strcmp(v, "default") ? v : NULL;
}

/* The knobs of the table's variant named v into k; false for none. */
static bool lookup(const variant *t, size_t n, const char *v, uint32_t *k,
                   size_t nk)
{
    for (size_t i = 0; v && i < n; i++)
        if (!strcmp(t[i].name, v)) {
            memcpy(k, t[i].k, nk * sizeof *k);
            return true;
        }
    return false;
}

bool mha_vk_tune_matmul(const mha_vk_device *d, uint32_t k[8])
{
    return lookup(mm_variants, COUNT(mm_variants), name_for(d, true), k, 8);
}

bool mha_vk_tune_attention(const mha_vk_device *d, uint32_t k[4])
{
    return lookup(att_variants, COUNT(att_variants), name_for(d, false), k,
                  4);
}

/* Whether variant i of op's table fits d (workgroup, shared memory). */
static bool fits(const mha_vk_device *d, bool matmul, size_t i)
{
    const mha_vk_limits *l = &d->phys->lim;
    uint32_t wg = l->max_wg < l->max_wg_x ? l->max_wg : l->max_wg_x;
    if (!matmul)
        return att_variants[i].k[0] * att_variants[i].k[1] <= wg;
    const uint32_t *k = mm_variants[i].k;
    return k[0] <= wg && (k[1] + 4 + k[2] + 4) * k[3] * 4 <= l->shared_bytes;
}

int mha_vk_variants(void *dev, mha_op op, const char **names, int cap)
{
    const mha_vk_device *d = dev;
    bool matmul = matmul_op(op);
    if (!matmul && op != MHA_OP_ATTENTION)
        return 0;
    size_t total = matmul ? COUNT(mm_variants) : COUNT(att_variants);
    int n = 0;
    for (size_t i = 0; i < total; i++)
        if (fits(d, matmul, i)) {
            if (n < cap)
                names[n] = matmul ? mm_variants[i].name : att_variants[i].name;
            n++;
        }
    return n;
}
