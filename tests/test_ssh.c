/* The remotevm plugin end to end: the real ctarget command, the real plugin (libssh2) and a
 * real OpenSSH server on 127.0.0.1 (tests/servers/sshd.sh).
 *
 * Every ctarget call runs with HOME set to an empty scratch home (so ~/.ssh/known_hosts
 * trusts nothing) and with the build tree's remotevm plugin on CTARGET_PLUGIN_PATH.  Targets
 * use a scratch remote_root (a fresh one where a test needs a cold blob cache), so the
 * "machine" side of every run can be inspected directly on this file system. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runlib.h"
#include "sshfix.h"
#include "testlib.h"

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})

static sf_sshd S;          /* the program's fixture */
static sf_sshd S2, S3;     /* tests 3 and 14 change or stop their server: their own */
static int S_ok;
static char *RUN_WS;       /* a workspace with target "vmrun" on S, for the run tests */
static char *RUN_ROOT;

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

static void write_at(const char *dir, const char *name, const char *content)
{
    char *p = tl_path(dir, name);
    CU_ASSERT_EQUAL(tl_write_file(p, content), 0);
    free(p);
}

/* compute attach NAME --type remotevm ... against server s as user (key: a file name in the
 * fixture directory, or NULL), remote_root root; extra: more arguments (may be NULL). */
