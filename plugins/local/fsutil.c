/* Small libc helpers for the local plugin: strings, files, trees, processes.  The plugin
 * never links libctarget, so it cannot borrow the core's util.c. */
#include "config.h"

#include "local.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void oom(void)
{
    static const char msg[] = "ctarget local plugin: out of memory\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    abort();
}

void *lp_xrealloc(void *p, size_t n)
{
    void *r = realloc(p, n ? n : 1);
    if (!r)
        oom();
    return r;
}

char *lp_strdup(const char *s)
{
    char *r = strdup(s ? s : "");
    if (!r)
        oom();
    return r;
}

char *lp_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *r = NULL;
    int n = vasprintf(&r, fmt, ap);
    va_end(ap);
    if (n < 0)
        oom();
    return r;
}

int lp_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int lp_mkdir_p(const char *path, mode_t mode)
{
    char *p = lp_strdup(path);
    int rc = 0;
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, mode) != 0 && errno != EEXIST) {
            rc = -1;
            break;
        }
        *s = c;
        if (!c)
            break;
    }
    free(p);
    return rc;
}

/* Recursive removal that never follows symlinks (a script may leave links to anywhere). */
static int rm_rf_at(int dfd, const char *name, int depth)
{
    if (depth > 256)
        return -1;
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -1;
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            rc |= rm_rf_at(dirfd(d), de->d_name, depth + 1);
    closedir(d);
    if (unlinkat(dfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        rc = -1;
    return rc;
}

int lp_rm_rf(const char *path)
{
    return rm_rf_at(AT_FDCWD, path, 0);
}

char *lp_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 4096, n = 0;
    char *buf = lp_xrealloc(NULL, cap);
    for (;;) {
        if (n + 1 >= cap)
            buf = lp_xrealloc(buf, cap *= 2);
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            errno = e;
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int lp_write_file_atomic(const char *path, const void *data, size_t len)
{
    char *tmp = lp_asprintf("%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd >= 0) {
        rc = write_all(fd, data, len);
        if (close(fd) != 0)
            rc = -1;
        if (rc == 0)
            rc = rename(tmp, path);
        if (rc != 0)
            unlink(tmp);
    }
    free(tmp);
    return rc;
}

static int copy_file(const char *src, const char *dst, mode_t mode)
{
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0)
        return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777);
    if (out < 0) {
        close(in);
        return -1;
    }
    char buf[65536];
    int rc = 0;
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? -1 : 0;
            break;
        }
        if (write_all(out, buf, (size_t)r) != 0) {
            rc = -1;
            break;
        }
    }
    close(in);
    if (close(out) != 0)
        rc = -1;
    return rc;
}

static int copy_entry(const char *s, const char *d, int depth);

static int copy_dir(const char *src, const char *dst, mode_t mode, int depth)
{
    if (mkdir(dst, (mode & 07777) | 0700) != 0 && errno != EEXIST)
        return -1;
    DIR *dir = opendir(src);
    if (!dir)
        return -1;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *s = lp_asprintf("%s/%s", src, de->d_name);
        char *d = lp_asprintf("%s/%s", dst, de->d_name);
        rc |= copy_entry(s, d, depth + 1);
        free(s);
        free(d);
    }
    closedir(dir);
    return rc;
}

static int copy_entry(const char *s, const char *d, int depth)
{
    struct stat st;
    if (depth > 128 || lstat(s, &st) != 0)
        return -1;
    if (S_ISDIR(st.st_mode)) {
        struct stat dt;
        if (lstat(d, &dt) == 0 && !S_ISDIR(dt.st_mode))
            lp_rm_rf(d);
        return copy_dir(s, d, st.st_mode, depth);
    }
    lp_rm_rf(d); /* overwrite: fetching again replaces what an earlier fetch left */
    if (S_ISREG(st.st_mode)) {
        if (link(s, d) == 0)
            return 0;
        return copy_file(s, d, st.st_mode);
    }
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlink(s, target, sizeof target - 1);
        if (n < 0)
            return -1;
        target[n] = '\0';
        return symlink(target, d);
    }
    return 0; /* fifos, sockets, devices are not outputs */
}

