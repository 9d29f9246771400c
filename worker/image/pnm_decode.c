/* pnm_decode: see pnm_decode.h. The header follows PpmImageFile._read_magic/_read_token, binary
 * data the raw decoder and PpmDecoder, plain data PpmPlainDecoder (block by block). */
#include "pnm_decode.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK ((size_t)1 << 20) /* Pillow's ImageFile.SAFEBLOCK, the plain decoder's read size */
#define MAX_TOKEN 10            /* Pillow refuses longer numbers, in the header and the data */

typedef struct pnm {
    char kind;      /* '1' .. '6' */
    unsigned bands; /* 1 or 3 */
    uint64_t width, height;
    uint64_t maxval; /* 1 for PBM */
    size_t data;     /* offset of the first byte after the header */
} pnm;

static bool is_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Up to 10 bytes of the file for a message: printable ASCII as is, anything else as '?', so
 * that messages stay valid UTF-8 (they end up in JSON). */
static const char *shown(const uint8_t *s, size_t n, char out[MAX_TOKEN + 1])
{
    n = n < MAX_TOKEN ? n : MAX_TOKEN;
    for (size_t i = 0; i < n; i++) {
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?';
    }
    out[n] = '\0';
    return out;
}

/* Python's int() on a token of at most MAX_TOKEN bytes: an optional sign, then digits with
 * single underscores between them. Negative values fail here: Pillow refuses them all. */
static bool py_int(const uint8_t *s, size_t n, uint64_t *value)
{
    uint64_t v = 0;
    bool minus = false, digit = false;
    size_t i = 0;
    if (n && (s[0] == '+' || s[0] == '-')) {
        minus = s[0] == '-';
        i = 1;
    }
    for (; i < n; i++) {
        if (s[i] == '_' && digit && i + 1 < n && s[i + 1] != '_') {
            continue;
        }
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
        digit = true;
    }
    *value = v;
    return digit && !(minus && v);
}

/* One header token (PpmImageFile._read_token): whitespace before it is skipped, a '#' comment
 * is skipped to its CR or LF even inside a token, and the one whitespace byte after it is
 * consumed. */
static ks_status header_token(const uint8_t *b, size_t len, size_t *pos, const char *what,
                              uint64_t *value)
{
    uint8_t tok[MAX_TOKEN + 1];
    size_t n = 0;
    while (n <= MAX_TOKEN && *pos < len) {
        uint8_t c = b[(*pos)++];
        if (is_space(c)) {
            if (n) {
                break;
            }
        } else if (c == '#') {
            while (*pos < len && b[*pos] != '\r' && b[*pos] != '\n') {
                (*pos)++;
            }
            *pos += *pos < len;
        } else {
            tok[n++] = c;
        }
    }
    if (n == 0) {
        return ks_fail(KS_ERR_FORMAT, "pnm: the header ends before the %s", what);
    }
    if (n > MAX_TOKEN || !py_int(tok, n, value)) {
        return ks_fail(KS_ERR_FORMAT, "pnm: the %s is not a number of up to 10 digits", what);
    }
    return KS_OK;
}

static ks_status parse(const uint8_t *b, size_t len, pnm *m)
{
    uint8_t magic[7];
    char text[MAX_TOKEN + 1];
    size_t n = 0, pos = 0;
    ks_status st;
    memset(m, 0, sizeof *m);
    while (n < 6 && pos < len) { /* up to 6 bytes, up to and with the first whitespace */
        uint8_t c = b[pos++];
        if (is_space(c)) {
            break;
        }
        magic[n++] = c;
    }
    if (n == 2 && magic[0] == 'P' && magic[1] == 'f') {
        return ks_fail(KS_ERR_UNSUPPORTED, "pnm: PFM (float samples) is not supported");
    }
    if (n != 2 || magic[0] != 'P' || magic[1] < '1' || magic[1] > '6') {
        return ks_fail(KS_ERR_FORMAT,
                       "pnm: not a PBM, PGM or PPM file (magic \"%s\"; P7, PFM "
                       "and PIL's own test formats are not read)",
                       shown(magic, n, text));
    }
    m->kind = magic[1];
    m->bands = m->kind == '3' || m->kind == '6' ? 3 : 1;
    m->maxval = 1;
    if ((st = header_token(b, len, &pos, "width", &m->width)) != KS_OK ||
        (st = header_token(b, len, &pos, "height", &m->height)) != KS_OK) {
        return st;
    }
    if (m->kind != '1' && m->kind != '4') {
        if ((st = header_token(b, len, &pos, "maxval", &m->maxval)) != KS_OK) {
            return st;
        }
        if (m->maxval == 0 || m->maxval > 65535) {
            return ks_fail(KS_ERR_FORMAT, "pnm: maxval %llu is not in 1..65535",
                           (unsigned long long)m->maxval);
        }
    }
    if (m->width == 0 || m->height == 0) {
        return ks_fail(KS_ERR_FORMAT, "pnm: empty image (%llux%llu)", (unsigned long long)m->width,
                       (unsigned long long)m->height);
    }
    m->data = pos;
    return KS_OK;
}

