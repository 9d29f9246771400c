/* farm_harness: processes, client and ledger oracle shared by the integration tests (see the
 * header). */
#define _DEFAULT_SOURCE /* putenv */
#include "farm_harness.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int fh_failures;
fh_farm *fh_current;

void fh_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FATAL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fh_farm *f = fh_current;
    if (f) {
        if (f->broker_pid > 0)
            kill(f->broker_pid, SIGKILL);
        for (int i = 0; i < FH_MAX_WORKERS; i++)
            if (f->worker_pid[i] > 0)
                kill(f->worker_pid[i], SIGKILL);
        fprintf(stderr, "logs kept in %s\n", f->dir);
    }
    exit(1);
}

void fh_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

uint64_t fh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t fh_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- processes ------------------------------------------------------------------------------ */

pid_t fh_spawn(char *const argv[], const char *log, const char *const *env)
{
    pid_t pid = fork();
    if (pid < 0)
        fh_die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        for (size_t i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int fh_wait_exit(pid_t pid, uint64_t timeout_ms)
{
    uint64_t end = fh_now_ms() + timeout_ms;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (r < 0 || fh_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        fh_sleep_ms(20);
    }
}

bool fh_alive(pid_t pid) { return pid > 0 && waitpid(pid, NULL, WNOHANG) == 0; }

void fh_kill9(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

void fh_init(fh_farm *f, const char *broker_bin, const char *worker_bin, const char *model_dir)
{
    memset(f, 0, sizeof *f);
    f->broker_bin = broker_bin;
    f->worker_bin = worker_bin;
    f->model_dir = model_dir;
    snprintf(f->dir, sizeof f->dir, "/tmp/kosmos-farm.XXXXXX");
    if (!mkdtemp(f->dir))
        fh_die("mkdtemp: %s", strerror(errno));
    snprintf(f->cep, sizeof f->cep, "ipc://%s/client", f->dir);
    snprintf(f->wep, sizeof f->wep, "ipc://%s/worker", f->dir);
    snprintf(f->db, sizeof f->db, "%s/broker.db", f->dir);
    f->zctx = zmq_ctx_new();
    fh_current = f;
    signal(SIGPIPE, SIG_IGN);
}

void fh_start_broker(fh_farm *f, const char *const *extra)
{
    char log[300];
    snprintf(log, sizeof log, "%s/broker.log", f->dir);
    char *argv[64] = {(char *)f->broker_bin,
                      "--client-endpoint",
                      f->cep,
                      "--worker-endpoint",
                      f->wep,
                      "--db",
                      f->db,
                      "--heartbeat-ms",
                      "200",
                      "--heartbeat-liveness",
                      "5",
                      "--image-root",
                      f->dir};
    size_t n = 13;
    for (size_t i = 0; extra && extra[i] && n < 63; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    f->broker_pid = fh_spawn(argv, log, NULL);
}

void fh_start_worker(fh_farm *f, int i, const char *ep, const char *const *extra,
                     const char *const *test)
{
    char log[300], name[32];
    snprintf(log, sizeof log, "%s/worker%d.log", f->dir, i);
    snprintf(name, sizeof name, "test/w%d", i);
    char *argv[64] = {(char *)f->worker_bin,
                      "--broker",
                      (char *)(ep ? ep : f->wep),
                      "--model",
                      (char *)f->model_dir,
                      "--device",
                      "ref",
                      "--name",
                      name,
                      "--max-batch",
                      "4",
                      "--heartbeat-ms",
                      "200",
                      "--heartbeat-liveness",
                      "5",
                      "--reconnect-max-ms",
                      "1000",
                      "--stop-timeout",
                      "60"};
    size_t n = 19;
    for (size_t k = 0; extra && extra[k] && n < 63; k++)
        argv[n++] = (char *)extra[k];
    for (size_t k = 0; test && test[k] && n < 63; k++)
        argv[n++] = (char *)test[k];
    argv[n] = NULL;
    f->worker_pid[i] = fh_spawn(argv, log, NULL);
}

int fh_finish(fh_farm *f)
{
    for (int i = 0; i < FH_MAX_WORKERS; i++)
        if (f->worker_pid[i] > 0)
            kill(f->worker_pid[i], SIGTERM);
    for (int i = 0; i < FH_MAX_WORKERS; i++) {
        if (f->worker_pid[i] > 0) {
            int code = fh_wait_exit(f->worker_pid[i], 60000);
            FH_CHECK(code == 0, "worker %d exit code %d after SIGTERM", i, code);
            f->worker_pid[i] = 0;
        }
    }
    if (f->broker_pid > 0) {
        kill(f->broker_pid, SIGTERM);
        int code = fh_wait_exit(f->broker_pid, 30000);
        FH_CHECK(code == 0, "broker exit code %d after SIGTERM", code);
        f->broker_pid = 0;
    }
    if (fh_failures) {
        fprintf(stderr, "%d check(s) failed; logs kept in %s\n", fh_failures, f->dir);
        return 1;
    }
    if (!getenv("FH_KEEP")) {
        char *rm[] = {"/bin/rm", "-rf", f->dir, NULL};
        char devnull[] = "/dev/null";
        fh_wait_exit(fh_spawn(rm, devnull, NULL), 30000);
    }
    printf("PASS\n");
    return 0;
}

/* ---- CURVE certificates ---------------------------------------------------------------------- */

fh_key fh_cert(const char *dir, const char *secret_dir, const char *name)
{
    fh_key k;
    if (zmq_curve_keypair(k.pub, k.sec) != 0)
        fh_die("zmq_curve_keypair: %s (libzmq without CURVE?)", zmq_strerror(errno));
    char path[600];
    for (int secret = 0; secret < 2; secret++) {
        if (secret && !secret_dir)
            break;
        snprintf(path, sizeof path, "%s/%s.key%s", secret ? secret_dir : dir, name,
                 secret ? "_secret" : "");
        FILE *f = fopen(path, "w");
        if (!f)
            fh_die("cannot write %s", path);
        fprintf(f,
                "#   ZeroMQ CURVE %s Certificate\n#   made by farm_harness\n\nmetadata\n"
                "    name = \"%s\"\ncurve\n    public-key = \"%s\"\n",
                secret ? "**Secret**" : "Public", name, k.pub);
        if (secret)
            fprintf(f, "    secret-key = \"%s\"\n", k.sec);
        fclose(f);
    }
    return k;
}

/* ---- client --------------------------------------------------------------------------------- */

void fh_client_reopen(fh_client *c)
{
    if (c->sock)
        zmq_close(c->sock);
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (c->curve_public[0]) {
        zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->curve_public, 40);
        zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->curve_secret, 40);
        zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, c->curve_server, 40);
    }
    if (zmq_connect(c->sock, c->farm->cep) != 0)
        fh_die("connect %s: %s", c->farm->cep, zmq_strerror(errno));
}

fh_client *fh_client_new(fh_farm *f, const char *client_id, bool own_ctx)
{
    fh_client *c = calloc(1, sizeof *c);
    if (!c)
        fh_die("out of memory");
    c->farm = f;
    c->zctx = own_ctx ? zmq_ctx_new() : f->zctx;
    snprintf(c->client_id, sizeof c->client_id, "%s", client_id);
    c->next_rid = 1;
    fh_client_reopen(c);
    return c;
}

void fh_client_set_curve(fh_client *c, const char *pub, const char *sec, const char *server)
{
    snprintf(c->curve_public, sizeof c->curve_public, "%s", pub);
    snprintf(c->curve_secret, sizeof c->curve_secret, "%s", sec);
    snprintf(c->curve_server, sizeof c->curve_server, "%s", server);
    fh_client_reopen(c);
}

void fh_client_destroy(fh_client **c)
{
    if (!c || !*c)
        return;
    zmq_close((*c)->sock);
    if ((*c)->zctx != (*c)->farm->zctx)
        zmq_ctx_term((*c)->zctx);
    free(*c);
    *c = NULL;
}

kp_inbound *fh_call(fh_client *c, Kosmos__V1__ClientRequest *req, const void *image,
                    size_t image_len, int timeout_ms)
{
    req->has_request_id = true;
    req->request_id = c->next_rid++;
    req->client_id = c->client_id;
    zmq_msg_t img;
    if (image) {
        zmq_msg_init_size(&img, image_len);
        memcpy(zmq_msg_data(&img), image, image_len);
    }
    if (kp_send(c->sock, NULL, 0, &req->base, image ? &img : NULL, ZMQ_DONTWAIT) != KS_OK)
        return NULL; /* nothing connected / queue full: as a lost reply */
    uint64_t end = fh_now_ms() + (uint64_t)timeout_ms;
    while (fh_now_ms() < end) {
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        kp_inbound *in = NULL;
        if (kp_recv(c->sock, false, KP_CLIENT_REPLY, NULL, 0, &in) != KS_OK || !in)
            continue;
        if (kp_inbound_verdict(in) == KP_VALID && kp_inbound_request_id(in) == req->request_id)
            return in;
        kp_inbound_destroy(&in);
    }
    return NULL;
}

const Kosmos__V1__ClientReply *fh_reply(const kp_inbound *in)
{
    return (const Kosmos__V1__ClientReply *)kp_inbound_envelope(in);
}

void fh_submit_request(const fh_job *j, Kosmos__V1__ClientRequest *req, fh_submit_store *s)
{
    kosmos__v1__client_request__init(req);
    kosmos__v1__submit_request__init(&s->sub);
    kosmos__v1__job__init(&s->job);
    kosmos__v1__generation_params__init(&s->gen);
    kosmos__v1__prompt__init(&s->prompt);
    s->prompt.text = (char *)(j->prompt ? j->prompt : "<grounding>An image of");
    s->pp[0] = &s->prompt;
    s->job.n_prompts = 1;
    s->job.prompts = s->pp;
    s->job.idempotency_key = (char *)j->key;
    if (j->uri) {
        s->job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_URI;
        s->job.image_uri = (char *)j->uri;
    } else {
        s->job.image_case = KOSMOS__V1__JOB__IMAGE_IMAGE_ATTACHED_SIZE;
        s->job.image_attached_size = j->image_len;
    }
    s->gen.has_max_new_tokens = true;
    s->gen.max_new_tokens = j->max_new_tokens ? j->max_new_tokens : 2;
    s->gen.has_min_new_tokens = j->min_new_tokens > 0;
    s->gen.min_new_tokens = j->min_new_tokens;
    s->job.generation = &s->gen;
    if (j->deadline_unix_ms) {
        s->job.has_deadline_unix_ms = true;
        s->job.deadline_unix_ms = j->deadline_unix_ms;
    }
    s->sub.job = &s->job;
    req->request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_SUBMIT;
    req->submit = &s->sub;
}

int fh_submit(fh_client *c, const fh_job *j, char *job_id, bool *duplicate, int timeout_ms)
{
    Kosmos__V1__ClientRequest req;
    fh_submit_store store;
    fh_submit_request(j, &req, &store);
    kp_inbound *in = fh_call(c, &req, j->uri ? NULL : j->image, j->image_len, timeout_ms);
    if (!in)
        return -1;
    const Kosmos__V1__ClientReply *r = fh_reply(in);
    int out = -2;
    if (r->reply_case == KOSMOS__V1__CLIENT_REPLY__REPLY_SUBMIT) {
        out = (int)r->submit->outcome_case;
        if (r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_ACCEPTED) {
            if (job_id)
                snprintf(job_id, 65, "%s", r->submit->accepted->job_id);
            if (duplicate)
                *duplicate = r->submit->accepted->duplicate;
        } else if (r->submit->outcome_case == KOSMOS__V1__SUBMIT_REPLY__OUTCOME_CONFLICT &&
                   job_id) {
            snprintf(job_id, 65, "%s", r->submit->conflict->job_id);
        }
    }
    kp_inbound_destroy(&in);
    return out;
}

kp_inbound *fh_fetch(fh_client *c, const char *job_id, int timeout_ms)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__FetchRequest f = KOSMOS__V1__FETCH_REQUEST__INIT;
    f.job_id = (char *)job_id;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
    req.fetch = &f;
    kp_inbound *in = fh_call(c, &req, NULL, 0, timeout_ms);
    if (in && fh_reply(in)->reply_case != KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH)
        kp_inbound_destroy(&in);
    return in;
}

