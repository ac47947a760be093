/* The aci plugin end to end: the real ctarget command and plugin against the Azure emulator
 * (AAD, ARM + emu_svc_aci.py, whose container groups really run their command as local
 * processes) and the real Azurite blob storage (tests/azfix.h), which carries the snapshot in
 * and the outputs out.
 *
 * Targets authenticate as the emulator's service principal (client_secret=file:PATH outside
 * the workspace) and reach storage with Azurite's account key (storage_account_key=file:PATH),
 * over TLS verified with the fixture's CA.  After every test that runs something, the
 * emulator's state must hold no container group: a group is always deleted after its run. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "runlib.h"
#include "steplib.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})
#define AZURITE_KEY \
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

static azfix FX;
static int FX_ok;
static char *SECRET_FILE, *KEY_FILE, *CA_ENV;
static const char *SECRET_USE, *KEY_USE, *BLOB_USE; /* the secret file compute_add gives (NULL: SECRET_FILE) */
static char *BAD_SECRET_FILE, *BAD_KEY_FILE;
static char *WS;          /* shared workspace with target "aci-main" */
static const char *TGT = "aci-main";
static int tgt_ok;

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
    const char *env[] = {CA_ENV, "AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=",
                         NULL};
    return tl_ctarget_run(ws, NULL, env, args);
}

static json_t *out_json(const tl_result *r)
{
    json_t *j = json_loads(r->out ? r->out : "", 0, NULL);
    if (!j)
        tl_dump("not JSON", r);
    return j;
}

/* compute VERB NAME --type aci + the fixture's settings + extra */
static tl_result compute_add(const char *ws, const char *verb, const char *name,
                             const char *const extra[], int with_region)
{
    const char *argv[80];
    char *own[12];
    size_t n = 0, k = 0;
    argv[n++] = "compute";
    argv[n++] = verb;
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = "aci";
#define SET(...) (argv[n++] = "--set", argv[n++] = own[k++] = fmt(__VA_ARGS__))
    SET("arm_endpoint=%s", FX.arm);
    SET("aad_endpoint=%s", FX.aad);
    SET("tenant_id=%s", FX.tenant_id);
    SET("client_id=%s", FX.client_id);
    SET("client_secret=file:%s", SECRET_USE ? SECRET_USE : SECRET_FILE);
    SET("subscription_id=%s", FX.subscription_id);
    SET("resource_group=%s", FX.resource_group);
    SET("storage_endpoint=%s", BLOB_USE ? BLOB_USE : FX.blob);
    SET("storage_account_key=file:%s", KEY_USE ? KEY_USE : KEY_FILE);
    if (with_region)
        SET("region=eastus");
#undef SET
    for (size_t i = 0; extra && extra[i] && n < 78; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    tl_result r = ct(ws, argv);
    for (size_t i = 0; i < k; i++)
        free(own[i]);
    return r;
}

static const char *shared_ws(void)
{
    if (WS || !FX_ok)
        return WS;
    char *ws = tl_tmpdir("aciws");
    /* through the emulator's blob proxy: blob traffic counted (plugin and container alike) */
    BLOB_USE = FX.blob_proxy;
    tl_result r = compute_add(ws, "create", TGT, A("--set", "cpu_cores=1", "--set",
                                                   "memory_gb=1.5"), 1);
    BLOB_USE = NULL;
    TL_ASSERT_EXIT(r, 0);
    tgt_ok = r.status == 0;
    tl_result_free(&r);
    WS = ws;
    return WS;
}

static tl_result submit(const char *ws, const char *src, const char *script,
                        const char *const opts[], const char *const args[])
{
    const char *argv[64];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--target", TGT, "--source", src, "--script",
                           script, "-o", "json"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    for (size_t i = 0; opts && opts[i] && n < 50; i++)
        argv[n++] = opts[i];
    if (args) {
        argv[n++] = "--";
        for (size_t i = 0; args[i] && n < 62; i++)
            argv[n++] = args[i];
    }
    argv[n] = NULL;
    return ct(ws, argv);
}

static char *id_of(const tl_result *r)
{
    json_t *j = out_json(r);
    const char *s = json_string_value(json_object_get(j, "id"));
    char *id = s ? strdup(s) : NULL;
    json_decref(j);
    return id;
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
    TL_ASSERT_EXIT(r, 0);
    char *s = r.out;
    r.out = NULL;
    tl_result_free(&r);
    return s;
}

static int wait_run(const char *ws, const char *id, int seconds)
{
    char t[16];
    snprintf(t, sizeof t, "%d", seconds);
    tl_result r = ct(ws, A("run", "wait", id, "--timeout", t));
    int st = r.status;
    tl_result_free(&r);
    return st;
}

static int wait_for(const char *ws, const char *id, const char *states, long timeout_ms)
{
    long long end = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < end) {
        json_t *j = show_run(ws, id);
        char want[128], have[64];
        snprintf(want, sizeof want, "|%s|", states);
        snprintf(have, sizeof have, "|%s|", jstr(j, "status"));
        int hit = strcmp(have, "||") && strstr(want, have) != NULL;
        json_decref(j);
        if (hit)
            return 1;
        rl_sleep_ms(50);
    }
    return 0;
}

