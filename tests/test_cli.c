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
    CU_ASSERT_STRING_EQUAL(r.err, ""); /* help is output, not a diagnostic */
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
    const char *e2[] = {"compute", "list", "-o", "yaml", NULL};
    expect_usage_error(e2, "yaml");
    const char *e3[] = {"compute", "status", "local", "--output", "yaml", NULL};
    expect_usage_error(e3, "yaml");
    const char *e4[] = {"compute", "attach", "vm1", "--type", "testssh", "--frob", NULL};
    expect_usage_error(e4, "--frob");
    const char *none[] = {NULL};
    tl_result n = tl_ctarget_run(NULL, NULL, NULL, none);
    TL_ASSERT_EXIT(n, 2);
    CU_ASSERT(tl_contains(n.out, "usage: ctarget") || tl_contains(n.err, "usage: ctarget"));
    tl_result_free(&n);
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
    /* -q keeps errors */
    r = TL_CT(ws, "-q", "compute", "show", "nothere");
    TL_ASSERT_EXIT(r, 4);
    CU_ASSERT(tl_contains(r.err, "ctarget: error: ") && tl_contains(r.err, "nothere"));
    tl_result_free(&r);
    /* and the same position after the command works too */
    r = TL_CT(ws, "compute", "attach", "vm3", "-q", "--type", "testssh", "--set",
              "address=10.9.9.7", "--set", "username=u", "--set", "password=pw-12345");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_STRING_EQUAL(r.err, "");
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

/* Every directory under dir is 0700 and every file 0600. */
static void check_modes(const char *dir)
{
    const char *argv[] = {"find", dir, "-printf", "%m %y %p\n", NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    int files = 0;
    for (char *l = r.out; l && *l;) {
        char *nl = strchr(l, '\n');
        if (nl)
            *nl = '\0';
        unsigned mode = 0;
        char type = 0;
        if (sscanf(l, "%o %c", &mode, &type) == 2) {
            if (type == 'd' && mode != 0700)
                fprintf(stderr, "directory not 0700: %s\n", l);
            if (type == 'f' && mode != 0600)
                fprintf(stderr, "file not 0600: %s\n", l);
            CU_ASSERT(type != 'd' || mode == 0700);
            CU_ASSERT(type != 'f' || mode == 0600);
            files += type == 'f';
        }
        l = nl ? nl + 1 : NULL;
    }
    CU_ASSERT(files >= 2);
    tl_result_free(&r);
}

static void t_workspace_flag_honoured_and_everything_private(void)
{
    char *top = tl_tmpdir("wsflag");
    char *ws = tl_path(top, "a/b/ws");
    char *envws = tl_path(top, "from-env");
    char *wenv = NULL;
    if (asprintf(&wenv, "CTARGET_WORKSPACE=%s", envws) < 0)
        abort();
    const char *env[] = {wenv, NULL};
    /* a permissive umask must not leak into the workspace */
    const char *argv[] = {"sh", "-c", "umask 000 && exec \"$0\" \"$@\"", tl_ctarget(),
                          "--workspace", ws, "compute", "attach", "vm1", "--type", "testssh",
                          "--set", "address=10.1.2.3", "--set", "username=u",
                          "--set", "password=pw-123456", NULL};
    tl_result r = tl_exec(argv, NULL, env);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    struct stat st;
    char *db = tl_path(ws, "workspace.db");
    CU_ASSERT_EQUAL(stat(db, &st), 0);
    CU_ASSERT_NOT_EQUAL(stat(envws, &st), 0); /* --workspace beats CTARGET_WORKSPACE */
    check_modes(ws);
    /* and the target is there, not in the environment's workspace */
    r = tl_ctarget_run(ws, NULL, NULL, (const char *const[]){"compute", "show", "vm1", NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = tl_ctarget_run(NULL, NULL, env, (const char *const[]){"compute", "show", "vm1", NULL});
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    free(db), free(wenv), free(envws), free(ws), free(top);
}

static char *fake_tool_dir(const char *name, const char *script)
{
    char *d = tl_tmpdir("bin");
    char *f = tl_path(d, name);
    tl_write_file(f, script);
    chmod(f, 0755);
    free(f);
    return d;
}

static char *path_with(const char *dir)
{
    char *p = NULL;
    if (asprintf(&p, "PATH=%s:%s", dir, getenv("PATH")) < 0)
        abort();
    return p;
}

static void t_local_reports_gpus_from_nvidia_smi(void)
{
    char *bin = fake_tool_dir("nvidia-smi",
                              "#!/bin/sh\n"
                              "case \"$*\" in *--query-gpu=name,memory.total,driver_version*)\n"
                              "printf 'NVIDIA A100-SXM4-40GB, 40960, 535.104.05\\n"
                              "Tesla T4, 15360, 535.104.05\\n';;\n"
                              "*) exit 9;; esac\n");
    char *path = path_with(bin);
    char *ws = tl_tmpdir("ws");
    const char *env[] = {path, NULL};
    const char *args[] = {"compute", "show", "local", "--output", "json", NULL};
    tl_result r = tl_ctarget_run(ws, NULL, env, args);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    json_t *f = json_object_get(j, "facts");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(f, "gpu_count")), 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(f, "gpu_detection")), "ok");
    json_t *g = json_array_get(json_object_get(f, "gpus"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(g, "name")),
                           "NVIDIA A100-SXM4-40GB");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(g, "memory_mib")), 40960);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(g, "driver")), "535.104.05");
    g = json_array_get(json_object_get(f, "gpus"), 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(g, "name")), "Tesla T4");
    json_decref(j);
    tl_result_free(&r);
    free(ws), free(path), free(bin);
}

static void t_local_show_survives_a_hanging_nvidia_smi(void)
{
    char *bin = fake_tool_dir("nvidia-smi", "#!/bin/sh\nexec sleep 600\n");
    char *path = path_with(bin);
    char *ws = tl_tmpdir("ws");
    const char *env[] = {path, NULL};
    const char *args[] = {"compute", "show", "local", "--output", "json", NULL};
    long long t0 = tl_now_ms();
    tl_result r = tl_ctarget_run(ws, NULL, env, args);
    long long ms = tl_now_ms() - t0;
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(ms < 120000); /* the 5 s limit, not the tool's 600 s: a guard, far from both */
    json_t *j = tl_json(&r);
    json_t *f = json_object_get(j, "facts");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(f, "cpus")), sysconf(_SC_NPROCESSORS_ONLN));
    CU_ASSERT(json_is_integer(json_object_get(f, "gpu_count")));
    json_decref(j);
    tl_result_free(&r);
    free(ws), free(path), free(bin);
}

static void t_table_output_of_local(void)
{
    char *ws = tl_tmpdir("ws");
    tl_result r = TL_CT(ws, "compute", "show", "local");
    TL_ASSERT_EXIT(r, 0);
    const char *line = strstr(r.out, "\n  cpus:");
    long cpus = -1;
    CU_ASSERT_PTR_NOT_NULL(line);
    if (line)
        cpus = strtol(line + strlen("\n  cpus:"), NULL, 10);
    CU_ASSERT_EQUAL(cpus, sysconf(_SC_NPROCESSORS_ONLN));
    CU_ASSERT(tl_contains(r.out, "local"));
    CU_ASSERT(tl_contains(r.out, "gpu_count"));
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
    TL_ADD(s, t_workspace_flag_honoured_and_everything_private);
    TL_ADD(s, t_local_reports_gpus_from_nvidia_smi);
    TL_ADD(s, t_local_show_survives_a_hanging_nvidia_smi);
    TL_ADD(s, t_table_output_of_local);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "cli", add);
}
