/* ks_log: the one structured log of kosmos-farm (broker, its auth thread, the worker), one JSON
 * object per line: {"ts_ms":<Unix ms>,"level":"info","event":"<name>",<fields>}
 * (docs/operations.md, "Logs"). A line is never cut: it is built whole, in a buffer that grows
 * to fit, and written with one write(), so lines from several threads or processes sharing a
 * file do not interleave. String values from outside are escaped and cut to a bound by
 * ks_log_str, which always gives a valid JSON string. Not a logging framework: no sinks, no
 * rotation; level filtering is the caller's (each program keeps its own threshold). */
#ifndef KS_LOG_H
#define KS_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum ks_log_level { KS_LOG_DEBUG, KS_LOG_INFO, KS_LOG_WARN, KS_LOG_ERROR } ks_log_level;

/* "debug", "info", "warn", "error" (static storage). */
const char *ks_log_level_name(ks_log_level level);
/* The level called `name` (as ks_log_level_name writes it): true and *out set, else false. */
bool ks_log_level_parse(const char *name, ks_log_level *out);

/* The wall clock in Unix milliseconds, for lines with no clock of their own. */
uint64_t ks_log_unix_ms(void);

/* Writes one line to `out` (stderr when NULL): ts_ms, level, `event` (a name the program
 * chose, [a-z_]; written as is) and, when `fields` is not NULL, the members that the printf
 * format `fields` produces, already JSON ("\"job\":%s" with ks_log_str for strings). Never
 * fails visibly and leaves errno as it was; if memory for a long line runs out, the fields are
 * dropped and "fields_dropped":true says so. */
void ks_log(FILE *out, ks_log_level level, uint64_t ts_ms, const char *event, const char *fields,
            ...) __attribute__((format(printf, 5, 6)));
void ks_logv(FILE *out, ks_log_level level, uint64_t ts_ms, const char *event, const char *fields,
             va_list ap) __attribute__((format(printf, 5, 0)));

/* Writes s (NUL-terminated; NULL reads as "") into buf as a JSON string literal, quotes
 * included: '"', '\\' and control characters escaped, valid UTF-8 kept, each malformed byte
 * written as \ufffd. When it does not fit in `cap` bytes it is cut between characters and ends
 * in "..." - still valid JSON (cap < 3 gives "", the empty C string). Returns buf. */
const char *ks_log_str(char *buf, size_t cap, const char *s);

#endif
