/* submit_progress: see submit_progress.h. */
#include "submit_progress.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct submit_progress {
    FILE *out;
    bool tty, quiet, stop, started, finished;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    submit_counts c;
    uint64_t total;
    bool total_final;
    double t0;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void format_duration(double s, char *buf, size_t cap)
{
    if (s < 0 || s > 1e8) {
        snprintf(buf, cap, "?");
        return;
    }
    unsigned long t = (unsigned long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%luh%02lum", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(buf, cap, "%lum%02lus", t / 60, t % 60);
    else
        snprintf(buf, cap, "%lus", t);
}

/* Called with the lock held. */
static void draw(submit_progress *p)
{
    uint64_t done = p->c.ok + p->c.failed + p->c.skipped;
    uint64_t total = p->total > p->c.seen ? p->total : p->c.seen;
    bool known = p->total_final;
    double elapsed = now_s() - p->t0;
    double rate = elapsed > 0 ? (double)(p->c.ok + p->c.failed) / elapsed : 0;
    char eta[32] = "?";
    if (known && rate > 0)
        format_duration((double)(total - (done < total ? done : total)) / rate, eta, sizeof eta);
    char count[64];
    snprintf(count, sizeof count, "%llu/%s%llu", (unsigned long long)done,
             known ? "" : ">=", (unsigned long long)total);
    if (p->tty) {
        enum { width = 24 };
        char bar[width + 3]; /* '[' + width cells + ']' + NUL */
        int filled = known && total ? (int)((double)width * (double)done / (double)total) : 0;
        bar[0] = '[';
        for (int i = 0; i < width; i++)
            bar[1 + i] = i < filled ? '#' : (known ? '.' : ' ');
        bar[width + 1] = ']';
        bar[width + 2] = '\0';
        fprintf(p->out, "\r\033[K%s %s  %.2f img/s  ETA %s  errors %llu", bar, count, rate, eta,
                (unsigned long long)p->c.failed);
    } else {
        fprintf(p->out, "kosmos submit: %s done, %.2f img/s, ETA %s, %llu errors\n", count, rate,
                eta, (unsigned long long)p->c.failed);
    }
    fflush(p->out);
}

static void *run(void *arg)
{
    submit_progress *p = arg;
    double period = p->tty ? 0.2 : 5.0;
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        double next = (double)until.tv_nsec * 1e-9 + period;
        until.tv_sec += (time_t)next;
        until.tv_nsec = (long)((next - (double)(time_t)next) * 1e9);
        pthread_cond_timedwait(&p->wake, &p->lock, &until);
        if (!p->stop)
            draw(p);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

ks_status submit_progress_new(FILE *out, bool quiet, submit_progress **pp)
{
    submit_progress *p = calloc(1, sizeof *p);
    if ((*pp = p) == NULL)
        return ks_fail(KS_ERR_NOMEM, "out of memory for the progress display");
    p->out = out;
    p->quiet = quiet;
    p->tty = isatty(fileno(out));
    p->t0 = now_s();
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (!quiet && pthread_create(&p->thread, NULL, run, p) == 0)
        p->started = true;
    return KS_OK;
}

static void stop_thread(submit_progress *p)
{
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    if (p->started)
        pthread_join(p->thread, NULL);
    p->started = false;
}

void submit_progress_destroy(submit_progress **pp)
{
    submit_progress *p = pp ? *pp : NULL;
    if (!p)
        return;
    stop_thread(p);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p);
    *pp = NULL;
}

void submit_progress_add(submit_progress *p, const submit_counts *d)
{
    pthread_mutex_lock(&p->lock);
    p->c.seen += d->seen;
    p->c.skipped += d->skipped;
    p->c.submitted += d->submitted;
    p->c.duplicates += d->duplicates;
    p->c.ok += d->ok;
    p->c.failed += d->failed;
    pthread_mutex_unlock(&p->lock);
}

void submit_progress_total(submit_progress *p, uint64_t total, bool final)
{
    pthread_mutex_lock(&p->lock);
    p->total = total;
    p->total_final = final;
    pthread_mutex_unlock(&p->lock);
}

void submit_progress_finish(submit_progress *p, const char *extra)
{
    stop_thread(p);
    pthread_mutex_lock(&p->lock);
    if (p->tty && !p->quiet)
        fputs("\r\033[K", p->out);
    double elapsed = now_s() - p->t0;
    uint64_t done = p->c.ok + p->c.failed;
    fprintf(p->out,
            "kosmos submit: %llu done in %.1f s (%.2f img/s): %llu ok, %llu failed; %llu skipped "
            "(already ok); %llu submitted, %llu deduplicated%s%s\n",
            (unsigned long long)done, elapsed, elapsed > 0 ? (double)done / elapsed : 0.0,
            (unsigned long long)p->c.ok, (unsigned long long)p->c.failed,
            (unsigned long long)p->c.skipped, (unsigned long long)p->c.submitted,
            (unsigned long long)p->c.duplicates, extra ? "; " : "", extra ? extra : "");
    fflush(p->out);
    pthread_mutex_unlock(&p->lock);
}
