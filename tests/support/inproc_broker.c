/* inproc_broker: the in-process broker of the unit tests (see the header). */
#include "inproc_broker.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zmq.h>

void ts_broker_init(ts_broker *x, const char *prefix)
{
    memset(x, 0, sizeof *x);
    snprintf(x->dir, sizeof x->dir, "/tmp/%s.XXXXXX", prefix);
    assert_non_null(mkdtemp(x->dir));
    snprintf(x->cep, sizeof x->cep, "ipc://%s/c", x->dir);
    snprintf(x->wep, sizeof x->wep, "ipc://%s/w", x->dir);
    snprintf(x->db, sizeof x->db, "%s/broker.db", x->dir);
    x->log = fopen("/dev/null", "w");
    assert_non_null(x->log);
    kb_params_init(&x->p);
    x->p.client_endpoint = x->cep;
    x->p.worker_endpoint = x->wep;
    x->p.db_path = x->db;
    x->p.log = x->log;
    x->p.log_level = KS_LOG_WARN;
    x->zctx = zmq_ctx_new();
    assert_non_null(x->zctx);
}

void ts_broker_start(ts_broker *x)
{
    kb_broker_destroy(&x->b);
    assert_int_equal(kb_broker_new(&x->p, &x->b), KS_OK);
}

static void *run_main(void *arg)
{
    ts_broker *x = arg;
    kb_broker_run(x->b, &x->stop);
    return NULL;
}

void ts_broker_start_thread(ts_broker *x)
{
    ts_broker_start(x);
    assert_int_equal(pthread_create(&x->thread, NULL, run_main, x), 0);
    x->threaded = true;
}

void ts_broker_fini(ts_broker *x)
{
    if (x->threaded) {
        x->stop = 1;
        pthread_join(x->thread, NULL);
        x->threaded = false;
    }
    kb_broker_destroy(&x->b);
    zmq_ctx_term(x->zctx);
    fclose(x->log);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", x->dir);
    assert_int_equal(system(cmd), 0);
}
