/* backend.c: the CPU backend's mha_backend_iface: one device (this CPU),
 * host-memory buffers, and the ISA table picked at open time from the
 * CPU's features, the cpu_isa option or MHA_CPU_ISA. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cpu_features.h"
#include "huge_pages.h"
#include "ops.h"

typedef struct cpu_state {
    mha_host *host;
} cpu_state;

typedef struct cpu_device {
    mha_cpu_exec exec;
} cpu_device;

static const mha_cpu_kernels *isa_table(const char *isa)
{
    if (strcmp(isa, "scalar") == 0)
        return mha_cpu_kernels_scalar();
    if (strcmp(isa, "avx2") == 0)
        return mha_cpu_kernels_avx2();
    if (strcmp(isa, "avx512") == 0)
        return mha_cpu_kernels_avx512();
    if (strcmp(isa, "neon") == 0)
        return mha_cpu_kernels_neon();
    return NULL;
}

static const mha_cpu_kernels *best_table(void)
{
    static const char *const order[] = {"avx512", "avx2", "neon", "scalar"};
    for (size_t i = 0; i < sizeof order / sizeof *order; i++)
        if (isa_table(order[i]))
            return isa_table(order[i]);
    return mha_cpu_kernels_scalar();
}

const mha_cpu_kernels *mha_cpu_kernels_named(const char *isa)
{
    return isa && *isa ? isa_table(isa) : best_table();
}

static void available_isas(char *buf, size_t size)
{
    static const char *const all[] = {"scalar", "avx2", "avx512", "neon"};
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof all / sizeof *all && used < size; i++)
        if (isa_table(all[i]))
            used += (size_t)snprintf(buf + used, size - used, "%s%s",
                                     used ? ", " : "", all[i]);
}

/* Reads "key : value" from /proc/cpuinfo; leaves out untouched if absent. */
static void cpuinfo_field(const char *key, char *out, size_t size)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon || strncmp(line, key, strlen(key)) != 0)
            continue;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        v[strcspn(v, "\n")] = '\0';
        snprintf(out, size, "%s", v);
        break;
    }
    fclose(f);
}

static void describe_cpu(mha_device_desc *d)
{
    memset(d, 0, sizeof *d);
    d->kind = MHA_DEVICE_CPU;
    snprintf(d->vendor, sizeof d->vendor, "unknown");
    snprintf(d->name, sizeof d->name, "CPU");
    cpuinfo_field("vendor_id", d->vendor, sizeof d->vendor);
    cpuinfo_field("CPU implementer", d->vendor, sizeof d->vendor);
    cpuinfo_field("model name", d->name, sizeof d->name);
    snprintf(d->driver, sizeof d->driver, "libmha cpu %s", MHA_VERSION_STRING);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0)
        d->memory_bytes = (uint64_t)pages * (uint64_t)page;
    d->max_buffer_bytes = d->memory_bytes;
    d->features = mha_cpu_features() | MHA_FEATURE_FUSED_ATTENTION;
    d->compute_units = (uint32_t)mha_cpu_core_count();
    char isas[64];
    available_isas(isas, sizeof isas);
    snprintf(d->details, sizeof d->details, "isa: %s (best %s); threads: %d",
             isas, best_table()->isa, mha_cpu_core_count());
}

static mha_status cpu_init(mha_host *host, void **state,
                           mha_device_desc *descs, int cap, int *count)
{
    cpu_state *s = mha_host_calloc(host, 1, sizeof *s);
    if (!s)
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "cpu: out of memory");
    s->host = host;
    *state = s;
    *count = 0;
    if (cap > 0) {
        describe_cpu(&descs[0]);
        *count = 1;
    }
    return MHA_OK;
}

static void cpu_fini(void *state)
{
    cpu_state *s = state;
    mha_host_free(s->host, s);
}

static mha_status pick_table(mha_host *host, const mha_device_options *o,
                             const mha_cpu_kernels **out)
{
    const char *isa = o->cpu_isa;
    const char *origin = "cpu_isa";
    if (!isa) {
        isa = mha_host_getenv(host, "MHA_CPU_ISA");
        origin = "MHA_CPU_ISA";
    }
    if (!isa || !*isa) {
        *out = best_table();
        return MHA_OK;
    }
    *out = isa_table(isa);
    if (*out)
        return MHA_OK;
    char isas[64];
    available_isas(isas, sizeof isas);
    return mha_host_error(host, MHA_UNSUPPORTED,
                          "cpu: %s \"%s\" is not available on "
                          "this CPU; available: %s",
                          origin, isa, isas);
}

