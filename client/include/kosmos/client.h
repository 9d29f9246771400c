/* kosmos/client.h: libkosmos, the C client library of kosmos-farm.
 *
 * What it is for: submitting images with prompts to a kosmos-farm broker (Kosmos-2 grounded
 * captioning), waiting for or fetching their results, cancelling jobs and reading the broker's
 * status, without touching ZeroMQ or protobuf. It speaks the KOSMOS1 protocol of
 * docs/protocol.md and takes care of what that document asks of a client: request ids, late
 * replies, timeouts with resend on a fresh socket ("lazy pirate"), idempotency keys, frame
 * limits, CURVE.
 * What it is not: a worker or a broker, and not an in-process inference engine.
 *
 * A minimal program (client/examples/ground.c is a complete one):
 *
 *     kosmos_client_params_t p;
 *     kosmos_client_params_init(&p);
 *     p.broker = "tcp://localhost:5555";
 *     kosmos_client_t *c = kosmos_client_new(&p);
 *     kosmos_result_t *r = NULL;
 *     if (c && kosmos_ground_file(c, "snowman.png", NULL, 60000, &r) == KOSMOS_OK)
 *         printf("%s\n", kosmos_result_text(r, 0));
 *     else
 *         fprintf(stderr, "kosmos: %s\n", kosmos_error_message());
 *     kosmos_result_destroy(&r);
 *     kosmos_client_destroy(&c);
 *
 * Conventions
 * - Every function that can fail returns a kosmos_error_t (KOSMOS_OK = 0) and leaves a
 *   human-readable message for the calling thread, read with kosmos_error_message(). `_new`
 *   functions return NULL on failure (message set likewise). The library never exits, aborts
 *   or prints.
 * - `_destroy(T **p)` accepts NULL and *p == NULL, and sets *p = NULL.
 * - Every pointer argument and return says who owns it. "Borrowed until X" means the memory
 *   belongs to the library and stays valid until X; copy it to keep it longer.
 * - Strings are UTF-8 and NUL-terminated. Times are unix milliseconds; durations milliseconds.
 * - Structs that the library hands out by const pointer (kosmos_entity_t, kosmos_timings_t,
 *   kosmos_worker_info_t, kosmos_broker_status_t) may grow new fields at their end in later
 *   versions: never allocate or copy them by value in code that must survive an upgrade.
 *   Structs the caller fills (params, kosmos_generation_t, kosmos_box_t) are initialised with
 *   their `_init` function first, so that new fields get their defaults.
 *
 * Thread safety
 * - A kosmos_client_t is NOT thread-safe: use it from one thread at a time (one client per
 *   thread is the simple way; calls serialised by a mutex of your own work too, since the
 *   mutex orders memory as ZeroMQ requires when a socket moves between threads). Distinct
 *   clients may be used concurrently; they share nothing.
 * - kosmos_job_t: one thread at a time. It is only read by kosmos_client_submit, so one job may
 *   be submitted by several clients on several threads at once if nobody modifies it then.
 * - kosmos_result_t and kosmos_broker_status_t are immutable: any number of threads may read
 *   them at once; destroy them once, after the readers are done.
 * - The error message is per thread: kosmos_error_message() describes the last failure on the
 *   calling thread.
 *
 * Link: pkg-config --cflags --libs kosmos (add --static for libkosmos.a), or in CMake
 * find_package(kosmos) and target_link_libraries(app PRIVATE kosmos::kosmos) (or
 * kosmos::kosmos_static). */
#ifndef KOSMOS_CLIENT_H
#define KOSMOS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* KOSMOS_API marks the exported functions (the shared library is built with hidden visibility).
 * Define KOSMOS_STATIC_DEFINE to drop the attribute (not needed on ELF platforms). */
#if defined(KOSMOS_STATIC_DEFINE)
#define KOSMOS_API
#elif defined(__GNUC__) || defined(__clang__)
#define KOSMOS_API __attribute__((visibility("default")))
#else
#define KOSMOS_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ------------------------------------------------------------------------------ */

#define KOSMOS_VERSION_MAJOR 0
#define KOSMOS_VERSION_MINOR 1
#define KOSMOS_VERSION_PATCH 0

