/* attention.c: mha_attention, the public attention core: validates the
 * already-projected Q, K, V and options at the boundary, describes them as
 * one ATTENTION node (core/backend.h; strides come from the tensors, so
 * views of a fused projection need no copy) and runs it on the device.
 * The node needs no scratch; the library's ALiBi slopes live in a buffer
 * the device keeps, so repeated calls allocate nothing. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tensor.h"

#define FN "mha_attention"
#define MAX_HEAD_SIZE 256

mha_status mha_attention_args_init_sized(mha_attention_args *args,
                                         size_t struct_size)
{
    return mha_struct_init(args, struct_size, sizeof *args);
}

/* The call's sizes, read from q and k in the args' layout. */
typedef struct attn_dims {
    int64_t B, L, S, Hq, Hkv, d;
} attn_dims;

/* Dimension index of T and H in the layout. */
static int t_dim(int layout) { return layout == MHA_LAYOUT_BHTD ? 2 : 1; }
static int h_dim(int layout) { return layout == MHA_LAYOUT_BHTD ? 1 : 2; }

static mha_status bad_shape(mha_context *ctx, const char *name,
                            const int64_t *got, const int64_t *want)
{
    char g[96], w[96];
    return mha_error(ctx, MHA_SHAPE_MISMATCH,
                     FN ": %s has shape %s; expected %s", name,
                     mha_shape_str(g, sizeof g, 4, got),
                     mha_shape_str(w, sizeof w, 4, want));
}

static mha_status check_tensor(mha_device *dev, const char *name,
                               const mha_tensor *t)
{
    mha_context *ctx = dev->ctx;
    if (!t)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, FN ": %s is NULL", name);
    if (t->device != dev)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": %s lives on another device", name);
    if (t->strides[t->ndim - 1] != 1 && t->shape[t->ndim - 1] > 1)
        return mha_error(ctx, MHA_UNSUPPORTED,
                         FN ": %s has innermost stride %lld; expected 1",
                         name, (long long)t->strides[t->ndim - 1]);
    return MHA_OK;
}

/* q, k, v and out: present, 4-D, one float dtype, shapes that agree. */
static mha_status check_qkv(mha_device *dev, const mha_attention_args *a,
                            attn_dims *dm)
{
    static const char *const names[4] = {"q", "k", "v", "out"};
    const mha_tensor *t[4] = {a->q, a->k, a->v, a->out};
    mha_context *ctx = dev->ctx;
    char got[96];
    if (a->layout != MHA_LAYOUT_BTHD && a->layout != MHA_LAYOUT_BHTD)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": layout is %d; expected MHA_LAYOUT_BTHD (0) "
                         "or MHA_LAYOUT_BHTD (1)",
                         a->layout);
    for (int i = 0; i < 4; i++) {
        mha_status st = check_tensor(dev, names[i], t[i]);
        if (st != MHA_OK)
            return st;
        if (t[i]->ndim != 4)
            return mha_error(ctx, MHA_SHAPE_MISMATCH,
                             FN ": %s has shape %s; expected 4 dimensions "
                             "(%s)",
                             names[i],
                             mha_shape_str(got, sizeof got, t[i]->ndim,
                                           t[i]->shape),
                             a->layout ? "[B, H, T, d]" : "[B, T, H, d]");
        if (t[i]->dtype != MHA_F32 && t[i]->dtype != MHA_F16)
            return mha_error(ctx, MHA_DTYPE_MISMATCH,
                             FN ": %s has dtype %s; expected f32 or f16",
                             names[i], mha_dtype_name(t[i]->dtype));
        if (t[i]->dtype != a->q->dtype)
            return mha_error(ctx, MHA_DTYPE_MISMATCH,
                             FN ": %s has dtype %s; expected q's, %s",
                             names[i], mha_dtype_name(t[i]->dtype),
                             mha_dtype_name(a->q->dtype));
    }
    int td = t_dim(a->layout), hd = h_dim(a->layout);
    dm->B = a->q->shape[0];
    dm->L = a->q->shape[td];
    dm->Hq = a->q->shape[hd];
    dm->d = a->q->shape[3];
    dm->S = a->k->shape[td];
    dm->Hkv = a->k->shape[hd];
    const int64_t *ks = a->k->shape;
    if (memcmp(a->out->shape, a->q->shape, sizeof a->q->shape) != 0)
        return bad_shape(ctx, "out", a->out->shape, a->q->shape);
    if (memcmp(a->v->shape, ks, sizeof a->k->shape) != 0)
        return bad_shape(ctx, "v", a->v->shape, ks);
    if (ks[0] != dm->B || ks[3] != dm->d)
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         FN ": k has shape %s; expected batch %lld and head "
                         "size %lld (q's)",
                         mha_shape_str(got, sizeof got, 4, ks),
                         (long long)dm->B, (long long)dm->d);
    if (dm->Hq % dm->Hkv != 0)
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         FN ": q has %lld heads and k %lld; expected the "
                         "query heads to be a multiple of the key/value "
                         "heads",
                         (long long)dm->Hq, (long long)dm->Hkv);
    if (dm->d > MAX_HEAD_SIZE)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": head size d is %lld; expected 1 to %d",
                         (long long)dm->d, MAX_HEAD_SIZE);
    return MHA_OK;
}

