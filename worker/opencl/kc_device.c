/* kc_device: see kc_device.h. Only OpenCL 1.2 queries; nothing here creates a context. */
#include "kc_device.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kc_error.h"
#include "ks_buf.h"

#define KC_CL_PLATFORM_NOT_FOUND_KHR (-1001)

struct kc_device_list {
    kc_device_info *devices; /* [count] */
    size_t count;
    char *note; /* skipped platforms, or NULL */
};

/* A string query into a fixed buffer: truncated to fit, "" when the driver refuses. */
static void platform_string(cl_platform_id p, cl_platform_info what, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    if (clGetPlatformInfo(p, what, cap, buf, &n) != CL_SUCCESS) {
        /* Too long for buf (or unsupported): read it whole and truncate. */
        char *tmp = n > 0 ? malloc(n) : NULL;
        if (tmp && clGetPlatformInfo(p, what, n, tmp, NULL) == CL_SUCCESS)
            snprintf(buf, cap, "%s", tmp);
        free(tmp);
    }
    buf[cap - 1] = '\0';
}

static void device_string(cl_device_id d, cl_device_info what, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    if (clGetDeviceInfo(d, what, cap, buf, &n) != CL_SUCCESS) {
        char *tmp = n > 0 ? malloc(n) : NULL;
        if (tmp && clGetDeviceInfo(d, what, n, tmp, NULL) == CL_SUCCESS)
            snprintf(buf, cap, "%s", tmp);
        free(tmp);
    }
    buf[cap - 1] = '\0';
    /* Some drivers pad names with spaces. */
    size_t len = strlen(buf);
    while (len > 0 && buf[len - 1] == ' ')
        buf[--len] = '\0';
}

static bool device_has_extension(cl_device_id d, const char *ext)
{
    size_t n = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) != CL_SUCCESS || n == 0)
        return false;
    char *all = malloc(n + 1);
    if (!all)
        return false;
    bool found = false;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, all, NULL) == CL_SUCCESS) {
        all[n] = '\0';
        size_t len = strlen(ext);
        for (const char *p = all; (p = strstr(p, ext)) != NULL; p += len) {
            bool starts = p == all || p[-1] == ' ';
            bool ends = p[len] == '\0' || p[len] == ' ';
            if (starts && ends) {
                found = true;
                break;
            }
        }
    }
    free(all);
    return found;
}

static void fill_info(kc_device_info *info, cl_platform_id p, cl_device_id d)
{
    memset(info, 0, sizeof *info);
    info->platform = p;
    info->device = d;
    platform_string(p, CL_PLATFORM_NAME, info->platform_name, sizeof info->platform_name);
    platform_string(p, CL_PLATFORM_VENDOR, info->platform_vendor, sizeof info->platform_vendor);
    platform_string(p, CL_PLATFORM_VERSION, info->platform_version, sizeof info->platform_version);
    device_string(d, CL_DEVICE_NAME, info->name, sizeof info->name);
    device_string(d, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor);
    device_string(d, CL_DRIVER_VERSION, info->driver_version, sizeof info->driver_version);
    device_string(d, CL_DEVICE_OPENCL_C_VERSION, info->opencl_c_version,
                  sizeof info->opencl_c_version);
    cl_device_type type = 0;
    cl_ulong global = 0, alloc = 0, local = 0;
    cl_uint units = 0;
    size_t wg = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof global, &global, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, NULL);
    clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL);
    clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    info->type = type;
    info->global_mem_bytes = global;
    info->max_alloc_bytes = alloc;
    info->local_mem_bytes = local;
    info->compute_units = units;
    info->max_work_group_size = wg;
    info->fp16 = device_has_extension(d, "cl_khr_fp16");
}

ks_status kc_device_list_new(kc_device_list **out)
{
    ks_status status = KS_OK;
    cl_platform_id *platforms = NULL;
    cl_device_id *ids = NULL;
    ks_buf note;
    ks_buf_init(&note);
    *out = NULL;

    kc_device_list *list = calloc(1, sizeof *list);
    if (!list)
        return ks_fail(KS_ERR_NOMEM, "out of memory listing OpenCL devices");

    cl_uint n_platforms = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &n_platforms);
    if (err == KC_CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && n_platforms == 0))
        goto done; /* no OpenCL here: an empty list */
    KC_CHECK_ERR(err, "clGetPlatformIDs");
    platforms = calloc(n_platforms, sizeof *platforms);
    if (!platforms) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory listing OpenCL platforms");
        goto cleanup;
    }
    KC_CHECK(clGetPlatformIDs(n_platforms, platforms, NULL));

    for (cl_uint p = 0; p < n_platforms; p++) {
        cl_uint n_devices = 0;
        err = clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, NULL, &n_devices);
        if (err == CL_DEVICE_NOT_FOUND || (err == CL_SUCCESS && n_devices == 0))
            continue;
        if (err == CL_SUCCESS) {
            free(ids);
            ids = calloc(n_devices, sizeof *ids);
            if (!ids) {
                status = ks_fail(KS_ERR_NOMEM, "out of memory listing OpenCL devices");
                goto cleanup;
            }
            err = clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, n_devices, ids, NULL);
        }
        if (err != CL_SUCCESS) {
            /* One broken driver must not hide the others. */
            char pname[128];
            platform_string(platforms[p], CL_PLATFORM_NAME, pname, sizeof pname);
            if (ks_buf_printf(&note, "%splatform %u '%s': clGetDeviceIDs failed: %s (%d)",
                              note.len ? "; " : "", p, pname, kc_error_name(err),
                              (int)err) != KS_OK) {
                status = KS_ERR_NOMEM;
                goto cleanup;
            }
            continue;
        }
        kc_device_info *grown = realloc(list->devices,
                                        (list->count + n_devices) * sizeof *list->devices);
        if (!grown) {
            status = ks_fail(KS_ERR_NOMEM, "out of memory listing OpenCL devices");
            goto cleanup;
        }
        list->devices = grown;
        for (cl_uint d = 0; d < n_devices; d++) {
            kc_device_info *info = &list->devices[list->count];
            fill_info(info, platforms[p], ids[d]);
            info->index = list->count++;
        }
    }

