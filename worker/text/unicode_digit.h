/* unicode_digit: Python's idea of a decimal digit (the `\d` of a str regex, what int() accepts),
 * so that patch indices written with e.g. Arabic-Indic digits parse as the reference parses
 * them. Not a general Unicode library: only the decimal-digit property, Unicode 14.0 (the
 * database of Python 3.11, which the reference runs on). */
#ifndef KT_UNICODE_DIGIT_H
#define KT_UNICODE_DIGIT_H

#include <stdint.h>

/* The digit value 0..9 of code point cp (category Nd), or -1 when cp is not a decimal digit. */
int kt_unicode_digit_value(uint32_t cp);

#endif
