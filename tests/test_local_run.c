/* The local plugin's run operations, driven through the core's real loader and host table,
 * with real processes (python3 scripts), real files and real process groups.
 *
 * Most tests put the run's source directly into work_dir/src and write the marker that
 * prepare() leaves after materializing a snapshot (work_dir/src.snapshot = snapshot id):
 * prepare then trusts the tree, as it does when a monitor restarts after materializing.
 * That stands in for host->snapshot_materialize until snapshots land; t_prepare_snapshot
 * goes through the real thing. */
#include "config.h"

#include "testlib.h"

#include <ctarget/ctarget.h>
#include <ctarget/plugin.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "loader.h"
#include "local.h"

#define SNAP "snap-test-0001"

static char *WS;
static plugin *PL;
static ctarget_target *T;

typedef struct trun {
    char id[64];
    char *dir;      /* <ws>/runs/<id> */
    char *work;     /* dir/work */
    char *src;      /* work/src */
    char *env_file; /* owned copy behind info.env_file, if any */
    json_t *handle;
    ctarget_run_info info;
} trun;

/* ---- fixture ------------------------------------------------------------------------------- */

static int setup(void)
{
    if (PL)
        return 1;
    WS = tl_tmpdir("localrun");
    host_set_workspace_dir(WS);
    ctarget_error err;
    ctarget_error_init(&err);
    if (loader_find("local", &PL, &err) != CTARGET_OK ||
        loader_init_plugin(PL, &err) != CTARGET_OK) {
        fprintf(stderr, "cannot load the local plugin: %s\n", err.message);
        PL = NULL;
        return 0;
    }
    T = target_new(PL, NULL, WS, "local", "implicit");
    return 1;
}

static void mkdirs(const char *path)
{
    char *p = strdup(path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            mkdir(p, 0700);
            *s = '/';
        }
    mkdir(p, 0700);
    free(p);
}

static trun *trun_new(const char *script)
{
    static int seq;
    trun *r = calloc(1, sizeof *r);
    /* ids sort by creation, as the core's do by submission time */
    snprintf(r->id, sizeof r->id, "t%05d-%ld", ++seq, (long)getpid());
    r->dir = tl_path(WS, "runs");
    char *d = tl_path(r->dir, r->id);
    free(r->dir);
    r->dir = d;
    r->work = tl_path(r->dir, "work");
    r->src = tl_path(r->work, "src");
    mkdirs(r->src);
    char *main_py = tl_path(r->src, "main.py");
    tl_write_file(main_py, script);
    free(main_py);
    char *marker = tl_path(r->work, "src.snapshot");
    tl_write_file(marker, SNAP);
    free(marker);
    r->handle = json_object();
    ctarget_run_info *i = &r->info;
    i->struct_size = sizeof *i;
    i->id = r->id;
    i->experiment = "default";
    i->snapshot_id = SNAP;
    i->script = "main.py";
    i->framework = "python";
    i->node_count = 1;
    i->attempt = 1;
    i->env_kind = CTARGET_ENV_USER;
    i->work_dir = r->work;
    i->handle = json_obj(r->handle);
    i->cancel_grace_seconds = 10;
    return r;
}

static void trun_free(trun *r)
{
    if (!r)
        return;
    json_decref(r->handle);
    free(r->dir);
    free(r->work);
    free(r->src);
    free(r->env_file);
    free(r);
}

static ctarget_status op_prepare(ctarget_target *t, trun *r, ctarget_error *err)
{
    ctarget_call c;
    call_init(&c, "test prepare");
    ctarget_error_init(err);
    return PL->run.prepare(PL->ctx, &c, t, &r->info, err);
}

static ctarget_status op_submit(ctarget_target *t, trun *r, ctarget_error *err)
{
    ctarget_call c;
    call_init(&c, "test submit");
    ctarget_error_init(err);
    return PL->run.submit(PL->ctx, &c, t, &r->info, err);
}