static bool terminal(int state) { return state >= KOSMOS__V1__JOB_STATE__JOB_STATE_DONE; }

kp_inbound *fh_fetch_final(fh_client *c, const char *job_id, uint64_t timeout_ms)
{
    uint64_t end = fh_now_ms() + timeout_ms;
    kp_inbound *last = NULL;
    while (fh_now_ms() < end) {
        uint64_t left = end - fh_now_ms();
        Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
        Kosmos__V1__FetchRequest f = KOSMOS__V1__FETCH_REQUEST__INIT;
        f.job_id = (char *)job_id;
        f.has_wait_ms = true;
        f.wait_ms = left < 5000 ? (uint32_t)left : 5000;
        req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_FETCH;
        req.fetch = &f;
        kp_inbound *in = fh_call(c, &req, NULL, 0, (int)f.wait_ms + 5000);
        if (!in) {
            fh_client_reopen(c); /* a lost reply (broker restart): resend on a fresh socket */
            fh_sleep_ms(100);
            continue;
        }
        const Kosmos__V1__ClientReply *r = fh_reply(in);
        if (r->reply_case != KOSMOS__V1__CLIENT_REPLY__REPLY_FETCH) {
            kp_inbound_destroy(&in);
            fh_sleep_ms(100);
            continue;
        }
        kp_inbound_destroy(&last);
        last = in;
        if (terminal((int)r->fetch->state))
            return last;
    }
    return last;
}

