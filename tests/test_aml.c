/* The amlcompute and computeinstance plugins end to end: the real ctarget command and plugins
 * against the Azure emulator (AAD, ARM + Azure ML, whose jobs really run as local processes)
 * and the real Azurite blob storage (tests/azfix.h).
 *
 * Every target authenticates as the emulator's service principal with client_secret given as
 * file:PATH (outside the workspace, so the workspace never holds it), over TLS verified with
 * the fixture's throwaway CA (CTARGET_CA_BUNDLE).  The workspace comes from the fixture's
 * config.json.  Tests share one emulator; each uses names of its own. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "runlib.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

static azfix FX;
static int FX_ok;
static char *SECRET_FILE;  /* file:PATH of the SP's secret */
static char *BAD_SECRET_FILE;
static char *WS;           /* the shared workspace: cluster "cpu-main" */
static int HAVE_CI;        /* the computeinstance plugin was built */
static const char *CLUSTER = "cpu-main";
static int cluster_ok;

/* ---- helpers ------------------------------------------------------------------------------ */

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

/* ctarget ARGS with the fixture's CA only (FX.env also holds the secret, for the SDK scripts:
 * the product's processes must not have it in their environment) */
static char *CA_ENV;
static tl_result ct(const char *ws, const char *const args[])
{
    const char *env[] = {CA_ENV, "AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=",
                         NULL};
    return tl_ctarget_run(ws, NULL, env, args);
}

/* compute VERB NAME --type TYPE + the fixture's settings + extra (NULL-terminated) */
static tl_result compute_add(const char *ws, const char *verb, const char *name,
                             const char *type, const char *secret_file,
                             const char *const extra[])
{
    const char *argv[80];
    char *own[8];
    size_t n = 0, k = 0;
    argv[n++] = "compute";
    argv[n++] = verb;
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = type;
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("arm_endpoint=%s", FX.arm);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("aad_endpoint=%s", FX.aad);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("tenant_id=%s", FX.tenant_id);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("client_id=%s", FX.client_id);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("client_secret=file:%s", secret_file ? secret_file : SECRET_FILE);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("workspace_config=%s", FX.config_json);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("storage_endpoint=%s", FX.blob);
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
    json_error_t e;
    json_t *j = json_loads(r->out ? r->out : "", 0, &e);
    if (!j)
        tl_dump("not JSON", r);
    return j;
}

