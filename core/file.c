/* file.c: opening files that someone else may control, safely, for the
 * safetensors loader and the GPU backends' on-disk caches. Only regular
 * files are read, opened without blocking (a FIFO would block forever, a
 * device never end); cache files live only in a private directory and are
 * written through a new temporary file that O_EXCL makes sure nobody
 * planted (a symlink there is never followed), renamed into place. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if defined(_WIN32)
#include <direct.h>
#include <io.h>
#else
#include <unistd.h>
#endif

#include "backend.h"

#if defined(_WIN32)
#define mkdir_private(p) _mkdir(p)
#define O_NONBLOCK 0 /* Windows has no FIFOs in the file system */
#define O_NOFOLLOW 0
#define O_CLOEXEC 0
#define S_ISREG(m) (((m) & _S_IFMT) == _S_IFREG)
#else
#define mkdir_private(p) mkdir((p), 0700)
#endif

/* Closes fd and fails with err, and text or err's description as why. */
static FILE *refuse(int fd, int err, const char *text, const char **why)
{
    close(fd);
    *why = text ? text : strerror(err);
    errno = err;
    return NULL;
}

FILE *mha_file_open_regular(const char *path, bool follow, const char **why)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC |
                            (follow ? 0 : O_NOFOLLOW));
    if (fd < 0) {
        *why = !follow && errno == ELOOP ? "a symbolic link"
                                         : strerror(errno);
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return refuse(fd, errno, NULL, why);
    if (!S_ISREG(sb.st_mode))
        return refuse(fd, EINVAL,
                      "not a regular file (a FIFO, device or directory)",
                      why);
    FILE *f = fdopen(fd, "rb");
    return f ? f : refuse(fd, errno, NULL, why);
}

FILE *mha_cache_file_open(mha_host *host, const char *path)
{
    const char *why = "";
    FILE *f = mha_file_open_regular(path, false, &why);
    if (!f && errno != ENOENT)
        mha_host_log(host, MHA_LOG_WARN, "ignoring cache file %s (%s)", path,
                     why);
    return f;
}

/* mkdir -p with mode 0700 for each directory it creates. */
static void make_dirs(char *dir)
{
    for (char *p = dir + 1; *p; ++p) {
        if (*p != '/' && *p != '\\')
            continue;
        char c = *p;
        *p = '\0';
        mkdir_private(dir);
        *p = c;
    }
    mkdir_private(dir);
}

int mha_cache_dir_resolve(mha_host *host, const char *option, char *out,
                          size_t size)
{
    const char *dir = option ? option : mha_host_getenv(host, "MHA_CACHE_DIR");
    const char *suffix = "";
    if (!dir) {
        const char *xdg = mha_host_getenv(host, "XDG_CACHE_HOME");
        const char *home = mha_host_getenv(host, "HOME");
#if defined(_WIN32)
        const char *local = mha_host_getenv(host, "LOCALAPPDATA");
        if (!(xdg && xdg[0]) && local && local[0])
            xdg = local;
#endif
        if (xdg && xdg[0])
            dir = xdg, suffix = "/libmha";
        else if (home && home[0])
            dir = home, suffix = "/.cache/libmha";
    }
    if (!dir || !dir[0])
        return 0;
    return (size_t)snprintf(out, size, "%s%s", dir, suffix) < size ? 1 : -1;
}

bool mha_cache_dir_ready(mha_host *host, char *dir)
{
    make_dirs(dir);
    struct stat sb;
    const char *why = NULL;
    if (stat(dir, &sb) != 0)
        why = strerror(errno);
    else if (!S_ISDIR(sb.st_mode))
        why = "not a directory";
#if !defined(_WIN32)
    else if (sb.st_uid != geteuid())
        why = "owned by another user";
    else if (sb.st_mode & (S_IWGRP | S_IWOTH))
        why = "writable by group or others";
#endif
    if (why)
        mha_host_log(host, MHA_LOG_WARN,
                     "cache directory %s: %s; caching is off (use a "
                     "private directory, mode 0700)",
                     dir, why);
    return why == NULL;
}

/* A new file next to path, created by this call alone (O_EXCL: a name that
 * exists, a planted symlink included, is never opened), mode 0600; its
 * name in tmp. */
static int create_temp(const char *path, char *tmp, size_t cap)
{
    if ((size_t)snprintf(tmp, cap, "%s.XXXXXX", path) >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
#if defined(_WIN32)
    if (_mktemp_s(tmp, strlen(tmp) + 1) != 0)
        return -1;
    return _open(tmp, _O_CREAT | _O_EXCL | _O_WRONLY | _O_BINARY,
                 _S_IREAD | _S_IWRITE);
#else
    int fd = mkstemp(tmp); /* O_CREAT | O_EXCL, mode 0600 */
    if (fd >= 0)
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
#endif
}

int mha_cache_file_write(const char *path, const void *head, size_t head_size,
                         const void *data, size_t size)
{
    char tmp[4096];
    int fd = create_temp(path, tmp, sizeof tmp);
    if (fd < 0)
        return errno;
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        remove(tmp);
        return e;
    }
    int ok = fwrite(head, 1, head_size, f) == head_size &&
             fwrite(data, 1, size, f) == size;
    int e = ok ? 0 : errno;
    if (fclose(f) != 0 && ok)
        ok = 0, e = errno;
#if defined(_WIN32)
    if (ok)
        remove(path); /* rename does not replace on Windows */
#endif
    if (ok && rename(tmp, path) != 0)
        ok = 0, e = errno;
    if (!ok)
        remove(tmp);
    return ok ? 0 : (e ? e : EIO);
}
