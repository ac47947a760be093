/* The compute-target registry through the real `ctarget compute ...` command and the test
 * plugins: provisioning with --wait, list/show/status/update, power control, nodes, detach
 * versus delete, the seed rules (unique names, no double attachment, create-only and
 * attach-only types), invalid configuration storing nothing, --config and @FILE values, and
 * 20 ctarget processes attaching at once. */
#define _GNU_SOURCE
#include "testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- helpers ------------------------------------------------------------------------------ */

static char **pool;
static size_t n_pool;

static void pool_free(void)
{
    for (size_t i = 0; i < n_pool; i++)
        free(pool[i]);
    free(pool);
}

/* printf into a string that lives until the program exits */
static const char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static const char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    if (!pool)
        atexit(pool_free);
    pool = realloc(pool, (n_pool + 1) * sizeof *pool);
    pool[n_pool++] = s;
    return s;
}

/* A workspace path that does not exist yet: ctarget creates it. */
static const char *new_ws(void)
{
    char *d = tl_tmpdir("reg");
    const char *w = fmt("%s/ws", d);
    free(d);
    return w;
}

static const char *new_cloud(void)
{
    char *d = tl_tmpdir("cloud");
    const char *c = fmt("%s", d);
    free(d);
    return c;
}

#define RUN(ws, ...) tl_ctarget_run((ws), NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})

/* Run, expect an exit code, and release the result. */
#define EXPECT(code, ws, ...)                                                             \
    do {                                                                                  \
        tl_result r_ = RUN(ws, __VA_ARGS__);                                              \
        TL_ASSERT_EXIT(r_, code);                                                         \
        tl_result_free(&r_);                                                              \
    } while (0)

#define ASSERT_HAS(text, needle)                                                          \
    do {                                                                                  \
        if (!tl_contains((text), (needle)))                                               \
            fprintf(stdout, "expected '%s' in:\n%s\n", (needle), (text) ? (text) : "");   \
        CU_ASSERT(tl_contains((text), (needle)));                                         \
    } while (0)

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

static json_t *list(const char *ws)
{
    tl_result r = RUN(ws, "compute", "list", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    tl_result_free(&r);
    if (!json_is_array(j)) {
        json_decref(j);
        j = json_array();
        CU_FAIL("compute list --output json is not an array");
    }
    return j;
}

static json_t *find(json_t *arr, const char *name)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        const char *n = json_string_value(json_object_get(v, "name"));
        if (n && !strcmp(n, name))
            return v;
    }
    return NULL;
}

static int listed(const char *ws, const char *name)
{
    json_t *l = list(ws);
    int found = find(l, name) != NULL;
    json_decref(l);
    return found;
}

/* names in the list, comma-separated, for comparing before/after */
static char *list_names(const char *ws)
{
    json_t *l = list(ws);
    size_t i;
    json_t *v;
    size_t len = 1;
    json_array_foreach(l, i, v) len += strlen(json_string_value(json_object_get(v, "name"))) + 1;
    char *out = calloc(1, len);
    json_array_foreach(l, i, v) {
        strcat(out, json_string_value(json_object_get(v, "name")));
        strcat(out, ",");
    }
    json_decref(l);
    return out;
}

static json_t *show(const char *ws, const char *name)
{
    tl_result r = RUN(ws, "compute", "show", name, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    tl_result_free(&r);
    return j ? j : json_object();
}

static const char *jstr(json_t *o, const char *path1, const char *path2)
{
    json_t *v = json_object_get(o, path1);
    if (path2)
        v = json_object_get(v, path2);
    const char *s = json_string_value(v);
    return s ? s : "(none)";
}

static int exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* A testcloud target created (and waited for) in ws. */
static void create_cloud(const char *ws, const char *cloud, const char *name, const char *extra)
{
    tl_result r = RUN(ws, "compute", "create", name, "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set", "max_nodes=4",
                      "--set", extra ? extra : "min_nodes=0", "--wait");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
}

static void attach_ssh(const char *ws, const char *name, const char *address, const char *port,
                       int expect)
{
    char *d = tl_tmpdir("key");
    const char *key = fmt("%s/id_ed25519", d);
    free(d);
    tl_write_file(key, "not really a key\n");
    tl_result r = port ? RUN(ws, "compute", "attach", name, "--type", "testssh", "--set",
                             fmt("address=%s", address), "--set", fmt("ssh_port=%s", port),
                             "--set", "username=ml", "--set", fmt("private_key_file=%s", key))
                       : RUN(ws, "compute", "attach", name, "--type", "testssh", "--set",
                             fmt("address=%s", address), "--set", "username=ml", "--set",
                             fmt("private_key_file=%s", key));
    TL_ASSERT_EXIT(r, expect);
    if (expect == 5)
        ASSERT_HAS(r.err, "already");
    tl_result_free(&r);
}

/* ---- provisioning ------------------------------------------------------------------------- */

static void t_create_wait_follows_creating_to_succeeded(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    tl_result r = RUN(ws, "compute", "create", "cpu-cluster", "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set",
                      "max_nodes=4", "--set", "provision_polls=3", "--wait");
    TL_ASSERT_EXIT(r, 0);
    /* progress: one line per state it went through */
    ASSERT_HAS(r.err, "cpu-cluster: Creating");
    ASSERT_HAS(r.err, "cpu-cluster: Succeeded");
    CU_ASSERT(strstr(r.err, "Creating") < strstr(r.err, "Succeeded"));
    /* the new target is printed, with its settings */
    ASSERT_HAS(r.out, "vm_size");
    ASSERT_HAS(r.out, "Succeeded");
    tl_result_free(&r);
    CU_ASSERT(exists(fmt("%s/cpu-cluster.res", cloud)));
    json_t *l = list(ws);
    json_t *t = find(l, "cpu-cluster");
    CU_ASSERT_PTR_NOT_NULL(t);
    CU_ASSERT_STRING_EQUAL(jstr(t, "type", NULL), "testcloud");
    CU_ASSERT_STRING_EQUAL(jstr(t, "origin", NULL), "created");
    CU_ASSERT_STRING_EQUAL(jstr(t, "provisioning_state", NULL), "Succeeded");
    json_decref(l);
}

static void t_create_without_wait_returns_creating_and_status_wait_settles(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    tl_result r = RUN(ws, "compute", "create", "slow-cluster", "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set",
                      "max_nodes=4", "--set", "provision_polls=6", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "provisioning_state", NULL), "Creating");
    CU_ASSERT_STRING_EQUAL(jstr(j, "config", "vm_size"), "D2");
    json_decref(j);
    tl_result_free(&r);
    json_t *l = list(ws);
    CU_ASSERT_STRING_EQUAL(jstr(find(l, "slow-cluster"), "provisioning_state", NULL),
                           "Creating");
    json_decref(l);
    r = RUN(ws, "compute", "status", "slow-cluster", "--wait", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "live", "provisioning_state"), "Succeeded");
    json_decref(j);
    tl_result_free(&r);
    /* the settled state is recorded */
    l = list(ws);
    CU_ASSERT_STRING_EQUAL(jstr(find(l, "slow-cluster"), "provisioning_state", NULL),
                           "Succeeded");
    json_decref(l);
}

