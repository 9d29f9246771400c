/* kc_kernel_table: the kernels/ .cl files embedded at build time. The table itself is generated
 * by cmake/KosmosEmbedKernels.cmake; read it through kc_kernels.h, not directly. */
#ifndef KC_KERNEL_TABLE_H
#define KC_KERNEL_TABLE_H

#include <stddef.h>

typedef struct kc_kernel_file {
    const char *name;   /* base name, "layer_norm.cl" */
    const char *source; /* the file's bytes, NUL-terminated */
    size_t length;      /* bytes, without the NUL */
} kc_kernel_file;

extern const kc_kernel_file kc_kernel_files[];
extern const size_t kc_kernel_file_count;

#endif
