/* The aks plugin end to end: the real ctarget command and plugin against the Kubernetes API
 * emulator (tests/emulators/emu_svc_aks.py, a data plane of the Azure emulator: Jobs whose
 * pods really run as local processes), and the official @kubernetes/client-node against the
 * same emulator.  The kubeconfig (DIR/aks_kubeconfig.yaml, contexts emu, emu-bad, emu-down,
 * emu-ca) is referenced as file:PATH, outside the workspace; TLS is verified with its
 * certificate-authority-data.  Tests share one emulator and one workspace. */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
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
static char *KUBECONFIG;   /* DIR/aks_kubeconfig.yaml */
static char *KC_SET;       /* kubeconfig=file:... */
static char *TOKEN;        /* the good token (a secret: grep for it) */
static char *WS;
static int attached;
static int grep_hits(const char *dir, const char *needle, const char *except);

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
    return tl_ctarget_run(ws, NULL, NULL, args);
}

static int lines_of(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

/* a failure: the exit code, one line on stderr naming `needle`, never a token */
static void expect_error(tl_result *r, int code, const char *needle)
{
    TL_ASSERT_EXIT(*r, code);
    CU_ASSERT_EQUAL(lines_of(r->err), 1);
    if (needle && !tl_contains(r->err, needle)) {
        tl_dump("error message lacks its cause", r);
        CU_FAIL("error message");
    }
    CU_ASSERT(!tl_contains(r->err, TOKEN));
    CU_ASSERT(!tl_contains(r->err, "k8s-emu-wrong-token"));
    CU_ASSERT(!tl_contains(r->out, TOKEN));
}

static json_t *show_run(const char *ws, const char *id)
{
    tl_result r = ct(ws, A("run", "show", id, "-o", "json"));
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    tl_result_free(&r);
    return j;
}

static int wait_for(const char *ws, const char *id, const char *states, long timeout_ms)
{
    long long end = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < end) {
        json_t *j = show_run(ws, id);
        char want[128], have[64];
        snprintf(want, sizeof want, "|%s|", states);
        snprintf(have, sizeof have, "|%s|", jstr(j, "status"));
        int hit = *jstr(j, "status") && strstr(want, have) != NULL;
        json_decref(j);
        if (hit)
            return 1;
        rl_sleep_ms(50);
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
    char *s = r.out;
    r.out = NULL;
    tl_result_free(&r);
    return s ? s : strdup("");
}

static char *submit(const char *ws, const char *target, const char *src, const char *script,
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
    tl_result r = ct(ws, argv);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    char *id = json_string_value(json_object_get(j, "id"))
                   ? strdup(json_string_value(json_object_get(j, "id"))) : NULL;
    json_decref(j);
    tl_result_free(&r);
    return id;
}

/* the emulator's aks state */
static json_t *kstate(void)
{
    json_t *s = azfix_state(&FX);
    json_t *a = json_incref(json_object_get(s, "aks"));
    json_decref(s);
    return a;
}

/* nothing left: no Job, no pod, no process */
static int nothing_left(long timeout_ms)
{
    long long end = tl_now_ms() + timeout_ms;
    for (;;) {
        json_t *a = kstate();
        int clean = a && json_array_size(json_object_get(a, "jobs")) == 0 &&
                    json_array_size(json_object_get(a, "pods")) == 0 &&
                    json_integer_value(json_object_get(a, "processes")) == 0;
        if (!clean && tl_now_ms() >= end) {
            char *d = json_dumps(json_object_get(a, "pods"), 0);
            fprintf(stderr, "test_aks: left behind: jobs %zu, pods %s, processes %lld\n",
                    json_array_size(json_object_get(a, "jobs")), d ? d : "?",
                    json_integer_value(json_object_get(a, "processes")));
            free(d);
        }
        json_decref(a);
        if (clean)
            return 1;
        if (tl_now_ms() >= end)
            return 0;
        rl_sleep_ms(50);
    }
}

/* The last Job body the emulator accepted (owned), as JSON text. */
static char *last_job_body(void)
{
    json_t *a = kstate();
    json_t *b = json_object_get(a, "job_bodies");
    char *s = json_dumps(json_array_get(b, json_array_size(b) - 1), JSON_COMPACT);
    json_decref(a);
    return s ? s : strdup("");
}

static const char GATE_PY[] =
    "import os, sys, time\n"
    "n = int(sys.argv[2]) if len(sys.argv) > 2 else 1\n"
    "for i in range(n):\n"
    "    print('line %d' % (i + 1), flush=True)\n"
    "print('waiting at the gate', flush=True)\n"
    "for _ in range(600):\n"
    "    if os.path.exists(sys.argv[1]):\n"
    "        break\n"
    "    time.sleep(0.05)\n"
    "for i in range(n, 2 * n):\n"
    "    print('line %d' % (i + 1), flush=True)\n"
    "os.makedirs('outputs', exist_ok=True)\n"
    "open('outputs/done.txt', 'w').write('done\\n')\n"
    "sys.exit(int(sys.argv[3]) if len(sys.argv) > 3 else 0)\n";

static char *gate_src(void)
{
    char *src = tl_tmpdir("akssrc");
    char *p = tl_path(src, "gate.py");
    tl_write_file(p, GATE_PY);
    free(p);
    return src;
}

static char *expected_lines(int n)
{
    size_t cap = 64 + (size_t)n * 16;
    char *s = malloc(cap), *q = s;
    for (int i = 1; i <= 2 * n; i++) {
        q += sprintf(q, "line %d\n", i);
        if (i == n)
            q += sprintf(q, "waiting at the gate\n");
    }
    return s;
}

/* ---- 1. attach and its refusals ---------------------------------------------------------- */

static void t01_attach(void)
{
    CU_ASSERT_FATAL(FX_ok);
    tl_result r = ct(WS, A("compute", "attach", "k8s", "--type", "aks", "--set", KC_SET));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.out, TOKEN));
    attached = r.status == 0;
    tl_result_free(&r);
    r = ct(WS, A("compute", "show", "k8s", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "\"namespace\": \"default\"") ||
              tl_contains(r.out, "\"namespace\":\"default\""));
    CU_ASSERT(!tl_contains(r.out, TOKEN));
    tl_result_free(&r);
    r = ct(WS, A("compute", "status", "k8s"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Active"));
    tl_result_free(&r);
    /* a second target in namespace ml, and the GPU target */
    r = ct(WS, A("compute", "attach", "k8s-ml", "--type", "aks", "--set", KC_SET, "--set",
                 "namespace=ml"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-gpu", "--type", "aks", "--set", KC_SET, "--set",
                 "gpus_per_node=2", "--set", "memory=512Mi", "--set", "cpu=500m"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* client-certificate auth, and a run with it */
    r = ct(WS, A("compute", "attach", "k8s-cert", "--type", "aks", "--set", KC_SET, "--set",
                 "context=emu-cert"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "client-certificate"));
    CU_ASSERT(!tl_contains(r.out, "PRIVATE KEY") && !tl_contains(r.err, "PRIVATE KEY"));
    tl_result_free(&r);
    /* detach */
    r = ct(WS, A("compute", "attach", "k8s-tmp", "--type", "aks", "--set", KC_SET));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = ct(WS, A("compute", "detach", "k8s-tmp"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
}

static void t02_attach_refused(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *dir = tl_tmpdir("akskc");
    tl_result r = ct(WS, A("compute", "attach", "k8s-bad", "--type", "aks", "--set", KC_SET,
                           "--set", "context=emu-bad"));
    expect_error(&r, 7, "rejected the credentials of kubeconfig user 'bad-user'");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-nope", "--type", "aks", "--set", KC_SET, "--set",
                 "context=nope"));
    expect_error(&r, 4, "no context 'nope'");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-down", "--type", "aks", "--set", KC_SET, "--set",
                 "context=emu-down"));
    expect_error(&r, 8, "unreachable");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-ca", "--type", "aks", "--set", KC_SET, "--set",
                 "context=emu-ca"));
    expect_error(&r, 9, "failed TLS verification");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-ns", "--type", "aks", "--set", KC_SET, "--set",
                 "namespace=missing"));
    expect_error(&r, 4, "namespace missing does not exist");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-ns2", "--type", "aks", "--set", KC_SET, "--set",
                 "namespace=Bad_NS"));
    expect_error(&r, 3, "not a Kubernetes namespace name");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-q", "--type", "aks", "--set", KC_SET, "--set",
                 "memory=lots"));
    expect_error(&r, 3, "memory 'lots' is not a Kubernetes quantity");
    tl_result_free(&r);
    r = ct(WS, A("compute", "attach", "k8s-nokc", "--type", "aks"));
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "kubeconfig"));
    tl_result_free(&r);
    /* broken kubeconfigs: not YAML, an exec plugin, insecure-skip-tls-verify, no server */
    struct {
        const char *name, *text, *needle;
        int code;
    } bad[] = {
        {"notyaml", "clusters: [\n  - {\n", "not a kubeconfig", 3},
        {"exec",
         "apiVersion: v1\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: "
         "https://127.0.0.1:1\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n"
         "- name: u\n  user:\n    exec: {command: kubelogin, apiVersion: "
         "client.authentication.k8s.io/v1beta1}\n",
         "exec/auth-provider", 6},
        {"insecure",
         "apiVersion: v1\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: "
         "https://127.0.0.1:1\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n"
         "  context: {cluster: k, user: u}\nusers:\n- name: u\n  user: {token: abc}\n",
         "insecure-skip-tls-verify", 9},
        {"http",
         "apiVersion: v1\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: "
         "http://127.0.0.1:1\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n"
         "- name: u\n  user: {token: abc}\n",
         "is not https", 3},
        {"nocreds",
         "apiVersion: v1\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: "
         "https://127.0.0.1:1\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n"
         "- name: u\n  user: {}\n",
         "neither a token nor a client certificate", 7},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = tl_path(dir, bad[i].name);
        tl_write_file(p, bad[i].text);
        char *set = fmt("kubeconfig=file:%s", p);
        char *name = fmt("k8s-%s", bad[i].name);
        r = ct(WS, A("compute", "attach", name, "--type", "aks", "--set", set));
        expect_error(&r, bad[i].code, bad[i].needle);
        tl_result_free(&r);
        free(set);
        free(name);
        free(p);
    }
    /* create is refused by the core (no CREATE capability yet) */
    r = ct(WS, A("compute", "create", "k8s-new", "--type", "aks", "--set", KC_SET));
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT_EQUAL(lines_of(r.err), 1);
    tl_result_free(&r);
    free(dir);
}