static void t_failed_provisioning_wait_exits_nonzero_with_errors(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    tl_result r = RUN(ws, "compute", "create", "doomed", "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", "vm_size=NC24", "--set",
                      "max_nodes=4", "--set", "fail_provisioning=true", "--wait");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    TL_ASSERT_EXIT(r, 1);
    ASSERT_HAS(r.err, "provisioning of doomed failed");
    ASSERT_HAS(r.err, "QuotaExceeded");
    ASSERT_HAS(r.err, "NC24");
    tl_result_free(&r);
    json_t *s = show(ws, "doomed");
    CU_ASSERT_STRING_EQUAL(jstr(s, "provisioning_state", NULL), "Failed");
    ASSERT_HAS(jstr(s, "provisioning_errors", NULL), "QuotaExceeded");
    json_decref(s);
    /* status reports the failure too, and says why */
    r = RUN(ws, "compute", "status", "doomed", "--wait");
    TL_ASSERT_EXIT(r, 1);
    ASSERT_HAS(r.err, "QuotaExceeded");
    tl_result_free(&r);
}

/* ---- inspecting ------------------------------------------------------------------------- */

static void t_list_table_and_json_show_type_origin_and_state(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "tbl-cluster", NULL);
    attach_ssh(ws, "tbl-host", "10.1.1.1", NULL, 0);
    tl_result r = RUN(ws, "compute", "list");
    TL_ASSERT_EXIT(r, 0);
    ASSERT_HAS(r.out, "NAME");
    ASSERT_HAS(r.out, "TYPE");
    ASSERT_HAS(r.out, "STATE");
    int rows = 0;
    for (char *line = strtok(r.out, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "tbl-cluster ", 12)) {
            rows++;
            ASSERT_HAS(line, "testcloud");
            ASSERT_HAS(line, "created");
            ASSERT_HAS(line, "Succeeded");
        } else if (!strncmp(line, "tbl-host ", 9)) {
            rows++;
            ASSERT_HAS(line, "testssh");
            ASSERT_HAS(line, "attached");
            ASSERT_HAS(line, "Succeeded");
        }
    }
    CU_ASSERT_EQUAL(rows, 2);
    tl_result_free(&r);
    json_t *l = list(ws);
    CU_ASSERT_STRING_EQUAL(jstr(find(l, "tbl-host"), "type", NULL), "testssh");
    CU_ASSERT_STRING_EQUAL(jstr(find(l, "tbl-host"), "origin", NULL), "attached");
    CU_ASSERT_STRING_EQUAL(jstr(find(l, "tbl-host"), "provisioning_state", NULL), "Succeeded");
    CU_ASSERT_PTR_NOT_NULL(find(l, "local")); /* the built-in target is always listed */
    json_decref(l);
}

static void t_show_and_status_report_config_facts_and_live_state(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "show-cluster", "min_nodes=2");
    json_t *s = show(ws, "show-cluster");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "vm_size"), "D2");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "min_nodes"), "2");
    ASSERT_HAS(jstr(s, "facts", "cloud_resource"), "show-cluster.res");
    json_decref(s);
    tl_result r = RUN(ws, "compute", "show", "show-cluster");
    TL_ASSERT_EXIT(r, 0);
    ASSERT_HAS(r.out, "vm_size");
    ASSERT_HAS(r.out, "cloud_resource");
    tl_result_free(&r);
    r = RUN(ws, "compute", "status", "show-cluster", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "live", "state"), "Running");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(
                        json_object_get(json_object_get(j, "live"), "details"), "min_nodes")), 2);
    json_decref(j);
    tl_result_free(&r);
    /* unknown names: exit 4 with a suggestion */
    r = RUN(ws, "compute", "show", "show-clustr");
    TL_ASSERT_EXIT(r, 4);
    ASSERT_HAS(r.err, "show-cluster");
    tl_result_free(&r);
    EXPECT(4, ws, "compute", "status", "nothing-here");
}

