/* pnm_decode: Netpbm PBM, PGM and PPM (P1 to P6) to 8-bit RGB, byte for byte what Pillow 13
 * gives with Image.open(BytesIO(bytes)).convert("RGB") (PIL/PpmImagePlugin.py):
 *   - binary (P4, P5, P6) and plain text (P1, P2, P3) files, comments anywhere Pillow allows
 *     them (a comment runs to the next CR or LF and is cut out, joining what surrounds it);
 *   - maxval 1..65535, scaled as Pillow scales: round-half-even of v / maxval * 255, except that
 *     a PGM with maxval over 255 becomes Pillow's 32-bit "I" image (v / maxval * 65535, or the
 *     16-bit value itself for maxval 65535), which convert("RGB") clips to 255;
 *   - PBM: 1 is black.
 * Refused: PFM ("Pf", float samples: KS_ERR_UNSUPPORTED, as float TIFF), P7 (PAM) and PIL's
 * private test formats (P0CMYK, PyP, PyRGBA, PyCMYK). Plain data is read in Pillow's 1 MiB
 * blocks, so even its quirks at block boundaries match. Strict: sizes are 64-bit and checked
 * against the buffer; nothing is allocated before the caller has checked the pixel count.
 * Fuzzed by tests/fuzz/fuzz_image_decoders.c.
 */
#ifndef KI_PNM_DECODE_H
#define KI_PNM_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

/* Reads the header of the PNM in bytes[0..len) (borrowed) and sets the image's size. Errors:
 * KS_ERR_FORMAT (not a PNM, or a header Pillow refuses), KS_ERR_UNSUPPORTED (PFM). */
ks_status ki_pnm_size(const uint8_t *bytes, size_t len, uint64_t *width, uint64_t *height);

/* Decodes the PNM into rgb (borrowed): height rows of width pixels, 3 bytes each, packed, with
 * the size ki_pnm_size gave. Errors: as ki_pnm_size, KS_ERR_FORMAT for truncated or invalid
 * samples, KS_ERR_NOMEM (the scaling table or plain text's block buffer). */
ks_status ki_pnm_decode(const uint8_t *bytes, size_t len, uint8_t *rgb);

#endif
