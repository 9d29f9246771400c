/* ks_base64: see ks_base64.h. */
#include "ks_base64.h"

#include <stdlib.h>
#include <string.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *ks_base64_encode(const void *data, size_t len)
{
    const uint8_t *in = data;
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        *o++ = alphabet[v >> 18 & 63];
        *o++ = alphabet[v >> 12 & 63];
        *o++ = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
        *o++ = i + 2 < len ? alphabet[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int sextet(char c)
{
    const char *at = c ? strchr(alphabet, c) : NULL;
    return at ? (int)(at - alphabet) : -1;
}

uint8_t *ks_base64_decode(const char *text, size_t *len)
{
    size_t n = strlen(text);
    if (n % 4)
        return NULL;
    uint8_t *out = malloc(n / 4 * 3 + 1);
    size_t k = 0;
    for (size_t i = 0; out && i < n; i += 4) {
        int pad = (text[i + 2] == '=') + (text[i + 3] == '=');
        int a = sextet(text[i]), b = sextet(text[i + 1]);
        int c = text[i + 2] == '=' ? 0 : sextet(text[i + 2]);
        int d = text[i + 3] == '=' ? 0 : sextet(text[i + 3]);
        if (a < 0 || b < 0 || c < 0 || d < 0 || (pad && i + 4 != n) ||
            (text[i + 2] == '=' && text[i + 3] != '=')) {
            free(out);
            return NULL;
        }
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[k++] = (uint8_t)(v >> 16);
        if (pad < 2)
            out[k++] = (uint8_t)(v >> 8);
        if (pad < 1)
            out[k++] = (uint8_t)v;
    }
    if (!out)
        return NULL;
    out[k] = '\0';
    *len = k;
    return out;
}
