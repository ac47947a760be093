/* The slurm plugin end to end: the real ctarget command and plugin against a real single-node
 * Slurm (munged, slurmctld, slurmd from Debian's slurm-wlm; tests/servers/slurm.sh) and, for
 * the login-node mode, a real OpenSSH server (tests/servers/sshd.sh).
 *
 * The program first moves itself into a private network namespace (unshare(CLONE_NEWNET)):
 * slurmctld and slurmd cannot be told which address to bind, and inside it only loopback
 * exists.  Everything runs in there: the daemons, sshd, every ctarget command and run
 * monitor.  Where that or the cluster cannot start, every test fails saying so (never an
 * empty pass).  The daemons are stopped by their PIDs at exit.
 *
 * HOME is a scratch directory, so local-mode run directories (remote_root ~/.ctarget) and
 * ~/.ssh are the test's own. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runlib.h"
#include "slurmfix.h"
#include "sshfix.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

static sx_slurm X;
static int X_ok;
static char X_why[512] = "the Slurm fixture was not started";
static sf_sshd S;
static int S_ok;
static char *WS;      /* workspace with target "slc" (local mode, partition debug) */
static char *HOME_DIR;

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

#define NEED_SLURM()                                                                     \
    do {                                                                                 \
        if (!X_ok)                                                                       \
            fprintf(stderr, "test_slurm: no Slurm cluster: %s\n", X_why);                \
        CU_ASSERT_FATAL(X_ok);                                                           \
    } while (0)

static void write_at(const char *dir, const char *name, const char *content)
{
    char *p = tl_path(dir, name);
    CU_ASSERT_EQUAL(tl_write_file(p, content), 0);
    free(p);
}

/* a source directory holding one file */
static char *source(const char *name, const char *content)
{
    char *d = tl_tmpdir("src");
    write_at(d, name, content);
    return d;
}

/* run submit --target T --source SRC --script SCRIPT -o json OPTS... [-- ARGS...] */
static tl_result submit(const char *ws, const char *target, const char *src, const char *script,
                        const char *const opts[], const char *const args[],
                        const char *const env[])
{
    const char *argv[96];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--target", target, "--source", src, "--script",
                           script, "-o", "json"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    for (size_t i = 0; opts && opts[i] && n < 80; i++)
        argv[n++] = opts[i];
    if (args) {
        argv[n++] = "--";
        for (size_t i = 0; args[i] && n < 94; i++)
            argv[n++] = args[i];
    }
    argv[n] = NULL;
    return tl_ctarget_run(ws, NULL, env, argv);
}

static char *id_of(const tl_result *r)
{
    json_error_t e;
    json_t *j = json_loads(r->out ? r->out : "", 0, &e);
    const char *s = json_string_value(json_object_get(j, "id"));
    char *id = s ? strdup(s) : NULL;
    if (!id)
        tl_dump("no run id in the output", r);
    json_decref(j);
    return id;
}