static char *source_dir(const char *tag, const char *script, const char *text)
{
    char *src = tl_tmpdir(tag);
    char *p = tl_path(src, script);
    CU_ASSERT_EQUAL(tl_write_file(p, text), 0);
    free(p);
    return src;
}

/* container groups the emulator holds now */
static int groups_left(void)
{
    json_t *st = azfix_state(&FX);
    json_t *g = json_object_get(json_object_get(st, "aci"), "groups");
    int n = json_is_object(g) ? (int)json_object_size(g) : -1;
    if (n > 0) {
        char *s = json_dumps(g, JSON_COMPACT);
        printf("container groups left: %s\n", s);
        free(s);
    }
    json_decref(st);
    return n;
}

/* one-line error: exit status nonzero, one line on stderr containing `needle` */
static void one_line_error(tl_result *r, const char *needle)
{
    CU_ASSERT(r->status != 0);
    const char *e = r->err ? r->err : "";
    size_t lines = 0;
    for (const char *p = e; *p; p++)
        lines += *p == '\n';
    CU_ASSERT(lines == 1);
    CU_ASSERT(tl_contains(e, needle));
    if (lines != 1 || !tl_contains(e, needle))
        tl_dump("expected a one-line error", r);
}

/* ---- 1. the plugin loads -------------------------------------------------------------------- */

