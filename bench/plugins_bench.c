/* bench/plugins_bench: what loading and listing every plugin costs.
 *
 * Runs `ctarget plugins --output json` (dlopen + validate every plugin on the search path,
 * print them) and, side by side, `ctarget version` (the same process start-up without
 * touching a plugin), alternating, N times each.  Prints both medians, their difference
 * (the cost of plugin loading itself; budget < 20 ms, DESIGN.md) and their ratio.
 *
 *     bench/plugins_bench PATH/TO/ctarget [N]                                              */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double run(char *const argv[])
{
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "plugins_bench: %s %s failed (status %d)\n", argv[0], argv[1], st);
        exit(1);
    }
    return now_ms() - t0;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: plugins_bench PATH/TO/ctarget [N]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 41;
    if (n < 1 || n > 10000)
        n = 41;
    char ws[] = "/tmp/ctarget-bench-XXXXXX";
    if (!mkdtemp(ws)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("CTARGET_WORKSPACE", ws, 1);
    char *list[] = {argv[1], "plugins", "--output", "json", NULL};
    char *base[] = {argv[1], "version", NULL};
    double *a = calloc(n, sizeof *a), *b = calloc(n, sizeof *b);
    run(list); /* warm the page cache once */
    run(base);
    for (int i = 0; i < n; i++) {
        a[i] = run(list);
        b[i] = run(base);
    }
    double ma = median(a, n), mb = median(b, n);
    const char *path = getenv("CTARGET_PLUGIN_PATH");
    printf("plugin search path: %s\n", path ? path : "(default plugindir)");
    printf("ctarget plugins --output json: median %.2f ms over %d runs\n", ma, n);
    printf("ctarget version (baseline):    median %.2f ms over %d runs\n", mb, n);
    printf("loading and listing plugins costs %.2f ms (budget < 20 ms), ratio %.2fx\n",
           ma - mb, ma / mb);
    free(a);
    free(b);
    rmdir(ws);
    return 0;
}
