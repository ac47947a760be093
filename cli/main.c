/* ctarget: run training scripts on any compute target. */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char main_help[] =
    "usage: ctarget [--workspace DIR] [-v|-q] COMMAND [ARGS...]\n"
    "\n"
    "Run machine-learning training scripts, unchanged, on any compute target: this\n"
    "machine, SSH hosts, clusters and cloud services, each provided by a plugin.\n"
    "\n"
    "commands:\n"
    "  plugins            list the target-type plugins found, loaded or refused\n"
    "  compute            create, attach, inspect, update, detach and delete targets\n"
    "  snapshot           snapshot source directories; list, show, diff, export, gc\n"
    "  sweep              hyperparameter sweeps: child runs over a parameter space\n"
    "  pipeline           pipelines: steps on targets joined by their data, reused\n"
    "                     when unchanged\n"
    "  version            print the version\n"
    "  help COMMAND       explain a command (same as COMMAND --help)\n"
    "\n"
    "options (accepted by every command):\n"
    "  --workspace DIR    workspace to use (default: $CTARGET_WORKSPACE, else\n"
    "                     $XDG_DATA_HOME/ctarget, else ~/.local/share/ctarget)\n"
    "  -o, --output FMT   table (default) or json, for scripts\n"
    "  -v, --verbose      more detail on stderr (twice: debug)\n"
    "  -q, --quiet        only errors on stderr\n"
    "  -h, --help         help for the command\n"
    "\n"
    "examples:\n"
    "  ctarget plugins\n"
    "  ctarget compute show local\n"
    "  ctarget snapshot create ./train\n"
    "  ctarget compute attach gpu-box --type remotevm --set address=10.0.0.4 \\\n"
    "      --set username=ml --set private_key_file=~/.ssh/id_ed25519\n"
    "\n"
    "Exit codes: 0 ok, 1 failed, 2 usage, 3 invalid configuration, 4 not found,\n"
    "5 already exists, 6 not supported, 7 authentication, 8 unreachable, 9 untrusted\n"
    "host key or certificate, 10 timeout, 11 canceled; see ctarget(1).\n";

static int print_version(void)
{
    printf("ctarget %s (plugin ABI %d.%d)\n", ctarget_version(), CTARGET_ABI_MAJOR,
           CTARGET_ABI_MINOR);
    return 0;
}

static void on_sigint(int sig)
{
    (void)sig;
    /* first Ctrl-C: ask operations to stop cleanly; a second one kills */
    ctarget_cancel_request();
    signal(SIGINT, SIG_DFL);
}

struct command {
    const char *name;
    int (*fn)(cli *c, int argc, char **argv);
};

static const struct command commands[] = {
    {"plugins", cmd_plugins},
    {"compute", cmd_compute},
    {"run", cmd_run},
    {"env", cmd_env},
    {"snapshot", cmd_snapshot},
    {"sweep", cmd_sweep},
    {"pipeline", cmd_pipeline},
};

/* Run monitors are this very program, started as `ctarget run __monitor ID`. */
static void set_monitor_program(void)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        ctarget_set_monitor_program(self);
    }
}

int main(int argc, char **argv)
{
    cli c = {.prog = "ctarget"};
    static const struct option longopts[] = {
        CLI_COMMON_LONG,
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    signal(SIGINT, on_sigint);
    signal(SIGPIPE, SIG_IGN);
    set_monitor_program();
    int opt;
    opterr = 0;
    /* leading options only: everything after the command belongs to it */
    while ((opt = getopt_long(argc, argv, "+" CLI_COMMON_SHORT "V", longopts, NULL)) != -1) {
        if (opt == 'V')
            return print_version();
        if (opt == OPT_HELP) {
            fputs(main_help, stdout);
            return 0;
        }
        int r = cli_common_opt(&c, opt, optarg);
        if (r == 0)
            return cli_usage_error(&c, "ctarget --help",
                                   "unknown option '%s'", argv[optind - 1]);
        if (r < 0)
            return 2;
    }
    if (optind >= argc) {
        fputs(main_help, stderr);
        return 2;
    }
    const char *name = argv[optind];
    if (!strcmp(name, "version") || !strcmp(name, "--version"))
        return print_version();
    if (!strcmp(name, "help")) {
        if (optind + 1 >= argc) {
            fputs(main_help, stdout);
            return 0;
        }
        name = argv[optind + 1];
        char *hargv[] = {(char *)name, "--help", NULL};
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            if (!strcmp(commands[i].name, name)) {
                optind = 0;
                return commands[i].fn(&c, 2, hargv);
            }
        return cli_usage_error(&c, "ctarget --help", "unknown command '%s'", name);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(commands[i].name, name)) {
            int sub_argc = argc - optind;
            char **sub_argv = argv + optind;
            optind = 0; /* reset getopt for the subcommand */
            int rc = commands[i].fn(&c, sub_argc, sub_argv);
            if (c.ws)
                ctarget_ws_close(c.ws);
            if (fflush(stdout) != 0 && errno != EPIPE) {
                fprintf(stderr, "ctarget: error: cannot write output: %s\n", strerror(errno));
                return rc ? rc : 1;
            }
            return rc;
        }
    return cli_usage_error(&c, "ctarget --help", "unknown command '%s'", name);
}