/* prepare + submit on the default target, asserting both succeed */
static int start(trun *r)
{
    ctarget_error err;
    ctarget_status rc = op_prepare(T, r, &err);
    if (rc == CTARGET_OK)
        rc = op_submit(T, r, &err);
    if (rc != CTARGET_OK)
        fprintf(stderr, "start %s: %s\n", r->id, err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    return rc == CTARGET_OK;
}

static ctarget_run_poll poll_t(ctarget_target *t, trun *r, long wait_ms)
{
    ctarget_call c;
    call_init(&c, "test poll");
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_run_poll p = {.struct_size = sizeof p};
    ctarget_status rc = PL->run.poll(PL->ctx, &c, t, &r->info, wait_ms, &p, &err);
    if (rc != CTARGET_OK)
        fprintf(stderr, "poll %s: %s\n", r->id, err.message);
    CU_ASSERT_EQUAL(rc, CTARGET_OK);
    return p;
}

static int is_final(ctarget_run_state s)
{
    return s == CTARGET_RUN_COMPLETED || s == CTARGET_RUN_FAILED || s == CTARGET_RUN_CANCELED ||
           s == CTARGET_RUN_NOT_RESPONDING;
}

/* Poll until a final state or ms pass (callers give guards far above what a run needs). */
static ctarget_run_poll wait_final_t(ctarget_target *t, trun *r, long ms)
{
    long long end = tl_now_ms() + ms;
    ctarget_run_poll p;
    do {
        p = poll_t(t, r, 200);
    } while (!is_final(p.state) && tl_now_ms() < end);
    return p;
}

static ctarget_run_poll wait_final(trun *r, long ms)
{
    return wait_final_t(T, r, ms);
}

typedef struct buf {
    char *data;
    size_t len;
} buf;

static int buf_write(void *arg, const void *data, size_t len)
{
    buf *b = arg;
    b->data = realloc(b->data, b->len + len + 1);
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

/* The stream from offset, NUL-terminated (never NULL). */
static buf read_stream(trun *r, ctarget_stream s, uint64_t offset)
{
    ctarget_call c;
    call_init(&c, "test logs");
    ctarget_error err;
    ctarget_error_init(&err);
    buf b = {calloc(1, 1), 0};
    CU_ASSERT_EQUAL(PL->run.read_logs(PL->ctx, &c, T, &r->info, s, offset, buf_write, &b,
                                      &err),
                    CTARGET_OK);
    return b;
}

static int wait_log(trun *r, const char *needle, long ms)
{
    long long end = tl_now_ms() + ms;
    for (;;) {
        buf b = read_stream(r, CTARGET_STREAM_LOG, 0);
        int found = strstr(b.data, needle) != NULL;
        free(b.data);
        if (found || tl_now_ms() > end)
            return found;
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
}

static long long handle_int(trun *r, const char *key)
{
    return json_integer_value(json_object_get(r->handle, key));
}

static char *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *d = NULL;
    size_t n = 0, cap = 0;
    int c;
    while ((c = fgetc(f)) != EOF) {
        if (n + 1 >= cap)
            d = realloc(d, cap = cap ? cap * 2 : 256);
        d[n++] = (char)c;
    }
    fclose(f);
    if (!d)
        d = calloc(1, 1);
    d[n] = '\0';
    *len = n;
    return d;
}

/* A script that waits until the file `go` appears in its directory (at most 120 s: a guard
 * against a hang, far above what any test needs). */
#define WAIT_GO "import os, time\n"                                                     \
                "for _ in range(2400):\n"                                                \
                "    if os.path.exists('go'): break\n"                                  \
                "    time.sleep(0.05)\n"

static void release(trun *r)
{
    char *go = tl_path(r->src, "go");
    tl_write_file(go, "");
    free(go);
}

/* ---- outcomes ----------------------------------------------------------------------------- */

static void t_completed_outputs_and_cleanup(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("import os\nprint('hello from the script')\n"
                       "open(os.path.join('outputs', 'model.txt'), 'w').write('weights')\n"
                       "os.makedirs('logs', exist_ok=True)\n"
                       "open('logs/extra.txt', 'w').write('extra log')\n");
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT(handle_int(r, "pid") > 0);
    CU_ASSERT(handle_int(r, "wrapper_pid") > 0);
    ctarget_run_poll p = wait_final(r, 120000);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_COMPLETED);
    CU_ASSERT(p.has_exit_code && p.exit_code == 0);
    CU_ASSERT_STRING_EQUAL(p.native_state, "exited");
    buf b = read_stream(r, CTARGET_STREAM_LOG, 0);
    CU_ASSERT(tl_contains(b.data, "hello from the script\n"));
    free(b.data);

    ctarget_call c;
    call_init(&c, "fetch");
    ctarget_error err;
    ctarget_error_init(&err);
    for (int i = 0; i < 2; i++) /* the second fetch overwrites: idempotent */
        CU_ASSERT_EQUAL(PL->run.fetch_outputs(PL->ctx, &c, T, &r->info, r->dir, &err),
                        CTARGET_OK);
    char *model = tl_path(r->dir, "outputs/model.txt");
    char *extra = tl_path(r->dir, "logs/extra.txt");
    char *m = tl_read_file(model), *e = tl_read_file(extra);
    CU_ASSERT(m && !strcmp(m, "weights"));
    CU_ASSERT(e && !strcmp(e, "extra log"));
    free(m);
    free(e);

    CU_ASSERT_EQUAL(PL->run.cleanup(PL->ctx, &c, T, &r->info, &err), CTARGET_OK);
    struct stat st;
    CU_ASSERT(stat(r->src, &st) != 0);           /* the bulky part is gone */
    m = tl_read_file(model);                      /* fetched outputs stay */
    CU_ASSERT(m && !strcmp(m, "weights"));
    free(m);
    b = read_stream(r, CTARGET_STREAM_LOG, 0);    /* and so does the log */
    CU_ASSERT(tl_contains(b.data, "hello from the script"));
    free(b.data);
    CU_ASSERT_EQUAL(poll_t(T, r, 0).state, CTARGET_RUN_COMPLETED);
    free(model);
    free(extra);
    trun_free(r);
}

static void t_exit_code(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("import sys\nprint('failing')\nsys.exit(3)\n");
    CU_ASSERT_FATAL(start(r));
    ctarget_run_poll p = wait_final(r, 120000);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_FAILED);
    CU_ASSERT(p.has_exit_code);
    CU_ASSERT_EQUAL(p.exit_code, 3);
    CU_ASSERT_EQUAL(p.term_signal, 0);
    CU_ASSERT_STRING_EQUAL(p.reason, "exit code 3");
    trun_free(r);
}

static void t_killed_by_signal(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n");
    CU_ASSERT_FATAL(start(r));
    ctarget_run_poll p = wait_final(r, 120000);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_FAILED);
    CU_ASSERT(!p.has_exit_code);
    CU_ASSERT_EQUAL(p.term_signal, 9);
    CU_ASSERT_STRING_EQUAL(p.reason, "killed by signal 9 (SIGKILL)");
    trun_free(r);
}

