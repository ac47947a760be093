/* ctarget env ...: named environments, saved once and used by runs with --environment. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget env SUBCOMMAND [ARGS...]\n"
    "\n"
    "An environment says which Python a run uses: an interpreter as it is (user-managed),\n"
    "or an isolated environment the target builds from a dependency file and caches by\n"
    "the file's content hash (system-managed), optionally inside a container image.\n"
    "\n"
    "subcommands:\n"
    "  create NAME (--requirements FILE | --conda FILE | --python PATH)\n"
    "         [--docker-image IMAGE] [--env-var NAME=VALUE ...]\n"
    "  list                     every named environment\n"
    "  show NAME                its settings and the dependency file's content\n"
    "  delete NAME              forget it (runs that used it keep their copy)\n"
    "\n"
    "The dependency file's content is stored with the environment: editing the file later\n"
    "does not change it; create it again under a new name (or delete and create).\n"
    "\n"
    "examples:\n"
    "  ctarget env create sklearn --requirements requirements.txt\n"
    "  ctarget run submit --target local --source . --script train.py --environment sklearn\n";

enum { E_REQ = 2000, E_CONDA, E_PYTHON, E_DOCKER, E_VAR };

int cmd_env(cli *c, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    static const struct option longopts[] = {
        CLI_COMMON_LONG,
        {"requirements", required_argument, NULL, E_REQ},
        {"conda", required_argument, NULL, E_CONDA},
        {"python", required_argument, NULL, E_PYTHON},
        {"docker-image", required_argument, NULL, E_DOCKER},
        {"env-var", required_argument, NULL, E_VAR},
        {NULL, 0, NULL, 0},
    };
    ctarget_env_opts o = {sizeof o, NULL, NULL, NULL, NULL, NULL, 0};
    const char **vars = NULL;
    size_t n_vars = 0;
    int opt, rc = 0, want_help = 0;
    opterr = 0;
    optind = 0;
    while (!rc && (opt = getopt_long(argc - 1, argv + 1, CLI_COMMON_SHORT, longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_HELP: want_help = 1; break;
        case E_REQ: o.requirements = optarg; break;
        case E_CONDA: o.conda = optarg; break;
        case E_PYTHON: o.python = optarg; break;
        case E_DOCKER: o.docker_image = optarg; break;
        case E_VAR:
            vars = realloc(vars, (n_vars + 1) * sizeof *vars);
            vars[n_vars++] = optarg;
            break;
        default: {
            int r = opt == '?' || opt == ':' ? 0 : cli_common_opt(c, opt, optarg);
            if (r < 0)
                rc = 2;
            else if (r == 0)
                rc = cli_usage_error(c, "ctarget env --help", "unknown option '%s'",
                                     argv[optind]);
        }
        }
    }
    const char *name = optind + 1 < argc ? argv[optind + 1] : NULL;
    o.env_vars = vars;
    o.n_env_vars = n_vars;
    if (!rc && want_help) {
        cli_print_help(help);
    } else if (!rc && strcmp(sub, "list") && !name &&
               (!strcmp(sub, "create") || !strcmp(sub, "show") || !strcmp(sub, "delete"))) {
        rc = cli_usage_error(c, "ctarget env --help", "`env %s` needs a NAME", sub);
    } else if (!rc && !(rc = cli_open_ws(c))) {
        cli_setup_diagnostics(c);
        char *json = NULL;
        ctarget_error err;
        ctarget_error_init(&err);
        ctarget_status st;
        if (!strcmp(sub, "create"))
            st = ctarget_env_create(c->ws, name, &o, &json, &err);
        else if (!strcmp(sub, "show"))
            st = ctarget_env_show(c->ws, name, &json, &err);
        else if (!strcmp(sub, "list"))
            st = ctarget_env_list(c->ws, &json, &err);
        else if (!strcmp(sub, "delete"))
            st = ctarget_env_delete(c->ws, name, &err);
        else {
            free(vars);
            return cli_usage_error(c, "ctarget env --help", "unknown subcommand `env %s`", sub);
        }
        if (st) {
            rc = cli_fail(c, st, &err);
        } else if (json && c->json) {
            out_json_text(json);
        } else if (json && !strcmp(sub, "list")) {
            json_t *rows = cli_parse_json(json);
            static const out_col cols[] = {{"NAME", "name"}, {"KIND", "kind"},
                                           {"FILE", "file_name"}, {"PYTHON", "python"},
                                           {"IMAGE", "docker_image"}, {"CREATED", "created_at"}};
            out_table(rows, cols, sizeof cols / sizeof cols[0]);
            json_decref(rows);
        } else if (json) {
            json_t *j = cli_parse_json(json);
            out_object(j, 0);
            json_decref(j);
        } else if (!c->quiet) {
            fprintf(stderr, "deleted environment %s\n", name);
        }
        free(json);
    }
    free(vars);
    return rc;
}
