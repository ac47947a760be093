/* Run operations of the slurm target.
 *
 * A run is one batch job.  prepare lays out the run directory <remote_root>/runs/<id>/ (in
 * login-node mode remotevm's agent ships the snapshot incrementally into it and builds pip or
 * conda environments there; locally the core materializes the snapshot), submit hands the
 * generated script to `sbatch --parsable` with the job named ctarget-<run id>, and the job id
 * goes into run->handle.  A new monitor therefore needs nothing but the handle; a monitor that
 * died inside submit, before the id was saved, finds its job again by name (squeue), so a
 * repeated submit never starts a second job.
 *
 * States come from `scontrol show job` while the controller keeps the job (MinJobAge), then
 * from `sacct` when the cluster has accounting, and last from the exit status the batch script
 * itself recorded in the run directory.  Slurm's own word is kept as the native state; a
 * requeue (preemption with PreemptMode=REQUEUE, a node failure, `scontrol requeue`) shows as
 * Restarts in scontrol and is counted as a new attempt. */
#include "config.h"

#include "slurm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *run_dir(ctarget_target *t, const ctarget_run_info *run, char *buf,
                           size_t len)
{
    if (sl_remote(t)) {
        const char *root = SL_H->config_get0(t, "remote_root");
        snprintf(buf, len, "%s/runs/%s", root && *root ? root : "~/.ctarget", run->id);
    } else {
        char *p = sl_local_run_dir(t, run->id);
        snprintf(buf, len, "%s", p ? p : "");
        free(p);
    }
    return buf;
}

static long long job_id(const ctarget_run_info *run)
{
    long long id = 0;
    if (run->handle && SL_H->obj_get_int(run->handle, "job_id", &id) && id > 0)
        return id;
    return 0;
}

static ctarget_status cmd_failed(ctarget_target *t, const char *what, const sl_out *o,
                                 ctarget_error *err)
{
    char where[256], line[600];
    sl_first_line(o->err[0] ? o->err : (o->out.data ? o->out.data : ""), line, sizeof line);
    SL_H->error_set(err, CTARGET_E_REMOTE, 0, 0, "%s failed on %s (exit %d): %s", what,
                    sl_where(t, where, sizeof where), o->status,
                    line[0] ? line : "no message");
    return CTARGET_E_REMOTE;
}

/* ---- prepare ------------------------------------------------------------------------------ */

static ctarget_status sl_prepare(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    if (run->docker_image) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0,
                     "slurm targets run scripts without containers (image %s): use a "
                     "user-managed, pip or conda environment", run->docker_image);
        return CTARGET_E_UNSUPPORTED;
    }
    if (sl_remote(t))
        return rv_run_ops.prepare(p, c, t, run, err); /* ship, materialize, environment */
    ctarget_status rc = sl_local_prepare(c, t, run, err);
    if (rc != CTARGET_OK || run->env_kind == CTARGET_ENV_USER)
        return rc;
    /* the same agent as on a login node, as a local process: the environment is cached in
     * remote_root/envs, which the compute nodes see */
    const char *python = run->python && *run->python ? run->python : h->config_get0(t, "python");
    return sl_local_env(c, t, run, python && *python ? python : "python3", err);
}

/* ---- submit ------------------------------------------------------------------------------- */

/* The job this run already has (a monitor that died after sbatch, before the id was saved). */
static long long find_job(ctarget_call *c, ctarget_target *t, const ctarget_run_info *run,
                          ctarget_error *err, ctarget_status *rc)
{
    char name[160];
    snprintf(name, sizeof name, "--name=ctarget-%s", run->id);
    const char *argv[] = {"squeue", "-h", "--states=all", name, "-o", "%A", NULL};
    sl_out o;
    *rc = sl_cmd(c, t, argv, NULL, NULL, 0, &o, err);
    long long id = 0;
    if (*rc == CTARGET_OK && o.status != 0)
        *rc = cmd_failed(t, "squeue", &o, err);
    else if (*rc == CTARGET_OK && o.out.data)
        id = atoll(o.out.data);
    sl_out_free(&o);
    return id;
}

