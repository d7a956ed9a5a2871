/* program.c: builds the embedded OpenCL C sources (shaders/opencl) for
 * one device, specialised by -D constants chosen from its limits, keeps each
 * built program and its kernels in the device, and caches program binaries
 * on disk keyed by platform, device, driver, options and source hash. A
 * cache entry whose header, checksum or key does not match, or that the
 * driver refuses, is rebuilt from source and rewritten, never trusted; the
 * directory must be private and entries regular files (core/file.c). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cl_internal.h"
#include "mha_cl_sources.h"

/* ---- what each program kind is made of ---------------------------------- */

typedef struct kind_spec {
    const char *files[8];
    int nfiles;
    const char *kernels[MHA_CL_K_COUNT]; /* by mha_cl_kernel_id, or NULL */
} kind_spec;

static const kind_spec kind_specs[] = {
    [MHA_CL_PROG_OPS] = {{"common.cl", "gemm.cl", "softmax.cl", "copy.cl",
                          "rope.cl", "head_stats.cl", "sum_rows.cl",
                          "adamw.cl"},
                         8,
                         {[MHA_CL_K_GEMM] = "gemm",
                          [MHA_CL_K_SOFTMAX] = "softmax",
                          [MHA_CL_K_COPY] = "copy4d",
                          [MHA_CL_K_MEAN_HEADS] = "mean_heads",
                          [MHA_CL_K_ROPE] = "rope",
                          [MHA_CL_K_MUL] = "mul4d",
                          [MHA_CL_K_HEAD_STATS] = "head_stats",
                          [MHA_CL_K_SUM_ROWS] = "sum_rows",
                          [MHA_CL_K_ADAMW] = "adamw"}},
    [MHA_CL_PROG_ATTENTION] = {{"common.cl", "attention.cl"},
                               2,
                               {[MHA_CL_K_ATTENTION] = "attention",
                                [MHA_CL_K_ATTENTION_COMBINE] =
                                    "attention_combine"}},
    [MHA_CL_PROG_ATTENTION_BWD] = {{"common.cl", "attention_backward.cl"},
                                   2,
                                   {[MHA_CL_K_ATT_BWD_PRE] =
                                        "attention_backward_pre",
                                    [MHA_CL_K_ATT_BWD] =
                                        "attention_backward"}},
};

static const mha_embedded_file *find_source(const char *name)
{
    for (size_t i = 0; i < mha_cl_sources_count; i++)
        if (strcmp(mha_cl_sources[i].name, name) == 0)
            return &mha_cl_sources[i];
    return NULL;
}

/* ---- hashing and timing ------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_SEED 0xcbf29ce484222325ull

static double now_ms(void)
{
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
        return 0.0;
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- the cache directory ------------------------------------------------ */

char *mha_cl_cache_dir(mha_host *host, const mha_device_options *options)
{
    char dir[4096];
    if (mha_cache_dir_resolve(host, options ? options->cache_dir : NULL, dir,
                              sizeof dir) != 1)
        return NULL;
    char *s = mha_host_malloc(host, strlen(dir) + 1);
    if (s)
        memcpy(s, dir, strlen(dir) + 1);
    return s;
}

/* ---- cache files ----------------------------------------------------------
 * "MHACLB1\n", key hash, payload size, payload hash (host-endian u64; the
 * key names the machine's device anyway), then the driver's binary. */

static const char cache_magic[8] = {'M', 'H', 'A', 'C', 'L', 'B', '1', '\n'};

typedef struct cache_header {
    char magic[8];
    uint64_t key;
    uint64_t size;
    uint64_t hash;
} cache_header;
_Static_assert(sizeof(cache_header) == MHA_CL_CACHE_HEADER_BYTES,
               "the header is read as bytes");

const char *mha_cl_cache_header_check(const unsigned char *head,
                                      uint64_t key, size_t *size)
{
    cache_header hd;
    memcpy(&hd, head, sizeof hd);
    if (memcmp(hd.magic, cache_magic, sizeof cache_magic) != 0)
        return "bad header";
    if (hd.key != key)
        return "key mismatch";
    if (hd.size == 0 || hd.size > ((uint64_t)1 << 30))
        return "bad size";
    *size = (size_t)hd.size;
    return NULL;
}

