/* ctarget compute ...: the compute-target registry. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget compute SUBCOMMAND [ARGS...]\n"
    "\n"
    "Compute targets are where runs execute. Some types are created (provisioned) by\n"
    "ctarget, others attached (they already exist); `local` is always there.\n"
    "\n"
    "subcommands:\n"
    "  create NAME --type T [--set KEY=VALUE ...] [--config FILE.json] [--wait]\n"
    "  attach NAME --type T [--set KEY=VALUE ...] [--config FILE.json]\n"
    "  list                     every target with its type and provisioning state\n"
    "  show NAME                stored configuration (secrets masked) and facts\n"
    "  status NAME [--wait]     live state from the backend\n"
    "  update NAME --set KEY=VALUE ...\n"
    "  start|stop|restart NAME  power control, where the type has it\n"
    "  nodes NAME               the target's nodes, where the type reports them\n"
    "  detach NAME              forget a target; never destroys it\n"
    "  delete NAME              destroy a target ctarget created, then forget it\n"
    "  help TYPE                the settings a target type takes\n"
    "\n"
    "options:\n"
    "  --type T                 target type (a plugin name, see `ctarget plugins`)\n"
    "  --set KEY=VALUE          a setting; repeat as needed. VALUE forms:\n"
    "                             @FILE   the contents of FILE (@- reads stdin)\n"
    "                             env:VAR secret read from $VAR at each use (not stored)\n"
    "                             file:P  secret read from file P at each use (not stored)\n"
    "                           An empty VALUE unsets KEY (update).\n"
    "  --config FILE.json       settings as a JSON object; --set overrides it\n"
    "  --password-stdin         read the 'password' setting from standard input\n"
    "  --accept-new-host-key    trust an SSH host key seen for the first time\n"
    "  --wait                   follow provisioning until it settles, with progress\n"
    "  --timeout SECONDS        give up waiting after this long (default 3600)\n"
    "  -o, --output json        machine-readable output\n"
    "\n"
    "examples:\n"
    "  ctarget compute help remotevm\n"
    "  ctarget compute attach gpu-box --type remotevm --set address=10.0.0.4 \\\n"
    "      --set username=ml --set private_key_file=~/.ssh/id_ed25519\n"
    "  echo \"$PW\" | ctarget compute attach vm2 --type remotevm --set address=vm2.corp \\\n"
    "      --set username=ml --password-stdin\n"
    "  ctarget compute update local --set max_concurrent_runs=2\n"
    "\n"
    "Invalid settings (unknown key, wrong type, missing required key) exit with code 3\n"
    "and nothing is stored. Secrets are kept in the workspace's own 0600 secret store,\n"
    "or not at all when given as env:/file: references, and are never printed.\n";

enum {
    OPT_TYPE = 2000, OPT_SET, OPT_CONFIG, OPT_WAIT, OPT_TIMEOUT, OPT_PASSWORD_STDIN,
    OPT_ACCEPT_HOSTKEY, OPT_YES
};

typedef struct args {
    const char *type;
    const char *config_file;
    int wait;
    long timeout;
    int password_stdin;
    int accept_new_host_key;
    int yes;
    char **sets;           /* "key=value" as typed */
    size_t n_sets;
    const char *name;
    int help;
} args;

