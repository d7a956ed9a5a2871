/* backend.h: the contract between the core and a backend (cpu, vulkan,
 * opencl), in the spirit of sqlite3_vfs and ggml's backend interface. The
 * core reaches a backend only through mha_backend_iface; a backend reaches
 * the core only through the mha_host services declared at the bottom. */
#ifndef MHA_CORE_BACKEND_H
#define MHA_CORE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mha.h"

/* ---- ops ------------------------------------------------------------------
 * X(NAME, "name", number of sources). Every tensor is 4-D, outermost first;
 * B batch, H heads, L queries, S' keys (S real ones plus appended rows),
 * d head size, K/N feature counts. Splitting into heads and concatenating
 * them back are no ops: a [B,H,T,d] head tensor is a strided view of the
 * [B,1,T,E] rows a projection writes or reads.
 *
 * PROJECTION    Y[b,0,t,n] = sum_k X[b,0,t,k] W[0,0,n,k] + bias[0,0,0,n]
 *               src X [B,1,T,K], W [1,1,N,K], bias [1,1,1,N] (optional)
 * FILL_ROWS     dst [B,1,R,N] = src row [1,1,1,N] broadcast, or 0 when the
 *               source is absent (bias_k/bias_v rows, add_zero_attn rows)
 * SCORES        A[b,h,i,j] = scale * Q[b,h,i,:].K[b,h,j,:]
 *                            + mask[b,h,i,j] + kpm[b,h,i,j]   (j < mask_cols)
 *               causal: j > i and j < mask_cols is -inf.
 *               src Q [B,H,L,d], K [B,H,S',d], mask and kpm [B,H,L,S]
 *               (additive f32, broadcast by zero strides, optional)
 * SOFTMAX       rows of [B,H,L,S']; max-subtracted; a row that is all -inf
 *               becomes all 0 (libmha's documented choice), NaN propagates
 * WEIGHTED_SUM  O[b,h,i,:] = sum_j P[b,h,i,j] V[b,h,j,:]
 *               src P [B,H,L,S'], V [B,H,S',d]
 * ATTENTION     fused SCORES + SOFTMAX + WEIGHTED_SUM without the L x S'
 *               matrix; same sources as SCORES plus V; same params. It is
 *               also the attention core (mha_attention, decoder layers),
 *               with these extensions, each off when its param is 0 or its
 *               source absent, so nn.MHA's nodes never use them:
 *   GQA/MQA     K and V have Hkv = H / kv_group heads: query head h reads
 *               kv head h / kv_group (ne[1] of K and V is Hkv)
 *   positions   query i of batch b sits at position p = i + off_b, where
 *               off_b = 0 for MHA_CAUSAL_TOP_LEFT (and no causal) and
 *               off_b = len_b - L for MHA_CAUSAL_BOTTOM_RIGHT; len_b is
 *               KV_LEN[b] when present, else mask_cols (S)
 *   score       s = scale * q.k; softcap > 0: s = softcap * tanh(s / softcap);
 *               then s += ALIBI[h] * (j - p) (ALIBI present), then + mask
 *               + kpm (j < mask_cols), as for SCORES
 *   masks       -inf where j >= len_b (KV_LEN present; those keys are never
 *               read), where causal and j > p, where window > 0 and
 *               j <= p - window; only for j < mask_cols
 *   softmax     SINKS present: the row's denominator also holds
 *               exp(SINKS[h]) (in the same max-subtracted frame), which
 *               carries no value; a row with nothing attendable is 0
 *   sources     SINKS [1,1,1,H] f32, ALIBI [1,1,1,H] f32 (slopes),
 *               KV_LEN [1,1,1,B] MHA_I32; Q/K/V/dst f32 or f16
 * MEAN_HEADS    dst [B,1,L,S'] = mean over h of src [B,H,L,S']
 * ROPE          rotary position embedding of X [B,H,T,d] (any strides, f32
 *               or f16) into dst of the same shape (dtype may differ; dst
 *               may be X itself, in place). With r = rope_dims (even,
 *               <= d), p = POS[b,t] * rope_pos_scale and, for i < r/2,
 *               a_i = p * theta^(-2i/r):
 *                 NEOX (HF Llama rotate_half): pairs (i, i + r/2)
 *                 GPTJ (interleaved):          pairs (2i, 2i + 1)
 *               each pair (x, y) -> (x cos a_i - y sin a_i,
 *                                    y cos a_i + x sin a_i);
 *               features c >= r are copied unchanged, so rope_dims 0 is a
 *               strided copy (converting dtype: the KV cache's append;
 *               X may repeat rows by zero strides: the decoder backward's
 *               GQA repeat). A negative rope_pos_scale negates the angles:
 *               the inverse rotation, which the decoder backward applies
 *               to dQ and dK. src X, POS [1,1,B,T] MHA_I32 (nb[2] 0 broadcasts one row
 *               of positions over the batch; absent when rope_dims is 0)
 * MUL           dst = X * F element-wise over 4-D (the head gates): X and
 *               dst of one shape, f32 or f16, any strides; F f32 of that
 *               shape, broadcast by zero strides (F [B,H,L,d] with strides
 *               {H or 0, 1, 0, 0} gives each head of each batch item its
 *               gate). src X, F
 * HEAD_STATS    per-head sums over the query rows i of attention
 *               probabilities P [B,H,L,S'] (any strides, f32; key j is
 *               taken to sit at position j, as in self-attention) into dst
 *               [B,H,1,MHA_HEAD_STATS_COLS + H] f32:
 *                 col 0  sum_i -sum_j p_ij ln p_ij          (entropy, 0 ln 0 = 0)
 *                 col 1  sum_i max_j p_ij                   (confidence)
 *                 col 2  sum_i sum_j p_ij |i - j|           (distance)
 *                 col 3  sum_i p_i0                         (first key)
 *                 col 4  sum_{1 <= i <= S'} p_i,i-1         (previous token)
 *                 col 5 + g  sum_i JS(p_hi, p_gi), the Jensen-Shannon
 *                        divergence in nats of head h's and head g's rows:
 *                        sum_j p ln(2p/(p+q))/2 + q ln(2q/(p+q))/2
 *               A row of zeros (all keys masked) adds 0 to every column.
 *
 * Training (issue 18). Every tensor of these ops is f32 unless its backend
 * says otherwise in supports().
 * ATTENTION     may also write the row log-sum-exp a training forward
 *   + LSE       saves: extra_dst[MHA_DST_LSE] [B,H,1,L] f32 (any strides;
 *               absent in inference), LSE_i = m_i + ln l_i in the natural
 *               log of the same scaled-and-masked scores s_ij the softmax
 *               uses (p_ij = exp(s_ij - LSE_i)); sinks count in l_i; a row
 *               with nothing attendable gets -inf. A backend that cannot
 *               write it declines the node (supports() looks at
 *               extra_dst[MHA_DST_LSE].buf).
 * MATMUL        dst[a,b,m,n] = sum_k A[a,b,m,k] B[a,b,k,n]
 *                              (+ dst[a,b,m,n] when params.accumulate)
 *               src A [.,.,M,K], B [.,.,K,N] with any strides: a transposed
 *               operand is a view with swapped strides, and zero strides on
 *               the two outer dims broadcast an operand over them. dst has
 *               unit inner stride. The backward's dX = dY W and
 *               dW = dY^T X (rows of all batch items flattened when the
 *               layout allows, one accumulating node per item otherwise).
 * SUM_ROWS      dst[a,b,0,n] = sum_m src[a,b,m,n] (+ dst when
 *               params.accumulate): bias gradients. Any src strides.
 * ATTENTION_BACKWARD  FlashAttention-2's backward of ATTENTION for the
 *               nn.MHA subset plus window, softcap and ALiBi (no GQA,
 *               sinks, key lengths; causal NONE or TOP_LEFT, so p = i):
 *               probabilities are recomputed from Q, K, the masks and the
 *               saved LSE, never stored as an L x S' matrix; s_ij is
 *               ATTENTION's score (softcap, ALiBi, masks, window):
 *                 p_ij  = exp(s_ij - LSE_i)   (0 where LSE_i = -inf)
 *                 D_i   = dO_i . O_i
 *                 dS_ij = p_ij (dO_i . V_j - D_i), times
 *                         1 - tanh^2(scale q.k / softcap) with softcap
 *                 dQ_i  = scale sum_j dS_ij K_j     -> dst
 *                 dK_j  = scale sum_i dS_ij Q_i     -> extra_dst[MHA_DST_DK]
 *                 dV_j  = sum_i p_ij dO_i           -> extra_dst[MHA_DST_DV]
 *               src Q, K, MASK, KPM, V in ATTENTION's slots and layout
 *               (params scale, causal, mask_cols, window, softcap as
 *               there), O [B,H,L,d] the forward's output, dO [B,H,L,d],
 *               LSE [B,H,1,L], ALiBi slopes [1,1,1,H] (optional; constants,
 *               no gradient).
 *               dst dQ [B,H,L,d], dK and dV [B,H,S',d]; all written, not
 *               accumulated (the appended bias_k/bias_v rows' dK/dV rows
 *               become those parameters' gradients in the core).
 * ADAMW         one torch.optim.AdamW step over n parameters, in place:
 *                 p = p (1 - lr wd);  m = b1 m + (1 - b1) g;
 *                 v = b2 v + (1 - b2) g^2;
 *                 p = p - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)
 *               dst p [1,1,1,n]; src G, M, V [1,1,1,n], contiguous; M and
 *               V are written in place (state). Params adam_* (bc1 and bc2
 *               are 1 - b1^t and 1 - b2^t for step t, computed by the core).
 */
