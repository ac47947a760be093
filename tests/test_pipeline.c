/* Pipelines: the file's checks (graph, keys, YAML) and the workspace's (targets, their
 * capabilities and types) refuse before anything runs; then whole pipelines through the
 * real ctarget command on remotevm against the real sshd fixture: data passed between
 * steps, parallel steps, reuse of unchanged steps, a failing step canceling the rest (or,
 * with continue_on_step_failure, only what depends on it), cancel leaving nothing running. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/pipeline.h"
#include "runlib.h"
#include "sshfix.h"

static sf_sshd S;
static int S_ok;

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
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


/* `pipeline validate FILE` must exit `code` with `needle` in its error. */
static void refused(const char *ws, const char *dir, const char *text, int code,
                    const char *needle)
{
    char *f = rl_write_in(dir, "p.yaml", text);
    tl_result r = TL_CT(ws, "pipeline", "validate", f);
    if (r.status != code || !tl_contains(r.err, needle)) {
        printf("\nexpected exit %d with '%s' for:\n%s\n", code, needle, text);
        tl_dump("pipeline validate", &r);
    }
    CU_ASSERT_EQUAL(r.status, code);
    CU_ASSERT(tl_contains(r.err, needle));
    /* one line, naming the file */
    CU_ASSERT(tl_contains(r.err, "p.yaml"));
    tl_result_free(&r);
    free(f);
}

/* ---- the file ------------------------------------------------------------------------------- */

static void t_bad_files_are_refused_with_the_reason(void)
{
    char *ws = rl_workspace(), *dir = tl_tmpdir("plfiles");
    char *src = fmt("%s/src", dir);
    free(rl_write_in(dir, "src/a.py", "print(1)\n"));
    char *head = fmt("steps:\n");
#define STEP(n, extra) "  - name: " n "\n    target: pipe\n    type: testpipe\n" \
                       "    source_directory: src\n    script: a.py\n" extra
    char *t;
    refused(ws, dir, t = fmt("%s" STEP("a", "    inputs: {x: b.y}\n    outputs: [z]\n")
                             STEP("b", "    inputs: {w: a.z}\n    outputs: [y]\n"), head),
            3, "cycle (");
    free(t);
    refused(ws, dir, t = fmt("%s" STEP("a", "    inputs: {x: prepp.y}\n")
                             STEP("prep", "    outputs: [y]\n"), head),
            3, "step 'prepp', which does not exist (did you mean 'prep'?)");
    free(t);
    refused(ws, dir, t = fmt("%s" STEP("a", "    inputs: {x: b.q}\n")
                             STEP("b", "    outputs: [y, z]\n"), head),
            3, "step 'b' has no output 'q' (its outputs: y, z)");
    free(t);
    refused(ws, dir,
            "steps:\n  - name: a\n    target: pipe\n    source_directory: src\n"
            "    scirpt: a.py\n",
            3, "unknown key 'scirpt': did you mean 'script'?");
    refused(ws, dir, "stepz: []\n", 3, "unknown key 'stepz': did you mean 'steps'?");
    refused(ws, dir, "steps:\n  - name: a\n    target: [unclosed\n", 3, "line 4 column 1: did not find expected");
    refused(ws, dir, "steps:\n  - name: a\n    name: b\n", 3, "key 'name' appears twice");
    refused(ws, dir, "steps: []\n", 3, "non-empty list");
    refused(ws, dir, t = fmt("%s" STEP("a", "") STEP("a", ""), head), 3,
            "two steps are named 'a'");
    free(t);
    refused(ws, dir, "steps:\n  - name: copy\n    type: data_transfer\n    source: x\n", 3,
            "exactly one output");
    refused(ws, dir, "{\"steps\": [{\"name\": \"a\", \"target\": \"pipe\", \"type\": 7}]}", 3,
            "type must be a string");
    refused(ws, dir, "steps:\n  - name: a b\n", 3, "step name 'a b' is invalid");
    /* a YAML bomb: anchors nested nine deep expand to 10^9 nodes */
    {
        char *bomb = fmt("a: &a [x,x,x,x,x,x,x,x,x,x]\n");
        for (char c = 'b'; c <= 'j'; c++) {
            char *n = fmt("%s%c: &%c [*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c,*%c]\n", bomb, c, c,
                          c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1);
            free(bomb);
            bomb = n;
        }
        refused(ws, dir, bomb, 17, "more than 100000 nodes");
        free(bomb);
    }
    /* nothing was recorded by any of it */
    tl_result r = TL_CT(ws, "pipeline", "list", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 0);
    json_decref(j);
    tl_result_free(&r);
#undef STEP
    free(head);
    free(src);
    free(dir);
    free(ws);
}

