/* ke_tune_db: the GEMM tuning database. `kosmos tune` writes it and the OpenCL backend reads it
 * at start (docs/gemm.md, "Tuning"): for each device and driver, the --gemm-tune text that won
 * the sweep, when, and the figures behind it. One JSON file, by default <cache>/gemm-tune.json
 * in the kosmos cache folder (kc_cache_root):
 *
 *   {"format": 1,
 *    "entries": [{"platform": "Portable Computing Language", "device": "pthread-...",
 *                 "driver": "3.1+debian", "tune": "cpu,rows_nt=8,...",
 *                 "date": "2026-12-09T10:11:12Z", "figures": {...}}, ...]}
 *
 * An entry is found by its three strings exactly: another driver version is another entry, as
 * it is another compiler. The file is small and written whole, atomically (temporary file and
 * rename). Only JSON here: what the tunables mean is cl_gemm.h's, the sweep is
 * bench/gemm_sweep.h's. Not thread-safe per object. */
#ifndef KE_GEMM_TUNE_DB_H
#define KE_GEMM_TUNE_DB_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "ks_error.h"

#define KE_TUNE_DB_FORMAT 1
#define KE_TUNE_DB_FILE "gemm-tune.json" /* its name in the cache folder */

typedef struct ke_tune_db ke_tune_db;

/* Which device an entry is for (borrowed strings). */
typedef struct ke_tune_key {
    const char *platform; /* the OpenCL platform's name */
    const char *device;   /* the device's name */
    const char *driver;   /* the device's driver version */
} ke_tune_key;

/* An empty database into *out (caller owns). KS_ERR_NOMEM. */
ks_status ke_tune_db_new(ke_tune_db **out);

/* Reads the database at `path` into *out (caller owns). A missing file is an empty database
 * with *found false (found may be NULL). A file that cannot be read (KS_ERR_IO), is not JSON or
 * not this format (KS_ERR_FORMAT: the message names the path and what is wrong, with the line
 * for bad JSON) fails, *out then NULL: the caller decides whether that is a warning (a backend
 * starting) or an error (a tuner that would overwrite it). */
ks_status ke_tune_db_load(const char *path, ke_tune_db **out, bool *found);

/* Writes the database to `path` atomically, creating its folder when missing. KS_ERR_IO. */
ks_status ke_tune_db_save(const ke_tune_db *db, const char *path);

/* The tunables text of the entry for `key`, or NULL when there is none. Borrowed until the
 * database changes or is destroyed. */
const char *ke_tune_db_lookup(const ke_tune_db *db, const ke_tune_key *key);

/* Adds or replaces the entry for `key`: `tune` (the --gemm-tune text), `date` (ISO 8601 text;
 * NULL: now, in UTC) and `figures` (any JSON object the tuner wants kept, or NULL; the call
 * takes the reference in every case). Other keys' entries stay as they are. KS_ERR_INVALID for
 * a missing string, KS_ERR_NOMEM. */
ks_status ke_tune_db_set(ke_tune_db *db, const ke_tune_key *key, const char *tune, const char *date,
                         json_t *figures);

/* Entries in the database. */
size_t ke_tune_db_count(const ke_tune_db *db);

void ke_tune_db_destroy(ke_tune_db **db);

/* The default database path in the cache folder `cache_root` (caller frees; NULL on allocation
 * failure). */
char *ke_tune_db_default_path(const char *cache_root);

#endif