/* The library's version, "MAJOR.MINOR.PATCH" (of the library linked at run time, which may be
 * newer than this header). Static storage. */
KOSMOS_API const char *kosmos_version(void);

/* ---- errors -------------------------------------------------------------------------------- */

typedef enum kosmos_error {
    KOSMOS_OK = 0,
    KOSMOS_ERR_INVALID = 1,       /* a bad argument (NULL where one is needed, out of range) */
    KOSMOS_ERR_NOMEM = 2,         /* an allocation failed */
    KOSMOS_ERR_IO = 3,            /* a file could not be read, or a socket call failed */
    KOSMOS_ERR_TIMEOUT = 4,       /* the broker did not answer, resends included */
    KOSMOS_ERR_BUSY = 5,          /* submit: the queue is full; nothing stored; retry later
                                    * with the same idempotency key (info.retry_after_ms) */
    KOSMOS_ERR_CONFLICT = 6,      /* submit: the idempotency key was used before with other
                                    * job contents; info.job_id is the earlier job */
    KOSMOS_ERR_REJECTED = 7,      /* submit: the job is invalid and will never run
                                    * (info.reject_code; the message gives the reason) */
    KOSMOS_ERR_NOT_FOUND = 8,     /* no such job under this client identity (or forgotten) */
    KOSMOS_ERR_INVALID_STATE = 9, /* e.g. ack of a job that is not terminal, or waiting for a
                                    * result that was acked (deleted) */
    KOSMOS_ERR_TOO_LARGE = 10,    /* a message or image over the limits (protocol.md §10) */
    KOSMOS_ERR_UNAVAILABLE = 11,  /* the broker is shutting down or failed internally; the
                                    * request had no effect: retry after a pause */
    KOSMOS_ERR_PROTOCOL = 12,     /* a malformed reply, another protocol version, or the
                                    * broker called our request malformed: not retriable */
    KOSMOS_ERR_UNSUPPORTED = 13,  /* the broker does not know this request, or this libzmq
                                    * has no CURVE */
    KOSMOS_ERR_PENDING = 14       /* kosmos_client_wait: the job was not terminal when the
                                    * timeout passed (it keeps running; wait again later) */
} kosmos_error_t;

/* The message of the calling thread's last failure ("" if none). Borrowed until the next
 * failing libkosmos call on this thread. */
KOSMOS_API const char *kosmos_error_message(void);

/* Short name of a code, e.g. "busy", "timeout". Static storage; "unknown" for other values. */
KOSMOS_API const char *kosmos_error_name(kosmos_error_t code);

/* ---- enums --------------------------------------------------------------------------------- */

/* The state of a job as the broker keeps it (protocol.md §6). */
typedef enum kosmos_job_state {
    KOSMOS_STATE_UNKNOWN = 0, /* not set, or a state this library does not know */
    KOSMOS_STATE_QUEUED = 1,
    KOSMOS_STATE_RUNNING = 2,
    KOSMOS_STATE_RETRY_WAIT = 3,
    KOSMOS_STATE_DONE = 4,      /* terminal, with a result */
    KOSMOS_STATE_FAILED = 5,    /* terminal, with a result */
    KOSMOS_STATE_EXPIRED = 6,   /* terminal, with a result */
    KOSMOS_STATE_DEAD = 7,      /* terminal, with a result */
    KOSMOS_STATE_CANCELLED = 8, /* terminal, with a result */
    KOSMOS_STATE_ACKED = 9      /* terminal, result deleted */
} kosmos_job_state_t;
#define KOSMOS_STATE_COUNT 10

/* True for DONE, FAILED, EXPIRED, DEAD, CANCELLED and ACKED. */
KOSMOS_API bool kosmos_job_state_is_terminal(kosmos_job_state_t state);
/* "queued", "running", "retry_wait", "done", ... ("unknown" otherwise). Static storage. */
KOSMOS_API const char *kosmos_job_state_name(kosmos_job_state_t state);

