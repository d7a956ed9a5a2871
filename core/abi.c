/* abi.c: the struct_size handshake of the structs a caller fills (mha.h,
 * "ABI"), in one place so every entry point refuses an unversioned or
 * truncated struct with the same message. */
#include <string.h>

#include "backend.h"

mha_status mha_struct_check(mha_host *host, const char *fn, const char *type,
                            const void *s, size_t min)
{
    if (!s)
        return MHA_OK;
    size_t size;
    memcpy(&size, s, sizeof size);
    if (size >= min)
        return MHA_OK;
    if (!host)
        return MHA_INVALID_ARGUMENT;
    return mha_host_error(host, MHA_INVALID_ARGUMENT,
                          "%s: %s.struct_size is %zu; expected at least %zu "
                          "(fill it with its *_init macro)",
                          fn, type, size, min);
}

mha_status mha_struct_init(void *s, size_t size, size_t min)
{
    if (!s || size < min)
        return MHA_INVALID_ARGUMENT;
    memset(s, 0, size);
    memcpy(s, &size, sizeof size);
    return MHA_OK;
}
