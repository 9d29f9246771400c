/* test_skip: how a cmocka test says that it cannot run on this machine.
 *
 * A sub-test whose capability is missing here (an OpenCL device, libzmq's CURVE) is skipped
 * with the reason, so that the suite still means something on a machine without it. Where the
 * capability must be present - CI, or any machine after ops/install-deps.sh, which sets
 * KOSMOS_TEST_REQUIRE_ALL=1 - the same call fails the test instead: a suite that passes by
 * skipping would hide a broken device or build. A test that can never apply to a
 * configuration (a device test in the no-OpenCL run) is left out of the list instead. */
#ifndef KOSMOS_TEST_SKIP_H
#define KOSMOS_TEST_SKIP_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static inline bool kt_require_all(void)
{
    const char *v = getenv("KOSMOS_TEST_REQUIRE_ALL");
    return v && *v && strcmp(v, "0") != 0;
}

/* Ends the current test: a failure under KOSMOS_TEST_REQUIRE_ALL=1, else a skip. WHY is a
 * string literal naming what is missing. */
#define KT_CANNOT_RUN(why)                                                                         \
    do {                                                                                           \
        if (kt_require_all())                                                                      \
            fail_msg("%s, and KOSMOS_TEST_REQUIRE_ALL=1 makes that a failure", why);               \
        print_message("%s: skipped\n", why);                                                       \
        skip();                                                                                    \
    } while (0)

#endif
