/* submit_embedded: see submit_embedded.h. The broker is single-threaded (kb_broker.h): its own
 * thread creates, runs and destroys it. The worker's kw_worker_run runs on another thread and
 * creates its compute thread itself. Both stop through their `stop` flags, as on a signal. */
#include "submit_embedded.h"

#ifdef KOSMOS_HAVE_EMBEDDED

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kb_broker.h"
#include "kosmos/client.h"
#include "kw_log.h"
#include "kw_worker.h"

struct submit_embedded {
    char dir[256];
    char client_ep[300], worker_ep[300], db[300], log_path[300];
    FILE *log;
    pthread_t broker_thread, worker_thread;
    bool broker_started, worker_started;
    volatile sig_atomic_t broker_stop, worker_stop;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int broker_state; /* 0 starting, 1 running, -1 failed to start, 2 ended */
    bool worker_ended;
    int worker_code;
    kb_stats stats;
    char error[512];
    kw_worker_params wp;
};

bool submit_embedded_available(void) { return true; }

static void *broker_main(void *arg)
{
    submit_embedded *e = arg;
    kb_params p;
    kb_params_init(&p);
    p.client_endpoint = e->client_ep;
    p.worker_endpoint = e->worker_ep;
    p.db_path = e->db;
    p.log = e->log;
    p.log_level = KS_LOG_WARN;
    kb_broker *b = NULL;
    ks_status st = kb_broker_new(&p, &b);
    pthread_mutex_lock(&e->lock);
    e->broker_state = st ? -1 : 1;
    if (st)
        snprintf(e->error, sizeof e->error, "the embedded broker failed to start: %s",
                 ks_error_message());
    pthread_cond_broadcast(&e->changed);
    pthread_mutex_unlock(&e->lock);
    if (st)
        return NULL;
    kb_broker_run(b, &e->broker_stop);
    kb_stats stats;
    kb_broker_stats(b, &stats);
    kb_broker_destroy(&b);
    pthread_mutex_lock(&e->lock);
    e->stats = stats;
    e->broker_state = 2;
    pthread_cond_broadcast(&e->changed);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

static void *worker_main(void *arg)
{
    submit_embedded *e = arg;
    int code = kw_worker_run(&e->wp, &e->worker_stop);
    pthread_mutex_lock(&e->lock);
    e->worker_ended = true;
    e->worker_code = code;
    pthread_cond_broadcast(&e->changed);
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *ent;
        char path[600];
        while ((ent = readdir(d)))
            if (strcmp(ent->d_name, ".") && strcmp(ent->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(dir);
}

/* Asks the broker for its status: true once a worker is registered. */
static bool worker_registered(kosmos_client_t *c)
{
    kosmos_broker_status_t *s = NULL;
    bool yes = kosmos_client_status(c, true, &s) == KOSMOS_OK && s->worker_count > 0;
    kosmos_broker_status_destroy(&s);
    return yes;
}

ks_status submit_embedded_start(const char *model_dir, const char *device, int max_batch,
                                submit_embedded **out)
{
    *out = NULL;
    submit_embedded *e = calloc(1, sizeof *e);
    if (!e)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->changed, NULL);
    /* sockaddr_un holds 108 bytes: fall back to /tmp for a long $TMPDIR. */
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0] || strlen(tmp) > 60)
        tmp = "/tmp";
    snprintf(e->dir, sizeof e->dir, "%s/kosmos-submit-XXXXXX", tmp);
    ks_status st = KS_OK;
    kosmos_client_t *probe = NULL;
    if (!mkdtemp(e->dir)) {
        e->dir[0] = '\0';
        st = ks_fail(KS_ERR_IO, "cannot create a temporary folder in %s", tmp);
        goto fail;
    }
    snprintf(e->client_ep, sizeof e->client_ep, "ipc://%s/client", e->dir);
    snprintf(e->worker_ep, sizeof e->worker_ep, "ipc://%s/worker", e->dir);
    snprintf(e->db, sizeof e->db, "%s/broker.db", e->dir);
    snprintf(e->log_path, sizeof e->log_path, "%s/broker.log", e->dir);
    if (!(e->log = fopen(e->log_path, "w"))) {
        st = ks_fail(KS_ERR_IO, "cannot create %s", e->log_path);
        goto fail;
    }
    if (pthread_create(&e->broker_thread, NULL, broker_main, e) != 0) {
        st = ks_fail(KS_ERR_NOMEM, "cannot start the broker thread");
        goto fail;
    }
    e->broker_started = true;
    pthread_mutex_lock(&e->lock);
    while (e->broker_state == 0)
        pthread_cond_wait(&e->changed, &e->lock);
    bool broker_ok = e->broker_state == 1;
    pthread_mutex_unlock(&e->lock);
    if (!broker_ok) {
        st = ks_fail(KS_ERR_IO, "%s", e->error);
        goto fail;
    }

    kw_worker_params_default(&e->wp);
    e->wp.broker = e->worker_ep;
    e->wp.name = "embedded";
    e->wp.engine.model_dir = model_dir;
    e->wp.engine.device = device;
    if (max_batch > 0)
        e->wp.max_batch = max_batch;
    kw_log_set_level(KS_LOG_WARN);
    if (pthread_create(&e->worker_thread, NULL, worker_main, e) != 0) {
        st = ks_fail(KS_ERR_NOMEM, "cannot start the worker thread");
        goto fail;
    }
    e->worker_started = true;

fail:
    if (st) {
        submit_embedded_stop(&e, true, NULL);
        return st;
    }
    /* Wait for the worker to load the model and register, or to give up. */
    kosmos_client_params_t cp;
    kosmos_client_params_init(&cp);
    cp.broker = e->client_ep;
    cp.client_id = "kosmos-submit-embedded-probe";
    probe = kosmos_client_new(&cp);
    for (;;) {
        pthread_mutex_lock(&e->lock);
        bool ended = e->worker_ended;
        int code = e->worker_code;
        pthread_mutex_unlock(&e->lock);
        if (ended) {
            st = ks_fail(code == KW_EXIT_CONFIG ? KS_ERR_INVALID : KS_ERR_IO,
                         "the embedded worker could not start (model %s%s%s): see the "
                         "messages above",
                         model_dir, device ? ", device " : "", device ? device : "");
            break;
        }
        if (probe && worker_registered(probe))
            break;
        nanosleep(&(struct timespec){.tv_nsec = 50 * 1000 * 1000}, NULL);
    }
    kosmos_client_destroy(&probe);
    if (st) {
        submit_embedded_stop(&e, true, NULL);
        return st;
    }
    *out = e;
    return KS_OK;
}

