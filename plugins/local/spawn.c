/* The wrapper that runs a script and outlives the monitor.
 *
 *   monitor --fork--> X: setsid --fork--> A (wrapper) --fork--> B: setpgid(0,0); execve(script)
 *                     X exits at once, so A belongs to no monitor and survives it.
 *
 * A is a child subreaper: it reaps the script and any of its orphaned children, records the
 * script's pid and start time (pid file) before anything else and how it ended (exit_status)
 * afterwards, then kills what the script left behind in its process group.  The script runs
 * in a process group of its own (pgid = B) so cancel() can signal all of it without touching
 * A, which therefore always lives to record the ending, even a SIGKILL.
 *
 * Between fork and exec only async-signal-safe calls are made: the monitor may have threads.
 * Everything (argv, envp, paths, messages) is prepared before the first fork. */
#include "config.h"

#include "local.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SPEC_MAGIC "ctarget-launch 1"

typedef struct spec {
    char *buf;       /* the file; every string below points into it */
    char **argv;
    char **envp;
    const char *cwd;
} spec;

typedef struct wrapper_ctx {
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const char *pidf, *pid_tmp;
    const char *status, *status_tmp;
    const char *exec_msg;   /* "ctarget: cannot execute <argv0>: errno " */
    const char *chdir_msg;
} wrapper_ctx;

/* ---- the spec file: NUL-separated strings ------------------------------------------------ */

static void put(FILE *f, const char *s)
{
    fputs(s, f);
    fputc('\0', f);
}

int lspawn_write_spec(const char *path, char *const argv[], char *const envp[], const char *cwd)
{
    char *data = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&data, &len);
    if (!f)
        return -1;
    size_t na = 0, ne = 0;
    while (argv[na])
        na++;
    while (envp[ne])
        ne++;
    char num[32];
    put(f, SPEC_MAGIC);
    snprintf(num, sizeof num, "%zu", na);
    put(f, num);
    for (size_t i = 0; i < na; i++)
        put(f, argv[i]);
    snprintf(num, sizeof num, "%zu", ne);
    put(f, num);
    for (size_t i = 0; i < ne; i++)
        put(f, envp[i]);
    put(f, cwd);
    fclose(f);
    int rc = lp_write_file_atomic(path, data, len);
    free(data);
    return rc;
}

/* Next NUL-terminated string of buf[0..len), or NULL at the end. */
static char *next_str(char *buf, size_t len, size_t *pos)
{
    if (*pos >= len)
        return NULL;
    char *s = buf + *pos;
    size_t n = strnlen(s, len - *pos);
    if (*pos + n >= len)
        return NULL; /* unterminated: a truncated file */
    *pos += n + 1;
    return s;
}

static char **read_list(char *buf, size_t len, size_t *pos)
{
    char *cnt = next_str(buf, len, pos);
    char *end;
    unsigned long n = cnt ? strtoul(cnt, &end, 10) : 0;
    if (!cnt || *end || n > 1000000)
        return NULL;
    char **list = lp_xrealloc(NULL, (n + 1) * sizeof *list);
    for (unsigned long i = 0; i < n; i++)
        if (!(list[i] = next_str(buf, len, pos))) {
            free(list);
            return NULL;
        }
    list[n] = NULL;
    return list;
}

static void spec_free(spec *s)
{
    free(s->buf);
    free(s->argv);
    free(s->envp);
    memset(s, 0, sizeof *s);
}

static int spec_read(const char *path, spec *s)
{
    memset(s, 0, sizeof *s);
    size_t len, pos = 0;
    if (!(s->buf = lp_read_file(path, &len)))
        return -1;
    const char *magic = next_str(s->buf, len, &pos);
    if (magic && !strcmp(magic, SPEC_MAGIC) && (s->argv = read_list(s->buf, len, &pos)) &&
        s->argv[0] && (s->envp = read_list(s->buf, len, &pos)) &&
        (s->cwd = next_str(s->buf, len, &pos)))
        return 0;
    spec_free(s);
    errno = EINVAL;
    return -1;
}

/* ---- async-signal-safe pieces ----------------------------------------------------------- */

