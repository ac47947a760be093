/* The pipeline API: validate, submit, show, list, wait, cancel. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline.h"
#include "../log.h"
#include "../run.h"
#include "../run_api.h"
#include "../util.h"
#include "../ws.h"

static ctarget_status load(ctarget_ws *ws, const ctarget_pipeline_opts *o, pl_config *c,
                           ctarget_error *err)
{
    if (!o || !o->file) {
        ct_err(err, CTARGET_E_USAGE, "a pipeline needs its file (ctarget pipeline submit "
               "PIPELINE.yaml; see examples/pipeline.yaml)");
        return CTARGET_E_USAGE;
    }
    ctarget_status rc = pl_config_load(o->file, c, err);
    if (rc)
        return rc;
    if (o->experiment) {
        if (!run_experiment_name_ok(o->experiment)) {
            pl_config_free(c);
            ct_err(err, CTARGET_E_CONFIG, "experiment name '%s' is invalid: 3-36 characters, "
                   "a letter or digit first, then letters, digits, '_' and '-'", o->experiment);
            return CTARGET_E_CONFIG;
        }
        json_object_set_new(c->doc, "experiment", json_string(o->experiment));
        c->experiment = json_string_value(json_object_get(c->doc, "experiment"));
    }
    if ((rc = pl_check(ws, c, o->file, err)))
        pl_config_free(c);
    return rc;
}

static json_t *deps_json(const pl_config *c, size_t i)
{
    json_t *a = json_array();
    for (size_t k = 0; k < c->steps[i].n_deps; k++)
        json_array_append_new(a, json_string(c->steps[c->steps[i].deps[k]].name));
    return a;
}

static json_t *plan_json(const pl_config *c)
{
    json_t *steps = json_array();
    for (size_t i = 0; i < c->n; i++) {
        const pl_step *s = &c->steps[i];
        json_array_append_new(steps, json_pack("{s:s, s:s, s:O?, s:O, s:O, s:o}", "name",
                                               s->name, "type", s->type, "target",
                                               json_object_get(s->run, "target"), "inputs",
                                               s->inputs, "outputs", s->outputs, "depends_on",
                                               deps_json(c, i)));
    }
    return json_pack("{s:s?, s:s, s:I, s:o}", "name", c->name, "experiment", c->experiment,
                     "max_parallel", (json_int_t)c->max_parallel, "steps", steps);
}

ctarget_status ctarget_pipeline_validate(ctarget_ws *ws, const ctarget_pipeline_opts *o,
                                         char **json, ctarget_error *err)
{
    *json = NULL;
    pl_config c;
    ctarget_status rc = load(ws, o, &c, err);
    if (rc)
        return rc;
    json_t *j = plan_json(&c);
    *json = json_out(j);
    json_decref(j);
    pl_config_free(&c);
    return CTARGET_OK;
}

static ctarget_status insert_steps(ctarget_ws *ws, const char *id, const pl_config *c,
                                   ctarget_error *err)
{
    ctarget_status rc = store_begin(ws->st, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < c->n; i++) {
        sqlite3_stmt *s = store_prepare(ws->st, "INSERT INTO pipeline_steps(pipeline, idx, name,"
                                                " type, target) VALUES (?,?,?,?,?)", err);
        if (!s) {
            store_rollback(ws->st);
            return err->code;
        }
        store_bind_text(s, 1, id);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)i);
        store_bind_text(s, 3, c->steps[i].name);
        store_bind_text(s, 4, c->steps[i].type);
        store_bind_text(s, 5, json_string_value(json_object_get(c->steps[i].run, "target")));
        int step = sqlite3_step(s);
        sqlite3_finalize(s);
        if (step != SQLITE_DONE) {
            store_fail(ws->st, err, "cannot record the pipeline's steps");
            store_rollback(ws->st);
            return err->code ? err->code : CTARGET_E_IO;
        }
    }
    return store_commit(ws->st, err);
}

ctarget_status ctarget_pipeline_submit(ctarget_ws *ws, const ctarget_pipeline_opts *o,
                                       char **json, ctarget_error *err)
{
    *json = NULL;
    pl_config c;
    ctarget_status rc = load(ws, o, &c, err);
    if (rc)
        return rc;
    char *id = run_new_id(), *dir = run_dir(ws->dir, id);
    json_t *config = json_pack("{s:O}", "pipeline", c.doc);
    new_run r = {.id = id, .experiment = c.experiment, .target = "pipeline",
                 .type = "pipeline", .git = json_null(), .config = config, .kind = "pipeline"};
    if (mkdir_p(dir, 0700) != 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot create %s", dir);
        rc = CTARGET_E_IO;
    } else if (!(rc = run_insert(ws->st, &r, err)) && (rc = insert_steps(ws, id, &c, err))) {
        /* no pipeline without its steps */
        sqlite3_stmt *s = store_prepare(ws->st, "DELETE FROM runs WHERE id=?", NULL);
        if (s) {
            store_bind_text(s, 1, id);
            sqlite3_step(s);
            sqlite3_finalize(s);
        }
    }
    if (rc) {
        rm_rf(dir);
    } else {
        ctarget_error serr;
        ctarget_error_init(&serr);
        if (run_spawn_monitor(ws->dir, id, &serr))
            log_msg(CTARGET_LOG_WARN, "%s; the next command that reads the pipeline retries",
                    serr.message);
        json_t *out = plan_json(&c);
        json_object_set_new(out, "id", json_string(id));
        json_object_set_new(out, "status", json_string("NotStarted"));
        *json = json_out(out);
        json_decref(out);
    }
    json_decref(r.git);
    json_decref(config);
    free(dir);
    free(id);
    pl_config_free(&c);
    return rc;
}

