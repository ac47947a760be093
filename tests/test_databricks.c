/* The databricks plugin end to end: the real ctarget command, the core's step path
 * (tests/steplib) and the plugin against the Azure emulator's Microsoft.Databricks service
 * (tests/emulators/emu_svc_databricks.py: ARM workspace GET, a data plane with DBFS and Jobs
 * 2.1 runs that really execute as local processes), TLS verified with the fixture's CA.
 *
 * ARM: the emulator's service principal (client_secret=file:PATH outside the workspace).  Data
 * plane: the seed's personal access token (access_token=file:PATH), or with no access_token an
 * Entra ID token for the AzureDatabricks application from the same principal. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "steplib.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

static azfix FX;
static int FX_ok;
static char *SECRET_FILE, *BAD_SECRET_FILE, *PAT_FILE, *BAD_PAT_FILE;
static char *WS;          /* shared workspace: target "dbx" */
static char *RID;         /* the emulated workspace's ARM id */
static const char *PAT = "dapi-ctarget-test-pat-7f3K9q";
static const char *CLUSTER = "0101-000000-ctarget1";
static int dbx_ok;

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
    const char *env[] = {"AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=", NULL};
    return tl_ctarget_run(ws, NULL, env, args);
}

/* compute VERB NAME --type databricks + ARM settings + extra (NULL-terminated) */
static tl_result attach(const char *ws, const char *verb, const char *name, const char *secret,
                        const char *const extra[])
{
    const char *argv[64];
    char *own[8];
    size_t n = 0, k = 0;
    argv[n++] = "compute";
    argv[n++] = verb;
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = "databricks";
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("arm_endpoint=%s", FX.arm);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("aad_endpoint=%s", FX.aad);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("tenant_id=%s", FX.tenant_id);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("client_id=%s", FX.client_id);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("client_secret=file:%s", secret ? secret : SECRET_FILE);
    for (size_t i = 0; extra && extra[i] && n < 62; i++)
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

static char *run_status(const char *ws, const char *id)
{
    json_t *j = show_run(ws, id);
    char *s = strdup(jstr(j, "status"));
    json_decref(j);
    return s;
}

static int wait_for(const char *ws, const char *id, const char *states, long timeout_ms)
{
    long long end = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < end) {
        char *s = run_status(ws, id);
        char want[128], have[80];
        snprintf(want, sizeof want, "|%s|", states);
        snprintf(have, sizeof have, "|%s|", s);
        int hit = *s && strstr(want, have) != NULL;
        free(s);
        if (hit)
            return 1;
        usleep(50000);
    }
    return 0;
}

static int wait_run(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "wait", id, "--timeout", "60"));
    int st = r.status;
    tl_result_free(&r);
    return st;
}

static char *run_logs(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "logs", id));
    char *s = r.out ? strdup(r.out) : strdup("");
    tl_result_free(&r);
    return s;
}

/* a source directory holding script (text) and inputs/data/x.txt */
static char *source_dir(const char *tag, const char *script, const char *text)
{
    char *src = tl_tmpdir(tag);
    char *p = tl_path(src, script);
    CU_ASSERT_EQUAL(tl_write_file(p, text), 0);
    free(p);
    char *d = fmt("%s/inputs/data", src);
    char *mk = fmt("mkdir -p '%s'", d);
    CU_ASSERT_EQUAL(system(mk), 0);
    p = fmt("%s/x.txt", d);
    CU_ASSERT_EQUAL(tl_write_file(p, "forty-two\n"), 0);
    free(p);
    free(mk);
    free(d);
    return src;
}

static const char *const STEP_ENV[] = {"CTARGET_INPUT_DATA=inputs/data",
                                       "CTARGET_OUTPUT_MODEL=outputs/model", NULL};

static char *step(const char *ws, const char *target, const char *src, const char *script,
                  const char *const args[], const char *json)
{
    char err[1024];
    char *id = sl_step_submit(ws, target, src, script, args, STEP_ENV, "databricks", json, err,
                              sizeof err);
    if (!id)
        printf("step submit refused: %s\n", err);
    return id;
}

static json_t *dbx_state(void)
{
    json_t *st = azfix_state(&FX);
    json_t *d = json_incref(json_object_get(st, "databricks"));
    json_decref(st);
    return d;
}

/* the emulator's record of the Databricks run behind ctarget run `id` */
static json_t *emu_run(const char *ws, const char *id)
{
    json_t *j = show_run(ws, id);
    long long rid = json_integer_value(json_object_get(json_object_get(j, "handle"), "run_id"));
    json_decref(j);
    if (!rid)
        return NULL;
    json_t *d = dbx_state();
    char k[32];
    snprintf(k, sizeof k, "%lld", rid);
    json_t *r = json_incref(json_object_get(json_object_get(d, "runs"), k));
    json_decref(d);
    return r;
}

