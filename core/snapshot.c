/* Snapshot creation and the read API (list, show).  See snapshot.h for the model. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "blobstore.h"
#include "crypto_lib.h"
#include "log.h"
#include "snapshot.h"
#include "testhook.h"
#include "util.h"
#include "ws.h"

/* racy-margin decisions take their clock from testhook_wall_ns(), which tests can shift */
static int64_t wall_ns(void)
{
    return testhook_wall_ns();
}

static ctarget_status resolve_source(const char *dir, char **out, ctarget_error *err)
{
    *out = NULL;
    if (!dir || !*dir) {
        ct_err(err, CTARGET_E_USAGE, "no source directory given");
        return CTARGET_E_USAGE;
    }
    char *real = realpath(dir, NULL);
    struct stat st;
    if (!real || stat(real, &st) != 0) {
        int e = errno;
        ct_err_errno(err, e == ENOENT ? CTARGET_E_NOT_FOUND : CTARGET_E_IO, e,
                     "source directory %s", dir);
        free(real);
        return e == ENOENT ? CTARGET_E_NOT_FOUND : CTARGET_E_IO;
    }
    if (!S_ISDIR(st.st_mode)) {
        ct_err(err, CTARGET_E_USAGE, "%s is not a directory", dir);
        free(real);
        return CTARGET_E_USAGE;
    }
    *out = real;
    return CTARGET_OK;
}

static ctarget_status resolve_limits(const ctarget_snapshot_opts *o, snap_limits *lim,
                                     ctarget_error *err)
{
    uint64_t b = 0, f = 0;
    if (o && o->struct_size >= offsetof(ctarget_snapshot_opts, max_bytes) + sizeof o->max_bytes)
        b = o->max_bytes;
    if (o && o->struct_size >= offsetof(ctarget_snapshot_opts, max_files) + sizeof o->max_files)
        f = o->max_files;
    return snap_limits_resolve(b, f, lim, err);
}

typedef struct create_result {
    char id[65];
    int manifest_added;       /* the manifest blob was new */
    snap_hash_stats hs;
    size_t manifest_bytes;
    size_t dirs;
} create_result;

/* Hash what the stat cache cannot vouch for, then store the manifest as blob <id>. */
static ctarget_status hash_and_store(const char *source, const char *blob_root, snap_tree *t,
                                     const snap_cache_state *cs, int64_t start_ns,
                                     create_result *cr, ctarget_error *err)
{
    for (size_t i = 0; i < t->n; i++) {
        snap_entry *e = &t->v[i];
        e->hashed = e->type == SNAP_FILE && !e->sha[0];
        cr->dirs += e->type == SNAP_DIR;
    }
    /* nothing changed since the cache was recorded: the manifest would be the same bytes */
    uint64_t size;
    if (cs->same_id[0] && blob_exists(blob_root, cs->same_id, &size) &&
        size == cs->same_manifest_bytes) {
        memcpy(cr->id, cs->same_id, sizeof cr->id);
        cr->manifest_bytes = (size_t)size;
        memset(&cr->hs, 0, sizeof cr->hs);
        return CTARGET_OK;
    }
    ctarget_status rc = crypto_load(err);
    if (rc)
        return rc;
    rc = snap_hash_files(source, blob_root, t, &cr->hs, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].hashed)
            t->v[i].cacheable = t->v[i].mtime_ns < start_ns - SNAP_RACY_MARGIN_NS;
    strbuf sb;
    sb_init(&sb);
    snap_manifest_lines(t, &sb);
    blob_sha256_hex(sb.data, sb.len, cr->id);
    rc = blob_put_mem(blob_root, cr->id, sb.data, sb.len, &cr->manifest_added, err);
    cr->manifest_bytes = sb.len;
    sb_free(&sb);
    return rc;
}

static json_t *create_json(const char *source, const char *parent, const snap_tree *t,
                           const create_result *cr, int64_t created_at, json_t *git)
{
    char when[32];
    time_format_iso(created_at, when);
    return json_pack("{s:s, s:s, s:o, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:O}",
                     "id", cr->id, "source_dir", source,
                     "parent", parent ? json_string(parent) : json_null(),
                     "created_at", when,
                     "files", (json_int_t)t->files, "dirs", (json_int_t)cr->dirs,
                     "bytes", (json_int_t)t->bytes,
                     "new_bytes", (json_int_t)cr->hs.new_bytes,
                     "new_blobs", (json_int_t)cr->hs.new_blobs,
                     "hashed_files", (json_int_t)cr->hs.hashed_files,
                     "hashed_bytes", (json_int_t)cr->hs.hashed_bytes,
                     "manifest_bytes", (json_int_t)cr->manifest_bytes,
                     "git", git ? git : json_null());
}

/* Everything after the walk: under the shared blob lock so gc cannot collect blobs stored
 * here before the snapshot row that references them is committed. */
