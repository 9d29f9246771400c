/* ke_st: safetensors reading (mmap + full validation) and writing; see safetensors.h. */
#define _DEFAULT_SOURCE /* madvise's MADV_PAGEOUT and MADV_COLD */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ks_buf.h"

/* The reference implementation refuses headers above 100 MB; so do we. */
#define KE_ST_MAX_HEADER (100u * 1024u * 1024u)

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [KE_ST_BOOL] = {"BOOL", 1},       [KE_ST_U8] = {"U8", 1},           [KE_ST_I8] = {"I8", 1},
    [KE_ST_F8_E4M3] = {"F8_E4M3", 1}, [KE_ST_F8_E5M2] = {"F8_E5M2", 1}, [KE_ST_I16] = {"I16", 2},
    [KE_ST_U16] = {"U16", 2},         [KE_ST_F16] = {"F16", 2},         [KE_ST_BF16] = {"BF16", 2},
    [KE_ST_I32] = {"I32", 4},         [KE_ST_U32] = {"U32", 4},         [KE_ST_F32] = {"F32", 4},
    [KE_ST_I64] = {"I64", 8},         [KE_ST_U64] = {"U64", 8},         [KE_ST_F64] = {"F64", 8},
};
#define N_DTYPES (sizeof dtype_info / sizeof dtype_info[0])

const char *ke_st_dtype_name(ke_st_dtype dtype)
{
    return (size_t)dtype < N_DTYPES ? dtype_info[dtype].name : "?";
}

size_t ke_st_dtype_size(ke_st_dtype dtype)
{
    return (size_t)dtype < N_DTYPES ? dtype_info[dtype].size : 0;
}

static int dtype_parse(const char *s, ke_st_dtype *out)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (ke_st_dtype)i;
            return 1;
        }
    return 0;
}

struct ke_st_file {
    char *path;
    unsigned char *map; /* whole file, PROT_READ (pages patched via ke_st_writable excepted) */
    size_t map_size;
    const unsigned char *data; /* start of the data block */
    size_t data_size;
    ke_st_tensor *tensors; /* sorted by name */
    size_t count;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(((const ke_st_tensor *)a)->name, ((const ke_st_tensor *)b)->name);
}

typedef struct span {
    uint64_t begin, end;
    size_t index;
} span;