/* ---- compute: attach, refusals, status -------------------------------------------------- */

static void t01_attach(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *rid = fmt("resource_id=%s", RID), *tok = fmt("access_token=file:%s", PAT_FILE);
    char *cl = fmt("existing_cluster_id=%s", CLUSTER);
    tl_result r = attach(WS, "attach", "dbx", NULL,
                         A("--set", rid, "--set", tok, "--set", cl, "--set", "poll_ms=50"));
    TL_ASSERT_EXIT(r, 0);
    dbx_ok = r.status == 0;
    tl_result_free(&r);
    r = ct(WS, A("compute", "show", "dbx", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    char *url = fmt("127.0.0.1:%d", azfix_service_port(&FX, "databricks"));
    CU_ASSERT(tl_contains(r.out, url)); /* the workspaceUrl ARM gave */
    CU_ASSERT(!tl_contains(r.out, PAT));
    tl_result_free(&r);
    /* ARM was asked with the API version of the spec */
    CU_ASSERT(azfix_count(&FX, "GET", "/providers/Microsoft.Databricks/workspaces/dbx-ctarget$") >= 1);
    json_t *rq = azfix_requests(&FX);
    size_t i;
    json_t *x;
    int av = 0, dp = 0;
    json_array_foreach(rq, i, x)
    {
        if (tl_contains(jstr(x, "path"), "Microsoft.Databricks"))
            av += tl_contains(jstr(x, "query"), "api-version=2024-05-01");
        if (!strcmp(jstr(x, "server"), "databricks") && !strcmp(jstr(x, "path"), "/api/2.0/clusters/list"))
            dp += json_integer_value(json_object_get(x, "status")) == 200;
    }
    CU_ASSERT(av >= 1);
    CU_ASSERT(dp >= 1);
    json_decref(rq);
    free(url);
    free(cl);
    free(rid);
    free(tok);
}

static void t02_attach_bad_token(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("dbxws2");
    char *rid = fmt("resource_id=%s", RID), *tok = fmt("access_token=file:%s", BAD_PAT_FILE);
    tl_result r = attach(ws, "attach", "dbxbad", NULL, A("--set", rid, "--set", tok));
    CU_ASSERT_EQUAL(r.status, 7);
    CU_ASSERT(tl_contains(r.err, "access token was refused"));
    CU_ASSERT(tl_contains(r.err, "PERMISSION_DENIED"));
    CU_ASSERT(tl_contains(r.err, "new token"));
    tl_result_free(&r);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "dbxbad"));
    tl_result_free(&r);
    /* bad ARM credentials: refused by AAD before any data-plane call */
    r = attach(ws, "attach", "dbxbad2", BAD_SECRET_FILE, A("--set", rid));
    CU_ASSERT_EQUAL(r.status, 7);
    CU_ASSERT(!tl_contains(r.err, "ctarget-test-secret"));
    tl_result_free(&r);
    free(rid);
    free(tok);
    free(ws);
}

static void t03_attach_unknown_workspace(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("dbxws3");
    char *rid = fmt("resource_id=/subscriptions/%s/resourceGroups/%s/providers/"
                    "Microsoft.Databricks/workspaces/nosuchws", FX.subscription_id,
                    FX.resource_group);
    char *tok = fmt("access_token=file:%s", PAT_FILE);
    tl_result r = attach(ws, "attach", "dbxnone", NULL, A("--set", rid, "--set", tok));
    CU_ASSERT_EQUAL(r.status, 4);
    CU_ASSERT(tl_contains(r.err, "nosuchws"));
    tl_result_free(&r);
    /* a default cluster the workspace does not have */
    char *rid2 = fmt("resource_id=%s", RID);
    r = attach(ws, "attach", "dbxnone", NULL,
               A("--set", rid2, "--set", tok, "--set", "existing_cluster_id=0000-000000-nope"));
    CU_ASSERT_EQUAL(r.status, 4);
    CU_ASSERT(tl_contains(r.err, "0000-000000-nope"));
    tl_result_free(&r);
    free(rid2);
    /* not a Databricks id at all */
    r = attach(ws, "attach", "dbxnone", NULL,
               A("--set", "resource_id=/subscriptions/x/resourceGroups/y/providers/"
                          "Microsoft.Compute/virtualMachines/vm1", "--set", tok));
    CU_ASSERT_EQUAL(r.status, 3);
    CU_ASSERT(tl_contains(r.err, "Microsoft.Databricks/workspaces"));
    tl_result_free(&r);
    free(rid);
    free(tok);
    free(ws);
}