static void t_update_applies_mutable_and_refuses_immutable_unchanged(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "upd-cluster", NULL);
    json_t *before = show(ws, "upd-cluster");
    tl_result r = RUN(ws, "compute", "update", "upd-cluster", "--set", "ssh_public_access=true");
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "ssh_public_access");
    CU_ASSERT_EQUAL(count_lines(r.err), 1);
    tl_result_free(&r);
    json_t *after = show(ws, "upd-cluster");
    CU_ASSERT(json_equal(json_object_get(before, "config"), json_object_get(after, "config")));
    CU_ASSERT_STRING_EQUAL(jstr(before, "updated_at", NULL), jstr(after, "updated_at", NULL));
    json_decref(after);
    /* a mutable key: stored, printed, and handed to the plugin */
    r = RUN(ws, "compute", "update", "upd-cluster", "--set", "min_nodes=3", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "config", "min_nodes"), "3");
    json_decref(j);
    tl_result_free(&r);
    after = show(ws, "upd-cluster");
    CU_ASSERT_STRING_EQUAL(jstr(after, "config", "min_nodes"), "3");
    CU_ASSERT_STRING_EQUAL(jstr(after, "config", "vm_size"), "D2");
    json_decref(after);
    r = RUN(ws, "compute", "nodes", "upd-cluster", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    j = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 3);
    json_decref(j);
    tl_result_free(&r);
    /* a wrong value is refused as on create */
    EXPECT(3, ws, "compute", "update", "upd-cluster", "--set", "min_nodes=lots");
    EXPECT(3, ws, "compute", "update", "upd-cluster", "--set", "min_nodez=1");
    after = show(ws, "upd-cluster");
    CU_ASSERT_STRING_EQUAL(jstr(after, "config", "min_nodes"), "3");
    json_decref(after);
    json_decref(before);
    /* a type without update says so */
    attach_ssh(ws, "upd-host", "10.1.2.3", NULL, 0);
    r = RUN(ws, "compute", "update", "upd-host", "--set", "username=other");
    TL_ASSERT_EXIT(r, 6);
    ASSERT_HAS(r.err, "cannot be updated");
    tl_result_free(&r);
}

static void t_start_stop_restart_where_supported_exit_6_elsewhere(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "pwr-cluster", NULL);
    const char *const steps[][2] = {{"stop", "Stopped"}, {"start", "Running"},
                                    {"stop", "Stopped"}, {"restart", "Running"}};
    for (size_t i = 0; i < 4; i++) {
        tl_result r = RUN(ws, "compute", steps[i][0], "pwr-cluster", "--output", "json");
        TL_ASSERT_EXIT(r, 0);
        json_t *j = tl_json(&r);
        CU_ASSERT_STRING_EQUAL(jstr(j, "live", "state"), steps[i][1]);
        json_decref(j);
        tl_result_free(&r);
        r = RUN(ws, "compute", "status", "pwr-cluster", "--output", "json");
        j = tl_json(&r);
        CU_ASSERT_STRING_EQUAL(jstr(j, "live", "state"), steps[i][1]);
        json_decref(j);
        tl_result_free(&r);
    }
    attach_ssh(ws, "pwr-host", "10.1.2.4", NULL, 0);
    const char *verbs[] = {"start", "stop", "restart"};
    const char *words[] = {"cannot be started", "cannot be stopped", "cannot be restarted"};
    for (size_t i = 0; i < 3; i++) {
        tl_result r = RUN(ws, "compute", verbs[i], "pwr-host");
        TL_ASSERT_EXIT(r, 6);
        ASSERT_HAS(r.err, words[i]);
        ASSERT_HAS(r.err, "testssh");
        CU_ASSERT_EQUAL(count_lines(r.err), 1);
        tl_result_free(&r);
    }
    EXPECT(4, ws, "compute", "stop", "no-such-target");
}

static void t_nodes_listed_where_supported(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "nodes-cluster", "min_nodes=2");
    tl_result r = RUN(ws, "compute", "nodes", "nodes-cluster", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 2);
    CU_ASSERT_STRING_EQUAL(jstr(json_array_get(j, 1), "id", NULL), "node-1");
    json_decref(j);
    tl_result_free(&r);
    r = RUN(ws, "compute", "nodes", "nodes-cluster");
    TL_ASSERT_EXIT(r, 0);
    ASSERT_HAS(r.out, "node-0");
    tl_result_free(&r);
    attach_ssh(ws, "nodes-host", "10.1.2.5", NULL, 0);
    r = RUN(ws, "compute", "nodes", "nodes-host");
    TL_ASSERT_EXIT(r, 6);
    ASSERT_HAS(r.err, "nodes");
    tl_result_free(&r);
}

/* ---- forgetting and destroying ---------------------------------------------------------- */

static void t_detach_forgets_but_never_destroys(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "keep-cluster", NULL);
    const char *res = fmt("%s/keep-cluster.res", cloud);
    CU_ASSERT(exists(res));
    tl_result r = RUN(ws, "compute", "detach", "keep-cluster");
    TL_ASSERT_EXIT(r, 0);
    ASSERT_HAS(r.err, "delete"); /* a created target left running: say how to destroy it */
    tl_result_free(&r);
    CU_ASSERT(exists(res));
    CU_ASSERT(!listed(ws, "keep-cluster"));
    EXPECT(4, ws, "compute", "show", "keep-cluster");
    /* the resource is still there: it can be attached again by its id */
    EXPECT(0, ws, "compute", "attach", "keep-again", "--type", "testcloud", "--set",
           fmt("cloud_dir=%s", cloud), "--set", "resource_id=/subs/1/keep-cluster");
    EXPECT(0, ws, "compute", "detach", "keep-again");
    CU_ASSERT(exists(res));
    EXPECT(4, ws, "compute", "detach", "keep-again");
}

