/* ctarget pipeline ...: DAGs of steps on compute targets (a parent run with child runs). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget pipeline SUBCOMMAND [ARGS...]\n"
    "\n"
    "A pipeline is a graph of steps, each a run on a compute target, joined by their\n"
    "data: a step's named outputs are later steps' inputs. Steps whose inputs are ready\n"
    "run in parallel (max_parallel at once); a step whose code, arguments, environment\n"
    "and inputs are unchanged since an earlier pipeline is reused, not run again. The\n"
    "pipeline is a parent run: `ctarget run show|logs|wait|cancel ID` work on it, and\n"
    "`ctarget run list --parent ID` lists its steps' runs. Everything (targets, their\n"
    "capabilities, sources, scripts, the graph) is checked before anything runs.\n"
    "\n"
    "subcommands:\n"
    "  submit FILE [--experiment E] [--wait [--timeout S]]\n"
    "  validate FILE            check the file and every step's target; nothing runs\n"
    "  show ID                  the steps with their status, runs and reuse\n"
    "  list                     every pipeline, newest first\n"
    "  wait ID [--timeout S]    until the pipeline ends, then show it\n"
    "  cancel ID                no new steps; the running ones are canceled\n"
    "\n"
    "The file, JSON or YAML (see ctarget(1), PIPELINE FILES, and examples/pipeline.yaml):\n"
    "  name: train-and-score\n"
    "  max_parallel: 4                 # steps at once\n"
    "  continue_on_step_failure: false # true: independent steps go on after a failure\n"
    "  steps:\n"
    "    - name: prep                  # type script: any pipeline-capable target\n"
    "      target: vm\n"
    "      source_directory: prep\n"
    "      script: prep.py\n"
    "      outputs: [features]         # the script writes $CTARGET_OUTPUT_FEATURES\n"
    "    - name: train\n"
    "      type: databricks            # databricks, adla and batch steps: their own keys\n"
    "      target: dbx\n"
    "      source_directory: train\n"
    "      script: train.py\n"
    "      inputs: {features: prep.features}   # read from $CTARGET_INPUT_FEATURES\n"
    "      outputs: [model]\n"
    "      existing_cluster_id: 0101-120000-abcd123\n"
    "    - name: publish\n"
    "      type: data_transfer         # copies source into its one output\n"
    "      source: train.model\n"
    "      outputs: [published]\n"
    "Step keys: name, type, target, source_directory, script, arguments, environment,\n"
    "inputs, outputs, allow_reuse (default true), framework, max_run_duration_seconds,\n"
    "node_count, options; a typed step also takes its type's keys (ctarget compute help\n"
    "TYPE). Inputs arrive under inputs/NAME in the step's directory, outputs are written\n"
    "under outputs/NAME.\n"
    "\n"
    "options:\n"
    "  -o, --output json        machine-readable output\n"
    "\n"
    "examples:\n"
    "  ctarget pipeline validate examples/pipeline.yaml\n"
    "  ctarget pipeline submit examples/pipeline.yaml --wait\n"
    "  ctarget pipeline show 20250101T120000 -o json | jq '.steps[] | {name, status}'\n"
    "\n"
    "Exit codes: submit --wait and wait exit 0 when the pipeline Finished, 1 when it\n"
    "Failed and 130 when it was Canceled. A bad file exits 3, a step on a target that\n"
    "cannot run it 6, a missing target, source or script 4.\n";

enum { O_EXPERIMENT = 3000, O_WAIT, O_TIMEOUT, O_FORMAT };

typedef struct pargs {
    ctarget_pipeline_opts o;
    int wait, help;
    long long timeout;
    const char *arg;
} pargs;

static int usage(cli *c, const char *fmt, const char *arg)
{
    return cli_usage_error(c, "ctarget pipeline --help", fmt, arg);
}

static int parse(cli *c, int argc, char **argv, pargs *a, const char *sub)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, O_FORMAT},
        {"workspace", required_argument, NULL, OPT_WORKSPACE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"experiment", required_argument, NULL, O_EXPERIMENT},
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
        case O_EXPERIMENT: a->o.experiment = optarg; break;
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
                return usage(c, "unknown option for `pipeline %s`", sub);
        }
        }
    }
    if (optind < argc)
        a->arg = argv[optind++];
    if (optind < argc)
        return usage(c, "unexpected argument '%s'", argv[optind]);
    return 0;
}

static int exit_for(json_t *s)
{
    const char *st = json_string_value(json_object_get(s, "status"));
    if (st && !strcmp(st, "Finished"))
        return 0;
    return st && !strcmp(st, "Canceled") ? EXIT_RUN_CANCELED : 1;
}

static void show_human(json_t *s)
{
    static const char *const keys[] = {"id", "name", "experiment", "status", "summary",
                                       "max_parallel", "continue_on_step_failure", "reused",
                                       "created_at", "duration_seconds"};
    json_t *top = json_object();
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        json_object_set(top, keys[i], json_object_get(s, keys[i]));
    out_object(top, 0);
    json_decref(top);
    json_t *rows = json_array();
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(s, "steps"), i, st) {
        json_t *r = json_deep_copy(st);
        const char *run = json_string_value(json_object_get(st, "run"));
        const char *from = json_string_value(json_object_get(st, "reused_from"));
        json_object_set_new(r, "runcol", json_string(run ? run : from ? from : "-"));
        json_array_append_new(rows, r);
    }
    static const out_col cols[] = {{"STEP", "name"}, {"TYPE", "type"}, {"TARGET", "target"},
                                   {"STATUS", "status"}, {"RUN", "runcol"},
                                   {"SECONDS", "duration_seconds"}, {"REASON", "reason"}};
    out_table(rows, cols, sizeof cols / sizeof cols[0]);
    json_decref(rows);
}

static int print_pipeline(cli *c, const char *json)
{
    json_t *s = cli_parse_json(json);
    if (c->json)
        out_json_text(json);
    else
        show_human(s);
    int rc = exit_for(s);
    if (!c->quiet && !c->json) {
        const char *reason = json_string_value(json_object_get(s, "reason"));
        fprintf(stderr, "pipeline %s %s%s%s\n", json_string_value(json_object_get(s, "id")),
                json_string_value(json_object_get(s, "status")), reason && *reason ? ": " : "",
                reason ? reason : "");
    }
    json_decref(s);
    return rc;
}

static int do_submit(cli *c, pargs *a, int validate)
{
    if (!a->arg)
        return usage(c, "`pipeline %s` needs the pipeline FILE", validate ? "validate" : "submit");
    a->o.file = a->arg;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = validate ? ctarget_pipeline_validate(c->ws, &a->o, &json, &err)
                                 : ctarget_pipeline_submit(c->ws, &a->o, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    json_t *r = cli_parse_json(json);
    if (validate) {
        if (c->json) {
            out_json_text(json);
        } else {
            json_t *rows = json_array();
            size_t i;
            json_t *s;
            json_array_foreach(json_object_get(r, "steps"), i, s) {
                json_t *x = json_deep_copy(s), *deps = json_object_get(s, "depends_on");
                /* out_table joins an array's items with ", " */
                json_object_set_new(x, "after", json_array_size(deps) ? json_incref(deps)
                                                                       : json_string("-"));
                json_array_append_new(rows, x);
            }
            static const out_col cols[] = {{"STEP", "name"}, {"TYPE", "type"},
                                           {"TARGET", "target"}, {"AFTER", "after"}};
            out_table(rows, cols, sizeof cols / sizeof cols[0]);
            json_decref(rows);
            if (!c->quiet)
                fprintf(stderr, "pipeline %s is valid: %zu steps\n", a->arg,
                        json_array_size(json_object_get(r, "steps")));
        }
        json_decref(r);
        free(json);
        return 0;
    }
    char *id = strdup(json_string_value(json_object_get(r, "id")));
    json_decref(r);
    int rc = 0;
    if (!a->wait) {
        if (c->json)
            out_json_text(json);
        else
            printf("%s\n", id);
        if (!c->quiet && !c->json)
            fprintf(stderr, "submitted pipeline %s: `ctarget pipeline show %s` follows its "
                    "steps\n", id, id);
    } else {
        free(json);
        json = NULL;
        if (!c->quiet && !c->json)
            fprintf(stderr, "submitted pipeline %s\n", id);
        if ((st = ctarget_pipeline_wait(c->ws, id, (long)(a->timeout * 1000), &json, &err)))
            rc = cli_fail(c, st, &err);
        else
            rc = print_pipeline(c, json);
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
    ctarget_status st = ctarget_pipeline_list(c->ws, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json) {
        out_json_text(json);
    } else {
        json_t *rows = cli_parse_json(json);
        static const out_col cols[] = {{"ID", "id"}, {"NAME", "name"},
                                       {"EXPERIMENT", "experiment"}, {"STATUS", "status"},
                                       {"STEPS", "steps"}, {"REUSED", "reused"},
                                       {"SECONDS", "duration_seconds"}};
        out_table(rows, cols, sizeof cols / sizeof cols[0]);
        json_decref(rows);
    }
    free(json);
    return 0;
}

