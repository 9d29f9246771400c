/* kw_identity: what a worker says about itself in Ready (docs/protocol.md §8.1) - its default
 * name, the model's id and weights hash, the device - and the CURVE keys it connects with
 * (§11). Not here: the Ready message itself (kw_io.c). */
#ifndef KW_IDENTITY_H
#define KW_IDENTITY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "ks_error.h"

#define KW_HASH_HEX 65 /* 64 hex digits + NUL */
#define KW_Z85_KEY 41  /* 40 Z85 characters + NUL */

/* "<hostname>/<device>" (device "" or NULL: "default"), at most cap-1 bytes. */
void kw_default_name(const char *device, char *out, size_t cap);

/* The model id: config.json's "_name_or_path" when it has one, else the folder's base name.
 * Caller frees. NULL only when out of memory. */
char *kw_model_id(const char *model_dir);

/* Hex SHA-256 of the weights: model.safetensors, or every model-*.safetensors shard in name
 * order, concatenated. KS_ERR_UNSUPPORTED when this build has no SHA-256 (no libcrypto);
 * KS_ERR_IO when a file cannot be read. */
ks_status kw_model_hash(const char *model_dir, char out[KW_HASH_HEX]);

typedef struct kw_device_info {
    char vendor[128];
    char name[128];
    uint64_t memory_bytes;
} kw_device_info;

/* The device a backend runs on. The reference backend reports the host (its memory). */
void kw_device_info_get(const ke_backend *b, kw_device_info *out);

/* Reads a CURVE certificate in ZPL form (CZMQ's zcert_save, pyzmq's create_certificates):
 * "public-key" always, "secret-key" when `secret` is not NULL. KS_ERR_IO / KS_ERR_FORMAT. */
ks_status kw_curve_load(const char *path, char public_key[KW_Z85_KEY], char *secret);

#endif