static size_t fmt_ull(char *out, unsigned long long v)
{
    char d[24];
    size_t n = 0, i = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        out[i++] = d[--n];
    return i;
}

static size_t append(char *buf, size_t at, const char *s)
{
    while (*s)
        buf[at++] = *s++;
    return at;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_str(int fd, const char *s)
{
    ssize_t w = write(fd, s, strlen(s));
    (void)w;
}

/* tmp file + rename, so a reader sees the whole record or nothing */
static void publish(const char *tmp, const char *path, const char *data, size_t len)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, data, len);
    (void)w;
    close(fd);
    rename(tmp, path);
}

static _Noreturn void exec_script(const wrapper_ctx *w)
{
    setpgid(0, 0);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    close(3);
    if (chdir(w->cwd) != 0) {
        write_str(2, w->chdir_msg);
        _exit(127);
    }
    execve(w->argv[0], w->argv, w->envp);
    char num[24];
    num[fmt_ull(num, (unsigned long long)errno)] = '\0';
    write_str(2, w->exec_msg);
    write_str(2, num);
    write_str(2, ")\n");
    _exit(127);
}

static void record_pids(const wrapper_ctx *w, pid_t b)
{
    unsigned long long as = 0, bs = 0;
    lp_proc_stat(getpid(), &as, NULL);
    lp_proc_stat(b, &bs, NULL);
    char buf[160];
    size_t n = fmt_ull(buf, (unsigned long long)getpid());
    n = append(buf, n, " ");
    n += fmt_ull(buf + n, as);
    n = append(buf, n, " ");
    n += fmt_ull(buf + n, (unsigned long long)b);
    n = append(buf, n, " ");
    n += fmt_ull(buf + n, bs);
    n = append(buf, n, " ");
    n += fmt_ull(buf + n, (unsigned long long)now_ms());
    n = append(buf, n, "\n");
    publish(w->pid_tmp, w->pidf, buf, n);
}

static void record_status(const wrapper_ctx *w, int st)
{
    char buf[96];
    size_t n;
    if (WIFSIGNALED(st)) {
        n = append(buf, 0, "signal ");
        n += fmt_ull(buf + n, (unsigned long long)WTERMSIG(st));
    } else {
        n = append(buf, 0, "exit ");
        n += fmt_ull(buf + n, (unsigned long long)WEXITSTATUS(st));
    }
    n = append(buf, n, " ");
    n += fmt_ull(buf + n, (unsigned long long)now_ms());
    n = append(buf, n, "\n");
    publish(w->status_tmp, w->status, buf, n);
}

/* Reap whatever is left (orphans of the script come to us as subreaper), for at most 2 s:
 * a daemon that left the process group is not ours to wait for. */
static void reap_rest(void)
{
    for (int i = 0; i < 200; i++) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r < 0 && errno == ECHILD)
            return;
        if (r <= 0) {
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

static void wrapper_fds(int logfd, int nullfd, int pipew)
{
    /* lift the three above the stdio range first: any of them may be 0, 1 or 2 */
    int p = fcntl(pipew, F_DUPFD, 10), l = fcntl(logfd, F_DUPFD, 10),
        n = fcntl(nullfd, F_DUPFD, 10);
    if (p < 0 || l < 0 || n < 0)
        _exit(126);
    dup2(n, 0);
    dup2(l, 1);
    dup2(l, 2);
    dup2(p, 3);
    /* the monitor's descriptors (workspace store, flock'd lock files) must not stay open
     * in a process that lives on after the monitor */
    if (close_range(4, ~0U, 0) != 0)
        for (int fd = 4; fd < 4096; fd++)
            close(fd);
}

static _Noreturn void wrapper_main(const wrapper_ctx *w, int logfd, int nullfd, int pipew)
{
    wrapper_fds(logfd, nullfd, pipew);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);
    sa.sa_handler = SIG_DFL; /* waitpid needs SIGCHLD not ignored */
    sigaction(SIGCHLD, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    pid_t b = fork();
    if (b < 0) {
        write_str(3, "E");
        _exit(126);
    }
    if (b == 0)
        exec_script(w);
    setpgid(b, b); /* also from this side: no window where B is still in our group */
    record_pids(w, b);
    write_str(3, "ok");
    close(3);
    int st = 0;
    for (;;) {
        pid_t r = waitpid(-1, &st, 0);
        if (r == b)
            break;
        if (r < 0 && errno != EINTR)
            _exit(125); /* cannot happen; no status means NotResponding, which is honest */
    }
    record_status(w, st);
    kill(-b, SIGKILL); /* the run is over: nothing of it keeps running or writing */
    reap_rest();
    _exit(0);
}

/* ---- the monitor side ------------------------------------------------------------------- */

/* Wait for the wrapper's "ok" (or EOF) on the pipe, at most 10 s. */
static int await_start(int fd)
{
    char buf[8];
    size_t got = 0;
    for (int i = 0; i < 1000; i++) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, 10);
        if (r < 0 && errno != EINTR)
            break;
        if (r <= 0)
            continue;
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0 || (got += (size_t)n) >= sizeof buf - 1)
            break;
    }
    buf[got] = '\0';
    return strncmp(buf, "ok", 2) == 0 ? 0 : -1;
}

