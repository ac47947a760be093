/* Snapshots in the workspace store: rows, per-source latest snapshot, stat cache. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <unistd.h>

#include "blobstore.h"
#include "log.h"
#include "snapshot.h"
#include "util.h"

/* ---- stat cache --------------------------------------------------------------------------- */

/* One file per source directory, <ws>/statcache/<fnv-1a of its path>, mapped and read in
 * one go like git's index (10k SQLite rows, or one 1 MB SQLite blob read page by page,
 * cost milliseconds of a warm re-snapshot):
 *   header  "ctstat1\n", the boot id it was written in (40 bytes, NUL-padded), the id of
 *           the snapshot recorded with it (64 hex digits, 8 NULs), the length of the shape
 *           (u64), the length of the source path (u64, then 16 bytes of 0), that
 *           snapshot's manifest size (u64), the stamps of the 256 blob fan-out directories
 *           (mtime_ns, ctime_ns, inode; all 0: not trusted), the entry count (u64)
 *   source  the source directory's path, padded to a multiple of 8
 *   shape   the tree's directories and symlinks (see tree_shape), padded to a multiple of 8
 *   entries size, mtime_ns, ctime_ns, inode, dev (8 bytes each), sha256 (32 raw bytes),
 *           path length (u32), 4 bytes of padding, the path padded to a multiple of 8;
 *           sorted by path in byte order.
 * Integers are in host byte order: the cache never leaves this machine, and one that does
 * not parse is simply not used.  It is written to a temporary file and renamed into place,
 * never fsync'ed: a file written in an earlier boot is not used at all (after a crash it
 * could hold anything), one from this boot is exactly what a complete write left (a
 * writer killed half-way never renamed its file), so it needs no checksum. */
#define SI_MAGIC "ctstat1\n"
#define SI_BOOT 40
#define SI_STAMP 24
#define SI_OFF_BOOT 8
#define SI_OFF_ID 48          /* the snapshot these entries and this shape gave (hex) */
#define SI_OFF_SHAPE 120      /* length of the shape (u64) */
#define SI_OFF_SOURCE 128     /* length of the source path (u64) */
#define SI_OFF_MBYTES 152     /* that snapshot's manifest size */
#define SI_OFF_STAMPS 160
#define SI_HEADER (SI_OFF_STAMPS + SNAP_FANOUT * SI_STAMP + 8)
_Static_assert(sizeof(snap_stamp) == SI_STAMP, "snap_stamp is stored as it is in memory");
_Static_assert(SNAP_CACHE_HEADER == SI_HEADER, "header size");
_Static_assert(sizeof(((snap_cache_state *)0)->boot) == SI_BOOT, "boot id size");
#define SI_FIXED 80
#define SI_MAX_PATH 65535

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static int blob_valid_id(const unsigned char *p)
{
    char id[65];
    memcpy(id, p, 64);
    id[64] = '\0';
    return blob_valid_sha(id);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Fan-out directory (0..255) of a blob: its first two hex digits. */
static int fanout_of(const char *sha)
{
    return hexval(sha[0]) * 16 + hexval(sha[1]);
}

void snap_boot_id(char out[SI_BOOT])
{
    memset(out, 0, SI_BOOT);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f)
        return;
    if (!fgets(out, SI_BOOT, f))
        out[0] = '\0';
    out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

/* The blob store's fan-out directories as they are now.  A directory's mtime and ctime
 * change whenever a name in it is added or removed (gc, or by hand), so an unchanged stamp
 * means every blob seen there before is still there.  A stamp younger than the racy margin
 * could still be followed by a change within the same timestamp tick: it is left 0 (never
 * trusted), as git's index does for racily clean files.  now_ns 0: take them as they are. */
static void fanout_stamps(const char *blob_root, int64_t now_ns, snap_stamp out[SNAP_FANOUT])
{
    memset(out, 0, SNAP_FANOUT * sizeof *out);
    int dfd = open(blob_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    for (int i = 0; i < SNAP_FANOUT; i++) {
        static const char hex[] = "0123456789abcdef";
        char name[3] = {hex[i >> 4], hex[i & 15], '\0'};
        struct stat st;
        if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode))
            continue;
        int64_t m = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        int64_t c = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
        if (now_ns && (m >= now_ns - SNAP_RACY_MARGIN_NS || c >= now_ns - SNAP_RACY_MARGIN_NS))
            continue;
        out[i] = (snap_stamp){m, c, (uint64_t)st.st_ino};
    }
    close(dfd);
}

