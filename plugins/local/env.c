/* Environments of local runs.
 *
 *   USER    run->python, or python3 on PATH, used as is.
 *   PIP     a venv built from the requirements file; CONDA: `conda env create -p`.
 *   docker  the image's own python, run through docker or podman (see docker.c).
 *
 * Built environments are cached in the target's state directory, shared by all runs:
 *     envs/<key>            symlink to the finished environment (the only name users see)
 *     envs/<key>.d-<pid>-<ms>  the environment itself, built in place
 *     envs/<key>.lock       flock'd while checking or building
 * The key is the dependency file's hash plus the interpreter's version and path, so an
 * environment is reused while both are unchanged.  A build happens under the lock, so runs
 * needing the same environment at once build it once.  It is built in its final directory
 * (venv scripts and conda prefixes hard-code their own path, so a directory cannot be
 * renamed after the build) and published by renaming a symlink over envs/<key>: nobody
 * sees a half-built environment, and a failed build's directory is removed. */
#include "config.h"

#include "local.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUILD_TIMEOUT_MS (3600L * 1000)   /* a build that takes an hour is stuck */
#define LOCK_WAIT_STEPS 36000              /* x 200 ms: wait two hours for another builder */

typedef ctarget_status (*builder_fn)(const ctarget_host *h, ctarget_call *call,
                                     const char *dir, int logfd, void *arg,
                                     ctarget_error *err);

static void logf_(int fd, const char *fmt, ...) CTARGET_PRINTF(2, 3);
static void logf_(int fd, const char *fmt, ...)
{
    if (fd < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vdprintf(fd, fmt, ap);
    va_end(ap);
}

void lenv_free(lenv *e)
{
    free(e->python);
    free(e->env_dir);
    free(e->engine);
    memset(e, 0, sizeof *e);
}

static ctarget_status find_python(const ctarget_host *h, const ctarget_run_info *run,
                                  char **out, ctarget_error *err)
{
    const char *name = run->python && *run->python ? run->python : "python3";
    if ((*out = lp_which(name)))
        return CTARGET_OK;
    if (run->python && *run->python)
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "the Python interpreter %s was not found or is not executable: install "
                     "it, or give the path of an interpreter that exists", name);
    else
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, 0,
                     "python3 was not found on PATH: install Python 3 (Debian/Ubuntu: "
                     "apt-get install python3) or give the interpreter with --python PATH");
    return CTARGET_E_NOT_FOUND;
}

/* Cache keys become directory names: keep them short and harmless. */
static char *key_part(const char *s)
{
    char *k = lp_strdup(s);
    size_t n = 0;
    for (const char *c = s; *c && n < 64; c++)
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9'))
            k[n++] = *c;
    k[n] = '\0';
    return k;
}

/* The dependency file's hash (the core's env_hash, else our own of its bytes). */
static char *file_key(const ctarget_run_info *run, const char *content, size_t len)
{
    char *k = run->env_hash ? key_part(run->env_hash) : lp_strdup("");
    if (*k)
        return k;
    free(k);
    return lp_asprintf("%016llx", lp_fnv1a(content, len, 0));
}

/* ---- the cache --------------------------------------------------------------------------- */

static ctarget_status lock_key(const ctarget_host *h, ctarget_call *call, const char *lockpath,
                               int logfd, int *fd_out, ctarget_error *err)
{
    int fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot open %s: %s", lockpath,
                     strerror(errno));
        return CTARGET_E_IO;
    }
    for (int i = 0; i < LOCK_WAIT_STEPS; i++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            *fd_out = fd;
            return CTARGET_OK;
        }
        if (i == 0)
            logf_(logfd, "[ctarget] another run is building this environment; waiting\n");
        ctarget_status rc = h->sleep_ms(call, 200);
        if (rc != CTARGET_OK) {
            close(fd);
            h->error_set(err, rc, 0, 0, "cancelled while waiting for an environment build");
            return rc;
        }
    }
    close(fd);
    h->error_set(err, CTARGET_E_TIMEOUT, 1, 0, "another run has been building this "
                 "environment for two hours (lock %s)", lockpath);
    return CTARGET_E_TIMEOUT;
}

static int env_ready(const char *link)
{
    char *marker = lp_asprintf("%s/.ctarget-ready", link);
    int ok = access(marker, F_OK) == 0;
    free(marker);
    return ok;
}

