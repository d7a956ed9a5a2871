/* arrays.c: mha-heads' reader of input arrays: NumPy .npy files (format
 * versions 1 to 3, little-endian f2/f4/f8, C order) and tensors of a
 * .safetensors file (F16, BF16, F32, F64), converted to f32. Debian ships
 * no C library for .npy, and libmha's safetensors reader is private (tools
 * use the public API only), so both small readers live here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heads.h"

static int fail(char *err, size_t n, const char *fmt, const char *a,
                const char *b)
{
    snprintf(err, n, fmt, a, b);
    return -1;
}

static float half_to_float(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0    ? ldexpf((float)m, -24)
              : e == 31 ? (m ? NAN : INFINITY)
                        : ldexpf((float)(m | 1024), e - 25);
    return h & 0x8000 ? -v : v;
}

/* Converts count elements of type code t ('h' f16, 'b' bf16, 'f' f32,
 * 'd' f64; little-endian) at src to f32. */
static void convert(char t, const unsigned char *src, size_t count,
                    float *dst)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t u32;
        uint64_t u64;
        float f;
        double d;
        switch (t) {
        case 'h':
            dst[i] = half_to_float(
                (uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
            break;
        case 'b':
            u32 = (uint32_t)(src[2 * i] | src[2 * i + 1] << 8) << 16;
            memcpy(&f, &u32, 4);
            dst[i] = f;
            break;
        case 'f':
            memcpy(&u32, src + 4 * i, 4);
            memcpy(&f, &u32, 4);
            dst[i] = f;
            break;
        default:
            memcpy(&u64, src + 8 * i, 8);
            memcpy(&d, &u64, 8);
            dst[i] = (float)d;
        }
    }
}

static size_t type_size(char t) { return t == 'd' ? 8 : t == 'f' ? 4 : 2; }

/* The whole file, or NULL. */
static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) &&
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)(n < 0 ? 0 : n);
    return buf;
}

int heads_shape_count(int ndim, const int64_t *shape, size_t *count)
{
    *count = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1 ||
            (uint64_t)shape[i] > SIZE_MAX / sizeof(float) / *count)
            return -1;
        *count *= (size_t)shape[i];
    }
    return 0;
}

/* Fills out from count elements of type t at src with shape. */
static int fill(heads_array *out, char t, const unsigned char *src,
                size_t avail, int ndim, const int64_t *shape, char *err,
                size_t n)
{
    size_t count;
    if (ndim < 1 || ndim > MHA_MAX_DIMS)
        return fail(err, n, "%s%s: expected 1 to 4 dimensions", "array", "");
    if (heads_shape_count(ndim, shape, &count))
        return fail(err, n, "%s%s: a dimension is not positive, or there "
                            "are more elements than memory can hold",
                    "array", "");
    if (count > avail / type_size(t))
        return fail(err, n, "%s%s: the data is shorter than the shape says",
                    "array", "");
    out->data = malloc(count * sizeof(float));
    if (!out->data)
        return fail(err, n, "%s%s: out of memory", "array", "");
    convert(t, src, count, out->data);
    out->ndim = ndim;
    memcpy(out->shape, shape, (size_t)ndim * sizeof *shape);
    out->count = count;
    return 0;
}

/* ---- .npy ---------------------------------------------------------------- */

static int load_npy(const char *path, const unsigned char *b, size_t size,
                    heads_array *out, char *err, size_t n)
{
    if (size < 10 || memcmp(b, "\x93NUMPY", 6) != 0)
        return fail(err, n, "%s: %s", path, "not a .npy file");
    size_t hl = b[6] == 1 ? (size_t)(b[8] | b[9] << 8)
                          : size >= 12 ? (size_t)b[8] | (size_t)b[9] << 8 |
                                             (size_t)b[10] << 16 |
                                             (size_t)b[11] << 24
                                       : SIZE_MAX;
    size_t start = b[6] == 1 ? 10 : 12;
    if (hl > size - start)
        return fail(err, n, "%s: %s", path, "truncated .npy header");
    char header[1024];
    size_t len = hl < sizeof header - 1 ? hl : sizeof header - 1;
    memcpy(header, b + start, len);
    header[len] = '\0';
    const char *descr = strstr(header, "'descr'");
    const char *shape = strstr(header, "'shape'");
    if (!descr || !shape || strstr(header, "'fortran_order': True"))
        return fail(err, n, "%s: %s", path,
                    "expected a C-order .npy with descr and shape");
    char t = 0;
    const char *q = strchr(descr + 7, '\'');
    if (q && (q[1] == '<' || q[1] == '|') && q[2] == 'f' &&
        (q[3] == '2' || q[3] == '4' || q[3] == '8'))
        t = q[3] == '2' ? 'h' : q[3] == '4' ? 'f' : 'd';
    if (!t)
        return fail(err, n, "%s: %s", path,
                    "expected little-endian float data (<f2, <f4, <f8)");
    int64_t dims[MHA_MAX_DIMS + 1];
    int nd = 0;
    const char *p = strchr(shape, '(');
    while (p && *p && *p != ')' && nd <= MHA_MAX_DIMS) {
        char *end;
        long long v = strtoll(p + 1, &end, 10);
        if (end == p + 1)
            break;
        dims[nd++] = v;
        p = strpbrk(end, ",)");
        if (p && *p == ',' && end[strspn(end, ", ")] == ')')
            break;
    }
    return fill(out, t, b + start + hl, size - start - hl, nd, dims, err, n);
}

