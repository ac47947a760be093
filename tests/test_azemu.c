/* The Azure emulators themselves (tests/emulators): the fixture from C, the emulator's own
 * checks, every official example of shared/specs replayed and validated against the swagger,
 * and Microsoft's JavaScript SDK (@azure/arm-machinelearning, @azure/storage-blob,
 * @azure/identity) run against the emulator and the real Azurite.  If the official client
 * cannot do what our plugins do through this emulator, the emulator is wrong. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "testlib.h"

static azfix FX;
static int FX_ok = -1;

static int fixture(void)
{
    if (FX_ok < 0)
        FX_ok = azfix_start(&FX, NULL) == 0;
    return FX_ok;
}

/* Count the lines of out that start with prefix. */
static int lines(const char *out, const char *prefix)
{
    int n = 0;
    size_t pl = strlen(prefix);
    for (const char *p = out; p && *p;) {
        if (!strncmp(p, prefix, pl))
            n++;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    return n;
}

/* Run argv with the fixture's environment; assert exit 0, at least min_ok "ok - " lines and
 * no "not ok" line; print everything when it fails. */
static void run_checks(const char *what, const char *const argv[], int min_ok)
{
    if (!fixture()) {
        CU_FAIL("the Azure fixture did not start");
        return;
    }
    long long t0 = tl_now_ms();
    tl_result r = tl_exec(argv, NULL, (const char *const *)FX.env);
    int ok = lines(r.out, "ok - "), bad = lines(r.out, "not ok - ");
    if (r.status != 0 || bad || ok < min_ok) {
        tl_dump(what, &r);
    }
    fprintf(stderr, "%s: %d checks passed, %d failed (%lld ms)\n", what, ok, bad, tl_now_ms() - t0);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(ok >= min_ok);
    tl_result_free(&r);
}

static char *src(const char *rel)
{
    return tl_path(tl_srcdir(), rel);
}

static void self(const char *group, int min_ok)
{
    char *py = src("tests/emulators/selftest.py");
    char what[64];
    snprintf(what, sizeof what, "selftest %s", group);
    run_checks(what, (const char *const[]){"python3", py, group, NULL}, min_ok);
    free(py);
}

/* ---- the fixture ---------------------------------------------------------------------------- */

static void t01_fixture_starts(void)
{
    CU_ASSERT_FATAL(fixture());
    CU_ASSERT(FX.port > 0 && FX.imds_port > 0 && FX.blob_port > 0);
    CU_ASSERT(FX.emu_pid > 0 && kill(FX.emu_pid, 0) == 0);
    CU_ASSERT(FX.azurite_pid > 0 && kill(FX.azurite_pid, 0) == 0);
    CU_ASSERT(access(FX.ca_bundle, R_OK) == 0);
    CU_ASSERT(access(FX.client_cert, R_OK) == 0 && access(FX.client_cert_p, R_OK) == 0);
    CU_ASSERT(!strncmp(FX.arm, "https://127.0.0.1:", 18));
    CU_ASSERT(!strncmp(FX.imds, "http://127.0.0.1:", 17));
    CU_ASSERT(FX.blob && !strncmp(FX.blob, "https://127.0.0.1:", 18));
    char *cfg = tl_read_file(FX.config_json);
    json_error_t e;
    json_t *j = cfg ? json_loads(cfg, 0, &e) : NULL;
    CU_ASSERT_PTR_NOT_NULL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "subscription_id")), FX.subscription_id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "resource_group")), FX.resource_group);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "workspace_name")), FX.workspace_name);
    json_decref(j);
    free(cfg);
    char *az = tl_path(FX.dir, ".azureml/config.json");
    CU_ASSERT(access(az, R_OK) == 0);
    free(az);
    /* the server certificate is held to the CA by a real TLS client (openssl) */
    CU_ASSERT(FX.blob_proxy_port > 0 && FX.blob_proxy_port != FX.blob_port);
    CU_ASSERT(FX.blob_proxy && !strncmp(FX.blob_proxy, "https://127.0.0.1:", 18));
    int ports[] = {FX.port, FX.blob_port, FX.blob_proxy_port};
    for (size_t i = 0; i < 3; i++) {
        char *connect = NULL;
        if (asprintf(&connect, "127.0.0.1:%d", ports[i]) < 0)
            abort();
        tl_result r = tl_exec((const char *const[]){"openssl", "s_client", "-connect", connect, "-CAfile",
                                                    FX.ca_bundle, "-verify_return_error", "-brief", NULL},
                              "", NULL);
        if (r.status != 0)
            tl_dump(connect, &r);
        CU_ASSERT_EQUAL(r.status, 0);
        tl_result_free(&r);
        free(connect);
    }
}