/* Remove builds of this key that are not the published one (left by a crash).  Under the
 * key's lock, so no build of it is under way. */
static void purge_stale(const char *envs, const char *key)
{
    char *link = lp_asprintf("%s/%s", envs, key);
    char cur[512] = "";
    ssize_t n = readlink(link, cur, sizeof cur - 1);
    cur[n > 0 ? n : 0] = '\0';
    free(link);
    char *prefix = lp_asprintf("%s.d-", key);
    DIR *d = opendir(envs);
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (!strncmp(de->d_name, prefix, strlen(prefix)) && strcmp(de->d_name, cur)) {
            char *p = lp_asprintf("%s/%s", envs, de->d_name);
            lp_rm_rf(p);
            free(p);
        }
    if (d)
        closedir(d);
    free(prefix);
}

static int publish_env(const char *envs, const char *key, const char *dir)
{
    char *marker = lp_asprintf("%s/.ctarget-ready", dir);
    char *link = lp_asprintf("%s/%s", envs, key);
    char *tmp = lp_asprintf("%s/%s.link-%ld", envs, key, (long)getpid());
    const char *base = strrchr(dir, '/') + 1;
    unlink(tmp);
    int rc = lp_write_file_atomic(marker, "", 0) == 0 && symlink(base, tmp) == 0 &&
                     rename(tmp, link) == 0
                 ? 0
                 : -1;
    if (rc != 0)
        unlink(tmp);
    free(marker);
    free(link);
    free(tmp);
    return rc;
}

static ctarget_status build_locked(const ctarget_host *h, ctarget_call *call,
                                   const char *envs, const char *key, int logfd,
                                   builder_fn build, void *arg, char **dir_out,
                                   ctarget_error *err)
{
    char *link = lp_asprintf("%s/%s", envs, key);
    ctarget_status rc = CTARGET_OK;
    if (env_ready(link)) {
        logf_(logfd, "[ctarget] reusing environment %s\n", key);
        *dir_out = realpath(link, NULL);
        free(link);
        return CTARGET_OK;
    }
    purge_stale(envs, key);
    char *dir = lp_asprintf("%s/%s.d-%ld-%lld", envs, key, (long)getpid(),
                            (long long)h->now_ms());
    logf_(logfd, "[ctarget] building environment %s\n", key);
    rc = build(h, call, dir, logfd, arg, err);
    if (rc == CTARGET_OK && publish_env(envs, key, dir) != 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot publish the environment %s: %s",
                     dir, strerror(errno));
        rc = CTARGET_E_IO;
    }
    if (rc != CTARGET_OK) {
        logf_(logfd, "[ctarget] environment build failed: %s\n", err->message);
        lp_rm_rf(dir);
        free(dir);
    } else {
        logf_(logfd, "[ctarget] environment %s is ready\n", key);
        *dir_out = realpath(dir, NULL); /* the same spelling as a later reuse gives */
        free(dir);
    }
    free(link);
    return rc;
}

static ctarget_status cached_env(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                                 const char *key, int logfd, builder_fn build, void *arg,
                                 char **dir_out, ctarget_error *err)
{
    const char *sd = h->target_state_dir0(t);
    char *envs = sd ? lp_asprintf("%s/envs", sd) : NULL;
    if (!envs || lp_mkdir_p(envs, 0700) != 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "no directory for cached environments "
                     "(%s)", envs ? envs : "the target has no state directory");
        free(envs);
        return CTARGET_E_IO;
    }
    char *lockpath = lp_asprintf("%s/%s.lock", envs, key);
    int fd = -1;
    ctarget_status rc = lock_key(h, call, lockpath, logfd, &fd, err);
    if (rc == CTARGET_OK) {
        *dir_out = NULL;
        rc = build_locked(h, call, envs, key, logfd, build, arg, dir_out, err);
        if (rc == CTARGET_OK && !*dir_out) {
            h->error_set(err, CTARGET_E_IO, 0, errno, "environment %s vanished", key);
            rc = CTARGET_E_IO;
        }
        close(fd);
    }
    free(lockpath);
    free(envs);
    return rc;
}

/* ---- builders ---------------------------------------------------------------------------- */

