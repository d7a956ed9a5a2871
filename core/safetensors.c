/* safetensors.c: parses and validates .safetensors files with cJSON (the
 * JSON header) and stdio (the data, read per tensor so a model-sized file
 * is never loaded whole), from a regular file only (core/file.c). Every
 * length and offset is checked before use. Writes them too (a layer's
 * weights), through core/file.c's temporary-file-and-rename. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "half.h"
#include "safetensors.h"

#define MAX_HEADER (100u << 20) /* the format's own limit on the header */

typedef struct meta_pair {
    char *key;
    char *value;
} meta_pair;

struct mha_st_file {
    mha_host *host;
    char *path;
    FILE *fp;
    uint64_t data_start, data_size;
    mha_st_entry *entries;
    int count;
    meta_pair *meta;
    int meta_count;
};

static const struct {
    const char *name;
    unsigned size;
} dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
    {"I16", 2}, {"I8", 1},  {"U64", 8}, {"U32", 4},  {"U16", 2}, {"U8", 1},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

static unsigned dtype_size(const char *name)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return dtypes[i].size;
    return 0;
}

static char *host_strdup(mha_host *host, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = mha_host_malloc(host, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static mha_status corrupt(mha_st_file *f, const char *key, const char *what)
{
    return mha_host_error(f->host, MHA_CORRUPT_FILE,
                          "safetensors file %s: %s%s%s%s", f->path,
                          key ? "tensor \"" : "", key ? key : "",
                          key ? "\": " : "", what);
}

/* The usual mistake: a torch.save file (a zip archive since PyTorch 1.6, a
 * bare pickle before) given where a .safetensors file belongs. Only asked
 * once the file has failed as safetensors: a valid header length can start
 * with the pickle protocol byte 0x80 too. */
static int looks_like_torch_save(const unsigned char first[8])
{
    return memcmp(first, "PK\x03\x04", 4) == 0 || first[0] == 0x80;
}

static mha_status torch_save_file(mha_st_file *f)
{
    return corrupt(f, NULL, "this looks like a PyTorch torch.save file "
                            "(zip or pickle), not safetensors; convert it "
                            "with export_safetensors.py (tools/ in the "
                            "source, share/libmha/ once installed): "
                            "python3 export_safetensors.py MODEL.pt "
                            "MODEL.safetensors");
}

/* A JSON number that is a non-negative integer below 2^53 (exact). */
static int json_u64(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return 0;
    double v = item->valuedouble;
    if (!(v >= 0 && v <= 9007199254740992.0) || floor(v) != v)
        return 0;
    *out = (uint64_t)v;
    return 1;
}

static mha_status parse_shape(mha_st_file *f, const char *key,
                              const cJSON *shape, mha_st_entry *e)
{
    if (!cJSON_IsArray(shape))
        return corrupt(f, key, "\"shape\" is not an array");
    int n = cJSON_GetArraySize(shape);
    if (n > MHA_ST_MAX_DIMS)
        return corrupt(f, key, "more than 8 dimensions");
    e->ndim = n;
    e->count = 1;
    for (int i = 0; i < n; i++) {
        uint64_t d;
        if (!json_u64(cJSON_GetArrayItem(shape, i), &d) || d > INT64_MAX)
            return corrupt(f, key, "a dimension is not a non-negative integer");
        e->shape[i] = (int64_t)d;
        if (d && e->count > UINT64_MAX / d)
            return corrupt(f, key, "element count overflows");
        e->count *= d;
    }
    return MHA_OK;
}

static mha_status parse_entry(mha_st_file *f, const cJSON *item,
                              mha_st_entry *e)
{
    const char *key = item->string;
    if (!cJSON_IsObject(item))
        return corrupt(f, key, "entry is not an object");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dtype) || !dtype_size(dtype->valuestring))
        return corrupt(f, key, "missing or unknown \"dtype\"");
    snprintf(e->dtype, sizeof e->dtype, "%s", dtype->valuestring);
    mha_status st = parse_shape(f, key,
                                cJSON_GetObjectItemCaseSensitive(item, "shape"), e);
    if (st != MHA_OK)
        return st;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_u64(cJSON_GetArrayItem(offs, 0), &e->begin) ||
        !json_u64(cJSON_GetArrayItem(offs, 1), &e->end) || e->begin > e->end)
        return corrupt(f, key, "\"data_offsets\" is not [begin, end]");
    if (e->end > f->data_size)
        return corrupt(f, key, "data lies past the end of the file "
                               "(truncated?)");
    unsigned size = dtype_size(e->dtype);
    if (e->count > UINT64_MAX / size || e->end - e->begin != e->count * size)
        return corrupt(f, key, "byte range does not match dtype and shape");
    e->name = host_strdup(f->host, key);
    return e->name ? MHA_OK
                   : mha_host_error(f->host, MHA_OUT_OF_MEMORY,
                                    "safetensors: out of memory");
}

