/* grapheme_tables: the Unicode property table behind grapheme.c (generated data, see
 * gen_unicode_tables.py). Internal to kosmos_text. */
#ifndef KT_GRAPHEME_TABLES_H
#define KT_GRAPHEME_TABLES_H

#include <stddef.h>
#include <stdint.h>

/* Grapheme_Cluster_Break values (UAX #29). */
enum {
    KT_GCB_OTHER = 0,
    KT_GCB_CR,
    KT_GCB_LF,
    KT_GCB_CONTROL,
    KT_GCB_EXTEND,
    KT_GCB_ZWJ,
    KT_GCB_REGIONAL_INDICATOR,
    KT_GCB_PREPEND,
    KT_GCB_SPACINGMARK,
    KT_GCB_L,
    KT_GCB_V,
    KT_GCB_T,
    KT_GCB_LV,
    KT_GCB_LVT
};

/* Indic_Conjunct_Break values (rule GB9c). */
enum { KT_INCB_NONE = 0, KT_INCB_LINKER, KT_INCB_CONSONANT, KT_INCB_EXTEND };

typedef struct kt_gc_range {
    uint32_t lo, hi; /* inclusive */
    uint8_t gcb;
    uint8_t incb;
    uint8_t pictographic; /* Extended_Pictographic */
} kt_gc_range;

extern const kt_gc_range kt_gc_ranges[];
extern const size_t kt_gc_range_count;

#endif