static void t04_double_attach_refused(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *rid = fmt("resource_id=%s", RID), *tok = fmt("access_token=file:%s", PAT_FILE);
    tl_result r = attach(WS, "attach", "dbx-again", NULL, A("--set", rid, "--set", tok));
    CU_ASSERT_EQUAL(r.status, 5);
    CU_ASSERT(tl_contains(r.err, "already attached"));
    tl_result_free(&r);
    free(rid);
    free(tok);
}

static void t05_create_and_plain_run_refused(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *ws = tl_tmpdir("dbxws5");
    char *rid = fmt("resource_id=%s", RID);
    tl_result r = attach(ws, "create", "dbxnew", NULL, A("--set", rid));
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "cannot be created"));
    tl_result_free(&r);
    char *src = source_dir("dbxsrc5", "train.py", "print('x')\n");
    r = ct(WS, A("run", "submit", "--target", "dbx", "--source", src, "--script", "train.py"));
    CU_ASSERT_EQUAL(r.status, 6);
    CU_ASSERT(tl_contains(r.err, "pipeline steps only"));
    tl_result_free(&r);
    free(src);
    free(rid);
    free(ws);
}

static void t06_status(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    tl_result r = ct(WS, A("compute", "status", "dbx", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Ready"));
    CU_ASSERT(tl_contains(r.out, "clusters_running"));
    tl_result_free(&r);
}

/* ---- steps ------------------------------------------------------------------------------- */

static const char TRAIN_PY[] =
    "import json, os, sys\n"
    "data = open(os.path.join(os.environ['CTARGET_INPUT_DATA'], 'x.txt')).read().strip()\n"
    "print('read input:', data, 'args:', ' '.join(sys.argv[1:]))\n"
    "print('cwd-has-train:', os.path.exists('train.py'))\n"
    "out = os.environ['CTARGET_OUTPUT_MODEL']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'm.txt'), 'w').write('model of ' + data + '\\n')\n"
    "os.makedirs('logs', exist_ok=True)\n"
    "open('logs/extra.log', 'w').write('side log\\n')\n"
    "with open(os.environ['CTARGET_METRICS_FILE'], 'a') as f:\n"
    "    f.write(json.dumps({'name': 'acc', 'value': 0.9, 'step': 1}) + '\\n')\n"
    "print('run id', os.environ['CTARGET_RUN_ID'], 'outputs', os.environ['CTARGET_OUTPUTS_DIR'])\n"
    "sys.stderr.write('to stderr\\n')\n";

static void t07_python_step_completes(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc7", "train.py", TRAIN_PY);
    char *id = step(WS, "dbx", src, "train.py", A("--lr", "0.1 two"), "{\"run_name\":\"t07\"}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *st = run_status(WS, id);
    CU_ASSERT_STRING_EQUAL(st, "Completed");
    char *logs = run_logs(WS, id);
    CU_ASSERT(tl_contains(logs, "read input: forty-two args: --lr 0.1 two"));
    CU_ASSERT(tl_contains(logs, "cwd-has-train: True"));
    CU_ASSERT(tl_contains(logs, "to stderr"));
    char *rid_line = fmt("run id %s", id);
    CU_ASSERT(tl_contains(logs, rid_line));
    char *m = fmt("%s/runs/%s/outputs/model/m.txt", WS, id);
    char *mt = tl_read_file(m);
    CU_ASSERT_STRING_EQUAL(mt ? mt : "", "model of forty-two\n");
    char *lg = fmt("%s/runs/%s/logs/extra.log", WS, id);
    char *lt = tl_read_file(lg);
    CU_ASSERT_STRING_EQUAL(lt ? lt : "", "side log\n");
    /* metrics came back through read_logs(METRICS) */
    tl_result r = ct(WS, A("run", "show", id, "-o", "json"));
    CU_ASSERT(tl_contains(r.out, "acc"));
    CU_ASSERT(tl_contains(r.out, "Databricks") || tl_contains(r.out, "TERMINATED/SUCCESS"));
    tl_result_free(&r);
    /* the Databricks side: the run ran on the target's cluster; cleanup removed its DBFS folder */
    json_t *er = emu_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(er, "cluster"), CLUSTER);
    CU_ASSERT_STRING_EQUAL(jstr(er, "result_state"), "SUCCESS");
    json_decref(er);
    json_t *d = dbx_state();
    char *dir = fmt("%s/ctarget/runs/%s", jstr(d, "dbfs_root"), id);
    json_decref(d);
    struct stat sb;
    int gone = 0;
    for (int i = 0; i < 200 && !(gone = stat(dir, &sb) != 0); i++)
        usleep(50000);
    CU_ASSERT(gone);
    /* the bodies sent were valid for the Jobs 2.1 spec, the answers too */
    json_t *rq = azfix_requests(&FX);
    size_t i;
    json_t *x;
    int submits = 0, invalid = 0;
    json_array_foreach(rq, i, x)
    {
        submits += !strcmp(jstr(x, "path"), "/api/2.1/jobs/runs/submit") &&
                   json_integer_value(json_object_get(x, "status")) == 200;
        invalid += json_object_get(x, "response_invalid") != NULL;
    }
    CU_ASSERT(submits >= 1);
    CU_ASSERT_EQUAL(invalid, 0);
    json_decref(rq);
    free(dir);
    free(lt);
    free(lg);
    free(mt);
    free(m);
    free(rid_line);
    free(logs);
    free(st);
    free(id);
    free(src);
}

static void t08_step_fails_with_its_error(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc8", "bad.py",
                           "import sys\nprint('starting')\n"
                           "raise SystemExit('ValueError: the input is not a model')\n");
    char *id = step(WS, "dbx", src, "bad.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(WS, id), 0);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "the input is not a model"));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 1);
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "TERMINATED/FAILED");
    json_decref(j);
    char *logs = run_logs(WS, id);
    CU_ASSERT(tl_contains(logs, "starting"));
    free(logs);
    free(id);
    free(src);
}

static void t09_service_side_failure(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"databricks\",\"action\":\"fail_run\","
                                     "\"message\":\"Library installation failed: torch==9.9\"}"), 0);
    char *src = source_dir("dbxsrc9", "train.py", "print('never')\n");
    char *id = step(WS, "dbx", src, "train.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(WS, id), 0);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "Library installation failed: torch==9.9"));
    json_decref(j);
    free(id);
    free(src);
}

