/* tensor.c: device-resident tensors, so data can stay on a device between
 * forward calls and between layers, and strided views of them (Q, K and V
 * of a fused projection passed to mha_attention without copies). Boolean
 * masks are stored as additive f32 (0 or -inf): every backend then reads
 * one mask format. */
#include <math.h>
#include <string.h>

#include "interop.h"
#include "tensor.h"

#define CHUNK_FLOATS 4096 /* conversion of bool masks goes through the stack */

/* Checks a user shape and computes its element count. */
mha_status mha_check_shape(mha_context *ctx, const char *fn, const char *what,
                           int ndim, const int64_t *shape, size_t *count)
{
    if (!shape && ndim > 0)
        return mha_error(ctx, MHA_INVALID_ARGUMENT, "%s: %s shape is NULL",
                         fn, what);
    if (ndim < 1 || ndim > MHA_MAX_DIMS)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: %s has %d dimensions; expected 1 to %d", fn,
                         what, ndim, MHA_MAX_DIMS);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: %s dimension %d is %lld; expected > 0", fn,
                             what, i, (long long)shape[i]);
        if ((uint64_t)shape[i] > SIZE_MAX || !mha_mul_size(n, (size_t)shape[i], &n))
            return mha_error(ctx, MHA_OVERFLOW,
                             "%s: %s has more elements than size_t holds", fn,
                             what);
    }
    size_t bytes;
    if (!mha_mul_size(n, 4, &bytes) || n > (size_t)INT64_MAX / 4)
        return mha_error(ctx, MHA_OVERFLOW,
                         "%s: %s needs more bytes than size_t holds", fn,
                         what);
    *count = n;
    return MHA_OK;
}

/* Where MHA_F16 tensors have a use: devices with fp16 storage, and the CPU
 * backend, whose attention core converts fp16 on load (its nn.MHA layers
 * stay fp32). */
static int fp16_tensors(const mha_device *device)
{
    return (device->entry.desc.features & MHA_FEATURE_FP16_STORAGE) ||
           strcmp(device->iface->name, "cpu") == 0;
}

static void row_major(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i];
    }
}

int mha_tensor_is_contiguous(const mha_tensor *t)
{
    int64_t want[MHA_MAX_DIMS];
    row_major(t->ndim, t->shape, want);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 1 && t->strides[i] != want[i])
            return 0;
    return 1;
}

/* Checks dtype and shape and makes the tensor without its buffer. */
static mha_status new_tensor(mha_device *device, const char *fn,
                             mha_dtype dtype, int ndim, const int64_t *shape,
                             mha_tensor **out)
{
    mha_context *ctx = device->ctx;
    if (dtype != MHA_F32 && dtype != MHA_F16 && dtype != MHA_BOOL &&
        dtype != MHA_I32)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: dtype %d is not a mha_dtype", fn, (int)dtype);
    if (dtype == MHA_F16 && !fp16_tensors(device))
        return mha_error(ctx, MHA_UNSUPPORTED,
                         "%s: MHA_F16 tensors need a device with "
                         "MHA_FEATURE_FP16_STORAGE or the cpu backend; %s "
                         "%s has neither",
                         fn, device->iface->name, device->entry.desc.name);
    size_t count;
    mha_status st = mha_check_shape(ctx, fn, "tensor", ndim, shape, &count);
    if (st != MHA_OK)
        return st;
    mha_tensor *t = mha_host_calloc(&ctx->host, 1, sizeof *t);
    if (!t)
        return mha_error(ctx, MHA_OUT_OF_MEMORY, "%s: out of memory", fn);
    t->device = device;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->count = count;
    t->storage = count;
    row_major(ndim, shape, t->strides);
    *out = t;
    return MHA_OK;
}

static size_t tensor_storage_bytes(const mha_tensor *t)
{
    return t->count * mha_dtype_storage_size(t->dtype);
}

static mha_status attach(mha_tensor *t, mha_tensor **out)
{
    t->device->open_objects++;
    mha_clear_error(t->device->ctx);
    *out = t;
    return MHA_OK;
}