static mha_status parse_metadata(mha_st_file *f, const cJSON *meta)
{
    if (!cJSON_IsObject(meta))
        return corrupt(f, NULL, "\"__metadata__\" is not an object");
    if (f->meta)
        return corrupt(f, NULL, "\"__metadata__\" appears more than once");
    int n = cJSON_GetArraySize(meta);
    f->meta = mha_host_calloc(f->host, (size_t)n + 1, sizeof *f->meta);
    if (!f->meta)
        return mha_host_error(f->host, MHA_OUT_OF_MEMORY,
                              "safetensors: out of memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, meta) {
        if (!cJSON_IsString(item))
            return corrupt(f, NULL, "a \"__metadata__\" value is not a string");
        meta_pair *p = &f->meta[f->meta_count++];
        p->key = host_strdup(f->host, item->string);
        p->value = host_strdup(f->host, item->valuestring);
        if (!p->key || !p->value)
            return mha_host_error(f->host, MHA_OUT_OF_MEMORY,
                                  "safetensors: out of memory");
    }
    return MHA_OK;
}

static mha_status parse_header(mha_st_file *f, const char *json, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return corrupt(f, NULL, "header is not a JSON object");
    }
    int n = cJSON_GetArraySize(root);
    f->entries = mha_host_calloc(f->host, (size_t)n + 1, sizeof *f->entries);
    mha_status st = f->entries ? MHA_OK
                               : mha_host_error(f->host, MHA_OUT_OF_MEMORY,
                                                "safetensors: out of memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (st != MHA_OK)
            break;
        if (strcmp(item->string, "__metadata__") == 0)
            st = parse_metadata(f, item);
        else
            st = parse_entry(f, item, &f->entries[f->count++]);
    }
    cJSON_Delete(root);
    return st;
}

static mha_status read_header(mha_st_file *f)
{
    unsigned char len_bytes[8];
    if (fseek(f->fp, 0, SEEK_END) != 0)
        return mha_host_error(f->host, MHA_IO, "safetensors file %s: cannot "
                              "seek", f->path);
    long size = ftell(f->fp);
    rewind(f->fp);
    if (size < 0 || (size >= 8 && fread(len_bytes, 1, 8, f->fp) != 8 &&
                     ferror(f->fp)))
        return mha_host_error(f->host, MHA_IO, "safetensors file %s: cannot "
                              "read: %s", f->path, strerror(errno));
    if (size < 8 || feof(f->fp))
        return corrupt(f, NULL, "shorter than the 8-byte header length");
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = (len << 8) | len_bytes[i];
    if ((len > MAX_HEADER || len > (uint64_t)size - 8) &&
        looks_like_torch_save(len_bytes))
        return torch_save_file(f);
    if (len > MAX_HEADER || len > (uint64_t)size - 8)
        return corrupt(f, NULL, "header length is larger than the file "
                                "(truncated?) or than 100 MiB");
    f->data_start = 8 + len;
    f->data_size = (uint64_t)size - f->data_start;
    char *json = mha_host_malloc(f->host, (size_t)len + 1);
    if (!json)
        return mha_host_error(f->host, MHA_OUT_OF_MEMORY,
                              "safetensors: out of memory");
    mha_status st = MHA_OK;
    if (fread(json, 1, (size_t)len, f->fp) != len)
        st = corrupt(f, NULL, "cannot read the header");
    else
        st = parse_header(f, json, (size_t)len);
    mha_host_free(f->host, json);
    return st;
}

