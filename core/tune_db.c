/* tune_db.c: the tuning database's file (tune_db.h): JSON through cJSON,
 * read as a whole or ignored as a whole with the reason logged (a cache
 * must never make a forward fail), written through the cache's safe write.
 *
 *   {"format": "libmha-tune", "version": 1, "entries": [
 *     {"backend": "vulkan", "device": "...", "driver": "...",
 *      "shape": "E512-H8-B1-L512-S512-c0", "matmul": "mm64x64k32",
 *      "attention": "default", "ms": 12.5, "default_ms": 20.1,
 *      "matmul_ratio": 1.61, "matmul_spread": 0.04,
 *      "attention_ratio": 1.03, "attention_spread": 0.06}, ...]}
 *
 * The four ratio and spread fields are optional (older files lack them). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "tune_db.h"

/* Files larger than this are not a tuning database. */
#define TUNE_DB_MAX_BYTES (4u << 20)

static int64_t pow2_ceil(int64_t v)
{
    int64_t p = 1;
    while (p < v && p < (INT64_C(1) << 40))
        p *= 2;
    return p;
}

void mha_tune_shape_class(const mha_tune_shape *s, char *out, size_t size)
{
    snprintf(out, size, "E%lld-H%lld-B%lld-L%lld-S%lld-c%d",
             (long long)s->embed_dim, (long long)s->heads,
             (long long)pow2_ceil(s->batch), (long long)pow2_ceil(s->tgt_len),
             (long long)pow2_ceil(s->src_len), s->causal ? 1 : 0);
}

/* Copies string member key of o into out; 0 when absent, not a string, or
 * too long. */
static int get_str(const cJSON *o, const char *key, char *out, size_t size)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= size)
        return 0;
    memcpy(out, v->valuestring, strlen(v->valuestring) + 1);
    return 1;
}

static int get_num(const cJSON *o, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v))
        return 0;
    *out = v->valuedouble;
    return 1;
}

/* The optional fields of an entry: mha-tune's evidence for its pick. */
static const char *const evidence_keys[4] = {
    "matmul_ratio", "matmul_spread", "attention_ratio", "attention_spread"};

/* The evidence fields of o into e: absent is 0, present must be a number.
 * 1 when usable. */
static int evidence_from(const cJSON *o, mha_tune_entry *e)
{
    double *at[4] = {&e->matmul_ratio, &e->matmul_spread, &e->attention_ratio,
                     &e->attention_spread};
    for (int i = 0; i < 4; i++)
        if (cJSON_GetObjectItemCaseSensitive(o, evidence_keys[i]) &&
            !get_num(o, evidence_keys[i], at[i]))
            return 0;
    return 1;
}

static int entry_from(const cJSON *o, mha_tune_entry *e)
{
    memset(e, 0, sizeof *e);
    return cJSON_IsObject(o) &&
           get_str(o, "backend", e->backend, sizeof e->backend) &&
           get_str(o, "device", e->device, sizeof e->device) &&
           get_str(o, "driver", e->driver, sizeof e->driver) &&
           get_str(o, "shape", e->shape, sizeof e->shape) &&
           get_str(o, "matmul", e->matmul, sizeof e->matmul) &&
           get_str(o, "attention", e->attention, sizeof e->attention) &&
           get_num(o, "ms", &e->ms) &&
           get_num(o, "default_ms", &e->default_ms) &&
           evidence_from(o, e);
}

static const char out_of_memory[] = "out of host memory";

/* The whole file as a string, or NULL with *why set. */
static char *slurp(mha_host *host, FILE *f, const char **why)
{
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        *why = "cannot be read";
        return NULL;
    }
    if ((unsigned long)len > TUNE_DB_MAX_BYTES) {
        *why = "larger than a tuning database can be";
        return NULL;
    }
    char *text = mha_host_malloc(host, (size_t)len + 1);
    if (!text) {
        *why = out_of_memory;
        return NULL;
    }
    size_t n = fread(text, 1, (size_t)len, f);
    text[n] = '\0';
    return text;
}

/* Fills db from the parsed root; NULL, or why the file is not used. */
static const char *from_json(mha_host *host, const cJSON *root,
                             mha_tune_db *db)
{
    char format[32];
    double version = 0;
    if (!cJSON_IsObject(root) ||
        !get_str(root, "format", format, sizeof format) ||
        strcmp(format, MHA_TUNE_DB_FORMAT) != 0)
        return "not a libmha tuning database (no \"format\": \""
               MHA_TUNE_DB_FORMAT "\")";
    if (!get_num(root, "version", &version) ||
        version != MHA_TUNE_DB_VERSION)
        return "written for another version of the format";
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(root, "entries");
    if (!cJSON_IsArray(entries))
        return "no \"entries\" array";
    const cJSON *o;
    cJSON_ArrayForEach(o, entries)
    {
        mha_tune_entry e;
        if (!entry_from(o, &e))
            return "an entry lacks a field or has one of the wrong type";
        if (mha_tune_db_put(host, db, &e) != MHA_OK)
            return out_of_memory;
    }
    return NULL;
}

