/* mha-info: lists every device libmha finds on this machine, ranked best
 * first, with its limits and features, and marks the device a program gets
 * by default (honouring MHA_DEVICE). --json prints the same for scripts. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mha.h"

static const char usage[] =
    "usage: mha-info [--json] [--help]\n"
    "\n"
    "Lists every device of every backend compiled into libmha, best ranked\n"
    "first (discrete GPU > integrated GPU > native CPU > software GPU such\n"
    "as lavapipe or PoCL), with its limits and features. The device marked\n"
    "'*' is the one opened by default: the MHA_DEVICE environment variable\n"
    "(best, cpu, vulkan, opencl, or backend:index such as vulkan:0) when it\n"
    "is set, else the best ranked.\n"
    "\n"
    "  --json   print a JSON object {version, default, devices: [...]};\n"
    "           each device has a spec (\"vulkan:0\") that MHA_DEVICE\n"
    "           accepts, features as an array of names and, for the CPU\n"
    "           backend, cpu_isa {available: [best first], best}\n"
    "  --help   print this text\n"
    "\n"
    "MHA_LOG=info shows why a backend found no device.\n"
    "Exit status: 0, 1 when MHA_DEVICE names no usable device or no device\n"
    "was found, 2 on a bad argument.\n";

static const char *kind_name(mha_device_kind kind)
{
    static const char *const names[] = {"discrete-gpu", "integrated-gpu",
                                        "virtual-gpu", "cpu", "software",
                                        "other"};
    return (unsigned)kind <= MHA_DEVICE_OTHER ? names[kind] : "unknown";
}

static const struct {
    uint32_t bit;
    const char *name;
} feature_names[] = {
    {MHA_FEATURE_FP16_STORAGE, "fp16-storage"},
    {MHA_FEATURE_FP16_MATH, "fp16-math"},
    {MHA_FEATURE_SUBGROUPS, "subgroups"},
    {MHA_FEATURE_FUSED_ATTENTION, "fused-attention"},
    {MHA_FEATURE_AVX2, "avx2"},
    {MHA_FEATURE_AVX512, "avx512"},
    {MHA_FEATURE_NEON, "neon"},
};
enum { FEATURE_COUNT = sizeof feature_names / sizeof *feature_names };

static void feature_list(uint32_t f, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < FEATURE_COUNT && used < size; i++)
        if (f & feature_names[i].bit)
            used += (size_t)snprintf(buf + used, size - used, "%s%s",
                                     used ? " " : "", feature_names[i].name);
}

static cJSON *feature_array(uint32_t f)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < FEATURE_COUNT; i++)
        if (f & feature_names[i].bit)
            cJSON_AddItemToArray(arr,
                                 cJSON_CreateString(feature_names[i].name));
    return arr;
}

/* A CPU device's kernel sets from its feature bits (scalar always runs),
 * best first in the backend's own order, and the one it uses unless
 * MHA_CPU_ISA or the cpu_isa option picks another. */
static cJSON *cpu_isa_json(uint32_t f)
{
    static const struct {
        uint32_t bit;
        const char *name;
    } isas[] = {{MHA_FEATURE_AVX512, "avx512"},
                {MHA_FEATURE_AVX2, "avx2"},
                {MHA_FEATURE_NEON, "neon"},
                {0, "scalar"}};
    cJSON *o = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(o, "available");
    for (size_t i = 0; i < sizeof isas / sizeof *isas; i++) {
        if (isas[i].bit && !(f & isas[i].bit))
            continue;
        if (!cJSON_GetObjectItem(o, "best"))
            cJSON_AddStringToObject(o, "best", isas[i].name);
        cJSON_AddItemToArray(arr, cJSON_CreateString(isas[i].name));
    }
    return o;
}

/* The index mha_device_open(ctx, NULL, ...) picks, or -1 with a message. */
static int default_index(mha_context *ctx)
{
    mha_device *dev;
    mha_device_info info;
    if (mha_device_open(ctx, NULL, NULL, &dev) != MHA_OK) {
        fprintf(stderr, "mha-info: %s\n", mha_context_errmsg(ctx));
        return -1;
    }
    mha_device_info_of(dev, &info);
    mha_device_destroy(dev);
    return info.index;
}

