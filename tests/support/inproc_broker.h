/* inproc_broker: the broker core (kosmos_broker) inside a cmocka test's own process, for the
 * unit tests that speak to it over ZeroMQ: test_broker steps it on an injected clock,
 * test_client runs it on a thread. A fresh folder under /tmp holds the ipc:// endpoints and the
 * database; the log goes to /dev/null at WARN; a ZeroMQ context serves the test's sockets.
 * Failures are cmocka assertions. The integration tests run the real kosmos-broker instead
 * (tests/integration/farm_harness.h). Prefix ts_broker_. */
#ifndef TS_INPROC_BROKER_H
#define TS_INPROC_BROKER_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>

#include "kb_broker.h"

typedef struct ts_broker {
    char dir[64];                     /* the folder, removed by ts_broker_fini */
    char cep[128], wep[128], db[128]; /* ipc://DIR/c, ipc://DIR/w, DIR/broker.db */
    kb_params p;                      /* what the next ts_broker_start opens; change it first */
    kb_broker *b;                     /* NULL until started */
    FILE *log;
    void *zctx;
    pthread_t thread; /* ts_broker_start_thread's, while `threaded` */
    bool threaded;
    volatile sig_atomic_t stop;
} ts_broker;

/* Makes the folder (/tmp/PREFIX.XXXXXX), the endpoints, the context and p; no broker yet. */
void ts_broker_init(ts_broker *x, const char *prefix);
/* Opens a broker with x->p, closing the one before if any: a restart on the same folder, whose
 * store the new broker recovers. For a broker the test steps itself. */
void ts_broker_start(ts_broker *x);
/* Opens a broker with x->p and runs it (kb_broker_run) on a thread until ts_broker_fini. */
void ts_broker_start_thread(ts_broker *x);
/* Stops the thread, closes the broker and the context, removes the folder. The test's sockets
 * must be closed first (zmq_ctx_term waits for them). */
void ts_broker_fini(ts_broker *x);

#endif