static int stamp_trusted(const snap_stamp *s)
{
    return s->mtime_ns || s->ctime_ns || s->ino;
}

static int stamp_equal(const snap_stamp *a, const snap_stamp *b)
{
    return a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns && a->ino == b->ino;
}

/* ---- verifying cached blobs on all cores --------------------------------------------------- */

#define VERIFY_MAX_THREADS 8

typedef struct verify {
    const blob_dirs *bd;
    const unsigned char *check;   /* per fan-out directory: blobs there must be looked at */
    snap_tree *t;
    size_t from, to;
} verify;

/* A blob removed behind our back, or cut short (blobs are not fsync'ed one by one: after a
 * crash a young blob may be empty), voids the cache entry: the file is read again. */
static void *verify_range(void *arg)
{
    verify *v = arg;
    for (size_t i = v->from; i < v->to; i++) {
        snap_entry *e = &v->t->v[i];
        uint64_t size;
        if (e->sha[0] && v->check[fanout_of(e->sha)] &&
            !(blob_dirs_exists(v->bd, e->sha, &size) && size == e->size)) {
            e->sha[0] = '\0';
            e->cacheable = 0;
        }
    }
    return NULL;
}

static void verify_blobs(const char *blob_root, const unsigned char check[SNAP_FANOUT],
                         size_t n_check, snap_tree *t)
{
    blob_dirs bd;
    blob_dirs_init(&bd, blob_root);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = cpus < 1 ? 1 : cpus > VERIFY_MAX_THREADS ? VERIFY_MAX_THREADS : (size_t)cpus;
    if (n_check < 256 * n)
        n = 1;
    verify v[VERIFY_MAX_THREADS];
    pthread_t tid[VERIFY_MAX_THREADS];
    size_t started = 1;
    for (size_t k = 0; k < n; k++)
        v[k] = (verify){&bd, check, t, t->n * k / n, t->n * (k + 1) / n};
    for (size_t k = 1; k < n; k++, started++)
        if (pthread_create(&tid[k], NULL, verify_range, &v[k]) != 0)
            break;
    /* ranges whose thread did not start are done here */
    for (size_t k = started; k < n; k++)
        verify_range(&v[k]);
    verify_range(&v[0]);
    for (size_t k = 1; k < started; k++)
        pthread_join(tid[k], NULL);
    blob_dirs_close(&bd);
}

/* What the manifest says about directories and symlinks (type, mode, path, target), as
 * bytes compared as they are: with every file matched by the cache, this is all that could
 * make the manifest differ from last time.  Kept whole rather than hashed: it is small
 * (directories and links only) and needs no digest initialised on the warm path. */
static void tree_shape(const snap_tree *t, strbuf *out)
{
    for (size_t i = 0; i < t->n; i++) {
        const snap_entry *e = &t->v[i];
        if (e->type == SNAP_FILE)
            continue;
        unsigned char head[3] = {(unsigned char)e->type, (unsigned char)(e->mode >> 8),
                                 (unsigned char)e->mode};
        sb_add(out, head, sizeof head);
        sb_add(out, e->path, strlen(e->path) + 1);
        if (e->target)
            sb_add(out, e->target, strlen(e->target) + 1);
    }
}

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* <ws>/statcache/<64-bit FNV-1a of the source path, hex>; the path itself is in the file,
 * so two sources with the same hash only take turns. */
