/* backward.c: mha_layer_backward. Checks the call against the layer's last
 * training forward (its shapes, the weights' generation), keeps the
 * backward graph of the last shape and runs it with the caller's tensors
 * and the saved state bound by role. */
#include <string.h>

#include "plan.h"
#include "tensor.h"
#include "train.h"

/* The first version of mha_backward_args is the whole struct. */
#define BACKWARD_ARGS_V1 sizeof(mha_backward_args)

mha_status mha_backward_args_init_sized(mha_backward_args *args,
                                        size_t struct_size)
{
    return mha_struct_init(args, struct_size, BACKWARD_ARGS_V1);
}

mha_status mha_train_check_like(mha_device *device, const char *fn,
                                const char *name, const mha_tensor *t,
                                const mha_tensor *like)
{
    mha_context *ctx = device->ctx;
    char got[96], want[96];
    if (t->device != device || t->base)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s is %s", fn, name,
                         t->base ? "a view; layers take whole tensors"
                                 : "on another device than the layer");
    if (t->dtype != MHA_F32)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: %s has dtype %s; expected f32", fn, name,
                         mha_dtype_name(t->dtype));
    int same = t->ndim == like->ndim;
    for (int i = 0; same && i < t->ndim; i++)
        same = t->shape[i] == like->shape[i];
    if (!same)
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "%s: %s has shape %s; expected %s, the shape of "
                         "the training forward's %s",
                         fn, name, mha_shape_str(got, sizeof got, t->ndim,
                                                 t->shape),
                         mha_shape_str(want, sizeof want, like->ndim,
                                       like->shape),
                         strcmp(name, "grad_output") == 0 ? "output"
                         : strcmp(name, "grad_query") == 0 ? "query"
                         : strcmp(name, "grad_key") == 0   ? "key"
                         : strcmp(name, "grad_value") == 0 ? "value"
                                                           : "head_gates");
    return MHA_OK;
}

/* The saved state a backward can use, or MHA_BAD_STATE saying why not. */
static mha_status check_saved(mha_layer *layer, const char *fn)
{
    const mha_saved *s = layer->saved;
    if (!s || !s->valid)
        return mha_error(layer->device->ctx, MHA_BAD_STATE,
                         "%s: no training forward to backpropagate through "
                         "(call mha_layer_forward with save_for_backward = 1 "
                         "first)",
                         fn);
    if (s->generation != layer->generation)
        return mha_error(layer->device->ctx, MHA_BAD_STATE,
                         "%s: the layer's weights changed (set, loaded, "
                         "pruned or stepped) since its training forward; "
                         "run the training forward again",
                         fn);
    return MHA_OK;
}

/* The gradients mha_layer_backward writes, in args order. */
static const char *const grad_names[4] = {"grad_query", "grad_key",
                                          "grad_value", "grad_head_gates"};

/* The gradients written apart from the saved inputs and gates, which the
 * backward still reads after writing one (and which must stay unchanged
 * until the last backward). */
static mha_status check_written_apart(mha_context *ctx, const char *fn,
                                      const mha_saved *s,
                                      const mha_backward_args *a)
{
    static const char *const read_names[MHA_SAVED_INPUTS + 1] = {
        "query", "key", "value", "key_padding_mask", "attn_mask",
        "head_gates"};
    const mha_tensor *read[MHA_SAVED_INPUTS + 1];
    memcpy(read, s->inputs, sizeof s->inputs);
    read[MHA_SAVED_INPUTS] = s->gates;
    const mha_tensor *const written[4] = {a->grad_query, a->grad_key,
                                          a->grad_value, a->grad_head_gates};
    mha_status st = MHA_OK;
    for (int i = 0; st == MHA_OK && i < 4; i++)
        st = mha_check_apart(ctx, fn, grad_names[i], written[i], read,
                             read_names, MHA_SAVED_INPUTS + 1);
    return st;
}

