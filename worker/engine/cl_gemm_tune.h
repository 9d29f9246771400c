/* ke_cl_gemm_tune: which GEMM tunables an OpenCL backend starts with (docs/gemm.md, "Tuning"),
 * first match wins:
 *   1. the --gemm-tune text (ke_backend_options.gemm_tune), as given;
 *   2. the tuning database's entry for the device and driver (gemm_tune_db.h, written by
 *      `kosmos tune`), when it parses, meets gemm.cl's constraints on this device and keeps the
 *      device row's chunking (ke_cl_tunables_same_sums: so it cannot change a result);
 *   3. the device's built-in row (cl_gemm.c's table).
 * A database that is missing is silent; one that cannot be read or whose entry fails a check is
 * a warning in the report, and the built-in row is used: a start never fails because of it.
 * Not here: the sweep that fills the database (bench/gemm_sweep.h). */
#ifndef KE_CL_GEMM_TUNE_H
#define KE_CL_GEMM_TUNE_H

#include "kc_device.h"

typedef enum ke_tune_source {
    KE_TUNE_BUILT_IN, /* the device's row */
    KE_TUNE_OPTION,   /* --gemm-tune */
    KE_TUNE_DB        /* the tuning database */
} ke_tune_source;

typedef struct ke_tune_choice {
    ke_tune_source source;
    char tune[256];   /* the text for ke_cl_gemm_new; "" = the device's row */
    char report[768]; /* one line for logs, `kosmos bench` and `kosmos run`: "built-in row cpu",
                       * "--gemm-tune cpu,rows_cw=8", "from PATH (entry for DEVICE, driver
                       * DRIVER): TUNE", or the built-in row with the warning that set the
                       * database aside */
} ke_tune_choice;

/* Chooses as above for `dev`. gemm_tune: the option's text or NULL/""; tune_db: the database's
 * path, NULL for the default (<cache>/gemm-tune.json, kc_cache_root) or "" to read none. */
void ke_cl_gemm_tune_choose(const kc_device_info *dev, const char *gemm_tune, const char *tune_db,
                            ke_tune_choice *out);

/* After ke_cl_gemm_new failed on the database's tunables (a driver that refuses what it once
 * built): back to the device's row, with `why` in the report as a warning. */
void ke_cl_gemm_tune_fall_back(const kc_device_info *dev, ke_tune_choice *choice, const char *why);

#endif
