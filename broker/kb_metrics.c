/* kb_metrics: see kb_metrics.h. The rendering and the snapshot hand-over are plain C and always
 * built; the HTTP server (libmicrohttpd, its own polling thread) only with KOSMOS_HAVE_METRICS.
 * The listening socket is ours (so a taken port gives a real error message), handed to
 * libmicrohttpd, which closes it when stopped. */
#include "kb_metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef KOSMOS_HAVE_METRICS
#include <microhttpd.h>
#endif

#define KB_METRICS_PUBLISH_NS 250000000ull /* a snapshot at most every 250 ms */
#define KB_METRICS_COUNTS_NS 1000000000ull /* job counts at most every second */
#define KB_METRICS_COUNTS_SHARE 100u       /* ... and at most 1% of the broker's time */
#define KB_METRICS_MAX_CONNECTIONS 16u
#define KB_METRICS_MAX_PER_IP 4u /* one stranger cannot take all 16 */
#define KB_METRICS_TIMEOUT_S 5u  /* idle: libmicrohttpd's own timeout */
/* A connection's whole life, from accept to close, whatever it does: libmicrohttpd's timeout
 * counts idle time only, so clients trickling a byte at a time held every slot for ever. A
 * scrape takes milliseconds; Prometheus reconnects at its next scrape. */
#define KB_METRICS_CONNECTION_S 5u
#define KB_METRICS_REAP_NS 200000000ull /* the reaper looks every 200 ms */
#define KB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct kb_metrics {
    pthread_mutex_t lock;
    bool lock_ready;
    /* Guarded by lock: the snapshot the HTTP thread serves (workers and names owned). */
    kb_metrics_snapshot snap;
    kb_metrics_worker *workers;
    char *names;
    bool published;
    uint64_t published_ns, jobs_ns; /* monotonic */
    /* Broker thread only: the schedule of kb_metrics_due. */
    uint64_t next_publish_ns, next_counts_ns, counts_started_ns;
    bool counting;
#ifdef KOSMOS_HAVE_METRICS
    struct MHD_Daemon *daemon;
    /* The connections open now, for the reaper thread (KB_METRICS_CONNECTION_S). Guarded by
     * conn_lock; libmicrohttpd reports a close before it closes the socket, so a socket in the
     * table is still that connection's. */
    pthread_mutex_t conn_lock;
    pthread_cond_t conn_wake;
    bool conn_ready, reaper_started, reaper_stop;
    pthread_t reaper;
    struct kb_metrics_conn {
        int fd; /* -1: free */
        uint64_t since_ns;
        bool cut; /* shut down by the reaper; libmicrohttpd closes it next */
    } conns[KB_METRICS_MAX_CONNECTIONS + 8];
#endif
    int fd; /* ours until the daemon starts, then the daemon's */
    char address[INET_ADDRSTRLEN + 8];
};

uint64_t kb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- Rendering ------------------------------------------------------------------------------ */

typedef struct kb_text {
    char *buf;
    size_t len, cap;
    bool oom;
} kb_text;

static void kb_text_printf(kb_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void kb_text_printf(kb_text *t, const char *fmt, ...)
{
    for (int pass = 0; pass < 2 && !t->oom; pass++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->oom = true;
            return;
        }
        if (t->buf && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t ncap = t->cap ? t->cap : 4096;
        while (ncap - t->len <= (size_t)n)
            ncap *= 2;
        char *grown = realloc(t->buf, ncap);
        if (!grown) {
            t->oom = true;
            return;
        }
        t->buf = grown;
        t->cap = ncap;
    }
}

/* A label value per the exposition format: backslash, double quote and line feed escaped. */
static void kb_text_label(kb_text *t, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            kb_text_printf(t, "\\\\");
        else if (*p == '"')
            kb_text_printf(t, "\\\"");
        else if (*p == '\n')
            kb_text_printf(t, "\\n");
        else
            kb_text_printf(t, "%c", *p);
    }
}

