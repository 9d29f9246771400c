/* ke_backend_open: see backend_open.h. */
#include "backend_open.h"

#include <string.h>

ke_backend *ke_backend_open(const ke_model *model, const char *spec,
                            const ke_backend_options *options)
{
    if (!spec || !spec[0] || !strcmp(spec, "ref"))
        return ke_backend_ref_new(model, options);
    ks_fail(KS_ERR_UNSUPPORTED,
            "--device %s: this build has no OpenCL engine yet; use --device ref (plain C)", spec);
    return NULL;
}

const char *ke_backend_device_name(const ke_backend *b) { return b->ops->name; }