static char *submit_id(const char *ws, const char *target, const char *src, const char *script,
                       const char *const opts[], const char *const args[])
{
    tl_result r = submit(ws, target, src, script, opts, args, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    return id;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* `run wait` (bounded) then `run show`; the caller releases the JSON */
static json_t *wait_show(const char *ws, const char *id, int timeout_s)
{
    char t[16];
    snprintf(t, sizeof t, "%d", timeout_s);
    tl_result r = TL_CT(ws, "run", "wait", id, "--timeout", t);
    tl_result_free(&r);
    return rl_show(ws, id);
}

static char *run_logs(const char *ws, const char *id)
{
    tl_result r = TL_CT(ws, "run", "logs", id);
    char *out = r.status == 0 && r.out ? strdup(r.out) : NULL;
    if (!out)
        tl_dump("run logs", &r);
    tl_result_free(&r);
    return out;
}

static long long job_of(json_t *run)
{
    return json_integer_value(json_object_get(json_object_get(run, "handle"), "job_id"));
}

/* squeue's count of jobs named NAME (-1 when squeue fails); all: any state it remembers */
static int squeue_count(const char *name, int all)
{
    char *n = fmt("--name=%s", name);
    const char *argv[] = {"squeue", "-h", n, all ? "--states=all" : "-o", all ? "-o" : "%i",
                          all ? "%i" : NULL, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    free(n);
    int count = -1;
    if (r.status == 0) {
        count = 0;
        for (const char *p = r.out; p && *p; p++)
            count += *p == '\n';
    } else {
        tl_dump("squeue", &r);
    }
    tl_result_free(&r);
    return count;
}

/* the error is one line, "ctarget: error: ...\n", and the last thing printed (progress
 * lines such as "asking Slurm" may come before it) */
static int one_line(const char *s)
{
    const char *e = s ? strstr(s, "ctarget: error: ") : NULL;
    if (!e || strstr(e + 1, "ctarget: error: "))
        return 0;
    const char *nl = strchr(e, '\n');
    return nl && nl[1] == '\0';
}

/* ---- 1. attach refusals --------------------------------------------------------------------- */

static void t01_attach_refusals(void)
{
    NEED_SLURM();
    char *ws = tl_tmpdir("ws-refuse");
    char *empty = tl_tmpdir("nobin");
    char *bin = fmt("slurm_bin_dir=%s", empty);
    tl_result r = TL_CT(ws, "compute", "attach", "nosbatch", "--type", "slurm", "--set", bin);
    TL_ASSERT_EXIT(r, 4);
    CU_ASSERT(tl_contains(r.err, "sbatch not found in"));
    CU_ASSERT(tl_contains(r.err, "slurm_bin_dir"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);

    /* no sbatch on PATH at all */
    const char *env[] = {"PATH=/nonexistent", NULL};
    r = tl_ctarget_run(ws, NULL, env, A("compute", "attach", "nopath", "--type", "slurm"));
    TL_ASSERT_EXIT(r, 4);
    CU_ASSERT(tl_contains(r.err, "sbatch not found on PATH"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);

    r = TL_CT(ws, "compute", "attach", "badpart", "--type", "slurm", "--set", "partition=nope");
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "partition 'nope' does not exist"));
    CU_ASSERT(tl_contains(r.err, "debug, high"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);

    /* extra options are an allow-list: nothing that takes over the job's output or script */
    r = TL_CT(ws, "compute", "attach", "badopt", "--type", "slurm", "--set",
              "sbatch_options=--exclusive,--output=/tmp/x");
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "'--output=/tmp/x' is not allowed"));
    CU_ASSERT(one_line(r.err));
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "badqos", "--type", "slurm", "--set", "qos=a;rm -rf");
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "qos 'a;rm -rf' is not a Slurm name"));
    tl_result_free(&r);

    /* nothing half-written: none of the refused targets exists */
    r = TL_CT(ws, "compute", "list", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(!tl_contains(r.out, "nosbatch") && !tl_contains(r.out, "badpart"));
    tl_result_free(&r);

    /* and a good one records what it found */
    r = TL_CT(ws, "compute", "attach", "good", "--type", "slurm", "--set", "partition=high",
              "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "\"slurm_version\": \"slurm"));
    CU_ASSERT(tl_contains(r.out, "\"default_partition\": \"debug\""));
    tl_result_free(&r);
    free(bin);
    free(empty);
    free(ws);
}

/* ---- 2. examples/train end to end ----------------------------------------------------------- */