kp_inbound *fh_status(fh_client *c, int timeout_ms)
{
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest s = KOSMOS__V1__STATUS_REQUEST__INIT;
    s.has_include_workers = true;
    s.include_workers = true;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &s;
    kp_inbound *in = fh_call(c, &req, NULL, 0, timeout_ms);
    if (in && fh_reply(in)->reply_case != KOSMOS__V1__CLIENT_REPLY__REPLY_STATUS)
        kp_inbound_destroy(&in);
    return in;
}

int fh_worker_count(fh_client *c)
{
    kp_inbound *in = fh_status(c, 2000);
    if (!in)
        return -1;
    int n = (int)fh_reply(in)->status->n_workers;
    kp_inbound_destroy(&in);
    return n;
}

void fh_wait_workers(fh_client *c, int n, uint64_t timeout_ms)
{
    uint64_t end = fh_now_ms() + timeout_ms;
    while (fh_now_ms() < end) {
        int got = fh_worker_count(c);
        if (got == n)
            return;
        if (got < 0)
            fh_client_reopen(c);
        fh_sleep_ms(100);
    }
    fh_die("the broker never listed %d workers", n);
}

long fh_state_count(const Kosmos__V1__StatusReply *s, int state)
{
    for (size_t i = 0; i < s->n_queue; i++)
        if ((int)s->queue[i]->state == state)
            return (long)s->queue[i]->count;
    return 0;
}