static const char SLEEPER_PY[] = "import time\nprint('up', flush=True)\ntime.sleep(60)\n";

static void t10_cluster_terminated_mid_run(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc10", "sleep.py", SLEEPER_PY);
    char *id = step(WS, "dbx", src, "sleep.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(wait_for(WS, id, "Running", 30000));
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"databricks\",\"action\":\"terminate_cluster\","
                                     "\"message\":\"SPOT_INSTANCE_TERMINATION\"}"), 0);
    CU_ASSERT_NOT_EQUAL(wait_run(WS, id), 0);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "was terminated"));
    CU_ASSERT(tl_contains(jstr(j, "reason"), "SPOT_INSTANCE_TERMINATION"));
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "INTERNAL_ERROR");
    json_decref(j);
    json_t *er = emu_run(WS, id);
    CU_ASSERT(json_is_false(json_object_get(er, "alive")));
    json_decref(er);
    free(id);
    free(src);
}

static void t11_cancel(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc11", "sleep.py", SLEEPER_PY);
    char *id = step(WS, "dbx", src, "sleep.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(wait_for(WS, id, "Running", 30000));
    long long end = tl_now_ms() + 30000;
    char *logs = NULL;
    while (tl_now_ms() < end) { /* the script itself runs (its first line is in the log) */
        free(logs);
        logs = run_logs(WS, id);
        if (tl_contains(logs, "up"))
            break;
        usleep(50000);
    }
    CU_ASSERT(tl_contains(logs, "up"));
    free(logs);
    json_t *er = emu_run(WS, id);
    long long pid = json_integer_value(json_object_get(er, "pid"));
    CU_ASSERT(pid > 0);
    json_decref(er);
    tl_result r = ct(WS, A("run", "cancel", id));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(wait_for(WS, id, "Canceled", 30000));
    er = emu_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(er, "result_state"), "CANCELED");
    CU_ASSERT(json_is_false(json_object_get(er, "alive")));
    json_decref(er);
    CU_ASSERT(pid > 0 && kill((pid_t)pid, 0) != 0); /* nothing of it left running */
    CU_ASSERT(azfix_count(&FX, "POST", "^/api/2.1/jobs/runs/cancel$") >= 1);
    free(id);
    free(src);
}