static int parse(cli *c, int argc, char **argv, args *a, const char *sub)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONG,
        {"type", required_argument, NULL, OPT_TYPE},
        {"set", required_argument, NULL, OPT_SET},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"wait", no_argument, NULL, OPT_WAIT},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"password-stdin", no_argument, NULL, OPT_PASSWORD_STDIN},
        {"accept-new-host-key", no_argument, NULL, OPT_ACCEPT_HOSTKEY},
        {"yes", no_argument, NULL, OPT_YES},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    int opt;
    opterr = 0;
    optind = 0; /* 0, not 1: glibc re-reads the ordering mode only then */
    while ((opt = getopt_long(argc, argv, CLI_COMMON_SHORT, longopts, NULL)) != -1) {
        switch (opt) {
        case OPT_HELP:
            a->help = 1;
            break;
        case OPT_TYPE:
            a->type = optarg;
            break;
        case OPT_SET:
            if (!strchr(optarg, '='))
                return cli_usage_error(c, "ctarget compute --help",
                                       "--set needs KEY=VALUE, got '%s'", optarg);
            a->sets = realloc(a->sets, (a->n_sets + 1) * sizeof *a->sets);
            a->sets[a->n_sets++] = optarg;
            break;
        case OPT_CONFIG:
            a->config_file = optarg;
            break;
        case OPT_WAIT:
            a->wait = 1;
            break;
        case OPT_TIMEOUT: {
            char *end;
            errno = 0;
            a->timeout = strtol(optarg, &end, 10);
            if (errno || *end || a->timeout <= 0)
                return cli_usage_error(c, "ctarget compute --help",
                                       "--timeout takes a positive number of seconds, not '%s'",
                                       optarg);
            break;
        }
        case OPT_PASSWORD_STDIN:
            a->password_stdin = 1;
            break;
        case OPT_ACCEPT_HOSTKEY:
            a->accept_new_host_key = 1;
            break;
        case OPT_YES:
            a->yes = 1;
            break;
        case '?':
            return cli_usage_error(c, "ctarget compute --help", "unknown option '%s' for "
                                   "`compute %s`", argv[optind - 1], sub);
        case ':':
            return cli_usage_error(c, "ctarget compute --help", "option '%s' needs a value",
                                   argv[optind - 1]);
        default: {
            int r = cli_common_opt(c, opt, optarg);
            if (r < 0)
                return 2;
            if (r == 0)
                return cli_usage_error(c, "ctarget compute --help", "unknown option '%s'",
                                       argv[optind - 1]);
        }
        }
    }
    if (optind < argc)
        a->name = argv[optind++];
    if (optind < argc)
        return cli_usage_error(c, "ctarget compute --help", "unexpected argument '%s'",
                               argv[optind]);
    return 0;
}

/* ---- settings --------------------------------------------------------------------------- */

typedef struct settings {
    ctarget_setting *v;
    size_t n;
    char **owned;          /* strings to wipe and free */
    size_t n_owned;
} settings;

static char *own(settings *s, char *str)
{
    s->owned = realloc(s->owned, (s->n_owned + 1) * sizeof *s->owned);
    s->owned[s->n_owned++] = str;
    return str;
}

static void settings_free(settings *s)
{
    for (size_t i = 0; i < s->n_owned; i++) {
        memset(s->owned[i], 0, strlen(s->owned[i]));
        free(s->owned[i]);
    }
    free(s->owned);
    free(s->v);
}

static void add_setting(settings *s, const char *key, const char *value)
{
    s->v = realloc(s->v, (s->n + 1) * sizeof *s->v);
    s->v[s->n].key = key;
    s->v[s->n].value = value;
    s->n++;
}

static char *read_stream(FILE *f)
{
    size_t cap = 256, len = 0;
    char *buf = malloc(cap);
    int ch;
    while ((ch = fgetc(f)) != EOF) {
        if (len + 2 > cap)
            buf = realloc(buf, cap *= 2);
        buf[len++] = (char)ch;
    }
    buf[len] = '\0';
    if (len && buf[len - 1] == '\n')
        buf[--len] = '\0';
    if (len && buf[len - 1] == '\r')
        buf[--len] = '\0';
    return buf;
}

static int stdin_used;

static int value_from(cli *c, const char *key, const char *raw, settings *s, const char **out)
{
    if (raw[0] != '@' || raw[1] == '@') {
        *out = raw[0] == '@' ? raw + 1 : raw; /* @@ escapes a literal @ */
        return 0;
    }
    FILE *f;
    if (!strcmp(raw, "@-")) {
        if (stdin_used++)
            return cli_usage_error(c, "ctarget compute --help",
                                   "standard input can feed only one setting");
        f = stdin;
    } else if (!(f = fopen(raw + 1, "r"))) {
        fprintf(stderr, "ctarget: error: setting %s: cannot read %s: %s\n", key, raw + 1,
                strerror(errno));
        return CTARGET_E_CONFIG;
    }
    *out = own(s, read_stream(f));
    if (f != stdin)
        fclose(f);
    if (!**out) { /* an empty file must not silently unset (or wipe a stored secret) */
        fprintf(stderr, "ctarget: error: setting %s: %s is empty (to unset %s, use --set "
                "%s=)\n", key, !strcmp(raw, "@-") ? "standard input" : raw + 1, key, key);
        return CTARGET_E_CONFIG;
    }
    return 0;
}

