/* The run lifecycle through the real ctarget command, with runs simulated by the testrun
 * plugin (tests/plugins/testrun.c), and the state machine white-box. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run.h"
#include "runlib.h"
#include "store.h"

#define SIM(...) ((const char *const[]){__VA_ARGS__, NULL})
#define OPTS(...) ((const char *const[]){__VA_ARGS__, NULL})

static int str_ends(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int str_starts(const char *s, const char *prefix)
{
    return s && !strncmp(s, prefix, strlen(prefix));
}

/* ---- the state machine ------------------------------------------------------------------ */

static void t_state_table(void)
{
    static const struct { ctarget_run_state a, b; int ok; } cases[] = {
        {CTARGET_RUN_NOT_STARTED, CTARGET_RUN_STARTING, 1},
        {CTARGET_RUN_STARTING, CTARGET_RUN_PREPARING, 1},
        {CTARGET_RUN_PREPARING, CTARGET_RUN_RUNNING, 1},   /* skipping Queued */
        {CTARGET_RUN_QUEUED, CTARGET_RUN_COMPLETED, 1},    /* ended between two polls */
        {CTARGET_RUN_RUNNING, CTARGET_RUN_FINALIZING, 1},
        {CTARGET_RUN_RUNNING, CTARGET_RUN_CANCEL_REQUESTED, 1},
        {CTARGET_RUN_CANCEL_REQUESTED, CTARGET_RUN_CANCELED, 1},
        {CTARGET_RUN_CANCEL_REQUESTED, CTARGET_RUN_COMPLETED, 1}, /* finished first */
        {CTARGET_RUN_RUNNING, CTARGET_RUN_NOT_RESPONDING, 1},
        {CTARGET_RUN_NOT_RESPONDING, CTARGET_RUN_RUNNING, 1},     /* the one way back */
        {CTARGET_RUN_NOT_RESPONDING, CTARGET_RUN_QUEUED, 1},
        {CTARGET_RUN_NOT_RESPONDING, CTARGET_RUN_FAILED, 1},
        {CTARGET_RUN_RUNNING, CTARGET_RUN_QUEUED, 0},             /* no going back */
        {CTARGET_RUN_FINALIZING, CTARGET_RUN_RUNNING, 0},
        {CTARGET_RUN_RUNNING, CTARGET_RUN_RUNNING, 0},
        {CTARGET_RUN_RUNNING, CTARGET_RUN_CANCELED, 0},           /* only via CancelRequested */
        {CTARGET_RUN_CANCEL_REQUESTED, CTARGET_RUN_RUNNING, 0},
        {CTARGET_RUN_NOT_STARTED, CTARGET_RUN_COMPLETED, 0},      /* never submitted */
        {CTARGET_RUN_NOT_STARTED, CTARGET_RUN_NOT_RESPONDING, 0},
        {CTARGET_RUN_COMPLETED, CTARGET_RUN_FAILED, 0},           /* terminal is final */
        {CTARGET_RUN_FAILED, CTARGET_RUN_RUNNING, 0},
        {CTARGET_RUN_CANCELED, CTARGET_RUN_CANCEL_REQUESTED, 0},
        {CTARGET_RUN_FINISHED, CTARGET_RUN_COMPLETED, 0},
        {CTARGET_RUN_QUEUED, CTARGET_RUN_NOT_STARTED, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = rs_allowed(cases[i].a, cases[i].b);
        if (got != cases[i].ok)
            printf("%s -> %s: expected %d\n", rs_name(cases[i].a), rs_name(cases[i].b),
                   cases[i].ok);
        CU_ASSERT_EQUAL(got, cases[i].ok);
    }
    /* every terminal state is final, whatever the target */
    for (int to = 0; to <= CTARGET_RUN_FINISHED; to++) {
        CU_ASSERT_FALSE(rs_allowed(CTARGET_RUN_COMPLETED, (ctarget_run_state)to));
        CU_ASSERT_FALSE(rs_allowed(CTARGET_RUN_CANCELED, (ctarget_run_state)to));
    }
    CU_ASSERT_EQUAL(rs_parse("cancelrequested"), CTARGET_RUN_CANCEL_REQUESTED);
    CU_ASSERT_EQUAL(rs_parse("Bogus"), -1);
    CU_ASSERT_STRING_EQUAL(rs_name(CTARGET_RUN_NOT_RESPONDING), "NotResponding");
}

static long long count_events(store *st, const char *id)
{
    sqlite3_stmt *s = store_prepare(st, "SELECT COUNT(*) FROM run_events WHERE run=?", NULL);
    store_bind_text(s, 1, id);
    long long n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_finalize(s);
    return n;
}

/* rs_transition writes the row and the event together, and nothing when it refuses. */
static void t_state_store(void)
{
    char *dir = tl_tmpdir("rsstore");
    store *st;
    ctarget_error err;
    ctarget_error_init(&err);
    CU_ASSERT_EQUAL_FATAL(store_open(dir, &st, &err), CTARGET_OK);
    CU_ASSERT_EQUAL(store_exec(st, "INSERT INTO experiments VALUES ('default', 0);"
                                   "INSERT INTO runs(id, experiment, target, target_type,"
                                   " status, config, created_at, updated_at) VALUES"
                                   " ('r1', 'default', 't', 'x', 'NotStarted', '{}', 0, 0)",
                               &err), CTARGET_OK);
    rs_change run = {.native_state = "RUNNING"};
    ctarget_run_state from;
    CU_ASSERT_EQUAL(rs_transition(st, "r1", CTARGET_RUN_STARTING, NULL, &from, &err), 0);
    CU_ASSERT_EQUAL(from, CTARGET_RUN_NOT_STARTED);
    CU_ASSERT_EQUAL(rs_transition(st, "r1", CTARGET_RUN_RUNNING, &run, NULL, &err), 0);
    CU_ASSERT_EQUAL(count_events(st, "r1"), 2);
    CU_ASSERT_EQUAL(rs_transition(st, "r1", CTARGET_RUN_QUEUED, NULL, &from, &err),
                    CTARGET_E_STATE);
    CU_ASSERT(tl_contains(err.message, "cannot go from Running to Queued"));
    CU_ASSERT_EQUAL(count_events(st, "r1"), 2);
    rs_change done = {.has_exit_code = 1, .exit_code = 0, .native_state = "SUCCEEDED"};
    CU_ASSERT_EQUAL(rs_transition(st, "r1", CTARGET_RUN_COMPLETED, &done, NULL, &err), 0);
    rs_change fail = {.detail = "late"};
    CU_ASSERT_EQUAL(rs_transition(st, "r1", CTARGET_RUN_FAILED, &fail, &from, &err),
                    CTARGET_E_STATE);
    CU_ASSERT_EQUAL(from, CTARGET_RUN_COMPLETED);
    json_t *row = run_row(st, "r1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(row, "status")), "Completed");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(row, "native_state")),
                           "SUCCEEDED");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(row, "reason")), "");
    CU_ASSERT(json_is_integer(json_object_get(row, "started_at")));
    CU_ASSERT(json_is_integer(json_object_get(row, "ended_at")));
    CU_ASSERT_EQUAL(count_events(st, "r1"), 3);
    CU_ASSERT_EQUAL(rs_transition(st, "nope", CTARGET_RUN_STARTING, NULL, NULL, &err),
                    CTARGET_E_NOT_FOUND);
    json_decref(row);
    store_close(st);
}

