/* ops.c: every graph op as one or more dispatches of the kernels.
 * PROJECTION, SCORES and WEIGHTED_SUM are the tiled matmul with different
 * operand strides and epilogues; FILL_ROWS is the strided copy; SOFTMAX,
 * MEAN_HEADS, ATTENTION, ROPE and MUL have their own kernels (ATTENTION with too
 * few workgroups, as in decode, is split over the keys and combined by a
 * second kernel, through a scratch buffer of the device; one that saves
 * its row LSE for training always takes the second kernel, which writes
 * it).
 * Each tensor is bound as the byte range of its block it spans (from a
 * 256-byte aligned start), with its element offset in that range and its
 * element strides in push constants; run() checks that every element of every
 * view lies inside its buffer, so a kernel never reads out of bounds.
 * Kernel variants (tiles, workgroup, head size) are specialisation
 * constants chosen here from the device's (possibly capped) limits. fp16
 * tensors (projections, heads, attention output) use the kernels' fp16
 * builds where the device has 16-bit storage; scores, probabilities and
 * masks stay fp32. */
#include <math.h>
#include <string.h>

#include "push.h"
#include "vk_internal.h"

#define COPY_WG 64u

/* ---- tensor checks and conversions --------------------------------------- */

static bool present(const mha_tdesc *t) { return t->buf != NULL; }

/* Stride of dim in elements, 0 where the dimension has one element (so a
 * [1,...] operand broadcasts over the batch). */
static uint32_t st(const mha_tdesc *t, int dim)
{
    return t->ne[dim] == 1 ? 0u : (uint32_t)t->nb[dim];
}

static size_t esize(const mha_tdesc *t)
{
    return t->dtype == MHA_F16 ? 2 : 4;
}

/* Kernels see each tensor through its own binding, which starts at the
 * tensor's first byte rounded down to its block's bind_align (256 for our
 * memory, valid for any minStorageBufferOffsetAlignment; the device's
 * alignment for the application's buffers, whose offsets are only element
 * aligned) and ends after its last element; the push constants hold the
 * element offset within that binding. Barriers and the validation layers
 * then see exactly the bytes each dispatch may touch. */
static VkDeviceSize first_byte(const mha_tdesc *t)
{
    const mha_vk_buffer *b = t->buf;
    return b->offset + t->offset;
}

static VkDeviceSize bind_start(const mha_tdesc *t)
{
    const mha_vk_buffer *b = t->buf;
    VkDeviceSize lo = t->bind_whole ? b->offset : first_byte(t);
    return lo - lo % b->block->bind_align;
}

static uint32_t eoff(const mha_tdesc *t)
{
    return (uint32_t)((first_byte(t) - bind_start(t)) / esize(t));
}

/* A present view of dtype whose offsets and strides fit the kernels'
 * 32-bit indices. Looks only at the descriptor: the planner asks
 * supports() with placeholder buffer handles, so buf is only tested for
 * NULL here. */
static bool view_ok(const mha_tdesc *t, mha_dtype dtype)
{
    if (!t->buf || t->dtype != dtype || t->offset % esize(t))
        return false;
    uint64_t last = t->offset / esize(t);
    for (int i = 0; i < 4; ++i) {
        if (t->ne[i] < 0 || t->ne[i] > UINT32_MAX || t->nb[i] < 0 ||
            t->nb[i] > UINT32_MAX)
            return false;
        if (t->ne[i])
            last += (uint64_t)(t->ne[i] - 1) * (uint64_t)t->nb[i];
    }
    return last < UINT32_MAX;
}

/* An fp32 (or, with f16, fp16) view (view_ok). */
static bool tensor_ok_dt(const mha_tdesc *t, bool f16)
{
    return view_ok(t, MHA_F32) || (f16 && view_ok(t, MHA_F16));
}

static bool tensor_ok(const mha_tdesc *t) { return tensor_ok_dt(t, false); }

/* fp16 is accepted where the device has 16-bit storage (and the caps of
 * MHA_VULKAN_LIMITS leave it on). */
static bool data_ok(const mha_vk_device *d, const mha_tdesc *t)
{
    return tensor_ok_dt(t, d->phys->lim.fp16_storage);
}

/* At run time: every element of t lies inside its buffer, so a kernel never
 * reads or writes out of bounds. */
static mha_status in_bounds(mha_vk_device *d, const mha_tdesc *t)
{
    const mha_vk_buffer *b = t->buf;
    size_t es = esize(t);
    uint64_t last = t->offset / es;
    for (int i = 0; i < 4; ++i) {
        if (t->ne[i] == 0)
            return MHA_OK; /* empty: nothing is touched */
        last += (uint64_t)(t->ne[i] - 1) * (uint64_t)t->nb[i];
    }
    if ((last + 1) * es <= b->size && b->offset / es + last < UINT32_MAX)
        return MHA_OK;
    return mha_host_error(d->host, MHA_INVALID_ARGUMENT,
                          "vulkan: a tensor view reaches element %llu of a "
                          "buffer of %llu bytes",
                          (unsigned long long)last,
                          (unsigned long long)b->size);
}

static bool inner_contiguous(const mha_tdesc *t)
{
    return t->ne[3] <= 1 || t->nb[3] == 1;
}

/* An absent source, or a contiguous one of dtype. */
static bool optional_ok_dt(const mha_tdesc *t, mha_dtype dtype)
{
    return !present(t) || (view_ok(t, dtype) && inner_contiguous(t));
}

static bool optional_ok(const mha_tdesc *t)
{
    return optional_ok_dt(t, MHA_F32);
}

static int64_t count(const mha_tdesc *t)
{
    return t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
}

/* Splits n groups over x and y within the device's group-count limits. */
static bool split_groups(const mha_vk_device *d, uint64_t n, uint32_t g[3])
{
    uint64_t gx = n < d->phys->lim.max_groups[0] ? n
                                                 : d->phys->lim.max_groups[0];
    if (!gx)
        gx = 1;
    uint64_t gy = (n + gx - 1) / gx;
    if (gy > d->phys->lim.max_groups[1])
        return false;
    g[0] = (uint32_t)gx;
    g[1] = (uint32_t)gy;
    g[2] = 1;
    return true;
}

static uint32_t pow2_floor(uint32_t v)
{
    uint32_t p = 1;
    while (p * 2 <= v)
        p *= 2;
    return p;
}

static uint32_t max_wg(const mha_vk_device *d)
{
    const mha_vk_limits *l = &d->phys->lim;
    return l->max_wg < l->max_wg_x ? l->max_wg : l->max_wg_x;
}

/* ---- kernel configurations ------------------------------------------- */

typedef struct mm_config {
    uint32_t wg, tm, tn, tk, rm, rn;
    uint32_t direct; /* matmul.comp's DIRECT: global reads, no tiles */
    uint32_t vw;     /* widest global load in floats; 0: 4 (vec4) */
} mm_config;

/* The matmul tile for an M x N result: the first option of the shape's
 * class that fits the device's workgroup and shared memory (k-major slices
 * padded by one vec4, matmul.comp). Results of few rows (decode, small
 * batches) get tiles 8 or 16 rows tall and wide along N (8 for at most 8
 * rows: a 16-row tile would compute as many rows of nothing); large ones 8 x 8
 * outputs per invocation over 64 x 64 or 128 x 128 tiles (128 only when
 * there are enough tiles to fill a device), BK 32 where it fits; small
 * devices fall back to smaller tiles. */
static bool mm_fits(const mha_vk_device *d, const mm_config *o)
{
    uint32_t smem = (o->tm + 4 + o->tn + 4) * o->tk * 4;
    return o->wg <= max_wg(d) && smem <= d->phys->lim.shared_bytes;
}

/* direct_ok: the kernel has matmul.comp's DIRECT path (gemm_strided.comp
 * has not: a direct variant leaves it the built-in tiles). */
static bool mm_pick(const mha_vk_device *d, uint32_t M, uint32_t N,
                    bool direct_ok, mm_config *c)
{
    uint32_t k[8]; /* a tuning variant first (tune.c) */
    if (mha_vk_tune_matmul(d, k) && (direct_ok || !k[6])) {
        mm_config o = {k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]};
        if (mm_fits(d, &o)) {
            *c = o;
            return true;
        }
    }
    static const mm_config wide[] = {
        {256, 128, 128, 16, 8, 8, 0, 0}, {64, 64, 64, 32, 8, 8, 0, 0},
        {64, 64, 64, 16, 8, 8, 0, 0},
    };
    static const mm_config skinny[] = {
        {64, 16, 128, 32, 4, 8, 0, 0}, {32, 8, 128, 32, 4, 8, 0, 0},
        {32, 8, 128, 16, 4, 8, 0, 0},
    };
    static const mm_config small[] = {
        {64, 32, 32, 16, 4, 4, 0, 0}, {16, 16, 16, 8, 4, 4, 0, 0},
        {4, 8, 8, 8, 4, 4, 0, 0},
    };
    const mm_config *classes[3] = {wide, skinny, small};
    if (M <= 16)
        classes[0] = skinny, classes[1] = wide;
    for (int k = 0; k < 3; ++k)
        for (size_t i = 0; i < 3; ++i) {
            const mm_config *o = &classes[k][i];
            bool big = o->tm == 128 &&
                       (uint64_t)(M / 128) * (N / 128) < 16;
            bool tall = classes[k] == skinny && o->tm > 8 && M <= 8;
            if (!big && !tall && mm_fits(d, o)) {
                *c = *o;
                return true;
            }
        }
    return false;
}

