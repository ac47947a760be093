/* Run operations of the local target: prepare, submit, logs, outputs, reattach, cleanup.
 * poll and cancel are in poll.c.
 *
 * Everything about a run lives in files in its work_dir (see lrun_paths in local.h), not in
 * memory, so a monitor that replaces a dead one finds the run again from the directory
 * alone; run->handle carries the same facts for the core to show and persist:
 *     work_dir, src_dir, log_file, metrics_file, python, env_dir, engine, container,
 *     wrapper_pid, wrapper_start, pid (= process group), pid_start, started_ms, queued */
#include "config.h"

#include "local.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

const char *lrun_work_dir(const ctarget_host *h, const ctarget_run_info *run)
{
    if (run->work_dir && *run->work_dir)
        return run->work_dir;
    return run->handle ? h->obj_get0_str(run->handle, "work_dir") : NULL;
}

void lrun_handle_pids(const ctarget_host *h, const ctarget_run_info *run, const lrun_pids *pd)
{
    if (!run->handle)
        return;
    h->obj_set_int(run->handle, "wrapper_pid", pd->wrapper_pid);
    h->obj_set_int(run->handle, "wrapper_start", (long long)pd->wrapper_start);
    h->obj_set_int(run->handle, "pid", pd->pid);
    h->obj_set_int(run->handle, "pid_start", (long long)pd->pid_start);
    h->obj_set_int(run->handle, "started_ms", pd->started_ms);
    h->obj_set_bool(run->handle, "queued", 0);
}

ctarget_status lrun_paths_for(const ctarget_host *h, const ctarget_run_info *run,
                              lrun_paths *p, ctarget_error *err)
{
    const char *wd = lrun_work_dir(h, run);
    if (!wd) {
        h->error_set(err, CTARGET_E_USAGE, 0, 0, "run %s has no work directory",
                     run->id ? run->id : "?");
        return CTARGET_E_USAGE;
    }
    lrun_paths_init(p, wd);
    return CTARGET_OK;
}

static void log_line(const lrun_paths *p, const char *what, const char *msg)
{
    int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dprintf(fd, "[ctarget] %s: %s\n", what, msg);
        close(fd);
    }
}

/* ---- prepare ----------------------------------------------------------------------------- */

/* Idempotent: the marker (written only after a complete materialization) names the snapshot
 * src holds, so a monitor that restarts during prepare neither redoes finished work nor
 * trusts a half-written tree. */
static ctarget_status materialize(const ctarget_host *h, ctarget_call *c,
                                  const ctarget_run_info *run, const lrun_paths *p,
                                  ctarget_error *err)
{
    if (!run->snapshot_id || !*run->snapshot_id) {
        h->error_set(err, CTARGET_E_USAGE, 0, 0, "run %s has no snapshot", run->id);
        return CTARGET_E_USAGE;
    }
    char *have = lp_read_file(p->marker, NULL);
    struct stat st;
    int done = have && !strcmp(have, run->snapshot_id) && stat(p->src, &st) == 0 &&
               S_ISDIR(st.st_mode);
    free(have);
    if (done)
        return CTARGET_OK;
    unlink(p->marker);
    lp_rm_rf(p->src);
    ctarget_status rc = h->snapshot_materialize(c, run->snapshot_id, p->src, err);
    if (rc != CTARGET_OK)
        return rc;
    if (lp_write_file_atomic(p->marker, run->snapshot_id, strlen(run->snapshot_id)) != 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s: %s", p->marker,
                     strerror(errno));
        return CTARGET_E_IO;
    }
    return CTARGET_OK;
}

static ctarget_status l_prepare(void *ctx, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    lenv env = {0};
    if (lp_mkdir_p(p.work, 0700) != 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot create %s: %s", p.work,
                     strerror(errno));
        rc = CTARGET_E_IO;
    }
    if (rc == CTARGET_OK)
        rc = materialize(h, c, run, &p, err);
    if (rc == CTARGET_OK)
        rc = lenv_prepare(h, c, t, run, &p, &env, err);
    if (rc == CTARGET_OK && run->handle) {
        ctarget_obj *o = run->handle;
        h->obj_set_str(o, "work_dir", p.work);
        h->obj_set_str(o, "src_dir", p.src);
        h->obj_set_str(o, "log_file", p.log);
        h->obj_set_str(o, "metrics_file", p.metrics);
        h->obj_set_str(o, "python", env.python);
        h->obj_set_str(o, "env_dir", env.env_dir);
        h->obj_set_str(o, "engine", env.engine);
    }
    if (rc != CTARGET_OK)
        log_line(&p, "preparing the run failed", err->message);
    lenv_free(&env);
    lrun_paths_free(&p);
    return rc;
}

