/* test_bench.c: mha-bench's logic without timing anything: the argument
 * parser (good flags and every exit-2 path, as return codes), the FLOP and
 * byte formulas against hand-computed values, the output check's FAIL path
 * on a deliberately wrong output, the JSON and CSV writers read back,
 * --compare on two small reports, the case data and the OpenBLAS,
 * CLBlast and PyTorch peers against the scalar CPU reference, and the
 * reusable attention and STREAM objects of --targets' paired rounds. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "peers.h"
#include "targets.h"

/* ---- argument parser ----------------------------------------------------- */

static int parse(bench_options *o, char *err, const char *const *args)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "mha-bench";
    for (; *args; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    return bench_parse_args(argc, argv, o, err, BENCH_ERRLEN);
}

Test(args, defaults_are_quick_on_all_devices)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {NULL};
    cr_assert_eq(parse(&o, err, a), 0);
    cr_assert_eq(o.ndevices, 0);
    cr_assert_eq(o.ncases, 3);
    cr_assert_str_eq(o.cases[0].name, "quick-e256-l128");
    cr_assert_eq(o.warmup, 2);
    cr_assert_eq(o.repeat, 10);
    cr_assert_float_eq(o.min_time, 0.5, 1e-12);
    cr_assert_eq(o.peers, 1);
    cr_assert_eq(o.help, 0);
}

Test(args, backward_defaults_and_flops)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--backward", NULL};
    cr_assert_eq(parse(&o, err, a), 0, "%s", err);
    cr_assert_eq(o.backward, 1);
    cr_assert_eq(o.ncases, 1);
    cr_assert_eq(o.cases[0].embed_dim, 512);
    cr_assert_eq(o.cases[0].heads, 8);
    cr_assert_eq(o.cases[0].tgt_len, 2048);
    cr_assert_eq(o.cases[0].src_len, 2048);
    cr_assert_eq(o.cases[0].batch, 1);
    /* 3 x projections (4LE^2 + 4SE^2) + 3.5 x 4LSE at E512, L=S=2048 */
    double e = 512, l = 2048;
    cr_assert_float_eq(bench_backward_flops(&o.cases[0]),
                       3 * 8 * l * e * e + 3.5 * 4 * l * l * e, 1.0);
    const char *b[] = {"--backward", "--json", "x.json", NULL};
    cr_assert_eq(parse(&o, err, b), BENCH_EXIT_USAGE);
    cr_assert(strstr(err, "--backward"), "%s", err);
}

Test(args, good_flags)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--device", "cpu,vulkan:0", "--device", "best",
                       "--preset", "bert-base", "--threads", "2",
                       "--warmup", "0", "--repeat", "5", "--min-time", "0.25",
                       "--json", "x.json", "--csv", "x.csv", "--no-peers",
                       NULL};
    cr_assert_eq(parse(&o, err, a), 0, "%s", err);
    cr_assert_eq(o.ndevices, 3);
    cr_assert_str_eq(o.devices[0], "cpu");
    cr_assert_str_eq(o.devices[1], "vulkan:0");
    cr_assert_str_eq(o.devices[2], "best");
    cr_assert_eq(o.ncases, 2);
    cr_assert_eq(o.cases[1].tgt_len, 512);
    cr_assert_eq(o.threads, 2);
    cr_assert_eq(o.warmup, 0);
    cr_assert_eq(o.repeat, 5);
    cr_assert_float_eq(o.min_time, 0.25, 1e-12);
    cr_assert_str_eq(o.json_path, "x.json");
    cr_assert_str_eq(o.csv_path, "x.csv");
    cr_assert_eq(o.peers, 0);
}

Test(args, custom_case_and_dtype)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--embed-dim", "64", "--heads", "4", "--batch", "2",
                       "--tgt-len", "9", "--kdim", "16", "--vdim", "24",
                       "--dtype", "f16", NULL};
    cr_assert_eq(parse(&o, err, a), 0, "%s", err);
    cr_assert_eq(o.ncases, 1);
    bench_case *c = &o.cases[0];
    cr_assert_eq(c->embed_dim, 64);
    cr_assert_eq(c->heads, 4);
    cr_assert_eq(c->batch, 2);
    cr_assert_eq(c->tgt_len, 9);
    cr_assert_eq(c->src_len, 9, "src_len defaults to tgt_len");
    cr_assert_eq(c->kdim, 16);
    cr_assert_eq(c->vdim, 24);
    cr_assert_eq(c->dtype, MHA_F16);
    cr_assert_eq(c->causal, 0);
}

