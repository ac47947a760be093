/* The sweep API: submit, show (children ranked by the primary metric), list, wait. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"
#include "../run.h"
#include "../run_api.h"
#include "../util.h"
#include "../ws.h"

ctarget_status ctarget_sweep_submit(ctarget_ws *ws, const ctarget_sweep_opts *o, char **json,
                                    ctarget_error *err)
{
    *json = NULL;
    if (!o || !o->config_file) {
        ct_err(err, CTARGET_E_USAGE, "a sweep needs its configuration file (--config "
               "sweep.json; see examples/sweep.json)");
        return CTARGET_E_USAGE;
    }
    sw_config cfg;
    ctarget_status rc = sw_config_load(o->config_file, &cfg, err);
    if (rc)
        return rc;
    json_t *c = json_deep_copy(cfg.run);
    if (o->experiment)
        json_object_set_new(c, "experiment", json_string(o->experiment));
    if (o->target)
        json_object_set_new(c, "target", json_string(o->target));
    /* the children's configuration is the checked one (with the overrides) */
    json_object_set(cfg.doc, "run", c);
    json_t *extra = json_pack("{s:O}", "sweep", cfg.doc);
    run_sub x = {.kind = "sweep", .extra = extra,
                 .need_caps = CTARGET_CAP_HYPERPARAMETER_TUNING};
    char *out = NULL;
    rc = run_submit_config(ws, c, &x, &out, err);
    if (!rc) {
        json_t *j = json_loads(out, 0, NULL);
        json_object_set_new(j, "sampling", json_string(sw_sampling_name(cfg.sampling)));
        json_object_set_new(j, "seed", json_integer((json_int_t)cfg.seed));
        json_object_set_new(j, "max_total_runs", json_integer(cfg.max_total));
        json_object_set_new(j, "max_concurrent_runs", json_integer(cfg.max_concurrent));
        *json = json_out(j);
        json_decref(j);
    }
    free(out);
    json_decref(extra);
    json_decref(c);
    sw_config_free(&cfg);
    return rc;
}

/* ---- show --------------------------------------------------------------------------------- */

typedef struct ranked {
    json_t *o;
    int has;
    double v;
    long long idx;
} ranked;

static int g_maximize;

static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->has != y->has)
        return x->has ? -1 : 1;
    if (x->has && x->v != y->v)
        return (g_maximize ? x->v > y->v : x->v < y->v) ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static json_t *children_json(ctarget_ws *ws, const char *id, const sw_config *cfg,
                             json_t **best, json_t *counts, long long *stopped)
{
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT c.idx, c.run, c.params, c.arguments,"
                                            " c.error, r.status, r.reason, r.cancel_cause,"
                                            " (SELECT COUNT(*) FROM metrics m WHERE m.run=c.run"
                                            "  AND m.name=?2),"
                                            " (SELECT value FROM metrics m WHERE m.run=c.run AND"
                                            "  m.name=?2 ORDER BY seq DESC LIMIT 1)"
                                            " FROM sweep_children c LEFT JOIN runs r ON"
                                            " r.id=c.run WHERE c.sweep=?1 ORDER BY c.idx", NULL);
    json_t *arr = json_array();
    *best = json_null();
    *stopped = 0;
    if (!s)
        return arr;
    store_bind_text(s, 1, id);
    store_bind_text(s, 2, cfg->metric);
    ranked *r = NULL;
    size_t n = 0, cap = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (n == cap)
            r = xrealloc(r, (cap = cap ? cap * 2 : 16) * sizeof *r);
        const char *status = (const char *)sqlite3_column_text(s, 5);
        const char *err = (const char *)sqlite3_column_text(s, 4);
        const char *cause = (const char *)sqlite3_column_text(s, 7);
        if (!status)
            status = err ? "Failed" : "NotStarted";
        int early = cause && !strcmp(cause, "policy") && !strcmp(status, "Canceled");
        *stopped += early;
        json_t *o = json_pack("{s:I, s:s, s:s, s:s?, s:o, s:o, s:I, s:b}", "index",
                              (json_int_t)sqlite3_column_int64(s, 0), "id",
                              (const char *)sqlite3_column_text(s, 1), "status", status,
                              "reason", err ? err : (const char *)sqlite3_column_text(s, 6),
                              "params",
                              json_loads((const char *)sqlite3_column_text(s, 2), 0, NULL),
                              "arguments",
                              json_loads((const char *)sqlite3_column_text(s, 3), 0, NULL),
                              "intervals", (json_int_t)sqlite3_column_int64(s, 8),
                              "stopped_early", early);
        int has = sqlite3_column_type(s, 9) != SQLITE_NULL;
        double v = sqlite3_column_double(s, 9);
        json_object_set_new(o, "value", has ? json_real(v) : json_null());
        json_object_set_new(counts, status,
                            json_integer(json_integer_value(json_object_get(counts, status)) + 1));
        r[n++] = (ranked){o, has, v, sqlite3_column_int64(s, 0)};
    }
    sqlite3_finalize(s);
    g_maximize = cfg->maximize;
    qsort(r, n, sizeof *r, cmp_ranked);
    for (size_t i = 0; i < n; i++) {
        json_object_set_new(r[i].o, "rank", r[i].has ? json_integer((json_int_t)i + 1)
                                                     : json_null());
        if (i == 0 && r[i].has) {
            json_decref(*best);
            *best = json_pack("{s:O, s:O, s:O, s:O, s:O}", "index",
                              json_object_get(r[i].o, "index"), "id",
                              json_object_get(r[i].o, "id"), "value",
                              json_object_get(r[i].o, "value"), "params",
                              json_object_get(r[i].o, "params"), "arguments",
                              json_object_get(r[i].o, "arguments"));
        }
        json_array_append_new(arr, r[i].o);
    }
    free(r);
    return arr;
}

