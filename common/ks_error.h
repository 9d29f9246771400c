/* ks_error: status codes and the per-thread error message shared by every kosmos-farm library.
 *
 * A function that can fail returns a ks_status; on failure it has left a human-readable message
 * that ks_error_message() returns, on the same thread, until the next failure. Not for logging:
 * the caller decides whether and where to print. */
#ifndef KS_ERROR_H
#define KS_ERROR_H

#include <stdarg.h>

typedef enum ks_status {
    KS_OK = 0,
    KS_ERR_INVALID,     /* bad input from a user, a file or the network */
    KS_ERR_IO,          /* a file could not be read or written */
    KS_ERR_NOMEM,       /* an allocation failed */
    KS_ERR_FORMAT,      /* a file or message is corrupt or of the wrong kind */
    KS_ERR_LIMIT,       /* an input is larger than a configured limit */
    KS_ERR_UNSUPPORTED, /* a valid request this build or device cannot serve */
    KS_ERR_DEVICE,      /* a compute device failed */
    KS_ERR_BUSY         /* another process holds what this one needs (a lock) */
} ks_status;

/* Records a message (printf-style) for this thread and returns `code`, so that
 * `return ks_fail(KS_ERR_INVALID, "...")` reports and fails in one statement. */
ks_status ks_fail(ks_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Puts context in front of the current message: "loading X: <old message>". */
void ks_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The message of this thread's last failure ("" if none). Borrowed until the next ks_ call. */
const char *ks_error_message(void);

void ks_error_clear(void);

/* Short name of a status, e.g. "invalid input". Static storage. */
const char *ks_status_name(ks_status code);

#endif
