/* A ZeroMQ CURVE certificate file as czmq's zcert writes it, for the unit tests that start a
 * broker or a client with CURVE (header-only: each test is its own program). */
#ifndef TEST_CURVE_CERT_H
#define TEST_CURVE_CERT_H

#include <stdio.h>

/* Writes `pub` (and `sec` when not NULL) to `path`; fails the running cmocka test if it cannot. */
static void write_cert(const char *path, const char *pub, const char *sec)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#   ZeroMQ CURVE Certificate (test)\n\nmetadata\ncurve\n    public-key = \"%s\"\n",
            pub);
    if (sec)
        fprintf(f, "    secret-key = \"%s\"\n", sec);
    fclose(f);
}

#endif