/* run submit --target T --source SRC --script S -o json OPTS... [-- ARGS...] */
static tl_result submit(const char *ws, const char *target, const char *src, const char *script,
                        const char *const opts[], const char *const args[])
{
    const char *argv[64];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--target", target, "--source", src, "--script",
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

static long long handle_int(json_t *run, const char *k)
{
    return json_integer_value(json_object_get(json_object_get(run, "handle"), k));
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
    if (st != 0)
        tl_dump("run wait", &r);
    tl_result_free(&r);
    return st;
}

static int wait_for(const char *ws, const char *id, const char *states, long timeout_ms)
{
    long long end = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < end) {
        json_t *j = show_run(ws, id);
        const char *s = jstr(j, "status");
        char want[128];
        snprintf(want, sizeof want, "|%s|", states);
        char have[64];
        snprintf(have, sizeof have, "|%s|", s);
        int hit = *s && strstr(want, have) != NULL;
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

/* The emulator's jobs whose name starts with prefix. */
static int jobs_named(const char *prefix, const char **status)
{
    json_t *st = azfix_state(&FX);
    json_t *jobs = json_object_get(st, "jobs");
    int n = 0;
    static char last[64];
    last[0] = '\0';
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_object(jobs)) {
        json_object_foreach(jobs, k, v) if (!strncasecmp(k, prefix, strlen(prefix))) {
            n++;
            snprintf(last, sizeof last, "%s", jstr(v, "status"));
        }
    } else {
        json_array_foreach(jobs, i, v) if (!strncasecmp(jstr(v, "name"), prefix,
                                                         strlen(prefix))) {
            n++;
            snprintf(last, sizeof last, "%s", jstr(v, "status"));
        }
    }
    json_decref(st);
    if (status)
        *status = last;
    return n;
}

static char *lower(const char *s)
{
    char *d = strdup(s);
    for (char *p = d; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
        else if (*p == '.')
            *p = '-';
    return d;
}

static const char *shared_ws(void)
{
    if (WS)
        return WS;
    if (!FX_ok)
        return NULL;
    char *ws = tl_tmpdir("amlws");
    tl_result r = compute_add(ws, "create", CLUSTER, "amlcompute", NULL,
                              A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=2",
                                "--wait"));
    TL_ASSERT_EXIT(r, 0);
    cluster_ok = r.status == 0;
    tl_result_free(&r);
    WS = ws;
    return WS;
}

/* ---- 1. both plugins load ----------------------------------------------------------------- */

static void t01_plugins_listed(void)
{
    tl_result r = ct(NULL, A("plugins", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    int aml = 0, ci = 0;
    size_t i;
    json_t *p;
    json_array_foreach(j, i, p) {
        int loaded = !strcmp(jstr(p, "status"), "loaded");
        if (!strcmp(jstr(p, "name"), "amlcompute"))
            aml = loaded;
        if (!strcmp(jstr(p, "name"), "computeinstance"))
            ci = loaded;
    }
    CU_ASSERT(aml);
    if (HAVE_CI)
        CU_ASSERT(ci);
    json_decref(j);
    tl_result_free(&r);
}

/* ---- 2. a cluster: create (progress), status, nodes, update -------------------------------- */

static void t02_cluster_lifecycle(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("amlws2");
    tl_result r = compute_add(ws, "create", "gpu-life", "amlcompute", NULL,
                              A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=2",
                                "--set", "vm_priority=lowpriority", "--wait"));
    TL_ASSERT_EXIT(r, 0);
    /* progress on the terminal while it settles */
    CU_ASSERT(tl_contains(r.err, "gpu-life: Creating"));
    CU_ASSERT(tl_contains(r.err, "gpu-life: Succeeded"));
    tl_result_free(&r);

    r = ct(ws, A("compute", "status", "gpu-life", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    json_t *live = json_object_get(j, "live");
    CU_ASSERT_STRING_EQUAL(jstr(live, "provisioning_state"), "Succeeded");
    json_t *d = json_object_get(live, "details");
    CU_ASSERT_STRING_EQUAL(jstr(d, "vm_size"), "STANDARD_D2_V2");
    CU_ASSERT_STRING_EQUAL(jstr(d, "vm_priority"), "LowPriority");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "max_nodes")), 2);
    CU_ASSERT(json_is_true(json_object_get(json_object_get(j, "facts"), "created_by_ctarget")));
    json_decref(j);
    tl_result_free(&r);

    azfix_reset(&FX);
    r = ct(ws, A("compute", "update", "gpu-life", "--set", "max_nodes=4", "--set",
                 "min_nodes=1"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_count(&FX, "PATCH", "/computes/gpu-life$"), 1);
    r = ct(ws, A("compute", "status", "gpu-life", "-o", "json"));
    j = out_json(&r);
    d = json_object_get(json_object_get(j, "live"), "details");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "max_nodes")), 4);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "min_nodes")), 1);
    json_decref(j);
    tl_result_free(&r);

    /* a managed identity added to the existing cluster */
    r = ct(ws, A("compute", "update", "gpu-life", "--set", "identity_type=systemassigned"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(ws, A("compute", "status", "gpu-life", "-o", "json"));
    j = out_json(&r);
    d = json_object_get(json_object_get(j, "live"), "details");
    CU_ASSERT_STRING_EQUAL(jstr(d, "identity_type"), "SystemAssigned");
    json_decref(j);
    tl_result_free(&r);

    r = ct(ws, A("compute", "nodes", "gpu-life", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    j = out_json(&r);
    CU_ASSERT(json_is_array(j) && json_array_size(j) >= 1); /* min_nodes=1 keeps one */
    json_decref(j);
    tl_result_free(&r);

    /* vm_size is fixed once the cluster exists */
    r = ct(ws, A("compute", "update", "gpu-life", "--set", "vm_size=STANDARD_NC6"));
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "vm_size"));
    tl_result_free(&r);

    /* delete destroys what ctarget created */
    azfix_reset(&FX);
    r = ct(ws, A("compute", "delete", "gpu-life"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_count(&FX, "DELETE", "/computes/gpu-life$"), 1);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "gpu-life"));
    tl_result_free(&r);
    json_t *st = azfix_state(&FX);
    char *dump = json_dumps(json_object_get(st, "computes"), 0);
    CU_ASSERT(!tl_contains(dump, "gpu-life"));
    free(dump);
    json_decref(st);
    free(ws);
}

/* ---- 3. examples/train on the cluster ------------------------------------------------------ */

static void t03_run_train(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = fmt("%s/examples/train", tl_srcdir());
    tl_result r = submit(ws, CLUSTER, src, "train.py", A("--wait"),
                         A("--epochs", "5", "--samples", "300"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    char *id = id_of(&r);
    json_decref(j);
    tl_result_free(&r);
    free(src);
    CU_ASSERT_FATAL(id != NULL);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "epoch 1/5: loss"));
    CU_ASSERT(tl_contains(log, "epoch 5/5: loss"));
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
    j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "Completed");
    CU_ASSERT_STRING_EQUAL(jstr(j, "target_type"), "amlcompute");
    json_decref(j);
    /* the job is named after the run */
    char *jn = lower(id);
    const char *status = NULL;
    CU_ASSERT_EQUAL(jobs_named(jn, &status), 1);
    CU_ASSERT_STRING_EQUAL(status, "Completed");
    free(jn);
    free(id);
}

/* ---- 3b. node_count 2 on the cluster: two processes, rank 0's log; one node elsewhere ------- */