#define MHA_OP_LIST(X)                      \
    X(PROJECTION, "projection", 3)          \
    X(FILL_ROWS, "fill_rows", 1)            \
    X(SCORES, "scores", 4)                  \
    X(SOFTMAX, "softmax", 1)                \
    X(WEIGHTED_SUM, "weighted_sum", 2)      \
    X(ATTENTION, "attention", 8)            \
    X(MEAN_HEADS, "mean_heads", 1)          \
    X(ROPE, "rope", 2)                      \
    X(MUL, "mul", 2)                        \
    X(HEAD_STATS, "head_stats", 1)          \
    X(MATMUL, "matmul", 2)                  \
    X(SUM_ROWS, "sum_rows", 1)              \
    X(ATTENTION_BACKWARD, "attention_backward", 9) \
    X(ADAMW, "adamw", 3)

typedef enum mha_op {
#define MHA_OP_ENUM_(name, text, nsrc) MHA_OP_##name,
    MHA_OP_LIST(MHA_OP_ENUM_)
#undef MHA_OP_ENUM_
    MHA_OP_COUNT
} mha_op;

/* Source slots of SCORES and ATTENTION. */
enum { MHA_SRC_Q = 0, MHA_SRC_K = 1, MHA_SRC_MASK = 2, MHA_SRC_KPM = 3,
       MHA_SRC_V = 4, MHA_SRC_SINKS = 5, MHA_SRC_ALIBI = 6,
       MHA_SRC_KV_LEN = 7 };