typedef struct att_config {
    uint32_t wg, dh, br, bc, tpr;
    int kernel; /* MHA_VK_K_ATTENTION or (shuffle reductions) _SG */
} att_config;

/* vec4 columns an invocation of attention.comp aims to hold (of q and of
 * its output): 32 floats each, so q, the output and the scores stay in
 * registers on every GPU class. */
#define ATT_VEC4S 8u
/* Invocations a workgroup of few rows (decode) still aims for. */
#define ATT_MIN_WG 32u
/* Rows of a causal attention's workgroup at most: its last row sets the
 * keys the whole workgroup visits, so shorter row blocks skip more of the
 * masked tiles (about half of them, not 9/16 as 64 rows of L 512 would). */
#define ATT_CAUSAL_ROWS 32u

/* The largest power of 2 dividing v (v > 0). */
static uint32_t pow2_divisor(uint32_t v) { return v & (~v + 1u); }

/* Tiles for rows (query, head) rows of head size dh: TPR invocations per
 * row, a power of 2 dividing the row's vec4s where that leaves at most
 * ATT_VEC4S of them to each (else the row is padded with zero vec4s to a
 * multiple of TPR: a head size like 100 or 252 must not put 25 or 63
 * unrolled vec4s in one invocation, which lavapipe's LLVM takes minutes
 * to compile), enough that each holds at most ATT_VEC4S of them, and
 * within a subgroup where shuffles sum the partial dot products; BR rows
 * per workgroup, no more than the rows there are (rounded up to a power of
 * 2, so a decode loop or chunked prefill meets a few variants, not one per
 * length), TPR doubled while a workgroup of few rows has fewer than
 * ATT_MIN_WG invocations (no more than ATT_CAUSAL_ROWS rows when causal);
 * then the widest key tile up to 32 whose K and V (and the shared-memory
 * reduction's partials) fit. */
static uint64_t att_smem(uint32_t bc, uint32_t d4p, uint32_t br,
                         uint32_t tpr, bool shuffles)
{
    return (uint64_t)bc * d4p * 2 * 16 +
           (tpr > 1 && !shuffles ? bc * br * tpr * 4 : 0);
}

/* A tuning variant {TPR, BR, BC, shared-memory sums} (tune.c) as a
 * configuration, when it fits: at most ATT_VEC4S vec4s an invocation,
 * shuffles only within a subgroup. */
static bool att_variant(const mha_vk_device *d, uint32_t dh,
                        const uint32_t k[4], att_config *c)
{
    const mha_vk_limits *l = &d->phys->lim;
    uint32_t tpr = k[0], br = k[1], bc = k[2];
    uint32_t d4 = (dh + 3) / 4, d4p = (d4 + tpr - 1) / tpr * tpr;
    bool shuffles = !k[3] && tpr > 1 && l->subgroup_shuffle &&
                    tpr <= l->subgroup_size;
    if (d4p / tpr > ATT_VEC4S || br * tpr > max_wg(d) ||
        att_smem(bc, d4p, br, tpr, shuffles) > l->shared_bytes)
        return false;
    *c = (att_config){br * tpr, dh, br, bc, tpr,
                      shuffles ? MHA_VK_K_ATTENTION_SG : MHA_VK_K_ATTENTION};
    return true;
}

static bool att_pick(const mha_vk_device *d, uint32_t dh, uint64_t rows,
                     bool causal, att_config *c)
{
    if (dh == 0 || dh > 512)
        return false;
    const mha_vk_limits *l = &d->phys->lim;
    uint32_t d4 = (dh + 3) / 4;
    uint32_t target = pow2_floor(max_wg(d) < 128 ? max_wg(d) : 128);
    bool sg = l->subgroup_shuffle && l->subgroup_size >= 2;
    uint32_t k[4]; /* a tuning variant first (tune.c) */
    if (mha_vk_tune_attention(d, k) && att_variant(d, dh, k, c))
        return true;
    uint32_t cap = pow2_divisor(d4);
    if (d4 / cap > ATT_VEC4S)
        cap = pow2_floor(d4);
    if (cap > target)
        cap = target;
    if (sg && cap > pow2_floor(l->subgroup_size))
        cap = pow2_floor(l->subgroup_size);
    uint32_t tpr = 1;
    while (tpr < cap && (d4 + tpr - 1) / tpr > ATT_VEC4S)
        tpr *= 2;
    uint64_t want = rows < target / tpr ? rows : target / tpr;
    if (causal && want > ATT_CAUSAL_ROWS)
        want = ATT_CAUSAL_ROWS;
    uint32_t br = pow2_floor((uint32_t)want);
    if (br < want)
        br *= 2;
    while (br * tpr < ATT_MIN_WG && tpr < cap)
        tpr *= 2;
    bool shuffles = sg && tpr > 1;
    uint32_t d4p = (d4 + tpr - 1) / tpr * tpr; /* as attention.comp's D4P */
    for (; br >= 1; br /= 2)
        for (uint32_t bc = 32; bc >= 1; bc /= 2) {
            if (att_smem(bc, d4p, br, tpr, shuffles) > l->shared_bytes)
                continue;
            *c = (att_config){br * tpr, dh, br, bc, tpr,
                              shuffles ? MHA_VK_K_ATTENTION_SG
                                       : MHA_VK_K_ATTENTION};
            return true;
        }
    return false;
}

static uint32_t softmax_wg(const mha_vk_device *d)
{
    uint32_t m = max_wg(d);
    return pow2_floor(m < 128 ? m : 128);
}

/* ---- push constant blocks (push.h, shared with the kernels) ---------- */

MHA_PUSH_BLOCK(copy_push, MHA_COPY_PUSH)
MHA_PUSH_BLOCK(mean_push, MHA_MEAN_PUSH)
MHA_PUSH_BLOCK(softmax_push, MHA_SOFTMAX_PUSH)
MHA_PUSH_BLOCK(matmul_push, MHA_MATMUL_PUSH)
MHA_PUSH_BLOCK(attention_push, MHA_ATTENTION_PUSH)
MHA_PUSH_BLOCK(combine_push, MHA_COMBINE_PUSH)

_Static_assert(sizeof(copy_push) <= MHA_VK_PUSH_BYTES, "push constants");
_Static_assert(sizeof(mean_push) <= MHA_VK_PUSH_BYTES, "push constants");
_Static_assert(sizeof(softmax_push) <= MHA_VK_PUSH_BYTES, "push constants");
_Static_assert(sizeof(matmul_push) <= MHA_VK_PUSH_BYTES, "push constants");
_Static_assert(sizeof(attention_push) <= MHA_VK_PUSH_BYTES,
               "push constants");
_Static_assert(sizeof(combine_push) <= MHA_VK_PUSH_BYTES, "push constants");
MHA_PUSH_BLOCK(rope_push, MHA_ROPE_PUSH)
_Static_assert(sizeof(rope_push) <= MHA_VK_PUSH_BYTES, "push constants");
MHA_PUSH_BLOCK(mul_push, MHA_MUL_PUSH)
_Static_assert(sizeof(mul_push) <= MHA_VK_PUSH_BYTES, "push constants");
MHA_PUSH_BLOCK(head_stats_push, MHA_HEAD_STATS_PUSH)
_Static_assert(sizeof(head_stats_push) <= MHA_VK_PUSH_BYTES,
               "push constants");

/* ---- dispatch helpers ---------------------------------------------------- */

/* The DT_F16 bits of the tensors bound at each binding (NULL: none). */
static uint32_t f16_bits(const mha_tdesc *const ts[MHA_VK_BINDINGS])
{
    uint32_t bits = 0;
    for (int i = 0; i < MHA_VK_BINDINGS; ++i)
        if (ts[i] && ts[i]->dtype == MHA_F16)
            bits |= DT_F16(i);
    return bits;
}

/* The binding of t (see bind_start; with bind_whole to the end of its
 * buffer); t is in bounds (see in_bounds). */
static mha_vk_access binding_of(const mha_tdesc *t, bool write)
{
    const mha_vk_buffer *b = t->buf;
    uint64_t last = 0;
    for (int i = 0; i < 4; ++i)
        last += (uint64_t)(t->ne[i] - 1) * (uint64_t)t->nb[i];
    VkDeviceSize hi = t->bind_whole ? b->offset + b->size
                                    : first_byte(t) + (last + 1) * esize(t);
    return (mha_vk_access){b->block->buf, bind_start(t), hi, write};
}

/* Kernels write one binding: the copy, mean and softmax kernels binding
 * 1, matmul and attention binding 2. */
static int output_binding(int kernel)
{
    return kernel == MHA_VK_K_MATMUL || kernel == MHA_VK_K_ATTENTION ||
                   kernel == MHA_VK_K_ATTENTION_SG ||
                   kernel == MHA_VK_K_ATTENTION_H ||
                   kernel == MHA_VK_K_ATTENTION_SG_H ||
                   kernel == MHA_VK_K_ATTENTION_COMBINE
               ? 2
               : 1;
}

/* Whether kernel writes t at binding i: its output, the training ops'
 * outputs, the combine pass's LSE (binding 1) and the attention's test
 * hook (mha_vk_device's tile_visits). */