/* The outcome of a job (whole-job) or of one prompt. */
typedef enum kosmos_result_status {
    KOSMOS_RESULT_UNKNOWN = 0, /* not set, or a status this library does not know */
    KOSMOS_RESULT_OK = 1,
    KOSMOS_RESULT_FAILED = 2,   /* see kosmos_result_retriable */
    KOSMOS_RESULT_EXPIRED = 3,  /* the deadline passed before it finished */
    KOSMOS_RESULT_DEAD = 4,     /* its workers crashed or timed out too often */
    KOSMOS_RESULT_CANCELLED = 5 /* the client cancelled it */
} kosmos_result_status_t;

/* "ok", "failed", "expired", "dead", "cancelled" ("unknown" otherwise). Static storage. */
KOSMOS_API const char *kosmos_result_status_name(kosmos_result_status_t status);

/* Why a submit was rejected (KOSMOS_ERR_REJECTED). */
typedef enum kosmos_reject_code {
    KOSMOS_REJECT_UNKNOWN = 0,
    KOSMOS_REJECT_INVALID = 1,              /* a field is missing or out of range */
    KOSMOS_REJECT_TOO_LARGE = 2,            /* image, prompt count or text over a limit */
    KOSMOS_REJECT_NO_SUCH_MODEL = 3,        /* no worker ever offered the requested model */
    KOSMOS_REJECT_EXPIRED = 4,              /* the deadline had already passed */
    KOSMOS_REJECT_IMAGE_URI_NOT_ALLOWED = 5 /* image URI outside the broker's --image-root */
} kosmos_reject_code_t;

/* Bits of kosmos_job_set_outputs. The cleaned text and the entities with normalized boxes are
 * always returned; these add more. */
#define KOSMOS_OUTPUT_RAW_TEXT 1u      /* kosmos_result_raw_text */
#define KOSMOS_OUTPUT_GENERATED_IDS 2u /* kosmos_result_generated_ids */
#define KOSMOS_OUTPUT_BOXES_PX 4u      /* kosmos_entity_t.boxes_px */
#define KOSMOS_OUTPUT_TIMINGS 8u       /* kosmos_result_timings */
#define KOSMOS_OUTPUT_DEFAULT 13u      /* RAW_TEXT | BOXES_PX | TIMINGS (the broker's default) */

/* Largest job id, in bytes, plus the NUL: the size of every job id buffer. */
#define KOSMOS_JOB_ID_SIZE 65
/* Largest idempotency key or client id, in bytes (protocol.md §10). */
#define KOSMOS_KEY_MAX 128
/* A CURVE key in Z85: 40 characters, plus the NUL. */
#define KOSMOS_Z85_KEY_SIZE 41

/* ---- the client ---------------------------------------------------------------------------- */

typedef struct kosmos_client kosmos_client_t;

/* Options of kosmos_client_new. Initialise with kosmos_client_params_init, then set what you
 * need. Strings are borrowed for the call only (the client copies them). */
typedef struct kosmos_client_params {
    /* The broker's client endpoint, e.g. "tcp://broker:5555" or "ipc:///run/kosmos.sock".
     * Required. */
    const char *broker;
    /* Client identity with CURVE off (1..128 bytes): jobs are visible only to the identity that
     * submitted them, so a program that fetches after a restart uses the same one.
     * Default NULL = the shared identity "anonymous". Ignored by the broker with CURVE on (the
     * identity is then the client's public key). */
    const char *client_id;
    /* CURVE (protocol.md §11): set all three Z85 keys (40 characters each) to turn it on, or
     * none. Default NULL (off). kosmos_curve_load_cert reads them from certificate files. */
    const char *curve_public_key; /* this client's public key */
    const char *curve_secret_key; /* this client's secret key */
    const char *curve_server_key; /* the broker's public key */
    /* How long to wait for a reply beyond a fetch's long poll, before resending on a fresh
     * socket. Default 5000 (protocol.md §7). */
    int reply_timeout_ms;
    /* How many times a request is resent after a reply timeout before KOSMOS_ERR_TIMEOUT.
     * Default 2 (so at most 3 sends). 0 = never resend. Resends are safe: every request is
     * idempotent, and every submit carries an idempotency key. */
    int retries;
    /* The broker's limits if they are not the defaults; frames over them are refused here with
     * KOSMOS_ERR_TOO_LARGE rather than sent (libzmq would drop the connection). 0 = the
     * protocol's defaults: 8 MiB (--max-message-bytes) and 64 MiB (--max-image-bytes). */
    size_t max_message_bytes;
    size_t max_image_bytes;
} kosmos_client_params_t;