static ctarget_status run_step(const ctarget_host *h, ctarget_call *call, char *const argv[],
                               int logfd, const char *what, const char *hint,
                               ctarget_error *err)
{
    int st = 0;
    ctarget_status rc = lp_run_cmd(h, call, argv, logfd, NULL, BUILD_TIMEOUT_MS, &st, err);
    if (rc != CTARGET_OK)
        return rc;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return CTARGET_OK;
    char how[96];
    lp_describe_status(st, how, sizeof how);
    h->error_set(err, CTARGET_E_FAILED, 0, 0, "environment build failed: %s ended with %s "
                 "(its output is in the run's log)%s", what, how, hint ? hint : "");
    return CTARGET_E_FAILED;
}

typedef struct pip_arg {
    const char *python;
    const char *file;
    int empty;         /* the file lists no requirement: no pip needed in the venv */
} pip_arg;

static ctarget_status build_venv(const ctarget_host *h, ctarget_call *call, const char *dir,
                                 int logfd, void *arg, ctarget_error *err)
{
    const pip_arg *a = arg;
    char *venv[] = {(char *)a->python, "-m", "venv", a->empty ? "--without-pip" : NULL,
                    NULL, NULL};
    venv[a->empty ? 4 : 3] = (char *)dir;
    ctarget_status rc = run_step(h, call, venv, logfd, "python -m venv",
                                 "; on Debian/Ubuntu install python3-venv", err);
    if (rc != CTARGET_OK || a->empty)
        return rc;
    char *py = lp_asprintf("%s/bin/python", dir);
    char *pip[] = {py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                   "--progress-bar", "off", "-r", (char *)a->file, NULL};
    rc = run_step(h, call, pip, logfd, "pip install -r", NULL, err);
    free(py);
    return rc;
}

typedef struct conda_arg {
    const char *tool;
    const char *file;
} conda_arg;

static ctarget_status build_conda(const ctarget_host *h, ctarget_call *call, const char *dir,
                                  int logfd, void *arg, ctarget_error *err)
{
    const conda_arg *a = arg;
    char *argv[] = {(char *)a->tool, "env", "create", "-p", (char *)dir, "-f", (char *)a->file,
                    NULL};
    return run_step(h, call, argv, logfd, "conda env create", NULL, err);
}

/* A requirements file with nothing but blank lines and comments. */
static int requirements_empty(const char *s)
{
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == '\r')
            s++;
        if (*s && *s != '\n' && *s != '#')
            return 0;
        s = strchr(s, '\n');
        if (!s)
            break;
        s++;
    }
    return 1;
}

static ctarget_status python_version(const ctarget_host *h, ctarget_call *call,
                                     const char *python, char **out, ctarget_error *err)
{
    char *argv[] = {(char *)python, "-c", "import sys; print(sys.version)", NULL};
    int st = 0;
    ctarget_status rc = lp_run_cmd(h, call, argv, -1, out, 30000, &st, err);
    if (rc == CTARGET_OK && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        h->error_set(err, CTARGET_E_FAILED, 0, 0, "%s does not run (asked for its version)",
                     python);
        rc = CTARGET_E_FAILED;
    }
    if (rc == CTARGET_OK && !*out)
        *out = lp_strdup("");
    return rc;
}

static char *read_dep_file(const ctarget_host *h, const ctarget_run_info *run, size_t *len,
                           ctarget_error *err)
{
    char *s = run->env_file ? lp_read_file(run->env_file, len) : NULL;
    if (!s)
        h->error_set(err, CTARGET_E_NOT_FOUND, 0, errno, "the environment's dependency file "
                     "%s cannot be read: %s", run->env_file ? run->env_file : "(none given)",
                     run->env_file ? strerror(errno) : "a file is required");
    return s;
}

