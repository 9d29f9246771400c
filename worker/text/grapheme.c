/* grapheme: see grapheme.h. The rules are applied as a left-to-right scan that keeps just the
 * context GB9c, GB11 and GB12/13 look back on, so a cluster of any length costs one pass. */
#include "grapheme.h"

#include <stdbool.h>
#include <stdint.h>

#include "grapheme_tables.h"
#include "ks_utf8.h"

typedef struct gc_props {
    uint8_t gcb, incb, pict;
} gc_props;

static gc_props props_of(uint32_t cp)
{
    gc_props p = {KT_GCB_OTHER, KT_INCB_NONE, 0};
    size_t lo = 0, hi = kt_gc_range_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (kt_gc_ranges[mid].hi < cp) {
            lo = mid + 1;
        } else if (kt_gc_ranges[mid].lo > cp) {
            hi = mid;
        } else {
            p.gcb = kt_gc_ranges[mid].gcb;
            p.incb = kt_gc_ranges[mid].incb;
            p.pict = kt_gc_ranges[mid].pictographic;
            break;
        }
    }
    return p;
}

size_t kt_grapheme_next(const char *s, size_t len, size_t pos)
{
    uint32_t cp;
    size_t i = pos + ks_utf8_decode(s + pos, len - pos, &cp);
    gc_props prev = props_of(cp);
    /* GB11: an Extended_Pictographic followed by Extend* (and maybe the ZWJ that is `prev`). */
    bool pict_seq = prev.pict;
    /* GB12/13: the count of Regional_Indicator characters ending at prev. */
    size_t ri_run = prev.gcb == KT_GCB_REGIONAL_INDICATOR;
    /* GB9c: after an InCB=Consonant followed by InCB Extend/Linker characters; `linked` once a
     * Linker has been among them. */
    bool conjunct = prev.incb == KT_INCB_CONSONANT, linked = false;

    while (i < len) {
        size_t n = ks_utf8_decode(s + i, len - i, &cp);
        gc_props next = props_of(cp);
        bool join;
        if (prev.gcb == KT_GCB_CR && next.gcb == KT_GCB_LF)
            join = true; /* GB3 */
        else if (prev.gcb == KT_GCB_CR || prev.gcb == KT_GCB_LF || prev.gcb == KT_GCB_CONTROL)
            join = false; /* GB4 */
        else if (next.gcb == KT_GCB_CR || next.gcb == KT_GCB_LF || next.gcb == KT_GCB_CONTROL)
            join = false; /* GB5 */
        else if (prev.gcb == KT_GCB_L && (next.gcb == KT_GCB_L || next.gcb == KT_GCB_V ||
                                          next.gcb == KT_GCB_LV || next.gcb == KT_GCB_LVT))
            join = true; /* GB6 */
        else if ((prev.gcb == KT_GCB_LV || prev.gcb == KT_GCB_V) &&
                 (next.gcb == KT_GCB_V || next.gcb == KT_GCB_T))
            join = true; /* GB7 */
        else if ((prev.gcb == KT_GCB_LVT || prev.gcb == KT_GCB_T) && next.gcb == KT_GCB_T)
            join = true; /* GB8 */
        else if (next.gcb == KT_GCB_EXTEND || next.gcb == KT_GCB_ZWJ)
            join = true; /* GB9 */
        else if (next.gcb == KT_GCB_SPACINGMARK)
            join = true; /* GB9a */
        else if (prev.gcb == KT_GCB_PREPEND)
            join = true; /* GB9b */
        else if (conjunct && linked && next.incb == KT_INCB_CONSONANT)
            join = true; /* GB9c */
        else if (pict_seq && prev.gcb == KT_GCB_ZWJ && next.pict)
            join = true; /* GB11 */
        else if (prev.gcb == KT_GCB_REGIONAL_INDICATOR && next.gcb == KT_GCB_REGIONAL_INDICATOR &&
                 ri_run % 2 == 1)
            join = true; /* GB12, GB13 */
        else
            join = false; /* GB999 */
        if (!join)
            break;

        /* Carry the look-back state past `next`. */
        if (next.pict)
            pict_seq = true;
        else if (!(pict_seq && prev.gcb != KT_GCB_ZWJ &&
                   (next.gcb == KT_GCB_EXTEND || next.gcb == KT_GCB_ZWJ)))
            pict_seq = false; /* a ZWJ ends the run: only a pictograph may follow it */
        ri_run = next.gcb == KT_GCB_REGIONAL_INDICATOR ? ri_run + 1 : 0;
        if (next.incb == KT_INCB_CONSONANT) {
            conjunct = true;
            linked = false;
        } else if (conjunct && next.incb == KT_INCB_LINKER) {
            linked = true;
        } else if (!(conjunct && next.incb == KT_INCB_EXTEND)) {
            conjunct = false;
            linked = false;
        }
        prev = next;
        i += n;
    }
    return i;
}