#define MHA_MAX_SRC 9

/* mha_op_params.causal is an mha_causal (mha.h): MHA_CAUSAL_NONE,
 * MHA_CAUSAL_TOP_LEFT or MHA_CAUSAL_BOTTOM_RIGHT. */

/* Columns of HEAD_STATS before the H Jensen-Shannon ones. */
enum { MHA_HEAD_STATS_COLS = 5 };

/* Source slots of ROPE. */
enum { MHA_SRC_ROPE_X = 0, MHA_SRC_ROPE_POS = 1 };

/* Source slots of MUL. */
enum { MHA_SRC_MUL_X = 0, MHA_SRC_MUL_F = 1 };

/* Source slots of MATMUL. */
enum { MHA_SRC_MM_A = 0, MHA_SRC_MM_B = 1 };

/* Source slots of ATTENTION_BACKWARD past ATTENTION's Q, K, MASK, KPM, V
 * (it has no sinks or key lengths, so it reuses their slots and those of
 * the slopes, which it takes in the last slot). */
enum { MHA_SRC_BWD_O = 5, MHA_SRC_BWD_DO = 6, MHA_SRC_BWD_LSE = 7,
       MHA_SRC_BWD_ALIBI = 8 };

/* Source slots of ADAMW (dst is the parameter). */
enum { MHA_SRC_ADAM_G = 0, MHA_SRC_ADAM_M = 1, MHA_SRC_ADAM_V = 2 };