ks_status ki_pnm_size(const uint8_t *bytes, size_t len, uint64_t *width, uint64_t *height)
{
    pnm m;
    ks_status st = parse(bytes, len, &m);
    if (st == KS_OK) {
        *width = m.width;
        *height = m.height;
    }
    return st;
}

/* A PGM with maxval over 255 is Pillow's "I" image, scaled to 0..65535 before RGB clips it. */
static double out_max(const pnm *m) { return m->bands == 1 && m->maxval > 255 ? 65535.0 : 255.0; }

/* Python's min(out_max, round(v / maxval * out_max)), then convert("RGB")'s clip to 255. The
 * same double operations, and nearbyint rounds half to even as round() does. */
static uint8_t scale(uint64_t v, uint64_t maxval, double top)
{
    double r = nearbyint((double)v / (double)maxval * top);
    r = r < top ? r : top;
    return r < 255.0 ? (uint8_t)r : 255;
}

static void put_sample(const pnm *m, uint8_t *rgb, size_t i, uint8_t v)
{
    if (m->bands == 3) {
        rgb[i] = v;
    } else {
        rgb[i * 3] = rgb[i * 3 + 1] = rgb[i * 3 + 2] = v;
    }
}

/* P4, P5, P6. Pillow reads maxval 255 (and a PGM's 65535) with its raw decoder and any other
 * maxval with PpmDecoder (1 byte per sample below 256, else 2, big-endian), both needing every
 * sample. */
static ks_status decode_binary(const pnm *m, const uint8_t *b, size_t len, uint8_t *rgb)
{
    size_t w = (size_t)m->width, h = (size_t)m->height;
    uint64_t row = m->kind == '4' ? (m->width + 7) / 8
                                  : m->width * m->bands * (m->maxval < 256 ? 1u : 2u);
    if ((len - m->data) / row < m->height) {
        return ks_fail(KS_ERR_FORMAT,
                       "pnm: truncated pixel data (%zu bytes for %llu rows of "
                       "%llu)",
                       len - m->data, (unsigned long long)m->height, (unsigned long long)row);
    }
    const uint8_t *p = b + m->data;
    if (m->kind == '4') { /* Pillow's "1;I": a set bit is black */
        for (size_t y = 0; y < h; y++, p += row) {
            for (size_t x = 0; x < w; x++) {
                put_sample(m, rgb, y * w + x, p[x >> 3] >> (7 - (x & 7)) & 1 ? 0 : 255);
            }
        }
        return KS_OK;
    }
    size_t samples = w * h * m->bands;
    if (m->maxval == 255) {
        for (size_t i = 0; i < samples; i++) {
            put_sample(m, rgb, i, p[i]);
        }
        return KS_OK;
    }
    /* Any 8- or 16-bit value (above maxval too: PpmDecoder clips) through one table. */
    size_t n = m->maxval < 256 ? 256 : 65536;
    uint8_t *lut = malloc(n);
    if (!lut) {
        return ks_fail(KS_ERR_NOMEM, "pnm: out of memory");
    }
    double top = out_max(m);
    for (size_t v = 0; v < n; v++) {
        /* A PGM with maxval 65535 is Pillow's raw "I;16B": the value itself, clipped. */
        lut[v] = m->maxval == 65535 && m->bands == 1 ? (v < 255 ? (uint8_t)v : 255)
                                                     : scale(v, m->maxval, top);
    }
    for (size_t i = 0; i < samples; i++) {
        put_sample(m, rgb, i, lut[n == 256 ? p[i] : (size_t)p[2 * i] << 8 | p[2 * i + 1]]);
    }
    free(lut);
    return KS_OK;
}

/* PpmPlainDecoder's reading: 1 MiB blocks with the comments cut out of each. */
typedef struct plain {
    const uint8_t *b;
    size_t len, pos; /* the file and the next byte to read */
    bool in_comment; /* a comment runs past the block read last (_comment_spans) */
} plain;

static size_t next_block(plain *r, const uint8_t **blk)
{
    size_t n = r->len - r->pos < BLOCK ? r->len - r->pos : BLOCK;
    *blk = r->b + r->pos;
    r->pos += n;
    return n;
}

/* _find_comment_end: the lower of the first LF and CR from `start`, or -1. Pillow's formula,
 * min(a, b) if a * b > 0 else max(a, b), is wrong when one of them is at 0, which can happen
 * only at the start of a block that continues a comment; kept for that case. */
static long comment_end(const uint8_t *s, size_t n, size_t start)
{
    const uint8_t *lf = memchr(s + start, '\n', n - start),
                  *cr = memchr(s + start, '\r', n - start);
    long a = lf ? (long)(lf - s) : -1, c = cr ? (long)(cr - s) : -1;
    if ((a > 0 && c > 0) || (a < 0 && c < 0)) {
        return a < c ? a : c;
    }
    return a > c ? a : c;
}

