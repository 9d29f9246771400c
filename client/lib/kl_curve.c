/* kl_curve: reading CURVE certificates in ZPL (CZMQ's zcert_save, pyzmq's
 * zmq.auth.create_certificates): a "curve" section whose "public-key" and, in the _secret file,
 * "secret-key" are quoted 40-character Z85 strings. No CZMQ needed. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kl_internal.h"
#include "ks_zpl.h"

KOSMOS_API kosmos_error_t kosmos_curve_load_cert(const char *path,
                                                 char public_key[KOSMOS_Z85_KEY_SIZE],
                                                 char *secret_key)
{
    if (!path || !public_key)
        return kl_fail(KOSMOS_ERR_INVALID, "kosmos_curve_load_cert: no path or key buffer");
    char text[8192];
    FILE *f = fopen(path, "r");
    if (!f)
        return kl_fail(KOSMOS_ERR_IO, "cannot open certificate %s: %s", path, strerror(errno));
    size_t n = fread(text, 1, sizeof text - 1, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad)
        return kl_fail(KOSMOS_ERR_IO, "cannot read certificate %s", path);
    text[n] = '\0';
    kosmos_error_t err = KOSMOS_OK;
    if (!ks_zpl_z85_key(text, "public-key", public_key))
        err = kl_fail(KOSMOS_ERR_INVALID, "certificate %s has no valid public-key", path);
    else if (secret_key && !ks_zpl_z85_key(text, "secret-key", secret_key))
        err = kl_fail(KOSMOS_ERR_INVALID, "certificate %s has no valid secret-key", path);
    memset(text, 0, sizeof text);
    return err;
}
