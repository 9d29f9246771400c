/* pil_resize: Pillow's bicubic Image.resize on 8-bit interleaved pixels, bit for bit.
 *
 * A transcription of Pillow's libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
 * ImagingResampleHorizontal_8bpc / Vertical_8bpc, ImagingResampleInner) for the one filter
 * Kosmos-2 uses (BICUBIC, a = -0.5) and a whole-image box, as Image.resize((224, 224), BICUBIC)
 * runs it (tests/golden/pixels holds Pillow's output for every test image). Horizontal pass
 * first into an 8-bit intermediate (only the source rows the vertical pass reads), then the
 * vertical pass; a pass whose size is unchanged is skipped. Not a general resampler: no other filters, no reducing_gap, no alpha
 * premultiplication (callers convert to RGB first, as the reference does). Pure C, no libvips.
 */
#ifndef KI_PIL_RESIZE_H
#define KI_PIL_RESIZE_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

/* Resizes src (sh rows of sw pixels, `channels` interleaved u8 samples each, rows packed) into
 * dst (dh rows of dw pixels, same channel count, packed). Both borrowed; they must not
 * overlap. Fails with KS_ERR_INVALID on a size < 1 or channels outside 1..4, KS_ERR_NOMEM on
 * allocation failure, KS_ERR_LIMIT when a size would overflow the coefficient tables. */
ks_status ki_pil_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, uint8_t *dst,
                                int dw, int dh);

#endif
