/* The compute-target registry through the real command: create/attach/list/show/status/
 * update/power/nodes/detach/delete, the seed rules (unique names, no double attachment,
 * create-only and attach-only types), nothing stored on invalid input, and many processes
 * attaching at once. */
#define _GNU_SOURCE
#include "testlib.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct world {
    char *ws, *cloud, *cloud_set;
} world;

static world world_new(void)
{
    world w;
    w.ws = tl_tmpdir("ws");
    w.cloud = tl_tmpdir("cloud");
    if (asprintf(&w.cloud_set, "cloud_dir=%s", w.cloud) < 0)
        abort();
    return w;
}

static void world_free(world *w)
{
    free(w->ws);
    free(w->cloud);
    free(w->cloud_set);
}

static int res_exists(const world *w, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s.res", w->cloud, name) < 0)
        abort();
    int ok = access(p, F_OK) == 0;
    free(p);
    return ok;
}

static json_t *list_json(const world *w)
{
    tl_result r = TL_CT(w->ws, "compute", "list", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    tl_result_free(&r);
    return j;
}

static json_t *entry(json_t *list, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) if (!strcmp(json_string_value(json_object_get(e, "name")),
                                               name)) return e;
    return NULL;
}

static size_t stored_count(const world *w)
{
    json_t *l = list_json(w);
    size_t n = 0, i;
    json_t *e;
    json_array_foreach(l, i, e) n += strcmp(json_string_value(json_object_get(e, "origin")),
                                            "implicit") != 0;
    json_decref(l);
    return n;
}

static tl_result create(const world *w, const char *name, const char *extra1,
                        const char *extra2)
{
    const char *args[] = {"compute", "create", name, "--type", "testcloud", "--set",
                          w->cloud_set, "--set", "vm_size=STANDARD_D2", "--set", "max_nodes=4",
                          "--wait", extra1 ? "--set" : NULL, extra1, extra2 ? "--set" : NULL,
                          extra2, NULL};
    return tl_ctarget_run(w->ws, NULL, NULL, args);
}

static void t_create_wait_follows_provisioning_to_succeeded(void)
{
    world w = world_new();
    tl_result r = create(&w, "cpu-a", "provision_polls=3", NULL);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.err, "Creating"));   /* progress shown while it settles */
    CU_ASSERT(tl_contains(r.err, "Succeeded"));
    tl_result_free(&r);
    json_t *l = list_json(&w);
    json_t *e = entry(l, "cpu-a");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "provisioning_state")),
                           "Succeeded");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "type")), "testcloud");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "origin")), "created");
    CU_ASSERT_PTR_NOT_NULL(entry(l, "local"));
    json_decref(l);
    r = TL_CT(w.ws, "compute", "list");
    CU_ASSERT(tl_contains(r.out, "cpu-a") && tl_contains(r.out, "Succeeded"));
    tl_result_free(&r);
    world_free(&w);
}

static void t_failed_provisioning_prints_the_errors(void)
{
    world w = world_new();
    tl_result r = create(&w, "cpu-b", "fail_provisioning=true", NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "QuotaExceeded"));
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "show", "cpu-b", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "provisioning_state")),
                           "Failed");
    CU_ASSERT(strstr(json_string_value(json_object_get(j, "provisioning_errors")),
                     "QuotaExceeded") != NULL);
    json_decref(j);
    tl_result_free(&r);
    world_free(&w);
}

static void t_show_status_update_power_nodes(void)
{
    world w = world_new();
    tl_result r = create(&w, "cpu-c", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "status", "cpu-c", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Running"));
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "stop", "cpu-c");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "status", "cpu-c", "--output", "json");
    CU_ASSERT(tl_contains(r.out, "Stopped"));
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "start", "cpu-c");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "update", "cpu-c", "--set", "min_nodes=2");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "show", "cpu-c", "--output", "json");
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(j, "config"),
                                                             "min_nodes")), "2");
    json_decref(j);
    tl_result_free(&r);
    /* immutable: refused with 3 and the record is unchanged */
    r = TL_CT(w.ws, "compute", "update", "cpu-c", "--set", "ssh_public_access=true");
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "ssh_public_access"));
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "show", "cpu-c", "--output", "json");
    CU_ASSERT(!tl_contains(r.out, "ssh_public_access"));
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "nodes", "cpu-c", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    world_free(&w);
}

static void t_power_on_a_type_without_it_is_unsupported(void)
{
    world w = world_new();
    tl_result r = TL_CT(w.ws, "compute", "attach", "vm1", "--type", "testssh", "--set",
                        "address=10.0.0.4", "--set", "username=ml", "--set", "password=abcd1234");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "stop", "vm1");
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "testssh"));
    tl_result_free(&r);
    world_free(&w);
}