/* The C API the plugins' tests use: faults, the request log, counts, reset, state, blobs. */
static void t02_fixture_api(void)
{
    CU_ASSERT_FATAL(fixture());
    CU_ASSERT_EQUAL(azfix_reset(&FX), 0);
    json_t *a = azfix_requests(&FX);
    CU_ASSERT(a && json_array_size(a) == 0);
    json_decref(a);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"GET\",\"path\":\"/metadata/\",\"status\":429,"
                                     "\"retry_after\":1,\"count\":1}"), 0);
    CU_ASSERT_NOT_EQUAL(azfix_fault(&FX, "{not json"), 0);
    char *url = NULL;
    if (asprintf(&url, "%s/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x", FX.imds) < 0)
        abort();
    /* one IMDS call through python's http.client: 429 first, then 400 (no Metadata header) */
    const char *py = "import sys,urllib.request,urllib.error\n"
                     "for i in range(2):\n"
                     "  try: urllib.request.urlopen(sys.argv[1])\n"
                     "  except urllib.error.HTTPError as e: print(e.code)\n";
    tl_result r = tl_exec((const char *const[]){"python3", "-c", py, url, NULL}, NULL, NULL);
    CU_ASSERT_STRING_EQUAL(r.out, "429\n400\n");
    tl_result_free(&r);
    free(url);
    CU_ASSERT_EQUAL(azfix_count(&FX, "GET", "^/metadata/identity/oauth2/token$"), 2);
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", NULL), 0);
    CU_ASSERT_EQUAL(azfix_count(&FX, NULL, "^/metadata/"), 2);
    CU_ASSERT_EQUAL(azfix_config(&FX, "{\"lro_ms\":250}"), 0);
    CU_ASSERT_NOT_EQUAL(azfix_config(&FX, "{\"no_such_key\":1}"), 0);
    json_t *st = azfix_state(&FX);
    CU_ASSERT(st && json_integer_value(json_object_get(json_object_get(st, "config"), "lro_ms")) == 250);
    json_decref(st);
    CU_ASSERT_EQUAL(azfix_config(&FX, "{\"lro_ms\":300}"), 0);
    size_t n = 99;
    CU_ASSERT_PTR_NULL(azfix_blob_get(&FX, "azureml", "no/such/blob", &n));
    CU_ASSERT_EQUAL(azfix_reset(&FX), 0);
    CU_ASSERT_EQUAL(azfix_count(&FX, NULL, NULL), 0);
}

/* ---- the emulator's own checks ------------------------------------------------------------- */
static void t03_self_aad(void) { self("aad", 15); }
static void t04_self_imds(void) { self("imds", 5); }
static void t05_self_arm(void) { self("arm", 13); }
static void t06_self_lro(void) { self("lro", 21); }
static void t07_self_faults(void) { self("faults", 6); }
static void t08_self_jobs(void) { self("jobs", 18); }
static void t09_self_ci(void) { self("ci", 7); }
static void t09b_self_blob_proxy(void) { self("blob", 11); }

