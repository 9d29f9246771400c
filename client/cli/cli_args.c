/* cli_args: see cli_args.h. */
#include "cli_args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

bool cli_parse_int(const char *text, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max || value < INT_MIN ||
        value > INT_MAX)
        return false;
    *out = (int)value;
    return true;
}

bool cli_parse_double(const char *text, double *out)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(value))
        return false;
    *out = value;
    return true;
}
