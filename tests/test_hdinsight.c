/* The hdinsight plugin end to end: the real ctarget command, the real plugin (libssh2,
 * remotevm's agent compiled in) and a real OpenSSH server on 127.0.0.1 (tests/servers/sshd.sh)
 * standing in for a cluster's head node.  The sessions of that sshd get a PATH that starts
 * with tests/servers/spark/, where `spark-submit` is an emulator of Spark's launcher (it
 * parses the options, prints the version banner, and execs python3 on the application with a
 * tiny local `pyspark` package on PYTHONPATH): the commands the plugin sends, the detached
 * driver, its logs, exit status, outputs and cancellation are all real processes here.
 *
 * HOME is an empty scratch directory (so ~/.ssh/known_hosts trusts nothing) and the build
 * tree's hdinsight plugin is on CTARGET_PLUGIN_PATH. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "azfix.h"
#include "runlib.h"
#include "sshfix.h"
#include "steplib.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

static sf_sshd S;
static int S_ok;
static char *WS;   /* workspace with target "spark1" on S (key login), attached once */
static char *ROOT; /* its remote_root */
static char *USER; /* the login: the fixture's own account (see add()), else this user */
static char *PW;   /* its password (NULL: root, by key) */
static azfix FX;   /* the Azure emulator: its Livy data plane (emu_svc_hdinsight.py) */
static int FX_ok;
static char *LWS;  /* workspace with target "livy1" (mode=livy) on S and FX, attached once */

static tl_result attach(const char *ws, const char *name, const char *user, const char *key,
                        const char *root, int accept, const char *const extra[],
                        const char *stdin_data);

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

