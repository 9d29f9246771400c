/* kc_error: see kc_error.h. */
#include "kc_error.h"

#include <string.h>

#define KC_NAME(code)                                                                              \
    case code: return #code

const char *kc_error_name(cl_int err)
{
    switch (err) {
        KC_NAME(CL_SUCCESS);
        KC_NAME(CL_DEVICE_NOT_FOUND);
        KC_NAME(CL_DEVICE_NOT_AVAILABLE);
        KC_NAME(CL_COMPILER_NOT_AVAILABLE);
        KC_NAME(CL_MEM_OBJECT_ALLOCATION_FAILURE);
        KC_NAME(CL_OUT_OF_RESOURCES);
        KC_NAME(CL_OUT_OF_HOST_MEMORY);
        KC_NAME(CL_PROFILING_INFO_NOT_AVAILABLE);
        KC_NAME(CL_MEM_COPY_OVERLAP);
        KC_NAME(CL_IMAGE_FORMAT_MISMATCH);
        KC_NAME(CL_IMAGE_FORMAT_NOT_SUPPORTED);
        KC_NAME(CL_BUILD_PROGRAM_FAILURE);
        KC_NAME(CL_MAP_FAILURE);
        KC_NAME(CL_MISALIGNED_SUB_BUFFER_OFFSET);
        KC_NAME(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
        KC_NAME(CL_COMPILE_PROGRAM_FAILURE);
        KC_NAME(CL_LINKER_NOT_AVAILABLE);
        KC_NAME(CL_LINK_PROGRAM_FAILURE);
        KC_NAME(CL_DEVICE_PARTITION_FAILED);
        KC_NAME(CL_KERNEL_ARG_INFO_NOT_AVAILABLE);
        KC_NAME(CL_INVALID_VALUE);
        KC_NAME(CL_INVALID_DEVICE_TYPE);
        KC_NAME(CL_INVALID_PLATFORM);
        KC_NAME(CL_INVALID_DEVICE);
        KC_NAME(CL_INVALID_CONTEXT);
        KC_NAME(CL_INVALID_QUEUE_PROPERTIES);
        KC_NAME(CL_INVALID_COMMAND_QUEUE);
        KC_NAME(CL_INVALID_HOST_PTR);
        KC_NAME(CL_INVALID_MEM_OBJECT);
        KC_NAME(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR);
        KC_NAME(CL_INVALID_IMAGE_SIZE);
        KC_NAME(CL_INVALID_SAMPLER);
        KC_NAME(CL_INVALID_BINARY);
        KC_NAME(CL_INVALID_BUILD_OPTIONS);
        KC_NAME(CL_INVALID_PROGRAM);
        KC_NAME(CL_INVALID_PROGRAM_EXECUTABLE);
        KC_NAME(CL_INVALID_KERNEL_NAME);
        KC_NAME(CL_INVALID_KERNEL_DEFINITION);
        KC_NAME(CL_INVALID_KERNEL);
        KC_NAME(CL_INVALID_ARG_INDEX);
        KC_NAME(CL_INVALID_ARG_VALUE);
        KC_NAME(CL_INVALID_ARG_SIZE);
        KC_NAME(CL_INVALID_KERNEL_ARGS);
        KC_NAME(CL_INVALID_WORK_DIMENSION);
        KC_NAME(CL_INVALID_WORK_GROUP_SIZE);
        KC_NAME(CL_INVALID_WORK_ITEM_SIZE);
        KC_NAME(CL_INVALID_GLOBAL_OFFSET);
        KC_NAME(CL_INVALID_EVENT_WAIT_LIST);
        KC_NAME(CL_INVALID_EVENT);
        KC_NAME(CL_INVALID_OPERATION);
        KC_NAME(CL_INVALID_GL_OBJECT);
        KC_NAME(CL_INVALID_BUFFER_SIZE);
        KC_NAME(CL_INVALID_MIP_LEVEL);
        KC_NAME(CL_INVALID_GLOBAL_WORK_SIZE);
        KC_NAME(CL_INVALID_PROPERTY);
        KC_NAME(CL_INVALID_IMAGE_DESCRIPTOR);
        KC_NAME(CL_INVALID_COMPILER_OPTIONS);
        KC_NAME(CL_INVALID_LINKER_OPTIONS);
        KC_NAME(CL_INVALID_DEVICE_PARTITION_COUNT);
    /* Codes newer than 1.2 or from extensions that drivers still return to 1.2 programs. */
    case -69: return "CL_INVALID_PIPE_SIZE";
    case -70: return "CL_INVALID_DEVICE_QUEUE";
    case -1000: return "CL_INVALID_GL_SHAREGROUP_REFERENCE_KHR";
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    case -1002: return "CL_INVALID_D3D10_DEVICE_KHR";
    case -1057: return "CL_DEVICE_PARTITION_FAILED_EXT";
    case -1058: return "CL_INVALID_PARTITION_COUNT_EXT";
    case -1059: return "CL_INVALID_PARTITION_NAME_EXT";
    case -9999: return "CL_NV_ILLEGAL_MEMORY_ACCESS"; /* NVIDIA: a kernel read out of bounds */
    }
    return "CL_UNKNOWN_ERROR";
}

ks_status kc_fail_cl(cl_int err, const char *call, const char *file, int line)
{
    const char *slash = file ? strrchr(file, '/') : NULL;
    const char *base = slash ? slash + 1 : (file ? file : "?");
    ks_status code = err == CL_OUT_OF_HOST_MEMORY ? KS_ERR_NOMEM : KS_ERR_DEVICE;
    return ks_fail(code, "%s failed: %s (%d) at %s:%d", call, kc_error_name(err), (int)err, base,
                   line);
}