bool mha_cl_cache_payload_ok(const unsigned char *head,
                             const unsigned char *bin, size_t size)
{
    cache_header hd;
    memcpy(&hd, head, sizeof hd);
    return hd.size == size && fnv1a(FNV_SEED, bin, size) == hd.hash;
}

/* Reads a valid entry into *bin (host memory, caller frees); NULL when the
 * file is missing or fails any check (reason logged). */
static unsigned char *cache_load(mha_cl_device *dev, const char *path,
                                 uint64_t key, size_t *size)
{
    FILE *f = mha_cache_file_open(dev->host, path);
    if (!f)
        return NULL;
    unsigned char head[MHA_CL_CACHE_HEADER_BYTES];
    unsigned char *bin = NULL;
    size_t n = 0;
    const char *why = NULL;
    if (fread(head, sizeof head, 1, f) != 1)
        why = "bad header";
    else if ((why = mha_cl_cache_header_check(head, key, &n)) != NULL)
        ;
    else if (!(bin = mha_host_malloc(dev->host, n)))
        why = "out of memory";
    else if (fread(bin, 1, n, f) != n || fgetc(f) != EOF)
        why = "truncated or oversized";
    else if (!mha_cl_cache_payload_ok(head, bin, n))
        why = "checksum mismatch";
    fclose(f);
    if (why) {
        mha_host_log(dev->host, MHA_LOG_WARN,
                     "opencl: cache entry %s ignored (%s); rebuilding", path,
                     why);
        mha_host_free(dev->host, bin);
        return NULL;
    }
    *size = n;
    return bin;
}

/* Writes the entry through a temporary file and a rename, so a reader in
 * another process never sees half a file. Failures are logged only. */
static void cache_store(mha_cl_device *dev, const char *path, uint64_t key,
                        const unsigned char *bin, size_t size)
{
    cache_header hd;
    memcpy(hd.magic, cache_magic, sizeof hd.magic);
    hd.key = key;
    hd.size = size;
    hd.hash = fnv1a(FNV_SEED, bin, size);
    int err = mha_cache_file_write(path, &hd, sizeof hd, bin, size);
    if (!err)
        mha_host_log(dev->host, MHA_LOG_DEBUG, "opencl: cached %s (%zu B)",
                     path, size);
    else
        mha_host_log(dev->host, MHA_LOG_WARN,
                     "opencl: cannot write cache %s: %s", path,
                     strerror(err));
}

/* The built program's binary (host memory, caller frees), or NULL. */
static unsigned char *program_binary(mha_cl_device *dev, cl_program p,
                                     size_t *size)
{
    size_t n = 0;
    if (dev->api->clGetProgramInfo(p, CL_PROGRAM_BINARY_SIZES, sizeof n, &n,
                                   NULL) != CL_SUCCESS || n == 0)
        return NULL;
    unsigned char *bin = mha_host_malloc(dev->host, n);
    if (!bin)
        return NULL;
    if (dev->api->clGetProgramInfo(p, CL_PROGRAM_BINARIES, sizeof bin, &bin,
                                   NULL) != CL_SUCCESS) {
        mha_host_free(dev->host, bin);
        return NULL;
    }
    *size = n;
    return bin;
}

/* ---- building ----------------------------------------------------------- */

/* Sets the error of a failed build: call, code, options and the head of
 * the compiler's log (the whole log goes to the log callback). */
