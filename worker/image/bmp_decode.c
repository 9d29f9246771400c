/* bmp_decode: see bmp_decode.h. Every rule below is Pillow's (BmpImagePlugin._bitmap, its RLE
 * decoder, the raw decoder and the unpackers); where Pillow's behaviour is odd, the comment says
 * so and the code keeps it, since the reference model saw what Pillow gave. */
#include "bmp_decode.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum { COMP_RAW = 0, COMP_RLE8 = 1, COMP_RLE4 = 2, COMP_BITFIELDS = 3 };

/* The Pillow mode the pixels are held in before convert("RGB"). */
typedef enum { MODE_1, MODE_L, MODE_P, MODE_RGB } pil_mode;

typedef struct bmp {
    uint64_t width, height; /* up to 2^32 - 1 each */
    bool top_down;
    bool rle, rle4;
    unsigned bits;        /* per pixel in the file: sets the row stride */
    unsigned unpack_bits; /* per pixel as Pillow's raw mode reads them (see parse_palette) */
    pil_mode mode;
    bool rgb565;             /* 16 bits: 5-6-5, else 5-5-5 */
    int at[3];               /* 24 and 32 bits: the byte of R, G and B within a pixel */
    uint64_t data;           /* offset of the pixel data in the file */
    uint8_t palette[256][3]; /* MODE_P; entries the file lacks stay black, as in Pillow */
} bmp;

/* The 32-bit masks (R, G, B, A) Pillow accepts, and where its raw mode finds R, G, B. */
static const struct {
    uint32_t mask[4];
    int at[3];
} masks32[] = {
    {{0xFF0000, 0xFF00, 0xFF, 0}, {2, 1, 0}},          /* BGRX */
    {{0xFF000000, 0xFF0000, 0xFF00, 0}, {3, 2, 1}},    /* XBGR */
    {{0xFF000000, 0xFF00, 0xFF, 0}, {3, 1, 0}},        /* BGXR */
    {{0xFF000000, 0xFF0000, 0xFF00, 0xFF}, {3, 2, 1}}, /* ABGR */
    {{0xFF, 0xFF00, 0xFF0000, 0xFF000000}, {0, 1, 2}}, /* RGBA */
    {{0xFF0000, 0xFF00, 0xFF, 0xFF000000}, {2, 1, 0}}, /* BGRA */
    {{0xFF000000, 0xFF00, 0xFF, 0xFF0000}, {3, 1, 0}}, /* BGAR */
    {{0, 0, 0, 0}, {2, 1, 0}},                         /* BGRA */
};

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static ks_status truncated(const char *what)
{
    return ks_fail(KS_ERR_FORMAT, "bmp: truncated %s", what);
}

/* The masks of a BITFIELDS image, as Pillow reads them: inside headers of 52 bytes and more
 * (the alpha mask from 56 on), else the three words after a 40-byte header. */
static ks_status parse_bitfields(const uint8_t *b, size_t len, uint32_t hsize, size_t *pos, bmp *m)
{
    uint32_t mask[4] = {0, 0, 0, 0};
    const uint8_t *h = b + 18;
    if (hsize >= 52) {
        for (int i = 0; i < (hsize >= 56 ? 4 : 3); i++) {
            mask[i] = le32(h + 36 + 4 * i);
        }
    } else {
        if (len - *pos < 12) {
            return truncated("bit-field masks");
        }
        for (int i = 0; i < 3; i++) {
            mask[i] = le32(b + *pos + 4 * (size_t)i);
        }
        *pos += 12;
    }
    if (m->bits == 32) {
        for (size_t i = 0; i < sizeof masks32 / sizeof masks32[0]; i++) {
            if (memcmp(mask, masks32[i].mask, sizeof mask) == 0) {
                memcpy(m->at, masks32[i].at, sizeof m->at);
                return KS_OK;
            }
        }
    } else if (m->bits == 24 && mask[0] == 0xFF0000 && mask[1] == 0xFF00 && mask[2] == 0xFF) {
        return KS_OK; /* at[] already BGR */
    } else if (m->bits == 16 && mask[0] == 0xF800 && mask[1] == 0x7E0 && mask[2] == 0x1F) {
        m->rgb565 = true;
        return KS_OK;
    } else if (m->bits == 16 && mask[0] == 0x7C00 && mask[1] == 0x3E0 && mask[2] == 0x1F) {
        return KS_OK;
    }
    return ks_fail(KS_ERR_FORMAT,
                   "bmp: unsupported bit fields for %u bits (R %#x G %#x B %#x A %#x; Pillow "
                   "reads only the common layouts)",
                   m->bits, mask[0], mask[1], mask[2], mask[3]);
}

