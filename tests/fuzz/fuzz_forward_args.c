/* fuzz_forward_args.c: libFuzzer harness of the forward's argument checks.
 * The input decodes into an mha_layer_config, every weight that config
 * needs, and mha_host_forward_args (dtypes, ndim, shapes, masks, flags,
 * result capacities); the layer runs on the cpu device through
 * mha_layer_output_size, mha_layer_forward_host and, over device tensors,
 * mha_layer_forward. Any accepted call must compute within the buffers its
 * shapes describe; any refused one must say why without reading memory it
 * does not own. Masks keep ndim within 0..4 until the ndim range check of
 * issue 12 (part A) is merged; then widen MASK_NDIM to 8. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#define MASK_NDIM 5   /* mask ndim drawn from 0 .. MASK_NDIM-1 */
#define MAX_SMALL 64  /* dims above this (and <= 1<<20) are skipped: they
                         are valid and would only make the run slow */
#define MAX_ELEMS (1 << 16)

static int too_slow(int64_t v) { return v > MAX_SMALL && v <= (1 << 20); }

static mha_status set(mha_layer *l, const char *name, int nd, int64_t a,
                      int64_t b, int64_t c)
{
    static float w[3 * MAX_SMALL * MAX_SMALL];
    int64_t shape[3] = {a, b, c};
    return mha_layer_set_weight(l, name, w, nd, shape);
}

/* Every weight the config needs; fails (and the run ends) when one is
 * refused. */
static int set_weights(mha_layer *l, const mha_layer_config *c)
{
    int64_t E = c->embed_dim, kd = c->kdim ? c->kdim : E,
            vd = c->vdim ? c->vdim : E;
    mha_status st;
    if (kd == E && vd == E)
        st = set(l, "in_proj_weight", 2, 3 * E, E, 0);
    else if ((st = set(l, "q_proj_weight", 2, E, E, 0)) == MHA_OK &&
             (st = set(l, "k_proj_weight", 2, E, kd, 0)) == MHA_OK)
        st = set(l, "v_proj_weight", 2, E, vd, 0);
    if (st == MHA_OK)
        st = set(l, "out_proj.weight", 2, E, E, 0);
    if (st == MHA_OK && c->bias &&
        (st = set(l, "in_proj_bias", 1, 3 * E, 0, 0)) == MHA_OK)
        st = set(l, "out_proj.bias", 1, E, 0, 0);
    if (st == MHA_OK && c->add_bias_kv &&
        (st = set(l, "bias_k", 3, 1, 1, E)) == MHA_OK)
        st = set(l, "bias_v", 3, 1, 1, E);
    return st == MHA_OK;
}

static mha_dtype fuzz_dtype(fuzz_in *in)
{
    static const mha_dtype d[4] = {MHA_F32, MHA_F16, MHA_BOOL,
                                   (mha_dtype)9};
    return d[fuzz_u8(in) & 3];
}

/* Elements of a shape, or -1 when it is too large to hold here. */
static int64_t elements(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim && i < MHA_MAX_DIMS; i++) {
        if (shape[i] < 0 || shape[i] > MAX_ELEMS)
            return -1;
        n *= shape[i];
        if (n > MAX_ELEMS)
            return -1;
    }
    return n;
}

static size_t elem_size(mha_dtype d)
{
    return d == MHA_F16 ? 2 : d == MHA_BOOL ? 1 : 4;
}

/* One host array; *held is 0 when its data could not be allocated to the
 * size its shape says (the host forward is then not run). */
static void fuzz_array(fuzz_in *in, mha_host_array *a, int mask, int *held,
                       void **keep)
{
    uint8_t b = fuzz_u8(in);
    a->dtype = fuzz_dtype(in);
    a->ndim = mask ? (b & 0x7f) % MASK_NDIM : (int)(b % 8) - 1;
    for (int i = 0; i < MHA_MAX_DIMS; i++)
        a->shape[i] = fuzz_dim(in);
    *keep = NULL;
    a->data = NULL;
    if (mask && !(b & 0x80))
        return; /* absent */
    int64_t n = a->ndim >= 0 && a->ndim <= MHA_MAX_DIMS
                    ? elements(a->ndim, a->shape)
                    : -1;
    *keep = calloc(n > 0 ? (size_t)n : 1, elem_size(a->dtype));
    a->data = *keep;
    if (n < 0)
        *held = 0;
}

