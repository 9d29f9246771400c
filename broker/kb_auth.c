/* kb_auth: see kb_auth.h. Certificates are ZPL files as CZMQ's zcert_save and pyzmq write them
 * ("curve" section with public-key and, in the _secret file, secret-key, both Z85), read with
 * ks_zpl like the worker's and libkosmos's: libzmq alone does CURVE, no CZMQ. */
#include "kb_auth.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "actor.h"
#include "ks_file.h"
#include "ks_zpl.h"

#define KB_ZAP_ENDPOINT "inproc://zeromq.zap.01"

typedef struct kb_keyset {
    char (*keys)[KS_Z85_KEY_SIZE];
    size_t n;
} kb_keyset;

struct kb_auth {
    void *zctx; /* borrowed */
    void *zap;  /* bound by the actor; closed by kb_auth_stop only, after the join */
    kp_actor *actor;
    atomic_bool alive;
    uint8_t public_key[32], secret_key[32];
    kb_keyset clients, workers;
    FILE *log; /* borrowed; NULL = stderr */
    ks_log_level log_level;
};

static ks_status kb_load_key(const char *path, const char *name, char out[KS_Z85_KEY_SIZE])
{
    char *text = NULL;
    size_t len = 0;
    /* A certificate is a few hundred bytes; the limit only keeps a wrong file from being read. */
    if (ks_file_read(path, 1 << 16, &text, &len) != KS_OK) {
        free(text);
        return ks_fail(KS_ERR_IO, "cannot read certificate %s", path);
    }
    ks_status st = KS_OK;
    uint8_t raw[32];
    if (!ks_zpl_z85_key(text, name, out) || !zmq_z85_decode(raw, out))
        st = ks_fail(KS_ERR_FORMAT, "certificate %s has no valid %s", path, name);
    memset(text, 0, len); /* a _secret file's key should not outlive its use in freed memory */
    free(text);
    return st;
}

static ks_status kb_load_dir(const char *dir, kb_keyset *set)
{
    ks_status st = KS_OK;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return ks_fail(KS_ERR_IO, "cannot open key folder %s: %s", dir, strerror(errno));
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".key") != 0)
            continue; /* *_secret files and anything else are not public certificates */
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        char key[KS_Z85_KEY_SIZE];
        if (kb_load_key(path, "public-key", key) != KS_OK)
            continue;
        void *grown = realloc(set->keys, (set->n + 1) * sizeof *set->keys);
        if (!grown) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory");
            goto cleanup;
        }
        set->keys = grown;
        memcpy(set->keys[set->n++], key, KS_Z85_KEY_SIZE);
    }
    if (set->n == 0)
        st = ks_fail(KS_ERR_INVALID, "key folder %s holds no valid public certificate", dir);
cleanup:
    closedir(d);
    return st;
}

static bool kb_keyset_has(const kb_keyset *s, const char *z85)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->keys[i], z85) == 0)
            return true;
    return false;
}

/* One ZAP request (RFC 27): version, request id, domain, address, identity, mechanism,
 * credentials... -> version, request id, status code, status text, user id, metadata. */