static void t_ids_and_names(void)
{
    char *a = run_new_id(), *b = run_new_id();
    CU_ASSERT(strcmp(a, b) < 0); /* later submissions sort later */
    CU_ASSERT_EQUAL(strlen(a), strlen("20250101T000000.000000Z-0123abcd"));
    CU_ASSERT(run_experiment_name_ok("default"));
    CU_ASSERT(run_experiment_name_ok("9a_b-c"));
    CU_ASSERT(run_experiment_name_ok("abcdefghijklmnopqrstuvwxyz0123456789"));
    CU_ASSERT_FALSE(run_experiment_name_ok("abcdefghijklmnopqrstuvwxyz0123456789x"));
    CU_ASSERT_FALSE(run_experiment_name_ok("ab"));
    CU_ASSERT_FALSE(run_experiment_name_ok("_abc"));
    CU_ASSERT_FALSE(run_experiment_name_ok("-abc"));
    CU_ASSERT_FALSE(run_experiment_name_ok("a.bc"));
    CU_ASSERT_FALSE(run_experiment_name_ok("a bc"));
    free(a);
    free(b);
}

/* ---- submit, wait, stream --------------------------------------------------------------- */

/* The run cannot end before the test cancels it (a closed end_after gate), so a submit that
 * waited for the run would never return, and the status after it cannot be final. */
