/* ks_log: see ks_log.h. */
#include "ks_log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ks_utf8.h"

static const char *const ks_level_names[] = {"debug", "info", "warn", "error"};

const char *ks_log_level_name(ks_log_level level)
{
    return (unsigned)level <= KS_LOG_ERROR ? ks_level_names[level] : "?";
}

bool ks_log_level_parse(const char *name, ks_log_level *out)
{
    for (int l = KS_LOG_DEBUG; name && l <= KS_LOG_ERROR; l++) {
        if (strcmp(name, ks_level_names[l]) == 0) {
            *out = (ks_log_level)l;
            return true;
        }
    }
    return false;
}

uint64_t ks_log_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The whole line in one write() when `out` has a descriptor (the FILE's own buffer flushed
 * first, so nothing written through it earlier comes later); a short write continues. */
static void ks_log_emit(FILE *out, const char *line, size_t len)
{
    int fd = fileno(out);
    if (fd < 0) {
        fwrite(line, 1, len, out);
        fflush(out);
        return;
    }
    fflush(out);
    while (len > 0) {
        ssize_t w = write(fd, line, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        line += w;
        len -= (size_t)w;
    }
}

void ks_logv(FILE *out, ks_log_level level, uint64_t ts_ms, const char *event, const char *fields,
             va_list ap)
{
    int saved_errno = errno;
    char stack[2048];
    char *line = stack;
    int head = snprintf(stack, sizeof stack, "{\"ts_ms\":%llu,\"level\":\"%s\",\"event\":\"%s\"",
                        (unsigned long long)ts_ms, ks_log_level_name(level), event ? event : "");
    if (head < 0 || (size_t)head >= sizeof stack - 64)
        goto done; /* an event name of 2 KB: a programming error, nothing sensible to write */
    size_t n = (size_t)head;
    if (fields) {
        va_list measure;
        va_copy(measure, ap);
        int m = vsnprintf(NULL, 0, fields, measure);
        va_end(measure);
        size_t need = n + 1 + (m > 0 ? (size_t)m : 0) + 3; /* ',' fields '}' '\n' NUL */
        if (m > 0 && need > sizeof stack) {
            line = malloc(need);
            if (line)
                memcpy(line, stack, n);
        }
        if (m > 0 && line) {
            line[n++] = ',';
            vsnprintf(line + n, (size_t)m + 1, fields, ap);
            n += (size_t)m;
        } else if (m > 0) {
            line = stack;
            n += (size_t)snprintf(stack + n, sizeof stack - n, ",\"fields_dropped\":true");
        }
    }
    line[n++] = '}';
    line[n++] = '\n';
    ks_log_emit(out ? out : stderr, line, n);
    if (line != stack)
        free(line);
done:
    errno = saved_errno;
}

void ks_log(FILE *out, ks_log_level level, uint64_t ts_ms, const char *event, const char *fields,
            ...)
{
    va_list ap;
    va_start(ap, fields);
    ks_logv(out, level, ts_ms, event, fields, ap);
    va_end(ap);
}

const char *ks_log_str(char *buf, size_t cap, const char *s)
{
    static const char dots[] = "...";
    if (cap < 3) {
        if (cap)
            buf[0] = '\0';
        return buf;
    }
    size_t o = 0, safe = 1; /* safe: the longest prefix so far that leaves room for "..." */
    buf[o++] = '"';
    size_t len = s ? strlen(s) : 0;
    bool cut = false;
    for (size_t i = 0; i < len;) {
        char esc[8];
        size_t n, used;
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, n = 2, used = 1;
        } else if (c < 0x20 || c == 0x7F) {
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c), used = 1;
        } else if (c < 0x80) {
            esc[0] = (char)c, n = 1, used = 1;
        } else {
            uint32_t cp;
            used = ks_utf8_decode(s + i, len - i, &cp);
            if (cp == 0xFFFD && used == 1)
                memcpy(esc, "\\ufffd", 6), n = 6; /* a malformed byte */
            else
                memcpy(esc, s + i, used), n = used;
        }
        if (o + n + 2 > cap) { /* the closing quote and the NUL */
            cut = true;
            break;
        }
        memcpy(buf + o, esc, n);
        o += n;
        i += used;
        if (o + sizeof dots - 1 + 2 <= cap)
            safe = o;
    }
    if (cut) {
        o = safe;
        if (o + sizeof dots - 1 + 2 <= cap) {
            memcpy(buf + o, dots, sizeof dots - 1);
            o += sizeof dots - 1;
        }
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}
