/* Snapshots in the workspace store: rows, per-source latest snapshot, stat cache. */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blobstore.h"
#include "snapshot.h"
#include "util.h"

/* ---- stat cache -------------------------------------------------------------------------- */

static int cache_row_matches(sqlite3_stmt *s, const snap_entry *e)
{
    return e->type == SNAP_FILE && (uint64_t)sqlite3_column_int64(s, 1) == e->size &&
           sqlite3_column_int64(s, 2) == e->mtime_ns && sqlite3_column_int64(s, 3) == e->ctime_ns &&
           (uint64_t)sqlite3_column_int64(s, 4) == e->ino &&
           (uint64_t)sqlite3_column_int64(s, 5) == e->dev;
}

/* ---- verifying cached blobs on all cores (the warm path is all stat calls) ----------------- */

#define VERIFY_MAX_THREADS 8

typedef struct verify {
    const blob_dirs *bd;
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
        if (e->sha[0] && !(blob_dirs_exists(v->bd, e->sha, &size) && size == e->size)) {
            e->sha[0] = '\0';
            e->cacheable = 0;
        }
    }
    return NULL;
}

static void verify_blobs(const char *blob_root, snap_tree *t)
{
    blob_dirs bd;
    blob_dirs_init(&bd, blob_root);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n = cpus < 1 ? 1 : cpus > VERIFY_MAX_THREADS ? VERIFY_MAX_THREADS : (size_t)cpus;
    if (t->n < 256 * n)
        n = 1;
    verify v[VERIFY_MAX_THREADS];
    pthread_t tid[VERIFY_MAX_THREADS];
    size_t started = 1;
    for (size_t k = 0; k < n; k++)
        v[k] = (verify){&bd, t, t->n * k / n, t->n * (k + 1) / n};
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

/* Both sides are sorted by path in byte order (SQLite's BINARY collation is memcmp), so the
 * cache is applied in one merge pass. */
ctarget_status snap_db_apply_cache(store *st, const char *source, const char *blob_root,
                                   snap_tree *t, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(st,
                                    "SELECT path, size, mtime_ns, ctime_ns, inode, dev, sha256"
                                    " FROM stat_cache WHERE source_dir = ? ORDER BY path",
                                    err);
    if (!s)
        return CTARGET_E_IO;
    store_bind_text(s, 1, source);
    size_t i = 0;
    int r;
    while ((r = sqlite3_step(s)) == SQLITE_ROW) {
        const char *path = (const char *)sqlite3_column_text(s, 0);
        const char *sha = (const char *)sqlite3_column_text(s, 6);
        while (i < t->n && strcmp(t->v[i].path, path) < 0)
            i++;
        if (i == t->n)
            break;
        snap_entry *e = &t->v[i];
        if (strcmp(e->path, path) || !cache_row_matches(s, e) || !sha || !blob_valid_sha(sha))
            continue;
        memcpy(e->sha, sha, 65);
        e->cacheable = 1;
    }
    ctarget_status rc = r == SQLITE_ROW || r == SQLITE_DONE
                        ? CTARGET_OK : store_fail(st, err, "cannot read the stat cache");
    sqlite3_finalize(s);
    if (!rc)
        verify_blobs(blob_root, t);
    return rc;
}

static ctarget_status write_cache(store *st, const char *source, const snap_tree *t,
                                  ctarget_error *err)
{
    sqlite3_stmt *del = store_prepare(st, "DELETE FROM stat_cache WHERE source_dir = ?", err);
    if (!del)
        return CTARGET_E_IO;
    store_bind_text(del, 1, source);
    int r = sqlite3_step(del);
    sqlite3_finalize(del);
    if (r != SQLITE_DONE)
        return store_fail(st, err, "cannot update the stat cache");
    sqlite3_stmt *s = store_prepare(st,
                                    "INSERT INTO stat_cache(source_dir, path, size, mtime_ns,"
                                    " ctime_ns, inode, dev, sha256) VALUES(?,?,?,?,?,?,?,?)",
                                    err);
    if (!s)
        return CTARGET_E_IO;
    ctarget_status rc = CTARGET_OK;
    for (size_t i = 0; i < t->n && !rc; i++) {
        const snap_entry *e = &t->v[i];
        if (e->type != SNAP_FILE || !e->cacheable)
            continue;
        sqlite3_reset(s);
        store_bind_text(s, 1, source);
        store_bind_text(s, 2, e->path);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)e->size);
        sqlite3_bind_int64(s, 4, e->mtime_ns);
        sqlite3_bind_int64(s, 5, e->ctime_ns);
        sqlite3_bind_int64(s, 6, (sqlite3_int64)e->ino);
        sqlite3_bind_int64(s, 7, (sqlite3_int64)e->dev);
        store_bind_text(s, 8, e->sha);
        if (sqlite3_step(s) != SQLITE_DONE)
            rc = store_fail(st, err, "cannot update the stat cache");
    }
    sqlite3_finalize(s);
    return rc;
}

/* ---- recording a snapshot ---------------------------------------------------------------- */

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

/* Whether the cache on disk would change: any file read this time, or a cached row that no
 * longer applies.  A warm snapshot of an unchanged tree then writes no cache rows at all. */
static int cache_dirty(store *st, const char *source, const snap_tree *t)
{
    size_t cacheable = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i].type != SNAP_FILE)
            continue;
        if (t->v[i].hashed)
            return 1;
        cacheable += t->v[i].cacheable != 0;
    }
    char *n = query_text(st, "SELECT count(*) FROM stat_cache WHERE source_dir = ?", source);
    int dirty = !n || strtoull(n, NULL, 10) != cacheable;
    free(n);
    return dirty;
}

ctarget_status snap_db_record(store *st, const snap_record *r, const snap_tree *t,
                              char **parent, ctarget_error *err)
{
    *parent = NULL;
    ctarget_status rc = store_begin(st, err);
    if (rc)
        return rc;
    char *last = query_text(st, "SELECT last_snapshot FROM snapshot_sources WHERE source_dir = ?",
                            r->source_dir);
    rc = insert_row(st, r, last && strcmp(last, r->id) ? last : NULL, err);
    free(last);
    if (!rc && cache_dirty(st, r->source_dir, t))
        rc = write_cache(st, r->source_dir, t, err);
    if (rc) {
        store_rollback(st);
        return rc;
    }
    if ((rc = store_commit(st, err)))
        return rc;
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