static void t12_throttling_and_500_retried(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"databricks\",\"method\":\"POST\",\"path\":"
                                     "\"runs/submit$\",\"status\":429,\"retry_after\":1,"
                                     "\"count\":2}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"databricks\",\"method\":\"GET\",\"path\":"
                                     "\"runs/get$\",\"status\":500,\"count\":1}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"databricks\",\"method\":\"POST\",\"path\":"
                                     "\"dbfs/put$\",\"status\":503,\"count\":1}"), 0);
    char *src = source_dir("dbxsrc12", "train.py", TRAIN_PY);
    char *id = step(WS, "dbx", src, "train.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *st = run_status(WS, id);
    CU_ASSERT_STRING_EQUAL(st, "Completed");
    json_t *rq = azfix_requests(&FX);
    size_t i;
    json_t *x;
    int n429 = 0, n500 = 0, n503 = 0;
    json_array_foreach(rq, i, x)
    {
        long s = (long)json_integer_value(json_object_get(x, "status"));
        const char *p = jstr(x, "path");
        n429 += s == 429 && tl_contains(p, "runs/submit");
        n500 += s == 500 && tl_contains(p, "runs/get");
        n503 += s == 503 && tl_contains(p, "dbfs/put");
    }
    CU_ASSERT_EQUAL(n429, 2);
    CU_ASSERT_EQUAL(n500, 1);
    CU_ASSERT_EQUAL(n503, 1);
    json_decref(rq);
    free(st);
    free(id);
    free(src);
}

static void expect_step_refused(const char *json, const char *needle)
{
    char *src = source_dir("dbxsrc13", "train.py", "print('x')\n");
    int before = azfix_count(&FX, "POST", "^/api/2.1/jobs/runs/submit$");
    char *id = step(WS, "dbx", src, "train.py", NULL, json);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(WS, id), 0);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    if (!tl_contains(jstr(j, "reason"), needle))
        printf("reason '%s' lacks '%s'\n", jstr(j, "reason"), needle);
    CU_ASSERT(tl_contains(jstr(j, "reason"), needle));
    json_decref(j);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "^/api/2.1/jobs/runs/submit$"), before);
    free(id);
    free(src);
}

