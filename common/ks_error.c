/* ks_error: see ks_error.h. Messages are kept per thread so that worker threads never race. */
#include "ks_error.h"

#include <stdio.h>
#include <string.h>

#define KS_ERROR_CAPACITY 1024

static _Thread_local char error_message[KS_ERROR_CAPACITY];

ks_status ks_fail(ks_status code, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, args);
    va_end(args);
    return code;
}

void ks_error_prefix(const char *fmt, ...)
{
    char old[KS_ERROR_CAPACITY];
    memcpy(old, error_message, sizeof old);
    va_list args;
    va_start(args, fmt);
    int used = vsnprintf(error_message, sizeof error_message, fmt, args);
    va_end(args);
    if (used < 0 || (size_t)used >= sizeof error_message)
        return;
    /* Truncating the old message is fine: the start of it is what explains the failure. */
    size_t room = sizeof error_message - (size_t)used;
    if (room < 3)
        return;
    size_t n = strlen(old);
    if (n > room - 3)
        n = room - 3;
    memcpy(error_message + used, ": ", 2);
    memcpy(error_message + used + 2, old, n);
    error_message[(size_t)used + 2 + n] = '\0';
}

const char *ks_error_message(void) { return error_message; }

void ks_error_clear(void) { error_message[0] = '\0'; }

const char *ks_status_name(ks_status code)
{
    switch (code) {
    case KS_OK: return "ok";
    case KS_ERR_INVALID: return "invalid input";
    case KS_ERR_IO: return "i/o error";
    case KS_ERR_NOMEM: return "out of memory";
    case KS_ERR_FORMAT: return "bad format";
    case KS_ERR_LIMIT: return "limit exceeded";
    case KS_ERR_UNSUPPORTED: return "unsupported";
    case KS_ERR_DEVICE: return "device error";
    case KS_ERR_BUSY: return "busy";
    }
    return "unknown error";
}