static mha_status cpu_open(void *state, int index,
                           const mha_device_options *options, void **dev)
{
    cpu_state *s = state;
    const mha_cpu_kernels *table;
    (void)index;
    mha_status st = pick_table(s->host, options, &table);
    if (st != MHA_OK)
        return st;
    cpu_device *d = mha_host_calloc(s->host, 1, sizeof *d);
    if (!d)
        return mha_host_error(s->host, MHA_OUT_OF_MEMORY,
                              "cpu: out of memory");
    int threads = options->threads ? options->threads : mha_cpu_core_count();
    st = mha_cpu_exec_init(&d->exec, s->host, table, threads);
    if (st != MHA_OK) {
        mha_cpu_exec_fini(&d->exec);
        mha_host_free(s->host, d);
        return st;
    }
    *dev = d;
    return MHA_OK;
}

static void cpu_close(void *dev)
{
    cpu_device *d = dev;
    mha_host *host = d->exec.host;
    mha_cpu_exec_fini(&d->exec);
    mha_host_free(host, d);
}

/* A buffer is an aligned block; the pointer malloc gave sits just before.
 * A large one is huge-page aligned and asks for huge pages (huge_pages.h). */
static mha_status cpu_buffer_alloc(void *dev, size_t size, void **buf)
{
    cpu_device *d = dev;
    size_t align = mha_cpu_buffer_align(size);
    size_t total = size + align + sizeof(void *);
    if (total < size)
        return mha_host_error(d->exec.host, MHA_OVERFLOW,
                              "cpu: buffer of %zu bytes overflows", size);
    char *raw = mha_host_malloc(d->exec.host, total);
    if (!raw)
        return mha_host_error(d->exec.host, MHA_OUT_OF_MEMORY,
                              "cpu: out of memory allocating %zu bytes", size);
    uintptr_t p = ((uintptr_t)raw + sizeof(void *) + align - 1) &
                  ~(uintptr_t)(align - 1);
    ((void **)p)[-1] = raw;
    mha_cpu_advise_huge((void *)p, size);
    *buf = (void *)p;
    return MHA_OK;
}

static void cpu_buffer_free(void *dev, void *buf)
{
    cpu_device *d = dev;
    mha_host_free(d->exec.host, ((void **)buf)[-1]);
}

static mha_status cpu_buffer_write(void *dev, void *buf, size_t offset,
                                   const void *src, size_t size)
{
    (void)dev;
    memcpy((char *)buf + offset, src, size);
    return MHA_OK;
}

static mha_status cpu_buffer_read(void *dev, void *buf, size_t offset,
                                  void *dst, size_t size)
{
    (void)dev;
    memcpy(dst, (const char *)buf + offset, size);
    return MHA_OK;
}

static bool cpu_supports(void *dev, const mha_node *node)
{
    (void)dev;
    return mha_cpu_op_supported(node);
}

static mha_status cpu_run(void *dev, const mha_node *node)
{
    cpu_device *d = dev;
    return mha_cpu_op_run(&d->exec, node);
}

/* Ops run synchronously on the pool, so there is nothing to wait for. */
static mha_status cpu_sync(void *dev)
{
    (void)dev;
    return MHA_OK;
}

/* No device clock: run() finishes its work before returning, so the core's
 * host clock around it is the node's time. */
static mha_status cpu_timer_mark(void *dev, int slot)
{
    (void)dev;
    (void)slot;
    return MHA_UNSUPPORTED;
}

static mha_status cpu_timer_read(void *dev, int count, uint64_t *ns)
{
    (void)dev;
    (void)count;
    (void)ns;
    return MHA_UNSUPPORTED;
}

/* One set of kernels per ISA, chosen at open: no tuning variants. */
static int cpu_variants(void *dev, mha_op op, const char **names, int cap)
{
    (void)dev;
    (void)op;
    (void)names;
    (void)cap;
    return 0;
}

const mha_backend_iface mha_cpu_backend = {
    .version = MHA_BACKEND_IFACE_VERSION,
    .name = "cpu",
    .init = cpu_init,
    .fini = cpu_fini,
    .open = cpu_open,
    .close = cpu_close,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_write = cpu_buffer_write,
    .buffer_read = cpu_buffer_read,
    .supports = cpu_supports,
    .run = cpu_run,
    .sync = cpu_sync,
    .timer_mark = cpu_timer_mark,
    .timer_read = cpu_timer_read,
    .variants = cpu_variants,
};
