/* The batch plugin end to end: the real ctarget command and core (steps through tests/steplib,
 * the core's step path) against the Azure emulator's Batch service (tests/emulators/
 * emu_svc_batch.py: ARM batchAccounts, a data plane whose tasks really run as local processes
 * after downloading their resource files from Azurite through the SAS URLs the plugin made).
 *
 * Every target authenticates as the emulator's service principal (client_secret=file:PATH,
 * outside the workspace), the storage key likewise; TLS is verified with the fixture's CA. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "run.h"
#include "steplib.h"
#include "testlib.h"
#include "ws.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})
/* Azurite's well-known account key (public; still never to be found in a workspace) */
#define AZURITE_KEY                                                                         \
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

static azfix FX;
static int FX_ok;
static char *SECRET_FILE, *BAD_SECRET_FILE, *KEY_FILE;
static char *CA_ENV;
static const char *CA_OVERRIDE; /* ct() with this CTARGET_CA_BUNDLE=... instead */
static char *WS;              /* the shared workspace: target "btmain" on account ctbatch */
static int bt_ok;

static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static tl_result ct(const char *ws, const char *const args[])
{
    const char *env[] = {CA_OVERRIDE ? CA_OVERRIDE : CA_ENV, "AZURE_CLIENT_SECRET=",
                         "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=", NULL};
    return tl_ctarget_run(ws, NULL, env, args);
}

/* compute VERB NAME --type batch + the fixture's settings + extra (NULL-terminated) */
static int NO_STORAGE; /* compute_add without storage_account/storage_key */
static const char *RG_OVERRIDE; /* compute_add with another resource group */
static tl_result compute_add(const char *ws, const char *verb, const char *name,
                             const char *account, const char *secret_file,
                             const char *const extra[])
{
    const char *argv[80];
    char *own[16];
    size_t n = 0, k = 0;
    argv[n++] = "compute";
    argv[n++] = verb;
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = "batch";
#define SET(...) (argv[n++] = "--set", argv[n++] = own[k++] = fmt(__VA_ARGS__))
    SET("account_name=%s", account ? account : "ctbatch");
    SET("resource_group=%s", RG_OVERRIDE ? RG_OVERRIDE : FX.resource_group);
    SET("subscription_id=%s", FX.subscription_id);
    SET("arm_endpoint=%s", FX.arm);
    SET("aad_endpoint=%s", FX.aad);
    SET("tenant_id=%s", FX.tenant_id);
    SET("client_id=%s", FX.client_id);
    SET("client_secret=file:%s", secret_file ? secret_file : SECRET_FILE);
    SET("storage_endpoint=%s", FX.blob);
    if (!NO_STORAGE) {
        SET("storage_account=devstoreaccount1");
        SET("storage_key=file:%s", KEY_FILE);
    }
#undef SET
    for (size_t i = 0; extra && extra[i] && n < 78; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    tl_result r = ct(ws, argv);
    for (size_t i = 0; i < k; i++)
        free(own[i]);
    return r;
}

static json_t *out_json(const tl_result *r)
{
    json_t *j = json_loads(r->out ? r->out : "", 0, NULL);
    if (!j)
        tl_dump("not JSON", r);
    return j;
}

static json_t *show_run(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "show", id, "-o", "json"));
    json_t *j = r.status == 0 ? out_json(&r) : NULL;
    tl_result_free(&r);
    return j;
}

static char *run_logs(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "logs", id));
    char *s = r.out ? r.out : strdup("");
    r.out = NULL;
    tl_result_free(&r);
    return s;
}

static int wait_run(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "wait", id, "--timeout", "60"));
    int st = r.status;
    tl_result_free(&r);
    return st;
}

/* bounded polling of `run logs` for needle */
static int wait_log(const char *ws, const char *id, const char *needle, long ms)
{
    long long end = tl_now_ms() + ms;
    while (tl_now_ms() < end) {
        char *l = run_logs(ws, id);
        int hit = tl_contains(l, needle);
        free(l);
        if (hit)
            return 1;
        usleep(100 * 1000);
    }
    return 0;
}

static const char *shared_ws(void)
{
    if (WS || !FX_ok)
        return WS;
    WS = tl_tmpdir("btws");
    tl_result r = compute_add(WS, "attach", "btmain", NULL, NULL, A("--set", "pool_id=ctpool"));
    TL_ASSERT_EXIT(r, 0);
    bt_ok = r.status == 0;
    tl_result_free(&r);
    return WS;
}

static char *source_dir(const char *tag, const char *script, const char *text, int mode)
{
    char *src = tl_tmpdir(tag);
    char *p = tl_path(src, script);
    CU_ASSERT_EQUAL(tl_write_file(p, text), 0);
    chmod(p, (mode_t)mode);
    free(p);
    return src;
}

static char *step(const char *ws, const char *src, const char *script, const char *const args[],
                  const char *const env[], const char *json)
{
    char err[1024];
    char *id = sl_step_submit(ws, "btmain", src, script, args, env, "batch", json, err, sizeof err);
    if (!id)
        printf("step refused: %s\n", err);
    return id;
}

