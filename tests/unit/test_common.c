/* Unit tests for common/: error messages, growable strings, UTF-8, Python whitespace, files,
 * base64, SHA-256, FNV-1a, the ZPL key reader and the JSON log (lines parsed back with jansson). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <jansson.h>

#include "ks_base64.h"
#include "ks_buf.h"
#include "ks_error.h"
#include "ks_file.h"
#include "ks_hash.h"
#include "ks_log.h"
#include "ks_sha256.h"
#include "ks_utf8.h"
#include "ks_zpl.h"

static void test_error_message_and_prefix(void **state)
{
    (void)state;
    ks_error_clear();
    assert_string_equal(ks_error_message(), "");
    assert_int_equal(ks_fail(KS_ERR_IO, "cannot open %s", "x.bin"), KS_ERR_IO);
    ks_error_prefix("loading model %d", 7);
    assert_string_equal(ks_error_message(), "loading model 7: cannot open x.bin");
    assert_string_equal(ks_status_name(KS_ERR_LIMIT), "limit exceeded");
}

static void test_buf_grows_and_detaches(void **state)
{
    (void)state;
    ks_buf b;
    ks_buf_init(&b);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(ks_buf_printf(&b, "%d,", i % 10), KS_OK);
    assert_int_equal(b.len, 2000);
    assert_int_equal(ks_buf_append(&b, "\0z", 2), KS_OK);
    assert_int_equal(b.len, 2002);
    assert_int_equal(b.data[b.len], '\0');
    size_t len = 0;
    char *s = ks_buf_detach(&b, &len);
    assert_non_null(s);
    assert_int_equal(len, 2002);
    assert_null(b.data);
    free(s);
    ks_buf_fini(&b);
}

static void test_utf8_decode_encode(void **state)
{
    (void)state;
    const uint32_t samples[] = {0x24, 0xA2, 0x20AC, 0x10348, 0x10FFFF};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        char out[4];
        size_t n = ks_utf8_encode(samples[i], out);
        uint32_t cp = 0;
        assert_int_equal(ks_utf8_decode(out, n, &cp), n);
        assert_int_equal(cp, samples[i]);
    }
    uint32_t cp;
    assert_int_equal(ks_utf8_decode("\xC0\xAF", 2, &cp), 1); /* overlong */
    assert_int_equal(cp, 0xFFFD);
    assert_int_equal(ks_utf8_decode("\xED\xA0\x80", 3, &cp), 1); /* surrogate */
    assert_int_equal(ks_utf8_decode("\xE2\x82", 2, &cp), 1);     /* truncated */
    assert_true(ks_utf8_valid("h\xC3\xA9llo \xEF\xBF\xBD", 10));
    assert_false(ks_utf8_valid("\xFF", 1));
    assert_int_equal(ks_utf8_count("h\xC3\xA9\xF0\x9F\x98\x80", 7), 3);
}

static void test_python_isspace(void **state)
{
    (void)state;
    /* The exact set of Python's str.isspace() over all code points. */
    const uint32_t spaces[] = {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x1C,   0x1D,
                               0x1E,   0x1F,   0x20,   0x85,   0xA0,   0x1680, 0x2000,
                               0x2005, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000};
    size_t found = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++)
        if (ks_unicode_is_space(cp))
            found++;
    assert_int_equal(found, 29);
    for (size_t i = 0; i < sizeof spaces / sizeof spaces[0]; i++)
        assert_true(ks_unicode_is_space(spaces[i]));
    assert_false(ks_unicode_is_space(0x200B)); /* zero-width space is not whitespace */
    assert_false(ks_unicode_is_space(0x180E));
}

static void test_file_read_limits(void **state)
{
    (void)state;
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(ks_file_read("/nonexistent/kosmos", 10, &data, &len), KS_ERR_IO);
    assert_non_null(strstr(ks_error_message(), "/nonexistent/kosmos"));
    assert_int_equal(ks_file_read(KOSMOS_TEST_DATA_DIR
                                  "/kosmos2/checkpoint/preprocessor_config.json",
                                  10, &data, &len),
                     KS_ERR_LIMIT);
    assert_int_equal(ks_file_read("/", 100, &data, &len), KS_ERR_IO);
    char *joined = ks_path_join("a/b/", "c");
    assert_string_equal(joined, "a/b/c");
    free(joined);
}

/* ks_path_beneath by whole components; ks_file_read_beneath in a folder made here: a file
 * and a symlink within the root are read, a symlink out of it (relative or absolute), a FIFO
 * (without blocking) and a path outside every root are refused. */