static void kb_family(kb_text *t, const char *name, const char *type, const char *help)
{
    kb_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void kb_metric(kb_text *t, const char *name, const char *type, const char *help, uint64_t v)
{
    kb_family(t, name, type, help);
    kb_text_printf(t, "%s %llu\n", name, (unsigned long long)v);
}

static void kb_metric_seconds(kb_text *t, const char *name, const char *help, double v)
{
    kb_family(t, name, "gauge", help);
    kb_text_printf(t, "%s %.3f\n", name, v);
}

/* A histogram family from per-bucket counts (kb_durations): Prometheus wants them cumulative. */
static void kb_histogram(kb_text *t, const char *name, const char *help, const kb_durations *d)
{
    kb_family(t, name, "histogram", help);
    uint64_t below = 0;
    for (int k = 0; k < KB_DURATION_BUCKETS; k++) {
        below += d->buckets[k];
        if (k < KB_DURATION_BUCKETS - 1)
            kb_text_printf(t, "%s_bucket{le=\"%g\"} %llu\n", name, kb_duration_bucket_us[k] / 1e6,
                           (unsigned long long)below);
        else
            kb_text_printf(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)below);
    }
    kb_text_printf(t, "%s_sum %.6f\n", name, d->us_total / 1e6);
    kb_text_printf(t, "%s_count %llu\n", name, (unsigned long long)below);
}

/* Lower-case JobState names (proto/kosmos.proto), index = enum value; 0 is never stored. */
static const char *const kb_state_names[KB_METRICS_STATES] = {NULL,         "queued", "running",
                                                              "retry_wait", "done",   "failed",
                                                              "expired",    "dead",   "cancelled",
                                                              "acked"};

