/* submit_output: see submit_output.h. */
#include "submit_output.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ks_base64.h"
#include "ks_buf.h"
#include "ks_utf8.h"

struct submit_output {
    FILE *out;
    bool owned, newline_first;
    pthread_mutex_t lock;
};

ks_status submit_output_new(FILE *out, bool owned, bool newline_first, submit_output **po)
{
    submit_output *o = calloc(1, sizeof *o);
    if ((*po = o) == NULL)
        return ks_fail(KS_ERR_NOMEM, "out of memory for the output writer");
    *o = (submit_output){.out = out, .owned = owned, .newline_first = newline_first};
    pthread_mutex_init(&o->lock, NULL);
    return KS_OK;
}

ks_status submit_output_destroy(submit_output **po)
{
    submit_output *o = po ? *po : NULL;
    if (!o)
        return KS_OK;
    ks_status st = KS_OK;
    if (fflush(o->out) != 0)
        st = ks_fail(KS_ERR_IO, "writing the output failed: %s", strerror(errno));
    if (o->owned && fclose(o->out) != 0 && !st)
        st = ks_fail(KS_ERR_IO, "closing the output failed: %s", strerror(errno));
    pthread_mutex_destroy(&o->lock);
    free(o);
    *po = NULL;
    return st;
}

ks_status submit_output_write(submit_output *o, const json_t *line)
{
    char *text = json_dumps(line, JSON_COMPACT);
    if (!text)
        return ks_fail(KS_ERR_NOMEM, "out of memory encoding a result");
    pthread_mutex_lock(&o->lock);
    if (o->newline_first) {
        fputc('\n', o->out);
        o->newline_first = false;
    }
    /* One write per line, so that a killed run leaves at most its last line partial. */
    size_t len = strlen(text);
    text[len] = '\n';
    bool ok = fwrite(text, 1, len + 1, o->out) == len + 1 && fflush(o->out) == 0;
    int err = errno;
    pthread_mutex_unlock(&o->lock);
    free(text);
    return ok ? KS_OK : ks_fail(KS_ERR_IO, "writing the output failed: %s", strerror(err));
}

/* Sets "path" (readable) and, for a name that is not UTF-8, "path_bytes" (exact). -1 on
 * failure (jansson's convention). */
static int set_path(json_t *line, const char *path)
{
    if (json_object_set_new(line, "path", submit_output_string(path)))
        return -1;
    size_t len = strlen(path);
    if (ks_utf8_valid(path, len))
        return 0;
    char *b64 = ks_base64_encode(path, len);
    int rc = b64 ? json_object_set_new(line, "path_bytes", json_string(b64)) : -1;
    free(b64);
    return rc;
}

char *submit_output_line_path(const json_t *line)
{
    const char *b64 = json_string_value(json_object_get(line, "path_bytes"));
    size_t len;
    if (b64) {
        uint8_t *bytes = ks_base64_decode(b64, &len);
        if (bytes && len > 0 && memchr(bytes, 0, len) == NULL)
            return (char *)bytes;
        free(bytes);
        return NULL; /* a damaged line: it names no file */
    }
    const char *path = json_string_value(json_object_get(line, "path"));
    return path ? strdup(path) : NULL;
}

json_t *submit_output_string(const char *s)
{
    size_t len = strlen(s);
    if (ks_utf8_valid(s, len))
        return json_stringn(s, len);
    /* A file name need not be UTF-8: each invalid byte becomes U+FFFD. */
    ks_buf b;
    ks_buf_init(&b);
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t n = ks_utf8_decode(s + i, len - i, &cp);
        if (n <= 1 && cp == 0xFFFDu) {
            ks_buf_append(&b, "\xEF\xBF\xBD", 3);
            i++;
        } else {
            ks_buf_append(&b, s + i, n);
            i += n;
        }
    }
    json_t *out = json_stringn(b.data ? b.data : "", b.len);
    ks_buf_fini(&b);
    return out;
}

static json_t *box_json(const kosmos_box_t *b)
{
    return json_pack("[ffff]", b->x1, b->y1, b->x2, b->y2);
}

