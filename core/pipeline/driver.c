/* The pipeline driver: the monitor process of a pipeline's parent run (ctarget_run_monitor
 * hands a run of kind 'pipeline' here, under the same lock, so a dead driver is noticed and
 * restarted exactly like a dead run monitor).
 *
 * Each loop reads everything from the store (a restarted driver has no other memory): the
 * pipeline_steps rows and their runs.  A step starts when every step it takes data from has
 * succeeded and fewer than max_parallel steps are active:
 *   1. its snapshot is staged: the source directory's snapshot materialized into a scratch
 *      directory, each input copied in under inputs/<name>/, and that tree snapshotted (so
 *      the step's code and its inputs are one content-addressed id);
 *   2. its reuse key is the SHA-256 of that id, the target, script, arguments, environment
 *      (with the dependency files' contents), the type's keys and the declared outputs;
 *      with allow_reuse, a step of an earlier pipeline with the same key whose outputs are
 *      still there is used instead of running again (status Reused);
 *   3. otherwise a run id is recorded on the step first and only then submitted under that
 *      id (a restarted driver submits a recorded step that has no run, never one twice).
 * A completed step's declared outputs must exist under its run's outputs/<name>; the
 * pipeline's log (std_log.txt of the parent) tells what happened to each step. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pipeline.h"
#include "../blobstore.h"
#include "../log.h"
#include "../run.h"
#include "../snapshot.h"
#include "../util.h"
#include "../ws.h"

typedef enum { S_PENDING, S_RECORDED, S_ACTIVE, S_OK, S_FAILED, S_CANCELED } sstate;

typedef struct srow {
    char *run, *status, *reason, *outputs_dir;
    int checked;
    int exists;                   /* the run row exists */
    ctarget_run_state run_state;
    char *run_reason;
} srow;

typedef struct drv {
    ctarget_ws *ws;
    const char *id;
    json_t *row;
    pl_config cfg;
    srow *r;                      /* per step, by index */
    long poll_ms;
    int log_fd;
} drv;

static void plog(drv *d, const char *fmt, ...) CTARGET_PRINTF(2, 3);
static void plog(drv *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = xvasprintf(fmt, ap);
    va_end(ap);
    char ts[32];
    time_format_iso(time_now_ms(), ts);
    char *line = xasprintf("[%s] %s\n", ts, m);
    if (d->log_fd >= 0)
        (void)fd_write_all(d->log_fd, line, strlen(line));
    log_msg(CTARGET_LOG_INFO, "pipeline %s: %s", d->id, m);
    free(line);
    free(m);
}

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void rows_free(drv *d)
{
    for (size_t i = 0; d->r && i < d->cfg.n; i++) {
        free(d->r[i].run);
        free(d->r[i].status);
        free(d->r[i].reason);
        free(d->r[i].outputs_dir);
        free(d->r[i].run_reason);
    }
    memset(d->r, 0, d->cfg.n * sizeof *d->r);
}

static int load_rows(drv *d)
{
    rows_free(d);
    sqlite3_stmt *s = store_prepare(d->ws->st, "SELECT p.idx, p.run, p.status, p.reason,"
                                               " p.outputs_dir, p.checked, r.status, r.reason"
                                               " FROM pipeline_steps p LEFT JOIN runs r ON"
                                               " r.id=p.run WHERE p.pipeline=? ORDER BY p.idx",
                                    NULL);
    if (!s)
        return -1;
    store_bind_text(s, 1, d->id);
    while (sqlite3_step(s) == SQLITE_ROW) {
        long long i = sqlite3_column_int64(s, 0);
        if (i < 0 || (size_t)i >= d->cfg.n)
            continue;
        srow *r = &d->r[i];
        r->run = sqlite3_column_type(s, 1) == SQLITE_NULL ? NULL : store_col_text(s, 1);
        r->status = sqlite3_column_type(s, 2) == SQLITE_NULL ? NULL : store_col_text(s, 2);
        r->reason = sqlite3_column_type(s, 3) == SQLITE_NULL ? NULL : store_col_text(s, 3);
        r->outputs_dir = sqlite3_column_type(s, 4) == SQLITE_NULL ? NULL : store_col_text(s, 4);
        r->checked = sqlite3_column_int(s, 5);
        r->exists = sqlite3_column_type(s, 6) != SQLITE_NULL;
        int st = r->exists ? rs_parse((const char *)sqlite3_column_text(s, 6)) : -1;
        r->run_state = st < 0 ? CTARGET_RUN_NOT_STARTED : (ctarget_run_state)st;
        r->run_reason = sqlite3_column_type(s, 7) == SQLITE_NULL ? NULL : store_col_text(s, 7);
    }
    sqlite3_finalize(s);
    return 0;
}