int cmd_pipeline(cli *c, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    static const char *const subs[] = {"submit", "validate", "show", "list", "wait", "cancel"};
    size_t k = 0;
    while (k < sizeof subs / sizeof subs[0] && strcmp(subs[k], sub))
        k++;
    if (k == sizeof subs / sizeof subs[0])
        return usage(c, "unknown subcommand `pipeline %s`", sub);
    pargs a;
    int rc = parse(c, argc - 1, argv + 1, &a, sub);
    if (rc)
        return rc;
    cli_setup_diagnostics(c);
    if (a.help) {
        cli_print_help(help);
        return 0;
    }
    if (strcmp(sub, "submit") && strcmp(sub, "validate") && strcmp(sub, "list") && !a.arg)
        return usage(c, "`pipeline %s` needs a pipeline ID", sub);
    if ((rc = cli_open_ws(c)))
        return rc;
    if (!strcmp(sub, "submit") || !strcmp(sub, "validate"))
        return do_submit(c, &a, !strcmp(sub, "validate"));
    if (!strcmp(sub, "list"))
        return do_list(c);
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st;
    if (!strcmp(sub, "show"))
        st = ctarget_pipeline_show(c->ws, a.arg, &json, &err);
    else if (!strcmp(sub, "wait"))
        st = ctarget_pipeline_wait(c->ws, a.arg, (long)(a.timeout * 1000), &json, &err);
    else
        st = ctarget_pipeline_cancel(c->ws, a.arg, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (!strcmp(sub, "show")) {
        print_pipeline(c, json);
        rc = 0;
    } else if (!strcmp(sub, "cancel")) {
        if (c->json)
            out_json_text(json);
        else if (!c->quiet)
            fprintf(stderr, "cancel requested for pipeline %s: its running steps are being "
                    "canceled\n", a.arg);
        rc = 0;
    } else {
        rc = print_pipeline(c, json);
    }
    free(json);
    return rc;
}