static void t01_plugin_loads(void)
{
    tl_result r = ct(NULL, A("plugins", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    int ok = 0;
    size_t i;
    json_t *p;
    json_array_foreach(j, i, p) if (!strcmp(jstr(p, "name"), "aci"))
        ok |= !strcmp(jstr(p, "status"), "loaded");
    CU_ASSERT(ok);
    json_decref(j);
    tl_result_free(&r);
}

/* ---- 2. create: settings only, validated; status; every bad input a one-line error --------- */

static void t02_create_and_bad_inputs(void)
{
    CU_ASSERT_FATAL(FX_ok);
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    tl_result r = ct(ws, A("compute", "status", TGT, "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    json_t *d = json_object_get(json_object_get(j, "live"), "details");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(j, "live"), "provisioning_state"), "Succeeded");
    CU_ASSERT_STRING_EQUAL(jstr(d, "region"), "eastus");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "container_groups")), 0);
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(groups_left(), 0); /* create made nothing in Azure */

    char *bws = tl_tmpdir("acibad");
    r = compute_add(bws, "create", "aci-mars", A("--set", "region=marsnorth"), 0);
    one_line_error(&r, "region 'marsnorth' is not offered by Azure Container Instances: use "
                       "one of eastus, westus, westus2, westeurope, northeurope, southeastasia");
    tl_result_free(&r);
    r = compute_add(bws, "create", "aci-cpu", A("--set", "cpu_cores=8"), 1);
    one_line_error(&r, "cpu_cores=8 is out of range");
    tl_result_free(&r);
    r = compute_add(bws, "create", "aci-cpu", A("--set", "cpu_cores=lots"), 1);
    one_line_error(&r, "cpu_cores");
    tl_result_free(&r);
    r = compute_add(bws, "create", "aci-mem", A("--set", "memory_gb=64"), 1);
    one_line_error(&r, "memory_gb=64 is out of range");
    tl_result_free(&r);
    r = compute_add(bws, "create", "aci-http", A("--set", "storage_endpoint=http://x/y"), 1);
    one_line_error(&r, "is not an https URL");
    tl_result_free(&r);
    r = compute_add(bws, "create", "aci-cont", A("--set", "storage_container=Bad_Name"), 1);
    one_line_error(&r, "is not a blob container name");
    tl_result_free(&r);
    r = compute_add(bws, "create", "aci-rg", A("--set", "resource_group=no-such-rg"), 1);
    one_line_error(&r, "no-such-rg");
    tl_result_free(&r);
    /* a wrong client secret: refused by AAD at create, nothing recorded */
    SECRET_USE = BAD_SECRET_FILE;
    r = compute_add(bws, "create", "aci-auth", NULL, 1);
    SECRET_USE = NULL;
    one_line_error(&r, FX.client_id);
    CU_ASSERT(!tl_contains(r.err, "not-the-secret"));
    tl_result_free(&r);
    /* attach is never possible: the message says why and what to use */
    r = compute_add(bws, "attach", "aci-att", NULL, 1);
    one_line_error(&r, "aci targets cannot be attached");
    CU_ASSERT(tl_contains(r.err, "compute create"));
    tl_result_free(&r);
    /* nothing of the refused ones was recorded */
    r = ct(bws, A("compute", "list", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    j = out_json(&r);
    CU_ASSERT(json_is_array(j));
    size_t i;
    json_t *t;
    json_array_foreach(j, i, t) CU_ASSERT(strncmp(jstr(t, "name"), "aci-", 4) != 0);
    json_decref(j);
    tl_result_free(&r);
    free(bws);
}

/* ---- 3. examples/train end to end: logs, metrics, outputs; figures ---------------------------- */

static int count_reqs(json_t *reqs, const char *method, const char *needle)
{
    int n = 0;
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q) if ((!method || !strcmp(jstr(q, "method"), method)) &&
                                       strstr(jstr(q, "path"), needle))
        n++;
    return n;
}

static void t03_train(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    azfix_reset(&FX);
    char *src = fmt("%s/examples/train", tl_srcdir());
    long long t0 = tl_now_ms();
    tl_result r = submit(ws, src, "train.py", NULL, A("--epochs", "5", "--samples", "300"));
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    free(src);
    CU_ASSERT_FATAL(id != NULL);
    long long t_submitted = tl_now_ms();
    CU_ASSERT(wait_for(ws, id, "Running|Completed", 30000));
    long long t_running = tl_now_ms();
    CU_ASSERT_EQUAL(wait_run(ws, id, 60), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "Terminated");
    CU_ASSERT_STRING_EQUAL(jstr(j, "target_type"), "aci");
    json_t *h = json_object_get(j, "handle");
    long long sub_ms = json_integer_value(json_object_get(h, "submitted_ms"));
    long long run_ms = json_integer_value(json_object_get(h, "running_ms"));
    json_decref(j);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "epoch 1/5: loss"));
    CU_ASSERT(tl_contains(log, "epoch 5/5: loss"));
    CU_ASSERT(!tl_contains(log, "ctarget-aci:")); /* the bootstrap had nothing to complain of */
    free(log);
    r = ct(ws, A("run", "metrics", id, "--output", "json"));
    TL_ASSERT_EXIT(r, 0);
    j = out_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 10);
    json_decref(j);
    tl_result_free(&r);
    char *model = fmt("%s/runs/%s/outputs/model.json", ws, id);
    char *text = tl_read_file(model);
    CU_ASSERT(tl_contains(text, "\"weights\""));
    free(text);
    free(model);
    CU_ASSERT_EQUAL(groups_left(), 0);
    /* figures: requests per run, submit-to-Running */
    json_t *reqs = azfix_requests(&FX);
    json_t *breqs = azfix_blob_requests(&FX);
    int puts = count_reqs(reqs, "PUT", "/containerGroups/");
    int gets = count_reqs(reqs, "GET", "/containerGroups/");
    int logs = count_reqs(reqs, "GET", "/logs");
    int dels = count_reqs(reqs, "DELETE", "/containerGroups/");
    int tokens = count_reqs(reqs, "POST", "/oauth2/");
    CU_ASSERT_EQUAL(puts, 1);
    CU_ASSERT(dels >= 1);
    printf("\n  aci figures: per run %zu ARM/AAD requests (container group PUT %d, GET %d "
           "(logs %d), DELETE %d, token %d); submit command %lld ms; submit-to-Running "
           "%lld ms (plugin: PUT to first Running poll %lld ms)\n",
           json_array_size(reqs), puts, gets - logs, logs, dels, tokens, t_submitted - t0,
           t_running - t0, run_ms && sub_ms ? run_ms - sub_ms : -1);
    int bput = count_reqs(breqs, "PUT", "/"), bget = count_reqs(breqs, "GET", "/");
    printf("  aci figures: per run %zu blob requests (PUT %d: container, snapshot tar, metrics, "
           "outputs, result; GET %d: tar, metrics reads, listings, outputs; the rest HEAD and "
           "DELETE)\n", json_array_size(breqs), bput, bget);
    CU_ASSERT(count_reqs(breqs, "PUT", "snapshot.tar") >= 1);
    CU_ASSERT(count_reqs(breqs, "GET", "outputs/model.json") >= 1);
    json_decref(reqs);
    json_decref(breqs);
    free(id);
}