static ctarget_status sl_submit(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    const ctarget_host *h = SL_H;
    if (job_id(run))
        return CTARGET_OK;
    ctarget_status rc;
    long long id = find_job(c, t, run, err, &rc);
    if (rc != CTARGET_OK)
        return rc;
    if (id) {
        h->log(c, CTARGET_LOG_INFO, "run %s already has Slurm job %lld", run->id, id);
    } else {
        const char *python = run->handle ? h->obj_get0_str(run->handle, "python") : NULL;
        if (!python || !*python)
            python = run->python && *run->python ? run->python : h->config_get0(t, "python");
        if (!python || !*python)
            python = "python3";
        char *script = sl_script(t, run, python, err);
        if (!script)
            return err->code;
        sl_strv argv = {0};
        sl_strv_add(&argv, "sbatch");
        sl_strv_add(&argv, "--parsable");
        rc = sl_sbatch_options(t, run, &argv, err);
        if (rc != CTARGET_OK) {
            free(script);
            sl_strv_free(&argv);
            return rc;
        }
        char dir[4096];
        sl_out o;
        rc = sl_cmd(c, t, (const char *const *)argv.v, run_dir(t, run, dir, sizeof dir),
                    script, strlen(script), &o, err);
        free(script);
        sl_strv_free(&argv);
        if (rc != CTARGET_OK && err->transient) {
            /* the connection broke around sbatch: the job may exist; its name says */
            ctarget_error e2 = {.struct_size = sizeof e2};
            ctarget_status rc2;
            long long found = find_job(c, t, run, &e2, &rc2);
            if (rc2 == CTARGET_OK && found) {
                h->log(c, CTARGET_LOG_WARN, "%s; Slurm job %lld was submitted all the same",
                       err->message, found);
                sl_out_free(&o);
                o.out.data = NULL;
                id = found;
                rc = CTARGET_OK;
                goto record;
            }
        }
        if (rc == CTARGET_OK && o.status != 0)
            rc = cmd_failed(t, "sbatch", &o, err);
        if (rc == CTARGET_OK) {
            id = o.out.data ? atoll(o.out.data) : 0;
            if (id <= 0) {
                char line[200];
                sl_first_line(o.out.data ? o.out.data : "", line, sizeof line);
                h->error_set(err, CTARGET_E_REMOTE, 0, 0, "sbatch printed no job id ('%s')",
                             line);
                rc = CTARGET_E_REMOTE;
            }
        }
        sl_out_free(&o);
        if (rc != CTARGET_OK)
            return rc;
        h->log(c, CTARGET_LOG_INFO, "submitted as Slurm job %lld", id);
    }
record:
    if (run->handle) {
        h->obj_set_int(run->handle, "job_id", id);
        h->obj_set_str(run->handle, "mode", sl_remote(t) ? "login-node" : "local");
        h->obj_set_int(run->handle, "attempt", 1);
    }
    return CTARGET_OK;
}

/* ---- poll --------------------------------------------------------------------------------- */

/* value of KEY=... in scontrol's one-line output (up to the next space) */
static int field(const char *s, const char *key, char *dst, size_t len)
{
    size_t kl = strlen(key);
    for (const char *q = s; (q = strstr(q, key)); q++) {
        if ((q == s || q[-1] == ' ' || q[-1] == '\n') && q[kl] == '=') {
            q += kl + 1;
            size_t n = strcspn(q, " \n");
            if (n >= len)
                n = len - 1;
            memcpy(dst, q, n);
            dst[n] = '\0';
            return 1;
        }
    }
    return 0;
}

static void set(ctarget_run_poll *o, ctarget_run_state s, const char *native)
{
    o->state = s;
    snprintf(o->native_state, sizeof o->native_state, "%s", native);
}