/* ---- images --------------------------------------------------------------------------------- */

static uint32_t crc32_buf(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static void be32(uint8_t *o, uint32_t v)
{
    o[0] = (uint8_t)(v >> 24);
    o[1] = (uint8_t)(v >> 16);
    o[2] = (uint8_t)(v >> 8);
    o[3] = (uint8_t)v;
}

static size_t chunk(uint8_t *out, const char *type, const uint8_t *data, uint32_t len)
{
    be32(out, len);
    memcpy(out + 4, type, 4);
    if (len)
        memcpy(out + 8, data, len);
    be32(out + 8 + len, crc32_buf(out + 4, len + 4));
    return 12 + len;
}

uint8_t *fh_make_png(uint32_t w, uint32_t h, uint32_t seed, size_t *len)
{
    size_t raw_len = (size_t)h * (1 + 3 * (size_t)w);
    size_t blocks = raw_len / 65535 + 1;
    uint8_t *raw = malloc(raw_len);
    uint8_t *z = malloc(raw_len + 5 * blocks + 6);
    uint8_t *out = malloc(raw_len + 5 * blocks + 6 + 64);
    if (!raw || !z || !out)
        fh_die("out of memory");
    uint32_t x = seed * 2654435761u + 1;
    for (size_t r = 0, k = 0; r < h; r++) {
        raw[k++] = 0;
        for (size_t i = 0; i < 3 * (size_t)w; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            raw[k++] = (uint8_t)x;
        }
    }
    size_t zn = 0;
    z[zn++] = 0x78;
    z[zn++] = 0x01;
    for (size_t off = 0; off < raw_len || off == 0;) {
        size_t n = raw_len - off > 65535 ? 65535 : raw_len - off;
        z[zn++] = off + n == raw_len ? 1 : 0;
        z[zn++] = (uint8_t)n;
        z[zn++] = (uint8_t)(n >> 8);
        z[zn++] = (uint8_t)~n;
        z[zn++] = (uint8_t)(~n >> 8);
        memcpy(z + zn, raw + off, n);
        zn += n;
        off += n;
        if (n == 0)
            break;
    }
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < raw_len; i++) {
        a = (a + raw[i]) % 65521;
        b = (b + a) % 65521;
    }
    be32(z + zn, (b << 16) | a);
    zn += 4;
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    uint8_t ihdr[13];
    be32(ihdr, w);
    be32(ihdr + 4, h);
    ihdr[8] = 8, ihdr[9] = 2, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0;
    size_t n = 0;
    memcpy(out, sig, 8);
    n += 8;
    n += chunk(out + n, "IHDR", ihdr, sizeof ihdr);
    n += chunk(out + n, "IDAT", z, (uint32_t)zn);
    n += chunk(out + n, "IEND", NULL, 0);
    free(raw);
    free(z);
    *len = n;
    return out;
}