static bool writes(const mha_vk_device *d, int kernel, const mha_tdesc *t,
                   int i)
{
    if (t->buf == d->tile_visits)
        return true;
    switch (kernel) {
    case MHA_VK_K_GEMM_STRIDED: return i == 2;
    case MHA_VK_K_ADAMW: return i >= 1 && i <= 3; /* p, m, v */
    case MHA_VK_K_ATT_BWD_PRE: return i == 3;
    case MHA_VK_K_ATT_BWD: return i >= 7;         /* dK and dV, or dQ */
    case MHA_VK_K_ATTENTION_COMBINE:
        return i == 1 || i == output_binding(kernel);
    default: return i == output_binding(kernel);
    }
}

/* Binds the tensors' buffers (ts[i] NULL: the dummy) and dispatches the
 * kernel's fp16 build when f16 (the push constants carry the same bits). */
static mha_status dispatch(mha_vk_device *d, int kernel, bool f16,
                           const uint32_t *spec, int nspec,
                           const mha_tdesc *const ts[MHA_VK_BINDINGS],
                           const void *push, uint32_t push_size,
                           const uint32_t groups[3])
{
    if (!groups[0] || !groups[1] || !groups[2])
        return MHA_OK;
    mha_vk_access bind[MHA_VK_BINDINGS] = {{0}};
    for (int i = 0; i < MHA_VK_BINDINGS; ++i)
        if (ts[i] && count(ts[i]) > 0) /* empty: the dummy */
            bind[i] = binding_of(ts[i], writes(d, kernel, ts[i], i));
    VkPipeline pipe;
    mha_status s = mha_vk_pipeline_get(d, kernel, f16, spec, nspec, &pipe);
    if (s != MHA_OK)
        return s;
    return mha_vk_dispatch(d, pipe, bind, push, push_size, groups);
}

static mha_status groups_error(mha_vk_device *d, const char *op)
{
    return mha_host_error(d->host, MHA_UNSUPPORTED,
                          "vulkan: %s needs more workgroups than %s allows",
                          op, d->phys->props.deviceName);
}