/* ---- 4. what the core refuses: GPU, sweeps, pipeline steps; multi-node ------------------------ */

static void t04_refused(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    char *src = source_dir("acisrc4", "s.py", "print('never')\n");
    char *cfgp = tl_path(src, "gpu.json");
    char *text = fmt("{\"source_directory\": \"%s\", \"script\": \"s.py\", \"target\": \"%s\", "
                     "\"environment\": {\"docker_image\": \"pytorch/pytorch\", \"docker_gpu\": "
                     "true}}", src, TGT);
    tl_write_file(cfgp, text);
    free(text);
    tl_result r = ct(ws, A("run", "submit", "--config", cfgp));
    one_line_error(&r, "GPU");
    tl_result_free(&r);
    free(cfgp);

    char *sw = tl_path(src, "sweep.json");
    text = fmt("{\"run\": {\"target\": \"%s\", \"source_directory\": \"%s\", \"script\": "
               "\"s.py\"}, \"parameters\": {\"lr\": {\"choice\": [1, 2]}}, \"sampling\": "
               "\"grid\", \"primary_metric\": \"loss\", \"goal\": \"minimize\", "
               "\"max_total_runs\": 2, \"max_concurrent_runs\": 1}", TGT, src);
    tl_write_file(sw, text);
    free(text);
    r = ct(ws, A("sweep", "submit", "--config", sw));
    one_line_error(&r, "cannot run hyperparameter sweeps");
    tl_result_free(&r);
    free(sw);

    char errbuf[1024] = "";
    char *sid = sl_step_submit(ws, TGT, src, "s.py", NULL, NULL, "script", NULL, errbuf,
                               sizeof errbuf);
    CU_ASSERT(sid == NULL);
    CU_ASSERT(tl_contains(errbuf, "cannot run pipeline steps"));
    free(sid);

    char *mn = tl_path(src, "mn.json");
    text = fmt("{\"source_directory\": \"%s\", \"script\": \"s.py\", \"target\": \"%s\", "
               "\"node_count\": 2}", src, TGT);
    tl_write_file(mn, text);
    free(text);
    r = ct(ws, A("run", "submit", "--config", mn, "--wait", "-o", "json"));
    CU_ASSERT(r.status != 0);
    if (r.out && *r.out == '{') {
        json_t *j = out_json(&r);
        CU_ASSERT(tl_contains(jstr(j, "reason"), "aci runs have one container"));
        json_decref(j);
    } else {
        one_line_error(&r, "node");
    }
    tl_result_free(&r);
    free(mn);
    free(src);
    CU_ASSERT_EQUAL(groups_left(), 0);
}

