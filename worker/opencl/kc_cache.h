/* kc_cache: the on-disk cache of built OpenCL program binaries, so that a worker's second start
 * skips the driver's compiler (seconds per program on PoCL, more on some GPU drivers).
 *
 * An entry is keyed by everything that changes the binary: platform name and version, device
 * name, driver version, the source text, the build options and the cache format version. It
 * lives in <root>/opencl/<stem>-<128-bit key hash>.bin, where <root> is, first match wins,
 * $KOSMOS_CACHE_DIR, $XDG_CACHE_HOME/kosmos, $HOME/.cache/kosmos. Entries carry their full key
 * and a checksum: a corrupt, truncated or colliding entry reads as a miss and is overwritten.
 * The cache is best effort: every failure to read or write it is silent, and the build goes on.
 * Not thread-safe per object; distinct processes may share a folder (writes are atomic). */
#ifndef KC_CACHE_H
#define KC_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kc_device.h"
#include "ks_error.h"

/* Bumped whenever the entry layout or the key text changes: old entries then simply miss. */
#define KC_CACHE_FORMAT 1

typedef struct kc_cache kc_cache;

/* The kosmos cache folder as described above (KOSMOS_CACHE_DIR, XDG_CACHE_HOME/kosmos,
 * HOME/.cache/kosmos) into *out (caller frees): the root of the program cache and of other
 * per-machine files (the GEMM tuning database, gemm_tune_db.h). KS_ERR_UNSUPPORTED when none
 * of the three is set, KS_ERR_NOMEM; *out is then NULL. */
ks_status kc_cache_root(char **out);

/* A cache rooted at `root` (the kosmos cache folder; binaries go in root/opencl), or at the
 * default described above when root is NULL; *out is the caller's. KS_ERR_UNSUPPORTED when no
 * folder can be determined, KS_ERR_NOMEM; *out is then NULL and the caller builds without a
 * cache. */
ks_status kc_cache_new(const char *root, kc_cache **out);
void kc_cache_destroy(kc_cache **cache);

/* The folder the entries go in ("<root>/opencl"). Borrowed until the cache is destroyed. */
const char *kc_cache_folder(const kc_cache *cache);

/* The key text of one build (caller frees; NULL on allocation failure). */
char *kc_cache_key(const kc_device_info *device, const char *source, size_t source_len,
                   const char *options);

/* The entry's path for a program named `stem` (e.g. "layer_norm") and a key (caller frees). */
char *kc_cache_entry_path(const kc_cache *cache, const char *stem, const char *key);

/* A valid entry's binary in a new buffer the caller frees; false on any miss or problem. */
bool kc_cache_load(const kc_cache *cache, const char *stem, const char *key, unsigned char **binary,
                   size_t *length);

/* Writes an entry atomically (temporary file + rename), creating folders as needed, replacing
 * any previous entry. false when it could not be written (nothing is left behind). */
bool kc_cache_store(const kc_cache *cache, const char *stem, const char *key,
                    const unsigned char *binary, size_t length);

/* 64-bit FNV-1a of `n` bytes, starting from `seed` (0 = the standard offset basis). */
uint64_t kc_hash64(const void *data, size_t n, uint64_t seed);

#endif
