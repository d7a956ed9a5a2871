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

/* Decoder presets (mha_decoder): Llama 3 8B (E 4096, 32 query heads, 8
 * kv heads of 128), Mistral 7B's 4096-token window, Gemma 2 9B's logit
 * softcap 50 (16 heads of 256 over E 3584). */
typedef struct decoder_row {
    const char *preset;
    const char *name;
    int64_t e, hq, hkv, d, t, s, window;
    float softcap;
    mha_dtype cache;
} decoder_row;

static const decoder_row decoder_rows[] = {
    {"llama3-8b-decode", "llama3-8b-decode-s1k", 4096, 32, 8, 128, 1, 1024,
     0, 0, MHA_F32},
    {"llama3-8b-decode", "llama3-8b-decode-s1k-f16", 4096, 32, 8, 128, 1,
     1024, 0, 0, MHA_F16},
    {"llama3-8b-decode", "llama3-8b-decode-s4k", 4096, 32, 8, 128, 1, 4096,
     0, 0, MHA_F32},
    {"llama3-8b-decode", "llama3-8b-decode-s4k-f16", 4096, 32, 8, 128, 1,
     4096, 0, 0, MHA_F16},
    {"llama3-8b-decode", "llama3-8b-decode-s16k", 4096, 32, 8, 128, 1, 16384,
     0, 0, MHA_F32},
    {"llama3-8b-decode", "llama3-8b-decode-s16k-f16", 4096, 32, 8, 128, 1,
     16384, 0, 0, MHA_F16},
    {"llama3-8b-prefill", "llama3-8b-prefill-t512", 4096, 32, 8, 128, 512,
     512, 0, 0, MHA_F32},
    {"mistral-7b-window", "mistral-7b-window-s16k", 4096, 32, 8, 128, 1,
     16384, 4096, 0, MHA_F32},
    {"gemma2-softcap", "gemma2-9b-softcap-s4k", 3584, 16, 8, 256, 1, 4096, 0,
     50.0f, MHA_F32},
};

const char *const bench_preset_names[] = {
    "quick", "bert-base", "gpt2-small", "vit-b16", "whisper-base-encoder",
    "llama7b-prefill", "llama7b-decode", "long-context", "llama3-8b-decode",
    "llama3-8b-prefill", "mistral-7b-window", "gemma2-softcap", NULL};

static int decoder_preset_add(const char *name, int all, bench_case *cases,
                              int *count, int max)
{
    int found = 0;
    for (size_t i = 0; i < sizeof decoder_rows / sizeof *decoder_rows; i++) {
        const decoder_row *p = &decoder_rows[i];
        if (!all && strcmp(p->preset, name) != 0)
            continue;
        if (*count >= max)
            return -1;
        bench_case *c = &cases[(*count)++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", p->name);
        c->decoder = 1;
        c->embed_dim = p->e;
        c->heads = p->hq;
        c->kv_heads = p->hkv;
        c->head_dim = p->d;
        c->batch = 1;
        c->tgt_len = p->t;
        c->src_len = p->s;
        c->window = p->window;
        c->softcap = p->softcap;
        c->causal = 1;
        c->dtype = MHA_F32;
        c->cache_dtype = p->cache;
        found = 1;
    }
    return found;
}

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
    int dec = decoder_preset_add(name, all, cases, count, max);
    if (dec < 0)
        return -1;
    return found || dec ? 0 : -1;
}

double bench_decoder_keys(const bench_case *c)
{
    double s = (double)c->src_len;
    return c->window > 0 && (double)c->window < s ? (double)c->window : s;
}

double bench_decoder_kv_bytes(const bench_case *c)
{
    double es = c->cache_dtype == MHA_F16 ? 2.0 : 4.0;
    return (double)c->batch * 2.0 * bench_decoder_keys(c) *
           (double)(c->kv_heads * c->head_dim) * es;
}

/* Decoder step: q, k, v and o projections, then 4 d FLOPs per query head
 * and key attended (a causal prefill's queries see half the new keys). */
static double decoder_flops(const bench_case *c)
{
    double e = (double)c->embed_dim, t = (double)c->tgt_len;
    double q = (double)(c->heads * c->head_dim);
    double kv = (double)(c->kv_heads * c->head_dim);
    double keys = bench_decoder_keys(c) - (t - 1) / 2;
    return (double)c->batch * (4 * t * e * q + 4 * t * e * kv +
                               4 * t * keys * q);
}

/* Weights once, x and y, and the cache's keys and values. */
static double decoder_bytes(const bench_case *c)
{
    double e = (double)c->embed_dim, t = (double)c->tgt_len;
    double q = (double)(c->heads * c->head_dim);
    double kv = (double)(c->kv_heads * c->head_dim);
    return 4 * (2 * e * q + 2 * e * kv) + 8 * (double)c->batch * t * e +
           bench_decoder_kv_bytes(c);
}

double bench_flops(const bench_case *c)
{
    if (c->decoder)
        return decoder_flops(c);
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len, k = (double)c->kdim, v = (double)c->vdim;
    return (double)c->batch *
           (2 * l * e * e + 2 * s * k * e + 2 * s * v * e + 4 * l * s * e +
            2 * l * e * e);
}

double bench_backward_flops(const bench_case *c)
{
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len, k = (double)c->kdim, v = (double)c->vdim;
    double proj = 4 * l * e * e + 2 * s * k * e + 2 * s * v * e;
    return (double)c->batch * (3 * proj + 3.5 * 4 * l * s * e);
}

double bench_bytes(const bench_case *c)
{
    if (c->decoder)
        return decoder_bytes(c);
    double e = (double)c->embed_dim, l = (double)c->tgt_len,
           s = (double)c->src_len, k = (double)c->kdim, v = (double)c->vdim,
           b = (double)c->batch;
    double w = c->dtype == MHA_F16 ? 2.0 : 4.0;
    return 4 * b * (l * e + s * k + s * v) + 4 * b * l * e +
           w * (2 * e * e + e * k + e * v + 4 * e);
}
