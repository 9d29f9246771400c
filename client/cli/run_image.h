/* run_image: the image side of `kosmos run`: the source image (for its size and --draw) and
 * the pixel_values the model sees, decoded by kosmos_image or taken from --pixels-from. */
#ifndef KOSMOS_RUN_IMAGE_H
#define KOSMOS_RUN_IMAGE_H

#include <stdbool.h>

#include "ks_error.h"
#include "model_config.h"
#include "postprocess.h"

typedef struct ki_image ki_image;

typedef struct run_image {
    int width, height; /* of the source image */
    float *pixels;     /* owned: (channels, image_size, image_size) pixel_values */
    ki_image *decoded; /* owned; NULL when only the header was read (--pixels-from) */
} run_image;

void run_image_init(run_image *img);
void run_image_fini(run_image *img);

/* Reads `path`; pixels come from decoding it or, with pixels_from, from that safetensors file's
 * `pixel_values` [1, channels, size, size] (the image's header is still read for its size, and
 * the whole image only when `keep_decoded` asks for it, for --draw). */
ks_status run_image_load(run_image *img, const char *path, const char *pixels_from, bool autorotate,
                         bool keep_decoded, const ke_config *config);

/* Writes the source image with the entities' boxes and phrases to out_path (PNG). */
ks_status run_image_draw(const run_image *img, const kt_grounding *grounding, const char *out_path);

#endif
