/* draw: boxes and labels on the source image with libvips (see draw.h). */
#include "draw.h"

#include <fontconfig/fontconfig.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

/* Twelve colours far enough apart to tell entities apart (Tableau 10 + two). */
static const double palette[][3] = {
    {31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
    {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {127, 127, 127},
    {188, 189, 34},  {23, 190, 207}, {255, 215, 0},   {0, 0, 128},
};
#define PALETTE_SIZE (sizeof palette / sizeof palette[0])

void ki_draw_params_default(ki_draw_params *p)
{
    p->font_file = KI_DEFAULT_FONT_FILE;
    p->line_width = 0;
    p->font_size = 0;
}

/* Makes a font file known to fontconfig, once per path. We do this instead of passing
 * vips_text's "fontfile": libvips 8.14 keeps that string in a process-wide table after the
 * operation has freed it, and the next vips_text call with a fontfile reads freed memory
 * (found by ASan here). libvips registers the file exactly this way. */
static void register_font(const char *path)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static char *done[8];
    pthread_mutex_lock(&lock);
    size_t i = 0;
    while (i < sizeof done / sizeof done[0] && done[i] && strcmp(done[i], path) != 0) {
        i++;
    }
    if (i < sizeof done / sizeof done[0] && !done[i]) {
        /* A missing file is no error: pango then picks a fallback font through fontconfig. */
        (void)FcConfigAppFontAddFile(NULL, (const FcChar8 *)path);
        done[i] = strdup(path);
    }
    pthread_mutex_unlock(&lock);
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* A normalized coordinate to a pixel index in [0, size - 1]; false if not finite. */
static bool to_pixel(double v, int size, int *out)
{
    if (!isfinite(v)) {
        return false;
    }
    double p = floor(v * size);
    *out = p < 0 ? 0 : p > size - 1 ? size - 1 : (int)p;
    return true;
}

/* Filled rectangle clipped to the image; empty ones are skipped. */
static int fill_rect(VipsImage *im, const double ink[3], int x, int y, int w, int h)
{
    int W = vips_image_get_width(im), H = vips_image_get_height(im);
    int x0 = clampi(x, 0, W), y0 = clampi(y, 0, H);
    int x1 = clampi(x + w, 0, W), y1 = clampi(y + h, 0, H);
    if (x1 <= x0 || y1 <= y0) {
        return 0;
    }
    return vips_draw_rect(im, (double *)ink, 3, x0, y0, x1 - x0, y1 - y0, "fill", TRUE, NULL);
}

/* The label at the box's top-left corner, above the box when there is room. A label that
 * cannot be rendered (no font, pango failure) is skipped: the boxes matter more. */
static int draw_label(VipsImage *im, const char *label, const double bg[3], int bx, int by,
                      const ki_draw_params *p, int font_px)
{
    VipsImage *mask = NULL;
    char font[64];
    char *markup;
    int rc = 0;
    int pad = font_px / 5 + 1;

    register_font(p->font_file);
    markup = g_markup_escape_text(label, -1); /* vips_text reads pango markup */
    snprintf(font, sizeof font, "DejaVu Sans %d", font_px);
    if (vips_text(&mask, markup, "font", font, "dpi", 72, NULL)) {
        vips_error_clear();
        g_free(markup);
        return 0;
    }
    g_free(markup);
    int W = vips_image_get_width(im), H = vips_image_get_height(im);
    int tw = vips_image_get_width(mask), th = vips_image_get_height(mask);
    int lw = tw + 2 * pad, lh = th + 2 * pad;
    int lx = clampi(bx, 0, W - lw > 0 ? W - lw : 0);
    int ly = by - lh >= 0 ? by - lh : clampi(by, 0, H - lh > 0 ? H - lh : 0);
    double lum = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2];
    double fg[3] = {255, 255, 255};
    if (lum > 150) {
        fg[0] = fg[1] = fg[2] = 0;
    }
    rc = fill_rect(im, bg, lx, ly, lw, lh);
    if (rc == 0) { /* vips_draw_mask clips the mask to the image */
        rc = vips_draw_mask(im, fg, 3, mask, lx + pad, ly + pad, NULL);
    }
    g_object_unref(mask);
    return rc;
}

static ks_status draw_all(const ki_image *img, const ki_box *boxes, size_t n,
                          const ki_draw_params *params, VipsImage **out)
{
    ki_draw_params defaults;
    VipsImage *im, *mem;
    int W = ki_image_width(img), H = ki_image_height(img);
    int minside = W < H ? W : H;
    ks_status st = ki_init();
    if (st != KS_OK) {
        return st;
    }
    ki_draw_params_default(&defaults);
    if (!params) {
        params = &defaults;
    }
    ki_draw_params p = *params;
    if (!p.font_file) {
        p.font_file = defaults.font_file;
    }
    int lw = p.line_width > 0 ? p.line_width : (minside / 250 > 2 ? minside / 250 : 2);
    int font_px = p.font_size > 0 ? p.font_size : clampi(minside / 30, 10, 48);

    im = vips_image_new_from_memory_copy(ki_image_rgb(img), (size_t)W * (size_t)H * 3, W, H, 3,
                                         VIPS_FORMAT_UCHAR);
    if (!im) {
        return ki_vips_fail(KS_ERR_NOMEM, "draw: cannot copy the image");
    }
    mem = vips_image_copy_memory(im); /* the draw operations work in place */
    g_object_unref(im);
    if (!mem) {
        return ki_vips_fail(KS_ERR_NOMEM, "draw: cannot copy the image");
    }
    /* Boxes first, then every label, so that no box line crosses a label. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const ki_box *b = &boxes[i];
            int x1, y1, x2, y2, t;
            if (!to_pixel(b->x1, W, &x1) || !to_pixel(b->y1, H, &y1) || !to_pixel(b->x2, W, &x2) ||
                !to_pixel(b->y2, H, &y2)) {
                continue;
            }
            if (x2 < x1) {
                t = x1, x1 = x2, x2 = t;
            }
            if (y2 < y1) {
                t = y1, y1 = y2, y2 = t;
            }
            unsigned e = b->entity < 0 ? (unsigned)(-(b->entity + 1)) : (unsigned)b->entity;
            const double *ink = palette[e % PALETTE_SIZE];
            int bw = x2 - x1 + 1, bh = y2 - y1 + 1, rc;
            if (pass == 0) { /* four edges, inside the box */
                rc = fill_rect(mem, ink, x1, y1, bw, lw) ||
                     fill_rect(mem, ink, x1, y2 - lw + 1, bw, lw) ||
                     fill_rect(mem, ink, x1, y1, lw, bh) ||
                     fill_rect(mem, ink, x2 - lw + 1, y1, lw, bh);
            } else {
                rc = b->label && b->label[0] ? draw_label(mem, b->label, ink, x1, y1, &p, font_px)
                                             : 0;
            }
            if (rc) {
                g_object_unref(mem);
                return ki_vips_fail(KS_ERR_FORMAT, "draw: libvips failed");
            }
        }
    }
    *out = mem;
    return KS_OK;
}