Test(args, every_preset_and_all)
{
    for (int i = 0; bench_preset_names[i]; i++) {
        bench_options o;
        char err[BENCH_ERRLEN];
        const char *a[] = {"--preset", bench_preset_names[i], NULL};
        cr_assert_eq(parse(&o, err, a), 0, "%s: %s", bench_preset_names[i],
                     err);
        cr_assert_gt(o.ncases, 0);
        for (int j = 0; j < o.ncases; j++)
            cr_assert_eq(o.cases[j].embed_dim % o.cases[j].heads, 0);
    }
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--preset", "all", NULL};
    cr_assert_eq(parse(&o, err, a), 0);
    cr_assert_eq(o.ncases, 17, "every preset case but quick's");
}

/* llama3-8b-decode: 3 cache lengths x f32/f16 cache of Llama 3 8B's
 * attention (32 query heads, 8 kv heads of 128), one token a step. */
Test(args, decoder_presets)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--preset", "llama3-8b-decode", NULL};
    cr_assert_eq(parse(&o, err, a), 0, "%s", err);
    cr_assert_eq(o.ncases, 6);
    int f16 = 0;
    for (int j = 0; j < o.ncases; j++) {
        const bench_case *c = &o.cases[j];
        cr_expect(c->decoder && c->heads == 32 && c->kv_heads == 8 &&
                  c->head_dim == 128 && c->tgt_len == 1, "%s", c->name);
        f16 += c->cache_dtype == MHA_F16;
    }
    cr_expect_eq(f16, 3);
    cr_expect_eq(o.cases[4].src_len, 16384);
    /* K+V of 16k tokens, 8 heads of 128, f32: 128 MiB */
    cr_expect_eq(bench_decoder_kv_bytes(&o.cases[4]), 128.0 * 1024 * 1024);
    const char *w[] = {"--preset", "mistral-7b-window", NULL};
    cr_assert_eq(parse(&o, err, w), 0, "%s", err);
    cr_expect_eq(bench_decoder_keys(&o.cases[0]), 4096.0,
                 "the window bounds the keys read");
}

/* --targets' paired rounds reuse one attention run and one STREAM array
 * across timings: each object times again and again, and a case whose
 * caches cannot be allocated is refused, its partial run freed. */
Test(paired, attention_and_stream_time_again_and_again)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--preset", "llama3-8b-decode", NULL};
    cr_assert_eq(parse(&o, err, a), 0, "%s", err);
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    bench_attention *att;
    cr_assert_eq(bench_attention_open(ctx, &o.cases[1], 2, 1, &att), 0);
    o.warmup = 1, o.repeat = 2, o.min_time = 0;
    for (int round = 0; round < 2; round++) {
        bench_result r;
        memset(&r, 0, sizeof r);
        cr_assert_eq(bench_attention_time(att, &o, &r), 0);
        cr_expect(r.runs >= 2 && r.median_ms > 0, "round %d", round);
    }
    bench_attention_close(att);
    bench_case bad = o.cases[1];
    bad.src_len = (int64_t)1 << 40; /* 4 PiB of cache: malloc refuses */
    cr_expect_neq(bench_attention_open(ctx, &bad, 1, 1, &att), 0);
    cr_expect_null(att);
    mha_context_destroy(ctx);
    for (int copy = 0; copy < 2; copy++) {
        bench_stream *s = bench_stream_open(copy);
        cr_assert_not_null(s);
        cr_expect_gt(bench_stream_gbs(s, 1, 1), 0);
        cr_expect_gt(bench_stream_gbs(s, 2, 2), 0);
        bench_stream_close(s);
    }
}

Test(args, help_and_compare)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *h[] = {"--help", NULL};
    cr_assert_eq(parse(&o, err, h), 0);
    cr_assert_eq(o.help, 1);
    const char *c[] = {"--compare", "a.json", "b.json", NULL};
    cr_assert_eq(parse(&o, err, c), 0);
    cr_assert_str_eq(o.compare_old, "a.json");
    cr_assert_str_eq(o.compare_new, "b.json");
    const char *t[] = {"--targets", "--threads", "1", NULL};
    cr_assert_eq(parse(&o, err, t), 0, "%s", err);
    cr_assert_eq(o.targets, 1);
    cr_assert_eq(o.threads, 1);
}

