/* ctarget run ...: submit scripts and follow, inspect and steer their runs. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget run SUBCOMMAND [ARGS...]\n"
    "\n"
    "A run executes a script from a source directory on a compute target. Submitting\n"
    "snapshots the directory, records the run and hands it to a detached run monitor,\n"
    "so the run goes on when the shell that submitted it goes away.\n"
    "\n"
    "subcommands:\n"
    "  submit --target NAME --source DIR --script FILE [options] [-- ARGS...]\n"
    "  list [--experiment E] [--status S] [--target T] [--parent ID] [--limit N]\n"
    "                     (--parent: the steps of a pipeline, the children of a sweep)\n"
    "  show ID                  status, every transition with its time, exit code, reason,\n"
    "                           snapshot, git, last value of each metric, outputs\n"
    "  logs ID [-f]             the script's output (stdout and stderr); -f follows it\n"
    "  wait ID [--timeout S]    until the run ends\n"
    "  cancel ID                stop the run (CancelRequested, then Canceled)\n"
    "  outputs ID [-o DIR]      files the script wrote to ./outputs; -o copies them to DIR\n"
    "  metrics ID               every metric value the script logged\n"
    "  delete ID                forget an ended run and remove its files\n"
    "\n"
    "submit options:\n"
    "  --config FILE.json       run configuration (source_directory, script, arguments,\n"
    "                           target, environment, framework, max_run_duration_seconds,\n"
    "                           experiment, node_count, options); options below override it\n"
    "  --experiment NAME        3-36 letters, digits, '_' and '-' (default: default)\n"
    "  --environment NAME       a named environment (see `ctarget env`), or one of:\n"
    "  --python PATH            this interpreter, as is\n"
    "  --requirements FILE      a virtual environment built from a pip requirements file\n"
    "  --conda FILE             a conda environment from conda_dependencies.yml\n"
    "  --docker-image IMAGE     run inside this container image\n"
    "  --env-var NAME=VALUE     set for the script; repeat as needed\n"
    "  --timeout SECONDS        max_run_duration_seconds: then Failed, \"timeout after N s\"\n"
    "  --cancel-grace SECONDS   cancel_grace_seconds: SIGTERM, this long, then SIGKILL (10)\n"
    "  --wait                   wait until the run ends\n"
    "  --stream                 print the run's output live until it ends\n"
    "  -- ARGS...               the script's arguments, passed byte for byte\n"
    "  -o, --output json        machine-readable output (at least id, status, exit_code)\n"
    "\n"
    "An ID may be shortened to any unique prefix.\n"
    "\n"
    "examples:\n"
    "  ctarget run submit --target local --source examples/train --script train.py \\\n"
    "      --stream -- --epochs 20\n"
    "  ctarget run submit --config runconfig.json --experiment tuning --wait\n"
    "  ctarget run list --status Running\n"
    "  ctarget run logs 20250101T120000 -f\n"
    "\n"
    "Exit codes: submit --wait/--stream, wait and logs -f exit 0 when the run Completed,\n"
    "1 when it Failed and 130 when it was Canceled. A bad run configuration exits 3.\n";

enum {
    O_TARGET = 2000, O_SOURCE, O_SCRIPT, O_EXPERIMENT, O_ENVIRONMENT, O_PYTHON, O_REQUIREMENTS,
    O_CONDA, O_DOCKER, O_ENV_VAR, O_TIMEOUT, O_WAIT, O_STREAM, O_CONFIG, O_STATUS, O_LIMIT,
    O_FOLLOW, O_FORMAT, O_GRACE, O_PARENT
};

typedef struct rargs {
    ctarget_run_opts o;
    const char **env_vars;
    size_t n_env_vars;
    int wait, stream, follow, help;
    const char *status, *dest, *parent;
    long limit;
    long long timeout;
    const char *id;
} rargs;

static int usage(cli *c, const char *fmt, const char *arg)
{
    return cli_usage_error(c, "ctarget run --help", fmt, arg);
}

static int parse_long(const char *s, long long *v)
{
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 10);
    return errno || *end || !*s || *v <= 0 ? -1 : 0;
}

static int handle_opt(cli *c, rargs *a, int opt, const char *arg, const char *sub)
{
    long long v;
    switch (opt) {
    case OPT_HELP: a->help = 1; return 0;
    case O_TARGET: a->o.target = arg; return 0;
    case O_SOURCE: a->o.source_dir = arg; return 0;
    case O_SCRIPT: a->o.script = arg; return 0;
    case O_EXPERIMENT: a->o.experiment = arg; return 0;
    case O_ENVIRONMENT: a->o.environment = arg; return 0;
    case O_PYTHON: a->o.python = arg; return 0;
    case O_REQUIREMENTS: a->o.requirements = arg; return 0;
    case O_CONDA: a->o.conda = arg; return 0;
    case O_DOCKER: a->o.docker_image = arg; return 0;
    case O_CONFIG: a->o.config_file = arg; return 0;
    case O_WAIT: a->wait = 1; return 0;
    case O_STREAM: a->stream = 1; return 0;
    case O_FOLLOW: a->follow = 1; return 0;
    case O_STATUS: a->status = arg; return 0;
    case O_PARENT: a->parent = arg; return 0;
    case O_ENV_VAR:
        if (!strchr(arg, '=') || arg[0] == '=')
            return usage(c, "--env-var needs NAME=VALUE, got '%s'", arg);
        a->env_vars = realloc(a->env_vars, (a->n_env_vars + 1) * sizeof *a->env_vars);
        a->env_vars[a->n_env_vars++] = arg;
        return 0;
    case O_TIMEOUT:
    case O_LIMIT:
    case O_GRACE:
        if (parse_long(arg, &v))
            return usage(c, "expected a positive whole number, not '%s'", arg);
        if (opt == O_TIMEOUT)
            a->timeout = v;
        else if (opt == O_GRACE)
            a->o.cancel_grace_seconds = v;
        else
            a->limit = (long)v;
        return 0;
    case O_FORMAT:
        return cli_common_opt(c, OPT_OUTPUT, arg) < 0 ? 2 : 0;
    case 'o':
        /* `run outputs ID -o DIR` copies; everywhere else -o is --output */
        if (!strcmp(sub, "outputs")) {
            a->dest = arg;
            return 0;
        }
        break;
    case '?':
        return usage(c, "unknown option '%s'", sub);
    case ':':
        return usage(c, "an option of `run %s` needs a value", sub);
    default:
        break;
    }
    int r = cli_common_opt(c, opt, arg);
    return r < 0 ? 2 : r == 0 ? usage(c, "unknown option for `run %s`", sub) : 0;
}

