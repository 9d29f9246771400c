/* vips_runtime: starting libvips once per process and turning its errors into ks_ errors.
 *
 * Everything in kosmos_image that touches libvips calls ki_init() first (it is cheap after the
 * first call), so a caller never has to. What this sets up, once:
 *   - VIPS_INIT;
 *   - the operation cache off (vips_cache_set_max(0)): a worker decodes each image once, and a
 *     cached operation would keep the decoded pixels alive;
 *   - untrusted loaders blocked (ImageMagick, PDF, SVG, PPM, ... : vips_block_untrusted_set);
 *     the decoder also admits only the formats listed by ki_formats().
 * libvips is thread-safe after that; a thread that used libvips should call
 * ki_thread_shutdown() before it exits, to free libvips' per-thread buffers.
 */
#ifndef KI_VIPS_RUNTIME_H
#define KI_VIPS_RUNTIME_H

#include <stdbool.h>

#include "ks_error.h"

/* Initialises libvips once per process (thread-safe: pthread_once). Fails with
 * KS_ERR_UNSUPPORTED when libvips cannot start; every later call returns the same result. */
ks_status ki_init(void);

/* Frees this thread's libvips buffers; call on a worker thread before it exits. */
void ki_thread_shutdown(void);

/* Space-separated names of the formats this build decodes, the accepted ones of
 * image_formats.h whose decoder is here, e.g. "jpeg png webp tiff gif bmp pnm heif" (heif
 * covers HEIC and AVIF, where libvips was built with libheif). Static storage. Calls
 * ki_init(); "" if libvips cannot start. */
const char *ki_formats(void);

/* True when the format called `name` (image_formats.h) is decodable here. */
bool ki_format_available(const char *name);

/* Internal to kosmos_image: records `code` with "<what>: <libvips' error text>" and clears
 * libvips' error buffer (which is process-wide, not per thread). Returns `code`. */
ks_status ki_vips_fail(ks_status code, const char *what);

#endif
