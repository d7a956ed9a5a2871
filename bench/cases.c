/* cases.c: the presets of mha-bench (shapes of well-known models) and the
 * FLOP and byte formulas every figure of the report is derived from. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

typedef struct preset_row {
    const char *preset;
    const char *name;
    int64_t e, h, b, l, s; /* s 0: = l */
    int causal;
} preset_row;

static const preset_row rows[] = {
    {"quick", "quick-e256-l128", 256, 4, 1, 128, 0, 0},
    {"quick", "quick-e256-l64-causal", 256, 4, 1, 64, 0, 1},
    {"quick", "quick-e512-decode-s256", 512, 8, 1, 1, 256, 0},
    {"bert-base", "bert-base-l128", 768, 12, 1, 128, 0, 0},
    {"bert-base", "bert-base-l512", 768, 12, 1, 512, 0, 0},
    {"gpt2-small", "gpt2-small-l1024", 768, 12, 1, 1024, 0, 1},
    {"vit-b16", "vit-b16-l197", 768, 12, 1, 197, 0, 0},
    {"whisper-base-encoder", "whisper-base-enc-l1500", 512, 8, 1, 1500, 0, 0},
    {"llama7b-prefill", "llama7b-prefill-l512", 4096, 32, 1, 512, 0, 1},
    {"llama7b-decode", "llama7b-decode-s4096", 4096, 32, 1, 1, 4096, 0},
    {"long-context", "long-context-l16384", 512, 8, 1, 16384, 0, 0},
};

const char *const bench_preset_names[] = {
    "quick", "bert-base", "gpt2-small", "vit-b16", "whisper-base-encoder",
    "llama7b-prefill", "llama7b-decode", "long-context", NULL};

int bench_preset_add(const char *name, bench_case *cases, int *count, int max)
{
    int all = strcmp(name, "all") == 0, found = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const preset_row *p = &rows[i];
        if (all ? strcmp(p->preset, "quick") == 0
                : strcmp(p->preset, name) != 0)
            continue;
        if (*count >= max)
            return -1;
        bench_case *c = &cases[(*count)++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", p->name);
        c->embed_dim = p->e;
        c->heads = p->h;
        c->batch = p->b;
        c->tgt_len = p->l;
        c->src_len = p->s ? p->s : p->l;
        c->kdim = c->vdim = p->e;
        c->causal = p->causal;
        c->dtype = MHA_F32;
        found = 1;
    }
    return found ? 0 : -1;
}

double bench_flops(const bench_case *c)
{
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len, k = (double)c->kdim, v = (double)c->vdim;
    return (double)c->batch *
           (2 * l * e * e + 2 * s * k * e + 2 * s * v * e + 4 * l * s * e +
            2 * l * e * e);
}

double bench_bytes(const bench_case *c)
{
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len, k = (double)c->kdim, v = (double)c->vdim,
           b = (double)c->batch;
    double w = c->dtype == MHA_F16 ? 2.0 : 4.0;
    return 4 * b * (l * e + s * k + s * v) + 4 * b * l * e +
           w * (2 * e * e + e * k + e * v + 4 * e);
}