static mha_status build_error(mha_cl_device *dev, cl_program p,
                              const char *what, const char *options,
                              cl_int err)
{
    size_t n = 0;
    char *log = NULL;
    if (dev->api->clGetProgramBuildInfo(p, dev->rec->device,
                                        CL_PROGRAM_BUILD_LOG, 0, NULL,
                                        &n) == CL_SUCCESS && n > 0)
        log = mha_host_malloc(dev->host, n + 1);
    if (log && dev->api->clGetProgramBuildInfo(p, dev->rec->device,
                                               CL_PROGRAM_BUILD_LOG, n, log,
                                               NULL) != CL_SUCCESS)
        n = 0;
    if (log)
        log[n] = '\0';
    mha_host_log(dev->host, MHA_LOG_ERROR,
                 "opencl: building %s for %s failed (%s):\n%s", what,
                 dev->rec->name, options, log ? log : "(no log)");
    mha_status s = mha_host_error(
        dev->host, MHA_DEVICE_ERROR,
        "clBuildProgram failed: %s (%d) building %s for %s with \"%.160s\"; "
        "build log: %.600s",
        mha_cl_error_name(err), (int)err, what, dev->rec->name, options,
        log ? log : "(none)");
    mha_host_free(dev->host, log);
    return s;
}

static cl_program build_from_source(mha_cl_device *dev, const kind_spec *ks,
                                    const char *what, const char *options,
                                    mha_status *status)
{
    enum { MAX_FILES = sizeof ks->files / sizeof *ks->files };
    const char *srcs[MAX_FILES];
    size_t lens[MAX_FILES];
    for (int i = 0; i < ks->nfiles && i < MAX_FILES; i++) {
        const mha_embedded_file *f = find_source(ks->files[i]);
        if (!f) {
            *status = mha_host_error(dev->host, MHA_NOT_FOUND,
                                     "opencl: kernel source %s not embedded",
                                     ks->files[i]);
            return NULL;
        }
        srcs[i] = (const char *)f->data;
        lens[i] = f->size;
    }
    cl_int err = CL_SUCCESS;
    cl_program p = dev->api->clCreateProgramWithSource(
        dev->context, (cl_uint)ks->nfiles, srcs, lens, &err);
    if (!p) {
        *status = mha_cl_fail(dev->host, "clCreateProgramWithSource", err);
        return NULL;
    }
    err = mha_fault_due(&dev->st->fault_build)
              ? CL_BUILD_PROGRAM_FAILURE
              : dev->api->clBuildProgram(p, 1, &dev->rec->device, options,
                                         NULL, NULL);
    if (err != CL_SUCCESS) {
        *status = build_error(dev, p, what, options, err);
        dev->api->clReleaseProgram(p);
        return NULL;
    }
    *status = MHA_OK;
    return p;
}

static cl_program build_from_binary(mha_cl_device *dev,
                                    const unsigned char *bin, size_t size,
                                    const char *options)
{
    cl_int err = CL_SUCCESS, bstatus = CL_SUCCESS;
    cl_program p = dev->api->clCreateProgramWithBinary(
        dev->context, 1, &dev->rec->device, &size, &bin, &bstatus, &err);
    if (!p)
        return NULL;
    if (bstatus != CL_SUCCESS ||
        dev->api->clBuildProgram(p, 1, &dev->rec->device, options, NULL,
                                 NULL) != CL_SUCCESS) {
        dev->api->clReleaseProgram(p);
        return NULL;
    }
    return p;
}

static uint64_t cache_key(const mha_cl_device *dev, const kind_spec *ks,
                          const char *options)
{
    uint64_t h = fnv1a(FNV_SEED, dev->rec->key, strlen(dev->rec->key) + 1);
    h = fnv1a(h, options, strlen(options) + 1);
    for (int i = 0; i < ks->nfiles; i++) {
        const mha_embedded_file *f = find_source(ks->files[i]);
        if (f)
            h = fnv1a(h, f->data, f->size);
    }
    return h;
}

/* Builds p->program: from a valid cache entry, else from source (and then
 * stores the binary). */