static void t13_step_keys_checked_before_submit(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    expect_step_refused("{\"bogus\":1}", "unknown databricks step key 'bogus'");
    expect_step_refused("{\"existing_cluster_id\":\"c1\",\"new_cluster\":{\"spark_version\":"
                        "\"13.3.x-scala2.12\",\"node_type_id\":\"Standard_DS3_v2\"}}",
                        "both existing_cluster_id and new_cluster");
    expect_step_refused("{\"num_workers\":\"two\",\"new_cluster\":{}}", "'num_workers'");
    expect_step_refused("{\"task\":\"jar\"}", "main_class_name");
    expect_step_refused("{\"base_parameters\":{\"a\":\"b\"}}", "applies only to task notebook");
    /* refused by the service at submit: Databricks' words and the fix */
    char *src = source_dir("dbxsrc13b", "train.py", "print('x')\n");
    char *id = step(WS, "dbx", src, "train.py", NULL, "{\"existing_cluster_id\":\"0000-gone\"}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_NOT_EQUAL(wait_run(WS, id), 0);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "Cluster 0000-gone does not exist"));
    if (!tl_contains(jstr(j, "reason"), "Cluster 0000-gone does not exist"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    free(id);
    free(src);
}

static void t14_new_cluster_with_num_workers(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc14", "train.py", TRAIN_PY);
    char *id = step(WS, "dbx", src, "train.py", NULL,
                    "{\"num_workers\":3,\"new_cluster\":{\"spark_version\":\"13.3.x-scala2.12\","
                    "\"node_type_id\":\"Standard_DS3_v2\",\"spark_conf\":{\"a\":\"b\"}},"
                    "\"parameters\":[\"p1\"]}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *logs = run_logs(WS, id);
    CU_ASSERT(tl_contains(logs, "args: p1"));
    json_t *er = emu_run(WS, id);
    CU_ASSERT(tl_contains(jstr(er, "cluster"), "-job")); /* a job cluster, not the target's */
    json_decref(er);
    free(logs);
    free(id);
    free(src);
}

static void t15_notebook_step(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc15", "nb.py",
                           "# Databricks notebook source\nimport os\n"
                           "print('notebook says', os.environ.get('DATABRICKS_WIDGET_alpha'))\n");
    char *id = step(WS, "dbx", src, "nb.py", NULL,
                    "{\"task\":\"notebook\",\"base_parameters\":{\"alpha\":\"0.5\"}}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *logs = run_logs(WS, id);
    CU_ASSERT(tl_contains(logs, "notebook says 0.5"));
    free(logs);
    /* cleanup removed the imported notebook */
    json_t *d = dbx_state();
    long long objs = 1;
    for (int i = 0; i < 100 && objs; i++) {
        json_decref(d);
        d = dbx_state();
        objs = json_integer_value(json_object_get(d, "workspace_objects"));
        if (objs)
            usleep(50000);
    }
    CU_ASSERT_EQUAL(objs, 0);
    json_decref(d);
    free(id);
    free(src);
}

static void t16_aad_token_for_the_data_plane(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("dbxws16");
    /* the workspace by its parts this time, and ARM throttles the first GET */
    char *sub = fmt("subscription_id=%s", FX.subscription_id);
    char *rg = fmt("resource_group=%s", FX.resource_group);
    char *cl = fmt("existing_cluster_id=%s", CLUSTER);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"GET\",\"path\":\"Microsoft.Databricks/"
                                     "workspaces/dbx-ctarget$\",\"status\":429,"
                                     "\"retry_after\":1,\"count\":1}"), 0);
    tl_result r = attach(ws, "attach", "dbxaad", NULL,
                         A("--set", sub, "--set", rg, "--set", "workspace_name=dbx-ctarget",
                           "--set", cl));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *rq = azfix_requests(&FX);
    size_t i;
    json_t *x;
    int aad = 0, throttled = 0;
    json_array_foreach(rq, i, x)
    {
        aad += !strcmp(jstr(x, "auth"), "aad");
        throttled += json_integer_value(json_object_get(x, "status")) == 429 &&
                     tl_contains(jstr(x, "path"), "Microsoft.Databricks");
    }
    CU_ASSERT(aad >= 1);
    CU_ASSERT_EQUAL(throttled, 1);
    json_decref(rq);
    /* by parts, the same workspace is still one identity: a second name is refused */
    r = attach(ws, "attach", "dbxaad2", NULL,
               A("--set", sub, "--set", rg, "--set", "workspace_name=dbx-ctarget"));
    CU_ASSERT_EQUAL(r.status, 5);
    tl_result_free(&r);
    free(sub);
    free(rg);
    r = ct(ws, A("compute", "detach", "dbxaad"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(cl);
    free(ws);
}

static void t17_secrets_nowhere(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *hit = tl_tree_grep(WS, PAT, strlen(PAT));
    if (hit)
        printf("the access token found in %s\n", hit);
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
    hit = tl_tree_grep(WS, FX.client_secret, strlen(FX.client_secret));
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
    tl_result r = ct(WS, A("compute", "show", "dbx", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, PAT) && !tl_contains(r.err, PAT));
    tl_result_free(&r);
}

static void t18_official_client(void)
{
    CU_ASSERT_FATAL(FX_ok);
    const char *nm = azfix_node_modules();
    if (!nm) {
        printf("no node_modules: the official client check cannot run\n");
        CU_FAIL("node_modules (npm ci) missing");
        return;
    }
    char *script = fmt("%s/tests/emulators/sdk/databricks.mjs", tl_srcdir());
    const char *argv[] = {"node", script, NULL};
    const char *env[40];
    size_t n = 0;
    for (size_t i = 0; FX.env[i] && n < 36; i++)
        env[n++] = FX.env[i];
    char *e1 = fmt("AZFIX_DBX_WORKSPACE=dbx-ctarget");
    char *e2 = fmt("AZFIX_DBX_PORT=%d", azfix_service_port(&FX, "databricks"));
    env[n++] = e1;
    env[n++] = e2;
    env[n] = NULL;
    tl_result r = tl_exec(argv, NULL, env);
    if (r.status != 0)
        tl_dump("sdk/databricks.mjs", &r);
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.out, "0 failed"));
    tl_result_free(&r);
    free(e1);
    free(e2);
    free(script);
}

static void t19_replay_examples(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *script = fmt("%s/tests/emulators/databricks_replay.py", tl_srcdir());
    const char *argv[] = {"python3", script, FX.dir, NULL};
    tl_result r = tl_exec(argv, NULL, (const char *const *)FX.env);
    if (r.status != 0)
        tl_dump("databricks_replay.py", &r);
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.out, "0 failed"));
    tl_result_free(&r);
    free(script);
}