static int by_begin(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* A JSON integer in [0, INT64_MAX]. */
static int json_nonneg(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* Fills t (except name/data) from one header entry; the message names file and tensor. */
static ks_status parse_entry(const ke_st_file *f, const char *name, const json_t *entry,
                             ke_st_tensor *t, uint64_t *begin, uint64_t *end)
{
    const char *p = f->path;
    if (!json_is_object(entry))
        return ks_fail(KS_ERR_FORMAT, "%s: tensor '%s': header entry is not an object", p, name);
    const json_t *dt = json_object_get(entry, "dtype");
    const json_t *shape = json_object_get(entry, "shape");
    const json_t *offs = json_object_get(entry, "data_offsets");
    if (!json_is_string(dt))
        return ks_fail(KS_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", p, name);
    if (!dtype_parse(json_string_value(dt), &t->dtype))
        return ks_fail(KS_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%s\"", p, name,
                       json_string_value(dt));
    if (!json_is_array(shape))
        return ks_fail(KS_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", p, name);
    if (json_array_size(shape) > KE_ST_MAX_DIMS)
        return ks_fail(KS_ERR_FORMAT, "%s: tensor '%s': %zu dimensions, more than %d supported", p,
                       name, json_array_size(shape), KE_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t dim;
        if (!json_nonneg(json_array_get(shape, (size_t)d), &dim))
            return ks_fail(KS_ERR_FORMAT,
                           "%s: tensor '%s': shape[%d] is not a non-negative integer", p, name, d);
        t->shape[d] = (int64_t)dim;
        if (dim && numel > UINT64_MAX / dim)
            overflow = 1;
        else
            numel *= dim;
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_nonneg(json_array_get(offs, 0), begin) || !json_nonneg(json_array_get(offs, 1), end))
        return ks_fail(KS_ERR_FORMAT,
                       "%s: tensor '%s': \"data_offsets\" is not two non-negative integers", p,
                       name);
    size_t esize = ke_st_dtype_size(t->dtype);
    if (overflow || numel > SIZE_MAX / esize)
        return ks_fail(KS_ERR_FORMAT, "%s: tensor '%s': shape too large", p, name);
    if (*begin > *end || *end > f->data_size)
        return ks_fail(KS_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] outside the data block of %zu "
                       "bytes (truncated file?)",
                       p, name, (unsigned long long)*begin, (unsigned long long)*end, f->data_size);
    if (*end - *begin != numel * esize)
        return ks_fail(KS_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets span %llu bytes, but shape and dtype %s need "
                       "%llu",
                       p, name, (unsigned long long)(*end - *begin), ke_st_dtype_name(t->dtype),
                       (unsigned long long)(numel * esize));
    t->numel = (size_t)numel;
    t->nbytes = (size_t)(numel * esize);
    t->data = f->data + *begin;
    return KS_OK;
}

static ks_status parse_header(ke_st_file *f, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    ks_status st = KS_OK;
    span *spans = NULL;
    if (!root)
        return ks_fail(KS_ERR_FORMAT, "%s: header is not valid JSON (%s at byte %d)", f->path,
                       jerr.text, jerr.position);
    if (!json_is_object(root)) {
        st = ks_fail(KS_ERR_FORMAT, "%s: header is not a JSON object", f->path);
        goto done;
    }
    const json_t *meta = json_object_get(root, "__metadata__");
    if (meta) {
        const char *k;
        const json_t *v;
        if (!json_is_object(meta)) {
            st = ks_fail(KS_ERR_FORMAT, "%s: \"__metadata__\" is not an object", f->path);
            goto done;
        }
        json_object_foreach((json_t *)meta, k, v) {
            if (!json_is_string(v)) {
                st = ks_fail(KS_ERR_FORMAT, "%s: \"__metadata__\" value of '%s' is not a string",
                             f->path, k);
                goto done;
            }
        }
    }
    size_t n = json_object_size(root) - (meta ? 1 : 0);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    spans = calloc(n ? n : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        st = ks_fail(KS_ERR_NOMEM, "%s: out of memory for %zu tensors", f->path, n);
        goto done;
    }
    const char *key;
    json_t *entry;
    json_object_foreach(root, key, entry) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        ke_st_tensor *t = &f->tensors[f->count];
        span *s = &spans[f->count];
        st = parse_entry(f, key, entry, t, &s->begin, &s->end);
        if (st != KS_OK)
            goto done;
        t->name = strdup(key);
        if (!t->name) {
            st = ks_fail(KS_ERR_NOMEM, "%s: out of memory", f->path);
            goto done;
        }
        s->index = f->count++;
    }
    /* Overlap check (the format forbids it; a crafted file could alias tensors). */
    qsort(spans, f->count, sizeof *spans, by_begin);
    size_t last = SIZE_MAX; /* the non-empty span reaching furthest so far */
    for (size_t i = 0; i < f->count; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (last != SIZE_MAX && spans[i].begin < spans[last].end) {
            st = ks_fail(KS_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data block",
                         f->path, f->tensors[spans[last].index].name,
                         f->tensors[spans[i].index].name);
            goto done;
        }
        if (last == SIZE_MAX || spans[i].end > spans[last].end)
            last = i;
    }
    qsort(f->tensors, f->count, sizeof *f->tensors, by_name);
done:
    free(spans);
    json_decref(root);
    return st;
}

ks_status ke_st_open(const char *path, ke_st_file **out)
{
    *out = NULL;
    ks_status st = KS_OK;
    ke_st_file *f = calloc(1, sizeof *f);
    int fd = -1;
    if (!f || !(f->path = strdup(path))) {
        st = ks_fail(KS_ERR_NOMEM, "out of memory opening %s", path);
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = ks_fail(KS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        st = ks_fail(KS_ERR_IO, "%s is not a regular file", path);
        goto fail;
    }
    if (info.st_size < 8) {
        st = ks_fail(KS_ERR_FORMAT,
                     "%s: truncated: %lld bytes, shorter than the 8-byte header length", path,
                     (long long)info.st_size);
        goto fail;
    }
    if ((uint64_t)info.st_size > SIZE_MAX) {
        st = ks_fail(KS_ERR_LIMIT, "%s: too large to map", path);
        goto fail;
    }
    f->map_size = (size_t)info.st_size;
    void *map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        st = ks_fail(KS_ERR_IO, "cannot map %s: %s", path, strerror(errno));
        goto fail;
    }
    f->map = map;
    close(fd);
    fd = -1;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->map[i];
    if (hlen > KE_ST_MAX_HEADER) {
        st = ks_fail(KS_ERR_FORMAT,
                     "%s: header length %llu is larger than %u bytes (corrupt file?)", path,
                     (unsigned long long)hlen, KE_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > f->map_size - 8) {
        st = ks_fail(KS_ERR_FORMAT,
                     "%s: truncated: the header claims %llu bytes but the file has %zu after the "
                     "length",
                     path, (unsigned long long)hlen, f->map_size - 8);
        goto fail;
    }
    if (hlen < 2 || f->map[8] != '{') {
        st = ks_fail(KS_ERR_FORMAT,
                     "%s: the header does not start with '{' (not a safetensors file?)", path);
        goto fail;
    }
    f->data = f->map + 8 + hlen;
    f->data_size = f->map_size - 8 - (size_t)hlen;
    st = parse_header(f, (const char *)f->map + 8, (size_t)hlen);
    if (st != KS_OK)
        goto fail;
    *out = f;
    return KS_OK;
fail:
    if (fd >= 0)
        close(fd);
    ke_st_close(&f);
    return st;
}

void ke_st_close(ke_st_file **pf)
{
    if (!pf || !*pf)
        return;
    ke_st_file *f = *pf;
    for (size_t i = 0; i < f->count; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    if (f->map)
        munmap(f->map, f->map_size);
    free(f->path);
    free(f);
    *pf = NULL;
}

void ke_st_page_out(const ke_st_file *f)
{
    if (!f || !f->map)
        return;
        /* PAGEOUT reclaims now; COLD (older kernels) only moves the pages to the front of the
     * reclaim queue. Neither discards data, unlike DONTNEED on a private mapping. */
#if defined(MADV_PAGEOUT)
    if (madvise(f->map, f->map_size, MADV_PAGEOUT) == 0)
        return;
#endif
#if defined(MADV_COLD)
    (void)madvise(f->map, f->map_size, MADV_COLD);
#endif
}

const char *ke_st_path(const ke_st_file *f) { return f->path; }

size_t ke_st_count(const ke_st_file *f) { return f->count; }

const ke_st_tensor *ke_st_get(const ke_st_file *f, size_t i)
{
    return i < f->count ? &f->tensors[i] : NULL;
}

const ke_st_tensor *ke_st_find(const ke_st_file *f, const char *name)
{
    ke_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->count, sizeof key, by_name);
}

void *ke_st_writable(ke_st_file *f, const ke_st_tensor *t, size_t offset, size_t n)
{
    if (offset > t->nbytes || n > t->nbytes - offset) {
        ks_fail(KS_ERR_INVALID, "%s: tensor '%s': writable range out of bounds", f->path, t->name);
        return NULL;
    }
    unsigned char *p = (unsigned char *)t->data + offset;
    if (n == 0)
        return p;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t ps = page > 0 ? (uintptr_t)page : 4096;
    uintptr_t lo = (uintptr_t)p & ~(ps - 1);
    uintptr_t hi = ((uintptr_t)p + n + ps - 1) & ~(ps - 1);
    /* MAP_PRIVATE: the touched pages become private copies; the file is never written. */
    if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE) != 0) {
        ks_fail(KS_ERR_IO, "%s: tensor '%s': cannot make the mapping writable: %s", f->path,
                t->name, strerror(errno));
        return NULL;
    }
    return p;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t at = 0;
    at += (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && at < cap; d++)
        at += (size_t)snprintf(buf + at, cap - at, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (at < cap)
        snprintf(buf + at, cap - at, "]");
}

ks_status ke_st_read_f32(const char *path, const char *name, int ndim, const int64_t *shape,
                         float **out)
{
    *out = NULL;
    ke_st_file *f = NULL;
    ks_status st = ke_st_open(path, &f);
    if (st != KS_OK)
        return st;
    const ke_st_tensor *t = ke_st_find(f, name);
    char want[160], got[160];
    if (!t) {
        st = ks_fail(KS_ERR_INVALID, "%s: no tensor '%s'", path, name);
        goto done;
    }
    if (t->dtype != KE_ST_F32) {
        st = ks_fail(KS_ERR_INVALID, "%s: tensor '%s' has dtype %s, expected F32", path, name,
                     ke_st_dtype_name(t->dtype));
        goto done;
    }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    if (!same) {
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        st = ks_fail(KS_ERR_INVALID, "%s: tensor '%s' has shape %s, expected %s", path, name, got,
                     want);
        goto done;
    }
    *out = malloc(t->nbytes ? t->nbytes : 1);
    if (!*out) {
        st = ks_fail(KS_ERR_NOMEM, "%s: out of memory reading '%s'", path, name);
        goto done;
    }
    memcpy(*out, t->data, t->nbytes);
done:
    ke_st_close(&f);
    return st;
}

/* ---- writer ---- */

typedef struct wtensor {
    char *name;
    ke_st_dtype dtype;
    int ndim;
    int64_t shape[KE_ST_MAX_DIMS];
    void *data;
    size_t nbytes;
} wtensor;

struct ke_st_writer {
    wtensor *tensors;
    size_t count, cap;
    json_t *metadata; /* object or NULL */
};

ks_status ke_st_writer_new(ke_st_writer **out)
{
    *out = calloc(1, sizeof(ke_st_writer));
    return *out ? KS_OK : ks_fail(KS_ERR_NOMEM, "out of memory for a safetensors writer");
}

void ke_st_writer_destroy(ke_st_writer **pw)
{
    if (!pw || !*pw)
        return;
    ke_st_writer *w = *pw;
    for (size_t i = 0; i < w->count; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    json_decref(w->metadata);
    free(w);
    *pw = NULL;
}

ks_status ke_st_writer_add(ke_st_writer *w, const char *name, ke_st_dtype dtype, int ndim,
                           const int64_t *shape, const void *data)
{
    if (!name || !*name || strncmp(name, "__", 2) == 0)
        return ks_fail(KS_ERR_INVALID, "safetensors writer: bad tensor name '%s'",
                       name ? name : "(null)");
    if ((size_t)dtype >= N_DTYPES || ndim < 0 || ndim > KE_ST_MAX_DIMS)
        return ks_fail(KS_ERR_INVALID, "safetensors writer: tensor '%s': bad dtype or ndim", name);
    for (size_t i = 0; i < w->count; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return ks_fail(KS_ERR_INVALID, "safetensors writer: duplicate tensor '%s'", name);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] && numel > SIZE_MAX / 16 / (size_t)shape[d]))
            return ks_fail(KS_ERR_INVALID, "safetensors writer: tensor '%s': bad shape", name);
        numel *= (size_t)shape[d];
    }
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 8;
        wtensor *grown = realloc(w->tensors, cap * sizeof *grown);
        if (!grown)
            return ks_fail(KS_ERR_NOMEM, "safetensors writer: out of memory");
        w->tensors = grown;
        w->cap = cap;
    }
    wtensor *t = &w->tensors[w->count];
    memset(t, 0, sizeof *t);
    t->nbytes = numel * ke_st_dtype_size(dtype);
    t->name = strdup(name);
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return ks_fail(KS_ERR_NOMEM, "safetensors writer: out of memory for '%s'", name);
    }
    if (t->nbytes)
        memcpy(t->data, data, t->nbytes);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    w->count++;
    return KS_OK;
}