static void write_at(const char *dir, const char *name, const char *content)
{
    char *p = tl_path(dir, name);
    CU_ASSERT_EQUAL(tl_write_file(p, content), 0);
    free(p);
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* compute attach NAME --type hdinsight against S as user (key file name in the fixture
 * directory, or NULL); extra: more arguments */
static tl_result attach(const char *ws, const char *name, const char *user, const char *key,
                        const char *root, int accept, const char *const extra[],
                        const char *stdin_data)
{
    const char *argv[64];
    char *own[8];
    size_t n = 0, k = 0;
    const char *fixed[] = {"compute", "attach", name, "--type", "hdinsight", "--set",
                           "address=127.0.0.1", "--set"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    argv[n++] = own[k++] = fmt("ssh_port=%d", S.port);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("username=%s", user ? user : USER);
    if (key) {
        char *kf = sf_file(&S, key);
        argv[n++] = "--set";
        argv[n++] = own[k++] = fmt("private_key_file=%s", kf);
        free(kf);
    }
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("remote_root=%s", root);
    if (accept)
        argv[n++] = "--accept-new-host-key";
    for (size_t i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    tl_result r = tl_ctarget_run(ws, stdin_data, NULL, argv);
    for (size_t i = 0; i < k; i++)
        free(own[i]);
    return r;
}

/* attach as USER: by its password when it is the fixture's account (sshd reads the key
 * file of the fixture as that user, and cannot), else root's key; extra: more arguments */
static tl_result login_attach(const char *ws, const char *name, const char *root, int accept,
                              const char *const extra[])
{
    if (!PW)
        return attach(ws, name, NULL, "id_ed25519", root, accept, extra, NULL);
    const char *more[16];
    size_t n = 0;
    more[n++] = "--password-stdin";
    for (size_t i = 0; extra && extra[i] && n < 15; i++)
        more[n++] = extra[i];
    more[n] = NULL;
    char *in = fmt("%s\n", PW);
    tl_result r = attach(ws, name, NULL, NULL, root, accept, more, in);
    free(in);
    return r;
}

/* a remote_root for the login: inside a scratch directory it may write to (owned) */
static char *mkroot(const char *tag)
{
    char *d = tl_tmpdir(tag);
    chmod(d, 0777);
    char *r = fmt("%s/root", d);
    free(d);
    return r;
}

/* the error is one line, "ctarget: error: ...\n", and the last thing printed */
static int one_line(const char *s)
{
    const char *e = s ? strstr(s, "ctarget: error: ") : NULL;
    if (!e || strstr(e + 1, "ctarget: error: "))
        return 0;
    const char *nl = strchr(e, '\n');
    return nl && nl[1] == '\0';
}

static const char *ws(void)
{
    if (WS)
        return WS;
    if (!S_ok)
        return NULL;
    char *w = tl_tmpdir("hdiws");
    ROOT = mkroot("hdiroot");
    tl_result r = login_attach(w, "spark1", ROOT, 1, NULL);
    TL_ASSERT_EXIT(r, 0);
    if (r.status == 0)
        WS = w;
    else
        free(w);
    tl_result_free(&r);
    return WS;
}

#define NEED_WS()                                                                        \
    const char *W = ws();                                                                \
    if (!W)                                                                              \
        fprintf(stderr, "test_hdinsight: no attached cluster (sshd fixture: %s)\n",       \
                S_ok ? "up" : "did not start");                                          \
    CU_ASSERT_FATAL(W != NULL)

/* a pyspark run: run submit --config {framework: pyspark} --target spark1 ... */
static char *submit_pyspark(const char *w, const char *src, const char *script,
                            const char *const opts[], const char *const args[])
{
    char *cfgdir = tl_tmpdir("hdicfg");
    write_at(cfgdir, "run.json", "{\"framework\": \"pyspark\"}");
    char *cfg = tl_path(cfgdir, "run.json");
    const char *argv[64];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--config", cfg, "--target", "spark1", "--source",
                           src, "--script", script, "-o", "json"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    for (size_t i = 0; opts && opts[i] && n < 40; i++)
        argv[n++] = opts[i];
    if (args) {
        argv[n++] = "--";
        for (size_t i = 0; args[i] && n < 62; i++)
            argv[n++] = args[i];
    }
    argv[n] = NULL;
    tl_result r = tl_ctarget_run(w, NULL, NULL, argv);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    const char *id = json_string_value(json_object_get(j, "id"));
    char *out = id ? strdup(id) : NULL;
    json_decref(j);
    tl_result_free(&r);
    free(cfg);
    free(cfgdir);
    return out;
}

static int wait_run(const char *w, const char *id, int seconds)
{
    char t[16];
    snprintf(t, sizeof t, "%d", seconds);
    tl_result r = TL_CT(w, "run", "wait", id, "--timeout", t);
    int st = r.status;
    if (st != 0 && st != 1 && st != 130)
        tl_dump("run wait", &r);
    tl_result_free(&r);
    return st;
}

static char *run_logs(const char *w, const char *id)
{
    tl_result r = TL_CT(w, "run", "logs", id);
    TL_ASSERT_EXIT(r, 0);
    char *s = r.out;
    r.out = NULL;
    tl_result_free(&r);
    return s ? s : strdup("");
}

static int pgrep(const char *pattern)
{
    const char *argv[] = {"pgrep", "-f", pattern, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    int st = r.status;
    tl_result_free(&r);
    return st; /* 0: found, 1: none */
}

/* tl_tree_grep over the workspace with its secret store (secrets.db*) moved aside */
static char *grep_outside_store(const char *w, const char *needle)
{
    char *aside = tl_tmpdir("hdiaside");
    char *cmd = fmt("cd '%s' && for f in secrets.db*; do [ -e \"$f\" ] && mv \"$f\" '%s'/; "
                    "done; true", w, aside);
    const char *mv[] = {"/bin/sh", "-c", cmd, NULL};
    tl_result r = tl_exec(mv, NULL, NULL);
    CU_ASSERT_EQUAL(r.status, 0);
    tl_result_free(&r);
    char *hit = tl_tree_grep(w, needle, strlen(needle));
    free(cmd);
    cmd = fmt("mv '%s'/secrets.db* '%s'/", aside, w);
    const char *back[] = {"/bin/sh", "-c", cmd, NULL};
    r = tl_exec(back, NULL, NULL);
    CU_ASSERT_EQUAL(r.status, 0);
    tl_result_free(&r);
    free(cmd);
    free(aside);
    return hit;
}

/* ---- 1. attach ------------------------------------------------------------------------------ */

static void t01_attach_records_spark(void)
{
    NEED_WS();
    tl_result r = TL_CT(W, "compute", "show", "spark1", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "\"spark_version\": \"3.3.0\""));
    CU_ASSERT(tl_contains(r.out, "\"system\": \"Linux\""));
    if (!tl_contains(r.out, "3.3.0"))
        tl_dump("compute show", &r);
    tl_result_free(&r);
    r = TL_CT(W, "compute", "status", "spark1", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Running"));
    CU_ASSERT(tl_contains(r.out, "3.3.0"));
    tl_result_free(&r);
}

static void t02_unknown_host_key_refused(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *w = tl_tmpdir("hdiws-hk"), *root = mkroot("hdiroot-hk");
    tl_result r = attach(w, "spark-hk", NULL, "id_ed25519", root, 0, NULL, NULL);
    TL_ASSERT_EXIT(r, 9);
    CU_ASSERT(tl_contains(r.err, S.fingerprint));
    CU_ASSERT(tl_contains(r.err, "--accept-new-host-key"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);
    /* nothing attached, nothing trusted */
    r = TL_CT(w, "compute", "list", "-o", "json");
    CU_ASSERT(!tl_contains(r.out, "spark-hk"));
    tl_result_free(&r);
    char *kh = tl_path(w, "known_hosts");
    CU_ASSERT_EQUAL(rl_count_lines(kh), 0);
    free(kh);
    free(root);
    free(w);
}

static void t03_bad_password_refused_and_not_stored(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *w = tl_tmpdir("hdiws-pw"), *root = mkroot("hdiroot-pw");
    char *pw = fmt("wrong-%ld-%lld-pw", (long)getpid(), tl_now_ms());
    char *in = fmt("%s\n", pw);
    tl_result r = attach(w, "spark-pw", NULL, NULL, root, 1, A("--password-stdin"), in);
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(one_line(r.err));
    CU_ASSERT(!tl_contains(r.err, pw));
    CU_ASSERT(!tl_contains(r.out, pw));
    tl_result_free(&r);
    char *hit = tl_tree_grep(w, pw, strlen(pw));
    CU_ASSERT_PTR_NULL(hit);
    if (hit)
        printf("the rejected password was written to %s\n", hit);
    free(hit);
    /* the good password, where the fixture could make a password user (root only) */
    char *user = sf_read(&S, "password_user"), *good = sf_read(&S, "password");
    if (user && good) {
        char *gin = fmt("%s\n", good);
        r = attach(w, "spark-pw", user, NULL, root, 1, A("--password-stdin"), gin);
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
        /* an accepted password lives in the secret store (secrets.db) and nowhere else */
        hit = grep_outside_store(w, good);
        CU_ASSERT_PTR_NULL(hit);
        if (hit)
            printf("the password was written to %s\n", hit);
        free(hit);
        printf("good password: attached as %s\n", user);
        free(gin);
    } else {
        printf("good password: skipped (the fixture made no password user)\n");
    }
    free(user), free(good);
    free(in), free(pw), free(root), free(w);
}

static void t04_missing_spark_submit(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *w = tl_tmpdir("hdiws-ns"), *root = mkroot("hdiroot-ns");
    const char *const cases[] = {"spark_submit=/opt/nospark/bin/spark-submit",
                                 "spark_submit=spark-submit-not-installed"};
    for (int i = 0; i < 2; i++) {
        tl_result r = login_attach(w, "spark-ns", root, 1, A("--set", cases[i]));
        TL_ASSERT_EXIT(r, 4);
        CU_ASSERT(tl_contains(r.err, "no spark-submit on the cluster"));
        CU_ASSERT(tl_contains(r.err, "set spark_submit to its path"));
        CU_ASSERT(one_line(r.err));
        tl_result_free(&r);
    }
    /* the emulator by its absolute path works */
    char *abs = fmt("spark_submit=%s/tests/servers/spark/spark-submit", tl_srcdir());
    tl_result r = login_attach(w, "spark-abs", root, 1, A("--set", abs));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* and its detach forgets it */
    r = TL_CT(w, "compute", "detach", "spark-abs");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w, "compute", "list", "-o", "json");
    CU_ASSERT(!tl_contains(r.out, "spark-abs"));
    tl_result_free(&r);
    free(abs), free(root), free(w);
}

static void t05_double_attach_and_create_refused(void)
{
    NEED_WS();
    char *root = mkroot("hdiroot-dup");
    tl_result r = login_attach(W, "spark2", root, 1, NULL);
    TL_ASSERT_EXIT(r, 5);
    CU_ASSERT(tl_contains(r.err, "spark1"));
    tl_result_free(&r);
    char *port = fmt("ssh_port=%d", S.port);
    r = TL_CT(W, "compute", "create", "spark3", "--type", "hdinsight", "--set",
              "address=127.0.0.1", "--set", port, "--set", "username=root");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "hdinsight targets cannot be created by ctarget"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);
    /* a resource_id that is no HDInsight cluster */
    r = TL_CT(W, "compute", "attach", "spark4", "--type", "hdinsight", "--set",
              "resource_id=/subscriptions/0/resourceGroups/g/providers/Microsoft.Compute/"
              "virtualMachines/vm", "--set", "username=root", "--set", "password=env:NOPE");
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "is not an HDInsight cluster"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);
    /* neither address nor resource_id */
    r = TL_CT(W, "compute", "attach", "spark5", "--type", "hdinsight", "--set", "username=root",
              "--set", "password=env:NOPE");
    CU_ASSERT_NOT_EQUAL(r.status, 0);
    CU_ASSERT(tl_contains(r.err, "address") && tl_contains(r.err, "resource_id"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);
    free(port), free(root);
}

/* ---- 2. runs -------------------------------------------------------------------------------- */

static const char APP[] =
    "import json, os, sys\n"
    "from pyspark.sql import SparkSession\n"
    "spark = SparkSession.builder.appName('squares').getOrCreate()\n"
    "sc = spark.sparkContext\n"
    "total = sc.parallelize(range(int(sys.argv[1])), 4).map(lambda x: x * x).sum()\n"
    "print('app', sc.appName, 'master', sc.master, 'total', total, flush=True)\n"
    "print('cwd-has-app', os.path.exists('app.py'), 'args', sys.argv[1:], flush=True)\n"
    "with open(os.path.join('outputs', 'total.txt'), 'w') as f: f.write(str(total))\n"
    "os.makedirs('logs', exist_ok=True)\n"
    "open('logs/driver.txt', 'w').write('driver log\\n')\n"
    "with open(os.environ['CTARGET_METRICS_FILE'], 'a') as m:\n"
    "    m.write(json.dumps({'name': 'total', 'value': total}) + '\\n')\n"
    "sys.exit(int(sys.argv[2]))\n";

static void t06_pyspark_run_completes(void)
{
    NEED_WS();
    char *src = tl_tmpdir("hdisrc");
    write_at(src, "app.py", APP);
    char *id = submit_pyspark(W, src, "app.py", NULL, A("10", "0", "it's \"quoted\""));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 0);
    json_t *j = rl_show(W, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 0);
    char *want = fmt("--name ctarget-%s", id);
    const char *cmd = jstr(json_object_get(j, "handle"), "spark_command");
    CU_ASSERT(tl_contains(cmd, "spark-submit --deploy-mode client"));
    CU_ASSERT(tl_contains(cmd, want));
    if (!tl_contains(cmd, want))
        printf("handle: %s\n", json_dumps(json_object_get(j, "handle"), 0));
    json_decref(j);
    char *log = run_logs(W, id);
    /* the launcher's own line, then the driver's */
    CU_ASSERT(tl_contains(log, "spark-submit (emulator) 3.3.0: master=yarn deploy-mode=client"));
    char *name = fmt("app ctarget-%s master yarn total 285", id);
    CU_ASSERT(tl_contains(log, name));
    CU_ASSERT(tl_contains(log, "cwd-has-app True args ['10', '0', 'it\\'s \"quoted\"']"));
    if (!tl_contains(log, name))
        printf("log:\n%s\n", log);
    char *out = rl_run_file(W, id, "outputs/total.txt");
    char *txt = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(txt ? txt : "", "285");
    char *lg = rl_run_file(W, id, "logs/driver.txt");
    char *lt = tl_read_file(lg);
    CU_ASSERT_STRING_EQUAL(lt ? lt : "", "driver log\n");
    tl_result r = TL_CT(W, "run", "metrics", id, "-o", "json");
    CU_ASSERT(tl_contains(r.out, "285"));
    tl_result_free(&r);
    free(lt), free(lg), free(txt), free(out), free(name), free(log), free(want);
    free(id), free(src);
}

static void t07_failing_run(void)
{
    NEED_WS();
    char *src = tl_tmpdir("hdisrc-f");
    write_at(src, "app.py", APP);
    char *id = submit_pyspark(W, src, "app.py", NULL, A("3", "7"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 1);
    json_t *j = rl_show(W, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 7);
    CU_ASSERT(tl_contains(jstr(j, "reason"), "exit code 7"));
    json_decref(j);
    char *log = run_logs(W, id);
    CU_ASSERT(tl_contains(log, "total 5"));
    free(log);
    free(id);
    /* a driver that raises: its traceback is in the log */
    write_at(src, "boom.py", "import pyspark\nraise RuntimeError('no such table: sales')\n");
    id = submit_pyspark(W, src, "boom.py", NULL, NULL);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 1);
    log = run_logs(W, id);
    CU_ASSERT(tl_contains(log, "RuntimeError: no such table: sales"));
    free(log);
    free(id), free(src);
}

static void t08_plain_python_run_refused(void)
{
    NEED_WS();
    char *src = tl_tmpdir("hdisrc-py");
    write_at(src, "app.py", "print('ran')\n");
    tl_result r = TL_CT(W, "run", "submit", "--target", "spark1", "--source", src, "--script",
                        "app.py", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    char *id = strdup(jstr(j, "id"));
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 1);
    j = rl_show(W, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "framework pyspark"));
    if (!tl_contains(jstr(j, "reason"), "framework pyspark"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    char *log = run_logs(W, id);
    CU_ASSERT(!tl_contains(log, "ran"));
    free(log);
    free(id), free(src);
}

static void t09_cancel_kills_the_driver(void)
{
    NEED_WS();
    char *marker = fmt("hdimark-%ld-%lld", (long)getpid(), tl_now_ms());
    char *src = tl_tmpdir("hdisrc-c");
    write_at(src, "app.py", "import sys, time\nimport pyspark\nprint('up', flush=True)\n"
                            "for _ in range(1200): time.sleep(0.05)\n");
    char *id = submit_pyspark(W, src, "app.py", A("--cancel-grace", "1"), A(marker));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(W, id, "up\n", 60000));
    CU_ASSERT_EQUAL(pgrep(marker), 0);
    tl_result r = TL_CT(W, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 130);
    int gone = 0;
    for (int i = 0; i < 600 && !gone; i++) { /* a guard: 30 s */
        gone = pgrep(marker) == 1;
        if (!gone)
            rl_sleep_ms(50);
    }
    CU_ASSERT(gone);
    json_t *j = rl_show(W, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Canceled");
    json_decref(j);
    free(id), free(src), free(marker);
}

/* ---- 3. pipeline steps ---------------------------------------------------------------------- */

static const char STEP[] =
    "import os, sys\n"
    "import pyspark\n"
    "sc = pyspark.SparkContext.getOrCreate()\n"
    "src = os.environ['CTARGET_INPUT_DATA']\n"
    "dst = os.environ['CTARGET_OUTPUT_MODEL']\n"
    "words = open(os.path.join(src, 'words.txt')).read().split()\n"
    "n = sc.parallelize(words).filter(lambda w: w.startswith('s')).count()\n"
    "os.makedirs(dst, exist_ok=True)\n"
    "open(os.path.join(dst, 'count.txt'), 'w').write('%d\\n' % n)\n"
    "print('step', sc.appName, 'memory', sc.getConf().get('spark.executor.memory'),\n"
    "      'helper', __import__('helper').VALUE, 'count', n, flush=True)\n";

static void t10_step_inputs_outputs(void)
{
    NEED_WS();
    char *src = tl_tmpdir("hdistep");
    write_at(src, "step.py", STEP);
    write_at(src, "helper.py", "VALUE = 42\n");
    char *in = tl_path(src, "inputs");
    mkdir(in, 0755);
    char *ind = tl_path(in, "data");
    mkdir(ind, 0755);
    write_at(ind, "words.txt", "spark sql stream map reduce scala\n");
    char err[1024];
    char *id = sl_step_submit(W, "spark1", src, "step.py", NULL,
                              A("CTARGET_INPUT_DATA=inputs/data", "CTARGET_OUTPUT_MODEL=outputs/model"),
                              "script",
                              "{\"conf\": {\"spark.executor.memory\": \"2g\"}, "
                              "\"py_files\": [\"helper.py\"]}",
                              err, sizeof err);
    if (!id)
        printf("step submit: %s\n", err);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 0);
    char *log = run_logs(W, id);
    char *want = fmt("step ctarget-%s memory 2g helper 42 count 4", id);
    CU_ASSERT(tl_contains(log, want));
    /* the launcher got the step's conf and py_files */
    CU_ASSERT(tl_contains(log, "conf={\"spark.executor.memory\": \"2g\"} py-files=helper.py "
                               "app=step.py"));
    if (!tl_contains(log, want))
        printf("log:\n%s\n", log);
    char *out = rl_run_file(W, id, "outputs/model/count.txt");
    char *txt = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(txt ? txt : "", "4\n");
    free(txt), free(out), free(want), free(log), free(id);
    /* an unknown key of the step fails it, naming the key */
    id = sl_step_submit(W, "spark1", src, "step.py", NULL, NULL, "script",
                        "{\"executor_count\": 3}", err, sizeof err);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 1);
    json_t *j = rl_show(W, id);
    CU_ASSERT(tl_contains(jstr(j, "reason"), "unknown hdinsight key 'executor_count'"));
    if (!tl_contains(jstr(j, "reason"), "executor_count"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    free(id);
    /* a wrong type too */
    id = sl_step_submit(W, "spark1", src, "step.py", NULL, NULL, "script",
                        "{\"py_files\": \"helper.py\"}", err, sizeof err);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(W, id, 60), 1);
    j = rl_show(W, id);
    CU_ASSERT(tl_contains(jstr(j, "reason"), "py_files must be a list"));
    json_decref(j);
    free(id);
    free(ind), free(in), free(src);
}

static void t11_no_secrets_in_the_workspace(void)
{
    NEED_WS();
    /* the fixture key's passphrase never given here; the fixture's password and the key
     * file's contents must not be copied anywhere under the workspace */
    char *pw = sf_read(&S, "password");
    if (pw) {
        /* the login password of every target here: in the secret store only, never in the
         * targets' records, run records, handles, logs or outputs */
        char *hit = grep_outside_store(W, pw);
        CU_ASSERT_PTR_NULL(hit);
        if (hit)
            printf("the password was written to %s\n", hit);
        free(hit);
    }
    char *kf = sf_file(&S, "id_ed25519");
    char *key = tl_read_file(kf);
    CU_ASSERT_FATAL(key != NULL);
    const char *body = strchr(key, '\n'); /* the first base64 line of the private key */
    CU_ASSERT_FATAL(body != NULL);
    char line[65] = "";
    snprintf(line, sizeof line, "%.60s", body + 1);
    char *hit = tl_tree_grep(W, line, strlen(line));
    CU_ASSERT_PTR_NULL(hit);
    free(hit), free(key), free(kf), free(pw);
}


/* ---- 4. Livy batches (mode=livy) ---------------------------------------------------------- */

static tl_result livy_attach(const char *w, const char *name, const char *pw_var)
{
    char *url = fmt("livy_url=https://127.0.0.1:%d", azfix_service_port(&FX, "livy"));
    char *pw = fmt("livy_password=env:%s", pw_var);
    char *root = mkroot("hdiroot-livy");
    tl_result r = login_attach(w, name, root, 1,
                               A("--set", "mode=livy", "--set", url, "--set",
                                 "livy_username=admin", "--set", pw));
    free(root), free(pw), free(url);
    return r;
}

static const char *lws(void)
{
    if (LWS)
        return LWS;
    if (!S_ok || !FX_ok)
        return NULL;
    char *w = tl_tmpdir("hdilws");
    tl_result r = livy_attach(w, "livy1", "HDI_LIVY_PW");
    TL_ASSERT_EXIT(r, 0);
    if (r.status == 0)
        LWS = w;
    else
        free(w);
    tl_result_free(&r);
    return LWS;
}

#define NEED_LWS()                                                                       \
    const char *L = lws();                                                               \
    if (!L)                                                                              \
        fprintf(stderr, "test_hdinsight: no Livy target (emulator: %s)\n",               \
                FX_ok ? "up" : "did not start");                                         \
    CU_ASSERT_FATAL(L != NULL)

static char *livy_submit(const char *w, const char *src, const char *script,
                         const char *const args[])
{
    char *cfgdir = tl_tmpdir("hdicfg");
    write_at(cfgdir, "run.json", "{\"framework\": \"pyspark\"}");
    char *cfg = tl_path(cfgdir, "run.json");
    const char *argv[40];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--config", cfg, "--target", "livy1", "--source",
                           src, "--script", script, "--env-var", "GREETING=hej", "-o", "json"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    if (args) {
        argv[n++] = "--";
        for (size_t i = 0; args[i] && n < 38; i++)
            argv[n++] = args[i];
    }
    argv[n] = NULL;
    tl_result r = tl_ctarget_run(w, NULL, NULL, argv);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    const char *id = json_string_value(json_object_get(j, "id"));
    char *out = id ? strdup(id) : NULL;
    json_decref(j);
    tl_result_free(&r);
    free(cfg), free(cfgdir);
    return out;
}

static void t12_livy_attach(void)
{
    CU_ASSERT_FATAL(S_ok && FX_ok);
    char *w = tl_tmpdir("hdilws-bad");
    tl_result r = livy_attach(w, "livy-bad", "HDI_LIVY_BAD");
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(tl_contains(r.err, "refused livy_username 'admin'"));
    CU_ASSERT(one_line(r.err));
    CU_ASSERT(!tl_contains(r.err, getenv("HDI_LIVY_BAD")));
    tl_result_free(&r);
    /* mode=livy without livy_url */
    char *root = mkroot("hdiroot-livy");
    r = login_attach(w, "livy-nourl", root, 1, A("--set", "mode=livy"));
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "mode=livy needs livy_url"));
    tl_result_free(&r);
    free(root), free(w);
    NEED_LWS();
    r = TL_CT(L, "compute", "status", "livy1", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "livy_batches"));
    tl_result_free(&r);
}

