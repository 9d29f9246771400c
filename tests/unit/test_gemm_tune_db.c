/* Unit tests for ke_tune_db (worker/engine/gemm_tune_db.h), the GEMM tuning database: a write
 * read back, an update that keeps the other devices' entries, lookups that miss, a missing
 * file (an empty database, silently) and files that are not a database (an error that names
 * the file, never a crash). No device needed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gemm_tune_db.h"
#include "ks_file.h"

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_gemm_tune_db.XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    /* a folder that does not exist yet: saving makes it */
    snprintf(fx->path, sizeof fx->path, "%s/sub/gemm-tune.json", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char sub[160];
    unlink(fx->path);
    snprintf(sub, sizeof sub, "%s/sub", fx->dir);
    rmdir(sub);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

static const ke_tune_key cpu = {"Portable Computing Language", "pthread-cpu", "3.1"};
static const ke_tune_key gpu = {"NVIDIA CUDA", "NVIDIA H100", "550.54"};

static void write_text(const char *path, const char *text)
{
    assert_int_equal(ks_file_write_atomic(path, text, strlen(text)), KS_OK);
}

static void test_missing_file_is_empty(void **state)
{
    fixture *fx = *state;
    ke_tune_db *db = NULL;
    bool found = true;
    assert_int_equal(ke_tune_db_load(fx->path, &db, &found), KS_OK);
    assert_false(found);
    assert_int_equal(ke_tune_db_count(db), 0);
    assert_null(ke_tune_db_lookup(db, &cpu));
    ke_tune_db_destroy(&db);
    assert_null(db);
    ke_tune_db_destroy(&db); /* NULL is fine */
}

static void test_write_read_update(void **state)
{
    fixture *fx = *state;
    ke_tune_db *db = NULL;
    assert_int_equal(ke_tune_db_new(&db), KS_OK);
    json_t *figures = json_pack("{s:f}", "score", 0.9);
    assert_int_equal(ke_tune_db_set(db, &cpu, "cpu,rows_nt=16", "2026-12-01T00:00:00Z", figures),
                     KS_OK);
    assert_int_equal(ke_tune_db_set(db, &gpu, "nvidia,rows_xk=32", NULL, NULL), KS_OK);
    assert_int_equal(ke_tune_db_save(db, fx->path), KS_OK);
    ke_tune_db_destroy(&db);

    bool found = false;
    assert_int_equal(ke_tune_db_load(fx->path, &db, &found), KS_OK);
    assert_true(found);
    assert_int_equal(ke_tune_db_count(db), 2);
    assert_string_equal(ke_tune_db_lookup(db, &cpu), "cpu,rows_nt=16");
    assert_string_equal(ke_tune_db_lookup(db, &gpu), "nvidia,rows_xk=32");
    /* another driver version, device or platform is another entry */
    const ke_tune_key other_driver = {cpu.platform, cpu.device, "3.2"};
    const ke_tune_key other_device = {cpu.platform, "pthread-other", cpu.driver};
    const ke_tune_key other_platform = {"Intel(R) OpenCL", cpu.device, cpu.driver};
    assert_null(ke_tune_db_lookup(db, &other_driver));
    assert_null(ke_tune_db_lookup(db, &other_device));
    assert_null(ke_tune_db_lookup(db, &other_platform));

    /* an update replaces its own entry and keeps the other's, figures included */
    assert_int_equal(ke_tune_db_set(db, &cpu, "cpu,rows_nt=4", NULL, NULL), KS_OK);
    assert_int_equal(ke_tune_db_set(db, &other_driver, "cpu", NULL, NULL), KS_OK);
    assert_int_equal(ke_tune_db_save(db, fx->path), KS_OK);
    ke_tune_db_destroy(&db);
    assert_int_equal(ke_tune_db_load(fx->path, &db, NULL), KS_OK);
    assert_int_equal(ke_tune_db_count(db), 3);
    assert_string_equal(ke_tune_db_lookup(db, &cpu), "cpu,rows_nt=4");
    assert_string_equal(ke_tune_db_lookup(db, &gpu), "nvidia,rows_xk=32");
    assert_string_equal(ke_tune_db_lookup(db, &other_driver), "cpu");
    ke_tune_db_destroy(&db);

    /* the file is the documented JSON */
    json_error_t err;
    json_t *root = json_load_file(fx->path, 0, &err);
    assert_non_null(root);
    assert_int_equal(json_integer_value(json_object_get(root, "format")), KE_TUNE_DB_FORMAT);
    json_t *first = json_array_get(json_object_get(root, "entries"), 0);
    assert_string_equal(json_string_value(json_object_get(first, "device")), "pthread-cpu");
    assert_string_equal(json_string_value(json_object_get(first, "tune")), "cpu,rows_nt=4");
    assert_int_equal(strlen(json_string_value(json_object_get(first, "date"))), 20);
    assert_null(json_object_get(first, "figures")); /* the update's entry is whole */
    json_t *third = json_array_get(json_object_get(root, "entries"), 2);
    assert_string_equal(json_string_value(json_object_get(third, "driver")), "3.2");
    json_decref(root);

    /* a date given is kept as given */
    assert_int_equal(ke_tune_db_load(fx->path, &db, NULL), KS_OK);
    assert_int_equal(ke_tune_db_set(db, &gpu, "gpu", "2026-12-01T00:00:00Z", NULL), KS_OK);
    assert_int_equal(ke_tune_db_save(db, fx->path), KS_OK);
    ke_tune_db_destroy(&db);
    root = json_load_file(fx->path, 0, &err);
    json_t *second = json_array_get(json_object_get(root, "entries"), 1);
    assert_string_equal(json_string_value(json_object_get(second, "date")), "2026-12-01T00:00:00Z");
    json_decref(root);
}

/* Files that are not a database: each load fails with a message naming the file and the fault. */
static void test_corrupt_files(void **state)
{
    fixture *fx = *state;
    static const struct {
        const char *text, *message;
    } cases[] = {
        {"", "not JSON"},
        {"{\"format\": 1, \"entries\": [", "not JSON"},
        {"[1, 2]", "not a JSON object"},
        {"{\"entries\": []}", "\"format\" is not 1"},
        {"{\"format\": 2, \"entries\": []}", "\"format\" is not 1"},
        {"{\"format\": 1, \"entries\": {}}", "\"entries\" is not an array"},
        {"{\"format\": 1, \"entries\": [7]}", "entry 0 is not an object"},
        {"{\"format\": 1, \"entries\": [{\"platform\": \"p\", \"device\": \"d\"}]}",
         "entry 0 has no string \"driver\""},
        {"{\"format\": 1, \"entries\": [{\"platform\": \"p\", \"device\": \"d\", \"driver\": "
         "\"v\", \"tune\": 3}]}",
         "entry 0 has no string \"tune\""},
    };
    ke_tune_db *db = NULL;
    assert_int_equal(ke_tune_db_new(&db), KS_OK);
    assert_int_equal(ke_tune_db_save(db, fx->path), KS_OK); /* makes the folder */
    ke_tune_db_destroy(&db);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(fx->path, cases[i].text);
        db = (ke_tune_db *)1;
        assert_int_equal(ke_tune_db_load(fx->path, &db, NULL), KS_ERR_FORMAT);
        assert_null(db);
        if (!strstr(ks_error_message(), cases[i].message) || !strstr(ks_error_message(), fx->path))
            fail_msg("'%s': '%s' does not name the file and say '%s'", cases[i].text,
                     ks_error_message(), cases[i].message);
    }
    /* a folder where the file should be: unreadable, not missing */
    unlink(fx->path);
    assert_int_equal(mkdir(fx->path, 0700), 0);
    db = (ke_tune_db *)1;
    assert_int_not_equal(ke_tune_db_load(fx->path, &db, NULL), KS_OK);
    assert_null(db);
    rmdir(fx->path);
}

static void test_set_refuses_missing_strings(void **state)
{
    (void)state;
    ke_tune_db *db = NULL;
    assert_int_equal(ke_tune_db_new(&db), KS_OK);
    const ke_tune_key half = {"p", NULL, "v"};
    assert_int_equal(ke_tune_db_set(db, &half, "cpu", NULL, json_object()), KS_ERR_INVALID);
    assert_int_equal(ke_tune_db_set(db, &cpu, NULL, NULL, NULL), KS_ERR_INVALID);
    assert_int_equal(ke_tune_db_count(db), 0);
    ke_tune_db_destroy(&db);
    char *path = ke_tune_db_default_path("/root/.cache/kosmos");
    assert_string_equal(path, "/root/.cache/kosmos/gemm-tune.json");
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_missing_file_is_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_read_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_files, setup, teardown),
        cmocka_unit_test(test_set_refuses_missing_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