ks_status ki_draw_boxes_png(const ki_image *img, const ki_box *boxes, size_t n,
                            const ki_draw_params *params, void **png, size_t *png_len)
{
    VipsImage *im = NULL;
    void *buf = NULL;
    size_t len = 0;
    *png = NULL;
    *png_len = 0;
    ks_status st = draw_all(img, boxes, n, params, &im);
    if (st != KS_OK) {
        return st;
    }
    if (vips_pngsave_buffer(im, &buf, &len, NULL)) {
        g_object_unref(im);
        return ki_vips_fail(KS_ERR_FORMAT, "draw: cannot encode the PNG");
    }
    g_object_unref(im);
    *png = malloc(len ? len : 1);
    if (!*png) {
        g_free(buf);
        return ks_fail(KS_ERR_NOMEM, "draw: out of memory for the PNG");
    }
    memcpy(*png, buf, len);
    *png_len = len;
    g_free(buf);
    return KS_OK;
}

ks_status ki_draw_boxes_file(const ki_image *img, const ki_box *boxes, size_t n,
                             const ki_draw_params *params, const char *path)
{
    void *png = NULL;
    size_t len = 0;
    FILE *f;
    ks_status st = ki_draw_boxes_png(img, boxes, n, params, &png, &len);
    if (st != KS_OK) {
        return st;
    }
    f = fopen(path, "wb");
    if (!f) {
        free(png);
        return ks_fail(KS_ERR_IO, "draw: cannot write %s", path);
    }
    size_t wrote = fwrite(png, 1, len, f);
    int closed = fclose(f);
    free(png);
    if (wrote != len || closed != 0) {
        return ks_fail(KS_ERR_IO, "draw: cannot write %s", path);
    }
    return KS_OK;
}