/* A job's log and outputs read from C through the fixture (what test_aml compares). */
static void t10_blob_from_c(void)
{
    CU_ASSERT_FATAL(fixture());
    size_t n = 0;
    char *log = azfix_blob_get(&FX, "azureml", "ExperimentRun/dcid.job-ok-1/user_logs/std_log.txt", &n);
    CU_ASSERT(log && n > 0 && tl_contains(log, "hello from job-ok-1 myval"));
    free(log);
    char *out = azfix_blob_get(&FX, "azureml", "ExperimentRun/dcid.job-ok-1/outputs/sub/result.txt", &n);
    CU_ASSERT(out && n == 2 && !memcmp(out, "42", 2));
    free(out);
    json_t *st = azfix_state(&FX);
    json_t *jb = json_object_get(json_object_get(st, "jobs"), "job-ok-1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(jb, "status")), "Completed");
    json_decref(st);
}

/* ---- held to Microsoft ---------------------------------------------------------------------- */

/* Every official example: its request replayed to the emulator, the answer validated against
 * the swagger response schema; and the example's own responses validated by our validator. */
static void t11_spec_examples(void)
{
    char *py = src("tests/emulators/replay_examples.py");
    run_checks("replay_examples", (const char *const[]){"python3", py, NULL}, 53);
    free(py);
}

static void t12_sdk_arm(void)
{
    char *js = src("tests/emulators/sdk/arm.mjs");
    run_checks("sdk/arm.mjs", (const char *const[]){"node", js, NULL}, 43);
    free(js);
}

static void t13_sdk_blob(void)
{
    char *js = src("tests/emulators/sdk/blob.mjs");
    run_checks("sdk/blob.mjs", (const char *const[]){"node", js, NULL}, 16);
    free(js);
}

/* Every body the emulator received so far (the self checks, Microsoft's examples, the SDK
 * run) serialized by the official SDK's own models; and bodies the SDK must refuse. */
static void t14_bodies_through_sdk_models(void)
{
    char *js = src("tests/emulators/sdk/validate_bodies.mjs");
    run_checks("sdk/validate_bodies.mjs", (const char *const[]){"node", js, NULL}, 20);
    char *bad = src("tests/emulators/sdk/bad_bodies.json");
    run_checks("sdk/validate_bodies.mjs --expect-invalid",
               (const char *const[]){"node", js, "--file", bad, "--expect-invalid", NULL}, 4);
    free(bad);
    /* the emulator's own answers (what the SDK run left: jobs, codes, environments,
     * datastores) fit the same models */
    run_checks("sdk/validate_bodies.mjs --responses",
               (const char *const[]){"node", js, "--responses", NULL}, 8);
    free(js);
}

/* The secret and the tokens never reach the emulator's log or the request log. */
static void t15_no_secrets_in_logs(void)
{
    CU_ASSERT_FATAL(fixture());
    char *hit = tl_tree_grep(FX.dir, FX.client_secret, strlen(FX.client_secret));
    /* the seed holds it only in the emulator's memory: no file in DIR has it */
    if (hit)
        fprintf(stderr, "secret found in %s\n", hit);
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
    char *elog = tl_path(FX.dir, "emulator.log");
    char *t = tl_read_file(elog);
    CU_ASSERT(t && !tl_contains(t, "emu.")); /* no access token printed */
    free(t);
    free(elog);
}

static void t16_stop_by_pid(void)
{
    CU_ASSERT_FATAL(fixture());
    /* a job whose process ignores SIGTERM is running: it must not outlive the emulator */
    char *py = src("tests/emulators/selftest.py");
    tl_result r = tl_exec((const char *const[]){"python3", py, "stubborn", NULL}, NULL,
                          (const char *const *)FX.env);
    free(py);
    TL_ASSERT_EXIT(r, 0);
    const char *p = strstr(r.out, "pids: ");
    int pid = p ? atoi(p + 6) : 0;
    CU_ASSERT(pid > 0 && kill(pid, 0) == 0);
    tl_result_free(&r);
    pid_t e = FX.emu_pid, a = FX.azurite_pid;
    azfix_stop(&FX);
    CU_ASSERT(kill(e, 0) != 0 && kill(a, 0) != 0);
    if (pid > 0) { /* the job's process: killed by the emulator on its way out (reaped by init) */
        int gone = 0;
        for (int i = 0; i < 100 && !gone; i++) {
            char stat[64], *t;
            snprintf(stat, sizeof stat, "/proc/%d/stat", pid);
            t = tl_read_file(stat);
            gone = !t || strstr(t, ") Z ") != NULL;
            free(t);
            if (!gone)
                usleep(20000);
        }
        CU_ASSERT(gone);
    }
    azfix_stop(&FX); /* idempotent */
    FX_ok = -1;
}

/* A seed renames the workspace; without Azurite the ARM side still works; the fixture reads
 * the names back from the emulator. */
static void t17_seed_no_azurite(void)
{
    azfix f2;
    azfix_opts o = {.seed = "{\"workspace_name\": \"ws-seeded\", \"resource_group\": \"rg-seeded\"}",
                    .no_azurite = 1, .lro_ms = 100};
    CU_ASSERT_EQUAL_FATAL(azfix_start(&f2, &o), 0);
    CU_ASSERT_STRING_EQUAL(f2.workspace_name, "ws-seeded");
    CU_ASSERT_STRING_EQUAL(f2.resource_group, "rg-seeded");
    CU_ASSERT(tl_contains(f2.workspace_id, "/resourceGroups/rg-seeded/providers/"
                                           "Microsoft.MachineLearningServices/workspaces/ws-seeded"));
    CU_ASSERT_PTR_NULL(f2.blob);
    CU_ASSERT_EQUAL(f2.azurite_pid, 0);
    char *cfg = tl_read_file(f2.config_json);
    CU_ASSERT(cfg && tl_contains(cfg, "\"ws-seeded\""));
    free(cfg);
    char *ctl = src("tests/emulators/emuctl.py");
    char *ok = NULL, *old = NULL;
    if (asprintf(&ok, "%s?api-version=2025-12-01", f2.workspace_id) < 0 ||
        asprintf(&old, "/subscriptions/%s/resourceGroups/rg-seeded/providers/"
                       "Microsoft.MachineLearningServices/workspaces/ws-ctarget?api-version=2025-12-01",
                 f2.subscription_id) < 0)
        abort();
    tl_result r = tl_exec((const char *const[]){"python3", ctl, "--dir", f2.dir, "--token", "GET", ok, NULL},
                          NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "\"ws-seeded\""));
    tl_result_free(&r);
    r = tl_exec((const char *const[]){"python3", ctl, "--dir", f2.dir, "--token", "GET", old, NULL}, NULL, NULL);
    CU_ASSERT_EQUAL(r.status, 1);
    CU_ASSERT(tl_contains(r.out, "ResourceNotFound"));
    tl_result_free(&r);
    free(ok);
    free(old);
    free(ctl);
    pid_t e = f2.emu_pid;
    azfix_stop(&f2);
    CU_ASSERT(kill(e, 0) != 0);
}

static void add_tests(CU_pSuite s)
{
    TL_ADD(s, t01_fixture_starts);
    TL_ADD(s, t02_fixture_api);
    TL_ADD(s, t03_self_aad);
    TL_ADD(s, t04_self_imds);
    TL_ADD(s, t05_self_arm);
    TL_ADD(s, t06_self_lro);
    TL_ADD(s, t07_self_faults);
    TL_ADD(s, t08_self_jobs);
    TL_ADD(s, t09_self_ci);
    TL_ADD(s, t09b_self_blob_proxy);
    TL_ADD(s, t10_blob_from_c);
    TL_ADD(s, t11_spec_examples);
    TL_ADD(s, t12_sdk_arm);
    TL_ADD(s, t13_sdk_blob);
    TL_ADD(s, t14_bodies_through_sdk_models);
    TL_ADD(s, t15_no_secrets_in_logs);
    TL_ADD(s, t16_stop_by_pid);
    TL_ADD(s, t17_seed_no_azurite);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_azemu", add_tests);
}