static void kb_zap_serve(kb_auth *a)
{
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, a->zap, 0) < 0) {
            zmq_msg_close(&m);
            goto cleanup;
        }
        more = zmq_msg_more(&m);
        if (n < 8)
            f[n++] = m;
        else
            zmq_msg_close(&m);
    }
    const char *code = "400", *text = "denied";
    char user[KS_Z85_KEY_SIZE] = "";
    if (n >= 7 && zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0 &&
        zmq_msg_size(&f[6]) == 32) {
        char domain[32] = "";
        size_t dl = zmq_msg_size(&f[2]) < sizeof domain - 1 ? zmq_msg_size(&f[2])
                                                            : sizeof domain - 1;
        memcpy(domain, zmq_msg_data(&f[2]), dl);
        zmq_z85_encode(user, zmq_msg_data(&f[6]), 32);
        const kb_keyset *set = strcmp(domain, "kosmos-client") == 0   ? &a->clients
                               : strcmp(domain, "kosmos-worker") == 0 ? &a->workers
                                                                      : NULL;
        if (set && kb_keyset_has(set, user)) {
            code = "200";
            text = "OK";
        } else {
            char esc[80], user_esc[64];
            if (a->log_level <= KS_LOG_WARN)
                ks_log(a->log, KS_LOG_WARN, ks_log_unix_ms(), "curve_denied",
                       "\"domain\":%s,\"key\":%s", ks_log_str(esc, sizeof esc, set ? domain : "?"),
                       ks_log_str(user_esc, sizeof user_esc, user));
            user[0] = '\0';
        }
    }
    if (n >= 2) {
        zmq_send(a->zap, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(a->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
        zmq_send(a->zap, code, 3, ZMQ_SNDMORE);
        zmq_send(a->zap, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(a->zap, user, strlen(user), ZMQ_SNDMORE);
        zmq_send(a->zap, "", 0, 0);
    }
cleanup:
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

/* The handler's actor: binds the ZAP endpoint, then answers requests until the stop message.
 * The socket stays bound when the thread ends: with no ZAP handler bound at all, libzmq lets
 * every CURVE client in, so a dead handler must leave requests unanswered instead. */
static ks_status kb_zap_actor(void *pipe, void *arg)
{
    kb_auth *a = arg;
    a->zap = zmq_socket(a->zctx, ZMQ_REP);
    if (!a->zap || zmq_bind(a->zap, KB_ZAP_ENDPOINT) != 0)
        return ks_fail(KS_ERR_IO, "binding the ZAP handler: %s", zmq_strerror(errno));
    atomic_store(&a->alive, true);
    ks_status st = kp_actor_ready(pipe);
    while (st == KS_OK) {
        zmq_pollitem_t it[2] = {{pipe, 0, ZMQ_POLLIN, 0}, {a->zap, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (it[0].revents & ZMQ_POLLIN)
            break; /* only the stop message comes on the pipe */
        if (it[1].revents & ZMQ_POLLIN)
            kb_zap_serve(a);
    }
    atomic_store(&a->alive, false);
    return st;
}

ks_status kb_auth_start(void *zctx, const char *secret_file, const char *client_dir,
                        const char *worker_dir, FILE *log, ks_log_level log_level, kb_auth **out)
{
    ks_status st = KS_OK;
    char pub[KS_Z85_KEY_SIZE], sec[KS_Z85_KEY_SIZE];
    kb_auth *a = calloc(1, sizeof *a);
    *out = NULL;
    if (!a)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    atomic_init(&a->alive, false);
    a->log = log;
    a->log_level = log_level;
    if ((st = kb_load_key(secret_file, "public-key", pub)) != KS_OK ||
        (st = kb_load_key(secret_file, "secret-key", sec)) != KS_OK ||
        (st = kb_load_dir(client_dir, &a->clients)) != KS_OK ||
        (st = kb_load_dir(worker_dir, &a->workers)) != KS_OK)
        goto cleanup;
    zmq_z85_decode(a->public_key, pub);
    zmq_z85_decode(a->secret_key, sec);
    a->zctx = zctx;
    if ((st = kp_actor_new(zctx, "the CURVE authenticator", kb_zap_actor, a, &a->actor)) != KS_OK)
        goto cleanup;
    *out = a;
    a = NULL;
cleanup:
    if (st != KS_OK)
        ks_error_prefix("CURVE (fail closed)");
    kb_auth_stop(&a);
    return st;
}

ks_status kb_auth_server_socket(kb_auth *a, void *sock, const char *domain)
{
    int one = 1;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, a->secret_key, 32) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, a->public_key, 32) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) != 0)
        return ks_fail(KS_ERR_IO, "CURVE socket options: %s", zmq_strerror(errno));
    return KS_OK;
}

bool kb_auth_alive(const kb_auth *a) { return atomic_load(&((kb_auth *)a)->alive); }

void kb_auth_halt(kb_auth *a) { kp_actor_destroy(&a->actor); }

void kb_auth_stop(kb_auth **pa)
{
    if (!pa || !*pa)
        return;
    kb_auth *a = *pa;
    kb_auth_halt(a);
    if (a->zap)
        zmq_close(a->zap);
    free(a->clients.keys);
    free(a->workers.keys);
    memset(a->secret_key, 0, sizeof a->secret_key);
    free(a);
    *pa = NULL;
}
