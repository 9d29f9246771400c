/* image_decode: image bytes -> the 8-bit RGB image the Kosmos-2 reference sees.
 *
 * Admits only the accepted formats of image_formats.h. BMP and PNM are decoded by our own
 * strict decoders (bmp_decode.h, pnm_decode.h), recognised by their signatures before libvips
 * sees them: libvips reaches BMP only through ImageMagick, and its PPM loader is flagged
 * untrusted, both blocked. The other formats are decoded with libvips from memory and
 * converted to 8-bit RGB the way the reference does (PIL Image.open + convert("RGB"), the
 * image transformers' processor receives):
 *   - alpha is dropped, never composited (RGBA, LA, palette with tRNS);
 *   - grayscale, bilevel and palette images are expanded to R = G = B (palette via its colours);
 *   - CMYK with PIL's formula: nk = 255 - K; R = nk - (C*nk)/255 (rounded as PIL's MULDIV255);
 *   - 16-bit samples: PIL keeps the high byte (RGB, RGBA, LA) except for a single-channel
 *     16-bit image, which PIL opens as "I;16" and clips to 255 instead;
 *   - no EXIF rotation unless the caller asks (params.autorotate);
 *   - no ICC transform (PIL applies none).
 * A truncated JPEG or PNG is an error (libvips' fail_on = truncated; PIL raises on these), as is
 * a header claiming more than params.max_pixels pixels or a side over KI_MAX_SIDE, checked
 * before any pixel is decoded.
 * Formats: those ki_formats() lists (jpeg png webp tiff gif bmp pnm, heif where built); ICO and
 * TGA are refused with a message naming them. Not here: the resize and normalisation
 * (pixels.h).
 */
#ifndef KI_IMAGE_DECODE_H
#define KI_IMAGE_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"
#include "vips_runtime.h"

#define KI_DEFAULT_MAX_PIXELS 100000000ULL /* 100 megapixels */
/* The longest side decoded (JPEG's own limit; WebP's is 16,383): Pillow's resize keeps
 * 224 x (4 * side / 224) coefficients per axis, and a row holds a whole side, so a side is
 * bounded as well as the pixel count (a 100,000,000 x 1 image would take gigabytes). */
#define KI_MAX_SIDE 65535

/* Decoder options. Defaults from ki_decode_params_default(). */
typedef struct ki_decode_params {
    uint64_t max_pixels; /* width*height above this fails with KS_ERR_LIMIT; default
                          * KI_DEFAULT_MAX_PIXELS; 0 means the default */
    bool autorotate;     /* apply the EXIF orientation; default false (as the reference) */
} ki_decode_params;

void ki_decode_params_default(ki_decode_params *p);

/* A decoded image: 8-bit RGB, rows packed, (height, width, 3). Opaque. */
typedef struct ki_image ki_image;

/* Decodes `len` bytes (borrowed for the call only) into a new image the caller owns (free
 * with ki_image_destroy). `params` may be NULL for the defaults. Errors: KS_ERR_FORMAT
 * (empty, not an image, an unsupported or refused format, corrupt or truncated data),
 * KS_ERR_LIMIT (too many pixels), KS_ERR_UNSUPPORTED (a sample format with no PIL-equivalent
 * conversion here, e.g. float TIFF or PFM), KS_ERR_NOMEM. On failure *out is NULL. */
ks_status ki_image_decode(const void *bytes, size_t len, const ki_decode_params *params,
                          ki_image **out);

/* The same decode, one row at a time, so that the image need not be in memory whole: the
 * reader converts each row to 8-bit RGB as ki_image_decode does, from strips of at most 64
 * rows (fewer for wide images: about a million samples a strip) that libvips decodes in order.
 * Memory: one strip of decoded samples and one RGB row, plus libvips' own buffers (a few rows
 * for the formats it streams, JPEG, PNG, TIFF in strips; the whole frame for WebP and GIF, and
 * with autorotate, which needs random access). Opaque. */
typedef struct ki_image_reader ki_image_reader;

/* Opens the header and checks it as ki_image_decode does (same errors); no pixel is decoded
 * yet. `bytes` is borrowed until destroy. Caller owns *out. */
ks_status ki_image_reader_new(const void *bytes, size_t len, const ki_decode_params *params,
                              ki_image_reader **out);
/* The next row, top to bottom: (width, 3) u8, borrowed until the next call. KS_ERR_FORMAT
 * when the data is corrupt or truncated there, KS_ERR_INVALID past the last row. */
ks_status ki_image_reader_row(ki_image_reader *r, const uint8_t **rgb);
int ki_image_reader_width(const ki_image_reader *r); /* after autorotate */
int ki_image_reader_height(const ki_image_reader *r);
const char *ki_image_reader_format(const ki_image_reader *r);
void ki_image_reader_destroy(ki_image_reader **r);

/* Reads only the header: the size the image claims and the format name (static storage; may
 * be NULL). Same format errors as ki_image_decode, no pixel limit. */
ks_status ki_image_probe(const void *bytes, size_t len, int *width, int *height,
                         const char **format);

/* Wraps a copy of packed 8-bit RGB pixels (borrowed) as an image the caller owns. */
ks_status ki_image_from_rgb(const uint8_t *rgb, int width, int height, ki_image **out);

/* Frees the image; accepts NULL and sets *img to NULL. */
void ki_image_destroy(ki_image **img);

int ki_image_width(const ki_image *img);
int ki_image_height(const ki_image *img);
/* (height, width, 3) u8, borrowed until ki_image_destroy. */
const uint8_t *ki_image_rgb(const ki_image *img);
/* The decoder's format name ("jpeg", "png", ...; "raw" for ki_image_from_rgb). Static. */
const char *ki_image_format(const ki_image *img);

#endif
