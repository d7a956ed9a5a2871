/* forward.c: the forward entry points. Validates every argument against the
 * layer (PyTorch's shape rules), gets the plan for the call shape from the
 * layer's cache (plan_cache.c) and runs it on the caller's device tensors,
 * or on host arrays staged through the plan's device buffers (staging.c). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "interop.h"
#include "plan.h"
#include "tensor.h"
#include "train.h"

/* One argument as validation sees it, from a device tensor or host array. */
typedef struct arg_view {
    const char *name;
    int present;
    mha_dtype dtype;
    int ndim;
    const int64_t *shape;
    const void *data; /* the tensor's buffer or the array's memory */
} arg_view;

static mha_status bad_shape(mha_context *ctx, const char *fn,
                            const arg_view *a, const char *expected)
{
    char got[96];
    return mha_error(ctx, MHA_SHAPE_MISMATCH, "%s: %s has shape %s; expected %s",
                     fn, a->name, mha_shape_str(got, sizeof got, a->ndim, a->shape),
                     expected);
}

static mha_status check_dims(mha_context *ctx, const char *fn,
                             const arg_view *a, int ndim, const int64_t *want,
                             const char *what)
{
    char buf[160], w[96];
    int ok = a->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = a->shape[i] == want[i];
    if (ok)
        return MHA_OK;
    snprintf(buf, sizeof buf, "%s %s", mha_shape_str(w, sizeof w, ndim, want),
             what);
    return bad_shape(ctx, fn, a, buf);
}

static mha_status check_input_dtype(mha_context *ctx, const char *fn,
                                    const arg_view *a, int mask)
{
    if (mask ? (a->dtype == MHA_BOOL || a->dtype == MHA_F32)
             : a->dtype == MHA_F32)
        return MHA_OK;
    return mha_error(ctx, MHA_DTYPE_MISMATCH,
                     "%s: %s has dtype %d (%s); expected %s", fn, a->name,
                     (int)a->dtype, mha_dtype_name(a->dtype),
                     mask ? "bool or f32" : "f32");
}