static void t_missing_script(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("print('never')\n");
    r->info.script = "no_such_script.py";
    ctarget_error err;
    CU_ASSERT_EQUAL(op_prepare(T, r, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(op_submit(T, r, &err), CTARGET_E_NOT_FOUND);
    CU_ASSERT(tl_contains(err.message, "no_such_script.py"));
    r->info.script = "../src/main.py"; /* exists, but outside the snapshot root */
    CU_ASSERT_EQUAL(op_submit(T, r, &err), CTARGET_E_NOT_FOUND);
    r->info.script = "main.py";
    CU_ASSERT_EQUAL(op_submit(T, r, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
    trun_free(r);
}

static void t_missing_interpreter(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("print('never')\n");
    r->info.python = "/nonexistent/bin/python9";
    ctarget_error err;
    CU_ASSERT_EQUAL(op_prepare(T, r, &err), CTARGET_E_NOT_FOUND);
    CU_ASSERT(tl_contains(err.message, "/nonexistent/bin/python9"));
    CU_ASSERT(tl_contains(err.message, "install"));
    trun_free(r);
}

/* ---- the script's contract ---------------------------------------------------------------- */

static void t_arguments_byte_for_byte(void)
{
    CU_ASSERT_FATAL(setup());
    static const char *const args[] = {"plain", "two words", "'single'", "\"double\"",
                                       "$(echo injected)", "`id`", "line1\nline2", "",
                                       "caf\xc3\xa9 \xe2\x82\xac", "*", "--flag=a;b|c&d",
                                       "\xff\xfe not utf-8", "back\\slash"};
    size_t n = sizeof args / sizeof args[0];
    trun *r = trun_new("import os, sys\n"
                       "open('outputs/args.bin', 'wb').write("
                       "b'\\0'.join(os.fsencode(a) for a in sys.argv[1:]))\n");
    r->info.args = args;
    r->info.n_args = n;
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
    char expect[512];
    size_t elen = 0;
    for (size_t i = 0; i < n; i++) {
        if (i)
            expect[elen++] = '\0';
        memcpy(expect + elen, args[i], strlen(args[i]));
        elen += strlen(args[i]);
    }
    char *path = tl_path(r->src, "outputs/args.bin");
    size_t len = 0;
    char *got = read_bytes(path, &len);
    CU_ASSERT_FATAL(got != NULL);
    CU_ASSERT_EQUAL(len, elen);
    CU_ASSERT(len == elen && memcmp(got, expect, len) == 0);
    free(got);
    free(path);
    trun_free(r);
}

static void t_environment_variables(void)
{
    CU_ASSERT_FATAL(setup());
    static const char *const env[] = {"MY_VAR=a b=c $(x)", "CTARGET_RUN_ID=forged"};
    trun *r = trun_new("import json, os\n"
                       "keys = ['CTARGET_RUN_ID', 'CTARGET_OUTPUTS_DIR', "
                       "'CTARGET_METRICS_FILE', 'MY_VAR']\n"
                       "d = {k: os.environ.get(k) for k in keys}\n"
                       "d['cwd'] = os.getcwd()\n"
                       "d['outputs_is_dir'] = os.path.isdir(os.environ['CTARGET_OUTPUTS_DIR'])\n"
                       "json.dump(d, open('outputs/env.json', 'w'))\n");
    r->info.env = env;
    r->info.n_env = 2;
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
    char *path = tl_path(r->src, "outputs/env.json");
    json_t *j = json_load_file(path, 0, NULL);
    CU_ASSERT_FATAL(j != NULL);
    char *outputs = tl_path(r->src, "outputs");
    char *metrics = tl_path(r->work, "metrics.jsonl");
    char *real_src = realpath(r->src, NULL);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "CTARGET_RUN_ID")), r->id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "CTARGET_OUTPUTS_DIR")),
                           outputs);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "CTARGET_METRICS_FILE")),
                           metrics);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "MY_VAR")), "a b=c $(x)");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "cwd")), real_src);
    CU_ASSERT(json_is_true(json_object_get(j, "outputs_is_dir")));
    CU_ASSERT(outputs[0] == '/' && metrics[0] == '/');
    json_decref(j);
    free(path);
    free(outputs);
    free(metrics);
    free(real_src);
    trun_free(r);
}

static void t_metrics_by_offset(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("import json, os\n"
                       "with open(os.environ['CTARGET_METRICS_FILE'], 'a') as f:\n"
                       "    for i in range(3):\n"
                       "        f.write(json.dumps({'name': 'loss', 'value': 1.0 / (i + 1), "
                       "'step': i}) + '\\n')\n");
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
    buf all = read_stream(r, CTARGET_STREAM_METRICS, 0);
    int lines = 0;
    for (size_t i = 0; i < all.len; i++)
        lines += all.data[i] == '\n';
    CU_ASSERT_EQUAL(lines, 3);
    CU_ASSERT(tl_contains(all.data, "\"step\": 2"));
    const char *nl = strchr(all.data, '\n');
    CU_ASSERT_FATAL(nl != NULL);
    size_t first = (size_t)(nl - all.data) + 1;
    buf rest = read_stream(r, CTARGET_STREAM_METRICS, first);
    CU_ASSERT_EQUAL(rest.len, all.len - first);
    CU_ASSERT(rest.len == all.len - first && !memcmp(rest.data, all.data + first, rest.len));
    buf none = read_stream(r, CTARGET_STREAM_METRICS, all.len);
    CU_ASSERT_EQUAL(none.len, 0);
    free(all.data);
    free(rest.data);
    free(none.data);
    trun_free(r);
}