mha_status mha_st_open(mha_host *host, const char *path, mha_st_file **out)
{
    mha_st_file *f = mha_host_calloc(host, 1, sizeof *f);
    if (!f)
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "safetensors: out of memory");
    f->host = host;
    f->path = host_strdup(host, path);
    if (!f->path) {
        mha_st_close(f);
        return mha_host_error(host, MHA_OUT_OF_MEMORY,
                              "safetensors: out of memory");
    }
    const char *why = "";
    f->fp = mha_file_open_regular(path, true, &why);
    if (!f->fp) {
        mha_st_close(f);
        return mha_host_error(host, MHA_IO,
                              "safetensors file %s cannot be opened: %s",
                              path, why);
    }
    mha_status st = read_header(f);
    if (st != MHA_OK) {
        mha_st_close(f);
        return st;
    }
    *out = f;
    return MHA_OK;
}

void mha_st_close(mha_st_file *f)
{
    if (!f)
        return;
    if (f->fp)
        fclose(f->fp);
    for (int i = 0; f->entries && i < f->count; i++)
        mha_host_free(f->host, (void *)f->entries[i].name);
    for (int i = 0; i < f->meta_count; i++) {
        mha_host_free(f->host, f->meta[i].key);
        mha_host_free(f->host, f->meta[i].value);
    }
    mha_host_free(f->host, f->entries);
    mha_host_free(f->host, f->meta);
    mha_host_free(f->host, f->path);
    mha_host_free(f->host, f);
}

const mha_st_entry *mha_st_find(const mha_st_file *f, const char *name)
{
    for (int i = 0; i < f->count; i++)
        if (f->entries[i].name && strcmp(f->entries[i].name, name) == 0)
            return &f->entries[i];
    return NULL;
}

int mha_st_count(const mha_st_file *f) { return f->count; }

const mha_st_entry *mha_st_entry_at(const mha_st_file *f, int index)
{
    return index >= 0 && index < f->count ? &f->entries[index] : NULL;
}

const char *mha_st_metadata(const mha_st_file *f, const char *key)
{
    for (int i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta[i].key, key) == 0)
            return f->meta[i].value;
    return NULL;
}

int mha_st_is_float(const mha_st_entry *e)
{
    return !strcmp(e->dtype, "F32") || !strcmp(e->dtype, "F16") ||
           !strcmp(e->dtype, "BF16") || !strcmp(e->dtype, "F64");
}

static mha_status read_range(mha_st_file *f, const mha_st_entry *e,
                             uint64_t at, void *dst, size_t bytes)
{
    if (fseek(f->fp, (long)(f->data_start + e->begin + at), SEEK_SET) != 0 ||
        fread(dst, 1, bytes, f->fp) != bytes)
        return mha_host_error(f->host, MHA_IO,
                              "safetensors file %s: cannot read tensor \"%s\"",
                              f->path, e->name);
    return MHA_OK;
}

mha_status mha_st_read_raw(mha_st_file *f, const mha_st_entry *e, void *dst)
{
    return read_range(f, e, 0, dst, (size_t)(e->end - e->begin));
}

static float load_le(const unsigned char *p, unsigned size, const char *dtype)
{
    uint64_t u = 0;
    for (int i = (int)size - 1; i >= 0; i--)
        u = (u << 8) | p[i];
    if (size == 4) {
        uint32_t w = (uint32_t)u;
        float v;
        memcpy(&v, &w, 4);
        return v;
    }
    if (size == 8) {
        double v;
        memcpy(&v, &u, 8);
        return (float)v;
    }
    return dtype[0] == 'B' ? mha_bf16_to_f32((uint16_t)u)
                           : mha_f16_to_f32((uint16_t)u);
}

/* Converts in chunks through the stack; byte order is handled explicitly so
 * big-endian hosts read the same values. */