typedef struct bad_args {
    const char *args[6];
    const char *expect; /* in the message */
} bad_args;

Test(args, bad_flags_return_2_with_a_message)
{
    static const bad_args bad[] = {
        {{"--frobnicate"}, "--frobnicate"},
        {{"--repeat"}, "needs a value"},
        {{"--repeat", "0"}, "--repeat '0'"},
        {{"--repeat", "12x"}, "--repeat '12x'"},
        {{"--threads", "-1"}, "--threads"},
        {{"--warmup", ""}, "--warmup"},
        {{"--min-time", "-1"}, "--min-time"},
        {{"--min-time", "soon"}, "--min-time"},
        {{"--device", "gpu"}, "--device 'gpu'"},
        {{"--device", "vulkan:x"}, "vulkan:x"},
        {{"--device", "cpu,,nope"}, "nope"},
        {{"--preset", "gpt5"}, "--preset 'gpt5'"},
        {{"--dtype", "f64"}, "--dtype 'f64'"},
        {{"--embed-dim", "10", "--heads", "3"}, "does not divide"},
        {{"--causal", "--tgt-len", "4", "--src-len", "8"}, "--causal"},
        {{"--compare", "old.json"}, "--compare"},
        {{"--embed-dim", "0"}, "--embed-dim"},
        {{"--targets", "--device", "cpu"}, "--targets"},
        {{"--targets", "--json", "t.json"}, "--targets"},
        {{"--preset", "bert-base", "--targets"}, "--targets"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bench_options o;
        char err[BENCH_ERRLEN];
        cr_assert_eq(parse(&o, err, bad[i].args), BENCH_EXIT_USAGE,
                     "case %zu (%s)", i, bad[i].args[0]);
        cr_assert(strstr(err, bad[i].expect), "case %zu: '%s' lacks '%s'", i,
                  err, bad[i].expect);
    }
}

/* ---- formulas ------------------------------------------------------------ */

static bench_case mk(int64_t e, int64_t h, int64_t b, int64_t l, int64_t s,
                     int64_t k, int64_t v, mha_dtype dt)
{
    bench_case c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "t");
    c.embed_dim = e;
    c.heads = h;
    c.batch = b;
    c.tgt_len = l;
    c.src_len = s;
    c.kdim = k;
    c.vdim = v;
    c.dtype = dt;
    return c;
}

Test(formulas, flops_hand_computed)
{
    /* E256 L=S=128: five terms of 2*128*256*256 = 16777216 each. */
    bench_case a = mk(256, 4, 1, 128, 128, 256, 256, MHA_F32);
    cr_assert_float_eq(bench_flops(&a), 83886080.0, 0.5);
    /* Decode E512 L1 S256: 524288 * 3 + 2 * 134217728. */
    bench_case b = mk(512, 8, 1, 1, 256, 512, 512, MHA_F32);
    cr_assert_float_eq(bench_flops(&b), 270008320.0, 0.5);
    /* E8 B3 L2 S5 kdim4 vdim6: 3 * (256 + 320 + 480 + 320 + 256). */
    bench_case c = mk(8, 2, 3, 2, 5, 4, 6, MHA_F32);
    cr_assert_float_eq(bench_flops(&c), 4896.0, 0.5);
}

Test(formulas, bytes_hand_computed)
{
    /* inputs 4*3*(16+20+30) = 792, output 4*3*16 = 192,
     * weights (128+32+48+32) = 240 elements. */
    bench_case c = mk(8, 2, 3, 2, 5, 4, 6, MHA_F32);
    cr_assert_float_eq(bench_bytes(&c), 792.0 + 192.0 + 960.0, 0.5);
    c.dtype = MHA_F16;
    cr_assert_float_eq(bench_bytes(&c), 792.0 + 192.0 + 480.0, 0.5);
}