mha_status mha_tensor_create(mha_device *device, mha_dtype dtype, int ndim,
                             const int64_t *shape, mha_tensor **out)
{
    if (!device)
        return MHA_INVALID_ARGUMENT;
    if (!out)
        return mha_error(device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_tensor_create: out is NULL");
    mha_tensor *t = NULL;
    mha_status st = new_tensor(device, "mha_tensor_create", dtype, ndim,
                               shape, &t);
    if (st == MHA_OK)
        st = mha_dev_alloc(device, tensor_storage_bytes(t), &t->buf);
    if (st != MHA_OK) {
        mha_host_free(&device->ctx->host, t);
        return mha_host_finish(&device->ctx->host, "mha_tensor_create", st);
    }
    return attach(t, out);
}

mha_status mha_tensor_adopt(mha_device *device, const char *fn,
                            mha_dtype dtype, int ndim, const int64_t *shape,
                            void *buf, size_t capacity, mha_tensor **out)
{
    mha_context *ctx = device->ctx;
    mha_tensor *t = NULL;
    mha_status st = mha_dev_usable(device);
    if (st == MHA_OK && dtype == MHA_BOOL)
        st = mha_error(ctx, MHA_DTYPE_MISMATCH,
                       "%s: a wrapped buffer cannot hold a bool mask (libmha "
                       "stores masks as additive f32: 0 keeps, -inf masks); "
                       "wrap it as MHA_F32",
                       fn);
    if (st == MHA_OK)
        st = new_tensor(device, fn, dtype, ndim, shape, &t);
    if (st == MHA_OK && tensor_storage_bytes(t) > capacity)
        st = mha_error(ctx, MHA_BUFFER_TOO_SMALL,
                       "%s: the tensor needs %zu bytes; the buffer range "
                       "holds %zu",
                       fn, tensor_storage_bytes(t), capacity);
    if (st != MHA_OK) {
        mha_dev_free(device, buf, 0); /* wrapped: never counted */
        mha_host_free(&ctx->host, t);
        return st;
    }
    t->buf = buf;
    t->wrapped = 1;
    return attach(t, out);
}

static size_t tensor_user_bytes(const mha_tensor *t)
{
    return t->count * (t->dtype == MHA_BOOL ? 1 : mha_dtype_storage_size(t->dtype));
}

/* Writes count bool bytes as additive f32 at element offset first. */
mha_status mha_upload_bool_mask(mha_device *device, void *buf, size_t first,
                                const uint8_t *src, size_t count)
{
    float chunk[CHUNK_FLOATS];
    for (size_t done = 0; done < count;) {
        size_t n = count - done < CHUNK_FLOATS ? count - done : CHUNK_FLOATS;
        for (size_t i = 0; i < n; i++)
            chunk[i] = src[done + i] ? -INFINITY : 0.0f;
        mha_status st = mha_dev_write(device, buf, (first + done) * 4, chunk,
                                      n * 4);
        if (st != MHA_OK)
            return st;
        done += n;
    }
    return MHA_OK;
}

static mha_status download_bool_mask(const mha_tensor *t, uint8_t *dst)
{
    float chunk[CHUNK_FLOATS];
    for (size_t done = 0; done < t->count;) {
        size_t n = t->count - done < CHUNK_FLOATS ? t->count - done
                                                  : CHUNK_FLOATS;
        mha_status st = mha_dev_read(t->device, t->buf, done * 4, chunk,
                                     n * 4);
        if (st != MHA_OK)
            return st;
        for (size_t i = 0; i < n; i++)
            dst[done + i] = chunk[i] == -INFINITY;
        done += n;
    }
    return MHA_OK;
}

/* A strided view is read and written through its base. */
static mha_status check_transfer(const mha_tensor *t, const char *fn)
{
    if (mha_tensor_is_contiguous(t))
        return MHA_OK;
    return mha_error(t->device->ctx, MHA_UNSUPPORTED,
                     "%s: the tensor is a strided view; upload or download "
                     "its base",
                     fn);
}

static size_t tensor_byte_offset(const mha_tensor *t)
{
    return t->offset * mha_dtype_storage_size(t->dtype);
}

mha_status mha_tensor_upload(mha_tensor *tensor, const void *src, size_t size)
{
    if (!tensor)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = tensor->device->ctx;
    if (!src)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_tensor_upload: src is NULL");
    if (size != tensor_user_bytes(tensor))
        return mha_error(ctx, MHA_SHAPE_MISMATCH,
                         "mha_tensor_upload: size %zu bytes; expected %zu "
                         "(%zu elements of %s)",
                         size, tensor_user_bytes(tensor), tensor->count,
                         mha_dtype_name(tensor->dtype));
    mha_status st = check_transfer(tensor, "mha_tensor_upload");
    if (st == MHA_OK)
        st = tensor->dtype == MHA_BOOL
                 ? mha_upload_bool_mask(tensor->device, tensor->buf, 0, src,
                                        tensor->count)
                 : mha_dev_write(tensor->device, tensor->buf,
                                 tensor_byte_offset(tensor), src, size);
    return mha_host_finish(&ctx->host, "mha_tensor_upload", st);
}

mha_status mha_tensor_download(const mha_tensor *tensor, void *dst,
                               size_t size)
{
    if (!tensor)
        return MHA_INVALID_ARGUMENT;
    mha_context *ctx = tensor->device->ctx;
    if (!dst)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "mha_tensor_download: dst is NULL");
    if (size < tensor_user_bytes(tensor))
        return mha_error(ctx, MHA_BUFFER_TOO_SMALL,
                         "mha_tensor_download: size %zu bytes; the tensor "
                         "holds %zu",
                         size, tensor_user_bytes(tensor));
    mha_status st = check_transfer(tensor, "mha_tensor_download");
    if (st == MHA_OK)
        st = tensor->dtype == MHA_BOOL
                 ? download_bool_mask(tensor, dst)
                 : mha_dev_read(tensor->device, tensor->buf,
                                tensor_byte_offset(tensor), dst,
                                tensor_user_bytes(tensor));
    return mha_host_finish(&ctx->host, "mha_tensor_download", st);
}