static void t_yaml_and_json_give_the_same_pipeline(void)
{
    char *dir = tl_tmpdir("plsame");
    free(rl_write_in(dir, "src/a.py", "print(1)\n"));
    char *y = rl_write_in(dir, "p.yaml",
                       "name: same\nmax_parallel: 2\nsteps:\n"
                       "  - name: a\n    target: vmbox\n    source_directory: src\n"
                       "    script: a.py\n    arguments: [--n, 3, 0.5, 'yes']\n"
                       "    outputs: [o]\n"
                       "  - name: b\n    target: vmbox\n    source_directory: src\n"
                       "    script: a.py\n    inputs: {i: a.o}\n    allow_reuse: false\n");
    char *jf = rl_write_in(dir, "p.json",
                        "{\"name\": \"same\", \"max_parallel\": 2, \"steps\": ["
                        "{\"name\": \"a\", \"target\": \"vmbox\", \"source_directory\": \"src\","
                        " \"script\": \"a.py\", \"arguments\": [\"--n\", 3, 0.5, \"yes\"],"
                        " \"outputs\": [\"o\"]},"
                        "{\"name\": \"b\", \"target\": \"vmbox\", \"source_directory\": \"src\","
                        " \"script\": \"a.py\", \"inputs\": {\"i\": \"a.o\"},"
                        " \"allow_reuse\": false}]}");
    pl_config a, b;
    ctarget_error e;
    ctarget_error_init(&e);
    if (pl_config_load(y, &a, &e) || pl_config_load(jf, &b, &e)) {
        printf("\n%s\n", e.message);
        CU_FAIL_FATAL("the pipeline files were refused");
    }
    CU_ASSERT(json_equal(a.doc, b.doc));
    CU_ASSERT_EQUAL(a.n, 2);
    CU_ASSERT_EQUAL(a.max_parallel, 2);
    CU_ASSERT_EQUAL(a.steps[1].n_deps, 1);
    CU_ASSERT_EQUAL(a.steps[1].deps[0], 0);
    CU_ASSERT(a.steps[0].allow_reuse);
    CU_ASSERT(!a.steps[1].allow_reuse);
    /* the source directory is anchored at the file */
    const char *sd = json_string_value(json_object_get(a.steps[0].run, "source_directory"));
    CU_ASSERT(sd && sd[0] == '/' && tl_contains(sd, "plsame"));
    CU_ASSERT_STRING_EQUAL(a.experiment, "same");
    pl_config_free(&a);
    pl_config_free(&b);
    free(y);
    free(jf);
    free(dir);
}

/* ---- the workspace -------------------------------------------------------------------------- */

static void t_steps_on_targets_that_cannot_run_them_are_refused_first(void)
{
    char *ws = rl_workspace(), *dir = tl_tmpdir("plcaps");
    free(rl_write_in(dir, "src/a.py", "print(1)\n"));
    const char *ok = "  - name: fine\n    target: pipe\n    type: testpipe\n"
                     "    source_directory: src\n    script: a.py\n";
    char *t;
    refused(ws, dir, t = fmt("steps:\n%s  - name: l\n    target: local\n"
                             "    source_directory: src\n    script: a.py\n", ok),
            6, "step 'l': compute target 'local' (local) cannot run pipeline steps");
    free(t);
    refused(ws, dir, "steps:\n  - name: s\n    target: pipe\n    source_directory: src\n"
                     "    script: a.py\n",
            6, "runs only testpipe steps, not script steps");
    refused(ws, dir, "steps:\n  - name: d\n    type: databricks\n    target: pipe\n"
                     "    source_directory: src\n    script: a.py\n",
            6, "a databricks step runs on a databricks target, and compute target 'pipe' is "
               "testpipe");
    refused(ws, dir, t = fmt("steps:\n%s  - name: m\n    target: nosuch\n"
                             "    source_directory: src\n    script: a.py\n", ok),
            4, "nosuch");
    free(t);
    refused(ws, dir, "steps:\n  - name: m\n    target: pipe\n    type: testpipe\n"
                     "    source_directory: src\n    script: missing.py\n",
            4, "missing.py");
    /* a plain run on the pipeline-only target is refused too, saying what to use */
    tl_result r = TL_CT(ws, "run", "submit", "--target", "pipe", "--source", dir, "--script",
                        "src/a.py");
    CU_ASSERT_EQUAL(r.status, 6);
    CU_ASSERT(tl_contains(r.err, "ctarget pipeline submit FILE"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "list", "-o", "json");
    json_t *j = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 0);
    json_decref(j);
    tl_result_free(&r);
    free(dir);
    free(ws);
}