/* Slurm's job state -> ours.  code/sig: ExitCode's two halves (-1 when unknown). */
static void map_state(const char *st, const char *reason, int code, int sig, int canceled,
                      long long id, ctarget_run_poll *o)
{
    static const char *const queued[] = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                                         "REQUEUE_FED", "RESV_DEL_HOLD", "PREEMPTED", NULL};
    static const char *const running[] = {"RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
                                          "SIGNALING", "STAGE_OUT", "STOPPED", NULL};
    for (int i = 0; queued[i]; i++)
        if (!strcmp(st, queued[i])) {
            set(o, CTARGET_RUN_QUEUED, st);
            return;
        }
    for (int i = 0; running[i]; i++)
        if (!strcmp(st, running[i])) {
            set(o, CTARGET_RUN_RUNNING, st);
            return;
        }
    o->has_exit_code = code >= 0;
    o->exit_code = code >= 0 ? code : 0;
    o->term_signal = sig > 0 ? sig : 0;
    if (!strcmp(st, "COMPLETED") && code <= 0 && sig <= 0) {
        set(o, CTARGET_RUN_COMPLETED, st);
        return;
    }
    if (!strcmp(st, "CANCELLED")) {
        set(o, canceled ? CTARGET_RUN_CANCELED : CTARGET_RUN_FAILED, st);
        if (!canceled)
            snprintf(o->reason, sizeof o->reason, "Slurm job %lld was canceled on the cluster "
                     "(scancel or an administrator), not through ctarget", id);
        return;
    }
    set(o, canceled ? CTARGET_RUN_CANCELED : CTARGET_RUN_FAILED, st);
    const char *why = !strcmp(st, "TIMEOUT") ? "reached its time limit"
                      : !strcmp(st, "NODE_FAIL") ? "lost its node (NODE_FAIL)"
                      : !strcmp(st, "OUT_OF_MEMORY") ? "ran out of memory"
                      : !strcmp(st, "BOOT_FAIL") ? "could not boot its node"
                      : !strcmp(st, "DEADLINE") ? "missed its deadline"
                      : !strcmp(st, "PREEMPTED") ? "was preempted and not requeued"
                      : NULL;
    char how[96];
    if (sig > 0)
        snprintf(how, sizeof how, "killed by signal %d", sig);
    else
        snprintf(how, sizeof how, "exit code %d", code);
    if (why)
        snprintf(o->reason, sizeof o->reason, "Slurm job %lld %s (%s%s%s)", id, why, how,
                 reason && *reason && strcmp(reason, "None") ? ", " : "",
                 reason && strcmp(reason, "None") ? reason : "");
    else
        snprintf(o->reason, sizeof o->reason, "%s (Slurm job %lld %s)", how, id, st);
}

/* "CANCELLED by 0" -> "CANCELLED"; "0:15" -> 0, 15 */
static void parse_exit(const char *s, int *code, int *sig)
{
    *code = -1;
    *sig = 0;
    if (s && *s) {
        *code = atoi(s);
        const char *colon = strchr(s, ':');
        *sig = colon ? atoi(colon + 1) : 0;
    }
}

static ctarget_status from_sacct(ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, long long id, int canceled,
                                 ctarget_run_poll *o, int *found, ctarget_error *err)
{
    char ids[32], want[200];
    snprintf(ids, sizeof ids, "%lld", id);
    snprintf(want, sizeof want, "ctarget-%s", run->id);
    const char *argv[] = {"sacct", "-n", "-P", "-X", "-j", ids, "-o", "State,ExitCode,JobName",
                          NULL};
    sl_out so;
    ctarget_status rc = sl_cmd(c, t, argv, NULL, NULL, 0, &so, err);
    *found = 0;
    /* one line per job that had this id (ids restart when a controller loses its state):
     * the last one named after this run */
    for (char *save = NULL, *line = rc == CTARGET_OK && so.status == 0 && so.out.data
                                        ? strtok_r(so.out.data, "\n", &save) : NULL;
         line; line = strtok_r(NULL, "\n", &save)) {
        char *b1 = strchr(line, '|');
        char *b2 = b1 ? strchr(b1 + 1, '|') : NULL;
        if (!b2 || strcmp(b2 + 1, want))
            continue;
        *b1 = *b2 = '\0';
        char st[64] = "";
        sscanf(line, "%63s", st);
        int code, sig;
        parse_exit(b1 + 1, &code, &sig);
        memset(o->reason, 0, sizeof o->reason);
        map_state(st, NULL, code, sig, canceled, id, o);
        *found = 1;
    }
    sl_out_free(&so);
    return rc == CTARGET_E_NOT_FOUND ? CTARGET_OK : rc; /* no sacct: ask the next witness */
}