ks_status kb_metrics_render(const kb_metrics_snapshot *s, double age_s, double jobs_age_s,
                            char **text, size_t *len)
{
    static const struct {
        const char *name, *help;
    } totals[KB_METRICS_TOTALS] = {
        {"kosmos_broker_jobs_submitted_total", "Jobs accepted, over the life of the database."},
        {"kosmos_broker_jobs_done_total", "Jobs that ended DONE, over the life of the database."},
        {"kosmos_broker_jobs_failed_total",
         "Jobs that ended FAILED, over the life of the database."},
        {"kosmos_broker_jobs_dead_total",
         "Jobs that ended DEAD (too many crashed attempts), over the life of the database."},
        {"kosmos_broker_jobs_expired_total",
         "Jobs that ended EXPIRED (deadline passed), over the life of the database."},
        {"kosmos_broker_jobs_cancelled_total",
         "Jobs that ended CANCELLED, over the life of the database."},
    };
    const kb_stats *st = &s->stats;
    kb_text t = {0};
    *text = NULL;
    *len = 0;
    kb_metric(&t, "kosmos_broker_up", "gauge", "1 while the broker serves this endpoint.", 1);
    kb_metric_seconds(&t, "kosmos_broker_uptime_seconds", "Seconds since the broker started.",
                      (double)s->uptime_ms / 1000.0);
    kb_metric_seconds(&t, "kosmos_broker_snapshot_age_seconds",
                      "Seconds since the broker loop last published these numbers "
                      "(normally under 0.25; growing = the loop is stuck).",
                      age_s);
    if (s->has_jobs) {
        kb_metric_seconds(&t, "kosmos_broker_jobs_age_seconds",
                          "Seconds since the job counts (kosmos_broker_jobs, *_total) were "
                          "read from the store.",
                          jobs_age_s);
        kb_family(&t, "kosmos_broker_jobs", "gauge",
                  "Jobs in the store per state (terminal ones until --retention-days).");
        for (int i = 1; i < KB_METRICS_STATES; i++)
            kb_text_printf(&t, "kosmos_broker_jobs{state=\"%s\"} %llu\n", kb_state_names[i],
                           (unsigned long long)s->jobs[i]);
        for (int i = 0; i < KB_METRICS_TOTALS; i++)
            kb_metric(&t, totals[i].name, "counter", totals[i].help, s->totals[i]);
    }
    kb_metric(&t, "kosmos_broker_dispatches_total", "counter",
              "Dispatches to workers since the broker started.", st->dispatches);
    kb_metric(&t, "kosmos_broker_results_stored_total", "counter",
              "Worker results stored since the broker started.", st->results_stored);
    kb_metric(&t, "kosmos_broker_results_stale_total", "counter",
              "Worker results of an old attempt, acknowledged STALE, since the broker started.",
              st->results_stale);
    kb_metric(&t, "kosmos_broker_results_unknown_total", "counter",
              "Worker results for unknown jobs, acknowledged UNKNOWN_JOB, since the broker "
              "started.",
              st->results_unknown);
    kb_metric(&t, "kosmos_broker_lease_lapses_total", "counter",
              "Leases lapsed as crashes (worker dead or lease expired) since the broker started.",
              st->lease_lapses);
    kb_metric(&t, "kosmos_broker_commits_total", "counter",
              "Store transactions committed since the broker started.", st->commits);
    kb_histogram(&t, "kosmos_broker_commit_seconds",
                 "Store commits that wrote, by duration (the WAL frames written to the kernel; "
                 "dispatches wait for them), since the broker started.",
                 &st->commit_durations);
    kb_histogram(&t, "kosmos_broker_sync_seconds",
                 "fdatasyncs of the store's WAL, by duration (client replies wait for them), "
                 "since the broker started.",
                 &st->sync_durations);
    kb_metric(&t, "kosmos_broker_checkpoints_total", "counter",
              "Checkpoints of the store's WAL into its database since the broker started.",
              st->checkpoints);
    kb_metric(&t, "kosmos_broker_commit_failures_total", "counter",
              "Store transactions rolled back (disk full and friends) since the broker started.",
              st->commit_failures);
    kb_metric(&t, "kosmos_broker_send_failures_total", "counter",
              "Messages to gone peers or full queues since the broker started.", st->send_failures);
    kb_metric(&t, "kosmos_broker_protocol_violations_total", "counter",
              "Protocol-breaking messages from clients and workers since the broker started.",
              st->violations);
    kb_metric(&t, "kosmos_broker_memory_bytes", "gauge",
              "Bytes of the broker's own buffers (docs/broker.md \"Memory bound\").",
              st->memory_bytes);
    kb_metric(&t, "kosmos_broker_memory_peak_bytes", "gauge",
              "Highest kosmos_broker_memory_bytes since the broker started.", st->memory_peak);
    kb_metric(&t, "kosmos_broker_memory_bound_bytes", "gauge",
              "The bound on kosmos_broker_memory_bytes computed from the limits.",
              st->memory_bound);
    kb_metric(&t, "kosmos_broker_workers", "gauge", "Registered workers.", st->workers);
    kb_metric(&t, "kosmos_broker_waiters", "gauge", "Long polls (fetch with a wait) held.",
              st->waiters);
    static const struct {
        const char *name, *help;
    } per_worker[3] = {
        {"kosmos_broker_worker_capacity", "Batch capacity a worker announced."},
        {"kosmos_broker_worker_credit", "Jobs a worker can take now."},
        {"kosmos_broker_worker_running", "Jobs leased to a worker now."},
    };
    for (int k = 0; k < 3; k++) {
        kb_family(&t, per_worker[k].name, "gauge", per_worker[k].help);
        for (size_t i = 0; i < s->n_workers; i++) {
            const kb_metrics_worker *w = &s->workers[i];
            uint32_t v = k == 0 ? w->capacity : k == 1 ? w->credit : w->running;
            kb_text_printf(&t, "%s{worker=\"", per_worker[k].name);
            kb_text_label(&t, w->name ? w->name : "");
            kb_text_printf(&t, "\"} %u\n", v);
        }
    }
    if (t.oom) {
        free(t.buf);
        return ks_fail(KS_ERR_NOMEM, "out of memory rendering metrics");
    }
    *text = t.buf;
    *len = t.len;
    return KS_OK;
}

/* ---- The snapshot hand-over ----------------------------------------------------------------- */

bool kb_metrics_due(kb_metrics *m, bool *counts_due)
{
    uint64_t now = kb_mono_ns();
    *counts_due = false;
    if (now < m->next_publish_ns)
        return false;
    m->next_publish_ns = now + KB_METRICS_PUBLISH_NS;
    if (now >= m->next_counts_ns) {
        *counts_due = true;
        m->counting = true;
        m->counts_started_ns = now;
        m->next_counts_ns = now + KB_METRICS_COUNTS_NS; /* retried then if the count fails */
    }
    return true;
}

