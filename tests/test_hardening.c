/* test_hardening.c: libmha against hostile input and a hostile file system
 * (issue 12's defects 2 to 4). A mask's ndim out of range is refused before
 * anything reads its shape, and the message prints only what the caller
 * gave; a FIFO as the safetensors file, the Vulkan pipeline cache or an
 * OpenCL binary cache entry is refused at once, never waited on (each test
 * runs under a timeout, so a hang fails); the cache writers never follow a
 * symlink planted at the temporary names they used to write through; and a
 * cache directory that another user owns or that group or others can write
 * is not used, and one that is missing is made mode 0700. */
#define _XOPEN_SOURCE 700 /* mkfifo, symlink, lstat, chown */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

enum { E = 16, H = 2, L = 3, S = 4 };

/* ---- helpers ------------------------------------------------------------ */

static mha_context *new_context(test_log *log)
{
    mha_context_options o;
    mha_context_options_init(&o);
    if (log)
        test_log_to(&o, log);
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    return ctx;
}

static mha_layer *make_layer(mha_device *dev)
{
    static float w[3 * E * E];
    for (int i = 0; i < 3 * E * E; i++)
        w[i] = (float)((i * 37) % 17) / 64.0f - 0.125f;
    mha_layer_config c;
    mha_layer_config_init(&c, E, H);
    c.bias = 0;
    mha_layer *layer = NULL;
    cr_assert_eq(mha_layer_create(dev, &c, &layer), MHA_OK);
    int64_t in[2] = {3 * E, E}, out[2] = {E, E};
    cr_assert_eq(mha_layer_set_weight(layer, "in_proj_weight", w, 2, in),
                 MHA_OK);
    cr_assert_eq(mha_layer_set_weight(layer, "out_proj.weight", w, 2, out),
                 MHA_OK);
    return layer;
}

static float g_q[L * E], g_kv[S * E], g_out[L * E];

/* Unbatched host forward arguments; the caller adds masks. */
static mha_host_forward_args host_args(void)
{
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = (mha_host_array){g_q, MHA_F32, 2, {L, E}};
    a.key = (mha_host_array){g_kv, MHA_F32, 2, {S, E}};
    a.value = (mha_host_array){g_kv, MHA_F32, 2, {S, E}};
    a.output = g_out;
    a.output_count = L * E;
    return a;
}