/* ---- submit ------------------------------------------------------------------------------ */

typedef struct strv {
    char **v;
    size_t n;
} strv;

static void strv_add(strv *s, char *owned)
{
    s->v = lp_xrealloc(s->v, (s->n + 2) * sizeof *s->v);
    s->v[s->n++] = owned;
    s->v[s->n] = NULL;
}

static void strv_free(strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* Is NAME (of "NAME=value") set by the run itself, or one we set? */
static int overridden(const char *entry, const strv *ours)
{
    size_t n = strcspn(entry, "=");
    for (size_t i = 0; i < ours->n; i++)
        if (!strncmp(ours->v[i], entry, n) && ours->v[i][n] == '=')
            return 1;
    return 0;
}

/* The variables ctarget gives every script: CTARGET_*, the environment's PATH, run->env. */
static ctarget_status script_vars(const ctarget_host *h, const ctarget_run_info *run,
                                  const lrun_paths *p, strv *vars, ctarget_error *err)
{
    const char *env_dir = run->handle ? h->obj_get0_str(run->handle, "env_dir") : NULL;
    strv_add(vars, lp_asprintf("CTARGET_RUN_ID=%s", run->id));
    strv_add(vars, lp_asprintf("CTARGET_OUTPUTS_DIR=%s", p->outputs));
    strv_add(vars, lp_asprintf("CTARGET_METRICS_FILE=%s", p->metrics));
    /* logs stream while the script runs only if Python does not buffer its output */
    strv_add(vars, lp_strdup("PYTHONUNBUFFERED=1"));
    if (env_dir) {
        const char *path = getenv("PATH");
        strv_add(vars, lp_asprintf("PATH=%s/bin:%s", env_dir, path ? path : "/usr/bin:/bin"));
        strv_add(vars, lp_asprintf("VIRTUAL_ENV=%s", env_dir));
    }
    for (size_t i = 0; i < run->n_env; i++) {
        const char *e = run->env[i];
        if (!e || !strchr(e, '=') || e[0] == '=') {
            h->error_set(err, CTARGET_E_CONFIG, 0, 0, "environment variable \"%s\" is not "
                         "of the form NAME=value", e ? e : "(null)");
            return CTARGET_E_CONFIG;
        }
        if (!strncmp(e, "CTARGET_", 8) && overridden(e, vars))
            continue; /* the contract's variables are ours to set */
        strv_add(vars, lp_strdup(e));
    }
    return CTARGET_OK;
}

/* The whole environment: the monitor's, minus what the run sets, plus the run's. */
static void full_env(const strv *vars, strv *envp)
{
    for (char **e = environ; e && *e; e++)
        if (!overridden(*e, vars) && strncmp(*e, "PYTHONHOME=", 11))
            strv_add(envp, lp_strdup(*e));
    /* later entries win in getenv(): run->env after ours, so add in order, dropping the
     * earlier duplicates */
    for (size_t i = 0; i < vars->n; i++) {
        int later = 0;
        size_t n = strcspn(vars->v[i], "=");
        for (size_t j = i + 1; j < vars->n && !later; j++)
            later = !strncmp(vars->v[j], vars->v[i], n) && vars->v[j][n] == '=';
        if (!later)
            strv_add(envp, lp_strdup(vars->v[i]));
    }
}

static ctarget_status build_argv(const ctarget_host *h, const ctarget_run_info *run,
                                 const lrun_paths *p, const strv *vars, strv *argv,
                                 ctarget_error *err)
{
    const char *python = run->handle ? h->obj_get0_str(run->handle, "python") : NULL;
    const char *engine = run->handle ? h->obj_get0_str(run->handle, "engine") : NULL;
    if (!python) {
        h->error_set(err, CTARGET_E_STATE, 0, 0, "run %s was not prepared (no interpreter "
                     "in its handle)", run->id);
        return CTARGET_E_STATE;
    }
    if (!engine) {
        strv_add(argv, lp_strdup(python));
        strv_add(argv, lp_strdup(run->script));
        for (size_t i = 0; i < run->n_args; i++)
            strv_add(argv, lp_strdup(run->args[i] ? run->args[i] : ""));
        return CTARGET_OK;
    }
    char *name = ldocker_container_name(run->id);
    int docker = strstr(engine, "podman") == NULL;
    ldocker_spec ds = {engine, run->docker_image, name, p->work, p->src, python, run->script,
                       run->args, run->n_args, (const char *const *)vars->v, vars->n,
                       run->docker_gpu, docker ? (long)getuid() : -1,
                       docker ? (long)getgid() : -1};
    char **v = ldocker_argv(&ds);
    if (run->handle)
        h->obj_set_str(run->handle, "container", name);
    free(name);
    if (!v) {
        h->error_set(err, CTARGET_E_CONFIG, 0, 0, "cannot build the container command line "
                     "for image %s", run->docker_image);
        return CTARGET_E_CONFIG;
    }
    for (char **a = v; *a; a++)
        strv_add(argv, lp_strdup(*a));
    ldocker_argv_free(v);
    return CTARGET_OK;
}

static ctarget_status check_script(const ctarget_host *h, const ctarget_run_info *run,
                                   const lrun_paths *p, ctarget_error *err)
{
    struct stat st;
    if (stat(p->src, &st) != 0 || !S_ISDIR(st.st_mode)) {
        h->error_set(err, CTARGET_E_STATE, 0, 0, "run %s has no source tree in %s: prepare "
                     "did not complete", run->id, p->src);
        return CTARGET_E_STATE;
    }
    /* relative to the snapshot root and inside it */
    const char *sc = run->script;
    int inside = sc && *sc && sc[0] != '/' && strcmp(sc, "..") && strncmp(sc, "../", 3) &&
                 !strstr(sc, "/../") && !(strlen(sc) >= 3 && !strcmp(sc + strlen(sc) - 3, "/.."));
    char *script = inside ? lp_asprintf("%s/%s", p->src, sc) : NULL;
    int ok = script && stat(script, &st) == 0 && S_ISREG(st.st_mode);
    free(script);
    if (!ok) {
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0, "the script %s is not in the run's "
                     "snapshot", run->script ? run->script : "(none given)");
        return CTARGET_E_NOT_FOUND;
    }
    return CTARGET_OK;
}

