/* pixels: a decoded image -> Kosmos-2's pixel_values, exactly as the reference pipeline.
 *
 * transformers' CLIPImageProcessor with the checkpoint's preprocessor_config.json
 * (tests/golden/reference.py builds it from tests/data/kosmos2/checkpoint): resize to 224x224
 * (aspect not kept, nothing cropped) with Pillow's bicubic on the 8-bit RGB image
 * (pil_resize.h), then per value
 * x = (float)((double)u8 * 0.00392156862745098) and v = (x - mean_c) / std_c in float32 (a
 * division, not a multiplication by the reciprocal), laid out channel-first. transformers
 * 5.17's own processor resizes with torch instead and lands within one 8-bit step of this;
 * Pillow is what the model was trained with. Not here: decoding (image_decode.h).
 */
#ifndef KI_PIXELS_H
#define KI_PIXELS_H

#include <stddef.h>
#include <stdint.h>

#include "image_decode.h"
#include "ks_error.h"

#define KI_IMAGE_SIZE 224

/* The model input for one image. About 750 KB: allocate it on the heap. */
typedef struct ki_pixels {
    int src_width, src_height;                       /* the decoded image: boxes scale to it */
    uint8_t rgb[KI_IMAGE_SIZE * KI_IMAGE_SIZE * 3];  // (224, 224, 3) after the resize
    float values[3 * KI_IMAGE_SIZE * KI_IMAGE_SIZE]; // (3, 224, 224) pixel_values, c = R,G,B
} ki_pixels;

/* The OpenAI-CLIP constants the checkpoint's preprocessor_config.json holds, as float32. */
extern const float ki_image_mean[3];
extern const float ki_image_std[3];

/* §3.1 steps 4-6 on a (224, 224, 3) u8 image (borrowed) into (3, 224, 224) floats. */
void ki_normalize(const uint8_t *rgb224, float *values);

/* Resize + normalize one decoded image (borrowed) into *out (caller-owned). Errors from the
 * resize only (KS_ERR_NOMEM). */
ks_status ki_pixels_from_image(const ki_image *img, ki_pixels *out);

/* Decode + resize + normalize: image bytes (borrowed) into *out. `params` may be NULL for the
 * decoder defaults. Errors as ki_image_decode. The image is never in memory whole: each row is
 * decoded (ki_image_reader), converted to 8-bit RGB and resized (ki_resizer) before the next,
 * so memory is a strip of decoded rows, one RGB row and the resize's kept rows (224 pixels
 * wide, at most 2 * ceil(2 * height / 224) + 1 of them), plus libvips' own buffers: bytes per
 * source pixel fall with the image's height (docs/operations.md "Image memory").
 * *decode_ms, when not NULL, gets the time spent decoding; the rest is resizing and
 * normalizing. */
ks_status ki_pixels_from_buffer(const void *bytes, size_t len, const ki_decode_params *params,
                                ki_pixels *out, double *decode_ms);

#endif