Test(formulas, stats_median_and_p95)
{
    double t[] = {5, 1, 4, 2, 3};
    double med, p95;
    bench_stats(t, 5, &med, &p95);
    cr_assert_float_eq(med, 3.0, 1e-12);
    cr_assert_float_eq(p95, 5.0, 1e-12);
    double u[20];
    for (int i = 0; i < 20; i++)
        u[i] = 20 - i; /* 1..20 */
    bench_stats(u, 20, &med, &p95);
    cr_assert_float_eq(med, 10.5, 1e-12);
    cr_assert_float_eq(p95, 19.0, 1e-12, "nearest rank: ceil(0.95*20) = 19");
}

/* ---- the output check and its FAIL path --------------------------------- */

Test(check, exact_output_passes)
{
    float ref[4] = {0.5f, -2.0f, 3.0f, 0.0f};
    bench_check r = bench_compare_output(ref, ref, 4, MHA_F32);
    cr_assert(r.pass);
    cr_assert_float_eq(r.max_abs, 0.0, 0.0);
    cr_assert_float_eq(r.tol, 3e-4, 1e-12, "1e-4 * max|ref|");
}

Test(check, wrong_output_fails)
{
    float ref[4] = {0.5f, -2.0f, 3.0f, 0.0f};
    float out[4] = {0.5f, -2.0f, 3.001f, 0.0f};
    bench_check r = bench_compare_output(out, ref, 4, MHA_F32);
    cr_assert_not(r.pass, "an error of 1e-3 > 3e-4 must fail");
    cr_assert_float_eq(r.max_abs, 1e-3, 1e-6);
    cr_assert_float_eq(r.max_rel, 1e-3 / 3.0, 1e-6);
    /* fp16's tolerance (1e-2 * 3) takes it. */
    cr_assert(bench_compare_output(out, ref, 4, MHA_F16).pass);
    /* small outputs: the tolerance floor is 1e-4 absolute */
    float r2[2] = {0.01f, 0.02f}, o2[2] = {0.01f, 0.02015f};
    cr_assert_not(bench_compare_output(o2, r2, 2, MHA_F32).pass);
}

Test(check, nan_fails)
{
    float ref[2] = {1.0f, 2.0f};
    float out[2] = {1.0f, NAN};
    bench_check r = bench_compare_output(out, ref, 2, MHA_F16);
    cr_assert_not(r.pass);
    cr_assert(isinf(r.max_abs));
}

/* ---- writers --------------------------------------------------------------- */

static void tmp_path(char *buf, size_t n, const char *suffix)
{
    snprintf(buf, n, "/tmp/test_bench_%ld_%s", (long)getpid(), suffix);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void sample_report(bench_report *rep, bench_result *res,
                          bench_device_desc *dev)
{
    memset(rep, 0, sizeof *rep);
    memset(res, 0, 3 * sizeof *res);
    memset(dev, 0, sizeof *dev);
    bench_machine_info(rep);
    rep->threads = 2;
    snprintf(dev->spec, sizeof dev->spec, "cpu:0");
    snprintf(dev->info.backend, sizeof dev->info.backend, "cpu");
    snprintf(dev->info.name, sizeof dev->info.name, "Some CPU, 2 cores");
    rep->devices = dev;
    rep->ndevices = 1;
    for (int i = 0; i < 3; i++) {
        res[i].c = mk(256, 4, 1, 128, 128, 256, 256, MHA_F32);
        snprintf(res[i].c.name, sizeof res[i].c.name, "case%d", i);
        snprintf(res[i].device, sizeof res[i].device, "cpu:0");
        snprintf(res[i].device_name, sizeof res[i].device_name,
                 "Some CPU, 2 cores");
        snprintf(res[i].backend, sizeof res[i].backend, "cpu");
        snprintf(res[i].status, sizeof res[i].status, "ok");
        res[i].runs = 10;
        res[i].median_ms = 1.0 + i;
        res[i].p95_ms = 2.0 + i;
        res[i].first_ms = 3.0;
        res[i].gflops = bench_flops(&res[i].c) / (res[i].median_ms * 1e6);
        res[i].checked = 1;
        res[i].max_abs = 1e-7;
        res[i].tol = 1e-4;
        res[i].device_mem_mib = -1;
    }
    snprintf(res[2].status, sizeof res[2].status, "FAIL");
    res[2].max_abs = 1.0;
    rep->results = res;
    rep->nresults = 3;
}

Test(writers, json_round_trip)
{
    bench_report rep;
    bench_result res[3];
    bench_device_desc dev;
    sample_report(&rep, res, &dev);
    char path[256];
    tmp_path(path, sizeof path, "r.json");
    cr_assert_eq(bench_write_json(path, &rep), 0);
    cJSON *j = cJSON_Parse(slurp(path));
    unlink(path);
    cr_assert_not_null(j);
    cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "libmha_version")),
                     mha_version());
    cJSON *m = cJSON_GetObjectItem(j, "machine");
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(m, "cpu_model")));
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(m, "cores")));
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(m, "uname")));
    cJSON *devs = cJSON_GetObjectItem(j, "devices");
    cr_assert_eq(cJSON_GetArraySize(devs), 1);
    cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(
                         cJSON_GetArrayItem(devs, 0), "name")),
                     "Some CPU, 2 cores");
    cJSON *r = cJSON_GetObjectItem(j, "results");
    cr_assert_eq(cJSON_GetArraySize(r), 3);
    cJSON *r1 = cJSON_GetArrayItem(r, 1);
    cr_assert_float_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(r1, "median_ms")),
                       2.0, 1e-12);
    cr_assert_float_eq(
        cJSON_GetNumberValue(cJSON_GetObjectItem(
            cJSON_GetObjectItem(r1, "case"), "flops")),
        83886080.0, 0.5);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(r1, "device_mem_mib")));
    cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(
                         cJSON_GetArrayItem(r, 2), "status")),
                     "FAIL");
    cJSON_Delete(j);
}