static void t03b_multi_node(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc3b", "mpi.py",
                           "import os\nprint('rank', os.environ.get('AZUREML_CR_NODE_RANK', "
                           "os.environ.get('RANK')), 'of', os.environ.get('WORLD_SIZE'))\n");
    char *cfg = tl_path(src, "runconfig.json");
    char *text = fmt("{\"source_directory\": \"%s\", \"script\": \"mpi.py\", \"target\": "
                     "\"%s\", \"node_count\": 2}", src, CLUSTER);
    CU_ASSERT_EQUAL(tl_write_file(cfg, text), 0);
    tl_result r = ct(ws, A("run", "submit", "--config", cfg, "--wait", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "rank 0 of 2"));
    free(log);
    char *jn = lower(id);
    json_t *st = azfix_state(&FX);
    json_t *jobs = json_object_get(st, "jobs"), *job = NULL, *v;
    const char *k;
    size_t i;
    if (json_is_object(jobs)) {
        json_object_foreach(jobs, k, v) if (!strcasecmp(k, jn)) job = v;
    } else {
        json_array_foreach(jobs, i, v) if (!strcasecmp(jstr(v, "name"), jn)) job = v;
    }
    CU_ASSERT_EQUAL(json_array_size(json_object_get(job, "exit_codes")), 2);
    json_decref(st);
    free(jn);
    free(id);
    free(text);
    free(cfg);
    free(src);
}

/* ---- 4. a resubmit after a one-file change uploads one blob -------------------------------- */

static void t04_resubmit_one_blob(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc4", "main.py",
                           "print(open('data/a.txt').read().strip(), open('data/b.txt').read()"
                           ".strip())\n");
    char *dd = tl_path(src, "data");
    mkdir(dd, 0755);
    char *a = tl_path(dd, "a.txt"), *b = tl_path(dd, "b.txt");
    CU_ASSERT_EQUAL(tl_write_file(a, "alpha 4\n"), 0);
    CU_ASSERT_EQUAL(tl_write_file(b, "beta one\n"), 0);
    tl_result r = submit(ws, CLUSTER, src, "main.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id1 = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(tl_write_file(b, "beta two, changed\n"), 0);
    r = submit(ws, CLUSTER, src, "main.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id2 = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id1 && id2);
    json_t *j1 = show_run(ws, id1), *j2 = show_run(ws, id2);
    CU_ASSERT_EQUAL(handle_int(j1, "uploaded_blobs"), 3);
    CU_ASSERT_EQUAL(handle_int(j2, "uploaded_blobs"), 1);
    CU_ASSERT_EQUAL(handle_int(j2, "uploaded_blob_bytes"), (long long)strlen("beta two, changed\n"));
    json_decref(j1);
    json_decref(j2);
    char *log = run_logs(ws, id2);
    CU_ASSERT(tl_contains(log, "alpha 4 beta two, changed"));
    free(log);
    /* the same snapshot again: the code version exists, nothing is uploaded, no new code */
    azfix_reset(&FX);
    r = submit(ws, CLUSTER, src, "main.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id3 = id_of(&r);
    tl_result_free(&r);
    json_t *j3 = id3 ? show_run(ws, id3) : NULL;
    CU_ASSERT_EQUAL(handle_int(j3, "uploaded_blobs"), 0);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "startPendingUpload"), 0);
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", "/codes/"), 0);
    json_decref(j3);
    free(id1);
    free(id2);
    free(id3);
    free(a);
    free(b);
    free(dd);
    free(src);
}

/* ---- 5-9. bad input: credentials, subscription, names, vm size, quota ----------------------- */

static void expect_refused(const char *name, const char *const extra[], const char *secret,
                           int code, const char *needle)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("amlbad");
    tl_result r = compute_add(ws, "create", name, "amlcompute", secret, extra);
    if (code >= 0) {
        TL_ASSERT_EXIT(r, code);
    } else {
        CU_ASSERT(r.status != 0);
    }
    CU_ASSERT(tl_contains(r.err, needle));
    if (!tl_contains(r.err, needle))
        tl_dump("expected message missing", &r);
    /* one line */
    const char *e = r.err ? strstr(r.err, "error:") : NULL;
    CU_ASSERT(e != NULL);
    tl_result_free(&r);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, name));
    tl_result_free(&r);
    free(ws);
}

static void t05_wrong_secret(void)
{
    expect_refused("cpu-badcred", A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=1"),
                   BAD_SECRET_FILE, 7, FX.client_id);
}

/* Tokens that expire behind the cache's back are fetched again; a stale bearer token given as
 * access_token (never refreshed) is refused with one line, and its text is never shown. */
static void t05b_expired_tokens(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    json_t *x = azfix_admin(&FX, "POST", "/_emulator/tokens/expire", NULL, NULL);
    CU_ASSERT(x != NULL);
    json_decref(x);
    tl_result r = ct(ws, A("compute", "status", CLUSTER, "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);

    char *dir = tl_tmpdir("amltok");
    char *tok = tl_path(dir, "token");
    CU_ASSERT_EQUAL(tl_write_file(tok, "stale-token-0123456789abcdef"), 0);
    char *set = fmt("access_token=file:%s", tok);
    char *ws2 = tl_tmpdir("amltokws");
    const char *argv[] = {"compute", "attach", CLUSTER, "--type", "amlcompute", "--set", set,
                          "--set", NULL, "--set", NULL, NULL};
    char *a1 = fmt("arm_endpoint=%s", FX.arm), *a2 = fmt("workspace_config=%s", FX.config_json);
    argv[8] = a1;
    argv[10] = a2;
    r = ct(ws2, argv);
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(!tl_contains(r.err, "stale-token-0123456789abcdef"));
    CU_ASSERT(!tl_contains(r.out, "stale-token-0123456789abcdef"));
    tl_result_free(&r);
    free(a1);
    free(a2);
    free(set);
    free(tok);
    free(dir);
    free(ws2);
}

static void t06_unknown_subscription(void)
{
    expect_refused("cpu-nosub",
                   A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=1", "--set",
                     "subscription_id=00000000-0000-0000-0000-0000000000ff"),
                   NULL, 4, "SubscriptionNotFound");
}

static void t06b_unknown_workspace(void)
{
    expect_refused("cpu-nows",
                   A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=1", "--set",
                     "workspace_name=ws-missing"),
                   NULL, 4, "ws-missing");
}