/* Slots of mha_node.extra_dst: ATTENTION's saved LSE, ATTENTION_BACKWARD's
 * dK and dV. */
enum { MHA_DST_LSE = 0, MHA_DST_DK = 0, MHA_DST_DV = 1 };
#define MHA_MAX_EXTRA_DST 2

const char *mha_op_name(mha_op op);
int mha_op_source_count(mha_op op);

/* ---- tensors and nodes -------------------------------------------------- */

/* A view of a backend buffer: element (i0,i1,i2,i3) lives at byte
 * offset + (i0*nb[0] + i1*nb[1] + i2*nb[2] + i3*nb[3]) * element size.
 * A stride of 0 broadcasts. buf == NULL means "absent" (optional source). */
typedef struct mha_tdesc {
    mha_dtype dtype; /* MHA_F32 or MHA_F16; masks are always MHA_F32 */
    int64_t ne[4];
    int64_t nb[4];   /* in elements */
    void *buf;       /* the backend's buffer handle */
    size_t offset;   /* in bytes */
    /* Bind the whole buffer, not only the view's bytes (a backend that
     * binds ranges, as Vulkan does): for state addressed at a moving
     * offset, the KV cache, so that the bindings of a decode step, and the
     * descriptor sets of recorded ones, do not change with the length. */
    int bind_whole;
} mha_tdesc;

typedef struct mha_op_params {
    float scale;       /* SCORES, ATTENTION */
    int32_t causal;    /* SCORES, ATTENTION: MHA_CAUSAL_* (SCORES: top-left
                          only) */
    int64_t mask_cols; /* SCORES, ATTENTION: S, columns past it are the
                          appended bias/zero rows and are never masked */
    /* ATTENTION only: the attention core's extensions (see the op list) */
    int32_t kv_group;  /* H / Hkv; 0 and 1 both mean K/V have H heads */
    int32_t window;    /* sliding window W, 0 = none */
    float softcap;     /* logit softcap c, 0 = none */
    /* ROPE only (see the op list) */
    int32_t rope_style;   /* MHA_ROPE_NEOX or MHA_ROPE_GPTJ (mha.h) */
    int32_t rope_dims;    /* rotated features r: even, <= d; 0 copies */
    float rope_theta;     /* base of the frequencies (10000, 500000, ...) */
    float rope_pos_scale; /* positions are multiplied by it: 1 / the linear
                             scaling factor */
    int32_t accumulate;   /* MATMUL, SUM_ROWS: add into dst */
    /* ADAMW only (see the op list) */
    float adam_lr, adam_beta1, adam_beta2, adam_eps, adam_weight_decay;
    float adam_bc1, adam_bc2;
} mha_op_params;

