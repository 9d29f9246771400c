/* Unit tests for common/: error messages, growable strings, UTF-8 and Python whitespace. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ks_base64.h"
#include "ks_buf.h"
#include "ks_error.h"
#include "ks_file.h"
#include "ks_utf8.h"

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
    const uint32_t spaces[] = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20,
                               0x85, 0xA0, 0x1680, 0x2000, 0x2005, 0x200A, 0x2028, 0x2029,
                               0x202F, 0x205F, 0x3000};
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
    assert_int_equal(ks_file_read(KOSMOS_TEST_DATA_DIR "/kosmos2/checkpoint/preprocessor_config.json",
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
    static const char *const coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                        "Zm9vYmFy"};
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
