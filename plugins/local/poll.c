/* poll and cancel of local runs.  The state is read from the files the wrapper and cancel()
 * leave in the work directory (see spawn.c), never kept in memory, so any monitor process
 * reaches the same answer:
 *     exit_status present            -> COMPLETED / FAILED, or CANCELED if cancel came first
 *     launch_error present           -> FAILED (the wrapper could not be started)
 *     no pid file                    -> QUEUED (waiting for a slot; poll tries to admit it),
 *                                       or CANCELED when cancelled while waiting
 *     wrapper alive                  -> RUNNING (CANCEL_REQUESTED while a cancel is under way)
 *     wrapper gone, no exit status   -> NOT_RESPONDING (or CANCELED after a cancel) */
#include "config.h"

#include "local.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_GRACE_S 10

static void set_state(ctarget_run_poll *o, ctarget_run_state s, const char *native)
{
    o->state = s;
    snprintf(o->native_state, sizeof o->native_state, "%s", native);
}

static long long cancel_time(const lrun_paths *p)
{
    char *s = lp_read_file(p->cancel, NULL);
    long long ms = s ? strtoll(s, NULL, 10) : -1;
    free(s);
    return ms;
}

/* Does the process group still belong to this run?  While any member lives, the kernel
 * does not hand its number out again; if a process with that pid exists but started at
 * another time, the group is gone and the number reused: signalling it would hit a
 * stranger. */
static int group_is_ours(const lrun_pids *pd)
{
    unsigned long long start;
    return lp_proc_stat((pid_t)pd->pid, &start, NULL) != 0 || start == pd->pid_start;
}

static void ended(const lrun_status *st, long long cancel_ms, ctarget_run_poll *o)
{
    int ws = st->exited ? (st->code & 0xff) << 8 : st->code & 0x7f;
    char how[128];
    lp_describe_status(ws, how, sizeof how);
    o->has_exit_code = st->exited;
    o->exit_code = st->exited ? st->code : 0;
    o->term_signal = st->exited ? 0 : st->code;
    if (cancel_ms >= 0 && st->end_ms >= cancel_ms) {
        set_state(o, CTARGET_RUN_CANCELED, "canceled");
        if (st->exited)
            snprintf(o->reason, sizeof o->reason, "canceled (the script then ended with %s)",
                     how);
        else
            snprintf(o->reason, sizeof o->reason, "canceled (the script was %s)", how);
    } else if (st->exited && st->code == 0) {
        set_state(o, CTARGET_RUN_COMPLETED, "exited");
    } else {
        set_state(o, CTARGET_RUN_FAILED, st->exited ? "exited" : "signaled");
        snprintf(o->reason, sizeof o->reason, "%s", how);
    }
}

static void vanished(const lrun_pids *pd, long long cancel_ms, ctarget_run_poll *o)
{
    if (cancel_ms >= 0 && (!group_is_ours(pd) || lp_pgrp_empty((pid_t)pd->pid))) {
        set_state(o, CTARGET_RUN_CANCELED, "canceled");
        snprintf(o->reason, sizeof o->reason, "canceled; no exit status was recorded");
        return;
    }
    unsigned long long start;
    int reused = lp_proc_stat((pid_t)pd->wrapper_pid, &start, NULL) == 0 &&
                 start != pd->wrapper_start;
    int script = lp_pid_alive((pid_t)pd->pid, pd->pid_start);
    set_state(o, CTARGET_RUN_NOT_RESPONDING, "vanished");
    snprintf(o->reason, sizeof o->reason,
             "the run's wrapper process %ld is gone%s and recorded no exit status (killed, or "
             "the machine restarted)%s", pd->wrapper_pid,
             reused ? " (its pid now belongs to another process)" : "",
             script ? "; the script still runs without it" : "");
}