/* Reads N, L, S from query, key and value and checks their features. */
static mha_status check_qkv(const mha_layer *layer, const char *fn,
                            const arg_view qkv[3], mha_call *call)
{
    mha_context *ctx = layer->device->ctx;
    const mha_layer_config *c = &layer->cfg;
    int64_t feat[3] = {c->embed_dim, c->kdim, c->vdim};
    static const char *const feat_name[3] = {"embed_dim", "kdim", "vdim"};
    size_t count;
    for (int i = 0; i < 3; i++) {
        if (!qkv[i].present)
            return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                             qkv[i].name);
        mha_status st = check_input_dtype(ctx, fn, &qkv[i], 0);
        if (st == MHA_OK)
            st = mha_check_shape(ctx, fn, qkv[i].name, qkv[i].ndim,
                                 qkv[i].shape, &count);
        if (st != MHA_OK)
            return st;
    }
    int nd = qkv[0].ndim;
    if (nd != 2 && nd != 3)
        return bad_shape(ctx, fn, &qkv[0],
                         c->batch_first ? "(N, L, E) or unbatched (L, E)"
                                        : "(L, N, E) or unbatched (L, E)");
    for (int i = 1; i < 3; i++)
        if (qkv[i].ndim != nd)
            return bad_shape(ctx, fn, &qkv[i],
                             nd == 3 ? "3 dimensions like the batched query"
                                     : "2 dimensions like the unbatched "
                                       "query");
    int seq = nd == 3 && c->batch_first ? 1 : 0, bat = nd == 3 ? 1 - seq : -1;
    call->batched = nd == 3;
    call->batch = nd == 3 ? qkv[0].shape[bat] : 1;
    call->tgt_len = qkv[0].shape[seq];
    call->src_len = qkv[1].ndim == nd ? qkv[1].shape[seq] : -1;
    for (int i = 0; i < 3; i++) {
        int64_t want[3];
        int64_t len = i == 0 ? call->tgt_len : call->src_len;
        if (nd == 3) {
            want[seq] = len;
            want[bat] = call->batch;
        } else {
            want[0] = len;
        }
        want[nd - 1] = feat[i];
        char what[64];
        snprintf(what, sizeof what, "(last dimension %s)", feat_name[i]);
        mha_status st = check_dims(ctx, fn, &qkv[i], nd, want,
                                   i == 2 ? "(value must match key in length "
                                            "and batch; last dimension vdim)"
                                          : what);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

static mha_status check_masks(const mha_layer *layer, const char *fn,
                              const arg_view *kpm, const arg_view *mask,
                              mha_call *call)
{
    mha_context *ctx = layer->device->ctx;
    int64_t N = call->batch, L = call->tgt_len, S = call->src_len;
    int64_t H = layer->heads;
    mha_status st;
    size_t count;
    /* ndim first: a host array's shape holds MHA_MAX_DIMS entries, and
     * nothing (messages included) may read past them */
    for (int i = 0; i < 2; i++) {
        const arg_view *m = i ? mask : kpm;
        if (m->present && (st = mha_check_shape(ctx, fn, m->name, m->ndim,
                                                m->shape, &count)) != MHA_OK)
            return st;
    }
    if (kpm->present) {
        int64_t want[2] = {N, S};
        if ((st = check_input_dtype(ctx, fn, kpm, 1)) != MHA_OK ||
            (st = call->batched
                      ? check_dims(ctx, fn, kpm, 2, want, "(N, S)")
                      : check_dims(ctx, fn, kpm, 1, want + 1,
                                   "(S) for unbatched input")) != MHA_OK)
            return st;
        call->has_kpm = 1;
    }
    if (mask->present) {
        if ((st = check_input_dtype(ctx, fn, mask, 1)) != MHA_OK)
            return st;
        int64_t want2[2] = {L, S}, want3[3] = {N * H, L, S};
        call->mask_per_head = mask->ndim == 3;
        st = mask->ndim == 3
                 ? check_dims(ctx, fn, mask, 3, want3, "(N*num_heads, L, S)")
                 : check_dims(ctx, fn, mask, 2, want2,
                              "(L, S) or (N*num_heads, L, S)");
        if (st != MHA_OK)
            return st;
        call->has_mask = 1;
    }
    return MHA_OK;
}

/* Whether two present arguments are one tensor or array: the same memory
 * (a layer takes whole tensors; mha_graph_packs compares the shapes). */
static int same_input(const arg_view *a, const arg_view *b)
{
    return a->present && a->data == b->data;
}

/* Everything a forward needs to know about its arguments, checked. */
static mha_status make_call(const mha_layer *layer, const char *fn,
                            const arg_view args[5], int causal,
                            int need_weights, int average, mha_call *call)
{
    memset(call, 0, sizeof *call);
    mha_status st = mha_layer_check_set(layer, fn);
    if (st == MHA_OK)
        st = check_qkv(layer, fn, args, call);
    if (st == MHA_OK)
        st = check_masks(layer, fn, &args[3], &args[4], call);
    call->causal = causal != 0;
    /* after the checks: a bad ndim must not be read past */
    call->same_qkv = st == MHA_OK && same_input(&args[0], &args[1]) &&
                     same_input(&args[0], &args[2]);
    call->need_weights = need_weights != 0;
    call->average = need_weights && average != 0;
    if (st == MHA_OK) {
        /* every size the call derives: output, weights (per head), scores */
        size_t n = 1;
        int64_t f[5] = {call->batch, layer->heads, call->tgt_len,
                        mha_call_keys(layer, call), 4};
        for (int i = 0; i < 5; i++)
            if (!mha_mul_size(n, (size_t)f[i], &n))
                return mha_error(layer->device->ctx, MHA_OVERFLOW,
                                 "%s: the attention weights of %lld x %lld "
                                 "x %lld x %lld overflow size_t",
                                 fn, (long long)f[0], (long long)f[1],
                                 (long long)f[2], (long long)f[3]);
    }
    return st;
}

/* Shapes of the results, PyTorch's. */
static void result_shapes(const mha_layer *layer, const mha_call *call,
                          int *out_nd, int64_t out_shape[3], int *w_nd,
                          int64_t w_shape[4])
{
    int64_t N = call->batch, L = call->tgt_len, E = layer->cfg.embed_dim;
    int64_t S2 = mha_call_keys(layer, call), H = layer->heads;
    *out_nd = call->batched ? 3 : 2;
    if (!call->batched) {
        out_shape[0] = L;
        out_shape[1] = E;
    } else if (layer->cfg.batch_first) {
        out_shape[0] = N, out_shape[1] = L, out_shape[2] = E;
    } else {
        out_shape[0] = L, out_shape[1] = N, out_shape[2] = E;
    }
    int64_t full[4] = {N, H, L, S2};
    int skip_n = !call->batched, skip_h = call->average;
    *w_nd = 0;
    for (int i = 0; i < 4; i++)
        if (!(i == 0 && skip_n) && !(i == 1 && skip_h))
            w_shape[(*w_nd)++] = full[i];
}

static size_t shape_count(int nd, const int64_t *shape)
{
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)shape[i];
    return n;
}