static mha_status check_options(mha_context *ctx, const mha_attention_args *a)
{
    if (!isfinite(a->scale))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": scale is %g; expected a finite number (0: "
                         "1/sqrt(d))",
                         (double)a->scale);
    if (a->causal < MHA_CAUSAL_NONE || a->causal > MHA_CAUSAL_BOTTOM_RIGHT)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": causal is %d; expected an mha_causal (0 to 2)",
                         a->causal);
    if (a->window < 0 || a->window > INT32_MAX)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": window is %lld; expected 0 (none) to %d",
                         (long long)a->window, INT32_MAX);
    if (!(a->softcap >= 0.0f) || isinf(a->softcap))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": softcap is %g; expected 0 (none) or a finite "
                         "positive cap",
                         (double)a->softcap);
    if (a->alibi && a->alibi_slopes)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": alibi is %d and alibi_slopes is set; expected "
                         "one of them",
                         a->alibi);
    return MHA_OK;
}

/* An optional f32 per-head tensor: [Hq]. */
static mha_status check_per_head(mha_device *dev, const char *name,
                                 const mha_tensor *t, int64_t Hq)
{
    char got[96];
    if (!t)
        return MHA_OK;
    mha_status st = check_tensor(dev, name, t);
    if (st == MHA_OK && t->dtype != MHA_F32)
        st = mha_error(dev->ctx, MHA_DTYPE_MISMATCH,
                       FN ": %s has dtype %s; expected f32", name,
                       mha_dtype_name(t->dtype));
    if (st == MHA_OK && (t->ndim != 1 || t->shape[0] != Hq))
        st = mha_error(dev->ctx, MHA_SHAPE_MISMATCH,
                       FN ": %s has shape %s; expected [%lld] (the query "
                       "heads)",
                       name, mha_shape_str(got, sizeof got, t->ndim, t->shape),
                       (long long)Hq);
    return st;
}

/* bias: f32 or bool, right-aligned against [B, Hq, L, S], each dimension
 * equal or 1. */