/* Fills *params with the defaults above (broker NULL). */
KOSMOS_API void kosmos_client_params_init(kosmos_client_params_t *params);

/* Creates a client and connects it to params->broker. ZeroMQ connects in the background: this
 * succeeds even while the broker is down (requests then time out); call kosmos_client_status
 * to check that a broker answers. Returns NULL on failure (bad endpoint or keys, no CURVE in
 * this libzmq, out of memory) with the message set. Caller owns; kosmos_client_destroy. */
KOSMOS_API kosmos_client_t *kosmos_client_new(const kosmos_client_params_t *params);

/* Closes the socket (requests in flight are discarded) and frees the client. Results and
 * statuses it returned stay valid. */
KOSMOS_API void kosmos_client_destroy(kosmos_client_t **client);

/* The broker instance (random per broker process start) seen in the last reply, 0 before the
 * first. A change means the broker restarted (its jobs survive; requests in flight were lost
 * and are resent by this library). */
KOSMOS_API uint64_t kosmos_client_broker_instance(const kosmos_client_t *client);

/* Reads a CURVE certificate in the ZPL format of CZMQ's zcert_save and pyzmq's
 * zmq.auth.create_certificates: its "public-key" into public_key and, when secret_key is not
 * NULL, its "secret-key" (only in the "_secret" file) into secret_key. Both buffers are the
 * caller's, KOSMOS_Z85_KEY_SIZE bytes. KOSMOS_ERR_IO (unreadable) or KOSMOS_ERR_INVALID (no
 * valid key). */
KOSMOS_API kosmos_error_t kosmos_curve_load_cert(const char *path,
                                                 char public_key[KOSMOS_Z85_KEY_SIZE],
                                                 char *secret_key);

/* ---- building a job ------------------------------------------------------------------------ */

typedef struct kosmos_job kosmos_job_t;

/* A box, x1,y1 upper-left, x2,y2 lower-right. In a job and in kosmos_entity_t.boxes:
 * normalized to [0, 1] of the image (x1 < x2, y1 < y2). In kosmos_entity_t.boxes_px: source
 * image pixels (x * width, y * height, not rounded). */
typedef struct kosmos_box {
    double x1, y1, x2, y2;
} kosmos_box_t;

/* Generation parameters. kosmos_generation_init sets every field to "unset" (the model's
 * default: greedy, max_new_tokens 128, no_repeat_ngram_size 3); set only what you need.
 * An integer field < 0 and a double field < 0 mean unset. */
typedef struct kosmos_generation {
    int max_new_tokens;       /* 1..1024; unset = the broker's default (128) */
    int min_new_tokens;       /* 0..max_new_tokens; unset = 0 */
    int num_beams;            /* 1..8; unset = 1 */
    int do_sample;            /* 0 or 1; unset = greedy */
    double temperature;       /* > 0, with do_sample only */
    double top_p;             /* (0, 1], with do_sample only */
    int top_k;                /* 0 = off, with do_sample only */
    int no_repeat_ngram_size; /* 0 = off; unset = 3 */
    bool has_seed;            /* false = the worker picks a seed when sampling (and reports it) */
    uint64_t seed;
} kosmos_generation_t;

KOSMOS_API void kosmos_generation_init(kosmos_generation_t *gen);

/* Creates an empty job: no image, no prompts, default everything. Returns NULL when out of
 * memory. Caller owns; kosmos_job_destroy. A job can be submitted any number of times. */
KOSMOS_API kosmos_job_t *kosmos_job_new(void);
KOSMOS_API void kosmos_job_destroy(kosmos_job_t **job);

