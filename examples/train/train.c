/* train.c: fits one nn.MultiheadAttention layer (the student) to another
 * (the teacher, random) on the device with libmha's backward pass and
 * AdamW under a linear learning-rate warm-up, printing the loss as it
 * falls, on each device given. The data and both layers' weights come
 * from a 32-bit xorshift that tests/gen_backward_fixtures.py reproduces,
 * so the same steps in PyTorch give the weights that --save writes (the
 * train_example test compares them).
 *
 *   example-train [--device SPEC]... [--steps N] [--lr LR] [--warmup W]
 *                 [--every K] [--save PATH]
 *
 * Self-attention, causal, E 16, H 4, L 12, batch 4 (seq-first), bias and
 * add_bias_kv; loss = mean((Y - T)^2) with T the teacher's output, so
 * dL/dY = 2 (Y - T) / count, computed on the host. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mha.h"

enum { E = 16, H = 4, L = 12, N = 4, COUNT = L * N * E };

typedef struct options {
    const char *devices[8];
    int ndevices;
    int steps, warmup, every;
    float lr;
    const char *save;
} options;

/* xorshift32; uniform in [-1, 1) with 24 bits, exact in fp32. */
static float uniform(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return (float)(x >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

static void fill(uint32_t *s, float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = uniform(s) * scale;
}

/* The layer's weights from the generator, in state_dict order. */
static mha_status set_random_weights(mha_layer *layer, uint32_t *s)
{
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[3];
    } w[] = {{"in_proj_weight", 2, {3 * E, E}}, {"in_proj_bias", 1, {3 * E}},
             {"out_proj.weight", 2, {E, E}},    {"out_proj.bias", 1, {E}},
             {"bias_k", 3, {1, 1, E}},          {"bias_v", 3, {1, 1, E}}};
    float buf[3 * E * E];
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) {
        size_t n = 1;
        for (int k = 0; k < w[i].ndim; k++)
            n *= (size_t)w[i].shape[k];
        fill(s, buf, n, 0.25f); /* 1 / sqrt(E) */
        mha_status st = mha_layer_set_weight(layer, w[i].name, buf, w[i].ndim,
                                             w[i].shape);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

static int parse(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 200;
    o->warmup = 20;
    o->every = 20;
    o->lr = 0.01f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "example-train: %s needs a value\n", a);
            return 1;
        }
        if (!strcmp(a, "--device") && o->ndevices < 8)
            o->devices[o->ndevices++] = v;
        else if (!strcmp(a, "--steps"))
            o->steps = atoi(v);
        else if (!strcmp(a, "--warmup"))
            o->warmup = atoi(v);
        else if (!strcmp(a, "--every"))
            o->every = atoi(v);
        else if (!strcmp(a, "--lr"))
            o->lr = (float)atof(v);
        else if (!strcmp(a, "--save"))
            o->save = v;
        else {
            fprintf(stderr,
                    "usage: example-train [--device SPEC]... [--steps N] "
                    "[--lr LR] [--warmup W] [--every K] [--save PATH]\n");
            return 1;
        }
        i++;
    }
    if (!o->ndevices)
        o->devices[o->ndevices++] = "cpu";
    if (o->steps < 1 || o->warmup < 1 || o->every < 1 || !(o->lr > 0.0f)) {
        fprintf(stderr, "example-train: steps, warmup, every and lr must be "
                        "positive\n");
        return 1;
    }
    return 0;
}

/* Everything one device's run holds. */
typedef struct run {
    mha_context *ctx;
    mha_device *dev;
    mha_layer *teacher, *student;
    mha_tensor *x, *y, *target, *dy;
    mha_gradients *grads;
    mha_adamw *opt;
} run;

static mha_status make_tensors(run *r)
{
    const int64_t shape[3] = {L, N, E};
    mha_tensor **t[4] = {&r->x, &r->y, &r->target, &r->dy};
    for (int i = 0; i < 4; i++) {
        mha_status st = mha_tensor_create(r->dev, MHA_F32, 3, shape, t[i]);
        if (st != MHA_OK)
            return st;
    }
    return MHA_OK;
}

static mha_status setup(run *r, const char *spec)
{
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    c.add_bias_kv = 1;
    uint32_t seed = 20240518u;
    static float x[COUNT];
    mha_status st = mha_device_open(r->ctx, spec, NULL, &r->dev);
    if (st == MHA_OK)
        st = mha_layer_create(r->dev, &c, &r->teacher);
    if (st == MHA_OK)
        st = mha_layer_create(r->dev, &c, &r->student);
    if (st == MHA_OK)
        st = set_random_weights(r->teacher, &seed);
    if (st == MHA_OK)
        st = set_random_weights(r->student, &seed);
    if (st == MHA_OK)
        st = make_tensors(r);
    fill(&seed, x, COUNT, 1.0f);
    if (st == MHA_OK)
        st = mha_tensor_upload(r->x, x, sizeof x);
    if (st == MHA_OK)
        st = mha_gradients_create(r->student, &r->grads);
    if (st == MHA_OK)
        st = mha_adamw_create(r->student, NULL, &r->opt);
    return st;
}