static const char LIVY_APP[] =
    "import json, os, sys\n"
    "from pyspark import SparkContext\n"
    "sc = SparkContext.getOrCreate()  # the name is spark-submit's --name\n"
    "n = sc.parallelize(range(int(sys.argv[1]))).sum()\n"
    "print('livy', sc.appName, 'deploy', os.environ.get('SPARK_DEPLOY_MODE'), 'sum', n,\n"
    "      'greeting', os.environ.get('GREETING'), 'args', sys.argv[1:], flush=True)\n"
    "out = os.environ['CTARGET_OUTPUTS_DIR']\n"
    "open(os.path.join(out, 'sum.txt'), 'w').write(str(n))\n"
    "with open(os.environ['CTARGET_METRICS_FILE'], 'a') as m:\n"
    "    m.write(json.dumps({'name': 'sum', 'value': n}) + '\\n')\n"
    "if len(sys.argv) > 2: raise RuntimeError(sys.argv[2])\n";

static void t13_livy_run_completes_through_429_and_500(void)
{
    NEED_LWS();
    /* the first two polls meet a 429 (Retry-After: 0), the next one a 500: the core's HTTP
     * client retries them */
    CU_ASSERT_EQUAL(azfix_reset(&FX), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"livy\",\"method\":\"GET\",\"path\":"
                                     "\"^/batches/[0-9]+$\",\"status\":429,\"retry_after\":0,"
                                     "\"count\":2}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"livy\",\"method\":\"GET\",\"path\":"
                                     "\"^/batches/[0-9]+$\",\"status\":500,\"count\":1}"), 0);
    char *src = tl_tmpdir("hdilsrc");
    write_at(src, "app.py", LIVY_APP);
    char *id = livy_submit(L, src, "app.py", A("10"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 0);
    json_t *j = rl_show(L, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_is_integer(json_object_get(json_object_get(j, "handle"), "livy_batch_id")));
    json_decref(j);
    char *log = run_logs(L, id);
    char *want = fmt("livy ctarget-%s deploy cluster sum 45 greeting hej args ['10']", id);
    CU_ASSERT(tl_contains(log, want));
    CU_ASSERT(tl_contains(log, "spark-submit (emulator) 3.3.0: master=yarn deploy-mode=cluster"));
    if (!tl_contains(log, want))
        printf("log:\n%s\n", log);
    char *out = rl_run_file(L, id, "outputs/sum.txt");
    char *txt = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(txt ? txt : "", "45");
    tl_result r = TL_CT(L, "run", "metrics", id, "-o", "json");
    CU_ASSERT(tl_contains(r.out, "45"));
    tl_result_free(&r);
    /* the faults were met, and the run still completed */
    CU_ASSERT(azfix_count(&FX, "GET", "^/batches/[0-9]+$") >= 4);
    json_t *reqs = azfix_requests(&FX);
    int s429 = 0, s500 = 0;
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q) {
        long long st = json_integer_value(json_object_get(q, "status"));
        s429 += st == 429;
        s500 += st == 500;
    }
    json_decref(reqs);
    CU_ASSERT_EQUAL(s429, 2);
    CU_ASSERT_EQUAL(s500, 1);
    free(txt), free(out), free(want), free(log), free(id), free(src);
}