/* ---- device-tensor forward ------------------------------------------------- */

/* The size of mha_forward_args' first version (up to weights): callers
 * built against it are served, the head fields reading as absent. */
#define FORWARD_ARGS_V1 offsetof(mha_forward_args, head_gates)

mha_status mha_forward_args_init_sized(mha_forward_args *args,
                                       size_t struct_size)
{
    if (mha_struct_init(args, struct_size, FORWARD_ARGS_V1) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    args->average_attn_weights = 1;
    return MHA_OK;
}

static arg_view tensor_view(const char *name, const mha_tensor *t)
{
    arg_view v = {name, t != NULL, t ? t->dtype : MHA_F32, t ? t->ndim : 0,
                  t ? t->shape : NULL, t ? t->buf : NULL};
    return v;
}

static mha_status check_result_tensor(mha_layer *layer, const char *fn,
                                      const char *name, const mha_tensor *t,
                                      int nd, const int64_t *shape)
{
    mha_context *ctx = layer->device->ctx;
    if (!t)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                         name);
    arg_view v = tensor_view(name, t);
    mha_status st = check_input_dtype(ctx, fn, &v, 0);
    if (st != MHA_OK)
        return st;
    return check_dims(ctx, fn, &v, nd, shape, "");
}

#define FORWARD_TENSORS 9 /* query ... weights, head_gates, head_outputs */

static mha_status check_same_device(mha_layer *layer, const char *fn,
                                    const mha_tensor *const t[FORWARD_TENSORS],
                                    const char *const names[FORWARD_TENSORS])
{
    for (int i = 0; i < FORWARD_TENSORS; i++) {
        if (t[i] && t[i]->device != layer->device)
            return mha_error(layer->device->ctx, MHA_INVALID_ARGUMENT,
                             "%s: %s lives on another device than the layer",
                             fn, names[i]);
        if (t[i] && t[i]->base)
            return mha_error(layer->device->ctx, MHA_INVALID_ARGUMENT,
                             "%s: %s is a view; layers take whole tensors "
                             "(views are for mha_attention)",
                             fn, names[i]);
    }
    return MHA_OK;
}

/* Checks head_gates and head_outputs and records in call which heads are
 * skipped, whether gates multiply, and whether head outputs are copied. */
static mha_status head_control(mha_layer *layer, const char *fn,
                               const mha_forward_args *a, mha_call *call)
{
    mha_context *ctx = layer->device->ctx;
    int64_t N = call->batch, H = layer->heads, L = call->tgt_len;
    mha_status st;
    if (a->head_outputs) {
        int64_t want[4] = {N, H, L, layer->head_dim};
        arg_view v = tensor_view("head_outputs", a->head_outputs);
        if ((st = check_input_dtype(ctx, fn, &v, 0)) != MHA_OK ||
            (st = call->batched
                      ? check_dims(ctx, fn, &v, 4, want, "(N, H, L, d)")
                      : check_dims(ctx, fn, &v, 3, want + 1,
                                   "(H, L, d) for unbatched input")) != MHA_OK)
            return st;
        call->head_outputs = 1;
    }
    if (!a->head_gates)
        return MHA_OK;
    arg_view v = tensor_view("head_gates", a->head_gates);
    int64_t want[2] = {N, H};
    if ((st = check_input_dtype(ctx, fn, &v, 0)) != MHA_OK)
        return st;
    if (v.ndim == 2)
        st = check_dims(ctx, fn, &v, 2, want, "(N, H): N batch items by H "
                                               "heads");
    else
        st = check_dims(ctx, fn, &v, 1, want + 1, "(H), one gate per head, "
                                                  "or (N, H)");
    if (st != MHA_OK)
        return st;
    call->gates = v.ndim; /* a whole tensor of the layer's device (checked) */
    return mha_gates_read(layer->device, a->head_gates, H, 1, call->skip,
                          &call->gate_mul);
}