static ctarget_status prep_pip(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                               const ctarget_run_info *run, int logfd, lenv *out,
                               ctarget_error *err)
{
    size_t len;
    char *content = read_dep_file(h, run, &len, err), *base = NULL, *ver = NULL;
    if (!content)
        return err->code;
    ctarget_status rc = find_python(h, run, &base, err);
    if (rc == CTARGET_OK)
        rc = python_version(h, call, base, &ver, err);
    if (rc == CTARGET_OK) {
        unsigned long long ih = lp_fnv1a(ver, strlen(ver) + 1, 0);
        ih = lp_fnv1a(base, strlen(base), ih);
        char *fk = file_key(run, content, len);
        char *key = lp_asprintf("pip-%s-%016llx", fk, ih);
        pip_arg a = {base, run->env_file, requirements_empty(content)};
        rc = cached_env(h, call, t, key, logfd, build_venv, &a, &out->env_dir, err);
        if (rc == CTARGET_OK)
            out->python = lp_asprintf("%s/bin/python", out->env_dir);
        free(fk);
        free(key);
    }
    free(content);
    free(base);
    free(ver);
    return rc;
}

static ctarget_status prep_conda(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                                 const ctarget_run_info *run, int logfd, lenv *out,
                                 ctarget_error *err)
{
    char *tool = lp_which("conda");
    if (!tool)
        tool = lp_which("mamba");
    if (!tool) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0, "the run needs a conda environment "
                     "but neither conda nor mamba is on PATH: install Miniforge or Miniconda "
                     "(conda) or mamba, or use a pip requirements file instead");
        return CTARGET_E_UNSUPPORTED;
    }
    size_t len;
    char *content = read_dep_file(h, run, &len, err);
    ctarget_status rc = content ? CTARGET_OK : err->code;
    if (rc == CTARGET_OK) {
        char *fk = file_key(run, content, len);
        char *key = lp_asprintf("conda-%s-%016llx", fk, lp_fnv1a(tool, strlen(tool), 0));
        conda_arg a = {tool, run->env_file};
        rc = cached_env(h, call, t, key, logfd, build_conda, &a, &out->env_dir, err);
        if (rc == CTARGET_OK)
            out->python = lp_asprintf("%s/bin/python", out->env_dir);
        free(fk);
        free(key);
    }
    free(content);
    free(tool);
    return rc;
}

static ctarget_status prep_docker(const ctarget_host *h, ctarget_call *call,
                                  const ctarget_run_info *run, int logfd, lenv *out,
                                  ctarget_error *err)
{
    if (run->env_kind != CTARGET_ENV_USER) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0, "the local target runs container "
                     "images as they are: install the dependencies in the image %s instead "
                     "of giving a requirements or conda file", run->docker_image);
        return CTARGET_E_UNSUPPORTED;
    }
    char *engine = lp_which("docker");
    if (!engine)
        engine = lp_which("podman");
    if (!engine) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0, "the run uses the container image %s "
                     "but neither docker nor podman is installed: install Docker Engine or "
                     "Podman", run->docker_image);
        return CTARGET_E_UNSUPPORTED;
    }
    char *argv[] = {engine, "info", NULL};
    int st = 0;
    logf_(logfd, "[ctarget] checking the container engine %s\n", engine);
    ctarget_status rc = lp_run_cmd(h, call, argv, logfd, NULL, 30000, &st, err);
    if (rc == CTARGET_OK && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        h->error_set(err, CTARGET_E_UNSUPPORTED, 0, 0, "%s is installed but its engine is not "
                     "running (`%s info` failed): start it (for example `sudo systemctl start "
                     "docker`) or install Podman", engine, engine);
        rc = CTARGET_E_UNSUPPORTED;
    }
    if (rc == CTARGET_OK) {
        out->engine = engine;
        out->python = lp_strdup(run->python && *run->python ? run->python : "python");
    } else {
        free(engine);
    }
    return rc;
}

ctarget_status lenv_prepare(const ctarget_host *h, ctarget_call *call, ctarget_target *t,
                            const ctarget_run_info *run, const lrun_paths *p, lenv *out,
                            ctarget_error *err)
{
    memset(out, 0, sizeof *out);
    int logfd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    ctarget_status rc;
    if (run->docker_image && *run->docker_image)
        rc = prep_docker(h, call, run, logfd, out, err);
    else if (run->env_kind == CTARGET_ENV_PIP)
        rc = prep_pip(h, call, t, run, logfd, out, err);
    else if (run->env_kind == CTARGET_ENV_CONDA)
        rc = prep_conda(h, call, t, run, logfd, out, err);
    else
        rc = find_python(h, run, &out->python, err);
    if (logfd >= 0)
        close(logfd);
    if (rc != CTARGET_OK)
        lenv_free(out);
    return rc;
}
