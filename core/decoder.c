/* decoder.c: mha_decoder, the decoder self-attention layer (Llama and its
 * relatives) over the op list: PROJECTION for q, k, v; ROPE on q in place
 * and on k on its way into the KV cache (v goes in by ROPE's copy form);
 * one ATTENTION node of the attention core (GQA, bottom-right causal,
 * window, softcap, ALiBi, sinks) over the cache with the per-sequence
 * lengths as its KV_LEN source; PROJECTION to the output. The nodes are
 * built for each call on the stack from the cache's current lengths (the
 * lengths are data: offsets and a device buffer, never a plan's shape);
 * the only state is a scratch arena sized by a power-of-2 bucket of B*T,
 * so a decode step after the first allocates nothing. The same walk,
 * without the wait, is what mha_vulkan_decoder_record records. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "decoder.h"
#include "interop.h"
#include "gates.h"
#include "kv_cache.h"
#include "tensor.h"

#define MAX_HEAD_DIM 256
#define ARENA_ALIGN 256
/* The largest rotary position: 2^24 - 1, the last integer from which fp32
 * (the kernels' angle pos * inv_freq) still holds every position exactly. */
#define MAX_POSITION 16777215

/* ---- config ---------------------------------------------------------------- */

mha_status mha_decoder_config_init_sized(mha_decoder_config *config,
                                         size_t struct_size,
                                         int64_t embed_dim, int64_t num_heads)
{
    if (mha_struct_init(config, struct_size, sizeof *config) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    config->embed_dim = embed_dim;
    config->num_heads = num_heads;
    config->num_kv_heads = num_heads;
    config->head_dim = num_heads > 0 && embed_dim % num_heads == 0
                           ? embed_dim / num_heads
                           : 0;
    config->rope_style = MHA_ROPE_NEOX;
    config->rope_theta = 10000.0f;
    config->rope_scaling = 1.0f;
    return MHA_OK;
}

static mha_status bad(mha_context *ctx, const char *what, long long v,
                      const char *expected)
{
    return mha_error(ctx, MHA_INVALID_ARGUMENT,
                     "mha_decoder_create: %s is %lld; expected %s", what, v,
                     expected);
}

static mha_status check_config(mha_context *ctx, const mha_decoder_config *c)
{
    if (c->embed_dim <= 0 || c->embed_dim > INT32_MAX)
        return bad(ctx, "embed_dim", (long long)c->embed_dim, "1 to 2^31-1");
    if (c->num_heads <= 0 || c->num_heads > 4096)
        return bad(ctx, "num_heads", (long long)c->num_heads, "1 to 4096");
    if (c->num_kv_heads <= 0 || c->num_heads % c->num_kv_heads != 0)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_decoder_create: num_heads %lld is not a "
                         "multiple of num_kv_heads %lld",
                         (long long)c->num_heads, (long long)c->num_kv_heads);
    if (c->head_dim <= 0 || c->head_dim > MAX_HEAD_DIM)
        return bad(ctx, "head_dim", (long long)c->head_dim, "1 to 256");
    if (c->rope_style != MHA_ROPE_NONE && c->rope_style != MHA_ROPE_NEOX &&
        c->rope_style != MHA_ROPE_GPTJ)
        return bad(ctx, "rope_style", (long long)c->rope_style,
                   "an mha_rope_style");
    if (c->rope_dims < 0 || c->rope_dims % 2 || c->rope_dims > c->head_dim)
        return bad(ctx, "rope_dims", (long long)c->rope_dims,
                   "even, 0 to head_dim");
    if (c->rope_style != MHA_ROPE_NONE &&
        (!(c->rope_theta > 0.0f) || !(c->rope_scaling > 0.0f)))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_decoder_create: rope_theta %g and rope_scaling "
                         "%g must be > 0",
                         (double)c->rope_theta, (double)c->rope_scaling);
    if (c->window < 0 || c->window > INT32_MAX)
        return bad(ctx, "window", (long long)c->window, "0 to 2^31-1");
    if (!(c->softcap >= 0.0f) || !(c->scale >= 0.0f))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_decoder_create: softcap %g and scale %g must "
                         "be >= 0",
                         (double)c->softcap, (double)c->scale);
    return MHA_OK;
}

/* ALiBi slopes (Press et al., as HF's build_alibi_tensor): 2^(-8(h+1)/n)
 * for the largest power of 2 n <= H, then every other slope of 2n heads. */
static void alibi_slopes(int64_t H, float *out)
{
    int64_t n = 1;
    while (n * 2 <= H)
        n *= 2;
    for (int64_t h = 0; h < H; h++)
        out[h] = h < n ? (float)exp2(-8.0 * (double)(h + 1) / (double)n)
                       : (float)exp2(-4.0 * (double)(2 * (h - n) + 1) /
                                     (double)n);
}

/* ---- weights ------------------------------------------------------------------ */