static void t_detach_forgets_delete_destroys(void)
{
    world w = world_new();
    tl_result r = create(&w, "cpu-d", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = create(&w, "cpu-e", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(res_exists(&w, "cpu-d") && res_exists(&w, "cpu-e"));
    r = TL_CT(w.ws, "compute", "detach", "cpu-d");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(res_exists(&w, "cpu-d"));           /* never destroyed */
    r = TL_CT(w.ws, "compute", "show", "cpu-d");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "delete", "cpu-e", "--yes");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(!res_exists(&w, "cpu-e"));          /* destroyed */
    CU_ASSERT_EQUAL(stored_count(&w), 0);
    /* an attached target is not ctarget's to destroy */
    char *rid = NULL;
    if (asprintf(&rid, "resource_id=/subscriptions/s/clusters/cpu-d") < 0)
        abort();
    r = TL_CT(w.ws, "compute", "attach", "again", "--type", "testcloud", "--set", w.cloud_set,
              "--set", rid);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "delete", "again", "--yes");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "detach"));
    tl_result_free(&r);
    CU_ASSERT(res_exists(&w, "cpu-d"));
    free(rid);
    world_free(&w);
}

static void t_names_unique_and_checked(void)
{
    world w = world_new();
    tl_result r = create(&w, "cpu-f", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = create(&w, "CPU-F", NULL, NULL);
    TL_ASSERT_EXIT(r, 5);
    tl_result_free(&r);
    r = create(&w, "cpu-1", NULL, NULL);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "cpu-1"));
    tl_result_free(&r);
    CU_ASSERT_EQUAL(stored_count(&w), 1);
    world_free(&w);
}

static tl_result attach_ssh(const world *w, const char *name, const char *addr, const char *port)
{
    const char *args[] = {"compute", "attach", name, "--type", "testssh", "--set", addr,
                          "--set", "username=ml", "--set", "password=abcd1234",
                          port ? "--set" : NULL, port, NULL};
    return tl_ctarget_run(w->ws, NULL, NULL, args);
}

static void t_same_resource_never_attached_twice(void)
{
    world w = world_new();
    tl_result r = attach_ssh(&w, "vm1", "address=gpu-box.corp", NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* same host, default port made explicit, other case: the same machine */
    r = attach_ssh(&w, "vm2", "address=GPU-BOX.corp", "ssh_port=22");
    TL_ASSERT_EXIT(r, 5);
    CU_ASSERT(tl_contains(r.err, "vm1"));
    CU_ASSERT(tl_contains(r.err, "detach"));
    tl_result_free(&r);
    /* another port is another resource */
    r = attach_ssh(&w, "vm3", "address=gpu-box.corp", "ssh_port=2222");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* after detach it may be attached again under another name */
    r = TL_CT(w.ws, "compute", "detach", "vm1");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = attach_ssh(&w, "vm2", "address=gpu-box.corp", NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* by resource id */
    r = create(&w, "cpu-g", NULL, NULL);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "attach", "gee-one", "--type", "testcloud", "--set", w.cloud_set,
              "--set", "resource_id=/subs/1/cpu-g");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "attach", "gee-two", "--type", "testcloud", "--set", w.cloud_set,
              "--set", "resource_id=/SUBS/1/CPU-G");
    TL_ASSERT_EXIT(r, 5);
    tl_result_free(&r);
    world_free(&w);
}

static void t_create_only_and_attach_only_types_say_what_to_do(void)
{
    world w = world_new();
    tl_result r = TL_CT(w.ws, "compute", "attach", "aci1", "--type", "testaci");
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "compute create"));
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "create", "vm9", "--type", "testssh", "--set", "address=h",
              "--set", "username=u");
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "compute attach"));
    tl_result_free(&r);
    CU_ASSERT_EQUAL(stored_count(&w), 0);
    world_free(&w);
}

static void t_invalid_config_stores_nothing(void)
{
    world w = world_new();
    const char *bad[][2] = {{"vm_sise=D2", "vm_size"}, {"max_nodes=lots", "max_nodes"},
                            {"vm_priority=spot", "vm_priority"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tl_result r = TL_CT(w.ws, "compute", "create", "cpu-h", "--type", "testcloud", "--set",
                            w.cloud_set, "--set", "max_nodes=2", "--set", bad[i][0]);
        TL_ASSERT_EXIT(r, 3);
        CU_ASSERT(tl_contains(r.err, bad[i][1]));
        tl_result_free(&r);
    }
    tl_result r = TL_CT(w.ws, "compute", "create", "cpu-h", "--type", "testcloud", "--set",
                        w.cloud_set);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "vm_size") || tl_contains(r.err, "max_nodes"));
    tl_result_free(&r);
    CU_ASSERT_EQUAL(stored_count(&w), 0);
    CU_ASSERT(!res_exists(&w, "cpu-h"));
    world_free(&w);
}

