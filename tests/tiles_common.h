/* tiles_common.h: what the GPU backends' tile-skipping tests
 * (test_opencl_tiles.c, test_vulkan_tiles.c) share: an unmasked ATTENTION
 * node over [1, H, T, D] head views of [T, H * D] buffers, a counter
 * buffer for the backend's test hook, and one run that reads the count. */
#ifndef MHA_TILES_COMMON_H
#define MHA_TILES_COMMON_H

#include "common.h"
#include "context.h"

typedef struct tiles_case {
    mha_device *dev;
    mha_node node;
    void *buf[4], *counter; /* Q, K, V, O; the count (an int) */
    size_t bytes;           /* of each of buf */
} tiles_case;

/* Allocates and fills the node's tensors and the counter on dev. */
void tiles_open(tiles_case *c, mha_device *dev, int H, int T, int D);
/* Zeroes the counter, runs the node (causal or not) and returns the
 * count the backend's hook left. */
int tiles_run(tiles_case *c, int causal);
/* Frees what tiles_open allocated (not the device). */
void tiles_close(tiles_case *c);
/* Runs check on each device of ctx whose label starts with prefix; skips
 * the test when there is none. */
void tiles_each_device(const char *prefix,
                       void (*check)(mha_context *, const test_device *));

#endif