/* Commas outside double quotes, plus one. */
static int csv_columns(const char *line)
{
    int n = 1, quoted = 0;
    for (; *line && *line != '\n'; line++) {
        if (*line == '"')
            quoted = !quoted;
        else if (*line == ',' && !quoted)
            n++;
    }
    return n;
}

Test(writers, csv_columns_match_header)
{
    bench_report rep;
    bench_result res[3];
    bench_device_desc dev;
    sample_report(&rep, res, &dev);
    char path[256];
    tmp_path(path, sizeof path, "r.csv");
    cr_assert_eq(bench_write_csv(path, &rep), 0);
    char *text = slurp(path);
    unlink(path);
    int lines = 0, cols = csv_columns(text);
    cr_assert_eq(cols, 30);
    for (char *p = text; *p; p = strchr(p, '\n') + 1) {
        cr_assert_eq(csv_columns(p), cols, "line %d: %.60s", lines, p);
        lines++;
        if (!strchr(p, '\n'))
            break;
    }
    cr_assert_eq(lines, 4, "header + 3 rows");
    cr_assert(strstr(text, ",FAIL,"));
}

Test(writers, table_marks_fail)
{
    bench_report rep;
    bench_result res[3];
    bench_device_desc dev;
    sample_report(&rep, res, &dev);
    char path[256];
    tmp_path(path, sizeof path, "t.txt");
    FILE *f = fopen(path, "w");
    bench_print_table(f, &rep);
    fclose(f);
    char *text = slurp(path);
    unlink(path);
    cr_assert(strstr(text, "median_ms"));
    char *fail_line = strstr(text, "case2");
    cr_assert_not_null(fail_line);
    cr_assert(strstr(fail_line, "FAIL"));
}

/* ---- --compare ---------------------------------------------------------------- */

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

Test(compare, speedup_per_case_and_device)
{
    char a[256], b[256], o[256];
    tmp_path(a, sizeof a, "old.json");
    tmp_path(b, sizeof b, "new.json");
    tmp_path(o, sizeof o, "cmp.txt");
    write_file(a, "{\"results\":["
                  "{\"case\":{\"name\":\"x\"},\"device\":\"cpu:0\",\"median_ms\":4},"
                  "{\"case\":{\"name\":\"x\"},\"device\":\"vulkan:0\",\"median_ms\":9},"
                  "{\"case\":{\"name\":\"gone\"},\"device\":\"cpu:0\",\"median_ms\":1}]}");
    write_file(b, "{\"results\":["
                  "{\"case\":{\"name\":\"x\"},\"device\":\"cpu:0\",\"median_ms\":2},"
                  "{\"case\":{\"name\":\"x\"},\"device\":\"vulkan:0\",\"median_ms\":18},"
                  "{\"case\":{\"name\":\"new\"},\"device\":\"cpu:0\",\"median_ms\":1}]}");
    FILE *f = fopen(o, "w");
    char err[BENCH_ERRLEN] = "";
    cr_assert_eq(bench_compare_files(a, b, f, err, sizeof err), 0, "%s", err);
    fclose(f);
    char *text = slurp(o);
    char *cpu = strstr(text, "cpu:0");
    cr_assert_not_null(cpu);
    cr_assert(strstr(cpu, "2.00x"), "%s", text);
    char *vk = strstr(text, "vulkan:0");
    cr_assert_not_null(vk);
    cr_assert(strstr(vk, "0.50x"), "%s", text);
    cr_assert_null(strstr(text, "gone"));
    cr_assert_null(strstr(text, "new "));
    unlink(a);
    unlink(b);
    unlink(o);
}