static int parse(cli *c, int argc, char **argv, rargs *a, const char *sub)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, O_FORMAT},
        {"workspace", required_argument, NULL, OPT_WORKSPACE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"target", required_argument, NULL, O_TARGET},
        {"source", required_argument, NULL, O_SOURCE},
        {"script", required_argument, NULL, O_SCRIPT},
        {"experiment", required_argument, NULL, O_EXPERIMENT},
        {"environment", required_argument, NULL, O_ENVIRONMENT},
        {"python", required_argument, NULL, O_PYTHON},
        {"requirements", required_argument, NULL, O_REQUIREMENTS},
        {"conda", required_argument, NULL, O_CONDA},
        {"docker-image", required_argument, NULL, O_DOCKER},
        {"env-var", required_argument, NULL, O_ENV_VAR},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"cancel-grace", required_argument, NULL, O_GRACE},
        {"wait", no_argument, NULL, O_WAIT},
        {"stream", no_argument, NULL, O_STREAM},
        {"config", required_argument, NULL, O_CONFIG},
        {"status", required_argument, NULL, O_STATUS},
        {"parent", required_argument, NULL, O_PARENT},
        {"limit", required_argument, NULL, O_LIMIT},
        {"follow", no_argument, NULL, O_FOLLOW},
        {"dest", required_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    a->o.struct_size = sizeof a->o;
    /* everything after "--" belongs to the script, untouched by option parsing */
    int end = argc;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--")) {
            end = i;
            a->o.args = (const char *const *)argv + i + 1;
            a->o.n_args = (size_t)(argc - i - 1);
            a->o.args_set = 1;
            break;
        }
    int opt, rc;
    opterr = 0;
    optind = 0;
    while ((opt = getopt_long(end, argv, "o:vqhf", longopts, NULL)) != -1) {
        if (opt == 'f') {
            a->follow = 1;
            continue;
        }
        if (opt == '?') {
            fprintf(stderr, "ctarget: error: unknown option '%s' for `run %s` (see `ctarget run "
                    "--help`)\n", argv[optind - 1], sub);
            return CTARGET_E_USAGE;
        }
        if ((rc = handle_opt(c, a, opt, optarg, sub)))
            return rc;
    }
    if (optind < end)
        a->id = argv[optind++];
    if (optind < end)
        return usage(c, "unexpected argument '%s'", argv[optind]);
    a->o.env_vars = a->env_vars;
    a->o.n_env_vars = a->n_env_vars;
    a->o.timeout_seconds = a->timeout;
    return 0;
}

/* ---- output ----------------------------------------------------------------------------- */

