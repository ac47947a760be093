#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget plugins [--output table|json]\n"
    "\n"
    "List every compute-target plugin found in the plugin path, loaded or refused.\n"
    "The path is $CTARGET_PLUGIN_PATH (colon-separated directories), then the\n"
    "installed plugin directory ($CTARGET_PLUGINDIR overrides it). A refused plugin\n"
    "is listed, and its reason printed on stderr; it never stops the others from\n"
    "loading.\n"
    "\n"
    "A type is served by the first TYPE.so in the path that loads: a refused file\n"
    "does not hide a good one later in the path (its warning ends \"; using PATH\"),\n"
    "and files after the one used are listed as shadowed and never opened.\n"
    "\n"
    "JSON: a list of objects with name, version, abi, path, status\n"
    "(loaded|refused|shadowed), reason, used_instead (the file serving the type\n"
    "when this one does not), capabilities, description, license.\n";

int cmd_plugins(cli *c, int argc, char **argv)
{
    static const struct option longopts[] = {CLI_COMMON_LONG, {NULL, 0, NULL, 0}};
    int opt;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, CLI_COMMON_SHORT, longopts, NULL)) != -1) {
        if (opt == OPT_HELP) {
            cli_print_help(help);
            return 0;
        }
        int r = cli_common_opt(c, opt, optarg);
        if (r < 0)
            return 2;
        if (r == 0)
            return cli_usage_error(c, "ctarget plugins --help", "unknown option '%s'",
                                   argv[optind - 1]);
    }
    if (optind < argc)
        return cli_usage_error(c, "ctarget plugins --help", "unexpected argument '%s'",
                               argv[optind]);
    cli_setup_diagnostics(c);
    char *json;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = ctarget_plugins_list(&json, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    if (c->json) {
        out_json_text(json);
    } else {
        json_t *rows = cli_parse_json(json);
        if (!json_array_size(rows)) {
            printf("no plugins found; the search path is $CTARGET_PLUGIN_PATH then the "
                   "installed plugin directory\n");
        } else {
            static const out_col cols[] = {{"NAME", "name"}, {"VERSION", "version"},
                                           {"ABI", "abi"}, {"STATUS", "status"},
                                           {"CAPABILITIES", "capabilities"}, {"PATH", "path"}};
            out_table(rows, cols, sizeof cols / sizeof cols[0]);
            size_t i;
            json_t *r;
            /* diagnostics, one line per refusal naming the file: stderr, so the table on
             * stdout stays parseable; -q leaves only the table's "refused" status */
            fflush(stdout);
            json_array_foreach(rows, i, r) {
                const char *st = json_string_value(json_object_get(r, "status"));
                const char *instead = json_string_value(json_object_get(r, "used_instead"));
                if (c->quiet || !st || strcmp(st, "refused") != 0)
                    continue;
                fprintf(stderr, "ctarget: warning: refused %s: %s%s%s\n",
                        json_string_value(json_object_get(r, "path")),
                        json_string_value(json_object_get(r, "reason")),
                        instead ? "; using " : "", instead ? instead : "");
            }
        }
        json_decref(rows);
    }
    free(json);
    return 0;
}
