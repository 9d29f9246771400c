/* pil_resize: Pillow's bicubic Image.resize on 8-bit interleaved pixels, bit for bit.
 *
 * A transcription of Pillow's libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
 * ImagingResampleHorizontal_8bpc / Vertical_8bpc, ImagingResampleInner) for the one filter
 * Kosmos-2 uses (BICUBIC, a = -0.5) and a whole-image box, as Image.resize((224, 224), BICUBIC)
 * runs it (tests/golden/pixels holds Pillow's output for every test image). Horizontal pass
 * first into an 8-bit intermediate, then the vertical pass, row by row (ki_resizer: only the
 * intermediate rows still needed are kept); a pass whose size is unchanged is skipped. Not a
 * general resampler: no other filters, no reducing_gap, no alpha
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

/* The same resize fed one source row at a time, top to bottom, so that the source never has
 * to be in memory whole: each row goes through the horizontal pass at once, and each output
 * row is made by the vertical pass as soon as the rows it reads have come. It keeps only the
 * intermediate rows that an output row not yet made still reads (at most the vertical
 * kernel's size: 2 * ceil(2 * sh / dh) + 1 rows of dw pixels), not Pillow's whole
 * intermediate (dw x sh). The result is ki_pil_resize_bicubic's, bit for bit (which is this). */
typedef struct ki_resizer ki_resizer;

/* A resizer writing into dst (dh rows of dw pixels, `channels` each; borrowed until destroy).
 * Errors as ki_pil_resize_bicubic. */
ks_status ki_resizer_new(int sw, int sh, int channels, uint8_t *dst, int dw, int dh,
                         ki_resizer **out);
/* Source row `y` (the next one: 0, 1, ..., sh - 1; sw * channels samples, borrowed for the
 * call). Once row sh - 1 is pushed, dst is complete. KS_ERR_INVALID for a row out of order. */
ks_status ki_resizer_push(ki_resizer *r, int y, const uint8_t *row);
void ki_resizer_destroy(ki_resizer **r);

#endif
