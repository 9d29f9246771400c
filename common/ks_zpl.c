/* ks_zpl: see ks_zpl.h. */
#include "ks_zpl.h"

#include <string.h>

bool ks_zpl_z85_key(const char *text, const char *key, char out[KS_Z85_KEY_SIZE])
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line;
         line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
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