static sstate step_state(const srow *r)
{
    if (r->status) {
        if (!strcmp(r->status, "Reused") || !strcmp(r->status, "Completed"))
            return S_OK;
        if (!strcmp(r->status, "Canceled") || !strcmp(r->status, "Skipped"))
            return S_CANCELED;
        return S_FAILED;
    }
    if (!r->run)
        return S_PENDING;
    if (!r->exists)
        return S_RECORDED;
    if (!rs_terminal(r->run_state))
        return S_ACTIVE;
    if (r->run_state == CTARGET_RUN_COMPLETED || r->run_state == CTARGET_RUN_FINISHED)
        return r->checked ? S_OK : S_ACTIVE; /* outputs not checked yet */
    return r->run_state == CTARGET_RUN_CANCELED ? S_CANCELED : S_FAILED;
}

static void set_step(drv *d, size_t i, const char *status, const char *reason)
{
    sqlite3_stmt *s = store_prepare(d->ws->st, "UPDATE pipeline_steps SET status=?, reason=?,"
                                               " ended_at=? WHERE pipeline=? AND idx=?", NULL);
    if (!s)
        return;
    store_bind_text(s, 1, status);
    store_bind_text(s, 2, reason);
    sqlite3_bind_int64(s, 3, time_now_ms());
    store_bind_text(s, 4, d->id);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)i);
    sqlite3_step(s);
    sqlite3_finalize(s);
}

static void set_step_col(drv *d, size_t i, const char *col, const char *v)
{
    char *sql = xasprintf("UPDATE pipeline_steps SET %s=? WHERE pipeline=? AND idx=?", col);
    sqlite3_stmt *s = store_prepare(d->ws->st, sql, NULL);
    free(sql);
    if (!s)
        return;
    store_bind_text(s, 1, v);
    store_bind_text(s, 2, d->id);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)i);
    sqlite3_step(s);
    sqlite3_finalize(s);
}

/* ---- files ------------------------------------------------------------------------------- */

/* Copy a file or a tree (regular files and directories; symbolic links are copied as
 * links only when they stay inside).  0 or -1 with errno. */
static int copy_tree(const char *src, const char *dst)
{
    struct stat st;
    if (lstat(src, &st) != 0)
        return -1;
    if (S_ISDIR(st.st_mode)) {
        if (mkdir(dst, 0700) != 0 && errno != EEXIST)
            return -1;
        DIR *dir = opendir(src);
        if (!dir)
            return -1;
        struct dirent *e;
        int rc = 0;
        while (!rc && (e = readdir(dir))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char *a = path_join(src, e->d_name), *b = path_join(dst, e->d_name);
            rc = copy_tree(a, b);
            free(a);
            free(b);
        }
        closedir(dir);
        return rc;
    }
    if (!S_ISREG(st.st_mode))
        return 0; /* links, devices: not data */
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0755);
    if (out < 0) {
        close(in);
        return -1;
    }
    char buf[65536];
    ssize_t n;
    int rc = 0;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (fd_write_all(out, buf, (size_t)n) != 0) {
            rc = -1;
            break;
        }
    if (n < 0)
        rc = -1;
    close(in);
    if (close(out) != 0)
        rc = -1;
    return rc;
}

static int exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* Where the outputs of the step named `ref`'s step live (owned), or NULL. */
static char *outputs_of(drv *d, const char *step, const char *out)
{
    long j = pl_step_index(&d->cfg, step);
    if (j < 0 || !d->r[j].outputs_dir)
        return NULL;
    return path_join(d->r[j].outputs_dir, out);
}

