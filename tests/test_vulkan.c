/* test_vulkan.c: the Vulkan backend's own suite: the device is found and
 * described (a failure, not a skip, when MHA_REQUIRE_VULKAN=1), several
 * devices and contexts at once, buffer round trips and limits, forwards that
 * agree with the CPU backend (fused and unfused), the pipeline cache cold,
 * warm, corrupt and foreign, the validation messenger catching an injected
 * error, MHA_VULKAN_LIMITS, and "no driver" meaning no devices. The generic
 * op and fixture suites cover every op on this backend too. */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "context.h"
#include "mha.h"
#include "vk_internal.h"

extern const mha_backend_iface mha_vulkan_backend;

/* ---- helpers --------------------------------------------------------- */

static mha_context *new_context(void)
{
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(NULL, &ctx), MHA_OK);
    return ctx;
}

/* Ranked indices of the Vulkan devices of ctx; returns their count. */
static int vulkan_devices(mha_context *ctx, int *idx, int cap)
{
    int n = 0, count = 0;
    cr_assert_eq(mha_device_count(ctx, &count), MHA_OK);
    for (int i = 0; i < count && n < cap; ++i) {
        mha_device_info info;
        cr_assert_eq(mha_device_get_info(ctx, i, &info), MHA_OK);
        if (strcmp(info.backend, "vulkan") == 0)
            idx[n++] = i;
    }
    return n;
}

static bool required(void)
{
    const char *r = getenv("MHA_REQUIRE_VULKAN");
    return r && strcmp(r, "1") == 0;
}

/* The first Vulkan device's index, or skips (fails when required). */
static int first_vulkan(mha_context *ctx)
{
    int idx[8];
    int n = vulkan_devices(ctx, idx, 8);
    if (!n) {
        if (required())
            cr_assert_fail("MHA_REQUIRE_VULKAN=1 but no Vulkan device: %s",
                           mha_context_errmsg(ctx));
        mha_context_destroy(ctx);
        cr_skip_test("no Vulkan device");
    }
    return idx[0];
}