char *snap_cache_path(const char *ws_dir, const char *source, const char *suffix)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (const unsigned char *c = (const unsigned char *)source; *c; c++)
        h = (h ^ *c) * UINT64_C(0x100000001b3);
    return xasprintf("%s/statcache/%016llx%s", ws_dir, (unsigned long long)h, suffix);
}

/* Merge the stored entries (sorted like the tree) into t; returns how many were stored, or
 * SIZE_MAX when the data does not parse (then nothing is applied). */
static size_t apply_entries(const unsigned char *p, size_t len, snap_tree *t)
{
    if (len < SI_HEADER || memcmp(p, SI_MAGIC, 8))
        return SIZE_MAX;
    uint64_t n = get_u64(p + SI_HEADER - 8), shape = get_u64(p + SI_OFF_SHAPE),
             src = get_u64(p + SI_OFF_SOURCE);
    if (src > len || shape > len || pad8((size_t)src) + pad8((size_t)shape) > len - SI_HEADER)
        return SIZE_MAX;
    size_t first = SI_HEADER + pad8((size_t)src) + pad8((size_t)shape);
    /* first pass: bounds only, so a damaged record applies nothing */
    size_t off = first;
    for (uint64_t k = 0; k < n; k++) {
        uint32_t plen;
        if (len - off < SI_FIXED)
            return SIZE_MAX;
        memcpy(&plen, p + off + 72, 4);
        size_t padded = ((size_t)plen + 7) & ~(size_t)7;
        if (plen == 0 || plen > SI_MAX_PATH || len - off - SI_FIXED < padded)
            return SIZE_MAX;
        off += SI_FIXED + padded;
    }
    if (off != len)
        return SIZE_MAX;
    size_t i = 0;
    off = first;
    for (uint64_t k = 0; k < n; k++) {
        const unsigned char *r = p + off;
        uint32_t plen;
        memcpy(&plen, r + 72, 4);
        const char *path = (const char *)r + SI_FIXED;
        off += SI_FIXED + (((size_t)plen + 7) & ~(size_t)7);
        int c = 1;
        while (i < t->n && (c = strncmp(t->v[i].path, path, plen)) < 0)
            i++;
        if (i == t->n)
            break;
        snap_entry *e = &t->v[i];
        /* strncmp equal: e->path starts with path; equal only if it ends there too */
        if (c || e->path[plen] || e->type != SNAP_FILE || get_u64(r) != e->size ||
            (int64_t)get_u64(r + 8) != e->mtime_ns || (int64_t)get_u64(r + 16) != e->ctime_ns ||
            get_u64(r + 24) != e->ino || get_u64(r + 32) != e->dev)
            continue;
        for (unsigned b = 0; b < 32; b++) {
            static const char hex[] = "0123456789abcdef";
            e->sha[2 * b] = hex[r[40 + b] >> 4];
            e->sha[2 * b + 1] = hex[r[40 + b] & 15];
        }
        e->sha[64] = '\0';
        e->cacheable = 1;
    }
    return (size_t)n;
}

/* Both sides are sorted by path in byte order, so the cache is applied in one merge pass.
 * Cached blobs are looked at only where the blob store may have lost them: in fan-out
 * directories whose stamp changed since the cache was written, and all of them after a
 * reboot (a crash may have cut a young blob short). */
void snap_cache_state_free(snap_cache_state *cs)
{
    sb_free(&cs->shape);
    sb_free(&cs->stored_shape);
}