/* ---- remotevm: whole pipelines on a real sshd ---------------------------------------------- */

static const char PREP_PY[] =
    "import os, sys\n"
    "n = int(sys.argv[1])\n"
    "out = os.environ['CTARGET_OUTPUT_FEATURES']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "with open(os.path.join(out, 'rows.txt'), 'w') as f:\n"
    "    f.write('\\n'.join(str(i) for i in range(1, n + 1)) + '\\n')\n"
    "print('prep wrote', n, 'rows')\n";
static const char TRAIN_PY[] =
    "import os, sys\n"
    "src = os.path.join(os.environ['CTARGET_INPUT_FEATURES'], 'rows.txt')\n"
    "rows = [int(x) for x in open(src).read().split()]\n"
    "scale = int(sys.argv[1]) if len(sys.argv) > 1 else 1\n"
    "out = os.environ['CTARGET_OUTPUT_MODEL']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'model.txt'), 'w').write('sum=%d\\n' % (scale * sum(rows)))\n"
    "print('train read', len(rows), 'rows from', src)\n";
static const char LINT_PY[] =
    "import os, time\n"
    "print('lint ok', os.environ['CTARGET_STEP_NAME'])\n";
/* argv[1]: a pid file; sleeps until killed */
static const char SLEEP_PY[] =
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "print('sleeping', flush=True)\n"
    "time.sleep(120)\n";
static const char FAIL_PY[] = "import sys\nprint('failing on purpose')\nsys.exit(3)\n";

static char *attach_vm(void)
{
    char *ws = rl_workspace();
    char *root = tl_tmpdir("plroot");
    char *key = sf_file(&S, "id_ed25519");
    char *port = fmt("ssh_port=%d", S.port), *kf = fmt("private_key_file=%s", key);
    char *rr = fmt("remote_root=%s", root);
    tl_result r = TL_CT(ws, "compute", "attach", "vmbox", "--type", "remotevm", "--set",
                        "address=127.0.0.1", "--set", port, "--set", "username=root", "--set",
                        kf, "--set", rr, "--accept-new-host-key");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    free(rr);
    free(kf);
    free(port);
    free(key);
    free(root);
    return ws;
}





