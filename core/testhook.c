/* Test hooks (testhook.h).  Kept tiny: one getenv when unset. */
#include "config.h"

#include "testhook.h"

#include <errno.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "util.h"

extern char **environ;

void testhook_run(const char *point, const char *subject)
{
    const char *v = getenv("CTARGET_TEST_HOOK");
    size_t n = strlen(point);
    if (!v || strncmp(v, point, n) != 0 || v[n] != '=')
        return;
    char *cmd = xstrdup(v + n + 1), *arg0 = xstrdup(point), *arg1 = xstrdup(subject);
    char sh[] = "sh", dash_c[] = "-c";
    char *argv[] = {sh, dash_c, cmd, arg0, arg1, NULL};
    pid_t pid;
    int st;
    /* posix_spawn: safe from the hashing threads, unlike fork() + exec */
    if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ) == 0)
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
    free(cmd), free(arg0), free(arg1);
}

int64_t testhook_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    const char *s = getenv("CTARGET_TEST_CLOCK_SHIFT_S");
    long long shift;
    if (s && *s && parse_ll(s, &shift) == 0 && shift > -86400 && shift < 86400)
        now += (int64_t)shift * 1000000000;
    return now;
}