static json_t *timings_json(const kosmos_timings_t *t, const char *device)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    const struct {
        const char *name;
        double v;
    } ms[] = {{"load_ms", t->load_ms},
              {"preprocess_ms", t->preprocess_ms},
              {"vision_ms", t->vision_ms},
              {"prefill_ms", t->prefill_ms},
              {"decode_ms", t->decode_ms}};
    for (size_t k = 0; k < sizeof ms / sizeof ms[0]; k++)
        if (ms[k].v >= 0)
            json_object_set_new(o, ms[k].name, json_real(ms[k].v));
    if (t->new_tokens >= 0)
        json_object_set_new(o, "new_tokens", json_integer(t->new_tokens));
    if (t->prompt_tokens >= 0)
        json_object_set_new(o, "prompt_tokens", json_integer(t->prompt_tokens));
    json_object_set_new(o, "device", json_string(device));
    return o;
}

json_t *submit_output_result_line(const char *path, const char *prompt, const kosmos_result_t *r,
                                  size_t i)
{
    kosmos_result_status_t status = kosmos_result_prompt_status(r, i);
    if (status == KOSMOS_RESULT_UNKNOWN)
        status = kosmos_result_status(r);
    uint32_t width = kosmos_result_image_width(r), height = kosmos_result_image_height(r);
    json_t *line = json_object(), *entities = json_array(), *boxes_px = json_array();
    if (!line || !entities || !boxes_px)
        goto fail;
    size_t n = kosmos_result_entity_count(r, i);
    for (size_t j = 0; j < n; j++) {
        const kosmos_entity_t *e = kosmos_result_entity(r, i, j);
        json_t *boxes = json_array(), *px = json_array();
        for (size_t b = 0; boxes && px && b < e->box_count; b++) {
            json_array_append_new(boxes, box_json(&e->boxes[b]));
            kosmos_box_t p = e->boxes_px
                                 ? e->boxes_px[b]
                                 : (kosmos_box_t){e->boxes[b].x1 * width, e->boxes[b].y1 * height,
                                                  e->boxes[b].x2 * width, e->boxes[b].y2 * height};
            json_array_append_new(px, box_json(&p));
        }
        json_t *entity = boxes ? json_pack("[s[II]O]", e->phrase, (json_int_t)e->start_cp,
                                           (json_int_t)e->end_cp, boxes)
                               : NULL;
        json_decref(boxes);
        if (!entity || !px || json_array_append_new(entities, entity) ||
            json_array_append_new(boxes_px, px))
            goto fail;
    }
    const kosmos_timings_t *t = kosmos_result_timings(r, i);
    const char *message = kosmos_result_prompt_message(r, i);
    if (!message[0])
        message = kosmos_result_message(r);
    if (set_path(line, path) || json_object_set_new(line, "prompt", json_string(prompt)) ||
        json_object_set_new(line, "status", json_string(kosmos_result_status_name(status))) ||
        json_object_set_new(line, "text", json_string(kosmos_result_text(r, i))) ||
        json_object_set(line, "entities", entities) ||
        json_object_set(line, "boxes_px", boxes_px) ||
        json_object_set_new(line, "timings",
                            t ? timings_json(t, kosmos_result_device(r)) : json_null()) ||
        json_object_set_new(line, "worker", json_string(kosmos_result_worker(r))) ||
        json_object_set_new(line, "job_id", json_string(kosmos_result_job_id(r))) ||
        json_object_set_new(line, "width", json_integer(width)) ||
        json_object_set_new(line, "height", json_integer(height)) ||
        (status != KOSMOS_RESULT_OK &&
         json_object_set_new(line, "error", json_string(message[0] ? message : "failed"))))
        goto fail;
    json_decref(entities);
    json_decref(boxes_px);
    return line;
fail:
    json_decref(entities);
    json_decref(boxes_px);
    json_decref(line);
    return NULL;
}

json_t *submit_output_error_line(const char *path, const char *prompt, const char *status,
                                 const char *job_id, const char *message)
{
    json_t *line = json_pack("{s:s, s:s, s:s, s:s, s:[], s:[], s:n, s:s, s:s, s:i, s:i, s:s}",
                             "path", "", "prompt", prompt, "status", status, "text", "", "entities",
                             "boxes_px", "timings", "worker", "", "job_id", job_id ? job_id : "",
                             "width", 0, "height", 0, "error",
                             message && message[0] ? message : "failed");
    if (line && set_path(line, path)) {
        json_decref(line);
        return NULL;
    }
    return line;
}