static size_t children(const char *ws, const char *id)
{
    tl_result r = TL_CT(ws, "run", "list", "--parent", id, "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    size_t n = json_array_size(j);
    json_decref(j);
    tl_result_free(&r);
    return n;
}

static const char *PIPE_YAML =
    "name: prep-train-publish\n"
    "max_parallel: 3\n"
    "steps:\n"
    "  - name: prep\n    target: vmbox\n    source_directory: prep\n    script: prep.py\n"
    "    arguments: [%d]\n    outputs: [features]\n"
    "  - name: train\n    target: vmbox\n    source_directory: train\n    script: train.py\n"
    "    arguments: [%d]\n    inputs: {features: prep.features}\n    outputs: [model]\n"
    "  - name: lint\n    target: vmbox\n    source_directory: train\n    script: lint.py\n"
    "  - name: publish\n    type: data_transfer\n    source: train.model\n"
    "    outputs: [published]\n";

static void t_remotevm_pipeline_passes_data_and_reuses_unchanged_steps(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = attach_vm(), *dir = tl_tmpdir("plvm");
    free(rl_write_in(dir, "prep/prep.py", PREP_PY));
    free(rl_write_in(dir, "train/train.py", TRAIN_PY));
    free(rl_write_in(dir, "train/lint.py", LINT_PY));
    char *text = fmt(PIPE_YAML, 4, 1), *file = rl_write_in(dir, "pipeline.yaml", text);
    free(text);

    long long t0 = tl_now_ms();
    char *id = rl_pipeline_submit(ws, file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    int code;
    json_t *p = rl_pipeline_wait(ws, id, &code, NULL);
    long long first_ms = tl_now_ms() - t0;
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Finished");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "lint", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "publish", "status"), "Completed");
    /* train read prep's output, and its own output is in its run's outputs */
    char *m = fmt("%s/runs/%s/outputs/model/model.txt", ws, rl_step_get(p, "train", "run"));
    char *model = tl_read_file(m);
    CU_ASSERT_STRING_EQUAL(model ? model : "", "sum=10\n");
    free(model);
    free(m);
    char *pub = fmt("%s/runs/%s/transfer/publish/published/model.txt", ws, id);
    model = tl_read_file(pub);
    CU_ASSERT_STRING_EQUAL(model ? model : "", "sum=10\n");
    free(model);
    free(pub);
    tl_result r = TL_CT(ws, "run", "logs", rl_step_get(p, "train", "run"));
    CU_ASSERT(tl_contains(r.out, "train read 4 rows from inputs/features/rows.txt"));
    tl_result_free(&r);
    /* the pipeline's own log tells the story */
    r = TL_CT(ws, "run", "logs", id);
    CU_ASSERT(tl_contains(r.out, "step prep: started as run"));
    CU_ASSERT(tl_contains(r.out, "pipeline Finished: 4 steps succeeded"));
    tl_result_free(&r);
    CU_ASSERT_EQUAL(children(ws, id), 3);
    json_decref(p);

    /* unchanged: every run step is reused, nothing runs */
    t0 = tl_now_ms();
    char *id2 = rl_pipeline_submit(ws, file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id2);
    p = rl_pipeline_wait(ws, id2, &code, NULL);
    long long second_ms = tl_now_ms() - t0;
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Reused");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Reused");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "lint", "status"), "Reused");
    CU_ASSERT(tl_contains(rl_step_get(p, "train", "reason"), "reused the outputs of run"));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p, "reused")), 3);
    CU_ASSERT_EQUAL(children(ws, id2), 0);
    printf("\n    remotevm pipeline (4 steps): first run %lld ms, unchanged rerun %lld ms "
           "(every step reused)\n", first_ms, second_ms);
    json_decref(p);

    /* train's argument changes: prep and lint are reused, train and publish run again */
    text = fmt(PIPE_YAML, 4, 3);
    free(rl_write_in(dir, "pipeline.yaml", text));
    free(text);
    char *id3 = rl_pipeline_submit(ws, file, NULL);
    p = rl_pipeline_wait(ws, id3, &code, NULL);
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Reused");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "lint", "status"), "Reused");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Completed");
    m = fmt("%s/runs/%s/outputs/model/model.txt", ws, rl_step_get(p, "train", "run"));
    model = tl_read_file(m);
    CU_ASSERT_STRING_EQUAL(model ? model : "", "sum=30\n");
    free(model);
    free(m);
    CU_ASSERT_EQUAL(children(ws, id3), 1);
    json_decref(p);

    /* a changed input (prep's argument) reruns prep and the step that reads it */
    text = fmt(PIPE_YAML, 5, 3);
    free(rl_write_in(dir, "pipeline.yaml", text));
    free(text);
    char *id4 = rl_pipeline_submit(ws, file, NULL);
    p = rl_pipeline_wait(ws, id4, &code, NULL);
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "prep", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "train", "status"), "Completed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "lint", "status"), "Reused");
    json_decref(p);
    free(id4);
    free(id3);
    free(id2);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

static int pid_alive(const char *pidfile)
{
    char *t = tl_read_file(pidfile);
    int pid = t ? atoi(t) : 0;
    free(t);
    return pid > 0 && kill(pid, 0) == 0;
}

static int wait_file(const char *p, long ms)
{
    long long until = tl_now_ms() + ms;
    struct stat st;
    while (tl_now_ms() < until) {
        if (stat(p, &st) == 0 && st.st_size > 0)
            return 1;
        rl_sleep_ms(20);
    }
    return 0;
}

