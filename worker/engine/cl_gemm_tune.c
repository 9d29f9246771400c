/* ke_cl_gemm_tune: see cl_gemm_tune.h. */
#include "cl_gemm_tune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl_gemm.h"
#include "gemm_tune_db.h"
#include "kc_cache.h"

static void built_in(const kc_device_info *dev, ke_tune_choice *out, const char *warning)
{
    ke_cl_tunables row;
    ke_cl_tunables_get(dev, NULL, &row);
    out->source = KE_TUNE_BUILT_IN;
    out->tune[0] = '\0';
    if (warning)
        snprintf(out->report, sizeof out->report, "built-in row %s (warning: %s; ignored)",
                 row.label, warning);
    else
        snprintf(out->report, sizeof out->report, "built-in row %s", row.label);
}

/* The database's entry for dev into out->tune when there is a usable one; else a warning into
 * `warning` when there is something to say (an unreadable database, a refused entry). */
static bool from_db(const kc_device_info *dev, const char *path, ke_tune_choice *out, char *warning,
                    size_t len)
{
    ke_tune_db *db = NULL;
    bool found = false, used = false;
    if (ke_tune_db_load(path, &db, &found) != KS_OK) {
        snprintf(warning, len, "%s", ks_error_message());
        return false;
    }
    const ke_tune_key key = {dev->platform_name, dev->name, dev->driver_version};
    const char *tune = ke_tune_db_lookup(db, &key);
    ke_cl_tunables t, row;
    ke_cl_tunables_get(dev, NULL, &row);
    if (!tune) {
        /* nothing tuned for this device (another machine's entries, or an older driver's) */
    } else if (strlen(tune) >= sizeof out->tune) {
        snprintf(warning, len, "%s: the entry for '%s' is too long", path, dev->name);
    } else if (ke_cl_tunables_get(dev, tune, &t) != KS_OK ||
               ke_cl_tunables_check(&t, dev->max_work_group_size) != KS_OK ||
               ke_cl_tunables_same_sums(&t, &row) != KS_OK) {
        snprintf(warning, len, "%s: the entry for '%s' ('%s'): %s", path, dev->name, tune,
                 ks_error_message());
    } else {
        out->source = KE_TUNE_DB;
        snprintf(out->tune, sizeof out->tune, "%s", tune);
        snprintf(out->report, sizeof out->report, "from %s (entry for %s, driver %s): %s", path,
                 dev->name, dev->driver_version, tune);
        used = true;
    }
    ke_tune_db_destroy(&db);
    return used;
}

void ke_cl_gemm_tune_choose(const kc_device_info *dev, const char *gemm_tune, const char *tune_db,
                            ke_tune_choice *out)
{
    memset(out, 0, sizeof *out);
    if (gemm_tune && *gemm_tune) {
        out->source = KE_TUNE_OPTION;
        snprintf(out->tune, sizeof out->tune, "%s", gemm_tune);
        snprintf(out->report, sizeof out->report, "--gemm-tune %s", gemm_tune);
        return;
    }
    char *path = NULL, *root = NULL;
    char warning[512] = "";
    if (tune_db && !*tune_db) {
        built_in(dev, out, NULL); /* --no-tune-db */
        return;
    }
    if (!tune_db && kc_cache_root(&root) == KS_OK)
        path = ke_tune_db_default_path(root);
    /* no cache folder at all (no HOME): no default database, as no program cache */
    const char *where = tune_db ? tune_db : path;
    if (!where || !from_db(dev, where, out, warning, sizeof warning))
        built_in(dev, out, *warning ? warning : NULL);
    free(path);
    free(root);
    ks_error_clear(); /* a database set aside is reported, not a failure */
}

void ke_cl_gemm_tune_fall_back(const kc_device_info *dev, ke_tune_choice *choice, const char *why)
{
    char warning[640];
    snprintf(warning, sizeof warning, "the tuning database's '%.200s' fails here: %.400s",
             choice->tune, why);
    built_in(dev, choice, warning);
}