static void t_delete_destroys_created_and_refuses_attached(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "gone-cluster", NULL);
    create_cloud(ws, cloud, "other-cluster", NULL);
    const char *res = fmt("%s/gone-cluster.res", cloud);
    /* attached: delete refuses and says to detach; nothing destroyed, still listed */
    EXPECT(0, ws, "compute", "attach", "att-cluster", "--type", "testcloud", "--set",
           fmt("cloud_dir=%s", cloud), "--set", "resource_id=/subs/1/other-cluster");
    tl_result r = RUN(ws, "compute", "delete", "att-cluster", "--yes");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    TL_ASSERT_EXIT(r, 15);
    ASSERT_HAS(r.err, "detach");
    tl_result_free(&r);
    CU_ASSERT(listed(ws, "att-cluster"));
    CU_ASSERT(exists(fmt("%s/other-cluster.res", cloud)));
    /* created: delete destroys and forgets */
    CU_ASSERT(exists(res));
    r = RUN(ws, "compute", "delete", "gone-cluster", "--yes", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT(json_is_true(json_object_get(j, "deleted")));
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT(!exists(res));
    CU_ASSERT(!listed(ws, "gone-cluster"));
    EXPECT(4, ws, "compute", "delete", "gone-cluster", "--yes");
    /* the built-in target is neither */
    EXPECT(6, ws, "compute", "delete", "local", "--yes");
    EXPECT(6, ws, "compute", "detach", "local");
}

/* ---- seed rules ------------------------------------------------------------------------- */

static void t_names_unique_case_insensitively(void)
{
    const char *ws = new_ws();
    attach_ssh(ws, "box-a", "10.2.0.1", NULL, 0);
    tl_result r = RUN(ws, "compute", "attach", "box-a", "--type", "testssh", "--set",
                      "address=10.2.0.2", "--set", "username=u", "--set",
                      "private_key_file=/dev/null");
    TL_ASSERT_EXIT(r, 5);
    ASSERT_HAS(r.err, "box-a");
    ASSERT_HAS(r.err, "already exists");
    tl_result_free(&r);
    attach_ssh(ws, "BOX-A", "10.2.0.3", NULL, 5);
    /* a different type does not make the name free */
    const char *cloud = new_cloud();
    r = RUN(ws, "compute", "create", "box-a", "--type", "testcloud", "--set",
            fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set", "max_nodes=1");
    TL_ASSERT_EXIT(r, 5);
    tl_result_free(&r);
    CU_ASSERT(!exists(fmt("%s/box-a.res", cloud))); /* refused before anything was created */
    /* the built-in target's name is taken */
    r = RUN(ws, "compute", "attach", "local", "--type", "testssh", "--set", "address=10.2.0.4",
            "--set", "username=u", "--set", "private_key_file=/dev/null");
    TL_ASSERT_EXIT(r, 5);
    ASSERT_HAS(r.err, "built-in");
    tl_result_free(&r);
    json_t *s = show(ws, "box-a");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "address"), "10.2.0.1");
    json_decref(s);
}

static void t_no_double_attachment_by_resource_id(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    create_cloud(ws, cloud, "shared", NULL);
    const char *dir = fmt("cloud_dir=%s", cloud);
    EXPECT(0, ws, "compute", "attach", "first", "--type", "testcloud", "--set", dir, "--set",
           "resource_id=/subs/1/rg/shared");
    tl_result r = RUN(ws, "compute", "attach", "second", "--type", "testcloud", "--set", dir,
                      "--set", "resource_id=/subs/1/rg/shared");
    TL_ASSERT_EXIT(r, 5);
    ASSERT_HAS(r.err, "already attached as 'first'");
    ASSERT_HAS(r.err, "detach first");
    tl_result_free(&r);
    /* resource ids compare case-insensitively */
    EXPECT(5, ws, "compute", "attach", "third", "--type", "testcloud", "--set", dir, "--set",
           "resource_id=/SUBS/1/RG/shared");
    CU_ASSERT(!listed(ws, "second"));
    CU_ASSERT(!listed(ws, "third"));
    /* detach first, then the resource can be attached under the new name */
    EXPECT(0, ws, "compute", "detach", "first");
    EXPECT(0, ws, "compute", "attach", "second", "--type", "testcloud", "--set", dir, "--set",
           "resource_id=/subs/1/rg/shared");
    CU_ASSERT(listed(ws, "second"));
    /* moving another attachment onto a held resource with update is refused as well */
    create_cloud(ws, cloud, "spare", NULL);
    EXPECT(0, ws, "compute", "attach", "mover", "--type", "testcloud", "--set", dir, "--set",
           "resource_id=/subs/1/rg/spare");
    tl_result u = RUN(ws, "compute", "update", "mover", "--set", "resource_id=/subs/1/rg/Shared");
    TL_ASSERT_EXIT(u, 5);
    ASSERT_HAS(u.err, "'second'");
    tl_result_free(&u);
    json_t *s = show(ws, "mover");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "resource_id"), "/subs/1/rg/spare");
    json_decref(s);
}

static void t_no_double_attachment_by_address_and_port(void)
{
    const char *ws = new_ws();
    attach_ssh(ws, "gpu1", "GPU-Box.Example.com", NULL, 0);
    attach_ssh(ws, "gpu2", "gpu-box.example.com", NULL, 5);  /* same host, case differs */
    attach_ssh(ws, "gpu3", "gpu-box.example.com", "22", 5);  /* the default port, explicit */
    attach_ssh(ws, "gpu4", "gpu-box.example.com", "2222", 0); /* another port: another host */
    attach_ssh(ws, "gpu5", "GPU-BOX.example.com", "2222", 5);
    attach_ssh(ws, "gpu6", "other-box.example.com", NULL, 0);
    CU_ASSERT(!listed(ws, "gpu2"));
    CU_ASSERT(!listed(ws, "gpu3"));
    CU_ASSERT(!listed(ws, "gpu5"));
    /* the message names the holder and the way out */
    tl_result r = RUN(ws, "compute", "attach", "gpu7", "--type", "testssh", "--set",
                      "address=gpu-box.example.com", "--set", "username=x", "--set",
                      "private_key_file=/dev/null");
    TL_ASSERT_EXIT(r, 5);
    ASSERT_HAS(r.err, "'gpu1'");
    ASSERT_HAS(r.err, "compute detach gpu1");
    tl_result_free(&r);
    EXPECT(0, ws, "compute", "detach", "gpu1");
    attach_ssh(ws, "gpu2", "gpu-box.example.com", "22", 0);
}

