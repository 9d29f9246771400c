/* ke_st: the safetensors file format (https://github.com/huggingface/safetensors): a reader that
 * memory-maps a file and validates all of it up front, and a small writer.
 *
 * One reader serves the model loader (model.c), `--pixels-from` (ke_st_read_f32) and the tests.
 * A file is: an 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {...}?, "NAME": {"dtype": "F16", "shape": [..], "data_offsets": [b, e]}, ...}
 * and the data block, offsets relative to its start. ke_st_open checks every entry (known dtype,
 * non-negative shape, offsets inside the data block, e - b == numel * dtype size, no two tensors
 * overlapping, no duplicate names), so a tensor it returns can be read without further checks.
 * Not a general safetensors library: no writing into existing files, no streaming. */
#ifndef KE_SAFETENSORS_H
#define KE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

typedef enum ke_st_dtype {
    KE_ST_BOOL,
    KE_ST_U8,
    KE_ST_I8,
    KE_ST_F8_E4M3,
    KE_ST_F8_E5M2,
    KE_ST_I16,
    KE_ST_U16,
    KE_ST_F16,
    KE_ST_BF16,
    KE_ST_I32,
    KE_ST_U32,
    KE_ST_F32,
    KE_ST_I64,
    KE_ST_U64,
    KE_ST_F64
} ke_st_dtype;

/* The format's name of a dtype ("F16"); static storage. */
const char *ke_st_dtype_name(ke_st_dtype dtype);

/* Bytes per element. */
size_t ke_st_dtype_size(ke_st_dtype dtype);

#define KE_ST_MAX_DIMS 8

typedef struct ke_st_tensor {
    const char *name; /* borrowed from the file */
    ke_st_dtype dtype;
    int ndim; /* 0 for a scalar */
    int64_t shape[KE_ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
    const void *data; /* into the read-only map, valid until ke_st_close; NOT necessarily aligned
                         to the element size (the format does not promise it) */
} ke_st_tensor;

typedef struct ke_st_file ke_st_file;

/* Maps and validates the file at `path` into *out (caller closes it). On failure *out is NULL
 * and the message names the file (and the tensor): KS_ERR_IO if it cannot be read,
 * KS_ERR_FORMAT if it is truncated or corrupt. */
ks_status ke_st_open(const char *path, ke_st_file **out);

/* Unmaps; accepts NULL and sets *f to NULL. Every pointer obtained from the file dies here. */
void ke_st_close(ke_st_file **f);

/* Tells the kernel this process is done reading the file's pages for now (a backend that
 * copied the weights to its device): it may reclaim them, so they stop counting in this
 * process's resident memory. Pointers stay valid; a later read faults the pages back in, and
 * copy-on-write patches (ke_st_writable) are kept. Advisory: does nothing where the kernel
 * offers no such hint. */
void ke_st_page_out(const ke_st_file *f);

/* The path given to ke_st_open; borrowed until ke_st_close. */
const char *ke_st_path(const ke_st_file *f);

/* Tensors, sorted by name; i < ke_st_count(f). Borrowed until ke_st_close. */
size_t ke_st_count(const ke_st_file *f);
const ke_st_tensor *ke_st_get(const ke_st_file *f, size_t i);

/* The tensor named `name`, or NULL (no message) if the file has none. */
const ke_st_tensor *ke_st_find(const ke_st_file *f, const char *name);

/* A writable view of bytes [offset, offset + n) of tensor t's data: copy-on-write, so writes
 * change this process's view only, never the file. Used to patch a few values (e.g. zero one
 * embedding row) without copying a whole tensor. NULL with a message on failure. */
void *ke_st_writable(ke_st_file *f, const ke_st_tensor *t, size_t offset, size_t n);

/* Reads the tensor `name` of the file at `path`, which must be F32 with exactly the shape
 * (ndim, shape), into a new buffer the caller frees. Fails with a message naming the file and
 * the tensor (KS_ERR_IO, KS_ERR_FORMAT, KS_ERR_INVALID for a missing tensor, a wrong dtype or
 * shape). */
ks_status ke_st_read_f32(const char *path, const char *name, int ndim, const int64_t *shape,
                         float **out);

/* ---- writer ---- */

typedef struct ke_st_writer ke_st_writer;

/* An empty file-to-be into *out (caller owns). KS_ERR_NOMEM; *out is then NULL. */
ks_status ke_st_writer_new(ke_st_writer **out);

void ke_st_writer_destroy(ke_st_writer **w);

/* Adds a tensor; the writer copies `data` (numel * dtype size bytes, row-major). Fails with
 * KS_ERR_INVALID on a duplicate or empty name, a bad shape or a name starting "__". */
ks_status ke_st_writer_add(ke_st_writer *w, const char *name, ke_st_dtype dtype, int ndim,
                           const int64_t *shape, const void *data);

/* Adds a "__metadata__" string entry (both strings are copied). */
ks_status ke_st_writer_add_metadata(ke_st_writer *w, const char *key, const char *value);

/* Writes the file: tensors in the order added, the header padded with spaces so that the data
 * block starts 8-byte aligned. KS_ERR_IO with a message on failure (the partial file is
 * removed). */
ks_status ke_st_writer_save(const ke_st_writer *w, const char *path);

#endif
