/* ks_file: reading whole files with a size limit, and joining paths. */
#ifndef KS_FILE_H
#define KS_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "ks_error.h"

/* Reads the file at `path` into a new NUL-terminated buffer that the caller frees. Fails with
 * KS_ERR_IO if it cannot be read or is not a regular file (a FIFO or a device is refused without
 * blocking: it is opened O_NONBLOCK and checked before any read) and KS_ERR_LIMIT if it is
 * larger than max_bytes. */
ks_status ks_file_read(const char *path, size_t max_bytes, char **data, size_t *len);

/* As ks_file_read for a file that must lie beneath one of `roots` (absolute folders, see
 * ks_path_clean), whatever its symlinks say: the path is split at the root it names by text,
 * and the rest is resolved by the kernel beneath that root's folder (openat2 with
 * RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS; on kernels without openat2, the opened file's real
 * path is checked against the root's). Errors: KS_ERR_INVALID when the path names no root, a
 * symlink or ".." leads out of it, or it is not a regular file (a FIFO never blocks);
 * KS_ERR_IO when it cannot be read (missing, permissions; no roots at all); KS_ERR_LIMIT. */
ks_status ks_file_read_beneath(const char *const *roots, size_t n_roots, const char *path,
                               size_t max_bytes, char **data, size_t *len);

/* True for an absolute path none of whose components is "." or "..". */
bool ks_path_clean(const char *path);

/* When `path` equals `root` or continues it with "/" (whole components; a trailing "/" on the
 * root is ignored, so "/" holds every absolute path), the rest of path after the root and its
 * slashes ("" for the root itself); else NULL. Textual only: symlinks are not looked at. */
const char *ks_path_beneath(const char *path, const char *root);

/* KS_OK when `path` names an existing folder. Otherwise KS_ERR_IO with the message
 * "no such WHAT: PATH" (or "WHAT PATH is not a folder"), `what` naming the folder's role
 * ("model folder"): the first thing a user with a mistyped path should read. */
ks_status ks_dir_require(const char *path, const char *what);

/* True when `path` names an existing regular file. */
bool ks_file_exists(const char *path);

/* dir + "/" + name into a new string the caller frees; NULL on allocation failure. */
char *ks_path_join(const char *dir, const char *name);

/* mkdir -p: true when `folder` exists as a folder afterwards (made with mode 0777 & ~umask). */
bool ks_dir_make_all(const char *folder);

/* Replaces the file at `path` with `n` bytes, atomically: written to a temporary file beside
 * it, flushed to disk, then renamed over it, so a reader sees the old file or the new one and
 * a crash leaves no half-written file. The folder must exist. KS_ERR_IO (naming the path and
 * the system's reason) when it cannot be written; nothing is left behind. */
ks_status ks_file_write_atomic(const char *path, const void *data, size_t n);

#endif
