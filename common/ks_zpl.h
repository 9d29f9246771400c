/* ks_zpl: the one thing kosmos-farm reads from ZPL files (ZeroMQ's property language): the
 * Z85 keys of a CURVE certificate as CZMQ's zcert_save and pyzmq's create_certificates write
 * them ("public-key" and, in the _secret file, "secret-key"). Shared by the broker, the worker
 * and libkosmos: nothing in kosmos-farm links CZMQ. */
#ifndef KS_ZPL_H
#define KS_ZPL_H

#include <stdbool.h>

#define KS_Z85_KEY_SIZE 41 /* 40 Z85 characters and a NUL */

/* Finds `key = "value"` (quoted or bare) on a line of the NUL-terminated `text` and copies
 * the value into `out` when it is exactly 40 characters. False when absent or malformed. */
bool ks_zpl_z85_key(const char *text, const char *key, char out[KS_Z85_KEY_SIZE]);

#endif