static void t_logs_while_running(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("print('first line')\n" WAIT_GO "print('second line')\n");
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT(wait_log(r, "first line\n", 60000));
    CU_ASSERT_EQUAL(poll_t(T, r, 0).state, CTARGET_RUN_RUNNING);
    buf b = read_stream(r, CTARGET_STREAM_LOG, 0);
    size_t off = b.len;
    CU_ASSERT(!tl_contains(b.data, "second line"));
    free(b.data);
    release(r);
    CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
    b = read_stream(r, CTARGET_STREAM_LOG, off);
    CU_ASSERT_STRING_EQUAL(b.data, "second line\n");
    free(b.data);
    trun_free(r);
}

/* ---- cancel -------------------------------------------------------------------------------- */

static void t_cancel_term_ignored_then_kill(void)
{
    CU_ASSERT_FATAL(setup());
    /* the script and its grandchild both ignore SIGTERM: only SIGKILL ends them */
    trun *r = trun_new("import signal, subprocess, time\n"
                       "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                       "subprocess.Popen(['sh', '-c', 'trap \"\" TERM; sleep 600; :'])\n"
                       "print('ready', flush=True)\n"
                       "time.sleep(600)\n");
    r->info.cancel_grace_seconds = 1;
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_FATAL(wait_log(r, "ready", 60000));
    pid_t pgid = (pid_t)handle_int(r, "pid");
    CU_ASSERT_FATAL(pgid > 0);
    CU_ASSERT_EQUAL(kill(-pgid, 0), 0);
    ctarget_call c;
    call_init(&c, "cancel");
    ctarget_error err;
    ctarget_error_init(&err);
    long long t0 = tl_now_ms();
    CU_ASSERT_EQUAL(PL->run.cancel(PL->ctx, &c, T, &r->info, &err), CTARGET_OK);
    long long took = tl_now_ms() - t0;
    CU_ASSERT(took >= 900);    /* it waited the grace: TERM was ignored */
    CU_ASSERT(took < 120000);  /* and did not wait for the scripts' 600 s */
    errno = 0;
    CU_ASSERT_EQUAL(kill(-pgid, 0), -1);
    CU_ASSERT_EQUAL(errno, ESRCH);
    ctarget_run_poll p = wait_final(r, 60000);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_CANCELED);
    CU_ASSERT_EQUAL(p.term_signal, 9);
    trun_free(r);
}

static void t_cancel_term_honoured(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("import time\nprint('ready', flush=True)\ntime.sleep(600)\n");
    r->info.cancel_grace_seconds = 600; /* a cancel that waited it would show */
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_FATAL(wait_log(r, "ready", 60000));
    pid_t pgid = (pid_t)handle_int(r, "pid");
    ctarget_call c;
    call_init(&c, "cancel");
    ctarget_error err;
    ctarget_error_init(&err);
    long long t0 = tl_now_ms();
    CU_ASSERT_EQUAL(PL->run.cancel(PL->ctx, &c, T, &r->info, &err), CTARGET_OK);
    CU_ASSERT(tl_now_ms() - t0 < 120000); /* no need to wait the 600 s grace */
    CU_ASSERT(kill(-pgid, 0) == -1 && errno == ESRCH);
    ctarget_run_poll p = poll_t(T, r, 0);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_CANCELED);
    CU_ASSERT_EQUAL(p.term_signal, SIGTERM);
    trun_free(r);
}

static void t_cancel_after_finish_stays_completed(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("print('done')\n");
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
    ctarget_call c;
    call_init(&c, "cancel");
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL(PL->run.cancel(PL->ctx, &c, T, &r->info, &err), CTARGET_OK);
    ctarget_run_poll p = poll_t(T, r, 0);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_COMPLETED);
    CU_ASSERT_EQUAL(p.exit_code, 0);
    trun_free(r);
}

/* ---- recovery ------------------------------------------------------------------------------ */

static void t_reattach_from_handle(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("print('before')\n" WAIT_GO "print('after')\nraise SystemExit(7)\n");
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT(wait_log(r, "before", 60000));
    /* a new monitor: a fresh plugin context, a fresh target handle, and nothing but the
     * persisted handle (round-tripped through JSON text, as the store keeps it) */
    char *text = json_dumps(r->handle, JSON_COMPACT);
    json_t *h2 = json_loads(text, 0, NULL);
    free(text);
    void *ctx2 = NULL;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_FATAL(PL->d.init(host_table(), &ctx2, &err) == CTARGET_OK);
    ctarget_target *t2 = target_new(PL, NULL, WS, "local", "implicit");
    ctarget_run_info info = r->info;
    info.handle = json_obj(h2);
    ctarget_call c;
    call_init(&c, "reattach");
    CU_ASSERT_EQUAL(PL->run.reattach(ctx2, &c, t2, &info, &err), CTARGET_OK);
    ctarget_run_poll p = {.struct_size = sizeof p};
    CU_ASSERT_EQUAL(PL->run.poll(ctx2, &c, t2, &info, 0, &p, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_RUNNING);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(h2, "pid")), handle_int(r, "pid"));
    release(r);
    long long end = tl_now_ms() + 120000; /* a guard */
    do {
        CU_ASSERT_EQUAL(PL->run.poll(ctx2, &c, t2, &info, 200, &p, &err), CTARGET_OK);
    } while (!is_final(p.state) && tl_now_ms() < end);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_FAILED);
    CU_ASSERT_EQUAL(p.exit_code, 7);
    buf b = {calloc(1, 1), 0};
    CU_ASSERT_EQUAL(PL->run.read_logs(ctx2, &c, t2, &info, CTARGET_STREAM_LOG, 0, buf_write,
                                      &b, &err),
                    CTARGET_OK);
    CU_ASSERT(tl_contains(b.data, "before\n") && tl_contains(b.data, "after\n"));
    free(b.data);
    PL->d.fini(ctx2);
    target_free(t2);
    json_decref(h2);
    trun_free(r);
}

