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

/* Which format the bytes are, admitting only what image_formats.h accepts: the formats we
 * decode ourselves (and those we refuse by name) by their signatures first, so that libvips
 * never hands them to ImageMagick; then libvips' loaders, of which we admit ours; then the
 * formats that have no signature, only so that the message can name them. */
static ks_status identify(const void *bytes, size_t len, const ki_format **out) {
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

static const own_decoder *own_decoder_of(const ki_format *f) {
    static const own_decoder bmp = {ki_bmp_size, ki_bmp_decode};
    static const own_decoder pnm = {ki_pnm_size, ki_pnm_decode};
    return f->decoder == KI_DECODER_BMP ? &bmp : f->decoder == KI_DECODER_PNM ? &pnm : NULL;
}

/* The pixel limit, checked on the header before any pixel is decoded, for every decoder. */
static ks_status check_size(uint64_t width, uint64_t height, uint64_t max_pixels) {
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

/* Opens the header only (libvips loads lazily). */
static ks_status open_header(const void *bytes, size_t len, bool random_access, VipsImage **out) {
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
                            size_t len, uint64_t max_pixels, ki_image **out) {
    uint64_t w, h;
    ki_image *img = NULL;
    ks_status st = own->size(bytes, len, &w, &h);
    if (st == KS_OK) {
        st = check_size(w, h, max_pixels);
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

ks_status ki_image_decode(const void *bytes, size_t len, const ki_decode_params *params,
                          ki_image **out) {
    ki_decode_params defaults;
    VipsImage *im = NULL, *tmp = NULL;
    void *mem = NULL;
    size_t mem_len = 0;
    const ki_format *format = NULL;
    const own_decoder *own;
    ki_image *img = NULL;
    ks_status st;
    uint64_t max_pixels;
    int width, height, bands;
    VipsBandFormat bf;
    bool cmyk;

    *out = NULL;
    if (!params) {
        ki_decode_params_default(&defaults);
        params = &defaults;
    }
    max_pixels = params->max_pixels ? params->max_pixels : KI_DEFAULT_MAX_PIXELS;
    st = identify(bytes, len, &format);
    if (st != KS_OK) {
        goto done;
    }
    if ((own = own_decoder_of(format))) { /* no EXIF in these: autorotate has nothing to do */
        st = decode_own(own, format, bytes, len, max_pixels, out);
        goto done;
    }
    st = open_header(bytes, len, params->autorotate, &im);
    if (st != KS_OK) {
        goto done;
    }
    width = vips_image_get_width(im);
    height = vips_image_get_height(im);
    st = check_size((uint64_t)(width > 0 ? width : 0), (uint64_t)(height > 0 ? height : 0),
                    max_pixels);
    if (st != KS_OK) {
        goto done;
    }
    if (params->autorotate) {
        if (vips_autorot(im, &tmp, NULL)) {
            st = ki_vips_fail(KS_ERR_FORMAT, "image: cannot apply the EXIF orientation");
            goto done;
        }
        g_object_unref(im);
        im = tmp;
        tmp = NULL;
    }
    bf = vips_image_get_format(im);
    if (bf != VIPS_FORMAT_UCHAR && bf != VIPS_FORMAT_USHORT) {
        if (vips_band_format_isfloat(bf) || vips_band_format_iscomplex(bf)) {
            st = ks_fail(KS_ERR_UNSUPPORTED, "image: %s samples are not supported",
                         vips_enum_nick(VIPS_TYPE_BAND_FORMAT, bf));
            goto done;
        }
        /* Other integer samples: clip to 0..255 (PIL "I" -> RGB clips too). */
        if (vips_cast(im, &tmp, VIPS_FORMAT_UCHAR, NULL)) {
            st = ki_vips_fail(KS_ERR_FORMAT, "image: cannot convert the samples");
            goto done;
        }
        g_object_unref(im);
        im = tmp;
        tmp = NULL;
        bf = VIPS_FORMAT_UCHAR;
    }
    width = vips_image_get_width(im); /* autorotate may swap them */
    height = vips_image_get_height(im);
    bands = vips_image_get_bands(im);
    cmyk = vips_image_get_interpretation(im) == VIPS_INTERPRETATION_CMYK && bands >= 4;
    mem = vips_image_write_to_memory(im, &mem_len); /* decodes; fails on truncation */
    if (!mem) {
        st = ki_vips_fail(KS_ERR_FORMAT, "image: cannot decode the pixels");
        goto done;
    }
    if (mem_len != (size_t)width * (size_t)height * (size_t)bands *
                       (bf == VIPS_FORMAT_USHORT ? 2u : 1u)) {
        st = ks_fail(KS_ERR_FORMAT, "image: libvips returned an unexpected buffer size");
        goto done;
    }
    st = image_alloc(width, height, format->name, &img);
    if (st != KS_OK) {
        goto done;
    }
    to_rgb(img->rgb, bf == VIPS_FORMAT_UCHAR ? mem : NULL,
           bf == VIPS_FORMAT_USHORT ? mem : NULL, (size_t)width * (size_t)height, bands, cmyk);
    *out = img;
    img = NULL;
done:
    if (st != KS_OK) {
        ks_error_prefix("decoding %zu bytes", len);
    }
    g_free(mem);
    if (tmp) {
        g_object_unref(tmp);
    }
    if (im) {
        g_object_unref(im);
    }
    ki_image_destroy(&img);
    return st;
}
