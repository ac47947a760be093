/* The plugin loader, seen through `ctarget plugins` and the commands that use plugins: every
 * deliberately broken plugin is refused with its own reason, never crashes the core and
 * never hides the good ones; tables of other ABI minors work both ways. */
#define _GNU_SOURCE
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static json_t *plugins_json(const char *const env[])
{
    const char *args[] = {"plugins", "--output", "json", NULL};
    tl_result r = tl_ctarget_run(NULL, NULL, env, args);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(json_is_array(j));
    return j;
}

/* The entry for a plugin name whose path contains `in` (NULL: any). */
static json_t *find(json_t *list, const char *name, const char *in)
{
    size_t i;
    json_t *p;
    json_array_foreach(list, i, p) {
        const char *n = json_string_value(json_object_get(p, "name"));
        const char *path = json_string_value(json_object_get(p, "path"));
        if (n && !strcmp(n, name) && (!in || (path && strstr(path, in))))
            return p;
    }
    return NULL;
}

static const char *status_of(json_t *p)
{
    return p ? json_string_value(json_object_get(p, "status")) : "(missing)";
}

static const char *reason_of(json_t *p)
{
    const char *r = p ? json_string_value(json_object_get(p, "reason")) : NULL;
    return r ? r : "";
}

static void expect_refused(json_t *list, const char *name, const char *needle)
{
    json_t *p = find(list, name, NULL);
    CU_ASSERT_PTR_NOT_NULL(p);
    CU_ASSERT_STRING_EQUAL(status_of(p), "refused");
    /* one line, about the file it names */
    CU_ASSERT(reason_of(p)[0] != '\0' && !strchr(reason_of(p), '\n'));
    const char *path = p ? json_string_value(json_object_get(p, "path")) : NULL;
    char *tail = NULL;
    if (asprintf(&tail, "/%s.so", name) < 0)
        abort();
    CU_ASSERT(path && strlen(path) > strlen(tail) &&
              !strcmp(path + strlen(path) - strlen(tail), tail));
    free(tail);
    if (!strstr(reason_of(p), needle))
        fprintf(stderr, "%s: reason '%s' lacks '%s'\n", name, reason_of(p), needle);
    CU_ASSERT_PTR_NOT_NULL(strstr(reason_of(p), needle));
}

static void t_each_bad_plugin_refused_with_its_reason(void)
{
    json_t *list = plugins_json(NULL);
    expect_refused(list, "nosym", "no entry symbol ctarget_plugin_entry_v1");
    expect_refused(list, "abi2", "ABI 2");
    expect_refused(list, "wrongmajor", "built for ABI 2, this core speaks ABI 1");
    expect_refused(list, "newminor", "needs core ABI 1.1");
    expect_refused(list, "misnamed", "othername");
    expect_refused(list, "noslot", "compute.status");
    expect_refused(list, "capnoslot", "compute.create");
    expect_refused(list, "nulldesc", "no descriptor");
    /* dlopen's own words, naming the missing library */
    expect_refused(list, "needsdep", "libctmissing.so.0");
    json_decref(list);
}

static void t_good_plugins_still_loaded_beside_bad_ones(void)
{
    json_t *list = plugins_json(NULL);
    const char *good[] = {"local", "testcloud", "testssh", "testaci", "oldabi", "newabi",
                          "badinit"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        json_t *p = find(list, good[i], NULL);
        if (!p || strcmp(status_of(p), "loaded"))
            fprintf(stderr, "%s: %s %s\n", good[i], status_of(p), reason_of(p));
        CU_ASSERT_STRING_EQUAL(status_of(p), "loaded");
        CU_ASSERT(json_is_null(json_object_get(p, "reason")));
    }
    json_decref(list);
}