static void t02_train_completed(void)
{
    NEED_SLURM();
    char *src = tl_path(tl_srcdir(), "examples/train");
    char *id = submit_id(WS, "slc", src, "train.py", NULL, A("--epochs", "3", "--samples", "300"));
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = wait_show(WS, id, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "COMPLETED");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 0);
    CU_ASSERT(job_of(j) > 0);
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(j, "handle"), "mode"), "local");
    char *ev = rl_events(j);
    CU_ASSERT(ev && tl_contains(ev, "Queued") && tl_contains(ev, "Running") &&
              tl_contains(ev, "Completed"));
    free(ev);
    json_decref(j);
    char *log = run_logs(WS, id);
    CU_ASSERT(log && tl_contains(log, "epoch 1/3: loss") && tl_contains(log, "epoch 3/3: loss"));
    CU_ASSERT(log && tl_contains(log, "model written to"));
    free(log);
    char *model = rl_run_file(WS, id, "outputs/model.json");
    char *text = tl_read_file(model);
    CU_ASSERT(text && tl_contains(text, "\"weights\""));
    free(text);
    free(model);
    tl_result r = TL_CT(WS, "run", "metrics", id, "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "loss") && tl_contains(r.out, "accuracy"));
    json_t *m = tl_json(&r);
    CU_ASSERT(json_is_array(m) && json_array_size(m) == 6); /* 3 epochs x 2 names */
    json_decref(m);
    tl_result_free(&r);
    free(id);
    free(src);
}

/* ---- 3. arguments byte for byte ------------------------------------------------------------- */

static const char ARGV_PY[] =
    "import json, os, sys\n"
    "h = lambda s: os.fsencode(s).hex()\n"
    "o = {'argv': [h(a) for a in sys.argv[1:]], 'weird': h(os.environ.get('WEIRD', ''))}\n"
    "open(os.path.join(os.environ['CTARGET_OUTPUTS_DIR'], 'argv.json'), 'w').write(json.dumps(o))\n"
    "print('argc', len(sys.argv) - 1)\n";

static const char *const NASTY[] = {
    "it's", "say \"hi\"", "a b  c", "$(touch /tmp/ctarget-pwned)", "`id`", "$HOME", "~/x",
    "line1\nline2\n", "*", "semi;colon|pipe&amp", "back\\slash", "", "-", "--", "tab\there",
    "\xc3\xa9t\xc3\xa9 \xe2\x9c\x93", "#not a comment", "'", "\\'", NULL};

static void check_argv(const char *ws, const char *id)
{
    char *p = rl_run_file(ws, id, "outputs/argv.json");
    char *text = tl_read_file(p);
    json_error_t e;
    json_t *j = text ? json_loads(text, 0, &e) : NULL;
    CU_ASSERT_FATAL(j != NULL);
    json_t *argv = json_object_get(j, "argv");
    size_t n = 0;
    while (NASTY[n])
        n++;
    CU_ASSERT_EQUAL(json_array_size(argv), n);
    for (size_t i = 0; i < n && i < json_array_size(argv); i++) {
        const char *hex = json_string_value(json_array_get(argv, i));
        char want[256] = "";
        for (size_t k = 0; NASTY[i][k]; k++)
            snprintf(want + 2 * k, sizeof want - 2 * k, "%02x", (unsigned char)NASTY[i][k]);
        if (!hex || strcmp(hex, want))
            fprintf(stderr, "argument %zu: got %s, want %s\n", i, hex ? hex : "(none)", want);
        CU_ASSERT(hex && !strcmp(hex, want));
    }
    /* WEIRD=a 'b' $(c) "d" */
    CU_ASSERT_STRING_EQUAL(jstr(j, "weird"), "6120276227202428632920226422");
    json_decref(j);
    free(text);
    free(p);
}

