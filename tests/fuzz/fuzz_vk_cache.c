/* fuzz_vk_cache.c: libFuzzer harness of the Vulkan pipeline-cache file
 * checks (backends/vulkan/cache.c: libmha's header, then the driver's
 * VkPipelineCacheHeaderVersionOne), which decide whether a file's bytes are
 * ever given to the driver. The input is the file; when bytes trail the
 * data its header declares, the harness fixes the checksum up first, so
 * the fuzzer also reaches the driver-header checks behind it. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "vk_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const size_t head = MHA_VK_CACHE_HEADER_BYTES;
    if (size < head)
        return 0;
    /* The device of the seeds: vendor 0x10005 (Mesa), device 0, UUID 0..15. */
    VkPhysicalDeviceProperties p;
    memset(&p, 0, sizeof p);
    p.vendorID = 0x10005;
    for (int i = 0; i < (int)VK_UUID_SIZE; i++)
        p.pipelineCacheUUID[i] = (uint8_t)i;
    uint8_t *copy = malloc(size);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    size_t n = mha_vk_cache_blob_size(copy);
    if (n && n <= size - head) {
        if (size > head + n) {
            uint64_t h = fuzz_fnv1a(copy + head, n);
            for (int i = 0; i < 8; i++)
                copy[16 + i] = (uint8_t)(h >> (8 * i));
        }
        /* exactly n bytes of driver data, in their own allocation so a
         * read past them is caught */
        uint8_t *blob = malloc(n);
        if (blob) {
            memcpy(blob, copy + head, n);
            (void)mha_vk_cache_blob_valid(copy, blob, n, &p);
            free(blob);
        }
    }
    free(copy);
    return 0;
}