typedef struct mha_node {
    mha_op op;
    mha_tdesc src[MHA_MAX_SRC];
    mha_tdesc dst;
    /* Further outputs of the ops that have them (MHA_DST_*); absent
     * (buf NULL) otherwise. */
    mha_tdesc extra_dst[MHA_MAX_EXTRA_DST];
    mha_op_params params;
    /* The kernel variant the tuning source chose for this node (core/
     * tune.c; a name has_variant accepted for its op): "default" asks
     * for the backend's built-in choice, NULL lets the backend apply its
     * rule table by device class first. */
    const char *variant;
} mha_node;

/* Whether an ATTENTION node uses none of the attention core's extensions
 * (a backend that has not implemented them declines such nodes). */
static inline bool mha_attention_is_plain(const mha_node *n)
{
    return n->params.causal != MHA_CAUSAL_BOTTOM_RIGHT &&
           n->params.kv_group <= 1 && n->params.window == 0 &&
           n->params.softcap == 0.0f && !n->src[MHA_SRC_SINKS].buf &&
           !n->src[MHA_SRC_ALIBI].buf && !n->src[MHA_SRC_KV_LEN].buf;
}

/* Whether a node needs what the training ops (issue 18) add: one of
 * those ops, or an ATTENTION that saves its LSE. A backend that has not
 * implemented them declines such nodes. */
static inline bool mha_node_is_training(const mha_node *n)
{
    return n->op == MHA_OP_MATMUL || n->op == MHA_OP_SUM_ROWS ||
           n->op == MHA_OP_ATTENTION_BACKWARD || n->op == MHA_OP_ADAMW ||
           (n->op == MHA_OP_ATTENTION && n->extra_dst[MHA_DST_LSE].buf);
}

/* Whether a ROPE node keeps the op's rules that do not depend on a
 * backend: dst has X's shape; rope_dims 0 (a copy), or even, at most d,
 * with a known style and MHA_I32 positions [1,1,B or 1,T]. Backends check
 * dtypes and strides on top. */
static inline bool mha_rope_is_valid(const mha_node *n)
{
    const mha_tdesc *x = &n->src[MHA_SRC_ROPE_X];
    const mha_tdesc *pos = &n->src[MHA_SRC_ROPE_POS];
    const mha_op_params *p = &n->params;
    for (int i = 0; i < 4; i++)
        if (x->ne[i] != n->dst.ne[i])
            return false;
    if (p->rope_dims == 0)
        return true;
    return p->rope_dims > 0 && p->rope_dims % 2 == 0 &&
           p->rope_dims <= x->ne[3] &&
           (p->rope_style == MHA_ROPE_NEOX || p->rope_style == MHA_ROPE_GPTJ) &&
           pos->buf && pos->dtype == MHA_I32 && pos->ne[3] == x->ne[2] &&
           (pos->ne[2] == x->ne[0] || pos->ne[2] == 1);
}

/* ---- devices ------------------------------------------------------------- */

/* What a backend's probe reports for each device: mha_device_info without
 * the fields the core fills (backend, indices, score, default). */
typedef struct mha_device_desc {
    mha_device_kind kind;
    char vendor[64];
    char name[128];
    char driver[128];
    uint64_t memory_bytes;
    uint64_t max_buffer_bytes;
    uint32_t features;
    uint32_t compute_units;
    uint32_t max_workgroup_size;
    uint32_t shared_memory_bytes;
    uint32_t subgroup_size;
    char details[256];
} mha_device_desc;

/* ---- the interface ------------------------------------------------------- */

#define MHA_BACKEND_IFACE_VERSION 2

typedef struct mha_host mha_host; /* core services, see below */

/* Methods are only ever appended; version says how many exist. Every
 * method is required (a context refuses a backend that lacks one, see
 * MHA_BACKEND_METHODS). "state" is the backend's per-context state (loaded
 * runtime, instance), "dev" an open device. */
