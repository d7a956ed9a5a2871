/* test_tune.c: the tuning database and the profile API (core/tune.c,
 * core/tune_db.c, core/profile.c). The database round-trips; a valid
 * entry for a GPU device's shape class is used when planning (and not
 * under MHA_TUNE=off or rules); a corrupt, truncated, foreign-format,
 * other-version or malformed file, and an entry naming a variant the build
 * lacks, are ignored with a logged reason and the forward still runs; a
 * forced variant the device lacks is logged. Like the pipeline-cache
 * tests of test_vulkan.c. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "context.h"
#include "tune_db.h"

#define E_ 16
#define H_ 2
#define T_ 4

/* A small layer's forward on the host; its status. */
static mha_status forward(mha_device *dev)
{
    float w[3 * E_ * E_], b[3 * E_], x[T_ * E_], out[T_ * E_];
    for (int i = 0; i < 3 * E_ * E_; i++)
        w[i] = (float)((i * 7) % 13) / 13.0f - 0.5f;
    for (int i = 0; i < 3 * E_; i++)
        b[i] = 0.01f * (float)i;
    for (int i = 0; i < T_ * E_; i++)
        x[i] = (float)((i * 5) % 11) / 11.0f;
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E_, H_);
    mha_layer *layer = NULL;
    int64_t sw[2] = {3 * E_, E_}, sb[1] = {3 * E_}, so[2] = {E_, E_},
            sob[1] = {E_};
    mha_status st;
    if ((st = mha_layer_create(dev, &cfg, &layer)) ||
        (st = mha_layer_set_weight(layer, "in_proj_weight", w, 2, sw)) ||
        (st = mha_layer_set_weight(layer, "in_proj_bias", b, 1, sb)) ||
        (st = mha_layer_set_weight(layer, "out_proj.weight", w, 2, so)) ||
        (st = mha_layer_set_weight(layer, "out_proj.bias", b, 1, sob))) {
        mha_layer_destroy(layer);
        return st;
    }
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    mha_host_array q = {x, MHA_F32, 2, {T_, E_}};
    a.query = a.key = a.value = q;
    a.output = out;
    a.output_count = T_ * E_;
    st = mha_layer_forward_host(layer, &a);
    mha_layer_destroy(layer);
    return st;
}

/* The first device with kernel variants (Vulkan or OpenCL) of ctx, opened;
 * NULL (test skipped) where the build finds none. */
static mha_device *gpu_device(mha_context *ctx)
{
    int n = 0;
    mha_device_count(ctx, &n);
    for (int i = 0; i < n; i++) {
        mha_device *d = NULL;
        int count = 0;
        if (mha_device_open_index(ctx, i, NULL, &d) == MHA_OK &&
            mha_device_variants(d, "matmul", NULL, 0, &count) == MHA_OK &&
            count > 0)
            return d;
        mha_device_destroy(d);
    }
    return NULL;
}

typedef struct fixture {
    char dir[256], path[320];
    test_log log;
    mha_context *ctx;
    mha_device *dev;
    mha_device_info info;
    char shape[64];
} fixture;

static void fx_open(fixture *f)
{
    test_temp_dir(f->dir, sizeof f->dir);
    snprintf(f->path, sizeof f->path, "%s/tune.json", f->dir);
    setenv("MHA_TUNE_DB", f->path, 1);
    mha_context_options o;
    mha_context_options_init(&o);
    test_log_to(&o, &f->log);
    cr_assert_eq(mha_context_create(&o, &f->ctx), MHA_OK);
    test_require_backends(f->ctx);
    f->dev = gpu_device(f->ctx);
    if (!f->dev) {
        mha_context_destroy(f->ctx);
        test_remove_tree(f->dir);
        cr_skip_test("no device with kernel variants");
    }
    mha_device_info_of(f->dev, &f->info);
    mha_tune_shape s = {E_, H_, 1, T_, T_, 0};
    mha_tune_shape_class(&s, f->shape, sizeof f->shape);
}