/* The palette of a 1-, 4- or 8-bit image (`entry` bytes each, BGR or BGRX), read from `pos` as
 * far as the file goes. Pillow's rule: when every entry i is the gray (i, i, i) (for two
 * colours: black then white) the palette is dropped and the image is "L" (or "1"), whose raw
 * mode unpacks 8 (or 1) bits per pixel whatever the file's depth. */
static ks_status parse_palette(const uint8_t *b, size_t len, uint64_t colors, unsigned entry,
                               size_t *pos, bmp *m)
{
    if (colors == 0 || colors > 65536) {
        return ks_fail(KS_ERR_FORMAT, "bmp: a palette of %llu colours", (unsigned long long)colors);
    }
    size_t want = (size_t)colors * entry, have = len - *pos < want ? len - *pos : want;
    const uint8_t *pal = b + *pos;
    *pos += have;
    bool gray = true;
    for (uint64_t i = 0; gray && i < colors; i++) {
        unsigned v = colors == 2 ? (i ? 255u : 0u) : (unsigned)(i & 255);
        size_t at = (size_t)i * entry;
        gray = at + 3 <= have && pal[at] == v && pal[at + 1] == v && pal[at + 2] == v;
    }
    if (gray) {
        m->mode = colors <= 2 ? MODE_1 : MODE_L;
        m->unpack_bits = m->mode == MODE_1 ? 1 : 8;
        return KS_OK;
    }
    size_t n = have / entry;
    if (n > 256) { /* Pillow's putpalette: "invalid palette size" */
        return ks_fail(KS_ERR_FORMAT, "bmp: a palette of %zu colours (at most 256)", n);
    }
    for (size_t i = 0; i < n; i++) {
        m->palette[i][0] = pal[i * entry + 2];
        m->palette[i][1] = pal[i * entry + 1];
        m->palette[i][2] = pal[i * entry];
    }
    m->mode = MODE_P;
    m->unpack_bits = m->bits;
    return KS_OK;
}

static ks_status parse(const uint8_t *b, size_t len, bmp *m)
{
    memset(m, 0, sizeof *m);
    m->at[0] = 2, m->at[1] = 1, m->at[2] = 0; /* BGR */
    if (len < 18) {
        return truncated("file header");
    }
    if (b[0] != 'B' || b[1] != 'M') {
        return ks_fail(KS_ERR_FORMAT, "bmp: not a BMP file");
    }
    uint32_t offset = le32(b + 10), hsize = le32(b + 14);
    if (hsize != 12 && hsize != 40 && hsize != 52 && hsize != 56 && hsize != 64 && hsize != 108 &&
        hsize != 124) {
        return ks_fail(KS_ERR_FORMAT, "bmp: unsupported header size %u", hsize);
    }
    if (len - 14 < hsize) {
        return truncated("info header");
    }
    const uint8_t *h = b + 18; /* the info header after its size */
    size_t pos = 14 + hsize;
    uint32_t compression = COMP_RAW, colors = 0;
    unsigned entry;
    ks_status st;
    if (hsize == 12) { /* OS/2 1.x: 16-bit sizes, always bottom-up, BGR palette */
        m->width = le16(h);
        m->height = le16(h + 2);
        m->bits = le16(h + 6);
        entry = 3;
    } else {
        /* Pillow takes the image as top-down when the height's top byte is 0xFF, and its
         * size as 2^32 minus the field. */
        uint32_t height = le32(h + 4);
        m->top_down = h[7] == 0xFF;
        m->width = le32(h);
        m->height = m->top_down ? ((uint64_t)1 << 32) - height : height;
        m->bits = le16(h + 10);
        compression = le32(h + 12);
        colors = le32(h + 28);
        entry = 4;
    }
    if (m->width == 0 || m->height == 0) {
        return ks_fail(KS_ERR_FORMAT, "bmp: empty image (%llux%llu)", (unsigned long long)m->width,
                       (unsigned long long)m->height);
    }
    if (m->bits != 1 && m->bits != 4 && m->bits != 8 && m->bits != 16 && m->bits != 24 &&
        m->bits != 32) {
        return ks_fail(KS_ERR_FORMAT, "bmp: unsupported depth of %u bits per pixel", m->bits);
    }
    uint64_t n_colors = colors ? colors : (m->bits <= 8 ? 1u << m->bits : 0);
    /* A pixel offset right after the header means "no room for the palette", which Pillow
     * does not believe: it skips the palette's size anyway. */
    m->data = offset;
    if (offset == 14 + hsize && m->bits <= 8) {
        m->data += (uint64_t)entry * n_colors;
    }
    m->mode = m->bits <= 8 ? MODE_P : MODE_RGB;
    m->unpack_bits = m->bits;
    if (compression == COMP_BITFIELDS) {
        if (m->mode != MODE_RGB) {
            return ks_fail(KS_ERR_FORMAT, "bmp: bit fields with %u bits per pixel", m->bits);
        }
        if ((st = parse_bitfields(b, len, hsize, &pos, m)) != KS_OK) {
            return st;
        }
    } else if (compression == COMP_RLE8 || compression == COMP_RLE4) {
        if (m->mode != MODE_P) { /* Pillow: no raw mode to put palette indices in RGB */
            return ks_fail(KS_ERR_FORMAT, "bmp: RLE with %u bits per pixel", m->bits);
        }
        m->rle = true;
        m->rle4 = compression == COMP_RLE4;
    } else if (compression != COMP_RAW) {
        return ks_fail(KS_ERR_FORMAT, "bmp: unsupported compression %u%s", compression,
                       compression == 4   ? " (JPEG)"
                       : compression == 5 ? " (PNG)"
                                          : "");
    }
    if (m->mode == MODE_P && (st = parse_palette(b, len, n_colors, entry, &pos, m)) != KS_OK) {
        return st;
    }
    if (m->data == 0) { /* no offset: the pixels follow what was read */
        m->data = pos;
    }
    return KS_OK;
}

