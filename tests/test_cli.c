/* CLI conventions: --help everywhere, one-line usage errors with exit 2, --output json,
 * workspace location and modes, -q, documented exit codes, and the local target's facts. */
#define _GNU_SOURCE
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void expect_help(const char *const args[])
{
    tl_result r = tl_ctarget_run(NULL, NULL, NULL, args);
    if (r.status != 0 || !tl_contains(r.out, "usage: ctarget"))
        fprintf(stderr, "help of '%s %s %s' failed\n", args[0], args[1] ? args[1] : "",
                args[1] && args[2] ? args[2] : "");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "usage: ctarget"));
    tl_result_free(&r);
}

static void t_help_on_every_command(void)
{
    const char *top[] = {"--help", NULL};
    expect_help(top);
    const char *cmds[][8] = {
        {"plugins"}, {"compute"}, {"run"}, {"snapshot"}, {"env"},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        const char *a[] = {cmds[i][0], "--help", NULL};
        expect_help(a);
        const char *h[] = {"help", cmds[i][0], NULL};
        expect_help(h);
    }
    const char *subs[][10] = {
        {"compute", "create", "attach", "list", "show", "status", "update", "start", "stop",
         "restart"},
        {"compute", "nodes", "detach", "delete"},
        {"run", "submit", "list", "show", "logs", "wait", "cancel", "outputs", "metrics",
         "delete"},
        {"snapshot", "create", "list", "show", "diff", "export", "extract", "gc"},
        {"env", "create", "list", "show", "delete"},
    };
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++)
        for (size_t k = 1; k < 10 && subs[i][k]; k++) {
            const char *a[] = {subs[i][0], subs[i][k], "--help", NULL};
            expect_help(a);
        }
}

static void expect_usage_error(const char *const args[], const char *needle)
{
    tl_result r = tl_ctarget_run(NULL, NULL, NULL, args);
    TL_ASSERT_EXIT(r, 2);
    CU_ASSERT(tl_contains(r.err, needle));
    /* one line */
    const char *nl = strchr(r.err, '\n');
    CU_ASSERT(nl && !strchr(nl + 1, '\n'));
    tl_result_free(&r);
}

static void t_usage_errors_exit_2_in_one_line(void)
{
    const char *a[] = {"frobnicate", NULL};
    expect_usage_error(a, "unknown command 'frobnicate'");
    const char *b[] = {"--bogus", "plugins", NULL};
    expect_usage_error(b, "--bogus");
    const char *c[] = {"compute", "list", "--bogus", NULL};
    expect_usage_error(c, "--bogus");
    const char *d[] = {"compute", "explode", NULL};
    expect_usage_error(d, "explode");
    const char *e[] = {"plugins", "--output", "yaml", NULL};
    expect_usage_error(e, "yaml");
    const char *f[] = {"compute", "show", NULL};
    tl_result r = tl_ctarget_run(NULL, NULL, NULL, f);
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
}

static void t_version(void)
{
    tl_result r = TL_CT(NULL, "version");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "ctarget ") && tl_contains(r.out, "ABI 1."));
    tl_result_free(&r);
}

static void t_json_output_parses(void)
{
    char *ws = tl_tmpdir("ws");
    const char *const cmds[][5] = {{"plugins"}, {"compute", "list"}, {"compute", "show", "local"},
                                   {"compute", "status", "local"}, {"run", "list"},
                                   {"snapshot", "list"}, {"env", "list"}};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        const char *a[8] = {0};
        size_t n = 0;
        for (; n < 5 && cmds[i][n]; n++)
            a[n] = cmds[i][n];
        a[n++] = "--output";
        a[n++] = "json";
        tl_result r = tl_ctarget_run(ws, NULL, NULL, a);
        TL_ASSERT_EXIT(r, 0);
        json_t *j = tl_json(&r);
        CU_ASSERT_PTR_NOT_NULL(j);
        json_decref(j);
        tl_result_free(&r);
    }
    free(ws);
}

static void t_compute_help_lists_keys(void)
{
    tl_result r = TL_CT(NULL, "compute", "help", "testssh");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "address") && tl_contains(r.out, "private_key_file"));
    CU_ASSERT(tl_contains(r.out, "2-16"));
    tl_result_free(&r);
    r = TL_CT(NULL, "compute", "help", "nosuchtype");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
}

