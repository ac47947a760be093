#define _GNU_SOURCE
#include "runlib.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

void rl_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

char *rl_workspace(void)
{
    char *ws = tl_tmpdir("runws");
    tl_result r = TL_CT(ws, "compute", "attach", "sim", "--type", "testrun");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "attach", "pipe", "--type", "testpipe");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    char *cloud = tl_path(ws, "cloud");
    char *set = NULL, *res = tl_path(ws, "cloud/box1.res");
    if (asprintf(&set, "cloud_dir=%s", cloud) < 0)
        abort();
    char *mk = NULL;
    if (asprintf(&mk, "mkdir -p %s", cloud) < 0 || system(mk) != 0)
        CU_FAIL("mkdir");
    tl_write_file(res, "Succeeded 0 Running 0 1\n");
    r = TL_CT(ws, "compute", "attach", "cloudbox", "--type", "testcloud", "--set", set,
              "--set", "resource_id=box1");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(mk);
    free(set);
    free(res);
    free(cloud);
    return ws;
}

char *rl_source(void)
{
    char *src = tl_tmpdir("runsrc");
    char *p = tl_path(src, "train.py");
    tl_write_file(p, "print('hello')\n");
    free(p);
    return src;
}

char *rl_submit(const char *ws, const char *src, const char *const opts[],
                const char *const sim[])
{
    const char *argv[96];
    size_t n = 0;
    const char *fixed[] = {"run", "submit", "--target", "sim", "--source", src, "--script",
                           "train.py", "-o", "json"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        argv[n++] = fixed[i];
    for (size_t i = 0; opts && opts[i] && n < 80; i++)
        argv[n++] = opts[i];
    if (sim) {
        argv[n++] = "--";
        for (size_t i = 0; sim[i] && n < 94; i++)
            argv[n++] = sim[i];
    }
    argv[n] = NULL;
    tl_result r = tl_ctarget_run(ws, NULL, NULL, argv);
    char *id = NULL;
    if (r.status == 0) {
        json_t *j = tl_json(&r);
        const char *s = json_string_value(json_object_get(j, "id"));
        id = s ? strdup(s) : NULL;
        json_decref(j);
    } else {
        tl_dump("submit failed", &r);
    }
    CU_ASSERT_PTR_NOT_NULL(id);
    tl_result_free(&r);
    return id;
}

json_t *rl_show(const char *ws, const char *id)
{
    tl_result r = TL_CT(ws, "run", "show", id, "-o", "json");
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    if (r.status)
        tl_dump("show failed", &r);
    tl_result_free(&r);
    return j;
}

char *rl_status(const char *ws, const char *id)
{
    json_t *j = rl_show(ws, id);
    const char *s = json_string_value(json_object_get(j, "status"));
    char *out = s ? strdup(s) : NULL;
    json_decref(j);
    return out;
}

int rl_wait_for(const char *ws, const char *id, const char *statuses, long timeout_ms)
{
    long long end = tl_now_ms() + timeout_ms;
    while (tl_now_ms() < end) {
        char *s = rl_status(ws, id);
        int hit = 0;
        if (s) {
            char *list = strdup(statuses), *save = NULL;
            for (char *t = strtok_r(list, "|", &save); t; t = strtok_r(NULL, "|", &save))
                hit |= !strcmp(t, s);
            free(list);
        }
        free(s);
        if (hit)
            return 1;
        rl_sleep_ms(30);
    }
    return 0;
}

int rl_wait(const char *ws, const char *id)
{
    tl_result r = TL_CT(ws, "run", "wait", id);
    int st = r.status;
    tl_result_free(&r);
    return st;
}

int rl_count_lines(const char *path)
{
    char *s = tl_read_file(path);
    int n = 0;
    for (char *p = s; p && *p; p++)
        n += *p == '\n';
    free(s);
    return n;
}

char *rl_run_file(const char *ws, const char *id, const char *name)
{
    char *p;
    if (asprintf(&p, "%s/runs/%s/%s", ws, id, name) < 0)
        abort();
    return p;
}

char *rl_events(json_t *run)
{
    size_t len = 1, i;
    json_t *e;
    json_array_foreach(json_object_get(run, "events"), i, e)
        len += strlen(json_string_value(json_object_get(e, "to"))) + 1;
    char *s = calloc(1, len);
    json_array_foreach(json_object_get(run, "events"), i, e) {
        if (i)
            strcat(s, " ");
        strcat(s, json_string_value(json_object_get(e, "to")));
    }
    return s;
}

void rl_gate(const char *ws, const char *id, const char *name)
{
    char *work = rl_run_file(ws, id, "work"), *f = tl_path(work, name);
    struct stat st;
    CU_ASSERT_FATAL(stat(work, &st) == 0 && S_ISDIR(st.st_mode)); /* the run was submitted */
    tl_write_file(f, "open\n");
    free(f), free(work);
}

int rl_wait_log(const char *ws, const char *id, const char *needle, long timeout_ms)
{
    for (long long end = tl_now_ms() + timeout_ms; tl_now_ms() < end; rl_sleep_ms(30)) {
        tl_result r = TL_CT(ws, "run", "logs", id);
        int hit = r.status == 0 && tl_contains(r.out, needle);
        tl_result_free(&r);
        if (hit)
            return 1;
    }
    return 0;
}

const char RL_TERM_WATCH_PY[] =
    "import os, signal, sys, time\n"
    "out = sys.argv[1]\n"
    "def term(sig, frame):\n"
    "    open(out + '.term', 'w').write(repr(time.monotonic()))\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "open(out + '.pid', 'w').write(str(os.getpid()))\n"
    "print('up', flush=True)\n"
    "while True:\n"
    "    time.sleep(600)\n";

static const char DEATH_WATCH_PY[] =
    "import os, select, sys, time\n"
    "out = sys.argv[1]\n"
    "fd = os.pidfd_open(int(open(out + '.pid').read()))\n"
    "open(out + '.watching', 'w').close()\n"
    "select.select([fd], [], [])\n"
    "open(out + '.died', 'w').write(repr(time.monotonic()))\n";

static int exists_within(const char *path, int tries)
{
    struct stat st;
    for (int i = 0; i < tries; i++, rl_sleep_ms(30))
        if (stat(path, &st) == 0)
            return 1;
    return 0;
}

long rl_death_watch(const char *out)
{
    char *pidf = NULL, *watching = NULL;
    if (asprintf(&pidf, "%s.pid", out) < 0 || asprintf(&watching, "%s.watching", out) < 0)
        abort();
    long pid = -1;
    if (exists_within(pidf, 1000)) {
        pid_t p;
        char *argv[] = {(char *)"python3", (char *)"-c", (char *)DEATH_WATCH_PY, (char *)out,
                        NULL};
        if (posix_spawnp(&p, "python3", NULL, NULL, argv, environ) == 0)
            pid = p;
        if (pid > 0 && !exists_within(watching, 1000)) {
            kill((pid_t)pid, SIGKILL);
            waitpid((pid_t)pid, NULL, 0);
            pid = -1;
        }
    }
    free(pidf), free(watching);
    return pid;
}

static double read_seconds(const char *path)
{
    char *t = tl_read_file(path);
    double v = t && *t ? strtod(t, NULL) : -1;
    free(t);
    return v;
}

double rl_term_to_death(const char *out, long watcher)
{
    if (watcher <= 0)
        return -1;
    int st = 0;
    pid_t w = 0;
    for (int i = 0; i < 2000 && (w = waitpid((pid_t)watcher, &st, WNOHANG)) == 0; i++)
        rl_sleep_ms(30);
    if (w == 0) {
        kill((pid_t)watcher, SIGKILL);
        waitpid((pid_t)watcher, NULL, 0);
        return -1;
    }
    char *term = NULL, *died = NULL;
    if (asprintf(&term, "%s.term", out) < 0 || asprintf(&died, "%s.died", out) < 0)
        abort();
    double t = read_seconds(term), d = read_seconds(died);
    free(term), free(died);
    return t > 0 && d > 0 ? d - t : -1;
}

/* ---- sweeps ------------------------------------------------------------------------------ */

static char *rl_fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *rl_fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    char *s = NULL;
    if (vasprintf(&s, f, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

char *rl_sweep_submit(const char *ws, const char *file, const char *const env[])
{
    tl_result r = tl_ctarget_run(ws, NULL, env, (const char *const[]){"sweep", "submit",
                                 "--config", file, "-o", "json", NULL});
    TL_ASSERT_EXIT(r, 0);
    char *id = NULL;
    if (r.status == 0) {
        json_t *j = tl_json(&r);
        const char *s = json_string_value(json_object_get(j, "id"));
        id = s ? strdup(s) : NULL;
        json_decref(j);
    }
    tl_result_free(&r);
    return id;
}

json_t *rl_sweep_wait(const char *ws, const char *id, int expect_exit, const char *const env[])
{
    tl_result r = tl_ctarget_run(ws, NULL, env, (const char *const[]){"sweep", "wait", id,
                                 "--timeout", "120", "-o", "json", NULL});
    TL_ASSERT_EXIT(r, expect_exit);
    json_t *j = r.out && *r.out ? tl_json(&r) : NULL;
    tl_result_free(&r);
    return j;
}

/* Each child counts the children alive on the machine (a marker file each in a shared
 * directory, removed when it ends or is canceled) three times, appending the counts to
 * samples. */
static const char SWEEP_CONCURRENT_PY[] =
    "import json, os, signal, sys, time\n"
    "d = os.environ['SWEEP_DIR']\n"
    "me = os.path.join(d, 'live', os.environ['CTARGET_RUN_ID'])\n"
    "def stop(*a):\n"
    "    os.remove(me)\n"
    "    os._exit(143)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "open(me, 'w').close()\n"
    "lr = float(sys.argv[sys.argv.index('--lr') + 1])\n"
    "with open(os.path.join(d, 'samples'), 'a') as f:\n"
    "    for k in range(3):\n"
    "        f.write('%d\\n' % len(os.listdir(os.path.join(d, 'live'))))\n"
    "        f.flush()\n"
    "        with open(os.environ['CTARGET_METRICS_FILE'], 'a') as m:\n"
    "            m.write(json.dumps({'name': 'acc', 'value': 1 - abs(lr - 0.01) * 10 + k * 0.01}) + '\\n')\n"
    "        time.sleep(0.15)\n"
    "os.remove(me)\n";

/* A 6-child random sweep (2 at once, bandit) on the attached target: it completes, every
 * child reports, and the machine never sees more than 2 children at once.  Any target
 * type with the hyperparameter-tuning capability whose runs reach this machine's
 * filesystem (remotevm on the loopback sshd; the emulated amlcompute runs its jobs as
 * local processes) can be checked with it. */
void rl_sweep_concurrency_on(const char *ws, const char *target, const char *const env[])
{
    char *shared = tl_tmpdir("sweepshared");
    char *live = tl_path(shared, "live");
    char *cmd = rl_fmt("mkdir -p '%s'", live);
    CU_ASSERT_EQUAL(system(cmd), 0);
    free(cmd);
    char *src = tl_tmpdir("sweepsrc");
    char *py = tl_path(src, "train.py");
    tl_write_file(py, SWEEP_CONCURRENT_PY);
    char *sweep = tl_path(src, "sweep.json");
    char *body = rl_fmt("{\"run\": {\"target\": \"%s\", \"source_directory\": \".\", \"script\":"
                     " \"train.py\", \"environment\": {\"env_vars\": {\"SWEEP_DIR\": \"%s\"}}},"
                     " \"parameters\": {\"lr\": {\"loguniform\": [-7, -2]}}, \"sampling\":"
                     " \"random\", \"seed\": 5, \"primary_metric\": \"acc\", \"goal\":"
                     " \"maximize\", \"max_total_runs\": 6, \"max_concurrent_runs\": 2,"
                     " \"early_termination\": {\"policy\": \"bandit\", \"slack_amount\": 0.5}}",
                     target, shared);
    tl_write_file(sweep, body);
    char *id = rl_sweep_submit(ws, sweep, env);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    json_t *s = rl_sweep_wait(ws, id, 0, env);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(s, "children_started")), 6);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(s, "status")), "Completed");
    /* every child ran and reported: the best has a value and its --lr */
    json_t *best = json_object_get(s, "best");
    CU_ASSERT(json_is_number(json_object_get(best, "value")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(best, "arguments"), 0)),
                           "--lr");
    char *samples_path = tl_path(shared, "samples");
    char *samples = tl_read_file(samples_path);
    int n = 0, most = 0;
    for (char *p = samples; p && *p;) {
        int v = atoi(p);
        most = v > most ? v : most;
        n++;
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    CU_ASSERT(n >= 6); /* each child sampled at least once before any stop */
    if (most > 2)
        printf("%s: %d children at once on the machine\n", target, most);
    CU_ASSERT(most >= 1 && most <= 2);
    free(samples);
    free(samples_path);
    json_decref(s);
    free(id);
    free(body);
    free(sweep);
    free(py);
    free(src);
    free(live);
    free(shared);
}


