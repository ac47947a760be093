/* Run monitor processes: the liveness lock, the detached start, and recovery.
 *
 * Liveness is a POSIX record lock (fcntl F_SETLK) on <run dir>/monitor.lock, held by the
 * monitor for its whole life.  Record locks belong to the process, are released by the
 * kernel when it dies however it dies (kill -9 included), and - unlike flock() or OFD
 * locks - are never inherited by children: a script or wrapper the plugin forks cannot
 * keep a dead monitor's lock alive.  F_GETLK also names the holder's pid.  The pid and
 * start time recorded in the run row are for people (run show), not for the decision. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "run.h"
#include "util.h"
#include "ws.h"

static char *monitor_program;

void ctarget_set_monitor_program(const char *path)
{
    free(monitor_program);
    monitor_program = path ? xstrdup(path) : NULL;
}

pid_t run_monitor_holder(const char *ws_dir, const char *id)
{
    char *path = run_file(ws_dir, id, "monitor.lock");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    int rc = fcntl(fd, F_GETLK, &fl);
    close(fd);
    if (rc != 0)
        return -1;
    return fl.l_type == F_UNLCK ? 0 : fl.l_pid;
}

/* Everything the detached process must not inherit: the caller's terminal, pipes (a test
 * harness or `$(ctarget run submit ...)` waits for EOF on them) and signal setup. */
static void detach_fds(const char *ws_dir, const char *id)
{
    int null = open("/dev/null", O_RDWR);
    char *logp = run_file(ws_dir, id, "monitor.log");
    int logfd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
    free(logp);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
    }
    dup2(logfd >= 0 ? logfd : null, 2);
    /* one syscall instead of one close() per possible descriptor (20000 here) */
    if (close_range(3, ~0U, 0) != 0) {
        long max = sysconf(_SC_OPEN_MAX);
        if (max < 0 || max > 65536)
            max = 65536;
        for (int fd = 3; fd < max; fd++)
            close(fd);
    }
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_IGN);
}

/* The program monitors run as: the one set by the caller (the ctarget command sets itself),
 * else $CTARGET_MONITOR_PROGRAM, else the installed ctarget command.  There is deliberately
 * no "run the monitor in the forked child" mode: SQLite connections and their POSIX locks
 * must not cross fork(), and a library caller may have threads. */
static const char *program(void)
{
    if (monitor_program)
        return monitor_program;
    const char *env = getenv("CTARGET_MONITOR_PROGRAM");
    return env && *env ? env : CTARGET_BINDIR "/ctarget";
}

static void monitor_child(const char *ws_dir, const char *id, const char *prog)
{
    detach_fds(ws_dir, id);
    char *argv[] = {(char *)prog, "--workspace", (char *)ws_dir, "run", "__monitor", (char *)id,
                    NULL};
    execv(prog, argv);
    fprintf(stderr, "ctarget monitor: cannot run %s: %s\n", prog, strerror(errno));
    _exit(127);
}

ctarget_status run_spawn_monitor(const char *ws_dir, const char *id, ctarget_error *err)
{
    const char *prog = program();
    if (access(prog, X_OK) != 0) {
        ct_err_errno(err, CTARGET_E_NOT_FOUND, errno, "cannot start the monitor of run %s: "
                     "%s is not an executable (set CTARGET_MONITOR_PROGRAM)", id, prog);
        return CTARGET_E_NOT_FOUND;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        ct_err_errno(err, CTARGET_E_FAILED, errno, "cannot start the monitor of run %s", id);
        return CTARGET_E_FAILED;
    }
    if (pid == 0) {
        /* double fork: the monitor is not our child (no zombie, no SIGCHLD for the caller)
         * and, after setsid, belongs to no terminal, so closing the shell leaves it be */
        setsid();
        pid_t p2 = fork();
        if (p2 != 0)
            _exit(p2 < 0 ? 1 : 0);
        monitor_child(ws_dir, id, prog);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        ct_err(err, CTARGET_E_FAILED, "cannot start the monitor of run %s", id);
        return CTARGET_E_FAILED;
    }
    return CTARGET_OK;
}

int run_ensure_monitor(ctarget_ws *ws, json_t *row)
{
    const char *id = json_string_value(json_object_get(row, "id"));
    const char *phase = json_string_value(json_object_get(row, "phase"));
    if (!id || (rs_terminal(run_row_state(row)) && phase && !strcmp(phase, "done")))
        return 0;
    /* a run submitted a moment ago has its first monitor on the way: do not race it */
    if (json_integer_value(json_object_get(row, "monitor_starts")) == 0 &&
        time_now_ms() - json_integer_value(json_object_get(row, "created_at")) < 2000)
        return 0;
    if (run_monitor_holder(ws->dir, id) != 0)
        return 0;
    /* two commands may both get here: the second monitor finds the lock taken and exits */
    ctarget_error err;
    ctarget_error_init(&err);
    log_msg(CTARGET_LOG_INFO, "run %s has no live monitor: starting a new one", id);
    if (run_spawn_monitor(ws->dir, id, &err) != CTARGET_OK) {
        log_msg(CTARGET_LOG_WARN, "%s", err.message);
        return 0;
    }
    return 1;
}
