/* Unit tests for GEMM tuning on the OpenCL side:
 *   - the tunables API of cl_gemm.h: the full text and its round trip, gemm.cl's constraints,
 *     and the chunking rule that decides which candidates keep the canonical sums;
 *   - ke_cl_gemm_tune_choose (cl_gemm_tune.h): --gemm-tune > the database's entry > the
 *     built-in row, with an unusable database or entry set aside as a warning, never a failure;
 *   - the sweep (bench/gemm_sweep.h) on the device under test: a candidate that keeps the sums
 *     is measured and accepted, one whose sums differ (a forced chunking) is rejected by the
 *     bit-for-bit check, so the check can fail.
 * The first two need no device (a device description is made up); the sweep skips without one,
 * or fails under KOSMOS_TEST_REQUIRE_ALL=1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <unistd.h>

#include "cl_fixture.h"
#include "cl_gemm.h"
#include "cl_gemm_tune.h"
#include "gemm_sweep.h"
#include "gemm_tune_db.h"
#include "ks_file.h"

static void test_tunables_text(void **state)
{
    (void)state;
    static const char *const rows[] = {"cpu", "nvidia", "gpu"};
    for (size_t i = 0; i < 3; i++) {
        ke_cl_tunables t, back;
        char text[256], again[256];
        assert_int_equal(ke_cl_tunables_get(NULL, rows[i], &t), KS_OK);
        ke_cl_tunables_format(&t, text, sizeof text);
        assert_int_equal(strncmp(text, rows[i], strlen(rows[i])), 0);
        assert_non_null(strstr(text, ",groups_goal="));
        assert_int_equal(ke_cl_gemm_tune_check(text), KS_OK);
        assert_int_equal(ke_cl_tunables_get(NULL, text, &back), KS_OK);
        ke_cl_tunables_format(&back, again, sizeof again);
        assert_string_equal(text, again);
        assert_int_equal(ke_cl_tunables_check(&t, 1024), KS_OK); /* the rows are valid */
    }
    ke_cl_tunables t;
    assert_int_equal(ke_cl_tunables_get(NULL, NULL, &t), KS_ERR_INVALID); /* no device, no row */
}

static void test_tunables_check(void **state)
{
    (void)state;
    static const struct {
        const char *text, *message;
        size_t max_wg;
    } bad[] = {
        {"cpu,rows_cw=12", "rows_cw must be 4, 8 or 16", 0},
        {"nvidia,rows_vpw=2", "rows_vpw 2 is for rows_stage 0 and rows_split 0", 0},
        {"cpu,w_panel=12,rows_cw=8", "w_panel must be 0 or a multiple of rows_cw", 0},
        {"cpu,rows_nt=2,rows_cw=4,rows_vpw=1", "must divide", 0},
        {"gpu,tile_m=128,tile_n=128,wpt_m=8,wpt_n=8", "a work-item per row", 0},
        {"gpu,tile_m=62", "multiples of wpt_m", 0},
        {"nvidia", "exceeds the device's 128", 128},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ke_cl_tunables t;
        assert_int_equal(ke_cl_tunables_get(NULL, bad[i].text, &t), KS_OK);
        assert_int_equal(ke_cl_tunables_check(&t, bad[i].max_wg), KS_ERR_INVALID);
        if (!strstr(ks_error_message(), bad[i].message))
            fail_msg("'%s': '%s' does not say '%s'", bad[i].text, ks_error_message(),
                     bad[i].message);
    }
}

/* Which changes keep ke_cl_gemm_chunk's result for every shape, checked against the rule and
 * against ke_cl_gemm_chunk's inputs: the CPU row is one chunk whatever else changes; a GPU row's
 * chunks follow groups_goal, the columns per rows group and tile_k. */