/* Not started: waiting, being started by someone, cancelled, or lost. */
static ctarget_status not_started(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, const lrun_paths *p,
                                  long long cancel_ms, ctarget_run_poll *o, int *retry,
                                  ctarget_error *err)
{
    *retry = 0;
    if (cancel_ms >= 0) {
        set_state(o, CTARGET_RUN_CANCELED, "canceled");
        snprintf(o->reason, sizeof o->reason, "canceled before it started");
        return CTARGET_OK;
    }
    if (lqueue_waiting(h, t, run->id) == 1) {
        ctarget_status rc = lqueue_admit(h, c, t, err);
        if (rc != CTARGET_OK)
            return rc;
        *retry = lp_exists(p->pidf) || lp_exists(p->launch_err);
        set_state(o, CTARGET_RUN_QUEUED, "queued");
        return CTARGET_OK;
    }
    if (lqueue_slot_held(h, t, run->id)) {
        set_state(o, CTARGET_RUN_QUEUED, "starting");
        return CTARGET_OK;
    }
    if (!lp_exists(p->spec)) {
        h->error_set(err, CTARGET_E_STATE, 0, 0, "run %s was not submitted to this target",
                     run->id);
        return CTARGET_E_STATE;
    }
    set_state(o, CTARGET_RUN_NOT_RESPONDING, "lost");
    snprintf(o->reason, sizeof o->reason, "the run left the queue but its wrapper process "
             "never started (the process starting it died)");
    return CTARGET_OK;
}

static ctarget_status compute(const ctarget_host *h, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, const lrun_paths *p,
                              ctarget_run_poll *o, ctarget_error *err)
{
    /* a few rounds: the run may start, or its wrapper record its end, while we look */
    for (int round = 0; round < 3; round++) {
        long long cancel_ms = cancel_time(p);
        lrun_status st;
        if (lspawn_read_status(p, &st) == 0) {
            ended(&st, cancel_ms, o);
            return CTARGET_OK;
        }
        char *why = lp_read_file(p->launch_err, NULL);
        if (why) {
            set_state(o, CTARGET_RUN_FAILED, "launch-failed");
            snprintf(o->reason, sizeof o->reason, "%s", why);
            free(why);
            return CTARGET_OK;
        }
        lrun_pids pd;
        if (lspawn_read_pids(p, &pd) != 0) {
            int retry;
            ctarget_status rc = not_started(h, c, t, run, p, cancel_ms, o, &retry, err);
            if (rc != CTARGET_OK || !retry)
                return rc;
            continue;
        }
        lrun_handle_pids(h, run, &pd);
        if (lp_pid_alive((pid_t)pd.wrapper_pid, pd.wrapper_start)) {
            if (cancel_ms >= 0)
                set_state(o, CTARGET_RUN_CANCEL_REQUESTED, "stopping");
            else
                set_state(o, CTARGET_RUN_RUNNING, "running");
            return CTARGET_OK;
        }
        if (round == 2)
            vanished(&pd, cancel_ms, o);
    }
    return CTARGET_OK;
}

static int is_final(ctarget_run_state s)
{
    return s == CTARGET_RUN_COMPLETED || s == CTARGET_RUN_FAILED || s == CTARGET_RUN_CANCELED ||
           s == CTARGET_RUN_NOT_RESPONDING;
}

static void clear_poll(ctarget_run_poll *o)
{
    size_t sz = o->struct_size;
    memset(o, 0, sizeof *o);
    o->struct_size = sz;
}

ctarget_status local_poll(void *ctx, ctarget_call *c, ctarget_target *t,
                          const ctarget_run_info *run, long wait_ms, ctarget_run_poll *out,
                          ctarget_error *err)
{
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    clear_poll(out);
    rc = compute(h, c, t, run, &p, out, err);
    ctarget_run_state first = out->state;
    int64_t begin = h->monotonic_ns();
    int64_t deadline = begin + (int64_t)(wait_ms > 0 ? wait_ms : 0) * 1000000;
    while (rc == CTARGET_OK && !is_final(out->state) && out->state == first) {
        int64_t now = h->monotonic_ns(), left_ms = (deadline - now) / 1000000;
        /* the end of a run is noticed quickly (the run-overhead budget is 30 ms): 2 ms
         * looks for the first quarter second, when short scripts end, then 10 ms; a look
         * is a handful of failed open()s and one /proc read */
        long step = now - begin < 250000000 ? 2 : 10;
        if (left_ms <= 0 || h->sleep_ms(c, left_ms < step ? (long)left_ms : step) != CTARGET_OK)
            break;
        clear_poll(out);
        rc = compute(h, c, t, run, &p, out, err);
    }
    lrun_paths_free(&p);
    return rc;
}

