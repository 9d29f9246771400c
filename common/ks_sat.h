/* ks_sat: saturating arithmetic on the numbers a peer sends (deadlines, sizes, counts), so that
 * "as late as possible" (a deadline of 2^64 - 1, meaning never) stays the latest time instead
 * of wrapping round to the earliest. Header only: each is one comparison. */
#ifndef KS_SAT_H
#define KS_SAT_H

#include <stdint.h>

/* a + b, or UINT64_MAX when that overflows. */
static inline uint64_t ks_sat_add_u64(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* a - b, or 0 when b > a. */
static inline uint64_t ks_sat_sub_u64(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

/* v as a non-negative int64 (SQLite's integer), INT64_MAX when it does not fit. */
static inline int64_t ks_sat_i64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

#endif
