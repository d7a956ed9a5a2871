/* args.c: the command line of mha-bench. bench_parse_args never exits or
 * prints; it returns BENCH_EXIT_USAGE with a message so tests can drive
 * every bad-flag path. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

const char bench_usage[] =
    "usage: mha-bench [options]\n"
    "       mha-bench --compare OLD.json NEW.json\n"
    "\n"
    "Times libmha's forward on every device (or those named) for a preset of\n"
    "model shapes or one custom shape, checks each output against the CPU\n"
    "backend's scalar kernels, and prints a table (JSON/CSV on request).\n"
    "\n"
    "  --device SPEC      all (default), best, cpu, vulkan, opencl or\n"
    "                     backend:N; repeat or comma-separate for several\n"
    "  --preset NAME      quick (default), bert-base, gpt2-small, vit-b16,\n"
    "                     whisper-base-encoder, llama7b-prefill,\n"
    "                     llama7b-decode, long-context, or all (every one\n"
    "                     but quick); may be repeated. Decoder layers\n"
    "                     (mha_decoder, a step over a KV cache):\n"
    "                     llama3-8b-decode (cache 1k/4k/16k, f32 and f16),\n"
    "                     llama3-8b-prefill (T 512), mistral-7b-window\n"
    "                     (W 4096, cache 16k), gemma2-softcap\n"
    "  --embed-dim E --heads H --batch B --tgt-len L --src-len S\n"
    "  --kdim K --vdim V --causal --dtype f32|f16\n"
    "                     one custom case (defaults E256 H4 B1 L128 S=L\n"
    "                     K=V=E f32); --dtype also applies to presets\n"
    "  --threads N        CPU backend and peer threads (0: one per core)\n"
    "  --warmup N         untimed runs before timing (default 2)\n"
    "  --repeat N         at least N timed runs (default 10)\n"
    "  --min-time SEC     and at least SEC seconds of them (default 0.5)\n"
    "  --json FILE        write every figure and the machine as JSON\n"
    "  --csv FILE         write the rows as CSV\n"
    "  --no-peers         skip the OpenBLAS, CLBlast and PyTorch rows\n"
    "  --compare OLD NEW  print the speedup NEW vs OLD of two JSON files\n"
    "  --targets          measure the CPU backend's targets in one run (sgemm\n"
    "                     and copy and read references, prefill, attention\n"
    "                     part, small shapes, causal, 32k, decode, decoder\n"
    "                     decode's attention and layer step vs the K+V\n"
    "                     read bound, GQA prefill's attention, threads) and\n"
    "                     print target | measured | goal | met; --threads\n"
    "                     sets the thread count; --warmup, --repeat and\n"
    "                     --min-time do not apply (about a minute on 2\n"
    "                     cores)\n"
    "  --backward         time a training forward plus its backward\n"
    "                     (weight and input gradients) instead, beside\n"
    "                     OpenBLAS's sgemm rate and PyTorch autograd's\n"
    "                     forward + backward in the same run; FLOPs are\n"
    "                     the forward's plus 2x its projections' plus\n"
    "                     2.5x its attention matmuls' (FlashAttention-2's\n"
    "                     count); default case E512 H8 B1 L=S=2048\n"
    "  --profile          also run each case with the device's profile on:\n"
    "                     kernel time (GPU timestamps; the host clock on\n"
    "                     the CPU backend) beside the wall time, and the\n"
    "                     time of each graph node (in_projection,\n"
    "                     attention, out_projection, ...), as a table and\n"
    "                     in the JSON\n"
    "  --self-attention   pass one tensor as query, key and value (the\n"
    "                     cases where S = L and kdim = vdim = E), the\n"
    "                     self-attention whose Q, K and V libmha projects\n"
    "                     with one product (qkv_projection in --profile)\n"
    "  --help             print this text\n"
    "\n"
    "Causal rows also report GFLOP/s over the FLOPs needed: the attention\n"
    "part 4*E*LS becomes 4*E*sum_{i<L} min(i+1, S) (L(L+1)/2 pairs when\n"
    "L <= S), about half, as FlashAttention's benchmarks count it.\n"
    "\n"
    "Exit status: 0; 1 when a result is over tolerance (FAIL) or a device\n"
    "fails; 2 on a bad argument.\n";

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return BENCH_EXIT_USAGE;
}

/* Parses a whole decimal integer in [lo, hi]. */
static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int valid_device_spec(const char *s)
{
    static const char *const backends[] = {"cpu", "vulkan", "opencl"};
    if (!strcmp(s, "all") || !strcmp(s, "best"))
        return 1;
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(backends[i]);
        if (strncmp(s, backends[i], n))
            continue;
        if (s[n] == 0)
            return 1;
        int64_t idx;
        if (s[n] == ':' && parse_int(s + n + 1, 0, 1000, &idx) == 0)
            return 1;
    }
    return 0;
}