int mha_decoder_weights(const mha_decoder *l, mha_dweight *out)
{
    const mha_decoder_config *c = &l->cfg;
    int64_t E = c->embed_dim, q = c->num_heads * c->head_dim;
    int64_t kv = c->num_kv_heads * c->head_dim;
    const mha_dweight all[] = {
        {"q_proj.weight", MHA_D_WQ, 2, {q, E}},
        {"k_proj.weight", MHA_D_WK, 2, {kv, E}},
        {"v_proj.weight", MHA_D_WV, 2, {kv, E}},
        {"o_proj.weight", MHA_D_WO, 2, {E, q}},
        {"q_proj.bias", MHA_D_BQ, 1, {q, 0}},
        {"k_proj.bias", MHA_D_BK, 1, {kv, 0}},
        {"v_proj.bias", MHA_D_BV, 1, {kv, 0}},
        {"o_proj.bias", MHA_D_BO, 1, {E, 0}},
        {"sinks", MHA_D_SINKS, 1, {c->num_heads, 0}},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (l->wlen[all[i].slot])
            out[n++] = all[i];
    return n;
}

/* Slot sizes (0: not configured) and their buffers. */
static mha_status alloc_weights(mha_decoder *l)
{
    const mha_decoder_config *c = &l->cfg;
    int64_t E = c->embed_dim, q = c->num_heads * c->head_dim;
    int64_t kv = c->num_kv_heads * c->head_dim;
    size_t len[MHA_DSLOT_COUNT] = {
        [MHA_D_WQ] = (size_t)(q * E), [MHA_D_WK] = (size_t)(kv * E),
        [MHA_D_WV] = (size_t)(kv * E), [MHA_D_WO] = (size_t)(E * q),
        [MHA_D_BQ] = c->qkv_bias ? (size_t)q : 0,
        [MHA_D_BK] = c->qkv_bias ? (size_t)kv : 0,
        [MHA_D_BV] = c->qkv_bias ? (size_t)kv : 0,
        [MHA_D_BO] = c->o_bias ? (size_t)E : 0,
        [MHA_D_SINKS] = c->sinks ? (size_t)c->num_heads : 0,
        [MHA_D_ALIBI] = c->alibi ? (size_t)c->num_heads : 0};
    mha_status st = MHA_OK;
    for (int s = 0; s < MHA_DSLOT_COUNT && st == MHA_OK; s++)
        if (len[s] && (st = mha_dev_alloc(l->device, len[s] * 4,
                                          &l->wbuf[s])) == MHA_OK)
            l->wlen[s] = len[s];
    return st;
}

mha_status mha_decoder_write(mha_decoder *l, mha_dslot slot,
                             const float *data, size_t count)
{
    mha_status st = mha_dev_write(l->device, l->wbuf[slot], 0, data,
                                  count * 4);
    if (st == MHA_OK)
        l->set |= 1u << slot;
    l->generation++; /* even a failed write may have moved some */
    return st;
}

static void decoder_free(mha_decoder *l)
{
    mha_device *dev = l->device;
    mha_decoder_train_free(l);
    for (int s = 0; s < MHA_DSLOT_COUNT; s++)
        mha_dev_free(dev, l->wbuf[s], l->wlen[s] * 4);
    mha_dev_free(dev, l->arena, l->arena_bytes);
    while (l->old) {
        mha_old_arena *o = l->old;
        l->old = o->next;
        mha_dev_free(dev, o->buf, o->bytes);
        mha_host_free(&dev->ctx->host, o);
    }
    mha_host_free(&dev->ctx->host, l->host_pos);
    mha_host_free(&dev->ctx->host, l->kept);
    mha_host_free(&dev->ctx->host, l);
}

mha_status mha_decoder_create(mha_device *device,
                              const mha_decoder_config *config,
                              mha_decoder **out)
{
    static const char fn[] = "mha_decoder_create";
    if (!device)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = device->ctx;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: out is NULL", fn);
    if (!config)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: config is NULL", fn);
    mha_status st = mha_struct_check(&ctx->host, fn, "mha_decoder_config",
                                     config, sizeof *config);
    if (st == MHA_OK)
        st = check_config(ctx, config);
    if (st != MHA_OK)
        return st;
    mha_decoder *l = mha_host_calloc(&ctx->host, 1, sizeof *l);
    if (!l)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    l->device = device;
    memcpy(&l->cfg, config, sizeof l->cfg < config->struct_size
                                ? sizeof l->cfg
                                : config->struct_size);
    l->cfg.struct_size = sizeof l->cfg;
    if (!l->cfg.rope_dims)
        l->cfg.rope_dims = l->cfg.head_dim;
    if (l->cfg.scale == 0.0f)
        l->cfg.scale = (float)(1.0 / sqrt((double)l->cfg.head_dim));
    l->orig_heads = l->cfg.num_heads;
    l->kept = mha_host_malloc(&ctx->host,
                              (size_t)l->orig_heads * sizeof *l->kept);
    for (int64_t h = 0; l->kept && h < l->orig_heads; h++)
        l->kept[h] = h;
    st = l->kept ? alloc_weights(l)
                 : mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    if (st == MHA_OK && l->cfg.alibi) {
        float slopes[4096];
        alibi_slopes(l->cfg.num_heads, slopes);
        st = mha_decoder_write(l, MHA_D_ALIBI, slopes,
                               (size_t)l->cfg.num_heads);
    }
    if (st != MHA_OK) {
        decoder_free(l);
        return st;
    }
    device->open_objects++;
    mha_clear_error(ctx);
    *out = l;
    return MHA_OK;
}

mha_status mha_decoder_destroy(mha_decoder *layer)
{
    if (!layer)
        return MHA_OK;
    layer->device->open_objects--;
    decoder_free(layer);
    return MHA_OK;
}

/* The weight of this name for this config, or why there is none. */
static mha_status find_weight(mha_decoder *l, const char *fn,
                              const char *name, mha_dweight *out)
{
    mha_dweight w[MHA_DSLOT_COUNT];
    int n = mha_decoder_weights(l, w);
    for (int i = 0; i < n; i++)
        if (strcmp(w[i].name, name) == 0) {
            *out = w[i];
            return MHA_OK;
        }
    return mha_error(l->device->ctx, MHA_NOT_FOUND,
                     "%s: \"%s\" is not a weight of this layer (q_proj, "
                     "k_proj, v_proj, o_proj .weight; q/k/v_proj.bias with "
                     "qkv_bias, o_proj.bias with o_bias, sinks with sinks)",
                     fn, name);
}

static int shape_is(const mha_dweight *w, int ndim, const int64_t *shape)
{
    if (ndim != w->ndim || !shape)
        return 0;
    for (int i = 0; i < ndim; i++)
        if (shape[i] != w->shape[i])
            return 0;
    return 1;
}

mha_status mha_decoder_set_weight(mha_decoder *layer, const char *name,
                                  const float *data, int ndim,
                                  const int64_t *shape)
{
    static const char fn[] = "mha_decoder_set_weight";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!name)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: name is NULL", fn);
    mha_dweight w;
    mha_status st = find_weight(layer, fn, name, &w);
    if (st != MHA_OK)
        return st;
    if (!data)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: data is NULL", fn);
    if (!shape_is(&w, ndim, shape)) {
        char got[96], want[96];
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: \"%s\" has shape %s; expected %s", fn, name,
                         shape && ndim > 0 && ndim <= MHA_MAX_DIMS
                             ? mha_shape_str(got, sizeof got, ndim, shape)
                             : "(none)",
                         mha_shape_str(want, sizeof want, w.ndim, w.shape));
    }
    st = mha_decoder_write(layer, w.slot, data, layer->wlen[w.slot]);
    if (st == MHA_OK)
        mha_clear_error(ctx);
    return st;
}