/* ---- 5. a failing script: its exit code; the group deleted ----------------------------------- */

static void t05_failed_exit(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    char *src = source_dir("acisrc5", "fail.py",
                           "import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n");
    tl_result r = submit(ws, src, "fail.py", A("--wait"), NULL);
    CU_ASSERT(r.status != 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    char *s = json_dumps(j, JSON_COMPACT);
    CU_ASSERT(tl_contains(s, "exited with code 3"));
    free(s);
    json_decref(j);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "about to fail"));
    free(log);
    CU_ASSERT_EQUAL(groups_left(), 0);
    free(id);
    free(src);
}

/* ---- 6. cancel deletes the group ---------------------------------------------------------- */

#define SLOW                                                                                 \
    "import time\n"                                                                          \
    "for i in range(600):\n"                                                                 \
    "    print('tick %d' % i, flush=True)\n"                                                 \
    "    time.sleep(0.1)\n"

static void t06_cancel(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    char *src = source_dir("acisrc6", "slow.py", SLOW);
    tl_result r = submit(ws, src, "slow.py", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(wait_for(ws, id, "Running", 30000));
    CU_ASSERT(rl_wait_log(ws, id, "tick 2", 20000));
    CU_ASSERT_EQUAL(groups_left(), 1);
    r = ct(ws, A("run", "cancel", id));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(wait_for(ws, id, "Canceled", 30000));
    CU_ASSERT_EQUAL(groups_left(), 0);
    free(id);
    free(src);
}

/* ---- 7. the monitor killed mid-run: the new one finishes and deletes the group --------------- */

#define NUMBERED                                                                           \
    "import time\n"                                                                        \
    "for i in range(30):\n"                                                                \
    "    print('line %02d of the numbered run' % i, flush=True)\n"                         \
    "    time.sleep(0.05)\n"

static void t07_monitor_killed(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    char *src = source_dir("acisrc7", "numbered.py", NUMBERED);
    tl_result r = submit(ws, src, "numbered.py", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(wait_for(ws, id, "Running", 30000));
    json_t *j = show_run(ws, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT(pid > 1);
    if (pid > 1) {
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
            rl_sleep_ms(10);
    }
    CU_ASSERT_EQUAL(wait_run(ws, id, 60), 0);
    j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *log = run_logs(ws, id);
    char want[2048] = "";
    for (int i = 0; i < 30; i++)
        sprintf(want + strlen(want), "line %02d of the numbered run\n", i);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    CU_ASSERT_EQUAL(groups_left(), 0);
    free(id);
    free(src);
}

/* ---- 8. faults: image pull failure, OOMKilled, 409 and 429 ---------------------------------- */

static void t08_faults(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    char *src = source_dir("acisrc8", "ok.py", "print('fine', flush=True)\n");
    /* the image cannot be pulled */
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"action\":\"image_pull_failure\",\"path\":"
                                     "\"/containerGroups/\",\"count\":1}"), 0);
    tl_result r = submit(ws, src, "ok.py", A("--wait", "--docker-image", "nosuch/image:1"),
                         NULL);
    CU_ASSERT(r.status != 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    char *s = json_dumps(j, JSON_COMPACT);
    CU_ASSERT(tl_contains(s, "Failed to pull image"));
    CU_ASSERT(tl_contains(s, "nosuch/image:1"));
    free(s);
    json_decref(j);
    free(id);
    CU_ASSERT_EQUAL(groups_left(), 0);

    /* the OOM killer */
    char *big = source_dir("acisrc8b", "big.py", SLOW);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"action\":\"oom_kill\",\"path\":\"ctarget-\","
                                     "\"count\":1}"), 0);
    r = submit(ws, big, "big.py", A("--wait"), NULL);
    CU_ASSERT(r.status != 0);
    id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 137);
    s = json_dumps(j, JSON_COMPACT);
    CU_ASSERT(tl_contains(s, "OOMKilled"));
    CU_ASSERT(tl_contains(s, "raise memory_gb"));
    free(s);
    json_decref(j);
    free(id);
    free(big);
    CU_ASSERT_EQUAL(groups_left(), 0);

    /* 409 on the PUT twice, 429 with Retry-After on GETs, 500 on log reads: retried, the
     * run completes */
    azfix_reset(&FX);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"PUT\",\"path\":\"/containerGroups/\","
                                     "\"status\":409,\"code\":\"Conflict\",\"count\":2}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"GET\",\"path\":\"/containerGroups/\","
                                     "\"status\":429,\"retry_after\":1,\"count\":3}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"GET\",\"path\":\"/logs$\","
                                     "\"status\":500,\"count\":2}"), 0);
    r = submit(ws, src, "ok.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "fine"));
    free(log);
    json_t *reqs = azfix_requests(&FX);
    int c409 = 0, c429 = 0, c500 = 0;
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q) {
        long st = (long)json_integer_value(json_object_get(q, "status"));
        c409 += st == 409;
        c429 += st == 429;
        c500 += st == 500;
    }
    CU_ASSERT_EQUAL(c500, 2);
    CU_ASSERT_EQUAL(c409, 2);
    CU_ASSERT_EQUAL(c429, 3);
    json_decref(reqs);
    free(id);
    free(src);
    CU_ASSERT_EQUAL(groups_left(), 0);
}