/* dst = src over 4-D (src absent: zeros). */
static mha_status run_copy(mha_vk_device *d, const mha_tdesc *src,
                           const mha_tdesc *dst)
{
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {present(src) ? src : NULL, dst};
    uint32_t f16 = f16_bits(ts);
    copy_push p = {.dst_off = eoff(dst),
                   .flags = (present(src) ? MHA_VK_F_SRC : 0u) | f16};
    for (int i = 0; i < 4; ++i) {
        p.ne[i] = (uint32_t)dst->ne[i];
        p.dst_nb[i] = st(dst, i);
        p.src_nb[i] = present(src) ? st(src, i) : 0;
    }
    if (present(src))
        p.src_off = eoff(src);
    p.total = (uint32_t)count(dst);
    uint32_t g[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (p.total + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "copy");
    return dispatch(d, MHA_VK_K_COPY, f16 != 0, spec, 1, ts, &p, sizeof p,
                    g);
}

/* MUL: dst = src * f over 4-D (the head gates). */
static mha_status run_mul(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *src = &n->src[MHA_SRC_MUL_X], *dst = &n->dst;
    const mha_tdesc *f = &n->src[MHA_SRC_MUL_F];
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {src, dst, f};
    uint32_t f16 = f16_bits(ts);
    mul_push p = {.src_off = eoff(src), .dst_off = eoff(dst),
                  .f_off = eoff(f), .flags = f16,
                  .total = (uint32_t)count(dst)};
    for (int i = 0; i < 4; ++i) {
        p.ne[i] = (uint32_t)dst->ne[i];
        p.src_nb[i] = st(src, i);
        p.dst_nb[i] = st(dst, i);
        p.f_nb[i] = st(f, i);
    }
    uint32_t g[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (p.total + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "mul");
    return dispatch(d, MHA_VK_K_MUL, f16 != 0, spec, 1, ts, &p, sizeof p, g);
}

static mha_status run_mean_heads(mha_vk_device *d, const mha_tdesc *src,
                                 const mha_tdesc *dst)
{
    mean_push p = {.src_off = eoff(src), .dst_off = eoff(dst)};
    for (int i = 0; i < 4; ++i) {
        p.ne[i] = (uint32_t)src->ne[i];
        p.src_nb[i] = st(src, i);
        p.dst_nb[i] = st(dst, i);
    }
    p.total = (uint32_t)(src->ne[0] * src->ne[2] * src->ne[3]);
    uint32_t g[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (p.total + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "mean_heads");
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {src, dst};
    return dispatch(d, MHA_VK_K_MEAN_HEADS, false, spec, 1, ts, &p, sizeof p,
                    g);
}

/* HEAD_STATS: one workgroup of COPY_WG per (column, head, batch item). */
static bool supports_head_stats(const mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *s = &n->src[0], *t = &n->dst;
    const uint32_t *mg = d->phys->lim.max_groups;
    return tensor_ok(s) && tensor_ok(t) && inner_contiguous(s) &&
           inner_contiguous(t) && t->ne[0] == s->ne[0] &&
           t->ne[1] == s->ne[1] && t->ne[2] == 1 &&
           t->ne[3] == MHA_HEAD_STATS_COLS + s->ne[1] && t->ne[3] <= mg[0] &&
           s->ne[1] <= mg[1] && s->ne[0] <= mg[2];
}

static mha_status run_head_stats(mha_vk_device *d, const mha_tdesc *src,
                                 const mha_tdesc *dst)
{
    head_stats_push p = {.src_off = eoff(src), .dst_off = eoff(dst)};
    for (int i = 0; i < 4; ++i)
        p.ne[i] = (uint32_t)src->ne[i];
    for (int i = 0; i < 3; ++i) {
        p.src_nb[i] = st(src, i);
        p.dst_nb[i] = st(dst, i);
    }
    uint32_t spec[1] = {COPY_WG};
    const uint32_t g[3] = {(uint32_t)dst->ne[3], (uint32_t)src->ne[1],
                           (uint32_t)src->ne[0]};
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {src, dst};
    return dispatch(d, MHA_VK_K_HEAD_STATS, false, spec, 1, ts, &p, sizeof p,
                    g);
}

static mha_status run_softmax(mha_vk_device *d, const mha_tdesc *src,
                              const mha_tdesc *dst)
{
    softmax_push p = {.src_off = eoff(src), .dst_off = eoff(dst)};
    for (int i = 0; i < 4; ++i)
        p.ne[i] = (uint32_t)src->ne[i];
    for (int i = 0; i < 3; ++i) {
        p.src_nb[i] = st(src, i);
        p.dst_nb[i] = st(dst, i);
    }
    p.rows = (uint32_t)(src->ne[0] * src->ne[1] * src->ne[2]);
    if (!src->ne[3])
        return MHA_OK;
    uint32_t g[3], spec[1] = {softmax_wg(d)};
    if (!split_groups(d, p.rows, g))
        return groups_error(d, "softmax");
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {src, dst};
    return dispatch(d, MHA_VK_K_SOFTMAX, false, spec, 1, ts, &p, sizeof p, g);
}

/* Fills the operand fields shared by the three matmul uses. */
static void mm_operands(matmul_push *p, const mha_tdesc *a, const mha_tdesc *c)
{
    p->a_off = eoff(a);
    p->c_off = eoff(c);
    p->a_sb = st(a, 0);
    p->a_sh = st(a, 1);
    p->a_sr = st(a, 2);
    p->c_sb = st(c, 0);
    p->c_sh = st(c, 1);
    p->c_sr = st(c, 2);
    p->H = (uint32_t)c->ne[1];
    p->M = (uint32_t)c->ne[2];
    p->N = (uint32_t)c->ne[3];
    p->scale = 1.0f;
}

static void mm_masks(matmul_push *p, const mha_node *n, const mha_tdesc *ts[])
{
    const mha_tdesc *m = &n->src[MHA_SRC_MASK], *k = &n->src[MHA_SRC_KPM];
    if (present(m)) {
        p->flags |= MHA_VK_F_MASK;
        p->mask_off = eoff(m);
        p->mask_sb = st(m, 0);
        p->mask_sh = st(m, 1);
        p->mask_sr = st(m, 2);
        ts[4] = m;
    }
    if (present(k)) {
        p->flags |= MHA_VK_F_KPM;
        p->kpm_off = eoff(k);
        p->kpm_sb = st(k, 0);
        p->kpm_sh = st(k, 1);
        p->kpm_sr = st(k, 2);
        ts[5] = k;
    }
    if (n->params.causal)
        p->flags |= MHA_VK_F_CAUSAL;
    int64_t mc = n->params.mask_cols;
    p->mask_cols = mc < 0 ? 0 : mc > UINT32_MAX ? UINT32_MAX : (uint32_t)mc;
}

/* Whether all of n values are whole vec4s. */
static bool vec4s(const uint32_t *v, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        if (v[i] % 4)
            return false;
    return true;
}

/* MHA_VK_F_VEC4_A / _B: the operands matmul.comp may read as vec4s (fp32,
 * offsets and strides in whole vec4s, B contiguous along k or along j),
 * from p with its DT_F16 bits set. */
static uint32_t mm_vec4_flags(const matmul_push *p)
{
    uint32_t a[] = {p->a_off, p->a_sb, p->a_sh, p->a_sr};
    uint32_t b[] = {p->b_off, p->b_sb, p->b_sh,
                    p->b_sk == 1 ? p->b_sj : p->b_sk};
    uint32_t f = 0;
    if (!(p->flags & DT_F16(0)) && vec4s(a, 4))
        f |= MHA_VK_F_VEC4_A;
    if (!(p->flags & DT_F16(1)) && (p->b_sk == 1 || p->b_sj == 1) &&
        vec4s(b, 4))
        f |= MHA_VK_F_VEC4_B;
    return f;
}

static mha_status mm_dispatch(mha_vk_device *d, matmul_push *p,
                              const mha_tdesc *const ts[], uint32_t batch)
{
    mm_config c;
    if (!mm_pick(d, p->M, p->N, true, &c))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: no matmul tile fits %s's limits",
                              d->phys->props.deviceName);
    uint32_t spec[8] = {c.wg, c.tm, c.tn, c.tk, c.rm, c.rn, c.direct,
                        c.vw ? c.vw : 4};
    uint32_t g[3] = {(p->N + c.tn - 1) / c.tn, (p->M + c.tm - 1) / c.tm,
                     batch};
    const mha_vk_limits *l = &d->phys->lim;
    if (g[0] > l->max_groups[0] || g[1] > l->max_groups[1] ||
        g[2] > l->max_groups[2])
        return groups_error(d, "matmul");
    uint32_t f16 = f16_bits(ts);
    p->flags |= f16;
    p->flags |= mm_vec4_flags(p);
    return dispatch(d, MHA_VK_K_MATMUL, f16 != 0, spec, 8, ts, p, sizeof *p,
                    g);
}

/* Whether the rows of [B,1,T,N] are one evenly strided sequence. */
static bool rows_flat(const mha_tdesc *t)
{
    return t->ne[2] == 1 || t->nb[0] == t->ne[2] * t->nb[2];
}

static uint32_t row_stride(const mha_tdesc *t)
{
    return (uint32_t)(t->ne[2] == 1 ? t->nb[0] : t->nb[2]);
}

static mha_status run_projection(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *x = &n->src[0], *w = &n->src[1], *b = &n->src[2];
    const mha_tdesc *y = &n->dst;
    matmul_push p = {0};
    mm_operands(&p, x, y);
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {x, w, y};
    p.b_off = eoff(w);
    p.b_sj = st(w, 2);
    p.b_sk = 1;
    p.K = (uint32_t)x->ne[3];
    if (present(b)) {
        p.flags |= MHA_VK_F_BIAS;
        p.bias_off = eoff(b);
        ts[3] = b;
    }
    uint32_t batch = (uint32_t)y->ne[0];
    /* Rows evenly strided over the batch: one [B*T, N] product. */
    if (batch > 1 && rows_flat(x) && rows_flat(y)) {
        p.M *= batch;
        p.a_sr = row_stride(x);
        p.c_sr = row_stride(y);
        p.a_sb = p.c_sb = 0;
        batch = 1;
    }
    p.H = 1;
    return mm_dispatch(d, &p, ts, batch);
}

static mha_status run_scores(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    matmul_push p = {0};
    mm_operands(&p, q, &n->dst);
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {q, k, &n->dst};
    p.b_off = eoff(k);
    p.b_sb = st(k, 0);
    p.b_sh = st(k, 1);
    p.b_sj = st(k, 2);
    p.b_sk = 1;
    p.K = (uint32_t)q->ne[3];
    p.scale = n->params.scale;
    mm_masks(&p, n, ts);
    return mm_dispatch(d, &p, ts, (uint32_t)(n->dst.ne[0] * n->dst.ne[1]));
}

static mha_status run_weighted_sum(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *pm = &n->src[0], *v = &n->src[1];
    matmul_push p = {0};
    mm_operands(&p, pm, &n->dst);
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {pm, v, &n->dst};
    p.b_off = eoff(v);
    p.b_sb = st(v, 0);
    p.b_sh = st(v, 1);
    p.b_sj = 1;           /* j runs over the head dimension */
    p.b_sk = st(v, 2);    /* k over the keys */
    p.K = (uint32_t)pm->ne[3];
    p.mask_cols = 0;
    return mm_dispatch(d, &p, ts, (uint32_t)(n->dst.ne[0] * n->dst.ne[1]));
}

/* Query heads per K/V head (kv_group 0 and 1 both mean one). */
static uint32_t att_group(const mha_node *n)
{
    return n->params.kv_group > 1 ? (uint32_t)n->params.kv_group : 1u;
}

/* The rows of attention's workgroups: (query, head of the K/V group). */
static uint64_t att_rows(const mha_node *n)
{
    return (uint64_t)n->src[MHA_SRC_Q].ne[2] * att_group(n);
}

/* The attention core's sources (SINKS, ALIBI, KV_LEN) into p and ts. */
static void att_core_sources(attention_push *p, const mha_node *n,
                             const mha_tdesc *ts[])
{
    static const struct { int src; uint32_t flag; } core[] = {
        {MHA_SRC_SINKS, MHA_VK_F_SINKS},
        {MHA_SRC_ALIBI, MHA_VK_F_ALIBI},
        {MHA_SRC_KV_LEN, MHA_VK_F_KV_LEN},
    };
    uint32_t *offs[] = {&p->sinks_off, &p->alibi_off, &p->len_off};
    for (int i = 0; i < 3; ++i) {
        const mha_tdesc *t = &n->src[core[i].src];
        if (present(t)) {
            p->flags |= core[i].flag;
            *offs[i] = eoff(t);
            ts[6 + i] = t;
        }
    }
    if (n->params.causal == MHA_CAUSAL_BOTTOM_RIGHT)
        p->flags |= MHA_VK_F_BOTTOM_RIGHT;
}

/* Workgroups a split-K attention aims for: more than small devices have
 * compute units, few enough that each split still walks several tiles. */
#define ATT_SPLIT_GROUPS 128u
#define ATT_MAX_SPLITS 32u

/* Key splits for an attention of `groups` workgroups over `keys` keys in
 * tiles of bc: a power of 2 (a few pipeline variants, whatever the shape),
 * 1 while there are workgroups enough. */
static uint32_t att_splits(uint64_t groups, uint64_t keys, uint32_t bc)
{
    uint32_t ns = 1;
    while (ns < ATT_MAX_SPLITS && groups * ns * 2 <= ATT_SPLIT_GROUPS &&
           keys >= (uint64_t)ns * 4 * bc)
        ns *= 2;
    return ns;
}

/* d->scratch with room for bytes: a bigger one replaces it after the work
 * recorded so far (which may use the old one) has run. One that an
 * application's command buffer recorded may run at any later time, so it
 * is never freed: its block goes at close. */
static mha_status scratch_reserve(mha_vk_device *d, size_t bytes)
{
    if (d->scratch && d->scratch->size >= bytes) {
        d->scratch_recorded |= d->ext_cmd != VK_NULL_HANDLE;
        return MHA_OK;
    }
    mha_status s = mha_vk_flush(d);
    if (s != MHA_OK)
        return s;
    if (d->scratch && !d->scratch_recorded)
        mha_vk_buffer_free(d, d->scratch);
    d->scratch = NULL;
    d->scratch_recorded = d->ext_cmd != VK_NULL_HANDLE;
    return mha_vk_buffer_alloc(d, bytes, &d->scratch);
}

/* The second pass of a split-K attention: partials part -> n's dst. */
static mha_status run_combine(mha_vk_device *d, const mha_node *n,
                              const mha_tdesc *part, uint32_t ns,
                              const attention_push *ap)
{
    const mha_tdesc *o = &n->dst, *lse = &n->extra_dst[MHA_DST_LSE];
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {part, NULL, o};
    ts[6] = present(&n->src[MHA_SRC_SINKS]) ? &n->src[MHA_SRC_SINKS] : NULL;
    uint32_t f16 = f16_bits(ts);
    combine_push p = {
        .part_off = eoff(part), .o_off = eoff(o), .sinks_off = ap->sinks_off,
        .o_sb = st(o, 0), .o_sh = st(o, 1), .o_sr = st(o, 2),
        .H = (uint32_t)o->ne[1], .L = (uint32_t)o->ne[2],
        .total = (uint32_t)count(o),
        .flags = (ap->flags & MHA_VK_F_SINKS) | f16,
    };
    if (present(lse)) { /* [B,H,1,L]: b, h and the query at dims 0, 1, 3 */
        ts[1] = lse;
        p.flags |= MHA_VK_F_LSE;
        p.lse_off = eoff(lse);
        p.lse_sb = st(lse, 0);
        p.lse_sh = st(lse, 1);
        p.lse_sr = st(lse, 3);
    }
    uint32_t g[3], spec[3] = {COPY_WG, (uint32_t)o->ne[3], ns};
    if (!split_groups(d, (p.total + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "attention");
    return dispatch(d, MHA_VK_K_ATTENTION_COMBINE, f16 != 0, spec, 3, ts, &p,
                    sizeof p, g);
}

/* The partials of a split-K attention of n: [B,H,L,ns*(D+2)] in
 * d->scratch, as the output of its first pass. */
static mha_status att_partials(mha_vk_device *d, const mha_node *n,
                               uint32_t ns, mha_tdesc *part)
{
    const mha_tdesc *o = &n->dst;
    int64_t w = (int64_t)ns * (o->ne[3] + 2);
    mha_status s = scratch_reserve(d, (size_t)(count(o) / o->ne[3] * w) * 4);
    if (s != MHA_OK)
        return s;
    *part = (mha_tdesc){.dtype = MHA_F32,
                        .ne = {o->ne[0], o->ne[1], o->ne[2], w},
                        .nb = {o->ne[1] * o->ne[2] * w, o->ne[2] * w, w, 1},
                        .buf = d->scratch};
    return MHA_OK;
}

/* The fused attention's build for c on d: in fp16 arithmetic where K and
 * V are fp16 (their DT_F16 bits in flags) and the device has shaderFloat16
 * (MHA_VULKAN_LIMITS fp16math=0 turns it off). */
static int att_kernel(const mha_vk_device *d, const att_config *c,
                      uint32_t flags)
{
    uint32_t kv = DT_F16(1) | DT_F16(3);
    if (!d->phys->lim.fp16_math || (flags & kv) != kv)
        return c->kernel;
    return c->kernel == MHA_VK_K_ATTENTION_SG ? MHA_VK_K_ATTENTION_SG_H
                                               : MHA_VK_K_ATTENTION_H;
}

/* Whether attention.comp may read K and V as vec4s: fp32, and every
 * offset and stride in whole vec4s. */
static bool att_vec4(const attention_push *p, uint32_t dh)
{
    uint32_t w[] = {p->k_off, p->k_sb, p->k_sh, p->k_sr,
                    p->v_off, p->v_sb, p->v_sh, p->v_sr, dh};
    return !(p->flags & (DT_F16(1) | DT_F16(3))) &&
           vec4s(w, sizeof w / sizeof *w);
}

static mha_status run_attention(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    const mha_tdesc *v = &n->src[MHA_SRC_V], *o = &n->dst;
    att_config c;
    if (!att_pick(d, (uint32_t)q->ne[3], att_rows(n), n->params.causal != 0,
                  &c))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: attention with head size %lld does "
                              "not fit %s's shared memory",
                              (long long)q->ne[3], d->phys->props.deviceName);
    matmul_push mp = {0};
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {q, k, o, v};
    mm_masks(&mp, n, ts);
    uint32_t f16 = f16_bits(ts);
    attention_push p = {
        .q_off = eoff(q), .k_off = eoff(k), .o_off = eoff(o), .v_off = eoff(v),
        .mask_off = mp.mask_off, .kpm_off = mp.kpm_off,
        .L = (uint32_t)q->ne[2], .S = (uint32_t)k->ne[2],
        .q_sb = st(q, 0), .q_sh = st(q, 1), .q_sr = st(q, 2),
        .k_sb = st(k, 0), .k_sh = st(k, 1), .k_sr = st(k, 2),
        .v_sb = st(v, 0), .v_sh = st(v, 1), .v_sr = st(v, 2),
        .o_sb = st(o, 0), .o_sh = st(o, 1), .o_sr = st(o, 2),
        .mask_sb = mp.mask_sb, .mask_sh = mp.mask_sh, .mask_sr = mp.mask_sr,
        .kpm_sb = mp.kpm_sb, .kpm_sh = mp.kpm_sh, .kpm_sr = mp.kpm_sr,
        .scale = n->params.scale, .flags = mp.flags | f16,
        .mask_cols = mp.mask_cols,
    };
    att_core_sources(&p, n, ts);
    uint64_t blocks = (att_rows(n) + c.br - 1) / c.br;
    uint32_t ns = att_splits(blocks * (uint64_t)k->ne[1] * o->ne[0], p.S,
                             c.bc);
    uint32_t g[3] = {(uint32_t)(blocks * ns), (uint32_t)k->ne[1],
                     (uint32_t)o->ne[0]};
    const mha_vk_limits *l = &d->phys->lim;
    if (blocks * ns > l->max_groups[0] || g[1] > l->max_groups[1] ||
        g[2] > l->max_groups[2])
        return groups_error(d, "attention");
    mha_tdesc part;
    bool lse = present(&n->extra_dst[MHA_DST_LSE]);
    if (ns > 1 || lse) { /* the combine pass writes the LSE */
        mha_status s = att_partials(d, n, ns, &part);
        if (s != MHA_OK)
            return s;
        ts[2] = &part; /* the first pass writes partials, in fp32 */
        p.flags = (p.flags & ~DT_F16(2)) | MHA_VK_F_PARTIALS;
        p.o_off = eoff(&part);
        p.o_sb = st(&part, 0);
        p.o_sh = st(&part, 1);
        p.o_sr = st(&part, 2);
    }
    uint32_t softcap;
    memcpy(&softcap, &n->params.softcap, sizeof softcap);
    uint32_t spec[9] = {c.wg, c.dh, c.br, c.bc, c.tpr, att_group(n),
                        (uint32_t)n->params.window,
                        n->params.softcap > 0.0f ? softcap : 0u, ns};
    if (att_vec4(&p, c.dh))
        p.flags |= MHA_VK_F_VEC4;
    mha_tdesc visits = {.dtype = MHA_I32, .ne = {1, 1, 1, 1},
                        .nb = {1, 1, 1, 1}, .buf = d->tile_visits};
    if (d->tile_visits && !ts[8]) { /* the test hook, at KV_LEN's binding */
        ts[8] = &visits;
        p.flags |= MHA_VK_F_VISITS;
    }
    mha_status s = dispatch(d, att_kernel(d, &c, p.flags), f16 != 0, spec, 9,
                            ts, &p, sizeof p, g);
    return s != MHA_OK || !(p.flags & MHA_VK_F_PARTIALS)
               ? s
               : run_combine(d, n, &part, ns, &p);
}

/* ---- rope ------------------------------------------------------------------ */

/* The positions (MHA_I32) checked like an fp32 view of the same size. */
static bool positions_ok(const mha_tdesc *pos)
{
    mha_tdesc as_f32 = *pos;
    as_f32.dtype = MHA_F32;
    return pos->dtype == MHA_I32 && tensor_ok(&as_f32);
}

static bool supports_rope(const mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    const mha_tdesc *pos = &n->src[MHA_SRC_ROPE_POS];
    return data_ok(d, x) && data_ok(d, &n->dst) && count(x) <= UINT32_MAX &&
           mha_rope_is_valid(n) &&
           (n->params.rope_dims == 0 || positions_ok(pos));
}

static mha_status run_rope(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    const mha_tdesc *pos = &n->src[MHA_SRC_ROPE_POS];
    const mha_op_params *op = &n->params;
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {x, &n->dst,
                                            op->rope_dims ? pos : NULL};
    uint32_t f16 = f16_bits(ts);
    uint32_t r = (uint32_t)op->rope_dims;
    rope_push p = {.src_off = eoff(x), .dst_off = eoff(&n->dst),
                   .flags = (op->rope_style == MHA_ROPE_GPTJ ? MHA_VK_F_GPTJ
                                                            : 0u) | f16,
                   .rope_dims = r, .log2_theta = log2f(op->rope_theta),
                   .pos_scale = op->rope_pos_scale};
    for (int i = 0; i < 4; ++i) {
        p.ne[i] = (uint32_t)x->ne[i];
        p.src_nb[i] = st(x, i);
        p.dst_nb[i] = st(&n->dst, i);
    }
    if (r) {
        p.pos_off = eoff(pos);
        p.pos_sb = st(pos, 2);
        p.pos_st = st(pos, 3);
    }
    uint64_t total = (uint64_t)(x->ne[0] * x->ne[1] * x->ne[2]) *
                     (r / 2 + p.ne[3] - r);
    if (total > UINT32_MAX)
        return groups_error(d, "rope");
    p.total = (uint32_t)total;
    uint32_t g[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (total + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "rope");
    return dispatch(d, MHA_VK_K_ROPE, f16 != 0, spec, 1, ts, &p, sizeof p, g);
}

/* ---- the training ops (issue 18) ------------------------------------------ */

MHA_PUSH_BLOCK(gemm_push, MHA_GEMM_PUSH)
_Static_assert(sizeof(gemm_push) <= MHA_VK_PUSH_BYTES, "push constants");
MHA_PUSH_BLOCK(sum_rows_push, MHA_SUM_ROWS_PUSH)
_Static_assert(sizeof(sum_rows_push) <= MHA_VK_PUSH_BYTES, "push constants");
MHA_PUSH_BLOCK(adamw_push, MHA_ADAMW_PUSH)
_Static_assert(sizeof(adamw_push) <= MHA_VK_PUSH_BYTES, "push constants");
MHA_PUSH_BLOCK(att_bwd_pre_push, MHA_ATT_BWD_PRE_PUSH)
_Static_assert(sizeof(att_bwd_pre_push) <= MHA_VK_PUSH_BYTES,
               "push constants");
MHA_PUSH_BLOCK(att_bwd_push, MHA_ATT_BWD_PUSH)
_Static_assert(sizeof(att_bwd_push) <= MHA_VK_PUSH_BYTES, "push constants");

/* llvmpipe (lavapipe) ends a shader invocation's loops once they have run
 * 65535 iterations in all (gallivm's loop limiter, one count for every
 * loop of the shader), which a long reduction reaches: MATMUL's K and
 * SUM_ROWS' rows are cut into dispatches of at most these many, each after
 * the first adding into dst. Elsewhere the cut costs one more read and
 * write of dst per chunk. */
#define MM_K_CHUNK 8192u
#define SUM_ROWS_CHUNK 32768u

/* Whether operand extent a broadcasts to or equals extent n. */
static bool outer_ok(int64_t a, int64_t n) { return a == n || a == 1; }

/* MATMUL: fp32 A [.,.,M,K] and B [.,.,K,N] at any strides (outer extents
 * dst's or 1), dst with unit inner stride; a batch of workgroups per
 * (b, h) within the device's z limit. */
static bool supports_gemm(const mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *a = &n->src[MHA_SRC_MM_A], *b = &n->src[MHA_SRC_MM_B];
    const mha_tdesc *c = &n->dst;
    mm_config cfg;
    if (!tensor_ok(a) || !tensor_ok(b) || !tensor_ok(c) ||
        !inner_contiguous(c) || !mm_pick(d, 1, 1, false, &cfg))
        return false;
    for (int i = 0; i < 2; ++i)
        if (!outer_ok(a->ne[i], c->ne[i]) || !outer_ok(b->ne[i], c->ne[i]))
            return false;
    return a->ne[2] == c->ne[2] && b->ne[3] == c->ne[3] &&
           a->ne[3] == b->ne[2] &&
           (uint64_t)(c->ne[0] * c->ne[1]) <= d->phys->lim.max_groups[2];
}

static mha_status run_gemm(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *a = &n->src[MHA_SRC_MM_A], *b = &n->src[MHA_SRC_MM_B];
    const mha_tdesc *c = &n->dst;
    gemm_push p = {
        .a_off = eoff(a), .b_off = eoff(b), .c_off = eoff(c),
        .M = (uint32_t)c->ne[2], .N = (uint32_t)c->ne[3],
        .K = (uint32_t)a->ne[3], .H = (uint32_t)c->ne[1],
        .a_sb = st(a, 0), .a_sh = st(a, 1), .a_sm = st(a, 2), .a_sk = st(a, 3),
        .b_sb = st(b, 0), .b_sh = st(b, 1), .b_sk = st(b, 2), .b_sn = st(b, 3),
        .c_sb = st(c, 0), .c_sh = st(c, 1), .c_sm = st(c, 2),
        .flags = n->params.accumulate ? MHA_VK_F_ACCUMULATE : 0u,
    };
    mm_config cfg;
    if (!mm_pick(d, p.M, p.N, false, &cfg))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: no matmul tile fits %s's limits",
                              d->phys->props.deviceName);
    uint32_t spec[6] = {cfg.wg, cfg.tm, cfg.tn, cfg.tk, cfg.rm, cfg.rn};
    uint32_t g[3] = {(p.N + cfg.tn - 1) / cfg.tn, (p.M + cfg.tm - 1) / cfg.tm,
                     (uint32_t)(c->ne[0] * c->ne[1])};
    if (g[0] > d->phys->lim.max_groups[0] || g[1] > d->phys->lim.max_groups[1])
        return groups_error(d, "matmul");
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {a, b, c};
    uint32_t K = p.K, a0 = p.a_off, b0 = p.b_off;
    mha_status s = MHA_OK;
    for (uint32_t k0 = 0; s == MHA_OK && (k0 < K || k0 == 0);
         k0 += MM_K_CHUNK) {
        p.K = K - k0 < MM_K_CHUNK ? K - k0 : MM_K_CHUNK;
        p.a_off = a0 + k0 * p.a_sk;
        p.b_off = b0 + k0 * p.b_sk;
        if (k0)
            p.flags = MHA_VK_F_ACCUMULATE;
        s = dispatch(d, MHA_VK_K_GEMM_STRIDED, false, spec, 6, ts, &p,
                     sizeof p, g);
    }
    return s;
}

/* SUM_ROWS: fp32 src [A,B,M,N] at any strides into dst [A,B,1,N]. */
static bool supports_sum_rows(const mha_node *n)
{
    const mha_tdesc *s = &n->src[0], *t = &n->dst;
    return tensor_ok(s) && tensor_ok(t) && t->ne[0] == s->ne[0] &&
           t->ne[1] == s->ne[1] && t->ne[2] == 1 && t->ne[3] == s->ne[3] &&
           count(t) <= UINT32_MAX;
}

static mha_status run_sum_rows(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *s = &n->src[0], *t = &n->dst;
    sum_rows_push p = {.src_off = eoff(s), .dst_off = eoff(t),
                       .flags = n->params.accumulate ? MHA_VK_F_ACCUMULATE
                                                     : 0u,
                       .total = (uint32_t)count(t)};
    for (int i = 0; i < 4; ++i) {
        p.ne[i] = (uint32_t)s->ne[i];
        p.src_nb[i] = st(s, i);
        p.dst_nb[i] = st(t, i);
    }
    uint32_t g[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (p.total + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "sum_rows");
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {s, t};
    uint32_t rows = p.ne[2], off = p.src_off;
    mha_status r = MHA_OK;
    for (uint32_t m0 = 0; r == MHA_OK && (m0 < rows || m0 == 0);
         m0 += SUM_ROWS_CHUNK) {
        p.ne[2] = rows - m0 < SUM_ROWS_CHUNK ? rows - m0 : SUM_ROWS_CHUNK;
        p.src_off = off + m0 * p.src_nb[2];
        if (m0)
            p.flags = MHA_VK_F_ACCUMULATE;
        r = dispatch(d, MHA_VK_K_SUM_ROWS, false, spec, 1, ts, &p, sizeof p,
                     g);
    }
    return r;
}

/* A contiguous fp32 [1,1,1,n] vector (ADAMW's tensors). */
static bool vector_ok(const mha_tdesc *t, int64_t n)
{
    return tensor_ok(t) && inner_contiguous(t) && t->ne[0] == 1 &&
           t->ne[1] == 1 && t->ne[2] == 1 && t->ne[3] == n;
}

static bool supports_adamw(const mha_node *n)
{
    int64_t len = n->dst.ne[3];
    return vector_ok(&n->dst, len) && vector_ok(&n->src[MHA_SRC_ADAM_G], len) &&
           vector_ok(&n->src[MHA_SRC_ADAM_M], len) &&
           vector_ok(&n->src[MHA_SRC_ADAM_V], len);
}

static mha_status run_adamw(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *g = &n->src[MHA_SRC_ADAM_G], *m = &n->src[MHA_SRC_ADAM_M];
    const mha_tdesc *v = &n->src[MHA_SRC_ADAM_V], *w = &n->dst;
    const mha_op_params *o = &n->params;
    adamw_push p = {.p_off = eoff(w), .g_off = eoff(g), .m_off = eoff(m),
                    .v_off = eoff(v), .n = (uint32_t)w->ne[3],
                    .lr = o->adam_lr, .beta1 = o->adam_beta1,
                    .beta2 = o->adam_beta2, .eps = o->adam_eps,
                    .weight_decay = o->adam_weight_decay,
                    .bc1 = o->adam_bc1, .bc2 = o->adam_bc2};
    uint32_t gr[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (p.n + COPY_WG - 1) / COPY_WG, gr))
        return groups_error(d, "adamw");
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {g, w, m, v};
    return dispatch(d, MHA_VK_K_ADAMW, false, spec, 1, ts, &p, sizeof p, gr);
}

typedef struct bwd_config {
    uint32_t wg, dh, bo, bs, tpr;
} bwd_config;

/* Vec4 columns of its accumulators an invocation of
 * attention_backward.comp aims to hold (two accumulators: 32 floats). */
#define BWD_VEC4S 4u

/* Shared memory of attention_backward.comp: own and streamed rows (two
 * tensors each, padded by a vec4), the tile's p and dS, LSE and D. */
static uint64_t bwd_smem(const bwd_config *c)
{
    uint32_t d4 = (c->dh + 3) / 4;
    uint32_t rs = (d4 + c->tpr - 1) / c->tpr * c->tpr + 1;
    return (uint64_t)(c->bo + c->bs) * 2 * rs * 16 +
           ((uint64_t)c->bs * c->bo * 2 + (c->bs + c->bo) * 2) * 4;
}

/* The backward's tiles for head size dh: TPR invocations per own row, so
 * each holds at most BWD_VEC4S vec4 columns; own rows filling a workgroup
 * of up to 128 invocations; streamed tiles as tall; then the tiles halved
 * (streamed first) until they fit the shared memory. */
static bool bwd_pick(const mha_vk_device *d, uint32_t dh, bwd_config *c)
{
    if (dh == 0 || dh > 256)
        return false;
    uint32_t target = pow2_floor(max_wg(d) < 128 ? max_wg(d) : 128);
    uint32_t d4 = (dh + 3) / 4, tpr = 1;
    while ((d4 + tpr - 1) / tpr > BWD_VEC4S && tpr < target)
        tpr *= 2;
    *c = (bwd_config){0, dh, target / tpr, target / tpr, tpr};
    while (bwd_smem(c) > d->phys->lim.shared_bytes) {
        if (c->bs >= c->bo && c->bs > 1)
            c->bs /= 2;
        else if (c->bo > 1)
            c->bo /= 2;
        else
            return false;
    }
    c->wg = c->bo * c->tpr;
    return true;
}

/* Q, K, V, O, dO and the gradients: fp32 with unit inner stride. */
static bool bwd_tensors_ok(const mha_node *n)
{
    const mha_tdesc *t[] = {&n->src[MHA_SRC_Q], &n->src[MHA_SRC_K],
                            &n->src[MHA_SRC_V], &n->src[MHA_SRC_BWD_O],
                            &n->src[MHA_SRC_BWD_DO], &n->dst,
                            &n->extra_dst[MHA_DST_DK],
                            &n->extra_dst[MHA_DST_DV]};
    for (size_t i = 0; i < sizeof t / sizeof *t; ++i)
        if (!tensor_ok(t[i]) || !inner_contiguous(t[i]))
            return false;
    return true;
}

/* ATTENTION_BACKWARD: the nn.MHA subset (core/backend.h), head sizes up to
 * 256 whose tiles fit, per-item dispatches of H x row blocks. */
static bool supports_attention_backward(const mha_vk_device *d,
                                        const mha_node *n)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    const mha_op_params *a = &n->params;
    bwd_config c;
    if (a->kv_group > 1 || a->window < 0 || a->softcap < 0.0f ||
        a->causal == MHA_CAUSAL_BOTTOM_RIGHT || !bwd_tensors_ok(n) ||
        !tensor_ok(&n->src[MHA_SRC_BWD_LSE]) ||
        !optional_ok(&n->src[MHA_SRC_BWD_ALIBI]) ||
        !optional_ok(&n->src[MHA_SRC_MASK]) ||
        !optional_ok(&n->src[MHA_SRC_KPM]) || q->ne[3] > 256 ||
        !bwd_pick(d, (uint32_t)q->ne[3], &c))
        return false;
    const uint32_t *mg = d->phys->lim.max_groups;
    int64_t rows = q->ne[2] > k->ne[2] ? q->ne[2] : k->ne[2];
    return k->ne[3] == q->ne[3] && n->src[MHA_SRC_V].ne[2] == k->ne[2] &&
           n->src[MHA_SRC_BWD_LSE].ne[3] == q->ne[2] &&
           (rows + c.bo - 1) / c.bo <= mg[0] && q->ne[1] <= mg[1] &&
           count(q) / q->ne[3] * 3 <= UINT32_MAX;
}

/* The (LSE, D, ALiBi slope) triples of attention_backward_pre.comp:
 * [B,H,L,3] in d->scratch, written from n's LSE, O, dO and slopes. */
static mha_status run_bwd_pre(mha_vk_device *d, const mha_node *n,
                              mha_tdesc *ld)
{
    const mha_tdesc *o = &n->src[MHA_SRC_BWD_O], *dO = &n->src[MHA_SRC_BWD_DO];
    const mha_tdesc *lse = &n->src[MHA_SRC_BWD_LSE];
    int64_t rows = o->ne[0] * o->ne[1] * o->ne[2];
    const mha_tdesc *al = &n->src[MHA_SRC_BWD_ALIBI];
    mha_status s = scratch_reserve(d, (size_t)rows * 3 * 4);
    if (s != MHA_OK)
        return s;
    *ld = (mha_tdesc){.dtype = MHA_F32, .ne = {1, 1, rows, 3},
                      .nb = {rows * 3, rows * 3, 3, 1}, .buf = d->scratch};
    att_bwd_pre_push p = {
        .ld_off = eoff(ld), .o_off = eoff(o), .do_off = eoff(dO),
        .lse_off = eoff(lse), .o_sb = st(o, 0), .o_sh = st(o, 1),
        .o_sr = st(o, 2), .do_sb = st(dO, 0), .do_sh = st(dO, 1),
        .do_sr = st(dO, 2), .lse_sb = st(lse, 0), .lse_sh = st(lse, 1),
        .lse_si = st(lse, 3), .H = (uint32_t)o->ne[1],
        .L = (uint32_t)o->ne[2], .D = (uint32_t)o->ne[3],
        .rows = (uint32_t)rows, .alibi = present(al),
    };
    if (present(al)) {
        p.al_off = eoff(al);
        p.al_si = st(al, 3);
    }
    uint32_t g[3], spec[1] = {COPY_WG};
    if (!split_groups(d, (p.rows + COPY_WG - 1) / COPY_WG, g))
        return groups_error(d, "attention_backward");
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {o, dO, lse, ld,
                                            present(al) ? al : NULL};
    return dispatch(d, MHA_VK_K_ATT_BWD_PRE, false, spec, 1, ts, &p,
                    sizeof p, g);
}

/* The push constants of batch item b's dispatches (MODE 0's outputs). */
static att_bwd_push bwd_push(const mha_node *n, const mha_tdesc *ld,
                             int64_t b)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    const mha_tdesc *v = &n->src[MHA_SRC_V], *dO = &n->src[MHA_SRC_BWD_DO];
    const mha_tdesc *dk = &n->extra_dst[MHA_DST_DK];
    const mha_tdesc *dv = &n->extra_dst[MHA_DST_DV];
    const mha_tdesc *m = &n->src[MHA_SRC_MASK], *kp = &n->src[MHA_SRC_KPM];
    uint32_t bb = (uint32_t)b, L = (uint32_t)q->ne[2];
    att_bwd_push p = {
        .q_off = eoff(q) + bb * st(q, 0), .k_off = eoff(k) + bb * st(k, 0),
        .v_off = eoff(v) + bb * st(v, 0), .do_off = eoff(dO) + bb * st(dO, 0),
        .ld_off = eoff(ld) + bb * (uint32_t)q->ne[1] * L * 3,
        .out_off = eoff(dk) + bb * st(dk, 0),
        .out2_off = eoff(dv) + bb * st(dv, 0),
        .q_sh = st(q, 1), .q_sr = st(q, 2), .k_sh = st(k, 1), .k_sr = st(k, 2),
        .v_sh = st(v, 1), .v_sr = st(v, 2), .do_sh = st(dO, 1),
        .do_sr = st(dO, 2), .out_sh = st(dk, 1), .out_sr = st(dk, 2),
        .out2_sh = st(dv, 1), .out2_sr = st(dv, 2),
        .L = L, .S = (uint32_t)k->ne[2], .scale = n->params.scale,
        .flags = n->params.causal ? MHA_VK_F_CAUSAL : 0u,
    };
    int64_t mc = n->params.mask_cols;
    p.mask_cols = mc < 0 ? 0 : mc > UINT32_MAX ? UINT32_MAX : (uint32_t)mc;
    if (present(m)) {
        p.flags |= MHA_VK_F_MASK;
        p.mask_off = eoff(m) + bb * st(m, 0);
        p.mask_sh = st(m, 1);
        p.mask_sr = st(m, 2);
    }
    if (present(kp)) {
        p.flags |= MHA_VK_F_KPM;
        p.kpm_off = eoff(kp) + bb * st(kp, 0);
        p.kpm_sh = st(kp, 1);
        p.kpm_sr = st(kp, 2);
    }
    return p;
}

/* Streamed rows of one attention_backward.comp dispatch: as many tiles as
 * keep an invocation's loop iterations (staging, pairs and their head-long
 * dot products, the accumulation; estimated here, lavapipe counts about a
 * third more) under half of lavapipe's 65535 (see MM_K_CHUNK). */
static uint32_t bwd_chunk(const bwd_config *c)
{
    uint32_t d4 = (c->dh + 3) / 4;
    uint32_t d4p = (d4 + c->tpr - 1) / c->tpr * c->tpr;
    uint32_t pairs = (c->bs * c->bo + c->wg - 1) / c->wg;
    uint32_t tile = 4 + (c->bs * d4p + c->wg - 1) / c->wg +
                    pairs * (d4p + 1) + c->bs;
    uint32_t tiles = 32768 / tile;
    return (tiles ? tiles : 1) * c->bs;
}

/* ATTENTION_BACKWARD: the (LSE, D, slope) pass, then per batch item dK and dV
 * (MODE 0, workgroups over key blocks) and dQ (MODE 1, over query
 * blocks), the streamed rows in chunks of bwd_chunk. */
static mha_status run_attention_backward(mha_vk_device *d, const mha_node *n)
{
    const mha_tdesc *q = &n->src[MHA_SRC_Q], *k = &n->src[MHA_SRC_K];
    bwd_config c;
    if (!bwd_pick(d, (uint32_t)q->ne[3], &c))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: attention backward with head size "
                              "%lld does not fit %s's shared memory",
                              (long long)q->ne[3], d->phys->props.deviceName);
    mha_tdesc ld;
    uint32_t cap;
    memcpy(&cap, &n->params.softcap, sizeof cap);
    mha_status s = run_bwd_pre(d, n, &ld);
    const mha_tdesc *ts[MHA_VK_BINDINGS] = {
        q, k, &n->src[MHA_SRC_V], &n->src[MHA_SRC_BWD_DO],
        present(&n->src[MHA_SRC_MASK]) ? &n->src[MHA_SRC_MASK] : NULL,
        present(&n->src[MHA_SRC_KPM]) ? &n->src[MHA_SRC_KPM] : NULL, &ld};
    for (int64_t b = 0; b < q->ne[0] && s == MHA_OK; ++b) {
        att_bwd_push p = bwd_push(n, &ld, b);
        for (uint32_t mode = 0; mode < 2 && s == MHA_OK; ++mode) {
            uint32_t rows = mode ? p.L : p.S;
            uint32_t spec[8] = {c.wg,   c.dh, c.bo, c.bs, c.tpr, mode,
                                (uint32_t)n->params.window, cap};
            uint32_t g[3] = {(rows + c.bo - 1) / c.bo, (uint32_t)q->ne[1], 1};
            ts[7] = mode ? &n->dst : &n->extra_dst[MHA_DST_DK];
            /* dV in both modes: binding 8 is declared written, so the
             * shared dummy buffer must not stand in for it */
            ts[8] = &n->extra_dst[MHA_DST_DV];
            if (mode) {
                p.out_off = eoff(&n->dst) + (uint32_t)b * st(&n->dst, 0);
                p.out_sh = st(&n->dst, 1);
                p.out_sr = st(&n->dst, 2);
            }
            uint32_t flags = p.flags, chunk = bwd_chunk(&c);
            uint32_t nstr = mode ? p.S : p.L;
            for (p.s_lo = 0; s == MHA_OK && (p.s_lo < nstr || !p.s_lo);
                 p.s_lo += chunk) {
                p.s_hi = nstr - p.s_lo < chunk ? nstr : p.s_lo + chunk;
                p.flags = flags | (p.s_lo ? MHA_VK_F_ACCUMULATE : 0u);
                s = dispatch(d, MHA_VK_K_ATT_BWD, false, spec, 8, ts, &p,
                             sizeof p, g);
            }
            p.flags = flags;
        }
    }
    return s;
}

