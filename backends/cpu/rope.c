/* rope.c: the ROPE op on the CPU (rotary position embedding, NeoX and
 * GPT-J pairings, partial rotary dimensions, scaled positions), which is
 * also the KV cache's strided, dtype-converting copy (rope_dims 0). One
 * task per token (b, t): its angles are computed once, in double precision
 * (positions reach 10^5 and more, where a float angle loses 1e-2 rad), and
 * applied to every head. f16 tensors are converted element by element.
 * MUL (the head gates' multiply) lives here too: it is the same strided,
 * dtype-converting element walk with a factor instead of a rotation. */
#include <math.h>
#include <string.h>

#include "half.h"
#include "ops.h"

/* Largest rope_dims: the task keeps r/2 cosines and sines on its stack. */
enum { ROPE_MAX_DIMS = 1024 };

static bool rope_tensor_ok(const mha_tdesc *t)
{
    return t->buf && (t->dtype == MHA_F32 || t->dtype == MHA_F16);
}

bool mha_cpu_rope_supported(const mha_node *n)
{
    return rope_tensor_ok(&n->src[MHA_SRC_ROPE_X]) &&
           rope_tensor_ok(&n->dst) && mha_rope_is_valid(n) &&
           n->params.rope_dims <= ROPE_MAX_DIMS;
}

static void *elem(const mha_tdesc *t, int64_t i0, int64_t i1, int64_t i2,
                  int64_t i3)
{
    size_t es = t->dtype == MHA_F16 ? 2 : 4;
    int64_t k = i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
    return (char *)t->buf + t->offset + (size_t)k * es;
}

static float load(const mha_tdesc *t, const void *at)
{
    if (t->dtype == MHA_F16) {
        uint16_t h;
        memcpy(&h, at, sizeof h);
        return mha_f16_to_f32(h);
    }
    float f;
    memcpy(&f, at, sizeof f);
    return f;
}

static void store(const mha_tdesc *t, void *at, float v)
{
    if (t->dtype == MHA_F16) {
        uint16_t h = mha_f32_to_f16(v);
        memcpy(at, &h, sizeof h);
    } else {
        memcpy(at, &v, sizeof v);
    }
}

typedef struct rope_job {
    const mha_node *node;
} rope_job;

/* The position of token (b, t), scaled. */
static double position(const mha_node *n, int64_t b, int64_t t)
{
    const mha_tdesc *pos = &n->src[MHA_SRC_ROPE_POS];
    int32_t v;
    memcpy(&v, (const char *)pos->buf + pos->offset +
                   (size_t)((pos->ne[2] == 1 ? 0 : b * pos->nb[2]) +
                            t * pos->nb[3]) * sizeof v,
           sizeof v);
    return (double)v * (double)n->params.rope_pos_scale;
}

/* The two features rotated together by frequency i. */
static void pair_of(const mha_op_params *p, int64_t i, int64_t *c0,
                    int64_t *c1)
{
    if (p->rope_style == MHA_ROPE_GPTJ) {
        *c0 = 2 * i;
        *c1 = 2 * i + 1;
    } else {
        *c0 = i;
        *c1 = i + p->rope_dims / 2;
    }
}

static void rope_task(void *arg, int64_t task, int thread)
{
    const mha_node *n = ((const rope_job *)arg)->node;
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X], *y = &n->dst;
    const mha_op_params *p = &n->params;
    int64_t b = task / x->ne[2], t = task % x->ne[2], half = p->rope_dims / 2;
    float cs[ROPE_MAX_DIMS / 2], sn[ROPE_MAX_DIMS / 2];
    (void)thread;
    if (half > 0) {
        double pos = position(n, b, t);
        for (int64_t i = 0; i < half; i++) {
            double a = pos * pow((double)p->rope_theta,
                                 -2.0 * (double)i / (double)p->rope_dims);
            cs[i] = (float)cos(a);
            sn[i] = (float)sin(a);
        }
    }
    for (int64_t h = 0; h < x->ne[1]; h++) {
        for (int64_t i = 0; i < half; i++) {
            int64_t c0, c1;
            pair_of(p, i, &c0, &c1);
            float u = load(x, elem(x, b, h, t, c0));
            float v = load(x, elem(x, b, h, t, c1));
            store(y, elem(y, b, h, t, c0), u * cs[i] - v * sn[i]);
            store(y, elem(y, b, h, t, c1), v * cs[i] + u * sn[i]);
        }
        for (int64_t c = 2 * half; c < x->ne[3]; c++)
            store(y, elem(y, b, h, t, c), load(x, elem(x, b, h, t, c)));
    }
}

mha_status mha_cpu_run_rope(mha_cpu_exec *e, const mha_node *n)
{
    rope_job j = {n};
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    mha_cpu_pool_run(e->pool, x->ne[0] * x->ne[2], rope_task, &j);
    return MHA_OK;
}

/* ---- MUL ------------------------------------------------------------------ */

bool mha_cpu_mul_supported(const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_MUL_X], *f = &n->src[MHA_SRC_MUL_F];
    if (!rope_tensor_ok(x) || !rope_tensor_ok(&n->dst) || !f->buf ||
        f->dtype != MHA_F32)
        return false;
    for (int i = 0; i < 4; i++)
        if (x->ne[i] != n->dst.ne[i] || f->ne[i] != n->dst.ne[i])
            return false;
    return true;
}

/* One task per (i0, i1, i2) row of dst. */
static void mul_task(void *arg, int64_t task, int thread)
{
    const mha_node *n = ((const rope_job *)arg)->node;
    const mha_tdesc *x = &n->src[MHA_SRC_MUL_X], *f = &n->src[MHA_SRC_MUL_F];
    const mha_tdesc *y = &n->dst;
    int64_t i2 = task % y->ne[2], i1 = task / y->ne[2] % y->ne[1];
    int64_t i0 = task / (y->ne[2] * y->ne[1]);
    (void)thread;
    for (int64_t c = 0; c < y->ne[3]; c++)
        store(y, elem(y, i0, i1, i2, c),
              load(x, elem(x, i0, i1, i2, c)) *
                  load(f, elem(f, i0, i1, i2, c)));
}

mha_status mha_cpu_run_mul(mha_cpu_exec *e, const mha_node *n)
{
    rope_job j = {n};
    const mha_tdesc *y = &n->dst;
    mha_cpu_pool_run(e->pool, y->ne[0] * y->ne[1] * y->ne[2], mul_task, &j);
    return MHA_OK;
}