static tl_result attach(const char *ws, const char *name, const sf_sshd *s, int port,
                        const char *user, const char *key, const char *root, int accept,
                        const char *const extra[], const char *stdin_data,
                        const char *const env[])
{
    const char *argv[64];
    char *own[8];
    size_t n = 0, k = 0;
    argv[n++] = "compute";
    argv[n++] = "attach";
    argv[n++] = name;
    argv[n++] = "--type";
    argv[n++] = "remotevm";
    argv[n++] = "--set";
    argv[n++] = "address=127.0.0.1";
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("ssh_port=%d", port > 0 ? port : s->port);
    argv[n++] = "--set";
    argv[n++] = own[k++] = fmt("username=%s", user ? user : "root");
    if (key) {
        char *kf = sf_file(s, key);
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
    tl_result r = tl_ctarget_run(ws, stdin_data, env, argv);
    for (size_t i = 0; i < k; i++)
        free(own[i]);
    return r;
}

/* run submit --target T --source SRC --script train.py -o json OPTS... [-- ARGS...] */
static tl_result submit(const char *ws, const char *target, const char *src,
                        const char *const opts[], const char *const args[],
                        const char *const env[])
{
    const char *argv[96];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--target", target, "--source", src, "--script",
                           "train.py", "-o", "json"};
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

/* The run id in a submit's JSON (owned), or NULL with the output shown. */
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

static json_t *out_json(const tl_result *r)
{
    json_error_t e;
    json_t *j = json_loads(r->out ? r->out : "", JSON_DECODE_ANY, &e);
    if (!j)
        tl_dump("stdout is not JSON", r);
    return j;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static long long handle_int(json_t *run, const char *k)
{
    return json_integer_value(json_object_get(json_object_get(run, "handle"), k));
}

/* A source directory holding train.py with this text. */
static char *source(const char *train_py)
{
    char *src = tl_tmpdir("sshsrc");
    write_at(src, "train.py", train_py);
    return src;
}

/* The run-test workspace: target "vmrun" on the program's fixture, attached once. */
static const char *run_ws(void)
{
    if (RUN_WS)
        return RUN_WS;
    if (!S_ok)
        return NULL;
    char *ws = tl_tmpdir("sshrunws");
    RUN_ROOT = tl_tmpdir("sshrunroot");
    tl_result r = attach(ws, "vmrun", &S, 0, NULL, "id_ed25519", RUN_ROOT, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    if (r.status == 0)
        RUN_WS = ws;
    else
        free(ws);
    tl_result_free(&r);
    return RUN_WS;
}

/* `run wait ID --timeout S`: its exit status. */
static int wait_run(const char *ws, const char *id, int seconds)
{
    char t[16];
    snprintf(t, sizeof t, "%d", seconds);
    tl_result r = TL_CT(ws, "run", "wait", id, "--timeout", t);
    int st = r.status;
    if (st != 0 && st != 1 && st != 130)
        tl_dump("run wait", &r);
    tl_result_free(&r);
    return st;
}

/* Wait until the run's monitor has finished (cleanup included: a run's shipped files reach
 * the machine's cache in its cleanup, after the final state is recorded). */
static int monitor_done(const char *ws, const char *id, long timeout_ms)
{
    for (long long end = tl_now_ms() + timeout_ms; tl_now_ms() < end;) {
        json_t *j = rl_show(ws, id);
        int alive = json_is_true(json_object_get(json_object_get(j, "monitor"), "alive"));
        json_decref(j);
        if (!alive)
            return 1;
        rl_sleep_ms(30);
    }
    return 0;
}

/* `run logs ID` (owned). */
static char *run_logs(const char *ws, const char *id)
{
    tl_result r = TL_CT(ws, "run", "logs", id);
    TL_ASSERT_EXIT(r, 0);
    char *s = r.out;
    r.out = NULL;
    tl_result_free(&r);
    return s;
}

/* Every file under ROOT/blobs hashes (sha256) to its own name: the number of files, or -1
 * after printing the ones that do not. */
static int blobs_check(const char *root)
{
    char *cmd = fmt("cd '%s' && find blobs -type f -exec sha256sum {} +", root);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    free(cmd);
    if (r.status != 0) {
        tl_dump("hashing the blobs", &r);
        tl_result_free(&r);
        return -1;
    }
    int n = 0, bad = 0;
    for (char *line = strtok(r.out, "\n"); line; line = strtok(NULL, "\n")) {
        char *sp = strchr(line, ' ');
        const char *name = strrchr(line, '/');
        n++;
        if (!sp || !name || sp - line != 64 || strncmp(line, name + 1, 64) || name[65]) {
            printf("blob does not hash to its name: %s\n", line);
            bad = 1;
        }
    }
    tl_result_free(&r);
    return bad ? -1 : n;
}

static int count_lines(const char *path)
{
    return rl_count_lines(path);
}

/* A script printing "line 1" .. "line 30", one every 0.1 s. */
/* 30 numbered lines; after line 10 the script waits for the file named by its first
 * argument (at most 120 s, a guard), so a test acts on a run that is certainly mid-way. */
static const char NUMBERED[] = "import os, sys, time\n"
                               "for i in range(1, 31):\n"
                               "    print('line %d' % i, flush=True)\n"
                               "    for _ in range(2400 if i == 10 else 0):\n"
                               "        if os.path.exists(sys.argv[1]): break\n"
                               "        time.sleep(0.05)\n"
                               "    time.sleep(0.02)\n";

static char *numbered_log(void)
{
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    for (int i = 1; i <= 30; i++)
        fprintf(f, "line %d\n", i);
    fclose(f);
    return s;
}

/* ---- 1. attach with ed25519 and ecdsa keys ------------------------------------------------- */

static void check_facts(const char *ws, const char *name)
{
    tl_result r = TL_CT(ws, "compute", "show", name, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    json_t *facts = json_object_get(j, "facts");
    CU_ASSERT(strlen(jstr(facts, "os_name")) > 0);
    CU_ASSERT(!strncmp(jstr(facts, "python3_version"), "3.", 2));
    CU_ASSERT_STRING_EQUAL(jstr(facts, "system"), "Linux");
    if (strcmp(jstr(facts, "system"), "Linux") || !*jstr(facts, "os_name"))
        tl_dump("facts", &r);
    json_decref(j);
    tl_result_free(&r);
}

static void t01_attach_ed25519_and_ecdsa(void)
{
    CU_ASSERT_FATAL(S_ok);
    const char *keys[] = {"id_ed25519", "id_ecdsa"};
    const char *names[] = {"vm-ed", "vm-ec"};
    for (int i = 0; i < 2; i++) {
        /* one workspace each: the same address and port cannot be attached twice */
        char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
        tl_result r = attach(ws, names[i], &S, 0, NULL, keys[i], root, 1, NULL, NULL, NULL);
        TL_ASSERT_EXIT(r, 0);
        tl_result_free(&r);
        check_facts(ws, names[i]);
        free(ws);
        free(root);
    }
}

/* ---- 2. unknown host key -------------------------------------------------------------------- */

static void t02_unknown_host_key(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    char *kh = tl_path(ws, "known_hosts");
    tl_result r = attach(ws, "vm-new", &S, 0, NULL, "id_ed25519", root, 0, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 9);
    CU_ASSERT(tl_contains(r.err, S.fingerprint));
    CU_ASSERT(tl_contains(r.err, "--accept-new-host-key"));
    if (!tl_contains(r.err, S.fingerprint))
        printf("expected fingerprint %s in the message\n", S.fingerprint);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "list", "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_FALSE(tl_contains(r.out, "vm-new"));
    tl_result_free(&r);
    int before = count_lines(kh);
    CU_ASSERT_EQUAL(before, 0); /* nothing trusted by the refused attach */

    r = attach(ws, "vm-new", &S, 0, NULL, "id_ed25519", root, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(count_lines(kh), before + 1);
    /* the line trusts exactly the server's key */
    char *mine = tl_read_file(kh), *theirs = sf_read(&S, "known_hosts");
    char *want = fmt("[127.0.0.1]:%d ", S.port);
    CU_ASSERT(mine && !strncmp(mine, want, strlen(want)));
    if (mine && strchr(mine, '\n'))
        *strchr(mine, '\n') = '\0';
    CU_ASSERT(mine && theirs && *mine && strstr(theirs, mine));
    free(want);
    free(mine);
    free(theirs);
    r = TL_CT(ws, "compute", "list", "--output", "json");
    CU_ASSERT(tl_contains(r.out, "vm-new"));
    tl_result_free(&r);
    free(kh);
    free(ws);
    free(root);
}

/* ---- 3. changed host key -------------------------------------------------------------------- */

static void t03_changed_host_key(void)
{
    char *dir = tl_tmpdir("sshd2");
    CU_ASSERT_FATAL(sf_start(&S2, dir, 0) == 0);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    tl_result r = attach(ws, "vm-rekey", &S2, 0, NULL, "id_ed25519", root, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *old_fp = strdup(S2.fingerprint);
    CU_ASSERT_EQUAL_FATAL(sf_rekey(&S2), 0);
    CU_ASSERT_STRING_NOT_EQUAL(old_fp, S2.fingerprint);
    int logins = sf_count(&S2, "sshd.log", "Accepted ");

    r = TL_CT(ws, "compute", "status", "vm-rekey");
    TL_ASSERT_EXIT(r, 9);
    CU_ASSERT(tl_contains(r.err, "CHANGED"));
    CU_ASSERT(tl_contains(r.err, S2.fingerprint));
    char *kh = tl_path(ws, "known_hosts");
    CU_ASSERT(tl_contains(r.err, kh)); /* the file holding the old key */
    if (!tl_contains(r.err, "CHANGED") || !tl_contains(r.err, kh))
        tl_dump("compute status after rekey", &r);
    tl_result_free(&r);

    /* a run is refused the same way */
    char *src = source("print('never runs')\n");
    r = submit(ws, "vm-rekey", src, A("--wait"), NULL, NULL);
    TL_ASSERT_EXIT(r, 1);
    json_t *j = out_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "CHANGED"));
    if (!tl_contains(jstr(j, "reason"), "CHANGED"))
        tl_dump("submit after rekey", &r);
    json_decref(j);
    tl_result_free(&r);

    /* nothing was sent: no login reached the server since the key changed, and the
     * workspace still holds only the old key */
    rl_sleep_ms(200);
    CU_ASSERT_EQUAL(sf_count(&S2, "sshd.log", "Accepted "), logins);
    CU_ASSERT_EQUAL(count_lines(kh), 1);
    CU_ASSERT_EQUAL(sf_stop(&S2), 0);
    free(kh);
    free(old_fp);
    free(src);
    free(ws);
    free(root);
    free(dir);
}

/* ---- 4. passphrase-protected key ------------------------------------------------------------ */

static void t04_passphrase_key(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    char *pass = sf_read(&S, "passphrase");
    CU_ASSERT_FATAL(pass && *pass);
    const char *const with[] = {"--set", "private_key_passphrase=env:CT_TEST_KEYPASS", NULL};

    /* none given */
    tl_result r = attach(ws, "vm-pass", &S, 0, NULL, "id_ed25519_pass", root, 1, NULL, NULL,
                         NULL);
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(tl_contains(r.err, "private_key_passphrase"));
    tl_result_free(&r);

    /* the wrong one */
    r = attach(ws, "vm-pass", &S, 0, NULL, "id_ed25519_pass", root, 1, with, NULL,
               A("CT_TEST_KEYPASS=not-the-passphrase"));
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(tl_contains(r.err, "wrong passphrase"));
    CU_ASSERT_FALSE(tl_contains(r.err, "not-the-passphrase"));
    tl_result_free(&r);

    /* the right one */
    char *env = fmt("CT_TEST_KEYPASS=%s", pass);
    r = attach(ws, "vm-pass", &S, 0, NULL, "id_ed25519_pass", root, 1, with, NULL, A(env));
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_FALSE(tl_contains(r.out, pass));
    CU_ASSERT_FALSE(tl_contains(r.err, pass));
    tl_result_free(&r);
    /* env: is a reference, never the value */
    char *hit = tl_tree_grep(ws, pass, strlen(pass));
    CU_ASSERT_PTR_NULL(hit);
    if (hit)
        printf("the passphrase was written to %s\n", hit);
    free(hit);
    free(env);
    free(pass);
    free(ws);
    free(root);
}

/* ---- 5. rsa key ----------------------------------------------------------------------------- */

static void t05_rsa_key(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    tl_result r = attach(ws, "vm-rsa", &S, 0, NULL, "id_rsa", root, 1, NULL, NULL, NULL);
    if (r.status == 0) {
        printf("rsa: attached (the library signs with rsa-sha2)\n");
        check_facts(ws, "vm-rsa");
    } else {
        printf("rsa: refused (exit %d)\n", r.status);
        TL_ASSERT_EXIT(r, 7);
        CU_ASSERT(tl_contains(r.err, "SHA-1"));
        CU_ASSERT(tl_contains(r.err, "ssh-rsa"));
        CU_ASSERT(tl_contains(r.err, "ed25519"));
        if (!tl_contains(r.err, "SHA-1"))
            tl_dump("rsa refusal", &r);
    }
    tl_result_free(&r);
    free(ws);
    free(root);
}

/* ---- 6. password ---------------------------------------------------------------------------- */

static void t06_password(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *user = sf_read(&S, "password_user"), *pw = sf_read(&S, "password");
    if (!user || !pw) {
        printf("skipped: the fixture made no password user (it needs root; %s absent)\n",
               user ? "password" : "password_user");
        free(user);
        free(pw);
        return;
    }
    /* every fixture started on this machine sets the one password user's password to its
     * own: starting ours again makes DIR/password the current one */
    CU_ASSERT_EQUAL_FATAL(sf_restart(&S), 0);
    char *ws = tl_tmpdir("sshws"), *parent = tl_tmpdir("sshroot");
    chmod(parent, 0777); /* the password user creates its remote_root there */
    char *root = tl_path(parent, "pw");
    const char *const stdin_flag[] = {"--password-stdin", NULL};
    const char *wrong = "Wr0ng-Passw0rd-q7XzK2";
    char *wrong_in = fmt("%s\n", wrong);
    tl_result r = attach(ws, "vm-pw", &S, 0, user, NULL, root, 1, stdin_flag, wrong_in, NULL);
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT_FALSE(tl_contains(r.out, wrong));
    CU_ASSERT_FALSE(tl_contains(r.err, wrong));
    char *hit = tl_tree_grep(ws, wrong, strlen(wrong));
    CU_ASSERT_PTR_NULL(hit);
    if (hit)
        printf("the rejected password was written to %s\n", hit);
    free(hit);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "list", "--output", "json");
    CU_ASSERT_FALSE(tl_contains(r.out, "vm-pw"));
    tl_result_free(&r);

    char *right_in = fmt("%s\n", pw);
    r = attach(ws, "vm-pw", &S, 0, user, NULL, root, 1, stdin_flag, right_in, NULL);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_FALSE(tl_contains(r.out, pw));
    CU_ASSERT_FALSE(tl_contains(r.err, pw));
    tl_result_free(&r);
    check_facts(ws, "vm-pw");
    free(right_in);
    free(wrong_in);
    free(user);
    free(pw);
    free(ws);
    free(root);
    free(parent);
}

/* ---- 7. refused port; the same machine twice ------------------------------------------------ */

static void t07_refused_port_and_duplicate(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    int hold;
    int port = sf_refusing_port(&hold);
    CU_ASSERT_FATAL(port > 0);
    tl_result r = attach(ws, "vm-closed", &S, port, NULL, "id_ed25519", root, 1, NULL, NULL,
                         NULL);
    close(hold);
    TL_ASSERT_EXIT(r, 8);
    char *p = fmt("%d", port);
    CU_ASSERT(tl_contains(r.err, "127.0.0.1") && tl_contains(r.err, p));
    free(p);
    tl_result_free(&r);

    r = attach(ws, "vm-one", &S, 0, NULL, "id_ed25519", root, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = attach(ws, "vm-two", &S, 0, NULL, "id_ed25519", root, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 5);
    CU_ASSERT(tl_contains(r.err, "vm-one"));
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "list", "--output", "json");
    CU_ASSERT_FALSE(tl_contains(r.out, "vm-two"));
    tl_result_free(&r);
    free(ws);
    free(root);
}

/* ---- 8. a run: logs, outputs, metrics, shipping figures ------------------------------------ */

static void t08_run_completed(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = source(
        "import json, os, sys\n"
        "print('hello from the machine', flush=True)\n"
        "print('second line', flush=True)\n"
        "os.makedirs('outputs', exist_ok=True)\n"
        "with open('outputs/model.txt', 'w') as f:\n"
        "    f.write('weights 1 2 3\\n')\n"
        "with open(os.environ['CTARGET_METRICS_FILE'], 'a') as f:\n"
        "    for i in range(3):\n"
        "        f.write(json.dumps({'name': 'loss', 'value': 1.0 / (i + 1), 'step': i}) + '\\n')\n");
    tl_result r = submit(ws, "vmrun", src, A("--wait"), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 0);
    char *id = id_of(&r);
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);

    char *log = run_logs(ws, id);
    CU_ASSERT(tl_contains(log, "hello from the machine\n"));
    CU_ASSERT(tl_contains(log, "second line\n"));
    free(log);

    char *dest = tl_tmpdir("sshout");
    r = TL_CT(ws, "run", "outputs", id, "-o", dest);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *mp = tl_path(dest, "model.txt");
    char *model = tl_read_file(mp);
    CU_ASSERT(model && !strcmp(model, "weights 1 2 3\n"));
    free(model);
    free(mp);

    r = TL_CT(ws, "run", "metrics", id, "--output", "json");
    TL_ASSERT_EXIT(r, 0);
    j = out_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 3);
    const double want[] = {1.0, 0.5, 1.0 / 3};
    for (size_t i = 0; i < 3 && i < json_array_size(j); i++) {
        json_t *m = json_array_get(j, i);
        CU_ASSERT_STRING_EQUAL(jstr(m, "name"), "loss");
        CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(m, "value")), want[i], 1e-9);
    }
    json_decref(j);
    tl_result_free(&r);

    j = rl_show(ws, id);
    CU_ASSERT(handle_int(j, "shipped_bytes") > 0);
    json_decref(j);
    free(id);
    free(dest);
    free(src);
}