static void t07_bad_names(void)
{
    const char *bad[] = {"1cluster", "ab", "cpu-1", "a_b_c", "this-name-is-far-too-long-x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *ws = tl_tmpdir("amlname");
        tl_result r = compute_add(ws, "create", bad[i], "amlcompute", NULL,
                                  A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=1"));
        CU_ASSERT(r.status != 0);
        CU_ASSERT(tl_contains(r.err, bad[i]) || tl_contains(r.err, "name"));
        tl_result_free(&r);
        free(ws);
    }
    /* nothing reached the service */
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", "/computes/1cluster"), 0);
}

static void t08_vm_size_refused(void)
{
    expect_refused("cpu-badsize", A("--set", "vm_size=STANDARD_NOPE_V9", "--set", "max_nodes=1"),
                   NULL, -1, "InvalidVmSize");
}

static void t09_quota_exceeded(void)
{
    /* STANDARD_NC6 has 6 cores; 5 nodes kept ask 30 of the 24 the seed allows */
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("amlquota");
    tl_result r = compute_add(ws, "create", "gpu-quota", "amlcompute", NULL,
                              A("--set", "vm_size=STANDARD_NC6", "--set", "max_nodes=10",
                                "--set", "min_nodes=5"));
    CU_ASSERT(r.status != 0);
    CU_ASSERT(tl_contains(r.err, "QuotaExceeded") || tl_contains(r.err, "quota of 24"));
    CU_ASSERT(tl_contains(r.err, "gpu-quota"));
    tl_result_free(&r);
    r = ct(ws, A("compute", "list", "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, "gpu-quota"));
    tl_result_free(&r);
    free(ws);
}

/* ---- 10. attach by name and by resource id; never twice ------------------------------------ */

static void t10_attach_rules(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *ws2 = tl_tmpdir("amlattach");
    /* by name, in another ctarget workspace */
    tl_result r = compute_add(ws2, "attach", CLUSTER, "amlcompute", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(ws2, A("compute", "show", CLUSTER, "-o", "json"));
    json_t *j = out_json(&r);
    CU_ASSERT(json_is_false(json_object_get(json_object_get(j, "facts"), "created_by_ctarget")));
    json_decref(j);
    tl_result_free(&r);
    /* ctarget never destroys what it did not create */
    azfix_reset(&FX);
    r = ct(ws2, A("compute", "delete", CLUSTER));
    TL_ASSERT_EXIT(r, 15);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_count(&FX, "DELETE", NULL), 0);
    r = ct(ws2, A("compute", "detach", CLUSTER));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_count(&FX, "DELETE", NULL), 0);

    /* by resource id under another name, then again under a third: refused */
    char *rid = fmt("resource_id=%s/computes/%s", FX.workspace_id, CLUSTER);
    r = compute_add(ws2, "attach", "cpu-alias", "amlcompute", NULL, A("--set", rid));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = compute_add(ws2, "attach", "cpu-again", "amlcompute", NULL, A("--set", rid));
    TL_ASSERT_EXIT(r, 5);
    CU_ASSERT(tl_contains(r.err, "cpu-alias"));
    tl_result_free(&r);
    /* the shared workspace created cpu-main: attaching it again by resource id is refused */
    r = compute_add(ws, "attach", "cpu-main2", "amlcompute", NULL, A("--set", rid));
    TL_ASSERT_EXIT(r, 5);
    CU_ASSERT(tl_contains(r.err, CLUSTER));
    tl_result_free(&r);
    /* a compute that is not there */
    r = compute_add(ws2, "attach", "cpu-ghost", "amlcompute", NULL, NULL);
    TL_ASSERT_EXIT(r, 4);
    CU_ASSERT(tl_contains(r.err, "cpu-ghost"));
    tl_result_free(&r);
    free(rid);
    free(ws2);
}

/* ---- 11. a 429 storm on job creation: the run completes, one job ---------------------------- */

static void t11_429_storm(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc11", "hello.py", "print('through the storm')\n");
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"PUT\",\"path\":\"/jobs/\",\"status\":429,"
                                     "\"retry_after\":1,\"count\":3}"), 0);
    tl_result r = submit(ws, CLUSTER, src, "hello.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "through the storm"));
    free(log);
    CU_ASSERT(azfix_count(&FX, "PUT", "/jobs/") >= 4); /* 3 refused + the one that went in */
    char *jn = lower(id);
    CU_ASSERT_EQUAL(jobs_named(jn, NULL), 1);
    free(jn);
    free(id);
    free(src);
}

/* ---- 12. a provisioning that fails: errors shown, never recorded Succeeded ------------------ */

static void t12_lro_fails(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("amllro");
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"action\":\"fail_provisioning\",\"path\":"
                                     "\"/computes/cpu-doomed\",\"code\":\"AllocationFailed\","
                                     "\"message\":\"no capacity for STANDARD_D2_V2\"}"), 0);
    tl_result r = compute_add(ws, "create", "cpu-doomed", "amlcompute", NULL,
                              A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=1",
                                "--wait"));
    CU_ASSERT(r.status != 0);
    CU_ASSERT(tl_contains(r.err, "AllocationFailed"));
    tl_result_free(&r);
    r = ct(ws, A("compute", "show", "cpu-doomed", "-o", "json"));
    if (r.status == 0) {
        json_t *j = out_json(&r);
        CU_ASSERT_STRING_NOT_EQUAL(jstr(j, "provisioning_state"), "Succeeded");
        CU_ASSERT_STRING_EQUAL(jstr(j, "provisioning_state"), "Failed");
        CU_ASSERT(tl_contains(jstr(j, "provisioning_errors"), "AllocationFailed"));
        json_decref(j);
    }
    tl_result_free(&r);
    free(ws);
}

