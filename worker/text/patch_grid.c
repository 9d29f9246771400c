/* patch_grid: see patch_grid.h. Every float operation below is written in the order and the
 * precision (double) the Python source uses, so results are bit-identical. */
#include "patch_grid.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h" /* KT_PATCH_GRID */

enum { GRID = KT_PATCH_GRID };

bool kt_patch_box_is_ordered(const double box[4]) { return box[2] > box[0] && box[3] > box[1]; }

ks_status kt_patch_box_to_indices(const double box[4], int32_t *ul, int32_t *lr)
{
    static const char *const names[4] = {"x1", "y1", "x2", "y2"};
    for (int i = 0; i < 4; i++)
        if (!(box[i] >= 0.0 && box[i] <= 1.0)) /* also catches NaN */
            return ks_fail(KS_ERR_INVALID,
                           "box coordinate %s = %.17g is outside [0, 1]: it would name a "
                           "patch-index token that does not exist",
                           names[i], box[i]);
    /* Python: x * num_patches_per_side with an int 32 -> float multiply, then math.floor/ceil. */
    double side = (double)GRID;
    double ul_x = floor(box[0] * side), ul_y = floor(box[1] * side);
    double lr_x = ceil(box[2] * side - 1), lr_y = ceil(box[3] * side - 1);
    double corners[4] = {ul_x, ul_y, lr_x, lr_y};
    for (int i = 0; i < 4; i++)
        if (!(corners[i] >= 0.0 && corners[i] <= (double)(GRID - 1)))
            return ks_fail(KS_ERR_INVALID,
                           "box (%.17g, %.17g, %.17g, %.17g) puts a corner at grid cell %.0f, "
                           "off the %dx%d grid: it would name a patch-index token that does "
                           "not exist",
                           box[0], box[1], box[2], box[3], corners[i], GRID, GRID);
    *ul = (int32_t)ul_y * GRID + (int32_t)ul_x;
    *lr = (int32_t)lr_y * GRID + (int32_t)lr_x;
    return KS_OK;
}

/* One index split into column (index % 32) and row (index // 32, as normalized decimal digits
 * and as the double Python's int -> float conversion gives). */
typedef struct grid_index {
    int col;
    char *row; /* owned, NUL-terminated, no leading zeros ("0" for zero) */
    double row_value;
} grid_index;

static ks_status split_index(const char *digits, size_t len, grid_index *out)
{
    out->row = malloc(len + 1);
    if (!out->row)
        return ks_fail(KS_ERR_NOMEM, "out of memory splitting a %zu-digit patch index", len);
    /* Schoolbook long division by 32, one decimal digit at a time. */
    size_t n = 0;
    unsigned remainder = 0;
    for (size_t i = 0; i < len; i++) {
        remainder = remainder * 10 + (unsigned)(digits[i] - '0');
        unsigned q = remainder / GRID;
        remainder %= GRID;
        if (q || n)
            out->row[n++] = (char)('0' + q);
    }
    if (n == 0)
        out->row[n++] = '0';
    out->row[n] = '\0';
    out->col = (int)remainder;
    /* glibc's strtod rounds correctly (to nearest, ties to even), as Python's int -> float. */
    out->row_value = strtod(out->row, NULL);
    if (isinf(out->row_value))
        return ks_fail(KS_ERR_INVALID,
                       "int too large to convert to float (patch index row with %zu digits)", n);
    return KS_OK;
}

static const char *skip_zeros(const char *d, size_t *len)
{
    while (*len > 1 && *d == '0')
        d++, (*len)--;
    return d;
}

ks_status kt_patch_indices_to_box(const char *ul, size_t ul_len, const char *lr, size_t lr_len,
                                  double box[4])
{
    grid_index u = {0}, l = {0};
    ks_status st = split_index(ul, ul_len, &u);
    if (st == KS_OK)
        st = split_index(lr, lr_len, &l);
    if (st != KS_OK)
        goto cleanup;

    ul = skip_zeros(ul, &ul_len);
    lr = skip_zeros(lr, &lr_len);
    bool same_index = ul_len == lr_len && memcmp(ul, lr, ul_len) == 0;
    bool same_col = u.col == l.col;
    bool same_row = strcmp(u.row, l.row) == 0;

    double cell = 1.0 / GRID;
    if (same_index || same_col || same_row) {
        /* A single cell, column or row: the outer edges of the cells. */
        box[0] = u.col * cell;
        box[1] = u.row_value * cell;
        box[2] = l.col * cell + cell;
        box[3] = l.row_value * cell + cell;
    } else {
        /* Otherwise the centres of the corner cells. */
        box[0] = u.col * cell + cell / 2;
        box[1] = u.row_value * cell + cell / 2;
        box[2] = l.col * cell + cell / 2;
        box[3] = l.row_value * cell + cell / 2;
    }
cleanup:
    free(u.row);
    free(l.row);
    return st;
}
