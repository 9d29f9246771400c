/* image_decode: libvips decoding and the PIL-equivalent conversion to 8-bit RGB (see
 * image_decode.h). The conversion is done here in C on the decoded samples rather than with
 * libvips colour operations, because those (vips_colourspace, vips_flatten, ICC) do not give
 * PIL's results. */
#include "image_decode.h"

#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

struct ki_image {
    int width, height;
    uint8_t *rgb; /* (height, width, 3), owned */
    const char *format;
};

static const struct {
    const char *loader;
    const char *name;
} loaders[] = {
    {"jpegload_buffer", "jpeg"}, {"pngload_buffer", "png"}, {"webpload_buffer", "webp"},
    {"tiffload_buffer", "tiff"}, {"gifload_buffer", "gif"}, {"heifload_buffer", "heif"},
};

void ki_decode_params_default(ki_decode_params *p) {
    p->max_pixels = KI_DEFAULT_MAX_PIXELS;
    p->autorotate = false;
}

static ks_status image_alloc(int width, int height, const char *format, ki_image **out) {
    ki_image *img = calloc(1, sizeof *img);
    if (img) {
        img->rgb = malloc((size_t)width * (size_t)height * 3);
    }
    if (!img || !img->rgb) {
        free(img);
        return ks_fail(KS_ERR_NOMEM, "image: out of memory for %dx%d pixels", width, height);
    }
    img->width = width;
    img->height = height;
    img->format = format;
    *out = img;
    return KS_OK;
}

void ki_image_destroy(ki_image **img) {
    if (!img || !*img) {
        return;
    }
    free((*img)->rgb);
    free(*img);
    *img = NULL;
}

int ki_image_width(const ki_image *img) { return img->width; }
int ki_image_height(const ki_image *img) { return img->height; }
const uint8_t *ki_image_rgb(const ki_image *img) { return img->rgb; }
const char *ki_image_format(const ki_image *img) { return img->format; }

ks_status ki_image_from_rgb(const uint8_t *rgb, int width, int height, ki_image **out) {
    *out = NULL;
    if (!rgb || width < 1 || height < 1) {
        return ks_fail(KS_ERR_INVALID, "image: bad RGB image %dx%d", width, height);
    }
    ks_status st = image_alloc(width, height, "raw", out);
    if (st == KS_OK) {
        memcpy((*out)->rgb, rgb, (size_t)width * (size_t)height * 3);
    }
    return st;
}

/* Finds the loader libvips would use and admits only ours. Sets *format. */
static ks_status sniff(const void *bytes, size_t len, const char **format) {
    const char *loader;
    if (len == 0) {
        return ks_fail(KS_ERR_FORMAT, "image: the image is empty (0 bytes)");
    }
    loader = vips_foreign_find_load_buffer(bytes, len);
    if (!loader) {
        vips_error_clear();
        return ks_fail(KS_ERR_FORMAT, "image: not an image in a supported format (%s)",
                       ki_formats());
    }
    /* libvips names the class (VipsForeignLoadJpegBuffer); compare its nickname. */
    GType type = g_type_from_name(loader);
    const char *nick = type ? vips_nickname_find(type) : NULL;
    for (size_t i = 0; nick && i < sizeof loaders / sizeof loaders[0]; i++) {
        if (strcmp(nick, loaders[i].loader) == 0) {
            *format = loaders[i].name;
            return KS_OK;
        }
    }
    return ks_fail(KS_ERR_FORMAT, "image: format not accepted (libvips loader %s; accepted: %s)",
                   loader, ki_formats());
}

/* Opens the header only (libvips loads lazily). */
static ks_status open_header(const void *bytes, size_t len, bool random_access, VipsImage **out,
                             const char **format) {
    ks_status st = ki_init();
    if (st != KS_OK) {
        return st;
    }
    st = sniff(bytes, len, format);
    if (st != KS_OK) {
        return st;
    }
    *out = vips_image_new_from_buffer(bytes, len, "", "fail_on", VIPS_FAIL_ON_TRUNCATED,
                                      "access",
                                      random_access ? VIPS_ACCESS_RANDOM : VIPS_ACCESS_SEQUENTIAL,
                                      NULL);
    if (!*out) {
        return ki_vips_fail(KS_ERR_FORMAT, "image: cannot read the header (corrupt or truncated)");
    }
    return KS_OK;
}

ks_status ki_image_probe(const void *bytes, size_t len, int *width, int *height,
                         const char **format) {
    VipsImage *im = NULL;
    const char *fmt = NULL;
    ks_status st = open_header(bytes, len, false, &im, &fmt);
    if (st != KS_OK) {
        return st;
    }
    *width = vips_image_get_width(im);
    *height = vips_image_get_height(im);
    if (format) {
        *format = fmt;
    }
    g_object_unref(im);
    return KS_OK;
}