/* _ignore_comments: the block without comments into out (at most n bytes). A comment still
 * open at the block's end is skipped at the start of the next; one open at the start of this
 * block may swallow whole blocks. */
static size_t uncomment(plain *r, const uint8_t *blk, size_t n, uint8_t *out)
{
    size_t o = 0;
    if (r->in_comment) {
        while (n) {
            long e = comment_end(blk, n, 0);
            if (e >= 0) {
                blk += e + 1;
                n -= (size_t)e + 1;
                break;
            }
            n = next_block(r, &blk);
        }
    }
    r->in_comment = false;
    while (n) {
        const uint8_t *hash = memchr(blk, '#', n);
        size_t keep = hash ? (size_t)(hash - blk) : n;
        memcpy(out + o, blk, keep);
        o += keep;
        if (!hash) {
            break;
        }
        long e = comment_end(blk, n, keep);
        if (e < 0) {
            r->in_comment = true;
            break;
        }
        blk += e + 1;
        n -= (size_t)e + 1;
    }
    return o;
}

/* P1 (_decode_bitonal): every non-space byte of a block must be 0 or 1, even past the pixels
 * needed; "0" is white. */
static ks_status decode_bitonal(const pnm *m, plain *r, uint8_t *buf, uint8_t *rgb)
{
    size_t total = (size_t)(m->width * m->height), count = 0;
    while (count != total) {
        const uint8_t *blk;
        size_t n = next_block(r, &blk);
        if (n == 0) {
            break;
        }
        n = uncomment(r, blk, n, buf);
        for (size_t i = 0; i < n; i++) {
            if (is_space(buf[i])) {
                continue;
            }
            if (buf[i] != '0' && buf[i] != '1') {
                return ks_fail(KS_ERR_FORMAT, "pnm: invalid byte %#x in plain PBM data", buf[i]);
            }
            if (count < total) {
                put_sample(m, rgb, count++, buf[i] == '0' ? 255 : 0);
            }
        }
    }
    if (count != total) {
        return ks_fail(KS_ERR_FORMAT, "pnm: the data ends after %zu of %zu pixels", count, total);
    }
    return KS_OK;
}

/* P2, P3 (_decode_blocks): whitespace-separated numbers; a number cut by the block's end is
 * carried into the next block (and may not be longer than 10 bytes even then). */
static ks_status decode_numbers(const pnm *m, plain *r, uint8_t *buf, uint8_t *rgb)
{
    size_t total = (size_t)(m->width * m->height) * m->bands, count = 0, carry = 0;
    double top = out_max(m);
    while (count != total) {
        const uint8_t *blk;
        size_t n = next_block(r, &blk);
        if (n == 0) {
            if (carry == 0) {
                break;
            }
            blk = (const uint8_t *)" "; /* flushes the carried number */
            n = 1;
        }
        n = carry + uncomment(r, blk, n, buf + carry);
        size_t end = n;
        carry = 0;
        if (n && !is_space(buf[n - 1])) {
            while (end && !is_space(buf[end - 1])) {
                end--;
            }
            carry = n - end;
            if (carry > MAX_TOKEN) {
                return ks_fail(KS_ERR_FORMAT, "pnm: a number of more than 10 bytes");
            }
        }
        for (size_t i = 0; i < end && count != total;) {
            size_t t = i;
            while (t < end && !is_space(buf[t])) {
                t++;
            }
            if (t > i) {
                uint64_t v;
                if (t - i > MAX_TOKEN || !py_int(buf + i, t - i, &v) || v > m->maxval) {
                    char text[MAX_TOKEN + 1];
                    return ks_fail(KS_ERR_FORMAT, "pnm: invalid sample \"%s\" (maxval %llu)",
                                   shown(buf + i, t - i, text), (unsigned long long)m->maxval);
                }
                put_sample(m, rgb, count++, scale(v, m->maxval, top));
            }
            i = t + 1;
        }
        memmove(buf, buf + end, carry);
    }
    if (count != total) {
        return ks_fail(KS_ERR_FORMAT, "pnm: the data ends after %zu of %zu samples", count, total);
    }
    return KS_OK;
}

ks_status ki_pnm_decode(const uint8_t *bytes, size_t len, uint8_t *rgb)
{
    pnm m;
    ks_status st = parse(bytes, len, &m);
    if (st != KS_OK) {
        return st;
    }
    if (m.kind >= '4') {
        return decode_binary(&m, bytes, len, rgb);
    }
    plain r = {bytes, len, m.data, false};
    size_t rest = len - m.data;
    uint8_t *buf = malloc((rest < BLOCK ? rest : BLOCK) + MAX_TOKEN + 2);
    if (!buf) {
        return ks_fail(KS_ERR_NOMEM, "pnm: out of memory");
    }
    st = m.kind == '1' ? decode_bitonal(&m, &r, buf, rgb) : decode_numbers(&m, &r, buf, rgb);
    free(buf);
    return st;
}
