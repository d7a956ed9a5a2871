/* api_common.h: what the test_api_*.c suites share: a cpu layer fixture
 * (fx), the host arrays of one valid forward (io), and checks of statuses,
 * messages and untouched outputs. */
#ifndef MHA_TEST_API_COMMON_H
#define MHA_TEST_API_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "mha.h"

#define CAP 512       /* floats per test array, more than any case needs */
#define SENTINEL 12345.0f

typedef struct fx {
    mha_context *ctx;
    mha_device *dev;
    mha_layer *layer;
    mha_layer_config cfg; /* kdim and vdim resolved */
} fx;

/* Host arrays of one forward: L = 3, S = 4, N = 2, (L, N, E) layout. */
enum { L_ = 3, S_ = 4, N_ = 2 };

typedef struct io {
    float q[CAP], k[CAP], v[CAP], mask[CAP], out[CAP], w[CAP];
    uint8_t kpm[CAP];
    mha_host_forward_args a;
} io;

void fill(float *p, size_t n, unsigned seed);
int contains(const char *hay, const char *needle);
mha_context *new_context(void);
mha_device *open_cpu(mha_context *ctx);
void set_weight(mha_layer *layer, const char *name, int ndim,
                int64_t d0, int64_t d1, int64_t d2, unsigned seed);
void set_weights_except(mha_layer *layer, const mha_layer_config *c,
                        const char *skip);
void fx_init_cfg(fx *f, const mha_layer_config *cfg, int weights);
void fx_init(fx *f, int64_t kdim, int64_t vdim);
void fx_fini(fx *f);
void set_array(mha_host_array *a, const void *data, mha_dtype dtype,
               int ndim, int64_t d0, int64_t d1, int64_t d2);
void io_init(io *o, const fx *f);
void expect_forward_ok(fx *f, const char *after);
void expect_error(mha_context *ctx, const char *name, mha_status got,
                  mha_status want, const char *const *needles,
                  int count);
int untouched(const float *p, size_t n);

#endif
