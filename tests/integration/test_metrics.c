/* test_metrics: the Prometheus endpoint of a real kosmos-broker (`--metrics 127.0.0.1:0`,
 * docs/operations.md "Monitoring"), read over a plain TCP socket:
 *
 *   - the bound port comes from the broker's metrics_listening log line;
 *   - GET /metrics: 200, Content-Type text/plain; version=0.0.4, every line a HELP/TYPE comment
 *     or a sample of a declared family with a number, kosmos_broker_up 1, a jobs gauge per
 *     JobState;
 *   - after one submit (no worker), kosmos_broker_jobs_submitted_total becomes 1 and the queued
 *     gauge 1 (polled: the snapshot is up to a second old), and the commit- and sync-duration
 *     histograms have counted that commit and its sync, buckets cumulative up to +Inf = _count;
 *   - GET /nope 404, POST /metrics 405;
 *   - a second broker given --metrics on a port already taken, or a malformed --metrics, exits 1;
 *   - 16 connections from four addresses (127.0.0.2-5, the per-address limit) trickling a byte
 *     every half second, the slow-client attack that held every slot for ever: each connection
 *     is cut once it has lived KB_METRICS_CONNECTION_S, and a scrape from 127.0.0.1 succeeds.
 *
 * Usage: test_metrics BROKER. No timing thresholds: every wait is a generous poll. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "farm_harness.h"

static fh_farm farm;

typedef struct http_reply {
    int status;
    char content_type[200];
    char *body; /* NUL-terminated, caller frees */
} http_reply;

/* One HTTP/1.1 request to 127.0.0.1:port; false when no complete reply came. */
static bool http_call(int port, const char *method, const char *path, http_reply *out)
{
    memset(out, 0, sizeof *out);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fh_die("socket: %s", strerror(errno));
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[300], *buf = NULL;
    size_t len = 0, cap = 0;
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
        goto done;
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n", method,
                     path, strcmp(method, "POST") == 0 ? "Content-Length: 0\r\n" : "");
    if (write(fd, req, (size_t)n) != n)
        goto done;
    uint64_t end = fh_now_ms() + 30000;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (fh_now_ms() > end || poll(&p, 1, 1000) < 0)
            goto done;
        if (!(p.revents & (POLLIN | POLLHUP)))
            continue;
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            if (!buf)
                fh_die("out of memory");
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    if (!buf)
        goto done;
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (!body || sscanf(buf, "HTTP/1.1 %d", &out->status) != 1)
        goto done;
    *body = '\0';
    const char *ct = strstr(buf, "\r\nContent-Type: ");
    if (ct)
        sscanf(ct + 16, "%199[^\r]", out->content_type);
    out->body = strdup(body + 4);
    ok = out->body != NULL;
done:
    free(buf);
    close(fd);
    return ok;
}

/* The value of the sample line starting with `prefix` (name and labels), or -1. */
static double sample(const char *body, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *line = body; line; line = strchr(line, '\n')) {
        if (*line == '\n')
            line++;
        if (strncmp(line, prefix, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
    }
    return -1;
}

/* Every line a "# HELP"/"# TYPE" comment or `name[{labels}] value` of a family declared by a
 * TYPE line before it. Returns the number of samples, -1 on the first bad line (printed). */
static int check_exposition(const char *body)
{
    char types[200][80];
    int n_types = 0, samples = 0;
    char *copy = strdup(body), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[80];
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char type[20];
            if (sscanf(line + 7, "%79s %19s", name, type) != 2 || n_types == 200 ||
                (strcmp(type, "gauge") != 0 && strcmp(type, "counter") != 0 &&
                 strcmp(type, "histogram") != 0))
                goto bad;
            snprintf(types[n_types++], sizeof types[0], "%s", name);
            continue;
        }
        size_t k = strspn(line, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:0123456789");
        if (k == 0 || k >= sizeof name)
            goto bad;
        memcpy(name, line, k);
        name[k] = '\0';
        const char *rest = line + k;
        if (*rest == '{') {
            rest = strstr(rest, "\"} ");
            if (!rest)
                goto bad;
            rest += 2;
        }
        char *end;
        if (*rest != ' ' || (strtod(rest + 1, &end), end == rest + 1 || *end))
            goto bad;
        bool declared = false;
        for (int i = 0; i < n_types; i++) { /* a histogram's samples carry a suffix */
            size_t fl = strlen(types[i]);
            declared = declared || strcmp(types[i], name) == 0 ||
                       (strncmp(types[i], name, fl) == 0 &&
                        (strcmp(name + fl, "_bucket") == 0 || strcmp(name + fl, "_sum") == 0 ||
                         strcmp(name + fl, "_count") == 0));
        }
        if (!declared)
            goto bad;
        samples++;
        continue;
    bad:
        fprintf(stderr, "bad exposition line: %s\n", line);
        free(copy);
        return -1;
    }
    free(copy);
    return samples;
}