/* The image, one of three ways (each replaces an earlier one). Any format the workers decode
 * (JPEG, PNG, WebP, TIFF, ...); nothing decodes it here.
 * _file: reads the file now (KOSMOS_ERR_IO; KOSMOS_ERR_TOO_LARGE over 64 MiB); the bytes travel
 *        as their own frame, without a copy into the protobuf message.
 * _data: copies `len` bytes (len > 0) from `data` (borrowed for the call); sent as for _file.
 * _uri:  an absolute path on storage the workers share ("/shared/a.png" or
 *        "file:///shared/a.png"), which the broker must allow (--image-root). Copied. */
KOSMOS_API kosmos_error_t kosmos_job_set_image_file(kosmos_job_t *job, const char *path);
KOSMOS_API kosmos_error_t kosmos_job_set_image_data(kosmos_job_t *job, const void *data,
                                                    size_t len);
KOSMOS_API kosmos_error_t kosmos_job_set_image_uri(kosmos_job_t *job, const char *uri);

/* Appends a prompt (copied), e.g. "<grounding> An image of"; 1..64 per job, each at most 4096
 * bytes. Results come back in the same order (prompt index 0, 1, ...). */
KOSMOS_API kosmos_error_t kosmos_job_add_prompt(kosmos_job_t *job, const char *text);

/* Appends the boxes of the next <phrase>...</phrase> of the LAST prompt added: `n` normalized
 * boxes (copied; n = 0 = no boxes for that phrase). Call it once per phrase of the prompt, in
 * order, or never (the broker rejects a count that does not match). KOSMOS_ERR_INVALID without
 * a prompt, or with a box outside 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1. */
KOSMOS_API kosmos_error_t kosmos_job_add_phrase_boxes(kosmos_job_t *job, const kosmos_box_t *boxes,
                                                      size_t n);

/* Generation parameters (copied); NULL = back to all defaults. KOSMOS_ERR_INVALID when a set
 * field is out of range. */
KOSMOS_API kosmos_error_t kosmos_job_set_generation(kosmos_job_t *job,
                                                    const kosmos_generation_t *gen);

/* Priority -100..100, higher runs first (default 0). */
KOSMOS_API kosmos_error_t kosmos_job_set_priority(kosmos_job_t *job, int priority);
/* Absolute deadline in unix ms (0 = none, the default); a job not finished by then ends
 * EXPIRED. Set it once: a resubmit with another deadline is other contents (CONFLICT). */
KOSMOS_API kosmos_error_t kosmos_job_set_deadline(kosmos_job_t *job, uint64_t deadline_unix_ms);
/* OR of KOSMOS_OUTPUT_* bits (default KOSMOS_OUTPUT_DEFAULT). */
KOSMOS_API kosmos_error_t kosmos_job_set_outputs(kosmos_job_t *job, unsigned outputs);
/* Free-form label (<= 256 bytes, copied), echoed in the result; NULL = none. */
KOSMOS_API kosmos_error_t kosmos_job_set_label(kosmos_job_t *job, const char *label);
/* Requirements on the worker: model id (e.g. "microsoft/kosmos-2-patch14-224"), exact weights
 * hash (hex SHA-256), device memory. NULL / 0 = any. Strings copied. */
KOSMOS_API kosmos_error_t kosmos_job_set_model(kosmos_job_t *job, const char *model_id,
                                               const char *model_hash);
KOSMOS_API kosmos_error_t kosmos_job_set_min_device_memory(kosmos_job_t *job, uint64_t bytes);

/* ---- submitting and following jobs --------------------------------------------------------- */

/* Details of a submit, whatever its outcome. */
typedef struct kosmos_submit_info {
    char job_id[KOSMOS_JOB_ID_SIZE];          /* OK: the job; CONFLICT: the earlier job; else "" */
    bool duplicate;                           /* OK: the key matched an earlier submit (same job) */
    char idempotency_key[KOSMOS_KEY_MAX + 1]; /* the key sent (yours, or the generated one) */
    uint32_t retry_after_ms;                  /* BUSY: when to try again */
    uint64_t queue_depth;                     /* BUSY: unfinished jobs at the broker */
    kosmos_reject_code_t reject_code;         /* REJECTED: why (the message has the reason) */
} kosmos_submit_info_t;