static json_t *iso_ms(sqlite3_stmt *s, int col)
{
    if (sqlite3_column_type(s, col) == SQLITE_NULL)
        return json_null();
    char t[32];
    time_format_iso(sqlite3_column_int64(s, col), t);
    return json_string(t);
}

static const char *col(sqlite3_stmt *s, int c)
{
    return (const char *)sqlite3_column_text(s, c);
}

static json_t *steps_json(ctarget_ws *ws, const char *id, const pl_config *c, json_t *by,
                          long long *reused)
{
    json_t *a = json_array();
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT p.idx, p.run, p.status, p.reason, r.status,"
                                            " r.reason, p.reused_from, COALESCE(p.started_at,"
                                            " r.started_at), COALESCE(p.ended_at, r.ended_at),"
                                            " p.checked FROM pipeline_steps p LEFT JOIN runs r"
                                            " ON r.id=p.run WHERE p.pipeline=? ORDER BY p.idx",
                                    NULL);
    if (!s)
        return a;
    store_bind_text(s, 1, id);
    while (sqlite3_step(s) == SQLITE_ROW) {
        long long i = sqlite3_column_int64(s, 0);
        if (i < 0 || (size_t)i >= c->n)
            continue;
        const pl_step *ps = &c->steps[i];
        const char *st = col(s, 2) ? col(s, 2) : col(s, 4) ? col(s, 4) : "NotStarted";
        /* a completed run whose outputs are not checked yet is still the pipeline's */
        if (!col(s, 2) && col(s, 4) && !strcmp(col(s, 4), "Completed") &&
            !sqlite3_column_int(s, 9))
            st = "Finalizing";
        const char *why = col(s, 3) ? col(s, 3) : col(s, 5);
        *reused += !strcmp(st, "Reused");
        json_t *n = json_object_get(by, st);
        json_object_set_new(by, st, json_integer(n ? json_integer_value(n) + 1 : 1));
        json_t *dur = json_null();
        if (sqlite3_column_type(s, 7) != SQLITE_NULL && sqlite3_column_type(s, 8) != SQLITE_NULL)
            dur = json_real((double)(sqlite3_column_int64(s, 8) - sqlite3_column_int64(s, 7)) /
                            1000.0);
        json_array_append_new(a, json_pack("{s:s, s:s, s:O?, s:s, s:s?, s:s?, s:s, s:O, s:O,"
                                           " s:o, s:o, s:o, s:o}",
                                           "name", ps->name, "type", ps->type, "target",
                                           json_object_get(ps->run, "target"), "status", st,
                                           "run", col(s, 1), "reused_from", col(s, 6),
                                           "reason", why ? why : "", "inputs", ps->inputs,
                                           "outputs", ps->outputs, "depends_on",
                                           deps_json(c, (size_t)i), "started_at", iso_ms(s, 7),
                                           "ended_at", iso_ms(s, 8), "duration_seconds", dur));
    }
    sqlite3_finalize(s);
    return a;
}

static ctarget_status load_pipeline(ctarget_ws *ws, const char *id, int recover, json_t **row,
                                    pl_config *c, ctarget_error *err)
{
    ctarget_status rc = run_load(ws, id, recover, row, err);
    if (rc)
        return rc;
    const char *kind = json_string_value(json_object_get(*row, "kind"));
    if (!kind || strcmp(kind, "pipeline")) {
        ct_err(err, CTARGET_E_NOT_FOUND, "run %s is not a pipeline (it is a %s): use `ctarget "
               "run show`", json_string_value(json_object_get(*row, "id")), kind ? kind : "run");
        json_decref(*row);
        return CTARGET_E_NOT_FOUND;
    }
    if ((rc = pl_config_from_doc(json_object_get(json_object_get(*row, "config"), "pipeline"), c,
                                 err)))
        json_decref(*row);
    return rc;
}

