/* Helpers for the run lifecycle tests: a workspace with simulated-run targets, a source
 * directory, submitting and inspecting runs through the real ctarget command. */
#ifndef CTARGET_TESTS_RUNLIB_H
#define CTARGET_TESTS_RUNLIB_H

#include <jansson.h>

#include "testlib.h"

/* A fresh workspace with targets "sim" (testrun), "pipe" (testpipe, pipeline-only) and
 * "cloudbox" (testcloud: no runs at all). */
char *rl_workspace(void);
/* A fresh source directory holding train.py. */
char *rl_source(void);
/* ctarget run submit --target sim --source SRC --script train.py OPTS... -- SIM...;
 * opts and sim are NULL-terminated (either may be NULL).  Returns the run id (owned) or
 * NULL with a CUnit failure. */
char *rl_submit(const char *ws, const char *src, const char *const opts[],
                const char *const sim[]);
/* `run show ID -o json`, parsed (NULL on failure). */
json_t *rl_show(const char *ws, const char *id);
/* The status (owned), or NULL. */
char *rl_status(const char *ws, const char *id);
/* Poll `run show` until the status is one of "A|B|..." or timeout; 1 when reached. */
int rl_wait_for(const char *ws, const char *id, const char *statuses, long timeout_ms);
/* `run wait ID`: its exit status. */
int rl_wait(const char *ws, const char *id);
/* Count of lines in a file (0 when missing). */
int rl_count_lines(const char *path);
/* <ws>/runs/<id>/<name> (owned) */
char *rl_run_file(const char *ws, const char *id, const char *name);
/* The event "to" states in order, joined by ' ' (owned). */
char *rl_events(json_t *run);
void rl_sleep_ms(long ms);
/* A Python script that survives SIGTERM (prints 'up' once its handler is set) and records,
 * in CLOCK_MONOTONIC seconds, when SIGTERM arrived (file ARGV1.term); its pid is in
 * ARGV1.pid.  With rl_death_watch: the grace a cancel gave it, measured where it happened,
 * whatever the load on the test's own commands. */
extern const char RL_TERM_WATCH_PY[];
/* After 'up': start a watcher, a child of the test (nothing of the run: a target that kills
 * what a run leaves cannot take it), that records when the script dies (ARGV1.died) through
 * a pidfd; returns once it watches (a 30 s guard), its pid or -1. */
long rl_death_watch(const char *out);
/* Seconds from SIGTERM to death (waits for the watcher, a 60 s guard), or -1. */
double rl_term_to_death(const char *out, long watcher);
/* Open testrun gate `name` (see tests/plugins/testrun.c): create <ws>/runs/<id>/work/<name>. */
void rl_gate(const char *ws, const char *id, const char *name);
/* Wait (bounded by timeout_ms, a guard against hangs) until `run logs ID` contains needle. */
int rl_wait_log(const char *ws, const char *id, const char *needle, long timeout_ms);

/* Sweeps.  env: "NAME=value" strings for the command (and so the sweep's driver and its
 * children's monitors), NULL-terminated or NULL.
 * `sweep submit --config FILE -o json`: the sweep id (owned), or NULL with a CUnit failure. */
char *rl_sweep_submit(const char *ws, const char *file, const char *const env[]);
/* `sweep wait ID --timeout 120 -o json` (a guard), parsed; its exit must be expect_exit. */
json_t *rl_sweep_wait(const char *ws, const char *id, int expect_exit, const char *const env[]);
/* A 6-child random sweep (2 at once, bandit) on the attached target TARGET: it completes,
 * every child reports, and the machine never sees more than 2 children at once (each child
 * counts live marker files in a shared directory, so the target's runs must reach this
 * machine's file system: remotevm on the loopback sshd, the emulated amlcompute). */
void rl_sweep_concurrency_on(const char *ws, const char *target, const char *const env[]);

/* Pipelines.  env as for sweeps.
 * DIR/name holding text, its directories made first (the path, owned). */
char *rl_write_in(const char *dir, const char *name, const char *text);
/* `pipeline submit FILE -o json`: the pipeline id (owned), or NULL with a CUnit failure. */
char *rl_pipeline_submit(const char *ws, const char *file, const char *const env[]);
/* `pipeline wait ID --timeout 120 -o json` (a guard), parsed; *code gets its exit status. */
json_t *rl_pipeline_wait(const char *ws, const char *id, int *code, const char *const env[]);
/* A key of step `step` in a shown pipeline ("" when absent; borrowed). */
const char *rl_step_get(json_t *pipeline, const char *step, const char *key);

#endif