static void t_json_has_the_documented_fields(void)
{
    json_t *list = plugins_json(NULL);
    size_t i;
    json_t *p;
    CU_ASSERT(json_array_size(list) >= 16);
    json_array_foreach(list, i, p) {
        const char *keys[] = {"name", "version", "path", "status", "reason", "capabilities"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            CU_ASSERT_PTR_NOT_NULL(json_object_get(p, keys[k]));
        CU_ASSERT(json_is_array(json_object_get(p, "capabilities")));
    }
    json_t *tc = find(list, "testcloud", NULL);
    json_t *caps = json_object_get(tc, "capabilities");
    int has_create = 0;
    json_array_foreach(caps, i, p)
        has_create |= !strcmp(json_string_value(p), "create");
    CU_ASSERT(has_create);
    json_decref(list);
}

static size_t count_lines(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *l = s; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l) : strlen(l);
        char *line = strndup(l, len);
        n += strstr(line, needle) != NULL;
        free(line);
        l = e ? e + 1 : NULL;
    }
    return n;
}

static void t_table_lists_refused_and_reasons_go_to_stderr(void)
{
    json_t *list = plugins_json(NULL);
    size_t refused = 0, i;
    json_t *p;
    json_array_foreach(list, i, p) refused += !strcmp(status_of(p), "refused");
    json_decref(list);
    CU_ASSERT(refused >= 9);

    tl_result r = TL_CT(NULL, "plugins");
    TL_ASSERT_EXIT(r, 0);
    /* stdout: the table, good and bad rows alike, without the diagnostics */
    CU_ASSERT(tl_contains(r.out, "testcloud"));
    CU_ASSERT(tl_contains(r.out, "noslot"));
    CU_ASSERT_EQUAL(count_lines(r.out, "refused"), refused);
    CU_ASSERT(!tl_contains(r.out, "compute.status"));
    /* stderr: one line per refusal, naming the file and the reason */
    CU_ASSERT_EQUAL(count_lines(r.err, "refused"), refused);
    CU_ASSERT_EQUAL(count_lines(r.err, ""), refused); /* nothing else on stderr */
    CU_ASSERT(tl_contains(r.err, "/noslot.so: missing mandatory slot compute.status\n"));
    CU_ASSERT(tl_contains(r.err, "/needsdep.so: dlopen failed"));
    CU_ASSERT(tl_contains(r.err, "/wrongmajor.so: built for ABI 2"));
    CU_ASSERT(!tl_contains(r.err, "testcloud.so"));
    tl_result_free(&r);
    /* -q: the table alone */
    r = TL_CT(NULL, "-q", "plugins");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_STRING_EQUAL(r.err, "");
    CU_ASSERT_EQUAL(count_lines(r.out, "refused"), refused);
    tl_result_free(&r);
}

/* A private plugin directory with copies of build-tree plugins. */
static char *plugdir(const char *tag)
{
    char *d = tl_tmpdir(tag);
    chmod(d, 0755);
    return d;
}

