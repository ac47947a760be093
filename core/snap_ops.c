/* Snapshot operations beyond create/show: diff, export, extract, gc. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tarstream.h"
#include "blobstore.h"
#include "snapshot.h"
#include "util.h"
#include "ws.h"

/* Resolve a (prefix of a) recorded id and load its manifest. */
static ctarget_status load(ctarget_ws *ws, const char *blob_root, const char *prefix, char **id,
                           snap_tree *t, ctarget_error *err)
{
    memset(t, 0, sizeof *t);
    ctarget_status rc = snap_db_resolve(ws->st, prefix, id, err);
    if (!rc && (rc = snap_manifest_load(blob_root, *id, t, err))) {
        free(*id);
        *id = NULL;
    }
    return rc;
}

/* ---- diff -------------------------------------------------------------------------------- */

static int entry_differs(const snap_entry *a, const snap_entry *b)
{
    if (a->type != b->type)
        return 1;
    if (a->type == SNAP_LINK)
        return strcmp(a->target, b->target) != 0;
    return a->mode != b->mode || (a->type == SNAP_FILE && strcmp(a->sha, b->sha));
}

static json_t *diff_json(const snap_tree *a, const snap_tree *b)
{
    json_t *added = json_array(), *modified = json_array(), *deleted = json_array();
    size_t i = 0, j = 0;
    /* both sorted: one merge pass */
    while (i < a->n || j < b->n) {
        int c = i == a->n ? 1 : j == b->n ? -1 : strcmp(a->v[i].path, b->v[j].path);
        if (c < 0) {
            json_array_append_new(deleted, json_string(a->v[i++].path));
        } else if (c > 0) {
            json_array_append_new(added, json_string(b->v[j++].path));
        } else {
            if (entry_differs(&a->v[i], &b->v[j]))
                json_array_append_new(modified, json_string(b->v[j].path));
            i++, j++;
        }
    }
    return json_pack("{s:o, s:o, s:o}", "added", added, "modified", modified, "deleted",
                     deleted);
}

ctarget_status ctarget_snapshot_diff(ctarget_ws *ws, const char *a, const char *b, char **json,
                                     ctarget_error *err)
{
    *json = NULL;
    char *root = blob_root_for_ws(ws->dir);
    char *ida = NULL, *idb = NULL;
    snap_tree ta, tb;
    ctarget_status rc = load(ws, root, a, &ida, &ta, err);
    if (!rc && !(rc = load(ws, root, b, &idb, &tb, err))) {
        json_t *d = diff_json(&ta, &tb);
        json_t *o = json_pack("{s:s, s:s}", "from", ida, "to", idb);
        json_object_update(o, d);
        json_decref(d);
        *json = json_out(o);
        json_decref(o);
        snap_tree_free(&tb);
    }
    if (ida)
        snap_tree_free(&ta);
    free(ida);
    free(idb);
    free(root);
    return rc;
}

/* ---- export ------------------------------------------------------------------------------ */

typedef struct export_state {
    int fd;
    int write_errno;
    const snap_entry **since;    /* blobs the receiver already has, sorted */
    size_t n_since;
    const snap_entry **mine;     /* the snapshot's blobs, sorted (for their sizes) */
    size_t n_mine;
    uint64_t blobs, blob_bytes;
} export_state;