static void t14_livy_failing_batch(void)
{
    NEED_LWS();
    char *src = tl_tmpdir("hdilsrc-f");
    write_at(src, "app.py", LIVY_APP);
    char *id = livy_submit(L, src, "app.py", A("3", "table sales is missing"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 1);
    json_t *j = rl_show(L, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "is dead: RuntimeError: table sales is missing"));
    if (!tl_contains(jstr(j, "reason"), "RuntimeError"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    free(id), free(src);
}

static const char LIVY_SLEEP[] = "import sys, time\nimport pyspark\nprint('up', flush=True)\n"
                                 "for _ in range(1200): time.sleep(0.05)\n";

static int livy_alive(int batch)
{
    json_t *st = azfix_state(&FX);
    json_t *h = json_object_get(st, "hdinsight");
    int alive = 0;
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(h, "batches"), i, b)
        if (json_integer_value(json_object_get(b, "id")) == batch)
            alive |= json_is_true(json_object_get(b, "alive"));
    json_array_foreach(json_object_get(h, "deleted"), i, b)
        if (json_integer_value(json_object_get(b, "id")) == batch)
            alive |= json_is_true(json_object_get(b, "alive"));
    json_decref(st);
    return alive;
}

static void t15_livy_cancel(void)
{
    NEED_LWS();
    char *src = tl_tmpdir("hdilsrc-c");
    write_at(src, "app.py", LIVY_SLEEP);
    char *id = livy_submit(L, src, "app.py", NULL);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(L, id, "up\n", 60000));
    json_t *j = rl_show(L, id);
    int batch = (int)json_integer_value(json_object_get(json_object_get(j, "handle"),
                                                        "livy_batch_id"));
    json_decref(j);
    CU_ASSERT(livy_alive(batch));
    tl_result r = TL_CT(L, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 130);
    CU_ASSERT(!livy_alive(batch)); /* DELETE waited for the process */
    CU_ASSERT(azfix_count(&FX, "DELETE", "^/batches/[0-9]+$") >= 1);
    free(id), free(src);
}