static ctarget_status from_exit_file(ctarget_call *c, ctarget_target *t,
                                     const ctarget_run_info *run, long long id, int canceled,
                                     ctarget_run_poll *o, ctarget_error *err)
{
    char line[256] = "";
    ctarget_status rc = CTARGET_OK;
    if (sl_remote(t)) {
        char dir[4096], path[4200];
        snprintf(path, sizeof path, "%s/slurm_exit", run_dir(t, run, dir, sizeof dir));
        /* cat through the shell: "~/" must expand */
        const char *argv[] = {"cat", "slurm_exit", NULL};
        sl_out co;
        rc = sl_cmd(c, t, argv, dir, NULL, 0, &co, err);
        if (rc == CTARGET_OK && co.status == 0 && co.out.data)
            snprintf(line, sizeof line, "%s", co.out.data);
        sl_out_free(&co);
        if (rc != CTARGET_OK)
            return rc;
    } else if (sl_local_exit_file(t, run->id, line, sizeof line) != 0) {
        line[0] = '\0';
    }
    long long jid = 0;
    int restarts = 0, code = -1;
    if (line[0] && sscanf(line, "%lld %d %d", &jid, &restarts, &code) == 3 && jid == id) {
        map_state(code == 0 ? "COMPLETED" : "FAILED", NULL, code, 0, canceled, id, o);
        if (o->state == CTARGET_RUN_FAILED)
            snprintf(o->reason, sizeof o->reason, "exit code %d (recorded by the batch script: "
                     "the Slurm controller no longer knows job %lld and sacct has no record)",
                     code, id);
        return CTARGET_OK;
    }
    set(o, canceled ? CTARGET_RUN_CANCELED : CTARGET_RUN_NOT_RESPONDING, "UNKNOWN");
    if (!canceled)
        snprintf(o->reason, sizeof o->reason, "Slurm job %lld is no longer known to the "
                 "controller, sacct has no record of it (accounting disabled?) and its batch "
                 "script recorded no exit status", id);
    return CTARGET_OK;
}

static ctarget_status job_poll(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_run_poll *o,
                               ctarget_error *err);

static int terminal(ctarget_run_state s)
{
    return s == CTARGET_RUN_COMPLETED || s == CTARGET_RUN_FAILED || s == CTARGET_RUN_CANCELED;
}

static ctarget_status sl_poll(void *p, ctarget_call *c, ctarget_target *t,
                              const ctarget_run_info *run, long wait_ms, ctarget_run_poll *o,
                              ctarget_error *err)
{
    (void)wait_ms; /* the core sleeps between polls */
    ctarget_status rc = job_poll(p, c, t, run, o, err);
    if (rc == CTARGET_OK && sl_remote(t) && terminal(o->state)) {
        /* the job has ended: its last bytes were written after the refresh above, and the
         * core reads the logs once more from where it is, so fetch up to the end now */
        ctarget_run_poll scratch = {.struct_size = sizeof scratch};
        rc = rv_run_ops.poll(p, c, t, run, 0, &scratch, err);
    }
    return rc;
}

static ctarget_status job_poll(void *p, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_run_poll *o,
                               ctarget_error *err)
{
    const ctarget_host *h = SL_H;
    long long id = job_id(run);
    if (!id) {
        h->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no Slurm job id in its handle",
                     run->id);
        return CTARGET_E_STATE;
    }
    ctarget_status rc;
    if (sl_remote(t)) {
        /* the log and metric bytes since the last read, in one agent round trip (the state
         * the agent reports is about its own runs: not used here) */
        ctarget_run_poll scratch = {.struct_size = sizeof scratch};
        rc = rv_run_ops.poll(p, c, t, run, 0, &scratch, err);
        if (rc != CTARGET_OK)
            return rc;
    }
    long long canceled_ll = 0;
    int canceled = run->handle && h->obj_get_int(run->handle, "cancel_requested", &canceled_ll) &&
                   canceled_ll;
    char ids[32];
    snprintf(ids, sizeof ids, "%lld", id);
    const char *argv[] = {"scontrol", "show", "job", "-o", ids, NULL};
    sl_out so;
    rc = sl_cmd(c, t, argv, NULL, NULL, 0, &so, err);
    if (rc != CTARGET_OK) {
        sl_out_free(&so);
        return rc;
    }
    const char *text = so.out.data ? so.out.data : "";
    char st[64] = "", reason[128] = "", ec[32] = "", rs[16] = "";
    /* a controller that lost its state numbers jobs from 1 again: a job with this id but
     * another name is not this run's */
    char jname[200] = "", want[200];
    snprintf(want, sizeof want, "ctarget-%s", run->id);
    int mine = so.status == 0 && field(text, "JobName", jname, sizeof jname) &&
               !strcmp(jname, want);
    if (mine && field(text, "JobState", st, sizeof st)) {
        field(text, "Reason", reason, sizeof reason);
        field(text, "ExitCode", ec, sizeof ec);
        field(text, "Restarts", rs, sizeof rs);
        int code, sig;
        parse_exit(ec, &code, &sig);
        map_state(st, reason, code, sig, canceled, id, o);
        /* requeues are attempts: preemption, node failure, scontrol requeue */
        long long attempt = atoll(rs) + 1, prev = 1;
        if (run->handle) {
            if (!h->obj_get_int(run->handle, "attempt", &prev))
                prev = 1;
            if (attempt > prev) {
                h->log(c, CTARGET_LOG_INFO, "Slurm job %lld was requeued (%s): attempt %lld",
                       id, st, attempt);
                h->obj_set_int(run->handle, "attempt", attempt);
            }
            h->obj_set_str(run->handle, "job_state", st);
            if (reason[0])
                h->obj_set_str(run->handle, "job_reason", reason);
        }
        if (o->struct_size >= offsetof(ctarget_run_poll, attempt) + sizeof o->attempt)
            o->attempt = (int)(attempt > prev ? attempt : prev);
        sl_out_free(&so);
        return CTARGET_OK;
    }
    int gone = strstr(so.err, "Invalid job id") != NULL || (so.status == 0 && !mine);
    if (!gone) {
        rc = cmd_failed(t, "scontrol show job", &so, err);
        err->transient = 1; /* a controller restarting, say: the core polls again */
        sl_out_free(&so);
        return rc;
    }
    sl_out_free(&so);
    int found = 0;
    rc = from_sacct(c, t, run, id, canceled, o, &found, err);
    if (rc != CTARGET_OK || found)
        return rc;
    return from_exit_file(c, t, run, id, canceled, o, err);
}