/* ---- ledger + oracle ------------------------------------------------------------------------ */

void fh_ledger_add(fh_ledger *l, const char *id)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->ids = realloc(l->ids, l->cap * sizeof *l->ids);
        if (!l->ids)
            fh_die("out of memory");
    }
    snprintf(l->ids[l->n++], 65, "%s", id);
}

bool fh_ledger_has(const fh_ledger *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->ids[i], id) == 0)
            return true;
    return false;
}

void fh_ledger_free(fh_ledger *l)
{
    free(l->ids);
    memset(l, 0, sizeof *l);
}

const char *fh_job_field(const char *id)
{
    static char field[2][100];
    static int next;
    char *f = field[next++ % 2];
    snprintf(f, sizeof field[0], "\"job\":\"%s\"", id);
    return f;
}

size_t fh_log_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[8192];
    size_t n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

typedef struct dispatch_rec {
    char job[65];
    uint32_t attempt;
} dispatch_rec;

static int rec_cmp(const void *a, const void *b)
{
    const dispatch_rec *x = a, *y = b;
    int c = strcmp(x->job, y->job);
    return c ? c : (x->attempt > y->attempt) - (x->attempt < y->attempt);
}

void fh_oracle_run(fh_client *c, const fh_ledger *l, unsigned expect_mask, uint64_t timeout_ms,
                   fh_oracle *o)
{
    fh_oracle_run_in(c, l, l, expect_mask, timeout_ms, o);
}

