/* ctarget sweep ...: hyperparameter sweeps (a parent run with child runs). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget sweep SUBCOMMAND [ARGS...]\n"
    "\n"
    "A sweep runs many child runs of one script, each with arguments drawn from a\n"
    "parameter space, reads the primary metric every child logs and stops the children\n"
    "an early termination policy gives up on (as Azure ML's HyperDrive does). It is a\n"
    "parent run: `ctarget run show|wait|cancel ID` work on it too, and its driver is\n"
    "restarted like a run monitor if it dies. Only targets with the hyperparameter-tuning\n"
    "capability run sweeps (`ctarget plugins` lists them; local and aci do not).\n"
    "\n"
    "subcommands:\n"
    "  submit --config SWEEP.json [--experiment E] [--target T] [--wait]\n"
    "  show ID                  the children ranked by the primary metric, and the best\n"
    "                           one with its arguments\n"
    "  list                     every sweep, newest first\n"
    "  wait ID [--timeout S]    until the sweep ends, then show it\n"
    "  cancel ID                no new children; the running ones are canceled\n"
    "\n"
    "The configuration file (see ctarget(1) and examples/sweep.json):\n"
    "  {\"run\": {\"target\": \"gpu-box\", \"source_directory\": \"train\", \"script\": \"train.py\"},\n"
    "   \"parameters\": {\"learning_rate\": {\"loguniform\": [-9.2, -2.3]},\n"
    "                  \"batch_size\": {\"choice\": [16, 32, 64]}},\n"
    "   \"sampling\": \"random\", \"seed\": 7,\n"
    "   \"primary_metric\": \"accuracy\", \"goal\": \"maximize\",\n"
    "   \"early_termination\": {\"policy\": \"bandit\", \"slack_factor\": 0.1,\n"
    "                         \"evaluation_interval\": 1, \"delay_evaluation\": 2},\n"
    "   \"max_total_runs\": 20, \"max_concurrent_runs\": 4, \"max_duration_minutes\": 60}\n"
    "Each child gets the run's arguments, then --NAME VALUE per parameter.\n"
    "distributions: choice, randint, uniform, quniform, loguniform, qloguniform, normal,\n"
    "lognormal; sampling: grid (choice only), random (seeded), bayesian (TPE);\n"
    "policies: bandit (slack_factor | slack_amount), median_stopping,\n"
    "truncation_selection (truncation_percentage, exclude_finished_jobs).\n"
    "\n"
    "options:\n"
    "  -o, --output json        machine-readable output\n"
    "\n"
    "examples:\n"
    "  ctarget sweep submit --config examples/sweep.json --target gpu-box\n"
    "  ctarget sweep show 20250101T120000 -o json | jq .best\n"
    "\n"
    "Exit codes: submit --wait and wait exit 0 when the sweep Completed, 1 when it\n"
    "Failed and 130 when it was Canceled. A bad configuration exits 3, a target that\n"
    "cannot run sweeps 6.\n";

enum { O_CONFIG = 3000, O_EXPERIMENT, O_TARGET, O_WAIT, O_TIMEOUT, O_FORMAT };

typedef struct sargs {
    ctarget_sweep_opts o;
    int wait, help;
    long long timeout;
    const char *id;
} sargs;

static int usage(cli *c, const char *fmt, const char *arg)
{
    return cli_usage_error(c, "ctarget sweep --help", fmt, arg);
}

static int parse(cli *c, int argc, char **argv, sargs *a, const char *sub)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, O_FORMAT},
        {"workspace", required_argument, NULL, OPT_WORKSPACE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"config", required_argument, NULL, O_CONFIG},
        {"experiment", required_argument, NULL, O_EXPERIMENT},
        {"target", required_argument, NULL, O_TARGET},
        {"wait", no_argument, NULL, O_WAIT},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    a->o.struct_size = sizeof a->o;
    int opt;
    opterr = 0;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "o:vqh", longopts, NULL)) != -1) {
        char *end;
        switch (opt) {
        case OPT_HELP: a->help = 1; break;
        case O_CONFIG: a->o.config_file = optarg; break;
        case O_EXPERIMENT: a->o.experiment = optarg; break;
        case O_TARGET: a->o.target = optarg; break;
        case O_WAIT: a->wait = 1; break;
        case O_TIMEOUT:
            errno = 0;
            a->timeout = strtoll(optarg, &end, 10);
            if (errno || *end || a->timeout <= 0)
                return usage(c, "--timeout needs a positive whole number of seconds, not '%s'",
                             optarg);
            break;
        case O_FORMAT:
            if (cli_common_opt(c, OPT_OUTPUT, optarg) < 0)
                return 2;
            break;
        case '?':
            return usage(c, "unknown option '%s'", argv[optind - 1]);
        case ':':
            return usage(c, "option '%s' needs a value", argv[optind - 1]);
        default: {
            int r = cli_common_opt(c, opt, optarg);
            if (r < 0)
                return 2;
            if (r == 0)
                return usage(c, "unknown option for `sweep %s`", sub);
        }
        }
    }
    if (optind < argc)
        a->id = argv[optind++];
    if (optind < argc)
        return usage(c, "unexpected argument '%s'", argv[optind]);
    return 0;
}

static int exit_for(json_t *s)
{
    const char *st = json_string_value(json_object_get(s, "status"));
    if (st && !strcmp(st, "Completed"))
        return 0;
    return st && !strcmp(st, "Canceled") ? EXIT_RUN_CANCELED : 1;
}

static void show_human(json_t *s)
{
    static const char *const keys[] = {"id", "experiment", "target", "status", "summary",
                                       "sampling", "seed", "primary_metric", "goal",
                                       "max_total_runs", "max_concurrent_runs",
                                       "max_duration_minutes", "children_started",
                                       "stopped_early", "created_at", "duration_seconds"};
    json_t *top = json_object();
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        json_object_set(top, keys[i], json_object_get(s, keys[i]));
    json_t *pol = json_object_get(s, "early_termination");
    if (json_is_object(pol))
        json_object_set(top, "early_termination", pol);
    out_object(top, 0);
    json_decref(top);
    json_t *rows = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(s, "children"), i, c) {
        json_t *r = json_deep_copy(c);
        {
            size_t j;
            json_t *a;
            size_t len = 1;
            json_array_foreach(json_object_get(c, "arguments"), j, a) len +=
                strlen(json_string_value(a)) + 1;
            char *joined = calloc(1, len);
            json_array_foreach(json_object_get(c, "arguments"), j, a) {
                if (j)
                    strcat(joined, " ");
                strcat(joined, json_string_value(a));
            }
            json_object_set_new(r, "args", json_string(joined));
            free(joined);
        }
        json_array_append_new(rows, r);
    }
    if (json_array_size(rows)) {
        static const out_col cols[] = {{"RANK", "rank"}, {"INDEX", "index"}, {"RUN", "id"},
                                       {"STATUS", "status"}, {"VALUE", "value"},
                                       {"INTERVALS", "intervals"}, {"ARGUMENTS", "args"}};
        out_table(rows, cols, sizeof cols / sizeof cols[0]);
    }
    json_decref(rows);
    json_t *b = json_object_get(s, "best");
    if (json_is_object(b)) {
        char *v = json_scalar_text(json_object_get(b, "value"));
        printf("best: child %lld, run %s, %s = %s, arguments:",
               (long long)json_integer_value(json_object_get(b, "index")),
               json_string_value(json_object_get(b, "id")),
               json_string_value(json_object_get(s, "primary_metric")), v);
        free(v);
        json_array_foreach(json_object_get(b, "arguments"), i, c)
            printf(" %s", json_string_value(c));
        printf("\n");
    } else {
        printf("best: none yet (no child has logged %s)\n",
               json_string_value(json_object_get(s, "primary_metric")));
    }
}

static int print_sweep(cli *c, const char *json)
{
    json_t *s = cli_parse_json(json);
    if (c->json)
        out_json_text(json);
    else
        show_human(s);
    int rc = exit_for(s);
    if (!c->quiet && !c->json) {
        const char *reason = json_string_value(json_object_get(s, "reason"));
        fprintf(stderr, "sweep %s %s%s%s\n", json_string_value(json_object_get(s, "id")),
                json_string_value(json_object_get(s, "status")), reason && *reason ? ": " : "",
                reason ? reason : "");
    }
    json_decref(s);
    return rc;
}

static int do_submit(cli *c, sargs *a)
{
    if (a->id)
        return usage(c, "unexpected argument '%s'", a->id);
    if (!a->o.config_file)
        return usage(c, "%s", "`sweep submit` needs --config SWEEP.json");
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_sweep_submit(c->ws, &a->o, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    json_t *r = cli_parse_json(json);
    char *id = strdup(json_string_value(json_object_get(r, "id")));
    json_decref(r);
    int rc = 0;
    if (!a->wait) {
        if (c->json)
            out_json_text(json);
        else
            printf("%s\n", id);
        if (!c->quiet && !c->json)
            fprintf(stderr, "submitted sweep %s: `ctarget sweep show %s` ranks its children\n",
                    id, id);
    } else {
        free(json);
        json = NULL;
        if (!c->quiet && !c->json)
            fprintf(stderr, "submitted sweep %s\n", id);
        if ((st = ctarget_sweep_wait(c->ws, id, 0, &json, &err)))
            rc = cli_fail(c, st, &err);
        else
            rc = print_sweep(c, json);
    }
    free(json);
    free(id);
    return rc;
}

static int do_list(cli *c)
{
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_sweep_list(c->ws, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json) {
        out_json_text(json);
    } else {
        json_t *rows = cli_parse_json(json);
        static const out_col cols[] = {{"ID", "id"}, {"EXPERIMENT", "experiment"},
                                       {"TARGET", "target"}, {"STATUS", "status"},
                                       {"SAMPLING", "sampling"}, {"CHILDREN", "children_started"},
                                       {"STOPPED", "stopped_early"}, {"METRIC", "primary_metric"},
                                       {"BEST", "best_value"}};
        out_table(rows, cols, sizeof cols / sizeof cols[0]);
        json_decref(rows);
    }
    free(json);
    return 0;
}

int cmd_sweep(cli *c, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    static const char *const subs[] = {"submit", "show", "list", "wait", "cancel"};
    size_t k = 0;
    while (k < sizeof subs / sizeof subs[0] && strcmp(subs[k], sub))
        k++;
    if (k == sizeof subs / sizeof subs[0])
        return usage(c, "unknown subcommand `sweep %s`", sub);
    sargs a;
    int rc = parse(c, argc - 1, argv + 1, &a, sub);
    if (rc)
        return rc;
    cli_setup_diagnostics(c);
    if (a.help) {
        cli_print_help(help);
        return 0;
    }
    if (strcmp(sub, "submit") && strcmp(sub, "list") && !a.id)
        return usage(c, "`sweep %s` needs a sweep ID", sub);
    if ((rc = cli_open_ws(c)))
        return rc;
    if (!strcmp(sub, "submit"))
        return do_submit(c, &a);
    if (!strcmp(sub, "list"))
        return do_list(c);
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st;
    if (!strcmp(sub, "show"))
        st = ctarget_sweep_show(c->ws, a.id, &json, &err);
    else if (!strcmp(sub, "wait"))
        st = ctarget_sweep_wait(c->ws, a.id, (long)(a.timeout * 1000), &json, &err);
    else
        st = ctarget_sweep_cancel(c->ws, a.id, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (!strcmp(sub, "show")) {
        print_sweep(c, json);
        rc = 0;
    } else if (!strcmp(sub, "cancel")) {
        if (c->json)
            out_json_text(json);
        else if (!c->quiet)
            fprintf(stderr, "cancel requested for sweep %s\n", a.id);
        rc = 0;
    } else {
        rc = print_sweep(c, json);
    }
    free(json);
    return rc;
}
