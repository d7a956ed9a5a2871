/* adamw.c: mha_adamw, torch.optim.AdamW over one nn.MHA or decoder
 * layer's weights: its m and v state in two device buffers laid out as the
 * layer's gradients, and a step as one ADAMW node per state_dict weight,
 * with the bias corrections of the step computed here in double. An f16
 * layer's optimizer steps an f32 master copy of the weights (mixed
 * precision: updates smaller than an f16 weight's rounding step are not
 * lost) and writes them back rounded to f16; ROPE's converting copy moves
 * them both ways. */
#include <math.h>

#include "decoder.h"
#include "plan.h"
#include "train.h"

struct mha_adamw {
    mha_layer *layer; /* one of layer, decoder */
    mha_decoder *decoder;
    mha_device *device;
    int64_t heads; /* the layer's when made: pruning invalidates */
    mha_adamw_config cfg;
    void *m, *v;
    size_t bytes;
    int64_t steps;
    void *master;          /* f16 layer: f32 weights, bytes long, or NULL */
    int master_ok;         /* master holds the weights of ... */
    uint64_t master_gen;   /* ... this generation of the layer */
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
    mha_device *device = opt->device;
    mha_dev_free(device, opt->m, opt->bytes);
    mha_dev_free(device, opt->v, opt->bytes);
    mha_dev_free(device, opt->master, opt->bytes);
    device->open_objects--;
    mha_host_free(&device->ctx->host, opt);
}

/* The optimizer of opt's layer (set by the caller) over bytes of f32
 * weights (with a master copy of them when master), config checked; frees
 * opt on failure. */
static mha_status make_adamw(mha_device *device, const char *fn,
                             const mha_adamw_config *config, size_t bytes,
                             int master, mha_adamw *opt, mha_adamw **out)
{
    mha_context *ctx = device->ctx;
    mha_status st = config ? check_config(ctx, config) : MHA_OK;
    if (st != MHA_OK) {
        mha_host_free(&ctx->host, opt);
        return st;
    }
    if (config)
        opt->cfg = *config;
    else
        mha_adamw_config_init(&opt->cfg);
    opt->device = device;
    opt->bytes = bytes;
    device->open_objects++;
    st = mha_dev_alloc(device, opt->bytes, &opt->m);
    if (st == MHA_OK)
        st = mha_dev_alloc(device, opt->bytes, &opt->v);
    if (st == MHA_OK)
        st = mha_dev_zero(device, opt->m, opt->bytes);
    if (st == MHA_OK)
        st = mha_dev_zero(device, opt->v, opt->bytes);
    if (st == MHA_OK && master)
        st = mha_dev_alloc(device, opt->bytes, &opt->master);
    if (st != MHA_OK) {
        free_adamw(opt);
        return mha_host_finish(&ctx->host, fn, st);
    }
    *out = opt;
    mha_clear_error(ctx);
    return MHA_OK;
}

/* The struct check and the optimizer's host memory. */
static mha_status new_adamw(mha_context *ctx, const char *fn,
                            const mha_adamw_config *config, mha_adamw **opt)
{
    mha_status st = config ? mha_struct_check(&ctx->host, fn,
                                              "mha_adamw_config", config,
                                              sizeof *config)
                           : MHA_OK;
    if (st != MHA_OK)
        return st;
    *opt = mha_host_calloc(&ctx->host, 1, sizeof **opt);
    return *opt ? MHA_OK
                : mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
}

mha_status mha_adamw_create(mha_layer *layer, const mha_adamw_config *config,
                            mha_adamw **out)
{
    static const char fn[] = "mha_adamw_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_adamw *opt = NULL;
    mha_context *ctx = layer->device->ctx;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: out is NULL", fn);
    mha_status st = new_adamw(ctx, fn, config, &opt);
    if (st != MHA_OK)
        return st;
    opt->layer = layer;
    opt->heads = layer->heads;
    return make_adamw(layer->device, fn, config,
                      mha_layer_welems(layer) * 4,
                      layer->cfg.dtype != MHA_F32, opt, out);
}

mha_status mha_decoder_adamw_create(mha_decoder *layer,
                                    const mha_adamw_config *config,
                                    mha_adamw **out)
{
    static const char fn[] = "mha_decoder_adamw_create";
    if (!layer)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = layer->device->ctx;
    if (!out)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: out is NULL", fn);
    mha_adamw *opt = NULL;
    mha_status st = new_adamw(ctx, fn, config, &opt);
    if (st != MHA_OK)
        return st;
    opt->decoder = layer;
    opt->heads = layer->cfg.num_heads;
    mha_dweight w[MHA_DSLOT_COUNT];
    size_t floats = 0;
    for (int i = 0, n = mha_decoder_weights(layer, w); i < n; i++)
        floats += layer->wlen[w[i].slot];
    return make_adamw(layer->device, fn, config, floats * 4, 0, opt, out);
}