/* ---- 9. a failing script -------------------------------------------------------------------- */

static void t09_run_failed_exit_code(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = source("import sys\nprint('about to fail')\nsys.exit(3)\n");
    tl_result r = submit(ws, "vmrun", src, A("--wait"), NULL, NULL);
    TL_ASSERT_EXIT(r, 1);
    json_t *j = out_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "exit code 3"));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    if (!tl_contains(jstr(j, "reason"), "exit code 3"))
        tl_dump("failing run", &r);
    json_decref(j);
    tl_result_free(&r);
    free(src);
}

/* ---- 10. arguments and environment values byte for byte ------------------------------------ */

static void t10_quoting(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src = source("import json, os, sys\n"
                       "print(json.dumps([sys.argv[1:], os.environ['NASTY']]))\n");
    const char *const args[] = {"two words", "it's", "say \"hi\"", "$(id)", "`id`",
                                "a;b && c || d", "line1\nline2",
                                "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac", "--not-an-option", "",
                                "back\\slash", "*", "~", NULL};
    const char *nasty = "NASTY=sp ace 'sq' \"dq\" $(id) `id` ; && \n caf\xc3\xa9 "
                        "\xe6\x97\xa5\xe6\x9c\xac \\ $HOME";
    /* what Python's json.dumps prints for them */
    const char *want =
        "[[\"two words\", \"it's\", \"say \\\"hi\\\"\", \"$(id)\", \"`id`\", \"a;b && c || d\", "
        "\"line1\\nline2\", \"caf\\u00e9 \\u65e5\\u672c\", \"--not-an-option\", \"\", "
        "\"back\\\\slash\", \"*\", \"~\"], \"sp ace 'sq' \\\"dq\\\" $(id) `id` ; && \\n "
        "caf\\u00e9 \\u65e5\\u672c \\\\ $HOME\"]\n";
    tl_result r = submit(ws, "vmrun", src, A("--env-var", nasty, "--wait"), args, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    char *log = run_logs(ws, id);
    CU_ASSERT_STRING_EQUAL(log, want);
    if (strcmp(log ? log : "", want))
        printf("got:  %s\nwant: %s\n", log, want);
    free(log);
    free(id);
    free(src);
}

/* ---- 11. cancel ----------------------------------------------------------------------------- */

static int pgrep(const char *pattern)
{
    const char *argv[] = {"pgrep", "-f", pattern, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    int st = r.status;
    tl_result_free(&r);
    return st; /* 0: found, 1: none */
}

static void t11_cancel(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *marker = fmt("ctmark-cancel-%ld-%lld", (long)getpid(), tl_now_ms());
    /* the script records SIGTERM, and a watcher of the test its death: the grace it got,
     * measured on the machine (runlib.h); argv[1] doubles as the pgrep marker */
    char *src = source(RL_TERM_WATCH_PY);
    char *od = tl_tmpdir("sshgrace");
    chmod(od, 0755);
    char *out = fmt("%s/%s", od, marker);
    tl_result r = submit(ws, "vmrun", src, A("--cancel-grace", "1"), A(out), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    /* SIGTERM is handled (and survived) from 'up' on */
    int started = 0;
    for (long long end = tl_now_ms() + 60000; !started && tl_now_ms() < end;) {
        char *log = run_logs(ws, id);
        started = tl_contains(log, "up\n");
        free(log);
        if (!started)
            rl_sleep_ms(50);
    }
    CU_ASSERT(started);
    CU_ASSERT_EQUAL(pgrep(marker), 0);
    long watcher = rl_death_watch(out);
    CU_ASSERT(watcher > 0);
    r = TL_CT(ws, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(wait_run(ws, id, 60), 130);
    double grace = rl_term_to_death(out, watcher);
    printf("cancel: SIGTERM to SIGKILL on the machine %.3f s\n", grace);
    CU_ASSERT(grace >= 0.9); /* TERM was survived: the 1 s grace was waited on the machine */
    CU_ASSERT(grace < 5.0);  /* and not the default 10 s */
    int gone = 0;
    for (int i = 0; i < 600 && !gone; i++) { /* a guard: 30 s */
        gone = pgrep(marker) == 1;
        if (!gone)
            rl_sleep_ms(50);
    }
    CU_ASSERT(gone);
    if (!gone) {
        const char *argv[] = {"pgrep", "-af", marker, NULL};
        tl_result p = tl_exec(argv, NULL, NULL);
        printf("still running after the cancel:\n%s", p.out);
        tl_result_free(&p);
    }
    json_t *j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Canceled");
    json_decref(j);
    free(id);
    free(src);
    free(out), free(od);
    free(marker);
}

/* ---- 12. timeout ---------------------------------------------------------------------------- */

static void t12_timeout(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *marker = fmt("ctmark-timeout-%ld-%lld", (long)getpid(), tl_now_ms());
    char *src = source("import time\ntime.sleep(600)\n");
    long long t0 = tl_now_ms();
    tl_result r = submit(ws, "vmrun", src, A("--timeout", "2", "--wait"), A(marker), NULL);
    long long took = tl_now_ms() - t0;
    TL_ASSERT_EXIT(r, 1);
    json_t *j = out_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    CU_ASSERT(tl_contains(jstr(j, "reason"), "timeout after 2 s"));
    if (!tl_contains(jstr(j, "reason"), "timeout after 2 s"))
        tl_dump("timeout run", &r);
    CU_ASSERT(took < 120000); /* not the script's 600 s */
    json_decref(j);
    tl_result_free(&r);
    int gone = 0;
    for (int i = 0; i < 600 && !gone; i++) { /* a guard: 30 s */
        gone = pgrep(marker) == 1;
        if (!gone)
            rl_sleep_ms(50);
    }
    CU_ASSERT(gone);
    free(src);
    free(marker);
}

/* ---- 13. incremental shipping --------------------------------------------------------------- */

static void fill(const char *dir, const char *name, size_t size, unsigned seed)
{
    char *p = tl_path(dir, name);
    FILE *f = fopen(p, "wb");
    CU_ASSERT_FATAL(f != NULL);
    uint64_t x = 0x9e3779b97f4a7c15ULL ^ seed;
    char buf[65536];
    while (size) {
        size_t n = size < sizeof buf ? size : sizeof buf;
        for (size_t i = 0; i < n; i += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + i, &x, n - i < 8 ? n - i : 8);
        }
        CU_ASSERT_EQUAL(fwrite(buf, 1, n, f), n);
        size -= n;
    }
    fclose(f);
    free(p);
}

static void t13_incremental(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    tl_result r = attach(ws, "vm-inc", &S, 0, NULL, "id_ed25519", root, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src = source("print('incremental')\n");
    fill(src, "a.bin", 40000, 1);
    fill(src, "b.bin", 40000, 2);
    fill(src, "c.bin", 40000, 3);
    fill(src, "d.bin", 40000, 4);
    r = submit(ws, "vm-inc", src, A("--wait"), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    json_t *j = out_json(&r);
    CU_ASSERT_EQUAL(handle_int(j, "shipped_blobs"), 5);
    char *id1 = id_of(&r);
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id1 != NULL);
    CU_ASSERT(monitor_done(ws, id1, 20000));
    free(id1);

    fill(src, "c.bin", 40000, 33);
    r = submit(ws, "vm-inc", src, A("--wait"), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    j = out_json(&r);
    json_t *h = json_object_get(j, "handle");
    CU_ASSERT_EQUAL(handle_int(j, "shipped_blobs"), 1);
    CU_ASSERT(json_is_true(json_object_get(h, "shipped_manifest_delta")));
    CU_ASSERT(handle_int(j, "shipped_bytes") > 0 && handle_int(j, "shipped_bytes") < 65536);
    if (handle_int(j, "shipped_blobs") != 1 || !json_is_true(json_object_get(h,
                                                                 "shipped_manifest_delta")))
        tl_dump("second submission", &r);
    printf("incremental: second run shipped %lld bytes\n", handle_int(j, "shipped_bytes"));
    char *id2 = id_of(&r);
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT(id2 && monitor_done(ws, id2, 20000));
    free(id2);
    int n = blobs_check(root);
    CU_ASSERT_EQUAL(n, 6); /* the five, and the changed file's new content */
    free(src);
    free(ws);
    free(root);
}

/* ---- 14. sshd stopped in the middle of an upload -------------------------------------------- */

/* Wait (a 10 s guard) until process pid is stopped by a signal, so it does nothing more. */
static int proc_stopped(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    for (int i = 0; i < 10000; i++) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')'); /* the state follows the command name */
        if (p && p[1] == ' ' && (p[2] == 'T' || p[2] == 't'))
            return 1;
        rl_sleep_ms(1);
    }
    return 0;
}

static void t14_sshd_stopped_mid_upload(void)
{
    char *dir = tl_tmpdir("sshd3");
    CU_ASSERT_FATAL(sf_start(&S3, dir, 0) == 0);
    char *ws = tl_tmpdir("sshws"), *root = tl_tmpdir("sshroot");
    tl_result r = attach(ws, "vm-up", &S3, 0, NULL, "id_ed25519", root, 1, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    /* ~60 MB: three big files and 300 small ones */
    char *src = source("print('shipped whole')\n");
    fill(src, "big1.bin", 20 << 20, 11);
    fill(src, "big2.bin", 20 << 20, 12);
    fill(src, "big3.bin", 10 << 20, 13);
    char *sub = tl_path(src, "small");
    mkdir(sub, 0755);
    for (int i = 0; i < 300; i++) {
        char name[32];
        snprintf(name, sizeof name, "f%03d.dat", i);
        fill(sub, name, 30000 + (size_t)i, 100 + (unsigned)i);
    }
    free(sub);

    r = submit(ws, "vm-up", src, NULL, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(ws, id, "Preparing", 60000));
    /* the upload has begun once the machine unpacks into the run's tree */
    char *tree = fmt("%s/runs/%s/src", root, id);
    char *done_marker = fmt("%s/runs/%s/src.snapshot", root, id);
    json_t *shown = rl_show(ws, id);
    long mon = (long)json_integer_value(json_object_get(json_object_get(shown, "monitor"),
                                                        "pid"));
    json_decref(shown);
    CU_ASSERT_FATAL(mon > 1);
    /* Step the sending monitor: stopped, look, and let it run a moment only while nothing
     * has arrived, so it is frozen in the upload as soon as the tree appears (what it can
     * send in one short step, a few socket buffers, is far less than the 60 MB). */
    struct stat st;
    int begun = 0;
    for (long long end = tl_now_ms() + 60000; !begun && tl_now_ms() < end;) {
        CU_ASSERT_EQUAL_FATAL(kill((pid_t)mon, SIGSTOP), 0);
        CU_ASSERT_FATAL(proc_stopped((pid_t)mon));
        begun = stat(tree, &st) == 0;
        if (!begun) {
            kill((pid_t)mon, SIGCONT);
            rl_sleep_ms(1);
        }
    }
    int mid = begun && stat(done_marker, &st) != 0;
    CU_ASSERT_EQUAL(sf_stop(&S3), 0);
    CU_ASSERT_EQUAL(kill((pid_t)mon, SIGCONT), 0);
    CU_ASSERT(mid);
    if (!mid)
        printf("the upload was not caught in the middle (tree %s)\n", tree);

    CU_ASSERT_EQUAL(wait_run(ws, id, 60), 1);
    json_t *j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Failed");
    const char *reason = jstr(j, "reason");
    printf("after sshd stopped mid-upload: %s, reason: %s\n", jstr(j, "status"), reason);
    CU_ASSERT(tl_contains(reason, "127.0.0.1"));
    json_decref(j);

    /* the same server again, same port and host key: the next submission completes */
    int port = S3.port;
    CU_ASSERT_FATAL(sf_start(&S3, dir, port) == 0);
    CU_ASSERT_EQUAL(S3.port, port);
    r = submit(ws, "vm-up", src, A("--wait"), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    j = out_json(&r);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    char *id2 = id_of(&r);
    json_decref(j);
    tl_result_free(&r);
    CU_ASSERT(id2 && monitor_done(ws, id2, 20000));
    free(id2);
    int n = blobs_check(root);
    CU_ASSERT_EQUAL(n, 304); /* 3 big files, 300 small ones and train.py, all distinct */
    if (n != 304)
        printf("blob check: %d\n", n);
    CU_ASSERT_EQUAL(sf_stop(&S3), 0);
    free(tree);
    free(done_marker);
    free(id);
    free(src);
    free(ws);
    free(root);
    free(dir);
}

/* ---- 15. the monitor killed ----------------------------------------------------------------- */

/* A NUMBERED run on vmrun, submitted and seen waiting after line 10; its id (src, go:
 * owned; create *go to let it go on). */
static char *numbered_running(const char *ws, char **src, char **go)
{
    *src = source(NUMBERED);
    char *gd = tl_tmpdir("sshgo");
    chmod(gd, 0755);
    *go = tl_path(gd, "go");
    free(gd);
    tl_result r = submit(ws, "vmrun", *src, NULL, A(*go), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    int mid = 0;
    for (long long end = tl_now_ms() + 60000; id && !mid && tl_now_ms() < end;) {
        char *log = run_logs(ws, id);
        mid = tl_contains(log, "line 10\n");
        free(log);
        if (!mid)
            rl_sleep_ms(50);
    }
    CU_ASSERT(mid);
    return id;
}

/* The run ends Completed with every numbered line exactly once (after: what happened). */
static void numbered_completed(const char *ws, const char *id, const char *after)
{
    CU_ASSERT_EQUAL(wait_run(ws, id, 60), 0);
    json_t *j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(jstr(j, "status"), "Completed");
    json_decref(j);
    char *log = run_logs(ws, id), *want = numbered_log();
    CU_ASSERT_STRING_EQUAL(log, want);
    if (strcmp(log ? log : "", want))
        printf("log after %s:\n%s", after, log);
    free(want);
    free(log);
}

static void t15_monitor_killed(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src, *go;
    char *id = numbered_running(ws, &src, &go);
    CU_ASSERT_FATAL(id != NULL);
    json_t *j = rl_show(ws, id);
    json_t *m = json_object_get(j, "monitor");
    long pid = (long)json_integer_value(json_object_get(m, "pid"));
    int alive = json_is_true(json_object_get(m, "alive"));
    json_decref(j);
    CU_ASSERT(alive && pid > 1);
    if (pid > 1) {
        CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
        for (int i = 0; i < 100 && kill((pid_t)pid, 0) == 0; i++)
            rl_sleep_ms(10);
    }
    tl_write_file(go, "");
    numbered_completed(ws, id, "the monitor was killed");
    j = rl_show(ws, id);
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(j, "monitor"), "starts")) >= 2);
    json_decref(j);
    free(id);
    free(src);
    free(go);
}

/* ---- 16. sshd restarted while the run goes on ----------------------------------------------- */

static void t16_sshd_restarted_mid_run(void)
{
    const char *ws = run_ws();
    CU_ASSERT_FATAL(ws != NULL);
    char *src, *go;
    char *id = numbered_running(ws, &src, &go);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT_EQUAL(sf_restart(&S), 0);
    tl_write_file(go, "");
    numbered_completed(ws, id, "sshd restarted");
    free(id);
    free(src);
    free(go);
}

/* ---- 17. ssh-agent -------------------------------------------------------------------------- */

/* ssh_agent=true logs in with the keys of the agent at $SSH_AUTH_SOCK (a real ssh-agent
 * holding the fixture's ecdsa key); without the variable the message says what to do. */
static void t17_ssh_agent(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *dir = tl_tmpdir("sshagent");
    char *sock = tl_path(dir, "agent.sock");
    const char *start[] = {"ssh-agent", "-a", sock, NULL};
    tl_result r = tl_exec(start, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    const char *p = strstr(r.out ? r.out : "", "SSH_AGENT_PID=");
    long agent_pid = p ? atol(p + 14) : 0;
    tl_result_free(&r);
    CU_ASSERT_FATAL(agent_pid > 0);
    char *sockenv = fmt("SSH_AUTH_SOCK=%s", sock);
    const char *env[] = {sockenv, NULL};
    char *key = sf_file(&S, "id_ecdsa");
    const char *add[] = {"ssh-add", "-q", key, NULL};
    r = tl_exec(add, NULL, env);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);

    char *ws = tl_tmpdir("sshagentws"), *root = tl_tmpdir("sshagentroot");
    r = attach(ws, "agentvm", &S, 0, NULL, NULL, root, 1, A("--set", "ssh_agent=true"), NULL,
               env);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    const char *noenv[] = {"SSH_AUTH_SOCK=", NULL};
    r = tl_ctarget_run(ws, NULL, noenv, A("compute", "status", "agentvm", "-o", "json"));
    /* no agent for this process: an authentication failure that says what to do */
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(tl_contains(r.err, "SSH_AUTH_SOCK"));
    tl_result_free(&r);
    r = tl_ctarget_run(ws, NULL, env, A("compute", "status", "agentvm", "-o", "json"));
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    const char *state = json_string_value(json_object_get(json_object_get(j, "live"), "state"));
    CU_ASSERT(state && !strcmp(state, "Running"));
    json_decref(j);
    tl_result_free(&r);
    /* an agent without the key: refused, the count of keys tried in the message */
    const char *del[] = {"ssh-add", "-D", NULL};
    r = tl_exec(del, NULL, env);
    tl_result_free(&r);
    char *root2 = tl_tmpdir("sshagentroot2"), *ws2 = tl_tmpdir("sshagentws2");
    r = attach(ws2, "agentvm", &S, 0, NULL, NULL, root2, 1, A("--set", "ssh_agent=true"),
               NULL, env);
    TL_ASSERT_EXIT(r, 7);
    CU_ASSERT(tl_contains(r.err, "holds no keys"));
    tl_result_free(&r);
    kill((pid_t)agent_pid, SIGTERM);
    free(root2);
    free(ws2);
    free(ws);
    free(root);
    free(key);
    free(sockenv);
    free(sock);
    free(dir);
}

/* ---- 18. docker on the machine ---------------------------------------------------------------- */

/* docker_engine names the engine; a stand-in records the command line it was given and runs
 * the script itself: the image, the mounts, variables passed by name, the arguments last. */
static void t18_docker_command(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *dir = tl_tmpdir("sshdocker");
    char *engine = tl_path(dir, "fake-docker");
    char *argv_log = tl_path(dir, "argv.txt");
    char *script = fmt("#!/bin/sh\n"
                       "printf '%%s\\n' \"$@\" > '%s'\n"
                       "while [ $# -gt 0 ] && [ \"$1\" != ctarget/fake:1 ]; do shift; done\n"
                       "shift; shift\n"  /* the image, then the interpreter's name */
                       "exec python3 \"$@\"\n", argv_log);
    CU_ASSERT_EQUAL(tl_write_file(engine, script), 0);
    chmod(engine, 0755);
    char *ws = tl_tmpdir("sshdockerws"), *root = tl_tmpdir("sshdockerroot");
    char *eng = fmt("docker_engine=%s", engine);
    tl_result r = attach(ws, "dockervm", &S, 0, NULL, "id_ed25519", root, 1,
                         A("--set", eng), NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *src = source("import os, sys\nprint('in the container', sys.argv[1:], "
                       "os.environ.get('SECRET_TOKEN'))\n");
    r = submit(ws, "dockervm", src,
               A("--docker-image", "ctarget/fake:1", "--env-var", "SECRET_TOKEN=t0k3n", "--wait"),
               A("a b"), NULL);
    TL_ASSERT_EXIT(r, 0);
    char *id = id_of(&r);
    tl_result_free(&r);
    char *argvs = tl_read_file(argv_log);
    CU_ASSERT_FATAL(argvs != NULL);
    char *want = fmt("run\n--rm\n--name\nctarget-%s\n-v\n", id ? id : "?");
    CU_ASSERT(tl_contains(argvs, want));
    CU_ASSERT(tl_contains(argvs, "/src:/ctarget/src\n"));
    CU_ASSERT(tl_contains(argvs, "-w\n/ctarget/src\n"));
    CU_ASSERT(tl_contains(argvs, "-e\nSECRET_TOKEN\n"));
    CU_ASSERT(!tl_contains(argvs, "t0k3n")); /* values travel by name, not on the command line */
    CU_ASSERT(tl_contains(argvs, "ctarget/fake:1\npython\ntrain.py\na b\n"));
    char *log = id ? run_logs(ws, id) : NULL;
    CU_ASSERT(log && tl_contains(log, "in the container ['a b'] t0k3n"));
    free(log);
    free(want);
    free(argvs);
    free(id);
    free(src);
    free(eng);
    free(root);
    free(ws);
    free(script);
    free(argv_log);
    free(engine);
    free(dir);
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void add(CU_pSuite s)
{
    /* an empty home: ~/.ssh/known_hosts trusts nothing */
    char *home = tl_tmpdir("sshhome");
    setenv("HOME", home, 1);
    free(home);
    /* the build tree's remotevm plugin */
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    char *path = fmt("%s/plugins/remotevm/.libs%s%s", tl_builddir(), pp && *pp ? ":" : "",
                     pp ? pp : "");
    setenv("CTARGET_PLUGIN_PATH", path, 1);
    free(path);
    char *dir = tl_tmpdir("sshd");
    S_ok = sf_start(&S, dir, 0) == 0;
    if (!S_ok)
        fprintf(stderr, "test_ssh: the sshd fixture did not start in %s\n", dir);
    free(dir);

    TL_ADD(s, t01_attach_ed25519_and_ecdsa);
    TL_ADD(s, t02_unknown_host_key);
    TL_ADD(s, t03_changed_host_key);
    TL_ADD(s, t04_passphrase_key);
    TL_ADD(s, t05_rsa_key);
    TL_ADD(s, t06_password);
    TL_ADD(s, t07_refused_port_and_duplicate);
    TL_ADD(s, t08_run_completed);
    TL_ADD(s, t09_run_failed_exit_code);
    TL_ADD(s, t10_quoting);
    TL_ADD(s, t11_cancel);
    TL_ADD(s, t12_timeout);
    TL_ADD(s, t13_incremental);
    TL_ADD(s, t14_sshd_stopped_mid_upload);
    TL_ADD(s, t15_monitor_killed);
    TL_ADD(s, t16_sshd_restarted_mid_run);
    TL_ADD(s, t17_ssh_agent);
    TL_ADD(s, t18_docker_command);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "ssh", add);
}