static void t03_argument_quoting(void)
{
    NEED_SLURM();
    char *src = source("argv.py", ARGV_PY);
    unlink("/tmp/ctarget-pwned");
    char *id = submit_id(WS, "slc", src, "argv.py",
                         A("--env-var", "WEIRD=a 'b' $(c) \"d\""), NASTY);
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = wait_show(WS, id, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    json_decref(j);
    check_argv(WS, id);
    CU_ASSERT(access("/tmp/ctarget-pwned", F_OK) != 0); /* nothing was ever run by a shell */
    free(id);
    free(src);
}

/* ---- 4. a failing script's exit code -------------------------------------------------------- */

static void t04_failed_exit_code(void)
{
    NEED_SLURM();
    char *src = source("fail.py", "import sys\nprint('about to fail', flush=True)\nsys.exit(3)\n");
    char *id = submit_id(WS, "slc", src, "fail.py", NULL, NULL);
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = wait_show(WS, id, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "FAILED");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "exit code 3"));
    json_decref(j);
    char *log = run_logs(WS, id);
    CU_ASSERT(log && tl_contains(log, "about to fail"));
    free(log);
    free(id);
    free(src);
}

/* ---- 5. cancel -------------------------------------------------------------------------------- */

static void t05_cancel(void)
{
    NEED_SLURM();
    char *src = source("sleep.py", "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n");
    char *id = submit_id(WS, "slc", src, "sleep.py", NULL, NULL);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(WS, id, "Running", 60000));
    char *name = fmt("ctarget-%s", id);
    CU_ASSERT_EQUAL(squeue_count(name, 0), 1);
    tl_result r = TL_CT(WS, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    json_t *j = wait_show(WS, id, 60);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Canceled");
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "CANCELLED");
    char *ev = rl_events(j);
    CU_ASSERT(ev && tl_contains(ev, "CancelRequested Canceled"));
    free(ev);
    json_decref(j);
    CU_ASSERT_EQUAL(squeue_count(name, 0), 0); /* nothing left in the queue */
    free(name);
    free(id);
    free(src);
}

/* ---- 6. the monitor killed: reattached, logs byte for byte ---------------------------------- */

static const char GATED_PY[] =
    "import os, sys, time\n"
    "for i in range(1, 11):\n"
    "    print('line %d' % i, flush=True)\n"
    "t0 = time.time()\n"
    "while not os.path.exists(sys.argv[1]) and time.time() - t0 < 300:\n"
    "    time.sleep(0.05)\n"
    "for i in range(11, 21):\n"
    "    print('line %d' % i, flush=True)\n";

static void t06_monitor_killed(void)
{
    NEED_SLURM();
    char *src = source("gated.py", GATED_PY);
    char *gate_dir = tl_tmpdir("gate");
    char *gate = tl_path(gate_dir, "go");
    char *id = submit_id(WS, "slc", src, "gated.py", NULL, A(gate));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(WS, id, "Running", 60000));
    /* the first half is in the log before the monitor dies */
    char *std = rl_run_file(WS, id, "std_log.txt");
    for (int i = 0; i < 600; i++) {
        char *t = tl_read_file(std);
        int have = t && tl_contains(t, "line 10\n");
        free(t);
        if (have)
            break;
        rl_sleep_ms(50);
    }
    json_t *j = rl_show(WS, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    json_decref(j);
    CU_ASSERT_FATAL(pid > 1);
    CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
    for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
        rl_sleep_ms(10);
    CU_ASSERT_EQUAL(tl_write_file(gate, "go"), 0);
    j = wait_show(WS, id, 120); /* `run wait` notices the dead monitor and starts another */
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    char want[512] = "";
    for (int i = 1; i <= 20; i++)
        snprintf(want + strlen(want), sizeof want - strlen(want), "line %d\n", i);
    char *log = run_logs(WS, id);
    CU_ASSERT(log && !strcmp(log, want)); /* every byte once, none twice */
    if (log && strcmp(log, want))
        fprintf(stderr, "log after reattach:\n%s", log);
    free(log);
    free(std);
    free(id);
    free(gate);
    free(gate_dir);
    free(src);
}

/* ---- 7. preemption: requeued, counted as attempt 2 ----------------------------------------- */