ctarget_status snap_db_apply_cache(store *st, const char *source, const char *blob_root,
                                   snap_tree *t, snap_cache_state *cs, ctarget_error *err)
{
    memset(cs, 0, sizeof *cs);
    sb_init(&cs->shape);
    sb_init(&cs->stored_shape);
    cs->stored = SIZE_MAX;
    snap_boot_id(cs->boot);
    fanout_stamps(blob_root, 0, cs->seen);
    unsigned char check[SNAP_FANOUT];
    memset(check, 1, sizeof check);
    char *path = snap_cache_path(st->dir, source, "");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    struct stat sb;
    size_t srclen = strlen(source);
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_uid == geteuid() &&
        sb.st_size >= (off_t)(SI_HEADER + srclen)) {
        size_t len = (size_t)sb.st_size;
        void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        const unsigned char *p = map;
        /* another boot's file is not used at all (see above), nor another source's */
        if (map != MAP_FAILED && !memcmp(p, SI_MAGIC, 8) && cs->boot[0] &&
            !memcmp(p + SI_OFF_BOOT, cs->boot, SI_BOOT) &&
            get_u64(p + SI_OFF_SOURCE) == srclen && !memcmp(p + SI_HEADER, source, srclen) &&
            (cs->stored = apply_entries(p, len, t)) != SIZE_MAX) {
            memcpy(cs->stored_header, p, SI_HEADER);
            sb_add(&cs->stored_shape, p + SI_HEADER + pad8(srclen),
                   (size_t)get_u64(p + SI_OFF_SHAPE));
            cs->all_trusted = 1;
            for (int i = 0; i < SNAP_FANOUT; i++) {
                snap_stamp was;
                memcpy(&was, p + SI_OFF_STAMPS + (size_t)i * SI_STAMP, SI_STAMP);
                check[i] = !stamp_trusted(&was) || !stamp_equal(&was, &cs->seen[i]);
                cs->all_trusted &= !check[i];
            }
        }
        if (map != MAP_FAILED)
            munmap(map, len);
    }
    if (fd >= 0)
        close(fd);
    ctarget_status rc = CTARGET_OK;
    (void)err;
    size_t n_check = 0;
    for (size_t i = 0; i < t->n; i++)
        n_check += t->v[i].sha[0] && check[fanout_of(t->v[i].sha)];
    cs->verified = n_check;
    if (!rc && n_check)
        verify_blobs(blob_root, check, n_check, t);
    /* Every file matched by the stored entries and no others stored, and the same directories
     * and symlinks: the manifest is the one recorded with this cache, byte for byte. */
    tree_shape(t, &cs->shape);
    size_t files = 0, matched = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].type == SNAP_FILE) {
            files++;
            matched += t->v[i].sha[0] != '\0';
        }
    const unsigned char *h = cs->stored_header;
    if (!rc && cs->stored != SIZE_MAX && files == cs->stored && matched == files &&
        cs->shape.len == cs->stored_shape.len &&
        (!cs->shape.len || !memcmp(cs->shape.data, cs->stored_shape.data, cs->shape.len)) &&
        blob_valid_id(h + SI_OFF_ID)) {
        memcpy(cs->same_id, h + SI_OFF_ID, 64);
        cs->same_id[64] = '\0';
        cs->same_manifest_bytes = get_u64(h + SI_OFF_MBYTES);
    }
    return rc;
}

static int cache_entry(const snap_entry *e)
{
    return e->type == SNAP_FILE && e->cacheable && strlen(e->path) <= SI_MAX_PATH;
}

/* The header of the cache record for t.  Its fan-out stamps are those that held both when
 * the cache was applied and now (blobs written meanwhile, by us or another snapshot, make a
 * directory's entries be looked at next time). */