const char *submit_embedded_endpoint(const submit_embedded *e) { return e->client_ep; }

bool submit_embedded_failed(const submit_embedded *ce)
{
    submit_embedded *e = (submit_embedded *)ce;
    pthread_mutex_lock(&e->lock);
    bool failed = e->worker_ended || e->broker_state != 1;
    pthread_mutex_unlock(&e->lock);
    return failed;
}

void submit_embedded_stop(submit_embedded **pe, bool now, submit_embedded_stats *stats)
{
    submit_embedded *e = pe ? *pe : NULL;
    if (!e)
        return;
    pthread_mutex_lock(&e->lock);
    bool worker_running = e->worker_started && !e->worker_ended;
    pthread_mutex_unlock(&e->lock);
    if (now && worker_running) {
        /* An interrupted run about to exit: a worker inside a batch cannot be interrupted
         * (kw_worker_run would return while its compute thread still runs), so leave both
         * threads to the process exit; only the folder goes. */
        e->worker_stop = 2;
        e->broker_stop = 1;
        if (e->dir[0])
            remove_dir(e->dir);
        *pe = NULL;
        return;
    }
    if (e->worker_started) {
        e->worker_stop = 1;
        pthread_join(e->worker_thread, NULL);
    }
    if (e->broker_started) {
        e->broker_stop = 1;
        pthread_join(e->broker_thread, NULL);
    }
    if (stats)
        *stats = (submit_embedded_stats){.dispatches = e->stats.dispatches,
                                         .results_stored = e->stats.results_stored};
    if (e->log)
        fclose(e->log);
    if (e->dir[0])
        remove_dir(e->dir);
    pthread_cond_destroy(&e->changed);
    pthread_mutex_destroy(&e->lock);
    free(e);
    *pe = NULL;
}

#else /* no broker or worker library in this build */

bool submit_embedded_available(void) { return false; }

ks_status submit_embedded_start(const char *model_dir, const char *device, int max_batch,
                                submit_embedded **out)
{
    (void)model_dir, (void)device, (void)max_batch;
    *out = NULL;
    return ks_fail(KS_ERR_UNSUPPORTED, "--model: this build has no broker or worker library");
}

const char *submit_embedded_endpoint(const submit_embedded *e)
{
    (void)e;
    return "";
}

bool submit_embedded_failed(const submit_embedded *e)
{
    (void)e;
    return true;
}

void submit_embedded_stop(submit_embedded **e, bool now, submit_embedded_stats *stats)
{
    (void)e, (void)now, (void)stats;
}

#endif
