/* The monitor's lifecycle loop: prepare -> submit (or reattach) -> poll/logs/metrics until the
 * backend reports an ending -> outputs -> the terminal state -> cleanup (plugin.h). */
#include "config.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host.h"
#include "loader.h"
#include "run_mon.h"
#include "util.h"
#include "ws.h"

typedef ctarget_status (*run_op)(void *, ctarget_call *, ctarget_target *,
                                 const ctarget_run_info *, ctarget_error *);

/* How the run ends, decided before outputs are fetched and recorded after. */
typedef struct ending {
    ctarget_run_state to;
    char reason[700];
    char native[64];
    int has_exit_code, exit_code, term_signal;
} ending;

static ctarget_status call_op(mon *m, const char *what, run_op op, ctarget_error *err)
{
    if (!op)
        return CTARGET_OK;
    plugin *pl = m->rt->pl;
    ctarget_call call;
    call_init(&call, m->id);
    ctarget_error pe;
    ctarget_error_init(&pe);
    plugin_lock(pl);
    ctarget_status rc = op(pl->ctx, &call, m->rt->t, &m->ri, &pe);
    plugin_unlock(pl);
    mon_save_handle(m);
    if (rc) {
        plugin_failure(pl->name, what, rc, &pe, err);
        mon_note(m, "%s failed: %s", what, err->message);
    }
    return rc;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void set_ending(ending *e, ctarget_run_state to, const char *fmt, ...)
    CTARGET_PRINTF(3, 4);
static void set_ending(ending *e, ctarget_run_state to, const char *fmt, ...)
{
    memset(e, 0, sizeof *e);
    e->to = to;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->reason, sizeof e->reason, fmt, ap);
    va_end(ap);
}