static char *upper(const char *s)
{
    char *u = xstrdup(s);
    for (char *p = u; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    return u;
}

/* ---- staging and reuse ---------------------------------------------------------------------- */

static ctarget_status snap_dir(drv *d, const char *dir, char **id, ctarget_error *err)
{
    char *json = NULL;
    ctarget_status rc = ctarget_snapshot_create(d->ws, dir, NULL, &json, err);
    if (rc)
        return rc;
    json_t *j = json_loads(json, 0, NULL);
    free(json);
    const char *sid = json_string_value(json_object_get(j, "id"));
    *id = sid ? xstrdup(sid) : NULL;
    json_decref(j);
    if (!*id) {
        ct_err(err, CTARGET_E_INTERNAL, "the snapshot of %s has no id", dir);
        return CTARGET_E_INTERNAL;
    }
    return CTARGET_OK;
}

/* The step's snapshot: its source plus its inputs under inputs/<name>/. */
static ctarget_status stage(drv *d, size_t i, char **snap, ctarget_error *err)
{
    const pl_step *s = &d->cfg.steps[i];
    const char *src = json_string_value(json_object_get(s->run, "source_directory"));
    if (!json_object_size(s->inputs))
        return snap_dir(d, src, snap, err);
    char *base = NULL, *tmp = NULL;
    ctarget_status rc = snap_dir(d, src, &base, err);
    if (rc)
        return rc;
    char *rel = xasprintf("stage/%s", s->name);
    tmp = run_file(d->ws->dir, d->id, rel);
    free(rel);
    rm_rf(tmp);
    char *parent = run_file(d->ws->dir, d->id, "stage");
    mkdir_p(parent, 0700);
    free(parent);
    char *root = blob_root_for_ws(d->ws->dir);
    int lock = blob_lock(root, 0, err);
    rc = lock < 0 ? CTARGET_E_IO : snap_materialize(root, base, tmp, err);
    blob_unlock(lock);
    free(root);
    char *inputs = path_join(tmp, "inputs");
    if (!rc && mkdir(inputs, 0755) != 0 && errno != EEXIST) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", inputs);
        rc = CTARGET_E_IO;
    }
    const char *k;
    json_t *v;
    json_object_foreach(rc ? NULL : s->inputs, k, v) {
        char *st = NULL, *out = NULL;
        pl_split_ref(json_string_value(v), &st, &out);
        char *from = outputs_of(d, st, out), *to = path_join(inputs, k);
        rm_rf(to);
        if (!from || !exists(from)) {
            ct_err(err, CTARGET_E_NOT_FOUND, "input '%s' (%s) is missing: step '%s' wrote no "
                   "outputs/%s", k, json_string_value(v), st, out);
            rc = CTARGET_E_NOT_FOUND;
        } else if (copy_tree(from, to) != 0) {
            ct_err_errno(err, CTARGET_E_IO, errno, "cannot copy input '%s' from %s", k, from);
            rc = CTARGET_E_IO;
        }
        free(from);
        free(to);
        free(st);
        free(out);
        if (rc)
            break;
    }
    free(inputs);
    if (!rc)
        rc = snap_dir(d, tmp, snap, err);
    rm_rf(tmp);
    free(tmp);
    free(base);
    return rc;
}

static void hash_file_into(json_t *env, const char *key)
{
    const char *p = json_string_value(json_object_get(env, key));
    if (!p)
        return;
    size_t len = 0;
    char *data = file_read_all(p, &len), hex[65];
    env_sha256_hex(data ? data : "", data ? len : 0, hex);
    char *k = xasprintf("%s_sha256", key);
    json_object_set_new(env, k, json_string(data ? hex : "missing"));
    free(k);
    free(data);
}

static char *reuse_key(const pl_step *s, const char *snap)
{
    json_t *run = s->run;
    json_t *env = json_deep_copy(json_object_get(run, "environment"));
    if (json_is_object(env)) {
        hash_file_into(env, "requirements");
        hash_file_into(env, "conda");
    }
    json_t *k = json_pack("{s:s, s:O?, s:s, s:O?, s:O?, s:o?, s:O?, s:O?, s:O?, s:O, s:O}",
                          "type", s->type, "target", json_object_get(run, "target"),
                          "snapshot", snap, "script", json_object_get(run, "script"),
                          "arguments", json_object_get(run, "arguments"), "environment", env,
                          "framework", json_object_get(run, "framework"), "node_count",
                          json_object_get(run, "node_count"), "options",
                          json_object_get(run, "options"), "keys", s->keys, "outputs",
                          s->outputs);
    char *text = json_dumps(k, JSON_COMPACT | JSON_SORT_KEYS);
    char hex[65];
    env_sha256_hex(text, strlen(text), hex);
    free(text);
    json_decref(k);
    return xstrdup(hex);
}

