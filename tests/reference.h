/* reference.h: a double-precision reference of every graph op, written
 * straight from the op definitions in core/backend.h, to judge backends. */
#ifndef MHA_TEST_REFERENCE_H
#define MHA_TEST_REFERENCE_H

#include "backend.h"

/* node's tensors have buf pointing at host f32 memory; writes the result in
 * dst's logical shape, contiguous, into out (ne0*ne1*ne2*ne3 doubles).
 * FILL_ROWS results are written the same way. */
void ref_run(const mha_node *node, double *out);

#endif
