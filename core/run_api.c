/* Reading and steering runs: list, show, wait, logs, cancel, outputs, metrics, delete.
 * Every function that touches an unfinished run first makes sure it has a live monitor
 * (recovery, see run_proc.c). */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loader.h"
#include "log.h"
#include "run.h"
#include "run_api.h"
#include "util.h"
#include "ws.h"

static json_t *iso_or_null(json_t *ms)
{
    if (!json_is_integer(ms))
        return json_null();
    char buf[32];
    time_format_iso(json_integer_value(ms), buf);
    return json_string(buf);
}

static json_t *duration(json_t *row)
{
    json_t *s = json_object_get(row, "started_at"), *e = json_object_get(row, "ended_at");
    if (!json_is_integer(s))
        return json_null();
    int64_t end = json_is_integer(e) ? json_integer_value(e) : time_now_ms();
    return json_real((double)(end - json_integer_value(s)) / 1000.0);
}

/* The fields every listing shows. */
static json_t *render_brief(json_t *row)
{
    json_t *o = json_object();
    static const char *const copy[] = {"id", "experiment", "target", "status", "exit_code",
                                       "reason"};
    for (size_t i = 0; i < CT_ARRAY_LEN(copy); i++)
        json_object_set(o, copy[i], json_object_get(row, copy[i]));
    json_object_set_new(o, "created_at", iso_or_null(json_object_get(row, "created_at")));
    json_object_set_new(o, "duration_seconds", duration(row));
    return o;
}

static json_t *events_json(store *st, const char *id)
{
    json_t *a = json_array();
    sqlite3_stmt *s = store_prepare(st, "SELECT from_status, to_status, native_state, time,"
                                        " detail FROM run_events WHERE run=? ORDER BY seq", NULL);
    if (!s)
        return a;
    store_bind_text(s, 1, id);
    while (sqlite3_step(s) == SQLITE_ROW) {
        const char *from = (const char *)sqlite3_column_text(s, 0);
        char t[32];
        time_format_iso(sqlite3_column_int64(s, 3), t);
        json_array_append_new(a, json_pack("{s:s?, s:s, s:s, s:s, s:s}", "from", from, "to",
                                           (const char *)sqlite3_column_text(s, 1),
                                           "native_state",
                                           (const char *)sqlite3_column_text(s, 2), "time", t,
                                           "detail", (const char *)sqlite3_column_text(s, 4)));
    }
    sqlite3_finalize(s);
    return a;
}

static json_t *metric_json(sqlite3_stmt *s, int first)
{
    char t[32];
    time_format_iso(sqlite3_column_int64(s, first + 2), t);
    json_t *o = json_pack("{s:f, s:s}", "value", sqlite3_column_double(s, first), "time", t);
    json_object_set_new(o, "step", sqlite3_column_type(s, first + 1) == SQLITE_NULL
                                       ? json_null()
                                       : json_integer(sqlite3_column_int64(s, first + 1)));
    return o;
}

/* The last value of each metric, with how many were logged. */
static json_t *metrics_summary(store *st, const char *id)
{
    json_t *o = json_object();
    sqlite3_stmt *s = store_prepare(st, "SELECT m.name, m.value, m.step, m.time,"
                                        " (SELECT COUNT(*) FROM metrics c WHERE c.run=m.run AND"
                                        "  c.name=m.name) FROM metrics m WHERE m.run=?1 AND"
                                        " m.seq=(SELECT MAX(seq) FROM metrics x WHERE"
                                        "  x.run=m.run AND x.name=m.name) ORDER BY m.name",
                                    NULL);
    if (!s)
        return o;
    store_bind_text(s, 1, id);
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *m = metric_json(s, 1);
        json_object_set_new(m, "count", json_integer(sqlite3_column_int64(s, 4)));
        json_object_set_new(o, (const char *)sqlite3_column_text(s, 0), m);
    }
    sqlite3_finalize(s);
    return o;
}