/* ---- 9. the official client against the emulator ---------------------------------------------- */

static void t09_sdk(void)
{
    CU_ASSERT_FATAL(FX_ok);
    if (!azfix_node_modules()) {
        printf("\n  no node_modules: the SDK check did not run\n");
        CU_FAIL("node_modules with @azure/arm-containerinstance missing");
        return;
    }
    char *script = fmt("%s/tests/emulators/sdk/aci.mjs", tl_srcdir());
    const char *argv[] = {"node", script, NULL};
    tl_result r = tl_exec(argv, NULL, (const char *const *)FX.env);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "ok - create"));
    CU_ASSERT(tl_contains(r.out, "ok - logs"));
    CU_ASSERT(tl_contains(r.out, "ok - delete"));
    CU_ASSERT(!tl_contains(r.out, "not ok"));
    if (r.status || tl_contains(r.out, "not ok"))
        tl_dump("aci.mjs", &r);
    tl_result_free(&r);
    free(script);
    CU_ASSERT_EQUAL(groups_left(), 0);
}

/* ---- 10. the examples replayed through the emulator's shapes --------------------------------- */

static void t10_examples(void)
{
    char *py = fmt("%s/tests/emulators/emu_svc_aci.py", tl_srcdir());
    char *bundle = fmt("%s/tests/emulators/specs/aci.json", tl_srcdir());
    char *pp = fmt("PYTHONPATH=%s/tests/emulators", tl_srcdir());
    const char *argv[] = {"python3", py, "--examples", bundle, NULL};
    const char *env[] = {pp, NULL};
    tl_result r = tl_exec(argv, NULL, env);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "6 checked, 0 bad"));
    tl_result_free(&r);
    free(py);
    free(bundle);
    free(pp);
}

/* ---- 11. no secret anywhere in the workspace; delete removes leftovers ------------------------- */

static void grep_dir_for(const char *dir, const char *needle)
{
    char *hit = tl_tree_grep(dir, needle, strlen(needle));
    if (hit)
        printf("secret-like '%.8s...' found in %s\n", needle, hit);
    CU_ASSERT(hit == NULL);
    free(hit);
}