mha_status mha_tune_db_read(mha_host *host, const char *path,
                            mha_tune_db *db)
{
    memset(db, 0, sizeof *db);
    const char *why = NULL;
    FILE *f = mha_file_open_regular(path, false, &why);
    if (!f) {
        if (errno != ENOENT)
            mha_host_log(host, MHA_LOG_WARN, "tuning database %s: %s; "
                         "ignored", path, why);
        return MHA_OK;
    }
    char *text = slurp(host, f, &why);
    fclose(f);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    if (text && !root)
        why = "not JSON (corrupt or truncated)";
    else if (root)
        why = from_json(host, root, db);
    cJSON_Delete(root);
    mha_host_free(host, text);
    if (why) {
        mha_tune_db_free(host, db);
        if (why == out_of_memory)
            return MHA_OUT_OF_MEMORY;
        mha_host_log(host, MHA_LOG_WARN, "tuning database %s: %s; ignored",
                     path, why);
    }
    return MHA_OK;
}

static int same_key(const mha_tune_entry *e, const char *backend,
                    const char *device, const char *driver,
                    const char *shape)
{
    return !strcmp(e->backend, backend) && !strcmp(e->device, device) &&
           !strcmp(e->driver, driver) && !strcmp(e->shape, shape);
}

const mha_tune_entry *mha_tune_db_find(const mha_tune_db *db,
                                       const char *backend,
                                       const char *device, const char *driver,
                                       const char *shape)
{
    for (int i = 0; i < db->count; i++)
        if (same_key(&db->at[i], backend, device, driver, shape))
            return &db->at[i];
    return NULL;
}

mha_status mha_tune_db_put(mha_host *host, mha_tune_db *db,
                           const mha_tune_entry *e)
{
    for (int i = 0; i < db->count; i++)
        if (same_key(&db->at[i], e->backend, e->device, e->driver,
                     e->shape)) {
            db->at[i] = *e;
            return MHA_OK;
        }
    if (db->count == db->cap) {
        int cap = db->cap ? 2 * db->cap : 16;
        mha_tune_entry *at = mha_host_malloc(host, (size_t)cap * sizeof *at);
        if (!at)
            return MHA_OUT_OF_MEMORY;
        if (db->count)
            memcpy(at, db->at, (size_t)db->count * sizeof *at);
        mha_host_free(host, db->at);
        db->at = at;
        db->cap = cap;
    }
    db->at[db->count++] = *e;
    return MHA_OK;
}

static cJSON *entry_json(const mha_tune_entry *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "backend", e->backend);
    cJSON_AddStringToObject(o, "device", e->device);
    cJSON_AddStringToObject(o, "driver", e->driver);
    cJSON_AddStringToObject(o, "shape", e->shape);
    cJSON_AddStringToObject(o, "matmul", e->matmul);
    cJSON_AddStringToObject(o, "attention", e->attention);
    cJSON_AddNumberToObject(o, "ms", e->ms);
    cJSON_AddNumberToObject(o, "default_ms", e->default_ms);
    const double evidence[4] = {e->matmul_ratio, e->matmul_spread,
                                e->attention_ratio, e->attention_spread};
    for (int i = 0; i < 4; i++)
        cJSON_AddNumberToObject(o, evidence_keys[i], evidence[i]);
    return o;
}

int mha_tune_db_write(const char *path, const mha_tune_db *db)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", MHA_TUNE_DB_FORMAT);
    cJSON_AddNumberToObject(root, "version", MHA_TUNE_DB_VERSION);
    cJSON *entries = cJSON_AddArrayToObject(root, "entries");
    for (int i = 0; entries && i < db->count; i++)
        cJSON_AddItemToArray(entries, entry_json(&db->at[i]));
    char *text = entries ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return ENOMEM;
    int err = mha_cache_file_write(path, text, strlen(text), "\n", 1);
    cJSON_free(text);
    return err;
}

void mha_tune_db_free(mha_host *host, mha_tune_db *db)
{
    mha_host_free(host, db->at);
    memset(db, 0, sizeof *db);
}

int mha_tune_db_path(mha_host *host, const char *cache_dir, char *out,
                     size_t size)
{
    const char *db = mha_host_getenv(host, "MHA_TUNE_DB");
    if (db && db[0])
        return (size_t)snprintf(out, size, "%s", db) < size;
    char dir[4096];
    if (mha_cache_dir_resolve(host, cache_dir, dir, sizeof dir) != 1)
        return 0;
    return (size_t)snprintf(out, size, "%s/%s", dir, MHA_TUNE_DB_FILE) < size;
}
