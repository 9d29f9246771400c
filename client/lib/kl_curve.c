/* kl_curve: reading CURVE certificates in ZPL (CZMQ's zcert_save, pyzmq's
 * zmq.auth.create_certificates): a "curve" section whose "public-key" and, in the _secret file,
 * "secret-key" are quoted 40-character Z85 strings. No CZMQ needed. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kl_internal.h"

/* Finds `key = "value"` (quoted or bare) on a line of `text`; copies a 40-character value. */
static bool kl_zpl_key(const char *text, const char *key, char out[KOSMOS_Z85_KEY_SIZE])
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#' || strncmp(p, key, klen) != 0)
            continue;
        p += klen;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p++ != '=')
            continue;
        while (*p == ' ' || *p == '\t')
            p++;
        char quote = (*p == '"' || *p == '\'') ? *p++ : 0;
        size_t n = 0;
        /* Z85 uses '#' and '=' too: a quoted value ends at its quote, a bare one at a space */
        while (p[n] && p[n] != '\n' && p[n] != '\r' &&
               (quote ? p[n] != quote : (p[n] != ' ' && p[n] != '\t')))
            n++;
        if (n != 40)
            return false;
        memcpy(out, p, 40);
        out[40] = '\0';
        return true;
    }
    return false;
}

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
    if (!kl_zpl_key(text, "public-key", public_key))
        err = kl_fail(KOSMOS_ERR_INVALID, "certificate %s has no valid public-key", path);
    else if (secret_key && !kl_zpl_key(text, "secret-key", secret_key))
        err = kl_fail(KOSMOS_ERR_INVALID, "certificate %s has no valid secret-key", path);
    memset(text, 0, sizeof text);
    return err;
}