static char *lower_job(const char *id)
{
    char *j = fmt("ctarget-%s", id);
    for (char *p = j; *p; p++)
        *p = (char)(isalnum((unsigned char)*p) || *p == '-' || *p == '_' ? tolower((unsigned char)*p)
                                                                         : '-');
    return j;
}

/* the emulator's record of a Batch job (owned), or NULL */
static json_t *emu_job(const char *id)
{
    json_t *st = azfix_state(&FX);
    char *jid = lower_job(id);
    json_t *j = json_object_get(json_object_get(json_object_get(st, "batch"), "jobs"), jid);
    json_incref(j);
    free(jid);
    json_decref(st);
    return j;
}

/* ---- compute: attach, refusals, status, detach ------------------------------------------- */

static void t01_attach(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    tl_result r = ct(ws, A("compute", "show", "btmain", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "account_url"));
    CU_ASSERT(tl_contains(r.out, "https://127.0.0.1:"));
    tl_result_free(&r);
    r = ct(ws, A("compute", "status", "btmain", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Succeeded"));
    CU_ASSERT(tl_contains(r.out, "ctpool"));
    tl_result_free(&r);
    /* the data plane was called with a Batch token: GET /pools on the batch server */
    json_t *reqs = azfix_requests(&FX);
    size_t i, n = 0;
    json_t *q;
    json_array_foreach(reqs, i, q) n += !strcmp(jstr(q, "server"), "batch") &&
                                        !strcmp(jstr(q, "path"), "/pools") &&
                                        json_integer_value(json_object_get(q, "status")) == 200;
    CU_ASSERT(n >= 1);
    json_decref(reqs);
}

static void t02_attach_bad_credentials(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws2");
    tl_result r = compute_add(ws, "attach", "badcred", NULL, BAD_SECRET_FILE, NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    printf("t02_attach_bad_credentials: %s", r.err ? r.err : "");
    CU_ASSERT(tl_contains(r.err, "AADSTS7000215") || tl_contains(r.err, "secret"));
    CU_ASSERT(!tl_contains(r.err, "not-the-secret"));
    tl_result_free(&r);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "badcred"));
    tl_result_free(&r);
    free(ws);
}

static void t03_attach_unknown_account(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws3");
    tl_result r = compute_add(ws, "attach", "nosuch", "nosuchacct", NULL, NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    printf("t03_attach_unknown_account: %s", r.err ? r.err : "");
    CU_ASSERT(tl_contains(r.err, "nosuchacct"));
    CU_ASSERT(tl_contains(r.err, "ResourceNotFound") || tl_contains(r.err, "not found"));
    tl_result_free(&r);
    free(ws);
}

static void t03b_unknown_resource_group(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws3b");
    RG_OVERRIDE = "rg-nosuch";
    tl_result r = compute_add(ws, "attach", "norg", NULL, NULL, NULL);
    RG_OVERRIDE = NULL;
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "rg-nosuch"));
    CU_ASSERT(tl_contains(r.err, "ResourceGroupNotFound"));
    tl_result_free(&r);
    free(ws);
}

/* TLS is verified: without the fixture's CA the emulator's certificate is refused */
static void t03c_tls_verified(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws3c");
    CA_OVERRIDE = "CTARGET_CA_BUNDLE=";
    tl_result r = compute_add(ws, "attach", "notls", NULL, NULL, NULL);
    CA_OVERRIDE = NULL;
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    printf("t03c: %s", r.err ? r.err : "");
    CU_ASSERT(tl_contains(r.err, "certificate") || tl_contains(r.err, "TLS") ||
              tl_contains(r.err, "verif"));
    tl_result_free(&r);
    free(ws);
}