static void copy_plugin(const char *name, const char *dir, const char *as)
{
    char *src = tl_path(tl_builddir(), "tests/plugins/.libs");
    char *from = tl_path(src, name);
    char *to = tl_path(dir, as);
    const char *argv[] = {"cp", from, to, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    chmod(to, 0755);
    tl_result_free(&r);
    free(src);
    free(from);
    free(to);
}

static char *path_env(const char *first)
{
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s:%s", first, getenv("CTARGET_PLUGIN_PATH")) < 0)
        abort();
    return pp;
}

static void t_files_that_are_not_plugins_refused(void)
{
    char *d = plugdir("plug");
    char *f = tl_path(d, "x.so");
    tl_write_file(f, "#!/bin/sh\necho this is not a shared object\n");
    chmod(f, 0644);
    char *e = tl_path(d, "empty.so");
    tl_write_file(e, "");
    chmod(e, 0644);
    char *sub = tl_path(d, "adir.so");
    mkdir(sub, 0755);
    /* an ELF file, but a program: dlopen refuses it (or it has no entry symbol) */
    char *exe = tl_path(d, "prog.so");
    const char *cp[] = {"cp", "/bin/true", exe, NULL};
    tl_result r = tl_exec(cp, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    chmod(exe, 0755);
    char *pp = path_env(d);
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    expect_refused(list, "x", "not an ELF");
    expect_refused(list, "empty", "not an ELF");
    expect_refused(list, "adir", "not a regular file");
    expect_refused(list, "prog", "");
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "testcloud", NULL)), "loaded");
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "local", NULL)), "loaded");
    json_decref(list);
    /* and the type is unusable, with the reason, without a crash */
    char *ws = tl_tmpdir("ws");
    const char *args[] = {"compute", "attach", "xx1", "--type", "x", NULL};
    r = tl_ctarget_run(ws, NULL, env, args);
    CU_ASSERT(r.status != 0 && r.status < 128);
    CU_ASSERT(tl_contains(r.err, "x.so") && tl_contains(r.err, "not an ELF"));
    tl_result_free(&r);
    free(ws);
    free(pp), free(f), free(e), free(sub), free(exe), free(d);
}

static void t_missing_and_empty_path_entries_tolerated(void)
{
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=/nonexistent/ctarget-a::%s:/nonexistent/b:",
                 getenv("CTARGET_PLUGIN_PATH")) < 0)
        abort();
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "testcloud", NULL)), "loaded");
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "local", NULL)), "loaded");
    json_decref(list);
    free(pp);
}

static void t_world_writable_file_and_directory_refused(void)
{
    char *d = plugdir("plug");
    copy_plugin("testssh.so", d, "testssh.so");
    char *f = tl_path(d, "testssh.so");
    chmod(f, 0777);
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s", d) < 0)
        abort();
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    expect_refused(list, "testssh", "world-writable");
    json_decref(list);
    /* the file is fine, the directory is not */
    chmod(f, 0755);
    chmod(d, 0777);
    list = plugins_json(env);
    expect_refused(list, "testssh", "world-writable");
    json_decref(list);
    chmod(d, 0755);
    list = plugins_json(env);
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "testssh", NULL)), "loaded");
    json_decref(list);
    free(pp);
    free(f);
    free(d);
}

