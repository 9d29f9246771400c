/* fuzz_broker: multipart messages through a real broker core - kp_recv's classification and
 * the broker's request handling (kb_clients.c / kb_workers.c) down to the store - on both
 * endpoints. One kb_broker per process: an in-memory SQLite database, ipc:// endpoints in a
 * temporary folder, an injected clock; a DEALER per endpoint plays the peer. Not a protocol
 * conformance test: it checks that no input crashes, leaks or trips a sanitizer, and that the
 * broker keeps answering a status request after every input.
 *
 * Input layout (the frame split comes from the input):
 *   byte 0   bit 0: worker endpoint (else client); bit 1: prepend the empty delimiter and the
 *            "KOSMOS1" version frame (protocol.md §2);
 *            bits 2-4: n, the number of length-prefixed frames before the last one;
 *            bit 5: advance the clock by an hour first (leases lapse, deadlines pass, gc runs)
 *   then n times: a 2-byte little-endian length and that many bytes (clamped to what is left)
 *   the rest    the last frame (may be empty)
 * Seeds: corpus/fuzz_broker/, the proto seeds of ClientRequest and WorkerMessage wrapped in
 * this layout (byte 0 = 0x02 or 0x03). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "kb_broker.h"
#include "kb_internal.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static kb_broker *broker;
static void *zctx, *client, *worker;
static uint64_t fake_now = 1700000000000ull;
static uint64_t rng = 88172645463325252ull;
static char dir[64];

static uint64_t fz_clock(void *ctx)
{
    (void)ctx;
    return fake_now;
}

static uint64_t fz_rand(void *ctx)
{
    (void)ctx;
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fz_cleanup(void)
{
    if (client)
        zmq_close(client);
    if (worker)
        zmq_close(worker);
    if (zctx)
        zmq_ctx_term(zctx);
    kb_broker_destroy(&broker);
    char path[128];
    snprintf(path, sizeof path, "%s/c", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/w", dir);
    unlink(path);
    rmdir(dir);
}

static void *fz_dealer(const char *ep)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_connect(s, ep) != 0)
        abort();
    return s;
}

static void fz_setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/fuzz_broker.XXXXXX");
    if (!mkdtemp(dir))
        abort();
    static char cep[128], wep[128];
    snprintf(cep, sizeof cep, "ipc://%s/c", dir);
    snprintf(wep, sizeof wep, "ipc://%s/w", dir);
    kb_params p;
    kb_params_init(&p);
    p.client_endpoint = cep;
    p.worker_endpoint = wep;
    p.db_path = ":memory:";
    p.clock = fz_clock;
    p.rand = fz_rand;
    p.log = fopen("/dev/null", "w");
    p.log_level = KS_LOG_ERROR;
    p.max_queued = 512; /* the store stays small however long the run */
    p.max_client_jobs = 256;
    p.heartbeat_ms = 1000;
    static const char *roots[] = {"/tmp"};
    p.image_roots = roots;
    p.n_image_roots = 1;
    if (kb_broker_new(&p, &broker) != KS_OK) {
        fprintf(stderr, "fuzz_broker: %s\n", ks_error_message());
        abort();
    }
    zctx = zmq_ctx_new();
    client = fz_dealer(cep);
    worker = fz_dealer(wep);
    atexit(fz_cleanup);
}

static void fz_drain(void *s)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (zmq_msg_recv(&m, s, ZMQ_DONTWAIT) >= 0)
        ;
    zmq_msg_close(&m);
}

/* Steps the broker until `sock` (one of its ROUTERs) has been read empty; waits for the first
 * message to arrive (ipc:// is asynchronous) for at most 1 s. */
static void fz_pump(void *sock)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 1000) <= 0)
        return;
    for (int i = 0; i < 64; i++) {
        if (kb_broker_step(broker, 0) != KS_OK)
            abort(); /* the store of :memory: never fails: a step error is a bug */
        it.revents = 0;
        if (zmq_poll(&it, 1, 0) <= 0)
            break;
    }
}

/* A status request on the client endpoint must be answered after every input. */
static void fz_check_alive(void)
{
    static uint64_t rq = 1u << 30;
    Kosmos__V1__ClientRequest req = KOSMOS__V1__CLIENT_REQUEST__INIT;
    Kosmos__V1__StatusRequest sr = KOSMOS__V1__STATUS_REQUEST__INIT;
    req.has_request_id = true;
    req.request_id = ++rq;
    req.request_case = KOSMOS__V1__CLIENT_REQUEST__REQUEST_STATUS;
    req.status = &sr;
    fz_drain(client);
    if (kp_send(client, NULL, 0, &req.base, NULL, 0) != KS_OK)
        abort();
    /* On a busy machine ipc:// delivery can lag: keep stepping while waiting (about 7 s in
     * all, under run.sh's -timeout=10). */
    fz_pump(broker->client_sock);
    for (int round = 0; round < 48; round++) {
        zmq_pollitem_t it = {client, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0) {
            if (kb_broker_step(broker, 25) != KS_OK)
                abort();
            continue;
        }
        kp_inbound *in = NULL;
        if (kp_recv(client, false, KP_CLIENT_REPLY, NULL, 0, &in) != KS_OK || !in)
            abort();
        bool ours = kp_inbound_verdict(in) == KP_VALID && kp_inbound_request_id(in) == rq;
        kp_inbound_destroy(&in);
        if (ours)
            return;
    }
    fprintf(stderr, "fuzz_broker: no status reply after an input\n");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!broker)
        fz_setup();
    if (size < 1)
        return 0;
    uint8_t head = data[0];
    data++;
    size--;
    void *peer = (head & 1) ? worker : client;
    void *router = (head & 1) ? broker->worker_sock : broker->client_sock;
    unsigned n = (head >> 2) & 7;
    if (head & 0x20)
        fake_now += 3600 * 1000;
    else
        fake_now += 10;
    const uint8_t *frames[10];
    size_t lens[10];
    unsigned nf = 0;
    if (head & 2) {
        frames[nf] = (const uint8_t *)"";
        lens[nf++] = 0;
        frames[nf] = (const uint8_t *)KP_VERSION;
        lens[nf++] = KP_VERSION_LEN;
    }
    for (unsigned i = 0; i < n; i++) {
        size_t len = size >= 2 ? (size_t)data[0] | (size_t)data[1] << 8 : 0;
        size_t skip = size >= 2 ? 2 : size;
        data += skip;
        size -= skip;
        if (len > size)
            len = size;
        frames[nf] = data;
        lens[nf++] = len;
        data += len;
        size -= len;
    }
    frames[nf] = data;
    lens[nf++] = size;
    for (unsigned i = 0; i < nf; i++)
        if (zmq_send(peer, frames[i], lens[i], i + 1 < nf ? ZMQ_SNDMORE : 0) < 0)
            abort();
    fz_pump(router);
    fz_drain(worker);
    fz_check_alive();
    return 0;
}