/* ---- 2. examples/train end to end -------------------------------------------------------- */

static void t03_train(void)
{
    CU_ASSERT_FATAL(attached);
    azfix_reset(&FX);
    char *src = fmt("%s/examples/train", tl_srcdir());
    char *id = submit(WS, "k8s", src, "train.py", NULL, A("--epochs", "4"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "Succeeded");
    json_t *h = json_object_get(j, "handle");
    long long sub = json_integer_value(json_object_get(h, "submitted_ms"));
    long long run = json_integer_value(json_object_get(h, "running_ms"));
    char *log = run_logs(WS, id);
    CU_ASSERT(tl_contains(log, "epoch 4/4"));
    CU_ASSERT(!tl_contains(log, "\x1e"));      /* the plugin's marker lines are not the log */
    CU_ASSERT(!tl_contains(log, "ctarget:file"));
    free(log);
    tl_result r = ct(WS, A("run", "metrics", id));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "accuracy"));
    CU_ASSERT_EQUAL(lines_of(r.out), 1 + 2 * 4);
    tl_result_free(&r);
    char *model = fmt("%s/runs/%s/outputs/model.json", WS, id);
    char *m = tl_read_file(model);
    CU_ASSERT(m && tl_contains(m, "{"));
    free(m);
    free(model);
    CU_ASSERT(nothing_left(5000));
    int total = azfix_count(&FX, NULL, "^/api");
    int posts = azfix_count(&FX, "POST", "/jobs$");
    int gets = azfix_count(&FX, "GET", "/jobs/");
    int lists = azfix_count(&FX, "GET", "/pods$");
    int logs = azfix_count(&FX, "GET", "/log$");
    int dels = azfix_count(&FX, "DELETE", "/jobs/");
    CU_ASSERT_EQUAL(posts, 1);
    CU_ASSERT(dels >= 1);
    fprintf(stderr, "test_aks: examples/train: submit-to-Running %lld ms (poll-bounded); "
            "requests %d: POST job %d, GET job %d, list pods %d, pod log %d, DELETE job %d, "
            "other %d\n", run - sub, total, posts, gets, lists, logs, dels,
            total - posts - gets - lists - logs - dels);
    json_decref(j);
    free(id);
    free(src);
}