/* The text of one scalar of a --config file: strings as they are, integers in decimal, reals
 * in the shortest form that reads back exactly (0.1 stays 0.1, 0.123456789 is not rounded),
 * booleans as true/false.  NULL for anything else (objects, arrays, null). */
static char *config_scalar(json_t *v)
{
    char buf[64];
    switch (json_typeof(v)) {
    case JSON_STRING:
        return strdup(json_string_value(v));
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return strdup(buf);
    case JSON_REAL: {
        double d = json_real_value(v);
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, sizeof buf, "%.*g", prec, d);
            if (strtod(buf, NULL) == d)
                break;
        }
        return strdup(buf);
    }
    case JSON_TRUE:
        return strdup("true");
    case JSON_FALSE:
        return strdup("false");
    default:
        return NULL;
    }
}

static int load_config_file(cli *c, const char *path, settings *s)
{
    json_error_t je;
    /* non-objects are refused below; a key given twice is an error, not "last one wins" */
    json_t *j = json_load_file(path, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        /* jansson quotes the offending token ("near '...'"), which may be a secret value
         * (an unquoted or unterminated password): say where instead, except for a duplicate
         * key, whose name is no secret */
        char *near = strstr(je.text, " near '");
        if (near && strncmp(je.text, "duplicate object key", 20))
            *near = '\0';
        if (je.line < 1) /* not a syntax error: the file could not be read */
            fprintf(stderr, "ctarget: error: --config %s: %s\n", path, je.text);
        else
            fprintf(stderr, "ctarget: error: --config %s: %s (line %d, column %d): fix the "
                    "JSON\n", path, je.text, je.line, je.column);
        return CTARGET_E_CONFIG;
    }
    if (!json_is_object(j)) {
        fprintf(stderr, "ctarget: error: --config %s: expected a JSON object of settings\n",
                path);
        json_decref(j);
        return CTARGET_E_CONFIG;
    }
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
        char *text = NULL;
        if (json_is_array(v)) {
            size_t i, len = 1;
            json_t *x;
            char **parts = calloc(json_array_size(v) + 1, sizeof *parts);
            int ok = 1;
            json_array_foreach(v, i, x) {
                parts[i] = json_is_string(x) || json_is_number(x) ? config_scalar(x) : NULL;
                if (!parts[i])
                    ok = 0;
                else
                    len += strlen(parts[i]) + 1;
            }
            if (ok) {
                text = calloc(1, len);
                json_array_foreach(v, i, x) {
                    if (i)
                        strcat(text, ",");
                    strcat(text, parts[i]);
                }
            }
            for (i = 0; i < json_array_size(v); i++)
                free(parts[i]);
            free(parts);
        } else if (json_is_null(v)) {
            text = strdup(""); /* null unsets, like --set KEY= */
        } else {
            text = config_scalar(v);
        }
        if (!text) {
            fprintf(stderr, "ctarget: error: --config %s: setting '%s' must be a string, "
                    "number, boolean or list of strings\n", path, k);
            json_decref(j);
            return CTARGET_E_CONFIG;
        }
        add_setting(s, own(s, strdup(k)), own(s, text));
    }
    json_decref(j);
    (void)c;
    return 0;
}

/* Secret keys of a type, to warn about secrets typed on the command line. */
static json_t *type_keys(const char *type)
{
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    if (!type || ctarget_plugin_describe(type, &json, &err) != CTARGET_OK)
        return NULL;
    json_t *d = cli_parse_json(json);
    free(json);
    json_t *keys = json_incref(json_object_get(d, "config_keys"));
    json_decref(d);
    return keys;
}

static int key_is_secret(json_t *keys, const char *key)
{
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k) if (!strcmp(json_string_value(json_object_get(k, "name")), key))
        return json_is_true(json_object_get(k, "secret"));
    return 0;
}

