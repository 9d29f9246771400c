/* image_formats: the format list and its look-ups (see image_formats.h). */
#include "image_formats.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Why TGA and ICO are refused rather than decoded (docs/submit.md, "Formats"): each would be a
 * third decoder of our own for files that are rare in datasets of photographs, and neither can
 * be told apart safely: TGA has no signature at all, and an ICO is a directory of PNG or BMP
 * images from which Pillow picks one by its own rules. */
static const ki_format formats[] = {
    {"jpeg", "JPEG", "jpg jpeg", KI_DECODER_VIPS, "jpegload_buffer", NULL},
    {"png", "PNG", "png", KI_DECODER_VIPS, "pngload_buffer", NULL},
    {"webp", "WebP", "webp", KI_DECODER_VIPS, "webpload_buffer", NULL},
    {"tiff", "TIFF", "tif tiff", KI_DECODER_VIPS, "tiffload_buffer", NULL},
    {"gif", "GIF", "gif", KI_DECODER_VIPS, "gifload_buffer", NULL},
    {"bmp", "BMP", "bmp", KI_DECODER_BMP, NULL, NULL},
    {"pnm", "PPM/PGM/PBM", "ppm pgm pbm pnm", KI_DECODER_PNM, NULL, NULL},
    {"heif", "HEIF/HEIC/AVIF", "heic heif avif", KI_DECODER_VIPS, "heifload_buffer", NULL},
    {"ico", "ICO/CUR (Windows icon)", "", KI_DECODER_NONE, NULL,
     "a container of PNG or BMP icons; convert it to PNG"},
    {"tga", "TGA (Truevision Targa)", "", KI_DECODER_NONE, NULL,
     "it has no signature to recognise it by; convert it to PNG"},
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

const ki_format *ki_format_list(size_t *n)
{
    *n = N_FORMATS;
    return formats;
}

const ki_format *ki_format_by_name(const char *name)
{
    for (size_t i = 0; i < N_FORMATS; i++) {
        if (strcmp(formats[i].name, name) == 0) {
            return &formats[i];
        }
    }
    return NULL;
}

/* True when the space-separated `list` holds the word ext[0..n). */
static bool has_word(const char *list, const char *ext, size_t n)
{
    for (const char *p = list; *p;) {
        size_t w = strcspn(p, " ");
        if (w == n && strncasecmp(p, ext, n) == 0) {
            return true;
        }
        p += w;
        p += *p == ' ';
    }
    return false;
}

const ki_format *ki_format_by_path(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base || dot[1] == '\0') {
        return NULL;
    }
    for (size_t i = 0; i < N_FORMATS; i++) {
        if (has_word(formats[i].extensions, dot + 1, strlen(dot + 1))) {
            return &formats[i];
        }
    }
    return NULL;
}

const ki_format *ki_format_by_vips_loader(const char *nick)
{
    for (size_t i = 0; i < N_FORMATS; i++) {
        if (formats[i].vips_loader && strcmp(formats[i].vips_loader, nick) == 0) {
            return &formats[i];
        }
    }
    return NULL;
}

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Pillow's TgaImageFile._open checks, which are all a TGA file offers: colour map type 0 or 1,
 * a known image type, a non-zero size and a known depth. */
static bool looks_like_tga(const uint8_t *b, size_t len)
{
    static const char footer[] = "TRUEVISION-XFILE.";
    if (len >= 26 && memcmp(b + len - 18, footer, sizeof footer) == 0) {
        return true; /* a TGA 2.0 file says so at its end */
    }
    if (len < 18 || b[1] > 1 || le16(b + 12) == 0 || le16(b + 14) == 0) {
        return false;
    }
    bool type = b[2] == 1 || b[2] == 2 || b[2] == 3 || b[2] == 9 || b[2] == 10 || b[2] == 11;
    bool depth = b[16] == 1 || b[16] == 8 || b[16] == 16 || b[16] == 24 || b[16] == 32;
    return type && depth;
}

const ki_format *ki_format_sniff(const void *bytes, size_t len, bool guess)
{
    const uint8_t *b = bytes;
    if (guess) {
        return looks_like_tga(b, len) ? ki_format_by_name("tga") : NULL;
    }
    if (len >= 2 && b[0] == 'B' && b[1] == 'M') {
        return ki_format_by_name("bmp");
    }
    /* Pillow's PpmImagePlugin claims "P" + one of 0123456fy; the decoder sorts them out. */
    if (len >= 2 && b[0] == 'P' && b[1] && strchr("0123456fy", b[1])) {
        return ki_format_by_name("pnm");
    }
    /* ICO and CUR (Pillow: IcoImagePlugin, CurImagePlugin) with at least one image: an
     * uncompressed TGA without colour map starts with the same 0 0 2 0, then a count of 0. */
    if (len >= 6 + 16 && b[0] == 0 && b[1] == 0 && (b[2] == 1 || b[2] == 2) && b[3] == 0 &&
        le16(b + 4) > 0) {
        return ki_format_by_name("ico");
    }
    return NULL;
}

size_t ki_format_extensions(char *buf, size_t cap)
{
    size_t need = 0;
    if (cap) {
        buf[0] = '\0';
    }
    for (size_t i = 0; i < N_FORMATS; i++) {
        for (const char *p = formats[i].extensions; *p;) {
            size_t w = strcspn(p, " ");
            int n = snprintf(cap > need ? buf + need : NULL, cap > need ? cap - need : 0, "%s.%.*s",
                             need ? " " : "", (int)w, p);
            need += n > 0 ? (size_t)n : 0;
            p += w;
            p += *p == ' ';
        }
    }
    return need;
}