done:
    if (note.len)
        list->note = ks_buf_detach(&note, NULL);
    *out = list;
    list = NULL;
cleanup:
    free(platforms);
    free(ids);
    ks_buf_fini(&note);
    kc_device_list_destroy(&list);
    return status;
}

void kc_device_list_destroy(kc_device_list **list)
{
    if (!list || !*list)
        return;
    free((*list)->devices);
    free((*list)->note);
    free(*list);
    *list = NULL;
}

size_t kc_device_list_count(const kc_device_list *list) { return list ? list->count : 0; }

const kc_device_info *kc_device_list_get(const kc_device_list *list, size_t i)
{
    return list && i < list->count ? &list->devices[i] : NULL;
}

const char *kc_device_list_note(const kc_device_list *list) { return list ? list->note : NULL; }

static long first_of_type(const kc_device_list *list, cl_device_type type)
{
    for (size_t i = 0; i < kc_device_list_count(list); i++)
        if (list->devices[i].type & type)
            return (long)i;
    return -1;
}

long kc_device_list_default(const kc_device_list *list)
{
    long gpu = first_of_type(list, CL_DEVICE_TYPE_GPU);
    if (gpu >= 0)
        return gpu;
    return kc_device_list_count(list) > 0 ? 0 : -1;
}

static bool contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    if (n == 0)
        return false;
    for (; *hay; hay++) {
        size_t k = 0;
        while (k < n && hay[k] &&
               tolower((unsigned char)hay[k]) == tolower((unsigned char)needle[k]))
            k++;
        if (k == n)
            return true;
    }
    return false;
}

static bool equals_nocase(const char *a, const char *b)
{
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return false;
    return *a == *b;
}

/* "0 'pthread-haswell' (Portable Computing Language), 1 ..." for messages. */
static void describe_devices(const kc_device_list *list, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < kc_device_list_count(list) && used + 1 < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%zu '%s' (%s)", i ? ", " : "", i,
                         list->devices[i].name, list->devices[i].platform_name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

ks_status kc_device_list_select(const kc_device_list *list, const char *spec, size_t *index)
{
    size_t count = kc_device_list_count(list);
    if (!spec || !*spec)
        return ks_fail(KS_ERR_INVALID, "empty --device: give cpu, gpu, an index, a name or ref");
    if (count == 0)
        return ks_fail(KS_ERR_INVALID,
                       "--device %s: there are no OpenCL devices on this machine "
                       "(--device ref runs the plain-C path)",
                       spec);
    char known[512];
    describe_devices(list, known, sizeof known);

    if (equals_nocase(spec, "cpu") || equals_nocase(spec, "gpu")) {
        bool cpu = equals_nocase(spec, "cpu");
        long i = first_of_type(list, cpu ? CL_DEVICE_TYPE_CPU : CL_DEVICE_TYPE_GPU);
        if (i < 0)
            return ks_fail(KS_ERR_INVALID, "--device %s: no OpenCL %s device (devices: %s)", spec,
                           cpu ? "CPU" : "GPU", known);
        *index = (size_t)i;
        return KS_OK;
    }

    bool digits = true;
    for (const char *c = spec; *c; c++)
        digits = digits && isdigit((unsigned char)*c);
    if (digits) {
        errno = 0;
        unsigned long long v = strtoull(spec, NULL, 10);
        if (errno != 0 || v >= count)
            return ks_fail(KS_ERR_INVALID,
                           "--device %s: index out of range, there %s %zu OpenCL device%s "
                           "(0..%zu: %s)",
                           spec, count == 1 ? "is" : "are", count, count == 1 ? "" : "s", count - 1,
                           known);
        *index = (size_t)v;
        return KS_OK;
    }
    if (spec[0] == '-' && spec[1] && isdigit((unsigned char)spec[1]))
        return ks_fail(KS_ERR_INVALID, "--device %s: a device index is 0 or more (devices: %s)",
                       spec, known);

    for (size_t i = 0; i < count; i++) {
        if (contains_nocase(list->devices[i].platform_name, spec) ||
            contains_nocase(list->devices[i].name, spec)) {
            *index = i;
            return KS_OK;
        }
    }
    return ks_fail(KS_ERR_INVALID,
                   "--device %s: no OpenCL device or platform name contains '%s' (devices: %s; "
                   "use cpu, gpu, an index, a name or ref)",
                   spec, spec, known);
}

const char *kc_device_type_name(cl_device_type type)
{
    if (type & CL_DEVICE_TYPE_GPU)
        return "GPU";
    if (type & CL_DEVICE_TYPE_CPU)
        return "CPU";
    if (type & CL_DEVICE_TYPE_ACCELERATOR)
        return "ACCELERATOR";
    if (type & CL_DEVICE_TYPE_CUSTOM)
        return "CUSTOM";
    return "OTHER";
}