/* ---- 13. a dropped connection while the code is registered: retried, one code version ------ */

static void t13_drop_mid_upload(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc13", "drop.py", "print('survived the drop 13')\n");
    azfix_reset(&FX);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"method\":\"PUT\",\"path\":\"/codes/.*/versions/\","
                                     "\"action\":\"drop\",\"count\":1}"), 0);
    tl_result r = submit(ws, CLUSTER, src, "drop.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "survived the drop 13"));
    free(log);
    CU_ASSERT_EQUAL(azfix_count(&FX, "PUT", "/codes/.*/versions/"), 2); /* dropped + retried */
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "startPendingUpload"), 1);
    json_t *j = show_run(ws, id);
    CU_ASSERT_EQUAL(handle_int(j, "uploaded_blobs"), 1);
    json_decref(j);
    free(id);
    free(src);
}

/* ---- 13b. a connection dropped in the middle of a blob upload: retried, nothing twice ------ */

static void t13b_drop_mid_blob(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    CU_ASSERT_FATAL(FX.blob_proxy != NULL);
    char *src = source_dir("amlsrc13b", "big.py",
                           "import hashlib\nprint(hashlib.sha256(open('data.bin','rb').read())"
                           ".hexdigest())\n");
    char *data = tl_path(src, "data.bin");
    size_t n = 9u << 20; /* above the 8 MiB spool threshold: uploaded from a file, in blocks */
    char *buf = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)('a' + (i * 7919 + i / 13) % 26);
    buf[n] = '\0';
    CU_ASSERT_EQUAL(tl_write_file(data, buf), 0);
    free(buf);
    azfix_reset(&FX);
    CU_ASSERT_EQUAL(azfix_config(&FX, "{\"blob_via_proxy\":true}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"blob\",\"method\":\"PUT\",\"path\":"
                                     "\"ctarget-blobs/\",\"action\":\"drop\","
                                     "\"after_bytes\":1000,\"count\":1}"), 0);
    tl_result r = submit(ws, CLUSTER, src, "big.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_config(&FX, "{\"blob_via_proxy\":false}"), 0);
    CU_ASSERT_FATAL(id != NULL);
    /* the job read the whole file: the upload was completed after the drop */
    const char *argv[] = {"sha256sum", data, NULL};
    r = tl_exec(argv, NULL, NULL);
    char want[65] = "";
    if (r.out)
        snprintf(want, sizeof want, "%.64s", r.out);
    tl_result_free(&r);
    char *log = run_logs(ws, id);
    CU_ASSERT(want[0] && tl_contains(log, want));
    free(log);
    /* one dropped PUT, then each blob stored exactly once */
    json_t *br = azfix_blob_requests(&FX);
    size_t i;
    json_t *q;
    int dropped = 0, stored = 0, bad = 0, twice = 0;
    json_t *seen = json_object();
    json_array_foreach(br, i, q) {
        if (strcmp(jstr(q, "method"), "PUT") || !strstr(jstr(q, "path"), "ctarget-blobs/"))
            continue;
        long long st = json_integer_value(json_object_get(q, "status"));
        const char *query = jstr(q, "query");
        if (st == 0) {
            dropped++;
            continue;
        }
        if (st != 201) {
            bad++;
            continue;
        }
        /* a blob (Put Blob, or Put Block List after its blocks) and each block: once */
        char *key = fmt("%s?%s", jstr(q, "path"), query);
        if (json_object_get(seen, key))
            twice++;
        json_object_set_new(seen, key, json_true());
        free(key);
        if (!strstr(query, "comp=block") || strstr(query, "comp=blocklist"))
            stored++;
    }
    json_decref(seen);
    CU_ASSERT_EQUAL(dropped, 1);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(twice, 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_EQUAL(stored, handle_int(j, "uploaded_blobs"));
    json_decref(j);
    json_decref(br);
    free(id);
    free(data);
    free(src);
}

/* ---- 14. the monitor killed mid-run: reattached, logs byte-exact; no secret in its argv ----- */

#define NUMBERED                                                                           \
    "import time\n"                                                                        \
    "for i in range(40):\n"                                                                \
    "    print('line %02d of the numbered run' % i, flush=True)\n"                         \
    "    time.sleep(0.05)\n"

static char *numbered_log(void)
{
    char *s = calloc(1, 40 * 40);
    for (int i = 0; i < 40; i++)
        sprintf(s + strlen(s), "line %02d of the numbered run\n", i);
    return s;
}

