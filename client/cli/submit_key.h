/* submit_key: the idempotency key of one `kosmos submit` job (docs/protocol.md §4).
 *
 *   key = "ks1-" + hex(SHA-256("kosmos-submit/1" NUL SHA-256(image bytes) prompt NUL
 *                               boxes NUL params NUL))   [+ ".r" + N]
 *
 * `boxes` and `params` are the canonical texts of what the job carries besides the image and
 * the prompt (the normalized boxes sent, max_new_tokens, the output flags), so two jobs with the
 * same key compute the same thing wherever their files live. The path, the priority and the
 * time are deliberately left out: the same image under two names, or resubmitted with another
 * priority, is the same computation (the broker answers a priority change with CONFLICT naming
 * the first job, which `kosmos submit` then follows). N (the "round", from 1) starts a fresh
 * computation on purpose: --resume retrying a pair that failed before, or a job whose result
 * was acknowledged (deleted) at the broker. 68 bytes + the round: far below KOSMOS_KEY_MAX. */
#ifndef KOSMOS_SUBMIT_KEY_H
#define KOSMOS_SUBMIT_KEY_H

#include <stddef.h>
#include <stdint.h>

#include "ks_sha256.h"

#define SUBMIT_KEY_SIZE 96 /* "ks1-" + 64 hex + ".r" + up to 10 digits + NUL, rounded up */

/* The key of round `round` (0 = the first computation) into key[SUBMIT_KEY_SIZE]. */
void submit_key(const uint8_t image_sha256[KS_SHA256_LEN], const char *prompt, const char *boxes,
                const char *params, unsigned round, char key[SUBMIT_KEY_SIZE]);

#endif