static void walk_outputs(const char *root, const char *rel, json_t *out, int depth)
{
    char *dir = *rel ? path_join(root, rel) : xstrdup(root);
    DIR *d = depth < 32 ? opendir(dir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *r = *rel ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
        char *p = path_join(root, r);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            walk_outputs(root, r, out, depth + 1);
        else if (lstat(p, &sb) == 0)
            json_array_append_new(out, json_pack("{s:s, s:I}", "path", r, "size",
                                                 (json_int_t)sb.st_size));
        free(p);
        free(r);
    }
    if (d)
        closedir(d);
    free(dir);
}

json_t *run_outputs_list(const char *ws_dir, const char *id)
{
    char *root = run_file(ws_dir, id, "outputs");
    json_t *a = json_array();
    walk_outputs(root, "", a, 0);
    free(root);
    return a;
}

static json_t *env_view(json_t *env)
{
    json_t *names = json_array();
    const char *k;
    json_t *v;
    /* values may be credentials: only names are shown */
    json_object_foreach(json_object_get(env, "env_vars"), k, v)
        json_array_append_new(names, json_string(k));
    json_t *o = json_object();
    static const char *const copy[] = {"kind", "name", "python", "file_name", "hash",
                                       "docker_image"};
    for (size_t i = 0; i < CT_ARRAY_LEN(copy); i++) {
        json_t *x = json_object_get(env, copy[i]);
        json_object_set(o, copy[i], x ? x : json_null());
    }
    json_object_set_new(o, "env_var_names", names);
    return o;
}

json_t *run_render(ctarget_ws *ws, json_t *row)
{
    const char *id = json_string_value(json_object_get(row, "id"));
    json_t *cfg = json_object_get(row, "config");
    json_t *o = render_brief(row);
    static const char *const copy[] = {"target_type", "native_state", "attempt", "term_signal",
                                       "snapshot_id", "source_dir", "git", "parent", "kind"};
    for (size_t i = 0; i < CT_ARRAY_LEN(copy); i++)
        json_object_set(o, copy[i], json_object_get(row, copy[i]));
    json_object_set_new(o, "started_at", iso_or_null(json_object_get(row, "started_at")));
    json_object_set_new(o, "ended_at", iso_or_null(json_object_get(row, "ended_at")));
    json_object_set(o, "script", json_object_get(cfg, "script"));
    json_object_set(o, "arguments", json_object_get(cfg, "arguments"));
    json_object_set(o, "framework", json_object_get(cfg, "framework"));
    json_object_set(o, "timeout_seconds", json_object_get(cfg, "timeout_seconds"));
    json_t *grace = json_object_get(cfg, "cancel_grace_seconds");
    json_object_set_new(o, "cancel_grace_seconds", json_integer(grace ? json_integer_value(grace)
                                                                      : 10));
    json_object_set_new(o, "environment", env_view(json_object_get(cfg, "environment")));
    /* what the target's plugin recorded to find the run again (pids, paths, bytes shipped) */
    json_object_set(o, "handle", json_object_get(row, "handle"));
    pid_t holder = run_monitor_holder(ws->dir, id);
    json_object_set_new(o, "monitor", json_pack("{s:O, s:b, s:O}", "pid",
                                                json_object_get(row, "monitor_pid"), "alive",
                                                holder > 0, "starts",
                                                json_object_get(row, "monitor_starts")));
    json_object_set_new(o, "events", events_json(ws->st, id));
    json_object_set_new(o, "metrics", metrics_summary(ws->st, id));
    json_object_set_new(o, "outputs", run_outputs_list(ws->dir, id));
    char *lp = run_file(ws->dir, id, "std_log.txt");
    json_object_set_new(o, "logs", json_string(lp));
    free(lp);
    char *wd = run_file(ws->dir, id, "work");
    json_object_set_new(o, "work_dir", json_string(wd));
    free(wd);
    return o;
}

