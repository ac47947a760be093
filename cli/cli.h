/* The ctarget command: shared state and helpers for every subcommand. */
#ifndef CTARGET_CLI_H
#define CTARGET_CLI_H

#include <getopt.h>
#include <jansson.h>

#include <ctarget/ctarget.h>

/* Exit codes beyond ctarget_status values (which are used as they are). */
#define EXIT_RUN_CANCELED 130

typedef struct cli {
    const char *prog;
    const char *workspace;
    int json;          /* --output json */
    int verbose;       /* -v count */
    int quiet;
    ctarget_ws *ws;
} cli;

/* Options every command takes; long-only values start at 1000. */
enum { OPT_OUTPUT = 'o', OPT_WORKSPACE = 1000, OPT_HELP = 'h', OPT_VERBOSE = 'v',
       OPT_QUIET = 'q' };
#define CLI_COMMON_LONG                                   \
    {"output", required_argument, NULL, OPT_OUTPUT},      \
    {"workspace", required_argument, NULL, OPT_WORKSPACE}, \
    {"verbose", no_argument, NULL, OPT_VERBOSE},          \
    {"quiet", no_argument, NULL, OPT_QUIET},              \
    {"help", no_argument, NULL, OPT_HELP}
#define CLI_COMMON_SHORT "o:vqh"

/* Handle a common option; returns 1 when handled, 0 when not common, -1 on a bad value. */
int cli_common_opt(cli *c, int opt, const char *arg);
void cli_setup_diagnostics(cli *c);

int cli_open_ws(cli *c);
/* Print "ctarget: error: MESSAGE" and return the exit code for the status. */
int cli_fail(cli *c, ctarget_status rc, const ctarget_error *err);
int cli_usage_error(cli *c, const char *usage, const char *fmt, ...) CTARGET_PRINTF(3, 4);
void cli_print_help(const char *text);

/* Output */
json_t *cli_parse_json(const char *text);
void out_json_text(const char *text);
typedef struct out_col {
    const char *header;
    const char *key;     /* dotted path into each row */
} out_col;
void out_table(json_t *rows, const out_col *cols, size_t ncols);
/* key: value lines, nested objects indented */
void out_object(json_t *obj, int indent);
char *json_scalar_text(json_t *v);

/* Subcommands */
int cmd_plugins(cli *c, int argc, char **argv);
int cmd_compute(cli *c, int argc, char **argv);
int cmd_run(cli *c, int argc, char **argv);
int cmd_env(cli *c, int argc, char **argv);
int cmd_snapshot(cli *c, int argc, char **argv);
int cmd_sweep(cli *c, int argc, char **argv);
int cmd_pipeline(cli *c, int argc, char **argv);

#endif
