/* test_safetensors_min: a test-only reader for the small safetensors fixtures of
 * tests/golden/pixels/ (written by tests/golden/make_pixel_fixtures.py). Not the engine's
 * loader (worker/engine/safetensors.*): just enough to look up one tensor by name, checked for
 * dtype, shape and bounds, so that test_image stays independent of the engine. Header-only,
 * static functions; include it from one test file. */
#ifndef TEST_SAFETENSORS_MIN_H
#define TEST_SAFETENSORS_MIN_H

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ks_file.h"

typedef struct st_min {
    char *data; /* the whole file */
    size_t len;
    size_t data_start; /* 8 + header length */
    json_t *header;
} st_min;

static void st_min_close(st_min *f)
{
    free(f->data);
    json_decref(f->header);
    memset(f, 0, sizeof *f);
}

/* Opens `path`; 0 on success, -1 with a message in ks_error_message() otherwise. */
static int st_min_open(st_min *f, const char *path)
{
    uint64_t hlen = 0;
    json_error_t err;
    memset(f, 0, sizeof *f);
    if (ks_file_read(path, (size_t)64 << 20, &f->data, &f->len) != KS_OK) {
        return -1;
    }
    if (f->len < 8) {
        goto bad;
    }
    for (int i = 7; i >= 0; i--) {
        hlen = hlen << 8 | (uint8_t)f->data[i];
    }
    if (hlen > f->len - 8) {
        goto bad;
    }
    f->header = json_loadb(f->data + 8, (size_t)hlen, 0, &err);
    if (!f->header || !json_is_object(f->header)) {
        goto bad;
    }
    f->data_start = 8 + (size_t)hlen;
    return 0;
bad:
    ks_fail(KS_ERR_FORMAT, "%s: not a safetensors file", path);
    st_min_close(f);
    return -1;
}

/* The tensor `name` if it exists with this dtype ("F32", "U8") and `numel` elements; NULL
 * otherwise. Borrowed from f. The data may be unaligned: copy before reading floats. */
static const void *st_min_tensor(const st_min *f, const char *name, const char *dtype, size_t numel)
{
    json_t *t = json_object_get(f->header, name), *shape, *offs, *v;
    size_t i, n = 1, esize = strcmp(dtype, "F32") == 0 ? 4 : 1;
    const char *dt = json_string_value(json_object_get(t, "dtype"));
    if (!t || !dt || strcmp(dt, dtype) != 0) {
        return NULL;
    }
    shape = json_object_get(t, "shape");
    json_array_foreach(shape, i, v) {
        n *= (size_t)json_integer_value(v);
    }
    offs = json_object_get(t, "data_offsets");
    size_t b = (size_t)json_integer_value(json_array_get(offs, 0));
    size_t e = (size_t)json_integer_value(json_array_get(offs, 1));
    if (n != numel || e < b || e - b != n * esize || e > f->len - f->data_start) {
        return NULL;
    }
    return f->data + f->data_start + b;
}

/* A __metadata__ string, or NULL. Borrowed from f. */
static const char *st_min_meta(const st_min *f, const char *key)
{
    return json_string_value(json_object_get(json_object_get(f->header, "__metadata__"), key));
}

#endif