static int exit_for(json_t *run)
{
    const char *s = json_string_value(json_object_get(run, "status"));
    if (s && (!strcmp(s, "Completed") || !strcmp(s, "Finished")))
        return 0;
    if (s && !strcmp(s, "Canceled"))
        return EXIT_RUN_CANCELED;
    return 1;
}

static void print_ending(cli *c, json_t *run)
{
    if (c->quiet)
        return;
    const char *reason = json_string_value(json_object_get(run, "reason"));
    fprintf(stderr, "run %s %s%s%s\n", json_string_value(json_object_get(run, "id")),
            json_string_value(json_object_get(run, "status")), reason && *reason ? ": " : "",
            reason ? reason : "");
}

static void show_human(json_t *r)
{
    static const char *const keys[] = {"id", "experiment", "target", "target_type", "status",
                                       "native_state", "exit_code", "reason", "created_at",
                                       "started_at", "ended_at", "duration_seconds",
                                       "snapshot_id", "source_dir", "script", "arguments",
                                       "logs"};
    json_t *top = json_object();
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        json_object_set(top, keys[i], json_object_get(r, keys[i]));
    json_t *git = json_object_get(r, "git");
    if (json_is_object(git))
        json_object_set(top, "git", git);
    json_object_set(top, "environment", json_object_get(r, "environment"));
    out_object(top, 0);
    json_decref(top);
    printf("transitions:\n");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r, "events"), i, e) {
        const char *d = json_string_value(json_object_get(e, "detail"));
        printf("  %s  %-15s%s%s\n", json_string_value(json_object_get(e, "time")),
               json_string_value(json_object_get(e, "to")), d && *d ? "  " : "", d ? d : "");
    }
    json_t *m = json_object_get(r, "metrics");
    if (json_object_size(m)) {
        printf("metrics (last value):\n");
        const char *k;
        json_t *v;
        json_object_foreach(m, k, v) {
            char *val = json_scalar_text(json_object_get(v, "value"));
            char *step = json_scalar_text(json_object_get(v, "step"));
            printf("  %-20s %s (step %s)\n", k, val, step);
            free(val);
            free(step);
        }
    }
    json_array_foreach(json_object_get(r, "outputs"), i, e) {
        if (!i)
            printf("outputs:\n");
        printf("  %s (%lld bytes)\n", json_string_value(json_object_get(e, "path")),
               (long long)json_integer_value(json_object_get(e, "size")));
    }
}

static int print_run(cli *c, const char *json)
{
    if (c->json) {
        out_json_text(json);
        return 0;
    }
    json_t *r = cli_parse_json(json);
    show_human(r);
    json_decref(r);
    return 0;
}

static int to_stdout(void *arg, const void *data, size_t len)
{
    (void)arg;
    if (fwrite(data, 1, len, stdout) != len)
        return 1;
    return fflush(stdout) != 0;
}

/* ---- subcommands ------------------------------------------------------------------------ */

/* Wait (or stream) until the run ends; print it; exit 0/1/130 by its ending. */
static int follow_run(cli *c, const char *id, int stream, long timeout_ms)
{
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = stream ? ctarget_run_logs(c->ws, id, 1, to_stdout, NULL, &json, &err)
                               : ctarget_run_wait(c->ws, id, timeout_ms, &json, &err);
    if (st) {
        free(json);
        return cli_fail(c, st, &err);
    }
    json_t *r = cli_parse_json(json);
    if (c->json)
        out_json_text(json);
    else if (!stream)
        printf("%s\n", json_string_value(json_object_get(r, "status")));
    print_ending(c, r);
    int rc = exit_for(r);
    json_decref(r);
    free(json);
    return rc;
}