static void t_create_only_and_attach_only_types_say_what_to_do(void)
{
    const char *ws = new_ws();
    tl_result r = RUN(ws, "compute", "attach", "aci-one", "--type", "testaci", "--set",
                      "region=eastus");
    TL_ASSERT_EXIT(r, 6);
    ASSERT_HAS(r.err, "cannot be attached");
    ASSERT_HAS(r.err, "compute create");
    tl_result_free(&r);
    r = RUN(ws, "compute", "create", "ssh-one", "--type", "testssh", "--set", "address=h",
            "--set", "username=u", "--set", "private_key_file=/dev/null");
    TL_ASSERT_EXIT(r, 6);
    ASSERT_HAS(r.err, "cannot be created");
    ASSERT_HAS(r.err, "compute attach");
    tl_result_free(&r);
    CU_ASSERT(!listed(ws, "aci-one"));
    CU_ASSERT(!listed(ws, "ssh-one"));
    /* the verb they do support works */
    EXPECT(0, ws, "compute", "create", "aci-one", "--type", "testaci", "--set", "region=EastUS");
    json_t *s = show(ws, "aci-one");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "region"), "eastus");
    json_decref(s);
    /* an unknown type: not found, naming it */
    r = RUN(ws, "compute", "attach", "what-one", "--type", "nosuchtype");
    TL_ASSERT_EXIT(r, 4);
    ASSERT_HAS(r.err, "nosuchtype");
    tl_result_free(&r);
}

static void t_invalid_name_refused_with_the_rule(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    tl_result r = RUN(ws, "compute", "create", "c1", "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set", "max_nodes=1");
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "3-24");
    tl_result_free(&r);
    r = RUN(ws, "compute", "attach", "this-name-is-too-long", "--type", "testssh", "--set",
            "address=h", "--set", "username=u", "--set", "private_key_file=/dev/null");
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "2-16");
    tl_result_free(&r);
    /* 2 characters: too short for the default rule, fine for the 2-16 one */
    attach_ssh(ws, "s1", "10.3.0.1", NULL, 0);
    EXPECT(3, ws, "compute", "create", "x-1", "--type", "testcloud", "--set",
           fmt("cloud_dir=%s", cloud), "--set", "vm_size=D2", "--set", "max_nodes=1");
    CU_ASSERT(!exists(fmt("%s/c1.res", cloud)));
    CU_ASSERT(!exists(fmt("%s/x-1.res", cloud)));
}