/* ---- supports / run ----------------------------------------------------- */

static bool supports_matmul(const mha_vk_device *d, const mha_node *n)
{
    mm_config c;
    if (!mm_pick(d, 1, 1, true, &c))
        return false;
    const mha_tdesc *a = &n->src[0], *b = &n->src[1];
    if (!data_ok(d, a) || !data_ok(d, b) || !data_ok(d, &n->dst) ||
        !inner_contiguous(a) || !inner_contiguous(&n->dst))
        return false;
    if (n->op == MHA_OP_PROJECTION)
        return inner_contiguous(b) && a->ne[1] == 1 &&
               (!present(&n->src[2]) ||
                (data_ok(d, &n->src[2]) && inner_contiguous(&n->src[2])));
    if (n->op == MHA_OP_SCORES)
        return inner_contiguous(b) && optional_ok(&n->src[MHA_SRC_MASK]) &&
               optional_ok(&n->src[MHA_SRC_KPM]);
    return true; /* WEIGHTED_SUM: V is read with any strides */
}

/* The attention core's parameters and sources: K/V heads that divide the
 * query heads by kv_group, contiguous SINKS/ALIBI (f32) and KV_LEN (i32). */
static bool supports_attention_core(const mha_node *n)
{
    const mha_op_params *a = &n->params;
    uint32_t g = att_group(n);
    int64_t hkv = n->src[MHA_SRC_K].ne[1];
    return a->window >= 0 && !(a->softcap < 0.0f) && isfinite(a->softcap) &&
           hkv * g == n->dst.ne[1] && n->src[MHA_SRC_V].ne[1] == hkv &&
           att_rows(n) <= UINT32_MAX &&
           optional_ok_dt(&n->src[MHA_SRC_SINKS], MHA_F32) &&
           optional_ok_dt(&n->src[MHA_SRC_ALIBI], MHA_F32) &&
           optional_ok_dt(&n->src[MHA_SRC_KV_LEN], MHA_I32);
}