typedef struct mha_backend_iface {
    int version; /* MHA_BACKEND_IFACE_VERSION the backend was built for */
    const char *name;

    /* Loads the runtime and lists devices into descs (at most cap); sets
     * *count. A missing runtime is *count = 0 and MHA_OK, with the reason
     * logged. *state may be set even when *count is 0. */
    mha_status (*init)(mha_host *host, void **state, mha_device_desc *descs,
                       int cap, int *count);
    void (*fini)(void *state);

    mha_status (*open)(void *state, int index,
                       const mha_device_options *options, void **dev);
    void (*close)(void *dev);

    /* Buffers: size in bytes, contents undefined after alloc. */
    mha_status (*buffer_alloc)(void *dev, size_t size, void **buf);
    void (*buffer_free)(void *dev, void *buf);
    /* write/read are ordered with enqueued work: read waits for it. */
    mha_status (*buffer_write)(void *dev, void *buf, size_t offset,
                               const void *src, size_t size);
    mha_status (*buffer_read)(void *dev, void *buf, size_t offset,
                              void *dst, size_t size);

    /* Whether run() can execute this node (shapes, strides, dtypes). The
     * planner asks before it has buffers: a present tensor's buf may be a
     * placeholder, so look only at whether it is NULL. */
    bool (*supports)(void *dev, const mha_node *node);
    /* Enqueues (or records) one node; nodes run in the order given. */
    mha_status (*run)(void *dev, const mha_node *node);
    /* Submits what was enqueued and waits for it. */
    mha_status (*sync)(void *dev);

    /* Version 2: device timestamps, for profiles (core/profile.c). timer_mark
     * enqueues timestamp number slot (0 is the first after a sync, then 1,
     * 2, ... below MHA_TIMER_SLOTS), written when the work enqueued before
     * it has finished; timer_read, after a sync, stores timestamps 0 to
     * count - 1 in nanoseconds from an arbitrary origin. Both return
     * MHA_UNSUPPORTED where the device or queue keeps no timestamps; the
     * core then reads its host clock at each mark, which is exact for a
     * backend whose run() finishes its work before returning (cpu). */
    mha_status (*timer_mark)(void *dev, int slot);
    mha_status (*timer_read)(void *dev, int count, uint64_t *ns);
    /* Version 2: the kernel variants of this backend that can run op's
     * nodes on this device (names for mha_node.variant, core/tune.c):
     * stores the first cap names (static strings) and returns how many
     * there are. A backend without variants returns 0. */
    int (*variants)(void *dev, mha_op op, const char **names, int cap);
} mha_backend_iface;

/* Timestamps a backend keeps between two syncs at least. */
#define MHA_TIMER_SLOTS 256

/* Variants a backend lists for one op at most. */
#define MHA_MAX_VARIANTS 64

/* X(method, version that added it): every method above, in order. A
 * context refuses a backend whose version lacks one of them; a method
 * added in version N is called only when the backend's version is >= N
 * (a wrapper in core/backend.c applies its default otherwise), so a
 * backend built for an older interface keeps working. */
#define MHA_BACKEND_METHODS(X)                                              \
    X(init, 1)                                                              \
    X(fini, 1)                                                              \
    X(open, 1)                                                              \
    X(close, 1)                                                             \
    X(buffer_alloc, 1)                                                      \
    X(buffer_free, 1)                                                       \
    X(buffer_write, 1)                                                      \
    X(buffer_read, 1)                                                       \
    X(supports, 1)                                                          \
    X(run, 1)                                                               \
    X(sync, 1)                                                              \
    X(timer_mark, 2)                                                        \
    X(timer_read, 2)                                                        \
    X(variants, 2)

/* Whether the core can use iface: its version is one libmha knows (1 to
 * MHA_BACKEND_IFACE_VERSION) and every method that version has is set.
 * Returns 0 with why (naming the backend and the version or method) filled
 * in otherwise. */
int mha_backend_check(const mha_backend_iface *iface, char *why,
                      size_t size);

/* ---- core services for backends ------------------------------------------ */