/* PIL's cmyk2rgb (Convert.c): MULDIV255(a, b) = ((a*b + 128) >> 8 + a*b + 128) >> 8. */
static uint8_t cmyk_channel(unsigned c, unsigned nk) {
    unsigned t = c * nk + 128;
    unsigned v = ((t >> 8) + t) >> 8;
    return (uint8_t)(nk - v); /* v <= nk, no clipping needed */
}

/* Converts n decoded pixels (`bands` samples each) to RGB. u16 is NULL for 8-bit data. */
static void to_rgb(uint8_t *rgb, const uint8_t *u8, const uint16_t *u16, size_t n, int bands,
                   bool cmyk) {
    for (size_t i = 0; i < n; i++) {
        uint8_t s[4] = {0, 0, 0, 0};
        int m = bands < 4 ? bands : 4;
        for (int b = 0; b < m; b++) {
            size_t at = i * (size_t)bands + (size_t)b;
            if (u8) {
                s[b] = u8[at];
            } else if (bands == 1) { /* PIL "I;16" -> RGB clips */
                s[b] = u16[at] > 255 ? 255 : (uint8_t)u16[at];
            } else { /* PIL "RGB;16B", "LA;16B", ...: the high byte */
                s[b] = (uint8_t)(u16[at] >> 8);
            }
        }
        uint8_t *o = rgb + i * 3;
        if (cmyk) {
            unsigned nk = 255u - s[3];
            o[0] = cmyk_channel(s[0], nk);
            o[1] = cmyk_channel(s[1], nk);
            o[2] = cmyk_channel(s[2], nk);
        } else if (bands < 3) { /* gray, gray + alpha */
            o[0] = o[1] = o[2] = s[0];
        } else { /* RGB, RGBA: alpha dropped */
            o[0] = s[0];
            o[1] = s[1];
            o[2] = s[2];
        }
    }
}

/* Rows per strip: up to 64, and about a million samples, so that a wide image's strip stays
 * small. */
#define KI_STRIP_SAMPLES (1u << 20)
#define KI_STRIP_ROWS 64

struct ki_image_reader {
    VipsImage *im;      /* after autorotate and the cast to 8 or 16 bits */
    VipsRegion *region; /* the strip being read */
    const char *format;
    int width, height, bands;
    bool u16, cmyk;
    int y;              /* the next row */
    int strip_end;      /* rows below this are in the region */
    int strip_rows;
    uint8_t *rgb;       /* (width, 3) */
    size_t len;         /* the encoded size, for messages */
};

void ki_image_reader_destroy(ki_image_reader **pr) {
    if (!pr || !*pr) {
        return;
    }
    ki_image_reader *r = *pr;
    if (r->region) {
        g_object_unref(r->region);
    }
    if (r->im) {
        g_object_unref(r->im);
    }
    free(r->rgb);
    free(r);
    *pr = NULL;
}

int ki_image_reader_width(const ki_image_reader *r) { return r->width; }
int ki_image_reader_height(const ki_image_reader *r) { return r->height; }
const char *ki_image_reader_format(const ki_image_reader *r) { return r->format; }

