/* The sweep driver: the monitor process of a sweep's parent run (ctarget_run_monitor hands
 * a run of kind 'sweep' here, under the same lock, so a dead driver is noticed and
 * restarted exactly like a dead run monitor).
 *
 * Each loop reads everything from the store (a restarted driver has no other memory):
 * children recorded in sweep_children, their runs and primary metric values.  A new child
 * is first recorded (index, run id, parameters, arguments) and only then submitted under
 * that id; on restart a recorded child without a run is submitted, one with a run never
 * again.  The termination policy judges each interval of each running child once (the
 * last judged interval is stored), and a stopped child is canceled with the policy's
 * reason (cancel cause "policy"). */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sweep.h"
#include "../log.h"
#include "../run.h"
#include "../util.h"
#include "../ws.h"

typedef struct child {
    long long idx;
    char *run;
    json_t *params, *args;
    long long evaluated;
    char *error;         /* could not be submitted */
    int exists;          /* the run row exists */
    ctarget_run_state state;
    double *v;
    size_t n;
} child;

typedef struct drv {
    ctarget_ws *ws;
    const char *id;
    json_t *row;
    sw_config cfg;
    child *ch;
    size_t n;
    long poll_ms;
    long long minute_ms;  /* 60000; tests shorten it (CTARGET_SWEEP_TEST_MINUTE_MS) */
} drv;

static void note(drv *d, const char *fmt, ...) CTARGET_PRINTF(2, 3);
static void note(drv *d, const char *fmt, ...)
{
    (void)d; /* stderr is the sweep's monitor.log */
    char ts[32];
    time_format_iso(time_now_ms(), ts);
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s [%ld] sweep: %s\n", ts, (long)getpid(), msg);
    fflush(stderr);
    free(msg);
}

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void children_free(drv *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->ch[i].run);
        free(d->ch[i].error);
        free(d->ch[i].v);
        json_decref(d->ch[i].params);
        json_decref(d->ch[i].args);
    }
    free(d->ch);
    d->ch = NULL;
    d->n = 0;
}

static void load_values(drv *d, child *c)
{
    sqlite3_stmt *s = store_prepare(d->ws->st, "SELECT value FROM metrics WHERE run=? AND"
                                               " name=? ORDER BY seq", NULL);
    if (!s)
        return;
    store_bind_text(s, 1, c->run);
    store_bind_text(s, 2, d->cfg.metric);
    size_t cap = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (c->n == cap)
            c->v = xrealloc(c->v, (cap = cap ? cap * 2 : 16) * sizeof *c->v);
        c->v[c->n++] = sqlite3_column_double(s, 0);
    }
    sqlite3_finalize(s);
}

/* The children as the store has them now. */
static int load_children(drv *d)
{
    children_free(d);
    sqlite3_stmt *s = store_prepare(d->ws->st, "SELECT c.idx, c.run, c.params, c.arguments,"
                                               " c.evaluated, c.error, r.status FROM"
                                               " sweep_children c LEFT JOIN runs r ON"
                                               " r.id=c.run WHERE c.sweep=? ORDER BY c.idx",
                                    NULL);
    if (!s)
        return -1;
    store_bind_text(s, 1, d->id);
    size_t cap = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (d->n == cap)
            d->ch = xrealloc(d->ch, (cap = cap ? cap * 2 : 16) * sizeof *d->ch);
        child *c = &d->ch[d->n++];
        memset(c, 0, sizeof *c);
        c->idx = sqlite3_column_int64(s, 0);
        c->run = store_col_text(s, 1);
        c->params = json_loads((const char *)sqlite3_column_text(s, 2), 0, NULL);
        c->args = json_loads((const char *)sqlite3_column_text(s, 3), 0, NULL);
        c->evaluated = sqlite3_column_int64(s, 4);
        if (sqlite3_column_type(s, 5) != SQLITE_NULL)
            c->error = store_col_text(s, 5);
        c->exists = sqlite3_column_type(s, 6) != SQLITE_NULL;
        int st = c->exists ? rs_parse((const char *)sqlite3_column_text(s, 6)) : -1;
        c->state = st < 0 ? CTARGET_RUN_NOT_STARTED : (ctarget_run_state)st;
        if (c->exists)
            load_values(d, c);
    }
    sqlite3_finalize(s);
    return 0;
}

static int child_done(const child *c)
{
    return c->error || (c->exists && rs_terminal(c->state));
}

/* Die at a chosen point, for the recovery tests: CTARGET_SWEEP_TEST_DIE=record:K exits
 * right after child K is recorded and before it is submitted (once: a marker file in the
 * sweep's directory remembers it). */