static void t_a_failing_step_fails_the_pipeline_and_cancels_the_rest(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = attach_vm(), *dir = tl_tmpdir("plfail");
    free(rl_write_in(dir, "s/fail.py", FAIL_PY));
    free(rl_write_in(dir, "s/sleep.py", SLEEP_PY));
    free(rl_write_in(dir, "s/prep.py", PREP_PY));
    char *pidf = fmt("%s/sleep.pid", dir);
    char *text = fmt("steps:\n"
                     "  - name: slow\n    target: vmbox\n    source_directory: s\n"
                     "    script: sleep.py\n    arguments: [%s]\n"
                     "  - name: bad\n    target: vmbox\n    source_directory: s\n"
                     "    script: fail.py\n    outputs: [o]\n"
                     "  - name: after\n    target: vmbox\n    source_directory: s\n"
                     "    script: prep.py\n    arguments: [1]\n    inputs: {x: bad.o}\n",
                     pidf);
    char *file = rl_write_in(dir, "p.yaml", text);
    free(text);
    char *id = rl_pipeline_submit(ws, file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    int code;
    json_t *p = rl_pipeline_wait(ws, id, &code, NULL);
    CU_ASSERT_EQUAL(code, 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Failed");
    CU_ASSERT(tl_contains(json_string_value(json_object_get(p, "reason")), "step bad failed"));
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "bad", "status"), "Failed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "after", "status"), "Canceled");
    CU_ASSERT(tl_contains(rl_step_get(p, "after", "reason"), "not started: step bad failed"));
    /* the independent slow step was canceled: its process is gone */
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "slow", "status"), "Canceled");
    CU_ASSERT(!pid_alive(pidf));
    json_decref(p);
    free(pidf);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

static void t_continue_on_step_failure_runs_the_independent_steps(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = attach_vm(), *dir = tl_tmpdir("plcont");
    free(rl_write_in(dir, "s/fail.py", FAIL_PY));
    free(rl_write_in(dir, "s/prep.py", PREP_PY));
    free(rl_write_in(dir, "s/lint.py", LINT_PY));
    char *file = rl_write_in(dir, "p.yaml",
                          "continue_on_step_failure: true\nmax_parallel: 1\nsteps:\n"
                          "  - name: bad\n    target: vmbox\n    source_directory: s\n"
                          "    script: fail.py\n    outputs: [o]\n"
                          "  - name: after\n    target: vmbox\n    source_directory: s\n"
                          "    script: prep.py\n    inputs: {x: bad.o}\n"
                          "  - name: other\n    target: vmbox\n    source_directory: s\n"
                          "    script: lint.py\n"
                          "  - name: noout\n    target: vmbox\n    source_directory: s\n"
                          "    script: lint.py\n    arguments: [again]\n    outputs: [never]\n");
    char *id = rl_pipeline_submit(ws, file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    int code;
    json_t *p = rl_pipeline_wait(ws, id, &code, NULL);
    CU_ASSERT_EQUAL(code, 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Failed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "bad", "status"), "Failed");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "after", "status"), "Skipped");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "other", "status"), "Completed");
    /* a step that leaves a declared output out fails, saying which */
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "noout", "status"), "Failed");
    CU_ASSERT(tl_contains(rl_step_get(p, "noout", "reason"), "without writing its output 'never'"));
    CU_ASSERT(tl_contains(json_string_value(json_object_get(p, "reason")),
                          "2 of 4 steps failed, 1 not run"));
    json_decref(p);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