/* An earlier step with the same key whose outputs are still there: its run and where its
 * outputs are (both owned); 0 when found. */
static int find_reusable(drv *d, const char *key, char **run, char **dir)
{
    sqlite3_stmt *s = store_prepare(d->ws->st,
                                    "SELECT COALESCE(p.reused_from, p.run), p.outputs_dir FROM"
                                    " pipeline_steps p LEFT JOIN runs r ON r.id=p.run WHERE"
                                    " p.reuse_key=? AND p.pipeline<>? AND (p.status='Reused' OR"
                                    " (p.status IS NULL AND p.checked=1 AND r.status IN"
                                    " ('Completed','Finished'))) ORDER BY p.rowid DESC", NULL);
    if (!s)
        return -1;
    store_bind_text(s, 1, key);
    store_bind_text(s, 2, d->id);
    int found = -1;
    while (found && sqlite3_step(s) == SQLITE_ROW) {
        if (sqlite3_column_type(s, 0) == SQLITE_NULL || sqlite3_column_type(s, 1) == SQLITE_NULL)
            continue;
        const char *o = (const char *)sqlite3_column_text(s, 1);
        if (!exists(o))
            continue; /* that run was deleted */
        *run = store_col_text(s, 0);
        *dir = xstrdup(o);
        found = 0;
    }
    sqlite3_finalize(s);
    return found;
}

/* ---- starting steps ------------------------------------------------------------------------- */

static void transfer_step(drv *d, size_t i)
{
    const pl_step *s = &d->cfg.steps[i];
    const char *out = json_string_value(json_array_get(s->outputs, 0));
    char *from = NULL;
    if (s->source_is_output) {
        char *st = NULL, *o = NULL;
        pl_split_ref(s->source, &st, &o);
        from = outputs_of(d, st, o);
        free(st);
        free(o);
    } else {
        from = xstrdup(s->source);
    }
    char *rel = xasprintf("transfer/%s", s->name);
    char *dir = run_file(d->ws->dir, d->id, rel), *to = path_join(dir, out);
    free(rel);
    rm_rf(dir);
    mkdir_p(dir, 0700);
    struct stat st;
    int ok = from && stat(from, &st) == 0;
    int rc = -1;
    if (ok && S_ISDIR(st.st_mode)) {
        rc = copy_tree(from, to);
    } else if (ok) {
        const char *base = strrchr(from, '/');
        char *f = path_join(to, base ? base + 1 : from);
        rc = mkdir(to, 0700) == 0 ? copy_tree(from, f) : -1;
        free(f);
    }
    set_step_col(d, i, "outputs_dir", dir);
    if (rc == 0) {
        set_step(d, i, "Completed", NULL);
        plog(d, "step %s: copied %s to its output %s", s->name, s->source, out);
    } else {
        char *why = ok ? xasprintf("cannot copy %s: %s", s->source, strerror(errno))
                       : xasprintf("the source %s does not exist", s->source);
        set_step(d, i, "Failed", why);
        plog(d, "step %s failed: %s", s->name, why);
        free(why);
    }
    free(from);
    free(dir);
    free(to);
}

/* Submit step i under its recorded run id (staged again: the snapshot is content-addressed,
 * so a restart stages the same id). */