static json_t *sweep_render(ctarget_ws *ws, json_t *row, const sw_config *cfg)
{
    json_t *run = run_render(ws, row);
    json_t *o = json_object();
    static const char *const copy[] = {"id", "experiment", "target", "target_type", "status",
                                       "reason", "created_at", "started_at", "ended_at",
                                       "duration_seconds", "snapshot_id", "source_dir",
                                       "script", "monitor"};
    for (size_t i = 0; i < CT_ARRAY_LEN(copy); i++)
        json_object_set(o, copy[i], json_object_get(run, copy[i]));
    /* the latest transition's detail: how it ended ("50 children: 20 completed, ...") */
    json_t *ev = json_object_get(run, "events");
    json_t *last = json_array_get(ev, json_array_size(ev) ? json_array_size(ev) - 1 : 0);
    json_t *detail = json_object_get(last, "detail");
    json_object_set(o, "summary", detail ? detail : json_null());
    json_decref(run);
    json_t *doc = cfg->doc;
    json_object_set_new(o, "sampling", json_string(sw_sampling_name(cfg->sampling)));
    json_object_set(o, "seed", json_object_get(doc, "seed"));
    json_object_set_new(o, "primary_metric", json_string(cfg->metric));
    json_object_set_new(o, "goal", json_string(cfg->maximize ? "maximize" : "minimize"));
    json_t *pol = json_object_get(doc, "early_termination");
    json_object_set(o, "early_termination", pol ? pol : json_null());
    json_object_set(o, "parameters", json_object_get(doc, "parameters"));
    json_object_set_new(o, "max_total_runs", json_integer(cfg->max_total));
    json_object_set_new(o, "max_concurrent_runs", json_integer(cfg->max_concurrent));
    json_object_set_new(o, "max_duration_minutes", json_integer(cfg->max_minutes));
    json_t *best, *counts = json_object();
    long long stopped;
    json_t *ch = children_json(ws, json_string_value(json_object_get(row, "id")), cfg, &best,
                               counts, &stopped);
    json_object_set_new(o, "children_started", json_integer((json_int_t)json_array_size(ch)));
    json_object_set_new(o, "children_by_status", counts);
    json_object_set_new(o, "stopped_early", json_integer(stopped));
    json_object_set_new(o, "best", best);
    json_object_set_new(o, "children", ch);
    return o;
}