void fh_oracle_run_in(fh_client *c, const fh_ledger *l, const fh_ledger *all, unsigned expect_mask,
                      uint64_t timeout_ms, fh_oracle *o)
{
    memset(o, 0, sizeof *o);
    uint64_t end = fh_now_ms() + timeout_ms;
    for (size_t i = 0; i < l->n; i++) {
        uint64_t now = fh_now_ms();
        kp_inbound *in = fh_fetch_final(c, l->ids[i], now < end ? end - now : 1);
        const Kosmos__V1__FetchReply *f = in ? fh_reply(in)->fetch : NULL;
        if (!f || !terminal((int)f->state)) {
            o->lost++;
            fprintf(stderr, "oracle: job %s lost (state %d)\n", l->ids[i], f ? (int)f->state : -1);
        } else {
            o->terminal++;
            o->by_state[(unsigned)f->state & 15u]++;
            if (expect_mask && !(expect_mask & (1u << ((unsigned)f->state & 15u)))) {
                o->unexpected++;
                fprintf(stderr, "oracle: job %s ended in state %d, expected mask %#x (%s)\n",
                        l->ids[i], (int)f->state, expect_mask,
                        f->result && f->result->message ? f->result->message : "");
            }
            if (f->result && f->result->attempt > o->max_attempt)
                o->max_attempt = f->result->attempt;
        }
        kp_inbound_destroy(&in);
    }
    /* The workers' ledgers: one "dispatch" log line per (job, attempt) received. */
    dispatch_rec *recs = NULL;
    size_t n = 0, cap = 0;
    for (int w = 0; w < FH_MAX_WORKERS; w++) {
        char path[400], line[8192];
        snprintf(path, sizeof path, "%s/worker%d.log", c->farm->dir, w);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            if (!strstr(line, "\"event\":\"dispatch\""))
                continue;
            const char *j = strstr(line, "\"job\":\""), *a = strstr(line, "\"attempt\":");
            if (!j || !a)
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                recs = realloc(recs, cap * sizeof *recs);
                if (!recs)
                    fh_die("out of memory");
            }
            j += 7;
            size_t len = strcspn(j, "\"");
            snprintf(recs[n].job, sizeof recs[n].job, "%.*s", (int)(len < 64 ? len : 64), j);
            recs[n].attempt = (uint32_t)strtoul(a + 10, NULL, 10);
            n++;
        }
        if (f)
            fclose(f);
    }
    o->dispatches = n;
    if (n)
        qsort(recs, n, sizeof *recs, rec_cmp);
    for (size_t i = 0; i < n;) {
        size_t k = i + 1;
        while (k < n && strcmp(recs[k].job, recs[i].job) == 0)
            k++;
        if (!fh_ledger_has(all, recs[i].job)) {
            o->unexpected++;
            fprintf(stderr, "oracle: worker ran job %s, which no client was told about\n",
                    recs[i].job);
        }
        if (k - i > 1 && (l == all || fh_ledger_has(l, recs[i].job))) {
            o->duplicates++;
            /* distinct attempts (sorted), and every later one > 1 */
            for (size_t m = i + 1; m < k; m++) {
                if (recs[m].attempt == recs[m - 1].attempt || recs[m].attempt <= 1) {
                    o->bad_duplicates++;
                    fprintf(stderr, "oracle: job %s dispatched twice as attempt %u\n", recs[m].job,
                            recs[m].attempt);
                    break;
                }
            }
        }
        i = k;
    }
    free(recs);
    printf("oracle: %zu jobs, %zu terminal, lost %zu, unexpected %zu, duplicates %zu (bad %zu), "
           "%zu dispatches, max attempt %u\n",
           l->n, o->terminal, o->lost, o->unexpected, o->duplicates, o->bad_duplicates,
           o->dispatches, o->max_attempt);
}

void fh_oracle_assert(const fh_oracle *o, const char *what)
{
    FH_CHECK(o->lost == 0, "%s: %zu jobs lost", what, o->lost);
    FH_CHECK(o->unexpected == 0, "%s: %zu unexpected", what, o->unexpected);
    FH_CHECK(o->bad_duplicates == 0, "%s: %zu duplicates with attempt 1 or a repeated attempt",
             what, o->bad_duplicates);
}