static void submit_step(drv *d, size_t i, const char *snap)
{
    const pl_step *s = &d->cfg.steps[i];
    srow *r = &d->r[i];
    json_t *conf = json_deep_copy(s->run);
    json_object_set(conf, "experiment", json_object_get(d->row, "experiment"));
    json_t *env = json_object_get(conf, "environment");
    if (!json_is_object(env))
        json_object_set_new(conf, "environment", env = json_object());
    json_t *vars = json_object_get(env, "env_vars");
    if (!json_is_object(vars))
        json_object_set_new(env, "env_vars", vars = json_object());
    const char *k;
    json_t *v;
    json_object_foreach(s->inputs, k, v) {
        char *u = upper(k), *name = xasprintf("CTARGET_INPUT_%s", u), *val =
            xasprintf("inputs/%s", k);
        json_object_set_new(vars, name, json_string(val));
        free(u);
        free(name);
        free(val);
    }
    size_t j;
    json_array_foreach(s->outputs, j, v) {
        char *u = upper(json_string_value(v)), *name = xasprintf("CTARGET_OUTPUT_%s", u),
             *val = xasprintf("outputs/%s", json_string_value(v));
        json_object_set_new(vars, name, json_string(val));
        free(u);
        free(name);
        free(val);
    }
    json_object_set_new(vars, "CTARGET_PIPELINE_ID", json_string(d->id));
    json_object_set_new(vars, "CTARGET_STEP_NAME", json_string(s->name));
    json_t *extra = json_pack("{s:{s:s, s:s, s:s, s:O}}", "pipeline_step", "pipeline_id", d->id,
                              "step_name", s->name, "step_type", s->type, "step", s->keys);
    run_sub x = {.id = r->run, .parent = d->id, .kind = "step", .snapshot = snap,
                 .extra = extra, .need_caps = CTARGET_CAP_PIPELINE_STEP,
                 .step_type = s->type};
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = run_submit_config(d->ws, conf, &x, &json, &err);
    if (rc == CTARGET_E_EXISTS) {
        plog(d, "step %s (run %s) was submitted before", s->name, r->run);
    } else if (rc) {
        set_step(d, i, "Failed", err.message);
        plog(d, "step %s could not be submitted: %s", s->name, err.message);
    } else {
        plog(d, "step %s: started as run %s on %s", s->name, r->run,
             json_string_value(json_object_get(s->run, "target")));
    }
    free(json);
    json_decref(extra);
    json_decref(conf);
}

static void start_step(drv *d, size_t i)
{
    const pl_step *s = &d->cfg.steps[i];
    srow *r = &d->r[i];
    if (!s->run) {
        transfer_step(d, i);
        return;
    }
    char *snap = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    if (stage(d, i, &snap, &err)) {
        set_step(d, i, "Failed", err.message);
        plog(d, "step %s failed before it ran: %s", s->name, err.message);
        return;
    }
    if (!r->run) {
        char *key = reuse_key(s, snap), *prev = NULL, *dir = NULL;
        set_step_col(d, i, "reuse_key", key);
        if (s->allow_reuse && find_reusable(d, key, &prev, &dir) == 0) {
            set_step_col(d, i, "reused_from", prev);
            set_step_col(d, i, "outputs_dir", dir);
            char *why = xasprintf("reused the outputs of run %s (code, arguments, environment "
                                  "and inputs unchanged)", prev);
            set_step(d, i, "Reused", why);
            plog(d, "step %s: %s", s->name, why);
            free(why);
            free(prev);
            free(dir);
            free(key);
            free(snap);
            return;
        }
        free(key);
        /* record the run id first: a driver restarted after this submits it, once */
        char *id = run_new_id(), *out = run_file(d->ws->dir, id, "outputs");
        set_step_col(d, i, "outputs_dir", out);
        sqlite3_stmt *st = store_prepare(d->ws->st, "UPDATE pipeline_steps SET run=?,"
                                                    " started_at=? WHERE pipeline=? AND idx=?",
                                         NULL);
        if (st) {
            store_bind_text(st, 1, id);
            sqlite3_bind_int64(st, 2, time_now_ms());
            store_bind_text(st, 3, d->id);
            sqlite3_bind_int64(st, 4, (sqlite3_int64)i);
            sqlite3_step(st);
            sqlite3_finalize(st);
        }
        free(out);
        free(r->run);
        r->run = id;
    }
    submit_step(d, i, snap);
    free(snap);
}

