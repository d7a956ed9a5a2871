/* fuzz_common.c: the shared context, cpu device and input reader of the
 * harnesses (fuzz.h). */
#include <stdlib.h>

#include "fuzz.h"

mha_context *fuzz_context(void)
{
    static mha_context *ctx;
    if (!ctx) {
        /* No Vulkan ICD and no OpenCL vendor: probing finds neither. */
        setenv("VK_ICD_FILENAMES", "/nonexistent", 1);
        setenv("VK_DRIVER_FILES", "/nonexistent", 1);
        setenv("OCL_ICD_VENDORS", "/nonexistent", 1);
        if (mha_context_create(NULL, &ctx) != MHA_OK)
            abort();
    }
    return ctx;
}

mha_device *fuzz_cpu(void)
{
    static mha_device *dev;
    if (!dev) {
        mha_device_options o;
        mha_device_options_init(&o);
        o.threads = 1;
        if (mha_device_open(fuzz_context(), "cpu", &o, &dev) != MHA_OK)
            abort();
    }
    return dev;
}

uint8_t fuzz_u8(fuzz_in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

int64_t fuzz_dim(fuzz_in *in)
{
    static const int64_t edges[] = {0, -1, 1 << 20, (1 << 20) + 1,
                                    INT32_MAX, (int64_t)1 << 40, INT64_MAX,
                                    INT64_MIN};
    uint8_t b = fuzz_u8(in);
    if (b >= 0xf8)
        return edges[b - 0xf8];
    return b & 0x0f;
}

uint64_t fuzz_fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}