/* The files the script writes to exist before it starts (outputs/, the metrics file). */
static ctarget_status make_run_files(const ctarget_host *h, const lrun_paths *p,
                                     ctarget_error *err)
{
    int fd1 = -1, fd2 = -1;
    if (lp_mkdir_p(p->outputs, 0755) == 0 &&
        (fd1 = open(p->metrics, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) >= 0 &&
        (fd2 = open(p->log, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) >= 0) {
        close(fd1);
        close(fd2);
        return CTARGET_OK;
    }
    int e = errno;
    if (fd1 >= 0)
        close(fd1);
    h->error_set(err, CTARGET_E_IO, 0, e, "cannot create the run's files in %s: %s", p->work,
                 strerror(e));
    return CTARGET_E_IO;
}

static ctarget_status write_spec(const ctarget_host *h, const ctarget_run_info *run,
                                 const lrun_paths *p, ctarget_error *err)
{
    strv vars = {0}, envp = {0}, argv = {0};
    ctarget_status rc = script_vars(h, run, p, &vars, err);
    if (rc == CTARGET_OK)
        rc = build_argv(h, run, p, &vars, &argv, err);
    if (rc == CTARGET_OK) {
        full_env(&vars, &envp);
        if (lspawn_write_spec(p->spec, argv.v, envp.v, p->src) != 0) {
            h->error_set(err, CTARGET_E_IO, 0, errno, "cannot write %s: %s", p->spec,
                         strerror(errno));
            rc = CTARGET_E_IO;
        }
    }
    strv_free(&vars);
    strv_free(&envp);
    strv_free(&argv);
    return rc;
}

static ctarget_status l_submit(void *ctx, ctarget_call *c, ctarget_target *t,
                               const ctarget_run_info *run, ctarget_error *err)
{
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    lrun_pids pids;
    if (lspawn_read_pids(&p, &pids) == 0) { /* submitted before: never start twice */
        lrun_handle_pids(h, run, &pids);
        lrun_paths_free(&p);
        return CTARGET_OK;
    }
    rc = check_script(h, run, &p, err);
    if (rc == CTARGET_OK)
        rc = make_run_files(h, &p, err);
    if (rc == CTARGET_OK)
        rc = write_spec(h, run, &p, err);
    if (rc == CTARGET_OK)
        rc = lqueue_submit(h, c, t, run->id, p.work, err);
    if (rc == CTARGET_OK) {
        char *why = lp_read_file(p.launch_err, NULL);
        if (why) {
            h->error_set(err, CTARGET_E_FAILED, 0, 0, "%s", why);
            rc = CTARGET_E_FAILED;
            free(why);
        } else if (lspawn_read_pids(&p, &pids) == 0) {
            lrun_handle_pids(h, run, &pids);
        } else if (run->handle) {
            h->obj_set_bool(run->handle, "queued", 1);
        }
    }
    lrun_paths_free(&p);
    return rc;
}

/* ---- logs, outputs ------------------------------------------------------------------------ */

static ctarget_status l_read_logs(void *ctx, ctarget_call *c, ctarget_target *t,
                                  const ctarget_run_info *run, ctarget_stream stream,
                                  uint64_t offset, ctarget_write_fn out, void *out_arg,
                                  ctarget_error *err)
{
    (void)c, (void)t;
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    const char *path = stream == CTARGET_STREAM_METRICS ? p.metrics : p.log;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (errno != ENOENT) { /* not written yet is simply nothing yet */
            h->error_set(err, CTARGET_E_IO, 0, errno, "cannot read %s: %s", path,
                         strerror(errno));
            rc = CTARGET_E_IO;
        }
        if (fd >= 0)
            close(fd);
        lrun_paths_free(&p);
        return rc;
    }
    /* up to the size seen now: a script that keeps writing does not keep us here */
    uint64_t end = (uint64_t)st.st_size;
    char buf[65536];
    while (offset < end && rc == CTARGET_OK) {
        size_t want = end - offset < sizeof buf ? (size_t)(end - offset) : sizeof buf;
        ssize_t n = pread(fd, buf, want, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (out(out_arg, buf, (size_t)n) != 0) {
            h->error_set(err, CTARGET_E_CANCELED, 0, 0, "reading the log was stopped");
            rc = CTARGET_E_CANCELED;
        }
        offset += (uint64_t)n;
    }
    close(fd);
    lrun_paths_free(&p);
    return rc;
}

static ctarget_status l_fetch_outputs(void *ctx, ctarget_call *c, ctarget_target *t,
                                      const ctarget_run_info *run, const char *dest_dir,
                                      ctarget_error *err)
{
    (void)c, (void)t;
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    const char *subs[] = {"outputs", "logs"};
    for (size_t i = 0; i < 2 && rc == CTARGET_OK; i++) {
        char *from = lp_asprintf("%s/%s", p.src, subs[i]);
        char *to = lp_asprintf("%s/%s", dest_dir, subs[i]);
        if (lp_copy_tree(from, to) != 0) {
            h->error_set(err, CTARGET_E_IO, 0, errno, "cannot copy %s to %s: %s", from, to,
                         strerror(errno));
            rc = CTARGET_E_IO;
        }
        free(from);
        free(to);
    }
    lrun_paths_free(&p);
    return rc;
}

/* ---- reattach, cleanup ------------------------------------------------------------------- */

static ctarget_status l_reattach(void *ctx, ctarget_call *c, ctarget_target *t,
                                 const ctarget_run_info *run, ctarget_error *err)
{
    (void)c, (void)t;
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    struct stat st;
    lrun_pids pids;
    if (stat(p.work, &st) != 0) {
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, errno, "the work directory of run %s (%s) "
                     "is gone", run->id, p.work);
        rc = CTARGET_E_NOT_FOUND;
    } else if (lspawn_read_pids(&p, &pids) == 0) {
        lrun_handle_pids(h, run, &pids); /* the wrapper's record wins over the handle */
        if (run->handle)
            h->obj_set_str(run->handle, "work_dir", p.work);
    }
    lrun_paths_free(&p);
    return rc;
}

static ctarget_status l_cleanup(void *ctx, ctarget_call *c, ctarget_target *t,
                                const ctarget_run_info *run, ctarget_error *err)
{
    (void)c;
    const ctarget_host *h = ((local_ctx *)ctx)->h;
    lrun_paths p;
    ctarget_status rc = lrun_paths_for(h, run, &p, err);
    if (rc != CTARGET_OK)
        return rc;
    lrun_pids pids;
    if (!lp_exists(p.status) && lspawn_read_pids(&p, &pids) == 0 &&
        lp_pid_alive((pid_t)pids.wrapper_pid, pids.wrapper_start)) {
        h->error_set(err, CTARGET_E_STATE, 0, 0, "run %s is still running", run->id);
        rc = CTARGET_E_STATE;
    } else {
        /* the bulky part goes; what logs and reattach read stays.  The spec goes too: it
         * holds the run's environment variables. */
        unlink(p.marker);
        lp_rm_rf(p.src);
        unlink(p.spec);
        lqueue_forget(h, t, run->id);
    }
    lrun_paths_free(&p);
    return rc;
}

const ctarget_run_ops local_run_ops = {
    .struct_size = sizeof(ctarget_run_ops),
    .prepare = l_prepare,
    .submit = l_submit,
    .poll = local_poll,
    .read_logs = l_read_logs,
    .cancel = local_cancel,
    .fetch_outputs = l_fetch_outputs,
    .reattach = l_reattach,
    .cleanup = l_cleanup,
};