ks_status ki_image_reader_new(const void *bytes, size_t len, const ki_decode_params *params,
                              ki_image_reader **out) {
    ki_decode_params defaults;
    VipsImage *tmp = NULL;
    ki_image_reader *r = NULL;
    ks_status st;
    uint64_t max_pixels, pixels;
    int width, height;
    VipsBandFormat bf;

    *out = NULL;
    if (!params) {
        ki_decode_params_default(&defaults);
        params = &defaults;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        return ks_fail(KS_ERR_NOMEM, "image: out of memory");
    }
    r->len = len;
    max_pixels = params->max_pixels ? params->max_pixels : KI_DEFAULT_MAX_PIXELS;
    st = open_header(bytes, len, params->autorotate, &r->im, &r->format);
    if (st != KS_OK) {
        goto done;
    }
    width = vips_image_get_width(r->im);
    height = vips_image_get_height(r->im);
    pixels = (uint64_t)width * (uint64_t)height;
    if (width < 1 || height < 1 || pixels > max_pixels) {
        st = ks_fail(KS_ERR_LIMIT,
                     "image: %dx%d (%llu pixels) is over the limit of %llu pixels", width,
                     height, (unsigned long long)pixels, (unsigned long long)max_pixels);
        goto done;
    }
    if (width > KI_MAX_SIDE || height > KI_MAX_SIDE) {
        st = ks_fail(KS_ERR_LIMIT, "image: %dx%d has a side over the limit of %d pixels", width,
                     height, KI_MAX_SIDE);
        goto done;
    }
    if (params->autorotate) {
        if (vips_autorot(r->im, &tmp, NULL)) {
            st = ki_vips_fail(KS_ERR_FORMAT, "image: cannot apply the EXIF orientation");
            goto done;
        }
        g_object_unref(r->im);
        r->im = tmp;
        tmp = NULL;
    }
    bf = vips_image_get_format(r->im);
    if (bf != VIPS_FORMAT_UCHAR && bf != VIPS_FORMAT_USHORT) {
        if (vips_band_format_isfloat(bf) || vips_band_format_iscomplex(bf)) {
            st = ks_fail(KS_ERR_UNSUPPORTED, "image: %s samples are not supported",
                         vips_enum_nick(VIPS_TYPE_BAND_FORMAT, bf));
            goto done;
        }
        /* Other integer samples: clip to 0..255 (PIL "I" -> RGB clips too). */
        if (vips_cast(r->im, &tmp, VIPS_FORMAT_UCHAR, NULL)) {
            st = ki_vips_fail(KS_ERR_FORMAT, "image: cannot convert the samples");
            goto done;
        }
        g_object_unref(r->im);
        r->im = tmp;
        tmp = NULL;
        bf = VIPS_FORMAT_UCHAR;
    }
    r->width = vips_image_get_width(r->im); /* autorotate may swap them */
    r->height = vips_image_get_height(r->im);
    r->bands = vips_image_get_bands(r->im);
    r->u16 = bf == VIPS_FORMAT_USHORT;
    r->cmyk = vips_image_get_interpretation(r->im) == VIPS_INTERPRETATION_CMYK && r->bands >= 4;
    size_t per_row = (size_t)r->width * (size_t)r->bands;
    r->strip_rows = per_row >= KI_STRIP_SAMPLES ? 1 : (int)(KI_STRIP_SAMPLES / per_row);
    if (r->strip_rows > KI_STRIP_ROWS) {
        r->strip_rows = KI_STRIP_ROWS;
    }
    r->rgb = malloc((size_t)r->width * 3);
    r->region = vips_region_new(r->im);
    if (!r->rgb || !r->region) {
        st = ks_fail(KS_ERR_NOMEM, "image: out of memory for a %d-pixel row", r->width);
        goto done;
    }
    *out = r;
    r = NULL;
done:
    if (st != KS_OK) {
        ks_error_prefix("decoding %zu bytes", len);
    }
    if (tmp) {
        g_object_unref(tmp);
    }
    ki_image_reader_destroy(&r);
    return st;
}

ks_status ki_image_reader_row(ki_image_reader *r, const uint8_t **rgb) {
    if (r->y >= r->height) {
        return ks_fail(KS_ERR_INVALID, "image: no row %d in a %d-row image", r->y, r->height);
    }
    if (r->y >= r->strip_end) {
        int n = r->height - r->y < r->strip_rows ? r->height - r->y : r->strip_rows;
        VipsRect strip = {.left = 0, .top = r->y, .width = r->width, .height = n};
        if (vips_region_prepare(r->region, &strip)) { /* decodes; fails on truncation */
            ks_status st = ki_vips_fail(KS_ERR_FORMAT, "image: cannot decode the pixels");
            ks_error_prefix("decoding %zu bytes", r->len);
            return st;
        }
        r->strip_end = r->y + n;
    }
    const void *row = VIPS_REGION_ADDR(r->region, 0, r->y);
    to_rgb(r->rgb, r->u16 ? NULL : row, r->u16 ? row : NULL, (size_t)r->width, r->bands,
           r->cmyk);
    r->y++;
    *rgb = r->rgb;
    return KS_OK;
}

ks_status ki_image_decode(const void *bytes, size_t len, const ki_decode_params *params,
                          ki_image **out) {
    ki_image_reader *r = NULL;
    ki_image *img = NULL;
    *out = NULL;
    ks_status st = ki_image_reader_new(bytes, len, params, &r);
    if (st == KS_OK) {
        st = image_alloc(r->width, r->height, r->format, &img);
    }
    size_t stride = r ? (size_t)r->width * 3 : 0;
    for (int y = 0; st == KS_OK && y < r->height; y++) {
        const uint8_t *row;
        st = ki_image_reader_row(r, &row);
        if (st == KS_OK) {
            memcpy(img->rgb + (size_t)y * stride, row, stride);
        }
    }
    ki_image_reader_destroy(&r);
    if (st == KS_OK) {
        *out = img;
        img = NULL;
    }
    ki_image_destroy(&img);
    return st;
}