/* ctormark.so's constructor appends to $CTARGET_TEST_CTOR_MARK whenever it is dlopen'ed. */
static int ctor_ran(const char *dir, mode_t dir_mode, mode_t file_mode, json_t **entry)
{
    char *src = tl_path(tl_builddir(), "tests/plugins/ctor/ctormark.so");
    char *f = tl_path(dir, "ctormark.so");
    const char *cp[] = {"cp", src, f, NULL};
    tl_result r = tl_exec(cp, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    chmod(f, file_mode);
    chmod(dir, dir_mode);
    char *mdir = tl_tmpdir("mark");
    char *mark = tl_path(mdir, "mark");
    char *menv = NULL, *pp = NULL;
    if (asprintf(&menv, "CTARGET_TEST_CTOR_MARK=%s", mark) < 0 ||
        asprintf(&pp, "CTARGET_PLUGIN_PATH=%s", dir) < 0)
        abort();
    const char *env[] = {pp, menv, NULL};
    json_t *list = plugins_json(env);
    *entry = json_deep_copy(find(list, "ctormark", NULL));
    json_decref(list);
    struct stat st;
    int ran = stat(mark, &st) == 0;
    chmod(dir, 0755);
    free(src), free(f), free(mark), free(mdir), free(menv), free(pp);
    return ran;
}

static void t_refused_for_permissions_before_any_code_runs(void)
{
    json_t *e = NULL;
    char *d[3] = {plugdir("ok"), plugdir("wwfile"), plugdir("wwdir")};
    /* the mark works: a good copy is loaded, and its constructor ran */
    CU_ASSERT(ctor_ran(d[0], 0755, 0755, &e));
    CU_ASSERT_STRING_EQUAL(status_of(e), "loaded");
    json_decref(e);
    CU_ASSERT(!ctor_ran(d[1], 0755, 0757, &e));
    CU_ASSERT_STRING_EQUAL(status_of(e), "refused");
    CU_ASSERT(tl_contains(reason_of(e), "world-writable"));
    json_decref(e);
    CU_ASSERT(!ctor_ran(d[2], 0777, 0755, &e));
    CU_ASSERT_STRING_EQUAL(status_of(e), "refused");
    CU_ASSERT(tl_contains(reason_of(e), "directory"));
    json_decref(e);
    for (int i = 0; i < 3; i++)
        free(d[i]);
}

static void t_first_in_search_path_wins_later_ones_shadowed(void)
{
    char *d = plugdir("plug");
    copy_plugin("testssh.so", d, "testssh.so");
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s:%s", d, getenv("CTARGET_PLUGIN_PATH")) < 0)
        abort();
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    json_t *first = find(list, "testssh", d);
    json_t *later = find(list, "testssh", "/tests/plugins/.libs");
    CU_ASSERT_STRING_EQUAL(status_of(first), "loaded");
    CU_ASSERT(json_is_null(json_object_get(first, "used_instead")));
    CU_ASSERT_STRING_EQUAL(status_of(later), "shadowed");
    CU_ASSERT_PTR_NOT_NULL(strstr(reason_of(later), "shadowed"));
    /* the shadowed entry names the file that wins, in its reason and in used_instead */
    CU_ASSERT_PTR_NOT_NULL(strstr(reason_of(later), d));
    const char *instead = json_string_value(json_object_get(later, "used_instead"));
    CU_ASSERT(instead && !strcmp(instead, json_string_value(json_object_get(first, "path"))));
    /* shadowed is not refused: no warning for it in the table's diagnostics */
    tl_result t = tl_ctarget_run(NULL, NULL, env, (const char *const[]){"plugins", NULL});
    TL_ASSERT_EXIT(t, 0);
    CU_ASSERT(tl_contains(t.out, "shadowed"));
    CU_ASSERT(!tl_contains(t.err, "testssh.so"));
    tl_result_free(&t);
    json_decref(list);
    /* and targets of the type use the first one */
    char *ws = tl_tmpdir("ws");
    const char *args[] = {"compute", "show", "local", "--output", "json", NULL};
    const char *att[] = {"compute", "attach", "vm1", "--type", "testssh", "--set",
                         "address=10.3.3.3", "--set", "username=u", "--set",
                         "password=pw-123456", NULL};
    tl_result r = tl_ctarget_run(ws, NULL, env, att);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    args[2] = "vm1";
    r = tl_ctarget_run(ws, NULL, env, args);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    const char *plugin = json_string_value(json_object_get(j, "plugin"));
    CU_ASSERT(plugin && !strncmp(plugin, d, strlen(d)));
    json_decref(j);
    tl_result_free(&r);
    free(ws);
    free(pp);
    free(d);
}

/* A refused file earlier in the path does not hide a good one later (as PATH lookup skips
 * a file it cannot execute): the good one serves the type, the refused one is listed with
 * its reason and the file used instead, and a command using the type says so once. */
static void t_refused_earlier_file_does_not_hide_a_good_later_one(void)
{
    char *d = plugdir("plug");
    copy_plugin("testssh.so", d, "testssh.so");
    char *f = tl_path(d, "testssh.so");
    chmod(f, 0757); /* world-writable: refused before it is opened */
    char *pp = path_env(d);
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    json_t *bad = find(list, "testssh", d);
    json_t *good = find(list, "testssh", "/tests/plugins/.libs");
    CU_ASSERT_STRING_EQUAL(status_of(bad), "refused");
    CU_ASSERT(tl_contains(reason_of(bad), "world-writable"));
    CU_ASSERT_STRING_EQUAL(status_of(good), "loaded");
    const char *gp = json_string_value(json_object_get(good, "path"));
    const char *instead = json_string_value(json_object_get(bad, "used_instead"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(gp);
    char *good_path = strdup(gp); /* outlives the list */
    CU_ASSERT(instead && !strcmp(instead, good_path));
    CU_ASSERT(json_is_null(json_object_get(good, "used_instead")));
    json_decref(list);

    /* the table's diagnostic: the refusal, its reason, and the file used instead */
    tl_result r = tl_ctarget_run(NULL, NULL, env, (const char *const[]){"plugins", NULL});
    TL_ASSERT_EXIT(r, 0);
    char *want = NULL;
    if (asprintf(&want, "ctarget: warning: refused %s: file is world-writable", f) < 0)
        abort();
    CU_ASSERT(tl_contains(r.err, want));
    char *tail = NULL;
    if (asprintf(&tail, "; using %s\n", good_path) < 0)
        abort();
    CU_ASSERT(tl_contains(r.err, tail));
    CU_ASSERT_EQUAL(count_lines(r.err, "testssh.so"), 1);
    if (!tl_contains(r.err, tail))
        tl_dump("plugins", &r);
    tl_result_free(&r);

    /* a command that needs the type uses the good file and warns once, naming both */
    char *ws = tl_tmpdir("ws");
    const char *att[] = {"compute", "attach", "vm1", "--type", "testssh", "--set",
                         "address=10.3.3.4", "--set", "username=u", "--set",
                         "password=pw-123456", NULL};
    r = tl_ctarget_run(ws, NULL, env, att);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_EQUAL(count_lines(r.err, "refused"), 1);
    CU_ASSERT(tl_contains(r.err, f) && tl_contains(r.err, "world-writable") &&
              tl_contains(r.err, tail));
    tl_result_free(&r);
    const char *show[] = {"compute", "show", "vm1", "--output", "json", NULL};
    r = tl_ctarget_run(ws, NULL, env, show);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "plugin")), good_path);
    json_decref(j);
    tl_result_free(&r);
    free(good_path);
    free(ws), free(want), free(tail), free(pp), free(f), free(d);
}