ks_status ke_st_writer_add_metadata(ke_st_writer *w, const char *key, const char *value)
{
    if (!w->metadata && !(w->metadata = json_object()))
        return ks_fail(KS_ERR_NOMEM, "safetensors writer: out of memory");
    if (json_object_set_new(w->metadata, key, json_string(value)) != 0)
        return ks_fail(KS_ERR_INVALID, "safetensors writer: bad metadata '%s' (not UTF-8?)", key);
    return KS_OK;
}

/* The header JSON, written by hand so that key order is insertion order. */
static ks_status build_header(const ke_st_writer *w, ks_buf *h)
{
    ks_status st = ks_buf_append_str(h, "{");
    if (st == KS_OK && w->metadata) {
        char *meta = json_dumps(w->metadata, JSON_COMPACT | JSON_SORT_KEYS);
        if (!meta)
            return ks_fail(KS_ERR_NOMEM, "safetensors writer: out of memory");
        st = ks_buf_printf(h, "\"__metadata__\":%s%s", meta, w->count ? "," : "");
        free(meta);
    }
    uint64_t offset = 0;
    for (size_t i = 0; st == KS_OK && i < w->count; i++) {
        const wtensor *t = &w->tensors[i];
        json_t *jname = json_string(t->name);
        char *name = jname ? json_dumps(jname, JSON_ENCODE_ANY) : NULL;
        json_decref(jname);
        if (!name)
            return ks_fail(KS_ERR_INVALID, "safetensors writer: tensor name is not UTF-8");
        st = ks_buf_printf(h, "%s%s:{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", name,
                           ke_st_dtype_name(t->dtype));
        free(name);
        for (int d = 0; st == KS_OK && d < t->ndim; d++)
            st = ks_buf_printf(h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        if (st == KS_OK)
            st = ks_buf_printf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                               (unsigned long long)(offset + t->nbytes));
        offset += t->nbytes;
    }
    if (st == KS_OK)
        st = ks_buf_append_str(h, "}");
    while (st == KS_OK && h->len % 8 != 0)
        st = ks_buf_append_str(h, " ");
    return st;
}

ks_status ke_st_writer_save(const ke_st_writer *w, const char *path)
{
    ks_buf h;
    ks_buf_init(&h);
    ks_status st = build_header(w, &h);
    FILE *out = NULL;
    if (st != KS_OK)
        goto done;
    out = fopen(path, "wb");
    if (!out) {
        st = ks_fail(KS_ERR_IO, "cannot create %s: %s", path, strerror(errno));
        goto done;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    int ok = fwrite(len8, 1, 8, out) == 8 && fwrite(h.data, 1, h.len, out) == h.len;
    for (size_t i = 0; ok && i < w->count; i++)
        ok = fwrite(w->tensors[i].data, 1, w->tensors[i].nbytes, out) == w->tensors[i].nbytes;
    if (fclose(out) != 0)
        ok = 0;
    if (!ok) {
        st = ks_fail(KS_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        remove(path);
    }
done:
    ks_buf_fini(&h);
    return st;
}
