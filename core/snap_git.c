/* Git information for a snapshot: `git` run as a subprocess (posix_spawnp, no shell). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "snapshot.h"
#include "util.h"

extern char **environ;

/* Output kept from one git command; status output beyond this only matters as "dirty". */
#define GIT_OUT_MAX (64 * 1024)

/* The environment for git: ours, plus no prompts, no optional locks (status must not write
 * the index of a checkout a user is working in), and untranslated output. */
static char **git_env(void)
{
    static const char *const extra[] = {"GIT_TERMINAL_PROMPT=0", "GIT_OPTIONAL_LOCKS=0",
                                        "LC_ALL=C", NULL};
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = xcalloc(n + CT_ARRAY_LEN(extra), sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LC_ALL=", 7) && strncmp(environ[i], "GIT_DIR=", 8) &&
            strncmp(environ[i], "GIT_WORK_TREE=", 14))
            env[k++] = environ[i];
    for (size_t i = 0; extra[i]; i++)
        env[k++] = (char *)extra[i];
    return env;
}

/* Run git -C dir args...; stdout (up to GIT_OUT_MAX) in *out.  Returns the exit status, or
 * -1 when git could not run (not installed). */
static int run_git(const char *dir, const char *const *args, char **out, int *truncated)
{
    const char *argv[16] = {"git", "-C", dir};
    size_t n = 3;
    for (size_t i = 0; args[i] && n < CT_ARRAY_LEN(argv) - 1; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    int pfd[2];
    *out = NULL;
    *truncated = 0;
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    char **env = git_env();
    pid_t pid;
    int sr = posix_spawnp(&pid, "git", &fa, NULL, (char *const *)argv, env);
    free(env);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (sr != 0) {
        close(pfd[0]);
        return -1;
    }
    strbuf sb;
    sb_init(&sb);
    char buf[8192];
    ssize_t r;
    /* read to EOF (git exits), keeping only the first GIT_OUT_MAX bytes */
    while ((r = read(pfd[0], buf, sizeof buf)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        if (sb.len < GIT_OUT_MAX)
            sb_add(&sb, buf, (size_t)r);
        else
            *truncated = 1;
    }
    close(pfd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    *out = sb_detach(&sb);
    /* posix_spawnp reports a missing git as exit 127 from the child on glibc */
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

char *snap_git_strip_credentials(const char *url)
{
    const char *scheme = strstr(url, "://");
    if (!scheme)
        return xstrdup(url); /* scp-like user@host:path names a login, not a secret */
    const char *auth = scheme + 3;
    const char *end = auth + strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    if (!at)
        return xstrdup(url);
    return xasprintf("%.*s%s", (int)(auth - url), url, at + 1);
}

static char *line_value(const char *text, const char *prefix)
{
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (str_startswith(p, prefix)) {
            const char *v = p + strlen(prefix);
            return xstrndup(v, strcspn(v, "\n"));
        }
    return NULL;
}

/* Branch, commit and dirty flag from `git status --porcelain=v2 --branch`. */
static void parse_status(const char *out, int truncated, json_t *info)
{
    char *oid = line_value(out, "# branch.oid ");
    char *head = line_value(out, "# branch.head ");
    int dirty = truncated;
    for (const char *p = out; p && *p && !dirty; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        dirty = *p != '#' && *p != '\n';
    json_object_set_new(info, "branch", head && strcmp(head, "(detached)") ? json_string(head)
                                                                           : json_null());
    json_object_set_new(info, "commit", oid && strcmp(oid, "(initial)") ? json_string(oid)
                                                                         : json_null());
    json_object_set_new(info, "dirty", json_boolean(dirty));
    free(oid);
    free(head);
}

/* Whether git could find a repository for dir: a .git (directory or gitfile) in dir or
 * above, or a directory above that looks like a bare repository.  git's own discovery
 * (GIT_DIR and GIT_WORK_TREE are removed from its environment) only finds less, stopped by
 * GIT_CEILING_DIRECTORIES, file system boundaries or safe.directory; when this says no,
 * git is not run: a snapshot of a plain directory does not pay for a process. */
static int maybe_in_checkout(const char *dir)
{
    char *p = realpath(dir, NULL);
    if (!p)
        return 1;
    int found = 0;
    for (;;) {
        struct stat st;
        char *git = path_join(p, ".git"), *head = path_join(p, "HEAD"),
             *objects = path_join(p, "objects");
        found = lstat(git, &st) == 0 ||
                (lstat(head, &st) == 0 && stat(objects, &st) == 0 && S_ISDIR(st.st_mode));
        free(git), free(head), free(objects);
        char *slash = strrchr(p, '/');
        if (found || !slash || slash == p)
            break;
        *slash = '\0';
    }
    if (!found) { /* the root itself */
        struct stat st;
        found = lstat("/.git", &st) == 0 ||
                (lstat("/HEAD", &st) == 0 && stat("/objects", &st) == 0);
    }
    free(p);
    return found;
}

json_t *snap_git_info(const char *dir)
{
    static const char *const status_args[] = {"status", "--porcelain=v2", "--branch",
                                              "--untracked-files=normal", NULL};
    static const char *const remote_args[] = {"config", "--get", "remote.origin.url", NULL};
    char *out;
    int truncated;
    if (!maybe_in_checkout(dir))
        return NULL;
    if (run_git(dir, status_args, &out, &truncated) != 0) {
        free(out); /* not a checkout, or no git: no git info, and no error */
        return NULL;
    }
    json_t *info = json_object();
    char *url = NULL;
    int ut;
    if (run_git(dir, remote_args, &url, &ut) == 0 && url && *url) {
        url[strcspn(url, "\n")] = '\0';
        char *clean = snap_git_strip_credentials(url);
        json_object_set_new(info, "repository", json_string(clean));
        free(clean);
    } else {
        json_object_set_new(info, "repository", json_null());
    }
    free(url);
    parse_status(out, truncated, info);
    free(out);
    return info;
}
