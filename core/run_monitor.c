/* The run monitor: drives one run through the plugin's run operations (plugin.h, THE RUN
 * CONTRACT) to a terminal state, persisting each transition, the native handle, the logs and
 * the metrics as it goes, so that a replacement monitor can carry on after any crash. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "loader.h"
#include "log.h"
#include "registry.h"
#include "run.h"
#include "run_mon.h"
#include "pipeline/pipeline.h"
#include "sweep/sweep.h"
#include "util.h"
#include "ws.h"

/* ---- the monitor's own log --------------------------------------------------------------- */

void mon_note(mon *m, const char *fmt, ...)
{
    (void)m; /* stderr is the run's monitor.log in a detached monitor */
    char ts[32];
    time_format_iso(time_now_ms(), ts);
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    log_redact_inplace(&msg);
    fprintf(stderr, "%s [%ld] %s\n", ts, (long)getpid(), msg);
    fflush(stderr);
    free(msg);
}

static long env_long(const char *name, long dflt, long min)
{
    const char *v = getenv(name);
    long long x;
    if (!v || parse_ll(v, &x) != 0 || x < min)
        return dflt;
    return (long)x;
}

/* ---- run info from the record ---------------------------------------------------------- */

static void info_build(mon *m)
{
    m->info_row = json_incref(m->row);
    json_t *cfg = json_object_get(m->row, "config");
    json_t *env = json_object_get(cfg, "environment");
    ctarget_run_info *ri = &m->ri;
    memset(ri, 0, sizeof *ri);
    ri->struct_size = sizeof *ri;
    ri->id = m->id;
    ri->experiment = json_string_value(json_object_get(m->row, "experiment"));
    ri->snapshot_id = json_string_value(json_object_get(m->row, "snapshot_id"));
    ri->script = json_string_value(json_object_get(cfg, "script"));
    json_t *args = json_object_get(cfg, "arguments");
    m->n_args = json_array_size(args);
    m->args = xcalloc(m->n_args + 1, sizeof *m->args);
    for (size_t i = 0; i < m->n_args; i++)
        m->args[i] = json_string_value(json_array_get(args, i));
    ri->args = m->args;
    ri->n_args = m->n_args;
    json_t *vars = json_object_get(env, "env_vars");
    m->envs = xcalloc(json_object_size(vars) + 1, sizeof *m->envs);
    const char *k;
    json_t *v;
    json_object_foreach(vars, k, v) m->envs[m->n_envs++] =
        xasprintf("%s=%s", k, json_string_value(v));
    ri->env = (const char *const *)m->envs;
    ri->n_env = m->n_envs;
    ri->framework = json_string_value(json_object_get(cfg, "framework"));
    ri->timeout_seconds = json_integer_value(json_object_get(cfg, "timeout_seconds"));
    ri->node_count = (unsigned)json_integer_value(json_object_get(cfg, "node_count"));
    if (!ri->node_count)
        ri->node_count = 1;
    ri->attempt = (int)json_integer_value(json_object_get(m->row, "attempt"));
    const char *kind = json_string_value(json_object_get(env, "kind"));
    ri->env_kind = kind && !strcmp(kind, "pip") ? CTARGET_ENV_PIP
                   : kind && !strcmp(kind, "conda") ? CTARGET_ENV_CONDA : CTARGET_ENV_USER;
    ri->python = json_string_value(json_object_get(env, "python"));
    ri->env_file = json_string_value(json_object_get(env, "file"));
    ri->env_hash = json_string_value(json_object_get(env, "hash"));
    ri->docker_image = json_string_value(json_object_get(env, "docker_image"));
    ri->docker_gpu = json_is_true(json_object_get(env, "docker_gpu"));
    ri->work_dir = m->work_dir;
    m->handle = json_deep_copy(json_object_get(m->row, "handle"));
    if (!json_is_object(m->handle)) {
        json_decref(m->handle);
        m->handle = json_object();
    }
    m->handle_text = json_dumps(m->handle, JSON_COMPACT | JSON_SORT_KEYS);
    ri->handle = json_obj(m->handle);
    json_t *opts = json_object_get(cfg, "options");
    if (!json_is_object(opts))
        json_object_set_new(cfg, "options", opts = json_object());
    ri->options = json_obj(opts);
    ri->cancel_grace_seconds = json_integer_value(json_object_get(cfg, "cancel_grace_seconds"));
    if (ri->cancel_grace_seconds <= 0)
        ri->cancel_grace_seconds = 10;
    /* a pipeline step (core/pipeline/driver.c stores this) */
    json_t *step = json_object_get(cfg, "pipeline_step");
    if (json_is_object(step)) {
        ri->pipeline_id = json_string_value(json_object_get(step, "pipeline_id"));
        ri->step_name = json_string_value(json_object_get(step, "step_name"));
        ri->step_type = json_string_value(json_object_get(step, "step_type"));
        json_t *sj = json_object_get(step, "step");
        m->step_json = json_is_object(sj) ? json_dumps(sj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        ri->step_json = m->step_json ? m->step_json : "{}";
    }
}

static void info_free(mon *m)
{
    for (size_t i = 0; i < m->n_envs; i++)
        free(m->envs[i]);
    free(m->envs);
    free(m->args);
    json_decref(m->handle);
    free(m->handle_text);
    free(m->step_json);
    json_decref(m->info_row);
}

/* Persist the handle when the plugin changed it (after prepare, submit, polls, cancel). */
void mon_save_handle(mon *m)
{
    char *now = json_dumps(m->handle, JSON_COMPACT | JSON_SORT_KEYS);
    if (now && m->handle_text && !strcmp(now, m->handle_text)) {
        free(now);
        return;
    }
    ctarget_error e;
    ctarget_error_init(&e);
    if (run_set_text(m->ws->st, m->id, "handle", now, &e))
        mon_note(m, "cannot persist the run handle: %s", e.message);
    free(m->handle_text);
    m->handle_text = now;
}

/* Re-read the row: the status may have been changed by `run cancel`. */
int mon_refresh(mon *m)
{
    json_t *row = run_row(m->ws->st, m->id);
    if (!row)
        return -1;
    json_decref(m->row);
    m->row = row;
    m->state = run_row_state(row);
    return 0;
}

/* A transition through the one state machine; a refusal is logged, never fatal. */
int mon_move(mon *m, ctarget_run_state to, const rs_change *ch)
{
    ctarget_error e;
    ctarget_error_init(&e);
    if (rs_transition(m->ws->st, m->id, to, ch, NULL, &e) != CTARGET_OK) {
        mon_note(m, "not moving to %s: %s", rs_name(to), e.message);
        mon_refresh(m);
        return -1;
    }
    mon_note(m, "%s%s%s", rs_name(to), ch && ch->detail ? ": " : "",
             ch && ch->detail ? ch->detail : "");
    m->state = to;
    return 0;
}

void mon_set_phase(mon *m, const char *phase)
{
    ctarget_error e;
    ctarget_error_init(&e);
    if (run_set_text(m->ws->st, m->id, "phase", phase, &e))
        mon_note(m, "cannot record phase %s: %s", phase, e.message);
}

/* ---- process identity ----------------------------------------------------------------- */

static long long proc_start_ticks(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    size_t len;
    char *s = file_read_all(path, &len);
    if (!s)
        return 0;
    /* field 22 (starttime), counted after the ")" that ends the command name */
    char *p = strrchr(s, ')');
    long long v = 0;
    for (int field = 2; p && *p && field < 22; p++)
        if (*p == ' ')
            field++;
    if (p)
        v = strtoll(p, NULL, 10);
    free(s);
    return v;
}

static int take_lock(mon *m, ctarget_error *err)
{
    char *path = run_file(m->ws->dir, m->id, "monitor.lock");
    m->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(path);
    if (m->lock_fd < 0) {
        ct_err_errno(err, CTARGET_E_IO, errno, "cannot open the monitor lock of run %s", m->id);
        return -1;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(m->lock_fd, F_SETLK, &fl) != 0) {
        ct_err(err, CTARGET_E_EXISTS, "run %s already has a live monitor", m->id);
        close(m->lock_fd);
        m->lock_fd = -1;
        return -1;
    }
    return 0;
}

static void record_monitor(mon *m)
{
    sqlite3_stmt *s = store_prepare(m->ws->st, "UPDATE runs SET monitor_pid=?,"
                                               " monitor_start=?, monitor_starts=monitor_starts+1"
                                               " WHERE id=?", NULL);
    if (!s)
        return;
    sqlite3_bind_int64(s, 1, getpid());
    sqlite3_bind_int64(s, 2, proc_start_ticks(getpid()));
    store_bind_text(s, 3, m->id);
    sqlite3_step(s);
    sqlite3_finalize(s);
}

/* ---- the entry point ------------------------------------------------------------------- */

static ctarget_status load_target(mon *m)
{
    ctarget_error e;
    ctarget_error_init(&e);
    const char *target = json_string_value(json_object_get(m->row, "target"));
    ctarget_status rc = reg_load(m->ws, target, 1, &m->rt, &e);
    if (!rc)
        rc = loader_init_plugin(m->rt->pl, &e);
    if (rc) {
        char *why = xasprintf("compute target '%s' is unavailable: %s", target, e.message);
        if (!rs_terminal(m->state)) {
            rs_change ch = {.detail = why};
            mon_move(m, CTARGET_RUN_FAILED, &ch);
        }
        free(why);
        mon_set_phase(m, "done");
    }
    return rc;
}

ctarget_status ctarget_run_monitor(ctarget_ws *ws, const char *id_in, ctarget_error *err)
{
    char *id;
    ctarget_status rc = run_resolve(ws->st, id_in, &id, err);
    if (rc)
        return rc;
    mon m = {.ws = ws, .id = id, .lock_fd = -1};
    if (take_lock(&m, err) != 0) {
        free(id);
        return err->code;
    }
    /* started while another monitor was finishing the run (it held the lock then): nothing
     * is left to do, and it must not count as a start */
    const char *phase = mon_refresh(&m) == 0
                            ? json_string_value(json_object_get(m.row, "phase")) : NULL;
    if (rs_terminal(m.state) && phase && !strcmp(phase, "done")) {
        json_decref(m.row);
        close(m.lock_fd);
        free(id);
        return CTARGET_OK;
    }
    record_monitor(&m);
    mon_refresh(&m);
    const char *kind = json_string_value(json_object_get(m.row, "kind"));
    if (kind && (!strcmp(kind, "sweep") || !strcmp(kind, "pipeline"))) {
        /* a sweep's or a pipeline's monitor is its driver (core/sweep/driver.c,
         * core/pipeline/driver.c) */
        if (!strcmp(kind, "sweep"))
            sw_drive(ws, id);
        else
            pl_drive(ws, id);
        json_decref(m.row);
        close(m.lock_fd);
        free(id);
        return CTARGET_OK;
    }
    m.poll_ms = env_long("CTARGET_POLL_INTERVAL_MS", 500, 1);
    m.log_path = run_file(ws->dir, id, "std_log.txt");
    m.work_dir = run_file(ws->dir, id, "work");
    m.dir = run_dir(ws->dir, id);
    mkdir_p(m.work_dir, 0700);
    m.log_fd = open(m.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    mon_note(&m, "monitor started for run %s (%s)", id, rs_name(m.state));
    if (load_target(&m) == CTARGET_OK) {
        info_build(&m);
        mon_drive(&m);
        info_free(&m);
    }
    mon_note(&m, "monitor done: run %s is %s", id, rs_name(m.state));
    reg_target_free(m.rt);
    json_decref(m.row);
    if (m.log_fd >= 0)
        close(m.log_fd);
    free(m.log_path);
    free(m.work_dir);
    free(m.dir);
    close(m.lock_fd); /* releases the lock: the run needs no monitor any more */
    free(id);
    return CTARGET_OK;
}