static const char PREEMPT_PY[] =
    "import os, time\n"
    "a = os.environ.get('CTARGET_ATTEMPT')\n"
    "print('attempt', a, 'restarts', os.environ.get('SLURM_RESTART_COUNT'), flush=True)\n"
    "# (Slurm sets SLURM_RESTART_COUNT only in a requeued job)\n"
    "if a == '1':\n"
    "    time.sleep(600)\n"
    "print('finished on attempt', a, flush=True)\n";

static void t07_preempted_requeued(void)
{
    NEED_SLURM();
    /* the run takes the whole node (2 CPUs) in partition debug; a job in partition high
     * (PriorityTier 10) needs the node too, so Slurm preempts the run and requeues it */
    tl_result r = TL_CT(WS, "compute", "attach", "slc-low", "--type", "slurm", "--set",
                        "partition=debug", "--set", "cpus_per_task=2");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src = source("preempt.py", PREEMPT_PY);
    char *id = submit_id(WS, "slc-low", src, "preempt.py", NULL, NULL);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(WS, id, "Running", 60000));
    char *std = rl_run_file(WS, id, "std_log.txt");
    for (int i = 0; i < 600; i++) {
        char *t = tl_read_file(std);
        int have = t && tl_contains(t, "attempt 1");
        free(t);
        if (have)
            break;
        rl_sleep_ms(50);
    }
    r = tl_exec(A("sbatch", "--parsable", "-p", "high", "-c", "2", "-J", "preemptor", "-o",
                  "/dev/null", "--wrap", "sleep 1"), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* Slurm holds a requeued job for two minutes (BeginTime); the test lets it start as
     * soon as the node is free again, as an administrator would */
    json_t *j = rl_show(WS, id);
    char *jid = fmt("%lld", job_of(j));
    json_decref(j);
    int requeued = 0;
    for (int i = 0; i < 600 && !requeued; i++) {
        r = tl_exec(A("scontrol", "show", "job", "-o", jid), NULL, NULL);
        requeued = tl_contains(r.out, "Restarts=1") && tl_contains(r.out, "Reason=BeginTime");
        tl_result_free(&r);
        if (!requeued)
            rl_sleep_ms(50);
    }
    CU_ASSERT(requeued);
    char *upd = fmt("JobId=%s", jid);
    r = tl_exec(A("scontrol", "update", upd, "StartTime=now"), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(upd);
    free(jid);
    j = wait_show(WS, id, 100);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "attempt")), 2);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "handle"),
                                                       "attempt")), 2);
    json_decref(j);
    char *log = run_logs(WS, id);
    CU_ASSERT(log && tl_contains(log, "attempt 1 restarts None\n"));
    CU_ASSERT(log && tl_contains(log, "attempt 2 restarts 1\n"));
    CU_ASSERT(log && tl_contains(log, "finished on attempt 2\n"));
    CU_ASSERT(log && tl_contains(log, "DUE TO PREEMPTION"));
    free(log);
    free(std);
    free(id);
    free(src);
}

/* ---- 8. login node over SSH ------------------------------------------------------------------ */

