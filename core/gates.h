/* gates.h: head gates (mha.h, head_gates) as a forward call uses them:
 * which heads it skips and whether a multiply remains, read back from the
 * caller's device tensor; shared by the nn.MHA layer (forward.c, graph.c)
 * and the decoder layer (decoder.c). */
#ifndef MHA_CORE_GATES_H
#define MHA_CORE_GATES_H

#include "tensor.h"

/* Heads whose attention a call can skip: those below 64 * this. */
#define MHA_SKIP_WORDS 4
/* At most this many runs of consecutive computed heads (one attention
 * each); a gate pattern with more computes every head and multiplies the
 * gated-off ones by their 0. */
#define MHA_MAX_HEAD_RUNS 8

/* A run of consecutive heads [first, first + count), computed or not. */
typedef struct mha_head_run {
    int64_t first, count;
    int computed;
} mha_head_run;

/* Reads gates (f32, [H] or [N, H], checked by the caller) and sets skip
 * (bit h: head h is 0 for every batch item, in whole aligned groups of
 * `group` heads, so a skipped group is a whole kv head of grouped-query
 * attention) and *mul (a computed head has a gate other than 1). */
mha_status mha_gates_read(mha_device *device, const mha_tensor *gates,
                          int64_t H, int64_t group,
                          uint64_t skip[MHA_SKIP_WORDS], int *mul);

/* Splits heads 0 .. H-1 into runs by skip; writes at most cap runs and
 * returns how many computed runs there are. */
int mha_head_runs(const uint64_t skip[MHA_SKIP_WORDS], int64_t H,
                  mha_head_run *runs, int cap);

#endif /* MHA_CORE_GATES_H */
