#define _GNU_SOURCE
#include "testlib.h"

#include <CUnit/Basic.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

static char **tmpdirs;
static size_t n_tmpdirs;

static void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        chmod(path, 0700);
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                    continue;
                char *c = tl_path(path, de->d_name);
                rm_tree(c);
                free(c);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void cleanup_tmpdirs(void)
{
    const char *keep = getenv("CTARGET_TEST_KEEP");
    for (size_t i = 0; i < n_tmpdirs; i++) {
        if (!keep || strcmp(keep, "1"))
            rm_tree(tmpdirs[i]);
        else
            fprintf(stderr, "kept %s\n", tmpdirs[i]);
        free(tmpdirs[i]);
    }
    free(tmpdirs);
}

const char *tl_srcdir(void)
{
    const char *s = getenv("CTARGET_TEST_SRCDIR");
    return s ? s : ".";
}

const char *tl_builddir(void)
{
    const char *s = getenv("CTARGET_TEST_BUILDDIR");
    return s ? s : ".";
}

const char *tl_ctarget(void)
{
    const char *s = getenv("CTARGET_BIN");
    return s ? s : "ctarget";
}

char *tl_path(const char *dir, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        abort();
    return p;
}

char *tl_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    char *tmpl;
    if (asprintf(&tmpl, "%s/ctarget-%s-XXXXXX", base && *base ? base : "/tmp", tag) < 0)
        abort();
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        abort();
    }
    tmpdirs = realloc(tmpdirs, (n_tmpdirs + 1) * sizeof *tmpdirs);
    tmpdirs[n_tmpdirs++] = strdup(tmpl);
    return tmpl;
}

static char **build_env(const char *const extra[])
{
    size_t n = 0;
    while (environ[n])
        n++;
    size_t m = 0;
    while (extra && extra[m])
        m++;
    char **env = calloc(n + m + 1, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int overridden = 0;
        for (size_t j = 0; j < m; j++) {
            size_t kl = strcspn(extra[j], "=");
            if (!strncmp(environ[i], extra[j], kl) && environ[i][kl] == '=')
                overridden = 1;
        }
        if (!overridden)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < m; j++) {
        const char *eq = strchr(extra[j], '=');
        if (eq && eq[1])
            env[k++] = (char *)extra[j];
    }
    env[k] = NULL;
    return env;
}

static void append(char **buf, size_t *len, const char *data, size_t n)
{
    *buf = realloc(*buf, *len + n + 1);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

tl_result tl_exec(const char *const argv[], const char *stdin_data, const char *const env_extra[])
{
    tl_result r = {-1, calloc(1, 1), calloc(1, 1)};
    int in[2], out[2], err[2];
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC))
        abort();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    char **env = build_env(env_extra);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (rc != 0) {
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(rc));
        close(in[1]);
        close(out[0]);
        close(err[0]);
        return r;
    }
    signal(SIGPIPE, SIG_IGN);
    size_t in_off = 0, in_len = stdin_data ? strlen(stdin_data) : 0;
    if (!in_len) {
        close(in[1]);
        in[1] = -1;
    }
    size_t out_len = 0, err_len = 0;
    int open_fds = 2;
    while (open_fds > 0 || in[1] >= 0) {
        struct pollfd p[3] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0},
                              {in[1], POLLOUT, 0}};
        if (poll(p, 3, 120000) <= 0) {
            fprintf(stderr, "tl_exec: %s produced nothing for 120 s; killing it\n", argv[0]);
            kill(pid, SIGKILL);
            break;
        }
        for (int i = 0; i < 2; i++)
            if (p[i].revents & (POLLIN | POLLHUP)) {
                char buf[65536];
                ssize_t n = read(p[i].fd, buf, sizeof buf);
                if (n > 0) {
                    if (i == 0)
                        append(&r.out, &out_len, buf, (size_t)n);
                    else
                        append(&r.err, &err_len, buf, (size_t)n);
                } else if (n == 0 || errno != EINTR) {
                    p[i].fd = -1;
                    if (i == 0) {
                        close(out[0]);
                        out[0] = -1;
                    } else {
                        close(err[0]);
                        err[0] = -1;
                    }
                    open_fds--;
                }
            }
        if (in[1] >= 0 && (p[2].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t n = write(in[1], stdin_data + in_off, in_len - in_off);
            if (n > 0)
                in_off += (size_t)n;
            if (n < 0 || in_off >= in_len) {
                close(in[1]);
                in[1] = -1;
            }
        }
    }
    if (out[0] >= 0)
        close(out[0]);
    if (err[0] >= 0)
        close(err[0]);
    if (in[1] >= 0)
        close(in[1]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

tl_result tl_ctarget_run(const char *ws, const char *stdin_data, const char *const env_extra[],
                         const char *const args[])
{
    const char *argv[128];
    size_t n = 0;
    argv[n++] = tl_ctarget();
    if (ws) {
        argv[n++] = "--workspace";
        argv[n++] = ws;
    }
    for (size_t i = 0; args[i] && n < 127; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return tl_exec(argv, stdin_data, env_extra);
}

void tl_result_free(tl_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

void tl_dump(const char *what, const tl_result *r)
{
    fprintf(stdout, "--- %s (exit %d)\n--- stdout:\n%s\n--- stderr:\n%s\n---\n", what,
            r->status, r->out ? r->out : "", r->err ? r->err : "");
}

json_t *tl_json(const tl_result *r)
{
    json_error_t e;
    json_t *j = json_loads(r->out ? r->out : "", JSON_DECODE_ANY, &e);
    if (!j)
        tl_dump("stdout is not JSON", r);
    CU_ASSERT_PTR_NOT_NULL(j);
    return j;
}

int tl_write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(content, f);
    return fclose(f);
}

char *tl_read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        append(&buf, &len, tmp, n);
    fclose(f);
    return buf ? buf : calloc(1, 1);
}

int tl_contains(const char *haystack, const char *needle)
{
    return haystack && needle && strstr(haystack, needle) != NULL;
}

char *tl_tree_grep(const char *dir, const char *needle, size_t needle_len)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char *hit = NULL;
    struct dirent *de;
    while (!hit && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *p = tl_path(dir, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                hit = tl_tree_grep(p, needle, needle_len);
            } else if (S_ISREG(st.st_mode)) {
                FILE *f = fopen(p, "rb");
                if (f) {
                    char *buf = malloc((size_t)st.st_size + 1);
                    size_t n = fread(buf, 1, (size_t)st.st_size, f);
                    fclose(f);
                    if (n >= needle_len && memmem(buf, n, needle, needle_len))
                        hit = strdup(p);
                    free(buf);
                }
            }
        }
        free(p);
    }
    closedir(d);
    return hit;
}