/* Every file of a type refused: the type is unavailable, the error names the first file and
 * its reason and counts the others. */
static void t_type_unavailable_when_every_file_refused(void)
{
    char *d1 = plugdir("plug"), *d2 = plugdir("plug");
    copy_plugin("testssh.so", d1, "zz.so");
    copy_plugin("testssh.so", d2, "zz.so");
    char *f1 = tl_path(d1, "zz.so");
    chmod(f1, 0757);
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s:%s", d1, d2) < 0)
        abort();
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    json_t *a = find(list, "zz", d1), *b = find(list, "zz", d2);
    CU_ASSERT_STRING_EQUAL(status_of(a), "refused");
    CU_ASSERT_STRING_EQUAL(status_of(b), "refused"); /* named testssh inside */
    CU_ASSERT(tl_contains(reason_of(b), "declares name 'testssh'"));
    CU_ASSERT(json_is_null(json_object_get(a, "used_instead")));
    json_decref(list);
    char *ws = tl_tmpdir("ws");
    const char *att[] = {"compute", "attach", "zz1", "--type", "zz", NULL};
    tl_result r = tl_ctarget_run(ws, NULL, env, att);
    CU_ASSERT(r.status != 0 && r.status < 128);
    CU_ASSERT(tl_contains(r.err, "target type 'zz' is unavailable"));
    CU_ASSERT(tl_contains(r.err, f1) && tl_contains(r.err, "world-writable"));
    CU_ASSERT(tl_contains(r.err, "and 1 more zz.so refused"));
    tl_result_free(&r);
    free(ws), free(pp), free(f1), free(d1), free(d2);
}

