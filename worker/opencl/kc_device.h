/* kc_device: every OpenCL device on this machine, in a stable order, and the `--device` rules.
 *
 * The listing is platform order (as the ICD loader returns them), then device order within the
 * platform; a device's index in it is what `--device 2` and `kosmos devices` mean. No OpenCL
 * platform at all (no ICD installed: CL_PLATFORM_NOT_FOUND_KHR) is an empty list, not an error.
 * `ref` (the plain-C path) is not an OpenCL device: callers test for it before selecting. */
#ifndef KC_DEVICE_H
#define KC_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kc_cl.h"
#include "ks_error.h"

/* What the listing knows about one device. Strings are NUL-terminated, truncated to fit. */
typedef struct kc_device_info {
    size_t index;            /* position in the listing */
    cl_platform_id platform; /* valid while the process runs */
    cl_device_id device;
    char platform_name[128];
    char platform_vendor[128];
    char platform_version[128]; /* "OpenCL 3.0 PoCL 3.1+debian ..." */
    char name[128];
    char vendor[128];
    char driver_version[128];
    char opencl_c_version[64]; /* "OpenCL C 1.2 ..." */
    cl_device_type type;
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes; /* largest single buffer */
    uint64_t local_mem_bytes;
    unsigned compute_units;
    size_t max_work_group_size;
    bool fp16; /* cl_khr_fp16 is offered (never required by our kernels) */
} kc_device_info;

typedef struct kc_device_list kc_device_list;

/* Lists every platform's devices into a new list the caller destroys. A platform that fails to
 * answer is skipped and named in kc_device_list_note(); no platform at all gives an empty list.
 * Fails only when the ICD loader itself fails (KS_ERR_DEVICE) or on KS_ERR_NOMEM. */
ks_status kc_device_list_new(kc_device_list **out);
void kc_device_list_destroy(kc_device_list **list);

size_t kc_device_list_count(const kc_device_list *list);

/* Device i (< count), borrowed until the list is destroyed; NULL when out of range. */
const kc_device_info *kc_device_list_get(const kc_device_list *list, size_t i);

/* Platforms that were skipped, as one line ("platform 'X': clGetDeviceIDs failed: ..."), or NULL
 * when none was. Borrowed until the list is destroyed. */
const char *kc_device_list_note(const kc_device_list *list);

/* The default device: the first GPU, else the first device; -1 when the list is empty (the
 * caller then uses the plain-C `ref` path). */
long kc_device_list_default(const kc_device_list *list);

/* Resolves a `--device` SPEC into *index:
 *   "cpu"    the first CPU device        "gpu"  the first GPU device
 *   "N"      index N of the listing      other  the first device whose platform or device
 *                                               name contains the text, case-insensitively.
 * ("cpu"/"gpu" are matched case-insensitively.) Fails with KS_ERR_INVALID and a message that
 * says why and what exists (bad spec, index out of range, no such device type, empty list). */
ks_status kc_device_list_select(const kc_device_list *list, const char *spec, size_t *index);

/* "GPU", "CPU", "ACCELERATOR", "CUSTOM" or "OTHER". Static storage. */
const char *kc_device_type_name(cl_device_type type);

#endif