static void build_header(const snap_cache_state *cs, const char *blob_root, const snap_tree *t,
                         const char *source, const char *id, uint64_t manifest_bytes,
                         int wrote_blobs, int64_t now_ns, unsigned char head[SI_HEADER])
{
    snap_stamp now[SNAP_FANOUT];
    if (cs->all_trusted && !wrote_blobs)
        /* every directory was as recorded and old enough, and nothing was written: if
         * another snapshot wrote meanwhile, the old stamps make the next one look */
        memcpy(now, cs->seen, sizeof now);
    else
        fanout_stamps(blob_root, now_ns, now);
    memset(head, 0, SI_HEADER);
    memcpy(head, SI_MAGIC, 8);
    memcpy(head + SI_OFF_BOOT, cs->boot, SI_BOOT);
    memcpy(head + SI_OFF_ID, id, 64);
    put_u64(head + SI_OFF_SHAPE, cs->shape.len);
    put_u64(head + SI_OFF_SOURCE, strlen(source));
    put_u64(head + SI_OFF_MBYTES, manifest_bytes);
    for (int i = 0; i < SNAP_FANOUT; i++) {
        snap_stamp keep = {0, 0, 0};
        if (cs->boot[0] && stamp_trusted(&now[i]) && stamp_equal(&now[i], &cs->seen[i]))
            keep = now[i];
        memcpy(head + SI_OFF_STAMPS + (size_t)i * SI_STAMP, &keep, SI_STAMP);
    }
    uint64_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += cache_entry(&t->v[i]);
    put_u64(head + SI_HEADER - 8, n);
}

/* Whether the record on disk would change: any file read this time, a cached entry that no
 * longer applies, another boot or other fan-out stamps.  A warm snapshot of an unchanged
 * tree then writes nothing. */
static int cache_dirty(const snap_cache_state *cs, const snap_tree *t,
                       const unsigned char head[SI_HEADER])
{
    if (cs->stored == SIZE_MAX || get_u64(head + SI_HEADER - 8) != cs->stored ||
        memcmp(head, cs->stored_header, SI_HEADER) != 0 ||
        cs->shape.len != cs->stored_shape.len ||
        (cs->shape.len && memcmp(cs->shape.data, cs->stored_shape.data, cs->shape.len)))
        return 1;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].type == SNAP_FILE && t->v[i].hashed)
            return 1;
    return 0;
}

static void build_entries(const snap_tree *t, strbuf *sb)
{
    size_t guess = sb->len;
    for (size_t i = 0; i < t->n; i++)
        guess += SI_FIXED + strlen(t->v[i].path) + 8;
    sb_reserve(sb, guess);
    for (size_t i = 0; i < t->n; i++) {
        const snap_entry *e = &t->v[i];
        if (!cache_entry(e))
            continue;
        size_t plen = strlen(e->path);
        unsigned char r[SI_FIXED];
        memset(r, 0, sizeof r);
        put_u64(r, e->size);
        put_u64(r + 8, (uint64_t)e->mtime_ns);
        put_u64(r + 16, (uint64_t)e->ctime_ns);
        put_u64(r + 24, e->ino);
        put_u64(r + 32, e->dev);
        for (unsigned b = 0; b < 32; b++)
            r[40 + b] = (unsigned char)(hexval(e->sha[2 * b]) << 4 | hexval(e->sha[2 * b + 1]));
        uint32_t l32 = (uint32_t)plen;
        memcpy(r + 72, &l32, 4);
        sb_add(sb, r, sizeof r);
        static const char zeros[8];
        sb_add(sb, e->path, plen);
        sb_add(sb, zeros, ((plen + 7) & ~(size_t)7) - plen);
    }
}

void snap_cache_write(const char *ws_dir, const char *path, const void *data, size_t len,
                      const char *what)
{
    char *dir = path_join(ws_dir, "statcache");
    char *tmp = xasprintf("%s/.tmp-%ld-%lld", dir, (long)getpid(),
                          (long long)(time_mono_ns() % 1000000000));
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        log_msg(CTARGET_LOG_DEBUG, "%s not kept: cannot create %s: %s", what, dir,
                strerror(errno));
    } else {
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        int ok = fd >= 0 && fd_write_all(fd, data, len) == 0;
        if (fd >= 0 && close(fd) != 0)
            ok = 0;
        if (!ok || rename(tmp, path) != 0) {
            log_msg(CTARGET_LOG_DEBUG, "%s not kept: cannot write %s: %s", what, path,
                    strerror(errno));
            unlink(tmp);
        }
    }
    free(tmp);
    free(dir);
}

/* Write the record as the source's cache file. */
static void write_cache(const char *ws_dir, const char *source, const strbuf *rec)
{
    char *path = snap_cache_path(ws_dir, source, "");
    snap_cache_write(ws_dir, path, rec->data, rec->len, "stat cache");
    free(path);
}