static void t16_livy_batch_killed_on_the_cluster(void)
{
    NEED_LWS();
    char *src = tl_tmpdir("hdilsrc-k");
    write_at(src, "app.py", LIVY_SLEEP);
    char *id = livy_submit(L, src, "app.py", NULL);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(L, id, "up\n", 60000));
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"livy\",\"action\":\"kill_batch\"}"), 0);
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 1);
    json_t *j = rl_show(L, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "was killed: the cluster lost its node"));
    if (!tl_contains(jstr(j, "reason"), "killed"))
        printf("reason: %s\n", jstr(j, "reason"));
    json_decref(j);
    free(id), free(src);
}

static void t20_livy_submit_through_429_and_500_once(void)
{
    NEED_LWS();
    /* POST /batches meets a 500, then a 429: the plugin checks Livy has no batch of the run's
     * name before posting again, so exactly one batch runs */
    CU_ASSERT_EQUAL(azfix_reset(&FX), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"livy\",\"method\":\"POST\",\"path\":"
                                     "\"^/batches$\",\"status\":500,\"count\":1}"), 0);
    CU_ASSERT_EQUAL(azfix_fault(&FX, "{\"target\":\"livy\",\"method\":\"POST\",\"path\":"
                                     "\"^/batches$\",\"status\":429,\"retry_after\":0,"
                                     "\"count\":1}"), 0);
    char *src = tl_tmpdir("hdilsrc-p");
    write_at(src, "app.py", LIVY_APP);
    char *id = livy_submit(L, src, "app.py", A("5"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 0);
    CU_ASSERT_EQUAL(azfix_count(&FX, "POST", "^/batches$"), 3);
    char *name = fmt("ctarget-%s", id);
    json_t *st = azfix_state(&FX);
    int same = 0;
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(json_object_get(st, "hdinsight"), "batches"), i, b)
        same += !strcmp(jstr(b, "name"), name);
    json_decref(st);
    CU_ASSERT_EQUAL(same, 1);
    /* and one POST created it */
    json_t *reqs = azfix_requests(&FX);
    int created = 0;
    json_array_foreach(reqs, i, b)
        created += !strcmp(jstr(b, "method"), "POST") &&
                   json_integer_value(json_object_get(b, "status")) == 201;
    json_decref(reqs);
    CU_ASSERT_EQUAL(created, 1);
    free(name), free(id), free(src);
}

