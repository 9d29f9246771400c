/* cli_args: strict parsing of option values, shared by every subcommand: the whole text must be
 * a number in range, so "8x", "" and "1e9" for an integer are usage errors, not silently 8. */
#ifndef KOSMOS_CLI_ARGS_H
#define KOSMOS_CLI_ARGS_H

#include <stdbool.h>

/* A decimal integer in [min, max] into *out; false (and *out untouched) otherwise. */
bool cli_parse_int(const char *text, long min, long max, int *out);

/* A finite number into *out; false otherwise. */
bool cli_parse_double(const char *text, double *out);

#endif
