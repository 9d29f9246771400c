/* ks_buf: a growable byte string, always NUL-terminated after its `len` bytes.
 * A value struct (ks_buf_init/ks_buf_fini); the struct owns `data`. */
#ifndef KS_BUF_H
#define KS_BUF_H

#include <stddef.h>

#include "ks_error.h"

typedef struct ks_buf {
    char *data; /* owned; NULL until the first append */
    size_t len;
    size_t cap;
} ks_buf;

void ks_buf_init(ks_buf *b);
void ks_buf_fini(ks_buf *b);
void ks_buf_clear(ks_buf *b); /* len = 0, keeps the memory */

ks_status ks_buf_append(ks_buf *b, const void *bytes, size_t n);
ks_status ks_buf_append_str(ks_buf *b, const char *s);
ks_status ks_buf_printf(ks_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Hands the bytes to the caller (who frees them) and leaves b empty. Never NULL on success. */
char *ks_buf_detach(ks_buf *b, size_t *len);

#endif
