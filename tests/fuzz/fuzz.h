/* fuzz.h: what the libFuzzer harnesses of tests/fuzz share: one context
 * per process, made with the GPU drivers hidden so only the cpu device is
 * probed (the harnesses fuzz the core's checks, not the drivers), and its
 * cpu device on one thread. */
#ifndef MHA_FUZZ_H
#define MHA_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "mha.h"

mha_context *fuzz_context(void);
mha_device *fuzz_cpu(void);

/* Reads fuzz input front to back; past the end every read is 0. */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

uint8_t fuzz_u8(fuzz_in *in);
/* A dimension or count: mostly small, sometimes an edge (0, -1, huge). */
int64_t fuzz_dim(fuzz_in *in);

/* FNV-1a, the checksum of both cache formats, so the cache harnesses can
 * make a file whose checksum holds. */
uint64_t fuzz_fnv1a(const uint8_t *p, size_t n);

#endif
