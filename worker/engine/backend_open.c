/* ke_backend_open: see backend_open.h. The device rules themselves (listing order, "cpu",
 * "gpu", indices, names, the default) are kc_device.h's; this file only maps them to backends. */
#include "backend_open.h"

#include <string.h>

#ifdef KOSMOS_HAVE_OPENCL
#include "backend_cl.h"
#include "cl_gemm.h"
#include "kc_device.h"
#endif

ks_status ke_backend_open(const ke_model *model, const char *spec,
                          const ke_backend_options *options, ke_backend **out)
{
    *out = NULL;
    if (spec && !strcmp(spec, "ref"))
        return ke_backend_ref_new(model, options, out);
#ifdef KOSMOS_HAVE_OPENCL
    ks_status status = KS_OK;
    kc_device_list *list = NULL;
    if ((status = kc_device_list_new(&list)) != KS_OK) {
        if (spec && spec[0]) {
            ks_error_prefix("--device %s", spec);
            return status;
        }
        return ke_backend_ref_new(model, options, out); /* no usable OpenCL: the default is ref */
    }
    size_t index = 0;
    if (spec && spec[0]) {
        if ((status = kc_device_list_select(list, spec, &index)) != KS_OK)
            goto cleanup; /* the message names the spec and the devices that exist */
    } else {
        long d = kc_device_list_default(list);
        if (d < 0) {
            kc_device_list_destroy(&list);
            return ke_backend_ref_new(model, options, out);
        }
        index = (size_t)d;
    }
    if ((status = ke_backend_cl_new(model, kc_device_list_get(list, index), options, out)) == KS_OK)
        ke_model_page_out(model); /* the device has its copy; the map's pages are not read */
cleanup:
    kc_device_list_destroy(&list);
    return status;
#else
    if (!spec || !spec[0])
        return ke_backend_ref_new(model, options, out);
    return ks_fail(KS_ERR_UNSUPPORTED,
                   "--device %s: this build has no OpenCL (configure found no OpenCL headers and "
                   "loader); use --device ref (plain C)",
                   spec);
#endif
}

ks_status ke_backend_gemm_tune_check(const char *text)
{
    if (!text || !text[0])
        return KS_OK;
#ifdef KOSMOS_HAVE_OPENCL
    return ke_cl_gemm_tune_check(text);
#else
    return ks_fail(KS_ERR_UNSUPPORTED,
                   "--gemm-tune %s: this build has no OpenCL, whose GEMM "
                   "it tunes",
                   text);
#endif
}

const char *ke_backend_device_name(const ke_backend *b)
{
    ke_backend_stats st;
    ke_backend_stats_get(b, &st);
    return st.device ? st.device : b->ops->name;
}
