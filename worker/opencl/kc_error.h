/* kc_error: OpenCL status codes as names, and the checks that turn a failed OpenCL call into a
 * ks_status with "clFoo failed: CL_INVALID_VALUE (-30) at kc_context.c:123" as the message.
 * Not a logger: the message goes to ks_error_message() like every other kosmos failure. */
#ifndef KC_ERROR_H
#define KC_ERROR_H

#include "kc_cl.h"
#include "ks_error.h"

/* Name of an OpenCL status: every OpenCL 1.2 code, CL_PLATFORM_NOT_FOUND_KHR (-1001) and a few
 * common extension codes; "CL_UNKNOWN_ERROR" otherwise. Static storage. */
const char *kc_error_name(cl_int err);

/* Records "<call> failed: <name> (<err>) at <file>:<line>" (file reduced to its base name) and
 * returns the status for it: KS_ERR_NOMEM for CL_OUT_OF_HOST_MEMORY, KS_ERR_DEVICE otherwise. */
ks_status kc_fail_cl(cl_int err, const char *call, const char *file, int line);

/* KC_CHECK(clFoo(...)): on failure sets `status` from kc_fail_cl and jumps to `cleanup`. The
 * enclosing function must declare `ks_status status` and a `cleanup:` label. */
#define KC_CHECK(call)                                                                             \
    do {                                                                                           \
        cl_int kc_check_err_ = (call);                                                             \
        if (kc_check_err_ != CL_SUCCESS) {                                                         \
            status = kc_fail_cl(kc_check_err_, #call, __FILE__, __LINE__);                         \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

/* KC_CHECK_ERR(err, "clCreateBuffer"): the same for calls that report through an errcode_ret
 * argument, naming the call explicitly. */
#define KC_CHECK_ERR(err, call_name)                                                               \
    do {                                                                                           \
        if ((err) != CL_SUCCESS) {                                                                 \
            status = kc_fail_cl((err), (call_name), __FILE__, __LINE__);                           \
            goto cleanup;                                                                          \
        }                                                                                          \
    } while (0)

#endif
