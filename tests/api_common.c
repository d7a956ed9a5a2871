/* api_common.c: the fixtures and checks the test_api_*.c suites share. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

/* Deterministic values in [-0.5, 0.5), multiples of 1/1024. */
void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)((seed >> 12) % 1024) / 1024.0f - 0.5f;
    }
}

int contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

mha_context *new_context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    cr_assert_not_null(ctx);
    return ctx;
}

mha_device *open_cpu(mha_context *ctx)
{
    mha_device *dev = NULL;
    mha_status st = mha_device_open(ctx, "cpu", NULL, &dev);
    cr_assert_eq(st, MHA_OK, "opening cpu: %s", mha_context_errmsg(ctx));
    return dev;
}

/* Sets one weight from deterministic data; name's shape given. */
void set_weight(mha_layer *layer, const char *name, int ndim,
                int64_t d0, int64_t d1, int64_t d2, unsigned seed)
{
    static float data[3 * 64 * 64];
    int64_t shape[3] = {d0, d1, d2};
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    cr_assert_leq(n, sizeof data / sizeof *data);
    fill(data, n, seed);
    cr_assert_eq(mha_layer_set_weight(layer, name, data, ndim, shape), MHA_OK,
                 "set_weight %s failed", name);
}

/* Sets every weight the config needs; skip names one to leave unset. */
void set_weights_except(mha_layer *layer, const mha_layer_config *c,
                        const char *skip)
{
    int64_t E = c->embed_dim;
    int self = c->kdim == E && c->vdim == E;
    struct {
        const char *name;
        int use, ndim;
        int64_t d0, d1, d2;
    } w[] = {
        {"in_proj_weight", self, 2, 3 * E, E, 0},
        {"q_proj_weight", !self, 2, E, E, 0},
        {"k_proj_weight", !self, 2, E, c->kdim, 0},
        {"v_proj_weight", !self, 2, E, c->vdim, 0},
        {"in_proj_bias", c->bias, 1, 3 * E, 0, 0},
        {"out_proj.weight", 1, 2, E, E, 0},
        {"out_proj.bias", c->bias, 1, E, 0, 0},
        {"bias_k", c->add_bias_kv, 3, 1, 1, E},
        {"bias_v", c->add_bias_kv, 3, 1, 1, E},
    };
    for (size_t i = 0; i < sizeof w / sizeof *w; i++)
        if (w[i].use && (!skip || strcmp(skip, w[i].name) != 0))
            set_weight(layer, w[i].name, w[i].ndim, w[i].d0, w[i].d1, w[i].d2,
                       (unsigned)(i + 1) * 7919u);
}

void fx_init_cfg(fx *f, const mha_layer_config *cfg, int weights)
{
    f->ctx = new_context();
    f->dev = open_cpu(f->ctx);
    f->cfg = *cfg;
    if (!f->cfg.kdim)
        f->cfg.kdim = cfg->embed_dim;
    if (!f->cfg.vdim)
        f->cfg.vdim = cfg->embed_dim;
    mha_status st = mha_layer_create(f->dev, cfg, &f->layer);
    cr_assert_eq(st, MHA_OK, "layer_create: %s", mha_context_errmsg(f->ctx));
    if (weights)
        set_weights_except(f->layer, &f->cfg, NULL);
}

/* A layer with E = 8, H = 2 and the given kdim/vdim (0: E), weights set. */
void fx_init(fx *f, int64_t kdim, int64_t vdim)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, 8, 2);
    cfg.kdim = kdim;
    cfg.vdim = vdim;
    fx_init_cfg(f, &cfg, 1);
}

void fx_fini(fx *f)
{
    cr_assert_eq(mha_layer_destroy(f->layer), MHA_OK);
    cr_assert_eq(mha_device_destroy(f->dev), MHA_OK);
    cr_assert_eq(mha_context_destroy(f->ctx), MHA_OK);
}

void set_array(mha_host_array *a, const void *data, mha_dtype dtype,
               int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    a->data = data;
    a->dtype = dtype;
    a->ndim = ndim;
    a->shape[0] = d0;
    a->shape[1] = d1;
    a->shape[2] = d2;
    a->shape[3] = 0;
}

/* Valid arguments for f's layer; need_weights with averaged weights. */
void io_init(io *o, const fx *f)
{
    memset(o, 0, sizeof *o);
    fill(o->q, CAP, 11);
    fill(o->k, CAP, 22);
    fill(o->v, CAP, 33);
    for (int i = 0; i < CAP; i++)
        o->out[i] = o->w[i] = SENTINEL;
    mha_host_forward_args_init(&o->a);
    set_array(&o->a.query, o->q, MHA_F32, 3, L_, N_, f->cfg.embed_dim);
    set_array(&o->a.key, o->k, MHA_F32, 3, S_, N_, f->cfg.kdim);
    set_array(&o->a.value, o->v, MHA_F32, 3, S_, N_, f->cfg.vdim);
    o->a.need_weights = 1;
    o->a.output = o->out;
    o->a.output_count = (size_t)(L_ * N_ * f->cfg.embed_dim);
    o->a.weights = o->w;
    o->a.weights_count = CAP; /* S' may exceed S (bias_kv) */
}

/* The "context still works after an error" check: a valid forward on the
 * same layer succeeds and fills the output. */
void expect_forward_ok(fx *f, const char *after)
{
    static io o;
    io_init(&o, f);
    mha_status st = mha_layer_forward_host(f->layer, &o.a);
    cr_expect_eq(st, MHA_OK, "forward after %s: %s (%s)", after,
                 mha_status_str(st), mha_context_errmsg(f->ctx));
    cr_expect_str_empty(mha_context_errmsg(f->ctx),
                        "errmsg after a good call following %s", after);
    cr_expect_neq(o.out[0], SENTINEL, "output written after %s", after);
}

/* Checks status and that the message holds every needle (NULL ends). */
void expect_error(mha_context *ctx, const char *name, mha_status got,
                  mha_status want, const char *const *needles,
                  int count)
{
    const char *msg = mha_context_errmsg(ctx);
    cr_expect_eq(got, want, "case \"%s\": status %s, expected %s; msg: %s",
                 name, mha_status_str(got), mha_status_str(want), msg);
    for (int i = 0; i < count && needles[i]; i++)
        cr_expect(contains(msg, needles[i]),
                  "case \"%s\": message \"%s\" does not name \"%s\"", name,
                  msg, needles[i]);
}

int untouched(const float *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != SENTINEL)
            return 0;
    return 1;
}