/* Resolve and load a run, starting a monitor when it needs one. */
ctarget_status run_load(ctarget_ws *ws, const char *id_in, int recover, json_t **row,
                        ctarget_error *err)
{
    char *id;
    ctarget_status rc = run_resolve(ws->st, id_in, &id, err);
    if (rc)
        return rc;
    *row = run_row(ws->st, id);
    free(id);
    if (!*row) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no run '%s'", id_in);
        return CTARGET_E_NOT_FOUND;
    }
    if (recover)
        run_ensure_monitor(ws, *row);
    return CTARGET_OK;
}

ctarget_status ctarget_run_show(ctarget_ws *ws, const char *id, char **json, ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    ctarget_status rc = run_load(ws, id, 1, &row, err);
    if (rc)
        return rc;
    json_t *o = run_render(ws, row);
    *json = json_out(o);
    json_decref(o);
    json_decref(row);
    return CTARGET_OK;
}

ctarget_status ctarget_run_list(ctarget_ws *ws, const ctarget_run_filter *f, char **json,
                                ctarget_error *err)
{
    *json = NULL;
    const char *status = NULL;
    if (f && f->status) {
        int s = rs_parse(f->status);
        if (s < 0) {
            ct_err(err, CTARGET_E_USAGE, "unknown run status '%s': NotStarted, Starting, "
                   "Provisioning, Preparing, Queued, Running, Finalizing, Completed, Failed, "
                   "CancelRequested, Canceled, NotResponding or Finished", f->status);
            return CTARGET_E_USAGE;
        }
        status = rs_name((ctarget_run_state)s);
    }
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT id FROM runs WHERE (?1 IS NULL OR"
                                            " experiment=?1) AND (?2 IS NULL OR status=?2) AND"
                                            " (?3 IS NULL OR target=?3) AND (?5 IS NULL OR"
                                            " parent=?5) ORDER BY id DESC LIMIT ?4", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, f ? f->experiment : NULL);
    store_bind_text(s, 2, status);
    store_bind_text(s, 3, f ? f->target : NULL);
    sqlite3_bind_int64(s, 4, f && f->limit ? (sqlite3_int64)f->limit : -1);
    /* (an older caller's shorter struct has no parent field) */
    int has_parent = f && f->struct_size >= offsetof(ctarget_run_filter, parent) +
                                                 sizeof f->parent;
    char *parent = NULL;
    if (has_parent && f->parent) {
        ctarget_status rc = run_resolve(ws->st, f->parent, &parent, err);
        if (rc) {
            sqlite3_finalize(s);
            return rc;
        }
    }
    store_bind_text(s, 5, parent);
    free(parent);
    json_t *ids = json_array();
    while (sqlite3_step(s) == SQLITE_ROW)
        json_array_append_new(ids, json_string((const char *)sqlite3_column_text(s, 0)));
    sqlite3_finalize(s);
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        json_t *row = run_row(ws->st, json_string_value(v));
        if (!row)
            continue;
        run_ensure_monitor(ws, row);
        json_array_append_new(out, render_brief(row));
        json_decref(row);
    }
    json_decref(ids);
    *json = json_out(out);
    json_decref(out);
    return CTARGET_OK;
}

ctarget_status ctarget_run_metrics(ctarget_ws *ws, const char *id, char **json,
                                   ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    ctarget_status rc = run_load(ws, id, 1, &row, err);
    if (rc)
        return rc;
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT name, value, step, time FROM metrics"
                                            " WHERE run=? ORDER BY seq", err);
    if (!s) {
        json_decref(row);
        return err->code;
    }
    store_bind_text(s, 1, json_string_value(json_object_get(row, "id")));
    json_t *a = json_array();
    while (sqlite3_step(s) == SQLITE_ROW) {
        json_t *m = metric_json(s, 1);
        json_object_set_new(m, "name", json_string((const char *)sqlite3_column_text(s, 0)));
        json_array_append_new(a, m);
    }
    sqlite3_finalize(s);
    *json = json_out(a);
    json_decref(a);
    json_decref(row);
    return CTARGET_OK;
}