static int export_write(void *arg, const void *data, size_t len)
{
    export_state *x = arg;
    const char *p = data;
    while (len) {
        ssize_t n = write(x->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            x->write_errno = errno ? errno : EIO;
            return 1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int cmp_sha_key(const void *key, const void *elem)
{
    return strcmp(key, (*(const snap_entry *const *)elem)->sha);
}

static int export_want(void *arg, const char *sha)
{
    export_state *x = arg;
    if (x->n_since && bsearch(sha, x->since, x->n_since, sizeof *x->since, cmp_sha_key))
        return 0;
    const snap_entry *const *e = bsearch(sha, x->mine, x->n_mine, sizeof *x->mine, cmp_sha_key);
    x->blobs++;
    x->blob_bytes += e ? (*e)->size : 0;
    return 1;
}

static ctarget_status export_to(const char *root, const char *id, unsigned flags,
                                const char *path, export_state *x, ctarget_error *err)
{
    int to_stdout = !strcmp(path, "-");
    char *tmp = to_stdout ? NULL : xasprintf("%s.tmp.%ld", path, (long)getpid());
    x->fd = to_stdout ? 1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (x->fd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", path);
        free(tmp);
        return CTARGET_E_IO;
    }
    int lock = blob_lock(root, 0, err);
    ctarget_status rc = lock < 0 ? CTARGET_E_IO
                        : snap_write_tar(root, id, export_want, x, flags, export_write, x, err);
    blob_unlock(lock);
    if (x->write_errno) {
        ct_err_errno(err, CTARGET_E_IO, x->write_errno, "cannot write %s", path);
        rc = CTARGET_E_IO;
    }
    if (!to_stdout) {
        if (close(x->fd) != 0 && !rc) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot write %s", path);
            rc = CTARGET_E_IO;
        }
        /* the archive appears complete or not at all */
        if (!rc && rename(tmp, path) != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", path);
            rc = CTARGET_E_IO;
        }
        if (rc)
            unlink(tmp);
    }
    free(tmp);
    return rc;
}

ctarget_status ctarget_snapshot_export(ctarget_ws *ws, const char *id, const char *since,
                                       unsigned flags, const char *path, char **json,
                                       ctarget_error *err)
{
    *json = NULL;
    char *root = blob_root_for_ws(ws->dir);
    char *full = NULL, *since_id = NULL;
    snap_tree t, ts = {0};
    export_state x = {.fd = -1};
    ctarget_status rc = load(ws, root, id, &full, &t, err);
    if (!rc)
        x.n_mine = snap_tree_blobs(&t, &x.mine);
    if (!rc && since && (rc = load(ws, root, since, &since_id, &ts, err)) == CTARGET_OK)
        x.n_since = snap_tree_blobs(&ts, &x.since);
    if (!rc)
        rc = export_to(root, full, flags, path, &x, err);
    if (!rc) {
        json_t *o = json_pack("{s:s, s:o, s:s, s:I, s:I}", "id", full, "since",
                              since_id ? json_string(since_id) : json_null(), "path", path,
                              "blobs", (json_int_t)x.blobs, "blob_bytes",
                              (json_int_t)x.blob_bytes);
        *json = json_out(o);
        json_decref(o);
    }
    free(x.since);
    free(x.mine);
    snap_tree_free(&ts);
    snap_tree_free(&t);
    free(full);
    free(since_id);
    free(root);
    return rc;
}

ctarget_status ctarget_snapshot_extract(ctarget_ws *ws, const char *archive, const char *dest,
                                        ctarget_error *err)
{
    char *root = blob_root_for_ws(ws->dir);
    ctarget_status rc = arch_extract_safe(archive, dest, root, err);
    free(root);
    return rc;
}

/* ---- gc ---------------------------------------------------------------------------------- */

typedef struct gc_state {
    char (*refs)[65];
    size_t n_refs, cap_refs;
    uint64_t removed, freed, kept, kept_bytes, temps;
} gc_state;

static void gc_ref(gc_state *g, const char *sha)
{
    if (g->n_refs == g->cap_refs)
        g->refs = xrealloc(g->refs, (g->cap_refs = g->cap_refs ? g->cap_refs * 2 : 256) * 65);
    memcpy(g->refs[g->n_refs++], sha, 65);
}

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Every blob referenced by a recorded snapshot: the manifests themselves and their files.
 * A manifest that cannot be read stops gc: collecting without it could lose data. */
static ctarget_status gc_mark(ctarget_ws *ws, const char *root, gc_state *g, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT id FROM snapshots", err);
    if (!s)
        return CTARGET_E_IO;
    ctarget_status rc = CTARGET_OK;
    while (!rc && sqlite3_step(s) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 0);
        snap_tree t;
        ctarget_error lerr;
        ctarget_error_init(&lerr);
        if ((rc = snap_manifest_load(root, id, &t, &lerr))) {
            ct_err(err, rc, "nothing was collected: %s", lerr.message);
            break;
        }
        gc_ref(g, id);
        for (size_t i = 0; i < t.n; i++)
            if (t.v[i].type == SNAP_FILE)
                gc_ref(g, t.v[i].sha);
        snap_tree_free(&t);
    }
    sqlite3_finalize(s);
    if (g->n_refs)
        qsort(g->refs, g->n_refs, 65, cmp_ref);
    return rc;
}

static int gc_sweep_one(void *arg, const char *sha, uint64_t size, const char *path)
{
    gc_state *g = arg;
    if (sha && g->n_refs && bsearch(sha, g->refs, g->n_refs, 65, cmp_ref)) {
        g->kept++;
        g->kept_bytes += size;
    } else if (unlink(path) == 0) {
        /* under the exclusive lock no snapshot is being written: temporaries are leftovers */
        if (sha) {
            g->removed++;
            g->freed += size;
        } else {
            g->temps++;
        }
    }
    return 0;
}

ctarget_status ctarget_snapshot_gc(ctarget_ws *ws, char **json, ctarget_error *err)
{
    *json = NULL;
    char *root = blob_root_for_ws(ws->dir);
    gc_state g = {0};
    int lock = blob_lock(root, 1, err);
    ctarget_status rc = lock < 0 ? CTARGET_E_IO : gc_mark(ws, root, &g, err);
    if (!rc)
        rc = blob_foreach(root, gc_sweep_one, &g, err);
    blob_unlock(lock);
    if (!rc) {
        json_t *o = json_pack("{s:I, s:I, s:I, s:I, s:I}", "removed_blobs", (json_int_t)g.removed,
                              "freed_bytes", (json_int_t)g.freed, "kept_blobs",
                              (json_int_t)g.kept, "kept_bytes", (json_int_t)g.kept_bytes,
                              "removed_temp_files", (json_int_t)g.temps);
        *json = json_out(o);
        json_decref(o);
    }
    free(g.refs);
    free(root);
    return rc;
}