/* Submits `job` (borrowed for the call) and returns as soon as the broker has stored it: the job
 * then runs in the background; follow it with kosmos_client_wait/poll/fetch.
 * `idempotency_key` (1..128 bytes, copied; NULL = a random one is generated): a submit whose key
 * this client identity used before returns the first job (OK, info->duplicate) if the job
 * contents are the same, or KOSMOS_ERR_CONFLICT if not. Pass your own key to make a retried
 * submit (after a crash, a BUSY or a TIMEOUT) safe; the generated one only covers this call's
 * own resends.
 * `job_id` (caller's buffer, may be NULL) receives the job id; `info` (may be NULL) the
 * details. Errors: KOSMOS_ERR_INVALID (no image or no prompt), BUSY, CONFLICT, REJECTED,
 * TOO_LARGE, TIMEOUT, UNAVAILABLE, PROTOCOL, IO. */
KOSMOS_API kosmos_error_t kosmos_client_submit(kosmos_client_t *client, const kosmos_job_t *job,
                                               const char *idempotency_key,
                                               char job_id[KOSMOS_JOB_ID_SIZE],
                                               kosmos_submit_info_t *info);

/* Where a job stands (from a fetch). */
typedef struct kosmos_job_info {
    char job_id[KOSMOS_JOB_ID_SIZE];
    kosmos_job_state_t state;
    uint32_t attempt;        /* attempts started so far */
    uint64_t queue_position; /* with QUEUED: jobs ahead of it (approximate) */
    uint64_t submitted_unix_ms;
    uint64_t next_attempt_unix_ms; /* with RETRY_WAIT */
} kosmos_job_info_t;

typedef struct kosmos_result kosmos_result_t;

/* Asks the broker about job `job_id` (any job this client identity submitted, from this or an
 * earlier client object or process). `wait_ms` > 0 long-polls: the broker answers when the job
 * is terminal or after wait_ms (capped at 30000), whichever comes first; 0 answers at once.
 * `info` (may be NULL) receives the state. `result` (may be NULL): with a terminal state other
 * than ACKED, *result is set to the result (caller owns; kosmos_result_destroy), else to NULL.
 * Errors: KOSMOS_ERR_NOT_FOUND, TIMEOUT, UNAVAILABLE, PROTOCOL, INVALID. */
KOSMOS_API kosmos_error_t kosmos_client_fetch(kosmos_client_t *client, const char *job_id,
                                              int wait_ms, kosmos_job_info_t *info,
                                              kosmos_result_t **result);

/* kosmos_client_fetch with wait_ms 0: never blocks longer than a round trip. Poll no more
 * often than once a second; kosmos_client_wait is the better way to wait. */
KOSMOS_API kosmos_error_t kosmos_client_poll(kosmos_client_t *client, const char *job_id,
                                             kosmos_job_info_t *info, kosmos_result_t **result);

/* Waits (with long polls) until job `job_id` is terminal, at most `timeout_ms` (< 0 = no limit),
 * then sets *result (caller owns). KOSMOS_ERR_PENDING when the timeout passed first (the job
 * keeps running); KOSMOS_ERR_INVALID_STATE when the job was acked (no result any more); and
 * the errors of kosmos_client_fetch. A result with a status other than OK is still KOSMOS_OK:
 * read kosmos_result_status. */
KOSMOS_API kosmos_error_t kosmos_client_wait(kosmos_client_t *client, const char *job_id,
                                             int timeout_ms, kosmos_result_t **result);

/* "I have the result": the broker may delete it. Only for terminal jobs
 * (KOSMOS_ERR_INVALID_STATE otherwise). Idempotent. Results not acked are deleted after 7 days. */
KOSMOS_API kosmos_error_t kosmos_client_ack(kosmos_client_t *client, const char *job_id);

/* Cancels job `job_id`. Idempotent. `cancelled` (may be NULL): true when this call cancelled
 * it, false when it was already terminal; `state` (may be NULL): its state afterwards. */
KOSMOS_API kosmos_error_t kosmos_client_cancel(kosmos_client_t *client, const char *job_id,
                                               bool *cancelled, kosmos_job_state_t *state);

