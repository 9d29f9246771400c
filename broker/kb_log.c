/* kb_log: see kb_log.h. */
#include "kb_log.h"

#include <stdarg.h>
#include <string.h>

static const char *kb_level_name(kb_level l)
{
    switch (l) {
    case KB_DEBUG:
        return "debug";
    case KB_INFO:
        return "info";
    case KB_WARN:
        return "warn";
    case KB_ERROR:
        return "error";
    }
    return "?";
}

void kb_log(FILE *out, kb_level min, kb_level level, uint64_t now_ms, const char *event,
            const char *fields, ...)
{
    char line[2048];
    if (level < min)
        return;
    int n = snprintf(line, sizeof line, "{\"ts_ms\":%llu,\"level\":\"%s\",\"event\":\"%s\"",
                     (unsigned long long)now_ms, kb_level_name(level), event);
    if (fields && n > 0 && (size_t)n < sizeof line - 2) {
        line[n++] = ',';
        va_list ap;
        va_start(ap, fields);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 2, fields, ap);
        va_end(ap);
        if (m < 0 || (size_t)m >= sizeof line - (size_t)n - 2) {
            n--; /* the fields did not fit: drop them rather than write broken JSON */
            line[n] = '\0';
        } else {
            n += m;
        }
    }
    if (n < 0 || (size_t)n > sizeof line - 3)
        n = (int)strlen(line);
    line[n++] = '}';
    line[n++] = '\n';
    fwrite(line, 1, (size_t)n, out ? out : stderr);
    fflush(out ? out : stderr);
}

const char *kb_json_str(char *buf, size_t cap, const char *s, size_t len)
{
    size_t o = 0;
    if (cap < 3) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (size_t i = 0; s && i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        size_t n;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, n = 2;
        } else if (c < 0x20 || c >= 0x7F) {
            /* Non-ASCII is escaped bytewise: logs stay ASCII whatever a peer sent. */
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        } else {
            esc[0] = (char)c, n = 1;
        }
        if (o + n + 2 > cap)
            break;
        memcpy(buf + o, esc, n);
        o += n;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