static void t_invalid_config_exits_3_and_stores_nothing(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    attach_ssh(ws, "keeper", "10.4.0.1", NULL, 0);
    char *before = list_names(ws);
    const char *secret = "Inv4lid-Cfg-Secret-91";
    const char *dir = fmt("cloud_dir=%s", cloud), *pw = fmt("password=%s", secret);
    const char *apw = fmt("admin_password=%s", secret);
    struct {
        const char *args[16];
        const char *needle;
    } cases[] = {
        {{"attach", "bad-one", "--type", "testssh", "--set", "adress=h", "--set", "username=u",
          "--set", pw}, "did you mean 'address'"},
        {{"attach", "bad-one", "--type", "testssh", "--set", "address=h", "--set", "username=u",
          "--set", "ssh_port=http", "--set", pw}, "ssh_port"},
        {{"attach", "bad-one", "--type", "testssh", "--set", "address=h", "--set", "username=u",
          "--set", "ssh_port=70000", "--set", pw}, "out of range"},
        {{"attach", "bad-one", "--type", "testssh", "--set", "address=h", "--set", pw},
         "username"},
        {{"attach", "bad-one", "--type", "testssh", "--set", "username=u", "--set", pw},
         "address, resource_id"},
        {{"attach", "bad-one", "--type", "testssh", "--set", "address=h", "--set", "username=u",
          "--set", pw, "--set", "private_key_file=/dev/null"}, "exclude each other"},
        {{"attach", "bad-one", "--type", "testssh", "--set", "address=h", "--set", "username=u",
          "--set", "private_key_file=/nonexistent/key", "--set", "private_key_passphrase=x1234"},
         "private_key_file"},
        {{"create", "bad-one", "--type", "testcloud", "--set", dir, "--set", "vm_size=D2",
          "--set", apw}, "max_nodes"},
        {{"create", "bad-one", "--type", "testcloud", "--set", dir, "--set", "vm_size=D2",
          "--set", "max_nodes=2", "--set", "vm_priority=spot", "--set", apw}, "dedicated"},
        {{"create", "bad-one", "--type", "testcloud", "--set", dir, "--set", "vm_size=D2",
          "--set", "max_nodes=2", "--set", "ssh_public_access=perhaps", "--set", apw},
         "ssh_public_access"},
        {{"create", "bad-one", "--type", "testcloud", "--set", dir, "--set", "vm_size=D2",
          "--set", "max_nodes=2", "--set", "resource_id=/x/y", "--set", apw}, "resource_id"},
        {{"attach", "bad-one", "--type", "testcloud", "--set", dir, "--set", "resource_id=/x/y",
          "--set", "vm_size=D2"}, "vm_size"},
        /* the plugin's own cross-key check (validate) */
        {{"create", "bad-one", "--type", "testcloud", "--set", dir, "--set", "vm_size=D2",
          "--set", "max_nodes=2", "--set", "min_nodes=5", "--set", apw}, "min_nodes"},
        /* the plugin refusing at create time (too short a password) */
        {{"create", "bad-one", "--type", "testcloud", "--set", dir, "--set", "vm_size=D2",
          "--set", "max_nodes=2", "--set", "admin_password=short"}, "admin_password"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *argv[20] = {"compute"};
        size_t n = 1;
        for (size_t k = 0; cases[i].args[k]; k++)
            argv[n++] = cases[i].args[k];
        argv[n++] = "--quiet";
        argv[n] = NULL;
        tl_result r = tl_ctarget_run(ws, NULL, NULL, argv);
        if (r.status != 3)
            fprintf(stdout, "case %zu\n", i);
        TL_ASSERT_EXIT(r, 3);
        ASSERT_HAS(r.err, cases[i].needle);
        CU_ASSERT_EQUAL(count_lines(r.err), 1); /* one clear line */
        CU_ASSERT(!tl_contains(r.err, secret));
        tl_result_free(&r);
        char *now = list_names(ws);
        CU_ASSERT_STRING_EQUAL(now, before);
        free(now);
    }
    free(before);
    CU_ASSERT(!exists(fmt("%s/bad-one.res", cloud)));
    /* no secret row (nor the value anywhere) was left behind */
    char *hit = tl_tree_grep(ws, secret, strlen(secret));
    if (hit)
        fprintf(stdout, "secret of a refused target found in %s\n", hit);
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
}

static void t_unreachable_attach_is_not_recorded(void)
{
    const char *ws = new_ws();
    tl_result r = RUN(ws, "compute", "attach", "far-away", "--type", "testssh", "--set",
                      "address=host.invalid", "--set", "username=u", "--set",
                      "private_key_file=/dev/null");
    TL_ASSERT_EXIT(r, 8);
    ASSERT_HAS(r.err, "host.invalid");
    tl_result_free(&r);
    CU_ASSERT(!listed(ws, "far-away"));
    /* it holds neither its name nor its identity */
    attach_ssh(ws, "far-away", "10.5.0.1", NULL, 0);
}

/* ---- --config FILE.json and @FILE ------------------------------------------------------- */

static void t_config_file_values_typed_and_overridden_by_set(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    char *d = tl_tmpdir("cfg");
    const char *f = fmt("%s/cluster.json", d);
    free(d);
    tl_write_file(f, fmt("{\"cloud_dir\": \"%s\", \"vm_size\": \"D2\", \"max_nodes\": 4,\n"
                         " \"ssh_public_access\": true, \"tags\": [\"gpu\", \"team-a\"],\n"
                         " \"low_priority_ratio\": 0.5, \"vm_priority\": \"LowPriority\"}\n",
                         cloud));
    tl_result r = RUN(ws, "compute", "create", "cfg-cluster", "--type", "testcloud", "--config",
                      f, "--set", "vm_size=D8", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *s = show(ws, "cfg-cluster");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "vm_size"), "D8"); /* --set wins */
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "max_nodes"), "4");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "ssh_public_access"), "true");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "tags"), "gpu,team-a");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "low_priority_ratio"), "0.5");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "vm_priority"), "lowpriority");
    json_decref(s);
    /* numbers keep every digit they were given; null unsets; lists may hold numbers */
    const char *cloud2 = new_cloud();
    char *d2 = tl_tmpdir("cfg2");
    const char *f2 = fmt("%s/precise.json", d2);
    free(d2);
    tl_write_file(f2, fmt("{\"cloud_dir\": \"%s\", \"vm_size\": \"D2\", \"max_nodes\": 4,\n"
                          " \"low_priority_ratio\": 0.123456789, \"tags\": [\"team-a\", 7, 0.1],\n"
                          " \"min_nodes\": null}\n", cloud2));
    EXPECT(0, ws, "compute", "create", "cfg-precise", "--type", "testcloud", "--config", f2);
    s = show(ws, "cfg-precise");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "low_priority_ratio"), "0.123456789");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "tags"), "team-a,7,0.1");
    CU_ASSERT_PTR_NULL(json_object_get(json_object_get(s, "config"), "min_nodes"));
    json_decref(s);
}