void kb_metrics_publish(kb_metrics *m, const kb_metrics_snapshot *s)
{
    size_t names_len = 0;
    for (size_t i = 0; i < s->n_workers; i++)
        names_len += strlen(s->workers[i].name ? s->workers[i].name : "") + 1;
    kb_metrics_worker *ws = s->n_workers ? malloc(s->n_workers * sizeof *ws) : NULL;
    char *names = names_len ? malloc(names_len) : NULL;
    if (s->n_workers && (!ws || !names)) {
        free(ws);
        free(names);
        return;
    }
    char *p = names;
    for (size_t i = 0; i < s->n_workers; i++) {
        const char *name = s->workers[i].name ? s->workers[i].name : "";
        size_t n = strlen(name) + 1;
        ws[i] = s->workers[i];
        ws[i].name = memcpy(p, name, n);
        p += n;
    }
    uint64_t now = kb_mono_ns();
    if (s->has_jobs && m->counting) {
        uint64_t wait = (now - m->counts_started_ns) * KB_METRICS_COUNTS_SHARE;
        m->next_counts_ns = m->counts_started_ns +
                            (wait > KB_METRICS_COUNTS_NS ? wait : KB_METRICS_COUNTS_NS);
    }
    m->counting = false;
    pthread_mutex_lock(&m->lock);
    kb_metrics_worker *old_ws = m->workers;
    char *old_names = m->names;
    kb_metrics_snapshot prev = m->snap;
    m->snap = *s;
    m->snap.workers = ws;
    if (s->has_jobs) {
        m->jobs_ns = now;
    } else {
        m->snap.has_jobs = prev.has_jobs;
        memcpy(m->snap.jobs, prev.jobs, sizeof prev.jobs);
        memcpy(m->snap.totals, prev.totals, sizeof prev.totals);
    }
    m->workers = ws;
    m->names = names;
    m->published = true;
    m->published_ns = now;
    pthread_mutex_unlock(&m->lock);
    free(old_ws);
    free(old_names);
}

/* ---- Address -------------------------------------------------------------------------------- */

ks_status kb_metrics_parse_address(const char *address, char *host, size_t cap, uint16_t *port)
{
    const char *colon = address ? strrchr(address, ':') : NULL;
    if (!colon || colon == address || !colon[1])
        return ks_fail(KS_ERR_INVALID, "expected HOST:PORT (e.g. 127.0.0.1:9556), got \"%s\"",
                       address ? address : "");
    if (address[0] == '[' || memchr(address, ':', (size_t)(colon - address)))
        return ks_fail(KS_ERR_INVALID, "only IPv4 addresses or host names: \"%s\"", address);
    unsigned long v = 0;
    for (const char *q = colon + 1; *q; q++) {
        if (*q < '0' || *q > '9' || v > 65535)
            return ks_fail(KS_ERR_INVALID, "bad port in \"%s\" (0..65535)", address);
        v = v * 10 + (unsigned long)(*q - '0');
    }
    if (v > 65535)
        return ks_fail(KS_ERR_INVALID, "bad port in \"%s\" (0..65535)", address);
    size_t n = (size_t)(colon - address);
    if (n >= cap)
        return ks_fail(KS_ERR_INVALID, "host name too long in \"%s\"", address);
    memcpy(host, address, n);
    host[n] = '\0';
    *port = (uint16_t)v;
    return KS_OK;
}

/* ---- The server ----------------------------------------------------------------------------- */

bool kb_metrics_available(void)
{
#ifdef KOSMOS_HAVE_METRICS
    return true;
#else
    return false;
#endif
}

const char *kb_metrics_address(const kb_metrics *m) { return m->address; }