static char *query_text(store *st, const char *sql, const char *arg)
{
    sqlite3_stmt *s = store_prepare(st, sql, NULL);
    char *v = NULL;
    if (!s)
        return NULL;
    store_bind_text(s, 1, arg);
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
        v = store_col_text(s, 0);
    sqlite3_finalize(s);
    return v;
}

static ctarget_status insert_row(store *st, const snap_record *r, const char *parent,
                                 ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(st,
                                    "INSERT OR IGNORE INTO snapshots(id, source_dir, parent,"
                                    " created_at, files, bytes, new_bytes, git, manifest_blob)"
                                    " VALUES(?,?,?,?,?,?,?,?,?)", err);
    if (!s)
        return CTARGET_E_IO;
    store_bind_text(s, 1, r->id);
    store_bind_text(s, 2, r->source_dir);
    store_bind_text(s, 3, parent);
    sqlite3_bind_int64(s, 4, r->created_at);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)r->files);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)r->bytes);
    sqlite3_bind_int64(s, 7, (sqlite3_int64)r->new_bytes);
    store_bind_text(s, 8, r->git_json);
    store_bind_text(s, 9, r->id);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return store_fail(st, err, "cannot record the snapshot");
    s = store_prepare(st, "INSERT OR REPLACE INTO snapshot_sources(source_dir, last_snapshot,"
                      " updated_at) VALUES(?,?,?)", err);
    if (!s)
        return CTARGET_E_IO;
    store_bind_text(s, 1, r->source_dir);
    store_bind_text(s, 2, r->id);
    sqlite3_bind_int64(s, 3, r->created_at);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? CTARGET_OK : store_fail(st, err, "cannot record the snapshot");
}

ctarget_status snap_db_record(store *st, const snap_record *r, const snap_tree *t,
                              const snap_cache_state *cs, const char *blob_root, int64_t now_ns,
                              char **parent, ctarget_error *err)
{
    *parent = NULL;
    ctarget_status rc = CTARGET_OK;
    /* The same tree as this source's last snapshot (a warm re-snapshot of an unchanged
     * tree): its row is there and nothing would change but a time nobody reads, so no write
     * transaction (a WAL commit, and the frames the next process reads back). */
    char *last = query_text(st, "SELECT last_snapshot FROM snapshot_sources WHERE source_dir = ?"
                            " AND last_snapshot IN (SELECT id FROM snapshots)", r->source_dir);
    int unchanged = last && !strcmp(last, r->id);
    free(last);
    if (!unchanged) {
        if ((rc = store_begin(st, err)))
            return rc;
        last = query_text(st, "SELECT last_snapshot FROM snapshot_sources WHERE source_dir = ?",
                          r->source_dir);
        rc = insert_row(st, r, last && strcmp(last, r->id) ? last : NULL, err);
        free(last);
        if (rc) {
            store_rollback(st);
            return rc;
        }
        if ((rc = store_commit(st, err)))
            return rc;
    }
    /* the cache is rewritten only when it would change; nothing durable rests on it */
    unsigned char head[SI_HEADER];
    build_header(cs, blob_root, t, r->source_dir, r->id, r->manifest_bytes,
                 r->wrote_blobs, now_ns, head);
    if (cache_dirty(cs, t, head)) {
        static const char zeros[8];
        size_t srclen = strlen(r->source_dir);
        strbuf rec;
        sb_init(&rec);
        sb_add(&rec, head, SI_HEADER);
        sb_add(&rec, r->source_dir, srclen);
        sb_add(&rec, zeros, pad8(srclen) - srclen);
        sb_add(&rec, cs->shape.data ? cs->shape.data : zeros, cs->shape.len);
        sb_add(&rec, zeros, pad8(cs->shape.len) - cs->shape.len);
        build_entries(t, &rec);
        write_cache(st->dir, r->source_dir, &rec);
        sb_free(&rec);
    }
    /* the stored row wins: a tree seen before keeps its first record */
    *parent = query_text(st, "SELECT parent FROM snapshots WHERE id = ?", r->id);
    return CTARGET_OK;
}