static int build_settings(cli *c, args *a, const char *type, settings *s)
{
    memset(s, 0, sizeof *s);
    int rc;
    if (a->config_file && (rc = load_config_file(c, a->config_file, s)))
        return rc;
    json_t *keys = type_keys(type);
    for (size_t i = 0; i < a->n_sets; i++) {
        char *eq = strchr(a->sets[i], '=');
        char *key = own(s, strndup(a->sets[i], (size_t)(eq - a->sets[i])));
        const char *value = NULL;
        if ((rc = value_from(c, key, eq + 1, s, &value))) {
            json_decref(keys);
            return rc;
        }
        if (value == eq + 1 && *value && key_is_secret(keys, key) &&
            strncmp(value, "env:", 4) && strncmp(value, "file:", 5) && !c->quiet)
            fprintf(stderr, "ctarget: warning: secret '%s' given on the command line is "
                    "visible to other users in the process list and stays in your shell "
                    "history; prefer --password-stdin, %s=@FILE or %s=env:VAR\n", key, key, key);
        add_setting(s, key, value);
    }
    json_decref(keys);
    if (a->password_stdin) {
        if (stdin_used++)
            return cli_usage_error(c, "ctarget compute --help",
                                   "standard input can feed only one setting");
        char *pw = own(s, read_stream(stdin));
        if (!*pw) {
            fprintf(stderr, "ctarget: error: --password-stdin: standard input was empty\n");
            return CTARGET_E_CONFIG;
        }
        add_setting(s, "password", pw);
    }
    return 0;
}

/* ---- output ----------------------------------------------------------------------------- */

static void print_target(cli *c, const char *json)
{
    if (c->json) {
        out_json_text(json);
        return;
    }
    json_t *j = cli_parse_json(json);
    out_object(j, 0);
    json_decref(j);
}

static int type_help(cli *c, const char *type)
{
    char *json;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status rc = ctarget_plugin_describe(type, &json, &err);
    if (rc)
        return cli_fail(c, rc, &err);
    if (c->json) {
        out_json_text(json);
        free(json);
        return 0;
    }
    json_t *d = cli_parse_json(json);
    free(json);
    printf("target type %s %s: %s\n", type, json_string_value(json_object_get(d, "version")),
           json_string_value(json_object_get(d, "description")));
    char *caps = json_scalar_text(json_object_get(d, "capabilities"));
    printf("capabilities: %s\n", caps);
    free(caps);
    printf("names: %s\n\nsettings:\n", json_string_value(json_object_get(d, "name_rule")));
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(d, "config_keys"), i, k) {
        const char *req = json_string_value(json_object_get(k, "required"));
        printf("  %-28s %s%s%s%s\n", json_string_value(json_object_get(k, "name")),
               json_string_value(json_object_get(k, "type")),
               !strcmp(req, "no") ? "" : !strcmp(req, "always") ? ", required"
               : !strcmp(req, "create") ? ", required to create" : ", required to attach",
               json_is_true(json_object_get(k, "secret")) ? ", secret" : "",
               json_object_get(k, "group") ? ", one of a group" : "");
        printf("      %s\n", json_string_value(json_object_get(k, "help")));
        if (json_string_value(json_object_get(k, "choices")))
            printf("      choices: %s\n", json_string_value(json_object_get(k, "choices")));
        if (json_string_value(json_object_get(k, "default")))
            printf("      default: %s\n", json_string_value(json_object_get(k, "default")));
        if (json_array_size(json_object_get(k, "flags"))) {
            char *f = json_scalar_text(json_object_get(k, "flags"));
            printf("      %s\n", f);
            free(f);
        }
    }
    if (!json_array_size(json_object_get(d, "config_keys")))
        printf("  (none)\n");
    json_decref(d);
    return 0;
}

/* ---- subcommands ------------------------------------------------------------------------ */

static int need_name(cli *c, args *a, const char *sub)
{
    if (!a->name)
        return cli_usage_error(c, "ctarget compute --help", "`compute %s` needs a target NAME",
                               sub);
    return 0;
}