int bench_parse_args(int argc, char **argv, bench_options *o, char *err,
                     size_t errlen)
{
    memset(o, 0, sizeof *o);
    o->warmup = 2;
    o->repeat = 10;
    o->min_time = 0.5;
    o->peers = 1;
    if (errlen)
        err[0] = 0;
    bench_case custom;
    memset(&custom, 0, sizeof custom);
    snprintf(custom.name, sizeof custom.name, "custom");
    custom.embed_dim = 256;
    custom.heads = 4;
    custom.batch = 1;
    custom.tgt_len = 128;
    int have_custom = 0, have_preset = 0, have_dtype = 0, self_attn = 0;
    mha_dtype dtype = MHA_F32;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t n;
#define NEED_VALUE()                                                         \
    do {                                                                     \
        if (!v)                                                              \
            return fail(err, errlen, "mha-bench: %s needs a value", a);      \
        i++;                                                                 \
    } while (0)
#define INT_FLAG(flag, lo, hi, dst)                                          \
    if (!strcmp(a, flag)) {                                                  \
        NEED_VALUE();                                                        \
        if (parse_int(v, lo, hi, &n))                                        \
            return fail(err, errlen,                                         \
                        "mha-bench: %s '%s': expected an integer in "        \
                        "[%lld, %lld]",                                      \
                        a, v, (long long)(lo), (long long)(hi));             \
        dst;                                                                 \
        continue;                                                            \
    }
        INT_FLAG("--embed-dim", 1, 1 << 20, (custom.embed_dim = n, have_custom = 1))
        INT_FLAG("--heads", 1, 1 << 16, (custom.heads = n, have_custom = 1))
        INT_FLAG("--batch", 1, 1 << 16, (custom.batch = n, have_custom = 1))
        INT_FLAG("--tgt-len", 1, 1 << 24, (custom.tgt_len = n, have_custom = 1))
        INT_FLAG("--src-len", 1, 1 << 24, (custom.src_len = n, have_custom = 1))
        INT_FLAG("--kdim", 1, 1 << 20, (custom.kdim = n, have_custom = 1))
        INT_FLAG("--vdim", 1, 1 << 20, (custom.vdim = n, have_custom = 1))
        INT_FLAG("--threads", 0, 4096, o->threads = (int)n)
        INT_FLAG("--warmup", 0, 1000000, o->warmup = (int)n)
        INT_FLAG("--repeat", 1, 1000000, o->repeat = (int)n)
#undef INT_FLAG
        if (!strcmp(a, "--causal")) {
            custom.causal = 1;
            have_custom = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            o->help = 1;
        } else if (!strcmp(a, "--profile")) {
            o->profile = 1;
        } else if (!strcmp(a, "--self-attention")) {
            self_attn = 1;
        } else if (!strcmp(a, "--targets")) {
            o->targets = 1;
        } else if (!strcmp(a, "--backward")) {
            o->backward = 1;
        } else if (!strcmp(a, "--no-peers")) {
            o->peers = 0;
        } else if (!strcmp(a, "--dtype")) {
            NEED_VALUE();
            if (!strcmp(v, "f32"))
                dtype = MHA_F32;
            else if (!strcmp(v, "f16"))
                dtype = MHA_F16;
            else
                return fail(err, errlen,
                            "mha-bench: --dtype '%s': expected f32 or f16", v);
            have_dtype = 1;
        } else if (!strcmp(a, "--min-time")) {
            NEED_VALUE();
            char *end;
            errno = 0;
            double t = strtod(v, &end);
            if (errno || end == v || *end || !(t >= 0 && t <= 86400))
                return fail(err, errlen,
                            "mha-bench: --min-time '%s': expected seconds "
                            "in [0, 86400]",
                            v);
            o->min_time = t;
        } else if (!strcmp(a, "--preset")) {
            NEED_VALUE();
            if (bench_preset_add(v, o->cases, &o->ncases, BENCH_MAX_CASES))
                return fail(err, errlen,
                            "mha-bench: --preset '%s': expected quick, "
                            "bert-base, gpt2-small, vit-b16, "
                            "whisper-base-encoder, llama7b-prefill, "
                            "llama7b-decode, long-context, "
                            "llama3-8b-decode, llama3-8b-prefill, "
                            "mistral-7b-window, gemma2-softcap or all",
                            v);
            have_preset = 1;
        } else if (!strcmp(a, "--device")) {
            NEED_VALUE();
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *save, *t = strtok_r(buf, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (!valid_device_spec(t))
                    return fail(err, errlen,
                                "mha-bench: --device '%s': expected all, "
                                "best, cpu, vulkan, opencl or backend:N",
                                t);
                if (o->ndevices >= BENCH_MAX_DEVICES)
                    return fail(err, errlen,
                                "mha-bench: more than %d --device specs",
                                BENCH_MAX_DEVICES);
                snprintf(o->devices[o->ndevices++], sizeof o->devices[0],
                         "%s", t);
            }
        } else if (!strcmp(a, "--json") || !strcmp(a, "--csv")) {
            NEED_VALUE();
            if (a[2] == 'j')
                o->json_path = v;
            else
                o->csv_path = v;
        } else if (!strcmp(a, "--compare")) {
            if (i + 2 >= argc)
                return fail(err, errlen,
                            "mha-bench: --compare needs OLD.json NEW.json");
            o->compare_old = argv[++i];
            o->compare_new = argv[++i];
        } else {
            return fail(err, errlen,
                        "mha-bench: unknown argument '%s' (try --help)", a);
        }
#undef NEED_VALUE
    }

    if (have_custom) {
        if (!custom.src_len)
            custom.src_len = custom.tgt_len;
        if (!custom.kdim)
            custom.kdim = custom.embed_dim;
        if (!custom.vdim)
            custom.vdim = custom.embed_dim;
        if (custom.embed_dim % custom.heads)
            return fail(err, errlen,
                        "mha-bench: --heads %lld does not divide "
                        "--embed-dim %lld",
                        (long long)custom.heads, (long long)custom.embed_dim);
        if (custom.causal && custom.src_len != custom.tgt_len)
            return fail(err, errlen,
                        "mha-bench: --causal needs --src-len equal to "
                        "--tgt-len");
        if (o->ncases >= BENCH_MAX_CASES)
            return fail(err, errlen, "mha-bench: too many cases");
        o->cases[o->ncases++] = custom;
    }
    if (o->targets && (have_custom || have_preset || have_dtype ||
                       o->ndevices || o->json_path || o->csv_path ||
                       o->compare_old))
        return fail(err, errlen,
                    "mha-bench: --targets runs its own cases on the CPU "
                    "and prints a table: it cannot be combined with "
                    "--device, --preset, a custom case, --dtype, --json, "
                    "--csv or --compare");
    if (o->backward && (o->targets || o->compare_old || o->json_path ||
                        o->csv_path))
        return fail(err, errlen,
                    "mha-bench: --backward prints its own table: it cannot "
                    "be combined with --targets, --compare, --json or "
                    "--csv");
    if (o->backward && !have_custom && !have_preset) {
        bench_case c = custom;
        snprintf(c.name, sizeof c.name, "train-e512-l2048");
        c.embed_dim = c.kdim = c.vdim = 512;
        c.heads = 8;
        c.tgt_len = c.src_len = 2048;
        o->cases[o->ncases++] = c;
    }
    if (!have_custom && !have_preset && !o->backward)
        bench_preset_add("quick", o->cases, &o->ncases, BENCH_MAX_CASES);
    for (int i = 0; self_attn && i < o->ncases; i++) {
        bench_case *c = &o->cases[i];
        c->self_attn = !c->decoder && c->src_len == c->tgt_len &&
                       c->kdim == c->embed_dim && c->vdim == c->embed_dim;
    }
    if (have_dtype)
        for (int i = 0; i < o->ncases; i++) {
            if (o->cases[i].decoder)
                continue; /* their cache dtype is part of the preset */
            o->cases[i].dtype = dtype;
            if (dtype == MHA_F16 &&
                strlen(o->cases[i].name) + 4 < sizeof o->cases[i].name)
                strcat(o->cases[i].name, "-f16");
        }
    return 0;
}
