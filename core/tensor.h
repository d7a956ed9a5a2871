/* tensor.h: the private form of mha_tensor and what tensor.c offers the
 * rest of the core: the shape check every entry point uses and the upload
 * of bool masks as libmha's one mask format (additive f32). */
#ifndef MHA_CORE_TENSOR_H
#define MHA_CORE_TENSOR_H

#include "context.h"

struct mha_tensor {
    mha_device *device;
    mha_dtype dtype;    /* as the user sees it */
    int ndim;
    int64_t shape[MHA_MAX_DIMS];
    size_t count;       /* elements */
    void *buf;          /* backend buffer; MHA_BOOL is stored as additive
                           f32 (0 or -inf) so every backend sees one mask
                           format */
    int wrapped;        /* buf wraps the caller's memory: not counted in
                           the device's memory use */
    int64_t strides[MHA_MAX_DIMS]; /* in elements; row-major unless a view */
    size_t offset;      /* elements into buf where element 0 is (views) */
    size_t storage;     /* elements buf holds: the bound of every view */
    mha_tensor *base;   /* the tensor a view was made from, else NULL */
    int views;          /* views made from this tensor that still exist */
};

/* Whether t's elements lie row-major from its offset (every tensor but a
 * strided view). */
int mha_tensor_is_contiguous(const mha_tensor *t);

/* Whether a and b are the same elements in the same order: one buffer,
 * offset, shape and strides. */
int mha_tensor_same_view(const mha_tensor *a, const mha_tensor *b);

/* Whether a and b may hold a common element: 0 only when they are proved
 * apart (other buffers, spans that do not meet, or column ranges apart
 * within a row pitch, as q, k and v views of one fused [T, 3, H, d]
 * buffer are), so a 1 may be conservative. */
int mha_tensor_may_overlap(const mha_tensor *a, const mha_tensor *b);

/* MHA_INVALID_ARGUMENT naming both when written (called name), which fn
 * writes, may share memory with one of the n tensors it still reads after
 * writing it (read, called read_names; NULL entries are skipped). */
mha_status mha_check_apart(mha_context *ctx, const char *fn, const char *name,
                           const mha_tensor *written,
                           const mha_tensor *const *read,
                           const char *const *read_names, int n);

/* Checks a user shape (1 to MHA_MAX_DIMS positive dimensions whose bytes fit
 * size_t) and computes its element count; fn and what name the caller and
 * the argument in the message. */
mha_status mha_check_shape(mha_context *ctx, const char *fn, const char *what,
                           int ndim, const int64_t *shape, size_t *count);

/* Writes count bool bytes (nonzero: masked) into buf as additive f32 (0 or
 * -inf), starting at element first. */
mha_status mha_upload_bool_mask(mha_device *device, void *buf, size_t first,
                                const uint8_t *src, size_t count);

#endif /* MHA_CORE_TENSOR_H */