/* GET /metrics until 200 (the broker publishes its first snapshot within a cycle). */
static http_reply get_metrics(int port)
{
    http_reply r;
    uint64_t end = fh_now_ms() + 30000;
    for (;;) {
        if (http_call(port, "GET", "/metrics", &r) && r.status == 200)
            return r;
        free(r.body);
        if (fh_now_ms() > end)
            fh_die("GET /metrics never answered 200 (last status %d)", r.status);
        fh_sleep_ms(100);
    }
}

/* A connection from 127.0.0.`host` to the metrics port that has sent the start of a request
 * and goes on trickling (slow_trickle); -1 when the server refused it. */
static int slow_open(int port, int host)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in src = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK + (uint32_t)host - 1)};
    struct sockaddr_in dst = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof src) != 0)
        fh_die("bind 127.0.0.%d: %s", host, strerror(errno));
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0 ||
        write(fd, "GET /metrics HTTP/1.1\r\nX-Slow: ", 32) != 32) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One more byte on each open slow connection; a connection the server closed is closed here
 * too (-1) and counted in *cut. */
static void slow_trickle(int *fds, size_t n, size_t *cut)
{
    for (size_t i = 0; i < n; i++) {
        if (fds[i] < 0)
            continue;
        char buf[256];
        ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ||
            send(fds[i], "a", 1, MSG_NOSIGNAL) != 1) {
            close(fds[i]);
            fds[i] = -1;
            (*cut)++;
        }
    }
}

/* The slow clients, trickling on their own thread so that a scrape waiting for its answer
 * never lets them go idle. */
static struct {
    int fds[16];
    size_t n, cut;
    atomic_bool stop;
} slow;

static void *slow_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&slow.stop)) {
        slow_trickle(slow.fds, slow.n, &slow.cut);
        fh_sleep_ms(500);
    }
    return NULL;
}

/* The slow-client attack: while 16 connections trickle, a scrape from another address must get
 * through. The limit is a guard against the old behaviour (the slots were held for ever). */
static void check_slow_clients(int port)
{
    for (int host = 2; host <= 5; host++)
        for (int k = 0; k < 4; k++)
            slow.fds[slow.n++] = slow_open(port, host);
    size_t held = 0;
    for (size_t i = 0; i < slow.n; i++)
        held += slow.fds[i] >= 0;
    FH_CHECK(held == 16, "only %zu slow connections accepted", held);
    pthread_t t;
    if (pthread_create(&t, NULL, slow_main, NULL) != 0)
        fh_die("pthread_create");
    bool scraped = false;
    uint64_t end = fh_now_ms() + 60000;
    while (!scraped && fh_now_ms() < end) {
        http_reply r;
        scraped = http_call(port, "GET", "/metrics", &r) && r.status == 200;
        free(r.body);
        if (!scraped)
            fh_sleep_ms(200);
    }
    FH_CHECK(scraped, "no scrape got through 16 slow clients");
    end = fh_now_ms() + 30000;
    while (fh_now_ms() < end) {
        bool open = false;
        for (size_t i = 0; i < slow.n; i++)
            open = open || slow.fds[i] >= 0;
        if (!open)
            break;
        fh_sleep_ms(200);
    }
    atomic_store(&slow.stop, true);
    pthread_join(t, NULL);
    FH_CHECK(slow.cut == held, "%zu of %zu slow connections were never cut", held - slow.cut, held);
    printf("slow clients: a scrape %s; %zu slow connections cut\n",
           scraped ? "got through" : "never got through", slow.cut);
    for (size_t i = 0; i < slow.n; i++)
        if (slow.fds[i] >= 0)
            close(slow.fds[i]);
}