static bool supports_attention(const mha_vk_device *d, const mha_node *n)
{
    att_config c;
    const mha_tdesc *q = &n->src[MHA_SRC_Q];
    if (q->ne[3] > UINT32_MAX || !supports_attention_core(n) ||
        !att_pick(d, (uint32_t)q->ne[3], att_rows(n), n->params.causal != 0,
                  &c))
        return false;
    const mha_tdesc *t[] = {q, &n->src[MHA_SRC_K], &n->src[MHA_SRC_V],
                            &n->dst};
    for (int i = 0; i < 4; ++i)
        if (!data_ok(d, t[i]) || !inner_contiguous(t[i]))
            return false;
    const mha_tdesc *lse = &n->extra_dst[MHA_DST_LSE];
    return optional_ok(&n->src[MHA_SRC_MASK]) &&
           optional_ok(&n->src[MHA_SRC_KPM]) &&
           (!present(lse) || tensor_ok(lse)); /* f32, any strides */
}

static bool supports_op(mha_vk_device *d, const mha_node *n);

static void log_tensor(mha_vk_device *d, const char *what, const mha_tdesc *t)
{
    mha_host_log(d->host, MHA_LOG_DEBUG,
                 "  %s dtype %d ne [%lld,%lld,%lld,%lld] nb [%lld,%lld,%lld,"
                 "%lld] offset %zu",
                 what, (int)t->dtype, (long long)t->ne[0], (long long)t->ne[1],
                 (long long)t->ne[2], (long long)t->ne[3], (long long)t->nb[0],
                 (long long)t->nb[1], (long long)t->nb[2], (long long)t->nb[3],
                 t->offset);
}

