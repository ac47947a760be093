/* ctarget snapshot ...: content-addressed source snapshots. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char help[] =
    "usage: ctarget snapshot SUBCOMMAND [ARGS...]\n"
    "\n"
    "A snapshot is a source directory as a run sees it: a sorted manifest of paths,\n"
    "modes, sizes and SHA-256 hashes, whose own hash is the snapshot id. Contents go to\n"
    "the workspace's blob store once; unchanged files are not read again. Files matched\n"
    "by .amlignore (or, without one, .gitignore) and .git/ are left out.\n"
    "\n"
    "subcommands:\n"
    "  create DIR [--max-bytes N] [--max-files N]\n"
    "                           snapshot DIR; prints id, files, bytes, new_bytes, parent, git\n"
    "  list                     every snapshot, oldest first\n"
    "  show ID                  a snapshot's record and files (ID may be a unique prefix)\n"
    "  diff A B                 paths added (A), modified (M) and deleted (D) from A to B\n"
    "  export ID -o FILE [--zstd] [--since ID2]\n"
    "                           write a transport archive (pax tar: manifest.jsonl, then\n"
    "                           blobs/<sha256>); --since leaves out blobs ID2 already has;\n"
    "                           FILE '-' is standard output\n"
    "  extract FILE -C DIR      extract an archive safely (no absolute paths, no '..', no\n"
    "                           escaping links, no devices); missing blobs come from the\n"
    "                           workspace's blob store\n"
    "  gc                       delete blobs no snapshot references\n"
    "\n"
    "options:\n"
    "  --max-bytes N            size limit (default 300M, or $CTARGET_SNAPSHOT_MAX_BYTES);\n"
    "                           N in bytes, or with K, M or G\n"
    "  --max-files N            file limit (default 2000, or $CTARGET_SNAPSHOT_MAX_FILES)\n"
    "  --output json            machine-readable output (for export: use the long form,\n"
    "                           since -o names the archive there)\n"
    "\n"
    "examples:\n"
    "  ctarget snapshot create ./train --output json\n"
    "  ctarget snapshot diff 3f2a 9c1e\n"
    "  ctarget snapshot export 9c1e -o delta.tar.zst --zstd --since 3f2a\n"
    "  ctarget snapshot extract delta.tar.zst -C /tmp/tree\n"
    "\n"
    "Exceeding a limit exits with code 17 and names the largest files and directories.\n";

#define USAGE "ctarget snapshot --help"

enum { OPT_FORMAT = 3000, OPT_MAX_BYTES, OPT_MAX_FILES, OPT_ZSTD, OPT_SINCE };

typedef struct args {
    const char *pos[3];
    size_t npos;
    const char *out_file;
    const char *dir;         /* -C */
    const char *since;
    int zstd;
    int help;
    uint64_t max_bytes, max_files;
} args;