static void t04_double_attach_refused(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    tl_result r = compute_add(ws, "attach", "btsecond", NULL, NULL, NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    printf("t04_double_attach_refused: %s", r.err ? r.err : "");
    CU_ASSERT(tl_contains(r.err, "btmain"));
    tl_result_free(&r);
}

static void t05_create_refused(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws5");
    tl_result r = compute_add(ws, "create", "newbatch", NULL, NULL, NULL);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    printf("t05_create_refused: %s", r.err ? r.err : "");
    CU_ASSERT(tl_contains(r.err, "cannot be created"));
    tl_result_free(&r);
    free(ws);
}

static void t06_plain_run_refused(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = source_dir("btsrc6", "s.py", "print('hi')\n", 0644);
    tl_result r = ct(ws, A("run", "submit", "--target", "btmain", "--source", src, "--script", "s.py"));
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    printf("t06_plain_run_refused: %s", r.err ? r.err : "");
    CU_ASSERT(tl_contains(r.err, "pipeline"));
    tl_result_free(&r);
    free(src);
}

static void t07_detach(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws7");
    tl_result r = compute_add(ws, "attach", "gone", NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(ws, A("compute", "detach", "gone"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "\"gone\""));
    tl_result_free(&r);
    /* the account is still there for the next attach, here with account_url given */
    char *url = fmt("account_url=https://127.0.0.1:%d/", azfix_service_port(&FX, "batch"));
    r = compute_add(ws, "attach", "again", NULL, NULL, A("--set", url));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(ws, A("compute", "show", "again", "-o", "json"));
    char *want = fmt("https://127.0.0.1:%d\"", azfix_service_port(&FX, "batch"));
    CU_ASSERT(tl_contains(r.out, want));
    tl_result_free(&r);
    free(want);
    free(url);
    /* an account_url that is not https is refused before anything is sent */
    char *ws2 = tl_tmpdir("btws7b");
    r = compute_add(ws2, "attach", "plainhttp", NULL, NULL,
                    A("--set", "account_url=http://127.0.0.1:1"));
    CU_ASSERT_EQUAL(r.status, 3);
    CU_ASSERT(tl_contains(r.err, "not an https URL"));
    tl_result_free(&r);
    free(ws2);
    free(ws);
}

/* ---- steps -------------------------------------------------------------------------------- */

static const char STEP_PY[] =
    "import json, os, sys\n"
    "inp = os.environ['CTARGET_INPUT_DATA']\n"
    "out = os.environ['CTARGET_OUTPUT_RESULT']\n"
    "data = open(os.path.join(inp, 'in.txt')).read()\n"
    "print('step read %d bytes' % len(data), flush=True)\n"
    "print('args', ' '.join(sys.argv[1:]))\n"
    "print('outputs dir ok', os.environ['CTARGET_OUTPUTS_DIR'] == os.path.join(os.getcwd(), 'outputs'))\n"
    "print('run id', os.environ['CTARGET_RUN_ID'])\n"
    "sys.stderr.write('to stderr\\n')\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'r.txt'), 'w').write(data.upper())\n"
    "os.makedirs('logs', exist_ok=True)\n"
    "open('logs/extra.log', 'w').write('log line\\n')\n"
    "open(os.environ['CTARGET_METRICS_FILE'], 'a').write(json.dumps({'name': 'acc', 'value': 0.5, 'step': 1}) + '\\n')\n";

static char *step_source(const char *tag)
{
    char *src = source_dir(tag, "step.py", STEP_PY, 0644);
    char *d = tl_path(src, "inputs");
    mkdir(d, 0755);
    char *d2 = tl_path(d, "data");
    mkdir(d2, 0755);
    char *f = tl_path(d2, "in.txt");
    CU_ASSERT_EQUAL(tl_write_file(f, "hello batch\n"), 0);
    free(f);
    free(d2);
    free(d);
    return src;
}

static const char *const STEP_ENV[] = {"CTARGET_INPUT_DATA=inputs/data",
                                       "CTARGET_OUTPUT_RESULT=outputs/result", NULL};

static void t10_step_completes(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = step_source("btsrc10");
    char *id = step(ws, src, "step.py", A("a", "b c"), STEP_ENV, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    json_t *h = json_object_get(j, "handle");
    CU_ASSERT_STRING_EQUAL(jstr(h, "pool_id"), "ctpool");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(h, "snapshot_files")), 2);
    json_decref(j);
    char *logs = run_logs(ws, id);
    CU_ASSERT(tl_contains(logs, "step read 12 bytes"));
    CU_ASSERT(tl_contains(logs, "args a b c"));
    CU_ASSERT(tl_contains(logs, "outputs dir ok True"));
    CU_ASSERT(tl_contains(logs, "to stderr"));
    char *rid = fmt("run id %s", id);
    CU_ASSERT(tl_contains(logs, rid));
    if (!tl_contains(logs, "step read"))
        printf("logs: %s\n", logs);
    free(rid);
    free(logs);
    char *rel = fmt("runs/%s/outputs/result/r.txt", id);
    char *p = tl_path(ws, rel);
    char *got = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(got ? got : "", "HELLO BATCH\n");
    free(got);
    free(p);
    free(rel);
    rel = fmt("runs/%s/logs/extra.log", id);
    p = tl_path(ws, rel);
    got = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(got ? got : "", "log line\n");
    free(got);
    free(p);
    free(rel);
    /* the outputs listing came in pages (4 entries under wd/outputs, pages of 2) */
    CU_ASSERT(azfix_count(&FX, "GET", "/files$") >= 2);
    json_t *reqs = azfix_requests(&FX);
    size_t ri, paged = 0;
    json_t *rq;
    json_array_foreach(reqs, ri, rq) paged += tl_contains(jstr(rq, "path"), "/files") &&
                                             tl_contains(jstr(rq, "query"), "skiptoken");
    CU_ASSERT(paged >= 1);
    json_decref(reqs);
    /* metrics came through */
    tl_result r = ct(ws, A("run", "show", id, "-o", "json"));
    CU_ASSERT(tl_contains(r.out, "acc"));
    tl_result_free(&r);
    /* delete_job_after_finish (default true): the job is gone from the service */
    json_t *ej = emu_job(id);
    CU_ASSERT_PTR_NULL(ej);
    json_decref(ej);

    /* the same sources again: every content blob is there already, nothing is uploaded */
    char *id2 = step(ws, src, "step.py", NULL, STEP_ENV, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id2);
    CU_ASSERT_EQUAL(wait_run(ws, id2), 0);
    j = show_run(ws, id2);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "handle"),
                                                       "uploaded_blobs")), 0);
    json_decref(j);
    free(id2);
    free(id);
    free(src);
}