static int metrics_port(const char *log)
{
    uint64_t end = fh_now_ms() + 30000;
    while (fh_now_ms() < end) {
        FILE *f = fopen(log, "r");
        char line[4096];
        int port = -1;
        while (f && fgets(line, sizeof line, f)) {
            const char *a = strstr(line, "\"event\":\"metrics_listening\"");
            a = a ? strstr(line, "\"address\":\"127.0.0.1:") : NULL;
            if (a)
                port = atoi(a + strlen("\"address\":\"127.0.0.1:"));
        }
        if (f)
            fclose(f);
        if (port > 0)
            return port;
        if (!fh_alive(farm.broker_pid))
            fh_die("the broker exited before metrics_listening");
        fh_sleep_ms(50);
    }
    fh_die("no metrics_listening line in %s", log);
}

/* A broker with `--metrics value` that must exit 1 with `needle` in its output. */
static void refuses(const char *value, const char *needle)
{
    char log[400], db[400], cep[400], wep[400];
    snprintf(log, sizeof log, "%s/broker-refused.log", farm.dir);
    snprintf(db, sizeof db, "%s/refused.db", farm.dir);
    snprintf(cep, sizeof cep, "ipc://%s/refused-c", farm.dir);
    snprintf(wep, sizeof wep, "ipc://%s/refused-w", farm.dir);
    char *argv[] = {(char *)farm.broker_bin,
                    "--client-endpoint",
                    cep,
                    "--worker-endpoint",
                    wep,
                    "--db",
                    db,
                    "--metrics",
                    (char *)value,
                    NULL};
    size_t before = fh_log_count(log, needle);
    int code = fh_wait_exit(fh_spawn(argv, log, NULL), 60000);
    FH_CHECK(code == 1, "broker with --metrics %s: exit code %d, not 1", value, code);
    FH_CHECK(fh_log_count(log, needle) == before + 1, "broker with --metrics %s: no \"%s\"", value,
             needle);
    printf("--metrics %s: refused (exit %d)\n", value, code);
}

/* A duration histogram that has counted at least one event: its buckets cumulative, +Inf
 * equal to _count, a positive _sum. */