static int do_add(cli *c, args *a, int create)
{
    const char *sub = create ? "create" : "attach";
    int rc;
    if (a->help && a->type)
        return type_help(c, a->type);
    if ((rc = need_name(c, a, sub)))
        return rc;
    if (!a->type)
        return cli_usage_error(c, "ctarget compute --help",
                               "`compute %s` needs --type (see `ctarget plugins`)", sub);
    settings s;
    if ((rc = build_settings(c, a, a->type, &s)) == 0 && (rc = cli_open_ws(c)) == 0) {
        ctarget_compute_opts o = {sizeof o, s.v, s.n, a->wait, a->timeout,
                                  a->accept_new_host_key};
        ctarget_error err;
        ctarget_error_init(&err);
        char *json = NULL;
        ctarget_status st = create ? ctarget_compute_create(c->ws, a->name, a->type, &o, &json,
                                                            &err)
                                   : ctarget_compute_attach(c->ws, a->name, a->type, &o, &json,
                                                            &err);
        if (json)
            print_target(c, json);
        free(json);
        rc = st ? cli_fail(c, st, &err) : 0;
        if (!st && !c->json && !c->quiet)
            fprintf(stderr, "%s %s\n", create ? "created" : "attached", a->name);
    }
    settings_free(&s);
    return rc;
}

static int do_list(cli *c)
{
    int rc = cli_open_ws(c);
    if (rc)
        return rc;
    char *json;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_compute_list(c->ws, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json) {
        out_json_text(json);
    } else {
        json_t *rows = cli_parse_json(json);
        static const out_col cols[] = {{"NAME", "name"}, {"TYPE", "type"},
                                       {"ORIGIN", "origin"}, {"STATE", "provisioning_state"},
                                       {"PLUGIN", "available"}, {"CREATED", "created_at"}};
        out_table(rows, cols, sizeof cols / sizeof cols[0]);
        json_decref(rows);
    }
    free(json);
    return 0;
}

typedef ctarget_status (*name_op)(ctarget_ws *, const char *, char **, ctarget_error *);

static int do_named(cli *c, args *a, const char *sub, name_op fn)
{
    int rc;
    if ((rc = need_name(c, a, sub)) || (rc = cli_open_ws(c)))
        return rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = fn(c->ws, a->name, &json, &err);
    if (json)
        print_target(c, json);
    free(json);
    return st ? cli_fail(c, st, &err) : 0;
}

static int do_status(cli *c, args *a)
{
    int rc;
    if ((rc = need_name(c, a, "status")) || (rc = cli_open_ws(c)))
        return rc;
    ctarget_compute_opts o = {sizeof o, NULL, 0, a->wait, a->timeout, 0};
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_compute_status_wait(c->ws, a->name, &o, &json, &err);
    if (json)
        print_target(c, json);
    free(json);
    return st ? cli_fail(c, st, &err) : 0;
}

static int do_update(cli *c, args *a)
{
    int rc;
    if ((rc = need_name(c, a, "update")) || (rc = cli_open_ws(c)))
        return rc;
    /* the type decides which keys are secret, for the command-line warning */
    char *shown = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    char *type = NULL;
    if (ctarget_compute_show(c->ws, a->name, &shown, &err) == CTARGET_OK) {
        json_t *j = cli_parse_json(shown);
        type = strdup(json_string_value(json_object_get(j, "type")));
        json_decref(j);
    }
    free(shown);
    settings s;
    if ((rc = build_settings(c, a, type, &s)) == 0) {
        ctarget_compute_opts o = {sizeof o, s.v, s.n, 0, 0, a->accept_new_host_key};
        char *json = NULL;
        ctarget_error_init(&err);
        ctarget_status st = ctarget_compute_update(c->ws, a->name, &o, &json, &err);
        if (json)
            print_target(c, json);
        free(json);
        rc = st ? cli_fail(c, st, &err) : 0;
    }
    free(type);
    settings_free(&s);
    return rc;
}

static int do_power(cli *c, args *a, const char *sub, ctarget_power_action act)
{
    int rc;
    if ((rc = need_name(c, a, sub)) || (rc = cli_open_ws(c)))
        return rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_compute_power(c->ws, a->name, act, NULL, &json, &err);
    if (json)
        print_target(c, json);
    free(json);
    return st ? cli_fail(c, st, &err) : 0;
}