/* A training forward (save_for_backward): refuses what the backward does
 * not do yet, then marks the call so the graph saves into the layer. */
static mha_status training_call(mha_layer *layer, const char *fn,
                                const mha_forward_args *a, int waits,
                                mha_call *call)
{
    mha_context *ctx = layer->device->ctx;
    const char *no = !waits ? "enqueued or recorded forwards"
                     : a->need_weights ? "need_weights"
                                       : NULL;
    if (no)
        return mha_error(ctx, MHA_UNSUPPORTED,
                         "%s: save_for_backward: the backward does not "
                         "support %s yet",
                         fn, no);
    call->train = 1;
    /* every head computed (the backward needs each one's O and LSE), the
     * gates multiplied, zeros included */
    memset(call->skip, 0, sizeof call->skip);
    call->gate_mul = call->gates != 0;
    return MHA_OK;
}

/* Checks the call, finds its plan and hands every node to the backend. */
static mha_status enqueue_forward(mha_layer *layer, const char *fn,
                                  const mha_forward_args *a, int waits,
                                  mha_plan **plan)
{
    static const char *const names[FORWARD_TENSORS] = {
        "query", "key", "value", "key_padding_mask", "attn_mask", "output",
        "weights", "head_gates", "head_outputs"};
    static const mha_buf_role roles[FORWARD_TENSORS] = {
        MHA_BUF_QUERY, MHA_BUF_KEY, MHA_BUF_VALUE, MHA_BUF_KPM, MHA_BUF_MASK,
        MHA_BUF_OUTPUT, MHA_BUF_WEIGHTS, MHA_BUF_GATES,
        MHA_BUF_HEAD_OUTPUTS};
    mha_context *ctx = layer->device->ctx;
    if (!a)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: args is NULL", fn);
    mha_status st = mha_struct_check(&ctx->host, fn, "mha_forward_args", a,
                                     FORWARD_ARGS_V1);
    if (st != MHA_OK)
        return st;
    /* fields past the caller's struct_size read as absent (mha.h, "ABI") */
    mha_forward_args args = {0};
    memcpy(&args, a, a->struct_size < sizeof args ? a->struct_size
                                                  : sizeof args);
    a = &args;
    const mha_tensor *t[FORWARD_TENSORS] = {
        a->query,  a->key,     a->value,      a->key_padding_mask,
        a->attn_mask, a->output, a->weights, a->head_gates,
        a->head_outputs};
    arg_view views[5];
    for (int i = 0; i < 5; i++)
        views[i] = tensor_view(names[i], t[i]);
    mha_call call;
    st = make_call(layer, fn, views, a->is_causal, a->need_weights,
               a->average_attn_weights, &call);
    if (st == MHA_OK)
        st = check_same_device(layer, fn, t, names);
    if (st == MHA_OK)
        st = head_control(layer, fn, a, &call);
    if (st == MHA_OK && a->save_for_backward)
        st = training_call(layer, fn, a, waits, &call);
    int out_nd, w_nd;
    int64_t out_shape[3], w_shape[4];
    result_shapes(layer, &call, &out_nd, out_shape, &w_nd, w_shape);
    if (st == MHA_OK)
        st = check_result_tensor(layer, fn, "output", a->output, out_nd,
                                 out_shape);
    if (st == MHA_OK && call.need_weights)
        st = check_result_tensor(layer, fn, "weights", a->weights, w_nd,
                                 w_shape);
    if (st == MHA_OK)
        st = mha_plan_get(layer, fn, &call, waits, plan);
    if (st != MHA_OK)
        return st;
    void *ext[MHA_BUF_EXTERNAL_COUNT] = {NULL};
    for (int i = 0; i < FORWARD_TENSORS; i++)
        ext[roles[i]] = t[i] ? t[i]->buf : NULL;
    if (call.train &&
        (st = mha_saved_prepare(layer, fn, &call, t, a->head_gates, ext)) !=
            MHA_OK)
        return st;
    return mha_plan_enqueue(layer, *plan, ext);
}

mha_status mha_layer_forward(mha_layer *layer, const mha_forward_args *a)
{
    static const char fn[] = "mha_layer_forward";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_plan *plan = NULL;
    mha_status st = enqueue_forward(layer, fn, a, 1, &plan);
    if (st == MHA_OK)
        st = mha_dev_sync(layer->device);
    if (plan && plan->call.train)
        mha_saved_commit(layer, st == MHA_OK);
    mha_plan_release(layer, plan);
    return mha_host_finish(&layer->device->ctx->host, fn, st);
}

