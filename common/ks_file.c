/* ks_file: see ks_file.h. */
#include "ks_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

ks_status ks_file_read(const char *path, size_t max_bytes, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ks_fail(KS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    ks_status st = KS_OK;
    char *buf = NULL;
    struct stat info;
    if (fstat(fileno(f), &info) != 0 || !S_ISREG(info.st_mode)) {
        st = ks_fail(KS_ERR_IO, "%s is not a regular file", path);
        goto done;
    }
    if ((unsigned long long)info.st_size > max_bytes) {
        st = ks_fail(KS_ERR_LIMIT, "%s is %lld bytes, more than the limit of %zu", path,
                     (long long)info.st_size, max_bytes);
        goto done;
    }
    size_t size = (size_t)info.st_size;
    buf = malloc(size + 1);
    if (!buf) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory reading %s (%zu bytes)", path, size);
        goto done;
    }
    if (size && fread(buf, 1, size, f) != size) {
        st = ks_fail(KS_ERR_IO, "cannot read %s: %s", path, ferror(f) ? strerror(errno) : "short read");
        goto done;
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    buf = NULL;
done:
    free(buf);
    fclose(f);
    return st;
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