Test(compare, bad_files_return_2)
{
    char a[256], b[256];
    tmp_path(a, sizeof a, "bad.json");
    tmp_path(b, sizeof b, "missing.json");
    write_file(a, "{\"not\": \"a report\"}");
    char err[BENCH_ERRLEN] = "";
    cr_assert_eq(bench_compare_files(a, a, stdout, err, sizeof err),
                 BENCH_EXIT_USAGE);
    cr_assert(strstr(err, "results"), "%s", err);
    cr_assert_eq(bench_compare_files(b, a, stdout, err, sizeof err),
                 BENCH_EXIT_USAGE);
    cr_assert(strstr(err, "cannot open"), "%s", err);
    unlink(a);
}

/* ---- case data, the reference and the OpenBLAS peer ------------------------- */

/* The path mha-bench takes for one case: the scalar CPU reference, checked
 * against the default CPU kernels and (when built) the OpenBLAS peer; a
 * perturbed copy must be flagged. */
Test(peers, reference_openblas_and_a_wrong_output)
{
    bench_case c = mk(32, 4, 2, 5, 7, 12, 20, MHA_F32);
    bench_case_data d;
    cr_assert_eq(bench_case_data_make(&c, &d), 0);
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    mha_device_options so;
    mha_device_options_init(&so);
    so.cpu_isa = "scalar";
    mha_device *ref_dev, *cpu;
    cr_assert_eq(mha_device_open(ctx, "cpu", &so, &ref_dev), MHA_OK);
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &cpu), MHA_OK);
    cr_assert_eq(bench_forward_host(ref_dev, &c, MHA_F32, &d, d.ref), MHA_OK,
                 "%s", mha_context_errmsg(ctx));
    float *out = calloc(d.nq, sizeof(float));
    cr_assert_eq(bench_forward_host(cpu, &c, MHA_F32, &d, out), MHA_OK);
    bench_check k = bench_compare_output(out, d.ref, d.nq, MHA_F32);
    cr_assert(k.pass, "cpu vs scalar: %g > %g", k.max_abs, k.tol);
    /* a wrong result is flagged */
    memcpy(out, d.ref, d.nq * sizeof(float));
    out[3] += 0.01f;
    cr_assert_not(bench_compare_output(out, d.ref, d.nq, MHA_F32).pass);
    if (bench_openblas_forward(&c, &d, out) == 0) {
        k = bench_compare_output(out, d.ref, d.nq, MHA_F32);
        cr_assert(k.pass, "openblas vs scalar: %g > %g", k.max_abs, k.tol);
        c.causal = 1; /* L 5 != S 7 still defines j > i as masked */
        bench_case_data d2;
        cr_assert_eq(bench_case_data_make(&c, &d2), 0);
        cr_assert_eq(bench_forward_host(ref_dev, &c, MHA_F32, &d2, d2.ref),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
        cr_assert_eq(bench_openblas_forward(&c, &d2, out), 0);
        k = bench_compare_output(out, d2.ref, d2.nq, MHA_F32);
        cr_assert(k.pass, "causal openblas vs scalar: %g > %g", k.max_abs,
                  k.tol);
        bench_case_data_free(&d2);
    }
    free(out);
    bench_case_data_free(&d);
    mha_device_destroy(cpu);
    mha_device_destroy(ref_dev);
    mha_context_destroy(ctx);
}

