/* kc_kernels: see kc_kernels.h. */
#include "kc_kernels.h"

#include <stdlib.h>
#include <string.h>

#include "kc_kernel_table.h"
#include "ks_file.h"

/* A kernel file larger than this is a mistake (the biggest is a few tens of KiB). */
#define KC_KERNEL_MAX_BYTES (4u << 20)

size_t kc_kernel_count(void) { return kc_kernel_file_count; }

const char *kc_kernel_name(size_t i)
{
    return i < kc_kernel_file_count ? kc_kernel_files[i].name : NULL;
}

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

ks_status kc_kernel_source(const char *name, char **text, size_t *length, bool *from_disk)
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
