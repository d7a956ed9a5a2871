/* train.c: the state a training forward saves in its layer for the
 * backward (projections, attention output, row LSE, and references to the
 * caller's inputs), kept across calls and grown only when a call needs
 * more, and the device zeroing the training objects use. */
#include <string.h>

#include "plan.h"
#include "tensor.h"
#include "train.h"

void mha_saved_drop_graph(mha_layer *layer)
{
    mha_saved *s = layer->saved;
    mha_dev_free(layer->device, s->arena, s->arena_bytes);
    s->has_graph = 0;
    s->arena = NULL;
    s->arena_bytes = 0;
}

mha_status mha_saved_prepare(mha_layer *layer, const char *fn,
                             const mha_call *call,
                             const mha_tensor *const inputs[MHA_SAVED_INPUTS],
                             const mha_tensor *gates,
                             void *ext[MHA_BUF_EXTERNAL_COUNT])
{
    mha_context *ctx = layer->device->ctx;
    if (!layer->saved &&
        !(layer->saved = mha_host_calloc(&ctx->host, 1, sizeof *layer->saved)))
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    mha_saved *s = layer->saved;
    s->valid = 0;
    size_t N = (size_t)call->batch, L = (size_t)call->tgt_len;
    size_t S2 = (size_t)mha_call_keys(layer, call);
    size_t I = (size_t)mha_layer_inner(layer);
    /* f32, an f16 layer's too: Q and K in fp16 would put scores of 100
     * off by 0.05, their probabilities by 5% */
    size_t need[MHA_SAVED_COUNT] = {N * L * I * 4, N * S2 * I * 4,
                                    N * S2 * I * 4, N * L * I * 4,
                                    N * (size_t)layer->heads * L * 4};
    for (int i = 0; i < MHA_SAVED_COUNT; i++) {
        if (s->bytes[i] < need[i]) {
            mha_dev_free(layer->device, s->buf[i], s->bytes[i]);
            s->buf[i] = NULL;
            s->bytes[i] = 0;
            mha_status st = mha_dev_alloc(layer->device, need[i], &s->buf[i]);
            if (st != MHA_OK)
                return st;
            s->bytes[i] = need[i];
        }
        ext[MHA_BUF_SAVED_Q + i] = s->buf[i];
    }
    s->call = *call;
    memcpy(s->inputs, inputs, sizeof s->inputs);
    s->gates = gates;
    return MHA_OK;
}

void mha_saved_commit(mha_layer *layer, int ok)
{
    if (!layer->saved)
        return;
    layer->saved->valid = ok;
    layer->saved->generation = layer->generation;
}

void mha_saved_release(mha_layer *layer)
{
    mha_saved *s = layer->saved;
    if (!s)
        return;
    mha_saved_drop_graph(layer);
    for (int i = 0; i < MHA_SAVED_COUNT; i++)
        mha_dev_free(layer->device, s->buf[i], s->bytes[i]);
    mha_host_free(&layer->device->ctx->host, s);
    layer->saved = NULL;
}

mha_status mha_dev_zero(mha_device *device, void *buf, size_t bytes)
{
    static const char zeros[4096];
    for (size_t at = 0; at < bytes; at += sizeof zeros) {
        size_t n = bytes - at < sizeof zeros ? bytes - at : sizeof zeros;
        mha_status st = mha_dev_write(device, buf, at, zeros, n);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}