/* ---- cancel ------------------------------------------------------------------------------- */

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* A plain sleep, not host->sleep_ms: cancel must finish even when the user's Ctrl-C has
 * marked every call cancelled. */
static int wait_group_gone(pid_t pgid, long ms)
{
    for (long waited = 0; waited < ms && !lp_pgrp_empty(pgid); waited += 20)
        nap_ms(20);
    return lp_pgrp_empty(pgid);
}

/* A container outlives a killed docker CLI: kill it by name too. */
static void container_kill(const ctarget_host *h, ctarget_call *c, const ctarget_run_info *run)
{
    const char *engine = run->handle ? h->obj_get0_str(run->handle, "engine") : NULL;
    const char *name = run->handle ? h->obj_get0_str(run->handle, "container") : NULL;
    if (!engine || !name)
        return;
    char *argv[] = {(char *)engine, "kill", (char *)name, NULL};
    ctarget_error e = {.struct_size = sizeof e};
    int st;
    lp_run_cmd(h, c, argv, -1, NULL, 30000, &st, &e);
}

static ctarget_status signal_run(const ctarget_host *h, ctarget_call *c,
                                 const ctarget_run_info *run, const lrun_paths *p,
                                 const lrun_pids *pd, ctarget_error *err)
{
    pid_t pg = (pid_t)pd->pid;
    if (!group_is_ours(pd))
        return CTARGET_OK;
    long long grace = run->cancel_grace_seconds > 0 ? run->cancel_grace_seconds
                                                    : DEFAULT_GRACE_S;
    kill(-pg, SIGTERM);
    if (!wait_group_gone(pg, (long)grace * 1000)) {
        container_kill(h, c, run);
        kill(-pg, SIGKILL);
        if (!wait_group_gone(pg, 10000)) {
            h->error_set(err, CTARGET_E_FAILED, 0, 0, "processes of run %s (process group "
                         "%ld) are still there after SIGKILL", run->id, (long)pg);
            return CTARGET_E_FAILED;
        }
    }
    /* let the wrapper record the ending, so the next poll can say how it ended */
    for (int i = 0; i < 150 && !lp_exists(p->status) &&
                    lp_pid_alive((pid_t)pd->wrapper_pid, pd->wrapper_start);
         i++)
        nap_ms(20);
    return CTARGET_OK;
}

ctarget_status local_cancel(void *ctx, ctarget_call *c, ctarget_target *t,
                            const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    if (lp_exists(p.status)) { /* finished first: it stays what it was */
        lrun_paths_free(&p);
        return CTARGET_OK;
    }
    if (!lp_exists(p.cancel)) {
        char ms[32];
        snprintf(ms, sizeof ms, "%lld\n", (long long)h->now_ms());
        if (lp_write_file_atomic(p.cancel, ms, strlen(ms)) != 0) {
            h->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s: %s", p.cancel,
                         strerror(errno));
            lrun_paths_free(&p);
            return CTARGET_E_IO;
        }
    }
    /* out of the queue, under the queue lock: no one starts it after this */
    int was_waiting = lqueue_withdraw(h, c, t, run->id, err);
    lrun_pids pd;
    int started = lspawn_read_pids(&p, &pd) == 0;
    /* someone may be starting it this very moment: its pid file follows shortly */
    for (int i = 0; !started && was_waiting != 1 && i < 100 && lqueue_slot_held(h, t, run->id);
         i++) {
        nap_ms(20);
        started = lspawn_read_pids(&p, &pd) == 0;
    }
    if (was_waiting < 0)
        rc = err->code;
    else if (started) {
        lrun_handle_pids(h, run, &pd);
        rc = signal_run(h, c, run, &p, &pd, err);
    }
    lrun_paths_free(&p);
    return rc;
}
