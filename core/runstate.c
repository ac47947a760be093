/* The run state machine (TARGETS.md "Run states"): Azure ML's names, one table of allowed
 * transitions, and the single function that writes a run's status. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "run.h"
#include "util.h"

static const char *const names[] = {
    "NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "Finalizing",
    "Completed", "Failed", "CancelRequested", "Canceled", "NotResponding", "Finished",
};
#define N_STATES ((int)CT_ARRAY_LEN(names))

const char *rs_name(ctarget_run_state s)
{
    return (unsigned)s < CT_ARRAY_LEN(names) ? names[s] : "Unknown";
}

int rs_parse(const char *name)
{
    for (int i = 0; name && i < N_STATES; i++)
        if (!str_casecmp_ascii(name, names[i]))
            return i;
    return -1;
}

int rs_terminal(ctarget_run_state s)
{
    return s == CTARGET_RUN_COMPLETED || s == CTARGET_RUN_FAILED ||
           s == CTARGET_RUN_CANCELED || s == CTARGET_RUN_FINISHED;
}

/* The active states in their order.  A run moves forward through them, possibly skipping
 * some (a backend that never queues goes Preparing -> Running), never back: only
 * NotResponding may return to an earlier state, when the backend answers again. */
static int active_rank(ctarget_run_state s)
{
    switch (s) {
    case CTARGET_RUN_NOT_STARTED: return 0;
    case CTARGET_RUN_STARTING: return 1;
    case CTARGET_RUN_PROVISIONING: return 2;
    case CTARGET_RUN_PREPARING: return 3;
    case CTARGET_RUN_QUEUED: return 4;
    case CTARGET_RUN_RUNNING: return 5;
    case CTARGET_RUN_FINALIZING: return 6;
    default: return -1;
    }
}

int rs_allowed(ctarget_run_state from, ctarget_run_state to)
{
    if ((unsigned)from >= (unsigned)N_STATES || (unsigned)to >= (unsigned)N_STATES)
        return 0;
    if (from == to || rs_terminal(from) || to == CTARGET_RUN_NOT_STARTED)
        return 0;
    int rf = active_rank(from), rt = active_rank(to);
    if (from == CTARGET_RUN_NOT_RESPONDING)
        return to != CTARGET_RUN_NOT_STARTED; /* back to life, or an ending */
    if (from == CTARGET_RUN_CANCEL_REQUESTED)
        /* cancellation ends the run; a run that finished first keeps its real ending */
        return rs_terminal(to);
    /* from is an active state here */
    if (rt >= 0)
        return rt > rf;
    switch (to) {
    case CTARGET_RUN_COMPLETED:
    case CTARGET_RUN_FINISHED:
        /* polls sample the backend: a short run may end between two of them, so ending
         * from any state it was already submitted in is legitimate */
        return rf >= 1;
    case CTARGET_RUN_FAILED:
    case CTARGET_RUN_CANCEL_REQUESTED:
        return 1;
    case CTARGET_RUN_CANCELED:
        /* only before anything reached the backend: otherwise through CancelRequested */
        return from == CTARGET_RUN_NOT_STARTED;
    case CTARGET_RUN_NOT_RESPONDING:
        return rf >= 1;
    default:
        return 0;
    }
}