static void t_config_file_errors_are_one_clear_line_exit_3(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    char *d = tl_tmpdir("cfgbad");
    struct {
        const char *name, *content, *needle;
    } cases[] = {
        {"syntax.json", "{\"cloud_dir\": \"x\",\n \"vm_size\": }\n", "line 2"},
        {"array.json", "[\"cloud_dir\", \"x\"]\n", "JSON object"},
        {"string.json", "\"cloud_dir=x\"\n", "JSON object"},
        {"nested.json", "{\"cloud_dir\": {\"path\": \"x\"}}\n", "'cloud_dir'"},
        {"listobj.json", "{\"tags\": [{\"a\": 1}]}\n", "'tags'"},
        {"wrongtype.json", NULL, "max_nodes"},
        {"unknown.json", NULL, "did you mean 'vm_size'"},
        {"empty.json", "", "empty.json"},
        /* every element of a list is checked, not only the first; nesting is refused */
        {"listlater.json", "{\"tags\": [\"a\", {\"b\": 1}]}\n", "'tags'"},
        {"listnested.json", "{\"tags\": [\"a\", [\"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
                            "bbbbbbbbbbbbbbbbbbbbbbbb\", \"c\"]]}\n", "'tags'"},
        {"listbool.json", "{\"tags\": [true]}\n", "'tags'"},
        /* a key given twice is a mistake, not "the last one wins" */
        {"dupkey.json", "{\"vm_size\": \"D2\",\n \"vm_size\": \"D8\"}\n", "duplicate"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *f = fmt("%s/%s", d, cases[i].name);
        const char *content = cases[i].content;
        if (!strcmp(cases[i].name, "wrongtype.json"))
            content = fmt("{\"cloud_dir\": \"%s\", \"vm_size\": \"D2\", \"max_nodes\": "
                          "\"many\"}", cloud);
        else if (!strcmp(cases[i].name, "unknown.json"))
            content = fmt("{\"cloud_dir\": \"%s\", \"vm_sise\": \"D2\", \"max_nodes\": 2}",
                          cloud);
        tl_write_file(f, content);
        tl_result r = RUN(ws, "compute", "create", "cfg-bad", "--type", "testcloud", "--config",
                          f);
        if (r.status != 3)
            fprintf(stdout, "case %s\n", cases[i].name);
        TL_ASSERT_EXIT(r, 3);
        ASSERT_HAS(r.err, cases[i].needle);
        CU_ASSERT_EQUAL(count_lines(r.err), 1);
        tl_result_free(&r);
    }
    /* a file that is not there: named, without a fake line number */
    tl_result r = RUN(ws, "compute", "create", "cfg-bad", "--type", "testcloud", "--config",
                      fmt("%s/missing.json", d));
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "missing.json");
    CU_ASSERT(!tl_contains(r.err, "line -1"));
    CU_ASSERT_EQUAL(count_lines(r.err), 1);
    tl_result_free(&r);
    free(d);
    CU_ASSERT(!listed(ws, "cfg-bad"));
}

static void t_set_value_from_file_with_at(void)
{
    const char *ws = new_ws(), *cloud = new_cloud();
    char *d = tl_tmpdir("at");
    const char *f = fmt("%s/size.txt", d);
    free(d);
    tl_write_file(f, "Standard_NC6\n");
    EXPECT(0, ws, "compute", "create", "at-cluster", "--type", "testcloud", "--set",
           fmt("cloud_dir=%s", cloud), "--set", fmt("vm_size=@%s", f), "--set", "max_nodes=1",
           "--set", "tags=@@team");
    json_t *s = show(ws, "at-cluster");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "vm_size"), "Standard_NC6"); /* newline dropped */
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "tags"), "@team");          /* @@ escapes */
    json_decref(s);
    tl_result r = RUN(ws, "compute", "create", "at-missing", "--type", "testcloud", "--set",
                      fmt("cloud_dir=%s", cloud), "--set", fmt("vm_size=@%s.nope", f), "--set",
                      "max_nodes=1");
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "size.txt.nope");
    tl_result_free(&r);
    CU_ASSERT(!listed(ws, "at-missing"));
    /* @- reads standard input */
    r = tl_ctarget_run(ws, "D16\n", NULL,
                       (const char *const[]){"compute", "create", "at-stdin", "--type",
                                             "testcloud", "--set", fmt("cloud_dir=%s", cloud),
                                             "--set", "vm_size=@-", "--set", "max_nodes=1",
                                             NULL});
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    s = show(ws, "at-stdin");
    CU_ASSERT_STRING_EQUAL(jstr(s, "config", "vm_size"), "D16");
    json_decref(s);
    /* an empty file (or empty stdin) is an error, never a silent unset */
    const char *empty = fmt("%s.empty", f);
    tl_write_file(empty, "");
    r = RUN(ws, "compute", "create", "at-empty", "--type", "testcloud", "--set",
            fmt("cloud_dir=%s", cloud), "--set", fmt("vm_size=@%s", empty), "--set",
            "max_nodes=1");
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "size.txt.empty");
    ASSERT_HAS(r.err, "empty");
    CU_ASSERT_EQUAL(count_lines(r.err), 1);
    tl_result_free(&r);
    r = tl_ctarget_run(ws, "\n", NULL,
                       (const char *const[]){"compute", "update", "at-stdin", "--set",
                                             "min_nodes=@-", NULL});
    TL_ASSERT_EXIT(r, 3);
    ASSERT_HAS(r.err, "standard input");
    tl_result_free(&r);
    CU_ASSERT(!listed(ws, "at-empty"));
    CU_ASSERT(!exists(fmt("%s/at-empty.res", cloud)));
}

/* ---- many processes at once ------------------------------------------------------------- */

typedef struct proc {
    pid_t pid;
    char *out, *err;
    int status;
} proc;

static pid_t spawn_ct(const char *const argv[], const char *out, const char *err)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        fprintf(stdout, "cannot run %s: %s\n", argv[0], strerror(rc));
        return -1;
    }
    return pid;
}

/* Wait for all, at most 90 s; stragglers are killed and count as failures. */
static void wait_all(proc *p, size_t n)
{
    long long deadline = tl_now_ms() + 90000;
    size_t left = n;
    while (left) {
        int progressed = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i].pid <= 0)
                continue;
            int st;
            pid_t w = waitpid(p[i].pid, &st, WNOHANG);
            if (w == p[i].pid) {
                p[i].status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                p[i].pid = 0;
                left--;
                progressed = 1;
            }
        }
        if (!left)
            break;
        if (tl_now_ms() > deadline) {
            for (size_t i = 0; i < n; i++)
                if (p[i].pid > 0) {
                    kill(p[i].pid, SIGKILL);
                    waitpid(p[i].pid, NULL, 0);
                    p[i].pid = 0;
                    p[i].status = 999;
                }
            CU_FAIL("concurrent ctarget processes did not finish within 90 s");
            break;
        }
        if (!progressed) {
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
        }
    }
}

enum { N_CONCURRENT = 20 };