static void t22_livy_step(void)
{
    NEED_LWS();
    char *src = tl_tmpdir("hdilstep");
    write_at(src, "step.py", STEP);
    write_at(src, "helper.py", "VALUE = 43\n");
    char *in = tl_path(src, "inputs");
    mkdir(in, 0755);
    char *ind = tl_path(in, "data");
    mkdir(ind, 0755);
    write_at(ind, "words.txt", "sun sea sky rock\n");
    char err[1024];
    char *id = sl_step_submit(L, "livy1", src, "step.py", NULL,
                              A("CTARGET_INPUT_DATA=inputs/data", "CTARGET_OUTPUT_MODEL=outputs/model"),
                              "script",
                              "{\"conf\": {\"spark.executor.memory\": \"3g\"}, "
                              "\"py_files\": [\"helper.py\"]}",
                              err, sizeof err);
    if (!id)
        printf("step submit: %s\n", err);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 0);
    char *log = run_logs(L, id);
    char *want = fmt("step ctarget-%s memory 3g helper 43 count 3", id);
    CU_ASSERT(tl_contains(log, want));
    if (!tl_contains(log, want))
        printf("log:\n%s\n", log);
    char *out = rl_run_file(L, id, "outputs/model/count.txt");
    char *txt = tl_read_file(out);
    CU_ASSERT_STRING_EQUAL(txt ? txt : "", "3\n");
    free(txt), free(out), free(want), free(log), free(id);
    free(ind), free(in), free(src);
}

/* a Livy batch survives its run monitor being killed: the new monitor reattaches to the same
 * batch (its id is in the handle) and no second batch is posted */
static void t23_livy_monitor_killed(void)
{
    NEED_LWS();
    char *src = tl_tmpdir("hdilsrc-m");
    write_at(src, "app.py", "import os, sys, time\nimport pyspark\nprint('up', flush=True)\n"
                            "for _ in range(2400):\n"
                            "    if os.path.exists(sys.argv[1]): break\n"
                            "    time.sleep(0.05)\n"
                            "print('went on', flush=True)\n");
    char *gd = tl_tmpdir("hdigo");
    char *go = tl_path(gd, "go");
    CU_ASSERT_EQUAL(azfix_reset(&FX), 0);
    char *id = livy_submit(L, src, "app.py", A(go));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_log(L, id, "up\n", 60000));
    json_t *j = rl_show(L, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT(pid > 1);
    if (pid > 1) {
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 100 && kill((pid_t)pid, 0) == 0; i++)
            rl_sleep_ms(10);
    }
    tl_write_file(go, "");
    CU_ASSERT_EQUAL(wait_run(L, id, 60), 0);
    j = rl_show(L, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char *log = run_logs(L, id);
    CU_ASSERT(tl_contains(log, "went on"));
    free(log);
    json_t *reqs = azfix_requests(&FX);
    int created = 0;
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q)
        created += !strcmp(jstr(q, "method"), "POST") &&
                   json_integer_value(json_object_get(q, "status")) == 201;
    json_decref(reqs);
    CU_ASSERT_EQUAL(created, 1);
    free(id), free(go), free(gd), free(src);
}