static void t11_failing_executable(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = source_dir("btsrc11", "fail.sh", "#!/bin/sh\necho failing now\nexit 3\n", 0755);
    char *id = step(ws, src, "fail.sh", NULL, NULL, "{\"executable_kind\":\"binary\"}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "exited with code 3"));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    char *logs = run_logs(ws, id);
    CU_ASSERT(tl_contains(logs, "failing now"));
    free(logs);
    free(id);
    free(src);
}

static void t12_service_fails_task(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"batch\",\"action\":\"fail_task\","
                                     "\"path\":\"/tasks/main$\",\"code\":\"TaskFailedOnService\","
                                     "\"message\":\"The node could not start the task (emulated)\"}"),
                    0);
    char *src = source_dir("btsrc12", "s.py", "print('never')\n", 0644);
    char *id = step(ws, src, "s.py", NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "TaskFailedOnService"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "could not start the task (emulated)"));
    json_decref(j);
    free(id);
    free(src);
}

static void t13_cancel(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = source_dir("btsrc13", "long.py",
                           "import time\nprint('up', flush=True)\ntime.sleep(120)\n", 0644);
    char *id = step(ws, src, "long.py", NULL, NULL, "{\"delete_job_after_finish\":false}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(wait_log(ws, id, "up", 30000));
    json_t *ej = emu_job(id);
    json_t *task = json_object_get(json_object_get(ej, "tasks"), "main");
    long long pid = json_integer_value(json_object_get(task, "pid"));
    CU_ASSERT(json_is_true(json_object_get(task, "running")));
    CU_ASSERT(pid > 0);
    json_decref(ej);
    tl_result r = ct(ws, A("run", "cancel", id));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    wait_run(ws, id);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Canceled");
    json_decref(j);
    /* nothing left running: the task completed, its process group gone */
    ej = emu_job(id);
    task = json_object_get(json_object_get(ej, "tasks"), "main");
    CU_ASSERT_STRING_EQUAL(jstr(task, "state"), "completed");
    /* delete_job_after_finish false: the job is kept, terminated by cleanup (no quota held);
     * cleanup may still be under way when `run wait` returns: polled, bounded */
    int done = 0;
    for (int i = 0; i < 100 && !done; i++) {
        json_t *x = emu_job(id);
        done = !strcmp(jstr(x, "state"), "completed");
        json_decref(x);
        if (!done)
            usleep(50 * 1000);
    }
    CU_ASSERT(done);
    CU_ASSERT(json_is_false(json_object_get(task, "running")));
    json_decref(ej);
    int gone = 0;
    for (int i = 0; i < 100 && !gone; i++) {
        gone = pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
        if (!gone)
            usleep(50 * 1000);
    }
    CU_ASSERT(gone);
    free(id);
    free(src);
}

static void t14_429_and_500_retried(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    azfix_reset(&FX);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"batch\",\"method\":\"POST\",\"path\":\"^/jobs$\","
                                     "\"status\":500,\"count\":1}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"batch\",\"method\":\"GET\","
                                     "\"path\":\"/tasks/main$\",\"status\":429,"
                                     "\"retry_after\":1,\"count\":2}"), 0);
    char *src = source_dir("btsrc14", "s.py", "print('through the storm')\n", 0644);
    char *id = step(ws, src, "s.py", NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    json_decref(j);
    json_t *reqs = azfix_requests(&FX);
    size_t i, n429 = 0, n500 = 0;
    json_t *q;
    json_array_foreach(reqs, i, q) {
        if (strcmp(jstr(q, "server"), "batch") || !json_object_get(q, "fault"))
            continue;
        long long st = json_integer_value(json_object_get(q, "status"));
        n429 += st == 429;
        n500 += st == 500;
    }
    CU_ASSERT_EQUAL(n429, 2);
    CU_ASSERT_EQUAL(n500, 1);
    json_decref(reqs);
    char *logs = run_logs(ws, id);
    CU_ASSERT(tl_contains(logs, "through the storm"));
    free(logs);
    free(id);
    free(src);
}

static void t15_preempted_node_restarts(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"batch\",\"action\":\"node_preempted\","
                                     "\"path\":\"/tasks/main$\",\"count\":1}"), 0);
    char *src = source_dir("btsrc15", "p.py",
                           "import os, time\nprint('attempt starts', flush=True)\ntime.sleep(0.3)\n"
                           "os.makedirs('outputs', exist_ok=True)\n"
                           "open('outputs/done.txt', 'w').write('done')\nprint('finished')\n",
                           0644);
    char *id = step(ws, src, "p.py", NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "attempt")), 2);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(j, "handle"), "task_id"), "main-a2");
    json_decref(j);
    char *logs = run_logs(ws, id);
    CU_ASSERT(tl_contains(logs, "finished"));
    free(logs);
    char *rel = fmt("runs/%s/outputs/done.txt", id);
    char *p = tl_path(ws, rel);
    char *got = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(got ? got : "", "done");
    free(got);
    free(p);
    free(rel);
    free(id);
    free(src);
}

