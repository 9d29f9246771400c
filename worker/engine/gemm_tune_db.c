/* ke_tune_db: see gemm_tune_db.h. The database is kept as the JSON tree it is written as, so an
 * entry's figures (whatever a tuner put there) survive a later update of another entry. */
#include "gemm_tune_db.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ks_file.h"

#define TUNE_DB_MAX_BYTES ((size_t)16 << 20) /* a few KiB per device in practice */

struct ke_tune_db {
    json_t *root; /* {"format": 1, "entries": [...]} */
};

static const char *const key_fields[3] = {"platform", "device", "driver"};

ks_status ke_tune_db_new(ke_tune_db **out)
{
    *out = calloc(1, sizeof **out);
    if (*out)
        (*out)->root = json_pack("{s:i, s:[]}", "format", KE_TUNE_DB_FORMAT, "entries");
    if (!*out || !(*out)->root) {
        ke_tune_db_destroy(out);
        return ks_fail(KS_ERR_NOMEM, "out of memory for the tuning database");
    }
    return KS_OK;
}

void ke_tune_db_destroy(ke_tune_db **db)
{
    if (!db || !*db)
        return;
    json_decref((*db)->root);
    free(*db);
    *db = NULL;
}

/* KS_OK when `root` is a database of this format; else KS_ERR_FORMAT naming what is wrong. */
static ks_status check_root(const json_t *root, const char *path)
{
    if (!json_is_object(root))
        return ks_fail(KS_ERR_FORMAT, "%s: not a JSON object", path);
    const json_t *format = json_object_get(root, "format");
    if (!json_is_integer(format) || json_integer_value(format) != KE_TUNE_DB_FORMAT)
        return ks_fail(KS_ERR_FORMAT, "%s: \"format\" is not %d", path, KE_TUNE_DB_FORMAT);
    const json_t *entries = json_object_get(root, "entries");
    if (!json_is_array(entries))
        return ks_fail(KS_ERR_FORMAT, "%s: \"entries\" is not an array", path);
    for (size_t i = 0; i < json_array_size(entries); i++) {
        const json_t *e = json_array_get(entries, i);
        if (!json_is_object(e))
            return ks_fail(KS_ERR_FORMAT, "%s: entry %zu is not an object", path, i);
        for (size_t f = 0; f < 3; f++)
            if (!json_is_string(json_object_get(e, key_fields[f])))
                return ks_fail(KS_ERR_FORMAT, "%s: entry %zu has no string \"%s\"", path, i,
                               key_fields[f]);
        if (!json_is_string(json_object_get(e, "tune")))
            return ks_fail(KS_ERR_FORMAT, "%s: entry %zu has no string \"tune\"", path, i);
    }
    return KS_OK;
}

ks_status ke_tune_db_load(const char *path, ke_tune_db **out, bool *found)
{
    ks_status st = KS_OK;
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    struct stat info;
    *out = NULL;
    if (found)
        *found = false;
    if (stat(path, &info) != 0 && errno == ENOENT)
        return ke_tune_db_new(out); /* no database yet: nothing tuned */
    if ((st = ks_file_read(path, TUNE_DB_MAX_BYTES, &text, &len)) != KS_OK) {
        ks_error_prefix("the tuning database");
        return st;
    }
    json_error_t err;
    root = json_loadb(text, len, 0, &err);
    free(text);
    if (!root)
        return ks_fail(KS_ERR_FORMAT, "%s: not JSON (line %d: %s)", path, err.line, err.text);
    if ((st = check_root(root, path)) != KS_OK) {
        json_decref(root);
        return st;
    }
    if (!(*out = calloc(1, sizeof **out))) {
        json_decref(root);
        return ks_fail(KS_ERR_NOMEM, "out of memory for the tuning database");
    }
    (*out)->root = root;
    if (found)
        *found = true;
    return KS_OK;
}

ks_status ke_tune_db_save(const ke_tune_db *db, const char *path)
{
    char *text = json_dumps(db->root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text)
        return ks_fail(KS_ERR_NOMEM, "out of memory writing %s", path);
    /* the folder (the cache folder on a first run) */
    const char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        char *folder = strndup(path, (size_t)(slash - path));
        bool made = folder && ks_dir_make_all(folder);
        free(folder);
        if (!made) {
            free(text);
            return ks_fail(KS_ERR_IO, "cannot make the folder of %s", path);
        }
    }
    size_t n = strlen(text);
    text[n] = '\n'; /* json_dumps' NUL becomes the last line's end */
    ks_status st = ks_file_write_atomic(path, text, n + 1);
    free(text);
    return st;
}

/* The entry for key in `entries`, or NULL; its index into *index when found. */
static json_t *find(const json_t *entries, const ke_tune_key *key, size_t *index)
{
    const char *want[3] = {key->platform, key->device, key->driver};
    for (size_t i = 0; i < json_array_size(entries); i++) {
        json_t *e = json_array_get(entries, i);
        size_t f = 0;
        while (f < 3 && want[f] &&
               strcmp(json_string_value(json_object_get(e, key_fields[f])), want[f]) == 0)
            f++;
        if (f == 3) {
            if (index)
                *index = i;
            return e;
        }
    }
    return NULL;
}

const char *ke_tune_db_lookup(const ke_tune_db *db, const ke_tune_key *key)
{
    const json_t *e = find(json_object_get(db->root, "entries"), key, NULL);
    return e ? json_string_value(json_object_get(e, "tune")) : NULL;
}

ks_status ke_tune_db_set(ke_tune_db *db, const ke_tune_key *key, const char *tune, const char *date,
                         json_t *figures)
{
    char now[32];
    if (!key->platform || !key->device || !key->driver || !tune) {
        json_decref(figures);
        return ks_fail(KS_ERR_INVALID, "tuning database: an entry without its device or tunables");
    }
    if (!date) {
        time_t t = time(NULL);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", &tm);
        date = now;
    }
    json_t *entry = json_pack("{s:s, s:s, s:s, s:s, s:s}", "platform", key->platform, "device",
                              key->device, "driver", key->driver, "tune", tune, "date", date);
    if (!entry || (figures && json_object_set_new(entry, "figures", figures) != 0)) {
        if (!entry)
            json_decref(figures);
        json_decref(entry);
        return ks_fail(KS_ERR_NOMEM, "out of memory for the tuning database");
    }
    json_t *entries = json_object_get(db->root, "entries");
    size_t index = 0;
    int rc = find(entries, key, &index) ? json_array_set_new(entries, index, entry)
                                        : json_array_append_new(entries, entry);
    return rc == 0 ? KS_OK : ks_fail(KS_ERR_NOMEM, "out of memory for the tuning database");
}

size_t ke_tune_db_count(const ke_tune_db *db)
{
    return json_array_size(json_object_get(db->root, "entries"));
}

char *ke_tune_db_default_path(const char *cache_root)
{
    return ks_path_join(cache_root, KE_TUNE_DB_FILE);
}
