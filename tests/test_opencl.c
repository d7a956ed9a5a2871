/* test_opencl.c: the OpenCL backend's own suite (the generic op and fixture
 * suites cover its numbers): a device is found and described (a failure,
 * not a skip, when MHA_REQUIRE_OPENCL=1), forwards agree with the CPU
 * backend (also under MHA_OPENCL_LIMITS caps and in fp16), the program
 * binary cache starts cold then warm and rebuilds corrupt entries, a failed
 * kernel build puts its log in the error message, the allocation limit is
 * named, several contexts work at once, and no ICD platform means no
 * devices. Criterion runs each test in its own process, so setenv in a test
 * does not leak into the next. */
#define _XOPEN_SOURCE 700 /* mkdtemp, setenv, truncate, clock_gettime */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mha.h"

/* ---- helpers ------------------------------------------------------------ */

/* Log lines captured from a context (INFO and up). */
typedef struct log_buf {
    char text[1 << 16];
    size_t len;
} log_buf;

static void capture(void *user, mha_log_level level, const char *msg)
{
    log_buf *b = user;
    (void)level;
    int n = snprintf(b->text + b->len, sizeof b->text - b->len, "%s\n", msg);
    if (n > 0 && b->len + (size_t)n < sizeof b->text)
        b->len += (size_t)n;
}

static mha_context *new_context(log_buf *log)
{
    mha_context_options o;
    mha_context_options_init(&o);
    if (log) {
        log->len = 0;
        log->text[0] = '\0';
        o.log = capture;
        o.log_user = log;
        o.log_level = MHA_LOG_INFO;
    }
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    return ctx;
}

/* Index of the best OpenCL device in ctx's list, or -1: then the test is
 * skipped, or fails when MHA_REQUIRE_OPENCL=1 (CI proves OpenCL ran). */
static int find_opencl(mha_context *ctx, mha_device_info *info)
{
    int n = 0;
    cr_assert_eq(mha_device_count(ctx, &n), MHA_OK);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(mha_device_get_info(ctx, i, info), MHA_OK);
        if (strcmp(info->backend, "opencl") == 0)
            return i;
    }
    const char *req = getenv("MHA_REQUIRE_OPENCL");
    if (req && strcmp(req, "1") == 0)
        cr_assert_fail("MHA_REQUIRE_OPENCL=1 but no OpenCL device was found");
    cr_skip_test("no OpenCL device");
    return -1;
}

static mha_device *open_index(mha_context *ctx, int index, const char *cache)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = cache;
    mha_device *dev = NULL;
    mha_status st = mha_device_open_index(ctx, index, &o, &dev);
    cr_assert_eq(st, MHA_OK, "open: %s", mha_context_errmsg(ctx));
    return dev;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / 16777216.0f) * 2.0f - 1.0f;
}

/* A small layer with fixed pseudo-random weights. */
enum { E = 32, H = 4, L = 7, S = 9, N = 2 };

static mha_layer *make_layer(mha_device *dev, mha_dtype dtype)
{
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    c.add_bias_kv = 1;
    c.dtype = dtype;
    mha_layer *layer = NULL;
    cr_assert_eq(mha_layer_create(dev, &c, &layer), MHA_OK);
    static float w[3 * E * E];
    unsigned seed = 7;
    struct { const char *name; int ndim; int64_t shape[3]; } ws[] = {
        {"in_proj_weight", 2, {3 * E, E}}, {"in_proj_bias", 1, {3 * E}},
        {"out_proj.weight", 2, {E, E}},    {"out_proj.bias", 1, {E}},
        {"bias_k", 3, {1, 1, E}},          {"bias_v", 3, {1, 1, E}}};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
        for (size_t k = 0; k < sizeof w / sizeof w[0]; k++)
            w[k] = frand(&seed) * 0.3f;
        cr_assert_eq(mha_layer_set_weight(layer, ws[i].name, w, ws[i].ndim,
                                          ws[i].shape),
                     MHA_OK);
    }
    return layer;
}

/* One forward with a key padding mask and causal attention; need_weights
 * chooses the unfused path (weights too) or the fused kernel. */