/* The cache entries (prefix*.bin) in dir, as full paths; returns the count. */
static int list_entries(const char *dir, const char *prefix,
                        char paths[][600], int cap)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || len < 4 ||
            strcmp(e->d_name + len - 4, ".bin") != 0)
            continue;
        if (n < cap)
            snprintf(paths[n], 600, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* ---- defect 2: a mask's ndim ---------------------------------------------- */

static void expect_message(mha_context *ctx, const char *fn,
                           const char *name, int ndim)
{
    char want[160];
    snprintf(want, sizeof want, "%s: %s has %d dimensions; expected 1 to 4",
             fn, name, ndim);
    cr_expect_str_eq(mha_context_errmsg(ctx), want);
}

static void check_bad_ndim(mha_layer *layer, mha_context *ctx, int which,
                           int ndim)
{
    static uint8_t mask[64];
    mha_host_forward_args a = host_args();
    mha_host_array *m = which ? &a.attn_mask : &a.key_padding_mask;
    const char *name = which ? "attn_mask" : "key_padding_mask";
    *m = (mha_host_array){mask, MHA_BOOL, ndim, {L, S, 1, 1}};
    cr_expect_eq(mha_layer_forward_host(layer, &a), MHA_INVALID_ARGUMENT);
    expect_message(ctx, "mha_layer_forward_host", name, ndim);
    size_t oc = 0, wc = 0;
    cr_expect_eq(mha_layer_output_size(layer, &a, &oc, &wc),
                 MHA_INVALID_ARGUMENT);
    expect_message(ctx, "mha_layer_output_size", name, ndim);
}

Test(hardening, mask_ndim_out_of_range_is_refused_before_its_shape_is_read)
{
    mha_context *ctx = new_context(NULL);
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    mha_layer *layer = make_layer(dev);
    static const int ndims[] = {40, 5, 0, -3};
    for (int which = 0; which < 2; which++)
        for (size_t i = 0; i < sizeof ndims / sizeof *ndims; i++)
            check_bad_ndim(layer, ctx, which, ndims[i]);
    /* the layer still runs */
    mha_host_forward_args a = host_args();
    cr_expect_eq(mha_layer_forward_host(layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* ---- defect 4: a FIFO as the safetensors file ------------------------------ */

Test(hardening, safetensors_fifo_or_directory_is_an_io_error, .timeout = 20)
{
    char dir[512], fifo[600];
    test_temp_dir(dir, sizeof dir);
    snprintf(fifo, sizeof fifo, "%s/weights.safetensors", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    mha_context *ctx = new_context(NULL);
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(ctx, "cpu", NULL, &dev), MHA_OK);
    mha_layer *layer = make_layer(dev);
    const char *paths[2] = {fifo, dir};
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(mha_layer_load_safetensors(layer, paths[i], NULL),
                     MHA_IO);
        const char *msg = mha_context_errmsg(ctx);
        cr_expect(strstr(msg, "mha_layer_load_safetensors") &&
                      strstr(msg, paths[i]) &&
                      strstr(msg, "not a regular file"),
                  "%s", msg);
    }
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    test_remove_tree(dir);
}

/* ---- defects 3 and 4: the GPU caches ---------------------------------------- */

/* A GPU backend's cache as the tests see it: its device, the prefix of its
 * entries, and the temporary name (printf of entry path and pid) its writer
 * used before issue 12. */
typedef struct cache_kind {
    const char *spec;
    const char *prefix;
    const char *old_tmp;
} cache_kind;

static const cache_kind vulkan_cache = {"vulkan", "vk-", "%s.tmp"};
static const cache_kind opencl_cache = {"opencl", "opencl-", "%s.%d.tmp"};

/* Skips when the backend has no device here, unless MHA_REQUIRE asks. */
static void require_device(mha_context *ctx, const char *backend)
{
    int n = 0;
    mha_device_count(ctx, &n);
    for (int i = 0; i < n; i++) {
        mha_device_info info;
        mha_device_get_info(ctx, i, &info);
        if (strcmp(info.backend, backend) == 0)
            return;
    }
    const char *req = getenv("MHA_REQUIRE");
    if (req && strstr(req, backend))
        cr_assert_fail("MHA_REQUIRE names %s but it has no device", backend);
    cr_skip_test("no %s device", backend);
}

/* Opens the backend's best device with cache dir, runs both forward paths
 * (so every pipeline or program is made), and closes everything. */
static void cached_run(const cache_kind *k, const char *dir, test_log *log)
{
    mha_context *ctx = new_context(log);
    require_device(ctx, k->spec);
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = dir;
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(ctx, k->spec, &o, &dev), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_layer *layer = make_layer(dev);
    static float w[L * S];
    mha_host_forward_args a = host_args();
    cr_assert_eq(mha_layer_forward_host(layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    a.need_weights = 1;
    a.weights = w;
    a.weights_count = L * S;
    cr_assert_eq(mha_layer_forward_host(layer, &a), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_layer_destroy(layer);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* Runs once to learn the entry names, removes the entries and plants a
 * symlink to a victim file at each old temporary name, runs again: the
 * victim is untouched and every entry is a regular file. */
static void planted_symlinks_not_followed(const cache_kind *k)
{
    char dir[512], victim[600], entries[16][600];
    test_temp_dir(dir, sizeof dir);
    snprintf(victim, sizeof victim, "%s.victim", dir);
    FILE *f = fopen(victim, "w");
    cr_assert_not_null(f);
    fputs("precious", f);
    fclose(f);
    test_log *log = calloc(1, sizeof *log);
    cached_run(k, dir, log);
    int n = list_entries(dir, k->prefix, entries, 16);
    cr_assert(n >= 1 && n <= 16, "%d entries\n%s", n, log->text);
    for (int i = 0; i < n; i++) {
        char tmp[700];
        snprintf(tmp, sizeof tmp, k->old_tmp, entries[i], (int)getpid());
        cr_assert_eq(remove(entries[i]), 0);
        cr_assert_eq(symlink(victim, tmp), 0);
    }
    cached_run(k, dir, log);
    char text[64] = "";
    f = fopen(victim, "r");
    cr_assert_not_null(f);
    cr_expect_not_null(fgets(text, sizeof text, f));
    fclose(f);
    cr_expect_str_eq(text, "precious", "the victim file was overwritten");
    cr_expect_eq(list_entries(dir, k->prefix, entries, 16), n);
    for (int i = 0; i < n; i++) {
        struct stat sb;
        cr_expect(lstat(entries[i], &sb) == 0 && S_ISREG(sb.st_mode) &&
                      (sb.st_mode & 077) == 0,
                  "%s is not a private regular file", entries[i]);
    }
    remove(victim);
    test_remove_tree(dir);
    free(log);
}

Test(hardening, vulkan_cache_writer_does_not_follow_planted_symlink)
{
    planted_symlinks_not_followed(&vulkan_cache);
}

Test(hardening, opencl_cache_writer_does_not_follow_planted_symlink)
{
    planted_symlinks_not_followed(&opencl_cache);
}

/* A directory others can write, or another user's: nothing is written to
 * it, the reason is logged, and the device still works. */
static void unsafe_dir_not_used(const cache_kind *k, int other_owner)
{
    char dir[512], entries[4][600];
    test_temp_dir(dir, sizeof dir);
    if (other_owner) {
        if (geteuid() != 0)
            cr_skip_test("giving a directory to another user needs root");
        cr_assert_eq(chown(dir, 65534, 65534), 0);
    } else {
        cr_assert_eq(chmod(dir, 0777), 0);
    }
    test_log *log = calloc(1, sizeof *log);
    cached_run(k, dir, log);
    cr_expect_eq(list_entries(dir, k->prefix, entries, 4), 0,
                 "cache written to an unsafe directory");
    cr_expect_not_null(strstr(log->text, other_owner
                                             ? "owned by another user"
                                             : "writable by group or others"),
                       "%s", log->text);
    test_remove_tree(dir);
    free(log);
}

Test(hardening, vulkan_cache_refuses_world_writable_dir)
{
    unsafe_dir_not_used(&vulkan_cache, 0);
}

Test(hardening, vulkan_cache_refuses_other_users_dir)
{
    unsafe_dir_not_used(&vulkan_cache, 1);
}

Test(hardening, opencl_cache_refuses_world_writable_dir)
{
    unsafe_dir_not_used(&opencl_cache, 0);
}

Test(hardening, opencl_cache_refuses_other_users_dir)
{
    unsafe_dir_not_used(&opencl_cache, 1);
}

/* A FIFO where a cache entry is: skipped with a log line at once (the
 * timeout fails a hang), the device works, and the entry is rewritten. */
static void fifo_entry_skipped(const cache_kind *k)
{
    char dir[512], entries[16][600];
    test_temp_dir(dir, sizeof dir);
    test_log *log = calloc(1, sizeof *log);
    cached_run(k, dir, log);
    int n = list_entries(dir, k->prefix, entries, 16);
    cr_assert(n >= 1 && n <= 16, "%d entries", n);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(remove(entries[i]), 0);
        cr_assert_eq(mkfifo(entries[i], 0600), 0);
    }
    cached_run(k, dir, log);
    cr_expect_not_null(strstr(log->text, "not a regular file"), "%s",
                       log->text);
    for (int i = 0; i < n; i++) {
        struct stat sb;
        cr_expect(lstat(entries[i], &sb) == 0 && S_ISREG(sb.st_mode),
                  "%s was not rewritten as a regular file", entries[i]);
    }
    test_remove_tree(dir);
    free(log);
}

Test(hardening, vulkan_cache_fifo_is_skipped, .timeout = 60)
{
    fifo_entry_skipped(&vulkan_cache);
}

Test(hardening, opencl_cache_fifo_is_skipped, .timeout = 180)
{
    fifo_entry_skipped(&opencl_cache);
}

/* A cache directory that does not exist is made, parents included, mode
 * 0700. */
static void missing_dir_made_private(const cache_kind *k)
{
    char base[512], dir[600], parent[600];
    test_temp_dir(base, sizeof base);
    snprintf(parent, sizeof parent, "%s/made", base);
    snprintf(dir, sizeof dir, "%s/made/cache", base);
    test_log *log = calloc(1, sizeof *log);
    cached_run(k, dir, log);
    const char *made[2] = {parent, dir};
    for (int i = 0; i < 2; i++) {
        struct stat sb;
        cr_expect(stat(made[i], &sb) == 0 && (sb.st_mode & 0777) == 0700,
                  "%s: mode %o", made[i], (unsigned)sb.st_mode & 0777);
    }
    char entries[4][600];
    cr_expect_geq(list_entries(dir, k->prefix, entries, 4), 1, "%s",
                  log->text);
    test_remove_tree(base);
    free(log);
}

Test(hardening, vulkan_cache_dir_is_made_mode_0700)
{
    missing_dir_made_private(&vulkan_cache);
}

Test(hardening, opencl_cache_dir_is_made_mode_0700)
{
    missing_dir_made_private(&opencl_cache);
}
