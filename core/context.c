/* context.c: the context (allocator, log, last error message) and the core
 * services backends use through mha_host. No global state: everything a
 * call needs hangs off the context it was given. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"

/* ---- memory ---------------------------------------------------------------- */

static void *heap_malloc(void *user, size_t size)
{
    (void)user;
    return malloc(size);
}

static void heap_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

void *mha_host_malloc(mha_host *host, size_t size)
{
    return host->alloc.malloc(host->alloc.user, size ? size : 1);
}

void *mha_host_calloc(mha_host *host, size_t count, size_t size)
{
    size_t bytes;
    if (!mha_mul_size(count, size, &bytes))
        return NULL;
    void *p = mha_host_malloc(host, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void mha_host_free(mha_host *host, void *ptr)
{
    if (ptr)
        host->alloc.free(host->alloc.user, ptr);
}

int mha_mul_size(size_t a, size_t b, size_t *out)
{
    if (b && a > SIZE_MAX / b)
        return 0;
    *out = a * b;
    return 1;
}

/* ---- messages and log ---------------------------------------------------- */

static void host_vlog(mha_host *host, mha_log_level level, const char *fmt,
                      va_list ap)
{
    if (!host->log || level > host->log_level)
        return;
    char line[MHA_ERRMSG_SIZE];
    vsnprintf(line, sizeof line, fmt, ap);
    host->log(host->log_user, level, line);
}

void mha_host_log(mha_host *host, mha_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    host_vlog(host, level, fmt, ap);
    va_end(ap);
}

mha_status mha_host_error(mha_host *host, mha_status status, const char *fmt,
                          ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(host->errmsg, sizeof host->errmsg, fmt, ap);
    va_end(ap);
    mha_host_log(host, MHA_LOG_DEBUG, "%s: %s", mha_status_str(status),
                 host->errmsg);
    return status;
}

mha_status mha_error(mha_context *ctx, mha_status status, const char *fmt,
                     ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->host.errmsg, sizeof ctx->host.errmsg, fmt, ap);
    va_end(ap);
    mha_host_log(&ctx->host, MHA_LOG_DEBUG, "%s: %s", mha_status_str(status),
                 ctx->host.errmsg);
    return status;
}

void mha_clear_error(mha_context *ctx) { ctx->host.errmsg[0] = '\0'; }

mha_status mha_host_finish(mha_host *host, const char *fn, mha_status status)
{
    char *msg = host->errmsg;
    size_t n = strlen(fn);
    if (status == MHA_OK) {
        msg[0] = '\0';
        return status;
    }
    if (strncmp(msg, fn, n) == 0 && msg[n] == ':')
        return status;
    if (!msg[0])
        snprintf(msg, MHA_ERRMSG_SIZE, "%s", mha_status_str(status));
    /* shift the message right by "fn: ", cutting its end if need be */
    size_t len = strlen(msg), shift = n + 2;
    if (shift >= MHA_ERRMSG_SIZE)
        return status;
    if (len > MHA_ERRMSG_SIZE - 1 - shift)
        len = MHA_ERRMSG_SIZE - 1 - shift;
    memmove(msg + shift, msg, len);
    msg[shift + len] = '\0';
    memcpy(msg, fn, n);
    memcpy(msg + n, ": ", 2);
    return status;
}

const char *mha_host_getenv(mha_host *host, const char *name)
{
    (void)host;
    return getenv(name);
}

const char *mha_shape_str(char *buf, size_t size, int ndim,
                          const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld",
                                 i ? "," : "", (long long)shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
    return buf;
}

/* MHA_LOG=error|warn|info|debug without a callback: lines go to stderr,
 * the one place the library prints, and only when the user asks. */
static void stderr_log(void *user, mha_log_level level, const char *msg)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    (void)user;
    fprintf(stderr, "libmha %s: %s\n", names[level], msg);
}

static int parse_log_level(const char *text, mha_log_level *level)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(text, names[i]) == 0) {
            *level = (mha_log_level)i;
            return 1;
        }
    }
    if (strcmp(text, "1") == 0) {
        *level = MHA_LOG_INFO;
        return 1;
    }
    return 0;
}

/* ---- the context ---------------------------------------------------------- */

mha_status mha_context_options_init_sized(mha_context_options *options,
                                         size_t struct_size)
{
    if (mha_struct_init(options, struct_size, sizeof *options) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    options->log_level = MHA_LOG_WARN;
    return MHA_OK;
}

static mha_status check_options(const mha_context_options *o)
{
    if (mha_struct_check(NULL, "mha_context_create", "mha_context_options", o,
                         sizeof *o) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    if (o->allocator && (!o->allocator->malloc || !o->allocator->free))
        return MHA_INVALID_ARGUMENT;
    if ((unsigned)o->log_level > MHA_LOG_DEBUG)
        return MHA_INVALID_ARGUMENT;
    return MHA_OK;
}

mha_status mha_context_create(const mha_context_options *options,
                              mha_context **out)
{
    mha_context_options defaults;
    mha_context_options_init(&defaults);
    const mha_context_options *o = options ? options : &defaults;
    if (!out || check_options(o) != MHA_OK)
        return MHA_INVALID_ARGUMENT;
    mha_allocator alloc = {heap_malloc, heap_free, NULL};
    if (o->allocator)
        alloc = *o->allocator;
    mha_context *ctx = alloc.malloc(alloc.user, sizeof *ctx);
    if (!ctx)
        return MHA_OUT_OF_MEMORY;
    memset(ctx, 0, sizeof *ctx);
    ctx->host.alloc = alloc;
    ctx->host.log = o->log;
    ctx->host.log_user = o->log_user;
    ctx->host.log_level = o->log_level;
    const char *env = getenv("MHA_LOG");
    if (!o->log && env && parse_log_level(env, &ctx->host.log_level))
        ctx->host.log = stderr_log;
    const char *backends = o->backends ? o->backends : getenv("MHA_BACKENDS");
    if (!o->backends && backends && !*backends)
        backends = NULL; /* MHA_BACKENDS= is unset */
    mha_status st = mha_probe_devices(ctx, backends);
    if (st != MHA_OK) {
        mha_release_backends(ctx);
        alloc.free(alloc.user, ctx);
        return st;
    }
    *out = ctx;
    return MHA_OK;
}

mha_status mha_context_destroy(mha_context *ctx)
{
    if (!ctx)
        return MHA_OK;
    if (ctx->open_objects)
        return mha_error(ctx, MHA_BAD_STATE,
                         "mha_context_destroy: %d device(s) still open; "
                         "destroy them first",
                         ctx->open_objects);
    mha_release_backends(ctx);
    mha_allocator alloc = ctx->host.alloc;
    alloc.free(alloc.user, ctx);
    return MHA_OK;
}

const char *mha_context_errmsg(const mha_context *ctx)
{
    return ctx ? ctx->host.errmsg : "no context";
}