/* logs are live: seen while the script still runs */
static void t04_live_logs_and_outputs(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    char *id = submit(WS, "k8s-ml", src, "gate.py", NULL, A(gate, "3"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(WS, id, "waiting at the gate", 20000));
    /* the log can reach the run before the poll that records Running (the monitor reads
     * both each loop); the gate is closed, so the run must get there and stay */
    CU_ASSERT(rl_wait_for(WS, id, "Running", 20000));
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Running");
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "Running");
    json_t *h = json_object_get(j, "handle");
    long long sub = json_integer_value(json_object_get(h, "submitted_ms"));
    long long run = json_integer_value(json_object_get(h, "running_ms"));
    CU_ASSERT(sub > 0 && run >= sub);
    fprintf(stderr, "test_aks: submit-to-Running %lld ms (Job POST answered -> first poll that "
            "saw the pod Running; emulator phases 30 ms each)\n", run - sub);
    json_decref(j);
    tl_write_file(gate, "1");
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *log = run_logs(WS, id), *want = expected_lines(3);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    free(want);
    char *done = fmt("%s/runs/%s/outputs/done.txt", WS, id);
    char *d = tl_read_file(done);
    CU_ASSERT(d && !strcmp(d, "done\n"));
    free(d);
    free(done);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(src);
    free(gate);
    free(gd);
}

/* ---- 3. node_count 2 as a parallel Job; GPUs requested ----------------------------------- */

static void t05_parallel_and_gpu(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = tl_tmpdir("akspar");
    char *p = tl_path(src, "rank.py");
    tl_write_file(p, "import os\nprint('rank', os.environ.get('CTARGET_NODE_RANK'), 'of',"
                     " os.environ.get('CTARGET_NODE_COUNT'))\n");
    char *cfg = tl_path(src, "run.json");
    tl_write_file(cfg, "{\"source_directory\": \".\", \"script\": \"rank.py\", \"target\": "
                       "\"k8s-gpu\", \"node_count\": 2}");
    json_t *before = kstate();
    long long pods0 = json_integer_value(json_object_get(json_object_get(before, "created"),
                                                         "pods"));
    json_decref(before);
    tl_result r = ct(WS, A("run", "submit", "--config", cfg, "--source", src, "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    char *id = strdup(jstr(j, "id"));
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *body = last_job_body();
    CU_ASSERT(tl_contains(body, "\"parallelism\":2"));
    CU_ASSERT(tl_contains(body, "\"completions\":2"));
    CU_ASSERT(tl_contains(body, "\"completionMode\":\"Indexed\""));
    CU_ASSERT(tl_contains(body, "\"nvidia.com/gpu\":\"2\""));
    CU_ASSERT(tl_contains(body, "\"memory\":\"512Mi\""));
    CU_ASSERT(tl_contains(body, "\"backoffLimit\":0"));
    CU_ASSERT(tl_contains(body, "\"restartPolicy\":\"Never\""));
    CU_ASSERT(tl_contains(body, "\"ttlSecondsAfterFinished\":86400"));
    CU_ASSERT(tl_contains(body, "\"initContainers\""));
    CU_ASSERT(tl_contains(body, "\"automountServiceAccountToken\":false"));
    CU_ASSERT(!tl_contains(body, TOKEN)); /* no credential travels to the pods */
    free(body);
    json_t *after = kstate();
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(after, "created"),
                                                       "pods")) - pods0, 2);
    json_decref(after);
    char *log = run_logs(WS, id);
    CU_ASSERT(tl_contains(log, "rank 0 of 2"));
    CU_ASSERT(!tl_contains(log, "rank 1 of 2"));
    free(log);
    char *n1 = fmt("%s/runs/%s/logs/node-1.log", WS, id), *l1 = tl_read_file(n1);
    CU_ASSERT(l1 && !strcmp(l1, "rank 1 of 2\n")); /* node 1's output, markers left out */
    free(l1);
    free(n1);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(cfg);
    free(p);
    free(src);
}

