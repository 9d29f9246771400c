/* kl_error: libkosmos's per-thread error message, the names of its enums, its version, and the
 * small platform helpers (clock, sleep, randomness) the other sources share. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kl_internal.h"

#define KL_MSG_MAX 1024

static _Thread_local char kl_msg[KL_MSG_MAX];

#define KL_STR2(x) #x
#define KL_STR(x) KL_STR2(x)

KOSMOS_API const char *kosmos_version(void)
{
    return KL_STR(KOSMOS_VERSION_MAJOR) "." KL_STR(KOSMOS_VERSION_MINOR) "." KL_STR(
        KOSMOS_VERSION_PATCH);
}

kosmos_error_t kl_fail(kosmos_error_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kl_msg, sizeof kl_msg, fmt, ap);
    va_end(ap);
    return code;
}

KOSMOS_API const char *kosmos_error_message(void) { return kl_msg; }

KOSMOS_API const char *kosmos_error_name(kosmos_error_t code)
{
    switch (code) {
    case KOSMOS_OK: return "ok";
    case KOSMOS_ERR_INVALID: return "invalid argument";
    case KOSMOS_ERR_NOMEM: return "out of memory";
    case KOSMOS_ERR_IO: return "i/o error";
    case KOSMOS_ERR_TIMEOUT: return "timeout";
    case KOSMOS_ERR_BUSY: return "busy";
    case KOSMOS_ERR_CONFLICT: return "conflict";
    case KOSMOS_ERR_REJECTED: return "rejected";
    case KOSMOS_ERR_NOT_FOUND: return "not found";
    case KOSMOS_ERR_INVALID_STATE: return "invalid state";
    case KOSMOS_ERR_TOO_LARGE: return "too large";
    case KOSMOS_ERR_UNAVAILABLE: return "unavailable";
    case KOSMOS_ERR_PROTOCOL: return "protocol error";
    case KOSMOS_ERR_UNSUPPORTED: return "unsupported";
    case KOSMOS_ERR_PENDING: return "pending";
    }
    return "unknown";
}

KOSMOS_API bool kosmos_job_state_is_terminal(kosmos_job_state_t state)
{
    return state >= KOSMOS_STATE_DONE && state <= KOSMOS_STATE_ACKED;
}

KOSMOS_API const char *kosmos_job_state_name(kosmos_job_state_t state)
{
    switch (state) {
    case KOSMOS_STATE_QUEUED: return "queued";
    case KOSMOS_STATE_RUNNING: return "running";
    case KOSMOS_STATE_RETRY_WAIT: return "retry_wait";
    case KOSMOS_STATE_DONE: return "done";
    case KOSMOS_STATE_FAILED: return "failed";
    case KOSMOS_STATE_EXPIRED: return "expired";
    case KOSMOS_STATE_DEAD: return "dead";
    case KOSMOS_STATE_CANCELLED: return "cancelled";
    case KOSMOS_STATE_ACKED: return "acked";
    case KOSMOS_STATE_UNKNOWN: break;
    }
    return "unknown";
}

KOSMOS_API const char *kosmos_result_status_name(kosmos_result_status_t status)
{
    switch (status) {
    case KOSMOS_RESULT_OK: return "ok";
    case KOSMOS_RESULT_FAILED: return "failed";
    case KOSMOS_RESULT_EXPIRED: return "expired";
    case KOSMOS_RESULT_DEAD: return "dead";
    case KOSMOS_RESULT_CANCELLED: return "cancelled";
    case KOSMOS_RESULT_UNKNOWN: break;
    }
    return "unknown";
}

/* The wire enums have the same numbers as ours (kosmos.proto); anything else is unknown. */
kosmos_job_state_t kl_state_from_wire(int state)
{
    return (state >= KOSMOS_STATE_QUEUED && state <= KOSMOS_STATE_ACKED) ? (kosmos_job_state_t)state
                                                                         : KOSMOS_STATE_UNKNOWN;
}

kosmos_result_status_t kl_result_status_from_wire(int status)
{
    return (status >= KOSMOS_RESULT_OK && status <= KOSMOS_RESULT_CANCELLED)
               ? (kosmos_result_status_t)status
               : KOSMOS_RESULT_UNKNOWN;
}

uint64_t kl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void kl_sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void kl_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    size_t got = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        while (got < n) {
            ssize_t r = read(fd, p + got, n - got);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                break;
            }
            got += (size_t)r;
        }
        close(fd);
    }
    if (got == n)
        return;
    /* No /dev/urandom (a chroot): splitmix64 over the time, the pid and a counter. Keys only
     * need to be unique, not secret. */
    static atomic_uint_fast64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    x ^= (uint64_t)getpid() << 32;
    x += atomic_fetch_add(&counter, 1) * 0x9E3779B97F4A7C15u;
    for (size_t i = got; i < n; i++) {
        x += 0x9E3779B97F4A7C15u;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
        p[i] = (unsigned char)(z ^ (z >> 31));
    }
}
