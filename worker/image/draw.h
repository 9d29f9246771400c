/* draw: the `--draw OUT.png` picture, the source image with every grounded box and its phrase.
 *
 * Boxes come in Kosmos-2's convention (x1, y1, x2, y2 normalized to the whole image, which the
 * model saw squashed to 224x224) and are drawn on the decoded source image at
 * floor(x * width), floor(y * height), as the original demo does. Each entity gets its own
 * colour; labels are rendered with libvips (pango) in DejaVu Sans. Boxes partly or wholly
 * outside the image are clipped to it, zero-size boxes become one-pixel marks, and boxes with
 * non-finite coordinates are skipped; none of them is an error. Not for the model input.
 */
#ifndef KI_DRAW_H
#define KI_DRAW_H

#include <stddef.h>

#include "image_decode.h"
#include "ks_error.h"

typedef struct ki_box {
    const char *label;     /* UTF-8 phrase, borrowed; NULL or "" for none */
    int entity;            /* colour index: the boxes of one entity share a colour */
    double x1, y1, x2, y2; /* normalized to [0, 1]; either order */
} ki_box;

/* Drawing options. Defaults from ki_draw_params_default(). */
typedef struct ki_draw_params {
    const char *font_file; /* default KI_DEFAULT_FONT_FILE (fonts-dejavu-core); NULL = default.
                            * A label that cannot be rendered is left out, the box is drawn */
    int line_width;        /* pixels; 0 = max(2, min(width, height) / 250) */
    int font_size;         /* pixels; 0 = clamp(min(width, height) / 30, 10, 48) */
} ki_draw_params;

#ifndef KI_DEFAULT_FONT_FILE
#define KI_DEFAULT_FONT_FILE "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
#endif

void ki_draw_params_default(ki_draw_params *p);

/* Draws `n` boxes (borrowed) on a copy of `img` (borrowed) and encodes it as PNG into a new
 * buffer the caller frees with free(). `params` may be NULL. Errors: KS_ERR_NOMEM,
 * KS_ERR_FORMAT (libvips failed to draw or encode). */
ks_status ki_draw_boxes_png(const ki_image *img, const ki_box *boxes, size_t n,
                            const ki_draw_params *params, void **png, size_t *png_len);

/* The same, written to `path` (a PNG whatever the suffix). KS_ERR_IO if it cannot be written. */
ks_status ki_draw_boxes_file(const ki_image *img, const ki_box *boxes, size_t n,
                             const ki_draw_params *params, const char *path);

#endif
