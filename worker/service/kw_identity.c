/* kw_identity: see kw_identity.h. */
#include "kw_identity.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "backend_open.h"
#include "ks_file.h"
#include "ks_sha256.h"
#include "ks_zpl.h"

#ifdef KW_HAVE_LIBCRYPTO
#include <openssl/evp.h>
#endif

void kw_default_name(const char *device, char *out, size_t cap)
{
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0])
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf(out, cap, "%s/%s", host, device && device[0] ? device : "default");
}

char *kw_model_id(const char *model_dir)
{
    char *path = ks_path_join(model_dir, "config.json");
    json_t *config = path ? json_load_file(path, 0, NULL) : NULL;
    free(path);
    const char *name = config ? json_string_value(json_object_get(config, "_name_or_path")) : NULL;
    char *id = NULL;
    if (name && name[0]) {
        id = strdup(name);
    } else {
        size_t len = strlen(model_dir);
        while (len > 1 && model_dir[len - 1] == '/')
            len--;
        size_t start = len;
        while (start > 0 && model_dir[start - 1] != '/')
            start--;
        id = strndup(model_dir + start, len - start);
    }
    json_decref(config);
    return id;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

ks_status kw_model_hash(const char *model_dir, char out[KW_HASH_HEX])
{
    out[0] = '\0';
    ks_status st = KS_OK;
    char **files = NULL;
    size_t n = 0;
    char *single = ks_path_join(model_dir, "model.safetensors");
    if (single && ks_file_exists(single)) {
        files = malloc(sizeof *files);
        if (files)
            files[n++] = single;
        single = NULL;
    } else {
        DIR *d = opendir(model_dir);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            size_t len = strlen(e->d_name);
            if (strncmp(e->d_name, "model-", 6) != 0 || len < 18 ||
                strcmp(e->d_name + len - 12, ".safetensors") != 0)
                continue;
            char **grown = realloc(files, (n + 1) * sizeof *files);
            if (!grown)
                break;
            files = grown;
            files[n] = ks_path_join(model_dir, e->d_name);
            if (files[n])
                n++;
        }
        if (d)
            closedir(d);
        qsort(files, n, sizeof *files, name_cmp);
    }
    free(single);
    if (n == 0) {
        free(files);
        return ks_fail(KS_ERR_IO, "%s: no model.safetensors or model-*.safetensors to hash",
                       model_dir);
    }
    /* libcrypto's SHA-256 uses the CPU's SHA instructions (several GB/s): hashing 6.6 GB of
     * weights at start-up then takes seconds. ks_sha256 gives the same digest, slower. */
#ifdef KW_HAVE_LIBCRYPTO
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool started = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
#else
    ks_sha256_ctx md_state, *md = &md_state;
    ks_sha256_init(md);
    bool started = true;
#endif
    unsigned char *buf = malloc(1 << 20);
    if (!started || !buf)
        st = ks_fail(KS_ERR_NOMEM, "cannot start SHA-256");
    for (size_t i = 0; st == KS_OK && i < n; i++) {
        FILE *f = fopen(files[i], "rb");
        if (!f) {
            st = ks_fail(KS_ERR_IO, "cannot read %s", files[i]);
            break;
        }
        size_t got;
        while ((got = fread(buf, 1, 1 << 20, f)) > 0) {
#ifdef KW_HAVE_LIBCRYPTO
            EVP_DigestUpdate(md, buf, got);
#else
            ks_sha256_update(md, buf, got);
#endif
        }
        if (ferror(f))
            st = ks_fail(KS_ERR_IO, "error reading %s", files[i]);
        fclose(f);
    }
    unsigned char digest[32];
#ifdef KW_HAVE_LIBCRYPTO
    unsigned int dlen = 0;
    bool finished = started && EVP_DigestFinal_ex(md, digest, &dlen) == 1 && dlen == 32;
    EVP_MD_CTX_free(md);
#else
    ks_sha256_final(md, digest);
    bool finished = true;
#endif
    if (st == KS_OK && finished)
        for (int i = 0; i < 32; i++)
            snprintf(out + 2 * i, 3, "%02x", digest[i]);
    else if (st == KS_OK)
        st = ks_fail(KS_ERR_NOMEM, "SHA-256 failed");
    free(buf);
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    return st;
}

void kw_device_info_get(const ke_backend *b, kw_device_info *out)
{
    memset(out, 0, sizeof *out);
    const char *name = b ? ke_backend_device_name(b) : "unknown";
    snprintf(out->name, sizeof out->name, "%s", name);
    if (strcmp(name, "ref") == 0) {
        /* The plain-C path runs on the host: its memory is the device's. */
        snprintf(out->vendor, sizeof out->vendor, "kosmos-farm reference (host CPU)");
        long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        if (pages > 0 && page > 0)
            out->memory_bytes = (uint64_t)pages * (uint64_t)page;
    }
}

ks_status kw_curve_load(const char *path, char public_key[KW_Z85_KEY], char *secret)
{
    char *text = NULL;
    size_t len = 0;
    ks_status st = ks_file_read(path, 1 << 16, &text, &len);
    if (st != KS_OK)
        return st;
    if (!ks_zpl_z85_key(text, "public-key", public_key))
        st = ks_fail(KS_ERR_FORMAT, "certificate %s has no valid public-key", path);
    else if (secret && !ks_zpl_z85_key(text, "secret-key", secret))
        st = ks_fail(KS_ERR_FORMAT, "certificate %s has no valid secret-key", path);
    free(text);
    return st;
}