static void forward(mha_layer *layer, int need_weights, float *out,
                    float *weights)
{
    static float q[L * N * E], k[S * N * E], v[S * N * E];
    static uint8_t kpm[N * S];
    unsigned seed = 11;
    for (int i = 0; i < L * N * E; i++)
        q[i] = frand(&seed);
    for (int i = 0; i < S * N * E; i++) {
        k[i] = frand(&seed);
        v[i] = frand(&seed);
    }
    for (int i = 0; i < N * S; i++)
        kpm[i] = (i % 4) == 3;
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = (mha_host_array){q, MHA_F32, 3, {L, N, E}};
    a.key = (mha_host_array){k, MHA_F32, 3, {S, N, E}};
    a.value = (mha_host_array){v, MHA_F32, 3, {S, N, E}};
    a.key_padding_mask = (mha_host_array){kpm, MHA_BOOL, 2, {N, S}};
    a.is_causal = 1;
    a.need_weights = need_weights;
    a.output = out;
    a.output_count = L * N * E;
    a.weights = weights;
    a.weights_count = weights ? N * L * (S + 1) : 0;
    mha_status st = mha_layer_forward_host(layer, &a);
    cr_assert_eq(st, MHA_OK, "forward failed (%s)", mha_status_str(st));
}

static double max_diff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* Runs the same forwards on the CPU backend and on OpenCL device index
 * cl, and asserts they agree to tol. */
static void compare_with_cpu(mha_context *ctx, int cl, mha_dtype dtype,
                             double tol)
{
    static float ref[L * N * E], out[L * N * E];
    static float wref[N * L * (S + 1)], w[N * L * (S + 1)];
    mha_device *cpu = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &cpu), MHA_OK);
    mha_device *dev = open_index(ctx, cl, NULL);
    mha_layer *lc = make_layer(cpu, MHA_F32), *lo = make_layer(dev, dtype);
    for (int need = 0; need <= 1; need++) {
        forward(lc, need, ref, need ? wref : NULL);
        forward(lo, need, out, need ? w : NULL);
        double d = max_diff(ref, out, L * N * E);
        cr_expect_leq(d, tol, "need_weights %d: output differs by %g", need,
                      d);
        if (need) {
            d = max_diff(wref, w, N * L * (S + 1));
            cr_expect_leq(d, tol, "weights differ by %g", d);
        }
    }
    mha_layer_destroy(lo);
    mha_layer_destroy(lc);
    mha_device_destroy(dev);
    mha_device_destroy(cpu);
}

/* ---- cache-directory helpers -------------------------------------------- */

static void make_temp_dir(char *path, size_t cap)
{
    const char *base = getenv("MHA_TEST_TMPDIR");
    snprintf(path, cap, "%s/mha-opencl-XXXXXX", base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(path));
}

/* Calls fn on every cache entry in dir; returns how many there are. */
static int for_each_entry(const char *dir, void (*fn)(const char *path))
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "opencl-", 7) != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (fn)
            fn(path);
        n++;
    }
    closedir(d);
    return n;
}

