/* The sshd fixture from C: see sshfix.h and tests/servers/sshd.sh. */
#define _GNU_SOURCE
#include "sshfix.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testlib.h"

static sf_sshd **servers;
static size_t n_servers;
static int registered;

static int fixture(const char *cmd, const char *dir, const char *port)
{
    char *script = tl_path(tl_srcdir(), "tests/servers/sshd.sh");
    const char *argv[] = {"/bin/sh", script, cmd, dir, port, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    if (r.status != 0) {
        char what[128];
        snprintf(what, sizeof what, "sshd.sh %s %s", cmd, dir);
        tl_dump(what, &r);
    }
    int st = r.status;
    tl_result_free(&r);
    free(script);
    return st;
}

static void stop_all(void)
{
    for (size_t i = 0; i < n_servers; i++)
        if (servers[i]->running)
            sf_stop(servers[i]);
    free(servers);
    servers = NULL;
    n_servers = 0;
}

char *sf_file(const sf_sshd *s, const char *name)
{
    return tl_path(s->dir, name);
}

char *sf_read(const sf_sshd *s, const char *name)
{
    char *p = sf_file(s, name);
    char *t = tl_read_file(p);
    free(p);
    if (!t)
        return NULL;
    size_t n = strlen(t);
    while (n && (t[n - 1] == '\n' || t[n - 1] == '\r'))
        t[--n] = '\0';
    return t;
}

static int loaded(sf_sshd *s)
{
    char *port = sf_read(s, "port");
    s->port = port ? atoi(port) : 0;
    free(port);
    free(s->fingerprint);
    s->fingerprint = sf_read(s, "fingerprint");
    s->running = s->port > 0;
    return s->port > 0 && s->fingerprint && !strncmp(s->fingerprint, "SHA256:", 7) ? 0 : -1;
}

int sf_start(sf_sshd *s, const char *dir, int port)
{
    if (!registered) {
        atexit(stop_all); /* runs before testlib removes the directories */
        registered = 1;
    }
    if (s->dir != dir) {
        free(s->dir);
        s->dir = strdup(dir);
    }
    int known = 0;
    for (size_t i = 0; i < n_servers; i++)
        known |= servers[i] == s;
    if (!known) {
        servers = realloc(servers, (n_servers + 1) * sizeof *servers);
        servers[n_servers++] = s;
    }
    char p[16] = "";
    if (port > 0)
        snprintf(p, sizeof p, "%d", port);
    if (fixture("start", s->dir, port > 0 ? p : NULL) != 0)
        return -1;
    return loaded(s);
}

/* The parent of pid from /proc (0 when gone), and whether its name is sshd. */
static long parent_of(long pid, int *is_sshd)
{
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%ld/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *close_paren = strrchr(buf, ')');
    long ppid = 0;
    char state;
    if (!close_paren || sscanf(close_paren + 1, " %c %ld", &state, &ppid) != 2)
        return 0;
    if (is_sshd)
        *is_sshd = strstr(buf, "(sshd)") != NULL;
    return ppid;
}

/* Every sshd process below the listener (connections and their sessions). */
static size_t descendants(long root, long *out, size_t max)
{
    size_t n = 0;
    long set[256];
    size_t ns = 0;
    set[ns++] = root;
    for (int changed = 1; changed;) {
        changed = 0;
        DIR *d = opendir("/proc");
        struct dirent *de;
        while (d && (de = readdir(d))) {
            long pid = atol(de->d_name);
            int sshd = 0;
            if (pid <= 0)
                continue;
            long pp = parent_of(pid, &sshd);
            int known = 0, under = 0;
            for (size_t i = 0; i < ns; i++) {
                known |= set[i] == pid;
                under |= set[i] == pp;
            }
            if (under && !known && sshd && ns < 256 && n < max) {
                set[ns++] = pid;
                out[n++] = pid;
                changed = 1;
            }
        }
        if (d)
            closedir(d);
    }
    return n;
}

int sf_stop(sf_sshd *s)
{
    /* sshd.sh stop kills the listener's children and then looks for their children, which
     * by then belong to init: a logged-in session process can survive it and keep its
     * connection open.  Note them first, and end the ones still there afterwards. */
    char *pidtext = sf_read(s, "pid");
    long listener = pidtext ? atol(pidtext) : 0, below[128];
    free(pidtext);
    size_t n = listener > 0 ? descendants(listener, below, 128) : 0;
    int rc = fixture("stop", s->dir, NULL);
    for (size_t i = 0; i < n; i++) {
        int sshd = 0;
        if (parent_of(below[i], &sshd) && sshd) {
            printf("(sshd.sh stop left sshd process %ld running; killing it)\n", below[i]);
            kill((pid_t)below[i], SIGKILL);
        }
    }
    s->running = 0;
    return rc;
}

int sf_restart(sf_sshd *s)
{
    if (fixture("restart", s->dir, NULL) != 0)
        return -1;
    return loaded(s);
}

int sf_rekey(sf_sshd *s)
{
    if (fixture("rekey", s->dir, NULL) != 0)
        return -1;
    return loaded(s);
}

int sf_refusing_port(int *fd)
{
    *fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(*fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(*fd, (struct sockaddr *)&a, &len) == 0)
        return ntohs(a.sin_port);
    close(*fd);
    *fd = -1;
    return -1;
}

int sf_count(const sf_sshd *s, const char *name, const char *needle)
{
    char *p = sf_file(s, name);
    char *t = tl_read_file(p);
    free(p);
    int n = 0;
    for (char *line = t, *end; line && *line; line = end ? end + 1 : NULL) {
        end = strchr(line, '\n');
        if (end)
            *end = '\0';
        n += strstr(line, needle) != NULL;
        if (!end)
            break;
    }
    free(t);
    return n;
}