/* ---- 4. cancel: the Job and its pods deleted, nothing running ---------------------------- */

static void t06_cancel(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "never");
    char *id = submit(WS, "k8s", src, "gate.py", NULL, A(gate, "1"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(WS, id, "waiting at the gate", 20000));
    json_t *a = kstate();
    CU_ASSERT(json_integer_value(json_object_get(a, "processes")) >= 1);
    json_decref(a);
    tl_result r = ct(WS, A("run", "cancel", id));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(wait_for(WS, id, "Canceled", 20000));
    CU_ASSERT(nothing_left(3000));
    CU_ASSERT(azfix_count(&FX, "DELETE", "/jobs/ctarget-") >= 1);
    free(id);
    free(src);
    free(gate);
    free(gd);
}

/* ---- 5. the monitor killed mid-run: a new one reattaches, no line lost or repeated ------- */

static void t07_monitor_killed(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    char *id = submit(WS, "k8s", src, "gate.py", NULL, A(gate, "40"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(WS, id, "waiting at the gate", 20000));
    json_t *j = show_run(WS, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT(pid > 1);
    if (pid > 1) {
        char *cl = fmt("/proc/%ld/environ", pid);
        char *env = tl_read_file(cl);
        CU_ASSERT(!env || !tl_contains(env, TOKEN));
        free(env);
        free(cl);
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
            rl_sleep_ms(10);
    }
    tl_write_file(gate, "1");
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *log = run_logs(WS, id), *want = expected_lines(40);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    free(want);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(src);
    free(gate);
    free(gd);
}

/* ---- 6. faults ----------------------------------------------------------------------------- */

static void fault(const char *json)
{
    CU_ASSERT_EQUAL(azfix_fault(&FX, json), 0);
}

static void t08_log_stream_dropped(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    char *id = submit(WS, "k8s", src, "gate.py", NULL, A(gate, "60"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(WS, id, "waiting at the gate", 20000));
    azfix_reset(&FX);
    fault("{\"target\":\"aks\",\"action\":\"drop_log_stream\",\"count\":3}");
    tl_write_file(gate, "1");
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *log = run_logs(WS, id), *want = expected_lines(60);
    if (strcmp(log, want)) {
        char *raw = fmt("%s/runs/%s/work/pod0.raw", WS, id), *rt = tl_read_file(raw);
        fprintf(stderr, "test_aks: log differs:\n%s\n--- raw:\n%s\n", log, rt ? rt : "");
        free(rt);
        free(raw);
    }
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    free(want);
    json_t *reqs = azfix_requests(&FX);
    size_t i;
    json_t *q;
    int dropped = 0;
    json_array_foreach(reqs, i, q)
    {
        if (json_is_string(json_object_get(q, "fault")) &&
            !strcmp(json_string_value(json_object_get(q, "fault")), "drop_log_stream"))
            dropped++;
    }
    json_decref(reqs);
    CU_ASSERT(dropped >= 1);
    char *done = fmt("%s/runs/%s/outputs/done.txt", WS, id), *d = tl_read_file(done);
    CU_ASSERT(d && !strcmp(d, "done\n")); /* the outputs came through the dropped streams */
    free(d);
    free(done);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(src);
    free(gate);
    free(gd);
}

static void run_fails(const char *faultjson, const char *needle, const char *native)
{
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "never");
    if (faultjson && strstr(faultjson, "image_pull"))
        fault(faultjson);
    char *id = submit(WS, "k8s", src, "gate.py", NULL, A(gate, "1"));
    CU_ASSERT_FATAL(id != NULL);
    if (faultjson && !strstr(faultjson, "image_pull")) {
        CU_ASSERT(rl_wait_log(WS, id, "waiting at the gate", 20000));
        fault(faultjson);
    }
    CU_ASSERT(wait_for(WS, id, "Failed", 20000));
    json_t *j = show_run(WS, id);
    if (!tl_contains(jstr(j, "reason"), needle)) {
        fprintf(stderr, "test_aks: reason %s lacks %s\n", jstr(j, "reason"), needle);
        CU_FAIL("reason");
    }
    if (native)
        CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), native);
    json_decref(j);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(src);
    free(gate);
    free(gd);
}

static void t09_image_pull_failure(void)
{
    CU_ASSERT_FATAL(attached);
    run_fails("{\"target\":\"aks\",\"action\":\"image_pull_failure\"}",
              "could not be pulled", "Pending");
}