/* ---- forward: validation ---------------------------------------------------- */

/* The size of mha_decoder_forward_args' first version (up to output):
 * callers built against it are served without head gates. */
#define DECODER_ARGS_V1 offsetof(mha_decoder_forward_args, head_gates)

mha_status mha_decoder_forward_args_init_sized(mha_decoder_forward_args *args,
                                               size_t struct_size)
{
    return mha_struct_init(args, struct_size, DECODER_ARGS_V1);
}

/* One call's shape, checked. */
typedef struct dcall {
    int64_t B, T;
    const mha_tensor *x, *pos, *gates;
    mha_tensor *out;
    mha_kv_cache *cache;
    uint64_t skip[MHA_SKIP_WORDS]; /* query heads not computed (gates.h) */
    int gate_mul;                  /* a computed head's gate is not 1 */
    int train;                     /* save_for_backward */
} dcall;

static mha_status check_tensor(mha_decoder *l, const char *what,
                               const mha_tensor *t, mha_dtype dtype, int ndim,
                               const int64_t *shape)
{
    static const char fn[] = "mha_decoder_forward";
    mha_context *ctx = l->device->ctx;
    char got[96], want[96];
    if (!t)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                         what);
    if (t->device != l->device)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s lives on another device than the layer", fn,
                         what);
    if (t->dtype != dtype)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: %s has dtype %s; expected %s", fn, what,
                         mha_dtype_name(t->dtype), mha_dtype_name(dtype));
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = shape[i] < 0 || t->shape[i] == shape[i];
    if (ok && dtype == MHA_F32 && t->strides[ndim - 1] != 1)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s is a view whose innermost stride is %lld; "
                         "expected 1",
                         fn, what, (long long)t->strides[ndim - 1]);
    if (ok)
        return MHA_OK;
    return mha_error(ctx, MHA_SHAPE_MISMATCH, "%s: %s has shape %s; expected %s",
                     fn, what, mha_shape_str(got, sizeof got, t->ndim, t->shape),
                     mha_shape_str(want, sizeof want, ndim, shape));
}

