/* common.c: device enumeration, random numbers, comparison, log capture
 * and temporary directories for the Criterion suites. */
#define _XOPEN_SOURCE 700 /* mkdtemp, nftw */
#include <criterion/criterion.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"

static const char *const cpu_isas[] = {"scalar", "avx2", "avx512", "neon"};

/* Backends that implement every extension of the attention core. */
static const char *const core_backends[] = {"cpu", "vulkan", "opencl"};

/* Backends that implement the training ops (issue 18), ATTENTION's saved
 * LSE included. */
static const char *const training_backends[] = {"cpu", "vulkan", "opencl"};

/* Whether td's label names one of the n backends of list. */
static int backend_listed(const test_device *td, const char *const *list,
                          size_t n)
{
    size_t len = strcspn(td->label, "/:");
    for (size_t i = 0; i < n; i++)
        if (strlen(list[i]) == len && strncmp(td->label, list[i], len) == 0)
            return 1;
    return 0;
}

int test_core_required(const test_device *td)
{
    return backend_listed(td, core_backends,
                          sizeof core_backends / sizeof *core_backends);
}

int test_training_required(const test_device *td)
{
    return backend_listed(td, training_backends,
                          sizeof training_backends / sizeof *training_backends);
}

static int wanted(const char *label)
{
    const char *filter = getenv("MHA_TEST_DEVICE");
    if (!filter || !*filter)
        return 1;
    char copy[256];
    snprintf(copy, sizeof copy, "%s", filter);
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ","))
        if (strncmp(label, tok, strlen(tok)) == 0)
            return 1;
    return 0;
}

/* Whether the CPU backend can run isa here: opening it tells. */
static int cpu_has_isa(mha_context *ctx, int index, const char *isa)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.cpu_isa = isa;
    o.threads = 1;
    mha_device *d;
    if (mha_device_open_index(ctx, index, &o, &d) != MHA_OK)
        return 0;
    mha_device_destroy(d);
    return 1;
}

static void add_device(test_device *out, int *n, int cap, const char *label,
                       int index, const char *isa)
{
    if (*n >= cap || !wanted(label))
        return;
    snprintf(out[*n].label, sizeof out[*n].label, "%s", label);
    out[*n].index = index;
    out[*n].isa = isa;
    (*n)++;
}

int test_devices(mha_context *ctx, test_device *out, int cap)
{
    int count = 0, n = 0;
    cr_assert_eq(mha_device_count(ctx, &count), MHA_OK);
    for (int i = 0; i < count; i++) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(ctx, i, &info), MHA_OK);
        char label[48];
        if (strcmp(info.backend, "cpu") != 0) {
            snprintf(label, sizeof label, "%s:%d", info.backend,
                     info.backend_index);
            add_device(out, &n, cap, label, i, NULL);
            continue;
        }
        for (size_t k = 0; k < sizeof cpu_isas / sizeof *cpu_isas; k++) {
            snprintf(label, sizeof label, "cpu/%s", cpu_isas[k]);
            if (cpu_has_isa(ctx, i, cpu_isas[k]))
                add_device(out, &n, cap, label, i, cpu_isas[k]);
        }
    }
    cr_assert_gt(n, 0, "no device to test (MHA_TEST_DEVICE=%s)",
                 getenv("MHA_TEST_DEVICE") ? getenv("MHA_TEST_DEVICE") : "");
    return n;
}

mha_device *test_open(mha_context *ctx, const test_device *td)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.cpu_isa = td->isa;
    mha_device *d = NULL;
    mha_status st = mha_device_open_index(ctx, td->index, &o, &d);
    cr_assert_eq(st, MHA_OK, "%s: open failed: %s", td->label,
                 mha_context_errmsg(ctx));
    return d;
}

void test_require_backends(mha_context *ctx)
{
    const char *req = getenv("MHA_REQUIRE");
    if (!req || !*req)
        return;
    char copy[128];
    snprintf(copy, sizeof copy, "%s", req);
    int count = 0;
    mha_device_count(ctx, &count);
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (int i = 0; i < count; i++) {
            mha_device_info info;
            mha_device_get_info(ctx, i, &info);
            found |= strcmp(info.backend, tok) == 0;
        }
        cr_assert(found, "MHA_REQUIRE names %s, but no %s device was found "
                         "(is its driver installed? MHA_LOG=info tells why)",
                  tok, tok);
    }
}

void test_each_device(void (*on)(mha_context *ctx, const test_device *td))
{
    mha_context *ctx;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    test_require_backends(ctx);
    test_device devs[TEST_MAX_DEVICES];
    int nd = test_devices(ctx, devs, TEST_MAX_DEVICES);
    for (int i = 0; i < nd; i++)
        on(ctx, &devs[i]);
    cr_assert_eq(mha_context_destroy(ctx), MHA_OK);
    cr_assert_gt(nd, 0, "no device to run on (MHA_TEST_DEVICE?)");
}

float test_uniform(test_rng *r)
{
    r->state = r->state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((r->state >> 40) & 0xffffff) / 16777216.0f;
}

float test_normal(test_rng *r)
{
    float u1 = test_uniform(r), u2 = test_uniform(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}

test_diff test_compare(const float *got, const double *want, size_t n)
{
    test_diff d = {0, 0, 0, 0, 0};
    double err2 = 0, ref2 = 0;
    for (size_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        if (!isfinite(w) || !isfinite(g)) {
            int same = (isnan(w) && isnan(g)) || g == w;
            if (!same && d.nonfinite_mismatch++ == 0)
                d.worst_nf = i;
            continue;
        }
        double e = fabs(g - w);
        if (e > d.max_abs) {
            d.max_abs = e;
            d.worst = i;
        }
        err2 += e * e;
        ref2 += w * w;
    }
    d.nmse = ref2 > 0 ? err2 / ref2 : err2;
    return d;
}

static void collect(void *user, mha_log_level level, const char *msg)
{
    test_log *b = user;
    (void)level;
    int n = snprintf(b->text + b->len, sizeof b->text - b->len, "%s\n", msg);
    if (n > 0 && b->len + (size_t)n < sizeof b->text)
        b->len += (size_t)n;
}

void test_log_to(mha_context_options *o, test_log *log)
{
    log->len = 0;
    log->text[0] = '\0';
    o->log = collect;
    o->log_user = log;
    o->log_level = MHA_LOG_INFO;
}

void test_temp_dir(char *path, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(path, cap, "%s/mha-test-XXXXXX", base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(path));
}

static int remove_one(const char *path, const struct stat *sb, int flag,
                      struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void test_remove_tree(const char *dir)
{
    nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

float *fixture_floats(mha_st_file *f, const char *name, int *nd,
                      int64_t *shape)
{
    const mha_st_entry *e = mha_st_find(f, name);
    if (!e)
        return NULL;
    float *x = malloc(e->count * sizeof *x);
    cr_assert_eq(mha_st_read_f32(f, e, x), MHA_OK, "%s", name);
    if (nd)
        *nd = e->ndim;
    if (shape)
        memcpy(shape, e->shape, (size_t)e->ndim * sizeof *shape);
    return x;
}

double fixture_meta(mha_st_file *f, const char *key)
{
    const char *s = mha_st_metadata(f, key);
    cr_assert(s, "metadata %s missing", key);
    return atof(s);
}