static void t16_created_pool(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    const char *cp = "{\"create_pool\":{\"vm_size\":\"STANDARD_D2_V2\",\"image\":{\"publisher\":"
                     "\"canonical\",\"offer\":\"ubuntu-24_04-lts\",\"sku\":\"server\"},"
                     "\"node_agent_sku_id\":\"batch.node.ubuntu 24.04\","
                     "\"target_dedicated_nodes\":1},\"delete_pool_after_finish\":true}";
    char *src = source_dir("btsrc16", "s.py", "print('on my own pool')\n", 0644);
    char *id = step(ws, src, "s.py", NULL, NULL, cp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    char *pool = strdup(jstr(json_object_get(j, "handle"), "pool_id"));
    CU_ASSERT(!strncmp(pool, "ctarget-pool-", 13));
    json_decref(j);
    /* deleted after the step: gone or deleting */
    json_t *st = azfix_state(&FX);
    json_t *pl = json_object_get(json_object_get(json_object_get(st, "batch"), "pools"), pool);
    CU_ASSERT(!pl || !strcmp(jstr(pl, "state"), "deleting"));
    json_decref(st);
    free(pool);
    free(id);

    /* a pool that cannot get its nodes fails the step with the service's resize error */
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"batch\",\"action\":\"pool_resize_error\","
                                     "\"path\":\"/pools/ctarget-pool-\",\"code\":\"AllocationFailed\","
                                     "\"message\":\"No capacity for STANDARD_D2_V2 (emulated)\"}"),
                    0);
    id = step(ws, src, "s.py", NULL, NULL, cp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(ws, id), 0);
    j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "AllocationFailed"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "No capacity"));
    printf("reason: %s\n", jstr(j, "reason"));
    /* delete_pool_after_finish: the useless pool was not left behind */
    pool = strdup(jstr(json_object_get(j, "handle"), "pool_id"));
    st = azfix_state(&FX);
    pl = json_object_get(json_object_get(json_object_get(st, "batch"), "pools"), pool);
    CU_ASSERT(*pool && (!pl || !strcmp(jstr(pl, "state"), "deleting")));
    json_decref(st);
    free(pool);
    json_decref(j);
    free(id);
    free(src);
}

static void t17_bad_step_keys(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = source_dir("btsrc17", "s.py", "print('x')\n", 0644);
    struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"pool\":\"x\"}", "'pool'"},
        {"{\"delete_job_after_finish\":\"yes\"}", "delete_job_after_finish"},
        {"{\"executable_kind\":\"jar\"}", "executable_kind"},
        {"{\"create_pool\":{\"vm_size\":\"S\"}}", "create_pool"},
        {"{\"pool_id\":\"nosuchpool\"}", "nosuchpool"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[1024];
        char *id = sl_step_submit(ws, "btmain", src, "s.py", NULL, NULL, "batch", cases[i].json, err,
                                  sizeof err);
        const char *msg = err;
        json_t *j = NULL;
        if (id) {
            CU_ASSERT_NOT_EQUAL(wait_run(ws, id), 0);
            j = show_run(ws, id);
            CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
            msg = jstr(j, "reason");
        }
        CU_ASSERT(tl_contains(msg, cases[i].needle));
        printf("case %s: %s\n", cases[i].json, msg);
        json_decref(j);
        free(id);
    }
    free(src);
}

/* A step with a docker environment through the core's step path (as tests/steplib, plus the
 * environment): the plugin refuses it in prepare, saying what to do instead. */
static void t17b_environment_refused(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = source_dir("btsrc17b", "s.py", "print('x')\n", 0644);
    setenv("CTARGET_MONITOR_PROGRAM", tl_ctarget(), 1);
    ctarget_ws *w = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ctarget_ws_open(ws, &w, &err), 0);
    json_t *c = json_pack("{s:s, s:s, s:s, s:[], s:{s:s}, s:s}", "target", "btmain",
                          "source_directory", src, "script", "s.py", "arguments", "environment",
                          "docker_image", "python:3.12-slim", "experiment", "steps");
    json_t *extra = json_pack("{s:{s:s, s:s, s:s, s:{}}}", "pipeline_step", "pipeline_id",
                              "steplib", "step_name", "step", "step_type", "batch", "step");
    run_sub x = {.need_caps = CTARGET_CAP_PIPELINE_STEP, .extra = extra};
    char *out = NULL;
    int rc = run_submit_config(w, c, &x, &out, &err);
    char *id = NULL;
    if (!rc) {
        json_t *j = json_loads(out, 0, NULL);
        id = strdup(jstr(j, "id"));
        json_decref(j);
    }
    free(out);
    json_decref(extra);
    json_decref(c);
    ctarget_ws_close(w);
    const char *msg = err.message;
    json_t *j = NULL;
    if (id) {
        CU_ASSERT_NOT_EQUAL(wait_run(ws, id), 0);
        j = show_run(ws, id);
        CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
        msg = jstr(j, "reason");
    }
    printf("docker step: %s\n", msg);
    CU_ASSERT(tl_contains(msg, "docker environment cannot be built"));
    CU_ASSERT(tl_contains(msg, "custom image or a start task"));
    json_decref(j);
    free(id);
    free(src);
}