static void t21_jar_step(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    if (system("command -v javac >/dev/null 2>&1 && command -v jar >/dev/null 2>&1") != 0) {
        printf("no javac/jar on this machine: the jar step is checked up to the submit body\n");
    }
    char *src = tl_tmpdir("dbxsrc21");
    char *java = fmt("%s/Hello.java", src);
    CU_ASSERT_EQUAL(tl_write_file(java,
                                  "public class Hello { public static void main(String[] a) {"
                                  " System.out.println(\"hello from jar \" + String.join(\",\", a));"
                                  " } }\n"), 0);
    char *cmd = fmt("cd '%s' && javac -d . Hello.java 2>&1 && jar cf hello.jar Hello.class && "
                    "rm -f Hello.class Hello.java", src);
    int have_java = system(cmd) == 0;
    char *id = step(WS, "dbx", src, have_java ? "hello.jar" : "Hello.java", A("a1"),
                    "{\"task\":\"jar\",\"main_class_name\":\"Hello\",\"parameters\":[\"p2\"]}");
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    if (have_java) {
        CU_ASSERT_EQUAL(wait_run(WS, id), 0);
        char *logs = run_logs(WS, id);
        CU_ASSERT(tl_contains(logs, "hello from jar a1,p2"));
        free(logs);
    } else { /* refused before submit: a jar task needs a .jar */
        CU_ASSERT_NOT_EQUAL(wait_run(WS, id), 0);
        json_t *j = show_run(WS, id);
        CU_ASSERT(tl_contains(jstr(j, "reason"), ".jar"));
        json_decref(j);
    }
    free(id);
    free(cmd);
    free(java);
    free(src);
}

#define NUMBERED                                                                           \
    "import time\n"                                                                        \
    "for i in range(40):\n"                                                                \
    "    print('line %02d of the numbered run' % i, flush=True)\n"                         \
    "    time.sleep(0.05)\n"

