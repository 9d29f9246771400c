/* kc_kernels: see kc_kernels.h. */
#include "kc_kernels.h"

#include <stdlib.h>
#include <string.h>

#include "kc_kernel_table.h"
#include "ks_buf.h"
#include "ks_file.h"

/* A kernel file larger than this is a mistake (the biggest is a few tens of KiB). */
#define KC_KERNEL_MAX_BYTES (4u << 20)

size_t kc_kernel_count(void) { return kc_kernel_file_count; }

const char *kc_kernel_embedded(const char *name, size_t *length)
{
    for (size_t i = 0; name && i < kc_kernel_file_count; i++) {
        if (!strcmp(kc_kernel_files[i].name, name)) {
            if (length)
                *length = kc_kernel_files[i].length;
            return kc_kernel_files[i].source;
        }
    }
    return NULL;
}

/* The raw text of one file, from the folder or the embedded table. */
static ks_status raw_source(const char *name, char **text, size_t *length, bool *from_disk)
{
    *text = NULL;
    *length = 0;
    if (from_disk)
        *from_disk = false;
    if (!name || !*name || strchr(name, '/'))
        return ks_fail(KS_ERR_INVALID, "bad kernel file name '%s'", name ? name : "(null)");

    const char *dir = getenv("KOSMOS_KERNELS_DIR");
    if (dir && *dir) {
        char *path = ks_path_join(dir, name);
        if (!path)
            return ks_fail(KS_ERR_NOMEM, "out of memory");
        ks_status st = ks_file_read(path, KC_KERNEL_MAX_BYTES, text, length);
        if (st != KS_OK)
            ks_error_prefix("kernel %s from KOSMOS_KERNELS_DIR", name);
        else if (from_disk)
            *from_disk = true;
        free(path);
        return st;
    }

    size_t n = 0;
    const char *src = kc_kernel_embedded(name, &n);
    if (!src)
        return ks_fail(KS_ERR_INVALID, "no kernel file '%s' is built in (see kernels/)", name);
    char *copy = malloc(n + 1);
    if (!copy)
        return ks_fail(KS_ERR_NOMEM, "out of memory copying kernel %s", name);
    memcpy(copy, src, n);
    copy[n] = '\0';
    *text = copy;
    *length = n;
    return KS_OK;
}

#define INCLUDE_PREFIX "#include \""

/* True when a line of text starts with INCLUDE_PREFIX. */
static bool has_include_line(const char *text)
{
    for (const char *p = strstr(text, INCLUDE_PREFIX); p; p = strstr(p + 1, INCLUDE_PREFIX))
        if (p == text || p[-1] == '\n')
            return true;
    return false;
}

/* Replaces each line `#include "other.cl"` by the text of other.cl, which may not include in
 * turn: kernel files share helpers (kernels/common.cl) without a compiler include path, which
 * embedded sources do not have. */
static ks_status expand_includes(const char *name, const char *src, size_t n, bool *from_disk,
                                 char **text, size_t *length)
{
    ks_buf out;
    ks_buf_init(&out);
    ks_status st = KS_OK;
    size_t at = 0, line_no = 0;
    while (at < n && st == KS_OK) {
        const char *line = src + at;
        const char *nl = memchr(line, '\n', n - at);
        size_t len = nl ? (size_t)(nl - line) + 1 : n - at;
        at += len;
        line_no++;
        if (len < sizeof INCLUDE_PREFIX ||
            strncmp(line, INCLUDE_PREFIX, sizeof INCLUDE_PREFIX - 1)) {
            st = ks_buf_append(&out, line, len);
            continue;
        }
        const char *start = line + sizeof INCLUDE_PREFIX - 1;
        const char *end = memchr(start, '"', len - (sizeof INCLUDE_PREFIX - 1));
        char other[64];
        size_t other_len = end ? (size_t)(end - start) : 0;
        if (!end || other_len == 0 || other_len >= sizeof other) {
            st = ks_fail(KS_ERR_INVALID, "kernel %s: a malformed #include line", name);
            break;
        }
        memcpy(other, start, other_len);
        other[other_len] = '\0';
        char *inc = NULL;
        size_t inc_len = 0;
        bool disk = false;
        if ((st = raw_source(other, &inc, &inc_len, &disk)) != KS_OK) {
            ks_error_prefix("kernel %s, #include \"%s\"", name, other);
            break;
        }
        if (has_include_line(inc))
            st = ks_fail(KS_ERR_INVALID, "kernel %s: included %s includes in turn (one level only)",
                         name, other);
        else if ((st = ks_buf_printf(&out, "#line 1 \"%s\"\n", other)) == KS_OK &&
                 (st = ks_buf_append(&out, inc, inc_len)) == KS_OK)
            st = ks_buf_printf(&out, "\n#line %zu \"%s\"\n", line_no + 1, name);
        if (from_disk)
            *from_disk = *from_disk || disk;
        free(inc);
    }
    if (st != KS_OK) {
        ks_buf_fini(&out);
        return st;
    }
    if (!out.data && (st = ks_buf_append(&out, "", 0)) != KS_OK)
        return st;
    *text = ks_buf_detach(&out, length);
    return KS_OK;
}

ks_status kc_kernel_source(const char *name, char **text, size_t *length, bool *from_disk)
{
    char *raw = NULL;
    size_t n = 0;
    *text = NULL;
    *length = 0;
    ks_status st = raw_source(name, &raw, &n, from_disk);
    if (st != KS_OK)
        return st;
    if (!has_include_line(raw)) {
        *text = raw;
        *length = n;
        return KS_OK;
    }
    st = expand_includes(name, raw, n, from_disk, text, length);
    free(raw);
    return st;
}
