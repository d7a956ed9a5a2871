/* safetensors.h: a reader for the .safetensors format (an 8-byte length, a
 * JSON header naming each tensor's dtype, shape and byte range, then raw
 * little-endian data) that trusts nothing in the file. */
#ifndef MHA_CORE_SAFETENSORS_H
#define MHA_CORE_SAFETENSORS_H

#include <stdint.h>
#include <stdio.h>

#include "backend.h"

#define MHA_ST_MAX_DIMS 8

typedef struct mha_st_entry {
    const char *name;
    char dtype[8];   /* "F32", "F16", "BF16", "F64", "BOOL", "I64", ... */
    int ndim;
    int64_t shape[MHA_ST_MAX_DIMS];
    uint64_t count;  /* elements */
    uint64_t begin;  /* byte range within the data section */
    uint64_t end;
} mha_st_entry;

typedef struct mha_st_file mha_st_file;

/* Opens and validates path: header length, JSON, every entry's dtype,
 * shape and byte range against the file's size. Errors name the path and
 * the offending key (MHA_IO, MHA_CORRUPT_FILE, MHA_OUT_OF_MEMORY). */
mha_status mha_st_open(mha_host *host, const char *path, mha_st_file **out);
void mha_st_close(mha_st_file *file);

const mha_st_entry *mha_st_find(const mha_st_file *file, const char *name);
int mha_st_count(const mha_st_file *file);
const mha_st_entry *mha_st_entry_at(const mha_st_file *file, int index);

/* A string from "__metadata__", or NULL. */
const char *mha_st_metadata(const mha_st_file *file, const char *key);

/* Whether an entry's dtype converts to f32 (F32, F16, BF16, F64). */
int mha_st_is_float(const mha_st_entry *entry);

/* Reads a float entry converted to f32 into dst (entry->count floats). */
mha_status mha_st_read_f32(mha_st_file *file, const mha_st_entry *entry,
                           float *dst);

/* Reads an entry's raw bytes (entry->end - entry->begin) into dst. */
mha_status mha_st_read_raw(mha_st_file *file, const mha_st_entry *entry,
                           void *dst);

/* ---- writing ---- */

/* One tensor to write: raw little-endian bytes of dtype ("F32", "F16"). */
typedef struct mha_st_out {
    const char *name;
    const char *dtype;
    int ndim;
    int64_t shape[MHA_ST_MAX_DIMS];
    const void *data;
    size_t bytes;
} mha_st_out;

/* Writes count tensors, in order and without holes, and the metadata
 * pairs meta[2i] = meta[2i + 1] (nmeta pairs) to path through a temporary
 * file renamed over it (mha_cache_file_write). Errors name the path:
 * MHA_IO with the reason, MHA_OUT_OF_MEMORY. */
mha_status mha_st_write(mha_host *host, const char *path,
                        const mha_st_out *tensors, int count,
                        const char *const *meta, int nmeta);

/* The frame of the public *_load_safetensors calls (fn names the caller):
 * refuses a NULL path, opens it, runs load(obj, file, path, prefix) with
 * prefix NULL read as "", closes the file and clears ctx's message on
 * success. */
typedef mha_status (*mha_st_load_fn)(void *obj, mha_st_file *file,
                                     const char *path, const char *prefix);
mha_status mha_st_load(mha_context *ctx, const char *fn, const char *path,
                       const char *prefix, mha_st_load_fn load, void *obj);

#endif
