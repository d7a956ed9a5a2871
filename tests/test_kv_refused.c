/* test_kv_refused.c: a call that the device refuses (its supports() says
 * no) leaves a ring KV cache as it was, even when the call would first have
 * moved the ring's rows to make room: mha_kv_cache_append and a decoder
 * step ask the device about every node before a row moves. The refusals
 * come from a CPU device whose backend table is swapped for a copy with a
 * supports() that declines chosen nodes. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "half.h"
#include "kv_cache.h"
#include "mha.h"

/* A ring as small as it may be (capacity W): making room for one token
 * moves its last W - 1 rows one row up, in W - 1 copies of one row each
 * for keys and for values. */
enum { E = 16, HQ = 2, HKV = 1, D = 8, W = 4, CAP = W };

/* What the swapped supports() declines. */
typedef enum refuse {
    REFUSE_NONE,
    REFUSE_F16_COPY,  /* a copy from fp16 tensors into the cache */
    REFUSE_RING_MOVE, /* a copy inside the cache (a ring's move) into
                         any row but the first: the first copies would
                         pass, the later ones not */
    REFUSE_ATTENTION  /* the decoder step's attention */
} refuse;

static const mha_backend_iface *real_iface;
static refuse refusing;

static bool picky_supports(void *dev, const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    if (refusing == REFUSE_F16_COPY && n->op == MHA_OP_ROPE &&
        x->dtype == MHA_F16)
        return false;
    if (refusing == REFUSE_RING_MOVE && n->op == MHA_OP_ROPE &&
        x->buf == n->dst.buf && n->dst.offset > 0)
        return false;
    if (refusing == REFUSE_ATTENTION && n->op == MHA_OP_ATTENTION)
        return false;
    return real_iface->supports(dev, n);
}

typedef struct fixture {
    mha_context *ctx;
    mha_device *dev;
    mha_backend_iface picky;
    mha_kv_cache *cache;
    char msg[256];
} fixture;

/* A CPU device with the picky table, and a ring cache of window W and
 * capacity CAP on it. */
static void open_fixture(fixture *f)
{
    memset(f, 0, sizeof *f);
    cr_assert_eq(mha_context_create(NULL, &f->ctx), MHA_OK);
    cr_assert_eq(mha_device_open(f->ctx, "cpu", NULL, &f->dev), MHA_OK);
    real_iface = f->dev->iface;
    f->picky = *real_iface;
    f->picky.supports = picky_supports;
    f->dev->iface = &f->picky;
    refusing = REFUSE_NONE;
    mha_kv_cache_config kc;
    cr_assert_eq(mha_kv_cache_config_init(&kc), MHA_OK);
    kc.capacity = CAP;
    kc.num_sequences = 1;
    kc.num_kv_heads = HKV;
    kc.head_dim = D;
    kc.window = W;
    cr_assert_eq(mha_kv_cache_create(f->dev, &kc, &f->cache), MHA_OK);
}

static void close_fixture(fixture *f)
{
    cr_assert_eq(mha_kv_cache_destroy(f->cache), MHA_OK);
    f->dev->iface = real_iface;
    cr_assert_eq(mha_device_destroy(f->dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(f->ctx), MHA_OK);
}

/* Keys and values of the cache's sequence 0, all capacity rows, into
 * out[2][CAP * HKV * D]. */
static void read_cache(fixture *f, float out[2][CAP * HKV * D])
{
    for (int w = 0; w < 2; w++)
        cr_assert_eq(mha_dev_read(f->dev, f->cache->kv[w], 0, out[w],
                                  sizeof out[w]),
                     MHA_OK);
}

static int64_t length_of(fixture *f)
{
    int64_t len = -1;
    cr_assert_eq(mha_kv_cache_length(f->cache, 0, &len), MHA_OK);
    return len;
}

/* A [T, HKV, D] tensor of dtype dt holding base + i / 8 at element i. */
static mha_tensor *rows_tensor(fixture *f, mha_dtype dt, int64_t T,
                               float base)
{
    int64_t shape[3] = {T, HKV, D}, n = T * HKV * D;
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(f->dev, dt, 3, shape, &t), MHA_OK);
    float *v = malloc((size_t)n * sizeof *v);
    uint16_t *h = malloc((size_t)n * sizeof *h);
    cr_assert(v && h);
    for (int64_t i = 0; i < n; i++) {
        v[i] = base + (float)i / 8.0f; /* exact in fp16 too */
        h[i] = mha_f32_to_f16(v[i]);
    }
    if (dt == MHA_F16)
        cr_assert_eq(mha_tensor_upload(t, h, (size_t)n * 2), MHA_OK);
    else
        cr_assert_eq(mha_tensor_upload(t, v, (size_t)n * 4), MHA_OK);
    free(v);
    free(h);
    return t;
}

/* Appends T tokens of dtype dt; returns the status, its message in
 * f->msg (kept before the destroys, whose success clears it). */
static mha_status append(fixture *f, mha_dtype dt, int64_t T, float base)
{
    mha_tensor *k = rows_tensor(f, dt, T, base);
    mha_tensor *v = rows_tensor(f, dt, T, -base);
    mha_status st = mha_kv_cache_append(f->cache, 0, k, v);
    snprintf(f->msg, sizeof f->msg, "%s", mha_context_errmsg(f->ctx));
    mha_tensor_destroy(k);
    mha_tensor_destroy(v);
    return st;
}

/* Fills the ring to capacity, then has refused an append that would
 * first move the ring's last W - 1 rows: the rows and the length must be
 * those of before, and the same append, allowed, must then work. */