/* The device-tensor forward with tensors of the same shapes. */
static void device_forward(mha_layer *layer, const mha_host_forward_args *h,
                           fuzz_in *in)
{
    const mha_host_array *arr[5] = {&h->query, &h->key, &h->value,
                                    &h->key_padding_mask, &h->attn_mask};
    mha_tensor *t[7] = {NULL};
    for (int i = 0; i < 5; i++)
        if (arr[i]->data && elements(arr[i]->ndim, arr[i]->shape) >= 0)
            mha_tensor_create(fuzz_cpu(), arr[i]->dtype, arr[i]->ndim,
                              arr[i]->shape, &t[i]);
    int64_t oshape[MHA_MAX_DIMS];
    for (int r = 0; r < 2; r++) {
        int nd = fuzz_u8(in) % 5;
        for (int i = 0; i < MHA_MAX_DIMS; i++)
            oshape[i] = fuzz_dim(in);
        if (elements(nd, oshape) >= 0)
            mha_tensor_create(fuzz_cpu(), MHA_F32, nd, oshape, &t[5 + r]);
    }
    mha_forward_args a;
    mha_forward_args_init(&a);
    a.query = t[0], a.key = t[1], a.value = t[2];
    a.key_padding_mask = t[3], a.attn_mask = t[4];
    a.output = t[5], a.weights = t[6];
    a.is_causal = h->is_causal, a.need_weights = h->need_weights;
    a.average_attn_weights = h->average_attn_weights;
    mha_layer_forward(layer, &a);
    for (int i = 0; i < 7; i++)
        mha_tensor_destroy(t[i]);
}

static void host_forward(mha_layer *layer, mha_host_forward_args *a,
                         fuzz_in *in, int held)
{
    size_t n_out = 0, n_w = 0;
    if (mha_layer_output_size(layer, a, &n_out, &n_w) != MHA_OK || !held ||
        n_out > MAX_ELEMS * 8 || n_w > MAX_ELEMS * 8)
        return;
    uint8_t b = fuzz_u8(in);
    /* capacities: exact, one short, or one over */
    a->output_count = n_out + (b & 1) - ((b & 2) && n_out ? 2 : 0);
    a->weights_count = n_w + ((b >> 2) & 1) - ((b & 8) && n_w ? 2 : 0);
    a->output = calloc(a->output_count + 1, sizeof(float));
    a->weights = (b & 16) ? NULL : calloc(a->weights_count + 1, sizeof(float));
    mha_layer_forward_host(layer, a);
    free(a->output);
    free(a->weights);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    mha_layer_config c;
    mha_layer_config_init(&c, fuzz_dim(&in), fuzz_dim(&in));
    uint8_t f = fuzz_u8(&in);
    c.bias = f & 1, c.add_bias_kv = (f >> 1) & 1;
    c.add_zero_attn = (f >> 2) & 1, c.batch_first = (f >> 3) & 1;
    c.dtype = fuzz_dtype(&in);
    c.dropout = (f & 0x80) ? 0.5f : 0.0f;
    c.kdim = fuzz_dim(&in);
    c.vdim = fuzz_dim(&in);
    if (too_slow(c.embed_dim) || too_slow(c.kdim) || too_slow(c.vdim))
        return 0;
    mha_layer *layer = NULL;
    if (mha_layer_create(fuzz_cpu(), &c, &layer) != MHA_OK)
        return 0;
    if (set_weights(layer, &c)) {
        mha_host_forward_args a;
        mha_host_forward_args_init(&a);
        mha_host_array *arr[5] = {&a.query, &a.key, &a.value,
                                  &a.key_padding_mask, &a.attn_mask};
        void *keep[5];
        int held = 1;
        for (int i = 0; i < 5; i++)
            fuzz_array(&in, arr[i], i >= 3, &held, &keep[i]);
        uint8_t g = fuzz_u8(&in);
        a.is_causal = g & 1, a.need_weights = (g >> 1) & 1;
        a.average_attn_weights = (g >> 2) & 1;
        host_forward(layer, &a, &in, held);
        if (g & 8)
            device_forward(layer, &a, &in);
        for (int i = 0; i < 5; i++)
            free(keep[i]);
    }
    mha_layer_destroy(layer);
    return 0;
}