/* Runs node on opt's device, unless it declines it. */
static mha_status run_node(mha_adamw *opt, const mha_node *node)
{
    if (!mha_dev_supports(opt->device, node))
        return mha_graph_unsupported(opt->device, "mha_adamw_step", node,
                                     "an optimizer step");
    return mha_dev_run(opt->device, node);
}

/* Copies the f16 layer's weights into the master (to_master) or the
 * master, rounded, into the weights: ROPE's converting copy over the
 * whole buffer. */
static mha_status master_copy(mha_adamw *opt, int to_master)
{
    size_t n = opt->bytes / 4;
    mha_tdesc weights = mha_train_row(opt->layer->wbuf, 0, n);
    weights.dtype = opt->layer->cfg.dtype;
    mha_tdesc master = mha_train_row(opt->master, 0, n);
    mha_node node = {.op = MHA_OP_ROPE};
    node.dst = to_master ? master : weights;
    node.src[MHA_SRC_ROPE_X] = to_master ? weights : master;
    return run_node(opt, &node);
}

static mha_status run_step(mha_adamw *opt, const mha_gradients *grads,
                           const mha_op_params *p)
{
    mha_device *device = opt->device;
    /* the master is read again when something else changed the weights
       (set, loaded: the generation moved past the last step's) */
    mha_status st = MHA_OK;
    if (opt->master &&
        (!opt->master_ok || opt->master_gen != opt->layer->generation))
        st = master_copy(opt, 1);
    opt->master_ok = 0; /* until the step is done */
    for (int i = 0; st == MHA_OK && i < grads->count; i++) {
        size_t first = grads->off[i], n = grads->len[i];
        mha_node node = {.op = MHA_OP_ADAMW, .params = *p};
        node.dst = opt->master ? mha_train_row(opt->master, first, n)
                               : mha_gradients_param(grads, i);
        node.src[MHA_SRC_ADAM_G] = mha_train_row(grads->flat->buf, first, n);
        node.src[MHA_SRC_ADAM_M] = mha_train_row(opt->m, first, n);
        node.src[MHA_SRC_ADAM_V] = mha_train_row(opt->v, first, n);
        st = run_node(opt, &node);
    }
    if (st == MHA_OK && opt->master)
        st = master_copy(opt, 0);
    if (st == MHA_OK)
        st = mha_dev_sync(device);
    opt->master_ok = st == MHA_OK;
    return st;
}

/* grads fit opt's layer, which still has the heads opt was made for. */
static mha_status check_step(const mha_adamw *opt, const mha_gradients *grads,
                             const char *fn)
{
    mha_context *ctx = opt->device->ctx;
    if (!grads)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: grads is NULL", fn);
    mha_status st = opt->layer
                        ? mha_gradients_check(grads, opt->layer, fn)
                        : mha_decoder_gradients_check(grads, opt->decoder, fn);
    int64_t now = opt->layer ? opt->layer->heads : opt->decoder->cfg.num_heads;
    if (st == MHA_OK && opt->heads != now)
        return mha_error(ctx, MHA_BAD_STATE,
                         "%s: the optimizer was made for %lld heads and the "
                         "layer now has %lld (pruned)",
                         fn, (long long)opt->heads, (long long)now);
    return st;
}

mha_status mha_adamw_step(mha_adamw *opt, const mha_gradients *grads,
                          float lr)
{
    static const char fn[] = "mha_adamw_step";
    if (!opt)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = opt->device->ctx;
    mha_status st = check_step(opt, grads, fn);
    if (st != MHA_OK)
        return st;
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
    if (opt->layer)
        opt->master_gen = ++opt->layer->generation;
    else
        opt->decoder->generation++;
    if (st == MHA_OK)
        opt->steps = t;
    return mha_host_finish(&ctx->host, fn, st);
}

int64_t mha_adamw_steps(const mha_adamw *opt) { return opt ? opt->steps : 0; }

mha_status mha_adamw_destroy(mha_adamw *opt)
{
    if (!opt)
        return MHA_OK;
    mha_context *ctx = opt->device->ctx;
    free_adamw(opt);
    mha_clear_error(ctx);
    return MHA_OK;
}
