/* run.c: mha-heads' layers, inputs and statistics: a layer from a
 * .safetensors file (or seeded random weights), inputs from files (or
 * seeded random ones), device tensors for one call, and the mha_head_stats
 * pass over every input. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heads.h"

/* xorshift64*: seeded, so a random layer or input is the same every run. */
static float uniform(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (float)((*s * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static void random_fill(float *x, size_t n, float scale, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (2.0f * uniform(s) - 1.0f);
}

static int random_array(heads_array *a, int ndim, const int64_t *shape,
                        float scale, uint64_t *seed)
{
    a->ndim = ndim;
    memcpy(a->shape, shape, (size_t)ndim * sizeof *shape);
    if (heads_shape_count(ndim, shape, &a->count))
        return -1;
    a->data = malloc(a->count * sizeof(float));
    if (!a->data)
        return -1;
    random_fill(a->data, a->count, scale, seed);
    return 0;
}

mha_status heads_fail(const heads_options *o, mha_status st)
{
    const char *msg = o->ctx ? mha_context_errmsg(o->ctx) : "";
    if (st != MHA_OK)
        fprintf(stderr, "mha-heads: %s\n", *msg ? msg : mha_status_str(st));
    return st;
}

/* ---- inputs -------------------------------------------------------------- */

/* The gradient of input in: a file, or "random" in the output's shape. */
static int load_grad(const char *spec, heads_input *in, uint64_t *seed,
                     char *err, size_t n)
{
    if (strcmp(spec, "random") != 0)
        return heads_array_load(spec, &in->grad, err, n);
    if (random_array(&in->grad, in->query.ndim, in->query.shape, 1.0f, seed))
        return snprintf(err, n, "out of memory"), -1;
    return 0;
}

static int random_input(const heads_options *o, heads_input *in,
                        uint64_t *seed)
{
    const mha_layer_config *c = &o->cfg;
    int64_t q[3] = {o->tgt_len, o->batch, c->embed_dim};
    int64_t k[3] = {o->src_len, o->batch, c->kdim ? c->kdim : c->embed_dim};
    if (c->batch_first) {
        q[0] = k[0] = o->batch;
        q[1] = o->tgt_len;
        k[1] = o->src_len;
    }
    if (random_array(&in->query, 3, q, 1.0f, seed))
        return -1;
    if ((o->src_len != o->tgt_len || k[2] != c->embed_dim) &&
        random_array(&in->key, 3, k, 1.0f, seed))
        return -1;
    return 0;
}

int heads_inputs_load(const heads_options *o, heads_input *in, int *count,
                      char *err, size_t errlen)
{
    uint64_t seed = o->seed * 2654435761u + 1;
    int n = o->ninputs ? o->ninputs : o->random_inputs;
    memset(in, 0, (size_t)n * sizeof *in);
    *count = n;
    for (int i = 0; i < n; i++) {
        int rc = o->ninputs ? heads_array_load(o->inputs[i], &in[i].query,
                                               err, errlen)
                            : random_input(o, &in[i], &seed);
        if (!rc && i < o->nkeys)
            rc = heads_array_load(o->keys[i], &in[i].key, err, errlen);
        if (!rc && i < o->ngrads)
            rc = load_grad(o->grads[i], &in[i], &seed, err, errlen);
        else if (!rc && o->ngrads == 1 && !strcmp(o->grads[0], "random"))
            rc = load_grad("random", &in[i], &seed, err, errlen);
        if (rc) {
            if (!err[0])
                snprintf(err, errlen, "out of memory for input %d", i);
            return -1;
        }
    }
    return 0;
}

void heads_inputs_free(heads_input *in, int count)
{
    for (int i = 0; i < count; i++) {
        heads_array_free(&in[i].query);
        heads_array_free(&in[i].key);
        heads_array_free(&in[i].grad);
    }
}

/* ---- the layer ----------------------------------------------------------- */

static mha_status set_random(mha_layer *l, const char *name, int ndim,
                             int64_t a, int64_t b, float scale,
                             uint64_t *seed)
{
    int64_t shape[2] = {a, b};
    size_t n = (size_t)a * (size_t)(ndim == 2 ? b : 1);
    float *x = malloc(n * sizeof *x);
    if (!x)
        return MHA_OUT_OF_MEMORY;
    random_fill(x, n, scale, seed);
    mha_status st = mha_layer_set_weight(l, name, x, ndim, shape);
    free(x);
    return st;
}

/* nn.MultiheadAttention's initialisation scale, uniform and seeded. */
static mha_status random_weights(mha_layer *l, const mha_layer_config *c,
                                 uint64_t seed)
{
    int64_t E = c->embed_dim, kd = c->kdim ? c->kdim : E;
    int64_t vd = c->vdim ? c->vdim : E;
    float s = sqrtf(3.0f / (float)E);
    uint64_t st64 = seed * 0x9E3779B97F4A7C15ull + 7;
    mha_status st =
        kd == E && vd == E
            ? set_random(l, "in_proj_weight", 2, 3 * E, E, s, &st64)
            : set_random(l, "q_proj_weight", 2, E, E, s, &st64);
    if (st == MHA_OK && !(kd == E && vd == E))
        st = set_random(l, "k_proj_weight", 2, E, kd, s, &st64);
    if (st == MHA_OK && !(kd == E && vd == E))
        st = set_random(l, "v_proj_weight", 2, E, vd, s, &st64);
    if (st == MHA_OK)
        st = set_random(l, "out_proj.weight", 2, E, E, s, &st64);
    if (st == MHA_OK && c->bias)
        st = set_random(l, "in_proj_bias", 1, 3 * E, 0, 0.1f, &st64);
    if (st == MHA_OK && c->bias)
        st = set_random(l, "out_proj.bias", 1, E, 0, 0.1f, &st64);
    int64_t kv[3] = {1, 1, E};
    for (int i = 0; i < 2 && st == MHA_OK && c->add_bias_kv; i++) {
        float x[4096];
        if (E > 4096)
            return MHA_UNSUPPORTED;
        random_fill(x, (size_t)E, 0.1f, &st64);
        st = mha_layer_set_weight(l, i ? "bias_v" : "bias_k", x, 3, kv);
    }
    return st;
}

mha_status heads_layer_make(mha_device *dev, const heads_options *o,
                            mha_layer **out)
{
    mha_layer *l = NULL;
    mha_status st = mha_layer_create(dev, &o->cfg, &l);
    if (st == MHA_OK)
        st = o->weights ? mha_layer_load_safetensors(l, o->weights, o->prefix)
                        : random_weights(l, &o->cfg, o->seed);
    if (heads_fail(o, st) != MHA_OK) {
        mha_layer_destroy(l);
        l = NULL;
    }
    *out = l;
    return st;
}

/* ---- one call ------------------------------------------------------------ */

static mha_status tensor_of(mha_device *dev, const heads_array *a,
                            mha_tensor **t)
{
    mha_status st = mha_tensor_create(dev, MHA_F32, a->ndim, a->shape, t);
    if (st == MHA_OK && a->data)
        st = mha_tensor_upload(*t, a->data, a->count * sizeof(float));
    return st;
}

mha_status heads_call_make(mha_device *dev, mha_layer *layer,
                           const heads_options *o, const heads_input *in,
                           heads_call *c)
{
    (void)layer;
    memset(c, 0, sizeof *c);
    heads_array out = in->query;
    out.data = NULL;
    out.shape[out.ndim - 1] = o->cfg.embed_dim;
    mha_status st = tensor_of(dev, &in->query, &c->q);
    if (st == MHA_OK && in->key.data)
        st = tensor_of(dev, &in->key, &c->k);
    if (st == MHA_OK)
        st = tensor_of(dev, &out, &c->out);
    if (st == MHA_OK && in->grad.data)
        st = tensor_of(dev, &in->grad, &c->grad);
    mha_forward_args_init(&c->args);
    c->args.query = c->q;
    c->args.key = c->args.value = c->k ? c->k : c->q;
    c->args.is_causal = o->causal;
    c->args.output = c->out;
    return st;
}

void heads_call_free(heads_call *c)
{
    mha_tensor_destroy(c->q);
    mha_tensor_destroy(c->k);
    mha_tensor_destroy(c->out);
    mha_tensor_destroy(c->grad);
    memset(c, 0, sizeof *c);
}

mha_status heads_stats_run(mha_device *dev, mha_layer *layer,
                           const heads_options *o, const heads_input *in,
                           int count, mha_head_stat *stats, double *js,
                           double *cosine)
{
    mha_head_stats *hs = NULL;
    mha_status st = mha_head_stats_create(layer, &hs);
    int64_t H = mha_head_stats_heads(hs);
    for (int i = 0; i < count && st == MHA_OK; i++) {
        heads_call c;
        st = heads_call_make(dev, layer, o, &in[i], &c);
        if (st == MHA_OK)
            st = mha_head_stats_add(hs, &c.args, c.grad);
        heads_fail(o, st);
        heads_call_free(&c);
    }
    if (st == MHA_OK)
        st = heads_fail(o, mha_head_stats_get(hs, stats, H));
    if (st == MHA_OK)
        st = mha_head_stats_redundancy(hs, MHA_REDUNDANCY_JS, js, H * H);
    if (st == MHA_OK)
        st = mha_head_stats_redundancy(hs, MHA_REDUNDANCY_COSINE, cosine,
                                       H * H);
    mha_head_stats_destroy(hs);
    return st;
}
