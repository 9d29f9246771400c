/* kb_log: structured logs, one JSON object per line (on stderr by default), with a per-key
 * rate limit for things a peer can trigger at will (protocol violations, docs/protocol.md §7).
 * Not a general logging framework: the broker's only sink. */
#ifndef KB_LOG_H
#define KB_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum kb_level { KB_DEBUG, KB_INFO, KB_WARN, KB_ERROR } kb_level;

/* Writes {"ts_ms":now,"level":..,"event":event, <fields>} + "\n" to `out` (stderr when NULL).
 * `fields` is a printf format producing the rest of the object's members, already JSON
 * ("\"job\":%s" with kb_log_str for strings), or NULL. Never fails visibly. */
void kb_log(FILE *out, kb_level min, kb_level level, uint64_t now_ms, const char *event,
            const char *fields, ...) __attribute__((format(printf, 6, 7)));

/* Escapes s[0..len) as a JSON string (with quotes) into buf (truncated to fit, always valid
 * JSON). Returns buf. */
const char *kb_json_str(char *buf, size_t cap, const char *s, size_t len);

#endif