/* A completed run: are its declared outputs there? */
static void check_outputs(drv *d, size_t i)
{
    const pl_step *s = &d->cfg.steps[i];
    size_t j;
    json_t *v;
    json_array_foreach(s->outputs, j, v) {
        char *p = d->r[i].outputs_dir ? path_join(d->r[i].outputs_dir, json_string_value(v))
                                      : NULL;
        int ok = p && exists(p);
        free(p);
        if (!ok) {
            char *why = xasprintf("step %s completed without writing its output '%s' (the "
                                  "script writes it under $CTARGET_OUTPUT_%s, outputs/%s)",
                                  s->name, json_string_value(v), json_string_value(v),
                                  json_string_value(v));
            set_step(d, i, "Failed", why);
            plog(d, "%s", why);
            free(why);
            return;
        }
    }
    set_step_col(d, i, "checked", "1");
    plog(d, "step %s: completed (run %s)", s->name, d->r[i].run);
}

/* ---- the loop ------------------------------------------------------------------------------- */

static void cancel_run(drv *d, const char *run, const char *why)
{
    rs_change ch = {.detail = why, .cancel_cause = "pipeline"};
    ctarget_error err;
    ctarget_error_init(&err);
    rs_transition(d->ws->st, run, CTARGET_RUN_CANCEL_REQUESTED, &ch, NULL, &err);
}

static void finish(drv *d, ctarget_run_state to, const char *detail)
{
    rs_change ch = {.detail = detail};
    ctarget_error err;
    ctarget_error_init(&err);
    if (rs_transition(d->ws->st, d->id, to, &ch, NULL, &err))
        plog(d, "cannot record the pipeline's end: %s", err.message);
    else
        plog(d, "pipeline %s: %s", rs_name(to), detail);
    run_set_text(d->ws->st, d->id, "phase", "done", &err);
}

static void tend_monitors(drv *d)
{
    for (size_t i = 0; i < d->cfg.n; i++) {
        if (!d->r[i].run || !d->r[i].exists || rs_terminal(d->r[i].run_state))
            continue;
        json_t *row = run_row(d->ws->st, d->r[i].run);
        if (row)
            run_ensure_monitor(d->ws, row);
        json_decref(row);
    }
}

static const char *failure_of(drv *d, size_t i)
{
    const srow *r = &d->r[i];
    if (r->reason && *r->reason)
        return r->reason;
    if (r->run_reason && *r->run_reason)
        return r->run_reason;
    return r->exists ? rs_name(r->run_state) : "failed";
}

