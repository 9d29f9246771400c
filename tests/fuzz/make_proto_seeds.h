/* make_proto_seeds: realistic sample messages of every kosmos.v1 top-level type.
 *
 * One source of samples for two users: the make_proto_seeds program writes them as the seed
 * corpora tests/fuzz/corpus/fuzz_proto_<message>/<name>.pb, and test_proto round-trips them.
 * Not a message builder for production code: the samples live on the stack of the visiting
 * function and only exist during the callback. */
#ifndef MAKE_PROTO_SEEDS_H
#define MAKE_PROTO_SEEDS_H

#include <protobuf-c/protobuf-c.h>

/* Called once per sample. `message` is the fuzz target suffix ("client_request", "client_reply",
 * "worker_message", "broker_to_worker", "job", "result"), `name` a file-name-safe sample name,
 * `msg` the sample, borrowed for the duration of the call. */
typedef void (*kps_visit_fn)(const char *message, const char *name, const ProtobufCMessage *msg,
                             void *user);

/* Calls `fn` for every sample, always in the same order with the same contents. */
void kps_for_each_sample(kps_visit_fn fn, void *user);

/* The fuzz target suffixes, in a NULL-terminated static array. */
extern const char *const kps_messages[];

#endif
