/* reference.h: a double-precision reference of every graph op, written
 * straight from the op definitions in core/backend.h, to judge backends. */
#ifndef MHA_TEST_REFERENCE_H
#define MHA_TEST_REFERENCE_H

#include "backend.h"

/* node's tensors have buf pointing at host f32 memory; writes the result in
 * dst's logical shape, contiguous, into out (ne0*ne1*ne2*ne3 doubles).
 * FILL_ROWS results are written the same way. */
void ref_run(const mha_node *node, double *out);

/* The tensors a node writes, in order: dst, then each present
 * extra_dst[k] (ATTENTION's LSE, ATTENTION_BACKWARD's dK and dV), or
 * ADAMW's M and V state (sources it writes in place). Returns how many. */
#define REF_MAX_OUT (1 + MHA_MAX_EXTRA_DST)
int ref_outputs(const mha_node *node, const mha_tdesc *out[REF_MAX_OUT]);

/* ref_run for every output: out[k] (NULL: not wanted) receives the k-th
 * tensor of ref_outputs in its logical shape, contiguous. An op that adds
 * into or updates a tensor (MATMUL and SUM_ROWS with accumulate, ADAMW)
 * reads its old value from the host memory the node points at. */
void ref_run_all(const mha_node *node, double *const out[REF_MAX_OUT]);

#endif