static void t_submit_returns_at_once(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL, SIM("end_after=never"));
    char *st = rl_status(ws, id);
    CU_ASSERT(st && strcmp(st, "Completed") && strcmp(st, "Failed"));
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    tl_result r = TL_CT(ws, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(rl_wait(ws, id), 130);
    free(st);
    free(id);
}

static void t_wait_exit_codes(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    tl_result r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script",
                        "train.py", "--wait", "--", "run_ms=50");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "Completed"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script", "train.py",
              "--wait", "-o", "json", "--", "run_ms=50", "exit=3");
    TL_ASSERT_EXIT(r, 1);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")), "Failed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 3);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "reason")), "exit code 3");
    CU_ASSERT(json_object_get(j, "id") != NULL);
    json_decref(j);
    tl_result_free(&r);
    char *id = rl_submit(ws, src, NULL, SIM("run_ms=50", "signal=9"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 1);
    j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "reason")),
                           "killed by signal 9 (SIGKILL)");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "term_signal")), 9);
    json_decref(j);
    free(id);
}

static void t_stream(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    tl_result r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script",
                        "train.py", "--stream", "--", "run_ms=400", "lines=5");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "line 1 of 5\nline 2 of 5\nline 3 of 5\nline 4 of 5\n"
                                 "line 5 of 5\ndone exit=0"));
    CU_ASSERT(tl_contains(r.err, "Completed"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "list", "-o", "json");
    json_t *j = tl_json(&r);
    const char *id = json_string_value(json_object_get(json_array_get(j, 0), "id"));
    tl_result l = TL_CT(ws, "run", "logs", id);
    TL_ASSERT_EXIT(l, 0);
    char *p = rl_run_file(ws, id, "std_log.txt");
    char *file = tl_read_file(p);
    CU_ASSERT_STRING_EQUAL(l.out, file);
    free(file);
    free(p);
    tl_result_free(&l);
    json_decref(j);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script", "train.py",
              "--stream", "--", "run_ms=50", "exit=2");
    TL_ASSERT_EXIT(r, 1);
    tl_result_free(&r);
}

static void t_logs_follow(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL, SIM("run_ms=600", "lines=4"));
    tl_result r = TL_CT(ws, "run", "logs", id, "-f");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "line 4 of 4\ndone exit=0 signal=0\n"));
    tl_result_free(&r);
    free(id);
}

/* ---- list and show ------------------------------------------------------------------------ */

static size_t list_count(const char *ws, const char *k1, const char *v1)
{
    tl_result r = k1 ? TL_CT(ws, "run", "list", k1, v1, "-o", "json")
                     : TL_CT(ws, "run", "list", "-o", "json");
    json_t *j = r.status == 0 ? tl_json(&r) : NULL;
    size_t n = json_array_size(j);
    json_decref(j);
    tl_result_free(&r);
    return n;
}

static void t_list_filters(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *a = rl_submit(ws, src, OPTS("--experiment", "exp-a"), SIM("run_ms=20"));
    char *b = rl_submit(ws, src, OPTS("--experiment", "exp-b"), SIM("run_ms=20", "exit=1"));
    char *c = rl_submit(ws, src, NULL, SIM("run_ms=20"));
    rl_wait(ws, a);
    rl_wait(ws, b);
    rl_wait(ws, c);
    CU_ASSERT_EQUAL(list_count(ws, NULL, NULL), 3);
    CU_ASSERT_EQUAL(list_count(ws, "--experiment", "exp-a"), 1);
    CU_ASSERT_EQUAL(list_count(ws, "--experiment", "default"), 1);
    CU_ASSERT_EQUAL(list_count(ws, "--status", "Failed"), 1);
    CU_ASSERT_EQUAL(list_count(ws, "--status", "completed"), 2);
    CU_ASSERT_EQUAL(list_count(ws, "--target", "sim"), 3);
    CU_ASSERT_EQUAL(list_count(ws, "--target", "pipe"), 0);
    tl_result r = TL_CT(ws, "run", "list", "--status", "Bogus");
    TL_ASSERT_EXIT(r, 2);
    CU_ASSERT(tl_contains(r.err, "NotResponding"));
    tl_result_free(&r);
    /* newest first, and ids sort by submission time */
    r = TL_CT(ws, "run", "list", "-o", "json");
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(j, 0), "id")), c);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(j, 2), "id")), a);
    CU_ASSERT(strcmp(a, b) < 0 && strcmp(b, c) < 0);
    json_decref(j);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "list");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "STATUS") && tl_contains(r.out, "exp-b"));
    tl_result_free(&r);
    free(a);
    free(b);
    free(c);
}