static void t17_livy_password_never_stored(void)
{
    NEED_LWS();
    const char *pw = getenv("HDI_LIVY_PW");
    CU_ASSERT_FATAL(pw && strlen(pw) > 8);
    /* given as env:VAR, its value is nowhere in the workspace, store included */
    char *hit = tl_tree_grep(L, pw, strlen(pw));
    CU_ASSERT_PTR_NULL(hit);
    if (hit)
        printf("the Livy password was written to %s\n", hit);
    free(hit);
    /* and the HTTP basic credentials were sent (the emulator accepted them) but never
     * logged: the request log holds no Authorization header */
    json_t *reqs = azfix_requests(&FX);
    char *text = json_dumps(reqs, 0);
    CU_ASSERT(!tl_contains(text, "Basic "));
    free(text);
    json_decref(reqs);
}

/* ---- 5. resource_id through ARM ----------------------------------------------------------- */

static tl_result arm_attach(const char *w, const char *name, const char *cluster,
                            const char *const extra[])
{
    char *rid = fmt("resource_id=/subscriptions/%s/resourceGroups/%s/providers/"
                    "Microsoft.HDInsight/clusters/%s", FX.subscription_id, FX.resource_group,
                    cluster);
    char *root = mkroot("hdiroot-arm");
    char *rr = fmt("remote_root=%s", root);
    char *u = fmt("username=%s", USER);
    char *arm = fmt("arm_endpoint=%s", FX.arm), *aad = fmt("aad_endpoint=%s", FX.aad);
    char *ten = fmt("tenant_id=%s", FX.tenant_id), *cid = fmt("client_id=%s", FX.client_id);
    const char *argv[64];
    size_t n = 0;
    const char *fixed[] = {"compute", "attach", name, "--type", "hdinsight", "--set", rid,
                           "--set", u, "--set", rr, "--set", arm, "--set", aad, "--set", ten,
                           "--set", cid, "--set", "client_secret=env:HDI_SP_SECRET",
                           "--accept-new-host-key"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    char *in = NULL;
    if (PW) {
        argv[n++] = "--password-stdin";
        in = fmt("%s\n", PW);
    } else {
        char *kf = sf_file(&S, "id_ed25519");
        argv[n++] = "--set";
        argv[n++] = in = fmt("private_key_file=%s", kf); /* freed below, not stdin */
        free(kf);
    }
    for (size_t i = 0; extra && extra[i] && n < 62; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    tl_result r = tl_ctarget_run(w, PW ? in : NULL, NULL, argv);
    free(in), free(cid), free(ten), free(aad), free(arm), free(u), free(rr), free(root), free(rid);
    return r;
}

static void t18_resource_id_through_arm(void)
{
    CU_ASSERT_FATAL(S_ok && FX_ok);
    char *cfg = fmt("{\"hdinsight_clusters\": {\"spark-emu\": {\"ssh\": \"127.0.0.1:%d\"}, "
                    "\"hadoop-emu\": {\"ssh\": \"127.0.0.1:%d\", \"kind\": \"HADOOP\"}}}",
                    S.port, S.port);
    CU_ASSERT_EQUAL_FATAL(azfix_config(&FX, cfg), 0);
    free(cfg);
    char *w = tl_tmpdir("hdiaws");
    /* an unknown cluster: ARM's own answer */
    tl_result r = arm_attach(w, "spark-none", "nope", NULL);
    TL_ASSERT_EXIT(r, 4);
    CU_ASSERT(tl_contains(r.err, "ResourceNotFound"));
    CU_ASSERT(tl_contains(r.err, "'nope'"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);
    /* not a Spark cluster */
    r = arm_attach(w, "spark-hadoop", "hadoop-emu", NULL);
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "is a HADOOP cluster"));
    tl_result_free(&r);
    /* the Spark cluster: its SSH and Livy endpoints from ARM, Livy batches on it */
    r = arm_attach(w, "livy1", "spark-emu",
                   A("--set", "mode=livy", "--set", "livy_password=env:HDI_LIVY_PW"));
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(w, "compute", "show", "livy1", "-o", "json");
    CU_ASSERT(tl_contains(r.out, "\"ssh_endpoint\": \"127.0.0.1\""));
    char *lu = fmt("\"livy_endpoint\": \"https://127.0.0.1:%d/livy\"",
                   azfix_service_port(&FX, "livy"));
    CU_ASSERT(tl_contains(r.out, lu));
    CU_ASSERT(tl_contains(r.out, "\"cluster_version\": \"3.5.1000.0\""));
    CU_ASSERT(tl_contains(r.out, "3.3.0"));
    if (!tl_contains(r.out, lu))
        tl_dump("compute show", &r);
    tl_result_free(&r);
    free(lu);
    CU_ASSERT(azfix_count(&FX, "GET", "/providers/Microsoft.HDInsight/clusters/spark-emu$") >= 1);
    char *src = tl_tmpdir("hdiasrc");
    write_at(src, "app.py", LIVY_APP);
    char *id = livy_submit(w, src, "app.py", A("4"));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(wait_run(w, id, 60), 0);
    char *log = run_logs(w, id);
    CU_ASSERT(tl_contains(log, "deploy cluster sum 6"));
    free(log);
    /* the service principal's secret is nowhere in the workspace */
    char *hit = tl_tree_grep(w, FX.client_secret, strlen(FX.client_secret));
    CU_ASSERT_PTR_NULL(hit);
    free(hit);
    free(id), free(src), free(w);
}

/* ---- 6. the official client against the emulator ------------------------------------------ */

static int has_hdinsight_sdk(const char *dir)
{
    if (!dir || !*dir)
        return 0;
    char *p = fmt("%s/@azure/arm-hdinsight/package.json", dir);
    int ok = access(p, R_OK) == 0;
    free(p);
    return ok;
}

static void t19_official_client(void)
{
    CU_ASSERT_FATAL(FX_ok);
    const char *nm = azfix_node_modules(), *own = getenv("HDI_NODE_MODULES");
    if (!has_hdinsight_sdk(nm) && !has_hdinsight_sdk(own)) {
        /* tests/emulators/package.json carries @azure/arm-hdinsight: its absence is a broken
         * install, not a case to skip */
        printf("official client: @azure/arm-hdinsight is in neither %s nor HDI_NODE_MODULES "
               "(npm ci of tests/emulators/package-lock.json)\n",
               nm ? nm : "(no node_modules)");
        CU_FAIL_FATAL("the official HDInsight client is not installed");
    }
    char *cfg = fmt("{\"hdinsight_clusters\": {\"sdk-spark\": {\"ssh\": \"127.0.0.1:%d\"}}}", S.port);
    CU_ASSERT_EQUAL_FATAL(azfix_config(&FX, cfg), 0);
    free(cfg);
    char *script = fmt("%s/tests/emulators/sdk/hdinsight.mjs", tl_srcdir());
    const char *argv[] = {"node", script, NULL};
    const char *env[64];
    size_t n = 0;
    for (char **e = FX.env; e && *e && n < 56; e++)
        env[n++] = *e;
    char *e1 = fmt("HDI_CLUSTER=sdk-spark"), *e2 = fmt("HDI_SSH_PORT=%d", S.port);
    char *e3 = fmt("HDI_LIVY_PORT=%d", azfix_service_port(&FX, "livy"));
    char *e4 = fmt("HDI_NODE_MODULES=%s", has_hdinsight_sdk(nm) ? nm : own);
    env[n++] = e1, env[n++] = e2, env[n++] = e3, env[n++] = e4;
    env[n] = NULL;
    tl_result r = tl_exec(argv, NULL, env);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "hdinsight.mjs: 8 passed, 0 failed"));
    if (r.status != 0 || !tl_contains(r.out, "0 failed"))
        tl_dump("hdinsight.mjs", &r);
    else
        printf("official client: %s", strstr(r.out, "hdinsight.mjs:"));
    tl_result_free(&r);
    free(e1), free(e2), free(e3), free(e4), free(script);
}

