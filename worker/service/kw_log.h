/* kw_log: the worker's front end to the one log (common/ks_log.h): lines on stderr, stamped
 * with the wall clock, below a process-wide level dropped. Thread-safe (ks_log writes each line
 * with one write()). Not for results or metrics. */
#ifndef KW_LOG_H
#define KW_LOG_H

#include "ks_log.h"

/* Lines below `level` are dropped. Default KS_LOG_INFO. */
void kw_log_set_level(ks_log_level level);

/* Logs one event; `fields` (printf format, may be NULL) continues the JSON object, e.g.
 * "\"job\":%s" - escape strings that come from outside with ks_log_str. */
void kw_log(ks_log_level level, const char *event, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));

#endif