#ifdef KOSMOS_HAVE_METRICS
static enum MHD_Result kb_metrics_answer(void *cls, struct MHD_Connection *conn, const char *url,
                                         const char *method, const char *version,
                                         const char *upload_data, size_t *upload_data_size,
                                         void **req_cls)
{
    kb_metrics *m = cls;
    unsigned int code = MHD_HTTP_OK;
    const char *msg = NULL;
    char *text = NULL;
    size_t len = 0;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
        msg = "method not allowed: GET /metrics\n";
    } else if (strcmp(url, "/metrics") != 0) {
        code = MHD_HTTP_NOT_FOUND;
        msg = "not found: GET /metrics\n";
    } else {
        pthread_mutex_lock(&m->lock);
        if (!m->published) {
            code = MHD_HTTP_SERVICE_UNAVAILABLE;
            msg = "the broker has not published numbers yet\n";
        } else {
            uint64_t now = kb_mono_ns();
            if (kb_metrics_render(&m->snap, (double)(now - m->published_ns) / 1e9,
                                  (double)(now - m->jobs_ns) / 1e9, &text, &len) != KS_OK) {
                code = MHD_HTTP_INTERNAL_SERVER_ERROR;
                msg = "out of memory\n";
            }
        }
        pthread_mutex_unlock(&m->lock);
    }
    struct MHD_Response *resp =
        text ? MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE)
             : MHD_create_response_from_buffer(strlen(msg), (void *)msg, MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(text);
        return MHD_NO; /* out of memory: the connection is closed */
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            text ? KB_METRICS_CONTENT_TYPE : "text/plain; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return r;
}

/* libmicrohttpd's connection notifications: the table the reaper reads. */
static void kb_metrics_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe)
{
    kb_metrics *m = cls;
    pthread_mutex_lock(&m->conn_lock);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (size_t i = 0; info && i < sizeof m->conns / sizeof m->conns[0]; i++)
            if (m->conns[i].fd < 0) {
                m->conns[i] = (struct kb_metrics_conn){info->connect_fd, kb_mono_ns(), false};
                *socket_context = &m->conns[i];
                break;
            }
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        ((struct kb_metrics_conn *)*socket_context)->fd = -1;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&m->conn_lock);
}

/* Shuts down every connection older than KB_METRICS_CONNECTION_S; libmicrohttpd then sees it
 * end and closes it. */
static void *kb_metrics_reaper(void *arg)
{
    kb_metrics *m = arg;
    pthread_mutex_lock(&m->conn_lock);
    while (!m->reaper_stop) {
        uint64_t now = kb_mono_ns();
        for (size_t i = 0; i < sizeof m->conns / sizeof m->conns[0]; i++) {
            struct kb_metrics_conn *c = &m->conns[i];
            if (c->fd >= 0 && !c->cut &&
                now - c->since_ns >= (uint64_t)KB_METRICS_CONNECTION_S * 1000000000ull) {
                shutdown(c->fd, SHUT_RDWR);
                c->cut = true;
            }
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)KB_METRICS_REAP_NS;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&m->conn_wake, &m->conn_lock, &until);
    }
    pthread_mutex_unlock(&m->conn_lock);
    return NULL;
}

/* A listening IPv4 socket on host:port, and the address it got. */
static ks_status kb_metrics_listen(kb_metrics *m, const char *address, const char *host,
                                   uint16_t port)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    if (strcmp(host, "*") == 0) {
        sin.sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
        struct addrinfo hints, *res = NULL;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        int r = getaddrinfo(host, NULL, &hints, &res);
        if (r != 0 || !res)
            return ks_fail(KS_ERR_INVALID, "--metrics %s: cannot resolve %s to an IPv4 address: %s",
                           address, host, r ? gai_strerror(r) : "no address");
        sin.sin_addr = ((const struct sockaddr_in *)(const void *)res->ai_addr)->sin_addr;
        freeaddrinfo(res);
    }
    int one = 1;
    m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (m->fd < 0)
        return ks_fail(KS_ERR_IO, "--metrics %s: socket: %s", address, strerror(errno));
    /* SO_REUSEADDR: a restart need not wait for TIME_WAIT; a port someone listens on still
     * fails with EADDRINUSE. */
    if (setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(m->fd, (const struct sockaddr *)&sin, sizeof sin) != 0 ||
        listen(m->fd, (int)KB_METRICS_MAX_CONNECTIONS) != 0)
        return ks_fail(KS_ERR_IO, "--metrics %s: cannot listen: %s", address, strerror(errno));
    socklen_t sl = sizeof sin;
    char ip[INET_ADDRSTRLEN] = "?";
    if (getsockname(m->fd, (struct sockaddr *)&sin, &sl) != 0)
        return ks_fail(KS_ERR_IO, "--metrics %s: getsockname: %s", address, strerror(errno));
    inet_ntop(AF_INET, &sin.sin_addr, ip, sizeof ip);
    snprintf(m->address, sizeof m->address, "%s:%u", ip, (unsigned)ntohs(sin.sin_port));
    return KS_OK;
}
#endif