static void check_ws_created(const char *dir)
{
    struct stat st;
    CU_ASSERT_EQUAL(stat(dir, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
    char *db = tl_path(dir, "workspace.db");
    CU_ASSERT_EQUAL(stat(db, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    free(db);
}

static void t_workspace_location_precedence(void)
{
    char *home = tl_tmpdir("home");
    char *xdg = tl_path(home, "xdg");
    char *henv = NULL, *xenv = NULL, *wenv = NULL;
    if (asprintf(&henv, "HOME=%s", home) < 0 || asprintf(&xenv, "XDG_DATA_HOME=%s", xdg) < 0)
        abort();
    const char *args[] = {"compute", "list", NULL};
    /* no CTARGET_WORKSPACE, no XDG_DATA_HOME: ~/.local/share/ctarget */
    const char *e1[] = {"CTARGET_WORKSPACE=", "XDG_DATA_HOME=", henv, NULL};
    tl_result r = tl_ctarget_run(NULL, NULL, e1, args);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *d1 = tl_path(home, ".local/share/ctarget");
    check_ws_created(d1);
    /* XDG_DATA_HOME */
    const char *e2[] = {"CTARGET_WORKSPACE=", xenv, henv, NULL};
    r = tl_ctarget_run(NULL, NULL, e2, args);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *d2 = tl_path(xdg, "ctarget");
    check_ws_created(d2);
    /* CTARGET_WORKSPACE beats both; --workspace beats it */
    char *d3 = tl_path(home, "explicit");
    if (asprintf(&wenv, "CTARGET_WORKSPACE=%s", d3) < 0)
        abort();
    const char *e3[] = {wenv, xenv, henv, NULL};
    r = tl_ctarget_run(NULL, NULL, e3, args);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    check_ws_created(d3);
    char *d4 = tl_path(home, "flag");
    r = tl_ctarget_run(d4, NULL, e3, args);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    check_ws_created(d4);
    free(d1), free(d2), free(d3), free(d4);
    free(henv), free(xenv), free(wenv), free(xdg), free(home);
}

static void t_quiet_silences_progress_and_warnings(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "-q", "compute", "attach", "vm1", "--type", "testssh", "--set",
                        "address=10.9.9.9", "--set", "username=u", "--set", "password=pw-12345");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_STRING_EQUAL(r.err, "");
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "vm2", "--type", "testssh", "--set", "address=10.9.9.8",
              "--set", "username=u", "--set", "password=pw-12345");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.err, "warning")); /* the same, without -q, warns */
    tl_result_free(&r);
    free(ws);
}

static void t_documented_exit_codes(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "show", "nothere");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "vm1", "--type", "testssh", "--set", "nope=1");
    TL_ASSERT_EXIT(r, 3);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "vm1", "--type", "testssh", "--set", "address=a.b",
              "--set", "username=u", "--set", "password=pw-12345");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "vm1", "--type", "testssh", "--set", "address=c.d",
              "--set", "username=u", "--set", "password=pw-12345");
    TL_ASSERT_EXIT(r, 5);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "stop", "vm1");
    TL_ASSERT_EXIT(r, 6);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "vm2", "--type", "testssh", "--set", "address=x.invalid",
              "--set", "username=u", "--set", "password=pw-12345");
    TL_ASSERT_EXIT(r, 8);
    tl_result_free(&r);
    free(ws);
}

static long long meminfo_total(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemTotal: %lld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

static void t_local_reports_cpus_memory_gpus(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "show", "local", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    json_t *f = json_object_get(j, "facts");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(f, "cpus")), sysconf(_SC_NPROCESSORS_ONLN));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(f, "memory_bytes")), meminfo_total());
    CU_ASSERT(json_is_integer(json_object_get(f, "gpu_count")));
    CU_ASSERT(json_is_string(json_object_get(f, "gpu_detection")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "origin")), "implicit");
    json_decref(j);
    tl_result_free(&r);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_help_on_every_command);
    TL_ADD(s, t_usage_errors_exit_2_in_one_line);
    TL_ADD(s, t_version);
    TL_ADD(s, t_json_output_parses);
    TL_ADD(s, t_compute_help_lists_keys);
    TL_ADD(s, t_workspace_location_precedence);
    TL_ADD(s, t_quiet_silences_progress_and_warnings);
    TL_ADD(s, t_documented_exit_codes);
    TL_ADD(s, t_local_reports_cpus_memory_gpus);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "cli", add);
}
