/* coco: see coco.h. coco_add appends one compact record per line to a tmpfile():
 *   [path, width, height, [[phrase, x1, y1, x2, y2], ...]]
 * coco_write reads it three times: categories, then images, then annotations. */
#include "coco.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "submit_set.h"

struct coco {
    FILE *tmp;
    pthread_mutex_t lock;
    size_t records;
};

ks_status coco_new(coco **out)
{
    *out = NULL;
    coco *c = calloc(1, sizeof *c);
    if (!c)
        return ks_fail(KS_ERR_NOMEM, "out of memory");
    if (!(c->tmp = tmpfile())) {
        ks_status st = ks_fail(KS_ERR_IO, "cannot create a temporary file for --coco: %s",
                               strerror(errno));
        free(c);
        return st;
    }
    pthread_mutex_init(&c->lock, NULL);
    *out = c;
    return KS_OK;
}

void coco_destroy(coco **pc)
{
    coco *c = pc ? *pc : NULL;
    if (!c)
        return;
    fclose(c->tmp);
    pthread_mutex_destroy(&c->lock);
    free(c);
    *pc = NULL;
}

ks_status coco_add(coco *c, const json_t *line)
{
    const json_t *entities = json_object_get(line, "entities");
    const json_t *boxes_px = json_object_get(line, "boxes_px");
    json_t *anns = json_array();
    size_t i;
    const json_t *entity;
    json_array_foreach(entities, i, entity) {
        const char *phrase = json_string_value(json_array_get(entity, 0));
        const json_t *px = json_array_get(boxes_px, i), *box;
        size_t b;
        json_array_foreach(px, b, box) {
            if (json_array_size(box) != 4 || !phrase)
                continue;
            json_array_append_new(anns, json_pack("[sffff]", phrase,
                                                  json_number_value(json_array_get(box, 0)),
                                                  json_number_value(json_array_get(box, 1)),
                                                  json_number_value(json_array_get(box, 2)),
                                                  json_number_value(json_array_get(box, 3))));
        }
    }
    /* [path, width, height, annotations, path_bytes or null]: images are told apart by the
     * exact name (submit_output.h), not by its readable form. */
    const json_t *bytes = json_object_get(line, "path_bytes");
    json_t *record = json_pack("[OIIoO]", json_object_get(line, "path"),
                               json_integer_value(json_object_get(line, "width")),
                               json_integer_value(json_object_get(line, "height")), anns,
                               bytes ? bytes : json_null());
    char *text = record ? json_dumps(record, JSON_COMPACT) : NULL;
    json_decref(record);
    if (!text)
        return ks_fail(KS_ERR_NOMEM, "out of memory recording a COCO image");
    pthread_mutex_lock(&c->lock);
    bool ok = fputs(text, c->tmp) >= 0 && fputc('\n', c->tmp) != EOF;
    c->records += ok;
    pthread_mutex_unlock(&c->lock);
    free(text);
    return ok ? KS_OK : ks_fail(KS_ERR_IO, "writing the COCO temporary file failed");
}

typedef struct names {
    char **v;
    size_t n, cap;
} names;

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the temporary file from the start, calling fn for each record. */
static ks_status each_record(coco *c, ks_status (*fn)(const json_t *rec, void *ctx), void *ctx)
{
    rewind(c->tmp);
    char *line = NULL;
    size_t cap = 0;
    ks_status st = KS_OK;
    while (!st && getline(&line, &cap, c->tmp) >= 0) {
        json_t *rec = json_loads(line, 0, NULL);
        st = rec ? fn(rec, ctx) : ks_fail(KS_ERR_FORMAT, "the COCO temporary file is corrupt");
        json_decref(rec);
    }
    free(line);
    return st;
}

static ks_status collect_phrase(const json_t *rec, void *ctx)
{
    names *cats = ctx;
    size_t i;
    const json_t *ann;
    json_array_foreach(json_array_get(rec, 3), i, ann) {
        if (cats->n == cats->cap) {
            size_t ncap = cats->cap ? cats->cap * 2 : 64;
            char **v = realloc(cats->v, ncap * sizeof *v);
            if (!v)
                return ks_fail(KS_ERR_NOMEM, "out of memory collecting COCO categories");
            cats->v = v;
            cats->cap = ncap;
        }
        if (!(cats->v[cats->n] = strdup(json_string_value(json_array_get(ann, 0)))))
            return ks_fail(KS_ERR_NOMEM, "out of memory collecting COCO categories");
        cats->n++;
        /* Keep the list small when one phrase repeats a lot: dedup every so often. */
        if (cats->n == cats->cap && cats->n >= 1024) {
            qsort(cats->v, cats->n, sizeof *cats->v, compare_names);
            size_t k = 0;
            for (size_t j = 0; j < cats->n; j++)
                if (k && !strcmp(cats->v[k - 1], cats->v[j]))
                    free(cats->v[j]);
                else
                    cats->v[k++] = cats->v[j];
            cats->n = k;
        }
    }
    return KS_OK;
}

typedef struct write_ctx {
    FILE *out;
    names *cats;
    submit_set images; /* path hash -> image id */
    uint32_t next_image;
    uint64_t next_ann;
    bool first;
} write_ctx;

