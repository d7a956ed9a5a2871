/* adamw.c: mha_adamw, torch.optim.AdamW over one layer's weights: its m
 * and v state in two device buffers laid out as the layer's weight buffer,
 * and a step as one ADAMW node per state_dict weight, with the bias
 * corrections of the step computed here in double. */
#include <math.h>

#include "plan.h"
#include "train.h"

struct mha_adamw {
    mha_layer *layer;
    int64_t heads; /* the layer's when made: pruning invalidates */
    mha_adamw_config cfg;
    void *m, *v;
    size_t bytes;
    int64_t steps;
};

mha_status mha_adamw_config_init_sized(mha_adamw_config *config,
                                       size_t struct_size)
{
    if (mha_struct_init(config, struct_size, sizeof *config) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    config->beta1 = 0.9f;
    config->beta2 = 0.999f;
    config->eps = 1e-8f;
    config->weight_decay = 0.01f;
    return MHA_OK;
}

static mha_status check_config(mha_context *ctx, const mha_adamw_config *c)
{
    const char *bad = !(c->beta1 >= 0.0f && c->beta1 < 1.0f) ? "beta1"
                      : !(c->beta2 >= 0.0f && c->beta2 < 1.0f) ? "beta2"
                      : !(c->eps > 0.0f)                       ? "eps"
                      : !(c->weight_decay >= 0.0f)             ? "weight_decay"
                                                               : NULL;
    if (!bad)
        return MHA_OK;
    return mha_error(ctx, MHA_INVALID_ARGUMENT,
                     "mha_adamw_create: beta1 %g, beta2 %g, eps %g, "
                     "weight_decay %g: %s is out of range (betas in [0, 1), "
                     "eps > 0, weight_decay >= 0)",
                     (double)c->beta1, (double)c->beta2, (double)c->eps,
                     (double)c->weight_decay, bad);
}

static void free_adamw(mha_adamw *opt)
{
    mha_device *device = opt->layer->device;
    mha_dev_free(device, opt->m, opt->bytes);
    mha_dev_free(device, opt->v, opt->bytes);
    device->open_objects--;
    mha_host_free(&device->ctx->host, opt);
}

mha_status mha_adamw_create(mha_layer *layer, const mha_adamw_config *config,
                            mha_adamw **out)
{
    static const char fn[] = "mha_adamw_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    mha_adamw_config defaults;
    mha_adamw_config_init(&defaults);
    mha_status st = config ? mha_struct_check(&ctx->host, fn,
                                              "mha_adamw_config", config,
                                              sizeof *config)
                           : MHA_OK;
    if (st != MHA_OK)
        return st;
    if ((st = mha_train_check_create(layer, fn, out)) != MHA_OK)
        return st;
    if (config && (st = check_config(ctx, config)) != MHA_OK)
        return st;
    mha_adamw *opt = mha_host_calloc(&ctx->host, 1, sizeof *opt);
    if (!opt)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    opt->layer = layer;
    opt->heads = layer->heads;
    opt->cfg = config ? *config : defaults;
    opt->bytes = layer->wbytes;
    layer->device->open_objects++;
    st = mha_dev_alloc(layer->device, opt->bytes, &opt->m);
    if (st == MHA_OK)
        st = mha_dev_alloc(layer->device, opt->bytes, &opt->v);
    if (st == MHA_OK)
        st = mha_dev_zero(layer->device, opt->m, opt->bytes);
    if (st == MHA_OK)
        st = mha_dev_zero(layer->device, opt->v, opt->bytes);
    if (st != MHA_OK) {
        free_adamw(opt);
        return mha_host_finish(&ctx->host, fn, st);
    }
    *out = opt;
    mha_clear_error(ctx);
    return MHA_OK;
}

/* [1,1,1,n] f32 at element first of buf. */
static mha_tdesc row(void *buf, size_t first, size_t n)
{
    mha_tdesc d = {.dtype = MHA_F32,
                   .ne = {1, 1, 1, (int64_t)n},
                   .nb = {(int64_t)n, (int64_t)n, (int64_t)n, 1},
                   .buf = buf,
                   .offset = first * 4};
    return d;
}

static mha_status run_step(mha_adamw *opt, const mha_gradients *grads,
                           const mha_op_params *p)
{
    mha_layer *layer = opt->layer;
    for (int i = 0; i < grads->count; i++) {
        const mha_weight_spec *s = &grads->specs[i];
        size_t first = layer->woff[s->first], n = 0;
        for (int k = 0; k < s->slots; k++)
            n += layer->wlen[s->first + k];
        mha_node node = {.op = MHA_OP_ADAMW, .params = *p};
        node.dst = row(layer->wbuf, first, n);
        node.src[MHA_SRC_ADAM_G] = row(grads->flat->buf, first, n);
        node.src[MHA_SRC_ADAM_M] = row(opt->m, first, n);
        node.src[MHA_SRC_ADAM_V] = row(opt->v, first, n);
        if (!mha_dev_supports(layer->device, &node))
            return mha_graph_unsupported(layer->device,
                                              "mha_adamw_step", &node,
                                              "an optimizer step");
        mha_status st = mha_dev_run(layer->device, &node);
        if (st != MHA_OK)
            return st;
    }
    return mha_dev_sync(layer->device);
}

mha_status mha_adamw_step(mha_adamw *opt, const mha_gradients *grads,
                          float lr)
{
    static const char fn[] = "mha_adamw_step";
    if (!opt)
        return MHA_INVALID_ARGUMENT;
    mha_layer *layer = opt->layer;
    mha_context *ctx = layer->device->ctx;
    if (!grads)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: grads is NULL", fn);
    mha_status st = mha_gradients_check(grads, layer, fn);
    if (st != MHA_OK)
        return st;
    if (opt->heads != layer->heads)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: the optimizer was made for %lld heads and the "
                         "layer now has %lld (pruned)",
                         fn, (long long)opt->heads, (long long)layer->heads);
    if (!(lr >= 0.0f) || isinf(lr))
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: lr %g; expected a finite value >= 0", fn,
                         (double)lr);
    int64_t t = opt->steps + 1;
    mha_op_params p = {
        .adam_lr = lr,
        .adam_beta1 = opt->cfg.beta1,
        .adam_beta2 = opt->cfg.beta2,
        .adam_eps = opt->cfg.eps,
        .adam_weight_decay = opt->cfg.weight_decay,
        .adam_bc1 = (float)(1.0 - pow((double)opt->cfg.beta1, (double)t)),
        .adam_bc2 = (float)(1.0 - pow((double)opt->cfg.beta2, (double)t))};
    st = run_step(opt, grads, &p);
    /* the weights may have moved even when a later node failed */
    layer->generation++;
    if (st == MHA_OK)
        opt->steps = t;
    return mha_host_finish(&ctx->host, fn, st);
}

int64_t mha_adamw_steps(const mha_adamw *opt) { return opt ? opt->steps : 0; }

mha_status mha_adamw_destroy(mha_adamw *opt)
{
    if (!opt)
        return MHA_OK;
    mha_context *ctx = opt->layer->device->ctx;
    free_adamw(opt);
    mha_clear_error(ctx);
    return MHA_OK;
}