/* Bytes with an optional K/M/G suffix (binary), as the core reads the environment. */
static int parse_size(const char *s, uint64_t *out, int allow_suffix)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    int shift = 0;
    if (*end && allow_suffix) {
        shift = strchr("kK", *end) ? 10 : strchr("mM", *end) ? 20 : strchr("gG", *end) ? 30 : -1;
        end++;
        if (*end && strcmp(end, "B") && strcmp(end, "iB"))
            shift = -1;
    } else if (*end) {
        shift = -1;
    }
    if (errno || shift < 0 || v == 0 || v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_opt(cli *c, int opt, const char *sub, args *a, char **argv)
{
    switch (opt) {
    case OPT_HELP: a->help = 1; return 0;
    case 'o':
        if (!strcmp(sub, "export")) {
            a->out_file = optarg;
            return 0;
        }
        return cli_common_opt(c, OPT_OUTPUT, optarg) < 0 ? 2 : 0;
    case OPT_FORMAT: return cli_common_opt(c, OPT_OUTPUT, optarg) < 0 ? 2 : 0;
    case 'C': a->dir = optarg; return 0;
    case OPT_ZSTD: a->zstd = 1; return 0;
    case OPT_SINCE: a->since = optarg; return 0;
    case OPT_MAX_BYTES:
    case OPT_MAX_FILES:
        if (parse_size(optarg, opt == OPT_MAX_BYTES ? &a->max_bytes : &a->max_files,
                       opt == OPT_MAX_BYTES) != 0)
            return cli_usage_error(c, USAGE, "%s takes a positive %s, not '%s'",
                                   argv[optind - 1], opt == OPT_MAX_BYTES ? "size (e.g. 500M)"
                                   : "number", optarg);
        return 0;
    case '?':
        return cli_usage_error(c, USAGE, "unknown option '%s' for `snapshot %s`",
                               argv[optind - 1], sub);
    case ':':
        return cli_usage_error(c, USAGE, "option '%s' needs a value", argv[optind - 1]);
    default: {
        int r = cli_common_opt(c, opt, optarg);
        return r < 0 ? 2 : r == 0 ? cli_usage_error(c, USAGE, "unknown option '%s'",
                                                    argv[optind - 1]) : 0;
    }
    }
}

static int parse(cli *c, int argc, char **argv, args *a, const char *sub)
{
    static const struct option longopts[] = {
        {"output", required_argument, NULL, OPT_FORMAT},
        {"workspace", required_argument, NULL, OPT_WORKSPACE},
        {"verbose", no_argument, NULL, OPT_VERBOSE},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, OPT_HELP},
        {"max-bytes", required_argument, NULL, OPT_MAX_BYTES},
        {"max-files", required_argument, NULL, OPT_MAX_FILES},
        {"zstd", no_argument, NULL, OPT_ZSTD},
        {"since", required_argument, NULL, OPT_SINCE},
        {"directory", required_argument, NULL, 'C'},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    int opt, rc;
    opterr = 0;
    optind = 0; /* 0, not 1: glibc re-reads the ordering mode only then */
    while ((opt = getopt_long(argc, argv, ":o:C:vqh", longopts, NULL)) != -1)
        if ((rc = parse_opt(c, opt, sub, a, argv)))
            return rc;
    while (optind < argc) {
        if (a->npos == sizeof a->pos / sizeof a->pos[0])
            return cli_usage_error(c, USAGE, "unexpected argument '%s'", argv[optind]);
        a->pos[a->npos++] = argv[optind++];
    }
    return 0;
}

/* ---- subcommands ------------------------------------------------------------------------ */

static int want_args(cli *c, const args *a, const char *sub, size_t n, const char *what)
{
    if (a->npos < n)
        return cli_usage_error(c, USAGE, "`snapshot %s` needs %s", sub, what);
    if (a->npos > n)
        return cli_usage_error(c, USAGE, "unexpected argument '%s'", a->pos[n]);
    return 0;
}

static int finish(cli *c, ctarget_status st, const ctarget_error *err, char *json,
                  void (*table)(json_t *j))
{
    int rc = st ? cli_fail(c, st, err) : 0;
    if (!st && json) {
        if (c->json) {
            out_json_text(json);
        } else {
            json_t *j = cli_parse_json(json);
            table(j);
            json_decref(j);
        }
    }
    free(json);
    return rc;
}

static void print_size(const char *label, json_t *v)
{
    double n = (double)json_integer_value(v);
    const char *unit = "B";
    if (n >= 1024 * 1024 * 1024.0)
        n /= 1024 * 1024 * 1024.0, unit = "GB";
    else if (n >= 1024 * 1024.0)
        n /= 1024 * 1024.0, unit = "MB";
    else if (n >= 1024)
        n /= 1024, unit = "KB";
    printf("%-12s %.*f %s\n", label, *unit == 'B' ? 0 : 1, n, unit);
}

static void table_create(json_t *j)
{
    json_t *git = json_object_get(j, "git");
    printf("snapshot     %s\n", json_string_value(json_object_get(j, "id")));
    printf("source       %s\n", json_string_value(json_object_get(j, "source_dir")));
    printf("parent       %s\n", json_is_string(json_object_get(j, "parent"))
           ? json_string_value(json_object_get(j, "parent")) : "-");
    printf("files        %lld (%lld read)\n",
           (long long)json_integer_value(json_object_get(j, "files")),
           (long long)json_integer_value(json_object_get(j, "hashed_files")));
    print_size("bytes", json_object_get(j, "bytes"));
    print_size("new bytes", json_object_get(j, "new_bytes"));
    if (json_is_object(git)) {
        char *dirty = json_scalar_text(json_object_get(git, "dirty"));
        char *repo = json_scalar_text(json_object_get(git, "repository"));
        char *br = json_scalar_text(json_object_get(git, "branch"));
        char *co = json_scalar_text(json_object_get(git, "commit"));
        printf("git          %s %s %s (dirty: %s)\n", repo, br, co, dirty);
        free(dirty), free(repo), free(br), free(co);
    }
}

static int do_create(cli *c, args *a)
{
    int rc = want_args(c, a, "create", 1, "a source DIR");
    if (rc || (rc = cli_open_ws(c)))
        return rc;
    ctarget_snapshot_opts o = {sizeof o, a->max_bytes, a->max_files};
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_snapshot_create(c->ws, a->pos[0], &o, &json, &err);
    return finish(c, st, &err, json, table_create);
}

static void short_ids(json_t *rows)
{
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
        char buf[16];
        const char *keys[] = {"id", "parent"};
        for (size_t k = 0; k < 2; k++) {
            const char *v = json_string_value(json_object_get(r, keys[k]));
            snprintf(buf, sizeof buf, "%.12s", v ? v : "-");
            json_object_set_new(r, k ? "short_parent" : "short_id", json_string(buf));
        }
    }
}