static void check_histogram(const char *body, const char *family)
{
    static const char *const le[] = {"0.00025", "0.0005", "0.001", "0.002", "0.004",
                                     "0.008",   "0.016",  "0.032", "+Inf"};
    char name[96];
    double below = 0;
    for (size_t i = 0; i < sizeof le / sizeof le[0]; i++) {
        snprintf(name, sizeof name, "%s_bucket{le=\"%s\"}", family, le[i]);
        double v = sample(body, name);
        FH_CHECK(v >= below, "%s is %g, below the bucket before it (%g)", name, v, below);
        below = v;
    }
    snprintf(name, sizeof name, "%s_count", family);
    double count = sample(body, name);
    snprintf(name, sizeof name, "%s_sum", family);
    double seconds = sample(body, name);
    FH_CHECK(count >= 1 && below == count, "%s: +Inf %g, count %g", family, below, count);
    FH_CHECK(seconds > 0, "%s: sum %g", family, seconds);
    printf("%s: %g events, %g s in all\n", family, count, seconds);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_metrics BROKER\n");
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    fh_init(&farm, argv[1], NULL, NULL);
    printf("metrics in %s\n", farm.dir);
    static const char *const extra[] = {"--metrics", "127.0.0.1:0", NULL};
    fh_start_broker(&farm, extra);
    char log[400];
    snprintf(log, sizeof log, "%s/broker.log", farm.dir);
    int port = metrics_port(log);
    printf("metrics on 127.0.0.1:%d\n", port);

    http_reply r = get_metrics(port);
    FH_CHECK(strncmp(r.content_type, "text/plain; version=0.0.4", 25) == 0, "Content-Type \"%s\"",
             r.content_type);
    int samples = check_exposition(r.body);
    FH_CHECK(samples > 20, "%d samples parsed", samples);
    FH_CHECK(sample(r.body, "kosmos_broker_up") == 1, "kosmos_broker_up not 1");
    static const char *const states[] = {"queued",  "running", "retry_wait", "done", "failed",
                                         "expired", "dead",    "cancelled",  "acked"};
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
        char name[80];
        snprintf(name, sizeof name, "kosmos_broker_jobs{state=\"%s\"}", states[i]);
        FH_CHECK(sample(r.body, name) == 0, "%s = %g, not 0", name, sample(r.body, name));
    }
    FH_CHECK(sample(r.body, "kosmos_broker_jobs_submitted_total") == 0, "submitted before any");
    FH_CHECK(sample(r.body, "kosmos_broker_memory_bound_bytes") > 0, "no memory bound");
    printf("GET /metrics: %d, %s, %d samples\n", r.status, r.content_type, samples);
    free(r.body);

    /* One job, no worker: it stays QUEUED. */
    size_t png_len = 0;
    uint8_t *png = fh_make_png(32, 24, 7, &png_len);
    fh_client *c = fh_client_new(&farm, "metrics-test", false);
    fh_job j = {.image = png, .image_len = png_len};
    char id[65] = "";
    int out = fh_submit(c, &j, id, NULL, 30000);
    FH_CHECK(out == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED, "submit outcome %d", out);
    double submitted = -1, queued = -1;
    uint64_t end = fh_now_ms() + 30000;
    while (fh_now_ms() < end) {
        r = get_metrics(port);
        submitted = sample(r.body, "kosmos_broker_jobs_submitted_total");
        queued = sample(r.body, "kosmos_broker_jobs{state=\"queued\"}");
        free(r.body);
        if (submitted == 1 && queued == 1)
            break;
        fh_sleep_ms(100);
    }
    FH_CHECK(submitted == 1, "kosmos_broker_jobs_submitted_total %g, not 1", submitted);
    FH_CHECK(queued == 1, "kosmos_broker_jobs{state=\"queued\"} %g, not 1", queued);
    printf("after one submit: submitted_total %g, queued %g\n", submitted, queued);

    r = get_metrics(port);
    check_histogram(r.body, "kosmos_broker_commit_seconds");
    check_histogram(r.body, "kosmos_broker_sync_seconds"); /* ACCEPTED waited for a sync */
    free(r.body);

    FH_CHECK(http_call(port, "GET", "/nope", &r) && r.status == 404, "GET /nope: %d", r.status);
    free(r.body);
    FH_CHECK(http_call(port, "POST", "/metrics", &r) && r.status == 405, "POST: %d", r.status);
    free(r.body);
    printf("GET /nope 404, POST /metrics 405\n");
    check_slow_clients(port);

    /* A port someone listens on: the second broker refuses to start. */
    int taken = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (taken < 0 || bind(taken, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        listen(taken, 1) != 0 || getsockname(taken, (struct sockaddr *)&sin, &sl) != 0)
        fh_die("cannot take a port: %s", strerror(errno));
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
    refuses(addr, "start_failed");
    close(taken);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port); /* the first broker's */
    refuses(addr, "start_failed");
    refuses("127.0.0.1", "bad --metrics");
    refuses("127.0.0.1:70000", "bad --metrics");

    fh_client_destroy(&c);
    free(png);
    int rc = fh_finish(&farm);
    zmq_ctx_term(farm.zctx);
    return rc;
}
