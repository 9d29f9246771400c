/* submit_paths: see submit_paths.h. A stack of open folders, each holding its sorted entries. */
#include "submit_paths.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "image_formats.h"
#include "ks_error.h"
#include "submit_set.h"

typedef struct frame {
    char *dir;
    char **names; /* sorted */
    size_t n, next;
} frame;

struct submit_paths {
    char *const *args;
    size_t n_args, next_arg;
    FILE *list; /* the @LIST being read, or NULL */
    char *list_name;
    frame *stack;
    size_t depth, cap;
    submit_set seen; /* (dev, ino) hashes of folders entered */
    char *current;   /* the last path returned */
    char *line;      /* getline buffer */
    size_t line_cap;
};

bool submit_paths_is_image(const char *name) { return ki_format_by_path(name) != NULL; }

ks_status submit_paths_new(char *const *args, size_t n, submit_paths **out)
{
    submit_paths *w = calloc(1, sizeof *w);
    if ((*out = w) == NULL)
        return ks_fail(KS_ERR_NOMEM, "out of memory for the path walker");
    w->args = args;
    w->n_args = n;
    submit_set_init(&w->seen);
    return KS_OK;
}

static void frame_fini(frame *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->names[i]);
    free(f->names);
    free(f->dir);
}

void submit_paths_destroy(submit_paths **pw)
{
    submit_paths *w = pw ? *pw : NULL;
    if (!w)
        return;
    while (w->depth)
        frame_fini(&w->stack[--w->depth]);
    free(w->stack);
    if (w->list && w->list != stdin)
        fclose(w->list);
    free(w->list_name);
    submit_set_fini(&w->seen);
    free(w->current);
    free(w->line);
    free(w);
    *pw = NULL;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    bool slash = a && dir[a - 1] != '/';
    char *p = malloc(a + slash + b + 1);
    if (p) {
        memcpy(p, dir, a);
        if (slash)
            p[a] = '/';
        memcpy(p + a + slash, name, b + 1);
    }
    return p;
}

/* Makes `owned` (NULL: an allocation failed) the path returned, and returns `code`. */
static int yield(submit_paths *w, char *owned, const char **path, int code)
{
    free(w->current);
    w->current = owned;
    *path = owned ? owned : "";
    if (!owned) {
        ks_fail(KS_ERR_NOMEM, "out of memory");
        return -1;
    }
    return code;
}

/* Opens folder `dir` as a new frame (which takes it), unless it was entered before (then `dir`
 * is freed). Returns 0 (pushed or skipped) or -1 (error, message set; `dir` still the
 * caller's). */
static int push_dir(submit_paths *w, char *dir, const struct stat *st)
{
    uint64_t key = ((uint64_t)st->st_dev * 0x9e3779b97f4a7c15ull) ^ (uint64_t)st->st_ino;
    if (submit_set_find(&w->seen, key)) {
        free(dir);
        return 0;
    }
    if (submit_set_put(&w->seen, key, 1))
        return -1;
    DIR *d = opendir(dir);
    if (!d) {
        ks_fail(KS_ERR_IO, "cannot open folder %s: %s", dir, strerror(errno));
        return -1;
    }
    frame f = {.dir = dir};
    size_t cap = 0;
    struct dirent *e;
    int code = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (f.n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **names = realloc(f.names, ncap * sizeof *names);
            if (!names) {
                code = -1;
                break;
            }
            f.names = names;
            cap = ncap;
        }
        if (!(f.names[f.n] = strdup(e->d_name))) {
            code = -1;
            break;
        }
        f.n++;
    }
    closedir(d);
    if (code == 0 && w->depth == w->cap) {
        size_t ncap = w->cap ? w->cap * 2 : 16;
        frame *stack = realloc(w->stack, ncap * sizeof *stack);
        if (stack) {
            w->stack = stack;
            w->cap = ncap;
        } else {
            code = -1;
        }
    }
    if (code) {
        ks_fail(KS_ERR_NOMEM, "out of memory listing %s", dir);
        f.dir = NULL;
        frame_fini(&f);
        return -1;
    }
    qsort(f.names, f.n, sizeof *f.names, compare_names);
    w->stack[w->depth++] = f;
    return 0;
}

