/* vips_runtime: once-per-process libvips set-up and error conversion (see vips_runtime.h). */
#include "vips_runtime.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <vips/vips.h>

#include "image_formats.h"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static ks_status init_status = KS_ERR_UNSUPPORTED;
static char init_message[256];
static char formats[128];

static void init_once_fn(void)
{
    if (VIPS_INIT("kosmos")) {
        char *msg = vips_error_buffer_copy();
        snprintf(init_message, sizeof init_message, "libvips failed to start: %s", msg ? msg : "");
        g_free(msg);
        return;
    }
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_block_untrusted_set(TRUE);
    /* The accepted formats of image_formats.h, less libvips loaders this build lacks. */
    size_t n, used = 0;
    const ki_format *list = ki_format_list(&n);
    for (size_t i = 0; i < n; i++) {
        const ki_format *f = &list[i];
        if (f->decoder == KI_DECODER_NONE ||
            (f->decoder == KI_DECODER_VIPS && !vips_type_find("VipsOperation", f->vips_loader))) {
            continue;
        }
        int w = snprintf(formats + used, sizeof formats - used, "%s%s", used ? " " : "", f->name);
        used += w > 0 && (size_t)w < sizeof formats - used ? (size_t)w : 0;
    }
    init_status = KS_OK;
}

ks_status ki_init(void)
{
    pthread_once(&init_once, init_once_fn);
    if (init_status != KS_OK) {
        return ks_fail(init_status, "%s", init_message);
    }
    return KS_OK;
}

void ki_thread_shutdown(void)
{
    if (init_status == KS_OK) {
        vips_thread_shutdown();
    }
}

const char *ki_formats(void) { return ki_init() == KS_OK ? formats : ""; }

bool ki_format_available(const char *name)
{
    const char *f = ki_formats();
    size_t n = strlen(name);
    if (n == 0) {
        return false;
    }
    for (const char *p = strstr(f, name); p; p = strstr(p + 1, name)) {
        if ((p == f || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) {
            return true;
        }
    }
    return false;
}

ks_status ki_vips_fail(ks_status code, const char *what)
{
    char *msg = vips_error_buffer_copy(); /* takes and clears the process-wide buffer */
    size_t n = msg ? strlen(msg) : 0;
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) {
        msg[--n] = '\0';
    }
    for (size_t i = 0; i < n; i++) { /* several lines from libvips become one */
        if (msg[i] == '\n') {
            msg[i] = ';';
        }
    }
    if (n) {
        ks_fail(code, "%s: %s", what, msg);
    } else {
        ks_fail(code, "%s", what);
    }
    g_free(msg);
    return code;
}