bool mha_vk_supports(mha_vk_device *d, const mha_node *n)
{
    if (supports_op(d, n))
        return true;
    mha_host_log(d->host, MHA_LOG_DEBUG, "vulkan: declining a %s node:",
                 mha_op_name(n->op));
    for (int i = 0; i < mha_op_source_count(n->op); ++i)
        if (present(&n->src[i]))
            log_tensor(d, "src", &n->src[i]);
    log_tensor(d, "dst", &n->dst);
    for (int i = 0; i < MHA_MAX_EXTRA_DST; ++i)
        if (present(&n->extra_dst[i]))
            log_tensor(d, "extra dst", &n->extra_dst[i]);
    return false;
}

static bool supports_op(mha_vk_device *d, const mha_node *n)
{
    switch (n->op) {
    case MHA_OP_PROJECTION:
    case MHA_OP_SCORES:
    case MHA_OP_WEIGHTED_SUM:
        return supports_matmul(d, n);
    case MHA_OP_ATTENTION:
        return supports_attention(d, n);
    case MHA_OP_FILL_ROWS:
        return data_ok(d, &n->dst) && count(&n->dst) <= UINT32_MAX &&
               (!present(&n->src[0]) || data_ok(d, &n->src[0]));
    case MHA_OP_MEAN_HEADS:
        return tensor_ok(&n->src[0]) && tensor_ok(&n->dst) &&
               count(&n->dst) <= UINT32_MAX;
    case MHA_OP_SOFTMAX:
        return tensor_ok(&n->src[0]) && tensor_ok(&n->dst) &&
               inner_contiguous(&n->src[0]) && inner_contiguous(&n->dst);
    case MHA_OP_ROPE:
        return supports_rope(d, n);
    case MHA_OP_MUL:
        return data_ok(d, &n->src[MHA_SRC_MUL_X]) && data_ok(d, &n->dst) &&
               tensor_ok(&n->src[MHA_SRC_MUL_F]) &&
               count(&n->dst) <= UINT32_MAX;
    case MHA_OP_HEAD_STATS:
        return supports_head_stats(d, n);
    case MHA_OP_MATMUL:
        return supports_gemm(d, n);
    case MHA_OP_SUM_ROWS:
        return supports_sum_rows(n);
    case MHA_OP_ATTENTION_BACKWARD:
        return supports_attention_backward(d, n);
    case MHA_OP_ADAMW:
        return supports_adamw(n);
    case MHA_OP_COUNT:
        break;
    }
    return false;
}