static void test_die(drv *d, const char *point, long long k)
{
    const char *v = getenv("CTARGET_SWEEP_TEST_DIE");
    size_t pl = strlen(point);
    if (!v || strncmp(v, point, pl) || v[pl] != ':' || atoll(v + pl + 1) != k)
        return;
    char *mark = run_file(d->ws->dir, d->id, "test-died");
    if (access(mark, F_OK) != 0) {
        file_write_atomic(mark, "1\n", 2, 0600);
        note(d, "test: dying after %s %lld", point, k);
        _exit(9);
    }
    free(mark);
}

static void set_child_int(drv *d, const child *c, const char *col, long long v)
{
    char *sql = xasprintf("UPDATE sweep_children SET %s=? WHERE sweep=? AND idx=?", col);
    sqlite3_stmt *s = store_prepare(d->ws->st, sql, NULL);
    free(sql);
    if (!s)
        return;
    sqlite3_bind_int64(s, 1, v);
    store_bind_text(s, 2, d->id);
    sqlite3_bind_int64(s, 3, c->idx);
    sqlite3_step(s);
    sqlite3_finalize(s);
}

static void set_child_error(drv *d, const child *c, const char *msg)
{
    sqlite3_stmt *s = store_prepare(d->ws->st, "UPDATE sweep_children SET error=? WHERE"
                                               " sweep=? AND idx=?", NULL);
    if (!s)
        return;
    store_bind_text(s, 1, msg);
    store_bind_text(s, 2, d->id);
    sqlite3_bind_int64(s, 3, c->idx);
    sqlite3_step(s);
    sqlite3_finalize(s);
}

/* Submit a recorded child under its recorded id. */
static void submit_child(drv *d, const child *c)
{
    json_t *conf = json_deep_copy(d->cfg.run);
    json_t *args = json_array();
    json_array_extend(args, json_object_get(conf, "arguments"));
    json_array_extend(args, c->args);
    json_object_set_new(conf, "arguments", args);
    json_object_set(conf, "experiment", json_object_get(d->row, "experiment"));
    run_sub x = {.id = c->run, .parent = d->id,
                 .snapshot = json_string_value(json_object_get(d->row, "snapshot_id")),
                 .git = json_object_get(d->row, "git")};
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = run_submit_config(d->ws, conf, &x, &json, &err);
    if (rc == CTARGET_E_EXISTS) {
        note(d, "child %lld (run %s) was submitted before", c->idx, c->run);
    } else if (rc) {
        note(d, "child %lld could not be submitted: %s", c->idx, err.message);
        set_child_error(d, c, err.message);
    } else {
        note(d, "child %lld: run %s started", c->idx, c->run);
    }
    free(json);
    json_decref(conf);
}

/* Finished children with a value, for TPE. */
static sw_trial *trials(drv *d, size_t *n)
{
    sw_trial *t = xcalloc(d->n + 1, sizeof *t);
    *n = 0;
    for (size_t i = 0; i < d->n; i++)
        if (child_done(&d->ch[i]) && d->ch[i].n) {
            t[*n].params = d->ch[i].params;
            t[(*n)++].value = d->ch[i].v[d->ch[i].n - 1];
        }
    return t;
}

/* Record child number idx, then submit it. */
static void new_child(drv *d, long long idx)
{
    json_t *params;
    if (d->cfg.sampling == SW_GRID) {
        params = sw_grid_point(&d->cfg.space, (uint64_t)idx);
    } else if (d->cfg.sampling == SW_RANDOM) {
        params = sw_random_point(&d->cfg.space, d->cfg.seed, (uint64_t)idx);
    } else {
        size_t nt;
        sw_trial *t = trials(d, &nt);
        params = sw_tpe_point(&d->cfg.space, d->cfg.seed, (uint64_t)idx, t, nt, d->cfg.maximize);
        free(t);
    }
    json_t *args = sw_arguments(&d->cfg.space, params, d->cfg.arg_style);
    child c = {.idx = idx, .run = run_new_id(), .params = params, .args = args};
    char *ptext = json_dumps(params, JSON_COMPACT), *atext = json_dumps(args, JSON_COMPACT);
    sqlite3_stmt *s = store_prepare(d->ws->st, "INSERT INTO sweep_children(sweep, idx, run,"
                                               " params, arguments, created_at) VALUES"
                                               " (?,?,?,?,?,?)", NULL);
    int ok = 0;
    if (s) {
        store_bind_text(s, 1, d->id);
        sqlite3_bind_int64(s, 2, idx);
        store_bind_text(s, 3, c.run);
        store_bind_text(s, 4, ptext);
        store_bind_text(s, 5, atext);
        sqlite3_bind_int64(s, 6, time_now_ms());
        ok = sqlite3_step(s) == SQLITE_DONE;
        sqlite3_finalize(s);
    }
    free(ptext);
    free(atext);
    if (ok) {
        test_die(d, "record", idx);
        submit_child(d, &c);
    } else {
        note(d, "cannot record child %lld: %s", idx, sqlite3_errmsg(d->ws->st->db));
    }
    free(c.run);
    json_decref(params);
    json_decref(args);
}