/* The CLBlast peer on the first OpenCL device libmha finds, against the
 * scalar reference, plain and causal (L != S, batch 2); skipped when the
 * peer is not built or there is no OpenCL device. */
Test(peers, clblast_matches_reference, .timeout = 120)
{
    if (!bench_clblast_built())
        cr_skip_test("CLBlast peer not built (no clblast at configure time)");
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    int n = 0;
    mha_device_info inf, cl;
    int found = 0;
    cr_assert_eq(mha_device_count(ctx, &n), MHA_OK);
    for (int i = 0; i < n && !found; i++) {
        cr_assert_eq(mha_device_get_info(ctx, i, &inf), MHA_OK);
        if (!strcmp(inf.backend, "opencl")) {
            cl = inf;
            found = 1;
        }
    }
    if (!found) {
        mha_context_destroy(ctx);
        cr_skip_test("no OpenCL device");
    }
    mha_device_options so;
    mha_device_options_init(&so);
    so.cpu_isa = "scalar";
    mha_device *ref_dev;
    cr_assert_eq(mha_device_open(ctx, "cpu", &so, &ref_dev), MHA_OK);
    for (int causal = 0; causal < 2; causal++) {
        bench_case c = mk(32, 4, 2, 5, 7, 12, 20, MHA_F32);
        c.causal = causal;
        bench_case_data d;
        cr_assert_eq(bench_case_data_make(&c, &d), 0);
        cr_assert_eq(bench_forward_host(ref_dev, &c, MHA_F32, &d, d.ref),
                     MHA_OK, "%s", mha_context_errmsg(ctx));
        float *out = calloc(d.nq, sizeof(float));
        char err[128] = "";
        cr_assert_eq(bench_clblast_forward(cl.name, &c, &d, out, err,
                                           sizeof err),
                     0, "CLBlast on %s: %s", cl.name, err);
        bench_check k = bench_compare_output(out, d.ref, d.nq, MHA_F32);
        cr_assert(k.pass, "clblast (causal %d) vs scalar: %g > %g", causal,
                  k.max_abs, k.tol);
        free(out);
        bench_case_data_free(&d);
    }
    bench_clblast_release();
    mha_device_destroy(ref_dev);
    mha_context_destroy(ctx);
}

/* The PyTorch peer runs on the case's own inputs and weights (written to a
 * temporary directory) and its output is checked against the scalar
 * reference; kdim and vdim differ from E so the separate q/k/v projection
 * weights are used. Skipped when /usr/bin/python3 cannot import torch. */
Test(peers, torch_checked_against_reference, .timeout = 120)
{
    bench_options o;
    char err[BENCH_ERRLEN];
    const char *a[] = {"--embed-dim", "32", "--heads", "4", "--batch", "2",
                       "--tgt-len", "5", "--src-len", "7", "--kdim", "12",
                       "--vdim", "20", "--warmup", "0", "--repeat", "1",
                       "--min-time", "0", "--threads", "1", NULL};
    cr_assert_eq(parse(&o, err, a), 0, "%s", err);
    cr_assert_eq(o.ncases, 1);
    bench_peers p;
    bench_peers_init(&p, &o);
    if (!p.have_torch)
        cr_skip_test("no PyTorch peer: %s", p.torch_note);
    bench_case_data d;
    cr_assert_eq(bench_case_data_make(&o.cases[0], &d), 0);
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    mha_device_options so;
    mha_device_options_init(&so);
    so.cpu_isa = "scalar";
    mha_device *ref_dev;
    cr_assert_eq(mha_device_open(ctx, "cpu", &so, &ref_dev), MHA_OK);
    cr_assert_eq(bench_forward_host(ref_dev, &o.cases[0], MHA_F32, &d, d.ref),
                 MHA_OK, "%s", mha_context_errmsg(ctx));
    bench_result r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(bench_peer_run(&p, 1, &o, 0, &d, &r), 1);
    cr_assert(r.checked, "torch row not checked: %s %s", r.status, r.note);
    cr_assert_str_eq(r.status, "ok", "torch vs scalar: %g > %g (%s)",
                     r.max_abs, r.tol, r.note);
    bench_peers_notes(&p, stderr);
    bench_case_data_free(&d);
    mha_device_destroy(ref_dev);
    mha_context_destroy(ctx);
}