static int file_has(const char *path, const char *needle, size_t n)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    char buf[65536];
    size_t got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return memmem(buf, got, needle, n) != NULL;
}

static void t14_monitor_killed(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc14", "numbered.py", NUMBERED);
    tl_result r = submit(ws, CLUSTER, src, "numbered.py", NULL, NULL);
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
        /* the monitor's argument list holds no secret */
        char *cl = fmt("/proc/%ld/cmdline", pid);
        CU_ASSERT(!file_has(cl, FX.client_secret, strlen(FX.client_secret)));
        CU_ASSERT(!file_has(cl, "sig=", 4));
        free(cl);
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
            rl_sleep_ms(10);
    }
    CU_ASSERT_EQUAL(wait_run(ws, id, 120), 0);
    j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *log = run_logs(ws, id), *want = numbered_log();
    CU_ASSERT_STRING_EQUAL(log, want);
    free(want);
    free(log);
    char *jn = lower(id);
    CU_ASSERT_EQUAL(jobs_named(jn, NULL), 1);
    free(jn);
    free(id);
    free(src);
}

/* ---- 14b. a preempted low-priority job: restarted as the run's next attempt -------------- */

static void t14b_preempted_restarted(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("amlpre");
    tl_result r = compute_add(ws, "create", "cpu-spot", "amlcompute", NULL,
                              A("--set", "vm_size=STANDARD_D2_V2", "--set", "max_nodes=1",
                                "--set", "vm_priority=lowpriority", "--wait"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src = source_dir("amlsrc14b", "numbered.py", NUMBERED);
    r = submit(ws, "cpu-spot", src, "numbered.py", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    char *jn = lower(id);
    CU_ASSERT(wait_for(ws, id, "Running", 30000));
    char *f = fmt("{\"action\":\"preempt\",\"job\":\"%s\"}", jn);
    CU_ASSERT_EQUAL(azfix_fault(&FX, f), 0);
    free(f);
    CU_ASSERT_EQUAL(wait_run(ws, id, 120), 0);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "attempt")), 2);
    CU_ASSERT_EQUAL(handle_int(j, "restarts"), 1);
    json_decref(j);
    /* the second attempt ran the whole script: its log follows the first attempt's */
    char *log = run_logs(ws, id);
    const char *last = log ? strstr(log, "line 39 of the numbered run") : NULL;
    CU_ASSERT(last != NULL);
    CU_ASSERT(log && strstr(log, "line 00 of the numbered run") != NULL);
    free(log);
    const char *status = NULL;
    CU_ASSERT_EQUAL(jobs_named(jn, &status), 2); /* <id> (preempted) and <id>-a2 */
    free(jn);
    free(id);
    free(src);
    free(ws);
}

/* ---- 15. cancel ------------------------------------------------------------------------------ */

/* A sweep on the cluster (amlcompute declares hyperparameter tuning): 6 children, 2 at once,
 * each a real job of the emulator counting the children alive on this machine. */
static void t15b_sweep_on_the_cluster(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    const char *env[] = {CA_ENV, "AZURE_CLIENT_SECRET=", "AZURE_CLIENT_ID=", "AZURE_TENANT_ID=",
                         NULL};
    rl_sweep_concurrency_on(ws, CLUSTER, env);
}

static void t15_cancel(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc15", "long.py",
                           "import time\nprint('started', flush=True)\ntime.sleep(60)\n");
    tl_result r = submit(ws, CLUSTER, src, "long.py", NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(wait_for(ws, id, "Running", 30000));
    r = ct(ws, A("run", "cancel", id));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(wait_for(ws, id, "Canceled", 30000));
    char *jn = lower(id);
    const char *status = NULL;
    CU_ASSERT_EQUAL(jobs_named(jn, &status), 1);
    CU_ASSERT_STRING_EQUAL(status, "Canceled");
    free(jn);
    free(id);
    free(src);
}

/* ---- 16. a failing script: Failed with its exit code ----------------------------------------- */

static void t16_failed_exit_code(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    char *src = source_dir("amlsrc16", "bad.py", "import sys\nprint('about to fail')\nsys.exit(3)\n");
    tl_result r = submit(ws, CLUSTER, src, "bad.py", A("--wait"), NULL);
    CU_ASSERT(r.status != 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = show_run(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    json_decref(j);
    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "about to fail"));
    free(log);
    free(id);
    free(src);
}

/* ---- 17. computeinstance: create, power, immutable ssh, run, delete ------------------------- */

static const char *ci_state(const char *ws, const char *name)
{
    static char st[64];
    st[0] = '\0';
    tl_result r = ct(ws, A("compute", "status", name, "-o", "json"));
    json_t *j = r.status == 0 ? out_json(&r) : NULL;
    snprintf(st, sizeof st, "%s", jstr(json_object_get(j, "live"), "state"));
    json_decref(j);
    tl_result_free(&r);
    return st;
}