static mha_status check_bias(mha_device *dev, const mha_tensor *t,
                             const attn_dims *dm)
{
    const int64_t full[4] = {dm->B, dm->Hq, dm->L, dm->S};
    char got[96], want[96];
    if (!t)
        return MHA_OK;
    mha_status st = check_tensor(dev, "bias", t);
    if (st != MHA_OK)
        return st;
    if (t->dtype != MHA_F32 && t->dtype != MHA_BOOL)
        return mha_error(dev->ctx, MHA_DTYPE_MISMATCH,
                         FN ": bias has dtype %s; expected f32 or bool",
                         mha_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim; i++) {
        int64_t n = t->shape[i], f = full[4 - t->ndim + i];
        if (n != f && n != 1)
            return mha_error(dev->ctx, MHA_SHAPE_MISMATCH,
                             FN ": bias has shape %s; expected one that "
                             "broadcasts to %s",
                             mha_shape_str(got, sizeof got, t->ndim, t->shape),
                             mha_shape_str(want, sizeof want, 4, full));
    }
    return MHA_OK;
}

/* kv_lens: i32 [B], each 0 to S (read back to check). */
static mha_status check_kv_lens(mha_device *dev, const mha_tensor *t,
                                const attn_dims *dm)
{
    char got[96];
    int32_t chunk[256];
    if (!t)
        return MHA_OK;
    mha_status st = check_tensor(dev, "kv_lens", t);
    if (st != MHA_OK)
        return st;
    if (t->dtype != MHA_I32)
        return mha_error(dev->ctx, MHA_DTYPE_MISMATCH,
                         FN ": kv_lens has dtype %s; expected i32",
                         mha_dtype_name(t->dtype));
    if (t->ndim != 1 || t->shape[0] != dm->B)
        return mha_error(dev->ctx, MHA_SHAPE_MISMATCH,
                         FN ": kv_lens has shape %s; expected [%lld] (the "
                         "batch)",
                         mha_shape_str(got, sizeof got, t->ndim, t->shape),
                         (long long)dm->B);
    for (int64_t b0 = 0; b0 < dm->B; b0 += 256) {
        int64_t n = dm->B - b0 < 256 ? dm->B - b0 : 256;
        int64_t step = t->strides[0]; /* one read unless a strided view */
        for (int64_t i = 0; i < n && st == MHA_OK; i += step == 1 ? n : 1)
            st = mha_dev_read(dev, t->buf,
                              (t->offset + (size_t)((b0 + i) * step)) * 4,
                              &chunk[i], step == 1 ? (size_t)n * 4 : 4);
        for (int64_t i = 0; i < n && st == MHA_OK; i++)
            if (chunk[i] < 0 || chunk[i] > dm->S)
                st = mha_error(dev->ctx, MHA_INVALID_ARGUMENT,
                               FN ": kv_lens[%lld] is %d; expected 0 to "
                               "%lld (the keys)",
                               (long long)(b0 + i), (int)chunk[i],
                               (long long)dm->S);
    }
    return st;
}

/* ---- the node --------------------------------------------------------------- */

/* A [B, H, T, d] descriptor of a q/k/v/out tensor in the layout. */
static mha_tdesc heads_desc(const mha_tensor *t, int layout)
{
    int td = t_dim(layout), hd = h_dim(layout);
    mha_tdesc d;
    memset(&d, 0, sizeof d);
    d.dtype = t->dtype;
    d.ne[0] = t->shape[0];
    d.ne[1] = t->shape[hd];
    d.ne[2] = t->shape[td];
    d.ne[3] = t->shape[3];
    d.nb[0] = t->strides[0];
    d.nb[1] = t->strides[hd];
    d.nb[2] = t->strides[td];
    d.nb[3] = 1;
    d.buf = t->buf;
    d.offset = t->offset * mha_dtype_storage_size(t->dtype);
    return d;
}

/* A [1, 1, 1, n] descriptor of a 1-D tensor (per head or per sequence). */
static mha_tdesc row_desc(const mha_tensor *t)
{
    mha_tdesc d;
    memset(&d, 0, sizeof d);
    d.dtype = t->dtype;
    d.ne[0] = d.ne[1] = d.ne[2] = 1;
    d.ne[3] = t->shape[0];
    d.nb[3] = t->strides[0];
    d.buf = t->buf;
    d.offset = t->offset * 4;
    return d;
}