/* ---- .safetensors -------------------------------------------------------- */

static int load_safetensors(const char *path, const char *key,
                            const unsigned char *b, size_t size,
                            heads_array *out, char *err, size_t n)
{
    uint64_t hl = 0;
    for (int i = 7; size >= 8 && i >= 0; i--)
        hl = hl << 8 | b[i];
    if (size < 8 || hl > size - 8)
        return fail(err, n, "%s: %s", path, "not a .safetensors file");
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, (size_t)hl);
    if (!h)
        return fail(err, n, "%s: %s", path, "its JSON header does not parse");
    cJSON *t = NULL, *it;
    int tensors = 0;
    cJSON_ArrayForEach(it, h) {
        if (strcmp(it->string, "__metadata__") == 0)
            continue;
        tensors++;
        if (key ? strcmp(it->string, key) == 0 : !t)
            t = it;
    }
    int rc = -1;
    cJSON *dt = cJSON_GetObjectItem(t, "dtype");
    cJSON *sh = cJSON_GetObjectItem(t, "shape");
    cJSON *off = cJSON_GetObjectItem(t, "data_offsets");
    const char *d = cJSON_GetStringValue(dt);
    char c = !d ? 0 : !strcmp(d, "F32") ? 'f' : !strcmp(d, "F64") ? 'd'
             : !strcmp(d, "F16")        ? 'h'
             : !strcmp(d, "BF16")       ? 'b'
                                        : 0;
    if (!t || (!key && tensors != 1))
        fail(err, n, "%s: %s", path,
             key ? "no tensor of that name" : "holds several tensors: name "
                                              "one as FILE:KEY");
    else if (!c || !cJSON_IsArray(sh) || cJSON_GetArraySize(off) != 2)
        fail(err, n, "%s: %s", path,
             "expected an F16, BF16, F32 or F64 tensor");
    else {
        int64_t dims[MHA_MAX_DIMS] = {0};
        int nd = cJSON_GetArraySize(sh);
        for (int i = 0; i < nd && i < MHA_MAX_DIMS; i++)
            dims[i] = (int64_t)cJSON_GetArrayItem(sh, i)->valuedouble;
        double lo = cJSON_GetArrayItem(off, 0)->valuedouble;
        double hi = cJSON_GetArrayItem(off, 1)->valuedouble;
        size_t base = 8 + (size_t)hl;
        if (lo < 0 || hi < lo || hi > (double)(size - base))
            fail(err, n, "%s: %s", path, "data_offsets lie outside the file");
        else
            rc = fill(out, c, b + base + (size_t)lo, (size_t)(hi - lo),
                      nd, dims, err, n);
    }
    cJSON_Delete(h);
    return rc;
}

int heads_array_load(const char *spec, heads_array *out, char *err,
                     size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", spec);
    char *colon = strrchr(path, ':');
    const char *key = NULL;
    if (colon && strstr(path, ".safetensors") &&
        colon > strstr(path, ".safetensors")) {
        *colon = '\0';
        key = colon + 1;
    }
    memset(out, 0, sizeof *out);
    size_t size = 0;
    unsigned char *b = slurp(path, &size);
    if (!b)
        return fail(err, errlen, "%s: %s", path, "cannot be read");
    size_t len = strlen(path);
    int rc = len > 4 && strcmp(path + len - 4, ".npy") == 0
                 ? load_npy(path, b, size, out, err, errlen)
                 : load_safetensors(path, key, b, size, out, err, errlen);
    free(b);
    return rc;
}

void heads_array_free(heads_array *a)
{
    free(a->data);
    memset(a, 0, sizeof *a);
}