static const char *sig_name(int sig)
{
    static const struct { int n; const char *name; } t[] = {
        {SIGHUP, "SIGHUP"}, {SIGINT, "SIGINT"}, {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
        {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"}, {SIGFPE, "SIGFPE"}, {SIGKILL, "SIGKILL"},
        {SIGSEGV, "SIGSEGV"}, {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"},
        {SIGUSR1, "SIGUSR1"}, {SIGUSR2, "SIGUSR2"}, {SIGXCPU, "SIGXCPU"},
    };
    for (size_t i = 0; i < CT_ARRAY_LEN(t); i++)
        if (t[i].n == sig)
            return t[i].name;
    return "?";
}

/* ---- the end: outputs, terminal state, cleanup ------------------------------------------- */

/* reached: 0 nothing reached the target, 1 prepared, 2 submitted */
static void finish(mon *m, ending *e, int reached)
{
    int ran = reached == 2;
    ctarget_error err;
    ctarget_error_init(&err);
    m->final = 1;
    if (ran) {
        mon_read_logs(m);
        mon_read_metrics(m);
        /* a script that ended between two polls still ran: the record must say so, with
         * started_at, rather than jump from Preparing or Queued to the end */
        if ((e->has_exit_code || e->term_signal) && m->state != CTARGET_RUN_RUNNING &&
            m->state != CTARGET_RUN_CANCEL_REQUESTED &&
            m->state != CTARGET_RUN_NOT_RESPONDING &&
            rs_allowed(m->state, CTARGET_RUN_RUNNING)) {
            rs_change run = {.detail = "started; ended before the next poll"};
            mon_move(m, CTARGET_RUN_RUNNING, &run);
        }
        if ((e->to == CTARGET_RUN_COMPLETED || e->to == CTARGET_RUN_FAILED ||
             e->to == CTARGET_RUN_FINISHED) && m->state != CTARGET_RUN_NOT_RESPONDING &&
            rs_allowed(m->state, CTARGET_RUN_FINALIZING)) {
            rs_change fin = {.native_state = e->native[0] ? e->native : NULL,
                             .detail = "collecting outputs"};
            mon_move(m, CTARGET_RUN_FINALIZING, &fin);
        }
        plugin *pl = m->rt->pl;
        if (pl->run.fetch_outputs) {
            ctarget_call call;
            call_init(&call, m->id);
            ctarget_error pe;
            ctarget_error_init(&pe);
            plugin_lock(pl);
            ctarget_status rc = pl->run.fetch_outputs(pl->ctx, &call, m->rt->t, &m->ri, m->dir,
                                                      &pe);
            plugin_unlock(pl);
            if (rc)
                mon_note(m, "warning: outputs not collected: %s",
                         pe.message[0] ? pe.message : ctarget_strerror(rc));
        }
    }
    rs_change ch = {.native_state = e->native[0] ? e->native : NULL,
                    .detail = e->reason[0] ? e->reason : NULL,
                    .has_exit_code = e->has_exit_code, .exit_code = e->exit_code,
                    .term_signal = e->term_signal};
    if (!rs_terminal(m->state))
        mon_move(m, e->to, &ch);
    if (reached)
        call_op(m, "cleanup", m->rt->pl->run.cleanup, &err);
    mon_set_phase(m, "done");
}

/* ---- starting ---------------------------------------------------------------------------- */

static void move_if(mon *m, ctarget_run_state to, const char *detail)
{
    if (rs_allowed(m->state, to)) {
        rs_change ch = {.detail = detail};
        mon_move(m, to, &ch);
    }
}

/* 2: submitted; else ended before submission (e filled) with 0 (nothing done) or 1
 * (prepare was called: cleanup is due) */
static int start_run(mon *m, ending *e)
{
    ctarget_error err;
    ctarget_error_init(&err);
    if (m->state == CTARGET_RUN_CANCEL_REQUESTED) {
        set_ending(e, CTARGET_RUN_CANCELED, "canceled before it started");
        return 0;
    }
    move_if(m, CTARGET_RUN_STARTING, "monitor started");
    move_if(m, CTARGET_RUN_PREPARING, "shipping the snapshot, building the environment");
    if (call_op(m, "prepare", m->rt->pl->run.prepare, &err)) {
        /* reaching the target is not building an environment: say which one failed */
        if (err.code == CTARGET_E_UNREACHABLE || err.code == CTARGET_E_TIMEOUT ||
            err.code == CTARGET_E_AUTH || err.code == CTARGET_E_HOSTKEY)
            set_ending(e, CTARGET_RUN_FAILED, "could not prepare the run on the target: %s",
                       err.message);
        else
            set_ending(e, CTARGET_RUN_FAILED, "environment build failed: %s", err.message);
        return 1;
    }
    mon_refresh(m);
    if (m->state == CTARGET_RUN_CANCEL_REQUESTED) {
        set_ending(e, CTARGET_RUN_CANCELED, "canceled before it was submitted");
        return 1;
    }
    if (call_op(m, "submit", m->rt->pl->run.submit, &err)) {
        set_ending(e, CTARGET_RUN_FAILED, "the target refused the run: %s", err.message);
        return 1;
    }
    mon_set_phase(m, "submitted");
    return 2;
}

/* ---- the poll loop ------------------------------------------------------------------------ */

static long nr_limit_s(void)
{
    const char *v = getenv("CTARGET_NOT_RESPONDING_SECONDS");
    long long x;
    /* long enough for a backend's heartbeat to come back after a network blip; a local
     * process that vanished never comes back, and tests set a few seconds */
    return v && parse_ll(v, &x) == 0 && x >= 0 ? (long)x : 300;
}

static void want_cancel(mon *m, ending *e, int *done)
{
    const char *cause = json_string_value(json_object_get(m->row, "cancel_cause"));
    int wanted = m->state == CTARGET_RUN_CANCEL_REQUESTED || (cause && !strcmp(cause, "timeout"));
    int64_t now = time_now_ms();
    long long T = m->ri.timeout_seconds;
    json_t *started = json_object_get(m->row, "started_at");
    if (!wanted && T > 0 && json_is_integer(started) &&
        now - json_integer_value(started) >= T * 1000) {
        ctarget_error err;
        ctarget_error_init(&err);
        run_set_text(m->ws->st, m->id, "cancel_cause", "timeout", &err);
        json_object_set_new(m->row, "cancel_cause", json_string("timeout"));
        mon_note(m, "max_run_duration_seconds (%lld) reached: canceling", T);
        wanted = 1;
    }
    if (!wanted)
        return;
    if (!m->rt->pl->run.cancel) {
        if (cause && !strcmp(cause, "timeout"))
            set_ending(e, CTARGET_RUN_FAILED, "timeout after %lld s (the target cannot cancel "
                       "runs: it may still be running there)", T);
        else
            set_ending(e, CTARGET_RUN_CANCELED, "canceled (the target cannot cancel runs: it "
                       "may still be running there)");
        *done = 1;
        return;
    }
    /* cancel() is idempotent: ask again now and then in case the first request was lost */
    if (m->cancel_sent_ms && now - m->cancel_sent_ms < 30000)
        return;
    ctarget_error err;
    ctarget_error_init(&err);
    call_op(m, "cancel", m->rt->pl->run.cancel, &err);
    m->cancel_sent_ms = now;
}

/* Why the run was asked to stop, when it was not the user (a sweep's termination policy,
 * or its sweep ending): the CancelRequested event's detail; NULL otherwise (owned). */
static char *cancel_detail(mon *m)
{
    const char *cause = json_string_value(json_object_get(m->row, "cancel_cause"));
    if (!cause || !strcmp(cause, "user") || !strcmp(cause, "timeout"))
        return NULL;
    sqlite3_stmt *s = store_prepare(m->ws->st, "SELECT detail FROM run_events WHERE run=? AND"
                                               " to_status='CancelRequested' ORDER BY seq DESC"
                                               " LIMIT 1", NULL);
    char *d = NULL;
    if (s) {
        store_bind_text(s, 1, m->id);
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
            d = store_col_text(s, 0);
        sqlite3_finalize(s);
    }
    if (d && !*d) {
        free(d);
        d = NULL;
    }
    return d;
}

static void poll_ending(mon *m, const ctarget_run_poll *p, ending *e)
{
    const char *cause = json_string_value(json_object_get(m->row, "cancel_cause"));
    if (p->state == CTARGET_RUN_COMPLETED || p->state == CTARGET_RUN_FINISHED) {
        set_ending(e, p->state, "%s", "");
    } else if (p->state == CTARGET_RUN_CANCELED) {
        if (cause && !strcmp(cause, "timeout"))
            set_ending(e, CTARGET_RUN_FAILED, "timeout after %lld s", m->ri.timeout_seconds);
        else if (m->state == CTARGET_RUN_CANCEL_REQUESTED) {
            char *why = cancel_detail(m);
            set_ending(e, CTARGET_RUN_CANCELED, "%s", why ? why : "canceled");
            free(why);
        }
        else
            set_ending(e, CTARGET_RUN_FAILED, "canceled on the target, not through ctarget%s%s",
                       p->reason[0] ? ": " : "", p->reason);
    } else if (p->reason[0]) {
        set_ending(e, CTARGET_RUN_FAILED, "%s", p->reason);
    } else if (p->term_signal) {
        set_ending(e, CTARGET_RUN_FAILED, "killed by signal %d (%s)", p->term_signal,
                   sig_name(p->term_signal));
    } else if (p->has_exit_code) {
        set_ending(e, CTARGET_RUN_FAILED, "exit code %d", p->exit_code);
    } else {
        set_ending(e, CTARGET_RUN_FAILED, "failed on the target (no exit status reported)");
    }
    e->has_exit_code = p->has_exit_code;
    e->exit_code = p->exit_code;
    e->term_signal = p->term_signal;
    snprintf(e->native, sizeof e->native, "%s", p->native_state);
}

/* Apply one poll result; 1 when the run has ended (e filled). */
static int apply_poll(mon *m, const ctarget_run_poll *p, ending *e)
{
    ctarget_run_state ps = p->state;
    json_int_t attempt = json_integer_value(json_object_get(m->row, "attempt"));
    if (p->attempt > attempt && p->attempt < 1000000) {
        /* the backend restarted the run itself (a requeue after preemption) */
        ctarget_error aerr;
        ctarget_error_init(&aerr);
        if (run_set_int(m->ws->st, m->id, "attempt", p->attempt, &aerr) == CTARGET_OK) {
            json_object_set_new(m->row, "attempt", json_integer(p->attempt));
            m->ri.attempt = (int)p->attempt; /* the core's own retry counts on from here */
        }
    }
    if (rs_terminal(ps)) {
        poll_ending(m, p, e);
        return 1;
    }
    const char *native = p->native_state[0] ? p->native_state : NULL;
    if (ps == CTARGET_RUN_NOT_RESPONDING) {
        if (m->state != CTARGET_RUN_NOT_RESPONDING) {
            rs_change ch = {.native_state = native,
                            .detail = p->reason[0] ? p->reason : "the target lost the run"};
            mon_move(m, CTARGET_RUN_NOT_RESPONDING, &ch);
            return 0;
        }
        long limit = nr_limit_s();
        json_t *since = json_object_get(m->row, "not_responding_since");
        if (json_is_integer(since) && time_now_ms() - json_integer_value(since) >= limit * 1000) {
            set_ending(e, CTARGET_RUN_FAILED, "the run's process vanished without an exit "
                       "status (not responding for %ld s)%s%s", limit, p->reason[0] ? ": " : "",
                       p->reason);
            snprintf(e->native, sizeof e->native, "%s", p->native_state);
            return 1;
        }
        return 0;
    }
    if (ps != m->state && m->state != CTARGET_RUN_CANCEL_REQUESTED && rs_allowed(m->state, ps)) {
        rs_change ch = {.native_state = native};
        mon_move(m, ps, &ch);
    } else if (native &&
               strcmp(native, json_string_value(json_object_get(m->row, "native_state")))) {
        ctarget_error err;
        ctarget_error_init(&err);
        run_set_text(m->ws->st, m->id, "native_state", native, &err);
        json_object_set_new(m->row, "native_state", json_string(native));
    }
    return 0;
}

static int do_poll(mon *m, ctarget_run_poll *p, ctarget_error *err)
{
    plugin *pl = m->rt->pl;
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->state = m->state;
    ctarget_call call;
    call_init(&call, m->id);
    ctarget_error pe;
    ctarget_error_init(&pe);
    plugin_lock(pl);
    /* the first poll after submit (or reattach) returns at once: the run's state is
     * recorded when the run starts, not when it first changes (a short script would show
     * Running only as it ends) */
    long wait = m->polled ? m->poll_ms : 0;
    m->polled = 1;
    ctarget_status rc = pl->run.poll(pl->ctx, &call, m->rt->t, &m->ri, wait, p, &pe);
    plugin_unlock(pl);
    mon_save_handle(m);
    if (rc)
        plugin_failure(pl->name, "poll", rc, &pe, err);
    p->native_state[sizeof p->native_state - 1] = '\0';
    p->reason[sizeof p->reason - 1] = '\0';
    return rc ? -1 : 0;
}

/* The retry policy for runs lost through no fault of their own (poll's `restartable`: a
 * preempted low-priority node): up to CTARGET_MAX_ATTEMPTS attempts in all (default 3). */
static long max_attempts(void)
{
    const char *v = getenv("CTARGET_MAX_ATTEMPTS");
    long long x;
    return v && parse_ll(v, &x) == 0 && x >= 1 && x <= 100 ? (long)x : 3;
}

/* 1 when the run was started again as its next attempt (the poll loop carries on) */
static int restart(mon *m, const ctarget_run_poll *p, ending *e)
{
    if (!p->restartable || p->state != CTARGET_RUN_FAILED || !m->rt->pl->run.submit ||
        m->state == CTARGET_RUN_CANCEL_REQUESTED)
        return 0;
    int now = m->ri.attempt > 0 ? m->ri.attempt : 1;
    long max = max_attempts();
    if (now >= max) {
        size_t n = strlen(e->reason);
        snprintf(e->reason + n, sizeof e->reason - n, " (attempt %d of %ld: not restarted)",
                 now, max);
        return 0;
    }
    ctarget_error err;
    ctarget_error_init(&err);
    m->ri.attempt = now + 1;
    run_set_int(m->ws->st, m->id, "attempt", m->ri.attempt, &err);
    json_object_set_new(m->row, "attempt", json_integer(m->ri.attempt));
    mon_note(m, "attempt %d lost (%s): starting attempt %d of at most %ld", now,
             p->reason[0] ? p->reason : "restartable failure", m->ri.attempt, max);
    if (call_op(m, "submit", m->rt->pl->run.submit, &err)) {
        set_ending(e, CTARGET_RUN_FAILED, "attempt %d was lost (%s) and attempt %d was "
                   "refused: %s", now, p->reason, m->ri.attempt, err.message);
        return 0;
    }
    if (p->native_state[0]) {
        run_set_text(m->ws->st, m->id, "native_state", p->native_state, &err);
        json_object_set_new(m->row, "native_state", json_string(p->native_state));
    }
    m->polled = 0;
    return 1;
}

/* Until an ending.  Not bounded by a count: a run may legitimately last for days; it is
 * bounded by the backend's ending, the timeout and the NotResponding limit. */
static void poll_loop(mon *m, ending *e)
{
    int failures = 0;
    for (;;) {
        if (mon_refresh(m) != 0) {
            set_ending(e, CTARGET_RUN_FAILED, "the run record disappeared");
            return;
        }
        int done = 0;
        want_cancel(m, e, &done);
        if (done)
            return;
        int64_t t0 = time_mono_ns();
        ctarget_run_state before = m->state;
        ctarget_run_poll p;
        ctarget_error err;
        ctarget_error_init(&err);
        if (do_poll(m, &p, &err) != 0) {
            /* a backend that keeps failing is treated as not responding */
            if (++failures >= 10 && !err.transient) {
                p.state = CTARGET_RUN_NOT_RESPONDING;
                snprintf(p.reason, sizeof p.reason, "poll failed: %.400s", err.message);
            } else {
                mon_note(m, "poll failed (%d): %s", failures, err.message);
                sleep_ms(m->poll_ms * (failures < 10 ? failures : 10));
                continue;
            }
        } else {
            failures = 0;
        }
        mon_read_logs(m);
        mon_read_metrics(m);
        if (apply_poll(m, &p, e) && !restart(m, &p, e))
            return;
        long spent = (long)((time_mono_ns() - t0) / 1000000);
        if (m->state == before && spent < m->poll_ms)
            sleep_ms(m->poll_ms - spent);
    }
}

void mon_drive(mon *m)
{
    ending e;
    const char *phase = json_string_value(json_object_get(m->row, "phase"));
    ctarget_error err;
    ctarget_error_init(&err);
    if (rs_terminal(m->state)) {
        /* a previous monitor recorded the ending and died before cleaning up */
        if (strcmp(phase, "done") && strcmp(phase, "new"))
            call_op(m, "cleanup", m->rt->pl->run.cleanup, &err);
        mon_set_phase(m, "done");
        return;
    }
    if (!strcmp(phase, "new")) {
        int reached = start_run(m, &e);
        if (reached != 2) {
            finish(m, &e, reached);
            return;
        }
    } else if (call_op(m, "reattach", m->rt->pl->run.reattach, &err)) {
        if (!err.transient) {
            set_ending(&e, CTARGET_RUN_FAILED, "cannot find the run on the target again: %s",
                       err.message);
            finish(m, &e, 0);
            return;
        }
    }
    poll_loop(m, &e);
    finish(m, &e, 2);
}