static mha_status check_cache(mha_decoder *l, const dcall *c)
{
    static const char fn[] = "mha_decoder_forward";
    mha_context *ctx = l->device->ctx;
    const mha_kv_cache *k = c->cache;
    if (!k)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: cache is NULL", fn);
    if (k->device != l->device)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: the cache lives on another device than the "
                         "layer", fn);
    if (k->cfg.num_kv_heads != l->cfg.num_kv_heads ||
        k->cfg.head_dim != l->cfg.head_dim)
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: the cache holds %lld kv heads of size %lld; the "
                         "layer has %lld of size %lld",
                         fn, (long long)k->cfg.num_kv_heads,
                         (long long)k->cfg.head_dim,
                         (long long)l->cfg.num_kv_heads,
                         (long long)l->cfg.head_dim);
    if (k->cfg.window &&
        (l->cfg.window == 0 || l->cfg.window > k->cfg.window))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: the cache is a ring of window %lld; the layer's "
                         "window is %lld (expected 1 to %lld: a ring holds "
                         "only the keys of that window)",
                         fn, (long long)k->cfg.window,
                         (long long)l->cfg.window, (long long)k->cfg.window);
    if (c->B > k->cfg.num_sequences)
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: x holds %lld sequences; the cache %lld", fn,
                         (long long)c->B, (long long)k->cfg.num_sequences);
    return MHA_OK;
}

/* head_gates: f32 [Hq] or [B, Hq], a whole tensor; then which heads the
 * call skips (whole kv groups) and whether it multiplies. */
static mha_status check_gates(mha_decoder *l, dcall *c)
{
    const mha_tensor *g = c->gates;
    int64_t H = l->cfg.num_heads, gs[2] = {c->B, H};
    int nd = g->ndim == 2 ? 2 : 1;
    mha_status st = check_tensor(l, "head_gates", g, MHA_F32, nd,
                                 gs + 2 - nd);
    if (st == MHA_OK && g->base)
        st = mha_error(l->device->ctx, MHA_INVALID_ARGUMENT,
                       "mha_decoder_forward: head_gates is a view; pass a "
                       "whole tensor");
    if (st != MHA_OK)
        return st;
    return mha_gates_read(l->device, g, H, H / l->cfg.num_kv_heads, c->skip,
                          &c->gate_mul);
}

static mha_status check_weights_set(mha_decoder *l)
{
    mha_dweight w[MHA_DSLOT_COUNT];
    int n = mha_decoder_weights(l, w);
    for (int i = 0; i < n; i++)
        if (!(l->set >> w[i].slot & 1u))
            return mha_error(l->device->ctx, MHA_MISSING_WEIGHT,
                             "mha_decoder_forward: weight \"%s\" was not set",
                             w[i].name);
    return MHA_OK;
}

static mha_status make_call(mha_decoder *l, const mha_decoder_forward_args *a,
                            dcall *c)
{
    static const char fn[] = "mha_decoder_forward";
    mha_context *ctx = l->device->ctx;
    if (!a)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: args is NULL", fn);
    mha_status st = mha_struct_check(&ctx->host, fn,
                                     "mha_decoder_forward_args", a,
                                     DECODER_ARGS_V1);
    if (st != MHA_OK)
        return st;
    memset(c, 0, sizeof *c);
    if (a->struct_size > offsetof(mha_decoder_forward_args, head_gates))
        c->gates = a->head_gates;
    if (a->struct_size >
        offsetof(mha_decoder_forward_args, save_for_backward))
        c->train = a->save_for_backward != 0;
    c->x = a->x;
    c->pos = a->positions;
    c->out = a->output;
    c->cache = a->cache;
    int64_t E = l->cfg.embed_dim, xs[3] = {-1, -1, E};
    if ((st = check_tensor(l, "x", a->x, MHA_F32, 3, xs)) != MHA_OK)
        return st;
    c->B = a->x->shape[0];
    c->T = a->x->shape[1];
    int64_t ps[2] = {c->B, c->T}, os[3] = {c->B, c->T, E};
    if (a->positions &&
        (st = check_tensor(l, "positions", a->positions, MHA_I32, 2, ps)) !=
            MHA_OK)
        return st;
    if ((st = check_tensor(l, "output", a->output, MHA_F32, 3, os)) ==
            MHA_OK &&
        (st = check_cache(l, c)) == MHA_OK)
        st = check_weights_set(l);
    if (st == MHA_OK && c->gates)
        st = check_gates(l, c);
    if (c->train) {
        /* every head computed (the backward needs each one's O and
           LSE), the gates multiplied, zeros included */
        memset(c->skip, 0, sizeof c->skip);
        c->gate_mul = c->gates != NULL;
    }
    return st;
}

/* ---- forward: scratch ---------------------------------------------------------- */

