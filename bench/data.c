/* data.c: the inputs and weights of a case (xorshift64* from a fixed seed,
 * so every machine and every device sees the same numbers), setting them on
 * a layer, and the host-memory forward used for the first call and for the
 * scalar CPU reference. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "peers.h"

/* xorshift64*: the same stream on every machine. */
static float rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    uint64_t x = *s * 0x2545F4914F6CDD1Dull;
    return (float)((double)(x >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

static void fill(float *p, size_t n, float scale, uint64_t *s)
{
    for (size_t i = 0; i < n; i++)
        p[i] = scale * rnd(s);
}

void bench_case_data_free(bench_case_data *d)
{
    free(d->q);
    free(d->k);
    free(d->v);
    free(d->w_q);
    free(d->w_k);
    free(d->w_v);
    free(d->b_in);
    free(d->w_o);
    free(d->b_o);
    free(d->ref);
    memset(d, 0, sizeof *d);
}

int bench_case_data_make(const bench_case *c, bench_case_data *d)
{
    memset(d, 0, sizeof *d);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    size_t e = (size_t)c->embed_dim, b = (size_t)c->batch,
           l = (size_t)c->tgt_len, sl = (size_t)c->src_len,
           k = (size_t)c->kdim, v = (size_t)c->vdim;
    d->nq = l * b * e;
    d->nk = sl * b * k;
    d->nv = sl * b * v;
    d->q = malloc(d->nq * sizeof(float));
    d->k = malloc(d->nk * sizeof(float));
    d->v = malloc(d->nv * sizeof(float));
    d->w_q = malloc(e * e * sizeof(float));
    d->w_k = malloc(e * k * sizeof(float));
    d->w_v = malloc(e * v * sizeof(float));
    d->b_in = malloc(3 * e * sizeof(float));
    d->w_o = malloc(e * e * sizeof(float));
    d->b_o = malloc(e * sizeof(float));
    d->ref = malloc(d->nq * sizeof(float));
    if (!d->q || !d->k || !d->v || !d->w_q || !d->w_k || !d->w_v ||
        !d->b_in || !d->w_o || !d->b_o || !d->ref) {
        bench_case_data_free(d);
        return -1;
    }
    fill(d->q, d->nq, 1.0f, &s);
    fill(d->k, d->nk, 1.0f, &s);
    fill(d->v, d->nv, 1.0f, &s);
    if (c->self_attn) { /* S = L, kdim = vdim = E: the sizes agree */
        memcpy(d->k, d->q, d->nq * sizeof(float));
        memcpy(d->v, d->q, d->nq * sizeof(float));
    }
    /* Xavier-like scales keep the scores and the output O(1). */
    fill(d->w_q, e * e, 1.0f / sqrtf((float)e), &s);
    fill(d->w_k, e * k, 1.0f / sqrtf((float)k), &s);
    fill(d->w_v, e * v, 1.0f / sqrtf((float)v), &s);
    fill(d->b_in, 3 * e, 0.1f, &s);
    fill(d->w_o, e * e, 1.0f / sqrtf((float)e), &s);
    fill(d->b_o, e, 0.1f, &s);
    return 0;
}

mha_status bench_set_weights(mha_layer *layer, const bench_case *c,
                              const bench_case_data *d)
{
    int64_t e = c->embed_dim;
    mha_status st;
    if (c->kdim == e && c->vdim == e) {
        size_t n = (size_t)(e * e);
        float *w = malloc(3 * n * sizeof(float));
        if (!w)
            return MHA_OUT_OF_MEMORY;
        memcpy(w, d->w_q, n * sizeof(float));
        memcpy(w + n, d->w_k, n * sizeof(float));
        memcpy(w + 2 * n, d->w_v, n * sizeof(float));
        int64_t shape[2] = {3 * e, e};
        st = mha_layer_set_weight(layer, "in_proj_weight", w, 2, shape);
        free(w);
    } else {
        int64_t sq[2] = {e, e}, sk[2] = {e, c->kdim}, sv[2] = {e, c->vdim};
        if ((st = mha_layer_set_weight(layer, "q_proj_weight", d->w_q, 2,
                                       sq)) == MHA_OK &&
            (st = mha_layer_set_weight(layer, "k_proj_weight", d->w_k, 2,
                                       sk)) == MHA_OK)
            st = mha_layer_set_weight(layer, "v_proj_weight", d->w_v, 2, sv);
    }
    if (st != MHA_OK)
        return st;
    int64_t s3[1] = {3 * e}, se[1] = {e}, so[2] = {e, e};
    if ((st = mha_layer_set_weight(layer, "in_proj_bias", d->b_in, 1, s3)) ||
        (st = mha_layer_set_weight(layer, "out_proj.weight", d->w_o, 2, so)))
        return st;
    return mha_layer_set_weight(layer, "out_proj.bias", d->b_o, 1, se);
}

/* Runs the case once on device through host memory into out. */
mha_status bench_forward_host(mha_device *dev, const bench_case *c,
                               mha_dtype dtype, const bench_case_data *d,
                               float *out)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, c->embed_dim, c->heads);
    cfg.kdim = c->kdim;
    cfg.vdim = c->vdim;
    cfg.dtype = dtype;
    mha_layer *layer = NULL;
    mha_status st = mha_layer_create(dev, &cfg, &layer);
    if (st == MHA_OK)
        st = bench_set_weights(layer, c, d);
    if (st == MHA_OK) {
        mha_host_forward_args a;
        mha_host_forward_args_init(&a);
        a.query = (mha_host_array){d->q, MHA_F32, 3,
                                   {c->tgt_len, c->batch, c->embed_dim}};
        /* self-attention: the one array, as the caller of such a layer
         * passes it */
        a.key = (mha_host_array){c->self_attn ? d->q : d->k, MHA_F32, 3,
                                 {c->src_len, c->batch, c->kdim}};
        a.value = (mha_host_array){c->self_attn ? d->q : d->v, MHA_F32, 3,
                                   {c->src_len, c->batch, c->vdim}};
        a.is_causal = c->causal;
        a.need_weights = 0;
        a.output = out;
        a.output_count = d->nq;
        st = mha_layer_forward_host(layer, &a);
    }
    mha_layer_destroy(layer);
    return st;
}

