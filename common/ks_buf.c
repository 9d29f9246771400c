/* ks_buf: see ks_buf.h. */
#include "ks_buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ks_buf_init(ks_buf *b) { memset(b, 0, sizeof *b); }

void ks_buf_fini(ks_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

void ks_buf_clear(ks_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static ks_status reserve(ks_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return ks_fail(KS_ERR_NOMEM, "string too large");
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return KS_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown)
        return ks_fail(KS_ERR_NOMEM, "out of memory growing a %zu-byte string", cap);
    b->data = grown;
    b->cap = cap;
    return KS_OK;
}

ks_status ks_buf_append(ks_buf *b, const void *bytes, size_t n)
{
    ks_status st = reserve(b, n);
    if (st)
        return st;
    if (n)
        memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = '\0';
    return KS_OK;
}

ks_status ks_buf_append_str(ks_buf *b, const char *s) { return ks_buf_append(b, s, strlen(s)); }

ks_status ks_buf_printf(ks_buf *b, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(NULL, 0, fmt, args);
    va_end(args);
    if (n < 0)
        return ks_fail(KS_ERR_INVALID, "bad format string");
    ks_status st = reserve(b, (size_t)n);
    if (st)
        return st;
    va_start(args, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, args);
    va_end(args);
    b->len += (size_t)n;
    return KS_OK;
}

char *ks_buf_detach(ks_buf *b, size_t *len)
{
    if (reserve(b, 0) != KS_OK)
        return NULL;
    char *data = b->data;
    if (len)
        *len = b->len;
    memset(b, 0, sizeof *b);
    return data;
}
