/* bmp_decode: Windows BMP to 8-bit RGB, byte for byte what Pillow 13 gives with
 * Image.open(BytesIO(bytes)).convert("RGB") (PIL/BmpImagePlugin.py, libImaging/Unpack.c).
 *
 * Reads what Pillow reads, and refuses what it refuses:
 *   - headers of 12 (OS/2 1.x), 40, 52, 56, 64 (OS/2 2.x), 108 (V4) and 124 (V5) bytes;
 *   - 1, 4 and 8 bits per pixel with a palette (a palette of grays 0, 1, 2, ... or of black and
 *     white is read as Pillow reads it, as gray levels or as 1-bit pixels), RLE8 and RLE4;
 *   - 16 bits (5-5-5, or 5-6-5 by bit fields; 5 and 6 bits scaled as v*255/31 and v*255/63),
 *     24 and 32 bits, with the bit-field masks Pillow knows (others are refused);
 *   - bottom-up and top-down rows; alpha (32-bit bit fields) is read and dropped, as
 *     convert("RGB") drops it.
 * Not here: BMPs holding JPEG or PNG (compression 4, 5: Pillow refuses them), headerless DIBs,
 * ICO/CUR. The decoder is strict: every offset and size is checked against the buffer, sizes are
 * 64-bit, and nothing is allocated before the caller has checked the pixel count.
 * Fuzzed by tests/fuzz/fuzz_image_decoders.c.
 */
#ifndef KI_BMP_DECODE_H
#define KI_BMP_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

/* Reads the header of the BMP in bytes[0..len) (borrowed) and sets the image's size. Errors:
 * KS_ERR_FORMAT (not a BMP, or a variant that Pillow does not read). */
ks_status ki_bmp_size(const uint8_t *bytes, size_t len, uint64_t *width, uint64_t *height);

/* Decodes the BMP into rgb (borrowed): height rows of width pixels, 3 bytes each, packed, with
 * the size ki_bmp_size gave. Errors: KS_ERR_FORMAT (as above, or truncated or corrupt pixel
 * data), KS_ERR_NOMEM (RLE needs a byte per pixel of scratch). */
ks_status ki_bmp_decode(const uint8_t *bytes, size_t len, uint8_t *rgb);

#endif