mha_status mha_layer_forward_enqueue(mha_layer *layer, const char *fn,
                                     const mha_forward_args *a)
{
    mha_plan *plan = NULL;
    mha_status st = enqueue_forward(layer, fn, a, 0, &plan);
    if (plan)
        plan->pinned = 1;
    return mha_host_finish(&layer->device->ctx->host, fn, st);
}

/* ---- host-memory forward ---------------------------------------------------- */

mha_status mha_host_forward_args_init_sized(mha_host_forward_args *args,
                                            size_t struct_size)
{
    if (mha_struct_init(args, struct_size, sizeof *args) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    args->average_attn_weights = 1;
    return MHA_OK;
}

static arg_view array_view(const char *name, const mha_host_array *a)
{
    arg_view v = {name, a->data != NULL, a->dtype, a->ndim, a->shape,
                  a->data};
    return v;
}

static mha_status host_call(mha_layer *layer, const char *fn,
                            const mha_host_forward_args *a, mha_call *call)
{
    const mha_host_array *arr[5] = {&a->query, &a->key, &a->value,
                                    &a->key_padding_mask, &a->attn_mask};
    static const char *const names[5] = {"query", "key", "value",
                                         "key_padding_mask", "attn_mask"};
    mha_status st = mha_struct_check(&layer->device->ctx->host, fn,
                                     "mha_host_forward_args", a, sizeof *a);
    if (st != MHA_OK)
        return st;
    arg_view views[5];
    for (int i = 0; i < 5; i++)
        views[i] = array_view(names[i], arr[i]);
    return make_call(layer, fn, views, a->is_causal, a->need_weights,
                     a->average_attn_weights, call);
}

mha_status mha_layer_output_size(mha_layer *layer,
                                 const mha_host_forward_args *args,
                                 size_t *output_count, size_t *weights_count)
{
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    if (!args || !output_count || !weights_count)
        return mha_error(layer->device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_layer_output_size: an argument is NULL");
    mha_call call;
    mha_status st = host_call(layer, "mha_layer_output_size", args, &call);
    if (st != MHA_OK)
        return st;
    int out_nd, w_nd;
    int64_t out_shape[3], w_shape[4];
    result_shapes(layer, &call, &out_nd, out_shape, &w_nd, w_shape);
    *output_count = shape_count(out_nd, out_shape);
    *weights_count = call.need_weights ? shape_count(w_nd, w_shape) : 0;
    mha_clear_error(layer->device->ctx);
    return MHA_OK;
}

static mha_status check_capacity(mha_context *ctx, const char *what,
                                 const float *ptr, size_t have, size_t need)
{
    if (!ptr)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_layer_forward_host: %s is NULL", what);
    if (have < need)
        return mha_error(ctx, MHA_BUFFER_TOO_SMALL,
                         "mha_layer_forward_host: %s holds %zu floats; the "
                         "result has %zu",
                         what, have, need);
    return MHA_OK;
}

mha_status mha_layer_forward_host(mha_layer *layer,
                                  const mha_host_forward_args *a)
{
    static const char fn[] = "mha_layer_forward_host";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!a)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: args is NULL", fn);
    mha_call call;
    mha_status st = host_call(layer, fn, a, &call);
    if (st != MHA_OK)
        return st;
    int out_nd, w_nd;
    int64_t out_shape[3], w_shape[4];
    result_shapes(layer, &call, &out_nd, out_shape, &w_nd, w_shape);
    size_t out_count = shape_count(out_nd, out_shape);
    size_t w_count = call.need_weights ? shape_count(w_nd, w_shape) : 0;
    st = check_capacity(ctx, "output", a->output, a->output_count, out_count);
    if (st == MHA_OK && w_count)
        st = check_capacity(ctx, "weights", a->weights, a->weights_count,
                            w_count);
    mha_plan *plan = NULL;
    if (st == MHA_OK)
        st = mha_plan_get(layer, fn, &call, 1, &plan);
    if (st == MHA_OK)
        st = mha_plan_run_host(layer, plan, a, out_count, w_count);
    mha_plan_release(layer, plan);
    return mha_host_finish(&ctx->host, fn, st);
}