static void teardown(run *r)
{
    mha_adamw_destroy(r->opt);
    mha_gradients_destroy(r->grads);
    mha_tensor *t[4] = {r->x, r->y, r->target, r->dy};
    for (int i = 0; i < 4; i++)
        mha_tensor_destroy(t[i]);
    mha_layer_destroy(r->student);
    mha_layer_destroy(r->teacher);
    mha_device_destroy(r->dev);
}

/* The loss of y against the target, and dL/dY into dy. */
static double loss_and_grad(const float *y, const float *t, float *dy)
{
    double loss = 0.0;
    for (int i = 0; i < COUNT; i++) {
        double e = (double)y[i] - t[i];
        loss += e * e;
        dy[i] = (float)(2.0 * e / COUNT);
    }
    return loss / COUNT;
}

/* One step t (from 0): training forward, loss, backward, AdamW at the
 * warmed-up learning rate. */
static mha_status step(run *r, const options *o, int t, double *loss)
{
    static float y[COUNT], target[COUNT], dy[COUNT];
    mha_forward_args fa;
    mha_forward_args_init(&fa);
    fa.query = fa.key = fa.value = r->x;
    fa.is_causal = 1;
    fa.output = r->y;
    fa.save_for_backward = 1;
    mha_backward_args ba;
    mha_backward_args_init(&ba);
    ba.grad_output = r->dy;
    ba.grads = r->grads;
    float lr = o->lr * (t + 1 < o->warmup ? (float)(t + 1) / o->warmup : 1.0f);
    mha_status st = mha_layer_forward(r->student, &fa);
    if (st == MHA_OK)
        st = mha_tensor_download(r->y, y, sizeof y);
    if (st == MHA_OK)
        st = mha_tensor_download(r->target, target, sizeof target);
    if (st != MHA_OK)
        return st;
    *loss = loss_and_grad(y, target, dy);
    st = mha_tensor_upload(r->dy, dy, sizeof dy);
    if (st == MHA_OK)
        st = mha_layer_backward(r->student, &ba);
    if (st == MHA_OK)
        st = mha_adamw_step(r->opt, r->grads, lr);
    return st;
}

/* The teacher's output on x, once: the target. */
static mha_status teach(run *r)
{
    mha_forward_args fa;
    mha_forward_args_init(&fa);
    fa.query = fa.key = fa.value = r->x;
    fa.is_causal = 1;
    fa.output = r->target;
    return mha_layer_forward(r->teacher, &fa);
}

static int train_on(mha_context *ctx, const char *spec, const options *o,
                    int last)
{
    run r = {ctx, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    mha_status st = setup(&r, spec);
    if (st == MHA_OK)
        st = teach(&r);
    double loss = 0.0, first = 0.0;
    for (int t = 0; st == MHA_OK && t < o->steps; t++) {
        st = step(&r, o, t, &loss);
        if (t == 0)
            first = loss;
        if (st == MHA_OK && (t % o->every == 0 || t == o->steps - 1))
            printf("%s step %4d  loss %.6f\n", spec, t, loss);
    }
    if (st == MHA_OK)
        printf("%s: loss %.6f -> %.6f in %d steps\n", spec, first, loss,
               o->steps);
    if (st == MHA_OK && last && o->save)
        st = mha_layer_save_safetensors(r.student, o->save, NULL);
    if (st != MHA_OK)
        fprintf(stderr, "example-train on %s: %s (%s)\n", spec,
                mha_context_errmsg(ctx), mha_status_str(st));
    teardown(&r);
    return st == MHA_OK ? 0 : st == MHA_UNSUPPORTED ? 2 : 1;
}

int main(int argc, char **argv)
{
    options o;
    if (parse(argc, argv, &o))
        return 2;
    mha_context *ctx = NULL;
    if (mha_context_create(NULL, &ctx) != MHA_OK) {
        fprintf(stderr, "example-train: no libmha context\n");
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < o.ndevices; i++) {
        int r = train_on(ctx, o.devices[i], &o, i == o.ndevices - 1);
        rc = r > rc ? r : rc;
    }
    mha_context_destroy(ctx);
    return rc;
}
