/* tune.c: the OpenCL backend's kernel variants: named sets of gemm.cl's -D
 * options (TS workgroup edge, WPT outputs an item along each dimension,
 * BK slice depth, DIRECT global reads instead of local tiles, VW load
 * width) and attention.cl's (CW columns an item, the items a workgroup
 * aims at, which set BR, or BR itself), applied to the device's knobs before
 * each node runs (the program table keys programs by them, program.c).
 * A node names its variant (mha_node.variant, from the core's tuning
 * database or MHA_TUNE_VARIANT); where it leaves it to the backend, the
 * rule table by device class names one; "default" and no rule keep the
 * knobs mha_cl_device_ready chose. */
#include <string.h>

#include "cl_internal.h"

typedef struct cl_variant {
    const char *name;
    int k[5]; /* matmul: TS, WPT, BK, DIRECT, VW (0: 4);
                 attention: CW, items, BR (0: items / the row's items) */
} cl_variant;

/* WPT a vector width (4, 8, 16), BK a multiple of 4 (gemm.cl). "direct":
 * DIRECT, no local tiles (BK unused); "v2", "v1": float2 or scalar
 * loads. */
static const cl_variant mm_variants[] = {
    {"gemm-t4-w16-k32", {4, 16, 32}}, {"gemm-t2-w16-k32", {2, 16, 32}},
    {"gemm-t4-w8-k32", {4, 8, 32}},   {"gemm-t8-w8-k32", {8, 8, 32}},
    {"gemm-t8-w4-k16", {8, 4, 16}},   {"gemm-t16-w8-k32", {16, 8, 32}},
    {"gemm-t16-w4-k16", {16, 4, 16}},
    {"gemm-t4-w16-k32-v2", {4, 16, 32, 0, 2}},
    {"gemm-t4-w16-k32-v1", {4, 16, 32, 0, 1}},
    {"gemm-direct-t4-w16", {4, 16, 4, 1}},
    {"gemm-direct-t8-w8", {8, 8, 4, 1}},
    {"gemm-direct-t2-w16", {2, 16, 4, 1}},
    {"gemm-direct-t1-w16", {1, 16, 4, 1}},
};

static const cl_variant att_variants[] = {
    {"att-cw16-wg64", {16, 64, 0}},  {"att-cw16-wg128", {16, 128, 0}},
    {"att-cw8-wg64", {8, 64, 0}},    {"att-cw8-wg128", {8, 128, 0}},
    {"att-cw4-wg64", {4, 64, 0}},    {"att-cw4-wg256", {4, 256, 0}},
    {"att-cw16-r4", {16, 0, 4}},     {"att-cw16-r8", {16, 0, 8}},
    {"att-cw16-r32", {16, 0, 32}},
};

#define COUNT(a) (sizeof(a) / sizeof *(a))

/* The default by device class, from each vendor's OpenCL optimisation
 * guide (not yet measured on those GPUs: mha-tune's database overrides
 * them). CPUs keep mha_cl_device_ready's measured choice: the direct
 * variants were measured no faster than its local tiles on PoCL (level
 * at one batch item, slower at eight); mha-tune may pick them where they
 * win. */
typedef struct rule {
    cl_uint vendor; /* CL_DEVICE_VENDOR_ID (the PCI id on GPUs) */
    const char *matmul, *attention;
} rule;

static const rule rules[] = {
    /* NVIDIA: OpenCL Best Practices Guide: warps of 32, coalesced float4
     * loads, large register tiles. */
    {0x10DE, "gemm-t16-w8-k32", "att-cw4-wg256"},
    /* AMD: AMD APP / ROCm OpenCL Optimization Guide: wavefronts of 64,
     * 64 KiB LDS, workgroups of 256. */
    {0x1002, "gemm-t16-w8-k32", "att-cw4-wg256"},
    /* Intel: oneAPI GPU Optimization Guide (OpenCL): SIMD8-32 sub-groups,
     * smaller register tiles keep the GRF from spilling. */
    {0x8086, "gemm-t16-w4-k16", "att-cw4-wg64"},
    /* Qualcomm Adreno: Snapdragon OpenCL General Programming and
     * Optimization guide: register pressure limits waves; small local
     * memory: 4-wide items, 64-item groups. */
    {0x5143, "gemm-t8-w4-k16", "att-cw4-wg64"},
    /* Arm Mali: Mali GPU OpenCL Developer Guide: local memory is global
     * memory, vectorise to 128 bits, workgroups of 64-128. */
    {0x13B5, "gemm-t8-w4-k16", "att-cw4-wg64"},
};

