/* Unit tests for broker/kb_metrics: the text exposition (families, label escaping, job counts
 * only once known), HOST:PORT parsing, the due schedule, and - in a build with libmicrohttpd -
 * the server in-process: 503 before the first snapshot, the snapshot after, older job counts
 * kept by a snapshot without them, the port released by destroy. The real broker behind it is
 * tests/integration/test_metrics.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kb_metrics.h"

static void fill(kb_metrics_snapshot *s, const kb_metrics_worker *ws, size_t n)
{
    memset(s, 0, sizeof *s);
    s->uptime_ms = 12345;
    s->stats.dispatches = 7;
    s->stats.violations = 3;
    s->stats.memory_bound = 1000;
    s->stats.commit_durations.buckets[0] = 1;                       /* <= 0.25 ms */
    s->stats.commit_durations.buckets[2] = 2;                       /* <= 1 ms */
    s->stats.commit_durations.buckets[KB_DURATION_BUCKETS - 1] = 1; /* > 32 ms */
    s->stats.commit_durations.us_total = 123456;
    s->stats.sync_durations.buckets[3] = 5; /* <= 2 ms */
    s->stats.sync_durations.us_total = 7500;
    s->stats.checkpoints = 9;
    s->stats.workers = (uint32_t)n;
    s->workers = ws;
    s->n_workers = n;
}

static void test_render_escapes_labels(void **state)
{
    (void)state;
    const kb_metrics_worker ws[] = {{"gpu-01/0", 4, 2, 2},
                                    {"back\\slash", 1, 1, 0},
                                    {"say \"hi\"", 1, 0, 1},
                                    {"two\nlines", 2, 2, 0}};
    kb_metrics_snapshot s;
    fill(&s, ws, 4);
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kb_metrics_render(&s, 0.1, 0.5, &text, &len), KS_OK);
    assert_int_equal(strlen(text), len);
    assert_non_null(strstr(text, "# TYPE kosmos_broker_up gauge\nkosmos_broker_up 1\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_uptime_seconds 12.345\n"));
    assert_non_null(strstr(text, "# TYPE kosmos_broker_dispatches_total counter\n"
                                 "kosmos_broker_dispatches_total 7\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_protocol_violations_total 3\n"));
    assert_non_null(strstr(text, "# TYPE kosmos_broker_commit_seconds histogram\n"
                                 "kosmos_broker_commit_seconds_bucket{le=\"0.00025\"} 1\n"
                                 "kosmos_broker_commit_seconds_bucket{le=\"0.0005\"} 1\n"
                                 "kosmos_broker_commit_seconds_bucket{le=\"0.001\"} 3\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_commit_seconds_bucket{le=\"0.032\"} 3\n"
                                 "kosmos_broker_commit_seconds_bucket{le=\"+Inf\"} 4\n"
                                 "kosmos_broker_commit_seconds_sum 0.123456\n"
                                 "kosmos_broker_commit_seconds_count 4\n"));
    assert_non_null(strstr(text, "# TYPE kosmos_broker_sync_seconds histogram\n"
                                 "kosmos_broker_sync_seconds_bucket{le=\"0.00025\"} 0\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_sync_seconds_bucket{le=\"0.001\"} 0\n"
                                 "kosmos_broker_sync_seconds_bucket{le=\"0.002\"} 5\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_sync_seconds_sum 0.007500\n"
                                 "kosmos_broker_sync_seconds_count 5\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_checkpoints_total 9\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_worker_credit{worker=\"gpu-01/0\"} 2\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_worker_credit{worker=\"back\\\\slash\"} 1\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_worker_running{worker=\"say \\\"hi\\\"\"} 1\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_worker_capacity{worker=\"two\\nlines\"} 2\n"));
    /* Job counts not read yet: no jobs family, no totals. */
    assert_null(strstr(text, "kosmos_broker_jobs"));
    /* Every sample line has a TYPE line for its family before it. */
    for (char *line = text; *line; line = strchr(line, '\n') + 1) {
        if (line[0] != '#') {
            char type[160];
            size_t k = strcspn(line, "{ ");
            snprintf(type, sizeof type, "# TYPE %.*s ", (int)k, line);
            char *at = strstr(text, type);
            static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
            for (size_t i = 0; !at && i < 3; i++) { /* a histogram's samples */
                size_t sl = strlen(suffixes[i]);
                if (k > sl && strncmp(line + k - sl, suffixes[i], sl) == 0) {
                    snprintf(type, sizeof type, "# TYPE %.*s histogram", (int)(k - sl), line);
                    at = strstr(text, type);
                }
            }
            assert_non_null(at);
            assert_true(at < line);
        }
    }
    free(text);
}