/* The bias as the node's MASK source: [B, Hq, L, S], zero strides where it
 * broadcasts. A bool bias is stored as additive f32 already. */
static mha_tdesc bias_desc(const mha_tensor *t, const attn_dims *dm)
{
    const int64_t full[4] = {dm->B, dm->Hq, dm->L, dm->S};
    mha_tdesc d;
    memset(&d, 0, sizeof d);
    d.dtype = MHA_F32;
    for (int i = 0; i < 4; i++) {
        int k = i - (4 - t->ndim);
        d.ne[i] = full[i];
        d.nb[i] = k < 0 || t->shape[k] == 1 ? 0 : t->strides[k];
    }
    d.buf = t->buf;
    d.offset = t->offset * 4;
    return d;
}

/* Slope of head h of n (Press et al.; Hugging Face's get_alibi_slopes):
 * 2^(-8(h+1)/n) for n a power of two; otherwise the slopes of the largest
 * power of two c below n, then every other slope of 2c. */
static float alibi_slope(int64_t h, int64_t n)
{
    int64_t c = 1;
    while (c * 2 <= n)
        c *= 2;
    if (h < c)
        return (float)exp2(-8.0 * (double)(h + 1) / (double)c);
    return (float)exp2(-8.0 * (double)(2 * (h - c) + 1) / (double)(2 * c));
}

/* The device's slopes buffer, holding Hq slopes (uploaded when Hq
 * changes, grown when it does not fit). */
static mha_status alibi_buffer(mha_device *dev, int64_t Hq, void **buf)
{
    float slopes[256];
    size_t bytes = (size_t)Hq * sizeof(float);
    if (dev->alibi_heads != Hq) {
        if (bytes > dev->alibi_bytes) {
            void *nb = NULL;
            mha_status st = mha_dev_alloc(dev, bytes, &nb);
            if (st != MHA_OK)
                return st;
            mha_attention_release(dev);
            dev->alibi_buf = nb;
            dev->alibi_bytes = bytes;
        }
        dev->alibi_heads = 0;
        for (int64_t h0 = 0; h0 < Hq; h0 += 256) {
            int64_t n = Hq - h0 < 256 ? Hq - h0 : 256;
            for (int64_t h = 0; h < n; h++)
                slopes[h] = alibi_slope(h0 + h, Hq);
            mha_status st = mha_dev_write(dev, dev->alibi_buf,
                                          (size_t)h0 * sizeof(float), slopes,
                                          (size_t)n * sizeof(float));
            if (st != MHA_OK)
                return st;
        }
        dev->alibi_heads = Hq;
    }
    *buf = dev->alibi_buf;
    return MHA_OK;
}

void mha_attention_release(mha_device *dev)
{
    if (dev->alibi_buf)
        mha_dev_free(dev, dev->alibi_buf, dev->alibi_bytes);
    dev->alibi_buf = NULL;
    dev->alibi_bytes = 0;
    dev->alibi_heads = 0;
}

static mha_status build_node(mha_device *dev, const mha_attention_args *a,
                             const attn_dims *dm, mha_node *n)
{
    memset(n, 0, sizeof *n);
    n->op = MHA_OP_ATTENTION;
    n->src[MHA_SRC_Q] = heads_desc(a->q, a->layout);
    n->src[MHA_SRC_K] = heads_desc(a->k, a->layout);
    n->src[MHA_SRC_V] = heads_desc(a->v, a->layout);
    n->dst = heads_desc(a->out, a->layout);
    n->params.scale = a->scale != 0.0f ? a->scale
                                       : (float)(1.0 / sqrt((double)dm->d));
    n->params.causal = a->causal;
    n->params.mask_cols = dm->S;
    n->params.kv_group = (int32_t)(dm->Hq / dm->Hkv);
    n->params.window = (int32_t)a->window;
    n->params.softcap = a->softcap;
    if (a->bias)
        n->src[MHA_SRC_MASK] = bias_desc(a->bias, dm);
    if (a->sinks)
        n->src[MHA_SRC_SINKS] = row_desc(a->sinks);
    if (a->kv_lens)
        n->src[MHA_SRC_KV_LEN] = row_desc(a->kv_lens);
    if (a->alibi_slopes)
        n->src[MHA_SRC_ALIBI] = row_desc(a->alibi_slopes);
    if (!a->alibi)
        return MHA_OK;
    mha_tdesc *s = &n->src[MHA_SRC_ALIBI];
    s->dtype = MHA_F32;
    s->ne[0] = s->ne[1] = s->ne[2] = 1;
    s->ne[3] = dm->Hq;
    s->nb[3] = 1;
    return alibi_buffer(dev, dm->Hq, &s->buf);
}