/* alive and not a zombie (whoever reaps the killed wrapper may take its time) */
static int proc_alive(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    const char *p = ok ? strrchr(line, ')') : NULL;
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static void t_not_responding(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = trun_new("import time\nprint('ready', flush=True)\ntime.sleep(30)\n");
    CU_ASSERT_FATAL(start(r));
    CU_ASSERT_FATAL(wait_log(r, "ready", 60000));
    pid_t wrapper = (pid_t)handle_int(r, "wrapper_pid"), pgid = (pid_t)handle_int(r, "pid");
    CU_ASSERT_FATAL(wrapper > 0 && pgid > 0);
    /* the machine "restarts": wrapper first, so it cannot record the script's end */
    CU_ASSERT_EQUAL(kill(wrapper, SIGKILL), 0);
    for (int i = 0; i < 250 && proc_alive(wrapper); i++) {
        struct timespec ts = {0, 20 * 1000000};
        nanosleep(&ts, NULL);
    }
    kill(-pgid, SIGKILL);
    ctarget_run_poll p = wait_final(r, 60000);
    CU_ASSERT_EQUAL(p.state, CTARGET_RUN_NOT_RESPONDING);
    CU_ASSERT(tl_contains(p.reason, "no exit status"));
    CU_ASSERT(!p.has_exit_code);
    trun_free(r);
}

/* ---- queueing ------------------------------------------------------------------------------ */

static void t_queue_one_slot_in_order(void)
{
    CU_ASSERT_FATAL(setup());
    ctarget_target *t1 = target_new(PL, NULL, WS, "local-one", "test");
    json_object_set_new(t1->config, "max_concurrent_runs", json_string("1"));
    trun *r1 = trun_new(WAIT_GO), *r2 = trun_new(WAIT_GO), *r3 = trun_new("print('r3')\n"),
         *r4 = trun_new("print('never')\n");
    ctarget_error err;
    trun *all[] = {r1, r3, r2, r4}; /* r3 is submitted before r2, but r2's id is older */
    for (size_t i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(op_prepare(t1, all[i], &err), CTARGET_OK);
        CU_ASSERT_EQUAL(op_submit(t1, all[i], &err), CTARGET_OK);
    }
    CU_ASSERT_EQUAL(poll_t(t1, r1, 0).state, CTARGET_RUN_RUNNING);
    CU_ASSERT_EQUAL(poll_t(t1, r2, 0).state, CTARGET_RUN_QUEUED);
    CU_ASSERT_EQUAL(poll_t(t1, r3, 0).state, CTARGET_RUN_QUEUED);
    CU_ASSERT(json_is_true(json_object_get(r2->handle, "queued")));

    /* a queued run cancelled: never starts */
    ctarget_call c;
    call_init(&c, "cancel");
    CU_ASSERT_EQUAL(PL->run.cancel(PL->ctx, &c, t1, &r4->info, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(poll_t(t1, r4, 0).state, CTARGET_RUN_CANCELED);

    release(r1);
    CU_ASSERT_EQUAL(wait_final_t(t1, r1, 120000).state, CTARGET_RUN_COMPLETED);
    /* r3's monitor polls first, but the free slot goes to r2, next in submission order */
    CU_ASSERT_EQUAL(poll_t(t1, r3, 0).state, CTARGET_RUN_QUEUED);
    CU_ASSERT_EQUAL(poll_t(t1, r2, 0).state, CTARGET_RUN_RUNNING);
    CU_ASSERT_EQUAL(poll_t(t1, r3, 300).state, CTARGET_RUN_QUEUED);
    release(r2);
    CU_ASSERT_EQUAL(wait_final_t(t1, r2, 120000).state, CTARGET_RUN_COMPLETED);
    CU_ASSERT_EQUAL(wait_final_t(t1, r3, 120000).state, CTARGET_RUN_COMPLETED);
    CU_ASSERT(handle_int(r3, "started_ms") >= handle_int(r2, "started_ms"));
    char *r4pid = tl_path(r4->work, "pid");
    struct stat st;
    CU_ASSERT(stat(r4pid, &st) != 0); /* the cancelled run never started */
    free(r4pid);
    for (size_t i = 0; i < 4; i++)
        trun_free(all[i]);
    target_free(t1);
}

typedef struct burst_ev {
    long long ns;
    int start;
    char id[64];
} burst_ev;

/* events sort by time; at the same instant an end comes before a start */
static int ev_cmp(const void *a, const void *b)
{
    const burst_ev *x = a, *y = b;
    if (x->ns != y->ns)
        return x->ns < y->ns ? -1 : 1;
    return x->start - y->start;
}

/* Replay the events in time order: at most `limit` runs at once, each started once. */
static void check_burst_events(const char *events, int n, int limit)
{
    FILE *f = fopen(events, "r");
    CU_ASSERT_FATAL(f != NULL);
    burst_ev ev[256];
    size_t n_ev = 0;
    char line[256], what[16];
    while (n_ev < sizeof ev / sizeof ev[0] && fgets(line, sizeof line, f))
        if (sscanf(line, "%lld %15s %63s", &ev[n_ev].ns, what, ev[n_ev].id) == 3)
            ev[n_ev++].start = !strcmp(what, "start");
    fclose(f);
    qsort(ev, n_ev, sizeof ev[0], ev_cmp);
    int running = 0, peak = 0, starts = 0, ends = 0;
    json_t *seen = json_object();
    for (size_t i = 0; i < n_ev; i++) {
        if (ev[i].start) {
            starts++;
            CU_ASSERT_PTR_NULL(json_object_get(seen, ev[i].id));
            json_object_set_new(seen, ev[i].id, json_true());
            if (++running > peak)
                peak = running;
        } else {
            ends++;
            running--;
        }
    }
    CU_ASSERT_EQUAL(starts, n);
    CU_ASSERT_EQUAL(ends, n);
    CU_ASSERT_EQUAL(json_object_size(seen), (size_t)n);
    CU_ASSERT(peak >= 1 && peak <= limit);
    json_decref(seen);
}

/* Runs submitted at once by independent monitors (processes): every one completes, none
 * starts twice, and never more than max_concurrent_runs run at the same time. */
static void t_queue_burst_from_many_monitors(void)
{
    CU_ASSERT_FATAL(setup());
    enum { MONITORS = 8, PER = 5, N = MONITORS * PER, LIMIT = 2 };
    ctarget_target *t2 = target_new(PL, NULL, WS, "local-two", "test");
    json_object_set_new(t2->config, "max_concurrent_runs", json_string("2"));
    char *events = tl_path(WS, "burst-events.txt");
    char *env_line = NULL;
    CU_ASSERT_FATAL(asprintf(&env_line, "BURST_LOG=%s", events) > 0);
    const char *env[] = {env_line};
    trun *r[N];
    for (int i = 0; i < N; i++) {
        r[i] = trun_new("import os, time\n"
                        "def ev(w):\n"
                        "    fd = os.open(os.environ['BURST_LOG'], "
                        "os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
                        "    os.write(fd, ('%d %s %s\\n' % (time.monotonic_ns(), w, "
                        "os.environ['CTARGET_RUN_ID'])).encode())\n"
                        "    os.close(fd)\n"
                        "ev('start')\ntime.sleep(0.05)\nev('end')\n");
        r[i]->info.env = env;
        r[i]->info.n_env = 1;
    }
    pid_t kids[MONITORS];
    for (int m = 0; m < MONITORS; m++) {
        if ((kids[m] = fork()) != 0)
            continue;
        int bad = 0;
        ctarget_error err;
        for (int k = 0; k < PER; k++) {
            trun *x = r[m + k * MONITORS]; /* interleaved: submissions out of id order */
            bad |= op_prepare(t2, x, &err) != CTARGET_OK || op_submit(t2, x, &err) != CTARGET_OK;
        }
        for (int k = 0; k < PER; k++)
            bad |= wait_final_t(t2, r[m + k * MONITORS], 60000).state != CTARGET_RUN_COMPLETED;
        _exit(bad);
    }
    for (int m = 0; m < MONITORS; m++) {
        int st = -1;
        CU_ASSERT_EQUAL(waitpid(kids[m], &st, 0), kids[m]);
        CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    check_burst_events(events, N, LIMIT);
    for (int i = 0; i < N; i++)
        trun_free(r[i]);
    free(env_line);
    free(events);
    target_free(t2);
}

/* ---- environments -------------------------------------------------------------------------- */

static trun *pip_run(const char *hash, const char *requirements, const char *script)
{
    trun *r = trun_new(script);
    char *req = tl_path(r->dir, "requirements.txt");
    tl_write_file(req, requirements);
    r->info.env_kind = CTARGET_ENV_PIP;
    r->info.env_file = r->env_file = req;
    r->info.env_hash = hash;
    return r;
}

static int log_has(trun *r, const char *needle)
{
    buf b = read_stream(r, CTARGET_STREAM_LOG, 0);
    int has = strstr(b.data, needle) != NULL;
    free(b.data);
    return has;
}

static void t_venv_build_and_reuse(void)
{
    CU_ASSERT_FATAL(setup());
    const char *script = "import sys\nprint('prefix=' + sys.prefix)\n"
                         "print('venv=' + str(sys.prefix != sys.base_prefix))\n";
    trun *a = pip_run("hashA", "# nothing needed\n\n", script);
    CU_ASSERT_FATAL(start(a));
    const char *env_dir = json_string_value(json_object_get(a->handle, "env_dir"));
    CU_ASSERT_FATAL(env_dir != NULL);
    CU_ASSERT(tl_contains(env_dir, "/envs/pip-hashA-"));
    CU_ASSERT(log_has(a, "building environment"));
    CU_ASSERT_EQUAL(wait_final(a, 120000).state, CTARGET_RUN_COMPLETED);
    CU_ASSERT(log_has(a, "venv=True"));
    char *want = NULL;
    if (asprintf(&want, "prefix=%s\n", env_dir) > 0)
        CU_ASSERT(log_has(a, want));
    free(want);

    trun *b = pip_run("hashA", "# nothing needed\n\n", script);
    CU_ASSERT_FATAL(start(b));
    CU_ASSERT(log_has(b, "reusing environment"));
    CU_ASSERT(!log_has(b, "building environment"));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(b->handle, "env_dir")), env_dir);
    CU_ASSERT_EQUAL(wait_final(b, 120000).state, CTARGET_RUN_COMPLETED);
    trun_free(a);
    trun_free(b);
}

static void t_venv_concurrent_builders_build_once(void)
{
    CU_ASSERT_FATAL(setup());
    enum { N = 3 };
    trun *r[N];
    pid_t kids[N];
    for (int i = 0; i < N; i++)
        r[i] = pip_run("hashConc", "", "print('x')\n");
    /* independent monitors: separate processes, sharing nothing but the files */
    for (int i = 0; i < N; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            ctarget_error err;
            _exit(op_prepare(T, r[i], &err) == CTARGET_OK ? 0 : 1);
        }
    }
    for (int i = 0; i < N; i++) {
        int st = -1;
        CU_ASSERT_EQUAL(waitpid(kids[i], &st, 0), kids[i]);
        CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    int built = 0, reused = 0;
    for (int i = 0; i < N; i++) {
        built += log_has(r[i], "building environment");
        reused += log_has(r[i], "reusing environment");
    }
    CU_ASSERT_EQUAL(built, 1);
    CU_ASSERT_EQUAL(reused, N - 1);
    for (int i = 0; i < N; i++)
        trun_free(r[i]);
}

static int envs_entries(const char *prefix)
{
    char *envs = tl_path(WS, "plugins/local/local/envs");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "ls -1 '%s' | grep '^%s' | grep -v '\\.lock$' | wc -l", envs,
             prefix);
    free(envs);
    FILE *f = popen(cmd, "r");
    int n = -1;
    if (f) {
        if (fscanf(f, "%d", &n) != 1)
            n = -1;
        pclose(f);
    }
    return n;
}

static void t_venv_build_failure(void)
{
    CU_ASSERT_FATAL(setup());
    trun *r = pip_run("hashBad", "./no-such-local-package-dir\n", "print('never')\n");
    ctarget_error err;
    long long t0 = tl_now_ms();
    CU_ASSERT_NOT_EQUAL(op_prepare(T, r, &err), CTARGET_OK);
    CU_ASSERT(tl_now_ms() - t0 < 50000);
    CU_ASSERT(tl_contains(err.message, "environment build failed"));
    CU_ASSERT(log_has(r, "environment build failed"));
    CU_ASSERT_EQUAL(envs_entries("pip-hashBad"), 0); /* nothing half-built left */
    trun_free(r);
}

/* PATH holding only what the test puts there (restored after). */
static char *narrow_path(char **saved)
{
    *saved = strdup(getenv("PATH"));
    char *bin = tl_tmpdir("bin");
    setenv("PATH", bin, 1);
    return bin;
}

static void t_conda_missing(void)
{
    CU_ASSERT_FATAL(setup());
    char *saved;
    char *bin = narrow_path(&saved);
    trun *r = trun_new("print('never')\n");
    char *yml = tl_path(r->dir, "conda.yml");
    tl_write_file(yml, "name: x\ndependencies: [python]\n");
    r->info.env_kind = CTARGET_ENV_CONDA;
    r->info.env_file = r->env_file = yml;
    r->info.env_hash = "condaH";
    ctarget_error err;
    CU_ASSERT_EQUAL(op_prepare(T, r, &err), CTARGET_E_UNSUPPORTED);
    CU_ASSERT(tl_contains(err.message, "conda") && tl_contains(err.message, "mamba") &&
              tl_contains(err.message, "install"));
    setenv("PATH", saved, 1);
    free(saved);
    free(bin);
    trun_free(r);
}

static void t_docker_engine_missing_or_stopped(void)
{
    CU_ASSERT_FATAL(setup());
    char *saved;
    char *bin = narrow_path(&saved);
    trun *r = trun_new("print('never')\n");
    r->info.docker_image = "python:3.12-slim";
    ctarget_error err;
    CU_ASSERT_EQUAL(op_prepare(T, r, &err), CTARGET_E_UNSUPPORTED);
    CU_ASSERT(tl_contains(err.message, "docker") && tl_contains(err.message, "podman"));
    /* an engine whose daemon is down answers `info` with an error */
    char *fake = tl_path(bin, "docker");
    tl_write_file(fake, "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n");
    chmod(fake, 0755);
    CU_ASSERT_EQUAL(op_prepare(T, r, &err), CTARGET_E_UNSUPPORTED);
    CU_ASSERT(tl_contains(err.message, "not running"));
    CU_ASSERT(log_has(r, "Cannot connect to the Docker daemon"));
    setenv("PATH", saved, 1);
    free(saved);
    free(fake);
    free(bin);
    trun_free(r);
}

static void t_docker_argv(void)
{
    static const char *const args[] = {"--lr", "0.1 0.2", "$(rm -rf /)", "a\nb"};
    static const char *const env[] = {"CTARGET_RUN_ID=r1", "X=a b;c"};
    ldocker_spec s = {"/usr/bin/docker", "python:3.12", "ctarget-r1", "/ws/runs/r1/work",
                      "/ws/runs/r1/work/src", "python", "train.py", args, 4, env, 2, 1,
                      1000, 1000};
    char **v = ldocker_argv(&s);
    static const char *const want[] = {
        "/usr/bin/docker", "run", "--rm", "--init", "--name", "ctarget-r1", "--user",
        "1000:1000", "--volume", "/ws/runs/r1/work:/ws/runs/r1/work", "--workdir",
        "/ws/runs/r1/work/src", "--env", "CTARGET_RUN_ID=r1", "--env", "X=a b;c", "--gpus",
        "all", "python:3.12", "python", "train.py", "--lr", "0.1 0.2", "$(rm -rf /)", "a\nb",
        NULL};
    CU_ASSERT_FATAL(v != NULL);
    size_t i = 0;
    for (; want[i] && v[i]; i++)
        CU_ASSERT_STRING_EQUAL(v[i], want[i]);
    CU_ASSERT(want[i] == NULL && v[i] == NULL);
    ldocker_argv_free(v);

    s.gpu = 0;
    s.uid = s.gid = -1;
    v = ldocker_argv(&s);
    CU_ASSERT_FATAL(v != NULL);
    for (i = 0; v[i]; i++) {
        CU_ASSERT(strcmp(v[i], "--gpus") != 0);
        CU_ASSERT(strcmp(v[i], "--user") != 0);
    }
    ldocker_argv_free(v);

    static const char *const bad_env[] = {"NO_EQUALS_SIGN"};
    s.env = bad_env;
    s.n_env = 1;
    CU_ASSERT_PTR_NULL(ldocker_argv(&s)); /* `-e NAME` would leak the engine's own value */
    s.env = env;
    s.n_env = 2;
    s.image = "--privileged";
    CU_ASSERT_PTR_NULL(ldocker_argv(&s));

    char *name = ldocker_container_name("2024/run:1 x");
    CU_ASSERT_STRING_EQUAL(name, "ctarget-2024_run_1_x");
    free(name);
}

/* ---- the machine, and a real snapshot ----------------------------------------------------- */

static void t_compute_status_facts(void)
{
    CU_ASSERT_FATAL(setup());
    ctarget_call c;
    call_init(&c, "status");
    ctarget_error err;
    ctarget_error_init(&err);
    ctarget_compute_state st = {.struct_size = sizeof st};
    json_t *details = json_object();
    CU_ASSERT_EQUAL(PL->compute.status(PL->ctx, &c, T, &st, json_obj(details), &err),
                    CTARGET_OK);
    CU_ASSERT(json_integer_value(json_object_get(details, "cpus")) >= 1);
    CU_ASSERT(json_integer_value(json_object_get(details, "memory_bytes")) > 0);
    CU_ASSERT(json_is_integer(json_object_get(details, "gpu_count")));
    CU_ASSERT(json_integer_value(json_object_get(details, "max_concurrent_runs")) >= 1);
    CU_ASSERT(PL->d.capabilities & CTARGET_CAP_SCRIPT_RUN);
    CU_ASSERT(PL->d.capabilities & CTARGET_CAP_CANCEL);
    CU_ASSERT(!(PL->d.capabilities & CTARGET_CAP_PIPELINE_STEP));
    json_decref(details);
}

static void t_prepare_snapshot(void)
{
    CU_ASSERT_FATAL(setup());
    char *srcdir = tl_tmpdir("snapsrc");
    char *main_py = tl_path(srcdir, "main.py");
    tl_write_file(main_py, "print('from the snapshot')\n");
    tl_result res = TL_CT(WS, "snapshot", "create", srcdir, "--output", "json");
    TL_ASSERT_EXIT(res, 0);
    json_t *j = res.status == 0 ? tl_json(&res) : NULL;
    const char *id = json_string_value(json_object_get(j, "id"));
    CU_ASSERT_PTR_NOT_NULL(id);
    if (id) {
        trun *r = trun_new("print('not the snapshot')\n");
        char *marker = tl_path(r->work, "src.snapshot");
        unlink(marker); /* this one goes through host->snapshot_materialize for real */
        free(marker);
        r->info.snapshot_id = id;
        CU_ASSERT_FATAL(start(r));
        CU_ASSERT_EQUAL(wait_final(r, 120000).state, CTARGET_RUN_COMPLETED);
        CU_ASSERT(log_has(r, "from the snapshot"));
        trun_free(r);
    }
    json_decref(j);
    tl_result_free(&res);
    free(main_py);
    free(srcdir);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_completed_outputs_and_cleanup);
    TL_ADD(s, t_exit_code);
    TL_ADD(s, t_killed_by_signal);
    TL_ADD(s, t_missing_script);
    TL_ADD(s, t_missing_interpreter);
    TL_ADD(s, t_arguments_byte_for_byte);
    TL_ADD(s, t_environment_variables);
    TL_ADD(s, t_metrics_by_offset);
    TL_ADD(s, t_logs_while_running);
    TL_ADD(s, t_cancel_term_ignored_then_kill);
    TL_ADD(s, t_cancel_term_honoured);
    TL_ADD(s, t_cancel_after_finish_stays_completed);
    TL_ADD(s, t_reattach_from_handle);
    TL_ADD(s, t_not_responding);
    TL_ADD(s, t_queue_one_slot_in_order);
    TL_ADD(s, t_queue_burst_from_many_monitors);
    TL_ADD(s, t_venv_build_and_reuse);
    TL_ADD(s, t_venv_concurrent_builders_build_once);
    TL_ADD(s, t_venv_build_failure);
    TL_ADD(s, t_conda_missing);
    TL_ADD(s, t_docker_engine_missing_or_stopped);
    TL_ADD(s, t_docker_argv);
    TL_ADD(s, t_compute_status_facts);
    TL_ADD(s, t_prepare_snapshot);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "test_local_run", add);
}