static void t_config_file_and_at_file_values(void)
{
    world w = world_new();
    char *cfg = tl_path(w.ws, "c.json");
    char *text = NULL;
    if (asprintf(&text, "{\"cloud_dir\": \"%s\", \"vm_size\": \"D4\", \"max_nodes\": 8, "
                 "\"ssh_public_access\": false}", w.cloud) < 0)
        abort();
    tl_write_file(cfg, text);
    char *size = tl_path(w.ws, "size.txt");
    tl_write_file(size, "STANDARD_NC6\n");
    char *at = NULL;
    if (asprintf(&at, "vm_size=@%s", size) < 0)
        abort();
    tl_result r = TL_CT(w.ws, "compute", "create", "cpu-i", "--type", "testcloud", "--config",
                        cfg, "--set", at, "--wait");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w.ws, "compute", "show", "cpu-i", "--output", "json");
    json_t *j = tl_json(&r);
    json_t *c = json_object_get(j, "config");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "vm_size")), "STANDARD_NC6");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "max_nodes")), "8");
    json_decref(j);
    tl_result_free(&r);
    /* bad files: one line, exit 3, nothing stored */
    const char *bad[] = {"{not json", "[1, 2]", "{\"max_nodes\": {\"n\": 1}}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tl_write_file(cfg, bad[i]);
        r = TL_CT(w.ws, "compute", "create", "cpu-j", "--type", "testcloud", "--config", cfg);
        TL_ASSERT_EXIT(r, 3);
        CU_ASSERT(tl_contains(r.err, "c.json"));
        CU_ASSERT_PTR_NULL(strchr(strchr(r.err, '\n') ? strchr(r.err, '\n') + 1 : "", '\n'));
        tl_result_free(&r);
    }
    CU_ASSERT_EQUAL(stored_count(&w), 1);
    free(at);
    free(size);
    free(text);
    free(cfg);
    world_free(&w);
}

static void t_twenty_concurrent_attaches_all_recorded(void)
{
    world w = world_new();
    enum { N = 20 };
    pid_t pids[N];
    char *errs[N];
    for (int i = 0; i < N; i++) {
        errs[i] = NULL;
        if (asprintf(&errs[i], "%s/err%d", w.cloud, i) < 0)
            abort();
        pids[i] = fork();
        CU_ASSERT_FATAL(pids[i] >= 0);
        if (pids[i] == 0) {
            char name[32], addr[64];
            snprintf(name, sizeof name, "vm-%c%d", 'a' + i, i);
            snprintf(addr, sizeof addr, "address=10.1.0.%d", i + 1);
            FILE *f = freopen(errs[i], "w", stderr);
            (void)f;
            execl(tl_ctarget(), tl_ctarget(), "--workspace", w.ws, "compute", "attach", name,
                  "--type", "testssh", "--set", addr, "--set", "username=ml", "--set",
                  "password=abcd1234", "--set", "delay_ms=50", (char *)NULL);
            _exit(127);
        }
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
        char *e = tl_read_file(errs[i]);
        CU_ASSERT(!e || !strstr(e, "locked"));
        if (e && strstr(e, "error"))
            fprintf(stderr, "attach %d: %s", i, e);
        free(e);
        free(errs[i]);
    }
    CU_ASSERT_EQUAL(ok, N);
    CU_ASSERT_EQUAL(stored_count(&w), N);
    world_free(&w);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_create_wait_follows_provisioning_to_succeeded);
    TL_ADD(s, t_failed_provisioning_prints_the_errors);
    TL_ADD(s, t_show_status_update_power_nodes);
    TL_ADD(s, t_power_on_a_type_without_it_is_unsupported);
    TL_ADD(s, t_detach_forgets_delete_destroys);
    TL_ADD(s, t_names_unique_and_checked);
    TL_ADD(s, t_same_resource_never_attached_twice);
    TL_ADD(s, t_create_only_and_attach_only_types_say_what_to_do);
    TL_ADD(s, t_invalid_config_stores_nothing);
    TL_ADD(s, t_config_file_and_at_file_values);
    TL_ADD(s, t_twenty_concurrent_attaches_all_recorded);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "registry", add);
}
