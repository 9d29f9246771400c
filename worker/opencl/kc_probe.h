/* kc_probe: what a device can do at best, measured in a fraction of a second with
 * kernels/probe.cl: memory bandwidth (a copy) and f32 arithmetic throughput (independent fma
 * chains). A profile is read against these (the share of the roofline each kernel reaches).
 * Wall-clock timing around clFinish, so it works on a queue without profiling; the figures are
 * estimates, a little below the vendor's peak, which is what a kernel can be expected to reach. */
#ifndef KC_PROBE_H
#define KC_PROBE_H

#include "kc_context.h"
#include "ks_error.h"

typedef struct kc_peaks {
    double bytes_per_s; /* read + written */
    double flops_per_s; /* f32, an fma counting 2 */
} kc_peaks;

/* Measures ctx's device. Uses about 128 MiB of device memory for a moment. */
ks_status kc_probe_peaks(kc_context *ctx, kc_peaks *out);

#endif