static mha_device *open_index(mha_context *ctx, int index,
                              const char *cache_dir)
{
    mha_device_options o;
    mha_device_options_init(&o);
    o.cache_dir = cache_dir;
    mha_device *dev = NULL;
    mha_status s = mha_device_open_index(ctx, index, &o, &dev);
    cr_assert_eq(s, MHA_OK, "open %d: %s", index, mha_context_errmsg(ctx));
    return dev;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static float frand(unsigned *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return (float)((*seed >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void fill(float *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; ++i)
        p[i] = frand(&seed);
}

/* One forward of a small layer (E=16, H=4, L=5, S=7, N=2, causal, with
 * add_bias_kv and add_zero_attn) on dev into out (and weights). */
typedef struct fwd_case {
    int need_weights;
    int causal;
    mha_dtype dtype; /* of the layer: MHA_F32 (0) or MHA_F16 storage */
} fwd_case;

#define E_ 16
#define H_ 4
#define L_ 5
#define S_ 7
#define N_ 2

static mha_status forward(mha_device *dev, const fwd_case *c, float *out,
                          float *weights)
{
    mha_layer_config cfg;
    mha_layer_config_init(&cfg, E_, H_);
    cfg.add_bias_kv = 1;
    cfg.add_zero_attn = 1;
    cfg.dtype = c->dtype;
    mha_layer *layer = NULL;
    mha_status s = mha_layer_create(dev, &cfg, &layer);
    if (s != MHA_OK)
        return s;
    static float w_in[3 * E_ * E_], b_in[3 * E_], w_out[E_ * E_], b_out[E_],
        bk[E_], bv[E_];
    fill(w_in, 3 * E_ * E_, 1);
    fill(b_in, 3 * E_, 2);
    fill(w_out, E_ * E_, 3);
    fill(b_out, E_, 4);
    fill(bk, E_, 5);
    fill(bv, E_, 6);
    int64_t s_in[2] = {3 * E_, E_}, s_b[1] = {3 * E_}, s_o[2] = {E_, E_},
            s_ob[1] = {E_}, s_kv[3] = {1, 1, E_};
    struct { const char *n; const float *d; int nd; const int64_t *sh; } w[] = {
        {"in_proj_weight", w_in, 2, s_in}, {"in_proj_bias", b_in, 1, s_b},
        {"out_proj.weight", w_out, 2, s_o}, {"out_proj.bias", b_out, 1, s_ob},
        {"bias_k", bk, 3, s_kv}, {"bias_v", bv, 3, s_kv}};
    for (size_t i = 0; i < sizeof w / sizeof *w && s == MHA_OK; ++i)
        s = mha_layer_set_weight(layer, w[i].n, w[i].d, w[i].nd, w[i].sh);
    static float q[L_ * N_ * E_], k[S_ * N_ * E_], v[S_ * N_ * E_];
    fill(q, L_ * N_ * E_, 7);
    fill(k, S_ * N_ * E_, 8);
    fill(v, S_ * N_ * E_, 9);
    mha_host_forward_args a;
    mha_host_forward_args_init(&a);
    a.query = (mha_host_array){q, MHA_F32, 3, {L_, N_, E_}};
    a.key = (mha_host_array){k, MHA_F32, 3, {S_, N_, E_}};
    a.value = (mha_host_array){v, MHA_F32, 3, {S_, N_, E_}};
    a.is_causal = c->causal;
    a.need_weights = c->need_weights;
    a.average_attn_weights = 1;
    a.output = out;
    a.output_count = L_ * N_ * E_;
    a.weights = weights;
    a.weights_count = weights ? N_ * L_ * (S_ + 2) : 0;
    if (s == MHA_OK)
        s = mha_layer_forward_host(layer, &a);
    mha_layer_destroy(layer);
    return s;
}

static int cpu_index(mha_context *ctx)
{
    int count = 0;
    mha_device_count(ctx, &count);
    for (int i = 0; i < count; ++i) {
        mha_device_info info;
        mha_device_get_info(ctx, i, &info);
        if (strcmp(info.backend, "cpu") == 0)
            return i;
    }
    cr_assert_fail("no CPU device");
    return -1;
}

static void assert_near(const float *a, const float *b, size_t n,
                        const char *what, float tol)
{
    for (size_t i = 0; i < n; ++i)
        cr_assert(fabsf(a[i] - b[i]) <= tol ||
                      (isnan(a[i]) && isnan(b[i])),
                  "%s[%zu]: vulkan %g, cpu %g", what, i, a[i], b[i]);
}

static void assert_close(const float *a, const float *b, size_t n,
                         const char *what)
{
    assert_near(a, b, n, what, 1e-4f);
}

/* The backend's device behind a public handle (white-box tests). */
static mha_vk_device *vk_of(mha_device *dev)
{
    cr_assert_eq(dev->iface, &mha_vulkan_backend);
    return dev->dev;
}

static const char *tmpdir(void)
{
    const char *t = getenv("MHA_TEST_TMPDIR");
    return t && t[0] ? t : "/tmp";
}

/* ---- tests ------------------------------------------------------------- */

Test(vulkan, device_found_and_described)
{
    mha_context *ctx = new_context();
    int index = first_vulkan(ctx);
    mha_device_info info;
    cr_assert_eq(mha_device_get_info(ctx, index, &info), MHA_OK);
    cr_log_info("vulkan device: %s | %s | %s | %s", info.vendor, info.name,
                info.driver, info.details);
    cr_expect_neq(info.vendor[0], '\0');
    cr_expect_neq(info.name[0], '\0');
    cr_expect_neq(info.driver[0], '\0');
    cr_expect_gt(info.max_workgroup_size, 0);
    if (!getenv("MHA_VULKAN_LIMITS")) /* Vulkan's guaranteed minimum */
        cr_expect_geq(info.shared_memory_bytes, 16384);
    cr_expect_gt(info.max_buffer_bytes, 0);
    cr_expect(info.features & MHA_FEATURE_FUSED_ATTENTION);
    cr_expect(strstr(info.details, "subgroup") != NULL);
    cr_expect(strstr(info.details, "fp16 storage") != NULL);
    if (strstr(info.name, "llvmpipe"))
        cr_expect_eq(info.kind, MHA_DEVICE_SOFTWARE,
                     "lavapipe must rank as a software device");
    mha_context_destroy(ctx);
}

Test(vulkan, buffer_round_trip)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_index(ctx, first_vulkan(ctx), "");
    const mha_backend_iface *vk = dev->iface;
    void *d = dev->dev;
    size_t sizes[] = {4, 1000, 65536 + 12, (size_t)3 << 20};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; ++t) {
        size_t n = sizes[t];
        unsigned char *src = malloc(n), *dst = malloc(n);
        for (size_t i = 0; i < n; ++i)
            src[i] = (unsigned char)(i * 7 + t);
        void *buf = NULL;
        cr_assert_eq(vk->buffer_alloc(d, n, &buf), MHA_OK);
        cr_assert_eq(vk->buffer_write(d, buf, 0, src, n), MHA_OK);
        cr_assert_eq(vk->buffer_read(d, buf, 0, dst, n), MHA_OK);
        cr_assert_arr_eq(src, dst, n);
        /* partial write and read at an odd offset */
        if (n > 8) {
            unsigned char patch[5] = {1, 2, 3, 4, 5}, back[7];
            cr_assert_eq(vk->buffer_write(d, buf, 3, patch, 5), MHA_OK);
            cr_assert_eq(vk->buffer_read(d, buf, 2, back, 7), MHA_OK);
            cr_assert_eq(back[0], src[2]);
            cr_assert_arr_eq(back + 1, patch, 5);
            cr_assert_eq(back[6], src[8]);
        }
        cr_assert_neq(vk->buffer_read(d, buf, n - 2, dst, 4), MHA_OK,
                      "a read past the end must fail");
        vk->buffer_free(d, buf);
        free(src);
        free(dst);
    }
    /* With MHA_VULKAN_LIMITS=mapped=0 the copies went through staging. */
    const char *lim = getenv("MHA_VULKAN_LIMITS");
    if (lim && strstr(lim, "mapped=0"))
        cr_assert_gt(vk_of(dev)->staging.size, 0, "no staging buffer used");
    /* Over maxStorageBufferRange: a clear error naming the limit. */
    mha_device_info info;
    mha_device_info_of(dev, &info);
    void *big = NULL;
    mha_status s = vk->buffer_alloc(d, info.max_buffer_bytes + 4, &big);
    cr_assert_eq(s, MHA_OUT_OF_MEMORY);
    cr_assert(strstr(mha_context_errmsg(ctx), "maxStorageBufferRange"),
              "message: %s", mha_context_errmsg(ctx));
    /* The public tensor path too. */
    int64_t shape[2] = {3, 5};
    float in[15], out[15];
    fill(in, 15, 42);
    mha_tensor *t = NULL;
    cr_assert_eq(mha_tensor_create(dev, MHA_F32, 2, shape, &t), MHA_OK);
    cr_assert_eq(mha_tensor_upload(t, in, sizeof in), MHA_OK);
    cr_assert_eq(mha_tensor_download(t, out, sizeof out), MHA_OK);
    cr_assert_arr_eq(in, out, sizeof in);
    mha_tensor_destroy(t);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

Test(vulkan, several_devices_and_contexts)
{
    mha_context *c1 = new_context(), *c2 = new_context();
    int i1[8], i2[8];
    int n1 = vulkan_devices(c1, i1, 8), n2 = vulkan_devices(c2, i2, 8);
    cr_assert_eq(n1, n2);
    if (!n1) {
        cr_assert_not(required(), "MHA_REQUIRE_VULKAN=1 but no device");
        mha_context_destroy(c1);
        mha_context_destroy(c2);
        cr_skip_test("no Vulkan device");
    }
    /* every device twice in c1 and once in c2, all alive together */
    enum { MAXD = 24 };
    mha_device *devs[MAXD];
    int nd = 0;
    for (int i = 0; i < n1 && nd + 3 <= MAXD; ++i) {
        devs[nd++] = open_index(c1, i1[i], "");
        devs[nd++] = open_index(c1, i1[i], "");
        devs[nd++] = open_index(c2, i2[i], "");
    }
    float want[L_ * N_ * E_], got[L_ * N_ * E_];
    fwd_case fc = {0, 1, MHA_F32};
    cr_assert_eq(forward(devs[0], &fc, want, NULL), MHA_OK, "%s",
                 mha_context_errmsg(c1));
    for (int i = 1; i < nd; ++i) {
        mha_status s = forward(devs[i], &fc, got, NULL);
        cr_assert_eq(s, MHA_OK, "device %d: %s", i,
                     mha_context_errmsg(i % 3 == 2 ? c2 : c1));
        assert_close(got, want, L_ * N_ * E_, "output");
    }
    /* close in an interleaved order: the others keep working */
    for (int i = 0; i < nd; i += 2)
        mha_device_destroy(devs[i]);
    for (int i = 1; i < nd; i += 2) {
        cr_assert_eq(forward(devs[i], &fc, got, NULL), MHA_OK);
        assert_close(got, want, L_ * N_ * E_, "output after closes");
        mha_device_destroy(devs[i]);
    }
    mha_context_destroy(c1);
    mha_context_destroy(c2);
}

static void check_against_cpu(const fwd_case *c)
{
    mha_context *ctx = new_context();
    mha_device *vk = open_index(ctx, first_vulkan(ctx), "");
    mha_device *cpu = open_index(ctx, cpu_index(ctx), NULL);
    float ov[L_ * N_ * E_], oc[L_ * N_ * E_];
    float wv[N_ * L_ * (S_ + 2)], wc[N_ * L_ * (S_ + 2)];
    float *pv = c->need_weights ? wv : NULL, *pc = c->need_weights ? wc : NULL;
    cr_assert_eq(forward(vk, c, ov, pv), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(forward(cpu, c, oc, pc), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    assert_close(ov, oc, L_ * N_ * E_, "output");
    if (c->need_weights)
        assert_close(wv, wc, N_ * L_ * (S_ + 2), "weights");
    mha_device_destroy(vk);
    mha_device_destroy(cpu);
    mha_context_destroy(ctx);
}

Test(vulkan, forward_fused_matches_cpu)
{
    fwd_case c = {0, 1, MHA_F32};
    check_against_cpu(&c);
}

Test(vulkan, forward_unfused_matches_cpu)
{
    fwd_case c = {1, 1, MHA_F32};
    check_against_cpu(&c);
}

Test(vulkan, mobile_limits_match_cpu)
{
    setenv("MHA_VULKAN_LIMITS", "shared=16384,workgroup=64,fp16=0", 1);
    mha_context *ctx = new_context();
    mha_device_info info;
    cr_assert_eq(mha_device_get_info(ctx, first_vulkan(ctx), &info), MHA_OK);
    cr_assert_leq(info.shared_memory_bytes, 16384);
    cr_assert_leq(info.max_workgroup_size, 64);
    mha_context_destroy(ctx);
    fwd_case c = {0, 0, MHA_F32};
    check_against_cpu(&c);
    fwd_case u = {1, 0, MHA_F32};
    check_against_cpu(&u);
}

/* Rewrites the FNV-1a checksum of cache.c's header (magic, size, sum) so
 * a changed body passes the checksum and reaches the header check. */
static void put_checksum(unsigned char *file, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 24; i < n; ++i)
        h = (h ^ file[i]) * 0x100000001b3ull;
    for (int i = 0; i < 8; ++i)
        file[16 + i] = (unsigned char)(h >> (8 * i));
}

/* fp16 storage (weights, projections, heads) with fp32 arithmetic agrees
 * with the fp32 CPU forward to 1e-2; a device without 16-bit storage (or
 * capped with MHA_VULKAN_LIMITS fp16=0) refuses an fp16 layer. */
Test(vulkan, forward_fp16_storage_matches_cpu)
{
    mha_context *ctx = new_context();
    mha_device *vk = open_index(ctx, first_vulkan(ctx), "");
    mha_device *cpu = open_index(ctx, cpu_index(ctx), NULL);
    mha_device_info info;
    mha_device_info_of(vk, &info);
    for (int nw = 0; nw < 2; ++nw) {
        fwd_case h = {nw, 1, MHA_F16}, f = {nw, 1, MHA_F32};
        float ov[L_ * N_ * E_], oc[L_ * N_ * E_];
        float wv[N_ * L_ * (S_ + 2)], wc[N_ * L_ * (S_ + 2)];
        mha_status s = forward(vk, &h, ov, nw ? wv : NULL);
        if (!(info.features & MHA_FEATURE_FP16_STORAGE)) {
            cr_assert_neq(s, MHA_OK, "fp16 layer without fp16 storage");
            continue;
        }
        cr_assert_eq(s, MHA_OK, "%s", mha_context_errmsg(ctx));
        cr_assert_eq(forward(cpu, &f, oc, nw ? wc : NULL), MHA_OK);
        assert_near(ov, oc, L_ * N_ * E_, "fp16 output", 1e-2f);
        float worst = 0;
        for (size_t i = 0; i < L_ * N_ * E_; ++i)
            worst = fmaxf(worst, fabsf(ov[i] - oc[i]));
        cr_log_info("fp16 storage, need_weights %d: max abs error %g", nw,
                    worst);
        cr_assert_gt(worst, 0.0f, "fp16 storage gave fp32-exact results");
        if (nw)
            assert_near(wv, wc, N_ * L_ * (S_ + 2), "fp16 weights", 1e-2f);
    }
    mha_device_destroy(vk);
    mha_device_destroy(cpu);
    mha_context_destroy(ctx);
}

/* Cold start (empty cache dir) vs warm start to the first result; then a
 * corrupt and a foreign cache file must be ignored, not trusted. */
Test(vulkan, pipeline_cache_cold_warm_corrupt)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/mha-vk-cache-%d", tmpdir(), (int)getpid());
    mha_context *ctx = new_context();
    int index = first_vulkan(ctx);
    fwd_case fc = {0, 1, MHA_F32};
    float want[L_ * N_ * E_], got[L_ * N_ * E_];
    double ms[2];
    for (int run = 0; run < 2; ++run) {
        double t0 = now_ms();
        mha_device *dev = open_index(ctx, index, dir);
        cr_assert_eq(forward(dev, &fc, run ? got : want, NULL), MHA_OK, "%s",
                     mha_context_errmsg(ctx));
        ms[run] = now_ms() - t0;
        mha_device_destroy(dev);
    }
    cr_log_info("vulkan first result: cold %.1f ms, warm %.1f ms", ms[0],
                ms[1]);
    assert_close(got, want, L_ * N_ * E_, "warm output");
    mha_vk_device *probe;
    char path[1024];
    {
        mha_device *dev = open_index(ctx, index, dir);
        probe = vk_of(dev);
        cr_assert_not_null(probe->cache_path);
        snprintf(path, sizeof path, "%s", probe->cache_path);
        mha_device_destroy(dev);
    }
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "no cache file at %s", path);
    unsigned char file[1 << 16];
    size_t n = fread(file, 1, sizeof file, f);
    fclose(f);
    cr_assert_geq(n, 24 + 32, "cache file of %zu bytes", n);
    /* corrupt (checksum mismatch), truncated, and foreign: a well-formed
     * file whose pipelineCacheUUID is another driver's */
    unsigned char bad[3][1 << 16];
    size_t lens[3] = {n, 30, n};
    for (int v = 0; v < 3; ++v)
        memcpy(bad[v], file, n);
    bad[0][n - 1] ^= 0x5a;
    bad[2][24 + 16] ^= 0xff;
    put_checksum(bad[2], n);
    for (int v = 0; v < 3; ++v) {
        f = fopen(path, "wb");
        fwrite(bad[v], 1, lens[v], f);
        fclose(f);
        mha_device *dev = open_index(ctx, index, dir);
        cr_assert_eq(forward(dev, &fc, got, NULL), MHA_OK, "%s",
                     mha_context_errmsg(ctx));
        assert_close(got, want, L_ * N_ * E_, "output with a bad cache");
        mha_device_destroy(dev);
    }
    /* "" disables the cache: no path */
    mha_device *dev = open_index(ctx, index, "");
    cr_assert_null(vk_of(dev)->cache_path);
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
    remove(path);
    rmdir(dir);
}

/* With MHA_VULKAN_VALIDATION=1 a real validation error (a buffer created
 * with usage 0, VUID-VkBufferCreateInfo-usage-requiredbitmask) must fail the
 * next sync with the layer's text, and the device must work afterwards. */
Test(vulkan, validation_catches_injected_error)
{
    setenv("MHA_VULKAN_VALIDATION", "1", 1);
    mha_context *ctx = new_context();
    int idx[8];
    if (!vulkan_devices(ctx, idx, 8)) {
        /* init fails (backend skipped) when the layer is missing */
        cr_assert_not(required() && access("/usr/share/vulkan/explicit_layer.d/"
                                           "VkLayer_khronos_validation.json",
                                           R_OK) == 0,
                      "validation layer present but no device: %s",
                      mha_context_errmsg(ctx));
        mha_context_destroy(ctx);
        cr_skip_test("no Vulkan device with validation layers");
    }
    mha_device *dev = open_index(ctx, idx[0], "");
    mha_vk_device *d = vk_of(dev);
    cr_assert(d->st->validation);
    VkBufferCreateInfo bi = {
        .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
        .size = 256,
        .usage = 0, /* invalid: must not be 0 */
        .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    };
    VkBuffer b = VK_NULL_HANDLE;
    if (d->vk.vkCreateBuffer(d->dev, &bi, NULL, &b) == VK_SUCCESS)
        d->vk.vkDestroyBuffer(d->dev, b, NULL);
    mha_status s = dev->iface->sync(dev->dev);
    cr_assert_eq(s, MHA_DEVICE_ERROR);
    const char *msg = mha_context_errmsg(ctx);
    cr_log_info("caught: %s", msg);
    cr_assert(strstr(msg, "usage") != NULL, "message: %s", msg);
    /* reported once; the device still runs a clean forward */
    cr_assert_eq(dev->iface->sync(dev->dev), MHA_OK);
    float out[L_ * N_ * E_];
    fwd_case fc = {1, 1, MHA_F32};
    float w[N_ * L_ * (S_ + 2)];
    cr_assert_eq(forward(dev, &fc, out, w), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* Host allocation failures at every point of opening a Vulkan device and
 * running a forward: each returns MHA_OUT_OF_MEMORY, leaks nothing, and a
 * later forward on the same context works. */
typedef struct fault_alloc {
    long calls, fail_at, live;
} fault_alloc;

static void *fault_malloc(void *user, size_t size)
{
    fault_alloc *f = user;
    if (f->fail_at && ++f->calls == f->fail_at)
        return NULL;
    void *p = malloc(size ? size : 1);
    if (p)
        f->live++;
    return p;
}

static void fault_free(void *user, void *ptr)
{
    fault_alloc *f = user;
    if (ptr)
        f->live--;
    free(ptr);
}

Test(vulkan, host_allocation_failures)
{
    fault_alloc fa = {0, 0, 0};
    mha_allocator al = {fault_malloc, fault_free, &fa};
    mha_context_options co;
    mha_context_options_init(&co);
    co.allocator = &al;
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&co, &ctx), MHA_OK);
    int idx[8];
    if (!vulkan_devices(ctx, idx, 8)) {
        cr_assert_not(required(), "MHA_REQUIRE_VULKAN=1 but no device");
        mha_context_destroy(ctx);
        cr_skip_test("no Vulkan device");
    }
    long base = fa.live;
    float out[L_ * N_ * E_];
    fwd_case fc = {1, 1, MHA_F32};
    float w[N_ * L_ * (S_ + 2)];
    int failures = 0;
    for (long n = 1; n < 2000; ++n) {
        fa.calls = 0;
        fa.fail_at = n;
        mha_device_options o;
        mha_device_options_init(&o);
        o.cache_dir = "";
        mha_device *dev = NULL;
        mha_status s = mha_device_open_index(ctx, idx[0], &o, &dev);
        if (s == MHA_OK) {
            s = forward(dev, &fc, out, w);
            mha_device_destroy(dev);
        }
        bool hit = fa.calls >= n;
        fa.fail_at = 0;
        cr_assert_eq(fa.live, base, "leak after failing allocation %ld", n);
        if (!hit) {
            cr_assert_eq(s, MHA_OK, "%s", mha_context_errmsg(ctx));
            break;
        }
        cr_assert(s == MHA_OUT_OF_MEMORY, "allocation %ld: status %s: %s", n,
                  mha_status_str(s), mha_context_errmsg(ctx));
        failures++;
    }
    cr_log_info("%d host allocation failures handled", failures);
    cr_assert_gt(failures, 5);
    mha_context_destroy(ctx);
    cr_assert_eq(fa.live, 0);
}

/* Device memory failures (the backend's fault hook): a failed block
 * allocation is MHA_OUT_OF_MEMORY naming the call, frees what it took, and
 * the device stays usable. A maximal buffer forces a new block. */
Test(vulkan, device_allocation_failures)
{
    mha_context *ctx = new_context();
    mha_device *dev = open_index(ctx, first_vulkan(ctx), "");
    mha_vk_device *d = vk_of(dev);
    const mha_backend_iface *vk = dev->iface;
    mha_device_info info;
    mha_device_info_of(dev, &info);
    size_t big = (size_t)info.max_buffer_bytes; /* never fits a used block */
    void *buf = NULL;
    d->fault_countdown = 1;
    cr_assert_eq(vk->buffer_alloc(d, big, &buf), MHA_OUT_OF_MEMORY);
    cr_assert(strstr(mha_context_errmsg(ctx), "vkAllocateMemory"), "%s",
              mha_context_errmsg(ctx));
    cr_assert_eq(d->fault_countdown, 0);
    float want[L_ * N_ * E_], got[L_ * N_ * E_];
    fwd_case fc = {1, 1, MHA_F32};
    float w[N_ * L_ * (S_ + 2)];
    cr_assert_eq(forward(dev, &fc, want, w), MHA_OK, "%s",
                 mha_context_errmsg(ctx));
    cr_assert_eq(vk->buffer_alloc(d, big, &buf), MHA_OK);
    vk->buffer_free(d, buf);
    cr_assert_eq(forward(dev, &fc, got, w), MHA_OK);
    assert_close(got, want, L_ * N_ * E_, "output after a failure");
    mha_device_destroy(dev);
    mha_context_destroy(ctx);
}

/* No driver (an ICD list that names nothing): no Vulkan devices, no error,
 * and the CPU still runs. */
Test(vulkan, no_driver_lists_no_devices)
{
    setenv("VK_ICD_FILENAMES", "/nonexistent/none.json", 1);
    setenv("VK_DRIVER_FILES", "/nonexistent/none.json", 1);
    mha_context *ctx = new_context();
    int idx[8];
    cr_assert_eq(vulkan_devices(ctx, idx, 8), 0);
    mha_device *cpu = open_index(ctx, cpu_index(ctx), NULL);
    float out[L_ * N_ * E_];
    fwd_case fc = {0, 0, MHA_F32};
    cr_assert_eq(forward(cpu, &fc, out, NULL), MHA_OK);
    mha_device_destroy(cpu);
    mha_context_destroy(ctx);
}

/* The log of a context, kept for a test to search. */
static void keep_log(void *user, mha_log_level level, const char *msg)
{
    (void)level;
    char *log = user;
    size_t n = strlen(log);
    snprintf(log + n, 4096 - n, "%s\n", msg);
}

/* Every kernel binds 9 storage buffers (Vulkan guarantees 4 per stage):
 * a device with fewer (simulated by MHA_VULKAN_LIMITS storage=8) is not
 * listed, and the log says why with both numbers; 9 is enough. */
Test(vulkan, too_few_storage_buffers_skips_the_device)
{
    static char log[4096];
    mha_context_options o;
    mha_context_options_init(&o);
    o.log = keep_log;
    o.log_user = log;
    o.log_level = MHA_LOG_INFO;
    setenv("MHA_VULKAN_LIMITS", "storage=9", 1);
    mha_context *ctx = NULL;
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    first_vulkan(ctx); /* listed (or skipped when there is no device) */
    mha_context_destroy(ctx);
    log[0] = '\0';
    setenv("MHA_VULKAN_LIMITS", "storage=8", 1);
    cr_assert_eq(mha_context_create(&o, &ctx), MHA_OK);
    int idx[8];
    cr_expect_eq(vulkan_devices(ctx, idx, 8), 0);
    cr_expect(strstr(log, "skipping") &&
                  strstr(log, "8 storage buffers per stage") &&
                  strstr(log, "maxPerStageDescriptorStorageBuffers") &&
                  strstr(log, "kernels bind 9"),
              "%s", log);
    mha_context_destroy(ctx);
}
