/* fuzz_cl_cache.c: libFuzzer harness of the OpenCL program-binary cache
 * checks (backends/opencl/program.c: magic, key, size bounds, payload
 * hash), which decide whether an entry's bytes are ever given to
 * clCreateProgramWithBinary. The input is the entry; when bytes trail the
 * payload its header declares, the harness fixes the hash up first, so the
 * fuzzer reaches the accepting path too. */
#include <stdlib.h>
#include <string.h>

#include "cl_internal.h"
#include "fuzz.h"

#define KEY 0x0123456789abcdefull /* the key of the seeds */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const size_t head = MHA_CL_CACHE_HEADER_BYTES;
    if (size < head)
        return 0;
    uint8_t hd[MHA_CL_CACHE_HEADER_BYTES];
    memcpy(hd, data, head);
    size_t n = 0;
    if (mha_cl_cache_header_check(hd, KEY, &n) != NULL || n > size - head)
        return 0;
    uint8_t *bin = malloc(n);
    if (!bin)
        return 0;
    memcpy(bin, data + head, n);
    if (size > head + n) {
        uint64_t h = fuzz_fnv1a(bin, n);
        memcpy(hd + 24, &h, 8);
    }
    (void)mha_cl_cache_payload_ok(hd, bin, n);
    free(bin);
    return 0;
}