/* a snapshot of 2601 files: one blob (same content) checked and uploaded once, but as resource
 * files of one task more than Batch's 1 MB request limit: refused with what to do */
static void t17c_too_many_files(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    long long t0 = tl_now_ms();
    char *src = source_dir("btsrc17c", "s.py", "print('x')\n", 0644);
    char *d = tl_path(src, "many");
    mkdir(d, 0755);
    for (int i = 0; i < 2600; i++) {
        char n[128];
        snprintf(n, sizeof n, "a-file-with-a-long-name-so-that-the-resource-file-list-passes-"
                              "one-megabyte-%04d.txt", i);
        char *p = tl_path(d, n);
        tl_write_file(p, "same\n");
        free(p);
    }
    azfix_reset(&FX);
    /* (the core's own snapshot limit is 2000 files by default, under Batch's: raised here) */
    setenv("CTARGET_SNAPSHOT_MAX_FILES", "5000", 1);
    char *id = step(ws, src, "s.py", NULL, NULL, NULL);
    unsetenv("CTARGET_SNAPSHOT_MAX_FILES");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    printf("many files: %s\n", jstr(j, "reason"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "2601 files"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "1 MB"));
    /* 2601 files, at most 2 distinct contents uploaded (s.py and the one the others share) */
    json_t *h = json_object_get(j, "handle");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(h, "snapshot_files")), 2601);
    CU_ASSERT(json_integer_value(json_object_get(h, "uploaded_blobs")) <= 2);
    /* nothing was sent that Batch would refuse */
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/tasks$"), 0);
    printf("(%lld ms)\n", tl_now_ms() - t0);
    json_decref(j);
    free(id);
    free(d);
    free(src);
}

/* the run monitor killed mid-run: its replacement reattaches from the handle, one task only,
 * the log whole and in order */
static const char NUMBERED[] =
    "import time\n"
    "for i in range(40):\n"
    "    print('line %02d of the numbered run' % i, flush=True)\n"
    "    time.sleep(0.04)\n";