static mha_status build_program(mha_cl_device *dev, mha_cl_program *p,
                                const char *what, const char *options)
{
    const kind_spec *ks = &kind_specs[p->kind];
    uint64_t key = cache_key(dev, ks, options);
    char path[1024] = "";
    double t0 = now_ms();
    if (dev->cache_dir) {
        snprintf(path, sizeof path, "%s/opencl-%016llx.bin", dev->cache_dir,
                 (unsigned long long)key);
        size_t size = 0;
        unsigned char *bin = cache_load(dev, path, key, &size);
        if (bin) {
            p->program = build_from_binary(dev, bin, size, options);
            mha_host_free(dev->host, bin);
            if (p->program) {
                mha_host_log(dev->host, MHA_LOG_INFO,
                             "opencl: %s loaded from cache %s in %.1f ms",
                             what, path, now_ms() - t0);
                return MHA_OK;
            }
            mha_host_log(dev->host, MHA_LOG_WARN,
                         "opencl: cache entry %s refused by the driver; "
                         "rebuilding", path);
        }
    }
    mha_status s = MHA_OK;
    p->program = build_from_source(dev, ks, what, options, &s);
    if (!p->program)
        return s;
    mha_host_log(dev->host, MHA_LOG_INFO,
                 "opencl: %s built from source in %.1f ms (%s)", what,
                 now_ms() - t0, options);
    if (path[0]) {
        size_t size = 0;
        unsigned char *bin = program_binary(dev, p->program, &size);
        if (bin)
            cache_store(dev, path, key, bin, size);
        mha_host_free(dev->host, bin);
    }
    return MHA_OK;
}

/* Creates the kernels of p and checks each can run the workgroup size the
 * host will use; where one cannot, *allowed is its limit (else 0). */
static mha_status create_kernels(mha_cl_device *dev, mha_cl_program *p,
                                 size_t *allowed)
{
    const kind_spec *ks = &kind_specs[p->kind];
    *allowed = 0;
    for (int k = 0; k < MHA_CL_K_COUNT; k++) {
        if (!ks->kernels[k])
            continue;
        cl_int err = CL_SUCCESS;
        p->kernels[k] = dev->api->clCreateKernel(p->program, ks->kernels[k],
                                                 &err);
        if (!p->kernels[k])
            return mha_host_error(dev->host, MHA_DEVICE_ERROR,
                                  "clCreateKernel(%s) failed: %s (%d)",
                                  ks->kernels[k], mha_cl_error_name(err),
                                  (int)err);
        size_t need = k == MHA_CL_K_GEMM ? (size_t)(dev->tile * dev->tile)
                      : k == MHA_CL_K_ATTENTION || k == MHA_CL_K_ATT_BWD
                          ? (size_t)(p->br * mha_cl_attention_lanes(p))
                          : (size_t)dev->row_wg;
        size_t max = 0;
        err = dev->api->clGetKernelWorkGroupInfo(
            p->kernels[k], dev->rec->device, CL_KERNEL_WORK_GROUP_SIZE,
            sizeof max, &max, NULL);
        if (err == CL_SUCCESS && max < need) {
            *allowed = max;
            return mha_host_error(dev->host, MHA_UNSUPPORTED,
                                  "opencl: kernel %s on %s allows %zu work "
                                  "items per group (CL_KERNEL_WORK_GROUP_SIZE),"
                                  " needs %zu",
                                  ks->kernels[k], dev->rec->name, max, need);
        }
    }
    return MHA_OK;
}

/* ---- the device's program table ----------------------------------------- */

/* Local memory of attention.cl's tiles: Qs (BR x D_MAX), Ks (BC x
 * (D_MAX + CW)), Vs (BC x D_MAX), Ss (BR x BC), Ms and Ls (BR x D_MAX /
 * CW), in floats. */
static size_t attention_local_bytes(const mha_cl_program *p)
{
    return 4 * (size_t)(p->br * p->d_max + p->bc * (p->d_max + p->cw) +
                        p->bc * p->d_max + p->br * p->bc +
                        2 * p->br * mha_cl_attention_lanes(p));
}

/* Attention specialisation for head size d: D_MAX the power of two >= d
 * (>= 4), CW columns per work item (the device's vector width, at most
 * D_MAX), so D_MAX / CW work items a query row; BR rows per group (about
 * attn_wg items), BC keys per tile (64 or fewer) so that the tiles fit the
 * local memory. */
