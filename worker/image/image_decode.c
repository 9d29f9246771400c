/* image_decode: admission by the format list, our own decoders, libvips decoding and the
 * PIL-equivalent conversion to 8-bit RGB (see image_decode.h). The conversion is done here in
 * C on the decoded samples rather than with libvips colour operations, because those
 * (vips_colourspace, vips_flatten, ICC) do not give PIL's results. */
#include "image_decode.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

#include "bmp_decode.h"
#include "image_formats.h"
#include "pnm_decode.h"

struct ki_image {
    int width, height;
    uint8_t *rgb; /* (height, width, 3), owned */
    const char *format;
};

void ki_decode_params_default(ki_decode_params *p)
{
    p->max_pixels = KI_DEFAULT_MAX_PIXELS;
    p->autorotate = false;
}

static ks_status image_alloc(int width, int height, const char *format, ki_image **out)
{
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

void ki_image_destroy(ki_image **img)
{
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

ks_status ki_image_from_rgb(const uint8_t *rgb, int width, int height, ki_image **out)
{
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

/* Which format the bytes are, admitting only what image_formats.h accepts: the formats we
 * decode ourselves (and those we refuse by name) by their signatures first, so that libvips
 * never hands them to ImageMagick; then libvips' loaders, of which we admit ours; then the
 * formats that have no signature, only so that the message can name them. */
static ks_status identify(const void *bytes, size_t len, const ki_format **out)
{
    const ki_format *f;
    const char *nick = NULL;
    if (len == 0) {
        return ks_fail(KS_ERR_FORMAT, "image: the image is empty (0 bytes)");
    }
    f = ki_format_sniff(bytes, len, false);
    if (!f) {
        ks_status st = ki_init();
        if (st != KS_OK) {
            return st;
        }
        const char *loader = vips_foreign_find_load_buffer(bytes, len);
        if (loader) {
            /* libvips names the class (VipsForeignLoadJpegBuffer); we list nicknames. */
            GType type = g_type_from_name(loader);
            nick = type ? vips_nickname_find(type) : loader;
            nick = nick ? nick : loader;
            f = ki_format_by_vips_loader(nick);
        } else {
            vips_error_clear();
        }
    }
    if (!f) { /* ImageMagick claims TGA too, so this comes before its message */
        f = ki_format_sniff(bytes, len, true);
    }
    if (!f) {
        if (nick) {
            return ks_fail(KS_ERR_FORMAT,
                           "image: format not accepted (only libvips' %s reads it; accepted: %s)",
                           nick, ki_formats());
        }
        return ks_fail(KS_ERR_FORMAT, "image: not an image in a supported format (%s)",
                       ki_formats());
    }
    if (f->decoder == KI_DECODER_NONE) {
        return ks_fail(KS_ERR_FORMAT, "image: %s is not accepted: %s (accepted: %s)", f->title,
                       f->refused, ki_formats());
    }
    *out = f;
    return KS_OK;
}

/* Our decoders, for the formats image_formats.h gives to them. */
typedef struct own_decoder {
    ks_status (*size)(const uint8_t *bytes, size_t len, uint64_t *width, uint64_t *height);
    ks_status (*decode)(const uint8_t *bytes, size_t len, uint8_t *rgb);
} own_decoder;

static const own_decoder *own_decoder_of(const ki_format *f)
{
    static const own_decoder bmp = {ki_bmp_size, ki_bmp_decode};
    static const own_decoder pnm = {ki_pnm_size, ki_pnm_decode};
    return f->decoder == KI_DECODER_BMP ? &bmp : f->decoder == KI_DECODER_PNM ? &pnm : NULL;
}

/* The pixel limit, checked on the header before any pixel is decoded, for every decoder. */
static ks_status check_size(uint64_t width, uint64_t height, uint64_t max_pixels)
{
    bool over = height && width > UINT64_MAX / height;
    uint64_t pixels = over ? UINT64_MAX : width * height;
    if (over || width > INT_MAX || height > INT_MAX || pixels > SIZE_MAX / 3) {
        return ks_fail(KS_ERR_LIMIT, "image: %llux%llu is too large to decode",
                       (unsigned long long)width, (unsigned long long)height);
    }
    if (width < 1 || height < 1 || pixels > max_pixels) {
        return ks_fail(KS_ERR_LIMIT,
                       "image: %llux%llu (%llu pixels) is over the limit of %llu pixels",
                       (unsigned long long)width, (unsigned long long)height,
                       (unsigned long long)pixels, (unsigned long long)max_pixels);
    }
    return KS_OK;
}

/* The longest side, for every decoder (image_decode.h, KI_MAX_SIDE). */
static ks_status check_side(uint64_t width, uint64_t height)
{
    if (width > KI_MAX_SIDE || height > KI_MAX_SIDE) {
        return ks_fail(KS_ERR_LIMIT, "image: %llux%llu has a side over the limit of %d pixels",
                       (unsigned long long)width, (unsigned long long)height, KI_MAX_SIDE);
    }
    return KS_OK;
}

/* Opens the header only (libvips loads lazily). */
static ks_status open_header(const void *bytes, size_t len, bool random_access, VipsImage **out)
{
    *out = vips_image_new_from_buffer(bytes, len, "", "fail_on", VIPS_FAIL_ON_TRUNCATED, "access",
                                      random_access ? VIPS_ACCESS_RANDOM : VIPS_ACCESS_SEQUENTIAL,
                                      NULL);
    if (!*out) {
        return ki_vips_fail(KS_ERR_FORMAT, "image: cannot read the header (corrupt or truncated)");
    }
    return KS_OK;
}

ks_status ki_image_probe(const void *bytes, size_t len, int *width, int *height,
                         const char **format)
{
    VipsImage *im = NULL;
    const ki_format *f = NULL;
    const own_decoder *own;
    uint64_t w, h;
    ks_status st = identify(bytes, len, &f);
    if (st != KS_OK) {
        return st;
    }
    if ((own = own_decoder_of(f))) {
        st = own->size(bytes, len, &w, &h);
        if (st == KS_OK) {
            st = check_size(w, h, UINT64_MAX);
        }
        if (st != KS_OK) {
            return st;
        }
        *width = (int)w;
        *height = (int)h;
    } else {
        if ((st = open_header(bytes, len, false, &im)) != KS_OK) {
            return st;
        }
        *width = vips_image_get_width(im);
        *height = vips_image_get_height(im);
        g_object_unref(im);
    }
    if (format) {
        *format = f->name;
    }
    return KS_OK;
}

/* Decodes a format of ours: the header, the limit, then the pixels straight into the image. */
static ks_status decode_own(const own_decoder *own, const ki_format *f, const uint8_t *bytes,
                            size_t len, uint64_t max_pixels, ki_image **out)
{
    uint64_t w, h;
    ki_image *img = NULL;
    ks_status st = own->size(bytes, len, &w, &h);
    if (st == KS_OK) {
        st = check_size(w, h, max_pixels);
    }
    if (st == KS_OK) {
        st = check_side(w, h);
    }
    if (st == KS_OK) {
        st = image_alloc((int)w, (int)h, f->name, &img);
    }
    if (st == KS_OK) {
        st = own->decode(bytes, len, img->rgb);
    }
    if (st != KS_OK) {
        ki_image_destroy(&img);
    }
    *out = img;
    return st;
}

/* PIL's cmyk2rgb (Convert.c): MULDIV255(a, b) = ((a*b + 128) >> 8 + a*b + 128) >> 8. */
static uint8_t cmyk_channel(unsigned c, unsigned nk)
{
    unsigned t = c * nk + 128;
    unsigned v = ((t >> 8) + t) >> 8;
    return (uint8_t)(nk - v); /* v <= nk, no clipping needed */
}

/* Converts n decoded pixels (`bands` samples each) to RGB. u16 is NULL for 8-bit data. */
static void to_rgb(uint8_t *rgb, const uint8_t *u8, const uint16_t *u16, size_t n, int bands,
                   bool cmyk)
{
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
    ki_image *whole;    /* a format of ours, decoded at once (rows point into it); or NULL */
    VipsImage *im;      /* after autorotate and the cast to 8 or 16 bits */
    VipsRegion *region; /* the strip being read */
    const char *format;
    int width, height, bands;
    bool u16, cmyk;
    int y;         /* the next row */
    int strip_end; /* rows below this are in the region */
    int strip_rows;
    uint8_t *rgb; /* (width, 3) */
    size_t len;   /* the encoded size, for messages */
};

void ki_image_reader_destroy(ki_image_reader **pr)
{
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
    ki_image_destroy(&r->whole);
    free(r->rgb);
    free(r);
    *pr = NULL;
}

int ki_image_reader_width(const ki_image_reader *r) { return r->width; }
int ki_image_reader_height(const ki_image_reader *r) { return r->height; }
const char *ki_image_reader_format(const ki_image_reader *r) { return r->format; }

ks_status ki_image_reader_new(const void *bytes, size_t len, const ki_decode_params *params,
                              ki_image_reader **out)
{
    ki_decode_params defaults;
    VipsImage *tmp = NULL;
    ki_image_reader *r = NULL;
    const ki_format *format = NULL;
    const own_decoder *own;
    ks_status st;
    uint64_t max_pixels;
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
    st = identify(bytes, len, &format);
    if (st != KS_OK) {
        goto done;
    }
    r->format = format->name;
    if ((own = own_decoder_of(format))) { /* no EXIF in these: autorotate has nothing to do */
        /* Uncompressed formats: the decoded image is about the size of the bytes themselves. */
        st = decode_own(own, format, bytes, len, max_pixels, &r->whole);
        if (st == KS_OK) {
            r->width = ki_image_width(r->whole);
            r->height = ki_image_height(r->whole);
            *out = r;
            r = NULL;
        }
        goto done;
    }
    st = open_header(bytes, len, params->autorotate, &r->im);
    if (st != KS_OK) {
        goto done;
    }
    width = vips_image_get_width(r->im);
    height = vips_image_get_height(r->im);
    st = check_size((uint64_t)(width > 0 ? width : 0), (uint64_t)(height > 0 ? height : 0),
                    max_pixels);
    if (st != KS_OK) {
        goto done;
    }
    if ((st = check_side((uint64_t)width, (uint64_t)height)) != KS_OK) {
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

ks_status ki_image_reader_row(ki_image_reader *r, const uint8_t **rgb)
{
    if (r->y >= r->height) {
        return ks_fail(KS_ERR_INVALID, "image: no row %d in a %d-row image", r->y, r->height);
    }
    if (r->whole) {
        *rgb = r->whole->rgb + (size_t)r->y++ * (size_t)r->width * 3;
        return KS_OK;
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
    to_rgb(r->rgb, r->u16 ? NULL : row, r->u16 ? row : NULL, (size_t)r->width, r->bands, r->cmyk);
    r->y++;
    *rgb = r->rgb;
    return KS_OK;
}

ks_status ki_image_decode(const void *bytes, size_t len, const ki_decode_params *params,
                          ki_image **out)
{
    ki_image_reader *r = NULL;
    ki_image *img = NULL;
    *out = NULL;
    ks_status st = ki_image_reader_new(bytes, len, params, &r);
    if (st == KS_OK && r->whole) { /* already whole: hand it over */
        *out = r->whole;
        r->whole = NULL;
        ki_image_reader_destroy(&r);
        return KS_OK;
    }
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
