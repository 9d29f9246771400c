/* ks_file: see ks_file.h. */
#define _GNU_SOURCE /* O_PATH, syscall, realpath */
#include "ks_file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__linux__) && defined(SYS_openat2)
#include <linux/openat2.h>
#define KS_HAVE_OPENAT2 1
#endif

/* Flags for opening a file to read: never block (a FIFO would wait for a writer for ever),
 * never become the controlling terminal, never leak into a child. */
#define KS_READ_FLAGS (O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)

/* Reads the opened `fd` (closed here in every case) as ks_file_read does; `path` names it in
 * messages, `not_regular` is the status for a FIFO, a device or a folder. */
static ks_status read_fd(int fd, const char *path, ks_status not_regular, size_t max_bytes,
                         char **data, size_t *len)
{
    ks_status st = KS_OK;
    char *buf = NULL;
    struct stat info;
    if (fstat(fd, &info) != 0) {
        st = ks_fail(KS_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(info.st_mode)) {
        st = ks_fail(not_regular, "%s is not a regular file", path);
        goto done;
    }
    if ((unsigned long long)info.st_size > max_bytes) {
        st = ks_fail(KS_ERR_LIMIT, "%s is %lld bytes, more than the limit of %zu", path,
                     (long long)info.st_size, max_bytes);
        goto done;
    }
    size_t size = (size_t)info.st_size, got = 0;
    buf = malloc(size + 1);
    if (!buf) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path, size);
        goto done;
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            st = ks_fail(KS_ERR_IO, "cannot read %s: %s", path,
                         n < 0 ? strerror(errno) : "short read");
            goto done;
        }
        got += (size_t)n;
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    buf = NULL;
done:
    free(buf);
    close(fd);
    return st;
}

ks_status ks_file_read(const char *path, size_t max_bytes, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd = open(path, KS_READ_FLAGS);
    if (fd < 0)
        return ks_fail(KS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    return read_fd(fd, path, KS_ERR_IO, max_bytes, data, len);
}

bool ks_path_clean(const char *path)
{
    if (!path || path[0] != '/')
        return false;
    for (const char *c = path; *c;) {
        while (*c == '/')
            c++;
        size_t n = strcspn(c, "/");
        if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            return false;
        c += n;
    }
    return true;
}

const char *ks_path_beneath(const char *path, const char *root)
{
    size_t n = strlen(root);
    while (n > 0 && root[n - 1] == '/')
        n--; /* "/x/img/" is "/x/img"; "/" becomes "" and holds every absolute path */
    if (strncmp(path, root, n) != 0 || (path[n] != '\0' && path[n] != '/'))
        return NULL;
    const char *rest = path + n;
    while (*rest == '/')
        rest++;
    return rest;
}

/* Opens `rest` (relative) beneath the folder `root_fd`; -1 with errno, EXDEV or ELOOP for an
 * escape. Without openat2 (ENOSYS: Linux before 5.6, or a seccomp filter that refuses it), the
 * file is opened by its full path and its real path checked against the root's. */
static int open_beneath(int root_fd, const char *root, const char *rest, const char *path)
{
    if (!rest[0])
        rest = ".";
#ifdef KS_HAVE_OPENAT2
    struct open_how how = {.flags = KS_READ_FLAGS,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    long fd = syscall(SYS_openat2, root_fd, rest, &how, sizeof how);
    if (fd >= 0 || errno != ENOSYS)
        return (int)fd;
#endif
    (void)root_fd;
    int fd2 = open(path, KS_READ_FLAGS);
    if (fd2 < 0)
        return -1;
    char link[64], real[PATH_MAX + 1], *root_real = realpath(root, NULL);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd2);
    ssize_t n = readlink(link, real, PATH_MAX);
    bool inside = root_real && n > 0;
    if (inside) {
        real[n] = '\0';
        inside = ks_path_beneath(real, root_real) != NULL;
    }
    free(root_real);
    if (!inside) {
        close(fd2);
        errno = EXDEV;
        return -1;
    }
    return fd2;
}

ks_status ks_file_read_beneath(const char *const *roots, size_t n_roots, const char *path,
                               size_t max_bytes, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    if (n_roots == 0)
        return ks_fail(KS_ERR_IO, "no image roots are known here: %s is not read", path);
    const char *root = NULL, *rest = NULL;
    for (size_t i = 0; i < n_roots && !rest; i++)
        if (ks_path_clean(roots[i]) && (rest = ks_path_beneath(path, roots[i])) != NULL)
            root = roots[i];
    if (!rest || !ks_path_clean(path))
        return ks_fail(KS_ERR_INVALID, "%s is not beneath an image root", path);
    int root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return ks_fail(KS_ERR_IO, "cannot open the image root %s: %s", root, strerror(errno));
    int fd = open_beneath(root_fd, root, rest, path);
    int err = errno;
    close(root_fd);
    if (fd < 0) {
        if (err == EXDEV || err == ELOOP)
            return ks_fail(KS_ERR_INVALID,
                           "%s leads out of the image root %s (through a "
                           "symlink)",
                           path, root);
        return ks_fail(KS_ERR_IO, "cannot open %s: %s", path, strerror(err));
    }
    return read_fd(fd, path, KS_ERR_INVALID, max_bytes, data, len);
}

ks_status ks_dir_require(const char *path, const char *what)
{
    struct stat info;
    if (stat(path, &info) != 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return ks_fail(KS_ERR_IO, "no such %s: %s", what, path);
        return ks_fail(KS_ERR_IO, "cannot open the %s %s: %s", what, path, strerror(errno));
    }
    if (!S_ISDIR(info.st_mode))
        return ks_fail(KS_ERR_IO, "%s %s is not a folder", what, path);
    return KS_OK;
}

bool ks_file_exists(const char *path)
{
    struct stat info;
    return stat(path, &info) == 0 && S_ISREG(info.st_mode);
}

char *ks_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *out = malloc(a + b + 2);
    if (!out)
        return NULL;
    memcpy(out, dir, a);
    size_t at = a;
    if (a && dir[a - 1] != '/')
        out[at++] = '/';
    memcpy(out + at, name, b + 1);
    return out;
}

bool ks_dir_make_all(const char *folder)
{
    char *path = strdup(folder);
    if (!path)
        return false;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST) {
            free(path);
            return false;
        }
        *p = '/';
    }
    bool ok = mkdir(path, 0777) == 0 || errno == EEXIST;
    free(path);
    struct stat info;
    return ok && stat(folder, &info) == 0 && S_ISDIR(info.st_mode);
}

ks_status ks_file_write_atomic(const char *path, const void *data, size_t n)
{
    static atomic_uint counter; /* distinct temporaries within a process */
    size_t cap = strlen(path) + 48;
    char *tmp = malloc(cap);
    if (!tmp)
        return ks_fail(KS_ERR_NOMEM, "writing %s: out of memory", path);
    snprintf(tmp, cap, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1u));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        ks_status st = ks_fail(KS_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
        free(tmp);
        return st;
    }
    const char *p = data;
    size_t left = n;
    int err = 0;
    while (left > 0 && !err) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (!err && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    if (err)
        unlink(tmp);
    free(tmp);
    return err ? ks_fail(KS_ERR_IO, "cannot write %s: %s", path, strerror(err)) : KS_OK;
}