static void refused_append_changes_nothing(refuse what, mha_dtype dt)
{
    fixture f;
    open_fixture(&f);
    cr_assert_eq(append(&f, MHA_F32, CAP, 1.0f), MHA_OK);
    float before[2][CAP * HKV * D], after[2][CAP * HKV * D];
    read_cache(&f, before);
    refusing = what;
    cr_expect_eq(append(&f, dt, 1, 100.0f), MHA_UNSUPPORTED);
    cr_expect(strstr(f.msg, "mha_kv_cache_append"),
              "message \"%s\" names no function", f.msg);
    read_cache(&f, after);
    cr_expect_eq(length_of(&f), CAP);
    cr_expect(!memcmp(before, after, sizeof before),
              "a refused append moved the ring's rows");
    refusing = REFUSE_NONE;
    cr_expect_eq(append(&f, dt, 1, 100.0f), MHA_OK);
    cr_expect_eq(length_of(&f), CAP + 1);
    read_cache(&f, after);
    /* the allowed append moved the last W - 1 rows to the front */
    cr_expect(!memcmp(after[0], before[0] + (CAP - W + 1) * HKV * D,
                      (size_t)((W - 1) * HKV * D) * sizeof(float)),
              "the ring did not move its last rows to the front");
    close_fixture(&f);
}

Test(kv_refused, append_refused_for_its_tensors_moves_no_ring_row)
{
    refused_append_changes_nothing(REFUSE_F16_COPY, MHA_F16);
}

Test(kv_refused, append_whose_ring_move_is_refused_moves_no_row)
{
    refused_append_changes_nothing(REFUSE_RING_MOVE, MHA_F32);
}

/* ---- the decoder step --------------------------------------------------------- */

static void set_weight(mha_decoder *l, const char *name, int64_t rows,
                       int64_t cols, float seed)
{
    float *w = malloc((size_t)(rows * cols) * sizeof *w);
    cr_assert(w);
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)((i * 37 + (int64_t)(seed * 11)) % 19 - 9) / 16.0f;
    int64_t shape[2] = {rows, cols};
    cr_assert_eq(mha_decoder_set_weight(l, name, w, 2, shape), MHA_OK);
    free(w);
}

/* One decode step of token x (E floats) into y; returns the status. */
static mha_status step(fixture *f, mha_decoder *l, const float *x, float *y)
{
    int64_t shape[3] = {1, 1, E};
    mha_tensor *tx, *ty;
    cr_assert_eq(mha_tensor_create(f->dev, MHA_F32, 3, shape, &tx), MHA_OK);
    cr_assert_eq(mha_tensor_create(f->dev, MHA_F32, 3, shape, &ty), MHA_OK);
    cr_assert_eq(mha_tensor_upload(tx, x, E * sizeof *x), MHA_OK);
    mha_decoder_forward_args a;
    cr_assert_eq(mha_decoder_forward_args_init(&a), MHA_OK);
    a.x = tx;
    a.cache = f->cache;
    a.output = ty;
    mha_status st = mha_decoder_forward(l, &a);
    if (st == MHA_OK)
        cr_assert_eq(mha_tensor_download(ty, y, E * sizeof *y), MHA_OK);
    mha_tensor_destroy(tx);
    mha_tensor_destroy(ty);
    return st;
}

/* A windowed layer decodes until its ring is full; a step whose attention
 * the device refuses must leave the ring's rows and length alone, and the
 * same step allowed afterwards must give what a layer that never saw the
 * refusal gives. */
Test(kv_refused, decoder_step_refused_moves_no_ring_row)
{
    fixture f, twin;
    open_fixture(&f);
    open_fixture(&twin); /* its device shares the picky table's switch */
    mha_decoder *l[2];
    fixture *fx[2] = {&f, &twin};
    for (int i = 0; i < 2; i++) {
        mha_decoder_config c;
        cr_assert_eq(mha_decoder_config_init(&c, E, HQ), MHA_OK);
        c.num_kv_heads = HKV;
        c.head_dim = D;
        c.window = W;
        cr_assert_eq(mha_decoder_create(fx[i]->dev, &c, &l[i]), MHA_OK);
        set_weight(l[i], "q_proj.weight", HQ * D, E, 1);
        set_weight(l[i], "k_proj.weight", HKV * D, E, 2);
        set_weight(l[i], "v_proj.weight", HKV * D, E, 3);
        set_weight(l[i], "o_proj.weight", E, HQ * D, 4);
    }
    float x[E], y[2][E];
    for (int t = 0; t <= CAP; t++) {
        for (int e = 0; e < E; e++)
            x[e] = (float)((t * 7 + e * 3) % 11 - 5) / 8.0f;
        if (t == CAP) { /* the ring is full: this step moves rows first */
            float before[2][CAP * HKV * D], after[2][CAP * HKV * D];
            read_cache(&f, before);
            refusing = REFUSE_ATTENTION;
            cr_expect_eq(step(&f, l[0], x, y[0]), MHA_UNSUPPORTED);
            refusing = REFUSE_NONE;
            read_cache(&f, after);
            cr_expect_eq(length_of(&f), CAP);
            cr_expect(!memcmp(before, after, sizeof before),
                      "a refused decoder step moved the ring's rows");
        }
        for (int i = 0; i < 2; i++)
            cr_assert_eq(step(fx[i], l[i], x, y[i]), MHA_OK, "step %d: %s", t,
                         mha_context_errmsg(fx[i]->ctx));
        cr_expect(!memcmp(y[0], y[1], sizeof y[0]),
                  "step %d differs from the layer that saw no refusal", t);
    }
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(mha_decoder_destroy(l[i]), MHA_OK);
        close_fixture(fx[i]);
    }
}