static void t10_evicted(void)
{
    CU_ASSERT_FATAL(attached);
    run_fails("{\"target\":\"aks\",\"action\":\"evict\"}", "was evicted", "Failed");
}

static void t11_oom(void)
{
    CU_ASSERT_FATAL(attached);
    run_fails("{\"target\":\"aks\",\"action\":\"oom\"}", "OOMKilled", "Failed");
}

static void t12b_cert_run(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    tl_write_file(gate, "1");
    char *id = submit(WS, "k8s-cert", src, "gate.py", NULL, A(gate, "2"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *log = run_logs(WS, id), *want = expected_lines(2);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    free(want);
    CU_ASSERT(nothing_left(5000));
    /* the client key is nowhere in the workspace */
    char *kc = tl_read_file(KUBECONFIG);
    const char *k = kc ? strstr(kc, "client-key-data: ") : NULL;
    CU_ASSERT_FATAL(k != NULL);
    char *key = strndup(k + 17, strcspn(k + 17, "\n"));
    CU_ASSERT_EQUAL(grep_hits(WS, key, "secrets.db"), 0);
    free(key);
    free(kc);
    free(id);
    free(src);
    free(gate);
    free(gd);
}

static void t12_script_fails(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    tl_write_file(gate, "1");
    char *id = submit(WS, "k8s", src, "gate.py", NULL, A(gate, "1", "3"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(WS, id), 1);
    json_t *j = show_run(WS, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    CU_ASSERT(tl_contains(jstr(j, "reason"), "exited with code 3"));
    json_decref(j);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(src);
    free(gate);
    free(gd);
}

/* 429 with Retry-After and 500 retried; a create whose answer was lost meets a 409 on retry
 * and the plugin adopts its own Job */
static void t13_429_500_409(void)
{
    CU_ASSERT_FATAL(attached);
    azfix_reset(&FX);
    fault("{\"target\":\"aks\",\"method\":\"POST\",\"path\":\"/jobs$\",\"status\":429,"
          "\"retry_after\":1,\"count\":2}");
    fault("{\"target\":\"aks\",\"method\":\"GET\",\"path\":\"/pods$\",\"status\":500,"
          "\"count\":2}");
    fault("{\"target\":\"aks\",\"action\":\"drop_after_create\",\"count\":1}");
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    tl_write_file(gate, "1");
    char *id = submit(WS, "k8s", src, "gate.py", NULL, A(gate, "2"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    json_t *reqs = azfix_requests(&FX);
    size_t i;
    json_t *q;
    int s429 = 0, s500 = 0, s409 = 0, s201 = 0;
    json_array_foreach(reqs, i, q)
    {
        long st = (long)json_integer_value(json_object_get(q, "status"));
        s429 += st == 429;
        s500 += st == 500;
        s409 += st == 409;
        s201 += st == 201;
    }
    json_decref(reqs);
    CU_ASSERT_EQUAL(s429, 2);
    CU_ASSERT_EQUAL(s500, 2);
    CU_ASSERT_EQUAL(s409, 1);
    CU_ASSERT_EQUAL(s201, 0); /* the one creation's answer was dropped */
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(src);
    free(gate);
    free(gd);
}

static void t14_snapshot_too_large(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = gate_src();
    char *big = tl_path(src, "data.bin");
    FILE *f = fopen(big, "wb");
    CU_ASSERT_FATAL(f != NULL);
    unsigned x = 12345;
    for (int i = 0; i < 700 * 1024; i++) {
        x = x * 1103515245u + 12345u;
        fputc((int)(x >> 16 & 0xff), f);
    }
    fclose(f);
    tl_result r = ct(WS, A("run", "submit", "--target", "k8s", "--source", src, "--script",
                           "gate.py", "-o", "json", "--", "x"));
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    char *id = j ? strdup(jstr(j, "id")) : NULL;
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(wait_for(WS, id, "Failed", 20000));
    j = show_run(WS, id);
    CU_ASSERT(tl_contains(jstr(j, "reason"), "larger than the 512 KiB"));
    CU_ASSERT(!strchr(jstr(j, "reason"), '\n'));
    json_decref(j);
    CU_ASSERT(nothing_left(2000));
    free(id);
    free(big);
    free(src);
}

/* a snapshot of several environment chunks (96 KiB each) arrives whole */
static void t14b_snapshot_chunks(void)
{
    CU_ASSERT_FATAL(attached);
    char *src = tl_tmpdir("akschunks");
    char *big = tl_path(src, "data.bin"), *py = tl_path(src, "check.py");
    FILE *f = fopen(big, "wb");
    CU_ASSERT_FATAL(f != NULL);
    unsigned x = 777;
    for (int i = 0; i < 300 * 1024; i++) {
        x = x * 1103515245u + 12345u;
        fputc((int)(x >> 16 & 0xff), f);
    }
    fclose(f);
    tl_write_file(py, "import hashlib\nprint('sha', hashlib.sha256(open('data.bin', 'rb')"
                      ".read()).hexdigest())\n");
    tl_result h = tl_exec(A("sha256sum", big), NULL, NULL);
    TL_ASSERT_EXIT(h, 0);
    char want[80];
    snprintf(want, sizeof want, "sha %.64s\n", h.out ? h.out : "");
    tl_result_free(&h);
    char *id = submit(WS, "k8s", src, "check.py", NULL, NULL);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(WS, id), 0);
    char *log = run_logs(WS, id);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(log);
    char *body = last_job_body();
    CU_ASSERT(tl_contains(body, "CTARGET_SNAPSHOT_3")); /* 300 KiB: 5 chunks of base64 */
    free(body);
    CU_ASSERT(nothing_left(5000));
    free(id);
    free(py);
    free(big);
    free(src);
}

/* ---- 7. secrets, the official client ------------------------------------------------------ */

static const char *G_NEEDLE, *G_EXCEPT;
static int G_HITS;
static int grep_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    if (flag != FTW_F)
        return 0;
    const char *base = strrchr(path, '/');
    if (G_EXCEPT && base && !strcmp(base + 1, G_EXCEPT))
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t cap = 1 << 16, n = 0, k;
    char *b = malloc(cap);
    while ((k = fread(b + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap)
            b = realloc(b, cap *= 2);
    }
    fclose(f);
    if (memmem(b, n, G_NEEDLE, strlen(G_NEEDLE))) {
        fprintf(stderr, "test_aks: %s holds a secret\n", path);
        G_HITS++;
    }
    free(b);
    return 0;
}

/* files under dir holding needle, except files named `except` */
static int grep_hits(const char *dir, const char *needle, const char *except)
{
    G_NEEDLE = needle;
    G_EXCEPT = except;
    G_HITS = 0;
    nftw(dir, grep_one, 16, FTW_PHYS);
    return G_HITS;
}

static void t15_secrets_nowhere(void)
{
    CU_ASSERT_FATAL(attached);
    /* the kubeconfig given as text goes to the secret store, never in clear */
    char *text = tl_read_file(KUBECONFIG);
    CU_ASSERT_FATAL(text != NULL);
    char *set = fmt("kubeconfig=%s", text);
    tl_result r = ct(WS, A("compute", "attach", "k8s-lit", "--type", "aks", "--set", set));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.out, TOKEN) && !tl_contains(r.err, TOKEN));
    tl_result_free(&r);
    r = ct(WS, A("compute", "show", "k8s-lit"));
    CU_ASSERT(!tl_contains(r.out, TOKEN));
    tl_result_free(&r);
    /* only in the secret store (0600, by design: ctarget(1) SECRETS), in no other file */
    CU_ASSERT_EQUAL(grep_hits(WS, TOKEN, "secrets.db"), 0);
    CU_ASSERT_EQUAL(grep_hits(WS, "certificate-authority-data", "secrets.db"), 0);
    CU_ASSERT(grep_hits(WS, TOKEN, NULL) >= 1); /* the grep can see it where it is */
    char *db = fmt("%s/secrets.db", WS);
    struct stat sb;
    CU_ASSERT(stat(db, &sb) == 0 && (sb.st_mode & 077) == 0);
    free(db);
    free(set);
    free(text);
}

static void t16_official_client(void)
{
    CU_ASSERT_FATAL(FX_ok);
    const char *nm = azfix_node_modules();
    CU_ASSERT_FATAL(nm != NULL);
    char *script = fmt("%s/tests/emulators/sdk/aks.mjs", tl_srcdir());
    char *e1 = fmt("AKS_KUBECONFIG=%s", KUBECONFIG), *e2 = fmt("AZFIX_NODE_MODULES=%s", nm);
    tl_result r = tl_exec(A("node", script), NULL, A(e1, e2));
    if (r.status != 0)
        tl_dump("sdk/aks.mjs", &r);
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.out, "0 failed"));
    tl_result_free(&r);
    CU_ASSERT(nothing_left(3000));
    free(e1);
    free(e2);
    free(script);
}

/* ---- 8. an AKS cluster attached by resource id through the Azure ML compute API ---------- */

static void t18_aks_resource_id(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *dir = tl_tmpdir("akssp");
    char *sec = tl_path(dir, "sp-secret");
    tl_write_file(sec, FX.client_secret);
    char *ca = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
    char *rid = fmt("resource_id=/subscriptions/%s/resourceGroups/%s/providers/"
                    "Microsoft.ContainerService/managedClusters/aks-emu", FX.subscription_id,
                    FX.resource_group);
    char *missing = fmt("resource_id=/subscriptions/%s/resourceGroups/%s/providers/"
                        "Microsoft.ContainerService/managedClusters/aks-none",
                        FX.subscription_id, FX.resource_group);
    char *s1 = fmt("arm_endpoint=%s", FX.arm), *s2 = fmt("aad_endpoint=%s", FX.aad);
    char *s3 = fmt("tenant_id=%s", FX.tenant_id), *s4 = fmt("client_id=%s", FX.client_id);
    char *s5 = fmt("client_secret=file:%s", sec), *s6 = fmt("workspace_config=%s", FX.config_json);
    const char *env[] = {ca, "AZURE_CLIENT_SECRET=", NULL};
#define ATT(name, r) tl_ctarget_run(WS, NULL, env, A("compute", "attach", name, "--type", "aks", \
        "--set", r, "--set", s1, "--set", s2, "--set", s3, "--set", s4, "--set", s5, "--set", s6))
    tl_result r = ATT("aks-one", rid);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Kubernetes"));
    tl_result_free(&r);
    /* the workspace has it as a Kubernetes compute */
    json_t *st = azfix_state(&FX);
    char *d = json_dumps(st, JSON_COMPACT);
    CU_ASSERT(d && tl_contains(d, "aks-one") && tl_contains(d, "Kubernetes"));
    free(d);
    json_decref(st);
    /* the same cluster again under another name: refused */
    r = ATT("aks-two", rid);
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT_EQUAL(lines_of(r.err), 1);
    tl_result_free(&r);
    /* not an AKS id: one line, 3 */
    r = ATT("aks-bad", "resource_id=/subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/"
                       "virtualMachines/vm1");
    expect_error(&r, 3, "is not an AKS cluster id");
    tl_result_free(&r);
    /* an unknown cluster: one line, 4 */
    r = ATT("aks-none", missing);
    expect_error(&r, 4, "aks-none");
    tl_result_free(&r);
    /* a run on it: its kubeconfig comes from listClusterUserCredentials */
    char *src = gate_src(), *gd = tl_tmpdir("aksgate"), *gate = tl_path(gd, "open");
    tl_write_file(gate, "1");
    r = tl_ctarget_run(WS, NULL, env, A("run", "submit", "--target", "aks-one", "--source", src,
                                        "--script", "gate.py", "--wait", "-o", "json", "--",
                                        gate, "2"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT(azfix_count(&FX, "POST", "/managedClusters/aks-emu/listClusterUserCredentials$") >= 2);
    CU_ASSERT(nothing_left(5000));
    CU_ASSERT_EQUAL(grep_hits(WS, TOKEN, "secrets.db"), 0);
    CU_ASSERT_EQUAL(grep_hits(WS, FX.client_secret, NULL), 0);
    /* detach: the compute leaves the workspace, the cluster stays */
    r = tl_ctarget_run(WS, NULL, env, A("compute", "detach", "aks-one"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    st = azfix_state(&FX);
    d = json_dumps(json_object_get(st, "computes"), JSON_COMPACT);
    CU_ASSERT(d && !tl_contains(d, "aks-one"));
    free(d);
    json_decref(st);
#undef ATT
    free(src);
    free(gd);
    free(gate);
    free(s1);
    free(s2);
    free(s3);
    free(s4);
    free(s5);
    free(s6);
    free(rid);
    free(missing);
    free(ca);
    free(sec);
    free(dir);
}

/* ---- 9. AKS create through the Azure ML compute API: the agent_count x vCPUs rule -------- */

static tl_result az_compute(const char *verb, const char *name, const char *const extra[])
{
    static char *sec;
    if (!sec) {
        char *dir = tl_tmpdir("akssp2");
        sec = tl_path(dir, "sp-secret");
        tl_write_file(sec, FX.client_secret);
        free(dir);
    }
    char *ca = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
    char *own[6] = {fmt("arm_endpoint=%s", FX.arm), fmt("aad_endpoint=%s", FX.aad),
                    fmt("tenant_id=%s", FX.tenant_id), fmt("client_id=%s", FX.client_id),
                    fmt("client_secret=file:%s", sec), fmt("workspace_config=%s", FX.config_json)};
    const char *argv[40];
    size_t n = 0;
    argv[n++] = "compute";
    argv[n++] = verb;
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = "aks";
    for (size_t i = 0; i < 6; i++) {
        argv[n++] = "--set";
        argv[n++] = own[i];
    }
    for (size_t i = 0; extra && extra[i] && n < 38; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    const char *env[] = {ca, "AZURE_CLIENT_SECRET=", NULL};
    tl_result r = tl_ctarget_run(WS, NULL, env, argv);
    for (size_t i = 0; i < 6; i++)
        free(own[i]);
    free(ca);
    return r;
}

static json_t *emu_compute(const char *name)
{
    json_t *st = azfix_state(&FX), *c, *found = NULL;
    json_t *cs = json_object_get(st, "computes");
    const char *k;
    size_t i;
    if (json_is_object(cs)) {
        json_object_foreach(cs, k, c)
        if (!strcasecmp(jstr(c, "name"), name) || !strcasecmp(k, name))
            found = json_incref(c);
    } else {
        json_array_foreach(cs, i, c)
        if (!strcasecmp(jstr(c, "name"), name))
            found = json_incref(c);
    }
    json_decref(st);
    return found;
}

static void t19_create_rule(void)
{
    CU_ASSERT_FATAL(FX_ok);
    tl_result r = az_compute("create", "aks-small",
                             A("--set", "agent_count=2", "--set", "vm_size=Standard_D2_v2"));
    expect_error(&r, 3, "needs agent_count x vCPUs >= 12, and 2 x 2 (Standard_D2_v2) = 4: "
                        "raise agent_count to 6");
    tl_result_free(&r);
    r = az_compute("create", "aks-odd", A("--set", "vm_size=Standard_Q7"));
    expect_error(&r, 3, "vm_size 'Standard_Q7' is not a size ctarget knows the vCPUs of: use "
                        "one of Standard_B2s");
    tl_result_free(&r);
    r = az_compute("create", "aks-pp", A("--set", "cluster_purpose=prod"));
    CU_ASSERT_EQUAL(r.status, 3);
    CU_ASSERT_EQUAL(lines_of(r.err), 1);
    tl_result_free(&r);
    r = az_compute("create", "aks-n0", A("--set", "agent_count=0"));
    CU_ASSERT_EQUAL(r.status, 3);
    CU_ASSERT_EQUAL(lines_of(r.err), 1);
    tl_result_free(&r);
    r = az_compute("create", "aks-kc", A("--set", KC_SET));
    CU_ASSERT_EQUAL(r.status, 3);
    CU_ASSERT_EQUAL(lines_of(r.err), 1);
    tl_result_free(&r);
    CU_ASSERT(emu_compute("aks-small") == NULL);
    /* dev-test may be smaller; production at 3 x 4 = 12 is enough */
    r = az_compute("create", "aks-dev", A("--set", "agent_count=1", "--set",
                                          "vm_size=standard_d2_v2", "--set",
                                          "cluster_purpose=dev-test", "--wait"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = az_compute("create", "aks-prod", A("--wait"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *c = emu_compute("aks-dev");
    char *d = json_dumps(c, JSON_COMPACT);
    CU_ASSERT(d && tl_contains(d, "\"AKS\"") && tl_contains(d, "DevTest"));
    free(d);
    json_decref(c);
    c = emu_compute("aks-prod");
    d = json_dumps(c, JSON_COMPACT);
    CU_ASSERT(d && tl_contains(d, "FastProd") && tl_contains(d, "Standard_D3_v2"));
    free(d);
    json_decref(c);
    char *ca = fmt("CTARGET_CA_BUNDLE=%s", FX.ca_bundle);
    const char *e2[] = {ca, NULL};
    r = tl_ctarget_run(WS, NULL, e2, A("compute", "status", "aks-prod"));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Succeeded"));
    tl_result_free(&r);
    r = tl_ctarget_run(WS, NULL, e2, A("compute", "delete", "aks-dev", "--yes"));
    if (r.status != 0) {
        tl_result_free(&r);
        r = tl_ctarget_run(WS, NULL, e2, A("compute", "delete", "aks-dev"));
    }
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    long long end = tl_now_ms() + 10000;
    while ((c = emu_compute("aks-dev")) && tl_now_ms() < end) {
        json_decref(c);
        rl_sleep_ms(100);
    }
    CU_ASSERT(c == NULL);
    json_decref(c);
    free(ca);
}

/* every request body the emulator took was valid against the API server's OpenAPI */
static void t17_bodies_valid(void)
{
    CU_ASSERT_FATAL(FX_ok);
    json_t *reqs = azfix_requests(&FX);
    size_t i;
    json_t *q;
    int invalid = 0;
    json_array_foreach(reqs, i, q)
    {
        if (!json_object_get(q, "invalid"))
            continue;
        invalid++;
        char *d = json_dumps(q, JSON_COMPACT);
        fprintf(stderr, "test_aks: invalid: %s\n", d ? d : "?");
        free(d);
    }
    json_decref(reqs);
    CU_ASSERT_EQUAL(invalid, 0);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void add(CU_pSuite s)
{
    char *pp = fmt("%s/plugins/aks/.libs%s%s", tl_builddir(),
                   getenv("CTARGET_PLUGIN_PATH") ? ":" : "",
                   getenv("CTARGET_PLUGIN_PATH") ? getenv("CTARGET_PLUGIN_PATH") : "");
    setenv("CTARGET_PLUGIN_PATH", pp, 1);
    free(pp);
    azfix_opts o = {.job_phase_ms = 30, .no_azurite = 1};
    FX_ok = azfix_start(&FX, &o) == 0 && azfix_service_port(&FX, "aks") > 0;
    if (!FX_ok) {
        fprintf(stderr, "test_aks: the emulator fixture did not start\n");
    } else {
        KUBECONFIG = fmt("%s/aks_kubeconfig.yaml", FX.dir);
        KC_SET = fmt("kubeconfig=file:%s", KUBECONFIG);
        char *kc = tl_read_file(KUBECONFIG);
        const char *t = kc ? strstr(kc, "token: k8s-emu-") : NULL;
        if (t) {
            t += strlen("token: ");
            TOKEN = strndup(t, strcspn(t, "\n"));
        } else {
            FX_ok = 0;
        }
        free(kc);
        WS = tl_tmpdir("aksws");
    }
    if (!TOKEN)
        TOKEN = strdup("(no token)");
    TL_ADD(s, t01_attach);
    TL_ADD(s, t02_attach_refused);
    TL_ADD(s, t03_train);
    TL_ADD(s, t04_live_logs_and_outputs);
    TL_ADD(s, t05_parallel_and_gpu);
    TL_ADD(s, t06_cancel);
    TL_ADD(s, t07_monitor_killed);
    TL_ADD(s, t08_log_stream_dropped);
    TL_ADD(s, t09_image_pull_failure);
    TL_ADD(s, t10_evicted);
    TL_ADD(s, t11_oom);
    TL_ADD(s, t12_script_fails);
    TL_ADD(s, t12b_cert_run);
    TL_ADD(s, t13_429_500_409);
    TL_ADD(s, t14_snapshot_too_large);
    TL_ADD(s, t14b_snapshot_chunks);
    TL_ADD(s, t15_secrets_nowhere);
    TL_ADD(s, t16_official_client);
    TL_ADD(s, t18_aks_resource_id);
    TL_ADD(s, t19_create_rule);
    TL_ADD(s, t17_bodies_valid);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_aks", add);
}