/* One call: submits `image_path` with `prompt` (NULL = "<grounding> An image of"), default
 * generation and outputs, waits at most `timeout_ms` (< 0 = no limit) for the result, acks it
 * and sets *result (caller owns). Retries BUSY and UNAVAILABLE replies within the timeout, with
 * one idempotency key. KOSMOS_ERR_PENDING when the job was not done in time (it is cancelled
 * then); otherwise the errors of submit and wait. */
KOSMOS_API kosmos_error_t kosmos_ground_file(kosmos_client_t *client, const char *image_path,
                                             const char *prompt, int timeout_ms,
                                             kosmos_result_t **result);

/* ---- reading a result ---------------------------------------------------------------------- */
/* Every accessor takes a result that is not NULL. Strings returned are borrowed until
 * kosmos_result_destroy and never NULL unless documented ("" when absent). An out-of-range
 * prompt or entity index gives the empty value (NULL, 0, "") rather than undefined behaviour. */

KOSMOS_API void kosmos_result_destroy(kosmos_result_t **result);

KOSMOS_API const char *kosmos_result_job_id(const kosmos_result_t *r);
/* Whole-job outcome: OK when every prompt ran to its own conclusion (each prompt then has its
 * own status); otherwise it applies to every prompt. */
KOSMOS_API kosmos_result_status_t kosmos_result_status(const kosmos_result_t *r);
/* With FAILED: true when another attempt might succeed (the broker retries those itself until
 * its attempts run out). */
KOSMOS_API bool kosmos_result_retriable(const kosmos_result_t *r);
/* Why it is not OK ("" with OK). */
KOSMOS_API const char *kosmos_result_message(const kosmos_result_t *r);
/* The attempt that produced it, from 1. */
KOSMOS_API uint32_t kosmos_result_attempt(const kosmos_result_t *r);
KOSMOS_API const char *kosmos_result_worker(const kosmos_result_t *r); /* worker name */
KOSMOS_API const char *kosmos_result_device(const kosmos_result_t *r); /* device name */
/* The source image in pixels (0 x 0 if it never decoded). */
KOSMOS_API uint32_t kosmos_result_image_width(const kosmos_result_t *r);
KOSMOS_API uint32_t kosmos_result_image_height(const kosmos_result_t *r);
KOSMOS_API uint64_t kosmos_result_started_unix_ms(const kosmos_result_t *r);
KOSMOS_API uint64_t kosmos_result_finished_unix_ms(const kosmos_result_t *r);
KOSMOS_API const char *kosmos_result_label(const kosmos_result_t *r);

/* Per prompt, i in 0 .. kosmos_result_prompt_count - 1 (one per prompt of the job, in order). */
KOSMOS_API size_t kosmos_result_prompt_count(const kosmos_result_t *r);
KOSMOS_API kosmos_result_status_t kosmos_result_prompt_status(const kosmos_result_t *r, size_t i);
KOSMOS_API bool kosmos_result_prompt_retriable(const kosmos_result_t *r, size_t i);
KOSMOS_API const char *kosmos_result_prompt_message(const kosmos_result_t *r, size_t i);
/* The cleaned caption (tags removed, stripped; it includes the prompt's own text). */
KOSMOS_API const char *kosmos_result_text(const kosmos_result_t *r, size_t i);
/* The caption with its tags; NULL unless KOSMOS_OUTPUT_RAW_TEXT was asked for. */
KOSMOS_API const char *kosmos_result_raw_text(const kosmos_result_t *r, size_t i);
/* The new token ids (ending with 2 = </s> when the model stopped); *n gets their count
 * (0 unless KOSMOS_OUTPUT_GENERATED_IDS). Borrowed until destroy; NULL when *n is 0. */
KOSMOS_API const uint32_t *kosmos_result_generated_ids(const kosmos_result_t *r, size_t i,
                                                       size_t *n);
/* The sampling seed used: true and *seed set when the worker reported one. */
KOSMOS_API bool kosmos_result_seed(const kosmos_result_t *r, size_t i, uint64_t *seed);