ks_status ki_bmp_size(const uint8_t *bytes, size_t len, uint64_t *width, uint64_t *height)
{
    bmp m;
    ks_status st = parse(bytes, len, &m);
    if (st == KS_OK) {
        *width = m.width;
        *height = m.height;
    }
    return st;
}

/* A palette index (or a gray level, or a bit) to RGB, by the mode Pillow holds it in. */
static void put_index(const bmp *m, uint8_t *o, unsigned v)
{
    if (m->mode == MODE_P) {
        memcpy(o, m->palette[v], 3);
    } else {
        o[0] = o[1] = o[2] = (uint8_t)(m->mode == MODE_1 ? (v ? 255 : 0) : v);
    }
}

/* Pillow's BGR;15 and BGR;16 unpackers: v*255/31 and v*255/63, truncated. */
static void put_16(const bmp *m, uint8_t *o, uint32_t p)
{
    if (m->rgb565) {
        o[0] = (uint8_t)((p >> 11 & 31) * 255 / 31);
        o[1] = (uint8_t)((p >> 5 & 63) * 255 / 63);
    } else {
        o[0] = (uint8_t)((p >> 10 & 31) * 255 / 31);
        o[1] = (uint8_t)((p >> 5 & 31) * 255 / 31);
    }
    o[2] = (uint8_t)((p & 31) * 255 / 31);
}

static void unpack_row(const bmp *m, const uint8_t *s, uint8_t *o)
{
    size_t w = (size_t)m->width, step = m->unpack_bits / 8;
    for (size_t x = 0; x < w; x++, o += 3) {
        switch (m->unpack_bits) {
        case 1: put_index(m, o, s[x >> 3] >> (7 - (x & 7)) & 1u); break;
        case 4: put_index(m, o, s[x >> 1] >> (x & 1 ? 0 : 4) & 15u); break;
        case 8: put_index(m, o, s[x]); break;
        case 16: put_16(m, o, le16(s + 2 * x)); break;
        default:
            o[0] = s[x * step + (size_t)m->at[0]];
            o[1] = s[x * step + (size_t)m->at[1]];
            o[2] = s[x * step + (size_t)m->at[2]];
        }
    }
}

/* Uncompressed rows: each `stride` bytes (the file's depth, padded to 4 bytes), of which the
 * raw mode reads the first `row`; the last row needs no padding. */