static void t_show_fields(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    /* gates hold Queued and Running until the monitor has recorded each (a 100 ms window
     * could pass between two of its polls under load); the script ends at least 300 ms
     * after Running was recorded, so its duration is at least that */
    char *id = rl_submit(ws, src, OPTS("--experiment", "showme"),
                         SIM("queue_ms=100", "run_ms=300", "metrics=4", "queue_until=q",
                             "end_after=e"));
    CU_ASSERT(rl_wait_for(ws, id, "Queued", 60000));
    rl_gate(ws, id, "q");
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    rl_sleep_ms(300);
    rl_gate(ws, id, "e");
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    json_t *j = rl_show(ws, id);
    char *ev = rl_events(j);
    CU_ASSERT_STRING_EQUAL(ev, "NotStarted Starting Preparing Queued Running Finalizing "
                               "Completed");
    free(ev);
    size_t i;
    json_t *e;
    const char *prev = "";
    json_array_foreach(json_object_get(j, "events"), i, e) {
        const char *t = json_string_value(json_object_get(e, "time"));
        CU_ASSERT(t && strcmp(prev, t) <= 0);
        prev = t;
        if (!strcmp(json_string_value(json_object_get(e, "to")), "Queued"))
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "native_state")),
                                   "PENDING");
    }
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "native_state")), "SUCCEEDED");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "experiment")), "showme");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 0);
    CU_ASSERT(json_object_get(j, "snapshot_id") != NULL);
    CU_ASSERT(json_object_get(j, "git") != NULL);
    CU_ASSERT(json_is_string(json_object_get(j, "started_at")));
    CU_ASSERT(json_is_string(json_object_get(j, "ended_at")));
    CU_ASSERT(json_number_value(json_object_get(j, "duration_seconds")) >= 0.25);
    json_t *loss = json_object_get(json_object_get(j, "metrics"), "loss");
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(loss, "value")), 0.25, 1e-9);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(loss, "step")), 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(loss, "count")), 4);
    json_t *out0 = json_array_get(json_object_get(j, "outputs"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(out0, "path")), "model.txt");
    CU_ASSERT_FALSE(json_is_true(json_object_get(json_object_get(j, "monitor"), "alive")));
    json_decref(j);
    /* unique prefixes work; unknown ids say so */
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%.26s", id);
    tl_result r = TL_CT(ws, "run", "show", prefix);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "transitions:") && tl_contains(r.out, "loss"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "show", "19990101T000000");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "show", "../../etc");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    free(id);
}

/* ---- cancel, timeout, not responding ------------------------------------------------------ */

static void t_cancel(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    /* the cancel takes effect only when the test opens the cancel_after gate */
    char *id = rl_submit(ws, src, NULL, SIM("run_ms=20000", "cancel_after=go", "lines=1000"));
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    tl_result r = TL_CT(ws, "run", "cancel", id, "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")), "CancelRequested");
    json_decref(j);
    tl_result_free(&r);
    /* the target has not given up yet: the run stays CancelRequested */
    char *st = rl_status(ws, id);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "CancelRequested");
    free(st);
    rl_gate(ws, id, "go");
    CU_ASSERT_EQUAL(rl_wait(ws, id), 130); /* the slow cancel was waited for */
    j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")), "Canceled");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "reason")), "canceled");
    char *ev = rl_events(j);
    CU_ASSERT(tl_contains(ev, "Running CancelRequested Canceled"));
    free(ev);
    json_decref(j);
    char *p = rl_run_file(ws, id, "std_log.txt");
    char *log = tl_read_file(p);
    CU_ASSERT(log && str_ends(log, "canceled\n"));
    free(log);
    free(p);
    r = TL_CT(ws, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 15);
    CU_ASSERT(tl_contains(r.err, "already ended"));
    tl_result_free(&r);
    free(id);
}

/* cancel_grace_seconds: from --cancel-grace or the run configuration, checked, shown, and
 * honoured by the local target for a script that ignores SIGTERM. */