/* ---- logs, cancel, outputs, reattach, cleanup --------------------------------------------- */

static ctarget_status sl_read_logs(void *p, ctarget_call *c, ctarget_target *t,
                                   const ctarget_run_info *run, ctarget_stream stream,
                                   uint64_t offset, ctarget_write_fn out, void *out_arg,
                                   ctarget_error *err)
{
    if (sl_remote(t))
        return rv_run_ops.read_logs(p, c, t, run, stream, offset, out, out_arg, err);
    return sl_local_read(t, run, stream, offset, out, out_arg, err);
}

static ctarget_status sl_cancel(void *p, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)p;
    if (run->handle)
        SL_H->obj_set_int(run->handle, "cancel_requested", 1);
    long long id = job_id(run);
    char arg[160];
    if (id)
        snprintf(arg, sizeof arg, "%lld", id);
    else /* not submitted yet, or the id was never saved: the job's name finds it */
        snprintf(arg, sizeof arg, "--name=ctarget-%s", run->id);
    const char *argv[] = {"scancel", arg, NULL};
    sl_out o;
    ctarget_status rc = sl_cmd(c, t, argv, NULL, NULL, 0, &o, err);
    if (rc == CTARGET_OK && o.status != 0 && !strstr(o.err, "already completing") &&
        !strstr(o.err, "Invalid job id"))
        rc = cmd_failed(t, "scancel", &o, err);
    sl_out_free(&o);
    return rc;
}

static ctarget_status sl_fetch_outputs(void *p, ctarget_call *c, ctarget_target *t,
                                       const ctarget_run_info *run, const char *dest_dir,
                                       ctarget_error *err)
{
    if (sl_remote(t))
        return rv_run_ops.fetch_outputs(p, c, t, run, dest_dir, err);
    return sl_local_outputs(t, run, dest_dir, err);
}

static ctarget_status sl_reattach(void *p, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_error *err)
{
    if (sl_remote(t))
        return rv_run_ops.reattach(p, c, t, run, err);
    return CTARGET_OK; /* everything is in the handle and the run directory */
}

static ctarget_status sl_cleanup(void *p, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    if (sl_remote(t))
        return rv_run_ops.cleanup(p, c, t, run, err);
    return sl_local_cleanup(t, run, err);
}

const ctarget_run_ops sl_run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = sl_prepare,
    .submit = sl_submit,
    .poll = sl_poll,
    .read_logs = sl_read_logs,
    .cancel = sl_cancel,
    .fetch_outputs = sl_fetch_outputs,
    .reattach = sl_reattach,
    .cleanup = sl_cleanup,
};
