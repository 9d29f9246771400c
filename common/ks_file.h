/* ks_file: reading whole files with a size limit, and joining paths. */
#ifndef KS_FILE_H
#define KS_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "ks_error.h"

/* Reads the file at `path` into a new NUL-terminated buffer that the caller frees. Fails with
 * KS_ERR_IO if it cannot be read and KS_ERR_LIMIT if it is larger than max_bytes. */
ks_status ks_file_read(const char *path, size_t max_bytes, char **data, size_t *len);

/* KS_OK when `path` names an existing folder. Otherwise KS_ERR_IO with the message
 * "no such WHAT: PATH" (or "WHAT PATH is not a folder"), `what` naming the folder's role
 * ("model folder"): the first thing a user with a mistyped path should read. */
ks_status ks_dir_require(const char *path, const char *what);

/* True when `path` names an existing regular file. */
bool ks_file_exists(const char *path);

/* dir + "/" + name into a new string the caller frees; NULL on allocation failure. */
char *ks_path_join(const char *dir, const char *name);

#endif