static void t_cancel_grace(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *p = tl_path(src, "stubborn.py");
    tl_write_file(p, RL_TERM_WATCH_PY);
    free(p);
    char *od = tl_tmpdir("grace"), *out = tl_path(od, "t");
    tl_result r = TL_CT(ws, "-q", "run", "submit", "--target", "local", "--source", src,
                        "--script", "stubborn.py", "--cancel-grace", "1", "--", out);
    TL_ASSERT_EXIT(r, 0);
    char *id = strndup(r.out, strcspn(r.out, "\n"));
    tl_result_free(&r);
    json_t *j = rl_show(ws, id);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "cancel_grace_seconds")), 1);
    json_decref(j);
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    /* the script prints 'up' after it ignores SIGTERM: cancel only then */
    CU_ASSERT(rl_wait_log(ws, id, "up\n", 60000));
    long watcher = rl_death_watch(out);
    CU_ASSERT(watcher > 0);
    r = TL_CT(ws, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(rl_wait(ws, id), 130);
    /* measured at the script: from SIGTERM to its death, the 1 s grace, not the default
     * 10 s (the commands of the test do not count, however slow the machine is) */
    double grace = rl_term_to_death(out, watcher);
    printf("SIGTERM to SIGKILL: %.3f s\n", grace);
    CU_ASSERT(grace >= 0.9);
    CU_ASSERT(grace < 5.0);
    free(id);
    free(out), free(od);
    /* the default, and bad values from the configuration file */
    id = rl_submit(ws, src, NULL, SIM("run_ms=10"));
    j = rl_show(ws, id);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "cancel_grace_seconds")), 10);
    json_decref(j);
    free(id);
    char *cfg = tl_path(src, "bad.json");
    tl_write_file(cfg, "{\"target\": \"sim\", \"script\": \"train.py\", "
                       "\"cancel_grace_seconds\": 0}");
    r = TL_CT(ws, "run", "submit", "--source", src, "--config", cfg);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "cancel_grace_seconds"));
    tl_result_free(&r);
    tl_write_file(cfg, "{\"target\": \"sim\", \"script\": \"train.py\", "
                       "\"cancel_grace_seconds\": \"5\"}");
    r = TL_CT(ws, "run", "submit", "--source", src, "--config", cfg);
    TL_ASSERT_EXIT(r, 3);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script", "train.py",
              "--cancel-grace", "soon");
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
    free(cfg);
}

/* A run that ends before the (slow) cancel takes effect stays Completed. */
static void t_cancel_loses_race(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    /* Running until the end_after gate opens; the cancel would take 10 minutes */
    char *id = rl_submit(ws, src, NULL, SIM("end_after=end", "cancel_ms=600000"));
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    tl_result r = TL_CT(ws, "run", "cancel", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    rl_gate(ws, id, "end");
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    json_t *j = rl_show(ws, id);
    char *ev = rl_events(j);
    CU_ASSERT(tl_contains(ev, "CancelRequested Completed"));
    free(ev);
    json_decref(j);
    free(id);
}

static void t_timeout(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    /* the script never ends by itself (closed end_after gate): only the timeout ends it */
    long long t0 = tl_now_ms();
    char *id = rl_submit(ws, src, OPTS("--timeout", "1"), SIM("end_after=never"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 1);
    CU_ASSERT(tl_now_ms() - t0 >= 1000);
    json_t *j = rl_show(ws, id);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "reason")), "timeout after 1 s");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")), "Failed");
    json_decref(j);
    free(id);
}

static void t_not_responding_fails(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    const char *const env[] = {"CTARGET_NOT_RESPONDING_SECONDS=1", NULL};
    const char *const args[] = {"run", "submit", "--target", "sim", "--source", src, "--script",
                                "train.py", "--wait", "-o", "json", "--", "run_ms=100",
                                "vanish=1", NULL};
    tl_result r = tl_ctarget_run(ws, NULL, env, args);
    TL_ASSERT_EXIT(r, 1);
    json_t *j = tl_json(&r);
    CU_ASSERT(tl_contains(json_string_value(json_object_get(j, "reason")),
                          "vanished without an exit status"));
    char *ev = rl_events(j);
    CU_ASSERT(tl_contains(ev, "Running NotResponding Failed"));
    CU_ASSERT(json_is_null(json_object_get(j, "exit_code")));
    free(ev);
    json_decref(j);
    tl_result_free(&r);
}