static void t22_monitor_killed_reattached(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc22", "numbered.py", NUMBERED);
    char *id = step(WS, "dbx", src, "numbered.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT(wait_for(WS, id, "Running", 30000));
    json_t *j = show_run(WS, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT(pid > 1);
    if (pid > 1) {
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
            usleep(10000);
    }
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *want = calloc(1, 40 * 40), *logs = run_logs(WS, id);
    for (int i = 0; i < 40; i++)
        sprintf(want + strlen(want), "line %02d of the numbered run\n", i);
    CU_ASSERT_STRING_EQUAL(logs, want); /* byte-exact across the monitor restart */
    free(want);
    free(logs);
    free(id);
    free(src);
}

/* files above DBFS's 1 MiB put/read limit: create + add-block + close up, ranged reads down */
static void t23_large_files(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    char *src = source_dir("dbxsrc23", "big.py",
                           "import os\n"
                           "pat = bytes(i % 251 for i in range(2621440))\n"
                           "got = open(os.path.join(os.environ['CTARGET_INPUT_DATA'], 'big.bin'), 'rb').read()\n"
                           "print('big input ok' if got == pat else 'big input WRONG %d' % len(got))\n"
                           "os.makedirs('outputs/model', exist_ok=True)\n"
                           "open('outputs/model/big.bin', 'wb').write(pat[:1572864])\n");
    size_t n = 2621440;
    unsigned char *pat = malloc(n);
    for (size_t i = 0; i < n; i++)
        pat[i] = (unsigned char)(i % 251);
    char *p = fmt("%s/inputs/data/big.bin", src);
    FILE *f = fopen(p, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL(fwrite(pat, 1, n, f), n);
    fclose(f);
    int blocks = azfix_count(&FX, "POST", "^/api/2.0/dbfs/add-block$");
    char *id = step(WS, "dbx", src, "big.py", NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *logs = run_logs(WS, id);
    CU_ASSERT(tl_contains(logs, "big input ok"));
    CU_ASSERT(azfix_count(&FX, "POST", "^/api/2.0/dbfs/add-block$") - blocks >= 3);
    char *o = fmt("%s/runs/%s/outputs/model/big.bin", WS, id);
    f = fopen(o, "rb");
    CU_ASSERT_FATAL(f != NULL);
    unsigned char *back = malloc(n);
    size_t got = fread(back, 1, n, f);
    fclose(f);
    CU_ASSERT_EQUAL(got, 1572864);
    CU_ASSERT(got == 1572864 && memcmp(back, pat, got) == 0);
    free(back);
    free(o);
    free(logs);
    free(id);
    free(p);
    free(pat);
    free(src);
}

static void t20_detach(void)
{
    CU_ASSERT_FATAL(dbx_ok);
    tl_result r = ct(WS, A("compute", "detach", "dbx"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(WS, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "\"dbx\""));
    tl_result_free(&r);
    /* the workspace itself is untouched: attachable again */
    char *rid = fmt("resource_id=%s", RID), *tok = fmt("access_token=file:%s", PAT_FILE);
    char *bad = fmt("workspace_url=http://127.0.0.1:%d", azfix_service_port(&FX, "databricks"));
    r = attach(WS, "attach", "dbx2", NULL, A("--set", rid, "--set", tok, "--set", bad));
    CU_ASSERT_EQUAL(r.status, 3); /* never plain http */
    CU_ASSERT(tl_contains(r.err, "workspace_url"));
    tl_result_free(&r);
    /* with the data plane given directly (workspace_url overrides ARM's workspaceUrl) */
    char *wu = fmt("workspace_url=https://127.0.0.1:%d/", azfix_service_port(&FX, "databricks"));
    r = attach(WS, "attach", "dbx2", NULL, A("--set", rid, "--set", tok, "--set", wu));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(WS, A("compute", "show", "dbx2", "-o", "json"));
    char *dp = fmt("https://127.0.0.1:%d", azfix_service_port(&FX, "databricks"));
    CU_ASSERT(tl_contains(r.out, dp));
    tl_result_free(&r);
    free(dp);
    free(wu);
    free(bad);
    free(rid);
    free(tok);
    /* nothing of any test left running in the emulator */
    json_t *d = dbx_state();
    const char *k;
    json_t *v;
    int alive = 0;
    json_object_foreach(json_object_get(d, "runs"), k, v) alive += json_is_true(json_object_get(v, "alive"));
    CU_ASSERT_EQUAL(alive, 0);
    json_decref(d);
}

static void add(CU_pSuite s)
{
    char *pp = fmt("%s/plugins/databricks/.libs%s%s", tl_builddir(),
                   getenv("CTARGET_PLUGIN_PATH") ? ":" : "",
                   getenv("CTARGET_PLUGIN_PATH") ? getenv("CTARGET_PLUGIN_PATH") : "");
    setenv("CTARGET_PLUGIN_PATH", pp, 1);
    free(pp);
    azfix_opts o = {.job_phase_ms = 50, .no_azurite = 1};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (!FX_ok) {
        fprintf(stderr, "test_databricks: the Azure emulator fixture did not start\n");
    } else {
        setenv("CTARGET_CA_BUNDLE", FX.ca_bundle, 1); /* the step monitors inherit it */
        char *dir = tl_tmpdir("dbxsecret");
        SECRET_FILE = tl_path(dir, "sp-secret");
        BAD_SECRET_FILE = tl_path(dir, "sp-bad");
        PAT_FILE = tl_path(dir, "pat");
        BAD_PAT_FILE = tl_path(dir, "pat-bad");
        tl_write_file(SECRET_FILE, FX.client_secret);
        tl_write_file(BAD_SECRET_FILE, "not-the-secret");
        tl_write_file(PAT_FILE, PAT);
        tl_write_file(BAD_PAT_FILE, "dapi-revoked-0000");
        free(dir);
        RID = fmt("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Databricks/"
                  "workspaces/dbx-ctarget", FX.subscription_id, FX.resource_group);
        WS = tl_tmpdir("dbxws");
    }
    CU_add_test(s, "01 attach: ARM workspaceUrl, token proven", t01_attach);
    CU_add_test(s, "02 attach: bad token / bad ARM credentials refused", t02_attach_bad_token);
    CU_add_test(s, "03 attach: unknown workspace, wrong resource type", t03_attach_unknown_workspace);
    CU_add_test(s, "04 double attach refused", t04_double_attach_refused);
    CU_add_test(s, "05 create and plain runs refused", t05_create_and_plain_run_refused);
    CU_add_test(s, "06 status", t06_status);
    CU_add_test(s, "07 python step: input, outputs, logs, metrics, cleanup", t07_python_step_completes);
    CU_add_test(s, "08 failing step: the script's error and exit code", t08_step_fails_with_its_error);
    CU_add_test(s, "09 service-side failure", t09_service_side_failure);
    CU_add_test(s, "10 cluster terminated mid-run", t10_cluster_terminated_mid_run);
    CU_add_test(s, "11 cancel: nothing left running", t11_cancel);
    CU_add_test(s, "12 429/500/503 retried", t12_throttling_and_500_retried);
    CU_add_test(s, "13 step keys checked before submit", t13_step_keys_checked_before_submit);
    CU_add_test(s, "14 new_cluster with num_workers", t14_new_cluster_with_num_workers);
    CU_add_test(s, "15 notebook step", t15_notebook_step);
    CU_add_test(s, "16 AAD token for the data plane", t16_aad_token_for_the_data_plane);
    CU_add_test(s, "17 secrets nowhere", t17_secrets_nowhere);
    CU_add_test(s, "18 official client (@azure/arm-databricks)", t18_official_client);
    CU_add_test(s, "19 official examples replayed", t19_replay_examples);
    CU_add_test(s, "21 jar step", t21_jar_step);
    CU_add_test(s, "22 monitor killed: reattached, logs byte-exact", t22_monitor_killed_reattached);
    CU_add_test(s, "23 files above 1 MiB both ways", t23_large_files);
    CU_add_test(s, "24 detach", t20_detach);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_databricks", add);
}