static ctarget_status load_sweep(ctarget_ws *ws, const char *id, json_t **row, sw_config *cfg,
                                 ctarget_error *err)
{
    ctarget_status rc = run_load(ws, id, 1, row, err);
    if (rc)
        return rc;
    const char *kind = json_string_value(json_object_get(*row, "kind"));
    if (!kind || strcmp(kind, "sweep")) {
        ct_err(err, CTARGET_E_NOT_FOUND, "run %s is not a sweep (see `ctarget sweep list`)",
               json_string_value(json_object_get(*row, "id")));
        json_decref(*row);
        return CTARGET_E_NOT_FOUND;
    }
    json_t *doc = json_object_get(json_object_get(*row, "config"), "sweep");
    if ((rc = sw_config_from_doc(doc, cfg, err)))
        json_decref(*row);
    return rc;
}

ctarget_status ctarget_sweep_show(ctarget_ws *ws, const char *id, char **json,
                                  ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    sw_config cfg;
    ctarget_status rc = load_sweep(ws, id, &row, &cfg, err);
    if (rc)
        return rc;
    json_t *o = sweep_render(ws, row, &cfg);
    *json = json_out(o);
    json_decref(o);
    json_decref(row);
    sw_config_free(&cfg);
    return CTARGET_OK;
}

ctarget_status ctarget_sweep_wait(ctarget_ws *ws, const char *id, long timeout_ms, char **json,
                                  ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    sw_config cfg;
    ctarget_status rc = load_sweep(ws, id, &row, &cfg, err);
    if (rc)
        return rc;
    sw_config_free(&cfg);
    char *rid = xstrdup(json_string_value(json_object_get(row, "id")));
    json_decref(row);
    char *tmp = NULL;
    rc = ctarget_run_wait(ws, rid, timeout_ms, &tmp, err);
    free(tmp);
    if (!rc)
        rc = ctarget_sweep_show(ws, rid, json, err);
    free(rid);
    return rc;
}

ctarget_status ctarget_sweep_cancel(ctarget_ws *ws, const char *id, char **json,
                                    ctarget_error *err)
{
    *json = NULL;
    json_t *row;
    sw_config cfg;
    ctarget_status rc = load_sweep(ws, id, &row, &cfg, err);
    if (rc)
        return rc;
    sw_config_free(&cfg);
    char *tmp = NULL;
    rc = ctarget_run_cancel(ws, json_string_value(json_object_get(row, "id")), &tmp, err);
    free(tmp);
    if (!rc)
        rc = ctarget_sweep_show(ws, json_string_value(json_object_get(row, "id")), json, err);
    json_decref(row);
    return rc;
}

ctarget_status ctarget_sweep_list(ctarget_ws *ws, char **json, ctarget_error *err)
{
    *json = NULL;
    sqlite3_stmt *s = store_prepare(ws->st, "SELECT id FROM runs WHERE kind='sweep' ORDER BY"
                                            " id DESC", err);
    if (!s)
        return err->code;
    json_t *ids = json_array();
    while (sqlite3_step(s) == SQLITE_ROW)
        json_array_append_new(ids, json_string((const char *)sqlite3_column_text(s, 0)));
    sqlite3_finalize(s);
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        json_t *row;
        sw_config cfg;
        ctarget_error e;
        ctarget_error_init(&e);
        if (load_sweep(ws, json_string_value(v), &row, &cfg, &e))
            continue;
        json_t *full = sweep_render(ws, row, &cfg);
        json_t *b = json_object_get(full, "best");
        json_t *o = json_pack("{s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O, s:O}", "id",
                              json_object_get(full, "id"), "experiment",
                              json_object_get(full, "experiment"), "target",
                              json_object_get(full, "target"), "status",
                              json_object_get(full, "status"), "sampling",
                              json_object_get(full, "sampling"), "primary_metric",
                              json_object_get(full, "primary_metric"), "children_started",
                              json_object_get(full, "children_started"), "max_total_runs",
                              json_object_get(full, "max_total_runs"), "stopped_early",
                              json_object_get(full, "stopped_early"), "best_value",
                              json_is_object(b) ? json_object_get(b, "value") : json_null());
        json_object_set(o, "created_at", json_object_get(full, "created_at"));
        json_array_append_new(out, o);
        json_decref(full);
        json_decref(row);
        sw_config_free(&cfg);
    }
    json_decref(ids);
    *json = json_out(out);
    json_decref(out);
    return CTARGET_OK;
}