/* A shadowed file is never opened: its constructor does not run. */
static void t_shadowed_file_never_opened(void)
{
    char *d1 = plugdir("plug"), *d2 = plugdir("plug");
    char *src = tl_path(tl_builddir(), "tests/plugins/ctor/ctormark.so");
    char *dirs[2] = {d1, d2};
    for (int i = 0; i < 2; i++) {
        char *to = tl_path(dirs[i], "ctormark.so");
        const char *cp[] = {"cp", src, to, NULL};
        tl_result r = tl_exec(cp, NULL, NULL);
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
        chmod(to, 0755);
        free(to);
    }
    char *mdir = tl_tmpdir("mark"), *mark = tl_path(mdir, "mark");
    char *menv = NULL, *pp = NULL;
    if (asprintf(&menv, "CTARGET_TEST_CTOR_MARK=%s", mark) < 0 ||
        asprintf(&pp, "CTARGET_PLUGIN_PATH=%s:%s", d1, d2) < 0)
        abort();
    const char *env[] = {pp, menv, NULL};
    json_t *list = plugins_json(env);
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "ctormark", d1)), "loaded");
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "ctormark", d2)), "shadowed");
    json_decref(list);
    char *marks = tl_read_file(mark);
    CU_ASSERT_STRING_EQUAL(marks ? marks : "", "loaded\n"); /* the first copy only */
    free(marks);
    free(src), free(mark), free(mdir), free(menv), free(pp), free(d1), free(d2);
}

static void expect_no_targets_but_local(const char *ws)
{
    tl_result r = TL_CT(ws, "compute", "list", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(j, 0), "name")),
                           "local");
    json_decref(j);
    tl_result_free(&r);
}

static void expect_one_line(const char *err)
{
    const char *nl = strchr(err, '\n');
    CU_ASSERT_PTR_NOT_NULL(nl);
    CU_ASSERT(nl && nl[1] == '\0');
}

static void t_refused_type_cannot_be_used(void)
{
    char *ws = tl_tmpdir("ws");
    const char *const types[][2] = {{"noslot", "compute.status"},
                                    {"wrongmajor", "ABI 2"},
                                    {"newminor", "needs core ABI 1.1"},
                                    {"needsdep", "libctmissing.so.0"},
                                    {"nosym", "no entry symbol"}};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        tl_result r = TL_CT(ws, "compute", "attach", "ref1", "--type", types[i][0]);
        TL_ASSERT_EXIT(r, 16); /* CTARGET_E_PLUGIN */
        char *file = NULL;
        if (asprintf(&file, "/%s.so", types[i][0]) < 0)
            abort();
        CU_ASSERT(tl_contains(r.err, file));
        CU_ASSERT(tl_contains(r.err, types[i][1]));
        expect_one_line(r.err);
        tl_result_free(&r);
        free(file);
    }
    /* a type with no plugin at all is "not found", not a refusal */
    tl_result r = TL_CT(ws, "compute", "attach", "ref1", "--type", "nosuchplugin");
    TL_ASSERT_EXIT(r, 4);
    expect_one_line(r.err);
    tl_result_free(&r);
    expect_no_targets_but_local(ws);
    free(ws);
}

static void t_failing_init_reaches_the_user(void)
{
    char *ws = tl_tmpdir("ws");
    /* listing does not run init: the plugin is valid */
    json_t *list = plugins_json(NULL);
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "badinit", NULL)), "loaded");
    json_decref(list);
    tl_result r = TL_CT(ws, "compute", "attach", "bi1", "--type", "badinit");
    TL_ASSERT_EXIT(r, 1); /* the status init reported */
    CU_ASSERT(tl_contains(r.err, "badinit.so"));
    CU_ASSERT(tl_contains(r.err, "not licensed on this host"));
    expect_one_line(r.err);
    tl_result_free(&r);
    expect_no_targets_but_local(ws);
    free(ws);
}

