/* ke_backend_open: turns a --device SPEC into a backend. One function for every program (the
 * CLI, the worker, the benchmarks), so the device rules live in one place:
 *   "ref"        the plain-C reference path
 *   "cpu"/"gpu"  the first OpenCL CPU / GPU device
 *   an integer   that index in `kosmos devices` order
 *   other text   the first device whose platform or device name contains it
 *   NULL or ""   the default: the first GPU, else the first OpenCL device, else "ref". */
#ifndef KE_BACKEND_OPEN_H
#define KE_BACKEND_OPEN_H

#include "backend.h"

/* A new backend into *out (caller owns; ke_backend_destroy). `model` is borrowed and must
 * outlive the backend. On failure (KS_ERR_INVALID: no device matches the spec; KS_ERR_UNSUPPORTED:
 * no OpenCL in this build; the backend's own failures) *out is NULL and the message names the
 * spec and why it cannot be served. */
ks_status ke_backend_open(const ke_model *model, const char *spec,
                          const ke_backend_options *options, ke_backend **out);

/* Checks the text of --gemm-tune (ke_backend_options.gemm_tune) before any model or device is
 * opened, so that a program can refuse it as a usage error: KS_OK for NULL or ""; else
 * KS_ERR_INVALID with a message naming the bad item, or KS_ERR_UNSUPPORTED in a build without
 * OpenCL (the only backend with GEMM tunables). */
ks_status ke_backend_gemm_tune_check(const char *text);

/* The name of the device a backend runs on, for logs and results ("ref" for the C path). */
const char *ke_backend_device_name(const ke_backend *b);

#endif
