/* Run monitors dying and being replaced, runs without a monitor, and many runs at once. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctarget/ctarget.h>

#include "runlib.h"

#define SIM(...) ((const char *const[]){__VA_ARGS__, NULL})

static long monitor_pid(const char *ws, const char *id, int *alive, long long *starts)
{
    json_t *j = rl_show(ws, id);
    json_t *m = json_object_get(j, "monitor");
    long pid = (long)json_integer_value(json_object_get(m, "pid"));
    if (alive)
        *alive = json_is_true(json_object_get(m, "alive"));
    if (starts)
        *starts = json_integer_value(json_object_get(m, "starts"));
    json_decref(j);
    return pid;
}

/* The full log testrun writes for run_ms=..., lines=N, exit 0 (see testrun.c). */
static char *expected_log(const char *const *args, int nargs, int lines)
{
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    for (int i = 0; i < nargs; i++)
        fprintf(f, "arg[%d]=%s\n", i, args[i]);
    fprintf(f, "env_kind 0 hash - python - image -\n");
    for (int k = 1; k <= lines; k++)
        fprintf(f, "line %d of %d\n", k, lines);
    fprintf(f, "done exit=0 signal=0\n");
    fclose(f);
    return s;
}

/* kill -9 of the monitor while the run executes: the next command notices, starts a new
 * monitor that reattaches (not resubmits), and the run ends with complete logs, metrics
 * and exit code.  The script cannot end before the end_after gate opens, so the monitor is
 * always killed mid-run, after it ingested every line and metric (the replacement must not
 * ingest them twice). */
static void t_kill_monitor(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    const char *const args[] = {"run_ms=300", "lines=10", "metrics=5", "exit=0",
                                "end_after=end", NULL};
    char *id = rl_submit(ws, src, NULL, args);
    CU_ASSERT_FATAL(id != NULL);
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    CU_ASSERT(rl_wait_log(ws, id, "line 10 of 10\n", 60000));
    int alive = 0;
    long pid = monitor_pid(ws, id, &alive, NULL);
    CU_ASSERT(alive && pid > 1);
    CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
    /* the kernel drops the lock when the process is gone */
    for (int i = 0; i < 100 && kill((pid_t)pid, 0) == 0; i++)
        rl_sleep_ms(10);
    rl_sleep_ms(50);
    long long starts = 0;
    long pid2 = monitor_pid(ws, id, &alive, &starts); /* `run show` restarts it */
    (void)pid2;
    rl_gate(ws, id, "end");
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    json_t *j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")), "Completed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "monitor"),
                                                       "starts")), 2);
    CU_ASSERT_NOT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "monitor"),
                                                           "pid")), pid);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(
                        json_object_get(j, "metrics"), "loss"), "count")), 5);
    json_decref(j);
    char *p = rl_run_file(ws, id, "std_log.txt");
    char *log = tl_read_file(p);
    char *want = expected_log(args, 5, 10);
    CU_ASSERT_STRING_EQUAL(log, want);
    free(want);
    free(log);
    free(p);
    p = rl_run_file(ws, id, "work/submits");
    CU_ASSERT_EQUAL(rl_count_lines(p), 1); /* reattached, never submitted twice */
    free(p);
    p = rl_run_file(ws, id, "work/cleaned");
    CU_ASSERT_EQUAL(rl_count_lines(p), 1);
    free(p);
    free(id);
}

/* A monitor killed after cancel was requested: the replacement still cancels.  The cancel
 * takes effect only when the cancel_after gate opens, after the kill. */
static void t_kill_monitor_while_canceling(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL, SIM("end_after=never", "cancel_after=go"));
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    long pid = monitor_pid(ws, id, NULL, NULL);
    tl_result r = TL_CT(ws, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(kill((pid_t)pid, SIGKILL), 0);
    for (int i = 0; i < 100 && kill((pid_t)pid, 0) == 0; i++)
        rl_sleep_ms(10);
    rl_gate(ws, id, "go");
    CU_ASSERT_EQUAL(rl_wait(ws, id), 130);
    long long starts = 0;
    monitor_pid(ws, id, NULL, &starts);
    CU_ASSERT_EQUAL(starts, 2); /* the replacement did the canceling */
    free(id);
}

