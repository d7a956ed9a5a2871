/* tune_db.h: the tuning database (a JSON file in the cache directory that
 * mha-tune writes and the planner reads): which kernel variants won for a
 * device, driver and layer shape class. tune_db.c reads and writes it;
 * tune.c turns it, MHA_TUNE and MHA_TUNE_VARIANT into each node's
 * variant. */
#ifndef MHA_CORE_TUNE_DB_H
#define MHA_CORE_TUNE_DB_H

#include "backend.h"

#define MHA_TUNE_DB_FORMAT "libmha-tune"
#define MHA_TUNE_DB_VERSION 1
#define MHA_TUNE_DB_FILE "tune.json"

/* A layer forward's shape, and its class: E and H exact, B, L and S
 * rounded up to a power of 2, causal or not ("E512-H8-B8-L512-S512-c0"),
 * so that one measurement serves the lengths near it. */
typedef struct mha_tune_shape {
    int64_t embed_dim, heads, batch, tgt_len, src_len;
    int causal;
} mha_tune_shape;

void mha_tune_shape_class(const mha_tune_shape *s, char *out, size_t size);

/* One winner: on backend's device (name, driver) for a shape class, the
 * matmul and attention variants ("default": the backend's built-in
 * choice), with the forward's median time and the default's, in ms. Per
 * kind, the evidence mha-tune had: the median paired ratio (default ms /
 * candidate ms) of the best candidate it measured, picked or not, and the
 * default's spread in those rounds (0 when not measured; optional in the
 * file, so databases written before them still read). */
typedef struct mha_tune_entry {
    char backend[16], device[128], driver[128], shape[64];
    char matmul[32], attention[32];
    double ms, default_ms;
    double matmul_ratio, matmul_spread, attention_ratio, attention_spread;
} mha_tune_entry;

typedef struct mha_tune_db {
    mha_tune_entry *at;
    int count, cap;
} mha_tune_db;

/* Reads path into *db (empty first). A missing file is an empty DB. A file
 * that is not the database, or is truncated, corrupt, of another format or
 * version, or has a malformed entry, is ignored as a whole: *db empty, the
 * reason logged (WARN) naming the path. Returns MHA_OK, or
 * MHA_OUT_OF_MEMORY (*db empty). Entries are in host's memory
 * (mha_tune_db_free). */
mha_status mha_tune_db_read(mha_host *host, const char *path,
                            mha_tune_db *db);

/* The entry for this device, driver and shape class, or NULL. */
const mha_tune_entry *mha_tune_db_find(const mha_tune_db *db,
                                       const char *backend,
                                       const char *device, const char *driver,
                                       const char *shape);

/* Adds e, replacing the entry with the same key. MHA_OK or
 * MHA_OUT_OF_MEMORY. */
mha_status mha_tune_db_put(mha_host *host, mha_tune_db *db,
                           const mha_tune_entry *e);

/* Writes db to path through the cache's safe write (O_EXCL temporary file
 * renamed over path). 0 or an errno value. */
int mha_tune_db_write(const char *path, const mha_tune_db *db);

void mha_tune_db_free(mha_host *host, mha_tune_db *db);

/* The database's path: MHA_TUNE_DB, else tune.json in the cache directory
 * (mha_cache_dir_resolve: cache_dir, the device's
 * mha_device_options.cache_dir or NULL, else MHA_CACHE_DIR, else
 * $XDG_CACHE_HOME/libmha, else ~/.cache/libmha; "" disables). 0 when
 * there is none or it is too long. */
int mha_tune_db_path(mha_host *host, const char *cache_dir, char *out,
                     size_t size);

#endif /* MHA_CORE_TUNE_DB_H */
