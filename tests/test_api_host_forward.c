/* test_api_host_forward.c: the host-memory forward on bad shapes, dtypes and
 * capacities (exact status, message naming the value, outputs untouched,
 * layer still usable), its valid variants, and the fully-masked-row, NaN
 * and overflow semantics mha.h promises. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

/* ---- host forward: bad shapes, dtypes, capacities ------------------------ */

enum field { F_QUERY, F_KEY, F_VALUE, F_KPM, F_MASK, F_OUTPUT, F_WEIGHTS };

typedef struct fwd_case {
    const char *name;
    int unbatched;      /* make q/k/v (L, E), (S, kdim), (S, vdim) first */
    int field;
    int ndim;           /* new shape of field's array; 0 keeps it */
    int64_t shape[4];
    int retype;         /* set dtype */
    int dtype;
    int null_data;      /* field's pointer becomes NULL */
    long count;         /* output/weights capacity; 0 keeps it */
    int per_head;       /* average_attn_weights = 0 */
    mha_status want;
    const char *needle[3];
} fwd_case;

/* The cross layer: E = 8, H = 2, kdim = 6, vdim = 10; L 3, S 4, N 2. */
static const fwd_case fwd_cases[] = {
    {"key batch 3 != query batch 2", 0, F_KEY, 3, {4, 3, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,3,6]", "[4,2,6]"}},
    {"value batch 1 != 2", 0, F_VALUE, 3, {4, 1, 10}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"value", "[4,1,10]", "[4,2,10]"}},
    {"value length 5 != key length 4", 0, F_VALUE, 3, {5, 2, 10}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"value", "[5,2,10]", "[4,2,10]"}},
    {"query features 7 != embed_dim 8", 0, F_QUERY, 3, {3, 2, 7}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"query", "[3,2,7]", "embed_dim"}},
    {"key features 8 != kdim 6", 0, F_KEY, 3, {4, 2, 8}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,2,8]", "kdim"}},
    {"value features 6 != vdim 10", 0, F_VALUE, 3, {4, 2, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"value", "[4,2,6]", "vdim"}},
    {"1-D query", 0, F_QUERY, 1, {8}, 0, 0, 0, 0, 0, MHA_SHAPE_MISMATCH,
     {"query", "[8]"}},
    {"4-D query", 0, F_QUERY, 4, {3, 2, 1, 8}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"query", "[3,2,1,8]"}},
    {"2-D key with 3-D query", 0, F_KEY, 2, {4, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,6]"}},
    {"3-D key with 2-D query", 1, F_KEY, 3, {4, 2, 6}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key", "[4,2,6]"}},
    {"query with 0 dimensions", 0, F_QUERY, -1, {0}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"query", "0 dimensions"}},
    {"query with 5 dimensions", 0, F_QUERY, 5, {1, 1, 1, 1}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"query", "5 dimensions"}},
    {"query length 0", 0, F_QUERY, 3, {0, 2, 8}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"query", "is 0"}},
    {"key length -4", 0, F_KEY, 3, {-4, 2, 6}, 0, 0, 0, 0, 0,
     MHA_INVALID_ARGUMENT, {"key", "-4"}},
    {"query element count overflows", 0, F_QUERY, 3,
     {(int64_t)1 << 62, 4, 8}, 0, 0, 0, 0, 0, MHA_OVERFLOW, {"query"}},
    {"bool query", 0, F_QUERY, 0, {0}, 1, MHA_BOOL, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"query", "bool"}},
    {"f16 host query", 0, F_QUERY, 0, {0}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"query", "f16"}},
    {"bool key", 0, F_KEY, 0, {0}, 1, MHA_BOOL, 0, 0, 0, MHA_DTYPE_MISMATCH,
     {"key", "bool"}},
    {"f16 value", 0, F_VALUE, 0, {0}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"value", "f16"}},
    {"query dtype 42", 0, F_QUERY, 0, {0}, 1, 42, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"query", "42"}},
    {"query data NULL", 0, F_QUERY, 0, {0}, 0, 0, 1, 0, 0,
     MHA_INVALID_ARGUMENT, {"query"}},
    {"key data NULL", 0, F_KEY, 0, {0}, 0, 0, 1, 0, 0, MHA_INVALID_ARGUMENT,
     {"key"}},
    {"value data NULL", 0, F_VALUE, 0, {0}, 0, 0, 1, 0, 0,
     MHA_INVALID_ARGUMENT, {"value"}},
    {"key_padding_mask (2,5) for S 4", 0, F_KPM, 2, {2, 5}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key_padding_mask", "[2,5]", "[2,4]"}},
    {"key_padding_mask (3,4) for N 2", 0, F_KPM, 2, {3, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key_padding_mask", "[3,4]", "[2,4]"}},
    {"key_padding_mask (S) with batched input", 0, F_KPM, 1, {4}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"key_padding_mask", "[4]", "[2,4]"}},
    {"key_padding_mask (1,S) with unbatched input", 1, F_KPM, 2, {1, 4}, 0, 0,
     0, 0, 0, MHA_SHAPE_MISMATCH, {"key_padding_mask", "[1,4]", "[4]"}},
    {"key_padding_mask (S+1) unbatched", 1, F_KPM, 1, {5}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"key_padding_mask", "[5]", "[4]"}},
    {"key_padding_mask f16", 0, F_KPM, 2, {2, 4}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"key_padding_mask", "f16"}},
    {"attn_mask (L, S+1)", 0, F_MASK, 2, {3, 5}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[3,5]", "[3,4]"}},
    {"attn_mask (L+1, S)", 0, F_MASK, 2, {4, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[4,4]", "[3,4]"}},
    {"attn_mask (N*H+1, L, S)", 0, F_MASK, 3, {5, 3, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[5,3,4]", "[4,3,4]"}},
    {"attn_mask (H, L, S) with batch 2", 0, F_MASK, 3, {2, 3, 4}, 0, 0, 0, 0,
     0, MHA_SHAPE_MISMATCH, {"attn_mask", "[2,3,4]", "[4,3,4]"}},
    {"1-D attn_mask", 0, F_MASK, 1, {4}, 0, 0, 0, 0, 0, MHA_SHAPE_MISMATCH,
     {"attn_mask", "[4]"}},
    {"4-D attn_mask", 0, F_MASK, 4, {2, 2, 3, 4}, 0, 0, 0, 0, 0,
     MHA_SHAPE_MISMATCH, {"attn_mask", "[2,2,3,4]"}},
    {"attn_mask f16", 0, F_MASK, 2, {3, 4}, 1, MHA_F16, 0, 0, 0,
     MHA_DTYPE_MISMATCH, {"attn_mask", "f16"}},
    {"output NULL", 0, F_OUTPUT, 0, {0}, 0, 0, 1, 0, 0, MHA_INVALID_ARGUMENT,
     {"output"}},
    {"output capacity 47 < 48", 0, F_OUTPUT, 0, {0}, 0, 0, 0, 47, 0,
     MHA_BUFFER_TOO_SMALL, {"output", "47", "48"}},
    {"output capacity 1", 0, F_OUTPUT, 0, {0}, 0, 0, 0, 1, 0,
     MHA_BUFFER_TOO_SMALL, {"output", "1", "48"}},
    {"weights NULL with need_weights", 0, F_WEIGHTS, 0, {0}, 0, 0, 1, 0, 0,
     MHA_INVALID_ARGUMENT, {"weights"}},
    {"weights capacity 23 < 24", 0, F_WEIGHTS, 0, {0}, 0, 0, 0, 23, 0,
     MHA_BUFFER_TOO_SMALL, {"weights", "23", "24"}},
    {"per-head weights capacity 24 < 48", 0, F_WEIGHTS, 0, {0}, 0, 0, 0, 24,
     1, MHA_BUFFER_TOO_SMALL, {"weights", "24", "48"}},
};

static mha_host_array *field_array(io *o, int field)
{
    switch (field) {
    case F_QUERY: return &o->a.query;
    case F_KEY: return &o->a.key;
    case F_VALUE: return &o->a.value;
    case F_KPM: return &o->a.key_padding_mask;
    case F_MASK: return &o->a.attn_mask;
    }
    return NULL;
}

static void make_unbatched(io *o)
{
    mha_host_array *qkv[3] = {&o->a.query, &o->a.key, &o->a.value};
    for (int i = 0; i < 3; i++) {
        qkv[i]->ndim = 2;
        qkv[i]->shape[1] = qkv[i]->shape[2];
        qkv[i]->shape[2] = 0;
    }
    o->a.output_count = L_ * 8;
}

static void apply_case(io *o, const fwd_case *c)
{
    if (c->unbatched)
        make_unbatched(o);
    if (c->per_head)
        o->a.average_attn_weights = 0;
    mha_host_array *arr = field_array(o, c->field);
    if (arr) {
        if (c->field == F_KPM || c->field == F_MASK) {
            arr->data = c->field == F_KPM ? (void *)o->kpm : (void *)o->mask;
            arr->dtype = MHA_BOOL;
        }
        if (c->ndim) {
            arr->ndim = c->ndim < 0 ? 0 : c->ndim;
            memcpy(arr->shape, c->shape, sizeof c->shape);
        }
        if (c->retype)
            arr->dtype = (mha_dtype)c->dtype;
        if (c->null_data)
            arr->data = NULL;
        return;
    }
    float **ptr = c->field == F_OUTPUT ? &o->a.output : &o->a.weights;
    size_t *cnt = c->field == F_OUTPUT ? &o->a.output_count
                                       : &o->a.weights_count;
    if (c->null_data)
        *ptr = NULL;
    if (c->count)
        *cnt = (size_t)c->count;
}

Test(api, bad_host_forward_arguments_table)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    for (size_t i = 0; i < sizeof fwd_cases / sizeof *fwd_cases; i++) {
        const fwd_case *c = &fwd_cases[i];
        io_init(&o, &f);
        apply_case(&o, c);
        mha_status st = mha_layer_forward_host(f.layer, &o.a);
        expect_error(f.ctx, c->name, st, c->want, c->needle, 3);
        cr_expect(!contains(mha_context_errmsg(f.ctx), "[-1"),
                  "case \"%s\": message shows an unknown length as -1: %s",
                  c->name, mha_context_errmsg(f.ctx));
        cr_expect(untouched(o.out, CAP) && untouched(o.w, CAP),
                  "case \"%s\": outputs written on failure", c->name);
        if (c->field != F_OUTPUT && c->field != F_WEIGHTS) {
            size_t n1 = 77, n2 = 77;
            st = mha_layer_output_size(f.layer, &o.a, &n1, &n2);
            expect_error(f.ctx, c->name, st, c->want, c->needle, 3);
            cr_expect(n1 == 77 && n2 == 77,
                      "case \"%s\": output_size wrote counts on failure",
                      c->name);
        }
        expect_forward_ok(&f, c->name);
    }
    fx_fini(&f);
}

/* The valid variants the bad table is built from really are valid. */
Test(api, valid_host_forward_variants_succeed)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    static const fwd_case ok[] = {
        {"bool key_padding_mask (N, S)", 0, F_KPM, 2, {2, 4}, 0, 0, 0, 0, 0,
         MHA_OK, {0}},
        {"f32 key_padding_mask (N, S)", 0, F_KPM, 2, {2, 4}, 1, MHA_F32, 0, 0,
         0, MHA_OK, {0}},
        {"unbatched key_padding_mask (S)", 1, F_KPM, 1, {4}, 0, 0, 0, 0, 0,
         MHA_OK, {0}},
        {"bool attn_mask (L, S)", 0, F_MASK, 2, {3, 4}, 0, 0, 0, 0, 0, MHA_OK,
         {0}},
        {"f32 attn_mask (N*H, L, S)", 0, F_MASK, 3, {4, 3, 4}, 1, MHA_F32, 0,
         0, 0, MHA_OK, {0}},
        {"exact output capacity", 0, F_OUTPUT, 0, {0}, 0, 0, 0, 48, 0, MHA_OK,
         {0}},
        {"per-head weights capacity 48", 0, F_WEIGHTS, 0, {0}, 0, 0, 0, 48, 1,
         MHA_OK, {0}},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        io_init(&o, &f);
        apply_case(&o, &ok[i]);
        mha_status st = mha_layer_forward_host(f.layer, &o.a);
        cr_expect_eq(st, MHA_OK, "case \"%s\": %s: %s", ok[i].name,
                     mha_status_str(st), mha_context_errmsg(f.ctx));
    }
    /* need_weights 0: weights may be NULL */
    io_init(&o, &f);
    o.a.need_weights = 0;
    o.a.weights = NULL;
    o.a.weights_count = 0;
    cr_expect_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK, "%s",
                 mha_context_errmsg(f.ctx));
    cr_expect(untouched(o.w, CAP));
    fx_fini(&f);
}

/* ---- documented semantics ------------------------------------------------ */

/* Batch item 1 masks every key: its output rows are out_proj.bias and its
 * weight rows are 0, while batch item 0 is an ordinary softmax. */
Test(api, fully_masked_row_gives_out_proj_bias_and_zero_weights)
{
    fx f;
    fx_init(&f, 0, 0);
    float bias[8];
    fill(bias, 8, 99);
    int64_t bshape[1] = {8};
    cr_assert_eq(mha_layer_set_weight(f.layer, "out_proj.bias", bias, 1,
                                      bshape), MHA_OK);
    static io o;
    for (int per_head = 0; per_head < 2; per_head++) {
        io_init(&o, &f);
        o.a.average_attn_weights = !per_head;
        o.a.weights_count = CAP;
        for (int s = 0; s < S_; s++)
            o.kpm[1 * S_ + s] = 1;
        set_array(&o.a.key_padding_mask, o.kpm, MHA_BOOL, 2, N_, S_, 0);
        cr_assert_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK, "%s",
                     mha_context_errmsg(f.ctx));
        for (int l = 0; l < L_; l++) {
            const float *row = &o.out[(l * N_ + 1) * 8];
            cr_expect_arr_eq(row, bias, sizeof bias,
                             "query %d of the masked item", l);
        }
        int H = per_head ? 2 : 1;
        float sum0 = 0;
        for (int h = 0; h < H; h++)
            for (int l = 0; l < L_; l++)
                for (int s = 0; s < S_; s++) {
                    cr_expect_eq(o.w[((1 * H + h) * L_ + l) * S_ + s], 0.0f,
                                 "weight h%d l%d s%d", h, l, s);
                    sum0 += o.w[((0 * H + h) * L_ + l) * S_ + s];
                }
        cr_expect_float_eq(sum0, (float)(H * L_), 1e-5,
                           "rows of the unmasked item sum to 1");
    }
    fx_fini(&f);
}

