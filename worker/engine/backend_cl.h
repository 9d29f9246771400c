/* ke_backend_cl: the OpenCL backend (`--device cpu|gpu|N|name`): the whole Kosmos-2 forward
 * pass on one OpenCL device behind the ke_backend seam (backend.h), equal to the plain-C
 * reference backend op by op. Built only with kosmos_opencl; open it through ke_backend_open. */
#ifndef KE_BACKEND_CL_H
#define KE_BACKEND_CL_H

#include "backend.h"
#include "kc_context.h"
#include "kc_device.h"

/* Opens `device` (copied; from a kc_device_list), builds or loads the programs, uploads the
 * weights of `model` (borrowed; outlives the backend) tensor by tensor from their memory, and
 * allocates a paged KV cache of options->kv_tokens tokens (0: slots * slot_capacity) for
 * options->slots sequences of at most options->slot_capacity tokens on the device, into *out
 * (caller owns; ke_backend_destroy). On failure (KS_ERR_DEVICE: a device without enough memory,
 * a failed build; KS_ERR_INVALID, KS_ERR_UNSUPPORTED, KS_ERR_NOMEM) *out is NULL and the
 * message names the device, and the tensor, buffer or kernel with its sizes. Program binaries
 * are cached on disk (KOSMOS_CACHE_DIR, see docs/opencl.md). */
ks_status ke_backend_cl_new(const ke_model *model, const kc_device_info *device,
                            const ke_backend_options *options, ke_backend **out);

/* The OpenCL context of an OpenCL backend (for its profile: kc_context_profile), or NULL for
 * any other backend. Borrowed. */
kc_context *ke_backend_cl_context(ke_backend *b);

#endif
