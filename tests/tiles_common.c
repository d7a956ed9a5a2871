/* tiles_common.c: see tiles_common.h. */
#include "tiles_common.h"

#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

static mha_tdesc head_view(void *buf, int H, int T, int D)
{
    mha_tdesc t;
    memset(&t, 0, sizeof t);
    t.dtype = MHA_F32;
    t.ne[0] = 1, t.ne[1] = H, t.ne[2] = T, t.ne[3] = D;
    t.nb[0] = (int64_t)T * H * D, t.nb[1] = D, t.nb[2] = H * D, t.nb[3] = 1;
    t.buf = buf;
    return t;
}

void tiles_open(tiles_case *c, mha_device *dev, int H, int T, int D)
{
    memset(c, 0, sizeof *c);
    c->dev = dev;
    c->bytes = (size_t)T * H * D * sizeof(float);
    float *x = malloc(c->bytes);
    for (size_t i = 0; i < c->bytes / sizeof *x; i++)
        x[i] = sinf(0.37f * (float)i);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(mha_dev_alloc(dev, c->bytes, &c->buf[i]), MHA_OK);
        cr_assert_eq(mha_dev_write(dev, c->buf[i], 0, x, c->bytes), MHA_OK);
    }
    free(x);
    cr_assert_eq(mha_dev_alloc(dev, sizeof(int), &c->counter), MHA_OK);
    mha_node *n = &c->node;
    n->op = MHA_OP_ATTENTION;
    n->src[MHA_SRC_Q] = head_view(c->buf[0], H, T, D);
    n->src[MHA_SRC_K] = head_view(c->buf[1], H, T, D);
    n->src[MHA_SRC_V] = head_view(c->buf[2], H, T, D);
    n->dst = head_view(c->buf[3], H, T, D);
    n->params.scale = 1.0f / sqrtf((float)D);
    n->params.mask_cols = T;
    cr_assert(mha_dev_supports(dev, n), "the device declines the attention");
}

int tiles_run(tiles_case *c, int causal)
{
    int n = 0;
    c->node.params.causal = causal;
    cr_assert_eq(mha_dev_write(c->dev, c->counter, 0, &n, sizeof n), MHA_OK);
    cr_assert_eq(mha_dev_run(c->dev, &c->node), MHA_OK);
    cr_assert_eq(mha_dev_sync(c->dev), MHA_OK);
    cr_assert_eq(mha_dev_read(c->dev, c->counter, 0, &n, sizeof n), MHA_OK);
    return n;
}

void tiles_close(tiles_case *c)
{
    for (int i = 0; i < 4; i++)
        mha_dev_free(c->dev, c->buf[i], c->bytes);
    mha_dev_free(c->dev, c->counter, sizeof(int));
}

void tiles_each_device(const char *prefix,
                       void (*check)(mha_context *, const test_device *))
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    for (int i = 0; i < nd; i++)
        if (strncmp(devs[i].label, prefix, strlen(prefix)) == 0) {
            check(ctx, &devs[i]);
            ran++;
        }
    mha_context_destroy(ctx);
    if (!ran)
        cr_skip_test("no %s device", prefix);
}
