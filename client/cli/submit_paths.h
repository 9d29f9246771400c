/* submit_paths: the image paths of `kosmos submit`'s PATH arguments, one at a time, so that a
 * million files never sit in memory together. Each argument is
 *   - a file: yielded as given, whatever its name;
 *   - a folder: walked recursively, entries sorted bytewise per folder, yielding the files
 *     whose extension is an image's (submit_paths_is_image); entries starting with '.' are
 *     skipped; symbolic links are followed, and each folder (device, inode) is entered once,
 *     so link loops end and a folder linked twice is not annotated twice;
 *   - "@LIST": a text file with one path (file or folder, as above) per line; empty lines
 *     are skipped; relative paths are relative to the current folder.
 * Memory: the open folders' sorted names (one folder level each) and the set of folders seen.
 * Not here: reading the images. */
#ifndef KOSMOS_SUBMIT_PATHS_H
#define KOSMOS_SUBMIT_PATHS_H

#include <stdbool.h>
#include <stddef.h>

#include "ks_error.h"

typedef struct submit_paths submit_paths;

/* A walker over args[0..n) (borrowed until destroy) into *out (caller owns). KS_ERR_NOMEM; *out
 * is then NULL. */
ks_status submit_paths_new(char *const *args, size_t n, submit_paths **out);
void submit_paths_destroy(submit_paths **w);

/* The next path: 1 with *path set (borrowed until the next call), 0 at the end, or -1 when a
 * path or list could not be read: *path is then what failed and the ks_error message says why
 * (the walk goes on at the next call). */
int submit_paths_next(submit_paths *w, const char **path);

/* True when `name` ends in the extension of a format a worker accepts (any case): the one
 * list, worker/image/image_formats.h. */
bool submit_paths_is_image(const char *name);

/* Checks that every argument exists (a file, a folder, or @LIST readable); on failure returns
 * false with the ks_error message naming it. For usage errors before anything starts. */
bool submit_paths_check(char *const *args, size_t n);

#endif