/* One top-level path (from an argument or a list line): a file is yielded, a folder pushed.
 * Returns 1 (yielded), 0 (pushed or skipped) or -1. */
static int start_path(submit_paths *w, const char *p, const char **path)
{
    struct stat st;
    if (stat(p, &st) != 0) {
        ks_fail(KS_ERR_IO, "%s: %s", p, strerror(errno));
        return yield(w, strdup(p), path, -1);
    }
    if (S_ISDIR(st.st_mode)) {
        char *dir = strdup(p);
        if (!dir)
            return yield(w, NULL, path, -1);
        if (push_dir(w, dir, &st) < 0)
            return yield(w, dir, path, -1);
        return 0;
    }
    return yield(w, strdup(p), path, 1);
}

int submit_paths_next(submit_paths *w, const char **path)
{
    for (;;) {
        /* 1. Inside a folder: its next entry. */
        if (w->depth) {
            frame *f = &w->stack[w->depth - 1];
            if (f->next == f->n) {
                frame_fini(f);
                w->depth--;
                continue;
            }
            char *full = join(f->dir, f->names[f->next++]);
            if (!full)
                return yield(w, NULL, path, -1);
            struct stat st;
            if (stat(full, &st) != 0) {
                /* A dangling link with an image name fails visibly; anything else is skipped. */
                if (submit_paths_is_image(full)) {
                    ks_fail(KS_ERR_IO, "%s: %s", full, strerror(errno));
                    return yield(w, full, path, -1);
                }
                free(full);
                continue;
            }
            if (S_ISDIR(st.st_mode)) {
                if (push_dir(w, full, &st) < 0)
                    return yield(w, full, path, -1);
                continue;
            }
            if (S_ISREG(st.st_mode) && submit_paths_is_image(full))
                return yield(w, full, path, 1);
            free(full);
            continue;
        }
        /* 2. Inside a list: its next line. */
        if (w->list) {
            ssize_t len = getline(&w->line, &w->line_cap, w->list);
            if (len < 0) {
                bool failed = ferror(w->list);
                if (w->list != stdin)
                    fclose(w->list);
                w->list = NULL;
                if (failed) {
                    char *name = w->list_name;
                    w->list_name = NULL;
                    ks_fail(KS_ERR_IO, "reading %s failed", name ? name : "a list");
                    return yield(w, name, path, -1);
                }
                continue;
            }
            while (len && (w->line[len - 1] == '\n' || w->line[len - 1] == '\r'))
                w->line[--len] = '\0';
            if (!len)
                continue;
            int code = start_path(w, w->line, path);
            if (code)
                return code;
            continue;
        }
        /* 3. The next argument. */
        if (w->next_arg == w->n_args)
            return 0;
        const char *arg = w->args[w->next_arg++];
        if (arg[0] == '@') {
            free(w->list_name);
            w->list_name = strdup(arg + 1);
            w->list = !strcmp(arg + 1, "-") ? stdin : fopen(arg + 1, "r");
            if (!w->list) {
                ks_fail(KS_ERR_IO, "cannot open the list %s: %s", arg + 1, strerror(errno));
                return yield(w, strdup(arg), path, -1);
            }
            continue;
        }
        int code = start_path(w, arg, path);
        if (code)
            return code;
    }
}

bool submit_paths_check(char *const *args, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = args[i][0] == '@' ? args[i] + 1 : args[i];
        if (args[i][0] == '@' && !strcmp(p, "-"))
            continue;
        struct stat st;
        if (!p[0] || stat(p, &st) != 0) {
            ks_fail(KS_ERR_IO, "%s: %s", args[i], p[0] ? strerror(errno) : "empty path");
            return false;
        }
        if (args[i][0] == '@' && S_ISDIR(st.st_mode)) {
            ks_fail(KS_ERR_INVALID, "%s: a list must be a file, not a folder", args[i]);
            return false;
        }
    }
    return true;
}
