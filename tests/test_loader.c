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

static void t_table_prints_one_line_per_refusal(void)
{
    tl_result r = TL_CT(NULL, "plugins");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "testcloud"));
    CU_ASSERT(tl_contains(r.out, "noslot.so: missing mandatory slot compute.status\n"));
    CU_ASSERT(tl_contains(r.out, "needsdep.so: dlopen failed"));
    CU_ASSERT(!tl_contains(r.out, "testcloud.so: "));
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

static void t_non_elf_file_refused(void)
{
    char *d = plugdir("plug");
    char *f = tl_path(d, "junk.so");
    tl_write_file(f, "#!/bin/sh\necho this is not a shared object\n");
    chmod(f, 0644);
    char *pp = NULL;
    if (asprintf(&pp, "CTARGET_PLUGIN_PATH=%s:%s", d, getenv("CTARGET_PLUGIN_PATH")) < 0)
        abort();
    const char *env[] = {pp, NULL};
    json_t *list = plugins_json(env);
    expect_refused(list, "junk", "not an ELF");
    CU_ASSERT_STRING_EQUAL(status_of(find(list, "testcloud", NULL)), "loaded");
    json_decref(list);
    free(pp);
    free(f);
    free(d);
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
    CU_ASSERT_STRING_EQUAL(status_of(later), "refused");
    CU_ASSERT_PTR_NOT_NULL(strstr(reason_of(later), "shadowed"));
    json_decref(list);
    free(pp);
    free(d);
}

static void t_refused_type_cannot_be_used(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "attach", "nn1", "--type", "noslot");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "noslot.so"));
    CU_ASSERT(tl_contains(r.err, "compute.status"));
    /* one line */
    CU_ASSERT_PTR_NOT_NULL(strchr(r.err, '\n'));
    CU_ASSERT_PTR_NULL(strchr(strchr(r.err, '\n') + 1, '\n'));
    tl_result_free(&r);
    free(ws);
}

static void t_failing_init_reaches_the_user(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "attach", "bi1", "--type", "badinit");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "not licensed on this host"));
    tl_result_free(&r);
    free(ws);
}

static void t_older_plugin_with_shorter_table_works(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "attach", "old1", "--type", "oldabi");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "status", "old1", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* slots past its table: not supported, and the trap right after it is never called */
    r = TL_CT(ws, "compute", "start", "old1");
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(!tl_contains(r.err, "past struct_size"));
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "nodes", "old1");
    TL_ASSERT_EXIT(r, 6);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "detach", "old1");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.err, "past struct_size"));
    tl_result_free(&r);
    free(ws);
}

static void t_newer_plugin_with_extra_slots_works(void)
{
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
    json_decref(j);
    tl_result_free(&r);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_each_bad_plugin_refused_with_its_reason);
    TL_ADD(s, t_good_plugins_still_loaded_beside_bad_ones);
    TL_ADD(s, t_json_has_the_documented_fields);
    TL_ADD(s, t_table_prints_one_line_per_refusal);
    TL_ADD(s, t_non_elf_file_refused);
    TL_ADD(s, t_world_writable_file_and_directory_refused);
    TL_ADD(s, t_first_in_search_path_wins_later_ones_shadowed);
    TL_ADD(s, t_refused_type_cannot_be_used);
    TL_ADD(s, t_failing_init_reaches_the_user);
    TL_ADD(s, t_older_plugin_with_shorter_table_works);
    TL_ADD(s, t_newer_plugin_with_extra_slots_works);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "loader", add);
}
