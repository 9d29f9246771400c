/* kc_kernels: the OpenCL C sources of kernels/, by file name. Normally the copies embedded at
 * build time; with the developer switch KOSMOS_KERNELS_DIR=<folder> set in the environment, the
 * file is read from that folder instead, so a kernel can be edited without rebuilding. */
#ifndef KC_KERNELS_H
#define KC_KERNELS_H

#include <stdbool.h>
#include <stddef.h>

#include "ks_error.h"

/* Number of embedded files. */
size_t kc_kernel_count(void);

/* The embedded source of `name` ("layer_norm.cl"), static storage, or NULL if there is none.
 * Ignores KOSMOS_KERNELS_DIR. */
const char *kc_kernel_embedded(const char *name, size_t *length);

/* The source to build for `name`: read from $KOSMOS_KERNELS_DIR/<name> when that variable is set
 * and non-empty (a missing or unreadable file is then an error, never a silent fallback), else
 * the embedded copy. *text is a new NUL-terminated buffer the caller frees; *from_disk (may be
 * NULL) says which was used. KS_ERR_INVALID for an unknown name, KS_ERR_IO for a file error.
 * A line `#include "other.cl"` (at the start of a line) is replaced by other.cl's text from the
 * same place, with #line markers, so files can share helpers; included files may not include. */
ks_status kc_kernel_source(const char *name, char **text, size_t *length, bool *from_disk);

#endif