static void fx_close(fixture *f)
{
    mha_device_destroy(f->dev);
    mha_context_destroy(f->ctx);
    test_remove_tree(f->dir);
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* An entry for f's device and shape with these variants. */
static void write_entry(fixture *f, const char *matmul, const char *attention)
{
    mha_tune_db db = {0};
    mha_tune_entry e = {.ms = 1, .default_ms = 2};
    snprintf(e.backend, sizeof e.backend, "%s", f->info.backend);
    snprintf(e.device, sizeof e.device, "%s", f->info.name);
    snprintf(e.driver, sizeof e.driver, "%s", f->info.driver);
    snprintf(e.shape, sizeof e.shape, "%s", f->shape);
    snprintf(e.matmul, sizeof e.matmul, "%s", matmul);
    snprintf(e.attention, sizeof e.attention, "%s", attention);
    cr_assert_eq(mha_tune_db_put(&f->ctx->host, &db, &e), MHA_OK);
    cr_assert_eq(mha_tune_db_write(f->path, &db), 0);
    mha_tune_db_free(&f->ctx->host, &db);
}

/* fx_open, then an entry naming the device's first matmul and attention
 * variants, which it returns in mm[0] and att[0]. */
static void fx_open_with_entry(fixture *f, const char *mm[1],
                               const char *att[1])
{
    fx_open(f);
    int n = 0;
    mha_device_variants(f->dev, "matmul", mm, 1, &n);
    mha_device_variants(f->dev, "attention", att, 1, &n);
    write_entry(f, mm[0], att[0]);
}

static void expect_log(fixture *f, const char *needle)
{
    cr_expect(strstr(f->log.text, needle), "the log lacks \"%s\":\n%s",
              needle, f->log.text);
}

/* The forward runs and the log says why the database was ignored. */
static void expect_ignored(const char *text, const char *reason)
{
    fixture f;
    fx_open(&f);
    write_text(f.path, text);
    cr_expect_eq(forward(f.dev), MHA_OK, "%s", mha_context_errmsg(f.ctx));
    expect_log(&f, f.path);
    expect_log(&f, reason);
    cr_expect(!strstr(f.log.text, "tuning database: E"),
              "an ignored database was used:\n%s", f.log.text);
    fx_close(&f);
}

Test(tune, db_round_trip_replace_and_shape_class)
{
    fixture f;
    fx_open(&f);
    mha_tune_db db = {0}, back = {0};
    mha_tune_entry e = {"vulkan", "dev", "drv", "E8-H2-B1-L4-S4-c0",
                        "mmA", "attB", 1.5, 3.0, 1.6, 0.04, 1.03, 0.06};
    cr_assert_eq(mha_tune_db_put(&f.ctx->host, &db, &e), MHA_OK);
    snprintf(e.matmul, sizeof e.matmul, "mmC");
    cr_assert_eq(mha_tune_db_put(&f.ctx->host, &db, &e), MHA_OK);
    snprintf(e.shape, sizeof e.shape, "other");
    cr_assert_eq(mha_tune_db_put(&f.ctx->host, &db, &e), MHA_OK);
    cr_assert_eq(db.count, 2, "a put with the same key replaced nothing");
    cr_assert_eq(mha_tune_db_write(f.path, &db), 0);
    cr_assert_eq(mha_tune_db_read(&f.ctx->host, f.path, &back), MHA_OK);
    cr_assert_eq(back.count, 2);
    const mha_tune_entry *got = mha_tune_db_find(&back, "vulkan", "dev",
                                                 "drv", "E8-H2-B1-L4-S4-c0");
    cr_assert_not_null(got);
    cr_expect_str_eq(got->matmul, "mmC");
    cr_expect_str_eq(got->attention, "attB");
    cr_expect_eq(got->ms, 1.5);
    cr_expect_eq(got->default_ms, 3.0);
    cr_expect(got->matmul_ratio == 1.6 && got->matmul_spread == 0.04 &&
                  got->attention_ratio == 1.03 &&
                  got->attention_spread == 0.06,
              "mha-tune's evidence did not round-trip");
    cr_expect_null(mha_tune_db_find(&back, "vulkan", "dev", "drv2",
                                    "E8-H2-B1-L4-S4-c0"),
                   "another driver's entry matched");
    mha_tune_db_free(&f.ctx->host, &db);
    mha_tune_db_free(&f.ctx->host, &back);
    char cls[64];
    mha_tune_shape s = {512, 8, 3, 300, 129, 1};
    mha_tune_shape_class(&s, cls, sizeof cls);
    cr_expect_str_eq(cls, "E512-H8-B4-L512-S256-c1");
    fx_close(&f);
}

Test(tune, a_valid_entry_is_used_unless_mha_tune_says_otherwise)
{
    fixture f;
    const char *mm[1], *att[1];
    fx_open_with_entry(&f, mm, att);
    cr_assert_eq(forward(f.dev), MHA_OK, "%s", mha_context_errmsg(f.ctx));
    char want[256];
    snprintf(want, sizeof want, "tuning database: %s on %s: matmul %s, "
                                "attention %s",
             f.shape, f.info.name, mm[0], att[0]);
    expect_log(&f, want);
    /* off and rules do not read the database */
    static const char *const modes[] = {"off", "rules"};
    for (int i = 0; i < 2; i++) {
        f.log.len = 0;
        f.log.text[0] = '\0';
        setenv("MHA_TUNE", modes[i], 1);
        cr_expect_eq(forward(f.dev), MHA_OK);
        cr_expect(!strstr(f.log.text, "tuning database:"),
                  "MHA_TUNE=%s used the database:\n%s", modes[i], f.log.text);
    }
    unsetenv("MHA_TUNE");
    fx_close(&f);
}

Test(tune, a_corrupt_database_is_ignored)
{
    expect_ignored("\x01\x02garbage{", "not JSON");
}

Test(tune, a_truncated_database_is_ignored)
{
    expect_ignored("{\"format\": \"libmha-tune\", \"version\": 1, \"entr",
                   "not JSON");
}

Test(tune, a_foreign_file_is_ignored)
{
    expect_ignored("{\"format\": \"other-tool\", \"version\": 1, "
                   "\"entries\": []}",
                   "not a libmha tuning database");
}

Test(tune, another_format_version_is_ignored)
{
    expect_ignored("{\"format\": \"libmha-tune\", \"version\": 2, "
                   "\"entries\": []}",
                   "another version");
}

Test(tune, a_malformed_entry_voids_the_database)
{
    expect_ignored("{\"format\": \"libmha-tune\", \"version\": 1, "
                   "\"entries\": [{\"backend\": \"vulkan\", \"ms\": \"x\"}]}",
                   "lacks a field");
}

Test(tune, an_evidence_field_of_the_wrong_type_voids_the_database)
{
    expect_ignored("{\"format\": \"libmha-tune\", \"version\": 1, "
                   "\"entries\": [{\"backend\": \"vulkan\", \"device\": "
                   "\"d\", \"driver\": \"v\", \"shape\": \"s\", "
                   "\"matmul\": \"default\", \"attention\": \"default\", "
                   "\"ms\": 1, \"default_ms\": 1, \"matmul_ratio\": \"x\"}]}",
                   "lacks a field");
}

/* A database written before the ratio and spread fields still reads. */
Test(tune, an_entry_without_evidence_fields_is_used)
{
    fixture f;
    const char *mm[1], *att[1];
    fx_open(&f);
    int n = 0;
    mha_device_variants(f.dev, "matmul", mm, 1, &n);
    mha_device_variants(f.dev, "attention", att, 1, &n);
    char text[1024];
    snprintf(text, sizeof text,
             "{\"format\": \"libmha-tune\", \"version\": 1, \"entries\": "
             "[{\"backend\": \"%s\", \"device\": \"%s\", \"driver\": "
             "\"%s\", \"shape\": \"%s\", \"matmul\": \"%s\", "
             "\"attention\": \"%s\", \"ms\": 1, \"default_ms\": 2}]}",
             f.info.backend, f.info.name, f.info.driver, f.shape, mm[0],
             att[0]);
    write_text(f.path, text);
    cr_assert_eq(forward(f.dev), MHA_OK, "%s", mha_context_errmsg(f.ctx));
    char want[256];
    snprintf(want, sizeof want, "tuning database: %s on %s: matmul %s",
             f.shape, f.info.name, mm[0]);
    expect_log(&f, want);
    fx_close(&f);
}

Test(tune, an_entry_naming_a_removed_variant_is_ignored)
{
    fixture f;
    fx_open(&f);
    write_entry(&f, "mm-removed-long-ago", "default");
    cr_expect_eq(forward(f.dev), MHA_OK, "%s", mha_context_errmsg(f.ctx));
    expect_log(&f, "variant mm-removed-long-ago");
    expect_log(&f, "does not exist in this build");
    expect_log(&f, "matmul (rules), attention default");
    fx_close(&f);
}

Test(tune, a_forced_unknown_variant_is_logged)
{
    fixture f;
    fx_open(&f);
    setenv("MHA_TUNE_VARIANT", "matmul=no-such-variant", 1);
    cr_expect_eq(forward(f.dev), MHA_OK, "%s", mha_context_errmsg(f.ctx));
    unsetenv("MHA_TUNE_VARIANT");
    expect_log(&f, "MHA_TUNE_VARIANT: no-such-variant is no projection "
                   "variant");
    fx_close(&f);
}

Test(tune, the_profile_times_each_node_on_the_device_clock)
{
    fixture f;
    fx_open(&f);
    mha_profile_entry e[16];
    int count = -1;
    cr_expect_eq(mha_device_profile_read(f.dev, e, 16, &count),
                 MHA_BAD_STATE, "read without start");
    cr_assert_eq(mha_device_profile_start(f.dev), MHA_OK);
    cr_assert_eq(forward(f.dev), MHA_OK);
    cr_assert_eq(mha_device_profile_read(f.dev, e, 16, &count), MHA_OK);
    /* one array as query, key and value: the packed q/k/v projection,
     * attention, output projection */
    cr_expect_eq(count, 3, "%d nodes", count);
    for (int i = 0; i < count && i < 16; i++) {
        cr_expect(e[i].ms > 0 && e[i].device_clock, "node %d (%s): %g ms, "
                  "clock %d", i, e[i].op, e[i].ms, e[i].device_clock);
    }
    cr_expect_str_eq(e[0].op, "projection");
    cr_assert_eq(mha_device_profile_stop(f.dev), MHA_OK);
    cr_expect_eq(mha_device_profile_read(f.dev, e, 16, &count),
                 MHA_BAD_STATE, "read after stop");
    fx_close(&f);
}

/* mha_device_options.cache_dir places the database as it places the
 * pipeline cache: before MHA_CACHE_DIR, after MHA_TUNE_DB. */
Test(tune, the_database_path_follows_the_cache_dir_option)
{
    fixture f;
    fx_open(&f);
    char path[512];
    setenv("MHA_CACHE_DIR", "/env/cache", 1);
    unsetenv("MHA_TUNE_DB");
    cr_assert(mha_tune_db_path(&f.ctx->host, "/opt/cache", path, sizeof path));
    cr_expect_str_eq(path, "/opt/cache/tune.json");
    cr_assert(mha_tune_db_path(&f.ctx->host, NULL, path, sizeof path));
    cr_expect_str_eq(path, "/env/cache/tune.json");
    cr_expect(!mha_tune_db_path(&f.ctx->host, "", path, sizeof path),
              "cache_dir \"\" gave %s", path);
    setenv("MHA_TUNE_DB", f.path, 1);
    cr_assert(mha_tune_db_path(&f.ctx->host, "/opt/cache", path, sizeof path));
    cr_expect_str_eq(path, f.path);
    fx_close(&f);
}

/* A device opened with cache_dir reads the database there, not in
 * MHA_CACHE_DIR. */
Test(tune, a_device_opened_with_cache_dir_reads_its_database)
{
    fixture f;
    const char *mm[1], *att[1];
    fx_open_with_entry(&f, mm, att);
    char other[256];
    test_temp_dir(other, sizeof other);
    unsetenv("MHA_TUNE_DB");
    setenv("MHA_CACHE_DIR", other, 1);
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = f.dir;
    char spec[64];
    snprintf(spec, sizeof spec, "%s:%d", f.info.backend,
             f.info.backend_index);
    mha_device *dev = NULL;
    cr_assert_eq(mha_device_open(f.ctx, spec, &o, &dev), MHA_OK, "%s",
                 mha_context_errmsg(f.ctx));
    cr_expect_eq(forward(dev), MHA_OK, "%s", mha_context_errmsg(f.ctx));
    char want[256];
    snprintf(want, sizeof want, "tuning database: %s on %s: matmul %s",
             f.shape, f.info.name, mm[0]);
    expect_log(&f, want);
    mha_device_destroy(dev);
    test_remove_tree(other);
    fx_close(&f);
}