mha_status mha_tensor_get_shape(const mha_tensor *tensor, mha_dtype *dtype,
                                int *ndim, int64_t *shape)
{
    if (!tensor)
        return MHA_INVALID_ARGUMENT;
    if (dtype)
        *dtype = tensor->dtype;
    if (ndim)
        *ndim = tensor->ndim;
    if (shape)
        memcpy(shape, tensor->shape, (size_t)tensor->ndim * sizeof *shape);
    mha_clear_error(tensor->device->ctx);
    return MHA_OK;
}

mha_status mha_tensor_destroy(mha_tensor *tensor)
{
    if (!tensor)
        return MHA_OK;
    mha_device *device = tensor->device;
    if (tensor->views)
        return mha_error(device->ctx, MHA_BAD_STATE,
                         "mha_tensor_destroy: %d view(s) of this tensor "
                         "still exist; destroy them first",
                         tensor->views);
    if (tensor->base)
        tensor->base->views--;
    else
        mha_dev_free(device, tensor->buf,
                     tensor->wrapped ? 0 : tensor_storage_bytes(tensor));
    device->open_objects--;
    mha_host_free(&device->ctx->host, tensor);
    mha_clear_error(device->ctx);
    return MHA_OK;
}

/* ---- views ------------------------------------------------------------------- */

/* The last element a view of shape and strides reaches past offset, or
 * SIZE_MAX when that overflows. */
static size_t view_reach(size_t offset, int ndim, const int64_t *shape,
                         const int64_t *strides)
{
    size_t last = offset, step;
    for (int i = 0; i < ndim; i++) {
        if (!mha_mul_size((size_t)(shape[i] - 1), (size_t)strides[i], &step) ||
            last + step < last)
            return SIZE_MAX;
        last += step;
    }
    return last;
}

