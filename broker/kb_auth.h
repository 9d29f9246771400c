/* kb_auth: CURVE for both broker endpoints (docs/protocol.md §11), with libzmq alone: the
 * broker's certificate and a ZAP handler of our own (RFC 27) that chooses the allowed-keys
 * folder by ZAP domain ("kosmos-client" or "kosmos-worker"), so a client key is no use on the
 * worker endpoint (CZMQ's zauth keeps one certificate store per context, and is not used).
 * Fail closed: the handler is bound before any socket binds, folders without a valid key refuse
 * to start, and the broker stops when the handler thread is gone. The User-Id it returns is the
 * peer's public key in Z85 (the client identity, §4). The handler is an actor (proto/actor.h). */
#ifndef KB_AUTH_H
#define KB_AUTH_H

#include <stdbool.h>
#include <stdio.h>

#include "ks_error.h"
#include "ks_log.h"

typedef struct kb_auth kb_auth;

/* Loads the secret certificate and both key folders (ZPL files as CZMQ's zcert_save and pyzmq
 * write them; in a folder, every NAME.key) and starts the handler thread, which binds
 * inproc://zeromq.zap.01 in `zctx` before this returns. The thread logs refused keys
 * (curve_denied) to `log` (borrowed until stop; NULL = stderr) when `log_level` lets warnings
 * through, stamped with the wall clock (an injected broker clock is not the thread's to call).
 * Caller owns *out. */
ks_status kb_auth_start(void *zctx, const char *secret_file, const char *client_dir,
                        const char *worker_dir, FILE *log, ks_log_level log_level, kb_auth **out);
/* Makes `sock` a CURVE server with the broker's keys in ZAP domain `domain`; before bind. */
ks_status kb_auth_server_socket(kb_auth *a, void *sock, const char *domain);
bool kb_auth_alive(const kb_auth *a);
/* Ends the handler thread and keeps the rest: ZAP requests then go unanswered (no peer gets in)
 * and kb_auth_alive turns false. The first half of kb_auth_stop; the fail-closed test calls
 * it alone to stand for a handler that died. */
void kb_auth_halt(kb_auth *a);
void kb_auth_stop(kb_auth **a);

#endif