static ctarget_status read_status(store *st, const char *id, int *cur, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT status FROM runs WHERE id=?", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, id);
    *cur = -2;
    if (sqlite3_step(s) == SQLITE_ROW)
        *cur = rs_parse((const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    if (*cur == -2) {
        ct_err(err, CTARGET_E_NOT_FOUND, "no run %s", id);
        return CTARGET_E_NOT_FOUND;
    }
    if (*cur < 0) {
        ct_err(err, CTARGET_E_INTERNAL, "run %s has an unknown status in the store", id);
        return CTARGET_E_INTERNAL;
    }
    return CTARGET_OK;
}

static ctarget_status write_row(store *st, const char *id, ctarget_run_state to,
                                const rs_change *ch, int64_t now, ctarget_error *err)
{
    int ending = rs_terminal(to);
    int failing = to == CTARGET_RUN_FAILED || to == CTARGET_RUN_CANCELED;
    sqlite3_stmt *s = store_prepare(
        st,
        "UPDATE runs SET status=?1, updated_at=?2,"
        " native_state=COALESCE(?3, native_state),"
        " started_at=CASE WHEN ?1='Running' AND started_at IS NULL THEN ?2 ELSE started_at END,"
        " ended_at=CASE WHEN ?4 THEN ?2 ELSE ended_at END,"
        " exit_code=CASE WHEN ?5 THEN ?6 ELSE exit_code END,"
        " term_signal=CASE WHEN ?7 THEN ?7 ELSE term_signal END,"
        " reason=CASE WHEN ?8 AND ?9 IS NOT NULL THEN ?9 ELSE reason END,"
        " cancel_cause=COALESCE(?10, cancel_cause),"
        " not_responding_since=CASE WHEN ?1='NotResponding' THEN ?2 ELSE NULL END"
        " WHERE id=?11",
        err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, rs_name(to));
    sqlite3_bind_int64(s, 2, now);
    store_bind_text(s, 3, ch ? ch->native_state : NULL);
    sqlite3_bind_int(s, 4, ending);
    sqlite3_bind_int(s, 5, ch && ch->has_exit_code);
    sqlite3_bind_int(s, 6, ch ? ch->exit_code : 0);
    sqlite3_bind_int(s, 7, ch ? ch->term_signal : 0);
    sqlite3_bind_int(s, 8, failing);
    store_bind_text(s, 9, ch && ch->detail && *ch->detail ? ch->detail : NULL);
    store_bind_text(s, 10, ch ? ch->cancel_cause : NULL);
    store_bind_text(s, 11, id);
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = store_fail(st, err, "cannot update the run");
    sqlite3_finalize(s);
    return rc;
}

static ctarget_status write_event(store *st, const char *id, int from, ctarget_run_state to,
                                  const rs_change *ch, int64_t now, ctarget_error *err)
{
    sqlite3_stmt *s = store_prepare(st, "INSERT INTO run_events(run, from_status, to_status,"
                                        " native_state, time, detail) VALUES (?,?,?,"
                                        " COALESCE(?, (SELECT native_state FROM runs WHERE id=?)),"
                                        " ?, ?)", err);
    if (!s)
        return err->code;
    store_bind_text(s, 1, id);
    store_bind_text(s, 2, from >= 0 ? rs_name((ctarget_run_state)from) : NULL);
    store_bind_text(s, 3, rs_name(to));
    store_bind_text(s, 4, ch ? ch->native_state : NULL);
    store_bind_text(s, 5, id);
    sqlite3_bind_int64(s, 6, now);
    store_bind_text(s, 7, ch && ch->detail ? ch->detail : "");
    ctarget_status rc = CTARGET_OK;
    if (sqlite3_step(s) != SQLITE_DONE)
        rc = store_fail(st, err, "cannot record the run event");
    sqlite3_finalize(s);
    return rc;
}

ctarget_status rs_transition(store *st, const char *id, ctarget_run_state to,
                             const rs_change *ch, ctarget_run_state *from, ctarget_error *err)
{
    ctarget_status rc = store_begin(st, err);
    if (rc)
        return rc;
    int cur = -1;
    if ((rc = read_status(st, id, &cur, err)))
        goto fail;
    if (from)
        *from = (ctarget_run_state)cur;
    if (!rs_allowed((ctarget_run_state)cur, to)) {
        ct_err(err, CTARGET_E_STATE, "run %s cannot go from %s to %s%s", id,
               rs_name((ctarget_run_state)cur), rs_name(to),
               rs_terminal((ctarget_run_state)cur) ? ": it has already ended" : "");
        rc = CTARGET_E_STATE;
        goto fail;
    }
    int64_t now = time_now_ms();
    if ((rc = write_row(st, id, to, ch, now, err)) ||
        (rc = write_event(st, id, cur, to, ch, now, err)))
        goto fail;
    return store_commit(st, err);
fail:
    store_rollback(st);
    return rc;
}