long long tl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tl_main(int argc, char **argv, const char *name, void (*add_tests)(CU_pSuite suite))
{
    (void)argc;
    (void)argv;
    atexit(cleanup_tmpdirs);
    /* a hung test must not hang `make check`: the whole program gets 10 minutes */
    alarm(600);
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 99;
    CU_pSuite s = CU_add_suite(name, NULL, NULL);
    add_tests(s);
    /* TL_ONLY="t14 t16": run only the tests whose names contain one of its words */
    const char *only = getenv("TL_ONLY");
    if (only && *only) {
        CU_set_fail_on_inactive(CU_FALSE);
        for (CU_pTest t = s->pTest; t; t = t->pNext) {
            int want = 0;
            for (const char *w = only; *w && !want;) {
                size_t n = strcspn(w, " ");
                want = n && memmem(t->pName, strlen(t->pName), w, n) != NULL;
                w += n + (w[n] == ' ');
            }
            CU_set_test_active(t, want ? CU_TRUE : CU_FALSE);
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned tests = CU_get_number_of_tests_run();
    unsigned failed = CU_get_number_of_tests_failed();
    unsigned asserts = CU_get_number_of_asserts();
    unsigned afailed = CU_get_number_of_failures();
    /* the summary names the first failed assertion of each failed test, so that a one-line
     * excerpt of a CI log still says where to look */
    char line[1024];
    int len = snprintf(line, sizeof line, "%s: %u passed, %u failed (%u assertions, %u failed)",
                       name, tests - failed, failed, asserts, afailed);
    const char *last = NULL;
    int named = 0;
    for (CU_pFailureRecord f = CU_get_failure_list(); f && len > 0 && len < 900; f = f->pNext) {
        const char *tn = f->pTest && f->pTest->pName ? f->pTest->pName : "?";
        if (last && !strcmp(last, tn))
            continue;
        last = tn;
        len += snprintf(line + len, sizeof line - (size_t)len, "%s %s at line %u",
                        named++ ? "," : "; failed:", tn, f->uiLineNumber);
    }
    if (len < 0 || (size_t)len >= sizeof line - 2)
        len = (int)sizeof line - 2;
    line[len] = '\n';
    line[len + 1] = '\0';
    CU_cleanup_registry();
    fputs(line, stdout);
    /* fd 9 is the terminal running `make check` (AM_TESTS_FD_REDIRECT) */
    if (fcntl(9, F_GETFD) != -1) {
        ssize_t w = write(9, line, strlen(line));
        (void)w;
    }
    return failed || afailed ? 1 : 0;
}
