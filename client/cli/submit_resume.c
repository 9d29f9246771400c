/* submit_resume: see submit_resume.h. */
#include "submit_resume.h"

#include "submit_output.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void submit_resume_init(submit_resume *r)
{
    memset(r, 0, sizeof *r);
    submit_set_init(&r->done);
    submit_set_init(&r->failed);
}

void submit_resume_fini(submit_resume *r)
{
    submit_set_fini(&r->done);
    submit_set_fini(&r->failed);
}

ks_status submit_resume_load(submit_resume *r, const char *path,
                             void (*on_ok)(const json_t *line, void *ctx), void *ctx)
{
    FILE *in = fopen(path, "r");
    if (!in)
        return errno == ENOENT ? KS_OK
                               : ks_fail(KS_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    ks_status st = KS_OK;
    while (!st && (len = getline(&line, &cap, in)) >= 0) {
        r->partial_last_line = len > 0 && line[len - 1] != '\n';
        json_t *value = json_loadb(line, (size_t)len, 0, NULL);
        char *p = value ? submit_output_line_path(value) : NULL; /* exact, submit_output.h */
        const char *prompt = json_string_value(json_object_get(value, "prompt"));
        const char *status = json_string_value(json_object_get(value, "status"));
        if (!p || !prompt || !status) {
            r->bad_lines++;
        } else {
            uint64_t key = submit_set_hash(p, prompt);
            if (!strcmp(status, "ok")) {
                r->ok_lines++;
                st = submit_set_put(&r->done, key, 1);
                if (on_ok)
                    on_ok(value, ctx);
            } else {
                r->other_lines++;
                uint32_t *n = submit_set_find(&r->failed, key);
                st = submit_set_put(&r->failed, key, n ? *n + 1 : 1);
            }
        }
        free(p);
        json_decref(value);
    }
    if (!st && ferror(in))
        st = ks_fail(KS_ERR_IO, "reading %s failed", path);
    free(line);
    fclose(in);
    return st;
}

bool submit_resume_is_done(const submit_resume *r, const char *path, const char *prompt)
{
    return submit_set_find(&r->done, submit_set_hash(path, prompt)) != NULL;
}

unsigned submit_resume_round(const submit_resume *r, const char *path, const char *prompt)
{
    const uint32_t *n = submit_set_find(&r->failed, submit_set_hash(path, prompt));
    return n ? *n : 0;
}