static void table_list(json_t *rows)
{
    static const out_col cols[] = {{"ID", "short_id"}, {"CREATED", "created_at"},
                                   {"FILES", "files"}, {"BYTES", "bytes"},
                                   {"NEW", "new_bytes"}, {"PARENT", "short_parent"},
                                   {"SOURCE", "source_dir"}};
    short_ids(rows);
    if (json_array_size(rows))
        out_table(rows, cols, sizeof cols / sizeof cols[0]);
    else
        printf("no snapshots\n");
}

static void table_show(json_t *j)
{
    json_t *files = json_incref(json_object_get(j, "files"));
    json_object_del(j, "files");
    out_object(j, 0);
    printf("\n");
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f) {
        char sha[16];
        const char *s = json_string_value(json_object_get(f, "sha256"));
        snprintf(sha, sizeof sha, "%.12s", s ? s : "-");
        json_object_set_new(f, "short_sha", json_string(sha));
        const char *t = json_string_value(json_object_get(f, "target"));
        if (t) {
            char *p = malloc(strlen(t) + 8);
            sprintf(p, "-> %s", t);
            json_object_set_new(f, "short_sha", json_string(p));
            free(p);
        }
    }
    static const out_col cols[] = {{"TYPE", "type"}, {"SIZE", "size"}, {"SHA256", "short_sha"},
                                   {"PATH", "path"}};
    out_table(files, cols, sizeof cols / sizeof cols[0]);
    json_decref(files);
}

static void table_diff(json_t *j)
{
    static const char *const keys[] = {"added", "modified", "deleted"};
    static const char tags[] = "AMD";
    size_t total = 0;
    for (size_t k = 0; k < 3; k++) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(j, keys[k]), i, p) {
            printf("%c %s\n", tags[k], json_string_value(p));
            total++;
        }
    }
    if (!total)
        printf("no differences\n");
}

static void table_export(json_t *j)
{
    fprintf(stderr, "exported snapshot %.12s: %lld blobs, %lld bytes of content\n",
            json_string_value(json_object_get(j, "id")),
            (long long)json_integer_value(json_object_get(j, "blobs")),
            (long long)json_integer_value(json_object_get(j, "blob_bytes")));
}

