/* kc_cl: the one way kosmos_opencl code includes the OpenCL headers: the 1.2 API, so that a
 * call newer than OpenCL 1.2 is a compile error rather than a crash on an older driver. */
#ifndef KC_CL_H
#define KC_CL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>

#endif