static int do_nodes(cli *c, args *a)
{
    int rc;
    if ((rc = need_name(c, a, "nodes")) || (rc = cli_open_ws(c)))
        return rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_compute_nodes(c->ws, a->name, &json, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json) {
        out_json_text(json);
    } else {
        json_t *rows = cli_parse_json(json);
        size_t i;
        json_t *r;
        json_array_foreach(rows, i, r) {
            printf("node %zu\n", i + 1);
            out_object(r, 2);
        }
        if (!json_array_size(rows))
            printf("no nodes\n");
        json_decref(rows);
    }
    free(json);
    return 0;
}

static int confirm(const char *question)
{
    if (!isatty(0))
        return 1;
    fprintf(stderr, "%s [y/N] ", question);
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        return 0;
    return line[0] == 'y' || line[0] == 'Y';
}

static int do_remove(cli *c, args *a, int del)
{
    const char *sub = del ? "delete" : "detach";
    int rc;
    if ((rc = need_name(c, a, sub)) || (rc = cli_open_ws(c)))
        return rc;
    if (del && !a->yes) {
        char q[256];
        snprintf(q, sizeof q, "Destroy compute target %s and everything on it?", a->name);
        if (!confirm(q)) {
            fprintf(stderr, "ctarget: nothing deleted\n");
            return CTARGET_E_CANCELED;
        }
    }
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = del ? ctarget_compute_delete(c->ws, a->name, NULL, &err)
                            : ctarget_compute_detach(c->ws, a->name, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json)
        printf("{\"name\": \"%s\", \"%s\": true}\n", a->name, del ? "deleted" : "detached");
    else if (!c->quiet)
        fprintf(stderr, "%s %s\n", del ? "deleted" : "detached", a->name);
    return 0;
}

int cmd_compute(cli *c, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        if (argc < 2) {
            fputs(help, stderr);
            return 2;
        }
        cli_print_help(help);
        return 0;
    }
    const char *sub = argv[1];
    args a;
    int rc = parse(c, argc - 1, argv + 1, &a, sub);
    if (rc)
        goto out;
    cli_setup_diagnostics(c);
    if (!strcmp(sub, "help")) {
        rc = a.name ? type_help(c, a.name)
                    : cli_usage_error(c, "ctarget compute --help",
                                      "`compute help` needs a TYPE (see `ctarget plugins`)");
        goto out;
    }
    if (a.help && !(a.type && (!strcmp(sub, "create") || !strcmp(sub, "attach")))) {
        cli_print_help(help);
        rc = 0;
        goto out;
    }
    if (!strcmp(sub, "create") || !strcmp(sub, "attach"))
        rc = do_add(c, &a, !strcmp(sub, "create"));
    else if (!strcmp(sub, "list"))
        rc = a.name ? cli_usage_error(c, "ctarget compute --help", "unexpected argument '%s'",
                                      a.name)
                    : do_list(c);
    else if (!strcmp(sub, "show"))
        rc = do_named(c, &a, sub, ctarget_compute_show);
    else if (!strcmp(sub, "status"))
        rc = do_status(c, &a);
    else if (!strcmp(sub, "update"))
        rc = do_update(c, &a);
    else if (!strcmp(sub, "start"))
        rc = do_power(c, &a, sub, CTARGET_POWER_START);
    else if (!strcmp(sub, "stop"))
        rc = do_power(c, &a, sub, CTARGET_POWER_STOP);
    else if (!strcmp(sub, "restart"))
        rc = do_power(c, &a, sub, CTARGET_POWER_RESTART);
    else if (!strcmp(sub, "nodes"))
        rc = do_nodes(c, &a);
    else if (!strcmp(sub, "detach"))
        rc = do_remove(c, &a, 0);
    else if (!strcmp(sub, "delete"))
        rc = do_remove(c, &a, 1);
    else
        rc = cli_usage_error(c, "ctarget compute --help", "unknown subcommand `compute %s`",
                             sub);
out:
    free(a.sets);
    return rc;
}
