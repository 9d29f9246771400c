/* patch_grid: the 32x32 grid behind the <patch_index_k> tokens, both ways, computed exactly as
 * transformers' processing_kosmos2.py does:
 *  - coordinate_to_patch_index: a normalized box a user gives the processor -> (UL, LR);
 *  - patch_index_to_coordinate: an (UL, LR) pair read back out of generated text -> a box.
 * Read-back indices are decimal strings of any length, because the reference parses them with
 * Python's int() (arbitrary precision) before the float arithmetic; this file reproduces that
 * instead of assuming 0..1023. Not the tokens themselves (tokenizer.h has their ids). */
#ifndef KT_PATCH_GRID_H
#define KT_PATCH_GRID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ks_error.h"

/* The reference's precondition on a normalized box (x1, y1, x2, y2): x2 > x1 and y2 > y1. */
bool kt_patch_box_is_ordered(const double box[4]);

/* coordinate_to_patch_index(box, 32) -> *ul, *lr (floor/ceil in double, as Python). Fails with
 * KS_ERR_INVALID when the box would name a token that does not exist: a coordinate outside [0, 1]
 * or not finite, or a corner that rounding puts off the grid (x2 so small that x2*32 - 1 rounds
 * to -1). Meant to be called on ordered boxes (kt_patch_box_is_ordered). */
ks_status kt_patch_box_to_indices(const double box[4], int32_t *ul, int32_t *lr);

/* patch_index_to_coordinate(UL, LR, 32) -> box (x1, y1, x2, y2). `ul` and `lr` are decimal
 * numbers in ASCII digits (borrowed; leading zeros allowed, at least one digit). Fails with
 * KS_ERR_INVALID, and Python's message, when a row index (UL // 32 or LR // 32) is too large for
 * a double: there Python's int * float raises OverflowError. KS_ERR_NOMEM when out of memory. */
ks_status kt_patch_indices_to_box(const char *ul, size_t ul_len, const char *lr, size_t lr_len,
                                  double box[4]);

#endif
