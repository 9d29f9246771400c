/* unicode_digit: see unicode_digit.h.
 *
 * Every Nd block of Unicode 14.0 is a run of ten consecutive code points with values 0..9, so a
 * table of the zeros is the whole property. Generated with Python 3.11 (unidata 14.0.0):
 *   [cp for cp in range(0x110000) if unicodedata.decimal(chr(cp), None) == 0]
 * and checked there to agree with re's `\d` on every code point. */
#include "unicode_digit.h"

#include <stddef.h>

static const uint32_t digit_zeros[] = {
    0x30,    0x660,   0x6f0,   0x7c0,   0x966,   0x9e6,   0xa66,   0xae6,   0xb66,   0xbe6,
    0xc66,   0xce6,   0xd66,   0xde6,   0xe50,   0xed0,   0xf20,   0x1040,  0x1090,  0x17e0,
    0x1810,  0x1946,  0x19d0,  0x1a80,  0x1a90,  0x1b50,  0x1bb0,  0x1c40,  0x1c50,  0xa620,
    0xa8d0,  0xa900,  0xa9d0,  0xa9f0,  0xaa50,  0xabf0,  0xff10,  0x104a0, 0x10d30, 0x11066,
    0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650, 0x116c0, 0x11730, 0x118e0,
    0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2,
    0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0,
};

int kt_unicode_digit_value(uint32_t cp)
{
    if (cp < 0x80)
        return cp >= '0' && cp <= '9' ? (int)(cp - '0') : -1;
    /* The last zero <= cp decides: runs never overlap. */
    size_t lo = 0, hi = sizeof digit_zeros / sizeof digit_zeros[0];
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (digit_zeros[mid] <= cp)
            lo = mid;
        else
            hi = mid;
    }
    uint32_t offset = cp - digit_zeros[lo];
    return offset < 10 ? (int)offset : -1;
}