static bool matmul_op(mha_op op)
{
    return op == MHA_OP_PROJECTION || op == MHA_OP_SCORES ||
           op == MHA_OP_WEIGHTED_SUM || op == MHA_OP_MATMUL;
}

static const cl_variant *find(const cl_variant *v, size_t n, const char *name)
{
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(v[i].name, name))
            return &v[i];
    return NULL;
}

/* Whether v fits dev: the workgroup, and local memory unless DIRECT
 * (attention.cl's BR variants are shrunk to the workgroup by
 * program.c). */
static bool fits(const mha_cl_device *dev, bool matmul, const cl_variant *v)
{
    const mha_cl_limits *lim = &dev->rec->limits;
    if (!matmul)
        return (size_t)v->k[1] <= lim->max_workgroup;
    return (size_t)(v->k[0] * v->k[0]) <= lim->max_workgroup &&
           (v->k[3] || (size_t)(2 * v->k[2] * (v->k[0] * v->k[1] + 4) * 4) <=
                           lim->local_mem);
}

static const rule *rule_of(mha_cl_device *dev)
{
    if (dev->rec->is_cpu)
        return NULL;
    cl_uint vendor = 0;
    if (dev->api->clGetDeviceInfo(dev->rec->device, CL_DEVICE_VENDOR_ID,
                                  sizeof vendor, &vendor,
                                  NULL) != CL_SUCCESS)
        return NULL;
    for (size_t i = 0; i < COUNT(rules); i++)
        if (rules[i].vendor == vendor)
            return &rules[i];
    return NULL;
}

/* The variant for node's class: the node's, else the rule's; NULL keeps
 * the device's own knobs. */
static const cl_variant *variant_of(mha_cl_device *dev, const mha_node *n,
                                    bool matmul)
{
    const char *name = n->variant;
    if (!name) {
        const rule *r = rule_of(dev);
        name = r ? (matmul ? r->matmul : r->attention) : NULL;
    }
    const cl_variant *v = matmul ? find(mm_variants, COUNT(mm_variants), name)
                                 : find(att_variants, COUNT(att_variants),
                                        name);
    return v && fits(dev, matmul, v) ? v : NULL;
}

#define KNOBS(dev)                                                           \
    {&(dev)->tile,   &(dev)->wpt,    &(dev)->bk,      &(dev)->direct,          \
     &(dev)->vw,     &(dev)->attn_cw, &(dev)->attn_wg, &(dev)->attn_br}

void mha_cl_tune_save(mha_cl_device *dev)
{
    int *const at[8] = KNOBS(dev);
    for (int i = 0; i < 8; i++)
        dev->base_knobs[i] = *at[i];
}

/* Runs node with its variant's knobs (the rest as the device chose):
 * matmul's in base_knobs' first five, attention's in the last three. */
mha_status mha_cl_tune_run(void *d, const mha_node *node)
{
    mha_cl_device *dev = d;
    int k[8];
    memcpy(k, dev->base_knobs, sizeof k);
    const cl_variant *v = NULL;
    if (matmul_op(node->op) && (v = variant_of(dev, node, true)) != NULL) {
        memcpy(k, v->k, 5 * sizeof *k);
        k[4] = k[4] ? k[4] : 4;
    } else if (node->op == MHA_OP_ATTENTION &&
               (v = variant_of(dev, node, false)) != NULL) {
        memcpy(k + 5, v->k, 3 * sizeof *k);
    }
    int *const at[8] = KNOBS(dev);
    for (int i = 0; i < 8; i++)
        *at[i] = k[i];
    return mha_cl_run(dev, node);
}

int mha_cl_variants(void *d, mha_op op, const char **names, int cap)
{
    const mha_cl_device *dev = d;
    bool matmul = matmul_op(op);
    if (!matmul && op != MHA_OP_ATTENTION)
        return 0;
    const cl_variant *v = matmul ? mm_variants : att_variants;
    size_t total = matmul ? COUNT(mm_variants) : COUNT(att_variants);
    int n = 0;
    for (size_t i = 0; i < total; i++)
        if (fits(dev, matmul, &v[i])) {
            if (n < cap)
                names[n] = v[i].name;
            n++;
        }
    return n;
}