/* Checks args and fills key and the external buffers. */
static mha_status check_args(mha_layer *layer, const char *fn,
                             const mha_backward_args *a, mha_bwd_key *key,
                             void *ext[MHA_BUF_EXTERNAL_COUNT])
{
    mha_context *ctx = layer->device->ctx;
    const mha_saved *s = layer->saved;
    if (!a->grad_output)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: grad_output is NULL",
                         fn);
    /* the output has the query's shape with E features: query's own when
     * query has E features, which the layer requires */
    mha_status st = mha_train_check_like(layer->device, fn, "grad_output",
                                         a->grad_output, s->inputs[0]);
    mha_tensor *const d[3] = {a->grad_query, a->grad_key, a->grad_value};
    for (int i = 0; st == MHA_OK && i < 3; i++)
        if (d[i])
            st = mha_train_check_like(layer->device, fn, grad_names[i], d[i],
                                      s->inputs[i]);
    if (st == MHA_OK && a->grads)
        st = mha_gradients_check(a->grads, layer, fn);
    if (st == MHA_OK && a->grad_head_gates && !s->gates)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: grad_head_gates given, but the training "
                         "forward had no head_gates",
                         fn);
    if (st == MHA_OK && a->grad_head_gates)
        st = mha_train_check_like(layer->device, fn, "grad_head_gates",
                                  a->grad_head_gates, s->gates);
    if (st == MHA_OK)
        st = check_written_apart(ctx, fn, s, a);
    if (st != MHA_OK)
        return st;
    memset(key, 0, sizeof *key);
    key->call = s->call;
    key->grads = a->grads != NULL;
    key->accumulate = a->accumulate != 0;
    key->dgates = a->grad_head_gates != NULL;
    for (int i = 0; i < 3; i++) {
        key->want[i] = d[i] != NULL;
        for (int j = 0; j < i; j++)
            key->adds[i] |= d[i] && d[i] == d[j];
        if (d[i])
            ext[MHA_BUF_DQUERY + i] = d[i]->buf;
    }
    for (int i = 0; i < MHA_SAVED_INPUTS; i++)
        ext[MHA_BUF_QUERY + i] = s->inputs[i] ? s->inputs[i]->buf : NULL;
    for (int i = 0; i < MHA_SAVED_COUNT; i++)
        ext[MHA_BUF_SAVED_Q + i] = s->buf[i];
    ext[MHA_BUF_DY] = a->grad_output->buf;
    ext[MHA_BUF_GATES] = s->gates ? s->gates->buf : NULL;
    ext[MHA_BUF_DGATES] = a->grad_head_gates ? a->grad_head_gates->buf
                                             : NULL;
    ext[MHA_BUF_PARAMS] = layer->wbuf;
    ext[MHA_BUF_GRADS] = a->grads ? a->grads->flat->buf : NULL;
    return MHA_OK;
}

/* The saved state's graph for key, built and given an arena when the last
 * backward had another. */
static mha_status get_graph(mha_layer *layer, const char *fn,
                            const mha_bwd_key *key)
{
    mha_saved *s = layer->saved;
    if (s->has_graph && memcmp(&s->key, key, sizeof *key) == 0)
        return MHA_OK;
    mha_saved_drop_graph(layer);
    mha_backward_graph_build(layer, key, &s->graph);
    mha_status st = mha_graph_prepare(layer->device, fn, &s->graph,
                                      "a backward", &s->arena,
                                      &s->arena_bytes);
    if (st != MHA_OK)
        return st;
    s->key = *key;
    s->has_graph = 1;
    return MHA_OK;
}

mha_status mha_layer_backward(mha_layer *layer, const mha_backward_args *a)
{
    static const char fn[] = "mha_layer_backward";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!a)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: args is NULL", fn);
    mha_status st = mha_struct_check(&ctx->host, fn, "mha_backward_args", a,
                                     BACKWARD_ARGS_V1);
    if (st == MHA_OK)
        st = check_saved(layer, fn);
    mha_bwd_key key;
    void *ext[MHA_BUF_EXTERNAL_COUNT] = {NULL};
    if (st == MHA_OK)
        st = check_args(layer, fn, a, &key, ext);
    if (st == MHA_OK)
        st = get_graph(layer, fn, &key);
    if (st == MHA_OK)
        st = mha_graph_enqueue(layer->device, &layer->saved->graph,
                               layer->saved->arena, ext, NULL);
    if (st == MHA_OK)
        st = mha_dev_sync(layer->device);
    return mha_host_finish(&ctx->host, fn, st);
}
