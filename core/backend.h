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
 *               strided copy (converting dtype: the KV cache's append).
 *               src X, POS [1,1,B,T] MHA_I32 (nb[2] 0 broadcasts one row
 *               of positions over the batch; absent when rope_dims is 0)
 * MUL           dst = X * F element-wise over 4-D (the head gates): X and
 *               dst of one shape, f32 or f16, any strides; F f32 of that
 *               shape, broadcast by zero strides (F [B,H,L,d] with strides
 *               {H or 0, 1, 0, 0} gives each head of each batch item its
 *               gate). src X, F
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
    X(MUL, "mul", 2)

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

#define MHA_MAX_SRC 8

/* mha_op_params.causal is an mha_causal (mha.h): MHA_CAUSAL_NONE,
 * MHA_CAUSAL_TOP_LEFT or MHA_CAUSAL_BOTTOM_RIGHT. */

/* Source slots of ROPE. */
enum { MHA_SRC_ROPE_X = 0, MHA_SRC_ROPE_POS = 1 };

/* Source slots of MUL. */
enum { MHA_SRC_MUL_X = 0, MHA_SRC_MUL_F = 1 };

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
} mha_op_params;

typedef struct mha_node {
    mha_op op;
    mha_tdesc src[MHA_MAX_SRC];
    mha_tdesc dst;
    mha_op_params params;
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

#define MHA_BACKEND_IFACE_VERSION 1

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
} mha_backend_iface;

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
    X(sync, 1)

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