mha_status mha_vk_run(mha_vk_device *d, const mha_node *n)
{
    mha_status s = mha_vk_check(d);
    if (s != MHA_OK)
        return s;
    if (!mha_vk_supports(d, n))
        return mha_host_error(d->host, MHA_UNSUPPORTED,
                              "vulkan: %s node not supported on %s (dtype, "
                              "strides or size)",
                              mha_op_name(n->op), d->phys->props.deviceName);
    for (int i = 0; i < MHA_MAX_SRC && s == MHA_OK; ++i)
        if (i < mha_op_source_count(n->op) && present(&n->src[i]))
            s = in_bounds(d, &n->src[i]);
    if (s == MHA_OK)
        s = in_bounds(d, &n->dst);
    for (int i = 0; i < MHA_MAX_EXTRA_DST && s == MHA_OK; ++i)
        if (present(&n->extra_dst[i]))
            s = in_bounds(d, &n->extra_dst[i]);
    if (s != MHA_OK)
        return s;
    switch (n->op) {
    case MHA_OP_PROJECTION: return run_projection(d, n);
    case MHA_OP_SCORES: return run_scores(d, n);
    case MHA_OP_WEIGHTED_SUM: return run_weighted_sum(d, n);
    case MHA_OP_ATTENTION: return run_attention(d, n);
    case MHA_OP_FILL_ROWS: return run_copy(d, &n->src[0], &n->dst);
    case MHA_OP_MEAN_HEADS: return run_mean_heads(d, &n->src[0], &n->dst);
    case MHA_OP_SOFTMAX: return run_softmax(d, &n->src[0], &n->dst);
    case MHA_OP_ROPE: return run_rope(d, n);
    case MHA_OP_MUL: return run_mul(d, n);
    case MHA_OP_HEAD_STATS: return run_head_stats(d, &n->src[0], &n->dst);
    case MHA_OP_MATMUL: return run_gemm(d, n);
    case MHA_OP_SUM_ROWS: return run_sum_rows(d, n);
    case MHA_OP_ATTENTION_BACKWARD: return run_attention_backward(d, n);
    case MHA_OP_ADAMW: return run_adamw(d, n);
    case MHA_OP_COUNT:
        break;
    }
    return mha_host_error(d->host, MHA_UNSUPPORTED, "vulkan: op %d",
                          (int)n->op);
}