Test(api, nan_in_query_stays_in_its_own_output_row)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    io_init(&o, &f);
    o.q[(1 * N_ + 0) * 8 + 3] = NAN; /* query l = 1, batch 0 */
    cr_assert_eq(mha_layer_forward_host(f.layer, &o.a), MHA_OK);
    for (int l = 0; l < L_; l++)
        for (int n = 0; n < N_; n++)
            for (int e = 0; e < 8; e++) {
                float v = o.out[(l * N_ + n) * 8 + e];
                if (l == 1 && n == 0)
                    cr_expect(isnan(v), "out[%d,%d,%d] = %g", l, n, e, v);
                else
                    cr_expect(isfinite(v), "out[%d,%d,%d] = %g", l, n, e, v);
            }
    for (int n = 0; n < N_; n++)
        for (int l = 0; l < L_; l++)
            for (int s = 0; s < S_; s++) {
                float v = o.w[(n * L_ + l) * S_ + s];
                cr_expect(l == 1 && n == 0 ? isnan(v) : isfinite(v),
                          "weights[%d,%d,%d] = %g", n, l, s, v);
            }
    /* and the next call with clean input is clean */
    expect_forward_ok(&f, "NaN query");
    fx_fini(&f);
}

/* L = S = 2^32: the weights have 2^64 elements, more than size_t counts.
 * Sizes must not wrap (to 0, which would also skip the capacity check of
 * the host forward); only sizes are asked, so no data is read. */
Test(api, output_size_of_huge_lengths_overflows_instead_of_wrapping)
{
    fx f;
    fx_init(&f, 6, 10);
    static io o;
    int64_t big = (int64_t)1 << 32;
    for (int per_head = 0; per_head < 2; per_head++) {
        io_init(&o, &f);
        set_array(&o.a.query, o.q, MHA_F32, 3, big, 1, 8);
        set_array(&o.a.key, o.k, MHA_F32, 3, big, 1, 6);
        set_array(&o.a.value, o.v, MHA_F32, 3, big, 1, 10);
        o.a.average_attn_weights = !per_head;
        size_t n_out = 77, n_w = 77;
        mha_status st = mha_layer_output_size(f.layer, &o.a, &n_out, &n_w);
        cr_expect_eq(st, MHA_OVERFLOW,
                     "per_head %d: %s, output %zu, weights %zu floats",
                     per_head, mha_status_str(st), n_out, n_w);
        cr_expect(st != MHA_OK || n_w != 0,
                  "per_head %d: need_weights but 0 weights", per_head);
    }
    expect_forward_ok(&f, "huge lengths");
    fx_fini(&f);
}