int lp_copy_tree(const char *src, const char *dst)
{
    struct stat st;
    if (lstat(src, &st) != 0 || !S_ISDIR(st.st_mode))
        return lp_mkdir_p(dst, 0700);
    if (lp_mkdir_p(dst, 0700) != 0)
        return -1;
    return copy_dir(src, dst, st.st_mode, 0);
}

char *lp_which(const char *name)
{
    if (!name || !*name)
        return NULL;
    if (strchr(name, '/')) {
        /* not realpath(): a venv's bin/python is a symlink whose location is what makes
         * it the venv's interpreter */
        if (access(name, X_OK) != 0)
            return NULL;
        if (name[0] == '/')
            return lp_strdup(name);
        char *cwd = getcwd(NULL, 0);
        char *r = lp_asprintf("%s/%s", cwd ? cwd : ".", name);
        free(cwd);
        return r;
    }
    const char *path = getenv("PATH");
    char *copy = lp_strdup(path ? path : "/usr/local/bin:/usr/bin:/bin");
    char *found = NULL, *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir && !found;
         dir = strtok_r(NULL, ":", &save)) {
        char *cand = lp_asprintf("%s/%s", *dir ? dir : ".", name);
        struct stat st;
        if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0)
            found = cand;
        else
            free(cand);
    }
    free(copy);
    return found;
}

unsigned long long lp_fnv1a(const void *data, size_t len, unsigned long long h)
{
    const unsigned char *p = data;
    if (!h)
        h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* ---- processes -------------------------------------------------------------------------- */

int lp_proc_stat(pid_t pid, unsigned long long *start, char *state)
{
    /* built by hand: this runs between fork and exec, where snprintf is not allowed */
    char path[64] = "/proc/";
    char digits[24];
    int nd = 0;
    unsigned long v = (unsigned long)pid;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && nd < 20);
    size_t n = 6;
    while (nd)
        path[n++] = digits[--nd];
    memcpy(path + n, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[1024];
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return -1;
    buf[r] = '\0';
    /* the command name may contain spaces and ')': fields start after the last ')' */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -1;
    p += 2;
    if (state)
        *state = *p;
    for (int field = 3; field < 22 && *p; p++)
        if (*p == ' ')
            field++;
    unsigned long long s = 0;
    while (*p >= '0' && *p <= '9')
        s = s * 10 + (unsigned long long)(*p++ - '0');
    if (start)
        *start = s;
    return 0;
}

int lp_pid_alive(pid_t pid, unsigned long long start)
{
    unsigned long long s;
    char st;
    if (pid <= 0 || lp_proc_stat(pid, &s, &st) != 0)
        return 0;
    if (st == 'Z' || st == 'X')
        return 0;
    return start == 0 || s == start;
}

int lp_pgrp_empty(pid_t pgid)
{
    return pgid > 0 && kill(-pgid, 0) != 0 && errno == ESRCH;
}

void lp_describe_status(int wstatus, char *buf, size_t size)
{
    if (WIFEXITED(wstatus)) {
        snprintf(buf, size, "exit code %d", WEXITSTATUS(wstatus));
    } else if (WIFSIGNALED(wstatus)) {
        const char *abbrev = sigabbrev_np(WTERMSIG(wstatus));
        snprintf(buf, size, "killed by signal %d (SIG%s)", WTERMSIG(wstatus),
                 abbrev ? abbrev : "?");
    } else {
        snprintf(buf, size, "ended with wait status %d", wstatus);
    }
}

static void drain(int fd, char **captured, size_t *len)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = read(fd, tmp, sizeof tmp);
        if (n <= 0)
            return;
        if (*len < 65536) { /* a version string or an error line: bounded */
            *captured = lp_xrealloc(*captured, *len + (size_t)n + 1);
            memcpy(*captured + *len, tmp, (size_t)n);
            *len += (size_t)n;
            (*captured)[*len] = '\0';
        }
    }
}

