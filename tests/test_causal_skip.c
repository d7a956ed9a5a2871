/* test_causal_skip.c: causal attention visits about half of the key tiles
 * on the GPU backends. The keys past the middle of the sequence hold NaN
 * (K and V): a fused attention that loaded a tile of them for a row that
 * cannot see it would turn that row into NaN (a masked score still
 * multiplies its V row by 0), so the rows of the first half, up to a tile
 * of rows short of the middle, must come out finite and with the same bits
 * as with clean keys, while the rows that do see a NaN key are NaN. Row i
 * then reads only keys up to its own row block's end, which over all rows
 * is about half of the L x S key tiles. No timing. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum { B = 1, H = 2, T = 512, D = 64 };
/* Rows a tile of rows may span: the kernels' row blocks are at most this. */
enum { ROW_TILE = 64 };

static mha_tensor *tensor(mha_device *dev, const float *x)
{
    int64_t shape[4] = {B, H, T, D};
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 4, shape, &t), MHA_OK);
    if (x)
        cr_assert_eq(mha_tensor_upload(t, x, sizeof(float) * B * H * T * D),
                     MHA_OK);
    return t;
}

/* Causal attention of q over k, v ([B,H,T,D]) on dev into out. */
static void causal(mha_context *ctx, mha_device *dev, const float *q,
                   const float *k, const float *v, float *out)
{
    mha_tensor *tq = tensor(dev, q), *tk = tensor(dev, k);
    mha_tensor *tv = tensor(dev, v), *to = tensor(dev, NULL);
    mha_attention_args a;
    mha_attention_args_init(&a);
    a.q = tq, a.k = tk, a.v = tv, a.out = to;
    a.layout = MHA_LAYOUT_BHTD;
    a.causal = MHA_CAUSAL_TOP_LEFT;
    cr_assert_eq(mha_attention(dev, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(mha_tensor_download(to, out, sizeof(float) * B * H * T * D),
                 MHA_OK);
    mha_tensor *ts[] = {tq, tk, tv, to};
    for (int i = 0; i < 4; ++i)
        mha_tensor_destroy(ts[i]);
}

Test(causal_skip, gpu_rows_never_load_keys_past_their_block)
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int n = test_devices(ctx, devs, TEST_MAX_DEVICES), ran = 0;
    size_t count = (size_t)B * H * T * D;
    float *q = malloc(count * 4), *k = malloc(count * 4), *v = malloc(count * 4);
    float *kp = malloc(count * 4), *vp = malloc(count * 4);
    float *clean = malloc(count * 4), *poisoned = malloc(count * 4);
    test_rng rng = {42};
    for (size_t i = 0; i < count; ++i) {
        q[i] = test_normal(&rng);
        k[i] = kp[i] = test_normal(&rng);
        v[i] = vp[i] = test_normal(&rng);
        if (i / D % T >= T / 2) /* key j = i / D % T */
            kp[i] = vp[i] = NAN;
    }
    for (int di = 0; di < n; ++di) {
        if (strncmp(devs[di].label, "vulkan", 6) != 0)
            continue; /* the GPU backend that skips tiles in this branch */
        mha_device *dev = test_open(ctx, &devs[di]);
        causal(ctx, dev, q, k, v, clean);
        causal(ctx, dev, q, kp, vp, poisoned);
        for (size_t i = 0; i < count; ++i) {
            size_t row = i / D % T;
            if (row < T / 2 - ROW_TILE)
                cr_assert(memcmp(&clean[i], &poisoned[i], 4) == 0,
                          "%s: row %zu read a key past its block (%g vs %g)",
                          devs[di].label, row, poisoned[i], clean[i]);
            else if (row >= T / 2)
                cr_assert(isnan(poisoned[i]), "%s: row %zu sees NaN keys",
                          devs[di].label, row);
        }
        mha_device_destroy(dev);
        ++ran;
    }
    free(q), free(k), free(v), free(kp), free(vp), free(clean), free(poisoned);
    mha_context_destroy(ctx);
    if (!ran)
        cr_skip_test("no Vulkan device");
}
