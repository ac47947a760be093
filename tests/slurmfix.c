/* The Slurm fixture from C: see slurmfix.h and tests/servers/slurm.sh. */
#define _GNU_SOURCE
#include "slurmfix.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

static sx_slurm *running;

static int fixture(const char *cmd, const char *dir)
{
    char *script = tl_path(tl_srcdir(), "tests/servers/slurm.sh");
    const char *argv[] = {"/bin/sh", script, cmd, dir, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    if (r.status != 0) {
        char what[128];
        snprintf(what, sizeof what, "slurm.sh %s %s", cmd, dir);
        tl_dump(what, &r);
    }
    int st = r.status;
    tl_result_free(&r);
    free(script);
    return st;
}

static void stop_at_exit(void)
{
    if (running && running->running)
        sx_stop(running);
}

int sx_netns(char *why, size_t len)
{
    if (geteuid() != 0) {
        snprintf(why, len, "a private network namespace needs root (unshare --net); the "
                           "Slurm daemons must not listen on this machine's interfaces");
        return -1;
    }
    if (unshare(CLONE_NEWNET) != 0) {
        snprintf(why, len, "unshare(CLONE_NEWNET) failed: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int sx_start(sx_slurm *s, const char *dir)
{
    static int registered;
    if (!registered) {
        atexit(stop_at_exit); /* runs before testlib removes the directories */
        registered = 1;
    }
    free(s->dir);
    free(s->conf);
    s->dir = strdup(dir);
    s->conf = tl_path(dir, "slurm.conf");
    s->running = 0;
    if (fixture("start", dir) != 0) {
        fixture("stop", dir); /* whatever did start */
        return -1;
    }
    s->running = 1;
    running = s;
    setenv("SLURM_CONF", s->conf, 1);
    return 0;
}

int sx_stop(sx_slurm *s)
{
    int rc = fixture("stop", s->dir);
    s->running = 0;
    return rc;
}

int sx_forget(sx_slurm *s)
{
    return fixture("forget", s->dir);
}