static void t18_monitor_killed(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    char *src = source_dir("btsrc18", "numbered.py", NUMBERED, 0644);
    char *id = step(ws, src, "numbered.py", NULL, NULL, "{\"delete_job_after_finish\":false}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(wait_log(ws, id, "line 03", 30000));
    json_t *j = show_run(ws, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT(pid > 1);
    if (pid > 1) {
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
            usleep(10 * 1000);
    }
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *log = run_logs(ws, id);
    char want[40 * 40] = "";
    for (int i = 0; i < 40; i++)
        sprintf(want + strlen(want), "line %02d of the numbered run\n", i);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    json_t *ej = emu_job(id);
    CU_ASSERT_EQUAL(json_object_size(json_object_get(ej, "tasks")), 1);
    json_decref(ej);
    free(id);
    free(src);
}

/* ---- secrets, the official examples, the official client ---------------------------------- */

static void grep_dir_for(const char *dir, const char *needle)
{
    char *hit = tl_tree_grep(dir, needle, strlen(needle));
    if (hit)
        printf("secret-like '%.8s...' found in %s\n", needle, hit);
    CU_ASSERT(hit == NULL);
    free(hit);
}

/* no storage settings: the Batch account's auto-storage (its key through ARM listKeys) */
static void t19_auto_storage(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws19");
    NO_STORAGE = 1;
    tl_result r = compute_add(ws, "attach", "btauto", NULL, NULL, A("--set", "pool_id=ctpool"));
    NO_STORAGE = 0;
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src = step_source("btsrc19");
    char err[1024];
    char *id = sl_step_submit(ws, "btauto", src, "step.py", NULL, STEP_ENV, "batch", NULL, err,
                              sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    if (strcmp(jstr(j, "status"), "Completed"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/Microsoft\\.Storage/storageAccounts/devstoreaccount1/listKeys$") > 0, 1);
    char *rel = fmt("runs/%s/outputs/result/r.txt", id);
    char *p = tl_path(ws, rel);
    char *got = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(got ? got : "", "HELLO BATCH\n");
    free(got);
    free(p);
    free(rel);
    grep_dir_for(ws, AZURITE_KEY);
    grep_dir_for(ws, "sig=");
    free(id);
    free(src);
    free(ws);
}

/* storage_sas instead of the key: a container SAS (racwl) made with the emulator's own signer;
 * a wrong one fails the step with the storage service's refusal */
static void t19b_storage_sas(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("btws19b");
    char *code = fmt("import sys; sys.path.insert(0, '%s/tests/emulators'); import emu_blob; "
                     "print(emu_blob.Blob('%s', 'devstoreaccount1', '%s', '%s')"
                     ".container_sas('ctarget', 'racwl'))",
                     tl_srcdir(), FX.blob, AZURITE_KEY, FX.ca_bundle);
    const char *argv[] = {"python3", "-c", code, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *sas = strdup(r.out ? r.out : "");
    sas[strcspn(sas, "\n")] = '\0';
    tl_result_free(&r);
    free(code);
    CU_ASSERT_FATAL(tl_contains(sas, "sig="));
    char *dir = tl_tmpdir("btsas");
    char *good = tl_path(dir, "sas"), *bad = tl_path(dir, "badsas");
    tl_write_file(good, sas);
    char *wrong = strdup(sas);
    char *sig = strstr(wrong, "sig=");
    sig[4] = sig[4] == 'A' ? 'B' : 'A';
    tl_write_file(bad, wrong);
    char *set_good = fmt("storage_sas=file:%s", good), *set_bad = fmt("storage_sas=file:%s", bad);
    NO_STORAGE = 1;
    r = compute_add(ws, "attach", "btsas", NULL, NULL,
                    A("--set", "pool_id=ctpool", "--set", "storage_account=devstoreaccount1",
                      "--set", set_good));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    NO_STORAGE = 0;
    char *src = step_source("btsrc19b");
    char err[1024];
    char *id = sl_step_submit(ws, "btsas", src, "step.py", NULL, STEP_ENV, "batch", NULL, err,
                              sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(ws, id), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    if (strcmp(jstr(j, "status"), "Completed"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    char *rel = fmt("runs/%s/outputs/result/r.txt", id);
    char *p = tl_path(ws, rel);
    char *got = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(got ? got : "", "HELLO BATCH\n");
    free(got);
    free(p);
    free(rel);
    free(id);
    /* the wrong SAS: a target of its own in another workspace */
    char *ws2 = tl_tmpdir("btws19c");
    NO_STORAGE = 1;
    r = compute_add(ws2, "attach", "btbadsas", NULL, NULL,
                    A("--set", "pool_id=ctpool", "--set", "storage_account=devstoreaccount1",
                      "--set", set_bad));
    NO_STORAGE = 0;
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src2 = source_dir("btsrc19c", "other.py", "print('other content')\n", 0644);
    id = sl_step_submit(ws2, "btbadsas", src2, "other.py", NULL, NULL, "batch", NULL, err,
                        sizeof err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(ws2, id), 0);
    j = show_run(ws2, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    printf("bad sas: %s\n", jstr(j, "reason"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "403"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "storage_sas grants racwl"));
    CU_ASSERT(!tl_contains(jstr(j, "reason"), sig));
    json_decref(j);
    grep_dir_for(ws, "sig=");
    grep_dir_for(ws2, "sig=");
    free(id);
    free(src2);
    free(ws2);
    free(src);
    free(set_good);
    free(set_bad);
    free(wrong);
    free(good);
    free(bad);
    free(dir);
    free(sas);
    free(ws);
}

static void t20_secrets_nowhere(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && bt_ok);
    grep_dir_for(ws, FX.client_secret);
    grep_dir_for(ws, AZURITE_KEY);
    grep_dir_for(ws, "sig=");
    grep_dir_for(ws, "Bearer ");
    grep_dir_for(ws, "emu.");
    tl_result r = ct(ws, A("compute", "show", "btmain", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, FX.client_secret) && !tl_contains(r.out, AZURITE_KEY));
    tl_result_free(&r);
}

static char **env_with_batch(void)
{
    size_t n = 0;
    while (FX.env[n])
        n++;
    char **e = calloc(n + 2, sizeof *e);
    for (size_t i = 0; i < n; i++)
        e[i] = FX.env[i];
    e[n] = fmt("AZFIX_BATCH_URL=https://127.0.0.1:%d", azfix_service_port(&FX, "batch"));
    return e;
}

static void t21_examples_replayed(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *script = fmt("%s/tests/emulators/batch_replay.py", tl_srcdir());
    const char *argv[] = {"python3", script, "--dir", FX.dir, NULL};
    char **e = env_with_batch();
    tl_result r = tl_exec(argv, NULL, (const char *const *)e);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "ok - Pools_CreatePool"));
    CU_ASSERT(!tl_contains(r.out, "not ok"));
    if (tl_contains(r.out, "not ok"))
        tl_dump("batch_replay.py", &r);
    tl_result_free(&r);
    size_t n = 0;
    while (e[n])
        n++;
    free(e[n - 1]);
    free(e);
    free(script);
}

static void t22_official_client(void)
{
    CU_ASSERT_FATAL(FX_ok);
    CU_ASSERT_FATAL(azfix_node_modules() != NULL);
    char *script = fmt("%s/tests/emulators/sdk/batch.mjs", tl_srcdir());
    const char *argv[] = {"node", script, NULL};
    char **e = env_with_batch();
    tl_result r = tl_exec(argv, NULL, (const char *const *)e);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "ok - task.get: completed"));
    CU_ASSERT(!tl_contains(r.out, "not ok"));
    if (tl_contains(r.out, "not ok") || r.status)
        tl_dump("sdk/batch.mjs", &r);
    tl_result_free(&r);
    size_t n = 0;
    while (e[n])
        n++;
    free(e[n - 1]);
    free(e);
    free(script);
}

static void t23_nothing_left_running(void)
{
    CU_ASSERT_FATAL(FX_ok);
    json_t *st = azfix_state(&FX);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(st, "batch"), "running")), 0);
    json_decref(st);
    /* every body sent to the Batch service since t14's reset (the plugin's, the official
     * client's, the examples') had the documented shape, but the one meant to be refused */
    json_t *reqs = azfix_requests(&FX);
    size_t i, bad = 0, batch = 0;
    json_t *q;
    json_array_foreach(reqs, i, q) {
        if (strcmp(jstr(q, "server"), "batch"))
            continue;
        batch++;
        json_t *inv = json_object_get(q, "invalid");
        if (inv && !tl_contains(json_string_value(inv), "bogusProperty")) {
            bad++;
            printf("invalid body: %s %s: %s\n", jstr(q, "method"), jstr(q, "path"),
                   json_string_value(inv));
        }
    }
    CU_ASSERT(batch > 20);
    CU_ASSERT_EQUAL(bad, 0);
    json_decref(reqs);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void add(CU_pSuite s)
{
    char *pp = fmt("%s/plugins/batch/.libs%s%s", tl_builddir(),
                   getenv("CTARGET_PLUGIN_PATH") ? ":" : "",
                   getenv("CTARGET_PLUGIN_PATH") ? getenv("CTARGET_PLUGIN_PATH") : "");
    setenv("CTARGET_PLUGIN_PATH", pp, 1);
    free(pp);
    azfix_opts o = {.lro_ms = 200, .job_phase_ms = 50};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (!FX_ok) {
        fprintf(stderr, "test_batch: the Azure emulator fixture did not start\n");
    } else {
        CA_ENV = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
        /* the run monitors sl_step_submit starts inherit this process's environment */
        setenv("CTARGET_CA_BUNDLE", FX.ca_bundle, 1);
        unsetenv("AZURE_CLIENT_SECRET");
        char *dir = tl_tmpdir("btsecret");
        SECRET_FILE = tl_path(dir, "sp-secret");
        BAD_SECRET_FILE = tl_path(dir, "sp-wrong");
        KEY_FILE = tl_path(dir, "storage-key");
        tl_write_file(SECRET_FILE, FX.client_secret);
        tl_write_file(BAD_SECRET_FILE, "not-the-secret");
        tl_write_file(KEY_FILE, AZURITE_KEY);
        chmod(SECRET_FILE, 0600);
        chmod(KEY_FILE, 0600);
        free(dir);
        /* lists in pages of 2: every listing follows odata.nextLink */
        azfix_config(&FX, "{\"batch_pool_alloc_ms\":200,\"batch_page_size\":2}");
    }
    TL_ADD(s, t01_attach);
    TL_ADD(s, t02_attach_bad_credentials);
    TL_ADD(s, t03_attach_unknown_account);
    TL_ADD(s, t03b_unknown_resource_group);
    TL_ADD(s, t03c_tls_verified);
    TL_ADD(s, t04_double_attach_refused);
    TL_ADD(s, t05_create_refused);
    TL_ADD(s, t06_plain_run_refused);
    TL_ADD(s, t07_detach);
    TL_ADD(s, t10_step_completes);
    TL_ADD(s, t11_failing_executable);
    TL_ADD(s, t12_service_fails_task);
    TL_ADD(s, t13_cancel);
    TL_ADD(s, t14_429_and_500_retried);
    TL_ADD(s, t15_preempted_node_restarts);
    TL_ADD(s, t16_created_pool);
    TL_ADD(s, t17_bad_step_keys);
    TL_ADD(s, t17b_environment_refused);
    TL_ADD(s, t17c_too_many_files);
    TL_ADD(s, t18_monitor_killed);
    TL_ADD(s, t19_auto_storage);
    TL_ADD(s, t19b_storage_sas);
    TL_ADD(s, t20_secrets_nowhere);
    TL_ADD(s, t21_examples_replayed);
    TL_ADD(s, t22_official_client);
    TL_ADD(s, t23_nothing_left_running);
}

/* Scratch directories under the build tree, not /tmp: other programs on a shared machine may
 * sweep /tmp/ctarget-* while this one runs.  Removed (empty) at exit, after testlib's. */
static char *SCRATCH;
static void scratch_rmdir(void)
{
    if (SCRATCH)
        rmdir(SCRATCH);
}

int main(int argc, char **argv)
{
    const char *bd = getenv("CTARGET_TEST_BUILDDIR");
    if (bd && *bd && !getenv("CTARGET_TEST_KEEP")) {
        SCRATCH = fmt("%s/tests/test_batch.scratch", bd);
        if (mkdir(SCRATCH, 0700) == 0 || errno == EEXIST) {
            setenv("TMPDIR", SCRATCH, 1);
            atexit(scratch_rmdir);
        }
    }
    return tl_main(argc, argv, "test_batch", add);
}