static void t_twenty_concurrent_attaches_all_recorded(void)
{
    const char *ws = new_ws(); /* fresh: the processes also race to create it */
    char *d = tl_tmpdir("conc");
    const char *key = fmt("%s/key", d);
    tl_write_file(key, "key\n");
    proc p[N_CONCURRENT];
    memset(p, 0, sizeof p);
    for (int i = 0; i < N_CONCURRENT; i++) {
        p[i].out = tl_path(d, fmt("out%d", i));
        p[i].err = tl_path(d, fmt("err%d", i));
        const char *argv[] = {tl_ctarget(), "--workspace", ws, "compute", "attach",
                              fmt("host%02d", i), "--type", "testssh", "--set",
                              fmt("address=10.20.0.%d", i + 1), "--set", "username=ml",
                              "--set", fmt("private_key_file=%s", key), "--set", "delay_ms=20",
                              NULL};
        p[i].pid = spawn_ct(argv, p[i].out, p[i].err);
        CU_ASSERT(p[i].pid > 0);
    }
    wait_all(p, N_CONCURRENT);
    for (int i = 0; i < N_CONCURRENT; i++) {
        char *err = tl_read_file(p[i].err);
        if (p[i].status != 0)
            fprintf(stdout, "host%02d: exit %d: %s\n", i, p[i].status, err ? err : "");
        CU_ASSERT_EQUAL(p[i].status, 0);
        CU_ASSERT(!tl_contains(err, "locked"));
        CU_ASSERT(!tl_contains(err, "busy"));
        free(err);
        free(p[i].out);
        free(p[i].err);
    }
    json_t *l = list(ws);
    for (int i = 0; i < N_CONCURRENT; i++) {
        json_t *t = find(l, fmt("host%02d", i));
        CU_ASSERT_PTR_NOT_NULL(t);
        if (t)
            CU_ASSERT_STRING_EQUAL(jstr(t, "type", NULL), "testssh");
    }
    CU_ASSERT_EQUAL(json_array_size(l), N_CONCURRENT + 1); /* + local */
    json_decref(l);
    free(d);
}

/* Racing for the same resource or the same name: exactly one wins, the others get exit 5. */
static void t_concurrent_attaches_of_one_resource_one_wins(void)
{
    const char *ws = new_ws();
    char *d = tl_tmpdir("race");
    enum { N = 10 };
    for (int round = 0; round < 2; round++) {
        proc p[N];
        memset(p, 0, sizeof p);
        for (int i = 0; i < N; i++) {
            p[i].out = tl_path(d, fmt("o%d-%d", round, i));
            p[i].err = tl_path(d, fmt("e%d-%d", round, i));
            /* round 0: same address, different names; round 1: same name, other addresses */
            const char *name = round == 0 ? fmt("racer%d", i) : "samename";
            const char *addr = round == 0 ? "10.30.0.1" : fmt("10.31.0.%d", i + 1);
            const char *argv[] = {tl_ctarget(), "--workspace", ws, "compute", "attach", name,
                                  "--type", "testssh", "--set", fmt("address=%s", addr),
                                  "--set", "username=ml", "--set", "private_key_file=/dev/null",
                                  "--set", "delay_ms=20", NULL};
            p[i].pid = spawn_ct(argv, p[i].out, p[i].err);
        }
        wait_all(p, N);
        int ok = 0, exists5 = 0;
        for (int i = 0; i < N; i++) {
            char *err = tl_read_file(p[i].err);
            ok += p[i].status == 0;
            exists5 += p[i].status == 5;
            if (p[i].status != 0 && p[i].status != 5)
                fprintf(stdout, "round %d #%d: exit %d: %s\n", round, i, p[i].status, err);
            CU_ASSERT(!tl_contains(err, "locked"));
            free(err);
            free(p[i].out);
            free(p[i].err);
        }
        CU_ASSERT_EQUAL(ok, 1);
        CU_ASSERT_EQUAL(exists5, N - 1);
    }
    json_t *l = list(ws);
    CU_ASSERT_EQUAL(json_array_size(l), 2 + 1); /* one racer, samename, local */
    CU_ASSERT_PTR_NOT_NULL(find(l, "samename"));
    json_decref(l);
    free(d);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_create_wait_follows_creating_to_succeeded);
    TL_ADD(s, t_create_without_wait_returns_creating_and_status_wait_settles);
    TL_ADD(s, t_failed_provisioning_wait_exits_nonzero_with_errors);
    TL_ADD(s, t_list_table_and_json_show_type_origin_and_state);
    TL_ADD(s, t_show_and_status_report_config_facts_and_live_state);
    TL_ADD(s, t_update_applies_mutable_and_refuses_immutable_unchanged);
    TL_ADD(s, t_start_stop_restart_where_supported_exit_6_elsewhere);
    TL_ADD(s, t_nodes_listed_where_supported);
    TL_ADD(s, t_detach_forgets_but_never_destroys);
    TL_ADD(s, t_delete_destroys_created_and_refuses_attached);
    TL_ADD(s, t_names_unique_case_insensitively);
    TL_ADD(s, t_no_double_attachment_by_resource_id);
    TL_ADD(s, t_no_double_attachment_by_address_and_port);
    TL_ADD(s, t_create_only_and_attach_only_types_say_what_to_do);
    TL_ADD(s, t_invalid_name_refused_with_the_rule);
    TL_ADD(s, t_invalid_config_exits_3_and_stores_nothing);
    TL_ADD(s, t_unreachable_attach_is_not_recorded);
    TL_ADD(s, t_config_file_values_typed_and_overridden_by_set);
    TL_ADD(s, t_config_file_errors_are_one_clear_line_exit_3);
    TL_ADD(s, t_set_value_from_file_with_at);
    TL_ADD(s, t_twenty_concurrent_attaches_all_recorded);
    TL_ADD(s, t_concurrent_attaches_of_one_resource_one_wins);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "registry", add);
}
