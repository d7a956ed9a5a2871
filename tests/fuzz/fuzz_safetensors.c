/* fuzz_safetensors.c: libFuzzer harness of the safetensors loader. The
 * input is a whole .safetensors file (written to an in-memory file, since
 * the loader takes a path): core/safetensors.c must parse and validate it,
 * list and read every tensor it accepted, and mha_layer_load_safetensors
 * must load it into a small layer or refuse it, never reading out of
 * bounds or leaking. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "interop.h"
#include "safetensors.h"

/* The input as a file: a memfd, rewritten each run. */
static const char *as_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz.safetensors", 0);
        if (fd < 0)
            abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 ||
        (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    return path;
}

/* Every accepted entry read back, when small enough to hold. */
static void read_all(mha_st_file *f)
{
    for (int i = 0; i < mha_st_count(f); i++) {
        const mha_st_entry *e = mha_st_entry_at(f, i);
        uint64_t bytes = e->end - e->begin;
        if (bytes > (1u << 20) || e->count > (1u << 18))
            continue;
        void *raw = malloc(bytes ? bytes : 1);
        if (raw && mha_st_read_raw(f, e, raw) == MHA_OK &&
            mha_st_is_float(e)) {
            float *dst = malloc(e->count ? e->count * sizeof *dst : 1);
            if (dst)
                mha_st_read_f32(f, e, dst);
            free(dst);
        }
        free(raw);
        (void)mha_st_find(f, e->name);
    }
    (void)mha_st_metadata(f, "format");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mha_context *ctx = fuzz_context();
    const char *path = as_file(data, size);
    mha_st_file *f = NULL;
    if (mha_st_open(mha_context_host(ctx), path, &f) == MHA_OK) {
        read_all(f);
        mha_st_close(f);
    }
    /* The public path: a layer E=4, H=2 with biases and bias_k/bias_v,
     * and one with kdim 2, vdim 3 (separate projections). */
    for (int v = 0; v < 2; v++) {
        mha_layer_config cfg;
        mha_layer_config_init(&cfg, 4, 2);
        cfg.add_bias_kv = v == 0;
        cfg.kdim = v ? 2 : 0;
        cfg.vdim = v ? 3 : 0;
        mha_layer *layer = NULL;
        if (mha_layer_create(fuzz_cpu(), &cfg, &layer) != MHA_OK)
            abort();
        mha_layer_load_safetensors(layer, path, v ? "m." : NULL);
        mha_layer_destroy(layer);
    }
    return 0;
}