static void cancel_child(drv *d, const child *c, const char *why, const char *cause)
{
    rs_change ch = {.detail = why, .cancel_cause = cause};
    ctarget_error err;
    ctarget_error_init(&err);
    if (rs_transition(d->ws->st, c->run, CTARGET_RUN_CANCEL_REQUESTED, &ch, NULL, &err) == 0)
        note(d, "child %lld (run %s): %s", c->idx, c->run, why);
}

/* The policy, for every interval of a running child not judged yet. */
static void apply_policy(drv *d)
{
    if (d->cfg.policy.kind == SW_POLICY_NONE)
        return;
    sw_series *all = xcalloc(d->n + 1, sizeof *all);
    for (size_t i = 0; i < d->n; i++)
        all[i] = (sw_series){d->ch[i].v, d->ch[i].n, child_done(&d->ch[i])};
    for (size_t i = 0; i < d->n; i++) {
        child *c = &d->ch[i];
        /* Finalizing: the script has ended, there is nothing left to save */
        if (!c->exists || child_done(c) || c->state == CTARGET_RUN_CANCEL_REQUESTED ||
            c->state == CTARGET_RUN_FINALIZING || (long long)c->n <= c->evaluated)
            continue;
        char why[400];
        for (size_t N = (size_t)c->evaluated + 1; N <= c->n; N++)
            if (sw_policy_stop(&d->cfg.policy, d->cfg.maximize, all, d->n, i, N, why,
                               sizeof why)) {
                cancel_child(d, c, why, "policy");
                break;
            }
        set_child_int(d, c, "evaluated", (long long)c->n);
    }
    free(all);
}

static size_t count_active(drv *d)
{
    size_t k = 0;
    for (size_t i = 0; i < d->n; i++)
        k += !child_done(&d->ch[i]);
    return k;
}

static void finish(drv *d, int canceled, const char *why)
{
    size_t completed = 0, failed = 0, stopped = 0;
    for (size_t i = 0; i < d->n; i++) {
        completed += d->ch[i].state == CTARGET_RUN_COMPLETED;
        failed += d->ch[i].error || d->ch[i].state == CTARGET_RUN_FAILED;
        stopped += d->ch[i].state == CTARGET_RUN_CANCELED;
    }
    ctarget_error err;
    ctarget_error_init(&err);
    char *detail;
    ctarget_run_state to;
    if (canceled) {
        to = CTARGET_RUN_CANCELED;
        detail = xstrdup(why);
    } else if (completed) {
        to = CTARGET_RUN_COMPLETED;
        detail = xasprintf("%zu children: %zu completed, %zu failed, %zu canceled", d->n,
                           completed, failed, stopped);
    } else {
        to = CTARGET_RUN_FAILED;
        detail = xasprintf("no child completed (%zu failed, %zu canceled)", failed, stopped);
    }
    rs_change ch = {.detail = detail};
    if (rs_transition(d->ws->st, d->id, to, &ch, NULL, &err))
        note(d, "cannot record the sweep's end: %s", err.message);
    else
        note(d, "%s: %s", rs_name(to), detail);
    free(detail);
    run_set_text(d->ws->st, d->id, "phase", "done", &err);
}

/* Children that lost their monitor get a new one (as any command touching them would). */
static void tend_monitors(drv *d)
{
    for (size_t i = 0; i < d->n; i++) {
        if (!d->ch[i].exists || rs_terminal(d->ch[i].state))
            continue;
        json_t *row = run_row(d->ws->st, d->ch[i].run);
        if (row)
            run_ensure_monitor(d->ws, row);
        json_decref(row);
    }
}

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    long long x;
    return v && parse_ll(v, &x) == 0 && x > 0 ? (long)x : dflt;
}