static void t11_secrets_and_delete(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && tgt_ok);
    grep_dir_for(ws, FX.client_secret);
    grep_dir_for(ws, "sig=");
    grep_dir_for(ws, "Bearer ");
    grep_dir_for(ws, "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu");
    tl_result r = ct(ws, A("compute", "show", TGT, "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu"));
    tl_result_free(&r);
    /* a leftover group of this target (as after a lost cleanup) goes with the target */
    char *src = source_dir("acisrc11", "slow.py", SLOW);
    r = submit(ws, src, "slow.py", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT(wait_for(ws, id, "Running", 30000));
    r = ct(ws, A("compute", "status", TGT, "-o", "json"));
    json_t *j = out_json(&r);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(
                        json_object_get(json_object_get(j, "live"), "details"),
                        "container_groups")), 1);
    json_decref(j);
    tl_result_free(&r);
    r = ct(ws, A("run", "cancel", id));
    tl_result_free(&r);
    CU_ASSERT(wait_for(ws, id, "Canceled", 30000));
    r = ct(ws, A("compute", "delete", TGT, "--yes"));
    if (r.status != 0) {
        tl_result_free(&r);
        r = ct(ws, A("compute", "delete", TGT));
    }
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(groups_left(), 0);
    free(id);
    free(src);
}

/* ---- 12. a wrong storage key: the run fails in prepare with one line; nothing created ---- */

static void t12_wrong_storage_key(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("aciws12");
    KEY_USE = BAD_KEY_FILE;
    tl_result r = compute_add(ws, "create", "aci-badkey", NULL, 1);
    KEY_USE = NULL;
    TL_ASSERT_EXIT(r, 0); /* create checks ARM only: the key is used by runs */
    tl_result_free(&r);
    char *src = source_dir("acisrc12", "ok.py", "print('never')\n");
    const char *argv[] = {"run", "submit", "--target", "aci-badkey", "--source", src,
                          "--script", "ok.py", "--wait", "-o", "json", NULL};
    r = ct(ws, argv);
    CU_ASSERT(r.status != 0);
    json_t *j = out_json(&r);
    const char *reason = jstr(j, "reason");
    CU_ASSERT(tl_contains(reason, "devstoreaccount1"));
    CU_ASSERT(strchr(reason, '\n') == NULL);
    printf("\n  wrong storage key: %s\n", reason);
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(groups_left(), 0);
    grep_dir_for(ws, "bm90LXRoZS1rZXk");
    free(src);
    free(ws);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void add(CU_pSuite s)
{
    char *pp = fmt("%s/plugins/aci/.libs%s%s", tl_builddir(),
                   getenv("CTARGET_PLUGIN_PATH") ? ":" : "",
                   getenv("CTARGET_PLUGIN_PATH") ? getenv("CTARGET_PLUGIN_PATH") : "");
    setenv("CTARGET_PLUGIN_PATH", pp, 1);
    free(pp);
    azfix_opts o = {.lro_ms = 200, .job_phase_ms = 50};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (!FX_ok) {
        fprintf(stderr, "test_aci: the Azure emulator fixture did not start\n");
    } else {
        CA_ENV = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
        char *dir = tl_tmpdir("acisecret");
        SECRET_FILE = tl_path(dir, "sp-secret");
        KEY_FILE = tl_path(dir, "storage-key");
        tl_write_file(SECRET_FILE, FX.client_secret);
        BAD_SECRET_FILE = tl_path(dir, "sp-wrong");
        tl_write_file(BAD_SECRET_FILE, "not-the-secret");
        BAD_KEY_FILE = tl_path(dir, "key-wrong");
        tl_write_file(BAD_KEY_FILE, "bm90LXRoZS1rZXk=");
        tl_write_file(KEY_FILE, AZURITE_KEY);
        chmod(SECRET_FILE, 0600);
        chmod(KEY_FILE, 0600);
        free(dir);
    }
    TL_ADD(s, t01_plugin_loads);
    TL_ADD(s, t02_create_and_bad_inputs);
    TL_ADD(s, t03_train);
    TL_ADD(s, t04_refused);
    TL_ADD(s, t05_failed_exit);
    TL_ADD(s, t06_cancel);
    TL_ADD(s, t07_monitor_killed);
    TL_ADD(s, t08_faults);
    TL_ADD(s, t09_sdk);
    TL_ADD(s, t10_examples);
    TL_ADD(s, t11_secrets_and_delete);
    TL_ADD(s, t12_wrong_storage_key);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_aci", add);
}