int mha_tensor_same_view(const mha_tensor *a, const mha_tensor *b)
{
    size_t dims = (size_t)a->ndim * sizeof(int64_t);
    return a->buf == b->buf && a->offset == b->offset &&
           a->ndim == b->ndim && !memcmp(a->shape, b->shape, dims) &&
           !memcmp(a->strides, b->strides, dims);
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

/* The width of t's contiguous run: the dimensions (of extent above 1, in
 * any order) whose strides are 1, then the extent so far, and so on, so
 * that they reach every offset in [0, width) once (d, then H of a
 * [B, T, H, d] row, or of a [B, H, T, d] view of one); the strides of the
 * other dimensions are added to the running gcd *g. */
static int64_t pitch_of(const mha_tensor *t, int64_t *g)
{
    int in_run[MHA_MAX_DIMS] = {0};
    int64_t width = 1;
    for (int grew = 1; grew;) {
        grew = 0;
        for (int i = 0; i < t->ndim; i++)
            if (!in_run[i] && t->shape[i] > 1 && t->strides[i] == width) {
                in_run[i] = 1;
                width *= t->shape[i];
                grew = 1;
            }
    }
    for (int i = 0; i < t->ndim; i++)
        if (!in_run[i] && t->shape[i] > 1)
            *g = gcd64(*g, t->strides[i]);
    return width;
}

/* With every outer stride a multiple of the pitch p, an element's column
 * (offset mod p) lies in [offset mod p, + width) if that range does not
 * wrap: two such ranges apart mean no common element. */
static int columns_apart(const mha_tensor *a, const mha_tensor *b)
{
    int64_t p = 0;
    int64_t wa = pitch_of(a, &p), wb = pitch_of(b, &p);
    if (p <= 0)
        return 0;
    int64_t ca = (int64_t)(a->offset % (size_t)p);
    int64_t cb = (int64_t)(b->offset % (size_t)p);
    return ca + wa <= p && cb + wb <= p && (ca + wa <= cb || cb + wb <= ca);
}

int mha_tensor_may_overlap(const mha_tensor *a, const mha_tensor *b)
{
    if (a->buf != b->buf)
        return 0;
    size_t a_last = view_reach(a->offset, a->ndim, a->shape, a->strides);
    size_t b_last = view_reach(b->offset, b->ndim, b->shape, b->strides);
    if (a->offset > b_last || b->offset > a_last)
        return 0;
    return !columns_apart(a, b);
}

mha_status mha_check_apart(mha_context *ctx, const char *fn, const char *name,
                           const mha_tensor *written,
                           const mha_tensor *const *read,
                           const char *const *read_names, int n)
{
    for (int i = 0; written && i < n; i++)
        if (read[i] && mha_tensor_may_overlap(written, read[i]))
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: %s shares memory with %s, which the call "
                             "still reads after writing %s (give %s a "
                             "tensor of its own)",
                             fn, name, read_names[i], name, name);
    return MHA_OK;
}

static mha_status check_view(const mha_tensor *base, size_t offset_elems,
                             int ndim, const int64_t *shape,
                             const int64_t *strides)
{
    static const char fn[] = "mha_tensor_view";
    mha_context *ctx = base->device->ctx;
    if (base->dtype == MHA_BOOL)
        return mha_error(ctx, MHA_DTYPE_MISMATCH,
                         "%s: base is an MHA_BOOL mask; views take f32, f16 "
                         "or i32 tensors (make the mask MHA_F32: 0 keeps, "
                         "-inf masks)",
                         fn);
    for (int i = 0; i < ndim; i++)
        if (strides[i] < 0)
            return mha_error(ctx, MHA_INVALID_ARGUMENT,
                             "%s: strides_elems[%d] is %lld; expected >= 0",
                             fn, i, (long long)strides[i]);
    size_t first = base->offset + offset_elems;
    size_t last = first < base->offset ? SIZE_MAX
                                       : view_reach(first, ndim, shape,
                                                    strides);
    if (last >= base->storage)
        return mha_error(ctx, MHA_INVALID_ARGUMENT,
                         "%s: the view reaches element %zu of the base's "
                         "storage (offset_elems %zu); it holds %zu",
                         fn, last, offset_elems, base->storage);
    return MHA_OK;
}

mha_status mha_tensor_view(mha_tensor *base, size_t offset_elems, int ndim,
                           const int64_t *shape, const int64_t *strides_elems,
                           mha_tensor **out)
{
    if (!base)
        return MHA_INVALID_ARGUMENT;
    if (!out)
        return mha_error(base->device->ctx, MHA_INVALID_ARGUMENT,
                         "mha_tensor_view: out is NULL");
    mha_tensor *t = NULL;
    int64_t strides[MHA_MAX_DIMS];
    mha_status st = new_tensor(base->device, "mha_tensor_view", base->dtype,
                               ndim, shape, &t);
    if (st != MHA_OK)
        return st;
    if (strides_elems)
        memcpy(strides, strides_elems, (size_t)ndim * sizeof *strides);
    else
        memcpy(strides, t->strides, sizeof strides);
    st = check_view(base, offset_elems, ndim, shape, strides);
    if (st != MHA_OK) {
        mha_host_free(&base->device->ctx->host, t);
        return st;
    }
    memcpy(t->strides, strides, (size_t)ndim * sizeof *strides);
    t->buf = base->buf;
    t->wrapped = 1;
    t->offset = base->offset + offset_elems;
    t->storage = base->storage;
    t->base = base;
    base->views++;
    return attach(t, out);
}