static void attention_shape(const mha_cl_device *dev, int d, mha_cl_program *p)
{
    const mha_cl_limits *lim = &dev->rec->limits;
    p->d_max = 4;
    while (p->d_max < d)
        p->d_max *= 2;
    p->cw = dev->attn_cw < p->d_max ? dev->attn_cw : p->d_max;
    const int lanes = mha_cl_attention_lanes(p);
    p->br = dev->attn_wg / lanes > 1 ? dev->attn_wg / lanes : 1;
    if (dev->attn_br > 0) /* a variant's rows per group */
        p->br = dev->attn_br;
    while ((size_t)(p->br * lanes) > lim->max_workgroup && p->br > 1)
        p->br /= 2;
    p->bc = 64;
    while (p->bc > 1 && attention_local_bytes(p) > lim->local_mem)
        p->bc /= 2;
}

/* Local memory of attention_backward.cl: own rows X1, X2 (BR x (D_MAX +
 * CW)), streamed rows Y1, Y2 (BC x D_MAX), Ps and Ds (BC x BR), Lq and Dq
 * (BC + BR), in floats. */
static size_t attention_bwd_local_bytes(const mha_cl_program *p)
{
    return 4 * (size_t)(2 * p->br * (p->d_max + p->cw) +
                        2 * p->bc * p->d_max + 2 * p->bc * p->br +
                        2 * (p->bc + p->br));
}

/* Backward specialisation for head size d: D_MAX as the forward's, CW
 * the device's vector width but at least D_MAX / 16 (at most 16 items
 * an own row: an item holds two CW-wide accumulators), BR own rows (about
 * attn_wg items), BC = BR streamed rows per tile, then BC and BR halved in
 * turn until the tiles fit the local memory. */
static void attention_bwd_shape(const mha_cl_device *dev, int d,
                                mha_cl_program *p)
{
    const mha_cl_limits *lim = &dev->rec->limits;
    p->d_max = 4;
    while (p->d_max < d)
        p->d_max *= 2;
    p->cw = dev->attn_cw;
    while (p->cw < 16 && p->d_max / p->cw > 16)
        p->cw *= 2;
    if (p->cw > p->d_max)
        p->cw = p->d_max;
    const int lanes = mha_cl_attention_lanes(p);
    p->br = dev->attn_wg / lanes > 1 ? dev->attn_wg / lanes : 1;
    while ((size_t)(p->br * lanes) > lim->max_workgroup && p->br > 1)
        p->br /= 2;
    p->bc = p->br;
    while (attention_bwd_local_bytes(p) > lim->local_mem &&
           (p->bc > 1 || p->br > 1)) {
        if (p->bc >= p->br && p->bc > 1)
            p->bc /= 2;
        else
            p->br /= 2;
    }
}

static void format_options(const mha_cl_device *dev, const mha_cl_program *p,
                           char *out, size_t cap)
{
    const char *extra = mha_host_getenv(dev->host, "MHA_OPENCL_BUILD_OPTIONS");
    int n = snprintf(out, cap,
                     "-cl-std=CL1.2 -D TS=%d -D WPT=%d -D BK=%d -D ROW_WG=%d "
                     "-D DIRECT=%d -D VW=%d",
                     dev->tile, dev->wpt, dev->bk, dev->row_wg, dev->direct,
                     dev->vw);
    if (p->kind != MHA_CL_PROG_OPS && n > 0 && (size_t)n < cap)
        n += snprintf(out + n, cap - (size_t)n,
                      " -D D_MAX=%d -D BR=%d -D BC=%d -D CW=%d", p->d_max,
                      p->br, p->bc, p->cw);
    if (extra && extra[0] && n > 0 && (size_t)n < cap)
        snprintf(out + n, cap - (size_t)n, " %s", extra);
}

static void program_release(const mha_cl_api *api, mha_cl_program *p)
{
    for (int k = 0; k < MHA_CL_K_COUNT; k++)
        if (p->kernels[k])
            api->clReleaseKernel(p->kernels[k]);
    if (p->program)
        api->clReleaseProgram(p->program);
    memset(p, 0, sizeof *p);
}

