/* context.h: the private form of mha_context and mha_device, the core
 * services (mha_host) that backends reach the context through, and the
 * wrappers through which the core calls a backend. Shared by the core's files
 * only; backends see core/backend.h. */
#ifndef MHA_CORE_CONTEXT_H
#define MHA_CORE_CONTEXT_H

#include "backend.h"

#define MHA_ERRMSG_SIZE 1024
#define MHA_MAX_DEVICES 64

/* The services backends get: allocator, log and the context's message. */
struct mha_host {
    mha_allocator alloc;
    mha_log_fn log;
    void *log_user;
    mha_log_level log_level;
    char errmsg[MHA_ERRMSG_SIZE];
};

typedef struct mha_backend_slot {
    const mha_backend_iface *iface;
    void *state; /* from iface->init; NULL if init failed, found no
                    runtime state, or mha_backend_check refused iface */
} mha_backend_slot;

typedef struct mha_device_entry {
    int backend; /* index into mha_context.backends */
    int backend_index;
    mha_device_desc desc;
    int score;
} mha_device_entry;

struct mha_context {
    mha_host host; /* first: a context is its own host */
    mha_backend_slot *backends;
    int backend_count;
    mha_device_entry devices[MHA_MAX_DEVICES]; /* ranked, best first */
    int device_count;
    int open_objects; /* devices open on this context */
};

struct mha_device {
    mha_context *ctx;
    const mha_backend_iface *iface;
    void *dev;
    int index; /* in ctx->devices; -1 for a device adopted from an engine */
    mha_device_entry entry; /* what mha_device_info_of reports */
    int open_objects; /* layers and tensors on this device */
    uint64_t mem_in_use; /* bytes of buffers allocated through mha_dev_alloc */
    uint64_t mem_peak;
    int lost; /* a backend call returned MHA_DEVICE_LOST: the wrappers
                 refuse all further work with it (sticky) */
    /* mha_attention's ALiBi slopes (core/attention.c) */
    void *alibi_buf;
    size_t alibi_bytes;
    int64_t alibi_heads; /* heads whose slopes it holds; 0: none */
    struct mha_profile *profile; /* core/profile.c; NULL: not profiling */
    struct mha_tune *tune; /* core/tune.c: the tuning database's entries */
    char *cache_dir; /* mha_device_options.cache_dir, copied; NULL: not
                        given (the tuning database then follows
                        MHA_CACHE_DIR and the rest) */
};

/* Frees the device's mha_attention state (its ALiBi slopes buffer). */
void mha_attention_release(mha_device *device);

/* Services for the core itself. */
mha_status mha_error(mha_context *ctx, mha_status status, const char *fmt,
                     ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void mha_clear_error(mha_context *ctx);

/* Ranking weight of a device kind (discrete GPU first). */
int mha_device_kind_score(mha_device_kind kind);

/* Bytes of one element as stored on a device (MHA_BOOL masks are f32). */
size_t mha_dtype_storage_size(mha_dtype dtype);
const char *mha_dtype_name(mha_dtype dtype);

/* a * b for sizes; returns 0 on overflow. */
int mha_mul_size(size_t a, size_t b, size_t *out);

/* Formats a shape as "[4,2,64]" into buf (at least 96 bytes). */
const char *mha_shape_str(char *buf, size_t size, int ndim,
                          const int64_t *shape);

/* Probing (device.c): mha_context_create's backends and devices (backends:
 * a comma-separated list of names, NULL for every one), and their
 * release. */
mha_status mha_probe_devices(mha_context *ctx, const char *backends);
void mha_release_backends(mha_context *ctx);

/* The wrappers (backend.c) through which the core, and nothing else in it,
 * calls a backend (SQLite's sqlite3Os*). A context uses only backends that
 * passed mha_backend_check, so every method their version has is present;
 * a method added in a later version gets a wrapper that calls it only when
 * iface->version is at least that version and otherwise applies the
 * method's documented default. */
mha_status mha_backend_init(mha_host *host, mha_backend_slot *b,
                            mha_device_desc *descs, int cap, int *count);
void mha_backend_fini(mha_backend_slot *b); /* nothing when state is NULL */
mha_status mha_backend_open(const mha_backend_slot *b, int index,
                            const mha_device_options *options, void **dev);
void mha_backend_close(const mha_backend_iface *iface, void *dev);

/* Every wrapper that does work first refuses a lost device (mha_dev_usable)
 * and marks the device lost when the backend reports MHA_DEVICE_LOST. */
mha_status mha_dev_usable(mha_device *device);
mha_status mha_dev_alloc(mha_device *device, size_t size, void **buf);
/* size must be the size the buffer was allocated with (memory accounting),
 * 0 for a handle around the caller's memory, which is not counted. */
void mha_dev_free(mha_device *device, void *buf, size_t size);
mha_status mha_dev_write(mha_device *device, void *buf, size_t offset,
                         const void *src, size_t size);
mha_status mha_dev_read(mha_device *device, void *buf, size_t offset,
                        void *dst, size_t size);
bool mha_dev_supports(mha_device *device, const mha_node *node);
mha_status mha_dev_run(mha_device *device, const mha_node *node);
mha_status mha_dev_sync(mha_device *device);
/* Version-2 timer methods; MHA_UNSUPPORTED for a version-1 backend. */
mha_status mha_dev_timer_mark(mha_device *device, int slot);
mha_status mha_dev_timer_read(mha_device *device, int count, uint64_t *ns);
/* Version 2's variants; none for a version-1 backend. */
int mha_dev_variants(mha_device *device, mha_op op, const char **names,
                     int cap);

/* Profiling (core/profile.c), called by mha_dev_run and mha_dev_sync: a
 * timestamp before the first node after a wait and after each node; after
 * a wait, the times become entries. Nothing while not profiling. */
void mha_profile_before_run(mha_device *device);
void mha_profile_after_run(mha_device *device, const mha_node *node);
void mha_profile_after_sync(mha_device *device);
void mha_profile_free(mha_device *device);

/* The variant node runs (core/tune.c): node->variant (the plan's pick) as
 * MHA_TUNE and MHA_TUNE_VARIANT change it; a static string (the backend's
 * or "default") or NULL. buf is scratch for a forced name. */
const char *mha_tune_variant(mha_device *device, const mha_node *node,
                             char *buf, size_t size);
void mha_tune_free(mha_device *device);

#endif /* MHA_CORE_CONTEXT_H */