ks_status kb_metrics_new(const char *address, kb_metrics **out)
{
    ks_status st = KS_OK;
    char host[256];
    uint16_t port = 0;
    kb_metrics *m = NULL;
    *out = NULL;
    if (!kb_metrics_available())
        return ks_fail(KS_ERR_UNSUPPORTED, "this kosmos-broker was built without libmicrohttpd; "
                                           "install libmicrohttpd-dev and rebuild");
    if ((st = kb_metrics_parse_address(address, host, sizeof host, &port)) != KS_OK) {
        ks_error_prefix("--metrics");
        return st;
    }
    m = calloc(1, sizeof *m);
    if (!m)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    m->fd = -1;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        st = ks_fail(KS_ERR_NOMEM, "pthread_mutex_init failed");
        goto cleanup;
    }
    m->lock_ready = true;
#ifdef KOSMOS_HAVE_METRICS
    for (size_t i = 0; i < sizeof m->conns / sizeof m->conns[0]; i++)
        m->conns[i].fd = -1;
    if (pthread_mutex_init(&m->conn_lock, NULL) != 0 ||
        pthread_cond_init(&m->conn_wake, NULL) != 0) {
        st = ks_fail(KS_ERR_NOMEM, "pthread_mutex_init failed");
        goto cleanup;
    }
    m->conn_ready = true;
    if ((st = kb_metrics_listen(m, address, host, port)) != KS_OK)
        goto cleanup;
    /* The server thread inherits a mask with every signal blocked: SIGTERM and SIGINT reach
     * the broker's thread, whose poll they interrupt. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    m->daemon = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD, 0, NULL, NULL, kb_metrics_answer, m,
                                 MHD_OPTION_LISTEN_SOCKET, (MHD_socket)m->fd,
                                 MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned int)KB_METRICS_MAX_CONNECTIONS,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                 (unsigned int)KB_METRICS_MAX_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
                                 (unsigned int)KB_METRICS_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION,
                                 kb_metrics_notify, m, MHD_OPTION_END);
    if (m->daemon)
        m->reaper_started = pthread_create(&m->reaper, NULL, kb_metrics_reaper, m) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!m->daemon || !m->reaper_started) {
        st = ks_fail(KS_ERR_IO, "--metrics %s: the HTTP server (libmicrohttpd) did not start",
                     address);
        goto cleanup;
    }
    m->fd = -1; /* the daemon's now */
#endif
    *out = m;
    m = NULL;
cleanup:
    kb_metrics_destroy(&m);
    return st;
}

void kb_metrics_destroy(kb_metrics **pm)
{
    if (!pm || !*pm)
        return;
    kb_metrics *m = *pm;
#ifdef KOSMOS_HAVE_METRICS
    if (m->reaper_started) {
        pthread_mutex_lock(&m->conn_lock);
        m->reaper_stop = true;
        pthread_cond_signal(&m->conn_wake);
        pthread_mutex_unlock(&m->conn_lock);
        pthread_join(m->reaper, NULL);
    }
    if (m->daemon) {
        MHD_stop_daemon(m->daemon);
        m->fd = -1; /* the daemon closed it, even before it was ours to forget */
    }
    if (m->conn_ready) {
        pthread_mutex_destroy(&m->conn_lock);
        pthread_cond_destroy(&m->conn_wake);
    }
#endif
    if (m->fd >= 0)
        close(m->fd);
    if (m->lock_ready)
        pthread_mutex_destroy(&m->lock);
    free(m->workers);
    free(m->names);
    free(m);
    *pm = NULL;
}