static void loop(drv *d)
{
    int64_t last_tend = 0;
    char *stop_why = NULL;
    for (;;) {
        json_t *row = run_row(d->ws->st, d->id);
        if (!row)
            break;
        json_decref(d->row);
        d->row = row;
        if (load_children(d))
            break;
        ctarget_run_state st = run_row_state(row);
        int64_t now = time_now_ms();
        json_t *started = json_object_get(row, "started_at");
        if (!stop_why && st == CTARGET_RUN_CANCEL_REQUESTED) {
            const char *r = json_string_value(json_object_get(row, "cancel_cause"));
            stop_why = r && !strcmp(r, "timeout")
                           ? xasprintf("max_duration_minutes (%lld) reached", d->cfg.max_minutes)
                           : xstrdup("the sweep was canceled");
        }
        if (!stop_why && json_is_integer(started) &&
            now - json_integer_value(started) >= d->cfg.max_minutes * d->minute_ms) {
            stop_why = xasprintf("max_duration_minutes (%lld) reached", d->cfg.max_minutes);
            rs_change ch = {.detail = stop_why, .cancel_cause = "timeout"};
            ctarget_error e;
            ctarget_error_init(&e);
            rs_transition(d->ws->st, d->id, CTARGET_RUN_CANCEL_REQUESTED, &ch, NULL, &e);
        }
        /* reconcile: recorded, never submitted (the driver died in between); once the
         * sweep is stopping such a child is not started at all */
        for (size_t i = 0; i < d->n; i++) {
            if (d->ch[i].exists || d->ch[i].error)
                continue;
            if (stop_why) {
                char *why = xasprintf("not started: %s", stop_why);
                set_child_error(d, &d->ch[i], why);
                free(why);
            } else {
                submit_child(d, &d->ch[i]);
            }
        }
        if (stop_why) {
            load_children(d);
            for (size_t i = 0; i < d->n; i++)
                if (d->ch[i].exists && !child_done(&d->ch[i]) &&
                    d->ch[i].state != CTARGET_RUN_CANCEL_REQUESTED)
                    cancel_child(d, &d->ch[i], stop_why, "sweep");
            if (!count_active(d)) {
                load_children(d);
                finish(d, 1, stop_why);
                break;
            }
        } else {
            apply_policy(d);
            size_t active = count_active(d);
            while ((long long)d->n < d->cfg.max_total && (long long)active < d->cfg.max_concurrent) {
                /* TPE learns from finished children: it waits for the startup ones */
                if (d->cfg.sampling == SW_BAYESIAN && d->n >= SW_TPE_STARTUP && active &&
                    d->n - active < SW_TPE_STARTUP)
                    break;
                new_child(d, (long long)d->n);
                if (load_children(d))
                    break;
                active = count_active(d);
            }
            if ((long long)d->n >= d->cfg.max_total && !count_active(d)) {
                finish(d, 0, NULL);
                break;
            }
        }
        if (now - last_tend >= 1000) {
            tend_monitors(d);
            last_tend = now;
        }
        nap(d->poll_ms);
    }
    free(stop_why);
}

void sw_drive(ctarget_ws *ws, const char *id)
{
    drv d = {.ws = ws, .id = id};
    d.poll_ms = env_long("CTARGET_POLL_INTERVAL_MS", 500);
    d.minute_ms = env_long("CTARGET_SWEEP_TEST_MINUTE_MS", 60000);
    d.row = run_row(ws->st, id);
    if (!d.row)
        return;
    ctarget_error err;
    ctarget_error_init(&err);
    json_t *doc = json_object_get(json_object_get(d.row, "config"), "sweep");
    if (sw_config_from_doc(doc, &d.cfg, &err)) {
        rs_change ch = {.detail = err.message};
        rs_transition(ws->st, id, CTARGET_RUN_FAILED, &ch, NULL, &err);
        run_set_text(ws->st, id, "phase", "done", &err);
        json_decref(d.row);
        return;
    }
    ctarget_run_state st = run_row_state(d.row);
    note(&d, "driver started for sweep %s (%s)", id, rs_name(st));
    if (st == CTARGET_RUN_NOT_STARTED) {
        rs_change ch = {.detail = "sweep driver started"};
        rs_transition(ws->st, id, CTARGET_RUN_RUNNING, &ch, NULL, &err);
        run_set_text(ws->st, id, "phase", "submitted", &err);
    }
    if (!rs_terminal(run_row_state(d.row)) || st == CTARGET_RUN_NOT_STARTED)
        loop(&d);
    else
        run_set_text(ws->st, id, "phase", "done", &err);
    children_free(&d);
    sw_config_free(&d.cfg);
    json_decref(d.row);
}