static void t08_login_node_ssh(void)
{
    NEED_SLURM();
    CU_ASSERT_FATAL(S_ok);
    char *ws = tl_tmpdir("ws-ssh");
    char *root = tl_tmpdir("loginroot");
    char *port = fmt("ssh_port=%d", S.port);
    char *key = sf_file(&S, "id_ed25519");
    char *keyset = fmt("private_key_file=%s", key);
    char *rootset = fmt("remote_root=%s", root);
    /* an unknown host key is refused before anything is sent */
    tl_result r = TL_CT(ws, "compute", "attach", "login", "--type", "slurm", "--set",
                        "address=127.0.0.1", "--set", port, "--set", "username=root", "--set",
                        keyset, "--set", rootset);
    TL_ASSERT_EXIT(r, 9);
    CU_ASSERT(tl_contains(r.err, S.fingerprint));
    CU_ASSERT(tl_contains(r.err, "--accept-new-host-key"));
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "login", "--type", "slurm", "--set", "address=127.0.0.1",
              "--set", port, "--set", "username=root", "--set", keyset, "--set", rootset,
              "--set", "partition=debug", "--accept-new-host-key", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "\"mode\": \"login-node\""));
    tl_result_free(&r);

    char *src = tl_path(tl_srcdir(), "examples/train");
    char *id = submit_id(ws, "login", src, "train.py", NULL, A("--epochs", "2", "--samples",
                                                                "200"));
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = wait_show(ws, id, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(jstr(json_object_get(j, "handle"), "mode"), "login-node");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "handle"), "shipped_blobs"))
              >= 1);
    json_decref(j);
    char *log = run_logs(ws, id);
    CU_ASSERT(log && tl_contains(log, "epoch 2/2: loss"));
    free(log);
    char *model = rl_run_file(ws, id, "outputs/model.json");
    CU_ASSERT(access(model, F_OK) == 0);
    free(model);
    tl_result m = TL_CT(ws, "run", "metrics", id, "-o", "json");
    CU_ASSERT(tl_contains(m.out, "accuracy"));
    tl_result_free(&m);

    /* the same arguments arrive byte for byte through SSH, the agent and sbatch */
    char *asrc = source("argv.py", ARGV_PY);
    char *aid = submit_id(ws, "login", asrc, "argv.py",
                          A("--env-var", "WEIRD=a 'b' $(c) \"d\""), NASTY);
    CU_ASSERT_FATAL(aid != NULL);
    j = wait_show(ws, aid, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    json_decref(j);
    check_argv(ws, aid);
    /* a resubmit of the unchanged source ships no blob */
    char *id2 = submit_id(ws, "login", src, "train.py", NULL, A("--epochs", "1", "--samples",
                                                                 "50"));
    CU_ASSERT_FATAL(id2 != NULL);
    j = wait_show(ws, id2, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "handle"),
                                                       "shipped_blobs")), 0);
    json_decref(j);
    free(id2);
    free(aid);
    free(asrc);
    free(id);
    free(src);
    free(rootset);
    free(keyset);
    free(key);
    free(port);
    free(root);
    free(ws);
}

/* ---- 10. the controller forgot the job: the script's own record decides ------------------- */

static const char FORGOT_PY[] =
    "import os, sys, time\n"
    "print('before', flush=True)\n"
    "t0 = time.time()\n"
    "while not os.path.exists(sys.argv[1]) and time.time() - t0 < 300:\n"
    "    time.sleep(0.05)\n"
    "print('after', flush=True)\n"
    "sys.exit(5)\n";

/* The job ends while no monitor watches, then slurmctld loses its state (restarted with -c:
 * every job forgotten).  scontrol no longer knows the job, sacct
 * has no accounting here, so the new monitor takes the exit status the batch script recorded
 * in the run directory: Failed with exit code 5, the log byte for byte. */
static void t10_controller_forgot_job(void)
{
    NEED_SLURM();
    char *src = source("forgot.py", FORGOT_PY);
    char *gate_dir = tl_tmpdir("gate");
    char *gate = tl_path(gate_dir, "go");
    char *id = submit_id(WS, "slc", src, "forgot.py", NULL, A(gate));
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(WS, id, "Running", 60000));
    json_t *j = rl_show(WS, id);
    long pid = (long)json_integer_value(json_object_get(json_object_get(j, "monitor"), "pid"));
    CU_ASSERT(job_of(j) > 0);
    json_decref(j);
    CU_ASSERT_FATAL(pid > 1);
    CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
    for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
        rl_sleep_ms(10);
    CU_ASSERT_EQUAL(tl_write_file(gate, "go"), 0);
    char *rd = fmt("%s/.ctarget/runs/%s/slurm_exit", HOME_DIR, id);
    for (int i = 0; i < 1200 && access(rd, F_OK) != 0; i++)
        rl_sleep_ms(50);
    CU_ASSERT_FATAL(access(rd, F_OK) == 0);
    rl_sleep_ms(200); /* the job's end reaches the controller */
    CU_ASSERT_FATAL(sx_forget(&X) == 0);
    j = wait_show(WS, id, 120);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 5);
    CU_ASSERT_STRING_EQUAL(jstr(j, "native_state"), "FAILED");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "recorded by the batch script"));
    json_decref(j);
    char *log = run_logs(WS, id);
    CU_ASSERT(log && !strcmp(log, "before\nafter\n"));
    free(log);
    free(rd);
    free(id);
    free(gate);
    free(gate_dir);
    free(src);
}