static ks_status decode_raw(const bmp *m, const uint8_t *b, size_t len, uint8_t *rgb)
{
    uint64_t stride = ((m->width * m->bits + 31) >> 3) & ~(uint64_t)3;
    uint64_t row = (m->width * m->unpack_bits + 7) / 8;
    if (stride < row) { /* Pillow's raw decoder: IMAGING_CODEC_CONFIG */
        return ks_fail(KS_ERR_FORMAT, "bmp: rows of %llu bytes cannot hold %llu pixels",
                       (unsigned long long)stride, (unsigned long long)m->width);
    }
    if (m->data > len || len - m->data < row || (len - m->data - row) / stride < m->height - 1) {
        return truncated("pixel data");
    }
    size_t out_row = (size_t)m->width * 3;
    for (uint64_t r = 0; r < m->height; r++) {
        uint64_t y = m->top_down ? r : m->height - 1 - r;
        unpack_row(m, b + m->data + r * stride, rgb + (size_t)y * out_row);
    }
    return KS_OK;
}

/* Pillow's BmpRleDecoder, step for step, into one index per pixel (rows in file order):
 *   - a run (count, value) is cut at the row's end; RLE4 alternates the value's two nibbles;
 *   - 0,0 (end of line) pads the row with index 0, 0,1 ends the image, 0,2,dx,dy moves by
 *     dx + dy*width pixels, padding with index 0;
 *   - 0,n copies n literal indices, which may run past the row's end (a later run in that row
 *     then adds nothing); it is padded to an even position in the file (not in the data);
 *   - the data must fill the image: Pillow fails "not enough image data" otherwise. */
static ks_status rle_indices(const bmp *m, const uint8_t *b, size_t len, uint8_t *idx)
{
    const uint64_t w = m->width;
    const size_t dest = (size_t)(w * m->height);
    size_t n = 0, p = m->data > len ? len : (size_t)m->data;
    uint64_t x = 0;
    while (n < dest) {
        if (len - p < 2) {
            break;
        }
        unsigned count = b[p], value = b[p + 1];
        p += 2;
        if (count) {
            uint64_t run = x + count > w ? (w > x ? w - x : 0) : count;
            for (uint64_t i = 0; i < run && n < dest; i++) {
                idx[n++] = (uint8_t)(!m->rle4 ? value : i % 2 ? value & 15 : value >> 4);
            }
            x += run;
        } else if (value == 0) { /* end of line */
            while (n % w) {
                idx[n++] = 0;
            }
            x = 0;
        } else if (value == 1) { /* end of bitmap */
            break;
        } else if (value == 2) { /* delta */
            if (len - p < 2) {
                break;
            }
            uint64_t skip = b[p] + (uint64_t)b[p + 1] * w;
            p += 2;
            skip = skip < dest - n ? skip : dest - n;
            memset(idx + n, 0, (size_t)skip);
            n += (size_t)skip;
            x = n % w;
        } else { /* absolute run of `value` indices */
            size_t want = dest - n < value ? dest - n : value;
            size_t bytes = m->rle4 ? (want + 1) / 2 : want;
            size_t got = len - p < bytes ? len - p : bytes;
            for (size_t i = 0; i < got; i++) {
                if (!m->rle4) {
                    idx[n++] = b[p + i];
                    continue;
                }
                idx[n++] = b[p + i] >> 4;
                if (i * 2 + 1 < want) {
                    idx[n++] = b[p + i] & 15;
                }
            }
            p += got;
            if (got < bytes || n == dest) {
                break;
            }
            x += value;
            if (p % 2) { /* may step past the end: the next read then finds nothing */
                p = p < len ? p + 1 : len;
            }
        }
    }
    if (n < dest) {
        return ks_fail(KS_ERR_FORMAT, "bmp: the RLE data ends after %zu of %zu pixels", n, dest);
    }
    return KS_OK;
}

static ks_status decode_rle(const bmp *m, const uint8_t *b, size_t len, uint8_t *rgb)
{
    size_t w = (size_t)m->width, h = (size_t)m->height;
    uint8_t *idx = malloc(w * h);
    if (!idx) {
        return ks_fail(KS_ERR_NOMEM, "bmp: out of memory for %zux%zu RLE pixels", w, h);
    }
    ks_status st = rle_indices(m, b, len, idx);
    for (size_t r = 0; st == KS_OK && r < h; r++) {
        size_t y = m->top_down ? r : h - 1 - r;
        for (size_t x = 0; x < w; x++) {
            put_index(m, rgb + (y * w + x) * 3, idx[r * w + x]);
        }
    }
    free(idx);
    return st;
}

ks_status ki_bmp_decode(const uint8_t *bytes, size_t len, uint8_t *rgb)
{
    bmp m;
    ks_status st = parse(bytes, len, &m);
    if (st != KS_OK) {
        return st;
    }
    return m.rle ? decode_rle(&m, bytes, len, rgb) : decode_raw(&m, bytes, len, rgb);
}