static ctarget_status create_locked(ctarget_ws *ws, const char *source, snap_tree *t,
                                    int64_t start_ns, char **json, ctarget_error *err)
{
    /* git first: gc waits for the lock, and need not wait for `git status` */
    int64_t g0 = time_mono_ns();
    json_t *git = snap_git_info(source);
    char *git_text = git ? json_dumps(git, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    log_msg(CTARGET_LOG_DEBUG, "snapshot: git information in %.1f ms",
            (time_mono_ns() - g0) / 1e6);
    char *blob_root = blob_root_for_ws(ws->dir);
    int lock = blob_lock(blob_root, 0, err);
    if (lock < 0) {
        json_decref(git);
        free(git_text);
        free(blob_root);
        return CTARGET_E_IO;
    }
    create_result cr = {.id = ""};
    snap_cache_state *cs = xcalloc(1, sizeof *cs);
    int64_t t0 = time_mono_ns();
    ctarget_status rc = snap_db_apply_cache(ws->st, source, blob_root, t, cs, err);
    int64_t t1 = time_mono_ns();
    if (!rc)
        rc = hash_and_store(source, blob_root, t, cs, start_ns, &cr, err);
    int64_t t2 = time_mono_ns();
    int64_t now = time_now_ms();
    char *parent = NULL;
    if (!rc) {
        snap_record r = {cr.id, source, now, t->files, t->bytes, cr.hs.new_bytes, git_text,
                        cr.manifest_bytes, cr.hs.new_blobs || cr.manifest_added};
        rc = snap_db_record(ws->st, &r, t, cs, blob_root, wall_ns(), &parent, err);
    }
    log_msg(CTARGET_LOG_DEBUG, "snapshot phases: stat cache %.1f ms (%zu cached blobs "
            "checked%s), hashing and manifest %.1f ms, recording %.1f ms", (t1 - t0) / 1e6,
            cs->verified, cs->same_id[0] ? "; same manifest as recorded with it" : "",
            (t2 - t1) / 1e6, (time_mono_ns() - t2) / 1e6);
    snap_cache_state_free(cs);
    free(cs);
    blob_unlock(lock);
    if (!rc) {
        json_t *j = create_json(source, parent, t, &cr, now, git);
        *json = json_out(j);
        json_decref(j);
        log_msg(CTARGET_LOG_INFO, "snapshot %s of %s: %llu files, %llu bytes, %llu new",
                cr.id, source, (unsigned long long)t->files, (unsigned long long)t->bytes,
                (unsigned long long)cr.hs.new_bytes);
    }
    json_decref(git);
    free(git_text);
    free(parent);
    free(blob_root);
    return rc;
}

ctarget_status ctarget_snapshot_create(ctarget_ws *ws, const char *dir,
                                       const ctarget_snapshot_opts *opts, char **json,
                                       ctarget_error *err)
{
    *json = NULL;
    snap_limits lim;
    char *source;
    ctarget_status rc = resolve_limits(opts, &lim, err);
    if (rc || (rc = resolve_source(dir, &source, err)))
        return rc;
    int64_t start_ns = wall_ns(), w0 = time_mono_ns();
    snap_tree t;
    rc = snap_walk(source, &lim, ws->dir, ws->dir, &t, err);
    log_msg(CTARGET_LOG_DEBUG, "snapshot walk: %zu entries in %.1f ms", t.n,
            (time_mono_ns() - w0) / 1e6);
    if (!rc)
        rc = create_locked(ws, source, &t, start_ns, json, err);
    snap_tree_free(&t);
    free(source);
    return rc;
}

/* ---- list and show ----------------------------------------------------------------------- */

ctarget_status ctarget_snapshot_list(ctarget_ws *ws, char **json, ctarget_error *err)
{
    *json = NULL;
    json_t *a = snap_db_list(ws->st, err);
    if (!a)
        return CTARGET_E_IO;
    *json = json_out(a);
    json_decref(a);
    return CTARGET_OK;
}

static json_t *entries_json(const snap_tree *t)
{
    json_t *a = json_array();
    for (size_t i = 0; i < t->n; i++) {
        const snap_entry *e = &t->v[i];
        json_t *o = json_pack("{s:s, s:s}", "path", e->path, "type", snap_type_name(e->type));
        if (e->type != SNAP_LINK)
            json_object_set_new(o, "mode", json_integer(e->mode));
        json_object_set_new(o, "size", json_integer(e->type == SNAP_FILE ? (json_int_t)e->size
                                                    : 0));
        json_object_set_new(o, "sha256", e->type == SNAP_FILE ? json_string(e->sha)
                                                              : json_null());
        if (e->type == SNAP_LINK)
            json_object_set_new(o, "target", json_string(e->target));
        json_array_append_new(a, o);
    }
    return a;
}

ctarget_status ctarget_snapshot_show(ctarget_ws *ws, const char *prefix, char **json,
                                     ctarget_error *err)
{
    *json = NULL;
    char *id;
    ctarget_status rc = snap_db_resolve(ws->st, prefix, &id, err);
    if (rc)
        return rc;
    json_t *row = snap_db_row(ws->st, id);
    char *blob_root = blob_root_for_ws(ws->dir);
    snap_tree t;
    if (!row) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no snapshot '%s'", prefix);
        rc = CTARGET_E_NOT_FOUND;
    } else if (!(rc = snap_manifest_load(blob_root, id, &t, err))) {
        /* "files" becomes the entry list the issue asks for; the count moves aside */
        json_object_set(row, "file_count", json_object_get(row, "files"));
        json_object_set_new(row, "entries", json_integer((json_int_t)t.n));
        json_object_set_new(row, "files", entries_json(&t));
        *json = json_out(row);
        snap_tree_free(&t);
    }
    json_decref(row);
    free(blob_root);
    free(id);
    return rc;
}
