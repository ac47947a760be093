#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

int cli_common_opt(cli *c, int opt, const char *arg)
{
    switch (opt) {
    case OPT_OUTPUT:
        if (!strcmp(arg, "json"))
            c->json = 1;
        else if (!strcmp(arg, "table"))
            c->json = 0;
        else {
            fprintf(stderr, "ctarget: error: --output takes 'table' or 'json', not '%s'\n", arg);
            return -1;
        }
        return 1;
    case OPT_WORKSPACE:
        c->workspace = arg;
        return 1;
    case OPT_VERBOSE:
        c->verbose++;
        return 1;
    case OPT_QUIET:
        c->quiet = 1;
        return 1;
    default:
        return 0;
    }
}

static void on_log(void *arg, ctarget_log_level level, const char *msg)
{
    (void)arg;
    static const char *const names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "ctarget: %s: %s\n", names[level <= CTARGET_LOG_DEBUG ? level : 3], msg);
}

struct progress_state {
    int tty;
    char last[256];
};

static void on_progress(void *arg, const char *phase, uint64_t done, uint64_t total)
{
    struct progress_state *ps = arg;
    char line[256];
    if (total)
        snprintf(line, sizeof line, "%s: %llu/%llu (%d%%)", phase, (unsigned long long)done,
                 (unsigned long long)total, (int)(done * 100 / total));
    else if (done)
        snprintf(line, sizeof line, "%s: %llu", phase, (unsigned long long)done);
    else
        snprintf(line, sizeof line, "%s", phase);
    if (ps->tty) {
        fprintf(stderr, "\r\033[K%s", line);
        if (total && done >= total)
            fputc('\n', stderr);
        fflush(stderr);
    } else if (strcmp(phase, ps->last)) {
        /* not a terminal: one line per phase, so logs stay readable */
        fprintf(stderr, "%s\n", line);
    }
    snprintf(ps->last, sizeof ps->last, "%s", phase);
}

void cli_setup_diagnostics(cli *c)
{
    static struct progress_state ps;
    ctarget_log_level lvl = c->quiet ? CTARGET_LOG_ERROR
                            : c->verbose >= 2 ? CTARGET_LOG_DEBUG
                            : c->verbose == 1 ? CTARGET_LOG_INFO : CTARGET_LOG_WARN;
    /* CTARGET_LOG=info|debug: the same for processes nobody passes -v to (run monitors,
     * which inherit the environment of the command that started them) */
    const char *env = getenv("CTARGET_LOG");
    if (env && !c->quiet && !strcmp(env, "debug"))
        lvl = CTARGET_LOG_DEBUG;
    else if (env && !c->quiet && !strcmp(env, "info") && lvl > CTARGET_LOG_INFO)
        lvl = CTARGET_LOG_INFO;
    ctarget_set_log_handler(on_log, NULL, lvl);
    ps.tty = isatty(2);
    if (!c->quiet)
        ctarget_set_progress_handler(on_progress, &ps);
}

int cli_open_ws(cli *c)
{
    if (c->ws)
        return 0;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = ctarget_ws_open(c->workspace, &c->ws, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    return 0;
}

int cli_fail(cli *c, ctarget_status rc, const ctarget_error *err)
{
    (void)c;
    const char *msg = err && err->message[0] ? err->message : ctarget_strerror(rc);
    fprintf(stderr, "ctarget: error: %s\n", msg);
    return rc == CTARGET_OK ? 1 : (int)rc;
}

int cli_usage_error(cli *c, const char *usage, const char *fmt, ...)
{
    (void)c;
    va_list ap;
    va_start(ap, fmt);
    fputs("ctarget: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see `%s`)\n", usage);
    return CTARGET_E_USAGE;
}

void cli_print_help(const char *text)
{
    fputs(text, stdout);
}