static void test_file_read_beneath(void **state)
{
    (void)state;
    assert_string_equal(ks_path_beneath("/x/img/a.png", "/x/img"), "a.png");
    assert_string_equal(ks_path_beneath("/x/img/a.png", "/x/img/"), "a.png");
    assert_string_equal(ks_path_beneath("/x/img", "/x/img"), "");
    assert_string_equal(ks_path_beneath("/x/img//a", "/"), "x/img//a");
    assert_null(ks_path_beneath("/x/imgx/a.png", "/x/img"));
    assert_true(ks_path_clean("/a/b"));
    assert_false(ks_path_clean("/a/../b"));
    assert_false(ks_path_clean("a/b"));

    char dir[64], root[128], path[192], cmd[1024];
    snprintf(dir, sizeof dir, "/tmp/kstest.XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(root, sizeof root, "%s/root", dir);
    snprintf(cmd, sizeof cmd,
             "mkdir %s && echo secret > %s/secret && echo ok > %s/a && ln -s a %s/in && "
             "ln -s ../secret %s/out && ln -s %s/secret %s/abs && mkfifo %s/fifo",
             root, dir, root, root, root, dir, root, root);
    assert_int_equal(system(cmd), 0);
    const char *roots[] = {"/nonexistent-root", root};
    char *data = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/in", root);
    assert_int_equal(ks_file_read_beneath(roots, 2, path, 100, &data, &len), KS_OK);
    assert_string_equal(data, "ok\n");
    free(data);
    snprintf(path, sizeof path, "%s/out", root);
    assert_int_equal(ks_file_read_beneath(roots, 2, path, 100, &data, &len), KS_ERR_INVALID);
    snprintf(path, sizeof path, "%s/abs", root);
    assert_int_equal(ks_file_read_beneath(roots, 2, path, 100, &data, &len), KS_ERR_INVALID);
    snprintf(path, sizeof path, "%s/fifo", root);
    assert_int_equal(ks_file_read_beneath(roots, 2, path, 100, &data, &len), KS_ERR_INVALID);
    assert_non_null(strstr(ks_error_message(), "not a regular file"));
    assert_int_equal(ks_file_read(path, 100, &data, &len), KS_ERR_IO); /* no wait either */
    snprintf(path, sizeof path, "%s/secret", dir);
    assert_int_equal(ks_file_read_beneath(roots, 2, path, 100, &data, &len), KS_ERR_INVALID);
    snprintf(path, sizeof path, "%s/missing", root);
    assert_int_equal(ks_file_read_beneath(roots, 2, path, 100, &data, &len), KS_ERR_IO);
    assert_int_equal(ks_file_read_beneath(roots, 0, path, 100, &data, &len), KS_ERR_IO);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* RFC 4648's test vectors both ways; bytes that are not UTF-8 come back exactly; text that is
 * not base64 is refused. */
static void test_base64(void **state)
{
    (void)state;
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                        "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char *e = ks_base64_encode(plain[i], strlen(plain[i]));
        assert_string_equal(e, coded[i]);
        size_t len = 0;
        uint8_t *d = ks_base64_decode(e, &len);
        assert_int_equal(len, strlen(plain[i]));
        assert_memory_equal(d, plain[i], len);
        free(d);
        free(e);
    }
    const char name[] = "bad\xff\xfe.jpg";
    char *e = ks_base64_encode(name, sizeof name - 1);
    size_t len = 0;
    uint8_t *d = ks_base64_decode(e, &len);
    assert_int_equal(len, sizeof name - 1);
    assert_memory_equal(d, name, len);
    free(d);
    free(e);
    assert_null(ks_base64_decode("Zm9", &len));
    assert_null(ks_base64_decode("Zm9v!A==", &len));
    assert_null(ks_base64_decode("Zg==Zg==", &len));
    assert_null(ks_base64_decode("Z=g=", &len));
}

/* Lowercase hex of a digest, for comparing with the published vectors. */
static void sha_hex(const uint8_t d[KS_SHA256_LEN], char out[2 * KS_SHA256_LEN + 1])
{
    for (size_t i = 0; i < KS_SHA256_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static const char sha_448[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

/* FIPS 180-2 appendix B's known answers (and the empty message), in one call. */
static void test_sha256_vectors(void **state)
{
    (void)state;
    uint8_t d[KS_SHA256_LEN];
    char hex[2 * KS_SHA256_LEN + 1];
    ks_sha256("abc", 3, d);
    sha_hex(d, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ks_sha256(sha_448, strlen(sha_448), d);
    sha_hex(d, hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    ks_sha256("", 0, d);
    sha_hex(d, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    char *million = malloc(1000000);
    assert_non_null(million);
    memset(million, 'a', 1000000);
    ks_sha256(million, 1000000, d);
    sha_hex(d, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(million);
}

/* init/update/final over any split of the input gives the one-call digest: every split point
 * of the 448-bit message (padding crosses a block there), byte by byte, and one million 'a'
 * fed in uneven pieces (tails left in the block buffer between calls). */
static void test_sha256_incremental(void **state)
{
    (void)state;
    uint8_t whole[KS_SHA256_LEN], part[KS_SHA256_LEN];
    size_t n = strlen(sha_448);
    ks_sha256(sha_448, n, whole);
    for (size_t cut = 0; cut <= n; cut++) {
        ks_sha256_ctx s;
        ks_sha256_init(&s);
        ks_sha256_update(&s, sha_448, cut);
        ks_sha256_update(&s, sha_448 + cut, n - cut);
        ks_sha256_final(&s, part);
        assert_memory_equal(part, whole, KS_SHA256_LEN);
    }
    ks_sha256_ctx s;
    ks_sha256_init(&s);
    for (size_t i = 0; i < n; i++)
        ks_sha256_update(&s, sha_448 + i, 1);
    ks_sha256_final(&s, part);
    assert_memory_equal(part, whole, KS_SHA256_LEN);

    char chunk[997];
    memset(chunk, 'a', sizeof chunk);
    ks_sha256_init(&s);
    size_t left = 1000000;
    for (size_t step = 1; left > 0; step = (step + 61) % sizeof chunk + 1) {
        size_t take = step < left ? step : left;
        ks_sha256_update(&s, chunk, take);
        left -= take;
    }
    ks_sha256_final(&s, part);
    char hex[2 * KS_SHA256_LEN + 1];
    sha_hex(part, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* 64-bit FNV-1a's published values, and that continuing the hash equals hashing the whole. */
static void test_fnv1a(void **state)
{
    (void)state;
    assert_true(ks_fnv1a(KS_FNV1A_BASIS, "", 0) == 0xcbf29ce484222325ull);
    assert_true(ks_fnv1a(KS_FNV1A_BASIS, "a", 1) == 0xaf63dc4c8601ec8cull);
    assert_true(ks_fnv1a(KS_FNV1A_BASIS, "foobar", 6) == 0x85944171f73967e8ull);
    uint64_t h = ks_fnv1a(KS_FNV1A_BASIS, "foo", 3);
    assert_true(ks_fnv1a(h, "bar", 3) == 0x85944171f73967e8ull);
    /* bytes, not C strings: a NUL inside counts, and the order matters */
    assert_true(ks_fnv1a(KS_FNV1A_BASIS, "a\0b", 3) != ks_fnv1a(KS_FNV1A_BASIS, "ab", 2));
    assert_true(ks_fnv1a(KS_FNV1A_BASIS, "ab", 2) != ks_fnv1a(KS_FNV1A_BASIS, "ba", 2));
}

/* RFC 32's example key pair, as CZMQ's zcert_save writes a _secret file (quoted values, a
 * comment header, the keys indented under "curve"). */
#define ZPL_PUBLIC "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
#define ZPL_SECRET "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"

static void test_zpl_keys(void **state)
{
    (void)state;
    const char *cert = "#   ****  Generated by CZMQ  ****\n"
                       "#   public-key = \"not this one, a comment\"\n"
                       "\n"
                       "metadata\n"
                       "curve\n"
                       "    public-key = \"" ZPL_PUBLIC "\"\n"
                       "    secret-key = \"" ZPL_SECRET "\"\n";
    char key[KS_Z85_KEY_SIZE];
    assert_true(ks_zpl_z85_key(cert, "public-key", key));
    assert_string_equal(key, ZPL_PUBLIC);
    assert_true(ks_zpl_z85_key(cert, "secret-key", key));
    assert_string_equal(key, ZPL_SECRET);
    assert_false(ks_zpl_z85_key(cert, "other-key", key));

    /* pyzmq's single quotes; CRLF line ends; tabs around '=' */
    assert_true(ks_zpl_z85_key("curve\r\n\tpublic-key\t=\t'" ZPL_PUBLIC "'\r\n", "public-key",
                               key));
    assert_string_equal(key, ZPL_PUBLIC);
    /* a bare value ends at a space; Z85 characters '#' and '=' are part of it */
    const char *bare = "public-key = ab#=efghij0123456789ABCDEFGHIJ.-:+=^!/*? # note\n";
    assert_true(ks_zpl_z85_key(bare, "public-key", key));
    assert_string_equal(key, "ab#=efghij0123456789ABCDEFGHIJ.-:+=^!/*?");
    /* a longer name that starts with the key is another key */
    assert_true(ks_zpl_z85_key("public-keys = \"x\"\npublic-key = \"" ZPL_PUBLIC "\"\n",
                               "public-key", key));
    assert_string_equal(key, ZPL_PUBLIC);
    /* errors: the value must be exactly 40 characters; no '=', no text */
    assert_false(ks_zpl_z85_key("public-key = \"short\"\n", "public-key", key));
    assert_false(ks_zpl_z85_key("public-key = \"" ZPL_PUBLIC "X\"\n", "public-key", key));
    assert_false(ks_zpl_z85_key("public-key = \"\"\n", "public-key", key));
    assert_false(ks_zpl_z85_key("public-key \"" ZPL_PUBLIC "\"\n", "public-key", key));
    assert_false(ks_zpl_z85_key("", "public-key", key));
    assert_false(ks_zpl_z85_key(NULL, "public-key", key));
}

/* Everything written to `f` since the start, as a new NUL-terminated string. */
static char *slurp(FILE *f)
{
    long n = ftell(f);
    assert_true(n >= 0);
    char *text = malloc((size_t)n + 1);
    assert_non_null(text);
    rewind(f);
    assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
    text[n] = '\0';
    fseek(f, 0, SEEK_END);
    return text;
}

/* `text` is exactly one line holding one JSON object; returns it parsed (caller decrefs). */
static json_t *one_json_line(const char *text)
{
    size_t len = strlen(text);
    assert_true(len >= 2 && text[len - 1] == '\n');
    assert_ptr_equal(strchr(text, '\n'), text + len - 1);
    json_error_t err;
    json_t *j = json_loadb(text, len - 1, 0, &err);
    if (!j)
        fail_msg("not JSON (%s): %s", err.text, text);
    assert_true(json_is_object(j));
    return j;
}

/* The line's shape: ts_ms, level and event first; fields after; errno left alone; and no
 * fields at all with NULL. */
static void test_log_line(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    char esc[64];
    errno = EAGAIN;
    ks_log(f, KS_LOG_WARN, 1700000000123ull, "job_done", "\"job\":%s,\"n\":%d",
           ks_log_str(esc, sizeof esc, "01J\"x"), 7);
    assert_int_equal(errno, EAGAIN);
    char *text = slurp(f);
    assert_string_equal(text, "{\"ts_ms\":1700000000123,\"level\":\"warn\",\"event\":\"job_done\","
                              "\"job\":\"01J\\\"x\",\"n\":7}\n");
    free(text);
    fclose(f);

    f = tmpfile();
    assert_non_null(f);
    ks_log(f, KS_LOG_DEBUG, 0, "started", NULL);
    ks_log(f, KS_LOG_ERROR, 1, "stopped", "%s", ""); /* empty fields: no stray comma */
    text = slurp(f);
    assert_string_equal(text, "{\"ts_ms\":0,\"level\":\"debug\",\"event\":\"started\"}\n"
                              "{\"ts_ms\":1,\"level\":\"error\",\"event\":\"stopped\"}\n");
    free(text);
    fclose(f);

    ks_log_level l = KS_LOG_ERROR;
    for (int i = KS_LOG_DEBUG; i <= KS_LOG_ERROR; i++) {
        assert_true(ks_log_level_parse(ks_log_level_name((ks_log_level)i), &l));
        assert_int_equal(l, i);
    }
    assert_false(ks_log_level_parse("verbose", &l));
    assert_false(ks_log_level_parse("", &l));
    assert_false(ks_log_level_parse(NULL, &l));
    assert_int_equal(l, KS_LOG_ERROR);
    assert_true(ks_log_unix_ms() > 1600000000000ull);
}

/* A line far longer than any fixed buffer comes out whole, as one valid object: a 100 KB
 * value and 3000 members. */
static void test_log_long_line(void **state)
{
    (void)state;
    size_t big = 100000;
    char *value = malloc(big + 1);
    char *esc = malloc(2 * big + 8);
    assert_non_null(value);
    assert_non_null(esc);
    for (size_t i = 0; i < big; i++)
        value[i] = (char)('a' + i % 26);
    value[big - 1] = '"'; /* escaped at the very end */
    value[big] = '\0';
    FILE *f = tmpfile();
    assert_non_null(f);
    ks_log(f, KS_LOG_INFO, 42, "long", "\"value\":%s,\"after\":true",
           ks_log_str(esc, 2 * big + 8, value));
    char *text = slurp(f);
    json_t *j = one_json_line(text);
    assert_string_equal(json_string_value(json_object_get(j, "value")), value);
    assert_true(json_is_true(json_object_get(j, "after")));
    assert_int_equal(json_integer_value(json_object_get(j, "ts_ms")), 42);
    assert_string_equal(json_string_value(json_object_get(j, "event")), "long");
    json_decref(j);
    free(text);
    fclose(f);

    /* many members: the fields string is built by the caller, then logged in one piece */
    ks_buf members;
    ks_buf_init(&members);
    for (int i = 0; i < 3000; i++)
        assert_int_equal(ks_buf_printf(&members, "%s\"k%d\":%d", i ? "," : "", i, i), KS_OK);
    f = tmpfile();
    assert_non_null(f);
    ks_log(f, KS_LOG_INFO, 1, "many", "%s", members.data);
    text = slurp(f);
    j = one_json_line(text);
    assert_int_equal(json_object_size(j), 3 + 3000);
    assert_int_equal(json_integer_value(json_object_get(j, "k2999")), 2999);
    json_decref(j);
    free(text);
    fclose(f);
    ks_buf_fini(&members);
    free(esc);
    free(value);
}

/* ks_log_str: escapes, UTF-8 kept, malformed bytes replaced; cut to every size from 0 up it
 * stays a valid JSON string whose text is a prefix of the input (plus "..." when cut). */
static void test_log_str(void **state)
{
    (void)state;
    char buf[256];
    assert_string_equal(ks_log_str(buf, sizeof buf, "a\"b\\c\nd\te\x01\x7f"),
                        "\"a\\\"b\\\\c\\u000ad\\u0009e\\u0001\\u007f\"");
    assert_string_equal(ks_log_str(buf, sizeof buf, NULL), "\"\"");
    assert_string_equal(ks_log_str(buf, sizeof buf, "caf\xc3\xa9 \xe2\x82\xac"),
                        "\"caf\xc3\xa9 \xe2\x82\xac\"");
    assert_string_equal(ks_log_str(buf, sizeof buf, "x\xff\xc3y"), "\"x\\ufffd\\ufffdy\"");
    assert_string_equal(ks_log_str(buf, 8, "abcdefghij"), "\"ab...\"");
    assert_string_equal(ks_log_str(buf, 8, "abcde"), "\"abcde\""); /* exactly fits: no cut */
    assert_string_equal(ks_log_str(buf, 3, "abc"), "\"\"");
    assert_string_equal(ks_log_str(buf, 2, "abc"), "");

    const char *in = "snow\"man \xe2\x98\x83 by a \\fire\\ \x01\x02 \xf0\x9f\x94\xa5 end\xff";
    char full[256];
    ks_log_str(full, sizeof full, in);
    json_t *whole = json_loads(full, JSON_DECODE_ANY, NULL);
    assert_non_null(whole);
    const char *decoded = json_string_value(whole);
    for (size_t cap = 3; cap <= strlen(full) + 1; cap++) {
        char cut[256];
        memset(cut, 0x55, sizeof cut);
        ks_log_str(cut, cap, in);
        assert_true(strlen(cut) < cap);
        assert_int_equal((unsigned char)cut[cap], 0x55); /* nothing past cap */
        json_error_t err;
        json_t *j = json_loads(cut, JSON_DECODE_ANY, &err);
        if (!j)
            fail_msg("cap %zu: not a JSON string (%s): %s", cap, err.text, cut);
        const char *v = json_string_value(j);
        size_t n = strlen(v);
        if (cap <= strlen(full)) {
            if (n >= 3 && strcmp(v + n - 3, "...") == 0)
                n -= 3;
            assert_true(n < strlen(decoded));
        }
        assert_memory_equal(v, decoded, n);
        json_decref(j);
    }
    json_decref(whole);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_message_and_prefix),
        cmocka_unit_test(test_buf_grows_and_detaches),
        cmocka_unit_test(test_utf8_decode_encode),
        cmocka_unit_test(test_python_isspace),
        cmocka_unit_test(test_file_read_limits),
        cmocka_unit_test(test_file_read_beneath),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_sha256_vectors),
        cmocka_unit_test(test_sha256_incremental),
        cmocka_unit_test(test_fnv1a),
        cmocka_unit_test(test_zpl_keys),
        cmocka_unit_test(test_log_line),
        cmocka_unit_test(test_log_long_line),
        cmocka_unit_test(test_log_str),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
