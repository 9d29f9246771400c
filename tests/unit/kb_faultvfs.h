/* kb_faultvfs: a test-only SQLite VFS over the default one that fails writes (SQLITE_FULL) or
 * syncs (SQLITE_IOERR_FSYNC), or holds syncs back, on demand, for the broker's disk-full,
 * fail-stop and durability tests. The switches are atomic: the broker's syncer thread reads
 * them. Header only; include it in one test file. */
#ifndef KB_FAULTVFS_H
#define KB_FAULTVFS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#define KB_FAULTVFS_NAME "kb-faultvfs"

static atomic_bool kbf_fail_writes; /* xWrite/xTruncate -> SQLITE_FULL */
static atomic_bool kbf_fail_syncs;  /* xSync -> SQLITE_IOERR_FSYNC */
static atomic_bool kbf_hold_syncs;  /* xSync waits while set (a disk that is slow to sync) */
static sqlite3_vfs *kbf_real;

typedef struct kbf_file {
    sqlite3_file base;
    sqlite3_file *real; /* follows this struct in the same allocation */
} kbf_file;

static int kbf_close(sqlite3_file *f)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods ? k->real->pMethods->xClose(k->real) : SQLITE_OK;
}
static int kbf_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xRead(k->real, b, n, o);
}
static int kbf_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
    kbf_file *k = (kbf_file *)f;
    if (kbf_fail_writes)
        return SQLITE_FULL;
    return k->real->pMethods->xWrite(k->real, b, n, o);
}
static int kbf_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    kbf_file *k = (kbf_file *)f;
    if (kbf_fail_writes)
        return SQLITE_FULL;
    return k->real->pMethods->xTruncate(k->real, size);
}
static int kbf_sync(sqlite3_file *f, int flags)
{
    kbf_file *k = (kbf_file *)f;
    const struct timespec ms = {0, 1000000};
    while (atomic_load(&kbf_hold_syncs))
        nanosleep(&ms, NULL);
    if (kbf_fail_syncs)
        return SQLITE_IOERR_FSYNC;
    return k->real->pMethods->xSync(k->real, flags);
}
static int kbf_size(sqlite3_file *f, sqlite3_int64 *s)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xFileSize(k->real, s);
}
static int kbf_lock(sqlite3_file *f, int l)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xLock(k->real, l);
}
static int kbf_unlock(sqlite3_file *f, int l)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xUnlock(k->real, l);
}
static int kbf_check(sqlite3_file *f, int *r)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xCheckReservedLock(k->real, r);
}
static int kbf_fctl(sqlite3_file *f, int op, void *a)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xFileControl(k->real, op, a);
}
static int kbf_sector(sqlite3_file *f)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xSectorSize(k->real);
}
static int kbf_devchar(sqlite3_file *f)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xDeviceCharacteristics(k->real);
}
static int kbf_shmmap(sqlite3_file *f, int pg, int sz, int e, void volatile **p)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xShmMap(k->real, pg, sz, e, p);
}
static int kbf_shmlock(sqlite3_file *f, int o, int n, int fl)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xShmLock(k->real, o, n, fl);
}
static void kbf_shmbarrier(sqlite3_file *f)
{
    kbf_file *k = (kbf_file *)f;
    k->real->pMethods->xShmBarrier(k->real);
}
static int kbf_shmunmap(sqlite3_file *f, int d)
{
    kbf_file *k = (kbf_file *)f;
    return k->real->pMethods->xShmUnmap(k->real, d);
}

static const sqlite3_io_methods kbf_methods = {
    2,           kbf_close,      kbf_read,     kbf_write, kbf_truncate, kbf_sync,    kbf_size,
    kbf_lock,    kbf_unlock,     kbf_check,    kbf_fctl,  kbf_sector,   kbf_devchar, kbf_shmmap,
    kbf_shmlock, kbf_shmbarrier, kbf_shmunmap, NULL,      NULL};

static int kbf_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags, int *out)
{
    kbf_file *k = (kbf_file *)f;
    k->real = (sqlite3_file *)(k + 1);
    memset(k->real, 0, (size_t)kbf_real->szOsFile);
    int rc = kbf_real->xOpen(kbf_real, name, k->real, flags, out);
    f->pMethods = rc == SQLITE_OK ? &kbf_methods : NULL;
    (void)v;
    return rc;
}
static int kbf_delete(sqlite3_vfs *v, const char *n, int s)
{
    (void)v;
    return kbf_real->xDelete(kbf_real, n, s);
}
static int kbf_access(sqlite3_vfs *v, const char *n, int f, int *r)
{
    (void)v;
    return kbf_real->xAccess(kbf_real, n, f, r);
}
static int kbf_full(sqlite3_vfs *v, const char *n, int c, char *o)
{
    (void)v;
    return kbf_real->xFullPathname(kbf_real, n, c, o);
}
static int kbf_random(sqlite3_vfs *v, int n, char *o)
{
    (void)v;
    return kbf_real->xRandomness(kbf_real, n, o);
}
static int kbf_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return kbf_real->xSleep(kbf_real, us);
}
static int kbf_time(sqlite3_vfs *v, double *t)
{
    (void)v;
    return kbf_real->xCurrentTime(kbf_real, t);
}
static int kbf_lasterr(sqlite3_vfs *v, int n, char *o)
{
    (void)v;
    return kbf_real->xGetLastError(kbf_real, n, o);
}
static int kbf_time64(sqlite3_vfs *v, sqlite3_int64 *t)
{
    (void)v;
    return kbf_real->xCurrentTimeInt64(kbf_real, t);
}

static sqlite3_vfs kbf_vfs;

/* Registers the VFS (not as the default). */
static void kbf_register(void)
{
    if (kbf_real)
        return;
    kbf_real = sqlite3_vfs_find(NULL);
    kbf_vfs.iVersion = 2;
    kbf_vfs.szOsFile = (int)sizeof(kbf_file) + kbf_real->szOsFile;
    kbf_vfs.mxPathname = kbf_real->mxPathname;
    kbf_vfs.zName = KB_FAULTVFS_NAME;
    kbf_vfs.xOpen = kbf_open;
    kbf_vfs.xDelete = kbf_delete;
    kbf_vfs.xAccess = kbf_access;
    kbf_vfs.xFullPathname = kbf_full;
    kbf_vfs.xRandomness = kbf_random;
    kbf_vfs.xSleep = kbf_sleep;
    kbf_vfs.xCurrentTime = kbf_time;
    kbf_vfs.xGetLastError = kbf_lasterr;
    kbf_vfs.xCurrentTimeInt64 = kbf_time64;
    sqlite3_vfs_register(&kbf_vfs, 0);
}

#endif
