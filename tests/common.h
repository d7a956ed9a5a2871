/* common.h: what the suites share: the list of devices to run on (every
 * device of every backend, and every ISA the CPU backend can run here), a
 * seeded random source, result comparison with NaN/Inf awareness, a log
 * collector and temporary directories. */
#ifndef MHA_TEST_COMMON_H
#define MHA_TEST_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "mha.h"

#define TEST_MAX_DEVICES 16

typedef struct test_device {
    char label[48]; /* "cpu/avx2", "vulkan:0", "opencl:0" */
    int index;      /* in the context's ranked list */
    const char *isa; /* CPU only, else NULL */
} test_device;

/* Every device and CPU ISA of ctx, filtered by MHA_TEST_DEVICE (a
 * comma-separated list of label prefixes) when it is set. */
int test_devices(mha_context *ctx, test_device *out, int cap);

/* Opens td or fails the test with the context's message. */
mha_device *test_open(mha_context *ctx, const test_device *td);

/* Fails the test when a backend required by MHA_REQUIRE (a comma list such
 * as "vulkan,opencl") has no device, so CI can never skip one silently. */
void test_require_backends(mha_context *ctx);

/* Runs on(ctx, td) for every device of test_devices in a new context,
 * after test_require_backends (none at all fails the test); the context
 * is destroyed afterwards. */
void test_each_device(void (*on)(mha_context *ctx, const test_device *td));

/* Log lines of a context (INFO and up), collected for assertions. */
typedef struct test_log {
    char text[1 << 15];
    size_t len;
} test_log;

/* Sets o's log hook to collect into log, which it clears. */
void test_log_to(mha_context_options *o, test_log *log);

/* A new empty directory under $TMPDIR (else /tmp) into path, and rm -r. */
void test_temp_dir(char *path, size_t cap);
void test_remove_tree(const char *dir);

/* Whether td's backend implements the attention core, so that it may not
 * decline an attention-core case (test_ops' CORE_CASES, test_attention):
 * the backends in the list in common.c; a backend joins it when it lands. */
int test_core_required(const test_device *td);

/* Whether td's backend implements the training ops (MATMUL, SUM_ROWS,
 * ATTENTION_BACKWARD, ADAMW, ATTENTION's saved LSE), so that it may not
 * decline a training case of test_ops: the list in common.c. */
int test_training_required(const test_device *td);

typedef struct test_rng {
    uint64_t state;
} test_rng;

float test_uniform(test_rng *r); /* [0, 1) */
float test_normal(test_rng *r);

typedef struct test_diff {
    double max_abs;   /* over finite expected values */
    double nmse;      /* sum (got-want)^2 / sum want^2 */
    size_t worst;     /* index of max_abs */
    size_t nonfinite_mismatch; /* NaN/Inf that differ, first at worst_nf */
    size_t worst_nf;
} test_diff;

/* Compares got[i*got_stride...] with want (contiguous doubles). */
test_diff test_compare(const float *got, const double *want, size_t n);

/* The PyTorch fixtures (.safetensors written by tests/gen_*_fixtures.py):
 * tensor name as f32 (malloc'd; NULL when the file has none; nd and shape
 * filled when not NULL), and numeric metadata key (asserted present). */
typedef struct mha_st_file mha_st_file;
float *fixture_floats(mha_st_file *f, const char *name, int *nd,
                      int64_t *shape);
double fixture_meta(mha_st_file *f, const char *key);

#endif