static pid_t spawn_cmd(char *const argv[], int out_fd, int pipe_w)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    int fd = pipe_w >= 0 ? pipe_w : out_fd;
    if (fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, fd, 1);
        posix_spawn_file_actions_adddup2(&fa, fd, 2);
    } else {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    }
    /* the monitor's other descriptors (store, locks) must not leak into builds */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        errno = rc;
        return -1;
    }
    return pid;
}

ctarget_status lp_run_cmd(const ctarget_host *h, ctarget_call *call, char *const argv[],
                          int out_fd, char **captured, long timeout_ms, int *wstatus,
                          ctarget_error *err)
{
    int pfd[2] = {-1, -1};
    if (captured && pipe2(pfd, O_CLOEXEC | O_NONBLOCK) != 0) {
        h->error_set(err, CTARGET_E_IO, 0, errno, "cannot create a pipe for %s", argv[0]);
        return CTARGET_E_IO;
    }
    size_t clen = 0;
    if (captured)
        *captured = NULL;
    pid_t pid = spawn_cmd(argv, out_fd, pfd[1]);
    int e = errno;
    if (pfd[1] >= 0)
        close(pfd[1]);
    if (pid < 0) {
        if (pfd[0] >= 0)
            close(pfd[0]);
        h->error_set(err, CTARGET_E_FAILED, 0, e, "cannot run %s: %s", argv[0], strerror(e));
        return CTARGET_E_FAILED;
    }
    int64_t deadline = timeout_ms > 0 ? h->monotonic_ns() + (int64_t)timeout_ms * 1000000 : 0;
    ctarget_status rc = CTARGET_OK;
    for (;;) {
        if (pfd[0] >= 0)
            drain(pfd[0], captured, &clen);
        pid_t r = waitpid(pid, wstatus, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            break;
        if (h->cancelled(call) || (deadline && h->monotonic_ns() > deadline)) {
            rc = h->cancelled(call) ? CTARGET_E_CANCELED : CTARGET_E_TIMEOUT;
            kill(-pid, SIGKILL);
            waitpid(pid, wstatus, 0);
            h->error_set(err, rc, 0, 0, "%s %s", argv[0],
                         rc == CTARGET_E_CANCELED ? "was stopped: the operation was cancelled"
                                                  : "took too long and was stopped");
            break;
        }
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    if (pfd[0] >= 0) {
        drain(pfd[0], captured, &clen);
        close(pfd[0]);
    }
    return rc;
}

/* ---- run paths ------------------------------------------------------------------------ */

void lrun_paths_init(lrun_paths *p, const char *work_dir)
{
    p->work = lp_strdup(work_dir);
    p->src = lp_asprintf("%s/src", work_dir);
    p->marker = lp_asprintf("%s/src.snapshot", work_dir);
    p->outputs = lp_asprintf("%s/src/outputs", work_dir);
    p->log = lp_asprintf("%s/output.log", work_dir);
    p->metrics = lp_asprintf("%s/metrics.jsonl", work_dir);
    p->spec = lp_asprintf("%s/launch.spec", work_dir);
    p->pidf = lp_asprintf("%s/pid", work_dir);
    p->status = lp_asprintf("%s/exit_status", work_dir);
    p->cancel = lp_asprintf("%s/cancel_requested", work_dir);
    p->launch_err = lp_asprintf("%s/launch_error", work_dir);
}

void lrun_paths_free(lrun_paths *p)
{
    char **all[] = {&p->work, &p->src, &p->marker, &p->outputs, &p->log, &p->metrics,
                    &p->spec, &p->pidf, &p->status, &p->cancel, &p->launch_err};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        free(*all[i]);
        *all[i] = NULL;
    }
}
