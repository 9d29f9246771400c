/* kc_cache: see kc_cache.h. Entry layout (native byte order: an entry never leaves its machine):
 *   "KSCLBIN\0"  u32 format  u32 key_len  u64 binary_len  u64 binary_hash  key  binary */
#include "kc_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ks_buf.h"
#include "ks_file.h"

#define KC_MAGIC "KSCLBIN" /* 8 bytes with the NUL */
#define KC_HEADER_BYTES 32u
#define KC_ENTRY_MAX_BYTES (256u << 20)

struct kc_cache {
    char *folder; /* <root>/opencl */
};

uint64_t kc_hash64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = seed ? seed : 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Two independent 64-bit hashes make the 128-bit name; the stored key settles collisions. */
static void hash128_hex(const char *text, char out[33])
{
    size_t n = strlen(text);
    uint64_t a = kc_hash64(text, n, 0);
    uint64_t b = kc_hash64(text, n, 0x84222325cbf29ce4ull ^ (uint64_t)n);
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
}

ks_status kc_cache_root(char **out)
{
    *out = NULL;
    const char *env = getenv("KOSMOS_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (env && *env)
        *out = strdup(env);
    else if (xdg && *xdg == '/')
        *out = ks_path_join(xdg, "kosmos");
    else if (home && *home)
        *out = ks_path_join(home, ".cache/kosmos");
    else
        return ks_fail(KS_ERR_UNSUPPORTED, "no kosmos cache folder: none of KOSMOS_CACHE_DIR, "
                                           "XDG_CACHE_HOME, HOME is set");
    return *out ? KS_OK : ks_fail(KS_ERR_NOMEM, "out of memory naming the kosmos cache folder");
}

ks_status kc_cache_new(const char *root, kc_cache **out)
{
    ks_status status = KS_OK;
    char *owned_root = NULL;
    kc_cache *cache = NULL;
    *out = NULL;
    if (!root || !*root) {
        if ((status = kc_cache_root(&owned_root)) != KS_OK) {
            ks_error_prefix("the OpenCL program cache");
            return status;
        }
        root = owned_root;
    }
    if (!(cache = calloc(1, sizeof *cache)) || !(cache->folder = ks_path_join(root, "opencl"))) {
        status = ks_fail(KS_ERR_NOMEM, "out of memory opening the OpenCL program cache");
        goto cleanup;
    }
    *out = cache;
    cache = NULL;
cleanup:
    kc_cache_destroy(&cache);
    free(owned_root);
    return status;
}

void kc_cache_destroy(kc_cache **cache)
{
    if (!cache || !*cache)
        return;
    free((*cache)->folder);
    free(*cache);
    *cache = NULL;
}

const char *kc_cache_folder(const kc_cache *cache) { return cache ? cache->folder : NULL; }

char *kc_cache_key(const kc_device_info *device, const char *source, size_t source_len,
                   const char *options)
{
    char source_hash[33];
    uint64_t a = kc_hash64(source, source_len, 0);
    uint64_t b = kc_hash64(source, source_len, 0x84222325cbf29ce4ull ^ (uint64_t)source_len);
    snprintf(source_hash, sizeof source_hash, "%016llx%016llx", (unsigned long long)a,
             (unsigned long long)b);
    ks_buf key;
    ks_buf_init(&key);
    if (ks_buf_printf(&key,
                      "kosmos-farm OpenCL program cache, format %d\n"
                      "platform: %s | %s\n"
                      "device: %s\n"
                      "driver: %s\n"
                      "options: %s\n"
                      "source: %zu bytes, %s\n",
                      KC_CACHE_FORMAT, device->platform_name, device->platform_version,
                      device->name, device->driver_version, options ? options : "", source_len,
                      source_hash) != KS_OK) {
        ks_buf_fini(&key);
        return NULL;
    }
    return ks_buf_detach(&key, NULL);
}

/* Keeps file names tame whatever the stem: [A-Za-z0-9_.-], at most 48 characters. */
static void safe_stem(const char *stem, char out[49])
{
    size_t n = 0;
    for (const char *c = stem ? stem : ""; *c && n < 48; c++) {
        char ch = *c;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || ch == '.';
        out[n++] = ok ? ch : '_';
    }
    if (n == 0)
        out[n++] = 'p';
    out[n] = '\0';
}

char *kc_cache_entry_path(const kc_cache *cache, const char *stem, const char *key)
{
    if (!cache || !key)
        return NULL;
    char name[49 + 1 + 32 + 4 + 1], hex[33], safe[49];
    safe_stem(stem, safe);
    hash128_hex(key, hex);
    snprintf(name, sizeof name, "%s-%s.bin", safe, hex);
    return ks_path_join(cache->folder, name);
}

bool kc_cache_load(const kc_cache *cache, const char *stem, const char *key, unsigned char **binary,
                   size_t *length)
{
    *binary = NULL;
    *length = 0;
    char *path = kc_cache_entry_path(cache, stem, key);
    if (!path)
        return false;
    char *data = NULL;
    size_t n = 0;
    bool ok = false;
    if (!ks_file_exists(path) || ks_file_read(path, KC_ENTRY_MAX_BYTES, &data, &n) != KS_OK) {
        ks_error_clear(); /* a miss is not a failure */
        goto done;
    }
    if (n < KC_HEADER_BYTES || memcmp(data, KC_MAGIC, 8) != 0)
        goto done;
    uint32_t format, key_len;
    uint64_t bin_len, bin_hash;
    memcpy(&format, data + 8, 4);
    memcpy(&key_len, data + 12, 4);
    memcpy(&bin_len, data + 16, 8);
    memcpy(&bin_hash, data + 24, 8);
    size_t want_key = strlen(key);
    if (format != KC_CACHE_FORMAT || key_len != want_key || bin_len == 0 ||
        bin_len > n - KC_HEADER_BYTES || n - KC_HEADER_BYTES - bin_len != key_len)
        goto done;
    if (memcmp(data + KC_HEADER_BYTES, key, key_len) != 0)
        goto done;
    const char *bin = data + KC_HEADER_BYTES + key_len;
    if (kc_hash64(bin, (size_t)bin_len, 0) != bin_hash)
        goto done;
    *binary = malloc((size_t)bin_len);
    if (!*binary)
        goto done;
    memcpy(*binary, bin, (size_t)bin_len);
    *length = (size_t)bin_len;
    ok = true;
done:
    free(data);
    free(path);
    return ok;
}

static bool write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

bool kc_cache_store(const kc_cache *cache, const char *stem, const char *key,
                    const unsigned char *binary, size_t length)
{
    if (!cache || !key || !binary || length == 0 || !ks_dir_make_all(cache->folder))
        return false;
    char *path = kc_cache_entry_path(cache, stem, key);
    if (!path)
        return false;
    static atomic_uint counter; /* distinct temporaries within a process */
    size_t tmp_cap = strlen(path) + 48;
    char *tmp = malloc(tmp_cap);
    bool ok = false;
    int fd = -1;
    if (!tmp)
        goto done;
    snprintf(tmp, tmp_cap, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1u));
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd < 0)
        goto done;
    unsigned char header[KC_HEADER_BYTES];
    uint32_t format = KC_CACHE_FORMAT, key_len = (uint32_t)strlen(key);
    uint64_t bin_len = length, bin_hash = kc_hash64(binary, length, 0);
    memcpy(header, KC_MAGIC, 8);
    memcpy(header + 8, &format, 4);
    memcpy(header + 12, &key_len, 4);
    memcpy(header + 16, &bin_len, 8);
    memcpy(header + 24, &bin_hash, 8);
    ok = write_all(fd, header, sizeof header) && write_all(fd, key, key_len) &&
         write_all(fd, binary, length) && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    fd = -1;
    ok = ok && rename(tmp, path) == 0;
done:
    if (fd >= 0)
        close(fd);
    if (tmp && !ok)
        unlink(tmp);
    free(tmp);
    free(path);
    return ok;
}