static int remove_one(const char *path, const struct stat *sb, int flag,
                      struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* rm -r dir (the cache entries and PoCL's cache under it). */
static void remove_tree(const char *dir)
{
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Opens the device with the cache and runs both forward paths (so every
 * program is built); returns the milliseconds it took. */
static double cached_start(const char *cache, log_buf *log)
{
    double t0 = now_ms();
    mha_context *ctx = new_context(log);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    mha_device *dev = open_index(ctx, cl, cache);
    mha_layer *layer = make_layer(dev, MHA_F32);
    static float out[L * N * E], w[N * L * (S + 1)];
    forward(layer, 0, out, NULL);
    forward(layer, 1, out, w);
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    return now_ms() - t0;
}

/* ---- tests -------------------------------------------------------------- */

Test(opencl, device_found_and_described)
{
    mha_context *ctx = new_context(NULL);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    cr_log_info("opencl device %d: %s / %s / driver %s; %s; %u CUs, "
                "%llu MiB, max buffer %llu MiB, workgroup %u, local %u B, "
                "features 0x%x",
                cl, info.vendor, info.name, info.driver, info.details,
                info.compute_units,
                (unsigned long long)(info.memory_bytes >> 20),
                (unsigned long long)(info.max_buffer_bytes >> 20),
                info.max_workgroup_size, info.shared_memory_bytes,
                info.features);
    cr_expect_neq(info.name[0], '\0');
    cr_expect_neq(info.vendor[0], '\0');
    cr_expect_gt(info.max_workgroup_size, 0);
    cr_expect_gt(info.shared_memory_bytes, 0);
    cr_expect_gt(info.max_buffer_bytes, 0);
    cr_expect_gt(info.compute_units, 0);
    cr_expect_not_null(strstr(info.details, "OpenCL C"));
    cr_expect(info.features & MHA_FEATURE_FUSED_ATTENTION);
    /* An OpenCL CPU device (PoCL) is a software implementation. */
    if (strncmp(info.details, "CPU;", 4) == 0)
        cr_expect_eq(info.kind, MHA_DEVICE_SOFTWARE);
    mha_context_destroy(ctx);
}

Test(opencl, forward_matches_cpu)
{
    mha_context *ctx = new_context(NULL);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    compare_with_cpu(ctx, cl, MHA_F32, 1e-4);
    mha_context_destroy(ctx);
}

Test(opencl, forward_fp16_storage_matches_cpu)
{
    mha_context *ctx = new_context(NULL);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    if (!(info.features & MHA_FEATURE_FP16_STORAGE))
        cr_skip_test("device has no fp16 storage");
    compare_with_cpu(ctx, cl, MHA_F16, 1e-2);
    mha_context_destroy(ctx);
}

/* Runs the forwards under MHA_OPENCL_LIMITS=limits and checks the kernels
 * were specialised as expected (the log line of mha_device_open). */
static void forward_under_limits(const char *limits, const char *variant,
                                 uint32_t max_wg)
{
    setenv("MHA_OPENCL_LIMITS", limits, 1);
    log_buf *log = calloc(1, sizeof *log);
    mha_context *ctx = new_context(log);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    cr_expect_leq(info.max_workgroup_size, max_wg);
    compare_with_cpu(ctx, cl, MHA_F32, 1e-4);
    cr_expect_not_null(strstr(log->text, variant), "expected \"%s\" in: %s",
                       variant, log->text);
    mha_context_destroy(ctx);
    free(log);
}

/* The variants a mobile GPU would get (16 KiB local memory, 128-item
 * groups, no fp16), on whatever device: PoCL then runs GPU-shaped kernels. */
Test(opencl, limits_env_gives_mobile_gpu_variant)
{
    forward_under_limits("local=16384,workgroup=128,fp16=0",
                         "gemm tile 8, wpt 8, bk 16, row workgroup 128", 128);
    mha_context *ctx = new_context(NULL);
    mha_device_info info;
    find_opencl(ctx, &info);
    cr_expect_leq(info.shared_memory_bytes, 16384);
    cr_expect_eq(info.features & MHA_FEATURE_FP16_STORAGE, 0);
    mha_context_destroy(ctx);
}

/* A cap that lowers nothing still selects the GPU tuning: the desktop GPU
 * variant (16 x 16 gemm groups of 8 x 8, 256-wide rows) runs on PoCL too. */
Test(opencl, limits_env_gives_desktop_gpu_variant)
{
    forward_under_limits("workgroup=1024",
                         "gemm tile 16, wpt 8, bk 32, row workgroup 256", 1024);
}

Test(opencl, binary_cache_cold_then_warm)
{
    char dir[512], pocl[600];
    make_temp_dir(dir, sizeof dir);
    /* PoCL keeps its own kernel cache; point it at an empty directory so
     * "cold" means a real compile (PoCL reads this at its first call). */
    snprintf(pocl, sizeof pocl, "%s/pocl", dir);
    setenv("POCL_CACHE_DIR", pocl, 1);
    log_buf *log = calloc(1, sizeof *log);
    double cold = cached_start(dir, log);
    cr_expect_not_null(strstr(log->text, "built from source"), "%s",
                       log->text);
    cr_expect_null(strstr(log->text, "loaded from cache"), "%s", log->text);
    int entries = for_each_entry(dir, NULL);
    cr_expect_geq(entries, 2, "%d cache entries", entries);

    double warm = cached_start(dir, log);
    cr_expect_not_null(strstr(log->text, "loaded from cache"), "%s",
                       log->text);
    cr_expect_null(strstr(log->text, "built from source"), "%s", log->text);
    cr_log_info("opencl start with %d programs: cold %.1f ms, warm %.1f ms",
                entries, cold, warm);
    remove_tree(dir);
    free(log);
}

/* A cold build of the programs a layer uses (gemm, attention, the ops)
 * prints nothing: PoCL's compiler writes its diagnostics ("5 warnings
 * generated.") to the process's stderr, in front of every user of the
 * library. A 16-float vector without AVX-512 did (clang: "changes the
 * ABI"), until the CPU runtime's kernels took its native vector width. */
Test(opencl, cold_build_prints_no_compiler_warning)
{
    char dir[512], pocl[600], path[600], text[4096];
    make_temp_dir(dir, sizeof dir);
    snprintf(pocl, sizeof pocl, "%s/pocl", dir);
    setenv("POCL_CACHE_DIR", pocl, 1);
    snprintf(path, sizeof path, "%s/stderr.txt", dir);
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    log_buf *log = calloc(1, sizeof *log);
    cached_start(dir, log);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    cr_expect_null(strstr(text, "warning"), "a cold build printed: %s", text);
    remove_tree(dir);
    free(log);
}

/* Garbage where an entry's header should be. */
static void scribble(const char *path)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    fputs("this is not a program binary", f);
    fclose(f);
}

/* Same header, payload flipped: the checksum no longer matches. */
static void flip_payload(const char *path)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    fseek(f, 100, SEEK_SET);
    int c = fgetc(f);
    fseek(f, 100, SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

/* A well-formed entry (header, size and checksum all right) whose payload
 * is not a program binary: the driver must refuse it and the entry be
 * rebuilt. The layout is program.c's: magic[8], key, size, FNV-1a hash. */
static void forge_payload(const char *path)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    unsigned char head[32];
    cr_assert_eq(fread(head, 1, sizeof head, f), sizeof head);
    uint64_t size, hash = 0xcbf29ce484222325ull;
    memcpy(&size, head + 16, sizeof size);
    fseek(f, (long)sizeof head, SEEK_SET);
    for (uint64_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)(i * 37u + 11u);
        fputc(c, f);
        hash = (hash ^ c) * 0x100000001b3ull;
    }
    fseek(f, 24, SEEK_SET);
    fwrite(&hash, sizeof hash, 1, f);
    fclose(f);
}

/* Header kept, the file cut short. */
static void truncate_entry(const char *path)
{
    cr_assert_eq(truncate(path, 64), 0);
}

static void corrupt_then_check(void (*damage)(const char *path),
                               const char *why)
{
    char dir[512];
    make_temp_dir(dir, sizeof dir);
    log_buf *log = calloc(1, sizeof *log);
    cached_start(dir, log);
    int entries = for_each_entry(dir, damage);
    cr_assert_geq(entries, 1);

    cached_start(dir, log);
    cr_expect_not_null(strstr(log->text, why), "%s", log->text);
    cr_expect_not_null(strstr(log->text, "built from source"), "%s",
                       log->text);
    cr_expect_null(strstr(log->text, "loaded from cache"), "%s", log->text);

    /* The rebuilt entries were rewritten and are trusted again. */
    cached_start(dir, log);
    cr_expect_not_null(strstr(log->text, "loaded from cache"), "%s",
                       log->text);
    cr_expect_null(strstr(log->text, "rebuilding"), "%s", log->text);
    remove_tree(dir);
    free(log);
}

Test(opencl, corrupt_cache_header_is_rebuilt)
{
    corrupt_then_check(scribble, "ignored (bad header)");
}

Test(opencl, corrupt_cache_payload_is_rebuilt)
{
    corrupt_then_check(flip_payload, "ignored (checksum mismatch)");
}

Test(opencl, truncated_cache_entry_is_rebuilt)
{
    corrupt_then_check(truncate_entry, "ignored (truncated");
}

Test(opencl, forged_cache_entry_refused_by_driver_is_rebuilt)
{
    corrupt_then_check(forge_payload, "refused by the driver");
}

/* A kernel build that fails: the compiler's log reaches the message. The
 * test hook MHA_OPENCL_BUILD_OPTIONS appends options to every build;
 * common.cl has an #error behind MHA_FORCE_BUILD_ERROR. */
Test(opencl, build_log_reaches_error_message)
{
    setenv("MHA_OPENCL_BUILD_OPTIONS", "-D MHA_FORCE_BUILD_ERROR", 1);
    mha_context *ctx = new_context(NULL);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = "";
    mha_device *dev = NULL;
    mha_status st = mha_device_open_index(ctx, cl, &o, &dev);
    const char *msg = mha_context_errmsg(ctx);
    cr_expect_eq(st, MHA_DEVICE_ERROR, "status %s", mha_status_str(st));
    cr_expect_null(dev);
    cr_expect_not_null(strstr(msg, "clBuildProgram failed"), "%s", msg);
    cr_expect_not_null(strstr(msg, "CL_BUILD_PROGRAM_FAILURE"), "%s", msg);
    cr_expect_not_null(strstr(msg, "build failure requested"), "%s", msg);
    /* The other devices stay usable. */
    mha_device *cpu = NULL;
    cr_expect_eq(mha_device_open(ctx, "cpu", NULL, &cpu), MHA_OK);
    mha_device_destroy(cpu);
    mha_context_destroy(ctx);
}

Test(opencl, buffer_past_max_alloc_names_the_limit)
{
    mha_context *ctx = new_context(NULL);
    mha_device_info info;
    int cl = find_opencl(ctx, &info);
    mha_device *dev = open_index(ctx, cl, NULL);
    int64_t shape[1] = {(int64_t)(info.max_buffer_bytes / 4) + 1024};
    mha_tensor *t = NULL;
    mha_status st = mha_tensor_create(dev, MHA_F32, 1, shape, &t);
    const char *msg = mha_context_errmsg(ctx);
    cr_expect_eq(st, MHA_OUT_OF_MEMORY, "status %s", mha_status_str(st));
    cr_expect_not_null(strstr(msg, "CL_DEVICE_MAX_MEM_ALLOC_SIZE"), "%s",
                       msg);
    /* The device still works. */
    int64_t small[1] = {16};
    cr_expect_eq(mha_tensor_create(dev, MHA_F32, 1, small, &t), MHA_OK);
    mha_tensor_destroy(t);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

Test(opencl, several_contexts_at_once)
{
    enum { NCTX = 3 };
    mha_context *ctx[NCTX];
    mha_device *dev[NCTX];
    mha_layer *layer[NCTX];
    static float out[NCTX][L * N * E], w[N * L * (S + 1)];
    for (int i = 0; i < NCTX; i++) {
        ctx[i] = new_context(NULL);
        mha_device_info info;
        int cl = find_opencl(ctx[i], &info);
        dev[i] = open_index(ctx[i], cl, NULL);
        layer[i] = make_layer(dev[i], MHA_F32);
    }
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < NCTX; i++)
            forward(layer[i], round, out[i], round ? w : NULL);
    for (int i = 1; i < NCTX; i++)
        cr_expect_eq(memcmp(out[0], out[i], sizeof out[0]), 0,
                     "context %d differs", i);
    /* Destroyed out of creation order. */
    for (int i = NCTX - 1; i >= 0; i--) {
        int j = (i + 1) % NCTX;
        mha_layer_destroy(layer[j]);
        mha_device_destroy(dev[j]);
        mha_context_destroy(ctx[j]);
        layer[j] = NULL;
        dev[j] = NULL;
        ctx[j] = NULL;
    }
}

/* No platform (the ICD loader finds no vendor file): no OpenCL devices,
 * and the context is still created. */
Test(opencl, no_platform_means_no_devices)
{
    setenv("OCL_ICD_VENDORS", "/nonexistent-mha-test", 1);
    log_buf *log = calloc(1, sizeof *log);
    mha_context *ctx = new_context(log);
    int n = 0;
    cr_assert_eq(mha_device_count(ctx, &n), MHA_OK);
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        mha_device_get_info(ctx, i, &info);
        cr_expect_neq(strcmp(info.backend, "opencl"), 0);
    }
    cr_expect_not_null(strstr(log->text, "no OpenCL"), "%s", log->text);
    mha_context_destroy(ctx);
    free(log);
}