static void t_older_plugin_with_shorter_table_works(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "attach", "old1", "--type", "oldabi");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "show", "old1", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(json_object_get(j, "facts"), "built_with")),
        "old table");
    json_decref(j);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "status", "old1", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(json_object_get(j, "live"), "provisioning_state")),
        "Succeeded");
    json_decref(j);
    tl_result_free(&r);
    /* operations it has no slot for: not supported (6), said in one line, no crash */
    const char *const ops[][5] = {{"start", "old1"}, {"stop", "old1"}, {"restart", "old1"},
                                  {"nodes", "old1"}, {"update", "old1", "--set", "a=b"}};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        const char *args[6] = {"compute"};
        for (size_t k = 0; k < 5; k++)
            args[k + 1] = ops[i][k];
        r = tl_ctarget_run(ws, NULL, NULL, args);
        TL_ASSERT_EXIT(r, 6);
        CU_ASSERT(tl_contains(r.err, "oldabi targets"));
        CU_ASSERT(!tl_contains(r.err, "past struct_size"));
        expect_one_line(r.err);
        tl_result_free(&r);
    }
    /* the detach slot lies past its table, where a trap waits: the core must not call it */
    r = TL_CT(ws, "compute", "detach", "old1");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.err, "past struct_size"));
    tl_result_free(&r);
    expect_no_targets_but_local(ws);
    free(ws);
}

static void t_newer_plugin_with_extra_slots_works(void)
{
    json_t *list = plugins_json(NULL);
    json_t *p = find(list, "newabi", NULL);
    CU_ASSERT_STRING_EQUAL(status_of(p), "loaded");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "abi")), "1.1");
    json_decref(list);
    char *ws = tl_tmpdir("ws");
    /* its config keys have a larger struct_size than ours: read with its stride */
    tl_result r = TL_CT(ws, "compute", "attach", "new1", "--type", "newabi", "--set",
                        "endpoint=https://svc.example", "--set", "replicas=3");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "show", "new1", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "type")), "newabi");
    json_t *cfg = json_object_get(j, "config");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg, "replicas")), "3");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(cfg, "endpoint")),
                           "https://svc.example");
    json_decref(j);
    tl_result_free(&r);
    /* the key after the first is found at the plugin's stride: its type is checked */
    r = TL_CT(ws, "compute", "attach", "new2", "--type", "newabi", "--set",
              "endpoint=https://svc2.example", "--set", "replicas=many");
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "replicas"));
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "status", "new1", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    j = tl_json(&r);
    CU_ASSERT_PTR_NOT_NULL(json_object_get(j, "live"));
    json_decref(j);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "help", "newabi");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "endpoint") && tl_contains(r.out, "replicas"));
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "detach", "new1");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_each_bad_plugin_refused_with_its_reason);
    TL_ADD(s, t_good_plugins_still_loaded_beside_bad_ones);
    TL_ADD(s, t_json_has_the_documented_fields);
    TL_ADD(s, t_table_lists_refused_and_reasons_go_to_stderr);
    TL_ADD(s, t_files_that_are_not_plugins_refused);
    TL_ADD(s, t_missing_and_empty_path_entries_tolerated);
    TL_ADD(s, t_world_writable_file_and_directory_refused);
    TL_ADD(s, t_refused_for_permissions_before_any_code_runs);
    TL_ADD(s, t_first_in_search_path_wins_later_ones_shadowed);
    TL_ADD(s, t_refused_earlier_file_does_not_hide_a_good_later_one);
    TL_ADD(s, t_type_unavailable_when_every_file_refused);
    TL_ADD(s, t_shadowed_file_never_opened);
    TL_ADD(s, t_refused_type_cannot_be_used);
    TL_ADD(s, t_failing_init_reaches_the_user);
    TL_ADD(s, t_older_plugin_with_shorter_table_works);
    TL_ADD(s, t_newer_plugin_with_extra_slots_works);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "loader", add);
}