static void test_render_jobs(void **state)
{
    (void)state;
    kb_metrics_snapshot s;
    fill(&s, NULL, 0);
    s.has_jobs = true;
    s.jobs[1] = 5;  /* queued */
    s.jobs[3] = 2;  /* retry_wait */
    s.jobs[9] = 11; /* acked */
    s.totals[0] = 40;
    s.totals[5] = 1;
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(kb_metrics_render(&s, 0, 0.75, &text, &len), KS_OK);
    assert_non_null(strstr(text, "# TYPE kosmos_broker_jobs gauge\n"
                                 "kosmos_broker_jobs{state=\"queued\"} 5\n"
                                 "kosmos_broker_jobs{state=\"running\"} 0\n"
                                 "kosmos_broker_jobs{state=\"retry_wait\"} 2\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_jobs{state=\"acked\"} 11\n"));
    assert_null(strstr(text, "unspecified"));
    assert_non_null(strstr(text, "# TYPE kosmos_broker_jobs_submitted_total counter\n"
                                 "kosmos_broker_jobs_submitted_total 40\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_jobs_cancelled_total 1\n"));
    assert_non_null(strstr(text, "\nkosmos_broker_jobs_age_seconds 0.750\n"));
    /* Worker families are declared even without workers. */
    assert_non_null(strstr(text, "# TYPE kosmos_broker_worker_credit gauge\n"));
    free(text);
}

static void test_parse_address(void **state)
{
    (void)state;
    char host[64];
    uint16_t port = 1;
    assert_int_equal(kb_metrics_parse_address("127.0.0.1:9556", host, sizeof host, &port), KS_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 9556);
    assert_int_equal(kb_metrics_parse_address("localhost:0", host, sizeof host, &port), KS_OK);
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 0);
    assert_int_equal(kb_metrics_parse_address("*:65535", host, sizeof host, &port), KS_OK);
    assert_int_equal(port, 65535);
    const char *bad[] = {
        "",        "9556",    ":9556",      "host:",    "host:65536",
        "host:9x", "host:-1", "[::1]:9556", "::1:9556", "host:99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(kb_metrics_parse_address(bad[i], host, sizeof host, &port),
                         KS_ERR_INVALID);
    assert_int_equal(kb_metrics_parse_address("a-rather-long-host-name-that-is-too-long-for-the-"
                                              "buffer:80",
                                              host, 16, &port),
                     KS_ERR_INVALID);
}

/* "HTTP/1.1 200 ..." status and the whole reply (caller frees), from GET path. */
static int http_get(int port, const char *path, char **reply)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    char req[200];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                     path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    ssize_t r;
    while ((r = read(fd, buf + len, cap - len - 1)) > 0) {
        len += (size_t)r;
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    close(fd);
    buf[len] = '\0';
    int status = 0;
    assert_int_equal(sscanf(buf, "HTTP/1.1 %d", &status), 1);
    *reply = buf;
    return status;
}

static void test_server(void **state)
{
    (void)state;
    kb_metrics *m = NULL;
    if (!kb_metrics_available()) {
        assert_int_equal(kb_metrics_new("127.0.0.1:0", &m), KS_ERR_UNSUPPORTED);
        assert_non_null(strstr(ks_error_message(), "libmicrohttpd"));
        assert_null(m);
        return;
    }
    assert_int_equal(kb_metrics_new("127.0.0.1:bad", &m), KS_ERR_INVALID);
    assert_int_equal(kb_metrics_new("127.0.0.1:0", &m), KS_OK);
    const char *addr = kb_metrics_address(m);
    assert_int_equal(strncmp(addr, "127.0.0.1:", 10), 0);
    int port = atoi(addr + 10);
    assert_true(port > 0);
    char *reply = NULL;
    assert_int_equal(http_get(port, "/metrics", &reply), 503);
    free(reply);

    /* The first due call asks for counts; one right after is not due. */
    bool counts = false;
    assert_true(kb_metrics_due(m, &counts));
    assert_true(counts);
    assert_false(kb_metrics_due(m, &counts));
    assert_false(counts);

    const kb_metrics_worker ws[] = {{"w\"1", 2, 1, 1}};
    kb_metrics_snapshot s;
    fill(&s, ws, 1);
    s.has_jobs = true;
    s.jobs[1] = 3;
    s.totals[0] = 9;
    kb_metrics_publish(m, &s);
    fill(&s, NULL, 0); /* no counts this time: the last ones stand */
    s.stats.dispatches = 8;
    kb_metrics_publish(m, &s);
    assert_int_equal(http_get(port, "/metrics", &reply), 200);
    assert_non_null(strstr(reply, "\r\nContent-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(reply, "\nkosmos_broker_dispatches_total 8\n"));
    assert_non_null(strstr(reply, "\nkosmos_broker_jobs{state=\"queued\"} 3\n"));
    assert_non_null(strstr(reply, "\nkosmos_broker_jobs_submitted_total 9\n"));
    assert_null(strstr(reply, "kosmos_broker_worker_credit{"));
    free(reply);
    assert_int_equal(http_get(port, "/other", &reply), 404);
    free(reply);

    /* destroy closes the listening socket: the port can be bound again. */
    kb_metrics_destroy(&m);
    assert_null(m);
    kb_metrics_destroy(&m);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 1), 0);
    /* ...and a taken port is an I/O error with the reason. */
    char taken[64];
    snprintf(taken, sizeof taken, "127.0.0.1:%d", port);
    assert_int_equal(kb_metrics_new(taken, &m), KS_ERR_IO);
    assert_non_null(strstr(ks_error_message(), "in use"));
    assert_null(m);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_escapes_labels),
        cmocka_unit_test(test_render_jobs),
        cmocka_unit_test(test_parse_address),
        cmocka_unit_test(test_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