/* ---- reading ----------------------------------------------------------------------------- */

ctarget_status snap_db_resolve(store *st, const char *prefix, char **id, ctarget_error *err)
{
    *id = NULL;
    size_t len = strlen(prefix);
    if (!len || len > 64 || strspn(prefix, "0123456789abcdef") != len) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no snapshot '%.80s' (ids are lowercase hex)", prefix);
        return CTARGET_E_NOT_FOUND;
    }
    sqlite3_stmt *s = store_prepare(st, "SELECT id FROM snapshots WHERE id GLOB ? || '*'"
                                    " ORDER BY id LIMIT 3", err);
    if (!s)
        return CTARGET_E_IO;
    store_bind_text(s, 1, prefix);
    char *found[3] = {NULL, NULL, NULL};
    size_t n = 0;
    while (n < 3 && sqlite3_step(s) == SQLITE_ROW)
        found[n++] = store_col_text(s, 0);
    sqlite3_finalize(s);
    ctarget_status rc = CTARGET_OK;
    if (n == 0) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no snapshot '%s' (see `ctarget snapshot list`)",
               prefix);
        rc = CTARGET_E_NOT_FOUND;
    } else if (n > 1) {
        ct_err(err, CTARGET_E_USAGE, "snapshot id prefix '%s' is ambiguous: it matches %.12s, "
               "%.12s%s; give more digits", prefix, found[0], found[1], n > 2 ? " and more" : "");
        rc = CTARGET_E_USAGE;
    } else {
        *id = found[0];
        found[0] = NULL;
    }
    for (size_t i = 0; i < 3; i++)
        free(found[i]);
    return rc;
}

static json_t *row_json(sqlite3_stmt *s)
{
    char when[32];
    time_format_iso(sqlite3_column_int64(s, 3), when);
    json_t *git = NULL;
    if (sqlite3_column_type(s, 7) != SQLITE_NULL)
        git = json_loads((const char *)sqlite3_column_text(s, 7), 0, NULL);
    return json_pack("{s:s, s:s, s:o, s:s, s:I, s:I, s:I, s:o}",
                     "id", (const char *)sqlite3_column_text(s, 0),
                     "source_dir", (const char *)sqlite3_column_text(s, 1),
                     "parent", sqlite3_column_type(s, 2) == SQLITE_NULL
                               ? json_null() : json_string((const char *)sqlite3_column_text(s, 2)),
                     "created_at", when,
                     "files", (json_int_t)sqlite3_column_int64(s, 4),
                     "bytes", (json_int_t)sqlite3_column_int64(s, 5),
                     "new_bytes", (json_int_t)sqlite3_column_int64(s, 6),
                     "git", git ? git : json_null());
}

#define ROW_COLUMNS "id, source_dir, parent, created_at, files, bytes, new_bytes, git"

json_t *snap_db_row(store *st, const char *id)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " ROW_COLUMNS " FROM snapshots WHERE id = ?",
                                    NULL);
    if (!s)
        return NULL;
    store_bind_text(s, 1, id);
    json_t *j = sqlite3_step(s) == SQLITE_ROW ? row_json(s) : NULL;
    sqlite3_finalize(s);
    return j;
}

json_t *snap_db_list(store *st, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT " ROW_COLUMNS " FROM snapshots"
                                    " ORDER BY created_at, id", err);
    if (!s)
        return NULL;
    json_t *a = json_array();
    int r;
    while ((r = sqlite3_step(s)) == SQLITE_ROW)
        json_array_append_new(a, row_json(s));
    if (r != SQLITE_DONE) {
        store_fail(st, err, "cannot list snapshots");
        json_decref(a);
        a = NULL;
    }
    sqlite3_finalize(s);
    return a;
}