/* The key of a record's image: its exact name (path_bytes when there is one). */
static uint64_t image_key(const json_t *rec)
{
    const char *bytes = json_string_value(json_array_get(rec, 4));
    return bytes ? submit_set_hash(bytes, "path_bytes")
                 : submit_set_hash(json_string_value(json_array_get(rec, 0)), NULL);
}

static ks_status write_image(const json_t *rec, void *ctx)
{
    write_ctx *w = ctx;
    const json_t *path = json_array_get(rec, 0), *bytes = json_array_get(rec, 4);
    uint64_t key = image_key(rec);
    if (submit_set_find(&w->images, key))
        return KS_OK;
    ks_status st = submit_set_put(&w->images, key, ++w->next_image);
    if (st)
        return st;
    json_t *image = json_pack("{s:I, s:O, s:O, s:O}", "id", (json_int_t)w->next_image, "file_name",
                              path, "width", json_array_get(rec, 1), "height",
                              json_array_get(rec, 2));
    if (image && json_is_string(bytes) &&
        json_object_set(image, "file_name_bytes", (json_t *)bytes)) {
        json_decref(image);
        image = NULL;
    }
    char *text = image ? json_dumps(image, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(image);
    if (!text)
        return ks_fail(KS_ERR_NOMEM, "out of memory writing COCO images");
    fprintf(w->out, "%s\n  %s", w->first ? "" : ",", text);
    w->first = false;
    free(text);
    return KS_OK;
}

static ks_status write_annotations(const json_t *rec, void *ctx)
{
    write_ctx *w = ctx;
    const uint32_t *image_id = submit_set_find(&w->images, image_key(rec));
    size_t i;
    const json_t *ann;
    json_array_foreach(json_array_get(rec, 3), i, ann) {
        const char *phrase = json_string_value(json_array_get(ann, 0));
        char **found = w->cats->n ? bsearch(&phrase, w->cats->v, w->cats->n, sizeof *w->cats->v,
                                            compare_names)
                                  : NULL;
        double x1 = json_number_value(json_array_get(ann, 1));
        double y1 = json_number_value(json_array_get(ann, 2));
        double x2 = json_number_value(json_array_get(ann, 3));
        double y2 = json_number_value(json_array_get(ann, 4));
        double bw = x2 - x1, bh = y2 - y1;
        json_t *a = json_pack("{s:I, s:I, s:I, s:[ffff], s:f, s:i}", "id",
                              (json_int_t)++w->next_ann, "image_id",
                              (json_int_t)(image_id ? *image_id : 0), "category_id",
                              (json_int_t)(found ? found - w->cats->v + 1 : 0), "bbox", x1, y1, bw,
                              bh, "area", bw * bh, "iscrowd", 0);
        char *text = a ? json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(a);
        if (!text)
            return ks_fail(KS_ERR_NOMEM, "out of memory writing COCO annotations");
        fprintf(w->out, "%s\n  %s", w->first ? "" : ",", text);
        w->first = false;
        free(text);
    }
    return KS_OK;
}

ks_status coco_write(coco *c, const char *path)
{
    names cats = {0};
    write_ctx w = {.cats = &cats, .first = true};
    submit_set_init(&w.images);
    ks_status st;
    pthread_mutex_lock(&c->lock);
    if (fflush(c->tmp) != 0) {
        st = ks_fail(KS_ERR_IO, "writing the COCO temporary file failed");
        goto done;
    }
    if ((st = each_record(c, collect_phrase, &cats)))
        goto done;
    if (cats.n) /* qsort's base must not be NULL, even for no element */
        qsort(cats.v, cats.n, sizeof *cats.v, compare_names);
    size_t k = 0;
    for (size_t j = 0; j < cats.n; j++)
        if (k && !strcmp(cats.v[k - 1], cats.v[j]))
            free(cats.v[j]);
        else
            cats.v[k++] = cats.v[j];
    cats.n = k;

    if (!(w.out = fopen(path, "w"))) {
        st = ks_fail(KS_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        goto done;
    }
    fputs("{\"info\": {\"description\": \"kosmos submit: Kosmos-2 grounded phrases\", "
          "\"bbox\": \"[x, y, width, height] in source-image pixels\"},\n\"images\": [",
          w.out);
    if ((st = each_record(c, write_image, &w)))
        goto done;
    fputs("\n],\n\"annotations\": [", w.out);
    w.first = true;
    if ((st = each_record(c, write_annotations, &w)))
        goto done;
    fputs("\n],\n\"categories\": [", w.out);
    for (size_t j = 0; j < cats.n; j++) {
        json_t *cat = json_pack("{s:I, s:s, s:s}", "id", (json_int_t)(j + 1), "name", cats.v[j],
                                "supercategory", "phrase");
        char *text = cat ? json_dumps(cat, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(cat);
        if (!text) {
            st = ks_fail(KS_ERR_NOMEM, "out of memory writing COCO categories");
            goto done;
        }
        fprintf(w.out, "%s\n  %s", j ? "," : "", text);
        free(text);
    }
    fputs("\n]}\n", w.out);
done:
    if (w.out && (fclose(w.out) != 0 || ferror(c->tmp)) && !st)
        st = ks_fail(KS_ERR_IO, "writing %s failed", path);
    fseek(c->tmp, 0, SEEK_END);
    pthread_mutex_unlock(&c->lock);
    for (size_t j = 0; j < cats.n; j++)
        free(cats.v[j]);
    free(cats.v);
    submit_set_fini(&w.images);
    return st;
}