/* out may be q itself (a query row is read before its output row is
 * written, and by its own task only) but may share no element with any
 * other input: k and v rows are read by every query tile while others
 * write out (on the GPU backends a tile that finished first overwrote
 * rows another still read: wrong results at some lengths, no error), and
 * a partial overlap with q would let one tile's output clobber another's
 * queries. */
static mha_status check_out_apart(mha_context *ctx,
                                  const mha_attention_args *a)
{
    static const char *const names[] = {"k",     "v",     "bias",
                                        "alibi_slopes", "sinks", "kv_lens"};
    const mha_tensor *const read[] = {a->k,            a->v,     a->bias,
                                      a->alibi_slopes, a->sinks, a->kv_lens};
    if (!mha_tensor_same_view(a->out, a->q) &&
        mha_tensor_may_overlap(a->out, a->q))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         FN ": out shares memory with q but is not q "
                         "itself (in place, the same view); a tile's "
                         "output would overwrite another tile's queries");
    return mha_check_apart(ctx, FN, "out", a->out, read, names,
                           (int)(sizeof read / sizeof *read));
}

/* Everything the node reads besides q, k, v and out. */
static mha_status check_extras(mha_device *dev, const mha_attention_args *a,
                               const attn_dims *dm)
{
    mha_status st = check_options(dev->ctx, a);
    if (st == MHA_OK)
        st = check_per_head(dev, "alibi_slopes", a->alibi_slopes, dm->Hq);
    if (st == MHA_OK)
        st = check_per_head(dev, "sinks", a->sinks, dm->Hq);
    if (st == MHA_OK)
        st = check_bias(dev, a->bias, dm);
    if (st == MHA_OK)
        st = check_kv_lens(dev, a->kv_lens, dm);
    return st;
}

mha_status mha_attention(mha_device *device, const mha_attention_args *args)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = device->ctx;
    if (!args)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, FN ": args is NULL");
    mha_status st = mha_struct_check(&ctx->host, FN, "mha_attention_args",
                                     args, sizeof *args);
    attn_dims dm = {0, 0, 0, 0, 0, 0};
    if (st == MHA_OK)
        st = mha_dev_usable(device);
    if (st == MHA_OK)
        st = check_qkv(device, args, &dm);
    if (st == MHA_OK)
        st = check_extras(device, args, &dm);
    if (st == MHA_OK)
        st = check_out_apart(ctx, args);
    mha_node node;
    if (st == MHA_OK)
        st = build_node(device, args, &dm, &node);
    if (st == MHA_OK && !mha_dev_supports(device, &node))
        st = mha_error(ctx, MHA_UNSUPPORTED,
                       FN ": the %s device %s does not run this attention "
                       "(%s, d %lld, %lld/%lld heads)",
                       device->iface->name, device->entry.desc.name,
                       mha_dtype_name(args->q->dtype), (long long)dm.d,
                       (long long)dm.Hq, (long long)dm.Hkv);
    if (st == MHA_OK)
        st = mha_dev_run(device, &node);
    if (st == MHA_OK)
        st = mha_dev_sync(device);
    return mha_host_finish(&ctx->host, FN, st);
}