static void t17_computeinstance(void)
{
    if (!HAVE_CI) {
        printf("(computeinstance not built: skipped)\n");
        return;
    }
    CU_ASSERT_FATAL(FX_ok);
    char *ws = tl_tmpdir("amlci");
    tl_result r = compute_add(ws, "create", "ci-alice", "computeinstance", NULL,
                              A("--set", "vm_size=STANDARD_DS3_V2", "--wait"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_STRING_EQUAL(ci_state(ws, "ci-alice"), "Running");
    r = ct(ws, A("compute", "stop", "ci-alice"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_STRING_EQUAL(ci_state(ws, "ci-alice"), "Stopped");
    r = ct(ws, A("compute", "start", "ci-alice"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_STRING_EQUAL(ci_state(ws, "ci-alice"), "Running");
    azfix_reset(&FX);
    r = ct(ws, A("compute", "restart", "ci-alice"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "/computes/ci-alice/restart$"), 1);
    CU_ASSERT_STRING_EQUAL(ci_state(ws, "ci-alice"), "Running");
    /* ssh_public_access is fixed at creation */
    azfix_reset(&FX);
    r = ct(ws, A("compute", "update", "ci-alice", "--set", "ssh_public_access=true"));
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "ssh_public_access"));
    tl_result_free(&r);
    CU_ASSERT_EQUAL(azfix_count(&FX, NULL, "/computes/ci-alice"), 0);
    /* a run */
    char *src = source_dir("amlsrc17", "ci.py",
                           "import os\nprint('on the instance', os.environ['CTARGET_RUN_ID'])\n");
    r = submit(ws, "ci-alice", src, "ci.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    if (id) {
        char *log = run_logs(ws, id);
        char *want = fmt("on the instance %s", id);
        CU_ASSERT(tl_contains(log, want));
        free(want);
        free(log);
    }
    free(id);
    free(src);
    /* delete */
    r = ct(ws, A("compute", "delete", "ci-alice"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *st = azfix_state(&FX);
    char *dump = json_dumps(json_object_get(st, "computes"), 0);
    CU_ASSERT(!tl_contains(dump, "ci-alice"));
    free(dump);
    json_decref(st);
    free(ws);
}

/* ---- 18. secrets: nowhere in the workspaces, outputs or logs -------------------------------- */

static void grep_dir_for(const char *dir, const char *needle)
{
    char *hit = tl_tree_grep(dir, needle, strlen(needle));
    if (hit)
        printf("secret-like '%.8s...' found in %s\n", needle, hit);
    CU_ASSERT(hit == NULL);
    free(hit);
}

static void t18_secrets_nowhere(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    /* a run with a failing credential check in between, so error paths are covered too */
    char *src = source_dir("amlsrc18", "s.py", "print('secret check')\n");
    tl_result r = submit(ws, CLUSTER, src, "s.py", A("--wait"), NULL);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.out, FX.client_secret) && !tl_contains(r.err, FX.client_secret));
    CU_ASSERT(!tl_contains(r.out, "sig=") && !tl_contains(r.err, "sig="));
    tl_result_free(&r);
    r = ct(ws, A("compute", "show", CLUSTER, "-o", "json"));
    CU_ASSERT(!tl_contains(r.out, FX.client_secret));
    tl_result_free(&r);
    grep_dir_for(ws, FX.client_secret);
    grep_dir_for(ws, "sig=");
    grep_dir_for(ws, "Bearer ");
    grep_dir_for(ws, "access_token");
    /* the storage account key (Azurite's well-known key) */
    grep_dir_for(ws, "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu");
    free(src);
}

/* ---- 19. every body we send, valid to the swagger and to Microsoft's own SDK -------------- */

static void t19_bodies_valid(void)
{
    const char *ws = shared_ws();
    CU_ASSERT_FATAL(ws && cluster_ok);
    azfix_reset(&FX);
    /* a cluster with every optional setting, its update, a run with an environment file,
     * variables and a timeout, a compute instance */
    char *dir = tl_tmpdir("amlbodies");
    char *pw = tl_path(dir, "pw");
    CU_ASSERT_EQUAL(tl_write_file(pw, "Adm1n-pass-for-nodes!"), 0);
    char *pwset = fmt("admin_user_password=file:%s", pw);
    char *idset = fmt("identity_id=/subscriptions/%s/resourceGroups/%s/providers/"
                      "Microsoft.ManagedIdentity/userAssignedIdentities/ctarget-mi",
                      FX.subscription_id, FX.resource_group);
    tl_result r = compute_add(ws, "create", "cpu-full", "amlcompute", NULL,
                              A("--set", "vm_size=STANDARD_DS11_V2", "--set", "max_nodes=2",
                                "--set", "min_nodes=0", "--set", "vm_priority=lowpriority",
                                "--set", "idle_seconds_before_scaledown=600", "--set",
                                "admin_username=azureuser", "--set", pwset, "--set",
                                "admin_user_ssh_key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx "
                                "me@host", "--set", "vnet_name=vnet1", "--set",
                                "subnet_name=default", "--set", "identity_type=userassigned",
                                "--set", idset, "--set",
                                "remote_login_port_public_access=disabled", "--wait"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(ws, A("compute", "update", "cpu-full", "--set", "max_nodes=3", "--set",
                 "identity_type=systemassigned", "--set", "identity_id="));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src = source_dir("amlsrc19", "env.py",
                           "import os\nprint('X is', os.environ.get('X'))\n");
    char *req = tl_path(src, "requirements.txt");
    CU_ASSERT_EQUAL(tl_write_file(req, "# nothing to install\n"), 0);
    r = submit(ws, CLUSTER, src, "env.py",
               A("--requirements", req, "--env-var", "X=forty two", "--timeout", "300",
                 "--experiment", "bodies", "--wait"), A("--flag", "it's quoted"));
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    if (id) {
        char *log = run_logs(ws, id);
        CU_ASSERT(tl_contains(log, "X is forty two"));
        free(log);
    }
    free(id);
    if (HAVE_CI) {
        r = compute_add(ws, "create", "ci-bodies", "computeinstance", NULL,
                        A("--set", "vm_size=STANDARD_DS3_V2", "--set", "ssh_public_access=true",
                          "--set", "admin_user_ssh_public_key=ssh-rsa AAAAB3NzaC1yc2E me@h",
                          "--wait"));
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
    }
    r = ct(ws, A("compute", "delete", "cpu-full"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);

    /* the emulator validated each against machineLearningServices.json / mfe.json */
    json_t *reqs = azfix_requests(&FX);
    CU_ASSERT_FATAL(json_is_array(reqs));
    size_t i;
    json_t *q;
    int bad = 0, puts = 0;
    json_array_foreach(reqs, i, q) {
        json_t *inv = json_object_get(q, "invalid");
        if (!strcmp(jstr(q, "method"), "PUT") || !strcmp(jstr(q, "method"), "PATCH"))
            puts++;
        if (inv && !json_is_null(inv) && !json_is_false(inv)) {
            bad++;
            printf("invalid body: %s %s: %s\n", jstr(q, "method"), jstr(q, "path"),
                   json_is_string(inv) ? json_string_value(inv) : "?");
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(puts >= 5); /* compute PUT, PATCH, code, environment, job (+ instance) */
    json_decref(reqs);
    /* and Microsoft's SDK serializes every one of them */
    char *script = fmt("%s/tests/emulators/sdk/validate_bodies.mjs", tl_srcdir());
    const char *argv[] = {"node", script, NULL};
    r = tl_exec(argv, NULL, (const char *const *)FX.env);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "ok - PUT"));
    CU_ASSERT(!tl_contains(r.out, "not ok"));
    if (!tl_contains(r.out, "ok - PUT") || tl_contains(r.out, "not ok"))
        tl_dump("validate_bodies.mjs", &r);
    tl_result_free(&r);
    /* the admin password went to Azure and nowhere else */
    grep_dir_for(ws, "Adm1n-pass-for-nodes!");
    free(script);
    free(req);
    free(src);
    free(idset);
    free(pwset);
    free(pw);
    free(dir);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void add(CU_pSuite s)
{
    char *pp = fmt("%s/plugins/amlcompute/.libs:%s/plugins/computeinstance/.libs%s%s",
                   tl_builddir(), tl_builddir(), getenv("CTARGET_PLUGIN_PATH") ? ":" : "",
                   getenv("CTARGET_PLUGIN_PATH") ? getenv("CTARGET_PLUGIN_PATH") : "");
    setenv("CTARGET_PLUGIN_PATH", pp, 1);
    free(pp);
    char *ci = fmt("%s/plugins/computeinstance/.libs/computeinstance.so", tl_builddir());
    HAVE_CI = access(ci, R_OK) == 0;
    free(ci);
    azfix_opts o = {.lro_ms = 300, .job_phase_ms = 50};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (FX_ok)
        CA_ENV = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
    if (!FX_ok) {
        fprintf(stderr, "test_aml: the Azure emulator fixture did not start\n");
    } else {
        /* the monitor re-reads these each time: a test cannot race their creation */
        char *dir = tl_tmpdir("amlsecret");
        SECRET_FILE = tl_path(dir, "sp-secret");
        BAD_SECRET_FILE = tl_path(dir, "sp-wrong");
        tl_write_file(SECRET_FILE, FX.client_secret);
        tl_write_file(BAD_SECRET_FILE, "not-the-secret");
        chmod(SECRET_FILE, 0600);
        free(dir);
    }
    TL_ADD(s, t01_plugins_listed);
    TL_ADD(s, t02_cluster_lifecycle);
    TL_ADD(s, t03_run_train);
    TL_ADD(s, t03b_multi_node);
    TL_ADD(s, t04_resubmit_one_blob);
    TL_ADD(s, t05_wrong_secret);
    TL_ADD(s, t05b_expired_tokens);
    TL_ADD(s, t06_unknown_subscription);
    TL_ADD(s, t06b_unknown_workspace);
    TL_ADD(s, t07_bad_names);
    TL_ADD(s, t08_vm_size_refused);
    TL_ADD(s, t09_quota_exceeded);
    TL_ADD(s, t10_attach_rules);
    TL_ADD(s, t11_429_storm);
    TL_ADD(s, t12_lro_fails);
    TL_ADD(s, t13_drop_mid_upload);
    TL_ADD(s, t13b_drop_mid_blob);
    TL_ADD(s, t14_monitor_killed);
    TL_ADD(s, t14b_preempted_restarted);
    TL_ADD(s, t15_cancel);
    TL_ADD(s, t15b_sweep_on_the_cluster);
    TL_ADD(s, t16_failed_exit_code);
    TL_ADD(s, t17_computeinstance);
    TL_ADD(s, t18_secrets_nowhere);
    TL_ADD(s, t19_bodies_valid);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_aml", add);
}