static void table_gc(json_t *j)
{
    printf("removed %lld blobs, freed %lld bytes; kept %lld blobs (%lld bytes)\n",
           (long long)json_integer_value(json_object_get(j, "removed_blobs")),
           (long long)json_integer_value(json_object_get(j, "freed_bytes")),
           (long long)json_integer_value(json_object_get(j, "kept_blobs")),
           (long long)json_integer_value(json_object_get(j, "kept_bytes")));
}

static int do_simple(cli *c, args *a, const char *sub)
{
    int rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st;
    void (*table)(json_t *j);
    if (!strcmp(sub, "show")) {
        if ((rc = want_args(c, a, sub, 1, "a snapshot ID")) || (rc = cli_open_ws(c)))
            return rc;
        st = ctarget_snapshot_show(c->ws, a->pos[0], &json, &err);
        table = table_show;
    } else if (!strcmp(sub, "diff")) {
        if ((rc = want_args(c, a, sub, 2, "two snapshot IDs")) || (rc = cli_open_ws(c)))
            return rc;
        st = ctarget_snapshot_diff(c->ws, a->pos[0], a->pos[1], &json, &err);
        table = table_diff;
    } else {
        if ((rc = want_args(c, a, sub, 0, "")) || (rc = cli_open_ws(c)))
            return rc;
        int list = !strcmp(sub, "list");
        st = list ? ctarget_snapshot_list(c->ws, &json, &err) : ctarget_snapshot_gc(c->ws, &json,
                                                                                     &err);
        table = list ? table_list : table_gc;
    }
    return finish(c, st, &err, json, table);
}

static int do_export(cli *c, args *a)
{
    int rc = want_args(c, a, "export", 1, "a snapshot ID");
    if (rc)
        return rc;
    if (!a->out_file)
        return cli_usage_error(c, USAGE, "`snapshot export` needs -o FILE ('-' for stdout)");
    if (!strcmp(a->out_file, "-") && c->json)
        return cli_usage_error(c, USAGE, "--output json and -o - would both use stdout");
    if ((rc = cli_open_ws(c)))
        return rc;
    char *json = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_snapshot_export(c->ws, a->pos[0], a->since,
                                                a->zstd ? CTARGET_TAR_ZSTD : 0, a->out_file,
                                                &json, &err);
    if (!c->json && c->quiet) {
        free(json);
        json = NULL;
    }
    return finish(c, st, &err, json, table_export);
}

static int do_extract(cli *c, args *a)
{
    int rc = want_args(c, a, "extract", 1, "an archive FILE");
    if (rc)
        return rc;
    if (!a->dir)
        return cli_usage_error(c, USAGE, "`snapshot extract` needs -C DIR");
    if ((rc = cli_open_ws(c)))
        return rc;
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_status st = ctarget_snapshot_extract(c->ws, a->pos[0], a->dir, &err);
    if (st)
        return cli_fail(c, st, &err);
    if (c->json) {
        json_t *j = json_pack("{s:s, s:s}", "archive", a->pos[0], "directory", a->dir);
        char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        out_json_text(s);
        free(s);
        json_decref(j);
    } else if (!c->quiet) {
        fprintf(stderr, "extracted %s into %s\n", a->pos[0], a->dir);
    }
    return 0;
}

int cmd_snapshot(cli *c, int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    args a;
    int rc = parse(c, argc - 1, argv + 1, &a, sub);
    if (rc)
        return rc;
    cli_setup_diagnostics(c);
    if (a.help) {
        cli_print_help(help);
        return 0;
    }
    if (!strcmp(sub, "create"))
        return do_create(c, &a);
    if (!strcmp(sub, "list") || !strcmp(sub, "show") || !strcmp(sub, "diff") ||
        !strcmp(sub, "gc"))
        return do_simple(c, &a, sub);
    if (!strcmp(sub, "export"))
        return do_export(c, &a);
    if (!strcmp(sub, "extract"))
        return do_extract(c, &a);
    return cli_usage_error(c, USAGE, "unknown subcommand `snapshot %s`", sub);
}