char *rl_write_in(const char *dir, const char *name, const char *text)
{
    char *p = tl_path(dir, name);
    for (char *slash = strchr(p + strlen(dir) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            CU_FAIL("mkdir");
        *slash = '/';
    }
    CU_ASSERT_EQUAL(tl_write_file(p, text), 0);
    return p;
}

char *rl_pipeline_submit(const char *ws, const char *file, const char *const env[])
{
    tl_result r = tl_ctarget_run(ws, NULL, env, (const char *const[]){"pipeline", "submit", file,
                                 "-o", "json", NULL});
    TL_ASSERT_EXIT(r, 0);
    char *id = NULL;
    if (r.status == 0) {
        json_t *j = tl_json(&r);
        const char *s = json_string_value(json_object_get(j, "id"));
        id = s ? strdup(s) : NULL;
        json_decref(j);
    }
    tl_result_free(&r);
    return id;
}

json_t *rl_pipeline_wait(const char *ws, const char *id, int *code, const char *const env[])
{
    tl_result r = tl_ctarget_run(ws, NULL, env, (const char *const[]){"pipeline", "wait", id,
                                 "--timeout", "120", "-o", "json", NULL});
    *code = r.status;
    json_t *j = tl_json(&r);
    if (!j)
        tl_dump("pipeline wait", &r);
    tl_result_free(&r);
    return j;
}

const char *rl_step_get(json_t *pipeline, const char *step, const char *key)
{
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(pipeline, "steps"), i, s) {
        if (!strcmp(json_string_value(json_object_get(s, "name")), step)) {
            const char *v = json_string_value(json_object_get(s, key));
            return v ? v : "";
        }
    }
    return "";
}
