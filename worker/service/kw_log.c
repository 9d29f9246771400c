/* kw_log: see kw_log.h. */
#include "kw_log.h"

#include <stdarg.h>
#include <stdatomic.h>

#include "kw_batch.h"

static atomic_int kw_level = KS_LOG_INFO;

void kw_log_set_level(ks_log_level level) { atomic_store(&kw_level, (int)level); }

void kw_log(ks_log_level level, const char *event, const char *fields, ...)
{
    if ((int)level < atomic_load(&kw_level))
        return;
    va_list ap;
    va_start(ap, fields);
    ks_logv(NULL, level, kw_unix_ms(), event, fields, ap);
    va_end(ap);
}