static void loop(drv *d)
{
    int64_t last_tend = 0;
    char *stop_why = NULL;
    ctarget_run_state stop_to = CTARGET_RUN_FAILED;
    for (;;) {
        json_t *row = run_row(d->ws->st, d->id);
        if (!row)
            break;
        json_decref(d->row);
        d->row = row;
        if (load_rows(d))
            break;
        if (!stop_why && run_row_state(row) == CTARGET_RUN_CANCEL_REQUESTED) {
            stop_why = xstrdup("the pipeline was canceled");
            stop_to = CTARGET_RUN_CANCELED;
            plog(d, "cancel requested: canceling the running steps");
        }
        size_t active = 0, ok = 0, failed = 0, canceled = 0;
        int progressed = 0;
        for (size_t i = 0; i < d->cfg.n; i++) {
            sstate st = step_state(&d->r[i]);
            if (st == S_ACTIVE && d->r[i].exists &&
                (d->r[i].run_state == CTARGET_RUN_COMPLETED ||
                 d->r[i].run_state == CTARGET_RUN_FINISHED)) {
                check_outputs(d, i);
                progressed = 1;
                continue;
            }
            if (st == S_RECORDED && !stop_why) {
                /* recorded, never submitted (the driver died in between) */
                start_step(d, i);
                progressed = 1;
                continue;
            }
            active += st == S_ACTIVE || st == S_RECORDED;
            ok += st == S_OK;
            canceled += st == S_CANCELED;
            if (st == S_FAILED) {
                failed++;
                if (!stop_why && !d->cfg.continue_on_failure) {
                    stop_why = xasprintf("step %s failed: %s", d->cfg.steps[i].name,
                                         failure_of(d, i));
                    stop_to = CTARGET_RUN_FAILED;
                    plog(d, "%s; canceling the other steps", stop_why);
                }
            }
        }
        if (progressed) {
            nap(1);
            continue; /* read the new state first */
        }
        if (stop_why) {
            for (size_t i = 0; i < d->cfg.n; i++) {
                sstate st = step_state(&d->r[i]);
                if (st == S_PENDING || st == S_RECORDED) {
                    char *why = xasprintf("not started: %s", stop_why);
                    set_step(d, i, "Canceled", why);
                    free(why);
                } else if (st == S_ACTIVE && d->r[i].run_state != CTARGET_RUN_CANCEL_REQUESTED) {
                    cancel_run(d, d->r[i].run, stop_why);
                }
            }
            load_rows(d);
            size_t still = 0;
            for (size_t i = 0; i < d->cfg.n; i++)
                still += step_state(&d->r[i]) == S_ACTIVE;
            if (!still) {
                finish(d, stop_to, stop_why);
                break;
            }
        } else {
            /* start what is ready, in file order */
            for (size_t i = 0; i < d->cfg.n && (long long)active < d->cfg.max_parallel; i++) {
                if (step_state(&d->r[i]) != S_PENDING)
                    continue;
                const pl_step *s = &d->cfg.steps[i];
                int ready = 1, blocked = 0;
                for (size_t k = 0; k < s->n_deps; k++) {
                    sstate ds = step_state(&d->r[s->deps[k]]);
                    ready &= ds == S_OK;
                    blocked |= ds == S_FAILED || ds == S_CANCELED;
                }
                if (blocked) {
                    char *why = xasprintf("not run: a step it takes data from did not "
                                          "succeed");
                    set_step(d, i, "Skipped", why);
                    plog(d, "step %s: %s", s->name, why);
                    free(why);
                    progressed = 1;
                } else if (ready) {
                    start_step(d, i);
                    active++;
                    progressed = 1;
                }
            }
            if (!progressed && !active) {
                if (ok == d->cfg.n) {
                    char *det = xasprintf("%zu steps succeeded", ok);
                    finish(d, CTARGET_RUN_FINISHED, det);
                    free(det);
                } else {
                    char *det = xasprintf("%zu of %zu steps failed, %zu not run", failed,
                                          d->cfg.n, canceled);
                    finish(d, CTARGET_RUN_FAILED, det);
                    free(det);
                }
                break;
            }
            if (progressed)
                continue;
        }
        int64_t now = time_now_ms();
        if (now - last_tend >= 1000) {
            tend_monitors(d);
            last_tend = now;
        }
        nap(d->poll_ms);
    }
    free(stop_why);
}

void pl_drive(ctarget_ws *ws, const char *id)
{
    drv d = {.ws = ws, .id = id, .log_fd = -1};
    const char *v = getenv("CTARGET_POLL_INTERVAL_MS");
    long long ms;
    d.poll_ms = v && parse_ll(v, &ms) == 0 && ms > 0 ? (long)ms : 500;
    d.row = run_row(ws->st, id);
    if (!d.row)
        return;
    char *logp = run_file(ws->dir, id, "std_log.txt");
    d.log_fd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    free(logp);
    ctarget_error err;
    ctarget_error_init(&err);
    json_t *doc = json_object_get(json_object_get(d.row, "config"), "pipeline");
    if (pl_config_from_doc(doc, &d.cfg, &err)) {
        rs_change ch = {.detail = err.message};
        rs_transition(ws->st, id, CTARGET_RUN_FAILED, &ch, NULL, &err);
        run_set_text(ws->st, id, "phase", "done", &err);
        json_decref(d.row);
        if (d.log_fd >= 0)
            close(d.log_fd);
        return;
    }
    d.r = xcalloc(d.cfg.n + 1, sizeof *d.r);
    ctarget_run_state st = run_row_state(d.row);
    if (st == CTARGET_RUN_NOT_STARTED) {
        rs_change ch = {.detail = "pipeline driver started"};
        rs_transition(ws->st, id, CTARGET_RUN_RUNNING, &ch, NULL, &err);
        run_set_text(ws->st, id, "phase", "submitted", &err);
        plog(&d, "pipeline %s started: %zu steps, at most %lld at once", id, d.cfg.n,
             d.cfg.max_parallel);
    } else {
        plog(&d, "driver restarted (%s)", rs_name(st));
    }
    if (!rs_terminal(st))
        loop(&d);
    else
        run_set_text(ws->st, id, "phase", "done", &err);
    rows_free(&d);
    free(d.r);
    pl_config_free(&d.cfg);
    json_decref(d.row);
    if (d.log_fd >= 0)
        close(d.log_fd);
}
