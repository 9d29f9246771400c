/* kw_log: see kw_log.h. */
#include "kw_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "kw_batch.h"

static atomic_int kw_level = KW_INFO;
static const char *const kw_level_names[] = {"debug", "info", "warn", "error"};

void kw_log_set_level(kw_log_level level) { atomic_store(&kw_level, (int)level); }

void kw_log(kw_log_level level, const char *event, const char *fields, ...)
{
    if ((int)level < atomic_load(&kw_level))
        return;
    char extra[2048] = "";
    if (fields) {
        va_list ap;
        va_start(ap, fields);
        vsnprintf(extra, sizeof extra, fields, ap);
        va_end(ap);
    }
    fprintf(stderr, "{\"ts\":%llu,\"level\":\"%s\",\"event\":\"%s\"%s%s}\n",
            (unsigned long long)kw_unix_ms(), kw_level_names[level], event, extra[0] ? "," : "",
            extra);
}

const char *kw_log_str(char *buf, size_t cap, const char *s)
{
    size_t at = 0;
    if (cap < 3) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    buf[at++] = '"';
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p && at + 8 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            buf[at++] = '\\';
            buf[at++] = (char)*p;
        } else if (*p < 0x20) {
            at += (size_t)snprintf(buf + at, cap - at, "\\u%04x", *p);
        } else {
            buf[at++] = (char)*p;
        }
    }
    buf[at++] = '"';
    buf[at] = '\0';
    return buf;
}