/* Host memory through the context's allocator (may return NULL). */
void *mha_host_malloc(mha_host *host, size_t size);
void *mha_host_calloc(mha_host *host, size_t count, size_t size);
void mha_host_free(mha_host *host, void *ptr);

/* Sets the context's message (printf format) and returns status, so a
 * backend writes: return mha_host_error(host, MHA_DEVICE_ERROR,
 * "vkCreateBuffer failed: %s", name); */
mha_status mha_host_error(mha_host *host, mha_status status, const char *fmt,
                          ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* A backend's fault-injection point for tests (SQLite's countdown): while
 * *countdown > 0 each call counts it down, and the call that brings it to
 * 0 must fail as the backend documents for that point. */
static inline bool mha_fault_due(int *countdown)
{
    return *countdown > 0 && --*countdown == 0;
}

/* The struct_size of a struct the caller filled (mha.h, "ABI"): s is NULL
 * or starts with it. 0 or less than min (the first version's size) is
 * MHA_INVALID_ARGUMENT with a message naming fn and type; host may be NULL
 * where no context exists yet. NULL s is MHA_OK (the caller checks). */
mha_status mha_struct_check(mha_host *host, const char *fn, const char *type,
                            const void *s, size_t min);

/* The start of every *_init_sized: zeroes size bytes of s and sets its
 * struct_size; MHA_INVALID_ARGUMENT for NULL or a size below min. */
mha_status mha_struct_init(void *s, size_t size, size_t min);

/* Ends a public call fn: on success clears the context's message (mha.h's
 * promise); on failure makes the message start with "fn: ", so a message
 * set deeper down (a backend's "vkQueueSubmit failed: ...") still names
 * the function the caller called. Returns status. */
mha_status mha_host_finish(mha_host *host, const char *fn, mha_status status);

void mha_host_log(mha_host *host, mha_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Environment lookup, so tests and users can steer backends. */
const char *mha_host_getenv(mha_host *host, const char *name);

/* ---- files someone else may control (core/file.c) ------------------------ */

/* Opens path for reading ("rb") only if it is a regular file, without ever
 * blocking (a FIFO is refused, not waited on). follow false refuses a
 * symbolic link too. NULL on failure, with errno set (ENOENT when there is
 * no such file) and *why saying what was wrong, in words. */
FILE *mha_file_open_regular(const char *path, bool follow, const char **why);

/* A cache file to read, as mha_file_open_regular (no symlinks); a file that
 * exists but is refused is logged (WARN) and NULL, like a missing one. */
FILE *mha_cache_file_open(mha_host *host, const char *path);

/* The cache directory every on-disk cache shares (Vulkan pipelines,
 * OpenCL binaries, the tuning database): option (mha_device_options.
 * cache_dir) when not NULL, else MHA_CACHE_DIR, else
 * $XDG_CACHE_HOME/libmha, else (Windows) %LOCALAPPDATA%\libmha, else
 * ~/.cache/libmha, into out. 1 with the path; 0 when caching is off (""
 * or no home); -1 when the path does not fit size. */
int mha_cache_dir_resolve(mha_host *host, const char *option, char *out,
                          size_t size);

/* Creates dir (and missing parents) with mode 0700 and tells whether it is
 * private: owned by this user and not writable by group or others. When
 * not, the reason is logged (WARN) and the caller caches nothing. dir is
 * modified during the call and restored. */
bool mha_cache_dir_ready(mha_host *host, char *dir);

/* Writes head then data to path through a new temporary file beside it
 * (created with O_EXCL, mode 0600: a name someone planted, symlink or not,
 * is never opened), renamed over path. 0 or an errno value. */
int mha_cache_file_write(const char *path, const void *head, size_t head_size,
                         const void *data, size_t size);

/* ---- the registry ----------------------------------------------------- */

/* Compiled-in backends, in registry order (ties in ranking go to the
 * earlier one). NULL-terminated. */
extern const mha_backend_iface *const mha_backend_registry[];

#endif /* MHA_CORE_BACKEND_H */