static int do_submit(cli *c, rargs *a)
{
    if (a->id)
        return usage(c, "unexpected argument '%s': script arguments go after --", a->id);
    if (a->wait && a->stream)
        return usage(c, "%s", "give --wait or --stream, not both");
    int rc = cli_open_ws(c);
    if (rc)
        return rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_run_submit(c->ws, &a->o, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    json_t *r = cli_parse_json(json);
    char *id = strdup(json_string_value(json_object_get(r, "id")));
    json_decref(r);
    if (!a->wait && !a->stream) {
        if (c->json)
            out_json_text(json);
        else
            printf("%s\n", id);
        if (!c->quiet && !c->json)
            fprintf(stderr, "submitted run %s: `ctarget run logs %s -f` follows it\n", id, id);
    } else {
        if (!c->quiet && !c->json)
            fprintf(stderr, "submitted run %s\n", id);
        rc = follow_run(c, id, a->stream, 0);
    }
    free(json);
    free(id);
    return rc;
}

static int do_list(cli *c, rargs *a)
{
    if (a->id)
        return usage(c, "unexpected argument '%s'", a->id);
    int rc = cli_open_ws(c);
    if (rc)
        return rc;
    ctarget_run_filter f = {sizeof f, a->o.experiment, a->status, a->o.target,
                            (size_t)a->limit, a->parent};
    char *json;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_run_list(c->ws, &f, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json) {
        out_json_text(json);
    } else {
        json_t *rows = cli_parse_json(json);
        static const out_col cols[] = {{"ID", "id"}, {"EXPERIMENT", "experiment"},
                                       {"TARGET", "target"}, {"STATUS", "status"},
                                       {"EXIT", "exit_code"}, {"CREATED", "created_at"},
                                       {"SECONDS", "duration_seconds"}};
        out_table(rows, cols, sizeof cols / sizeof cols[0]);
        json_decref(rows);
    }
    free(json);
    return 0;
}

static int do_simple(cli *c, rargs *a, const char *sub)
{
    int rc;
    if (!a->id)
        return usage(c, "`run %s` needs a run ID", sub);
    if ((rc = cli_open_ws(c)))
        return rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st;
    if (!strcmp(sub, "show")) {
        if (!(st = ctarget_run_show(c->ws, a->id, &json, &err)))
            print_run(c, json);
    } else if (!strcmp(sub, "cancel")) {
        if (!(st = ctarget_run_cancel(c->ws, a->id, &json, &err))) {
            if (c->json)
                out_json_text(json);
            else if (!c->quiet)
                fprintf(stderr, "cancel requested for run %s\n", a->id);
        }
    } else if (!strcmp(sub, "delete")) {
        if (!(st = ctarget_run_delete(c->ws, a->id, &err)) && !c->quiet)
            fprintf(stderr, "deleted run %s\n", a->id);
    } else if (!strcmp(sub, "logs")) {
        if (a->follow) {
            free(json);
            return follow_run(c, a->id, 1, 0);
        }
        st = ctarget_run_logs(c->ws, a->id, 0, to_stdout, NULL, NULL, &err);
    } else if (!strcmp(sub, "wait")) {
        return follow_run(c, a->id, 0, (long)(a->timeout * 1000));
    } else if (!strcmp(sub, "metrics")) {
        if (!(st = ctarget_run_metrics(c->ws, a->id, &json, &err))) {
            json_t *rows = cli_parse_json(json);
            static const out_col cols[] = {{"NAME", "name"}, {"STEP", "step"},
                                           {"VALUE", "value"}, {"TIME", "time"}};
            if (c->json)
                out_json_text(json);
            else
                out_table(rows, cols, sizeof cols / sizeof cols[0]);
            json_decref(rows);
        }
    } else { /* outputs */
        if (!(st = ctarget_run_outputs(c->ws, a->id, a->dest, &json, &err))) {
            json_t *rows = cli_parse_json(json);
            static const out_col cols[] = {{"PATH", "path"}, {"SIZE", "size"}};
            if (c->json)
                out_json_text(json);
            else
                out_table(rows, cols, sizeof cols / sizeof cols[0]);
            if (a->dest && !c->quiet)
                fprintf(stderr, "copied %zu files to %s\n", json_array_size(rows), a->dest);
            json_decref(rows);
        }
    }
    free(json);
    return st ? cli_fail(c, st, &err) : 0;
}

static int do_monitor(cli *c, rargs *a)
{
    int rc;
    if (!a->id)
        return usage(c, "%s", "`run __monitor` needs a run ID");
    if ((rc = cli_open_ws(c)))
        return rc;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_run_monitor(c->ws, a->id, &err);
    if (st == CTARGET_E_EXISTS)
        return 0; /* another monitor got there first: nothing to do */
    return st ? cli_fail(c, st, &err) : 0;
}

int cmd_run(cli *c, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    static const char *const subs[] = {"submit", "list", "show", "logs", "wait", "cancel",
                                       "outputs", "metrics", "delete", "__monitor"};
    size_t k = 0;
    while (k < sizeof subs / sizeof subs[0] && strcmp(subs[k], sub))
        k++;
    if (k == sizeof subs / sizeof subs[0])
        return usage(c, "unknown subcommand `run %s`", sub);
    rargs a;
    int rc = parse(c, argc - 1, argv + 1, &a, sub);
    if (!rc) {
        cli_setup_diagnostics(c);
        if (a.help)
            cli_print_help(help);
        else if (!strcmp(sub, "submit"))
            rc = do_submit(c, &a);
        else if (!strcmp(sub, "list"))
            rc = do_list(c, &a);
        else if (!strcmp(sub, "__monitor"))
            rc = do_monitor(c, &a);
        else
            rc = do_simple(c, &a, sub);
    }
    free(a.env_vars);
    return rc;
}