static void print_text(const mha_device_info *d, int is_default)
{
    char features[160];
    feature_list(d->features, features, sizeof features);
    printf("%c %d  %s:%d  %s  [%s, score %d]\n", is_default ? '*' : ' ',
           d->index, d->backend, d->backend_index, d->name,
           kind_name(d->kind), d->score);
    printf("      vendor: %s; driver: %s\n", d->vendor, d->driver);
    printf("      memory: %.1f GiB; max buffer: %.1f MiB; compute units: %u\n",
           (double)d->memory_bytes / (1u << 30),
           (double)d->max_buffer_bytes / (1u << 20), d->compute_units);
    if (d->max_workgroup_size)
        printf("      workgroup: %u; shared memory: %u B; subgroup: %u\n",
               d->max_workgroup_size, d->shared_memory_bytes,
               d->subgroup_size);
    printf("      features: %s\n", *features ? features : "-");
    if (d->details[0])
        printf("      %s\n", d->details);
}

static cJSON *device_json(const mha_device_info *d, int is_default)
{
    char spec[48];
    snprintf(spec, sizeof spec, "%s:%d", d->backend, d->backend_index);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", d->index);
    cJSON_AddStringToObject(o, "spec", spec);
    cJSON_AddStringToObject(o, "backend", d->backend);
    cJSON_AddNumberToObject(o, "backend_index", d->backend_index);
    cJSON_AddStringToObject(o, "kind", kind_name(d->kind));
    cJSON_AddStringToObject(o, "vendor", d->vendor);
    cJSON_AddStringToObject(o, "name", d->name);
    cJSON_AddStringToObject(o, "driver", d->driver);
    cJSON_AddNumberToObject(o, "memory_bytes", (double)d->memory_bytes);
    cJSON_AddNumberToObject(o, "max_buffer_bytes", (double)d->max_buffer_bytes);
    cJSON_AddNumberToObject(o, "compute_units", d->compute_units);
    cJSON_AddNumberToObject(o, "max_workgroup_size", d->max_workgroup_size);
    cJSON_AddNumberToObject(o, "shared_memory_bytes", d->shared_memory_bytes);
    cJSON_AddNumberToObject(o, "subgroup_size", d->subgroup_size);
    cJSON_AddItemToObject(o, "features", feature_array(d->features));
    if (d->kind == MHA_DEVICE_CPU && strcmp(d->backend, "cpu") == 0)
        cJSON_AddItemToObject(o, "cpu_isa", cpu_isa_json(d->features));
    cJSON_AddNumberToObject(o, "score", d->score);
    cJSON_AddBoolToObject(o, "default", is_default);
    cJSON_AddStringToObject(o, "details", d->details);
    return o;
}

static int list(mha_context *ctx, int json)
{
    int count = 0, def = default_index(ctx);
    mha_device_count(ctx, &count);
    cJSON *root = json ? cJSON_CreateObject() : NULL;
    cJSON *arr = json ? cJSON_AddArrayToObject(root, "devices") : NULL;
    if (json) {
        cJSON_AddStringToObject(root, "version", mha_version());
        cJSON_AddNumberToObject(root, "default", def);
    } else {
        printf("libmha %s: %d device(s), best first; * = default\n",
               mha_version(), count);
    }
    for (int i = 0; i < count; i++) {
        mha_device_info info;
        mha_device_get_info(ctx, i, &info);
        if (json)
            cJSON_AddItemToArray(arr, device_json(&info, i == def));
        else
            print_text(&info, i == def);
    }
    if (json) {
        char *text = cJSON_Print(root);
        puts(text);
        cJSON_free(text);
        cJSON_Delete(root);
    }
    return def < 0 || count == 0;
}

int main(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--help") == 0 ||
                   strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "mha-info: unknown argument '%s'\n\n%s", argv[i],
                    usage);
            return 2;
        }
    }
    mha_context *ctx;
    mha_status st = mha_context_create(NULL, &ctx);
    if (st != MHA_OK) {
        fprintf(stderr, "mha-info: cannot create a context: %s\n",
                mha_status_str(st));
        return 1;
    }
    int rc = list(ctx, json);
    mha_context_destroy(ctx);
    return rc;
}