/* ---- 11. a pip environment in local mode ------------------------------------------------- */

/* Built by remotevm's agent run as a local process, cached in remote_root/envs by the file's
 * hash: the job runs the environment's interpreter, and a second run reuses it. */
static void t11_local_pip_env(void)
{
    NEED_SLURM();
    char *src = source("env.py", "import sys\nprint('prefix', sys.prefix)\n");
    char *reqdir = tl_tmpdir("req");
    char *req = tl_path(reqdir, "requirements.txt");
    CU_ASSERT_EQUAL(tl_write_file(req, "# nothing to install: a venv offline\n"), 0);
    char *envs = fmt("%s/.ctarget/envs/", HOME_DIR);
    char *ids[2] = {0};
    for (int k = 0; k < 2; k++) {
        ids[k] = submit_id(WS, "slc", src, "env.py", A("--requirements", req), NULL);
        CU_ASSERT_FATAL(ids[k] != NULL);
        json_t *j = wait_show(WS, ids[k], 180);
        CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
        CU_ASSERT(tl_contains(jstr(json_object_get(j, "handle"), "python"), envs));
        json_decref(j);
        char *log = run_logs(WS, ids[k]);
        char *want = fmt("prefix %s", envs);
        CU_ASSERT(log && tl_contains(log, want));
        /* built once, then reused */
        CU_ASSERT(log && tl_contains(log, "[ctarget] building environment") == (k == 0));
        free(want);
        free(log);
    }
    free(ids[0]);
    free(ids[1]);
    free(envs);
    free(req);
    free(reqdir);
    free(src);
}

/* ---- 9. 100 concurrent submissions ----------------------------------------------------------- */

#define N_CONC 100

static void t09_hundred_concurrent(void)
{
    NEED_SLURM();
    char *src = source("quick.py", "print('ok')\n");
    char *outdir = tl_tmpdir("conc");
    pid_t pids[N_CONC];
    /* every submission at once, each its own ctarget process (and run monitor) */
    for (int i = 0; i < N_CONC; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            char *out = fmt("%s/%d.json", outdir, i);
            int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd < 0)
                _exit(126);
            dup2(fd, 1);
            int dn = open("/dev/null", O_WRONLY);
            dup2(dn, 2);
            setenv("CTARGET_POLL_INTERVAL_MS", "500", 1);
            execl(tl_ctarget(), "ctarget", "--workspace", WS, "run", "submit", "--target",
                  "slc", "--source", src, "--script", "quick.py", "-o", "json",
                  (char *)NULL);
            _exit(127);
        }
        CU_ASSERT_FATAL(pids[i] > 0);
    }
    int ok = 0;
    char *ids[N_CONC] = {0};
    for (int i = 0; i < N_CONC; i++) {
        int st = 0;
        waitpid(pids[i], &st, 0);
        char *out = fmt("%s/%d.json", outdir, i);
        char *text = tl_read_file(out);
        json_error_t e;
        json_t *j = text ? json_loads(text, 0, &e) : NULL;
        const char *id = json_string_value(json_object_get(j, "id"));
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && id) {
            ids[i] = strdup(id);
            ok++;
        }
        json_decref(j);
        free(text);
        free(out);
    }
    CU_ASSERT_EQUAL(ok, N_CONC);
    /* every run ends Completed, with its own job */
    long long jobs[N_CONC];
    int completed = 0;
    long long t0 = tl_now_ms();
    for (int i = 0; i < N_CONC; i++) {
        jobs[i] = 0;
        if (!ids[i])
            continue;
        long left = 300 - (long)((tl_now_ms() - t0) / 1000);
        json_t *j = wait_show(WS, ids[i], left > 1 ? (int)left : 1);
        completed += !strcmp(jstr(j, "status"), "Completed");
        jobs[i] = job_of(j);
        json_decref(j);
    }
    CU_ASSERT_EQUAL(completed, N_CONC);
    int dup = 0;
    for (int i = 0; i < N_CONC; i++)
        for (int k = i + 1; k < N_CONC; k++)
            dup += jobs[i] && jobs[i] == jobs[k];
    CU_ASSERT_EQUAL(dup, 0);
    /* and Slurm saw exactly one job per run: none lost, none twice */
    int once = 0;
    for (int i = 0; i < N_CONC; i++) {
        if (!ids[i])
            continue;
        char *name = fmt("ctarget-%s", ids[i]);
        once += squeue_count(name, 1) == 1;
        free(name);
        free(ids[i]);
    }
    CU_ASSERT_EQUAL(once, N_CONC);
    fprintf(stderr, "test_slurm: %d concurrent submissions: %d submitted, %d completed, "
            "%d with exactly one Slurm job, %.1f s\n", N_CONC, ok, completed, once,
            (double)(tl_now_ms() - t0) / 1000.0);
    free(outdir);
    free(src);
}