/* ---- 7. the emulator held to Livy's document and the official HDInsight example --------- */

static void t21_emulator_held_to_the_documents(void)
{
    CU_ASSERT_FATAL(FX_ok);
    char *script = fmt("%s/tests/emulators/hdinsight_selftest.py", tl_srcdir());
    const char *argv[] = {"python3", script, FX.dir, NULL};
    tl_result r = tl_exec(argv, NULL, (const char *const *)FX.env);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, ", 0 failed"));
    if (r.status != 0)
        tl_dump("hdinsight_selftest.py", &r);
    else
        printf("emulator: %s", strstr(r.out, "hdinsight_selftest:"));
    tl_result_free(&r);
    free(script);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void add(CU_pSuite s)
{
    char *home = tl_tmpdir("hdihome");
    setenv("HOME", home, 1);
    free(home);
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    char *path = fmt("%s/plugins/hdinsight/.libs%s%s", tl_builddir(), pp && *pp ? ":" : "",
                     pp ? pp : "");
    setenv("CTARGET_PLUGIN_PATH", path, 1);
    free(path);
    /* the head node's sessions find the spark-submit emulator first on their PATH */
    char *env = fmt("PATH=%s/tests/servers/spark:/usr/local/bin:/usr/bin:/bin", tl_srcdir());
    setenv("SSHD_SETENV", env, 1);
    free(env);
    char *dir = tl_tmpdir("hdisshd");
    S_ok = sf_start(&S, dir, 0) == 0;
    if (!S_ok)
        fprintf(stderr, "test_hdinsight: the sshd fixture did not start in %s\n", dir);
    free(dir);
    unsetenv("SSHD_SETENV");
    /* log in as the fixture's own account (made when the test runs as root; it has no shell
     * start-up files, unlike root's, whose .bashrc may run `pyenv rehash` and wait a minute
     * on another session's lock); its authorized_keys are the fixture's too */
    USER = S_ok ? sf_read(&S, "password_user") : NULL;
    PW = USER ? sf_read(&S, "password") : NULL;
    if (!USER || !PW) {
        /* not root: the fixture logs in this user by key */
        const struct passwd *me = getpwuid(getuid());
        free(USER), free(PW);
        USER = strdup(me ? me->pw_name : "root"), PW = NULL;
    }
    printf("logging in as %s\n", USER);
    /* the Azure emulator, for its Livy data plane (no Azurite needed) */
    azfix_opts o = {.no_azurite = 1};
    FX_ok = azfix_start(&FX, &o) == 0;
    if (FX_ok) {
        setenv("CTARGET_CA_BUNDLE", FX.ca_bundle, 1);
        char *pf = tl_path(FX.dir, "livy_password");
        char *pw = tl_read_file(pf);
        if (pw) {
            pw[strcspn(pw, "\n")] = '\0';
            setenv("HDI_LIVY_PW", pw, 1);
        }
        FX_ok = pw != NULL && azfix_service_port(&FX, "livy") > 0;
        free(pw), free(pf);
        setenv("HDI_LIVY_BAD", "not-the-livy-password-Q7", 1);
        setenv("HDI_SP_SECRET", FX.client_secret, 1);
    }

    TL_ADD(s, t01_attach_records_spark);
    TL_ADD(s, t02_unknown_host_key_refused);
    TL_ADD(s, t03_bad_password_refused_and_not_stored);
    TL_ADD(s, t04_missing_spark_submit);
    TL_ADD(s, t05_double_attach_and_create_refused);
    TL_ADD(s, t06_pyspark_run_completes);
    TL_ADD(s, t07_failing_run);
    TL_ADD(s, t08_plain_python_run_refused);
    TL_ADD(s, t09_cancel_kills_the_driver);
    TL_ADD(s, t10_step_inputs_outputs);
    TL_ADD(s, t11_no_secrets_in_the_workspace);
    TL_ADD(s, t12_livy_attach);
    TL_ADD(s, t13_livy_run_completes_through_429_and_500);
    TL_ADD(s, t14_livy_failing_batch);
    TL_ADD(s, t15_livy_cancel);
    TL_ADD(s, t16_livy_batch_killed_on_the_cluster);
    TL_ADD(s, t20_livy_submit_through_429_and_500_once);
    TL_ADD(s, t22_livy_step);
    TL_ADD(s, t23_livy_monitor_killed);
    TL_ADD(s, t17_livy_password_never_stored);
    TL_ADD(s, t18_resource_id_through_arm);
    TL_ADD(s, t19_official_client);
    TL_ADD(s, t21_emulator_held_to_the_documents);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "hdinsight", add);
}
