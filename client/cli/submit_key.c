/* submit_key: see submit_key.h. */
#include "submit_key.h"

#include <stdio.h>
#include <string.h>

void submit_key(const uint8_t image_sha256[KS_SHA256_LEN], const char *prompt, const char *boxes,
                const char *params, unsigned round, char key[SUBMIT_KEY_SIZE])
{
    static const char domain[] = "kosmos-submit/1";
    ks_sha256_ctx s;
    ks_sha256_init(&s);
    ks_sha256_update(&s, domain, sizeof domain); /* with its NUL */
    ks_sha256_update(&s, image_sha256, KS_SHA256_LEN);
    const char *parts[] = {prompt, boxes ? boxes : "", params ? params : ""};
    for (size_t i = 0; i < 3; i++)
        ks_sha256_update(&s, parts[i], strlen(parts[i]) + 1);
    uint8_t digest[KS_SHA256_LEN];
    ks_sha256_final(&s, digest);
    memcpy(key, "ks1-", 4);
    for (size_t i = 0; i < KS_SHA256_LEN; i++)
        snprintf(key + 4 + 2 * i, 3, "%02x", digest[i]);
    if (round)
        snprintf(key + 4 + 2 * KS_SHA256_LEN, SUBMIT_KEY_SIZE - 4 - 2 * KS_SHA256_LEN, ".r%u",
                 round);
}