static void t_not_responding_recovers(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    /* each state lasts until the test has seen it: gates, not a 300 ms window */
    char *id = rl_submit(ws, src, NULL, SIM("lost_until=back", "end_after=end"));
    CU_ASSERT(rl_wait_for(ws, id, "NotResponding", 60000));
    rl_gate(ws, id, "back");
    CU_ASSERT(rl_wait_for(ws, id, "Running", 60000));
    rl_gate(ws, id, "end");
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    json_t *j = rl_show(ws, id);
    char *ev = rl_events(j);
    CU_ASSERT(tl_contains(ev, "NotResponding Running Finalizing Completed"));
    free(ev);
    json_decref(j);
    free(id);
}

static void t_prepare_fails(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL, SIM("prepare_fail=1"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 1);
    json_t *j = rl_show(ws, id);
    CU_ASSERT(str_starts(json_string_value(json_object_get(j, "reason")),
                         "environment build failed: pip install failed"));
    json_decref(j);
    free(id);
}

/* ---- metrics, arguments, environments ---------------------------------------------------- */

static void t_metrics(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL, SIM("run_ms=400", "metrics=5", "badmetric=1"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    tl_result r = TL_CT(ws, "run", "metrics", id, "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_EQUAL(json_array_size(j), 5); /* each once, the bad line skipped */
    for (size_t i = 0; i < json_array_size(j); i++) {
        json_t *m = json_array_get(j, i);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(m, "step")), (json_int_t)i);
        CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(m, "value")), 1.0 / (i + 1),
                               1e-6);
    }
    json_decref(j);
    tl_result_free(&r);
    char *p = rl_run_file(ws, id, "monitor.log");
    char *log = tl_read_file(p);
    CU_ASSERT(tl_contains(log, "skipped") && tl_contains(log, "this line is not JSON"));
    free(log);
    free(p);
    free(id);
}

static void t_args_byte_for_byte(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL,
                         SIM("run_ms=20", "two words", "quote\"s'", "$(touch /tmp/x)", "a\nb",
                             "", "--flag"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    char *p = rl_run_file(ws, id, "std_log.txt");
    char *log = tl_read_file(p);
    CU_ASSERT(tl_contains(log, "arg[1]=two words\narg[2]=quote\"s'\narg[3]=$(touch /tmp/x)\n"
                               "arg[4]=a\nb\narg[5]=\narg[6]=--flag\n"));
    free(log);
    free(p);
    json_t *j = rl_show(ws, id);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "arguments")), 7);
    json_decref(j);
    free(id);
}

static void t_environments(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *req = tl_path(src, "requirements.txt");
    tl_write_file(req, "numpy==1.26.4\n");
    char hash[65];
    env_sha256_hex("numpy==1.26.4\n", 14, hash);
    tl_result r = TL_CT(ws, "env", "create", "np", "--requirements", req, "--env-var",
                        "MODE=fast", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "kind")), "pip");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "hash")), hash);
    json_decref(j);
    tl_result_free(&r);
    r = TL_CT(ws, "env", "create", "np", "--python", "/usr/bin/python3");
    TL_ASSERT_EXIT(r, 5);
    tl_result_free(&r);
    r = TL_CT(ws, "env", "create", "nothing");
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
    r = TL_CT(ws, "env", "list");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "np") && tl_contains(r.out, "requirements.txt"));
    tl_result_free(&r);
    /* the file changes after the environment was saved: the saved content counts */
    tl_write_file(req, "torch\n");
    char *id = rl_submit(ws, src, OPTS("--environment", "np", "--env-var", "TOKEN=s3cr3t-value"),
                         SIM("run_ms=20"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    j = rl_show(ws, id);
    json_t *env = json_object_get(j, "environment");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(env, "hash")), hash);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(env, "name")), "np");
    char *dump = json_dumps(j, 0);
    CU_ASSERT(tl_contains(dump, "TOKEN") && !tl_contains(dump, "s3cr3t-value"));
    free(dump);
    json_decref(j);
    char *p = rl_run_file(ws, id, "std_log.txt");
    char *log = tl_read_file(p);
    CU_ASSERT(tl_contains(log, "env MODE=fast\n") && tl_contains(log, "env TOKEN=s3cr3t-value"));
    char want[128];
    snprintf(want, sizeof want, "env_kind 1 hash %s", hash);
    CU_ASSERT(tl_contains(log, want));
    free(log);
    free(p);
    free(id);
    /* --python: a user-managed environment */
    id = rl_submit(ws, src, OPTS("--python", "/opt/py/bin/python3"), SIM("run_ms=20"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    p = rl_run_file(ws, id, "std_log.txt");
    log = tl_read_file(p);
    CU_ASSERT(tl_contains(log, "env_kind 0 hash - python /opt/py/bin/python3"));
    free(log);
    free(p);
    free(id);
    r = TL_CT(ws, "env", "delete", "np");
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script", "train.py",
              "--environment", "np");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script", "train.py",
              "--python", "python3", "--requirements", req);
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
    free(req);
}