mha_status mha_st_read_f32(mha_st_file *f, const mha_st_entry *e, float *dst)
{
    unsigned size = dtype_size(e->dtype);
    unsigned char chunk[8192];
    size_t per = sizeof chunk / size;
    for (uint64_t done = 0; done < e->count;) {
        size_t n = e->count - done < per ? (size_t)(e->count - done) : per;
        mha_status st = read_range(f, e, done * size, chunk, n * size);
        if (st != MHA_OK)
            return st;
        for (size_t i = 0; i < n; i++)
            dst[done + i] = load_le(chunk + i * size, size, e->dtype);
        done += n;
    }
    return MHA_OK;
}

/* The JSON header of tensors laid out back to back, with metadata. */
static cJSON *make_header(const mha_st_out *t, int count,
                          const char *const *meta, int nmeta)
{
    cJSON *root = cJSON_CreateObject(), *m = cJSON_CreateObject();
    int ok = root && m && cJSON_AddItemToObject(root, "__metadata__", m);
    if (!ok)
        cJSON_Delete(m);
    for (int i = 0; ok && i < nmeta; i++)
        ok = cJSON_AddStringToObject(m, meta[2 * i], meta[2 * i + 1]) != NULL;
    size_t at = 0;
    for (int i = 0; ok && i < count; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, t[i].name);
        cJSON *shape = e ? cJSON_AddArrayToObject(e, "shape") : NULL;
        cJSON *offs = e ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
        ok = shape && offs && cJSON_AddStringToObject(e, "dtype", t[i].dtype);
        for (int k = 0; ok && k < t[i].ndim; k++)
            ok = cJSON_AddItemToArray(
                shape, cJSON_CreateNumber((double)t[i].shape[k]));
        ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)at)) &&
             cJSON_AddItemToArray(
                 offs, cJSON_CreateNumber((double)(at + t[i].bytes)));
        at += t[i].bytes;
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

mha_status mha_st_write(mha_host *host, const char *path,
                        const mha_st_out *tensors, int count,
                        const char *const *meta, int nmeta)
{
    cJSON *root = make_header(tensors, count, meta, nmeta);
    char *json = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    size_t len = json ? strlen(json) : 0, padded = (len + 7) / 8 * 8;
    size_t bytes = 0;
    for (int i = 0; i < count; i++)
        bytes += tensors[i].bytes;
    unsigned char *head = json ? mha_host_malloc(host, 8 + padded) : NULL;
    unsigned char *data = head ? mha_host_malloc(host, bytes ? bytes : 1)
                               : NULL;
    mha_status st = MHA_OK;
    if (!data) {
        st = mha_host_error(host, MHA_OUT_OF_MEMORY,
                            "safetensors file %s: out of memory writing",
                            path);
    } else {
        for (int i = 0; i < 8; i++) /* the header length, little-endian */
            head[i] = (unsigned char)((uint64_t)padded >> (8 * i));
        memcpy(head + 8, json, len);
        memset(head + 8 + len, ' ', padded - len); /* the format's padding */
        size_t at = 0;
        for (int i = 0; i < count; i++) {
            memcpy(data + at, tensors[i].data, tensors[i].bytes);
            at += tensors[i].bytes;
        }
        int err = mha_cache_file_write(path, head, 8 + padded, data, bytes);
        if (err)
            st = mha_host_error(host, MHA_IO,
                                "safetensors file %s cannot be written: %s",
                                path, strerror(err));
    }
    mha_host_free(host, data);
    mha_host_free(host, head);
    cJSON_free(json);
    return st;
}

mha_status mha_st_load(mha_context *ctx, const char *fn, const char *path,
                       const char *prefix, mha_st_load_fn load, void *obj)
{
    if (!path)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: path is NULL", fn);
    mha_st_file *file;
    mha_status st = mha_st_open(&ctx->host, path, &file);
    if (st == MHA_OK) {
        st = load(obj, file, path, prefix ? prefix : "");
        mha_st_close(file);
    }
    return mha_host_finish(&ctx->host, fn, st);
}