static void test_same_sums(void **state)
{
    (void)state;
    static const struct {
        const char *base, *t, *message; /* message NULL: the same sums */
    } cases[] = {
        {"cpu", "cpu,rows_nt=32,rows_cw=8,rows_vpw=1,w_panel=8,tile_k=32,rows_max_m=1", NULL},
        {"cpu", "cpu,groups_goal=4", "groups_goal 4 instead of 0"},
        {"nvidia", "nvidia,rows_nt=16,rows_cw=8", NULL},
        {"nvidia", "nvidia,rows_xk=32,rows_split=0,rows_stage=0,rows_max_m=8,tile_m=32", NULL},
        {"nvidia", "nvidia,rows_nt=64", "256 columns per group instead of 128"},
        {"nvidia", "nvidia,tile_k=32", "tile_k 32 instead of 16"},
        {"nvidia", "nvidia,groups_goal=8", "groups_goal 8 instead of 4"},
        {"nvidia", "nvidia,groups_goal=0", "groups_goal 0 instead of 4"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ke_cl_tunables base, t;
        assert_int_equal(ke_cl_tunables_get(NULL, cases[i].base, &base), KS_OK);
        assert_int_equal(ke_cl_tunables_get(NULL, cases[i].t, &t), KS_OK);
        ks_status st = ke_cl_tunables_same_sums(&t, &base);
        if (!cases[i].message) {
            if (st != KS_OK)
                fail_msg("'%s' against '%s': %s", cases[i].t, cases[i].base, ks_error_message());
        } else {
            assert_int_equal(st, KS_ERR_INVALID);
            if (!strstr(ks_error_message(), cases[i].message))
                fail_msg("'%s': '%s' does not say '%s'", cases[i].t, ks_error_message(),
                         cases[i].message);
        }
    }
}

/* ---- the start-time choice ------------------------------------------------------------------ */

typedef struct choose_fixture {
    char dir[64], path[128];
    kc_device_info dev;
} choose_fixture;

static int choose_setup(void **state)
{
    choose_fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_gemm_tune.XXXXXX");
    if (!mkdtemp(fx->dir))
        return -1;
    snprintf(fx->path, sizeof fx->path, "%s/gemm-tune.json", fx->dir);
    fx->dev.type = CL_DEVICE_TYPE_CPU;
    fx->dev.max_work_group_size = 4096;
    snprintf(fx->dev.platform_name, sizeof fx->dev.platform_name, "Test Platform");
    snprintf(fx->dev.name, sizeof fx->dev.name, "test-cpu");
    snprintf(fx->dev.vendor, sizeof fx->dev.vendor, "Test");
    snprintf(fx->dev.driver_version, sizeof fx->dev.driver_version, "1.0");
    *state = fx;
    return 0;
}

static int choose_teardown(void **state)
{
    choose_fixture *fx = *state;
    unlink(fx->path);
    rmdir(fx->dir);
    free(fx);
    return 0;
}

static void write_entry(const choose_fixture *fx, const char *tune)
{
    ke_tune_db *db = NULL;
    const ke_tune_key key = {fx->dev.platform_name, fx->dev.name, fx->dev.driver_version};
    const ke_tune_key other = {"Other", "other-gpu", "2.0"};
    assert_int_equal(ke_tune_db_new(&db), KS_OK);
    assert_int_equal(ke_tune_db_set(db, &other, "gpu,rows_xk=32", NULL, NULL), KS_OK);
    assert_int_equal(ke_tune_db_set(db, &key, tune, NULL, NULL), KS_OK);
    assert_int_equal(ke_tune_db_save(db, fx->path), KS_OK);
    ke_tune_db_destroy(&db);
}

static void expect(const ke_tune_choice *c, ke_tune_source source, const char *tune,
                   const char *report_part)
{
    assert_int_equal(c->source, source);
    assert_string_equal(c->tune, tune);
    if (!strstr(c->report, report_part))
        fail_msg("report '%s' does not say '%s'", c->report, report_part);
}

static void test_choose(void **state)
{
    choose_fixture *fx = *state;
    ke_tune_choice c;
    /* no database: silently the row */
    ke_cl_gemm_tune_choose(&fx->dev, NULL, fx->path, &c);
    expect(&c, KE_TUNE_BUILT_IN, "", "built-in row cpu");
    assert_null(strstr(c.report, "warning"));
    /* an entry for this device and driver */
    write_entry(fx, "cpu,rows_nt=16");
    ke_cl_gemm_tune_choose(&fx->dev, NULL, fx->path, &c);
    expect(&c, KE_TUNE_DB, "cpu,rows_nt=16", "from ");
    assert_non_null(strstr(c.report, fx->path));
    assert_non_null(strstr(c.report, "(entry for test-cpu, driver 1.0): cpu,rows_nt=16"));
    /* --gemm-tune wins; "" reads no database */
    ke_cl_gemm_tune_choose(&fx->dev, "cpu,rows_cw=8", fx->path, &c);
    expect(&c, KE_TUNE_OPTION, "cpu,rows_cw=8", "--gemm-tune cpu,rows_cw=8");
    ke_cl_gemm_tune_choose(&fx->dev, NULL, "", &c);
    expect(&c, KE_TUNE_BUILT_IN, "", "built-in row cpu");
    /* the default path: <cache>/gemm-tune.json */
    const char *saved = getenv("KOSMOS_CACHE_DIR");
    char *keep = saved ? strdup(saved) : NULL;
    setenv("KOSMOS_CACHE_DIR", fx->dir, 1);
    ke_cl_gemm_tune_choose(&fx->dev, NULL, NULL, &c);
    if (keep)
        setenv("KOSMOS_CACHE_DIR", keep, 1);
    else
        unsetenv("KOSMOS_CACHE_DIR");
    free(keep);
    expect(&c, KE_TUNE_DB, "cpu,rows_nt=16", fx->path);
    /* another driver: no entry, the row */
    snprintf(fx->dev.driver_version, sizeof fx->dev.driver_version, "1.1");
    ke_cl_gemm_tune_choose(&fx->dev, NULL, fx->path, &c);
    expect(&c, KE_TUNE_BUILT_IN, "", "built-in row cpu");
    snprintf(fx->dev.driver_version, sizeof fx->dev.driver_version, "1.0");
    /* entries the backend must not use: a warning, and the row */
    static const struct {
        const char *tune, *message;
    } refused[] = {
        {"cpu,groups_goal=4", "groups_goal 4 instead of 0 changes how k is chunked"},
        {"cpu,rows_cw=12", "rows_cw must be 4, 8 or 16"},
        {"amd,rows_cw=8", "the first item must be cpu, nvidia or gpu"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        write_entry(fx, refused[i].tune);
        ke_cl_gemm_tune_choose(&fx->dev, NULL, fx->path, &c);
        expect(&c, KE_TUNE_BUILT_IN, "", "built-in row cpu (warning: ");
        expect(&c, KE_TUNE_BUILT_IN, "", refused[i].message);
    }
    /* a corrupt database: a warning naming it */
    assert_int_equal(ks_file_write_atomic(fx->path, "{\"format\": 1, \"entr", 19), KS_OK);
    ke_cl_gemm_tune_choose(&fx->dev, NULL, fx->path, &c);
    expect(&c, KE_TUNE_BUILT_IN, "", "not JSON");
    assert_non_null(strstr(c.report, fx->path));
    /* a database entry the driver refuses after all: back to the row */
    write_entry(fx, "cpu,rows_nt=16");
    ke_cl_gemm_tune_choose(&fx->dev, NULL, fx->path, &c);
    ke_cl_gemm_tune_fall_back(&fx->dev, &c, "build failed");
    expect(&c, KE_TUNE_BUILT_IN, "", "warning: the tuning database's 'cpu,rows_nt=16' fails here");
}

/* ---- the sweep on the device under test ---------------------------------------------------- */

typedef struct sweep_fixture {
    kc_device_list *list;
    kc_context *ctx;
} sweep_fixture;

static int sweep_setup(void **state)
{
    sweep_fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    *state = fx;
    return ts_cl_open(&fx->list, NULL, &fx->ctx);
}

static int sweep_teardown(void **state)
{
    sweep_fixture *fx = *state;
    ts_cl_close(&fx->list, &fx->ctx);
    free(fx);
    return 0;
}

/* One candidate, rows_max_m=1: gemm_tiles above one row, where the row runs gemm_rows (on a
 * CPU) - the same sums, so accepted; then the same candidate with its k cut into chunks of 128
 * (the row's is one chunk of 512, or the GPU rows' own): other sums, so rejected. */
static void test_sweep_verifies(void **state)
{
    sweep_fixture *fx = *state;
    TS_CL_REQUIRE(fx->ctx);
    ke_cl_tunables row;
    ke_cl_tunables_get(kc_context_device(fx->ctx), NULL, &row);
    char candidate[64];
    snprintf(candidate, sizeof candidate, "%s,rows_max_m=1", row.label);
    const char *const candidates[] = {candidate, NULL};
    const ke_gemm_shape shapes[] = {{"fc", 96, 512, 2, 0, false}, {"out", 64, 512, 1, -1, true}};
    const size_t m[] = {1, 9};
    ke_gemm_sweep_params p;
    ke_gemm_sweep_params_default(&p);
    p.shapes = shapes, p.n_shapes = 2, p.m = m, p.n_m = 2;
    p.seconds = 0.05;
    p.candidates = candidates;
    ke_gemm_sweep_result r;
    assert_int_equal(ke_gemm_sweep_run(fx->ctx, &p, &r), KS_OK);
    assert_int_equal(r.measured, 2);
    assert_int_equal(r.rejected, 0);
    assert_non_null(strstr(r.base, row.label));
    assert_true(r.best_score > 0);
    assert_non_null(json_object_get(r.figures, "best"));
    ke_gemm_sweep_result_fini(&r);

    p.test_chunk = 128;
    assert_int_equal(ke_gemm_sweep_run(fx->ctx, &p, &r), KS_OK);
    assert_int_equal(r.measured, 2);
    assert_int_equal(r.rejected, 1);
    assert_string_equal(r.best, r.base);
    json_t *why = json_object_get(json_array_get(json_object_get(r.figures, "rejected"), 0), "why");
    assert_non_null(why);
    print_message("rejected: %s\n", json_string_value(why));
    assert_non_null(strstr(json_string_value(why), "the row's"));
    ke_gemm_sweep_result_fini(&r);

    /* bad params fail, naming the limits */
    p.n_m = 0;
    assert_int_equal(ke_gemm_sweep_run(fx->ctx, &p, &r), KS_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_tunables_text),
        cmocka_unit_test(test_tunables_check),
        cmocka_unit_test(test_same_sums),
        cmocka_unit_test_setup_teardown(test_choose, choose_setup, choose_teardown),
    };
    const struct CMUnitTest device[] = {
        cmocka_unit_test(test_sweep_verifies),
    };
    int failed = cmocka_run_group_tests_name("tunables", pure, NULL, NULL);
    return failed + cmocka_run_group_tests_name("sweep", device, sweep_setup, sweep_teardown);
}