static void t_canceling_a_pipeline_cancels_its_running_steps(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = attach_vm(), *dir = tl_tmpdir("plcancel");
    free(rl_write_in(dir, "s/sleep.py", SLEEP_PY));
    free(rl_write_in(dir, "s/prep.py", PREP_PY));
    char *pidf = fmt("%s/sleep.pid", dir);
    char *text = fmt("steps:\n"
                     "  - name: slow\n    target: vmbox\n    source_directory: s\n"
                     "    script: sleep.py\n    arguments: [%s]\n    outputs: [o]\n"
                     "  - name: next\n    target: vmbox\n    source_directory: s\n"
                     "    script: prep.py\n    inputs: {x: slow.o}\n", pidf);
    char *file = rl_write_in(dir, "p.yaml", text);
    free(text);
    char *id = rl_pipeline_submit(ws, file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_FATAL(wait_file(pidf, 60000));
    CU_ASSERT(pid_alive(pidf));
    tl_result r = TL_CT(ws, "pipeline", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    int code;
    json_t *p = rl_pipeline_wait(ws, id, &code, NULL);
    CU_ASSERT_EQUAL(code, 130);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Canceled");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "slow", "status"), "Canceled");
    CU_ASSERT_STRING_EQUAL(rl_step_get(p, "next", "status"), "Canceled");
    CU_ASSERT(!pid_alive(pidf));
    /* nothing of the pipeline is left running */
    r = TL_CT(ws, "run", "list", "--parent", id, "-o", "json");
    json_t *j = tl_json(&r);
    size_t i;
    json_t *c;
    json_array_foreach(j, i, c) CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(c, "status")), "Canceled");
    json_decref(j);
    tl_result_free(&r);
    json_decref(p);
    free(pidf);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

static const char SLOW_OUT_PY[] =
    "import os, sys, time\n"
    "time.sleep(float(sys.argv[1]))\n"
    "out = os.environ['CTARGET_OUTPUT_O']\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'o.txt'), 'w').write('slept\\n')\n";

/* The driver killed while a step runs: the next command that reads the pipeline starts a new
 * driver, which carries on: no step is submitted twice, the pipeline finishes. */
static void t_a_killed_driver_is_restarted_and_submits_nothing_twice(void)
{
    CU_ASSERT_FATAL(S_ok);
    char *ws = attach_vm(), *dir = tl_tmpdir("plkill");
    free(rl_write_in(dir, "s/slow.py", SLOW_OUT_PY));
    free(rl_write_in(dir, "s/prep.py", PREP_PY));
    char *file = rl_write_in(dir, "p.yaml",
                          "steps:\n"
                          "  - name: slow\n    target: vmbox\n    source_directory: s\n"
                          "    script: slow.py\n    arguments: [2]\n    outputs: [o]\n"
                          "  - name: after\n    target: vmbox\n    source_directory: s\n"
                          "    script: prep.py\n    arguments: [2]\n    inputs: {x: slow.o}\n"
                          "    outputs: [features]\n");
    char *id = rl_pipeline_submit(ws, file, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    /* until the slow step runs, then kill the driver */
    long long until = tl_now_ms() + 60000;
    json_t *p = NULL;
    while (tl_now_ms() < until) {
        json_decref(p);
        tl_result r = TL_CT(ws, "pipeline", "show", id, "-o", "json");
        p = tl_json(&r);
        tl_result_free(&r);
        if (!strcmp(rl_step_get(p, "slow", "status"), "Running"))
            break;
        rl_sleep_ms(50);
    }
    CU_ASSERT_STRING_EQUAL_FATAL(rl_step_get(p, "slow", "status"), "Running");
    long pid = (long)json_integer_value(json_object_get(json_object_get(p, "monitor"), "pid"));
    json_decref(p);
    CU_ASSERT_FATAL(pid > 1);
    CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
    for (int i = 0; i < 200 && kill((pid_t)pid, 0) == 0; i++)
        rl_sleep_ms(10);
    int code;
    p = rl_pipeline_wait(ws, id, &code, NULL);
    CU_ASSERT_EQUAL(code, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "status")), "Finished");
    CU_ASSERT(json_integer_value(json_object_get(json_object_get(p, "monitor"), "starts")) >= 2);
    CU_ASSERT_EQUAL(children(ws, id), 2);
    tl_result r = TL_CT(ws, "run", "logs", id);
    CU_ASSERT(tl_contains(r.out, "driver restarted"));
    tl_result_free(&r);
    json_decref(p);
    free(id);
    free(file);
    free(dir);
    free(ws);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_bad_files_are_refused_with_the_reason);
    TL_ADD(s, t_yaml_and_json_give_the_same_pipeline);
    TL_ADD(s, t_steps_on_targets_that_cannot_run_them_are_refused_first);
    TL_ADD(s, t_remotevm_pipeline_passes_data_and_reuses_unchanged_steps);
    TL_ADD(s, t_a_failing_step_fails_the_pipeline_and_cancels_the_rest);
    TL_ADD(s, t_continue_on_step_failure_runs_the_independent_steps);
    TL_ADD(s, t_canceling_a_pipeline_cancels_its_running_steps);
    TL_ADD(s, t_a_killed_driver_is_restarted_and_submits_nothing_twice);
}

static void setup(CU_pSuite s)
{
    char *home = tl_tmpdir("plhome");
    setenv("HOME", home, 1); /* an empty ~/.ssh/known_hosts */
    free(home);
    const char *pp = getenv("CTARGET_PLUGIN_PATH");
    char *path = fmt("%s/plugins/remotevm/.libs%s%s", tl_builddir(), pp && *pp ? ":" : "",
                     pp ? pp : "");
    setenv("CTARGET_PLUGIN_PATH", path, 1);
    free(path);
    char *dir = tl_tmpdir("plsshd");
    S_ok = sf_start(&S, dir, 0) == 0;
    free(dir);
    add(s);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "pipeline", setup);
}