static size_t align_up(size_t v)
{
    return (v + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

void mha_decoder_layout(const mha_decoder *l, int64_t n, size_t off[6])
{
    size_t q = (size_t)(n * l->cfg.num_heads * l->cfg.head_dim) * 4;
    size_t kv = (size_t)(n * l->cfg.num_kv_heads * l->cfg.head_dim) * 4;
    size_t sizes[5] = {q, kv, kv, q, (size_t)n * 4};
    off[0] = 0;
    for (int i = 0; i < 5; i++)
        off[i + 1] = align_up(off[i] + sizes[i]);
}

/* Frees the arena, or keeps it on l->old while recorded work may use it. */
static void retire_arena(mha_decoder *l, mha_old_arena *slot)
{
    if (!slot) {
        mha_dev_free(l->device, l->arena, l->arena_bytes);
        return;
    }
    *slot = (mha_old_arena){l->arena, l->arena_bytes, l->old};
    l->old = slot;
    l->recorded = 0;
}

/* Makes the arena hold the bucket of `tokens` (the next power of 2). */
static mha_status reserve(mha_decoder *l, int64_t tokens)
{
    if (tokens <= l->tokens)
        return MHA_OK;
    mha_context *ctx = l->device->ctx;
    int64_t n = 1;
    while (n < tokens)
        n *= 2;
    size_t off[6];
    mha_decoder_layout(l, n, off);
    void *arena = NULL;
    int32_t *pos = mha_host_malloc(&ctx->host, (size_t)n * sizeof *pos);
    mha_old_arena *slot =
        l->recorded ? mha_host_malloc(&ctx->host, sizeof *slot) : NULL;
    mha_status st = pos && (slot || !l->recorded)
                        ? mha_dev_alloc(l->device, off[5], &arena)
                        : mha_error(ctx, MHA_OUT_OF_MEMORY,
                                    "mha_decoder_forward: out of memory");
    if (st != MHA_OK) {
        mha_host_free(&ctx->host, pos);
        mha_host_free(&ctx->host, slot);
        return st;
    }
    retire_arena(l, slot);
    mha_host_free(&ctx->host, l->host_pos);
    l->arena = arena;
    l->arena_bytes = off[5];
    l->host_pos = pos;
    l->tokens = n;
    return MHA_OK;
}

/* ---- forward: the nodes ----------------------------------------------------------- */

typedef struct walker {
    mha_decoder *l;
    const dcall *c;
    size_t off[6]; /* arena layout for l->tokens */
    int run;       /* 0: ask supports() of every node; 1: run them */
    void *arena;   /* l->arena, or a training forward's saved state */
    mha_tdesc lse; /* a training forward's saved LSE [B,Hq,1,T] */
    mha_tdesc gated; /* [B,1,T,q] rows of the gated attention output:
                        O's own (gated in place), or a training forward's
                        in the layer's arena (the saved O stays ungated,
                        for the gates' gradient) */
} walker;

enum { A_Q, A_K, A_V, A_O, A_POS };

static mha_status step(walker *w, const mha_node *n)
{
    mha_device *dev = w->l->device;
    if (w->run)
        return mha_dev_run(dev, n);
    if (mha_dev_supports(dev, n))
        return MHA_OK;
    mha_device_info info;
    mha_device_info_of(dev, &info);
    return mha_error(dev->ctx, MHA_UNSUPPORTED,
                     "mha_decoder_forward: %s:%d (%s) cannot run op %s for "
                     "this layer (head size %lld, cache %s)",
                     info.backend, info.backend_index, info.name,
                     mha_op_name(n->op), (long long)w->l->cfg.head_dim,
                     mha_dtype_name(w->c->cache->cfg.dtype));
}

/* [B,1,T,F] rows of the arena region r (F features a token). */
static mha_tdesc arena_rows(const walker *w, int r, int64_t F)
{
    int64_t T = w->c->T;
    mha_tdesc t = {.dtype = MHA_F32, .ne = {w->c->B, 1, T, F},
                   .nb = {T * F, 0, F, 1}, .buf = w->arena,
                   .offset = w->off[r]};
    return t;
}

/* The [B,H,T,d] heads of the arena region r. */
static mha_tdesc arena_heads(const walker *w, int r, int64_t H)
{
    int64_t T = w->c->T, d = w->l->cfg.head_dim;
    mha_tdesc t = {.dtype = MHA_F32, .ne = {w->c->B, H, T, d},
                   .nb = {T * H * d, d, H * d, 1}, .buf = w->arena,
                   .offset = w->off[r]};
    return t;
}

/* A [1,1,rows,cols] view of a weight slot (absent when not configured). */
static mha_tdesc weight(const walker *w, mha_dslot s, int64_t rows,
                        int64_t cols)
{
    mha_tdesc t = {.dtype = MHA_F32};
    if (!w->l->wlen[s])
        return t;
    t.ne[0] = t.ne[1] = 1;
    t.ne[2] = rows;
    t.ne[3] = cols;
    t.nb[0] = t.nb[1] = rows * cols;
    t.nb[2] = cols;
    t.nb[3] = 1;
    t.buf = w->l->wbuf[s];
    return t;
}

static mha_status project(walker *w, const mha_tdesc *x, mha_dslot ws,
                          mha_dslot bs, int64_t N, const mha_tdesc *y)
{
    mha_node n = {.op = MHA_OP_PROJECTION};
    n.src[0] = *x;
    n.src[1] = weight(w, ws, N, x->ne[3]);
    n.src[2] = weight(w, bs, 1, N);
    n.dst = *y;
    return step(w, &n);
}

/* The [B,1,T,F] rows of a [B,T,F] tensor (strides and offset of a view). */
static mha_tdesc tensor_rows(const mha_tensor *t)
{
    mha_tdesc d = {.dtype = t->dtype,
                   .ne = {t->shape[0], 1, t->shape[1], t->shape[2]},
                   .nb = {t->strides[0], 0, t->strides[1], t->strides[2]},
                   .buf = t->buf, .offset = t->offset * 4};
    return d;
}

/* The positions of batch items first .. first+nb-1 as [1,1,nb,T]: the
 * caller's [B,T] tensor (any strides) or the staged defaults. */
static mha_tdesc positions(const walker *w, int64_t first, int64_t nb)
{
    int64_t T = w->c->T;
    const mha_tensor *p = w->c->pos;
    mha_tdesc t = {.dtype = MHA_I32, .ne = {1, 1, nb, T},
                   .nb = {nb * T, nb * T, T, 1}, .buf = w->arena,
                   .offset = w->off[A_POS] + (size_t)(first * T) * 4};
    if (p) {
        t.nb[2] = p->strides[0];
        t.nb[3] = p->strides[1];
        t.buf = p->buf;
        t.offset = (p->offset + (size_t)(first * p->strides[0])) * 4;
    }
    return t;
}

static void rope_params(const mha_decoder *l, mha_node *n)
{
    n->params.rope_style = (int32_t)l->cfg.rope_style;
    n->params.rope_dims = (int32_t)l->cfg.rope_dims;
    n->params.rope_theta = l->cfg.rope_theta;
    n->params.rope_pos_scale = 1.0f / l->cfg.rope_scaling;
}

static int rotates(const mha_decoder *l)
{
    return l->cfg.rope_style != MHA_ROPE_NONE;
}

/* k (rotated) and v of batch items first .. first+nb-1 into the cache. */
static mha_status append(walker *w, int64_t first, int64_t nb)
{
    const mha_decoder_config *c = &w->l->cfg;
    size_t es = (size_t)(w->c->T * c->num_kv_heads * c->head_dim) * 4;
    for (int which = 0; which < 2; which++) {
        mha_tdesc src = arena_heads(w, which ? A_V : A_K, c->num_kv_heads);
        src.ne[0] = nb;
        src.offset += (size_t)first * es;
        mha_node n;
        mha_kv_copy_node(w->c->cache, which, first, &src, &n);
        if (which == MHA_KV_KEYS && rotates(w->l)) {
            rope_params(w->l, &n);
            n.src[MHA_SRC_ROPE_POS] = positions(w, first, nb);
        }
        mha_status st = step(w, &n);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

/* One node for the whole batch when its sequences have one length, else
 * one per sequence (ragged batches). */
static mha_status append_all(walker *w)
{
    const int32_t *len = w->c->cache->len;
    int64_t B = w->c->B;
    int same = 1;
    for (int64_t b = 1; b < B; b++)
        same &= len[b] == len[0];
    if (same)
        return append(w, 0, B);
    for (int64_t b = 0; b < B; b++) {
        mha_status st = append(w, b, 1);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

/* Heads [first, first + n) of a [B,H,T,X] view. */
static mha_tdesc head_slice(mha_tdesc t, int64_t first, int64_t n)
{
    if (t.buf)
        t.offset += (size_t)(first * t.nb[1]) *
                    mha_dtype_storage_size(t.dtype);
    t.ne[1] = n;
    return t;
}

/* Entries [first, first + n) of a per-head [1,1,1,H] weight. */
static mha_tdesc per_head(mha_tdesc t, int64_t first, int64_t n)
{
    if (t.buf)
        t.offset += (size_t)first * 4;
    t.ne[3] = n;
    return t;
}

/* The attention of query heads [h0, h0 + n), a whole number of kv groups. */
static mha_status attend(walker *w, int64_t h0, int64_t n)
{
    const mha_decoder_config *c = &w->l->cfg;
    const mha_kv_cache *k = w->c->cache;
    int64_t B = w->c->B, cap = k->cfg.capacity;
    int64_t g = c->num_heads / c->num_kv_heads;
    mha_node node = {.op = MHA_OP_ATTENTION};
    node.src[MHA_SRC_Q] = head_slice(arena_heads(w, A_Q, c->num_heads), h0, n);
    node.src[MHA_SRC_K] = head_slice(mha_kv_view(k, MHA_KV_KEYS, 0, B, 0, cap),
                                     h0 / g, n / g);
    node.src[MHA_SRC_V] = head_slice(
        mha_kv_view(k, MHA_KV_VALUES, 0, B, 0, cap), h0 / g, n / g);
    node.src[MHA_SRC_SINKS] = per_head(weight(w, MHA_D_SINKS, 1, c->num_heads),
                                       h0, n);
    node.src[MHA_SRC_ALIBI] = per_head(weight(w, MHA_D_ALIBI, 1, c->num_heads),
                                       h0, n);
    node.src[MHA_SRC_KV_LEN] = mha_kv_lengths(k, B);
    node.dst = head_slice(arena_heads(w, A_O, c->num_heads), h0, n);
    node.extra_dst[MHA_DST_LSE] = head_slice(w->lse, h0, n);
    node.params.scale = c->scale;
    node.params.causal = MHA_CAUSAL_BOTTOM_RIGHT;
    node.params.mask_cols = cap;
    node.params.kv_group = (int32_t)g;
    node.params.window = (int32_t)c->window;
    node.params.softcap = c->softcap;
    return step(w, &node);
}

/* The attention of the computed heads (all without gates), zeros for the
 * skipped ones, then the gates' multiply (in place). */
static mha_status attend_heads(walker *w)
{
    const mha_decoder_config *c = &w->l->cfg;
    int64_t H = c->num_heads, d = c->head_dim, q = H * d;
    mha_head_run runs[2 * MHA_MAX_HEAD_RUNS + 1];
    mha_head_runs(w->c->skip, H, runs, 2 * MHA_MAX_HEAD_RUNS + 1);
    mha_status st = MHA_OK;
    for (int64_t h = 0, r = 0; h < H && st == MHA_OK; h += runs[r++].count) {
        if (runs[r].computed) {
            st = attend(w, h, runs[r].count);
            continue;
        }
        mha_node fill = {.op = MHA_OP_FILL_ROWS};
        fill.dst = arena_rows(w, A_O, q);
        fill.dst.ne[3] = runs[r].count * d;
        fill.dst.offset += (size_t)(h * d) * 4;
        st = step(w, &fill);
    }
    if (st != MHA_OK || !w->c->gate_mul)
        return st;
    mha_node mul = {.op = MHA_OP_MUL};
    mul.src[MHA_SRC_MUL_X] = arena_heads(w, A_O, H);
    mul.dst = w->gated;
    mul.dst.ne[1] = H; /* the rows' [B,H,T,d] heads */
    mul.dst.ne[3] = d;
    mul.dst.nb[1] = d;
    mul.src[MHA_SRC_MUL_F] =
        mha_decoder_gates_view(w->c->gates, w->c->B, H, w->c->T, d);
    return step(w, &mul);
}

mha_tdesc mha_decoder_gates_view(const mha_tensor *gates, int64_t B,
                                 int64_t H, int64_t T, int64_t d)
{
    mha_tdesc t = {.dtype = MHA_F32, .ne = {B, H, T, d},
                   .nb = {gates->ndim == 2 ? H : 0, 1, 0, 0},
                   .buf = gates->buf, .offset = gates->offset * 4};
    return t;
}

/* Every node of the call, in order; in the run pass the cache's lengths
 * grow by T between the append and the attention. */
static mha_status walk(walker *w)
{
    const mha_decoder_config *c = &w->l->cfg;
    const dcall *call = w->c;
    int64_t E = c->embed_dim, q = c->num_heads * c->head_dim;
    int64_t kv = c->num_kv_heads * c->head_dim, T = call->T;
    mha_tdesc x = tensor_rows(call->x), y = tensor_rows(call->out);
    mha_tdesc rq = arena_rows(w, A_Q, q), rk = arena_rows(w, A_K, kv);
    mha_tdesc rv = arena_rows(w, A_V, kv);
    mha_status st = project(w, &x, MHA_D_WQ, MHA_D_BQ, q, &rq);
    if (st == MHA_OK)
        st = project(w, &x, MHA_D_WK, MHA_D_BK, kv, &rk);
    if (st == MHA_OK)
        st = project(w, &x, MHA_D_WV, MHA_D_BV, kv, &rv);
    if (st == MHA_OK && rotates(w->l)) {
        mha_node n = {.op = MHA_OP_ROPE};
        n.src[MHA_SRC_ROPE_X] = n.dst = arena_heads(w, A_Q, c->num_heads);
        n.src[MHA_SRC_ROPE_POS] = positions(w, 0, call->B);
        rope_params(w->l, &n);
        st = step(w, &n);
    }
    if (st == MHA_OK)
        st = append_all(w);
    if (st == MHA_OK && w->run)
        st = mha_kv_add_lengths(call->cache, 0, call->B, T);
    if (st == MHA_OK)
        st = attend_heads(w);
    mha_tdesc ro = w->c->gate_mul ? w->gated : arena_rows(w, A_O, q);
    if (st == MHA_OK)
        st = project(w, &ro, MHA_D_WO, MHA_D_BO, E, &y);
    return st;
}

/* The positions into the arena: the default ones (each sequence's length
 * + t), or the caller's read back (a training forward keeps them). */
static mha_status stage_positions(walker *w)
{
    const dcall *c = w->c;
    for (int64_t b = 0; b < c->B && !c->pos; b++)
        for (int64_t t = 0; t < c->T; t++)
            w->l->host_pos[b * c->T + t] =
                (int32_t)(mha_kv_length(c->cache, b) + t);
    return mha_dev_write(w->l->device, w->arena, w->off[A_POS],
                         w->l->host_pos, (size_t)(c->B * c->T) * 4);
}

/* The message of position value of token t of sequence b out of range. */
static mha_status bad_position(mha_decoder *l, mha_status st, int64_t b,
                               int64_t t, int64_t value, const char *what)
{
    return mha_error(l->device->ctx, st,
                     "mha_decoder_forward: %s[%lld][%lld] (sequence %lld, "
                     "token %lld) is %lld; expected 0 to %d (2^24 - 1, "
                     "where fp32 still holds every position)",
                     what, (long long)b, (long long)t, (long long)b,
                     (long long)t, (long long)value, MAX_POSITION);
}

/* The caller's positions read back into host_pos (contiguous ones in one
 * transfer, a view by rows or elements) and checked: RoPE of a negative
 * position is no token's rotation, and one past MAX_POSITION would be
 * rotated by a rounded angle. */
static mha_status check_positions(mha_decoder *l, const dcall *c)
{
    const mha_tensor *p = c->pos;
    int64_t B = c->B, T = c->T, s0 = p->strides[0], s1 = p->strides[1];
    int64_t run = s1 != 1 ? 1 : s0 == T ? B * T : T;
    mha_status st = MHA_OK;
    for (int64_t e = 0; e < B * T && st == MHA_OK; e += run)
        st = mha_dev_read(l->device, p->buf,
                          (size_t)(p->offset + e / T * s0 + e % T * s1) * 4,
                          l->host_pos + e, (size_t)run * 4);
    for (int64_t e = 0; e < B * T && st == MHA_OK; e++)
        if (l->host_pos[e] < 0 || l->host_pos[e] > MAX_POSITION)
            st = bad_position(l, MHA_INVALID_ARGUMENT, e / T, e % T,
                              l->host_pos[e], "positions");
    return st;
}

/* The default positions (each sequence's length + t) of a rotating layer
 * within MAX_POSITION, else MHA_LIMIT_REACHED naming the first past it. */
static mha_status check_default_positions(mha_decoder *l, const dcall *c)
{
    for (int64_t b = 0; b < c->B && rotates(l); b++) {
        int64_t len = mha_kv_length(c->cache, b);
        if (len + c->T - 1 > MAX_POSITION) {
            int64_t t = len > MAX_POSITION ? 0 : MAX_POSITION + 1 - len;
            return bad_position(l, MHA_LIMIT_REACHED, b, t, len + t,
                                "default positions");
        }
    }
    return MHA_OK;
}

/* One call; record: the backend records into an application's command
 * buffer (mha_decoder_forward_enqueue), so the positions are not read
 * back and nothing waits. */
static mha_status decoder_step(mha_decoder *layer,
                               const mha_decoder_forward_args *args,
                               int record)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    dcall c;
    mha_status st = make_call(layer, args, &c);
    if (st == MHA_OK)
        st = reserve(layer, c.B * c.T);
    if (st == MHA_OK && (!c.pos || !record))
        st = c.pos ? check_positions(layer, &c)
                   : check_default_positions(layer, &c);
    if (st != MHA_OK)
        return st;
    walker w = {layer, &c, {0}, 0, layer->arena, {.dtype = MHA_F32},
                {.dtype = MHA_F32}};
    mha_decoder_layout(layer, layer->tokens, w.off);
    w.gated = arena_rows(&w, A_O, layer->cfg.num_heads * layer->cfg.head_dim);
    mha_dtrain_call tc = {c.B, c.T, c.x, c.cache, c.gates, record};
    if (c.train)
        st = mha_decoder_train_prepare(layer, &tc, &w.arena, w.off, &w.lse);
    if (st == MHA_OK)
        st = mha_kv_check_room(c.cache, "mha_decoder_forward", 0, c.B, c.T);
    /* every node asked before a ring moves a row, so a refused step
       leaves the cache as it was (the asking walk sees the rows before
       the move: the nodes' dtypes and layouts, all that the devices
       check, are the same) */
    if (st == MHA_OK)
        st = walk(&w);
    if (st == MHA_OK)
        st = mha_kv_make_room(c.cache, "mha_decoder_forward", 0, c.B, c.T);
    if (st == MHA_OK && (!c.pos || c.train))
        st = stage_positions(&w);
    if (st != MHA_OK)
        return st;
    int32_t before = c.cache->len[0];
    w.run = 1;
    layer->recorded |= record;
    st = walk(&w);
    if (st == MHA_OK && !record)
        st = mha_dev_sync(layer->device);
    if (st != MHA_OK && c.cache->len[0] != before)
        mha_kv_add_lengths(c.cache, 0, c.B, -c.T); /* as before the call */
    if (c.train)
        mha_decoder_train_commit(layer, &tc, st == MHA_OK);
    if (st == MHA_OK)
        mha_clear_error(layer->device->ctx);
    return st;
}

mha_status mha_decoder_forward(mha_decoder *layer,
                               const mha_decoder_forward_args *args)
{
    return decoder_step(layer, args, 0);
}

mha_status mha_decoder_forward_enqueue(mha_decoder *layer,
                                       const mha_decoder_forward_args *args)
{
    return decoder_step(layer, args, 1);
}

mha_device *mha_decoder_device(const mha_decoder *layer)
{
    return layer->device;
}