/* A run recorded but whose monitor never ran (the machine went down between the two):
 * `run wait` starts one. */
static void t_unmonitored_run(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    ctarget_ws *w;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(ctarget_ws_open(ws, &w, &err), CTARGET_OK);
    ctarget_set_monitor_program("/bin/false");
    const char *const args[] = {"run_ms=50"};
    ctarget_run_opts o = {.struct_size = sizeof o, .target = "sim", .source_dir = src,
                          .script = "train.py", .args = args, .n_args = 1, .args_set = 1};
    char *json = NULL;
    CU_ASSERT_EQUAL_FATAL(ctarget_run_submit(w, &o, &json, &err), CTARGET_OK);
    json_t *j = json_loads(json, 0, NULL);
    char *id = strdup(json_string_value(json_object_get(j, "id")));
    json_decref(j);
    ctarget_free(json);
    rl_sleep_ms(300);
    char *st = rl_status(ws, id); /* show restarts the monitor (the real ctarget binary) */
    CU_ASSERT(st != NULL);
    free(st);
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    /* without a program set, the library runs $CTARGET_MONITOR_PROGRAM */
    ctarget_set_monitor_program(NULL);
    setenv("CTARGET_MONITOR_PROGRAM", tl_ctarget(), 1);
    CU_ASSERT_EQUAL(ctarget_run_submit(w, &o, &json, &err), CTARGET_OK);
    j = json_loads(json, 0, NULL);
    char *id2 = strdup(json_string_value(json_object_get(j, "id")));
    json_decref(j);
    ctarget_free(json);
    CU_ASSERT_EQUAL(ctarget_run_wait(w, id2, 20000, &json, &err), CTARGET_OK);
    j = json_loads(json ? json : "{}", 0, NULL);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")), "Completed");
    json_decref(j);
    ctarget_free(json);
    ctarget_ws_close(w);
    free(id);
    free(id2);
}

/* 100 runs submitted from 10 shells at once: every one ends Completed, started once. */
static void t_burst(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *script = NULL;
    if (asprintf(&script,
                 "for s in 0 1 2 3 4 5 6 7 8 9; do ( for i in 0 1 2 3 4 5 6 7 8 9; do "
                 "\"$CTARGET_BIN\" --workspace '%s' run submit --target sim --source '%s' "
                 "--script train.py -q -- run_ms=300 lines=2 >/dev/null || echo FAIL; done ) & "
                 "done; wait", ws, src) < 0)
        abort();
    long long t0 = tl_now_ms();
    const char *const argv[] = {"/bin/sh", "-c", script, NULL};
    tl_result r = tl_exec(argv, NULL, NULL);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT_FALSE(tl_contains(r.out, "FAIL"));
    tl_result_free(&r);
    long long submitted = tl_now_ms() - t0;
    int done = 0;
    json_t *j = NULL;
    for (int i = 0; i < 1800 && !done; i++) { /* a guard: 180 s (a few s are needed) */
        json_decref(j);
        r = TL_CT(ws, "run", "list", "--status", "Completed", "-o", "json");
        j = r.status == 0 ? tl_json(&r) : NULL;
        tl_result_free(&r);
        done = json_array_size(j) == 100;
        if (!done)
            rl_sleep_ms(100);
    }
    printf("burst: 100 submissions in %lld ms, all completed after %lld ms\n", submitted,
           tl_now_ms() - t0);
    CU_ASSERT_EQUAL(json_array_size(j), 100);
    r = TL_CT(ws, "run", "list", "-o", "json");
    json_t *all = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(all), 100);
    size_t i;
    json_t *row;
    json_array_foreach(all, i, row) {
        const char *id = json_string_value(json_object_get(row, "id"));
        char *p = rl_run_file(ws, id, "work/submits");
        int n = rl_count_lines(p);
        if (n != 1)
            printf("run %s was submitted %d times\n", id, n);
        CU_ASSERT_EQUAL(n, 1);
        free(p);
    }
    json_decref(all);
    json_decref(j);
    tl_result_free(&r);
    free(script);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_kill_monitor);
    TL_ADD(s, t_kill_monitor_while_canceling);
    TL_ADD(s, t_unmonitored_run);
    TL_ADD(s, t_burst);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "run_recovery", add);
}