/* ---- refusals ---------------------------------------------------------------------------- */

static void t_experiment_names(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    static const char *const bad[] = {"ab", "-abc", "_abc", "a.bc", "has space",
                                      "abcdefghijklmnopqrstuvwxyz0123456789x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tl_result r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src,
                            "--script", "train.py", "--experiment", bad[i]);
        TL_ASSERT_EXIT(r, 3);
        CU_ASSERT(tl_contains(r.err, "3-36 characters"));
        tl_result_free(&r);
    }
    CU_ASSERT_EQUAL(list_count(ws, NULL, NULL), 0); /* nothing recorded */
    char *id = rl_submit(ws, src, OPTS("--experiment", "abcdefghijklmnopqrstuvwxyz0123456789"),
                         SIM("run_ms=10"));
    CU_ASSERT_EQUAL(rl_wait(ws, id), 0);
    free(id);
}

static char *write_config(const char *dir, const char *json)
{
    char *p = tl_path(dir, "runconfig.json");
    tl_write_file(p, json);
    return p;
}

static void t_config_file(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    struct { const char *json, *want1, *want2; } bad[] = {
        {"{\"scirpt\": \"train.py\"}", "'scirpt'", "'script'"},
        {"{\"arguments\": \"run_ms=1\"}", "'arguments' must be", "list"},
        {"{\"max_run_duration_seconds\": \"10\"}", "max_run_duration_seconds", "whole number"},
        {"{\"environment\": {\"pythn\": \"/usr/bin/python3\"}}", "'environment.pythn'",
         "'environment.python'"},
        {"{\"target\": \"sim\",", "run configuration", "line"},
        {"[1, 2]", "expected a JSON object", ""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *cfg = write_config(src, bad[i].json);
        tl_result r = TL_CT(ws, "run", "submit", "--config", cfg, "--target", "sim",
                            "--source", src, "--script", "train.py");
        TL_ASSERT_EXIT(r, 3);
        CU_ASSERT(tl_contains(r.err, bad[i].want1) && tl_contains(r.err, bad[i].want2));
        tl_result_free(&r);
        free(cfg);
    }
    /* a good file, with relative paths anchored at the file's directory, and overrides */
    char *cfg = write_config(src, "{\"source_directory\": \".\", \"script\": \"train.py\","
                                  " \"target\": \"sim\", \"arguments\": [\"run_ms=30\", 7],"
                                  " \"experiment\": \"fromfile\", \"framework\": \"python\","
                                  " \"max_run_duration_seconds\": 60}");
    tl_result r = TL_CT(ws, "run", "submit", "--config", cfg, "--wait", "-o", "json");
    TL_ASSERT_EXIT(r, 0);
    json_t *j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "experiment")), "fromfile");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(j, "arguments"),
                                                            1)), "7");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "timeout_seconds")), 60);
    json_decref(j);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--config", cfg, "--experiment", "override", "--wait",
              "-o", "json", "--", "run_ms=10", "exit=4");
    TL_ASSERT_EXIT(r, 1);
    j = tl_json(&r);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "experiment")), "override");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "exit_code")), 4);
    json_decref(j);
    tl_result_free(&r);
    free(cfg);
}

static void t_capabilities(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    tl_result r = TL_CT(ws, "run", "submit", "--target", "pipe", "--source", src, "--script",
                        "train.py");
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "pipeline steps only"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "cloudbox", "--source", src, "--script",
              "train.py");
    TL_ASSERT_EXIT(r, 6);
    CU_ASSERT(tl_contains(r.err, "cannot run scripts") && tl_contains(r.err, "testrun"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "nosuch", "--source", src, "--script",
              "train.py");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(list_count(ws, NULL, NULL), 0);
}