static json_t *render(ctarget_ws *ws, json_t *row, const pl_config *c)
{
    const char *id = json_string_value(json_object_get(row, "id"));
    json_t *o = run_render(ws, row);
    /* a pipeline has no script, environment or handle of its own */
    static const char *const drop[] = {"script", "arguments", "framework", "timeout_seconds",
                                       "cancel_grace_seconds", "environment", "handle",
                                       "snapshot_id", "source_dir", "git", "work_dir",
                                       "exit_code", "term_signal", "native_state", "attempt",
                                       "metrics", "outputs"};
    for (size_t i = 0; i < CT_ARRAY_LEN(drop); i++)
        json_object_del(o, drop[i]);
    json_t *by = json_object();
    long long reused = 0;
    json_object_set_new(o, "name", c->name ? json_string(c->name) : json_null());
    json_object_set_new(o, "max_parallel", json_integer(c->max_parallel));
    json_object_set_new(o, "continue_on_step_failure", json_boolean(c->continue_on_failure));
    json_object_set_new(o, "steps", steps_json(ws, id, c, by, &reused));
    json_object_set_new(o, "steps_by_status", by);
    json_object_set_new(o, "reused", json_integer(reused));
    json_t *ev = json_object_get(o, "events");
    json_t *last = json_array_get(ev, json_array_size(ev) - 1);
    json_object_set(o, "summary", last ? json_object_get(last, "detail") : json_string(""));
    return o;
}

ctarget_status ctarget_pipeline_show(ctarget_ws *ws, const char *id, char **json,
                                     ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    pl_config c;
    ctarget_status rc = load_pipeline(ws, id, 1, &row, &c, err);
    if (rc)
        return rc;
    json_t *o = render(ws, row, &c);
    *json = json_out(o);
    json_decref(o);
    json_decref(row);
    pl_config_free(&c);
    return CTARGET_OK;
}

/* The full id of pipeline `id` (a unique prefix will do), owned; NULL with err set. */
static char *full_id(ctarget_ws *ws, const char *id, int recover, ctarget_error *err)
{
    json_t *row;
    pl_config c;
    if (load_pipeline(ws, id, recover, &row, &c, err))
        return NULL;
    char *full = xstrdup(json_string_value(json_object_get(row, "id")));
    json_decref(row);
    pl_config_free(&c);
    return full;
}

ctarget_status ctarget_pipeline_wait(ctarget_ws *ws, const char *id, long timeout_ms,
                                     char **json, ctarget_error *err)
{
    *json = NULL;
    char *full = full_id(ws, id, 0, err), *rj = NULL;
    if (!full)
        return err->code;
    ctarget_status rc = ctarget_run_wait(ws, full, timeout_ms, &rj, err);
    free(rj);
    if (!rc)
        rc = ctarget_pipeline_show(ws, full, json, err);
    free(full);
    return rc;
}

ctarget_status ctarget_pipeline_cancel(ctarget_ws *ws, const char *id, char **json,
                                       ctarget_error *err)
{
    *json = NULL;
    char *full = full_id(ws, id, 1, err), *rj = NULL;
    if (!full)
        return err->code;
    ctarget_status rc = ctarget_run_cancel(ws, full, &rj, err);
    free(rj);
    if (!rc)
        rc = ctarget_pipeline_show(ws, full, json, err);
    free(full);
    return rc;
}

ctarget_status ctarget_pipeline_list(ctarget_ws *ws, char **json, ctarget_error *err)
{
    *json = NULL;
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT id FROM runs WHERE kind='pipeline' ORDER BY"
                                            " id DESC", err);
    if (!s)
        return err->code;
    json_t *ids = json_array();
    while (sqlite3_step(s) == SQLITE_ROW)
        json_array_append_new(ids, json_string(col(s, 0)));
    sqlite3_finalize(s);
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        json_t *row;
        pl_config c;
        ctarget_error e;
        ctarget_error_init(&e);
        if (load_pipeline(ws, json_string_value(v), 1, &row, &c, &e))
            continue;
        json_t *full = render(ws, row, &c);
        static const char *const keep[] = {"id", "name", "experiment", "status", "reused",
                                           "created_at", "duration_seconds", "summary"};
        json_t *o = json_object();
        for (size_t k = 0; k < CT_ARRAY_LEN(keep); k++)
            json_object_set(o, keep[k], json_object_get(full, keep[k]));
        json_object_set_new(o, "steps", json_integer((json_int_t)c.n));
        json_array_append_new(out, o);
        json_decref(full);
        json_decref(row);
        pl_config_free(&c);
    }
    json_decref(ids);
    *json = json_out(out);
    json_decref(out);
    return CTARGET_OK;
}