static int fork_wrapper(const wrapper_ctx *w, int logfd, int nullfd, int pipew)
{
    pid_t x = fork();
    if (x < 0)
        return -1;
    if (x == 0) {
        setsid();
        pid_t a = fork();
        if (a == 0)
            wrapper_main(w, logfd, nullfd, pipew);
        _exit(a < 0 ? 1 : 0);
    }
    int st;
    while (waitpid(x, &st, 0) < 0 && errno == EINTR)
        ;
    return 0;
}

int lspawn_launch(const lrun_paths *p, lrun_pids *out)
{
    spec s;
    if (spec_read(p->spec, &s) != 0)
        return -1;
    char *pid_tmp = lp_asprintf("%s.tmp", p->pidf);
    char *status_tmp = lp_asprintf("%s.tmp", p->status);
    char *exec_msg = lp_asprintf("ctarget: cannot execute %s (errno ", s.argv[0]);
    char *chdir_msg = lp_asprintf("ctarget: cannot enter the directory %s\n", s.cwd);
    wrapper_ctx w = {s.argv, s.envp, s.cwd, p->pidf, pid_tmp, p->status, status_tmp,
                     exec_msg, chdir_msg};
    int rc = -1, e = 0;
    int logfd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int pfd[2] = {-1, -1};
    if (logfd >= 0 && nullfd >= 0 && pipe2(pfd, O_CLOEXEC) == 0 &&
        fork_wrapper(&w, logfd, nullfd, pfd[1]) == 0) {
        close(pfd[1]);
        pfd[1] = -1;
        rc = await_start(pfd[0]) == 0 ? lspawn_read_pids(p, out) : (errno = ECHILD, -1);
    }
    e = errno;
    int fds[] = {logfd, nullfd, pfd[0], pfd[1]};
    for (size_t i = 0; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(pid_tmp);
    free(status_tmp);
    free(exec_msg);
    free(chdir_msg);
    spec_free(&s);
    errno = e;
    return rc;
}

int lspawn_read_pids(const lrun_paths *p, lrun_pids *out)
{
    char *s = lp_read_file(p->pidf, NULL);
    if (!s)
        return -1;
    int n = sscanf(s, "%ld %llu %ld %llu %lld", &out->wrapper_pid, &out->wrapper_start,
                   &out->pid, &out->pid_start, &out->started_ms);
    free(s);
    if (n != 5 || out->pid <= 0 || out->wrapper_pid <= 0) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

int lspawn_read_status(const lrun_paths *p, lrun_status *out)
{
    char *s = lp_read_file(p->status, NULL);
    if (!s)
        return -1;
    char kind[16];
    int n = sscanf(s, "%15s %d %lld", kind, &out->code, &out->end_ms);
    free(s);
    if (n != 3 || (strcmp(kind, "exit") && strcmp(kind, "signal"))) {
        errno = EINVAL;
        return -1;
    }
    out->exited = !strcmp(kind, "exit");
    return 0;
}
