/* kw_log: the worker's log, one JSON object per line on stderr (as the broker logs):
 * {"ts":<unix ms>,"level":"info","event":"<name>",<fields>}. Thread-safe (one fprintf per line).
 * Not for results or metrics. */
#ifndef KW_LOG_H
#define KW_LOG_H

#include <stddef.h>

typedef enum kw_log_level { KW_DEBUG = 0, KW_INFO, KW_WARN, KW_ERROR } kw_log_level;

/* Lines below `level` are dropped. Default KW_INFO. */
void kw_log_set_level(kw_log_level level);

/* Logs one event; `fields` (printf format, may be NULL) continues the JSON object, e.g.
 * "\"job\":\"%s\"" - escape strings that come from outside with kw_log_str. */
void kw_log(kw_log_level level, const char *event, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes s as a JSON string literal (quotes included, cut to fit) into buf; returns buf. */
const char *kw_log_str(char *buf, size_t cap, const char *s);

#endif