/* ---- setup ------------------------------------------------------------------------------------ */

static void add(CU_pSuite s)
{
    HOME_DIR = tl_tmpdir("slurmhome");
    setenv("HOME", HOME_DIR, 1);
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    char *path = fmt("%s/plugins/slurm/.libs%s%s", tl_builddir(), pp && *pp ? ":" : "",
                     pp ? pp : "");
    setenv("CTARGET_PLUGIN_PATH", path, 1);
    free(path);
    if (sx_netns(X_why, sizeof X_why) == 0) {
        char *dir = tl_tmpdir("slurm");
        X_ok = sx_start(&X, dir) == 0;
        if (!X_ok)
            snprintf(X_why, sizeof X_why, "tests/servers/slurm.sh could not start the "
                     "cluster in %s (is slurm-wlm installed? see scripts/install-deps.sh)", dir);
        free(dir);
    }
    if (X_ok) {
        /* login sessions find the cluster's configuration as this process does */
        char *setenv_line = fmt("SLURM_CONF=%s", X.conf);
        setenv("SSHD_SETENV", setenv_line, 1);
        free(setenv_line);
        char *sdir = tl_tmpdir("sshd");
        S_ok = sf_start(&S, sdir, 0) == 0;
        free(sdir);
        WS = tl_tmpdir("ws");
        tl_result r = TL_CT(WS, "compute", "attach", "slc", "--type", "slurm", "--set",
                            "partition=debug");
        if (r.status != 0) {
            tl_dump("attach slc", &r);
            X_ok = 0;
            snprintf(X_why, sizeof X_why, "compute attach slc failed");
        }
        tl_result_free(&r);
    }
    if (!X_ok)
        fprintf(stderr, "test_slurm: every test fails: %s\n", X_why);

    TL_ADD(s, t01_attach_refusals);
    TL_ADD(s, t02_train_completed);
    TL_ADD(s, t03_argument_quoting);
    TL_ADD(s, t04_failed_exit_code);
    TL_ADD(s, t05_cancel);
    TL_ADD(s, t06_monitor_killed);
    TL_ADD(s, t07_preempted_requeued);
    TL_ADD(s, t08_login_node_ssh);
    TL_ADD(s, t10_controller_forgot_job);
    TL_ADD(s, t11_local_pip_env);
    TL_ADD(s, t09_hundred_concurrent);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "slurm", add);
}