static void t_source_checks(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    tl_result r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script",
                        "missing.py");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    char *outside = tl_tmpdir("outside");
    char *o = tl_path(outside, "evil.py");
    tl_write_file(o, "print(1)\n");
    char rel[4096];
    snprintf(rel, sizeof rel, "../%s/evil.py", strrchr(outside, '/') + 1);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", src, "--script", rel);
    TL_ASSERT_EXIT(r, 3);
    CU_ASSERT(tl_contains(r.err, "outside the source directory"));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--target", "sim", "--source", o, "--script", "x.py");
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "submit", "--source", src, "--script", "train.py");
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
    free(o);
}

/* ---- outputs, delete, help -------------------------------------------------------------- */

static void t_outputs_delete(void)
{
    char *ws = rl_workspace(), *src = rl_source();
    char *id = rl_submit(ws, src, NULL, SIM("end_after=never")); /* ends when canceled */
    tl_result r = TL_CT(ws, "run", "delete", id);
    TL_ASSERT_EXIT(r, 15);
    tl_result_free(&r);
    r = TL_CT(ws, "compute", "detach", "sim");
    TL_ASSERT_EXIT(r, 15);
    CU_ASSERT(tl_contains(r.err, id));
    tl_result_free(&r);
    r = TL_CT(ws, "run", "cancel", id);
    tl_result_free(&r);
    CU_ASSERT_EQUAL(rl_wait(ws, id), 130);
    char *dest = tl_tmpdir("outs");
    r = TL_CT(ws, "run", "outputs", id, "-o", dest);
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "model.txt"));
    tl_result_free(&r);
    char *m = tl_path(dest, "model.txt");
    char *content = tl_read_file(m);
    CU_ASSERT(tl_contains(content, id));
    free(content);
    free(m);
    r = TL_CT(ws, "run", "delete", id);
    TL_ASSERT_EXIT(r, 0);
    tl_result_free(&r);
    r = TL_CT(ws, "run", "show", id);
    TL_ASSERT_EXIT(r, 4);
    tl_result_free(&r);
    char *dir = rl_run_file(ws, id, "");
    CU_ASSERT(access(dir, F_OK) != 0);
    free(dir);
    free(id);
}

static void t_help(void)
{
    static const char *const subs[] = {"submit", "list", "show", "logs", "wait", "cancel",
                                       "outputs", "metrics", "delete"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        tl_result r = TL_CT(NULL, "run", subs[i], "--help");
        TL_ASSERT_EXIT(r, 0);
        CU_ASSERT(tl_contains(r.out, "usage: ctarget run") && tl_contains(r.out, "130"));
        tl_result_free(&r);
    }
    tl_result r = TL_CT(NULL, "env", "--help");
    TL_ASSERT_EXIT(r, 0);
    CU_ASSERT(tl_contains(r.out, "--requirements"));
    tl_result_free(&r);
    r = TL_CT(NULL, "run", "frobnicate");
    TL_ASSERT_EXIT(r, 2);
    tl_result_free(&r);
}

static void add(CU_pSuite s)
{
    TL_ADD(s, t_state_table);
    TL_ADD(s, t_state_store);
    TL_ADD(s, t_ids_and_names);
    TL_ADD(s, t_submit_returns_at_once);
    TL_ADD(s, t_wait_exit_codes);
    TL_ADD(s, t_stream);
    TL_ADD(s, t_logs_follow);
    TL_ADD(s, t_list_filters);
    TL_ADD(s, t_show_fields);
    TL_ADD(s, t_cancel);
    TL_ADD(s, t_cancel_loses_race);
    TL_ADD(s, t_cancel_grace);
    TL_ADD(s, t_timeout);
    TL_ADD(s, t_not_responding_fails);
    TL_ADD(s, t_not_responding_recovers);
    TL_ADD(s, t_prepare_fails);
    TL_ADD(s, t_metrics);
    TL_ADD(s, t_args_byte_for_byte);
    TL_ADD(s, t_environments);
    TL_ADD(s, t_experiment_names);
    TL_ADD(s, t_config_file);
    TL_ADD(s, t_capabilities);
    TL_ADD(s, t_source_checks);
    TL_ADD(s, t_outputs_delete);
    TL_ADD(s, t_help);
}

int main(int argc, char **argv)
{
    return tl_main(argc, argv, "run", add);
}
