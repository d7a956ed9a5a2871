/* gates.c: reads a call's head gates back from the device (in chunks on
 * the stack: a forward allocates nothing on the host) and turns them into
 * the heads the call skips, in runs the graph builds one attention per. */
#include <string.h>

#include "gates.h"

static int bit(const uint64_t *w, int64_t h)
{
    return h < 64 * MHA_SKIP_WORDS && (w[h / 64] >> (h % 64) & 1u);
}

static void set_bit(uint64_t *w, int64_t h, int on)
{
    uint64_t m = (uint64_t)1 << (h % 64);
    w[h / 64] = on ? w[h / 64] | m : w[h / 64] & ~m;
}

int mha_head_runs(const uint64_t skip[MHA_SKIP_WORDS], int64_t H,
                  mha_head_run *runs, int cap)
{
    int n = 0, computed = 0, prev = -1;
    for (int64_t h = 0; h < H; h++) {
        int c = !bit(skip, h);
        if (c != prev) {
            computed += c;
            if (n < cap)
                runs[n] = (mha_head_run){h, 0, c};
            n++;
            prev = c;
        }
        if (n >= 1 && n <= cap) /* n >= 1 always; gcc -O2 cannot see it */
            runs[n - 1].count++;
    }
    return computed;
}

mha_status mha_gates_read(mha_device *device, const mha_tensor *gates,
                          int64_t H, int64_t group,
                          uint64_t skip[MHA_SKIP_WORDS], int *mul)
{
    enum { CHUNK = 256 };
    float v[CHUNK];
    uint64_t zero[MHA_SKIP_WORDS], not_one[MHA_SKIP_WORDS] = {0};
    int high_not_one = 0;
    memset(zero, 0xff, sizeof zero);
    for (size_t at = 0; at < gates->count; at += CHUNK) {
        size_t n = gates->count - at < CHUNK ? gates->count - at : CHUNK;
        mha_status st = mha_dev_read(device, gates->buf,
                                     (gates->offset + at) * 4, v, n * 4);
        if (st != MHA_OK)
            return st;
        for (size_t i = 0; i < n; i++) {
            int64_t h = (int64_t)((at + i) % (size_t)H);
            if (h >= 64 * MHA_SKIP_WORDS) {
                high_not_one |= v[i] != 1.0f;
                continue;
            }
            if (v[i] != 0.0f)
                set_bit(zero, h, 0);
            if (v[i] != 1.0f)
                set_bit(not_one, h, 1);
        }
    }
    /* skipped: heads of a group that is 0 throughout, below the limit */
    memset(skip, 0, MHA_SKIP_WORDS * sizeof *skip);
    for (int64_t g0 = 0; g0 + group <= H && g0 + group <= 64 * MHA_SKIP_WORDS;
         g0 += group) {
        int off = 1;
        for (int64_t h = g0; h < g0 + group; h++)
            off &= bit(zero, h);
        for (int64_t h = g0; h < g0 + group; h++)
            set_bit(skip, h, off);
    }
    mha_head_run none[1];
    if (mha_head_runs(skip, H, none, 0) > MHA_MAX_HEAD_RUNS)
        memset(skip, 0, MHA_SKIP_WORDS * sizeof *skip);
    *mul = high_not_one;
    for (int w = 0; w < MHA_SKIP_WORDS; w++)
        *mul |= (not_one[w] & ~skip[w]) != 0;
    return MHA_OK;
}