/* Wall-clock milliseconds on the worker for one prompt (work shared by a job's prompts, or by
 * a batch, is reported in each). A field the worker did not report is < 0. */
typedef struct kosmos_timings {
    double load_ms, preprocess_ms, vision_ms, prefill_ms, decode_ms;
    int64_t new_tokens, prompt_tokens; /* < 0 when not reported */
} kosmos_timings_t;
/* NULL unless KOSMOS_OUTPUT_TIMINGS was asked for. Borrowed until destroy. */
KOSMOS_API const kosmos_timings_t *kosmos_result_timings(const kosmos_result_t *r, size_t i);

/* One grounded phrase of the cleaned text. Spans are half-open [start, end) into
 * kosmos_result_text, in Unicode code points (as Python indexes; can be negative or reversed
 * for degenerate phrases, as the reference computes them) and in UTF-8 bytes (as C slices). */
typedef struct kosmos_entity {
    const char *phrase; /* borrowed until kosmos_result_destroy */
    int64_t start_cp, end_cp;
    uint32_t start_byte, end_byte;
    size_t box_count;
    const kosmos_box_t *boxes;    /* box_count normalized boxes (may be NULL when 0) */
    const uint32_t *patch_ul;     /* box_count patch indices (0..1023) of each box's */
    const uint32_t *patch_lr;     /*   upper-left and lower-right corners */
    const kosmos_box_t *boxes_px; /* box_count pixel boxes; NULL without KOSMOS_OUTPUT_BOXES_PX */
} kosmos_entity_t;

KOSMOS_API size_t kosmos_result_entity_count(const kosmos_result_t *r, size_t i);
/* Entity j of prompt i; NULL when out of range. Borrowed until destroy. */
KOSMOS_API const kosmos_entity_t *kosmos_result_entity(const kosmos_result_t *r, size_t i,
                                                       size_t j);

/* ---- broker status ------------------------------------------------------------------------- */

/* One worker as the broker sees it. Strings are "" when unknown. */
typedef struct kosmos_worker_info {
    const char *name;
    const char *model_id;
    const char *model_hash;
    const char *device_vendor;
    const char *device_name;
    const char *device_platform;
    const char *device_driver;
    uint64_t device_memory_bytes;
    uint32_t device_compute_units;
    uint32_t batch_capacity;
    uint32_t credit;  /* dispatches it can still take */
    uint32_t running; /* jobs leased to it now */
    uint64_t connected_unix_ms;
    uint32_t last_heartbeat_ms_ago;
    uint64_t jobs_done;
} kosmos_worker_info_t;

/* A snapshot of the broker (protocol.md §5.6). Read-only; all memory belongs to it. */
typedef struct kosmos_broker_status {
    const char *broker_version;
    uint64_t broker_instance;
    uint64_t uptime_ms;
    /* Job records per state now, indexed by kosmos_job_state_t (terminal and acked records
     * count until the broker forgets them); queue[KOSMOS_STATE_UNKNOWN] counts states this
     * library does not know. */
    uint64_t queue[KOSMOS_STATE_COUNT];
    size_t worker_count;
    const kosmos_worker_info_t *workers; /* worker_count entries (NULL when 0) */
    /* Totals since the broker's database was created. */
    uint64_t total_submitted, total_done, total_failed, total_dead, total_expired, total_cancelled;
    /* Throughput over the last 60 s. */
    double jobs_per_second;
    double tokens_per_second;
    /* Bytes the broker holds in its buffers, and the bound it keeps them under. */
    uint64_t memory_bytes;
    uint64_t memory_bound_bytes;
} kosmos_broker_status_t;

/* Asks the broker for its status (`include_workers` false leaves workers out). *status: caller
 * owns; kosmos_broker_status_destroy. Errors: TIMEOUT, UNAVAILABLE, PROTOCOL, UNSUPPORTED. */
KOSMOS_API kosmos_error_t kosmos_client_status(kosmos_client_t *client, bool include_workers,
                                               kosmos_broker_status_t **status);
KOSMOS_API void kosmos_broker_status_destroy(kosmos_broker_status_t **status);

#ifdef __cplusplus
}
#endif

#endif