void mha_cl_programs_release(mha_cl_device *dev)
{
    for (int i = 0; i < dev->nprograms; i++)
        program_release(dev->api, &dev->programs[i]);
    dev->nprograms = 0;
}

/* Shrinks what sets the workgroup of the kernel that allowed only
 * allowed items: BR of an attention program, the gemm tile of the ops
 * program (the other ops kernels' groups are the device's row_wg, which
 * nothing shrinks). Returns whether anything changed. */
static int shrink_for(mha_cl_device *dev, mha_cl_program *want,
                      size_t allowed)
{
    if (want->kind != MHA_CL_PROG_OPS) {
        const int br = want->br;
        while ((size_t)(want->br * mha_cl_attention_lanes(want)) > allowed &&
               want->br > 1)
            want->br /= 2;
        return want->br != br;
    }
    const int tile = dev->tile;
    while ((size_t)(dev->tile * dev->tile) > allowed && dev->tile > 1)
        dev->tile /= 2;
    return dev->tile != tile;
}

mha_status mha_cl_program_get(mha_cl_device *dev, mha_cl_prog_kind kind,
                              int d, mha_cl_program **out)
{
    mha_cl_program want;
    memset(&want, 0, sizeof want);
    want.kind = kind;
    if (kind == MHA_CL_PROG_ATTENTION)
        attention_shape(dev, d, &want);
    if (kind == MHA_CL_PROG_ATTENTION_BWD)
        attention_bwd_shape(dev, d, &want);
    /* The knobs a variant sets (tune.c) are part of the key. */
    const int asked[2][5] = {
        {dev->tile, dev->wpt, dev->bk, dev->direct, dev->vw},
        {dev->attn_cw, dev->attn_wg, dev->attn_br, 0, 0}};
    memcpy(want.knobs, asked[kind == MHA_CL_PROG_ATTENTION],
           sizeof want.knobs);
    for (int i = 0; i < dev->nprograms; i++) {
        mha_cl_program *p = &dev->programs[i];
        if (p->kind == kind && p->d_max == want.d_max &&
            !memcmp(p->knobs, want.knobs, sizeof want.knobs)) {
            if (kind == MHA_CL_PROG_OPS)
                dev->tile = p->built_tile;
            *out = p;
            return MHA_OK;
        }
    }
    if (dev->nprograms == MHA_CL_MAX_PROGRAMS)
        return mha_host_error(dev->host, MHA_UNSUPPORTED,
                              "opencl: more than %d program variants",
                              MHA_CL_MAX_PROGRAMS);
    char what[64];
    if (kind == MHA_CL_PROG_OPS)
        snprintf(what, sizeof what, "ops program");
    else
        snprintf(what, sizeof what, "attention%s program (D_MAX %d)",
                 kind == MHA_CL_PROG_ATTENTION_BWD ? " backward" : "",
                 want.d_max);
    mha_cl_program *p = &dev->programs[dev->nprograms];
    mha_status s;
    for (;;) {
        char options[512];
        size_t allowed = 0;
        *p = want;
        format_options(dev, p, options, sizeof options);
        s = build_program(dev, p, what, options);
        if (s == MHA_OK)
            s = create_kernels(dev, p, &allowed);
        if (s == MHA_OK)
            break;
        program_release(dev->api, p);
        /* Registers can cap a kernel's workgroup below the device's; the
         * attention kernel then takes fewer query rows per group, the gemm
         * (8 x 8 accumulators an item on a GPU) a smaller tile. */
        if (allowed == 0 || !shrink_for(dev, &want, allowed))
            return s;
        mha_host_log(dev->host, MHA_LOG_INFO,
                     "opencl: %s retried with BR %d, gemm tile %d", what,
                     want.br, dev->tile);
    }
    p->built_tile = dev->tile;
    dev->nprograms++;
    *out = p;
    return MHA_OK;
}
