/* What the local machine offers: CPUs, memory, GPUs.  Kept apart from the run code. */
#include "config.h"

#include "local.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* Run argv with stdout captured, killing it after timeout_ms: nvidia-smi can hang when the
 * driver is wedged, and `compute show` must not. */
static char *capture(char *const argv[], int timeout_ms)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        return NULL;
    }
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    char *buf = NULL;
    size_t len = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        char tmp[4096];
        ssize_t n = read(pfd[0], tmp, sizeof tmp);
        if (n > 0) {
            char *nb = realloc(buf, len + (size_t)n + 1);
            if (!nb)
                break;
            buf = nb;
            memcpy(buf + len, tmp, (size_t)n);
            len += (size_t)n;
            buf[len] = '\0';
            continue;
        }
        if (n == 0)
            break;
        if (errno != EAGAIN && errno != EINTR)
            break;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long el = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (el > timeout_ms) {
            kill(pid, SIGKILL);
            free(buf);
            buf = NULL;
            break;
        }
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    if (buf && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

static void trim(char *s)
{
    size_t l = strlen(s);
    while (l && (s[l - 1] == ' ' || s[l - 1] == '\n' || s[l - 1] == '\r' || s[l - 1] == '\t'))
        s[--l] = '\0';
    size_t i = 0;
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    memmove(s, s + i, l - i + 1);
}

static int gpus_from_nvidia_smi(const ctarget_host *h, ctarget_obj *facts)
{
    char *const argv[] = {"nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader,nounits", NULL};
    char *out = capture(argv, 5000);
    if (!out)
        return -1;
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[3] = {line, NULL, NULL};
        for (int i = 1; i < 3; i++) {
            char *c = f[i - 1] ? strchr(f[i - 1], ',') : NULL;
            if (c) {
                *c = '\0';
                f[i] = c + 1;
            }
        }
        ctarget_obj *g = h->obj_append0(facts, "gpus");
        trim(f[0]);
        h->obj_set_str(g, "name", f[0]);
        if (f[1]) {
            trim(f[1]);
            h->obj_set_int(g, "memory_mib", atoll(f[1]));
        }
        if (f[2]) {
            trim(f[2]);
            h->obj_set_str(g, "driver", f[2]);
        }
        h->obj_set_str(g, "source", "nvidia-smi");
        n++;
    }
    free(out);
    return n;
}

static int gpus_from_proc(const ctarget_host *h, ctarget_obj *facts)
{
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[512];
        snprintf(path, sizeof path, "/proc/driver/nvidia/gpus/%s/information", de->d_name);
        FILE *f = fopen(path, "re");
        if (!f)
            continue;
        ctarget_obj *g = h->obj_append0(facts, "gpus");
        h->obj_set_str(g, "bus", de->d_name);
        h->obj_set_str(g, "source", "/proc/driver/nvidia");
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "Model:", 6)) {
                char *v = line + 6;
                trim(v);
                h->obj_set_str(g, "name", v);
            }
        fclose(f);
        n++;
    }
    closedir(d);
    return n;
}

static long long meminfo_kb(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f)
        return -1;
    char line[256];
    long long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            v = atoll(line + kl + 1);
            break;
        }
    fclose(f);
    return v;
}

void local_machine_facts(const ctarget_host *h, ctarget_obj *facts)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    h->obj_set_int(facts, "cpus", online);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        h->obj_set_int(facts, "cpus_usable", CPU_COUNT(&set));
    long long total = meminfo_kb("MemTotal"), avail = meminfo_kb("MemAvailable");
    if (total >= 0)
        h->obj_set_int(facts, "memory_bytes", total * 1024);
    if (avail >= 0)
        h->obj_set_int(facts, "memory_available_bytes", avail * 1024);
    struct utsname u;
    if (uname(&u) == 0) {
        char os[400];
        snprintf(os, sizeof os, "%s %s %s", u.sysname, u.release, u.machine);
        h->obj_set_str(facts, "os", os);
        h->obj_set_str(facts, "hostname", u.nodename);
    }
    int n = gpus_from_nvidia_smi(h, facts);
    if (n < 0)
        n = gpus_from_proc(h, facts);
    h->obj_set_int(facts, "gpu_count", n < 0 ? 0 : n);
    h->obj_set_str(facts, "gpu_detection", n < 0 ? "no nvidia-smi and no /proc/driver/nvidia"
                                                 : "ok");
}
